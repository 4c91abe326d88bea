//! The DNS server answering for services: `<service>.<zone>` A/AAAA → the VIP, and
//! `_<port name>._<protocol>.<service>.<zone>` SRV → the port (the Kubernetes convention).
//!
//! hickory-server does the wire work (UDP and TCP framing, FORMERR for undecodable messages,
//! truncation with TC over UDP); [`Handler`] decides the answers. The records are read through a
//! `watch` channel so a reload only sends a new [`ServiceRecords`]; the next query sees it.
//! Names outside the zone are relayed verbatim to the `forward` upstreams, or REFUSED.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use hickory_proto::op::{Edns, LowerQuery, Message, MessageType, Metadata, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, SOA, SRV};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use hickory_server::Server;
use hickory_server::net::runtime::Time;
use hickory_server::net::xfer::Protocol as Transport;
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponseBuilder;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::config::{self, Config, Protocol};
use crate::proxy::listener;

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

/// One port of a service, as DNS publishes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortRecord {
    /// The port's name; only named ports get SRV records.
    pub name: Option<String>,
    /// Transport protocol.
    pub protocol: Protocol,
    /// The port clients connect to at the VIP.
    pub port: u16,
}

/// What DNS publishes about one service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceRecord {
    /// The service's VIP.
    pub vip: IpAddr,
    /// Its ports.
    pub ports: Vec<PortRecord>,
}

/// Every service DNS answers for, by lowercase name. Immutable once built: a change is a new
/// value sent through the server's `watch` channel.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServiceRecords {
    services: HashMap<String, ServiceRecord>,
    serial: u32,
}

/// Serials of successive record sets, so a secondary or a cache can tell them apart.
static NEXT_SERIAL: AtomicU32 = AtomicU32::new(1);

impl ServiceRecords {
    /// The services of `config` with their configured ports.
    pub fn from_config(config: &Config) -> ServiceRecords {
        ServiceRecords::new(config.services.iter().map(|s| {
            let ports = s.ports.iter().map(|p| (p.name.clone(), p.protocol, p.port));
            (s.name.clone(), s.vip, ports.collect())
        }))
    }

    /// Records from `(name, vip, [(port name, protocol, port)])` entries (e.g. with the ports
    /// actually bound, when the config asked for ephemeral ones).
    pub fn new(
        services: impl IntoIterator<Item = (String, IpAddr, Vec<(Option<String>, Protocol, u16)>)>,
    ) -> ServiceRecords {
        let services = services
            .into_iter()
            .map(|(name, vip, ports)| {
                let ports = ports
                    .into_iter()
                    .map(|(name, protocol, port)| PortRecord {
                        name: name.map(|n| n.to_ascii_lowercase()),
                        protocol,
                        port,
                    })
                    .collect();
                (name.to_ascii_lowercase(), ServiceRecord { vip, ports })
            })
            .collect();
        ServiceRecords {
            services,
            serial: NEXT_SERIAL.fetch_add(1, Ordering::Relaxed),
        }
    }

    /// The service called `name` (lowercase).
    pub fn get(&self, name: &str) -> Option<&ServiceRecord> {
        self.services.get(name)
    }
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

/// An authoritative answer: response code and the three sections.
#[derive(Debug, Default)]
struct Answer {
    rcode: ResponseCode,
    answers: Vec<Record>,
    authorities: Vec<Record>,
    additionals: Vec<Record>,
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

    fn soa(&self, serial: u32) -> Record {
        let hostmaster = Name::from_ascii("hostmaster")
            .and_then(|h| h.append_domain(&self.zone))
            .unwrap_or_else(|_| self.zone.clone());
        let ttl = i32::try_from(self.ttl).unwrap_or(i32::MAX);
        let soa = SOA::new(
            self.zone.clone(),
            hostmaster,
            serial,
            ttl,
            ttl,
            ttl.saturating_mul(10),
            self.ttl,
        );
        Record::from_rdata(self.zone.clone(), self.ttl, RData::SOA(soa))
    }

    fn address(&self, name: Name, vip: IpAddr) -> Record {
        let rdata = match vip {
            IpAddr::V4(ip) => RData::A(A(ip)),
            IpAddr::V6(ip) => RData::AAAA(AAAA(ip)),
        };
        Record::from_rdata(name, self.ttl, rdata)
    }

    /// The answer for `query`, whose name is in the zone with `front` labels before it.
    fn answer(&self, query: &LowerQuery, front: &[Vec<u8>], records: &ServiceRecords) -> Answer {
        let name = Name::from(query.name()).to_lowercase();
        let qtype = query.query_type();
        let soa = self.soa(records.serial);
        let nodata = |soa: Record| Answer {
            rcode: ResponseCode::NoError,
            authorities: vec![soa],
            ..Answer::default()
        };
        let nxdomain = |soa: Record| Answer {
            rcode: ResponseCode::NXDomain,
            authorities: vec![soa],
            ..Answer::default()
        };
        let service = |label: &[u8]| std::str::from_utf8(label).ok().and_then(|l| records.get(l));
        match front {
            [] => match qtype {
                RecordType::SOA | RecordType::ANY => Answer {
                    answers: vec![soa],
                    ..Answer::default()
                },
                _ => nodata(soa),
            },
            [label] => {
                let Some(service) = service(label) else {
                    return nxdomain(soa);
                };
                let family_matches = matches!(
                    (qtype, service.vip),
                    (RecordType::A, IpAddr::V4(_))
                        | (RecordType::AAAA, IpAddr::V6(_))
                        | (RecordType::ANY, _)
                );
                if family_matches {
                    Answer {
                        answers: vec![self.address(name, service.vip)],
                        ..Answer::default()
                    }
                } else {
                    nodata(soa)
                }
            }
            // `_<proto>.<service>` exists (empty) when the service has a named port of that
            // protocol: NOERROR without data, not NXDOMAIN, so resolvers do not cache the
            // SRV names below it as absent.
            [proto, label] => match service(label) {
                Some(s)
                    if s.ports
                        .iter()
                        .any(|p| p.name.is_some() && is_proto(proto, p)) =>
                {
                    nodata(soa)
                }
                _ => nxdomain(soa),
            },
            [port, proto, label] => {
                let Some(s) = service(label) else {
                    return nxdomain(soa);
                };
                let Some(p) = s.ports.iter().find(|p| {
                    p.name
                        .as_deref()
                        .is_some_and(|n| port.strip_prefix(b"_") == Some(n.as_bytes()))
                        && is_proto(proto, p)
                }) else {
                    return nxdomain(soa);
                };
                if !matches!(qtype, RecordType::SRV | RecordType::ANY) {
                    return nodata(soa);
                }
                // The target is `<service>.<zone>`: the last three labels less the first two.
                let target = name.trim_to(name.num_labels() as usize - 2);
                let srv = SRV::new(0, 100, p.port, target.clone());
                Answer {
                    answers: vec![Record::from_rdata(name, self.ttl, RData::SRV(srv))],
                    additionals: vec![self.address(target, s.vip)],
                    ..Answer::default()
                }
            }
            _ => nxdomain(soa),
        }
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

/// Whether label `proto` (`_tcp`) is the protocol of `port`.
fn is_proto(proto: &[u8], port: &PortRecord) -> bool {
    proto.strip_prefix(b"_") == Some(port.protocol.as_str().as_bytes())
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

#[cfg(test)]
mod tests {
    use super::*;

    fn handler(records: ServiceRecords) -> Handler {
        let (_tx, rx) = watch::channel(Arc::new(records));
        Handler::new(
            config::DnsServer {
                listen: "127.0.0.1:0".parse().unwrap(),
                zone: "svc.test".into(),
                ttl: Duration::from_secs(7),
                forward: vec![],
            },
            rx,
        )
        .unwrap()
    }

    fn records() -> ServiceRecords {
        ServiceRecords::new([
            (
                "web".to_owned(),
                "10.0.0.1".parse().unwrap(),
                vec![
                    (Some("http".to_owned()), Protocol::Tcp, 80),
                    (None, Protocol::Tcp, 81),
                ],
            ),
            ("v6".to_owned(), "fd00::1".parse().unwrap(), vec![]),
        ])
    }

    fn ask(h: &Handler, name: &str, qtype: RecordType) -> Answer {
        let name = Name::from_ascii(name).unwrap();
        let front = h.in_zone(&name).expect("in zone");
        let query = LowerQuery::query(hickory_proto::op::Query::query(name, qtype));
        let records = Arc::clone(&h.records.borrow());
        h.answer(&query, &front, &records)
    }

    #[test]
    fn zone_membership_ignores_case() {
        let h = handler(records());
        let n = |s: &str| Name::from_ascii(s).unwrap();
        assert_eq!(h.in_zone(&n("WEB.Svc.Test.")), Some(vec![b"web".to_vec()]));
        assert_eq!(h.in_zone(&n("svc.test.")), Some(vec![]));
        assert_eq!(h.in_zone(&n("svc.test.example.")), None);
        assert_eq!(h.in_zone(&n("test.")), None);
        assert_eq!(h.in_zone(&n("xsvc.test.")), None);
    }

    /// A query and the expected rcode and record types of the answer, authority and
    /// additional sections.
    type Case<'a> = (
        &'a str,
        RecordType,
        ResponseCode,
        &'a [RecordType],
        &'a [RecordType],
        &'a [RecordType],
    );

    #[test]
    fn answers_by_name_and_type() {
        let h = handler(records());
        use RecordType::*;
        let cases: &[Case] = &[
            ("web.svc.test.", A, ResponseCode::NoError, &[A], &[], &[]),
            ("WEB.SVC.TEST.", A, ResponseCode::NoError, &[A], &[], &[]),
            (
                "web.svc.test.",
                AAAA,
                ResponseCode::NoError,
                &[],
                &[SOA],
                &[],
            ),
            (
                "v6.svc.test.",
                AAAA,
                ResponseCode::NoError,
                &[AAAA],
                &[],
                &[],
            ),
            ("v6.svc.test.", A, ResponseCode::NoError, &[], &[SOA], &[]),
            (
                "web.svc.test.",
                TXT,
                ResponseCode::NoError,
                &[],
                &[SOA],
                &[],
            ),
            (
                "nope.svc.test.",
                A,
                ResponseCode::NXDomain,
                &[],
                &[SOA],
                &[],
            ),
            (
                "_http._tcp.web.svc.test.",
                SRV,
                ResponseCode::NoError,
                &[SRV],
                &[],
                &[A],
            ),
            (
                "_HTTP._TCP.web.svc.test.",
                SRV,
                ResponseCode::NoError,
                &[SRV],
                &[],
                &[A],
            ),
            (
                "_http._tcp.web.svc.test.",
                A,
                ResponseCode::NoError,
                &[],
                &[SOA],
                &[],
            ),
            (
                "_http._udp.web.svc.test.",
                SRV,
                ResponseCode::NXDomain,
                &[],
                &[SOA],
                &[],
            ),
            (
                "_ftp._tcp.web.svc.test.",
                SRV,
                ResponseCode::NXDomain,
                &[],
                &[SOA],
                &[],
            ),
            (
                "_tcp.web.svc.test.",
                SRV,
                ResponseCode::NoError,
                &[],
                &[SOA],
                &[],
            ),
            (
                "_tcp.v6.svc.test.",
                SRV,
                ResponseCode::NXDomain,
                &[],
                &[SOA],
                &[],
            ),
            (
                "a.b.c.d.svc.test.",
                A,
                ResponseCode::NXDomain,
                &[],
                &[SOA],
                &[],
            ),
            ("svc.test.", SOA, ResponseCode::NoError, &[SOA], &[], &[]),
            ("svc.test.", A, ResponseCode::NoError, &[], &[SOA], &[]),
        ];
        let types = |rs: &[Record]| rs.iter().map(Record::record_type).collect::<Vec<_>>();
        for (name, qtype, rcode, answers, authorities, additionals) in cases {
            let a = ask(&h, name, *qtype);
            assert_eq!(a.rcode, *rcode, "{name} {qtype}");
            assert_eq!(types(&a.answers), *answers, "{name} {qtype} answers");
            assert_eq!(
                types(&a.authorities),
                *authorities,
                "{name} {qtype} authority"
            );
            assert_eq!(
                types(&a.additionals),
                *additionals,
                "{name} {qtype} additional"
            );
        }
    }

    #[test]
    fn srv_points_at_the_service_name_and_port() {
        let h = handler(records());
        let a = ask(&h, "_http._tcp.web.svc.test.", RecordType::SRV);
        let RData::SRV(srv) = &a.answers[0].data else {
            panic!("not SRV")
        };
        assert_eq!((srv.priority, srv.weight, srv.port), (0, 100, 80));
        assert_eq!(srv.target.to_ascii(), "web.svc.test.");
        assert_eq!(a.additionals[0].name.to_ascii(), "web.svc.test.");
        assert_eq!(a.answers[0].ttl, 7);
    }
}
