//! Accounting under churn: 100,000 connections through a vipd child process, ending every way a
//! connection ends — the client's EOF after an echo; the client's reset (on a quiet connection,
//! with bytes in flight both ways, or right after the connect); vipd's idle timeout; and the
//! drain deadline of an endpoint a reload removed — leave nothing behind. Afterwards every
//! endpoint shows no active connection in `/status` and in `vipd_active_connections`, the
//! established counts add up to exactly the connections made, no connection failed, the removed
//! endpoints are gone (vipd saw their last connection end), and the process holds exactly the
//! descriptors it held before the load.
//!
//! vipd runs as a child process, so `/proc/PID/fd` is its descriptor table alone. Messages stay
//! well below the loop's 16 KiB buffers, so no direction turns bulk: splicing borrows pipes from
//! a pool that keeps drained ones for reuse, and the count would then differ from the start for
//! a good reason.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use rustix::process::Signal;
use socket2::SockRef;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinSet;

use crate::support::backend::Behaviour;
use crate::support::http::{get, post};
use crate::support::process::VipdProcess;
use crate::support::{Backend, echo_round_trip, free_port, poll_until, within};

/// Connections ended by the client's EOF, and by its reset.
const EOF_ENDINGS: usize = 46_000;
const RESET_ENDINGS: usize = 46_000;
/// Clients making the EOF and reset connections at once, each its share one after another.
const FAST_CLIENTS: usize = 100;
/// Connections left quiet until vipd's idle timeout closes them, and how many wait at once.
const IDLE_ENDINGS: usize = 4_000;
const IDLE_CLIENTS: usize = 500;
/// Rounds of connections held on an endpoint until a reload removes it and its drain deadline
/// closes them, and connections per round.
const DRAIN_ROUNDS: usize = 8;
const DRAIN_PER_ROUND: usize = 500;
/// Clients opening a round's connections, each its share one after another.
const DRAIN_OPENERS: usize = 50;
const DRAIN_ENDINGS: usize = DRAIN_ROUNDS * DRAIN_PER_ROUND;
const TOTAL: usize = EOF_ENDINGS + RESET_ENDINGS + IDLE_ENDINGS + DRAIN_ENDINGS;
const _: () = assert!(TOTAL == 100_000);
const _: () = assert!(EOF_ENDINGS == RESET_ENDINGS);
const _: () = assert!((EOF_ENDINGS + RESET_ENDINGS).is_multiple_of(FAST_CLIENTS));
const _: () = assert!(IDLE_ENDINGS.is_multiple_of(IDLE_CLIENTS));
const _: () = assert!(DRAIN_PER_ROUND.is_multiple_of(DRAIN_OPENERS));
/// The backends' accept queues: room for every connection vipd may open at once.
const BACKLOG: u32 = 4096;

/// The services: EOF and reset endings, idle endings, drain endings. Only the idle one has a
/// short idle timeout: a connection of the others ends by its client or by the drain deadline,
/// or it is still open when the accounting looks.
const FAST_SERVICE: &str = "acct";
const IDLE_SERVICE: &str = "acct-idle";
const DRAINED_SERVICE: &str = "acct-drain";
/// Short, yet long enough that a client of the busy test process still gets its one message to
/// vipd before vipd's idle clock, started at the connect, runs out.
const IDLE_TIMEOUT: Duration = Duration::from_secs(1);
const DRAIN_TIMEOUT: Duration = Duration::from_millis(200);
/// The loop's clock counts whole milliseconds: a deadline may come this much early.
const CLOCK_SLACK: Duration = Duration::from_millis(2);
/// Bound on the whole load; every step of a connection is bounded by `GUARD` too.
const LOAD_GUARD: Duration = Duration::from_secs(240);
const TOKEN: &str = "accounting-token";

/// How each connection ended, counted by the clients.
#[derive(Default)]
struct Endings {
    eof: AtomicUsize,
    reset_quiet: AtomicUsize,
    reset_in_flight: AtomicUsize,
    reset_at_once: AtomicUsize,
    idle_silent: AtomicUsize,
    idle_after_echo: AtomicUsize,
    drain: AtomicUsize,
    /// The shortest wait (µs) a client saw for an idle close, and for a drain close.
    shortest_idle_us: AtomicU64,
    shortest_drain_us: AtomicU64,
}

impl Endings {
    fn new() -> Endings {
        Endings {
            shortest_idle_us: AtomicU64::new(u64::MAX),
            shortest_drain_us: AtomicU64::new(u64::MAX),
            ..Endings::default()
        }
    }

    fn count(counter: &AtomicUsize) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    fn get(counter: &AtomicUsize) -> usize {
        counter.load(Ordering::Relaxed)
    }

    fn waited(shortest: &AtomicU64, waited: Duration) {
        shortest.fetch_min(waited.as_micros() as u64, Ordering::Relaxed);
    }

    fn shortest(shortest: &AtomicU64) -> Duration {
        Duration::from_micros(shortest.load(Ordering::Relaxed))
    }

    fn resets(&self) -> usize {
        Self::get(&self.reset_quiet)
            + Self::get(&self.reset_in_flight)
            + Self::get(&self.reset_at_once)
    }

    fn idles(&self) -> usize {
        Self::get(&self.idle_silent) + Self::get(&self.idle_after_echo)
    }
}

/// The ports and endpoints of the run, and its config file (rewritten for each drain round).
struct Setup {
    path: PathBuf,
    admin: u16,
    fast_port: u16,
    idle_port: u16,
    drained_port: u16,
    endpoints: Vec<SocketAddr>,
    /// Endpoint `r` serves drain round `r`; the last one serves nobody.
    drained_endpoints: Vec<SocketAddr>,
}

impl Setup {
    /// Writes the config in which `acct-drain` has endpoint `round` only.
    fn write(&self, round: usize) {
        let service = |name: &str, port: u16, endpoints: &[SocketAddr], timeouts: &str| {
            let endpoints: Vec<String> = endpoints.iter().map(|a| format!("\"{a}\"")).collect();
            format!(
                "[[service]]\nname = \"{name}\"\nvip = \"127.0.0.1\"\nports = [{{ port = {port} }}]\n\
                 endpoints = [{}]\n{timeouts}\n[service.health]\ncheck = \"none\"\n\n",
                endpoints.join(", ")
            )
        };
        let text = format!(
            "[admin]\nlisten = \"127.0.0.1:{}\"\ntoken_file = \"token\"\n\n",
            self.admin
        ) + &service(
            FAST_SERVICE,
            self.fast_port,
            &self.endpoints,
            "idle_timeout = \"1h\"\n",
        ) + &service(
            IDLE_SERVICE,
            self.idle_port,
            &self.endpoints,
            &format!("idle_timeout = \"{}ms\"\n", IDLE_TIMEOUT.as_millis()),
        ) + &service(
            DRAINED_SERVICE,
            self.drained_port,
            &self.drained_endpoints[round..=round],
            &format!(
                "idle_timeout = \"1h\"\ndrain_timeout = \"{}ms\"\n",
                DRAIN_TIMEOUT.as_millis()
            ),
        );
        std::fs::write(&self.path, text).expect("write the config");
    }
}

fn local(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// Descriptors open in process `pid` now.
fn open_descriptors(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("vipd's descriptor table")
        .count()
}

/// The message connection `n` sends: 1 to 4096 bytes (well below a loop buffer) of a pattern
/// that differs from one connection to the next.
fn message(n: usize) -> &'static [u8] {
    static PATTERN: std::sync::LazyLock<Vec<u8>> =
        std::sync::LazyLock::new(|| (0..8192).map(|i| (i % 251) as u8).collect());
    let start = n % 4096;
    &PATTERN[start..start + 1 + (n * 7919) % 4096]
}

async fn connect(vip: SocketAddr) -> TcpStream {
    within("connect", TcpStream::connect(vip))
        .await
        .unwrap_or_else(|e| panic!("connect to {vip}: {e}"))
}

/// Closes `stream` with a reset (SO_LINGER 0) instead of a FIN.
fn reset(stream: TcpStream) {
    SockRef::from(&stream)
        .set_linger(Some(Duration::ZERO))
        .expect("SO_LINGER 0");
    drop(stream);
}

/// Reads until the far end closes; it must close cleanly, with no byte left to read.
async fn expect_eof(stream: &mut TcpStream, what: &str) {
    let mut rest = Vec::new();
    let read = within(what, stream.read_to_end(&mut rest))
        .await
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    assert_eq!(read, 0, "{what}: bytes after the last echo");
}

/// Connection `n` of the fast mix: even ones end by the client's EOF, odd ones by its reset.
async fn fast_connection(vip: SocketAddr, n: usize, endings: &Endings) {
    let mut stream = connect(vip).await;
    let message = message(n);
    if n.is_multiple_of(2) {
        echo_round_trip(&mut stream, message).await;
        stream.shutdown().await.expect("shut down the write side");
        expect_eof(&mut stream, "vipd's FIN after the endpoint's").await;
        Endings::count(&endings.eof);
        return;
    }
    match (n / 2) % 3 {
        0 => {
            // An open, quiet connection.
            echo_round_trip(&mut stream, message).await;
            reset(stream);
            Endings::count(&endings.reset_quiet);
        }
        1 => {
            // Bytes on their way to the endpoint, and their echo on its way back.
            echo_round_trip(&mut stream, message).await;
            stream.write_all(message).await.expect("send");
            reset(stream);
            Endings::count(&endings.reset_in_flight);
        }
        _ => {
            // Before vipd may even have connected to the endpoint.
            stream.write_all(message).await.expect("send");
            reset(stream);
            Endings::count(&endings.reset_at_once);
        }
    }
}

/// Connection `n` left quiet (even: from the start, odd: after one echo) until vipd closes it.
async fn idle_connection(vip: SocketAddr, n: usize, endings: &Endings) {
    // vipd's idle clock starts after this instant (at its connect to the endpoint, or at its
    // write of the echo), so the close cannot come sooner than the timeout after it.
    let mut quiet = Instant::now();
    let mut stream = connect(vip).await;
    let after_echo = n % 2 == 1;
    if after_echo {
        quiet = Instant::now();
        echo_round_trip(&mut stream, message(n)).await;
    }
    expect_eof(&mut stream, "vipd's close at the idle timeout").await;
    let waited = quiet.elapsed();
    assert!(
        waited + CLOCK_SLACK >= IDLE_TIMEOUT,
        "an idle connection was closed {waited:?} after its last byte; idle_timeout is \
         {IDLE_TIMEOUT:?}"
    );
    Endings::waited(&endings.shortest_idle_us, waited);
    Endings::count(if after_echo {
        &endings.idle_after_echo
    } else {
        &endings.idle_silent
    });
}

/// The drain rounds: connections held on the only endpoint of `acct-drain`, which a reload then
/// replaces; they must end at the drain deadline. Returns the most descriptors vipd held with a
/// round's connections open.
async fn drain_rounds(setup: Arc<Setup>, endings: Arc<Endings>, pid: u32) -> usize {
    let vip = local(setup.drained_port);
    let admin = local(setup.admin);
    let mut peak = 0;
    for round in 0..DRAIN_ROUNDS {
        let mut opening = JoinSet::new();
        for opener in 0..DRAIN_OPENERS {
            opening.spawn(async move {
                let mut opened = Vec::new();
                for k in 0..DRAIN_PER_ROUND / DRAIN_OPENERS {
                    let n = round * DRAIN_PER_ROUND + opener + k * DRAIN_OPENERS;
                    let mut stream = connect(vip).await;
                    echo_round_trip(&mut stream, message(n)).await;
                    opened.push(stream);
                }
                opened
            });
        }
        let mut held = Vec::with_capacity(DRAIN_PER_ROUND);
        while let Some(opened) = opening.join_next().await {
            held.extend(opened.unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic())));
        }
        peak = peak.max(open_descriptors(pid));

        setup.write(round + 1);
        let removed = Instant::now();
        let reloaded = post(admin, "/reload", Some(TOKEN)).await;
        assert_eq!(reloaded.status, 200, "reload: {}", reloaded.body);
        let mut ending = JoinSet::new();
        for mut stream in held {
            let endings = Arc::clone(&endings);
            ending.spawn(async move {
                expect_eof(&mut stream, "vipd's close at the drain deadline").await;
                let waited = removed.elapsed();
                // The loop takes its clock once per turn, before the turn's events: a drain it
                // notices in that turn gets its deadline counted from a little before. Half the
                // timeout still tells the deadline from an early close.
                assert!(
                    waited >= DRAIN_TIMEOUT / 2,
                    "a drained connection was closed {waited:?} after the reload began; \
                     drain_timeout is {DRAIN_TIMEOUT:?}"
                );
                Endings::waited(&endings.shortest_drain_us, waited);
                Endings::count(&endings.drain);
            });
        }
        while let Some(ended) = ending.join_next().await {
            ended.unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
        }
    }
    peak
}

/// What `/status` and `/metrics` must say once every connection ended; `Err` says what they say
/// instead.
async fn nothing_left(setup: &Setup) -> Result<(), String> {
    let admin = local(setup.admin);
    let status: serde_json::Value =
        serde_json::from_str(&get(admin, "/status").await.body).expect("/status JSON");
    for service in status["services"].as_array().expect("services") {
        let endpoints = service["endpoints"].as_array().expect("endpoints");
        for endpoint in endpoints {
            if endpoint["active_connections"] != 0 {
                return Err(format!(
                    "/status: {} {} has {} active connections",
                    service["name"], endpoint["address"], endpoint["active_connections"]
                ));
            }
        }
        if service["name"] == DRAINED_SERVICE {
            let shown: Vec<&str> = endpoints
                .iter()
                .map(|e| e["address"].as_str().expect("an address"))
                .collect();
            let last = setup.drained_endpoints.last().unwrap().to_string();
            if shown != [last.as_str()] {
                return Err(format!(
                    "/status: {DRAINED_SERVICE} still shows removed endpoints: {shown:?}"
                ));
            }
        }
    }

    let page = get(admin, "/metrics").await.body;
    let samples = |name: &str, service: &str| -> Vec<(String, f64)> {
        let series = format!("{name}{{");
        let label = format!("service=\"{service}\"");
        page.lines()
            .filter(|l| l.starts_with(&series) && l.contains(&label))
            .map(|l| {
                let (series, value) = l.rsplit_once(' ').expect("a sample line");
                (series.to_owned(), value.parse().expect("a sample value"))
            })
            .collect()
    };
    for (service, established) in [
        (FAST_SERVICE, EOF_ENDINGS + RESET_ENDINGS),
        (IDLE_SERVICE, IDLE_ENDINGS),
        (DRAINED_SERVICE, DRAIN_ENDINGS),
    ] {
        for (series, value) in samples("vipd_active_connections", service) {
            if value != 0.0 {
                return Err(format!("/metrics: {series} {value}"));
            }
        }
        let total: f64 = samples("vipd_connections_total", service)
            .iter()
            .map(|(_, v)| v)
            .sum();
        assert_eq!(
            total, established as f64,
            "{service}: connections established to its endpoints"
        );
        let failed = samples("vipd_connections_failed_total", service);
        assert_eq!(failed.len(), 1, "{service}: {failed:?}");
        assert_eq!(failed[0].1, 0.0, "{service}: {failed:?}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_connection_or_descriptor_is_left_after_100k_connections() {
    let started = Instant::now();
    let echoes = [
        Backend::start_with_backlog("echo-a", Behaviour::Echo, BACKLOG).await,
        Backend::start_with_backlog("echo-b", Behaviour::Echo, BACKLOG).await,
    ];
    let mut drained = Vec::new();
    for round in 0..=DRAIN_ROUNDS {
        let name = format!("drained-{round}");
        drained.push(Backend::start_with_backlog(&name, Behaviour::Echo, BACKLOG).await);
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("token"), format!("{TOKEN}\n")).unwrap();
    let setup = Arc::new(Setup {
        path: dir.path().join("vipd.toml"),
        admin: free_port(),
        fast_port: free_port(),
        idle_port: free_port(),
        drained_port: free_port(),
        endpoints: echoes.iter().map(|b| b.addr).collect(),
        drained_endpoints: drained.iter().map(|b| b.addr).collect(),
    });
    setup.write(0);
    let mut vipd = VipdProcess::spawn(&["run", "-c", setup.path.to_str().unwrap()]);
    vipd.wait_for("ready");
    let pid = vipd.child.id();
    // Counted before any client connects: a connection the admin server has just answered may
    // still be open on vipd's side for a moment.
    let before = open_descriptors(pid);
    let status = get(local(setup.admin), "/status").await;
    assert_eq!(status.status, 200, "{}", status.body);

    let endings = Arc::new(Endings::new());
    let load = Instant::now();
    let drain = tokio::spawn(drain_rounds(Arc::clone(&setup), Arc::clone(&endings), pid));
    let mut clients = JoinSet::new();
    let fast = local(setup.fast_port);
    for client in 0..FAST_CLIENTS {
        let endings = Arc::clone(&endings);
        clients.spawn(async move {
            let share = (EOF_ENDINGS + RESET_ENDINGS) / FAST_CLIENTS;
            for n in client * share..(client + 1) * share {
                fast_connection(fast, n, &endings).await;
            }
        });
    }
    let idle = local(setup.idle_port);
    for client in 0..IDLE_CLIENTS {
        let endings = Arc::clone(&endings);
        clients.spawn(async move {
            for k in 0..IDLE_ENDINGS / IDLE_CLIENTS {
                idle_connection(idle, client + k * IDLE_CLIENTS, &endings).await;
            }
        });
    }
    let peak = tokio::time::timeout(LOAD_GUARD, async {
        while let Some(done) = clients.join_next().await {
            done.unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
        }
        drain
            .await
            .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
    })
    .await
    .unwrap_or_else(|_| panic!("the load did not finish within {LOAD_GUARD:?}"));
    let load_took = load.elapsed();

    assert_eq!(Endings::get(&endings.eof), EOF_ENDINGS);
    assert_eq!(endings.resets(), RESET_ENDINGS);
    assert_eq!(endings.idles(), IDLE_ENDINGS);
    assert_eq!(Endings::get(&endings.drain), DRAIN_ENDINGS);

    poll_until("vipd to account every connection as ended", || {
        nothing_left(&setup)
    })
    .await;
    let after = poll_until(
        "vipd's descriptors back to their count before the load",
        || async {
            let open = open_descriptors(pid);
            if open == before {
                Ok(open)
            } else {
                Err(format!("{open} open, {before} before the load"))
            }
        },
    )
    .await;
    eprintln!(
        "accounting: {TOTAL} connections in {load_took:.1?} (test so far {:.1?}): eof {}, \
         reset {} (quiet {}, bytes in flight {}, at once {}), idle {} (silent {}, after an \
         echo {}; shortest wait {:.1?}), drain {} in {DRAIN_ROUNDS} rounds (shortest wait \
         {:.1?}); vipd descriptors: {before} before, {peak} at most (sampled), {after} after",
        started.elapsed(),
        Endings::get(&endings.eof),
        endings.resets(),
        Endings::get(&endings.reset_quiet),
        Endings::get(&endings.reset_in_flight),
        Endings::get(&endings.reset_at_once),
        endings.idles(),
        Endings::get(&endings.idle_silent),
        Endings::get(&endings.idle_after_echo),
        Endings::shortest(&endings.shortest_idle_us),
        Endings::get(&endings.drain),
        Endings::shortest(&endings.shortest_drain_us),
    );

    vipd.signal(Signal::TERM);
    let exit = vipd.exit().await;
    assert_eq!(exit.code(), Some(0));
}
