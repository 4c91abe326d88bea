//! Telling the link that a VIP is here: a gratuitous ARP request for IPv4, an unsolicited
//! neighbour advertisement for IPv6. Both are best effort (logged at debug on failure): the
//! address works without them, neighbours just learn it later.
//!
//! The ARP frame goes out of an `AF_PACKET` socket addressed with the link-layer address the
//! kernel reports for the interface (`getifaddrs`), so no raw socket address is built by hand.
//! Both need CAP_NET_RAW.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddrV6};
use std::os::fd::AsRawFd;

use nix::ifaddrs::getifaddrs;
use nix::sys::socket::{AddressFamily, LinkAddr, MsgFlags, SockFlag, SockType, sendto, socket};
use socket2::{Domain, Protocol, Socket, Type};

/// Announces `vip` on interface `interface` (index `index`).
pub fn announce(vip: IpAddr, index: u32, interface: &str) {
    let Some((link, mac)) = link_address(interface) else {
        tracing::debug!(%vip, interface, "vip: interface has no link-layer address; not announced");
        return;
    };
    let result = match vip {
        IpAddr::V4(ip) => gratuitous_arp(ip, &link, mac),
        IpAddr::V6(ip) => neighbour_advertisement(ip, index, interface, mac),
    };
    match result {
        Ok(()) => tracing::debug!(%vip, interface, "vip: announced"),
        Err(error) => tracing::debug!(%vip, interface, %error, "vip: cannot announce"),
    }
}

/// The interface's `AF_PACKET` address and MAC.
fn link_address(interface: &str) -> Option<(LinkAddr, [u8; 6])> {
    getifaddrs().ok()?.find_map(|a| {
        if a.interface_name != interface {
            return None;
        }
        let link = *a.address.as_ref()?.as_link_addr()?;
        let mac = link.addr()?;
        Some((link, mac))
    })
}

/// An ARP request for `ip` from `ip` (sender = target), broadcast.
fn arp_frame(ip: Ipv4Addr, mac: [u8; 6]) -> [u8; 42] {
    let mut frame = [0u8; 42];
    frame[0..6].copy_from_slice(&[0xff; 6]);
    frame[6..12].copy_from_slice(&mac);
    frame[12..14].copy_from_slice(&0x0806u16.to_be_bytes()); // ARP
    frame[14..16].copy_from_slice(&1u16.to_be_bytes()); // Ethernet
    frame[16..18].copy_from_slice(&0x0800u16.to_be_bytes()); // IPv4
    frame[18] = 6;
    frame[19] = 4;
    frame[20..22].copy_from_slice(&1u16.to_be_bytes()); // request
    frame[22..28].copy_from_slice(&mac);
    frame[28..32].copy_from_slice(&ip.octets());
    // Target hardware address stays zero.
    frame[38..42].copy_from_slice(&ip.octets());
    frame
}

fn gratuitous_arp(ip: Ipv4Addr, link: &LinkAddr, mac: [u8; 6]) -> std::io::Result<()> {
    // Protocol 0: the socket only sends, it receives nothing.
    let fd = socket(
        AddressFamily::Packet,
        SockType::Raw,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    sendto(fd.as_raw_fd(), &arp_frame(ip, mac), link, MsgFlags::empty())?;
    Ok(())
}

/// An ICMPv6 neighbour advertisement for `ip` with the override flag and the target
/// link-layer address option; the kernel fills in the checksum.
fn advertisement(ip: Ipv6Addr, mac: [u8; 6]) -> [u8; 32] {
    let mut packet = [0u8; 32];
    packet[0] = 136; // neighbour advertisement
    packet[4] = 0x20; // override
    packet[8..24].copy_from_slice(&ip.octets());
    packet[24] = 2; // target link-layer address option
    packet[25] = 1; // length in units of 8 bytes
    packet[26..32].copy_from_slice(&mac);
    packet
}

fn neighbour_advertisement(
    ip: Ipv6Addr,
    index: u32,
    interface: &str,
    mac: [u8; 6],
) -> std::io::Result<()> {
    let socket = Socket::new(Domain::IPV6, Type::RAW, Some(Protocol::ICMPV6))?;
    // RFC 4861: neighbour discovery messages carry hop limit 255, proving they are link-local.
    socket.set_multicast_hops_v6(255)?;
    socket.set_multicast_if_v6(index)?;
    socket.bind_device(Some(interface.as_bytes()))?;
    socket.set_freebind_v6(true)?;
    socket.bind(&SocketAddrV6::new(ip, 0, 0, 0).into())?;
    let all_nodes = SocketAddrV6::new(Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1), 0, 0, index);
    socket.send_to(&advertisement(ip, mac), &all_nodes.into())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arp_frame_layout() {
        let mac = [2, 0, 0, 0, 0, 1];
        let f = arp_frame(Ipv4Addr::new(10, 0, 0, 7), mac);
        assert_eq!(&f[0..6], &[0xff; 6]);
        assert_eq!(&f[6..12], &mac);
        assert_eq!(&f[12..14], &[0x08, 0x06]);
        assert_eq!(&f[20..22], &[0, 1]);
        assert_eq!(&f[28..32], &[10, 0, 0, 7]);
        assert_eq!(&f[32..38], &[0; 6]);
        assert_eq!(&f[38..42], &[10, 0, 0, 7]);
    }

    #[test]
    fn advertisement_layout() {
        let ip: Ipv6Addr = "fd00::7".parse().unwrap();
        let p = advertisement(ip, [2, 0, 0, 0, 0, 1]);
        assert_eq!(p[0], 136);
        assert_eq!(p[4], 0x20);
        assert_eq!(&p[8..24], &ip.octets());
        assert_eq!(&p[24..26], &[2, 1]);
    }
}
