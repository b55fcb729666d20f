//! The session's part of a WireGuard key rotation (the schedule and steps are
//! `keyrotation`'s): ask the shell for a key, announce it on each connection, switch once
//! the coordinator recorded it and the peers had time to learn it, say it is in use.

use std::time::Instant;

use strait_proto::map::PeerKind;
use strait_proto::msg::AgentEvent;

use super::{Action, Phase, Session};
use crate::keyrotation::{Step, RETRY_AFTER};

impl Session {
    /// The key asked for by `GenerateKey` exists: it is announced.
    pub(super) fn on_key_generated(&mut self, now: Instant, public: String) {
        self.generating = false;
        tracing::info!(next_key = %public, "key rotation: announcing the next WireGuard key");
        self.rotation.started(public.clone(), now);
        self.next_key = Some(public);
        if let Phase::Open(open) = &mut self.phase {
            open.announced = false;
        }
        self.announce();
    }

    /// The node uses its new key: the coordinator is told, and the next connection
    /// registers it.
    pub(super) fn on_key_switched(&mut self, public: String) {
        tracing::info!(key = %public, "key rotation: switched to the new WireGuard key");
        self.registration.wg_public_key = public.clone();
        if let Some(conn) = self.connection() {
            self.send(
                conn,
                AgentEvent::KeyInUse {
                    wg_public_key: public,
                },
            );
        }
    }

    /// Advances a key rotation (see [`crate::keyrotation`]).
    pub(super) fn rotation_step(&mut self, now: Instant) {
        let Phase::Open(open) = &self.phase else {
            return;
        };
        let map = open.map.as_deref();
        self.rotation
            .on_map(map.and_then(|m| m.node.next_wg_public_key.as_deref()), now);
        let external = map.is_some_and(|m| m.peers.values().any(|p| p.kind == PeerKind::External));
        match self.rotation.poll(now, external) {
            Some(Step::Generate) if !self.generating => {
                self.generating = true;
                self.actions.push_back(Action::GenerateKey);
            }
            Some(Step::Generate) => {}
            Some(Step::Switch) => {
                self.rotation.switched(now);
                if let Some(public) = self.next_key.take() {
                    self.actions.push_back(Action::SwitchKey { public });
                }
            }
            Some(Step::GiveUp) => {
                self.next_key = None;
                tracing::warn!(
                    retry_in = ?RETRY_AFTER,
                    "key rotation: the coordinator did not record the announced key within 60 s (its log says why, e.g. a key another node holds); the current key stays, and the rotation is tried again"
                );
            }
            Some(Step::Postpone) => tracing::warn!(
                "key rotation postponed: external WireGuard peers are configured with this node's key; rotate with `straitctl rotate-key` and update their configuration"
            ),
            None => {}
        }
        self.announce();
    }

    /// Announces the key being rotated to, once per connection (a new connection's
    /// registration dropped any earlier announcement).
    pub(super) fn announce(&mut self) {
        let Phase::Open(open) = &mut self.phase else {
            return;
        };
        let Some(public) = self.rotation.pending() else {
            return;
        };
        if open.announced {
            return;
        }
        open.announced = true;
        let event = AgentEvent::AnnounceKey {
            next_wg_public_key: public.to_string(),
        };
        let conn = open.conn;
        self.rotation.reannounced();
        self.send(conn, event);
    }
}
