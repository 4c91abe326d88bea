//! The data plane's event loop: vipd's own edge-triggered epoll loop on `mio`, one per worker
//! thread, serving that worker's socket of every TCP and UDP service port — the way nginx,
//! HAProxy and sozu work (why this design, and what it was measured against, is in
//! benches/README.md).
//!
//! The control plane hands a loop its sockets as [`Command`]s over a channel and wakes it; the
//! loop answers through the command's `closed` sender once a socket it was told to stop is
//! closed. Everything else the two share is what they always shared: the service snapshot, the
//! endpoint atomics, cancellation tokens (a stop token per socket, a drain signal per
//! endpoint) and the owner's channel.
//!
//! Inside the loop nothing is a task: TCP connections are state machines in a slab
//! ([`conn`], [`connect`], [`tcp`]); a mio token is the slab key with a generation and
//! which socket of the connection it names, so events of a slot's earlier occupant are
//! dropped. Every socket is registered once, readable and writable, edge-triggered, and closed
//! without `EPOLL_CTL_DEL`: dropping the last descriptor removes it from the epoll set.
//! Connect, idle and drain deadlines live in a hashed timer wheel ([`wheel`]). Bulk directions
//! move through pooled pipes with splice(2) ([`splice`]). UDP ports keep their batched paths
//! (`proxy::udp`), driven by the same readiness.
//!
//! Drain signals are not watched per connection: a connection takes its endpoint's `Drain`,
//! but the loop keeps one entry per distinct `Drain` (there are as many as endpoints, not
//! connections) and looks at each when told to ([`look_at_drains`], called when an endpoint's
//! drain starts or its connections must close at once), and every [`DRAIN_POLL_MS`] for the
//! signals that fire through a parent token (a service retired, shutdown). Per-connection
//! watching would need a waker per connection in each token's waiter list, an allocation and a
//! cross-thread wake each, for a signal that fires about once per endpoint lifetime.

mod conn;
mod connect;
#[cfg(test)]
mod forward_tests;
mod header;
mod keepalive;
mod splice;
mod tcp;
mod wheel;

use std::io;
use std::os::fd::AsRawFd;
use std::sync::mpsc;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Registry, Token, Waker};
use slab::Slab;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;
use tokio_util::task::task_tracker::TaskTrackerToken;

use self::conn::{BufferPool, Conn};
use self::tcp::TcpPort;
use self::wheel::Wheel;
use super::admission::{ConnectionLimit, Grant, Mailbox};
use super::pipe_pool::PipePool;
use super::udp::PortLoop;
use crate::service::ServiceState;
use crate::service::drain::Drain;

#[cfg(not(target_pointer_width = "64"))]
compile_error!("event loop tokens pack a key, a generation and a side into 64 bits");

/// Timer wheel: 4 ms ticks, 1024 slots (one revolution ≈ 4 s).
const TICK_MS: u64 = 4;
const SLOTS: usize = 1024;
/// How often the drain signals of established connections are looked at.
pub const DRAIN_POLL_MS: u64 = 25;
/// Events taken per `epoll_wait`.
const EVENTS: usize = 1024;
/// Buffer pairs kept for reuse once their connections closed.
const FREE_BUFFERS_MAX: usize = 4096;
/// UDP datagrams (or GRO trains) one port handles per loop turn before the others get theirs.
const UDP_BUDGET: usize = 8 * super::udp::batch::SLOTS;

/// Every loop's waker in the process, for [`wake_all_loops`]; dead ones are dropped as found.
static LOOPS: Mutex<Vec<Weak<Waker>>> = Mutex::new(Vec::new());

/// Has every loop look at its drain signals now. Called when a drain fires directly; rare (an
/// endpoint removed, drained, or marked down with `on_marked_down = "close"`), so a lock is
/// fine here.
pub fn look_at_drains() {
    wake_all_loops();
}

/// Wakes every loop in the process: each looks at its drain signals, and listens again where
/// it paused on a connection limit. For rare events only (a lock is taken).
pub fn wake_all_loops() {
    let mut loops = LOOPS.lock().unwrap_or_else(|e| e.into_inner());
    loops.retain(|waker| match waker.upgrade() {
        Some(waker) => waker.wake().is_ok(),
        None => false,
    });
}

/// A socket handed to a worker's loop.
pub enum Command {
    /// Accept on a TCP listener until `stop`.
    Tcp {
        /// Bound and listening.
        listener: std::net::TcpListener,
        /// The service whose snapshot picks endpoints.
        service: Arc<ServiceState>,
        /// The service port as configured (the pool to pick from).
        port: u16,
        /// Closes the listener when cancelled.
        stop: CancellationToken,
        /// Dropped once the listener is closed.
        closed: oneshot::Sender<()>,
        /// Dropped once the listener is closed and its last connection has ended.
        held: TaskTrackerToken,
    },
    /// Serve a UDP socket until `stop`; its flows end with it.
    Udp {
        /// Bound.
        socket: std::net::UdpSocket,
        /// The service whose snapshot places flows.
        service: Arc<ServiceState>,
        /// The service port as configured.
        port: u16,
        /// Closes the socket when cancelled.
        stop: CancellationToken,
        /// Dropped once the socket is closed.
        closed: oneshot::Sender<()>,
    },
}

/// The control plane's end of one loop: the only sender of its commands. The loop ends once
/// its handle is dropped.
#[derive(Debug)]
pub struct LoopHandle {
    commands: mpsc::Sender<Command>,
    waker: LoopWaker,
}

impl LoopHandle {
    /// Hands `command` to the loop; false when the loop is gone.
    pub fn send(&self, command: Command) -> bool {
        self.commands.send(command).is_ok() && self.waker.wake()
    }

    /// What wakes the loop, to keep apart from the handle.
    pub fn waker(&self) -> LoopWaker {
        self.waker.clone()
    }
}

impl Drop for LoopHandle {
    fn drop(&mut self) {
        // The loop sees the channel closed on this wake-up (the sender goes right after).
        let waker = self.waker.clone();
        let (closed, _) = mpsc::channel();
        drop(std::mem::replace(&mut self.commands, closed));
        waker.wake();
    }
}

/// Wakes a loop so it looks at its commands and stop tokens.
#[derive(Debug, Clone)]
pub struct LoopWaker(Arc<Waker>);

impl LoopWaker {
    /// False when the loop is gone.
    pub fn wake(&self) -> bool {
        self.0.wake().is_ok()
    }
}

// What a token names. TCP connections: side in bits 0–1 (0 client, 1 or 2 upstream), slab key
// in bits 2–31, generation in bits 32–62. Sockets of service ports: side 3, bit 2 clear, the
// source key from bit 3. UDP flows: side 3, bit 2 set, the port's source key in bits 3–31, the
// flow id in bits 32–63.
const WAKER: Token = Token(usize::MAX);
const CLIENT: usize = 0;
const OTHER: usize = 3;
const FLOW: usize = 4;
/// Keys and generations must fit their fields.
const KEY_LIMIT: usize = 1 << 29;

fn conn_token(key: usize, generation: u32, side: usize) -> Token {
    Token(((generation as usize) << 32) | (key << 2) | side)
}

fn source_token(source: usize) -> Token {
    Token((source << 3) | OTHER)
}

/// The token of flow `id` of the UDP port at `source`.
pub fn flow_token(source: usize, id: usize) -> Token {
    Token((id << 32) | (source << 3) | FLOW | OTHER)
}

/// What an event's token names.
#[derive(Debug, PartialEq, Eq)]
enum Named {
    Waker,
    Conn {
        key: usize,
        generation: u32,
        side: usize,
    },
    Source(usize),
    Flow {
        source: usize,
        id: usize,
    },
}

fn untoken(token: Token) -> Named {
    let t = token.0;
    if token == WAKER {
        return Named::Waker;
    }
    if t & 3 != OTHER {
        return Named::Conn {
            key: (t & 0xFFFF_FFFF) >> 2,
            generation: (t >> 32) as u32,
            side: t & 3,
        };
    }
    let source = (t & 0xFFFF_FFFF) >> 3;
    if t & FLOW == 0 {
        Named::Source(source)
    } else {
        Named::Flow {
            source,
            id: t >> 32,
        }
    }
}

fn upstream_side(tried: usize) -> usize {
    1 + (tried & 1)
}

/// Registers a socket by its descriptor, readable (and writable when asked), edge-triggered.
pub(crate) fn register(
    registry: &Registry,
    fd: &impl AsRawFd,
    token: Token,
    interest: Interest,
) -> io::Result<()> {
    registry.register(&mut SourceFd(&fd.as_raw_fd()), token, interest)
}

/// A service port's socket on this loop.
enum Source {
    Tcp(TcpPort),
    /// Boxed: a UDP port carries its batch headers inline.
    Udp(Box<UdpSource>),
}

/// A UDP port and how the control plane stops it.
struct UdpSource {
    port: PortLoop,
    stop: CancellationToken,
    _closed: oneshot::Sender<()>,
    /// In `EventLoop::udp_busy`.
    busy: bool,
}

/// A drain signal some established connections watch.
struct Watched {
    drain: Arc<Drain>,
    connections: usize,
}

/// The loop of one worker.
pub struct EventLoop {
    poll: Poll,
    /// Kept here too: closing the eventfd while a wake-up is pending would drop the wake-up.
    _waker: Arc<Waker>,
    commands: mpsc::Receiver<Command>,
    /// The control plane let go of the loop: it ends.
    detached: bool,
    sources: Slab<Source>,
    conns: Slab<Conn>,
    next_generation: u32,
    wheel: Wheel,
    fired: Vec<(usize, u32, u64)>,
    buffers: BufferPool,
    /// Where bulk directions borrow pipes; `None` never splices.
    pipes: Option<&'static PipePool>,
    watched: Vec<Watched>,
    next_drain_poll_ms: u64,
    /// UDP ports with datagrams left for the next turn.
    udp_busy: Vec<usize>,
    /// The process's `max_connections`, shared by every loop.
    process_limit: Arc<ConnectionLimit>,
    /// Where queued connections of this loop are granted endpoint slots.
    mailbox: Arc<Mailbox>,
    /// Scratch for the granted connections of one wake-up.
    granted: Vec<Grant>,
    epoch: Instant,
}

impl EventLoop {
    /// A loop and the handle that feeds it; its connections count against `process_limit`.
    pub fn new(process_limit: Arc<ConnectionLimit>) -> io::Result<(EventLoop, LoopHandle)> {
        let poll = Poll::new()?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        LOOPS
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Arc::downgrade(&waker));
        let (commands, receiver) = mpsc::channel();
        let event_loop = EventLoop {
            poll,
            _waker: Arc::clone(&waker),
            commands: receiver,
            detached: false,
            sources: Slab::new(),
            conns: Slab::new(),
            next_generation: 0,
            wheel: Wheel::new(SLOTS, TICK_MS, 0),
            fired: Vec::new(),
            buffers: BufferPool::new(FREE_BUFFERS_MAX),
            pipes: Some(PipePool::global()),
            watched: Vec::new(),
            next_drain_poll_ms: DRAIN_POLL_MS,
            udp_busy: Vec::new(),
            process_limit,
            mailbox: Arc::new(Mailbox::new(Arc::clone(&waker))),
            granted: Vec::new(),
            epoch: Instant::now(),
        };
        Ok((
            event_loop,
            LoopHandle {
                commands,
                waker: LoopWaker(waker),
            },
        ))
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Runs until the handle is dropped (every sender of commands gone). Connections still
    /// open then are dropped with the loop: the control plane drains them first.
    pub fn run(mut self) {
        let mut events = Events::with_capacity(EVENTS);
        while !self.detached {
            let timeout = if self.udp_busy.is_empty() {
                self.timeout(self.now_ms())
            } else {
                Some(Duration::ZERO)
            };
            if let Err(error) = self.poll.poll(&mut events, timeout) {
                if error.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                tracing::error!(%error, "epoll_wait failed; the worker's event loop stops");
                break;
            }
            let now = self.now_ms();
            for event in events.iter() {
                match untoken(event.token()) {
                    Named::Waker => self.on_wake(now),
                    Named::Conn {
                        key,
                        generation,
                        side,
                    } => self.on_conn_event(key, generation, side, event, now),
                    Named::Source(source) => match self.sources.get_mut(source) {
                        Some(Source::Tcp(_)) => self.accept_one(source, now),
                        Some(Source::Udp(udp)) => {
                            udp.port.listen_ready();
                            self.mark_udp_busy(source);
                        }
                        None => {}
                    },
                    Named::Flow { source, id } => {
                        if let Some(Source::Udp(udp)) = self.sources.get_mut(source) {
                            udp.port.flow_ready(id);
                            self.mark_udp_busy(source);
                        }
                    }
                }
            }
            self.run_udp();
            self.resume_accepts(now);
            if !self.watched.is_empty() && now >= self.next_drain_poll_ms {
                self.poll_drains(now);
            }
            self.expire(now);
            self.sweep_udp(now);
        }
        tracing::debug!(connections = self.conns.len(), "worker event loop ends");
    }

    /// How long `epoll_wait` may sleep: until the next timer, accept retry, drain poll or UDP
    /// sweep.
    fn timeout(&self, now: u64) -> Option<Duration> {
        let mut at = self.wheel.next_due_ms();
        let mut sooner = |candidate: Option<u64>| {
            if let Some(c) = candidate {
                at = Some(at.map_or(c, |a: u64| a.min(c)));
            }
        };
        if !self.watched.is_empty() {
            sooner(Some(self.next_drain_poll_ms));
        }
        for (_, source) in &self.sources {
            match source {
                Source::Tcp(tcp) => sooner(tcp.resume_ms()),
                Source::Udp(udp) => sooner(Some(udp.port.next_sweep_ms())),
            }
        }
        at.map(|at| Duration::from_millis(at.saturating_sub(now)))
    }

    /// Takes new sockets, and closes those whose stop token fired.
    fn on_wake(&mut self, now: u64) {
        // Woken by `look_at_drains`, or for a command: wake-ups are rare, and a look costs one
        // check per watched signal, so every wake-up looks at the drains this turn.
        self.next_drain_poll_ms = 0;
        self.resume_limited();
        self.take_granted(now);
        loop {
            match self.commands.try_recv() {
                Ok(command) => self.add(command, now),
                Err(mpsc::TryRecvError::Empty) => break,
                Err(mpsc::TryRecvError::Disconnected) => {
                    self.detached = true;
                    break;
                }
            }
        }
        let stopped: Vec<usize> = self
            .sources
            .iter()
            .filter(|(_, source)| match source {
                Source::Tcp(tcp) => tcp.is_listening() && tcp.stop.is_cancelled(),
                Source::Udp(udp) => udp.stop.is_cancelled(),
            })
            .map(|(key, _)| key)
            .collect();
        for key in stopped {
            match &mut self.sources[key] {
                Source::Tcp(tcp) => {
                    tcp.close_listener();
                    if tcp.connections == 0 {
                        self.sources.remove(key);
                    }
                }
                Source::Udp(_) => {
                    if let Source::Udp(udp) = self.sources.remove(key) {
                        udp.port.closed();
                    }
                }
            }
        }
    }

    fn add(&mut self, command: Command, now: u64) {
        let entry = self.sources.vacant_entry();
        let key = entry.key();
        match command {
            Command::Tcp {
                listener,
                service,
                port,
                stop,
                closed,
                held,
            } => {
                if key >= KEY_LIMIT {
                    tracing::error!(service = service.name(), "too many listeners on one worker");
                    return;
                }
                match TcpPort::new(listener, service, port, stop, closed, held) {
                    Ok(mut tcp) => {
                        if let Err(error) = tcp.register(self.poll.registry(), source_token(key)) {
                            tracing::error!(service = tcp.service.name(), %error, "cannot serve a listening socket");
                            return;
                        }
                        // Connections queued before the registration are reported at once.
                        entry.insert(Source::Tcp(tcp));
                    }
                    Err((service, error)) => {
                        tracing::error!(service = service.name(), %error, "cannot serve a listening socket");
                    }
                }
            }
            Command::Udp {
                socket,
                service,
                port,
                stop,
                closed,
            } => {
                if key >= KEY_LIMIT {
                    tracing::error!(service = service.name(), "too many UDP ports on one worker");
                    return;
                }
                let registered = socket.set_nonblocking(true).and_then(|()| {
                    register(
                        self.poll.registry(),
                        &socket,
                        source_token(key),
                        Interest::READABLE,
                    )?;
                    self.poll.registry().try_clone()
                });
                let registry = match registered {
                    Ok(registry) => registry,
                    Err(error) => {
                        tracing::error!(service = service.name(), %error, "cannot serve a UDP socket");
                        return;
                    }
                };
                let port = PortLoop::new(socket, service, port, registry, key, now);
                entry.insert(Source::Udp(Box::new(UdpSource {
                    port,
                    stop,
                    _closed: closed,
                    busy: true,
                })));
                // Datagrams may have queued before the registration.
                if let Some(Source::Udp(udp)) = self.sources.get_mut(key) {
                    udp.port.listen_ready();
                }
                self.udp_busy.push(key);
            }
        }
    }

    fn mark_udp_busy(&mut self, source: usize) {
        if let Some(Source::Udp(udp)) = self.sources.get_mut(source)
            && !udp.busy
        {
            udp.busy = true;
            self.udp_busy.push(source);
        }
    }

    /// Gives each busy UDP port a turn of up to [`UDP_BUDGET`] datagrams.
    fn run_udp(&mut self) {
        if self.udp_busy.is_empty() {
            return;
        }
        let busy = std::mem::take(&mut self.udp_busy);
        for &source in &busy {
            let Some(Source::Udp(udp)) = self.sources.get_mut(source) else {
                continue;
            };
            if udp.port.run(UDP_BUDGET) {
                self.udp_busy.push(source);
            } else {
                udp.busy = false;
            }
        }
    }

    fn sweep_udp(&mut self, now: u64) {
        for (_, source) in self.sources.iter_mut() {
            if let Source::Udp(udp) = source
                && now >= udp.port.next_sweep_ms()
            {
                udp.port.sweep(now);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_name_what_they_were_made_for() {
        for (key, generation, side) in [(0, 0, 0), (5, 7, 1), (KEY_LIMIT - 1, 0x7FFF_FFFF, 2)] {
            let named = untoken(conn_token(key, generation, side));
            assert_eq!(
                named,
                Named::Conn {
                    key,
                    generation,
                    side
                }
            );
        }
        for source in [0, 9, KEY_LIMIT - 1] {
            assert_eq!(untoken(source_token(source)), Named::Source(source));
            for id in [0, 77, u32::MAX as usize - 1] {
                assert_eq!(untoken(flow_token(source, id)), Named::Flow { source, id });
            }
        }
        assert_eq!(untoken(WAKER), Named::Waker);
        assert_ne!(flow_token(KEY_LIMIT - 1, u32::MAX as usize - 1), WAKER);
    }

    #[test]
    fn a_reused_slab_slot_gets_tokens_of_its_own() {
        // The slab hands a closed connection's key to the next one; the generation tells an
        // event of the old sockets from one of the new.
        let mut slab = Slab::new();
        let old = slab.insert(0u32);
        slab.remove(old);
        let new = slab.insert(1u32);
        assert_eq!(old, new, "the slot is reused");
        assert_ne!(conn_token(old, 0, CLIENT), conn_token(new, 1, CLIENT));
    }

    #[test]
    fn consecutive_attempts_use_different_upstream_sides() {
        assert_ne!(upstream_side(0), upstream_side(1));
        assert_eq!(upstream_side(0), upstream_side(2));
        assert!((1..=2).contains(&upstream_side(0)) && (1..=2).contains(&upstream_side(1)));
    }
}
