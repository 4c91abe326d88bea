//! The PROXY protocol against real peers from Debian packages: nginx behind vipd (`listen …
//! proxy_protocol`, answering with the address from the header) reads the v1 and v2 headers
//! vipd writes and answers its health probes, which begin with a header naming no client;
//! HAProxy in front of vipd (`send-proxy`, `send-proxy-v2`, v2 with CRC32c and unique-ID TLVs)
//! hands a client's address to vipd, which passes it on to nginx, so it crosses two proxies;
//! HAProxy's own checks (a header naming no client, then `GET /`) pass through vipd to nginx.
//! Next to HAProxy, connections without a good header or from an untrusted address are closed
//! and counted.
//!
//! Network on 127.0.0.0/8 only; distinct loopback addresses tell clients from proxies.
//! `#[ignore]`d: they need Debian's `nginx` and `haproxy`, which `.ci/run` installs.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::Command;
use std::time::{Duration, Instant};

use rustix::process::Signal;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use vipd::config::{Cidr, HealthCheck, ProxyProtocolVersion, Service};

use crate::support::harness::with_health;
use crate::support::http::{get, sample};
use crate::support::server::ServerProcess;
use crate::support::{Running, free_port, poll_until, service, within};

/// Probe period of the services over nginx (the first probe runs at once; the timeout is half
/// of it, generous for a loaded machine).
const PERIOD: Duration = Duration::from_secs(1);

/// A loopback address `127.0.0.<n>`.
fn loopback(n: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, n))
}

/// A client socket bound to `ip` (port chosen by the kernel) connected to `to`.
async fn connect_from(ip: IpAddr, to: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().expect("socket");
    socket
        .bind(SocketAddr::new(ip, 0))
        .expect("bind the client");
    within(&format!("connect {ip} to {to}"), socket.connect(to))
        .await
        .unwrap_or_else(|e| panic!("connect {ip} to {to}: {e}"))
}

/// Sends `prefix` (a PROXY header, or nothing) and `GET /` on `stream` and reads the response
/// to its end: the status and the body.
async fn http_get(mut stream: TcpStream, prefix: &[u8]) -> Result<(u16, String), String> {
    let mut request = prefix.to_vec();
    request.extend_from_slice(b"GET / HTTP/1.1\r\nHost: peers.test\r\nConnection: close\r\n\r\n");
    stream
        .write_all(&request)
        .await
        .map_err(|e| format!("send: {e}"))?;
    let mut raw = Vec::new();
    stream
        .read_to_end(&mut raw)
        .await
        .map_err(|e| format!("read: {e}"))?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("no HTTP response: {text:?}"))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("no status line: {head:?}"))?;
    Ok((status, body.to_owned()))
}

/// `GET /` from a client bound to `ip` through `to`: the client's own address and the body of
/// a 200 response (failing the test otherwise).
async fn get_from(ip: IpAddr, to: SocketAddr) -> (SocketAddr, String) {
    let stream = connect_from(ip, to).await;
    let client = stream.local_addr().expect("client address");
    let response = within(&format!("GET / through {to}"), http_get(stream, b"")).await;
    match response {
        Ok((200, body)) => (client, body),
        other => panic!("GET / from {client} through {to}: {other:?}"),
    }
}

/// A temporary directory that processes running as another user (nginx's workers, when the
/// tests run as root) can enter.
fn server_dir() -> tempfile::TempDir {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("temporary directory");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
        .expect("chmod the temporary directory");
    dir
}

/// An nginx on 127.0.0.1 whose http server requires the PROXY protocol and answers every
/// request with `<address>:<port>` from the header. Stopped by PID when dropped.
struct Nginx {
    addr: SocketAddr,
    process: ServerProcess,
    dir: tempfile::TempDir,
}

impl Nginx {
    /// Starts nginx and waits until it answers a request with a header.
    async fn start() -> Nginx {
        let dir = server_dir();
        let path = dir.path();
        let addr = SocketAddr::new(loopback(1), free_port());
        let p = path.display();
        let conf = format!(
            r#"daemon off;
worker_processes 1;
pid {p}/nginx.pid;
error_log {p}/error.log info;
events {{ worker_connections 64; }}
http {{
    access_log off;
    client_body_temp_path {p}/client_body;
    proxy_temp_path {p}/proxy;
    fastcgi_temp_path {p}/fastcgi;
    uwsgi_temp_path {p}/uwsgi;
    scgi_temp_path {p}/scgi;
    default_type text/plain;
    server {{
        listen {addr} proxy_protocol;
        return 200 "$proxy_protocol_addr:$proxy_protocol_port";
    }}
}}
"#
        );
        let conf_path = path.join("nginx.conf");
        std::fs::write(&conf_path, conf).expect("write nginx.conf");
        let mut nginx = Command::new("nginx");
        nginx
            .arg("-p")
            .arg(path)
            .arg("-c")
            .arg(&conf_path)
            .arg("-e")
            .arg(path.join("error.log"));
        let mut process = ServerProcess::spawn(
            &format!("nginx {addr}"),
            nginx,
            path.join("nginx.out"),
            Signal::TERM,
        );
        let error_log = path.join("error.log");
        poll_until(&format!("nginx {addr} to answer"), || {
            process.assert_running();
            let error_log = error_log.clone();
            async move {
                let stream = TcpStream::connect(addr)
                    .await
                    .map_err(|e| format!("connect: {e}"))?;
                let header = format!(
                    "PROXY TCP4 127.0.0.9 {} 4321 {}\r\n",
                    addr.ip(),
                    addr.port()
                );
                match http_get(stream, header.as_bytes()).await? {
                    (200, body) if body == "127.0.0.9:4321" => Ok(()),
                    other => Err(format!(
                        "{other:?}; error log:\n{}",
                        std::fs::read_to_string(error_log).unwrap_or_default()
                    )),
                }
            }
        })
        .await;
        Nginx { addr, process, dir }
    }

    /// What nginx logged so far (its error log and output).
    fn log(&self) -> String {
        let errors = std::fs::read_to_string(self.dir.path().join("error.log")).unwrap_or_default();
        format!("{errors}{}", self.process.log())
    }
}

/// An HAProxy whose `mode tcp` frontend on `127.0.0.3` forwards to `backend`, connecting from
/// 127.0.0.1 with a PROXY header (`send` is `send-proxy` or `send-proxy-v2`). It checks the
/// backend with `GET /` behind a header of its own (`check-send-proxy`: v1 `PROXY UNKNOWN`,
/// v2 `LOCAL`), and answers `show stat` on a stats socket. Stopped by PID when dropped.
struct Haproxy {
    addr: SocketAddr,
    process: ServerProcess,
    dir: tempfile::TempDir,
}

impl Haproxy {
    /// Starts HAProxy and waits until its frontend accepts connections.
    async fn start(backend: SocketAddr, send: &str) -> Haproxy {
        let dir = server_dir();
        let path = dir.path();
        let addr = SocketAddr::new(loopback(3), free_port());
        let conf = format!(
            r#"global
    maxconn 256
    stats socket {stats} level operator

defaults
    mode tcp
    timeout connect 5s
    timeout client 20s
    timeout server 20s

frontend clients
    bind {addr}
    unique-id-format %ci:%cp_%rt
    default_backend vipd

backend vipd
    option httpchk GET /
    server vipd {backend} {send} source 127.0.0.1 check check-send-proxy inter 100ms
"#,
            stats = path.join("haproxy.sock").display()
        );
        let conf_path = path.join("haproxy.cfg");
        std::fs::write(&conf_path, conf).expect("write haproxy.cfg");
        let mut haproxy = Command::new("haproxy");
        haproxy.arg("-db").arg("-f").arg(&conf_path);
        let mut process = ServerProcess::spawn(
            &format!("haproxy {addr}"),
            haproxy,
            path.join("haproxy.log"),
            Signal::TERM,
        );
        poll_until(&format!("haproxy {addr} to accept"), || {
            process.assert_running();
            async move {
                TcpStream::connect(addr)
                    .await
                    .map(drop)
                    .map_err(|e| format!("connect: {e}"))
            }
        })
        .await;
        Haproxy { addr, process, dir }
    }

    /// The `check_status` of the server `vipd` in `show stat` (`L7OK`: its last check got a
    /// 2xx or 3xx answer).
    async fn check_status(&self) -> Result<String, String> {
        let mut socket = tokio::net::UnixStream::connect(self.dir.path().join("haproxy.sock"))
            .await
            .map_err(|e| format!("stats socket: {e}"))?;
        socket
            .write_all(b"show stat\n")
            .await
            .map_err(|e| format!("show stat: {e}"))?;
        let mut csv = String::new();
        socket
            .read_to_string(&mut csv)
            .await
            .map_err(|e| format!("show stat: {e}"))?;
        let mut lines = csv.lines();
        let header = lines.next().unwrap_or_default();
        let column = header
            .trim_start_matches("# ")
            .split(',')
            .position(|name| name == "check_status")
            .ok_or_else(|| format!("no check_status in {csv:?}"))?;
        lines
            .find(|line| line.starts_with("vipd,vipd,"))
            .and_then(|line| line.split(',').nth(column))
            .map(str::to_owned)
            .ok_or_else(|| format!("no server vipd in {csv:?}"))
    }
}

/// A service over `nginx` sending `version`, or no header.
fn over_nginx(name: &str, nginx: &Nginx, version: Option<ProxyProtocolVersion>) -> Service {
    let mut svc = with_health(service(name, &[nginx.addr]), HealthCheck::http("/"), PERIOD);
    svc.proxy_protocol = version;
    svc
}

async fn nginx_behind_vipd(version: ProxyProtocolVersion) {
    let started = Instant::now();
    let (with_header, plain) = (
        format!("nginx-{version:?}"),
        format!("nginx-plain-{version:?}"),
    );
    let nginx = Nginx::start().await;
    let vipd = Running::start(
        vec![
            over_nginx(&with_header, &nginx, Some(version)),
            over_nginx(&plain, &nginx, None),
        ],
        false,
    )
    .await;
    vipd.ready().await;
    assert!(
        vipd.service(&with_header).endpoints()[0].is_healthy(),
        "probes beginning with a header naming no client are answered; nginx:\n{}",
        nginx.log()
    );
    assert!(
        !vipd.service(&plain).endpoints()[0].is_healthy(),
        "nginx refuses probes without a header"
    );

    let (client, body) = get_from(loopback(5), vipd.addr(&with_header)).await;
    assert_eq!(client.ip(), loopback(5));
    assert_eq!(body, client.to_string(), "nginx saw the client's address");
    eprintln!("nginx behind vipd ({version:?}): {:?}", started.elapsed());
}

#[tokio::test]
#[ignore = "needs nginx and haproxy (installed by .ci/run)"]
async fn nginx_reads_v1_headers_and_answers_probes() {
    nginx_behind_vipd(ProxyProtocolVersion::V1).await;
}

#[tokio::test]
#[ignore = "needs nginx and haproxy (installed by .ci/run)"]
async fn nginx_reads_v2_headers_and_answers_probes() {
    nginx_behind_vipd(ProxyProtocolVersion::V2).await;
}

/// Waits for vipd to close `stream` without sending anything.
async fn closed_silently(mut stream: TcpStream, what: &str) {
    let mut rest = Vec::new();
    let read = within(
        &format!("vipd to close {what}"),
        stream.read_to_end(&mut rest),
    )
    .await;
    assert!(rest.is_empty(), "{what}: sent {rest:?}");
    // A close with unread bytes in vipd's receive queue is a reset: closed either way.
    if let Err(error) = read {
        assert_eq!(
            error.kind(),
            std::io::ErrorKind::ConnectionReset,
            "{what}: {error}"
        );
    }
}

/// Connects from `ip` to `vip`, writes `bytes` (a write that fails on an early close is fine)
/// and waits for vipd's close.
async fn refused(ip: IpAddr, vip: SocketAddr, bytes: &[u8], what: &str) {
    let mut stream = connect_from(ip, vip).await;
    let _ = stream.write_all(bytes).await;
    closed_silently(stream, what).await;
}

/// The sum of `vipd_proxy_protocol_errors_total` over every reason of `service`.
fn errors_of(page: &str, service: &str) -> f64 {
    let label = format!("service=\"{service}\"");
    page.lines()
        .filter(|l| l.starts_with("vipd_proxy_protocol_errors_total{") && l.contains(&label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// HAProxy (`send`) in front of vipd (service `name`: the metrics are the whole test
/// process's, so each test counts under a name of its own) in front of nginx.
async fn haproxy_in_front_of_vipd(name: &str, send: &str) {
    let started = Instant::now();
    let nginx = Nginx::start().await;
    let mut svc = over_nginx(name, &nginx, Some(ProxyProtocolVersion::V2));
    svc.ports[0].accept_proxy_protocol = true;
    svc.proxy_protocol_trusted = vec![Cidr("127.0.0.1/32".parse().unwrap())];
    svc.connection.proxy_protocol_timeout = Duration::from_millis(300);
    let vipd = Running::start(vec![svc], true).await;
    vipd.ready().await;
    let vip = vipd.addr(name);
    let haproxy = Haproxy::start(vip, send).await;

    // The client's address crosses HAProxy and vipd to nginx.
    for _ in 0..3 {
        let (client, body) = get_from(loopback(6), haproxy.addr).await;
        assert_eq!(client.ip(), loopback(6));
        assert_eq!(
            body,
            client.to_string(),
            "nginx saw the client of HAProxy; haproxy:\n{}",
            haproxy.process.log()
        );
    }

    // HAProxy's own checks (a header naming no client, then `GET /`) are answered by nginx.
    poll_until("HAProxy's check of vipd to pass", || async {
        match haproxy.check_status().await? {
            status if status.trim_start_matches("* ") == "L7OK" => Ok(()),
            status => Err(status),
        }
    })
    .await;

    // Straight to vipd's port: refused unless a header from a trusted peer comes first.
    let trusted = loopback(1);
    refused(trusted, vip, b"GET / HTTP/1.1\r\n\r\n", "no header").await;
    refused(
        trusted,
        vip,
        b"PROXY TCP4 127.0.0.6 not-an-address 5000 80\r\n",
        "a garbage header",
    )
    .await;
    refused(trusted, vip, b"PROXY TCP4 127.0.0.6 ", "half a header").await;
    let good = format!("PROXY TCP4 127.0.0.6 {} 5000 {}\r\n", vip.ip(), vip.port());
    refused(loopback(7), vip, good.as_bytes(), "an untrusted peer").await;

    let page = get(vipd.admin.unwrap(), "/metrics").await.body;
    for reason in ["not_proxy_protocol", "malformed", "timeout", "untrusted"] {
        assert_eq!(
            sample(
                &page,
                "vipd_proxy_protocol_errors_total",
                &[("service", name), ("reason", reason)]
            ),
            Some(1.0),
            "{reason}; metrics:\n{page}"
        );
    }
    assert_eq!(
        errors_of(&page, name),
        4.0,
        "HAProxy's connections are no errors; metrics:\n{page}"
    );

    // And HAProxy's clients still get through.
    let (client, body) = get_from(loopback(6), haproxy.addr).await;
    assert_eq!(body, client.to_string());
    eprintln!("haproxy ({send}) in front of vipd: {:?}", started.elapsed());
}

#[tokio::test]
#[ignore = "needs nginx and haproxy (installed by .ci/run)"]
async fn haproxy_send_proxy_client_reaches_nginx_through_vipd() {
    haproxy_in_front_of_vipd("haproxy-v1", "send-proxy").await;
}

#[tokio::test]
#[ignore = "needs nginx and haproxy (installed by .ci/run)"]
async fn haproxy_send_proxy_v2_client_reaches_nginx_through_vipd() {
    haproxy_in_front_of_vipd("haproxy-v2", "send-proxy-v2").await;
}

/// HAProxy's v2 header with TLVs: a CRC32c of the header (which vipd checks) and the
/// connection's unique ID (which it skips).
#[tokio::test]
#[ignore = "needs nginx and haproxy (installed by .ci/run)"]
async fn haproxy_send_proxy_v2_with_tlvs_client_reaches_nginx_through_vipd() {
    haproxy_in_front_of_vipd(
        "haproxy-v2-tlvs",
        "send-proxy-v2 proxy-v2-options crc32c,unique-id",
    )
    .await;
}
