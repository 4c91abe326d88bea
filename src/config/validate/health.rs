//! `[service.health]`: the check kind and its path, the probe port, period and timeout, and the
//! thresholds.

use super::Validator;
use crate::config::raw::{RawCheck, RawHealth};
use crate::config::{Health, HealthCheck, ProblemScope};

impl Validator {
    pub(super) fn health(&mut self, scope: &ProblemScope, raw: Option<&RawHealth>) -> Health {
        let base = Health::default();
        let Some(raw) = raw else { return base };

        let check = match (raw.check.unwrap_or(RawCheck::Tcp), &raw.path) {
            (RawCheck::Http, path) => {
                let path = path.clone().unwrap_or_else(|| "/".to_owned());
                if !path.starts_with('/') {
                    self.push(
                        scope,
                        "health.path",
                        format!("\"{path}\" must start with '/'"),
                    );
                } else if path.chars().any(|c| c.is_whitespace() || c.is_control()) {
                    // The path goes verbatim into the request line.
                    self.push(
                        scope,
                        "health.path",
                        format!("{path:?} must not contain spaces or control characters"),
                    );
                }
                HealthCheck::Http { path }
            }
            (other, path) => {
                let (name, check) = if other == RawCheck::Tcp {
                    ("tcp", HealthCheck::Tcp)
                } else {
                    ("none", HealthCheck::None)
                };
                if path.is_some() {
                    self.push(
                        scope,
                        "health.path",
                        format!("only allowed with check = \"http\" (check is \"{name}\")"),
                    );
                }
                check
            }
        };

        if raw.port == Some(0) {
            self.push(scope, "health.port", "0 is out of range 1-65535");
        }
        let period_zero = raw.period.is_some_and(|d| d.is_zero());
        let timeout_zero = raw.timeout.is_some_and(|d| d.is_zero());
        let period = self.positive(scope, "health.period", raw.period, base.period);
        let timeout = self.positive(scope, "health.timeout", raw.timeout, base.timeout);
        if !period_zero && !timeout_zero && timeout >= period {
            self.push(
                scope,
                "health.timeout",
                format!(
                    "{} must be shorter than health.period ({})",
                    humantime::format_duration(timeout),
                    humantime::format_duration(period)
                ),
            );
        }
        let failure_threshold = self.at_least_one(
            scope,
            "health.failure_threshold",
            raw.failure_threshold,
            base.failure_threshold,
        );
        let success_threshold = self.at_least_one(
            scope,
            "health.success_threshold",
            raw.success_threshold,
            base.success_threshold,
        );

        Health {
            check,
            port: raw.port.filter(|&p| p != 0),
            period,
            timeout,
            failure_threshold,
            success_threshold,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{assert_each_reports, load, ms, service};
    use super::*;

    #[test]
    fn health_variants() {
        let check = |extra: &str| {
            load(&service(extra)).unwrap().services[0]
                .health
                .check
                .clone()
        };
        assert_eq!(
            check("[service.health]\ncheck = \"http\"\n"),
            HealthCheck::Http { path: "/".into() }
        );
        assert_eq!(
            check("[service.health]\ncheck = \"none\"\n"),
            HealthCheck::None
        );
        assert_eq!(
            check("[service.health]\nperiod = \"5s\"\n"),
            HealthCheck::Tcp
        );
        // Only a default timeout that is not shorter than the period is an error.
        let h = load(&service("[service.health]\nperiod = \"600ms\"\n"))
            .unwrap()
            .services[0]
            .health
            .clone();
        assert_eq!((h.period, h.timeout), (ms(600), ms(500)));
    }

    #[test]
    fn each_rule_reports_its_key() {
        // (text, the one expected problem line)
        let cases: Vec<(String, &str)> = vec![
            (
                service("[service.health]\npath = \"/x\"\n"),
                "vipd.toml: service \"web\": health.path: only allowed with check = \"http\" (check is \"tcp\")",
            ),
            (
                service("[service.health]\ncheck = \"http\"\npath = \"healthz\"\n"),
                "vipd.toml: service \"web\": health.path: \"healthz\" must start with '/'",
            ),
            (
                service("[service.health]\ncheck = \"http\"\npath = \"/a b\"\n"),
                "vipd.toml: service \"web\": health.path: \"/a b\" must not contain spaces or control characters",
            ),
            (
                service("[service.health]\nport = 0\n"),
                "vipd.toml: service \"web\": health.port: 0 is out of range 1-65535",
            ),
            (
                service("[service.health]\ntimeout = \"2s\"\n"),
                "vipd.toml: service \"web\": health.timeout: 2s must be shorter than health.period (1s)",
            ),
            (
                service("[service.health]\nperiod = \"1s\"\ntimeout = \"1s\"\n"),
                "vipd.toml: service \"web\": health.timeout: 1s must be shorter than health.period (1s)",
            ),
            (
                service("[service.health]\nperiod = \"0s\"\n"),
                "vipd.toml: service \"web\": health.period: must be greater than 0",
            ),
            (
                service("[service.health]\nfailure_threshold = 0\n"),
                "vipd.toml: service \"web\": health.failure_threshold: must be at least 1",
            ),
            (
                service("[service.health]\nsuccess_threshold = 0\n"),
                "vipd.toml: service \"web\": health.success_threshold: must be at least 1",
            ),
        ];
        assert_each_reports(cases);
    }
}
