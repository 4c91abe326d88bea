//! The harness for tests against real Redis and PostgreSQL replication, proved on its own (no
//! vipd yet): pairs of servers replicate, switch roles and stop, and no process outlives them.
//!
//! These need Debian's `redis-server` and `postgresql` packages and are `#[ignore]`d in a plain
//! `cargo test`; `.ci/run` installs the packages and runs them with `--ignored`.

use std::path::Path;
use std::time::Instant;

use crate::support::postgres::{PgServer, psql};
use crate::support::redis::{RedisServer, Reply, RespClient};

/// Whether a process with this PID exists (a stopped server is reaped, so its entry is gone).
fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

fn ok() -> Reply {
    Reply::Simple("OK".to_owned())
}

#[tokio::test]
#[ignore = "needs redis-server / postgresql (installed by .ci/run)"]
async fn redis_pair_replicates_and_swaps_roles() {
    let started = Instant::now();
    let (a, b) = tokio::join!(RedisServer::start(), RedisServer::start());
    b.replicate_from(&a).await;
    assert_eq!(a.role().await, "master");
    assert_eq!(b.role().await, "slave");

    // Several commands on one connection, as a client through a proxy would send them.
    let mut client = RespClient::connect(a.addr).await.expect("connect");
    assert_eq!(client.command(&["SET", "k", "one"]).await.unwrap(), ok());
    assert_eq!(
        client.command(&["INCR", "n"]).await.unwrap(),
        Reply::Integer(1)
    );
    assert_eq!(
        client.command(&["GET", "absent"]).await.unwrap(),
        Reply::Bulk(None)
    );
    // WAIT counts the writes of its own connection: ask it on the one that wrote.
    let acked = client.command(&["WAIT", "1", "20000"]).await.unwrap();
    assert_eq!(acked, Reply::Integer(1));
    assert_eq!(b.command(&["GET", "k"]).await.text(), "one");
    let refused = b.command(&["SET", "k", "two"]).await;
    assert!(
        matches!(&refused, Reply::Error(e) if e.starts_with("READONLY")),
        "a replica refuses writes: {refused:?}"
    );

    // Swap: promote the replica, demote the old primary under it.
    b.promote().await;
    a.replicate_from(&b).await;
    let role = b.command(&["ROLE"]).await;
    let [kind, _offset, replicas] = role.items() else {
        panic!("ROLE of a primary: {role:?}");
    };
    assert_eq!(kind.text(), "master");
    let replica = replicas.items()[0].items();
    assert_eq!(replica[1].text(), a.addr.port().to_string(), "{role:?}");
    let role = a.command(&["ROLE"]).await;
    let [kind, _host, port, state, _offset] = role.items() else {
        panic!("ROLE of a replica: {role:?}");
    };
    assert_eq!(kind.text(), "slave");
    assert_eq!(port.integer(), i64::from(b.addr.port()));
    assert_eq!(state.text(), "connected");

    let mut on_b = RespClient::connect(b.addr).await.expect("connect");
    assert_eq!(on_b.command(&["SET", "k", "two"]).await.unwrap(), ok());
    let acked = on_b.command(&["WAIT", "1", "20000"]).await.unwrap();
    assert_eq!(acked, Reply::Integer(1));
    assert_eq!(a.command(&["GET", "k"]).await.text(), "two");
    assert_eq!(a.command(&["GET", "n"]).await.text(), "1");

    let pids = [a.pid(), b.pid()];
    drop(client);
    a.stop().await;
    b.stop().await;
    assert!(!pids.into_iter().any(alive), "redis-server still running");
    eprintln!("redis pair: {:?}", started.elapsed());
}

#[tokio::test]
#[ignore = "needs redis-server / postgresql (installed by .ci/run)"]
async fn postgres_pair_streams_and_fails_over() {
    let started = Instant::now();
    let primary = PgServer::start_primary().await;
    let standby = PgServer::start_standby(&primary).await;
    eprintln!("postgres primary and standby up: {:?}", started.elapsed());
    assert!(!primary.in_recovery().await);
    assert!(standby.in_recovery().await);

    primary
        .query("create table notes (id int primary key, body text)")
        .await;
    primary
        .query("insert into notes values (1, 'from the primary')")
        .await;
    standby.wait_replayed(&primary).await;
    assert_eq!(
        standby.query("select body from notes where id = 1").await,
        "from the primary"
    );
    let refused = psql(standby.addr, "insert into notes values (2, 'refused')")
        .await
        .expect_err("a standby refuses writes");
    assert!(refused.contains("read-only transaction"), "{refused}");

    standby.promote().await;
    standby
        .query("insert into notes values (2, 'from the promoted standby')")
        .await;
    let old_primary = primary.pid();
    primary.stop().await;
    assert!(!alive(old_primary), "the old primary still runs");
    assert_eq!(
        standby.query("select body from notes order by id").await,
        "from the primary\nfrom the promoted standby"
    );

    let pid = standby.pid();
    standby.stop().await;
    assert!(!alive(pid), "the promoted standby still runs");
    eprintln!("postgres pair: {:?}", started.elapsed());
}
