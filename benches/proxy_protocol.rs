//! Micro-benchmarks of the PROXY protocol codec: what each accepted connection pays to read
//! the header a load balancer in front sent (v1 TCP4, v1 TCP6, v2 INET, v2 INET6 with a CRC32c
//! TLV, each followed by a little payload as it arrives on the wire), and what each backend
//! connection pays to write one (v1 and v2). Run with `cargo bench --bench proxy_protocol`.

use std::hint::black_box;
use std::net::SocketAddr;

use crc::{CRC_32_ISCSI, Crc};
use criterion::{Criterion, criterion_group, criterion_main};
use vipd::proxy_protocol::{MAX_ENCODED, Transport, encode_v1, encode_v2, parse};

const PAYLOAD: &[u8] = b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n";

fn v4() -> (SocketAddr, SocketAddr) {
    (
        "203.0.113.195:56324".parse().unwrap(),
        "192.0.2.10:443".parse().unwrap(),
    )
}

fn v6() -> (SocketAddr, SocketAddr) {
    (
        "[2001:db8:85a3::8a2e:370:7334]:56324".parse().unwrap(),
        "[2001:db8:1:2::10]:443".parse().unwrap(),
    )
}

/// A v2 INET6 header with a CRC32c TLV, as HAProxy's `send-proxy-v2 proxy-v2-options crc32c`
/// writes it.
fn v2_inet6_crc32c() -> Vec<u8> {
    let mut out = [0u8; MAX_ENCODED];
    let len = encode_v2(Some(v6()), Transport::Stream, &mut out);
    let mut h = out[..len].to_vec();
    h.extend_from_slice(&[0x03, 0x00, 0x04, 0, 0, 0, 0]);
    let declared = (h.len() - 16) as u16;
    h[14..16].copy_from_slice(&declared.to_be_bytes());
    let crc = Crc::<u32>::new(&CRC_32_ISCSI).checksum(&h);
    let at = h.len() - 4;
    h[at..].copy_from_slice(&crc.to_be_bytes());
    h
}

fn with_payload(header: &[u8]) -> Vec<u8> {
    let mut input = header.to_vec();
    input.extend_from_slice(PAYLOAD);
    input
}

/// What `encode` wrote, followed by [`PAYLOAD`].
fn encoded(encode: impl FnOnce(&mut [u8; MAX_ENCODED]) -> usize) -> Vec<u8> {
    let mut out = [0u8; MAX_ENCODED];
    let len = encode(&mut out);
    with_payload(&out[..len])
}

fn parsing(c: &mut Criterion) {
    let v1_tcp4 = encoded(|out| encode_v1(Some(v4()), out));
    let v1_tcp6 = encoded(|out| encode_v1(Some(v6()), out));
    let v2_inet = encoded(|out| encode_v2(Some(v4()), Transport::Stream, out));
    let v2_inet6_crc = with_payload(&v2_inet6_crc32c());
    for (name, input) in [
        ("parse/v1_tcp4", &v1_tcp4),
        ("parse/v1_tcp6", &v1_tcp6),
        ("parse/v2_inet", &v2_inet),
        ("parse/v2_inet6_crc32c", &v2_inet6_crc),
    ] {
        assert!(parse(input).unwrap().is_some(), "{name}");
        c.bench_function(name, |b| b.iter(|| black_box(parse(black_box(input)))));
    }
}

fn encoding(c: &mut Criterion) {
    let mut out = [0u8; MAX_ENCODED];
    for (name, addresses) in [("tcp4", v4()), ("tcp6", v6())] {
        c.bench_function(&format!("encode/v1_{name}"), |b| {
            b.iter(|| black_box(encode_v1(Some(black_box(addresses)), &mut out)))
        });
    }
    for (name, addresses) in [("inet", v4()), ("inet6", v6())] {
        c.bench_function(&format!("encode/v2_{name}"), |b| {
            b.iter(|| {
                black_box(encode_v2(
                    Some(black_box(addresses)),
                    Transport::Stream,
                    &mut out,
                ))
            })
        });
    }
}

criterion_group!(benches, parsing, encoding);
criterion_main!(benches);
