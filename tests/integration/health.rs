//! Active health checks against real backends: flips after thresholds, traffic follows; tcp
//! expectations and exec commands pick the one endpoint that should take traffic.

use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::time::Duration;

use vipd::config::{ExecCheck, HealthCheck, TcpCheck};
use vipd::service::{Change, ServiceState};

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

/// An echo endpoint whose probes go to a port of their own, so the test can fail the checks
/// while the endpoint itself keeps serving.
async fn echo_with_probe_port(
    name: &str,
    on_marked_down: vipd::config::OnMarkedDown,
) -> (Backend, tokio::net::TcpListener, Running) {
    let backend = Backend::start("echo", Behaviour::Echo).await;
    let probes = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut svc = with_health(service(name, &[backend.addr]), HealthCheck::tcp(), PERIOD);
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
        HealthCheck::tcp(),
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

/// Waits until exactly `want` are in rotation, whether that is so already or comes later.
async fn until_in_rotation(service: &ServiceState, want: &[SocketAddr]) {
    // Subscribed before looking, so no change can slip between the look and the wait.
    let mut events = service.subscribe();
    within(&format!("{want:?} in rotation"), async {
        loop {
            let now: Vec<SocketAddr> = service
                .endpoints()
                .iter()
                .filter(|e| e.in_rotation())
                .map(|e| e.addr())
                .collect();
            if now == want {
                return;
            }
            events.recv().await.expect("service events");
        }
    })
    .await
}

#[tokio::test]
async fn tcp_expect_keeps_only_the_endpoint_that_answers_it() {
    // Each writes its name on connect, as a replica answers `role:`.
    let master = Backend::start("role:master", Behaviour::Name).await;
    let slave = Backend::start("role:slave", Behaviour::Name).await;
    let check = HealthCheck::Tcp(TcpCheck {
        send: None,
        expect: Some(b"role:master".to_vec()),
    });
    let svc = with_health(
        service("tcp-expect", &[master.addr, slave.addr]),
        check,
        PERIOD,
    );
    let vipd = Running::start(vec![svc], false).await;
    vipd.ready().await;
    until_in_rotation(&vipd.service("tcp-expect"), &[master.addr]).await;
    for _ in 0..4 {
        assert_eq!(name_through(vipd.addr("tcp-expect")).await, "role:master");
    }
}

/// Writes `text` to `path` from a child process, so this process never holds a writable
/// descriptor of a file it may execute (another thread forking meanwhile would make the exec
/// fail with ETXTBSY).
fn write_from_child(path: &std::path::Path, text: &str) {
    let status = std::process::Command::new("/bin/sh")
        .args([
            "-c",
            "printf '%s' \"$1\" > \"$2\" && chmod 755 \"$2\"",
            "sh",
            text,
        ])
        .arg(path)
        .status()
        .expect("sh");
    assert!(status.success());
}

#[tokio::test]
async fn exec_check_follows_the_command_for_each_endpoint() {
    let a = Backend::start("a", Behaviour::Name).await;
    let b = Backend::start("b", Behaviour::Name).await;
    let dir = tempfile::tempdir().unwrap();
    // The command passes for the endpoint named in the file: `VIPD_SERVICE` and
    // `VIPD_ENDPOINT` tell it which endpoint of which service it is probing.
    let primary = dir.path().join("primary");
    write_from_child(&primary, &a.addr.to_string());
    let script = dir.path().join("is-primary");
    write_from_child(
        &script,
        "#!/bin/sh\n[ \"$VIPD_SERVICE/$VIPD_ENDPOINT\" = \"exec-health/$(cat \"$1\")\" ]\n",
    );
    let check = HealthCheck::Exec(ExecCheck {
        program: script,
        args: vec![primary.display().to_string()],
    });
    // Commands take longer than connects: a roomier period and timeout.
    let svc = with_health(
        service("exec-health", &[a.addr, b.addr]),
        check,
        Duration::from_millis(200),
    );
    let vipd = Running::start(vec![svc], false).await;
    vipd.ready().await;
    let service = vipd.service("exec-health");
    until_in_rotation(&service, &[a.addr]).await;
    assert_eq!(name_through(vipd.addr("exec-health")).await, "a");

    // The primary moves.
    write_from_child(&primary, &b.addr.to_string());
    until_in_rotation(&service, &[b.addr]).await;
    assert_eq!(name_through(vipd.addr("exec-health")).await, "b");
}
