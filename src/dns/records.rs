//! What the DNS server publishes: each service's VIP and ports, and a live view of its named
//! replicas. Immutable once built (a reload sends a new [`ServiceRecords`]); the replica view is
//! read at query time, so a replica leaving rotation is NXDOMAIN at once.

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use crate::config::{Config, Protocol};

/// The live addresses of a service's named replicas.
pub trait Replicas: Send + Sync + fmt::Debug {
    /// The addresses of the endpoints called `name` (lowercase) that are in rotation now
    /// (several when one replica has an IPv4 and an IPv6 address); empty otherwise.
    fn replica_addresses(&self, name: &str) -> Vec<IpAddr>;
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
#[derive(Debug, Clone)]
pub struct ServiceRecord {
    /// The service's VIP.
    pub vip: IpAddr,
    /// Its ports.
    pub ports: Vec<PortRecord>,
    /// Its named replicas, when it has any (`<name>.<service>.<zone>`).
    pub replicas: Option<Arc<dyn Replicas>>,
}

impl PartialEq for ServiceRecord {
    /// The same VIP, ports and replica view (the same source, not equal contents).
    fn eq(&self, other: &Self) -> bool {
        self.vip == other.vip
            && self.ports == other.ports
            && match (&self.replicas, &other.replicas) {
                (None, None) => true,
                (Some(a), Some(b)) => std::ptr::addr_eq(Arc::as_ptr(a), Arc::as_ptr(b)),
                _ => false,
            }
    }
}

impl Eq for ServiceRecord {}

/// Every service DNS answers for, by lowercase name. Immutable once built: a change is a new
/// value sent through the server's `watch` channel.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServiceRecords {
    services: HashMap<String, ServiceRecord>,
    serial: u32,
}

/// One service as [`ServiceRecords::new`] takes it: name, VIP, `(port name, protocol, port)`
/// per port, and its replica view.
pub type ServiceEntry = (
    String,
    IpAddr,
    Vec<(Option<String>, Protocol, u16)>,
    Option<Arc<dyn Replicas>>,
);

/// Serials of successive record sets, so a secondary or a cache can tell them apart.
static NEXT_SERIAL: AtomicU32 = AtomicU32::new(1);

impl ServiceRecords {
    /// The services of `config` with their configured ports (and no replica view).
    pub fn from_config(config: &Config) -> ServiceRecords {
        ServiceRecords::new(config.services.iter().map(|s| {
            let ports = s.ports.iter().map(|p| (p.name.clone(), p.protocol, p.port));
            (s.name.clone(), s.vip, ports.collect(), None)
        }))
    }

    /// Records from `(name, vip, [(port name, protocol, port)], replicas)` entries (e.g. with
    /// the ports actually bound, when the config asked for ephemeral ones).
    pub fn new(services: impl IntoIterator<Item = ServiceEntry>) -> ServiceRecords {
        let services = services
            .into_iter()
            .map(|(name, vip, ports, replicas)| {
                let ports = ports
                    .into_iter()
                    .map(|(name, protocol, port)| PortRecord {
                        name: name.map(|n| n.to_ascii_lowercase()),
                        protocol,
                        port,
                    })
                    .collect();
                (
                    name.to_ascii_lowercase(),
                    ServiceRecord {
                        vip,
                        ports,
                        replicas,
                    },
                )
            })
            .collect();
        ServiceRecords {
            services,
            serial: NEXT_SERIAL.fetch_add(1, Ordering::Relaxed),
        }
    }

    /// The serial of this record set (the SOA's).
    pub fn serial(&self) -> u32 {
        self.serial
    }

    /// The service called `name` (lowercase).
    pub fn get(&self, name: &str) -> Option<&ServiceRecord> {
        self.services.get(name)
    }
}
