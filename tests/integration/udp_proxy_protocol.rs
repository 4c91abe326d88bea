//! The PROXY protocol on UDP ports, end to end: every datagram vipd sends to an endpoint of a
//! `proxy_protocol = "v2"` service begins with a v2 DGRAM header (checked byte by byte against
//! hand-built ones), a port with `accept_proxy_protocol` strips the header each datagram brings
//! from a trusted load balancer (whose replies come back to it), refuses and counts the rest,
//! and udp health checks of a v2 service begin with a LOCAL header.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use tokio::net::UdpSocket;
use vipd::config::{Cidr, HealthCheck, ProxyProtocolVersion, Service, UdpCheck};

use crate::support::harness::with_health;
use crate::support::http::{get, sample};
use crate::support::udp::{UdpEcho, udp_service};
use crate::support::{Running, poll_until, within};

const V2_SIGNATURE: &[u8] = b"\r\n\r\n\0\r\nQUIT\n";

/// A v2 PROXY header for UDP over IPv4 from `source` to `destination`, built by hand.
fn header(source: SocketAddr, destination: SocketAddr) -> Vec<u8> {
    let (SocketAddr::V4(s), SocketAddr::V4(d)) = (source, destination) else {
        panic!("IPv4")
    };
    // Version 2, PROXY; AF_INET, DGRAM; 12 address bytes.
    let mut bytes = [V2_SIGNATURE, &[0x21, 0x12, 0x00, 0x0C]].concat();
    bytes.extend_from_slice(&s.ip().octets());
    bytes.extend_from_slice(&d.ip().octets());
    bytes.extend_from_slice(&s.port().to_be_bytes());
    bytes.extend_from_slice(&d.port().to_be_bytes());
    bytes
}

/// A v2 LOCAL header (AF_UNSPEC, no addresses).
fn local() -> Vec<u8> {
    [V2_SIGNATURE, &[0x20, 0x00, 0x00, 0x00]].concat()
}

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

async fn client_on(ip: [u8; 4]) -> UdpSocket {
    UdpSocket::bind(SocketAddr::new(IpAddr::V4(Ipv4Addr::from(ip)), 0))
        .await
        .unwrap()
}

/// Sends `datagram` to `to` and returns the one datagram that comes back, and from where.
async fn exchange(socket: &UdpSocket, to: SocketAddr, datagram: &[u8]) -> (Vec<u8>, SocketAddr) {
    socket.send_to(datagram, to).await.unwrap();
    let mut buf = vec![0u8; 65_536];
    let (n, from) = within("the echo", socket.recv_from(&mut buf))
        .await
        .unwrap();
    buf.truncate(n);
    (buf, from)
}

/// A UDP service over `endpoint` whose port takes headers from 127.0.0.1 only.
fn accepting(name: &str, endpoint: SocketAddr) -> Service {
    let mut svc = udp_service(name, &[endpoint]);
    svc.ports[0].accept_proxy_protocol = true;
    svc.proxy_protocol_trusted = vec![Cidr("127.0.0.1/32".parse().unwrap())];
    svc
}

#[tokio::test]
async fn every_datagram_to_the_endpoint_begins_with_a_v2_header_naming_its_client() {
    let echo = UdpEcho::start().await;
    let mut svc = udp_service("udp-pp-send", &[echo.addr]);
    svc.proxy_protocol = Some(ProxyProtocolVersion::V2);
    let vipd = Running::start(vec![svc], false).await;
    let vip = vipd.addr("udp-pp-send");
    let (first, second) = (
        client_on([127, 0, 0, 1]).await,
        client_on([127, 0, 0, 1]).await,
    );
    for round in 0..3 {
        for client in [&first, &second] {
            let me = client.local_addr().unwrap();
            let payload = format!("datagram {round} of {me}");
            let (echoed, from) = exchange(client, vip, payload.as_bytes()).await;
            assert_eq!(from, vip, "the reply comes from the VIP");
            // The endpoint saw the header, then the payload, in one datagram; its reply (the
            // same bytes) comes back as it was sent.
            let expected = [header(me, vip), payload.into_bytes()].concat();
            assert_eq!(echoed, expected, "round {round} of {me}");
        }
    }
    // Several datagrams of one flow in one go: each has its header (a train vipd makes of
    // them is cut at header + payload).
    for i in 0..8u8 {
        first.send_to(&[i; 100], vip).await.unwrap();
    }
    let me = first.local_addr().unwrap();
    let mut buf = vec![0u8; 2_048];
    for i in 0..8u8 {
        let (n, _) = within("an echo", first.recv_from(&mut buf)).await.unwrap();
        assert_eq!(&buf[..n], &[header(me, vip), vec![i; 100]].concat()[..]);
    }
    assert_eq!(vipd.service("udp-pp-send").udp_flows(), 2);
}

#[tokio::test]
async fn a_received_header_is_stripped_and_its_client_is_the_one_named_on() {
    let echo = UdpEcho::start().await;
    let plain = accepting("udp-pp-in", echo.addr);
    let mut relaying = accepting("udp-pp-relay", echo.addr);
    relaying.proxy_protocol = Some(ProxyProtocolVersion::V2);
    let vipd = Running::start(vec![plain, relaying], false).await;
    let (vip, relay) = (vipd.addr("udp-pp-in"), vipd.addr("udp-pp-relay"));
    let lb = client_on([127, 0, 0, 1]).await;
    let (client, asked) = (addr("192.0.2.1:5000"), addr("198.51.100.1:53"));

    // The endpoint gets the payload alone; its reply goes back to the load balancer.
    let (echoed, from) = exchange(
        &lb,
        vip,
        &[header(client, asked), b"hello".to_vec()].concat(),
    )
    .await;
    assert_eq!((echoed.as_slice(), from), (&b"hello"[..], vip));
    // LOCAL (the load balancer's own check): the peer is the client.
    let (echoed, _) = exchange(&lb, vip, &[local(), b"ping".to_vec()].concat()).await;
    assert_eq!(echoed, b"ping");

    // Sending on: vipd's header names the client and address from the received one...
    let (echoed, from) = exchange(
        &lb,
        relay,
        &[header(client, asked), b"hello".to_vec()].concat(),
    )
    .await;
    assert_eq!(from, relay);
    assert_eq!(echoed, [header(client, asked), b"hello".to_vec()].concat());
    // ...per datagram, for another client the same load balancer socket carries...
    let other = addr("192.0.2.2:6000");
    let (echoed, _) = exchange(
        &lb,
        relay,
        &[header(other, asked), b"again".to_vec()].concat(),
    )
    .await;
    assert_eq!(echoed, [header(other, asked), b"again".to_vec()].concat());
    // ...and the peer and the VIP under LOCAL.
    let me = lb.local_addr().unwrap();
    let (echoed, _) = exchange(&lb, relay, &[local(), b"ping".to_vec()].concat()).await;
    assert_eq!(echoed, [header(me, relay), b"ping".to_vec()].concat());
    // One load balancer socket, one flow.
    assert_eq!(vipd.service("udp-pp-relay").udp_flows(), 1);
}

#[tokio::test]
async fn datagrams_without_a_good_header_or_from_untrusted_peers_are_dropped_and_counted() {
    let echo = UdpEcho::start().await;
    let vipd = Running::start(vec![accepting("udp-pp-refuse", echo.addr)], true).await;
    let vip = vipd.addr("udp-pp-refuse");
    let good = [header(addr("192.0.2.1:5000"), vip), b"hello".to_vec()].concat();
    let lb = client_on([127, 0, 0, 1]).await;
    // No header at all.
    lb.send_to(b"hello", vip).await.unwrap();
    // A header cut short by the end of the datagram (8 of its 12 address bytes).
    lb.send_to(&good[..24], vip).await.unwrap();
    // A version the spec does not define.
    let mut future = good.clone();
    future[12] = 0x31;
    lb.send_to(&future, vip).await.unwrap();
    // The text header: TCP only.
    lb.send_to(b"PROXY TCP4 192.0.2.1 198.51.100.1 5000 53\r\nhello", vip)
        .await
        .unwrap();
    // A good header from outside proxy_protocol_trusted.
    let stranger = client_on([127, 0, 0, 2]).await;
    stranger.send_to(&good, vip).await.unwrap();

    let admin = vipd.admin.unwrap();
    for (reason, count) in [
        ("not_proxy_protocol", 1.0),
        ("malformed", 1.0),
        ("unsupported", 2.0),
        ("untrusted", 1.0),
    ] {
        let labels = [("service", "udp-pp-refuse"), ("reason", reason)];
        poll_until(&format!("{reason} to be counted"), || async {
            let page = get(admin, "/metrics").await.body;
            match sample(&page, "vipd_proxy_protocol_errors_total", &labels) {
                Some(n) if n == count => Ok(()),
                seen => Err(format!("{seen:?}")),
            }
        })
        .await;
    }
    // The port still serves a good datagram, the first to reach the endpoint: nothing came
    // back before its answer.
    let (echoed, _) = exchange(&lb, vip, &good).await;
    assert_eq!(echoed, b"hello");
    let page = get(admin, "/metrics").await.body;
    let endpoint = echo.addr.to_string();
    let labels = [
        ("service", "udp-pp-refuse"),
        ("endpoint", endpoint.as_str()),
        ("direction", "in"),
    ];
    assert_eq!(sample(&page, "vipd_datagrams_total", &labels), Some(1.0));
    let mut buf = [0u8; 64];
    let late = tokio::time::timeout(Duration::from_millis(100), stranger.recv_from(&mut buf)).await;
    assert!(late.is_err(), "the untrusted peer got an answer");
}

/// An endpoint that answers `ok` only to a datagram that is a LOCAL header and then `ping`.
async fn insisting_endpoint() -> SocketAddr {
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = socket.local_addr().unwrap();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 2_048];
        let expected = [local(), b"ping".to_vec()].concat();
        while let Ok((n, from)) = socket.recv_from(&mut buf).await {
            if buf[..n] == expected[..] {
                let _ = socket.send_to(b"ok", from).await;
            }
        }
    });
    addr
}

#[tokio::test]
async fn udp_probes_of_a_v2_service_begin_with_a_local_header() {
    let endpoint = insisting_endpoint().await;
    let check = HealthCheck::Udp(UdpCheck {
        send: b"ping".to_vec(),
        expect: Some(b"ok".to_vec()),
    });
    let mut sending = udp_service("udp-pp-probed", &[endpoint]);
    sending.proxy_protocol = Some(ProxyProtocolVersion::V2);
    let with_header = with_health(sending, check.clone(), Duration::from_millis(100));
    let without = with_health(
        udp_service("udp-pp-unprobed", &[endpoint]),
        check,
        Duration::from_millis(100),
    );
    let vipd = Running::start(vec![with_header, without], false).await;
    vipd.ready().await;
    assert!(vipd.service("udp-pp-probed").endpoints()[0].is_healthy());
    assert!(
        !vipd.service("udp-pp-unprobed").endpoints()[0].is_healthy(),
        "the endpoint ignores probes without the header"
    );
}
