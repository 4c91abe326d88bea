//! A server child process (`redis-server`, `postgres`): its output appended to a log file,
//! stopped by a signal to its PID and reaped, with SIGKILL when it does not exit in time; dropped
//! the same way, so no server outlives its test.

use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use rustix::process::{Pid, Signal, kill_process};

use super::{GUARD, POLL};

/// How long a dropped server gets to exit on its stop signal before SIGKILL: dropping happens on
/// a test's thread, so it is shorter than [`GUARD`].
const DROP_GRACE: Duration = Duration::from_secs(5);

/// A running server process.
pub struct ServerProcess {
    child: Child,
    name: String,
    log: PathBuf,
    stop: Signal,
}

impl ServerProcess {
    /// Starts `command` as `name` with stdin closed and stdout and stderr appended to `log`;
    /// `stop` is the signal on which it shuts down cleanly.
    pub fn spawn(name: &str, mut command: Command, log: PathBuf, stop: Signal) -> ServerProcess {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .expect("open the server log");
        let child = command
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("log file"))
            .stderr(file)
            .spawn()
            .unwrap_or_else(|e| panic!("start {name}: {e}"));
        ServerProcess {
            child,
            name: name.to_owned(),
            log,
            stop,
        }
    }

    /// The process ID.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// What the server wrote so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Fails the test, with the log, when the server has exited: one that could not start
    /// should not be waited for until [`GUARD`].
    pub fn assert_running(&mut self) {
        if let Some(status) = self.child.try_wait().expect("child status") {
            panic!("{} exited ({status}); log:\n{}", self.name, self.log());
        }
    }

    /// Sends `signal` to the server's PID.
    pub fn signal(&self, signal: Signal) {
        let pid = Pid::from_raw(self.child.id() as i32).expect("child PID");
        // It may have exited already, and then there is nothing to signal.
        let _ = kill_process(pid, signal);
    }

    /// Sends the stop signal and waits (without blocking the runtime) until the process exits;
    /// SIGKILL after [`GUARD`], which also fails the test.
    pub async fn stop(&mut self) -> ExitStatus {
        self.signal(self.stop);
        let deadline = Instant::now() + GUARD;
        // A child's exit has no event to await here; poll its status.
        for _ in 0..polls(GUARD) {
            if let Some(status) = self.child.try_wait().expect("child status") {
                return status;
            }
            if Instant::now() >= deadline {
                break;
            }
            tokio::time::sleep(POLL).await;
        }
        self.kill();
        panic!("{} did not stop within {GUARD:?}", self.name);
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// How many polls fit in `limit`.
fn polls(limit: Duration) -> u128 {
    limit.as_millis() / POLL.as_millis()
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_some() {
            return;
        }
        self.signal(self.stop);
        let deadline = Instant::now() + DROP_GRACE;
        for _ in 0..polls(DROP_GRACE) {
            if self.child.try_wait().ok().flatten().is_some() {
                return;
            }
            if Instant::now() >= deadline {
                break;
            }
            std::thread::sleep(POLL);
        }
        self.kill();
    }
}
