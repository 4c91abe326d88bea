//! Forwarding bytes both ways between two TCP streams.
//!
//! Each direction runs to its own end: EOF from one side becomes `shutdown(Write)` towards the
//! other, and the other direction keeps flowing (half-close), so request/response protocols
//! that close their sending side early still get their answer. The whole exchange ends when
//! both directions are done, on the first error, or when no byte moved either way for
//! `idle_timeout`.
//!
//! A waiting direction holds no buffer: it waits for readability, then reads into a buffer on
//! the stack and writes straight on; only bytes the destination cannot take at once are kept,
//! in a heap buffer freed as soon as they are written. On Linux a direction that moves whole
//! buffers at a time (a bulk flow) switches to splice(2) through a pipe borrowed from a
//! [`PipePool`] while bytes are in flight, and back when its reads turn small, when no pipe
//! is free, or when the kernel cannot splice the sockets.

use std::future::poll_fn;
use std::io;
use std::mem::MaybeUninit;
use std::net::Shutdown;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use metrics::Counter;
use socket2::SockRef;
use tokio::io::{AsyncRead, ReadBuf};
use tokio::net::TcpStream;
use tokio::net::tcp::ReadHalf;
use tokio::time::{Instant, sleep_until};
use tokio_util::sync::CancellationToken;

#[cfg(target_os = "linux")]
use super::pipe_pool::PipePool;
#[cfg(target_os = "linux")]
use super::splice::{self, PumpEnd};
use crate::service::drain::Drain;

/// Bytes read at a time by the userspace copy (on the stack, never held while waiting).
const BUFFER_SIZE: usize = 16 * 1024;
/// A read that fills the whole buffer marks a bulk flow: switch that direction to splice.
#[cfg(target_os = "linux")]
const SPLICE_FROM: usize = BUFFER_SIZE;
/// A splice that moves less than this marks the end of the bulk: back to the userspace copy,
/// which costs the same syscalls for small chunks and holds no pipe.
#[cfg(target_os = "linux")]
const SPLICE_UNTIL: usize = 4 * 1024;

/// How a forwarded connection ended.
#[derive(Debug, PartialEq, Eq)]
pub enum CopyEnd {
    /// Both directions reached EOF and were shut down.
    Complete,
    /// No bytes either way for the idle timeout.
    Idle,
    /// Shutdown began and the drain timeout passed before the connection ended.
    Drained,
}

/// When a forwarded connection is cut short.
#[derive(Debug, Clone, Copy)]
pub struct Limits<'a> {
    /// Close after no byte moved either way for this long.
    pub idle_timeout: Duration,
    /// Once this signal fires, close after this long (or at once, if it says so).
    pub drain: Option<(&'a Drain, Duration)>,
}

/// Byte counters for the two directions.
#[derive(Debug, Clone, Copy)]
pub struct ByteCounters<'a> {
    /// Client → endpoint.
    pub inbound: &'a Counter,
    /// Endpoint → client.
    pub outbound: &'a Counter,
}

/// Where a direction gets pipes for splicing; `None` never splices.
#[cfg(target_os = "linux")]
type Pipes<'p> = Option<&'p PipePool>;
#[cfg(not(target_os = "linux"))]
type Pipes<'p> = Option<&'p std::convert::Infallible>;

/// Forwards between `client` and `upstream` until both directions end, an error, idleness, or
/// the drain deadline, splicing bulk flows where the platform allows it.
///
/// The caller closes both streams when this returns: when both directions ended by EOF, the
/// FIN of the direction that ended last is sent by that close rather than by a `shutdown`.
///
/// Not an `async fn`: it returns `forward`'s future itself, so a connection's state does not
/// carry a second copy of the arguments.
pub fn bidirectional<'a>(
    client: &'a mut TcpStream,
    upstream: &'a mut TcpStream,
    limits: Limits<'a>,
    counters: ByteCounters<'a>,
) -> impl Future<Output = io::Result<CopyEnd>> + Send + 'a {
    #[cfg(target_os = "linux")]
    let pipes = Some(PipePool::global());
    #[cfg(not(target_os = "linux"))]
    let pipes = None;
    forward(client, upstream, limits, counters, pipes)
}

/// [`bidirectional`] taking pipes from `pool` (Linux only), so a caller can bound splicing
/// separately.
#[cfg(target_os = "linux")]
pub async fn bidirectional_with_pipes(
    client: &mut TcpStream,
    upstream: &mut TcpStream,
    limits: Limits<'_>,
    counters: ByteCounters<'_>,
    pool: &PipePool,
) -> io::Result<CopyEnd> {
    forward(client, upstream, limits, counters, Some(pool)).await
}

/// [`bidirectional`] copying through userspace only.
pub async fn bidirectional_buffered(
    client: &mut TcpStream,
    upstream: &mut TcpStream,
    limits: Limits<'_>,
    counters: ByteCounters<'_>,
) -> io::Result<CopyEnd> {
    forward(client, upstream, limits, counters, None).await
}

/// Returns an `async move` block rather than being an `async fn`, which would keep its
/// arguments twice in every connection's state.
#[allow(
    clippy::manual_async_fn,
    reason = "an async fn would store its arguments twice"
)]
fn forward<'a>(
    client: &'a mut TcpStream,
    upstream: &'a mut TcpStream,
    limits: Limits<'a>,
    counters: ByteCounters<'a>,
    pipes: Pipes<'a>,
) -> impl Future<Output = io::Result<CopyEnd>> {
    async move {
        let activity = Activity::new();
        let (client_read, client_write) = client.split();
        let (upstream_read, upstream_write) = upstream.split();
        let both = async {
            tokio::try_join!(
                one_way(
                    client_read,
                    upstream_write.as_ref(),
                    counters.inbound,
                    &activity,
                    pipes
                ),
                one_way(
                    upstream_read,
                    client_write.as_ref(),
                    counters.outbound,
                    &activity,
                    pipes
                ),
            )
        };
        tokio::select! {
            result = both => result.map(|_| CopyEnd::Complete),
            end = activity.deadline(&limits) => Ok(end),
        }
    }
}

/// Copies `source` to `destination` until EOF, then shuts `destination`'s sending side down.
/// (An `async move` block for the same reason as [`forward`].)
#[allow(
    clippy::manual_async_fn,
    reason = "an async fn would store its arguments twice"
)]
fn one_way<'a>(
    mut source: ReadHalf<'a>,
    destination: &'a TcpStream,
    counter: &'a Counter,
    activity: &'a Activity,
    pipes: Pipes<'a>,
) -> impl Future<Output = io::Result<()>> {
    async move {
        #[cfg(target_os = "linux")]
        let mut splicing = false;
        #[cfg(not(target_os = "linux"))]
        let _ = pipes;
        loop {
            #[cfg(target_os = "linux")]
            if splicing {
                let source = source.as_ref();
                // poll_read_ready rather than readable(): its future is a reference, not a
                // 150-byte waiter.
                poll_fn(|cx| source.poll_read_ready(cx)).await?;
                let Some(lease) = pipes.and_then(PipePool::acquire) else {
                    splicing = false;
                    continue;
                };
                let touch = || activity.touch();
                // Boxed: a splice episode is short next to the time a connection waits, and the
                // pump's state should not enlarge every waiting connection.
                let pumped = Box::pin(splice::pump(
                    source,
                    destination,
                    lease,
                    counter,
                    SPLICE_UNTIL,
                    &touch,
                ))
                .await?;
                match pumped {
                    // The pump has given the pipe back: an idle direction holds no pipe.
                    PumpEnd::SourceEmpty => {}
                    PumpEnd::Eof => break,
                    PumpEnd::Small | PumpEnd::Unsupported => splicing = false,
                }
                continue;
            }
            // The future waiting here is a reference: an idle direction costs a few words.
            let passed = poll_fn(|cx| pass_through(cx, &mut source, destination, counter)).await?;
            activity.touch();
            // Taken apart before the next await, so no temporary of the match is kept in the
            // connection's state while a partial write waits.
            let (read, rest) = match passed {
                Passed::All(n) => (n, None),
                Passed::Partly { read, rest } => (read, Some(rest)),
                Passed::Eof => break,
            };
            if let Some(rest) = rest {
                // Boxed like the splice pump: rare, and kept out of the waiting state.
                Box::pin(write_all(destination, rest)).await?;
                activity.touch();
            }
            #[cfg(target_os = "linux")]
            if read >= SPLICE_FROM && pipes.is_some() {
                splicing = true;
            }
            #[cfg(not(target_os = "linux"))]
            let _ = read;
        }
        if activity.finish_direction() {
            // The other direction ended first, so `destination` has sent its EOF too: the close
            // that follows at once sends our FIN, and a separate shutdown would be a wasted syscall.
            return Ok(());
        }
        SockRef::from(destination).shutdown(Shutdown::Write)
    }
}

/// What one read-and-write step did.
enum Passed {
    /// Read and wrote this many bytes.
    All(usize),
    /// Read `read` bytes; the destination took only part, `rest` is still to be written.
    Partly { read: usize, rest: Vec<u8> },
    /// The source reached EOF.
    Eof,
}

/// Reads from `source` into a buffer on the stack once it is readable, and writes the bytes on
/// to `destination` at once. A poll function, not async, so the buffer never lives in a
/// suspended connection's state; reading through `poll_read` lets tokio drop readiness after a
/// short read, which saves the read that would only return EAGAIN.
fn pass_through(
    cx: &mut Context<'_>,
    source: &mut ReadHalf<'_>,
    destination: &TcpStream,
    counter: &Counter,
) -> Poll<io::Result<Passed>> {
    let mut buffer = [const { MaybeUninit::<u8>::uninit() }; BUFFER_SIZE];
    let mut read_buf = ReadBuf::uninit(&mut buffer);
    ready!(Pin::new(source).poll_read(cx, &mut read_buf))?;
    let bytes = read_buf.filled();
    let n = bytes.len();
    if n == 0 {
        return Poll::Ready(Ok(Passed::Eof));
    }
    // Counted when read, before the write: whoever sees the bytes arrive also sees them counted.
    counter.increment(n as u64);
    let written = match destination.try_write(bytes) {
        Ok(written) => written,
        Err(error) if error.kind() == io::ErrorKind::WouldBlock => 0,
        Err(error) => return Poll::Ready(Err(error)),
    };
    Poll::Ready(Ok(if written == n {
        Passed::All(n)
    } else {
        Passed::Partly {
            read: n,
            rest: bytes[written..].to_vec(),
        }
    }))
}

/// Writes all of `bytes`, waiting for writability.
async fn write_all(destination: &TcpStream, rest: Vec<u8>) -> io::Result<()> {
    let mut bytes = &rest[..];
    while !bytes.is_empty() {
        poll_fn(|cx| destination.poll_write_ready(cx)).await?;
        match destination.try_write(bytes) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => bytes = &bytes[n..],
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => {}
            Err(error) => return Err(error),
        }
    }
    Ok(())
}

/// When bytes last moved, shared by both directions of one connection.
struct Activity {
    start: Instant,
    /// Milliseconds after `start` of the last movement.
    last_ms: AtomicU64,
    /// Whether one direction has already reached its end.
    one_direction_done: AtomicBool,
}

impl Activity {
    fn new() -> Self {
        Activity {
            start: Instant::now(),
            last_ms: AtomicU64::new(0),
            one_direction_done: AtomicBool::new(false),
        }
    }

    /// Marks one direction as ended; true if the other one had ended before.
    fn finish_direction(&self) -> bool {
        self.one_direction_done.swap(true, Ordering::AcqRel)
    }

    fn touch(&self) {
        let ms = self.start.elapsed().as_millis() as u64;
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    /// Completes once nothing moved for the idle timeout, or once the drain timeout passed
    /// after cancellation. One timer serves both, and it re-arms while there is traffic, so a
    /// busy connection costs one timer wake-up per timeout, not one per read.
    #[allow(
        clippy::manual_async_fn,
        reason = "an async fn would store its arguments twice"
    )]
    fn deadline<'a>(&'a self, limits: &'a Limits<'a>) -> impl Future<Output = CopyEnd> + 'a {
        async move {
            let mut drain_at: Option<Instant> = None;
            // One timer, re-armed in place: a second Sleep would enlarge every connection's
            // state.
            let timer = sleep_until(self.start + limits.idle_timeout);
            tokio::pin!(timer);
            loop {
                match self.next_deadline(limits.idle_timeout, drain_at) {
                    Ok(at) => timer.as_mut().reset(at),
                    Err(end) => return end,
                }
                tokio::select! {
                    biased;
                    _ = cancelled(limits.drain.map(|(drain, _)| drain.token())), if drain_at.is_none() => {
                        let drain_timeout = limits.drain.map_or(Duration::ZERO, |(drain, timeout)| drain.grace(timeout));
                        drain_at = Some(Instant::now() + drain_timeout);
                    }
                    _ = &mut timer => {}
                }
            }
        }
    }

    /// When the timer should fire next, or how the connection ends if that time has passed.
    fn next_deadline(
        &self,
        idle_timeout: Duration,
        drain_at: Option<Instant>,
    ) -> Result<Instant, CopyEnd> {
        let last = self.start + Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
        let idle_at = last + idle_timeout;
        let at = drain_at.map_or(idle_at, |drain_at| drain_at.min(idle_at));
        let now = Instant::now();
        if now < at {
            return Ok(at);
        }
        Err(match drain_at {
            Some(drain_at) if drain_at <= now => CopyEnd::Drained,
            _ => CopyEnd::Idle,
        })
    }
}

/// Completes when `shutdown` is cancelled; never without a token.
async fn cancelled(shutdown: Option<&CancellationToken>) {
    match shutdown {
        Some(shutdown) => shutdown.cancelled().await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod deadline_tests {
    //! The one timer behind idle timeout and drain deadline, on tokio's paused clock.

    use tokio::time::timeout;

    use super::*;

    /// Time since `started` is `expected` up to the timer's millisecond rounding.
    fn assert_elapsed(started: Instant, expected: Duration) {
        let elapsed = started.elapsed();
        assert!(
            elapsed >= expected && elapsed <= expected + Duration::from_millis(5),
            "{elapsed:?}, expected {expected:?}"
        );
    }

    /// `deadline` has not ended after `quiet` more time.
    async fn assert_pending_for(
        deadline: Pin<&mut impl Future<Output = CopyEnd>>,
        quiet: Duration,
    ) {
        assert!(
            timeout(quiet, deadline).await.is_err(),
            "ended within {quiet:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn traffic_pushes_the_idle_deadline_back() {
        let activity = Activity::new();
        let limits = Limits {
            idle_timeout: Duration::from_secs(10),
            drain: None,
        };
        let started = Instant::now();
        let deadline = activity.deadline(&limits);
        tokio::pin!(deadline);
        assert_pending_for(deadline.as_mut(), Duration::from_secs(8)).await;
        activity.touch();
        assert_eq!(deadline.await, CopyEnd::Idle);
        assert_elapsed(started, Duration::from_secs(18));
    }

    #[tokio::test(start_paused = true)]
    async fn drain_deadline_counts_from_cancellation() {
        let activity = Activity::new();
        let shutdown = Drain::standalone();
        let limits = Limits {
            idle_timeout: Duration::from_secs(60),
            drain: Some((&shutdown, Duration::from_secs(5))),
        };
        let started = Instant::now();
        let deadline = activity.deadline(&limits);
        tokio::pin!(deadline);
        assert_pending_for(deadline.as_mut(), Duration::from_secs(30)).await;
        shutdown.start();
        assert_eq!(deadline.await, CopyEnd::Drained);
        assert_elapsed(started, Duration::from_secs(35));
    }

    #[tokio::test(start_paused = true)]
    async fn closing_at_once_skips_the_drain_timeout() {
        let activity = Activity::new();
        let marked_down = Drain::standalone();
        let limits = Limits {
            idle_timeout: Duration::from_secs(60),
            drain: Some((&marked_down, Duration::from_secs(5))),
        };
        let started = Instant::now();
        let deadline = activity.deadline(&limits);
        tokio::pin!(deadline);
        assert_pending_for(deadline.as_mut(), Duration::from_secs(30)).await;
        marked_down.close_now();
        assert_eq!(deadline.await, CopyEnd::Drained);
        assert_elapsed(started, Duration::from_secs(30));
    }

    #[tokio::test(start_paused = true)]
    async fn idle_timeout_still_applies_while_draining() {
        let activity = Activity::new();
        let shutdown = Drain::standalone();
        shutdown.start();
        let limits = Limits {
            idle_timeout: Duration::from_secs(3),
            drain: Some((&shutdown, Duration::from_secs(10))),
        };
        let started = Instant::now();
        assert_eq!(activity.deadline(&limits).await, CopyEnd::Idle);
        assert_elapsed(started, Duration::from_secs(3));
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    //! The forwarding paths over real loopback sockets: client ⇄ (proxy side) ⇄ backend.

    use std::sync::Arc;

    use socket2::Socket;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpSocket};
    use tokio::task::JoinHandle;
    use tokio::time::timeout;

    use super::*;

    const GUARD: Duration = Duration::from_secs(60);
    const BLOCK: usize = 1024 * 1024;

    /// One proxied connection: the outer client, the backend's accepted socket, the forwarding
    /// task and the byte counts it reported.
    struct Proxied {
        client: TcpStream,
        backend: TcpStream,
        task: JoinHandle<io::Result<CopyEnd>>,
        inbound: Arc<AtomicU64>,
        outbound: Arc<AtomicU64>,
    }

    impl Proxied {
        /// How the forwarding task ended (it must end, without error, within the guard).
        async fn end(&mut self) -> CopyEnd {
            timeout(GUARD, &mut self.task)
                .await
                .expect("forwarding ended")
                .expect("forwarding task")
                .expect("forwarding without error")
        }
    }

    #[derive(Clone, Copy)]
    enum Path {
        Pool(&'static PipePool),
        Buffered,
    }

    /// Sets up client → proxy → backend; `small_buffers` shrinks the backend's receive buffer
    /// and the proxy's upstream send buffer so a stalled backend fills them quickly.
    async fn proxied(path: Path, small_buffers: bool) -> Proxied {
        let front = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let back_socket = TcpSocket::new_v4().unwrap();
        if small_buffers {
            back_socket.set_recv_buffer_size(4096).unwrap();
        }
        back_socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let back = back_socket.listen(16).unwrap();
        let client = TcpStream::connect(front.local_addr().unwrap())
            .await
            .unwrap();
        let (mut proxy_client, _) = front.accept().await.unwrap();
        let upstream_socket = TcpSocket::new_v4().unwrap();
        if small_buffers {
            upstream_socket.set_send_buffer_size(4096).unwrap();
        }
        let mut upstream = upstream_socket
            .connect(back.local_addr().unwrap())
            .await
            .unwrap();
        let (backend, _) = back.accept().await.unwrap();
        let inbound = Arc::new(AtomicU64::new(0));
        let outbound = Arc::new(AtomicU64::new(0));
        let (inbound_counter, outbound_counter) = (
            Counter::from_arc(Arc::clone(&inbound)),
            Counter::from_arc(Arc::clone(&outbound)),
        );
        let task = tokio::spawn(async move {
            let counters = ByteCounters {
                inbound: &inbound_counter,
                outbound: &outbound_counter,
            };
            let idle = Limits {
                idle_timeout: Duration::from_secs(3600),
                drain: None,
            };
            match path {
                Path::Pool(pool) => {
                    bidirectional_with_pipes(&mut proxy_client, &mut upstream, idle, counters, pool)
                        .await
                }
                Path::Buffered => {
                    bidirectional_buffered(&mut proxy_client, &mut upstream, idle, counters).await
                }
            }
        });
        Proxied {
            client,
            backend,
            task,
            inbound,
            outbound,
        }
    }

    /// A leaked pool, so the forwarding task can borrow it for `'static`.
    fn pool(max_live: usize) -> &'static PipePool {
        Box::leak(Box::new(PipePool::new(max_live, max_live, 64 * 1024)))
    }

    /// Position-dependent checksum over 8-byte words (FNV-1a style), cheap enough unoptimised.
    fn checksum(state: u64, bytes: &[u8]) -> u64 {
        bytes.chunks_exact(8).fold(state, |h, word| {
            (h ^ u64::from_le_bytes(word.try_into().unwrap())).wrapping_mul(0x0100_0000_01b3)
        })
    }

    /// A block of pseudo-random bytes (xorshift64*).
    fn noise(seed: u64) -> Vec<u8> {
        let mut x = seed;
        let mut block = vec![0u8; BLOCK];
        for word in block.chunks_exact_mut(8) {
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            word.copy_from_slice(&x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
        }
        block
    }

    /// Sends `blocks` MiB (each block tagged with its index, so a lost, repeated or reordered
    /// block changes the checksum), then closes the sending side; returns the checksum sent.
    async fn send<W: AsyncWriteExt + Unpin>(writer: &mut W, seed: u64, blocks: u64) -> u64 {
        let mut block = noise(seed);
        let mut sum = 0xcbf2_9ce4_8422_2325;
        for index in 0..blocks {
            block[..8].copy_from_slice(&index.to_le_bytes());
            sum = checksum(sum, &block);
            writer.write_all(&block).await.unwrap();
        }
        writer.shutdown().await.unwrap();
        sum
    }

    /// Reads to EOF; returns the checksum and byte count received.
    async fn receive<R: AsyncReadExt + Unpin>(reader: &mut R) -> (u64, u64) {
        let mut block = vec![0u8; BLOCK];
        let mut sum = 0xcbf2_9ce4_8422_2325;
        let mut total = 0u64;
        loop {
            let mut filled = 0;
            while filled < BLOCK {
                let n = reader.read(&mut block[filled..]).await.unwrap();
                if n == 0 {
                    assert_eq!(filled % 8, 0, "stream ended inside a word");
                    return (checksum(sum, &block[..filled]), total + filled as u64);
                }
                filled += n;
            }
            sum = checksum(sum, &block);
            total += BLOCK as u64;
        }
    }

    /// Moves `blocks` MiB each way at once and checks both arrive intact and counted.
    async fn both_ways(path: Path, blocks: u64) -> Proxied {
        let mut proxied = proxied(path, false).await;
        let (mut client_read, mut client_write) = proxied.client.split();
        let (mut backend_read, mut backend_write) = proxied.backend.split();
        let (sent_in, sent_out, (got_in, len_in), (got_out, len_out)) = timeout(GUARD, async {
            tokio::join!(
                send(&mut client_write, 1, blocks),
                send(&mut backend_write, 2, blocks),
                receive(&mut backend_read),
                receive(&mut client_read),
            )
        })
        .await
        .expect("transfer finished in time");
        let bytes = blocks * BLOCK as u64;
        assert_eq!((len_in, len_out), (bytes, bytes));
        assert_eq!(got_in, sent_in, "client → backend corrupted");
        assert_eq!(got_out, sent_out, "backend → client corrupted");
        assert_eq!(proxied.end().await, CopyEnd::Complete);
        assert_eq!(proxied.inbound.load(Ordering::Relaxed), bytes);
        assert_eq!(proxied.outbound.load(Ordering::Relaxed), bytes);
        proxied
    }

    /// Polls `condition` until it holds (no event exists for "a counter reached N").
    async fn eventually(what: &str, condition: impl Fn() -> bool) {
        timeout(GUARD, async {
            while !condition() {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn splice_moves_256_mib_both_ways_intact() {
        let pool = pool(4);
        both_ways(Path::Pool(pool), 256).await;
        assert!(pool.live() > 0, "the bulk flows must have spliced");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn no_free_pipe_falls_back_to_copying() {
        let pool = pool(0);
        both_ways(Path::Pool(pool), 32).await;
        assert_eq!(pool.live(), 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn buffered_path_moves_bytes_intact() {
        both_ways(Path::Buffered, 32).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn connections_share_a_capped_pool() {
        // Two bulk connections, one pipe: one of them splices, the other copies meanwhile.
        let pool = pool(1);
        let (a, b) = tokio::join!(
            both_ways(Path::Pool(pool), 16),
            both_ways(Path::Pool(pool), 16)
        );
        drop((a, b));
        assert_eq!(pool.live(), 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn stalled_destination_keeps_bytes_in_the_pipe_until_it_reads() {
        // The backend reads nothing at first and its buffers are tiny, so the pipe fills and
        // splicing out hits EAGAIN with bytes still in the pipe; they must wait there, not be
        // lost, and flow once the backend reads.
        let pool = pool(2);
        let mut proxied = proxied(Path::Pool(pool), true).await;
        // A first block read promptly: the flow is known to be bulk and is spliced from now on.
        let first = noise(7);
        let mut got_first = vec![0u8; BLOCK];
        let (written, read) = timeout(GUARD, async {
            tokio::join!(
                proxied.client.write_all(&first),
                proxied.backend.read_exact(&mut got_first)
            )
        })
        .await
        .unwrap();
        written.unwrap();
        read.unwrap();
        assert!(got_first == first);
        let (mut client_read, mut client_write) = proxied.client.split();
        let sender = send(&mut client_write, 3, 8);
        let inbound = Arc::clone(&proxied.inbound);
        let backend = &mut proxied.backend;
        let stalled_then_read = async {
            // Far beyond what the 4 KiB buffers hold: the rest is in the pipe.
            eventually("bytes to pile up in the pipe", || {
                inbound.load(Ordering::Relaxed) >= BLOCK as u64 + 48 * 1024
            })
            .await;
            let received = receive(backend).await;
            backend.shutdown().await.unwrap();
            received
        };
        let (sent, (got, len)) = timeout(GUARD, async { tokio::join!(sender, stalled_then_read) })
            .await
            .unwrap();
        assert_eq!(len, 8 * BLOCK as u64);
        assert_eq!(got, sent);
        let mut rest = Vec::new();
        client_read.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty());
        assert_eq!(proxied.end().await, CopyEnd::Complete);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn half_close_after_splicing_still_carries_the_answer() {
        let pool = pool(2);
        let mut proxied = proxied(Path::Pool(pool), false).await;
        let (mut client_read, mut client_write) = proxied.client.split();
        let (sent, (got, len)) = timeout(GUARD, async {
            tokio::join!(send(&mut client_write, 4, 4), receive(&mut proxied.backend))
        })
        .await
        .unwrap();
        assert_eq!((got, len), (sent, 4 * BLOCK as u64));
        // The client's EOF reached the backend; the other direction is still open.
        let answer = send(&mut proxied.backend, 5, 4).await;
        let (got, len) = timeout(GUARD, receive(&mut client_read)).await.unwrap();
        assert_eq!((got, len), (answer, 4 * BLOCK as u64));
        assert_eq!(proxied.end().await, CopyEnd::Complete);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn quiet_connection_holds_no_pipe() {
        let pool = pool(2);
        let mut proxied = proxied(Path::Pool(pool), false).await;
        let block = noise(6);
        proxied.client.write_all(&block).await.unwrap();
        let mut got = vec![0u8; BLOCK];
        timeout(GUARD, proxied.backend.read_exact(&mut got))
            .await
            .unwrap()
            .unwrap();
        assert!(got == block);
        assert!(pool.live() > 0, "the flow must have spliced");
        // The connection stays open and silent: every pipe is back in the pool.
        eventually("the pipe to return", || pool.idle() == pool.live()).await;
        assert!(!proxied.task.is_finished());
        let _ = Socket::from(proxied.client.into_std().unwrap());
    }
}
