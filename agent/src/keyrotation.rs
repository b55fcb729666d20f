//! When to rotate the node's WireGuard key, and the steps of one rotation (pure: fed time
//! and what the coordinator's map says; the session does the IO).
//!
//! 1. Generate a key and announce its public half to the coordinator.
//! 2. The coordinator records it and puts it in every peer's map (this node's own map
//!    shows it as `next-wg-public-key`); peers make a standby tunnel for it.
//! 3. [`DISTRIBUTION_DELAY`] after the own map showed it (time for peers' maps to
//!    arrive), switch: the data plane uses the new key, the key file is replaced, and the
//!    coordinator is told the key is in use.

use std::time::{Duration, Instant};

/// From the coordinator recording the next key to using it: peers' maps arrive within a
/// second (to agents on other coordinators within the store's poll interval).
pub const DISTRIBUTION_DELAY: Duration = Duration::from_secs(5);
/// An announcement not recorded by then is given up; the rotation is tried again later.
pub const ANNOUNCE_TIMEOUT: Duration = Duration::from_secs(60);
/// After a rotation was given up or postponed.
pub const RETRY_AFTER: Duration = Duration::from_secs(300);

/// What to do now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Generate a key and announce it.
    Generate,
    /// The announced key reached the peers: switch to it.
    Switch,
    /// The announcement was not recorded in time; the generated key is discarded.
    GiveUp,
    /// A scheduled rotation is postponed: external (plain WireGuard) peers are configured
    /// with this node's key and would lose the tunnel.
    Postpone,
}

#[derive(Debug, Clone)]
struct Pending {
    public: String,
    started: Instant,
    seen: Option<Instant>,
}

/// The rotation schedule and the rotation in progress.
#[derive(Debug, Clone)]
pub struct KeyRotation {
    period: Option<Duration>,
    due: Option<Instant>,
    requested: bool,
    pending: Option<Pending>,
}

impl KeyRotation {
    /// A schedule rotating every `period` (`None`: on demand only), for a key that is
    /// already `age` old at `now`.
    pub fn new(period: Option<Duration>, age: Duration, now: Instant) -> KeyRotation {
        KeyRotation {
            period,
            due: period.map(|p| now + p.saturating_sub(age)),
            requested: false,
            pending: None,
        }
    }

    /// An operator asked for a rotation now. False if one is already under way.
    pub fn request(&mut self) -> bool {
        if self.pending.is_some() {
            return false;
        }
        self.requested = true;
        true
    }

    /// The announced key, while a rotation is under way.
    pub fn pending(&self) -> Option<&str> {
        self.pending.as_ref().map(|p| p.public.as_str())
    }

    /// A key was generated and announced.
    pub fn started(&mut self, public: String, now: Instant) {
        self.requested = false;
        self.pending = Some(Pending {
            public,
            started: now,
            seen: None,
        });
    }

    /// The announcement is sent again (on a new session, whose registration dropped it):
    /// the coordinator must record it again before the switch.
    pub fn reannounced(&mut self) {
        if let Some(p) = self.pending.as_mut() {
            p.seen = None;
        }
    }

    /// The own map names `announced` as this node's next key.
    pub fn on_map(&mut self, announced: Option<&str>, now: Instant) {
        if let Some(p) = self.pending.as_mut() {
            if p.seen.is_none() && announced == Some(p.public.as_str()) {
                p.seen = Some(now);
            }
        }
    }

    /// The next step at `now`, if any. `has_external_peers`: the map has plain WireGuard
    /// peers, which only an operator's request overrides.
    pub fn poll(&mut self, now: Instant, has_external_peers: bool) -> Option<Step> {
        match &self.pending {
            Some(p) => match p.seen {
                Some(seen) if now >= seen + DISTRIBUTION_DELAY => Some(Step::Switch),
                None if now >= p.started + ANNOUNCE_TIMEOUT => {
                    self.pending = None;
                    self.due = Some(now + RETRY_AFTER);
                    Some(Step::GiveUp)
                }
                _ => None,
            },
            None if self.requested => Some(Step::Generate),
            None if self.due.is_some_and(|d| now >= d) => {
                if has_external_peers {
                    self.due = self.period.map(|p| now + p);
                    return Some(Step::Postpone);
                }
                Some(Step::Generate)
            }
            None => None,
        }
    }

    /// The node switched to the announced key at `now`.
    pub fn switched(&mut self, now: Instant) {
        self.pending = None;
        self.due = self.period.map(|p| now + p);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: Duration = Duration::from_secs(24 * 3600);

    #[test]
    fn a_scheduled_rotation_announces_waits_for_the_map_then_switches() {
        let t0 = Instant::now();
        // A key 23 hours old is due in an hour.
        let mut r = KeyRotation::new(Some(DAY), Duration::from_secs(23 * 3600), t0);
        assert_eq!(r.poll(t0, false), None);
        let t1 = t0 + Duration::from_secs(3600);
        assert_eq!(r.poll(t1, false), Some(Step::Generate));
        r.started("K2".into(), t1);
        assert_eq!(r.pending(), Some("K2"));
        // Not switched before the coordinator recorded it, however long.
        assert_eq!(r.poll(t1 + Duration::from_secs(30), false), None);
        // Another key in the map is not ours.
        r.on_map(Some("K9"), t1 + Duration::from_secs(31));
        assert_eq!(r.poll(t1 + Duration::from_secs(40), false), None);
        let seen = t1 + Duration::from_secs(41);
        r.on_map(Some("K2"), seen);
        assert_eq!(r.poll(seen + Duration::from_secs(4), false), None);
        // Announced again on a new session: the wait starts over once it is recorded.
        r.reannounced();
        assert_eq!(r.poll(seen + DISTRIBUTION_DELAY, false), None);
        r.on_map(Some("K2"), seen);
        assert_eq!(r.poll(seen + DISTRIBUTION_DELAY, false), Some(Step::Switch));
        r.switched(seen + DISTRIBUTION_DELAY);
        assert_eq!(r.pending(), None);
        assert_eq!(r.poll(seen + DISTRIBUTION_DELAY + DAY / 2, false), None);
        assert_eq!(
            r.poll(seen + DISTRIBUTION_DELAY + DAY, false),
            Some(Step::Generate)
        );
    }

    #[test]
    fn an_unrecorded_announcement_is_given_up_and_retried() {
        let t0 = Instant::now();
        let mut r = KeyRotation::new(None, Duration::ZERO, t0);
        assert_eq!(
            r.poll(t0 + DAY, false),
            None,
            "no schedule without a period"
        );
        assert!(r.request());
        assert_eq!(r.poll(t0, false), Some(Step::Generate));
        r.started("K2".into(), t0);
        assert!(!r.request(), "one rotation at a time");
        assert_eq!(r.poll(t0 + ANNOUNCE_TIMEOUT, false), Some(Step::GiveUp));
        assert_eq!(r.pending(), None);
        assert_eq!(r.poll(t0 + ANNOUNCE_TIMEOUT, false), None);
        assert_eq!(
            r.poll(t0 + ANNOUNCE_TIMEOUT + RETRY_AFTER, false),
            Some(Step::Generate)
        );
    }

    #[test]
    fn external_peers_postpone_scheduled_rotations_but_not_requested_ones() {
        let t0 = Instant::now();
        let mut r = KeyRotation::new(Some(DAY), DAY, t0);
        assert_eq!(r.poll(t0, true), Some(Step::Postpone));
        assert_eq!(r.poll(t0 + Duration::from_secs(1), true), None);
        assert!(r.request());
        assert_eq!(
            r.poll(t0 + Duration::from_secs(2), true),
            Some(Step::Generate)
        );
    }
}
