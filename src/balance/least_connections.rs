//! `least_connections`: the candidate with the fewest active connections per unit of weight.
//! UDP flows count as connections here (see [`crate::service::Endpoint::load`]).
//!
//! Every candidate is compared (O(n): read one atomic each); the scan starts at the rotation
//! position and keeps the first best it meets, so ties — an idle service above all — rotate
//! instead of always landing on the first endpoint. Active counts include connects in flight,
//! so a burst of new connections spreads instead of piling onto the endpoint that looked
//! idle before its first connect completed.

use super::Candidate;

/// The least loaded candidate, ties broken from `position` on.
pub fn pick(candidates: &[Candidate], position: usize) -> usize {
    let n = candidates.len();
    let start = position % n;
    let mut best = start;
    let mut best_load = load(&candidates[start]);
    for step in 1..n {
        let mut i = start + step;
        if i >= n {
            i -= n;
        }
        let candidate_load = load(&candidates[i]);
        if fewer(candidate_load, best_load) {
            best = i;
            best_load = candidate_load;
        }
    }
    best
}

/// Active connections (and UDP flows) and weight of a candidate.
#[derive(Debug, Clone, Copy)]
pub(super) struct Load {
    active: u64,
    weight: u32,
}

pub(super) fn load(candidate: &Candidate) -> Load {
    Load {
        active: candidate.endpoint.load(),
        weight: candidate.weight,
    }
}

/// Whether `a` has strictly fewer connections per weight than `b` (cross-multiplied: exact,
/// and no division on the connection path).
pub(super) fn fewer(a: Load, b: Load) -> bool {
    u128::from(a.active) * u128::from(b.weight) < u128::from(b.active) * u128::from(a.weight)
}
