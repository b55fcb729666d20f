//! Which peers a timer pass visits. The pass runs every 20 ms, but a peer's own clocks run
//! at its probe interval (1 s by default), its size probes' timeouts and its keepalives
//! (25 s): visiting all 200 peers of a gateway 50 times a second was most of its idle CPU
//! (BENCHMARKS.md, "Many peers"). So each peer has a time for its next visit, the earliest
//! of what its path selection, its MTU searches and its state need
//! ([`Selector::next_deadline`], [`PathMtu::next_deadline`], proven by their tests to
//! decide the same as visits every pass), and anything that happens to a peer between
//! passes (a probe reply, a switch, a handshake of a peer not yet published as up, a map
//! change) makes it due at the next pass. A peer is visited at least every [`MAX_SLEEP`].
//!
//! [`Selector::next_deadline`]: crate::paths::select::Selector::next_deadline
//! [`PathMtu::next_deadline`]: crate::paths::pmtu::PathMtu::next_deadline

use std::time::{Duration, Instant};

use super::{Engine, PeerState, Standing};

/// The longest a peer goes without a visit: bounds how late a peer without probing is
/// published as down (its last handshake over 180 s old) and anything time-driven that
/// no deadline covers.
pub(super) const MAX_SLEEP: Duration = Duration::from_secs(1);

impl PeerState {
    /// When the timer pass must next visit this peer; `None`: at the next pass (its state
    /// is changing: a handshake awaited before it carries, one to start, recent flows to
    /// date, notices to hand over).
    pub(super) fn next_visit(&self, now: Instant) -> Option<Instant> {
        let busy = self.standing != Standing::Primary
            || self.kick
            || self.rehandshake
            || (self.selector.is_some() && self.rejoin.waiting())
            || self.mtu.busy();
        if busy {
            return None;
        }
        let mut next = now + MAX_SLEEP;
        if let Some(sel) = &self.selector {
            next = next.min(sel.next_deadline(now));
        }
        if let Some(t) = self.mtu.next_deadline(now) {
            next = next.min(t);
        }
        (next > now).then_some(next)
    }

    /// Whether the pass visits this peer at `now`.
    pub(super) fn due(&self, now: Instant) -> bool {
        self.wake.is_none_or(|t| now >= t)
    }
}

impl Engine {
    /// Every peer is visited at the next pass, and what the shell publishes is compared
    /// again (the peer set or a peer's standing changed).
    pub(super) fn wake_all(&mut self) {
        for state in self.peers.values_mut() {
            state.wake = None;
        }
        self.up_dirty = true;
        self.limits_dirty = true;
    }

    /// After a pass: the peers it visited get their next visit, and whether one of them
    /// is up or not changed since it was last published is noted.
    pub(super) fn settle_visits(&mut self, now: Instant) {
        for state in self.peers.values_mut() {
            if !std::mem::take(&mut state.visiting) {
                continue;
            }
            self.visits += 1;
            state.wake = state.next_visit(now);
            let up = state.standing == Standing::Primary && state.up();
            if up != state.published_up {
                self.up_dirty = true;
            }
        }
    }
}
