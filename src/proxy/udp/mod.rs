//! UDP data path: each worker's socket of a UDP service port, served by that worker's event
//! loop (`proxy::event_loop`).
//!
//! Datagrams from one client address form a flow pinned to one endpoint, chosen by the
//! service's placement when the first datagram arrives. Each flow has an upstream socket of its
//! own, connected to the endpoint: client datagrams go out on it, and the endpoint's replies,
//! read from it, go back to the client from the service port's socket, so the client hears the
//! VIP:port it asked. A [`PortLoop`] owns its [`flows::FlowTable`] outright; every socket is
//! registered with the worker's epoll set (edge-triggered), and the loop reads the listening
//! socket and the upstream sockets whose readiness it reported, each until it is drained.
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
//! ## The PROXY protocol
//!
//! The spec's rule for datagrams: every datagram carries its own header, header and payload in
//! one datagram. v2 only (v1 is defined for TCP; the config refuses `proxy_protocol = "v1"` on a
//! service with UDP ports, and a received datagram that begins with `"PROXY "` is refused as
//! `unsupported`).
//!
//! - **Receiving** (`accept_proxy_protocol`): each datagram must come from a peer in
//!   `proxy_protocol_trusted` and begin with a whole v2 header; otherwise it is dropped and
//!   counted in `vipd_proxy_protocol_errors_total` (`untrusted`, or the parse's reason; a header
//!   cut short by the datagram's end is `malformed`, since a datagram does not continue). The
//!   header is stripped (the payload is sent from behind it, not moved), and the client it
//!   names is the client for placement (affinity, maglev) and for the header vipd sends on; a
//!   v2 `LOCAL` header means the peer is the client.
//! - **Flows stay keyed by the peer address** (the load balancer's socket), so the endpoint's
//!   replies go back to the peer that sent the datagram, which knows its client. A load
//!   balancer that carries several clients over one socket therefore has them share one flow:
//!   one endpoint, placed for the client of the flow's first datagram (or of the datagram that
//!   re-pins it); each datagram's own client is still the one named in the header vipd sends
//!   on, which is built per datagram. Load balancers that relay UDP use a socket per client
//!   flow (as vipd does), so this is one flow per client in practice.
//! - **Sending** (`proxy_protocol = "v2"`): each datagram to an endpoint starts with a v2
//!   PROXY/DGRAM header naming the client and the address it sent to: the one in the received
//!   header, else the listening socket's local address. A listener on a wildcard address
//!   cannot tell per datagram which address a client sent to (that would take `IP_PKTINFO` on
//!   every receive), so its headers name the wildcard address (`0.0.0.0` or `::`) with the
//!   port. The header is encoded into the slot's preallocated prefix and gathered in front of
//!   the payload (two iovecs, one datagram); the endpoint's replies carry none and go back as
//!   ever.
//! - **GRO is off** on the listening socket of a port that reads or writes headers (switched
//!   as a reload changes it, checked once per batch): a GRO train of several datagrams, each
//!   behind its own header, would have to be split and parsed segment by segment, and a train
//!   to send could carry only one header. Without GRO the kernel hands each datagram on its
//!   own, still 32 per `recvmmsg`; vipd's own GSO trains still form on the way out (each
//!   segment is header + payload, cut at their sum). A train queued before GRO went off is
//!   dropped (`send_failed`). Upstream sockets keep GRO: replies carry no header.
//!
//! - [`socket`]: binding the port's socket group, and the flows' upstream sockets.
//! - [`batch`]: moving datagrams a batch per system call.
//! - [`flows`]: the flow table and the service-wide flow count.

pub mod batch;
pub mod flows;
pub mod socket;

use std::io;
use std::net::SocketAddr;
use std::os::fd::AsFd;
use std::sync::Arc;
use std::time::Duration;

use mio::{Interest, Registry};
use tokio::time::Instant;

use crate::balance::affinity_timeout;
use crate::config::{Protocol, ProxyProtocolVersion};
use crate::proxy::event_loop::{flow_token, register};
use crate::proxy_protocol::{self, Addresses, Transport, Version};
use crate::service::{Endpoint, PortPool, Rotation, ServiceState, Snapshot, UdpDrop};
use batch::{SLOTS, Slots};
use flows::{FlowId, FlowTable, Route};

pub use socket::bind_udp_group;

/// Replies read from one flow per turn, so one busy endpoint cannot starve the others.
const PER_FLOW: usize = 2 * SLOTS;
/// Bounds of the sweep period (a quarter of `udp_idle_timeout`).
const SWEEP_MIN: Duration = Duration::from_millis(10);
const SWEEP_MAX: Duration = Duration::from_secs(1);
/// A placeholder address for slots not filled yet.
const NOWHERE: SocketAddr = SocketAddr::V4(std::net::SocketAddrV4::new(
    std::net::Ipv4Addr::UNSPECIFIED,
    0,
));
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

/// One worker's socket of a UDP service port, and its flows.
pub struct PortLoop {
    service: Arc<ServiceState>,
    /// The service port as configured.
    port: u16,
    listen: std::net::UdpSocket,
    /// The listening socket was reported readable and has not said `WouldBlock` since.
    listen_readable: bool,
    /// Where the flows' sockets are registered.
    registry: Registry,
    /// The port's key in the loop, part of its flows' tokens.
    source: usize,
    table: FlowTable<std::net::UdpSocket>,
    /// Flows whose sockets were reported readable and not yet drained.
    ready: Vec<FlowId>,
    /// Flows to come back to on the next turn (the spare list `ready` swaps with).
    ready_next: Vec<FlowId>,
    /// Every datagram either way passes through here, a batch at a time.
    slots: Slots,
    /// Loop milliseconds of the next sweep.
    next_sweep_ms: u64,
    /// The listening socket's address: the destination of the PROXY headers vipd sends for
    /// clients that came without one (see the module's header).
    local: Option<SocketAddr>,
    /// Whether UDP GRO is on on the listening socket (off while the port reads or writes
    /// PROXY headers).
    gro: bool,
    /// The client of each slot of the batch being forwarded: the peer, or the address its
    /// PROXY header names.
    placement: [SocketAddr; SLOTS],
}

/// What a service port does with PROXY protocol headers, as its service's config says now.
#[derive(Debug, Clone, Copy)]
struct Headers {
    /// Every datagram must begin with a v2 header (`accept_proxy_protocol`).
    accept: bool,
    /// Every datagram sent on begins with a v2 header (`proxy_protocol = "v2"`).
    send: bool,
}

impl Headers {
    fn of(config: &crate::config::Service, port: u16) -> Headers {
        Headers {
            accept: config
                .ports
                .iter()
                .any(|p| p.protocol == Protocol::Udp && p.port == port && p.accept_proxy_protocol),
            // "v1" is TCP only: the config refuses it on a service with UDP ports.
            send: config.proxy_protocol == Some(ProxyProtocolVersion::V2),
        }
    }

    fn any(self) -> bool {
        self.accept || self.send
    }
}

impl PortLoop {
    /// Serves `listen` (non-blocking, registered with the loop's poll under source key
    /// `source`) for the service port configured as `port`; `registry` is the loop's, for the
    /// flows' sockets, and `now_ms` the loop's clock.
    pub fn new(
        listen: std::net::UdpSocket,
        service: Arc<ServiceState>,
        port: u16,
        registry: Registry,
        source: usize,
        now_ms: u64,
    ) -> PortLoop {
        // Trains of one client's datagrams come in as one message where the kernel can, but
        // for a port with PROXY headers (see the module's header).
        let gro = !Headers::of(&service.load_snapshot().config, port).any();
        if gro {
            batch::enable_gro(listen.as_fd());
        }
        // Registered now, so the drop counters are exported from the start.
        service.metrics.udp();
        let mut serving = PortLoop {
            table: FlowTable::new(Arc::clone(service.udp_flow_count())),
            service,
            port,
            listen,
            listen_readable: false,
            registry,
            source,
            ready: Vec::new(),
            ready_next: Vec::new(),
            slots: Slots::new(),
            next_sweep_ms: 0,
            local: None,
            gro,
            placement: [NOWHERE; SLOTS],
        };
        serving.local = serving.listen.local_addr().ok();
        serving.next_sweep_ms = now_ms + serving.sweep_period().as_millis() as u64;
        serving
    }

    /// The listening socket has datagrams.
    pub fn listen_ready(&mut self) {
        self.listen_readable = true;
    }

    /// Flow `id`'s socket has replies (or an error) to read.
    pub fn flow_ready(&mut self, id: FlowId) {
        self.ready.push(id);
    }

    /// Handles what the listening socket and the ready flows have, up to `budget` datagrams;
    /// true when something is left for the next turn.
    pub fn run(&mut self, budget: usize) -> bool {
        // One clock read per turn: flows are stamped to the batch, not to the datagram.
        let stamp = self.table.stamp(Instant::now());
        let mut budget = budget;
        while budget > 0 && (self.listen_readable || !self.ready.is_empty()) {
            while budget > 0 && self.listen_readable {
                let received = self.receive_clients(stamp);
                budget = budget.saturating_sub(received.max(1));
            }
            if self.ready.is_empty() {
                continue;
            }
            let mut ready = std::mem::take(&mut self.ready);
            let relay = Relay {
                service: &self.service,
                listen: &self.listen,
                table: &mut self.table,
                next: &mut self.ready_next,
                slots: &mut self.slots,
                stamp,
                filled: 0,
                owners: [0; SLOTS],
                handled: 0,
            };
            budget = budget.saturating_sub(relay.run(&mut ready, budget));
            // Flows not drained come back next; `ready` is empty and keeps its capacity.
            self.ready.append(&mut self.ready_next);
            self.ready_next = ready;
        }
        self.listen_readable || !self.ready.is_empty()
    }

    /// Receives a batch of client datagrams and forwards them; returns how many.
    fn receive_clients(&mut self, stamp: u64) -> usize {
        // Once per batch: a reload may have changed what the port does with headers.
        let snapshot = self.service.snapshot();
        let headers = Headers::of(&snapshot.config, self.port);
        self.set_gro(!headers.any());
        let received = match receive(&self.listen, &mut self.slots, 0, SLOTS) {
            Ok(received) => received,
            Err(error) => {
                // A pending socket error is cleared by the call that reports it.
                tracing::debug!(service = self.service.name(), %error, "udp receive failed");
                return 0;
            }
        };
        if received.drained {
            self.listen_readable = false;
        }
        self.forward_batch(received.count, stamp, &snapshot.config, headers);
        received.count
    }

    /// Turns GRO on the listening socket on or off, if it is not already.
    fn set_gro(&mut self, on: bool) {
        if self.gro != on {
            self.gro = on;
            if !batch::set_gro(self.listen.as_fd(), on) {
                tracing::debug!(service = self.service.name(), on, "cannot switch UDP GRO");
            }
        }
    }

    /// Loop milliseconds of the next sweep.
    pub fn next_sweep_ms(&self) -> u64 {
        self.next_sweep_ms
    }

    /// Ends idle flows and flows whose endpoint left the service; plans the next sweep.
    pub fn sweep(&mut self, now_ms: u64) {
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
        self.next_sweep_ms = now_ms + self.sweep_period().as_millis() as u64;
    }

    /// The port is closed: its flows end with it.
    pub fn closed(self) {
        tracing::debug!(
            service = self.service.name(),
            flows = self.table.len(),
            "udp socket closed"
        );
    }

    /// Forwards the `received` client datagrams in the slots: each to its flow (started or
    /// re-pinned as needed), the datagrams of one flow together in one system call; with
    /// `headers`, each read from (and stripped of) its PROXY header, or sent behind vipd's.
    fn forward_batch(
        &mut self,
        received: usize,
        stamp: u64,
        config: &crate::config::Service,
        headers: Headers,
    ) {
        let mut flows: [FlowId; SLOTS] = [0; SLOTS];
        let mut order: [u8; SLOTS] = [0; SLOTS];
        let mut routed = 0;
        for (slot, flow) in flows.iter_mut().enumerate().take(received) {
            let datagram = *self.slots.meta(slot);
            if datagram.truncated {
                self.drop_datagram(UdpDrop::SendFailed, datagram.peer);
                continue;
            }
            if headers.any() && datagram.is_train() {
                // A GRO train queued before GRO went off (a reload gave the port headers): its
                // datagrams cannot be read or sent one header each.
                self.drop_datagrams(UdpDrop::SendFailed, datagram.peer, datagram.count());
                continue;
            }
            let (client, destination) = if headers.accept {
                match self.read_header(slot, config) {
                    Some(found) => found,
                    None => continue,
                }
            } else {
                (datagram.peer, None)
            };
            if headers.send {
                // The address the client sent to: the received header's, else the listener's.
                let addresses = destination.or(self.local).map(|to| (client, to));
                self.slots.prepend(slot, |buffer| {
                    proxy_protocol::encode_v2(addresses, Transport::Datagram, buffer)
                });
            }
            self.placement[slot] = client;
            if let Some(id) = self.route(datagram.peer, client, stamp) {
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

    /// Reads the PROXY header at the start of slot `slot` from a peer that must be in
    /// `config`'s `proxy_protocol_trusted`, and strips it: the client it names and the address
    /// that client sent to (none for LOCAL: the peer is the client). `None` when the datagram
    /// is refused (counted).
    fn read_header(
        &mut self,
        slot: usize,
        config: &crate::config::Service,
    ) -> Option<(SocketAddr, Option<SocketAddr>)> {
        let peer = self.slots.meta(slot).peer;
        let reason = if !config.trusts_proxy_header_from(peer.ip()) {
            "untrusted"
        } else if self.slots.data(slot).starts_with(b"PROXY ") {
            // The text header is defined for TCP only.
            "unsupported"
        } else {
            match proxy_protocol::parse(self.slots.data(slot)) {
                Ok(Some(header)) if header.version == Version::V2 => {
                    self.slots.strip(slot, header.length);
                    return Some(match header.addresses {
                        Addresses::Proxied {
                            source,
                            destination,
                            ..
                        } => (source, Some(destination)),
                        Addresses::Local => (peer, None),
                    });
                }
                Ok(Some(_)) => "unsupported",
                // Valid so far, then the datagram ends: it cannot continue in another one.
                Ok(None) => "malformed",
                Err(error) => error.reason(),
            }
        };
        self.service.metrics.proxy_protocol_error(reason);
        // Per datagram, and a remote peer can cause it at will: trace only.
        tracing::trace!(service = self.service.name(), %peer, reason, "PROXY header refused; datagram dropped");
        None
    }

    /// The flow a datagram from `peer` goes on, placed for `client` (the peer, or the client
    /// its PROXY header names) when it starts or moves; `None` when it is dropped (counted).
    fn route(&mut self, peer: SocketAddr, client: SocketAddr, stamp: u64) -> Option<FlowId> {
        match self.table.route(peer, stamp) {
            Route::Forward(id) => Some(id),
            Route::Repin(id) => self.repin(id, client).then_some(id),
            Route::New => self.open(peer, client, stamp),
        }
    }

    /// Starts the flow of `peer`, placed for `client`.
    fn open(&mut self, peer: SocketAddr, client: SocketAddr, stamp: u64) -> Option<FlowId> {
        let snapshot = self.service.load_snapshot();
        let max = usize::try_from(snapshot.config.max_udp_flows.get()).unwrap_or(usize::MAX);
        let (service, port) = (&*self.service, self.port);
        let opened = self.table.try_insert(max, peer, stamp, || {
            let pool = usable_pool(service, &snapshot, port)?;
            let endpoint = pick(pool, &snapshot, client, None);
            let upstream = upstream_socket(service, endpoint)?;
            pool.remember(Some(client.ip()), endpoint);
            Ok((endpoint.flow_pinned(), upstream))
        });
        drop(snapshot);
        match opened {
            Ok(id) => {
                let flow = self.table.get(id).expect("just added");
                if !self.watch(id, flow.upstream()) {
                    self.table.remove(id);
                    self.drop_datagram(UdpDrop::Socket, peer);
                    return None;
                }
                let endpoint = flow.endpoint().addr();
                tracing::debug!(service = self.service.name(), %peer, %client, %endpoint, "udp flow started");
                Some(id)
            }
            Err(reason) => {
                self.drop_datagram(reason, peer);
                None
            }
        }
    }

    /// Places flow `id` again, away from its endpoint, for `client` (its datagram's); false
    /// when its datagram is dropped.
    fn repin(&mut self, id: FlowId, client: SocketAddr) -> bool {
        let flow = self.table.get(id).expect("a routed flow exists");
        let (peer, current, refused) = (
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
                if !self.watch(id, &upstream) {
                    self.drop_datagram(UdpDrop::Socket, peer);
                    return false;
                }
                tracing::debug!(service = self.service.name(), %peer, %client, from = %current.addr(), to = %pin.endpoint().addr(), refused, "udp flow re-pinned");
                let flow = self.table.get_mut(id).expect("a routed flow exists");
                flow.repin(pin, upstream);
                true
            }
            Err(reason) => {
                self.drop_datagram(reason, peer);
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
                    let client = self.placement[usize::from(run[sent])];
                    if refusals > 2 || !self.repin(id, client) {
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

    /// Registers `upstream`, flow `id`'s new socket, with the loop's poll; false (logged) when
    /// it cannot be.
    fn watch(&self, id: FlowId, upstream: &std::net::UdpSocket) -> bool {
        let token = flow_token(self.source, id);
        match register(&self.registry, upstream, token, Interest::READABLE) {
            Ok(()) => true,
            Err(error) => {
                tracing::debug!(service = self.service.name(), %error, "cannot register a flow's socket");
                false
            }
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

    fn drop_datagram(&self, reason: UdpDrop, peer: SocketAddr) {
        self.drop_datagrams(reason, peer, 1);
    }

    fn drop_datagrams(&self, reason: UdpDrop, peer: SocketAddr, count: usize) {
        self.service.metrics.udp().dropped(reason, count);
        // Per datagram, and a remote peer can cause it at will: trace only.
        tracing::trace!(service = self.service.name(), %peer, reason = reason.as_str(), count, "udp datagrams dropped");
    }
}

/// Reading the replies of the flows whose sockets are ready, and sending them on to their
/// clients from the listening socket, a batch at a time (the parts of a [`PortLoop`] this
/// touches, borrowed apart from the ready list).
struct Relay<'a> {
    service: &'a ServiceState,
    listen: &'a std::net::UdpSocket,
    table: &'a mut FlowTable<std::net::UdpSocket>,
    /// Flows to come back to on the next turn.
    next: &'a mut Vec<FlowId>,
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
    /// Reads and sends the replies of the flows in `ready` (emptied) until none is left or
    /// about `budget` were handled; returns how many were.
    fn run(mut self, ready: &mut Vec<FlowId>, budget: usize) -> usize {
        for id in ready.drain(..) {
            if self.handled >= budget {
                // Not read this turn: the next one comes back to it.
                self.next.push(id);
            } else {
                self.read_flow(id);
            }
        }
        self.flush();
        self.handled
    }

    /// Reads flow `id`'s replies until its socket has none or [`PER_FLOW`] were read.
    fn read_flow(&mut self, id: FlowId) {
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
                self.slots,
                self.filled,
                SLOTS - self.filled,
            ) {
                Ok(received) => {
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
                    if received.drained {
                        // The next datagram brings a new edge.
                        return;
                    }
                }
                Err(error) if is_refusal(&error) => {
                    // Reported once; the socket reads on.
                    flow.mark_refused();
                    self.service
                        .connect_failed(&self.service.load_snapshot(), flow.endpoint());
                    read += 1;
                }
                Err(error) => {
                    tracing::debug!(service = self.service.name(), endpoint = %flow.endpoint().addr(), %error, "udp upstream receive failed");
                    read += 1;
                    self.handled += 1;
                }
            }
        }
        // Not drained: come back on the next turn.
        self.next.push(id);
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
    /// Fewer than asked: the socket's queue was empty, and only a new edge says when it is not.
    drained: bool,
}

/// Receives up to `asked` datagrams from `socket` into the slots from `first`.
fn receive(
    socket: &std::net::UdpSocket,
    slots: &mut Slots,
    first: usize,
    asked: usize,
) -> io::Result<Received> {
    match batch::recv(socket.as_fd(), slots, first, asked) {
        Ok(count) => Ok(Received {
            count,
            drained: count < asked,
        }),
        Err(error) if error.kind() == io::ErrorKind::WouldBlock => Ok(Received {
            count: 0,
            drained: true,
        }),
        Err(error) => Err(error),
    }
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

/// A new upstream socket to `endpoint` (registered with the loop by the caller).
fn upstream_socket(
    service: &ServiceState,
    endpoint: &Endpoint,
) -> Result<std::net::UdpSocket, UdpDrop> {
    socket::upstream(endpoint.addr())
        .inspect(|socket| {
            // An endpoint that sends trains (GSO) hands them over as one message.
            batch::enable_gro(socket.as_fd());
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
