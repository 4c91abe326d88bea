//! Micro-benchmarks of the UDP data path in memory (no sockets, no syscalls): what a worker
//! does per datagram besides the `recvfrom`/`send` themselves.
//!
//! - `udp_flow_lookup/N`: the flow of a client address in a table of N flows.
//! - `udp_datagram_in/N`: a client datagram on an existing flow: lookup, stamp, the endpoint's
//!   rotation check, and the datagram and byte counters.
//! - `udp_datagram_out/N`: a reply: its flow put on the port's ready list (as the loop does for
//!   the socket's readiness event) and taken from it, the flow stamped, the endpoint's failure
//!   run checked, the counters.
//! - `udp_flow_open_close`: a flow's bookkeeping from start to end (the count against
//!   `max_udp_flows`, the endpoint's flow count and gauge, the table entry), without its socket.
//!
//! - `udp_loopback_32/…`: 32 datagrams through real loopback sockets, sent and received:
//!   `one_by_one` (32 `sendto` and 32 `recvfrom`, as a loop without batches) and `batched` (one
//!   `sendmmsg` and one `recvmmsg`), 100-131 bytes (all lengths differ, so no train forms);
//!   `trains_1400`: 32 datagrams of 1,400 bytes, which the batch sends as one GSO train it
//!   makes, to a receiver without GRO (the kernel cuts it); `gso_gro_1400`: the same to a
//!   receiver with GRO, which takes the train whole.
//!
//! Client addresses are visited in a scattered order so the table's cache misses count. The
//! Prometheus recorder is installed so counters cost what they cost in vipd.
//! Run with `cargo bench --bench udp`.

use std::hint::black_box;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;

use std::os::fd::AsFd;

use criterion::{Criterion, criterion_group, criterion_main};
use vipd::proxy::udp::batch::{self, SLOTS, Slots};
use vipd::proxy::udp::flows::{FlowTable, Route};

mod support;

const SIZES: [usize; 3] = [1_000, 16_384, 131_072];
/// A datagram's length, for the byte counters.
const LEN: usize = 512;

/// `count` distinct client addresses (IP and port vary).
fn clients(count: usize) -> Vec<SocketAddr> {
    (0..count as u32)
        .map(|i| {
            SocketAddr::from((
                Ipv4Addr::from(0x0a00_0000 + i * 7919),
                1024 + (i % 50_000) as u16,
            ))
        })
        .collect()
}

/// A table of one flow per client over 3 endpoints, and a scattered visiting order.
fn table(count: usize) -> (FlowTable<()>, Vec<SocketAddr>, Vec<usize>) {
    let endpoints = support::endpoints(3);
    let clients = clients(count);
    let mut table = FlowTable::new(Arc::new(AtomicUsize::new(0)));
    let stamp = table.stamp(tokio::time::Instant::now());
    let ids = clients
        .iter()
        .enumerate()
        .map(|(i, &client)| {
            let pin = || Ok((endpoints[i % 3].flow_pinned(), ()));
            table
                .try_insert(usize::MAX, client, stamp, pin)
                .expect("no limit")
        })
        .collect();
    (table, clients, ids)
}

/// Visits 0..count in an order that jumps around: a prime stride, coprime with every size.
fn scattered(count: usize) -> impl FnMut() -> usize {
    const STRIDE: usize = 7_919;
    let mut at = 0;
    move || {
        at = (at + STRIDE) % count;
        at
    }
}

fn lookup(c: &mut Criterion) {
    for size in SIZES {
        let (table, clients, _) = table(size);
        let mut next = scattered(size);
        c.bench_function(&format!("udp_flow_lookup/{size}"), |b| {
            b.iter(|| black_box(table.lookup(clients[next()])))
        });
    }
}

fn datagram_in(c: &mut Criterion) {
    vipd::metrics::install();
    for size in SIZES {
        let (mut table, clients, _) = table(size);
        let mut next = scattered(size);
        let stamp = table.stamp(tokio::time::Instant::now());
        c.bench_function(&format!("udp_datagram_in/{size}"), |b| {
            b.iter(|| match table.route(clients[next()], stamp) {
                Route::Forward(id) => {
                    let flow = table.get(id).expect("routed");
                    flow.endpoint().datagrams_in(1, black_box(LEN));
                }
                other => panic!("every flow stays: {other:?}"),
            })
        });
    }
}

fn datagram_out(c: &mut Criterion) {
    vipd::metrics::install();
    for size in SIZES {
        let (mut table, _, ids) = table(size);
        let mut ready = Vec::with_capacity(64);
        let mut next = scattered(size);
        let stamp = table.stamp(tokio::time::Instant::now());
        c.bench_function(&format!("udp_datagram_out/{size}"), |b| {
            b.iter(|| {
                ready.push(black_box(ids[next()]));
                for id in ready.drain(..) {
                    let flow = table.get_mut(id).expect("a live flow");
                    flow.touch(stamp);
                    flow.endpoint().record_connect_success();
                    flow.endpoint().datagrams_out(1, black_box(LEN));
                }
            })
        });
    }
}

fn open_close(c: &mut Criterion) {
    vipd::metrics::install();
    let endpoint = Arc::clone(&support::endpoints(1)[0]);
    let (mut table, _, _) = table(16_384);
    let client = SocketAddr::from(([192, 0, 2, 1], 5353));
    c.bench_function("udp_flow_open_close", |b| {
        b.iter(|| {
            let pin = || Ok((endpoint.flow_pinned(), ()));
            let id = table
                .try_insert(1 << 20, client, 0, pin)
                .expect("below the limit");
            black_box(table.remove(id))
        })
    });
}

/// Two loopback sockets: a sender and a non-blocking receiver (with GRO when `gro`).
fn loopback_pair(gro: bool) -> (std::net::UdpSocket, std::net::UdpSocket) {
    let sender = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
    let receiver = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
    if gro {
        assert!(batch::enable_gro(receiver.as_fd()), "UDP GRO");
    }
    receiver.set_nonblocking(true).expect("non-blocking");
    (sender, receiver)
}

/// Receives until `datagrams` datagrams (segments counted) came; loopback has them queued by
/// the time the send returns.
fn receive_all(receiver: &std::net::UdpSocket, slots: &mut Slots, datagrams: usize) {
    let mut got = 0;
    while got < datagrams {
        let n = batch::recv(receiver.as_fd(), slots, 0, SLOTS).expect("queued on loopback");
        got += (0..n).map(|slot| slots.meta(slot).count()).sum::<usize>();
    }
}

fn loopback(c: &mut Criterion) {
    let order: Vec<u8> = (0..SLOTS as u8).collect();
    for (name, gro) in [
        ("one_by_one", false),
        ("batched", false),
        ("trains_1400", false),
        ("gso_gro_1400", true),
    ] {
        let (sender, receiver) = loopback_pair(gro);
        let to = receiver.local_addr().expect("bound");
        let mut out = Slots::new();
        for slot in 0..SLOTS {
            let len = if name.ends_with("1400") {
                1_400
            } else {
                100 + slot
            };
            out.fill(slot, &vec![slot as u8; len], 0, to);
        }
        let mut inbox = Slots::new();
        let mut buf = [0u8; 2_048];
        c.bench_function(&format!("udp_loopback_32/{name}"), |b| {
            b.iter(|| {
                if name == "one_by_one" {
                    for slot in 0..SLOTS {
                        sender.send_to(out.data(slot), to).expect("send");
                    }
                    for _ in 0..SLOTS {
                        black_box(receiver.recv_from(&mut buf).expect("queued on loopback"));
                    }
                } else {
                    let sent = batch::send_to(sender.as_fd(), &mut out, &order).expect("send");
                    assert_eq!(sent, SLOTS);
                    receive_all(&receiver, &mut inbox, SLOTS);
                }
            })
        });
    }
}

criterion_group!(
    benches,
    lookup,
    datagram_in,
    datagram_out,
    open_close,
    loopback
);
criterion_main!(benches);
