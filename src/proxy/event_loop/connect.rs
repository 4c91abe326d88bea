//! The connect side of the loop: a new client gets an endpoint picked from the service's
//! snapshot (rotation, affinity, tiers), then attempts run one at a time over up to
//! `max_connect_attempts` distinct endpoints in the tier's order from the pick, non-blocking,
//! each with its connect timeout on the wheel. A failed attempt counts against its endpoint
//! (`connect_failed`, for outlier detection) and the next one starts at once.
//!
//! An endpoint at its `max_connections` is passed over. When every candidate left is, the
//! connection waits in the service's queue (`proxy::admission`) for up to `queue_timeout`; a
//! slot freed anywhere grants the head of the queue, whose loop then scans the candidates
//! again. While connections wait, a newcomer queues behind them.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use mio::Interest;
use mio::net::TcpStream;
use socket2::{Domain, Socket, Type};

use super::conn::{Accepted, Admitted, Conn, Connecting, Established, Half, Phase, Ready};
use super::{CLIENT, EventLoop, KEY_LIMIT, Source, Watched, conn_token, upstream_side};
use super::{header, keepalive};
use crate::balance::affinity_timeout;
use crate::config::{Protocol, TcpKeepalive};
use crate::proxy::admission::ConnectionLimit;
use crate::service::{Endpoint, ServiceState};

impl EventLoop {
    /// A new client of the port at `source`, counted against the limits in `admitted`: on a
    /// port that accepts the PROXY protocol, read its header first (see [`super::header`]);
    /// else place it at once.
    pub(super) fn start(
        &mut self,
        source: usize,
        mut client: TcpStream,
        peer: SocketAddr,
        admitted: Admitted,
        now: u64,
    ) {
        let Some(Source::Tcp(tcp)) = self.sources.get_mut(source) else {
            return;
        };
        let service = &*tcp.service;
        let (accepts_header, header_timeout) = {
            let snapshot = service.load_snapshot();
            let accepts = snapshot.config.ports.iter().any(|p| {
                p.protocol == Protocol::Tcp && p.port == tcp.port && p.accept_proxy_protocol
            });
            if accepts && !snapshot.config.trusts_proxy_header_from(peer.ip()) {
                service.metrics.proxy_protocol_error("untrusted");
                tracing::debug!(service = service.name(), %peer, "peer not in proxy_protocol_trusted; closing");
                release(service, &self.process_limit, admitted);
                return;
            }
            (accepts, snapshot.config.connection.proxy_protocol_timeout)
        };
        let generation = self.next_generation;
        self.next_generation = (self.next_generation + 1) & 0x7FFF_FFFF;
        let entry = self.conns.vacant_entry();
        let key = entry.key();
        if key >= KEY_LIMIT
            || self
                .poll
                .registry()
                .register(
                    &mut client,
                    conn_token(key, generation, CLIENT),
                    Interest::READABLE | Interest::WRITABLE,
                )
                .is_err()
        {
            service.metrics.connections_failed.increment(1);
            release(service, &self.process_limit, admitted);
            return;
        }
        tcp.connections += 1;
        entry.insert(Conn {
            generation,
            client,
            client_ready: Ready::default(),
            upstream: None,
            upstream_ready: Ready::default(),
            phase: Phase::Accepted(Accepted {
                deadline_ms: now + header_timeout.as_millis() as u64,
                read: 0,
                peer,
            }),
            source,
            armed_tick: None,
            last_activity_ms: now,
            admitted,
            buffers: None,
        });
        if accepts_header {
            self.arm(key);
        } else {
            self.place(key, peer, None, 0, now);
        }
    }

    /// Gives connection `key` from `client` an endpoint: picks from the service's snapshot
    /// (affinity and hashing by the client's address), writes the service's PROXY header in
    /// front of the `early` client bytes waiting in the buffer, and starts the first attempt —
    /// or queues, while connections wait for an endpoint below its limit. `destination` is
    /// what the client connected to, when a received header said so.
    pub(super) fn place(
        &mut self,
        key: usize,
        client: SocketAddr,
        destination: Option<SocketAddr>,
        early: usize,
        now: u64,
    ) {
        let conn = &mut self.conns[key];
        let Some(Source::Tcp(tcp)) = self.sources.get(conn.source) else {
            unreachable!("a connection's port outlives it");
        };
        let service = &*tcp.service;
        let snapshot = service.snapshot();
        let Some(pool) = service.placement_pool(&snapshot, Protocol::Tcp, tcp.port) else {
            service.metrics.connections_failed.increment(1);
            tracing::debug!(service = service.name(), %client, "no endpoint reachable; closing client connection");
            self.close(key);
            return;
        };
        let candidates = pool.tier.candidates().len();
        // The client address is used only when a pick reads it; it is not kept per connection.
        let client_ip = pool.needs_client.then(|| client.ip());
        let first = pool.first(
            client_ip,
            affinity_timeout(snapshot.config.session_affinity),
        );
        let attempts =
            (snapshot.config.connection.max_connect_attempts.get() as usize).min(candidates);
        let mut early = early;
        if let Some(version) = snapshot.config.proxy_protocol {
            // The address the client connected to: the header's, the listener's, or (a
            // wildcard listener) the connection's own.
            let destination = destination
                .or(tcp.local_addr())
                .or_else(|| conn.client.local_addr().ok());
            let buffer = conn.buffers.get_or_insert_with(|| self.buffers.take());
            early = header::write_header(buffer, early, version, client, destination);
        }
        conn.phase = Phase::Connecting(Connecting {
            snapshot,
            client_ip,
            first,
            scanned: 0,
            tried: 0,
            attempts,
            attempt: None,
            started: Instant::now(),
            deadline_ms: 0,
            queued: false,
            waiting: false,
            early,
        });
        // First come, first served: behind connections already waiting for a slot.
        if service.queue.has_waiters() {
            self.enqueue(key, now, false);
        } else {
            self.next_attempt(key, now);
        }
    }

    /// Starts the next connect attempt of connection `key` (passing over candidates at their
    /// connection limit), queues it when every candidate left is at its limit, or gives up on
    /// it.
    pub(super) fn next_attempt(&mut self, key: usize, now: u64) {
        let conn = &mut self.conns[key];
        let generation = conn.generation;
        let Phase::Connecting(connecting) = &mut conn.phase else {
            return;
        };
        let Some(Source::Tcp(tcp)) = self.sources.get(conn.source) else {
            unreachable!("a connection's port outlives it");
        };
        let (service, port) = (&*tcp.service, tcp.port);
        // Dropping the socket closes it; the kernel takes it out of the epoll set.
        conn.upstream = None;
        conn.upstream_ready = Ready::default();
        if let Some((attempt, endpoint)) = connecting.attempt.take() {
            drop(attempt);
            slot_freed(service, &endpoint);
        }
        let pool = connecting
            .snapshot
            .pool(Protocol::Tcp, port)
            .expect("the pool was found at the pick");
        let candidates = pool.tier.candidates();
        let mut at_limit = false;
        while connecting.tried < connecting.attempts && connecting.scanned < candidates.len() {
            let endpoint =
                &candidates[(connecting.first + connecting.scanned) % candidates.len()].endpoint;
            connecting.scanned += 1;
            let Some(attempt) = endpoint.try_attempt() else {
                at_limit = true;
                continue;
            };
            connecting.tried += 1;
            let keepalive = connecting.snapshot.config.connection.tcp_keepalive;
            let socket = match new_socket(endpoint.addr(), keepalive.as_ref()) {
                Ok(socket) => socket,
                Err(error) => {
                    drop(attempt);
                    slot_freed(service, endpoint);
                    tracing::debug!(service = service.name(), %error, "cannot create an upstream socket");
                    break;
                }
            };
            match socket.connect(&endpoint.addr().into()) {
                Ok(()) => {}
                Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
                Err(error) => {
                    drop(attempt);
                    slot_freed(service, endpoint);
                    service.connect_failed(&connecting.snapshot, endpoint);
                    tracing::debug!(service = service.name(), endpoint = %endpoint.addr(), %error, "connect failed; trying the next endpoint");
                    continue;
                }
            }
            let mut stream = TcpStream::from_std(socket.into());
            if let Err(error) = self.poll.registry().register(
                &mut stream,
                conn_token(key, generation, upstream_side(connecting.tried - 1)),
                Interest::READABLE | Interest::WRITABLE,
            ) {
                drop(attempt);
                slot_freed(service, endpoint);
                tracing::debug!(service = service.name(), %error, "cannot register an upstream socket");
                break;
            }
            if connecting.waiting {
                // Done waiting: the slot it was granted (or found) is taken.
                connecting.waiting = false;
                service.queue.leave(&self.mailbox, key, generation);
                if candidates.iter().any(|c| c.endpoint.has_room()) {
                    // More slots than this one may have freed at once (a reload).
                    service.queue.slot_freed();
                }
            }
            let settings = &connecting.snapshot.config.connection;
            connecting.deadline_ms = now + settings.connect_timeout.as_millis() as u64;
            connecting.started = Instant::now();
            connecting.attempt = Some((attempt, Arc::clone(endpoint)));
            conn.upstream = Some(stream);
            self.arm(key);
            return;
        }
        if at_limit && connecting.tried < connecting.attempts {
            // Granted a slot that another connection took first: back to the head.
            let front = connecting.waiting;
            self.enqueue(key, now, front);
            return;
        }
        service.metrics.connections_failed.increment(1);
        tracing::debug!(
            service = service.name(),
            "no endpoint reachable; closing client connection"
        );
        self.close(key);
    }

    /// Queues connection `key` until an endpoint has room: at the back, or at the `front` when
    /// it was granted a slot it did not get. The queue timeout counts from the first time.
    fn enqueue(&mut self, key: usize, now: u64, front: bool) {
        let conn = &mut self.conns[key];
        let generation = conn.generation;
        let Phase::Connecting(connecting) = &mut conn.phase else {
            return;
        };
        let Some(Source::Tcp(tcp)) = self.sources.get(conn.source) else {
            unreachable!("a connection's port outlives it");
        };
        let queue = &tcp.service.queue;
        if !connecting.waiting {
            let timeout = connecting.snapshot.config.connection.queue_timeout;
            connecting.deadline_ms = now + timeout.as_millis() as u64;
        }
        connecting.queued = true;
        connecting.scanned = 0;
        if front {
            queue.push_front(&self.mailbox, key, generation);
        } else {
            queue.push(&self.mailbox, key, generation);
        }
        connecting.waiting = true;
        // A slot may have freed between the scan and the push, with nobody queued to get it.
        let room = connecting
            .snapshot
            .pool(Protocol::Tcp, tcp.port)
            .is_some_and(|pool| pool.tier.candidates().iter().any(|c| c.endpoint.has_room()));
        if room {
            queue.slot_freed();
        }
        self.arm(key);
    }

    /// Queued connections granted a slot try again; a slot granted to a connection that is
    /// gone passes on to the next in its queue.
    pub(super) fn take_granted(&mut self, now: u64) {
        let mut granted = std::mem::take(&mut self.granted);
        self.mailbox.take(&mut granted);
        for grant in granted.drain(..) {
            let waiting = self.conns.get_mut(grant.key).and_then(|conn| {
                if conn.generation != grant.generation {
                    return None;
                }
                match &mut conn.phase {
                    Phase::Connecting(c) if c.queued => {
                        c.queued = false;
                        Some(())
                    }
                    _ => None,
                }
            });
            match waiting {
                Some(()) => self.next_attempt(grant.key, now),
                None => grant.queue.slot_freed(),
            }
        }
        self.granted = granted;
    }

    /// The connect of `key` succeeded: count it and start forwarding.
    pub(super) fn established(&mut self, key: usize, now: u64) {
        let conn = &mut self.conns[key];
        let Phase::Connecting(connecting) = &mut conn.phase else {
            return;
        };
        let Some(Source::Tcp(tcp)) = self.sources.get(conn.source) else {
            unreachable!("a connection's port outlives it");
        };
        let (attempt, endpoint) = connecting.attempt.take().expect("attempt in flight");
        endpoint.record_connect_success();
        tcp.service
            .metrics
            .connect_duration
            .record(connecting.started.elapsed().as_secs_f64());
        if let Some(pool) = connecting.snapshot.pool(Protocol::Tcp, tcp.port) {
            pool.remember(connecting.client_ip, &endpoint);
        }
        let settings = &connecting.snapshot.config.connection;
        // The connection drains when its endpoint leaves the service or the service stops
        // (reload, shutdown): it may run on for `drain_timeout`, then it is closed. Already
        // fired: the deadline counts from now.
        let drain = endpoint.drain_token();
        let drain_at_ms = drain
            .is_cancelled()
            .then(|| now + drain.grace(settings.drain_timeout).as_millis() as u64);
        if drain_at_ms.is_none() {
            match self
                .watched
                .iter_mut()
                .find(|w| Arc::ptr_eq(&w.drain, &drain))
            {
                Some(watched) => watched.connections += 1,
                None => self.watched.push(Watched {
                    drain: Arc::clone(&drain),
                    connections: 1,
                }),
            }
        }
        let may_splice = self.pipes.is_some();
        conn.phase = Phase::Established(Established {
            active: attempt.established(),
            // The header and client bytes already in the buffer go first.
            halves: [
                Half::holding(may_splice, connecting.early),
                Half::new(may_splice),
            ],
            idle_timeout_ms: settings.idle_timeout.as_millis() as u64,
            half_close: settings.half_close,
            drain,
            drain_timeout: settings.drain_timeout,
            drain_at_ms,
        });
        conn.last_activity_ms = now;
        self.arm(key);
    }
}

/// A non-blocking socket for a connect to `addr`, with the options every upstream connection
/// gets, and the service's keepalive.
fn new_socket(addr: SocketAddr, keepalive: Option<&TcpKeepalive>) -> io::Result<Socket> {
    let socket = Socket::new(
        Domain::for_address(addr),
        Type::STREAM.nonblocking().cloexec(),
        None,
    )?;
    socket.set_tcp_nodelay(true)?;
    keepalive::set_on_new(&socket, keepalive)?;
    Ok(socket)
}

/// A slot of `endpoint` freed: with a limit, the head of its service's queue gets it.
fn slot_freed(service: &ServiceState, endpoint: &Endpoint) {
    if endpoint.limit().is_some() {
        service.queue.slot_freed();
    }
}

/// Gives back what a connection was counted against.
pub(super) fn release(service: &ServiceState, process: &ConnectionLimit, admitted: Admitted) {
    if admitted.service {
        service.limit.close();
    }
    if admitted.process {
        process.close();
    }
}
