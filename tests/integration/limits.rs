//! Admission control: `max_connections` of a service and of the process stop accepting at the
//! limit (clients wait in the kernel's queue, nobody is reset), and a per-endpoint limit queues
//! connections first come first served until `queue_timeout`.

use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

use crate::support::backend::Behaviour;
use crate::support::harness::config;
use crate::support::http::{get, sample};
use crate::support::{Backend, Running, poll_until, service, within};

const NAME: &str = "held";

/// Reads the backend's name from a connection through vipd.
async fn name_of(mut stream: TcpStream) -> (TcpStream, String) {
    let mut name = vec![0; NAME.len()];
    stream
        .read_exact(&mut name)
        .await
        .expect("the name, not a reset");
    (stream, String::from_utf8(name).unwrap())
}

/// True when nothing has arrived on `stream` (no byte, no EOF, no reset) so far.
fn nothing_yet(stream: &TcpStream) -> bool {
    let mut byte = [0; 1];
    matches!(stream.try_read(&mut byte), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
}

fn limit(n: u32) -> Option<NonZeroU32> {
    NonZeroU32::new(n)
}

/// Connections waiting in the kernel's accept queues of the listeners on `addr` (IPv4), summed
/// over the workers' sockets: the `rx_queue` of a LISTEN entry in /proc/net/tcp.
fn accept_queue(addr: SocketAddr) -> u64 {
    let SocketAddr::V4(v4) = addr else {
        panic!("IPv4 only")
    };
    let local = format!(
        "{:08X}:{:04X}",
        u32::from_le_bytes(v4.ip().octets()),
        v4.port()
    );
    std::fs::read_to_string("/proc/net/tcp")
        .unwrap()
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            (fields[1] == local && fields[3] == "0A").then(|| {
                let rx = fields[4].split(':').nth(1).unwrap();
                u64::from_str_radix(rx, 16).unwrap()
            })
        })
        .sum()
}

#[tokio::test]
async fn a_service_at_max_connections_stops_accepting_and_serves_the_rest_in_turn() {
    let backend = Backend::start_with_backlog(NAME, Behaviour::NameThenHold, 256).await;
    let mut svc = service("limited", &[backend.addr]);
    svc.max_connections = limit(50);
    let vipd = Running::start_config(config(vec![svc], true)).await;
    let vip = vipd.addr("limited");
    let state = vipd.service("limited");

    // 60 clients at once: the kernel completes every handshake, vipd takes 50.
    let mut clients = Vec::new();
    for _ in 0..60 {
        clients.push(TcpStream::connect(vip).await.unwrap());
    }
    let mut reading: FuturesUnordered<_> = clients.into_iter().map(name_of).collect();
    let mut served = Vec::new();
    for _ in 0..50 {
        let (stream, name) = within("the first 50 served", reading.next()).await.unwrap();
        assert_eq!(name, NAME);
        served.push(stream);
    }
    // The other ten wait in the kernel's accept queue, not in vipd.
    poll_until("ten clients in the accept queue", || async {
        let queued = accept_queue(vip);
        (queued == 10)
            .then_some(())
            .ok_or(format!("{queued} queued"))
    })
    .await;
    let endpoint = state.endpoint(backend.addr).unwrap();
    assert_eq!(endpoint.active_connections(), 50, "no 51st connection");
    assert_eq!(state.limit.open(), 50);
    let page = get(vipd.admin.unwrap(), "/metrics").await.body;
    assert_eq!(
        sample(
            &page,
            "vipd_connection_limit_reached_total",
            &[("service", "limited")]
        ),
        Some(1.0)
    );

    // Each close lets one waiting client in; all ten get their answer, none is reset.
    for closed in 0..10 {
        drop(served.pop());
        let (stream, name) = within("a waiting client served", reading.next())
            .await
            .unwrap();
        assert_eq!(name, NAME, "after {closed} closes");
        served.push(stream);
    }
    assert!(reading.next().await.is_none());
    poll_until("50 connections to the endpoint", || async {
        let active = endpoint.active_connections();
        (active == 50)
            .then_some(())
            .ok_or(format!("{active} active"))
    })
    .await;
}

#[tokio::test]
async fn the_process_limit_holds_over_all_services() {
    let one = Backend::start(NAME, Behaviour::NameThenHold).await;
    let two = Backend::start(NAME, Behaviour::NameThenHold).await;
    let mut cfg = config(
        vec![
            service("first", &[one.addr]),
            service("second", &[two.addr]),
        ],
        false,
    );
    cfg.runtime.max_connections = limit(3);
    let vipd = Running::start_config(cfg).await;
    let mut served = Vec::new();
    for name in ["first", "second", "first"] {
        let stream = TcpStream::connect(vipd.addr(name)).await.unwrap();
        served.push(within("served below the limit", name_of(stream)).await.0);
    }
    let waiting = TcpStream::connect(vipd.addr("second")).await.unwrap();
    // The fourth is accepted only once one of the three closes.
    poll_until("the fourth client to wait in the accept queue", || async {
        let queued = accept_queue(vipd.addr("second"));
        (queued == 1)
            .then_some(())
            .ok_or(format!("{queued} queued"))
    })
    .await;
    assert!(nothing_yet(&waiting));
    let waiting = tokio::spawn(name_of(waiting));
    drop(served.remove(0));
    let (_, name) = within("the fourth served", waiting).await.unwrap();
    assert_eq!(name, NAME);
}

#[tokio::test]
async fn an_endpoint_at_its_limit_queues_clients_in_arrival_order() {
    let backend = Backend::start(NAME, Behaviour::NameThenHold).await;
    let mut svc = service("queued", &[backend.addr]);
    svc.max_connections_per_endpoint = limit(2);
    svc.connection.queue_timeout = Duration::from_secs(60);
    let vipd = Running::start(vec![svc], false).await;
    let state = vipd.service("queued");
    let vip = vipd.addr("queued");

    let mut served = Vec::new();
    for _ in 0..2 {
        let stream = TcpStream::connect(vip).await.unwrap();
        served.push(within("served below the limit", name_of(stream)).await.0);
    }
    // Three more, one at a time so their arrival order is known.
    let mut queued = Vec::new();
    for n in 1..=3 {
        queued.push(TcpStream::connect(vip).await.unwrap());
        poll_until("the client to queue", || async {
            let len = state.queue.len();
            (len == n).then_some(()).ok_or(format!("{len} queued"))
        })
        .await;
    }
    assert!(queued.iter().all(nothing_yet));
    assert_eq!(state.status().queued_connections, 3);

    // Every close serves the head of the queue, and only it.
    for left in (0..3).rev() {
        drop(served.remove(0));
        let head = queued.remove(0);
        let (stream, name) = within("the head of the queue served", name_of(head)).await;
        assert_eq!(name, NAME);
        served.push(stream);
        poll_until("the queue to shrink", || async {
            let len = state.queue.len();
            (len == left).then_some(()).ok_or(format!("{len} queued"))
        })
        .await;
        assert!(queued.iter().all(nothing_yet), "only the head moved");
    }
    assert_eq!(
        state.endpoint(backend.addr).unwrap().active_connections(),
        2
    );
}

#[tokio::test]
async fn a_queued_client_is_closed_after_queue_timeout() {
    let backend = Backend::start(NAME, Behaviour::NameThenHold).await;
    let mut svc = service("impatient", &[backend.addr]);
    svc.max_connections_per_endpoint = limit(1);
    svc.connection.queue_timeout = Duration::from_millis(200);
    let vipd = Running::start(vec![svc], true).await;
    let vip = vipd.addr("impatient");
    let held = within("served", name_of(TcpStream::connect(vip).await.unwrap())).await;

    let mut late = TcpStream::connect(vip).await.unwrap();
    let mut rest = Vec::new();
    let read = within("closed after queue_timeout", late.read_to_end(&mut rest)).await;
    assert!(
        read.is_ok() && rest.is_empty(),
        "closed, not answered: {read:?}"
    );
    let page = get(vipd.admin.unwrap(), "/metrics").await.body;
    assert_eq!(
        sample(
            &page,
            "vipd_queue_timeouts_total",
            &[("service", "impatient")]
        ),
        Some(1.0)
    );
    assert_eq!(vipd.service("impatient").queue.len(), 0);
    // The slot holder was never disturbed.
    assert!(nothing_yet(&held.0));
}

#[tokio::test]
async fn raised_limits_apply_on_reload_to_clients_already_waiting() {
    let backend = Backend::start(NAME, Behaviour::NameThenHold).await;
    let mut svc = service("grown", &[backend.addr]);
    svc.max_connections = limit(1);
    svc.max_connections_per_endpoint = limit(1);
    svc.connection.queue_timeout = Duration::from_secs(60);
    let before = config(vec![svc], false);
    let vipd = Running::start_config(before.clone()).await;
    let vip = vipd.addr("grown");
    let state = vipd.service("grown");
    let _held = within("served", name_of(TcpStream::connect(vip).await.unwrap())).await;

    // At the service's limit: the next client waits in the kernel's accept queue.
    let waiting = TcpStream::connect(vip).await.unwrap();
    poll_until("the client in the accept queue", || async {
        let queued = accept_queue(vip);
        (queued == 1)
            .then_some(())
            .ok_or(format!("{queued} queued"))
    })
    .await;

    // A higher service limit: accepted, and now waiting for the endpoint, which is full.
    let mut after = before.clone();
    after.services[0].max_connections = limit(3);
    vipd.state
        .apply(after.clone())
        .await
        .expect("reload applies");
    poll_until("the client in the endpoint queue", || async {
        let len = state.queue.len();
        (len == 1).then_some(()).ok_or(format!("{len} queued"))
    })
    .await;
    assert!(nothing_yet(&waiting));

    // A higher endpoint limit: served at once.
    after.services[0].max_connections_per_endpoint = limit(2);
    vipd.state.apply(after).await.expect("reload applies");
    let (_, name) = within("served after the reload", name_of(waiting)).await;
    assert_eq!(name, NAME);
    assert_eq!(state.queue.len(), 0);
}
