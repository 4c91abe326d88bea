//! Binding a service's listening sockets with the options a proxy needs.

use std::io;
use std::net::SocketAddr;

use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::TcpListener;

/// Pending-connection queue length; the kernel caps it at `net.core.somaxconn`.
const BACKLOG: i32 = 4096;

/// Binds a TCP listener on `addr` (port 0 = an ephemeral port).
///
/// `SO_REUSEADDR` lets a restarted vipd bind while old connections sit in TIME_WAIT; IPv6
/// listeners are v6-only so `[::]:p` and `0.0.0.0:p` can be separate services.
pub fn bind_tcp(addr: SocketAddr) -> io::Result<TcpListener> {
    TcpListener::from_std(bind_std(addr, false, false)?)
}

/// Binds `count` listening sockets on `addr`, one per data-plane worker. With `freebind` the
/// address need not be on an interface yet (`IP_FREEBIND`): a managed VIP's listeners bind
/// whether or not the VIP was added first.
///
/// On Linux the sockets form a `SO_REUSEPORT` group: the kernel spreads new connections over
/// them, so each worker accepts on its own socket without waking the others. Since any process
/// of the same user could join such a group, the address is first claimed by a socket without
/// `SO_REUSEPORT`: an address another process listens on fails here as it would without the
/// group. Elsewhere one socket is bound (`count` is ignored). Port 0 picks one ephemeral port
/// for the whole group.
pub fn bind_tcp_group(
    addr: SocketAddr,
    freebind: bool,
    count: usize,
) -> io::Result<Vec<std::net::TcpListener>> {
    if !cfg!(target_os = "linux") || count <= 1 {
        return Ok(vec![bind_std(addr, freebind, false)?]);
    }
    if addr.port() != 0 {
        // Bound but not listening, then closed: only checks that nobody holds the address.
        drop(socket_for(addr, freebind, false)?);
    }
    let first = bind_std(addr, freebind, true)?;
    let bound = first.local_addr()?;
    let mut group = Vec::with_capacity(count);
    group.push(first);
    for _ in 1..count {
        group.push(bind_std(bound, freebind, true)?);
    }
    Ok(group)
}

/// A non-blocking listening socket on `addr`.
fn bind_std(
    addr: SocketAddr,
    freebind: bool,
    reuse_port: bool,
) -> io::Result<std::net::TcpListener> {
    let socket = socket_for(addr, freebind, reuse_port)?;
    socket.listen(BACKLOG)?;
    Ok(socket.into())
}

/// A non-blocking TCP socket bound to `addr`, not yet listening.
fn socket_for(addr: SocketAddr, freebind: bool, reuse_port: bool) -> io::Result<Socket> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    if freebind {
        if addr.is_ipv6() {
            socket.set_freebind_v6(true)?;
        } else {
            socket.set_freebind_v4(true)?;
        }
    }
    socket.set_reuse_address(true)?;
    #[cfg(target_os = "linux")]
    if reuse_port {
        socket.set_reuse_port(true)?;
    }
    #[cfg(not(target_os = "linux"))]
    let _ = reuse_port;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    Ok(socket)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_group_shares_one_port_and_each_socket_accepts() {
        let group = bind_tcp_group("127.0.0.1:0".parse().unwrap(), false, 3).unwrap();
        let addrs: Vec<SocketAddr> = group.iter().map(|l| l.local_addr().unwrap()).collect();
        assert_eq!(group.len(), 3);
        assert!(addrs.iter().all(|a| *a == addrs[0]), "{addrs:?}");
        assert_ne!(addrs[0].port(), 0);
    }

    #[test]
    fn an_address_another_listener_holds_is_refused() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = taken.local_addr().unwrap();
        let error = bind_tcp_group(addr, false, 2).unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::AddrInUse);
    }

    #[test]
    fn a_second_group_on_the_same_address_is_refused() {
        let group = bind_tcp_group("127.0.0.1:0".parse().unwrap(), false, 2).unwrap();
        let addr = group[0].local_addr().unwrap();
        let error = bind_tcp_group(addr, false, 2).unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::AddrInUse);
    }
}
