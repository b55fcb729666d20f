//! WireGuard key rotation in the engine, without losing a packet.
//!
//! Our own key: [`Engine::rotate_own`] gives every peer a new primary tunnel under the new
//! key; the old one retires. Until the new tunnel has a session, traffic still goes out
//! on the old session (the peer still decrypts it), and the new tunnel starts its
//! handshake at once. The retiring tunnel keeps decrypting what was in flight for
//! [`RETIRE_AFTER`], then is dropped.
//!
//! A peer's key: the map announces the peer's next key before the peer uses it; a standby
//! tunnel to that key answers the peer's first handshake under it and becomes the primary
//! (promotion), the old primary retiring as above. A map naming the next key as the
//! peer's key promotes the standby too, if no handshake did first.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use boringtun::x25519::{PublicKey, StaticSecret};

use super::{Engine, PeerSpec, Standing};
use crate::dataplane::tunnel::Output;
use crate::paths::probe;

/// How long a retired tunnel keeps decrypting: WireGuard's reject-after time, the longest
/// a peer may keep using a session.
pub const RETIRE_AFTER: Duration = Duration::from_secs(180);

impl Engine {
    /// Switches this node to a new static key (the caller has announced its public half to
    /// every peer). Sessions in flight keep working until the new ones are up.
    pub fn rotate_own(&mut self, secret: StaticSecret) {
        self.public = PublicKey::from(&secret);
        self.secret = secret;
        self.own_id = probe::id_of(&self.public);
        let primaries: Vec<u32> = self.primaries().map(|(i, _)| i).collect();
        for old in primaries {
            // A standby was made with the old key; it is made again below.
            if let Some(standby) = self.peers.get_mut(&old).and_then(|s| s.standby.take()) {
                self.remove_tunnel(standby);
            }
            let Some(state) = self.peers.get_mut(&old) else {
                continue;
            };
            let spec = state.spec.clone();
            let selector = state.selector.take();
            // The paths are the same: their MTUs and readiness carry over.
            let mtu = std::mem::take(&mut state.mtu);
            let rejoin = state.rejoin;
            let older = state.predecessor.take();
            let idx = self.retire(old, spec, older);
            if let Some(state) = self.peers.get_mut(&idx) {
                state.selector = selector;
                state.mtu = mtu;
                state.rejoin = rejoin.moved_to(state.tunnel.initiated_handshakes());
                state.kick = true;
            }
            let next = self.peers.get(&idx).and_then(|s| s.spec.next_public_key);
            self.set_standby(idx, next);
        }
        self.rebuild_table();
        tracing::info!(
            peers = self.peer_count(),
            "own key rotated; new handshakes under way"
        );
    }

    /// Makes a new primary tunnel for `spec` that replaces `old` (which retires), dropping
    /// `older` (an earlier retiring tunnel). Returns the new primary.
    fn retire(&mut self, old: u32, spec: PeerSpec, older: Option<u32>) -> u32 {
        if let Some(older) = older {
            self.remove_tunnel(older);
        }
        let idx = self.add_tunnel(spec, Standing::Primary);
        if let Some(state) = self.peers.get_mut(&old) {
            state.standing = Standing::Retiring {
                of: idx,
                until: None,
            };
        }
        if let Some(state) = self.peers.get_mut(&idx) {
            state.predecessor = Some(old);
        }
        idx
    }

    /// Keeps the standby tunnel of primary `idx` in step with the peer's announced key.
    pub(super) fn set_standby(&mut self, idx: u32, next: Option<[u8; 32]>) {
        let Some(state) = self.peers.get(&idx) else {
            return;
        };
        let mut spec = state.spec.clone();
        let current = state.standby;
        let current_key = current
            .and_then(|s| self.peers.get(&s))
            .map(|s| s.spec.public_key);
        if current_key == next && (next.is_none() || current.is_some()) {
            return;
        }
        if let Some(old) = current {
            self.remove_tunnel(old);
        }
        let standby = next
            .filter(|key| *key != spec.public_key && !self.by_key.contains_key(key))
            .map(|key| {
                spec.public_key = key;
                spec.next_public_key = None;
                self.add_tunnel(spec, Standing::Standby { of: idx })
            });
        if let Some(state) = self.peers.get_mut(&idx) {
            state.standby = standby;
        }
        if standby.is_some() {
            tracing::debug!(
                peer = idx,
                "peer announced its next key; standby tunnel ready"
            );
        }
    }

    /// Promotes the standby of every primary whose key `wanted` no longer has but whose
    /// announced key it has (the map caught up with a rotation).
    pub(super) fn promote_announced(&mut self, wanted: &HashMap<[u8; 32], &PeerSpec>) {
        let due: Vec<u32> = self
            .primaries()
            .filter(|(_, s)| !wanted.contains_key(&s.spec.public_key))
            .filter_map(|(_, s)| s.standby)
            .filter(|sb| {
                self.peers
                    .get(sb)
                    .is_some_and(|s| wanted.contains_key(&s.spec.public_key))
            })
            .collect();
        for standby in due {
            self.promote(standby);
        }
    }

    /// Standby tunnel `standby` becomes its peer's primary; the old primary retires.
    fn promote(&mut self, standby: u32) {
        let Some(Standing::Standby { of: old }) = self.standing(standby) else {
            return;
        };
        let Some(state) = self.peers.get_mut(&old) else {
            return;
        };
        let mut spec = state.spec.clone();
        let selector = state.selector.take();
        let mtu = std::mem::take(&mut state.mtu);
        let rejoin = state.rejoin;
        let older = state.predecessor.take();
        state.standby = None;
        state.standing = Standing::Retiring {
            of: standby,
            until: None,
        };
        let old_key = state.spec.public_key;
        if let Some(older) = older {
            self.remove_tunnel(older);
        }
        // The old key's lookups go; the retiring tunnel is found by session index only.
        self.by_key.remove(&old_key);
        self.by_id.remove(&probe::id_of(&PublicKey::from(old_key)));
        if let Some(state) = self.peers.get_mut(&standby) {
            spec.public_key = state.spec.public_key;
            spec.next_public_key = None;
            state.spec = spec;
            state.selector = selector;
            state.mtu = mtu;
            state.rejoin = rejoin.moved_to(state.tunnel.initiated_handshakes());
            state.standing = Standing::Primary;
            state.predecessor = Some(old);
        }
        self.rebuild_table();
        tracing::info!(
            peer = standby,
            replaced = old,
            "peer switched to its announced key"
        );
    }

    /// A datagram authenticated on non-primary tunnel `idx`: a handshake under a peer's
    /// announced key promotes its standby.
    pub(super) fn on_authenticated(&mut self, idx: u32, standing: Standing) {
        if let Standing::Standby { .. } = standing {
            self.promote(idx);
        }
    }

    /// The tunnel that encrypts for primary `idx`: itself once it has a session, else the
    /// tunnel it replaced while that one still has one.
    pub(super) fn sending_tunnel(&mut self, idx: u32) -> u32 {
        let Some(state) = self.peers.get(&idx) else {
            return idx;
        };
        let Some(old) = state.predecessor else {
            return idx;
        };
        if state.tunnel.has_session() {
            // Our own session is up: the predecessor only decrypts stragglers now.
            if let Some(state) = self.peers.get_mut(&idx) {
                state.predecessor = None;
            }
            return idx;
        }
        match self.peers.get(&old) {
            Some(p) if p.tunnel.has_session() => old,
            _ => idx,
        }
    }

    /// Starts the handshakes of new tunnels (a rotation's among them), so they are up
    /// before traffic needs them, and the new ones of peers whose path came back.
    pub(super) fn kick_handshakes(
        &mut self,
        out: &mut [u8],
        emit: &mut impl FnMut(SocketAddr, &[u8]),
    ) {
        for (idx, state) in self.peers.iter_mut() {
            // A retiring tunnel only carries what its session still can.
            if matches!(state.standing, Standing::Retiring { .. }) {
                state.kick = false;
                state.rehandshake = false;
                continue;
            }
            let result = if std::mem::take(&mut state.rehandshake) {
                state.kick = false;
                state.tunnel.rehandshake(out)
            } else if std::mem::take(&mut state.kick) {
                // An empty packet is a keepalive: with no session, it starts a handshake.
                state.tunnel.encapsulate(&[], out)
            } else {
                continue;
            };
            match result {
                Ok(Output::Network(bytes)) => {
                    if let Some(ep) = state.spec.endpoint {
                        emit(ep, bytes);
                    }
                }
                Ok(_) => {}
                Err(e) => tracing::debug!(peer = idx, error = %e, "starting a handshake"),
            }
        }
    }

    /// Starts the handshakes due now: of new tunnels, and of peers whose path has just come
    /// back (see `spread::Rejoin`). Run every probe pass, so a returning gateway carries
    /// again one round trip after its probes say it is back. (`tick` runs it too.)
    pub fn start_handshakes(&mut self, out: &mut [u8], mut emit: impl FnMut(SocketAddr, &[u8])) {
        self.kick_handshakes(out, &mut emit);
    }

    /// Whether a tunnel of this standing is a retiring one whose time is up at `now` (its
    /// clock starts at the first probe tick that asks): then the primary it belongs to.
    pub(super) fn retired_by(standing: &mut Standing, now: Instant) -> Option<u32> {
        let Standing::Retiring { of, until } = standing else {
            return None;
        };
        let until = *until.get_or_insert(now + RETIRE_AFTER);
        (now >= until).then_some(*of)
    }

    /// Drops the retiring tunnels whose time is up: (tunnel, the primary it belongs to).
    pub(super) fn drop_retired(&mut self, expired: Vec<(u32, u32)>) {
        for (idx, of) in expired {
            self.remove_tunnel(idx);
            if let Some(s) = self.peers.get_mut(&of) {
                if s.predecessor == Some(idx) {
                    s.predecessor = None;
                }
            }
            tracing::debug!(peer = of, retired = idx, "retired tunnel dropped");
        }
    }
}
