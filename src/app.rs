//! Building and running vipd from a validated config.
//!
//! [`App::bind`] binds every listener (so tests can bind port 0 and read the real addresses
//! back) and [`App::run`] serves until a cancellation token fires, then drains.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::proxy::{listener, tcp};
use crate::service::{ServiceState, owner};
use crate::status::{Status, StatusSource};

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

/// Shared view of the running services, for the admin server and tests.
#[derive(Debug)]
pub struct AppState {
    services: Vec<Arc<ServiceState>>,
    phase: watch::Sender<Phase>,
}

impl AppState {
    /// Every service, in config order.
    pub fn services(&self) -> &[Arc<ServiceState>] {
        &self.services
    }

    /// The service called `name`.
    pub fn service(&self, name: &str) -> Option<&Arc<ServiceState>> {
        self.services.iter().find(|s| s.name() == name)
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
}

impl StatusSource for AppState {
    fn ready(&self) -> bool {
        self.phase() == Phase::Serving && self.services.iter().all(|s| s.first_round_done())
    }

    fn status(&self) -> Status {
        Status {
            services: self.services.iter().map(|s| s.status()).collect(),
        }
    }
}

/// A bound, not yet running vipd.
#[derive(Debug)]
pub struct App {
    state: Arc<AppState>,
    listeners: Vec<(Arc<ServiceState>, usize, TcpListener)>,
    admin: Option<TcpListener>,
}

impl App {
    /// Builds service state and binds every listener of `config` (port 0 binds an ephemeral
    /// port). Nothing is served until [`App::run`].
    pub async fn bind(config: Config) -> anyhow::Result<App> {
        crate::metrics::install();
        // Registered up front so dashboards and alerts see 0 rather than no series.
        ::metrics::counter!(crate::metrics::CONFIG_RELOADS_TOTAL, "result" => "success")
            .increment(0);
        ::metrics::counter!(crate::metrics::CONFIG_RELOADS_TOTAL, "result" => "failure")
            .increment(0);
        let admin = match &config.admin {
            Some(admin) => Some(
                listener::bind_tcp(admin.listen)
                    .with_context(|| format!("admin: cannot listen on {}", admin.listen))?,
            ),
            None => None,
        };
        let mut services = Vec::new();
        let mut listeners = Vec::new();
        for service_config in config.services {
            let service = ServiceState::new(service_config);
            let mut bound = Vec::new();
            for (index, port) in service.config.ports.iter().enumerate() {
                let addr = SocketAddr::new(service.config.vip, port.port);
                let socket = listener::bind_tcp(addr).with_context(|| {
                    format!("service \"{}\": cannot listen on {addr}", service.name())
                })?;
                bound.push(socket.local_addr()?);
                listeners.push((Arc::clone(&service), index, socket));
            }
            service.set_bound(bound);
            services.push(service);
        }
        Ok(App {
            state: Arc::new(AppState {
                services,
                phase: watch::Sender::new(Phase::Bound),
            }),
            listeners,
            admin,
        })
    }

    /// Shared state (status, services) of this app.
    pub fn state(&self) -> Arc<AppState> {
        Arc::clone(&self.state)
    }

    /// The bound addresses of service `name`, one per port in config order.
    pub fn service_addrs(&self, name: &str) -> Option<Vec<SocketAddr>> {
        self.state.service(name).map(|s| s.bound().to_vec())
    }

    /// The bound admin address.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// Serves until `shutdown` is cancelled; then closes listeners at once, lets established
    /// connections finish within their service's `drain_timeout`, and returns.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let connections = TaskTracker::new();
        let accept_loops = TaskTracker::new();
        let control = TaskTracker::new();
        // The admin server outlives the drain so /metrics and /status stay readable meanwhile.
        let admin_stop = CancellationToken::new();
        control.spawn(crate::metrics::run_upkeep(admin_stop.clone()));
        // The watchdog keeps going through the drain, which may outlast WatchdogSec.
        control.spawn(crate::notify::run_watchdog(admin_stop.clone()));
        if let Some(admin) = self.admin {
            let source: Arc<dyn StatusSource> = self.state.clone();
            control.spawn(crate::admin::serve(admin, source, admin_stop.clone()));
        }
        for service in self.state.services() {
            control.spawn(owner::run(Arc::clone(service), shutdown.clone()));
        }
        for (service, port_index, socket) in self.listeners {
            let addr = socket.local_addr()?;
            tracing::info!(service = service.name(), %addr, "listening");
            accept_loops.spawn(tcp::serve(
                socket,
                service,
                port_index,
                shutdown.clone(),
                connections.clone(),
            ));
        }
        self.state.enter(Phase::Serving);
        let state = Arc::clone(&self.state);
        let stop_waiting = shutdown.clone();
        control.spawn(async move {
            let first_round = async {
                for service in state.services() {
                    service.wait_first_round().await;
                }
            };
            tokio::select! {
                _ = first_round => {
                    tracing::info!(services = state.services().len(), "ready");
                    crate::notify::ready();
                }
                _ = stop_waiting.cancelled() => {}
            }
        });

        shutdown.cancelled().await;
        crate::notify::stopping();
        // Every accept loop watches the same token; once they are done no listener is open.
        accept_loops.close();
        accept_loops.wait().await;
        self.state.enter(Phase::Draining);
        connections.close();
        tracing::info!(
            connections = connections.len(),
            "listeners closed; draining established connections"
        );
        connections.wait().await;
        self.state.enter(Phase::Stopped);
        tracing::info!("all connections closed; stopping");
        admin_stop.cancel();
        control.close();
        control.wait().await;
        Ok(())
    }
}
