//! One proxied connection as a state machine: connecting (with failover) or established
//! (forwarding both ways through a buffer pair), and the one-direction pump both use.

use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::net::TcpStream;

use super::splice;
use crate::proxy::pipe_pool::{PipeLease, PipePool};

use crate::service::drain::Drain;
use crate::service::endpoint::{ActiveConnection, Attempt, Endpoint};
use crate::service::snapshot::Snapshot;

/// Bytes each direction of an established connection buffers.
pub const BUFFER_SIZE: usize = 16 * 1024;

/// The loop's spare buffer pairs. A connection takes a pair when it has something to move and
/// gives it back as soon as neither direction holds bytes its destination has not taken: an
/// idle connection (or a request/response one between messages) holds no buffer, and a loop
/// needs about as many pairs as it has connections with a backed-up destination.
#[derive(Debug, Default)]
pub struct BufferPool {
    free: Vec<Box<[u8]>>,
    /// Pairs kept at most; more are freed.
    keep: usize,
}

impl BufferPool {
    /// A pool that keeps at most `keep` spare pairs.
    pub fn new(keep: usize) -> Self {
        BufferPool {
            free: Vec::new(),
            keep,
        }
    }

    /// A pair of `BUFFER_SIZE` buffers, spare or new.
    pub fn take(&mut self) -> Box<[u8]> {
        self.free
            .pop()
            .unwrap_or_else(|| vec![0u8; 2 * BUFFER_SIZE].into_boxed_slice())
    }

    /// Returns a pair for reuse.
    pub fn give(&mut self, pair: Box<[u8]>) {
        if self.free.len() < self.keep {
            self.free.push(pair);
        }
    }

    /// Spare pairs now.
    #[cfg(test)]
    pub fn spare(&self) -> usize {
        self.free.len()
    }
}

/// Edge-triggered readiness of one socket as last reported: set by events, cleared when an
/// operation would block (or returned short, which on a TCP socket means the same).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Ready {
    pub readable: bool,
    pub writable: bool,
    /// The peer's FIN (or an error) was reported: the edge that said so came with it, and no
    /// further edge will come, so a short read must not clear `readable` any more.
    pub read_closed: bool,
    /// An error or hang-up was reported (for a connect in progress: it failed).
    pub failed: bool,
}

impl Ready {
    /// Takes in what `event` reports of the socket: an edge sets flags, never clears them.
    pub fn note(&mut self, event: &mio::event::Event) {
        if event.is_read_closed() || event.is_error() {
            self.read_closed = true;
            self.readable = true;
        } else if event.is_readable() {
            self.readable = true;
        }
        if event.is_writable() || event.is_write_closed() || event.is_error() {
            self.writable = true;
        }
        if event.is_error() || event.is_write_closed() {
            self.failed = true;
        }
    }
}

/// One direction of an established connection: bytes `start..end` of its buffer wait for the
/// destination, and while the direction is bulk, bytes in a borrowed pipe (see [`splice`]).
///
/// [`splice`]: super::splice
#[derive(Debug, Default)]
pub struct Half {
    start: usize,
    end: usize,
    /// The source reached EOF.
    pub(super) eof: bool,
    /// The destination's sending side is shut down (or needs no shutdown: see `Conn`).
    shut: bool,
    /// A read that fills the whole buffer switches the direction to splicing (set when the
    /// loop has pipes to lend and the sockets have not refused to splice).
    pub(super) may_splice: bool,
    /// Moving bytes with splice(2) rather than through the buffer.
    pub(super) splicing: bool,
    /// The pipe borrowed while spliced bytes are in flight; given back once it is empty and the
    /// source has nothing more.
    pub(super) pipe: Option<PipeLease<'static>>,
    /// The last splice moved little: back to copying once the pipe is empty.
    pub(super) small: bool,
    /// Bytes have been spliced on this direction (an EINVAL after that is a real error).
    pub(super) spliced: bool,
}

impl Half {
    /// A direction that switches to splicing when it turns bulk, if `may_splice`.
    pub fn new(may_splice: bool) -> Half {
        Half {
            may_splice,
            ..Half::default()
        }
    }

    /// [`Half::new`], with the first `pending` bytes of its buffer waiting to be written (a
    /// PROXY header, client bytes that came with a received one).
    pub fn holding(may_splice: bool, pending: usize) -> Half {
        Half {
            end: pending,
            ..Half::new(may_splice)
        }
    }

    /// EOF read and every byte written on: the direction is over.
    pub fn finished(&self) -> bool {
        self.eof && self.is_empty()
    }

    /// No byte waits for the destination, in the buffer or in a pipe.
    pub fn is_empty(&self) -> bool {
        self.buffer_is_empty() && self.pipe.as_ref().is_none_or(|lease| lease.pending == 0)
    }

    /// No byte waits in the buffer (a pipe may still hold some).
    pub fn buffer_is_empty(&self) -> bool {
        self.start == self.end
    }

    pub fn is_shut(&self) -> bool {
        self.shut
    }

    pub fn mark_shut(&mut self) {
        self.shut = true;
    }
}

/// What one pump call moved.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Moved {
    pub read: usize,
    pub written: usize,
}

impl std::ops::AddAssign for Moved {
    fn add_assign(&mut self, other: Moved) {
        self.read += other.read;
        self.written += other.written;
    }
}

/// Moves one direction as far as the sockets allow, through the buffer or, while the
/// direction is bulk, through a pipe from `pipes`.
fn direction(
    half: &mut Half,
    buffer: &mut [u8],
    source: &mut TcpStream,
    source_ready: &mut Ready,
    destination: &mut TcpStream,
    destination_ready: &mut Ready,
    pipes: Option<&'static PipePool>,
) -> io::Result<Moved> {
    let mut moved = Moved::default();
    loop {
        if half.splicing && half.buffer_is_empty() {
            let pool = pipes.expect("a direction splices only when the loop lends pipes");
            moved += splice::pump(
                half,
                source,
                source_ready,
                destination,
                destination_ready,
                pool,
            )?;
            if half.splicing {
                // Blocked on one side, or at EOF.
                return Ok(moved);
            }
        }
        moved += pump(
            half,
            buffer,
            source,
            source_ready,
            destination,
            destination_ready,
        )?;
        if !(half.splicing && half.buffer_is_empty()) {
            return Ok(moved);
        }
    }
}

/// Moves bytes `source` → `destination` through `buffer` until one side would block, the
/// source is at EOF with nothing left to write, or the direction turned bulk (`splicing`) and
/// the buffer is empty. Reads only into an empty buffer and writes each read at once, so a
/// steady request/response flow costs one read and one write per message.
pub fn pump<S: Read + ?Sized, D: Write + ?Sized>(
    half: &mut Half,
    buffer: &mut [u8],
    source: &mut S,
    source_ready: &mut Ready,
    destination: &mut D,
    destination_ready: &mut Ready,
) -> io::Result<Moved> {
    let mut moved = Moved::default();
    loop {
        if half.start < half.end {
            if !destination_ready.writable {
                return Ok(moved);
            }
            let pending = half.end - half.start;
            match destination.write(&buffer[half.start..half.end]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    moved.written += n;
                    half.start += n;
                    if half.start == half.end {
                        half.start = 0;
                        half.end = 0;
                    }
                    if n < pending {
                        // The socket buffer is full: the next writable edge says when.
                        destination_ready.writable = false;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    destination_ready.writable = false;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        } else if !half.eof && source_ready.readable && !half.splicing {
            match source.read(buffer) {
                Ok(0) => half.eof = true,
                Ok(n) => {
                    moved.read += n;
                    half.start = 0;
                    half.end = n;
                    if n == buffer.len() && half.may_splice {
                        // A bulk flow: once this buffer is written, splice the rest.
                        half.splicing = true;
                    }
                    if n < buffer.len() && !source_ready.read_closed {
                        // A short read emptied the receive queue; new bytes bring a new edge.
                        source_ready.readable = false;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => source_ready.readable = false,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        } else {
            return Ok(moved);
        }
    }
}

/// A connect in progress: the snapshot it picked from (kept for failover, as tcp.rs does) and
/// where in the candidates it is.
#[derive(Debug)]
pub struct Connecting {
    pub snapshot: Arc<Snapshot>,
    pub client_ip: Option<IpAddr>,
    /// Candidate index of the first pick.
    pub first: usize,
    /// Candidates looked at so far, from `first` on (those at their connection limit are
    /// passed over without an attempt).
    pub scanned: usize,
    /// Attempts started so far.
    pub tried: usize,
    /// Distinct endpoints that may be tried.
    pub attempts: usize,
    /// The current attempt (counts as active on its endpoint) and its endpoint.
    pub attempt: Option<(Attempt, Arc<Endpoint>)>,
    pub started: Instant,
    /// Loop milliseconds at which the current attempt times out, or while `queued`, the
    /// queue timeout.
    pub deadline_ms: u64,
    /// Bytes at the start of the client → endpoint buffer to write before any other: the
    /// PROXY header vipd sends, and client bytes read with a received header.
    pub early: usize,
    /// In the service's queue: every candidate left is at its connection limit.
    pub queued: bool,
    /// Counted among the queue's waiting connections (queued, or granted a slot and not yet
    /// connecting): leaves the count when it starts an attempt, times out or closes.
    pub waiting: bool,
}

/// The limits a connection counts against (see `proxy::admission`).
#[derive(Debug, Default, Clone, Copy)]
pub struct Admitted {
    /// The service's `max_connections`.
    pub service: bool,
    /// `[runtime] max_connections`.
    pub process: bool,
}

/// A client not yet given an endpoint: on a port that accepts the PROXY protocol, until its
/// header has arrived whole.
#[derive(Debug)]
pub struct Accepted {
    /// Loop milliseconds by which the header must have arrived (`proxy_protocol_timeout`).
    pub deadline_ms: u64,
    /// Bytes read so far, at the start of the client → endpoint buffer.
    pub read: usize,
    /// The peer that connected (a trusted load balancer).
    pub peer: SocketAddr,
}

/// A connected pair forwarding both ways.
#[derive(Debug)]
pub struct Established {
    pub active: ActiveConnection,
    /// Client → endpoint, endpoint → client.
    pub halves: [Half; 2],
    pub idle_timeout_ms: u64,
    /// The service's `half_close`: when false, the connection ends with its first direction.
    pub half_close: bool,
    pub drain: Arc<Drain>,
    pub drain_timeout: Duration,
    /// Loop milliseconds of the drain deadline, once the drain signal fired.
    pub drain_at_ms: Option<u64>,
}

#[derive(Debug)]
pub enum Phase {
    /// Accepted, reading the PROXY header the peer must send first.
    Accepted(Accepted),
    /// Inline, not boxed: no allocation per connection, and an established connection is the
    /// larger variant anyway.
    Connecting(Connecting),
    Established(Established),
}

/// How an established connection is when its pumps stop.
#[derive(Debug, PartialEq, Eq)]
pub enum Flow {
    Open,
    Complete,
}

/// One client connection in the loop's slab.
#[derive(Debug)]
pub struct Conn {
    /// Part of every token of this connection: events of an earlier occupant of the slab slot
    /// are recognised and dropped.
    pub generation: u32,
    pub client: TcpStream,
    pub client_ready: Ready,
    pub upstream: Option<TcpStream>,
    pub upstream_ready: Ready,
    pub phase: Phase,
    /// The slab key of the port that accepted it (its service and port number).
    pub source: usize,
    /// The tick of the newest wheel entry armed for this connection; older entries are stale.
    pub armed_tick: Option<u64>,
    /// Loop milliseconds of the last byte moved (either way).
    pub last_activity_ms: u64,
    /// The connection limits it counts against.
    pub admitted: Admitted,
    /// `BUFFER_SIZE` bytes client → endpoint, then `BUFFER_SIZE` endpoint → client; held only
    /// while bytes wait for a socket (see [`BufferPool`]).
    pub buffers: Option<Box<[u8]>>,
}

impl Conn {
    /// The next deadline: connect timeout, or the earlier of idle and drain deadlines.
    pub fn deadline_ms(&self) -> u64 {
        match &self.phase {
            Phase::Accepted(accepted) => accepted.deadline_ms,
            Phase::Connecting(connecting) => connecting.deadline_ms,
            Phase::Established(established) => {
                let idle = self
                    .last_activity_ms
                    .saturating_add(established.idle_timeout_ms);
                established.drain_at_ms.map_or(idle, |at| at.min(idle))
            }
        }
    }

    /// Forwards both ways as far as the sockets allow (bulk directions through pipes from
    /// `pipes`), shutting a destination's sending side down when its direction ends first.
    /// Returns the bytes read from the client and from the endpoint, and `Complete` once both
    /// directions ended (without `half_close`: once either did): the caller then closes both
    /// sockets, and that close sends the FIN of the direction that ended last.
    pub fn forward(
        &mut self,
        now_ms: u64,
        pool: &mut BufferPool,
        pipes: Option<&'static PipePool>,
    ) -> io::Result<(Flow, usize, usize)> {
        let Phase::Established(established) = &mut self.phase else {
            return Ok((Flow::Open, 0, 0));
        };
        let half_close = established.half_close;
        let upstream = self.upstream.as_mut().expect("established has an upstream");
        let buffers = self.buffers.get_or_insert_with(|| pool.take());
        let (inbound_buffer, outbound_buffer) = buffers.split_at_mut(BUFFER_SIZE);
        let [inbound, outbound] = &mut established.halves;
        let moved_in = direction(
            inbound,
            inbound_buffer,
            &mut self.client,
            &mut self.client_ready,
            upstream,
            &mut self.upstream_ready,
            pipes,
        );
        let moved_out = direction(
            outbound,
            outbound_buffer,
            upstream,
            &mut self.upstream_ready,
            &mut self.client,
            &mut self.client_ready,
            pipes,
        );
        if inbound.buffer_is_empty()
            && outbound.buffer_is_empty()
            && let Some(pair) = self.buffers.take()
        {
            // Nothing waits in either buffer: the pair serves other connections meanwhile.
            pool.give(pair);
        }
        let (moved_in, moved_out) = (moved_in?, moved_out?);
        if moved_in.read + moved_in.written + moved_out.read + moved_out.written > 0 {
            self.last_activity_ms = now_ms;
        }
        if (inbound.finished() && outbound.finished())
            || (!half_close && (inbound.finished() || outbound.finished()))
        {
            // Without half-close, what the other direction still had on its way is dropped,
            // as nginx stream does: saves the wait for the second FIN.
            return Ok((Flow::Complete, moved_in.read, moved_out.read));
        }
        if inbound.finished() && !inbound.is_shut() {
            upstream.shutdown(std::net::Shutdown::Write)?;
            inbound.mark_shut();
        }
        if outbound.finished() && !outbound.is_shut() {
            self.client.shutdown(std::net::Shutdown::Write)?;
            outbound.mark_shut();
        }
        Ok((Flow::Open, moved_in.read, moved_out.read))
    }
}

#[cfg(test)]
mod tests;
