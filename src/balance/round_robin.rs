//! Round robin: one shared atomic counter per service port.

use std::sync::atomic::{AtomicUsize, Ordering};

/// Hands out consecutive starting positions.
#[derive(Debug, Default)]
pub struct RoundRobin {
    next: AtomicUsize,
}

impl RoundRobin {
    /// The next position modulo `candidates` (non-zero).
    pub fn first(&self, candidates: usize) -> usize {
        // Relaxed: only the counter's own sequence matters, not ordering with other memory.
        self.next.fetch_add(1, Ordering::Relaxed) % candidates
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn visits_each_candidate_equally() {
        let rr = RoundRobin::default();
        let mut hits = [0usize; 3];
        for _ in 0..300 {
            hits[rr.first(3)] += 1;
        }
        assert_eq!(hits, [100, 100, 100]);
    }

    #[test]
    fn follows_a_shrinking_candidate_list() {
        let rr = RoundRobin::default();
        assert_eq!(rr.first(3), 0);
        assert_eq!(rr.first(3), 1);
        // Two candidates left: positions stay within range.
        assert!(rr.first(2) < 2);
        assert!(rr.first(1) == 0);
    }
}
