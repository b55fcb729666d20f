//! The WireGuard engine: one `Tunnel` per peer, the cryptokey routing table, and the IO
//! loop that moves packets between the TUN device and one UDP socket.
//!
//! [`Engine`] holds the state and makes every per-packet decision; `pump` is the IO shell
//! that owns the TUN device, the socket and the timer, and applies peer changes live.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Instant;

use boringtun::x25519::{PublicKey, StaticSecret};
use ipnetwork::IpNetwork;

use super::access::{Access, AccessReport, Filter};
use super::lpm::PrefixTable;
use super::spread::{self, Gateway, Rejoin};
use super::tunnel::{self, Addressee, Output, Tunnel};
use crate::paths::ping::Pings;
use crate::paths::probe::{self, ProbeKey};
use crate::paths::select::{Candidate, PathReport, Selector, Thresholds};

mod carry;
mod pmtu;
mod probing;
mod published;
mod rotation;
mod visits;

pub use carry::CarryOutcome;
pub use pmtu::{inner_mtu, overhead, Outbound, PeerMtu};
pub use probing::{PingSent, ProbeOutcome, ProbeRefusal};

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
    /// Among gateways of one site carrying the same prefix, lower is preferred (0: active,
    /// 1: standby); see `spread`.
    pub priority: u8,
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
    /// Path MTU discovery on each path, and the limit on packets it implies.
    mtu: PeerMtu,
    /// Whether the tunnel carries again since its path last came back (see `spread`).
    rejoin: Rejoin,
    /// Start a new handshake at the next [`Engine::start_handshakes`], even with a
    /// session up (the path came back).
    rehandshake: bool,
    /// When the timer pass next visits this peer (`None`: at the next pass), and whether
    /// the current pass visits it (see `visits`).
    wake: Option<Instant>,
    visiting: bool,
    /// Whether the peer was up when the peers up were last published.
    published_up: bool,
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

    /// Whether this node's probes reach the peer (some path not down); a peer without
    /// probing counts as reachable.
    fn reachable(&self) -> bool {
        self.selector.as_ref().is_none_or(Selector::reachable)
    }

    /// Whether flows may be spread to the peer: reachable, and for a probed peer, with a
    /// handshake completed since its path last came back ([`Rejoin`]).
    fn usable(&self) -> bool {
        match &self.selector {
            Some(sel) => sel.reachable() && self.rejoin.ready(),
            None => true,
        }
    }

    /// The selector's report of every path, with each path's discovered MTU.
    fn path_reports(&self) -> Vec<PathReport> {
        let mut paths = self
            .selector
            .as_ref()
            .map(Selector::report)
            .unwrap_or_default();
        for p in &mut paths {
            p.mtu = self.mtu.of(p.address);
        }
        paths
    }
}

/// The keys of the primary tunnels that are up (see [`Engine::up_peers`]), in no order.
fn up_keys(peers: &HashMap<u32, PeerState>) -> impl Iterator<Item = [u8; 32]> + Clone + '_ {
    peers
        .values()
        .filter(|s| s.standing == Standing::Primary && s.up())
        .map(|s| s.spec.public_key)
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
    /// The largest packet the active path carries (inner bytes), once discovered.
    pub mtu: Option<u16>,
}

/// Where a packet goes.
#[derive(Debug, PartialEq, Eq)]
pub enum Emit<'a> {
    Network(SocketAddr, &'a [u8]),
    Tun(&'a [u8]),
}

/// The engine's state.
pub struct Engine {
    secret: StaticSecret,
    public: PublicKey,
    peers: HashMap<u32, PeerState>,
    by_key: HashMap<[u8; 32], u32>,
    /// Prefix -> the primary tunnels carrying it, sorted (several: the gateways of one site).
    table: PrefixTable<Vec<u32>>,
    next_index: u32,
    /// This node's probe id, and peers by theirs.
    own_id: [u8; 8],
    by_id: HashMap<[u8; 8], u32>,
    thresholds: Thresholds,
    /// Probes sent on demand for an operator.
    pings: Pings,
    /// The access policy on decrypted packets, and the flows sent (whose replies pass).
    access: Access,
    /// Path MTU discovery: the interface MTU toward each path (from the shell), the
    /// search's timings, a buffer for size probes, whether packets over a path's MTU are
    /// refused, and the smallest limit of any peer (packets no larger skip the check).
    ceilings: HashMap<SocketAddr, u16>,
    pmtu_tunables: crate::paths::pmtu::Tunables,
    size_probe: Vec<u8>,
    enforce_mtu: bool,
    min_limit: Option<u16>,
    /// The smallest limit of any peer's paths other than its active one (larger packets
    /// are remembered as their flow's latest).
    min_narrowest: Option<u16>,
    /// Members' carry queries: their keys and the derivation budget.
    carry: carry::Answering,
    /// The peers up and the peers' packet limits as the shell last published them.
    up_published: published::Published<[u8; 32], ()>,
    mtus_published: published::Published<[u8; 32], Option<u16>>,
    /// Whether a peer's being up, or a peer's packet limit, may have changed since they
    /// were last compared with what was published.
    up_dirty: bool,
    limits_dirty: bool,
    /// Peers visited by timer passes so far (see `visits`).
    visits: u64,
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
            ceilings: HashMap::new(),
            pmtu_tunables: crate::paths::pmtu::Tunables::for_interval(probe_interval),
            size_probe: Vec::new(),
            enforce_mtu: true,
            min_limit: None,
            min_narrowest: None,
            carry: carry::Answering::default(),
            up_published: Default::default(),
            mtus_published: Default::default(),
            up_dirty: true,
            limits_dirty: true,
            visits: 0,
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
                    // Handshake at once: a peer may still hold a session with this node's
                    // previous run (a restart), which this run cannot decrypt; a peer that
                    // only sends here (a site's gateway carrying replies) would keep using
                    // it until a keepalive of ours, up to 25 s later.
                    if let Some(state) = self.peers.get_mut(&idx) {
                        state.kick = true;
                    }
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
                mtu: PeerMtu::default(),
                rejoin: Rejoin::new(0),
                rehandshake: false,
                wake: None,
                visiting: false,
                published_up: false,
            },
        );
        idx
    }

    /// Forgets tunnel `idx` and its lookups.
    fn remove_tunnel(&mut self, idx: u32) -> Option<PeerState> {
        let state = self.peers.remove(&idx)?;
        self.up_dirty = true;
        self.limits_dirty = true;
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
        // The peers or their standing changed: all are looked at again.
        self.wake_all();
        self.table = PrefixTable::new();
        for (idx, state) in &self.peers {
            if state.standing != Standing::Primary {
                continue;
            }
            for prefix in &state.spec.allowed_ips {
                match self.table.get_mut(*prefix) {
                    Some(v) => v.push(*idx),
                    None => {
                        self.table.insert(*prefix, vec![*idx]);
                    }
                }
            }
        }
        self.table.for_each_mut(|v| {
            v.sort_unstable();
            v.dedup();
        });
    }

    /// The tunnel that carries `packet` among `carriers` (the primaries whose allowed IPs
    /// hold its destination): the only one, or the choice of [`spread::choose`] by the
    /// packet's flow among the usable ones (reachable, and carrying again after a return).
    pub(super) fn carrier(&self, carriers: &[u32], packet: &[u8]) -> Option<u32> {
        if let [only] = carriers {
            return Some(*only);
        }
        let gateways = carriers.iter().filter_map(|idx| {
            let s = self.peers.get(idx)?;
            Some(Gateway {
                id: *idx,
                key: s.spec.public_key,
                priority: s.spec.priority,
                healthy: s.usable(),
            })
        });
        spread::choose(gateways, spread::flow_hash(packet).unwrap_or(0))
    }

    /// Whether the primary tunnel `idx` is reachable by this node's probes.
    pub fn peer_reachable(&self, key: &[u8; 32]) -> bool {
        self.by_key
            .get(key)
            .and_then(|idx| self.peers.get(idx))
            .is_some_and(PeerState::reachable)
    }

    /// The public keys of the peers with a path up by this node's probes and a session
    /// agreed since it came up ([`Rejoin`]) (a peer without probing: with a handshake in
    /// the last 180 s), sorted.
    pub fn up_peers(&self) -> Vec<[u8; 32]> {
        let mut keys: Vec<[u8; 32]> = up_keys(&self.peers).collect();
        keys.sort_unstable();
        keys
    }

    /// [`Engine::up_peers`] if they changed since the last call (the first call: since
    /// none were), else `None` without allocating: the shell asks every timer pass.
    pub fn up_peers_changed(&mut self) -> Option<Vec<[u8; 32]>> {
        // Between changes nothing is compared: a peer's being up changes at its visits
        // (see `visits`), which note it.
        if !std::mem::take(&mut self.up_dirty) {
            return None;
        }
        for state in self.peers.values_mut() {
            state.published_up = state.standing == Standing::Primary && state.up();
        }
        let up = self
            .peers
            .values()
            .filter(|s| s.published_up)
            .map(|s| (s.spec.public_key, ()));
        let changed = self.up_published.update(up)?;
        Some(changed.iter().map(|(k, ())| *k).collect())
    }

    /// The public keys of the primary tunnels this node's probes reach, sorted.
    pub fn reachable_peers(&self) -> Vec<[u8; 32]> {
        let mut keys: Vec<[u8; 32]> = self
            .primaries()
            .filter(|(_, s)| s.reachable())
            .map(|(_, s)| s.spec.public_key)
            .collect();
        keys.sort_unstable();
        keys
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
        let dst = tunnel::destination(packet)?;
        let Some(idx) = self
            .table
            .lookup(dst)
            .and_then(|carriers| self.carrier(carriers, packet))
        else {
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
        match tunnel::addressee(&self.secret, &self.public, datagram)? {
            Addressee::Key(key) => self.by_key.get(&key).copied(),
            // The low byte is boringtun's session slot; the rest is the tunnel's index.
            Addressee::Index(receiver) => Some(receiver >> 8),
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
                if table.lookup(src).is_some_and(|c| c.contains(&owner)) {
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
                if state.selector.is_none() && !state.published_up {
                    // A peer without probing is up once it has a session: published at
                    // the next pass.
                    state.wake = None;
                }
                // WireGuard roaming: answer where the peer last spoke from.
                if state.spec.endpoint != Some(from) {
                    tracing::debug!(peer = idx, %from, "peer endpoint updated");
                    state.spec.endpoint = Some(from);
                }
            }
            Ok(()) if authenticated && state.spec.endpoint != Some(from) => {
                // Another of the peer's paths: has the peer left the active one?
                let now = Instant::now();
                if let Some(switch) = state
                    .selector
                    .as_mut()
                    .and_then(|s| s.peer_left_active(from, now))
                {
                    tracing::info!(peer = idx, %from, "the peer left the active path, which is losing probes: following it");
                    Self::switch_path(idx, state, switch.to, now);
                }
            }
            Ok(()) => {}
            Err(e) => tracing::trace!(peer = idx, %from, error = %e, "datagram refused"),
        }
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
                    paths: s.path_reports(),
                    mtu: s.mtu.limit,
                }
            })
            .collect();
        out.sort_by_key(|p| p.public_key);
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
mod tests;
