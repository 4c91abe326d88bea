//! Where a service's connections go: `balance`, `session_affinity` with `affinity_timeout`,
//! `slow_start` and `when_all_unhealthy`. (Endpoint weights and tiers are checked with the
//! endpoints.)

use std::time::Duration;

use super::Validator;
use crate::config::raw::{RawBalance, RawService, RawSessionAffinity, RawWhenAllUnhealthy};
use crate::config::{Balance, ProblemScope, SessionAffinity, WhenAllUnhealthy};

/// Shortest `affinity_timeout` (Kubernetes allows 1 s).
const MIN_AFFINITY_TIMEOUT: Duration = Duration::from_secs(1);
/// Longest `affinity_timeout` (Kubernetes' 86400 s).
const MAX_AFFINITY_TIMEOUT: Duration = Duration::from_secs(86_400);

/// A service's placement settings.
pub(super) struct PlacementKeys {
    pub balance: Balance,
    pub session_affinity: SessionAffinity,
    pub slow_start: Option<Duration>,
    pub when_all_unhealthy: WhenAllUnhealthy,
}

impl Validator {
    pub(super) fn placement(&mut self, scope: &ProblemScope, raw: &RawService) -> PlacementKeys {
        // Exhaustive so a new raw policy cannot be silently mapped to another.
        let balance = match raw.balance {
            None | Some(RawBalance::RoundRobin) => Balance::RoundRobin,
            Some(RawBalance::LeastConnections) => Balance::LeastConnections,
            Some(RawBalance::PowerOfTwo) => Balance::PowerOfTwo,
            Some(RawBalance::Random) => Balance::Random,
            Some(RawBalance::Maglev) => Balance::Maglev,
        };

        let session_affinity = match raw.session_affinity {
            None | Some(RawSessionAffinity::None) => {
                if raw.affinity_timeout.is_some() {
                    self.push(
                        scope,
                        "affinity_timeout",
                        "only allowed with session_affinity = \"client_ip\"",
                    );
                }
                SessionAffinity::None
            }
            Some(RawSessionAffinity::ClientIp) => {
                let timeout = raw
                    .affinity_timeout
                    .unwrap_or(SessionAffinity::DEFAULT_TIMEOUT);
                if !(MIN_AFFINITY_TIMEOUT..=MAX_AFFINITY_TIMEOUT).contains(&timeout) {
                    self.push(
                        scope,
                        "affinity_timeout",
                        format!(
                            "{} is out of range 1s-24h",
                            humantime::format_duration(timeout)
                        ),
                    );
                }
                SessionAffinity::ClientIp { timeout }
            }
        };

        let slow_start = match raw.slow_start {
            Some(window) if window.is_zero() => {
                self.push(scope, "slow_start", "must be greater than 0");
                None
            }
            Some(_) if balance == Balance::Maglev => {
                self.push(
                    scope,
                    "slow_start",
                    "does not apply to balance = \"maglev\" (a ramp would move clients twice); \
                     remove it or choose another balance",
                );
                None
            }
            other => other,
        };

        let when_all_unhealthy = match raw.when_all_unhealthy {
            None | Some(RawWhenAllUnhealthy::FailOpen) => WhenAllUnhealthy::FailOpen,
            Some(RawWhenAllUnhealthy::FailClosed) => WhenAllUnhealthy::FailClosed,
        };

        PlacementKeys {
            balance,
            session_affinity,
            slow_start,
            when_all_unhealthy,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{assert_each_reports, load, service};
    use super::*;

    #[test]
    fn keys_convert_with_defaults() {
        let web = |extra: &str| load(&service(extra)).unwrap().services.remove(0);
        let plain = web("");
        assert_eq!(plain.balance, Balance::RoundRobin);
        assert_eq!(plain.session_affinity, SessionAffinity::None);
        assert_eq!(plain.slow_start, None);
        assert_eq!(plain.when_all_unhealthy, WhenAllUnhealthy::FailOpen);

        for (text, want) in [
            ("round_robin", Balance::RoundRobin),
            ("least_connections", Balance::LeastConnections),
            ("power_of_two", Balance::PowerOfTwo),
            ("random", Balance::Random),
            ("maglev", Balance::Maglev),
        ] {
            assert_eq!(web(&format!("balance = \"{text}\"\n")).balance, want);
            assert_eq!(want.as_str(), text);
        }

        let sticky = web("session_affinity = \"client_ip\"\n");
        assert_eq!(
            sticky.session_affinity,
            SessionAffinity::ClientIp {
                timeout: Duration::from_secs(10_800)
            }
        );
        let tuned = web(
            "session_affinity = \"client_ip\"\naffinity_timeout = \"10m\"\n\
             slow_start = \"30s\"\nwhen_all_unhealthy = \"fail_closed\"\n",
        );
        assert_eq!(
            tuned.session_affinity,
            SessionAffinity::ClientIp {
                timeout: Duration::from_secs(600)
            }
        );
        assert_eq!(tuned.slow_start, Some(Duration::from_secs(30)));
        assert_eq!(tuned.when_all_unhealthy, WhenAllUnhealthy::FailClosed);
    }

    #[test]
    fn each_rule_reports_its_key() {
        assert_each_reports(vec![
            (
                service("affinity_timeout = \"1h\"\n"),
                "vipd.toml: service \"web\": affinity_timeout: only allowed with session_affinity = \"client_ip\"",
            ),
            (
                service("session_affinity = \"client_ip\"\naffinity_timeout = \"500ms\"\n"),
                "vipd.toml: service \"web\": affinity_timeout: 500ms is out of range 1s-24h",
            ),
            (
                service("session_affinity = \"client_ip\"\naffinity_timeout = \"25h\"\n"),
                "vipd.toml: service \"web\": affinity_timeout: 1day 1h is out of range 1s-24h",
            ),
            (
                service("slow_start = \"0s\"\n"),
                "vipd.toml: service \"web\": slow_start: must be greater than 0",
            ),
            (
                service("balance = \"maglev\"\nslow_start = \"30s\"\n"),
                "vipd.toml: service \"web\": slow_start: does not apply to balance = \"maglev\" (a ramp would move clients twice); remove it or choose another balance",
            ),
        ]);
    }
}
