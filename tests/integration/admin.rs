//! The admin server of a running vipd: endpoints, status and metric values after known traffic.

use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use vipd::config::HealthCheck;

use crate::support::backend::{Behaviour, HttpBackend};
use crate::support::harness::with_health;
use crate::support::http::{get, request, sample};
use crate::support::{Backend, Running, echo_round_trip, service};

#[tokio::test]
async fn metrics_count_known_traffic() {
    let named = Backend::start("hello", Behaviour::Name).await;
    let echo = Backend::start("echo", Behaviour::Echo).await;
    let vipd = Running::start(
        vec![
            service("metrics-named", &[named.addr]),
            service("metrics-echo", &[echo.addr]),
        ],
        true,
    )
    .await;
    let admin = vipd.admin.unwrap();
    for _ in 0..5 {
        let mut stream = TcpStream::connect(vipd.addr("metrics-named"))
            .await
            .unwrap();
        let mut text = String::new();
        stream.read_to_string(&mut text).await.unwrap();
        assert_eq!(text, "hello");
    }
    // An open connection that has moved 4 bytes each way.
    let mut open = TcpStream::connect(vipd.addr("metrics-echo")).await.unwrap();
    echo_round_trip(&mut open, b"ping").await;

    let response = get(admin, "/metrics").await;
    assert_eq!(response.status, 200);
    assert!(
        response
            .header("content-type")
            .unwrap()
            .starts_with("text/plain; version=0.0.4")
    );
    let page = response.body;
    let named_ep = named.addr.to_string();
    let echo_ep = echo.addr.to_string();
    let named_labels = [
        ("service", "metrics-named"),
        ("endpoint", named_ep.as_str()),
    ];
    let echo_labels = [("service", "metrics-echo"), ("endpoint", echo_ep.as_str())];
    assert_eq!(
        sample(&page, "vipd_connections_total", &named_labels),
        Some(5.0)
    );
    assert_eq!(
        sample(&page, "vipd_connections_total", &echo_labels),
        Some(1.0)
    );
    assert_eq!(
        sample(&page, "vipd_active_connections", &echo_labels),
        Some(1.0)
    );
    let out = [named_labels[0], named_labels[1], ("direction", "out")];
    assert_eq!(sample(&page, "vipd_bytes_total", &out), Some(25.0));
    let echo_in = [echo_labels[0], echo_labels[1], ("direction", "in")];
    let echo_out = [echo_labels[0], echo_labels[1], ("direction", "out")];
    assert_eq!(sample(&page, "vipd_bytes_total", &echo_in), Some(4.0));
    assert_eq!(sample(&page, "vipd_bytes_total", &echo_out), Some(4.0));
    assert_eq!(
        sample(&page, "vipd_endpoint_healthy", &named_labels),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &page,
            "vipd_connect_duration_seconds_count",
            &[("service", "metrics-named")]
        ),
        Some(5.0)
    );
    assert!(page.contains("# TYPE vipd_connect_duration_seconds histogram"));
    assert!(page.contains("vipd_connect_duration_seconds_bucket{"));
    for name in [
        "vipd_connections_total",
        "vipd_active_connections",
        "vipd_bytes_total",
        "vipd_endpoint_healthy",
        "vipd_connect_duration_seconds",
    ] {
        assert!(
            page.contains(&format!("# HELP {name} ")),
            "no HELP for {name}"
        );
    }

    let status = get(admin, "/status").await;
    assert_eq!(status.status, 200);
    let json: serde_json::Value = serde_json::from_str(&status.body).unwrap();
    let echo_service = json["services"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "metrics-echo")
        .unwrap();
    assert_eq!(echo_service["vip"], "127.0.0.1");
    assert_eq!(
        echo_service["ports"][0]["port"],
        vipd.addr("metrics-echo").port()
    );
    assert_eq!(echo_service["ports"][0]["protocol"], "tcp");
    let endpoint = &echo_service["endpoints"][0];
    assert_eq!(endpoint["address"], echo_ep);
    assert_eq!(endpoint["healthy"], true);
    assert_eq!(endpoint["draining"], false);
    assert_eq!(endpoint["active_connections"], 1);
    assert_eq!(endpoint["connections_total"], 1);
    assert_eq!(echo_service["balance"], "round_robin");
    assert_eq!(echo_service["session_affinity"], "none");
    assert_eq!(endpoint["weight"], 1);
    assert_eq!(endpoint["effective_weight"], 1.0);
    assert_eq!(endpoint["backup"], false);
}

#[tokio::test]
async fn status_shows_placement() {
    let (a, b) = (
        Backend::start("a", Behaviour::Name).await,
        Backend::start("b", Behaviour::Name).await,
    );
    let mut svc = service("status-placement", &[a.addr, b.addr]);
    svc.balance = vipd::config::Balance::Maglev;
    svc.session_affinity = vipd::config::SessionAffinity::ClientIp {
        timeout: std::time::Duration::from_secs(60),
    };
    svc.endpoints[0].weight = 7;
    svc.endpoints[1].backup = true;
    let vipd = Running::start(vec![svc], true).await;
    let status = get(vipd.admin.unwrap(), "/status").await;
    let json: serde_json::Value = serde_json::from_str(&status.body).unwrap();
    let service = &json["services"][0];
    assert_eq!(service["balance"], "maglev");
    assert_eq!(service["session_affinity"], "client_ip");
    let endpoints = service["endpoints"].as_array().unwrap();
    assert_eq!(
        (
            &endpoints[0]["weight"],
            &endpoints[0]["effective_weight"],
            &endpoints[0]["backup"]
        ),
        (
            &serde_json::json!(7),
            &serde_json::json!(7.0),
            &serde_json::json!(false)
        )
    );
    assert_eq!(
        (&endpoints[1]["weight"], &endpoints[1]["backup"]),
        (&serde_json::json!(1), &serde_json::json!(true))
    );
}

#[tokio::test]
async fn failed_connects_are_counted() {
    let mut gone = Backend::start("gone", Behaviour::Name).await;
    let alive = Backend::start("alive", Behaviour::Name).await;
    gone.stop().await;
    let mut lonely = Backend::start("lonely", Behaviour::Name).await;
    lonely.stop().await;
    let vipd = Running::start(
        vec![
            service("failures-some", &[gone.addr, alive.addr]),
            service("failures-all", &[lonely.addr]),
        ],
        true,
    )
    .await;
    for _ in 0..4 {
        let mut stream = TcpStream::connect(vipd.addr("failures-some"))
            .await
            .unwrap();
        let mut text = String::new();
        stream.read_to_string(&mut text).await.unwrap();
        assert_eq!(text, "alive");
    }
    let mut stream = TcpStream::connect(vipd.addr("failures-all")).await.unwrap();
    let mut text = String::new();
    stream.read_to_string(&mut text).await.unwrap();
    assert_eq!(text, "");

    let page = get(vipd.admin.unwrap(), "/metrics").await.body;
    let gone_ep = gone.addr.to_string();
    // Round robin starts at the dead endpoint every other connection: 2 of 4 failed over.
    assert_eq!(
        sample(
            &page,
            "vipd_connect_failures_total",
            &[("service", "failures-some"), ("endpoint", gone_ep.as_str())]
        ),
        Some(2.0)
    );
    assert_eq!(
        sample(
            &page,
            "vipd_connections_failed_total",
            &[("service", "failures-some")]
        ),
        Some(0.0)
    );
    assert_eq!(
        sample(
            &page,
            "vipd_connections_failed_total",
            &[("service", "failures-all")]
        ),
        Some(1.0)
    );
}

#[tokio::test]
async fn admin_endpoints_answer() {
    // A probe that hangs past its timeout keeps the first health round open for a while.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut svc = with_health(
        service("admin-ready", &[silent.local_addr().unwrap()]),
        HealthCheck::http("/"),
        Duration::from_secs(4),
    );
    svc.health.timeout = Duration::from_secs(2);
    let vipd = Running::start(vec![svc], true).await;
    let admin = vipd.admin.unwrap();

    assert_eq!(get(admin, "/healthz").await.status, 200);
    assert_eq!(get(admin, "/readyz").await.status, 503);
    vipd.ready().await;
    assert_eq!(get(admin, "/readyz").await.status, 200);
    assert_eq!(get(admin, "/nope").await.status, 404);
    assert_eq!(request(admin, "POST", "/status").await.status, 405);
    drop(silent);
}

#[tokio::test]
async fn health_check_results_are_counted() {
    let backend = HttpBackend::start(200).await;
    let svc = with_health(
        service("checks-counted", &[backend.addr]),
        HealthCheck::http("/healthz"),
        Duration::from_millis(50),
    );
    let vipd = Running::start(vec![svc], true).await;
    vipd.ready().await;
    let service = vipd.service("checks-counted");
    let mut events = service.subscribe();
    backend.set_status(500);
    crate::support::next_change(&mut events, backend.addr, vipd::service::Change::Down).await;
    let page = get(vipd.admin.unwrap(), "/metrics").await.body;
    let ep = backend.addr.to_string();
    let labels = |result| {
        [
            ("service", "checks-counted"),
            ("endpoint", ep.as_str()),
            ("result", result),
        ]
    };
    assert!(sample(&page, "vipd_health_checks_total", &labels("success")).unwrap() >= 1.0);
    assert!(sample(&page, "vipd_health_checks_total", &labels("failure")).unwrap() >= 2.0);
    assert_eq!(
        sample(
            &page,
            "vipd_endpoint_healthy",
            &[("service", "checks-counted"), ("endpoint", ep.as_str())]
        ),
        Some(0.0)
    );
}
