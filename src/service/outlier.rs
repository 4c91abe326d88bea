//! Passive ejection policy (outlier detection): when an endpoint fails this many connects in a
//! row it leaves rotation for a while, longer each time it is ejected again, and never more than
//! a share of the service's endpoints at once (a broken network must not empty the service).
//! Pure: the owner task does the bookkeeping and the timers.

use std::time::Duration;

use crate::config::Outlier;

/// Longest ejection, however often an endpoint was ejected before (Envoy's default maximum).
const MAX_EJECTION: Duration = Duration::from_secs(300);

/// Decides ejections for one service.
#[derive(Debug, Clone, PartialEq)]
pub struct OutlierPolicy {
    settings: Outlier,
}

impl OutlierPolicy {
    /// The policy of `[service.outlier]`.
    pub fn new(settings: Outlier) -> Self {
        OutlierPolicy { settings }
    }

    /// Whether `failures` connect failures in a row call for an ejection.
    pub fn is_outlier(&self, failures: u32) -> bool {
        failures >= self.settings.consecutive_failures.get()
    }

    /// Whether one more endpoint may be ejected when `ejected` of `total` already are.
    pub fn may_eject(&self, ejected: usize, total: usize) -> bool {
        (ejected + 1) * 100 <= total * usize::from(self.settings.max_ejection_percent)
    }

    /// How long the ejection of an endpoint ejected `previous` times before lasts:
    /// `base_ejection_time × (previous + 1)`, at most five minutes (or the base, if longer).
    pub fn ejection_time(&self, previous: u32) -> Duration {
        let base = self.settings.base_ejection_time;
        base.saturating_mul(previous.saturating_add(1))
            .min(MAX_EJECTION.max(base))
    }
}

#[cfg(test)]
mod tests {
    use std::num::NonZeroU32;

    use super::*;

    fn policy(failures: u32, base_secs: u64, percent: u8) -> OutlierPolicy {
        OutlierPolicy::new(Outlier {
            consecutive_failures: NonZeroU32::new(failures).unwrap(),
            base_ejection_time: Duration::from_secs(base_secs),
            max_ejection_percent: percent,
        })
    }

    #[test]
    fn ejects_at_the_threshold() {
        let p = policy(5, 30, 50);
        for (failures, expected) in [(1, false), (4, false), (5, true), (9, true)] {
            assert_eq!(p.is_outlier(failures), expected, "{failures}");
        }
    }

    #[test]
    fn caps_the_share_of_ejected_endpoints() {
        // (ejected now, total, percent) → may eject one more
        let cases = [
            (0, 2, 50, true),
            (1, 2, 50, false),
            (0, 1, 50, false),
            (0, 1, 100, true),
            (2, 10, 30, true),
            (3, 10, 30, false),
            (0, 3, 0, false),
        ];
        for (ejected, total, percent, expected) in cases {
            assert_eq!(
                policy(5, 30, percent).may_eject(ejected, total),
                expected,
                "{ejected}/{total} at {percent}%"
            );
        }
    }

    #[test]
    fn ejection_time_grows_and_is_capped() {
        let p = policy(5, 30, 50);
        assert_eq!(p.ejection_time(0), Duration::from_secs(30));
        assert_eq!(p.ejection_time(1), Duration::from_secs(60));
        assert_eq!(p.ejection_time(3), Duration::from_secs(120));
        assert_eq!(p.ejection_time(50), MAX_EJECTION);
        // A base longer than the cap is honoured as is.
        assert_eq!(
            policy(5, 600, 50).ejection_time(4),
            Duration::from_secs(600)
        );
    }
}
