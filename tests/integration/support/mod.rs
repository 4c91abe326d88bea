//! Test harness: backends, a running vipd, and helpers to await events instead of sleeping.

pub mod backend;
pub mod harness;
pub mod http;

pub use backend::Backend;
pub use harness::{Running, service};

use std::future::Future;
use std::time::Duration;

/// Upper bound on waiting for an event that should come much sooner: a failure guard only.
pub const GUARD: Duration = Duration::from_secs(20);

/// Awaits `future`, failing the test with `what` if it takes longer than [`GUARD`].
pub async fn within<F: Future>(what: &str, future: F) -> F::Output {
    tokio::time::timeout(GUARD, future)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

/// Waits for the next `change` of `endpoint` among a service's events, skipping others.
pub async fn next_change(
    events: &mut tokio::sync::broadcast::Receiver<vipd::service::ServiceEvent>,
    endpoint: std::net::SocketAddr,
    change: vipd::service::Change,
) -> vipd::service::ServiceEvent {
    within(&format!("{endpoint}: {change:?}"), async {
        loop {
            let event = events.recv().await.expect("service events");
            if event.endpoint == endpoint && event.change == change {
                return event;
            }
        }
    })
    .await
}
