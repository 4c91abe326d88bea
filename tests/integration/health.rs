//! Active health checks against real backends: flips after thresholds, traffic follows.

use std::num::NonZeroU32;
use std::time::Duration;

use vipd::config::HealthCheck;
use vipd::service::Change;

use crate::support::backend::{Behaviour, HttpBackend};
use crate::support::harness::with_health;
use crate::support::name_through;
use crate::support::{Backend, Running, next_change, service};

const PERIOD: Duration = Duration::from_millis(50);

#[tokio::test]
async fn tcp_check_marks_down_and_up_and_traffic_follows() {
    let mut flaky = Backend::start("flaky", Behaviour::Name).await;
    let steady = Backend::start("steady", Behaviour::Name).await;
    let svc = with_health(
        service("tcp-health", &[flaky.addr, steady.addr]),
        HealthCheck::tcp(),
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
        HealthCheck::http("/healthz"),
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
