//! Spreading a site's traffic over its gateways (pure).
//!
//! A remote site with several gateways gives each of them its prefixes (the map lists them
//! in every gateway's allowed IPs). For each packet the engine picks one of them with
//! [`choose`]: rendezvous (highest-random-weight) hashing of the packet's flow over the
//! gateways that are healthy by this node's own probes, restricted to the best priority
//! among those. So:
//!
//! - **one flow keeps one gateway** while the healthy set does not change (the flow hash
//!   covers the inner 5-tuple, without ports for fragments so every fragment of a datagram
//!   goes the same way);
//! - **flows spread** over the healthy gateways of the best priority, about evenly;
//! - **a gateway that fails takes only its own flows with it**: they move to the others, the
//!   rest stay where they were; when it comes back, only the flows that hash to it move back;
//! - with **no healthy gateway** the choice falls back to every gateway of the best priority
//!   (nothing better is known; WireGuard may still get through).
//!
//! [`flow_hash`] is symmetric (the two endpoints of the tuple are sorted before hashing) and
//! the same on every node (a fixed function of the bytes, no per-process seed), and a
//! gateway's weight for a flow depends only on the flow and the gateway's public key. So two
//! nodes that choose among the same healthy set of gateways for the same flow, in either
//! direction, choose the same gateway. What that does and does not make symmetric is
//! described in README's "Several gateways per site".

use std::net::IpAddr;

use super::access::packet::{self, Transport};

/// One gateway of a site, as a candidate for a flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gateway<T> {
    /// What the caller knows it by (the engine's tunnel index).
    pub id: T,
    /// Its WireGuard public key: its weight for a flow derives from it, so every node ranks
    /// the gateways alike.
    pub key: [u8; 32],
    /// Lower is preferred: 0 for active gateways, higher for standby ones.
    pub priority: u8,
    /// Whether this node's probes reach it.
    pub healthy: bool,
}

/// The gateway for a flow of hash `flow`: the highest weight among the healthy gateways of
/// the best priority found among healthy ones, or, with none healthy, among all gateways of
/// the best priority. `None` only for an empty list. One pass, no allocation (it runs per
/// packet): the order (healthy, best priority, weight, key) is that rule.
pub fn choose<T: Copy>(gateways: impl IntoIterator<Item = Gateway<T>>, flow: u64) -> Option<T> {
    gateways
        .into_iter()
        .max_by_key(|g| {
            (
                g.healthy,
                std::cmp::Reverse(g.priority),
                weight(flow, &g.key),
                g.key,
            )
        })
        .map(|g| g.id)
}

/// A gateway's weight for a flow.
pub fn weight(flow: u64, key: &[u8; 32]) -> u64 {
    let mut k = [0u8; 8];
    k.copy_from_slice(&key[..8]);
    mix(flow ^ mix(u64::from_le_bytes(k)))
}

/// The flow hash of an IP packet: of the sorted (address, port) pairs and the protocol, for
/// TCP and UDP (first fragments excluded: a datagram's fragments hash alike); of the
/// sorted addresses and the protocol otherwise. `None` for what is not an IP packet.
pub fn flow_hash(pkt: &[u8]) -> Option<u64> {
    let h = packet::parse(pkt)?;
    let (sport, dport) = match (h.transport, h.fragment) {
        (Transport::Ports { src, dst }, None) => (src, dst),
        _ => (0, 0),
    };
    let a = (h.src, sport);
    let b = (h.dst, dport);
    let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
    let mut acc = mix(u64::from(h.proto) ^ 0x5354_0000);
    for (addr, port) in [lo, hi] {
        acc = mix(acc ^ addr_bits(addr));
        acc = mix(acc ^ u64::from(port));
    }
    Some(acc)
}

fn addr_bits(addr: IpAddr) -> u64 {
    match addr {
        IpAddr::V4(a) => u64::from(u32::from(a)),
        IpAddr::V6(a) => {
            let v = u128::from(a);
            mix(v as u64) ^ ((v >> 64) as u64)
        }
    }
}

/// splitmix64's finaliser: a fixed, well-spread mixing of 64 bits.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::packet::build;
    use super::*;

    fn gw(id: u8, priority: u8, healthy: bool) -> Gateway<u8> {
        Gateway {
            id,
            key: [id; 32],
            priority,
            healthy,
        }
    }

    fn tcp(src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16) -> Vec<u8> {
        build::v4(
            src,
            dst,
            packet::TCP,
            &build::ports(packet::TCP, sport, dport),
        )
    }

    #[test]
    fn a_flow_and_its_replies_hash_alike_and_other_flows_differ() {
        let there = tcp([10, 10, 0, 5], 40000, [10, 20, 0, 5], 443);
        let back = tcp([10, 20, 0, 5], 443, [10, 10, 0, 5], 40000);
        let other = tcp([10, 10, 0, 5], 40001, [10, 20, 0, 5], 443);
        assert_eq!(flow_hash(&there), flow_hash(&back));
        assert_ne!(flow_hash(&there), flow_hash(&other));
        assert_eq!(flow_hash(&[0x45, 0, 0]), None);
    }

    #[test]
    fn one_flow_keeps_one_gateway_and_flows_spread_over_all_healthy() {
        let gws = [gw(1, 0, true), gw(2, 0, true), gw(3, 0, true)];
        let mut counts = [0usize; 4];
        for port in 0..3000u16 {
            let h = flow_hash(&tcp([10, 10, 0, 5], 10000 + port, [10, 20, 0, 5], 443)).unwrap();
            let first = choose(gws, h).unwrap();
            assert_eq!(choose(gws, h), Some(first), "same flow, same gateway");
            counts[first as usize] += 1;
        }
        for (i, n) in counts.iter().enumerate().skip(1) {
            assert!((800..1200).contains(n), "gateway {i} got {n} of 3000 flows");
        }
    }

    #[test]
    fn a_failed_gateway_takes_only_its_own_flows_with_it() {
        let all = [gw(1, 0, true), gw(2, 0, true), gw(3, 0, true)];
        let two_down = [gw(1, 0, true), gw(2, 0, false), gw(3, 0, true)];
        let mut moved = 0;
        for port in 0..2000u16 {
            let h = flow_hash(&tcp([10, 10, 0, 5], port, [10, 20, 0, 9], 80)).unwrap();
            let before = choose(all, h).unwrap();
            let after = choose(two_down, h).unwrap();
            assert_ne!(
                after, 2,
                "a down gateway gets no flow while another is healthy"
            );
            if before != 2 {
                assert_eq!(before, after, "flows of healthy gateways stay put");
            } else {
                moved += 1;
            }
        }
        assert!(moved > 0);
    }

    #[test]
    fn standby_gateways_carry_traffic_only_without_a_healthy_active_one() {
        let h = flow_hash(&tcp([10, 10, 0, 5], 1, [10, 20, 0, 9], 80)).unwrap();
        let gws = [gw(1, 0, true), gw(2, 1, true)];
        for port in 0..200u16 {
            let h = flow_hash(&tcp([10, 10, 0, 5], port, [10, 20, 0, 9], 80)).unwrap();
            assert_eq!(choose(gws, h), Some(1));
        }
        assert_eq!(choose([gw(1, 0, false), gw(2, 1, true)], h), Some(2));
        // Nothing healthy: the best priority among all, as if all were up.
        assert_eq!(choose([gw(1, 0, false), gw(2, 1, false)], h), Some(1));
        assert_eq!(choose::<u8>([], h), None);
    }

    #[test]
    fn the_choice_does_not_depend_on_the_order_of_the_list() {
        let a = [gw(1, 0, true), gw(2, 0, true), gw(3, 0, true)];
        let b = [gw(3, 0, true), gw(1, 0, true), gw(2, 0, true)];
        for port in 0..500u16 {
            let h = flow_hash(&tcp([10, 10, 0, 5], port, [10, 20, 0, 9], 80)).unwrap();
            assert_eq!(choose(a, h), choose(b, h));
        }
    }

    #[test]
    fn fragments_of_one_datagram_hash_alike() {
        // First fragment (MF set, offset 0) and a later one (offset 185), same addresses.
        let mut first = tcp([10, 10, 0, 5], 5000, [10, 20, 0, 9], 80);
        first[6] = 0x20;
        let mut later = tcp([10, 10, 0, 5], 0, [10, 20, 0, 9], 0);
        later[6] = 0x00;
        later[7] = 185;
        assert_eq!(flow_hash(&first), flow_hash(&later));
    }
}
