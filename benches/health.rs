//! Micro-benchmark of the health state machine: one `HealthState::observe` per probe result,
//! for a steady healthy endpoint and for one flapping across its thresholds.
//! Run with `cargo bench --bench health`.

use std::hint::black_box;
use std::num::NonZeroU32;

use criterion::{Criterion, criterion_group, criterion_main};
use vipd::health::HealthState;

fn observe(c: &mut Criterion) {
    let threshold = |n| NonZeroU32::new(n).unwrap();
    c.bench_function("health_observe/steady", |b| {
        let mut state = HealthState::new(threshold(1), threshold(2));
        b.iter(|| black_box(state.observe(black_box(true))))
    });
    c.bench_function("health_observe/flapping", |b| {
        let mut state = HealthState::new(threshold(1), threshold(2));
        // Two failures flip it down, one success flips it up: a flip every few results.
        let pattern = [false, false, true, false, true, true];
        let mut i = 0;
        b.iter(|| {
            i = (i + 1) % pattern.len();
            black_box(state.observe(black_box(pattern[i])))
        })
    });
}

criterion_group!(benches, observe);
criterion_main!(benches);
