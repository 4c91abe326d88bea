//! The tcp probe: connect; then, when configured, write the `send` bytes and read until the
//! `expect` bytes arrive. Without `expect` a successful connect (and write) is the verdict.

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::expect::{End, Matcher};
use super::{Deadline, ProbeError, ProbeTarget, local_header};
use crate::config::TcpCheck;
use crate::proxy_protocol::Transport;

/// Bytes asked of the socket per read.
const READ_CHUNK: usize = 4096;

/// Probes `target` as `check` says, all within `deadline`.
pub(super) async fn probe(
    check: &TcpCheck,
    target: ProbeTarget<'_>,
    deadline: Deadline,
) -> Result<(), ProbeError> {
    let mut stream = deadline
        .run(async {
            TcpStream::connect(target.target)
                .await
                .map_err(ProbeError::Connect)
        })
        .await?;
    if let Some(version) = target.proxy_header {
        let header = local_header(version, Transport::Stream);
        deadline
            .run(async { stream.write_all(&header).await.map_err(ProbeError::Send) })
            .await?;
    }
    if let Some(send) = &check.send {
        // Usually one small write, waited on by the reply: don't let Nagle hold it.
        let _ = stream.set_nodelay(true);
        deadline
            .run(async { stream.write_all(send).await.map_err(ProbeError::Send) })
            .await?;
    }
    let Some(expect) = &check.expect else {
        return Ok(());
    };
    let mut matcher = Matcher::new(expect, TcpCheck::READ_LIMIT);
    // Dropping the stream afterwards closes it, whether or not the reply was read to its end.
    read_until(&mut stream, &mut matcher, deadline).await
}

/// Reads `reader` until `matcher` has found its bytes, hit its limit, the reader ended, or the
/// deadline passed.
async fn read_until(
    reader: &mut (impl AsyncRead + Unpin),
    matcher: &mut Matcher<'_>,
    deadline: Deadline,
) -> Result<(), ProbeError> {
    let mut buf = vec![0; READ_CHUNK];
    loop {
        let read = tokio::time::timeout_at(deadline.at, reader.read(&mut buf)).await;
        let n = match read {
            Err(_elapsed) => return Err(matcher.unmet(End::TimedOut(deadline.timeout)).into()),
            Ok(Err(source)) => {
                return Err(ProbeError::Receive {
                    received: matcher.received(),
                    source,
                });
            }
            Ok(Ok(0)) => return Err(matcher.unmet(End::PeerClosed).into()),
            Ok(Ok(n)) => n,
        };
        if let Some(verdict) = matcher.verdict(&buf[..n]) {
            return verdict.map_err(ProbeError::from);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io;
    use std::time::Duration;

    use tokio::io::AsyncReadExt;
    use tokio::net::TcpListener;
    use tokio::task::JoinHandle;

    use super::super::probe;
    use super::super::test_support::{LONG, at, listener, refused_addr};
    use super::*;
    use crate::config::HealthCheck;

    fn tcp(send: Option<&[u8]>, expect: Option<&[u8]>) -> HealthCheck {
        HealthCheck::Tcp(TcpCheck {
            send: send.map(<[u8]>::to_vec),
            expect: expect.map(<[u8]>::to_vec),
        })
    }

    /// A one-connection endpoint: reads `wait_for` bytes (the probe's request), then writes
    /// each of `pieces` as its own write (flushed: nodelay), then closes. Returns what it read.
    fn serve(listener: TcpListener, wait_for: usize, pieces: Vec<Vec<u8>>) -> JoinHandle<Vec<u8>> {
        tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.expect("accept");
            stream.set_nodelay(true).expect("nodelay");
            let mut request = vec![0; wait_for];
            stream.read_exact(&mut request).await.expect("request");
            for piece in pieces {
                // The probe may have what it wanted and be gone: later writes may fail.
                if stream.write_all(&piece).await.is_err() {
                    break;
                }
            }
            request
        })
    }

    /// Runs `check` against an endpoint that reads the send bytes, then writes `pieces`.
    async fn against(
        check: &HealthCheck,
        pieces: &[&[u8]],
        timeout: Duration,
    ) -> Result<(), ProbeError> {
        let (listener, addr) = listener().await;
        let wait_for = match check {
            HealthCheck::Tcp(TcpCheck { send, .. }) => send.as_ref().map_or(0, Vec::len),
            _ => 0,
        };
        let server = serve(
            listener,
            wait_for,
            pieces.iter().map(|p| p.to_vec()).collect(),
        );
        let result = probe(check, at(addr), timeout).await;
        server.await.expect("server");
        result
    }

    fn unmet(result: Result<(), ProbeError>) -> String {
        match result {
            Err(e @ ProbeError::Expect(_)) => e.to_string(),
            other => panic!("expected an unmet expectation, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn tcp_succeeds_against_a_listener() {
        // No accept needed: the kernel completes the handshake into the backlog.
        let (_listener, addr) = listener().await;
        probe(&HealthCheck::tcp(), at(addr), LONG)
            .await
            .expect("healthy");
    }

    #[tokio::test]
    async fn tcp_fails_when_refused() {
        let addr = refused_addr().await;
        let err = probe(&HealthCheck::tcp(), at(addr), LONG)
            .await
            .expect_err("refused");
        match &err {
            ProbeError::Connect(e) => assert_eq!(e.kind(), io::ErrorKind::ConnectionRefused),
            other => panic!("expected Connect, got {other:?}"),
        }
        assert!(err.to_string().starts_with("connect failed: "), "{err}");
    }

    #[tokio::test]
    async fn send_reaches_the_endpoint_and_expect_is_found_in_one_write() {
        let (listener, addr) = listener().await;
        let request = b"INFO replication\r\n";
        let server = serve(
            listener,
            request.len(),
            vec![b"$40\r\n# Replication\r\nrole:master\r\nconnected_slaves:0\r\n".to_vec()],
        );
        let check = tcp(Some(request), Some(b"role:master"));
        probe(&check, at(addr), LONG).await.expect("healthy");
        assert_eq!(server.await.expect("server"), request);
    }

    #[tokio::test]
    async fn expect_is_found_when_split_across_writes() {
        let check = tcp(Some(b"INFO replication\r\n"), Some(b"role:master"));
        // The split falls inside the expected string, and the last write completes it.
        against(
            &check,
            &[b"# Replication\r\nrole:", b"mas", b"ter\r\n"],
            LONG,
        )
        .await
        .expect("healthy");
    }

    #[tokio::test]
    async fn expect_fails_when_the_endpoint_closes_without_it() {
        let check = tcp(Some(b"INFO replication\r\n"), Some(b"role:master"));
        let message = unmet(against(&check, &[b"# Replication\r\nrole:slave\r\n"], LONG).await);
        assert_eq!(
            message,
            "expected \"role:master\" not found in 27 bytes received (peer closed): \
             \"# Replication\\r\\nrole:slave\\r\\n\""
        );
    }

    #[tokio::test]
    async fn expect_fails_at_the_timeout_when_the_endpoint_never_answers() {
        // Accepted by the kernel, never read or answered by anyone.
        let (_listener, addr) = listener().await;
        let timeout = Duration::from_millis(200);
        let check = tcp(Some(b"PING\r\n"), Some(b"+PONG"));
        let message = unmet(probe(&check, at(addr), timeout).await);
        assert_eq!(
            message,
            "expected \"+PONG\" not found in 0 bytes received (timed out after 200ms)"
        );
    }

    #[tokio::test]
    async fn expect_gives_up_after_the_read_limit() {
        let check = tcp(None, Some(b"role:master"));
        let filler = vec![b'x'; TcpCheck::READ_LIMIT];
        // The expected string comes only after the limit.
        let message = unmet(against(&check, &[&filler, b"role:master"], LONG).await);
        assert!(
            message.starts_with(
                "expected \"role:master\" not found in 16384 bytes received \
                 (read limit of 16384 bytes reached): \"xxxx"
            ),
            "{message}"
        );
    }

    #[tokio::test]
    async fn hex_send_and_expect_carry_binary_bytes() {
        // Bytes no text key could hold: NUL, 0xff, a lone CR.
        let request: &[u8] = &[0x00, 0xff, 0x0d, 0x01];
        let (listener, addr) = listener().await;
        let server = serve(
            listener,
            request.len(),
            vec![vec![0x10, 0x00], vec![0xfe, 0x0d, 0x99]],
        );
        let check = tcp(Some(request), Some(&[0x00, 0xfe, 0x0d]));
        probe(&check, at(addr), LONG).await.expect("healthy");
        assert_eq!(server.await.expect("server"), request);

        // The failure message escapes what came back.
        let check = tcp(Some(request), Some(&[0xab]));
        let message = unmet(against(&check, &[&[0x00, 0xff, b'A']], LONG).await);
        assert_eq!(
            message,
            "expected \"\\xab\" not found in 3 bytes received (peer closed): \"\\x00\\xffA\""
        );
    }

    #[tokio::test]
    async fn send_without_expect_succeeds_once_written() {
        let (listener, addr) = listener().await;
        let server = serve(listener, 5, Vec::new());
        probe(&tcp(Some(b"hello"), None), at(addr), LONG)
            .await
            .expect("healthy");
        assert_eq!(server.await.expect("server"), b"hello");
    }

    #[tokio::test]
    async fn a_reset_while_reading_is_a_receive_failure() {
        let (listener, addr) = listener().await;
        let server = tokio::spawn(async move {
            let (stream, _) = listener.accept().await.expect("accept");
            // Linger 0: close with a RST instead of a FIN.
            let socket = socket2::SockRef::from(&stream);
            socket.set_linger(Some(Duration::ZERO)).expect("linger");
            drop(stream);
        });
        let result = probe(&tcp(None, Some(b"x")), at(addr), LONG).await;
        server.await.expect("server");
        match result {
            Err(ProbeError::Receive {
                received: 0,
                source,
            }) => {
                assert_eq!(source.kind(), io::ErrorKind::ConnectionReset)
            }
            other => panic!("expected Receive, got {other:?}"),
        }
    }
}
