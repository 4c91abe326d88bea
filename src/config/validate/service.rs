//! One `[[service]]`: its name, `vip` and `ports` (TCP and UDP), the addresses it listens on,
//! `max_udp_flows`, VIP ownership (`manage_vip`, `vip_interface`), `[service.outlier]`, and the
//! health defaults of UDP-only services; endpoints, health checks, discovery and connection
//! settings are handed to their own modules.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::num::NonZeroU32;
use std::time::Duration;

use super::Validator;
use super::listen::{Listener, is_self_loop};
use super::names::{check_dns_label, check_interface_name};
use super::placement::PlacementKeys;
use crate::config::raw::{
    RawConnection, RawKeepalive, RawOnMarkedDown, RawOutlier, RawPort, RawProtocol, RawService,
};
use crate::config::{
    ConnectionSettings, EndpointSpec, Health, HealthCheck, OnMarkedDown, Outlier, ProblemScope,
    Protocol, Service, ServicePort,
};

/// The interface a managed VIP goes on when `vip_interface` is not set.
const DEFAULT_VIP_INTERFACE: &str = "lo";

impl Validator {
    pub(super) fn service(
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

        // Keepalive on a service without a TCP port would do nothing, like the other TCP keys
        // below. It is checked before the connection settings and then left out, so a mistake
        // inside its table does not add a second message; `false` only turns off an inherited
        // setting and is never wrong.
        let udp_only = !ports.is_empty() && ports.iter().all(|(_, p)| p.protocol == Protocol::Udp);
        let mut tcp_keepalive = raw.tcp_keepalive.clone();
        if udp_only
            && tcp_keepalive
                .take_if(|k| *k != RawKeepalive::Bool(false))
                .is_some()
        {
            self.push(
                &scope,
                "tcp_keepalive",
                "only allowed on a service with a tcp port (ports[].protocol = \"tcp\")",
            );
        }
        let overrides = RawConnection {
            connect_timeout: raw.connect_timeout,
            idle_timeout: raw.idle_timeout,
            udp_idle_timeout: raw.udp_idle_timeout,
            drain_timeout: raw.drain_timeout,
            max_connect_attempts: raw.max_connect_attempts,
            half_close: raw.half_close,
            tcp_keepalive,
            queue_timeout: raw.queue_timeout,
            proxy_protocol_timeout: raw.proxy_protocol_timeout,
        };
        let connection = self.connection(&scope, "", &overrides, defaults);
        let max_udp_flows = self.at_least_one(
            &scope,
            "max_udp_flows",
            raw.max_udp_flows,
            Service::DEFAULT_MAX_UDP_FLOWS,
        );
        // UDP keys on a service without a UDP port would do nothing: say so rather than let a
        // missing `protocol = "udp"` go unnoticed. (`[defaults]` may set them for all.)
        if !ports.is_empty() && ports.iter().all(|(_, p)| p.protocol != Protocol::Udp) {
            // A zero was reported already: one mistake, one message.
            for (key, set) in [
                ("max_udp_flows", raw.max_udp_flows.is_some_and(|n| n > 0)),
                (
                    "udp_idle_timeout",
                    raw.udp_idle_timeout.is_some_and(|d| !d.is_zero()),
                ),
            ] {
                if set {
                    self.push(
                        &scope,
                        key,
                        "only allowed on a service with a udp port (ports[].protocol = \"udp\")",
                    );
                }
            }
        }
        let max_connections = self.optional_limit(&scope, "max_connections", raw.max_connections);
        let max_connections_per_endpoint = self.optional_limit(
            &scope,
            "max_connections_per_endpoint",
            raw.max_connections_per_endpoint,
        );
        // Limits and queues of TCP connections on a service that has none.
        if !ports.is_empty() && ports.iter().all(|(_, p)| p.protocol != Protocol::Tcp) {
            for (key, set) in [
                ("max_connections", max_connections.is_some()),
                (
                    "max_connections_per_endpoint",
                    max_connections_per_endpoint.is_some(),
                ),
                (
                    "queue_timeout",
                    raw.queue_timeout.is_some_and(|d| !d.is_zero()),
                ),
                ("half_close", raw.half_close.is_some()),
            ] {
                if set {
                    self.push(
                        &scope,
                        key,
                        "only allowed on a service with a tcp port (ports[].protocol = \"tcp\")",
                    );
                }
            }
            for (i, endpoint) in endpoints.iter().enumerate() {
                if endpoint.1.max_connections.is_some() {
                    self.push(
                        &scope,
                        format!("endpoints[{i}].max_connections"),
                        "only allowed on a service with a tcp port (ports[].protocol = \"tcp\")",
                    );
                }
            }
        }
        let (proxy_protocol, proxy_protocol_trusted) = self.proxy_protocol(&scope, raw, &ports);
        let health = self.udp_health(&scope, raw, &ports);
        let outlier = raw.outlier.as_ref().map(|o| self.outlier(&scope, o));
        let (manage_vip, vip_interface) = self.vip_ownership(&scope, raw, vip);
        let PlacementKeys {
            balance,
            session_affinity,
            slow_start,
            when_all_unhealthy,
        } = self.placement(&scope, raw);

        Service {
            name: raw.name.clone(),
            vip: vip.unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED)),
            ports: ports.into_iter().map(|(_, p)| p).collect(),
            endpoints: endpoints.into_iter().map(|(_, e)| e).collect(),
            balance,
            session_affinity,
            slow_start,
            when_all_unhealthy,
            on_marked_down: match raw.on_marked_down {
                None | Some(RawOnMarkedDown::Keep) => OnMarkedDown::Keep,
                Some(RawOnMarkedDown::Close) => OnMarkedDown::Close,
            },
            health,
            connection,
            discovery,
            outlier,
            manage_vip,
            vip_interface,
            max_udp_flows,
            max_connections,
            max_connections_per_endpoint,
            proxy_protocol,
            proxy_protocol_trusted,
        }
    }

    /// `[service.health]`, with the rules UDP ports add: a service whose ports are all UDP is
    /// not probed unless it asks to be (a TCP connect to a UDP port fails), and a TCP-based
    /// check of such a service needs `health.port` to reach a TCP port.
    fn udp_health(
        &mut self,
        scope: &ProblemScope,
        raw: &RawService,
        ports: &[(bool, ServicePort)],
    ) -> Health {
        let mut health = self.health(scope, raw.health.as_ref());
        let udp_only = !ports.is_empty() && ports.iter().all(|(_, p)| p.protocol == Protocol::Udp);
        let any_udp = ports.iter().any(|(_, p)| p.protocol == Protocol::Udp);
        if !any_udp && health.port.is_none() && matches!(health.check, HealthCheck::Udp(_)) {
            self.push(
                scope,
                "health.check",
                "\"udp\" probes send a datagram, and no port of this service is udp: set \
                 health.port to a UDP port of the endpoints",
            );
        }
        if !udp_only {
            return health;
        }
        let check_unset = raw.health.as_ref().is_none_or(|h| h.check.is_none());
        if check_unset {
            // An all-UDP service is not probed over TCP by default.
            health.check = HealthCheck::None;
            if let Some(h) = &raw.health
                && (h.send.is_some()
                    || h.send_hex.is_some()
                    || h.expect.is_some()
                    || h.expect_hex.is_some())
            {
                self.push(
                    scope,
                    "health.check",
                    "every port of this service is udp: set check = \"udp\" for a probe that \
                     sends and expects",
                );
            }
        } else if health.port.is_none()
            && let Some(kind) = match &health.check {
                HealthCheck::Tcp(_) => Some("tcp"),
                HealthCheck::Http(_) => Some("http"),
                _ => None,
            }
        {
            self.push(
                scope,
                "health.check",
                format!(
                    "\"{kind}\" probes connect over TCP, and every port of this service is udp: \
                     set health.port to a TCP port of the endpoints, or check = \"none\""
                ),
            );
        }
        health
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
            let protocol = protocol_of(p);
            if p.port == 0 {
                self.push(scope, key("port"), "0 is out of range 1-65535");
            } else if let Some(j) = raw[..i]
                .iter()
                .position(|q| q.port == p.port && protocol_of(q) == protocol)
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
                    .position(|q| q.name.as_deref() == Some(name) && protocol_of(q) == protocol)
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
                protocol,
                name: p.name.clone(),
                accept_proxy_protocol: p.accept_proxy_protocol.unwrap_or(false),
            };
            out.push((self.problems.len() == before, port));
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

/// The protocol of a `ports` entry (absent = tcp).
fn protocol_of(port: &RawPort) -> Protocol {
    match port.protocol {
        None | Some(RawProtocol::Tcp) => Protocol::Tcp,
        Some(RawProtocol::Udp) => Protocol::Udp,
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{assert_each_reports, load, service};
    use crate::config::{HealthCheck, Protocol};

    /// A one-service config whose only port is UDP, with `extra` inside the service table.
    fn udp_service(extra: &str) -> String {
        format!(
            "[[service]]\nname = \"dns\"\nvip = \"127.0.0.1\"\n\
             ports = [{{ port = 5300, target_port = 53, protocol = \"udp\" }}]\n\
             endpoints = [\"10.0.0.1\"]\n{extra}"
        )
    }

    #[test]
    fn udp_ports_convert_and_mix_with_tcp() {
        let config = load(
            &service("max_udp_flows = 100\nudp_idle_timeout = \"5s\"\n").replace(
                "ports = [{ port = 8000, target_port = 9000 }]",
                "ports = [{ port = 8000, protocol = \"udp\", name = \"dns\" }, \
             { port = 8000, name = \"dns\" }]",
            ),
        )
        .unwrap();
        let web = &config.services[0];
        let protocols: Vec<Protocol> = web.ports.iter().map(|p| p.protocol).collect();
        assert_eq!(protocols, [Protocol::Udp, Protocol::Tcp]);
        assert_eq!(web.max_udp_flows.get(), 100);
        assert_eq!(
            web.connection.udp_idle_timeout,
            std::time::Duration::from_secs(5)
        );
        // A TCP port is there to probe.
        assert_eq!(web.health.check, HealthCheck::tcp());
        assert!(!web.is_udp_only());
    }

    #[test]
    fn udp_only_services_default_to_no_probes() {
        let config = load(&udp_service("")).unwrap();
        let dns = &config.services[0];
        assert!(dns.is_udp_only());
        assert_eq!(dns.health.check, HealthCheck::None);
        assert_eq!(dns.max_udp_flows.get(), 16_384);
        assert_eq!(
            dns.connection.udp_idle_timeout,
            std::time::Duration::from_secs(30)
        );
        assert!(
            crate::config::summary(dns).ends_with("health none (udp)"),
            "{}",
            crate::config::summary(dns)
        );
        // A probe port makes a TCP check possible; an explicit table is taken as written.
        let probed = load(&udp_service(
            "[service.health]\ncheck = \"http\"\nport = 8080\n",
        ))
        .unwrap();
        assert_eq!(probed.services[0].health.port, Some(8080));
        let none = load(&udp_service("[service.health]\ncheck = \"none\"\n")).unwrap();
        assert_eq!(none.services[0].health.check, HealthCheck::None);
    }

    #[test]
    fn a_udp_and_a_tcp_service_may_share_an_address() {
        let text = format!("{}{}", udp_service("").replace("5300", "8000"), service(""));
        assert_eq!(load(&text).unwrap().services.len(), 2);
    }

    #[test]
    fn each_rule_reports_its_key() {
        // (text, the one expected problem line)
        let cases: Vec<(String, &str)> = vec![
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
                service("").replace("}]", "}, { port = 8000 }]"),
                "vipd.toml: service \"web\": ports[1].port: 8000 is already listed as ports[0].port",
            ),
            (
                // An absent protocol is tcp.
                service("").replace("}]", "}, { port = 8000, protocol = \"tcp\" }]"),
                "vipd.toml: service \"web\": ports[1].port: 8000 is already listed as ports[0].port",
            ),
            (
                service("").replace(
                    "9000 }]",
                    "9000, protocol = \"udp\" }, { port = 8000, protocol = \"udp\" }]",
                ),
                "vipd.toml: service \"web\": ports[1].port: 8000 is already listed as ports[0].port",
            ),
            (
                service("max_udp_flows = 10\n"),
                "vipd.toml: service \"web\": max_udp_flows: only allowed on a service with a udp port (ports[].protocol = \"udp\")",
            ),
            (
                udp_service("max_udp_flows = 0\n"),
                "vipd.toml: service \"dns\": max_udp_flows: must be at least 1",
            ),
            (
                udp_service("[service.health]\nsend = \"ping\"\n"),
                "vipd.toml: service \"dns\": health.check: every port of this service is udp: set check = \"udp\" for a probe that sends and expects",
            ),
            (
                service("[service.health]\ncheck = \"udp\"\n"),
                "vipd.toml: service \"web\": health.check: \"udp\" probes send a datagram, and no port of this service is udp: set health.port to a UDP port of the endpoints",
            ),
            (
                udp_service("[service.health]\ncheck = \"tcp\"\n"),
                "vipd.toml: service \"dns\": health.check: \"tcp\" probes connect over TCP, and every port of this service is udp: set health.port to a TCP port of the endpoints, or check = \"none\"",
            ),
            (
                format!(
                    "{}{}",
                    udp_service(""),
                    udp_service("").replace("\"dns\"", "\"dns2\"")
                ),
                "vipd.toml: service \"dns2\": ports[0].port: 127.0.0.1:5300 is already the listen address of service \"dns\" ports[0]",
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
        ];
        assert_each_reports(cases);
    }
}
