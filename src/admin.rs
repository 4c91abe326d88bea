//! The admin HTTP/1 server.
//!
//! - `GET /metrics`: Prometheus text format 0.0.4 (`text/plain; version=0.0.4; charset=utf-8`)
//! - `GET /healthz`: 200 `ok` while the process runs
//! - `GET /readyz`: 200 `ready` once listeners are bound and the first health round is done,
//!   else 503 `not ready`
//! - `GET /status`: 200, pretty-printed JSON view of services and endpoints ([`Status`])
//! - anything else: 404 `not found`
//!
//! `HEAD` is answered like `GET` (hyper sends the headers without the body). Any other method on
//! one of the paths above gets 405 with `Allow: GET, HEAD`. Query strings are ignored.
//!
//! [`Status`]: crate::status::Status

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{ALLOW, CONTENT_TYPE, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::status::StatusSource;

/// Content type of the Prometheus text exposition format.
const METRICS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";
/// Content type of the plain-text endpoints.
const TEXT_CONTENT_TYPE: &str = "text/plain; charset=utf-8";
/// Content type of `/status`.
const JSON_CONTENT_TYPE: &str = "application/json";

/// How long an open connection may take to finish its in-flight request after shutdown before
/// it is dropped: long enough for a scrape, short enough not to hold up process exit.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);
/// A client that has not sent full request headers by then is dropped, so idle or slow
/// connections cannot pile up (slowloris).
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// First wait after a failed `accept()`; doubled on each further failure up to
/// [`ACCEPT_BACKOFF_MAX`]. Errors like EMFILE persist for a while, and retrying at once would
/// spin a core and flood the log.
const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(100);
/// Longest wait between failed `accept()` calls.
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// Serves admin requests on `listener` until `shutdown` is cancelled.
///
/// On cancellation it stops accepting, asks every open connection to close after its
/// in-flight request (dropping it if that takes longer than a couple of seconds), and returns
/// once they are all gone.
pub async fn serve(
    listener: TcpListener,
    source: Arc<dyn StatusSource>,
    shutdown: CancellationToken,
) {
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);

    let tasks = TaskTracker::new();

    let mut backoff = ACCEPT_BACKOFF_MIN;
    loop {
        let accepted = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, peer)) => {
                backoff = ACCEPT_BACKOFF_MIN;
                tracing::trace!(%peer, "admin connection accepted");
                tasks.spawn(serve_connection(
                    builder.clone(),
                    stream,
                    source.clone(),
                    shutdown.clone(),
                ));
            }
            Err(e) => {
                tracing::warn!(error = %e, ?backoff, "admin accept failed; backing off");
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(ACCEPT_BACKOFF_MAX);
            }
        }
    }

    // Free the port at once rather than when the connections are done.
    drop(listener);
    tasks.close();
    tasks.wait().await;
}

/// Serves one connection until the client closes it, or until `shutdown` and then the end of
/// the in-flight request (bounded by [`SHUTDOWN_GRACE`]).
async fn serve_connection(
    builder: http1::Builder,
    stream: TcpStream,
    source: Arc<dyn StatusSource>,
    shutdown: CancellationToken,
) {
    let service = service_fn(move |req: Request<Incoming>| {
        let response = route(&req, source.as_ref());
        async move { Ok::<_, Infallible>(response) }
    });
    let conn = builder.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);

    let result = tokio::select! {
        result = conn.as_mut() => result,
        () = shutdown.cancelled() => {
            // Lets an in-flight request finish, then closes; an idle keep-alive connection
            // closes at once.
            conn.as_mut().graceful_shutdown();
            match tokio::time::timeout(SHUTDOWN_GRACE, conn.as_mut()).await {
                Ok(result) => result,
                Err(_) => {
                    tracing::debug!("admin connection did not finish within grace; dropping it");
                    return;
                }
            }
        }
    };
    // Client resets, header timeouts and malformed requests are the client's business, not
    // an operator's.
    if let Err(e) = result {
        tracing::debug!(error = %e, "admin connection error");
    }
}

/// Answers one request. Pure apart from reading `source` and the metrics registry.
fn route<B>(req: &Request<B>, source: &dyn StatusSource) -> Response<Full<Bytes>> {
    let path = req.uri().path();
    let known = matches!(path, "/metrics" | "/healthz" | "/readyz" | "/status");
    if !known {
        return text(StatusCode::NOT_FOUND, "not found\n");
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut response = text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
        response
            .headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
        return response;
    }
    match path {
        "/metrics" => response(
            StatusCode::OK,
            METRICS_CONTENT_TYPE,
            crate::metrics::render(),
        ),
        "/healthz" => text(StatusCode::OK, "ok\n"),
        "/readyz" if source.ready() => text(StatusCode::OK, "ready\n"),
        "/readyz" => text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n"),
        "/status" => match serde_json::to_string_pretty(&source.status()) {
            Ok(mut json) => {
                json.push('\n');
                response(StatusCode::OK, JSON_CONTENT_TYPE, json)
            }
            // Cannot happen with the plain structs in `status`, but a 500 beats a panic in
            // the admin server if that ever changes.
            Err(e) => {
                tracing::error!(error = %e, "serialising /status failed");
                text(StatusCode::INTERNAL_SERVER_ERROR, "internal error\n")
            }
        },
        _ => unreachable!("path was checked against the known list above"),
    }
}

/// A plain-text response.
fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    response(status, TEXT_CONTENT_TYPE, body)
}

/// A response with a full body and a content type.
fn response(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::sync::atomic::{AtomicBool, Ordering};

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::task::JoinHandle;

    use super::*;
    use crate::status::{EndpointStatus, PortStatus, ServiceStatus, Status};

    /// Failure guard only: every awaited step should finish in milliseconds.
    const GUARD: Duration = Duration::from_secs(5);

    struct TestSource {
        ready: AtomicBool,
        status: Status,
    }

    impl StatusSource for TestSource {
        fn ready(&self) -> bool {
            self.ready.load(Ordering::SeqCst)
        }
        fn status(&self) -> Status {
            self.status.clone()
        }
    }

    struct Server {
        addr: SocketAddr,
        source: Arc<TestSource>,
        shutdown: CancellationToken,
        task: JoinHandle<()>,
    }

    impl Server {
        async fn start() -> Self {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let source = Arc::new(TestSource {
                ready: AtomicBool::new(false),
                status: Status {
                    services: vec![ServiceStatus {
                        name: "web".into(),
                        vip: "10.96.0.10".into(),
                        ports: vec![PortStatus {
                            port: 80,
                            target_port: 8080,
                            protocol: "tcp",
                        }],
                        endpoints: vec![EndpointStatus {
                            address: "10.0.0.1:8080".into(),
                            healthy: true,
                            draining: false,
                            active_connections: 2,
                            connections_total: 7,
                        }],
                    }],
                },
            });
            let shutdown = CancellationToken::new();
            let task = tokio::spawn(serve(listener, source.clone(), shutdown.clone()));
            Server {
                addr,
                source,
                shutdown,
                task,
            }
        }

        /// Sends `method path` with `Connection: close` and reads the response to EOF.
        async fn request(&self, method: &str, path: &str) -> Reply {
            let mut stream = TcpStream::connect(self.addr).await.unwrap();
            let request =
                format!("{method} {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n");
            stream.write_all(request.as_bytes()).await.unwrap();
            let mut raw = Vec::new();
            tokio::time::timeout(GUARD, stream.read_to_end(&mut raw))
                .await
                .expect("response within guard")
                .unwrap();
            Reply::parse(&raw)
        }

        async fn stop(self) {
            self.shutdown.cancel();
            tokio::time::timeout(GUARD, self.task)
                .await
                .expect("serve returns after cancel")
                .unwrap();
        }
    }

    struct Reply {
        status: u16,
        headers: Vec<(String, String)>,
        body: String,
    }

    impl Reply {
        fn parse(raw: &[u8]) -> Self {
            let raw = String::from_utf8(raw.to_vec()).unwrap();
            let (head, body) = raw.split_once("\r\n\r\n").expect("complete head");
            let mut lines = head.split("\r\n");
            let status = lines.next().unwrap().split(' ').nth(1).unwrap();
            let headers = lines
                .map(|l| {
                    let (k, v) = l.split_once(':').unwrap();
                    (k.trim().to_ascii_lowercase(), v.trim().to_owned())
                })
                .collect();
            Reply {
                status: status.parse().unwrap(),
                headers,
                body: body.to_owned(),
            }
        }

        fn header(&self, name: &str) -> Option<&str> {
            self.headers
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.as_str())
        }
    }

    #[tokio::test]
    async fn healthz_and_unknown_paths() {
        let server = Server::start().await;

        let reply = server.request("GET", "/healthz").await;
        assert_eq!(reply.status, 200);
        assert_eq!(reply.body, "ok\n");

        let reply = server.request("GET", "/healthz?verbose=1").await;
        assert_eq!(reply.status, 200, "query strings do not affect routing");

        let reply = server.request("GET", "/nope").await;
        assert_eq!(reply.status, 404);
        assert_eq!(reply.body, "not found\n");

        server.stop().await;
    }

    #[tokio::test]
    async fn readyz_follows_source() {
        let server = Server::start().await;

        let reply = server.request("GET", "/readyz").await;
        assert_eq!(reply.status, 503);
        assert_eq!(reply.body, "not ready\n");

        server.source.ready.store(true, Ordering::SeqCst);
        let reply = server.request("GET", "/readyz").await;
        assert_eq!(reply.status, 200);
        assert_eq!(reply.body, "ready\n");

        server.stop().await;
    }

    #[tokio::test]
    async fn status_is_json() {
        let server = Server::start().await;

        let reply = server.request("GET", "/status").await;
        assert_eq!(reply.status, 200);
        assert_eq!(reply.header("content-type"), Some("application/json"));
        assert!(reply.body.ends_with('\n'));
        let json: serde_json::Value = serde_json::from_str(&reply.body).unwrap();
        assert_eq!(
            json["services"][0]["endpoints"][0]["address"],
            "10.0.0.1:8080"
        );
        assert_eq!(json["services"][0]["ports"][0]["target_port"], 8080);

        server.stop().await;
    }

    #[tokio::test]
    async fn wrong_method_is_405_and_head_is_get() {
        let server = Server::start().await;

        let reply = server.request("POST", "/status").await;
        assert_eq!(reply.status, 405);
        assert_eq!(reply.header("allow"), Some("GET, HEAD"));

        let reply = server.request("HEAD", "/healthz").await;
        assert_eq!(reply.status, 200);
        assert_eq!(reply.body, "", "HEAD responses carry no body");

        server.stop().await;
    }

    #[tokio::test]
    async fn metrics_renders_recorded_values() {
        let server = Server::start().await;
        // `serve` installed the recorder before accepting; install again to be independent of
        // that detail.
        crate::metrics::install();
        ::metrics::counter!(
            crate::metrics::CONNECT_FAILURES_TOTAL,
            "service" => "admin-test",
            "endpoint" => "10.0.0.9:80"
        )
        .increment(4);

        let reply = server.request("GET", "/metrics").await;
        assert_eq!(reply.status, 200);
        assert_eq!(
            reply.header("content-type"),
            Some("text/plain; version=0.0.4; charset=utf-8")
        );
        assert!(
            reply.body.contains(
                r#"vipd_connect_failures_total{service="admin-test",endpoint="10.0.0.9:80"} 4"#
            ),
            "{}",
            reply.body
        );
        assert!(
            reply.body.contains("# HELP vipd_connect_failures_total "),
            "{}",
            reply.body
        );

        server.stop().await;
    }

    #[tokio::test]
    async fn shutdown_closes_idle_keepalive_connections() {
        let server = Server::start().await;

        // A keep-alive connection that has finished a request and sits idle must not keep
        // `serve` from returning.
        let mut stream = TcpStream::connect(server.addr).await.unwrap();
        stream
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: admin\r\n\r\n")
            .await
            .unwrap();
        let mut buf = vec![0; 4096];
        let mut got = Vec::new();
        while !String::from_utf8_lossy(&got).contains("\r\n\r\nok\n") {
            let n = tokio::time::timeout(GUARD, stream.read(&mut buf))
                .await
                .expect("response within guard")
                .unwrap();
            assert_ne!(n, 0, "server closed a keep-alive connection early");
            got.extend_from_slice(&buf[..n]);
        }

        server.stop().await;

        // And the server closed it rather than leaving it open.
        let n = tokio::time::timeout(GUARD, stream.read(&mut buf))
            .await
            .expect("EOF within guard")
            .unwrap_or(0);
        assert_eq!(n, 0);
    }
}
