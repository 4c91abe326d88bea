//! The data plane's threads. Each worker runs its own single-threaded tokio runtime, with its
//! own I/O driver and timers, and accepts from its own listening socket of every service port
//! (a `SO_REUSEPORT` group on Linux, see [`super::listener::bind_tcp_group`] and
//! [`super::udp::bind_udp_group`]). A connection stays on the worker that accepted it from
//! accept to close, and a UDP flow on the worker its client's address hashes to: no work
//! stealing, no wake-ups across threads, and its sockets' kernel state stays warm in one CPU's
//! caches — the model of nginx's and HAProxy's workers. The control plane (owner tasks, probes, admin, DNS) runs on
//! the caller's runtime and talks to connections only through atomics, tokens and channels.

use std::io;
use std::num::NonZeroUsize;
use std::thread::JoinHandle;

use tokio::runtime::Handle;
use tokio_util::sync::CancellationToken;

/// Running data-plane worker threads. Dropping it stops them; [`Workers::stop`] also waits.
#[derive(Debug)]
pub struct Workers {
    handles: Vec<Handle>,
    threads: Vec<JoinHandle<()>>,
    stop: CancellationToken,
}

impl Workers {
    /// Starts `count` worker threads, each with a runtime of its own.
    pub fn start(count: NonZeroUsize) -> io::Result<Workers> {
        let stop = CancellationToken::new();
        let mut workers = Workers {
            handles: Vec::with_capacity(count.get()),
            threads: Vec::with_capacity(count.get()),
            stop: stop.clone(),
        };
        for index in 0..count.get() {
            // Built here so a failure is returned rather than panicking on the new thread.
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            workers.handles.push(runtime.handle().clone());
            let stop = stop.clone();
            let thread = std::thread::Builder::new()
                .name(format!("vipd-worker-{index}"))
                .spawn(move || {
                    runtime.block_on(stop.cancelled());
                    // Dropping the runtime here drops whatever tasks are left on it.
                })?;
            workers.threads.push(thread);
        }
        Ok(workers)
    }

    /// The number of workers (always at least 1).
    pub fn count(&self) -> usize {
        self.handles.len()
    }

    /// The runtime of worker `index` (modulo the worker count).
    pub fn handle(&self, index: usize) -> &Handle {
        &self.handles[index % self.handles.len()]
    }

    /// Stops every worker and waits until their threads have exited. Tasks still on a
    /// worker's runtime are dropped: stop the listeners and drain connections first.
    pub async fn stop(mut self) {
        self.stop.cancel();
        let threads = std::mem::take(&mut self.threads);
        // Joining blocks: keep it off the caller's runtime thread.
        let _ = tokio::task::spawn_blocking(move || {
            for thread in threads {
                let _ = thread.join();
            }
        })
        .await;
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        // The threads exit on their own once told to; nothing here waits for them.
        self.stop.cancel();
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
    async fn tasks_run_on_the_worker_threads_and_stop_ends_them() {
        let workers = Workers::start(NonZeroUsize::new(2).unwrap()).unwrap();
        assert_eq!(workers.count(), 2);
        let mut names = Vec::new();
        for index in 0..3 {
            let name = workers
                .handle(index)
                .spawn(async { std::thread::current().name().map(str::to_owned) })
                .await
                .unwrap();
            names.push(name.unwrap());
        }
        assert_eq!(names, ["vipd-worker-0", "vipd-worker-1", "vipd-worker-0"]);
        let probe = workers.handle(1).clone();
        workers.stop().await;
        // A stopped worker's runtime is gone: what is spawned there never runs.
        assert!(probe.spawn(async {}).await.is_err());
    }
}
