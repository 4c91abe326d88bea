//! Validation: raw → typed. Applies defaults, checks every value and every cross-value rule,
//! and collects all problems so one run of `vipd` shows the user everything to fix.
//!
//! After a problem is found the value is replaced by a harmless fallback so checking can go on;
//! the typed [`Config`] is only returned when no problem was found. Checks that combine values
//! (timeout vs period, duplicate listeners) skip values that were already reported, so one
//! mistake yields one message.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::num::NonZeroU32;
use std::path::Path;
use std::time::Duration;

use super::error::{Problem, ProblemScope};
use super::raw::{
    RawAdmin, RawBalance, RawCheck, RawConfig, RawConnection, RawHealth, RawOutlier, RawPort,
    RawProtocol, RawRuntime, RawService,
};
use super::{
    Admin, Balance, Config, ConfigError, ConnectionSettings, EndpointSpec, Health, HealthCheck,
    Outlier, Protocol, Runtime, Secret, Service, ServicePort,
};

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

    if v.problems.is_empty() {
        Ok(Config {
            runtime,
            admin,
            dns: None,
            services,
        })
    } else {
        Err(ConfigError::Invalid {
            path: path.to_path_buf(),
            problems: v.problems,
        })
    }
}

/// One address a service will bind, remembered to find collisions between services.
struct Listener {
    addr: SocketAddr,
    protocol: Protocol,
    /// How messages name the owner, e.g. `service "web" ports[0]`.
    owner: String,
}

impl Listener {
    /// Whether binding both would conflict: same protocol and port, and the same IP or a
    /// wildcard (`0.0.0.0`, `::`) of the same family, which covers every IP of that family.
    fn overlaps(&self, addr: SocketAddr, protocol: Protocol) -> bool {
        self.protocol == protocol && addrs_overlap(self.addr, addr)
    }

    /// The message for a collision of `addr` with this listener.
    fn collision(&self, addr: SocketAddr) -> String {
        if self.addr == addr {
            format!("{addr} is already the listen address of {}", self.owner)
        } else {
            format!(
                "{addr} overlaps {} of {} (a wildcard address covers every IP of its family)",
                self.addr, self.owner
            )
        }
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

    fn runtime(&mut self, raw: &RawRuntime) -> Runtime {
        if raw.workers == Some(0) {
            self.push(
                &ProblemScope::Global,
                "runtime.workers",
                "must be at least 1",
            );
        }
        Runtime {
            workers: raw.workers.filter(|&w| w > 0),
        }
    }

    fn admin(&mut self, raw: &RawAdmin, config_path: &Path) -> Option<Admin> {
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

    fn admin_collisions(&mut self, admin: &Admin, listeners: &[Listener]) {
        // The admin server is HTTP, so it competes with TCP service ports.
        if let Some(l) = listeners
            .iter()
            .find(|l| l.overlaps(admin.listen, Protocol::Tcp))
        {
            let message = l.collision(admin.listen);
            self.push(&ProblemScope::Global, "admin.listen", message);
        }
    }

    /// `[defaults]` over the built-in defaults. A zero value is reported here, once, and
    /// replaced by the built-in default so services inheriting it do not report it again.
    fn defaults(&mut self, raw: &RawConnection) -> ConnectionSettings {
        self.connection(
            &ProblemScope::Global,
            "defaults.",
            raw,
            &ConnectionSettings::default(),
        )
    }

    /// Applies the connection keys in `raw` over `base`; `prefix` is prepended to key names.
    fn connection(
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
        ConnectionSettings {
            connect_timeout,
            idle_timeout,
            drain_timeout,
            max_connect_attempts,
        }
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

    fn service(
        &mut self,
        index: usize,
        raw: &RawService,
        defaults: &ConnectionSettings,
        names: &mut HashMap<String, usize>,
        listeners: &mut Vec<Listener>,
    ) -> Service {
        let scope = self.service_scope(index, &raw.name, names);

        let vip = match raw.vip.parse::<IpAddr>() {
            Ok(ip) => Some(ip),
            Err(_) => {
                let hint = if raw.vip.parse::<SocketAddr>().is_ok() {
                    " (give the port in `ports`, not in `vip`)"
                } else if raw.vip.starts_with('[') {
                    " (write IPv6 without brackets)"
                } else {
                    ""
                };
                self.push(
                    &scope,
                    "vip",
                    format!("\"{}\" is not an IP address{hint}", raw.vip),
                );
                None
            }
        };

        let ports = self.ports(&scope, &raw.ports);
        let endpoints = self.endpoints(&scope, &raw.endpoints, &ports);

        if let Some(vip) = vip {
            self.listeners(&scope, vip, &ports, &endpoints, listeners);
        }

        let overrides = RawConnection {
            connect_timeout: raw.connect_timeout,
            idle_timeout: raw.idle_timeout,
            drain_timeout: raw.drain_timeout,
            max_connect_attempts: raw.max_connect_attempts,
        };
        let connection = self.connection(&scope, "", &overrides, defaults);
        let health = self.health(&scope, raw.health.as_ref());
        let outlier = raw.outlier.as_ref().map(|o| self.outlier(&scope, o));

        Service {
            name: raw.name.clone(),
            vip: vip.unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED)),
            ports: ports.into_iter().map(|(_, p)| p).collect(),
            endpoints: endpoints.into_iter().map(|(_, e)| e).collect(),
            // Exhaustive so a new raw policy cannot be silently mapped to round robin.
            balance: match raw.balance {
                None | Some(RawBalance::RoundRobin) => Balance::RoundRobin,
            },
            health,
            connection,
            discovery: None,
            outlier,
            manage_vip: false,
            vip_interface: "lo".to_owned(),
        }
    }

    /// How problems of service number `index` are labelled: by name when the name is valid and
    /// first of its kind, else by position (an invalid or duplicate name would be ambiguous).
    fn service_scope(
        &mut self,
        index: usize,
        name: &str,
        names: &mut HashMap<String, usize>,
    ) -> ProblemScope {
        let by_index = ProblemScope::ServiceIndex(index);
        if let Err(message) = check_dns_label(name) {
            self.push(&by_index, "name", message);
            return by_index;
        }
        if let Some(first) = names.get(name) {
            self.push(
                &by_index,
                "name",
                format!("\"{name}\" is already the name of service #{first}"),
            );
            return by_index;
        }
        names.insert(name.to_owned(), index);
        ProblemScope::Service(name.to_owned())
    }

    /// Converts `ports`; entries with a problem come back as `(false, _)` so later checks that
    /// combine them (listeners) skip them.
    fn ports(&mut self, scope: &ProblemScope, raw: &[RawPort]) -> Vec<(bool, ServicePort)> {
        if raw.is_empty() {
            self.push(scope, "ports", "must list at least one port");
        }
        let mut out: Vec<(bool, ServicePort)> = Vec::with_capacity(raw.len());
        for (i, p) in raw.iter().enumerate() {
            let before = self.problems.len();
            let key = |field: &str| format!("ports[{i}].{field}");
            if p.protocol == Some(RawProtocol::Udp) {
                self.push(scope, key("protocol"), "udp is not supported yet");
            }
            if p.port == 0 {
                self.push(scope, key("port"), "0 is out of range 1-65535");
            } else if let Some(j) = raw[..i]
                .iter()
                .position(|q| q.port == p.port && q.protocol == p.protocol)
            {
                self.push(
                    scope,
                    key("port"),
                    format!("{} is already listed as ports[{j}].port", p.port),
                );
            }
            if p.target_port == Some(0) {
                self.push(scope, key("target_port"), "0 is out of range 1-65535");
            }
            if let Some(name) = &p.name {
                if let Err(message) = check_dns_label(name) {
                    self.push(scope, key("name"), message);
                } else if let Some(j) = raw[..i]
                    .iter()
                    .position(|q| q.name.as_deref() == Some(name))
                {
                    self.push(
                        scope,
                        key("name"),
                        format!("\"{name}\" is already the name of ports[{j}]"),
                    );
                }
            }
            let port = ServicePort {
                port: p.port,
                target_port: p.target_port.unwrap_or(p.port),
                protocol: Protocol::Tcp,
                name: p.name.clone(),
            };
            out.push((self.problems.len() == before, port));
        }
        out
    }

    /// Converts `endpoints`; unparsable entries come back as `(false, _)`.
    fn endpoints(
        &mut self,
        scope: &ProblemScope,
        raw: &[String],
        ports: &[(bool, ServicePort)],
    ) -> Vec<(bool, EndpointSpec)> {
        if raw.is_empty() {
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

    /// Registers the service's listen addresses, reporting collisions with earlier services,
    /// and endpoints that are the service's own listen address (every connection would loop).
    fn listeners(
        &mut self,
        scope: &ProblemScope,
        vip: IpAddr,
        ports: &[(bool, ServicePort)],
        endpoints: &[(bool, EndpointSpec)],
        listeners: &mut Vec<Listener>,
    ) {
        let first_own = listeners.len();
        for (i, (ok, p)) in ports.iter().enumerate() {
            if !ok {
                continue;
            }
            let addr = SocketAddr::new(vip, p.port);
            // Duplicates inside the service were reported as duplicate ports already.
            if let Some(other) = listeners[..first_own]
                .iter()
                .find(|l| l.overlaps(addr, p.protocol))
            {
                let message = other.collision(addr);
                self.push(scope, format!("ports[{i}].port"), message);
            }
            for (j, (ok, e)) in endpoints.iter().enumerate() {
                let target = SocketAddr::new(e.ip, e.port.unwrap_or(p.target_port));
                if *ok && is_self_loop(addr, target) {
                    self.push(
                        scope,
                        format!("endpoints[{j}]"),
                        format!(
                            "{target} is this service's own listen address {addr} (ports[{i}]); \
                             connections would loop"
                        ),
                    );
                }
            }
            listeners.push(Listener {
                addr,
                protocol: p.protocol,
                owner: format!("{scope} ports[{i}]"),
            });
        }
    }

    fn outlier(&mut self, scope: &ProblemScope, raw: &RawOutlier) -> Outlier {
        let consecutive_failures = match raw.consecutive_failures {
            None => NonZeroU32::new(5).expect("non-zero"),
            Some(n) => NonZeroU32::new(n).unwrap_or_else(|| {
                self.push(scope, "outlier.consecutive_failures", "must be at least 1");
                NonZeroU32::MIN
            }),
        };
        let base_ejection_time = raw.base_ejection_time.unwrap_or(Duration::from_secs(30));
        if base_ejection_time.is_zero() {
            self.push(scope, "outlier.base_ejection_time", "must be longer than 0");
        }
        let max_ejection_percent = raw.max_ejection_percent.unwrap_or(50);
        if max_ejection_percent > 100 {
            self.push(
                scope,
                "outlier.max_ejection_percent",
                format!("{max_ejection_percent} is more than 100"),
            );
        }
        Outlier {
            consecutive_failures,
            base_ejection_time,
            max_ejection_percent: max_ejection_percent.min(100) as u8,
        }
    }

    fn health(&mut self, scope: &ProblemScope, raw: Option<&RawHealth>) -> Health {
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

/// Whether two addresses share a port and either are equal or one is the wildcard
/// (`0.0.0.0`, `::`) of the other's family, which covers every IP of that family. Families do
/// not mix because IPv6 listeners are bound IPV6_V6ONLY.
fn addrs_overlap(a: SocketAddr, b: SocketAddr) -> bool {
    let (x, y) = (a.ip(), b.ip());
    a.port() == b.port()
        && (x == y || (x.is_ipv4() == y.is_ipv4() && (x.is_unspecified() || y.is_unspecified())))
}

/// Whether connecting to `target` reaches the listener at `listen` for sure: the same address,
/// or a loopback address of a wildcard listener's family. (Other IPs under a wildcard may or
/// may not be local; that is not knowable from the file.)
fn is_self_loop(listen: SocketAddr, target: SocketAddr) -> bool {
    let (l, t) = (listen.ip(), target.ip());
    listen.port() == target.port()
        && (l == t || (l.is_unspecified() && t.is_loopback() && l.is_ipv4() == t.is_ipv4()))
}

/// Checks a DNS label: `[a-z0-9-]{1,63}`, not starting or ending with `-`.
fn check_dns_label(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("must not be empty".to_owned());
    }
    if name.len() > 63 {
        return Err(format!(
            "\"{name}\" is {} characters long; at most 63 are allowed",
            name.len()
        ));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return Err(format!(
            "\"{name}\" may only contain lowercase letters a-z, digits and '-'"
        ));
    }
    if name.starts_with('-') || name.ends_with('-') {
        return Err(format!("\"{name}\" must not start or end with '-'"));
    }
    Ok(())
}

/// Parses an endpoint: `IP`, `IP:PORT`, `[IPv6]` or `[IPv6]:PORT`; a bare IPv6 (no brackets)
/// is an IP without port, since its colons make a port suffix ambiguous.
fn parse_endpoint(text: &str) -> Result<EndpointSpec, String> {
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
    if let Some((host, port)) = text.rsplit_once(':') {
        if let Ok(ip) = host.parse::<Ipv4Addr>() {
            return Ok(EndpointSpec {
                ip: IpAddr::V4(ip),
                port: Some(parse_port(text, port)?),
            });
        }
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
    use super::*;
    use crate::config::from_str;

    fn load(text: &str) -> Result<Config, ConfigError> {
        from_str(text, Path::new("vipd.toml"))
    }

    /// The problem lines of an `Invalid` error.
    fn problems(text: &str) -> Vec<String> {
        match load(text) {
            Err(e @ ConfigError::Invalid { .. }) => {
                e.to_string().lines().map(String::from).collect()
            }
            other => panic!("expected Invalid for\n{text}\ngot {other:?}"),
        }
    }

    /// A one-service config with `extra` appended inside the service table.
    fn service(extra: &str) -> String {
        format!(
            "[[service]]\nname = \"web\"\nvip = \"127.0.0.1\"\n\
             ports = [{{ port = 8000, target_port = 9000 }}]\nendpoints = [\"10.0.0.1\"]\n{extra}"
        )
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn nz(n: u32) -> NonZeroU32 {
        NonZeroU32::new(n).unwrap()
    }

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

            [[service]]
            name = "web"
            vip = "::1"
            ports = [{ port = 80, target_port = 8080, protocol = "tcp", name = "http" }, { port = 443 }]
            endpoints = ["::2", "[::3]", "10.0.0.1"]
            balance = "round_robin"
            idle_timeout = "1m"
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
        assert_eq!(config.runtime.workers, Some(2));
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
                    name: Some("http".into())
                },
                ServicePort {
                    port: 443,
                    target_port: 443,
                    protocol: Protocol::Tcp,
                    name: None
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
                drain_timeout: ms(30_000),
                max_connect_attempts: nz(5),
            }
        );
        assert_eq!(
            web.health,
            Health {
                check: HealthCheck::Http {
                    path: "/healthz".into()
                },
                port: Some(9100),
                period: ms(2000),
                timeout: ms(1000),
                failure_threshold: nz(4),
                success_threshold: nz(3),
            }
        );

        let db = &config.services[1];
        assert_eq!(db.connection.idle_timeout, ms(600_000));
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
            vec![EndpointSpec {
                ip: "10.0.0.1".parse().unwrap(),
                port: None
            }]
        );
    }

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
                service("drain_timeout = \"0s\"\n"),
                "vipd.toml: service \"web\": drain_timeout: must be greater than 0",
            ),
            (
                service("").replace("\"web\"", "\"Web\""),
                "vipd.toml: service #1: name: \"Web\" may only contain lowercase letters a-z, digits and '-'",
            ),
            (
                service("").replace("\"web\"", "\"\""),
                "vipd.toml: service #1: name: must not be empty",
            ),
            (
                format!("{}{}", service(""), service("").replace("8000", "8001")),
                "vipd.toml: service #2: name: \"web\" is already the name of service #1",
            ),
            (
                service("").replace("127.0.0.1", "127.0.0.1:80"),
                "vipd.toml: service \"web\": vip: \"127.0.0.1:80\" is not an IP address (give the port in `ports`, not in `vip`)",
            ),
            (
                service("").replace("127.0.0.1", "[::1]"),
                "vipd.toml: service \"web\": vip: \"[::1]\" is not an IP address (write IPv6 without brackets)",
            ),
            (
                service("").replace(
                    "ports = [{ port = 8000, target_port = 9000 }]",
                    "ports = []",
                ),
                "vipd.toml: service \"web\": ports: must list at least one port",
            ),
            (
                service("").replace("port = 8000", "port = 0"),
                "vipd.toml: service \"web\": ports[0].port: 0 is out of range 1-65535",
            ),
            (
                service("").replace("target_port = 9000", "target_port = 0"),
                "vipd.toml: service \"web\": ports[0].target_port: 0 is out of range 1-65535",
            ),
            (
                service("").replace(
                    "target_port = 9000 }",
                    "target_port = 9000, protocol = \"udp\" }",
                ),
                "vipd.toml: service \"web\": ports[0].protocol: udp is not supported yet",
            ),
            (
                service("").replace("}]", "}, { port = 8000 }]"),
                "vipd.toml: service \"web\": ports[1].port: 8000 is already listed as ports[0].port",
            ),
            (
                service("").replace(
                    "9000 }]",
                    "9000, name = \"a\" }, { port = 1, name = \"a\" }]",
                ),
                "vipd.toml: service \"web\": ports[1].name: \"a\" is already the name of ports[0]",
            ),
            (
                service("").replace("9000 }]", "9000, name = \"-a\" }]"),
                "vipd.toml: service \"web\": ports[0].name: \"-a\" must not start or end with '-'",
            ),
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
                service("").replace("\"10.0.0.1\"", "\"127.0.0.1:8000\""),
                "vipd.toml: service \"web\": endpoints[0]: 127.0.0.1:8000 is this service's own listen address 127.0.0.1:8000 (ports[0]); connections would loop",
            ),
            (
                format!("{}{}", service(""), service("").replace("web", "api")),
                "vipd.toml: service \"api\": ports[0].port: 127.0.0.1:8000 is already the listen address of service \"web\" ports[0]",
            ),
            (
                format!(
                    "{}{}",
                    service(""),
                    service("")
                        .replace("web", "api")
                        .replace("127.0.0.1", "0.0.0.0")
                ),
                "vipd.toml: service \"api\": ports[0].port: 0.0.0.0:8000 overlaps 127.0.0.1:8000 of service \"web\" ports[0] (a wildcard address covers every IP of its family)",
            ),
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
        for (text, want) in cases {
            assert_eq!(problems(&text), vec![want.to_string()], "for\n{text}");
        }
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

    #[test]
    fn dns_labels() {
        for ok in ["a", "web", "web-1", "0", &"a".repeat(63)] {
            assert_eq!(check_dns_label(ok), Ok(()), "{ok}");
        }
        for bad in ["", "-a", "a-", "Web", "a_b", "a.b", "é", &"a".repeat(64)] {
            assert!(check_dns_label(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn self_loop_rules() {
        let a = |s: &str| s.parse::<SocketAddr>().unwrap();
        let cases = [
            ("127.0.0.1:80", "127.0.0.1:80", true),
            ("127.0.0.1:80", "127.0.0.1:81", false),
            ("0.0.0.0:80", "127.0.0.1:80", true),
            ("0.0.0.0:80", "127.0.0.2:80", true),
            ("[::]:80", "[::1]:80", true),
            // Not knowably local.
            ("0.0.0.0:80", "10.0.0.1:80", false),
            ("[::]:80", "127.0.0.1:80", false),
        ];
        for (listen, target, want) in cases {
            assert_eq!(
                is_self_loop(a(listen), a(target)),
                want,
                "{listen} → {target}"
            );
        }
    }

    #[test]
    fn overlap_rules() {
        let a = |s: &str| s.parse::<SocketAddr>().unwrap();
        let cases = [
            ("127.0.0.1:80", "127.0.0.1:80", true),
            ("127.0.0.1:80", "127.0.0.1:81", false),
            ("127.0.0.1:80", "127.0.0.2:80", false),
            ("0.0.0.0:80", "127.0.0.1:80", true),
            ("127.0.0.1:80", "0.0.0.0:80", true),
            ("[::]:80", "[::1]:80", true),
            // Families do not mix: the proxy binds IPv6 listeners IPV6_V6ONLY, so `::` leaves
            // IPv4 alone.
            ("[::]:80", "127.0.0.1:80", false),
            ("0.0.0.0:80", "[::1]:80", false),
        ];
        for (x, y, want) in cases {
            assert_eq!(addrs_overlap(a(x), a(y)), want, "{x} vs {y}");
        }
    }
}

/// Loads the shipped example configs and the fixtures under `tests/fixtures/config/`, so the
/// examples cannot rot and every rule has a file showing the message a user would see.
#[cfg(test)]
mod fixtures_tests {
    use std::path::PathBuf;

    use crate::config::load;

    /// The `*.toml` files in `dir` (relative to the crate root), sorted; fails if there are none,
    /// so a moved directory cannot make the tests pass vacuously.
    fn toml_files(dir: &str) -> Vec<PathBuf> {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(dir);
        let entries = std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        let mut files: Vec<PathBuf> = entries
            .map(|e| e.expect("directory entry").path())
            .filter(|p| p.extension().is_some_and(|x| x == "toml"))
            .collect();
        files.sort();
        assert!(!files.is_empty(), "{}: no *.toml files", dir.display());
        files
    }

    #[test]
    fn valid_files_load() {
        let mut files = toml_files("config");
        files.extend(toml_files("tests/fixtures/config/valid"));
        for file in files {
            if let Err(e) = load(&file) {
                panic!("{} should load:\n{e}", file.display());
            }
        }
    }

    /// Each invalid file starts with one or more `# expect: SUBSTRING` lines; the error's
    /// Display must start with the file's path, have one line per `# expect:` line and contain
    /// every substring.
    #[test]
    fn invalid_files_fail_with_expected_message() {
        // Every mismatch is collected so one run shows them all.
        let mut failures = Vec::new();
        for file in toml_files("tests/fixtures/config/invalid") {
            let text = std::fs::read_to_string(&file).expect("readable fixture");
            let expects: Vec<&str> = text
                .lines()
                .map_while(|l| l.strip_prefix("# expect: "))
                .collect();
            assert!(
                !expects.is_empty() && expects.iter().all(|e| !e.trim().is_empty()),
                "{}: first line must be `# expect: <substring>`",
                file.display()
            );
            let message = match load(&file) {
                Ok(_) => {
                    failures.push(format!("{} should fail to load", file.display()));
                    continue;
                }
                Err(e) => e.to_string(),
            };
            if !message.starts_with(&file.display().to_string()) {
                failures.push(format!("message does not start with the path:\n{message}"));
            }
            // One mistake, one message: extra lines would mean a cascade or a sloppy fixture.
            if message.lines().count() != expects.len() {
                failures.push(format!(
                    "expected {} line(s) of errors, got:\n{message}",
                    expects.len()
                ));
            }
            for expect in expects {
                if !message.contains(expect) {
                    failures.push(format!("message lacks {expect:?}:\n{message}"));
                }
            }
        }
        assert!(failures.is_empty(), "\n{}", failures.join("\n\n"));
    }
}
