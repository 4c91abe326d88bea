//! Micro-benchmarks of placement: one pick per policy (what every new connection pays) at 3,
//! 100 and 1,000 endpoints; the Maglev table build for 1,000 endpoints (the owner task's cost
//! when a maglev service's set changes); and an affinity lookup + refresh, alone and with two
//! threads at once on one table. Run with `cargo bench --bench picker`.

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use vipd::balance::{AffinityTable, MaglevTable, MaglevTables, PickerState};
use vipd::config::{Balance, Protocol, SessionAffinity, WhenAllUnhealthy};
use vipd::service::{Placement, PortPool};

mod support;

const POLICIES: [Balance; 5] = [
    Balance::RoundRobin,
    Balance::LeastConnections,
    Balance::PowerOfTwo,
    Balance::Random,
    Balance::Maglev,
];

/// Distinct client addresses, cycled through by the picks.
fn clients() -> Vec<IpAddr> {
    (0..4096u32)
        .map(|i| IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i * 7919)))
        .collect()
}

fn pool(balance: Balance, affinity: SessionAffinity, size: usize) -> PortPool {
    let endpoints = support::endpoints(size);
    // Weights 1, 2, 3, … so weighted policies do real work.
    for (i, e) in endpoints.iter().enumerate() {
        e.set_placement(1 + (i % 3) as u32, false);
    }
    PortPool::new(
        (Protocol::Tcp, 80),
        &endpoints,
        Placement {
            balance,
            when_all_unhealthy: WhenAllUnhealthy::FailOpen,
            affinity: affinity != SessionAffinity::None,
        },
        Arc::new(PickerState::new(affinity, tokio::time::Instant::now())),
        &mut MaglevTables::default(),
    )
}

fn pick(c: &mut Criterion) {
    let clients = clients();
    for balance in POLICIES {
        for size in [3, 100, 1000] {
            let pool = pool(balance, SessionAffinity::None, size);
            let mut next = 0usize;
            c.bench_function(&format!("pick/{}/{size}", balance.as_str()), |b| {
                b.iter(|| {
                    next = (next + 1) & 4095;
                    let first = pool.first(Some(clients[next]), None);
                    black_box(&pool.tier.candidates()[first]);
                })
            });
        }
    }
}

fn maglev_build(c: &mut Criterion) {
    let members: Vec<(SocketAddr, u32)> = support::endpoints(1000)
        .iter()
        .enumerate()
        .map(|(i, e)| (e.addr(), 1 + (i % 3) as u32))
        .collect();
    c.bench_function("maglev_build/1000", |b| {
        b.iter(|| black_box(MaglevTable::build(&members)))
    });
}

/// Per lookup+refresh, with `threads` threads working the same table at once.
fn affinity(c: &mut Criterion) {
    let clients = clients();
    let timeout = Duration::from_secs(10_800);
    for threads in [1usize, 2] {
        let table = Arc::new(AffinityTable::new(65_536, tokio::time::Instant::now()));
        let now = tokio::time::Instant::now();
        for (i, &ip) in clients.iter().enumerate() {
            table.remember(ip, i as u32, now);
        }
        c.bench_function(&format!("affinity_lookup/{threads}_threads"), |b| {
            b.iter_custom(|iters| {
                let started = Instant::now();
                std::thread::scope(|scope| {
                    for t in 0..threads {
                        let (table, clients) = (&table, &clients);
                        scope.spawn(move || {
                            let now = tokio::time::Instant::now();
                            for i in 0..iters as usize {
                                let ip = clients[(i * 13 + t * 2048) & 4095];
                                if let Some(id) = table.lookup(ip, now, timeout) {
                                    table.remember(ip, id, now);
                                }
                                black_box(());
                            }
                        });
                    }
                });
                // Wall time per lookup of one thread: with two threads, how much they slow
                // each other down.
                started.elapsed()
            })
        });
    }
}

criterion_group!(benches, pick, maglev_build, affinity);
criterion_main!(benches);
