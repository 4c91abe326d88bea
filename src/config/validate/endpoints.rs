//! A service's static `endpoints` list, and the syntax of an endpoint address (also used for
//! `dns.forward` upstreams).

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::Validator;
use crate::config::{EndpointSpec, ProblemScope, ServicePort};

impl Validator {
    /// Converts `endpoints`; unparsable entries come back as `(false, _)`. `require_some`
    /// reports an empty list.
    pub(super) fn endpoints(
        &mut self,
        scope: &ProblemScope,
        raw: &[String],
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
        for (i, text) in raw.iter().enumerate() {
            let key = format!("endpoints[{i}]");
            let spec = match parse_endpoint(text) {
                Ok(spec) => spec,
                Err(message) => {
                    self.push(scope, key, message);
                    out.push((
                        false,
                        EndpointSpec {
                            ip: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
                            port: None,
                        },
                    ));
                    continue;
                }
            };
            let mut ok = true;
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
                        raw[*j]
                    ),
                );
                ok = false;
            } else {
                seen.insert(effective, i);
            }
            out.push((ok, spec));
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
        return Ok(EndpointSpec {
            ip: IpAddr::V6(ip),
            port,
        });
    }
    if let Ok(ip) = text.parse::<IpAddr>() {
        return Ok(EndpointSpec { ip, port: None });
    }
    if let Some((host, port)) = text.rsplit_once(':')
        && let Ok(ip) = host.parse::<Ipv4Addr>()
    {
        return Ok(EndpointSpec {
            ip: IpAddr::V4(ip),
            port: Some(parse_port(text, port)?),
        });
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
        ];
        assert_each_reports(cases);
    }

    #[test]
    fn endpoint_forms() {
        let ep = |ip: &str, port: Option<u16>| EndpointSpec {
            ip: ip.parse().unwrap(),
            port,
        };
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
