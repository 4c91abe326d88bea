//! The immutable per-service view the data plane reads: the service's current settings, and for
//! each service port where new connections go (the tier in rotation, built with its picker's
//! precomputation) and the picker state. Rebuilt whole by the owner task and swapped in at
//! once, so settings, endpoints, health, weights and tiers always agree.

use std::net::IpAddr;
use std::sync::Arc;

use super::Endpoint;
use crate::balance::{Candidate, MaglevTables, PickerState, Tier};
use crate::config::{self, Balance, Protocol, WhenAllUnhealthy};

/// Everything the data plane needs to route a new connection of one service.
#[derive(Debug)]
pub struct Snapshot {
    /// The service's settings as of this snapshot.
    pub config: Arc<config::Service>,
    /// One pool per service port, in config order.
    pub ports: Vec<PortPool>,
    /// Every endpoint the service knows, including removed ones still draining (for status).
    pub endpoints: Vec<Arc<Endpoint>>,
}

impl Snapshot {
    /// The pool behind the service port configured as `port` of `protocol` (a TCP and a UDP
    /// port of one number may forward to different target ports).
    pub fn pool(&self, protocol: Protocol, port: u16) -> Option<&PortPool> {
        self.ports
            .iter()
            .find(|p| p.port == port && p.protocol == protocol)
    }
}

/// Which endpoints a new connection of a port may use now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rotation {
    /// Primary-tier endpoints in rotation.
    Primary,
    /// No primary endpoint is in rotation; backup-tier endpoints are.
    Backup,
    /// Nothing is in rotation: every endpoint that is not draining (fail open).
    FailedOpen,
    /// Nothing is in rotation and the service fails closed, or it has no endpoint at all.
    Closed,
}

/// Where new connections of one service port go.
#[derive(Debug)]
pub struct PortPool {
    /// The service port as configured.
    pub port: u16,
    /// The port's protocol.
    pub protocol: Protocol,
    /// What `tier` holds.
    pub rotation: Rotation,
    /// The endpoints new connections may use (empty when `Closed`).
    pub tier: Tier,
    /// Whether picks read the client IP (maglev or affinity), so the data plane asks the socket
    /// for it only then.
    pub needs_client: bool,
    /// State that outlives rebuilds: rotation position, affinity table.
    pub picker: Arc<PickerState>,
}

/// How a pool is built: the service's placement settings.
#[derive(Debug, Clone, Copy)]
pub struct Placement {
    /// The policy.
    pub balance: Balance,
    /// Fail open or closed.
    pub when_all_unhealthy: WhenAllUnhealthy,
    /// Whether affinity is on.
    pub affinity: bool,
}

impl Placement {
    /// The placement settings of `service`.
    pub fn of(service: &config::Service) -> Self {
        Placement {
            balance: service.balance,
            when_all_unhealthy: service.when_all_unhealthy,
            affinity: !matches!(service.session_affinity, config::SessionAffinity::None),
        }
    }
}

impl PortPool {
    /// Builds the pool of service port `port` of `protocol` from its endpoints, taking each
    /// endpoint's state, tier and effective weight as they are now.
    pub fn new(
        (protocol, port): (Protocol, u16),
        endpoints: &[Arc<Endpoint>],
        placement: Placement,
        picker: Arc<PickerState>,
        tables: &mut MaglevTables,
    ) -> Self {
        let candidates = |keep: &dyn Fn(&Endpoint) -> bool| -> Vec<Candidate> {
            endpoints
                .iter()
                .filter(|e| keep(e))
                .map(|e| Candidate {
                    endpoint: Arc::clone(e),
                    // Maglev ignores slow start: a ramp would move clients twice.
                    weight: if placement.balance == Balance::Maglev {
                        e.weight()
                    } else {
                        e.effective_weight()
                    },
                })
                .collect()
        };
        let mut rotation = Rotation::Primary;
        let mut chosen = candidates(&|e| e.in_rotation() && !e.is_backup());
        if chosen.is_empty() {
            rotation = Rotation::Backup;
            chosen = candidates(&|e| e.in_rotation() && e.is_backup());
        }
        if chosen.is_empty() {
            rotation = Rotation::Closed;
            if placement.when_all_unhealthy == WhenAllUnhealthy::FailOpen {
                // A health check can be wrong; a closed door is certainly wrong.
                chosen = candidates(&|e| !e.is_draining());
                if !chosen.is_empty() {
                    rotation = Rotation::FailedOpen;
                }
            }
        }
        PortPool {
            port,
            protocol,
            rotation,
            tier: Tier::build(placement.balance, chosen, tables),
            needs_client: placement.balance == Balance::Maglev || placement.affinity,
            picker,
        }
    }

    /// Where a connection from `client` starts in `self.tier` (not `Closed`): the endpoint of
    /// the client's previous connection while affinity holds, else the policy's pick. The
    /// clock is read only with affinity on.
    pub fn first(
        &self,
        client: Option<IpAddr>,
        affinity_timeout: Option<std::time::Duration>,
    ) -> usize {
        if let (Some(table), Some(timeout), Some(ip), true) = (
            self.picker.affinity(),
            affinity_timeout,
            client,
            self.in_rotation(),
        ) && let Some(position) = table
            .lookup(ip, tokio::time::Instant::now(), timeout)
            .and_then(|id| self.tier.position(id))
        {
            return position;
        }
        self.tier.pick(&self.picker, client)
    }

    /// Remembers where `client` got its connection, with affinity on and endpoints in rotation
    /// (the client of a failed-open service is placed anew once an endpoint is back).
    pub fn remember(&self, client: Option<IpAddr>, endpoint: &Endpoint) {
        if let (Some(table), Some(ip), true) = (self.picker.affinity(), client, self.in_rotation())
        {
            table.remember(ip, endpoint.id(), tokio::time::Instant::now());
        }
    }

    /// The endpoints in rotation that new connections go to (empty when failed open or
    /// closed).
    pub fn in_rotation_candidates(&self) -> &[Candidate] {
        if self.in_rotation() {
            self.tier.candidates()
        } else {
            &[]
        }
    }

    /// Whether the tier holds endpoints in rotation (primary or backup).
    pub fn in_rotation(&self) -> bool {
        matches!(self.rotation, Rotation::Primary | Rotation::Backup)
    }
}
