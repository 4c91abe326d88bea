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
    bind_tcp_with(addr, false)
}

/// Like [`bind_tcp`], but with `freebind` the address need not be on an interface yet
/// (`IP_FREEBIND`): a managed VIP's listener binds whether or not the VIP was added first.
pub fn bind_tcp_with(addr: SocketAddr, freebind: bool) -> io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    if freebind {
        if addr.is_ipv6() {
            socket.set_freebind_v6(true)?;
        } else {
            socket.set_freebind_v4(true)?;
        }
    }
    socket.set_reuse_address(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    TcpListener::from_std(socket.into())
}
