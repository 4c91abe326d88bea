//! `random`: each connection goes to a candidate drawn with probability weight / total.
//! Stateless, so it needs no coordination between workers; over many connections the shares
//! follow the weights, but any one stretch can be uneven (round robin is exact).

use super::weights::Cumulative;

/// A weighted random candidate.
pub fn pick(cumulative: &Cumulative) -> usize {
    cumulative.draw()
}
