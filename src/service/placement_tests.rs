//! The owner task's placement upkeep under paused time: slow-start ramps published step by
//! step, and the affinity sweep behind `vipd_affinity_entries`. No sockets: health checks are
//! off and nothing connects.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::sleep;
use tokio_util::sync::CancellationToken;

use super::{ServiceState, owner};
use crate::config::{self, Service};

/// A one-port service over `endpoints` (never connected to) with `extra` keys.
fn service(name: &str, endpoints: &[&str], extra: &str) -> Service {
    let list: Vec<String> = endpoints.iter().map(|e| format!("\"{e}\"")).collect();
    let text = format!(
        "[[service]]\nname = \"{name}\"\nvip = \"127.0.0.1\"\nports = [{{ port = 8000 }}]\n\
         endpoints = [{}]\n{extra}\n[service.health]\ncheck = \"none\"\n",
        list.join(", ")
    );
    config::from_str(&text, Path::new("test.toml"))
        .expect("valid test config")
        .services
        .remove(0)
}

/// Starts the owner of `config`, waits for its first round, returns the service.
async fn started(config: Service, stop: &CancellationToken) -> Arc<ServiceState> {
    let (state, inbox) = ServiceState::new(config, stop);
    tokio::spawn(owner::start(Arc::clone(&state), inbox));
    state.wait_first_round().await;
    state
}

/// Effective weight of each endpoint in rotation, by address, as the data plane sees it.
fn weights(state: &ServiceState) -> Vec<(String, u32)> {
    let snapshot = state.snapshot();
    snapshot.ports[0]
        .in_rotation_candidates()
        .iter()
        .map(|c| (c.endpoint.addr().to_string(), c.weight))
        .collect()
}

fn pairs(list: &[(&str, u32)]) -> Vec<(String, u32)> {
    list.iter().map(|&(a, w)| (a.to_owned(), w)).collect()
}

#[tokio::test(start_paused = true)]
async fn slow_start_ramps_endpoints_entering_rotation_after_start_up() {
    let stop = CancellationToken::new();
    let (a, b, c) = ("127.0.0.1:9001", "127.0.0.1:9002", "127.0.0.1:9003");
    let state = started(service("ramp", &[a, b], "slow_start = \"10s\""), &stop).await;
    // Endpoints there at start-up get their full weight at once.
    assert_eq!(weights(&state), pairs(&[(a, 100), (b, 100)]));

    // An endpoint added by a reload starts at 10% and gains a percent every 100 ms.
    state
        .reconfigure(service("ramp", &[a, b, c], "slow_start = \"10s\""))
        .await
        .unwrap();
    assert_eq!(weights(&state), pairs(&[(a, 100), (b, 100), (c, 10)]));
    sleep(Duration::from_millis(5_050)).await;
    assert_eq!(weights(&state), pairs(&[(a, 100), (b, 100), (c, 55)]));
    let status = state.status();
    assert_eq!(status.endpoints[2].effective_weight, 0.55);
    assert_eq!(status.endpoints[2].weight, 1);
    sleep(Duration::from_millis(5_000)).await;
    assert_eq!(weights(&state), pairs(&[(a, 100), (b, 100), (c, 100)]));

    // Back from a drain is entering rotation too.
    let b_addr: SocketAddr = b.parse().unwrap();
    state.set_draining(b_addr, true).await.unwrap();
    assert_eq!(weights(&state), pairs(&[(a, 100), (c, 100)]));
    state.set_draining(b_addr, false).await.unwrap();
    assert_eq!(weights(&state), pairs(&[(a, 100), (b, 10), (c, 100)]));
    sleep(Duration::from_millis(2_050)).await;
    assert_eq!(weights(&state), pairs(&[(a, 100), (b, 28), (c, 100)]));

    // A reload that turns slow start off gives full weight at once.
    state
        .reconfigure(service("ramp", &[a, b, c], ""))
        .await
        .unwrap();
    assert_eq!(weights(&state), pairs(&[(a, 100), (b, 100), (c, 100)]));
    stop.cancel();
}

#[tokio::test(start_paused = true)]
async fn weights_scale_the_ramp() {
    let stop = CancellationToken::new();
    let text = |list: &str| {
        let mut svc = service("ramp-weighted", &["127.0.0.1:9001"], "slow_start = \"9s\"");
        svc.endpoints = config::from_str(
            &format!(
                "[[service]]\nname = \"x\"\nvip = \"127.0.0.1\"\nports = [{{ port = 8000 }}]\n\
                 endpoints = [{list}]\n"
            ),
            Path::new("t.toml"),
        )
        .unwrap()
        .services[0]
            .endpoints
            .clone();
        svc
    };
    let state = started(text("\"127.0.0.1:9001\""), &stop).await;
    state
        .reconfigure(text(
            "\"127.0.0.1:9001\", { address = \"127.0.0.1:9002\", weight = 4 }",
        ))
        .await
        .unwrap();
    assert_eq!(
        weights(&state),
        pairs(&[("127.0.0.1:9001", 100), ("127.0.0.1:9002", 40)])
    );
    sleep(Duration::from_millis(4_550)).await;
    // 10% + 90% × 4.55/9 = 55%, of weight 4.
    assert_eq!(
        weights(&state),
        pairs(&[("127.0.0.1:9001", 100), ("127.0.0.1:9002", 220)])
    );
    stop.cancel();
}

/// The value of `vipd_affinity_entries{service="NAME"}` on the metrics page.
fn affinity_entries(service: &str) -> Option<f64> {
    let prefix = format!("vipd_affinity_entries{{service=\"{service}\"}} ");
    crate::metrics::render()
        .lines()
        .find_map(|line| line.strip_prefix(&prefix)?.parse().ok())
}

#[tokio::test(start_paused = true)]
async fn affinity_entries_are_swept_and_counted() {
    crate::metrics::install();
    let stop = CancellationToken::new();
    let state = started(
        service(
            "sweep",
            &["127.0.0.1:9001", "127.0.0.1:9002"],
            "session_affinity = \"client_ip\"\naffinity_timeout = \"10s\"",
        ),
        &stop,
    )
    .await;
    let snapshot = state.snapshot();
    let pool = &snapshot.ports[0];
    let endpoint = Arc::clone(&pool.tier.candidates()[0].endpoint);
    for n in 2..5u8 {
        pool.remember(Some(IpAddr::from([127, 0, 0, n])), &endpoint);
    }
    // Swept every 5 s: three live clients.
    sleep(Duration::from_millis(5_100)).await;
    assert_eq!(affinity_entries("sweep"), Some(3.0));
    // One client comes back at 6 s; the others expire at 10 s.
    sleep(Duration::from_millis(900)).await;
    pool.remember(Some(IpAddr::from([127, 0, 0, 2])), &endpoint);
    sleep(Duration::from_millis(9_100)).await;
    assert_eq!(affinity_entries("sweep"), Some(1.0));
    // Entries survive a reload that keeps affinity on, and the rotation state with them.
    state
        .reconfigure(service(
            "sweep",
            &["127.0.0.1:9001", "127.0.0.1:9002", "127.0.0.1:9003"],
            "session_affinity = \"client_ip\"\naffinity_timeout = \"10s\"",
        ))
        .await
        .unwrap();
    let after = state.snapshot();
    assert!(Arc::ptr_eq(&after.ports[0].picker, &pool.picker));
    // Turning affinity off drops the table and zeroes the gauge.
    state
        .reconfigure(service("sweep", &["127.0.0.1:9001"], ""))
        .await
        .unwrap();
    assert!(state.snapshot().ports[0].picker.affinity().is_none());
    assert_eq!(affinity_entries("sweep"), Some(0.0));
    stop.cancel();
}
