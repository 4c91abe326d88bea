//! The http probe: one request on a fresh connection; healthy iff it answers 2xx or 3xx.

use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::Empty;
use hyper::Request;
use hyper::header::{CONNECTION, HOST, USER_AGENT};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio_util::task::AbortOnDropHandle;

use super::ProbeError;

/// The `User-Agent` of HTTP probes, so endpoints can tell probes from traffic in their logs.
pub const USER_AGENT_VALUE: &str = "vipd-health";

/// Healthy iff `GET path` answers 2xx or 3xx.
pub(super) async fn probe(path: &str, target: SocketAddr) -> Result<(), ProbeError> {
    // Built before connecting so a bad path fails without touching the endpoint.
    let request = Request::get(path)
        // `SocketAddr`'s display form is already a valid Host (IPv6 in brackets).
        .header(HOST, target.to_string())
        .header(USER_AGENT, USER_AGENT_VALUE)
        // One request per connection: the probe never reuses it, and the endpoint should not
        // keep it around waiting for a second one.
        .header(CONNECTION, "close")
        .body(Empty::<Bytes>::new())
        .map_err(|source| ProbeError::InvalidPath {
            path: path.to_owned(),
            source,
        })?;

    let stream = TcpStream::connect(target)
        .await
        .map_err(ProbeError::Connect)?;
    // The request is a single small write; don't let Nagle delay it.
    let _ = stream.set_nodelay(true);

    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(ProbeError::Http)?;
    // The connection future does the actual I/O and must be polled while we wait for the
    // response. hyper already shuts it down when an in-flight request is dropped (as on
    // timeout); aborting the task on drop as well guarantees no task or socket outlives the
    // probe whatever state it ends in. Its own error is ignored: any failure that matters
    // surfaces through `send_request`.
    let _connection = AbortOnDropHandle::new(tokio::spawn(connection));

    let response = sender
        .send_request(request)
        .await
        .map_err(ProbeError::Http)?;
    let status = response.status();
    // The verdict rests on the status alone. The body is dropped unread rather than drained:
    // with `Connection: close` nothing is reused, and reading it would let a slow body turn a
    // healthy status into a timeout.
    drop(response);
    if status.is_success() || status.is_redirection() {
        Ok(())
    } else {
        Err(ProbeError::Status(status.as_u16()))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
    use tokio::net::TcpListener;

    use super::super::test_support::{LONG, at, listener, refused_addr};
    use super::super::{ProbeError, probe};
    use crate::config::HealthCheck;

    fn http(path: &str) -> HealthCheck {
        HealthCheck::Http {
            path: path.to_owned(),
        }
    }

    /// The request head as the endpoint received it.
    #[derive(Debug)]
    struct Received {
        request_line: String,
        /// Header names lowercased (HTTP names are case-insensitive), values trimmed.
        headers: Vec<(String, String)>,
    }

    impl Received {
        fn header(&self, name: &str) -> Option<&str> {
            self.headers
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.as_str())
        }
    }

    /// A hand-written HTTP/1.1 endpoint for one connection: reads the request head, answers
    /// `ok_status` if the request line is `GET ok_path HTTP/1.1` and 404 otherwise, then closes.
    /// Returns what it received once the answer is written.
    fn serve_once(
        listener: TcpListener,
        ok_path: &'static str,
        ok_status: &'static str,
    ) -> tokio::task::JoinHandle<Received> {
        tokio::spawn(async move {
            let (stream, _) = listener.accept().await.expect("accept");
            let mut stream = BufReader::new(stream);

            let mut request_line = String::new();
            stream
                .read_line(&mut request_line)
                .await
                .expect("request line");
            let request_line = request_line.trim_end().to_owned();
            let mut headers = Vec::new();
            loop {
                let mut line = String::new();
                stream.read_line(&mut line).await.expect("header line");
                let line = line.trim_end();
                if line.is_empty() {
                    break;
                }
                let (name, value) = line.split_once(':').expect("header has a colon");
                headers.push((name.to_ascii_lowercase(), value.trim().to_owned()));
            }

            let status = if request_line == format!("GET {ok_path} HTTP/1.1") {
                ok_status
            } else {
                "404 Not Found"
            };
            let body = "probe me";
            let response = format!(
                "HTTP/1.1 {status}\r\nContent-Length: {}\r\nLocation: /elsewhere\r\n\
                 Connection: close\r\n\r\n{body}",
                body.len()
            );
            let mut stream = stream.into_inner();
            stream
                .write_all(response.as_bytes())
                .await
                .expect("write response");
            // The probe may already have closed its side after reading the status line.
            let _ = stream.shutdown().await;
            Received {
                request_line,
                headers,
            }
        })
    }

    #[tokio::test]
    async fn http_sends_path_host_and_user_agent() {
        let (listener, addr) = listener().await;
        let server = serve_once(listener, "/healthz?deep=1", "200 OK");
        probe(&http("/healthz?deep=1"), at(addr), LONG)
            .await
            .expect("healthy");
        let received = server.await.expect("server");
        assert_eq!(received.request_line, "GET /healthz?deep=1 HTTP/1.1");
        assert_eq!(received.header("host"), Some(addr.to_string().as_str()));
        assert_eq!(received.header("user-agent"), Some("vipd-health"));
        assert_eq!(received.header("connection"), Some("close"));
    }

    #[tokio::test]
    async fn http_status_decides_the_verdict() {
        let cases: &[(&str, &'static str, Option<u16>)] = &[
            ("/ok", "200 OK", None),
            ("/ok", "204 No Content", None),
            ("/ok", "302 Found", None),
            ("/ok", "503 Service Unavailable", Some(503)),
            ("/ok", "500 Internal Server Error", Some(500)),
            // The endpoint serves `/ok` only; any other path gets 404.
            ("/wrong", "200 OK", Some(404)),
        ];
        for &(path, status, expected) in cases {
            let (listener, addr) = listener().await;
            let server = serve_once(listener, "/ok", status);
            let result = probe(&http(path), at(addr), LONG).await;
            match (expected, result) {
                (None, Ok(())) => {}
                (Some(code), Err(ProbeError::Status(got))) => {
                    assert_eq!(got, code, "GET {path} answered {status}")
                }
                (expected, result) => {
                    panic!("GET {path} answered {status}: expected {expected:?}, got {result:?}")
                }
            }
            server.await.expect("server");
        }
    }

    #[test]
    fn http_status_error_names_the_code() {
        assert_eq!(ProbeError::Status(503).to_string(), "unhealthy status 503");
    }

    #[tokio::test]
    async fn http_fails_when_refused() {
        let addr = refused_addr().await;
        let err = probe(&http("/"), at(addr), LONG)
            .await
            .expect_err("refused");
        assert!(matches!(err, ProbeError::Connect(_)), "{err:?}");
    }

    #[tokio::test]
    async fn http_fails_when_closed_without_an_answer() {
        let (listener, addr) = listener().await;
        let server = tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.expect("accept");
            // Wait for the request so the close is seen as a truncated exchange.
            let mut line = String::new();
            BufReader::new(&mut stream)
                .read_line(&mut line)
                .await
                .expect("request line");
            drop(stream);
        });
        let err = probe(&http("/"), at(addr), LONG).await.expect_err("closed");
        assert!(matches!(err, ProbeError::Http(_)), "{err:?}");
        server.await.expect("server");
    }

    #[tokio::test]
    async fn http_rejects_an_invalid_path_before_connecting() {
        // Refused address: reaching the network would give `Connect` instead.
        let addr = refused_addr().await;
        let err = probe(&http("/not a path"), at(addr), LONG)
            .await
            .expect_err("invalid");
        assert!(
            matches!(&err, ProbeError::InvalidPath { path, .. } if path == "/not a path"),
            "{err:?}"
        );
    }

    #[tokio::test]
    async fn http_times_out_when_the_endpoint_never_answers() {
        let (listener, addr) = listener().await;
        let timeout = Duration::from_millis(200);
        // The accepted stream is held until the probe returns, so the endpoint neither answers
        // nor closes: only the deadline can end the probe.
        let check = http("/");
        let (result, accepted) = tokio::join!(probe(&check, at(addr), timeout), listener.accept());
        let (mut held, _) = accepted.expect("accept");
        match result {
            Err(ProbeError::Timeout(t)) => assert_eq!(t, timeout),
            other => panic!("expected Timeout, got {other:?}"),
        }
        assert_eq!(
            ProbeError::Timeout(timeout).to_string(),
            "timed out after 200ms"
        );

        // A timed-out probe must not leave its connection open: the endpoint sees the request
        // and then end-of-stream.
        let mut seen = Vec::new();
        tokio::time::timeout(LONG, held.read_to_end(&mut seen))
            .await
            .expect("probe closed its connection")
            .expect("read");
        assert!(seen.starts_with(b"GET / HTTP/1.1\r\n"), "{seen:?}");
    }
}
