//! The exec probe: run a command for the endpoint; healthy iff it exits 0 within the timeout.
//!
//! The shape of the other probes with a process for a connection: spawn → read its output
//! (only the first line is kept, for the message; the rest is drained so the command never
//! blocks on a full pipe) → until it exits or the deadline passes.
//!
//! The command runs in its own process group, and the whole group is killed when the probe
//! ends, so a command that hangs, or forks a child and leaves, leaves nothing behind. How many
//! commands run at once, process-wide, is bounded by [`MAX_EXEC_PROBES`].

use std::io;
use std::os::fd::OwnedFd;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use rustix::pipe::{PipeFlags, pipe_with};
use rustix::process::{Pid, Signal, kill_process_group};
use tokio::io::AsyncReadExt;
use tokio::net::unix::pipe::Receiver;
use tokio::process::{Child, Command};
use tokio::sync::Semaphore;

use super::{Deadline, ProbeError, ProbeTarget};
use crate::config::ExecCheck;

/// At most this many exec probe commands run at once in the process, whatever the number of
/// services and endpoints: each is a process (often a shell and a client), and a host with
/// hundreds of endpoints must not fork hundreds of them every period. A probe waits for a free
/// slot before it starts its command; that wait is not part of its timeout, and is bounded
/// because every running command ends within its own timeout.
pub const MAX_EXEC_PROBES: usize = 32;

/// The slots of [`MAX_EXEC_PROBES`].
static SLOTS: Semaphore = Semaphore::const_new(MAX_EXEC_PROBES);

/// The longest first line of output kept for the failure message, in bytes.
const FIRST_LINE_MAX: usize = 200;

/// How long to wait for a killed command to be reaped. SIGKILL cannot be caught, so only a
/// process stuck in the kernel takes longer; it is then left to tokio's background reaping
/// rather than stalling the endpoint's probes.
const REAP_GRACE: Duration = Duration::from_secs(1);

/// Runs `check` for `target`, waiting for a slot first.
pub(super) async fn probe(
    check: &ExecCheck,
    target: ProbeTarget<'_>,
    timeout: Duration,
) -> Result<(), ProbeError> {
    probe_with(&SLOTS, check, target, timeout).await
}

/// [`probe`] with the slots given (tests use a smaller bound).
async fn probe_with(
    slots: &Semaphore,
    check: &ExecCheck,
    target: ProbeTarget<'_>,
    timeout: Duration,
) -> Result<(), ProbeError> {
    let failed = |source| ProbeError::Exec {
        program: check.program.display().to_string(),
        source,
    };
    // Never closed: an error would only mean no slot is coming.
    let _slot = slots
        .acquire()
        .await
        .map_err(|_| failed(io::Error::other("no exec probe slots")))?;
    // The deadline starts once the command can start.
    let deadline = Deadline::after(timeout);
    let (mut child, output) = spawn(check, target).map_err(failed)?;
    // The group's id is the child's pid. While the child is not reaped (any time before
    // `wait` returns), that id cannot be reused, so the kill cannot hit a stranger.
    let group = child
        .id()
        .and_then(|id| i32::try_from(id).ok())
        .and_then(Pid::from_raw);

    let mut output = Output::new(output);
    // `None`: the deadline passed first.
    let exit = tokio::select! {
        status = child.wait() => Some(status),
        () = tokio::time::sleep_until(deadline.at) => None,
        // The end of the output usually comes with the exit, but a command can also close
        // its stdout and stderr and go on: wait on for the exit.
        () = output.drain() => tokio::time::timeout_at(deadline.at, child.wait()).await.ok(),
    };
    // Processes the command left in its group (a background child) go with it. After a
    // normal exit the leader is reaped, but a group id stays taken while any member lives;
    // an empty group just gives ESRCH.
    if let Some(group) = group {
        let _ = kill_process_group(group, Signal::KILL);
    }
    // What the command wrote just before it ended may not have been read yet.
    output.read_ready();
    let first_line = output.first_line();
    match exit {
        Some(Ok(status)) if status.success() => Ok(()),
        Some(Ok(status)) => Err(ProbeError::Exited {
            status,
            output: first_line,
        }),
        Some(Err(source)) => Err(failed(source)),
        None => {
            reap(&mut child).await;
            Err(ProbeError::ExecTimeout {
                timeout: deadline.timeout,
                output: first_line,
            })
        }
    }
}

/// Starts the command: stdin from /dev/null, stdout and stderr into one pipe whose read end
/// is returned, its own process group, the endpoint in the environment.
fn spawn(check: &ExecCheck, target: ProbeTarget<'_>) -> io::Result<(Child, Receiver)> {
    // Close-on-exec on both ends, so no other child inherits them; the child's own copies are
    // its stdout and stderr, which exec keeps.
    let (read, write) = pipe_with(PipeFlags::CLOEXEC)?;
    let read = Receiver::from_owned_fd(read)?;
    let stderr: OwnedFd = write.try_clone()?;
    let endpoint = target.endpoint;
    let child = Command::new(&check.program)
        .args(&check.args)
        .stdin(Stdio::null())
        .stdout(Stdio::from(write))
        .stderr(Stdio::from(stderr))
        .env("VIPD_SERVICE", target.service)
        .env("VIPD_ENDPOINT", endpoint.to_string())
        .env("VIPD_ENDPOINT_IP", endpoint.ip().to_string())
        .env("VIPD_ENDPOINT_PORT", endpoint.port().to_string())
        .process_group(0)
        // Whatever path the probe leaves by, the command does not outlive it.
        .kill_on_drop(true)
        .spawn()?;
    // The `Command` is gone: the write ends left are the child's, so the pipe ends with it.
    Ok((child, read))
}

/// Waits a little for a killed child to be reaped; see [`REAP_GRACE`].
async fn reap(child: &mut Child) {
    let _ = tokio::time::timeout(REAP_GRACE, child.wait()).await;
}

/// `exited with status N` or `killed by signal N`.
pub(super) fn describe(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exited with status {code}"),
        (None, Some(signal)) => format!("killed by signal {signal}"),
        (None, None) => status.to_string(),
    }
}

/// The command's output: read as it comes, its first line kept.
struct Output {
    pipe: Receiver,
    /// False once the pipe ended (every writer closed it) or failed.
    open: bool,
    first_line: FirstLine,
}

impl Output {
    fn new(pipe: Receiver) -> Self {
        Output {
            pipe,
            open: true,
            first_line: FirstLine::default(),
        }
    }

    /// Reads until the pipe ends.
    async fn drain(&mut self) {
        let mut buf = [0; 1024];
        while self.open {
            match self.pipe.read(&mut buf).await {
                Ok(0) | Err(_) => self.open = false,
                Ok(n) => self.first_line.feed(&buf[..n]),
            }
        }
    }

    /// Reads what is in the pipe now, without waiting, while the first line is incomplete.
    fn read_ready(&mut self) {
        let mut buf = [0; 1024];
        while self.open && !self.first_line.done {
            // Straight to the (non-blocking) descriptor: tokio's `try_read` would not even try
            // while it has not yet seen the pipe turn readable.
            match rustix::io::read(&self.pipe, &mut buf) {
                Ok(0) => self.open = false,
                Ok(n) => self.first_line.feed(&buf[..n]),
                Err(_) => break,
            }
        }
    }

    fn first_line(&self) -> String {
        self.first_line.text()
    }
}

/// The first line of some output, at most [`FIRST_LINE_MAX`] bytes.
#[derive(Debug, Default)]
struct FirstLine {
    bytes: Vec<u8>,
    /// A newline or the maximum was reached: later bytes are ignored.
    done: bool,
}

impl FirstLine {
    fn feed(&mut self, chunk: &[u8]) {
        if self.done {
            return;
        }
        let room = FIRST_LINE_MAX - self.bytes.len();
        let chunk = &chunk[..chunk.len().min(room)];
        let line = match chunk.iter().position(|&b| b == b'\n') {
            Some(end) => {
                self.done = true;
                &chunk[..end]
            }
            None => chunk,
        };
        self.bytes.extend_from_slice(line);
        self.done |= self.bytes.len() == FIRST_LINE_MAX;
    }

    /// The line as text: invalid UTF-8 replaced, a trailing `\r` or spaces dropped.
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.bytes).trim_end().to_owned()
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::OwnedFd;
    use std::path::{Path, PathBuf};

    use rustix::event::{PollFd, PollFlags, Timespec, poll};
    use rustix::fs::{CWD, Mode, mkfifoat};
    use rustix::process::{PidfdFlags, pidfd_open};
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    use tokio::net::unix::pipe;

    use super::*;

    /// Generous: these commands finish in milliseconds unless a test means them to hang.
    const LONG: Duration = Duration::from_secs(10);

    /// An endpoint on IPv6 whose probe port differs from its own port.
    fn target() -> ProbeTarget<'static> {
        ProbeTarget {
            service: "db",
            endpoint: "[2001:db8::5]:5432".parse().unwrap(),
            target: "[2001:db8::5]:8008".parse().unwrap(),
            proxy_header: None,
        }
    }

    /// Writes an executable `#!/bin/sh` script. A child process writes it so this process never
    /// holds a writable descriptor of it: another test forking meanwhile would inherit that
    /// descriptor until its exec, and running the script would then fail with ETXTBSY.
    fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
        let path = dir.join(name);
        write_file(&path, &format!("#!/bin/sh\n{body}\n"));
        let status = std::process::Command::new("/bin/chmod")
            .arg("755")
            .arg(&path)
            .status()
            .expect("chmod");
        assert!(status.success());
        path
    }

    /// Writes `text` to `path` from a child process (see [`script`]).
    fn write_file(path: &Path, text: &str) {
        let status = std::process::Command::new("/bin/sh")
            .args(["-c", "printf '%s' \"$1\" > \"$2\"", "sh", text])
            .arg(path)
            .status()
            .expect("sh");
        assert!(status.success());
    }

    fn exec(program: &Path, args: &[&str]) -> ExecCheck {
        ExecCheck {
            program: program.to_owned(),
            args: args.iter().map(|a| (*a).to_owned()).collect(),
        }
    }

    async fn run(check: &ExecCheck, timeout: Duration) -> Result<(), ProbeError> {
        probe(check, target(), timeout).await
    }

    fn message(result: Result<(), ProbeError>) -> String {
        result.expect_err("the probe should fail").to_string()
    }

    #[tokio::test]
    async fn exit_status_decides_the_verdict() {
        let dir = tempfile::tempdir().unwrap();
        let exit = script(dir.path(), "exit", "exit \"$1\"");
        run(&exec(&exit, &["0"]), LONG).await.expect("healthy");
        let err = run(&exec(&exit, &["3"]), LONG)
            .await
            .expect_err("unhealthy");
        assert!(
            matches!(&err, ProbeError::Exited { status, .. } if status.code() == Some(3)),
            "{err:?}"
        );
        assert_eq!(err.to_string(), "exited with status 3 (no output)");

        let signalled = script(dir.path(), "signalled", "kill -TERM $$");
        assert_eq!(
            message(run(&exec(&signalled, &[]), LONG).await),
            "killed by signal 15 (no output)"
        );
    }

    #[tokio::test]
    async fn the_first_line_of_output_is_in_the_error() {
        let dir = tempfile::tempdir().unwrap();
        // (script body, the failure message)
        let cases = [
            (
                "echo 'not primary: following 10.0.0.7'\necho 'second line'\nexit 1",
                "exited with status 1: \"not primary: following 10.0.0.7\"".to_owned(),
            ),
            // stderr goes into the same pipe.
            (
                "echo 'connection refused' >&2\nexit 2",
                "exited with status 2: \"connection refused\"".to_owned(),
            ),
            // At most 200 bytes of a long line; invalid UTF-8 is replaced.
            (
                "printf '\\377'\nhead -c 300 /dev/zero | tr '\\000' x\nexit 1",
                format!("exited with status 1: \"\u{fffd}{}\"", "x".repeat(199)),
            ),
        ];
        for (i, (body, want)) in cases.into_iter().enumerate() {
            let path = script(dir.path(), &format!("output{i}"), body);
            assert_eq!(message(run(&exec(&path, &[]), LONG).await), want, "{body}");
        }
    }

    #[tokio::test]
    async fn the_command_sees_the_endpoint_its_arguments_and_no_stdin() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("env");
        let env = script(
            dir.path(),
            "env",
            "printf '%s\\n' \"$VIPD_SERVICE\" \"$VIPD_ENDPOINT\" \"$VIPD_ENDPOINT_IP\" \
             \"$VIPD_ENDPOINT_PORT\" \"$#\" \"$2\" \"$(cat | wc -c)\" > \"$1\"",
        );
        let out_arg = out.to_str().unwrap();
        run(&exec(&env, &[out_arg, "two words"]), LONG)
            .await
            .expect("healthy");
        let seen = std::fs::read_to_string(&out).unwrap();
        let lines: Vec<&str> = seen.lines().map(str::trim).collect();
        assert_eq!(
            lines,
            [
                "db",
                "[2001:db8::5]:5432",
                "2001:db8::5",
                // The endpoint's own port, not the probe port 8008.
                "5432",
                // Two arguments, the second one whole: no shell split them.
                "2",
                "two words",
                // stdin is /dev/null: empty at once.
                "0",
            ]
        );
    }

    #[tokio::test]
    async fn a_command_closing_its_output_is_still_waited_for() {
        let dir = tempfile::tempdir().unwrap();
        let closes = script(dir.path(), "closes", "exec >/dev/null 2>&1\nexit 4");
        assert_eq!(
            message(run(&exec(&closes, &[]), LONG).await),
            "exited with status 4 (no output)"
        );
    }

    #[tokio::test]
    async fn a_command_that_cannot_start_is_a_probe_failure() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing");
        let err = run(&exec(&missing, &[]), LONG).await.expect_err("missing");
        match &err {
            ProbeError::Exec { source, .. } => assert_eq!(source.kind(), io::ErrorKind::NotFound),
            other => panic!("expected Exec, got {other:?}"),
        }
        assert_eq!(
            err.to_string(),
            format!(
                "could not run {}: No such file or directory (os error 2)",
                missing.display()
            )
        );
        // No execute bit (even root may not exec it).
        let plain = dir.path().join("plain");
        write_file(&plain, "#!/bin/sh\nexit 0\n");
        let err = run(&exec(&plain, &[]), LONG)
            .await
            .expect_err("not executable");
        match &err {
            ProbeError::Exec { source, .. } => {
                assert_eq!(source.kind(), io::ErrorKind::PermissionDenied)
            }
            other => panic!("expected Exec, got {other:?}"),
        }
    }

    /// Opens a pidfd of each pid (they must be alive), to learn of their ends without racing
    /// pid reuse.
    fn pidfds(pids: &[i32]) -> Vec<OwnedFd> {
        pids.iter()
            .map(|&pid| {
                let pid = Pid::from_raw(pid).expect("a pid");
                pidfd_open(pid, PidfdFlags::empty()).expect("pidfd_open")
            })
            .collect()
    }

    /// Whether every process of `pidfds` has ended within `limit` (a pidfd turns readable when
    /// its process exits). Blocks the calling thread.
    fn all_ended(pidfds: &[OwnedFd], limit: Duration) -> bool {
        let timeout = Timespec {
            tv_sec: limit.as_secs() as _,
            tv_nsec: 0,
        };
        pidfds.iter().all(|fd| {
            let mut fds = [PollFd::new(fd, PollFlags::IN)];
            poll(&mut fds, Some(&timeout)).expect("poll") == 1
        })
    }

    // Paused time: the probe's deadline passes only once the test let it. While a blocking
    // task runs, tokio does not auto-advance the clock, so the command gets as long as it
    // needs to report its pids before the timeout can fire.
    #[tokio::test(start_paused = true)]
    async fn a_hanging_command_and_its_child_are_killed_at_the_timeout() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("pids");
        mkfifoat(CWD, &fifo, Mode::RWXU).expect("mkfifo");
        let hangs = script(
            dir.path(),
            "hangs",
            "sleep 600 &\necho started\necho \"$$ $!\" > \"$1\"\nexec sleep 600",
        );
        let check = exec(&hangs, &[fifo.to_str().unwrap()]);
        let timeout = Duration::from_secs(2);
        let started = tokio::time::Instant::now();
        let probe = tokio::spawn(async move { run(&check, timeout).await });

        let watched = tokio::task::spawn_blocking(move || {
            // Blocks until the script has written its pid and its child's, then closed.
            let pids = std::fs::read_to_string(&fifo).expect("read pids");
            let pids: Vec<i32> = pids
                .split_whitespace()
                .map(|p| p.parse().expect("pid"))
                .collect();
            assert_eq!(pids.len(), 2, "{pids:?}");
            pidfds(&pids)
        })
        .await
        .expect("pids");

        let err = probe.await.expect("probe task").expect_err("timed out");
        assert!(
            matches!(&err, ProbeError::ExecTimeout { timeout: t, .. } if *t == timeout),
            "{err:?}"
        );
        // Killed at the timeout; the reaping that follows may take its grace here, where
        // nothing but the clock is awaited once the kill is sent.
        let elapsed = started.elapsed();
        assert!(
            (timeout..=timeout + REAP_GRACE).contains(&elapsed),
            "{elapsed:?}"
        );
        assert_eq!(
            err.to_string(),
            "timed out after 2s; its process group was killed: \"started\""
        );
        // The script and the child it left in the background are both gone.
        let ended = tokio::task::spawn_blocking(move || all_ended(&watched, LONG))
            .await
            .expect("poll");
        assert!(ended, "a process of the probe outlived it");
    }

    #[tokio::test]
    async fn at_most_the_bound_of_commands_run_at_once() {
        const BOUND: usize = 2;
        const PROBES: usize = 4;
        let dir = tempfile::tempdir().unwrap();
        let (started_path, gate_path) = (dir.path().join("started"), dir.path().join("gate"));
        mkfifoat(CWD, &started_path, Mode::RWXU).expect("mkfifo");
        mkfifoat(CWD, &gate_path, Mode::RWXU).expect("mkfifo");
        // Held open for reading and writing by the test, so neither the scripts' opens nor
        // their reads see a FIFO without its other side.
        let started = pipe::OpenOptions::new()
            .read_write(true)
            .open_receiver(&started_path)
            .expect("started fifo");
        let mut gate = pipe::OpenOptions::new()
            .read_write(true)
            .open_sender(&gate_path)
            .expect("gate fifo");
        let log = dir.path().join("log");
        // Each command logs its start, says so, waits for one line at the gate, logs its end.
        let waits = script(
            dir.path(),
            "waits",
            "echo \"start $$\" >> \"$1\"\necho s > \"$2\"\nread line < \"$3\"\n\
             echo \"end $$\" >> \"$1\"",
        );
        let args = [&log, &started_path, &gate_path].map(|p| p.to_str().unwrap().to_owned());
        let check = exec(&waits, &args.each_ref().map(String::as_str));
        let slots = Semaphore::new(BOUND);

        let probes = futures_util::future::join_all(
            (0..PROBES).map(|_| probe_with(&slots, &check, target(), LONG)),
        );
        let control = async {
            let mut started = BufReader::new(started).lines();
            let mut next_start = async || started.next_line().await.expect("read").expect("line");
            // The bound's worth start; the others wait for a slot.
            for _ in 0..BOUND {
                next_start().await;
            }
            assert_eq!(slots.available_permits(), 0);
            // One ends, and only then does the next start.
            gate.write_all(b"go\n").await.expect("gate");
            next_start().await;
            // Let everyone through.
            gate.write_all("go\n".repeat(PROBES).as_bytes())
                .await
                .expect("gate");
            next_start().await;
        };
        let (results, ()) = tokio::join!(probes, control);
        for result in results {
            result.expect("healthy");
        }

        // The log orders starts and ends: at no point were more than BOUND running.
        let log = std::fs::read_to_string(&log).unwrap();
        let mut running = 0usize;
        let mut most = 0;
        for line in log.lines() {
            if line.starts_with("start") {
                running += 1;
            } else {
                running -= 1;
            }
            most = most.max(running);
        }
        assert_eq!(log.lines().count(), 2 * PROBES, "{log}");
        assert_eq!(most, BOUND, "{log}");
    }

    #[test]
    fn first_line_keeps_one_line_of_at_most_200_bytes() {
        let line = |pieces: &[&[u8]]| {
            let mut first = FirstLine::default();
            for piece in pieces {
                first.feed(piece);
            }
            first.text()
        };
        assert_eq!(line(&[b"one\ntwo\n"]), "one");
        assert_eq!(line(&[b"o", b"ne", b"\r\ntwo"]), "one");
        assert_eq!(line(&[b"no newline  "]), "no newline");
        assert_eq!(line(&[b"\nsecond"]), "");
        assert_eq!(line(&[&[b'x'; 150], &[b'y'; 150]]).len(), 200);
        assert_eq!(line(&[b"caf\xc3"]), "caf\u{fffd}");
    }

    #[test]
    fn exit_descriptions() {
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(
            describe(ExitStatus::from_raw(3 << 8)),
            "exited with status 3"
        );
        assert_eq!(describe(ExitStatus::from_raw(9)), "killed by signal 9");
    }
}
