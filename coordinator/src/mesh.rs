//! The coordinator's core: the registry of nodes, tokens and revocations, and the network
//! map each node gets. A pure state machine: every method takes `now` (Unix seconds) and
//! returns the store operations that persist its change; it does no IO and reads no clock.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Duration;

use ipnetwork::{IpNetwork, Ipv4Network};
use strait_pki::token::{self, Grant, JoinToken, TokenBook, TokenError, TokenRecord};
use strait_pki::{Fingerprint, Identity, Role};
use strait_proto::access::AccessPolicy;
use strait_proto::map::{MapDelta, NetworkMap, PeerKind, PeerView, RouteView, SelfView};
use strait_proto::msg::{
    Endpoint, EndpointKind, ErrorCode, GraphNode, GraphSite, GraphView, LinkInfo, MeshStatus,
    NodeInfo, PeerLink, Refusal, Registered, Registration, RouteInfo, SiteInfo,
};

use crate::config::{Config, SiteConfig};
use crate::{overlay, policy};

mod access;
mod changes;
pub use crate::records::{
    IssuedCert, NodeKey, NodeRecord, Persisted, Presence, Revocation, StoreOp,
};
pub use changes::Changes;

/// Two nodes with a tunnel between them, both online.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbePair {
    pub a: NodeKey,
    pub b: NodeKey,
    pub a_id: String,
    pub b_id: String,
    pub a_overlay: Ipv4Addr,
    pub b_overlay: Ipv4Addr,
}

/// Why the core refused something. Each maps to a wire error code.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CoreError {
    #[error("site {0:?} is not declared in the coordinator config; add a [[sites]] entry or fix the node's site")]
    UnknownSite(String),
    #[error(transparent)]
    Token(#[from] TokenError),
    #[error("no node {0:?}; `straitctl nodes` lists them")]
    NoSuchNode(String),
    #[error("node name {name:?} exists in several sites ({sites}); write it as <site>/{name}")]
    AmbiguousNode { name: String, sites: String },
    #[error("the overlay CIDR {0} is exhausted; configure a larger overlay-cidr")]
    OverlayExhausted(Ipv4Network),
    #[error("{0} may not register as a node: only gateways and members have sites")]
    NotANode(String),
    #[error("WireGuard public key {0:?} is not 32 bytes of base64")]
    BadPublicKey(String),
    #[error("{a} and {b} have no tunnel between them (members reach other sites through their gateway); probe two gateways, or nodes of full-mesh sites")]
    NoTunnel { a: String, b: String },
    #[error("node {0} is offline; `straitctl nodes` shows when it was last seen")]
    Offline(String),
    #[error("WireGuard public key {key} already belongs to {owner}; every node needs its own key: remove wg.key from this node's state directory so a new one is made (or, if this machine replaces {owner}, `straitctl revoke {owner}` first)")]
    KeyInUse { key: String, owner: String },
    #[error("node name {node} belongs to {holder}; a name belongs to one identity: choose another node name, or if this machine replaces it, `straitctl revoke {node}` first")]
    NameTaken { node: String, holder: String },
}

impl CoreError {
    pub fn code(&self) -> ErrorCode {
        match self {
            CoreError::Token(_) => ErrorCode::InvalidToken,
            CoreError::NoSuchNode(_) => ErrorCode::NotFound,
            CoreError::OverlayExhausted(_) => ErrorCode::Internal,
            CoreError::NotANode(_) | CoreError::KeyInUse { .. } | CoreError::NameTaken { .. } => {
                ErrorCode::PermissionDenied
            }
            CoreError::Offline(_) => ErrorCode::Unavailable,
            CoreError::UnknownSite(_)
            | CoreError::AmbiguousNode { .. }
            | CoreError::BadPublicKey(_)
            | CoreError::NoTunnel { .. } => ErrorCode::BadRequest,
        }
    }
}

/// The registry and its maps.
#[derive(Debug)]
pub struct Mesh {
    config: Arc<Config>,
    nodes: BTreeMap<NodeKey, NodeRecord>,
    tokens: TokenBook,
    revoked: BTreeMap<String, Revocation>,
    issued: BTreeMap<String, IssuedCert>,
    version: u64,
    views: Arc<Views>,
    /// The access policy (`[policy]`, or the last one reloaded), and what nodes dropped.
    access: access::AccessState,
}

impl Mesh {
    pub fn new(config: Arc<Config>, persisted: Persisted) -> Mesh {
        let mut tokens = TokenBook::default();
        for t in persisted.tokens {
            tokens.insert(t);
        }
        let mut mesh = Mesh {
            views: Arc::new(Views::default()),
            nodes: persisted.nodes.into_iter().map(|n| (n.key(), n)).collect(),
            tokens,
            revoked: persisted
                .revocations
                .into_iter()
                .map(|r| (r.serial.clone(), r))
                .collect(),
            issued: persisted
                .issued
                .into_iter()
                .map(|c| (c.serial.clone(), c))
                .collect(),
            access: access::AccessState::new(&config, persisted.version),
            version: persisted.version,
            config,
        };
        mesh.rebuild_views();
        mesh
    }

    pub fn version(&self) -> u64 {
        self.version
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn node(&self, key: &NodeKey) -> Option<&NodeRecord> {
        self.nodes.get(key)
    }

    fn bump(&mut self, ops: &mut Vec<StoreOp>) {
        self.version += 1;
        ops.push(StoreOp::SetVersion(self.version));
        self.rebuild_views();
    }

    fn site_config(&self, site: &str) -> Result<&SiteConfig, CoreError> {
        self.config
            .site(site)
            .ok_or_else(|| CoreError::UnknownSite(site.to_string()))
    }

    // ---- tokens and enrollment ----

    /// Creates a join token for a declared site.
    pub fn create_token(
        &mut self,
        site: &str,
        role: Role,
        ttl: Duration,
        now: u64,
        ca: Fingerprint,
        random: [u8; 22],
    ) -> Result<(JoinToken, TokenRecord, Vec<StoreOp>), CoreError> {
        self.site_config(site)?;
        let (token, record) = token::create(site, role, ttl, now, ca, random)?;
        self.tokens.insert(record.clone());
        Ok((token, record.clone(), vec![StoreOp::PutToken(record)]))
    }

    /// Checks an enrollment of node `name` without consuming the token. A name belongs to
    /// one identity: it is refused while a node of another role is registered under it, or
    /// while a certificate for it is live (neither expired nor revoked), until `straitctl
    /// revoke`. A node whose certificates all expired may enroll again in its own role.
    pub fn check_enrollment(
        &self,
        token: &JoinToken,
        site: &str,
        name: &str,
        role: Role,
        now: u64,
    ) -> Result<Grant, CoreError> {
        self.site_config(site)?;
        let grant = self.tokens.check(token, site, role, now)?;
        if let Some(holder) = self.name_holder(site, name, role, now) {
            return Err(CoreError::NameTaken {
                node: format!("{site}/{name}"),
                holder,
            });
        }
        Ok(grant)
    }

    /// Who holds node name `site/name` against an enrollment as `role`, if anyone.
    fn name_holder(&self, site: &str, name: &str, role: Role, now: u64) -> Option<String> {
        let live = |serial: &str, not_after: u64| not_after > now && !self.is_revoked(serial);
        if let Some(n) = self.nodes.get(&(site.to_string(), name.to_string())) {
            if n.role != role || live(&n.cert_serial, n.cert_not_after) {
                return Some(format!("the registered {} {}", n.role, n.id()));
            }
        }
        self.issued
            .values()
            .find(|c| c.site == site && c.name == name && live(&c.serial, c.not_after))
            .map(|c| {
                format!(
                    "the node enrolled with certificate serial {} (valid until {})",
                    c.serial,
                    humantime::format_rfc3339_seconds(
                        std::time::UNIX_EPOCH + Duration::from_secs(c.not_after)
                    )
                )
            })
    }

    /// Consumes the token and records the issued certificate.
    pub fn complete_enrollment(
        &mut self,
        token: &JoinToken,
        site: &str,
        role: Role,
        cert: IssuedCert,
        now: u64,
    ) -> Result<Vec<StoreOp>, CoreError> {
        self.check_enrollment(token, site, &cert.name, role, now)?;
        self.tokens.redeem(token, site, role, &cert.name, now)?;
        let record = self
            .tokens
            .get(token.id())
            .cloned()
            .ok_or_else(|| TokenError::Unknown {
                id: token.id().to_string(),
            })?;
        Ok(vec![StoreOp::PutToken(record), self.record_issued(cert)])
    }

    /// Records a certificate issued by renewal.
    pub fn record_issued(&mut self, cert: IssuedCert) -> StoreOp {
        self.issued.insert(cert.serial.clone(), cert.clone());
        StoreOp::PutIssued(cert)
    }

    pub fn is_revoked(&self, serial: &str) -> bool {
        self.revoked.contains_key(serial)
    }

    // ---- registration and liveness ----

    /// Registers (or re-registers) the node named by `identity`.
    pub fn register(
        &mut self,
        identity: &Identity,
        reg: &Registration,
        cert_serial: &str,
        cert_not_after: u64,
        now: u64,
    ) -> Result<(Registered, Vec<StoreOp>), CoreError> {
        let site = identity
            .site()
            .ok_or_else(|| CoreError::NotANode(identity.to_string()))?
            .to_string();
        let site_cfg = self.site_config(&site)?.clone();
        check_wg_key(&reg.wg_public_key)?;
        let key: NodeKey = (site.clone(), identity.name().to_string());
        if let Some(existing) = self.nodes.get(&key) {
            check_same_role(existing, identity.role())?;
        }
        check_key_free(&self.keys_in_use(&key), &reg.wg_public_key)?;
        let claimed: Vec<policy::Claimed<'_>> = self
            .nodes
            .values()
            .filter(|n| n.site != site)
            .flat_map(|n| {
                n.accepted.iter().map(|p| policy::Claimed {
                    prefix: *p,
                    site: &n.site,
                    node: &n.name,
                })
            })
            .collect();
        let external: Vec<policy::External<'_>> = self
            .config
            .external_peers
            .iter()
            .flat_map(|e| {
                e.prefixes.iter().map(|p| policy::External {
                    prefix: *p,
                    site: &e.site,
                    node: &e.name,
                })
            })
            .collect();
        let (accepted, refused) = policy::check(
            &site_cfg,
            &self.config.sites,
            &claimed,
            &external,
            self.config.overlay_cidr,
            &reg.prefixes,
        );
        let overlay_ip = match self.nodes.get(&key) {
            Some(existing) => existing.overlay_ip,
            None => {
                let IpNetwork::V4(cidr) = self.config.overlay_cidr else {
                    unreachable!("config validation refuses an IPv6 overlay")
                };
                let used: BTreeSet<Ipv4Addr> = self
                    .nodes
                    .values()
                    .map(|n| n.overlay_ip)
                    .chain(
                        self.config
                            .external_peers
                            .iter()
                            .filter_map(|e| e.overlay_ip),
                    )
                    .collect();
                overlay::allocate(cidr, &used).ok_or(CoreError::OverlayExhausted(cidr))?
            }
        };
        let record = NodeRecord {
            site: site.clone(),
            name: identity.name().to_string(),
            role: identity.role(),
            overlay_ip,
            wg_public_key: reg.wg_public_key.clone(),
            endpoints: reg.endpoints.clone(),
            advertised: reg.prefixes.clone(),
            accepted,
            refused: refused.clone(),
            route_conflicts: self
                .nodes
                .get(&key)
                .map(|n| n.route_conflicts.clone())
                .unwrap_or_default(),
            agent_version: reg.agent_version.clone(),
            last_seen: now,
            online: true,
            cert_serial: cert_serial.to_string(),
            cert_not_after,
            map_version: self.nodes.get(&key).map(|n| n.map_version).unwrap_or(0),
            // A rotation in progress is announced again on the new session (an agent
            // that restarted has dropped the key it announced).
            next_wg_public_key: None,
            links: Vec::new(),
            throughput: self
                .nodes
                .get(&key)
                .map(|n| n.throughput.clone())
                .unwrap_or_default(),
        };
        let mut ops = vec![StoreOp::PutNode(record.clone())];
        self.nodes.insert(key, record);
        self.bump(&mut ops);
        Ok((
            Registered {
                overlay_ip,
                refused,
            },
            ops,
        ))
    }

    /// The WireGuard public keys held by every registered node but `except` and by every
    /// external peer, each with its holder's id (`site/node`, `external/<name>`). A
    /// revoked node leaves the registry, so its key is free again.
    pub fn keys_in_use(&self, except: &NodeKey) -> BTreeMap<&str, String> {
        // A key a node announced for its next rotation is taken too.
        let nodes = self
            .nodes
            .values()
            .filter(|n| &n.key() != except)
            .flat_map(|n| {
                let current = Some(n.wg_public_key.as_str()).filter(|k| !k.is_empty());
                current
                    .into_iter()
                    .chain(n.next_wg_public_key.as_deref())
                    .map(|k| (k, n.id()))
            });
        let external = self.config.external_peers.iter().map(|e| {
            (
                e.public_key.as_str(),
                format!("{}/{}", crate::config::EXTERNAL_SITE, e.name),
            )
        });
        nodes.chain(external).collect()
    }

    /// A heartbeat from a connected node.
    pub fn heartbeat(&mut self, key: &NodeKey, map_version: u64, now: u64) -> Vec<StoreOp> {
        let mut ops = Vec::new();
        let Some(node) = self.nodes.get_mut(key) else {
            return ops;
        };
        node.last_seen = now;
        node.map_version = map_version;
        if !node.online {
            node.online = true;
            ops.push(StoreOp::PutNode(node.clone()));
            self.bump(&mut ops);
        }
        ops
    }

    /// Liveness other coordinators recorded (see [`Presence`]): moves `last_seen` and the
    /// acknowledged map version forward. In memory only; no map change.
    pub fn observe(&mut self, seen: &[Presence]) {
        for p in seen {
            if let Some(node) = self.nodes.get_mut(&(p.site.clone(), p.name.clone())) {
                node.last_seen = node.last_seen.max(p.last_seen);
                node.map_version = node.map_version.max(p.map_version);
            }
        }
    }

    /// Keeps what `old` (the registry this one replaces after a reload from a shared store)
    /// knew but never stored: link reports, throughput, and the latest heartbeats.
    pub fn carry_live(&mut self, old: &Mesh) {
        for (key, node) in self.nodes.iter_mut() {
            if let Some(o) = old.nodes.get(key) {
                node.links = o.links.clone();
                node.throughput = o.throughput.clone();
                node.last_seen = node.last_seen.max(o.last_seen);
                node.map_version = node.map_version.max(o.map_version);
            }
        }
        self.carry_access(old);
    }

    /// Route conflicts a node's data plane reported.
    pub fn report_conflicts(&mut self, key: &NodeKey, conflicts: Vec<Refusal>) -> Vec<StoreOp> {
        match self.nodes.get_mut(key) {
            Some(node) if node.route_conflicts != conflicts => {
                node.route_conflicts = conflicts;
                vec![StoreOp::PutNode(node.clone())]
            }
            _ => Vec::new(),
        }
    }

    /// Key rotation, step 1: `key` announced `next` as its next WireGuard key. It goes into
    /// every peer's map, so peers accept handshakes from it before the node switches.
    pub fn announce_key(&mut self, key: &NodeKey, next: &str) -> Result<Vec<StoreOp>, CoreError> {
        check_wg_key(next)?;
        check_key_free(&self.keys_in_use(key), next)?;
        let Some(node) = self.nodes.get_mut(key) else {
            return Err(CoreError::NoSuchNode(format!("{}/{}", key.0, key.1)));
        };
        if node.wg_public_key == next || node.next_wg_public_key.as_deref() == Some(next) {
            return Ok(Vec::new());
        }
        node.next_wg_public_key = Some(next.to_string());
        let mut ops = vec![StoreOp::PutNode(node.clone())];
        self.bump(&mut ops);
        Ok(ops)
    }

    /// Key rotation, step 2: `key` now uses `wg_key`, which it announced before. A key
    /// that was not announced is refused (peers would not know it).
    pub fn key_in_use(&mut self, key: &NodeKey, wg_key: &str) -> Result<Vec<StoreOp>, CoreError> {
        let Some(node) = self.nodes.get_mut(key) else {
            return Err(CoreError::NoSuchNode(format!("{}/{}", key.0, key.1)));
        };
        if node.wg_public_key == wg_key {
            return Ok(Vec::new());
        }
        if node.next_wg_public_key.as_deref() != Some(wg_key) {
            return Err(CoreError::BadPublicKey(format!(
                "{wg_key} (not the key {} announced)",
                node.id()
            )));
        }
        node.wg_public_key = wg_key.to_string();
        node.next_wg_public_key = None;
        let mut ops = vec![StoreOp::PutNode(node.clone())];
        self.bump(&mut ops);
        Ok(ops)
    }

    /// The agent's view of its tunnels. Live figures only: kept in memory, never stored,
    /// and no map changes.
    pub fn report_links(&mut self, key: &NodeKey, peers: Vec<PeerLink>) {
        if let Some(node) = self.nodes.get_mut(key) {
            node.links = peers;
        }
    }

    /// Two online nodes with a tunnel between them, for a probe from `from` to `to`.
    pub fn probe_pair(&self, from: &str, to: &str) -> Result<ProbePair, CoreError> {
        let a = self.resolve(from)?;
        let b = self.resolve(to)?;
        let get = |k: &NodeKey| {
            self.nodes
                .get(k)
                .ok_or_else(|| CoreError::NoSuchNode(format!("{}/{}", k.0, k.1)))
        };
        let (na, nb) = (get(&a)?, get(&b)?);
        if !self.peers_of(na).iter().any(|p| p.key() == b) {
            return Err(CoreError::NoTunnel {
                a: na.id(),
                b: nb.id(),
            });
        }
        for n in [na, nb] {
            if !n.online {
                return Err(CoreError::Offline(n.id()));
            }
        }
        Ok(ProbePair {
            a_id: na.id(),
            b_id: nb.id(),
            a_overlay: na.overlay_ip,
            b_overlay: nb.overlay_ip,
            a,
            b,
        })
    }

    /// Registered nodes, and how many of them are online.
    pub fn node_counts(&self) -> (usize, usize) {
        let online = self.nodes.values().filter(|n| n.online).count();
        (self.nodes.len(), online)
    }

    /// Every pair of online nodes with a tunnel between them, ordered.
    pub fn tunnel_pairs(&self) -> Vec<(String, String)> {
        let mut pairs = Vec::new();
        for n in self.nodes.values().filter(|n| n.online) {
            for p in self.peers_of(n) {
                if p.online && n.id() < p.id() {
                    pairs.push((n.id(), p.id()));
                }
            }
        }
        pairs.sort();
        pairs
    }

    /// A throughput measured from `a` to `b` (live, not persisted).
    pub fn record_throughput(&mut self, a: &NodeKey, b_id: &str, mbps: f64, at: u64) {
        if let Some(node) = self.nodes.get_mut(a) {
            node.throughput.insert(b_id.to_string(), (mbps, at));
        }
    }

    /// Marks nodes without a recent heartbeat offline (they stay in the maps, flagged).
    pub fn tick(&mut self, now: u64) -> Vec<StoreOp> {
        let timeout = self.config.heartbeat_timeout.as_secs();
        let mut ops = Vec::new();
        let mut changed = false;
        for node in self.nodes.values_mut() {
            if node.online && now.saturating_sub(node.last_seen) > timeout {
                node.online = false;
                ops.push(StoreOp::PutNode(node.clone()));
                changed = true;
            }
        }
        if changed {
            self.bump(&mut ops);
        }
        ops
    }

    // ---- revocation ----

    /// Resolves `site/name` or a unique `name`.
    pub fn resolve(&self, node: &str) -> Result<NodeKey, CoreError> {
        if let Some((site, name)) = node.split_once('/') {
            let key = (site.to_string(), name.to_string());
            return if self.nodes.contains_key(&key)
                || self
                    .issued
                    .values()
                    .any(|c| c.site == site && c.name == name)
            {
                Ok(key)
            } else {
                Err(CoreError::NoSuchNode(node.to_string()))
            };
        }
        let mut sites: BTreeSet<&str> = self
            .nodes
            .values()
            .filter(|n| n.name == node)
            .map(|n| n.site.as_str())
            .collect();
        sites.extend(
            self.issued
                .values()
                .filter(|c| c.name == node)
                .map(|c| c.site.as_str()),
        );
        match sites.len() {
            0 => Err(CoreError::NoSuchNode(node.to_string())),
            1 => Ok((
                sites.into_iter().next().unwrap_or_default().to_string(),
                node.to_string(),
            )),
            _ => Err(CoreError::AmbiguousNode {
                name: node.to_string(),
                sites: sites.into_iter().collect::<Vec<_>>().join(", "),
            }),
        }
    }

    /// Revokes every known certificate of the node and removes it from the registry.
    /// Returns the revoked serials.
    pub fn revoke(&mut self, key: &NodeKey, now: u64) -> (Vec<String>, Vec<StoreOp>) {
        let mut ops = Vec::new();
        let mut serials: BTreeMap<String, u64> = self
            .issued
            .values()
            .filter(|c| c.site == key.0 && c.name == key.1 && c.not_after > now)
            .map(|c| (c.serial.clone(), c.not_after))
            .collect();
        if let Some(node) = self.nodes.remove(key) {
            if !node.cert_serial.is_empty() {
                serials.insert(node.cert_serial.clone(), node.cert_not_after);
            }
            ops.push(StoreOp::DeleteNode {
                site: key.0.clone(),
                name: key.1.clone(),
            });
        }
        for (serial, not_after) in &serials {
            let r = Revocation {
                serial: serial.clone(),
                site: key.0.clone(),
                name: key.1.clone(),
                revoked_at: now,
                not_after: *not_after,
            };
            self.revoked.insert(serial.clone(), r.clone());
            ops.push(StoreOp::PutRevocation(r));
        }
        self.bump(&mut ops);
        (serials.into_keys().collect(), ops)
    }

    // ---- maps ----

    fn tunnel_capable(&self, n: &NodeRecord) -> bool {
        n.role == Role::Gateway || self.config.site(&n.site).is_some_and(|s| s.full_mesh)
    }

    /// Which node carries each prefix: among nodes claiming it, online first, then by
    /// name, so a site with two gateways fails over when the first goes offline.
    fn prefix_owners(&self) -> BTreeMap<IpNetwork, &NodeRecord> {
        let mut owners: BTreeMap<IpNetwork, &NodeRecord> = BTreeMap::new();
        for n in self.nodes.values().filter(|n| self.tunnel_capable(n)) {
            for p in &n.accepted {
                let better = match owners.get(p) {
                    None => true,
                    Some(cur) => (!n.online, &n.name) < (!cur.online, &cur.name),
                };
                if better {
                    owners.insert(*p, n);
                }
            }
        }
        owners
    }

    fn peers_of(&self, node: &NodeRecord) -> Vec<&NodeRecord> {
        if !self.tunnel_capable(node) {
            return Vec::new();
        }
        self.nodes
            .values()
            .filter(|n| {
                n.site != node.site && self.tunnel_capable(n) && !n.wg_public_key.is_empty()
            })
            .collect()
    }

    fn site_gateway(&self, site: &str) -> Option<&NodeRecord> {
        self.nodes
            .values()
            .filter(|n| n.site == site && n.role == Role::Gateway)
            .min_by_key(|n| (!n.online, n.name.clone()))
    }

    /// What a node of `site` keeps closed (see [`SelfView::fail_closed`]): every prefix the
    /// configuration gives to another site or an external peer, and the overlay CIDR.
    fn fail_closed(&self, site: &str) -> Vec<IpNetwork> {
        let mut prefixes: Vec<IpNetwork> = self
            .config
            .sites
            .iter()
            .filter(|s| s.name != site)
            .flat_map(|s| s.prefixes.iter().copied())
            .chain(
                self.config
                    .external_peers
                    .iter()
                    .filter(|e| e.site != site)
                    .flat_map(|e| e.prefixes.iter().copied()),
            )
            .chain([self.config.overlay_cidr])
            .collect();
        prefixes.sort();
        prefixes.dedup();
        prefixes
    }

    /// The shared inputs of every node's map at the current version.
    pub fn views(&self) -> Arc<Views> {
        self.views.clone()
    }

    /// Builds the views of the current version. Parts equal to the previous version's are
    /// shared with it (the same `Arc`), so versions that sessions still hold cost only what
    /// changed, and sessions recognise unchanged parts by pointer.
    fn rebuild_views(&mut self) {
        let prev = self.views.clone();
        let owners = self.prefix_owners();
        let peers = self
            .nodes
            .values()
            .filter(|n| self.tunnel_capable(n) && !n.wg_public_key.is_empty())
            .map(|p| {
                let mut allowed = vec![IpNetwork::V4(
                    Ipv4Network::new(p.overlay_ip, 32).expect("/32 is valid"),
                )];
                allowed.extend(
                    p.accepted
                        .iter()
                        .filter(|prefix| owners.get(prefix).map(|o| o.key()) == Some(p.key())),
                );
                let view = PeerView {
                    id: p.id(),
                    site: p.site.clone(),
                    name: p.name.clone(),
                    kind: PeerKind::Agent,
                    role: Some(p.role),
                    wg_public_key: p.wg_public_key.clone(),
                    next_wg_public_key: p.next_wg_public_key.clone(),
                    endpoints: p.endpoints.clone(),
                    allowed_ips: allowed,
                    overlay_ip: Some(p.overlay_ip),
                    online: p.online,
                };
                match prev.peers.binary_search_by(|old| old.id.cmp(&view.id)) {
                    Ok(i) if *prev.peers[i] == view => prev.peers[i].clone(),
                    _ => Arc::new(view),
                }
            })
            .collect::<Vec<_>>();
        let mut peers = peers;
        for ext in &self.config.external_peers {
            let mut allowed: Vec<IpNetwork> = ext
                .overlay_ip
                .and_then(|ip| Ipv4Network::new(ip, 32).ok())
                .map(IpNetwork::V4)
                .into_iter()
                .collect();
            allowed.extend(ext.prefixes.iter().copied());
            peers.push(Arc::new(PeerView {
                id: format!("{}/{}", crate::config::EXTERNAL_SITE, ext.name),
                site: ext.site.clone(),
                name: ext.name.clone(),
                kind: PeerKind::External,
                role: None,
                wg_public_key: ext.public_key.clone(),
                next_wg_public_key: None,
                endpoints: ext
                    .endpoint
                    .map(|address| Endpoint {
                        address,
                        kind: EndpointKind::Public,
                        cost: None,
                    })
                    .into_iter()
                    .collect(),
                allowed_ips: allowed,
                overlay_ip: ext.overlay_ip,
                online: true,
            }));
        }
        // Sessions diff peer lists by merging them in id order.
        peers.sort_by(|a, b| a.id.cmp(&b.id));
        let mut site_routes = BTreeMap::new();
        for site in &self.config.sites {
            let mut routes = BTreeMap::new();
            if let Some(gw) = self.site_gateway(&site.name) {
                if let Some(via_address) = lan_address(gw) {
                    let mut add = |prefix: IpNetwork, remote: &str| {
                        routes.insert(
                            prefix,
                            RouteView {
                                prefix,
                                site: remote.to_string(),
                                via: gw.id(),
                                via_address,
                            },
                        );
                    };
                    for (prefix, owner) in &owners {
                        if owner.site != site.name {
                            add(*prefix, &owner.site);
                        }
                    }
                    for ext in self
                        .config
                        .external_peers
                        .iter()
                        .filter(|e| e.site != site.name)
                    {
                        for prefix in &ext.prefixes {
                            add(*prefix, &ext.site);
                        }
                    }
                    add(self.config.overlay_cidr, "overlay");
                }
            }
            let routes = match prev.site_routes.get(&site.name) {
                Some(old) if **old == routes => old.clone(),
                _ => Arc::new(routes),
            };
            site_routes.insert(site.name.clone(), routes);
        }
        let closed: BTreeMap<&str, Vec<IpNetwork>> = self
            .config
            .sites
            .iter()
            .map(|s| (s.name.as_str(), self.fail_closed(&s.name)))
            .collect();
        let site_access = self.site_access(&prev);
        let nodes = self
            .nodes
            .values()
            .map(|n| {
                let own = SelfView {
                    site: n.site.clone(),
                    name: n.name.clone(),
                    role: n.role,
                    overlay_ip: n.overlay_ip,
                    overlay_cidr: self.config.overlay_cidr,
                    accepted: n.accepted.clone(),
                    refused: n.refused.clone(),
                    next_wg_public_key: n.next_wg_public_key.clone(),
                    fail_closed: closed.get(n.site.as_str()).cloned().unwrap_or_default(),
                };
                let own = match prev.nodes.get(&n.key()) {
                    Some((old, _)) if **old == own => old.clone(),
                    _ => Arc::new(own),
                };
                (n.key(), (own, self.tunnel_capable(n)))
            })
            .collect();
        self.views = Arc::new(Views {
            version: self.version,
            mesh: self.config.mesh.clone(),
            peers,
            nodes,
            site_routes,
            site_access,
        });
    }

    /// The map of the node `key`, or `None` if it is not registered.
    pub fn map_for(&self, key: &NodeKey) -> Option<NetworkMap> {
        Some(self.views.view(key)?.to_map(&self.views.mesh))
    }

    /// A wg-quick style configuration for the external peer `name`: its interface (with a
    /// placeholder for the private key Strait never knows) and one `[Peer]` per gateway of
    /// the other sites.
    pub fn external_peer_config(&self, name: &str) -> Result<String, CoreError> {
        use std::fmt::Write as _;
        let ext = self
            .config
            .external_peers
            .iter()
            .find(|e| e.name == name)
            .ok_or_else(|| CoreError::NoSuchNode(format!("external/{name}")))?;
        let mut s = String::new();
        let _ = writeln!(
            s,
            "# WireGuard configuration for external peer {name} (site {}) of Strait mesh {}.",
            ext.site, self.config.mesh
        );
        let _ = writeln!(
            s,
            "# Strait never knows this device's private key: generate it on the device"
        );
        let _ = writeln!(
            s,
            "# (`wg genkey`), put it below, and give its public key to the coordinator config."
        );
        let _ = writeln!(s, "[Interface]");
        let _ = writeln!(s, "PrivateKey = <this device's private key>");
        if let Some(ep) = ext.endpoint {
            let _ = writeln!(s, "ListenPort = {}", ep.port());
        }
        if let Some(ip) = ext.overlay_ip {
            let _ = writeln!(s, "Address = {ip}/32");
        }
        for p in self
            .views
            .peers
            .iter()
            .filter(|p| p.kind == PeerKind::Agent && p.site != ext.site)
        {
            let _ = writeln!(
                s,
                "\n# {} {}",
                p.role.map(|r| r.as_str()).unwrap_or("node"),
                p.id
            );
            let _ = writeln!(s, "[Peer]");
            let _ = writeln!(s, "PublicKey = {}", p.wg_public_key);
            if let Some(ep) = p
                .endpoints
                .iter()
                .filter(|e| e.kind != EndpointKind::Private)
                .min_by_key(|e| (e.kind != EndpointKind::Interconnect, e.cost.unwrap_or(0)))
            {
                let _ = writeln!(s, "Endpoint = {}", ep.address);
            }
            let allowed: Vec<String> = p.allowed_ips.iter().map(|a| a.to_string()).collect();
            let _ = writeln!(s, "AllowedIPs = {}", allowed.join(", "));
            let _ = writeln!(s, "PersistentKeepalive = 25");
        }
        Ok(s)
    }

    // ---- operator views ----

    pub fn status(&self, pki: &str) -> MeshStatus {
        let sites = self
            .config
            .sites
            .iter()
            .map(|s| {
                let nodes: Vec<&NodeRecord> =
                    self.nodes.values().filter(|n| n.site == s.name).collect();
                SiteInfo {
                    name: s.name.clone(),
                    cloud: s.cloud.clone(),
                    region: s.region.clone(),
                    prefixes: s.prefixes.clone(),
                    full_mesh: s.full_mesh,
                    nodes: nodes.len(),
                    online: nodes.iter().filter(|n| n.online).count(),
                    gateways: nodes.iter().filter(|n| n.role == Role::Gateway).count(),
                }
            })
            .collect();
        MeshStatus {
            mesh: self.config.mesh.clone(),
            map_version: self.version,
            pki: pki.to_string(),
            coordinator_version: env!("CARGO_PKG_VERSION").to_string(),
            nodes_total: self.nodes.len(),
            nodes_online: self.nodes.values().filter(|n| n.online).count(),
            revoked_certificates: self.revoked.len(),
            refused_prefixes: self.nodes.values().map(|n| n.refused.len()).sum(),
            sites,
        }
    }

    pub fn nodes(&self) -> Vec<NodeInfo> {
        self.nodes
            .values()
            .map(|n| NodeInfo {
                site: n.site.clone(),
                name: n.name.clone(),
                role: n.role,
                overlay_ip: n.overlay_ip,
                wg_public_key: n.wg_public_key.clone(),
                next_wg_public_key: n.next_wg_public_key.clone(),
                endpoints: n.endpoints.clone(),
                prefixes: n.accepted.clone(),
                refused: n.refused.clone(),
                route_conflicts: n.route_conflicts.clone(),
                agent_version: n.agent_version.clone(),
                online: n.online,
                last_seen: n.last_seen,
                cert_not_after: n.cert_not_after,
                cert_serial: n.cert_serial.clone(),
                map_version: n.map_version,
            })
            .collect()
    }

    pub fn routes(&self) -> Vec<RouteInfo> {
        let mut out = Vec::new();
        for n in self.nodes.values() {
            let entry = |prefix: String, status: &str, reason: Option<String>| RouteInfo {
                prefix,
                site: n.site.clone(),
                node: n.name.clone(),
                status: status.to_string(),
                reason,
            };
            out.extend(
                n.accepted
                    .iter()
                    .map(|p| entry(p.to_string(), "accepted", None)),
            );
            out.extend(
                n.refused
                    .iter()
                    .map(|r| entry(r.prefix.clone(), "refused", Some(r.reason.clone()))),
            );
            out.extend(
                n.route_conflicts
                    .iter()
                    .map(|r| entry(r.prefix.clone(), "conflict", Some(r.reason.clone()))),
            );
        }
        out
    }

    pub fn links(&self) -> Vec<LinkInfo> {
        let mut links = Vec::new();
        for n in self.nodes.values() {
            for p in self.peers_of(n) {
                if n.id() < p.id() {
                    links.push(link(n, p, "tunnel"));
                }
            }
            if !self.tunnel_capable(n) {
                if let Some(gw) = self.site_gateway(&n.site) {
                    links.push(link(n, gw, "via-gateway"));
                }
            }
        }
        links
    }

    pub fn graph(&self) -> GraphView {
        GraphView {
            mesh: self.config.mesh.clone(),
            sites: self
                .config
                .sites
                .iter()
                .map(|s| GraphSite {
                    name: s.name.clone(),
                    cloud: s.cloud.clone(),
                    region: s.region.clone(),
                    nodes: self
                        .nodes
                        .values()
                        .filter(|n| n.site == s.name)
                        .map(|n| GraphNode {
                            id: n.id(),
                            name: n.name.clone(),
                            role: n.role.to_string(),
                            online: n.online,
                        })
                        .collect(),
                })
                .collect(),
            links: self.links(),
        }
    }
}

/// The inputs of every node's map at one version, shared (behind an `Arc`) by all sessions
/// so each computes its own map and delta without the registry lock.
#[derive(Debug, Default)]
pub struct Views {
    pub version: u64,
    mesh: String,
    /// Every tunnel-capable node with a key, sorted by id.
    peers: Vec<Arc<PeerView>>,
    nodes: BTreeMap<NodeKey, (Arc<SelfView>, bool)>,
    /// The routes a member of each site installs.
    site_routes: BTreeMap<String, Arc<BTreeMap<IpNetwork, RouteView>>>,
    /// The access policy each site's tunnel nodes enforce.
    site_access: BTreeMap<String, Arc<AccessPolicy>>,
}

/// One node's map, sharing its parts with [`Views`].
#[derive(Debug, Clone)]
pub struct NodeView {
    pub version: u64,
    pub node: Arc<SelfView>,
    /// Sorted by id.
    pub peers: Vec<Arc<PeerView>>,
    pub routes: Arc<BTreeMap<IpNetwork, RouteView>>,
    /// What the node lets through from its tunnels (allow-all for nodes without tunnels).
    pub access: Arc<AccessPolicy>,
}

impl Views {
    pub fn mesh(&self) -> &str {
        &self.mesh
    }

    /// The view of node `key`, or `None` if it is not registered.
    pub fn view(&self, key: &NodeKey) -> Option<NodeView> {
        let (node, tunnel) = self.nodes.get(key)?;
        let (peers, routes) = if *tunnel {
            let peers = self
                .peers
                .iter()
                .filter(|p| p.site != key.0)
                .cloned()
                .collect();
            (peers, Arc::new(BTreeMap::new()))
        } else {
            let routes = self.site_routes.get(&key.0).cloned().unwrap_or_default();
            (Vec::new(), routes)
        };
        let access = match self.site_access.get(&key.0) {
            Some(a) if *tunnel => a.clone(),
            _ => Arc::default(),
        };
        Some(NodeView {
            version: self.version,
            node: node.clone(),
            peers,
            routes,
            access,
        })
    }
}

impl NodeView {
    pub fn to_map(&self, mesh: &str) -> NetworkMap {
        NetworkMap {
            version: self.version,
            mesh: mesh.to_string(),
            node: (*self.node).clone(),
            peers: self
                .peers
                .iter()
                .map(|p| (p.id.clone(), (**p).clone()))
                .collect(),
            routes: (*self.routes).clone(),
            access: (*self.access).clone(),
        }
    }

    /// The delta from this view to `next` (a merge of two id-sorted lists; unchanged
    /// entries are recognised by pointer before comparing contents).
    pub fn delta(&self, next: &NodeView) -> MapDelta {
        let mut upsert_peers = Vec::new();
        let mut remove_peers = Vec::new();
        let (mut i, mut j) = (0, 0);
        while i < self.peers.len() || j < next.peers.len() {
            match (self.peers.get(i), next.peers.get(j)) {
                (Some(a), Some(b)) if a.id == b.id => {
                    if !Arc::ptr_eq(a, b) && a != b {
                        upsert_peers.push((**b).clone());
                    }
                    i += 1;
                    j += 1;
                }
                (Some(a), Some(b)) if a.id < b.id => {
                    remove_peers.push(a.id.clone());
                    i += 1;
                }
                (Some(a), None) => {
                    remove_peers.push(a.id.clone());
                    i += 1;
                }
                (_, Some(b)) => {
                    upsert_peers.push((**b).clone());
                    j += 1;
                }
                (None, None) => break,
            }
        }
        let (upsert_routes, remove_routes) =
            if Arc::ptr_eq(&self.routes, &next.routes) || self.routes == next.routes {
                (Vec::new(), Vec::new())
            } else {
                (
                    next.routes
                        .iter()
                        .filter(|(p, r)| self.routes.get(*p) != Some(r))
                        .map(|(_, r)| r.clone())
                        .collect(),
                    self.routes
                        .keys()
                        .filter(|p| !next.routes.contains_key(*p))
                        .copied()
                        .collect(),
                )
            };
        MapDelta {
            from_version: self.version,
            to_version: next.version,
            node: (!Arc::ptr_eq(&self.node, &next.node) && self.node != next.node)
                .then(|| (*next.node).clone()),
            upsert_peers,
            remove_peers,
            upsert_routes,
            remove_routes,
            access: (!Arc::ptr_eq(&self.access, &next.access) && self.access != next.access)
                .then(|| (*next.access).clone()),
        }
    }
}

fn link(a: &NodeRecord, b: &NodeRecord, kind: &str) -> LinkInfo {
    let b_id = b.id();
    let report = a.links.iter().find(|l| l.peer == b_id);
    let active = report.and_then(|r| r.paths.iter().find(|p| p.active));
    let ms = |us: u64| us as f64 / 1000.0;
    // The most recent throughput measured in either direction.
    let throughput = [a.throughput.get(&b_id), b.throughput.get(&a.id())]
        .into_iter()
        .flatten()
        .max_by_key(|(_, at)| *at)
        .copied();
    LinkInfo {
        a: a.id(),
        b: b_id,
        kind: kind.to_string(),
        state: if a.online && b.online { "up" } else { "down" }.to_string(),
        path: active
            .map(|p| format!("{} {}", kind_name(p.kind), p.address))
            .or_else(|| report.and_then(|r| r.endpoint).map(|e| format!("- {e}"))),
        rtt_ms: active.and_then(|p| p.rtt_us).map(ms),
        jitter_ms: active.map(|p| ms(p.jitter_us)),
        loss: active.map(|p| p.loss),
        handshake_age_secs: report.and_then(|r| r.handshake_age_secs),
        tx_bytes: report.map(|r| r.tx_bytes),
        rx_bytes: report.map(|r| r.rx_bytes),
        throughput_mbps: throughput.map(|(mbps, _)| mbps),
        throughput_at: throughput.map(|(_, at)| at),
    }
}

fn kind_name(kind: EndpointKind) -> &'static str {
    match kind {
        EndpointKind::Interconnect => "interconnect",
        EndpointKind::Private => "private",
        EndpointKind::Public => "public",
    }
}

/// The address a member routes through: the gateway's `private` endpoint, else any.
fn lan_address(gw: &NodeRecord) -> Option<IpAddr> {
    gw.endpoints
        .iter()
        .find(|e| e.kind == EndpointKind::Private)
        .or_else(|| gw.endpoints.first())
        .map(|e| e.address.ip())
}

/// Refuses `wanted` if it is among `in_use` (see [`Mesh::keys_in_use`]): the agents'
/// engines key peers by public key, so a node announcing another's key would take over its
/// tunnel.
/// Whether a registration as `role` comes from the identity that holds `existing`'s name:
/// a member certificate naming a gateway (or the reverse) never takes its place.
fn check_same_role(existing: &NodeRecord, role: Role) -> Result<(), CoreError> {
    if existing.role == role {
        return Ok(());
    }
    Err(CoreError::NameTaken {
        node: existing.id(),
        holder: format!(
            "the registered {} {} (this certificate names a {role})",
            existing.role,
            existing.id()
        ),
    })
}

pub fn check_key_free(in_use: &BTreeMap<&str, String>, wanted: &str) -> Result<(), CoreError> {
    match in_use.get(wanted) {
        Some(owner) => Err(CoreError::KeyInUse {
            key: wanted.to_string(),
            owner: owner.clone(),
        }),
        None => Ok(()),
    }
}

fn check_wg_key(key: &str) -> Result<(), CoreError> {
    use base64::Engine;
    match base64::engine::general_purpose::STANDARD.decode(key) {
        Ok(bytes) if bytes.len() == 32 => Ok(()),
        _ => Err(CoreError::BadPublicKey(key.chars().take(60).collect())),
    }
}

#[cfg(test)]
mod tests;
