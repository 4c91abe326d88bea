//! UDP sockets: the group a service port binds (one socket per data-plane worker), and the
//! connected upstream socket of one flow.

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};

use socket2::{Domain, Protocol, Socket, Type};

use crate::proxy::listener;

/// Receive buffer size of the socket a service port binds: room for a burst of full-size
/// datagrams while the worker is busy elsewhere (the kernel caps it at `net.core.rmem_max`).
const LISTEN_RCVBUF: usize = 4 << 20;

/// Binds `count` UDP sockets on `addr`, one per data-plane worker. With `freebind` the address
/// need not be on an interface yet (`IP_FREEBIND`), as for TCP listeners.
///
/// On Linux the sockets form a `SO_REUSEPORT` group (see [`listener::bind_group`]): the kernel
/// hashes each client address to one socket, so all datagrams of a client reach the same worker
/// and its flow table. No `SO_REUSEADDR`: for UDP it would let two sockets share the address
/// outright.
pub fn bind_udp_group(
    addr: SocketAddr,
    freebind: bool,
    count: usize,
) -> io::Result<Vec<std::net::UdpSocket>> {
    listener::bind_group(
        addr,
        count,
        |addr, reuse_port| {
            let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
            // A smaller buffer only costs drops under bursts; not worth failing the bind over.
            let _ = socket.set_recv_buffer_size(LISTEN_RCVBUF);
            listener::bind_service_socket(socket, addr, freebind, reuse_port)
        },
        |socket| Ok(socket.into()),
    )
}

/// A non-blocking UDP socket on an ephemeral port, connected to `endpoint`: the endpoint's
/// replies are the only datagrams it receives, and an ICMP port unreachable for it comes back
/// as `ECONNREFUSED` on its next send or receive.
pub fn upstream(endpoint: SocketAddr) -> io::Result<std::net::UdpSocket> {
    let local = if endpoint.is_ipv4() {
        SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0))
    } else {
        SocketAddr::from((Ipv6Addr::UNSPECIFIED, 0))
    };
    let socket = std::net::UdpSocket::bind(local)?;
    socket.connect(endpoint)?;
    socket.set_nonblocking(true)?;
    Ok(socket)
}

#[cfg(test)]
mod tests {
    use super::*;

    // The group rules shared with TCP listeners are tested for both in `group.rs`.
    #[test]
    fn a_tcp_listener_on_the_same_address_does_not_collide() {
        let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let group = bind_udp_group(tcp.local_addr().unwrap(), false, 2).unwrap();
        assert_eq!(group[0].local_addr().unwrap(), tcp.local_addr().unwrap());
    }

    #[test]
    fn ipv6_sockets_are_v6_only() {
        let v6 = bind_udp_group("[::]:0".parse().unwrap(), false, 2).unwrap();
        let port = v6[0].local_addr().unwrap().port();
        // The IPv4 side of the same port is free.
        let v4 = bind_udp_group(SocketAddr::from((Ipv4Addr::LOCALHOST, port)), false, 2);
        assert!(v4.is_ok(), "{v4:?}");
    }

    #[test]
    fn an_upstream_socket_hears_only_its_endpoint() {
        let endpoint = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let stranger = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let upstream = upstream(endpoint.local_addr().unwrap()).unwrap();
        upstream.send(b"ping").unwrap();
        let mut buf = [0u8; 16];
        let (n, from) = endpoint.recv_from(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"ping");
        stranger.send_to(b"noise", from).unwrap();
        endpoint.send_to(b"pong", from).unwrap();
        // Blocking for the test's sake: the connected socket drops the stranger's datagram.
        upstream.set_nonblocking(false).unwrap();
        let n = upstream.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"pong");
    }
}
