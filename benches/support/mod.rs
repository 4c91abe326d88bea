//! Fixtures shared by the micro-benchmarks.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use vipd::service::Endpoint;

/// `count` endpoints on distinct loopback addresses (never connected to).
pub fn endpoints(count: usize) -> Vec<Arc<Endpoint>> {
    let service_retired = CancellationToken::new();
    (0..count)
        .map(|i| {
            let ip = IpAddr::V4(Ipv4Addr::new(127, 0, (i / 250) as u8, (i % 250) as u8 + 1));
            Arc::new(Endpoint::new(
                "bench",
                SocketAddr::new(ip, 9000),
                &service_retired,
            ))
        })
        .collect()
}
