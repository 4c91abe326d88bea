//! Active health checks against real backends: flips after thresholds, traffic follows.

use std::num::NonZeroU32;
use std::time::Duration;

use vipd::config::HealthCheck;
use vipd::service::Change;

use crate::support::backend::{Behaviour, HttpBackend};
use crate::support::harness::with_health;
use crate::support::name_through;
use crate::support::{Backend, Running, echo_round_trip, next_change, service, within};

const PERIOD: Duration = Duration::from_millis(50);

#[tokio::test]
async fn tcp_check_marks_down_and_up_and_traffic_follows() {
    let mut flaky = Backend::start("flaky", Behaviour::Name).await;
    let steady = Backend::start("steady", Behaviour::Name).await;
    let svc = with_health(
        service("tcp-health", &[flaky.addr, steady.addr]),
        HealthCheck::Tcp,
        PERIOD,
    );
    let vipd = Running::start(vec![svc], false).await;
    vipd.ready().await;
    let service = vipd.service("tcp-health");
    let mut events = service.subscribe();
    assert_eq!(
        service.snapshot().ports[0].in_rotation_candidates().len(),
        2
    );

    flaky.stop().await;
    let down = next_change(&mut events, flaky.addr, Change::Down).await;
    assert_eq!(down.in_rotation, vec![steady.addr]);
    // Every new connection now goes to the healthy endpoint, without connect failures.
    for _ in 0..10 {
        assert_eq!(name_through(vipd.addr("tcp-health")).await, "steady");
    }

    let _flaky = Backend::start_at(flaky.addr, "flaky", Behaviour::Name).await;
    let up = next_change(&mut events, flaky.addr, Change::Up).await;
    assert_eq!(up.in_rotation.len(), 2);
    let mut names = Vec::new();
    for _ in 0..4 {
        names.push(name_through(vipd.addr("tcp-health")).await);
    }
    assert!(names.contains(&"flaky".to_owned()), "{names:?}");
    assert!(names.contains(&"steady".to_owned()), "{names:?}");
}

#[tokio::test]
async fn http_check_follows_status_codes_with_thresholds() {
    let backend = HttpBackend::start(200).await;
    let mut svc = with_health(
        service("http-health", &[backend.addr]),
        HealthCheck::Http {
            path: "/healthz".to_owned(),
        },
        PERIOD,
    );
    svc.health.failure_threshold = NonZeroU32::new(2).unwrap();
    svc.health.success_threshold = NonZeroU32::new(3).unwrap();
    let vipd = Running::start(vec![svc], false).await;
    vipd.ready().await;
    let service = vipd.service("http-health");
    let endpoint = service.endpoints()[0].clone();
    let mut events = service.subscribe();
    assert!(endpoint.is_healthy());

    backend.set_status(503);
    next_change(&mut events, backend.addr, Change::Down).await;
    assert!(!endpoint.is_healthy());
    assert!(
        service.snapshot().ports[0]
            .in_rotation_candidates()
            .is_empty()
    );

    let ok_before = backend.ok_answers();
    backend.set_status(302);
    next_change(&mut events, backend.addr, Change::Up).await;
    // Three consecutive successes were needed: at least three 3xx answers were served.
    assert!(
        backend.ok_answers() - ok_before >= 3,
        "flipped up after {} successes",
        backend.ok_answers() - ok_before
    );
    assert_eq!(
        service.snapshot().ports[0].in_rotation_candidates().len(),
        1
    );
}

/// An echo endpoint whose probes go to a port of their own, so the test can fail the checks
/// while the endpoint itself keeps serving.
async fn echo_with_probe_port(
    name: &str,
    on_marked_down: vipd::config::OnMarkedDown,
) -> (Backend, tokio::net::TcpListener, Running) {
    let backend = Backend::start("echo", Behaviour::Echo).await;
    let probes = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut svc = with_health(service(name, &[backend.addr]), HealthCheck::Tcp, PERIOD);
    svc.health.port = Some(probes.local_addr().unwrap().port());
    svc.on_marked_down = on_marked_down;
    let vipd = Running::start(vec![svc], false).await;
    vipd.ready().await;
    (backend, probes, vipd)
}

#[tokio::test]
async fn marked_down_closes_established_connections_with_on_marked_down_close() {
    use tokio::io::AsyncReadExt;
    for (name, on_marked_down) in [
        ("down-close", vipd::config::OnMarkedDown::Close),
        ("down-keep", vipd::config::OnMarkedDown::Keep),
    ] {
        let (backend, probes, vipd) = echo_with_probe_port(name, on_marked_down).await;
        let mut client = tokio::net::TcpStream::connect(vipd.addr(name))
            .await
            .unwrap();
        echo_round_trip(&mut client, b"before").await;
        let service = vipd.service(name);
        let mut events = service.subscribe();
        drop(probes);
        next_change(&mut events, backend.addr, Change::Down).await;
        match on_marked_down {
            vipd::config::OnMarkedDown::Close => {
                // vipd closes its side: the client reads the end of the stream.
                let mut rest = Vec::new();
                let read = within("close", client.read_to_end(&mut rest)).await;
                assert!(rest.is_empty(), "{read:?}");
            }
            vipd::config::OnMarkedDown::Keep => echo_round_trip(&mut client, b"after").await,
        }
    }
}

#[tokio::test]
async fn an_endpoint_with_check_false_is_never_probed() {
    let mut probed = Backend::start("probed", Behaviour::Name).await;
    let mut exempt = Backend::start("exempt", Behaviour::Name).await;
    let mut svc = with_health(
        service("exempt", &[probed.addr, exempt.addr]),
        HealthCheck::Tcp,
        PERIOD,
    );
    svc.endpoints[1].check = false;
    let vipd = Running::start(vec![svc], false).await;
    vipd.ready().await;
    let service = vipd.service("exempt");
    let mut events = service.subscribe();
    // Both stop listening; only the probed one is marked down.
    probed.stop().await;
    exempt.stop().await;
    let down = next_change(&mut events, probed.addr, Change::Down).await;
    assert_eq!(down.in_rotation, vec![exempt.addr]);
    // A few more periods pass with probe results for the probed endpoint only.
    let before = service.endpoint(probed.addr).unwrap();
    let exempt_endpoint = service.endpoint(exempt.addr).unwrap();
    let checks = |e: &vipd::service::Endpoint| {
        let page = vipd::metrics::render();
        let endpoint = e.addr().to_string();
        ["success", "failure"]
            .iter()
            .map(|result| {
                let labels = [("endpoint", endpoint.as_str()), ("result", result)];
                crate::support::http::sample(&page, "vipd_health_checks_total", &labels)
                    .unwrap_or(0.0)
            })
            .sum::<f64>()
    };
    assert!(checks(&before) > 0.0);
    assert_eq!(
        checks(&exempt_endpoint),
        0.0,
        "the exempt endpoint was probed"
    );
    assert!(exempt_endpoint.is_healthy());
}
