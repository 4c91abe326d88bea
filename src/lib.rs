//! vipd: a Layer-4 (TCP and UDP) service load balancer.
//!
//! Map of the crate:
//! - [`config`]: the TOML file → raw serde structs → validated, typed [`config::Config`].
//! - [`service`]: per-service state shared by control and data plane: endpoints with live
//!   counters, the immutable snapshot the data plane reads lock-free, and the owner task that
//!   rebuilds it when endpoints, health, drains, ejections or settings change.
//! - [`discovery`]: endpoints from DNS (A/AAAA or SRV), re-resolved as TTLs expire and sent
//!   as whole sets to the service's owner task.
//! - [`health`]: the health state machine (pure), the probes (tcp, http, exec) around it, and
//!   their schedule.
//! - [`balance`]: pickers that choose an endpoint for a new connection.
//! - [`proxy_protocol`]: HAProxy's PROXY protocol v1 and v2: a sans-IO parser and encoder of
//!   the header that carries the real client's address.
//! - [`proxy`]: the data plane: accept, pick, connect with failover, copy both ways (splice(2)
//!   for bulk flows on Linux); UDP flows pinned to endpoints, one serve loop per worker socket.
//! - [`admin`]: the admin HTTP server (`/metrics`, `/healthz`, `/readyz`, `/status`, and the
//!   `POST` endpoints `/reload`, `/endpoints/drain`, `/endpoints/undrain`).
//! - [`status`]: the `/status` document and the trait the admin server works through.
//! - [`metrics`]: every metric name with its help text, and the Prometheus recorder.
//! - [`shutdown`]: OS signals: SIGTERM/SIGINT to cancellation, SIGHUP to a reload.
//! - [`vip`]: VIP ownership: adds managed VIPs to interfaces over netlink and announces them.
//! - [`notify`]: systemd readiness, reload, stop and watchdog notifications.
//! - [`app`]: binds everything from a config, runs it until cancelled, applies reloads; used by
//!   `main` and tests.
//! - [`dns`]: the DNS server answering `<service>.<zone>` with VIPs and SRV ports.
//! - [`demo`]: the self-contained `vipd demo`.
// One module talks to the kernel's batch calls directly (`proxy::udp::batch`, with its own
// `allow` and a safety argument at every block); nothing else may use `unsafe`.
#![deny(unsafe_code)]
#![warn(missing_docs)]

pub mod admin;
pub mod app;
pub mod balance;
pub mod config;
pub mod demo;
pub mod discovery;
pub mod dns;
pub mod health;
pub mod metrics;
pub mod notify;
pub mod proxy;
pub mod proxy_protocol;
pub mod service;
pub mod shutdown;
pub mod status;
pub mod vip;
