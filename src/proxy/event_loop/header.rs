//! The PROXY protocol on the loop: a connection on a port with `accept_proxy_protocol` is read
//! until its header is whole (the parse is `crate::proxy_protocol`'s), within
//! `proxy_protocol_timeout`; the address it names is then the client's everywhere (placement,
//! the header vipd sends on). A service with `proxy_protocol` has its header written at the
//! start of the client → endpoint buffer, before any client byte.
//!
//! The header is read into the connection's client → endpoint buffer, short of its last
//! [`MAX_ENCODED`] bytes: client bytes that came with the header stay there, moved to the
//! front, and the header vipd sends goes in before them.

use std::io::{self, Read};
use std::net::SocketAddr;

use super::EventLoop;
use super::conn::{BUFFER_SIZE, Phase};
use crate::config::ProxyProtocolVersion;
use crate::proxy_protocol::{self, Addresses, MAX_ENCODED, ParseError, Transport};

/// Why a connection's header was refused, beyond what the parse says: the
/// `vipd_proxy_protocol_errors_total` reasons.
#[derive(Debug)]
enum Refused {
    /// The peer closed before its header was whole.
    Incomplete,
    /// Longer than the room vipd reads it into.
    TooLong,
    Parse(ParseError),
    /// Reading failed (a reset): counted as `incomplete`, logged with the error.
    Io(#[allow(dead_code)] io::Error),
}

impl EventLoop {
    /// Reads what the peer has sent of its header; once it is whole, places the connection.
    pub(super) fn read_header(&mut self, key: usize, now: u64) {
        let conn = &mut self.conns[key];
        let Phase::Accepted(accepted) = &mut conn.phase else {
            return;
        };
        let buffers = conn.buffers.get_or_insert_with(|| self.buffers.take());
        let room = BUFFER_SIZE - MAX_ENCODED;
        let outcome = loop {
            match proxy_protocol::parse(&buffers[..accepted.read]) {
                Ok(Some(header)) => break Ok(Some(header)),
                Ok(None) => {}
                Err(error) => break Err(Refused::Parse(error)),
            }
            if accepted.read == room {
                break Err(Refused::TooLong);
            }
            if !conn.client_ready.readable {
                break Ok(None);
            }
            match conn.client.read(&mut buffers[accepted.read..room]) {
                Ok(0) => break Err(Refused::Incomplete),
                Ok(n) => {
                    if accepted.read + n < room && !conn.client_ready.read_closed {
                        // A short read emptied the receive queue; new bytes bring a new edge.
                        conn.client_ready.readable = false;
                    }
                    accepted.read += n;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    conn.client_ready.readable = false;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => break Err(Refused::Io(e)),
            }
        };
        let (peer, read) = (accepted.peer, accepted.read);
        let super::Source::Tcp(tcp) = &self.sources[conn.source] else {
            unreachable!("a connection's port is TCP");
        };
        match outcome {
            Ok(None) => {}
            Ok(Some(header)) => {
                let (client, destination) = match header.addresses {
                    Addresses::Proxied {
                        source,
                        destination,
                        ..
                    } => (source, Some(destination)),
                    // A health check of the load balancer itself: the peer is the client.
                    Addresses::Local => (peer, None),
                };
                buffers.copy_within(header.length..read, 0);
                self.place(key, client, destination, read - header.length, now);
            }
            Err(refused) => {
                let reason = match &refused {
                    Refused::Incomplete => "incomplete",
                    Refused::TooLong => ParseError::TooLong { limit: room }.reason(),
                    Refused::Parse(error) => error.reason(),
                    Refused::Io(_) => "incomplete",
                };
                tcp.service.metrics.proxy_protocol_error(reason);
                tracing::debug!(service = tcp.service.name(), %peer, ?refused, "PROXY header refused; closing");
                self.close(key);
            }
        }
    }
}

/// Writes the `version` header for a client at `client` that connected to `destination` in
/// front of the `early` bytes at the start of `buffer`; returns the bytes now waiting there.
pub(super) fn write_header(
    buffer: &mut [u8],
    early: usize,
    version: ProxyProtocolVersion,
    client: SocketAddr,
    destination: Option<SocketAddr>,
) -> usize {
    let mut header = [0; MAX_ENCODED];
    // Without the address the client connected to, the header says nothing of it (v1
    // UNKNOWN, v2 LOCAL): the endpoint then takes vipd for the client, as without a header.
    let addresses = destination.map(|destination| (client, destination));
    let length = match version {
        ProxyProtocolVersion::V1 => proxy_protocol::encode_v1(addresses, &mut header),
        ProxyProtocolVersion::V2 => {
            proxy_protocol::encode_v2(addresses, Transport::Stream, &mut header)
        }
    };
    buffer.copy_within(..early, length);
    buffer[..length].copy_from_slice(&header[..length]);
    early + length
}
