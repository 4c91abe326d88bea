//! Per-service state shared by the control plane and the data plane.
//!
//! - [`endpoint`]: one backend address with live counters and its metric handles; it survives
//!   snapshot rebuilds so counters never reset.
//! - [`snapshot`]: the immutable view the data plane reads lock-free (endpoints, health, picker).
//! - [`owner`]: the one task per service that runs health probes and publishes new snapshots.

pub mod endpoint;
pub mod owner;
pub mod snapshot;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use arc_swap::ArcSwap;
use metrics::{Counter, Histogram};
use tokio::sync::{broadcast, watch};

pub use endpoint::Endpoint;
pub use snapshot::{PortPool, Snapshot};

use crate::balance::Picker;
use crate::config;
use crate::metrics as names;
use crate::status::{EndpointStatus, PortStatus, ServiceStatus};

/// A change of an endpoint's health, as announced to subscribers (logs, demo, tests).
#[derive(Debug, Clone)]
pub struct HealthEvent {
    /// The endpoint whose verdict flipped.
    pub endpoint: SocketAddr,
    /// The new verdict.
    pub healthy: bool,
    /// Healthy endpoints of the service after the flip, in config order.
    pub healthy_endpoints: Vec<SocketAddr>,
}

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
}

impl ServiceMetrics {
    fn new(service: &str) -> Self {
        let labels = [("service", service.to_owned())];
        ServiceMetrics {
            connections_failed: metrics::counter!(names::CONNECTIONS_FAILED_TOTAL, &labels),
            connect_duration: metrics::histogram!(names::CONNECT_DURATION_SECONDS, &labels),
            no_healthy_endpoints: metrics::counter!(names::NO_HEALTHY_ENDPOINTS_TOTAL, &labels),
            accept_errors: metrics::counter!(names::ACCEPT_ERRORS_TOTAL, &labels),
        }
    }
}

/// One running service: its config, its endpoints, and the current snapshot.
#[derive(Debug)]
pub struct ServiceState {
    /// The service's validated config.
    pub config: config::Service,
    /// Every distinct endpoint address behind any of the service's ports, in config order.
    endpoints: Vec<Arc<Endpoint>>,
    /// What the data plane reads; replaced whole by the owner task.
    snapshot: ArcSwap<Snapshot>,
    /// Round-robin (and later other) picker state per port; outlives snapshots.
    pickers: Vec<Arc<Picker>>,
    /// Bound listen address per port (filled in once bound).
    bound: std::sync::OnceLock<Vec<SocketAddr>>,
    /// True once every endpoint has been probed at least once.
    first_round_done: watch::Sender<bool>,
    /// Health flips.
    events: broadcast::Sender<HealthEvent>,
    /// Metric handles of the service itself.
    pub metrics: ServiceMetrics,
}

impl ServiceState {
    /// Builds the state of `config`: endpoints (healthy until probed) and a first snapshot.
    pub fn new(config: config::Service) -> Arc<Self> {
        let mut by_addr: HashMap<SocketAddr, Arc<Endpoint>> = HashMap::new();
        let mut endpoints = Vec::new();
        for port in &config.ports {
            for addr in config.endpoint_addrs(port) {
                by_addr.entry(addr).or_insert_with(|| {
                    let ep = Arc::new(Endpoint::new(&config.name, addr));
                    endpoints.push(Arc::clone(&ep));
                    ep
                });
            }
        }
        let pickers = config
            .ports
            .iter()
            .map(|_| Arc::new(Picker::new(config.balance)))
            .collect();
        let no_checks = config.health.check == config::HealthCheck::None;
        let (events, _) = broadcast::channel(64);
        let state = ServiceState {
            metrics: ServiceMetrics::new(&config.name),
            snapshot: ArcSwap::from_pointee(Snapshot::default()),
            first_round_done: watch::Sender::new(no_checks || endpoints.is_empty()),
            config,
            endpoints,
            pickers,
            bound: std::sync::OnceLock::new(),
            events,
        };
        state.publish();
        Arc::new(state)
    }

    /// The service name.
    pub fn name(&self) -> &str {
        &self.config.name
    }

    /// Every distinct endpoint of the service.
    pub fn endpoints(&self) -> &[Arc<Endpoint>] {
        &self.endpoints
    }

    /// The current snapshot (lock-free).
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.load_full()
    }

    /// Rebuilds the snapshot from the endpoints' current health and publishes it.
    pub(crate) fn publish(&self) {
        let by_addr: HashMap<SocketAddr, &Arc<Endpoint>> =
            self.endpoints.iter().map(|e| (e.addr(), e)).collect();
        let ports = self
            .config
            .ports
            .iter()
            .zip(&self.pickers)
            .map(|(port, picker)| {
                let endpoints: Vec<Arc<Endpoint>> = self
                    .config
                    .endpoint_addrs(port)
                    .iter()
                    .filter_map(|a| by_addr.get(a).map(|e| Arc::clone(e)))
                    .collect();
                PortPool::new(endpoints, Arc::clone(picker))
            })
            .collect();
        self.snapshot.store(Arc::new(Snapshot { ports }));
    }

    /// Records the bound listen addresses, one per port in config order.
    pub fn set_bound(&self, addrs: Vec<SocketAddr>) {
        let _ = self.bound.set(addrs);
    }

    /// The bound listen addresses (empty before binding).
    pub fn bound(&self) -> &[SocketAddr] {
        self.bound.get().map(Vec::as_slice).unwrap_or(&[])
    }

    /// True once every endpoint has a first probe result.
    pub fn first_round_done(&self) -> bool {
        *self.first_round_done.borrow()
    }

    /// Waits until the first health round is done.
    pub async fn wait_first_round(&self) {
        let mut rx = self.first_round_done.subscribe();
        let _ = rx.wait_for(|done| *done).await;
    }

    pub(crate) fn mark_first_round_done(&self) {
        self.first_round_done.send_replace(true);
    }

    /// Subscribes to health flips.
    pub fn subscribe(&self) -> broadcast::Receiver<HealthEvent> {
        self.events.subscribe()
    }

    pub(crate) fn announce(&self, event: HealthEvent) {
        // Nobody listening is normal.
        let _ = self.events.send(event);
    }

    /// The `/status` view of this service.
    pub fn status(&self) -> ServiceStatus {
        let bound = self.bound();
        ServiceStatus {
            name: self.config.name.clone(),
            vip: self.config.vip.to_string(),
            ports: self
                .config
                .ports
                .iter()
                .enumerate()
                .map(|(i, p)| PortStatus {
                    port: bound.get(i).map_or(p.port, SocketAddr::port),
                    target_port: p.target_port,
                    protocol: p.protocol.as_str(),
                })
                .collect(),
            endpoints: self
                .endpoints
                .iter()
                .map(|e| EndpointStatus {
                    address: e.addr().to_string(),
                    healthy: e.is_healthy(),
                    draining: e.is_draining(),
                    active_connections: e.active_connections(),
                    connections_total: e.connections_total(),
                })
                .collect(),
        }
    }
}
