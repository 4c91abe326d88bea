//! Endpoint discovery (placeholder until DNS discovery lands).

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::config;

/// Runs discovery for one service until `shutdown`.
pub async fn run(
    _service: String,
    _discovery: config::Discovery,
    _updates: watch::Sender<Option<Vec<config::EndpointSpec>>>,
    shutdown: CancellationToken,
) {
    shutdown.cancelled().await;
}
