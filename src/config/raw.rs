//! Raw serde structs mirroring the file, and the TOML parse into them.
//!
//! These only check what serde can: syntax, key names (`deny_unknown_fields` everywhere, so a
//! typo is an error rather than a silently ignored key), value types, durations and enum
//! spellings. Everything that needs the values to be looked at together (ranges, duplicates,
//! addresses) is in [`super::validate`], so it can name the service and collect all problems.
//! Optional keys are `Option` here, not serde defaults, so validation can tell "absent" from
//! "set" (needed for the `[defaults]` → per-service override chain and for `health.path`).

use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

use super::ConfigError;

/// The file as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    /// `[runtime]`.
    #[serde(default)]
    pub runtime: RawRuntime,
    /// `[admin]`; absent = no admin server.
    pub admin: Option<RawAdmin>,
    /// `[dns]`; absent = no DNS server.
    pub dns: Option<RawDns>,
    /// `[defaults]`: connection settings every service inherits.
    #[serde(default)]
    pub defaults: RawConnection,
    /// `[[service]]`, in file order.
    #[serde(default, rename = "service")]
    pub services: Vec<RawService>,
}

/// `[runtime]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRuntime {
    /// Data-plane worker threads.
    pub workers: Option<usize>,
    /// Most client connections of the whole process at once.
    pub max_connections: Option<u32>,
}

/// `[admin]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    /// `IP:PORT`; a string so a bad address is a semantic error naming the key.
    pub listen: String,
    /// File holding the bearer token of the `POST` endpoints (relative to the config file).
    pub token_file: Option<std::path::PathBuf>,
}

/// `[dns]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDns {
    /// `IP:PORT` for UDP and TCP.
    pub listen: String,
    /// The zone served, e.g. `svc.cluster.local`.
    pub zone: String,
    /// TTL of answers.
    #[serde(default, deserialize_with = "duration")]
    pub ttl: Option<Duration>,
    /// Upstreams (`IP` or `IP:PORT`) for out-of-zone queries.
    pub forward: Option<Vec<String>>,
}

/// `[defaults]`. (A service repeats these keys itself rather than flattening this struct,
/// because serde's `flatten` does not work with `deny_unknown_fields`.)
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConnection {
    /// Deadline of one connect attempt.
    #[serde(default, deserialize_with = "duration")]
    pub connect_timeout: Option<Duration>,
    /// Idle connection timeout.
    #[serde(default, deserialize_with = "duration")]
    pub idle_timeout: Option<Duration>,
    /// Idle UDP flow timeout.
    #[serde(default, deserialize_with = "duration")]
    pub udp_idle_timeout: Option<Duration>,
    /// Shutdown drain timeout.
    #[serde(default, deserialize_with = "duration")]
    pub drain_timeout: Option<Duration>,
    /// Endpoints tried per client connection.
    pub max_connect_attempts: Option<u32>,
    /// Keep the other direction open when one ends.
    pub half_close: Option<bool>,
    /// TCP keepalive of both sockets of a connection.
    pub tcp_keepalive: Option<RawKeepalive>,
    /// How long a connection waits for an endpoint below its limit.
    #[serde(default, deserialize_with = "duration")]
    pub queue_timeout: Option<Duration>,
    /// How long a connection on an `accept_proxy_protocol` port may take to send its header.
    #[serde(default, deserialize_with = "duration")]
    pub proxy_protocol_timeout: Option<Duration>,
}

/// One `[[service]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawService {
    /// Service name.
    pub name: String,
    /// Virtual IP, as written.
    pub vip: String,
    /// Listened ports.
    pub ports: Vec<RawPort>,
    /// Endpoints, as written (an address string, or a table with `address`, `weight`,
    /// `backup`); absent when `[service.discovery]` supplies them (validation requires exactly
    /// one of the two).
    pub endpoints: Option<Vec<RawEndpoint>>,
    /// Balancing policy.
    pub balance: Option<RawBalance>,
    /// `"none"` or `"client_ip"`.
    pub session_affinity: Option<RawSessionAffinity>,
    /// How long a client IP sticks after its last connection started.
    #[serde(default, deserialize_with = "duration")]
    pub affinity_timeout: Option<Duration>,
    /// Weight ramp of an endpoint entering rotation.
    #[serde(default, deserialize_with = "duration")]
    pub slow_start: Option<Duration>,
    /// `"fail_open"` or `"fail_closed"`.
    pub when_all_unhealthy: Option<RawWhenAllUnhealthy>,
    /// `"keep"` or `"close"`.
    pub on_marked_down: Option<RawOnMarkedDown>,
    /// Overrides `[defaults].connect_timeout`.
    #[serde(default, deserialize_with = "duration")]
    pub connect_timeout: Option<Duration>,
    /// Overrides `[defaults].idle_timeout`.
    #[serde(default, deserialize_with = "duration")]
    pub idle_timeout: Option<Duration>,
    /// Overrides `[defaults].udp_idle_timeout`.
    #[serde(default, deserialize_with = "duration")]
    pub udp_idle_timeout: Option<Duration>,
    /// Overrides `[defaults].drain_timeout`.
    #[serde(default, deserialize_with = "duration")]
    pub drain_timeout: Option<Duration>,
    /// Overrides `[defaults].max_connect_attempts`.
    pub max_connect_attempts: Option<u32>,
    /// Overrides `[defaults].half_close`.
    pub half_close: Option<bool>,
    /// Replaces `[defaults].tcp_keepalive` (the whole table; `false` turns it off).
    pub tcp_keepalive: Option<RawKeepalive>,
    /// Overrides `[defaults].queue_timeout`.
    #[serde(default, deserialize_with = "duration")]
    pub queue_timeout: Option<Duration>,
    /// Overrides `[defaults].proxy_protocol_timeout`.
    #[serde(default, deserialize_with = "duration")]
    pub proxy_protocol_timeout: Option<Duration>,
    /// `"v1"` or `"v2"`: the PROXY header written to endpoints.
    pub proxy_protocol: Option<RawProxyProtocol>,
    /// Peers (CIDRs or addresses, as written) whose PROXY headers are believed.
    pub proxy_protocol_trusted: Option<Vec<String>>,
    /// Most client connections of the service at once.
    pub max_connections: Option<u32>,
    /// Most connections to each endpoint at once (an endpoint's own `max_connections` wins).
    pub max_connections_per_endpoint: Option<u32>,
    /// Most UDP flows at once.
    pub max_udp_flows: Option<u32>,
    /// `[service.health]`.
    pub health: Option<RawHealth>,
    /// `[service.outlier]`.
    pub outlier: Option<RawOutlier>,
    /// `[service.discovery]`: endpoints from DNS instead of `endpoints`.
    pub discovery: Option<RawDiscovery>,
    /// Whether vipd adds the VIP to an interface while it runs.
    pub manage_vip: Option<bool>,
    /// The interface a managed VIP goes on.
    pub vip_interface: Option<String>,
}

/// `[service.outlier]`: passive ejection after consecutive connect failures.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawOutlier {
    /// Consecutive connect failures that eject an endpoint (default 5).
    pub consecutive_failures: Option<u32>,
    /// First ejection's length (default 30s).
    #[serde(default, deserialize_with = "duration")]
    pub base_ejection_time: Option<Duration>,
    /// Share of endpoints that may be ejected at once, percent (default 50).
    pub max_ejection_percent: Option<u32>,
}

/// `[service.discovery]`. `dns` and `srv` are both optional here so validation can say
/// "exactly one of" with the service's name, rather than serde's generic message.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDiscovery {
    /// Name resolved to A and AAAA records.
    pub dns: Option<String>,
    /// Name resolved to SRV records.
    pub srv: Option<String>,
    /// Nameservers as written (`IP` or `IP:PORT`); absent = the system configuration.
    pub nameservers: Option<Vec<String>>,
    /// Floor for the record TTL.
    #[serde(default, deserialize_with = "duration")]
    pub min_refresh: Option<Duration>,
    /// Ceiling for the record TTL.
    #[serde(default, deserialize_with = "duration")]
    pub max_refresh: Option<Duration>,
}

/// One entry of `ports`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPort {
    /// Listened port.
    pub port: u16,
    /// Port on the endpoints; absent = `port`.
    pub target_port: Option<u16>,
    /// Absent = tcp.
    pub protocol: Option<RawProtocol>,
    /// Optional port name.
    pub name: Option<String>,
    /// Every connection (or datagram) must begin with a PROXY header.
    pub accept_proxy_protocol: Option<bool>,
}

/// `proxy_protocol`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RawProxyProtocol {
    /// `"v1"`: the text header (TCP only).
    V1,
    /// `"v2"`: the binary header.
    V2,
}

/// `protocol`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RawProtocol {
    /// `"tcp"`.
    Tcp,
    /// `"udp"`.
    Udp,
}

/// `balance`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RawBalance {
    /// `"round_robin"`.
    RoundRobin,
    /// `"least_connections"`.
    LeastConnections,
    /// `"power_of_two"`.
    PowerOfTwo,
    /// `"random"`.
    Random,
    /// `"maglev"`.
    Maglev,
}

/// `session_affinity`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RawSessionAffinity {
    /// `"none"`.
    None,
    /// `"client_ip"`.
    ClientIp,
}

/// `on_marked_down`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RawOnMarkedDown {
    /// `"keep"`.
    Keep,
    /// `"close"`.
    Close,
}

/// `when_all_unhealthy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RawWhenAllUnhealthy {
    /// `"fail_open"`.
    FailOpen,
    /// `"fail_closed"`.
    FailClosed,
}

/// One entry of `endpoints`: `"10.0.0.1:5432"`, or
/// `{ address = "10.0.0.1:5432", weight = 3, backup = true }`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawEndpoint {
    /// The address as written (`IP`, `IP:PORT`, `[IPv6]`, `[IPv6]:PORT`).
    pub address: String,
    /// `weight`, if given (table form only).
    pub weight: Option<u32>,
    /// `backup`, if given (table form only).
    pub backup: Option<bool>,
    /// `name`, if given (table form only).
    pub name: Option<String>,
    /// `check`, if given (table form only).
    pub check: Option<bool>,
    /// `max_connections`, if given (table form only).
    pub max_connections: Option<u32>,
    /// Written as a table (so problems name `endpoints[i].address`).
    pub table: bool,
}

/// The table form of an endpoint; its own struct so `deny_unknown_fields` names a typo.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEndpointTable {
    address: String,
    weight: Option<u32>,
    backup: Option<bool>,
    name: Option<String>,
    check: Option<bool>,
    max_connections: Option<u32>,
}

impl<'de> Deserialize<'de> for RawEndpoint {
    /// A string or a table. Written out rather than `#[serde(untagged)]`, whose error ("data
    /// did not match any variant") would hide what is wrong inside a table.
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = RawEndpoint;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(
                    "an address string such as \"10.0.0.1:5432\", or a table such as \
                     { address = \"10.0.0.1:5432\", weight = 3 }",
                )
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<RawEndpoint, E> {
                Ok(RawEndpoint {
                    address: v.to_owned(),
                    weight: None,
                    backup: None,
                    name: None,
                    check: None,
                    max_connections: None,
                    table: false,
                })
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<RawEndpoint, A::Error> {
                let table = RawEndpointTable::deserialize(
                    serde::de::value::MapAccessDeserializer::new(map),
                )?;
                Ok(RawEndpoint {
                    address: table.address,
                    weight: table.weight,
                    backup: table.backup,
                    name: table.name,
                    check: table.check,
                    max_connections: table.max_connections,
                    table: true,
                })
            }
        }
        d.deserialize_any(Visitor)
    }
}

/// `tcp_keepalive`: `{ idle = "60s", interval = "10s", count = 6 }`, or `false` (off). `true`
/// parses, so validation can name the key and say to give the table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RawKeepalive {
    /// The table.
    Table(RawKeepaliveTable),
    /// `true` or `false`.
    Bool(bool),
}

/// The table form of `tcp_keepalive`; every field is required.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawKeepaliveTable {
    /// Idle time before the first probe (`TCP_KEEPIDLE`).
    #[serde(deserialize_with = "required_duration")]
    pub idle: Duration,
    /// Time between probes (`TCP_KEEPINTVL`).
    #[serde(deserialize_with = "required_duration")]
    pub interval: Duration,
    /// Unanswered probes before the connection is dropped (`TCP_KEEPCNT`).
    pub count: u32,
}

impl<'de> Deserialize<'de> for RawKeepalive {
    /// A table or a boolean, written out for the same reason as [`RawEndpoint`]'s.
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = RawKeepalive;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(
                    "a table such as { idle = \"60s\", interval = \"10s\", count = 6 }, or false",
                )
            }
            fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<RawKeepalive, E> {
                Ok(RawKeepalive::Bool(v))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<RawKeepalive, A::Error> {
                RawKeepaliveTable::deserialize(serde::de::value::MapAccessDeserializer::new(map))
                    .map(RawKeepalive::Table)
            }
        }
        d.deserialize_any(Visitor)
    }
}

/// `[service.health]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHealth {
    /// Absent = tcp.
    pub check: Option<RawCheck>,
    /// HTTP request path (http only).
    pub path: Option<String>,
    /// Bytes written after connect, as text (tcp only).
    pub send: Option<String>,
    /// Bytes written after connect, as hex digits (tcp only).
    pub send_hex: Option<String>,
    /// Text the reply must contain (tcp; http: the body).
    pub expect: Option<String>,
    /// Bytes the reply must contain, as hex digits (tcp only).
    pub expect_hex: Option<String>,
    /// Statuses that count as healthy (http only).
    pub expect_status: Option<Vec<u16>>,
    /// `Host` header (http only).
    pub host: Option<String>,
    /// Request method (http only).
    pub method: Option<RawMethod>,
    /// Program and arguments (exec only).
    pub command: Option<Vec<String>>,
    /// Probe port override.
    pub port: Option<u16>,
    /// Probe period.
    #[serde(default, deserialize_with = "duration")]
    pub period: Option<Duration>,
    /// Probe timeout.
    #[serde(default, deserialize_with = "duration")]
    pub timeout: Option<Duration>,
    /// Random spread of the period, as a share of it.
    pub jitter: Option<f64>,
    /// Failures before unhealthy.
    pub failure_threshold: Option<u32>,
    /// Successes before healthy.
    pub success_threshold: Option<u32>,
}

/// `health.check`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RawCheck {
    /// `"tcp"`.
    Tcp,
    /// `"http"`.
    Http,
    /// `"exec"`.
    Exec,
    /// `"udp"`.
    Udp,
    /// `"none"`.
    None,
}

impl RawCheck {
    /// The spelling in the file.
    pub fn name(self) -> &'static str {
        match self {
            RawCheck::Tcp => "tcp",
            RawCheck::Http => "http",
            RawCheck::Exec => "exec",
            RawCheck::Udp => "udp",
            RawCheck::None => "none",
        }
    }
}

/// `health.method`, spelled as on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum RawMethod {
    /// `"GET"`.
    Get,
    /// `"HEAD"`.
    Head,
    /// `"OPTIONS"`.
    Options,
}

/// Deserializes an optional humantime duration (`"500ms"`, `"1h 30m"`).
///
/// Written out instead of `humantime_serde` so the error keeps humantime's explanation
/// (e.g. which unit is unknown) rather than a bare "expected a duration".
fn duration<'de, D>(d: D) -> Result<Option<Duration>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    required_duration(d).map(Some)
}

/// Deserializes a humantime duration, for a field that must be given.
fn required_duration<'de, D>(d: D) -> Result<Duration, D::Error>
where
    D: serde::Deserializer<'de>,
{
    struct Visitor;
    impl serde::de::Visitor<'_> for Visitor {
        type Value = Duration;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a duration string such as \"500ms\", \"30s\" or \"1h\"")
        }
        fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Duration, E> {
            humantime::parse_duration(v)
                .map_err(|e| E::custom(format!("invalid duration \"{v}\": {e}")))
        }
    }
    d.deserialize_str(Visitor)
}

/// Parses TOML text into the raw structs; `path` only names the file in errors.
pub fn parse(text: &str, path: &Path) -> Result<RawConfig, ConfigError> {
    toml::from_str(text).map_err(|e| {
        // The toml error's own Display is a multi-line snippet; the contract is one
        // `FILE:LINE:COL: message` line, which editors and terminals can jump to.
        let (line, column) = match e.span() {
            Some(span) => line_col(text, span.start),
            // Errors raised without a position (rare: only document-level ones) point at the
            // start of the file rather than changing the line's shape.
            None => (1, 1),
        };
        ConfigError::Syntax {
            path: path.to_path_buf(),
            line,
            column,
            message: one_line(e.message()),
        }
    })
}

/// 1-based line and column (counted in characters, as editors show them) of byte `offset`.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    // A span inside a multi-byte character would make slicing panic; back up to its start.
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before[line_start..].chars().count() + 1;
    (line, column)
}

/// Collapses a possibly multi-line message into one line.
fn one_line(message: &str) -> String {
    message
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn syntax_error(text: &str) -> (usize, usize, String) {
        match parse(text, Path::new("t.toml")) {
            Err(ConfigError::Syntax {
                line,
                column,
                message,
                ..
            }) => (line, column, message),
            other => panic!("expected a syntax error for {text:?}, got {other:?}"),
        }
    }

    #[test]
    fn line_col_is_one_based_and_counts_chars() {
        let text = "ab\ncdé\nf";
        assert_eq!(line_col(text, 0), (1, 1));
        assert_eq!(line_col(text, 2), (1, 3));
        assert_eq!(line_col(text, 3), (2, 1));
        // 'é' is two bytes: the 'f' line starts at byte 8.
        assert_eq!(line_col(text, 8), (3, 1));
        // Inside 'é' → its start; past the end → clamped.
        assert_eq!(line_col(text, 6), (2, 3));
        assert_eq!(line_col(text, 100), (3, 2));
    }

    #[test]
    fn one_line_joins_lines() {
        assert_eq!(one_line("a\n  b\n\nc\n"), "a; b; c");
        assert_eq!(one_line("plain"), "plain");
    }

    #[test]
    fn empty_file_parses() {
        let raw = parse("", Path::new("t.toml")).unwrap();
        assert!(raw.services.is_empty());
        assert!(raw.admin.is_none());
    }

    #[test]
    fn full_service_parses() {
        let raw = parse(
            r#"
            [[service]]
            name = "web"
            vip = "127.0.0.1"
            ports = [{ port = 80, target_port = 8080, protocol = "udp", name = "http" }]
            endpoints = ["10.0.0.1"]
            balance = "round_robin"
            connect_timeout = "250ms"
            [service.health]
            check = "http"
            path = "/healthz"
            period = "2s"
            "#,
            Path::new("t.toml"),
        )
        .unwrap();
        let s = &raw.services[0];
        assert_eq!(s.ports[0].protocol, Some(RawProtocol::Udp));
        assert_eq!(s.ports[0].target_port, Some(8080));
        assert_eq!(s.balance, Some(RawBalance::RoundRobin));
        assert_eq!(s.connect_timeout, Some(Duration::from_millis(250)));
        let h = s.health.as_ref().unwrap();
        assert_eq!(h.check, Some(RawCheck::Http));
        assert_eq!(h.period, Some(Duration::from_secs(2)));
        assert_eq!(h.timeout, None);
    }

    #[test]
    fn schema_errors_have_positions() {
        // (text, line, column, message substring)
        let cases = [
            ("[runtime\n", 1, 9, "unclosed table"),
            (
                "[runtime]\nworkers = 2\nbogus = 1\n",
                3,
                1,
                "unknown field `bogus`",
            ),
            ("[runtime]\nworkers = \"two\"\n", 2, 11, "invalid type"),
            ("[runtime]\nworkers = -1\n", 2, 11, "invalid value"),
            (
                "[defaults]\nidle_timeout = \"5 parsecs\"\n",
                2,
                16,
                "invalid duration \"5 parsecs\": unknown time unit",
            ),
            (
                "[defaults]\nidle_timeout = 5\n",
                2,
                16,
                "expected a duration string",
            ),
            (
                "[[service]]\nname = \"a\"\nvip = \"::1\"\nendpoints = []\nports = [{ port = 1, protocol = \"sctp\" }]\n",
                5,
                33,
                "unknown variant `sctp`",
            ),
            ("[[service]]\nname = \"a\"\n", 1, 1, "missing field `vip`"),
            ("[admin]\n", 1, 1, "missing field `listen`"),
            (
                "[[service]]\nname = \"a\"\nvip = \"::1\"\nports = []\nendpoints = [{ address = \"::2\", wieght = 2 }]\n",
                5,
                33,
                "unknown field `wieght`, expected one of `address`, `weight`, `backup`, `name`, `check`",
            ),
            (
                "[[service]]\nname = \"a\"\nvip = \"::1\"\nports = []\nendpoints = [{ weight = 2 }]\n",
                5,
                14,
                "missing field `address`",
            ),
            (
                "[[service]]\nname = \"a\"\nvip = \"::1\"\nports = []\nendpoints = [5432]\n",
                5,
                14,
                "expected an address string such as \"10.0.0.1:5432\", or a table",
            ),
            (
                "[[service]]\nname = \"a\"\nvip = \"::1\"\nports = []\nendpoints = []\nbalance = \"least_conn\"\n",
                6,
                11,
                "unknown variant `least_conn`, expected one of `round_robin`, `least_connections`",
            ),
            (
                "[[service]]\nname = \"a\"\nvip = \"::1\"\nports = []\nendpoints = []\nsession_affinity = \"ClientIP\"\n",
                6,
                20,
                "unknown variant `ClientIP`, expected `none` or `client_ip`",
            ),
            (
                "[defaults]\ntcp_keepalive = { idle = \"60s\", interval = \"10s\" }\n",
                2,
                17,
                "missing field `count`",
            ),
            (
                "[defaults]\ntcp_keepalive = { idle = \"60s\", interval = \"10s\", count = 6, probes = 3 }\n",
                2,
                62,
                "unknown field `probes`, expected one of `idle`, `interval`, `count`",
            ),
            (
                "[defaults]\ntcp_keepalive = { idle = 60, interval = \"10s\", count = 6 }\n",
                2,
                26,
                "expected a duration string",
            ),
            (
                "[defaults]\ntcp_keepalive = \"60s\"\n",
                2,
                17,
                "expected a table such as { idle = \"60s\", interval = \"10s\", count = 6 }, or false",
            ),
        ];
        for (text, line, column, want) in cases {
            let (l, c, message) = syntax_error(text);
            assert!(
                message.contains(want),
                "{text:?}: message {message:?} lacks {want:?}"
            );
            assert!(!message.contains('\n'), "{message:?} is not one line");
            assert_eq!((l, c), (line, column), "{text:?}: {message}");
        }
    }
}
