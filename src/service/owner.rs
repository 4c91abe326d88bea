//! The owner task of one service: probes every endpoint every `health.period`, feeds results
//! through each endpoint's [`HealthState`], and on a flip updates the endpoint and publishes a
//! new snapshot. Being the only writer keeps every snapshot consistent.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::{MissedTickBehavior, interval};
use tokio_util::sync::CancellationToken;

use super::{HealthEvent, ServiceState};
use crate::config::{Health, HealthCheck};
use crate::health::{HealthState, ProbeError, probe};

/// One probe result: which endpoint (index into the service's endpoints) and how it went.
type ProbeReport = (usize, Result<(), ProbeError>);

/// Runs health checking for `service` until `shutdown` is cancelled.
pub async fn run(service: Arc<ServiceState>, shutdown: CancellationToken) {
    let health = service.config.health.clone();
    if health.check == HealthCheck::None || service.endpoints().is_empty() {
        service.mark_first_round_done();
        return;
    }
    let endpoints = service.endpoints();
    let (reports_tx, mut reports) = mpsc::channel::<ProbeReport>(endpoints.len() * 2);
    // Dropping the set (when this task ends) aborts every probe loop.
    let mut probes = JoinSet::new();
    for (index, endpoint) in endpoints.iter().enumerate() {
        let target = probe_target(endpoint.addr(), &health);
        probes.spawn(probe_loop(
            index,
            target,
            health.clone(),
            reports_tx.clone(),
            shutdown.clone(),
        ));
    }
    drop(reports_tx);

    let mut states: Vec<HealthState> = endpoints
        .iter()
        .map(|_| HealthState::new(health.success_threshold, health.failure_threshold))
        .collect();
    let mut probed = vec![false; endpoints.len()];
    let mut unprobed = endpoints.len();

    loop {
        let (index, result) = tokio::select! {
            _ = shutdown.cancelled() => return,
            report = reports.recv() => match report {
                Some(report) => report,
                None => return,
            },
        };
        let endpoint = &endpoints[index];
        match &result {
            Ok(()) => endpoint.metrics.checks_succeeded.increment(1),
            Err(error) => {
                endpoint.metrics.checks_failed.increment(1);
                tracing::debug!(service = service.name(), endpoint = %endpoint.addr(), %error, "health check failed");
            }
        }
        if let Some(healthy) = states[index].observe(result.is_ok()) {
            endpoint.set_healthy(healthy);
            service.publish();
            let healthy_endpoints: Vec<SocketAddr> = endpoints
                .iter()
                .filter(|e| e.is_healthy())
                .map(|e| e.addr())
                .collect();
            match &result {
                Ok(()) => tracing::info!(
                    service = service.name(),
                    endpoint = %endpoint.addr(),
                    healthy = healthy_endpoints.len(),
                    total = endpoints.len(),
                    "endpoint marked up"
                ),
                Err(error) => tracing::info!(
                    service = service.name(),
                    endpoint = %endpoint.addr(),
                    %error,
                    healthy = healthy_endpoints.len(),
                    total = endpoints.len(),
                    "endpoint marked down"
                ),
            }
            if healthy_endpoints.is_empty() {
                tracing::warn!(
                    service = service.name(),
                    "no healthy endpoint: connections are spread over all endpoints (fail open)"
                );
            }
            service.announce(HealthEvent {
                endpoint: endpoint.addr(),
                healthy,
                healthy_endpoints,
            });
        }
        if !probed[index] {
            probed[index] = true;
            unprobed -= 1;
            if unprobed == 0 {
                service.mark_first_round_done();
            }
        }
    }
}

/// Where to probe an endpoint: its own address, or its IP with the configured probe port.
fn probe_target(endpoint: SocketAddr, health: &Health) -> SocketAddr {
    SocketAddr::new(endpoint.ip(), health.port.unwrap_or(endpoint.port()))
}

/// Probes one endpoint every period (the first at once) and reports each result.
async fn probe_loop(
    index: usize,
    target: SocketAddr,
    health: Health,
    reports: mpsc::Sender<ProbeReport>,
    shutdown: CancellationToken,
) {
    let mut ticker = interval(health.period);
    // A slow probe delays the next one instead of firing a burst to catch up.
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = ticker.tick() => {}
        }
        let result = tokio::select! {
            _ = shutdown.cancelled() => return,
            result = probe(&health.check, target, health.timeout) => result,
        };
        if reports.send((index, result)).await.is_err() {
            return;
        }
    }
}
