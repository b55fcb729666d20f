//! What the access policy reads of a decrypted IP packet: addresses, protocol, ports or ICMP
//! type, and, for an ICMP error, the packet it is about. Never panics; anything that cannot
//! be read far enough to be judged is `None`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

pub const TCP: u8 = 6;
pub const UDP: u8 = 17;
pub const ICMP: u8 = 1;
pub const ICMPV6: u8 = 58;

/// IPv6 extension headers walked before giving up on finding the transport header.
const MAX_EXTENSIONS: usize = 8;

/// The transport part of a packet, as far as the policy goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// TCP or UDP.
    Ports { src: u16, dst: u16 },
    /// ICMP or ICMPv6: type, code, and where its body starts in the packet (after the
    /// 4-byte header).
    Icmp { kind: u8, code: u8, body: usize },
    /// A fragment other than the first: no transport header.
    Fragment,
    /// Another protocol: nothing read beyond the IP header.
    Other,
}

/// A packet's headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Headers {
    pub src: IpAddr,
    pub dst: IpAddr,
    /// The transport protocol (after IPv6 extension headers).
    pub proto: u8,
    pub transport: Transport,
    /// For a fragment (the first included): its datagram's identification.
    pub fragment: Option<Fragment>,
}

/// Where a fragment belongs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fragment {
    /// The identification field (IPv4: 16 bits; IPv6: the fragment header's 32).
    pub id: u32,
    /// The first fragment (offset 0), which carries the transport header.
    pub first: bool,
}

impl Headers {
    pub fn is_icmp(&self) -> bool {
        matches!(self.proto, ICMP | ICMPV6)
    }

    /// The destination port for TCP and UDP.
    pub fn dst_port(&self) -> Option<u16> {
        match self.transport {
            Transport::Ports { dst, .. } => Some(dst),
            _ => None,
        }
    }
}

fn be16(p: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*p.get(at)?, *p.get(at + 1)?]))
}

/// Parses `packet`. `None`: truncated or inconsistent headers, an IPv4 fragment at offset 8
/// (which could rewrite the TCP header of the first; RFC 1858), a first fragment without
/// the whole transport header (RFC 7112 for IPv6), or too many IPv6 extension headers.
pub fn parse(packet: &[u8]) -> Option<Headers> {
    let (src, dst, proto, start, fragment): (IpAddr, IpAddr, u8, usize, Option<Fragment>) =
        match packet.first()? >> 4 {
            4 => {
                let ihl = usize::from(packet[0] & 0x0f) * 4;
                if ihl < 20 || packet.len() < ihl {
                    return None;
                }
                let src = Ipv4Addr::from(<[u8; 4]>::try_from(&packet[12..16]).ok()?);
                let dst = Ipv4Addr::from(<[u8; 4]>::try_from(&packet[16..20]).ok()?);
                let flags = be16(packet, 6)?;
                let offset = flags & 0x1fff;
                let proto = packet[9];
                if offset == 1 && proto == TCP {
                    return None;
                }
                let more = flags & 0x2000 != 0;
                let fragment = (more || offset != 0).then(|| Fragment {
                    id: u32::from(be16(packet, 4).unwrap_or(0)),
                    first: offset == 0,
                });
                (src.into(), dst.into(), proto, ihl, fragment)
            }
            6 => {
                if packet.len() < 40 {
                    return None;
                }
                let src = Ipv6Addr::from(<[u8; 16]>::try_from(&packet[8..24]).ok()?);
                let dst = Ipv6Addr::from(<[u8; 16]>::try_from(&packet[24..40]).ok()?);
                let (proto, start, fragment) = walk_v6(packet, packet[6])?;
                (src.into(), dst.into(), proto, start, fragment)
            }
            _ => return None,
        };
    let transport = if fragment.is_some_and(|f| !f.first) {
        Transport::Fragment
    } else {
        match proto {
            TCP | UDP => Transport::Ports {
                src: be16(packet, start)?,
                dst: be16(packet, start + 2)?,
            },
            ICMP | ICMPV6 => Transport::Icmp {
                kind: *packet.get(start)?,
                code: *packet.get(start + 1)?,
                body: start + 4,
            },
            _ => Transport::Other,
        }
    };
    Some(Headers {
        src,
        dst,
        proto,
        transport,
        fragment,
    })
}

/// Walks IPv6 extension headers from `next` at byte 40: (upper-layer protocol, where its
/// header starts, the fragment header's identification and offset if there is one).
fn walk_v6(packet: &[u8], mut next: u8) -> Option<(u8, usize, Option<Fragment>)> {
    let mut at = 40;
    let mut fragment = None;
    for _ in 0..MAX_EXTENSIONS {
        match next {
            // Hop-by-hop, routing, destination options: (length + 1) * 8 bytes.
            0 | 43 | 60 => {
                let len = (usize::from(*packet.get(at + 1)?) + 1) * 8;
                next = *packet.get(at)?;
                at += len;
            }
            // Fragment: 8 bytes; the offset is in 8-byte units, above 3 flag bits.
            44 => {
                let offset = be16(packet, at + 2)? >> 3;
                let id = u32::from_be_bytes(<[u8; 4]>::try_from(packet.get(at + 4..at + 8)?).ok()?);
                next = *packet.get(at)?;
                at += 8;
                fragment = Some(Fragment {
                    id,
                    first: offset == 0,
                });
                if offset != 0 {
                    return Some((next, at, fragment));
                }
            }
            // Authentication header: (length + 2) * 4 bytes.
            51 => {
                let len = (usize::from(*packet.get(at + 1)?) + 2) * 4;
                next = *packet.get(at)?;
                at += len;
            }
            _ => return (at <= packet.len()).then_some((next, at, fragment)),
        }
    }
    None
}

/// Whether an ICMP message is an error that quotes the packet it is about.
pub fn is_icmp_error(h: &Headers) -> bool {
    match (h.proto, h.transport) {
        // Destination unreachable (fragmentation needed included), time exceeded,
        // parameter problem.
        (ICMP, Transport::Icmp { kind, .. }) => matches!(kind, 3 | 11 | 12),
        // Destination unreachable, packet too big, time exceeded, parameter problem.
        (ICMPV6, Transport::Icmp { kind, .. }) => matches!(kind, 1..=4),
        _ => false,
    }
}

/// The echo identifier of an ICMP echo request (`request`) or reply, if `h` is one.
pub fn echo_id(packet: &[u8], h: &Headers, request: bool) -> Option<u16> {
    let Transport::Icmp { kind, body, .. } = h.transport else {
        return None;
    };
    let want = match (h.proto, request) {
        (ICMP, true) => 8,
        (ICMP, false) => 0,
        (ICMPV6, true) => 128,
        (ICMPV6, false) => 129,
        _ => return None,
    };
    (kind == want).then(|| be16(packet, body)).flatten()
}

/// The packet an ICMP error quotes (its headers as far as they were quoted), with the
/// bytes it starts at; the quote must be of the same IP version.
pub fn quoted<'p>(packet: &'p [u8], h: &Headers) -> Option<(&'p [u8], Headers)> {
    let Transport::Icmp { body, .. } = h.transport else {
        return None;
    };
    // The 4 bytes after the type, code and checksum (unused, MTU or pointer).
    let inner = packet.get(body + 4..)?;
    let quoted = parse(inner)?;
    (quoted.src.is_ipv4() == h.src.is_ipv4()).then_some((inner, quoted))
}

#[cfg(test)]
pub mod build {
    //! Packets for tests (checksums are not filled in: nothing here reads them).

    use super::*;

    pub fn v4(src: [u8; 4], dst: [u8; 4], proto: u8, transport: &[u8]) -> Vec<u8> {
        let total = 20 + transport.len();
        let mut p = vec![0u8; total];
        p[0] = 0x45;
        p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
        p[8] = 64;
        p[9] = proto;
        p[12..16].copy_from_slice(&src);
        p[16..20].copy_from_slice(&dst);
        p[20..].copy_from_slice(transport);
        p
    }

    pub fn v6(src: &str, dst: &str, next: u8, rest: &[u8]) -> Vec<u8> {
        let mut p = vec![0u8; 40];
        p[0] = 0x60;
        p[4..6].copy_from_slice(&(rest.len() as u16).to_be_bytes());
        p[6] = next;
        p[7] = 64;
        p[8..24].copy_from_slice(&src.parse::<Ipv6Addr>().unwrap().octets());
        p[24..40].copy_from_slice(&dst.parse::<Ipv6Addr>().unwrap().octets());
        p.extend_from_slice(rest);
        p
    }

    /// A TCP header (20 bytes) with the SYN flag, or a UDP header (8 bytes).
    pub fn ports(proto: u8, src: u16, dst: u16) -> Vec<u8> {
        let mut t = vec![0u8; if proto == TCP { 20 } else { 8 }];
        t[0..2].copy_from_slice(&src.to_be_bytes());
        t[2..4].copy_from_slice(&dst.to_be_bytes());
        if proto == TCP {
            t[12] = 0x50;
            t[13] = 0x02;
        }
        t
    }

    /// An ICMP message: type, code, then 4 bytes (`rest4`), then `body`.
    pub fn icmp(kind: u8, code: u8, rest4: [u8; 4], body: &[u8]) -> Vec<u8> {
        let mut t = vec![kind, code, 0, 0];
        t.extend_from_slice(&rest4);
        t.extend_from_slice(body);
        t
    }
}

#[cfg(test)]
mod tests {
    use super::build::*;
    use super::*;

    #[test]
    fn ipv4_and_ipv6_transports_are_read() {
        let p = v4([10, 1, 0, 5], [10, 2, 0, 9], TCP, &ports(TCP, 40000, 443));
        let h = parse(&p).unwrap();
        assert_eq!(h.src, "10.1.0.5".parse::<IpAddr>().unwrap());
        assert_eq!(
            h.transport,
            Transport::Ports {
                src: 40000,
                dst: 443
            }
        );
        // IPv6 with a hop-by-hop header before UDP.
        let mut rest = vec![UDP, 0, 0, 0, 0, 0, 0, 0];
        rest.extend(ports(UDP, 5353, 53));
        let p = v6("fd00:1::5", "fd00:2::9", 0, &rest);
        let h = parse(&p).unwrap();
        assert_eq!((h.proto, h.dst_port()), (UDP, Some(53)));
        let echo = v6(
            "fd00:1::5",
            "fd00:2::9",
            ICMPV6,
            &icmp(128, 0, [0x12, 0x34, 0, 1], b"x"),
        );
        let h = parse(&echo).unwrap();
        assert_eq!(echo_id(&echo, &h, true), Some(0x1234));
        assert_eq!(echo_id(&echo, &h, false), None);
    }

    #[test]
    fn fragments_and_truncations() {
        // A non-first IPv4 fragment carries no ports.
        let mut p = v4([10, 1, 0, 5], [10, 2, 0, 9], UDP, &[0u8; 16]);
        p[4..6].copy_from_slice(&0x0102u16.to_be_bytes());
        p[6..8].copy_from_slice(&185u16.to_be_bytes());
        let h = parse(&p).unwrap();
        assert_eq!(h.transport, Transport::Fragment);
        assert_eq!(
            h.fragment,
            Some(Fragment {
                id: 0x0102,
                first: false
            })
        );
        // The first fragment (more fragments, offset 0) has its ports.
        let mut p = v4([10, 1, 0, 5], [10, 2, 0, 9], UDP, &ports(UDP, 5, 53));
        p[6..8].copy_from_slice(&0x2000u16.to_be_bytes());
        let h = parse(&p).unwrap();
        assert_eq!(h.dst_port(), Some(53));
        assert!(h.fragment.is_some_and(|f| f.first));
        // An unfragmented packet is no fragment (don't-fragment set or not).
        let mut p = v4([10, 1, 0, 5], [10, 2, 0, 9], UDP, &ports(UDP, 5, 53));
        p[6..8].copy_from_slice(&0x4000u16.to_be_bytes());
        assert_eq!(parse(&p).unwrap().fragment, None);
        // Offset 8 bytes over TCP could rewrite the first fragment's flags: refused.
        let mut p = v4([10, 1, 0, 5], [10, 2, 0, 9], TCP, &[0u8; 16]);
        p[6..8].copy_from_slice(&1u16.to_be_bytes());
        assert_eq!(parse(&p), None);
        // An IPv6 non-first fragment.
        let frag = [TCP, 0, 0, 0x18, 0, 0, 0, 1];
        let p = v6("fd00:1::5", "fd00:2::9", 44, &frag);
        let h = parse(&p).unwrap();
        assert_eq!(h.transport, Transport::Fragment);
        assert_eq!(
            h.fragment,
            Some(Fragment {
                id: 1,
                first: false
            })
        );
        // A first fragment must hold the ports.
        let frag = [TCP, 0, 0, 1, 0, 0, 0, 1, 0x9c, 0x40];
        assert_eq!(parse(&v6("fd00:1::5", "fd00:2::9", 44, &frag)), None);
        // Truncated headers, options past the end, another version, endless extensions.
        let good = v4([10, 1, 0, 5], [10, 2, 0, 9], TCP, &ports(TCP, 1, 2));
        for n in 0..22 {
            assert_eq!(parse(&good[..n]), None, "{n} bytes");
        }
        let mut opts = good.clone();
        opts[0] = 0x4f;
        assert_eq!(parse(&opts), None);
        let mut v5 = good.clone();
        v5[0] = 0x55;
        assert_eq!(parse(&v5), None);
        let chain: Vec<u8> = (0..10).flat_map(|_| [60u8, 0, 0, 0, 0, 0, 0, 0]).collect();
        assert_eq!(parse(&v6("fd00:1::5", "fd00:2::9", 60, &chain)), None);
        // Every truncation of every packet here parses or not, without panicking.
        for p in [good, v6("fd00:1::5", "fd00:2::9", 0, &chain)] {
            for n in 0..p.len() {
                let _ = parse(&p[..n]);
            }
        }
    }

    #[test]
    fn icmp_errors_quote_the_packet_they_are_about() {
        let sent = v4([10, 1, 0, 5], [10, 2, 0, 9], UDP, &ports(UDP, 40000, 53));
        // Port unreachable, quoting the IP header and 8 bytes.
        let err = v4(
            [10, 2, 0, 9],
            [10, 1, 0, 5],
            ICMP,
            &icmp(3, 3, [0; 4], &sent[..28]),
        );
        let h = parse(&err).unwrap();
        assert!(is_icmp_error(&h));
        let (_, q) = quoted(&err, &h).unwrap();
        assert_eq!((q.src, q.dst), (h.dst, h.src));
        assert_eq!(
            q.transport,
            Transport::Ports {
                src: 40000,
                dst: 53
            }
        );
        // An echo reply is no error; an error quoting garbage quotes nothing.
        let reply = v4([10, 2, 0, 9], [10, 1, 0, 5], ICMP, &icmp(0, 0, [0; 4], b""));
        assert!(!is_icmp_error(&parse(&reply).unwrap()));
        let bad = v4(
            [10, 2, 0, 9],
            [10, 1, 0, 5],
            ICMP,
            &icmp(3, 1, [0; 4], &[1, 2]),
        );
        let h = parse(&bad).unwrap();
        assert_eq!(quoted(&bad, &h), None);
    }
}
