//! The last packet of a few recent flows toward one peer that a narrower path would not
//! carry, so that a switch to such a path tells their senders at once.
//!
//! Why: when the active path dies (an interconnect cut), everything a TCP sender has in
//! flight is lost, and its retransmission timer backs off (200 ms, 400 ms, 800 ms...) while
//! the failover is detected. After the switch, nothing tells the sender that a path is
//! back: it waits for its next timer, up to twice the failover's time, before a segment
//! crosses the new path (and is refused there for size, if the new path is narrower). An
//! ICMP "fragmentation needed" / "packet too big" quoting one of its unacknowledged
//! segments makes Linux lower the connection's MSS and retransmit at once
//! (`tcp_simple_retransmit`). So the engine keeps, per peer, the head of the last packet
//! of each of a few flows larger than the peer's narrowest other path carries, and at a
//! switch to a path whose limit they exceed, answers each with that limit.
//!
//! Pure: packets in, headers kept, ICMP errors out; [`RecentFlows::tick`] takes `now`.

use std::time::{Duration, Instant};

/// Flows remembered per peer; a new one replaces the least recent.
pub const FLOWS: usize = 8;
/// Bytes of each packet kept: an IPv4 header with options or an IPv6 header, and the
/// start of the transport header (ports and, for TCP, the sequence number), which is what
/// a host matches an ICMP error to its socket by.
const HEAD: usize = 128;
/// A flow not seen for this long is forgotten (its sender has given up, or its packets
/// shrank).
pub const RECENT: Duration = Duration::from_secs(3);

/// Source, destination, protocol and ports: which flow a packet belongs to.
type FlowKey = [u8; 37];

#[derive(Debug, Clone)]
struct Flow {
    key: FlowKey,
    /// The packet's length.
    len: u16,
    head: [u8; HEAD],
    head_len: u8,
    /// Seen since the last tick.
    fresh: bool,
    /// The tick at or after which it was last seen.
    seen: Option<Instant>,
}

/// The flows of one peer.
#[derive(Debug, Clone, Default)]
pub struct RecentFlows {
    flows: Vec<Flow>,
}

impl RecentFlows {
    /// Keeps the head of `packet` (from the TUN device, on its way to the peer) as its
    /// flow's latest. Packets that are not IPv4 or IPv6 are ignored.
    pub fn record(&mut self, packet: &[u8]) {
        let Some(key) = flow_key(packet) else {
            return;
        };
        let i = match self.flows.iter().position(|f| f.key == key) {
            Some(i) => i,
            None if self.flows.len() < FLOWS => {
                self.flows.push(Flow {
                    key,
                    len: 0,
                    head: [0; HEAD],
                    head_len: 0,
                    fresh: true,
                    seen: None,
                });
                self.flows.len() - 1
            }
            None => {
                // The least recently seen (one not seen since the last tick first).
                let i = (0..self.flows.len())
                    .min_by_key(|&i| (self.flows[i].fresh, self.flows[i].seen))
                    .unwrap_or(0);
                self.flows[i].key = key;
                i
            }
        };
        let f = &mut self.flows[i];
        let n = packet.len().min(HEAD);
        f.head[..n].copy_from_slice(&packet[..n]);
        f.head_len = n as u8;
        f.len = u16::try_from(packet.len()).unwrap_or(u16::MAX);
        f.fresh = true;
    }

    /// Dates the flows seen since the last tick `now`, and forgets those not seen for
    /// [`RECENT`]. Called every few tens of milliseconds, so the packet path never reads
    /// the clock.
    pub fn tick(&mut self, now: Instant) {
        for f in &mut self.flows {
            if f.fresh {
                f.fresh = false;
                f.seen = Some(now);
            }
        }
        self.flows.retain(|f| {
            f.seen
                .is_some_and(|s| now.saturating_duration_since(s) < RECENT)
        });
    }

    /// At a switch to a path carrying at most `limit` bytes: an ICMP error with that MTU
    /// for each recent flow whose last packet was larger (see [`super::icmp::too_big`]: IPv4
    /// without DF gets none). Those flows are forgotten: their senders now know.
    pub fn narrowed(&mut self, limit: u16, now: Instant) -> Vec<Vec<u8>> {
        self.tick(now);
        let mut out = Vec::new();
        self.flows.retain(|f| {
            if f.len <= limit {
                return true;
            }
            out.extend(super::icmp::too_big(
                &f.head[..usize::from(f.head_len)],
                limit,
            ));
            false
        });
        out
    }

    pub fn len(&self) -> usize {
        self.flows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.flows.is_empty()
    }
}

/// Source, destination, protocol and the transport header's first four bytes (the ports
/// of TCP and UDP) of an IPv4 or IPv6 packet; `None` for anything else or a truncated
/// header.
fn flow_key(packet: &[u8]) -> Option<FlowKey> {
    let mut key = [0u8; 37];
    match packet.first()? >> 4 {
        4 => {
            let ihl = usize::from(packet[0] & 0x0f) * 4;
            if ihl < 20 || packet.len() < ihl + 4 {
                return None;
            }
            key[..4].copy_from_slice(&packet[12..16]);
            key[16..20].copy_from_slice(&packet[16..20]);
            key[32] = packet[9];
            key[33..37].copy_from_slice(&packet[ihl..ihl + 4]);
        }
        6 => {
            if packet.len() < 44 {
                return None;
            }
            key[..32].copy_from_slice(&packet[8..40]);
            key[32] = packet[6];
            key[33..37].copy_from_slice(&packet[40..44]);
        }
        _ => return None,
    }
    Some(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A DF-set IPv4 TCP packet of `len` bytes from port `sport`, sequence number `seq`.
    fn tcp4(sport: u16, seq: u32, len: usize) -> Vec<u8> {
        let mut p = vec![0u8; len];
        p[0] = 0x45;
        p[2..4].copy_from_slice(&(len as u16).to_be_bytes());
        p[6] = 0x40;
        p[8] = 64;
        p[9] = 6;
        p[12..16].copy_from_slice(&[10, 10, 0, 10]);
        p[16..20].copy_from_slice(&[10, 20, 0, 10]);
        p[20..22].copy_from_slice(&sport.to_be_bytes());
        p[22..24].copy_from_slice(&5201u16.to_be_bytes());
        p[24..28].copy_from_slice(&seq.to_be_bytes());
        p
    }

    #[test]
    fn a_switch_to_a_narrower_path_tells_each_flow_once_quoting_its_latest_segment() {
        let t0 = Instant::now();
        let mut r = RecentFlows::default();
        r.record(&tcp4(40000, 1, 8940));
        r.record(&tcp4(40000, 2, 8940));
        r.record(&tcp4(40001, 7, 1000));
        r.tick(t0);
        assert_eq!(r.len(), 2);
        let errors = r.narrowed(1340, t0 + Duration::from_millis(700));
        assert_eq!(errors.len(), 1, "only the flow whose packets do not fit");
        let e = &errors[0];
        assert_eq!((e[20], e[21]), (3, 4), "fragmentation needed");
        assert_eq!(u16::from_be_bytes([e[26], e[27]]), 1340);
        // The quote: the latest segment's header (sequence number 2).
        assert_eq!(&e[28 + 24..28 + 28], &2u32.to_be_bytes());
        assert_eq!(&e[28 + 16..28 + 20], &[10, 20, 0, 10]);
        assert!(r.narrowed(1340, t0 + Duration::from_millis(800)).is_empty());
        assert_eq!(r.len(), 1);
    }

    #[test]
    fn flows_are_forgotten_after_a_while_and_bounded() {
        let t0 = Instant::now();
        let mut r = RecentFlows::default();
        for port in 0..(FLOWS as u16 * 3) {
            r.record(&tcp4(port, 1, 9000));
        }
        assert_eq!(r.len(), FLOWS);
        r.tick(t0);
        assert!(r.narrowed(1200, t0 + RECENT).is_empty(), "too old");
        assert!(r.is_empty());
    }

    #[test]
    fn garbage_and_truncated_headers_are_ignored() {
        let mut r = RecentFlows::default();
        for p in [&[][..], &[0x45; 23][..], &[0x60; 43][..], &[0x00; 100][..]] {
            r.record(p);
        }
        assert!(r.is_empty());
        // An IPv4 header length below 20 is no header.
        let mut bad = tcp4(1, 1, 100);
        bad[0] = 0x41;
        r.record(&bad);
        assert!(r.is_empty());
    }
}
