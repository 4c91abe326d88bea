//! Helpers shared by the probe tests: loopback listeners and an address where nothing listens.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::TcpListener;

use super::ProbeTarget;

/// Generous: only the timeout tests rely on a deadline actually passing.
pub(super) const LONG: Duration = Duration::from_secs(10);

pub(super) async fn listener() -> (TcpListener, SocketAddr) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local addr");
    (listener, addr)
}

/// An address where nothing listens: bound, then released, so connects are refused.
pub(super) async fn refused_addr() -> SocketAddr {
    let (listener, addr) = listener().await;
    drop(listener);
    addr
}

/// A probe of `addr` itself, as an endpoint of service "web".
pub(super) fn at(addr: SocketAddr) -> ProbeTarget<'static> {
    ProbeTarget::endpoint("web", addr)
}
