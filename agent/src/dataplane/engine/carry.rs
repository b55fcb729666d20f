//! Answering members' carry queries (see `paths::carry`): which of the asked prefixes this
//! node can carry now, by the rule its BGP announcements follow ([`PeerState::up`]: a path
//! up and a session agreed since it came up, to a peer whose allowed IPs overlap the
//! prefix).
//!
//! The query names the member's public key; the key to check it with is derived from it
//! (one X25519 agreement), and kept for the next queries of that member. Derivations are
//! limited to [`DERIVATIONS_PER_SECOND`] (a burst of as many), so a flood of queries under
//! made-up keys costs this node a bounded amount of work; members already known are
//! answered regardless.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Instant;

use boringtun::x25519::PublicKey;
use ipnetwork::IpNetwork;

use super::{Engine, PeerState};
use crate::paths::carry::{self, Answer, CarryError};
use crate::paths::probe::ProbeKey;

/// New members' keys derived per second, at most.
pub const DERIVATIONS_PER_SECOND: u32 = 200;
/// Members' keys kept; past it the cache starts over.
const KEYS_KEPT: usize = 4096;

/// What became of a carry query.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CarryOutcome {
    Answered,
    /// Dropped: malformed or forged.
    Refused(CarryError),
    /// Dropped: a new member's key while the derivation budget is spent.
    Limited,
}

/// Members' keys and the derivation budget.
#[derive(Default)]
pub(super) struct Answering {
    keys: HashMap<[u8; 32], ProbeKey>,
    budget: u32,
    refilled: Option<Instant>,
}

impl Answering {
    fn may_derive(&mut self, now: Instant) -> bool {
        let fresh = self
            .refilled
            .is_none_or(|at| now.saturating_duration_since(at).as_secs() >= 1);
        if fresh {
            self.budget = DERIVATIONS_PER_SECOND;
            self.refilled = Some(now);
        }
        if self.budget == 0 {
            return false;
        }
        self.budget -= 1;
        true
    }
}

impl PeerState {
    /// Whether this node carries traffic to the peer now: for a probed peer, a path up and
    /// a session agreed since it came up ([`super::Rejoin`]); otherwise a handshake in the
    /// last 180 s. What `up_peers` (BGP) and carry answers go by.
    pub(super) fn up(&self) -> bool {
        match &self.selector {
            Some(sel) => sel.any_up() && self.rejoin.ready(),
            None => self
                .tunnel
                .last_handshake()
                .is_some_and(|age| age < std::time::Duration::from_secs(180)),
        }
    }
}

fn overlap(a: &IpNetwork, b: &IpNetwork) -> bool {
    a.is_ipv4() == b.is_ipv4() && (a.contains(b.network()) || b.contains(a.network()))
}

impl Engine {
    /// A carry query from `from`: answered (to `from`) with which of its prefixes this
    /// node carries now. Forged or malformed queries are dropped and change nothing.
    pub fn on_carry_query(
        &mut self,
        from: SocketAddr,
        datagram: &[u8],
        now: Instant,
        mut emit: impl FnMut(SocketAddr, &[u8]),
    ) -> CarryOutcome {
        let member = match carry::member_of(datagram) {
            Ok(m) => m,
            Err(e) => return CarryOutcome::Refused(e),
        };
        if !self.carry.keys.contains_key(&member) {
            if !self.carry.may_derive(now) {
                tracing::trace!(%from, "carry query from a new member over the derivation budget; dropped");
                return CarryOutcome::Limited;
            }
            if self.carry.keys.len() >= KEYS_KEPT {
                self.carry.keys.clear();
            }
            let key = ProbeKey::derive(&self.secret, &PublicKey::from(member));
            self.carry.keys.insert(member, key);
        }
        let key = &self.carry.keys[&member];
        let query = match carry::decode_query(datagram, key) {
            Ok(q) => q,
            Err(e) => {
                tracing::debug!(%from, error = %e, "carry query refused");
                return CarryOutcome::Refused(e);
            }
        };
        let up: Vec<&IpNetwork> = self
            .primaries()
            .filter(|(_, s)| s.up())
            .flat_map(|(_, s)| s.spec.allowed_ips.iter())
            .collect();
        let carries = query
            .prefixes
            .iter()
            .map(|p| up.iter().any(|a| overlap(a, p)))
            .collect();
        let answer = carry::encode_answer(
            &Answer {
                gateway: self.own_id,
                seq: query.seq,
                carries,
            },
            key,
        );
        tracing::trace!(%from, seq = query.seq, "carry query answered");
        emit(from, &answer);
        CarryOutcome::Answered
    }
}
