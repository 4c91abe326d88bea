//! Zero-copy forwarding of one direction with splice(2): socket → pipe → socket, driven by
//! tokio readiness (Linux only).
//!
//! The pipe is always drained completely before the source is read again. That keeps the
//! meaning of EAGAIN unambiguous: splicing in happens only into an empty pipe, so EAGAIN there
//! means "source socket empty" and clearing its read readiness is right; splicing out happens
//! only from a non-empty pipe, so EAGAIN there means "destination send buffer full" and
//! clearing its write readiness is right. No readiness is ever cleared for the wrong reason, and
//! nothing retries without first waiting for readiness, so the loop never spins.

use std::io;

use metrics::Counter;
use rustix::io::Errno;
use rustix::pipe::{SpliceFlags, splice};
use tokio::io::Interest;
use tokio::net::TcpStream;

use super::pipe_pool::PipeLease;

/// Why [`pump`] stopped.
#[derive(Debug, PartialEq, Eq)]
pub enum PumpEnd {
    /// The source has nothing to read now and the pipe is empty: give the pipe back and wait
    /// for readability.
    SourceEmpty,
    /// The source reached EOF; everything read was delivered.
    Eof,
    /// The last splice moved fewer than the splice threshold: the flow is not bulk (any more).
    Small,
    /// The kernel does not splice these descriptors (EINVAL before any byte moved): copy
    /// through userspace instead.
    Unsupported,
}

const FLAGS: SpliceFlags = SpliceFlags::MOVE.union(SpliceFlags::NONBLOCK);

/// Moves bytes from `source` to `destination` through the leased pipe until the source is
/// empty, ends, or the flow turns small (a splice moving less than `small`). Bytes are counted
/// on `counter` when they leave `source`; `on_progress` is called whenever bytes moved.
///
/// Must be called with an empty pipe; the lease is dropped on return, giving an empty pipe
/// back to its pool (and closing one that still holds bytes after a failure).
pub async fn pump(
    source: &TcpStream,
    destination: &TcpStream,
    mut lease: PipeLease<'_>,
    counter: &Counter,
    small: usize,
    on_progress: &(dyn Fn() + Sync),
) -> io::Result<PumpEnd> {
    debug_assert_eq!(lease.pending, 0, "pump starts with an empty pipe");
    let mut first = true;
    loop {
        let pipe = lease.pipe();
        let capacity = pipe.capacity();
        let moved_in = source.try_io(Interest::READABLE, || {
            splice(source, None, pipe.write_end(), None, capacity, FLAGS).map_err(io::Error::from)
        });
        let moved_in = match moved_in {
            Ok(0) => return Ok(PumpEnd::Eof),
            Ok(n) => n,
            // The pipe is empty, so this is the socket: try_io has cleared read readiness.
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => {
                return Ok(PumpEnd::SourceEmpty);
            }
            Err(error) if first && error.raw_os_error() == Some(Errno::INVAL.raw_os_error()) => {
                return Ok(PumpEnd::Unsupported);
            }
            Err(error) => return Err(error),
        };
        first = false;
        counter.increment(moved_in as u64);
        lease.pending = moved_in;
        on_progress();
        drain(&mut lease, destination).await?;
        on_progress();
        if moved_in < small {
            return Ok(PumpEnd::Small);
        }
    }
}

/// Splices everything in the pipe out to `destination`, waiting for writability as needed.
async fn drain(lease: &mut PipeLease<'_>, destination: &TcpStream) -> io::Result<()> {
    while lease.pending > 0 {
        let pipe = lease.pipe();
        let pending = lease.pending;
        // async_io waits for write readiness, and on EAGAIN (the pipe holds data, so the
        // destination is full) clears it and waits again.
        let moved = destination
            .async_io(Interest::WRITABLE, || {
                splice(pipe.read_end(), None, destination, None, pending, FLAGS)
                    .map_err(io::Error::from)
            })
            .await?;
        if moved == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        lease.pending -= moved;
    }
    Ok(())
}
