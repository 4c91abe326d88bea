//! PROXY protocol v2: the binary header (spec §2.2).
//!
//! 12 bytes of signature, a version/command byte, a family/transport byte, a 16-bit declared
//! length, then that many bytes: the address block (12 bytes for AF_INET, 36 for AF_INET6, 216
//! for AF_UNIX) and TLVs (type, 16-bit length, value) up to the declared end.
//!
//! Each byte is checked as soon as it arrives: the signature byte by byte, the version and
//! command at byte 13, the family at 14, the address block against the declared length at 16,
//! and each TLV's bounds as soon as its own 3-byte header is in, so a header that cannot be
//! valid is refused without waiting for the rest of it. Only the addresses and the CRC32c need
//! the whole header. TLVs are skipped, except PP2_TYPE_CRC32C, which is checked when present.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};

use crc::{CRC_32_ISCSI, Crc, Table};

use super::{Addresses, Header, MAX_ENCODED, Pair, ParseError, Transport, Version};

/// `\r\n\r\n\0\r\nQUIT\n`.
const SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";

/// The fixed part: signature, version/command, family/transport, length.
const FIXED: usize = 16;

/// Version 2 in the high nibble; LOCAL (0) and PROXY (1) in the low one.
const LOCAL: u8 = 0x20;
const PROXY: u8 = 0x21;

/// The TLV type of the header's checksum (spec §2.2.3).
const PP2_TYPE_CRC32C: u8 = 0x03;

/// CRC32c (Castagnoli, RFC 4960 Appendix B), as the spec asks. The 16-entry tables (16 KiB)
/// make it about 1 ns a byte; a static, so they are built once at compile time.
static CRC32C: Crc<u32, Table<16>> = Crc::<u32, Table<16>>::new(&CRC_32_ISCSI);

/// A family: its name and the size of its address block.
fn family(nibble: u8) -> Option<(&'static str, usize)> {
    match nibble {
        0 => Some(("AF_UNSPEC", 0)),
        1 => Some(("AF_INET", 12)),
        2 => Some(("AF_INET6", 36)),
        3 => Some(("AF_UNIX", 216)),
        _ => None,
    }
}

/// Parses a v2 header at the start of `input` (which starts with `\r`).
pub(super) fn parse(input: &[u8]) -> Result<Option<Header>, ParseError> {
    let seen = input.len().min(SIGNATURE.len());
    if let Some(offset) = (0..seen).find(|&i| input[i] != SIGNATURE[i]) {
        return Err(ParseError::NotProxyProtocol { offset });
    }
    let Some(&ver_cmd) = input.get(12) else {
        return Ok(None);
    };
    if ver_cmd >> 4 != 2 {
        return Err(ParseError::V2Version(ver_cmd >> 4));
    }
    let local = match ver_cmd & 0x0f {
        0 => true,
        1 => false,
        command => return Err(ParseError::V2Command(command)),
    };
    let Some(&fam) = input.get(13) else {
        return Ok(None);
    };
    let (family_nibble, transport_nibble) = (fam >> 4, fam & 0x0f);
    let known = family(family_nibble);
    if !local {
        // LOCAL ignores the family byte (spec: "discard the protocol block including the
        // family"); PROXY must name one the spec defines.
        if known.is_none() {
            return Err(ParseError::V2Family(family_nibble));
        }
        if transport_nibble > 2 {
            return Err(ParseError::V2Transport(transport_nibble));
        }
    }
    let Some(&[hi, lo]) = input.get(14..16) else {
        return Ok(None);
    };
    let declared = u16::from_be_bytes([hi, lo]);
    let end = FIXED + usize::from(declared);

    // Where the TLVs start: after the addresses. A PROXY header must hold its family's; a
    // LOCAL one whose block cannot (or whose family is unknown) is skipped unread, since its
    // contents mean nothing to us.
    let tlvs = match known {
        Some((_, size)) if usize::from(declared) >= size => FIXED + size,
        Some((name, size)) if !local => {
            return Err(ParseError::V2AddressTooShort {
                length: declared,
                family: name,
                needed: size as u16,
            });
        }
        _ => end,
    };

    // Walk the TLV headers as far as the input goes: a TLV that overruns the declared end is
    // refused as soon as its own header has arrived.
    let mut at = tlvs;
    let mut crc = None;
    while at < end {
        if end - at < 3 {
            return Err(ParseError::V2TlvTruncated {
                offset: at,
                remaining: end - at,
            });
        }
        let Some(&[kind, hi, lo]) = input.get(at..at + 3) else {
            return Ok(None);
        };
        let length = u16::from_be_bytes([hi, lo]);
        let next = at + 3 + usize::from(length);
        if next > end {
            return Err(ParseError::V2TlvOverrun { offset: at, kind });
        }
        if kind == PP2_TYPE_CRC32C {
            if length != 4 {
                return Err(ParseError::V2Crc32cLength { length });
            }
            if crc.is_some() {
                return Err(ParseError::V2Crc32cDuplicate);
            }
            crc = Some(at + 3);
        }
        at = next;
    }

    let Some(header) = input.get(..end) else {
        return Ok(None);
    };
    if let Some(field) = crc {
        check_crc32c(header, field)?;
    }
    let transport = match transport_nibble {
        1 => Some(Transport::Stream),
        2 => Some(Transport::Datagram),
        _ => None,
    };
    let addresses = match (local, family_nibble, transport) {
        (false, 1, Some(transport)) => {
            let a = &header[FIXED..FIXED + 12];
            super::proxied_v4(
                (ipv4(&a[0..4]), port(&a[8..10])),
                (ipv4(&a[4..8]), port(&a[10..12])),
                transport,
            )
        }
        (false, 2, Some(transport)) => {
            let a = &header[FIXED..FIXED + 36];
            super::proxied_v6(
                (ipv6(&a[0..16]), port(&a[32..34])),
                (ipv6(&a[16..32]), port(&a[34..36])),
                transport,
            )
        }
        // LOCAL, UNSPEC family or transport, AF_UNIX: the peer is the client.
        _ => Addresses::Local,
    };
    Ok(Some(Header {
        version: Version::V2,
        addresses,
        length: end,
    }))
}

/// Checks the CRC32c whose 4-byte value starts at `field`: computed over the whole header
/// with that value zeroed (spec §2.2.3), and stored in network byte order.
fn check_crc32c(header: &[u8], field: usize) -> Result<(), ParseError> {
    let value = &header[field..field + 4];
    let received = u32::from_be_bytes([value[0], value[1], value[2], value[3]]);
    let mut digest = CRC32C.digest();
    digest.update(&header[..field]);
    digest.update(&[0; 4]);
    digest.update(&header[field + 4..]);
    let computed = digest.finalize();
    if computed == received {
        Ok(())
    } else {
        Err(ParseError::V2Crc32cMismatch { received, computed })
    }
}

fn ipv4(b: &[u8]) -> Ipv4Addr {
    Ipv4Addr::new(b[0], b[1], b[2], b[3])
}

fn ipv6(b: &[u8]) -> Ipv6Addr {
    let mut octets = [0u8; 16];
    octets.copy_from_slice(b);
    Ipv6Addr::from(octets)
}

fn port(b: &[u8]) -> u16 {
    u16::from_be_bytes([b[0], b[1]])
}

/// Writes a v2 header: the PROXY command with `addresses` (`(source, destination)`) and
/// `transport`, or LOCAL with no address (None); returns its length (16, 28 or 52). Mixed
/// families are written as AF_INET6 (the IPv4 side mapped); IPv4-mapped addresses on both sides
/// as AF_INET.
pub fn encode(
    addresses: Option<(SocketAddr, SocketAddr)>,
    transport: Transport,
    out: &mut [u8; MAX_ENCODED],
) -> usize {
    out[..12].copy_from_slice(&SIGNATURE);
    let transport = match transport {
        Transport::Stream => 0x1,
        Transport::Datagram => 0x2,
    };
    let block: u16 = match addresses.map(|(s, d)| super::pair(s, d)) {
        None => {
            // LOCAL with AF_UNSPEC and no addresses, as the spec asks of senders.
            out[12] = LOCAL;
            out[13] = 0x00;
            0
        }
        Some(Pair::V4(s, d)) => {
            out[12] = PROXY;
            out[13] = 0x10 | transport;
            out[16..20].copy_from_slice(&s.ip().octets());
            out[20..24].copy_from_slice(&d.ip().octets());
            out[24..26].copy_from_slice(&s.port().to_be_bytes());
            out[26..28].copy_from_slice(&d.port().to_be_bytes());
            12
        }
        Some(Pair::V6(s, d)) => {
            out[12] = PROXY;
            out[13] = 0x20 | transport;
            out[16..32].copy_from_slice(&s.ip().octets());
            out[32..48].copy_from_slice(&d.ip().octets());
            out[48..50].copy_from_slice(&s.port().to_be_bytes());
            out[50..52].copy_from_slice(&d.port().to_be_bytes());
            36
        }
    };
    out[14..16].copy_from_slice(&block.to_be_bytes());
    FIXED + usize::from(block)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy_protocol::parse as parse_any;

    const MORE_DATA: &[u8] = b"more data";

    fn sock(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn proxied(source: &str, destination: &str, transport: Transport) -> Addresses {
        Addresses::Proxied {
            source: sock(source),
            destination: sock(destination),
            transport,
        }
    }

    /// A header from its parts: the signature, `ver_cmd`, `fam`, the declared length of `rest`.
    fn header(ver_cmd: u8, fam: u8, rest: &[u8]) -> Vec<u8> {
        let mut h = SIGNATURE.to_vec();
        h.push(ver_cmd);
        h.push(fam);
        h.extend_from_slice(&(rest.len() as u16).to_be_bytes());
        h.extend_from_slice(rest);
        h
    }

    /// CRC32c bit by bit, independently of the `crc` crate: reflected polynomial 0x82F63B78,
    /// initial value and final XOR all ones.
    fn reference_crc32c(bytes: &[u8]) -> u32 {
        let mut crc = !0u32;
        for &b in bytes {
            crc ^= u32::from(b);
            for _ in 0..8 {
                crc = if crc & 1 != 0 {
                    (crc >> 1) ^ 0x82F6_3B78
                } else {
                    crc >> 1
                };
            }
        }
        !crc
    }

    /// `h` with a CRC32c TLV appended (and its length updated), the checksum filled in.
    fn with_crc(mut h: Vec<u8>) -> Vec<u8> {
        h.extend_from_slice(&[PP2_TYPE_CRC32C, 0, 4, 0, 0, 0, 0]);
        let declared = (h.len() - FIXED) as u16;
        h[14..16].copy_from_slice(&declared.to_be_bytes());
        let crc = reference_crc32c(&h);
        let at = h.len() - 4;
        h[at..].copy_from_slice(&crc.to_be_bytes());
        h
    }

    // Envoy's published vectors, from envoyproxy/envoy
    // test/extensions/filters/listener/proxy_protocol/proxy_protocol_test.cc, each with the
    // test's name; the payload after the header ("more data", "moredata" or "DATA") is left
    // off and appended by the tests.

    /// V2Basic: a well-formed IPv4/TCP header, no extensions.
    const ENVOY_V2_BASIC: &[u8] = &[
        0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a, 0x21, 0x11, 0x00,
        0x0c, 0x01, 0x02, 0x03, 0x04, 0x00, 0x01, 0x01, 0x02, 0x03, 0x05, 0x00, 0x02,
    ];

    /// V2BasicV6: a well-formed IPv6/TCP header, no extensions.
    const ENVOY_V2_BASIC_V6: &[u8] = &[
        0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a, 0x21, 0x22, 0x00,
        0x24, 0x00, 0x01, 0x00, 0x02, 0x00, 0x03, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
        0x00, 0x04, 0x00, 0x01, 0x01, 0x00, 0x02, 0x00, 0x00, 0x03, 0x00, 0x00, 0x00, 0x00, 0x00,
        0x00, 0x00, 0x00, 0x00, 0x08, 0x00, 0x02,
    ];

    /// V2LocalConnection: LOCAL, no address, no extensions.
    const ENVOY_V2_LOCAL: &[u8] = &[
        0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a, 0x20, 0x00, 0x00,
        0x00,
    ];

    /// V2LocalConnectionExtension: LOCAL, no address, one TLV (0x00, 0x00, 0x01, 0xff).
    const ENVOY_V2_LOCAL_TLV: &[u8] = &[
        0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a, 0x20, 0x00, 0x00,
        0x04, 0x00, 0x00, 0x01, 0xff,
    ];

    /// V2LocalConnectionFilterState: "sampled from an AWS NLB healthcheck request", LOCAL
    /// with one TLV.
    const ENVOY_V2_LOCAL_AWS_NLB: &[u8] = &[
        0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a, 0x20, 0x00, 0x00,
        0x07, 0x00, 0x00, 0x04, 0x0a, 0x0b, 0x0c, 0x0d,
    ];

    /// V2ParseExtensions: IPv4/TCP and two TLVs (0x0, 0x0, 0x1, 0xff twice).
    const ENVOY_V2_EXTENSIONS: &[u8] = &[
        0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a, 0x21, 0x11, 0x00,
        0x14, 0x01, 0x02, 0x03, 0x04, 0x00, 0x01, 0x01, 0x02, 0x03, 0x05, 0x00, 0x02, 0x00, 0x00,
        0x01, 0xff, 0x00, 0x00, 0x01, 0xff,
    ];

    /// V2ExtractMultipleTlvsOfInterest: IPv4/TCP and four TLVs (0x00, AUTHORITY "foo.com",
    /// 0x0f, and 0xea with an AWS VPC id).
    const ENVOY_V2_MULTIPLE_TLVS: &[u8] = &[
        0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a, 0x21, 0x11, 0x00,
        0x39, 0x01, 0x02, 0x03, 0x04, 0x00, 0x01, 0x01, 0x02, 0x03, 0x05, 0x00, 0x02, 0x00, 0x00,
        0x01, 0xff, 0x02, 0x00, 0x07, 0x66, 0x6f, 0x6f, 0x2e, 0x63, 0x6f, 0x6d, 0x0f, 0x00, 0x03,
        0xf0, 0x00, 0x0f, 0xea, 0x00, 0x16, 0x01, 0x76, 0x70, 0x63, 0x2d, 0x30, 0x32, 0x35, 0x74,
        0x65, 0x73, 0x74, 0x32, 0x66, 0x61, 0x36, 0x63, 0x36, 0x33, 0x68, 0x61, 0x37,
    ];

    /// What Envoy's IPv4 vectors say (the test only looks at the source address): bytes
    /// 01 02 03 04, 00 01 01 02, 03 05, 00 02.
    fn envoy_v4() -> Addresses {
        proxied("1.2.3.4:773", "0.1.1.2:2", Transport::Stream)
    }

    /// The IPv4 address block these tests build headers with.
    const V4_BLOCK: [u8; 12] = [1, 2, 3, 4, 1, 2, 3, 5, 0, 1, 0, 2];

    /// What [`V4_BLOCK`] says.
    fn block_v4() -> Addresses {
        proxied("1.2.3.4:1", "1.2.3.5:2", Transport::Stream)
    }

    /// The valid headers of the tests: (bytes, what they say).
    fn valid() -> Vec<(Vec<u8>, Addresses)> {
        let v4_block = V4_BLOCK;
        let mut v6_block = [0u8; 36];
        v6_block[15] = 1; // ::1
        v6_block[16..32].copy_from_slice(&"2001:db8::2".parse::<Ipv6Addr>().unwrap().octets());
        v6_block[32..36].copy_from_slice(&[0xff, 0xff, 0x01, 0xbb]);
        let v6_addresses = |transport| proxied("[::1]:65535", "[2001:db8::2]:443", transport);
        let mut tlvs = v4_block.to_vec();
        // NOOP (empty), AUTHORITY, a custom type, and one with a 0-byte value at the end.
        tlvs.extend_from_slice(&[0x04, 0x00, 0x00]);
        tlvs.extend_from_slice(&[0x02, 0x00, 0x07]);
        tlvs.extend_from_slice(b"foo.com");
        tlvs.extend_from_slice(&[0xe0, 0x00, 0x02, 0xab, 0xcd, 0xf0, 0x00, 0x00]);
        // The biggest header the spec allows: one TLV filling a 65535-byte declared length
        // (Envoy's V2ParseExtensionsLargeThanInitMaxReadBytes, 0xff 0xff).
        let mut biggest = v4_block.to_vec();
        biggest.extend_from_slice(&[0x02, 0xff, 0xf0]);
        biggest.resize(usize::from(u16::MAX), b'a');
        // A LOCAL header whose family byte claims AF_INET and that carries the addresses:
        // they are ignored, the TLVs after them walked.
        let mut local_inet = v4_block.to_vec();
        local_inet.extend_from_slice(&[0x04, 0x00, 0x01, 0x00]);
        vec![
            (ENVOY_V2_BASIC.to_vec(), envoy_v4()),
            // Envoy calls it "ipv6/tcp", but its family byte 0x22 says UDP.
            (
                ENVOY_V2_BASIC_V6.to_vec(),
                proxied("[1:2:3::4]:8", "[1:100:200:3::]:2", Transport::Datagram),
            ),
            (ENVOY_V2_LOCAL.to_vec(), Addresses::Local),
            (ENVOY_V2_LOCAL_TLV.to_vec(), Addresses::Local),
            (ENVOY_V2_LOCAL_AWS_NLB.to_vec(), Addresses::Local),
            (ENVOY_V2_EXTENSIONS.to_vec(), envoy_v4()),
            (ENVOY_V2_MULTIPLE_TLVS.to_vec(), envoy_v4()),
            // PROXY over each family and transport.
            (header(PROXY, 0x11, &v4_block), block_v4()),
            (
                header(PROXY, 0x12, &v4_block),
                proxied("1.2.3.4:1", "1.2.3.5:2", Transport::Datagram),
            ),
            (
                header(PROXY, 0x21, &v6_block),
                v6_addresses(Transport::Stream),
            ),
            (
                header(PROXY, 0x22, &v6_block),
                v6_addresses(Transport::Datagram),
            ),
            // UNSPEC family or transport, AF_UNIX: Local, the block still consumed.
            (header(PROXY, 0x00, &[]), Addresses::Local),
            (header(PROXY, 0x00, &[0x04, 0x00, 0x00]), Addresses::Local),
            (header(PROXY, 0x10, &v4_block), Addresses::Local),
            (header(PROXY, 0x20, &v6_block), Addresses::Local),
            (header(PROXY, 0x31, &[b'/'; 216]), Addresses::Local),
            (header(PROXY, 0x32, &[0; 216]), Addresses::Local),
            // LOCAL: the family byte is ignored, the declared length consumed.
            (header(LOCAL, 0x11, &v4_block), Addresses::Local),
            (header(LOCAL, 0x11, &[]), Addresses::Local),
            (header(LOCAL, 0x11, &local_inet), Addresses::Local),
            (header(LOCAL, 0xff, &[1, 2, 3, 4, 5]), Addresses::Local),
            (header(LOCAL, 0x21, &[0; 7]), Addresses::Local),
            // TLVs skipped; an address block longer than the family's is TLVs too.
            (header(PROXY, 0x11, &tlvs), block_v4()),
            (header(PROXY, 0x11, &biggest), block_v4()),
            // A good CRC32c, under PROXY and LOCAL, alone and among other TLVs.
            (with_crc(header(PROXY, 0x11, &v4_block)), block_v4()),
            (with_crc(header(PROXY, 0x11, &tlvs)), block_v4()),
            (with_crc(header(LOCAL, 0x00, &[])), Addresses::Local),
            (
                with_crc(header(PROXY, 0x22, &v6_block)),
                v6_addresses(Transport::Datagram),
            ),
        ]
    }

    #[test]
    fn valid_headers() {
        for (bytes, addresses) in valid() {
            let want = Header {
                version: Version::V2,
                addresses,
                length: bytes.len(),
            };
            assert_eq!(parse_any(&bytes), Ok(Some(want)), "{:02x?}", &bytes[..16]);
            // Every prefix is a valid start: more, please.
            for end in 0..bytes.len() {
                assert_eq!(parse_any(&bytes[..end]), Ok(None), "{:02x?}", &bytes[..16]);
            }
            let mut followed = bytes.clone();
            followed.extend_from_slice(MORE_DATA);
            assert_eq!(
                parse_any(&followed),
                Ok(Some(want)),
                "{:02x?}",
                &bytes[..16]
            );
        }
    }

    #[test]
    fn crc32c_is_castagnoli() {
        // The catalog's check value for CRC-32C (RFC 3720 §B.4).
        assert_eq!(CRC32C.checksum(b"123456789"), 0xe306_9283);
        assert_eq!(reference_crc32c(b"123456789"), 0xe306_9283);
        let h = with_crc(header(PROXY, 0x11, &[1, 2, 3, 4, 5, 6, 7, 8, 0, 1, 0, 2]));
        let at = h.len() - 4;
        assert_eq!(check_crc32c(&h, at), Ok(()));
    }

    #[test]
    fn invalid_headers() {
        use ParseError::*;
        let v4_block = V4_BLOCK;
        let bad_crc = {
            let mut h = with_crc(header(PROXY, 0x11, &v4_block));
            let last = h.len() - 1;
            h[last] ^= 1;
            h
        };
        let good = reference_crc32c(&{
            let mut h = bad_crc.clone();
            let at = h.len() - 4;
            h[at..].fill(0);
            h
        });
        let flipped_address = {
            // The checksum is right for other bytes: one address bit flipped on the way.
            let mut h = with_crc(header(PROXY, 0x11, &v4_block));
            h[16] ^= 0x80;
            h
        };
        let mut two_crcs = v4_block.to_vec();
        two_crcs.extend_from_slice(&[3, 0, 4, 0, 0, 0, 0, 3, 0, 4, 0, 0, 0, 0]);
        let mut crc_3 = v4_block.to_vec();
        crc_3.extend_from_slice(&[3, 0, 3, 0, 0, 0]);
        let mut overrun = v4_block.to_vec();
        overrun.extend_from_slice(&[0x04, 0x00, 0x01, 0xff, 0x02, 0x00, 0x08, b'f', b'o']);
        let rows: Vec<(Vec<u8>, ParseError)> = vec![
            // Envoy's published vectors (proxy_protocol_test.cc), payload left off.
            // V2UnsupportedAF: family 4.
            (
                vec![
                    0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a, 0x21,
                    0x41, 0x00, 0x0c, 0x01, 0x02, 0x03, 0x04, 0x00, 0x01, 0x01, 0x02, 0x03, 0x05,
                    0x00, 0x02,
                ],
                V2Family(4),
            ),
            // V2NotLocalOrOnBehalf: command 3.
            (
                vec![
                    0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a, 0x23,
                    0x1f, 0x00, 0x0c, 0x01, 0x02, 0x03, 0x04, 0x00, 0x01, 0x01, 0x02, 0x03, 0x05,
                    0x00, 0x02,
                ],
                V2Command(3),
            ),
            // V2ShortV4 ("incorrect addr-len"): AF_INET6 with 4 bytes.
            (
                vec![
                    0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a, 0x21,
                    0x21, 0x00, 0x04, 0x00, 0x08, 0x00, 0x02,
                ],
                V2AddressTooShort {
                    length: 4,
                    family: "AF_INET6",
                    needed: 36,
                },
            ),
            // V2ShortAddrV4: AF_INET with 11 bytes.
            (
                vec![
                    0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a, 0x21,
                    0x11, 0x00, 0x0b, 0x01, 0x02, 0x03, 0x04, 0x00, 0x01, 0x01, 0x02, 0x03, 0x05,
                    0x00, 0x02,
                ],
                V2AddressTooShort {
                    length: 11,
                    family: "AF_INET",
                    needed: 12,
                },
            ),
            // V2ShortV6: AF_INET6 (UDP) with 20 bytes.
            (
                vec![
                    0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a, 0x21,
                    0x22, 0x00, 0x14, 0x00, 0x01, 0x01, 0x00, 0x02, 0x00, 0x00, 0x03, 0x00, 0x00,
                    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x08, 0x00, 0x02,
                ],
                V2AddressTooShort {
                    length: 20,
                    family: "AF_INET6",
                    needed: 36,
                },
            ),
            // V2ShortAddrV6: AF_INET6 with 35 bytes.
            (
                vec![
                    0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a, 0x21,
                    0x22, 0x00, 0x23, 0x00, 0x01, 0x00, 0x02, 0x00, 0x03, 0x00, 0x00, 0x00, 0x00,
                    0x00, 0x00, 0x00, 0x00, 0x00, 0x04, 0x00, 0x01, 0x01, 0x00, 0x02, 0x00, 0x00,
                    0x03, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x08, 0x00, 0x02,
                ],
                V2AddressTooShort {
                    length: 35,
                    family: "AF_INET6",
                    needed: 36,
                },
            ),
            // V2AF_UNIX: AF_UNIX (which Envoy refuses outright) with 20 bytes.
            (
                vec![
                    0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a, 0x21,
                    0x32, 0x00, 0x14, 0x00, 0x01, 0x01, 0x00, 0x02, 0x00, 0x00, 0x03, 0x00, 0x00,
                    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x08, 0x00, 0x02,
                ],
                V2AddressTooShort {
                    length: 20,
                    family: "AF_UNIX",
                    needed: 216,
                },
            ),
            // V2BadCommand: command 9.
            (
                vec![
                    0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a, 0x29,
                    0x32, 0x00, 0x14, 0x00, 0x01, 0x01, 0x00, 0x02, 0x00, 0x00, 0x03, 0x00, 0x00,
                    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x08, 0x00, 0x02,
                ],
                V2Command(9),
            ),
            // V2WrongVersion: Envoy's comment says "non '2' version (0x93 in b13)", but the
            // version byte (0x21) is right; 0x93 is the family byte: family 9.
            (
                vec![
                    0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a, 0x21,
                    0x93, 0x00, 0x14, 0x00, 0x01, 0x01, 0x00, 0x02, 0x00, 0x00, 0x03, 0x00, 0x00,
                    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x08, 0x00, 0x02,
                ],
                V2Family(9),
            ),
            // V2WrongTLVLength: a TLV of length 2 with 1 byte left.
            (
                vec![
                    0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a, 0x21,
                    0x11, 0x00, 0x10, 0x01, 0x02, 0x03, 0x04, 0x00, 0x01, 0x01, 0x02, 0x03, 0x05,
                    0x00, 0x02, 0x00, 0x00, 0x02, 0xff,
                ],
                V2TlvOverrun {
                    offset: 28,
                    kind: 0,
                },
            ),
            // V2IncompleteTLV: a declared length of 17 leaves 1 byte after the first TLV.
            (
                vec![
                    0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a, 0x21,
                    0x11, 0x00, 0x11, 0x01, 0x02, 0x03, 0x04, 0x00, 0x01, 0x01, 0x02, 0x03, 0x05,
                    0x00, 0x02, 0x00, 0x00, 0x01, 0xff, 0x01, 0x00, 0x01, 0xff,
                ],
                V2TlvTruncated {
                    offset: 32,
                    remaining: 1,
                },
            ),
            // Version, command, family, transport.
            (header(0x11, 0x11, &v4_block), V2Version(1)),
            (header(0x31, 0x11, &v4_block), V2Version(3)),
            (header(0x01, 0x11, &v4_block), V2Version(0)),
            (header(0xf1, 0x11, &v4_block), V2Version(15)),
            (header(0x22, 0x11, &v4_block), V2Command(2)),
            (header(0x2f, 0x11, &v4_block), V2Command(15)),
            (header(PROXY, 0x41, &v4_block), V2Family(4)),
            (header(PROXY, 0xf1, &v4_block), V2Family(15)),
            (header(PROXY, 0x13, &v4_block), V2Transport(3)),
            (header(PROXY, 0x0f, &[]), V2Transport(15)),
            // The address block against the family.
            (
                header(PROXY, 0x11, &[1, 2, 3, 4, 5, 6, 7, 8, 0, 1]),
                V2AddressTooShort {
                    length: 10,
                    family: "AF_INET",
                    needed: 12,
                },
            ),
            (
                header(PROXY, 0x11, &[]),
                V2AddressTooShort {
                    length: 0,
                    family: "AF_INET",
                    needed: 12,
                },
            ),
            (
                header(PROXY, 0x31, &[0; 215]),
                V2AddressTooShort {
                    length: 215,
                    family: "AF_UNIX",
                    needed: 216,
                },
            ),
            // TLVs.
            (
                header(PROXY, 0x11, &overrun),
                V2TlvOverrun {
                    offset: 32,
                    kind: 2,
                },
            ),
            (
                header(LOCAL, 0x00, &[0x04, 0x00]),
                V2TlvTruncated {
                    offset: 16,
                    remaining: 2,
                },
            ),
            (
                header(LOCAL, 0x00, &[0x04, 0x00, 0x02, 0x00]),
                V2TlvOverrun {
                    offset: 16,
                    kind: 4,
                },
            ),
            // The checksum.
            (
                bad_crc.clone(),
                V2Crc32cMismatch {
                    received: good ^ 1,
                    computed: good,
                },
            ),
            (header(PROXY, 0x11, &crc_3), V2Crc32cLength { length: 3 }),
            (header(PROXY, 0x11, &two_crcs), V2Crc32cDuplicate),
        ];
        for (bytes, want) in rows {
            assert_eq!(parse_any(&bytes), Err(want), "{bytes:02x?}");
        }
        assert!(matches!(
            parse_any(&flipped_address),
            Err(V2Crc32cMismatch { .. })
        ));
        assert_eq!(parse_any(&bad_crc).unwrap_err().reason(), "checksum");
    }

    /// A header that cannot be valid is refused as soon as the bytes that say so are in.
    #[test]
    fn refused_early() {
        use ParseError::*;
        let v4_block = V4_BLOCK;
        // The version at byte 13, the family at byte 14, the address block at byte 16.
        assert_eq!(
            parse_any(&header(0x31, 0x11, &v4_block)[..13]),
            Err(V2Version(3))
        );
        assert_eq!(
            parse_any(&header(0x23, 0x11, &v4_block)[..13]),
            Err(V2Command(3))
        );
        assert_eq!(
            parse_any(&header(PROXY, 0x51, &v4_block)[..14]),
            Err(V2Family(5))
        );
        assert_eq!(
            parse_any(&header(PROXY, 0x11, &v4_block[..10])[..16]),
            Err(V2AddressTooShort {
                length: 10,
                family: "AF_INET",
                needed: 12
            })
        );
        // A TLV that overruns the declared length, from its own header alone.
        let mut block = v4_block.to_vec();
        block.extend_from_slice(&[0x04, 0x00, 0x05, 1, 2]);
        let h = header(PROXY, 0x11, &block);
        assert_eq!(parse_any(&h[..30]), Ok(None));
        assert_eq!(
            parse_any(&h[..31]),
            Err(V2TlvOverrun {
                offset: 28,
                kind: 4
            })
        );
        // A header too big for any buffer but the spec's is still only "more".
        let mut biggest = v4_block.to_vec();
        biggest.extend_from_slice(&[0xea, 0xff, 0xf0]);
        biggest.resize(usize::from(u16::MAX), 0);
        let h = header(PROXY, 0x11, &biggest);
        assert_eq!(h.len(), crate::proxy_protocol::V2_MAX_LENGTH);
        assert_eq!(parse_any(&h[..h.len() - 1]), Ok(None));
        assert_eq!(parse_any(&h).unwrap().unwrap().length, h.len());
    }

    #[test]
    fn encodes() {
        let mut out = [0u8; MAX_ENCODED];
        // LOCAL.
        let len = encode(None, Transport::Stream, &mut out);
        assert_eq!(&out[..len], ENVOY_V2_LOCAL);
        // Envoy's V2Basic, written back.
        let len = encode(
            Some((sock("1.2.3.4:773"), sock("0.1.1.2:2"))),
            Transport::Stream,
            &mut out,
        );
        assert_eq!(&out[..len], ENVOY_V2_BASIC);
        // Envoy's V2BasicV6 (UDP).
        let len = encode(
            Some((sock("[1:2:3::4]:8"), sock("[1:100:200:3::]:2"))),
            Transport::Datagram,
            &mut out,
        );
        assert_eq!(&out[..len], ENVOY_V2_BASIC_V6);
        // Mixed families: AF_INET6, the IPv4 side mapped.
        let len = encode(
            Some((sock("192.0.2.1:1000"), sock("[2001:db8::1]:443"))),
            Transport::Stream,
            &mut out,
        );
        assert_eq!(len, 52);
        assert_eq!(out[13], 0x21);
        assert_eq!(
            &out[16..32],
            &"::ffff:192.0.2.1".parse::<Ipv6Addr>().unwrap().octets()
        );
        // Mapped on both sides: AF_INET.
        let len = encode(
            Some((
                sock("[::ffff:192.0.2.1]:1000"),
                sock("[::ffff:10.0.0.1]:443"),
            )),
            Transport::Datagram,
            &mut out,
        );
        assert_eq!(len, 28);
        assert_eq!(out[13], 0x12);
        assert_eq!(&out[16..24], &[192, 0, 2, 1, 10, 0, 0, 1]);
    }
}
