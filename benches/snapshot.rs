//! Micro-benchmark of the snapshot rebuild the owner task does when health changes:
//! `PortPool::new` over N endpoints (filtering the healthy subset, cloning `Arc`s).
//! Run with `cargo bench --bench snapshot`.

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use tokio_util::sync::CancellationToken;
use vipd::balance::Picker;
use vipd::config::Balance;
use vipd::service::{Endpoint, PortPool};

fn endpoints(count: usize) -> Vec<Arc<Endpoint>> {
    (0..count)
        .map(|i| {
            let ip = IpAddr::V4(Ipv4Addr::new(127, 0, (i / 250) as u8, (i % 250) as u8 + 1));
            Arc::new(Endpoint::new(
                "bench",
                SocketAddr::new(ip, 9000),
                &CancellationToken::new(),
            ))
        })
        .collect()
}

fn rebuild(c: &mut Criterion) {
    let picker = Arc::new(Picker::new(Balance::RoundRobin));
    for size in [3, 100, 1000] {
        let all = endpoints(size);
        c.bench_function(&format!("port_pool_rebuild/{size}"), |b| {
            b.iter_batched(
                || all.clone(),
                |list| black_box(PortPool::new(80, list, Arc::clone(&picker))),
                BatchSize::SmallInput,
            )
        });
    }
}

criterion_group!(benches, rebuild);
criterion_main!(benches);
