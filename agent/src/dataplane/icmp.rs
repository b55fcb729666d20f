//! ICMP "fragmentation needed" (IPv4) and "packet too big" (ICMPv6) for packets from the
//! TUN device larger than their peer's path carries, so that the sender (this node, or a
//! host behind this gateway) does path MTU discovery instead of losing them. Pure: packets
//! in, packets out; [`RateLimit`] takes `now`.
//!
//! The error's source is the packet's destination: it is written to the TUN device and
//! comes back into the node from there, where a source address of the node's own would be
//! dropped as martian, and the destination's prefix routes through the TUN device, so
//! reverse-path filtering passes it. Hosts accept such errors by the quoted header, which
//! must match a socket of theirs.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::{Duration, Instant};

/// How much of the offending packet an ICMPv4 error quotes (RFC 1812: as much as fits in
/// 576 bytes).
const V4_QUOTE: usize = 576 - 20 - 8;
/// ICMPv6 errors fit in IPv6's minimum MTU (RFC 4443).
const V6_QUOTE: usize = 1280 - 40 - 8;

/// The error telling the sender of `packet` that at most `mtu` bytes pass, or `None` when
/// none is due: not an IP packet, an IPv4 packet without DF (it may be fragmented), a
/// fragment other than the first, an ICMP error itself, or a source that cannot be told
/// (unspecified, multicast).
pub fn too_big(packet: &[u8], mtu: u16) -> Option<Vec<u8>> {
    match packet.first()? >> 4 {
        4 => too_big_v4(packet, mtu),
        6 => too_big_v6(packet, mtu),
        _ => None,
    }
}

fn too_big_v4(packet: &[u8], mtu: u16) -> Option<Vec<u8>> {
    let ihl = usize::from(packet.first()? & 0x0f) * 4;
    if ihl < 20 || packet.len() < ihl {
        return None;
    }
    let flags_frag = u16::from_be_bytes([packet[6], packet[7]]);
    let df = flags_frag & 0x4000 != 0;
    let offset = flags_frag & 0x1fff;
    if !df || offset != 0 {
        return None;
    }
    let src = Ipv4Addr::new(packet[12], packet[13], packet[14], packet[15]);
    let dst = Ipv4Addr::new(packet[16], packet[17], packet[18], packet[19]);
    if src.is_unspecified() || src.is_multicast() || src.is_broadcast() {
        return None;
    }
    // No error about an ICMP error (types other than echo and the like).
    if packet[9] == 1 {
        let t = *packet.get(ihl)?;
        if !matches!(t, 0 | 8 | 13 | 14 | 15 | 16 | 17 | 18) {
            return None;
        }
    }
    let quote = &packet[..packet.len().min(V4_QUOTE)];
    let total = 20 + 8 + quote.len();
    let mut out = vec![0u8; total];
    out[0] = 0x45;
    out[2..4].copy_from_slice(&(total as u16).to_be_bytes());
    out[8] = 64;
    out[9] = 1;
    out[12..16].copy_from_slice(&dst.octets());
    out[16..20].copy_from_slice(&src.octets());
    let sum = checksum(&[&out[..20]]);
    out[10..12].copy_from_slice(&sum.to_be_bytes());
    let icmp = &mut out[20..];
    icmp[0] = 3; // destination unreachable
    icmp[1] = 4; // fragmentation needed and DF set
    icmp[6..8].copy_from_slice(&mtu.to_be_bytes());
    icmp[8..].copy_from_slice(quote);
    let sum = checksum(&[icmp]);
    icmp[2..4].copy_from_slice(&sum.to_be_bytes());
    Some(out)
}

fn too_big_v6(packet: &[u8], mtu: u16) -> Option<Vec<u8>> {
    if packet.len() < 40 {
        return None;
    }
    let mut src = [0u8; 16];
    src.copy_from_slice(&packet[8..24]);
    let mut dst = [0u8; 16];
    dst.copy_from_slice(&packet[24..40]);
    let (src, dst) = (Ipv6Addr::from(src), Ipv6Addr::from(dst));
    if src.is_unspecified() || src.is_multicast() {
        return None;
    }
    // No error about an ICMPv6 error (types below 128); extension headers are not walked,
    // so an error behind one may be answered, which is harmless.
    if packet[6] == 58 && packet.get(40).is_some_and(|t| *t < 128) {
        return None;
    }
    let quote = &packet[..packet.len().min(V6_QUOTE)];
    let len = 8 + quote.len();
    let mut out = vec![0u8; 40 + len];
    out[0] = 0x60;
    out[4..6].copy_from_slice(&(len as u16).to_be_bytes());
    out[6] = 58;
    out[7] = 64;
    out[8..24].copy_from_slice(&dst.octets());
    out[24..40].copy_from_slice(&src.octets());
    {
        let icmp = &mut out[40..];
        icmp[0] = 2; // packet too big
        icmp[4..8].copy_from_slice(&u32::from(mtu).to_be_bytes());
        icmp[8..].copy_from_slice(quote);
    }
    let pseudo = pseudo_header_v6(&dst, &src, len as u32);
    let sum = checksum(&[&pseudo, &out[40..]]);
    out[42..44].copy_from_slice(&sum.to_be_bytes());
    Some(out)
}

fn pseudo_header_v6(src: &Ipv6Addr, dst: &Ipv6Addr, len: u32) -> [u8; 40] {
    let mut p = [0u8; 40];
    p[..16].copy_from_slice(&src.octets());
    p[16..32].copy_from_slice(&dst.octets());
    p[32..36].copy_from_slice(&len.to_be_bytes());
    p[39] = 58;
    p
}

/// The Internet checksum of the concatenated parts (each of even length but the last).
fn checksum(parts: &[&[u8]]) -> u16 {
    let mut sum = 0u32;
    for part in parts {
        let mut chunks = part.chunks_exact(2);
        for c in &mut chunks {
            sum += u32::from(u16::from_be_bytes([c[0], c[1]]));
        }
        if let [last] = chunks.remainder() {
            sum += u32::from(*last) << 8;
        }
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// At most `burst` errors, refilled at `per_second` (like the kernel's
/// `icmp_ratelimit`): a flood of oversized packets draws a trickle of errors.
#[derive(Debug, Clone)]
pub struct RateLimit {
    tokens: f64,
    burst: f64,
    per_second: f64,
    last: Option<Instant>,
}

impl Default for RateLimit {
    /// 10 at once, 100 a second.
    fn default() -> RateLimit {
        RateLimit::new(10, 100)
    }
}

impl RateLimit {
    pub fn new(burst: u32, per_second: u32) -> RateLimit {
        RateLimit {
            tokens: f64::from(burst),
            burst: f64::from(burst),
            per_second: f64::from(per_second),
            last: None,
        }
    }

    /// Whether one more error may be sent now.
    pub fn allow(&mut self, now: Instant) -> bool {
        let elapsed = self
            .last
            .map_or(Duration::ZERO, |l| now.saturating_duration_since(l));
        self.last = Some(now);
        self.tokens = (self.tokens + elapsed.as_secs_f64() * self.per_second).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// The source address of an IP packet, for logs.
pub fn source(packet: &[u8]) -> Option<IpAddr> {
    match packet.first()? >> 4 {
        4 if packet.len() >= 20 => Some(IpAddr::V4(Ipv4Addr::new(
            packet[12], packet[13], packet[14], packet[15],
        ))),
        6 if packet.len() >= 40 => {
            let mut a = [0u8; 16];
            a.copy_from_slice(&packet[8..24]);
            Some(IpAddr::V6(Ipv6Addr::from(a)))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v4(df: bool, proto: u8, len: usize) -> Vec<u8> {
        let mut p = vec![0u8; len];
        p[0] = 0x45;
        p[2..4].copy_from_slice(&(len as u16).to_be_bytes());
        if df {
            p[6] = 0x40;
        }
        p[8] = 64;
        p[9] = proto;
        p[12..16].copy_from_slice(&[10, 10, 0, 10]);
        p[16..20].copy_from_slice(&[10, 20, 0, 10]);
        let sum = checksum(&[&p[..20]]);
        p[10..12].copy_from_slice(&sum.to_be_bytes());
        p
    }

    fn v6(next: u8, first: u8, len: usize) -> Vec<u8> {
        let mut p = vec![0u8; len];
        p[0] = 0x60;
        p[4..6].copy_from_slice(&((len - 40) as u16).to_be_bytes());
        p[6] = next;
        p[7] = 64;
        p[8..24].copy_from_slice(&"fd10::10".parse::<Ipv6Addr>().unwrap().octets());
        p[24..40].copy_from_slice(&"fd20::10".parse::<Ipv6Addr>().unwrap().octets());
        p[40] = first;
        p
    }

    #[test]
    fn fragmentation_needed_goes_back_to_the_sender_with_the_mtu_and_valid_checksums() {
        let packet = v4(true, 6, 1400);
        let icmp = too_big(&packet, 1220).unwrap();
        assert_eq!(icmp.len(), 576);
        assert_eq!(&icmp[12..16], &[10, 20, 0, 10], "from the destination");
        assert_eq!(&icmp[16..20], &[10, 10, 0, 10], "to the sender");
        assert_eq!(checksum(&[&icmp[..20]]), 0, "IP header checksum");
        assert_eq!(checksum(&[&icmp[20..]]), 0, "ICMP checksum");
        assert_eq!((icmp[20], icmp[21]), (3, 4));
        assert_eq!(u16::from_be_bytes([icmp[26], icmp[27]]), 1220);
        assert_eq!(&icmp[28..48], &packet[..20], "quotes the header");
    }

    #[test]
    fn packet_too_big_quotes_within_the_minimum_mtu() {
        let packet = v6(6, 0, 1400);
        let icmp = too_big(&packet, 1200).unwrap();
        assert_eq!(icmp.len(), 1280);
        assert_eq!(icmp[40], 2);
        assert_eq!(
            u32::from_be_bytes([icmp[44], icmp[45], icmp[46], icmp[47]]),
            1200
        );
        assert_eq!(&icmp[8..24], &packet[24..40]);
        assert_eq!(&icmp[24..40], &packet[8..24]);
        let src = Ipv6Addr::from(<[u8; 16]>::try_from(&icmp[8..24]).unwrap());
        let dst = Ipv6Addr::from(<[u8; 16]>::try_from(&icmp[24..40]).unwrap());
        let pseudo = pseudo_header_v6(&src, &dst, 1240);
        assert_eq!(checksum(&[&pseudo, &icmp[40..]]), 0, "ICMPv6 checksum");
    }

    #[test]
    fn no_error_without_df_for_errors_or_for_garbage() {
        assert_eq!(
            too_big(&v4(false, 6, 1400), 1220),
            None,
            "may be fragmented"
        );
        let mut error = v4(true, 1, 1400);
        error[20] = 3;
        assert_eq!(too_big(&error, 1220), None, "an ICMP error");
        let mut echo = v4(true, 1, 1400);
        echo[20] = 8;
        assert!(too_big(&echo, 1220).is_some(), "a ping");
        assert_eq!(too_big(&v6(58, 1, 1400), 1200), None, "an ICMPv6 error");
        assert!(
            too_big(&v6(58, 128, 1400), 1200).is_some(),
            "an echo request"
        );
        for garbage in [&[][..], &[0x45][..], &[0x60; 39][..], &[0x00; 100][..]] {
            assert_eq!(too_big(garbage, 1200), None);
        }
    }

    #[test]
    fn the_rate_limit_allows_a_burst_then_a_trickle() {
        let t0 = Instant::now();
        let mut rl = RateLimit::new(3, 10);
        assert_eq!((0..10).filter(|_| rl.allow(t0)).count(), 3);
        assert!(!rl.allow(t0 + Duration::from_millis(50)));
        assert!(rl.allow(t0 + Duration::from_millis(150)));
    }
}
