//! Process-wide sections: `[runtime]`, `[admin]` (its token file and its collisions with service
//! ports) and `[dns]`, whose listen address must not collide with the admin server or a service.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use super::endpoints::parse_endpoint;
use super::listen::{Listener, addrs_overlap};
use super::names::check_zone;
use super::{DNS_PORT, Validator};
use crate::config::raw::{RawAdmin, RawDns, RawRuntime};
use crate::config::{Admin, DnsServer, ProblemScope, Protocol, Runtime, Secret};

/// TTL of DNS answers when `dns.ttl` is not set.
const DEFAULT_DNS_TTL: Duration = Duration::from_secs(5);

impl Validator {
    pub(super) fn runtime(&mut self, raw: &RawRuntime) -> Runtime {
        if raw.workers == Some(0) {
            self.push(
                &ProblemScope::Global,
                "runtime.workers",
                "must be at least 1",
            );
        }
        Runtime {
            workers: raw.workers.and_then(std::num::NonZeroUsize::new),
            max_connections: self.optional_limit(
                &ProblemScope::Global,
                "runtime.max_connections",
                raw.max_connections,
            ),
        }
    }

    pub(super) fn admin(&mut self, raw: &RawAdmin, config_path: &Path) -> Option<Admin> {
        let scope = ProblemScope::Global;
        let token = raw
            .token_file
            .as_ref()
            .and_then(|file| self.token(file, config_path));
        match raw.listen.parse::<SocketAddr>() {
            Ok(listen) if listen.port() == 0 => {
                self.push(&scope, "admin.listen", "port 0 is out of range 1-65535");
                None
            }
            Ok(listen) => Some(Admin { listen, token }),
            Err(_) => {
                self.push(
                    &scope,
                    "admin.listen",
                    format!(
                        "\"{}\" is not an IP:PORT address (e.g. \"127.0.0.1:9901\" or \"[::1]:9901\")",
                        raw.listen
                    ),
                );
                None
            }
        }
    }

    /// Reads `admin.token_file` (relative paths start at the config file's directory).
    fn token(&mut self, file: &Path, config_path: &Path) -> Option<Secret> {
        let scope = ProblemScope::Global;
        let full = match config_path.parent() {
            Some(dir) if file.is_relative() => dir.join(file),
            _ => file.to_path_buf(),
        };
        match std::fs::read_to_string(&full) {
            Ok(text) if text.trim().is_empty() => {
                self.push(
                    &scope,
                    "admin.token_file",
                    format!("{} is empty", full.display()),
                );
                None
            }
            Ok(text)
                if text
                    .trim()
                    .chars()
                    .any(|c| c.is_whitespace() || c.is_control()) =>
            {
                self.push(
                    &scope,
                    "admin.token_file",
                    format!("{}: the token must be one word", full.display()),
                );
                None
            }
            Ok(text) => Some(Secret::new(text.trim().to_owned())),
            Err(error) => {
                self.push(
                    &scope,
                    "admin.token_file",
                    format!("cannot read {}: {error}", full.display()),
                );
                None
            }
        }
    }

    pub(super) fn admin_collisions(&mut self, admin: &Admin, listeners: &[Listener]) {
        // The admin server is HTTP, so it competes with TCP service ports.
        if let Some(l) = listeners
            .iter()
            .find(|l| l.overlaps(admin.listen, Protocol::Tcp))
        {
            let message = l.collision(admin.listen);
            self.push(&ProblemScope::Global, "admin.listen", message);
        }
    }

    /// `[dns]`; `None` when it has a problem (reported).
    pub(super) fn dns(
        &mut self,
        raw: &RawDns,
        admin: Option<&Admin>,
        listeners: &[Listener],
    ) -> Option<DnsServer> {
        let scope = ProblemScope::Global;
        let before = self.problems.len();
        let listen = match raw.listen.parse::<SocketAddr>() {
            Ok(listen) if listen.port() == 0 => {
                self.push(&scope, "dns.listen", "port 0 is out of range 1-65535");
                None
            }
            Ok(listen) => Some(listen),
            Err(_) => {
                self.push(
                    &scope,
                    "dns.listen",
                    format!(
                        "\"{}\" is not an IP:PORT address (e.g. \"127.0.0.1:5353\" or \"[::1]:5353\")",
                        raw.listen
                    ),
                );
                None
            }
        };
        if let Some(listen) = listen {
            // DNS listens on UDP and TCP, so it competes with the admin server and with service
            // ports of either protocol.
            if let Some(admin) = admin.filter(|a| addrs_overlap(a.listen, listen)) {
                self.push(
                    &scope,
                    "dns.listen",
                    format!(
                        "{listen} is already the listen address of admin.listen ({})",
                        admin.listen
                    ),
                );
            } else if let Some(l) = listeners
                .iter()
                .find(|l| l.overlaps(listen, Protocol::Tcp) || l.overlaps(listen, Protocol::Udp))
            {
                let message = l.collision(listen);
                self.push(&scope, "dns.listen", message);
            }
        }
        let zone = match check_zone(&raw.zone) {
            Ok(zone) => zone,
            Err(message) => {
                self.push(&scope, "dns.zone", message);
                String::new()
            }
        };
        let ttl = match raw.ttl {
            Some(ttl) if ttl < Duration::from_secs(1) => {
                self.push(
                    &scope,
                    "dns.ttl",
                    format!(
                        "{} is less than 1s (DNS TTLs are whole seconds)",
                        humantime::format_duration(ttl)
                    ),
                );
                DEFAULT_DNS_TTL
            }
            Some(ttl) if ttl.as_secs() > u64::from(i32::MAX as u32) => {
                self.push(
                    &scope,
                    "dns.ttl",
                    "must be at most 68 years (2^31-1 seconds)",
                );
                DEFAULT_DNS_TTL
            }
            Some(ttl) => ttl,
            None => DEFAULT_DNS_TTL,
        };
        let mut forward = Vec::new();
        for (i, text) in raw.forward.iter().flatten().enumerate() {
            match parse_upstream(text) {
                Ok(addr) => forward.push(addr),
                Err(message) => self.push(&scope, format!("dns.forward[{i}]"), message),
            }
        }
        (self.problems.len() == before).then(|| DnsServer {
            listen: listen.expect("no problem means the address parsed"),
            zone,
            ttl,
            forward,
        })
    }
}

/// Parses a `dns.forward` entry: `IP`, `IP:PORT`, `[IPv6]` or `[IPv6]:PORT` (port 53 if absent).
fn parse_upstream(text: &str) -> Result<SocketAddr, String> {
    let forms = "expected IP, IP:PORT, [IPv6] or [IPv6]:PORT";
    let spec = parse_endpoint(text)
        .map_err(|_| format!("\"{text}\" is not an upstream address; {forms}"))?;
    if spec.ip.is_unspecified() {
        return Err(format!("\"{text}\" is a wildcard address, not an upstream"));
    }
    Ok(SocketAddr::new(spec.ip, spec.port.unwrap_or(DNS_PORT)))
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{assert_each_reports, load, service};

    #[test]
    fn each_rule_reports_its_key() {
        // (text, the one expected problem line)
        let cases: Vec<(String, &str)> = vec![
            (
                "[runtime]\nworkers = 0\n".into(),
                "vipd.toml: runtime.workers: must be at least 1",
            ),
            (
                "[admin]\nlisten = \"127.0.0.1\"\n".into(),
                "vipd.toml: admin.listen: \"127.0.0.1\" is not an IP:PORT address (e.g. \"127.0.0.1:9901\" or \"[::1]:9901\")",
            ),
            (
                "[admin]\nlisten = \"127.0.0.1:0\"\n".into(),
                "vipd.toml: admin.listen: port 0 is out of range 1-65535",
            ),
            (
                format!("[admin]\nlisten = \"0.0.0.0:8000\"\n{}", service("")),
                "vipd.toml: admin.listen: 0.0.0.0:8000 overlaps 127.0.0.1:8000 of service \"web\" ports[0] (a wildcard address covers every IP of its family)",
            ),
            (
                format!(
                    "[dns]\nlisten = \"127.0.0.1:8000\"\nzone = \"svc.local\"\n{}",
                    service("").replace("9000 }", "9000, protocol = \"udp\" }")
                ),
                "vipd.toml: dns.listen: 127.0.0.1:8000 is already the listen address of service \"web\" ports[0]",
            ),
        ];
        assert_each_reports(cases);
    }

    #[test]
    fn the_admin_server_may_share_an_address_with_a_udp_port() {
        // The admin server is HTTP over TCP only.
        let text = format!(
            "[admin]\nlisten = \"127.0.0.1:8000\"\n{}",
            service("").replace("9000 }", "9000, protocol = \"udp\" }")
        );
        assert!(load(&text).is_ok());
    }
}
