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
use std::path::{Path, PathBuf};
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
    /// Most client connections of the process at once; `None` = no limit.
    pub max_connections: Option<NonZeroU32>,
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
    /// Most client connections of the service at once (its listeners stop accepting at the
    /// limit); `None` = no limit.
    pub max_connections: Option<NonZeroU32>,
    /// Most connections to each endpoint at once, unless the endpoint sets its own; beyond it
    /// new connections queue for `queue_timeout`. `None` = no limit.
    pub max_connections_per_endpoint: Option<NonZeroU32>,
    /// The PROXY header written to endpoints before any client byte; `None` = none.
    pub proxy_protocol: Option<ProxyProtocolVersion>,
    /// Peers whose PROXY headers are believed (ports with `accept_proxy_protocol`); a
    /// connection from anyone else is closed at once.
    pub proxy_protocol_trusted: Vec<Cidr>,
}

/// A PROXY protocol version vipd writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyProtocolVersion {
    /// The text header (`PROXY TCP4 …\r\n`), TCP only.
    V1,
    /// The binary header; also for UDP datagrams.
    V2,
}

impl ProxyProtocolVersion {
    /// As written in the config file.
    pub fn as_str(self) -> &'static str {
        match self {
            ProxyProtocolVersion::V1 => "v1",
            ProxyProtocolVersion::V2 => "v2",
        }
    }
}

/// An address block: an IP network with its prefix length (host bits zero).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr(pub ipnet::IpNet);

impl Cidr {
    /// Whether `ip` is in the block (an IPv4-mapped IPv6 address counts as its IPv4 one).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        self.0.contains(&ip)
    }
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
    /// Whether a PROXY header from a peer at `ip` is believed (`proxy_protocol_trusted`).
    pub fn trusts_proxy_header_from(&self, ip: IpAddr) -> bool {
        self.proxy_protocol_trusted
            .iter()
            .any(|cidr| cidr.contains(ip))
    }

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
    /// Every connection (or datagram) must begin with a PROXY header from a trusted peer, and
    /// the client address it carries is the client's.
    pub accept_proxy_protocol: bool,
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
    /// Most connections to it at once; `None` = the service's `max_connections_per_endpoint`.
    pub max_connections: Option<NonZeroU32>,
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
            max_connections: None,
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
    /// Time between the starts of two probes of one endpoint (before `jitter`).
    pub period: Duration,
    /// Each period is stretched or shrunk at random by up to this share of it (0.0-0.5).
    pub jitter: f64,
    /// Deadline of one probe; shorter than `period`.
    pub timeout: Duration,
    /// Consecutive failures before a healthy endpoint is marked unhealthy.
    pub failure_threshold: NonZeroU32,
    /// Consecutive successes before an unhealthy endpoint is marked healthy.
    pub success_threshold: NonZeroU32,
}

impl Health {
    /// `jitter` when not set.
    pub const DEFAULT_JITTER: f64 = 0.1;
    /// The largest `jitter`: a probe never starts sooner than half a period after the
    /// previous one.
    pub const MAX_JITTER: f64 = 0.5;
}

/// The kind of active health check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HealthCheck {
    /// A TCP connect must succeed (and, when set, a write and an expected reply).
    Tcp(TcpCheck),
    /// One HTTP request must get an expected status (and, when set, body).
    Http(HttpCheck),
    /// A command run for the endpoint must exit 0.
    Exec(ExecCheck),
    /// A datagram sent to the endpoint must get a reply (that holds the expected bytes).
    Udp(UdpCheck),
    /// No active checks: every endpoint is healthy.
    None,
}

impl HealthCheck {
    /// A plain TCP check: connecting is enough.
    pub fn tcp() -> Self {
        HealthCheck::Tcp(TcpCheck::default())
    }

    /// `GET path`, healthy on any 2xx or 3xx.
    pub fn http(path: impl Into<String>) -> Self {
        HealthCheck::Http(HttpCheck::get(path))
    }

    /// The name used in the config file (`check = "..."`).
    pub fn name(&self) -> &'static str {
        match self {
            HealthCheck::Tcp(_) => "tcp",
            HealthCheck::Http(_) => "http",
            HealthCheck::Exec(_) => "exec",
            HealthCheck::Udp(_) => "udp",
            HealthCheck::None => "none",
        }
    }
}

/// `check = "tcp"`: connect, optionally send, optionally read until the expected bytes arrive.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TcpCheck {
    /// Written once connected (`send`, or `send_hex` decoded); `None` = write nothing.
    pub send: Option<Vec<u8>>,
    /// Must occur in the first [`TcpCheck::READ_LIMIT`] bytes the endpoint sends back within
    /// the timeout (`expect`, or `expect_hex` decoded; never empty); `None` = don't read.
    pub expect: Option<Vec<u8>>,
}

impl TcpCheck {
    /// How much of the reply an `expect` is looked for in.
    pub const READ_LIMIT: usize = 16 * 1024;
}

/// `check = "udp"`: one datagram to the endpoint; a reply within the timeout (holding
/// `expect`, when set) is success; no reply, or an ICMP port unreachable, is failure.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UdpCheck {
    /// The datagram sent (`send`, or `send_hex` decoded); empty = an empty datagram.
    pub send: Vec<u8>,
    /// Must occur in one reply datagram (`expect`, or `expect_hex` decoded; never empty);
    /// `None` = any reply.
    pub expect: Option<Vec<u8>>,
}

impl UdpCheck {
    /// The largest reply looked at: a whole UDP datagram.
    pub const READ_LIMIT: usize = 65_507;
}

/// `check = "http"`: one request on a fresh connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpCheck {
    /// The request method.
    pub method: HttpMethod,
    /// Request path (with query, if any), starting with `/`.
    pub path: String,
    /// The `Host` header, `host[:port]`; `None` = the address probed.
    pub host: Option<String>,
    /// The statuses that count as healthy (100-599, unique, not empty); `None` = any 2xx or 3xx.
    pub expect_status: Option<Vec<u16>>,
    /// Must occur in the first [`HttpCheck::BODY_LIMIT`] bytes of the body (never empty; never
    /// with `HEAD`); `None` = the body is not read.
    pub expect: Option<String>,
}

impl HttpCheck {
    /// How much of the body an `expect` is looked for in.
    pub const BODY_LIMIT: usize = 64 * 1024;

    /// `GET path`, healthy on any 2xx or 3xx.
    pub fn get(path: impl Into<String>) -> Self {
        HttpCheck {
            method: HttpMethod::Get,
            path: path.into(),
            host: None,
            expect_status: None,
            expect: None,
        }
    }

    /// Whether an answer with `status` passes (the body aside).
    pub fn status_ok(&self, status: u16) -> bool {
        match &self.expect_status {
            Some(statuses) => statuses.contains(&status),
            None => (200..400).contains(&status),
        }
    }
}

/// `check = "exec"`: a command run once per probe, without a shell.
///
/// It runs with stdin closed, stdout and stderr into one pipe, in its own process group (killed
/// as a whole at the timeout), with the environment of vipd plus `VIPD_SERVICE`,
/// `VIPD_ENDPOINT` (`IP:PORT`, IPv6 in brackets), `VIPD_ENDPOINT_IP` and `VIPD_ENDPOINT_PORT`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecCheck {
    /// `command[0]`: an absolute path (an existing executable file when validated).
    pub program: PathBuf,
    /// `command[1..]`, passed as they are.
    pub args: Vec<String>,
}

/// `health.method`: HTTP methods a probe may use, none of which changes anything on the endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HttpMethod {
    /// `GET`.
    Get,
    /// `HEAD`: the status alone, the endpoint sends no body.
    Head,
    /// `OPTIONS`.
    Options,
}

impl HttpMethod {
    /// The method as sent, and as written in the config file.
    pub fn as_str(self) -> &'static str {
        match self {
            HttpMethod::Get => "GET",
            HttpMethod::Head => "HEAD",
            HttpMethod::Options => "OPTIONS",
        }
    }
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
    /// When one direction of a TCP connection ends, keep the other open until it ends too
    /// (forwarding the FIN); when false, close the connection once the ended direction's bytes
    /// are delivered (nginx stream's default, `proxy_half_close off`).
    pub half_close: bool,
    /// How long a new connection waits in the service's queue for an endpoint below its
    /// connection limit before it is closed.
    pub queue_timeout: Duration,
    /// How long a connection on an `accept_proxy_protocol` port may take to send its PROXY
    /// header before it is closed.
    pub proxy_protocol_timeout: Duration,
    /// TCP keepalive on the client's and the endpoint's socket of each connection; `None` =
    /// off (the kernel's default).
    pub tcp_keepalive: Option<TcpKeepalive>,
}

/// `tcp_keepalive`: the kernel probes a connection idle for `idle`, every `interval`, and drops
/// it after `count` probes go unanswered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpKeepalive {
    /// Idle time before the first probe (`TCP_KEEPIDLE`); whole seconds, 1 to [`Self::MAX_SECS`].
    pub idle: Duration,
    /// Time between probes (`TCP_KEEPINTVL`); whole seconds, 1 to [`Self::MAX_SECS`].
    pub interval: Duration,
    /// Unanswered probes before the connection is dropped (`TCP_KEEPCNT`); 1 to
    /// [`Self::MAX_COUNT`].
    pub count: u32,
}

impl TcpKeepalive {
    /// The largest `idle` and `interval` in seconds: Linux's limit of `TCP_KEEPIDLE` and
    /// `TCP_KEEPINTVL`.
    pub const MAX_SECS: u64 = 32_767;
    /// The largest `count`: Linux's limit of `TCP_KEEPCNT`.
    pub const MAX_COUNT: u32 = 127;
}

impl Default for ConnectionSettings {
    fn default() -> Self {
        ConnectionSettings {
            connect_timeout: Duration::from_secs(1),
            idle_timeout: Duration::from_secs(3600),
            udp_idle_timeout: Duration::from_secs(30),
            drain_timeout: Duration::from_secs(30),
            max_connect_attempts: NonZeroU32::new(3).expect("non-zero"),
            half_close: true,
            tcp_keepalive: None,
            queue_timeout: Duration::from_secs(5),
            proxy_protocol_timeout: Duration::from_secs(3),
        }
    }
}

impl Default for Health {
    fn default() -> Self {
        Health {
            check: HealthCheck::tcp(),
            port: None,
            period: Duration::from_secs(1),
            jitter: Health::DEFAULT_JITTER,
            timeout: Duration::from_millis(500),
            failure_threshold: NonZeroU32::new(2).expect("non-zero"),
            success_threshold: NonZeroU32::new(1).expect("non-zero"),
        }
    }
}

/// Whether `name` is a DNS label as service, port and replica names must be (`[a-z0-9-]{1,63}`,
/// not starting or ending with `-`).
pub fn is_dns_label(name: &str) -> bool {
    validate::names::check_dns_label(name).is_ok()
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

/// The health part of [`summary`]: the kind, what it sends and expects, and the period, e.g.
/// `tcp send/expect every 1s` or `http GET /primary expect 200 every 1s`.
fn check_summary(health: &Health) -> String {
    let what = match &health.check {
        HealthCheck::None => return "none".to_owned(),
        HealthCheck::Tcp(tcp) => match (&tcp.send, &tcp.expect) {
            (None, None) => "tcp".to_owned(),
            (Some(_), None) => "tcp send".to_owned(),
            (None, Some(_)) => "tcp expect".to_owned(),
            (Some(_), Some(_)) => "tcp send/expect".to_owned(),
        },
        HealthCheck::Http(http) => {
            let statuses = http.expect_status.as_ref().map(|statuses| {
                let statuses: Vec<String> = statuses.iter().map(u16::to_string).collect();
                statuses.join("/")
            });
            let expect = match (statuses, &http.expect) {
                (None, None) => String::new(),
                (Some(statuses), None) => format!(" expect {statuses}"),
                (None, Some(_)) => " expect body".to_owned(),
                (Some(statuses), Some(_)) => format!(" expect {statuses} + body"),
            };
            format!("http {} {}{expect}", http.method.as_str(), http.path)
        }
        HealthCheck::Exec(exec) => format!("exec {}", exec.program.display()),
        HealthCheck::Udp(udp) => match udp.expect {
            None => "udp".to_owned(),
            Some(_) => "udp send/expect".to_owned(),
        },
    };
    format!("{what} every {:?}", health.period)
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
    let check = if service.health.check == HealthCheck::None && service.is_udp_only() {
        // A service whose ports are all UDP defaults to no checks: say why there are none.
        "none (udp)".to_owned()
    } else {
        check_summary(&service.health)
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The health part of the summary of a service with `keys` in `[service.health]`.
    fn health_summary(keys: &str) -> String {
        let text = format!(
            "[[service]]\nname = \"web\"\nvip = \"127.0.0.1\"\nports = [{{ port = 80 }}]\n\
             endpoints = [\"10.0.0.1\"]\n[service.health]\n{keys}\n"
        );
        let config = from_str(&text, Path::new("vipd.toml")).expect("valid");
        let line = summary(&config.services[0]);
        line.split_once(", health ")
            .expect("a health part")
            .1
            .to_owned()
    }

    #[test]
    fn summary_names_the_check() {
        let cases = [
            ("", "tcp every 1s"),
            ("send = \"PING\\r\\n\"", "tcp send every 1s"),
            ("expect_hex = \"2b\"", "tcp expect every 1s"),
            (
                "send = \"PING\\r\\n\"\nexpect = \"+PONG\"",
                "tcp send/expect every 1s",
            ),
            (
                "check = \"http\"\nperiod = \"2s\"\ntimeout = \"1s\"",
                "http GET / every 2s",
            ),
            (
                "check = \"http\"\npath = \"/primary\"\nexpect_status = [200]",
                "http GET /primary expect 200 every 1s",
            ),
            (
                "check = \"http\"\nmethod = \"HEAD\"\nexpect_status = [200, 204]",
                "http HEAD / expect 200/204 every 1s",
            ),
            (
                "check = \"http\"\nexpect = \"ok\"",
                "http GET / expect body every 1s",
            ),
            (
                "check = \"http\"\nexpect_status = [200]\nexpect = \"ok\"",
                "http GET / expect 200 + body every 1s",
            ),
            (
                "check = \"exec\"\ncommand = [\"/bin/sh\", \"-c\", \"exit 0\"]\nperiod = \"2s\"",
                "exec /bin/sh every 2s",
            ),
            ("check = \"none\"", "none"),
        ];
        for (keys, want) in cases {
            assert_eq!(health_summary(keys), want, "{keys}");
        }
    }
}
