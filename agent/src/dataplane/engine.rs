//! The WireGuard engine: one `Tunnel` per peer, the cryptokey routing table, and the IO
//! loop that moves packets between the TUN device and one UDP socket.
//!
//! [`Engine`] holds the state and makes every per-packet decision; `pump` is the IO shell
//! that owns the TUN device, the socket and the timer, and applies peer changes live.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Instant;

use boringtun::noise::handshake::parse_handshake_anon;
use boringtun::noise::{Packet, Tunn};
use boringtun::x25519::{PublicKey, StaticSecret};
use ipnetwork::IpNetwork;

use super::access::{Access, AccessReport, Filter};
use super::lpm::PrefixTable;
use super::tunnel::{Output, Tunnel};
use crate::paths::ping::{PingOutcome, Pings};
use crate::paths::probe::{self, Kind, Probe, ProbeKey};
use crate::paths::select::{Candidate, NotInFlight, PathReport, Selector, Thresholds};

mod rotation;

/// One peer as the engine should have it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerSpec {
    pub public_key: [u8; 32],
    /// Where to send; `None` until the peer reaches us (it is behind NAT).
    pub endpoint: Option<SocketAddr>,
    pub allowed_ips: Vec<IpNetwork>,
    /// Persistent keepalive in seconds (for peers behind NAT).
    pub keepalive: Option<u16>,
    /// Every path to the peer (its announced endpoints), probed to choose the endpoint.
    /// Empty: no probing; `endpoint` is used, and roaming moves it.
    pub candidates: Vec<Candidate>,
    /// The key the peer announced for its next rotation: handshakes from it are accepted
    /// (on a standby tunnel) before the map names it as the peer's key.
    pub next_public_key: Option<[u8; 32]>,
}

/// What a tunnel is for. Every peer has one primary tunnel (routes point at it); key
/// rotation adds short-lived others (see `rotation`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Standing {
    Primary,
    /// A tunnel to primary `of`'s announced next key, waiting for the peer to use it.
    Standby {
        of: u32,
    },
    /// Replaced by primary `of` after a rotation: still decrypts what was in flight, and
    /// carries `of`'s traffic until `of` has a session, until `until` (set at the next
    /// probe tick).
    Retiring {
        of: u32,
        until: Option<Instant>,
    },
}

impl Standing {
    /// The primary tunnel that tunnel `idx`, of this standing, belongs to.
    fn owner(self, idx: u32) -> u32 {
        match self {
            Standing::Standby { of } | Standing::Retiring { of, .. } => of,
            Standing::Primary => idx,
        }
    }
}

struct PeerState {
    tunnel: Tunnel,
    spec: PeerSpec,
    probe_key: ProbeKey,
    /// Path selection, when the peer has candidates.
    selector: Option<Selector>,
    standing: Standing,
    /// The retiring tunnel this one replaced, while this one has no session yet.
    predecessor: Option<u32>,
    /// The standby tunnel to the peer's announced next key.
    standby: Option<u32>,
    /// Start a handshake at the next timer tick (a new tunnel after a rotation).
    kick: bool,
}

impl PeerState {
    /// Whether WireGuard roaming may move the endpoint to `from`: always without path
    /// selection; with it, to an address that is none of the peer's announced endpoints (a
    /// NAT mapping that changed), or back to the selected path itself (after the endpoint
    /// had roamed to a NAT mapping that the peer has since left), but never to another
    /// announced endpoint, since choosing among those is the selector's job.
    fn may_roam_to(&self, from: SocketAddr) -> bool {
        let Some(active) = self.selector.as_ref().and_then(Selector::active) else {
            return true;
        };
        from == active || !self.spec.candidates.iter().any(|c| c.address == from)
    }
}

/// A peer's tunnel as the engine sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct PeerStatus {
    pub public_key: [u8; 32],
    pub endpoint: Option<SocketAddr>,
    /// Time since the last handshake.
    pub last_handshake: Option<std::time::Duration>,
    pub tx_bytes: u64,
    pub rx_bytes: u64,
    pub paths: Vec<PathReport>,
}

/// Where a packet goes.
#[derive(Debug, PartialEq, Eq)]
pub enum Emit<'a> {
    Network(SocketAddr, &'a [u8]),
    Tun(&'a [u8]),
}

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

/// The engine's state.
pub struct Engine {
    secret: StaticSecret,
    public: PublicKey,
    peers: HashMap<u32, PeerState>,
    by_key: HashMap<[u8; 32], u32>,
    table: PrefixTable<u32>,
    next_index: u32,
    /// This node's probe id, and peers by theirs.
    own_id: [u8; 8],
    by_id: HashMap<[u8; 8], u32>,
    thresholds: Thresholds,
    /// Probes sent on demand for an operator.
    pings: Pings,
    /// The access policy on decrypted packets, and the flows sent (whose replies pass).
    access: Access,
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

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("peers", &self.peers.len())
            .finish()
    }
}

impl Engine {
    /// An engine probing every path of every peer each `probe_interval`.
    pub fn new(secret: StaticSecret, probe_interval: std::time::Duration) -> Engine {
        let public = PublicKey::from(&secret);
        Engine {
            own_id: probe::id_of(&public),
            secret,
            public,
            peers: HashMap::new(),
            by_key: HashMap::new(),
            table: PrefixTable::new(),
            next_index: 1,
            by_id: HashMap::new(),
            thresholds: Thresholds::for_interval(probe_interval),
            pings: Pings::default(),
            access: Access::default(),
        }
    }

    /// Puts an access policy in force (compiled from the map, see [`Filter::for_map`]).
    pub fn set_access(&mut self, filter: std::sync::Arc<Filter>) {
        self.access.set_filter(filter);
    }

    /// What the access policy dropped and tracks, if it changed since the last call.
    pub fn take_access_report(&mut self) -> Option<AccessReport> {
        self.access.take_report()
    }

    /// Makes the peer set equal to `specs`. Peers whose key is unchanged keep their session
    /// (endpoint and allowed IPs are updated in place); others are added or removed without
    /// disturbing the rest. A peer whose key changed to the next key it announced keeps its
    /// traffic flowing across the change (see `rotation`).
    pub fn set_peers(&mut self, specs: &[PeerSpec]) {
        let wanted: HashMap<[u8; 32], &PeerSpec> =
            specs.iter().map(|s| (s.public_key, s)).collect();
        self.promote_announced(&wanted);
        let gone: Vec<u32> = self
            .primaries()
            .filter(|(_, s)| !wanted.contains_key(&s.spec.public_key))
            .map(|(idx, _)| idx)
            .collect();
        for idx in gone {
            self.remove_peer(idx);
            tracing::debug!(peer = idx, "peer removed");
        }
        for spec in specs {
            let primary = self
                .by_key
                .get(&spec.public_key)
                .filter(|idx| self.standing(**idx) == Some(Standing::Primary));
            match primary {
                Some(idx) => {
                    if let Some(state) = self.peers.get_mut(idx) {
                        // The selected path, else a roamed endpoint if the map has none.
                        let endpoint = state
                            .selector
                            .as_ref()
                            .and_then(Selector::active)
                            .or(spec.endpoint)
                            .or(state.spec.endpoint);
                        state.spec = spec.clone();
                        state.spec.endpoint = endpoint;
                    }
                }
                None => {
                    let idx = self.add_tunnel(spec.clone(), Standing::Primary);
                    tracing::debug!(peer = idx, "peer added");
                }
            }
            if let Some(&idx) = self.by_key.get(&spec.public_key) {
                self.set_standby(idx, spec.next_public_key);
            }
        }
        self.rebuild_table();
        // Paths to probe: every announced endpoint. One inside the prefixes the tunnels
        // carry (a gateway reached over an interconnect by its VPC address) is fine: the
        // WireGuard socket's datagrams are marked and skip Strait's routing table.
        for state in self
            .peers
            .values_mut()
            .filter(|s| s.standing == Standing::Primary)
        {
            let usable = state.spec.candidates.clone();
            match (&mut state.selector, usable.is_empty()) {
                (Some(sel), false) => sel.set_candidates(&usable),
                (None, false) => state.selector = Some(Selector::new(&usable, self.thresholds)),
                (_, true) => state.selector = None,
            }
        }
    }

    /// A new tunnel for `spec` (the key is `spec.public_key`), registered for lookups by
    /// key and probe id; routes are the caller's business.
    fn add_tunnel(&mut self, spec: PeerSpec, standing: Standing) -> u32 {
        let idx = self.next_index;
        self.next_index = self.next_index.wrapping_add(1).max(1) & 0x00ff_ffff;
        let peer_public = PublicKey::from(spec.public_key);
        let tunnel = Tunnel::new(self.secret.clone(), peer_public, spec.keepalive, idx);
        self.by_key.insert(spec.public_key, idx);
        self.by_id.insert(probe::id_of(&peer_public), idx);
        self.peers.insert(
            idx,
            PeerState {
                tunnel,
                probe_key: ProbeKey::derive(&self.secret, &peer_public),
                spec,
                selector: None,
                standing,
                predecessor: None,
                standby: None,
                kick: false,
            },
        );
        idx
    }

    /// Forgets tunnel `idx` and its lookups.
    fn remove_tunnel(&mut self, idx: u32) -> Option<PeerState> {
        let state = self.peers.remove(&idx)?;
        let key = state.spec.public_key;
        if self.by_key.get(&key) == Some(&idx) {
            self.by_key.remove(&key);
        }
        let id = probe::id_of(&PublicKey::from(key));
        if self.by_id.get(&id) == Some(&idx) {
            self.by_id.remove(&id);
        }
        self.pings.forget_peer(idx);
        Some(state)
    }

    /// Forgets a peer: its primary tunnel `idx` and the standby and retiring ones with it.
    fn remove_peer(&mut self, idx: u32) {
        let related: Vec<u32> = self
            .peers
            .iter()
            .filter(|(_, s)| {
                matches!(s.standing, Standing::Standby { of } | Standing::Retiring { of, .. } if of == idx)
            })
            .map(|(i, _)| *i)
            .collect();
        for i in related {
            self.remove_tunnel(i);
        }
        self.remove_tunnel(idx);
    }

    fn standing(&self, idx: u32) -> Option<Standing> {
        self.peers.get(&idx).map(|s| s.standing)
    }

    /// The primary tunnels.
    fn primaries(&self) -> impl Iterator<Item = (u32, &PeerState)> {
        self.peers
            .iter()
            .filter(|(_, s)| s.standing == Standing::Primary)
            .map(|(i, s)| (*i, s))
    }

    /// The primary tunnel that `idx` belongs to (itself for a primary).
    fn owner(&self, idx: u32) -> u32 {
        self.standing(idx).map_or(idx, |s| s.owner(idx))
    }

    fn rebuild_table(&mut self) {
        self.table = PrefixTable::new();
        for (idx, state) in &self.peers {
            if state.standing != Standing::Primary {
                continue;
            }
            for prefix in &state.spec.allowed_ips {
                self.table.insert(*prefix, *idx);
            }
        }
    }

    pub fn peer_count(&self) -> usize {
        self.primaries().count()
    }

    /// A packet from the TUN device: encrypt it for the peer its destination routes to.
    pub fn outbound<'a>(
        &mut self,
        packet: &[u8],
        out: &'a mut [u8],
    ) -> Option<(SocketAddr, &'a [u8])> {
        let dst = Tunn::dst_address(packet)?;
        let Some(&idx) = self.table.lookup(dst) else {
            tracing::trace!(%dst, "no peer for destination; dropped");
            return None;
        };
        // Remembered so that replies pass this node's access policy.
        self.access.outbound(packet);
        let state = self.peers.get_mut(&idx)?;
        let endpoint = state.spec.endpoint;
        // Only just after a key rotation may another tunnel carry this peer's traffic.
        let state = if state.predecessor.is_none() {
            state
        } else {
            let via = self.sending_tunnel(idx);
            self.peers.get_mut(&via)?
        };
        match state.tunnel.encapsulate(packet, out) {
            Ok(Output::Network(bytes)) => match endpoint {
                Some(ep) => Some((ep, bytes)),
                None => {
                    tracing::trace!(peer = idx, "peer has no endpoint yet; dropped");
                    None
                }
            },
            Ok(_) => None,
            Err(e) => {
                tracing::trace!(peer = idx, error = %e, "encapsulate failed");
                None
            }
        }
    }

    /// The peer a datagram belongs to: by receiver index, or for a handshake initiation by
    /// the static key it proves.
    fn peer_of(&self, datagram: &[u8]) -> Option<u32> {
        match Tunn::parse_incoming_packet(datagram).ok()? {
            Packet::HandshakeInit(init) => {
                let half = parse_handshake_anon(&self.secret, &self.public, &init).ok()?;
                self.by_key.get(&half.peer_static_public).copied()
            }
            Packet::HandshakeResponse(p) => Some(p.receiver_idx >> 8),
            Packet::PacketCookieReply(p) => Some(p.receiver_idx >> 8),
            Packet::PacketData(p) => Some(p.receiver_idx >> 8),
        }
    }

    /// A datagram from the network. Decrypted packets whose inner source is not one of the
    /// sending peer's allowed IPs are dropped (cryptokey routing), then those the access
    /// policy refuses.
    pub fn inbound(
        &mut self,
        from: SocketAddr,
        datagram: &[u8],
        out: &mut [u8],
        mut emit: impl FnMut(Emit<'_>),
    ) {
        let Some(idx) = self.peer_of(datagram) else {
            tracing::trace!(%from, "datagram from no known peer; dropped");
            return;
        };
        let table = &self.table;
        let access = &mut self.access;
        let Some(state) = self.peers.get_mut(&idx) else {
            return;
        };
        let owner = state.standing.owner(idx);
        let mut authenticated = false;
        let result = state.tunnel.decapsulate(Some(from.ip()), datagram, out, |o| match o {
            Output::Network(bytes) => {
                authenticated = true;
                emit(Emit::Network(from, bytes));
            }
            Output::Tun(packet, src) => {
                authenticated = true;
                if table.lookup(src) == Some(&owner) {
                    if access.inbound(packet) {
                        emit(Emit::Tun(packet));
                    }
                } else if !packet.is_empty() {
                    tracing::trace!(%src, peer = idx, "inner source not allowed for this peer; dropped");
                }
            }
            Output::Nothing => {}
        });
        let standing = state.standing;
        match result {
            Ok(()) if authenticated && standing != Standing::Primary => {
                self.on_authenticated(idx, standing);
            }
            Ok(()) if authenticated && state.may_roam_to(from) => {
                // WireGuard roaming: answer where the peer last spoke from.
                if state.spec.endpoint != Some(from) {
                    tracing::debug!(peer = idx, %from, "peer endpoint updated");
                    state.spec.endpoint = Some(from);
                }
            }
            Ok(()) => {}
            Err(e) => tracing::trace!(peer = idx, %from, error = %e, "datagram refused"),
        }
    }

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
            Kind::Request => {
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
            Kind::Reply => {
                let Some(state) = self.peers.get_mut(&owner) else {
                    return refused(ProbeRefusal::UnknownSender);
                };
                match state.selector.as_mut().map(|s| s.on_reply(p.seq, now)) {
                    Some(Ok(switch)) => {
                        if let Some(switch) = switch {
                            Self::switch_path(owner, state, switch.to);
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

    fn switch_path(idx: u32, state: &mut PeerState, to: SocketAddr) {
        if state.spec.endpoint == Some(to) {
            return;
        }
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
    /// probes that are due. Call often (every 50 ms); each path is probed at the interval.
    pub fn probe_tick(&mut self, now: Instant, mut emit: impl FnMut(SocketAddr, &[u8])) {
        self.expire_retired(now);
        self.access.tick(now);
        let own_id = self.own_id;
        for (idx, state) in self.peers.iter_mut() {
            if state.standing != Standing::Primary {
                continue;
            }
            let Some(sel) = state.selector.as_mut() else {
                continue;
            };
            let switch = sel.on_tick(now);
            let due = sel.due(now);
            if let Some(switch) = switch {
                Self::switch_path(*idx, state, switch.to);
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

    /// Every peer's tunnel and paths, ordered by public key.
    pub fn status(&self) -> Vec<PeerStatus> {
        let mut out: Vec<PeerStatus> = self
            .primaries()
            .map(|(_, s)| {
                let stats = s.tunnel.stats();
                PeerStatus {
                    public_key: s.spec.public_key,
                    endpoint: s.spec.endpoint,
                    last_handshake: stats.last_handshake,
                    tx_bytes: stats.tx_bytes as u64,
                    rx_bytes: stats.rx_bytes as u64,
                    paths: s
                        .selector
                        .as_ref()
                        .map(Selector::report)
                        .unwrap_or_default(),
                }
            })
            .collect();
        out.sort_by_key(|p| p.public_key);
        out
    }

    /// Every probed peer's paths: (peer public key, paths).
    pub fn paths(&self) -> Vec<([u8; 32], Vec<PathReport>)> {
        let mut out: Vec<_> = self
            .primaries()
            .filter_map(|(_, s)| Some((s.spec.public_key, s.selector.as_ref()?.report())))
            .collect();
        out.sort_by_key(|(k, _)| *k);
        out
    }

    /// Runs every tunnel's timers (a retiring tunnel's do not run: it only decrypts what
    /// is still in flight, and carries traffic until its successor has a session).
    pub fn tick(&mut self, out: &mut [u8], mut emit: impl FnMut(SocketAddr, &[u8])) {
        self.kick_handshakes(out, &mut emit);
        for (idx, state) in self.peers.iter_mut() {
            if state.standing != Standing::Primary {
                continue;
            }
            match state.tunnel.tick(out) {
                Ok(Output::Network(bytes)) => {
                    if let Some(ep) = state.spec.endpoint {
                        emit(ep, bytes);
                    }
                }
                Ok(_) => {}
                Err(e) if e.is_routine() => {}
                Err(e) => tracing::debug!(peer = idx, error = %e, "timer"),
            }
        }
    }
}

/// Creates the TUN device `name` (no address yet; see `netlink::configure_link`) with TCP
/// segmentation offload and checksum offload (`IFF_VNET_HDR`), so the kernel hands over and
/// accepts 64 KiB TCP segments; without kernel support, a plain TUN device.
pub fn create_tun(name: &str, mtu: u16) -> std::io::Result<tun_rs::AsyncDevice> {
    let build = |offload: bool| {
        tun_rs::DeviceBuilder::new()
            .name(name)
            .mtu(mtu)
            .offload(offload)
            .build_async()
    };
    match build(true) {
        Ok(tun) => Ok(tun),
        Err(e) => {
            tracing::info!(error = %e, "TUN offloads unavailable; using a plain TUN device");
            build(false)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataplane::tunnel::BUFFER;

    fn ipv4(src: [u8; 4], dst: [u8; 4], payload: &[u8]) -> Vec<u8> {
        let total = 20 + payload.len();
        let mut p = vec![0u8; total];
        p[0] = 0x45;
        p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
        p[8] = 64;
        p[9] = 253; // experimental protocol: no checksum needed
        p[12..16].copy_from_slice(&src);
        p[16..20].copy_from_slice(&dst);
        p[20..].copy_from_slice(payload);
        p
    }

    struct Node {
        engine: Engine,
        addr: SocketAddr,
    }

    #[test]
    fn roaming_returns_to_the_selected_path_but_never_jumps_to_another_endpoint() {
        let ic: SocketAddr = "172.31.255.2:51820".parse().unwrap();
        let public: SocketAddr = "203.0.113.10:51820".parse().unwrap();
        let nat: SocketAddr = "172.31.255.5:50487".parse().unwrap();
        let candidates = vec![
            Candidate {
                address: ic,
                kind: strait_proto::msg::EndpointKind::Interconnect,
                cost: 0,
            },
            Candidate {
                address: public,
                kind: strait_proto::msg::EndpointKind::Public,
                cost: 0,
            },
        ];
        let th = Thresholds::for_interval(std::time::Duration::from_secs(1));
        let mut selector = Selector::new(&candidates, th);
        // Only the public path answers: it becomes the active one.
        let t0 = Instant::now();
        let mut now = t0;
        for _ in 0..3 {
            for (to, seq) in selector.due(now) {
                if to == public {
                    let recorded =
                        selector.on_reply(seq, now + std::time::Duration::from_millis(1));
                    assert!(recorded.is_ok());
                }
            }
            now += th.interval;
            selector.on_tick(now);
        }
        assert_eq!(selector.active(), Some(public));
        let state = PeerState {
            tunnel: Tunnel::new(
                StaticSecret::from([1u8; 32]),
                PublicKey::from(&StaticSecret::from([2u8; 32])),
                None,
                1,
            ),
            spec: PeerSpec {
                public_key: [2u8; 32],
                endpoint: Some(nat),
                allowed_ips: vec![],
                keepalive: None,
                candidates,
                next_public_key: None,
            },
            probe_key: ProbeKey::derive(
                &StaticSecret::from([1u8; 32]),
                &PublicKey::from(&StaticSecret::from([2u8; 32])),
            ),
            selector: Some(selector),
            standing: Standing::Primary,
            predecessor: None,
            standby: None,
            kick: false,
        };
        assert!(state.may_roam_to(public), "back to the selected path");
        assert!(
            !state.may_roam_to(ic),
            "another announced endpoint: the selector decides"
        );
        assert!(
            state.may_roam_to("198.51.100.7:4000".parse().unwrap()),
            "a new NAT mapping"
        );
    }

    fn pair() -> (Node, Node) {
        let a_secret = StaticSecret::from([1u8; 32]);
        let b_secret = StaticSecret::from([2u8; 32]);
        let a_pub = *PublicKey::from(&a_secret).as_bytes();
        let b_pub = *PublicKey::from(&b_secret).as_bytes();
        let a_addr: SocketAddr = "192.0.2.1:51820".parse().unwrap();
        let b_addr: SocketAddr = "198.51.100.1:51820".parse().unwrap();
        let mut a = Engine::new(a_secret, std::time::Duration::from_secs(1));
        a.set_peers(&[PeerSpec {
            public_key: b_pub,
            endpoint: Some(b_addr),
            allowed_ips: vec!["10.2.0.0/16".parse().unwrap()],
            keepalive: None,
            candidates: vec![],
            next_public_key: None,
        }]);
        let mut b = Engine::new(b_secret, std::time::Duration::from_secs(1));
        // B does not know A's endpoint (A is behind NAT): it learns it.
        b.set_peers(&[PeerSpec {
            public_key: a_pub,
            endpoint: None,
            allowed_ips: vec!["10.1.0.0/16".parse().unwrap()],
            keepalive: None,
            candidates: vec![],
            next_public_key: None,
        }]);
        (
            Node {
                engine: a,
                addr: a_addr,
            },
            Node {
                engine: b,
                addr: b_addr,
            },
        )
    }

    /// Delivers datagrams back and forth until quiet; returns what each side wrote to TUN.
    fn exchange(
        a: &mut Node,
        b: &mut Node,
        first: (SocketAddr, Vec<u8>),
    ) -> (Vec<Vec<u8>>, Vec<Vec<u8>>) {
        let mut out = vec![0u8; BUFFER];
        let mut in_flight = vec![(a.addr, first.0, first.1)];
        let (mut tun_a, mut tun_b) = (Vec::new(), Vec::new());
        for _ in 0..20 {
            let Some((from, to, bytes)) = in_flight.pop() else {
                break;
            };
            let (node, tun) = if to == b.addr {
                (&mut *b, &mut tun_b)
            } else {
                (&mut *a, &mut tun_a)
            };
            let me = node.addr;
            node.engine.inbound(from, &bytes, &mut out, |e| match e {
                Emit::Network(ep, d) => in_flight.insert(0, (me, ep, d.to_vec())),
                Emit::Tun(p) => tun.push(p.to_vec()),
            });
        }
        (tun_a, tun_b)
    }

    /// Encrypts `packet` at `from` and delivers it at `to`; what `to` wrote to TUN.
    fn send_one(from: &mut Node, to: &mut Node, packet: &[u8]) -> Vec<Vec<u8>> {
        let mut out = vec![0u8; BUFFER];
        let Some((_, d)) = from.engine.outbound(packet, &mut out) else {
            return Vec::new();
        };
        let d = d.to_vec();
        let mut got = Vec::new();
        let from_addr = from.addr;
        to.engine.inbound(from_addr, &d, &mut out, |e| {
            if let Emit::Tun(p) = e {
                got.push(p.to_vec())
            }
        });
        got
    }

    #[test]
    fn a_key_rotation_loses_no_packet_in_either_direction() {
        let (mut a, mut b) = pair();
        let mut out = vec![0u8; BUFFER];
        let a_to_b = |n: u8| ipv4([10, 1, 0, 5], [10, 2, 0, 9], &[n]);
        let b_to_a = |n: u8| ipv4([10, 2, 0, 9], [10, 1, 0, 5], &[n]);
        let (ep, init) = a
            .engine
            .outbound(&a_to_b(0), &mut out)
            .map(|(e, d)| (e, d.to_vec()))
            .unwrap();
        exchange(&mut a, &mut b, (ep, init));
        assert_eq!(send_one(&mut b, &mut a, &b_to_a(1)), vec![b_to_a(1)]);

        // A announces its next key; B's map carries it (a standby tunnel, no route).
        let next = StaticSecret::from([7u8; 32]);
        let next_pub = *PublicKey::from(&next).as_bytes();
        let a_pub = *PublicKey::from(&StaticSecret::from([1u8; 32])).as_bytes();
        let a_addr = a.addr;
        let spec_of_a = |key: [u8; 32], next: Option<[u8; 32]>| PeerSpec {
            public_key: key,
            endpoint: Some(a_addr),
            allowed_ips: vec!["10.1.0.0/16".parse().unwrap()],
            keepalive: None,
            candidates: vec![],
            next_public_key: next,
        };
        b.engine.set_peers(&[spec_of_a(a_pub, Some(next_pub))]);
        assert_eq!(b.engine.peer_count(), 1);
        // A datagram encrypted under the old session, still in flight after the switch.
        let (_, late) = a
            .engine
            .outbound(&a_to_b(2), &mut out)
            .map(|(e, d)| (e, d.to_vec()))
            .unwrap();

        // A switches. Until its new tunnel has a session, the old session carries traffic.
        a.engine.rotate_own(next);
        assert_eq!(send_one(&mut a, &mut b, &a_to_b(3)), vec![a_to_b(3)]);
        assert_eq!(send_one(&mut b, &mut a, &b_to_a(4)), vec![b_to_a(4)]);
        // The new handshake starts at the next tick; B answers on its standby and promotes it.
        let mut kicked = Vec::new();
        a.engine
            .tick(&mut out, |ep, d| kicked.push((ep, d.to_vec())));
        assert_eq!(kicked.len(), 1, "one handshake initiation");
        exchange(&mut a, &mut b, kicked.remove(0));
        // Both directions work on the new sessions, and the straggler is still decrypted.
        assert_eq!(send_one(&mut a, &mut b, &a_to_b(5)), vec![a_to_b(5)]);
        assert_eq!(send_one(&mut b, &mut a, &b_to_a(6)), vec![b_to_a(6)]);
        let mut got = Vec::new();
        b.engine.inbound(a.addr, &late, &mut out, |e| {
            if let Emit::Tun(p) = e {
                got.push(p.to_vec())
            }
        });
        assert_eq!(got, vec![a_to_b(2)], "in-flight datagram under the old key");
        // B's status shows A under its new key; the map catching up changes nothing.
        assert_eq!(b.engine.status()[0].public_key, next_pub);
        b.engine.set_peers(&[spec_of_a(next_pub, None)]);
        assert_eq!(b.engine.peer_count(), 1);
        assert_eq!(send_one(&mut a, &mut b, &a_to_b(7)), vec![a_to_b(7)]);
        // Retired tunnels go after RETIRE_AFTER; traffic is unaffected.
        let t0 = Instant::now();
        for node in [&mut a, &mut b] {
            node.engine.probe_tick(t0, |_, _| {});
            node.engine
                .probe_tick(t0 + rotation::RETIRE_AFTER, |_, _| {});
            assert_eq!(node.engine.peers.len(), 1, "only the primary is left");
        }
        assert_eq!(send_one(&mut b, &mut a, &b_to_a(8)), vec![b_to_a(8)]);
        assert_eq!(send_one(&mut a, &mut b, &a_to_b(9)), vec![a_to_b(9)]);
        // The old key no longer gets in: a handshake under it finds no tunnel.
        assert!(!b.engine.by_key.contains_key(&a_pub));
    }

    #[test]
    fn a_peer_that_never_uses_its_announced_key_keeps_its_tunnel() {
        let (mut a, mut b) = pair();
        let mut out = vec![0u8; BUFFER];
        let (ep, init) = a
            .engine
            .outbound(&ipv4([10, 1, 0, 5], [10, 2, 0, 9], b"x"), &mut out)
            .map(|(e, d)| (e, d.to_vec()))
            .unwrap();
        exchange(&mut a, &mut b, (ep, init));
        let a_pub = *PublicKey::from(&StaticSecret::from([1u8; 32])).as_bytes();
        let mut spec = PeerSpec {
            public_key: a_pub,
            endpoint: Some(a.addr),
            allowed_ips: vec!["10.1.0.0/16".parse().unwrap()],
            keepalive: None,
            candidates: vec![],
            next_public_key: Some([9u8; 32]),
        };
        b.engine.set_peers(std::slice::from_ref(&spec));
        assert_eq!(b.engine.peers.len(), 2, "primary and standby");
        // The announcement is withdrawn (the agent restarted): the standby goes.
        spec.next_public_key = None;
        b.engine.set_peers(std::slice::from_ref(&spec));
        assert_eq!(b.engine.peers.len(), 1);
        let p = ipv4([10, 1, 0, 5], [10, 2, 0, 9], b"y");
        assert_eq!(send_one(&mut a, &mut b, &p), vec![p]);
    }

    #[test]
    fn packets_cross_after_a_handshake_and_the_nat_side_is_learned() {
        let (mut a, mut b) = pair();
        let mut out = vec![0u8; BUFFER];
        let packet = ipv4([10, 1, 0, 5], [10, 2, 0, 9], b"ping");
        let (ep, init) = a
            .engine
            .outbound(&packet, &mut out)
            .map(|(e, d)| (e, d.to_vec()))
            .unwrap();
        assert_eq!(ep, b.addr);
        let (_, tun_b) = exchange(&mut a, &mut b, (ep, init));
        assert!(
            tun_b.contains(&packet),
            "queued packet delivered after the handshake"
        );
        // B learned A's endpoint from the authenticated handshake and can answer.
        let reply = ipv4([10, 2, 0, 9], [10, 1, 0, 5], b"pong");
        let (ep, data) = b
            .engine
            .outbound(&reply, &mut out)
            .map(|(e, d)| (e, d.to_vec()))
            .unwrap();
        assert_eq!(ep, a.addr);
        let mut got = Vec::new();
        a.engine.inbound(b.addr, &data, &mut out, |e| {
            if let Emit::Tun(p) = e {
                got.push(p.to_vec())
            }
        });
        assert_eq!(got, vec![reply]);
        // No route: dropped.
        assert!(a
            .engine
            .outbound(&ipv4([10, 1, 0, 5], [172, 16, 0, 1], b"x"), &mut out)
            .is_none());
    }

    #[test]
    fn a_peer_cannot_send_from_addresses_it_does_not_own() {
        let (mut a, mut b) = pair();
        let mut out = vec![0u8; BUFFER];
        let first = ipv4([10, 1, 0, 5], [10, 2, 0, 9], b"hello");
        let (ep, init) = a
            .engine
            .outbound(&first, &mut out)
            .map(|(e, d)| (e, d.to_vec()))
            .unwrap();
        exchange(&mut a, &mut b, (ep, init));
        // A spoofs an inner source in B's own range: B must drop it.
        let spoofed = ipv4([10, 2, 0, 1], [10, 2, 0, 9], b"spoof");
        a.engine.set_peers(&[PeerSpec {
            public_key: *PublicKey::from(&StaticSecret::from([2u8; 32])).as_bytes(),
            endpoint: Some(b.addr),
            allowed_ips: vec!["10.2.0.0/16".parse().unwrap()],
            keepalive: None,
            candidates: vec![],
            next_public_key: None,
        }]);
        let (_, data) = a
            .engine
            .outbound(&spoofed, &mut out)
            .map(|(e, d)| (e, d.to_vec()))
            .unwrap();
        let mut delivered = 0;
        b.engine.inbound(a.addr, &data, &mut out, |e| {
            if matches!(e, Emit::Tun(p) if !p.is_empty()) {
                delivered += 1
            }
        });
        assert_eq!(delivered, 0, "spoofed inner source delivered");
        // Removing the peer drops its traffic; the session of others is untouched.
        b.engine.set_peers(&[]);
        assert_eq!(b.engine.peer_count(), 0);
    }

    #[test]
    fn the_receiving_engine_enforces_its_policy_and_lets_replies_to_its_own_flows_in() {
        use crate::dataplane::access::packet::build::{ports, v4};
        use crate::dataplane::access::packet::TCP;
        use strait_proto::access::{AccessPolicy, AccessRule, Action, Source};
        let (mut a, mut b) = pair();
        let mut out = vec![0u8; BUFFER];
        let tcp = |src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16| {
            v4(src, dst, TCP, &ports(TCP, sport, dport))
        };
        let (ep, init) = a
            .engine
            .outbound(&ipv4([10, 1, 0, 5], [10, 2, 0, 9], b"x"), &mut out)
            .map(|(e, d)| (e, d.to_vec()))
            .unwrap();
        exchange(&mut a, &mut b, (ep, init));
        // B lets site a open tcp/443 and nothing else; A lets nothing in.
        let net = |s: &str| s.parse::<IpNetwork>().unwrap();
        let web = AccessPolicy {
            default: Action::Deny,
            rules: vec![AccessRule {
                name: "web".into(),
                action: Action::Allow,
                from: vec![Source::Site("a".into())],
                to: vec![net("10.2.0.0/16")],
                to_node: false,
                services: vec!["tcp/443".parse().unwrap()],
            }],
        };
        b.engine.set_access(std::sync::Arc::new(Filter::compile(
            &web,
            &[("a".into(), vec![net("10.1.0.0/16")])],
            None,
        )));
        let closed = AccessPolicy {
            default: Action::Deny,
            rules: vec![],
        };
        a.engine.set_access(std::sync::Arc::new(Filter::compile(
            &closed,
            &[("b".into(), vec![net("10.2.0.0/16")])],
            None,
        )));
        let (a_host, b_host) = ([10, 1, 0, 5], [10, 2, 0, 9]);
        let open = tcp(a_host, 40000, b_host, 443);
        assert_eq!(send_one(&mut a, &mut b, &open), vec![open.clone()]);
        // A sends anyway what B's policy refuses (A does not filter): B drops it.
        let ssh = tcp(a_host, 40001, b_host, 22);
        assert_eq!(send_one(&mut a, &mut b, &ssh), Vec::<Vec<u8>>::new());
        // B's answer on the flow A opened reaches A; a flow B opens does not.
        let answer = tcp(b_host, 443, a_host, 40000);
        assert_eq!(send_one(&mut b, &mut a, &answer), vec![answer.clone()]);
        let back = tcp(b_host, 5555, a_host, 22);
        assert_eq!(send_one(&mut b, &mut a, &back), Vec::<Vec<u8>>::new());
        let drops = |n: &mut Node| {
            n.engine
                .take_access_report()
                .unwrap()
                .drops
                .into_iter()
                .map(|d| (d.site, d.reason, d.packets))
                .collect::<Vec<_>>()
        };
        assert_eq!(drops(&mut b), vec![("a".into(), "default".into(), 1)]);
        assert_eq!(drops(&mut a), vec![("b".into(), "default".into(), 1)]);
    }

    #[test]
    fn probes_choose_the_endpoint_and_ignore_forgeries() {
        use crate::paths::select::Health;
        use strait_proto::msg::EndpointKind;
        let (mut a, mut b) = pair();
        let b_pub = *PublicKey::from(&StaticSecret::from([2u8; 32])).as_bytes();
        let inside: SocketAddr = "10.2.0.1:51820".parse().unwrap();
        a.engine.set_peers(&[PeerSpec {
            public_key: b_pub,
            endpoint: Some(b.addr),
            allowed_ips: vec!["10.2.0.0/16".parse().unwrap()],
            keepalive: None,
            candidates: vec![
                Candidate {
                    address: b.addr,
                    kind: EndpointKind::Public,
                    cost: 0,
                },
                // B's address on its own LAN, inside the prefixes the tunnel carries: probed
                // too (the marked socket takes the underlay), but it never answers here.
                Candidate {
                    address: inside,
                    kind: EndpointKind::Private,
                    cost: 0,
                },
            ],
            next_public_key: None,
        }]);
        let t0 = Instant::now();
        for round in 0..3u32 {
            let now = t0 + std::time::Duration::from_secs(u64::from(round));
            let mut requests = Vec::new();
            a.engine
                .probe_tick(now, |to, d| requests.push((to, d.to_vec())));
            assert_eq!(requests.len(), 2, "{requests:?}");
            assert!(requests.iter().any(|(to, _)| *to == inside));
            let mut replies = Vec::new();
            for (_, req) in requests.iter().filter(|(to, _)| *to == b.addr) {
                let outcome = b
                    .engine
                    .on_probe(a.addr, req, now, |to, d| replies.push((to, d.to_vec())));
                assert_eq!(outcome, ProbeOutcome::Answered);
            }
            assert_eq!(replies.len(), 1);
            assert_eq!(replies[0].0, a.addr, "answered on the path it came in on");
            // A forged reply (a third node's key) and a replay of a real one change nothing.
            let forged = probe::encode(
                &Probe {
                    kind: Kind::Reply,
                    sender: probe::id_of(&PublicKey::from(&StaticSecret::from([2u8; 32]))),
                    seq: 1,
                },
                &ProbeKey::derive(
                    &StaticSecret::from([9u8; 32]),
                    &PublicKey::from(&StaticSecret::from([1u8; 32])),
                ),
            );
            let before = a.engine.paths();
            let outcome = a
                .engine
                .on_probe(b.addr, &forged, now, |_, _| panic!("answered a reply"));
            assert_eq!(outcome, ProbeOutcome::Refused(ProbeRefusal::BadMac));
            assert_eq!(a.engine.paths(), before);
            // A probe naming no peer, and one reflected back to its sender (it names A).
            let mut stranger = forged;
            stranger[4..12].copy_from_slice(b"stranger");
            let reflected = &requests[0].1;
            for d in [&stranger[..], reflected] {
                let outcome = a.engine.on_probe(b.addr, d, now, |_, _| panic!("answered"));
                assert_eq!(outcome, ProbeOutcome::Refused(ProbeRefusal::UnknownSender));
            }
            assert_eq!(a.engine.paths(), before);
            let later = now + std::time::Duration::from_millis(2);
            let outcome = a.engine.on_probe(b.addr, &replies[0].1, later, |_, _| {});
            assert_eq!(outcome, ProbeOutcome::Recorded);
            let after = a.engine.paths();
            let outcome = a.engine.on_probe(b.addr, &replies[0].1, later, |_, _| {});
            assert_eq!(outcome, ProbeOutcome::Refused(ProbeRefusal::NotInFlight));
            assert_eq!(a.engine.paths(), after, "a replayed reply counted");
        }
        let paths = a.engine.paths();
        assert_eq!(paths.len(), 1);
        let report = &paths[0].1;
        assert_eq!(report.len(), 2, "{report:?}");
        let public = report.iter().find(|p| p.address == b.addr).unwrap();
        assert_eq!(public.health, Health::Up);
        assert!(public.active);
        let lan = report.iter().find(|p| p.address == inside).unwrap();
        assert!(lan.health != Health::Up && !lan.active, "{lan:?}");
    }
}
