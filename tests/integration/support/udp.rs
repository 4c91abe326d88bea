//! UDP endpoints and clients: small authoritative DNS servers (the hickory-server of
//! `dns_server`) that answer with their own name in a TXT record, an echo server, and a DNS
//! client over a plain UDP socket that tells which endpoint answered and from where.

use std::net::SocketAddr;
use std::time::Duration;

use hickory_proto::op::{Message, Query};
use hickory_proto::rr::{Name, RData, RecordType};
use tokio::net::UdpSocket;
use tokio::task::JoinHandle;
use vipd::config::{HealthCheck, Protocol, Service};

use super::dns_server::TestDns;
use super::{harness, within};

/// The name every client asks for.
pub const QUESTION: &str = "who.test.";

/// A UDP service called `name` on 127.0.0.1:0 over `endpoints`, with no active checks.
pub fn udp_service(name: &str, endpoints: &[SocketAddr]) -> Service {
    let mut service = harness::service(name, endpoints);
    service.ports[0].protocol = Protocol::Udp;
    service.health.check = HealthCheck::None;
    service
}

/// An authoritative DNS server (UDP and TCP on one port) answering `who.test. TXT` with its
/// own name.
pub struct NamedDns {
    /// Where it listens (UDP and TCP).
    pub addr: SocketAddr,
    /// Its name, as it answers it.
    pub name: String,
    server: TestDns,
}

impl NamedDns {
    /// Starts a server on 127.0.0.1.
    pub async fn start(name: &str) -> NamedDns {
        let server = TestDns::start().await;
        server.set_txt(QUESTION, 0, name);
        NamedDns {
            addr: server.addr(),
            name: name.to_owned(),
            server,
        }
    }

    /// Stops the server and waits until its sockets are closed: datagrams to it are refused
    /// from then on (ICMP port unreachable).
    pub async fn stop(self) {
        within("dns server to stop", self.server.stop()).await;
    }
}

/// Echoes every datagram back to its sender.
pub struct UdpEcho {
    /// Where it listens.
    pub addr: SocketAddr,
    task: JoinHandle<()>,
}

impl UdpEcho {
    /// Starts an echo server on 127.0.0.1:0.
    pub async fn start() -> UdpEcho {
        let socket = UdpSocket::bind("127.0.0.1:0").await.expect("bind echo");
        let addr = socket.local_addr().expect("echo address");
        let task = tokio::spawn(async move {
            let mut buf = vec![0u8; 65_536];
            while let Ok((n, from)) = socket.recv_from(&mut buf).await {
                let _ = socket.send_to(&buf[..n], from).await;
            }
        });
        UdpEcho { addr, task }
    }
}

impl Drop for UdpEcho {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A DNS client on its own UDP socket (one client address: one flow).
pub struct Client {
    socket: UdpSocket,
    next_id: u16,
}

/// A DNS answer as the client got it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// The TXT text: the name of the endpoint that answered.
    pub name: String,
    /// Where the datagram came from.
    pub from: SocketAddr,
}

impl Client {
    /// A client on 127.0.0.1:0.
    pub async fn new() -> Client {
        Client {
            socket: UdpSocket::bind("127.0.0.1:0").await.expect("bind client"),
            next_id: 1,
        }
    }

    /// Sends a TXT query to `to` and returns its id.
    pub async fn send_query(&mut self, to: SocketAddr) -> u16 {
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1);
        let mut query = Message::query();
        query.metadata.id = id;
        query.add_query(Query::query(
            Name::from_ascii(QUESTION).unwrap(),
            RecordType::TXT,
        ));
        self.socket
            .send_to(&query.to_vec().unwrap(), to)
            .await
            .expect("send query");
        id
    }

    /// Receives the answer to query `id` (skipping answers to earlier queries).
    pub async fn answer(&mut self, id: u16) -> Answer {
        let mut buf = vec![0u8; 65_536];
        loop {
            let (n, from) = self.socket.recv_from(&mut buf).await.expect("receive");
            let message = Message::from_vec(&buf[..n]).expect("a DNS message");
            if message.metadata.id != id {
                continue;
            }
            let name = message
                .answers
                .iter()
                .find_map(|r| match &r.data {
                    RData::TXT(txt) => Some(String::from_utf8_lossy(&txt.txt_data[0]).into_owned()),
                    _ => None,
                })
                .expect("a TXT answer");
            return Answer { name, from };
        }
    }

    /// Asks `to` once and waits for the answer (a failure guard only: the answer must come).
    pub async fn ask(&mut self, to: SocketAddr) -> Answer {
        let id = self.send_query(to).await;
        within("a DNS answer", self.answer(id)).await
    }

    /// Asks `to` until answered, sending the query again after `retry` without an answer, as
    /// a stub resolver does; returns the answer and how many queries were sent.
    pub async fn ask_until_answered(&mut self, to: SocketAddr, retry: Duration) -> (Answer, u32) {
        within("a DNS answer after retries", async {
            let mut sent = 0;
            loop {
                let id = self.send_query(to).await;
                sent += 1;
                if let Ok(answer) = tokio::time::timeout(retry, self.answer(id)).await {
                    return (answer, sent);
                }
            }
        })
        .await
    }

    /// Whether a datagram has arrived, without waiting for one (asking the kernel: tokio's
    /// `try_recv` would trust its own readiness cache).
    pub fn has_pending(&self) -> bool {
        let mut buf = [std::mem::MaybeUninit::<u8>::uninit(); 1];
        !matches!(
            socket2::SockRef::from(&self.socket).peek_from(&mut buf),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock
        )
    }
}
