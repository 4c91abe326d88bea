//! Datagrams in batches: one `recvmmsg` or `sendmmsg` system call moves up to [`SLOTS`]
//! datagrams, and with UDP GRO and GSO one slot carries a train of equal-size datagrams of one
//! sender (segments) through one message.
//!
//! A [`Slots`] owns [`SLOTS`] buffers of 64 KiB (any UDP payload, or a GRO train, fits one) and
//! the kernel's message headers for them, allocated once per serve loop: receiving and sending
//! allocate nothing. The buffers are reserved, not touched: the kernel writes only the pages a
//! datagram fills, so small datagrams keep the resident memory small.
//!
//! GRO (`UDP_GRO`) is asked for on the sockets that receive; where the kernel delivers a train
//! of segments, [`Datagram::segment`] gives their size, and sending the slot on asks GSO
//! (`UDP_SEGMENT`) to cut it into the same datagrams again. Sending also makes trains of its own:
//! consecutive datagrams of one length (the last may be shorter) to one peer go as one message
//! that GSO cuts (gathered from their slots, not copied), so the kernel walks its stack once per
//! train instead of once per datagram; the receiver gets the same datagrams either way. Where a device cannot segment
//! ([`is_gso_unsupported`]), [`send_segments`] sends them one by one.
//!
//! A slot can also carry a prefix of its own (a PROXY protocol header, [`Slots::prepend`]) and
//! have bytes taken off its front (a header read from it, [`Slots::strip`]): the prefix and the
//! slot's bytes go out as one datagram, gathered from two iovecs, never copied together. A train
//! of prefixed datagrams is cut by GSO at prefix + datagram, so each segment is one header and
//! its datagram. A GRO train takes no prefix.
//!
//! This is the one module of vipd with `unsafe` code: `recvmmsg`, `sendmmsg` and their
//! control messages through `libc`. The safe wrappers at hand do not fit a loop that reuses its
//! headers (nix 0.31's `recvmmsg` never resets the control and name lengths the kernel shrinks,
//! so a reused header loses the GRO segment size after the first datagram without one, and its
//! `sendmmsg` shares one control message among all messages of a call; rustix has no
//! `recvmmsg`). Every header is rewritten here before each call, from buffers this module owns.
#![allow(unsafe_code)]

use std::io;
use std::mem::{size_of, zeroed};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsRawFd, BorrowedFd};
use std::ptr;

use crate::proxy_protocol::MAX_ENCODED;

/// Datagrams per system call.
pub const SLOTS: usize = 32;
/// The longest prefix a slot can carry before its bytes: any PROXY protocol header vipd
/// writes (see [`Slots::prepend`]).
pub const PREFIX_MAX: usize = MAX_ENCODED;

/// Bytes per slot: every UDP payload (65,507 bytes over IPv4, 65,527 over IPv6) and every GRO
/// train (at most 64 KiB) fits, so nothing is truncated.
pub const SLOT_SIZE: usize = 65_536;

/// The largest datagram sent in a GSO train of vipd's own making: the kernel refuses a segment
/// larger than the path's MTU allows, and 1,452 bytes fit any Ethernet path (1,500 less the
/// IPv6 and UDP headers). Larger datagrams go one per message.
const COALESCE_MAX: usize = 1_452;
/// Payload bytes of one train at most: a GSO message is one UDP datagram to the kernel, whose
/// length field is 16 bits.
const TRAIN_MAX_BYTES: usize = 65_000;

/// Ancillary data of one message: room for one `cmsghdr` with an `int` (`UDP_GRO` in) or a
/// `u16` (`UDP_SEGMENT` out), 8-byte aligned as `cmsghdr` needs.
type Control = [u64; 4];

/// What one slot holds.
#[derive(Debug, Clone, Copy)]
pub struct Datagram {
    /// Bytes in the slot (from [`Slots::strip`]'s offset on), the prefix not counted.
    pub len: usize,
    /// Size of each datagram when the slot holds a GRO train of several (the last may be
    /// shorter); 0 when it holds one datagram.
    pub segment: u16,
    /// The sender of a received datagram; the destination of one sent with [`send_to`] (set
    /// it with [`Slots::address`]).
    pub peer: SocketAddr,
    /// The kernel had more than the slot holds (`MSG_TRUNC`): what the slot has is not the
    /// datagram, and must not be sent on.
    pub truncated: bool,
    /// Where the bytes start in the slot's buffer: what [`Slots::strip`] took off the front.
    offset: u32,
    /// Bytes of the slot's prefix ([`Slots::prepend`]), sent before its own.
    prefix: u8,
}

impl Datagram {
    /// How many datagrams the slot stands for.
    pub fn count(&self) -> usize {
        match self.segment {
            0 => 1,
            segment => self.len.div_ceil(usize::from(segment)).max(1),
        }
    }

    /// Whether the slot holds a train for GSO to cut (several datagrams).
    pub fn is_train(&self) -> bool {
        self.segment != 0 && self.len > usize::from(self.segment)
    }

    /// Bytes the slot sends as one datagram: its prefix and its own.
    fn wire_len(&self) -> usize {
        usize::from(self.prefix) + self.len
    }
}

const NOWHERE: SocketAddr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0));

/// [`SLOTS`] datagram buffers and the kernel's headers for them.
pub struct Slots {
    buffers: Box<[u8]>,
    meta: [Datagram; SLOTS],
    headers: Box<[libc::mmsghdr; SLOTS]>,
    /// Two per slot: a message may gather a prefix and a datagram from each.
    iovecs: Box<[libc::iovec; 2 * SLOTS]>,
    /// Each slot's prefix (a PROXY protocol header), `Datagram::prefix` bytes of it.
    prefixes: Box<[[u8; PREFIX_MAX]; SLOTS]>,
    names: Box<[libc::sockaddr_storage; SLOTS]>,
    controls: Box<[Control; SLOTS]>,
    /// Consecutive equal-size datagrams to one peer go as one GSO train (until a path
    /// refuses one).
    coalesce: bool,
}

// SAFETY: the raw pointers in `headers` and `iovecs` only ever point into the boxes of the same
// `Slots`; they are rewritten before every system call (which needs `&mut self`), and nothing
// reads through them otherwise. Moving a `Slots` to another thread moves what they point at
// with it.
unsafe impl Send for Slots {}

impl std::fmt::Debug for Slots {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Slots").finish_non_exhaustive()
    }
}

impl Default for Slots {
    fn default() -> Self {
        Slots::new()
    }
}

impl Slots {
    /// Empty slots; reserves [`SLOTS`] × [`SLOT_SIZE`] bytes.
    pub fn new() -> Self {
        // SAFETY: all-zero bytes are a valid value of these plain C structs (null pointers,
        // zero lengths, family AF_UNSPEC).
        let (headers, iovecs, names) = unsafe { (zeroed(), zeroed(), zeroed()) };
        Slots {
            // Zeroed by the allocator from fresh pages: untouched pages cost no memory.
            buffers: vec![0; SLOTS * SLOT_SIZE].into_boxed_slice(),
            meta: [Datagram {
                len: 0,
                segment: 0,
                peer: NOWHERE,
                truncated: false,
                offset: 0,
                prefix: 0,
            }; SLOTS],
            headers: Box::new(headers),
            iovecs: Box::new(iovecs),
            names: Box::new(names),
            prefixes: Box::new([[0; PREFIX_MAX]; SLOTS]),
            controls: Box::new([[0; 4]; SLOTS]),
            coalesce: true,
        }
    }

    /// What slot `slot` holds.
    pub fn meta(&self, slot: usize) -> &Datagram {
        &self.meta[slot]
    }

    /// The bytes slot `slot` holds.
    pub fn data(&self, slot: usize) -> &[u8] {
        let start = slot * SLOT_SIZE + self.meta[slot].offset as usize;
        &self.buffers[start..start + self.meta[slot].len]
    }

    /// Takes the first `bytes` of slot `slot`'s datagram off (a PROXY header read from it):
    /// the rest is what goes on.
    pub fn strip(&mut self, slot: usize, bytes: usize) {
        let meta = &mut self.meta[slot];
        let bytes = bytes.min(meta.len);
        meta.offset += bytes as u32;
        meta.len -= bytes;
    }

    /// Gives slot `slot` the prefix `write` puts in the buffer it is handed (returning its
    /// length): it is sent in front of the slot's bytes, in the same datagram. A slot holding
    /// a GRO train takes no prefix (it would go before the first datagram only).
    pub fn prepend(&mut self, slot: usize, write: impl FnOnce(&mut [u8; PREFIX_MAX]) -> usize) {
        debug_assert!(!self.meta[slot].is_train(), "a train takes no prefix");
        let length = write(&mut self.prefixes[slot]);
        self.meta[slot].prefix = u8::try_from(length.min(PREFIX_MAX)).unwrap_or(u8::MAX);
    }

    /// The prefix slot `slot` sends before its bytes (empty without one).
    pub fn prefix(&self, slot: usize) -> &[u8] {
        &self.prefixes[slot][..usize::from(self.meta[slot].prefix)]
    }

    /// Fills slot `slot` with `bytes` for `peer` (one datagram, or a train of `segment`-byte
    /// datagrams): for tests and benchmarks, which have no socket to receive from.
    pub fn fill(&mut self, slot: usize, bytes: &[u8], segment: u16, peer: SocketAddr) {
        let start = slot * SLOT_SIZE;
        self.buffers[start..start + bytes.len()].copy_from_slice(bytes);
        self.meta[slot] = Datagram {
            len: bytes.len(),
            segment,
            peer,
            truncated: false,
            offset: 0,
            prefix: 0,
        };
    }

    /// Sets the destination of slot `slot` for [`send_to`].
    pub fn address(&mut self, slot: usize, peer: SocketAddr) {
        self.meta[slot].peer = peer;
    }

    /// Points header `header` at all of slot `slot`, its name and its control space, to
    /// receive.
    fn prepare_receive(&mut self, header: usize, slot: usize) {
        self.iovecs[header] = libc::iovec {
            // SAFETY: `slot * SLOT_SIZE` is within `buffers` (slot < SLOTS).
            iov_base: unsafe { self.buffers.as_mut_ptr().add(slot * SLOT_SIZE) }.cast(),
            iov_len: SLOT_SIZE,
        };
        let control = size_of::<Control>();
        let hdr = &mut self.headers[header];
        hdr.msg_len = 0;
        let msg = &mut hdr.msg_hdr;
        msg.msg_name = ptr::from_mut(&mut self.names[slot]).cast();
        msg.msg_namelen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        msg.msg_iov = ptr::from_mut(&mut self.iovecs[header]);
        msg.msg_iovlen = 1;
        msg.msg_control = self.controls[slot].as_mut_ptr().cast();
        msg.msg_controllen = control as _;
        msg.msg_flags = 0;
    }

    /// Points header `header` at the datagrams of `slots`, each behind its prefix (gathered
    /// through the iovecs from `gather`), to go to `peer` (or the connected peer), cut by GSO
    /// into `segment`-byte datagrams when given; returns the iovecs it used.
    fn prepare_send(
        &mut self,
        header: usize,
        slots: &[u8],
        gather: usize,
        peer: Option<SocketAddr>,
        segment: Option<u16>,
    ) -> usize {
        let mut iov = gather;
        for &slot in slots {
            let slot = usize::from(slot);
            let meta = self.meta[slot];
            if meta.prefix > 0 {
                self.iovecs[iov] = libc::iovec {
                    iov_base: self.prefixes[slot].as_mut_ptr().cast(),
                    iov_len: usize::from(meta.prefix),
                };
                iov += 1;
            }
            self.iovecs[iov] = libc::iovec {
                // SAFETY: `slot * SLOT_SIZE + offset` is within `buffers` (slot < SLOTS, and
                // the offset within the slot's datagram).
                iov_base: unsafe {
                    self.buffers
                        .as_mut_ptr()
                        .add(slot * SLOT_SIZE + meta.offset as usize)
                }
                .cast(),
                iov_len: meta.len,
            };
            iov += 1;
        }
        let control = match segment {
            Some(segment) => write_segment(&mut self.controls[header], segment),
            None => 0,
        };
        let hdr = &mut self.headers[header];
        hdr.msg_len = 0;
        let msg = &mut hdr.msg_hdr;
        match peer {
            Some(peer) => {
                msg.msg_namelen = write_name(&mut self.names[header], peer);
                msg.msg_name = ptr::from_mut(&mut self.names[header]).cast();
            }
            None => {
                msg.msg_name = ptr::null_mut();
                msg.msg_namelen = 0;
            }
        }
        msg.msg_iov = ptr::from_mut(&mut self.iovecs[gather]);
        msg.msg_iovlen = (iov - gather) as _;
        if control == 0 {
            msg.msg_control = ptr::null_mut();
        } else {
            msg.msg_control = self.controls[header].as_mut_ptr().cast();
        }
        msg.msg_controllen = control as _;
        msg.msg_flags = 0;
        iov - gather
    }

    /// How many of the datagrams at the start of `order` can go as one GSO train: equal
    /// lengths, prefixes counted (the last may be shorter), one peer, within the size limits;
    /// 1 when none can.
    fn train_length(&self, order: &[u8], named: bool) -> usize {
        let first = self.meta[usize::from(order[0])];
        let size = first.wire_len();
        if !self.coalesce || first.is_train() || size == 0 || size > COALESCE_MAX {
            return 1;
        }
        let mut total = size;
        let mut count = 1;
        for &slot in &order[1..] {
            let next = self.meta[usize::from(slot)];
            let next_size = next.wire_len();
            if next.is_train()
                || next_size == 0
                || next_size > size
                || (named && next.peer != first.peer)
                || total + next_size > TRAIN_MAX_BYTES
            {
                break;
            }
            total += next_size;
            count += 1;
            if next_size < size {
                // Only the last segment of a train may be shorter.
                break;
            }
        }
        count
    }
}

/// Receives up to `count` datagrams from `socket` into slots `first..first + count` (within
/// [`SLOTS`]) without blocking; returns how many arrived (`WouldBlock` when none). One that
/// did not fit (no datagram, see [`SLOT_SIZE`]) comes back [`Datagram::truncated`].
pub fn recv(
    socket: BorrowedFd<'_>,
    slots: &mut Slots,
    first: usize,
    count: usize,
) -> io::Result<usize> {
    let count = count.min(SLOTS - first);
    for i in 0..count {
        slots.prepare_receive(i, first + i);
    }
    // SAFETY: headers 0..count point at live buffers, names and control space of `slots`,
    // sized as declared; the kernel writes no further.
    let received = unsafe {
        libc::recvmmsg(
            socket.as_raw_fd(),
            slots.headers.as_mut_ptr(),
            count as libc::c_uint,
            libc::MSG_DONTWAIT,
            ptr::null_mut(),
        )
    };
    if received < 0 {
        return Err(io::Error::last_os_error());
    }
    let received = received as usize;
    for i in 0..received {
        let slot = first + i;
        let hdr = &slots.headers[i];
        slots.meta[slot] = Datagram {
            len: hdr.msg_len as usize,
            segment: gro_segment(&hdr.msg_hdr),
            peer: read_name(&slots.names[slot], hdr.msg_hdr.msg_namelen).unwrap_or(NOWHERE),
            truncated: hdr.msg_hdr.msg_flags & libc::MSG_TRUNC != 0,
            offset: 0,
            prefix: 0,
        };
    }
    Ok(received)
}

/// Sends the datagrams of `order` (slot numbers, at most [`SLOTS`]) on the connected
/// `socket`, in that order; returns how many went (at least one), or the error of the first.
/// After a short count, the next one failed: send again from there to learn why.
pub fn send(socket: BorrowedFd<'_>, slots: &mut Slots, order: &[u8]) -> io::Result<usize> {
    send_messages(socket, slots, order, false)
}

/// [`send`] on an unconnected `socket`, each datagram to its slot's `peer`.
pub fn send_to(socket: BorrowedFd<'_>, slots: &mut Slots, order: &[u8]) -> io::Result<usize> {
    send_messages(socket, slots, order, true)
}

fn send_messages(
    socket: BorrowedFd<'_>,
    slots: &mut Slots,
    order: &[u8],
    named: bool,
) -> io::Result<usize> {
    let order = &order[..order.len().min(SLOTS)];
    // Datagrams in each message, by header.
    let mut sizes = [0u8; SLOTS];
    let (mut messages, mut gathered, mut iovecs) = (0, 0, 0);
    while gathered < order.len() {
        let rest = &order[gathered..];
        let count = slots.train_length(rest, named);
        let first = slots.meta[usize::from(rest[0])];
        let segment = if count > 1 {
            Some(first.wire_len() as u16)
        } else if first.is_train() {
            Some(first.segment)
        } else {
            None
        };
        let peer = named.then_some(first.peer);
        iovecs += slots.prepare_send(messages, &rest[..count], iovecs, peer, segment);
        sizes[messages] = count as u8;
        messages += 1;
        gathered += count;
    }
    // SAFETY: headers 0..messages point at live buffers, names, iovecs and control data of
    // `slots`.
    let sent = unsafe {
        libc::sendmmsg(
            socket.as_raw_fd(),
            slots.headers.as_mut_ptr(),
            messages as libc::c_uint,
            libc::MSG_DONTWAIT,
        )
    };
    if sent < 0 {
        let error = io::Error::last_os_error();
        if sizes[0] > 1 && is_gso_unsupported(&error) {
            // A train of vipd's own making that the path cannot cut: no more of them here.
            slots.coalesce = false;
            return send_messages(socket, slots, order, named);
        }
        return Err(error);
    }
    Ok(sizes[..sent as usize].iter().map(|&n| usize::from(n)).sum())
}

/// Sends the train in slot `slot` one datagram at a time, for a path whose device cannot
/// segment; returns how many of its datagrams went. Connected when `named` is false.
pub fn send_segments(
    socket: BorrowedFd<'_>,
    slots: &Slots,
    slot: usize,
    named: bool,
) -> io::Result<usize> {
    let meta = slots.meta[slot];
    let step = usize::from(meta.segment).max(1);
    let socket = socket2::SockRef::from(&socket);
    let peer = socket2::SockAddr::from(meta.peer);
    let mut sent = 0;
    for segment in slots.data(slot).chunks(step) {
        let result = if named {
            socket.send_to(segment, &peer)
        } else {
            socket.send(segment)
        };
        match result {
            Ok(_) => sent += 1,
            Err(error) if sent == 0 => return Err(error),
            Err(_) => break,
        }
    }
    Ok(sent)
}

/// Whether a send error says the path cannot segment a GSO train (no checksum offload on the
/// device, or a kernel without `UDP_SEGMENT`), so the datagrams must go one by one.
pub fn is_gso_unsupported(error: &io::Error) -> bool {
    matches!(
        error.raw_os_error(),
        Some(libc::EIO | libc::EINVAL | libc::ENOPROTOOPT | libc::EOPNOTSUPP)
    )
}

/// Asks the kernel to deliver trains of one sender's datagrams to `socket` as one (UDP GRO);
/// false where it cannot.
pub fn enable_gro(socket: BorrowedFd<'_>) -> bool {
    set_gro(socket, true)
}

/// Turns UDP GRO on or off on `socket`; false where the kernel says no. Off, the kernel cuts
/// any train into its datagrams before they are queued: one message per datagram.
pub fn set_gro(socket: BorrowedFd<'_>, on: bool) -> bool {
    let on = libc::c_int::from(on);
    // SAFETY: a valid descriptor and an `int` option value of the declared size.
    let result = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_UDP,
            libc::UDP_GRO,
            ptr::from_ref(&on).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    result == 0
}

/// The segment size of a GRO train, from the `UDP_GRO` control message of `msg`; 0 when the
/// message is one datagram.
fn gro_segment(msg: &libc::msghdr) -> u16 {
    if msg.msg_controllen == 0 {
        return 0;
    }
    // SAFETY: `msg` was filled by the kernel: its control pointer and length describe the
    // control messages it wrote into our control space.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_UDP && (*cmsg).cmsg_type == libc::UDP_GRO {
                let size = ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast::<libc::c_int>());
                return u16::try_from(size).unwrap_or(0);
            }
            cmsg = libc::CMSG_NXTHDR(msg, cmsg);
        }
    }
    0
}

/// Writes a `UDP_SEGMENT` control message of `segment` into `control`; returns its length.
fn write_segment(control: &mut Control, segment: u16) -> usize {
    // SAFETY: `control` is 8-byte aligned and 32 bytes long, room for CMSG_SPACE(2) (24 bytes
    // on 64-bit targets, 16 on 32-bit ones).
    unsafe {
        let space = libc::CMSG_SPACE(size_of::<u16>() as u32) as usize;
        debug_assert!(space <= size_of::<Control>());
        let cmsg = control.as_mut_ptr().cast::<libc::cmsghdr>();
        (*cmsg).cmsg_level = libc::SOL_UDP;
        (*cmsg).cmsg_type = libc::UDP_SEGMENT;
        (*cmsg).cmsg_len = libc::CMSG_LEN(size_of::<u16>() as u32) as _;
        ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<u16>(), segment);
        space
    }
}

/// Writes `addr` into `name` as the kernel reads it; returns its length.
fn write_name(name: &mut libc::sockaddr_storage, addr: SocketAddr) -> libc::socklen_t {
    match addr {
        SocketAddr::V4(v4) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: v4.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from(*v4.ip()).to_be(),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is larger than and aligned for every sockaddr type.
            unsafe { ptr::write(ptr::from_mut(name).cast::<libc::sockaddr_in>(), sin) };
            size_of::<libc::sockaddr_in>() as libc::socklen_t
        }
        SocketAddr::V6(v6) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: v6.port().to_be(),
                sin6_flowinfo: v6.flowinfo(),
                sin6_addr: libc::in6_addr {
                    s6_addr: v6.ip().octets(),
                },
                sin6_scope_id: v6.scope_id(),
            };
            // SAFETY: as above.
            unsafe { ptr::write(ptr::from_mut(name).cast::<libc::sockaddr_in6>(), sin6) };
            size_of::<libc::sockaddr_in6>() as libc::socklen_t
        }
    }
}

/// The address the kernel wrote into `name` (`len` bytes), if it is IPv4 or IPv6.
fn read_name(name: &libc::sockaddr_storage, len: libc::socklen_t) -> Option<SocketAddr> {
    let len = len as usize;
    match libc::c_int::from(name.ss_family) {
        libc::AF_INET if len >= size_of::<libc::sockaddr_in>() => {
            // SAFETY: the family says the storage holds a sockaddr_in.
            let sin = unsafe { &*ptr::from_ref(name).cast::<libc::sockaddr_in>() };
            let ip = Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr));
            Some(SocketAddr::V4(SocketAddrV4::new(
                ip,
                u16::from_be(sin.sin_port),
            )))
        }
        libc::AF_INET6 if len >= size_of::<libc::sockaddr_in6>() => {
            // SAFETY: the family says the storage holds a sockaddr_in6.
            let sin6 = unsafe { &*ptr::from_ref(name).cast::<libc::sockaddr_in6>() };
            Some(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(sin6.sin6_addr.s6_addr),
                u16::from_be(sin6.sin6_port),
                sin6.sin6_flowinfo,
                sin6.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::UdpSocket;
    use std::os::fd::AsFd;

    fn pair() -> (UdpSocket, UdpSocket) {
        let a = UdpSocket::bind("127.0.0.1:0").unwrap();
        let b = UdpSocket::bind("127.0.0.1:0").unwrap();
        (a, b)
    }

    #[test]
    fn a_batch_goes_out_and_comes_in_whole_and_in_order() {
        let (sender, receiver) = pair();
        let to = receiver.local_addr().unwrap();
        let mut slots = Slots::new();
        let big = vec![7u8; 65_507];
        slots.fill(0, b"one", 0, to);
        slots.fill(1, &big, 0, to);
        slots.fill(2, b"three", 0, to);
        assert_eq!(send_to(sender.as_fd(), &mut slots, &[0, 1, 2]).unwrap(), 3);

        let mut inbox = Slots::new();
        receiver.set_nonblocking(true).unwrap();
        let mut got = 0;
        // Loopback delivers during the send: everything is queued already.
        got += recv(receiver.as_fd(), &mut inbox, 0, SLOTS).unwrap();
        assert_eq!(got, 3);
        assert_eq!(inbox.data(0), b"one");
        assert_eq!(inbox.data(1), &big[..]);
        assert_eq!(inbox.data(2), b"three");
        for slot in 0..3 {
            assert_eq!(inbox.meta(slot).peer, sender.local_addr().unwrap());
            assert_eq!(inbox.meta(slot).count(), 1);
        }
        let empty = recv(receiver.as_fd(), &mut inbox, 0, SLOTS).unwrap_err();
        assert_eq!(empty.kind(), io::ErrorKind::WouldBlock);
    }

    #[test]
    fn a_connected_send_follows_the_given_order() {
        let (sender, receiver) = pair();
        sender.connect(receiver.local_addr().unwrap()).unwrap();
        let mut slots = Slots::new();
        slots.fill(3, b"later", 0, NOWHERE);
        slots.fill(5, b"first", 0, NOWHERE);
        assert_eq!(send(sender.as_fd(), &mut slots, &[5, 3]).unwrap(), 2);
        let mut buf = [0u8; 16];
        let n = receiver.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"first");
        let n = receiver.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"later");
    }

    #[test]
    fn a_gso_train_is_received_as_one_slot_with_gro_and_cut_again_on_the_way_out() {
        let (sender, proxy) = pair();
        let sink = UdpSocket::bind("127.0.0.1:0").unwrap();
        assert!(enable_gro(proxy.as_fd()), "the kernel offers UDP GRO");
        proxy.set_nonblocking(true).unwrap();
        // 10 datagrams of 1,400 bytes and one of 600, numbered, as one GSO send.
        let mut train = Vec::new();
        for i in 0..11u8 {
            let len = if i == 10 { 600 } else { 1_400 };
            train.extend(std::iter::repeat_n(i, len));
        }
        let mut out = Slots::new();
        out.fill(0, &train, 1_400, proxy.local_addr().unwrap());
        assert_eq!(send_to(sender.as_fd(), &mut out, &[0]).unwrap(), 1);

        let mut slots = Slots::new();
        let mut received = 0;
        let mut datagrams = 0;
        while datagrams < 11 {
            let n = recv(proxy.as_fd(), &mut slots, received, SLOTS - received).unwrap();
            for slot in received..received + n {
                datagrams += slots.meta(slot).count();
            }
            received += n;
        }
        // Loopback hands a GSO train to a GRO socket whole.
        assert_eq!((received, slots.meta(0).segment), (1, 1_400));
        let total: usize = (0..received).map(|s| slots.meta(s).len).sum();
        assert_eq!(total, train.len());

        // On to the sink, cut into the same datagrams.
        let sink_addr = sink.local_addr().unwrap();
        let order: Vec<u8> = (0..received as u8).collect();
        for slot in 0..received {
            let meta = *slots.meta(slot);
            let data = slots.data(slot).to_vec();
            slots.fill(slot, &data, meta.segment, sink_addr);
        }
        assert_eq!(
            send_to(proxy.as_fd(), &mut slots, &order).unwrap(),
            received
        );
        let mut buf = [0u8; 2_048];
        for i in 0..11u8 {
            let n = sink.recv(&mut buf).unwrap();
            let want = if i == 10 { 600 } else { 1_400 };
            assert_eq!(n, want, "datagram {i}");
            assert!(buf[..n].iter().all(|&b| b == i), "datagram {i} intact");
        }
    }

    #[test]
    fn equal_datagrams_to_one_peer_go_as_one_train_and_arrive_as_they_were() {
        let (sender, gro) = pair();
        let plain = UdpSocket::bind("127.0.0.1:0").unwrap();
        assert!(enable_gro(gro.as_fd()));
        gro.set_nonblocking(true).unwrap();
        let (to_gro, to_plain) = (gro.local_addr().unwrap(), plain.local_addr().unwrap());
        let mut out = Slots::new();
        // Slots 0-3: 100, 100, 100, 40 bytes to the GRO socket (one train); slot 4: 100 bytes
        // to the plain one; slots 5-6: 60 then 100 bytes to it (a longer one ends a train).
        for (slot, (len, to)) in [
            (100, to_gro),
            (100, to_gro),
            (100, to_gro),
            (40, to_gro),
            (100, to_plain),
            (60, to_plain),
            (100, to_plain),
        ]
        .into_iter()
        .enumerate()
        {
            out.fill(slot, &vec![slot as u8; len], 0, to);
        }
        assert_eq!(out.train_length(&[0, 1, 2, 3, 4], true), 4);
        assert_eq!(out.train_length(&[5, 6], true), 1);
        assert_eq!(
            send_to(sender.as_fd(), &mut out, &[0, 1, 2, 3, 4, 5, 6]).unwrap(),
            7
        );

        let mut inbox = Slots::new();
        assert_eq!(
            recv(gro.as_fd(), &mut inbox, 0, SLOTS).unwrap(),
            1,
            "one train"
        );
        assert_eq!((inbox.meta(0).len, inbox.meta(0).segment), (340, 100));
        let expected: Vec<u8> = (0..4u8)
            .flat_map(|i| std::iter::repeat_n(i, if i == 3 { 40 } else { 100 }))
            .collect();
        assert_eq!(inbox.data(0), &expected[..]);
        // A socket without GRO gets each datagram on its own, in order.
        let mut buf = [0u8; 256];
        for (slot, len) in [(4u8, 100), (5, 60), (6, 100)] {
            let n = plain.recv(&mut buf).unwrap();
            assert_eq!(n, len);
            assert!(buf[..n].iter().all(|&b| b == slot));
        }
    }

    #[test]
    fn prefixed_and_stripped_datagrams_go_out_as_prefix_then_the_rest_even_in_a_train() {
        let (sender, receiver) = pair();
        let to = receiver.local_addr().unwrap();
        let mut out = Slots::new();
        // Four datagrams of 100 bytes, each losing a 10-byte header and gaining a 20-byte
        // prefix: one train of 110-byte segments.
        for slot in 0..4u8 {
            let mut bytes = vec![0xEE; 10];
            bytes.extend(std::iter::repeat_n(slot, 90));
            out.fill(usize::from(slot), &bytes, 0, to);
            out.strip(usize::from(slot), 10);
            out.prepend(usize::from(slot), |buf| {
                buf[..20].fill(0xA0 + slot);
                20
            });
            assert_eq!(out.data(usize::from(slot)), &[slot; 90][..]);
            assert_eq!(out.prefix(usize::from(slot)), &[0xA0 + slot; 20][..]);
        }
        assert_eq!(out.train_length(&[0, 1, 2, 3], true), 4);
        assert_eq!(send_to(sender.as_fd(), &mut out, &[0, 1, 2, 3]).unwrap(), 4);
        let mut buf = [0u8; 256];
        for slot in 0..4u8 {
            let n = receiver.recv(&mut buf).unwrap();
            assert_eq!(n, 110, "datagram {slot}");
            assert_eq!(&buf[..20], &[0xA0 + slot; 20][..]);
            assert_eq!(&buf[20..n], &[slot; 90][..]);
        }
    }

    #[test]
    fn large_datagrams_are_not_put_in_trains() {
        let mut out = Slots::new();
        let to = "127.0.0.1:9".parse().unwrap();
        out.fill(0, &[0; 1_453], 0, to);
        out.fill(1, &[0; 1_453], 0, to);
        assert_eq!(out.train_length(&[0, 1], true), 1);
    }

    #[test]
    fn segments_go_one_by_one_when_asked() {
        let (sender, receiver) = pair();
        let mut slots = Slots::new();
        slots.fill(0, &[1u8; 250], 100, receiver.local_addr().unwrap());
        assert_eq!(send_segments(sender.as_fd(), &slots, 0, true).unwrap(), 3);
        let mut buf = [0u8; 256];
        let sizes: Vec<usize> = (0..3).map(|_| receiver.recv(&mut buf).unwrap()).collect();
        assert_eq!(sizes, [100, 100, 50]);
    }

    #[test]
    fn addresses_survive_the_round_trip_through_the_kernel_form() {
        let mut name: libc::sockaddr_storage = unsafe { zeroed() };
        for addr in [
            "127.0.0.1:53".parse::<SocketAddr>().unwrap(),
            "[::1]:5353".parse().unwrap(),
            "[fe80::1%2]:1".parse().unwrap(),
        ] {
            let len = write_name(&mut name, addr);
            assert_eq!(read_name(&name, len), Some(addr));
        }
    }
}
