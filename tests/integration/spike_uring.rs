//! The io_uring data plane (`src/proxy/spike/uring`): vipd in process, its TCP ports served
//! by ring threads, between real clients and echo backends.
//!
//! The data plane is chosen once per process and the other tests of this binary run on tokio,
//! so each test here runs itself again in a child process of this binary with
//! `VIPD_DATA_PLANE=io_uring` (the child's vipd is in process as everywhere else). Where this
//! machine refuses io_uring the tests say so and pass as skipped.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use vipd::proxy::spike::{DataPlane, uring};

use crate::support::backend::{Behaviour, named_backends};
use crate::support::{Running, echo_round_trip, service, within};

/// Whether this process serves TCP with io_uring. Otherwise runs `test` in a child process
/// that does (or reports the skip) and returns false: the caller returns at once.
async fn on_uring(test: &str) -> bool {
    if matches!(DataPlane::from_env(), Ok(DataPlane::IoUring)) {
        return true;
    }
    if let Err(error) = uring::probe() {
        eprintln!("SKIPPED spike_uring::{test}: io_uring is not available here ({error})");
        return false;
    }
    let output = tokio::process::Command::new(std::env::current_exe().expect("test binary"))
        .args([&format!("spike_uring::{test}"), "--exact", "--nocapture"])
        .env("VIPD_DATA_PLANE", "io_uring")
        .output()
        .await
        .expect("run the test on io_uring");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success() && stdout.contains("1 passed"),
        "{test} on io_uring: {}\n{stdout}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    false
}

/// Asserts that ring threads serve this process (so the test did not run on tokio).
fn assert_ring_threads() {
    let names: Vec<String> = std::fs::read_dir("/proc/self/task")
        .expect("tasks")
        .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("comm")).ok())
        .collect();
    assert!(
        names.iter().any(|name| name.starts_with("vipd-uring-")),
        "no vipd-uring thread: {names:?}"
    );
}

#[tokio::test]
async fn round_robin_over_three_echo_backends() {
    if !on_uring("round_robin_over_three_echo_backends").await {
        return;
    }
    let backends = named_backends(3, Behaviour::Echo).await;
    let addrs: Vec<SocketAddr> = backends.iter().map(|b| b.addr).collect();
    let vipd = Running::start(vec![service("uring-rr", &addrs)], false).await;
    assert_ring_threads();
    let vip = vipd.addr("uring-rr");
    for i in 0..90u32 {
        let mut stream = TcpStream::connect(vip).await.expect("connect");
        echo_round_trip(&mut stream, format!("hello {i}").as_bytes()).await;
        // A message larger than one relay buffer, in both directions.
        echo_round_trip(&mut stream, &vec![i as u8; 100_000]).await;
    }
    let state = vipd.service("uring-rr");
    for addr in &addrs {
        let endpoint = state.endpoint(*addr).expect("endpoint");
        assert_eq!(endpoint.connections_total(), 30, "{addr}");
    }
    // Connections end: the active counts fall back to zero.
    crate::support::poll_until("active counts back to zero", || async {
        let active: u64 = addrs
            .iter()
            .map(|a| state.endpoint(*a).unwrap().active_connections())
            .sum();
        if active == 0 {
            Ok(())
        } else {
            Err(format!("{active} active"))
        }
    })
    .await;
    vipd.stop().await.expect("stop");
}

#[tokio::test]
async fn half_close_works_both_ways() {
    if !on_uring("half_close_works_both_ways").await {
        return;
    }
    // Client → endpoint EOF: the backend answers only after it.
    let counting = named_backends(1, Behaviour::CountThenAnswer).await;
    let echo = named_backends(1, Behaviour::Echo).await;
    let vipd = Running::start(
        vec![
            service("uring-count", &[counting[0].addr]),
            service("uring-echo", &[echo[0].addr]),
        ],
        false,
    )
    .await;
    let mut stream = TcpStream::connect(vipd.addr("uring-count")).await.unwrap();
    stream.write_all(&[7u8; 50_000]).await.unwrap();
    stream.shutdown().await.unwrap();
    let mut answer = String::new();
    within("answer after EOF", stream.read_to_string(&mut answer))
        .await
        .unwrap();
    assert_eq!(answer, "got 50000 bytes");

    // Endpoint → client EOF: the echo backend shuts down after our EOF; everything it echoed
    // arrives before the EOF we then read.
    let mut stream = TcpStream::connect(vipd.addr("uring-echo")).await.unwrap();
    echo_round_trip(&mut stream, b"before").await;
    stream.write_all(b"last words").await.unwrap();
    stream.shutdown().await.unwrap();
    let mut rest = Vec::new();
    within("echo then EOF", stream.read_to_end(&mut rest))
        .await
        .unwrap();
    assert_eq!(rest, b"last words");
    vipd.stop().await.expect("stop");
}

#[tokio::test]
async fn a_dead_endpoint_fails_over() {
    if !on_uring("a_dead_endpoint_fails_over").await {
        return;
    }
    let mut backends = named_backends(3, Behaviour::Echo).await;
    let addrs: Vec<SocketAddr> = backends.iter().map(|b| b.addr).collect();
    let vipd = Running::start(vec![service("uring-failover", &addrs)], false).await;
    backends[1].stop().await;
    let vip = vipd.addr("uring-failover");
    for i in 0..30u32 {
        let mut stream = TcpStream::connect(vip).await.expect("connect");
        echo_round_trip(&mut stream, format!("try {i}").as_bytes()).await;
    }
    let state = vipd.service("uring-failover");
    assert_eq!(state.endpoint(addrs[1]).unwrap().connections_total(), 0);
    let served: u64 = [0, 2]
        .iter()
        .map(|&i| state.endpoint(addrs[i]).unwrap().connections_total())
        .sum();
    assert_eq!(served, 30);
    vipd.stop().await.expect("stop");
}

#[tokio::test]
async fn an_idle_connection_is_closed() {
    if !on_uring("an_idle_connection_is_closed").await {
        return;
    }
    let backends = named_backends(1, Behaviour::Echo).await;
    let mut svc = service("uring-idle", &[backends[0].addr]);
    svc.connection.idle_timeout = Duration::from_millis(300);
    let vipd = Running::start(vec![svc], false).await;
    let mut stream = TcpStream::connect(vipd.addr("uring-idle")).await.unwrap();
    echo_round_trip(&mut stream, b"ping").await;
    let started = tokio::time::Instant::now();
    let mut buffer = [0u8; 16];
    let read = within("idle close", stream.read(&mut buffer)).await;
    assert!(matches!(read, Ok(0)), "{read:?}");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(250) && waited < Duration::from_secs(2),
        "{waited:?}"
    );
    vipd.stop().await.expect("stop");
}
