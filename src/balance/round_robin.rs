//! Smooth weighted round robin, as a schedule built off the connection path.
//!
//! nginx's algorithm (each step every endpoint's current weight grows by its weight, the
//! largest is picked and lowered by the total) interleaves endpoints as evenly as their weights
//! allow: weights 5:1:1 give `a a b a c a a`, not `a a a a a b c`. It is sequential and mutates
//! every endpoint's state per pick, which would need a lock shared by all workers. Its sequence
//! only depends on the weights, though, so it is computed once per snapshot, and a pick is one
//! shared counter modulo the schedule's length: exact shares over every cycle, for every worker
//! together. Equal weights give the strict rotation `0 1 2 …`.
//!
//! The schedule has one entry per unit of total weight, after dividing the weights by their
//! greatest common divisor. Two bounds keep the build cheap on large weighted sets: totals above
//! [`MAX_SCHEDULE`] are scaled down proportionally (every endpoint keeps at least one entry),
//! and when nginx's O(total × endpoints) build would exceed [`NGINX_BUILD_BUDGET`] steps the
//! schedule interleaves by earliest virtual deadline instead (O(total × log endpoints); the same
//! exact shares per cycle and a similar interleave, as Envoy's weighted round robin). Equal
//! weights are the plain rotation without either.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

/// Longest schedule (entries); 256 KiB.
pub const MAX_SCHEDULE: u64 = 65_536;
/// Most steps × endpoints the nginx build may take (~50 µs): a rebuild runs on every health
/// flip, so larger weighted sets take the O(total × log endpoints) interleave.
pub const NGINX_BUILD_BUDGET: u64 = 1 << 16;

/// The order in which candidates take turns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schedule {
    order: Box<[u32]>,
}

impl Schedule {
    /// The schedule for `weights` (one per candidate, each ≥ 1, at least one candidate).
    pub fn new(weights: &[u32]) -> Schedule {
        let weights = reduce(weights);
        let total: u64 = weights.iter().map(|&w| u64::from(w)).sum();
        let order = if total == weights.len() as u64 {
            // Equal weights (all 1 after the divisor): both algorithms give the rotation.
            (0..weights.len() as u32).collect()
        } else if total * weights.len() as u64 <= NGINX_BUILD_BUDGET {
            nginx(&weights, total)
        } else {
            earliest_deadline(&weights, total)
        };
        Schedule {
            order: order.into_boxed_slice(),
        }
    }

    /// The candidate at rotation position `position`.
    pub fn pick(&self, position: usize) -> usize {
        self.order[position % self.order.len()] as usize
    }

    /// Entries in one cycle.
    pub fn len(&self) -> usize {
        self.order.len()
    }

    /// Never true: a schedule has at least one entry.
    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }
}

/// Divides by the greatest common divisor, then scales a total above [`MAX_SCHEDULE`] down:
/// largest-remainder apportionment of `MAX_SCHEDULE - n` entries, so every endpoint's count is
/// within one entry of its exact share, plus one entry for each endpoint that would get none.
fn reduce(weights: &[u32]) -> Vec<u32> {
    let divisor = weights.iter().fold(0, |g, &w| gcd(g, w.max(1)));
    let reduced: Vec<u32> = weights.iter().map(|&w| w.max(1) / divisor).collect();
    let total: u64 = reduced.iter().map(|&w| u64::from(w)).sum();
    if total <= MAX_SCHEDULE {
        return reduced;
    }
    let target = MAX_SCHEDULE.saturating_sub(reduced.len() as u64).max(1);
    let exact: Vec<(u64, u64)> = reduced
        .iter()
        .map(|&w| {
            let scaled = u128::from(w) * u128::from(target);
            (
                (scaled / u128::from(total)) as u64,
                (scaled % u128::from(total)) as u64,
            )
        })
        .collect();
    let mut counts: Vec<u64> = exact.iter().map(|&(whole, _)| whole).collect();
    let left = target - counts.iter().sum::<u64>();
    let mut by_remainder: Vec<usize> = (0..exact.len()).collect();
    by_remainder.sort_by_key(|&i| std::cmp::Reverse(exact[i].1));
    for &i in by_remainder.iter().take(left as usize) {
        counts[i] += 1;
    }
    counts.into_iter().map(|c| c.max(1) as u32).collect()
}

fn gcd(mut a: u32, mut b: u32) -> u32 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

/// nginx's smooth weighted round robin, run for one cycle; ties go to the earlier candidate.
fn nginx(weights: &[u32], total: u64) -> Vec<u32> {
    let total = total as i64;
    let mut current = vec![0i64; weights.len()];
    let mut order = Vec::with_capacity(total as usize);
    for _ in 0..total {
        let mut best = 0;
        for (i, &w) in weights.iter().enumerate() {
            current[i] += i64::from(w);
            if current[i] > current[best] {
                best = i;
            }
        }
        current[best] -= total;
        order.push(best as u32);
    }
    order
}

/// Each candidate's k-th turn is due at (k + 1) / weight; turns are taken in deadline order,
/// ties to the earlier candidate.
fn earliest_deadline(weights: &[u32], total: u64) -> Vec<u32> {
    /// A turn due at `turn / weight`, compared exactly by cross-multiplying.
    #[derive(PartialEq, Eq)]
    struct Due {
        turn: u64,
        weight: u64,
        index: u32,
    }
    impl Ord for Due {
        fn cmp(&self, other: &Self) -> std::cmp::Ordering {
            (u128::from(self.turn) * u128::from(other.weight))
                .cmp(&(u128::from(other.turn) * u128::from(self.weight)))
                .then(self.index.cmp(&other.index))
        }
    }
    impl PartialOrd for Due {
        fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
            Some(self.cmp(other))
        }
    }
    let mut heap: BinaryHeap<Reverse<Due>> = weights
        .iter()
        .enumerate()
        .map(|(i, &w)| {
            Reverse(Due {
                turn: 1,
                weight: u64::from(w),
                index: i as u32,
            })
        })
        .collect();
    let mut order = Vec::with_capacity(total as usize);
    while order.len() < total as usize {
        let Some(Reverse(mut due)) = heap.pop() else {
            break;
        };
        order.push(due.index);
        due.turn += 1;
        heap.push(Reverse(due));
    }
    order
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cycle(weights: &[u32]) -> Vec<u32> {
        let s = Schedule::new(weights);
        (0..s.len()).map(|p| s.pick(p) as u32).collect()
    }

    fn counts(order: &[u32], n: usize) -> Vec<usize> {
        let mut c = vec![0; n];
        for &i in order {
            c[i as usize] += 1;
        }
        c
    }

    #[test]
    fn equal_weights_rotate_strictly() {
        assert_eq!(cycle(&[1, 1, 1]), vec![0, 1, 2]);
        // Scaled weights (slow start's percent units) reduce to the same rotation.
        assert_eq!(cycle(&[100, 100, 100, 100]), vec![0, 1, 2, 3]);
    }

    #[test]
    fn nginx_interleaves_smoothly() {
        // nginx's documented example: weights 5, 1, 1 give a a b a c a a.
        assert_eq!(cycle(&[5, 1, 1]), vec![0, 0, 1, 0, 2, 0, 0]);
        assert_eq!(cycle(&[1, 2, 3]), vec![2, 1, 0, 2, 1, 2]);
    }

    #[test]
    fn shares_are_exact_per_cycle() {
        // The last two take the deadline interleave (beyond nginx's build budget).
        let mixed: Vec<u32> = (0..1000).map(|i| 1 + i % 3).collect();
        let ramping: Vec<u32> = (0..100).map(|i| if i == 7 { 37 } else { 100 }).collect();
        for weights in [
            vec![1, 2, 3],
            vec![7, 3, 1000, 1],
            vec![100, 10, 100],
            mixed,
            ramping,
        ] {
            let order = cycle(&weights);
            let g = weights.iter().fold(0, |g, &w| gcd(g, w));
            let want: Vec<usize> = weights.iter().map(|&w| (w / g) as usize).collect();
            assert_eq!(counts(&order, weights.len()), want, "{weights:?}");
        }
    }

    #[test]
    fn large_weighted_sets_use_the_deadline_interleave_with_exact_shares() {
        // 1000 endpoints with weights 1..=1000 would take nginx's build ~5e8 steps.
        let weights: Vec<u32> = (1..=1000).collect();
        let s = Schedule::new(&weights);
        assert!(s.len() as u64 <= MAX_SCHEDULE);
        let order: Vec<u32> = (0..s.len()).map(|p| s.pick(p) as u32).collect();
        let c = counts(&order, weights.len());
        // Scaled to fit: every endpoint keeps a turn, shares stay proportional within rounding.
        assert!(c.iter().all(|&n| n >= 1));
        let total: usize = c.iter().sum();
        for (i, &n) in c.iter().enumerate() {
            let want = (i + 1) as f64 / 500_500.0 * total as f64;
            assert!(
                (n as f64 - want).abs() <= 1.5,
                "endpoint {i}: {n} turns, want {want:.1}"
            );
        }
        // The deadline interleave on a small case is smooth too: no endpoint twice in a row
        // while another is due.
        assert_eq!(earliest_deadline(&[1, 1, 1], 3), vec![0, 1, 2]);
        assert_eq!(earliest_deadline(&[2, 1], 3), vec![0, 0, 1]);
    }

    #[test]
    fn positions_wrap_over_the_cycle() {
        let s = Schedule::new(&[1, 1]);
        assert_eq!(s.pick(0), 0);
        assert_eq!(s.pick(1), 1);
        assert_eq!(s.pick(2), 0);
        assert_eq!(s.pick(usize::MAX), 1);
    }
}
