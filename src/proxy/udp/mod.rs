//! UDP data path: one serve loop per worker socket of a UDP service port.
//!
//! Datagrams from one client address form a flow pinned to one endpoint, chosen by the
//! service's placement when the first datagram arrives. Each flow has an upstream socket of its
//! own, connected to the endpoint: client datagrams go out on it, and the endpoint's replies,
//! read from it, go back to the client from the service port's socket, so the client hears the
//! VIP:port it asked. The loop is one task that owns its [`flows::FlowTable`] outright; it reads
//! the listening socket and the upstream sockets that [`ready::ReadySet`] reports readable.
//!
//! Datagrams move in batches through one set of preallocated [`batch::Slots`]: one `recvmmsg`
//! takes up to 32 client datagrams, the datagrams of each flow among them go out in one
//! `sendmmsg`, and the replies of all ready flows go back to their clients in one `sendmmsg` on
//! the listening socket. With UDP GRO a train of one sender's datagrams arrives as one message
//! and leaves as one (GSO). No lock, no allocation and no task per datagram or flow.
//!
//! Before a client datagram is forwarded, a flow whose endpoint left rotation (marked down,
//! ejected, drained, removed) or refused a datagram is placed again (re-pinned) through a new
//! socket, and the datagram goes there: a flow never sends into a hole it knows of. ICMP port
//! unreachable comes back as `ECONNREFUSED` on the upstream socket; it counts as a connect
//! failure for outlier detection. With nothing in rotation, fail-open keeps flows where they
//! are (unless their endpoint is draining) and fail-closed drops the datagram.
//!
//! Flows end after `udp_idle_timeout` with no datagram either way, and once their endpoint has
//! left the service (a sweep every quarter of the timeout, at most every second), when the
//! port closes, or when the service stops.
//!
//! - [`socket`]: binding the port's socket group, and the flows' upstream sockets.
//! - [`batch`]: moving datagrams a batch per system call.
//! - [`flows`]: the flow table and the service-wide flow count.
//! - [`ready`]: which upstream sockets have replies to read.

pub mod batch;
pub mod flows;
pub mod ready;
pub mod socket;

use std::future::poll_fn;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use std::os::fd::AsFd;

use tokio::io::Interest;
use tokio::net::UdpSocket;
use tokio::time::{Instant, sleep};
use tokio_util::sync::CancellationToken;

use crate::balance::affinity_timeout;
use crate::config::Protocol;
use crate::service::{Endpoint, PortPool, Rotation, ServiceState, Snapshot, UdpDrop};
use batch::{SLOTS, Slots};
use flows::{FlowId, FlowTable, Route};
use ready::ReadySet;

pub use socket::bind_udp_group;

/// Datagrams (or GRO trains) handled per poll before the loop yields to the worker's other
/// tasks.
const BUDGET: usize = 8 * SLOTS;
/// Replies read from one flow per turn, so one busy endpoint cannot starve the others.
const PER_FLOW: usize = 2 * SLOTS;
/// Bounds of the sweep period (a quarter of `udp_idle_timeout`).
const SWEEP_MIN: Duration = Duration::from_millis(10);
const SWEEP_MAX: Duration = Duration::from_secs(1);
/// Slot numbers in order, for sending a whole batch.
const IN_ORDER: [u8; SLOTS] = {
    let mut order = [0u8; SLOTS];
    let mut i = 0;
    while i < SLOTS {
        order[i] = i as u8;
        i += 1;
    }
    order
};

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
    // Trains of one client's datagrams come in as one message where the kernel can.
    batch::enable_gro(socket.as_fd());
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
        slots: Slots::new(),
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
    /// Every datagram either way passes through here, a batch at a time.
    slots: Slots,
}

impl PortLoop {
    /// Handles what is ready on the listening socket and the flows' sockets, up to [`BUDGET`]
    /// datagrams; never completes.
    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        self.ready.register(cx.waker());
        // One clock read per poll: flows are stamped to the batch, not to the datagram.
        let stamp = self.table.stamp(Instant::now());
        let mut budget = BUDGET;
        loop {
            let before = budget;
            // A drained socket's readiness was cleared without a waker: poll it once more.
            let mut drained = false;
            while budget > 0 {
                match self.receive_clients(cx, stamp) {
                    Batch::Full(n) => budget = budget.saturating_sub(n),
                    Batch::Short(n) => {
                        // The queue is empty now: see to the replies before asking again.
                        budget = budget.saturating_sub(n);
                        drained = true;
                        break;
                    }
                    Batch::Pending => break,
                }
            }
            let relay = Relay {
                service: &self.service,
                listen: &self.listen,
                table: &mut self.table,
                ready: &self.ready,
                slots: &mut self.slots,
                stamp,
                filled: 0,
                owners: [0; SLOTS],
                handled: 0,
            };
            budget = budget.saturating_sub(relay.run(budget));
            if budget == 0 {
                // More may be waiting: run again after the worker's other tasks.
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            if budget == before && !drained {
                // Every socket said Pending, with a waker registered.
                return Poll::Pending;
            }
        }
    }

    /// Receives a batch of client datagrams and forwards them.
    fn receive_clients(&mut self, cx: &mut Context<'_>, stamp: u64) -> Batch {
        let received = match receive(&self.listen, cx, &mut self.slots, 0, SLOTS) {
            Poll::Pending => return Batch::Pending,
            Poll::Ready(Ok(received)) => received,
            Poll::Ready(Err(error)) => {
                // Counts against the budget, so a socket that keeps failing cannot spin.
                tracing::debug!(service = self.service.name(), %error, "udp receive failed");
                return Batch::Full(1);
            }
        };
        self.forward_batch(received.count, stamp);
        if received.drained {
            Batch::Short(received.count)
        } else {
            Batch::Full(received.count)
        }
    }

    /// Forwards the `received` client datagrams in the slots: each to its flow (started or
    /// re-pinned as needed), the datagrams of one flow together in one system call.
    fn forward_batch(&mut self, received: usize, stamp: u64) {
        let mut flows: [FlowId; SLOTS] = [0; SLOTS];
        let mut order: [u8; SLOTS] = [0; SLOTS];
        let mut routed = 0;
        for (slot, flow) in flows.iter_mut().enumerate().take(received) {
            let datagram = *self.slots.meta(slot);
            if datagram.truncated {
                self.drop_datagram(UdpDrop::SendFailed, datagram.peer);
                continue;
            }
            if let Some(id) = self.route(datagram.peer, stamp) {
                *flow = id;
                order[routed] = slot as u8;
                routed += 1;
            }
        }
        // Group by flow, keeping each flow's datagrams in arrival order (an insertion sort:
        // a batch is small, and usually ordered in runs already).
        let order = &mut order[..routed];
        for i in 1..order.len() {
            let mut j = i;
            while j > 0 && flows[usize::from(order[j - 1])] > flows[usize::from(order[j])] {
                order.swap(j - 1, j);
                j -= 1;
            }
        }
        let mut start = 0;
        while start < order.len() {
            let id = flows[usize::from(order[start])];
            let end = start
                + order[start..]
                    .iter()
                    .take_while(|&&slot| flows[usize::from(slot)] == id)
                    .count();
            self.send_run(id, &order[start..end]);
            start = end;
        }
    }

    /// The flow a datagram from `client` goes on; `None` when it is dropped (counted).
    fn route(&mut self, client: SocketAddr, stamp: u64) -> Option<FlowId> {
        match self.table.route(client, stamp) {
            Route::Forward(id) => Some(id),
            Route::Repin(id) => self.repin(id).then_some(id),
            Route::New => self.open(client, stamp),
        }
    }

    /// Starts the flow of `client`.
    fn open(&mut self, client: SocketAddr, stamp: u64) -> Option<FlowId> {
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
                Some(id)
            }
            Err(reason) => {
                self.drop_datagram(reason, client);
                None
            }
        }
    }

    /// Places flow `id` again, away from its endpoint; false when its datagram is dropped.
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

    /// Sends the client datagrams in slots `run` on flow `id`, in order. A refusal counts
    /// against the endpoint and moves the flow, and the rest go to the new endpoint (twice at
    /// most: then they are dropped).
    fn send_run(&mut self, id: FlowId, run: &[u8]) {
        let mut sent = 0;
        let mut refusals = 0;
        while sent < run.len() {
            let flow = self.table.get_mut(id).expect("a routed flow exists");
            // Straight to the kernel: UDP sockets are writable but for a full buffer, and then
            // the datagram is dropped rather than held.
            let result = batch::send(flow.upstream().as_fd(), &mut self.slots, &run[sent..]);
            match result {
                Ok(count) => {
                    for &slot in &run[sent..sent + count] {
                        let datagram = self.slots.meta(usize::from(slot));
                        flow.endpoint().datagrams_in(datagram.count(), datagram.len);
                    }
                    sent += count;
                }
                Err(error) if is_refusal(&error) => {
                    // The ICMP error of an earlier datagram: this one was not sent.
                    flow.mark_refused();
                    let endpoint = Arc::clone(flow.endpoint());
                    self.service
                        .connect_failed(&self.service.load_snapshot(), &endpoint);
                    refusals += 1;
                    if refusals > 2 || !self.repin(id) {
                        let client = self.table.get(id).expect("a routed flow exists").client();
                        for &slot in &run[sent..] {
                            let count = self.slots.meta(usize::from(slot)).count();
                            self.drop_datagrams(UdpDrop::SendFailed, client, count);
                        }
                        return;
                    }
                }
                Err(error) => {
                    let slot = usize::from(run[sent]);
                    let datagram = *self.slots.meta(slot);
                    let fallback = (datagram.segment != 0 && batch::is_gso_unsupported(&error))
                        .then(|| {
                            batch::send_segments(flow.upstream().as_fd(), &self.slots, slot, false)
                        });
                    let went = match fallback {
                        Some(Ok(went)) => went,
                        _ => 0,
                    };
                    if went > 0 {
                        flow.endpoint().datagrams_in(went, datagram.len);
                    }
                    let client = flow.client();
                    if went < datagram.count() {
                        tracing::trace!(service = self.service.name(), %client, %error, "udp send failed");
                        self.drop_datagrams(UdpDrop::SendFailed, client, datagram.count() - went);
                    }
                    sent += 1;
                }
            }
        }
    }

    /// Polls flow `id`'s new socket once soon, so its waker is registered.
    fn watch(&mut self, id: FlowId) {
        self.ready.cover(id);
        self.ready.mark(id);
    }

    /// Ends idle flows, and flows whose endpoint left the service.
    fn sweep(&mut self) {
        let idle = self.udp_idle_timeout();
        let expired = self.table.expire(Instant::now(), idle);
        if expired > 0 {
            tracing::debug!(
                service = self.service.name(),
                expired,
                left = self.table.len(),
                "udp flows ended"
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
        self.drop_datagrams(reason, client, 1);
    }

    fn drop_datagrams(&self, reason: UdpDrop, client: SocketAddr, count: usize) {
        self.service.metrics.udp().dropped(reason, count);
        // Per datagram, and a remote peer can cause it at will: trace only.
        tracing::trace!(service = self.service.name(), %client, reason = reason.as_str(), count, "udp datagrams dropped");
    }
}

/// What one receive on the listening socket found.
enum Batch {
    /// As many datagrams as asked for: more may be queued.
    Full(usize),
    /// Fewer (or none after a readiness event): the queue is empty.
    Short(usize),
    /// Not readable; the waker is registered.
    Pending,
}

/// Reading the replies of the flows whose sockets are ready, and sending them on to their
/// clients from the listening socket, a batch at a time (the parts of a [`PortLoop`] this
/// touches, borrowed apart from the ready set's iteration).
struct Relay<'a> {
    service: &'a ServiceState,
    listen: &'a UdpSocket,
    table: &'a mut FlowTable<UdpSocket>,
    ready: &'a ReadySet,
    slots: &'a mut Slots,
    stamp: u64,
    /// Slots holding replies not sent yet.
    filled: usize,
    /// The flow of each filled slot.
    owners: [FlowId; SLOTS],
    /// Replies read.
    handled: usize,
}

impl Relay<'_> {
    /// Reads and sends the replies of ready flows until none is left or about `budget` were
    /// handled; returns how many were.
    fn run(mut self, budget: usize) -> usize {
        let ready = self.ready;
        for chunk in 0..ready.chunks() {
            ready.take(chunk, |id| {
                if self.handled >= budget {
                    // Not read this turn: the next poll comes back to it.
                    ready.mark(id);
                } else {
                    self.read_flow(id);
                }
            });
        }
        self.flush();
        self.handled
    }

    /// Reads flow `id`'s replies until its socket has none (its waker then registered) or
    /// [`PER_FLOW`] were read.
    fn read_flow(&mut self, id: FlowId) {
        let mut cx = Context::from_waker(self.ready.waker(id));
        let mut read = 0;
        while read < PER_FLOW {
            if self.filled == SLOTS {
                self.flush();
            }
            // A stale mark: the flow ended since.
            let Some(flow) = self.table.get_mut(id) else {
                return;
            };
            match receive(
                flow.upstream(),
                &mut cx,
                self.slots,
                self.filled,
                SLOTS - self.filled,
            ) {
                Poll::Pending => return,
                Poll::Ready(Ok(received)) => {
                    let count = received.count;
                    if count > 0 {
                        flow.touch(self.stamp);
                        flow.endpoint().record_connect_success();
                    }
                    for slot in self.filled..self.filled + count {
                        self.slots.address(slot, flow.client());
                        self.owners[slot] = id;
                    }
                    self.filled += count;
                    read += count;
                    self.handled += count;
                    // Drained: the next receive registers the waker (or finds a new datagram).
                }
                Poll::Ready(Err(error)) if is_refusal(&error) => {
                    // Reported once; the socket reads on.
                    flow.mark_refused();
                    self.service
                        .connect_failed(&self.service.load_snapshot(), flow.endpoint());
                    read += 1;
                }
                Poll::Ready(Err(error)) => {
                    tracing::debug!(service = self.service.name(), endpoint = %flow.endpoint().addr(), %error, "udp upstream receive failed");
                    read += 1;
                    self.handled += 1;
                }
            }
        }
        // Not drained: come back on the next turn.
        self.ready.mark(id);
    }

    /// Sends the filled slots to their clients.
    fn flush(&mut self) {
        let mut sent = 0;
        while sent < self.filled {
            let fd = self.listen.as_fd();
            match batch::send_to(fd, self.slots, &IN_ORDER[sent..self.filled]) {
                Ok(count) => {
                    for slot in sent..sent + count {
                        self.count_out(slot, self.slots.meta(slot).count());
                    }
                    sent += count;
                }
                Err(error) => {
                    let datagram = *self.slots.meta(sent);
                    let went = match datagram.segment != 0 && batch::is_gso_unsupported(&error) {
                        true => batch::send_segments(fd, self.slots, sent, true).unwrap_or(0),
                        false => 0,
                    };
                    self.count_out(sent, went);
                    if went < datagram.count() {
                        self.service
                            .metrics
                            .udp()
                            .dropped(UdpDrop::SendFailed, datagram.count() - went);
                        tracing::trace!(service = self.service.name(), client = %datagram.peer, %error, "udp reply dropped");
                    }
                    sent += 1;
                }
            }
        }
        self.filled = 0;
    }

    /// Counts `count` datagrams of slot `slot` sent to the client.
    fn count_out(&self, slot: usize, count: usize) {
        if count == 0 {
            return;
        }
        let len = self.slots.meta(slot).len;
        if let Some(flow) = self.table.get(self.owners[slot]) {
            flow.endpoint().datagrams_out(count, len);
        }
    }
}

/// What one receive of a batch got.
struct Received {
    /// Datagrams (or trains) now in the slots.
    count: usize,
    /// Fewer than asked: the socket's queue was empty, and its readiness is cleared (the next
    /// [`receive`] registers the waker, or finds what came since).
    drained: bool,
}

/// Receives up to `asked` datagrams from `socket` into the slots from `first`, when the
/// runtime says it is readable (`Pending`, with `cx`'s waker registered, when not).
fn receive(
    socket: &UdpSocket,
    cx: &mut Context<'_>,
    slots: &mut Slots,
    first: usize,
    asked: usize,
) -> Poll<io::Result<Received>> {
    if let Err(error) = std::task::ready!(socket.poll_recv_ready(cx)) {
        return Poll::Ready(Err(error));
    }
    let mut count = 0;
    let result = socket.try_io(Interest::READABLE, || {
        count = batch::recv(socket.as_fd(), slots, first, asked)?;
        if count < asked {
            // A short batch means the queue was empty: saying WouldBlock has the runtime clear
            // the readiness it reported. One that came since has a newer event, not cleared.
            Err(io::ErrorKind::WouldBlock.into())
        } else {
            Ok(())
        }
    });
    Poll::Ready(match result {
        Ok(()) => Ok(Received {
            count,
            drained: false,
        }),
        Err(error) if error.kind() == io::ErrorKind::WouldBlock => Ok(Received {
            count,
            drained: true,
        }),
        Err(error) => Err(error),
    })
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
    service
        .placement_pool(snapshot, Protocol::Udp, port)
        .ok_or(UdpDrop::NoEndpoint)
}

/// A new upstream socket to `endpoint`, registered with this worker's runtime.
fn upstream_socket(service: &ServiceState, endpoint: &Endpoint) -> Result<UdpSocket, UdpDrop> {
    socket::upstream(endpoint.addr())
        .and_then(|socket| {
            // An endpoint that sends trains (GSO) hands them over as one message.
            batch::enable_gro(socket.as_fd());
            UdpSocket::from_std(socket)
        })
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
