//! A vipd (or wrapper) child process: its output lines collected in the background, signals by
//! PID, waiting for its exit; killed and reaped when dropped.

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use rustix::process::{Pid, Signal, kill_process};

use super::GUARD;

/// The binary under test.
pub const VIPD: &str = env!("CARGO_BIN_EXE_vipd");

/// A finished command's status and output, for an assertion message.
pub fn describe(output: &Output) -> String {
    format!(
        "status {}\n--- stdout\n{}\n--- stderr\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// A running child process.
pub struct VipdProcess {
    /// The process.
    pub child: Child,
    lines: mpsc::Receiver<String>,
    /// Output lines read so far by [`VipdProcess::wait_for`].
    pub seen: Vec<String>,
}

impl VipdProcess {
    /// Runs `vipd ARGS` with `RUST_LOG=info`.
    pub fn spawn(args: &[&str]) -> VipdProcess {
        Self::spawn_program(VIPD, args)
    }

    /// Runs `program ARGS` (a wrapper that execs vipd, such as `sh` or `ip netns exec`).
    pub fn spawn_program(program: &str, args: &[&str]) -> VipdProcess {
        let mut command = Command::new(program);
        command.args(args).env("RUST_LOG", "info");
        Self::start(command)
    }

    /// Starts `command` with stdout and stderr collected line by line.
    pub fn start(mut command: Command) -> VipdProcess {
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start vipd");
        let (tx, lines) = mpsc::channel();
        forward_lines(child.stderr.take().unwrap(), tx.clone());
        forward_lines(child.stdout.take().unwrap(), tx);
        VipdProcess {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// Blocks until an output line contains `text`.
    pub fn wait_for(&mut self, text: &str) {
        let deadline = std::time::Instant::now() + GUARD;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    let found = line.contains(text);
                    self.seen.push(line);
                    if found {
                        return;
                    }
                }
                Err(_) => panic!("no line with {text:?}; saw:\n{}", self.output()),
            }
        }
    }

    /// Every output line so far, for failure messages.
    pub fn output(&mut self) -> String {
        self.seen.extend(self.lines.try_iter());
        self.seen.join("\n")
    }

    /// Sends `signal` to the process.
    pub fn signal(&self, signal: Signal) {
        let pid = Pid::from_raw(self.child.id() as i32).unwrap();
        kill_process(pid, signal).expect("signal vipd");
    }

    /// Blocks until the process exits (failing the test after [`GUARD`]).
    pub fn wait(&mut self) -> ExitStatus {
        let deadline = std::time::Instant::now() + GUARD;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(std::time::Instant::now() < deadline, "vipd did not exit");
            // A child's exit has no event to await here; poll its status.
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits for the exit without blocking the test's runtime.
    pub async fn exit(mut self) -> ExitStatus {
        tokio::task::spawn_blocking(move || self.wait())
            .await
            .expect("wait for vipd")
    }
}

fn forward_lines(stream: impl Read + Send + 'static, lines: mpsc::Sender<String>) {
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines().map_while(Result::ok) {
            let _ = lines.send(line);
        }
    });
}

impl Drop for VipdProcess {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
