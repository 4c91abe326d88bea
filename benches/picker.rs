//! Micro-benchmarks of the per-connection pick: the round-robin start over a snapshot's
//! candidates, at 3 and 1000 endpoints. Run with `cargo bench --bench picker`.

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use tokio_util::sync::CancellationToken;
use vipd::balance::Picker;
use vipd::config::Balance;
use vipd::service::{Endpoint, PortPool};

fn pool(endpoints: usize) -> PortPool {
    let endpoints = (0..endpoints)
        .map(|i| {
            let ip = IpAddr::V4(Ipv4Addr::new(127, 0, (i / 250) as u8, (i % 250) as u8 + 1));
            Arc::new(Endpoint::new(
                "bench",
                SocketAddr::new(ip, 9000),
                &CancellationToken::new(),
            ))
        })
        .collect();
    PortPool::new(80, endpoints, Arc::new(Picker::new(Balance::RoundRobin)))
}

fn pick(c: &mut Criterion) {
    for size in [3, 1000] {
        let pool = pool(size);
        c.bench_function(&format!("round_robin_pick/{size}"), |b| {
            b.iter(|| {
                let (candidates, _) = pool.candidates();
                let first = pool.picker.first(candidates.len());
                black_box(&candidates[first]);
            })
        });
    }
}

criterion_group!(benches, pick);
criterion_main!(benches);
