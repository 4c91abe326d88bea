//! PROXY protocol v1: one line of US-ASCII text (spec §2.1).
//!
//! `PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n`: the signature and a space, `TCP4`,
//! `TCP6` or `UNKNOWN`, then source and destination addresses and ports separated by exactly one
//! space, and CRLF; at most 107 bytes.
//!
//! The parser walks the bytes once and checks each against what the spec allows at that point,
//! so a line is refused at the byte that makes it impossible (`PROXY TCP4 1.2.3.256`, refused at
//! the `6`) while a line that can still become valid (`PROXY TCP4 1.2.`) asks for more. IPv4
//! addresses and ports are decoded on the way; IPv6 addresses are checked on the way by a small
//! state machine and decoded whole by std's parser when their space arrives.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};

use super::{
    Addresses, Field, Header, MAX_ENCODED, Pair, ParseError, Transport, V1_MAX_LENGTH, Version,
};

/// What every v1 line starts with.
const SIGNATURE: &[u8; 6] = b"PROXY ";

/// Why parsing stopped short of a header.
enum Stop {
    /// The input ended while still consistent: more bytes are needed.
    More,
    /// The input cannot become a header.
    Bad(ParseError),
}

impl From<ParseError> for Stop {
    fn from(e: ParseError) -> Self {
        Stop::Bad(e)
    }
}

type Step<T> = Result<T, Stop>;

/// Parses a v1 line at the start of `input` (which starts with `P`).
pub(super) fn parse(input: &[u8]) -> Result<Option<Header>, ParseError> {
    // Never look past 107 bytes: a line that has not ended there is refused, not waited on.
    let window = &input[..input.len().min(V1_MAX_LENGTH)];
    match line(&mut Cursor {
        bytes: window,
        pos: 0,
    }) {
        Ok(header) => Ok(Some(header)),
        Err(Stop::Bad(e)) => Err(e),
        Err(Stop::More) if input.len() >= V1_MAX_LENGTH => Err(ParseError::V1TooLong),
        Err(Stop::More) => Ok(None),
    }
}

/// A position in the input.
struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl Cursor<'_> {
    /// The next byte, or [`Stop::More`] at the end of the input.
    fn peek(&self) -> Step<u8> {
        self.bytes.get(self.pos).copied().ok_or(Stop::More)
    }
}

/// The protocol a line names.
enum Protocol {
    Tcp4,
    Tcp6,
    Unknown,
}

fn line(c: &mut Cursor<'_>) -> Step<Header> {
    for (i, &want) in SIGNATURE.iter().enumerate() {
        if c.peek()? != want {
            return Err(ParseError::NotProxyProtocol { offset: i }.into());
        }
        c.pos += 1;
    }
    let addresses = match protocol(c)? {
        Protocol::Unknown => {
            unknown_rest(c)?;
            Addresses::Local
        }
        Protocol::Tcp4 => {
            let source = field::<V4>(c, Field::SourceAddress, b' ')?;
            let destination = field::<V4>(c, Field::DestinationAddress, b' ')?;
            let (sport, dport) = ports(c)?;
            super::proxied_v4((source, sport), (destination, dport), Transport::Stream)
        }
        Protocol::Tcp6 => {
            let source = field::<V6>(c, Field::SourceAddress, b' ')?;
            let destination = field::<V6>(c, Field::DestinationAddress, b' ')?;
            let (sport, dport) = ports(c)?;
            super::proxied_v6((source, sport), (destination, dport), Transport::Stream)
        }
    };
    Ok(Header {
        version: Version::V1,
        addresses,
        length: c.pos,
    })
}

/// `TCP4 `, `TCP6 ` (each with its space) or `UNKNOWN`.
fn protocol(c: &mut Cursor<'_>) -> Step<Protocol> {
    let rest = &c.bytes[c.pos..];
    let names: [(&[u8], Protocol); 3] = [
        (b"TCP4 ", Protocol::Tcp4),
        (b"TCP6 ", Protocol::Tcp6),
        (b"UNKNOWN", Protocol::Unknown),
    ];
    for (name, protocol) in names {
        let n = rest.len().min(name.len());
        if rest[..n] == name[..n] {
            if n < name.len() {
                // Still a prefix of this name ("TCP" is one of two).
                return Err(Stop::More);
            }
            c.pos += n;
            return Ok(protocol);
        }
    }
    // Name the cause as closely as the byte allows.
    let named = rest.len() > 4 && (rest.starts_with(b"TCP4") || rest.starts_with(b"TCP6"));
    let (at, field) = if named {
        (rest[4], Field::SourceAddress)
    } else {
        (rest[0], Field::Protocol)
    };
    Err(match at {
        b'\n' => ParseError::V1BareLf,
        b'\r' => ParseError::V1MissingField { field },
        b' ' if !named => ParseError::V1Spacing { field },
        _ => ParseError::V1Protocol,
    }
    .into())
}

/// After `UNKNOWN`: the CRLF, or a space and anything up to the CRLF (the spec: the receiver
/// "must ignore anything presented before the CRLF").
fn unknown_rest(c: &mut Cursor<'_>) -> Step<()> {
    match c.peek()? {
        b'\r' => {}
        b' ' => loop {
            c.pos += 1;
            match c.peek()? {
                b'\r' => break,
                b'\n' => return Err(ParseError::V1BareLf.into()),
                _ => {}
            }
        },
        b'\n' => return Err(ParseError::V1BareLf.into()),
        // `UNKNOWNX` is another protocol name, not UNKNOWN.
        _ => return Err(ParseError::V1Protocol.into()),
    }
    c.pos += 1;
    lf(c)
}

/// The two ports and the CRLF that ends the line.
fn ports(c: &mut Cursor<'_>) -> Step<(u16, u16)> {
    let source = field::<Port>(c, Field::SourcePort, b' ')?;
    // `field` consumed the CR after it; the LF must follow.
    let destination = field::<Port>(c, Field::DestinationPort, b'\r')?;
    lf(c)?;
    Ok((source, destination))
}

/// The LF after a CR (the spec: "must not tolerate a single CR or LF character to end the
/// line").
fn lf(c: &mut Cursor<'_>) -> Step<()> {
    match c.peek()? {
        b'\n' => {
            c.pos += 1;
            Ok(())
        }
        _ => Err(ParseError::V1BareCr.into()),
    }
}

/// The text of one field, checked byte by byte as it arrives.
trait Token: Default {
    type Value;
    /// Takes the next byte; false if no continuation of the text so far can be valid.
    fn push(&mut self, b: u8) -> bool;
    /// The value, if `text` (everything pushed so far) is a whole field.
    fn finish(&self, text: &[u8]) -> Option<Self::Value>;
    /// The error for a field that is not of this kind.
    fn invalid(field: Field) -> ParseError;
}

/// One field, up to and including the byte `end` that follows it (a space, or the CR after
/// the destination port).
fn field<T: Token>(c: &mut Cursor<'_>, field: Field, end: u8) -> Step<T::Value> {
    let start = c.pos;
    let mut token = T::default();
    loop {
        let b = c.peek()?;
        if b == end && c.pos > start {
            let value = token
                .finish(&c.bytes[start..c.pos])
                .ok_or_else(|| T::invalid(field))?;
            c.pos += 1;
            return Ok(value);
        }
        if !token.push(b) {
            let complete = c.pos > start && token.finish(&c.bytes[start..c.pos]).is_some();
            return Err(misfit(b, field, c.pos == start, complete, T::invalid).into());
        }
        c.pos += 1;
    }
}

/// Names the cause of a byte that `field` could not take.
fn misfit(
    b: u8,
    field: Field,
    at_start: bool,
    complete: bool,
    invalid: fn(Field) -> ParseError,
) -> ParseError {
    match b {
        b'\n' => ParseError::V1BareLf,
        b' ' if at_start => ParseError::V1Spacing { field },
        b'\r' if at_start => ParseError::V1MissingField { field },
        // A whole field, then the line ends: the next field is missing.
        b'\r' if complete => ParseError::V1MissingField {
            field: match field {
                Field::Protocol => Field::SourceAddress,
                Field::SourceAddress => Field::DestinationAddress,
                Field::DestinationAddress => Field::SourcePort,
                Field::SourcePort | Field::DestinationPort => Field::DestinationPort,
            },
        },
        // Only the destination port ends in CR, so a space after it means more fields.
        b' ' if complete => ParseError::V1LineEnd,
        _ => invalid(field),
    }
}

/// A dotted-quad IPv4 address: four decimal octets 0..=255 without leading zeros (spec: "to
/// avoid any possible confusion with octal numbers").
#[derive(Default, Clone, Copy)]
struct V4 {
    octets: [u8; 4],
    /// Octets already closed by a dot.
    done: usize,
    /// Digits of the octet in progress, and its value.
    digits: u8,
    value: u16,
}

impl V4 {
    /// The octets so far, if they make a whole address.
    fn address(&self) -> Option<Ipv4Addr> {
        (self.done == 3 && self.digits > 0).then(|| {
            let mut octets = self.octets;
            octets[3] = self.value as u8;
            Ipv4Addr::from(octets)
        })
    }
}

impl Token for V4 {
    type Value = Ipv4Addr;

    fn push(&mut self, b: u8) -> bool {
        match b {
            b'0'..=b'9' => {
                // A zero can only stand alone.
                if self.digits == 1 && self.value == 0 {
                    return false;
                }
                self.value = self.value * 10 + u16::from(b - b'0');
                self.digits += 1;
                self.value <= 255
            }
            b'.' if self.digits > 0 && self.done < 3 => {
                self.octets[self.done] = self.value as u8;
                self.done += 1;
                self.digits = 0;
                self.value = 0;
                true
            }
            _ => false,
        }
    }

    fn finish(&self, _: &[u8]) -> Option<Ipv4Addr> {
        self.address()
    }

    fn invalid(field: Field) -> ParseError {
        ParseError::V1Address {
            field,
            family: "IPv4",
        }
    }
}

/// An IPv6 address in RFC 4291 §2.2 text form: up to eight groups of 1–4 hex digits, one `::`
/// standing for one or more zero groups, and optionally a dotted IPv4 address as the last two
/// groups (what `inet_ntop`, and so HAProxy, writes for `::ffff:a.b.c.d`). This is exactly what
/// std's `Ipv6Addr` parser accepts; the state machine below only decides whether the text so
/// far can still become such an address.
#[derive(Default, Clone, Copy)]
struct V6 {
    /// Groups closed by a colon, before and after the `::`.
    groups: u8,
    /// Whether the `::` has been seen.
    double: bool,
    /// Colons right after the last group (or at the very start): 0, 1 or 2.
    colons: u8,
    /// Hex digits of the group in progress.
    digits: u8,
    /// Whether they are all decimal, and their decimal value: the group may be the first
    /// octet of an embedded IPv4 address.
    decimal: bool,
    value: u16,
    /// The embedded IPv4 address, once a dot has been seen.
    tail: Option<V4>,
}

impl Token for V6 {
    type Value = Ipv6Addr;

    fn push(&mut self, b: u8) -> bool {
        if let Some(tail) = &mut self.tail {
            return tail.push(b);
        }
        // Without `::` the address has exactly eight groups; with it, at most seven written
        // ones (it stands for at least one).
        let most = if self.double { 7 } else { 8 };
        match b {
            b':' if self.digits > 0 => {
                self.groups += 1;
                self.digits = 0;
                self.colons = 1;
                // Another group must follow, or `::` (which needs at most seven before it).
                self.groups < most
            }
            b':' if self.colons == 1 && !self.double => {
                self.double = true;
                self.colons = 2;
                true
            }
            // The very start: a leading colon, which must become `::`.
            b':' => {
                let start = self.groups == 0 && self.colons == 0 && !self.double;
                self.colons = 1;
                start
            }
            b if b.is_ascii_hexdigit() => {
                if self.digits == 0 {
                    // A single leading colon cannot start a group (`:1`).
                    if self.colons == 1 && self.groups == 0 {
                        return false;
                    }
                    if self.groups + 1 > most {
                        return false;
                    }
                    self.decimal = true;
                    self.value = 0;
                } else if self.digits == 4 {
                    return false;
                }
                self.digits += 1;
                self.colons = 0;
                if self.decimal && b.is_ascii_digit() {
                    self.value = self.value * 10 + u16::from(b - b'0');
                } else {
                    self.decimal = false;
                }
                true
            }
            b'.' => {
                // The group in progress was the first octet of an IPv4 address, which takes
                // the last two groups: groups 7 and 8 without `::`, anywhere leaving room for
                // the `::` with it.
                let octet = self.digits > 0
                    && self.decimal
                    && self.value <= 255
                    && (self.digits == 1 || self.value >= 10u16.pow(u32::from(self.digits) - 1));
                let fits = if self.double {
                    self.groups + 2 <= 7
                } else {
                    self.groups == 6
                };
                if !(octet && fits) {
                    return false;
                }
                self.tail = Some(V4 {
                    octets: [self.value as u8, 0, 0, 0],
                    done: 1,
                    digits: 0,
                    value: 0,
                });
                true
            }
            _ => false,
        }
    }

    fn finish(&self, text: &[u8]) -> Option<Ipv6Addr> {
        // `push` let only ASCII through.
        std::str::from_utf8(text).ok()?.parse().ok()
    }

    fn invalid(field: Field) -> ParseError {
        ParseError::V1Address {
            field,
            family: "IPv6",
        }
    }
}

/// A port: decimal 0..=65535 without leading zeros.
#[derive(Default)]
struct Port {
    digits: u8,
    value: u32,
}

impl Token for Port {
    type Value = u16;

    fn push(&mut self, b: u8) -> bool {
        if !b.is_ascii_digit() || (self.digits == 1 && self.value == 0) {
            return false;
        }
        self.value = self.value * 10 + u32::from(b - b'0');
        self.digits += 1;
        self.value <= u32::from(u16::MAX)
    }

    fn finish(&self, _: &[u8]) -> Option<u16> {
        (self.digits > 0).then_some(self.value as u16)
    }

    fn invalid(field: Field) -> ParseError {
        ParseError::V1Port { field }
    }
}

/// Writes a v1 header for `addresses` (`(source, destination)`; None → `PROXY UNKNOWN\r\n`)
/// into `out`, returns its length. v1 is TCP only, so there is no transport to give. Mixed
/// families are written as `TCP6` (the IPv4 side mapped); IPv4-mapped addresses on both sides
/// as `TCP4`. IPv6 addresses are written in RFC 5952 form and all in hex (`::ffff:102:304`,
/// not `::ffff:1.2.3.4`): the spec describes only hex groups.
pub fn encode(addresses: Option<(SocketAddr, SocketAddr)>, out: &mut [u8; MAX_ENCODED]) -> usize {
    let mut w = Writer { out, len: 0 };
    match addresses.map(|(s, d)| super::pair(s, d)) {
        None => w.put(b"PROXY UNKNOWN\r\n"),
        Some(Pair::V4(s, d)) => {
            w.put(b"PROXY TCP4 ");
            w.ipv4(*s.ip());
            w.put(b" ");
            w.ipv4(*d.ip());
            w.ports(s.port(), d.port());
        }
        Some(Pair::V6(s, d)) => {
            w.put(b"PROXY TCP6 ");
            w.ipv6(*s.ip());
            w.put(b" ");
            w.ipv6(*d.ip());
            w.ports(s.port(), d.port());
        }
    }
    w.len
}

/// Appends to the output buffer; the longest line (104 bytes) fits, so it never runs out.
struct Writer<'a> {
    out: &'a mut [u8; MAX_ENCODED],
    len: usize,
}

impl Writer<'_> {
    fn put(&mut self, bytes: &[u8]) {
        self.out[self.len..self.len + bytes.len()].copy_from_slice(bytes);
        self.len += bytes.len();
    }

    fn byte(&mut self, b: u8) {
        self.out[self.len] = b;
        self.len += 1;
    }

    /// `n` in decimal, no leading zeros.
    fn decimal(&mut self, n: u16) {
        let mut digits = [0u8; 5];
        let mut i = digits.len();
        let mut n = n;
        loop {
            i -= 1;
            digits[i] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        self.put(&digits[i..]);
    }

    /// `n` in lowercase hex, no leading zeros.
    fn hex(&mut self, n: u16) {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut started = false;
        for shift in [12, 8, 4, 0] {
            let digit = (n >> shift) & 0xf;
            if digit != 0 || started || shift == 0 {
                self.byte(HEX[usize::from(digit)]);
                started = true;
            }
        }
    }

    fn ipv4(&mut self, ip: Ipv4Addr) {
        for (i, octet) in ip.octets().into_iter().enumerate() {
            if i > 0 {
                self.byte(b'.');
            }
            self.decimal(u16::from(octet));
        }
    }

    /// RFC 5952: lowercase, no leading zeros, the longest run of two or more zero groups (the
    /// first of equals) as `::`.
    fn ipv6(&mut self, ip: Ipv6Addr) {
        let groups = ip.segments();
        let (mut run_start, mut run_len) = (0, 0);
        let mut i = 0;
        while i < 8 {
            let start = i;
            while i < 8 && groups[i] == 0 {
                i += 1;
            }
            if i - start > run_len {
                (run_start, run_len) = (start, i - start);
            }
            i += 1;
        }
        if run_len < 2 {
            // `::` never stands for a single group (RFC 5952 §4.2.2).
            run_len = 0;
        }
        let mut i = 0;
        while i < 8 {
            if run_len > 0 && i == run_start {
                self.put(b"::");
                i += run_len;
                continue;
            }
            if i > 0 && !(run_len > 0 && i == run_start + run_len) {
                self.byte(b':');
            }
            self.hex(groups[i]);
            i += 1;
        }
    }

    fn ports(&mut self, source: u16, destination: u16) {
        self.byte(b' ');
        self.decimal(source);
        self.byte(b' ');
        self.decimal(destination);
        self.put(b"\r\n");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy_protocol::parse as parse_any;

    fn sock(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn tcp(source: &str, destination: &str) -> Addresses {
        Addresses::Proxied {
            source: sock(source),
            destination: sock(destination),
            transport: Transport::Stream,
        }
    }

    fn v1(addresses: Addresses, length: usize) -> Header {
        Header {
            version: Version::V1,
            addresses,
            length,
        }
    }

    #[test]
    fn valid_lines() {
        let rows: &[(&str, Addresses)] = &[
            // The spec's example (§2.1).
            (
                "PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n",
                tcp("192.168.0.1:56324", "192.168.0.11:443"),
            ),
            // The spec's longest lines (§2.1).
            (
                "PROXY TCP4 255.255.255.255 255.255.255.255 65535 65535\r\n",
                tcp("255.255.255.255:65535", "255.255.255.255:65535"),
            ),
            (
                "PROXY TCP6 ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff \
                 ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n",
                tcp(
                    "[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:65535",
                    "[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:65535",
                ),
            ),
            ("PROXY UNKNOWN\r\n", Addresses::Local),
            (
                "PROXY UNKNOWN ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff \
                 ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n",
                Addresses::Local,
            ),
            // Envoy's published vectors, test/extensions/filters/listener/proxy_protocol/
            // proxy_protocol_test.cc (V1Basic, BasicV6, V1Minimal, Fragmented, and
            // WildcardProxyProtocolTest.Basic).
            (
                "PROXY TCP4 1.2.3.4 253.253.253.253 65535 1234\r\n",
                tcp("1.2.3.4:65535", "253.253.253.253:1234"),
            ),
            (
                "PROXY TCP6 1:2:3::4 5:6::7:8 65535 1234\r\n",
                tcp("[1:2:3::4]:65535", "[5:6::7:8]:1234"),
            ),
            (
                "PROXY TCP4 254.254.254.254 1.2.3.4 65535 1234\r\n",
                tcp("254.254.254.254:65535", "1.2.3.4:1234"),
            ),
            (
                "PROXY TCP4 1.2.3.4 254.254.254.254 65535 1234\r\n",
                tcp("1.2.3.4:65535", "254.254.254.254:1234"),
            ),
            // Envoy refuses these two (InvalidSrcAddress, InvalidDstAddress) by its own policy
            // (unicast only); the spec allows any address, and so does this codec.
            (
                "PROXY TCP4 230.0.0.1 10.1.1.3 1234 5678\r\n",
                tcp("230.0.0.1:1234", "10.1.1.3:5678"),
            ),
            (
                "PROXY TCP4 10.1.1.2 0.0.0.0 1234 5678\r\n",
                tcp("10.1.1.2:1234", "0.0.0.0:5678"),
            ),
            // Ports 0, and the zeros the spec allows (a lone 0).
            (
                "PROXY TCP4 0.0.0.0 0.0.0.0 0 0\r\n",
                tcp("0.0.0.0:0", "0.0.0.0:0"),
            ),
            // IPv6 forms: uppercase, leading zeros inside groups, `::` at either end, an
            // embedded IPv4 address (HAProxy's `inet_ntop` writes mapped addresses so).
            (
                "PROXY TCP6 2001:DB8::1 0001:0002:0003:0004:0005:0006:0007:0008 1 2\r\n",
                tcp("[2001:db8::1]:1", "[1:2:3:4:5:6:7:8]:2"),
            ),
            ("PROXY TCP6 :: 1:: 1 2\r\n", tcp("[::]:1", "[1::]:2")),
            (
                "PROXY TCP6 ::ffff:192.0.2.1 1:2:3:4:5:6:1.2.3.4 443 80\r\n",
                tcp("[::ffff:192.0.2.1]:443", "[1:2:3:4:5:6:102:304]:80"),
            ),
            (
                "PROXY TCP6 1:2:3:4:5:6:7:: ::2:3:4:5:6:7:8 1 2\r\n",
                tcp("[1:2:3:4:5:6:7:0]:1", "[0:2:3:4:5:6:7:8]:2"),
            ),
            // UNKNOWN ignores whatever comes before the CRLF.
            (
                "PROXY UNKNOWN anything at all \t\0\x7f\r\n",
                Addresses::Local,
            ),
            ("PROXY UNKNOWN \r\n", Addresses::Local),
        ];
        for (input, addresses) in rows {
            let want = v1(*addresses, input.len());
            assert_eq!(parse(input.as_bytes()), Ok(Some(want)), "{input:?}");
            // Every prefix is a valid start: more, please.
            for end in 0..input.len() {
                assert_eq!(
                    parse_any(&input.as_bytes()[..end]),
                    Ok(None),
                    "{input:?}[..{end}]"
                );
            }
            // The payload that follows is not part of the header.
            let followed = format!("{input}GET / HTTP/1.1\r\n\r\n");
            assert_eq!(parse_any(followed.as_bytes()), Ok(Some(want)), "{input:?}");
        }
    }

    #[test]
    fn invalid_lines() {
        use Field::*;
        use ParseError::*;
        let ipv4 = |field| V1Address {
            field,
            family: "IPv4",
        };
        let ipv6 = |field| V1Address {
            field,
            family: "IPv6",
        };
        let rows: &[(&str, ParseError)] = &[
            // Envoy's published vectors (proxy_protocol_test.cc): MalformedProxyLine,
            // NotEnoughFields, UnsupportedProto, BadPort, NegativePort, PortOutOfRange,
            // BadAddress, AddressVersionsNotMatch, AddressVersionsNotMatch2, V1TooLong,
            // ProxyLineTooLarge.
            ("BOGUS\r\n", NotProxyProtocol { offset: 0 }),
            (
                "PROXY TCP6 1:2:3::4 5:6::7:8 1234\r\nmore data",
                V1MissingField {
                    field: DestinationPort,
                },
            ),
            ("PROXY UDP6 1:2:3::4 5:6::7:8 1234 5678\r\n", V1Protocol),
            (
                "PROXY TCP6 1:2:3::4 5:6::7:8 1234 abc\r\n",
                V1Port {
                    field: DestinationPort,
                },
            ),
            (
                "PROXY TCP6 1:2:3::4 5:6::7:8 -1 1234\r\n",
                V1Port { field: SourcePort },
            ),
            (
                "PROXY TCP6 1:2:3::4 5:6::7:8 66776 1234\r\n",
                V1Port { field: SourcePort },
            ),
            (
                "PROXY TCP6 1::2:3::4 5:6::7:8 1234 5678\r\n",
                ipv6(SourceAddress),
            ),
            (
                "PROXY TCP4 [1:2:3::4] 1.2.3.4 1234 5678\r\n",
                ipv4(SourceAddress),
            ),
            (
                "PROXY TCP4 1.2.3.4 [1:2:3: 1234 4]:5678\r\n",
                ipv4(DestinationAddress),
            ),
            (
                "012345678901234567890123456789012345678901234567890123456789\
                 012345678901234567890123456789012345678901234567890123456789",
                NotProxyProtocol { offset: 0 },
            ),
            // The signature.
            ("PROXY\r\n", NotProxyProtocol { offset: 5 }),
            ("proxy TCP4", NotProxyProtocol { offset: 0 }),
            ("PROXX", NotProxyProtocol { offset: 4 }),
            // The protocol.
            ("PROXY TCP5 1.2.3.4 1.2.3.4 1 2\r\n", V1Protocol),
            ("PROXY tcp4 1.2.3.4 1.2.3.4 1 2\r\n", V1Protocol),
            ("PROXY TCP44 1.2.3.4 1.2.3.4 1 2\r\n", V1Protocol),
            ("PROXY UNKNOWNX\r\n", V1Protocol),
            ("PROXY UDP4", V1Protocol),
            ("PROXY  TCP4", V1Spacing { field: Protocol }),
            ("PROXY \r\n", V1MissingField { field: Protocol }),
            (
                "PROXY TCP4\r\n",
                V1MissingField {
                    field: SourceAddress,
                },
            ),
            // Spacing: exactly one space between fields, none at the end.
            (
                "PROXY TCP4  1.2.3.4 1.2.3.4 1 2\r\n",
                V1Spacing {
                    field: SourceAddress,
                },
            ),
            (
                "PROXY TCP4 1.2.3.4  1.2.3.4 1 2\r\n",
                V1Spacing {
                    field: DestinationAddress,
                },
            ),
            (
                "PROXY TCP4 1.2.3.4 1.2.3.4  1 2\r\n",
                V1Spacing { field: SourcePort },
            ),
            (
                "PROXY TCP4 1.2.3.4 1.2.3.4 1  2\r\n",
                V1Spacing {
                    field: DestinationPort,
                },
            ),
            ("PROXY TCP4 1.2.3.4 1.2.3.4 1 2 \r\n", V1LineEnd),
            ("PROXY TCP4 1.2.3.4 1.2.3.4 1 2 3\r\n", V1LineEnd),
            ("PROXY TCP4\t1.2.3.4 1.2.3.4 1 2\r\n", V1Protocol),
            // Missing fields.
            (
                "PROXY TCP4 1.2.3.4\r\n",
                V1MissingField {
                    field: DestinationAddress,
                },
            ),
            (
                "PROXY TCP4 1.2.3.4 1.2.3.4\r\n",
                V1MissingField { field: SourcePort },
            ),
            (
                "PROXY TCP4 1.2.3.4 1.2.3.4 1\r\n",
                V1MissingField {
                    field: DestinationPort,
                },
            ),
            (
                "PROXY TCP4 1.2.3.4 1.2.3.4 1 \r\n",
                V1MissingField {
                    field: DestinationPort,
                },
            ),
            // Line ends: CRLF only.
            ("PROXY TCP4 1.2.3.4 1.2.3.4 1 2\n", V1BareLf),
            ("PROXY TCP4 1.2.3.4 1.2.3.4 1 2\rX", V1BareCr),
            ("PROXY TCP4 1.2.3.4 1.2.3.4 1 2\r\r\n", V1BareCr),
            ("PROXY UNKNOWN\n", V1BareLf),
            ("PROXY UNKNOWN\r ", V1BareCr),
            ("PROXY UNKNOWN 1.2.3.4\n", V1BareLf),
            ("PROXY TCP4 1.2.3.4\n", V1BareLf),
            ("PROXY \n", V1BareLf),
            // IPv4 addresses: four octets, 0..=255, no leading zeros.
            ("PROXY TCP4 1.2.3 1.2.3.4 1 2\r\n", ipv4(SourceAddress)),
            ("PROXY TCP4 1.2.3.4.5 1.2.3.4 1 2\r\n", ipv4(SourceAddress)),
            ("PROXY TCP4 1.2.3.256 1.2.3.4 1 2\r\n", ipv4(SourceAddress)),
            ("PROXY TCP4 01.2.3.4 1.2.3.4 1 2\r\n", ipv4(SourceAddress)),
            ("PROXY TCP4 1.2.3.00 1.2.3.4 1 2\r\n", ipv4(SourceAddress)),
            ("PROXY TCP4 1..3.4 1.2.3.4 1 2\r\n", ipv4(SourceAddress)),
            ("PROXY TCP4 .1.2.3 1.2.3.4 1 2\r\n", ipv4(SourceAddress)),
            ("PROXY TCP4 1.2.3.4. 1.2.3.4 1 2\r\n", ipv4(SourceAddress)),
            (
                "PROXY TCP4 1.2.3.4 0x1.2.3.4 1 2\r\n",
                ipv4(DestinationAddress),
            ),
            // An IPv6 address under TCP4 and the reverse.
            ("PROXY TCP4 ::1 1.2.3.4 1 2\r\n", ipv4(SourceAddress)),
            (
                "PROXY TCP4 1.2.3.4 ::ffff:1.2.3.4 1 2\r\n",
                ipv4(DestinationAddress),
            ),
            ("PROXY TCP6 1.2.3.4 ::1 1 2\r\n", ipv6(SourceAddress)),
            ("PROXY TCP6 ::1 1.2.3.4 1 2\r\n", ipv6(DestinationAddress)),
            // IPv6 addresses.
            ("PROXY TCP6 1:2:3:4:5:6:7 ::1 1 2\r\n", ipv6(SourceAddress)),
            (
                "PROXY TCP6 1:2:3:4:5:6:7:8:9 ::1 1 2\r\n",
                ipv6(SourceAddress),
            ),
            (
                "PROXY TCP6 1:2:3:4:5:6:7::8 ::1 1 2\r\n",
                ipv6(SourceAddress),
            ),
            ("PROXY TCP6 12345:: ::1 1 2\r\n", ipv6(SourceAddress)),
            ("PROXY TCP6 :1:2:3:4:5:6:7 ::1 1 2\r\n", ipv6(SourceAddress)),
            ("PROXY TCP6 1:: ::: 1 2\r\n", ipv6(DestinationAddress)),
            ("PROXY TCP6 1: ::1 1 2\r\n", ipv6(SourceAddress)),
            ("PROXY TCP6 g:: ::1 1 2\r\n", ipv6(SourceAddress)),
            ("PROXY TCP6 fe80::1%eth0 ::1 1 2\r\n", ipv6(SourceAddress)),
            ("PROXY TCP6 [::1] ::1 1 2\r\n", ipv6(SourceAddress)),
            (
                "PROXY TCP6 ::ffff:01.2.3.4 ::1 1 2\r\n",
                ipv6(SourceAddress),
            ),
            ("PROXY TCP6 ::ffff:1.2.3 ::1 1 2\r\n", ipv6(SourceAddress)),
            ("PROXY TCP6 ::1.2.3.4:5 ::1 1 2\r\n", ipv6(SourceAddress)),
            (
                "PROXY TCP6 1:2:3:4:5:1.2.3.4 ::1 1 2\r\n",
                ipv6(SourceAddress),
            ),
            (
                "PROXY TCP6 1::2:3:4:5:6:1.2.3.4 ::1 1 2\r\n",
                ipv6(SourceAddress),
            ),
            // Ports: 0..=65535, no leading zeros.
            (
                "PROXY TCP4 1.2.3.4 1.2.3.4 65536 2\r\n",
                V1Port { field: SourcePort },
            ),
            (
                "PROXY TCP4 1.2.3.4 1.2.3.4 080 2\r\n",
                V1Port { field: SourcePort },
            ),
            (
                "PROXY TCP4 1.2.3.4 1.2.3.4 00 2\r\n",
                V1Port { field: SourcePort },
            ),
            (
                "PROXY TCP4 1.2.3.4 1.2.3.4 1 99999\r\n",
                V1Port {
                    field: DestinationPort,
                },
            ),
            (
                "PROXY TCP4 1.2.3.4 1.2.3.4 1 +2\r\n",
                V1Port {
                    field: DestinationPort,
                },
            ),
        ];
        for (input, want) in rows {
            assert_eq!(parse_any(input.as_bytes()), Err(*want), "{input:?}");
        }
        // Envoy's V1TooLong: the line goes on in spaces after the destination port.
        let long = format!("PROXY TCP4 1.2.3.4 2.3.4.5 100 100{}", " ".repeat(256));
        assert_eq!(parse_any(long.as_bytes()), Err(V1LineEnd));
    }

    /// The error comes from the byte that makes the line impossible, with nothing after it.
    #[test]
    fn refused_at_the_first_impossible_byte() {
        // Lines that are still consistent, each prefix too; one impossible byte more refuses.
        let rows: &[&str] = &[
            "",
            "PROX",
            "PROXY ",
            "PROXY T",
            "PROXY TCP",
            "PROXY U",
            "PROXY UNKNOWN",
            "PROXY UNKNOWN\r",
            "PROXY TCP4 1.2.3.25",
            "PROXY TCP4 1.2.3.4",
            "PROXY TCP4 0",
            "PROXY TCP4 1.2.3.4 1.2.3.4 6553",
            "PROXY TCP4 1.2.3.4 1.2.3.4 0",
            "PROXY TCP4 1.2.3.4 1.2.3.4 0 65535",
            "PROXY TCP4 1.2.3.4 1.2.3.4 0 65535\r",
            "PROXY TCP6 :",
            "PROXY TCP6 ::",
            "PROXY TCP6 1234",
            "PROXY TCP6 1::2:",
            "PROXY TCP6 1:2:3:4:5:6:7:8",
            "PROXY TCP6 1:2:3:4:5:6:1.",
            "PROXY TCP6 ::ffff:1.2.3.4",
            "PROXY TCP6 ::ffff:255",
        ];
        for line in rows {
            let bytes = line.as_bytes();
            for end in 0..=bytes.len() {
                assert_eq!(parse_any(&bytes[..end]), Ok(None), "{:?}", &line[..end]);
            }
            let mut bad = bytes.to_vec();
            bad.push(b'!');
            assert!(parse_any(&bad).is_err(), "{line:?}!");
        }
        // And each of these fails at its last byte.
        let bad: &[&str] = &[
            "PROXY TCP4 1.2.3.256",
            "PROXY TCP4 1.2.3.4 1.2.3.4 65536",
            "PROXY TCP4 01",
            "PROXY TCP4 1.2.3.4 1.2.3.4 00",
            "PROXY TCP6 1:2:3:4:5:6:7:8:",
            "PROXY TCP6 1::2::",
            "PROXY TCP6 :::",
            "PROXY TCP6 12345",
            "PROXY TCP6 1:2:3:4:5:1.",
            "PROXY TCP6 ::ffff:1.2.3.4.",
            // (`256` alone is a hex group; the dot makes it an octet.)
            "PROXY TCP6 ::ffff:256.",
            "PROXY TCP6 :1",
            "PROXY TCP4 :",
            "PROXY TCP6 .",
            "PROXY TCP7",
            "PROXY UNKNOWN\r\r",
        ];
        for line in bad {
            let bytes = line.as_bytes();
            assert_eq!(
                parse_any(&bytes[..bytes.len() - 1]),
                Ok(None),
                "{line:?} without its last byte"
            );
            assert!(parse_any(bytes).is_err(), "{line:?}");
        }
    }

    #[test]
    fn line_of_107_bytes_at_most() {
        // UNKNOWN with filler is the one kind of line that can run long.
        let mut line = b"PROXY UNKNOWN ".to_vec();
        line.resize(V1_MAX_LENGTH - 2, b'x');
        line.extend_from_slice(b"\r\n");
        assert_eq!(line.len(), 107);
        assert_eq!(parse(&line), Ok(Some(v1(Addresses::Local, 107))));
        // 107 bytes and no CRLF (the CR would be the 107th, the LF the 108th): refused.
        let mut long = line[..V1_MAX_LENGTH - 2].to_vec();
        long.push(b'x');
        long.extend_from_slice(b"\r\n");
        assert_eq!(parse(&long[..106]), Ok(None));
        assert_eq!(parse(&long[..107]), Err(ParseError::V1TooLong));
        assert_eq!(parse(&long), Err(ParseError::V1TooLong));
        assert_eq!(ParseError::V1TooLong.reason(), "malformed");
    }

    #[test]
    fn ipv6_prefixes_of_valid_addresses_are_never_refused() {
        // Every address std accepts: each prefix must be accepted byte by byte, and the whole
        // text must decode to what std decodes.
        let mut texts: Vec<String> = Vec::new();
        fastrand::seed(11);
        for _ in 0..2000 {
            // Zero groups often, so `::` appears at every position.
            let mut segments = [0u16; 8];
            for s in &mut segments {
                *s = match fastrand::u8(0..4) {
                    0 | 1 => 0,
                    2 => fastrand::u16(0..16),
                    _ => fastrand::u16(..),
                };
            }
            let ip = Ipv6Addr::from(segments);
            let [a, b, c, d, e, f, _, _] = segments;
            let o = ip.octets();
            let (o1, o2, o3, o4) = (o[12], o[13], o[14], o[15]);
            texts.push(ip.to_string());
            texts.push(ip.to_string().to_uppercase());
            texts.push(
                segments
                    .iter()
                    .map(|g| format!("{g:04X}"))
                    .collect::<Vec<_>>()
                    .join(":"),
            );
            texts.push(format!(
                "{a:x}:{b:x}:{c:x}:{d:x}:{e:x}:{f:x}:{o1}.{o2}.{o3}.{o4}"
            ));
            texts.push(format!("::{e:x}:{f:x}:{o1}.{o2}.{o3}.{o4}"));
            texts.push(format!("{a:x}::{o1}.{o2}.{o3}.{o4}"));
            texts.push(format!("::ffff:{o1}.{o2}.{o3}.{o4}"));
            let mut w = [0u8; MAX_ENCODED];
            let mut writer = Writer {
                out: &mut w,
                len: 0,
            };
            writer.ipv6(ip);
            let len = writer.len;
            texts.push(String::from_utf8(w[..len].to_vec()).unwrap());
        }
        // And every string of up to 7 bytes over a small alphabet that std accepts.
        let alphabet = b"0a:.1";
        let mut stack = vec![String::new()];
        while let Some(s) = stack.pop() {
            if s.parse::<Ipv6Addr>().is_ok() {
                texts.push(s.clone());
            }
            if s.len() < 7 {
                for &b in alphabet {
                    stack.push(format!("{s}{}", b as char));
                }
            }
        }
        for text in &texts {
            let Ok(want) = text.parse::<Ipv6Addr>() else {
                continue;
            };
            let mut token = V6::default();
            for (i, b) in text.bytes().enumerate() {
                assert!(token.push(b), "{text:?} refused at byte {i}");
            }
            assert_eq!(token.finish(text.as_bytes()), Some(want), "{text:?}");
        }
    }

    /// A text that completes what `token` has taken so far into a whole address, built from
    /// its state alone.
    fn completion(token: &V6) -> String {
        if let Some(tail) = &token.tail {
            let mut rest = String::new();
            if tail.digits == 0 {
                rest.push('0');
            }
            for _ in tail.done..3 {
                rest.push_str(".0");
            }
            return rest;
        }
        let mut rest = String::new();
        let mut groups = token.groups;
        match (token.digits, token.colons) {
            // Nothing yet, or a leading colon: make it `::`.
            (0, 0) if groups == 0 && !token.double => return "::".into(),
            (0, 1) if groups == 0 => return ":".into(),
            // After `::`: whole already.
            (0, 2) => return rest,
            // After a group's colon: another group.
            (0, _) => rest.push('0'),
            _ => {}
        }
        groups += 1;
        if !token.double {
            for _ in groups..8 {
                rest.push_str(":0");
            }
        }
        rest
    }

    /// The other half of exactness: whatever the state machine lets through can still
    /// become an address (so "more, please" is never said to a line that cannot be valid).
    #[test]
    fn ipv6_prefixes_it_accepts_can_be_completed() {
        let alphabet = b"0a:.1";
        let mut stack = vec![String::new()];
        let mut checked = 0;
        while let Some(s) = stack.pop() {
            let mut token = V6::default();
            if !s.bytes().all(|b| token.push(b)) {
                continue;
            }
            let whole = format!("{s}{}", completion(&token));
            assert!(
                whole.parse::<Ipv6Addr>().is_ok(),
                "{s:?} accepted, {whole:?} is not an address"
            );
            checked += 1;
            if s.len() < 9 {
                for &b in alphabet {
                    stack.push(format!("{s}{}", b as char));
                }
            }
        }
        assert!(checked > 10_000, "{checked}");
        // And longer ones, from the valid texts' prefixes with one byte changed.
        fastrand::seed(3);
        for _ in 0..20_000 {
            let ip = Ipv6Addr::from(fastrand::u128(..) & 0xffff_0000_ffff_ffff_0000_ffff_0000_ffff);
            let o = ip.octets();
            let mut text = if fastrand::bool() {
                ip.to_string().into_bytes()
            } else {
                format!(
                    "::{:x}:{}.{}.{}.{}",
                    fastrand::u16(..),
                    o[12],
                    o[13],
                    o[14],
                    o[15]
                )
                .into_bytes()
            };
            let at = fastrand::usize(..text.len());
            text[at] = alphabet[fastrand::usize(..alphabet.len())];
            // The state before the first refused byte (a refused push may leave it changed;
            // the parser stops there).
            let mut token = V6::default();
            let mut taken = 0;
            while taken < text.len() {
                let mut next = token;
                if !next.push(text[taken]) {
                    break;
                }
                token = next;
                taken += 1;
            }
            let s = std::str::from_utf8(&text[..taken]).unwrap();
            let whole = format!("{s}{}", completion(&token));
            assert!(
                whole.parse::<Ipv6Addr>().is_ok(),
                "{s:?} accepted, {whole:?} is not an address"
            );
        }
    }

    #[test]
    fn ipv6_formatting_is_rfc5952() {
        let rows: &[(&str, &str)] = &[
            ("::", "::"),
            ("::1", "::1"),
            ("1::", "1::"),
            ("2001:db8:0:0:1:0:0:1", "2001:db8::1:0:0:1"),
            ("2001:db8:0:1:1:1:1:1", "2001:db8:0:1:1:1:1:1"),
            ("2001:0:0:1:0:0:0:1", "2001:0:0:1::1"),
            ("1:2:3:4:5:6:7:8", "1:2:3:4:5:6:7:8"),
            (
                "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
                "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
            ),
            // Mapped addresses stay in hex (std's Display would write ::ffff:1.2.3.4).
            ("::ffff:1.2.3.4", "::ffff:102:304"),
            ("::1.2.3.4", "::102:304"),
        ];
        for (ip, want) in rows {
            let mut out = [0u8; MAX_ENCODED];
            let mut w = Writer {
                out: &mut out,
                len: 0,
            };
            w.ipv6(ip.parse().unwrap());
            let len = w.len;
            assert_eq!(std::str::from_utf8(&out[..len]).unwrap(), *want, "{ip}");
        }
        // Otherwise it is what std writes.
        fastrand::seed(5);
        for _ in 0..2000 {
            let mut segments = [0u16; 8];
            for s in &mut segments {
                *s = if fastrand::bool() {
                    0
                } else {
                    fastrand::u16(..)
                };
            }
            let ip = Ipv6Addr::from(segments);
            if ip.to_ipv4_mapped().is_some() || ip.to_ipv4().is_some() {
                continue;
            }
            let mut out = [0u8; MAX_ENCODED];
            let mut w = Writer {
                out: &mut out,
                len: 0,
            };
            w.ipv6(ip);
            let len = w.len;
            assert_eq!(std::str::from_utf8(&out[..len]).unwrap(), ip.to_string());
        }
    }

    #[test]
    fn encodes() {
        let rows: &[(Option<(&str, &str)>, &str)] = &[
            (None, "PROXY UNKNOWN\r\n"),
            (
                Some(("192.168.0.1:56324", "192.168.0.11:443")),
                "PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n",
            ),
            (
                Some(("[1:2:3::4]:65535", "[5:6::7:8]:1234")),
                "PROXY TCP6 1:2:3::4 5:6::7:8 65535 1234\r\n",
            ),
            // Mixed families: both IPv6, the IPv4 side mapped.
            (
                Some(("192.0.2.1:1000", "[2001:db8::1]:443")),
                "PROXY TCP6 ::ffff:c000:201 2001:db8::1 1000 443\r\n",
            ),
            // Mapped on both sides: the client is IPv4.
            (
                Some(("[::ffff:192.0.2.1]:1000", "[::ffff:10.0.0.1]:443")),
                "PROXY TCP4 192.0.2.1 10.0.0.1 1000 443\r\n",
            ),
            // Mapped on one side, IPv4 on the other: IPv4 too.
            (
                Some(("[::ffff:192.0.2.1]:0", "10.0.0.1:0")),
                "PROXY TCP4 192.0.2.1 10.0.0.1 0 0\r\n",
            ),
            // The longest line written: 104 bytes.
            (
                Some((
                    "[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:65535",
                    "[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:65535",
                )),
                "PROXY TCP6 ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff \
                 ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n",
            ),
        ];
        for (addresses, want) in rows {
            let mut out = [0u8; MAX_ENCODED];
            let len = encode(addresses.map(|(s, d)| (sock(s), sock(d))), &mut out);
            assert_eq!(std::str::from_utf8(&out[..len]).unwrap(), *want);
        }
    }
}
