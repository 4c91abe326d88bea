//! Real PostgreSQL servers for the tests: a primary and streaming standbys on 127.0.0.1, each
//! in a temporary directory of its own, promoted and stopped by the tests; queries through
//! `psql`, to a server or to a proxy in front of one.
//!
//! PostgreSQL refuses to run as root. When the tests run as root (as CI does), the server-side
//! programs (`initdb`, `postgres`, `pg_basebackup`, `pg_ctl`) run as Debian's `postgres` user:
//! the child sets that user's uid and gid (dropping supplementary groups) before exec, as
//! `setpriv` would, so the PID a test holds is the server's own and not a wrapper's. Each
//! temporary directory is chowned to that user, under a parent every user can traverse. Run
//! as another user, the tests run the servers as themselves.
//!
//! Needs Debian's `postgresql` package (`.ci/run` installs it); the programs come from the
//! newest `/usr/lib/postgresql/<version>/bin`, so the client matches the server.

use std::net::{Ipv4Addr, SocketAddr};
use std::os::unix::fs::{MetadataExt, chown};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;

use rustix::process::Signal;

use super::server::ServerProcess;
use super::{GUARD, free_port, poll_until};

/// Settings of every server, written to the primary's `postgresql.conf` (a base backup copies
/// them to its standbys). Per-server settings (port, socket directory, name) go on the
/// `postgres` command line instead, which a base backup does not copy.
const SETTINGS: &str = "
listen_addresses = '127.0.0.1'
wal_level = replica
max_wal_senders = 4
max_replication_slots = 4
wal_keep_size = '64MB'
hot_standby = on
# Throwaway clusters: durability costs time and buys nothing.
fsync = off
max_connections = 20
shared_buffers = '16MB'
log_line_prefix = '%m [%p] '
";

/// Trust for the test's own connections: over loopback (clients, a proxy's connections and
/// replication), and on the socket in the temporary directory, for a look by hand at a server
/// of a failing test.
const HBA: &str = "
local all         all              trust
local replication all              trust
host  all         all 127.0.0.1/32 trust
host  replication all 127.0.0.1/32 trust
";

/// The program directory of the newest installed PostgreSQL, e.g. `/usr/lib/postgresql/15/bin`.
pub fn bin_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let versions = std::fs::read_dir("/usr/lib/postgresql")
            .into_iter()
            .flatten()
            .filter_map(|entry| {
                let entry = entry.ok()?;
                let version: u32 = entry.file_name().to_str()?.parse().ok()?;
                let bin = entry.path().join("bin");
                bin.join("initdb").is_file().then_some((version, bin))
            });
        versions
            .max_by_key(|(version, _)| *version)
            .map(|(_, bin)| bin)
            .expect("no /usr/lib/postgresql/<version>/bin/initdb: apt-get install postgresql")
    })
}

/// The uid and gid that server-side programs run as: the `postgres` user's when the tests run
/// as root, `None` (the test's own) otherwise.
fn server_user() -> Option<(u32, u32)> {
    static USER: OnceLock<Option<(u32, u32)>> = OnceLock::new();
    *USER.get_or_init(|| {
        if !rustix::process::geteuid().is_root() {
            return None;
        }
        let user = nix::unistd::User::from_name("postgres")
            .expect("look up the postgres user")
            .expect("no postgres user (the postgresql package creates it)");
        Some((user.uid.as_raw(), user.gid.as_raw()))
    })
}

/// A directory under which the `postgres` user can reach its own: `$TMPDIR` when every
/// ancestor lets others through, else `/tmp`.
fn traversable_base() -> PathBuf {
    let base = std::env::temp_dir();
    let others_pass = base
        .ancestors()
        .all(|dir| std::fs::metadata(dir).is_ok_and(|meta| meta.mode() & 0o001 != 0));
    if others_pass {
        base
    } else {
        PathBuf::from("/tmp")
    }
}

/// A temporary directory that the server-side programs own.
fn server_dir() -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix("vipd-pg-")
        .tempdir_in(traversable_base())
        .expect("temporary directory");
    if let Some((uid, gid)) = server_user() {
        chown(dir.path(), Some(uid), Some(gid)).expect("chown the server directory");
    }
    dir
}

/// `program` of [`bin_dir`], run in `dir` as the server user.
fn server_program(program: &str, dir: &Path) -> Command {
    let mut command = Command::new(bin_dir().join(program));
    // The test's working directory and $HOME may be closed to the server user.
    command.current_dir(dir).env("HOME", dir);
    if let Some((uid, gid)) = server_user() {
        command.uid(uid).gid(gid);
    }
    command
}

/// Runs a program to its end without blocking the runtime (killed if it outlives [`GUARD`]).
async fn output(command: Command) -> Output {
    let what = format!("{command:?}");
    let mut command = tokio::process::Command::from(command);
    command.stdin(Stdio::null()).kill_on_drop(true);
    tokio::time::timeout(GUARD, command.output())
        .await
        .unwrap_or_else(|_| panic!("{what} did not finish within {GUARD:?}"))
        .unwrap_or_else(|e| panic!("run {what}: {e}"))
}

/// Runs a program that must succeed.
async fn run(command: Command) {
    let what = format!("{command:?}");
    let out = output(command).await;
    assert!(
        out.status.success(),
        "{what}: {}",
        super::process::describe(&out)
    );
}

/// Runs `sql` with `psql` on a new connection to `addr` (a server, or a proxy in front of one)
/// as user `postgres`, database `postgres`. Returns the rows unaligned, without headers (`t`
/// for true, columns split by `|`, rows by newlines), trimmed; `Err` has psql's message.
pub async fn psql(addr: SocketAddr, sql: &str) -> Result<String, String> {
    let mut command = Command::new(bin_dir().join("psql"));
    command
        .args(["-h", &addr.ip().to_string(), "-p", &addr.port().to_string()])
        .args(["-U", "postgres", "-d", "postgres"])
        // No ~/.psqlrc, quiet, tuples only, unaligned; stop at the first error.
        .args(["-X", "-q", "-t", "-A", "-v", "ON_ERROR_STOP=1", "-c", sql])
        .env("PGCONNECT_TIMEOUT", "5");
    let out = output(command).await;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    } else {
        Err(format!(
            "{} ({})",
            String::from_utf8_lossy(&out.stderr).trim(),
            out.status
        ))
    }
}

/// A `postgres` server on 127.0.0.1: a primary, or a streaming standby of one. Stopped by PID
/// (fast shutdown) when dropped.
pub struct PgServer {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its name (`cluster_name`), which is also its `application_name` in the primary's
    /// `pg_stat_replication` when it is a standby.
    pub name: String,
    data: PathBuf,
    process: ServerProcess,
    /// Data, socket and log; removed after the server stopped.
    dir: tempfile::TempDir,
}

impl PgServer {
    /// Creates a cluster (`initdb`) set up for streaming replication, starts it and waits
    /// until it accepts queries.
    pub async fn start_primary() -> PgServer {
        let dir = server_dir();
        let data = dir.path().join("data");
        let mut initdb = server_program("initdb", dir.path());
        initdb
            .arg("-D")
            .arg(&data)
            .args(["-U", "postgres", "-A", "trust", "-E", "UTF8", "--locale=C"])
            .args(["--no-sync", "--no-instructions"]);
        run(initdb).await;
        // Appending and truncating keep the files' owner (the server user).
        let conf = data.join("postgresql.conf");
        let mut settings = std::fs::read_to_string(&conf).expect("postgresql.conf");
        settings.push_str(SETTINGS);
        std::fs::write(&conf, settings).expect("write postgresql.conf");
        std::fs::write(data.join("pg_hba.conf"), HBA).expect("write pg_hba.conf");
        Self::spawn(dir, data).await
    }

    /// Clones `primary` with `pg_basebackup -R` (which writes `primary_conninfo` and
    /// `standby.signal`), starts the clone and waits until it accepts queries and streams
    /// from `primary`.
    pub async fn start_standby(primary: &PgServer) -> PgServer {
        let dir = server_dir();
        let data = dir.path().join("data");
        let mut backup = server_program("pg_basebackup", dir.path());
        backup
            .arg("-D")
            .arg(&data)
            .args(["-h", &primary.addr.ip().to_string()])
            .args(["-p", &primary.addr.port().to_string()])
            .args(["-U", "postgres", "-R", "-X", "stream"])
            // An immediate checkpoint on the primary, no fsync of the copy.
            .args(["-c", "fast", "--no-sync"]);
        run(backup).await;
        let standby = Self::spawn(dir, data).await;
        primary.wait_streaming(&standby).await;
        standby
    }

    /// Starts `postgres` on the cluster in `data` with a port of its own and its socket in
    /// `dir`, and waits until `pg_isready` says it accepts connections.
    async fn spawn(dir: tempfile::TempDir, data: PathBuf) -> PgServer {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()));
        let name = format!("vipd-pg-{}", addr.port());
        let mut postgres = server_program("postgres", dir.path());
        postgres
            .arg("-D")
            .arg(&data)
            .args(["-p", &addr.port().to_string()])
            .arg("-k")
            .arg(dir.path())
            .args(["-c", &format!("cluster_name={name}")]);
        let mut process = ServerProcess::spawn(
            &format!("postgres {name}"),
            postgres,
            dir.path().join("postgres.log"),
            // Fast shutdown: roll back open transactions, disconnect, stop.
            Signal::INT,
        );
        let ready = || {
            process.assert_running();
            let mut isready = Command::new(bin_dir().join("pg_isready"));
            isready.args(["-h", "127.0.0.1", "-p", &addr.port().to_string(), "-t", "2"]);
            async move {
                let out = output(isready).await;
                if out.status.success() {
                    Ok(())
                } else {
                    Err(String::from_utf8_lossy(&out.stdout).trim().to_owned())
                }
            }
        };
        poll_until(&format!("postgres {name} to accept connections"), ready).await;
        PgServer {
            addr,
            name,
            data,
            process,
            dir,
        }
    }

    /// Runs `sql` on a new connection (see [`psql`]); fails the test, with the server's log,
    /// on an error.
    pub async fn query(&self, sql: &str) -> String {
        psql(self.addr, sql)
            .await
            .unwrap_or_else(|e| panic!("{sql:?} on {}: {e}\n--- log\n{}", self.name, self.log()))
    }

    /// Whether the server is a standby (`pg_is_in_recovery()`).
    pub async fn in_recovery(&self) -> bool {
        match self.query("select pg_is_in_recovery()").await.as_str() {
            "t" => true,
            "f" => false,
            other => panic!("pg_is_in_recovery() on {}: {other:?}", self.name),
        }
    }

    /// Waits until `standby` is in recovery and streams from this primary: its WAL receiver
    /// says `streaming`, and so does its row in this server's `pg_stat_replication`.
    pub async fn wait_streaming(&self, standby: &PgServer) {
        let on_primary = format!(
            "select state from pg_stat_replication where application_name = '{}'",
            standby.name
        );
        let on_primary = on_primary.as_str();
        poll_until(
            &format!("{} to stream from {}", standby.name, self.name),
            || async move {
                let receiver = standby
                    .query("select pg_is_in_recovery(), status from pg_stat_wal_receiver")
                    .await;
                let sender = self.query(on_primary).await;
                if receiver == "t|streaming" && sender == "streaming" {
                    Ok(())
                } else {
                    Err(format!("standby: {receiver:?}, primary: {sender:?}"))
                }
            },
        )
        .await;
    }

    /// Waits until this standby replayed everything `primary` has written so far, so that a
    /// query here sees it. Replication is asynchronous and sends no event: poll the replay
    /// position.
    pub async fn wait_replayed(&self, primary: &PgServer) {
        let lsn = primary.query("select pg_current_wal_lsn()").await;
        let caught_up = format!("select pg_last_wal_replay_lsn() >= '{lsn}'::pg_lsn");
        let caught_up = caught_up.as_str();
        poll_until(
            &format!("{} to replay {} up to {lsn}", self.name, primary.name),
            || async move {
                match self.query(caught_up).await.as_str() {
                    "t" => Ok(()),
                    other => Err(other.to_owned()),
                }
            },
        )
        .await;
    }

    /// Promotes this standby (`pg_ctl promote`, which waits for the end of recovery) and
    /// checks that it is out of recovery.
    pub async fn promote(&self) {
        let mut promote = server_program("pg_ctl", self.dir.path());
        promote
            .args(["promote", "-w", "-t", &GUARD.as_secs().to_string(), "-D"])
            .arg(&self.data);
        run(promote).await;
        assert!(
            !self.in_recovery().await,
            "{} still in recovery after promotion",
            self.name
        );
    }

    /// The postmaster's process ID.
    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// Stops the server (fast shutdown, SIGINT by PID) and waits until the postmaster, which
    /// outlives every process it started, has exited.
    pub async fn stop(mut self) {
        self.process.stop().await;
    }

    /// What the server logged so far.
    pub fn log(&self) -> String {
        self.process.log()
    }
}
