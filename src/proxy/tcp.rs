//! TCP data path: the accept loop of one service port, and per connection: pick, connect with
//! failover over distinct endpoints, then forward until done, idle, or the drain deadline.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use socket2::SockRef;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::time::{Instant, sleep, timeout};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::copy::{self, ByteCounters, CopyEnd, Limits};
use crate::balance::affinity_timeout;
use crate::config::Protocol;
use crate::service::ServiceState;
use crate::service::endpoint::ActiveConnection;

/// First back-off after an accept error that will not clear by itself at once (e.g. EMFILE).
const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(5);
/// Longest back-off between accept attempts.
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// Accepts connections for the service port configured as `port` until `stop` is cancelled,
/// then drops the listener so new connections are refused at once. Connection tasks are spawned
/// on `tracker` and finish on their own or at their drain deadline.
///
/// The socket is registered with the runtime this runs on, so a data-plane worker that runs
/// the loop also runs every connection it accepts.
pub async fn serve(
    listener: std::net::TcpListener,
    service: Arc<ServiceState>,
    port: u16,
    stop: CancellationToken,
    tracker: TaskTracker,
) {
    let listener = match TcpListener::from_std(listener) {
        Ok(listener) => listener,
        Err(error) => {
            tracing::error!(service = service.name(), %error, "cannot serve a listening socket");
            return;
        }
    };
    // Accepted sockets inherit TCP_NODELAY from the listener on Linux: one syscall here
    // instead of one per connection. Small writes should not wait on Nagle: the client's own
    // stack already decided when to send.
    let nodelay_inherited =
        cfg!(target_os = "linux") && SockRef::from(&listener).set_tcp_nodelay(true).is_ok();
    let mut backoff = ACCEPT_BACKOFF_MIN;
    loop {
        let accepted = tokio::select! {
            _ = stop.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((client, _)) => {
                backoff = ACCEPT_BACKOFF_MIN;
                if !nodelay_inherited {
                    let _ = client.set_nodelay(true);
                }
                // `handle` itself is the task: no wrapping future holding a second copy of
                // its arguments for the connection's whole life.
                tracker.spawn(handle(client, Arc::clone(&service), port));
            }
            Err(error) => {
                service.metrics.accept_errors.increment(1);
                if is_transient_for_peer(&error) {
                    // The peer gave up before we accepted: nothing to wait for.
                    tracing::debug!(service = service.name(), %error, "accept failed");
                    continue;
                }
                // Out of descriptors or memory: accepting again at once would spin. Wait for
                // connections to close, growing the pause while the condition lasts.
                tracing::warn!(service = service.name(), %error, pause = ?backoff, "accept failed; pausing");
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(ACCEPT_BACKOFF_MAX);
            }
        }
    }
    tracing::debug!(service = service.name(), "listener closed");
}

/// Accept errors caused by one peer rather than by the process's resources.
fn is_transient_for_peer(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::Interrupted
            | io::ErrorKind::WouldBlock
    )
}

/// Serves one client connection from start to end.
///
/// A plain function returning an `async move` block rather than an `async fn`: an `async fn`
/// keeps its arguments twice in its state, and this state is what every open connection costs.
#[allow(
    clippy::manual_async_fn,
    reason = "an async fn would store its arguments twice"
)]
fn handle(
    mut client: TcpStream,
    service: Arc<ServiceState>,
    port: u16,
) -> impl Future<Output = ()> {
    async move {
        let service = &*service;
        let Some((active, mut upstream, settings)) = connect(service, port, &client).await else {
            service.metrics.connections_failed.increment(1);
            tracing::debug!(service = service.name(), peer = ?client.peer_addr().ok(), "no endpoint reachable; closing client connection");
            return;
        };
        let endpoint = active.endpoint();
        let counters = ByteCounters {
            inbound: &endpoint.metrics.bytes_in,
            outbound: &endpoint.metrics.bytes_out,
        };
        // The connection drains when its endpoint leaves the service or the service stops
        // (reload, shutdown): it may run on for `drain_timeout`, then it is closed.
        let drain = endpoint.drain_token();
        let limits = Limits {
            idle_timeout: settings.idle_timeout,
            drain: Some((&drain, settings.drain_timeout)),
        };
        // The peer address is not kept for the connection's life (it is state every open
        // connection would carry); logs ask the socket for it.
        match copy::bidirectional(&mut client, &mut upstream, limits, counters).await {
            Ok(CopyEnd::Complete) => {}
            Ok(CopyEnd::Idle) => {
                tracing::debug!(service = service.name(), peer = ?client.peer_addr().ok(), endpoint = %endpoint.addr(), "idle timeout")
            }
            Ok(CopyEnd::Drained) => {
                tracing::debug!(service = service.name(), peer = ?client.peer_addr().ok(), endpoint = %endpoint.addr(), "drain deadline reached; closing")
            }
            Err(error) => {
                tracing::debug!(service = service.name(), peer = ?client.peer_addr().ok(), endpoint = %endpoint.addr(), %error, "connection error")
            }
        }
    }
}

/// The timeouts a connection keeps once connected (a copy: the snapshot is not held for the
/// connection's life).
#[derive(Debug, Clone, Copy)]
struct Timeouts {
    idle_timeout: Duration,
    drain_timeout: Duration,
}

/// Picks and connects to an endpoint of the port for `client`, trying up to
/// `max_connect_attempts` distinct endpoints in the tier's order from the pick. Returns `None`
/// when every attempt failed, or no endpoint may be used.
async fn connect(
    service: &ServiceState,
    port: u16,
    client: &TcpStream,
) -> Option<(ActiveConnection, TcpStream, Timeouts)> {
    let snapshot = service.snapshot();
    let pool = service.placement_pool(&snapshot, Protocol::Tcp, port)?;
    let candidates = pool.tier.candidates();
    let settings = &snapshot.config.connection;
    let timeouts = Timeouts {
        idle_timeout: settings.idle_timeout,
        drain_timeout: settings.drain_timeout,
    };
    // Asked of the socket only when a pick reads it: it is not kept per connection.
    let client_ip = if pool.needs_client {
        client.peer_addr().ok().map(|a| a.ip())
    } else {
        None
    };
    let first = pool.first(
        client_ip,
        affinity_timeout(snapshot.config.session_affinity),
    );
    let attempts = (settings.max_connect_attempts.get() as usize).min(candidates.len());
    for offset in 0..attempts {
        let endpoint = &candidates[(first + offset) % candidates.len()].endpoint;
        let socket = match new_socket(endpoint.addr()) {
            Ok(socket) => socket,
            Err(error) => {
                // Out of descriptors or memory here: not the endpoint's fault, and no other
                // endpoint would fare better.
                tracing::debug!(service = service.name(), %error, "cannot create an upstream socket");
                return None;
            }
        };
        let attempt = endpoint.attempt();
        let started = Instant::now();
        match timeout(settings.connect_timeout, socket.connect(endpoint.addr())).await {
            Ok(Ok(stream)) => {
                endpoint.record_connect_success();
                service
                    .metrics
                    .connect_duration
                    .record(started.elapsed().as_secs_f64());
                pool.remember(client_ip, endpoint);
                return Some((attempt.established(), stream, timeouts));
            }
            Ok(Err(error)) => {
                service.connect_failed(&snapshot, endpoint);
                tracing::debug!(service = service.name(), endpoint = %endpoint.addr(), %error, "connect failed; trying the next endpoint");
            }
            Err(_) => {
                service.connect_failed(&snapshot, endpoint);
                tracing::debug!(service = service.name(), endpoint = %endpoint.addr(), timeout = ?settings.connect_timeout, "connect timed out; trying the next endpoint");
            }
        }
    }
    None
}

/// A socket for a connect to `addr`, with the options every upstream connection gets.
fn new_socket(addr: SocketAddr) -> io::Result<TcpSocket> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_nodelay(true)?;
    Ok(socket)
}
