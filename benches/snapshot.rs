//! Micro-benchmark of the snapshot rebuild the owner task does when health changes:
//! `PortPool::new` over N endpoints (filtering the healthy subset, cloning `Arc`s).
//! Run with `cargo bench --bench snapshot`.

use std::hint::black_box;
use std::sync::Arc;

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use vipd::balance::Picker;
use vipd::config::Balance;
use vipd::service::PortPool;

mod support;
use support::endpoints;

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
