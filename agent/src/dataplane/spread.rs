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
//! **Coming back.** Probes answering again say that the path is up, not that the tunnel
//! carries: a gateway whose agent restarted answers probes before it holds a session with
//! this node, and packets sent on the old session are lost. So a gateway is healthy for
//! spreading only once its [`Rejoin`] says so: after its path came back, this node starts a
//! new handshake and waits for it to complete before moving any flow back; a new tunnel
//! waits for its first handshake. The same readiness gates what a gateway announces over
//! BGP (`bgp::announce`), so its site's routers send it nothing it cannot carry yet.
//!
//! [`flow_hash`] is symmetric (the two endpoints of the tuple are sorted before hashing) and
//! the same on every node (a fixed function of the bytes, no per-process seed), and a
//! gateway's weight for a flow depends only on the flow and the gateway's public key. So two
//! nodes that choose among the same healthy set of gateways for the same flow, in either
//! direction, choose the same gateway. What that does and does not make symmetric is
//! described in README's "Several gateways per site".

use std::net::IpAddr;
use std::time::{Duration, Instant};

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

/// How long a peer waits for the handshake that readies it before another is started
/// (boringtun itself retries only after 5 s).
pub const REJOIN_RETRY: Duration = Duration::from_secs(1);

/// Whether a peer's tunnel is ready to carry flows, from its path's reachability (this
/// node's probes) and the handshakes this node started and completed on it. Fed every probe
/// pass by [`Rejoin::observe`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejoin {
    /// Reachable, with a session both sides agreed to since it last came back.
    Ready,
    /// Every path down.
    Down,
    /// Reachable, waiting for a handshake started by this node to complete: ready once
    /// more than `after` have completed. `started`: when this node last started one
    /// (`None` for a new tunnel, whose first handshake the engine starts itself).
    Waiting {
        after: u64,
        started: Option<Instant>,
    },
}

impl Rejoin {
    /// A new tunnel (`handshakes` completed so far, normally 0): ready after the next one.
    pub fn new(handshakes: u64) -> Rejoin {
        Rejoin::Waiting {
            after: handshakes,
            started: None,
        }
    }

    /// The peer's reachability and completed handshakes at `now`. Returns whether to start
    /// a handshake now: the path has just come back, or the last one started has not
    /// completed within [`REJOIN_RETRY`].
    pub fn observe(&mut self, reachable: bool, handshakes: u64, now: Instant) -> bool {
        let (next, start) = match (*self, reachable) {
            (_, false) => (Rejoin::Down, false),
            (Rejoin::Ready, true) => (Rejoin::Ready, false),
            (Rejoin::Waiting { after, .. }, true) if handshakes > after => (Rejoin::Ready, false),
            (Rejoin::Down, true) => (
                Rejoin::Waiting {
                    after: handshakes,
                    started: Some(now),
                },
                true,
            ),
            (Rejoin::Waiting { after, started }, true) => {
                let due = started.is_some_and(|t| now.saturating_duration_since(t) >= REJOIN_RETRY);
                let started = if due || started.is_none() {
                    Some(now)
                } else {
                    started
                };
                (Rejoin::Waiting { after, started }, due)
            }
        };
        *self = next;
        start
    }

    pub fn ready(self) -> bool {
        self == Rejoin::Ready
    }

    /// Waiting for a handshake (its completion is noticed by the next `observe`).
    pub fn waiting(self) -> bool {
        matches!(self, Rejoin::Waiting { .. })
    }

    /// The state for a tunnel that replaces this one's (a key rotation), which has
    /// completed `handshakes`: ready or down alike; waiting for its own next handshake.
    pub fn moved_to(self, handshakes: u64) -> Rejoin {
        match self {
            Rejoin::Waiting { started, .. } => Rejoin::Waiting {
                after: handshakes,
                started,
            },
            other => other,
        }
    }
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
    fn a_gateway_that_comes_back_is_ready_only_after_a_new_handshake() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        // A new tunnel: ready after its first handshake (started by the engine), not before.
        let mut r = Rejoin::new(0);
        assert!(!r.observe(true, 0, at(0)));
        assert!(!r.ready());
        assert!(!r.observe(true, 1, at(50)));
        assert!(r.ready());
        // The path goes down: not ready; it comes back: a handshake is started, once.
        assert!(!r.observe(false, 1, at(100)));
        assert_eq!(r, Rejoin::Down);
        assert!(
            r.observe(true, 1, at(150)),
            "a handshake is started when the path returns"
        );
        assert!(!r.observe(true, 1, at(200)), "and only once");
        assert!(!r.ready(), "the old session does not count");
        // Not complete within REJOIN_RETRY: another one.
        assert!(!r.observe(true, 1, at(1100)));
        assert!(r.observe(true, 1, at(1150)));
        assert!(!r.observe(true, 1, at(1200)));
        // Down again before it completed, then back: another handshake.
        assert!(!r.observe(false, 1, at(1250)));
        assert!(r.observe(true, 1, at(1300)));
        assert!(!r.observe(true, 2, at(1350)));
        assert!(r.ready());
        // Staying up changes nothing.
        assert!(!r.observe(true, 2, at(5000)));
        assert!(r.ready());
        // A key rotation's new tunnel: ready stays ready, waiting waits for its own.
        assert_eq!(r.moved_to(0), Rejoin::Ready);
        let waiting = Rejoin::Waiting {
            after: 7,
            started: None,
        };
        assert_eq!(
            waiting.moved_to(0),
            Rejoin::Waiting {
                after: 0,
                started: None
            }
        );
    }

    #[test]
    fn flows_move_back_only_to_a_gateway_ready_again() {
        // Gateway 2 is back on the probes but still waiting for its handshake: nothing goes
        // to it; once ready, only the flows that hash to it move back.
        let now = Instant::now();
        let mut r = Rejoin::Down;
        assert!(r.observe(true, 4, now));
        let gws = |ready: bool| [gw(1, 0, true), gw(2, 0, ready), gw(3, 0, true)];
        let (mut back, mut stayed) = (0, 0);
        for port in 0..1000u16 {
            let h = flow_hash(&tcp([10, 10, 0, 5], port, [10, 20, 0, 9], 80)).unwrap();
            let waiting = choose(gws(r.ready()), h).unwrap();
            assert_ne!(waiting, 2, "a flow went to a gateway without a new session");
            let ready = choose(gws(true), h).unwrap();
            if ready == 2 {
                back += 1;
            } else {
                assert_eq!(ready, waiting, "flows of the other gateways stay put");
                stayed += 1;
            }
        }
        assert!(!r.observe(true, 5, now) && r.ready());
        assert!(
            back > 200 && stayed > 500,
            "{back} moved back, {stayed} stayed"
        );
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
