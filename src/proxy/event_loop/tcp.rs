//! The TCP side of a worker's loop: a service port's listener, and the events, deadlines and
//! drain signals of its connections.
//!
//! The listener is the one socket registered level-triggered, and each report of it accepts one
//! connection (nginx's `multi_accept off`): accepting until `WouldBlock` would end every
//! wake-up with an `accept4` that fails, one system call per connection when they come one at
//! a time; level-triggered, the next `epoll_wait` reports the listener again while its queue is
//! not empty, beside the other sockets' events. While accepting is paused (out of descriptors
//! or memory) the listener is registered for nothing, so a full queue cannot spin the loop.
//! The same pause holds a listener while its service or the process is at `max_connections`
//! (`proxy::admission`): clients wait in the kernel's accept queue until a connection closes.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use mio::event::Event;
use mio::net::TcpListener;
use mio::{Registry, Token};
use rustix::event::epoll::{self, EventData, EventFlags};
use socket2::SockRef;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;
use tokio_util::task::task_tracker::TaskTrackerToken;

use super::conn::{Admitted, Flow, Phase};
use super::connect::release;
use super::keepalive::ListenerKeepalive;
use super::{CLIENT, EventLoop, Source, TICK_MS, upstream_side};
use crate::proxy::admission::ConnectionLimit;
use crate::service::ServiceState;

/// First back-off after an accept error that will not clear by itself at once (e.g. EMFILE).
const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(5);
/// Longest back-off between accept attempts.
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// One worker's listener of a TCP service port, and the count of its connections. It outlives
/// its listener while connections it accepted are open: they pick from its service.
pub struct TcpPort {
    listener: Option<TcpListener>,
    nodelay_inherited: bool,
    /// What the listener passes on to accepted sockets as far as keepalive goes.
    keepalive: ListenerKeepalive,
    pub service: Arc<ServiceState>,
    /// The service port as configured.
    pub port: u16,
    pub stop: CancellationToken,
    /// The listener's address, unless it is a wildcard (then each connection's own is asked).
    local: Option<std::net::SocketAddr>,
    /// Dropped when the listener closes: the control plane waits for it.
    closed: Option<oneshot::Sender<()>>,
    /// Dropped when the listener is closed and its last connection ended: shutdown waits.
    _held: TaskTrackerToken,
    /// Open connections accepted here.
    pub connections: usize,
    backoff: Duration,
    resume_ms: Option<u64>,
    /// Paused because a connection limit is reached: listens again when a close wakes the loop.
    limited: bool,
    /// The listener's token, and whether it is in the epoll set yet.
    token: Token,
    registered: bool,
}

impl TcpPort {
    /// Takes over a bound, listening socket; on failure hands the service back for the log.
    pub fn new(
        listener: std::net::TcpListener,
        service: Arc<ServiceState>,
        port: u16,
        stop: CancellationToken,
        closed: oneshot::Sender<()>,
        held: TaskTrackerToken,
    ) -> Result<TcpPort, (Arc<ServiceState>, io::Error)> {
        if let Err(error) = listener.set_nonblocking(true) {
            return Err((service, error));
        }
        // Accepted sockets inherit TCP_NODELAY from the listener on Linux: one syscall here
        // instead of one per connection. Small writes should not wait on Nagle: the client's
        // own stack already decided when to send.
        let nodelay_inherited =
            cfg!(target_os = "linux") && SockRef::from(&listener).set_tcp_nodelay(true).is_ok();
        let local = listener
            .local_addr()
            .ok()
            .filter(|a| !a.ip().is_unspecified());
        Ok(TcpPort {
            local,
            listener: Some(TcpListener::from_std(listener)),
            nodelay_inherited,
            keepalive: ListenerKeepalive::default(),
            service,
            port,
            stop,
            closed: Some(closed),
            _held: held,
            connections: 0,
            backoff: ACCEPT_BACKOFF_MIN,
            resume_ms: None,
            limited: false,
            token: Token(0),
            registered: false,
        })
    }

    /// Registers the listener with the loop's poll under `token`, level-triggered.
    pub fn register(&mut self, registry: &Registry, token: Token) -> io::Result<()> {
        self.token = token;
        self.listen_for(registry, EventFlags::IN)
    }

    /// Sets what the listener is registered for: readable, or nothing while paused.
    fn listen_for(&mut self, registry: &Registry, flags: EventFlags) -> io::Result<()> {
        let listener = self
            .listener
            .as_ref()
            .expect("only an open listener is registered");
        let data = EventData::new_u64(self.token.0 as u64);
        if self.registered {
            epoll::modify(registry, listener, data, flags)?;
        } else {
            epoll::add(registry, listener, data, flags)?;
            self.registered = true;
        }
        Ok(())
    }

    /// The address clients connect to, unless the listener is a wildcard.
    pub fn local_addr(&self) -> Option<std::net::SocketAddr> {
        self.local
    }

    /// Whether the listener is still open.
    pub fn is_listening(&self) -> bool {
        self.listener.is_some()
    }

    /// When a paused accept resumes (loop milliseconds).
    pub fn resume_ms(&self) -> Option<u64> {
        self.resume_ms.filter(|_| self.listener.is_some())
    }

    /// Closes the listener at once: new connections are refused from here on, and the control
    /// plane hears that it is closed.
    pub fn close_listener(&mut self) {
        self.listener = None;
        self.closed = None;
        tracing::debug!(service = self.service.name(), "listener closed");
    }
}

impl EventLoop {
    /// Accepts one connection on the listener of source `source` (more are reported again),
    /// pausing on resource errors.
    pub(super) fn accept_one(&mut self, source: usize, now: u64) {
        loop {
            let Some(Source::Tcp(tcp)) = self.sources.get_mut(source) else {
                return;
            };
            if tcp.resume_ms.is_some() || tcp.limited {
                return;
            }
            let Some(listener) = &tcp.listener else {
                return;
            };
            let admitted = match admit(&tcp.service.limit, &self.process_limit) {
                Ok(admitted) => admitted,
                Err(full) => {
                    // Stay paused unless a connection closed meanwhile (then the listener,
                    // level-triggered, is reported again next turn).
                    if full.pause() {
                        tcp.limited = true;
                        if let Err(error) =
                            tcp.listen_for(self.poll.registry(), EventFlags::empty())
                        {
                            tracing::error!(service = tcp.service.name(), %error, "cannot pause the listener");
                        }
                    }
                    return;
                }
            };
            match listener.accept() {
                Ok((client, peer)) => {
                    tcp.backoff = ACCEPT_BACKOFF_MIN;
                    if !tcp.nodelay_inherited {
                        let _ = client.set_nodelay(true);
                    }
                    tcp.keepalive.accepted(listener, &client, &tcp.service);
                    self.start(source, client, peer, admitted, now);
                    return;
                }
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => {
                    release(&tcp.service, &self.process_limit, admitted);
                    return;
                }
                Err(error) => {
                    release(&tcp.service, &self.process_limit, admitted);
                    tcp.service.metrics.accept_errors.increment(1);
                    if matches!(
                        error.kind(),
                        io::ErrorKind::ConnectionAborted
                            | io::ErrorKind::ConnectionReset
                            | io::ErrorKind::Interrupted
                    ) {
                        // The peer gave up before we accepted: nothing to wait for.
                        tracing::debug!(service = tcp.service.name(), %error, "accept failed");
                        continue;
                    }
                    // Out of descriptors or memory: accepting again at once would spin. Wait
                    // for connections to close, growing the pause while the condition lasts.
                    tracing::warn!(service = tcp.service.name(), %error, pause = ?tcp.backoff, "accept failed; pausing");
                    tcp.resume_ms = Some(now + tcp.backoff.as_millis() as u64);
                    tcp.backoff = (tcp.backoff * 2).min(ACCEPT_BACKOFF_MAX);
                    if let Err(error) = tcp.listen_for(self.poll.registry(), EventFlags::empty()) {
                        tracing::error!(service = tcp.service.name(), %error, "cannot pause the listener");
                    }
                    return;
                }
            }
        }
    }

    /// Listens again on listeners whose pause is over.
    pub(super) fn resume_accepts(&mut self, now: u64) {
        for (_, source) in self.sources.iter_mut() {
            if let Source::Tcp(tcp) = source
                && tcp.resume_ms().is_some_and(|at| now >= at)
            {
                tcp.resume_ms = None;
                if let Err(error) = tcp.listen_for(self.poll.registry(), EventFlags::IN) {
                    tracing::error!(service = tcp.service.name(), %error, "cannot resume the listener");
                }
            }
        }
    }

    /// Listens again on listeners paused on a connection limit (woken by a close); one still
    /// at its limit pauses again at its next report.
    pub(super) fn resume_limited(&mut self) {
        for (_, source) in self.sources.iter_mut() {
            if let Source::Tcp(tcp) = source
                && tcp.limited
                && tcp.is_listening()
            {
                tcp.limited = false;
                if let Err(error) = tcp.listen_for(self.poll.registry(), EventFlags::IN) {
                    tracing::error!(service = tcp.service.name(), %error, "cannot resume the listener");
                }
            }
        }
    }

    /// Readiness of one socket of connection `key`.
    pub(super) fn on_conn_event(
        &mut self,
        key: usize,
        generation: u32,
        side: usize,
        event: &Event,
        now: u64,
    ) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        if conn.generation != generation {
            return;
        }
        let ready = if side == CLIENT {
            &mut conn.client_ready
        } else {
            match &conn.phase {
                // A late event of an earlier attempt's socket.
                Phase::Connecting(c)
                    if c.attempt.is_none() || upstream_side(c.tried - 1) != side =>
                {
                    return;
                }
                _ => &mut conn.upstream_ready,
            }
        };
        ready.note(event);
        self.drive(key, now);
    }

    /// Arms the wheel for connection `key`'s next deadline unless an entry at or before it is
    /// armed already (that entry re-arms when it fires early).
    pub(super) fn arm(&mut self, key: usize) {
        let conn = &mut self.conns[key];
        let at = conn.deadline_ms();
        if conn.armed_tick.is_some_and(|tick| tick * TICK_MS <= at) {
            return;
        }
        conn.armed_tick = Some(self.wheel.insert(at, key, conn.generation));
    }

    /// Reacts to readiness of connection `key`.
    fn drive(&mut self, key: usize, now: u64) {
        let conn = &mut self.conns[key];
        if let Phase::Accepted(_) = conn.phase {
            self.read_header(key, now);
            return;
        }
        if let Phase::Connecting(connecting) = &mut conn.phase {
            if connecting.attempt.is_none() {
                // Queued. A client that resets gives up its place; one that only sent its FIN
                // may still want the answer, and waits on.
                if conn.client_ready.failed {
                    self.close(key);
                }
                return;
            }
            if !conn.upstream_ready.writable {
                return;
            }
            // A writable edge ends the connect either way; an error or hang-up with it says it
            // failed (SO_ERROR is read only then, for the log: a success costs no syscall).
            let failed = conn.upstream_ready.failed.then(|| {
                let upstream = conn.upstream.as_ref().expect("an attempt has a socket");
                match upstream.take_error() {
                    Ok(Some(e)) | Err(e) => e,
                    Ok(None) => io::Error::from(io::ErrorKind::ConnectionReset),
                }
            });
            let (_, endpoint) = connecting.attempt.as_ref().expect("attempt in flight");
            if let Some(error) = failed {
                let Some(Source::Tcp(tcp)) = self.sources.get(conn.source) else {
                    unreachable!("a connection's port outlives it");
                };
                tcp.service.connect_failed(&connecting.snapshot, endpoint);
                tracing::debug!(service = tcp.service.name(), endpoint = %endpoint.addr(), %error, "connect failed; trying the next endpoint");
                self.next_attempt(key, now);
                return;
            }
            self.established(key, now);
        }
        let conn = &mut self.conns[key];
        let result = conn.forward(now, &mut self.buffers, self.pipes);
        match result {
            Ok((flow, moved_in, moved_out)) => {
                if let Phase::Established(established) = &conn.phase {
                    let metrics = &established.active.endpoint().metrics;
                    if moved_in > 0 {
                        metrics.bytes_in.increment(moved_in as u64);
                    }
                    if moved_out > 0 {
                        metrics.bytes_out.increment(moved_out as u64);
                    }
                }
                if flow == Flow::Complete {
                    self.close(key);
                }
            }
            Err(error) => {
                if let Some(Source::Tcp(tcp)) = self.sources.get(conn.source) {
                    tracing::debug!(service = tcp.service.name(), %error, "connection error");
                }
                self.close(key);
            }
        }
    }

    /// Closes connection `key`: both sockets are dropped without deregistration. The port
    /// goes too when it is closed and this was its last connection.
    pub(super) fn close(&mut self, key: usize) {
        let mut conn = self.conns.remove(key);
        let Some(Source::Tcp(tcp)) = self.sources.get_mut(conn.source) else {
            unreachable!("a connection's port outlives it");
        };
        release(&tcp.service, &self.process_limit, conn.admitted);
        if let Some(pair) = conn.buffers.take() {
            self.buffers.give(pair);
        }
        // Whether the close frees a slot of an endpoint with a connection limit.
        let frees_limited_slot = match conn.phase {
            Phase::Accepted(_) => false,
            Phase::Connecting(connecting) => {
                if connecting.waiting {
                    tcp.service.queue.leave(&self.mailbox, key, conn.generation);
                }
                connecting
                    .attempt
                    .is_some_and(|(_, endpoint)| endpoint.limit().is_some())
            }
            Phase::Established(established) => {
                if established.drain_at_ms.is_none()
                    && let Some(i) = self
                        .watched
                        .iter()
                        .position(|w| Arc::ptr_eq(&w.drain, &established.drain))
                {
                    self.watched[i].connections -= 1;
                    if self.watched[i].connections == 0 {
                        self.watched.swap_remove(i);
                    }
                }
                // The arm drops `active`, freeing the slot, before the queue hears of it.
                established.active.endpoint().limit().is_some()
            }
        };
        if frees_limited_slot {
            tcp.service.queue.slot_freed();
        }
        tcp.connections -= 1;
        if tcp.connections == 0 && !tcp.is_listening() {
            self.sources.remove(conn.source);
        }
    }

    /// Looks at every watched drain signal; connections of one that fired get their deadline.
    pub(super) fn poll_drains(&mut self, now: u64) {
        self.next_drain_poll_ms = now + super::DRAIN_POLL_MS;
        let mut i = 0;
        while i < self.watched.len() {
            if !self.watched[i].drain.is_cancelled() {
                i += 1;
                continue;
            }
            let fired = self.watched.swap_remove(i).drain;
            // The turn's clock was read before its events: count the grace from now, so no
            // connection gets less than its drain timeout.
            let now = self.now_ms();
            let (mut later, mut at_once) = (Vec::new(), Vec::new());
            for (key, conn) in self.conns.iter_mut() {
                if let Phase::Established(established) = &mut conn.phase
                    && established.drain_at_ms.is_none()
                    && Arc::ptr_eq(&established.drain, &fired)
                {
                    let grace = fired.grace(established.drain_timeout);
                    established.drain_at_ms = Some(now + grace.as_millis() as u64);
                    if grace.is_zero() {
                        at_once.push(key);
                    } else {
                        later.push(key);
                    }
                }
            }
            for key in later {
                self.arm(key);
            }
            // Closed now, not at the wheel's next tick: not one more request may reach an
            // endpoint whose connections must end at once.
            for key in at_once {
                tracing::debug!("drained at once; closing");
                self.close(key);
            }
        }
    }

    /// Handles the wheel's entries due by `now`.
    pub(super) fn expire(&mut self, now: u64) {
        let mut fired = std::mem::take(&mut self.fired);
        self.wheel.advance(now, &mut fired);
        for (key, generation, tick) in fired.drain(..) {
            let Some(conn) = self.conns.get_mut(key) else {
                continue;
            };
            if conn.generation != generation || conn.armed_tick != Some(tick) {
                continue;
            }
            conn.armed_tick = None;
            if conn.deadline_ms() > now {
                self.arm(key);
                continue;
            }
            let Some(Source::Tcp(tcp)) = self.sources.get(conn.source) else {
                unreachable!("a connection's port outlives it");
            };
            match &conn.phase {
                Phase::Accepted(accepted) => {
                    tcp.service.metrics.proxy_protocol_error("timeout");
                    tracing::debug!(service = tcp.service.name(), peer = %accepted.peer, "no whole PROXY header within proxy_protocol_timeout; closing");
                    self.close(key);
                }
                Phase::Connecting(connecting) if connecting.attempt.is_none() => {
                    tracing::debug!(
                        service = tcp.service.name(),
                        "no endpoint below its connection limit within queue_timeout; closing"
                    );
                    tcp.service.queue.timeouts.increment(1);
                    tcp.service.metrics.connections_failed.increment(1);
                    self.close(key);
                }
                Phase::Connecting(connecting) => {
                    let (_, endpoint) = connecting.attempt.as_ref().expect("attempt in flight");
                    tcp.service.connect_failed(&connecting.snapshot, endpoint);
                    tracing::debug!(service = tcp.service.name(), endpoint = %endpoint.addr(), "connect timed out; trying the next endpoint");
                    self.next_attempt(key, now);
                }
                Phase::Established(established) => {
                    let drained = established.drain_at_ms.is_some_and(|at| at <= now);
                    if drained {
                        tracing::debug!(service = tcp.service.name(), endpoint = %established.active.endpoint().addr(), "drain deadline reached; closing");
                    } else {
                        tracing::debug!(service = tcp.service.name(), endpoint = %established.active.endpoint().addr(), "idle timeout");
                    }
                    self.close(key);
                }
            }
        }
        self.fired = fired;
    }
}

/// Counts a new connection against its service's limit and the process's; on `Err`, the
/// limit that is reached (nothing is counted then).
fn admit<'a>(
    service: &'a ConnectionLimit,
    process: &'a ConnectionLimit,
) -> Result<Admitted, &'a ConnectionLimit> {
    let service_counted = service.try_open().ok_or(service)?;
    match process.try_open() {
        Some(process_counted) => Ok(Admitted {
            service: service_counted,
            process: process_counted,
        }),
        None => {
            if service_counted {
                service.close();
            }
            Err(process)
        }
    }
}
