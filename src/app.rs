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

use crate::config::{self, Config};
use crate::dns::{self, ServiceRecords};
use crate::proxy::{listener, tcp};
use crate::service::{ServiceState, owner};
use crate::status::{Status, StatusSource};
use crate::vip::{DesiredVip, VipManager};

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
    dns: Option<DnsBound>,
    vips: Option<VipManager>,
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

impl App {
    /// Builds service state and binds every listener of `config` (port 0 binds an ephemeral
    /// port). Nothing is served until [`App::run`].
    pub async fn bind(config: Config) -> anyhow::Result<App> {
        crate::metrics::install();
        let admin = match &config.admin {
            Some(admin) => Some(
                listener::bind_tcp(admin.listen)
                    .with_context(|| format!("admin: cannot listen on {}", admin.listen))?,
            ),
            None => None,
        };
        // Listeners of managed VIPs bind with IP_FREEBIND, so the VIPs can be added last: a
        // failure before then leaves no address behind.
        let desired_vips = DesiredVip::from_services(&config.services);
        let mut services = Vec::new();
        let mut listeners = Vec::new();
        for service_config in config.services {
            let service = ServiceState::new(service_config);
            let mut bound = Vec::new();
            for (index, port) in service.config.ports.iter().enumerate() {
                let addr = SocketAddr::new(service.config.vip, port.port);
                let socket = listener::bind_tcp_with(addr, service.config.manage_vip)
                    .with_context(|| {
                        format!("service \"{}\": cannot listen on {addr}", service.name())
                    })?;
                bound.push(socket.local_addr()?);
                listeners.push((Arc::clone(&service), index, socket));
            }
            service.set_bound(bound);
            services.push(service);
        }
        let dns = match config.dns {
            Some(settings) => {
                let (udp, tcp) = dns::bind(settings.listen).await?;
                let records = watch::Sender::new(Arc::new(service_records(&services)));
                Some(DnsBound {
                    udp,
                    tcp,
                    settings,
                    records,
                })
            }
            None => None,
        };
        let vips = if desired_vips.is_empty() {
            None
        } else {
            let mut vips = VipManager::new()?;
            if let Err(e) = vips.apply(&desired_vips).await {
                // Whatever was added before the failure goes again.
                vips.release_all().await;
                return Err(e.into());
            }
            Some(vips)
        };
        Ok(App {
            state: Arc::new(AppState {
                services,
                phase: watch::Sender::new(Phase::Bound),
            }),
            listeners,
            admin,
            dns,
            vips,
        })
    }

    /// The bound DNS address (UDP and TCP).
    pub fn dns_addr(&self) -> Option<SocketAddr> {
        self.dns.as_ref().and_then(|d| d.udp.local_addr().ok())
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
        if let Some(admin) = self.admin {
            let source: Arc<dyn StatusSource> = self.state.clone();
            control.spawn(crate::admin::serve(admin, source, admin_stop.clone()));
        }
        // Kept until shutdown: dropping it would freeze the records the server answers from.
        let mut _dns_records = None;
        if let Some(dns) = self.dns {
            let addr = dns.udp.local_addr()?;
            tracing::info!(%addr, zone = %dns.settings.zone, "dns: serving");
            control.spawn(dns::serve(
                dns.udp,
                dns.tcp,
                dns.settings,
                dns.records.subscribe(),
                admin_stop.clone(),
            ));
            _dns_records = Some(dns.records);
        }
        let vips = self.vips.map(|v| Arc::new(tokio::sync::Mutex::new(v)));
        if let Some(vips) = &vips {
            let (vips, stop) = (Arc::clone(vips), shutdown.clone());
            control.spawn(async move {
                let mut every = tokio::time::interval(crate::vip::ANNOUNCE_PERIOD);
                // The first tick is immediate, and apply() announced already.
                every.tick().await;
                loop {
                    tokio::select! {
                        _ = every.tick() => vips.lock().await.announce_all(),
                        _ = stop.cancelled() => break,
                    }
                }
            });
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
                _ = first_round => tracing::info!(services = state.services().len(), "ready"),
                _ = stop_waiting.cancelled() => {}
            }
        });

        shutdown.cancelled().await;
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
        if let Some(vips) = &vips {
            vips.lock().await.release_all().await;
        }
        self.state.enter(Phase::Stopped);
        tracing::info!("all connections closed; stopping");
        admin_stop.cancel();
        control.close();
        control.wait().await;
        Ok(())
    }
}

/// DNS records of `services` with the ports actually bound (which differ from the config's
/// when it asked for port 0).
fn service_records(services: &[Arc<ServiceState>]) -> ServiceRecords {
    ServiceRecords::new(services.iter().map(|s| {
        let ports = s
            .config
            .ports
            .iter()
            .zip(s.bound())
            .map(|(p, addr)| (p.name.clone(), p.protocol, addr.port()))
            .collect();
        (s.name().to_owned(), s.config.vip, ports)
    }))
}
