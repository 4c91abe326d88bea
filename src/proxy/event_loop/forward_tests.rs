//! The established connection's forwarding over real loopback sockets, driven as the loop
//! drives it: a mio `Poll` reports edges, they set the sockets' `Ready` flags exactly as
//! `EventLoop::on_conn_event` does, and `Conn::forward` moves bytes, bulk directions through
//! pipes borrowed from a capped `PipePool` of the test's own. The far ends are blocking std
//! sockets on threads.
//!
//! What the tests of the old tokio forwarding (`proxy::copy`) specified, against the loop: bulk
//! bytes arrive intact both ways and are spliced; with no pipe free, or none lent, bytes are
//! copied; connections share a capped pool; a stalled destination's bytes wait in the pipe until
//! it reads; a half-close after splicing still carries the answer; a quiet connection holds no
//! pipe. Without `half_close` a connection ends with its first direction. Also the harness
//! `conn`'s own tests use ([`established`], [`drive`], [`drive_with`]).

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream as StdStream};
use std::sync::Arc;
use std::sync::mpsc;
use std::time::Duration;

use mio::event::Event;
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};

use super::conn::{BufferPool, Conn, Established, Flow, Half, Phase, Ready};
use crate::proxy::pipe_pool::PipePool;
use crate::service::endpoint::Endpoint;

/// Bounds every wait: a poll, a far end's read or write, a join.
const GUARD: Duration = Duration::from_secs(20);
const BLOCK: usize = 1024 * 1024;

/// A connected loopback pair: the far end (blocking, std, its reads and writes bounded by
/// [`GUARD`]) and our end (mio).
fn pair() -> (StdStream, TcpStream) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let far = StdStream::connect(listener.local_addr().unwrap()).unwrap();
    let (ours, _) = listener.accept().unwrap();
    ours.set_nonblocking(true).unwrap();
    far.set_read_timeout(Some(GUARD)).unwrap();
    far.set_write_timeout(Some(GUARD)).unwrap();
    (far, TcpStream::from_std(ours))
}

/// An established connection between two loopback pairs, registered with `poll` as the loop
/// registers sockets (readable and writable, edge-triggered): the client socket as token
/// `2 * id`, the upstream as `2 * id + 1`. Both directions may splice if `may_splice`, as the
/// loop sets them when it lends pipes. Returns it with the client's and the endpoint's far end.
fn connection(poll: &Poll, id: usize, may_splice: bool) -> (Conn, StdStream, StdStream) {
    let (client_far, mut client) = pair();
    let (upstream_far, mut upstream) = pair();
    let both = Interest::READABLE | Interest::WRITABLE;
    let registry = poll.registry();
    registry.register(&mut client, Token(2 * id), both).unwrap();
    registry
        .register(&mut upstream, Token(2 * id + 1), both)
        .unwrap();
    let endpoint = Arc::new(Endpoint::new(
        "conn-test",
        upstream_far.local_addr().unwrap(),
        &tokio_util::sync::CancellationToken::new(),
    ));
    let conn = Conn {
        generation: 0,
        client,
        client_ready: Ready::default(),
        upstream: Some(upstream),
        upstream_ready: Ready::default(),
        phase: Phase::Established(Established {
            active: endpoint.attempt().established(),
            halves: [Half::new(may_splice), Half::new(may_splice)],
            idle_timeout_ms: 1_000,
            half_close: true,
            drain: endpoint.drain_token(),
            drain_timeout: Duration::from_secs(1),
            drain_at_ms: None,
        }),
        source: 0,
        armed_tick: None,
        last_activity_ms: 0,
        admitted: Default::default(),
        buffers: None,
    };
    (conn, client_far, upstream_far)
}

/// An established connection that copies only (tokens 0 and 1), and its far ends.
pub(super) fn established(poll: &Poll) -> (Conn, StdStream, StdStream) {
    connection(poll, 0, false)
}

/// Client → endpoint, endpoint → client.
pub(super) fn halves(conn: &Conn) -> &[Half; 2] {
    match &conn.phase {
        Phase::Established(established) => &established.halves,
        _ => unreachable!("tests forward established connections"),
    }
}

/// Sets the readiness `event` reports on its socket, as `EventLoop::on_conn_event` does.
fn note(conn: &mut Conn, event: &Event) {
    let ready = if event.token().0.is_multiple_of(2) {
        &mut conn.client_ready
    } else {
        &mut conn.upstream_ready
    };
    ready.note(event);
}

/// Waits for the next events, at most [`GUARD`]: none is a failure, not a hang.
fn wait(poll: &mut Poll, events: &mut Events) {
    poll.poll(events, Some(GUARD)).unwrap();
    assert!(!events.is_empty(), "no event within {GUARD:?}");
}

/// Forwards (copying only) and waits for events until `until` holds of the flow.
pub(super) fn drive(
    poll: &mut Poll,
    conn: &mut Conn,
    until: impl Fn(&Conn, &Flow) -> bool,
) -> Flow {
    drive_with(poll, conn, &mut BufferPool::new(4), until)
}

/// [`drive`] taking buffers from `pool`.
pub(super) fn drive_with(
    poll: &mut Poll,
    conn: &mut Conn,
    pool: &mut BufferPool,
    until: impl Fn(&Conn, &Flow) -> bool,
) -> Flow {
    let mut events = Events::with_capacity(16);
    loop {
        let (flow, _, _) = conn.forward(1, pool, None).unwrap();
        if until(conn, &flow) {
            return flow;
        }
        wait(poll, &mut events);
        for event in events.iter() {
            note(conn, event);
        }
    }
}

/// A leaked pool of pipes of 64 KiB, so `forward` can borrow it for `'static`.
fn pool(max_live: usize) -> &'static PipePool {
    Box::leak(Box::new(PipePool::new(max_live, max_live, 64 * 1024)))
}

/// A connection under test and what it was seen doing. It is dropped once complete, closing
/// both sockets as the loop does (that close sends the FIN of the direction that ended last).
struct Proxied {
    conn: Option<Conn>,
    /// Bytes read from the client and from the endpoint.
    read: [usize; 2],
    /// Each direction has spliced bytes (`Half::spliced` seen after some `forward`).
    spliced: [bool; 2],
}

impl Proxied {
    fn new(conn: Conn) -> Self {
        Proxied {
            conn: Some(conn),
            read: [0; 2],
            spliced: [false; 2],
        }
    }

    fn halves(&self) -> &[Half; 2] {
        halves(self.conn.as_ref().expect("still open"))
    }
}

/// Runs the loop's part for `conns` (connection `i` made by `connection(poll, i, ..)`) until
/// `until` holds at the end of a batch of events: each event sets readiness, then its
/// connection forwards, as `on_conn_event` does. Returns the most pipes the connections held
/// at once after any `forward`.
fn run(
    poll: &mut Poll,
    conns: &mut [Proxied],
    pipes: Option<&'static PipePool>,
    until: impl Fn(&[Proxied]) -> bool,
) -> usize {
    let mut buffers = BufferPool::new(4);
    let mut events = Events::with_capacity(64);
    let mut most_held = 0;
    while !until(conns) {
        wait(poll, &mut events);
        for event in events.iter() {
            let proxied = &mut conns[event.token().0 / 2];
            let Some(conn) = proxied.conn.as_mut() else {
                continue;
            };
            note(conn, event);
            let (flow, moved_in, moved_out) = conn.forward(1, &mut buffers, pipes).unwrap();
            proxied.read[0] += moved_in;
            proxied.read[1] += moved_out;
            for (seen, half) in proxied.spliced.iter_mut().zip(halves(conn)) {
                *seen |= half.spliced;
            }
            if flow == Flow::Complete {
                proxied.conn = None;
            }
            let held = conns
                .iter()
                .filter_map(|p| p.conn.as_ref())
                .flat_map(halves)
                .filter(|half| half.pipe.is_some())
                .count();
            most_held = most_held.max(held);
        }
    }
    most_held
}

/// A far end's work on its own thread; [`Far::join`] waits for its result at most [`GUARD`].
struct Far<T>(mpsc::Receiver<T>);

fn far<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> Far<T> {
    let (done, result) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = done.send(work());
    });
    Far(result)
}

impl<T> Far<T> {
    /// The result; a far end that panicked or did not finish in time fails the test.
    fn join(self, what: &str) -> T {
        self.0
            .recv_timeout(GUARD)
            .unwrap_or_else(|error| panic!("{what}: {error}"))
    }
}

/// A block of pseudo-random bytes (xorshift64*).
fn noise(seed: u64) -> Vec<u8> {
    let mut x = seed;
    let mut block = vec![0u8; BLOCK];
    for word in block.chunks_exact_mut(8) {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        word.copy_from_slice(&x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    block
}

/// Makes `block` block `index` of its stream: the noise tagged with the index, so a lost,
/// repeated or reordered block differs from what was expected.
fn tag(block: &mut [u8], index: u64) {
    block[..8].copy_from_slice(&index.to_le_bytes());
}

/// Sends the `blocks` MiB stream of `seed`, then shuts the sending side.
fn send(mut writer: StdStream, seed: u64, blocks: u64) -> Far<()> {
    far(move || {
        let mut block = noise(seed);
        for index in 0..blocks {
            tag(&mut block, index);
            writer.write_all(&block).unwrap();
        }
        writer.shutdown(Shutdown::Write).unwrap();
    })
}

/// What a receiver got: bytes up to EOF, and the first block that was not the one sent there.
/// Comparing with the expected stream (a memcmp per block) checks every byte in place, which a
/// checksum only approximates, and is fast enough unoptimised for hundreds of MiB.
#[derive(Debug, PartialEq, Eq)]
struct Received {
    bytes: usize,
    first_bad_block: Option<u64>,
}

impl Received {
    fn intact(blocks: u64) -> Self {
        Received {
            bytes: blocks as usize * BLOCK,
            first_bad_block: None,
        }
    }
}

/// Reads the stream of `seed` to EOF, then shuts the sending side if `then_shut`.
fn receive(mut reader: StdStream, seed: u64, then_shut: bool) -> Far<Received> {
    far(move || {
        let mut expected = noise(seed);
        let mut block = vec![0u8; BLOCK];
        let mut got = Received::intact(0);
        for index in 0.. {
            let mut filled = 0;
            while filled < BLOCK {
                match reader.read(&mut block[filled..]).unwrap() {
                    0 => break,
                    n => filled += n,
                }
            }
            tag(&mut expected, index);
            if block[..filled] != expected[..filled] && got.first_bad_block.is_none() {
                got.first_bad_block = Some(index);
            }
            got.bytes += filled;
            if filled < BLOCK {
                break;
            }
        }
        if then_shut {
            reader.shutdown(Shutdown::Write).unwrap();
        }
        got
    })
}

/// Far ends moving `blocks` MiB each way at once.
struct BothWays {
    sent: [Far<()>; 2],
    got: [Far<Received>; 2],
    blocks: u64,
}

impl BothWays {
    fn start(client_far: StdStream, upstream_far: StdStream, blocks: u64) -> Self {
        let client_reader = client_far.try_clone().unwrap();
        let upstream_reader = upstream_far.try_clone().unwrap();
        BothWays {
            sent: [send(client_far, 1, blocks), send(upstream_far, 2, blocks)],
            got: [
                receive(upstream_reader, 1, false),
                receive(client_reader, 2, false),
            ],
            blocks,
        }
    }

    /// Both ways arrived whole and intact, and the connection counted them.
    fn check(self, proxied: &Proxied) {
        for sent in self.sent {
            sent.join("sender");
        }
        let [got_in, got_out] = self.got.map(|got| got.join("receiver"));
        assert_eq!(got_in, Received::intact(self.blocks), "client → endpoint");
        assert_eq!(got_out, Received::intact(self.blocks), "endpoint → client");
        let bytes = self.blocks as usize * BLOCK;
        assert_eq!(proxied.read, [bytes, bytes]);
    }
}

/// One connection moving `blocks` MiB each way, forwarded until complete; both ways checked.
fn both_ways(pipes: Option<&'static PipePool>, blocks: u64) -> Proxied {
    let mut poll = Poll::new().unwrap();
    let (conn, client_far, upstream_far) = connection(&poll, 0, pipes.is_some());
    let transfer = BothWays::start(client_far, upstream_far, blocks);
    let mut proxied = [Proxied::new(conn)];
    run(&mut poll, &mut proxied, pipes, |p| p[0].conn.is_none());
    let [proxied] = proxied;
    transfer.check(&proxied);
    proxied
}

#[test]
fn splice_moves_128_mib_both_ways_intact() {
    // 128 MiB each way, 256 MiB in all, as the old test moved.
    let pipes = pool(4);
    let proxied = both_ways(Some(pipes), 128);
    assert_eq!(
        proxied.spliced,
        [true, true],
        "the bulk flows must have spliced"
    );
    assert!(pipes.live() > 0);
    assert_eq!(pipes.idle(), pipes.live(), "every pipe is back in the pool");
}

#[test]
fn no_free_pipe_falls_back_to_copying() {
    let pipes = pool(0);
    let proxied = both_ways(Some(pipes), 32);
    assert_eq!(proxied.spliced, [false, false]);
    assert_eq!(pipes.live(), 0);
}

#[test]
fn buffered_path_moves_bytes_intact() {
    let proxied = both_ways(None, 32);
    assert_eq!(proxied.spliced, [false, false]);
}

#[test]
fn connections_share_a_capped_pool() {
    // Two bulk connections, four bulk directions, one pipe: whichever direction has it
    // splices, the others copy meanwhile.
    let pipes = pool(1);
    let mut poll = Poll::new().unwrap();
    let (a, a_client, a_upstream) = connection(&poll, 0, true);
    let (b, b_client, b_upstream) = connection(&poll, 1, true);
    let transfers = [
        BothWays::start(a_client, a_upstream, 16),
        BothWays::start(b_client, b_upstream, 16),
    ];
    let mut proxied = [Proxied::new(a), Proxied::new(b)];
    let most_held = run(&mut poll, &mut proxied, Some(pipes), |p| {
        p.iter().all(|p| p.conn.is_none())
    });
    for (transfer, proxied) in transfers.into_iter().zip(&proxied) {
        transfer.check(proxied);
    }
    assert!(most_held <= 1, "{most_held} pipes held at once");
    assert!(
        proxied.iter().any(|p| p.spliced.contains(&true)),
        "the one pipe was used"
    );
    assert_eq!((pipes.live(), pipes.idle()), (1, 1));
}

#[test]
fn stalled_destination_keeps_bytes_in_the_pipe_until_it_reads() {
    // The endpoint reads nothing at first: its receive buffer and the upstream's send buffer
    // fill, and splicing out hits EAGAIN with bytes still in the pipe. They must wait there,
    // not be lost, and flow once the endpoint reads.
    let pipes = pool(2);
    let mut poll = Poll::new().unwrap();
    let (conn, client_far, upstream_far) = connection(&poll, 0, true);
    let client_reader = client_far.try_clone().unwrap();
    // Far more than the endpoint's socket buffers hold without its reading.
    let sent = send(client_far, 3, 16);
    let mut proxied = [Proxied::new(conn)];
    let in_pipe = |conn: &Conn| {
        halves(conn)[0]
            .pipe
            .as_ref()
            .map_or(0, |lease| lease.pending)
    };
    run(&mut poll, &mut proxied, Some(pipes), |p| {
        let conn = p[0].conn.as_ref().expect("open");
        in_pipe(conn) > 0 && !conn.upstream_ready.writable
    });
    let conn = proxied[0].conn.as_mut().unwrap();
    assert!(halves(conn)[0].splicing && halves(conn)[0].buffer_is_empty());
    // Forwarding again moves nothing while the endpoint does not read: the bytes stay put.
    let pending = in_pipe(conn);
    let moved = conn.forward(1, &mut BufferPool::new(4), Some(pipes));
    assert_eq!(moved.unwrap(), (Flow::Open, 0, 0));
    assert_eq!(in_pipe(conn), pending);
    // The endpoint reads everything, then closes its side: the connection completes.
    let got = receive(upstream_far, 3, true);
    run(&mut poll, &mut proxied, Some(pipes), |p| {
        p[0].conn.is_none()
    });
    sent.join("client");
    assert_eq!(got.join("endpoint"), Received::intact(16));
    assert_eq!(proxied[0].read, [16 * BLOCK, 0]);
    assert!(proxied[0].spliced[0]);
    let answer = receive(client_reader, 0, false).join("client reader");
    assert_eq!(answer, Received::intact(0), "nothing came back");
}

#[test]
fn half_close_after_splicing_still_carries_the_answer() {
    let pipes = pool(2);
    let mut poll = Poll::new().unwrap();
    let (conn, client_far, upstream_far) = connection(&poll, 0, true);
    let (client_reader, upstream_writer) = (
        client_far.try_clone().unwrap(),
        upstream_far.try_clone().unwrap(),
    );
    let request = send(client_far, 4, 4);
    let received = receive(upstream_far, 4, false);
    let mut proxied = [Proxied::new(conn)];
    // The client's EOF reaches the endpoint; the other direction stays open.
    run(&mut poll, &mut proxied, Some(pipes), |p| {
        p[0].halves()[0].is_shut()
    });
    request.join("client");
    assert_eq!(received.join("endpoint"), Received::intact(4));
    assert!(proxied[0].spliced[0], "the request must have spliced");
    assert!(!proxied[0].halves()[1].finished());
    let answer = send(upstream_writer, 5, 4);
    let got = receive(client_reader, 5, false);
    run(&mut poll, &mut proxied, Some(pipes), |p| {
        p[0].conn.is_none()
    });
    answer.join("endpoint");
    assert_eq!(got.join("client"), Received::intact(4));
    assert!(proxied[0].spliced[1], "the answer must have spliced");
    assert_eq!(proxied[0].read, [4 * BLOCK, 4 * BLOCK]);
}

#[test]
fn quiet_connection_holds_no_pipe() {
    let pipes = pool(2);
    let mut poll = Poll::new().unwrap();
    let (conn, mut client_far, mut upstream_far) = connection(&poll, 0, true);
    let block = noise(6);
    let sent = block.clone();
    let written = far(move || {
        client_far.write_all(&sent).unwrap();
        client_far
    });
    let read = far(move || {
        let mut got = vec![0u8; BLOCK];
        upstream_far.read_exact(&mut got).unwrap();
        (got, upstream_far)
    });
    let mut proxied = [Proxied::new(conn)];
    run(&mut poll, &mut proxied, Some(pipes), |p| {
        p[0].read[0] == BLOCK && p[0].halves()[0].is_empty()
    });
    let _client_far = written.join("client");
    let (got, _upstream_far) = read.join("endpoint");
    assert!(got == block, "the burst arrived intact");
    assert!(proxied[0].spliced[0], "the burst must have spliced");
    // The burst is over and the connection stays open and silent: its pipe is back.
    let inbound = &proxied[0].halves()[0];
    assert!(inbound.pipe.is_none(), "an idle direction holds no pipe");
    assert!(proxied[0].halves()[1].pipe.is_none());
    assert!(pipes.live() > 0);
    assert_eq!(pipes.idle(), pipes.live(), "every pipe is back in the pool");
}

#[test]
fn without_half_close_the_first_end_closes_both_ways() {
    let mut poll = Poll::new().unwrap();
    let (mut conn, mut client_far, mut upstream_far) = established(&poll);
    let Phase::Established(established) = &mut conn.phase else {
        unreachable!("built established")
    };
    established.half_close = false;
    // The endpoint answers and closes first (an HTTP/1.0 server, a crr request).
    upstream_far.write_all(b"answer").unwrap();
    upstream_far.shutdown(Shutdown::Write).unwrap();
    let flow = drive(&mut poll, &mut conn, |_, flow| *flow == Flow::Complete);
    assert_eq!(flow, Flow::Complete, "no wait for the client's end");
    assert!(
        !halves(&conn)[1].is_shut(),
        "no shutdown: the close ends both ways"
    );
    drop(conn);
    let mut answer = Vec::new();
    client_far.read_to_end(&mut answer).unwrap();
    assert_eq!(
        answer, b"answer",
        "the ended direction's bytes were delivered first"
    );
    let mut rest = Vec::new();
    upstream_far.read_to_end(&mut rest).unwrap();
    assert!(
        rest.is_empty(),
        "the endpoint's side was closed, not left open"
    );
}
