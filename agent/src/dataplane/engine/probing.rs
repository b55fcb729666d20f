//! Path probing in the engine: answering peers' probes on the path they came in on,
//! feeding replies to each peer's [`Selector`], sending the probes that are due, moving a
//! peer's endpoint when its selection changes, and operators' on-demand probes.

use std::net::SocketAddr;
use std::time::Instant;

use super::{Engine, PeerState, Standing};
use crate::paths::ping::{PingOutcome, Pings};
use crate::paths::pmtu::is_size_probe;
use crate::paths::probe::{self, Kind, Probe};
use crate::paths::select::{NotInFlight, PathReport};

/// What became of a probe datagram; the IO shell counts refusals by reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProbeOutcome {
    /// An authenticated request, answered on the path it came in on.
    Answered,
    /// An authenticated reply to a probe in flight, recorded.
    Recorded,
    /// Dropped, for this reason; nothing changed.
    Refused(ProbeRefusal),
}

/// Why a probe datagram was dropped (the `reason` label of
/// `strait_agent_probes_rejected_total`: a fixed set).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProbeRefusal {
    /// The sender id is no peer's (garbage, a stranger, or a probe reflected to its sender).
    UnknownSender,
    /// The MAC does not match the key shared with the peer it claims to be (forged or
    /// corrupted).
    BadMac,
    /// Authenticated but of a version or kind this agent does not speak.
    Malformed,
    /// An authenticated reply to no probe in flight: replayed, duplicated or late.
    NotInFlight,
}

impl ProbeRefusal {
    /// Every reason, in the order of [`ProbeRefusal::index`].
    pub const ALL: [ProbeRefusal; 4] = [
        ProbeRefusal::UnknownSender,
        ProbeRefusal::BadMac,
        ProbeRefusal::Malformed,
        ProbeRefusal::NotInFlight,
    ];

    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            ProbeRefusal::UnknownSender => "unknown-sender",
            ProbeRefusal::BadMac => "bad-mac",
            ProbeRefusal::Malformed => "malformed",
            ProbeRefusal::NotInFlight => "not-in-flight",
        }
    }

    /// Position in [`ProbeRefusal::ALL`] (for counters kept in an array).
    pub fn index(self) -> usize {
        self as usize
    }
}

/// One on-demand probe sent on one path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PingSent {
    pub seq: u64,
    pub address: SocketAddr,
    pub kind: strait_proto::msg::EndpointKind,
    /// Whether the path carries the tunnel now.
    pub active: bool,
}

impl Engine {
    /// A probe datagram from `from`: answers requests on the path they came in on, and
    /// feeds replies to the peer's path selection. Forged, unknown, malformed and replayed
    /// probes are dropped and change nothing (the outcome says why); probes never move the
    /// endpoint by themselves, only a selection does.
    pub fn on_probe(
        &mut self,
        from: SocketAddr,
        datagram: &[u8],
        now: Instant,
        mut emit: impl FnMut(SocketAddr, &[u8]),
    ) -> ProbeOutcome {
        let refused = ProbeOutcome::Refused;
        let Ok(id) = probe::sender_of(datagram) else {
            return refused(ProbeRefusal::Malformed);
        };
        let Some(idx) = self
            .by_id
            .get(&id)
            .copied()
            .filter(|idx| self.peers.contains_key(idx))
        else {
            tracing::trace!(%from, "probe from no known peer; dropped");
            return refused(ProbeRefusal::UnknownSender);
        };
        // After the peer rotated its key, its probes may still use the key of the tunnel
        // this one replaced (and the other way round), for a moment.
        let fallback = self.peers.get(&idx).and_then(|s| s.predecessor);
        let mut first_error = None;
        let decoded = [Some(idx), fallback].into_iter().flatten().find_map(|i| {
            let state = self.peers.get(&i)?;
            match probe::decode(datagram, &state.probe_key) {
                Ok(p) => Some((p, i)),
                Err(e) => {
                    first_error.get_or_insert(e);
                    None
                }
            }
        });
        let Some((p, signer)) = decoded else {
            tracing::debug!(peer = idx, %from, error = ?first_error, "probe refused");
            return refused(match first_error {
                Some(probe::ProbeError::Mac) => ProbeRefusal::BadMac,
                _ => ProbeRefusal::Malformed,
            });
        };
        let owner = self.owner(idx);
        let recorded = match p.kind {
            Kind::Request | Kind::SizeRequest => {
                let Some(state) = self.peers.get(&signer) else {
                    return refused(ProbeRefusal::UnknownSender);
                };
                let reply = probe::encode(
                    &Probe {
                        kind: Kind::Reply,
                        sender: self.own_id,
                        seq: p.seq,
                    },
                    &state.probe_key,
                );
                emit(from, &reply);
                return ProbeOutcome::Answered;
            }
            Kind::Reply if Pings::is_ping(p.seq) => self.pings.on_reply(owner, p.seq, now),
            Kind::Reply if is_size_probe(p.seq) => self.on_size_reply(owner, p.seq),
            Kind::Reply => {
                let Some(state) = self.peers.get_mut(&owner) else {
                    return refused(ProbeRefusal::UnknownSender);
                };
                // Its figures changed: visited at the next pass.
                state.wake = None;
                match state.selector.as_mut().map(|s| s.on_reply(p.seq, now)) {
                    Some(Ok(switch)) => {
                        if let Some(switch) = switch {
                            Self::switch_path(owner, state, switch.to, now);
                        }
                        true
                    }
                    Some(Err(NotInFlight)) | None => false,
                }
            }
        };
        if recorded {
            ProbeOutcome::Recorded
        } else {
            tracing::debug!(peer = idx, %from, seq = p.seq, "probe reply to no probe in flight (replayed, duplicated or late); dropped");
            refused(ProbeRefusal::NotInFlight)
        }
    }

    pub(super) fn switch_path(idx: u32, state: &mut PeerState, to: SocketAddr, now: Instant) {
        if state.spec.endpoint == Some(to) {
            return;
        }
        state.wake = None;
        Self::recheck_path(state, to, now);
        let kind = state
            .spec
            .candidates
            .iter()
            .find(|c| c.address == to)
            .map(|c| format!("{:?}", c.kind).to_lowercase())
            .unwrap_or_default();
        tracing::info!(peer = idx, from = ?state.spec.endpoint, %to, kind, "path switched");
        state.spec.endpoint = Some(to);
    }

    /// Path probing: expires unanswered probes, applies any change of path, and sends the
    /// probes that are due. Call often (every 20 ms); each path is probed at the interval.
    /// Only the peers with something due are visited (see `visits`).
    pub fn probe_tick(&mut self, now: Instant, mut emit: impl FnMut(SocketAddr, &[u8])) {
        self.access.tick(now);
        let own_id = self.own_id;
        // Retiring tunnels whose time is up, found in the same walk over the peers.
        let mut expired = Vec::new();
        for (idx, state) in self.peers.iter_mut() {
            if let Some(of) = Self::retired_by(&mut state.standing, now) {
                expired.push((*idx, of));
            }
            if state.standing != Standing::Primary || !state.due(now) {
                continue;
            }
            state.visiting = true;
            let Some(sel) = state.selector.as_mut() else {
                continue;
            };
            let switch = sel.on_tick(now);
            let due = sel.due(now);
            let reachable = sel.reachable();
            if let Some(switch) = switch {
                Self::switch_path(*idx, state, switch.to, now);
            }
            // The path came back (or the handshake started then is overdue): a new
            // handshake proves the tunnel carries (a restarted peer holds none of the old
            // sessions) before flows move back to it. Sent by `start_handshakes`.
            let was_ready = state.rejoin.ready();
            if state
                .rejoin
                .observe(reachable, state.tunnel.initiated_handshakes(), now)
            {
                tracing::debug!(
                    peer = idx,
                    "a new handshake before carrying (path back, or the last one overdue)"
                );
                state.rehandshake = true;
            }
            if state.rejoin.ready() != was_ready {
                tracing::debug!(
                    peer = idx,
                    ready = !was_ready,
                    "readiness to carry flows changed"
                );
            }
            for (to, seq) in due {
                let request = probe::encode(
                    &Probe {
                        kind: Kind::Request,
                        sender: own_id,
                        seq,
                    },
                    &state.probe_key,
                );
                emit(to, &request);
            }
        }
        self.drop_retired(expired);
        self.pmtu_tick(now, &mut emit);
    }

    /// Sends one on-demand probe on every probed path to the peer with `public_key` (apart
    /// from selection: the replies change no figures). `None`: no such peer, or it has no
    /// probed paths. Outcomes come from [`Engine::take_ping_outcomes`].
    pub fn ping(
        &mut self,
        public_key: &[u8; 32],
        now: Instant,
        mut emit: impl FnMut(SocketAddr, &[u8]),
    ) -> Option<Vec<PingSent>> {
        let idx = *self.by_key.get(public_key)?;
        let state = self.peers.get(&idx)?;
        let paths = state.selector.as_ref()?.report();
        let mut sent = Vec::new();
        for path in paths {
            let Some(seq) = self.pings.start(idx, now) else {
                break;
            };
            let request = probe::encode(
                &Probe {
                    kind: Kind::Request,
                    sender: self.own_id,
                    seq,
                },
                &state.probe_key,
            );
            emit(path.address, &request);
            sent.push(PingSent {
                seq,
                address: path.address,
                kind: path.kind,
                active: path.active,
            });
        }
        Some(sent)
    }

    /// Replies to on-demand probes since the last call, and those lost by `now`.
    pub fn take_ping_outcomes(&mut self, now: Instant) -> Vec<PingOutcome> {
        self.pings.take(now)
    }

    /// Every probed peer's paths: (peer public key, paths).
    pub fn paths(&self) -> Vec<([u8; 32], Vec<PathReport>)> {
        let mut out: Vec<_> = self
            .primaries()
            .filter_map(|(_, s)| {
                s.selector.as_ref()?;
                Some((s.spec.public_key, s.path_reports()))
            })
            .collect();
        out.sort_by_key(|(k, _)| *k);
        out
    }
}
