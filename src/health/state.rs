//! The health state machine: consecutive successes/failures against thresholds.
//! Pure (no I/O, no clock) so it is tested from a table.

use std::num::NonZeroU32;

use crate::config::Health;

/// Health of one endpoint as judged by consecutive probe results.
///
/// A healthy endpoint turns unhealthy after `failure_threshold` consecutive failures; an
/// unhealthy one turns healthy after `success_threshold` consecutive successes. A result of the
/// other kind breaks the run, so flapping results never flip the verdict (unless a threshold
/// is 1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthState {
    success_threshold: NonZeroU32,
    failure_threshold: NonZeroU32,
    healthy: bool,
    /// Kind of the latest result (`true` = success); `None` before the first one.
    last: Option<bool>,
    /// How many results in a row, ending with the latest, were of kind `last`. Saturates, so an
    /// endpoint probed for years cannot overflow it.
    run: u32,
}

impl HealthState {
    /// A new endpoint: counts as healthy until its first probe result.
    pub fn new(success_threshold: NonZeroU32, failure_threshold: NonZeroU32) -> Self {
        HealthState {
            success_threshold,
            failure_threshold,
            healthy: true,
            last: None,
            run: 0,
        }
    }

    /// A new endpoint with the thresholds of a service's `[service.health]`.
    pub fn from_config(health: &Health) -> Self {
        Self::new(health.success_threshold, health.failure_threshold)
    }

    /// Current verdict.
    pub fn is_healthy(&self) -> bool {
        self.healthy
    }

    /// Records one probe result; returns `Some(new_verdict)` only when the verdict flips.
    ///
    /// The first result decides at once: a new endpoint that fails its first probe (a replica
    /// behind a role check, a server not up yet) leaves rotation now rather than after
    /// `failure_threshold` periods of connections sent its way. Thresholds apply from then on.
    pub fn observe(&mut self, success: bool) -> Option<bool> {
        if self.last.is_none() {
            self.last = Some(success);
            self.run = 1;
            let flips = self.healthy != success;
            self.healthy = success;
            return flips.then_some(success);
        }
        if self.last == Some(success) {
            self.run = self.run.saturating_add(1);
        } else {
            self.last = Some(success);
            self.run = 1;
        }
        // Only a run of the kind opposite to the verdict can flip it; once flipped, further
        // results of that kind agree with the verdict and so are never reported again.
        let flips = if self.healthy {
            !success && self.run >= self.failure_threshold.get()
        } else {
            success && self.run >= self.success_threshold.get()
        };
        if flips {
            self.healthy = success;
            Some(success)
        } else {
            None
        }
    }

    /// Successes in a row up to and including the latest result (0 if the latest failed).
    pub fn consecutive_successes(&self) -> u32 {
        if self.last == Some(true) { self.run } else { 0 }
    }

    /// Failures in a row up to and including the latest result (0 if the latest succeeded).
    pub fn consecutive_failures(&self) -> u32 {
        if self.last == Some(false) {
            self.run
        } else {
            0
        }
    }

    /// Consecutive successes needed to turn an unhealthy endpoint healthy.
    pub fn success_threshold(&self) -> NonZeroU32 {
        self.success_threshold
    }

    /// Consecutive failures needed to turn a healthy endpoint unhealthy.
    pub fn failure_threshold(&self) -> NonZeroU32 {
        self.failure_threshold
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nz(n: u32) -> NonZeroU32 {
        NonZeroU32::new(n).expect("non-zero")
    }

    /// One case: thresholds, the results fed in (`S` success, `F` failure) and, per result,
    /// what `observe` must report (`.` no flip, `U` became unhealthy, `H` became healthy).
    /// Spaces are ignored in both strings; they only group steps for the reader.
    struct Case {
        name: &'static str,
        success_threshold: u32,
        failure_threshold: u32,
        results: &'static str,
        flips: &'static str,
    }

    const CASES: &[Case] = &[
        Case {
            name: "the first result decides at once, whatever the threshold",
            success_threshold: 3,
            failure_threshold: 3,
            results: "F SS S",
            flips: "U .. H",
        },
        Case {
            name: "a first success keeps a new endpoint healthy, silently",
            success_threshold: 3,
            failure_threshold: 3,
            results: "S FF F",
            flips: ". .. U",
        },
        Case {
            name: "successes keep a healthy endpoint healthy, silently",
            success_threshold: 1,
            failure_threshold: 1,
            results: "SSSS",
            flips: "....",
        },
        Case {
            name: "failure threshold 1 flips on the first failure",
            success_threshold: 1,
            failure_threshold: 1,
            results: "S F",
            flips: ". U",
        },
        Case {
            name: "thresholds 1 flip on every change, reported once each",
            success_threshold: 1,
            failure_threshold: 1,
            results: "S FFF SSS F S",
            flips: ". U.. H.. U H",
        },
        Case {
            name: "failure threshold 3 needs three failures in a row",
            success_threshold: 1,
            failure_threshold: 3,
            results: "S FFF FF",
            flips: ". ..U ..",
        },
        Case {
            name: "a success resets the failure streak",
            success_threshold: 1,
            failure_threshold: 3,
            results: "S FF S FF S FFF",
            flips: ". .. . .. . ..U",
        },
        Case {
            name: "success threshold 2 needs two successes in a row",
            success_threshold: 2,
            failure_threshold: 1,
            results: "S F S S SS",
            flips: ". U . H ..",
        },
        Case {
            name: "a failure resets the success streak",
            success_threshold: 3,
            failure_threshold: 1,
            results: "S F SS F SS F SSS S",
            flips: ". U .. . .. . ..H .",
        },
        Case {
            name: "flapping never flips with thresholds above 1",
            success_threshold: 2,
            failure_threshold: 2,
            results: "S FSFSFSFS",
            flips: ". ........",
        },
        Case {
            name: "the failing run that flipped does not count towards recovery",
            success_threshold: 2,
            failure_threshold: 2,
            results: "S FF FFFF S F SS",
            flips: ". .U .... . . .H",
        },
        Case {
            name: "successes while healthy do not pre-load a later recovery",
            success_threshold: 2,
            failure_threshold: 1,
            results: "SSSSS F S S",
            flips: "..... U . H",
        },
    ];

    fn steps(s: &str) -> impl Iterator<Item = char> + '_ {
        s.chars().filter(|c| !c.is_whitespace())
    }

    #[test]
    fn table() {
        for case in CASES {
            let mut state =
                HealthState::new(nz(case.success_threshold), nz(case.failure_threshold));
            let results: Vec<char> = steps(case.results).collect();
            let flips: Vec<char> = steps(case.flips).collect();
            assert_eq!(results.len(), flips.len(), "{}: malformed case", case.name);

            let mut expected_healthy = true;
            for (i, (&result, &flip)) in results.iter().zip(&flips).enumerate() {
                let success = match result {
                    'S' => true,
                    'F' => false,
                    other => panic!("{}: bad result {other:?}", case.name),
                };
                let expected = match flip {
                    '.' => None,
                    'U' => Some(false),
                    'H' => Some(true),
                    other => panic!("{}: bad flip {other:?}", case.name),
                };
                if let Some(verdict) = expected {
                    expected_healthy = verdict;
                }
                assert_eq!(
                    state.observe(success),
                    expected,
                    "{}: step {i} ({result})",
                    case.name
                );
                assert_eq!(
                    state.is_healthy(),
                    expected_healthy,
                    "{}: verdict after step {i}",
                    case.name
                );
            }
        }
    }

    #[test]
    fn starts_healthy_with_no_streak() {
        let state = HealthState::new(nz(3), nz(2));
        assert!(state.is_healthy());
        assert_eq!(state.consecutive_successes(), 0);
        assert_eq!(state.consecutive_failures(), 0);
        assert_eq!(state.success_threshold(), nz(3));
        assert_eq!(state.failure_threshold(), nz(2));
    }

    #[test]
    fn consecutive_counts_follow_the_latest_run() {
        let mut state = HealthState::new(nz(2), nz(3));
        for _ in 0..2 {
            state.observe(false);
        }
        assert_eq!(state.consecutive_failures(), 2);
        assert_eq!(state.consecutive_successes(), 0);
        state.observe(true);
        assert_eq!(state.consecutive_failures(), 0);
        assert_eq!(state.consecutive_successes(), 1);
    }

    #[test]
    fn from_config_uses_the_configured_thresholds() {
        let health = Health {
            success_threshold: nz(4),
            failure_threshold: nz(5),
            ..Health::default()
        };
        let state = HealthState::from_config(&health);
        assert_eq!(state.success_threshold(), nz(4));
        assert_eq!(state.failure_threshold(), nz(5));
        assert!(state.is_healthy());
    }

    #[test]
    fn long_runs_saturate_instead_of_overflowing() {
        let mut state = HealthState::new(nz(1), nz(1));
        state.run = u32::MAX - 1;
        state.last = Some(true);
        state.observe(true);
        state.observe(true);
        assert_eq!(state.consecutive_successes(), u32::MAX);
        assert!(state.is_healthy());
    }
}
