//! The data plane's threads. Each worker runs its own event loop ([`EventLoop`]: one epoll set,
//! one timer wheel) and serves its own socket of every service address (a `SO_REUSEPORT` group
//! on Linux, see [`super::listener::bind_tcp_group`] and [`super::udp::bind_udp_group`]). A
//! connection stays on the worker that accepted it from accept to close, and a UDP flow on the
//! worker its client's address hashes to: no work stealing, no wake-ups across threads, and its
//! sockets' kernel state stays warm in one CPU's caches — the model of nginx's and HAProxy's
//! workers. The control plane (owner tasks, probes, admin, DNS) runs on tokio and talks to the
//! loops only through their command channels, atomics and tokens.

use std::io;
use std::num::{NonZeroU32, NonZeroUsize};
use std::sync::Arc;
use std::thread::JoinHandle;

use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::admission::ConnectionLimit;
use super::event_loop::{Command, EventLoop, LoopHandle, LoopWaker};
use crate::service::ServiceState;

/// Running data-plane worker threads. Dropping it stops them; [`Workers::stop`] also waits.
#[derive(Debug)]
pub struct Workers {
    loops: Vec<LoopHandle>,
    threads: Vec<JoinHandle<()>>,
    /// `[runtime] max_connections`, over every worker.
    process_limit: Arc<ConnectionLimit>,
}

impl Workers {
    /// Starts `count` worker threads, each with an event loop of its own, holding the process
    /// to `max_connections` client connections.
    pub fn start(count: NonZeroUsize, max_connections: Option<NonZeroU32>) -> io::Result<Workers> {
        let process_limit = Arc::new(ConnectionLimit::new(
            max_connections,
            metrics::counter!(
                crate::metrics::CONNECTION_LIMIT_REACHED_TOTAL,
                "service" => ""
            ),
        ));
        let mut workers = Workers {
            loops: Vec::with_capacity(count.get()),
            threads: Vec::with_capacity(count.get()),
            process_limit: Arc::clone(&process_limit),
        };
        for index in 0..count.get() {
            // Built here so a failure is returned rather than panicking on the new thread.
            let (event_loop, handle) = EventLoop::new(Arc::clone(&process_limit))?;
            workers.loops.push(handle);
            let thread = std::thread::Builder::new()
                .name(format!("vipd-worker-{index}"))
                .spawn(move || event_loop.run())?;
            workers.threads.push(thread);
        }
        Ok(workers)
    }

    /// The number of workers (always at least 1).
    pub fn count(&self) -> usize {
        self.loops.len()
    }

    /// The process's connection limit (a reload sets it).
    pub fn process_limit(&self) -> &ConnectionLimit {
        &self.process_limit
    }

    /// Has worker `index` (modulo the count) accept on `listener` for service port `port`
    /// until `stop`. The future resolves once the listener is closed (or the worker is gone);
    /// `connections` holds a token until the last connection it accepted has ended.
    pub fn serve_tcp(
        &self,
        index: usize,
        listener: std::net::TcpListener,
        service: Arc<ServiceState>,
        port: u16,
        stop: &CancellationToken,
        connections: &TaskTracker,
    ) -> impl Future<Output = ()> + Send + 'static {
        let handle = self.handle(index);
        let (closed, stopped) = oneshot::channel();
        // Cancelled with `stop`, or when the future is dropped (see `StopOnDrop`).
        let listen_stop = stop.child_token();
        let command = Command::Tcp {
            listener,
            service,
            port,
            stop: listen_stop.clone(),
            closed,
            held: connections.token(),
        };
        served(handle, command, listen_stop, stopped)
    }

    /// Has worker `index` (modulo the count) serve the UDP `socket` of service port `port`
    /// until `stop`. The future resolves once the socket is closed and its flows ended (or the
    /// worker is gone).
    pub fn serve_udp(
        &self,
        index: usize,
        socket: std::net::UdpSocket,
        service: Arc<ServiceState>,
        port: u16,
        stop: &CancellationToken,
    ) -> impl Future<Output = ()> + Send + 'static {
        let handle = self.handle(index);
        let (closed, stopped) = oneshot::channel();
        let listen_stop = stop.child_token();
        let command = Command::Udp {
            socket,
            service,
            port,
            stop: listen_stop.clone(),
            closed,
        };
        served(handle, command, listen_stop, stopped)
    }

    fn handle(&self, index: usize) -> &LoopHandle {
        &self.loops[index % self.loops.len()]
    }

    /// Stops every worker and waits until their threads have exited. Connections still open
    /// on a worker are dropped: stop the listeners and drain connections first.
    pub async fn stop(mut self) {
        self.detach();
        let threads = std::mem::take(&mut self.threads);
        // Joining blocks: keep it off the caller's runtime thread.
        let _ = tokio::task::spawn_blocking(move || {
            for thread in threads {
                let _ = thread.join();
            }
        })
        .await;
    }

    /// Lets go of the loops: each ends once it sees its command channel closed.
    fn detach(&mut self) {
        self.loops.clear();
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        // The threads exit on their own once told to; nothing here waits for them.
        self.detach();
    }
}

/// Hands `command` to the loop behind `handle` at once, and returns a future that waits until
/// the loop has closed the socket: after `stop` fired, or at once when the loop is gone.
fn served(
    handle: &LoopHandle,
    command: Command,
    stop: CancellationToken,
    stopped: oneshot::Receiver<()>,
) -> impl Future<Output = ()> + Send + 'static {
    let sent = handle.send(command);
    let waker = handle.waker();
    async move {
        if !sent {
            return;
        }
        let stop_on_drop = StopOnDrop { stop, waker };
        let mut stopped = stopped;
        tokio::select! {
            _ = stop_on_drop.stop.cancelled() => {}
            _ = &mut stopped => return,
        }
        stop_on_drop.waker.wake();
        let _ = stopped.await;
    }
}

/// Tells the loop to close its socket when the serving future goes away early.
struct StopOnDrop {
    stop: CancellationToken,
    waker: LoopWaker,
}

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        if !self.stop.is_cancelled() {
            self.stop.cancel();
            self.waker.wake();
        }
    }
}

/// The default worker count: one per CPU this process may run on.
pub fn default_count() -> NonZeroUsize {
    std::thread::available_parallelism().unwrap_or(NonZeroUsize::MIN)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn stop_ends_every_worker_thread() {
        let workers = Workers::start(NonZeroUsize::new(3).unwrap(), None).unwrap();
        assert_eq!(workers.count(), 3);
        let threads: Vec<std::thread::Thread> =
            workers.threads.iter().map(|t| t.thread().clone()).collect();
        let names: Vec<_> = threads
            .iter()
            .map(|t| t.name().unwrap().to_owned())
            .collect();
        assert_eq!(names, ["vipd-worker-0", "vipd-worker-1", "vipd-worker-2"]);
        tokio::time::timeout(std::time::Duration::from_secs(10), workers.stop())
            .await
            .expect("every worker thread ends");
    }
}
