//! One DNS lookup of a discovery source: a hickory resolver with its cache off, asked for A and
//! AAAA (or SRV, then A and AAAA of each target), turned into a sorted endpoint set and the time
//! that answer may be kept.
//!
//! Negative answers (NXDOMAIN, or no records of the type) are answers, not failures: the set they
//! give is empty. Everything else that stops a lookup (timeout, SERVFAIL, REFUSED, I/O) is a
//! [`LookupError`], so the caller can keep the last good set.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use hickory_resolver::TokioResolver;
use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolveHosts, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::{DnsError, NetError};
use hickory_resolver::proto::rr::{Name, RData, RecordType};

use crate::config::{DiscoverySource, EndpointSpec};

/// Why a lookup gave no usable answer.
#[derive(Debug, thiserror::Error)]
pub enum LookupError {
    /// The resolver could not be set up (e.g. the system configuration is unreadable).
    #[error("cannot set up the resolver: {0}")]
    Setup(#[source] NetError),
    /// A query failed: timeout, SERVFAIL, REFUSED, network error.
    #[error("{record_type} lookup of {name} failed: {source}")]
    Query {
        /// The name asked for.
        name: String,
        /// The record type asked for.
        record_type: RecordType,
        /// What the resolver reported.
        #[source]
        source: NetError,
    },
}

/// A usable answer: the endpoints it names and how long it may be kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// Sorted and deduplicated, so equal sets compare equal.
    pub endpoints: Vec<EndpointSpec>,
    /// The smallest TTL among the records (or the negative TTL of an empty answer); `None`
    /// when the answer carried none (an empty answer without SOA).
    pub ttl: Option<Duration>,
}

/// A resolver for discovery lookups.
#[derive(Clone)]
pub struct DnsResolver {
    resolver: TokioResolver,
}

impl DnsResolver {
    /// A resolver asking `nameservers` over UDP (TCP for truncated answers), or the system
    /// configuration's nameservers (with its search domains and options) when empty.
    pub fn new(nameservers: &[SocketAddr]) -> Result<Self, LookupError> {
        let mut builder = if nameservers.is_empty() {
            TokioResolver::builder_tokio().map_err(LookupError::Setup)?
        } else {
            let servers = nameservers
                .iter()
                .map(|addr| {
                    let connections = [ConnectionConfig::udp(), ConnectionConfig::tcp()]
                        .into_iter()
                        .map(|mut c| {
                            c.port = addr.port();
                            c
                        })
                        .collect();
                    NameServerConfig::new(addr.ip(), true, connections)
                })
                .collect();
            TokioResolver::builder_with_config(
                ResolverConfig::from_name_servers(servers),
                TokioRuntimeProvider::default(),
            )
        };
        let options = builder.options_mut();
        // Caching is the caller's job, driven by the TTL; a resolver cache in between could
        // hand back an answer after the caller decided it expired.
        options.cache_size = 0;
        // Discovery follows DNS; /etc/hosts entries carry no TTL and would pin the set.
        options.use_hosts_file = ResolveHosts::Never;
        let resolver = builder.build().map_err(LookupError::Setup)?;
        Ok(DnsResolver { resolver })
    }

    /// Looks `source` up once.
    pub async fn resolve(&self, source: &DiscoverySource) -> Result<Answer, LookupError> {
        // Belt and braces with `cache_size = 0`: whatever the cache holds must not answer.
        self.resolver.clear_cache();
        let (mut endpoints, ttl) = match source {
            DiscoverySource::Dns(name) => {
                let addresses = self.addresses(name).await?;
                let endpoints = addresses
                    .ips
                    .iter()
                    .map(|&ip| EndpointSpec::new(ip, None))
                    .collect::<Vec<_>>();
                (endpoints, addresses.ttl)
            }
            DiscoverySource::Srv(name) => {
                let (targets, mut ttl) = self.srv(name).await?;
                // RFC 2782: the lowest priority present is the one to use; the rest are backups.
                let primary = targets.iter().map(|t| t.priority).min();
                // Each distinct host is resolved once, however many records name it. One after
                // the other: a set is small and every query goes to a nearby nameserver.
                let mut hosts: BTreeMap<Name, Vec<SrvTarget>> = BTreeMap::new();
                for target in targets {
                    hosts.entry(target.host.clone()).or_default().push(target);
                }
                let mut endpoints = Vec::new();
                for (host, records) in hosts {
                    let addresses = self.addresses(&host.to_string()).await?;
                    for &ip in &addresses.ips {
                        for record in &records {
                            endpoints.push(EndpointSpec {
                                ip,
                                port: Some(record.port),
                                weight: srv_weight(record.weight),
                                backup: Some(record.priority) != primary,
                                name: replica_name(&host),
                                check: true,
                                max_connections: None,
                            });
                        }
                    }
                    ttl = min_ttl(ttl, addresses.ttl);
                }
                (endpoints, ttl)
            }
        };
        // An address named twice keeps its best placement: primary before backup, then the
        // larger weight.
        endpoints.sort_by_key(|e| (e.ip, e.port, e.backup, std::cmp::Reverse(e.weight)));
        endpoints.dedup_by_key(|e| (e.ip, e.port));
        Ok(Answer { endpoints, ttl })
    }

    /// A and AAAA of `name`, with the smaller TTL of the two answers.
    async fn addresses(&self, name: &str) -> Result<Addresses, LookupError> {
        let (v4, v6) = tokio::join!(
            self.query(name, RecordType::A),
            self.query(name, RecordType::AAAA)
        );
        let (v4, v6) = (v4?, v6?);
        let ips = v4
            .records
            .iter()
            .chain(&v6.records)
            .filter_map(|data| match data {
                RData::A(a) => Some(IpAddr::V4(a.0)),
                RData::AAAA(aaaa) => Some(IpAddr::V6(aaaa.0)),
                // CNAMEs on the way: their TTL counts, their data does not.
                _ => None,
            })
            .collect();
        Ok(Addresses {
            ips,
            ttl: min_ttl(v4.ttl, v6.ttl),
        })
    }

    /// SRV records of `name`, skipping the "no service" target `.`.
    async fn srv(&self, name: &str) -> Result<(Vec<SrvTarget>, Option<Duration>), LookupError> {
        let answer = self.query(name, RecordType::SRV).await?;
        let targets = answer
            .records
            .iter()
            .filter_map(|data| match data {
                RData::SRV(srv) if !srv.target.is_root() => Some(SrvTarget {
                    host: srv.target.clone(),
                    port: srv.port,
                    priority: srv.priority,
                    weight: srv.weight,
                }),
                _ => None,
            })
            .collect();
        Ok((targets, answer.ttl))
    }

    /// One query. A negative answer is an empty, successful one.
    async fn query(&self, name: &str, record_type: RecordType) -> Result<Records, LookupError> {
        match self.resolver.lookup(name, record_type).await {
            Ok(lookup) => Ok(Records {
                ttl: lookup
                    .answers()
                    .iter()
                    .map(|r| Duration::from_secs(u64::from(r.ttl)))
                    .min(),
                records: lookup.answers().iter().map(|r| r.data.clone()).collect(),
            }),
            Err(NetError::Dns(DnsError::NoRecordsFound(none))) => Ok(Records {
                records: Vec::new(),
                ttl: none
                    .negative_ttl
                    .map(|secs| Duration::from_secs(u64::from(secs))),
            }),
            Err(source) => Err(LookupError::Query {
                name: name.to_owned(),
                record_type,
                source,
            }),
        }
    }
}

/// One SRV record's target.
struct SrvTarget {
    host: Name,
    port: u16,
    priority: u16,
    weight: u16,
}

/// An SRV weight as an endpoint weight: 0 ("rarely, if ever") becomes the smallest weight, 1;
/// weights above the largest endpoint weight, 1000, are capped there.
fn srv_weight(weight: u16) -> u32 {
    u32::from(weight).clamp(1, EndpointSpec::MAX_WEIGHT)
}

/// A StatefulSet replica's name: the first label of an SRV target
/// (`db-0.db.default.svc.cluster.local.` → `db-0`), when it is a valid DNS label.
fn replica_name(host: &Name) -> Option<String> {
    let label = host.iter().next()?;
    let label = std::str::from_utf8(label).ok()?.to_ascii_lowercase();
    crate::config::is_dns_label(&label).then_some(label)
}

/// The record data of one answer and its smallest TTL.
struct Records {
    records: Vec<RData>,
    ttl: Option<Duration>,
}

/// The addresses of one name and the smallest TTL of its A and AAAA answers.
struct Addresses {
    ips: Vec<IpAddr>,
    ttl: Option<Duration>,
}

/// The smaller of two TTLs; an unknown TTL (an empty answer without SOA) sets no bound.
fn min_ttl(a: Option<Duration>, b: Option<Duration>) -> Option<Duration> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}
