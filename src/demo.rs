//! `vipd demo`: vipd's main job on a fresh machine with nothing else installed.
//!
//! Three in-process HTTP backends (each answers with its own name and serves `/healthz`), one
//! service in front of them with HTTP health checks, and the admin server. Every ~10 s one
//! backend stops for a while and comes back, and the log shows what vipd did about it.

use std::convert::Infallible;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::num::NonZeroU32;
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::time::sleep;
use tokio_util::sync::CancellationToken;

use crate::app::App;
use crate::config::{
    Admin, Balance, Config, ConnectionSettings, EndpointSpec, Health, HealthCheck, OnMarkedDown,
    Protocol, Runtime, Service, ServicePort, SessionAffinity, WhenAllUnhealthy,
};
use crate::proxy::listener::bind_tcp;
use crate::service::Change;

/// The demo service's name.
const SERVICE: &str = "demo";
/// Time between two backend outages.
const OUTAGE_EVERY: Duration = Duration::from_secs(10);
/// How long a backend stays down.
const OUTAGE_LENGTH: Duration = Duration::from_secs(6);
const LOCALHOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

/// Ports the demo uses on 127.0.0.1.
#[derive(Debug, Clone, Copy)]
pub struct Ports {
    /// The demo service.
    pub service: u16,
    /// The admin server.
    pub admin: u16,
    /// The first of three consecutive backend ports.
    pub first_backend: u16,
}

/// The demo's config: one HTTP-checked service over three loopback backends.
pub fn config(ports: Ports) -> Config {
    let endpoints = (0..3)
        .map(|i| EndpointSpec::new(LOCALHOST, Some(ports.first_backend + i)))
        .collect();
    Config {
        runtime: Runtime {
            workers: None,
            max_connections: None,
        },
        admin: Some(Admin {
            listen: SocketAddr::new(LOCALHOST, ports.admin),
            token: None,
        }),
        dns: None,
        services: vec![Service {
            name: SERVICE.to_owned(),
            vip: LOCALHOST,
            ports: vec![ServicePort {
                port: ports.service,
                target_port: ports.first_backend,
                protocol: Protocol::Tcp,
                name: Some("http".to_owned()),
                accept_proxy_protocol: false,
            }],
            endpoints,
            balance: Balance::RoundRobin,
            session_affinity: SessionAffinity::None,
            slow_start: None,
            when_all_unhealthy: WhenAllUnhealthy::FailOpen,
            on_marked_down: OnMarkedDown::Keep,
            health: Health {
                check: HealthCheck::http("/healthz"),
                port: None,
                period: Duration::from_secs(1),
                jitter: Health::DEFAULT_JITTER,
                timeout: Duration::from_millis(500),
                failure_threshold: NonZeroU32::new(2).expect("non-zero"),
                success_threshold: NonZeroU32::new(1).expect("non-zero"),
            },
            connection: ConnectionSettings {
                drain_timeout: Duration::from_secs(2),
                ..ConnectionSettings::default()
            },
            discovery: None,
            outlier: None,
            manage_vip: false,
            vip_interface: "lo".to_owned(),
            max_udp_flows: Service::DEFAULT_MAX_UDP_FLOWS,
            max_connections: None,
            max_connections_per_endpoint: None,
            proxy_protocol: None,
            proxy_protocol_trusted: Vec::new(),
        }],
    }
}

/// Runs the demo until `shutdown` is cancelled.
pub async fn run(ports: Ports, shutdown: CancellationToken) -> anyhow::Result<()> {
    let backends: Vec<Backend> = (0..3)
        .map(|i| Backend {
            name: format!("backend-{}", i + 1),
            addr: SocketAddr::new(LOCALHOST, ports.first_backend + i),
        })
        .collect();
    let mut running = Vec::new();
    for backend in &backends {
        running.push(backend.start()?);
    }
    let app = App::bind(config(ports))
        .await
        .context("demo: cannot bind (is another demo running? try --port/--admin-port)")?;
    let service_addr = app.service_addrs(SERVICE).expect("demo service")[0];
    let admin_addr = app.admin_addr().expect("demo admin");
    let state = app.state();
    let backend_list: Vec<String> = backends.iter().map(|b| b.addr.to_string()).collect();
    println!(
        "\nvipd demo: service \"{SERVICE}\" on {service_addr} → {}\n\n\
         Try:\n  \
         curl http://{service_addr}/          # again and again: the answer rotates over the backends\n  \
         curl http://{admin_addr}/status\n  \
         curl http://{admin_addr}/metrics\n\n\
         Every {}s one backend stops for {}s and comes back; the log shows vipd marking it down,\n\
         moving traffic, and marking it up. Ctrl-C to stop.\n",
        backend_list.join(", "),
        OUTAGE_EVERY.as_secs(),
        OUTAGE_LENGTH.as_secs(),
    );

    // Narrate what vipd did after each flip.
    let service = state.service(SERVICE).expect("demo service");
    let mut events = service.subscribe();
    let narrate = shutdown.clone();
    tokio::spawn(async move {
        loop {
            let event = tokio::select! {
                _ = narrate.cancelled() => return,
                event = events.recv() => event,
            };
            let Ok(event) = event else { continue };
            let what = match event.change {
                Change::Up => "back",
                Change::Down => "out",
                _ => continue,
            };
            let now: Vec<String> = event.in_rotation.iter().map(ToString::to_string).collect();
            tracing::info!(
                "demo: {} is {what}; new connections now go to {}",
                event.endpoint,
                now.join(", ")
            );
        }
    });

    let chaos = shutdown.clone();
    let outages = async move {
        let mut next = 0;
        loop {
            tokio::select! {
                _ = chaos.cancelled() => return,
                _ = sleep(OUTAGE_EVERY) => {}
            }
            let backend = &backends[next];
            tracing::info!(
                "demo: stopping {} ({}) for {}s",
                backend.name,
                backend.addr,
                OUTAGE_LENGTH.as_secs()
            );
            running[next].cancel();
            tokio::select! {
                _ = chaos.cancelled() => return,
                _ = sleep(OUTAGE_LENGTH) => {}
            }
            match backend.start() {
                Ok(token) => {
                    tracing::info!("demo: {} ({}) is back", backend.name, backend.addr);
                    running[next] = token;
                }
                Err(error) => tracing::warn!("demo: cannot restart {}: {error:#}", backend.name),
            }
            next = (next + 1) % backends.len();
        }
    };
    tokio::spawn(outages);
    app.run(shutdown).await
}

/// One in-process HTTP backend.
struct Backend {
    name: String,
    addr: SocketAddr,
}

impl Backend {
    /// Binds and serves in the background; cancelling the token closes the listener and every
    /// connection, as a crashed replica would.
    fn start(&self) -> anyhow::Result<CancellationToken> {
        let listener = bind_tcp(self.addr)
            .with_context(|| format!("demo: cannot listen on {} for {}", self.addr, self.name))?;
        let stop = CancellationToken::new();
        let token = stop.clone();
        let greeting = Bytes::from(format!("hello from {} ({})\n", self.name, self.addr));
        tokio::spawn(async move {
            loop {
                let (stream, _) = tokio::select! {
                    _ = stop.cancelled() => return,
                    accepted = listener.accept() => match accepted {
                        Ok(accepted) => accepted,
                        Err(_) => continue,
                    },
                };
                let greeting = greeting.clone();
                let stop = stop.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(
                        move |request: Request<hyper::body::Incoming>| {
                            let greeting = greeting.clone();
                            async move { Ok::<_, Infallible>(answer(&request, greeting)) }
                        },
                    );
                    let connection = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service);
                    tokio::select! {
                        _ = connection => {}
                        _ = stop.cancelled() => {}
                    }
                });
            }
        });
        Ok(token)
    }
}

fn answer(request: &Request<hyper::body::Incoming>, greeting: Bytes) -> Response<Full<Bytes>> {
    let (status, body) = match request.uri().path() {
        "/healthz" => (StatusCode::OK, Bytes::from_static(b"ok\n")),
        _ => (StatusCode::OK, greeting),
    };
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = status;
    response
}
