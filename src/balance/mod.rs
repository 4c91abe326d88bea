//! Placement: where a new connection of a service port goes.
//!
//! The owner task builds a [`Tier`] whenever it rebuilds the snapshot: the endpoints a new
//! connection may use, with their effective weights, and what the policy precomputes over them
//! (a smooth round-robin schedule, cumulative weights, a Maglev table). On the connection path a
//! pick only reads that and a few atomics: no lock, no allocation. It returns where to start;
//! connect failover then walks on to the next candidates, so every attempt is a distinct
//! endpoint.
//!
//! State that must outlive rebuilds — the rotation position and the client-IP affinity table —
//! lives in [`PickerState`], one per service port, beside the snapshot.
//!
//! One file per policy: [`round_robin`], [`least_connections`], [`power_of_two`], [`random`],
//! and [`maglev`] (the table); [`weights`] holds the weighted draws; [`affinity`] the table.

pub mod affinity;
pub mod least_connections;
pub mod maglev;
pub mod power_of_two;
pub mod random;
pub mod round_robin;
pub mod weights;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use crate::config::{Balance, SessionAffinity};
use crate::service::Endpoint;

pub use affinity::AffinityTable;
pub use maglev::MaglevTable;

/// An effective weight of 100 per unit of configured weight: slow start ramps weights in
/// percent steps, and integer weights keep every pick free of floating point.
pub const FULL_WEIGHT_PERCENT: u32 = 100;

/// Client IPs remembered per service port with `session_affinity = "client_ip"`.
pub const AFFINITY_CAPACITY: usize = 65_536;

/// An endpoint as a pick sees it.
#[derive(Debug, Clone)]
pub struct Candidate {
    /// The endpoint (its live active count is read by the connection-count policies).
    pub endpoint: Arc<Endpoint>,
    /// Effective weight: configured weight × percent of the slow-start ramp (100 at full).
    pub weight: u32,
}

/// The endpoints a new connection may use, and what the policy precomputed over them.
#[derive(Debug)]
pub struct Tier {
    candidates: Box<[Candidate]>,
    plan: Plan,
    /// Endpoint id → position in `candidates`, for affinity lookups.
    positions: HashMap<u32, usize>,
}

/// Per-policy precomputation.
#[derive(Debug)]
enum Plan {
    RoundRobin(round_robin::Schedule),
    LeastConnections,
    PowerOfTwo(weights::Cumulative),
    Random(weights::Cumulative),
    Maglev(Arc<MaglevTable>),
}

impl Tier {
    /// Builds the tier of `candidates` for `policy`. Maglev tables come from `tables`, which
    /// reuses the table of an unchanged endpoint set.
    pub fn build(policy: Balance, candidates: Vec<Candidate>, tables: &mut MaglevTables) -> Tier {
        let weights: Vec<u32> = candidates.iter().map(|c| c.weight).collect();
        let plan = if candidates.is_empty() {
            // Never picked from (the data plane refuses an empty tier); the plan with no data.
            Plan::LeastConnections
        } else {
            match policy {
                Balance::RoundRobin => Plan::RoundRobin(round_robin::Schedule::new(&weights)),
                Balance::LeastConnections => Plan::LeastConnections,
                Balance::PowerOfTwo => Plan::PowerOfTwo(weights::Cumulative::new(&weights)),
                Balance::Random => Plan::Random(weights::Cumulative::new(&weights)),
                Balance::Maglev => {
                    let members: Vec<(SocketAddr, u32)> = candidates
                        .iter()
                        .map(|c| (c.endpoint.addr(), c.weight))
                        .collect();
                    Plan::Maglev(tables.get(members))
                }
            }
        };
        let positions = candidates
            .iter()
            .enumerate()
            .map(|(i, c)| (c.endpoint.id(), i))
            .collect();
        Tier {
            candidates: candidates.into_boxed_slice(),
            plan,
            positions,
        }
    }

    /// The candidates, in order; failover walks on from a pick in this order.
    pub fn candidates(&self) -> &[Candidate] {
        &self.candidates
    }

    /// True when no endpoint is in the tier.
    pub fn is_empty(&self) -> bool {
        self.candidates.is_empty()
    }

    /// Where the endpoint with `id` is in the tier, if it is.
    pub fn position(&self, id: u32) -> Option<usize> {
        self.positions.get(&id).copied()
    }

    /// Where a new connection from `client` starts; the tier must not be empty. `client` is
    /// only read by `maglev` (`None`, e.g. an unknown peer, hashes as the unspecified address).
    pub fn pick(&self, state: &PickerState, client: Option<IpAddr>) -> usize {
        debug_assert!(!self.candidates.is_empty());
        match &self.plan {
            Plan::RoundRobin(schedule) => schedule.pick(state.next_position()),
            Plan::LeastConnections => {
                least_connections::pick(&self.candidates, state.next_position())
            }
            Plan::PowerOfTwo(cumulative) => power_of_two::pick(&self.candidates, cumulative),
            Plan::Random(cumulative) => random::pick(cumulative),
            Plan::Maglev(table) => {
                table.lookup(client.unwrap_or(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED)))
            }
        }
    }
}

/// Picker state of one service port that outlives snapshot rebuilds: reloads and discovery
/// updates keep the rotation going and clients where they were.
#[derive(Debug)]
pub struct PickerState {
    /// Rotation position: round robin's place in its schedule, least-connections' tie-break.
    position: AtomicUsize,
    /// Client IP → endpoint id, with `session_affinity = "client_ip"`.
    affinity: Option<AffinityTable>,
}

impl PickerState {
    /// Fresh state; with `affinity` on, an empty table whose clock starts at `epoch`.
    pub fn new(affinity: SessionAffinity, epoch: tokio::time::Instant) -> Self {
        PickerState {
            position: AtomicUsize::new(0),
            affinity: match affinity {
                SessionAffinity::None => None,
                SessionAffinity::ClientIp { .. } => {
                    Some(AffinityTable::new(AFFINITY_CAPACITY, epoch))
                }
            },
        }
    }

    /// Whether this state fits `affinity` (a table exactly when affinity is on), so a reload
    /// can keep it.
    pub fn fits(&self, affinity: SessionAffinity) -> bool {
        self.affinity.is_some() == matches!(affinity, SessionAffinity::ClientIp { .. })
    }

    /// The affinity table, when affinity is on.
    pub fn affinity(&self) -> Option<&AffinityTable> {
        self.affinity.as_ref()
    }

    fn next_position(&self) -> usize {
        // Relaxed: only the counter's own sequence matters, not ordering with other memory.
        self.position.fetch_add(1, Ordering::Relaxed)
    }
}

/// Maglev tables of the current snapshot, so a rebuild that keeps a tier's endpoints and
/// weights (a health flip elsewhere, a slow-start step, a reload of other keys) reuses its
/// table instead of building 65,537 entries again.
#[derive(Debug, Default)]
pub struct MaglevTables {
    /// The tables of the last finished rebuild.
    current: Vec<BuiltTable>,
    /// The tables the rebuild under way uses so far.
    used: Vec<BuiltTable>,
}

/// A Maglev table and the members (address, weight) it was built from.
type BuiltTable = (Vec<(SocketAddr, u32)>, Arc<MaglevTable>);

impl MaglevTables {
    /// The table of `members`, built only when no table of the last round has them.
    fn get(&mut self, members: Vec<(SocketAddr, u32)>) -> Arc<MaglevTable> {
        if let Some((_, table)) = self.used.iter().find(|(m, _)| *m == members) {
            return Arc::clone(table);
        }
        let table = match self.current.iter().position(|(m, _)| *m == members) {
            Some(i) => self.current.swap_remove(i).1,
            None => Arc::new(MaglevTable::build(&members)),
        };
        self.used.push((members, Arc::clone(&table)));
        table
    }

    /// Ends a rebuild: tables no tier of it used are dropped.
    pub fn finish_round(&mut self) {
        self.current = std::mem::take(&mut self.used);
    }
}

/// The affinity timeout of `affinity`, if on.
pub fn affinity_timeout(affinity: SessionAffinity) -> Option<Duration> {
    match affinity {
        SessionAffinity::None => None,
        SessionAffinity::ClientIp { timeout } => Some(timeout),
    }
}
