//! Data path: round robin, connect failover, half-close (and without it), integrity, idle
//! timeout.

use std::collections::HashMap;
use std::hash::Hasher;
use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use vipd::app::App;
use vipd::config::HealthCheck;

use crate::support::backend::Behaviour;
use crate::support::harness::{config, with_health};
use crate::support::name_through;
use crate::support::{Backend, Running, echo_round_trip, service, within};

async fn named_backends(n: usize) -> Vec<Backend> {
    crate::support::backend::named_backends(n, Behaviour::Name).await
}

#[tokio::test]
async fn round_robin_spreads_connections_exactly() {
    let backends = named_backends(3).await;
    let addrs: Vec<SocketAddr> = backends.iter().map(|b| b.addr).collect();
    let vipd = Running::start(vec![service("rr-exact", &addrs)], false).await;
    let vip = vipd.addr("rr-exact");

    let mut hits: HashMap<String, usize> = HashMap::new();
    for _ in 0..300 {
        *hits.entry(name_through(vip).await).or_default() += 1;
    }
    for backend in &backends {
        assert_eq!(hits.get(&backend.name), Some(&100), "hits: {hits:?}");
    }
    assert_eq!(hits.len(), 3, "hits: {hits:?}");
}

#[tokio::test]
async fn dead_endpoint_costs_no_client_connection() {
    let mut backends = named_backends(3).await;
    let addrs: Vec<SocketAddr> = backends.iter().map(|b| b.addr).collect();
    // Health checks run, but with a period far longer than the test: only failover can help.
    let svc = with_health(
        service("failover", &addrs),
        HealthCheck::tcp(),
        Duration::from_secs(3600),
    );
    let vipd = Running::start(vec![svc], false).await;
    vipd.ready().await;
    let vip = vipd.addr("failover");

    backends[1].stop().await;
    let dead = backends[1].name.clone();
    let mut hits: HashMap<String, usize> = HashMap::new();
    for i in 0..100 {
        let answer = name_through(vip).await;
        assert!(!answer.is_empty(), "connection {i} got nothing");
        *hits.entry(answer).or_default() += 1;
    }
    assert!(!hits.contains_key(&dead), "hits: {hits:?}");
    assert_eq!(hits.values().sum::<usize>(), 100);
    let service = vipd.service("failover");
    let dead_endpoint = service.endpoint(backends[1].addr).unwrap();
    assert!(
        dead_endpoint.is_healthy(),
        "health checks must not have noticed yet"
    );
}

#[tokio::test]
async fn every_endpoint_down_closes_the_client_connection() {
    let mut backends = named_backends(2).await;
    let addrs: Vec<SocketAddr> = backends.iter().map(|b| b.addr).collect();
    for backend in &mut backends {
        backend.stop().await;
    }
    let vipd = Running::start(vec![service("all-down", &addrs)], false).await;
    assert_eq!(name_through(vipd.addr("all-down")).await, "");
}

#[tokio::test]
async fn no_healthy_endpoint_fails_open() {
    // The endpoint serves traffic but fails its health check (probe port has nothing).
    let backend = Backend::start("only", Behaviour::Name).await;
    let closed_port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let mut svc = with_health(
        service("fail-open", &[backend.addr]),
        HealthCheck::tcp(),
        Duration::from_millis(100),
    );
    svc.health.port = Some(closed_port);
    svc.health.failure_threshold = std::num::NonZeroU32::new(1).unwrap();
    let vipd = Running::start(vec![svc], false).await;
    let service = vipd.service("fail-open");
    let mut events = service.subscribe();
    let endpoint = service.endpoints()[0].clone();
    if endpoint.is_healthy() {
        crate::support::next_change(&mut events, backend.addr, vipd::service::Change::Down).await;
    }
    assert_eq!(name_through(vipd.addr("fail-open")).await, "only");
}

#[tokio::test]
async fn half_close_keeps_the_other_direction_open() {
    let backend = Backend::start("counter", Behaviour::CountThenAnswer).await;
    let vipd = Running::start(vec![service("half-close", &[backend.addr])], false).await;
    let mut stream = TcpStream::connect(vipd.addr("half-close")).await.unwrap();
    stream.write_all(&[7u8; 100_000]).await.unwrap();
    // Our EOF must reach the backend while its answer can still come back.
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
async fn without_half_close_the_first_end_closes_the_connection() {
    let backend = Backend::start("counter", Behaviour::CountThenAnswer).await;
    let mut svc = service("no-half-close", &[backend.addr]);
    svc.connection.half_close = false;
    let vipd = Running::start(vec![svc], false).await;
    let mut stream = TcpStream::connect(vipd.addr("no-half-close"))
        .await
        .unwrap();
    stream.write_all(&[7u8; 100_000]).await.unwrap();
    stream.shutdown().await.unwrap();
    // The backend answers only after our EOF, which reaches it as vipd's close of both ways.
    let mut answer = String::new();
    within("close after our end", stream.read_to_string(&mut answer))
        .await
        .unwrap();
    assert_eq!(answer, "", "nothing comes back once our direction ended");
}

/// Deterministic pseudo-random bytes (xorshift64*), so both ends can agree without storing them.
struct Noise(u64);

impl Noise {
    fn fill(&mut self, buffer: &mut [u8]) {
        for chunk in buffer.chunks_mut(8) {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            let word = self.0.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes();
            chunk.copy_from_slice(&word[..chunk.len()]);
        }
    }
}

#[tokio::test]
async fn bytes_arrive_intact_both_ways_at_once() {
    const TOTAL: usize = 64 * 1024 * 1024;
    let backend = Backend::start("echo", Behaviour::Echo).await;
    let vipd = Running::start(vec![service("integrity", &[backend.addr])], false).await;
    let stream = TcpStream::connect(vipd.addr("integrity")).await.unwrap();
    let (mut reader, mut writer) = stream.into_split();

    let send = tokio::spawn(async move {
        let mut noise = Noise(0x9E37_79B9_7F4A_7C15);
        let mut hasher = std::hash::DefaultHasher::new();
        let mut buffer = vec![0u8; 256 * 1024];
        let mut sent = 0;
        while sent < TOTAL {
            noise.fill(&mut buffer);
            writer.write_all(&buffer).await.unwrap();
            hasher.write(&buffer);
            sent += buffer.len();
        }
        writer.shutdown().await.unwrap();
        (sent, hasher.finish())
    });
    let receive = tokio::spawn(async move {
        let mut hasher = std::hash::DefaultHasher::new();
        let mut buffer = vec![0u8; 256 * 1024];
        let mut received = 0;
        let mut pending = Vec::new();
        loop {
            let n = reader.read(&mut buffer).await.unwrap();
            if n == 0 {
                break;
            }
            // Hash in the sender's 256 KiB units so both sides hash the same byte sequence
            // with the same chunking.
            pending.extend_from_slice(&buffer[..n]);
            while pending.len() >= buffer.len() {
                hasher.write(&pending[..buffer.len()]);
                pending.drain(..buffer.len());
            }
            received += n;
        }
        if !pending.is_empty() {
            hasher.write(&pending);
        }
        (received, hasher.finish())
    });
    let (sent, sent_hash) = within("sending 64 MiB", send).await.unwrap();
    let (received, received_hash) = within("receiving 64 MiB", receive).await.unwrap();
    assert_eq!(sent, TOTAL);
    assert_eq!(received, TOTAL);
    assert_eq!(sent_hash, received_hash);
}

#[tokio::test]
async fn idle_connection_is_closed_after_idle_timeout() {
    let backend = Backend::start("echo", Behaviour::Echo).await;
    let mut svc = service("idle", &[backend.addr]);
    svc.connection.idle_timeout = Duration::from_millis(300);
    let vipd = Running::start(vec![svc], false).await;
    let mut stream = TcpStream::connect(vipd.addr("idle")).await.unwrap();
    echo_round_trip(&mut stream, b"ping").await;
    // Nothing more is sent: vipd must close the connection by itself.
    let mut rest = Vec::new();
    let n = within("idle close", stream.read_to_end(&mut rest))
        .await
        .unwrap();
    assert_eq!(n, 0);
    let endpoint = &vipd.service("idle").endpoints()[0];
    assert_eq!(endpoint.connections_total(), 1);
}

/// A listener whose accept queue is full, so further SYNs are dropped and connects hang: the
/// loopback stand-in for an unreachable host.
fn black_hole() -> (socket2::Socket, Vec<std::net::TcpStream>) {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    socket
        .bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into())
        .unwrap();
    socket.listen(0).unwrap();
    let addr = socket.local_addr().unwrap().as_socket().unwrap();
    // Fill the queue: connects complete until it is full; the next one would hang.
    let mut fillers = Vec::new();
    for _ in 0..8 {
        match std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)) {
            Ok(stream) => fillers.push(stream),
            Err(_) => break,
        }
    }
    (socket, fillers)
}

#[tokio::test]
async fn connect_timeout_moves_on_to_the_next_endpoint() {
    let (hole, _fillers) = black_hole();
    let hole_addr = hole.local_addr().unwrap().as_socket().unwrap();
    let backend = Backend::start("alive", Behaviour::Name).await;
    let mut svc = service("connect-timeout", &[hole_addr, backend.addr]);
    svc.connection.connect_timeout = Duration::from_millis(200);
    let vipd = Running::start(vec![svc], false).await;
    // The first connection starts at the black hole, times out, and moves on.
    for _ in 0..2 {
        assert_eq!(name_through(vipd.addr("connect-timeout")).await, "alive");
    }
    let service = vipd.service("connect-timeout");
    let hole_endpoint = &service.endpoints()[0];
    assert_eq!(hole_endpoint.connections_total(), 0);
    assert_eq!(service.endpoints()[1].connections_total(), 2);
}

#[tokio::test]
async fn max_connect_attempts_bounds_failover() {
    let mut dead = named_backends(2).await;
    for backend in &mut dead {
        backend.stop().await;
    }
    let alive = Backend::start("alive", Behaviour::Name).await;
    let mut svc = service("attempts", &[dead[0].addr, dead[1].addr, alive.addr]);
    svc.connection.max_connect_attempts = std::num::NonZeroU32::new(2).unwrap();
    let vipd = Running::start(vec![svc], false).await;
    let vip = vipd.addr("attempts");
    // Starts at dead[0]: two attempts (dead[0], dead[1]) are all it may make.
    assert_eq!(name_through(vip).await, "");
    // Starts at dead[1]: the second attempt reaches the live endpoint.
    assert_eq!(name_through(vip).await, "alive");
    // Starts at the live endpoint.
    assert_eq!(name_through(vip).await, "alive");
}

#[tokio::test]
async fn every_worker_serves_and_a_second_vipd_cannot_share_the_address() {
    let backends = named_backends(1).await;
    let mut first = config(vec![service("workers", &[backends[0].addr])], false);
    first.runtime.workers = NonZeroUsize::new(3);
    let vipd = Running::start_config(first.clone()).await;
    let vip = vipd.addr("workers");
    // Three sockets share the address; whichever one the kernel hands a connection to, the
    // worker behind it serves it.
    for _ in 0..30 {
        assert_eq!(name_through(vip).await, "backend-0");
    }
    // The group is bound with SO_REUSEPORT, which another process of the same user could join:
    // a second vipd on the same address must be refused, not handed half the connections.
    let mut second = first;
    second.services[0].ports[0].port = vip.port();
    let error = App::bind(second).await.expect_err("the address is taken");
    let message = format!("{error:#}");
    assert!(
        message.contains(&format!("cannot listen on {vip}")) && message.contains("in use"),
        "{message}"
    );
    assert_eq!(name_through(vip).await, "backend-0");
    vipd.stop().await.unwrap();
}
