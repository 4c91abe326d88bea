//! The admin HTTP/1 server.
//!
//! - `GET /metrics`: Prometheus text format 0.0.4 (`text/plain; version=0.0.4; charset=utf-8`)
//! - `GET /healthz`: 200 `ok` while the process runs
//! - `GET /readyz`: 200 `ready` once listeners are bound and the first health round is done,
//!   else 503 `not ready`
//! - `GET /status`: 200, pretty-printed JSON view of services and endpoints ([`Status`])
//! - `POST /endpoints/drain?service=NAME&endpoint=IP:PORT`: the endpoint gets no new
//!   connections; established ones stay
//! - `POST /endpoints/undrain?service=NAME&endpoint=IP:PORT`: back into rotation
//! - `POST /reload`: reload the config file (200 with a summary, 422 with the error)
//! - anything else: 404 `not found`
//!
//! `POST` needs `Authorization: Bearer <token>` with the token of `admin.token_file`: missing or
//! wrong → 401; no token file configured → 403 for every `POST`. Unknown service or endpoint →
//! 404; a malformed query → 400.
//!
//! `HEAD` is answered like `GET` (hyper sends the headers without the body). Any other method on
//! one of the `GET` paths above gets 405 with `Allow: GET, HEAD`, and anything but `POST` on a
//! `POST` path gets 405 with `Allow: POST`.
//!
//! [`Status`]: crate::status::Status

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{ALLOW, AUTHORIZATION, CONTENT_TYPE, HeaderValue, WWW_AUTHENTICATE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Secret;
use crate::service::ControlError;
use crate::status::AdminSource;

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
    source: Arc<dyn AdminSource>,
    token: Option<Secret>,
    shutdown: CancellationToken,
) {
    let token = Arc::new(token);
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
                    token.clone(),
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
    source: Arc<dyn AdminSource>,
    token: Arc<Option<Secret>>,
    shutdown: CancellationToken,
) {
    let service = service_fn(move |req: Request<Incoming>| {
        let source = source.clone();
        let token = token.clone();
        async move { Ok::<_, Infallible>(route(&req, source.as_ref(), token.as_ref().as_ref()).await) }
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

/// Answers one request.
async fn route<B>(
    req: &Request<B>,
    source: &dyn AdminSource,
    token: Option<&Secret>,
) -> Response<Full<Bytes>> {
    let path = req.uri().path();
    if matches!(path, "/endpoints/drain" | "/endpoints/undrain" | "/reload") {
        return control(req, source, token).await;
    }
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

/// The `POST` endpoints: method, then authorization, then the action.
async fn control<B>(
    req: &Request<B>,
    source: &dyn AdminSource,
    token: Option<&Secret>,
) -> Response<Full<Bytes>> {
    if req.method() != Method::POST {
        let mut response = text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
        response
            .headers_mut()
            .insert(ALLOW, HeaderValue::from_static("POST"));
        return response;
    }
    let Some(token) = token else {
        return text(
            StatusCode::FORBIDDEN,
            "POST endpoints are disabled: set admin.token_file to enable them\n",
        );
    };
    if !authorized(req, token) {
        let mut response = text(
            StatusCode::UNAUTHORIZED,
            "missing or wrong Authorization: Bearer token\n",
        );
        response
            .headers_mut()
            .insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        return response;
    }
    match req.uri().path() {
        "/reload" => match source.reload().await {
            Ok(summary) => response(
                StatusCode::OK,
                TEXT_CONTENT_TYPE,
                format!("reloaded: {summary}\n"),
            ),
            Err(error) => response(
                StatusCode::UNPROCESSABLE_ENTITY,
                TEXT_CONTENT_TYPE,
                format!("reload failed, the running config stays: {error}\n"),
            ),
        },
        path => {
            let draining = path == "/endpoints/drain";
            let (service, endpoint) = match endpoint_query(req.uri().query().unwrap_or("")) {
                Ok(target) => target,
                Err(message) => {
                    return response(StatusCode::BAD_REQUEST, TEXT_CONTENT_TYPE, message);
                }
            };
            match source.set_draining(&service, endpoint, draining).await {
                Ok(()) => {
                    let verb = if draining { "draining" } else { "undrained" };
                    response(
                        StatusCode::OK,
                        TEXT_CONTENT_TYPE,
                        format!("{service} {endpoint}: {verb}\n"),
                    )
                }
                Err(
                    error
                    @ (ControlError::UnknownService(_) | ControlError::UnknownEndpoint { .. }),
                ) => response(
                    StatusCode::NOT_FOUND,
                    TEXT_CONTENT_TYPE,
                    format!("{error}\n"),
                ),
                Err(error @ ControlError::Stopping(_)) => response(
                    StatusCode::SERVICE_UNAVAILABLE,
                    TEXT_CONTENT_TYPE,
                    format!("{error}\n"),
                ),
            }
        }
    }
}

/// Whether the request carries `Authorization: Bearer <token>`. The comparison takes the same
/// time wherever the first difference is, so the token cannot be guessed byte by byte.
fn authorized<B>(req: &Request<B>, token: &Secret) -> bool {
    let Some(given) = req
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
    else {
        return false;
    };
    let (given, expected) = (given.trim().as_bytes(), token.expose().as_bytes());
    given.len() == expected.len()
        && given
            .iter()
            .zip(expected)
            .fold(0u8, |diff, (a, b)| diff | (a ^ b))
            == 0
}

/// Reads `service=NAME&endpoint=IP:PORT` (percent-encoding allowed, e.g. for `[::1]:80`).
fn endpoint_query(query: &str) -> Result<(String, SocketAddr), String> {
    let mut service = None;
    let mut endpoint = None;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let value = percent_decode(value)
            .ok_or_else(|| format!("query parameter {key:?} is not valid percent-encoding\n"))?;
        match key {
            "service" => service = Some(value),
            "endpoint" => endpoint = Some(value),
            other => return Err(format!("unknown query parameter {other:?}\n")),
        }
    }
    let service = service.ok_or("missing query parameter \"service\"\n")?;
    let endpoint = endpoint.ok_or("missing query parameter \"endpoint\"\n")?;
    let endpoint = endpoint
        .parse()
        .map_err(|_| format!("endpoint {endpoint:?} is not IP:PORT\n"))?;
    Ok((service, endpoint))
}

fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            byte => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
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

    impl AdminSource for TestSource {
        fn ready(&self) -> bool {
            self.ready.load(Ordering::SeqCst)
        }
        fn status(&self) -> Status {
            self.status.clone()
        }
        fn set_draining(
            &self,
            service: &str,
            endpoint: SocketAddr,
            _draining: bool,
        ) -> crate::status::BoxFuture<Result<(), ControlError>> {
            let known = service == "web" && endpoint == "10.0.0.1:8080".parse().unwrap();
            let service = service.to_owned();
            Box::pin(async move {
                if known {
                    Ok(())
                } else {
                    Err(ControlError::UnknownService(service))
                }
            })
        }
        fn reload(&self) -> crate::status::BoxFuture<Result<String, String>> {
            Box::pin(async { Ok("no changes".to_owned()) })
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
            Self::start_with_token(None).await
        }

        async fn start_with_token(token: Option<&str>) -> Self {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let source = Arc::new(TestSource {
                ready: AtomicBool::new(false),
                status: Status {
                    services: vec![ServiceStatus {
                        name: "web".into(),
                        vip: "10.96.0.10".into(),
                        balance: "round_robin",
                        session_affinity: "none",
                        ports: vec![PortStatus {
                            port: 80,
                            target_port: 8080,
                            protocol: "tcp",
                        }],
                        endpoints: vec![EndpointStatus {
                            address: "10.0.0.1:8080".into(),
                            name: None,
                            healthy: true,
                            draining: false,
                            ejected: false,
                            weight: 1,
                            effective_weight: 1.0,
                            backup: false,
                            active_connections: 2,
                            connections_total: 7,
                            active_flows: 0,
                            max_connections: None,
                        }],
                        max_connections: None,
                        limited_connections: 0,
                        queued_connections: 0,
                    }],
                },
            });
            let shutdown = CancellationToken::new();
            let token = token.map(|t| Secret::new(t.to_owned()));
            let task = tokio::spawn(serve(listener, source.clone(), token, shutdown.clone()));
            Server {
                addr,
                source,
                shutdown,
                task,
            }
        }

        /// Sends `method path` with `Connection: close` and reads the response to EOF.
        async fn request(&self, method: &str, path: &str) -> Reply {
            self.request_with(method, path, "").await
        }

        /// Like `request`, with extra header lines (each ending in CRLF).
        async fn request_with(&self, method: &str, path: &str, headers: &str) -> Reply {
            let mut stream = TcpStream::connect(self.addr).await.unwrap();
            let request = format!(
                "{method} {path} HTTP/1.1\r\nHost: admin\r\n{headers}Content-Length: 0\r\nConnection: close\r\n\r\n"
            );
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

    #[tokio::test]
    async fn post_endpoints_need_a_configured_token() {
        let server = Server::start().await;
        let reply = server
            .request_with("POST", "/reload", "Authorization: Bearer anything\r\n")
            .await;
        assert_eq!(reply.status, 403);
        server.stop().await;
    }

    #[tokio::test]
    async fn post_endpoints_check_the_bearer_token() {
        let server = Server::start_with_token(Some("s3cret")).await;
        let drain = "/endpoints/drain?service=web&endpoint=10.0.0.1:8080";
        assert_eq!(server.request("POST", drain).await.status, 401);
        let wrong = server
            .request_with("POST", drain, "Authorization: Bearer s3cres\r\n")
            .await;
        assert_eq!(wrong.status, 401);
        assert_eq!(wrong.header("www-authenticate"), Some("Bearer"));
        let right = "Authorization: Bearer s3cret\r\n";
        let ok = server.request_with("POST", drain, right).await;
        assert_eq!(ok.status, 200, "{}", ok.body);
        let unknown = server
            .request_with(
                "POST",
                "/endpoints/undrain?service=nope&endpoint=10.0.0.1:8080",
                right,
            )
            .await;
        assert_eq!(unknown.status, 404);
        let encoded = server
            .request_with(
                "POST",
                "/endpoints/drain?service=web&endpoint=10.0.0.1%3A8080",
                right,
            )
            .await;
        assert_eq!(encoded.status, 200);
        for bad in [
            "/endpoints/drain?service=web",
            "/endpoints/drain?service=web&endpoint=nonsense",
            "/endpoints/drain?service=web&endpoint=10.0.0.1:8080&x=1",
            "/endpoints/drain?service=web&endpoint=%zz",
        ] {
            let reply = server.request_with("POST", bad, right).await;
            assert_eq!(reply.status, 400, "{bad}: {}", reply.body);
        }
        let reload = server.request_with("POST", "/reload", right).await;
        assert_eq!(
            (reload.status, reload.body.as_str()),
            (200, "reloaded: no changes\n")
        );
        let get = server.request("GET", "/reload").await;
        assert_eq!(get.status, 405);
        assert_eq!(get.header("allow"), Some("POST"));
        server.stop().await;
    }
}
