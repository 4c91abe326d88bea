//! The PROXY protocol keys of a service: the header it writes to endpoints (`proxy_protocol`),
//! and who may send it one (`proxy_protocol_trusted`, required wherever a port has
//! `accept_proxy_protocol`: nobody is trusted by default, since a header lets its sender name
//! any client address).

use std::net::{IpAddr, SocketAddr};

use super::Validator;
use crate::config::raw::{RawProxyProtocol, RawService};
use crate::config::{Cidr, ProblemScope, Protocol, ProxyProtocolVersion, ServicePort};

impl Validator {
    /// `proxy_protocol` and `proxy_protocol_trusted` against the service's ports.
    pub(super) fn proxy_protocol(
        &mut self,
        scope: &ProblemScope,
        raw: &RawService,
        ports: &[(bool, ServicePort)],
    ) -> (Option<ProxyProtocolVersion>, Vec<Cidr>) {
        let version = raw.proxy_protocol.map(|v| match v {
            RawProxyProtocol::V1 => ProxyProtocolVersion::V1,
            RawProxyProtocol::V2 => ProxyProtocolVersion::V2,
        });
        if version == Some(ProxyProtocolVersion::V1)
            && ports.iter().any(|(_, p)| p.protocol == Protocol::Udp)
        {
            self.push(
                scope,
                "proxy_protocol",
                "\"v1\" cannot carry UDP datagrams and this service has a udp port; use \"v2\"",
            );
        }
        let trusted: Vec<Cidr> = raw
            .proxy_protocol_trusted
            .iter()
            .flatten()
            .enumerate()
            .filter_map(|(i, text)| match parse_cidr(text) {
                Ok(cidr) => Some(cidr),
                Err(message) => {
                    self.push(scope, format!("proxy_protocol_trusted[{i}]"), message);
                    None
                }
            })
            .collect();
        let accepting = ports.iter().any(|(_, p)| p.accept_proxy_protocol);
        let listed = raw.proxy_protocol_trusted.as_ref();
        if accepting && listed.is_none_or(Vec::is_empty) {
            self.push(
                scope,
                "proxy_protocol_trusted",
                "required with accept_proxy_protocol: list the load balancers whose PROXY \
                 headers are believed (e.g. [\"10.0.0.0/8\"]); nobody is trusted by default",
            );
        } else if !accepting && listed.is_some() {
            self.push(
                scope,
                "proxy_protocol_trusted",
                "only allowed with a port that has accept_proxy_protocol = true",
            );
        }
        (version, trusted)
    }
}

/// `IP/LEN` with the host bits zero, or a bare IP (one address).
fn parse_cidr(text: &str) -> Result<Cidr, String> {
    if let Ok(ip) = text.parse::<IpAddr>() {
        let len = if ip.is_ipv4() { 32 } else { 128 };
        return Ok(Cidr(
            ipnet::IpNet::new(ip, len).expect("a full-length prefix is valid"),
        ));
    }
    if text.parse::<SocketAddr>().is_ok() {
        return Err(format!(
            "\"{text}\" has a port; give an address or a CIDR such as \"10.0.0.0/8\""
        ));
    }
    let net: ipnet::IpNet = text.parse().map_err(|_| {
        format!("\"{text}\" is neither an IP address nor a CIDR such as \"10.0.0.0/8\"")
    })?;
    if net.trunc() != net {
        return Err(format!(
            "\"{text}\" has host bits set; the network is \"{}\"",
            net.trunc()
        ));
    }
    Ok(Cidr(net))
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{assert_each_reports, load, service};

    #[test]
    fn each_rule_reports_its_key() {
        let accepting = |extra: &str| {
            service(extra).replace(
                "ports = [{ port = 8000, target_port = 9000 }]",
                "ports = [{ port = 8000, target_port = 9000, accept_proxy_protocol = true }]",
            )
        };
        let cases: Vec<(String, &str)> = vec![
            (
                accepting(""),
                "vipd.toml: service \"web\": proxy_protocol_trusted: required with accept_proxy_protocol: list the load balancers whose PROXY headers are believed (e.g. [\"10.0.0.0/8\"]); nobody is trusted by default",
            ),
            (
                accepting("proxy_protocol_trusted = []\n"),
                "vipd.toml: service \"web\": proxy_protocol_trusted: required with accept_proxy_protocol: list the load balancers whose PROXY headers are believed (e.g. [\"10.0.0.0/8\"]); nobody is trusted by default",
            ),
            (
                service("proxy_protocol_trusted = [\"10.0.0.0/8\"]\n"),
                "vipd.toml: service \"web\": proxy_protocol_trusted: only allowed with a port that has accept_proxy_protocol = true",
            ),
            (
                accepting("proxy_protocol_trusted = [\"10.0.0.1/8\"]\n"),
                "vipd.toml: service \"web\": proxy_protocol_trusted[0]: \"10.0.0.1/8\" has host bits set; the network is \"10.0.0.0/8\"",
            ),
            (
                accepting("proxy_protocol_trusted = [\"127.0.0.1\", \"lb.example\"]\n"),
                "vipd.toml: service \"web\": proxy_protocol_trusted[1]: \"lb.example\" is neither an IP address nor a CIDR such as \"10.0.0.0/8\"",
            ),
            (
                accepting("proxy_protocol_trusted = [\"10.0.0.1:80\"]\n"),
                "vipd.toml: service \"web\": proxy_protocol_trusted[0]: \"10.0.0.1:80\" has a port; give an address or a CIDR such as \"10.0.0.0/8\"",
            ),
            (
                service("proxy_protocol = \"v1\"\n").replace(
                    "ports = [{ port = 8000, target_port = 9000 }]",
                    "ports = [{ port = 8000, target_port = 9000 }, { port = 53, protocol = \"udp\" }]",
                ),
                "vipd.toml: service \"web\": proxy_protocol: \"v1\" cannot carry UDP datagrams and this service has a udp port; use \"v2\"",
            ),
        ];
        assert_each_reports(cases);
    }

    #[test]
    fn trusted_peers_and_versions_convert() {
        let config = load(
            &service(
                "proxy_protocol = \"v2\"\nproxy_protocol_trusted = [\"10.0.0.0/8\", \"::1\", \"192.0.2.7\"]\nproxy_protocol_timeout = \"1s\"\n",
            )
            .replace(
                "ports = [{ port = 8000, target_port = 9000 }]",
                "ports = [{ port = 8000, target_port = 9000, accept_proxy_protocol = true }]",
            ),
        )
        .unwrap();
        let web = &config.services[0];
        assert_eq!(
            web.proxy_protocol,
            Some(crate::config::ProxyProtocolVersion::V2)
        );
        assert!(web.ports[0].accept_proxy_protocol);
        assert_eq!(
            web.connection.proxy_protocol_timeout,
            std::time::Duration::from_secs(1)
        );
        let trusted = |ip: &str| {
            let ip = ip.parse().unwrap();
            web.proxy_protocol_trusted.iter().any(|c| c.contains(ip))
        };
        assert!(trusted("10.200.0.1"));
        assert!(trusted("::1"));
        assert!(
            trusted("::ffff:10.1.2.3"),
            "a mapped IPv4 client is its IPv4 self"
        );
        assert!(trusted("192.0.2.7"));
        assert!(!trusted("192.0.2.8"));
        assert!(!trusted("127.0.0.1"));
    }
}
