//! Zero-copy forwarding of one bulk direction with splice(2): socket → pipe → socket, on the
//! loop's edge-triggered readiness.
//!
//! A direction switches here when a read fills its whole buffer, borrows a pipe from the pool
//! only while bytes are in flight, and goes back to copying when a splice moves less than
//! [`SPLICE_UNTIL`], when no pipe is free, or when the kernel cannot splice the sockets.
//!
//! The pipe is always emptied before the source is spliced from again. That keeps the meaning
//! of EAGAIN unambiguous: splicing in happens only into an empty pipe, so EAGAIN there means
//! "source socket empty" and clearing its readability is right; splicing out happens only from a
//! non-empty pipe, so EAGAIN there means "destination send buffer full". A short splice clears
//! nothing (a pipe runs out of slots before bytes, so short need not mean empty): the next call
//! says EAGAIN when it is.

use std::io;

use mio::net::TcpStream;
use rustix::io::Errno;
use rustix::pipe::{SpliceFlags, splice};

use super::conn::{Half, Moved, Ready};
use crate::proxy::pipe_pool::PipePool;

/// A splice that moves less than this marks the end of the bulk: back to the userspace copy,
/// which costs the same syscalls for small chunks and holds no pipe.
pub const SPLICE_UNTIL: usize = 4 * 1024;

const FLAGS: SpliceFlags = SpliceFlags::MOVE.union(SpliceFlags::NONBLOCK);

/// Splices `source` → `destination` until one side would block or the source is at EOF
/// (`half.splicing` stays set), or until the direction goes back to copying (`half.splicing`
/// cleared). An idle direction holds no pipe on return.
pub fn pump(
    half: &mut Half,
    source: &TcpStream,
    source_ready: &mut Ready,
    destination: &TcpStream,
    destination_ready: &mut Ready,
    pool: &'static PipePool,
) -> io::Result<Moved> {
    let mut moved = Moved::default();
    loop {
        if let Some(lease) = half.pipe.as_mut()
            && lease.pending > 0
        {
            if !destination_ready.writable {
                return Ok(moved);
            }
            let pipe = lease.pipe();
            match splice(
                pipe.read_end(),
                None,
                destination,
                None,
                lease.pending,
                FLAGS,
            ) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    lease.pending -= n;
                    moved.written += n;
                }
                Err(Errno::AGAIN) => destination_ready.writable = false,
                Err(Errno::INTR) => {}
                Err(error) => return Err(error.into()),
            }
            continue;
        }
        // The pipe is empty.
        if half.small {
            half.small = false;
            half.splicing = false;
            half.pipe = None;
            return Ok(moved);
        }
        if half.eof || !source_ready.readable {
            half.pipe = None;
            return Ok(moved);
        }
        if half.pipe.is_none() {
            match pool.acquire() {
                Some(lease) => half.pipe = Some(lease),
                None => {
                    // No pipe free: copy through the buffer meanwhile.
                    half.splicing = false;
                    return Ok(moved);
                }
            }
        }
        let lease = half.pipe.as_mut().expect("just ensured");
        let capacity = lease.pipe().capacity();
        match splice(
            source,
            None,
            lease.pipe().write_end(),
            None,
            capacity,
            FLAGS,
        ) {
            Ok(0) => {
                half.eof = true;
                half.pipe = None;
            }
            Ok(n) => {
                lease.pending = n;
                moved.read += n;
                half.spliced = true;
                half.small = n < SPLICE_UNTIL;
            }
            // The pipe is empty, so this is the socket.
            Err(Errno::AGAIN) => source_ready.readable = false,
            Err(Errno::INVAL) if !half.spliced => {
                // These sockets cannot be spliced: copy, and do not try again.
                half.splicing = false;
                half.may_splice = false;
                half.pipe = None;
                return Ok(moved);
            }
            Err(Errno::INTR) => {}
            Err(error) => return Err(error.into()),
        }
    }
}
