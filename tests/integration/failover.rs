//! Services that follow a database's writer, proven against real Redis and PostgreSQL
//! failovers: role-aware probes (Redis `INFO replication` send/expect, a PostgreSQL exec check)
//! move new connections to the new primary within `period × failure_threshold` plus one
//! period, `on_marked_down = "close"` ends the connections to the demoted one, and
//! `fail_closed` keeps writes away from a standby meanwhile.
//!
//! `#[ignore]`d: they need Debian's `redis-server` and `postgresql`, which `.ci/run` installs.
//! Each test prints the failover time it measured (`--nocapture` shows it).

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use vipd::service::{Change, ServiceEvent};

use crate::support::postgres::{PgServer, psql};
use crate::support::redis::{RedisServer, Reply, RespClient};
use crate::support::{Running, free_port, within};

/// Probe period of the Redis services (no jitter, so the bound is exact).
const PERIOD: Duration = Duration::from_millis(200);
/// Probe timeout of the Redis services.
const TIMEOUT: Duration = Duration::from_millis(150);
/// Probe period of the PostgreSQL service: each probe starts `psql`.
const PG_PERIOD: Duration = Duration::from_millis(300);
/// Probe timeout of the PostgreSQL service.
const PG_TIMEOUT: Duration = Duration::from_millis(250);
/// Failures in a row that mark an endpoint down.
const FAILURES: u32 = 2;
/// Pause between two writes of a writer loop (a load loop, not synchronisation).
const WRITE_PACE: Duration = Duration::from_millis(5);
/// Upper bound on a writer loop's writes.
const MAX_WRITES: usize = 20_000;
/// Successful writes a writer loop makes after the failover before it stops.
const WRITES_AFTER: usize = 30;

/// The longest a role change may take to reach new connections: `period × failure_threshold`
/// plus one period, plus the last probe's own timeout.
fn window_bound(period: Duration, timeout: Duration) -> Duration {
    period * (FAILURES + 1) + timeout
}

/// Starts vipd with the single service of `toml` (a `[[service]]` table).
async fn start(toml: &str) -> Running {
    let config = vipd::config::from_str(toml, Path::new("failover.toml")).expect("valid config");
    let vipd = Running::start_config(config).await;
    vipd.ready().await;
    vipd
}

/// Waits until `events` has seen `endpoint` change as `change`; the time it happened.
async fn seen(
    events: &mut tokio::sync::broadcast::Receiver<ServiceEvent>,
    endpoint: SocketAddr,
    change: Change,
) -> Instant {
    crate::support::next_change(events, endpoint, change).await;
    Instant::now()
}

/// One write of a writer loop: when it was sent and how it ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Written,
    /// Refused because the server is a replica / standby.
    ReadOnly,
    /// The connection could not be made or was closed.
    Closed,
}

/// Writes `SET key n` through `vip` every [`WRITE_PACE`], on one connection that is only
/// replaced when it ends (as a client pool does), and logs each write; stops after
/// [`WRITES_AFTER`] successful writes once `failed_over` is cancelled.
async fn redis_writer(vip: SocketAddr, failed_over: CancellationToken) -> Vec<(Instant, Outcome)> {
    let mut log = Vec::new();
    let mut connection: Option<RespClient> = None;
    let mut written_after = 0;
    for n in 0..MAX_WRITES {
        if written_after == WRITES_AFTER {
            break;
        }
        let sent = Instant::now();
        let client = match &mut connection {
            Some(client) => client,
            None => match RespClient::connect(vip).await {
                Ok(client) => connection.insert(client),
                Err(_) => {
                    log.push((sent, Outcome::Closed));
                    tokio::time::sleep(WRITE_PACE).await;
                    continue;
                }
            },
        };
        let value = n.to_string();
        let outcome = match client.command(&["SET", "writer", &value]).await {
            Ok(Reply::Simple(ok)) if ok == "OK" => Outcome::Written,
            Ok(Reply::Error(e)) if e.starts_with("READONLY") => Outcome::ReadOnly,
            Ok(other) => panic!("SET through vipd: {other:?}"),
            Err(_) => {
                connection = None;
                Outcome::Closed
            }
        };
        if outcome == Outcome::Written && failed_over.is_cancelled() {
            written_after += 1;
        }
        log.push((sent, outcome));
        tokio::time::sleep(WRITE_PACE).await;
    }
    log
}

/// The role of the server a new connection through `vip` reaches.
async fn role_through(vip: SocketAddr) -> Option<String> {
    let reply = crate::support::redis::command(vip, &["ROLE"]).await.ok()?;
    Some(reply.items().first()?.text().to_owned())
}

#[tokio::test]
#[ignore = "needs redis-server (installed by .ci/run)"]
async fn redis_writes_follow_the_primary_through_a_role_swap() {
    let (a, b) = tokio::join!(RedisServer::start(), RedisServer::start());
    b.replicate_from(&a).await;
    let (port, replicas_port) = (free_port(), free_port());
    let vipd = start(&format!(
        r#"
[[service]]
name = "cache-primary"
vip = "127.0.0.1"
ports = [{{ port = {port} }}]
endpoints = ["{}", "{}"]
on_marked_down = "close"
when_all_unhealthy = "fail_closed"

[service.health]
check = "tcp"
send = "INFO replication\r\n"
expect = "role:master"
period = "{}ms"
timeout = "{}ms"
failure_threshold = {FAILURES}
jitter = 0.0

# Reads: the replicas, and the primary as a backup that is not probed (it would fail
# role:slave), for when no replica is left.
[[service]]
name = "cache-replicas"
vip = "127.0.0.1"
ports = [{{ port = {replicas_port} }}]
endpoints = ["{}", {{ address = "{}", backup = true, check = false }}]

[service.health]
check = "tcp"
send = "INFO replication\r\n"
expect = "role:slave"
period = "{}ms"
timeout = "{}ms"
failure_threshold = {FAILURES}
jitter = 0.0
"#,
        a.addr,
        b.addr,
        PERIOD.as_millis(),
        TIMEOUT.as_millis(),
        b.addr,
        a.addr,
        PERIOD.as_millis(),
        TIMEOUT.as_millis()
    ))
    .await;
    let vip = vipd.addr("cache-primary");
    let replicas_vip = vipd.addr("cache-replicas");
    let service = vipd.service("cache-primary");
    assert!(
        !service.endpoint(b.addr).unwrap().is_healthy(),
        "the replica is out"
    );

    // Every connection reaches the primary; reads reach the replica.
    for _ in 0..20 {
        assert_eq!(role_through(vip).await.as_deref(), Some("master"));
        assert_eq!(role_through(replicas_vip).await.as_deref(), Some("slave"));
    }
    let failed_over = CancellationToken::new();
    let writer = tokio::spawn(redis_writer(vip, failed_over.clone()));

    // Swap the roles.
    let (mut a_events, mut b_events) = (service.subscribe(), service.subscribe());
    let mut read_events = vipd.service("cache-replicas").subscribe();
    b.promote().await;
    let swapped = Instant::now();
    a.replicate_from(&b).await;
    let (down, up) = tokio::join!(
        seen(&mut a_events, a.addr, Change::Down),
        seen(&mut b_events, b.addr, Change::Up)
    );
    let window_end = down.max(up);
    failed_over.cancel();
    let window = window_end - swapped;
    println!(
        "redis: new connections reach the new primary {} ms after the swap (bound {} ms)",
        window.as_millis(),
        window_bound(PERIOD, TIMEOUT).as_millis()
    );
    assert!(window <= window_bound(PERIOD, TIMEOUT), "{window:?}");
    for _ in 0..20 {
        assert_eq!(role_through(vip).await.as_deref(), Some("master"));
    }
    // The read service lost its replica (now the primary) and reads from its backup, the old
    // primary, which is a replica now.
    seen(&mut read_events, b.addr, Change::Down).await;
    for _ in 0..20 {
        assert_eq!(role_through(replicas_vip).await.as_deref(), Some("slave"));
    }
    let log = within("the writer", writer).await.unwrap();

    // READONLY only for writes sent inside the window, never after it; the writer's
    // connection to the demoted primary was closed, and it wrote on the new one afterwards.
    let late: Vec<_> = log
        .iter()
        .filter(|(sent, outcome)| *outcome == Outcome::ReadOnly && *sent > window_end)
        .collect();
    assert!(late.is_empty(), "READONLY after the window: {late:?}");
    assert!(
        log.iter()
            .any(|(sent, o)| *o == Outcome::Closed && *sent >= swapped),
        "the connection to the old primary was not closed"
    );
    let after: Vec<Outcome> = log
        .iter()
        .filter(|(sent, _)| *sent > window_end)
        .map(|(_, o)| *o)
        .collect();
    assert!(after.contains(&Outcome::Written), "{after:?}");
    let readonly = log.iter().filter(|(_, o)| *o == Outcome::ReadOnly).count();
    println!(
        "redis: {} writes, {readonly} READONLY (all inside the window)",
        log.len()
    );
}

/// The exec probe shipped in `deploy/scripts/`: healthy while the endpoint is a PostgreSQL
/// primary.
fn pg_is_primary_script() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/scripts/pg-is-primary")
}

/// A writer's log: when each insert was sent, its id, and the port of the server that took it
/// (or the error).
type PgLog = Vec<(Instant, i64, Result<u16, String>)>;

/// Inserts ids from 1 on, each on a new connection through `vip`, and logs each insert; stops
/// after [`WRITES_AFTER`] acknowledged inserts once `failed_over` is cancelled.
async fn pg_writer(vip: SocketAddr, failed_over: CancellationToken) -> PgLog {
    let mut log = Vec::new();
    let mut written_after = 0;
    for id in 1..=MAX_WRITES as i64 {
        if written_after == WRITES_AFTER {
            break;
        }
        let sent = Instant::now();
        let result = psql(
            vip,
            &format!("insert into writes values ({id}) returning inet_server_port()"),
        )
        .await
        .map(|port| port.parse::<u16>().expect("a port"));
        if result.is_ok() && failed_over.is_cancelled() {
            written_after += 1;
        }
        log.push((sent, id, result));
        tokio::time::sleep(WRITE_PACE).await;
    }
    log
}

#[tokio::test]
#[ignore = "needs postgresql (installed by .ci/run)"]
async fn postgres_writes_follow_a_promoted_standby() {
    let primary = PgServer::start_primary().await;
    let standby = PgServer::start_standby(&primary).await;
    primary
        .query("create table writes (id bigint primary key)")
        .await;
    let script = pg_is_primary_script();
    let port = free_port();
    let vipd = start(&format!(
        r#"
[[service]]
name = "pg-primary"
vip = "127.0.0.1"
ports = [{{ port = {port} }}]
endpoints = ["{}", "{}"]
on_marked_down = "close"
when_all_unhealthy = "fail_closed"

[service.health]
check = "exec"
command = ["{}"]
period = "{}ms"
timeout = "{}ms"
failure_threshold = {FAILURES}
jitter = 0.0
"#,
        primary.addr,
        standby.addr,
        script.display(),
        PG_PERIOD.as_millis(),
        PG_TIMEOUT.as_millis()
    ))
    .await;
    let vip = vipd.addr("pg-primary");
    let service = vipd.service("pg-primary");
    assert!(!service.endpoint(standby.addr).unwrap().is_healthy());

    let failed_over = CancellationToken::new();
    let writer = tokio::spawn(pg_writer(vip, failed_over.clone()));
    within("a first write", async {
        while primary.query("select count(*) from writes").await == "0" {
            tokio::time::sleep(WRITE_PACE).await;
        }
    })
    .await;

    // Fail over: the old primary stops (its WAL is sent to the standby on the way out), then
    // the standby is promoted.
    let mut events = service.subscribe();
    let (old_primary, old_pid) = (primary.addr, primary.pid());
    let stopping = Instant::now();
    primary.stop().await;
    let promoting = Instant::now();
    standby.promote().await;
    let promoted = Instant::now();
    let up = seen(&mut events, standby.addr, Change::Up).await;
    // The role changes while `pg_ctl promote -w` runs; the window counts from its end (0 when
    // vipd saw the new primary before `promote` returned).
    let window = up.saturating_duration_since(promoted);
    println!(
        "postgres: writes reach the promoted standby {} ms after the promotion completed ({} ms \
         after it was asked for, {} ms after the old primary began to stop; bound {} ms)",
        window.as_millis(),
        (up - promoting).as_millis(),
        (up - stopping).as_millis(),
        window_bound(PG_PERIOD, PG_TIMEOUT).as_millis()
    );
    assert!(window <= window_bound(PG_PERIOD, PG_TIMEOUT), "{window:?}");
    failed_over.cancel();
    let log = within("the writer", writer).await.unwrap();
    assert!(!std::path::Path::new(&format!("/proc/{old_pid}")).exists());

    // Every acknowledged write is on the new primary; none went to the standby while it was
    // one (a write there would fail with "read-only transaction"); writes after the window
    // all landed on the new primary.
    let acknowledged: Vec<i64> = log
        .iter()
        .filter(|(_, _, r)| r.is_ok())
        .map(|(_, id, _)| *id)
        .collect();
    let stored: Vec<i64> = standby
        .query("select id from writes order by id")
        .await
        .lines()
        .map(|l| l.parse().unwrap())
        .collect();
    for id in &acknowledged {
        assert!(stored.contains(id), "acknowledged write {id} lost");
    }
    for (_, id, result) in &log {
        if let Err(e) = result {
            assert!(
                !e.contains("read-only"),
                "write {id} reached the standby: {e}"
            );
        }
    }
    for (sent, id, result) in &log {
        if *sent > up {
            assert_eq!(
                result.as_ref().ok(),
                Some(&standby.addr.port()),
                "write {id}"
            );
        } else if let Ok(port) = result {
            assert!(*port == old_primary.port() || *port == standby.addr.port());
        }
    }
    let failed = log.iter().filter(|(_, _, r)| r.is_err()).count();
    println!(
        "postgres: {} writes, {} acknowledged, {failed} refused during the failover, none lost",
        log.len(),
        acknowledged.len()
    );
}

/// Every TOML block of docs/stateful.md is a valid config, with the exec checks it names
/// (`/usr/local/bin/…`) taken from `deploy/scripts/`, where the project ships them.
#[test]
fn docs_configs_pass_vipd_check() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(root.join("docs/stateful.md")).unwrap();
    let scripts = format!("{}/", root.join("deploy/scripts").display());
    let mut blocks = 0;
    for block in text.split("```toml\n").skip(1) {
        let toml = block.split("```").next().unwrap();
        let toml = toml.replace("/usr/local/bin/", &scripts);
        if let Err(e) = vipd::config::from_str(&toml, Path::new("docs/stateful.md")) {
            panic!("a config of docs/stateful.md fails:\n{e}\n{toml}");
        }
        blocks += 1;
    }
    assert!(blocks >= 4, "{blocks} TOML blocks");
}
