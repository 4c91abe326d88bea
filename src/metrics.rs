//! Every metric name vipd exports, with its help text, in one place; and the Prometheus
//! recorder that renders them for the admin server's `/metrics`.
//!
//! Metric names and labels are a contract with dashboards and alerts: change them only with care.

/// `vipd_connections_total{service,endpoint}`: connections established to an endpoint.
pub const CONNECTIONS_TOTAL: &str = "vipd_connections_total";
/// `vipd_active_connections{service,endpoint}`: connections open to an endpoint now.
pub const ACTIVE_CONNECTIONS: &str = "vipd_active_connections";
/// `vipd_connect_failures_total{service,endpoint}`: failed connect attempts to an endpoint.
pub const CONNECT_FAILURES_TOTAL: &str = "vipd_connect_failures_total";
/// `vipd_connections_failed_total{service}`: client connections closed because no endpoint could be reached.
pub const CONNECTIONS_FAILED_TOTAL: &str = "vipd_connections_failed_total";
/// `vipd_bytes_total{service,endpoint,direction}`: bytes forwarded; `in` = client→endpoint, `out` = endpoint→client.
pub const BYTES_TOTAL: &str = "vipd_bytes_total";
/// `vipd_endpoint_healthy{service,endpoint}`: 1 when active checks find the endpoint healthy.
pub const ENDPOINT_HEALTHY: &str = "vipd_endpoint_healthy";
/// `vipd_health_checks_total{service,endpoint,result}`: probes by result (`success`, `failure`).
pub const HEALTH_CHECKS_TOTAL: &str = "vipd_health_checks_total";
/// `vipd_connect_duration_seconds{service}`: time to connect to an endpoint (histogram).
pub const CONNECT_DURATION_SECONDS: &str = "vipd_connect_duration_seconds";
/// `vipd_no_healthy_endpoints_total{service}`: new connections that found no endpoint in rotation in any tier (routed fail-open, or refused with `fail_closed`).
pub const NO_HEALTHY_ENDPOINTS_TOTAL: &str = "vipd_no_healthy_endpoints_total";
/// `vipd_accept_errors_total{service}`: accept() failures (e.g. out of file descriptors).
pub const ACCEPT_ERRORS_TOTAL: &str = "vipd_accept_errors_total";
/// `vipd_config_reloads_total{result}`: config reloads by result (`success`, `failure`).
pub const CONFIG_RELOADS_TOTAL: &str = "vipd_config_reloads_total";
/// `vipd_discovery_refreshes_total{service,result}`: DNS discovery lookups by result (`success`, `failure`).
pub const DISCOVERY_REFRESHES_TOTAL: &str = "vipd_discovery_refreshes_total";
/// `vipd_endpoints{service,state}`: endpoints by state (`healthy`, `unhealthy`, `draining`, `ejected`).
pub const ENDPOINTS: &str = "vipd_endpoints";
/// `vipd_outlier_ejections_total{service,endpoint}`: passive ejections of an endpoint.
pub const OUTLIER_EJECTIONS_TOTAL: &str = "vipd_outlier_ejections_total";
/// `vipd_dns_queries_total{rcode}`: DNS queries answered, by response code.
pub const DNS_QUERIES_TOTAL: &str = "vipd_dns_queries_total";
/// `vipd_vip_owned{service}`: 1 while vipd holds the service's VIP on its interface.
pub const VIP_OWNED: &str = "vipd_vip_owned";
/// `vipd_affinity_entries{service}`: client IPs remembered by session affinity.
pub const AFFINITY_ENTRIES: &str = "vipd_affinity_entries";
/// `vipd_udp_flows{service,endpoint}`: UDP flows pinned to an endpoint now.
pub const UDP_FLOWS: &str = "vipd_udp_flows";
/// `vipd_udp_flows_total{service,endpoint}`: UDP flows pinned to an endpoint (new or re-pinned).
pub const UDP_FLOWS_TOTAL: &str = "vipd_udp_flows_total";
/// `vipd_datagrams_total{service,endpoint,direction}`: UDP datagrams forwarded; `in` = client→endpoint, `out` = endpoint→client.
pub const DATAGRAMS_TOTAL: &str = "vipd_datagrams_total";
/// `vipd_udp_flows_dropped_total{service,reason}`: client datagrams not forwarded, by reason (`limit`, `no_endpoint`, `socket`, `send_failed`); `send_failed` also counts replies that could not be sent to the client.
pub const UDP_FLOWS_DROPPED_TOTAL: &str = "vipd_udp_flows_dropped_total";
/// `vipd_connection_limit_reached_total{service}`: times a `max_connections` limit stopped accepting; `service=""` is the process's `[runtime]` limit.
pub const CONNECTION_LIMIT_REACHED_TOTAL: &str = "vipd_connection_limit_reached_total";
/// `vipd_queued_connections{service}`: client connections waiting for an endpoint below its `max_connections`.
pub const QUEUED_CONNECTIONS: &str = "vipd_queued_connections";
/// `vipd_queue_timeouts_total{service}`: queued client connections closed after `queue_timeout`.
pub const QUEUE_TIMEOUTS_TOTAL: &str = "vipd_queue_timeouts_total";
/// `vipd_proxy_protocol_errors_total{service,reason}`: connections and datagrams refused for their PROXY header.
pub const PROXY_PROTOCOL_ERRORS_TOTAL: &str = "vipd_proxy_protocol_errors_total";

use std::sync::OnceLock;
use std::time::Duration;

use ::metrics::Unit;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio_util::sync::CancellationToken;

/// Upper bounds (seconds) of the [`CONNECT_DURATION_SECONDS`] buckets: from sub-millisecond
/// connects on a LAN up to the slowest connect timeout anyone should configure.
const CONNECT_DURATION_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

/// How often [`run_upkeep`] drains histogram samples when nobody scrapes.
const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs vipd's Prometheus recorder as the global `metrics` recorder and returns a handle
/// to render it. Idempotent: later calls return a clone of the same handle.
///
/// Call it early (before the data plane starts): metrics recorded before any recorder is
/// installed go to the `metrics` no-op recorder and are lost.
///
/// If some other global recorder was already installed (e.g. by a test harness or an
/// embedding program), ours cannot replace it: the handle is still returned, but it renders
/// only what is recorded through it directly, which in practice means an empty page.
pub fn install() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(
                    Matcher::Full(CONNECT_DURATION_SECONDS.to_owned()),
                    CONNECT_DURATION_BUCKETS,
                )
                .expect("bucket list is a non-empty constant")
                .build_recorder();
            let handle = recorder.handle();
            match ::metrics::set_global_recorder(recorder) {
                // Describe only through our own recorder: describing into someone else's
                // would be harmless but pointless.
                Ok(()) => describe(),
                Err(e) => tracing::warn!(
                    error = %e,
                    "a global metrics recorder is already installed; /metrics will be empty"
                ),
            }
            handle
        })
        .clone()
}

/// Registers HELP text and units for every metric name, so `/metrics` documents itself.
fn describe() {
    use ::metrics::{describe_counter, describe_gauge, describe_histogram};

    describe_counter!(
        CONNECTION_LIMIT_REACHED_TOTAL,
        Unit::Count,
        "Times a max_connections limit stopped accepting (service=\"\": the process's limit)."
    );
    describe_counter!(
        PROXY_PROTOCOL_ERRORS_TOTAL,
        Unit::Count,
        "Connections and datagrams refused for their PROXY header, by reason."
    );
    describe_gauge!(
        QUEUED_CONNECTIONS,
        Unit::Count,
        "Client connections waiting for an endpoint below its connection limit."
    );
    describe_counter!(
        QUEUE_TIMEOUTS_TOTAL,
        Unit::Count,
        "Queued client connections closed after queue_timeout."
    );
    describe_counter!(
        CONNECTIONS_TOTAL,
        Unit::Count,
        "Connections established to an endpoint."
    );
    describe_gauge!(
        ACTIVE_CONNECTIONS,
        Unit::Count,
        "Connections currently open to an endpoint."
    );
    describe_counter!(
        CONNECT_FAILURES_TOTAL,
        Unit::Count,
        "Failed connect attempts to an endpoint."
    );
    describe_counter!(
        CONNECTIONS_FAILED_TOTAL,
        Unit::Count,
        "Client connections closed because no endpoint could be reached."
    );
    describe_counter!(
        BYTES_TOTAL,
        Unit::Bytes,
        "Bytes forwarded; direction in = client to endpoint, out = endpoint to client."
    );
    describe_gauge!(
        ENDPOINT_HEALTHY,
        "1 when active health checks find the endpoint healthy, else 0."
    );
    describe_counter!(
        HEALTH_CHECKS_TOTAL,
        Unit::Count,
        "Health check probes by result (success, failure)."
    );
    describe_histogram!(
        CONNECT_DURATION_SECONDS,
        Unit::Seconds,
        "Time to connect to an endpoint."
    );
    describe_counter!(
        NO_HEALTHY_ENDPOINTS_TOTAL,
        Unit::Count,
        "New connections that found no endpoint in rotation in any tier (routed fail-open, or refused with fail_closed)."
    );
    describe_counter!(
        ACCEPT_ERRORS_TOTAL,
        Unit::Count,
        "accept() failures on a service listener (e.g. out of file descriptors)."
    );
    describe_counter!(
        CONFIG_RELOADS_TOTAL,
        Unit::Count,
        "Config reloads by result (success, failure)."
    );
    describe_counter!(
        DISCOVERY_REFRESHES_TOTAL,
        Unit::Count,
        "DNS discovery lookups by result (success, failure)."
    );
    describe_gauge!(
        ENDPOINTS,
        Unit::Count,
        "Endpoints of a service by state (healthy, unhealthy, draining, ejected)."
    );
    describe_counter!(
        OUTLIER_EJECTIONS_TOTAL,
        Unit::Count,
        "Passive ejections of an endpoint after consecutive connect failures."
    );
    describe_counter!(
        DNS_QUERIES_TOTAL,
        Unit::Count,
        "DNS queries answered by vipd, by response code."
    );
    describe_gauge!(
        VIP_OWNED,
        Unit::Count,
        "1 while vipd holds the service's VIP on its interface, else 0."
    );
    describe_gauge!(
        AFFINITY_ENTRIES,
        Unit::Count,
        "Client IPs remembered by session affinity (swept of expired entries every 5 s)."
    );
    describe_gauge!(
        UDP_FLOWS,
        Unit::Count,
        "UDP flows (client addresses) pinned to an endpoint now."
    );
    describe_counter!(
        UDP_FLOWS_TOTAL,
        Unit::Count,
        "UDP flows pinned to an endpoint: new flows and flows re-pinned from another endpoint."
    );
    describe_counter!(
        DATAGRAMS_TOTAL,
        Unit::Count,
        "UDP datagrams forwarded; direction in = client to endpoint, out = endpoint to client."
    );
    describe_counter!(
        UDP_FLOWS_DROPPED_TOTAL,
        Unit::Count,
        "UDP datagrams dropped instead of forwarded, by reason: limit (a new flow beyond max_udp_flows), no_endpoint (nothing to route to), socket (no upstream socket could be made), send_failed (a send failed either way)."
    );
}

/// Renders every metric in the Prometheus text format 0.0.4, installing the recorder first if
/// needed.
///
/// Rendering drains pending histogram samples itself, so no separate upkeep is needed here.
pub fn render() -> String {
    install().render()
}

/// Drains histogram samples every few seconds until `shutdown` is cancelled.
///
/// Without the exporter's own HTTP listener nothing else does this between scrapes, and
/// recorded-but-undrained samples are kept in memory, so an unscraped vipd would grow without
/// bound. The admin server runs this for as long as it serves.
pub async fn run_upkeep(shutdown: CancellationToken) {
    let handle = install();
    let mut tick = tokio::time::interval(UPKEEP_INTERVAL);
    // After a stall, one catch-up drain is as good as many.
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => handle.run_upkeep(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn install_is_idempotent_and_renders_described_histogram() {
        install();
        // A second call must not try to install another recorder (that would panic or warn)
        // and must render the same registry.
        let again = install();

        ::metrics::counter!(CONNECTIONS_TOTAL, "service" => "metrics-test", "endpoint" => "10.0.0.1:80")
            .increment(3);
        ::metrics::histogram!(CONNECT_DURATION_SECONDS, "service" => "metrics-test").record(0.003);

        let text = render();
        assert!(
            text.contains("# HELP vipd_connections_total Connections established to an endpoint."),
            "{text}"
        );
        assert!(
            text.contains(
                r#"vipd_connections_total{service="metrics-test",endpoint="10.0.0.1:80"} 3"#
            ),
            "{text}"
        );
        assert!(
            text.contains("# TYPE vipd_connect_duration_seconds histogram"),
            "{text}"
        );
        assert!(
            text.contains(
                r#"vipd_connect_duration_seconds_bucket{service="metrics-test",le="0.005"} 1"#
            ),
            "{text}"
        );
        assert!(
            text.contains(
                r#"vipd_connect_duration_seconds_bucket{service="metrics-test",le="0.0025"} 0"#
            ),
            "{text}"
        );
        assert!(
            text.contains(r#"vipd_connect_duration_seconds_count{service="metrics-test"} 1"#),
            "{text}"
        );
        assert!(again.render().contains("metrics-test"));
    }

    #[tokio::test]
    async fn upkeep_stops_on_cancel() {
        let shutdown = CancellationToken::new();
        shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(5), run_upkeep(shutdown))
            .await
            .expect("run_upkeep returns once cancelled");
    }
}
