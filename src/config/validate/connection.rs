//! Connection settings: `[defaults]` over the built-in defaults, and a service's own keys over
//! `[defaults]`.

use std::time::Duration;

use super::Validator;
use crate::config::raw::{RawConnection, RawKeepalive, RawKeepaliveTable};
use crate::config::{ConnectionSettings, ProblemScope, TcpKeepalive};

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
        // A table replaces the inherited one whole, `false` turns it off.
        let tcp_keepalive = match &raw.tcp_keepalive {
            None => base.tcp_keepalive,
            Some(keepalive) => self
                .keepalive(scope, &format!("{prefix}tcp_keepalive"), keepalive)
                .unwrap_or(base.tcp_keepalive),
        };
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
            tcp_keepalive,
            queue_timeout,
            proxy_protocol_timeout,
        }
    }

    /// `tcp_keepalive` as written: `Ok(None)` for `false`, `Err` (reported) when invalid.
    fn keepalive(
        &mut self,
        scope: &ProblemScope,
        key: &str,
        raw: &RawKeepalive,
    ) -> Result<Option<TcpKeepalive>, ()> {
        let RawKeepaliveTable {
            idle,
            interval,
            count,
        } = match raw {
            RawKeepalive::Bool(false) => return Ok(None),
            RawKeepalive::Bool(true) => {
                self.push(
                    scope,
                    key,
                    "true is not a setting: give the table, e.g. \
                     { idle = \"60s\", interval = \"10s\", count = 6 } (false turns it off)",
                );
                return Err(());
            }
            RawKeepalive::Table(table) => table,
        };
        let before = self.problems.len();
        for (field, value) in [("idle", idle), ("interval", interval)] {
            if let Err(message) = keepalive_seconds(*value) {
                self.push(scope, format!("{key}.{field}"), message);
            }
        }
        if !(1..=TcpKeepalive::MAX_COUNT).contains(count) {
            self.push(
                scope,
                format!("{key}.count"),
                format!("{count} is out of range 1-{}", TcpKeepalive::MAX_COUNT),
            );
        }
        if self.problems.len() > before {
            return Err(());
        }
        Ok(Some(TcpKeepalive {
            idle: *idle,
            interval: *interval,
            count: *count,
        }))
    }
}

/// Checks a keepalive time: the kernel takes whole seconds, 1 to [`TcpKeepalive::MAX_SECS`].
fn keepalive_seconds(value: Duration) -> Result<(), String> {
    let out_of_range =
        |shown: String| format!("{shown} is out of range 1s-{}s", TcpKeepalive::MAX_SECS);
    if value < Duration::from_secs(1) {
        Err(out_of_range(humantime::format_duration(value).to_string()))
    } else if value.subsec_nanos() != 0 {
        Err(format!(
            "{} is not a whole number of seconds (the kernel counts keepalive times in seconds)",
            humantime::format_duration(value)
        ))
    } else if value.as_secs() > TcpKeepalive::MAX_SECS {
        Err(out_of_range(format!("{}s", value.as_secs())))
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::super::test_support::{assert_each_reports, load, problems, service};
    use crate::config::TcpKeepalive;

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
                service(&keepalive("\"0s\"", "\"10s\"", "6")),
                "vipd.toml: service \"web\": tcp_keepalive.idle: 0s is out of range 1s-32767s",
            ),
            (
                service(&keepalive("\"500ms\"", "\"10s\"", "6")),
                "vipd.toml: service \"web\": tcp_keepalive.idle: 500ms is out of range 1s-32767s",
            ),
            (
                service(&keepalive("\"32768s\"", "\"10s\"", "6")),
                "vipd.toml: service \"web\": tcp_keepalive.idle: 32768s is out of range 1s-32767s",
            ),
            (
                service(&keepalive("\"1500ms\"", "\"10s\"", "6")),
                "vipd.toml: service \"web\": tcp_keepalive.idle: 1s 500ms is not a whole number \
                 of seconds (the kernel counts keepalive times in seconds)",
            ),
            (
                service(&keepalive("\"60s\"", "\"0s\"", "6")),
                "vipd.toml: service \"web\": tcp_keepalive.interval: 0s is out of range 1s-32767s",
            ),
            (
                service(&keepalive("\"60s\"", "\"10h\"", "6")),
                "vipd.toml: service \"web\": tcp_keepalive.interval: 36000s is out of range \
                 1s-32767s",
            ),
            (
                service(&keepalive("\"60s\"", "\"2.5s\"", "6")),
                "vipd.toml: service \"web\": tcp_keepalive.interval: 2s 500ms is not a whole \
                 number of seconds (the kernel counts keepalive times in seconds)",
            ),
            (
                service(&keepalive("\"60s\"", "\"10s\"", "0")),
                "vipd.toml: service \"web\": tcp_keepalive.count: 0 is out of range 1-127",
            ),
            (
                service(&keepalive("\"60s\"", "\"10s\"", "128")),
                "vipd.toml: service \"web\": tcp_keepalive.count: 128 is out of range 1-127",
            ),
            (
                format!("[defaults]\n{}", keepalive("\"60s\"", "\"10s\"", "300")),
                "vipd.toml: defaults.tcp_keepalive.count: 300 is out of range 1-127",
            ),
            (
                service("tcp_keepalive = true\n"),
                "vipd.toml: service \"web\": tcp_keepalive: true is not a setting: give the \
                 table, e.g. { idle = \"60s\", interval = \"10s\", count = 6 } (false turns it off)",
            ),
            (
                "[defaults]\ntcp_keepalive = true\n".into(),
                "vipd.toml: defaults.tcp_keepalive: true is not a setting: give the table, e.g. \
                 { idle = \"60s\", interval = \"10s\", count = 6 } (false turns it off)",
            ),
            (
                udp_service(&keepalive("\"60s\"", "\"10s\"", "6")),
                "vipd.toml: service \"web\": tcp_keepalive: only allowed on a service with a tcp \
                 port (ports[].protocol = \"tcp\")",
            ),
            (
                // One mistake, one message: the table of a key that is not allowed is not
                // looked into.
                udp_service(&keepalive("\"0s\"", "\"10s\"", "0")),
                "vipd.toml: service \"web\": tcp_keepalive: only allowed on a service with a tcp \
                 port (ports[].protocol = \"tcp\")",
            ),
            (
                udp_service("tcp_keepalive = true\n"),
                "vipd.toml: service \"web\": tcp_keepalive: only allowed on a service with a tcp \
                 port (ports[].protocol = \"tcp\")",
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
                "vipd.toml: service \"web\": max_connections: only allowed on a service with a tcp port (ports[].protocol = \"tcp\")",
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
                "vipd.toml: service \"web\": endpoints[0].max_connections: only allowed on a service with a tcp port (ports[].protocol = \"tcp\")",
            ),
        ];
        assert_each_reports(cases);
    }

    /// A `tcp_keepalive` line with the fields as written.
    fn keepalive(idle: &str, interval: &str, count: &str) -> String {
        format!("tcp_keepalive = {{ idle = {idle}, interval = {interval}, count = {count} }}\n")
    }

    /// [`service`] with its one port UDP.
    fn udp_service(extra: &str) -> String {
        service(extra).replace(
            "target_port = 9000",
            "target_port = 9000, protocol = \"udp\"",
        )
    }

    #[test]
    fn tcp_keepalive_is_inherited_replaced_whole_or_turned_off() {
        let on = |idle, interval, count| {
            Some(TcpKeepalive {
                idle: Duration::from_secs(idle),
                interval: Duration::from_secs(interval),
                count,
            })
        };
        let defaults = format!("[defaults]\n{}", keepalive("\"1m\"", "\"10s\"", "6"));
        let text = [
            defaults,
            service(""),
            service(&keepalive("\"2h\"", "\"1s\"", "1"))
                .replace("web", "replaced")
                .replace("8000", "8001"),
            service("tcp_keepalive = false\n")
                .replace("web", "off")
                .replace("8000", "8002"),
            // `false` is allowed on a UDP-only service, and the inherited table is no error.
            udp_service("tcp_keepalive = false\n")
                .replace("web", "udp-off")
                .replace("8000", "8003"),
            udp_service("")
                .replace("web", "udp")
                .replace("8000", "8004"),
        ]
        .concat();
        let config = load(&text).expect("valid");
        let got: Vec<_> = config
            .services
            .iter()
            .map(|s| (s.name.as_str(), s.connection.tcp_keepalive))
            .collect();
        assert_eq!(
            got,
            vec![
                ("web", on(60, 10, 6)),
                ("replaced", on(7200, 1, 1)),
                ("off", None),
                ("udp-off", None),
                ("udp", on(60, 10, 6)),
            ]
        );
        // The limits themselves are allowed; absent everywhere = off.
        let limits = service(&keepalive("\"32767s\"", "\"1s\"", "127"));
        let config = load(&limits).expect("valid");
        assert_eq!(
            config.services[0].connection.tcp_keepalive,
            on(32_767, 1, 127)
        );
        assert_eq!(
            load(&service("")).unwrap().services[0]
                .connection
                .tcp_keepalive,
            None
        );
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
