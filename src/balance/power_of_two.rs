//! `power_of_two`: two distinct candidates drawn by weight; the one with fewer active
//! connections per unit of weight wins, the first drawn on a tie (so idle services still
//! follow the weights). O(log n) per pick whatever the size, and nearly as good as a full
//! least-connections scan (Mitzenmacher's "power of two choices"; Envoy's least-request).

use super::Candidate;
use super::least_connections::{fewer, load};
use super::weights::Cumulative;

/// The less loaded of two weighted random candidates.
pub fn pick(candidates: &[Candidate], cumulative: &Cumulative) -> usize {
    let first = cumulative.draw();
    if candidates.len() < 2 {
        return first;
    }
    let second = cumulative.draw_other(first);
    if fewer(load(&candidates[second]), load(&candidates[first])) {
        second
    } else {
        first
    }
}
