//! Path MTU discovery for one path, in the spirit of RFC 8899 (packetization-layer PMTUD):
//! probes of chosen sizes are sent with DF set and the largest size the peer answers is the
//! path MTU. No ICMP is needed (clouds often drop it); a lost probe is the only signal. A
//! pure state machine: fed `now`, replies and the interface's MTU, it says which sizes to
//! probe. Sizes are whole outer IP packets (IP header + UDP + payload).
//!
//! **Search.** Each round probes several sizes at once between the largest size confirmed
//! and the smallest known too big (at first: the floor, the ceiling and evenly spaced sizes
//! between), and ends when every probe is answered or timed out. A size counts as too big
//! only when lost twice (once may be ordinary loss); it is probed again in the next round.
//! The search ends when the interval is no wider than [`Tunables::granularity`]; from a
//! 1500-byte interface toward a 1500-byte path it ends after one round trip.
//!
//! **Settled.** The path MTU is confirmed by one probe every [`Tunables::confirm_every`];
//! two losses in a row mean the path shrank (a hop with a smaller MTU, an uplink lowered):
//! the search starts again from the floor, using the floor meanwhile. Every
//! [`Tunables::raise_every`] the search runs again upward, to find a larger MTU. A path
//! where not even the floor is answered (a peer that does not answer size probes, or the
//! path is down) has no MTU and is searched again after `raise_every / 10`.

use std::time::{Duration, Instant};

/// Set in the sequence number of every size probe (apart from selection probes and pings).
pub const PMTU_BIT: u64 = 1 << 62;
/// The smallest path MTU searched: IPv6's minimum link MTU, RFC 8899's BASE_PLPMTU.
pub const FLOOR: u16 = 1280;
/// The largest path MTU searched (jumbo frames; AWS offers 9001).
pub const MAX_MTU: u16 = 9001;

/// Whether `seq` belongs to a size probe.
pub fn is_size_probe(seq: u64) -> bool {
    seq & PMTU_BIT != 0
}

/// Timings and shape of the search.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tunables {
    /// A probe unanswered this long is lost.
    pub timeout: Duration,
    /// Between confirmations of a settled MTU.
    pub confirm_every: Duration,
    /// Between searches for a larger MTU.
    pub raise_every: Duration,
    /// The search stops when the largest confirmed and smallest too-big size are this close.
    pub granularity: u16,
    /// Sizes probed per round (besides retries).
    pub per_round: usize,
}

impl Tunables {
    /// For a probe interval: the selection's timeout (at most 1 s), confirmation every 5
    /// intervals (at least 1 s), a raise search every 10 minutes (RFC 8899's
    /// PMTU_RAISE_TIMER), 8-byte precision, 6 sizes a round.
    pub fn for_interval(interval: Duration) -> Tunables {
        Tunables {
            timeout: interval.min(Duration::from_secs(1)),
            confirm_every: (interval * 5).max(Duration::from_secs(1)),
            raise_every: Duration::from_secs(600),
            granularity: 8,
            per_round: 6,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Searching,
    /// Settled; the next confirmation (or, with no MTU, the next search) is due `next`, the
    /// next raise search at `raise`.
    Settled {
        next: Instant,
        raise: Instant,
    },
}

/// A change of a path's MTU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MtuChange {
    pub from: Option<u16>,
    pub to: Option<u16>,
}

/// Discovery on one path.
#[derive(Debug, Clone)]
pub struct PathMtu {
    tun: Tunables,
    /// The largest size this path could carry as far as this node knows (its interface's
    /// MTU toward the path), at most [`MAX_MTU`].
    ceiling: u16,
    /// The largest size answered in this search (or the last).
    confirmed: Option<u16>,
    /// Used while a search after a shrink has confirmed nothing yet.
    fallback: Option<u16>,
    /// The smallest size lost twice in this search.
    too_big: Option<u16>,
    /// Sizes lost once in this search.
    struck: Vec<u16>,
    /// Probes in flight: (sequence number, size, sent at).
    in_flight: Vec<(u64, u16, Instant)>,
    /// A confirmation probe is in flight (settled phase).
    confirming: bool,
    confirm_misses: u8,
    phase: Phase,
    /// The MTU as last reported (by `on_tick` or `set_ceiling`): replies between ticks
    /// change it too, and are reported at the next tick.
    reported: Option<u16>,
    /// Whether the path answers small probes now (path selection's figure): while it does
    /// not (an outage), a lost size probe says nothing about sizes and counts for nothing.
    answering: bool,
}

impl PathMtu {
    /// A path whose interface allows `ceiling` bytes; the search starts at the first `due`.
    pub fn new(ceiling: u16, tun: Tunables) -> PathMtu {
        PathMtu {
            tun,
            ceiling: ceiling.clamp(FLOOR, MAX_MTU),
            confirmed: None,
            fallback: None,
            too_big: None,
            struck: Vec::new(),
            in_flight: Vec::new(),
            confirming: false,
            confirm_misses: 0,
            phase: Phase::Searching,
            reported: None,
            answering: true,
        }
    }

    /// The path MTU to use: the largest size confirmed, the floor while searching again
    /// after a shrink, `None` when nothing is known.
    pub fn mtu(&self) -> Option<u16> {
        self.confirmed.or(self.fallback)
    }

    pub fn ceiling(&self) -> u16 {
        self.ceiling
    }

    /// The earliest time at which time alone changes anything here: a size probe's
    /// timeout, the next round of a search (at once when none is in flight), the next
    /// confirmation. Until then, with no reply, `set_ceiling` or `recheck` in between,
    /// [`PathMtu::due`] sends nothing and [`PathMtu::on_tick`] changes nothing, so the
    /// engine need not call them (`now` if something is due already).
    pub fn next_deadline(&self, now: Instant) -> Instant {
        let timeout = self.tun.timeout;
        let expiry = self
            .in_flight
            .iter()
            .map(|&(_, _, sent)| sent + timeout)
            .min();
        let phase = match self.phase {
            Phase::Searching if self.in_flight.is_empty() => Some(now),
            Phase::Settled { next, .. } if !self.confirming => Some(next),
            _ => None,
        };
        match (expiry, phase) {
            (Some(a), Some(b)) => a.min(b),
            (a, b) => a.or(b).unwrap_or(now + timeout),
        }
        .max(now)
    }

    /// Whether a search is under way.
    pub fn searching(&self) -> bool {
        self.phase == Phase::Searching
    }

    /// The interface's MTU toward the path changed: a lower one caps the MTU at once, a
    /// higher one starts a search.
    pub fn set_ceiling(&mut self, ceiling: u16, now: Instant) -> Option<MtuChange> {
        let ceiling = ceiling.clamp(FLOOR, MAX_MTU);
        if ceiling == self.ceiling {
            return None;
        }
        let before = self.reported;
        self.ceiling = ceiling;
        self.confirmed = self.confirmed.map(|c| c.min(ceiling));
        self.restart(now);
        self.reported = self.mtu();
        change(before, self.reported)
    }

    /// Checks the MTU now (after a switch to this path): a settled path is confirmed at
    /// once; a search goes on.
    pub fn recheck(&mut self, now: Instant) {
        if let Phase::Settled { raise, .. } = self.phase {
            if !self.confirming {
                self.phase = Phase::Settled { next: now, raise };
            }
        }
    }

    /// Whether the path answers small probes (path selection's latest probe came back).
    /// While it does not, a lost confirmation is not held against the MTU: an outage is not
    /// a narrower path, and taking it for one would lower the MTU to the floor (and tell
    /// the hosts behind the gateway so) until the next search. (A search during an outage
    /// ends as before: nothing answered, searched again later.)
    pub fn set_answering(&mut self, answering: bool) {
        self.answering = answering;
    }

    /// Searches again, keeping what is confirmed as the lower bound.
    fn restart(&mut self, _now: Instant) {
        self.phase = Phase::Searching;
        self.too_big = None;
        self.struck.clear();
        self.in_flight.clear();
        self.confirming = false;
        self.confirm_misses = 0;
    }

    /// Probes to send now: (sequence number, size). `next_seq` hands out sequence numbers
    /// (each with [`PMTU_BIT`]).
    pub fn due(&mut self, now: Instant, mut next_seq: impl FnMut() -> u64) -> Vec<(u64, u16)> {
        match self.phase {
            Phase::Searching if self.in_flight.is_empty() => {
                let sizes = self.round_sizes();
                let mut out = Vec::with_capacity(sizes.len());
                for size in sizes {
                    let seq = next_seq();
                    self.in_flight.push((seq, size, now));
                    out.push((seq, size));
                }
                out
            }
            Phase::Settled { next, raise } if !self.confirming && now >= next => {
                if now >= raise || self.confirmed.is_none() {
                    self.restart(now);
                    return self.due(now, next_seq);
                }
                let size = self.confirmed.unwrap_or(FLOOR);
                let seq = next_seq();
                self.in_flight.push((seq, size, now));
                self.confirming = true;
                self.phase = Phase::Settled {
                    next: now + self.tun.confirm_every,
                    raise,
                };
                vec![(seq, size)]
            }
            _ => Vec::new(),
        }
    }

    /// The sizes of the next search round; empty when the search is done.
    fn round_sizes(&self) -> Vec<u16> {
        let hi = self.too_big.unwrap_or(self.ceiling + 1);
        let mut sizes = Vec::new();
        let lo = match self.confirmed {
            Some(c) => c,
            None => {
                sizes.push(FLOOR.min(hi.saturating_sub(1)));
                FLOOR
            }
        };
        if hi <= lo + self.tun.granularity {
            return sizes;
        }
        if let Some(&retry) = self.struck.iter().filter(|&&s| s > lo && s < hi).min() {
            sizes.push(retry);
        }
        // The top of the interval first: the interface's own MTU is the common answer.
        let top = hi - 1;
        sizes.push(top);
        let n = self.tun.per_round.max(2) as u32;
        let span = u32::from(top - lo);
        for k in 1..n {
            sizes.push(lo + (span * k / n) as u16);
        }
        sizes.retain(|&s| s > lo || self.confirmed.is_none());
        sizes.sort_unstable();
        sizes.dedup();
        sizes
    }

    /// An authenticated reply to size probe `seq`; whether it was one in flight.
    pub fn on_reply(&mut self, seq: u64) -> bool {
        let Some(i) = self.in_flight.iter().position(|(s, _, _)| *s == seq) else {
            return false;
        };
        let (_, size, _) = self.in_flight.swap_remove(i);
        if self.confirming {
            self.confirming = false;
            self.confirm_misses = 0;
        }
        if self.confirmed.is_none_or(|c| size > c) && self.too_big.is_none_or(|t| size < t) {
            self.confirmed = Some(size);
        }
        true
    }

    /// Expires probes past the timeout and moves the search on; returns the change of the
    /// MTU since the last report (replies since the last tick included), if any.
    pub fn on_tick(&mut self, now: Instant) -> Option<MtuChange> {
        let before = self.reported;
        let timeout = self.tun.timeout;
        let mut lost = Vec::new();
        self.in_flight.retain(|&(_, size, sent)| {
            let alive = now.saturating_duration_since(sent) < timeout;
            if !alive {
                lost.push(size);
            }
            alive
        });
        match self.phase {
            Phase::Settled { .. } if self.confirming && !lost.is_empty() && !self.answering => {
                // Not held against the MTU; confirmed again at the usual pace.
                self.confirming = false;
            }
            Phase::Settled { raise, .. } if self.confirming && !lost.is_empty() => {
                self.confirming = false;
                self.confirm_misses += 1;
                if self.confirm_misses >= 2 {
                    // The path shrank: search again below the size that stopped working.
                    let was = self.confirmed.take();
                    self.restart(now);
                    self.too_big = was;
                    self.fallback = Some(FLOOR);
                } else {
                    self.phase = Phase::Settled { next: now, raise };
                }
            }
            Phase::Searching if self.in_flight.is_empty() => {
                let lo = self.confirmed.unwrap_or(0);
                for size in lost.into_iter().filter(|&s| s > lo) {
                    if self.struck.contains(&size) {
                        self.too_big = Some(self.too_big.map_or(size, |t| t.min(size)));
                    } else {
                        self.struck.push(size);
                    }
                }
                if self.confirmed.is_some() {
                    self.fallback = None;
                }
                let floor_lost =
                    self.confirmed.is_none() && self.too_big.is_some_and(|t| t <= FLOOR);
                if floor_lost || self.round_sizes().is_empty() {
                    let retry = if self.confirmed.is_some() {
                        self.tun.confirm_every
                    } else {
                        self.tun.raise_every / 10
                    };
                    if floor_lost {
                        self.fallback = None;
                    }
                    self.phase = Phase::Settled {
                        next: now + retry,
                        raise: now + self.tun.raise_every,
                    };
                }
            }
            _ => {}
        }
        self.reported = self.mtu();
        change(before, self.reported)
    }
}

fn change(from: Option<u16>, to: Option<u16>) -> Option<MtuChange> {
    (from != to).then_some(MtuChange { from, to })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tun() -> Tunables {
        Tunables::for_interval(Duration::from_millis(200))
    }

    /// Runs rounds against a path that carries sizes up to `path` (and loses the sizes in
    /// `lose_once` the first time), until settled or `max_rounds`; returns the rounds taken.
    fn converge(p: &mut PathMtu, path: u16, t0: &mut Instant, max_rounds: usize) -> usize {
        let mut seq = PMTU_BIT;
        for round in 1..=max_rounds {
            let sent = p.due(*t0, || {
                seq += 1;
                seq
            });
            for (s, size) in sent {
                if size <= path {
                    assert!(p.on_reply(s));
                }
            }
            *t0 += p.tun.timeout;
            p.on_tick(*t0);
            if !p.searching() {
                return round;
            }
        }
        panic!("no convergence in {max_rounds} rounds: {p:?}");
    }

    /// Drives `p` against a path carrying sizes up to `carries(t)` (from the start) for
    /// `until`, in 5 ms steps: every step, or (`lazy`) only at its deadline and after a
    /// reply, as the engine does. Returns the MTU's changes (time, new MTU) and the visits.
    fn drive(
        mut p: PathMtu,
        lazy: bool,
        until: Duration,
        carries: impl Fn(Duration) -> u16,
    ) -> (Vec<(Duration, Option<u16>)>, u64) {
        let start = Instant::now();
        let rtt = Duration::from_millis(12);
        let mut now = start;
        let mut seq = PMTU_BIT;
        let mut wire: Vec<(Instant, u64)> = Vec::new();
        let mut changes = Vec::new();
        let mut deadline = start;
        let mut visits = 0;
        let mut ceiling = 1500;
        while now < start + until {
            let t = now - start;
            // The interface grows to 9000 at 30 s: a new search.
            if t >= Duration::from_secs(30) && ceiling == 1500 {
                ceiling = 9000;
                p.set_ceiling(ceiling, now);
                deadline = now;
            }
            let visit = !lazy || now >= deadline;
            if visit {
                visits += 1;
                let carried = carries(t);
                for (s, size) in p.due(now, || {
                    seq += 1;
                    seq
                }) {
                    if size <= carried {
                        wire.push((now + rtt, s));
                    }
                }
            }
            let (back, later): (Vec<_>, Vec<_>) = wire.drain(..).partition(|(at, _)| *at <= now);
            wire = later;
            for (_, s) in &back {
                p.on_reply(*s);
            }
            // A reply: the engine's next pass visits (here the same step, as in the
            // step-by-step run).
            if visit || !back.is_empty() {
                if let Some(c) = p.on_tick(now) {
                    changes.push((t, c.to));
                }
            }
            if visit || !back.is_empty() {
                deadline = p.next_deadline(now);
            }
            now += Duration::from_millis(5);
        }
        (changes, visits)
    }

    #[test]
    fn driven_only_at_its_deadlines_discovery_finds_the_same_at_the_same_times() {
        // 1500 at first, a 1400 hop from 10 s to 50 s (found by the confirmations), the
        // interface at 9000 from 30 s (a search up to 9000 bounded by the hop), 8000 after.
        let carries = |t: Duration| match t.as_secs() {
            0..10 => 1500,
            10..50 => 1400,
            _ => 8000,
        };
        let until = Duration::from_secs(120);
        let (every, steps) = drive(PathMtu::new(1500, tun()), false, until, carries);
        let (lazy, visits) = drive(PathMtu::new(1500, tun()), true, until, carries);
        assert_eq!(every, lazy);
        assert!(every.len() >= 4, "{every:?}");
        assert!(visits * 5 < steps, "{visits} visits in {steps} steps");
    }

    #[test]
    fn an_interface_sized_path_settles_in_one_round() {
        let mut t = Instant::now();
        let mut p = PathMtu::new(1500, tun());
        assert_eq!(p.mtu(), None);
        let rounds = converge(&mut p, 1500, &mut t, 10);
        assert_eq!(rounds, 1);
        assert_eq!(p.mtu(), Some(1500));
    }

    #[test]
    fn a_smaller_hop_is_found_within_granularity_without_icmp() {
        for (ceiling, path) in [
            (1500, 1280),
            (1500, 1400),
            (9001, 1500),
            (9001, 8000),
            (9000, 1281),
        ] {
            let mut t = Instant::now();
            let mut p = PathMtu::new(ceiling, tun());
            let rounds = converge(&mut p, path, &mut t, 20);
            let mtu = p.mtu().unwrap();
            assert!(
                mtu <= path && path - mtu <= 8,
                "{ceiling}/{path}: found {mtu}"
            );
            // Two strikes per size: every lost size is probed twice.
            assert!(rounds <= 12, "{ceiling}/{path}: {rounds} rounds");
        }
    }

    #[test]
    fn a_single_lost_probe_does_not_lower_the_mtu() {
        let mut t = Instant::now();
        let mut p = PathMtu::new(1500, tun());
        let mut seq = PMTU_BIT;
        let sent = p.due(t, || {
            seq += 1;
            seq
        });
        // Everything but the 1500 probe comes back (that one is lost by chance).
        for (s, size) in &sent {
            if *size != 1500 {
                p.on_reply(*s);
            }
        }
        t += p.tun.timeout;
        p.on_tick(t);
        assert!(p.searching());
        converge(&mut p, 1500, &mut t, 10);
        assert_eq!(p.mtu(), Some(1500));
    }

    #[test]
    fn a_shrunk_path_is_noticed_by_confirmation_and_searched_again() {
        let mut t = Instant::now();
        let mut p = PathMtu::new(1500, tun());
        converge(&mut p, 1500, &mut t, 10);
        assert_eq!(p.mtu(), Some(1500));
        let mut seq = 1000 | PMTU_BIT;
        // Confirmations while the path is intact.
        for _ in 0..3 {
            t += p.tun.confirm_every;
            let sent = p.due(t, || {
                seq += 1;
                seq
            });
            assert_eq!(sent.len(), 1);
            assert_eq!(sent[0].1, 1500);
            p.on_reply(sent[0].0);
            assert_eq!(p.on_tick(t + Duration::from_millis(1)), None);
        }
        // A 1280 hop appears: two lost confirmations, then the floor meanwhile.
        t += p.tun.confirm_every;
        let mut changes = Vec::new();
        for _ in 0..2 {
            let sent = p.due(t, || {
                seq += 1;
                seq
            });
            assert_eq!(sent.len(), 1);
            t += p.tun.timeout;
            changes.extend(p.on_tick(t));
        }
        assert_eq!(
            changes,
            vec![MtuChange {
                from: Some(1500),
                to: Some(FLOOR)
            }]
        );
        assert!(p.searching());
        converge(&mut p, 1280, &mut t, 10);
        assert_eq!(p.mtu(), Some(1280));
    }

    #[test]
    fn probes_lost_while_the_path_answers_nothing_do_not_lower_the_mtu() {
        let mut t = Instant::now();
        let mut p = PathMtu::new(9000, tun());
        converge(&mut p, 9000, &mut t, 10);
        assert_eq!(p.mtu(), Some(9000));
        // The path is cut: path selection's probes are lost too. Confirmations lost now
        // say nothing about sizes.
        p.set_answering(false);
        let mut seq = 7000 | PMTU_BIT;
        for _ in 0..10 {
            t += p.tun.confirm_every;
            p.due(t, || {
                seq += 1;
                seq
            });
            t += p.tun.timeout;
            assert_eq!(p.on_tick(t), None);
        }
        assert_eq!(p.mtu(), Some(9000));
        // Back, and confirmed at the next due.
        p.set_answering(true);
        t += p.tun.confirm_every;
        let sent = p.due(t, || {
            seq += 1;
            seq
        });
        assert_eq!(sent.iter().map(|s| s.1).collect::<Vec<_>>(), vec![9000]);
        p.on_reply(sent[0].0);
        assert_eq!(p.on_tick(t + Duration::from_millis(1)), None);
        assert_eq!(p.mtu(), Some(9000));
    }

    #[test]
    fn a_peer_that_never_answers_leaves_the_mtu_unknown_and_is_retried_later() {
        let mut t = Instant::now();
        let mut p = PathMtu::new(1500, tun());
        converge(&mut p, 0, &mut t, 10);
        assert_eq!(p.mtu(), None);
        let mut seq = PMTU_BIT;
        let mut next = || {
            seq += 1;
            seq
        };
        assert!(p.due(t + Duration::from_secs(1), &mut next).is_empty());
        assert!(!p.due(t + p.tun.raise_every / 10, &mut next).is_empty());
    }

    #[test]
    fn a_raise_search_finds_a_larger_mtu_and_a_lower_ceiling_caps_at_once() {
        let mut t = Instant::now();
        let mut p = PathMtu::new(9001, tun());
        converge(&mut p, 1500, &mut t, 20);
        assert!(p.mtu().is_some_and(|m| m > 1490));
        // The path grows (a jumbo interconnect); found at the next raise search. Until then
        // confirmations keep succeeding.
        let mut seq = 5000 | PMTU_BIT;
        let deadline = t + p.tun.raise_every + p.tun.confirm_every;
        let mut raise = Vec::new();
        while t < deadline {
            t += p.tun.confirm_every;
            let sent = p.due(t, || {
                seq += 1;
                seq
            });
            if p.searching() {
                raise = sent;
                break;
            }
            for (s, _) in sent {
                p.on_reply(s);
            }
            p.on_tick(t);
        }
        assert!(raise.len() > 1, "no raise search: {raise:?}");
        for (s, _) in raise {
            p.on_reply(s);
        }
        t += p.tun.timeout;
        p.on_tick(t);
        converge(&mut p, 9001, &mut t, 20);
        assert_eq!(p.mtu(), Some(9001));
        let c = p.set_ceiling(1500, t).unwrap();
        assert_eq!(c.to, Some(1500));
    }

    #[test]
    fn replies_to_unknown_sequence_numbers_change_nothing() {
        let mut p = PathMtu::new(1500, tun());
        assert!(!p.on_reply(PMTU_BIT | 77));
        assert_eq!(p.mtu(), None);
    }
}
