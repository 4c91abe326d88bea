//! The PROXY protocol, versions 1 and 2: vipd's own parser and encoder.
//!
//! The spec is HAProxy's `doc/proxy-protocol.txt`
//! (<https://www.haproxy.org/download/2.9/doc/proxy-protocol.txt>). A sender prepends one header
//! to a connection (or to each datagram) saying who the client really was; [`parse`] reads it
//! and [`encode_v1`] / [`encode_v2`] write it.
//!
//! Sans-IO: [`parse`] looks at the bytes a peer has sent so far and answers with a whole header
//! (and how many bytes it took), "not yet" (the bytes are a valid start of a header), or an
//! error naming the cause. Nothing here reads a socket or allocates, so the data plane can call
//! it on every readable event with whatever its buffer holds.
//!
//! - `v1`: the text line, `PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n`.
//! - `v2`: the binary header, its TLVs and their CRC32c.
//!
//! Where the spec leaves a choice, these are vipd's:
//! - Refuse at once. A byte that no header can contain is an error as soon as it arrives, even
//!   in the middle of an address or a TLV: a client that sent `GET /` to a PROXY listener is
//!   refused at its first byte, not after the header timeout.
//! - `"PROXY "` (with its space) is v1's signature and the 12 bytes `\r\n\r\n\0\r\nQUIT\n` are
//!   v2's; input that breaks away from both is [`ParseError::NotProxyProtocol`].
//! - A v1 line that reaches 107 bytes without its CRLF is [`ParseError::V1TooLong`], counted
//!   as `malformed` rather than `too_long`: the 107 bytes are part of the format (the sender is
//!   broken), while `too_long` is left to the caller's own limit on headers that are valid so
//!   far ([`ParseError::TooLong`]), which an operator can raise.
//! - v1 `UNKNOWN` is followed by the CRLF or by a space and anything up to the CRLF (the spec:
//!   "the receiver must ignore anything presented before the CRLF"); a bare LF there is still
//!   an error.
//! - v2 `LOCAL` ignores the family byte, as the spec says ("discard the protocol block including
//!   the family"), so an unknown family under `LOCAL` is accepted; the family only says where
//!   TLVs start (after its addresses, when the block holds them; otherwise the block is skipped
//!   unread).
//! - v2 `PROXY` with a family or transport of `UNSPEC`, or with `AF_UNIX`, is accepted as
//!   [`Addresses::Local`] (the spec lets the receiver "use the real endpoint addresses"), once
//!   its address block has the family's size.
//! - A v2 header with two CRC32c TLVs is malformed: which bytes each one covers is ambiguous,
//!   and a checksum that cannot be checked unambiguously is not passed.

mod v1;
mod v2;

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};

pub use v1::encode as encode_v1;
pub use v2::encode as encode_v2;

/// The transport a proxied connection used, as a v2 header says (v1 is TCP only).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// SOCK_STREAM: TCP.
    Stream,
    /// SOCK_DGRAM: UDP.
    Datagram,
}

/// What a header says about the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Addresses {
    /// v1 `PROXY UNKNOWN`, or a v2 `LOCAL` command, or v2 family/transport UNSPEC or AF_UNIX:
    /// the peer itself is the client.
    Local,
    /// The connection was relayed on behalf of a client.
    Proxied {
        /// The client's address.
        source: SocketAddr,
        /// The address the client connected to.
        destination: SocketAddr,
        /// TCP or UDP (always [`Transport::Stream`] for v1).
        transport: Transport,
    },
}

/// The protocol version of a header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// The text line.
    V1,
    /// The binary header.
    V2,
}

/// A parsed header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Which of the two formats it was.
    pub version: Version,
    /// Who the client was.
    pub addresses: Addresses,
    /// Bytes the whole header occupies at the start of the input (v2: 16 + declared length,
    /// TLVs included); the connection's own data starts after them.
    pub length: usize,
}

/// The longest v1 line, CRLF included (spec §2.1: `PROXY UNKNOWN` with two full IPv6
/// addresses and ports).
pub const V1_MAX_LENGTH: usize = 107;

/// The longest v2 header: 16 bytes and a declared length of up to 65535.
pub const V2_MAX_LENGTH: usize = 16 + u16::MAX as usize;

/// A buffer that holds any header [`encode_v1`]/[`encode_v2`] write (no TLVs are written). The
/// longest actually written is 104 bytes (a v1 `TCP6` line with two 39-character addresses);
/// 108 is the spec's own size for a v1 line buffer.
pub const MAX_ENCODED: usize = 108;

/// One field of a v1 line, as errors name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    /// `TCP4`, `TCP6` or `UNKNOWN`.
    Protocol,
    /// The client's address.
    SourceAddress,
    /// The address the client connected to.
    DestinationAddress,
    /// The client's port.
    SourcePort,
    /// The port the client connected to.
    DestinationPort,
}

impl std::fmt::Display for Field {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Field::Protocol => "protocol",
            Field::SourceAddress => "source address",
            Field::DestinationAddress => "destination address",
            Field::SourcePort => "source port",
            Field::DestinationPort => "destination port",
        })
    }
}

/// Why bytes are not (and cannot become) a valid header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// The input breaks away from both signatures: the peer does not speak the PROXY protocol.
    #[error("not a PROXY protocol header: byte {offset} fits neither the v1 nor the v2 signature")]
    NotProxyProtocol {
        /// Index of the first byte that differs.
        offset: usize,
    },
    /// The v1 line reached 107 bytes without its CRLF.
    #[error("v1: line longer than 107 bytes")]
    V1TooLong,
    /// The v1 protocol is none of the three the spec defines.
    #[error("v1: protocol is not TCP4, TCP6 or UNKNOWN")]
    V1Protocol,
    /// Two or more spaces between v1 fields (the spec wants exactly one).
    #[error("v1: more than one space before the {field}")]
    V1Spacing {
        /// The field after the extra space.
        field: Field,
    },
    /// The v1 line ends (CR) before all its fields.
    #[error("v1: line ends before the {field}")]
    V1MissingField {
        /// The first missing field.
        field: Field,
    },
    /// A v1 address is not in the textual form of the family its protocol names (also: an IPv6
    /// address under TCP4, or the reverse).
    #[error("v1: {field} is not an {family} address")]
    V1Address {
        /// Which address.
        field: Field,
        /// `"IPv4"` (TCP4) or `"IPv6"` (TCP6).
        family: &'static str,
    },
    /// A v1 port is not a decimal number 0..=65535 without leading zeros.
    #[error("v1: {field} is not a decimal number from 0 to 65535 without leading zeros")]
    V1Port {
        /// Which port.
        field: Field,
    },
    /// Something other than the CRLF after the v1 destination port.
    #[error("v1: expected CRLF after the destination port")]
    V1LineEnd,
    /// An LF without the CR before it: the line must end in CRLF.
    #[error("v1: LF without CR before it (the line must end in CRLF)")]
    V1BareLf,
    /// A CR not followed by LF.
    #[error("v1: CR not followed by LF")]
    V1BareCr,
    /// A v2 version other than 2.
    #[error("v2: unsupported version {0}")]
    V2Version(u8),
    /// A v2 command other than LOCAL (0) and PROXY (1).
    #[error("v2: unsupported command {0} (LOCAL is 0, PROXY is 1)")]
    V2Command(u8),
    /// A v2 address family other than UNSPEC, INET, INET6 and UNIX (0 to 3).
    #[error("v2: unsupported address family {0} (UNSPEC 0, INET 1, INET6 2, UNIX 3)")]
    V2Family(u8),
    /// A v2 transport other than UNSPEC, STREAM and DGRAM (0 to 2).
    #[error("v2: unsupported transport protocol {0} (UNSPEC 0, STREAM 1, DGRAM 2)")]
    V2Transport(u8),
    /// The v2 declared length cannot hold the family's addresses.
    #[error("v2: address block of {length} bytes is shorter than {family}'s {needed}")]
    V2AddressTooShort {
        /// The declared length.
        length: u16,
        /// `"AF_INET"`, `"AF_INET6"` or `"AF_UNIX"`.
        family: &'static str,
        /// The family's address block: 12, 36 or 216.
        needed: u16,
    },
    /// Bytes left after the last TLV that are too few for a TLV's 3-byte type and length.
    #[error("v2: {remaining} bytes left at byte {offset} are too few for a TLV's 3-byte header")]
    V2TlvTruncated {
        /// Where the would-be TLV starts.
        offset: usize,
        /// Bytes from there to the declared end (1 or 2).
        remaining: usize,
    },
    /// A TLV whose value runs past the declared length.
    #[error("v2: TLV of type {kind:#04x} at byte {offset} runs past the declared length")]
    V2TlvOverrun {
        /// Where the TLV starts.
        offset: usize,
        /// Its type.
        kind: u8,
    },
    /// A PP2_TYPE_CRC32C TLV whose value is not 4 bytes.
    #[error("v2: CRC32c TLV of {length} bytes (it has 4)")]
    V2Crc32cLength {
        /// The TLV's length.
        length: u16,
    },
    /// Two PP2_TYPE_CRC32C TLVs in one header.
    #[error("v2: more than one CRC32c TLV")]
    V2Crc32cDuplicate,
    /// The header's CRC32c is not the one its bytes give.
    #[error(
        "v2: CRC32c mismatch (the header says {received:#010x}, its bytes give {computed:#010x})"
    )]
    V2Crc32cMismatch {
        /// The value in the TLV.
        received: u32,
        /// The value computed over the header with the TLV's value zeroed.
        computed: u32,
    },
    /// A header valid so far that does not fit the caller's buffer. [`parse`] never returns
    /// it (the spec allows v2 headers up to [`V2_MAX_LENGTH`]); the caller, which knows its
    /// buffer, constructs it.
    #[error("header longer than the {limit} bytes allowed")]
    TooLong {
        /// The caller's limit in bytes.
        limit: usize,
    },
}

impl ParseError {
    /// A short label for `vipd_proxy_protocol_errors_total{reason}`: exactly one of
    /// `"not_proxy_protocol"`, `"malformed"`, `"unsupported"`, `"checksum"`, `"too_long"`.
    pub fn reason(&self) -> &'static str {
        match self {
            ParseError::NotProxyProtocol { .. } => "not_proxy_protocol",
            // Values the spec reserves (a future version, command, family or transport): the
            // sender may be newer than us rather than broken.
            ParseError::V2Version(_)
            | ParseError::V2Command(_)
            | ParseError::V2Family(_)
            | ParseError::V2Transport(_) => "unsupported",
            ParseError::V2Crc32cMismatch { .. } => "checksum",
            ParseError::TooLong { .. } => "too_long",
            ParseError::V1TooLong
            | ParseError::V1Protocol
            | ParseError::V1Spacing { .. }
            | ParseError::V1MissingField { .. }
            | ParseError::V1Address { .. }
            | ParseError::V1Port { .. }
            | ParseError::V1LineEnd
            | ParseError::V1BareLf
            | ParseError::V1BareCr
            | ParseError::V2AddressTooShort { .. }
            | ParseError::V2TlvTruncated { .. }
            | ParseError::V2TlvOverrun { .. }
            | ParseError::V2Crc32cLength { .. }
            | ParseError::V2Crc32cDuplicate => "malformed",
        }
    }
}

/// Parses the header at the start of `input`, the bytes a peer has sent so far.
///
/// Ok(None): the bytes so far are a valid prefix of a header and more are needed (for a
/// datagram, where the header and payload come whole in one datagram, that means it was
/// truncated). An input that cannot become a header is an error at once, at the byte that
/// rules it out: a client that sent `GET /` is refused immediately, not after the timeout.
/// No limit below the spec's own ([`V1_MAX_LENGTH`], [`V2_MAX_LENGTH`]) is applied; the
/// caller limits by its buffer and reports [`ParseError::TooLong`] itself.
pub fn parse(input: &[u8]) -> Result<Option<Header>, ParseError> {
    // The two signatures differ in their first byte, so it alone picks the parser.
    match input.first() {
        None => Ok(None),
        Some(&b'P') => v1::parse(input),
        Some(&b'\r') => v2::parse(input),
        Some(_) => Err(ParseError::NotProxyProtocol { offset: 0 }),
    }
}

/// Source and destination in the one family a header can carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pair {
    V4(SocketAddrV4, SocketAddrV4),
    V6(SocketAddrV6, SocketAddrV6),
}

/// Puts `(source, destination)` in one family for encoding. An IPv4-mapped IPv6 address
/// (`::ffff:a.b.c.d`, what a dual-stack socket reports for an IPv4 peer) is IPv4, since that
/// is what the client really is; if both sides are then IPv4 the header is IPv4. Otherwise
/// (a v4 client of a v6 address, say) both are IPv6, the IPv4 side mapped. Flow info and scope
/// ids have no place in either format and are dropped.
fn pair(source: SocketAddr, destination: SocketAddr) -> Pair {
    fn unmap(a: SocketAddr) -> SocketAddr {
        match a {
            SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
                // `to_ipv4_mapped`, not `to_ipv4`: the latter would also turn the real IPv6
                // address `::1` into 0.0.0.1.
                Some(v4) => SocketAddr::new(v4.into(), v6.port()),
                None => a,
            },
            SocketAddr::V4(_) => a,
        }
    }
    fn v6(a: SocketAddr) -> SocketAddrV6 {
        match a {
            SocketAddr::V4(v4) => SocketAddrV6::new(v4.ip().to_ipv6_mapped(), v4.port(), 0, 0),
            SocketAddr::V6(v6) => SocketAddrV6::new(*v6.ip(), v6.port(), 0, 0),
        }
    }
    match (unmap(source), unmap(destination)) {
        (SocketAddr::V4(s), SocketAddr::V4(d)) => Pair::V4(s, d),
        (s, d) => Pair::V6(v6(s), v6(d)),
    }
}

/// `Addresses::Proxied` for a v4 pair.
fn proxied_v4(
    source: (Ipv4Addr, u16),
    destination: (Ipv4Addr, u16),
    transport: Transport,
) -> Addresses {
    Addresses::Proxied {
        source: SocketAddr::new(source.0.into(), source.1),
        destination: SocketAddr::new(destination.0.into(), destination.1),
        transport,
    }
}

/// `Addresses::Proxied` for a v6 pair.
fn proxied_v6(
    source: (Ipv6Addr, u16),
    destination: (Ipv6Addr, u16),
    transport: Transport,
) -> Addresses {
    Addresses::Proxied {
        source: SocketAddr::new(source.0.into(), source.1),
        destination: SocketAddr::new(destination.0.into(), destination.1),
        transport,
    }
}

#[cfg(test)]
mod tests;
