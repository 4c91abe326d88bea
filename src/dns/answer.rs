//! The authoritative answers: the zone's SOA, `<service>.<zone>` A/AAAA → the VIP,
//! `_<port>._<proto>.<service>.<zone>` SRV → the port, and `<replica>.<service>.<zone>` A/AAAA →
//! that replica's address while it is in rotation (NXDOMAIN otherwise).

use std::net::IpAddr;

use hickory_proto::op::{LowerQuery, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, SOA, SRV};
use hickory_proto::rr::{Name, RData, Record, RecordType};

use super::Handler;
use super::records::{PortRecord, ServiceRecords};

/// An authoritative answer: response code and the three sections.
#[derive(Debug, Default)]
pub(super) struct Answer {
    pub(super) rcode: ResponseCode,
    pub(super) answers: Vec<Record>,
    pub(super) authorities: Vec<Record>,
    pub(super) additionals: Vec<Record>,
}

impl Handler {
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
    pub(super) fn answer(
        &self,
        query: &LowerQuery,
        front: &[Vec<u8>],
        records: &ServiceRecords,
    ) -> Answer {
        let name = Name::from(query.name()).to_lowercase();
        let qtype = query.query_type();
        let soa = self.soa(records.serial());
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
            // `<replica>.<service>`: a named endpoint while it is in rotation. Replica names
            // are DNS labels, which never start with '_'.
            [replica, label] if !replica.starts_with(b"_") => {
                let Some(service) = service(label) else {
                    return nxdomain(soa);
                };
                let addresses = match (&service.replicas, std::str::from_utf8(replica)) {
                    (Some(replicas), Ok(replica)) => replicas.replica_addresses(replica),
                    _ => Vec::new(),
                };
                if addresses.is_empty() {
                    return nxdomain(soa);
                }
                let answers: Vec<Record> = addresses
                    .into_iter()
                    .filter(|ip| {
                        matches!(
                            (qtype, ip),
                            (RecordType::A, IpAddr::V4(_))
                                | (RecordType::AAAA, IpAddr::V6(_))
                                | (RecordType::ANY, _)
                        )
                    })
                    .map(|ip| self.address(name.clone(), ip))
                    .collect();
                if answers.is_empty() {
                    nodata(soa)
                } else {
                    Answer {
                        answers,
                        ..Answer::default()
                    }
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
}

/// Whether label `proto` (`_tcp`) is the protocol of `port`.
fn is_proto(proto: &[u8], port: &PortRecord) -> bool {
    proto.strip_prefix(b"_") == Some(port.protocol.as_str().as_bytes())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use tokio::sync::watch;

    use super::*;
    use crate::config::{self, Protocol};
    use crate::dns::Replicas;

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
                Some(Arc::new(TwoReplicas) as Arc<dyn Replicas>),
            ),
            ("v6".to_owned(), "fd00::1".parse().unwrap(), vec![], None),
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

    /// A replica view with `db-0` in rotation on two addresses; every other name is out of
    /// rotation or unknown.
    #[derive(Debug)]
    struct TwoReplicas;

    impl Replicas for TwoReplicas {
        fn replica_addresses(&self, name: &str) -> Vec<IpAddr> {
            match name {
                "db-0" => vec!["10.0.1.1".parse().unwrap(), "fd00::11".parse().unwrap()],
                _ => Vec::new(),
            }
        }
    }

    #[test]
    fn replicas_answer_while_in_rotation() {
        let h = handler(records());
        let a = ask(&h, "DB-0.web.svc.test.", RecordType::A);
        assert_eq!(a.rcode, ResponseCode::NoError);
        let RData::A(ip) = &a.answers[0].data else {
            panic!("not A")
        };
        assert_eq!(ip.0.to_string(), "10.0.1.1");
        assert_eq!(a.answers[0].name.to_ascii(), "db-0.web.svc.test.");
        let aaaa = ask(&h, "db-0.web.svc.test.", RecordType::AAAA);
        assert_eq!(aaaa.answers.len(), 1);
        assert_eq!(
            ask(&h, "db-0.web.svc.test.", RecordType::ANY).answers.len(),
            2
        );
        // A known replica without an address of the type: NOERROR, no data.
        let mx = ask(&h, "db-0.web.svc.test.", RecordType::MX);
        assert_eq!((mx.rcode, mx.answers.len()), (ResponseCode::NoError, 0));
        // Out of rotation, unknown, or a service without replicas: NXDOMAIN.
        for name in [
            "db-1.web.svc.test.",
            "db-0.v6.svc.test.",
            "db-0.nope.svc.test.",
        ] {
            let a = ask(&h, name, RecordType::A);
            assert_eq!(a.rcode, ResponseCode::NXDomain, "{name}");
            assert_eq!(a.authorities.len(), 1, "{name}: SOA for negative caching");
        }
    }
}
