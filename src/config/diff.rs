//! Reload planning: a pure comparison of the running config with a newly loaded one, listing
//! what must change. Applying the changes is the app's business; keeping this pure lets it be
//! tested from a table.

use std::fmt;
use std::net::SocketAddr;

use super::{Config, Protocol, Service};

/// Everything that differs between two configs.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Changes {
    /// Services only in the new config.
    pub added: Vec<String>,
    /// Services only in the old config.
    pub removed: Vec<String>,
    /// Services in both whose settings differ.
    pub changed: Vec<ServiceChange>,
    /// Global settings that differ but only apply at the next start (e.g. `runtime.workers`).
    pub needs_restart: Vec<&'static str>,
}

impl Changes {
    /// True when nothing changes.
    pub fn is_empty(&self) -> bool {
        self.added.is_empty()
            && self.removed.is_empty()
            && self.changed.is_empty()
            && self.needs_restart.is_empty()
    }

    /// One line for the log, e.g. `added [a], removed [b], changed [c (listeners)]`.
    pub fn summary(&self) -> String {
        if self.is_empty() {
            return "no changes".to_owned();
        }
        let changed: Vec<String> = self
            .changed
            .iter()
            .map(|c| {
                if c.listeners_changed() {
                    format!("{} (listeners)", c.name)
                } else {
                    c.name.clone()
                }
            })
            .collect();
        format!(
            "added {:?}, removed {:?}, changed {:?}, needing restart {:?}",
            self.added, self.removed, changed, self.needs_restart
        )
    }
}

/// How one service changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceChange {
    /// The service.
    pub name: String,
    /// Listen addresses to open (a changed VIP reopens every port).
    pub listen_added: Vec<Listen>,
    /// Listen addresses to close.
    pub listen_removed: Vec<Listen>,
}

/// One address a service binds, with its protocol: a TCP and a UDP port of the same number are
/// separate sockets, opened and closed on their own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Listen {
    /// TCP or UDP.
    pub protocol: Protocol,
    /// The VIP and port (as configured: port 0 stays 0).
    pub addr: SocketAddr,
}

impl fmt::Display for Listen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.protocol.as_str())
    }
}

impl ServiceChange {
    /// Whether listeners open or close.
    pub fn listeners_changed(&self) -> bool {
        !self.listen_added.is_empty() || !self.listen_removed.is_empty()
    }
}

/// The listen addresses of a service, one per port in config order (as configured: port 0
/// stays 0).
pub fn listen_addrs(service: &Service) -> Vec<Listen> {
    service
        .ports
        .iter()
        .map(|p| Listen {
            protocol: p.protocol,
            addr: SocketAddr::new(service.vip, p.port),
        })
        .collect()
}

/// Compares `old` with `new`.
pub fn diff(old: &Config, new: &Config) -> Changes {
    let mut changes = Changes::default();
    for service in &new.services {
        match old.services.iter().find(|s| s.name == service.name) {
            None => changes.added.push(service.name.clone()),
            Some(before) if before != service => {
                let (was, now) = (listen_addrs(before), listen_addrs(service));
                changes.changed.push(ServiceChange {
                    name: service.name.clone(),
                    listen_added: now.iter().filter(|a| !was.contains(a)).copied().collect(),
                    listen_removed: was.iter().filter(|a| !now.contains(a)).copied().collect(),
                });
            }
            Some(_) => {}
        }
    }
    for service in &old.services {
        if !new.services.iter().any(|s| s.name == service.name) {
            changes.removed.push(service.name.clone());
        }
    }
    // `runtime.max_connections` applies live.
    if old.runtime.workers != new.runtime.workers {
        changes.needs_restart.push("runtime.workers");
    }
    if old.admin != new.admin {
        changes.needs_restart.push("admin");
    }
    if old.dns.as_ref().map(|d| d.listen) != new.dns.as_ref().map(|d| d.listen) {
        changes.needs_restart.push("dns.listen");
    }
    changes
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn config(text: &str) -> Config {
        super::super::from_str(text, Path::new("test.toml")).expect("valid test config")
    }

    const BASE: &str = r#"
[[service]]
name = "web"
vip = "127.0.0.1"
ports = [{ port = 8000, target_port = 9000 }]
endpoints = ["127.0.0.2", "127.0.0.3"]

[[service]]
name = "db"
vip = "127.0.0.1"
ports = [{ port = 5432 }]
endpoints = ["127.0.0.4"]
"#;

    /// `"IP:PORT"` is TCP; `"IP:PORT/udp"` UDP.
    fn addrs(list: &[&str]) -> Vec<Listen> {
        list.iter()
            .map(|a| match a.strip_suffix("/udp") {
                Some(addr) => Listen {
                    protocol: Protocol::Udp,
                    addr: addr.parse().unwrap(),
                },
                None => Listen {
                    protocol: Protocol::Tcp,
                    addr: a.parse().unwrap(),
                },
            })
            .collect()
    }

    #[test]
    fn table() {
        struct Case {
            what: &'static str,
            new: String,
            expect: Changes,
        }
        let web_changed = |added: &[&str], removed: &[&str]| ServiceChange {
            name: "web".to_owned(),
            listen_added: addrs(added),
            listen_removed: addrs(removed),
        };
        let cases = [
            Case {
                what: "identical",
                new: BASE.to_owned(),
                expect: Changes::default(),
            },
            Case {
                what: "endpoint added",
                new: BASE.replace(
                    r#"["127.0.0.2", "127.0.0.3"]"#,
                    r#"["127.0.0.2", "127.0.0.3", "127.0.0.5"]"#,
                ),
                expect: Changes {
                    changed: vec![web_changed(&[], &[])],
                    ..Changes::default()
                },
            },
            Case {
                what: "port changed",
                new: BASE.replace("port = 8000", "port = 8001"),
                expect: Changes {
                    changed: vec![web_changed(&["127.0.0.1:8001"], &["127.0.0.1:8000"])],
                    ..Changes::default()
                },
            },
            Case {
                what: "port added",
                new: BASE.replace(
                    "ports = [{ port = 8000, target_port = 9000 }]",
                    "ports = [{ port = 8000, target_port = 9000 }, { port = 8443 }]",
                ),
                expect: Changes {
                    changed: vec![web_changed(&["127.0.0.1:8443"], &[])],
                    ..Changes::default()
                },
            },
            Case {
                what: "udp port added on the number of a tcp one",
                new: BASE.replace(
                    "ports = [{ port = 8000, target_port = 9000 }]",
                    "ports = [{ port = 8000, target_port = 9000 }, { port = 8000, protocol = \"udp\" }]",
                ),
                expect: Changes {
                    changed: vec![web_changed(&["127.0.0.1:8000/udp"], &[])],
                    ..Changes::default()
                },
            },
            Case {
                what: "tcp port turned udp",
                new: BASE.replace(
                    "ports = [{ port = 8000, target_port = 9000 }]",
                    "ports = [{ port = 8000, target_port = 9000, protocol = \"udp\" }]",
                ),
                expect: Changes {
                    changed: vec![web_changed(&["127.0.0.1:8000/udp"], &["127.0.0.1:8000"])],
                    ..Changes::default()
                },
            },
            Case {
                what: "vip changed",
                new: BASE.replacen(r#"vip = "127.0.0.1""#, r#"vip = "127.0.0.9""#, 1),
                expect: Changes {
                    changed: vec![web_changed(&["127.0.0.9:8000"], &["127.0.0.1:8000"])],
                    ..Changes::default()
                },
            },
            Case {
                what: "health changed",
                new: format!("{BASE}\n[service.health]\ncheck = \"none\"\n"),
                expect: Changes {
                    changed: vec![ServiceChange {
                        name: "db".to_owned(),
                        listen_added: vec![],
                        listen_removed: vec![],
                    }],
                    ..Changes::default()
                },
            },
            Case {
                // New connections pick it up from the published settings: no listener changes.
                what: "keepalive set for every service",
                new: format!(
                    "[defaults]\ntcp_keepalive = {{ idle = \"60s\", interval = \"10s\", count = 6 }}\n{BASE}"
                ),
                expect: Changes {
                    changed: vec![
                        web_changed(&[], &[]),
                        ServiceChange {
                            name: "db".to_owned(),
                            listen_added: vec![],
                            listen_removed: vec![],
                        },
                    ],
                    ..Changes::default()
                },
            },
            Case {
                what: "service removed and another added",
                new: BASE.replace(r#"name = "db""#, r#"name = "cache""#),
                expect: Changes {
                    added: vec!["cache".to_owned()],
                    removed: vec!["db".to_owned()],
                    ..Changes::default()
                },
            },
            Case {
                what: "workers and admin need a restart",
                new: format!(
                    "[runtime]\nworkers = 3\n[admin]\nlisten = \"127.0.0.1:9901\"\n{BASE}"
                ),
                expect: Changes {
                    needs_restart: vec!["runtime.workers", "admin"],
                    ..Changes::default()
                },
            },
        ];
        let old = config(BASE);
        for case in cases {
            assert_eq!(diff(&old, &config(&case.new)), case.expect, "{}", case.what);
        }
    }

    #[test]
    fn summary_says_what_changed() {
        let old = config(BASE);
        let new = config(&BASE.replace("port = 8000", "port = 8001"));
        assert_eq!(
            diff(&old, &new).summary(),
            r#"added [], removed [], changed ["web (listeners)"], needing restart []"#
        );
        assert_eq!(diff(&old, &old).summary(), "no changes");
    }
}
