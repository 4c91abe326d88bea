//! `tcp_keepalive`: read back from vipd's own two sockets of a connection. vipd runs in this
//! process, so its sockets are in this process's descriptor table; each is found by its
//! addresses in `/proc/net/tcp`, then by its inode among `/proc/self/fd`.

use std::collections::HashSet;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::fd::{BorrowedFd, RawFd};
use std::time::Duration;

use socket2::SockRef;
use tokio::net::TcpStream;
use vipd::config::TcpKeepalive;

use crate::support::backend::Behaviour;
use crate::support::harness::config;
use crate::support::{Backend, Running, echo_round_trip, service};

const KEEPALIVE: TcpKeepalive = TcpKeepalive {
    idle: Duration::from_secs(61),
    interval: Duration::from_secs(11),
    count: 7,
};

/// `IP:PORT` as `/proc/net/tcp` writes an IPv4 address: the address's bytes as one
/// native-endian hex word, then the port in hex.
fn parse_proc_addr(text: &str) -> Option<SocketAddr> {
    let (ip, port) = text.split_once(':')?;
    let ip = u32::from_str_radix(ip, 16).ok()?;
    let port = u16::from_str_radix(port, 16).ok()?;
    Some(SocketAddr::V4(SocketAddrV4::new(
        Ipv4Addr::from(ip.to_ne_bytes()),
        port,
    )))
}

/// Inodes of the open IPv4 TCP sockets whose peer is `peer` and, if given, whose local address
/// is `local`.
fn sockets_to(peer: SocketAddr, local: Option<SocketAddr>) -> HashSet<u64> {
    let table = std::fs::read_to_string("/proc/self/net/tcp").expect("/proc/self/net/tcp");
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (l, p) = (parse_proc_addr(fields[1])?, parse_proc_addr(fields[2])?);
            let inode: u64 = fields[9].parse().ok()?;
            // Inode 0: a connection in TIME_WAIT, no socket any more.
            (p == peer && local.is_none_or(|local| local == l) && inode != 0).then_some(inode)
        })
        .collect()
}

/// The descriptor of this process that is the socket with `inode`.
fn fd_of(inode: u64) -> RawFd {
    let link = format!("socket:[{inode}]");
    std::fs::read_dir("/proc/self/fd")
        .expect("/proc/self/fd")
        .filter_map(Result::ok)
        .find(|entry| std::fs::read_link(entry.path()).is_ok_and(|l| l.as_os_str() == &*link))
        .and_then(|entry| entry.file_name().to_str()?.parse().ok())
        .unwrap_or_else(|| panic!("no descriptor of this process is {link}"))
}

/// The keepalive of the socket with `inode` (in this process): `None` when it is off.
fn keepalive_of(inode: u64) -> Option<TcpKeepalive> {
    let fd = fd_of(inode);
    // SAFETY: `fd` is one of vipd's two sockets of a connection that the calling test holds
    // open at both ends (its client stream and an echo backend), so vipd keeps it open, under
    // this number, while it is borrowed here.
    #[allow(unsafe_code)]
    let fd = unsafe { BorrowedFd::borrow_raw(fd) };
    let socket = SockRef::from(&fd);
    socket
        .keepalive()
        .expect("SO_KEEPALIVE")
        .then(|| TcpKeepalive {
            idle: socket.tcp_keepalive_time().expect("TCP_KEEPIDLE"),
            interval: socket.tcp_keepalive_interval().expect("TCP_KEEPINTVL"),
            count: socket.tcp_keepalive_retries().expect("TCP_KEEPCNT"),
        })
}

/// One connection through vipd's `vip` to the echo `backend`, open end to end, and the inodes
/// of vipd's client-side and endpoint-side sockets of it.
struct Connection {
    /// Holds the connection open.
    _stream: TcpStream,
    client_side: u64,
    endpoint_side: u64,
}

impl Connection {
    async fn open(vip: SocketAddr, backend: &Backend) -> Connection {
        let before = sockets_to(backend.addr, None);
        let mut stream = TcpStream::connect(vip).await.expect("connect through vipd");
        // Echoed: vipd's connect to the endpoint is done.
        echo_round_trip(&mut stream, b"keepalive?").await;
        let client_side = sockets_to(stream.local_addr().unwrap(), Some(vip));
        let endpoint_side: Vec<u64> = sockets_to(backend.addr, None)
            .difference(&before)
            .copied()
            .collect();
        assert_eq!(client_side.len(), 1, "vipd's sockets to {stream:?}");
        assert_eq!(
            endpoint_side.len(),
            1,
            "vipd's new sockets to {}",
            backend.addr
        );
        Connection {
            client_side: client_side.into_iter().next().unwrap(),
            endpoint_side: endpoint_side[0],
            _stream: stream,
        }
    }

    /// The keepalive of the two sockets, client side first.
    fn keepalive(&self) -> [Option<TcpKeepalive>; 2] {
        [
            keepalive_of(self.client_side),
            keepalive_of(self.endpoint_side),
        ]
    }
}

#[tokio::test]
async fn keepalive_is_set_on_both_sockets_of_a_connection() {
    let backend = Backend::start("echo", Behaviour::Echo).await;
    let mut on = service("keepalive-on", &[backend.addr]);
    on.connection.tcp_keepalive = Some(KEEPALIVE);
    let vipd = Running::start(vec![on], false).await;
    let connection = Connection::open(vipd.addr("keepalive-on"), &backend).await;
    assert_eq!(connection.keepalive(), [Some(KEEPALIVE); 2]);
}

#[tokio::test]
async fn keepalive_is_off_without_the_key() {
    let backend = Backend::start("echo", Behaviour::Echo).await;
    let vipd = Running::start(vec![service("keepalive-off", &[backend.addr])], false).await;
    let connection = Connection::open(vipd.addr("keepalive-off"), &backend).await;
    assert_eq!(connection.keepalive(), [None; 2]);
}

#[tokio::test]
async fn reload_changes_keepalive_of_new_connections_only() {
    let backend = Backend::start("echo", Behaviour::Echo).await;
    let before = config(vec![service("keepalive-reload", &[backend.addr])], false);
    let vipd = Running::start_config(before.clone()).await;
    let vip = vipd.addr("keepalive-reload");
    let old = Connection::open(vip, &backend).await;
    assert_eq!(old.keepalive(), [None; 2]);

    let mut with_keepalive = before.clone();
    with_keepalive.services[0].connection.tcp_keepalive = Some(KEEPALIVE);
    vipd.state
        .apply(with_keepalive)
        .await
        .expect("reload applies");
    assert_eq!(vipd.addr("keepalive-reload"), vip, "the listener is kept");
    let new = Connection::open(vip, &backend).await;
    assert_eq!(new.keepalive(), [Some(KEEPALIVE); 2]);
    assert_eq!(old.keepalive(), [None; 2], "established before the reload");

    // And off again.
    vipd.state.apply(before).await.expect("reload applies");
    let newer = Connection::open(vip, &backend).await;
    assert_eq!(newer.keepalive(), [None; 2]);
    assert_eq!(new.keepalive(), [Some(KEEPALIVE); 2]);
    assert_eq!(old.keepalive(), [None; 2]);
}
