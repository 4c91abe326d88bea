//! The DNS server answering for services: `<service>.<zone>` A/AAAA → the VIP,
//! `_<port name>._<protocol>.<service>.<zone>` SRV → the port (the Kubernetes convention), and
//! `<replica>.<service>.<zone>` A/AAAA → a named endpoint's address while it is in rotation
//! (a StatefulSet's stable network identity).
//!
//! - [`records`]: what is published, and the live replica view.
//! - `answer`: the authoritative answer to one query.
//!
//! hickory-server does the wire work (UDP and TCP framing, FORMERR for undecodable messages,
//! truncation with TC over UDP); [`Handler`] decides the answers. The records are read through a
//! `watch` channel so a reload only sends a new [`ServiceRecords`]; the next query sees it.
//! Names outside the zone are relayed verbatim to the `forward` upstreams, or REFUSED.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hickory_proto::op::{Edns, Message, MessageType, Metadata, OpCode, ResponseCode};
use hickory_proto::rr::Name;
use hickory_server::Server;
use hickory_server::net::runtime::Time;
use hickory_server::net::xfer::Protocol as Transport;
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponseBuilder;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::config;
use crate::proxy::listener;

mod answer;
pub mod records;

pub use records::{PortRecord, Replicas, ServiceEntry, ServiceRecord, ServiceRecords};

/// A TCP client that sends nothing for this long is disconnected.
const TCP_IDLE_TIMEOUT: Duration = Duration::from_secs(10);
/// Per-connection buffer of queued TCP responses.
const TCP_RESPONSE_BUFFER: usize = 32;
/// Deadline of one query to one upstream.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(2);
/// Largest UDP payload vipd offers to EDNS clients (the DNS flag day 2020 value, which avoids
/// IP fragmentation on common paths).
const MAX_UDP_PAYLOAD: u16 = 1232;
/// Binding UDP and TCP on one ephemeral port can race with other programs; tries before giving up.
const BIND_ATTEMPTS: usize = 16;

/// Why the DNS server could not start.
#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    /// A socket could not be bound.
    #[error("dns: cannot listen on {addr} ({transport}): {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// `udp` or `tcp`.
        transport: &'static str,
        /// The OS error.
        source: io::Error,
    },
    /// The zone from the config is not a DNS name (validation prevents this).
    #[error("dns: zone \"{0}\" is not a DNS name")]
    Zone(String),
}

/// Binds UDP and TCP on the same address. With port 0 both get the same ephemeral port: UDP
/// picks it, TCP follows (retrying with a new port if TCP's is taken).
pub async fn bind(addr: SocketAddr) -> Result<(UdpSocket, TcpListener), DnsError> {
    let attempts = if addr.port() == 0 { BIND_ATTEMPTS } else { 1 };
    let mut last = None;
    for _ in 0..attempts {
        let udp = UdpSocket::bind(addr)
            .await
            .map_err(|source| DnsError::Bind {
                addr,
                transport: "udp",
                source,
            })?;
        let udp_addr = udp.local_addr().map_err(|source| DnsError::Bind {
            addr,
            transport: "udp",
            source,
        })?;
        match listener::bind_tcp(udp_addr) {
            Ok(tcp) => return Ok((udp, tcp)),
            Err(source) => last = Some((udp_addr, source)),
        }
    }
    let (addr, source) = last.expect("at least one attempt");
    Err(DnsError::Bind {
        addr,
        transport: "tcp",
        source,
    })
}

/// Serves DNS on `udp` and `tcp` until `shutdown` is cancelled, answering from the latest value
/// of `records`.
pub async fn serve(
    udp: UdpSocket,
    tcp: TcpListener,
    settings: config::DnsServer,
    records: watch::Receiver<Arc<ServiceRecords>>,
    shutdown: CancellationToken,
) -> Result<(), DnsError> {
    let handler = Handler::new(settings, records)?;
    let mut server = Server::new(handler);
    server.register_socket(udp);
    server.register_listener(tcp, TCP_IDLE_TIMEOUT, TCP_RESPONSE_BUFFER);
    shutdown.cancelled().await;
    if let Err(error) = server.shutdown_gracefully().await {
        tracing::warn!(%error, "dns: server stopped with an error");
    }
    Ok(())
}

/// Decides the answer to each query.
struct Handler {
    zone: Name,
    /// The zone's labels, lowercase, for suffix matching.
    zone_labels: Vec<Vec<u8>>,
    ttl: u32,
    forward: Vec<SocketAddr>,
    records: watch::Receiver<Arc<ServiceRecords>>,
}

impl Handler {
    fn new(
        settings: config::DnsServer,
        records: watch::Receiver<Arc<ServiceRecords>>,
    ) -> Result<Handler, DnsError> {
        let zone = Name::from_ascii(format!("{}.", settings.zone))
            .map_err(|_| DnsError::Zone(settings.zone.clone()))?
            .to_lowercase();
        let zone_labels = zone.iter().map(<[u8]>::to_vec).collect();
        Ok(Handler {
            zone,
            zone_labels,
            ttl: u32::try_from(settings.ttl.as_secs()).unwrap_or(u32::MAX),
            forward: settings.forward,
            records,
        })
    }

    /// The labels of `name` in front of the zone, or `None` if `name` is outside it.
    fn in_zone(&self, name: &Name) -> Option<Vec<Vec<u8>>> {
        let labels: Vec<Vec<u8>> = name.iter().map(|l| l.to_ascii_lowercase()).collect();
        let front = labels.len().checked_sub(self.zone_labels.len())?;
        (labels[front..] == self.zone_labels[..]).then(|| labels[..front].to_vec())
    }

    /// Sends `request` to the upstreams in turn over the transport it came in on; the first
    /// reply wins.
    async fn forward(&self, request: &Request) -> Option<Message> {
        for upstream in &self.forward {
            let reply = tokio::time::timeout(FORWARD_TIMEOUT, async {
                match request.protocol() {
                    Transport::Udp => forward_udp(*upstream, request.as_slice()).await,
                    _ => forward_tcp(*upstream, request.as_slice()).await,
                }
            })
            .await;
            let error = match reply {
                Ok(Ok(bytes)) => match Message::from_vec(&bytes) {
                    Ok(message) if message.metadata.id == request.metadata.id => {
                        return Some(message);
                    }
                    Ok(_) => "reply has another id".to_owned(),
                    Err(e) => format!("undecodable reply: {e}"),
                },
                Ok(Err(e)) => e.to_string(),
                Err(_) => format!("no reply within {FORWARD_TIMEOUT:?}"),
            };
            tracing::debug!(%upstream, %error, "dns: upstream failed");
        }
        None
    }
}

async fn forward_udp(upstream: SocketAddr, query: &[u8]) -> io::Result<Vec<u8>> {
    let local: SocketAddr = if upstream.is_ipv4() {
        (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let socket = UdpSocket::bind(local).await?;
    // Connected, so the kernel drops datagrams from anyone but the upstream.
    socket.connect(upstream).await?;
    socket.send(query).await?;
    let mut buf = vec![0; usize::from(u16::MAX)];
    let len = socket.recv(&mut buf).await?;
    buf.truncate(len);
    Ok(buf)
}

async fn forward_tcp(upstream: SocketAddr, query: &[u8]) -> io::Result<Vec<u8>> {
    let mut stream = TcpStream::connect(upstream).await?;
    let len = u16::try_from(query.len()).map_err(|_| io::Error::other("query too long"))?;
    let mut framed = Vec::with_capacity(query.len() + 2);
    framed.extend_from_slice(&len.to_be_bytes());
    framed.extend_from_slice(query);
    stream.write_all(&framed).await?;
    let len = stream.read_u16().await?;
    let mut buf = vec![0; usize::from(len)];
    stream.read_exact(&mut buf).await?;
    Ok(buf)
}

/// The `rcode` label of [`crate::metrics::DNS_QUERIES_TOTAL`].
fn rcode_label(rcode: ResponseCode) -> &'static str {
    match rcode {
        ResponseCode::NoError => "NOERROR",
        ResponseCode::FormErr => "FORMERR",
        ResponseCode::ServFail => "SERVFAIL",
        ResponseCode::NXDomain => "NXDOMAIN",
        ResponseCode::NotImp => "NOTIMP",
        ResponseCode::Refused => "REFUSED",
        _ => "OTHER",
    }
}

#[async_trait::async_trait]
impl RequestHandler for Handler {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        mut response_handle: R,
    ) -> ResponseInfo {
        // An EDNS query gets an EDNS answer, which lets a UDP answer grow past 512 bytes.
        let response_edns = request.edns.as_ref().map(|req| {
            let mut edns = Edns::new();
            edns.set_max_payload(req.max_payload().clamp(512, MAX_UDP_PAYLOAD));
            edns.set_version(0);
            edns
        });
        let builder = MessageResponseBuilder::new(&request.queries, response_edns.as_ref());
        let mut metadata = Metadata::response_from_request(&request.metadata);
        metadata.message_type = MessageType::Response;
        metadata.recursion_available = !self.forward.is_empty();

        let query = match request.queries.queries() {
            [query] if request.metadata.op_code == OpCode::Query => Some(query),
            [_] => {
                metadata.response_code = ResponseCode::NotImp;
                None
            }
            // Zero or several questions: RFC 9619 allows exactly one.
            _ => {
                metadata.response_code = ResponseCode::FormErr;
                None
            }
        };
        let records = Arc::clone(&self.records.borrow());
        let name = query.map(|q| Name::from(q.name()));
        let result = match (query, name.as_ref().map(|n| self.in_zone(n))) {
            (Some(query), Some(Some(front))) => {
                let answer = self.answer(query, &front, &records);
                metadata.authoritative = true;
                metadata.response_code = answer.rcode;
                let response = builder.build(
                    metadata,
                    &answer.answers,
                    &answer.authorities,
                    None,
                    &answer.additionals,
                );
                response_handle.send_response(response).await
            }
            (Some(_), Some(None)) if !self.forward.is_empty() => {
                match self.forward(request).await {
                    Some(reply) => {
                        let mut upstream = reply.metadata;
                        upstream.id = request.metadata.id;
                        let response = builder.build(
                            upstream,
                            &reply.answers,
                            &reply.authorities,
                            None,
                            &reply.additionals,
                        );
                        response_handle.send_response(response).await
                    }
                    None => {
                        metadata.response_code = ResponseCode::ServFail;
                        response_handle
                            .send_response(builder.build_no_records(metadata))
                            .await
                    }
                }
            }
            (Some(_), _) => {
                metadata.response_code = ResponseCode::Refused;
                response_handle
                    .send_response(builder.build_no_records(metadata))
                    .await
            }
            (None, _) => {
                response_handle
                    .send_response(builder.build_no_records(metadata))
                    .await
            }
        };
        let info = match result {
            Ok(info) => info,
            Err(error) => {
                tracing::debug!(%error, src = %request.src(), "dns: cannot send response");
                let mut failed = Metadata::response_from_request(&request.metadata);
                failed.response_code = ResponseCode::ServFail;
                ResponseInfo::from(hickory_proto::op::Header {
                    metadata: failed,
                    counts: Default::default(),
                })
            }
        };
        ::metrics::counter!(crate::metrics::DNS_QUERIES_TOTAL, "rcode" => rcode_label(info.response_code))
            .increment(1);
        info
    }
}
