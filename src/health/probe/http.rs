//! The http probe: one request on a fresh connection. Healthy iff the status is one of
//! `expect_status` (default any 2xx or 3xx) and, when `expect` is set, the body contains it.

use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper::header::{CONNECTION, HOST, USER_AGENT};
use hyper::{Method, Request, Response};
use hyper_util::rt::TokioIo;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_util::task::AbortOnDropHandle;

use super::expect::{End, Matcher};
use super::{Deadline, ProbeError, ProbeTarget, local_header};
use crate::config::{HttpCheck, HttpMethod, ProxyProtocolVersion};
use crate::proxy_protocol::Transport;

/// The `User-Agent` of HTTP probes, so endpoints can tell probes from traffic in their logs.
pub const USER_AGENT_VALUE: &str = "vipd-health";

/// The connection task of one exchange; aborted when dropped.
type Connection = AbortOnDropHandle<Result<(), hyper::Error>>;

/// Probes `target` as `check` says, all within `deadline`.
pub(super) async fn probe(
    check: &HttpCheck,
    target: ProbeTarget<'_>,
    deadline: Deadline,
) -> Result<(), ProbeError> {
    // Built before connecting so a bad request fails without touching the endpoint.
    let request = request(check, target.target)?;
    // Held until the body is read: it does the connection's I/O.
    let (response, _connection) = deadline
        .run(exchange(request, target.target, target.proxy_header))
        .await?;
    let status = response.status().as_u16();
    if !check.status_ok(status) {
        return Err(ProbeError::Status(status));
    }
    let Some(expect) = &check.expect else {
        // The verdict rests on the status alone. The body is dropped unread rather than
        // drained: with `Connection: close` nothing is reused, and reading it would let a slow
        // body turn a healthy status into a timeout.
        return Ok(());
    };
    let mut matcher = Matcher::new(expect.as_bytes(), HttpCheck::BODY_LIMIT);
    let mut body = response.into_body();
    loop {
        let frame = match tokio::time::timeout_at(deadline.at, body.frame()).await {
            Err(_elapsed) => return Err(matcher.unmet(End::TimedOut(deadline.timeout)).into()),
            Ok(None) => return Err(matcher.unmet(End::BodyEnded).into()),
            Ok(Some(frame)) => frame.map_err(ProbeError::Http)?,
        };
        // Trailers carry no body bytes.
        if let Some(verdict) = frame.data_ref().and_then(|data| matcher.verdict(data)) {
            return verdict.map_err(ProbeError::from);
        }
    }
}

/// The probe's request: method, path, `Host`, and headers saying it is a one-off.
fn request(check: &HttpCheck, target: SocketAddr) -> Result<Request<Empty<Bytes>>, ProbeError> {
    let method = match check.method {
        HttpMethod::Get => Method::GET,
        HttpMethod::Head => Method::HEAD,
        HttpMethod::Options => Method::OPTIONS,
    };
    // `SocketAddr`'s display form is already a valid Host (IPv6 in brackets).
    let host = check.host.clone().unwrap_or_else(|| target.to_string());
    Request::builder()
        .method(method)
        .uri(&check.path)
        .header(HOST, host)
        .header(USER_AGENT, USER_AGENT_VALUE)
        // One request per connection: the probe never reuses it, and the endpoint should not
        // keep it around waiting for a second one.
        .header(CONNECTION, "close")
        .body(Empty::<Bytes>::new())
        .map_err(ProbeError::InvalidRequest)
}

/// Connects, sends `request` and waits for the response head.
async fn exchange(
    request: Request<Empty<Bytes>>,
    target: SocketAddr,
    proxy_header: Option<ProxyProtocolVersion>,
) -> Result<(Response<Incoming>, Connection), ProbeError> {
    let mut stream = TcpStream::connect(target)
        .await
        .map_err(ProbeError::Connect)?;
    // The request is a single small write; don't let Nagle delay it.
    let _ = stream.set_nodelay(true);
    if let Some(version) = proxy_header {
        let header = local_header(version, Transport::Stream);
        stream.write_all(&header).await.map_err(ProbeError::Send)?;
    }

    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(ProbeError::Http)?;
    // The connection future does the actual I/O and must be polled while we wait for the
    // response and its body. hyper already shuts it down when an in-flight request is dropped
    // (as on timeout); aborting the task on drop as well guarantees no task or socket outlives
    // the probe whatever state it ends in. Its own error is ignored: any failure that matters
    // surfaces through `send_request` or the body.
    let connection = AbortOnDropHandle::new(tokio::spawn(connection));

    let response = sender
        .send_request(request)
        .await
        .map_err(ProbeError::Http)?;
    Ok((response, connection))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
    use tokio::net::TcpListener;

    use super::super::test_support::{LONG, at, listener, refused_addr};
    use super::super::{ProbeError, probe};
    use super::*;
    use crate::config::HealthCheck;

    fn http(path: &str) -> HealthCheck {
        HealthCheck::http(path)
    }

    /// `GET path` whose body must contain `expect`.
    fn http_expect(path: &str, expect: &str) -> HealthCheck {
        HealthCheck::Http(HttpCheck {
            expect: Some(expect.to_owned()),
            ..HttpCheck::get(path)
        })
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

    /// Whether the endpoint closes once it has answered, or holds the connection open until
    /// the probe closes it.
    #[derive(Clone, Copy, PartialEq)]
    enum After {
        Close,
        Hold,
    }

    /// A hand-written HTTP/1.1 endpoint for one connection: reads the request head, writes
    /// each piece `answer` makes of it as its own write, then closes or holds. Returns what it
    /// received.
    fn serve(
        listener: TcpListener,
        after: After,
        answer: impl FnOnce(&Received) -> Vec<Vec<u8>> + Send + 'static,
    ) -> tokio::task::JoinHandle<Received> {
        tokio::spawn(async move {
            let (stream, _) = listener.accept().await.expect("accept");
            stream.set_nodelay(true).expect("nodelay");
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
            let received = Received {
                request_line,
                headers,
            };

            let mut stream = stream.into_inner();
            for piece in answer(&received) {
                // The probe may already be gone once it has what it needs.
                if stream.write_all(&piece).await.is_err() {
                    return received;
                }
            }
            match after {
                // The probe may already have closed its side after reading the status line.
                After::Close => {
                    let _ = stream.shutdown().await;
                }
                // Ends when the probe closes its connection (or resets it).
                After::Hold => {
                    let _ = stream.read_to_end(&mut Vec::new()).await;
                }
            }
            received
        })
    }

    /// An answer with `status` and a `Content-Length` body.
    fn answer(status: &str, body: &str) -> String {
        format!(
            "HTTP/1.1 {status}\r\nContent-Length: {}\r\nLocation: /elsewhere\r\n\
             Connection: close\r\n\r\n{body}",
            body.len()
        )
    }

    /// Answers `ok_status` if the request line is `GET ok_path HTTP/1.1` and 404 otherwise.
    fn serve_once(
        listener: TcpListener,
        ok_path: &'static str,
        ok_status: &'static str,
    ) -> tokio::task::JoinHandle<Received> {
        serve(listener, After::Close, move |received| {
            let status = if received.request_line == format!("GET {ok_path} HTTP/1.1") {
                ok_status
            } else {
                "404 Not Found"
            };
            vec![answer(status, "probe me").into_bytes()]
        })
    }

    /// Probes `check` against an endpoint writing `pieces`, then closing.
    async fn against(
        check: &HealthCheck,
        pieces: &[&str],
        timeout: Duration,
    ) -> Result<(), ProbeError> {
        let (listener, addr) = listener().await;
        let pieces: Vec<Vec<u8>> = pieces.iter().map(|p| p.as_bytes().to_vec()).collect();
        let server = serve(listener, After::Close, move |_| pieces);
        let result = probe(check, at(addr), timeout).await;
        server.await.expect("server");
        result
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

    #[tokio::test]
    async fn expect_status_lists_the_healthy_statuses() {
        // (expect_status, the endpoint's status, healthy)
        let cases: &[(&[u16], &str, bool)] = &[
            (&[200], "200 OK", true),
            (&[200], "204 No Content", false),
            (&[200], "302 Found", false),
            (&[200, 204], "204 No Content", true),
            // A status outside 2xx/3xx can be the healthy one, e.g. a standby's 503.
            (&[503], "503 Service Unavailable", true),
            (&[401, 403], "200 OK", false),
        ];
        for &(statuses, status, healthy) in cases {
            let check = HealthCheck::Http(HttpCheck {
                expect_status: Some(statuses.to_vec()),
                ..HttpCheck::get("/")
            });
            let result = against(&check, &[&answer(status, "")], LONG).await;
            assert_eq!(
                result.is_ok(),
                healthy,
                "{statuses:?} vs {status}: {result:?}"
            );
        }
    }

    #[tokio::test]
    async fn host_and_method_are_sent_as_configured() {
        for (method, line) in [
            (HttpMethod::Get, "GET /primary HTTP/1.1"),
            (HttpMethod::Head, "HEAD /primary HTTP/1.1"),
            (HttpMethod::Options, "OPTIONS /primary HTTP/1.1"),
        ] {
            let (listener, addr) = listener().await;
            // A HEAD answer announces a body it does not send; the probe must not wait for it.
            let server = serve(listener, After::Hold, |_| {
                vec![b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n".to_vec()]
            });
            let check = HealthCheck::Http(HttpCheck {
                method,
                host: Some("db.example.com:8008".to_owned()),
                ..HttpCheck::get("/primary")
            });
            // Without `expect`, no method waits for the body either.
            probe(&check, at(addr), LONG).await.expect("healthy");
            let received = server.await.expect("server");
            assert_eq!(received.request_line, line);
            assert_eq!(received.header("host"), Some("db.example.com:8008"));
        }
    }

    #[tokio::test]
    async fn expect_finds_the_body_in_one_write() {
        let check = http_expect("/primary", "\"role\": \"master\"");
        let body = "{\"state\": \"running\", \"role\": \"master\"}";
        against(&check, &[&answer("200 OK", body)], LONG)
            .await
            .expect("healthy");
    }

    #[tokio::test]
    async fn expect_finds_the_body_split_across_writes() {
        let check = http_expect("/", "primary");
        let head = "HTTP/1.1 200 OK\r\nContent-Length: 16\r\n\r\n";
        against(&check, &[head, "I am the ", "pri", "mary"], LONG)
            .await
            .expect("healthy");
    }

    #[tokio::test]
    async fn expect_finds_the_body_in_chunked_transfer() {
        let check = http_expect("/", "primary");
        let head = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n";
        // The expected string spans two chunks, each its own write.
        let pieces = [
            head,
            "9\r\nI am the \r\n",
            "3\r\npri\r\n",
            "4\r\nmary\r\n",
            "0\r\n\r\n",
        ];
        against(&check, &pieces, LONG).await.expect("healthy");

        let pieces = [head, "7\r\nreplica\r\n", "0\r\n\r\n"];
        let err = against(&check, &pieces, LONG).await.expect_err("unhealthy");
        assert_eq!(
            err.to_string(),
            "expected \"primary\" not found in 7 bytes received (end of body): \"replica\""
        );
    }

    #[tokio::test]
    async fn expect_fails_when_the_body_lacks_it() {
        let check = http_expect("/", "primary");
        let err = against(&check, &[&answer("200 OK", "replica")], LONG)
            .await
            .expect_err("unhealthy");
        assert!(matches!(err, ProbeError::Expect(_)), "{err:?}");
        assert_eq!(
            err.to_string(),
            "expected \"primary\" not found in 7 bytes received (end of body): \"replica\""
        );
    }

    #[tokio::test]
    async fn expect_is_not_read_on_a_bad_status() {
        let check = http_expect("/", "primary");
        let answer = answer("503 Service Unavailable", "primary");
        let err = against(&check, &[&answer], LONG)
            .await
            .expect_err("unhealthy");
        assert!(matches!(err, ProbeError::Status(503)), "{err:?}");
    }

    #[tokio::test]
    async fn expect_gives_up_after_the_body_limit() {
        let check = http_expect("/", "primary");
        let filler = "x".repeat(HttpCheck::BODY_LIMIT);
        let head = format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n",
            filler.len() + "primary".len()
        );
        let err = against(&check, &[&head, &filler, "primary"], LONG)
            .await
            .expect_err("unhealthy");
        assert!(
            err.to_string().starts_with(
                "expected \"primary\" not found in 65536 bytes received \
                 (read limit of 65536 bytes reached)"
            ),
            "{err}"
        );
    }

    #[tokio::test]
    async fn expect_fails_at_the_timeout_when_the_body_stalls() {
        let (listener, addr) = listener().await;
        // Half the body, then nothing: the endpoint holds the connection open.
        let server = serve(listener, After::Hold, |_| {
            vec![b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nI am the pri".to_vec()]
        });
        let timeout = Duration::from_millis(200);
        let err = probe(&http_expect("/", "primary"), at(addr), timeout)
            .await
            .expect_err("unhealthy");
        assert_eq!(
            err.to_string(),
            "expected \"primary\" not found in 12 bytes received (timed out after 200ms): \
             \"I am the pri\""
        );
        // The server's hold ends only when the probe closed its connection.
        server.await.expect("server");
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
        let server = serve(listener, After::Close, |_| Vec::new());
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
        assert!(matches!(&err, ProbeError::InvalidRequest(_)), "{err:?}");
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
