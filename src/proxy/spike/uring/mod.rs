//! Spike (b): one io_uring per worker socket serving a TCP service port, on a thread of its
//! own (`vipd-uring-<port>-<n>`), chosen with `VIPD_DATA_PLANE=io_uring`.
//!
//! One loop turn: submit everything queued and wait (at most [`WAIT`]) for a completion in one
//! `io_uring_enter`, handle every completion, then fire due timers. Per connection: a
//! multishot accept hands over the client socket; the endpoint is picked as `tcp.rs` does
//! (port pool of the snapshot, rotation, `first`/affinity, failover over distinct endpoints up
//! to `max_connect_attempts`, each an `IORING_OP_CONNECT` linked to a timeout); then both
//! directions relay with recv/send into the slot's two 16 KiB buffers (half-close: EOF becomes
//! `shutdown(Write)` towards the other side). No splice.
//!
//! Memory the kernel uses (buffers, the connect address, the link timeout's timespec) lives in
//! the connection's boxed slab slot. A slot counts its operations in flight and is reused only
//! once that count is back to zero, so nothing the kernel may still write to is ever freed or
//! reused; closing a connection cancels its operations by descriptor first. Slots (and their
//! buffers) are kept for reuse: no allocation per connection once the slab reached its peak.
//!
//! Idle timeouts and drain deadlines sit on a hashed [`timer::Wheel`]; drain signals are
//! polled every [`DRAIN_POLL_MS`] over the open connections (no waker crosses from tokio), and
//! the stop token at every loop turn.

#![allow(unsafe_code)]

mod ops;
mod timer;

use std::io;
use std::net::{IpAddr, Shutdown, SocketAddr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use io_uring::types::{CancelBuilder, Fd, SubmitArgs, Timespec};
use io_uring::{IoUring, cqueue, opcode, squeue};
use socket2::{Domain, SockAddr, SockRef, Socket, Type};
use tokio_util::sync::CancellationToken;

use self::ops::{Dir, Kind, Next, Op};
use self::timer::Wheel;
use crate::balance::affinity_timeout;
use crate::config::Protocol;
use crate::service::drain::Drain;
use crate::service::endpoint::{ActiveConnection, Attempt};
use crate::service::snapshot::Snapshot;
use crate::service::{Rotation, ServiceState};

/// Bytes per direction buffer.
const BUFFER_SIZE: usize = 16 * 1024;
/// Submission queue entries (the completion queue gets twice as many).
const RING_ENTRIES: u32 = 1024;
/// Longest wait for a completion: how soon the loop sees `stop` and due timers.
const WAIT: Duration = Duration::from_millis(50);
/// How often the drain signals of open connections are polled.
const DRAIN_POLL_MS: u64 = 100;
/// First and longest pause after an accept error that will not clear by itself.
const ACCEPT_BACKOFF_MIN_MS: u64 = 5;
const ACCEPT_BACKOFF_MAX_MS: u64 = 1_000;

/// Threads started, for their names.
static THREADS: AtomicUsize = AtomicUsize::new(0);

/// Whether this process may set up an io_uring at all (a sandbox may refuse `io_uring_setup`).
pub fn probe() -> io::Result<()> {
    IoUring::new(2).map(drop)
}

/// Serves `listener` for service port `port` on a ring thread of its own until `stop`, then
/// closes the listener and lets open connections end or reach their drain deadline. Resolves
/// when the thread has ended.
pub fn serve(
    listener: std::net::TcpListener,
    service: Arc<ServiceState>,
    port: u16,
    stop: CancellationToken,
) -> impl Future<Output = ()> + Send {
    let n = THREADS.fetch_add(1, Ordering::Relaxed);
    let (done, ended) = tokio::sync::oneshot::channel::<()>();
    let name = service.name().to_owned();
    let spawned = std::thread::Builder::new()
        .name(format!("vipd-uring-{port}-{n}"))
        .spawn(move || {
            match Loop::new(listener, Arc::clone(&service), port, stop) {
                Ok(ring_loop) => ring_loop.run(),
                Err(error) => {
                    tracing::error!(service = service.name(), %error, "cannot set up an io_uring; the socket is not served")
                }
            }
            let _ = done.send(());
        });
    async move {
        match spawned {
            Ok(_) => {
                let _ = ended.await;
            }
            Err(error) => {
                tracing::error!(service = name, %error, "cannot start an io_uring thread")
            }
        }
    }
}

/// Where a connection is.
enum Stage {
    /// The slot is free (or the connection is closing).
    Free,
    /// Connecting to an endpoint of the held snapshot.
    Connecting(Box<Connecting>),
    /// Relaying to an established endpoint.
    Relaying {
        active: ActiveConnection,
        drain: Arc<Drain>,
    },
}

/// The failover state of a connect.
struct Connecting {
    snapshot: Arc<Snapshot>,
    client_ip: Option<IpAddr>,
    first: usize,
    /// Attempts made.
    offset: usize,
    /// Attempts allowed.
    attempts: usize,
    /// Candidate index of the attempt in flight.
    current: usize,
    attempt: Option<Attempt>,
    started: Instant,
}

/// A connection's slab slot, boxed so its address is stable: the kernel reads and writes its
/// fields through pointers while operations are in flight.
struct Slot {
    generation: u32,
    in_use: bool,
    closing: bool,
    /// Operations submitted and not yet completed.
    inflight: u32,
    client: Option<OwnedFd>,
    upstream: Option<OwnedFd>,
    stage: Stage,
    dirs: [Dir; 2],
    buffers: [Box<[u8]>; 2],
    addr: SockAddr,
    connect_timeout: Timespec,
    last_active: u64,
    idle_ms: u64,
    drain_timeout: Duration,
    drain_at: Option<u64>,
}

impl Slot {
    fn new() -> Box<Slot> {
        Box::new(Slot {
            generation: 0,
            in_use: false,
            closing: false,
            inflight: 0,
            client: None,
            upstream: None,
            stage: Stage::Free,
            dirs: [Dir::Receiving; 2],
            buffers: [
                vec![0; BUFFER_SIZE].into_boxed_slice(),
                vec![0; BUFFER_SIZE].into_boxed_slice(),
            ],
            addr: SockAddr::from(SocketAddr::from(([0, 0, 0, 0], 0))),
            connect_timeout: Timespec::new(),
            last_active: 0,
            idle_ms: 0,
            drain_timeout: Duration::ZERO,
            drain_at: None,
        })
    }

    fn timer_token(&self, key: u32) -> u64 {
        (u64::from(self.generation) << 32) | u64::from(key)
    }

    /// The socket direction `dir` reads from and the one it writes to.
    fn ends(&self, dir: usize) -> (i32, i32) {
        let client = self.client.as_ref().map_or(-1, AsRawFd::as_raw_fd);
        let upstream = self.upstream.as_ref().map_or(-1, AsRawFd::as_raw_fd);
        if dir == 0 {
            (client, upstream)
        } else {
            (upstream, client)
        }
    }
}

/// Queues `entries` together (linked entries must be adjacent), submitting first if the
/// submission queue lacks room.
///
/// # Safety
/// Every pointer in `entries` must stay valid until the entry's completion arrives.
unsafe fn push(ring: &mut IoUring, entries: &[squeue::Entry]) {
    let room = {
        let queue = ring.submission();
        queue.capacity() - queue.len()
    };
    if room < entries.len()
        && let Err(error) = ring.submit()
    {
        tracing::warn!(%error, "io_uring submit failed");
    }
    for entry in entries {
        // SAFETY: the caller keeps what `entry` points to alive until its completion.
        while unsafe { ring.submission().push(entry) }.is_err() {
            let _ = ring.submit();
        }
    }
}

/// One ring serving one listener.
struct Loop {
    ring: IoUring,
    listener: Option<std::net::TcpListener>,
    service: Arc<ServiceState>,
    port: u16,
    stop: CancellationToken,
    /// Boxed: the kernel holds pointers into a slot while the vector grows.
    #[allow(clippy::vec_box, reason = "slots must not move when the vector grows")]
    slots: Vec<Box<Slot>>,
    free: Vec<u32>,
    live: usize,
    wheel: Wheel,
    due: Vec<u64>,
    completions: Vec<(u64, i32, u32)>,
    origin: Instant,
    now: u64,
    next_drain_poll: u64,
    accept_armed: bool,
    accept_retry_at: Option<u64>,
    accept_backoff: u64,
    stopping: bool,
}

impl Loop {
    fn new(
        listener: std::net::TcpListener,
        service: Arc<ServiceState>,
        port: u16,
        stop: CancellationToken,
    ) -> io::Result<Loop> {
        let ring = IoUring::new(RING_ENTRIES)?;
        // Accepted sockets inherit TCP_NODELAY from the listener on Linux (as in tcp.rs).
        let _ = SockRef::from(&listener).set_tcp_nodelay(true);
        Ok(Loop {
            ring,
            listener: Some(listener),
            service,
            port,
            stop,
            slots: Vec::new(),
            free: Vec::new(),
            live: 0,
            wheel: Wheel::new(0),
            due: Vec::new(),
            completions: Vec::with_capacity(RING_ENTRIES as usize * 2),
            origin: Instant::now(),
            now: 0,
            next_drain_poll: DRAIN_POLL_MS,
            accept_armed: false,
            accept_retry_at: None,
            accept_backoff: ACCEPT_BACKOFF_MIN_MS,
            stopping: false,
        })
    }

    fn clock(&mut self) {
        self.now = self.origin.elapsed().as_millis() as u64;
    }

    fn run(mut self) {
        self.arm_accept();
        let wait = Timespec::from(WAIT);
        loop {
            self.clock();
            if !self.stopping && self.stop.is_cancelled() {
                self.begin_stop();
            }
            if self.stopping && self.listener.is_none() && self.live == 0 {
                break;
            }
            if !self.stopping
                && !self.accept_armed
                && self.accept_retry_at.is_some_and(|at| at <= self.now)
            {
                self.accept_retry_at = None;
                self.arm_accept();
            }
            let args = SubmitArgs::new().timespec(&wait);
            if let Err(error) = self.ring.submitter().submit_with_args(1, &args) {
                match error.raw_os_error() {
                    Some(libc::ETIME | libc::EINTR | libc::EBUSY) => {}
                    _ => {
                        tracing::error!(service = self.service.name(), %error, "io_uring wait failed; abandoning the ring");
                        // The kernel may still write into the slots: never free them.
                        std::mem::forget(std::mem::take(&mut self.slots));
                        return;
                    }
                }
            }
            self.clock();
            let mut completions = std::mem::take(&mut self.completions);
            completions.extend(
                self.ring
                    .completion()
                    .map(|cqe| (cqe.user_data(), cqe.result(), cqe.flags())),
            );
            for &(user_data, result, flags) in &completions {
                self.complete(user_data, result, flags);
            }
            completions.clear();
            self.completions = completions;
            self.timers();
        }
        tracing::debug!(service = self.service.name(), "listener closed");
    }

    fn arm_accept(&mut self) {
        let Some(listener) = &self.listener else {
            return;
        };
        let entry = opcode::AcceptMulti::new(Fd(listener.as_raw_fd()))
            .flags(libc::SOCK_CLOEXEC)
            .build()
            .user_data(Op::new(Kind::Accept, 0, 0).encode());
        // SAFETY: the entry holds no pointer; the listener stays open until the accept's last
        // completion (it is dropped only once `accept_armed` is false).
        unsafe { push(&mut self.ring, &[entry]) };
        self.accept_armed = true;
    }

    fn begin_stop(&mut self) {
        self.stopping = true;
        if self.accept_armed {
            let entry = opcode::AsyncCancel::new(Op::new(Kind::Accept, 0, 0).encode())
                .build()
                .user_data(Op::new(Kind::CancelAccept, 0, 0).encode());
            // SAFETY: the entry holds no pointer.
            unsafe { push(&mut self.ring, &[entry]) };
        } else {
            self.listener = None;
        }
    }

    fn complete(&mut self, user_data: u64, result: i32, flags: u32) {
        let Some(op) = Op::decode(user_data) else {
            return;
        };
        match op.kind {
            Kind::Accept => self.on_accept(result, flags),
            Kind::CancelAccept => {}
            _ => self.on_connection(op, result),
        }
    }

    fn on_accept(&mut self, result: i32, flags: u32) {
        if !cqueue::more(flags) {
            self.accept_armed = false;
        }
        if result >= 0 {
            // SAFETY: a successful accept returns a new descriptor that nothing else owns.
            let client = unsafe { OwnedFd::from_raw_fd(result) };
            self.accept_backoff = ACCEPT_BACKOFF_MIN_MS;
            if !self.stopping {
                self.start(client);
            }
        } else if -result != libc::ECANCELED {
            let error = io::Error::from_raw_os_error(-result);
            self.service.metrics.accept_errors.increment(1);
            if matches!(
                -result,
                libc::ECONNABORTED | libc::ECONNRESET | libc::EINTR | libc::EAGAIN
            ) {
                tracing::debug!(service = self.service.name(), %error, "accept failed");
            } else if !self.accept_armed {
                tracing::warn!(service = self.service.name(), %error, pause_ms = self.accept_backoff, "accept failed; pausing");
                self.accept_retry_at = Some(self.now + self.accept_backoff);
                self.accept_backoff = (self.accept_backoff * 2).min(ACCEPT_BACKOFF_MAX_MS);
            }
        }
        if !self.accept_armed {
            if self.stopping {
                self.listener = None;
            } else if self.accept_retry_at.is_none() {
                self.arm_accept();
            }
        }
    }

    /// A new client: pick as `tcp.rs` does, take a slot, start the first connect.
    fn start(&mut self, client: OwnedFd) {
        let snapshot = self.service.snapshot();
        // The port can be gone when a reload removed it after this connection was accepted.
        let Some(pool) = snapshot.pool(Protocol::Tcp, self.port) else {
            self.service.metrics.connections_failed.increment(1);
            return;
        };
        match pool.rotation {
            Rotation::Primary | Rotation::Backup => {}
            Rotation::FailedOpen => self.service.metrics.no_healthy_endpoints.increment(1),
            Rotation::Closed => {
                if !snapshot.endpoints.is_empty() {
                    self.service.metrics.no_healthy_endpoints.increment(1);
                }
                self.service.metrics.connections_failed.increment(1);
                return;
            }
        }
        let client_ip = if pool.needs_client {
            SockRef::from(&client)
                .peer_addr()
                .ok()
                .and_then(|a| a.as_socket())
                .map(|a| a.ip())
        } else {
            None
        };
        let first = pool.first(
            client_ip,
            affinity_timeout(snapshot.config.session_affinity),
        );
        let candidates = pool.tier.candidates().len();
        let attempts =
            (snapshot.config.connection.max_connect_attempts.get() as usize).min(candidates);
        let key = match self.free.pop() {
            Some(key) => key,
            None => {
                self.slots.push(Slot::new());
                (self.slots.len() - 1) as u32
            }
        };
        self.live += 1;
        let slot = &mut self.slots[key as usize];
        slot.in_use = true;
        slot.closing = false;
        slot.inflight = 0;
        slot.client = Some(client);
        slot.upstream = None;
        slot.dirs = [Dir::Receiving; 2];
        slot.drain_at = None;
        slot.stage = Stage::Connecting(Box::new(Connecting {
            snapshot: Arc::clone(&snapshot),
            client_ip,
            first,
            offset: 0,
            attempts,
            current: 0,
            attempt: None,
            started: Instant::now(),
        }));
        self.try_connect(key);
    }

    /// Starts the next connect attempt of `key`, or gives the client up.
    fn try_connect(&mut self, key: u32) {
        let port = self.port;
        let slot = &mut self.slots[key as usize];
        let Stage::Connecting(connecting) = &mut slot.stage else {
            return;
        };
        let pool = connecting
            .snapshot
            .pool(Protocol::Tcp, port)
            .expect("the snapshot held since the pick has the port");
        let candidates = pool.tier.candidates();
        if connecting.offset >= connecting.attempts {
            tracing::debug!(
                service = self.service.name(),
                "no endpoint reachable; closing client connection"
            );
            self.service.metrics.connections_failed.increment(1);
            self.finish(key);
            return;
        }
        let current = (connecting.first + connecting.offset) % candidates.len();
        connecting.offset += 1;
        connecting.current = current;
        let endpoint = &candidates[current].endpoint;
        let addr = endpoint.addr();
        let socket = match Socket::new(Domain::for_address(addr), Type::STREAM, None) {
            Ok(socket) => socket,
            Err(error) => {
                // Out of descriptors or memory: no other endpoint would fare better.
                tracing::debug!(service = self.service.name(), %error, "cannot create an upstream socket");
                self.service.metrics.connections_failed.increment(1);
                self.finish(key);
                return;
            }
        };
        let _ = socket.set_tcp_nodelay(true);
        connecting.attempt = Some(endpoint.attempt());
        connecting.started = Instant::now();
        slot.connect_timeout =
            Timespec::from(connecting.snapshot.config.connection.connect_timeout);
        slot.addr = SockAddr::from(addr);
        let fd = socket.as_raw_fd();
        slot.upstream = Some(socket.into());
        let generation = slot.generation;
        let connect = opcode::Connect::new(Fd(fd), slot.addr.as_ptr().cast(), slot.addr.len())
            .build()
            .flags(squeue::Flags::IO_LINK)
            .user_data(Op::new(Kind::Connect, key, generation).encode());
        let timeout = opcode::LinkTimeout::new(&slot.connect_timeout)
            .build()
            .user_data(Op::new(Kind::ConnectTimeout, key, generation).encode());
        slot.inflight += 2;
        // SAFETY: `addr` and `connect_timeout` are fields of the boxed slot, which is neither
        // moved nor reused while `inflight` counts these two operations; the upstream socket
        // stays open until the connect completed.
        unsafe { push(&mut self.ring, &[connect, timeout]) };
    }

    fn on_connection(&mut self, op: Op, result: i32) {
        let Some(slot) = self.slots.get_mut(op.key as usize) else {
            return;
        };
        if !slot.in_use || !op.is_for(slot.generation) {
            // Cannot happen while slots wait for their operations; kept as a guard.
            return;
        }
        slot.inflight -= 1;
        if slot.closing {
            self.release(op.key);
            return;
        }
        match op.kind {
            Kind::Connect => self.on_connect(op.key, result),
            Kind::ConnectTimeout | Kind::Cancel => {}
            kind => {
                if let Some(dir) = kind.dir() {
                    self.on_relay(op.key, kind, dir, result);
                }
            }
        }
    }

    fn on_connect(&mut self, key: u32, result: i32) {
        let port = self.port;
        let now = self.now;
        let slot = &mut self.slots[key as usize];
        let Stage::Connecting(connecting) = &mut slot.stage else {
            return;
        };
        let pool = connecting
            .snapshot
            .pool(Protocol::Tcp, port)
            .expect("the snapshot held since the pick has the port");
        let endpoint = &pool.tier.candidates()[connecting.current].endpoint;
        if result < 0 {
            self.service.connect_failed(&connecting.snapshot, endpoint);
            let error = io::Error::from_raw_os_error(-result);
            tracing::debug!(service = self.service.name(), endpoint = %endpoint.addr(), %error, "connect failed or timed out; trying the next endpoint");
            connecting.attempt = None;
            // The connect completed: nothing in flight uses the socket.
            slot.upstream = None;
            self.try_connect(key);
            return;
        }
        endpoint.record_connect_success();
        self.service
            .metrics
            .connect_duration
            .record(connecting.started.elapsed().as_secs_f64());
        pool.remember(connecting.client_ip, endpoint);
        let active = connecting
            .attempt
            .take()
            .expect("a connect in flight has its attempt")
            .established();
        let drain = endpoint.drain_token();
        let settings = &connecting.snapshot.config.connection;
        slot.idle_ms = settings.idle_timeout.as_millis() as u64;
        slot.drain_timeout = settings.drain_timeout;
        // Drops the snapshot: a relaying connection does not hold it.
        slot.stage = Stage::Relaying { active, drain };
        slot.last_active = now;
        self.wheel.insert(now + slot.idle_ms, slot.timer_token(key));
        self.submit_recv(key, 0);
        self.submit_recv(key, 1);
    }

    fn submit_recv(&mut self, key: u32, dir: usize) {
        let slot = &mut self.slots[key as usize];
        let (source, _) = slot.ends(dir);
        let entry = opcode::Recv::new(
            Fd(source),
            slot.buffers[dir].as_mut_ptr(),
            BUFFER_SIZE as u32,
        )
        .build()
        .user_data(Op::new(Kind::recv(dir), key, slot.generation).encode());
        slot.inflight += 1;
        // SAFETY: the buffer is the boxed slot's own, kept (not reused by another connection)
        // while `inflight` counts this recv; the source socket stays open until then.
        unsafe { push(&mut self.ring, &[entry]) };
    }

    fn submit_send(&mut self, key: u32, dir: usize, start: usize, end: usize) {
        let slot = &mut self.slots[key as usize];
        let (_, destination) = slot.ends(dir);
        let bytes = &slot.buffers[dir][start..end];
        let entry = opcode::Send::new(Fd(destination), bytes.as_ptr(), bytes.len() as u32)
            .flags(libc::MSG_NOSIGNAL)
            .build()
            .user_data(Op::new(Kind::send(dir), key, slot.generation).encode());
        slot.inflight += 1;
        // SAFETY: as for the recv: the bytes are in the slot's buffer, which no recv writes
        // while this direction is sending and which outlives the send.
        unsafe { push(&mut self.ring, &[entry]) };
    }

    fn on_relay(&mut self, key: u32, kind: Kind, dir: usize, result: i32) {
        let now = self.now;
        let slot = &mut self.slots[key as usize];
        let sending = kind == Kind::send(dir);
        let next = if sending {
            slot.dirs[dir].on_send(result)
        } else {
            slot.dirs[dir].on_recv(result)
        };
        let count = |slot: &Slot, moved: usize| {
            if let Stage::Relaying { active, .. } = &slot.stage {
                let metrics = &active.endpoint().metrics;
                let counter = if dir == 0 {
                    &metrics.bytes_in
                } else {
                    &metrics.bytes_out
                };
                counter.increment(moved as u64);
            }
        };
        match next {
            Next::Send { start, end, moved } => {
                slot.last_active = now;
                if sending {
                    count(slot, moved);
                }
                self.submit_send(key, dir, start, end);
            }
            Next::SentAll { moved } => {
                slot.last_active = now;
                count(slot, moved);
                self.submit_recv(key, dir);
            }
            Next::Eof => {
                let target = if dir == 0 {
                    &slot.upstream
                } else {
                    &slot.client
                };
                if let Some(target) = target {
                    let _ = SockRef::from(target).shutdown(Shutdown::Write);
                }
                if slot.dirs.iter().all(|d| *d == Dir::Done) {
                    self.finish(key);
                }
            }
            Next::Fail(errno) => {
                let error = io::Error::from_raw_os_error(errno);
                tracing::debug!(service = self.service.name(), %error, "connection error");
                self.finish(key);
            }
        }
    }

    /// Ends connection `key`: its counts go now, its sockets close once nothing is in flight.
    fn finish(&mut self, key: u32) {
        let slot = &mut self.slots[key as usize];
        if slot.closing {
            return;
        }
        slot.closing = true;
        // Drops the attempt or the active connection (and its counts), and any snapshot.
        slot.stage = Stage::Free;
        if slot.inflight > 0 {
            let fds: Vec<i32> = [&slot.client, &slot.upstream]
                .into_iter()
                .flatten()
                .map(AsRawFd::as_raw_fd)
                .collect();
            let generation = slot.generation;
            for fd in fds {
                let entry = opcode::AsyncCancel2::new(CancelBuilder::fd(Fd(fd)).all())
                    .build()
                    .user_data(Op::new(Kind::Cancel, key, generation).encode());
                self.slots[key as usize].inflight += 1;
                // SAFETY: the entry holds no pointer; the descriptor stays open until every
                // operation of the slot, this one included, completed.
                unsafe { push(&mut self.ring, &[entry]) };
            }
        }
        self.release(key);
    }

    /// Frees a closing slot once nothing is in flight.
    fn release(&mut self, key: u32) {
        let slot = &mut self.slots[key as usize];
        if !slot.closing || slot.inflight > 0 {
            return;
        }
        slot.client = None;
        slot.upstream = None;
        slot.in_use = false;
        slot.closing = false;
        slot.generation = slot.generation.wrapping_add(1);
        self.free.push(key);
        self.live -= 1;
    }

    /// Fires due idle timeouts and drain deadlines, and polls drain signals.
    fn timers(&mut self) {
        let now = self.now;
        if now >= self.next_drain_poll {
            self.next_drain_poll = now + DRAIN_POLL_MS;
            for key in 0..self.slots.len() as u32 {
                let slot = &mut self.slots[key as usize];
                let Stage::Relaying { drain, .. } = &slot.stage else {
                    continue;
                };
                if slot.closing || slot.drain_at.is_some() || !drain.is_cancelled() {
                    continue;
                }
                let grace = drain.grace(slot.drain_timeout).as_millis() as u64;
                slot.drain_at = Some(now + grace);
                if grace == 0 {
                    self.finish(key);
                } else {
                    let token = slot.timer_token(key);
                    self.wheel.insert(now + grace, token);
                }
            }
        }
        let mut due = std::mem::take(&mut self.due);
        self.wheel.advance(now, &mut due);
        for &token in &due {
            let key = token as u32;
            let Some(slot) = self.slots.get(key as usize) else {
                continue;
            };
            if !slot.in_use
                || slot.closing
                || slot.timer_token(key) != token
                || !matches!(slot.stage, Stage::Relaying { .. })
            {
                continue;
            }
            let idle_at = slot.last_active + slot.idle_ms;
            let at = slot
                .drain_at
                .map_or(idle_at, |drain_at| drain_at.min(idle_at));
            if at <= now {
                let why = if slot.drain_at.is_some_and(|d| d <= now) {
                    "drain deadline reached; closing"
                } else {
                    "idle timeout"
                };
                tracing::debug!(service = self.service.name(), "{why}");
                self.finish(key);
            } else {
                self.wheel.insert(at, token);
            }
        }
        due.clear();
        self.due = due;
    }
}
