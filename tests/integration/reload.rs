//! Replicas come and go: reloads, endpoint removal with drain, operator drain, ejection.

use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use vipd::config::{Outlier, Secret};
use vipd::service::Change;

use crate::support::backend::Behaviour;
use crate::support::free_port;
use crate::support::harness::config;
use crate::support::http::post;
use crate::support::{Backend, Running, next_change, service, within};
use crate::support::{echo_round_trip, name_through};

#[tokio::test]
async fn reload_adds_removes_and_changes_services_while_others_keep_serving() {
    let echo = Backend::start("echo", Behaviour::Echo).await;
    let old_backend = Backend::start("old", Behaviour::Name).await;
    let new_backend = Backend::start("new", Behaviour::Name).await;
    let doomed = Backend::start("doomed", Behaviour::Name).await;
    let (first_port, second_port) = (free_port(), free_port());
    let mut moving = service("reload-moving", &[old_backend.addr]);
    moving.ports[0].port = first_port;
    let before = config(
        vec![
            service("reload-steady", &[echo.addr]),
            service("reload-changing", &[old_backend.addr]),
            service("reload-doomed", &[doomed.addr]),
            moving.clone(),
        ],
        false,
    );
    let vipd = Running::start_config(before.clone()).await;
    let doomed_addr = vipd.addr("reload-doomed");
    let mut long_lived = TcpStream::connect(vipd.addr("reload-steady"))
        .await
        .unwrap();
    echo_round_trip(&mut long_lived, b"before the reload").await;
    assert_eq!(name_through(vipd.addr("reload-changing")).await, "old");

    let mut after = before.clone();
    after.services.retain(|s| s.name != "reload-doomed");
    after.services[1] = service("reload-changing", &[new_backend.addr]);
    after.services[2].ports[0].port = second_port;
    after
        .services
        .push(service("reload-added", &[new_backend.addr]));
    let summary = vipd.state.apply(after).await.expect("reload applies");
    assert!(summary.contains("reload-added"), "{summary}");
    // A service is published with its endpoints before its listener opens.
    let added = vipd.service("reload-added").snapshot();
    assert_eq!(added.ports[0].tier.candidates().len(), 1);

    // The unchanged service's connection never noticed.
    echo_round_trip(&mut long_lived, &[42u8; 100_000]).await;
    assert_eq!(name_through(vipd.addr("reload-changing")).await, "new");
    assert_eq!(name_through(vipd.addr("reload-added")).await, "new");
    assert_eq!(
        TcpStream::connect(doomed_addr).await.unwrap_err().kind(),
        std::io::ErrorKind::ConnectionRefused
    );
    assert!(vipd.state.service("reload-doomed").is_none());
    assert_eq!(
        TcpStream::connect(("127.0.0.1", first_port))
            .await
            .unwrap_err()
            .kind(),
        std::io::ErrorKind::ConnectionRefused
    );
    assert_eq!(
        name_through(SocketAddr::from(([127, 0, 0, 1], second_port))).await,
        "old"
    );
    assert_eq!(
        vipd.addr("reload-moving"),
        SocketAddr::from(([127, 0, 0, 1], second_port))
    );
    echo_round_trip(&mut long_lived, b"after the reload").await;
}

#[tokio::test]
async fn reload_that_cannot_bind_changes_nothing() {
    let backend = Backend::start("only", Behaviour::Name).await;
    let before = config(vec![service("bind-fail", &[backend.addr])], false);
    let vipd = Running::start_config(before.clone()).await;
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut after = before.clone();
    after
        .services
        .push(service("bind-fail-new", &[backend.addr]));
    after.services[1].ports[0].port = taken.local_addr().unwrap().port();
    after.services[0].endpoints.clear();
    let error = vipd.state.apply(after).await.unwrap_err();
    assert!(error.contains("bind-fail-new"), "{error}");
    assert!(vipd.state.service("bind-fail-new").is_none());
    assert_eq!(name_through(vipd.addr("bind-fail")).await, "only");
}

/// A service over an echo endpoint (`leaving`) and a name endpoint, with a connection
/// established to the echo endpoint, which a reload then removes.
struct RemovedEndpoint {
    vipd: Running,
    established: TcpStream,
    leaving: Backend,
    _staying: Backend,
}

async fn remove_endpoint_under_a_connection(
    name: &str,
    drain_timeout: Duration,
    before_removal: impl FnOnce(&Running),
) -> RemovedEndpoint {
    let leaving = Backend::start("leaving", Behaviour::Echo).await;
    let staying = Backend::start("staying", Behaviour::Name).await;
    let mut svc = service(name, &[leaving.addr, staying.addr]);
    svc.connection.drain_timeout = drain_timeout;
    let before = config(vec![svc], false);
    let vipd = Running::start_config(before.clone()).await;
    before_removal(&vipd);
    // Round robin starts at the first endpoint.
    let mut established = TcpStream::connect(vipd.addr(name)).await.unwrap();
    echo_round_trip(&mut established, b"hello").await;
    let mut after = before;
    after.services[0].endpoints.remove(0);
    vipd.state.apply(after).await.unwrap();
    RemovedEndpoint {
        vipd,
        established,
        leaving,
        _staying: staying,
    }
}

#[tokio::test]
async fn removed_endpoint_keeps_its_connections_until_they_end() {
    let mut events = None;
    let RemovedEndpoint {
        vipd,
        mut established,
        leaving,
        _staying,
    } = remove_endpoint_under_a_connection("remove-endpoint", Duration::from_secs(3600), |vipd| {
        events = Some(vipd.service("remove-endpoint").subscribe());
    })
    .await;
    let mut events = events.unwrap();
    let service_state = vipd.service("remove-endpoint");
    let endpoint = service_state.endpoint(leaving.addr).expect("still known");
    assert!(endpoint.is_draining());
    let status = service_state.status();
    let shown = status
        .endpoints
        .iter()
        .find(|e| e.address == leaving.addr.to_string())
        .expect("removed endpoint shown while draining");
    assert!(shown.draining);
    for _ in 0..3 {
        assert_eq!(name_through(vipd.addr("remove-endpoint")).await, "staying");
    }
    echo_round_trip(&mut established, b"still here").await;
    assert_eq!(endpoint.connections_total(), 1);

    drop(established);
    next_change(&mut events, leaving.addr, Change::Gone).await;
    assert!(service_state.endpoint(leaving.addr).is_none());
}

#[tokio::test]
async fn removed_endpoint_connections_close_at_the_drain_deadline() {
    // Everything stays bound: vipd and the backends must outlive the assertions.
    let RemovedEndpoint {
        vipd: _vipd,
        mut established,
        leaving: _leaving,
        _staying,
    } = remove_endpoint_under_a_connection("remove-deadline", Duration::from_millis(200), |_| {})
        .await;
    let mut rest = Vec::new();
    let n = within(
        "close at the drain deadline",
        established.read_to_end(&mut rest),
    )
    .await
    .unwrap_or(0);
    assert_eq!(n, 0);
}

#[tokio::test]
async fn operator_drains_and_undrains_an_endpoint() {
    const TOKEN: &str = "drain-test-token";
    let first = Backend::start("first", Behaviour::Name).await;
    let second = Backend::start("second", Behaviour::Name).await;
    let mut cfg = config(
        vec![service("operator-drain", &[first.addr, second.addr])],
        true,
    );
    cfg.admin.as_mut().unwrap().token = Some(Secret::new(TOKEN.to_owned()));
    let vipd = Running::start_config(cfg).await;
    let admin = vipd.admin.unwrap();
    let vip = vipd.addr("operator-drain");
    let drain = format!(
        "/endpoints/drain?service=operator-drain&endpoint={}",
        first.addr
    );
    let undrain = drain.replace("/drain", "/undrain");

    assert_eq!(post(admin, &drain, None).await.status, 401);
    assert_eq!(post(admin, &drain, Some("wrong")).await.status, 401);
    let unknown = format!(
        "/endpoints/drain?service=operator-drain&endpoint={}",
        "127.0.0.1:1"
    );
    assert_eq!(post(admin, &unknown, Some(TOKEN)).await.status, 404);
    let missing = drain.replace("operator-drain", "no-such-service");
    assert_eq!(post(admin, &missing, Some(TOKEN)).await.status, 404);

    let drained = post(admin, &drain, Some(TOKEN)).await;
    assert_eq!(drained.status, 200, "{}", drained.body);
    for _ in 0..4 {
        assert_eq!(name_through(vip).await, "second");
    }
    let status = crate::support::http::get(admin, "/status").await.body;
    assert!(!status.contains(TOKEN));
    let json: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert_eq!(json["services"][0]["endpoints"][0]["draining"], true);

    assert_eq!(post(admin, &undrain, Some(TOKEN)).await.status, 200);
    let mut names = Vec::new();
    for _ in 0..2 {
        names.push(name_through(vip).await);
    }
    names.sort();
    assert_eq!(names, ["first", "second"]);
}

#[tokio::test]
async fn post_endpoints_are_forbidden_without_a_token_file() {
    let backend = Backend::start("only", Behaviour::Name).await;
    let vipd = Running::start(vec![service("no-token", &[backend.addr])], true).await;
    let path = format!(
        "/endpoints/drain?service=no-token&endpoint={}",
        backend.addr
    );
    assert_eq!(
        post(vipd.admin.unwrap(), &path, Some("x")).await.status,
        403
    );
    assert_eq!(post(vipd.admin.unwrap(), "/reload", None).await.status, 403);
}

#[tokio::test]
async fn consecutive_connect_failures_eject_an_endpoint_for_a_while() {
    let mut dead = Backend::start("dead", Behaviour::Name).await;
    let alive = Backend::start("alive", Behaviour::Name).await;
    dead.stop().await;
    let mut svc = service("ejection", &[dead.addr, alive.addr]);
    svc.outlier = Some(Outlier {
        consecutive_failures: NonZeroU32::new(2).unwrap(),
        // Long enough that the four connections made while it is ejected all fall inside it, on
        // a loaded machine too.
        base_ejection_time: Duration::from_secs(2),
        max_ejection_percent: 50,
    });
    let vipd = Running::start(vec![svc], true).await;
    let state = vipd.service("ejection");
    let mut events = state.subscribe();
    let vip = vipd.addr("ejection");
    // Round robin starts at the dead endpoint on connections 1 and 3; failover serves them.
    for _ in 0..4 {
        assert_eq!(name_through(vip).await, "alive");
    }
    let ejected = next_change(&mut events, dead.addr, Change::Ejected).await;
    assert_eq!(ejected.in_rotation, vec![alive.addr]);
    let endpoint = state.endpoint(dead.addr).unwrap();
    assert!(endpoint.is_ejected());
    let page = crate::support::http::get(vipd.admin.unwrap(), "/metrics")
        .await
        .body;
    let line = format!(
        "vipd_outlier_ejections_total{{service=\"ejection\",endpoint=\"{}\"}} 1",
        dead.addr
    );
    assert!(page.contains(&line), "{page}");
    assert!(page.contains("vipd_endpoints{service=\"ejection\",state=\"ejected\"} 1"));
    // While ejected, nothing tries the dead endpoint.
    let failures = endpoint.consecutive_connect_failures();
    for _ in 0..4 {
        assert_eq!(name_through(vip).await, "alive");
    }
    assert_eq!(endpoint.consecutive_connect_failures(), failures);

    let restored = next_change(&mut events, dead.addr, Change::Restored).await;
    assert_eq!(restored.in_rotation, vec![dead.addr, alive.addr]);
    assert!(!endpoint.is_ejected());
}

#[tokio::test]
async fn ejection_never_exceeds_the_allowed_share() {
    let mut dead = Backend::start("dead", Behaviour::Name).await;
    dead.stop().await;
    let mut svc = service("ejection-cap", &[dead.addr]);
    svc.outlier = Some(Outlier {
        consecutive_failures: NonZeroU32::new(1).unwrap(),
        base_ejection_time: Duration::from_secs(3600),
        max_ejection_percent: 50,
    });
    let vipd = Running::start(vec![svc], false).await;
    for _ in 0..3 {
        assert_eq!(name_through(vipd.addr("ejection-cap")).await, "");
    }
    // Ejecting the only endpoint would exceed 50%: it stays.
    let endpoint = vipd.service("ejection-cap").endpoint(dead.addr).unwrap();
    assert!(!endpoint.is_ejected());
    assert_eq!(endpoint.consecutive_connect_failures(), 3);
}
