//! Probes sent on demand (`straitctl probe A B`), apart from the selector's: their sequence
//! numbers carry the top bit, so a reply is told apart from a selection probe's and never
//! changes a path's figures or the choice. Pure bookkeeping: what is in flight, what came
//! back, what timed out.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Set in every on-demand probe's sequence number.
pub const PING_BIT: u64 = 1 << 63;
/// How long a reply may take before the probe counts as lost.
pub const PING_TIMEOUT: Duration = Duration::from_secs(2);
/// Most on-demand probes in flight at once; more are refused.
pub const MAX_IN_FLIGHT: usize = 1024;

/// What became of one on-demand probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PingOutcome {
    pub seq: u64,
    /// `None`: no reply within [`PING_TIMEOUT`].
    pub rtt: Option<Duration>,
}

/// On-demand probes in flight, by sequence number: (peer index, sent at).
#[derive(Debug, Default)]
pub struct Pings {
    in_flight: HashMap<u64, (u32, Instant)>,
    next: u64,
    done: Vec<PingOutcome>,
}

impl Pings {
    /// Whether `seq` belongs to an on-demand probe.
    pub fn is_ping(seq: u64) -> bool {
        seq & PING_BIT != 0
    }

    /// Records a probe to `peer` sent now; `None` when too many are in flight.
    pub fn start(&mut self, peer: u32, now: Instant) -> Option<u64> {
        if self.in_flight.len() >= MAX_IN_FLIGHT {
            return None;
        }
        self.next = self.next.wrapping_add(1);
        let seq = PING_BIT | (self.next & !PING_BIT);
        self.in_flight.insert(seq, (peer, now));
        Some(seq)
    }

    /// An authenticated reply from `peer` to `seq`. Unknown, late or repeated sequence
    /// numbers, and replies from another peer than the one probed, are ignored.
    pub fn on_reply(&mut self, peer: u32, seq: u64, now: Instant) -> bool {
        match self.in_flight.get(&seq) {
            Some(&(p, sent)) if p == peer => {
                self.in_flight.remove(&seq);
                self.done.push(PingOutcome {
                    seq,
                    rtt: Some(now.saturating_duration_since(sent)),
                });
                true
            }
            _ => false,
        }
    }

    /// Replies since the last call, and probes that timed out by `now` (as lost).
    pub fn take(&mut self, now: Instant) -> Vec<PingOutcome> {
        let mut out = std::mem::take(&mut self.done);
        self.in_flight.retain(|&seq, &mut (_, sent)| {
            let alive = now.saturating_duration_since(sent) < PING_TIMEOUT;
            if !alive {
                out.push(PingOutcome { seq, rtt: None });
            }
            alive
        });
        out
    }

    /// Forgets the probes to a peer that left.
    pub fn forget_peer(&mut self, peer: u32) {
        self.in_flight.retain(|_, (p, _)| *p != peer);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_are_matched_once_and_by_peer() {
        let t0 = Instant::now();
        let mut pings = Pings::default();
        let a = pings.start(1, t0).unwrap();
        let b = pings.start(2, t0).unwrap();
        assert!(Pings::is_ping(a) && Pings::is_ping(b) && a != b);
        assert!(
            !Pings::is_ping(5),
            "selector sequence numbers are not pings"
        );
        assert!(!pings.on_reply(2, a, t0), "a reply from another peer");
        assert!(pings.on_reply(1, a, t0 + Duration::from_millis(7)));
        assert!(
            !pings.on_reply(1, a, t0 + Duration::from_millis(8)),
            "replayed"
        );
        let out = pings.take(t0 + Duration::from_millis(10));
        assert_eq!(
            out,
            vec![PingOutcome {
                seq: a,
                rtt: Some(Duration::from_millis(7))
            }]
        );
        let out = pings.take(t0 + PING_TIMEOUT);
        assert_eq!(out, vec![PingOutcome { seq: b, rtt: None }]);
        assert!(!pings.on_reply(2, b, t0 + PING_TIMEOUT), "late");
        assert!(pings.take(t0 + PING_TIMEOUT * 2).is_empty());
    }

    #[test]
    fn in_flight_probes_are_bounded_and_forgotten_with_their_peer() {
        let t0 = Instant::now();
        let mut pings = Pings::default();
        for _ in 0..MAX_IN_FLIGHT {
            assert!(pings.start(1, t0).is_some());
        }
        assert!(pings.start(1, t0).is_none());
        pings.forget_peer(1);
        assert!(pings.start(2, t0).is_some());
        assert_eq!(pings.take(t0 + PING_TIMEOUT).len(), 1);
    }
}
