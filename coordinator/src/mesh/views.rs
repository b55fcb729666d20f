//! Maps: the shared inputs of every node's map at one version ([`Views`]), one node's part
//! of them ([`NodeView`]), and the delta between two of those.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

use ipnetwork::{IpNetwork, Ipv4Network};
use strait_pki::Role;
use strait_proto::access::AccessPolicy;
use strait_proto::map::{
    LocalGateway, MapDelta, NetworkMap, PeerKind, PeerView, RouteView, SelfView,
};
use strait_proto::msg::EndpointKind;

use super::{Mesh, NodeKey, NodeRecord};

impl Mesh {
    pub(super) fn tunnel_capable(&self, n: &NodeRecord) -> bool {
        n.role == Role::Gateway || self.config.site(&n.site).is_some_and(|s| s.full_mesh)
    }

    /// Which node carries each prefix, by its mesh address (global for translated sites):
    /// among nodes claiming it, online first, then by name, so a site with two gateways
    /// fails over when the first goes offline.
    pub(super) fn prefix_owners(&self) -> BTreeMap<IpNetwork, &NodeRecord> {
        let mut owners: BTreeMap<IpNetwork, &NodeRecord> = BTreeMap::new();
        for n in self.nodes.values().filter(|n| self.tunnel_capable(n)) {
            for p in &n.accepted {
                let p = self.globals.to_mesh(&n.site, *p);
                let better = match owners.get(&p) {
                    None => true,
                    Some(cur) => (!n.online, &n.name) < (!cur.online, &cur.name),
                };
                if better {
                    owners.insert(p, n);
                }
            }
        }
        owners
    }

    pub(super) fn peers_of(&self, node: &NodeRecord) -> Vec<&NodeRecord> {
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

    pub(super) fn site_gateway(&self, site: &str) -> Option<&NodeRecord> {
        self.nodes
            .values()
            .filter(|n| n.site == site && n.role == Role::Gateway)
            .min_by_key(|n| (!n.online, n.name.clone()))
    }

    /// Every gateway of `site` with a key and an address, for its members (see
    /// [`SelfView::local_gateways`]), sorted by id.
    pub(super) fn local_gateways(&self, site: &str) -> Vec<LocalGateway> {
        let mut out: Vec<LocalGateway> = self
            .nodes
            .values()
            .filter(|n| n.site == site && n.role == Role::Gateway && !n.wg_public_key.is_empty())
            .filter_map(|n| {
                Some(LocalGateway {
                    id: n.id(),
                    wg_public_key: n.wg_public_key.clone(),
                    address: lan_endpoint(n)?,
                    priority: n.priority,
                })
            })
            .collect();
        out.sort();
        out
    }

    /// What a node of `site` keeps closed (see [`SelfView::fail_closed`]): every prefix the
    /// configuration gives to another site (its mesh addresses) or an external peer, and
    /// the overlay CIDR; never one inside the site's own address space (see
    /// [`Mesh::shadowed`]); and the site's own global prefixes, if it has some.
    pub(super) fn fail_closed(&self, site: &str) -> Vec<IpNetwork> {
        let mut prefixes: Vec<IpNetwork> = self
            .config
            .sites
            .iter()
            .filter(|s| s.name != site)
            .flat_map(|s| self.globals.mesh_prefixes(s))
            .chain(
                self.config
                    .external_peers
                    .iter()
                    .filter(|e| e.site != site)
                    .flat_map(|e| e.prefixes.iter().copied()),
            )
            .chain([self.config.overlay_cidr])
            .filter(|p| !self.shadowed(site, *p))
            // The site's own global prefixes: reached only through its translation, so
            // if that is missing they are refused rather than routed by the main table.
            .chain(self.globals.pairs(site).iter().map(|t| t.global))
            .collect();
        prefixes.sort();
        prefixes.dedup();
        prefixes
    }

    /// Whether a mesh prefix lies in `site`'s own local address space, which happens only
    /// when `site` is translated and another site that overlaps it is not: its hosts use
    /// those addresses locally, so the site cannot reach them (nor accept packets from
    /// them), and no route, fail-closed route or peer's allowed IP of its nodes has them.
    pub(super) fn shadowed(&self, site: &str, prefix: IpNetwork) -> bool {
        self.globals
            .pairs(site)
            .iter()
            .any(|t| crate::prefix::overlaps(t.local, prefix))
    }

    /// The shared inputs of every node's map at the current version.
    pub fn views(&self) -> Arc<Views> {
        self.views.clone()
    }

    /// Builds the views of the current version. Parts equal to the previous version's are
    /// shared with it (the same `Arc`), so versions that sessions still hold cost only what
    /// changed, and sessions recognise unchanged parts by pointer.
    pub(super) fn rebuild_views(&mut self) {
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
                // Every node of the owning site that carries a prefix has it in its allowed
                // IPs: a site's gateways all carry traffic, and peers spread flows over
                // those they find healthy (the agent's `dataplane::spread`).
                allowed.extend(
                    p.accepted
                        .iter()
                        .map(|prefix| self.globals.to_mesh(&p.site, *prefix))
                        .filter(|prefix| owners.get(prefix).map(|o| &o.site) == Some(&p.site)),
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
                    priority: p.priority,
                };
                match prev.peers.binary_search_by(|old| old.id.cmp(&view.id)) {
                    Ok(i) if *prev.peers[i] == view => prev.peers[i].clone(),
                    _ => Arc::new(view),
                }
            })
            .collect::<Vec<_>>();
        let mut peers = peers;
        peers.extend(self.external_peer_views());
        // Sessions diff peer lists by merging them in id order.
        peers.sort_by(|a, b| a.id.cmp(&b.id));
        let mut site_routes = BTreeMap::new();
        for site in &self.config.sites {
            let mut routes = BTreeMap::new();
            if let Some(gw) = self.site_gateway(&site.name) {
                if let Some(via_address) = lan_address(gw) {
                    let mut add = |prefix: IpNetwork, remote: &str| {
                        if self.shadowed(&site.name, prefix) {
                            return;
                        }
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
                    // Only nodes that terminate tunnels translate (members need no nft).
                    translations: if self.tunnel_capable(n) {
                        self.globals.pairs(&n.site).to_vec()
                    } else {
                        Vec::new()
                    },
                    local_gateways: if self.tunnel_capable(n) {
                        Vec::new()
                    } else {
                        self.local_gateways(&n.site)
                    },
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
            shadows: self
                .config
                .sites
                .iter()
                .filter(|s| self.globals.is_translated(&s.name))
                .map(|s| (s.name.clone(), s.prefixes.clone()))
                .collect(),
        });
    }

    /// The map of the node `key`, or `None` if it is not registered.
    pub fn map_for(&self, key: &NodeKey) -> Option<NetworkMap> {
        Some(self.views.view(key)?.to_map(&self.views.mesh))
    }
}

/// The inputs of every node's map at one version, shared (behind an `Arc`) by all sessions
/// so each computes its own map and delta without the registry lock.
#[derive(Debug, Default)]
pub struct Views {
    pub version: u64,
    pub(super) mesh: String,
    /// Every tunnel-capable node with a key, sorted by id.
    pub(super) peers: Vec<Arc<PeerView>>,
    pub(super) nodes: BTreeMap<NodeKey, (Arc<SelfView>, bool)>,
    /// The routes a member of each site installs.
    pub(super) site_routes: BTreeMap<String, Arc<BTreeMap<IpNetwork, RouteView>>>,
    /// The access policy each site's tunnel nodes enforce.
    pub(super) site_access: BTreeMap<String, Arc<AccessPolicy>>,
    /// The local prefixes of translated sites: their tunnel nodes' peers never have
    /// allowed IPs inside them (see [`Mesh::shadowed`]).
    pub(super) shadows: BTreeMap<String, Vec<IpNetwork>>,
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
            let shadow = self.shadows.get(&key.0).map(Vec::as_slice).unwrap_or(&[]);
            let peers = self
                .peers
                .iter()
                .filter(|p| p.site != key.0)
                .map(|p| unshadowed(p, shadow))
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

/// `peer` without the allowed IPs inside `shadow` (shared unchanged when it has none).
fn unshadowed(peer: &Arc<PeerView>, shadow: &[IpNetwork]) -> Arc<PeerView> {
    let hidden = |a: &IpNetwork| shadow.iter().any(|s| crate::prefix::overlaps(*s, *a));
    if !peer.allowed_ips.iter().any(hidden) {
        return peer.clone();
    }
    let mut p = (**peer).clone();
    p.allowed_ips.retain(|a| !hidden(a));
    Arc::new(p)
}

/// The address a member routes through: the gateway's `private` endpoint, else any.
fn lan_address(gw: &NodeRecord) -> Option<IpAddr> {
    lan_endpoint(gw).map(|a| a.ip())
}

/// A gateway's endpoint on its site network: its `private` one, or its first.
fn lan_endpoint(gw: &NodeRecord) -> Option<std::net::SocketAddr> {
    gw.endpoints
        .iter()
        .find(|e| e.kind == EndpointKind::Private)
        .or_else(|| gw.endpoints.first())
        .map(|e| e.address)
}
