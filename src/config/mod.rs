//! Configuration: one TOML file parsed into raw serde structs ([`raw`]), then validated
//! ([`validate`]) into the typed [`Config`] below, whose fields need no further checks at runtime.
//!
//! The key names of the file are a user-facing contract; see `config/README.md`.

pub mod diff;
mod error;
mod raw;
mod validate;

pub use error::{ConfigError, Problem, ProblemScope};

use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::path::Path;
use std::time::Duration;

/// A validated configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Process-wide runtime settings.
    pub runtime: Runtime,
    /// The admin server, if configured.
    pub admin: Option<Admin>,
    /// The DNS server answering for service names, if configured.
    pub dns: Option<DnsServer>,
    /// The services, in file order.
    pub services: Vec<Service>,
}

/// `[dns]`: vipd answers DNS for `<service>.<zone>`.
#[derive(Debug, Clone, PartialEq)]
pub struct DnsServer {
    /// UDP and TCP listen address.
    pub listen: SocketAddr,
    /// The zone served, without a trailing dot (e.g. `svc.cluster.local`).
    pub zone: String,
    /// TTL of answers.
    pub ttl: Duration,
    /// Upstreams for out-of-zone queries; empty = REFUSED.
    pub forward: Vec<SocketAddr>,
}

/// `[runtime]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Runtime {
    /// Data-plane worker threads; `None` = one per available CPU.
    pub workers: Option<std::num::NonZeroUsize>,
}

/// `[admin]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Admin {
    /// Address the admin HTTP server listens on.
    pub listen: SocketAddr,
    /// Bearer token required by `POST` endpoints (read from `admin.token_file`); `None` = every
    /// `POST` is forbidden.
    pub token: Option<Secret>,
}

/// A secret string that never shows in `Debug` output or logs.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret.
    pub fn new(value: String) -> Self {
        Secret(value)
    }

    /// The secret itself; use only to compare, never to print.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// One `[[service]]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Service {
    /// DNS label, unique among services.
    pub name: String,
    /// The virtual IP the service's listeners bind.
    pub vip: IpAddr,
    /// The ports the service listens on (at least one).
    pub ports: Vec<ServicePort>,
    /// Static backend endpoints (empty exactly when `discovery` is set).
    pub endpoints: Vec<EndpointSpec>,
    /// DNS discovery of endpoints, instead of a static list.
    pub discovery: Option<Discovery>,
    /// How connections are spread over endpoints.
    pub balance: Balance,
    /// Whether a client IP keeps going to the same endpoint.
    pub session_affinity: SessionAffinity,
    /// Ramp of an endpoint's weight after it enters rotation; `None` = full weight at once.
    pub slow_start: Option<Duration>,
    /// What a new connection gets when no endpoint of any tier is in rotation.
    pub when_all_unhealthy: WhenAllUnhealthy,
    /// Active health checking.
    pub health: Health,
    /// Connection handling, from `[defaults]` overridden by the service's own keys.
    pub connection: ConnectionSettings,
    /// Passive ejection of endpoints that fail connects; `None` = off.
    pub outlier: Option<Outlier>,
    /// What happens to established connections of an endpoint the probes mark down.
    pub on_marked_down: OnMarkedDown,
    /// Whether vipd adds the VIP to `vip_interface` while it runs.
    pub manage_vip: bool,
    /// The interface a managed VIP is added to (default `lo`).
    pub vip_interface: String,
    /// Most UDP flows the service keeps at once, over all its UDP ports and workers.
    pub max_udp_flows: NonZeroU32,
}

impl Service {
    /// Default `max_udp_flows`.
    pub const DEFAULT_MAX_UDP_FLOWS: NonZeroU32 = NonZeroU32::new(16_384).expect("non-zero");

    /// Whether every port of the service is UDP (and it has at least one).
    pub fn is_udp_only(&self) -> bool {
        !self.ports.is_empty() && self.ports.iter().all(|p| p.protocol == Protocol::Udp)
    }
}

/// `[service.discovery]`: endpoints from DNS.
#[derive(Debug, Clone, PartialEq)]
pub struct Discovery {
    /// What to resolve.
    pub source: DiscoverySource,
    /// Nameservers to ask; empty = the system resolver configuration.
    pub nameservers: Vec<SocketAddr>,
    /// Floor for the record TTL.
    pub min_refresh: Duration,
    /// Ceiling for the record TTL.
    pub max_refresh: Duration,
}

/// The DNS name endpoints come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DiscoverySource {
    /// A and AAAA records; each address gets the port's `target_port`.
    Dns(String),
    /// SRV records: host and port from the records, hosts then resolved (one-port services).
    Srv(String),
}

/// `[service.outlier]`: consecutive connect failures eject an endpoint for a while.
#[derive(Debug, Clone, PartialEq)]
pub struct Outlier {
    /// Consecutive connect failures that eject an endpoint.
    pub consecutive_failures: NonZeroU32,
    /// Ejection time of a first ejection; each further ejection of the same endpoint lasts longer.
    pub base_ejection_time: Duration,
    /// Never eject more than this share (percent) of the service's endpoints at once.
    pub max_ejection_percent: u8,
}

impl Service {
    /// The endpoint addresses behind `port`: each endpoint's IP with its explicit port or the
    /// port's `target_port`.
    pub fn endpoint_addrs(&self, port: &ServicePort) -> Vec<SocketAddr> {
        self.endpoints
            .iter()
            .map(|e| SocketAddr::new(e.ip, e.port.unwrap_or(port.target_port)))
            .collect()
    }
}

/// One entry of a service's `ports`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServicePort {
    /// The port listened on at the VIP. (0 only when built in code: bind an ephemeral port.)
    pub port: u16,
    /// The port connections are forwarded to on each endpoint.
    pub target_port: u16,
    /// Transport protocol.
    pub protocol: Protocol,
    /// Optional name (used for DNS SRV records).
    pub name: Option<String>,
}

/// Transport protocol of a service port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// TCP: connections are accepted and spliced to an endpoint.
    Tcp,
    /// UDP: datagrams from one client address form a flow pinned to one endpoint.
    Udp,
}

impl Protocol {
    /// The lowercase name used in config, metrics and `/status`.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }
}

/// One entry of a service's `endpoints`: an IP, with a port only for one-port services, its
/// place in the balancing (weight, tier), and its replica name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointSpec {
    /// The endpoint's address.
    pub ip: IpAddr,
    /// Explicit port; `None` = the service port's `target_port`.
    pub port: Option<u16>,
    /// Relative share of new connections, 1-1000.
    pub weight: u32,
    /// In the backup tier: used only while no primary-tier endpoint is in rotation.
    pub backup: bool,
    /// The replica's stable name (a DNS label, unique in the service): `<name>.<service>.<zone>`
    /// in vipd's DNS, and `name` in `/status`.
    pub name: Option<String>,
    /// Whether active health checks probe it; `false` = always healthy as far as probes go.
    pub check: bool,
}

impl EndpointSpec {
    /// Weight of an endpoint given without one.
    pub const DEFAULT_WEIGHT: u32 = 1;
    /// The largest weight.
    pub const MAX_WEIGHT: u32 = 1000;

    /// A primary-tier endpoint of weight 1.
    pub fn new(ip: IpAddr, port: Option<u16>) -> Self {
        EndpointSpec {
            ip,
            port,
            weight: Self::DEFAULT_WEIGHT,
            backup: false,
            name: None,
            check: true,
        }
    }
}

/// Balancing policy: where a new connection goes among the endpoints in rotation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Balance {
    /// Smooth weighted round robin (nginx's algorithm); equal weights rotate strictly.
    RoundRobin,
    /// Fewest active connections per unit of weight; ties rotate.
    LeastConnections,
    /// Two distinct endpoints drawn by weight; the one with fewer active connections per weight.
    PowerOfTwo,
    /// Weighted random.
    Random,
    /// Maglev consistent hashing of the client IP.
    Maglev,
}

impl Balance {
    /// The name used in the config file and `/status`.
    pub fn as_str(self) -> &'static str {
        match self {
            Balance::RoundRobin => "round_robin",
            Balance::LeastConnections => "least_connections",
            Balance::PowerOfTwo => "power_of_two",
            Balance::Random => "random",
            Balance::Maglev => "maglev",
        }
    }
}

/// `session_affinity`, with Kubernetes' semantics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionAffinity {
    /// Every connection is placed by `balance`.
    None,
    /// A client IP's connections go to the endpoint of its previous one while that endpoint is
    /// in rotation and the previous connection started less than `timeout` ago.
    ClientIp {
        /// `affinity_timeout`.
        timeout: Duration,
    },
}

impl SessionAffinity {
    /// Default `affinity_timeout`: Kubernetes' 10800 s.
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(3 * 3600);

    /// The name used in the config file and `/status`.
    pub fn as_str(self) -> &'static str {
        match self {
            SessionAffinity::None => "none",
            SessionAffinity::ClientIp { .. } => "client_ip",
        }
    }
}

/// `on_marked_down`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnMarkedDown {
    /// Established connections run on (new ones go elsewhere).
    Keep,
    /// Established connections are closed at once, so their clients reconnect to an endpoint
    /// in rotation (HAProxy's `on-marked-down shutdown-sessions`).
    Close,
}

/// `when_all_unhealthy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WhenAllUnhealthy {
    /// Spread connections over every endpoint that is not draining (a probe can be wrong).
    FailOpen,
    /// Close new client connections at once.
    FailClosed,
}

/// `[service.health]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Health {
    /// What a probe does.
    pub check: HealthCheck,
    /// Probe this port instead of the endpoint's own port.
    pub port: Option<u16>,
    /// Time between the starts of two probes of one endpoint.
    pub period: Duration,
    /// Deadline of one probe; shorter than `period`.
    pub timeout: Duration,
    /// Consecutive failures before a healthy endpoint is marked unhealthy.
    pub failure_threshold: NonZeroU32,
    /// Consecutive successes before an unhealthy endpoint is marked healthy.
    pub success_threshold: NonZeroU32,
}

/// The kind of active health check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HealthCheck {
    /// A TCP connect must succeed.
    Tcp,
    /// `GET path` must answer 2xx or 3xx.
    Http {
        /// Request path, starting with `/`.
        path: String,
    },
    /// No active checks: every endpoint is healthy.
    None,
}

/// Per-connection settings (`[defaults]`, overridable per service).
#[derive(Debug, Clone, PartialEq)]
pub struct ConnectionSettings {
    /// Deadline of one connect attempt to an endpoint.
    pub connect_timeout: Duration,
    /// Close a connection with no bytes either way for this long.
    pub idle_timeout: Duration,
    /// End a UDP flow with no datagram either way for this long.
    pub udp_idle_timeout: Duration,
    /// On shutdown, how long established connections may finish.
    pub drain_timeout: Duration,
    /// Distinct endpoints tried per client connection.
    pub max_connect_attempts: NonZeroU32,
}

impl Default for ConnectionSettings {
    fn default() -> Self {
        ConnectionSettings {
            connect_timeout: Duration::from_secs(1),
            idle_timeout: Duration::from_secs(3600),
            udp_idle_timeout: Duration::from_secs(30),
            drain_timeout: Duration::from_secs(30),
            max_connect_attempts: NonZeroU32::new(3).expect("non-zero"),
        }
    }
}

impl Default for Health {
    fn default() -> Self {
        Health {
            check: HealthCheck::Tcp,
            port: None,
            period: Duration::from_secs(1),
            timeout: Duration::from_millis(500),
            failure_threshold: NonZeroU32::new(2).expect("non-zero"),
            success_threshold: NonZeroU32::new(1).expect("non-zero"),
        }
    }
}

/// Reads, parses and validates the file at `path`.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    from_str(&text, path)
}

/// Parses and validates `text`; `path` is only used to name the file in errors.
pub fn from_str(text: &str, path: &Path) -> Result<Config, ConfigError> {
    let raw = raw::parse(text, path)?;
    validate::validate(raw, path)
}

/// One line describing `service`, as printed by `vipd check`.
pub fn summary(service: &Service) -> String {
    let ports: Vec<String> = service
        .ports
        .iter()
        .map(|p| {
            format!(
                "{}->{}/{}",
                SocketAddr::new(service.vip, p.port),
                p.target_port,
                p.protocol.as_str()
            )
        })
        .collect();
    let check = match &service.health.check {
        HealthCheck::Tcp => format!("tcp every {:?}", service.health.period),
        HealthCheck::Http { path } => format!("http {path} every {:?}", service.health.period),
        // UDP ports are not probed yet: such a service defaults to no checks.
        HealthCheck::None if service.is_udp_only() => "none (udp)".to_owned(),
        HealthCheck::None => "none".to_owned(),
    };
    let affinity = match service.session_affinity {
        SessionAffinity::None => String::new(),
        SessionAffinity::ClientIp { timeout } => format!(
            ", client-IP affinity for {}",
            humantime::format_duration(timeout)
        ),
    };
    let slow_start = service
        .slow_start
        .map(|w| format!(", slow start {}", humantime::format_duration(w)))
        .unwrap_or_default();
    let fail_closed = match service.when_all_unhealthy {
        WhenAllUnhealthy::FailOpen => "",
        WhenAllUnhealthy::FailClosed => ", fail closed",
    };
    let backups = service.endpoints.iter().filter(|e| e.backup).count();
    let endpoints = match &service.discovery {
        None if backups > 0 => format!("{} endpoints ({backups} backup)", service.endpoints.len()),
        None => format!("{} endpoints", service.endpoints.len()),
        Some(Discovery {
            source: DiscoverySource::Dns(name),
            ..
        }) => format!("endpoints from DNS {name}"),
        Some(Discovery {
            source: DiscoverySource::Srv(name),
            ..
        }) => format!("endpoints from SRV {name}"),
    };
    format!(
        "service \"{}\": {}, {endpoints}, {}{affinity}{slow_start}{fail_closed}, health {check}",
        service.name,
        ports.join(" "),
        service.balance.as_str().replace('_', " "),
    )
}
