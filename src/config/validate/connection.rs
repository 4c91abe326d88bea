//! Connection settings: `[defaults]` over the built-in defaults, and a service's own keys over
//! `[defaults]`.

use super::Validator;
use crate::config::raw::RawConnection;
use crate::config::{ConnectionSettings, ProblemScope};

impl Validator {
    /// `[defaults]` over the built-in defaults. A zero value is reported here, once, and
    /// replaced by the built-in default so services inheriting it do not report it again.
    pub(super) fn defaults(&mut self, raw: &RawConnection) -> ConnectionSettings {
        self.connection(
            &ProblemScope::Global,
            "defaults.",
            raw,
            &ConnectionSettings::default(),
        )
    }

    /// Applies the connection keys in `raw` over `base`; `prefix` is prepended to key names.
    pub(super) fn connection(
        &mut self,
        scope: &ProblemScope,
        prefix: &str,
        raw: &RawConnection,
        base: &ConnectionSettings,
    ) -> ConnectionSettings {
        let connect_timeout = self.positive(
            scope,
            &format!("{prefix}connect_timeout"),
            raw.connect_timeout,
            base.connect_timeout,
        );
        let idle_timeout = self.positive(
            scope,
            &format!("{prefix}idle_timeout"),
            raw.idle_timeout,
            base.idle_timeout,
        );
        let udp_idle_timeout = self.positive(
            scope,
            &format!("{prefix}udp_idle_timeout"),
            raw.udp_idle_timeout,
            base.udp_idle_timeout,
        );
        let drain_timeout = self.positive(
            scope,
            &format!("{prefix}drain_timeout"),
            raw.drain_timeout,
            base.drain_timeout,
        );
        let max_connect_attempts = self.at_least_one(
            scope,
            &format!("{prefix}max_connect_attempts"),
            raw.max_connect_attempts,
            base.max_connect_attempts,
        );
        let queue_timeout = self.positive(
            scope,
            &format!("{prefix}queue_timeout"),
            raw.queue_timeout,
            base.queue_timeout,
        );
        let proxy_protocol_timeout = self.positive(
            scope,
            &format!("{prefix}proxy_protocol_timeout"),
            raw.proxy_protocol_timeout,
            base.proxy_protocol_timeout,
        );
        ConnectionSettings {
            connect_timeout,
            idle_timeout,
            udp_idle_timeout,
            drain_timeout,
            max_connect_attempts,
            half_close: raw.half_close.unwrap_or(base.half_close),
            queue_timeout,
            proxy_protocol_timeout,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{assert_each_reports, problems, service};

    #[test]
    fn each_rule_reports_its_key() {
        // (text, the one expected problem line)
        let cases: Vec<(String, &str)> = vec![
            (
                "[defaults]\nconnect_timeout = \"0s\"\n".into(),
                "vipd.toml: defaults.connect_timeout: must be greater than 0",
            ),
            (
                "[defaults]\nmax_connect_attempts = 0\n".into(),
                "vipd.toml: defaults.max_connect_attempts: must be at least 1",
            ),
            (
                service("max_connect_attempts = 0\n"),
                "vipd.toml: service \"web\": max_connect_attempts: must be at least 1",
            ),
            (
                service("idle_timeout = \"0ms\"\n"),
                "vipd.toml: service \"web\": idle_timeout: must be greater than 0",
            ),
            (
                "[defaults]\nudp_idle_timeout = \"0s\"\n".into(),
                "vipd.toml: defaults.udp_idle_timeout: must be greater than 0",
            ),
            (
                service("udp_idle_timeout = \"0s\"\n"),
                "vipd.toml: service \"web\": udp_idle_timeout: must be greater than 0",
            ),
            (
                service("drain_timeout = \"0s\"\n"),
                "vipd.toml: service \"web\": drain_timeout: must be greater than 0",
            ),
            (
                "[defaults]\nqueue_timeout = \"0s\"\n".into(),
                "vipd.toml: defaults.queue_timeout: must be greater than 0",
            ),
            (
                service("proxy_protocol_timeout = \"0s\"\n"),
                "vipd.toml: service \"web\": proxy_protocol_timeout: must be greater than 0",
            ),
            (
                "[runtime]\nmax_connections = 0\n".into(),
                "vipd.toml: runtime.max_connections: must be at least 1 (leave it out for no limit)",
            ),
            (
                service("max_connections = 0\n"),
                "vipd.toml: service \"web\": max_connections: must be at least 1 (leave it out for no limit)",
            ),
            (
                service("max_connections_per_endpoint = 0\n"),
                "vipd.toml: service \"web\": max_connections_per_endpoint: must be at least 1 (leave it out for no limit)",
            ),
            (
                service("").replace(
                    "endpoints = [\"10.0.0.1\"]",
                    "endpoints = [{ address = \"10.0.0.1\", max_connections = 0 }]",
                ),
                "vipd.toml: service \"web\": endpoints[0].max_connections: must be at least 1 (leave it out for no limit)",
            ),
            (
                service("max_connections = 10\n").replace(
                    "target_port = 9000 }",
                    "target_port = 9000, protocol = \"udp\" }",
                ),
                "vipd.toml: service \"web\": max_connections: only allowed on a service with a tcp port (UDP flows have no connections to limit or half-close)",
            ),
            (
                service("")
                    .replace(
                        "target_port = 9000 }",
                        "target_port = 9000, protocol = \"udp\" }",
                    )
                    .replace(
                        "endpoints = [\"10.0.0.1\"]",
                        "endpoints = [{ address = \"10.0.0.1\", max_connections = 3 }]",
                    ),
                "vipd.toml: service \"web\": endpoints[0].max_connections: only allowed on a service with a tcp port",
            ),
        ];
        assert_each_reports(cases);
    }

    #[test]
    fn defaults_problem_is_reported_once() {
        let text = format!(
            "[defaults]\ndrain_timeout = \"0s\"\n{}{}",
            service(""),
            service("").replace("web", "api").replace("8000", "8001")
        );
        assert_eq!(
            problems(&text),
            vec!["vipd.toml: defaults.drain_timeout: must be greater than 0"]
        );
    }
}
