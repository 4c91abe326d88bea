//! Listen addresses: the [`Listener`]s that services bind, remembered to find collisions
//! (between services, with the admin server and with the DNS server), and the address rules
//! behind them: when two listen addresses overlap, and when an endpoint is the listener itself.

use std::net::SocketAddr;

use crate::config::Protocol;

/// One address a service will bind, remembered to find collisions between services.
pub(super) struct Listener {
    pub(super) addr: SocketAddr,
    pub(super) protocol: Protocol,
    /// How messages name the owner, e.g. `service "web" ports[0]`.
    pub(super) owner: String,
}

impl Listener {
    /// Whether binding both would conflict: same protocol and port, and the same IP or a
    /// wildcard (`0.0.0.0`, `::`) of the same family, which covers every IP of that family.
    pub(super) fn overlaps(&self, addr: SocketAddr, protocol: Protocol) -> bool {
        self.protocol == protocol && addrs_overlap(self.addr, addr)
    }

    /// The message for a collision of `addr` with this listener.
    pub(super) fn collision(&self, addr: SocketAddr) -> String {
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

/// Whether two addresses share a port and either are equal or one is the wildcard
/// (`0.0.0.0`, `::`) of the other's family, which covers every IP of that family. Families do
/// not mix because IPv6 listeners are bound IPV6_V6ONLY.
pub(super) fn addrs_overlap(a: SocketAddr, b: SocketAddr) -> bool {
    let (x, y) = (a.ip(), b.ip());
    a.port() == b.port()
        && (x == y || (x.is_ipv4() == y.is_ipv4() && (x.is_unspecified() || y.is_unspecified())))
}

/// Whether connecting to `target` reaches the listener at `listen` for sure: the same address,
/// or a loopback address of a wildcard listener's family. (Other IPs under a wildcard may or
/// may not be local; that is not knowable from the file.)
pub(super) fn is_self_loop(listen: SocketAddr, target: SocketAddr) -> bool {
    let (l, t) = (listen.ip(), target.ip());
    listen.port() == target.port()
        && (l == t || (l.is_unspecified() && t.is_loopback() && l.is_ipv4() == t.is_ipv4()))
}

#[cfg(test)]
mod tests {
    use super::*;

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
