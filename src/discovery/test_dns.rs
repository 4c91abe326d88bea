//! A real DNS server for tests: hickory-server on 127.0.0.1 (UDP and TCP, port 0) answering
//! from records the test sets and changes while it runs. It logs every query it receives (with
//! the tokio clock, so paused-time tests can check *when* a name was asked again) and can be
//! switched into outage modes: SERVFAIL, REFUSED, or silence (the client times out).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use hickory_server::Server;
use hickory_server::net::runtime::Time;
use hickory_server::net::xfer::Protocol;
use hickory_server::proto::op::{Header, HeaderCounts, Metadata, ResponseCode};
use hickory_server::proto::rr::rdata::{A, AAAA, SOA, SRV, TXT};
use hickory_server::proto::rr::{Name, RData, Record, RecordType};
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponseBuilder;
use tokio::net::{TcpListener, UdpSocket};
use tokio::time::Instant;

/// How the server answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// From the records.
    Answer,
    /// SERVFAIL to everything.
    ServFail,
    /// REFUSED to everything.
    Refused,
    /// No reply at all.
    Silent,
}

/// One query the server received.
#[derive(Debug, Clone)]
pub struct Query {
    /// Lowercased, fully qualified.
    pub name: Name,
    /// The type asked for.
    pub record_type: RecordType,
    /// When it arrived (tokio clock).
    pub at: Instant,
    /// Whether it came over TCP (else UDP).
    pub over_tcp: bool,
}

#[derive(Debug)]
struct Zone {
    /// (lowercased FQDN, type) → records.
    records: HashMap<(Name, RecordType), Vec<Record>>,
    mode: Mode,
    /// TTL and `minimum` of the SOA sent with negative answers; `None` = no SOA.
    negative_ttl: Option<u32>,
    queries: Vec<Query>,
}

/// The running server; stops when dropped (or, waiting until its sockets are closed, on
/// [`TestDns::stop`]).
pub struct TestDns {
    addr: SocketAddr,
    zone: Arc<Mutex<Zone>>,
    #[allow(
        dead_code,
        reason = "read by `stop`, which only the integration tests call"
    )]
    server: Server<Handler>,
}

impl TestDns {
    /// Starts a server with no records, answering NXDOMAIN with an SOA whose negative TTL is
    /// 5 seconds.
    pub async fn start() -> TestDns {
        let zone = Arc::new(Mutex::new(Zone {
            records: HashMap::new(),
            mode: Mode::Answer,
            negative_ttl: Some(5),
            queries: Vec::new(),
        }));
        let mut server = Server::new(Handler { zone: zone.clone() });
        // TCP on the UDP socket's port, so one address serves both; another process may hold
        // that TCP port, so try a few UDP ports.
        for _ in 0..20 {
            let udp = UdpSocket::bind("127.0.0.1:0").await.expect("bind udp");
            let addr = udp.local_addr().expect("udp address");
            let Ok(tcp) = TcpListener::bind(addr).await else {
                continue;
            };
            server.register_socket(udp);
            server.register_listener(tcp, Duration::from_secs(5), 64);
            return TestDns { addr, zone, server };
        }
        panic!("no free UDP+TCP port pair on 127.0.0.1");
    }

    /// Where the server listens (UDP and TCP).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    fn zone(&self) -> MutexGuard<'_, Zone> {
        self.zone.lock().expect("zone lock")
    }

    /// Sets the A and AAAA records of `name` to `ips` (replacing both); no IPs removes them.
    pub fn set_addresses(&self, name: &str, ttl: u32, ips: &[IpAddr]) {
        let name = fqdn(name);
        let (mut v4, mut v6) = (Vec::new(), Vec::new());
        for &ip in ips {
            match ip {
                IpAddr::V4(ip) => v4.push(Record::from_rdata(name.clone(), ttl, RData::A(A(ip)))),
                IpAddr::V6(ip) => {
                    v6.push(Record::from_rdata(name.clone(), ttl, RData::AAAA(AAAA(ip))))
                }
            }
        }
        let mut zone = self.zone();
        zone.set(name.clone(), RecordType::A, v4);
        zone.set(name, RecordType::AAAA, v6);
    }

    /// Sets the SRV records of `name` to `(port, target)` pairs of priority 0 and weight 1;
    /// none removes them.
    pub fn set_srv(&self, name: &str, ttl: u32, targets: &[(u16, &str)]) {
        let records: Vec<(u16, u16, u16, &str)> =
            targets.iter().map(|&(port, t)| (0, 1, port, t)).collect();
        self.set_srv_records(name, ttl, &records);
    }

    /// Sets the SRV records of `name` to `(priority, weight, port, target)`.
    pub fn set_srv_records(&self, name: &str, ttl: u32, targets: &[(u16, u16, u16, &str)]) {
        let name = fqdn(name);
        let records = targets
            .iter()
            .map(|&(priority, weight, port, target)| {
                Record::from_rdata(
                    name.clone(),
                    ttl,
                    RData::SRV(SRV::new(priority, weight, port, fqdn(target))),
                )
            })
            .collect();
        self.zone().set(name, RecordType::SRV, records);
    }

    /// Sets the TXT record of `name` to the one string `text`.
    #[allow(
        dead_code,
        reason = "the integration tests' UDP endpoints answer with it"
    )]
    pub fn set_txt(&self, name: &str, ttl: u32, text: &str) {
        let name = fqdn(name);
        let txt = RData::TXT(TXT::new(vec![text.to_owned()]));
        let record = Record::from_rdata(name.clone(), ttl, txt);
        self.zone().set(name, RecordType::TXT, vec![record]);
    }

    /// Stops the server and waits until its sockets are closed: a datagram to its address is
    /// refused from then on.
    #[allow(dead_code, reason = "the integration tests stop UDP endpoints with it")]
    pub async fn stop(mut self) {
        let _ = self.server.shutdown_gracefully().await;
    }

    /// Sets how the server answers.
    pub fn set_mode(&self, mode: Mode) {
        self.zone().mode = mode;
    }

    /// Sets the negative TTL (SOA TTL and minimum) sent with negative answers; `None` sends
    /// no SOA.
    pub fn set_negative_ttl(&self, ttl: Option<u32>) {
        self.zone().negative_ttl = ttl;
    }

    /// Every query received so far, in order.
    pub fn queries(&self) -> Vec<Query> {
        self.zone().queries.clone()
    }
}

impl Zone {
    fn set(&mut self, name: Name, record_type: RecordType, records: Vec<Record>) {
        if records.is_empty() {
            self.records.remove(&(name, record_type));
        } else {
            self.records.insert((name, record_type), records);
        }
    }

    /// The response code, answers and authority (SOA) records for a query.
    fn answer(
        &self,
        name: &Name,
        record_type: RecordType,
    ) -> (ResponseCode, Vec<Record>, Vec<Record>) {
        if let Some(records) = self.records.get(&(name.clone(), record_type)) {
            return (ResponseCode::NoError, records.clone(), Vec::new());
        }
        // NODATA when the name has records of another type, else NXDOMAIN.
        let exists = self.records.keys().any(|(n, _)| n == name);
        let code = if exists {
            ResponseCode::NoError
        } else {
            ResponseCode::NXDomain
        };
        let soa = self
            .negative_ttl
            .map(|ttl| {
                let zone = Name::from_ascii("test.").expect("zone name");
                let soa = SOA::new(
                    Name::from_ascii("ns.test.").expect("name"),
                    Name::from_ascii("admin.test.").expect("name"),
                    1,
                    3600,
                    600,
                    86400,
                    ttl,
                );
                vec![Record::from_rdata(zone, ttl, RData::SOA(soa))]
            })
            .unwrap_or_default();
        (code, Vec::new(), soa)
    }
}

/// `name` lowercased and fully qualified.
fn fqdn(name: &str) -> Name {
    let mut name = Name::from_ascii(name)
        .expect("valid test name")
        .to_lowercase();
    name.set_fqdn(true);
    name
}

struct Handler {
    zone: Arc<Mutex<Zone>>,
}

#[async_trait::async_trait]
impl RequestHandler for Handler {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        mut response_handle: R,
    ) -> ResponseInfo {
        let mut metadata = Metadata::response_from_request(&request.metadata);
        let info = request.request_info().expect("one query per request");
        let mut name: Name = info.query.name().clone().into();
        name = name.to_lowercase();
        name.set_fqdn(true);
        let record_type = info.query.query_type();
        // The lock is released before the response is sent.
        let (mode, (code, answers, soa)) = {
            let mut zone = self.zone.lock().expect("zone lock");
            zone.queries.push(Query {
                name: name.clone(),
                record_type,
                at: Instant::now(),
                over_tcp: request.protocol() == Protocol::Tcp,
            });
            (zone.mode, zone.answer(&name, record_type))
        };
        metadata.authoritative = true;
        metadata.response_code = match mode {
            Mode::Answer => code,
            Mode::ServFail => ResponseCode::ServFail,
            Mode::Refused => ResponseCode::Refused,
            Mode::Silent => {
                return ResponseInfo::from(Header {
                    metadata,
                    counts: HeaderCounts::default(),
                });
            }
        };
        let (answers, soa) = if mode == Mode::Answer {
            (answers, soa)
        } else {
            (Vec::new(), Vec::new())
        };
        let response = MessageResponseBuilder::from_message_request(request).build(
            metadata,
            answers.iter(),
            std::iter::empty(),
            soa.iter(),
            std::iter::empty(),
        );
        response_handle
            .send_response(response)
            .await
            .expect("send a DNS response")
    }
}
