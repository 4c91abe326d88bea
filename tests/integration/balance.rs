//! Placement end to end: weights per policy, connection-count policies under held connections,
//! Maglev and client-IP affinity with clients on distinct loopback addresses, backup tiers,
//! fail-closed, and picker state across a reload. Backends answer with their name.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::net::{TcpSocket, TcpStream};
use vipd::config::{Balance, HealthCheck, Service, SessionAffinity, WhenAllUnhealthy};
use vipd::service::Change;

use crate::support::backend::{Behaviour, named_backends};
use crate::support::harness::with_health;
use crate::support::http::sample;
use crate::support::{Backend, Running, name_through, next_change, service, within};

/// Health checks fast enough for a test to see endpoints go down and come back.
const PERIOD: Duration = Duration::from_millis(100);

/// A service over `backends` with `balance`.
fn placed(name: &str, backends: &[Backend], balance: Balance) -> Service {
    let addrs: Vec<SocketAddr> = backends.iter().map(|b| b.addr).collect();
    let mut svc = service(name, &addrs);
    svc.balance = balance;
    svc
}

/// `127.0.0.N`: a distinct client IP.
fn client_ip(n: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, n))
}

/// Connects to `vip` from `from` (port chosen by the kernel).
async fn connect_from(from: IpAddr, vip: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(from, 0)).unwrap();
    within("connect", socket.connect(vip)).await.unwrap()
}

/// The name of the backend a connection from `from` reaches.
async fn name_from(from: IpAddr, vip: SocketAddr) -> String {
    let mut stream = connect_from(from, vip).await;
    let mut text = String::new();
    within("name", stream.read_to_string(&mut text))
        .await
        .unwrap();
    text
}

/// Opens a connection to a [`Behaviour::NameThenHold`] backend and reads its name; the
/// connection stays open while the stream lives.
async fn held(vip: SocketAddr) -> (String, TcpStream) {
    let mut stream = TcpStream::connect(vip).await.unwrap();
    let mut name = [0u8; "backend-0".len()];
    within("name", stream.read_exact(&mut name)).await.unwrap();
    (String::from_utf8(name.to_vec()).unwrap(), stream)
}

/// Backend name → connections, over `count` connections, `parallel` at a time.
async fn tally(vip: SocketAddr, count: usize, parallel: usize) -> HashMap<String, usize> {
    let mut hits: HashMap<String, usize> = HashMap::new();
    for _ in 0..count / parallel {
        let names = futures_util::future::join_all((0..parallel).map(|_| name_through(vip))).await;
        for name in names {
            *hits.entry(name).or_default() += 1;
        }
    }
    hits
}

#[tokio::test]
async fn weights_1_2_3_over_6000_connections() {
    let backends = named_backends(3, Behaviour::Name).await;
    let mut services = Vec::new();
    for (name, balance) in [
        ("w-rr", Balance::RoundRobin),
        ("w-random", Balance::Random),
        ("w-p2c", Balance::PowerOfTwo),
    ] {
        let mut svc = placed(name, &backends, balance);
        for (spec, weight) in svc.endpoints.iter_mut().zip([1, 2, 3]) {
            spec.weight = weight;
        }
        services.push(svc);
    }
    let vipd = Running::start(services, false).await;

    // Smooth round robin: exact.
    let hits = tally(vipd.addr("w-rr"), 6000, 8).await;
    for (backend, want) in backends.iter().zip([1000, 2000, 3000]) {
        assert_eq!(
            hits.get(&backend.name),
            Some(&want),
            "round_robin: {hits:?}"
        );
    }
    // Random draws (and power of two, whose ties go by weight): within 3 points of the share.
    for name in ["w-random", "w-p2c"] {
        let hits = tally(vipd.addr(name), 6000, 8).await;
        for (backend, weight) in backends.iter().zip([1.0, 2.0, 3.0]) {
            let share = *hits.get(&backend.name).unwrap_or(&0) as f64 / 6000.0;
            assert!(
                (share - weight / 6.0).abs() <= 0.03,
                "{name}: {} got {share:.3}, weight share {:.3}: {hits:?}",
                backend.name,
                weight / 6.0
            );
        }
    }
}

/// Connections held on backend-0 while the others have none.
const LOAD: usize = 10;

/// Holds [`LOAD`] connections on backend-0: opens connections and keeps those that land there
/// (the others are held meanwhile too, so the policy keeps spreading, then closed).
async fn load_first_backend(vip: SocketAddr) -> Vec<TcpStream> {
    let mut kept = Vec::new();
    let mut others = Vec::new();
    while kept.len() < LOAD {
        let (name, stream) = held(vip).await;
        if name == "backend-0" {
            kept.push(stream);
        } else {
            others.push(stream);
        }
        assert!(kept.len() + others.len() < 200, "never reached backend-0");
    }
    kept
}

#[tokio::test]
async fn connection_count_policies_avoid_the_loaded_endpoint() {
    let backends = named_backends(3, Behaviour::NameThenHold).await;
    let vipd = Running::start(
        vec![
            placed("lc", &backends, Balance::LeastConnections),
            placed("p2c", &backends, Balance::PowerOfTwo),
        ],
        false,
    )
    .await;
    for name in ["lc", "p2c"] {
        let vip = vipd.addr(name);
        let _loaded = load_first_backend(vip).await;
        let service = vipd.service(name);
        // The closed connections are counted closed once vipd sees them end.
        for backend in &backends[1..] {
            let endpoint = service.endpoint(backend.addr).unwrap();
            within("other connections closed", endpoint.idle()).await;
        }
        let first = service.endpoint(backends[0].addr).unwrap();
        assert_eq!(first.active_connections(), LOAD as u64);

        // New connections, each held while the next opens: none reaches the loaded endpoint
        // (the idle ones never get to LOAD in 8 picks).
        let mut hits: HashMap<String, usize> = HashMap::new();
        let mut open = Vec::new();
        for _ in 0..8 {
            let (name, stream) = held(vip).await;
            *hits.entry(name).or_default() += 1;
            open.push(stream);
        }
        assert_eq!(hits.get("backend-0"), None, "{name}: {hits:?}");
        if name == "lc" {
            // Fewest first: the two idle endpoints alternate.
            assert_eq!(hits.get("backend-1"), Some(&4), "{name}: {hits:?}");
            assert_eq!(hits.get("backend-2"), Some(&4), "{name}: {hits:?}");
        }
    }
}

#[tokio::test]
async fn least_connections_rotates_an_idle_service() {
    let backends = named_backends(3, Behaviour::Name).await;
    let vipd = Running::start(
        vec![placed("lc-idle", &backends, Balance::LeastConnections)],
        false,
    )
    .await;
    let vip = vipd.addr("lc-idle");
    let service = vipd.service("lc-idle");
    let mut hits: HashMap<String, usize> = HashMap::new();
    for _ in 0..30 {
        *hits.entry(name_through(vip).await).or_default() += 1;
        // Each connection is closed before the next starts, so every pick is a tie.
        for endpoint in service.endpoints() {
            within("connection closed", endpoint.idle()).await;
        }
    }
    for backend in &backends {
        assert_eq!(hits.get(&backend.name), Some(&10), "{hits:?}");
    }
}

#[tokio::test]
async fn maglev_keeps_each_client_ip_on_one_endpoint_and_two_tables_agree() {
    let backends = named_backends(5, Behaviour::Name).await;
    let vipd = Running::start(
        vec![
            placed("maglev-a", &backends, Balance::Maglev),
            placed("maglev-b", &backends, Balance::Maglev),
        ],
        false,
    )
    .await;
    let mut choice: HashMap<IpAddr, String> = HashMap::new();
    for n in 2..22 {
        let ip = client_ip(n);
        for service in ["maglev-a", "maglev-b"] {
            for _ in 0..3 {
                let name = name_from(ip, vipd.addr(service)).await;
                let first = choice.entry(ip).or_insert_with(|| name.clone());
                assert_eq!(*first, name, "{ip} via {service}");
            }
        }
    }
    // Twenty clients over five endpoints: the hash spreads them.
    let used: std::collections::HashSet<&String> = choice.values().collect();
    assert!(used.len() >= 3, "{choice:?}");
}

#[tokio::test]
async fn client_ip_affinity_sticks_moves_when_its_endpoint_goes_and_expires() {
    let mut backends = named_backends(3, Behaviour::Name).await;
    let mut svc = with_health(
        placed("sticky", &backends, Balance::RoundRobin),
        HealthCheck::tcp(),
        PERIOD,
    );
    svc.session_affinity = SessionAffinity::ClientIp {
        timeout: Duration::from_secs(1),
    };
    let vipd = Running::start(vec![svc], false).await;
    vipd.ready().await;
    let vip = vipd.addr("sticky");
    let (a, b) = (client_ip(2), client_ip(3));

    // Round robin places a on backend-0 and b on backend-1; each then sticks.
    let home_a = name_from(a, vip).await;
    let home_b = name_from(b, vip).await;
    assert_eq!(
        (home_a.as_str(), home_b.as_str()),
        ("backend-0", "backend-1")
    );
    for _ in 0..5 {
        assert_eq!(name_from(a, vip).await, home_a);
        assert_eq!(name_from(b, vip).await, home_b);
    }

    // a's endpoint goes down: a is placed anew by round robin (its third turn) and sticks
    // there, also once backend-0 is back; b never moves.
    let service = vipd.service("sticky");
    let mut events = service.subscribe();
    let gone = backends[0].addr;
    backends[0].stop().await;
    next_change(&mut events, gone, Change::Down).await;
    let moved = name_from(a, vip).await;
    assert_ne!(moved, "backend-0");
    backends[0] = Backend::start_at(gone, "backend-0", Behaviour::Name).await;
    next_change(&mut events, gone, Change::Up).await;
    for _ in 0..5 {
        assert_eq!(name_from(a, vip).await, moved);
        assert_eq!(name_from(b, vip).await, home_b);
    }

    // After a second without a connection, a's entry has expired: the next connection is
    // placed by round robin again (its fourth turn: backend-0 of three).
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(name_from(a, vip).await, "backend-0");
}

#[tokio::test]
async fn backup_tier_serves_only_while_no_primary_is_in_rotation() {
    let mut backends = named_backends(3, Behaviour::Name).await;
    let mut svc = with_health(
        placed("tiers", &backends, Balance::RoundRobin),
        HealthCheck::tcp(),
        PERIOD,
    );
    svc.endpoints[2].backup = true;
    let vipd = Running::start(vec![svc], false).await;
    vipd.ready().await;
    let vip = vipd.addr("tiers");
    let service = vipd.service("tiers");
    let mut events = service.subscribe();

    let hits = tally(vip, 20, 1).await;
    assert_eq!(hits.get("backend-2"), None, "{hits:?}");
    assert_eq!(hits.get("backend-0"), Some(&10), "{hits:?}");

    // Both primaries down: the backup serves.
    let primaries: Vec<SocketAddr> = backends[..2].iter().map(|b| b.addr).collect();
    for (backend, addr) in backends[..2].iter_mut().zip(&primaries) {
        backend.stop().await;
        next_change(&mut events, *addr, Change::Down).await;
    }
    assert_eq!(tally(vip, 5, 1).await.get("backend-2"), Some(&5));

    // One primary back: new connections return to it at once.
    backends[1] = Backend::start_at(primaries[1], "backend-1", Behaviour::Name).await;
    next_change(&mut events, primaries[1], Change::Up).await;
    assert_eq!(tally(vip, 5, 1).await.get("backend-1"), Some(&5));
}

#[tokio::test]
async fn fail_closed_refuses_when_no_endpoint_is_in_rotation() {
    let backend = Backend::start("only", Behaviour::Name).await;
    // Probes go to a port nobody listens on: the endpoint is marked down while it still
    // serves, so failing open would reach it.
    let mut svc = with_health(
        service("closed", &[backend.addr]),
        HealthCheck::tcp(),
        PERIOD,
    );
    svc.health.port = Some(crate::support::free_port());
    svc.when_all_unhealthy = WhenAllUnhealthy::FailClosed;
    let vipd = Running::start(vec![svc], false).await;
    let service = vipd.service("closed");
    let mut events = service.subscribe();
    if service.endpoint(backend.addr).unwrap().is_healthy() {
        next_change(&mut events, backend.addr, Change::Down).await;
    }
    let labels = [("service", "closed")];
    let endpoint = backend.addr.to_string();
    let endpoint_labels = [("service", "closed"), ("endpoint", endpoint.as_str())];
    let counts = |page: &str| {
        (
            sample(page, "vipd_no_healthy_endpoints_total", &labels).unwrap_or(0.0),
            sample(page, "vipd_connections_failed_total", &labels).unwrap_or(0.0),
            sample(page, "vipd_connect_failures_total", &endpoint_labels).unwrap_or(0.0),
        )
    };
    let before = counts(&vipd::metrics::render());

    // The client is closed without a byte, and no connect to the endpoint is tried.
    let mut stream = TcpStream::connect(vipd.addr("closed")).await.unwrap();
    let mut got = Vec::new();
    let read = within("close", stream.read_to_end(&mut got)).await;
    assert!(got.is_empty(), "{read:?} {got:?}");
    let after = counts(&vipd::metrics::render());
    assert_eq!(after, (before.0 + 1.0, before.1 + 1.0, before.2));
}

#[tokio::test]
async fn rotation_and_affinity_survive_a_reload_that_keeps_the_endpoints() {
    let backends = named_backends(3, Behaviour::Name).await;
    let rr = placed("keep-rr", &backends, Balance::RoundRobin);
    let mut sticky = placed("keep-sticky", &backends, Balance::RoundRobin);
    sticky.session_affinity = SessionAffinity::ClientIp {
        timeout: SessionAffinity::DEFAULT_TIMEOUT,
    };
    let before = crate::support::harness::config(vec![rr, sticky], false);
    let vipd = Running::start_config(before.clone()).await;
    assert_eq!(name_through(vipd.addr("keep-rr")).await, "backend-0");
    // The sticky client's first connection is its round robin's first turn.
    let home = name_from(client_ip(2), vipd.addr("keep-sticky")).await;
    assert_eq!(home, "backend-0");

    let mut after = before.clone();
    for svc in &mut after.services {
        // A setting that is not about placement changes.
        svc.connection.idle_timeout = Duration::from_secs(600);
    }
    vipd.state.apply(after).await.expect("reload applies");
    // A fresh picker would start at backend-0 again.
    assert_eq!(name_through(vipd.addr("keep-rr")).await, "backend-1");
    assert_eq!(
        name_from(client_ip(2), vipd.addr("keep-sticky")).await,
        home
    );
}
