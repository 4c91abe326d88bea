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
/// `vipd_no_healthy_endpoints_total{service}`: connections routed fail-open because no endpoint was healthy.
pub const NO_HEALTHY_ENDPOINTS_TOTAL: &str = "vipd_no_healthy_endpoints_total";
/// `vipd_accept_errors_total{service}`: accept() failures (e.g. out of file descriptors).
pub const ACCEPT_ERRORS_TOTAL: &str = "vipd_accept_errors_total";

/// Installs the recorder (stub until the admin work lands).
pub fn install() {}
