//! vipd's own edge-triggered epoll loop on `mio` for one TCP worker socket, in place of tokio's
//! accept loop and connection tasks (`tcp.rs`, `copy.rs`), chosen by `VIPD_DATA_PLANE=mio`.
//!
//! One dedicated thread per worker socket runs [`EventLoop`]: it accepts until `WouldBlock`,
//! picks and connects exactly as `tcp.rs` does (same snapshot, rotation, affinity, failover,
//! `Attempt`/`ActiveConnection` guards, `connect_failed`), and forwards both ways through a
//! pair of 16 KiB buffers taken from a free list. Connections are state machines in a slab;
//! a mio token is the slab key with a generation (and which socket), so events of a slot's
//! earlier occupant are dropped. Every socket is registered once, readable and writable,
//! edge-triggered, and closed without `EPOLL_CTL_DEL`: dropping the last descriptor removes it
//! from the epoll set. Connect, idle and drain deadlines live in a hashed timer wheel.
//!
//! Drain signals are polled every [`DRAIN_POLL_MS`] rather than watched per connection: a
//! connection takes its endpoint's `Drain` as tcp.rs does, but the loop keeps one entry per
//! distinct `Drain` (there are as many as endpoints, not connections) and checks each with one
//! uncontended lock on its token per poll. Per-connection watching would need a waker per
//! connection registered in each token's waiter list, an allocation and a cross-thread wake
//! each, for a signal that fires about once per endpoint lifetime; the price of polling is
//! up to `DRAIN_POLL_MS` more before a drain starts (and before `on_marked_down = "close"` cuts
//! connections), next to drain timeouts of seconds.
//!
//! A connection holds its buffer pair only while bytes wait for a destination that has not
//! taken them ([`conn::BufferPool`]): idle connections hold none.
//!
//! Not here yet (tokio's path has it): splice (bulk flows are copied through userspace).

mod conn;
mod connect;
mod wheel;

use std::io;
use std::net::TcpListener as StdListener;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use mio::net::TcpListener;
use mio::{Events, Interest, Poll, Token, Waker};
use slab::Slab;
use socket2::SockRef;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use self::conn::{BufferPool, Conn, Flow, Phase};
use self::wheel::Wheel;
use crate::service::ServiceState;
use crate::service::drain::Drain;

const LISTENER: Token = Token(usize::MAX);
const WAKER: Token = Token(usize::MAX - 1);
/// Timer wheel: 4 ms ticks, 1024 slots (one revolution ≈ 4 s).
const TICK_MS: u64 = 4;
const SLOTS: usize = 1024;
/// How often the drain signals of established connections are looked at.
pub const DRAIN_POLL_MS: u64 = 25;
/// Events taken per `epoll_wait`.
const EVENTS: usize = 1024;
/// Buffer pairs kept for reuse once their connections closed.
const FREE_BUFFERS_MAX: usize = 4096;
/// Accept back-off as in tcp.rs.
const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(5);
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// Which socket of a connection a token names. Upstream sockets alternate between two sides
/// per attempt, so a late event of a failed attempt's socket never reaches the next attempt.
const CLIENT: usize = 0;

fn token(key: usize, generation: u32, side: usize) -> Token {
    Token(((generation as usize) << 32) | (key << 2) | side)
}

fn untoken(token: Token) -> (usize, u32, usize) {
    (
        (token.0 & 0xFFFF_FFFF) >> 2,
        (token.0 >> 32) as u32,
        token.0 & 3,
    )
}

fn upstream_side(tried: usize) -> usize {
    1 + (tried & 1)
}

/// Serves `listener` (one socket of a SO_REUSEPORT group, service port `port`) on a thread of
/// its own named `vipd-mio-<port>-<n>`. The future resolves once the listener is closed after
/// `stop`, like tcp.rs's accept loop; connections still open then keep the thread (and a
/// token of `connections`, which shutdown waits for) until they end or reach their drain
/// deadline.
pub fn serve(
    listener: StdListener,
    service: Arc<ServiceState>,
    port: u16,
    stop: CancellationToken,
    connections: TaskTracker,
) -> impl Future<Output = ()> + Send {
    static THREADS: AtomicUsize = AtomicUsize::new(0);
    let (closed_tx, closed_rx) = tokio::sync::oneshot::channel::<()>();
    // Cancelled with `stop`, or when this future is dropped (its worker runtime went away).
    let listen_stop = stop.child_token();
    let started = EventLoop::new(listener, Arc::clone(&service), port, listen_stop.clone())
        .and_then(|event_loop| {
            let waker = Arc::clone(&event_loop.waker);
            let n = THREADS.fetch_add(1, Ordering::Relaxed);
            let held = connections.token();
            std::thread::Builder::new()
                .name(format!("vipd-mio-{port}-{n}"))
                .spawn(move || {
                    let _held = held;
                    event_loop.run(closed_tx);
                })?;
            Ok(waker)
        });
    let waker = match started {
        Ok(waker) => Some(waker),
        Err(error) => {
            tracing::error!(service = service.name(), %error, "cannot start the mio loop");
            None
        }
    };
    async move {
        let Some(waker) = waker else { return };
        let _stop_on_drop = StopOnDrop {
            stop: listen_stop,
            waker: Arc::clone(&waker),
        };
        let mut closed_rx = closed_rx;
        tokio::select! {
            _ = stop.cancelled() => {
                let _ = waker.wake();
            }
            _ = &mut closed_rx => return,
        }
        let _ = closed_rx.await;
    }
}

/// Tells the loop to close its listener when the serving future goes away.
struct StopOnDrop {
    stop: CancellationToken,
    waker: Arc<Waker>,
}

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        if !self.stop.is_cancelled() {
            self.stop.cancel();
            let _ = self.waker.wake();
        }
    }
}

/// A drain signal some established connections watch.
struct Watched {
    drain: Arc<Drain>,
    connections: usize,
}

/// The loop of one worker socket.
pub struct EventLoop {
    poll: Poll,
    waker: Arc<Waker>,
    listener: Option<TcpListener>,
    nodelay_inherited: bool,
    service: Arc<ServiceState>,
    port: u16,
    stop: CancellationToken,
    conns: Slab<Conn>,
    next_generation: u32,
    wheel: Wheel,
    fired: Vec<(usize, u32, u64)>,
    buffers: BufferPool,
    watched: Vec<Watched>,
    next_drain_poll_ms: u64,
    accept_backoff: Duration,
    accept_resume_ms: Option<u64>,
    epoch: Instant,
}

impl EventLoop {
    fn new(
        listener: StdListener,
        service: Arc<ServiceState>,
        port: u16,
        stop: CancellationToken,
    ) -> io::Result<EventLoop> {
        listener.set_nonblocking(true)?;
        // As tcp.rs: accepted sockets inherit TCP_NODELAY from the listener on Linux.
        let nodelay_inherited =
            cfg!(target_os = "linux") && SockRef::from(&listener).set_tcp_nodelay(true).is_ok();
        let mut listener = TcpListener::from_std(listener);
        let poll = Poll::new()?;
        poll.registry()
            .register(&mut listener, LISTENER, Interest::READABLE)?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        Ok(EventLoop {
            poll,
            waker,
            listener: Some(listener),
            nodelay_inherited,
            service,
            port,
            stop,
            conns: Slab::new(),
            next_generation: 0,
            wheel: Wheel::new(SLOTS, TICK_MS, 0),
            fired: Vec::new(),
            buffers: BufferPool::new(FREE_BUFFERS_MAX),
            watched: Vec::new(),
            next_drain_poll_ms: DRAIN_POLL_MS,
            accept_backoff: ACCEPT_BACKOFF_MIN,
            accept_resume_ms: None,
            epoch: Instant::now(),
        })
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    fn run(mut self, closed: tokio::sync::oneshot::Sender<()>) {
        let mut closed = Some(closed);
        let mut events = Events::with_capacity(EVENTS);
        loop {
            let timeout = self.timeout(self.now_ms());
            if let Err(error) = self.poll.poll(&mut events, timeout) {
                if error.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                tracing::error!(service = self.service.name(), %error, "epoll_wait failed; the mio loop stops");
                break;
            }
            let now = self.now_ms();
            for event in events.iter() {
                match event.token() {
                    LISTENER => self.accept_all(now),
                    WAKER => {
                        if self.stop.is_cancelled() && self.listener.is_some() {
                            // Closed at once: new connections are refused from here on.
                            self.listener = None;
                            closed.take().map(|tx| tx.send(()));
                            tracing::debug!(service = self.service.name(), "listener closed");
                        }
                    }
                    token => {
                        let (key, generation, side) = untoken(token);
                        let Some(conn) = self.conns.get_mut(key) else {
                            continue;
                        };
                        if conn.generation != generation {
                            continue;
                        }
                        let ready = if side == CLIENT {
                            &mut conn.client_ready
                        } else {
                            match &conn.phase {
                                Phase::Connecting(c) if upstream_side(c.tried - 1) != side => {
                                    continue;
                                }
                                _ => &mut conn.upstream_ready,
                            }
                        };
                        if event.is_read_closed() || event.is_error() {
                            ready.read_closed = true;
                            ready.readable = true;
                        } else if event.is_readable() {
                            ready.readable = true;
                        }
                        if event.is_writable() || event.is_write_closed() || event.is_error() {
                            ready.writable = true;
                        }
                        self.drive(key, now);
                    }
                }
            }
            if self.accept_resume_ms.is_some_and(|at| now >= at) {
                self.accept_resume_ms = None;
                self.accept_all(now);
            }
            if !self.watched.is_empty() && now >= self.next_drain_poll_ms {
                self.poll_drains(now);
            }
            self.expire(now);
            if self.listener.is_none() && self.conns.is_empty() {
                break;
            }
        }
        drop(closed);
        tracing::debug!(service = self.service.name(), "mio loop ends");
    }

    /// How long `epoll_wait` may sleep: until the next timer, accept retry or drain poll.
    fn timeout(&self, now: u64) -> Option<Duration> {
        let mut at = self.wheel.next_due_ms();
        let mut sooner = |candidate: Option<u64>| {
            if let Some(c) = candidate {
                at = Some(at.map_or(c, |a: u64| a.min(c)));
            }
        };
        sooner(self.accept_resume_ms);
        if !self.watched.is_empty() {
            sooner(Some(self.next_drain_poll_ms));
        }
        at.map(|at| Duration::from_millis(at.saturating_sub(now)))
    }

    fn accept_all(&mut self, now: u64) {
        if self.accept_resume_ms.is_some() {
            return;
        }
        loop {
            let Some(listener) = &self.listener else {
                return;
            };
            match listener.accept() {
                Ok((client, peer)) => {
                    self.accept_backoff = ACCEPT_BACKOFF_MIN;
                    if !self.nodelay_inherited {
                        let _ = client.set_nodelay(true);
                    }
                    self.start(client, peer, now);
                }
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => return,
                Err(error) => {
                    self.service.metrics.accept_errors.increment(1);
                    if matches!(
                        error.kind(),
                        io::ErrorKind::ConnectionAborted
                            | io::ErrorKind::ConnectionReset
                            | io::ErrorKind::Interrupted
                    ) {
                        tracing::debug!(service = self.service.name(), %error, "accept failed");
                        continue;
                    }
                    // Out of descriptors or memory: wait for connections to close.
                    tracing::warn!(service = self.service.name(), %error, pause = ?self.accept_backoff, "accept failed; pausing");
                    self.accept_resume_ms = Some(now + self.accept_backoff.as_millis() as u64);
                    self.accept_backoff = (self.accept_backoff * 2).min(ACCEPT_BACKOFF_MAX);
                    return;
                }
            }
        }
    }

    /// Arms the wheel for connection `key`'s next deadline unless an entry at or before it is
    /// armed already (that entry re-arms when it fires early).
    fn arm(&mut self, key: usize) {
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
        if let Phase::Connecting(connecting) = &mut conn.phase {
            if !conn.upstream_ready.writable {
                return;
            }
            let upstream = conn.upstream.as_ref().expect("an attempt has a socket");
            let failed = match upstream.take_error() {
                Ok(None) => match upstream.peer_addr() {
                    Ok(_) => None,
                    Err(e) if e.kind() == io::ErrorKind::NotConnected => {
                        // Not connected yet: a spurious edge.
                        conn.upstream_ready.writable = false;
                        return;
                    }
                    Err(e) => Some(e),
                },
                Ok(Some(e)) | Err(e) => Some(e),
            };
            let (_, endpoint) = connecting.attempt.as_ref().expect("attempt in flight");
            if let Some(error) = failed {
                self.service.connect_failed(&connecting.snapshot, endpoint);
                tracing::debug!(service = self.service.name(), endpoint = %endpoint.addr(), %error, "connect failed; trying the next endpoint");
                self.next_attempt(key, now);
                return;
            }
            self.established(key, now);
        }
        let conn = &mut self.conns[key];
        let result = conn.forward(now, &mut self.buffers);
        match result {
            Ok((flow, moved_in, moved_out)) => {
                if let Phase::Established(established) = &conn.phase {
                    let metrics = &established.active.endpoint().metrics;
                    if moved_in.read > 0 {
                        metrics.bytes_in.increment(moved_in.read as u64);
                    }
                    if moved_out.read > 0 {
                        metrics.bytes_out.increment(moved_out.read as u64);
                    }
                }
                if flow == Flow::Complete {
                    self.close(key);
                }
            }
            Err(error) => {
                tracing::debug!(service = self.service.name(), %error, "connection error");
                self.close(key);
            }
        }
    }

    /// Closes connection `key`: both sockets are dropped without deregistration.
    fn close(&mut self, key: usize) {
        let conn = self.conns.remove(key);
        if let Phase::Established(established) = conn.phase {
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
            if let Some(pair) = established.buffers {
                self.buffers.give(pair);
            }
        }
    }

    /// Looks at every watched drain signal; connections of one that fired get their deadline.
    fn poll_drains(&mut self, now: u64) {
        self.next_drain_poll_ms = now + DRAIN_POLL_MS;
        let mut i = 0;
        while i < self.watched.len() {
            if !self.watched[i].drain.is_cancelled() {
                i += 1;
                continue;
            }
            let fired = self.watched.swap_remove(i).drain;
            let mut keys = Vec::new();
            for (key, conn) in self.conns.iter_mut() {
                if let Phase::Established(established) = &mut conn.phase
                    && established.drain_at_ms.is_none()
                    && Arc::ptr_eq(&established.drain, &fired)
                {
                    established.drain_at_ms =
                        Some(now + fired.grace(established.drain_timeout).as_millis() as u64);
                    keys.push(key);
                }
            }
            for key in keys {
                self.arm(key);
            }
        }
    }

    /// Handles the wheel's entries due by `now`.
    fn expire(&mut self, now: u64) {
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
            match &conn.phase {
                Phase::Connecting(connecting) => {
                    let (_, endpoint) = connecting.attempt.as_ref().expect("attempt in flight");
                    self.service.connect_failed(&connecting.snapshot, endpoint);
                    tracing::debug!(service = self.service.name(), endpoint = %endpoint.addr(), "connect timed out; trying the next endpoint");
                    self.next_attempt(key, now);
                }
                Phase::Established(established) => {
                    let drained = established.drain_at_ms.is_some_and(|at| at <= now);
                    tracing::debug!(service = self.service.name(), endpoint = %established.active.endpoint().addr(), drained, "idle timeout or drain deadline; closing");
                    self.close(key);
                }
            }
        }
        self.fired = fired;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_carry_key_generation_and_side() {
        for (key, generation, side) in [(0, 0, 0), (5, 7, 1), ((1 << 30) - 1, 0x7FFF_FFFF, 2)] {
            let t = token(key, generation, side);
            assert_eq!(untoken(t), (key, generation, side));
            assert_ne!(t, LISTENER);
            assert_ne!(t, WAKER);
        }
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
        assert_ne!(token(old, 0, CLIENT), token(new, 1, CLIENT));
    }

    #[test]
    fn consecutive_attempts_use_different_upstream_sides() {
        assert_ne!(upstream_side(0), upstream_side(1));
        assert_eq!(upstream_side(0), upstream_side(2));
        assert!((1..=2).contains(&upstream_side(0)) && (1..=2).contains(&upstream_side(1)));
    }
}
