//! Pickers: where a new connection starts in a service port's candidate list. The data plane
//! then tries candidates in order from there, so connect failover visits distinct endpoints.
//!
//! A pick must not lock or allocate: it is on the path of every connection.

mod round_robin;

pub use round_robin::RoundRobin;

use crate::config::Balance;

/// A balancing policy with its state (which outlives snapshot rebuilds).
#[derive(Debug)]
pub enum Picker {
    /// Round robin.
    RoundRobin(RoundRobin),
}

impl Picker {
    /// A fresh picker for `policy`.
    pub fn new(policy: Balance) -> Self {
        match policy {
            Balance::RoundRobin => Picker::RoundRobin(RoundRobin::default()),
        }
    }

    /// The policy this picker implements.
    pub fn policy(&self) -> Balance {
        match self {
            Picker::RoundRobin(_) => Balance::RoundRobin,
        }
    }

    /// Index in `0..candidates` of the first endpoint to try; `candidates` must be non-zero.
    pub fn first(&self, candidates: usize) -> usize {
        match self {
            Picker::RoundRobin(rr) => rr.first(candidates),
        }
    }
}
