//! Micro-benchmark of the snapshot rebuild the owner task does when health changes:
//! `PortPool::new` over N endpoints (choosing the tier in rotation, cloning `Arc`s, and the
//! policy's precomputation: the round-robin schedule, or a Maglev table built afresh).
//! Run with `cargo bench --bench snapshot`.

use std::hint::black_box;
use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use vipd::balance::{MaglevTables, PickerState};
use vipd::config::{Balance, Protocol, SessionAffinity, WhenAllUnhealthy};
use vipd::service::{Placement, PortPool};

mod support;
use support::endpoints;

fn rebuild(c: &mut Criterion) {
    let picker = Arc::new(PickerState::new(
        SessionAffinity::None,
        tokio::time::Instant::now(),
    ));
    for balance in [Balance::RoundRobin, Balance::Maglev] {
        for size in [3, 100, 1000] {
            let all = endpoints(size);
            let placement = Placement {
                balance,
                when_all_unhealthy: WhenAllUnhealthy::FailOpen,
                affinity: false,
            };
            c.bench_function(
                &format!("port_pool_rebuild/{}/{size}", balance.as_str()),
                |b| {
                    b.iter(|| {
                        // A fresh cache: the build is measured, not the reuse.
                        let mut tables = MaglevTables::default();
                        black_box(PortPool::new(
                            (Protocol::Tcp, 80),
                            &all,
                            placement,
                            Arc::clone(&picker),
                            &mut tables,
                        ))
                    })
                },
            );
        }
    }
}

criterion_group!(benches, rebuild);
criterion_main!(benches);
