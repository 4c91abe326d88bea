//! Per-service state shared by the control plane and the data plane.
//!
//! - [`endpoint`]: one backend address with live counters (connections, UDP flows) and its
//!   metric handles; it survives snapshot rebuilds, reloads and discovery updates, so counters
//!   never reset.
//! - [`snapshot`]: the immutable view the data plane reads lock-free (settings, endpoints,
//!   health, picker).
//! - [`owner`]: the one task per service that follows the endpoint set, runs health probes,
//!   applies drains, ejections and reconfigurations, and publishes new snapshots.
//! - [`outlier`]: the passive ejection policy.
//! - [`drain`]: the signal that ends an endpoint's established connections.
//! - [`slow_start`]: the weight ramp of an endpoint entering rotation.

pub mod drain;
pub mod endpoint;
pub mod outlier;
pub mod owner;
#[cfg(test)]
mod placement_tests;
pub mod slow_start;
pub mod snapshot;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use arc_swap::ArcSwap;
use metrics::{Counter, Gauge, Histogram};
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

pub use endpoint::Endpoint;
pub use snapshot::{Placement, PortPool, Rotation, Snapshot};

use crate::config;
use crate::metrics as names;
use crate::proxy::admission::{ConnectionLimit, EndpointQueue};
use crate::status::{EndpointStatus, PortStatus, ServiceStatus};

/// What happened to an endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// Active checks found it healthy again.
    Up,
    /// Active checks found it unhealthy.
    Down,
    /// Ejected by outlier detection.
    Ejected,
    /// Back from an ejection.
    Restored,
    /// Joined the service (discovery or reload).
    Added,
    /// Left the service; its connections are draining.
    Removed,
    /// A removed endpoint's last connection closed; it is forgotten.
    Gone,
    /// Drained by an operator.
    Drained,
    /// Undrained by an operator.
    Undrained,
}

/// A change of one endpoint, as announced to subscribers (logs, demo, tests).
#[derive(Debug, Clone)]
pub struct ServiceEvent {
    /// The endpoint.
    pub endpoint: SocketAddr,
    /// What happened.
    pub change: Change,
    /// Endpoints in rotation after the change, in order.
    pub in_rotation: Vec<SocketAddr>,
}

/// Why an operator request about an endpoint was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ControlError {
    /// No service of that name.
    #[error("no service named {0:?}")]
    UnknownService(String),
    /// The service has no such endpoint.
    #[error("service {service:?} has no endpoint {endpoint}")]
    UnknownEndpoint {
        /// The service.
        service: String,
        /// The address asked for.
        endpoint: SocketAddr,
    },
    /// The service is stopping.
    #[error("service {0:?} is stopping")]
    Stopping(String),
}

/// Requests to a service's owner task.
#[derive(Debug)]
pub(crate) enum Command {
    /// Apply new settings (reload); answered once the new snapshot is published.
    Reconfigure(Arc<config::Service>, oneshot::Sender<()>),
    /// Operator drain (`true`) or undrain (`false`); answers whether the endpoint exists.
    SetDraining {
        endpoint: SocketAddr,
        draining: bool,
        done: oneshot::Sender<bool>,
    },
    /// The data plane saw enough connect failures in a row to consider an ejection.
    ConnectFailures(SocketAddr),
}

/// The `reason`s of `vipd_proxy_protocol_errors_total`: a peer outside
/// `proxy_protocol_trusted`, no whole header within `proxy_protocol_timeout`, the peer closed
/// before it was whole, and the parse's own (`crate::proxy_protocol::ParseError::reason`).
pub const PROXY_PROTOCOL_ERRORS: [&str; 8] = [
    "untrusted",
    "timeout",
    "incomplete",
    "not_proxy_protocol",
    "malformed",
    "unsupported",
    "checksum",
    "too_long",
];

/// Per-service metric handles, created once.
#[derive(Debug)]
pub struct ServiceMetrics {
    /// `vipd_connections_failed_total{service}`.
    pub connections_failed: Counter,
    /// `vipd_connect_duration_seconds{service}`.
    pub connect_duration: Histogram,
    /// `vipd_no_healthy_endpoints_total{service}`.
    pub no_healthy_endpoints: Counter,
    /// `vipd_accept_errors_total{service}`.
    pub accept_errors: Counter,
    /// `vipd_endpoints{service,state}` for healthy, unhealthy, draining, ejected.
    pub endpoints: [Gauge; 4],
    /// The UDP series, registered when a UDP port of the service starts serving.
    udp: OnceLock<UdpServiceMetrics>,
    /// `vipd_proxy_protocol_errors_total{service,reason}` by [`PROXY_PROTOCOL_ERRORS`],
    /// registered at the first refused header.
    proxy_protocol_errors: OnceLock<[Counter; PROXY_PROTOCOL_ERRORS.len()]>,
    /// The `service` label, kept for the UDP series.
    service: String,
}

/// Why a UDP datagram was dropped instead of forwarded: the `reason` of
/// `vipd_udp_flows_dropped_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UdpDrop {
    /// A new flow beyond `max_udp_flows`.
    Limit,
    /// No endpoint to route to: none in the port's pool, or none in rotation with
    /// `fail_closed`.
    NoEndpoint,
    /// No upstream socket could be made (e.g. out of descriptors).
    Socket,
    /// The send failed (too large, no buffer space, the socket buffer full), either way.
    SendFailed,
}

impl UdpDrop {
    /// Every reason, in the order of [`UdpServiceMetrics::dropped`].
    pub const ALL: [UdpDrop; 4] = [
        UdpDrop::Limit,
        UdpDrop::NoEndpoint,
        UdpDrop::Socket,
        UdpDrop::SendFailed,
    ];

    /// The `reason` label.
    pub fn as_str(self) -> &'static str {
        match self {
            UdpDrop::Limit => "limit",
            UdpDrop::NoEndpoint => "no_endpoint",
            UdpDrop::Socket => "socket",
            UdpDrop::SendFailed => "send_failed",
        }
    }
}

/// Per-service UDP metric handles.
#[derive(Debug)]
pub struct UdpServiceMetrics {
    /// `vipd_udp_flows_dropped_total{service,reason}`, indexed like [`UdpDrop::ALL`].
    dropped: [Counter; 4],
}

impl UdpServiceMetrics {
    /// Counts `count` datagrams dropped for `reason`.
    pub fn dropped(&self, reason: UdpDrop, count: usize) {
        self.dropped[reason as usize].increment(count as u64);
    }
}

impl ServiceMetrics {
    fn new(service: &str) -> Self {
        let labels = [("service", service.to_owned())];
        let by_state = |state: &'static str| {
            metrics::gauge!(
                names::ENDPOINTS,
                &[("service", service.to_owned()), ("state", state.to_owned())]
            )
        };
        ServiceMetrics {
            connections_failed: metrics::counter!(names::CONNECTIONS_FAILED_TOTAL, &labels),
            connect_duration: metrics::histogram!(names::CONNECT_DURATION_SECONDS, &labels),
            no_healthy_endpoints: metrics::counter!(names::NO_HEALTHY_ENDPOINTS_TOTAL, &labels),
            accept_errors: metrics::counter!(names::ACCEPT_ERRORS_TOTAL, &labels),
            endpoints: [
                by_state("healthy"),
                by_state("unhealthy"),
                by_state("draining"),
                by_state("ejected"),
            ],
            udp: OnceLock::new(),
            proxy_protocol_errors: OnceLock::new(),
            service: service.to_owned(),
        }
    }

    /// Counts a connection (or datagram) refused for its PROXY header, by `reason` (one of
    /// [`PROXY_PROTOCOL_ERRORS`]).
    pub fn proxy_protocol_error(&self, reason: &str) {
        let counters = self.proxy_protocol_errors.get_or_init(|| {
            PROXY_PROTOCOL_ERRORS.map(|reason| {
                metrics::counter!(
                    names::PROXY_PROTOCOL_ERRORS_TOTAL,
                    &[
                        ("service", self.service.clone()),
                        ("reason", reason.to_owned())
                    ]
                )
            })
        });
        let index = PROXY_PROTOCOL_ERRORS
            .iter()
            .position(|r| *r == reason)
            .unwrap_or_else(|| unreachable!("unknown PROXY protocol error reason {reason}"));
        counters[index].increment(1);
    }

    /// The UDP handles, registered on first use.
    pub fn udp(&self) -> &UdpServiceMetrics {
        self.udp.get_or_init(|| UdpServiceMetrics {
            dropped: UdpDrop::ALL.map(|reason| {
                metrics::counter!(
                    names::UDP_FLOWS_DROPPED_TOTAL,
                    &[
                        ("service", self.service.clone()),
                        ("reason", reason.as_str().to_owned())
                    ]
                )
            }),
        })
    }
}

/// One running service: the current snapshot, and the way to its owner task.
#[derive(Debug)]
pub struct ServiceState {
    name: String,
    /// What the data plane reads; replaced whole by the owner task.
    snapshot: ArcSwap<Snapshot>,
    /// Bound listen address per port, in config order.
    bound: ArcSwap<Vec<SocketAddr>>,
    /// Requests to the owner task.
    commands: mpsc::Sender<Command>,
    /// Cancelled when the service stops (removed by reload, or shutdown): listeners close and
    /// established connections get their drain timeout.
    retired: CancellationToken,
    /// True once the endpoint set is known and every endpoint has been probed once.
    first_round_done: watch::Sender<bool>,
    /// Endpoint changes.
    events: broadcast::Sender<ServiceEvent>,
    /// UDP flows of the service now, over all its UDP ports and workers (against
    /// `max_udp_flows`).
    udp_flows: Arc<AtomicUsize>,
    /// `max_connections`, over all its TCP ports and workers.
    pub limit: ConnectionLimit,
    /// Connections waiting for an endpoint below its `max_connections`.
    pub queue: Arc<EndpointQueue>,
    /// Metric handles of the service itself.
    pub metrics: ServiceMetrics,
}

impl crate::dns::Replicas for ServiceState {
    fn replica_addresses(&self, name: &str) -> Vec<std::net::IpAddr> {
        self.snapshot
            .load()
            .endpoints
            .iter()
            .filter(|e| e.in_rotation() && e.name().is_some_and(|n| n.as_str() == name))
            .map(|e| e.addr().ip())
            .collect()
    }
}

/// The receiving end of a service's commands, handed to [`owner::start`].
#[derive(Debug)]
pub struct Inbox(mpsc::Receiver<Command>);

impl ServiceState {
    /// Builds the state of `config` (no endpoints until its owner task runs). The service
    /// retires when `parent` is cancelled or [`ServiceState::retire`] is called.
    pub fn new(config: config::Service, parent: &CancellationToken) -> (Arc<Self>, Inbox) {
        let (commands, inbox) = mpsc::channel(64);
        let (events, _) = broadcast::channel(256);
        let config = Arc::new(config);
        let (name, config_limit) = (config.name.clone(), config.max_connections);
        let state = ServiceState {
            name: config.name.clone(),
            metrics: ServiceMetrics::new(&config.name),
            snapshot: ArcSwap::from_pointee(Snapshot {
                ports: config
                    .ports
                    .iter()
                    .map(|p| {
                        PortPool::new(
                            (p.protocol, p.port),
                            &[],
                            Placement::of(&config),
                            Arc::new(crate::balance::PickerState::new(
                                config.session_affinity,
                                tokio::time::Instant::now(),
                            )),
                            &mut crate::balance::MaglevTables::default(),
                        )
                    })
                    .collect(),
                config,
                endpoints: Vec::new(),
            }),
            bound: ArcSwap::from_pointee(Vec::new()),
            commands,
            retired: parent.child_token(),
            first_round_done: watch::Sender::new(false),
            events,
            udp_flows: Arc::new(AtomicUsize::new(0)),
            limit: ConnectionLimit::new(
                config_limit,
                metrics::counter!(names::CONNECTION_LIMIT_REACHED_TOTAL, "service" => name.clone()),
            ),
            queue: Arc::new(EndpointQueue::new(
                metrics::gauge!(names::QUEUED_CONNECTIONS, "service" => name.clone()),
                metrics::counter!(names::QUEUE_TIMEOUTS_TOTAL, "service" => name),
            )),
        };
        (Arc::new(state), Inbox(inbox))
    }

    /// The service name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The current snapshot (lock-free).
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.load_full()
    }

    /// The current snapshot for a short look, without taking a reference count (cheaper than
    /// [`ServiceState::snapshot`] where many threads look at once); do not hold it across an
    /// `await`.
    pub fn load_snapshot(&self) -> arc_swap::Guard<Arc<Snapshot>> {
        self.snapshot.load()
    }

    /// The pool of service port `port` (`protocol`) when a new connection or UDP flow may be
    /// placed on it: `None` when the port is gone (a reload removed it since) or the service
    /// fails closed with no endpoint in rotation. Counts `vipd_no_healthy_endpoints_total` for
    /// a placement that finds none in rotation (routed fail-open, or refused while endpoints
    /// exist).
    pub fn placement_pool<'s>(
        &self,
        snapshot: &'s Snapshot,
        protocol: config::Protocol,
        port: u16,
    ) -> Option<&'s PortPool> {
        let pool = snapshot.pool(protocol, port)?;
        match pool.rotation {
            Rotation::Primary | Rotation::Backup => {}
            Rotation::FailedOpen => self.metrics.no_healthy_endpoints.increment(1),
            Rotation::Closed => {
                if !snapshot.endpoints.is_empty() {
                    // Endpoints exist but none is in rotation, and the service fails closed.
                    self.metrics.no_healthy_endpoints.increment(1);
                }
                return None;
            }
        }
        Some(pool)
    }

    /// Counts a failed connect to `endpoint` (a refused or unreachable UDP send counts too) and
    /// tells the owner task when outlier detection may want to eject it.
    pub fn connect_failed(&self, snapshot: &Snapshot, endpoint: &Endpoint) {
        let failures = endpoint.record_connect_failure();
        if let Some(outlier) = &snapshot.config.outlier
            && failures >= outlier.consecutive_failures.get()
            && !endpoint.is_ejected()
        {
            self.report_connect_failures(endpoint.addr());
        }
    }

    /// The service's current settings.
    pub fn config(&self) -> Arc<config::Service> {
        Arc::clone(&self.snapshot.load().config)
    }

    /// Every endpoint the service knows now, including removed ones still draining.
    pub fn endpoints(&self) -> Vec<Arc<Endpoint>> {
        self.snapshot.load().endpoints.clone()
    }

    /// The endpoint at `addr`, if the service knows it.
    pub fn endpoint(&self, addr: SocketAddr) -> Option<Arc<Endpoint>> {
        self.snapshot
            .load()
            .endpoints
            .iter()
            .find(|e| e.addr() == addr)
            .cloned()
    }

    pub(crate) fn publish(&self, snapshot: Snapshot) {
        let max_connections = snapshot.config.max_connections;
        self.snapshot.store(Arc::new(snapshot));
        if self.limit.max() != max_connections {
            self.limit.set_max(max_connections);
        }
        // Endpoints came, or their limits changed: a queued connection may fit now (if not,
        // it goes back to the head).
        self.queue.slot_freed();
    }

    /// Records the bound listen addresses, one per port in config order.
    pub fn set_bound(&self, addrs: Vec<SocketAddr>) {
        self.bound.store(Arc::new(addrs));
    }

    /// The bound listen addresses.
    pub fn bound(&self) -> Vec<SocketAddr> {
        self.bound.load().as_ref().clone()
    }

    /// The count of the service's UDP flows, shared by the flow tables of its workers.
    pub fn udp_flow_count(&self) -> &Arc<AtomicUsize> {
        &self.udp_flows
    }

    /// UDP flows of the service now (all ports and workers).
    pub fn udp_flows(&self) -> usize {
        self.udp_flows.load(Ordering::Relaxed)
    }

    /// Cancelled when the service stops.
    pub fn retired(&self) -> &CancellationToken {
        &self.retired
    }

    /// Stops the service: listeners close, the owner task ends, connections drain.
    pub fn retire(&self) {
        self.retired.cancel();
    }

    /// True once the endpoint set is known and every endpoint has a first probe result.
    pub fn first_round_done(&self) -> bool {
        *self.first_round_done.borrow()
    }

    /// Waits until the first health round is done.
    pub async fn wait_first_round(&self) {
        let mut rx = self.first_round_done.subscribe();
        let _ = rx.wait_for(|done| *done).await;
    }

    pub(crate) fn mark_first_round_done(&self) {
        self.first_round_done
            .send_if_modified(|done| !std::mem::replace(done, true));
    }

    /// Subscribes to endpoint changes.
    pub fn subscribe(&self) -> broadcast::Receiver<ServiceEvent> {
        self.events.subscribe()
    }

    pub(crate) fn announce(&self, event: ServiceEvent) {
        // Nobody listening is normal.
        let _ = self.events.send(event);
    }

    /// Applies new settings of this service (reload) and returns once they are published.
    /// Listeners are the caller's business.
    pub async fn reconfigure(&self, config: config::Service) -> Result<(), ControlError> {
        let (done, applied) = oneshot::channel();
        let stopping = || ControlError::Stopping(self.name.clone());
        self.commands
            .send(Command::Reconfigure(Arc::new(config), done))
            .await
            .map_err(|_| stopping())?;
        applied.await.map_err(|_| stopping())
    }

    /// Drains (`true`: no new connections, established ones stay) or undrains an endpoint.
    pub async fn set_draining(
        &self,
        endpoint: SocketAddr,
        draining: bool,
    ) -> Result<(), ControlError> {
        let (done, answer) = oneshot::channel();
        let stopping = || ControlError::Stopping(self.name.clone());
        self.commands
            .send(Command::SetDraining {
                endpoint,
                draining,
                done,
            })
            .await
            .map_err(|_| stopping())?;
        match answer.await {
            Ok(true) => Ok(()),
            Ok(false) => Err(ControlError::UnknownEndpoint {
                service: self.name.clone(),
                endpoint,
            }),
            Err(_) => Err(stopping()),
        }
    }

    /// Tells the owner task that `endpoint` keeps failing connects (data plane; never blocks:
    /// when the owner is busy the next failure reports again).
    pub fn report_connect_failures(&self, endpoint: SocketAddr) {
        let _ = self.commands.try_send(Command::ConnectFailures(endpoint));
    }

    /// The `/status` view of this service.
    pub fn status(&self) -> ServiceStatus {
        let snapshot = self.snapshot.load();
        let config = &snapshot.config;
        let bound = self.bound.load();
        ServiceStatus {
            name: config.name.clone(),
            vip: config.vip.to_string(),
            balance: config.balance.as_str(),
            session_affinity: config.session_affinity.as_str(),
            ports: config
                .ports
                .iter()
                .enumerate()
                .map(|(i, p)| PortStatus {
                    port: bound.get(i).map_or(p.port, SocketAddr::port),
                    target_port: p.target_port,
                    protocol: p.protocol.as_str(),
                })
                .collect(),
            endpoints: snapshot
                .endpoints
                .iter()
                .map(|e| EndpointStatus {
                    address: e.addr().to_string(),
                    name: e.name().map(|n| n.as_str().to_owned()),
                    healthy: e.is_healthy(),
                    draining: e.is_draining(),
                    ejected: e.is_ejected(),
                    weight: e.weight(),
                    effective_weight: f64::from(e.effective_weight())
                        / f64::from(crate::balance::FULL_WEIGHT_PERCENT),
                    backup: e.is_backup(),
                    active_connections: e.active_connections(),
                    connections_total: e.connections_total(),
                    active_flows: e.active_flows(),
                    max_connections: e.limit(),
                })
                .collect(),
            max_connections: self.limit.max().map(std::num::NonZeroU32::get),
            limited_connections: self.limit.open(),
            queued_connections: self.queue.len(),
        }
    }
}
