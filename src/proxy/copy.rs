//! Forwarding bytes both ways between two TCP streams.
//!
//! Each direction runs to its own end: EOF from one side becomes `shutdown(Write)` towards the
//! other, and the other direction keeps flowing (half-close), so request/response protocols
//! that close their sending side early still get their answer. The whole exchange ends when
//! both directions are done, on the first error, or when no byte moved either way for
//! `idle_timeout`.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use metrics::Counter;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{Instant, sleep_until};

/// Per-direction buffer size.
const BUFFER_SIZE: usize = 16 * 1024;

/// How a forwarded connection ended.
#[derive(Debug, PartialEq, Eq)]
pub enum CopyEnd {
    /// Both directions reached EOF and were shut down.
    Complete,
    /// No bytes either way for the idle timeout.
    Idle,
}

/// Byte counters for the two directions.
#[derive(Debug, Clone, Copy)]
pub struct ByteCounters<'a> {
    /// Client → endpoint.
    pub inbound: &'a Counter,
    /// Endpoint → client.
    pub outbound: &'a Counter,
}

/// Forwards between `client` and `upstream` until both directions end, an error, or idleness.
pub async fn bidirectional(
    client: &mut TcpStream,
    upstream: &mut TcpStream,
    idle_timeout: Duration,
    counters: ByteCounters<'_>,
) -> io::Result<CopyEnd> {
    let (mut client_read, mut client_write) = client.split();
    let (mut upstream_read, mut upstream_write) = upstream.split();
    let activity = Activity::new();
    let forward = async {
        tokio::try_join!(
            one_way(
                &mut client_read,
                &mut upstream_write,
                counters.inbound,
                &activity
            ),
            one_way(
                &mut upstream_read,
                &mut client_write,
                counters.outbound,
                &activity
            ),
        )
    };
    tokio::select! {
        result = forward => result.map(|_| CopyEnd::Complete),
        _ = activity.idle_for(idle_timeout) => Ok(CopyEnd::Idle),
    }
}

/// Copies `reader` to `writer` until EOF, then shuts `writer` down.
async fn one_way<R, W>(
    reader: &mut R,
    writer: &mut W,
    counter: &Counter,
    activity: &Activity,
) -> io::Result<u64>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buffer = vec![0u8; BUFFER_SIZE];
    let mut total = 0u64;
    loop {
        let n = reader.read(&mut buffer).await?;
        if n == 0 {
            writer.shutdown().await?;
            return Ok(total);
        }
        // Counted when read, before the write: whoever sees the bytes arrive also sees them
        // counted.
        counter.increment(n as u64);
        total += n as u64;
        activity.touch();
        writer.write_all(&buffer[..n]).await?;
        activity.touch();
    }
}

/// When bytes last moved, shared by both directions of one connection.
struct Activity {
    start: Instant,
    /// Milliseconds after `start` of the last movement.
    last_ms: AtomicU64,
}

impl Activity {
    fn new() -> Self {
        Activity {
            start: Instant::now(),
            last_ms: AtomicU64::new(0),
        }
    }

    fn touch(&self) {
        let ms = self.start.elapsed().as_millis() as u64;
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    /// Completes once nothing moved for `timeout`; re-arms while there is traffic, so a busy
    /// connection costs one timer wake-up per timeout, not one per read.
    async fn idle_for(&self, timeout: Duration) {
        loop {
            let last = self.start + Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
            let deadline = last + timeout;
            if Instant::now() >= deadline {
                return;
            }
            sleep_until(deadline).await;
        }
    }
}
