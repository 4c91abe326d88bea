//! Weighted random draws over a tier's candidates: prefix sums built with the tier, and a
//! binary search per draw (O(log n), no allocation). The random numbers come from `fastrand`'s
//! per-thread generator: no lock, and workers never contend for it.

/// Running totals of the candidates' weights.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cumulative {
    /// `ends[i]` = sum of weights `0..=i`.
    ends: Box<[u64]>,
}

impl Cumulative {
    /// The prefix sums of `weights` (at least one, each ≥ 1).
    pub fn new(weights: &[u32]) -> Cumulative {
        let mut total = 0u64;
        let ends = weights
            .iter()
            .map(|&w| {
                total += u64::from(w.max(1));
                total
            })
            .collect();
        Cumulative { ends }
    }

    /// Sum of all weights.
    pub fn total(&self) -> u64 {
        self.ends.last().copied().unwrap_or(0)
    }

    /// The weight of candidate `i`.
    pub fn weight(&self, i: usize) -> u64 {
        self.ends[i] - if i == 0 { 0 } else { self.ends[i - 1] }
    }

    /// The candidate whose share of `0..total` holds `point`.
    pub fn locate(&self, point: u64) -> usize {
        self.ends.partition_point(|&end| end <= point)
    }

    /// A candidate drawn with probability weight / total.
    pub fn draw(&self) -> usize {
        self.locate(fastrand::u64(0..self.total()))
    }

    /// A candidate other than `not` drawn by weight among the rest (at least two candidates).
    pub fn draw_other(&self, not: usize) -> usize {
        let skipped = self.weight(not);
        let mut point = fastrand::u64(0..self.total() - skipped);
        // Lay the remaining shares end to end by jumping over `not`'s share.
        if point >= self.ends[not] - skipped {
            point += skipped;
        }
        self.locate(point)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locate_maps_points_to_shares() {
        let c = Cumulative::new(&[1, 2, 3]);
        assert_eq!(c.total(), 6);
        let owners: Vec<usize> = (0..6).map(|p| c.locate(p)).collect();
        assert_eq!(owners, vec![0, 1, 1, 2, 2, 2]);
        assert_eq!((c.weight(0), c.weight(1), c.weight(2)), (1, 2, 3));
    }

    #[test]
    fn draws_follow_weights() {
        fastrand::seed(7);
        let c = Cumulative::new(&[1, 2, 3]);
        let mut hits = [0u32; 3];
        for _ in 0..60_000 {
            hits[c.draw()] += 1;
        }
        for (i, &n) in hits.iter().enumerate() {
            let want = 10_000.0 * (i + 1) as f64;
            assert!((f64::from(n) - want).abs() < 0.03 * 60_000.0, "{hits:?}");
        }
    }

    #[test]
    fn draw_other_never_returns_the_excluded_one_and_keeps_the_others_ratio() {
        fastrand::seed(11);
        let c = Cumulative::new(&[1, 2, 3]);
        for not in 0..3 {
            let mut hits = [0u32; 3];
            for _ in 0..30_000 {
                hits[c.draw_other(not)] += 1;
            }
            assert_eq!(hits[not], 0);
            // Among the other two, shares follow their weights.
            let (a, b) = match not {
                0 => (1, 2),
                1 => (0, 2),
                _ => (0, 1),
            };
            let ratio = f64::from(hits[b]) / f64::from(hits[a]);
            let want = c.weight(b) as f64 / c.weight(a) as f64;
            assert!((ratio - want).abs() < 0.1 * want, "{not}: {hits:?}");
        }
        // Two candidates: the other one, always.
        let two = Cumulative::new(&[5, 1]);
        assert!((0..100).all(|_| two.draw_other(0) == 1 && two.draw_other(1) == 0));
    }
}
