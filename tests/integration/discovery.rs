//! DNS discovery end to end: a real DNS server on loopback whose records change, and vipd's
//! traffic following them.

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use vipd::config::{Discovery, DiscoverySource};
use vipd::service::Change;

use crate::support::backend::Behaviour;
use crate::support::dns_server::TestDns;
use crate::support::{Backend, Running, next_change, service, within};

/// Three name backends on 127.0.0.2-4, all on one port (the service's target port).
async fn backends_on_one_port() -> Vec<Backend> {
    for _ in 0..20 {
        let first = Backend::start_on("127.0.0.2:0".parse().unwrap(), "b2", Behaviour::Name).await;
        let port = first.addr.port();
        let mut all = vec![first];
        for (ip, name) in [("127.0.0.3", "b3"), ("127.0.0.4", "b4")] {
            let addr = SocketAddr::new(ip.parse().unwrap(), port);
            match Backend::try_start_at(addr, name, Behaviour::Name).await {
                Some(backend) => all.push(backend),
                None => break,
            }
        }
        if all.len() == 3 {
            return all;
        }
    }
    panic!("no port free on 127.0.0.2-4");
}

async fn names_through(addr: SocketAddr, connections: usize) -> HashSet<String> {
    let mut names = HashSet::new();
    for _ in 0..connections {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let mut text = String::new();
        stream.read_to_string(&mut text).await.unwrap();
        names.insert(text);
    }
    names
}

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

#[tokio::test]
async fn traffic_follows_dns_as_replicas_scale() {
    let backends = backends_on_one_port().await;
    let port = backends[0].addr.port();
    let dns = TestDns::start().await;
    dns.set_addresses("web.test.", 0, &[ip("127.0.0.2"), ip("127.0.0.3")]);

    let mut svc = service("discovered", &[]);
    svc.endpoints.clear();
    svc.ports[0].target_port = port;
    svc.discovery = Some(Discovery {
        source: DiscoverySource::Dns("web.test.".to_owned()),
        nameservers: vec![dns.addr()],
        min_refresh: Duration::from_millis(50),
        max_refresh: Duration::from_millis(100),
    });
    let vipd = Running::start(vec![svc], false).await;
    let state = vipd.service("discovered");
    let mut events = state.subscribe();
    vipd.ready().await;
    let vip = vipd.addr("discovered");
    let two: HashSet<String> = ["b2", "b3"].map(String::from).into();
    assert_eq!(names_through(vip, 4).await, two);

    // Scale up: the third replica gets traffic once DNS says so.
    dns.set_addresses(
        "web.test.",
        0,
        &[ip("127.0.0.2"), ip("127.0.0.3"), ip("127.0.0.4")],
    );
    next_change(&mut events, backends[2].addr, Change::Added).await;
    let three: HashSet<String> = ["b2", "b3", "b4"].map(String::from).into();
    assert_eq!(names_through(vip, 6).await, three);

    // Scale down to one.
    dns.set_addresses("web.test.", 0, &[ip("127.0.0.4")]);
    within("both removed", async {
        let mut removed = HashSet::new();
        while removed.len() < 2 {
            let event = events.recv().await.unwrap();
            if event.change == Change::Removed {
                removed.insert(event.endpoint);
            }
        }
        assert_eq!(removed, HashSet::from([backends[0].addr, backends[1].addr]));
    })
    .await;
    let one: HashSet<String> = ["b4"].map(String::from).into();
    assert_eq!(names_through(vip, 3).await, one);
    // Removed endpoints with no connections are forgotten.
    within("removed endpoints forgotten", async {
        while state.endpoints().len() != 1 {
            events.recv().await.unwrap();
        }
    })
    .await;
}
