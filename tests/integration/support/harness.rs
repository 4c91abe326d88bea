//! A vipd running in this test process, built from a typed config with port 0 listeners.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use vipd::app::{App, AppState};
use vipd::config::{
    Admin, Balance, Config, ConnectionSettings, EndpointSpec, Health, HealthCheck, OnMarkedDown,
    Protocol, Runtime, Service, ServicePort, SessionAffinity, WhenAllUnhealthy,
};
use vipd::service::ServiceState;

use super::within;

/// A one-port TCP service named `name` on 127.0.0.1:0 over `endpoints`, with no active checks.
pub fn service(name: &str, endpoints: &[SocketAddr]) -> Service {
    Service {
        name: name.to_owned(),
        vip: IpAddr::V4(Ipv4Addr::LOCALHOST),
        ports: vec![ServicePort {
            port: 0,
            target_port: 0,
            protocol: Protocol::Tcp,
            name: None,
            accept_proxy_protocol: false,
        }],
        endpoints: endpoints
            .iter()
            .map(|a| EndpointSpec::new(a.ip(), Some(a.port())))
            .collect(),
        balance: Balance::RoundRobin,
        session_affinity: SessionAffinity::None,
        slow_start: None,
        when_all_unhealthy: WhenAllUnhealthy::FailOpen,
        on_marked_down: OnMarkedDown::Keep,
        health: Health {
            check: HealthCheck::None,
            ..Health::default()
        },
        connection: ConnectionSettings::default(),
        discovery: None,
        outlier: None,
        manage_vip: false,
        vip_interface: "lo".to_owned(),
        max_udp_flows: Service::DEFAULT_MAX_UDP_FLOWS,
        max_connections: None,
        max_connections_per_endpoint: None,
        proxy_protocol: None,
        proxy_protocol_trusted: Vec::new(),
    }
}

/// Sets active health checks on `service`.
pub fn with_health(mut service: Service, check: HealthCheck, period: Duration) -> Service {
    service.health = Health {
        check,
        port: None,
        period,
        // Tests count probes in periods: keep them exact.
        jitter: 0.0,
        timeout: period / 2,
        failure_threshold: NonZeroU32::new(2).unwrap(),
        success_threshold: NonZeroU32::new(1).unwrap(),
    };
    service
}

/// A config of `services`, with an admin server on 127.0.0.1:0 when `admin`.
pub fn config(services: Vec<Service>, admin: bool) -> Config {
    Config {
        runtime: Runtime {
            workers: None,
            max_connections: None,
        },
        admin: admin.then(|| Admin {
            listen: "127.0.0.1:0".parse().unwrap(),
            token: None,
        }),
        dns: None,
        services,
    }
}

/// A running vipd.
pub struct Running {
    /// Cancelling it starts the shutdown.
    pub shutdown: CancellationToken,
    /// Services, phase, status.
    pub state: Arc<AppState>,
    /// The admin address, when started with one.
    pub admin: Option<SocketAddr>,
    /// The DNS server's address (UDP and TCP), when the config has `[dns]`.
    pub dns: Option<SocketAddr>,
    task: Option<JoinHandle<anyhow::Result<()>>>,
}

impl Running {
    /// Binds and runs `services` (and an admin server on 127.0.0.1:0 when `admin`).
    pub async fn start(services: Vec<Service>, admin: bool) -> Running {
        Self::start_config(config(services, admin)).await
    }

    /// Binds and runs `config`.
    pub async fn start_config(config: Config) -> Running {
        let app = App::bind(config).await.expect("bind vipd");
        let state = app.state();
        let admin = app.admin_addr();
        let dns = app.dns_addr();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(app.run(shutdown.clone()));
        within("serving", state.reached(vipd::app::Phase::Serving)).await;
        Running {
            shutdown,
            state,
            admin,
            dns,
            task: Some(task),
        }
    }

    /// The service called `name`.
    pub fn service(&self, name: &str) -> Arc<ServiceState> {
        self.state.service(name).expect("service exists")
    }

    /// The listen address of the first port of service `name`.
    pub fn addr(&self, name: &str) -> SocketAddr {
        self.service(name).bound()[0]
    }

    /// Waits until every service finished its first health round.
    pub async fn ready(&self) {
        for service in self.state.services().iter() {
            within("first health round", service.wait_first_round()).await;
        }
    }

    /// Cancels and waits for `run` to return.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        let task = self.task.take().expect("running");
        within("vipd to stop", task).await.expect("run task")
    }

    /// Waits for `run` to return after someone else cancelled.
    pub async fn finished(mut self) -> anyhow::Result<()> {
        let task = self.task.take().expect("running");
        within("vipd to stop", task).await.expect("run task")
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}
