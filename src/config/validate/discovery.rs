//! `[service.discovery]`: endpoints from DNS (`dns`: A/AAAA records, `srv`: SRV records), the
//! nameservers to ask and the refresh bounds; and the syntax of a nameserver address.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use super::names::check_dns_name;
use super::{DNS_PORT, Validator};
use crate::config::raw::RawDiscovery;
use crate::config::{Discovery, DiscoverySource, ProblemScope};

/// Default floor for a discovered record's TTL.
const DEFAULT_MIN_REFRESH: Duration = Duration::from_secs(1);
/// Default ceiling for a discovered record's TTL.
const DEFAULT_MAX_REFRESH: Duration = Duration::from_secs(30);

impl Validator {
    /// Converts `[service.discovery]`; `port_count` is the number of the service's ports (SRV
    /// records carry one port, so `srv` needs exactly one).
    pub(super) fn discovery(
        &mut self,
        scope: &ProblemScope,
        raw: &RawDiscovery,
        port_count: usize,
    ) -> Discovery {
        let source = match (&raw.dns, &raw.srv) {
            (Some(name), None) => {
                if let Err(message) = check_dns_name(name) {
                    self.push(scope, "discovery.dns", message);
                }
                DiscoverySource::Dns(name.clone())
            }
            (None, Some(name)) => {
                if let Err(message) = check_dns_name(name) {
                    self.push(scope, "discovery.srv", message);
                }
                if port_count > 1 {
                    self.push(
                        scope,
                        "discovery.srv",
                        format!(
                            "only allowed when the service has exactly one port (this one has \
                             {port_count}), because SRV records carry the port; use \
                             discovery.dns and ports[].target_port"
                        ),
                    );
                }
                DiscoverySource::Srv(name.clone())
            }
            (Some(name), Some(_)) => {
                self.push(
                    scope,
                    "discovery",
                    "`dns` and `srv` are both set; choose one (dns: A/AAAA records, srv: SRV \
                     records)",
                );
                DiscoverySource::Dns(name.clone())
            }
            (None, None) => {
                self.push(
                    scope,
                    "discovery",
                    "set `dns` (a name with A/AAAA records) or `srv` (a name with SRV records)",
                );
                DiscoverySource::Dns(String::new())
            }
        };

        let mut nameservers = Vec::new();
        for (i, text) in raw.nameservers.iter().flatten().enumerate() {
            match parse_nameserver(text) {
                Ok(addr) => nameservers.push(addr),
                Err(message) => self.push(scope, format!("discovery.nameservers[{i}]"), message),
            }
        }

        let min_zero = raw.min_refresh.is_some_and(|d| d.is_zero());
        let max_zero = raw.max_refresh.is_some_and(|d| d.is_zero());
        let min_refresh = self.positive(
            scope,
            "discovery.min_refresh",
            raw.min_refresh,
            DEFAULT_MIN_REFRESH,
        );
        let max_refresh = self.positive(
            scope,
            "discovery.max_refresh",
            raw.max_refresh,
            DEFAULT_MAX_REFRESH,
        );
        if !min_zero && !max_zero && min_refresh > max_refresh {
            self.push(
                scope,
                "discovery.min_refresh",
                format!(
                    "{} must not exceed discovery.max_refresh ({}{})",
                    humantime::format_duration(min_refresh),
                    humantime::format_duration(max_refresh),
                    if raw.max_refresh.is_none() {
                        ", the default"
                    } else {
                        ""
                    }
                ),
            );
        }

        Discovery {
            source,
            nameservers,
            min_refresh,
            max_refresh,
        }
    }
}

/// Parses a nameserver: `IP:PORT`, `[IPv6]:PORT`, or an IP alone (`10.0.0.10`, `::1`,
/// `[::1]`) meaning port 53.
fn parse_nameserver(text: &str) -> Result<SocketAddr, String> {
    let forms = "expected IP, IP:PORT or [IPv6]:PORT";
    let addr = if let Ok(addr) = text.parse::<SocketAddr>() {
        addr
    } else if let Ok(ip) = text.parse::<IpAddr>() {
        SocketAddr::new(ip, DNS_PORT)
    } else if let Some(ip) = text
        .strip_prefix('[')
        .and_then(|t| t.strip_suffix(']'))
        .and_then(|t| t.parse::<Ipv6Addr>().ok())
    {
        SocketAddr::new(IpAddr::V6(ip), DNS_PORT)
    } else {
        return Err(format!("\"{text}\" is not a nameserver address; {forms}"));
    };
    if addr.port() == 0 {
        return Err(format!("port 0 in \"{text}\" is out of range 1-65535"));
    }
    if addr.ip().is_unspecified() {
        return Err(format!(
            "\"{text}\" is a wildcard address, not a nameserver; use e.g. 127.0.0.1"
        ));
    }
    Ok(addr)
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{assert_each_reports, load, ms, service};
    use super::*;

    /// A one-service config using `[service.discovery]` with `discovery` as its keys; `ports`
    /// is the service's `ports` value.
    fn discovery_service(ports: &str, discovery: &str) -> String {
        format!(
            "[[service]]\nname = \"web\"\nvip = \"127.0.0.1\"\nports = {ports}\n\
             [service.discovery]\n{discovery}"
        )
    }

    #[test]
    fn discovery_is_converted_with_defaults() {
        let text = discovery_service(
            "[{ port = 8000, target_port = 9000 }]",
            "dns = \"web-headless.default.svc.cluster.local.\"\n",
        );
        let config = load(&text).unwrap();
        let service = &config.services[0];
        assert!(service.endpoints.is_empty());
        assert_eq!(
            service.discovery,
            Some(Discovery {
                source: DiscoverySource::Dns("web-headless.default.svc.cluster.local.".into()),
                nameservers: vec![],
                min_refresh: Duration::from_secs(1),
                max_refresh: Duration::from_secs(30),
            })
        );

        let text = discovery_service(
            "[{ port = 8000 }]",
            "srv = \"_http._tcp.web.test\"\n\
             nameservers = [\"127.0.0.1:5354\", \"10.96.0.10\", \"::1\", \"[fd00::1]:53\"]\n\
             min_refresh = \"250ms\"\nmax_refresh = \"5m\"\n",
        );
        let discovery = load(&text).unwrap().services[0].discovery.clone().unwrap();
        assert_eq!(
            discovery,
            Discovery {
                source: DiscoverySource::Srv("_http._tcp.web.test".into()),
                nameservers: vec![
                    "127.0.0.1:5354".parse().unwrap(),
                    "10.96.0.10:53".parse().unwrap(),
                    "[::1]:53".parse().unwrap(),
                    "[fd00::1]:53".parse().unwrap(),
                ],
                min_refresh: ms(250),
                max_refresh: Duration::from_secs(300),
            }
        );
    }

    #[test]
    fn discovery_rules_report_their_key() {
        let one_port = "[{ port = 8000, target_port = 9000 }]";
        let cases: Vec<(String, &str)> = vec![
            (
                service("[service.discovery]\ndns = \"web.test\"\n"),
                "vipd.toml: service \"web\": endpoints: `endpoints` and `[service.discovery]` are both set; a service gets its endpoints from exactly one of them",
            ),
            (
                // An empty list next to discovery is still "both", and only that.
                service("[service.discovery]\ndns = \"web.test\"\n")
                    .replace("[\"10.0.0.1\"]", "[]"),
                "vipd.toml: service \"web\": endpoints: `endpoints` and `[service.discovery]` are both set; a service gets its endpoints from exactly one of them",
            ),
            (
                service("").replace("endpoints = [\"10.0.0.1\"]\n", ""),
                "vipd.toml: service \"web\": endpoints: missing: list `endpoints` or add a `[service.discovery]` table",
            ),
            (
                discovery_service(one_port, "dns = \"a.test\"\nsrv = \"_x._tcp.a.test\"\n"),
                "vipd.toml: service \"web\": discovery: `dns` and `srv` are both set; choose one (dns: A/AAAA records, srv: SRV records)",
            ),
            (
                discovery_service(one_port, "min_refresh = \"1s\"\n"),
                "vipd.toml: service \"web\": discovery: set `dns` (a name with A/AAAA records) or `srv` (a name with SRV records)",
            ),
            (
                discovery_service(
                    "[{ port = 80 }, { port = 443 }]",
                    "srv = \"_http._tcp.web.test\"\n",
                ),
                "vipd.toml: service \"web\": discovery.srv: only allowed when the service has exactly one port (this one has 2), because SRV records carry the port; use discovery.dns and ports[].target_port",
            ),
            (
                discovery_service(one_port, "dns = \"web..test\"\n"),
                "vipd.toml: service \"web\": discovery.dns: \"web..test\" has an empty label (two dots in a row)",
            ),
            (
                discovery_service(one_port, "srv = \"http://web\"\n"),
                "vipd.toml: service \"web\": discovery.srv: \"http://web\" is not a DNS name: labels may only contain letters, digits, '-' and '_'",
            ),
            (
                discovery_service(
                    one_port,
                    "dns = \"a.test\"\nnameservers = [\"dns.local\"]\n",
                ),
                "vipd.toml: service \"web\": discovery.nameservers[0]: \"dns.local\" is not a nameserver address; expected IP, IP:PORT or [IPv6]:PORT",
            ),
            (
                discovery_service(
                    one_port,
                    "dns = \"a.test\"\nmin_refresh = \"10s\"\nmax_refresh = \"5s\"\n",
                ),
                "vipd.toml: service \"web\": discovery.min_refresh: 10s must not exceed discovery.max_refresh (5s)",
            ),
            (
                discovery_service(one_port, "dns = \"a.test\"\nmin_refresh = \"1m\"\n"),
                "vipd.toml: service \"web\": discovery.min_refresh: 1m must not exceed discovery.max_refresh (30s, the default)",
            ),
            (
                // A zero is reported once, not again as "greater than max".
                discovery_service(one_port, "dns = \"a.test\"\nmax_refresh = \"0s\"\n"),
                "vipd.toml: service \"web\": discovery.max_refresh: must be greater than 0",
            ),
            (
                discovery_service(one_port, "dns = \"a.test\"\nmin_refresh = \"0s\"\n"),
                "vipd.toml: service \"web\": discovery.min_refresh: must be greater than 0",
            ),
        ];
        assert_each_reports(cases);
    }

    #[test]
    fn nameserver_forms() {
        let a = |s: &str| s.parse::<SocketAddr>().unwrap();
        let ok = [
            ("127.0.0.1:5354", a("127.0.0.1:5354")),
            ("10.96.0.10", a("10.96.0.10:53")),
            ("::1", a("[::1]:53")),
            ("[::1]", a("[::1]:53")),
            ("[::1]:5354", a("[::1]:5354")),
        ];
        for (text, want) in ok {
            assert_eq!(parse_nameserver(text), Ok(want), "{text}");
        }
        let bad = [
            ("", "is not a nameserver address"),
            ("dns.local:53", "is not a nameserver address"),
            ("127.0.0.1:0", "port 0"),
            ("0.0.0.0", "wildcard"),
            ("[::]:53", "wildcard"),
        ];
        for (text, want) in bad {
            let err = parse_nameserver(text).unwrap_err();
            assert!(err.contains(want), "{text}: {err}");
        }
    }
}
