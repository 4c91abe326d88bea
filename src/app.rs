//! Building and running vipd from a validated config, and reloading it while it runs.
//!
//! [`App::bind`] binds every listener (so tests can bind port 0 and read the real addresses
//! back) and [`App::run`] serves until a cancellation token fires, then drains. While running,
//! reload requests (SIGHUP, `POST /reload`, a watched file, or [`AppState::apply`]) are handled
//! one at a time: load → validate → diff → bind what is new → apply. A reload that fails at any
//! step before applying changes nothing.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, anyhow};
use arc_swap::ArcSwap;
use metrics::Counter;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::diff::{self, Changes, Listen};
use crate::config::{self, Config, Secret};
use crate::dns::{self, ServiceRecords};
use crate::proxy::group::SocketGroup;
use crate::proxy::listener;
use crate::proxy::workers::{self, Workers};
use crate::service::{ControlError, Inbox, ServiceState, owner};
use crate::status::{AdminSource, BoxFuture, Status};
use crate::vip::{DesiredVip, VipManager};

/// How often `--watch` looks at the config file.
const WATCH_INTERVAL: Duration = Duration::from_secs(1);

/// Where the app is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Phase {
    /// Bound, not yet accepting.
    Bound,
    /// Accepting connections.
    Serving,
    /// Listeners closed; established connections finishing within the drain timeout.
    Draining,
    /// Every connection closed.
    Stopped,
}

/// What a reload reads.
#[derive(Debug)]
enum ReloadSource {
    /// The config file the app was started with.
    File,
    /// A config built in code.
    Config(Box<Config>),
}

#[derive(Debug)]
struct ReloadRequest {
    source: ReloadSource,
    respond: Option<oneshot::Sender<Result<String, String>>>,
}

/// What the run loop is asked to do while serving.
#[derive(Debug)]
enum RunRequest {
    /// Reload the config.
    Reload(ReloadRequest),
    /// A removed service's last connection closed: its VIP may go.
    ServiceDrained,
}

impl From<ReloadRequest> for RunRequest {
    fn from(request: ReloadRequest) -> Self {
        RunRequest::Reload(request)
    }
}

/// Asks a running app to reload its config file (SIGHUP, `--watch`).
#[derive(Debug, Clone)]
pub struct ReloadTrigger(mpsc::Sender<RunRequest>);

impl ReloadTrigger {
    /// Requests a reload from the config file without waiting for its outcome (it is logged).
    pub fn request(&self) {
        let request = ReloadRequest {
            source: ReloadSource::File,
            respond: None,
        };
        let _ = self.0.try_send(request.into());
    }
}

/// Shared view of the running services, for the admin server and tests.
#[derive(Debug)]
pub struct AppState {
    services: ArcSwap<Vec<Arc<ServiceState>>>,
    phase: watch::Sender<Phase>,
    reloads: mpsc::Sender<RunRequest>,
}

impl AppState {
    /// Every service, in config order.
    pub fn services(&self) -> Arc<Vec<Arc<ServiceState>>> {
        self.services.load_full()
    }

    /// The service called `name`.
    pub fn service(&self, name: &str) -> Option<Arc<ServiceState>> {
        self.services
            .load()
            .iter()
            .find(|s| s.name() == name)
            .cloned()
    }

    /// The current phase.
    pub fn phase(&self) -> Phase {
        *self.phase.borrow()
    }

    /// Waits until the app has reached `phase` (or a later one).
    pub async fn reached(&self, phase: Phase) {
        let mut rx = self.phase.subscribe();
        let _ = rx.wait_for(|now| *now >= phase).await;
    }

    fn enter(&self, phase: Phase) {
        self.phase.send_replace(phase);
    }

    /// Reloads the config file; answers a summary of the changes or why nothing changed.
    pub async fn reload(&self) -> Result<String, String> {
        request_reload(self.reloads.clone(), ReloadSource::File).await
    }

    /// Applies `config` as a reload would; answers a summary of the changes or the error.
    pub async fn apply(&self, config: Config) -> Result<String, String> {
        request_reload(self.reloads.clone(), ReloadSource::Config(Box::new(config))).await
    }
}

/// Sends a reload to the run loop and waits for its outcome.
async fn request_reload(
    reloads: mpsc::Sender<RunRequest>,
    source: ReloadSource,
) -> Result<String, String> {
    let (respond, answer) = oneshot::channel();
    let request = ReloadRequest {
        source,
        respond: Some(respond),
    };
    let stopped = || "vipd is shutting down".to_owned();
    reloads.send(request.into()).await.map_err(|_| stopped())?;
    answer.await.map_err(|_| stopped())?
}

impl AdminSource for AppState {
    fn ready(&self) -> bool {
        self.phase() == Phase::Serving && self.services().iter().all(|s| s.first_round_done())
    }

    fn status(&self) -> Status {
        Status {
            services: self.services().iter().map(|s| s.status()).collect(),
        }
    }

    fn set_draining(
        &self,
        service: &str,
        endpoint: SocketAddr,
        draining: bool,
    ) -> BoxFuture<Result<(), ControlError>> {
        let found = self.service(service);
        let name = service.to_owned();
        Box::pin(async move {
            let service = found.ok_or(ControlError::UnknownService(name))?;
            service.set_draining(endpoint, draining).await
        })
    }

    fn reload(&self) -> BoxFuture<Result<String, String>> {
        Box::pin(request_reload(self.reloads.clone(), ReloadSource::File))
    }
}

/// A service bound but not yet running.
#[derive(Debug)]
struct PendingService {
    state: Arc<ServiceState>,
    inbox: Inbox,
    listeners: Vec<(Listen, SocketGroup)>,
}

/// The bound DNS server and the channel its records are published on.
#[derive(Debug)]
struct DnsBound {
    udp: tokio::net::UdpSocket,
    tcp: TcpListener,
    settings: config::DnsServer,
    /// A reload sends new records here.
    records: watch::Sender<Arc<ServiceRecords>>,
}

/// A bound, not yet running vipd.
#[derive(Debug)]
pub struct App {
    state: Arc<AppState>,
    config: Config,
    config_path: Option<PathBuf>,
    watch_file: bool,
    services: Vec<PendingService>,
    admin: Option<(TcpListener, Option<Secret>)>,
    dns: Option<DnsBound>,
    vips: Option<VipManager>,
    reload_requests: mpsc::Receiver<RunRequest>,
    /// Parent of every service's token: cancelled at shutdown.
    root: CancellationToken,
    /// The threads connections run on.
    workers: Workers,
}

impl App {
    /// Builds service state and binds every listener of `config` (port 0 binds an ephemeral
    /// port). Nothing is served until [`App::run`].
    pub async fn bind(config: Config) -> anyhow::Result<App> {
        crate::metrics::install();
        let admin = match &config.admin {
            Some(admin) => Some((
                listener::bind_tcp(admin.listen)
                    .with_context(|| format!("admin: cannot listen on {}", admin.listen))?,
                admin.token.clone(),
            )),
            None => None,
        };
        let root = CancellationToken::new();
        let workers = config
            .runtime
            .workers
            .unwrap_or_else(workers::default_count);
        let workers = Workers::start(workers, config.runtime.max_connections)
            .context("cannot start the data-plane worker threads")?;
        let mut services = Vec::new();
        for service_config in &config.services {
            let listeners = bind_service(service_config, workers.count())?;
            let (state, inbox) = ServiceState::new(service_config.clone(), &root);
            state.set_bound(listeners.iter().map(|(_, g)| g.local_addr()).collect());
            services.push(PendingService {
                state,
                inbox,
                listeners,
            });
        }
        let states: Vec<Arc<ServiceState>> = services.iter().map(|s| s.state.clone()).collect();
        let dns = match &config.dns {
            Some(settings) => {
                let (udp, tcp) = dns::bind(settings.listen).await?;
                Some(DnsBound {
                    udp,
                    tcp,
                    settings: settings.clone(),
                    records: watch::Sender::new(Arc::new(service_records(&states))),
                })
            }
            None => None,
        };
        // Listeners of managed VIPs bind with IP_FREEBIND, so the VIPs can be added last: a
        // failure before then leaves no address behind.
        let desired_vips = DesiredVip::from_services(&config.services);
        let vips = if desired_vips.is_empty() {
            None
        } else {
            let mut vips = VipManager::new()?;
            if let Err(error) = vips.apply(&desired_vips).await {
                // Whatever was added before the failure goes again.
                vips.release_all().await;
                return Err(error.into());
            }
            Some(vips)
        };
        let (reloads, reload_requests) = mpsc::channel(8);
        let state = Arc::new(AppState {
            services: ArcSwap::from_pointee(states),
            phase: watch::Sender::new(Phase::Bound),
            reloads,
        });
        Ok(App {
            state,
            config,
            config_path: None,
            watch_file: false,
            services,
            admin,
            dns,
            vips,
            reload_requests,
            root,
            workers,
        })
    }

    /// The bound DNS address (UDP and TCP).
    pub fn dns_addr(&self) -> Option<SocketAddr> {
        self.dns.as_ref().and_then(|d| d.udp.local_addr().ok())
    }

    /// Sets the file reloads read; with `watch`, a change of the file triggers a reload.
    pub fn with_config_file(mut self, path: PathBuf, watch: bool) -> App {
        self.config_path = Some(path);
        self.watch_file = watch;
        self
    }

    /// Shared state (status, services, reload) of this app.
    pub fn state(&self) -> Arc<AppState> {
        Arc::clone(&self.state)
    }

    /// A handle that requests reloads from the config file (for SIGHUP).
    pub fn reload_trigger(&self) -> ReloadTrigger {
        ReloadTrigger(self.state.reloads.clone())
    }

    /// The bound addresses of service `name`, one per port in config order.
    pub fn service_addrs(&self, name: &str) -> Option<Vec<SocketAddr>> {
        self.state.service(name).map(|s| s.bound())
    }

    /// The bound admin address.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().and_then(|(l, _)| l.local_addr().ok())
    }

    /// Serves until `shutdown` is cancelled; then closes listeners at once, lets established
    /// connections finish within their `drain_timeout`, and returns.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let App {
            state,
            config,
            config_path,
            watch_file,
            services,
            admin,
            dns,
            vips,
            mut reload_requests,
            root,
            workers,
        } = self;
        let control = TaskTracker::new();
        // The admin server outlives the drain so /metrics and /status stay readable meanwhile.
        let admin_stop = CancellationToken::new();
        control.spawn(crate::metrics::run_upkeep(admin_stop.clone()));
        // The watchdog keeps going through the drain, which may outlast WatchdogSec.
        control.spawn(crate::notify::run_watchdog(admin_stop.clone()));
        if let Some((admin, token)) = admin {
            let source: Arc<dyn AdminSource> = state.clone();
            control.spawn(crate::admin::serve(
                admin,
                source,
                token,
                admin_stop.clone(),
            ));
        }
        let dns_records = match dns {
            Some(dns) => {
                let addr = dns.udp.local_addr()?;
                tracing::info!(%addr, zone = %dns.settings.zone, "dns: serving");
                control.spawn(dns::serve(
                    dns.udp,
                    dns.tcp,
                    dns.settings,
                    dns.records.subscribe(),
                    admin_stop.clone(),
                ));
                Some(dns.records)
            }
            None => None,
        };
        let vips = vips.map(|v| Arc::new(tokio::sync::Mutex::new(v)));
        if let Some(vips) = &vips {
            control.spawn(announce_vips(Arc::clone(vips), shutdown.clone()));
        }
        let mut running = Running {
            state: Arc::clone(&state),
            config,
            config_path,
            root,
            listeners: HashMap::new(),
            served_sockets: TaskTracker::new(),
            connections: TaskTracker::new(),
            workers,
            control: control.clone(),
            reload_results: reload_counters(),
            dns_records,
            vips: vips.clone(),
            lingering: Vec::new(),
        };
        if watch_file && let Some(path) = running.config_path.clone() {
            // Read before serving starts, so a change made right after start is not taken as
            // the baseline.
            let baseline = tokio::fs::read(&path).await.ok();
            let trigger = ReloadTrigger(state.reloads.clone());
            control.spawn(watch_config_file(path, baseline, trigger, shutdown.clone()));
        }
        for service in services {
            running.start_service(service);
        }
        state.enter(Phase::Serving);
        control.spawn(announce_ready(Arc::clone(&state), shutdown.clone()));

        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                Some(request) = reload_requests.recv() => match request {
                    RunRequest::Reload(request) => {
                        let outcome = running.reload(request.source).await.map_err(|e| format!("{e:#}"));
                        if let Some(respond) = request.respond {
                            let _ = respond.send(outcome);
                        }
                    }
                    RunRequest::ServiceDrained => running.release_drained_vips().await,
                },
            }
        }
        drop(reload_requests);
        crate::notify::stopping();

        running.root.cancel();
        // Every socket served by a worker watches the root token; once the tasks waiting for
        // them are done, no listener is open.
        running.served_sockets.close();
        running.served_sockets.wait().await;
        state.enter(Phase::Draining);
        running.connections.close();
        tracing::info!(
            connections = running.connections.len(),
            "listeners closed; draining established connections"
        );
        running.connections.wait().await;
        running.workers.stop().await;
        if let Some(vips) = &vips {
            vips.lock().await.release_all().await;
        }
        state.enter(Phase::Stopped);
        tracing::info!("all connections closed; stopping");
        admin_stop.cancel();
        control.close();
        control.wait().await;
        Ok(())
    }
}

/// One open socket group (TCP listeners or UDP sockets) of a running service.
#[derive(Debug)]
struct OpenListener {
    bound: SocketAddr,
    stop: CancellationToken,
    /// One accept or serve loop per socket of the group.
    done: Vec<JoinHandle<()>>,
}

/// The mutable side of a running app: only the run loop touches it.
struct Running {
    state: Arc<AppState>,
    config: Config,
    config_path: Option<PathBuf>,
    root: CancellationToken,
    /// Keyed by service name and configured listen address (with its protocol).
    listeners: HashMap<(String, Listen), OpenListener>,
    /// One task per socket handed to a worker, done once the worker has closed it.
    served_sockets: TaskTracker,
    connections: TaskTracker,
    /// The data-plane threads: their event loops serve the sockets and connections.
    workers: Workers,
    control: TaskTracker,
    /// `vipd_config_reloads_total{result}`: success, failure.
    reload_results: [Counter; 2],
    /// Where the DNS server reads its records from.
    dns_records: Option<watch::Sender<Arc<ServiceRecords>>>,
    /// VIPs held on interfaces.
    vips: Option<Arc<tokio::sync::Mutex<VipManager>>>,
    /// Removed services with managed VIPs whose connections are still draining.
    lingering: Vec<Arc<ServiceState>>,
}

impl Running {
    fn start_service(&mut self, service: PendingService) {
        let PendingService {
            state,
            inbox,
            listeners,
        } = service;
        self.control.spawn(owner::start(Arc::clone(&state), inbox));
        for (configured, listener) in listeners {
            self.open_listener(&state, configured, listener);
        }
    }

    /// Serves a bound group: socket `i` is served by worker `i`, whose event loop then runs the
    /// connections (TCP) or flows (UDP) that socket receives.
    fn open_listener(
        &mut self,
        service: &Arc<ServiceState>,
        configured: Listen,
        group: SocketGroup,
    ) {
        let bound = group.local_addr();
        let protocol = configured.protocol.as_str();
        tracing::info!(service = service.name(), addr = %bound, protocol, sockets = group.len(), "listening");
        let stop = service.retired().child_token();
        let done = group.serve(
            service,
            configured.addr.port(),
            &stop,
            &self.workers,
            &self.served_sockets,
            &self.connections,
        );
        self.listeners.insert(
            (service.name().to_owned(), configured),
            OpenListener { bound, stop, done },
        );
    }

    async fn close_listener(&mut self, service: &str, configured: Listen) {
        if let Some(open) = self.listeners.remove(&(service.to_owned(), configured)) {
            open.stop.cancel();
            for serve_loop in open.done {
                let _ = serve_loop.await;
            }
            let protocol = configured.protocol.as_str();
            tracing::info!(service, addr = %open.bound, protocol, "stopped listening");
        }
    }

    async fn reload(&mut self, source: ReloadSource) -> anyhow::Result<String> {
        crate::notify::reloading();
        let result = self.try_reload(source).await;
        // Applied or rejected, the service is serving again (a rejected file keeps the old config).
        crate::notify::ready();
        match &result {
            Ok(summary) => {
                self.reload_results[0].increment(1);
                tracing::info!(changes = %summary, "config reloaded");
            }
            Err(error) => {
                self.reload_results[1].increment(1);
                tracing::error!("config reload failed; the running config stays: {error:#}");
            }
        }
        result
    }

    async fn try_reload(&mut self, source: ReloadSource) -> anyhow::Result<String> {
        let new = match source {
            ReloadSource::Config(config) => *config,
            ReloadSource::File => {
                let path = self
                    .config_path
                    .clone()
                    .ok_or_else(|| anyhow!("no config file to reload from"))?;
                // File reads block: keep them off the runtime's worker threads.
                tokio::task::spawn_blocking(move || config::load(&path)).await??
            }
        };
        let changes = diff::diff(&self.config, &new);
        for setting in &changes.needs_restart {
            tracing::warn!(
                setting,
                "changed in the config file; applies only after a restart"
            );
        }

        // Free addresses that move to another service in this reload, then bind everything new
        // before touching what runs, so a bind failure leaves the running config in place.
        let to_open = addresses_to_open(&changes, &new);
        let moving: Vec<(String, Listen)> = self
            .listeners
            .keys()
            .filter(|(name, listen)| {
                // Port 0 means "any free port": it never collides.
                listen.addr.port() != 0
                    && to_open.iter().any(|(n, l)| l == listen && n != name)
                    && !to_open.contains(&(name.clone(), *listen))
            })
            .cloned()
            .collect();
        for (name, addr) in moving {
            self.close_listener(&name, addr).await;
        }
        let mut bound: HashMap<(String, Listen), SocketGroup> = HashMap::new();
        for (name, listen) in &to_open {
            let group = bind(
                name,
                *listen,
                new_service(&new, name).manage_vip,
                self.workers.count(),
            )?;
            bound.insert((name.clone(), *listen), group);
        }

        for name in &changes.removed {
            if let Some(service) = self.state.service(name) {
                service.retire();
                if service.config().manage_vip {
                    self.keep_vip_while_draining(service);
                }
            }
            let listens: Vec<Listen> = self
                .listeners
                .keys()
                .filter(|(n, _)| n == name)
                .map(|(_, l)| *l)
                .collect();
            for listen in listens {
                self.close_listener(name, listen).await;
            }
            tracing::info!(service = %name, "service removed; its connections drain");
        }
        let mut services = Vec::with_capacity(new.services.len());
        for service_config in &new.services {
            let name = &service_config.name;
            let state = if changes.added.contains(name) {
                let (state, inbox) = ServiceState::new(service_config.clone(), &self.root);
                self.control.spawn(owner::start(Arc::clone(&state), inbox));
                tracing::info!(service = %name, "service added");
                state
            } else {
                let state = self
                    .state
                    .service(name)
                    .ok_or_else(|| anyhow!("service {name:?} is not running"))?;
                if let Some(change) = changes.changed.iter().find(|c| &c.name == name) {
                    for listen in &change.listen_removed {
                        self.close_listener(name, *listen).await;
                    }
                    state.reconfigure(service_config.clone()).await?;
                }
                state
            };
            for listen in diff::listen_addrs(service_config) {
                if let Some(group) = bound.remove(&(name.clone(), listen)) {
                    self.open_listener(&state, listen, group);
                }
            }
            state.set_bound(
                diff::listen_addrs(service_config)
                    .iter()
                    .filter_map(|a| self.listeners.get(&(name.clone(), *a)).map(|l| l.bound))
                    .collect(),
            );
            services.push(state);
        }
        if let Some(records) = &self.dns_records {
            records.send_replace(Arc::new(service_records(&services)));
        }
        self.state.services.store(Arc::new(services));
        self.reconcile_vips(&new).await;
        self.workers
            .process_limit()
            .set_max(new.runtime.max_connections);
        self.config = new;
        Ok(changes.summary())
    }

    /// Keeps the VIP of a removed service until its last connection closes (its connections
    /// use the VIP as their local address), then asks the run loop to release it.
    fn keep_vip_while_draining(&mut self, service: Arc<ServiceState>) {
        let requests = self.state.reloads.clone();
        let endpoints = service.endpoints();
        self.control.spawn(async move {
            for endpoint in &endpoints {
                endpoint.idle().await;
            }
            let _ = requests.send(RunRequest::ServiceDrained).await;
        });
        self.lingering.push(service);
    }

    /// Releases the VIPs of removed services whose connections have all closed.
    async fn release_drained_vips(&mut self) {
        self.lingering.retain(|service| {
            service
                .endpoints()
                .iter()
                .any(|e| e.active_connections() > 0)
        });
        let config = self.config.clone();
        self.reconcile_vips(&config).await;
    }

    /// Makes the held VIPs those of `config` plus those of removed services still draining
    /// (adding new ones, releasing ones no longer used).
    async fn reconcile_vips(&mut self, config: &Config) {
        let lingering: Vec<config::Service> = self
            .lingering
            .iter()
            .map(|s| s.config().as_ref().clone())
            .collect();
        let mut desired = DesiredVip::from_services(&config.services);
        desired.extend(DesiredVip::from_services(&lingering));
        if self.vips.is_none() && !desired.is_empty() {
            match VipManager::new() {
                Ok(manager) => {
                    let manager = Arc::new(tokio::sync::Mutex::new(manager));
                    self.control
                        .spawn(announce_vips(Arc::clone(&manager), self.root.clone()));
                    self.vips = Some(manager);
                }
                Err(error) => {
                    tracing::error!("vip: cannot manage VIPs: {error}");
                    return;
                }
            }
        }
        if let Some(vips) = &self.vips
            && let Err(error) = vips.lock().await.apply(&desired).await
        {
            tracing::error!("vip: {error}");
        }
    }
}

/// `(service, listen address)` pairs a reload must bind.
fn addresses_to_open(changes: &Changes, new: &Config) -> Vec<(String, Listen)> {
    let mut open = Vec::new();
    for name in &changes.added {
        for listen in diff::listen_addrs(new_service(new, name)) {
            open.push((name.clone(), listen));
        }
    }
    for change in &changes.changed {
        for listen in &change.listen_added {
            open.push((change.name.clone(), *listen));
        }
    }
    open
}

fn new_service<'a>(config: &'a Config, name: &str) -> &'a config::Service {
    config
        .services
        .iter()
        .find(|s| s.name == name)
        .expect("diff names services of the new config")
}

/// Binds every listener of `service` (a group of `sockets` per address), keyed by configured
/// address.
fn bind_service(
    service: &config::Service,
    sockets: usize,
) -> anyhow::Result<Vec<(Listen, SocketGroup)>> {
    diff::listen_addrs(service)
        .into_iter()
        .map(|listen| {
            Ok((
                listen,
                bind(&service.name, listen, service.manage_vip, sockets)?,
            ))
        })
        .collect()
}

fn bind(
    service: &str,
    listen: Listen,
    manage_vip: bool,
    sockets: usize,
) -> anyhow::Result<SocketGroup> {
    // A managed VIP may not be on its interface yet: IP_FREEBIND lets the bind succeed anyway.
    SocketGroup::bind(listen, manage_vip, sockets)
        .with_context(|| format!("service \"{service}\": cannot listen on {listen}"))
}

/// The DNS records of `services`, with the ports actually bound.
fn service_records(services: &[Arc<ServiceState>]) -> ServiceRecords {
    ServiceRecords::new(services.iter().map(|s| {
        let config = s.config();
        let ports = config
            .ports
            .iter()
            .zip(s.bound())
            .map(|(p, addr)| (p.name.clone(), p.protocol, addr.port()))
            .collect();
        let replicas: Arc<dyn dns::Replicas> = Arc::clone(s) as _;
        (s.name().to_owned(), config.vip, ports, Some(replicas))
    }))
}

/// Re-announces held VIPs periodically (gratuitous ARP / unsolicited NA) until `stop`.
async fn announce_vips(vips: Arc<tokio::sync::Mutex<VipManager>>, stop: CancellationToken) {
    let mut every = tokio::time::interval(crate::vip::ANNOUNCE_PERIOD);
    // The first tick is immediate, and apply() announced already.
    every.tick().await;
    loop {
        tokio::select! {
            _ = every.tick() => vips.lock().await.announce_all(),
            _ = stop.cancelled() => break,
        }
    }
}

fn reload_counters() -> [Counter; 2] {
    [
        metrics::counter!(crate::metrics::CONFIG_RELOADS_TOTAL, "result" => "success"),
        metrics::counter!(crate::metrics::CONFIG_RELOADS_TOTAL, "result" => "failure"),
    ]
}

/// Logs "ready" once every service finished its first health round.
async fn announce_ready(state: Arc<AppState>, shutdown: CancellationToken) {
    let first_round = async {
        for service in state.services().iter() {
            service.wait_first_round().await;
        }
    };
    tokio::select! {
        _ = first_round => {
            tracing::info!(services = state.services().len(), "ready");
            crate::notify::ready();
        }
        _ = shutdown.cancelled() => {}
    }
}

/// Requests a reload whenever the file's content changes (`--watch`). Reading the whole file
/// is cheap for a config and catches editors that replace the file instead of writing it.
async fn watch_config_file(
    path: PathBuf,
    mut last: Option<Vec<u8>>,
    trigger: ReloadTrigger,
    shutdown: CancellationToken,
) {
    let mut ticker = tokio::time::interval(WATCH_INTERVAL);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = ticker.tick() => {}
        }
        let now = tokio::fs::read(&path).await.ok();
        if now.is_some() && now != last {
            tracing::info!(path = %path.display(), "config file changed");
            trigger.request();
            last = now;
        }
    }
}
