//! Micro-benchmarks of the per-connection pick: the round-robin start over a snapshot's
//! candidates, at 3 and 1000 endpoints. Run with `cargo bench --bench picker`.

use std::hint::black_box;
use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use vipd::balance::Picker;
use vipd::config::Balance;
use vipd::service::PortPool;

mod support;

fn pool(count: usize) -> PortPool {
    PortPool::new(
        80,
        support::endpoints(count),
        Arc::new(Picker::new(Balance::RoundRobin)),
    )
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
