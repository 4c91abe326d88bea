//! The sockets of one service address: a TCP listener group or a UDP socket group, one socket
//! per data-plane worker, bound together (so a reload can bind everything before it changes
//! anything) and then each handed to its own worker's event loop.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::workers::Workers;
use super::{listener, udp};
use crate::config::Protocol;
use crate::config::diff::Listen;
use crate::service::ServiceState;

/// Bound sockets of one service address, not yet served. Kept as std sockets until then: each
/// is registered with the runtime of the worker that serves it.
#[derive(Debug)]
pub enum SocketGroup {
    /// Listening TCP sockets.
    Tcp(Vec<std::net::TcpListener>),
    /// UDP sockets.
    Udp(Vec<std::net::UdpSocket>),
}

impl SocketGroup {
    /// Binds `count` sockets on `listen` (see [`listener::bind_tcp_group`] and
    /// [`udp::bind_udp_group`]).
    pub fn bind(listen: Listen, freebind: bool, count: usize) -> io::Result<SocketGroup> {
        Ok(match listen.protocol {
            Protocol::Tcp => {
                SocketGroup::Tcp(listener::bind_tcp_group(listen.addr, freebind, count)?)
            }
            Protocol::Udp => SocketGroup::Udp(udp::bind_udp_group(listen.addr, freebind, count)?),
        })
    }

    /// The address the group is bound to (all its sockets share it).
    pub fn local_addr(&self) -> SocketAddr {
        match self {
            SocketGroup::Tcp(group) => group[0].local_addr(),
            SocketGroup::Udp(group) => group[0].local_addr(),
        }
        .expect("a bound socket has a local address")
    }

    /// Sockets in the group.
    pub fn len(&self) -> usize {
        match self {
            SocketGroup::Tcp(group) => group.len(),
            SocketGroup::Udp(group) => group.len(),
        }
    }

    /// Whether the group has no socket (never, once bound).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Serves socket `i` on worker `i` for service port `port` until `stop`: TCP listeners
    /// (whose connections hold a token of `connections` while they last) or UDP ports. Each
    /// returned task, tracked by `loops`, ends once its socket is closed.
    pub fn serve(
        self,
        service: &Arc<ServiceState>,
        port: u16,
        stop: &CancellationToken,
        workers: &Workers,
        loops: &TaskTracker,
        connections: &TaskTracker,
    ) -> Vec<JoinHandle<()>> {
        match self {
            SocketGroup::Tcp(group) => group
                .into_iter()
                .enumerate()
                .map(|(index, socket)| {
                    let served = workers.serve_tcp(
                        index,
                        socket,
                        Arc::clone(service),
                        port,
                        stop,
                        connections,
                    );
                    tokio::spawn(loops.track_future(served))
                })
                .collect(),
            SocketGroup::Udp(group) => group
                .into_iter()
                .enumerate()
                .map(|(index, socket)| {
                    let served = workers.serve_udp(index, socket, Arc::clone(service), port, stop);
                    tokio::spawn(loops.track_future(served))
                })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listen(protocol: Protocol, addr: SocketAddr) -> Listen {
        Listen { protocol, addr }
    }

    #[test]
    fn a_group_shares_one_port() {
        for protocol in [Protocol::Tcp, Protocol::Udp] {
            let any = listen(protocol, "127.0.0.1:0".parse().unwrap());
            let group = SocketGroup::bind(any, false, 3).unwrap();
            assert_eq!(group.len(), 3, "{protocol:?}");
            assert_ne!(group.local_addr().port(), 0);
            let addrs: Vec<SocketAddr> = match &group {
                SocketGroup::Tcp(g) => g.iter().map(|s| s.local_addr().unwrap()).collect(),
                SocketGroup::Udp(g) => g.iter().map(|s| s.local_addr().unwrap()).collect(),
            };
            assert!(
                addrs.iter().all(|a| *a == addrs[0]),
                "{protocol:?}: {addrs:?}"
            );
        }
    }

    #[test]
    fn an_address_another_socket_holds_is_refused() {
        // A plain socket of each protocol: for UDP without SO_REUSEADDR, so sharing would need
        // the group to set it, which it must not.
        let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let held = [
            listen(Protocol::Tcp, tcp.local_addr().unwrap()),
            listen(Protocol::Udp, udp.local_addr().unwrap()),
        ];
        for taken in held {
            for count in [1, 2] {
                let error = SocketGroup::bind(taken, false, count).unwrap_err();
                assert_eq!(error.kind(), io::ErrorKind::AddrInUse, "{taken} × {count}");
            }
        }
    }

    #[test]
    fn a_second_group_on_the_same_address_is_refused() {
        for protocol in [Protocol::Tcp, Protocol::Udp] {
            let any = listen(protocol, "127.0.0.1:0".parse().unwrap());
            let group = SocketGroup::bind(any, false, 2).unwrap();
            let taken = listen(protocol, group.local_addr());
            let error = SocketGroup::bind(taken, false, 2).unwrap_err();
            assert_eq!(error.kind(), io::ErrorKind::AddrInUse, "{protocol:?}");
        }
    }
}
