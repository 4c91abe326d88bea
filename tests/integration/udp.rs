//! UDP services end to end: real DNS servers (hickory-server) behind vipd, real clients on
//! their own sockets. Flows spread and stick, answers come from the VIP, flows move off
//! endpoints that stop, drain or leave, limits hold, large datagrams pass whole, and TCP and
//! UDP share a port number.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use hickory_proto::op::{Message, Query};
use hickory_proto::rr::{Name, RData, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use vipd::config::{
    DnsServer, EndpointSpec, HealthCheck, Outlier, Protocol, ServicePort, WhenAllUnhealthy,
};
use vipd::service::{Change, ServiceState};

use crate::support::backend::Behaviour;
use crate::support::harness::{config, with_health};
use crate::support::http::sample;
use crate::support::udp::{Client, NamedDns, QUESTION, UdpEcho, udp_service};
use crate::support::{Backend, Running, free_port, next_change, poll_until, within};

/// How long a client waits for an answer before asking again, where a query may be lost.
const RETRY: Duration = Duration::from_millis(200);

async fn named(names: &[&str]) -> Vec<NamedDns> {
    let mut servers = Vec::new();
    for name in names {
        servers.push(NamedDns::start(name).await);
    }
    servers
}

fn addrs(servers: &[NamedDns]) -> Vec<SocketAddr> {
    servers.iter().map(|s| s.addr).collect()
}

/// A client whose flow is pinned to the endpoint called `name` (new clients until one is).
async fn client_on(vip: SocketAddr, name: &str) -> Client {
    for _ in 0..64 {
        let mut client = Client::new().await;
        if client.ask(vip).await.name == name {
            return client;
        }
    }
    panic!("no flow was placed on {name}");
}

/// Stops the first server and returns its address.
async fn stop_first(servers: &mut Vec<NamedDns>) -> SocketAddr {
    let stopped = servers.remove(0);
    let addr = stopped.addr;
    stopped.stop().await;
    addr
}

fn metric(name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    sample(&vipd::metrics::render(), name, labels)
}

/// Waits until `service` has counted a datagram dropped for `reason` (counters send no event).
async fn dropped(service: &str, reason: &str) {
    let labels = [("service", service), ("reason", reason)];
    poll_until(&format!("a {reason} drop to be counted"), || async {
        match metric("vipd_udp_flows_dropped_total", &labels) {
            Some(n) if n >= 1.0 => Ok(()),
            seen => Err(format!("{seen:?}")),
        }
    })
    .await;
}

fn endpoint(service: &ServiceState, addr: SocketAddr) -> Arc<vipd::service::Endpoint> {
    service
        .endpoint(addr)
        .expect("the service knows the endpoint")
}

#[tokio::test]
async fn queries_from_distinct_clients_spread_over_the_endpoints_and_come_back_from_the_vip() {
    let servers = named(&["a", "b", "c"]).await;
    let vipd = Running::start(vec![udp_service("udp-spread", &addrs(&servers))], false).await;
    let vip = vipd.addr("udp-spread");
    let mut tally: HashMap<String, usize> = HashMap::new();
    let mut clients = Vec::new();
    for _ in 0..12 {
        let mut client = Client::new().await;
        let answer = client.ask(vip).await;
        assert_eq!(answer.from, vip, "the answer comes from the VIP:port asked");
        *tally.entry(answer.name).or_default() += 1;
        clients.push(client);
    }
    // Round robin places each new flow on the next endpoint.
    assert_eq!(
        tally,
        HashMap::from([("a".into(), 4), ("b".into(), 4), ("c".into(), 4)])
    );
    let service = vipd.service("udp-spread");
    assert_eq!(service.udp_flows(), 12);
    let status = service.status();
    assert_eq!(status.ports[0].protocol, "udp");
    assert_eq!(status.ports[0].port, vip.port());
    let flows: Vec<u64> = status.endpoints.iter().map(|e| e.active_flows).collect();
    assert_eq!(flows, [4, 4, 4]);
    assert!(status.endpoints.iter().all(|e| e.active_connections == 0));
    vipd.stop().await.expect("vipd stops with flows open");
}

#[tokio::test]
async fn one_flow_stays_on_its_endpoint_and_is_counted() {
    let servers = named(&["a", "b"]).await;
    let vipd = Running::start(vec![udp_service("udp-sticky", &addrs(&servers))], false).await;
    let vip = vipd.addr("udp-sticky");
    let mut sticky = Client::new().await;
    let first = sticky.ask(vip).await.name;
    for _ in 0..20 {
        // Other clients' new flows move the rotation on; this flow stays put.
        Client::new().await.ask(vip).await;
        assert_eq!(sticky.ask(vip).await.name, first);
    }
    let pinned = servers.iter().find(|s| s.name == first).unwrap().addr;
    let endpoint = pinned.to_string();
    let labels = |direction| {
        [
            ("service", "udp-sticky"),
            ("endpoint", endpoint.as_str()),
            ("direction", direction),
        ]
    };
    // The sticky flow's 21 queries and half of the 20 one-query flows.
    let want = 21.0 + 10.0;
    assert_eq!(metric("vipd_datagrams_total", &labels("in")), Some(want));
    assert_eq!(metric("vipd_datagrams_total", &labels("out")), Some(want));
    let base = [("service", "udp-sticky"), ("endpoint", endpoint.as_str())];
    assert_eq!(metric("vipd_udp_flows", &base), Some(11.0));
    assert_eq!(metric("vipd_udp_flows_total", &base), Some(11.0));
    assert!(metric("vipd_bytes_total", &labels("in")).unwrap() > 0.0);
}

#[tokio::test]
async fn a_stopped_endpoint_refuses_and_its_flows_re_pin_at_the_next_datagram() {
    let mut servers = named(&["a", "b"]).await;
    let vipd = Running::start(vec![udp_service("udp-refused", &addrs(&servers))], false).await;
    let vip = vipd.addr("udp-refused");
    let mut on_a = client_on(vip, "a").await;
    let mut on_b = client_on(vip, "b").await;
    let a_addr = stop_first(&mut servers).await;

    // The first query after the stop goes to `a` and is lost; its ICMP port unreachable comes
    // back as ECONNREFUSED on the flow's next send, which then goes to `b` instead.
    let (answer, sent) = on_a.ask_until_answered(vip, RETRY).await;
    assert_eq!(answer.name, "b");
    assert!(
        sent >= 2,
        "the first query after the stop had nowhere to go"
    );
    let service = vipd.service("udp-refused");
    assert!(endpoint(&service, a_addr).consecutive_connect_failures() >= 1);
    // From then on no query is lost: each is answered the first time.
    for _ in 0..20 {
        assert_eq!(on_a.ask(vip).await.name, "b");
    }
    assert_eq!(on_b.ask(vip).await.name, "b");
}

#[tokio::test]
async fn an_outlier_ejection_keeps_new_flows_off_a_stopped_endpoint() {
    let mut servers = named(&["a", "b", "c"]).await;
    let mut service = udp_service("udp-ejected", &addrs(&servers));
    service.outlier = Some(Outlier {
        consecutive_failures: NonZeroU32::MIN,
        base_ejection_time: Duration::from_secs(600),
        max_ejection_percent: 50,
    });
    let vipd = Running::start(vec![service], false).await;
    let vip = vipd.addr("udp-ejected");
    let mut events = vipd.service("udp-ejected").subscribe();
    let mut on_a = client_on(vip, "a").await;
    let a_addr = stop_first(&mut servers).await;

    let (answer, _) = on_a.ask_until_answered(vip, RETRY).await;
    assert_ne!(answer.name, "a");
    next_change(&mut events, a_addr, Change::Ejected).await;
    // Ejected: new flows are placed elsewhere and none of their queries is lost.
    for _ in 0..12 {
        let answer = Client::new().await.ask(vip).await;
        assert_ne!(answer.name, "a");
    }
}

#[tokio::test]
async fn a_drained_endpoint_re_pins_its_flows_at_once() {
    let servers = named(&["a", "b"]).await;
    let vipd = Running::start(vec![udp_service("udp-drained", &addrs(&servers))], false).await;
    let vip = vipd.addr("udp-drained");
    let mut on_a = client_on(vip, "a").await;
    let mut on_b = client_on(vip, "b").await;
    let service = vipd.service("udp-drained");
    let (a, b) = (
        endpoint(&service, servers[0].addr),
        endpoint(&service, servers[1].addr),
    );
    let (on_a_before, on_b_before) = (a.active_flows(), b.active_flows());
    service
        .set_draining(servers[0].addr, true)
        .await
        .expect("drain");
    assert_eq!(on_a.ask(vip).await.name, "b");
    assert_eq!(on_b.ask(vip).await.name, "b");
    // The flow moved with its next datagram (flows that send nothing move when they do).
    assert_eq!(a.active_flows(), on_a_before - 1);
    assert_eq!(b.active_flows(), on_b_before + 1);
    service
        .set_draining(servers[0].addr, false)
        .await
        .expect("undrain");
    // Back in rotation, it gets new flows; moved flows do not move back.
    assert_eq!(on_a.ask(vip).await.name, "b");
    let mut next_two = Vec::new();
    for _ in 0..2 {
        next_two.push(Client::new().await.ask(vip).await.name);
    }
    assert!(next_two.contains(&"a".to_owned()), "{next_two:?}");
}

#[tokio::test]
async fn reloads_move_flows_off_removed_endpoints_keep_the_others_and_add_and_remove_ports() {
    let servers = named(&["a", "b", "c"]).await;
    let before = config(vec![udp_service("udp-reload", &addrs(&servers))], false);
    let vipd = Running::start_config(before.clone()).await;
    let vip = vipd.addr("udp-reload");
    let mut on_a = client_on(vip, "a").await;
    let mut on_b = client_on(vip, "b").await;
    let mut on_c = client_on(vip, "c").await;

    // `a` leaves; a second UDP port opens.
    let mut after = before.clone();
    after.services[0] = udp_service("udp-reload", &addrs(&servers[1..]));
    after.services[0].connection.udp_idle_timeout = Duration::from_secs(120);
    // A fixed port: a second port 0 would be the same listen address as the first.
    after.services[0].ports.push(ServicePort {
        port: free_port(),
        target_port: 0,
        protocol: Protocol::Udp,
        name: None,
        accept_proxy_protocol: false,
    });
    vipd.state
        .apply(after.clone())
        .await
        .expect("reload applies");
    assert_ne!(on_a.ask(vip).await.name, "a");
    assert_eq!(on_b.ask(vip).await.name, "b");
    assert_eq!(on_c.ask(vip).await.name, "c");
    let bound = vipd.service("udp-reload").bound();
    assert_eq!(bound[0], vip, "the kept port kept its socket");
    let second = bound[1];
    assert_ne!(Client::new().await.ask(second).await.name, "a");

    // The second port closes again: datagrams to it are refused.
    after.services[0].ports.pop();
    vipd.state.apply(after).await.expect("reload applies");
    assert_eq!(vipd.service("udp-reload").bound(), vec![vip]);
    let probe = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    probe.connect(second).await.unwrap();
    probe.send(b"anyone?").await.unwrap();
    let mut buf = [0u8; 16];
    let refused = within("the ICMP error", probe.recv(&mut buf)).await;
    assert_eq!(
        refused.unwrap_err().kind(),
        std::io::ErrorKind::ConnectionRefused
    );
    assert_eq!(on_b.ask(vip).await.name, "b");
}

#[tokio::test]
async fn a_removed_endpoint_is_forgotten_once_its_flows_end_even_when_their_clients_stay_quiet() {
    let servers = named(&["a", "b"]).await;
    let service = |servers: &[NamedDns]| {
        let mut service = udp_service("udp-forget", &addrs(servers));
        // Far beyond the test: only the removal may end the flow.
        service.connection.udp_idle_timeout = Duration::from_secs(600);
        service
    };
    let vipd = Running::start(vec![service(&servers)], false).await;
    let vip = vipd.addr("udp-forget");
    let state = vipd.service("udp-forget");
    let mut events = state.subscribe();
    let mut on_a = client_on(vip, "a").await;
    assert_eq!(endpoint(&state, servers[0].addr).active_flows(), 1);

    let after = config(vec![service(&servers[1..])], false);
    vipd.state.apply(after).await.expect("reload applies");
    // The flow ends without another datagram, so the endpoint is gone for good.
    next_change(&mut events, servers[0].addr, Change::Gone).await;
    assert!(state.endpoint(servers[0].addr).is_none());
    assert_eq!(state.udp_flows(), 0);
    // The client's next query starts a new flow, on an endpoint of the service.
    assert_eq!(on_a.ask(vip).await.name, "b");
}

#[tokio::test]
async fn a_new_flow_beyond_max_udp_flows_gets_no_answer_and_is_counted() {
    let servers = named(&["a", "b"]).await;
    let mut service = udp_service("udp-limit", &addrs(&servers));
    service.max_udp_flows = NonZeroU32::new(2).unwrap();
    let vipd = Running::start(vec![service], false).await;
    let vip = vipd.addr("udp-limit");
    let mut first = Client::new().await;
    let mut second = Client::new().await;
    first.ask(vip).await;
    second.ask(vip).await;

    let mut third = Client::new().await;
    third.send_query(vip).await;
    dropped("udp-limit", "limit").await;
    // Dropped, not queued: nothing comes back.
    assert!(!third.has_pending());
    assert_eq!(vipd.service("udp-limit").udp_flows(), 2);
    // Flows that exist keep working.
    first.ask(vip).await;
}

#[tokio::test]
async fn an_idle_flow_ends_and_frees_its_place() {
    let servers = named(&["a"]).await;
    let mut service = udp_service("udp-idle", &addrs(&servers));
    service.max_udp_flows = NonZeroU32::MIN;
    service.connection.udp_idle_timeout = Duration::from_millis(100);
    let vipd = Running::start(vec![service], false).await;
    let vip = vipd.addr("udp-idle");
    Client::new().await.ask(vip).await;
    let state = vipd.service("udp-idle");
    // Expiry itself is tested under paused time in the flow table; here only its effect.
    poll_until("the idle flow to end", || async {
        match state.udp_flows() {
            0 => Ok(()),
            n => Err(format!("{n} flows")),
        }
    })
    .await;
    assert_eq!(endpoint(&state, servers[0].addr).active_flows(), 0);
    assert_eq!(Client::new().await.ask(vip).await.name, "a");
}

#[tokio::test]
async fn a_65507_byte_datagram_arrives_whole_both_ways() {
    let echo = UdpEcho::start().await;
    let vipd = Running::start(vec![udp_service("udp-large", &[echo.addr])], false).await;
    let vip = vipd.addr("udp-large");
    let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    for len in [1usize, 1500, 65_507] {
        let datagram: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
        client.send_to(&datagram, vip).await.unwrap();
        let mut buf = vec![0u8; 65_536];
        let (n, from) = within("the echo", client.recv_from(&mut buf))
            .await
            .unwrap();
        assert_eq!((n, from), (len, vip));
        assert_eq!(&buf[..n], &datagram[..], "{len} bytes came back changed");
    }
}

#[tokio::test]
async fn a_gso_train_from_a_client_reaches_the_endpoint_as_its_datagrams_and_back() {
    use std::os::fd::AsFd;
    use vipd::proxy::udp::batch::{self, Slots};

    let echo = UdpEcho::start().await;
    let vipd = Running::start(vec![udp_service("udp-gso", &[echo.addr])], false).await;
    let vip = vipd.addr("udp-gso");
    // Ten datagrams of 1,000 bytes and one of 300, numbered, sent as one GSO message.
    let sizes: Vec<usize> = (0..11).map(|i| if i == 10 { 300 } else { 1_000 }).collect();
    let train: Vec<u8> = sizes
        .iter()
        .enumerate()
        .flat_map(|(i, &len)| std::iter::repeat_n(i as u8, len))
        .collect();
    let client = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut out = Slots::new();
    out.fill(0, &train, 1_000, vip);
    assert_eq!(batch::send_to(client.as_fd(), &mut out, &[0]).unwrap(), 1);

    // The echo (no GRO) answered each datagram on its own; each came back whole and in order.
    let client = UdpSocket::from_std({
        client.set_nonblocking(true).unwrap();
        client
    })
    .unwrap();
    let mut buf = vec![0u8; 65_536];
    for (i, &len) in sizes.iter().enumerate() {
        let (n, from) = within("an echoed datagram", client.recv_from(&mut buf))
            .await
            .unwrap();
        assert_eq!((n, from), (len, vip), "datagram {i}");
        assert!(
            buf[..n].iter().all(|&b| b == i as u8),
            "datagram {i} intact"
        );
    }
    let labels = |direction| {
        [
            ("service", "udp-gso".to_owned()),
            ("endpoint", echo.addr.to_string()),
            ("direction", direction),
        ]
    };
    // Counted once the send returned, which may be just after the client got the datagram.
    for direction in ["in", "out"] {
        let labels = labels(direction.to_owned());
        let labels: Vec<(&str, &str)> = labels.iter().map(|(k, v)| (*k, v.as_str())).collect();
        poll_until(&format!("11 datagrams counted {direction}"), || async {
            match metric("vipd_datagrams_total", &labels) {
                Some(11.0) => Ok(()),
                seen => Err(format!("{seen:?}")),
            }
        })
        .await;
    }
}

#[tokio::test]
async fn an_ipv6_vip_serves_udp_to_ipv4_endpoints() {
    let servers = named(&["a"]).await;
    let mut service = udp_service("udp-v6", &addrs(&servers));
    service.vip = "::1".parse().unwrap();
    let vipd = Running::start(vec![service], false).await;
    let vip = vipd.addr("udp-v6");
    assert!(vip.is_ipv6());
    let socket = UdpSocket::bind("[::1]:0").await.unwrap();
    let query = txt_query(9);
    socket.send_to(&query, vip).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let (n, from) = within("an answer", socket.recv_from(&mut buf))
        .await
        .unwrap();
    assert_eq!(from, vip);
    assert_eq!(txt_answer(&buf[..n]), "a");
}

fn txt_query(id: u16) -> Vec<u8> {
    let mut query = Message::query();
    query.metadata.id = id;
    query.add_query(Query::query(
        Name::from_ascii(QUESTION).unwrap(),
        RecordType::TXT,
    ));
    query.to_vec().unwrap()
}

fn txt_answer(bytes: &[u8]) -> String {
    let message = Message::from_vec(bytes).expect("a DNS message");
    match &message.answers[0].data {
        RData::TXT(txt) => String::from_utf8_lossy(&txt.txt_data[0]).into_owned(),
        other => panic!("not a TXT answer: {other:?}"),
    }
}

/// A DNS query over TCP (RFC 1035 length prefix) to `addr`; the TXT answer.
async fn ask_tcp(addr: SocketAddr) -> String {
    let mut stream = TcpStream::connect(addr).await.expect("connect over TCP");
    let query = txt_query(7);
    stream.write_u16(query.len() as u16).await.unwrap();
    stream.write_all(&query).await.unwrap();
    let len = within("a TCP answer", stream.read_u16()).await.unwrap();
    let mut buf = vec![0u8; usize::from(len)];
    stream.read_exact(&mut buf).await.unwrap();
    txt_answer(&buf)
}

/// A port number free on 127.0.0.1 for both TCP and UDP.
fn free_port_both() -> u16 {
    for _ in 0..20 {
        let port = free_port();
        if std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no port free for both protocols");
}

#[tokio::test]
async fn a_mixed_service_serves_tcp_and_udp_on_one_port_and_publishes_both_srv_records() {
    // The endpoint answers over UDP and TCP on one port, as DNS servers do.
    let server = NamedDns::start("both").await;
    let port = free_port_both();
    let mut service = udp_service("udp-mixed", &[server.addr]);
    service.ports = [Protocol::Udp, Protocol::Tcp]
        .into_iter()
        .map(|protocol| ServicePort {
            port,
            target_port: server.addr.port(),
            protocol,
            name: Some("dns".to_owned()),
            accept_proxy_protocol: false,
        })
        .collect();
    let mut cfg = config(vec![service], false);
    cfg.dns = Some(DnsServer {
        listen: "127.0.0.1:0".parse().unwrap(),
        zone: "svc.test".to_owned(),
        ttl: Duration::from_secs(5),
        forward: vec![],
    });
    let vipd = Running::start_config(cfg).await;
    let vip = SocketAddr::from(([127, 0, 0, 1], port));
    assert_eq!(vipd.service("udp-mixed").bound(), vec![vip, vip]);

    let mut client = Client::new().await;
    assert_eq!(client.ask(vip).await.name, "both");
    assert_eq!(ask_tcp(vip).await, "both");
    let status = vipd.service("udp-mixed").status();
    let protocols: Vec<&str> = status.ports.iter().map(|p| p.protocol).collect();
    assert_eq!(protocols, ["udp", "tcp"]);
    assert_eq!(status.endpoints[0].active_flows, 1);

    let dns = vipd.dns.expect("dns bound");
    for proto in ["udp", "tcp"] {
        let mut query = Message::query();
        query.metadata.id = 3;
        query.add_query(Query::query(
            Name::from_ascii(format!("_dns._{proto}.udp-mixed.svc.test.")).unwrap(),
            RecordType::SRV,
        ));
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        socket.send_to(&query.to_vec().unwrap(), dns).await.unwrap();
        let mut buf = vec![0u8; 4096];
        let (n, _) = within("an SRV answer", socket.recv_from(&mut buf))
            .await
            .unwrap();
        let reply = Message::from_vec(&buf[..n]).unwrap();
        let RData::SRV(srv) = &reply.answers[0].data else {
            panic!("not an SRV answer for {proto}: {reply:?}")
        };
        assert_eq!(srv.port, port, "{proto}");
    }
}

#[tokio::test]
async fn endpoints_behind_udp_ports_only_are_not_probed_over_tcp() {
    let tcp = Backend::start("tcp", Behaviour::Name).await;
    let echo = UdpEcho::start().await;
    let mut service = with_health(
        udp_service("udp-probes", &[]),
        HealthCheck::tcp(),
        Duration::from_millis(100),
    );
    service.endpoints = vec![EndpointSpec::new(tcp.addr.ip(), None)];
    service.ports = vec![
        ServicePort {
            port: 0,
            target_port: tcp.addr.port(),
            protocol: Protocol::Tcp,
            name: None,
            accept_proxy_protocol: false,
        },
        ServicePort {
            port: 0,
            target_port: echo.addr.port(),
            protocol: Protocol::Udp,
            name: None,
            accept_proxy_protocol: false,
        },
    ];
    let vipd = Running::start(vec![service], false).await;
    vipd.ready().await;
    let state = vipd.service("udp-probes");
    // A TCP probe of the echo's port would be refused and mark the endpoint down.
    assert!(!endpoint(&state, echo.addr).is_checked());
    assert!(endpoint(&state, tcp.addr).is_checked());
    assert!(endpoint(&state, tcp.addr).is_healthy());
    let udp_vip = state.bound()[1];
    let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    client.send_to(b"ping", udp_vip).await.unwrap();
    let mut buf = [0u8; 16];
    let (n, _) = within("the echo", client.recv_from(&mut buf))
        .await
        .unwrap();
    assert_eq!(&buf[..n], b"ping");
}

#[tokio::test]
async fn fail_closed_drops_datagrams_while_no_endpoint_is_in_rotation() {
    let servers = named(&["a"]).await;
    let mut service = udp_service("udp-closed", &addrs(&servers));
    service.when_all_unhealthy = WhenAllUnhealthy::FailClosed;
    let vipd = Running::start(vec![service], false).await;
    let vip = vipd.addr("udp-closed");
    let mut client = Client::new().await;
    client.ask(vip).await;
    let state = vipd.service("udp-closed");
    state.set_draining(servers[0].addr, true).await.unwrap();

    client.send_query(vip).await;
    dropped("udp-closed", "no_endpoint").await;
    assert!(!client.has_pending(), "a dropped datagram is not forwarded");
    state.set_draining(servers[0].addr, false).await.unwrap();
    assert_eq!(client.ask(vip).await.name, "a");
}

#[tokio::test]
async fn fail_open_keeps_flows_where_they_are_while_every_endpoint_is_down() {
    let servers = named(&["a", "b"]).await;
    // Probes of a TCP port nobody listens on: every endpoint goes down.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let closed_port = closed.local_addr().unwrap().port();
    drop(closed);
    let mut service = with_health(
        udp_service("udp-open", &addrs(&servers)),
        HealthCheck::tcp(),
        Duration::from_millis(100),
    );
    service.health.port = Some(closed_port);
    let vipd = Running::start(vec![service], false).await;
    let vip = vipd.addr("udp-open");
    let mut events = vipd.service("udp-open").subscribe();
    // Placed before the first verdicts, or failed open already: either way it must stay.
    let mut client = Client::new().await;
    let first = client.ask(vip).await.name;
    for server in &servers {
        if vipd
            .service("udp-open")
            .endpoint(server.addr)
            .unwrap()
            .is_healthy()
        {
            next_change(&mut events, server.addr, Change::Down).await;
        }
    }
    for _ in 0..5 {
        assert_eq!(
            client.ask(vip).await.name,
            first,
            "no churn between equally bad endpoints"
        );
    }
    // New flows are still served, over every endpoint.
    let mut names = Vec::new();
    for _ in 0..2 {
        names.push(Client::new().await.ask(vip).await.name);
    }
    names.sort();
    assert_eq!(names, ["a", "b"]);
    assert!(
        metric(
            "vipd_no_healthy_endpoints_total",
            &[("service", "udp-open")]
        )
        .unwrap()
            >= 2.0
    );
}

#[tokio::test]
async fn a_udp_check_sends_a_query_and_marks_an_endpoint_down_when_it_stops_answering() {
    let mut servers = named(&["a", "b"]).await;
    let mut svc = with_health(
        udp_service("udp-probed", &addrs(&servers)),
        HealthCheck::Udp(vipd::config::UdpCheck {
            send: txt_query(7),
            // The answer holds the question's name, as every server gives it.
            expect: Some(b"\x01a".to_vec()),
        }),
        Duration::from_millis(100),
    );
    svc.health.jitter = 0.0;
    let vipd = Running::start(vec![svc], false).await;
    vipd.ready().await;
    let service = vipd.service("udp-probed");
    let (a, b) = (servers[0].addr, servers[1].addr);
    // Only `a` answers with its name in the TXT record: `b` fails the expectation.
    assert!(endpoint(&service, a).is_healthy());
    assert!(!endpoint(&service, b).is_healthy());

    // `a` stops: its probes get ICMP port unreachable, and it is marked down.
    let mut events = service.subscribe();
    stop_first(&mut servers).await;
    next_change(&mut events, a, Change::Down).await;
}
