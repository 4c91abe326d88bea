//! The tcp probe: healthy iff a connection can be established.

use std::net::SocketAddr;

use tokio::net::TcpStream;

use super::ProbeError;

/// Connects to `target` and closes the connection at once.
pub(super) async fn probe(target: SocketAddr) -> Result<(), ProbeError> {
    let stream = TcpStream::connect(target)
        .await
        .map_err(ProbeError::Connect)?;
    drop(stream);
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::io;

    use super::super::probe;
    use super::super::test_support::{LONG, at, listener, refused_addr};
    use super::*;
    use crate::config::HealthCheck;

    #[tokio::test]
    async fn tcp_succeeds_against_a_listener() {
        // No accept needed: the kernel completes the handshake into the backlog.
        let (_listener, addr) = listener().await;
        probe(&HealthCheck::Tcp, at(addr), LONG)
            .await
            .expect("healthy");
    }

    #[tokio::test]
    async fn tcp_fails_when_refused() {
        let addr = refused_addr().await;
        let err = probe(&HealthCheck::Tcp, at(addr), LONG)
            .await
            .expect_err("refused");
        match &err {
            ProbeError::Connect(e) => assert_eq!(e.kind(), io::ErrorKind::ConnectionRefused),
            other => panic!("expected Connect, got {other:?}"),
        }
        assert!(err.to_string().starts_with("connect failed: "), "{err}");
    }
}
