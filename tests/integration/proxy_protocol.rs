//! The PROXY protocol end to end, in process: the header vipd writes to endpoints (v1 text and
//! v2 bytes, checked against hand-written expectations), headers it accepts from a trusted
//! load balancer (whose address then is the client's: in the header sent on, and in Maglev's
//! pick), the connections it refuses (no header, garbage, too slow, an untrusted peer), each
//! counted, and health probes that begin with a header naming no client.

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use vipd::config::{Balance, Cidr, HealthCheck, ProxyProtocolVersion, Service, TcpCheck};

use crate::support::backend::{Behaviour, named_backends};
use crate::support::harness::with_health;
use crate::support::http::{get, sample};
use crate::support::{Backend, Running, service, within};

/// Sends `payload`, ends the stream, and returns all the echo backend sent back: what it
/// received, header included.
async fn through(mut stream: TcpStream, payload: &[u8]) -> Vec<u8> {
    stream.write_all(payload).await.unwrap();
    stream.shutdown().await.unwrap();
    let mut seen = Vec::new();
    within("the echo", stream.read_to_end(&mut seen))
        .await
        .unwrap();
    seen
}

fn sending(name: &str, endpoint: SocketAddr, version: ProxyProtocolVersion) -> Service {
    let mut svc = service(name, &[endpoint]);
    svc.proxy_protocol = Some(version);
    svc
}

/// A service whose port takes headers from `trusted` (and sends v1 on).
fn accepting(name: &str, endpoints: &[SocketAddr], trusted: &str) -> Service {
    let mut svc = service(name, endpoints);
    svc.ports[0].accept_proxy_protocol = true;
    svc.proxy_protocol_trusted = vec![Cidr(trusted.parse().unwrap())];
    svc.proxy_protocol = Some(ProxyProtocolVersion::V1);
    svc
}

fn v4(addr: SocketAddr) -> ([u8; 4], [u8; 2]) {
    let SocketAddr::V4(a) = addr else {
        panic!("IPv4")
    };
    (a.ip().octets(), a.port().to_be_bytes())
}

const V2_SIGNATURE: &[u8] = b"\r\n\r\n\0\r\nQUIT\n";

#[tokio::test]
async fn v1_header_names_the_client_and_the_vip() {
    let echo = Backend::start("echo", Behaviour::Echo).await;
    let vipd = Running::start(
        vec![sending("pp-v1", echo.addr, ProxyProtocolVersion::V1)],
        false,
    )
    .await;
    let vip = vipd.addr("pp-v1");
    let stream = TcpStream::connect(vip).await.unwrap();
    let client = stream.local_addr().unwrap();
    let seen = through(stream, b"hello").await;
    let expected = format!(
        "PROXY TCP4 {} {} {} {}\r\nhello",
        client.ip(),
        vip.ip(),
        client.port(),
        vip.port()
    );
    assert_eq!(String::from_utf8_lossy(&seen), expected);
}

#[tokio::test]
async fn v2_header_names_the_client_and_the_vip() {
    let echo = Backend::start("echo", Behaviour::Echo).await;
    let vipd = Running::start(
        vec![sending("pp-v2", echo.addr, ProxyProtocolVersion::V2)],
        false,
    )
    .await;
    let vip = vipd.addr("pp-v2");
    let stream = TcpStream::connect(vip).await.unwrap();
    let client = stream.local_addr().unwrap();
    let seen = through(stream, b"hello").await;
    let ((src, src_port), (dst, dst_port)) = (v4(client), v4(vip));
    // Version 2, PROXY; AF_INET, STREAM; 12 address bytes.
    let mut expected = [V2_SIGNATURE, &[0x21, 0x11, 0, 12]].concat();
    expected.extend_from_slice(&src);
    expected.extend_from_slice(&dst);
    expected.extend_from_slice(&src_port);
    expected.extend_from_slice(&dst_port);
    expected.extend_from_slice(b"hello");
    assert_eq!(seen, expected);
}

#[tokio::test]
async fn a_received_header_is_the_client_and_bytes_after_it_follow() {
    let echo = Backend::start("echo", Behaviour::Echo).await;
    let vipd = Running::start(
        vec![accepting("pp-in", &[echo.addr], "127.0.0.1/32")],
        false,
    )
    .await;
    let vip = vipd.addr("pp-in");
    // Header and payload in one write, as a load balancer sends them.
    let seen = through(
        TcpStream::connect(vip).await.unwrap(),
        b"PROXY TCP4 192.0.2.1 198.51.100.1 5000 80\r\nhello",
    )
    .await;
    assert_eq!(
        String::from_utf8_lossy(&seen),
        "PROXY TCP4 192.0.2.1 198.51.100.1 5000 80\r\nhello"
    );

    // v2 LOCAL with a TLV (an AWS NLB health check): the peer itself is the client.
    let stream = TcpStream::connect(vip).await.unwrap();
    let peer = stream.local_addr().unwrap();
    let mut local = [V2_SIGNATURE, &[0x20, 0x00, 0, 7]].concat();
    local.extend_from_slice(&[0xEA, 0, 4, 1, 2, 3, 4]);
    local.extend_from_slice(b"ping");
    let seen = through(stream, &local).await;
    let expected = format!(
        "PROXY TCP4 {} {} {} {}\r\nping",
        peer.ip(),
        vip.ip(),
        peer.port(),
        vip.port()
    );
    assert_eq!(String::from_utf8_lossy(&seen), expected);
}

#[tokio::test]
async fn maglev_hashes_the_address_from_the_header() {
    let backends = named_backends(3, Behaviour::Name).await;
    let addrs: Vec<SocketAddr> = backends.iter().map(|b| b.addr).collect();
    let mut svc = accepting("pp-maglev", &addrs, "127.0.0.1/32");
    svc.proxy_protocol = None;
    svc.balance = Balance::Maglev;
    let vipd = Running::start(vec![svc], false).await;
    let vip = vipd.addr("pp-maglev");
    let name_for = |n: u8| async move {
        let mut stream = TcpStream::connect(vip).await.unwrap();
        let header = format!("PROXY TCP4 192.0.2.{n} 198.51.100.1 4000 80\r\n");
        stream.write_all(header.as_bytes()).await.unwrap();
        let mut name = String::new();
        within("the name", stream.read_to_string(&mut name))
            .await
            .unwrap();
        name
    };
    // The real peer is 127.0.0.1 every time: only the header's address can spread them.
    let mut reached = HashSet::new();
    for n in 1..=24 {
        let name = name_for(n).await;
        assert_eq!(name_for(n).await, name, "192.0.2.{n} stays on one endpoint");
        reached.insert(name);
    }
    assert!(reached.len() > 1, "every client hashed alike: {reached:?}");
}

/// Waits for vipd to close `stream` without sending anything.
async fn closed_silently(mut stream: TcpStream) {
    let mut rest = Vec::new();
    let read = within("vipd's close", stream.read_to_end(&mut rest)).await;
    // A close with unread bytes in vipd's receive queue is a reset: closed either way.
    assert!(rest.is_empty(), "sent {rest:?}");
    if let Err(error) = read {
        assert_eq!(error.kind(), std::io::ErrorKind::ConnectionReset);
    }
}

#[tokio::test]
async fn connections_without_a_good_header_or_from_untrusted_peers_are_closed_and_counted() {
    let echo = Backend::start("echo", Behaviour::Echo).await;
    let mut svc = accepting("pp-refuse", &[echo.addr], "127.0.0.1/32");
    svc.connection.proxy_protocol_timeout = Duration::from_millis(200);
    let vipd = Running::start(vec![svc], true).await;
    let vip = vipd.addr("pp-refuse");

    // No header: refused at its first byte, not at the timeout.
    let mut plain = TcpStream::connect(vip).await.unwrap();
    plain.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
    closed_silently(plain).await;
    // A header with garbage for an address.
    let mut garbage = TcpStream::connect(vip).await.unwrap();
    garbage
        .write_all(b"PROXY TCP4 192.0.2.x 198.51.100.1 5000 80\r\n")
        .await
        .unwrap();
    closed_silently(garbage).await;
    // Half a header, then nothing: closed at proxy_protocol_timeout.
    let mut slow = TcpStream::connect(vip).await.unwrap();
    slow.write_all(b"PROXY TCP4 192.0.2.1 ").await.unwrap();
    closed_silently(slow).await;
    // A peer outside proxy_protocol_trusted, however good its header.
    let socket = TcpSocket::new_v4().unwrap();
    socket
        .bind(SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2)), 0))
        .unwrap();
    let untrusted = socket.connect(vip).await.unwrap();
    closed_silently(untrusted).await;

    let page = get(vipd.admin.unwrap(), "/metrics").await.body;
    for reason in ["not_proxy_protocol", "malformed", "timeout", "untrusted"] {
        assert_eq!(
            sample(
                &page,
                "vipd_proxy_protocol_errors_total",
                &[("service", "pp-refuse"), ("reason", reason)]
            ),
            Some(1.0),
            "{reason}"
        );
    }
    let endpoint = vipd.service("pp-refuse").endpoint(echo.addr).unwrap();
    assert_eq!(
        endpoint.connections_total(),
        0,
        "nothing reached the endpoint"
    );
}

/// An endpoint that answers `ok` to `ping` only after a `PROXY UNKNOWN` line, as a server with
/// the PROXY protocol required does; anything else is closed unanswered.
async fn insisting_endpoint() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let expected = b"PROXY UNKNOWN\r\nping";
                let mut got = vec![0; expected.len()];
                if stream.read_exact(&mut got).await.is_ok() && got == expected {
                    let _ = stream.write_all(b"ok").await;
                }
            });
        }
    });
    addr
}

#[tokio::test]
async fn probes_of_a_service_that_sends_headers_begin_with_one_naming_no_client() {
    let endpoint = insisting_endpoint().await;
    let check = HealthCheck::Tcp(TcpCheck {
        send: Some(b"ping".to_vec()),
        expect: Some(b"ok".to_vec()),
    });
    let with_header = with_health(
        sending("pp-probed", endpoint, ProxyProtocolVersion::V1),
        check.clone(),
        Duration::from_millis(100),
    );
    let without = with_health(
        service("pp-unprobed", &[endpoint]),
        check,
        Duration::from_millis(100),
    );
    let vipd = Running::start(vec![with_header, without], false).await;
    vipd.ready().await;
    assert!(vipd.service("pp-probed").endpoints()[0].is_healthy());
    assert!(
        !vipd.service("pp-unprobed").endpoints()[0].is_healthy(),
        "the endpoint refuses probes without the header"
    );
}
