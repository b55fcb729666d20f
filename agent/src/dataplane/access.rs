//! The access policy on the packet path (pure): which decrypted packets this node lets
//! through from its tunnels.
//!
//! [`Filter`] is the map's [`AccessPolicy`] compiled once per map: rules with their
//! destinations as masks, and a table from source address to the peer site that owns it
//! (the peers' allowed IPs, which decryption already enforces: a packet from a peer carries
//! only sources of that peer). [`Access`] judges each packet the engine decrypted: rules in
//! order, first match decides, else the default; a packet the rules refuse still passes if
//! it answers a flow this node sent into its tunnels ([`flows`]): TCP and UDP by 5-tuple,
//! ICMP echo replies by identifier, ICMP errors by the packet they quote. Drops are counted
//! by (peer site, reason). With no policy (allow all) every call returns at its first
//! branch: nothing is parsed, tracked or counted.

mod cache;
mod flows;
pub mod packet;

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Instant;

use ipnetwork::IpNetwork;
use strait_proto::access::{
    AccessDrop, AccessPolicy, Action, Service, Source, DEFAULT_REASON, MALFORMED_REASON,
};
use strait_proto::map::NetworkMap;

pub use flows::{FlowKey, Flows, ICMP_IDLE, MAX_FLOWS, TCP_IDLE, UDP_IDLE};
use packet::{Headers, Transport, TCP, UDP};

/// Fragmented datagrams whose first fragment passed, kept this long (Linux's reassembly
/// timeout) so their other fragments pass too.
pub const FRAGMENT_IDLE: u32 = 30;
/// Most such datagrams remembered at once.
pub const MAX_FRAGMENTED: usize = 4096;

/// A fragmented datagram: protocol, source, destination, identification.
type DatagramKey = (u8, IpAddr, IpAddr, u32);

use super::lpm::PrefixTable;

/// The site name drops from a source no peer carries are counted under.
pub const UNKNOWN_SITE: &str = "-";

/// Prefixes as (network, mask) pairs, per family.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Nets {
    v4: Vec<(u32, u32)>,
    v6: Vec<(u128, u128)>,
}

impl Nets {
    fn push(&mut self, p: IpNetwork) {
        match p {
            IpNetwork::V4(n) => {
                let mask = u32::from(n.mask());
                self.v4.push((u32::from(n.ip()) & mask, mask));
            }
            IpNetwork::V6(n) => {
                let mask = u128::from(n.mask());
                self.v6.push((u128::from(n.ip()) & mask, mask));
            }
        }
    }

    fn contains(&self, a: Addr) -> bool {
        match a {
            Addr::V4(a) => self.v4.iter().any(|(net, mask)| a & mask == *net),
            Addr::V6(a) => self.v6.iter().any(|(net, mask)| a & mask == *net),
        }
    }
}

/// An address as the rules compare it.
#[derive(Debug, Clone, Copy)]
enum Addr {
    V4(u32),
    V6(u128),
}

impl From<IpAddr> for Addr {
    fn from(a: IpAddr) -> Addr {
        match a {
            IpAddr::V4(a) => Addr::V4(a.into()),
            IpAddr::V6(a) => Addr::V6(a.into()),
        }
    }
}

/// A [`Service`] as the rules compare it: a protocol (0: any; [`packet::ICMP`]: ICMP and
/// ICMPv6) and, for TCP and UDP, a destination port range.
#[derive(Debug, Clone, Copy)]
struct Svc {
    proto: u8,
    first: u16,
    last: u16,
}

impl From<Service> for Svc {
    fn from(s: Service) -> Svc {
        let (proto, first, last) = match s {
            Service::Any => (0, 0, u16::MAX),
            Service::Icmp => (packet::ICMP, 0, u16::MAX),
            Service::Tcp { first, last } => (TCP, first, last),
            Service::Udp { first, last } => (UDP, first, last),
        };
        Svc { proto, first, last }
    }
}

/// What the rules read of a packet, computed once per packet.
#[derive(Debug, Clone, Copy)]
struct Facts {
    src: Addr,
    dst: Addr,
    proto: u8,
    icmp: bool,
    /// TCP and UDP: the destination port; `None` for a fragment other than the first.
    port: Option<u16>,
}

impl Facts {
    fn of(h: &Headers) -> Facts {
        Facts {
            src: h.src.into(),
            dst: h.dst.into(),
            proto: h.proto,
            icmp: h.is_icmp(),
            port: h.dst_port(),
        }
    }

    /// Whether `s` covers the packet. A fragment other than the first has no ports: only
    /// services of its protocol without a port range (`tcp`, `udp`) cover it; otherwise it
    /// follows its first fragment (see [`Access::inbound`]).
    fn served_by(&self, s: &Svc) -> bool {
        match s.proto {
            0 => true,
            packet::ICMP => self.icmp,
            proto => {
                proto == self.proto
                    && match self.port {
                        Some(port) => s.first <= port && port <= s.last,
                        None => (s.first, s.last) == (0, u16::MAX),
                    }
            }
        }
    }
}

#[derive(Debug, Clone)]
struct Rule {
    action: Action,
    /// Sites (indexes in `Filter::sites`) whose peers' packets match.
    from_sites: Vec<u16>,
    from: Nets,
    to: Nets,
    services: Vec<Svc>,
}

/// What decides a packet's fate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Allow,
    /// Refused by the rule at this index, or by the default (`rules.len()`).
    Deny(usize),
}

/// A map's access policy, compiled for the packet path.
#[derive(Debug, Clone)]
pub struct Filter {
    /// Allows everything (no policy): the packet path skips all the rest.
    open: bool,
    default: Action,
    rules: Vec<Rule>,
    /// Source address -> index in `sites` of the peer site carrying it.
    site_of: PrefixTable<u16>,
    /// Peer sites; 0 is [`UNKNOWN_SITE`].
    sites: Vec<String>,
    /// Drop reasons: the rules' names, then the default's, then malformed packets'.
    reasons: Vec<String>,
    /// What it was compiled from, to recompile only when that changes.
    inputs: Inputs,
}

type Inputs = (
    AccessPolicy,
    Vec<(String, Vec<IpNetwork>)>,
    Option<Ipv4Addr>,
);

impl Default for Filter {
    fn default() -> Self {
        Filter::allow_all()
    }
}

impl Filter {
    /// No policy: every packet passes.
    pub fn allow_all() -> Filter {
        Filter::compile(&AccessPolicy::default(), &[], None)
    }

    /// `map.access` with the sites of `map.peers`; the node's own overlay address is a
    /// destination of the rules naming its site.
    pub fn for_map(map: &NetworkMap) -> Filter {
        let peers: Vec<(String, Vec<IpNetwork>)> = map
            .peers
            .values()
            .map(|p| (p.site.clone(), p.allowed_ips.clone()))
            .collect();
        Filter::compile(&map.access, &peers, Some(map.node.overlay_ip))
    }

    /// Whether `map` would compile to this filter (so it need not be compiled again).
    pub fn is_for(&self, map: &NetworkMap) -> bool {
        let (policy, peers, own) = &self.inputs;
        *policy == map.access
            && *own == Some(map.node.overlay_ip)
            && peers.len() == map.peers.len()
            && peers
                .iter()
                .zip(map.peers.values())
                .all(|((site, ips), p)| *site == p.site && *ips == p.allowed_ips)
    }

    /// Compiles `policy` for a node whose peers are `peers` (site, allowed IPs) and whose
    /// overlay address is `own`.
    pub fn compile(
        policy: &AccessPolicy,
        peers: &[(String, Vec<IpNetwork>)],
        own: Option<Ipv4Addr>,
    ) -> Filter {
        let mut sites = vec![UNKNOWN_SITE.to_string()];
        let index = |sites: &mut Vec<String>, name: &str| -> u16 {
            match sites.iter().position(|s| s == name) {
                Some(i) => i as u16,
                None => {
                    sites.push(name.to_string());
                    (sites.len() - 1) as u16
                }
            }
        };
        let mut site_of = PrefixTable::new();
        for (site, ips) in peers {
            let i = index(&mut sites, site);
            for p in ips {
                site_of.insert(*p, i);
            }
        }
        let rules = policy
            .rules
            .iter()
            .map(|r| {
                let mut from = Nets::default();
                let mut from_sites = Vec::new();
                for s in &r.from {
                    match s {
                        Source::Site(name) => from_sites.push(index(&mut sites, name)),
                        Source::Prefix(p) => from.push(*p),
                    }
                }
                let mut to = Nets::default();
                for p in &r.to {
                    to.push(*p);
                }
                if let (true, Some(own)) = (r.to_node, own) {
                    to.push(IpNetwork::V4(own.into()));
                }
                Rule {
                    action: r.action,
                    from_sites,
                    from,
                    to,
                    services: r.services.iter().map(|s| Svc::from(*s)).collect(),
                }
            })
            .collect();
        let mut reasons: Vec<String> = policy.rules.iter().map(|r| r.name.clone()).collect();
        reasons.push(DEFAULT_REASON.into());
        reasons.push(MALFORMED_REASON.into());
        Filter {
            open: policy.allows_all(),
            default: policy.default,
            rules,
            site_of,
            sites,
            reasons,
            inputs: (policy.clone(), peers.to_vec(), own),
        }
    }

    pub fn allows_all(&self) -> bool {
        self.open
    }

    /// The policy this filter was compiled from.
    pub fn policy(&self) -> &AccessPolicy {
        &self.inputs.0
    }

    pub fn rule_count(&self) -> usize {
        self.rules.len()
    }

    /// The index in `sites` of the peer site carrying `src` (0: none).
    fn site(&self, src: IpAddr) -> u16 {
        self.site_of.lookup(src).copied().unwrap_or(0)
    }

    /// What the rules and the default make of a packet with headers `h`.
    pub fn verdict(&self, h: &Headers) -> Verdict {
        let f = Facts::of(h);
        let mut site = None;
        for (i, r) in self.rules.iter().enumerate() {
            if !r.to.contains(f.dst) || !r.services.iter().any(|s| f.served_by(s)) {
                continue;
            }
            let by_site = !r.from_sites.is_empty() && {
                let s = *site.get_or_insert_with(|| self.site(h.src));
                r.from_sites.contains(&s)
            };
            if by_site || r.from.contains(f.src) {
                return match r.action {
                    Action::Allow => Verdict::Allow,
                    Action::Deny => Verdict::Deny(i),
                };
            }
        }
        match self.default {
            Action::Allow => Verdict::Allow,
            Action::Deny => Verdict::Deny(self.rules.len()),
        }
    }
}

/// What the access policy did, for metrics and the coordinator.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AccessReport {
    /// Packets dropped since the agent started, by peer site and reason.
    pub drops: Vec<AccessDrop>,
    /// Flows tracked now, and flows left untracked because the table was full.
    pub flows: usize,
    pub untracked: u64,
    /// Rules in force.
    pub rules: usize,
}

/// The policy on the packet path: the filter, the flows this node sent, the drop counts.
#[derive(Debug)]
pub struct Access {
    /// `filter.allows_all()`, kept here so the packet path with no policy reads one byte.
    open: bool,
    filter: std::sync::Arc<Filter>,
    flows: Flows,
    /// Fragmented datagrams whose first fragment passed.
    fragmented: Option<Flows<DatagramKey>>,
    /// What recent flows' packets got, so the next ones of each skip the work.
    recent: cache::Cache,
    /// Seconds since `epoch` (the first tick).
    now: u32,
    epoch: Option<Instant>,
    /// Drops under the current filter: `[site * reasons + reason]`.
    counts: Vec<u64>,
    /// Drops under earlier filters, by (site, reason).
    earlier: BTreeMap<(String, String), u64>,
    changed: bool,
}

impl Default for Access {
    /// No policy: every packet passes.
    fn default() -> Self {
        Access {
            open: true,
            filter: Default::default(),
            flows: Flows::default(),
            fragmented: None,
            recent: Default::default(),
            now: 0,
            epoch: None,
            counts: Vec::new(),
            earlier: BTreeMap::new(),
            changed: false,
        }
    }
}

impl Access {
    /// Puts `filter` in force. Counts so far are kept under their site and reason names;
    /// the flows stay (they do not depend on the policy).
    pub fn set_filter(&mut self, filter: std::sync::Arc<Filter>) {
        self.fold_counts();
        self.counts = vec![0; filter.sites.len() * filter.reasons.len()];
        self.open = filter.open;
        self.filter = filter;
        self.recent.clear();
        self.changed = true;
    }

    pub fn filter(&self) -> &Filter {
        &self.filter
    }

    /// Moves the clock to `now` (called every few tens of milliseconds; seconds suffice).
    pub fn tick(&mut self, now: Instant) {
        let epoch = *self.epoch.get_or_insert(now);
        self.now =
            u32::try_from(now.saturating_duration_since(epoch).as_secs()).unwrap_or(u32::MAX);
    }

    /// A packet this node sends into a tunnel: remembered, so its replies pass.
    #[inline]
    pub fn outbound(&mut self, packet: &[u8]) {
        if !self.open {
            self.track(packet);
        }
    }

    fn track(&mut self, packet: &[u8]) {
        let Some(h) = packet::parse(packet) else {
            return;
        };
        let flow = match h.transport {
            Transport::Ports { src, dst } => FlowKey {
                proto: h.proto,
                local: h.src,
                remote: h.dst,
                local_port: src,
                remote_port: dst,
            },
            Transport::Icmp { .. } => match packet::echo_id(packet, &h, true) {
                Some(id) => FlowKey {
                    proto: h.proto,
                    local: h.src,
                    remote: h.dst,
                    local_port: id,
                    remote_port: 0,
                },
                None => return,
            },
            Transport::Fragment | Transport::Other => return,
        };
        let idle = match h.proto {
            TCP => TCP_IDLE,
            UDP => UDP_IDLE,
            _ => ICMP_IDLE,
        };
        // Once a second per flow is enough to keep it alive.
        let second = self.now.saturating_add(1);
        if self
            .recent
            .get(&flow)
            .is_some_and(|e| e.refreshed == second)
        {
            return;
        }
        let until = self.flows.sent(flow, self.now, idle);
        let e = self.recent.entry(flow);
        e.refreshed = second;
        e.reply_until = until.unwrap_or(0);
    }

    /// A packet decrypted from a tunnel (its source already checked against the peer):
    /// whether it may be delivered. A refused packet is counted and logged at TRACE.
    #[inline]
    pub fn inbound(&mut self, packet: &[u8]) -> bool {
        self.open || packet.is_empty() || self.judge(packet)
    }

    fn judge(&mut self, packet: &[u8]) -> bool {
        let Some(h) = packet::parse(packet) else {
            let reason = self.filter.reasons.len() - 1;
            let src = source_of(packet);
            let site = src.map_or(0, |s| self.filter.site(s));
            tracing::trace!(src = ?src, len = packet.len(), "access policy: unreadable packet dropped");
            self.count(site, reason);
            return false;
        };
        // A flow's packets after its first: what the first got (TCP and UDP only; fragments
        // take the full path, which remembers their datagram).
        let flow = match h.transport {
            Transport::Ports { src, dst } if h.fragment.is_none() => Some(FlowKey {
                proto: h.proto,
                local: h.dst,
                remote: h.src,
                local_port: dst,
                remote_port: src,
            }),
            _ => None,
        };
        if let Some(e) = flow.and_then(|f| self.recent.get(&f)) {
            if e.allowed || e.reply_until > self.now {
                return true;
            }
        }
        let pass = match self.filter.verdict(&h) {
            Verdict::Allow => {
                if let Some(f) = flow {
                    self.recent.entry(f).allowed = true;
                }
                Ok(())
            }
            Verdict::Deny(reason) => {
                let later_fragment = h.fragment.filter(|f| !f.first).is_some_and(|f| {
                    self.fragmented
                        .as_ref()
                        .is_some_and(|d| d.has(&(h.proto, h.src, h.dst, f.id), self.now))
                });
                if later_fragment || self.answers_own_flow(packet, &h) {
                    if let Some(until) = flow.and_then(|f| self.flows.until(&f, self.now)) {
                        self.recent
                            .entry(flow.expect("a flow has a key"))
                            .reply_until = until;
                    }
                    Ok(())
                } else {
                    Err(reason)
                }
            }
        };
        let reason = match pass {
            Ok(()) => {
                if let Some(f) = h.fragment.filter(|f| f.first) {
                    // The rest of the datagram follows its first fragment.
                    self.fragmented
                        .get_or_insert_with(|| Flows::with_capacity(MAX_FRAGMENTED))
                        .sent((h.proto, h.src, h.dst, f.id), self.now, FRAGMENT_IDLE);
                }
                return true;
            }
            Err(reason) => reason,
        };
        let site = self.filter.site(h.src);
        tracing::trace!(
            src = %h.src,
            dst = %h.dst,
            proto = h.proto,
            port = ?h.dst_port(),
            site = %self.filter.sites[usize::from(site)],
            reason = %self.filter.reasons[reason],
            "access policy: dropped"
        );
        self.count(site, reason);
        false
    }

    /// Whether a packet is a reply to a flow this node sent, or an ICMP error about one.
    fn answers_own_flow(&self, packet: &[u8], h: &Headers) -> bool {
        let reply = |proto, local, remote, local_port, remote_port| {
            self.flows.has(
                &FlowKey {
                    proto,
                    local,
                    remote,
                    local_port,
                    remote_port,
                },
                self.now,
            )
        };
        match h.transport {
            Transport::Ports { src, dst } => reply(h.proto, h.dst, h.src, dst, src),
            Transport::Icmp { .. } => {
                if let Some(id) = packet::echo_id(packet, h, false) {
                    return reply(h.proto, h.dst, h.src, id, 0);
                }
                if !packet::is_icmp_error(h) {
                    return false;
                }
                // The quoted packet is one this node sent: from the host the error is for.
                let Some((inner, q)) = packet::quoted(packet, h) else {
                    return false;
                };
                if q.src != h.dst {
                    return false;
                }
                match q.transport {
                    Transport::Ports { src, dst } => reply(q.proto, q.src, q.dst, src, dst),
                    Transport::Icmp { .. } => packet::echo_id(inner, &q, true)
                        .is_some_and(|id| reply(q.proto, q.src, q.dst, id, 0)),
                    Transport::Fragment | Transport::Other => false,
                }
            }
            Transport::Fragment | Transport::Other => false,
        }
    }

    fn count(&mut self, site: u16, reason: usize) {
        let at = usize::from(site) * self.filter.reasons.len() + reason;
        if let Some(c) = self.counts.get_mut(at) {
            *c += 1;
            self.changed = true;
        }
    }

    fn fold_counts(&mut self) {
        let n = self.filter.reasons.len();
        for (at, count) in self.counts.iter().enumerate().filter(|(_, c)| **c > 0) {
            let (site, reason) = (&self.filter.sites[at / n], &self.filter.reasons[at % n]);
            *self
                .earlier
                .entry((site.clone(), reason.clone()))
                .or_default() += count;
        }
        self.counts.clear();
    }

    /// The report, if anything changed since the last one was taken.
    pub fn take_report(&mut self) -> Option<AccessReport> {
        if !std::mem::take(&mut self.changed) {
            return None;
        }
        Some(self.report())
    }

    /// Drops so far (under every filter), flows and rules now.
    pub fn report(&self) -> AccessReport {
        let mut all = self.earlier.clone();
        let n = self.filter.reasons.len();
        for (at, count) in self.counts.iter().enumerate().filter(|(_, c)| **c > 0) {
            let key = (
                self.filter.sites[at / n].clone(),
                self.filter.reasons[at % n].clone(),
            );
            *all.entry(key).or_default() += count;
        }
        AccessReport {
            drops: all
                .into_iter()
                .map(|((site, reason), packets)| AccessDrop {
                    site,
                    reason,
                    packets,
                })
                .collect(),
            flows: self.flows.len(),
            untracked: self.flows.untracked,
            rules: self.filter.rules.len(),
        }
    }
}

/// The source address of a packet whose headers could not be read in full.
fn source_of(packet: &[u8]) -> Option<IpAddr> {
    match packet.first()? >> 4 {
        4 => Some(IpAddr::from(<[u8; 4]>::try_from(packet.get(12..16)?).ok()?)),
        6 => Some(IpAddr::from(<[u8; 16]>::try_from(packet.get(8..24)?).ok()?)),
        _ => None,
    }
}

#[cfg(test)]
mod tests;
