//! Probes: one health check of one endpoint, bounded by a timeout.
//!
//! A probe answers one question — did this endpoint pass the check just now? — and leaves the
//! judging over time to [`super::HealthState`]. Every probe uses a fresh connection and closes
//! it, so a probe never holds resources past its own deadline.
//!
//! All kinds have one shape: connect → optional send → read until the expectation is met or
//! the deadline passes. One file per kind (`tcp.rs`, `http.rs`, `exec.rs`, where a process
//! stands for the connection); the reading against an expectation is the pure
//! [`expect::Matcher`], whatever carries the bytes.

mod exec;
pub mod expect;
mod http;
mod tcp;
#[cfg(test)]
mod test_support;
mod udp;

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::time::Instant;

use crate::config::{HealthCheck, ProxyProtocolVersion};
use crate::proxy_protocol::{MAX_ENCODED, Transport};

pub use exec::MAX_EXEC_PROBES;
pub use expect::Unmet;
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
    /// Writing the check's `send` bytes failed.
    #[error("send failed: {0}")]
    Send(#[source] io::Error),
    /// Reading the reply failed (connection reset, ...).
    #[error("receive failed after {received} bytes: {source}")]
    Receive {
        /// Bytes read before the failure.
        received: usize,
        /// The read error.
        source: io::Error,
    },
    /// The reply did not contain the expected bytes.
    #[error(transparent)]
    Expect(#[from] Unmet),
    /// The configured path, method or host do not make a valid request.
    #[error("invalid http check request: {0}")]
    InvalidRequest(#[source] hyper::http::Error),
    /// The HTTP exchange failed (connection reset, closed early, malformed response, ...).
    #[error("http request failed: {0}")]
    Http(#[source] hyper::Error),
    /// The exec check's command could not be run (spawn failed: missing, not executable, ...).
    #[error("could not run {program}: {source}")]
    Exec {
        /// `command[0]`.
        program: String,
        /// Why it could not run.
        source: io::Error,
    },
    /// The exec check's command exited unsuccessfully.
    #[error("{}{}", exec::describe(*.status), output_suffix(.output))]
    Exited {
        /// How it ended: an exit code, or a signal.
        status: std::process::ExitStatus,
        /// The first line of what it wrote (stdout and stderr), at most 200 bytes.
        output: String,
    },
    /// The exec check's command ran past the timeout; its process group was killed.
    #[error("timed out after {timeout:?}; its process group was killed{}", output_suffix(.output))]
    ExecTimeout {
        /// The timeout.
        timeout: Duration,
        /// The first line of what it had written, at most 200 bytes.
        output: String,
    },
    /// The endpoint answered with a status other than those expected (by default 2xx, 3xx).
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
    /// The PROXY header the service sends its endpoints, which a probe of the endpoint's own
    /// port sends first too (one that names no client: v1 `UNKNOWN`, v2 `LOCAL`), so an
    /// endpoint that insists on it answers its probes.
    pub proxy_header: Option<ProxyProtocolVersion>,
}

impl<'a> ProbeTarget<'a> {
    /// A target probed on the endpoint's own address.
    pub fn endpoint(service: &'a str, endpoint: SocketAddr) -> Self {
        ProbeTarget {
            service,
            endpoint,
            target: endpoint,
            proxy_header: None,
        }
    }
}

/// Runs one probe of `target` (for [`HealthCheck::None`] it succeeds at once).
///
/// The whole probe — connect, send, reply; or the command's run — must finish within
/// `timeout`; otherwise it fails (with [`ProbeError::Timeout`], [`ProbeError::Expect`] saying
/// what had arrived, or [`ProbeError::ExecTimeout`]) and its connection or process group is
/// closed. An exec probe's `timeout` starts once it has one of the [`MAX_EXEC_PROBES`] slots.
pub async fn probe(
    check: &HealthCheck,
    target: ProbeTarget<'_>,
    timeout: Duration,
) -> Result<(), ProbeError> {
    let deadline = Deadline::after(timeout);
    match check {
        HealthCheck::None => Ok(()),
        HealthCheck::Tcp(check) => tcp::probe(check, target, deadline).await,
        HealthCheck::Udp(check) => udp::probe(check, target, deadline).await,
        HealthCheck::Http(check) => http::probe(check, target, deadline).await,
        // Its deadline starts once it may start its command.
        HealthCheck::Exec(check) => exec::probe(check, target, timeout).await,
    }
}

/// The header a probe of a service with `proxy_protocol` sends first: it names no client (the
/// probe is vipd's own), as a load balancer's health check does.
fn local_header(version: ProxyProtocolVersion, transport: Transport) -> Vec<u8> {
    let mut header = [0; MAX_ENCODED];
    let length = match version {
        ProxyProtocolVersion::V1 => crate::proxy_protocol::encode_v1(None, &mut header),
        ProxyProtocolVersion::V2 => crate::proxy_protocol::encode_v2(None, transport, &mut header),
    };
    header[..length].to_vec()
}

/// `: "first line"`, or ` (no output)`.
fn output_suffix(output: &str) -> String {
    if output.is_empty() {
        " (no output)".to_owned()
    } else {
        format!(": {output:?}")
    }
}

/// When a probe must be done, and the timeout it came from (for messages).
#[derive(Debug, Clone, Copy)]
struct Deadline {
    at: Instant,
    timeout: Duration,
}

impl Deadline {
    fn after(timeout: Duration) -> Self {
        Deadline {
            at: Instant::now() + timeout,
            timeout,
        }
    }

    /// Runs `step`, failing with [`ProbeError::Timeout`] if the deadline passes first.
    async fn run<T>(
        self,
        step: impl Future<Output = Result<T, ProbeError>>,
    ) -> Result<T, ProbeError> {
        tokio::time::timeout_at(self.at, step)
            .await
            .unwrap_or(Err(ProbeError::Timeout(self.timeout)))
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
