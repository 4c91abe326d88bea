//! The owner task of one service: the only writer of its snapshot.
//!
//! It follows the endpoint set (static list or discovery; whole sets, not deltas), probes every
//! endpoint (unless it has `check = false`) every `health.period` ± `health.jitter` and feeds
//! the results through each endpoint's [`HealthState`], closes a marked-down endpoint's
//! connections with `on_marked_down = "close"`, applies operator drains, outlier ejections,
//! slow-start ramps and reconfigurations, and after
//! every change publishes one new snapshot, so the data plane always sees settings, endpoints,
//! health and picker that belong together.
//!
//! Endpoints present before and after a change keep their `Arc<Endpoint>`: health, counters and
//! connections carry over. A removed endpoint leaves rotation at once; its connections get the
//! service's `drain_timeout`, and it is forgotten when the last one closes.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::sync::{mpsc, watch};
use tokio::task::{AbortHandle, JoinSet};
use tokio::time::{Instant, MissedTickBehavior, interval, sleep, sleep_until};
use tokio_util::sync::CancellationToken;

use super::outlier::OutlierPolicy;
use super::slow_start;
use super::snapshot::Placement;
use super::{Change, Command, Endpoint, Inbox, PortPool, ServiceEvent, ServiceState, Snapshot};
use crate::balance::{MaglevTables, PickerState, affinity_timeout};
use crate::config::{self, EndpointSpec, Health, HealthCheck, Protocol};
use crate::health::{HealthState, ProbeError, ProbeTarget, probe, schedule};

/// One probe result: which endpoint and how it went.
type ProbeReport = (SocketAddr, Result<(), ProbeError>);

/// Endpoint sets as they arrive: `None` until the first one is known.
type EndpointSets = watch::Receiver<Option<Vec<EndpointSpec>>>;

/// Work finished in the background that the owner must act on.
enum Background {
    /// An ejection ran out (the generation tells stale timers apart).
    EjectionOver(SocketAddr, u64),
    /// A removed endpoint has no connection left.
    Gone(SocketAddr),
}

/// How often the affinity tables are swept of expired entries (and the gauge set).
const AFFINITY_SWEEP: std::time::Duration = std::time::Duration::from_secs(5);

/// An endpoint currently in the service.
struct Member {
    endpoint: Arc<Endpoint>,
    health: HealthState,
    probe: Option<AbortHandle>,
    probed: bool,
    ejections: u32,
    ejection: u64,
    /// Whether probes run for it (the service has checks and the endpoint is not exempt).
    checked: bool,
    /// Whether the endpoint was in rotation at the last publish (to see it enter rotation).
    was_in_rotation: bool,
    /// When slow start began ramping the endpoint; `None` = at full weight.
    ramp_started: Option<Instant>,
}

/// Starts the owner of `service`: publishes the first snapshot now (static endpoints are in it
/// before any listener opens) and returns the task that runs until the service retires.
///
/// Must be called inside a tokio runtime (probes start at once).
pub fn start(service: Arc<ServiceState>, inbox: Inbox) -> impl Future<Output = ()> + Send {
    let Inbox(commands) = inbox;
    let (reports_tx, reports) = mpsc::channel(256);
    let config = service.config();
    let mut owner = Owner {
        pickers: pickers_for(&config, &HashMap::new()),
        tables: MaglevTables::default(),
        affinity_gauge: metrics::gauge!(
            crate::metrics::AFFINITY_ENTRIES,
            &[("service", service.name().to_owned())]
        ),
        source: Source::start(&service, &config),
        config,
        service,
        members: Vec::new(),
        leaving: Vec::new(),
        probes: JoinSet::new(),
        reports_tx,
        background: JoinSet::new(),
        next_ejection: 0,
    };
    owner.apply_endpoint_set();
    async move { owner.run(commands, reports).await }
}

struct Owner {
    service: Arc<ServiceState>,
    config: Arc<config::Service>,
    source: Source,
    members: Vec<Member>,
    /// Removed endpoints whose connections are still draining.
    leaving: Vec<Arc<Endpoint>>,
    /// Per service port, keyed by protocol and port number.
    pickers: HashMap<(Protocol, u16), Arc<PickerState>>,
    /// Maglev tables of the current snapshot, reused while their endpoint sets stay.
    tables: MaglevTables,
    /// `vipd_affinity_entries{service}`.
    affinity_gauge: metrics::Gauge,
    probes: JoinSet<()>,
    reports_tx: mpsc::Sender<ProbeReport>,
    background: JoinSet<Background>,
    next_ejection: u64,
}

impl Owner {
    async fn run(
        &mut self,
        mut commands: mpsc::Receiver<Command>,
        mut reports: mpsc::Receiver<ProbeReport>,
    ) {
        let retired = self.service.retired().clone();
        let mut sweep = interval(AFFINITY_SWEEP);
        sweep.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            let ramp_step = self.next_ramp_step();
            tokio::select! {
                _ = retired.cancelled() => break,
                // While an endpoint ramps up, its weight grows in steps of one percent.
                () = sleep_until(ramp_step.unwrap_or_else(Instant::now)), if ramp_step.is_some() => self.publish(),
                _ = sweep.tick(), if self.config.session_affinity != config::SessionAffinity::None => self.sweep_affinity(),
                Some(command) = commands.recv() => self.on_command(command),
                Some((addr, result)) = reports.recv() => self.on_probe(addr, result),
                changed = self.source.sets.changed() => {
                    if changed.is_err() {
                        // The source ended (it only does when retiring).
                        break;
                    }
                    self.apply_endpoint_set();
                }
                Some(Ok(done)) = self.background.join_next() => self.on_background(done),
            }
            // Aborted probe loops stay in the set until joined.
            while self.probes.try_join_next().is_some() {}
        }
        self.probes.abort_all();
        self.source.stop();
        // Connections of this service drain on the service's own token; nothing to forget.
    }

    fn on_command(&mut self, command: Command) {
        match command {
            Command::Reconfigure(config, done) => {
                self.reconfigure(config);
                let _ = done.send(());
            }
            Command::SetDraining {
                endpoint,
                draining,
                done,
            } => {
                let known = self.set_draining(endpoint, draining);
                let _ = done.send(known);
            }
            Command::ConnectFailures(addr) => self.consider_ejection(addr),
        }
    }

    /// Applies the latest endpoint set from the source.
    fn apply_endpoint_set(&mut self) {
        let Some(specs) = self.source.sets.borrow_and_update().clone() else {
            return;
        };
        let desired = addresses(&self.config, &specs);
        let placements = placements(&self.config, &specs);
        let probed = probed_addresses(&self.config, &specs);
        let mut kept = Vec::with_capacity(desired.len());
        let mut previous: HashMap<SocketAddr, Member> = self
            .members
            .drain(..)
            .map(|m| (m.endpoint.addr(), m))
            .collect();
        for addr in &desired {
            let placement = placements.get(addr);
            // An endpoint's own `max_connections`, else the service's per-endpoint limit.
            let limit = placement
                .and_then(|spec| spec.max_connections)
                .or(self.config.max_connections_per_endpoint);
            if let Some(mut member) = previous.remove(addr) {
                if let Some(spec) = placement {
                    apply_placement(&member.endpoint, spec, probed.contains(addr));
                }
                member.endpoint.set_limit(limit);
                let should_probe =
                    self.config.health.check != HealthCheck::None && member.endpoint.is_checked();
                if should_probe != member.checked {
                    self.restart_probe(&mut member);
                }
                kept.push(member);
                continue;
            }
            let endpoint = match self.leaving.iter().position(|e| e.addr() == *addr) {
                // Came back while its old connections were draining: keep its counters.
                Some(index) => {
                    let endpoint = self.leaving.swap_remove(index);
                    endpoint.set_removed(false);
                    endpoint
                }
                None => Arc::new(Endpoint::new(
                    self.service.name(),
                    *addr,
                    self.service.retired(),
                )),
            };
            if let Some(spec) = placement {
                apply_placement(&endpoint, spec, probed.contains(addr));
            }
            endpoint.set_limit(limit);
            tracing::info!(service = self.service.name(), endpoint = %addr, "endpoint added");
            let member = self.new_member(endpoint);
            kept.push(member);
            self.service.announce(ServiceEvent {
                endpoint: *addr,
                change: Change::Added,
                in_rotation: in_rotation(&kept),
            });
        }
        self.members = kept;
        for (addr, member) in previous {
            if let Some(probe) = member.probe {
                probe.abort();
            }
            self.retire_endpoint(member.endpoint);
            tracing::info!(service = self.service.name(), endpoint = %addr, "endpoint removed; its connections drain");
            self.announce(addr, Change::Removed);
        }
        self.publish();
        self.check_first_round();
    }

    fn new_member(&mut self, endpoint: Arc<Endpoint>) -> Member {
        let probe = self.start_probe(&endpoint);
        Member {
            health: HealthState::from_config(&self.config.health),
            endpoint,
            probed: probe.is_none(),
            checked: probe.is_some(),
            probe,
            ejections: 0,
            ejection: 0,
            was_in_rotation: false,
            ramp_started: None,
        }
    }

    /// Restarts `member`'s probes after the checks or its exemption changed. A verdict of down
    /// stands until the new checks say otherwise; an endpoint no longer probed counts as
    /// healthy.
    fn restart_probe(&mut self, member: &mut Member) {
        if let Some(probe) = member.probe.take() {
            probe.abort();
        }
        let probe = self.start_probe(&member.endpoint);
        if probe.is_none() {
            member.endpoint.set_healthy(true);
        }
        member.health = HealthState::from_config(&self.config.health);
        if !member.endpoint.is_healthy() {
            for _ in 0..self.config.health.failure_threshold.get() {
                member.health.observe(false);
            }
        }
        member.checked = probe.is_some();
        member.probe = probe;
    }

    /// Takes a removed endpoint out of the service: it drains, and is forgotten once idle.
    fn retire_endpoint(&mut self, endpoint: Arc<Endpoint>) {
        endpoint.set_removed(true);
        endpoint.set_ejected(false);
        let waiting = Arc::clone(&endpoint);
        self.background.spawn(async move {
            waiting.idle().await;
            Background::Gone(waiting.addr())
        });
        self.leaving.push(endpoint);
    }

    /// Starts probing `endpoint`, unless the service has no checks or the endpoint is exempt.
    fn start_probe(&mut self, endpoint: &Endpoint) -> Option<AbortHandle> {
        if self.config.health.check == HealthCheck::None || !endpoint.is_checked() {
            return None;
        }
        let addr = endpoint.addr();
        let target = probe_target(addr, &self.config.health);
        // The endpoint's own port expects the service's PROXY header; a separate health port
        // is another server, which does not.
        let proxy_header = self.config.proxy_protocol.filter(|_| target == addr);
        Some(self.probes.spawn(probe_loop(
            self.service.name().to_owned(),
            addr,
            (target, proxy_header),
            self.config.health.clone(),
            self.reports_tx.clone(),
        )))
    }

    fn on_probe(&mut self, addr: SocketAddr, result: Result<(), ProbeError>) {
        let Some(index) = self.members.iter().position(|m| m.endpoint.addr() == addr) else {
            // A report from an endpoint removed meanwhile.
            return;
        };
        let member = &mut self.members[index];
        let endpoint = Arc::clone(&member.endpoint);
        match &result {
            Ok(()) => endpoint.metrics.checks_succeeded.increment(1),
            Err(error) => {
                endpoint.metrics.checks_failed.increment(1);
                tracing::debug!(service = self.service.name(), endpoint = %addr, %error, "health check failed");
            }
        }
        let flipped = member.health.observe(result.is_ok());
        let first = !std::mem::replace(&mut member.probed, true);
        if let Some(healthy) = flipped {
            endpoint.set_healthy(healthy);
            self.publish();
            if !healthy && self.config.on_marked_down == config::OnMarkedDown::Close {
                // After the publish: no new connection picks the endpoint any more.
                tracing::info!(
                    service = self.service.name(),
                    endpoint = %addr,
                    connections = endpoint.active_connections(),
                    "endpoint marked down; closing its connections (on_marked_down = \"close\")"
                );
                endpoint.close_connections();
            }
            let in_rotation = self.in_rotation();
            match &result {
                Ok(()) => tracing::info!(
                    service = self.service.name(),
                    endpoint = %addr,
                    in_rotation = in_rotation.len(),
                    total = self.members.len(),
                    "endpoint marked up"
                ),
                Err(error) => tracing::info!(
                    service = self.service.name(),
                    endpoint = %addr,
                    %error,
                    in_rotation = in_rotation.len(),
                    total = self.members.len(),
                    "endpoint marked down"
                ),
            }
            if in_rotation.is_empty() {
                tracing::warn!(
                    service = self.service.name(),
                    "no healthy endpoint: connections are spread over all endpoints (fail open)"
                );
            }
            let change = if healthy { Change::Up } else { Change::Down };
            self.service.announce(ServiceEvent {
                endpoint: addr,
                change,
                in_rotation,
            });
        }
        if first {
            self.check_first_round();
        }
    }

    fn set_draining(&mut self, addr: SocketAddr, draining: bool) -> bool {
        let Some(member) = self.members.iter().find(|m| m.endpoint.addr() == addr) else {
            return false;
        };
        if member.endpoint.is_draining() != draining {
            member.endpoint.set_draining(draining);
            tracing::info!(service = self.service.name(), endpoint = %addr, draining, "endpoint drain changed by operator");
            self.publish();
            let change = if draining {
                Change::Drained
            } else {
                Change::Undrained
            };
            self.announce(addr, change);
        }
        true
    }

    fn consider_ejection(&mut self, addr: SocketAddr) {
        let Some(policy) = self.config.outlier.clone().map(OutlierPolicy::new) else {
            return;
        };
        let ejected = self
            .members
            .iter()
            .filter(|m| m.endpoint.is_ejected())
            .count();
        let total = self.members.len();
        let Some(member) = self.members.iter_mut().find(|m| m.endpoint.addr() == addr) else {
            return;
        };
        let endpoint = Arc::clone(&member.endpoint);
        if endpoint.is_ejected() || !policy.is_outlier(endpoint.consecutive_connect_failures()) {
            return;
        }
        if !policy.may_eject(ejected, total) {
            tracing::debug!(service = self.service.name(), endpoint = %addr, "not ejected: max_ejection_percent reached");
            return;
        }
        let duration = policy.ejection_time(member.ejections);
        member.ejections += 1;
        self.next_ejection += 1;
        member.ejection = self.next_ejection;
        let generation = member.ejection;
        endpoint.set_ejected(true);
        endpoint.metrics.ejections.increment(1);
        tracing::info!(service = self.service.name(), endpoint = %addr, ejection = ?duration, "endpoint ejected after consecutive connect failures");
        self.background.spawn(async move {
            sleep(duration).await;
            Background::EjectionOver(addr, generation)
        });
        self.publish();
        self.announce(addr, Change::Ejected);
    }

    fn on_background(&mut self, done: Background) {
        match done {
            Background::EjectionOver(addr, generation) => {
                let Some(member) = self
                    .members
                    .iter()
                    .find(|m| m.endpoint.addr() == addr && m.ejection == generation)
                else {
                    return;
                };
                if !member.endpoint.is_ejected() {
                    return;
                }
                member.endpoint.set_ejected(false);
                member.endpoint.reset_connect_failures();
                tracing::info!(service = self.service.name(), endpoint = %addr, "ejection over; endpoint back in rotation");
                self.publish();
                self.announce(addr, Change::Restored);
            }
            Background::Gone(addr) => {
                let Some(index) = self.leaving.iter().position(|e| e.addr() == addr) else {
                    // Re-added meanwhile.
                    return;
                };
                let endpoint = &self.leaving[index];
                if endpoint.active_connections() != 0 {
                    // A connection raced in before the removal took effect; wait again.
                    let waiting = Arc::clone(endpoint);
                    self.background.spawn(async move {
                        waiting.idle().await;
                        Background::Gone(waiting.addr())
                    });
                    return;
                }
                self.leaving.swap_remove(index);
                tracing::debug!(service = self.service.name(), endpoint = %addr, "removed endpoint drained");
                self.publish();
                self.announce(addr, Change::Gone);
            }
        }
    }

    fn reconfigure(&mut self, config: Arc<config::Service>) {
        let old = std::mem::replace(&mut self.config, Arc::clone(&config));
        if old.endpoints != config.endpoints || old.discovery != config.discovery {
            self.source.stop();
            self.source = Source::start(&self.service, &config);
        }
        if old.health != config.health || old.proxy_protocol != config.proxy_protocol {
            let mut members = std::mem::take(&mut self.members);
            for member in &mut members {
                self.restart_probe(member);
            }
            self.members = members;
        }
        if old.outlier != config.outlier && config.outlier.is_none() {
            for member in &self.members {
                member.endpoint.set_ejected(false);
            }
        }
        if old.session_affinity != config.session_affinity || old.ports != config.ports {
            self.pickers = pickers_for(&config, &self.pickers);
            if config.session_affinity == config::SessionAffinity::None {
                self.affinity_gauge.set(0.0);
            }
        }
        if config.slow_start.is_none() || config.balance == config::Balance::Maglev {
            for member in &mut self.members {
                member.ramp_started = None;
            }
        }
        tracing::info!(service = self.service.name(), "service settings updated");
        // Endpoint addresses depend on target ports too.
        self.apply_endpoint_set();
        self.publish();
    }

    fn check_first_round(&self) {
        if self.source.sets.borrow().is_some() && self.members.iter().all(|m| m.probed) {
            self.service.mark_first_round_done();
        }
    }

    /// The slow-start window, when the service ramps endpoints (never with `maglev`, where a
    /// ramp would move clients twice).
    fn ramp_window(&self) -> Option<std::time::Duration> {
        self.config
            .slow_start
            .filter(|_| self.config.balance != config::Balance::Maglev)
    }

    /// When the next slow-start step is due, if an endpoint is ramping.
    fn next_ramp_step(&self) -> Option<Instant> {
        let window = self.ramp_window()?;
        let now = Instant::now();
        self.members
            .iter()
            .filter_map(|m| {
                let started = m.ramp_started?;
                slow_start::next_step(now.saturating_duration_since(started), window)
                    .map(|at| started + at)
            })
            .min()
    }

    /// Updates each member's slow-start ramp: an endpoint entering rotation after the first
    /// health round starts at 10%; one leaving rotation stops ramping.
    fn update_ramps(&mut self) {
        let window = self.ramp_window();
        let started_up = self.service.first_round_done();
        let now = Instant::now();
        for member in &mut self.members {
            let in_rotation = member.endpoint.in_rotation();
            if !in_rotation {
                member.ramp_started = None;
            } else if !member.was_in_rotation && started_up && window.is_some() {
                member.ramp_started = Some(now);
            }
            member.was_in_rotation = in_rotation;
            let percent = match (member.ramp_started, window) {
                (Some(started), Some(window)) => {
                    slow_start::percent(now.saturating_duration_since(started), window)
                }
                _ => slow_start::FULL_PERCENT,
            };
            if percent >= slow_start::FULL_PERCENT {
                member.ramp_started = None;
            }
            member.endpoint.set_weight_percent(percent);
        }
    }

    /// Clears expired affinity entries and sets `vipd_affinity_entries`.
    fn sweep_affinity(&self) {
        let Some(timeout) = affinity_timeout(self.config.session_affinity) else {
            return;
        };
        let now = Instant::now();
        let live: usize = self
            .pickers
            .values()
            .filter_map(|p| p.affinity())
            .map(|table| table.sweep(now, timeout))
            .sum();
        self.affinity_gauge.set(live as f64);
    }

    /// Builds and publishes a snapshot from the members as they are now.
    fn publish(&mut self) {
        self.update_ramps();
        let by_addr: HashMap<SocketAddr, &Arc<Endpoint>> = self
            .members
            .iter()
            .map(|m| (m.endpoint.addr(), &m.endpoint))
            .collect();
        let specs = self.source.sets.borrow().clone().unwrap_or_default();
        let placement = Placement::of(&self.config);
        let ports = self
            .config
            .ports
            .iter()
            .map(|port| {
                let endpoints: Vec<Arc<Endpoint>> = port_addresses(port, &specs)
                    .iter()
                    .filter_map(|a| by_addr.get(a).map(|e| Arc::clone(e)))
                    .collect();
                let key = (port.protocol, port.port);
                let picker = self.pickers.get(&key).cloned().unwrap_or_else(|| {
                    Arc::new(PickerState::new(
                        self.config.session_affinity,
                        Instant::now(),
                    ))
                });
                PortPool::new(key, &endpoints, placement, picker, &mut self.tables)
            })
            .collect();
        self.tables.finish_round();
        let endpoints: Vec<Arc<Endpoint>> = self
            .members
            .iter()
            .map(|m| Arc::clone(&m.endpoint))
            .chain(self.leaving.iter().cloned())
            .collect();
        self.record_states(&endpoints);
        self.service.publish(Snapshot {
            config: Arc::clone(&self.config),
            ports,
            endpoints,
        });
    }

    /// Sets `vipd_endpoints{state}`.
    fn record_states(&self, endpoints: &[Arc<Endpoint>]) {
        let mut counts = [0u32; 4];
        for endpoint in endpoints {
            let state = if endpoint.is_draining() {
                2
            } else if endpoint.is_ejected() {
                3
            } else if endpoint.is_healthy() {
                0
            } else {
                1
            };
            counts[state] += 1;
        }
        for (gauge, count) in self.service.metrics.endpoints.iter().zip(counts) {
            gauge.set(f64::from(count));
        }
    }

    fn in_rotation(&self) -> Vec<SocketAddr> {
        in_rotation(&self.members)
    }

    fn announce(&self, endpoint: SocketAddr, change: Change) {
        self.service.announce(ServiceEvent {
            endpoint,
            change,
            in_rotation: self.in_rotation(),
        });
    }
}

/// The addresses of `members` that are in rotation, in order.
fn in_rotation(members: &[Member]) -> Vec<SocketAddr> {
    members
        .iter()
        .filter(|m| m.endpoint.in_rotation())
        .map(|m| m.endpoint.addr())
        .collect()
}

/// Where endpoint sets come from: a fixed list, or a discovery task.
struct Source {
    sets: EndpointSets,
    /// Keeps a static set's channel open.
    _fixed: Option<watch::Sender<Option<Vec<EndpointSpec>>>>,
    /// Stops a discovery task.
    stop: CancellationToken,
}

impl Source {
    fn start(service: &ServiceState, config: &config::Service) -> Source {
        let stop = service.retired().child_token();
        match &config.discovery {
            None => {
                let (fixed, sets) = watch::channel(Some(config.endpoints.clone()));
                Source {
                    sets,
                    _fixed: Some(fixed),
                    stop,
                }
            }
            Some(discovery) => {
                let (updates, sets) = watch::channel(None);
                tokio::spawn(crate::discovery::run(
                    service.name().to_owned(),
                    discovery.clone(),
                    updates,
                    stop.clone(),
                ));
                Source {
                    sets,
                    _fixed: None,
                    stop,
                }
            }
        }
    }

    fn stop(&self) {
        self.stop.cancel();
    }
}

/// Distinct endpoint addresses of the service over all its ports, in order.
fn addresses(config: &config::Service, specs: &[EndpointSpec]) -> Vec<SocketAddr> {
    let mut all = Vec::new();
    for port in &config.ports {
        for addr in port_addresses(port, specs) {
            if !all.contains(&addr) {
                all.push(addr);
            }
        }
    }
    all
}

/// The endpoint addresses behind one service port.
fn port_addresses(port: &config::ServicePort, specs: &[EndpointSpec]) -> Vec<SocketAddr> {
    specs
        .iter()
        .map(|e| SocketAddr::new(e.ip, e.port.unwrap_or(port.target_port)))
        .collect()
}

/// Picker state per service port, keeping the state of ports that stay (rotation position and
/// affinity entries survive reloads) unless affinity was switched on or off.
fn pickers_for(
    config: &config::Service,
    old: &HashMap<(Protocol, u16), Arc<PickerState>>,
) -> HashMap<(Protocol, u16), Arc<PickerState>> {
    config
        .ports
        .iter()
        .map(|p| {
            let key = (p.protocol, p.port);
            let picker = old
                .get(&key)
                .filter(|picker| picker.fits(config.session_affinity))
                .cloned()
                .unwrap_or_else(|| {
                    Arc::new(PickerState::new(config.session_affinity, Instant::now()))
                });
            (key, picker)
        })
        .collect()
}

/// The spec of every endpoint address of the service (the first, when two ports map to one).
fn placements<'a>(
    config: &config::Service,
    specs: &'a [EndpointSpec],
) -> HashMap<SocketAddr, &'a EndpointSpec> {
    let mut out = HashMap::new();
    for port in &config.ports {
        for (addr, spec) in port_addresses(port, specs).into_iter().zip(specs) {
            out.entry(addr).or_insert(spec);
        }
    }
    out
}

/// Gives `endpoint` the weight, tier, name and check exemption of its spec; an endpoint the
/// service's probes cannot reach (`probed` false) is exempt too.
fn apply_placement(endpoint: &Endpoint, spec: &EndpointSpec, probed: bool) {
    endpoint.set_placement(spec.weight, spec.backup);
    endpoint.set_identity(spec.name.as_deref(), spec.check && probed);
}

/// The endpoint addresses the service's probes can check. A TCP probe (`tcp`, `http`) of an
/// endpoint's own port reaches only addresses behind a TCP port, a `udp` probe only those behind
/// a UDP port: an address behind ports of the other protocol alone would always fail it, so it
/// goes unprobed unless `health.port` names a port to probe. `exec` probes every address.
fn probed_addresses(config: &config::Service, specs: &[EndpointSpec]) -> HashSet<SocketAddr> {
    let probed_protocol = match config.health.check {
        HealthCheck::Tcp(_) | HealthCheck::Http(_) => Some(Protocol::Tcp),
        HealthCheck::Udp(_) => Some(Protocol::Udp),
        HealthCheck::Exec(_) | HealthCheck::None => None,
    };
    config
        .ports
        .iter()
        .filter(|p| {
            config.health.port.is_some() || probed_protocol.is_none_or(|proto| p.protocol == proto)
        })
        .flat_map(|p| port_addresses(p, specs))
        .collect()
}

/// Where to probe an endpoint: its own address, or its IP with the configured probe port.
fn probe_target(endpoint: SocketAddr, health: &Health) -> SocketAddr {
    SocketAddr::new(endpoint.ip(), health.port.unwrap_or(endpoint.port()))
}

/// Probes one endpoint about every period (the first at once; see
/// [`schedule::next_delay`]) and reports each result.
async fn probe_loop(
    service: String,
    addr: SocketAddr,
    (target, proxy_header): (SocketAddr, Option<config::ProxyProtocolVersion>),
    health: Health,
    reports: mpsc::Sender<ProbeReport>,
) {
    let mut next = Instant::now();
    loop {
        // Counted from the previous start: a probe slower than the delay delays the next one
        // (which then starts at once) instead of firing a burst to catch up.
        sleep_until(next).await;
        let started = Instant::now();
        next = started + schedule::next_delay(health.period, health.jitter, fastrand::f64());
        let target = ProbeTarget {
            service: &service,
            endpoint: addr,
            target,
            proxy_header,
        };
        let result = probe(&health.check, target, health.timeout).await;
        if reports.send((addr, result)).await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::net::TcpListener;

    use super::*;
    use crate::config::TcpCheck;

    /// Starts `probe_loop` and returns when each of its first `n` reports arrived, relative to
    /// its start. Runs under paused time, so instants are exact.
    async fn report_times(health: Health, target: SocketAddr, n: usize) -> Vec<Duration> {
        let (tx, mut rx) = mpsc::channel(1);
        let start = Instant::now();
        let task = tokio::spawn(probe_loop(
            "web".to_owned(),
            target,
            (target, None),
            health,
            tx,
        ));
        let mut times = Vec::with_capacity(n);
        for _ in 0..n {
            let _report = rx.recv().await.expect("a report");
            times.push(start.elapsed());
        }
        task.abort();
        times
    }

    fn gaps(times: &[Duration]) -> Vec<Duration> {
        times.windows(2).map(|w| w[1] - w[0]).collect()
    }

    fn health(check: HealthCheck, jitter: f64) -> Health {
        Health {
            check,
            period: Duration::from_secs(1),
            jitter,
            ..Health::default()
        }
    }

    const ANYWHERE: SocketAddr =
        SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 9);

    #[tokio::test(start_paused = true)]
    async fn probes_start_at_once_then_a_jittered_period_apart() {
        // `none` probes take no time, so report times are start times.
        let times = report_times(health(HealthCheck::None, 0.5), ANYWHERE, 50).await;
        assert_eq!(times[0], Duration::ZERO);
        let gaps = gaps(&times);
        for gap in &gaps {
            assert!(
                (Duration::from_millis(500)..=Duration::from_millis(1500)).contains(gap),
                "{gap:?}"
            );
        }
        // Jittered: 49 draws from a continuous range are not all the same.
        assert!(gaps.iter().any(|g| *g != gaps[0]), "{gaps:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn without_jitter_probes_are_exactly_a_period_apart() {
        let times = report_times(health(HealthCheck::None, 0.0), ANYWHERE, 5).await;
        let second = Duration::from_secs(1);
        assert_eq!(times[0], Duration::ZERO);
        assert_eq!(gaps(&times), [second; 4]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_probe_delays_the_next_one_instead_of_bursting() {
        // Connects go into the backlog and no answer ever comes, so every probe takes its whole
        // timeout, longer than the period.
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let target = listener.local_addr().expect("addr");
        let check = HealthCheck::Tcp(TcpCheck {
            send: None,
            expect: Some(b"never".to_vec()),
        });
        let slow = Health {
            timeout: Duration::from_millis(1500),
            ..health(check, 0.0)
        };
        let times = report_times(slow, target, 4).await;
        // Each probe starts as soon as the previous one ended: no catching up afterwards.
        let probe = Duration::from_millis(1500);
        assert_eq!(times[0], probe);
        assert_eq!(gaps(&times), [probe; 3]);
    }
}
