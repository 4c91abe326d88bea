//! Probes: one health check of one endpoint, bounded by a timeout.

use std::net::SocketAddr;
use std::time::Duration;

use crate::config::HealthCheck;

/// Why a probe failed.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// The probe did not finish within its timeout.
    #[error("timed out after {0:?}")]
    Timeout(Duration),
}

/// Runs one probe of `target` (for [`HealthCheck::None`] it succeeds at once).
pub async fn probe(
    _check: &HealthCheck,
    _target: SocketAddr,
    _timeout: Duration,
) -> Result<(), ProbeError> {
    Ok(())
}
