//! The udp probe: one datagram to the endpoint from a socket of its own, then replies are read
//! until one holds the expected bytes (any reply, without `expect`) or the timeout. An ICMP
//! port unreachable surfaces as `ECONNREFUSED` on the connected socket: a failure at once.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};

use tokio::net::UdpSocket;

use super::expect::{End, Matcher};
use super::{Deadline, ProbeError, ProbeTarget, local_header};
use crate::config::UdpCheck;
use crate::proxy_protocol::Transport;

/// Probes `target` as `check` says, all within `deadline`.
pub(super) async fn probe(
    check: &UdpCheck,
    target: ProbeTarget<'_>,
    deadline: Deadline,
) -> Result<(), ProbeError> {
    let (target, proxy_header) = (target.target, target.proxy_header);
    let local: SocketAddr = if target.is_ipv4() {
        (Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let socket = UdpSocket::bind(local).await.map_err(ProbeError::Connect)?;
    // Connected: only the endpoint's replies are read, and its ICMP errors reach this socket.
    socket.connect(target).await.map_err(ProbeError::Connect)?;
    // With the service's PROXY protocol, the header and the payload share the datagram.
    let datagram = match proxy_header {
        Some(version) => [
            local_header(version, Transport::Datagram),
            check.send.clone(),
        ]
        .concat(),
        None => check.send.clone(),
    };
    deadline
        .run(async { socket.send(&datagram).await.map_err(ProbeError::Send) })
        .await?;
    // One buffer per probe, not per datagram; a reply larger than it would not be a datagram.
    let mut buf = vec![0; UdpCheck::READ_LIMIT + 1];
    let mut received = 0;
    loop {
        let read = tokio::time::timeout_at(deadline.at, socket.recv(&mut buf)).await;
        let n = match read {
            Err(_elapsed) => {
                return Err(match &check.expect {
                    None => ProbeError::Timeout(deadline.timeout),
                    Some(expect) => Matcher::new(expect, UdpCheck::READ_LIMIT)
                        .unmet(End::TimedOut(deadline.timeout))
                        .into(),
                });
            }
            Ok(Err(source)) => return Err(ProbeError::Receive { received, source }),
            Ok(Ok(n)) => n,
        };
        received += n;
        let Some(expect) = &check.expect else {
            return Ok(());
        };
        // The expectation must hold within one reply: a datagram is one answer.
        let mut matcher = Matcher::new(expect, UdpCheck::READ_LIMIT);
        if let Some(Ok(())) = matcher.verdict(&buf[..n]) {
            return Ok(());
        }
        if received > UdpCheck::READ_LIMIT * 16 {
            // A peer flooding the probe with wrong answers does not get to keep it busy.
            return Err(matcher.unmet(End::Limit(n)).into());
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io;
    use std::time::Duration;

    use super::*;

    /// A UDP server on 127.0.0.1 that answers each datagram with `answer(datagram)` (none when
    /// it returns `None`).
    async fn server(answer: fn(&[u8]) -> Option<Vec<u8>>) -> SocketAddr {
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = socket.local_addr().unwrap();
        tokio::spawn(async move {
            let mut buf = vec![0; 65_536];
            while let Ok((n, from)) = socket.recv_from(&mut buf).await {
                if let Some(reply) = answer(&buf[..n]) {
                    let _ = socket.send_to(&reply, from).await;
                }
            }
        });
        addr
    }

    fn check(send: &str, expect: Option<&str>) -> UdpCheck {
        UdpCheck {
            send: send.as_bytes().to_vec(),
            expect: expect.map(|e| e.as_bytes().to_vec()),
        }
    }

    fn deadline(ms: u64) -> Deadline {
        Deadline::after(Duration::from_millis(ms))
    }

    #[tokio::test]
    async fn a_reply_holding_the_expectation_succeeds() {
        let addr = server(|d| Some([b"pong:".as_slice(), d].concat())).await;
        probe(
            &check("ping", Some("pong:ping")),
            ProbeTarget::endpoint("udp", addr),
            deadline(5_000),
        )
        .await
        .unwrap();
        // Without expect, any reply will do.
        probe(
            &check("x", None),
            ProbeTarget::endpoint("udp", addr),
            deadline(5_000),
        )
        .await
        .unwrap();
    }

    #[tokio::test]
    async fn a_wrong_reply_then_silence_fails_at_the_timeout_saying_so() {
        let addr = server(|_| Some(b"role:slave".to_vec())).await;
        let error = probe(
            &check("INFO", Some("role:master")),
            ProbeTarget::endpoint("udp", addr),
            deadline(200),
        )
        .await
        .unwrap_err();
        assert!(
            error
                .to_string()
                .contains("expected \"role:master\" not found"),
            "{error}"
        );
    }

    #[tokio::test]
    async fn no_reply_fails_at_the_timeout() {
        let addr = server(|_| None).await;
        let error = probe(
            &check("ping", None),
            ProbeTarget::endpoint("udp", addr),
            deadline(200),
        )
        .await
        .unwrap_err();
        assert!(matches!(error, ProbeError::Timeout(_)), "{error}");
    }

    #[tokio::test]
    async fn a_closed_port_fails_at_once_with_the_icmp_error() {
        let closed = {
            let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
            socket.local_addr().unwrap()
        };
        // Long timeout: only the ICMP port unreachable can end this probe quickly.
        let error = probe(
            &check("ping", None),
            ProbeTarget::endpoint("udp", closed),
            deadline(20_000),
        )
        .await
        .unwrap_err();
        match error {
            ProbeError::Receive { source, .. } => {
                assert_eq!(source.kind(), io::ErrorKind::ConnectionRefused)
            }
            other => panic!("{other}"),
        }
    }

    #[tokio::test]
    async fn binary_datagrams_and_large_replies_are_read_whole() {
        let addr = server(|d| {
            let mut reply = vec![0u8; 60_000];
            reply.extend_from_slice(d);
            Some(reply)
        })
        .await;
        let udp = UdpCheck {
            send: vec![0xde, 0xad, 0x00, 0xbe, 0xef],
            expect: Some(vec![0x00, 0xde, 0xad, 0x00, 0xbe, 0xef]),
        };
        probe(&udp, ProbeTarget::endpoint("udp", addr), deadline(5_000))
            .await
            .unwrap();
    }
}
