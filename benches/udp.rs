//! Micro-benchmarks of the UDP data path in memory (no sockets, no syscalls): what a worker
//! does per datagram besides the `recvfrom`/`send` themselves.
//!
//! - `udp_flow_lookup/N`: the flow of a client address in a table of N flows.
//! - `udp_datagram_in/N`: a client datagram on an existing flow: lookup, stamp, the endpoint's
//!   rotation check, and the datagram and byte counters.
//! - `udp_datagram_out/N`: a reply: its slot marked ready by the socket's waker and taken by
//!   the loop, the flow stamped, the endpoint's failure run checked, the counters.
//! - `udp_flow_open_close`: a flow's bookkeeping from start to end (the count against
//!   `max_udp_flows`, the endpoint's flow count and gauge, the table entry), without its socket.
//!
//! Client addresses are visited in a scattered order so the table's cache misses count. The
//! Prometheus recorder is installed so counters cost what they cost in vipd.
//! Run with `cargo bench --bench udp`.

use std::hint::black_box;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;

use criterion::{Criterion, criterion_group, criterion_main};
use vipd::proxy::udp::flows::{FlowTable, Route};
use vipd::proxy::udp::ready::ReadySet;

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
        let mut ready = ReadySet::new();
        ready.cover(table.slots() - 1);
        let mut next = scattered(size);
        let stamp = table.stamp(tokio::time::Instant::now());
        c.bench_function(&format!("udp_datagram_out/{size}"), |b| {
            b.iter(|| {
                let id = ids[next()];
                ready.waker(id).wake_by_ref();
                for chunk in 0..ready.chunks() {
                    ready.take(chunk, |slot| {
                        let flow = table.get_mut(slot).expect("a live flow");
                        flow.touch(stamp);
                        flow.endpoint().record_connect_success();
                        flow.endpoint().datagrams_out(1, black_box(LEN));
                    });
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

criterion_group!(benches, lookup, datagram_in, datagram_out, open_close);
criterion_main!(benches);
