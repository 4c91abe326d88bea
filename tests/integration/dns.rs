//! The DNS server on the wire: real UDP and TCP sockets on 127.0.0.1, queries and answers
//! encoded with hickory-proto, a real upstream for forwarding.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use hickory_proto::op::{Message, Query, ResponseCode};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{Name, RData, Record, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use vipd::config::{Config, DnsServer, Protocol, Runtime};
use vipd::dns::{self, ServiceRecords};

use crate::support::{self, within};

#[derive(Clone, Copy, Debug)]
enum Transport {
    Udp,
    Tcp,
}

const BOTH: [Transport; 2] = [Transport::Udp, Transport::Tcp];

/// A DNS server for zone `svc.test` started through the library API.
struct DnsUnderTest {
    addr: SocketAddr,
    records: watch::Sender<Arc<ServiceRecords>>,
    shutdown: CancellationToken,
}

impl Drop for DnsUnderTest {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

fn settings(forward: Vec<SocketAddr>) -> DnsServer {
    DnsServer {
        listen: "127.0.0.1:0".parse().unwrap(),
        zone: "svc.test".to_owned(),
        ttl: Duration::from_secs(5),
        forward,
    }
}

/// `web` (IPv4, named tcp port `http` 8080 and an unnamed one) and `api6` (IPv6, `grpc` 9090).
fn records() -> ServiceRecords {
    ServiceRecords::new([
        (
            "web".to_owned(),
            "10.96.0.10".parse().unwrap(),
            vec![
                (Some("http".to_owned()), Protocol::Tcp, 8080),
                (None, Protocol::Tcp, 8081),
            ],
            None,
        ),
        (
            "api6".to_owned(),
            "fd00::10".parse().unwrap(),
            vec![(Some("grpc".to_owned()), Protocol::Tcp, 9090)],
            None,
        ),
    ])
}

async fn start(records: ServiceRecords, forward: Vec<SocketAddr>) -> DnsUnderTest {
    let settings = settings(forward);
    let (udp, tcp) = dns::bind(settings.listen).await.expect("bind dns");
    let addr = udp.local_addr().unwrap();
    assert_eq!(
        tcp.local_addr().unwrap(),
        addr,
        "UDP and TCP share the port"
    );
    let (tx, rx) = watch::channel(Arc::new(records));
    let shutdown = CancellationToken::new();
    tokio::spawn(dns::serve(udp, tcp, settings, rx, shutdown.clone()));
    DnsUnderTest {
        addr,
        records: tx,
        shutdown,
    }
}

fn query(name: &str, qtype: RecordType) -> Vec<u8> {
    let mut message = Message::query();
    message.metadata.id = 0x5a5a;
    message.metadata.recursion_desired = true;
    message.add_query(Query::query(Name::from_ascii(name).unwrap(), qtype));
    message.to_vec().unwrap()
}

/// Sends raw bytes and returns the raw reply.
async fn exchange_raw(addr: SocketAddr, transport: Transport, bytes: &[u8]) -> Vec<u8> {
    within("dns reply", async {
        match transport {
            Transport::Udp => {
                let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
                socket.connect(addr).await.unwrap();
                socket.send(bytes).await.unwrap();
                let mut buf = vec![0; 65535];
                let n = socket.recv(&mut buf).await.unwrap();
                buf.truncate(n);
                buf
            }
            Transport::Tcp => {
                let mut stream = TcpStream::connect(addr).await.unwrap();
                stream.write_u16(bytes.len() as u16).await.unwrap();
                stream.write_all(bytes).await.unwrap();
                let len = stream.read_u16().await.unwrap();
                let mut buf = vec![0; usize::from(len)];
                stream.read_exact(&mut buf).await.unwrap();
                buf
            }
        }
    })
    .await
}

async fn ask(addr: SocketAddr, transport: Transport, name: &str, qtype: RecordType) -> Message {
    let reply = exchange_raw(addr, transport, &query(name, qtype)).await;
    let message = Message::from_vec(&reply).expect("decodable reply");
    assert_eq!(message.metadata.id, 0x5a5a, "reply id");
    message
}

fn ips(records: &[Record]) -> Vec<IpAddr> {
    records
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(IpAddr::V4(a.0)),
            RData::AAAA(a) => Some(IpAddr::V6(a.0)),
            _ => None,
        })
        .collect()
}

fn soa_names(records: &[Record]) -> Vec<String> {
    records
        .iter()
        .filter(|r| r.record_type() == RecordType::SOA)
        .map(|r| r.name.to_ascii())
        .collect()
}

#[tokio::test]
async fn a_and_aaaa_answer_the_vip_of_the_matching_family() {
    let server = start(records(), vec![]).await;
    for transport in BOTH {
        let reply = ask(server.addr, transport, "web.svc.test.", RecordType::A).await;
        assert_eq!(reply.metadata.response_code, ResponseCode::NoError);
        assert!(reply.metadata.authoritative, "{transport:?}: AA");
        assert_eq!(
            ips(&reply.answers),
            vec!["10.96.0.10".parse::<IpAddr>().unwrap()]
        );
        assert_eq!(reply.answers[0].ttl, 5);

        // Case does not matter.
        let reply = ask(server.addr, transport, "WeB.SVC.test.", RecordType::A).await;
        assert_eq!(
            ips(&reply.answers),
            vec!["10.96.0.10".parse::<IpAddr>().unwrap()]
        );

        // The other family: NOERROR without data, SOA for negative caching.
        let reply = ask(server.addr, transport, "web.svc.test.", RecordType::AAAA).await;
        assert_eq!(reply.metadata.response_code, ResponseCode::NoError);
        assert!(reply.answers.is_empty(), "{transport:?}: {reply:?}");
        assert_eq!(soa_names(&reply.authorities), vec!["svc.test."]);

        let reply = ask(server.addr, transport, "api6.svc.test.", RecordType::AAAA).await;
        assert_eq!(
            ips(&reply.answers),
            vec!["fd00::10".parse::<IpAddr>().unwrap()]
        );
        let reply = ask(server.addr, transport, "api6.svc.test.", RecordType::A).await;
        assert_eq!(reply.metadata.response_code, ResponseCode::NoError);
        assert!(reply.answers.is_empty());
    }
}

#[tokio::test]
async fn srv_names_the_port_with_the_address_as_additional() {
    let server = start(records(), vec![]).await;
    for transport in BOTH {
        let reply = ask(
            server.addr,
            transport,
            "_http._tcp.web.svc.test.",
            RecordType::SRV,
        )
        .await;
        assert_eq!(reply.metadata.response_code, ResponseCode::NoError);
        assert_eq!(reply.answers.len(), 1, "{transport:?}: {reply:?}");
        let RData::SRV(srv) = &reply.answers[0].data else {
            panic!("not an SRV answer: {reply:?}")
        };
        assert_eq!((srv.priority, srv.weight, srv.port), (0, 100, 8080));
        assert_eq!(srv.target.to_ascii(), "web.svc.test.");
        assert_eq!(
            ips(&reply.additionals),
            vec!["10.96.0.10".parse::<IpAddr>().unwrap()]
        );
        assert_eq!(reply.additionals[0].name.to_ascii(), "web.svc.test.");

        let reply = ask(
            server.addr,
            transport,
            "_grpc._tcp.api6.svc.test.",
            RecordType::SRV,
        )
        .await;
        let RData::SRV(srv) = &reply.answers[0].data else {
            panic!("not an SRV answer: {reply:?}")
        };
        assert_eq!(srv.port, 9090);
        assert_eq!(
            ips(&reply.additionals),
            vec!["fd00::10".parse::<IpAddr>().unwrap()]
        );
    }
}

#[tokio::test]
async fn unknown_names_in_the_zone_are_nxdomain_with_the_soa() {
    let server = start(records(), vec![]).await;
    for transport in BOTH {
        for (name, qtype) in [
            ("nope.svc.test.", RecordType::A),
            ("_ftp._tcp.web.svc.test.", RecordType::SRV),
            ("_http._udp.web.svc.test.", RecordType::SRV),
        ] {
            let reply = ask(server.addr, transport, name, qtype).await;
            assert_eq!(
                reply.metadata.response_code,
                ResponseCode::NXDomain,
                "{transport:?} {name}"
            );
            assert!(reply.metadata.authoritative);
            assert!(reply.answers.is_empty());
            assert_eq!(soa_names(&reply.authorities), vec!["svc.test."], "{name}");
        }
    }
}

#[tokio::test]
async fn names_outside_the_zone_are_refused_without_upstreams() {
    let server = start(records(), vec![]).await;
    for transport in BOTH {
        let reply = ask(server.addr, transport, "example.com.", RecordType::A).await;
        assert_eq!(reply.metadata.response_code, ResponseCode::Refused);
        assert!(reply.answers.is_empty());
        // A sibling of the zone is outside it too.
        let reply = ask(server.addr, transport, "web.svc.test2.", RecordType::A).await;
        assert_eq!(reply.metadata.response_code, ResponseCode::Refused);
    }
}

/// An upstream DNS server on 127.0.0.1 (UDP and TCP on one port) answering every A query with
/// `count` addresses 192.0.2.1, 192.0.2.2, ...
async fn upstream(count: u8) -> SocketAddr {
    let (udp, tcp) = dns::bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let addr = udp.local_addr().unwrap();
    let answer = move |bytes: &[u8]| -> Vec<u8> {
        let request = Message::from_vec(bytes).unwrap();
        let mut reply = Message::response(request.metadata.id, request.metadata.op_code);
        reply.metadata.recursion_available = true;
        let name = request.queries[0].name().clone();
        reply.add_query(request.queries[0].clone());
        for i in 1..=count {
            reply.add_answer(Record::from_rdata(
                name.clone(),
                60,
                RData::A(A::new(192, 0, 2, i)),
            ));
        }
        reply.to_vec().unwrap()
    };
    tokio::spawn(async move {
        let mut buf = vec![0; 65535];
        loop {
            let (n, from) = udp.recv_from(&mut buf).await.unwrap();
            udp.send_to(&answer(&buf[..n]), from).await.unwrap();
        }
    });
    tokio::spawn(serve_tcp(tcp, answer));
    addr
}

async fn serve_tcp(tcp: TcpListener, answer: impl Fn(&[u8]) -> Vec<u8> + Copy + Send + 'static) {
    loop {
        let (mut stream, _) = tcp.accept().await.unwrap();
        tokio::spawn(async move {
            while let Ok(len) = stream.read_u16().await {
                let mut buf = vec![0; usize::from(len)];
                stream.read_exact(&mut buf).await.unwrap();
                let reply = answer(&buf);
                stream.write_u16(reply.len() as u16).await.unwrap();
                stream.write_all(&reply).await.unwrap();
            }
        });
    }
}

#[tokio::test]
async fn names_outside_the_zone_go_to_the_upstream() {
    let upstream = upstream(1).await;
    let server = start(records(), vec![upstream]).await;
    for transport in BOTH {
        let reply = ask(server.addr, transport, "example.com.", RecordType::A).await;
        assert_eq!(reply.metadata.response_code, ResponseCode::NoError);
        assert!(!reply.metadata.authoritative);
        assert_eq!(
            ips(&reply.answers),
            vec!["192.0.2.1".parse::<IpAddr>().unwrap()]
        );
        // The zone is still answered locally.
        let reply = ask(server.addr, transport, "web.svc.test.", RecordType::A).await;
        assert_eq!(
            ips(&reply.answers),
            vec!["10.96.0.10".parse::<IpAddr>().unwrap()]
        );
    }
}

#[tokio::test]
async fn an_unreachable_upstream_falls_over_to_the_next() {
    // A bound UDP socket that never answers: the first upstream times out.
    let silent = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let working = upstream(1).await;
    let server = start(records(), vec![silent.local_addr().unwrap(), working]).await;
    let reply = ask(server.addr, Transport::Udp, "example.com.", RecordType::A).await;
    assert_eq!(
        ips(&reply.answers),
        vec!["192.0.2.1".parse::<IpAddr>().unwrap()]
    );
}

#[tokio::test]
async fn large_answers_set_tc_over_udp_and_come_whole_over_tcp() {
    // 60 A records do not fit the 512 bytes a client without EDNS accepts.
    let upstream = upstream(60).await;
    let server = start(records(), vec![upstream]).await;
    let reply = ask(server.addr, Transport::Udp, "big.example.", RecordType::A).await;
    assert!(reply.metadata.truncation, "TC over UDP: {reply:?}");
    let reply = ask(server.addr, Transport::Tcp, "big.example.", RecordType::A).await;
    assert!(!reply.metadata.truncation);
    assert_eq!(reply.answers.len(), 60);
}

#[tokio::test]
async fn malformed_queries_get_formerr_and_the_server_keeps_answering() {
    let server = start(records(), vec![]).await;
    // A valid header (id 0xbeef, one question) followed by a question cut short.
    let junk = [
        0xbe, 0xef, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0, 0x07, b'e', b'x',
    ];
    for transport in BOTH {
        let reply = exchange_raw(server.addr, transport, &junk).await;
        let reply = Message::from_vec(&reply).expect("decodable FORMERR");
        assert_eq!(reply.metadata.id, 0xbeef);
        assert_eq!(reply.metadata.response_code, ResponseCode::FormErr);
    }
    // Two questions in one query are not allowed either.
    let mut message = Message::query();
    message.metadata.id = 0x5a5a;
    for name in ["web.svc.test.", "api6.svc.test."] {
        message.add_query(Query::query(Name::from_ascii(name).unwrap(), RecordType::A));
    }
    let reply = exchange_raw(server.addr, Transport::Udp, &message.to_vec().unwrap()).await;
    let reply = Message::from_vec(&reply).unwrap();
    assert_eq!(reply.metadata.response_code, ResponseCode::FormErr);
    // Too short to be a header at all: no reply is possible, and nothing breaks.
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    socket.send_to(&[1, 2, 3], server.addr).await.unwrap();
    for transport in BOTH {
        let reply = ask(server.addr, transport, "web.svc.test.", RecordType::A).await;
        assert_eq!(reply.metadata.response_code, ResponseCode::NoError);
    }
}

#[tokio::test]
async fn new_records_change_the_answers() {
    let server = start(records(), vec![]).await;
    let reply = ask(server.addr, Transport::Udp, "db.svc.test.", RecordType::A).await;
    assert_eq!(reply.metadata.response_code, ResponseCode::NXDomain);

    // A reload: `db` added, `web` removed.
    server.records.send_replace(Arc::new(ServiceRecords::new([(
        "db".to_owned(),
        "10.96.0.20".parse().unwrap(),
        vec![(Some("pg".to_owned()), Protocol::Tcp, 5432)],
        None,
    )])));
    let reply = ask(server.addr, Transport::Udp, "db.svc.test.", RecordType::A).await;
    assert_eq!(
        ips(&reply.answers),
        vec!["10.96.0.20".parse::<IpAddr>().unwrap()]
    );
    let reply = ask(server.addr, Transport::Tcp, "web.svc.test.", RecordType::A).await;
    assert_eq!(reply.metadata.response_code, ResponseCode::NXDomain);
}

#[tokio::test]
async fn the_app_serves_dns_for_its_services_and_counts_queries() {
    let backend = support::Backend::start("b", support::backend::Behaviour::Echo).await;
    let mut web = support::service("web", &[backend.addr]);
    web.ports[0].name = Some("http".to_owned());
    let mut dns_settings = settings(vec![]);
    dns_settings.zone = "svc.cluster.local".to_owned();
    let config = Config {
        runtime: Runtime {
            workers: None,
            max_connections: None,
        },
        admin: Some(vipd::config::Admin {
            listen: "127.0.0.1:0".parse().unwrap(),
            token: None,
        }),
        dns: Some(dns_settings),
        services: vec![web],
    };
    let app = vipd::app::App::bind(config).await.unwrap();
    let dns_addr = app.dns_addr().expect("dns bound");
    let admin = app.admin_addr().unwrap();
    let bound = app.service_addrs("web").unwrap()[0];
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(app.run(shutdown.clone()));

    let reply = ask(
        dns_addr,
        Transport::Udp,
        "_http._tcp.web.svc.cluster.local.",
        RecordType::SRV,
    )
    .await;
    let RData::SRV(srv) = &reply.answers[0].data else {
        panic!("not an SRV answer: {reply:?}")
    };
    // The port actually bound, not the 0 of the config.
    assert_eq!(srv.port, bound.port());
    assert_eq!(ips(&reply.additionals), vec![bound.ip()]);
    ask(
        dns_addr,
        Transport::Udp,
        "nope.svc.cluster.local.",
        RecordType::A,
    )
    .await;

    let metrics = support::http::get(admin, "/metrics").await;
    for rcode in ["NOERROR", "NXDOMAIN"] {
        let line = format!("vipd_dns_queries_total{{rcode=\"{rcode}\"}}");
        assert!(
            metrics.body.contains(&line),
            "{line} missing:\n{}",
            metrics.body
        );
    }
    shutdown.cancel();
    within("vipd to stop", task).await.unwrap().unwrap();
}

#[tokio::test]
async fn replica_names_answer_while_the_replica_is_in_rotation() {
    use support::backend::Behaviour;
    let db0 =
        support::Backend::start_on("127.0.0.2:0".parse().unwrap(), "db-0", Behaviour::Echo).await;
    let mut db1 =
        support::Backend::start_on("127.0.0.3:0".parse().unwrap(), "db-1", Behaviour::Echo).await;
    let mut db = support::harness::with_health(
        support::service("db", &[db0.addr, db1.addr]),
        vipd::config::HealthCheck::tcp(),
        Duration::from_millis(100),
    );
    db.endpoints[0].name = Some("db-0".to_owned());
    db.endpoints[1].name = Some("db-1".to_owned());
    let mut config = support::harness::config(vec![db], false);
    config.dns = Some(settings(vec![]));
    let app = vipd::app::App::bind(config).await.unwrap();
    let dns_addr = app.dns_addr().expect("dns bound");
    let state = app.state();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(app.run(shutdown.clone()));
    let service = state.service("db").expect("service db");
    within("first health round", service.wait_first_round()).await;

    for transport in BOTH {
        let reply = ask(dns_addr, transport, "db-0.db.svc.test.", RecordType::A).await;
        assert_eq!(ips(&reply.answers), vec![db0.addr.ip()], "{transport:?}");
        let reply = ask(dns_addr, transport, "db-1.db.svc.test.", RecordType::A).await;
        assert_eq!(ips(&reply.answers), vec![db1.addr.ip()], "{transport:?}");
    }
    // /status names the replicas too.
    let status = service.status();
    assert_eq!(status.endpoints[1].name.as_deref(), Some("db-1"));

    // db-1 fails its checks: its name is gone, db-0's stays.
    let mut events = service.subscribe();
    db1.stop().await;
    support::next_change(&mut events, db1.addr, vipd::service::Change::Down).await;
    for transport in BOTH {
        let reply = ask(dns_addr, transport, "db-1.db.svc.test.", RecordType::A).await;
        assert_eq!(
            reply.metadata.response_code,
            ResponseCode::NXDomain,
            "{transport:?}"
        );
        let reply = ask(dns_addr, transport, "db-0.db.svc.test.", RecordType::A).await;
        assert_eq!(ips(&reply.answers), vec![db0.addr.ip()], "{transport:?}");
    }
    shutdown.cancel();
    within("vipd to stop", task).await.unwrap().unwrap();
}
