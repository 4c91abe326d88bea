//! A service's static `endpoints` list — address strings, or tables with `address`, `weight`
//! and `backup` — and the syntax of an endpoint address (also used for `dns.forward`
//! upstreams).

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::Validator;
use super::names::check_dns_label;
use crate::config::raw::RawEndpoint;
use crate::config::{EndpointSpec, ProblemScope, ServicePort};

impl Validator {
    /// Converts `endpoints`; unparsable entries come back as `(false, _)`. `require_some`
    /// reports an empty list.
    pub(super) fn endpoints(
        &mut self,
        scope: &ProblemScope,
        raw: &[RawEndpoint],
        ports: &[(bool, ServicePort)],
        require_some: bool,
    ) -> Vec<(bool, EndpointSpec)> {
        if require_some && raw.is_empty() {
            self.push(scope, "endpoints", "must list at least one endpoint");
        }
        // With one port, "IP" and "IP:target_port" are the same endpoint.
        let single_target = match ports {
            [(_, p)] => Some(p.target_port),
            _ => None,
        };
        let mut out: Vec<(bool, EndpointSpec)> = Vec::with_capacity(raw.len());
        // Effective (IP, port) → index of the first endpoint with it.
        let mut seen: HashMap<(IpAddr, Option<u16>), usize> = HashMap::new();
        // Replica name → index of the endpoint with it.
        let mut names: HashMap<&str, usize> = HashMap::new();
        for (i, entry) in raw.iter().enumerate() {
            let text = &entry.address;
            // A table's address is its own key, so the message points at the right value.
            let key = if entry.table {
                format!("endpoints[{i}].address")
            } else {
                format!("endpoints[{i}]")
            };
            let mut ok = true;
            let weight = match entry.weight {
                None => EndpointSpec::DEFAULT_WEIGHT,
                Some(w) if (1..=EndpointSpec::MAX_WEIGHT).contains(&w) => w,
                Some(w) => {
                    self.push(
                        scope,
                        format!("endpoints[{i}].weight"),
                        format!("{w} is out of range 1-{}", EndpointSpec::MAX_WEIGHT),
                    );
                    ok = false;
                    EndpointSpec::DEFAULT_WEIGHT
                }
            };
            if let Some(name) = &entry.name {
                if let Err(message) = check_dns_label(name) {
                    self.push(scope, format!("endpoints[{i}].name"), message);
                    ok = false;
                } else if let Some(j) = names.get(name.as_str()) {
                    self.push(
                        scope,
                        format!("endpoints[{i}].name"),
                        format!("\"{name}\" is already the name of endpoints[{j}]"),
                    );
                    ok = false;
                } else {
                    names.insert(name, i);
                }
            }
            let spec = match parse_endpoint(text) {
                Ok(spec) => EndpointSpec {
                    weight,
                    backup: entry.backup.unwrap_or(false),
                    name: entry.name.clone(),
                    check: entry.check.unwrap_or(true),
                    max_connections: self.optional_limit(
                        scope,
                        &format!("endpoints[{i}].max_connections"),
                        entry.max_connections,
                    ),
                    ..spec
                },
                Err(message) => {
                    self.push(scope, key, message);
                    out.push((
                        false,
                        EndpointSpec::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), None),
                    ));
                    continue;
                }
            };
            if spec.ip.is_unspecified() {
                // Connecting to 0.0.0.0 / :: silently means "this host"; say so explicitly.
                self.push(
                    scope,
                    &key,
                    format!("\"{text}\" is a wildcard address, not a backend; use e.g. 127.0.0.1"),
                );
                ok = false;
            }
            if spec.port.is_some() && ports.len() > 1 {
                self.push(
                    scope,
                    &key,
                    format!(
                        "\"{text}\" has a port, which is only allowed when the service has exactly one \
                         port (this one has {}); give the IP alone and set ports[].target_port",
                        ports.len()
                    ),
                );
                ok = false;
            }
            let effective = (spec.ip, spec.port.or(single_target));
            if let Some(j) = seen.get(&effective) {
                self.push(
                    scope,
                    &key,
                    format!(
                        "\"{text}\" is the same endpoint as endpoints[{j}] (\"{}\")",
                        raw[*j].address
                    ),
                );
                ok = false;
            } else {
                seen.insert(effective, i);
            }
            out.push((ok, spec));
        }
        // RFC 2782's rule for SRV, and the only sensible one for a list: backups back something.
        if !raw.is_empty() && out.iter().all(|(ok, e)| *ok && e.backup) {
            self.push(
                scope,
                "endpoints",
                "every endpoint is a backup; at least one must be in the primary tier \
                 (backup = false)",
            );
        }
        out
    }
}

/// Parses an endpoint: `IP`, `IP:PORT`, `[IPv6]` or `[IPv6]:PORT`; a bare IPv6 (no brackets)
/// is an IP without port, since its colons make a port suffix ambiguous.
pub(super) fn parse_endpoint(text: &str) -> Result<EndpointSpec, String> {
    let forms = "expected IP, IP:PORT, [IPv6] or [IPv6]:PORT";
    if let Some(rest) = text.strip_prefix('[') {
        let Some((host, after)) = rest.split_once(']') else {
            return Err(format!("\"{text}\" lacks the closing ']'; {forms}"));
        };
        let ip: Ipv6Addr = host
            .parse()
            .map_err(|_| format!("\"{host}\" in \"{text}\" is not an IPv6 address; {forms}"))?;
        let port = match after {
            "" => None,
            _ => match after.strip_prefix(':') {
                Some(port) => Some(parse_port(text, port)?),
                None => return Err(format!("\"{text}\" has junk after ']'; {forms}")),
            },
        };
        return Ok(EndpointSpec::new(IpAddr::V6(ip), port));
    }
    if let Ok(ip) = text.parse::<IpAddr>() {
        return Ok(EndpointSpec::new(ip, None));
    }
    if let Some((host, port)) = text.rsplit_once(':')
        && let Ok(ip) = host.parse::<Ipv4Addr>()
    {
        return Ok(EndpointSpec::new(
            IpAddr::V4(ip),
            Some(parse_port(text, port)?),
        ));
    }
    Err(format!("\"{text}\" is not an endpoint address; {forms}"))
}

/// Parses the port of endpoint `text`, with a range message for numbers that are not ports.
fn parse_port(text: &str, port: &str) -> Result<u16, String> {
    let digits = !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit());
    match port.parse::<u16>() {
        Ok(0) => Err(format!("port 0 in \"{text}\" is out of range 1-65535")),
        Ok(n) => Ok(n),
        Err(_) if digits => Err(format!("port {port} in \"{text}\" is out of range 1-65535")),
        Err(_) => Err(format!("\"{port}\" in \"{text}\" is not a port number")),
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{assert_each_reports, service};
    use super::*;

    #[test]
    fn each_rule_reports_its_key() {
        // (text, the one expected problem line)
        let cases: Vec<(String, &str)> = vec![
            (
                service("").replace("[\"10.0.0.1\"]", "[]"),
                "vipd.toml: service \"web\": endpoints: must list at least one endpoint",
            ),
            (
                service("").replace("\"10.0.0.1\"", "\"10.0.0.300\""),
                "vipd.toml: service \"web\": endpoints[0]: \"10.0.0.300\" is not an endpoint address; expected IP, IP:PORT, [IPv6] or [IPv6]:PORT",
            ),
            (
                service("").replace("\"10.0.0.1\"", "\"[::]\""),
                "vipd.toml: service \"web\": endpoints[0]: \"[::]\" is a wildcard address, not a backend; use e.g. 127.0.0.1",
            ),
            (
                service("").replace("\"10.0.0.1\"", "\"10.0.0.1:0\""),
                "vipd.toml: service \"web\": endpoints[0]: port 0 in \"10.0.0.1:0\" is out of range 1-65535",
            ),
            (
                service("")
                    .replace("9000 }]", "9000 }, { port = 1 }]")
                    .replace("\"10.0.0.1\"", "\"10.0.0.1:80\""),
                "vipd.toml: service \"web\": endpoints[0]: \"10.0.0.1:80\" has a port, which is only allowed when the service has exactly one port (this one has 2); give the IP alone and set ports[].target_port",
            ),
            (
                service("").replace("\"10.0.0.1\"", "\"10.0.0.1\", \"10.0.0.1:9000\""),
                "vipd.toml: service \"web\": endpoints[1]: \"10.0.0.1:9000\" is the same endpoint as endpoints[0] (\"10.0.0.1\")",
            ),
            (
                service("").replace("\"10.0.0.1\"", "{ address = \"10.0.0.1\", weight = 0 }"),
                "vipd.toml: service \"web\": endpoints[0].weight: 0 is out of range 1-1000",
            ),
            (
                service("").replace("\"10.0.0.1\"", "\"10.0.0.2\", { address = \"10.0.0.1\", weight = 1001 }"),
                "vipd.toml: service \"web\": endpoints[1].weight: 1001 is out of range 1-1000",
            ),
            (
                service("").replace("\"10.0.0.1\"", "{ address = \"10.0.0.x\", backup = true }"),
                "vipd.toml: service \"web\": endpoints[0].address: \"10.0.0.x\" is not an endpoint address; expected IP, IP:PORT, [IPv6] or [IPv6]:PORT",
            ),
            (
                service("").replace("\"10.0.0.1\"", "\"10.0.0.1\", { address = \"10.0.0.1:9000\", weight = 2 }"),
                "vipd.toml: service \"web\": endpoints[1].address: \"10.0.0.1:9000\" is the same endpoint as endpoints[0] (\"10.0.0.1\")",
            ),
            (
                service("").replace("\"10.0.0.1\"", "{ address = \"10.0.0.1\", name = \"DB-0\" }"),
                "vipd.toml: service \"web\": endpoints[0].name: \"DB-0\" may only contain lowercase letters a-z, digits and '-'",
            ),
            (
                service("").replace("\"10.0.0.1\"", "{ address = \"10.0.0.1\", name = \"db-0\" }, { address = \"10.0.0.2\", name = \"db-0\" }"),
                "vipd.toml: service \"web\": endpoints[1].name: \"db-0\" is already the name of endpoints[0]",
            ),
            (
                service("").replace("\"10.0.0.1\"", "{ address = \"10.0.0.1\", backup = true }, { address = \"10.0.0.2\", backup = true }"),
                "vipd.toml: service \"web\": endpoints: every endpoint is a backup; at least one must be in the primary tier (backup = false)",
            ),
        ];
        assert_each_reports(cases);
    }

    #[test]
    fn tables_carry_weight_and_tier() {
        let config = super::super::test_support::load(&service("").replace(
            "\"10.0.0.1\"",
            "\"10.0.0.1\", { address = \"10.0.0.2\", weight = 3, name = \"db-1\" }, \
             { address = \"10.0.0.3\", backup = true, check = false }",
        ))
        .unwrap();
        let got: Vec<(String, u32, bool, Option<&str>, bool)> = config.services[0]
            .endpoints
            .iter()
            .map(|e| {
                (
                    e.ip.to_string(),
                    e.weight,
                    e.backup,
                    e.name.as_deref(),
                    e.check,
                )
            })
            .collect();
        assert_eq!(
            got,
            vec![
                ("10.0.0.1".to_owned(), 1, false, None, true),
                ("10.0.0.2".to_owned(), 3, false, Some("db-1"), true),
                ("10.0.0.3".to_owned(), 1, true, None, false),
            ]
        );
    }

    #[test]
    fn endpoint_forms() {
        let ep = |ip: &str, port: Option<u16>| EndpointSpec::new(ip.parse().unwrap(), port);
        let ok = [
            ("10.0.0.1", ep("10.0.0.1", None)),
            ("10.0.0.1:80", ep("10.0.0.1", Some(80))),
            ("::1", ep("::1", None)),
            ("2001:db8::1", ep("2001:db8::1", None)),
            ("[::1]", ep("::1", None)),
            ("[::1]:65535", ep("::1", Some(65535))),
        ];
        for (text, want) in ok {
            assert_eq!(parse_endpoint(text), Ok(want), "{text}");
        }
        let bad = [
            ("", "is not an endpoint address"),
            ("host:80", "is not an endpoint address"),
            ("10.0.0.1:", "\"\" in \"10.0.0.1:\" is not a port number"),
            ("10.0.0.1:http", "is not a port number"),
            (
                "10.0.0.1:70000",
                "port 70000 in \"10.0.0.1:70000\" is out of range 1-65535",
            ),
            ("[::1]:0", "port 0 in \"[::1]:0\" is out of range"),
            ("[::1", "lacks the closing ']'"),
            ("[10.0.0.1]", "is not an IPv6 address"),
            ("[::1]80", "has junk after ']'"),
            ("::1:80:x", "is not an endpoint address"),
        ];
        for (text, want) in bad {
            let err = parse_endpoint(text).unwrap_err();
            assert!(err.contains(want), "{text}: {err}");
        }
    }
}
