//! Test harness: backends, a running vipd, and helpers to await events instead of sleeping.

pub mod backend;
/// A DNS server on loopback whose records tests change (shared with the library's unit tests,
/// which use more of it than these tests do).
#[allow(dead_code)]
#[path = "../../../src/discovery/test_dns.rs"]
pub mod dns_server;
pub mod harness;
pub mod http;
pub mod postgres;
pub mod process;
pub mod redis;
pub mod server;
pub mod udp;

pub use backend::Backend;
pub use harness::{Running, service};

use std::future::Future;
use std::time::Duration;

/// Upper bound on waiting for an event that should come much sooner: a failure guard only.
pub const GUARD: Duration = Duration::from_secs(20);

/// Awaits `future`, failing the test with `what` if it takes longer than [`GUARD`].
pub async fn within<F: Future>(what: &str, future: F) -> F::Output {
    tokio::time::timeout(GUARD, future)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

/// How often [`poll_until`] looks again.
pub const POLL: Duration = Duration::from_millis(20);

/// Polls `check` every [`POLL`] until it returns `Ok`, for conditions of another process that
/// sends no event (a server accepting, a replica's link): at most [`GUARD`] and that many polls.
/// `Err` carries what was seen, for the failure message.
pub async fn poll_until<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let deadline = tokio::time::Instant::now() + GUARD;
    let mut last = String::from("(not checked)");
    for _ in 0..GUARD.as_millis() / POLL.as_millis() {
        // A check that hangs (a server that accepts and never answers) counts against the
        // same deadline.
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match tokio::time::timeout(left, check()).await {
            Ok(Ok(value)) => return value,
            Ok(Err(seen)) => last = seen,
            Err(_) => break,
        }
        if tokio::time::Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(POLL).await;
    }
    panic!("timed out waiting for {what}; last seen: {last}");
}

/// Waits for the next `change` of `endpoint` among a service's events, skipping others.
pub async fn next_change(
    events: &mut tokio::sync::broadcast::Receiver<vipd::service::ServiceEvent>,
    endpoint: std::net::SocketAddr,
    change: vipd::service::Change,
) -> vipd::service::ServiceEvent {
    within(&format!("{endpoint}: {change:?}"), async {
        loop {
            let event = events.recv().await.expect("service events");
            if event.endpoint == endpoint && event.change == change {
                return event;
            }
        }
    })
    .await
}

/// A free port on 127.0.0.1 for configs that cannot say "port 0" (a child process's file, a
/// port a reload moves to).
///
/// Taken below the kernel's ephemeral range (`net.ipv4.ip_local_port_range`, from 32768 by
/// default), so no socket bound to port 0 and no outgoing connection of a concurrent test can
/// take it between this check and its use. A per-process offset keeps concurrent test runs apart.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU16, Ordering};
    static NEXT: AtomicU16 = AtomicU16::new(0);
    const FIRST: u16 = 10_000;
    const PER_PROCESS: u16 = 200;
    let ephemeral_start: u16 = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse().ok())
        .unwrap_or(32_768);
    let slots = (ephemeral_start.saturating_sub(FIRST) / PER_PROCESS).max(1);
    let base = FIRST + (std::process::id() % u32::from(slots)) as u16 * PER_PROCESS;
    for _ in 0..PER_PROCESS {
        let port = base + NEXT.fetch_add(1, Ordering::Relaxed) % PER_PROCESS;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port in {base}..{}", base + PER_PROCESS);
}

/// Connects to `addr` and reads everything until the far end closes (what a name backend says).
pub async fn name_through(addr: std::net::SocketAddr) -> String {
    use tokio::io::AsyncReadExt;
    let mut stream = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connect through vipd");
    let mut text = String::new();
    stream.read_to_string(&mut text).await.expect("read");
    text
}

/// Sends `message` on `stream` and expects it echoed back whole.
pub async fn echo_round_trip(stream: &mut tokio::net::TcpStream, message: &[u8]) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    stream.write_all(message).await.expect("send");
    let mut back = vec![0u8; message.len()];
    within("echo", stream.read_exact(&mut back))
        .await
        .expect("echo");
    assert_eq!(back, message);
}
