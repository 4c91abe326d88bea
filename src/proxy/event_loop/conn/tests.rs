//! The pump and the connection state over in-memory and loopback sockets.

use std::collections::VecDeque;

use super::super::forward_tests::{drive, drive_with, established, halves};
use super::*;

/// A source handing out scripted reads: bytes, EOF (empty), or would-block (`None`).
struct Script(VecDeque<Option<Vec<u8>>>);

impl Read for Script {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self.0.pop_front() {
            Some(Some(bytes)) => {
                buf[..bytes.len()].copy_from_slice(&bytes);
                Ok(bytes.len())
            }
            Some(None) | None => Err(io::ErrorKind::WouldBlock.into()),
        }
    }
}

/// A destination taking at most `room` bytes until refilled.
struct Sink {
    taken: Vec<u8>,
    room: usize,
    writes: usize,
}

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.writes += 1;
        if self.room == 0 {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let n = buf.len().min(self.room);
        self.room -= n;
        self.taken.extend_from_slice(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

const READY: Ready = Ready {
    readable: true,
    writable: true,
    read_closed: false,
    failed: false,
};

#[test]
fn a_message_costs_one_read_and_one_write() {
    let mut half = Half::default();
    let mut buffer = vec![0; 64];
    let mut source = Script(VecDeque::from([Some(b"ping".to_vec())]));
    let mut sink = Sink {
        taken: Vec::new(),
        room: 1 << 20,
        writes: 0,
    };
    let (mut sr, mut dr) = (READY, READY);
    let moved = pump(
        &mut half,
        &mut buffer,
        &mut source,
        &mut sr,
        &mut sink,
        &mut dr,
    )
    .unwrap();
    assert_eq!(
        moved,
        Moved {
            read: 4,
            written: 4
        }
    );
    assert_eq!(sink.taken, b"ping");
    assert_eq!(sink.writes, 1);
    // The short read cleared readability: no read that would only say EAGAIN.
    assert!(!sr.readable);
    assert!(source.0.is_empty());
    assert!(dr.writable);
}

#[test]
fn a_full_destination_keeps_the_rest_and_stops_reading() {
    let mut half = Half::default();
    let mut buffer = vec![0; 8];
    let mut source = Script(VecDeque::from([
        Some(b"abcdefgh".to_vec()),
        Some(b"ijkl".to_vec()),
    ]));
    let mut sink = Sink {
        taken: Vec::new(),
        room: 3,
        writes: 0,
    };
    let (mut sr, mut dr) = (READY, READY);
    let moved = pump(
        &mut half,
        &mut buffer,
        &mut source,
        &mut sr,
        &mut sink,
        &mut dr,
    )
    .unwrap();
    assert_eq!(
        moved,
        Moved {
            read: 8,
            written: 3
        }
    );
    assert!(!dr.writable, "a short write clears writability");
    assert!(sr.readable, "the source was not drained");
    // The writable edge comes: the rest goes, then the next read.
    sink.room = 100;
    dr.writable = true;
    let moved = pump(
        &mut half,
        &mut buffer,
        &mut source,
        &mut sr,
        &mut sink,
        &mut dr,
    )
    .unwrap();
    assert_eq!(
        moved,
        Moved {
            read: 4,
            written: 9
        }
    );
    assert_eq!(sink.taken, b"abcdefghijkl");
}

#[test]
fn eof_finishes_the_direction_only_once_flushed() {
    let mut half = Half::default();
    let mut buffer = vec![0; 8];
    let mut source = Script(VecDeque::from([Some(b"last".to_vec())]));
    let mut sink = Sink {
        taken: Vec::new(),
        room: 0,
        writes: 0,
    };
    let (mut sr, mut dr) = (READY, READY);
    pump(
        &mut half,
        &mut buffer,
        &mut source,
        &mut sr,
        &mut sink,
        &mut dr,
    )
    .unwrap();
    // FIN arrives (readable edge) while the bytes still wait.
    source.0.push_back(Some(Vec::new()));
    sr.readable = true;
    pump(
        &mut half,
        &mut buffer,
        &mut source,
        &mut sr,
        &mut sink,
        &mut dr,
    )
    .unwrap();
    assert!(
        !half.finished(),
        "bytes are still buffered; EOF not read yet"
    );
    sink.room = 100;
    dr.writable = true;
    pump(
        &mut half,
        &mut buffer,
        &mut source,
        &mut sr,
        &mut sink,
        &mut dr,
    )
    .unwrap();
    assert!(half.finished());
    assert_eq!(sink.taken, b"last");
}

#[test]
fn a_short_read_after_the_fin_was_reported_reads_on_to_eof() {
    let mut half = Half::default();
    let mut buffer = vec![0; 64];
    // Data and FIN arrived before the read: one edge for both.
    let mut source = Script(VecDeque::from([Some(b"bye".to_vec()), Some(Vec::new())]));
    let mut sink = Sink {
        taken: Vec::new(),
        room: 100,
        writes: 0,
    };
    let mut sr = Ready {
        read_closed: true,
        ..READY
    };
    let mut dr = READY;
    pump(
        &mut half,
        &mut buffer,
        &mut source,
        &mut sr,
        &mut sink,
        &mut dr,
    )
    .unwrap();
    assert!(half.finished(), "EOF read without another edge");
    assert_eq!(sink.taken, b"bye");
}

#[test]
fn errors_other_than_would_block_end_the_pump() {
    struct Broken;
    impl Read for Broken {
        fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
            Err(io::ErrorKind::ConnectionReset.into())
        }
    }
    let mut sink = Sink {
        taken: Vec::new(),
        room: 10,
        writes: 0,
    };
    let (mut sr, mut dr) = (READY, READY);
    let error = pump(
        &mut Half::default(),
        &mut [0; 8],
        &mut Broken,
        &mut sr,
        &mut sink,
        &mut dr,
    )
    .unwrap_err();
    assert_eq!(error.kind(), io::ErrorKind::ConnectionReset);
}

#[test]
fn half_close_each_way_then_complete() {
    let mut poll = mio::Poll::new().unwrap();
    let (mut conn, mut client_far, mut upstream_far) = established(&poll);
    // Client sends and closes its side: the endpoint gets the bytes, then its EOF.
    client_far.write_all(b"request").unwrap();
    client_far.shutdown(std::net::Shutdown::Write).unwrap();
    let flow = drive(&mut poll, &mut conn, |c, _| halves(c)[0].is_shut());
    assert_eq!(flow, Flow::Open, "the other direction is still open");
    let mut request = Vec::new();
    upstream_far.read_to_end(&mut request).unwrap();
    assert_eq!(request, b"request");
    assert_eq!(conn.last_activity_ms, 1);
    // The endpoint answers on the open direction and closes: the connection is complete,
    // and the last FIN is left to the close.
    upstream_far.write_all(b"answer").unwrap();
    upstream_far.shutdown(std::net::Shutdown::Write).unwrap();
    let flow = drive(&mut poll, &mut conn, |_, flow| *flow == Flow::Complete);
    assert_eq!(flow, Flow::Complete);
    assert!(!halves(&conn)[1].is_shut(), "no shutdown before the close");
    drop(conn);
    let mut answer = Vec::new();
    client_far.read_to_end(&mut answer).unwrap();
    assert_eq!(answer, b"answer");
}

fn holds_buffers(conn: &Conn) -> bool {
    conn.buffers.is_some()
}

#[test]
fn a_connection_holds_buffers_only_while_bytes_wait() {
    let mut poll = mio::Poll::new().unwrap();
    let (mut conn, mut client_far, mut upstream_far) = established(&poll);
    let mut pool = BufferPool::new(4);
    assert!(!holds_buffers(&conn), "none before the first byte");
    client_far.write_all(b"ping").unwrap();
    drive_with(&mut poll, &mut conn, &mut pool, |c, _| {
        c.last_activity_ms == 1
    });
    let mut got = [0u8; 4];
    upstream_far.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"ping");
    // Everything was written on: the pair went back to the pool.
    assert!(!holds_buffers(&conn));
    assert_eq!(pool.spare(), 1);

    // A destination that cannot take bytes (its last write said so): what was read stays
    // in the pair until it can.
    conn.upstream_ready.writable = false;
    conn.last_activity_ms = 0;
    client_far.write_all(b"pong").unwrap();
    drive_with(&mut poll, &mut conn, &mut pool, |c, _| {
        c.last_activity_ms == 1
    });
    assert!(holds_buffers(&conn));
    assert_eq!(pool.spare(), 0);
    conn.upstream_ready.writable = true;
    conn.forward(2, &mut pool, None).unwrap();
    upstream_far.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"pong");
    assert!(!holds_buffers(&conn));
    assert_eq!(pool.spare(), 1);
}

#[test]
fn a_connection_is_small_and_connecting_is_not_the_larger_phase() {
    // What every open connection costs in the slab, besides its sockets and the kernel's.
    let conn = std::mem::size_of::<Conn>();
    let (connecting, established) = (
        std::mem::size_of::<Connecting>(),
        std::mem::size_of::<Established>(),
    );
    println!("conn {conn} B, connecting {connecting} B, established {established} B");
    assert!(
        connecting <= established,
        "unboxing Connecting grew every connection"
    );
    assert!(conn <= 320, "a connection grew to {conn} bytes");
}

#[test]
fn deadline_is_the_earlier_of_idle_and_drain() {
    let poll = mio::Poll::new().unwrap();
    let (mut conn, _client_far, _upstream_far) = established(&poll);
    conn.last_activity_ms = 500;
    assert_eq!(conn.deadline_ms(), 1_500);
    if let Phase::Established(established) = &mut conn.phase {
        established.drain_at_ms = Some(1_200);
    }
    assert_eq!(conn.deadline_ms(), 1_200);
    conn.last_activity_ms = 100;
    assert_eq!(
        conn.deadline_ms(),
        1_100,
        "idle still applies while draining"
    );
}
