//! Validation: raw → typed. Applies defaults, checks every value and every cross-value rule,
//! and collects all problems so one run of `vipd` shows the user everything to fix.
//!
//! After a problem is found the value is replaced by a harmless fallback so checking can go on;
//! the typed [`Config`] is only returned when no problem was found. Checks that combine values
//! (timeout vs period, duplicate listeners) skip values that were already reported, so one
//! mistake yields one message.
//!
//! `validate` walks the file in order and hands each section to a method of [`Validator`]; the
//! methods live next to their rules, one submodule per section:
//!
//! - [`global`]: `[runtime]`, `[admin]` (its token file, its collisions with service ports) and
//!   `[dns]` (its listen address, zone, TTL and `forward` upstreams).
//! - [`connection`]: the connection settings of `[defaults]` and a service's own overrides.
//! - [`service`]: one `[[service]]`: its name, `vip`, `ports`, the addresses it listens on,
//!   `manage_vip`/`vip_interface` and `[service.outlier]`.
//! - [`endpoints`]: a service's static `endpoints` list (with weights and tiers) and the
//!   endpoint address syntax.
//! - [`placement`]: `balance`, `session_affinity`, `affinity_timeout`, `slow_start`,
//!   `when_all_unhealthy`.
//! - [`health`]: the `[service.health]` table: check kind and its keys, probe timing and
//!   thresholds; [`hex`]: the `*_hex` byte strings.
//! - [`discovery`]: `[service.discovery]` and the nameserver address syntax.
//! - [`listen`]: the addresses services and servers bind, when two of them collide, and when an
//!   endpoint is a service's own listener.
//! - [`names`]: the syntax of names: DNS labels, DNS names, the zone, interface names.

mod connection;
mod discovery;
mod endpoints;
#[cfg(test)]
mod fixtures_tests;
mod global;
mod health;
mod hex;
mod listen;
pub(crate) mod names;
mod placement;
mod proxy_protocol;
mod service;
#[cfg(test)]
mod test_support;

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::path::Path;
use std::time::Duration;

use super::error::{Problem, ProblemScope};
use super::raw::RawConfig;
use super::{Config, ConfigError};
use listen::Listener;

/// Port of a nameserver or `dns.forward` upstream given without one.
const DNS_PORT: u16 = 53;

/// Validates a parsed file; `path` only names the file in errors.
pub fn validate(raw: RawConfig, path: &Path) -> Result<Config, ConfigError> {
    let mut v = Validator::default();
    let runtime = v.runtime(&raw.runtime);
    let admin = raw.admin.as_ref().and_then(|a| v.admin(a, path));
    let defaults = v.defaults(&raw.defaults);

    let mut services = Vec::with_capacity(raw.services.len());
    // Name → 1-based index of the first service with it.
    let mut names: HashMap<String, usize> = HashMap::new();
    let mut listeners: Vec<Listener> = Vec::new();
    for (i, raw_service) in raw.services.iter().enumerate() {
        let service = v.service(i + 1, raw_service, &defaults, &mut names, &mut listeners);
        services.push(service);
    }
    if let Some(admin) = &admin {
        v.admin_collisions(admin, &listeners);
    }
    let dns = raw
        .dns
        .as_ref()
        .and_then(|d| v.dns(d, admin.as_ref(), &listeners));

    if v.problems.is_empty() {
        Ok(Config {
            runtime,
            admin,
            dns,
            services,
        })
    } else {
        Err(ConfigError::Invalid {
            path: path.to_path_buf(),
            problems: v.problems,
        })
    }
}

/// Collects problems while converting.
#[derive(Default)]
struct Validator {
    problems: Vec<Problem>,
}

impl Validator {
    fn push(&mut self, scope: &ProblemScope, key: impl Into<String>, message: impl Into<String>) {
        self.problems.push(Problem {
            scope: scope.clone(),
            key: key.into(),
            message: message.into(),
        });
    }

    /// `value` if set and non-zero, else `fallback` (reporting a zero).
    fn positive(
        &mut self,
        scope: &ProblemScope,
        key: &str,
        value: Option<Duration>,
        fallback: Duration,
    ) -> Duration {
        match value {
            Some(d) if d.is_zero() => {
                self.push(scope, key, "must be greater than 0");
                fallback
            }
            Some(d) => d,
            None => fallback,
        }
    }

    /// A limit that may be absent (no limit): `value`, reporting a zero.
    fn optional_limit(
        &mut self,
        scope: &ProblemScope,
        key: &str,
        value: Option<u32>,
    ) -> Option<NonZeroU32> {
        if value == Some(0) {
            self.push(scope, key, "must be at least 1 (leave it out for no limit)");
        }
        value.and_then(NonZeroU32::new)
    }

    /// `value` if set and non-zero, else `fallback` (reporting a zero).
    fn at_least_one(
        &mut self,
        scope: &ProblemScope,
        key: &str,
        value: Option<u32>,
        fallback: NonZeroU32,
    ) -> NonZeroU32 {
        match value.map(NonZeroU32::new) {
            Some(None) => {
                self.push(scope, key, "must be at least 1");
                fallback
            }
            Some(Some(n)) => n,
            None => fallback,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, SocketAddr};
    use std::path::Path;
    use std::time::Duration;

    use super::test_support::{load, ms, nz, problems, service};
    use crate::config::{
        Balance, ConnectionSettings, EndpointSpec, Health, HealthCheck, Protocol, ServicePort,
        TcpKeepalive,
    };

    #[test]
    fn full_config_converts() {
        let config = load(
            r#"
            [runtime]
            workers = 2
            [admin]
            listen = "[::1]:9901"
            [defaults]
            connect_timeout = "2s"
            idle_timeout = "10m"
            max_connect_attempts = 5
            half_close = false
            tcp_keepalive = { idle = "60s", interval = "10s", count = 6 }

            [[service]]
            name = "web"
            vip = "::1"
            ports = [{ port = 80, target_port = 8080, protocol = "tcp", name = "http" }, { port = 443 }]
            endpoints = ["::2", "[::3]", "10.0.0.1"]
            balance = "round_robin"
            idle_timeout = "1m"
            half_close = true
            tcp_keepalive = { idle = "2m", interval = "5s", count = 3 }
            [service.health]
            check = "http"
            path = "/healthz"
            port = 9100
            period = "2s"
            timeout = "1s"
            failure_threshold = 4
            success_threshold = 3

            [[service]]
            name = "db"
            vip = "10.1.1.1"
            ports = [{ port = 5432 }]
            endpoints = ["10.0.0.5:6432", "10.0.0.6"]
            "#,
        )
        .unwrap();
        assert_eq!(config.runtime.workers, std::num::NonZeroUsize::new(2));
        assert_eq!(config.admin.unwrap().listen, "[::1]:9901".parse().unwrap());

        let web = &config.services[0];
        assert_eq!(web.vip, "::1".parse::<IpAddr>().unwrap());
        assert_eq!(
            web.ports,
            vec![
                ServicePort {
                    port: 80,
                    target_port: 8080,
                    protocol: Protocol::Tcp,
                    name: Some("http".into()),
                    accept_proxy_protocol: false,
                },
                ServicePort {
                    port: 443,
                    target_port: 443,
                    protocol: Protocol::Tcp,
                    name: None,
                    accept_proxy_protocol: false,
                },
            ]
        );
        assert_eq!(
            web.endpoint_addrs(&web.ports[0]),
            vec![
                "[::2]:8080".parse().unwrap(),
                "[::3]:8080".parse().unwrap(),
                "10.0.0.1:8080".parse().unwrap()
            ]
        );
        // Service key over [defaults] over built-in.
        assert_eq!(
            web.connection,
            ConnectionSettings {
                connect_timeout: ms(2000),
                idle_timeout: ms(60_000),
                udp_idle_timeout: ms(30_000),
                drain_timeout: ms(30_000),
                max_connect_attempts: nz(5),
                half_close: true,
                tcp_keepalive: Some(TcpKeepalive {
                    idle: ms(120_000),
                    interval: ms(5000),
                    count: 3,
                }),
                queue_timeout: ms(5000),
                proxy_protocol_timeout: ms(3000),
            }
        );
        assert_eq!(
            web.health,
            Health {
                check: HealthCheck::http("/healthz"),
                port: Some(9100),
                period: ms(2000),
                jitter: 0.1,
                timeout: ms(1000),
                failure_threshold: nz(4),
                success_threshold: nz(3),
            }
        );

        let db = &config.services[1];
        assert_eq!(db.connection.idle_timeout, ms(600_000));
        assert!(
            !db.connection.half_close,
            "[defaults] over the built-in default"
        );
        assert_eq!(
            db.connection.tcp_keepalive,
            Some(TcpKeepalive {
                idle: ms(60_000),
                interval: ms(10_000),
                count: 6,
            })
        );
        assert_eq!(db.health, Health::default());
        assert_eq!(
            db.endpoint_addrs(&db.ports[0]),
            vec![
                "10.0.0.5:6432".parse().unwrap(),
                "10.0.0.6:5432".parse().unwrap()
            ]
        );
    }

    #[test]
    fn minimal_config_gets_defaults() {
        let config = load(&service("")).unwrap();
        assert_eq!(config.runtime.workers, None);
        assert_eq!(config.admin, None);
        let web = &config.services[0];
        assert_eq!(web.balance, Balance::RoundRobin);
        assert_eq!(web.health, Health::default());
        assert_eq!(web.connection, ConnectionSettings::default());
        assert_eq!(
            web.endpoints,
            vec![EndpointSpec::new("10.0.0.1".parse().unwrap(), None)]
        );
    }

    #[test]
    fn all_problems_are_reported_in_file_order() {
        let text = format!(
            "[runtime]\nworkers = 0\n{}",
            service("[service.health]\nsuccess_threshold = 0\nfailure_threshold = 0\n")
                .replace("port = 8000", "port = 0")
                .replace("\"10.0.0.1\"", "\"nope\"")
        );
        let got = problems(&text);
        assert_eq!(
            got,
            vec![
                "vipd.toml: runtime.workers: must be at least 1",
                "vipd.toml: service \"web\": ports[0].port: 0 is out of range 1-65535",
                "vipd.toml: service \"web\": endpoints[0]: \"nope\" is not an endpoint address; expected IP, IP:PORT, [IPv6] or [IPv6]:PORT",
                "vipd.toml: service \"web\": health.failure_threshold: must be at least 1",
                "vipd.toml: service \"web\": health.success_threshold: must be at least 1",
            ]
        );
    }

    #[test]
    fn dns_and_vip_ownership_convert() {
        let text = "[dns]\nlisten = \"[::1]:5353\"\nzone = \"Svc.Cluster.Local.\"\n\
                    forward = [\"127.0.0.1\", \"[::1]:5300\"]\n\
                    [[service]]\nname = \"web\"\nvip = \"10.0.0.5\"\nports = [{ port = 80 }]\n\
                    endpoints = [\"127.0.0.1\"]\nmanage_vip = true\n";
        let config = crate::config::from_str(text, Path::new("vipd.toml")).unwrap();
        let dns = config.dns.unwrap();
        assert_eq!(dns.listen, "[::1]:5353".parse().unwrap());
        assert_eq!(dns.zone, "svc.cluster.local");
        assert_eq!(dns.ttl, Duration::from_secs(5));
        assert_eq!(
            dns.forward,
            vec![
                "127.0.0.1:53".parse::<SocketAddr>().unwrap(),
                "[::1]:5300".parse().unwrap()
            ]
        );
        assert!(config.services[0].manage_vip);
        assert_eq!(config.services[0].vip_interface, "lo");
    }
}
