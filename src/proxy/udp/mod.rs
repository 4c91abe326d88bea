//! UDP data path: one serve loop per worker socket of a UDP service port.
//!
//! Datagrams from one client address form a flow pinned to one endpoint, chosen by the
//! service's placement when the first datagram arrives. Each flow has an upstream socket of its
//! own, connected to the endpoint: client datagrams go out on it, and the endpoint's replies,
//! read from it, go back to the client from the service port's socket, so the client hears the
//! VIP:port it asked. The loop is one task that owns its [`flows::FlowTable`] outright; it reads
//! the listening socket and the upstream sockets that [`ready::ReadySet`] reports readable, with
//! one preallocated 64 KiB buffer: no lock, no allocation and no task per datagram or flow.
//!
//! Before a client datagram is forwarded, a flow whose endpoint left rotation (marked down,
//! ejected, drained, removed) or refused a datagram is placed again (re-pinned) through a new
//! socket, and the datagram goes there: a flow never sends into a hole it knows of. ICMP port
//! unreachable comes back as `ECONNREFUSED` on the upstream socket; it counts as a connect
//! failure for outlier detection. With nothing in rotation, fail-open keeps flows where they
//! are (unless their endpoint is draining) and fail-closed drops the datagram.
//!
//! Flows end after `udp_idle_timeout` with no datagram either way (a sweep every quarter of
//! it, at most every second), when the port closes, or when the service stops.
//!
//! - [`socket`]: binding the port's socket group, and the flows' upstream sockets.
//! - [`flows`]: the flow table and the service-wide flow count.
//! - [`ready`]: which upstream sockets have replies to read.

pub mod flows;
pub mod ready;
pub mod socket;

use std::future::poll_fn;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use socket2::{SockAddr, SockRef};
use tokio::io::ReadBuf;
use tokio::net::UdpSocket;
use tokio::time::{Instant, sleep};
use tokio_util::sync::CancellationToken;

use crate::balance::affinity_timeout;
use crate::config::Protocol;
use crate::service::{Endpoint, PortPool, Rotation, ServiceState, Snapshot, UdpDrop};
use flows::{FlowId, FlowTable, Route};
use ready::ReadySet;

pub use socket::bind_udp_group;

/// Receive buffer: any UDP payload fits (65,507 bytes over IPv4, 65,527 over IPv6), so a
/// datagram is never truncated.
const BUFFER_SIZE: usize = 65_536;
/// Datagrams handled per poll before the loop yields to the worker's other tasks.
const BATCH: usize = 128;
/// Replies read from one flow per turn, so one busy endpoint cannot starve the others.
const PER_FLOW: usize = 16;
/// Bounds of the sweep period (a quarter of `udp_idle_timeout`).
const SWEEP_MIN: Duration = Duration::from_millis(10);
const SWEEP_MAX: Duration = Duration::from_secs(1);

/// Serves the UDP service port configured as `port` on `socket` until `stop` is cancelled;
/// its flows end with it.
///
/// The sockets are registered with the runtime this runs on: a data-plane worker that runs the
/// loop also polls every flow of it.
pub async fn serve(
    socket: std::net::UdpSocket,
    service: Arc<ServiceState>,
    port: u16,
    stop: CancellationToken,
) {
    let listen = match UdpSocket::from_std(socket) {
        Ok(listen) => listen,
        Err(error) => {
            tracing::error!(service = service.name(), %error, "cannot serve a UDP socket");
            return;
        }
    };
    // Registered now, so the drop counters are exported from the start.
    service.metrics.udp();
    let mut serving = PortLoop {
        table: FlowTable::new(Arc::clone(service.udp_flow_count())),
        service,
        port,
        listen,
        ready: ReadySet::new(),
        buf: vec![0; BUFFER_SIZE].into_boxed_slice(),
    };
    let sweep = sleep(serving.sweep_period());
    tokio::pin!(sweep);
    loop {
        tokio::select! {
            biased;
            _ = stop.cancelled() => break,
            () = &mut sweep => {
                serving.sweep();
                sweep.as_mut().reset(Instant::now() + serving.sweep_period());
            }
            () = poll_fn(|cx| serving.poll(cx)) => {}
        }
    }
    tracing::debug!(
        service = serving.service.name(),
        flows = serving.table.len(),
        "udp socket closed"
    );
}

/// One worker's socket of a UDP service port, and its flows.
struct PortLoop {
    service: Arc<ServiceState>,
    /// The service port as configured.
    port: u16,
    listen: UdpSocket,
    table: FlowTable<UdpSocket>,
    ready: ReadySet,
    /// Every datagram either way passes through here.
    buf: Box<[u8]>,
}

impl PortLoop {
    /// Handles what is ready on the listening socket and the flows' sockets, up to [`BATCH`]
    /// datagrams; never completes.
    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        self.ready.register(cx.waker());
        // One clock read per poll: flows are stamped to the batch, not to the datagram.
        let stamp = self.table.stamp(Instant::now());
        let mut budget = BATCH;
        loop {
            let before = budget;
            while budget > 0 {
                let mut read = ReadBuf::new(&mut self.buf);
                let client = match self.listen.poll_recv_from(cx, &mut read) {
                    Poll::Pending => break,
                    Poll::Ready(Ok(client)) => client,
                    Poll::Ready(Err(error)) => {
                        budget -= 1;
                        tracing::debug!(service = self.service.name(), %error, "udp receive failed");
                        continue;
                    }
                };
                let len = read.filled().len();
                budget -= 1;
                self.on_client(client, len, stamp);
            }
            for chunk in 0..self.ready.chunks() {
                let PortLoop {
                    service,
                    listen,
                    table,
                    ready,
                    buf,
                    ..
                } = self;
                let ready = &*ready;
                ready.take(chunk, |id| {
                    let parts = Replies {
                        service,
                        listen,
                        table: &mut *table,
                        ready,
                        buf: &mut buf[..],
                    };
                    budget = budget.saturating_sub(read_replies(parts, id, stamp));
                });
            }
            if budget == 0 {
                // More may be waiting: run again after the worker's other tasks.
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            if budget == before {
                // Every socket said Pending, with a waker registered.
                return Poll::Pending;
            }
        }
    }

    /// A datagram of `len` bytes (in the buffer) from `client`.
    fn on_client(&mut self, client: SocketAddr, len: usize, stamp: u64) {
        match self.table.route(client, stamp) {
            Route::Forward(id) => self.forward(id, len, true),
            Route::Repin(id) => {
                if self.repin(id) {
                    self.forward(id, len, true);
                }
            }
            Route::New => self.open(client, len, stamp),
        }
    }

    /// Starts the flow of `client` with its first datagram.
    fn open(&mut self, client: SocketAddr, len: usize, stamp: u64) {
        let snapshot = self.service.load_snapshot();
        let max = usize::try_from(snapshot.config.max_udp_flows.get()).unwrap_or(usize::MAX);
        let (service, port) = (&*self.service, self.port);
        let opened = self.table.try_insert(max, client, stamp, || {
            let pool = usable_pool(service, &snapshot, port)?;
            let endpoint = pick(pool, &snapshot, client, None);
            let upstream = upstream_socket(service, endpoint)?;
            pool.remember(Some(client.ip()), endpoint);
            Ok((endpoint.flow_pinned(), upstream))
        });
        drop(snapshot);
        match opened {
            Ok(id) => {
                let endpoint = self.table.get(id).expect("just added").endpoint().addr();
                tracing::debug!(service = self.service.name(), %client, %endpoint, "udp flow started");
                self.watch(id);
                self.forward(id, len, true);
            }
            Err(reason) => self.drop_datagram(reason, client),
        }
    }

    /// Places flow `id` again, away from its endpoint; false when the datagram is dropped.
    fn repin(&mut self, id: FlowId) -> bool {
        let flow = self.table.get(id).expect("a routed flow exists");
        let (client, current, refused) = (
            flow.client(),
            Arc::clone(flow.endpoint()),
            flow.was_refused(),
        );
        let snapshot = self.service.load_snapshot();
        if !refused
            && !current.is_draining()
            && snapshot
                .pool(Protocol::Udp, self.port)
                .is_some_and(|p| p.rotation == Rotation::FailedOpen)
        {
            // Failed open: every endpoint is as unhealthy as this one; moving would only churn.
            return true;
        }
        let placed = usable_pool(&self.service, &snapshot, self.port).and_then(|pool| {
            let endpoint = pick(pool, &snapshot, client, Some(&current));
            if Arc::ptr_eq(endpoint, &current) && !refused {
                // The only candidate of a snapshot not yet rebuilt: stay until there is another.
                return Ok(None);
            }
            let upstream = upstream_socket(&self.service, endpoint)?;
            pool.remember(Some(client.ip()), endpoint);
            Ok(Some((endpoint.flow_pinned(), upstream)))
        });
        drop(snapshot);
        match placed {
            Ok(None) => true,
            Ok(Some((pin, upstream))) => {
                tracing::debug!(service = self.service.name(), %client, from = %current.addr(), to = %pin.endpoint().addr(), refused, "udp flow re-pinned");
                let flow = self.table.get_mut(id).expect("a routed flow exists");
                flow.repin(pin, upstream);
                self.watch(id);
                true
            }
            Err(reason) => {
                self.drop_datagram(reason, client);
                false
            }
        }
    }

    /// Sends the datagram of `len` bytes in the buffer on flow `id`. A refusal counts against
    /// the endpoint and, when `retry`, moves the flow and sends once more.
    fn forward(&mut self, id: FlowId, len: usize, retry: bool) {
        let flow = self.table.get_mut(id).expect("a routed flow exists");
        // Straight to the kernel: UDP sockets are writable but for a full buffer, and then the
        // datagram is dropped rather than held.
        match SockRef::from(flow.upstream()).send(&self.buf[..len]) {
            Ok(_) => flow.endpoint().datagram_in(len),
            Err(error) if is_refusal(&error) => {
                // The ICMP error of an earlier datagram: this one was not sent.
                flow.mark_refused();
                let endpoint = Arc::clone(flow.endpoint());
                self.service
                    .connect_failed(&self.service.load_snapshot(), &endpoint);
                if retry && self.repin(id) {
                    self.forward(id, len, false);
                }
            }
            Err(error) => {
                let client = flow.client();
                tracing::trace!(service = self.service.name(), %client, %error, "udp send failed");
                self.drop_datagram(UdpDrop::SendFailed, client);
            }
        }
    }

    /// Polls flow `id`'s new socket once soon, so its waker is registered.
    fn watch(&mut self, id: FlowId) {
        self.ready.cover(id);
        self.ready.mark(id);
    }

    /// Ends idle flows.
    fn sweep(&mut self) {
        let idle = self.udp_idle_timeout();
        let expired = self.table.expire(Instant::now(), idle);
        if expired > 0 {
            tracing::debug!(
                service = self.service.name(),
                expired,
                left = self.table.len(),
                "idle udp flows ended"
            );
        }
    }

    fn udp_idle_timeout(&self) -> Duration {
        self.service
            .load_snapshot()
            .config
            .connection
            .udp_idle_timeout
    }

    /// Time between sweeps: flows end at most this late.
    fn sweep_period(&self) -> Duration {
        (self.udp_idle_timeout() / 4).clamp(SWEEP_MIN, SWEEP_MAX)
    }

    fn drop_datagram(&self, reason: UdpDrop, client: SocketAddr) {
        self.service.metrics.udp().dropped(reason);
        // Per datagram, and a remote peer can cause it at will: trace only.
        tracing::trace!(service = self.service.name(), %client, reason = reason.as_str(), "udp datagram dropped");
    }
}

/// The parts of a [`PortLoop`] that reading replies touches (borrowed apart from the ready
/// set's iteration).
struct Replies<'a> {
    service: &'a ServiceState,
    listen: &'a UdpSocket,
    table: &'a mut FlowTable<UdpSocket>,
    ready: &'a ReadySet,
    buf: &'a mut [u8],
}

/// Reads flow `id`'s replies and sends them to its client, until its socket has none (its
/// waker then registered) or [`PER_FLOW`] were read; returns how many datagrams it handled.
fn read_replies(parts: Replies<'_>, id: FlowId, stamp: u64) -> usize {
    let Replies {
        service,
        listen,
        table,
        ready,
        buf,
    } = parts;
    // A stale mark: the flow ended since.
    let Some(flow) = table.get_mut(id) else {
        return 0;
    };
    let mut cx = Context::from_waker(ready.waker(id));
    for handled in 0..PER_FLOW {
        let mut read = ReadBuf::new(buf);
        match flow.upstream().poll_recv(&mut cx, &mut read) {
            Poll::Pending => return handled,
            Poll::Ready(Ok(())) => {
                let len = read.filled().len();
                flow.touch(stamp);
                let endpoint = flow.endpoint();
                endpoint.record_connect_success();
                match SockRef::from(listen).send_to(&buf[..len], &SockAddr::from(flow.client())) {
                    Ok(_) => endpoint.datagram_out(len),
                    Err(error) => {
                        service.metrics.udp().dropped(UdpDrop::SendFailed);
                        tracing::trace!(service = service.name(), client = %flow.client(), %error, "udp reply dropped");
                    }
                }
            }
            Poll::Ready(Err(error)) if is_refusal(&error) => {
                flow.mark_refused();
                service.connect_failed(&service.load_snapshot(), flow.endpoint());
            }
            // Keep reading: only Pending registers the waker again.
            Poll::Ready(Err(error)) => {
                tracing::debug!(service = service.name(), endpoint = %flow.endpoint().addr(), %error, "udp upstream receive failed");
            }
        }
    }
    // Not drained: come back on the next turn.
    ready.mark(id);
    PER_FLOW
}

/// Where a flow of `client` goes in `pool` (not closed); with `avoid`, the next candidate when
/// the pick is that endpoint and there is another.
fn pick<'p>(
    pool: &'p PortPool,
    snapshot: &Snapshot,
    client: SocketAddr,
    avoid: Option<&Arc<Endpoint>>,
) -> &'p Arc<Endpoint> {
    let candidates = pool.tier.candidates();
    let mut index = pool.first(
        Some(client.ip()),
        affinity_timeout(snapshot.config.session_affinity),
    );
    if avoid.is_some_and(|a| Arc::ptr_eq(a, &candidates[index].endpoint)) && candidates.len() > 1 {
        index = (index + 1) % candidates.len();
    }
    &candidates[index].endpoint
}

/// The UDP pool of service port `port` when a new placement may use it.
fn usable_pool<'s>(
    service: &ServiceState,
    snapshot: &'s Snapshot,
    port: u16,
) -> Result<&'s PortPool, UdpDrop> {
    // The port can be gone when a reload removed it while this socket closes.
    let pool = snapshot.pool(Protocol::Udp, port);
    match pool.map(|p| p.rotation) {
        Some(Rotation::Primary | Rotation::Backup) => {}
        Some(Rotation::FailedOpen) => service.metrics.no_healthy_endpoints.increment(1),
        Some(Rotation::Closed) | None => {
            if !snapshot.endpoints.is_empty() {
                // Endpoints exist but none is in rotation, and the service fails closed.
                service.metrics.no_healthy_endpoints.increment(1);
            }
            return Err(UdpDrop::NoEndpoint);
        }
    }
    pool.ok_or(UdpDrop::NoEndpoint)
}

/// A new upstream socket to `endpoint`, registered with this worker's runtime.
fn upstream_socket(service: &ServiceState, endpoint: &Endpoint) -> Result<UdpSocket, UdpDrop> {
    socket::upstream(endpoint.addr())
        .and_then(UdpSocket::from_std)
        .map_err(|error| {
            // Out of descriptors or memory: not the endpoint's fault.
            tracing::debug!(service = service.name(), endpoint = %endpoint.addr(), %error, "cannot create an upstream socket");
            UdpDrop::Socket
        })
}

/// Whether a send or receive error says the endpoint cannot be reached (ICMP port or host
/// unreachable), rather than that this datagram could not go.
fn is_refusal(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::HostUnreachable
            | io::ErrorKind::NetworkUnreachable
    )
}
