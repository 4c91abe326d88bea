//! Tests across both versions: garbage, error labels and messages, and encode → parse
//! roundtrips. Each version's own vectors are in its module.

use super::*;

#[test]
fn empty_input_needs_more() {
    assert_eq!(parse(b""), Ok(None));
}

/// Whatever speaks another protocol is refused at the first byte that differs from both
/// signatures, with no more bytes needed.
#[test]
fn garbage_is_refused_at_the_first_differing_byte() {
    let rows: &[(&[u8], usize)] = &[
        (b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n", 0),
        (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 2),
        (b"SSH-2.0-OpenSSH_9.6\r\n", 0),
        (&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01], 0), // a TLS ClientHello
        (b"\0\0\0\0", 0),
        (b"proxy TCP4 1.2.3.4 1.2.3.4 1 2\r\n", 0),
        (b"PROXX", 4),
        (b"PROXY\tTCP4", 5),
        (b"PROXY\r\n", 5),
        (b"\r\n\r\nX", 4),
        (b"\r\nGET / HTTP/1.1", 2),
        (b"\r\n\r\n\0\r\nQUIX\n", 10),
        (b"\r\n\r\n\0\r\nQUIT\r", 11),
        (b"\r\n\r\n\x01", 4),
    ];
    for (input, offset) in rows {
        let want = Err(ParseError::NotProxyProtocol { offset: *offset });
        // At the differing byte and after it: refused.
        assert_eq!(parse(&input[..=*offset]), want, "{input:?}");
        assert_eq!(parse(input), want, "{input:?}");
        // Before it: still a possible header.
        assert_eq!(parse(&input[..*offset]), Ok(None), "{input:?}");
    }
}

#[test]
fn reasons() {
    use ParseError::*;
    let rows: &[(ParseError, &str)] = &[
        (NotProxyProtocol { offset: 0 }, "not_proxy_protocol"),
        (V1TooLong, "malformed"),
        (V1Protocol, "malformed"),
        (
            V1Spacing {
                field: Field::SourcePort,
            },
            "malformed",
        ),
        (
            V1MissingField {
                field: Field::SourcePort,
            },
            "malformed",
        ),
        (
            V1Address {
                field: Field::SourceAddress,
                family: "IPv4",
            },
            "malformed",
        ),
        (
            V1Port {
                field: Field::SourcePort,
            },
            "malformed",
        ),
        (V1LineEnd, "malformed"),
        (V1BareLf, "malformed"),
        (V1BareCr, "malformed"),
        (V2Version(3), "unsupported"),
        (V2Command(2), "unsupported"),
        (V2Family(4), "unsupported"),
        (V2Transport(3), "unsupported"),
        (
            V2AddressTooShort {
                length: 10,
                family: "AF_INET",
                needed: 12,
            },
            "malformed",
        ),
        (
            V2TlvTruncated {
                offset: 28,
                remaining: 1,
            },
            "malformed",
        ),
        (
            V2TlvOverrun {
                offset: 28,
                kind: 0,
            },
            "malformed",
        ),
        (V2Crc32cLength { length: 3 }, "malformed"),
        (V2Crc32cDuplicate, "malformed"),
        (
            V2Crc32cMismatch {
                received: 1,
                computed: 2,
            },
            "checksum",
        ),
        (TooLong { limit: 4096 }, "too_long"),
    ];
    for (error, reason) in rows {
        assert_eq!(error.reason(), *reason, "{error:?}");
    }
}

#[test]
fn messages_name_the_cause() {
    use ParseError::*;
    let rows: &[(ParseError, &str)] = &[
        (
            NotProxyProtocol { offset: 0 },
            "not a PROXY protocol header: byte 0 fits neither the v1 nor the v2 signature",
        ),
        (V1TooLong, "v1: line longer than 107 bytes"),
        (V1Protocol, "v1: protocol is not TCP4, TCP6 or UNKNOWN"),
        (
            V1Spacing {
                field: Field::DestinationAddress,
            },
            "v1: more than one space before the destination address",
        ),
        (
            V1MissingField {
                field: Field::DestinationPort,
            },
            "v1: line ends before the destination port",
        ),
        (
            V1Address {
                field: Field::SourceAddress,
                family: "IPv4",
            },
            "v1: source address is not an IPv4 address",
        ),
        (
            V1Port {
                field: Field::SourcePort,
            },
            "v1: source port is not a decimal number from 0 to 65535 without leading zeros",
        ),
        (
            V1BareLf,
            "v1: LF without CR before it (the line must end in CRLF)",
        ),
        (V2Version(3), "v2: unsupported version 3"),
        (
            V2AddressTooShort {
                length: 10,
                family: "AF_INET",
                needed: 12,
            },
            "v2: address block of 10 bytes is shorter than AF_INET's 12",
        ),
        (
            V2TlvOverrun {
                offset: 28,
                kind: 2,
            },
            "v2: TLV of type 0x02 at byte 28 runs past the declared length",
        ),
        (
            V2Crc32cMismatch {
                received: 0xdead_beef,
                computed: 0x0123_4567,
            },
            "v2: CRC32c mismatch (the header says 0xdeadbeef, its bytes give 0x01234567)",
        ),
        (
            TooLong { limit: 4096 },
            "header longer than the 4096 bytes allowed",
        ),
    ];
    for (error, message) in rows {
        assert_eq!(error.to_string(), *message);
    }
}

/// parse(encode(x)) == x, modulo the mapping rule, for v1 and v2 and both transports.
#[test]
fn roundtrip() {
    let sock = |s: &str| -> SocketAddr { s.parse().unwrap() };
    // (source, destination) as given, and as a header carries them: IPv4-mapped on both sides
    // (or mapped and IPv4) is IPv4; mixed families are IPv6 with the IPv4 side mapped.
    let rows: &[(&str, &str, &str, &str)] = &[
        ("1.2.3.4", "5.6.7.8", "1.2.3.4", "5.6.7.8"),
        ("0.0.0.0", "255.255.255.255", "0.0.0.0", "255.255.255.255"),
        ("[::1]", "[2001:db8::1]", "[::1]", "[2001:db8::1]"),
        (
            "[::]",
            "[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]",
            "[::]",
            "[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]",
        ),
        (
            "[fe80::1:2:3:4]",
            "[1:0:0:1::]",
            "[fe80::1:2:3:4]",
            "[1:0:0:1::]",
        ),
        // `::1.2.3.4` is an IPv6 address (the deprecated compatible form), not IPv4.
        ("[::1.2.3.4]", "[::5]", "[::1.2.3.4]", "[::5]"),
        ("[::ffff:1.2.3.4]", "[::ffff:5.6.7.8]", "1.2.3.4", "5.6.7.8"),
        ("[::ffff:1.2.3.4]", "5.6.7.8", "1.2.3.4", "5.6.7.8"),
        ("1.2.3.4", "[::ffff:5.6.7.8]", "1.2.3.4", "5.6.7.8"),
        (
            "1.2.3.4",
            "[2001:db8::1]",
            "[::ffff:1.2.3.4]",
            "[2001:db8::1]",
        ),
        (
            "[2001:db8::1]",
            "5.6.7.8",
            "[2001:db8::1]",
            "[::ffff:5.6.7.8]",
        ),
        (
            "[::ffff:1.2.3.4]",
            "[2001:db8::1]",
            "[::ffff:1.2.3.4]",
            "[2001:db8::1]",
        ),
    ];
    let ports = [0, 1, 80, 443, 65535];
    let mut cases = 0;
    for (source, destination, want_source, want_destination) in rows {
        for sport in ports {
            for dport in ports {
                let given = (
                    sock(&format!("{source}:{sport}")),
                    sock(&format!("{destination}:{dport}")),
                );
                let want = (
                    sock(&format!("{want_source}:{sport}")),
                    sock(&format!("{want_destination}:{dport}")),
                );
                let mut out = [0u8; MAX_ENCODED];

                let len = encode_v1(Some(given), &mut out);
                let header = parse(&out[..len]).unwrap().unwrap();
                assert_eq!(header.version, Version::V1);
                assert_eq!(header.length, len);
                assert_eq!(
                    header.addresses,
                    Addresses::Proxied {
                        source: want.0,
                        destination: want.1,
                        transport: Transport::Stream,
                    },
                    "v1 {given:?}"
                );

                for transport in [Transport::Stream, Transport::Datagram] {
                    let len = encode_v2(Some(given), transport, &mut out);
                    let header = parse(&out[..len]).unwrap().unwrap();
                    assert_eq!(header.version, Version::V2);
                    assert_eq!(header.length, len);
                    assert_eq!(
                        header.addresses,
                        Addresses::Proxied {
                            source: want.0,
                            destination: want.1,
                            transport,
                        },
                        "v2 {given:?} {transport:?}"
                    );
                }
                cases += 1;
            }
        }
    }
    assert_eq!(cases, rows.len() * ports.len() * ports.len());

    // Scope ids and flow info have no place in a header: dropped.
    let scoped = SocketAddr::V6(SocketAddrV6::new("fe80::1".parse().unwrap(), 22, 7, 3));
    let plain = sock("[fe80::1]:22");
    let mut out = [0u8; MAX_ENCODED];
    let len = encode_v2(Some((scoped, scoped)), Transport::Stream, &mut out);
    assert_eq!(
        parse(&out[..len]).unwrap().unwrap().addresses,
        Addresses::Proxied {
            source: plain,
            destination: plain,
            transport: Transport::Stream
        }
    );

    // No addresses: UNKNOWN and LOCAL, both meaning "the peer is the client".
    let len = encode_v1(None, &mut out);
    let header = parse(&out[..len]).unwrap().unwrap();
    assert_eq!((header.addresses, header.length), (Addresses::Local, len));
    let len = encode_v2(None, Transport::Datagram, &mut out);
    let header = parse(&out[..len]).unwrap().unwrap();
    assert_eq!((header.addresses, header.length), (Addresses::Local, len));
}
