//! One backend address of a service, with the live figures that change per connection
//! (atomics) and its metric handles (created once, here, never per connection).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use metrics::{Counter, Gauge};

use crate::metrics as names;

/// Metric handles of one endpoint.
#[derive(Debug)]
pub struct EndpointMetrics {
    /// `vipd_connections_total`.
    pub connections: Counter,
    /// `vipd_active_connections`.
    pub active: Gauge,
    /// `vipd_connect_failures_total`.
    pub connect_failures: Counter,
    /// `vipd_bytes_total{direction="in"}`: client → endpoint.
    pub bytes_in: Counter,
    /// `vipd_bytes_total{direction="out"}`: endpoint → client.
    pub bytes_out: Counter,
    /// `vipd_endpoint_healthy`.
    pub healthy: Gauge,
    /// `vipd_health_checks_total{result="success"}`.
    pub checks_succeeded: Counter,
    /// `vipd_health_checks_total{result="failure"}`.
    pub checks_failed: Counter,
}

impl EndpointMetrics {
    fn new(service: &str, addr: SocketAddr) -> Self {
        let service = service.to_owned();
        let endpoint = addr.to_string();
        let base = [("service", service.clone()), ("endpoint", endpoint.clone())];
        let with = |key: &'static str, value: &'static str| {
            [
                ("service", service.clone()),
                ("endpoint", endpoint.clone()),
                (key, value.to_owned()),
            ]
        };
        EndpointMetrics {
            connections: metrics::counter!(names::CONNECTIONS_TOTAL, &base),
            active: metrics::gauge!(names::ACTIVE_CONNECTIONS, &base),
            connect_failures: metrics::counter!(names::CONNECT_FAILURES_TOTAL, &base),
            bytes_in: metrics::counter!(names::BYTES_TOTAL, &with("direction", "in")),
            bytes_out: metrics::counter!(names::BYTES_TOTAL, &with("direction", "out")),
            healthy: metrics::gauge!(names::ENDPOINT_HEALTHY, &base),
            checks_succeeded: metrics::counter!(
                names::HEALTH_CHECKS_TOTAL,
                &with("result", "success")
            ),
            checks_failed: metrics::counter!(
                names::HEALTH_CHECKS_TOTAL,
                &with("result", "failure")
            ),
        }
    }
}

/// One endpoint address with its health flag and live counters.
#[derive(Debug)]
pub struct Endpoint {
    addr: SocketAddr,
    healthy: AtomicBool,
    draining: AtomicBool,
    active: AtomicU64,
    total: AtomicU64,
    /// Metric handles, labelled `{service, endpoint}`.
    pub metrics: EndpointMetrics,
}

impl Endpoint {
    /// A new endpoint of `service`; healthy until probed otherwise.
    pub fn new(service: &str, addr: SocketAddr) -> Self {
        let metrics = EndpointMetrics::new(service, addr);
        metrics.healthy.set(1.0);
        Endpoint {
            addr,
            healthy: AtomicBool::new(true),
            draining: AtomicBool::new(false),
            active: AtomicU64::new(0),
            total: AtomicU64::new(0),
            metrics,
        }
    }

    /// The address connections go to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Current verdict of active health checks.
    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    /// Sets the verdict of active health checks (owner task only).
    pub(crate) fn set_healthy(&self, healthy: bool) {
        self.healthy.store(healthy, Ordering::Relaxed);
        self.metrics.healthy.set(if healthy { 1.0 } else { 0.0 });
    }

    /// Draining endpoints get no new connections.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// Connections open to this endpoint now.
    pub fn active_connections(&self) -> u64 {
        self.active.load(Ordering::Relaxed)
    }

    /// Connections established to this endpoint since start.
    pub fn connections_total(&self) -> u64 {
        self.total.load(Ordering::Relaxed)
    }

    /// Counts a newly established connection; the guard counts it closed when dropped.
    pub fn connection_opened(&self) -> ActiveConnection<'_> {
        self.total.fetch_add(1, Ordering::Relaxed);
        self.active.fetch_add(1, Ordering::Relaxed);
        self.metrics.connections.increment(1);
        self.metrics.active.increment(1.0);
        ActiveConnection { endpoint: self }
    }
}

/// An established connection to an endpoint; dropping it updates the active counts.
#[derive(Debug)]
pub struct ActiveConnection<'a> {
    endpoint: &'a Endpoint,
}

impl Drop for ActiveConnection<'_> {
    fn drop(&mut self) {
        self.endpoint.active.fetch_sub(1, Ordering::Relaxed);
        self.endpoint.metrics.active.decrement(1.0);
    }
}
