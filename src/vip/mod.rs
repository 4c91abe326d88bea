//! VIP ownership: puts each managed service's VIP on its interface (VIP/32 or /128, over
//! rtnetlink) while vipd runs, announces it to the link, and takes away only what it added.
//!
//! [`VipManager::apply`] reconciles towards a desired set, so start-up, a reload (service
//! added, removed, VIP changed) and shutdown ([`VipManager::release_all`]) are the same
//! operation. An address that was already on the interface before vipd wanted it is never
//! removed: someone else owns it.

mod announce;

use std::collections::HashMap;
use std::net::IpAddr;

use futures_util::TryStreamExt;
use rtnetlink::Handle;
use rtnetlink::packet_route::address::{AddressAttribute, AddressFlags, AddressMessage};
use rtnetlink::packet_route::link::LinkFlags;

/// How often owned VIPs on non-loopback interfaces are announced again, so neighbours that
/// missed the first announcement (or flushed their caches) learn the address.
pub const ANNOUNCE_PERIOD: std::time::Duration = std::time::Duration::from_secs(30);

/// `EPERM`, which netlink returns (negated) without CAP_NET_ADMIN.
const EPERM: i32 = 1;

/// Why a VIP could not be managed.
#[derive(Debug, thiserror::Error)]
pub enum VipError {
    /// The netlink socket could not be opened.
    #[error("vip: cannot open a netlink socket: {0}")]
    Netlink(#[source] std::io::Error),
    /// The process lacks the capability to change addresses.
    #[error(
        "service \"{service}\": cannot add {vip} to {interface}: operation not permitted; \
         manage_vip needs CAP_NET_ADMIN (run as root or grant it, e.g. AmbientCapabilities=CAP_NET_ADMIN CAP_NET_RAW)"
    )]
    Permission {
        /// The service.
        service: String,
        /// Its VIP.
        vip: IpAddr,
        /// The interface.
        interface: String,
    },
    /// The interface does not exist.
    #[error("service \"{service}\": vip_interface \"{interface}\" does not exist")]
    NoInterface {
        /// The service.
        service: String,
        /// The interface.
        interface: String,
    },
    /// Any other netlink failure.
    #[error("service \"{service}\": cannot {action} {vip} on {interface}: {message}")]
    Request {
        /// The service.
        service: String,
        /// What was attempted (`add`, `remove`, `look up`).
        action: &'static str,
        /// Its VIP.
        vip: IpAddr,
        /// The interface.
        interface: String,
        /// The netlink error.
        message: String,
    },
}

/// One VIP a service wants on an interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DesiredVip {
    /// The service (for logs, errors and the metric label).
    pub service: String,
    /// The address.
    pub vip: IpAddr,
    /// The interface name.
    pub interface: String,
}

impl DesiredVip {
    /// The managed VIPs of `services`.
    pub fn from_services(services: &[crate::config::Service]) -> Vec<DesiredVip> {
        services
            .iter()
            .filter(|s| s.manage_vip)
            .map(|s| DesiredVip {
                service: s.name.clone(),
                vip: s.vip,
                interface: s.vip_interface.clone(),
            })
            .collect()
    }
}

/// A VIP on an interface that the manager tracks.
#[derive(Debug)]
struct Held {
    service: String,
    index: u32,
    loopback: bool,
    /// Added by vipd (removed when no longer wanted) or found there (left alone).
    added: bool,
}

/// Adds, announces and removes VIPs.
#[derive(Debug)]
pub struct VipManager {
    handle: Handle,
    held: HashMap<(IpAddr, String), Held>,
}

impl VipManager {
    /// Opens a netlink connection (served by a task on the current runtime).
    pub fn new() -> Result<VipManager, VipError> {
        let (connection, handle, _) = rtnetlink::new_connection().map_err(VipError::Netlink)?;
        tokio::spawn(connection);
        Ok(VipManager {
            handle,
            held: HashMap::new(),
        })
    }

    /// Makes the held VIPs exactly `desired`: adds the missing ones (announcing them), removes
    /// the ones vipd added that are no longer desired. Stops at the first error; what was done
    /// until then stays recorded, so a later call or [`VipManager::release_all`] cleans up.
    pub async fn apply(&mut self, desired: &[DesiredVip]) -> Result<(), VipError> {
        let keys: Vec<(IpAddr, String)> = desired
            .iter()
            .map(|d| (d.vip, d.interface.clone()))
            .collect();
        let stale: Vec<(IpAddr, String)> = self
            .held
            .keys()
            .filter(|k| !keys.contains(k))
            .cloned()
            .collect();
        for key in stale {
            self.release(&key).await?;
        }
        for want in desired {
            let key = (want.vip, want.interface.clone());
            if let Some(held) = self.held.get_mut(&key) {
                if held.service != want.service {
                    ::metrics::gauge!(crate::metrics::VIP_OWNED, "service" => held.service.clone())
                        .set(0.0);
                    held.service = want.service.clone();
                    ::metrics::gauge!(crate::metrics::VIP_OWNED, "service" => want.service.clone())
                        .set(1.0);
                }
                continue;
            }
            let held = self.acquire(want).await?;
            ::metrics::gauge!(crate::metrics::VIP_OWNED, "service" => want.service.clone())
                .set(1.0);
            if !held.loopback {
                announce::announce(want.vip, held.index, &want.interface);
            }
            self.held.insert(key, held);
        }
        Ok(())
    }

    /// Removes every VIP vipd added; called on shutdown. Errors are logged, not returned, so
    /// one failure does not keep the other addresses.
    pub async fn release_all(&mut self) {
        let keys: Vec<(IpAddr, String)> = self.held.keys().cloned().collect();
        for key in keys {
            if let Err(error) = self.release(&key).await {
                tracing::warn!(%error, "vip: cannot remove");
            }
        }
    }

    /// Announces every held VIP on a non-loopback interface again.
    pub fn announce_all(&self) {
        for ((vip, interface), held) in &self.held {
            if !held.loopback {
                announce::announce(*vip, held.index, interface);
            }
        }
    }

    async fn acquire(&self, want: &DesiredVip) -> Result<Held, VipError> {
        let request_error = |action, e: rtnetlink::Error| match &e {
            rtnetlink::Error::NetlinkError(m) if m.raw_code().abs() == EPERM => {
                VipError::Permission {
                    service: want.service.clone(),
                    vip: want.vip,
                    interface: want.interface.clone(),
                }
            }
            _ => VipError::Request {
                service: want.service.clone(),
                action,
                vip: want.vip,
                interface: want.interface.clone(),
                message: e.to_string(),
            },
        };
        let link = self
            .handle
            .link()
            .get()
            .match_name(want.interface.clone())
            .execute()
            .try_next()
            .await;
        let link = match link {
            Ok(Some(link)) => link,
            // ENODEV is how the kernel says "no such interface".
            Ok(None) | Err(rtnetlink::Error::NetlinkError(_)) => {
                return Err(VipError::NoInterface {
                    service: want.service.clone(),
                    interface: want.interface.clone(),
                });
            }
            Err(e) => return Err(request_error("look up", e)),
        };
        let index = link.header.index;
        let loopback = link.header.flags.contains(LinkFlags::Loopback);
        let existing = self
            .handle
            .address()
            .get()
            .set_link_index_filter(index)
            .set_address_filter(want.vip)
            .execute()
            .try_next()
            .await
            .map_err(|e| request_error("look up", e))?;
        if existing.is_some() {
            tracing::info!(service = %want.service, vip = %want.vip, interface = %want.interface,
                "vip: already on the interface; leaving it there on exit");
            return Ok(Held {
                service: want.service.clone(),
                index,
                loopback,
                added: false,
            });
        }
        let mut add = self
            .handle
            .address()
            .add(index, want.vip, host_prefix(want.vip));
        // No duplicate address detection: the VIP must be usable at once, and vipd is its owner.
        add.message_mut()
            .attributes
            .push(AddressAttribute::Flags(AddressFlags::Nodad));
        add.execute().await.map_err(|e| request_error("add", e))?;
        tracing::info!(service = %want.service, vip = %want.vip, interface = %want.interface, "vip: added");
        Ok(Held {
            service: want.service.clone(),
            index,
            loopback,
            added: true,
        })
    }

    async fn release(&mut self, key: &(IpAddr, String)) -> Result<(), VipError> {
        let Some(held) = self.held.remove(key) else {
            return Ok(());
        };
        ::metrics::gauge!(crate::metrics::VIP_OWNED, "service" => held.service.clone()).set(0.0);
        if !held.added {
            return Ok(());
        }
        let (vip, interface) = key;
        let found = self
            .handle
            .address()
            .get()
            .set_link_index_filter(held.index)
            .set_address_filter(*vip)
            .execute()
            .try_collect::<Vec<AddressMessage>>()
            .await;
        let error = |e: rtnetlink::Error| VipError::Request {
            service: held.service.clone(),
            action: "remove",
            vip: *vip,
            interface: interface.clone(),
            message: e.to_string(),
        };
        for message in found.map_err(error)? {
            self.handle
                .address()
                .del(message)
                .execute()
                .await
                .map_err(error)?;
        }
        tracing::info!(service = %held.service, %vip, %interface, "vip: removed");
        Ok(())
    }
}

/// The prefix length of a single address: /32 or /128.
fn host_prefix(ip: IpAddr) -> u8 {
    match ip {
        IpAddr::V4(_) => 32,
        IpAddr::V6(_) => 128,
    }
}
