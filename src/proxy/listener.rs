//! Binding a service's listening sockets with the options a proxy needs, and the
//! `SO_REUSEPORT` group binding that TCP listeners and UDP sockets share.

use std::io;
use std::net::SocketAddr;

use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::TcpListener;

/// Pending-connection queue length; the kernel caps it at `net.core.somaxconn`.
pub(crate) const BACKLOG: i32 = 4096;

/// Binds a TCP listener on `addr` (port 0 = an ephemeral port).
///
/// `SO_REUSEADDR` lets a restarted vipd bind while old connections sit in TIME_WAIT; IPv6
/// listeners are v6-only so `[::]:p` and `0.0.0.0:p` can be separate services.
pub fn bind_tcp(addr: SocketAddr) -> io::Result<TcpListener> {
    TcpListener::from_std(bind_std(addr, false, false)?)
}

// The group rules are tested, for TCP and UDP alike, in `group.rs`.

/// Binds `count` listening sockets on `addr`, one per data-plane worker. With `freebind` the
/// address need not be on an interface yet (`IP_FREEBIND`): a managed VIP's listeners bind
/// whether or not the VIP was added first.
///
/// On Linux the sockets form a `SO_REUSEPORT` group (see [`bind_group`]): the kernel spreads
/// new connections over them, so each worker accepts on its own socket without waking the
/// others.
pub fn bind_tcp_group(
    addr: SocketAddr,
    freebind: bool,
    count: usize,
) -> io::Result<Vec<std::net::TcpListener>> {
    bind_group(
        addr,
        count,
        |addr, reuse_port| socket_for(addr, freebind, reuse_port),
        |socket| {
            socket.listen(BACKLOG)?;
            Ok(socket.into())
        },
    )
}

/// Binds a group of `count` sockets on `addr`: `socket(addr, reuse_port)` makes one bound
/// socket, `finish` turns it into a group member (e.g. listening).
///
/// On Linux the members share the address through `SO_REUSEPORT`. Since any process of the same
/// user could join such a group, the address is first claimed by a socket without
/// `SO_REUSEPORT`, bound and closed at once: an address another process holds fails here as it
/// would without the group. Elsewhere one socket is bound (`count` is ignored). Port 0 picks
/// one ephemeral port for the whole group.
pub(crate) fn bind_group<S>(
    addr: SocketAddr,
    count: usize,
    socket: impl Fn(SocketAddr, bool) -> io::Result<Socket>,
    finish: impl Fn(Socket) -> io::Result<S>,
) -> io::Result<Vec<S>> {
    if !cfg!(target_os = "linux") || count <= 1 {
        return Ok(vec![finish(socket(addr, false)?)?]);
    }
    if addr.port() != 0 {
        // Bound but not serving, then closed: only checks that nobody holds the address.
        drop(socket(addr, false)?);
    }
    let first = socket(addr, true)?;
    let bound = first
        .local_addr()?
        .as_socket()
        .expect("an IP socket has an IP address");
    let mut group = Vec::with_capacity(count);
    group.push(finish(first)?);
    for _ in 1..count {
        group.push(finish(socket(bound, true)?)?);
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

/// A non-blocking TCP socket bound to `addr`, not yet listening. `SO_REUSEADDR` lets a
/// restarted vipd bind while old connections sit in TIME_WAIT.
fn socket_for(addr: SocketAddr, freebind: bool, reuse_port: bool) -> io::Result<Socket> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    bind_service_socket(socket, addr, freebind, reuse_port)
}

/// Binds `socket` to `addr` with the options every service socket gets: `IP_FREEBIND` when
/// asked, `SO_REUSEPORT` for a group member, IPv6-only for IPv6 (so `[::]:p` and `0.0.0.0:p`
/// can be separate services), non-blocking.
pub(crate) fn bind_service_socket(
    socket: Socket,
    addr: SocketAddr,
    freebind: bool,
    reuse_port: bool,
) -> io::Result<Socket> {
    if freebind {
        if addr.is_ipv6() {
            socket.set_freebind_v6(true)?;
        } else {
            socket.set_freebind_v4(true)?;
        }
    }
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
