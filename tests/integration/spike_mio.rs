//! Spike (a): the mio data plane (`src/proxy/spike/mio_loop`) carries the data-path cases of
//! proxy.rs and reload.rs. Each test selects it for the vipd it starts on its own thread
//! (`DataPlane::select_on_this_thread`), so the other tests of this binary keep tokio's.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use vipd::proxy::spike::DataPlane;

use crate::support::backend::{Behaviour, named_backends};
use crate::support::harness::config;
use crate::support::{Backend, Running, echo_round_trip, name_through, service, within};

fn use_mio() {
    DataPlane::select_on_this_thread(Some(DataPlane::Mio));
}

/// Threads of this process named by the mio loop.
fn mio_threads() -> usize {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("comm")).ok())
        .filter(|name| name.starts_with("vipd-mio-"))
        .count()
}

#[tokio::test]
async fn mio_round_robin_over_three_echo_backends() {
    use_mio();
    let backends = named_backends(3, Behaviour::Echo).await;
    let addrs: Vec<SocketAddr> = backends.iter().map(|b| b.addr).collect();
    let vipd = Running::start(vec![service("mio-rr", &addrs)], false).await;
    assert!(mio_threads() >= 1, "the mio loop serves the listener");
    let vip = vipd.addr("mio-rr");
    for i in 0..30 {
        let mut stream = TcpStream::connect(vip).await.unwrap();
        echo_round_trip(&mut stream, format!("hello {i}").as_bytes()).await;
        // A larger message than one buffer crosses in pieces.
        echo_round_trip(&mut stream, &vec![i as u8; 100_000]).await;
    }
    let service = vipd.service("mio-rr");
    for endpoint in service.endpoints() {
        assert_eq!(endpoint.connections_total(), 10, "{}", endpoint.addr());
    }
}

#[tokio::test]
async fn mio_half_close_client_side_still_gets_the_answer() {
    use_mio();
    let backend = Backend::start("counter", Behaviour::CountThenAnswer).await;
    let vipd = Running::start(vec![service("mio-half-c", &[backend.addr])], false).await;
    let mut stream = TcpStream::connect(vipd.addr("mio-half-c")).await.unwrap();
    stream.write_all(&[7u8; 100_000]).await.unwrap();
    stream.shutdown().await.unwrap();
    let mut answer = String::new();
    within(
        "answer after half-close",
        stream.read_to_string(&mut answer),
    )
    .await
    .unwrap();
    assert_eq!(answer, "got 100000 bytes");
}

#[tokio::test]
async fn mio_half_close_endpoint_side_still_takes_the_request() {
    use_mio();
    // An endpoint that sends a banner and its EOF first, then reads the client to its EOF.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (count_tx, count_rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        stream.write_all(b"banner").await.unwrap();
        stream.shutdown().await.unwrap();
        let mut received = Vec::new();
        stream.read_to_end(&mut received).await.unwrap();
        let _ = count_tx.send(received.len());
    });
    let vipd = Running::start(vec![service("mio-half-e", &[addr])], false).await;
    let mut stream = TcpStream::connect(vipd.addr("mio-half-e")).await.unwrap();
    let mut banner = Vec::new();
    within("banner and EOF", stream.read_to_end(&mut banner))
        .await
        .unwrap();
    assert_eq!(banner, b"banner");
    // The other direction is still open.
    stream.write_all(&[1u8; 50_000]).await.unwrap();
    stream.shutdown().await.unwrap();
    assert_eq!(
        within("the endpoint's count", count_rx).await.unwrap(),
        50_000
    );
}

#[tokio::test]
async fn mio_dead_endpoint_fails_over() {
    use_mio();
    let mut backends = named_backends(3, Behaviour::Name).await;
    let addrs: Vec<SocketAddr> = backends.iter().map(|b| b.addr).collect();
    let vipd = Running::start(vec![service("mio-failover", &addrs)], false).await;
    backends[1].stop().await;
    let dead = backends[1].name.clone();
    for i in 0..30 {
        let answer = within("an answer", name_through(vipd.addr("mio-failover"))).await;
        assert!(!answer.is_empty(), "connection {i} got nothing");
        assert_ne!(answer, dead);
    }
    let service = vipd.service("mio-failover");
    let dead_endpoint = service.endpoint(backends[1].addr).unwrap();
    assert_eq!(dead_endpoint.connections_total(), 0);
    assert!(dead_endpoint.consecutive_connect_failures() >= 1);
    assert_eq!(
        dead_endpoint.active_connections(),
        0,
        "failed attempts are released"
    );
}

#[tokio::test]
async fn mio_idle_connection_is_closed_after_idle_timeout() {
    use_mio();
    let backend = Backend::start("echo", Behaviour::Echo).await;
    let mut svc = service("mio-idle", &[backend.addr]);
    svc.connection.idle_timeout = Duration::from_millis(300);
    let vipd = Running::start(vec![svc], false).await;
    let mut stream = TcpStream::connect(vipd.addr("mio-idle")).await.unwrap();
    echo_round_trip(&mut stream, b"ping").await;
    let started = std::time::Instant::now();
    let mut rest = Vec::new();
    let n = within("idle close", stream.read_to_end(&mut rest))
        .await
        .unwrap();
    assert_eq!(n, 0);
    assert!(
        started.elapsed() >= Duration::from_millis(250),
        "not before the idle timeout"
    );
    let endpoint = &vipd.service("mio-idle").endpoints()[0];
    assert_eq!(endpoint.connections_total(), 1);
    within("the connection to be counted gone", endpoint.idle()).await;
}

#[tokio::test]
async fn mio_removed_endpoint_connections_are_drained() {
    use_mio();
    let leaving = Backend::start("leaving", Behaviour::Echo).await;
    let staying = Backend::start("staying", Behaviour::Name).await;
    let mut svc = service("mio-drain", &[leaving.addr, staying.addr]);
    svc.connection.drain_timeout = Duration::from_millis(300);
    let before = config(vec![svc], false);
    let vipd = Running::start_config(before.clone()).await;
    // Round robin starts at the first endpoint.
    let mut established = TcpStream::connect(vipd.addr("mio-drain")).await.unwrap();
    echo_round_trip(&mut established, b"hello").await;
    let mut after = before;
    after.services[0].endpoints.remove(0);
    vipd.state.apply(after).await.unwrap();
    let endpoint = vipd.service("mio-drain").endpoint(leaving.addr).unwrap();
    assert!(endpoint.is_draining());
    // New connections go to the staying endpoint; the established one still works until its
    // drain deadline.
    assert_eq!(name_through(vipd.addr("mio-drain")).await, "staying");
    echo_round_trip(&mut established, b"still here").await;
    let mut rest = Vec::new();
    let n = within(
        "close at the drain deadline",
        established.read_to_end(&mut rest),
    )
    .await
    .unwrap_or(0);
    assert_eq!(n, 0);
    within("the drained connection to be counted gone", endpoint.idle()).await;
}

#[tokio::test]
async fn mio_shutdown_closes_the_listener_and_drains() {
    use_mio();
    let backend = Backend::start("echo", Behaviour::Echo).await;
    let mut svc = service("mio-stop", &[backend.addr]);
    svc.connection.drain_timeout = Duration::from_millis(200);
    let vipd = Running::start(vec![svc], false).await;
    let vip = vipd.addr("mio-stop");
    let mut established = TcpStream::connect(vip).await.unwrap();
    echo_round_trip(&mut established, b"before").await;
    // Stop returns once the listener is closed and the connection reached its drain deadline.
    vipd.stop().await.unwrap();
    let mut rest = Vec::new();
    assert_eq!(
        within("closed by the drain", established.read_to_end(&mut rest))
            .await
            .unwrap_or(0),
        0
    );
    assert!(
        TcpStream::connect(vip).await.is_err(),
        "the listener is closed"
    );
}
