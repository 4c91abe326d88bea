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
    RawAdmin, RawBalance, RawCheck, RawConfig, RawConnection, RawDiscovery, RawDns, RawHealth,
    RawOutlier, RawPort, RawProtocol, RawRuntime, RawService,
};
use super::{
    Admin, Balance, Config, ConfigError, ConnectionSettings, Discovery, DiscoverySource, DnsServer,
    EndpointSpec, Health, HealthCheck, Outlier, Protocol, Runtime, Secret, Service, ServicePort,
};

/// Default floor for a discovered record's TTL.
const DEFAULT_MIN_REFRESH: Duration = Duration::from_secs(1);
/// Default ceiling for a discovered record's TTL.
const DEFAULT_MAX_REFRESH: Duration = Duration::from_secs(30);
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
            workers: raw.workers.and_then(std::num::NonZeroUsize::new),
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
        // Exactly one source of endpoints. Both sides are still checked when both are set, so
        // their own mistakes show up in the same run.
        match (&raw.endpoints, &raw.discovery) {
            (Some(_), Some(_)) => self.push(
                &scope,
                "endpoints",
                "`endpoints` and `[service.discovery]` are both set; a service gets its \
                 endpoints from exactly one of them",
            ),
            (None, None) => self.push(
                &scope,
                "endpoints",
                "missing: list `endpoints` or add a `[service.discovery]` table",
            ),
            _ => {}
        }
        let endpoints = match &raw.endpoints {
            // With discovery also set, "both set" already covers an empty list.
            Some(list) => self.endpoints(&scope, list, &ports, raw.discovery.is_none()),
            None => Vec::new(),
        };
        let discovery = raw
            .discovery
            .as_ref()
            .map(|d| self.discovery(&scope, d, ports.len()));

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
        let (manage_vip, vip_interface) = self.vip_ownership(&scope, raw, vip);

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
            discovery,
            outlier,
            manage_vip,
            vip_interface,
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

    /// Converts `endpoints`; unparsable entries come back as `(false, _)`. `require_some`
    /// reports an empty list.
    fn endpoints(
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

impl Validator {
    /// Converts `[service.discovery]`; `port_count` is the number of the service's ports (SRV
    /// records carry one port, so `srv` needs exactly one).
    fn discovery(
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

/// Checks a DNS name to resolve: dot-separated labels of 1-63 letters, digits, `-` or `_`
/// (`_` for SRV names such as `_http._tcp.web`), not starting or ending with `-`, at most 253
/// characters; one trailing dot (fully qualified) is allowed.
fn check_dns_name(name: &str) -> Result<(), String> {
    let bare = name.strip_suffix('.').unwrap_or(name);
    if bare.is_empty() {
        return Err("must not be empty".to_owned());
    }
    if bare.len() > 253 {
        return Err(format!(
            "\"{name}\" is {} characters long; a DNS name has at most 253",
            bare.len()
        ));
    }
    for label in bare.split('.') {
        if label.is_empty() {
            return Err(format!("\"{name}\" has an empty label (two dots in a row)"));
        }
        if label.len() > 63 {
            return Err(format!(
                "\"{name}\": label \"{label}\" is longer than 63 characters"
            ));
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(format!(
                "\"{name}\" is not a DNS name: labels may only contain letters, digits, '-' and '_'"
            ));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(format!(
                "\"{name}\": label \"{label}\" must not start or end with '-'"
            ));
        }
    }
    Ok(())
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

/// The interface a managed VIP goes on when `vip_interface` is not set.
const DEFAULT_VIP_INTERFACE: &str = "lo";

/// TTL of DNS answers when `dns.ttl` is not set.
const DEFAULT_DNS_TTL: Duration = Duration::from_secs(5);

impl Validator {
    /// `[dns]`; `None` when it has a problem (reported).
    fn dns(
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
            // DNS listens on TCP too, so it competes with the admin server and TCP service ports.
            if let Some(admin) = admin.filter(|a| addrs_overlap(a.listen, listen)) {
                self.push(
                    &scope,
                    "dns.listen",
                    format!(
                        "{listen} is already the listen address of admin.listen ({})",
                        admin.listen
                    ),
                );
            } else if let Some(l) = listeners.iter().find(|l| l.overlaps(listen, Protocol::Tcp)) {
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

    /// `manage_vip` and `vip_interface` of one service.
    fn vip_ownership(
        &mut self,
        scope: &ProblemScope,
        raw: &RawService,
        vip: Option<IpAddr>,
    ) -> (bool, String) {
        let manage_vip = raw.manage_vip.unwrap_or(false);
        let interface = raw
            .vip_interface
            .clone()
            .unwrap_or_else(|| DEFAULT_VIP_INTERFACE.to_owned());
        if !manage_vip {
            if raw.vip_interface.is_some() {
                self.push(
                    scope,
                    "vip_interface",
                    "only allowed with manage_vip = true",
                );
            }
            return (false, interface);
        }
        if let Some(vip) = vip.filter(|ip| ip.is_unspecified()) {
            self.push(
                scope,
                "manage_vip",
                format!("{vip} is a wildcard address; only a single address can be added to an interface"),
            );
        }
        if let Err(message) = check_interface_name(&interface) {
            self.push(scope, "vip_interface", message);
        }
        (true, interface)
    }
}

/// Checks a zone name and returns it in lowercase without a trailing dot.
fn check_zone(text: &str) -> Result<String, String> {
    let zone = text.strip_suffix('.').unwrap_or(text).to_ascii_lowercase();
    if zone.is_empty() {
        return Err("must not be empty (e.g. \"svc.cluster.local\")".to_owned());
    }
    if zone.len() > 200 {
        // Leaves room for `_port._proto.service.` in front within DNS's 253 characters.
        return Err(format!(
            "\"{text}\" is {} characters long; at most 200 are allowed",
            zone.len()
        ));
    }
    for label in zone.split('.') {
        let ok = !label.is_empty()
            && label.len() <= 63
            && label
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !label.starts_with('-')
            && !label.ends_with('-');
        if !ok {
            return Err(format!(
                "\"{text}\" is not a DNS name: each dot-separated label must be 1-63 letters, \
                 digits or '-', not starting or ending with '-'"
            ));
        }
    }
    Ok(zone)
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

/// Checks the syntax of a Linux interface name (whether it exists is only known at run time).
fn check_interface_name(name: &str) -> Result<(), String> {
    // IFNAMSIZ is 16 including the terminating NUL.
    if name.is_empty() || name.len() > 15 {
        return Err(format!("\"{name}\" must be 1-15 characters long"));
    }
    if name == "." || name == ".." {
        return Err(format!("\"{name}\" is not an interface name"));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !c.is_ascii_graphic() || *c == '/' || *c == ':')
    {
        return Err(format!(
            "\"{name}\" contains {c:?}; interface names have no spaces, '/' or ':'"
        ));
    }
    Ok(())
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
        for (text, want) in cases {
            assert_eq!(problems(&text), vec![want.to_string()], "for\n{text}");
        }
    }

    #[test]
    fn dns_names() {
        let long_label = "a".repeat(64);
        let long_name = ["a".repeat(63).as_str(); 5].join(".");
        for ok in [
            "web",
            "web-headless.default.svc.cluster.local",
            "web-headless.default.svc.cluster.local.",
            "_http._tcp.web.default.svc.cluster.local",
            "Web.Example",
            "0.test",
        ] {
            assert_eq!(check_dns_name(ok), Ok(()), "{ok}");
        }
        let bad = [
            ("", "must not be empty"),
            (".", "must not be empty"),
            ("a..b", "empty label"),
            (".a", "empty label"),
            ("a b", "is not a DNS name"),
            ("10.0.0.1:53", "is not a DNS name"),
            ("-a.test", "must not start or end with '-'"),
            ("a-.test", "must not start or end with '-'"),
            (long_label.as_str(), "longer than 63"),
            (long_name.as_str(), "at most 253"),
        ];
        for (name, want) in bad {
            let err = check_dns_name(name).unwrap_err();
            assert!(err.contains(want), "{name}: {err}");
        }
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

    #[test]
    fn zones_and_interface_names() {
        assert_eq!(check_zone("a.b").as_deref(), Ok("a.b"));
        assert_eq!(check_zone("local.").as_deref(), Ok("local"));
        for bad in ["", ".", "a..b", "-a.b", "a_b.c", "a b"] {
            assert!(check_zone(bad).is_err(), "{bad:?}");
        }
        for ok in ["lo", "eth0", "veth-a.10", "dummy0", &"x".repeat(15)] {
            assert_eq!(check_interface_name(ok), Ok(()), "{ok}");
        }
        for bad in ["", ".", "..", "a b", "a/b", "eth0:1", &"x".repeat(16)] {
            assert!(check_interface_name(bad).is_err(), "{bad:?}");
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
