//! Path MTU in the engine: a [`PathMtu`] search per path of every peer, size probes sent
//! and their replies recorded, and the limit on the packets a peer's tunnel takes: a packet
//! from the TUN device larger than the active path carries is refused with the MTU to
//! report to its sender (ICMP "fragmentation needed" / "packet too big", built by
//! `dataplane::icmp`), instead of leaving as a datagram that a smaller hop drops. When a
//! peer's limit drops (a switch to a narrower path), the recent flows whose packets no
//! longer fit are told at once (`dataplane::recent_flows`), rather than when their senders
//! next retransmit.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Instant;

use super::{Engine, PeerState, Standing};
use crate::dataplane::recent_flows::{RecentFlows, FLOWS};
use crate::paths::pmtu::{PathMtu, PMTU_BIT};
use crate::paths::probe;

/// Outer bytes around an IP packet carried by the tunnel to `to`: the outer IP header
/// (20 or 40), UDP (8) and WireGuard's data header and tag (32; boringtun does not pad).
pub fn overhead(to: SocketAddr) -> u16 {
    let ip = if to.is_ipv4() { 20 } else { 40 };
    ip + 8 + super::tunnel::OVERHEAD as u16
}

/// The largest IP packet the tunnel carries over a path of `path_mtu` bytes toward `to`.
pub fn inner_mtu(path_mtu: u16, to: SocketAddr) -> u16 {
    path_mtu.saturating_sub(overhead(to))
}

/// The MTU state of one peer: a search per path, and the limit on its packets.
#[derive(Debug, Default)]
pub struct PeerMtu {
    paths: HashMap<SocketAddr, PathMtu>,
    next_seq: u64,
    /// The largest packet the active path carries (inner bytes), once known.
    pub(super) limit: Option<u16>,
    /// The smallest limit of the peer's other paths, when below `limit`: larger packets
    /// are remembered in `recent`, to be answered if a switch lowers the limit.
    narrowest: Option<u16>,
    recent: RecentFlows,
    /// ICMP errors for the recent flows, after the limit dropped; taken by the shell.
    notices: Vec<Vec<u8>>,
    /// The limit changed since the engine last looked.
    limit_changed: bool,
}

impl PeerMtu {
    /// The discovered MTU of the path to `address` (outer bytes).
    pub fn of(&self, address: SocketAddr) -> Option<u16> {
        self.paths.get(&address).and_then(PathMtu::mtu)
    }

    fn on_reply(&mut self, seq: u64) -> bool {
        self.paths.values_mut().any(|p| p.on_reply(seq))
    }

    /// The earliest deadline of the searches on the peer's paths, if any.
    pub(super) fn next_deadline(&self, now: Instant) -> Option<Instant> {
        self.paths.values().map(|p| p.next_deadline(now)).min()
    }

    /// Whether every pass must look at this peer: recent flows to date, notices to hand
    /// over.
    pub(super) fn busy(&self) -> bool {
        !self.recent.is_empty() || !self.notices.is_empty()
    }

    /// The limit is now `limit`: when lower than before, the recent flows it refuses get
    /// their ICMP errors (at most a few per change; the shell takes them every pass).
    fn set_limit(&mut self, limit: Option<u16>, now: Instant) {
        let before = std::mem::replace(&mut self.limit, limit);
        self.limit_changed |= before != limit;
        if let Some(l) = limit {
            if before.is_none_or(|b| l < b) && !self.recent.is_empty() {
                let errors = self.recent.narrowed(l, now);
                let room = (4 * FLOWS).saturating_sub(self.notices.len());
                self.notices.extend(errors.into_iter().take(room));
            }
        }
    }

    /// The smallest limit over the paths other than `active`.
    fn narrowest_other(&self, active: Option<SocketAddr>) -> Option<u16> {
        self.paths
            .iter()
            .filter(|(a, _)| Some(**a) != active)
            .filter_map(|(a, p)| Some(inner_mtu(p.mtu()?, *a)))
            .min()
    }
}

/// What to do with a packet from the TUN device.
#[derive(Debug, PartialEq, Eq)]
pub enum Outbound<'a> {
    /// Send this datagram.
    Send(SocketAddr, &'a [u8]),
    /// Larger than the peer's active path carries: tell the sender this MTU.
    TooBig(u16),
    Drop,
}

impl Engine {
    /// The interface MTU toward each path (from the shell, which asks the kernel): a
    /// search starts only on a path whose ceiling is known, and a lower ceiling (an uplink
    /// lowered) caps the path at once.
    pub fn set_ceilings(&mut self, ceilings: &[(SocketAddr, u16)], now: Instant) {
        // One look-up per path, not per (address, peer): the shell calls this every second
        // with every peer's addresses.
        let given: HashMap<SocketAddr, u16> = ceilings.iter().copied().collect();
        if given.iter().any(|(a, c)| self.ceilings.get(a) != Some(c)) {
            // A path's ceiling is new or changed: searches start or are capped.
            self.wake_all();
        }
        self.ceilings.extend(given.iter().map(|(a, c)| (*a, *c)));
        for (idx, state) in self.peers.iter_mut() {
            for (address, path) in state.mtu.paths.iter_mut() {
                let Some(&ceiling) = given.get(address) else {
                    continue;
                };
                if let Some(c) = path.set_ceiling(ceiling, now) {
                    tracing::info!(peer = idx, %address, ceiling, from = ?c.from, to = ?c.to, "path MTU capped by the interface");
                }
            }
        }
        self.refresh_limits(now, true);
    }

    /// Every address a path MTU is searched on: each peer's candidates and endpoint.
    pub fn mtu_addresses(&self) -> Vec<SocketAddr> {
        let mut out: Vec<SocketAddr> = self
            .primaries()
            .flat_map(|(_, s)| Self::measured(&s.spec))
            .collect();
        out.sort();
        out.dedup();
        out
    }

    fn measured(spec: &super::PeerSpec) -> impl Iterator<Item = SocketAddr> + '_ {
        spec.candidates
            .iter()
            .map(|c| c.address)
            .chain(spec.endpoint)
    }

    /// Path MTU discovery: starts searches on new paths, forgets gone ones, expires size
    /// probes and sends those due. Called from `probe_tick`.
    pub(super) fn pmtu_tick(&mut self, now: Instant, emit: &mut impl FnMut(SocketAddr, &[u8])) {
        let own_id = self.own_id;
        let tunables = self.pmtu_tunables;
        let mut wire = std::mem::take(&mut self.size_probe);
        for (idx, state) in self.peers.iter_mut() {
            if state.standing != Standing::Primary || !state.visiting {
                continue;
            }
            let PeerState {
                mtu,
                probe_key,
                selector,
                spec,
                ..
            } = state;
            // Searches on the paths measured, without allocating (every peer visited).
            mtu.paths
                .retain(|a, _| Self::measured(spec).any(|m| m == *a));
            for address in Self::measured(spec) {
                if let (None, Some(&ceiling)) =
                    (mtu.paths.get(&address), self.ceilings.get(&address))
                {
                    mtu.paths.insert(address, PathMtu::new(ceiling, tunables));
                }
            }
            mtu.recent.tick(now);
            let PeerMtu {
                paths, next_seq, ..
            } = mtu;
            for (&address, path) in paths.iter_mut() {
                path.set_answering(selector.as_ref().is_none_or(|s| s.answering(address)));
                if let Some(c) = path.on_tick(now) {
                    tracing::info!(peer = idx, %address, from = ?c.from, to = ?c.to, "path MTU");
                }
                let sizes = path.due(now, || {
                    *next_seq = next_seq.wrapping_add(1);
                    PMTU_BIT | (*next_seq & (PMTU_BIT - 1))
                });
                for (seq, size) in sizes {
                    // The probe's UDP payload: the size less the outer IP and UDP headers.
                    let ip = if address.is_ipv4() { 20 } else { 40 };
                    let len = usize::from(size).saturating_sub(ip + 8);
                    probe::encode_sized(own_id, seq, len, probe_key, &mut wire);
                    tracing::trace!(peer = idx, %address, size, "size probe");
                    emit(address, &wire);
                }
            }
        }
        self.size_probe = wire;
        self.refresh_limits(now, false);
        self.settle_visits(now);
    }

    /// A reply to a size probe, for primary `owner`.
    pub(super) fn on_size_reply(&mut self, owner: u32, seq: u64) -> bool {
        self.peers.get_mut(&owner).is_some_and(|s| {
            // Reported (and the limit refreshed) at the next pass.
            s.wake = None;
            s.mtu.on_reply(seq)
        })
    }

    /// After a switch to `to`: its MTU is checked at once.
    pub(super) fn recheck_path(state: &mut PeerState, to: SocketAddr, now: Instant) {
        if let Some(path) = state.mtu.paths.get_mut(&to) {
            path.recheck(now);
        }
        // The engine's smallest limits are refreshed at the next probe tick (20 ms).
        let limit = state.mtu.of(to).map(|m| inner_mtu(m, to));
        state.mtu.set_limit(limit, now);
    }

    /// Each peer's packet limit from its active path's MTU, and the smallest of its other
    /// paths' (of every peer, or of those this pass visits), then the engine's smallest
    /// limits if any changed.
    fn refresh_limits(&mut self, now: Instant, all: bool) {
        // A peer came or went since the last look (`limits_dirty`): the smallest limits
        // are recomputed too.
        let mut changed = all || self.limits_dirty;
        for state in self.peers.values_mut() {
            if !all && !state.visiting {
                continue;
            }
            let active = state.spec.endpoint;
            let limit = active.and_then(|ep| state.mtu.of(ep).map(|m| inner_mtu(m, ep)));
            state.mtu.set_limit(limit, now);
            let narrowest = state
                .mtu
                .narrowest_other(active)
                .filter(|n| limit.is_none_or(|l| *n < l));
            let narrowed = std::mem::replace(&mut state.mtu.narrowest, narrowest) != narrowest;
            changed |= std::mem::take(&mut state.mtu.limit_changed) || narrowed;
        }
        if !changed {
            return;
        }
        self.limits_dirty = true;
        let mut min: Option<u16> = None;
        let mut min_narrowest: Option<u16> = None;
        for state in self.peers.values() {
            let limit = state.mtu.limit;
            if let Some(l) = limit {
                min = Some(min.map_or(l, |m| m.min(l)));
            }
            if let Some(n) = state.mtu.narrowest {
                min_narrowest = Some(min_narrowest.map_or(n, |m| m.min(n)));
            }
        }
        self.min_limit = min;
        self.min_narrowest = min_narrowest;
    }

    /// ICMP errors for recent flows whose packets the peer's path no longer carries (after
    /// a switch to a narrower path), to be written to the TUN device: their senders lower
    /// their MSS and retransmit at once rather than when their retransmission timers fire.
    pub fn take_too_big_notices(&mut self) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        for state in self.peers.values_mut() {
            out.append(&mut state.mtu.notices);
        }
        out
    }

    /// Every peer's largest packet over its active path (inner bytes), by public key;
    /// `None` where the path's MTU is not known.
    pub fn peer_mtus(&self) -> Vec<([u8; 32], Option<u16>)> {
        let mut out: Vec<_> = self
            .primaries()
            .map(|(_, s)| (s.spec.public_key, s.mtu.limit))
            .collect();
        out.sort();
        out
    }

    /// Whether [`Engine::peer_mtus`] changed since the last call (the first call: since
    /// there were no peers); no allocation when not, as the shell asks every timer pass.
    pub fn peer_mtus_changed(&mut self) -> bool {
        if !std::mem::take(&mut self.limits_dirty) {
            return false;
        }
        let limits = self
            .peers
            .values()
            .filter(|s| s.standing == Standing::Primary)
            .map(|s| (s.spec.public_key, s.mtu.limit));
        self.mtus_published.update(limits).is_some()
    }

    /// Turns path MTU enforcement on or off (off with an explicit `mtu`: the operator's
    /// figure wins and packets are never refused for size).
    pub fn set_enforce_mtu(&mut self, enforce: bool) {
        self.enforce_mtu = enforce;
    }

    /// Like [`Engine::outbound`], but a packet larger than its peer's active path carries
    /// is refused with the MTU to report to its sender, and one larger than another of the
    /// peer's paths carries is remembered as its flow's latest (see `recent_flows`).
    pub fn outbound_checked<'a>(&mut self, packet: &[u8], out: &'a mut [u8]) -> Outbound<'a> {
        let len = packet.len();
        let over = |m: Option<u16>| m.is_some_and(|m| len > usize::from(m));
        if self.enforce_mtu && (over(self.min_limit) || over(self.min_narrowest)) {
            if let Some(state) = self.carrier_of(packet).and_then(|i| self.peers.get_mut(&i)) {
                if let Some(limit) = state.mtu.limit.filter(|l| len > usize::from(*l)) {
                    return Outbound::TooBig(limit);
                }
                if over(state.mtu.narrowest) {
                    state.mtu.recent.record(packet);
                }
            }
        }
        match self.outbound(packet, out) {
            Some((to, bytes)) => Outbound::Send(to, bytes),
            None => Outbound::Drop,
        }
    }

    fn carrier_of(&self, packet: &[u8]) -> Option<u32> {
        let dst = super::tunnel::destination(packet)?;
        self.table
            .lookup(dst)
            .and_then(|carriers| self.carrier(carriers, packet))
    }
}
