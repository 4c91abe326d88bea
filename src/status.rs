//! The `/status` document and the [`AdminSource`] trait the admin server works through, so the
//! admin server does not depend on how services are run.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;

use serde::Serialize;

use crate::service::ControlError;

/// A boxed future, for the async methods of [`AdminSource`].
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// The whole `/status` document.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Status {
    /// Every service, in config order.
    pub services: Vec<ServiceStatus>,
}

/// One service in `/status`.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ServiceStatus {
    /// Service name.
    pub name: String,
    /// The VIP.
    pub vip: String,
    /// The balancing policy (`round_robin`, `least_connections`, `power_of_two`, `random`,
    /// `maglev`).
    pub balance: &'static str,
    /// `none` or `client_ip`.
    pub session_affinity: &'static str,
    /// The service ports.
    pub ports: Vec<PortStatus>,
    /// Every endpoint address behind every port.
    pub endpoints: Vec<EndpointStatus>,
    /// `max_connections`, or null for none.
    pub max_connections: Option<u32>,
    /// Client connections counted against `max_connections` now (0 without a limit).
    pub limited_connections: u32,
    /// Client connections waiting for an endpoint below its `max_connections`.
    pub queued_connections: usize,
}

/// One service port in `/status`.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct PortStatus {
    /// The port bound at the VIP (the real one, also when configured as 0 in code).
    pub port: u16,
    /// The port forwarded to on each endpoint.
    pub target_port: u16,
    /// `"tcp"` or `"udp"`.
    pub protocol: &'static str,
}

/// One endpoint in `/status`.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct EndpointStatus {
    /// `IP:port` (IPv6 in brackets).
    pub address: String,
    /// The replica's stable name (`<name>.<service>.<zone>` in vipd's DNS), or null.
    pub name: Option<String>,
    /// Current health as seen by active checks.
    pub healthy: bool,
    /// Draining: gets no new connections, established ones run on.
    pub draining: bool,
    /// Ejected by outlier detection for a while.
    pub ejected: bool,
    /// Configured weight.
    pub weight: u32,
    /// The weight it gets now: below `weight` while slow start ramps it up.
    pub effective_weight: f64,
    /// In the backup tier.
    pub backup: bool,
    /// Connections currently open to it.
    pub active_connections: u64,
    /// Connections established to it since start.
    pub connections_total: u64,
    /// UDP flows pinned to it now.
    pub active_flows: u64,
    /// Its `max_connections`, or null for none.
    pub max_connections: Option<u64>,
}

/// What the admin server needs from the running proxy.
pub trait AdminSource: Send + Sync + 'static {
    /// True once every listener is bound and every service finished its first health round.
    fn ready(&self) -> bool;
    /// A consistent-enough view of every service right now.
    fn status(&self) -> Status;
    /// Drains (`true`) or undrains an endpoint of a service.
    fn set_draining(
        &self,
        service: &str,
        endpoint: SocketAddr,
        draining: bool,
    ) -> BoxFuture<Result<(), ControlError>>;
    /// Reloads the config file; a summary of the changes, or why nothing changed.
    fn reload(&self) -> BoxFuture<Result<String, String>>;
}
