//! A bounded pool of kernel pipes for splice(2) forwarding (Linux only).
//!
//! A direction of a connection borrows a pipe only while bytes are in flight and gives it back
//! as soon as the pipe is drained and its source has nothing more to read, so idle connections
//! hold no pipe (no descriptors, no kernel buffers). Creating a pipe costs two syscalls and two
//! descriptors, so drained pipes are kept for reuse up to `max_idle`. The number of pipes alive
//! (borrowed or idle) is capped at `max_live`; past the cap, or when the kernel refuses a new
//! pipe (EMFILE, ENFILE), [`PipePool::acquire`] returns `None` and the caller copies through
//! userspace instead.

use std::io;
use std::os::fd::OwnedFd;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use rustix::pipe::{PipeFlags, fcntl_getpipe_size, fcntl_setpipe_size, pipe_with};

/// Pipes alive at most in the process-wide pool (each holds two descriptors).
const GLOBAL_MAX_LIVE: usize = 1024;
/// Drained pipes kept for reuse in the process-wide pool.
const GLOBAL_MAX_IDLE: usize = 64;
/// Capacity asked for each pipe. Larger pipes move more bytes per splice call; the kernel caps
/// unprivileged requests at `/proc/sys/fs/pipe-max-size` (1 MiB by default).
const PIPE_SIZE: usize = 256 * 1024;

static GLOBAL: PipePool = PipePool::new(GLOBAL_MAX_LIVE, GLOBAL_MAX_IDLE, PIPE_SIZE);

/// A kernel pipe: bytes spliced into `write` come out of `read`.
#[derive(Debug)]
pub struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
    capacity: usize,
}

impl Pipe {
    fn new(size: usize) -> io::Result<Self> {
        let (read, write) = pipe_with(PipeFlags::CLOEXEC | PipeFlags::NONBLOCK)?;
        // A pipe that cannot grow keeps its default size (64 KiB): still correct, a bit slower.
        let _ = fcntl_setpipe_size(&write, size);
        let capacity = fcntl_getpipe_size(&write)?;
        Ok(Pipe {
            read,
            write,
            capacity,
        })
    }

    /// The end bytes are taken from.
    pub fn read_end(&self) -> &OwnedFd {
        &self.read
    }

    /// The end bytes are put into.
    pub fn write_end(&self) -> &OwnedFd {
        &self.write
    }

    /// Bytes the pipe holds when full.
    pub fn capacity(&self) -> usize {
        self.capacity
    }
}

/// A bounded set of pipes shared by all connections that use it.
#[derive(Debug)]
pub struct PipePool {
    idle: Mutex<Vec<Pipe>>,
    live: AtomicUsize,
    max_live: usize,
    max_idle: usize,
    pipe_size: usize,
}

impl PipePool {
    /// A pool of at most `max_live` pipes, keeping up to `max_idle` drained ones for reuse; each
    /// pipe is sized to `pipe_size` bytes where the kernel allows it.
    pub const fn new(max_live: usize, max_idle: usize, pipe_size: usize) -> Self {
        PipePool {
            idle: Mutex::new(Vec::new()),
            live: AtomicUsize::new(0),
            max_live,
            max_idle,
            pipe_size,
        }
    }

    /// The process-wide pool the data plane uses.
    pub fn global() -> &'static PipePool {
        &GLOBAL
    }

    /// Pipes alive now (borrowed or idle).
    pub fn live(&self) -> usize {
        self.live.load(Ordering::Relaxed)
    }

    /// Pipes drained and waiting in the pool for reuse.
    pub fn idle(&self) -> usize {
        self.idle.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Borrows an empty pipe; `None` when the pool is at its cap or no pipe can be created.
    pub fn acquire(&self) -> Option<PipeLease<'_>> {
        if let Some(pipe) = self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop() {
            return Some(PipeLease::new(self, pipe));
        }
        // Reserve a slot before creating, so concurrent acquirers cannot overshoot the cap.
        let reserved = self
            .live
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |live| {
                (live < self.max_live).then_some(live + 1)
            });
        if reserved.is_err() {
            return None;
        }
        match Pipe::new(self.pipe_size) {
            Ok(pipe) => Some(PipeLease::new(self, pipe)),
            Err(error) => {
                self.live.fetch_sub(1, Ordering::AcqRel);
                tracing::debug!(%error, "cannot create a pipe; copying through userspace");
                None
            }
        }
    }

    fn give_back(&self, pipe: Pipe) {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        if idle.len() < self.max_idle {
            idle.push(pipe);
        } else {
            drop(idle);
            self.close(pipe);
        }
    }

    fn close(&self, pipe: Pipe) {
        drop(pipe);
        self.live.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A pipe borrowed from a [`PipePool`]. Tracks how many bytes sit in the pipe; on drop an empty
/// pipe goes back to the pool, a non-empty one (connection ended mid-transfer) is closed, since
/// its leftover bytes belong to nobody.
#[derive(Debug)]
pub struct PipeLease<'p> {
    pool: &'p PipePool,
    pipe: Option<Pipe>,
    /// Bytes spliced in and not yet spliced out.
    pub pending: usize,
}

impl<'p> PipeLease<'p> {
    fn new(pool: &'p PipePool, pipe: Pipe) -> Self {
        PipeLease {
            pool,
            pipe: Some(pipe),
            pending: 0,
        }
    }

    /// The borrowed pipe.
    pub fn pipe(&self) -> &Pipe {
        self.pipe
            .as_ref()
            .expect("a lease holds its pipe until dropped")
    }
}

impl Drop for PipeLease<'_> {
    fn drop(&mut self) {
        if let Some(pipe) = self.pipe.take() {
            if self.pending == 0 {
                self.pool.give_back(pipe);
            } else {
                self.pool.close(pipe);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cap_limits_live_pipes_and_returns_reuse_them() {
        let pool = PipePool::new(2, 1, 64 * 1024);
        let a = pool.acquire().expect("first pipe");
        let b = pool.acquire().expect("second pipe");
        assert!(pool.acquire().is_none(), "cap of 2 reached");
        assert_eq!(pool.live(), 2);
        drop(a);
        // Kept idle (max_idle = 1): still alive, and handed out again.
        assert_eq!(pool.live(), 2);
        let c = pool.acquire().expect("reused pipe");
        drop(b);
        drop(c);
        // Only one may stay idle; the other is closed.
        assert_eq!(pool.live(), 1);
    }

    #[test]
    fn non_empty_pipe_is_closed_not_reused() {
        let pool = PipePool::new(1, 1, 64 * 1024);
        let mut lease = pool.acquire().unwrap();
        rustix::io::write(lease.pipe().write_end(), b"stale").unwrap();
        lease.pending = 5;
        drop(lease);
        assert_eq!(pool.live(), 0);
        let fresh = pool.acquire().unwrap();
        let mut buffer = [0u8; 8];
        let read = rustix::io::read(fresh.pipe().read_end(), &mut buffer);
        assert_eq!(
            read.map_err(io::Error::from).map_err(|e| e.kind()),
            Err(io::ErrorKind::WouldBlock),
            "a fresh pipe must not carry another connection's bytes"
        );
    }

    #[test]
    fn zero_cap_never_hands_out_a_pipe() {
        let pool = PipePool::new(0, 0, 64 * 1024);
        assert!(pool.acquire().is_none());
        assert_eq!(pool.live(), 0);
    }
}
