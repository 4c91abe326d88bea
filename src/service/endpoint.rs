//! One backend address of a service, with the live figures that change per connection or UDP
//! flow (atomics) and its metric handles (created once, here, never per connection or
//! datagram).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use arc_swap::{ArcSwap, ArcSwapOption};
use metrics::{Counter, Gauge};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::drain::Drain;
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
    /// `vipd_outlier_ejections_total`.
    pub ejections: Counter,
    /// The UDP series, registered when the endpoint gets its first flow (so endpoints of TCP
    /// services do not export them).
    udp: OnceLock<UdpMetrics>,
    /// The `service` label, for the UDP series registered later.
    service: String,
}

/// Metric handles of one endpoint's UDP flows.
#[derive(Debug)]
pub struct UdpMetrics {
    /// `vipd_udp_flows`.
    pub flows: Gauge,
    /// `vipd_udp_flows_total`.
    pub flows_total: Counter,
    /// `vipd_datagrams_total{direction="in"}`: client → endpoint.
    pub datagrams_in: Counter,
    /// `vipd_datagrams_total{direction="out"}`: endpoint → client.
    pub datagrams_out: Counter,
}

impl EndpointMetrics {
    /// The UDP handles of the endpoint at `addr`, registered on first use.
    fn udp(&self, addr: SocketAddr) -> &UdpMetrics {
        self.udp.get_or_init(|| {
            let base = [
                ("service", self.service.clone()),
                ("endpoint", addr.to_string()),
            ];
            let direction = |value: &'static str| {
                [
                    base[0].clone(),
                    base[1].clone(),
                    ("direction", value.to_owned()),
                ]
            };
            UdpMetrics {
                flows: metrics::gauge!(names::UDP_FLOWS, &base),
                flows_total: metrics::counter!(names::UDP_FLOWS_TOTAL, &base),
                datagrams_in: metrics::counter!(names::DATAGRAMS_TOTAL, &direction("in")),
                datagrams_out: metrics::counter!(names::DATAGRAMS_TOTAL, &direction("out")),
            }
        })
    }

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
            ejections: metrics::counter!(names::OUTLIER_EJECTIONS_TOTAL, &base),
            udp: OnceLock::new(),
            service,
        }
    }
}

/// One endpoint address with its health flag and live counters.
///
/// Flags are written only by the service's owner task (which then publishes a new snapshot);
/// counters are written by the data plane.
#[derive(Debug)]
pub struct Endpoint {
    addr: SocketAddr,
    /// Unique in the process for the endpoint's life: what affinity entries point at, so they
    /// survive rebuilds that keep the endpoint and die with it.
    id: u32,
    /// Configured weight, 1-1000.
    weight: AtomicU32,
    /// Effective weight in percent of `weight` (below 100 during slow start).
    weight_percent: AtomicU32,
    /// In the backup tier.
    backup: AtomicBool,
    /// Whether active health checks probe it.
    checked: AtomicBool,
    /// The replica's stable name, if it has one.
    name: ArcSwapOption<String>,
    healthy: AtomicBool,
    /// Drained by an operator, or removed from the service and waiting for its connections.
    draining: AtomicBool,
    /// Ejected by outlier detection.
    ejected: AtomicBool,
    /// Fires when the endpoint leaves the service, or the service stops (established
    /// connections then get `drain_timeout`), or when they are closed at once. Replaced when a
    /// removed endpoint comes back and after closing connections.
    drain: ArcSwap<Drain>,
    /// The service's token, parent of `drain`.
    service_retired: CancellationToken,
    active: AtomicU64,
    /// Most active connections (`max_connections`); 0 = no limit.
    limit: AtomicU64,
    /// UDP flows pinned here now.
    flows: AtomicU64,
    total: AtomicU64,
    /// Connect failures in a row, reset by a successful connect.
    consecutive_failures: AtomicU32,
    /// Woken when the last active connection closes.
    idle: Notify,
    /// Metric handles, labelled `{service, endpoint}`.
    pub metrics: EndpointMetrics,
}

impl Endpoint {
    /// A new endpoint of `service`, healthy until probed otherwise; its connections drain when
    /// `service_retired` is cancelled or the endpoint is removed.
    pub fn new(service: &str, addr: SocketAddr, service_retired: &CancellationToken) -> Self {
        let metrics = EndpointMetrics::new(service, addr);
        metrics.healthy.set(1.0);
        // Relaxed: only uniqueness matters. Wrapping after 2^32 endpoints in one process would
        // at worst let a stale affinity entry name a new endpoint, which is valid anyway.
        static NEXT_ID: AtomicU32 = AtomicU32::new(0);
        Endpoint {
            addr,
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            weight: AtomicU32::new(crate::config::EndpointSpec::DEFAULT_WEIGHT),
            weight_percent: AtomicU32::new(crate::balance::FULL_WEIGHT_PERCENT),
            backup: AtomicBool::new(false),
            checked: AtomicBool::new(true),
            name: ArcSwapOption::empty(),
            healthy: AtomicBool::new(true),
            draining: AtomicBool::new(false),
            ejected: AtomicBool::new(false),
            drain: ArcSwap::from_pointee(Drain::child_of(service_retired)),
            service_retired: service_retired.clone(),
            active: AtomicU64::new(0),
            limit: AtomicU64::new(0),
            flows: AtomicU64::new(0),
            total: AtomicU64::new(0),
            consecutive_failures: AtomicU32::new(0),
            idle: Notify::new(),
            metrics,
        }
    }

    /// The address connections go to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The endpoint's process-unique id.
    pub fn id(&self) -> u32 {
        self.id
    }

    /// Configured weight.
    pub fn weight(&self) -> u32 {
        self.weight.load(Ordering::Relaxed)
    }

    /// Whether the endpoint is in the backup tier.
    pub fn is_backup(&self) -> bool {
        self.backup.load(Ordering::Relaxed)
    }

    /// Sets weight and tier from the endpoint's spec (owner task only).
    pub fn set_placement(&self, weight: u32, backup: bool) {
        self.weight.store(weight, Ordering::Relaxed);
        self.backup.store(backup, Ordering::Relaxed);
    }

    /// Sets the replica name and whether probes check it, from the endpoint's spec (owner task
    /// only).
    pub fn set_identity(&self, name: Option<&str>, checked: bool) {
        if self.name.load().as_deref().map(String::as_str) != name {
            self.name.store(name.map(|n| Arc::new(n.to_owned())));
        }
        self.checked.store(checked, Ordering::Relaxed);
    }

    /// The replica's stable name, if it has one.
    pub fn name(&self) -> Option<Arc<String>> {
        self.name.load_full()
    }

    /// Whether active health checks probe this endpoint.
    pub fn is_checked(&self) -> bool {
        self.checked.load(Ordering::Relaxed)
    }

    /// Percent of its weight the endpoint gets now: below 100 while slow start ramps it up.
    pub fn weight_percent(&self) -> u32 {
        self.weight_percent.load(Ordering::Relaxed)
    }

    /// Sets the slow-start percent (owner task only).
    pub fn set_weight_percent(&self, percent: u32) {
        self.weight_percent.store(percent, Ordering::Relaxed);
    }

    /// Effective weight in the units pickers use: weight × percent.
    pub fn effective_weight(&self) -> u32 {
        self.weight() * self.weight_percent()
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

    /// Sets the draining flag (owner task only).
    pub(crate) fn set_draining(&self, draining: bool) {
        self.draining.store(draining, Ordering::Relaxed);
    }

    /// Ejected endpoints get no new connections until their ejection ends.
    pub fn is_ejected(&self) -> bool {
        self.ejected.load(Ordering::Relaxed)
    }

    /// Sets the ejected flag (owner task only).
    pub(crate) fn set_ejected(&self, ejected: bool) {
        self.ejected.store(ejected, Ordering::Relaxed);
    }

    /// Whether new connections may go here when the service has healthy endpoints.
    pub fn in_rotation(&self) -> bool {
        self.is_healthy() && !self.is_draining() && !self.is_ejected()
    }

    /// Marks the endpoint as gone from its service (owner task only): established connections
    /// start their drain deadline.
    pub(crate) fn set_removed(&self, removed: bool) {
        if removed {
            self.drain.load().start();
        } else if self.drain.load().is_cancelled() {
            // Back in the service: connections from now on drain with the service again.
            // Connections already told to drain keep their deadline.
            self.drain
                .store(Arc::new(Drain::child_of(&self.service_retired)));
        }
        self.set_draining(removed);
    }

    /// Closes every established connection now (owner task only); connections established
    /// from now on get a fresh signal.
    pub(crate) fn close_connections(&self) {
        let current = self
            .drain
            .swap(Arc::new(Drain::child_of(&self.service_retired)));
        current.close_now();
    }

    /// Fires when connections to this endpoint must end (endpoint removed, service stopped,
    /// or closed at once). Take it once per connection.
    pub fn drain_token(&self) -> Arc<Drain> {
        self.drain.load_full()
    }

    /// Waits until no connection is open to this endpoint and no UDP flow is pinned to it.
    pub async fn idle(&self) {
        loop {
            let notified = self.idle.notified();
            if self.load() == 0 {
                return;
            }
            notified.await;
        }
    }

    /// Records a failed connect; returns the number of failures in a row.
    pub fn record_connect_failure(&self) -> u32 {
        self.metrics.connect_failures.increment(1);
        self.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Connect failures in a row so far.
    pub fn consecutive_connect_failures(&self) -> u32 {
        self.consecutive_failures.load(Ordering::Relaxed)
    }

    /// Records a successful connect, ending any run of failures.
    pub fn record_connect_success(&self) {
        // Load first: a store on every connection would bounce the cache line between cores.
        if self.consecutive_failures.load(Ordering::Relaxed) != 0 {
            self.consecutive_failures.store(0, Ordering::Relaxed);
        }
    }

    /// Forgets the current run of connect failures (after an ejection ends).
    pub(crate) fn reset_connect_failures(&self) {
        self.consecutive_failures.store(0, Ordering::Relaxed);
    }

    /// Connections open to this endpoint now, including connects in flight.
    pub fn active_connections(&self) -> u64 {
        self.active.load(Ordering::Relaxed)
    }

    /// UDP flows pinned to this endpoint now.
    pub fn active_flows(&self) -> u64 {
        self.flows.load(Ordering::Relaxed)
    }

    /// What the connection-count policies weigh: open TCP connections (connects in flight
    /// included) plus UDP flows, so a service of both protocols is balanced over both.
    pub fn load(&self) -> u64 {
        self.active_connections() + self.active_flows()
    }

    /// The endpoint's UDP metric handles (registered with its first flow).
    pub fn udp_metrics(&self) -> &UdpMetrics {
        self.metrics.udp(self.addr)
    }

    /// Counts `count` client datagrams of `bytes` in all forwarded to this endpoint.
    pub fn datagrams_in(&self, count: usize, bytes: usize) {
        self.udp_metrics().datagrams_in.increment(count as u64);
        self.metrics.bytes_in.increment(bytes as u64);
    }

    /// Counts `count` replies of `bytes` in all from this endpoint forwarded to their clients.
    pub fn datagrams_out(&self, count: usize, bytes: usize) {
        self.udp_metrics().datagrams_out.increment(count as u64);
        self.metrics.bytes_out.increment(bytes as u64);
    }

    /// Counts a UDP flow pinned to this endpoint; the guard counts it gone when dropped.
    pub fn flow_pinned(self: &Arc<Self>) -> ActiveFlow {
        self.flows.fetch_add(1, Ordering::Relaxed);
        let udp = self.udp_metrics();
        udp.flows.increment(1.0);
        udp.flows_total.increment(1);
        ActiveFlow {
            endpoint: Arc::clone(self),
            drain: self.drain_token(),
        }
    }

    /// Connections established to this endpoint since start.
    pub fn connections_total(&self) -> u64 {
        self.total.load(Ordering::Relaxed)
    }

    /// Counts a connect attempt as active from now on (so connection-count policies see
    /// connects in flight); it counts as established by [`Attempt::established`], and is
    /// forgotten when dropped before.
    pub fn attempt(self: &Arc<Self>) -> Attempt {
        self.active.fetch_add(1, Ordering::Relaxed);
        Attempt {
            endpoint: Some(Arc::clone(self)),
        }
    }

    /// Like [`Endpoint::attempt`], but only while fewer than the endpoint's limit are active:
    /// `None` when it is at its limit.
    pub fn try_attempt(self: &Arc<Self>) -> Option<Attempt> {
        let limit = self.limit.load(Ordering::Relaxed);
        if limit == 0 {
            return Some(self.attempt());
        }
        self.active
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |active| {
                (active < limit).then_some(active + 1)
            })
            .ok()?;
        Some(Attempt {
            endpoint: Some(Arc::clone(self)),
        })
    }

    /// Whether a connection fits under the limit now.
    pub fn has_room(&self) -> bool {
        let limit = self.limit.load(Ordering::Relaxed);
        limit == 0 || self.active.load(Ordering::Relaxed) < limit
    }

    /// The connection limit; `None` = none.
    pub fn limit(&self) -> Option<u64> {
        Some(self.limit.load(Ordering::Relaxed)).filter(|&l| l > 0)
    }

    /// Sets the connection limit (`None`: none). Connections above a lowered limit stay.
    pub fn set_limit(&self, limit: Option<std::num::NonZeroU32>) {
        self.limit
            .store(limit.map_or(0, |l| u64::from(l.get())), Ordering::Relaxed);
    }

    fn release(&self) {
        if self.active.fetch_sub(1, Ordering::Relaxed) == 1 {
            self.idle.notify_waiters();
        }
    }
}

/// A connect attempt to an endpoint, counted in its active connections until dropped or
/// established.
#[derive(Debug)]
pub struct Attempt {
    /// `None` once established (the count moved to the [`ActiveConnection`]).
    endpoint: Option<Arc<Endpoint>>,
}

impl Attempt {
    /// The connect succeeded: the connection counts as established.
    pub fn established(mut self) -> ActiveConnection {
        let endpoint = self
            .endpoint
            .take()
            .expect("an attempt is established once");
        endpoint.total.fetch_add(1, Ordering::Relaxed);
        endpoint.metrics.connections.increment(1);
        endpoint.metrics.active.increment(1.0);
        ActiveConnection { endpoint }
    }
}

impl Drop for Attempt {
    fn drop(&mut self) {
        if let Some(endpoint) = self.endpoint.take() {
            endpoint.release();
        }
    }
}

/// An established connection to an endpoint; dropping it updates the active counts.
#[derive(Debug)]
pub struct ActiveConnection {
    endpoint: Arc<Endpoint>,
}

impl ActiveConnection {
    /// The endpoint the connection goes to.
    pub fn endpoint(&self) -> &Arc<Endpoint> {
        &self.endpoint
    }
}

impl Drop for ActiveConnection {
    fn drop(&mut self) {
        self.endpoint.metrics.active.decrement(1.0);
        self.endpoint.release();
    }
}

/// A UDP flow pinned to an endpoint; dropping it (the flow ended or moved) updates the counts.
#[derive(Debug)]
pub struct ActiveFlow {
    endpoint: Arc<Endpoint>,
    /// The endpoint's drain signal when the flow was pinned, as a connection takes it.
    drain: Arc<Drain>,
}

impl ActiveFlow {
    /// The endpoint the flow goes to.
    pub fn endpoint(&self) -> &Arc<Endpoint> {
        &self.endpoint
    }

    /// Whether the flow must end: its endpoint left the service, the service stopped, or the
    /// endpoint's connections were closed (`on_marked_down = "close"`). A datagram has no
    /// grace period to drain: the flow's next datagram starts a new flow elsewhere.
    pub fn must_end(&self) -> bool {
        self.drain.is_cancelled()
    }
}

impl Drop for ActiveFlow {
    fn drop(&mut self) {
        if self.endpoint.flows.fetch_sub(1, Ordering::Relaxed) == 1 {
            self.endpoint.idle.notify_waiters();
        }
        self.endpoint.udp_metrics().flows.decrement(1.0);
    }
}
