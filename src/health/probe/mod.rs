//! Probes: one health check of one endpoint, bounded by a timeout.
//!
//! A probe answers one question — did this endpoint pass the check just now? — and leaves the
//! judging over time to [`super::HealthState`]. Every probe uses a fresh connection and closes
//! it, so a probe never holds resources past its own deadline. One file per kind: [`tcp`],
//! [`http`].

mod http;
mod tcp;
#[cfg(test)]
mod test_support;

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use crate::config::HealthCheck;

pub use http::USER_AGENT_VALUE;

/// Why a probe failed.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// The probe did not finish within its timeout.
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    /// The TCP connection could not be established.
    #[error("connect failed: {0}")]
    Connect(#[source] io::Error),
    /// The configured HTTP path does not make a valid request.
    #[error("invalid http check path {path:?}: {source}")]
    InvalidPath {
        /// The configured path.
        path: String,
        /// Why the request could not be built from it.
        source: hyper::http::Error,
    },
    /// The HTTP exchange failed (connection reset, closed early, malformed response, ...).
    #[error("http request failed: {0}")]
    Http(#[source] hyper::Error),
    /// The endpoint answered with a status other than 2xx or 3xx.
    #[error("unhealthy status {0}")]
    Status(u16),
}

/// What one probe is about: the endpoint, where to reach it, and whose it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProbeTarget<'a> {
    /// The service the endpoint belongs to (given to exec checks).
    pub service: &'a str,
    /// The endpoint's own address, as it is in rotation.
    pub endpoint: SocketAddr,
    /// Where network probes connect: the endpoint's IP with `health.port`, or `endpoint`.
    pub target: SocketAddr,
}

impl<'a> ProbeTarget<'a> {
    /// A target probed on the endpoint's own address.
    pub fn endpoint(service: &'a str, endpoint: SocketAddr) -> Self {
        ProbeTarget {
            service,
            endpoint,
            target: endpoint,
        }
    }
}

/// Runs one probe of `target` (for [`HealthCheck::None`] it succeeds at once).
///
/// The whole probe — connect, request, response head — must finish within `timeout`;
/// otherwise it fails with [`ProbeError::Timeout`] and its connection is closed.
pub async fn probe(
    check: &HealthCheck,
    target: ProbeTarget<'_>,
    timeout: Duration,
) -> Result<(), ProbeError> {
    let attempt = async {
        match check {
            HealthCheck::None => Ok(()),
            HealthCheck::Tcp => tcp::probe(target.target).await,
            HealthCheck::Http { path } => http::probe(path, target.target).await,
        }
    };
    match tokio::time::timeout(timeout, attempt).await {
        Ok(result) => result,
        Err(_elapsed) => Err(ProbeError::Timeout(timeout)),
    }
}

#[cfg(test)]
mod tests {
    use super::test_support::{LONG, at, refused_addr};
    use super::*;

    #[tokio::test]
    async fn none_succeeds_without_connecting() {
        let addr = refused_addr().await;
        probe(&HealthCheck::None, at(addr), LONG)
            .await
            .expect("no check");
    }
}
