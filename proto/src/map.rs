//! Network maps: what one node needs to know about the mesh, and versioned deltas.
//!
//! A map is computed by the coordinator for one node. Deltas take a map from
//! `from_version` to `to_version`; an agent applies a delta only to exactly `from_version`
//! and otherwise asks for a snapshot (by reconnecting), so maps never silently diverge.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};

use ipnetwork::IpNetwork;
use serde::{Deserialize, Serialize};

use crate::access::AccessPolicy;
use crate::endpoint::Endpoint;
use crate::Role;

/// A prefix that was refused and why.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Refusal {
    pub prefix: String,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct NetworkMap {
    pub version: u64,
    pub mesh: String,
    pub node: SelfView,
    /// WireGuard peers this node should have, by id.
    pub peers: BTreeMap<String, PeerView>,
    /// Routes a member installs through its site's gateway, by prefix.
    pub routes: BTreeMap<IpNetwork, RouteView>,
    /// What this node lets through from its tunnels (its site's part of the mesh's access
    /// policy); absent: everything, as in maps saved before policies existed.
    #[serde(default, skip_serializing_if = "AccessPolicy::allows_all")]
    pub access: AccessPolicy,
}

/// This node as the coordinator sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct SelfView {
    pub site: String,
    pub name: String,
    pub role: Role,
    pub overlay_ip: Ipv4Addr,
    /// The mesh's overlay CIDR (the address on the TUN uses its prefix length).
    pub overlay_cidr: IpNetwork,
    pub accepted: Vec<IpNetwork>,
    pub refused: Vec<Refusal>,
    /// The WireGuard key this node announced for its next rotation, once the coordinator
    /// has recorded it (and so handed it to every peer).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_wg_public_key: Option<String>,
    /// Every prefix that belongs to the rest of the mesh by configuration: the other sites'
    /// declared prefixes (their global prefixes, for sites that have them), external
    /// peers' prefixes and the overlay CIDR, and the own site's global prefixes (packets
    /// for them are translated before routing; untranslated, they are refused, never
    /// routed by the main table). The node keeps an
    /// `unreachable` route for each behind its tunnel routes, so such traffic is refused,
    /// never sent unencrypted, whatever the state of the nodes that carry it (revoked,
    /// offline, never enrolled) and while the agent is stopped.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fail_closed: Vec<IpNetwork>,
    /// The own site's local prefixes and the global ones the rest of the mesh reaches them
    /// by, when the site has global addresses (its address space overlaps another site's),
    /// in the maps of the site's nodes that terminate tunnels (gateways, full-mesh nodes),
    /// which translate between them, 1:1 and
    /// statelessly: destination global -> local into the site, source local -> global out
    /// of it. Empty for sites that use their real addresses in the mesh.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub translations: Vec<Translation>,
    /// For a member: every gateway of its own site, online or not, sorted by id. The
    /// member asks each of them which of its routes' prefixes it can carry now and spreads
    /// its routes over those that can (see the agent's `dataplane::nexthops`). Empty for
    /// nodes that terminate tunnels, and in maps of coordinators before it existed (the
    /// member then routes through each route's `via`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub local_gateways: Vec<LocalGateway>,
}

/// A gateway of a member's own site, as the member reaches it on the site network.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct LocalGateway {
    /// `site/node`.
    pub id: String,
    /// Its WireGuard public key (base64): the member authenticates its answers with a key
    /// derived from it.
    pub wg_public_key: String,
    /// Its address and WireGuard port on the site network (its `private` endpoint, or its
    /// first one).
    pub address: std::net::SocketAddr,
    /// Lower is preferred (0 active, 1 standby): a member uses standby gateways only while
    /// no active one can carry a prefix.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub priority: u8,
}

/// One local prefix of a site and its global prefix (same family and length): address
/// `local.network() + i` is `global.network() + i` in the rest of the mesh.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Translation {
    pub local: IpNetwork,
    pub global: IpNetwork,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PeerKind {
    /// A node running a Strait agent.
    Agent,
    /// A plain WireGuard device declared in the coordinator's config.
    External,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct PeerView {
    /// `site/node` for agents, `external/<name>` for external peers.
    pub id: String,
    pub site: String,
    pub name: String,
    pub kind: PeerKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<Role>,
    pub wg_public_key: String,
    /// The key the peer will switch to (key rotation): handshakes from it are accepted
    /// before the map names it as the peer's key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_wg_public_key: Option<String>,
    pub endpoints: Vec<Endpoint>,
    /// Destinations routed to this peer: its overlay address and the prefixes it carries.
    pub allowed_ips: Vec<IpNetwork>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overlay_ip: Option<Ipv4Addr>,
    pub online: bool,
    /// Among gateways of one site carrying the same prefixes, lower is preferred (0 active,
    /// 1 standby): peers spread flows over the reachable ones of the best priority.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub priority: u8,
}

fn is_zero(v: &u8) -> bool {
    *v == 0
}

/// A remote prefix a member reaches through a gateway of its own site.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct RouteView {
    pub prefix: IpNetwork,
    /// The remote site that owns the prefix.
    pub site: String,
    /// `site/node` of the local gateway.
    pub via: String,
    /// The local gateway's address on the site network (its `private` endpoint).
    pub via_address: IpAddr,
}

/// The difference between two maps of the same node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct MapDelta {
    pub from_version: u64,
    pub to_version: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<SelfView>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub upsert_peers: Vec<PeerView>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remove_peers: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub upsert_routes: Vec<RouteView>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remove_routes: Vec<IpNetwork>,
    /// The node's access policy, when it changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access: Option<AccessPolicy>,
}

impl MapDelta {
    /// True when the delta only moves the version.
    pub fn is_empty(&self) -> bool {
        self.node.is_none()
            && self.upsert_peers.is_empty()
            && self.remove_peers.is_empty()
            && self.upsert_routes.is_empty()
            && self.remove_routes.is_empty()
            && self.access.is_none()
    }
}

/// A delta that does not start at the map's version.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("map delta from version {from} cannot apply to a map at version {have}; a new snapshot is needed")]
pub struct VersionGap {
    pub have: u64,
    pub from: u64,
}

impl NetworkMap {
    /// The delta that turns `self` into `new`.
    pub fn diff(&self, new: &NetworkMap) -> MapDelta {
        let upsert_peers = new
            .peers
            .iter()
            .filter(|(id, p)| self.peers.get(*id) != Some(p))
            .map(|(_, p)| p.clone())
            .collect();
        let remove_peers = self
            .peers
            .keys()
            .filter(|id| !new.peers.contains_key(*id))
            .cloned()
            .collect();
        let upsert_routes = new
            .routes
            .iter()
            .filter(|(p, r)| self.routes.get(*p) != Some(r))
            .map(|(_, r)| r.clone())
            .collect();
        let remove_routes = self
            .routes
            .keys()
            .filter(|p| !new.routes.contains_key(*p))
            .copied()
            .collect();
        MapDelta {
            from_version: self.version,
            to_version: new.version,
            node: (self.node != new.node).then(|| new.node.clone()),
            upsert_peers,
            remove_peers,
            upsert_routes,
            remove_routes,
            access: (self.access != new.access).then(|| new.access.clone()),
        }
    }

    /// Applies `delta`, which must start at this map's version.
    pub fn apply(&mut self, delta: &MapDelta) -> Result<(), VersionGap> {
        if delta.from_version != self.version {
            return Err(VersionGap {
                have: self.version,
                from: delta.from_version,
            });
        }
        if let Some(node) = &delta.node {
            self.node = node.clone();
        }
        for id in &delta.remove_peers {
            self.peers.remove(id);
        }
        for p in &delta.upsert_peers {
            self.peers.insert(p.id.clone(), p.clone());
        }
        for prefix in &delta.remove_routes {
            self.routes.remove(prefix);
        }
        for r in &delta.upsert_routes {
            self.routes.insert(r.prefix, r.clone());
        }
        if let Some(access) = &delta.access {
            self.access = access.clone();
        }
        self.version = delta.to_version;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(id: &str, online: bool) -> PeerView {
        PeerView {
            id: id.into(),
            site: "b".into(),
            name: id.into(),
            kind: PeerKind::Agent,
            role: Some(Role::Gateway),
            wg_public_key: "k".into(),
            next_wg_public_key: None,
            endpoints: vec![],
            allowed_ips: vec!["10.2.0.0/16".parse().unwrap()],
            overlay_ip: Some(Ipv4Addr::new(100, 64, 0, 2)),
            online,
            priority: 0,
        }
    }

    fn map(version: u64, peers: &[PeerView]) -> NetworkMap {
        NetworkMap {
            version,
            mesh: "prod".into(),
            node: SelfView {
                site: "a".into(),
                name: "gw".into(),
                role: Role::Gateway,
                overlay_ip: Ipv4Addr::new(100, 64, 0, 1),
                overlay_cidr: "100.64.0.0/10".parse().unwrap(),
                accepted: vec![],
                refused: vec![],
                next_wg_public_key: None,
                fail_closed: vec![],
                translations: vec![],
                local_gateways: vec![],
            },
            peers: peers.iter().map(|p| (p.id.clone(), p.clone())).collect(),
            routes: BTreeMap::new(),
            access: AccessPolicy::default(),
        }
    }

    #[test]
    fn diff_then_apply_reaches_the_new_map() {
        let old = map(1, &[peer("b/gw1", true), peer("b/gw2", true)]);
        let new = map(2, &[peer("b/gw1", false), peer("c/gw", true)]);
        let d = old.diff(&new);
        assert_eq!(d.remove_peers, vec!["b/gw2".to_string()]);
        assert_eq!(d.upsert_peers.len(), 2);
        let mut m = old.clone();
        m.apply(&d).unwrap();
        assert_eq!(m, new);
    }

    #[test]
    fn maps_with_routes_survive_json() {
        let mut m = map(5, &[peer("b/gw1", true)]);
        let prefix: IpNetwork = "10.2.0.0/16".parse().unwrap();
        m.routes.insert(
            prefix,
            RouteView {
                prefix,
                site: "b".into(),
                via: "a/gw".into(),
                via_address: "10.1.0.1".parse().unwrap(),
            },
        );
        let json = serde_json::to_string(&m).unwrap();
        assert_eq!(serde_json::from_str::<NetworkMap>(&json).unwrap(), m);
    }

    #[test]
    fn deltas_apply_only_at_their_version() {
        let old = map(1, &[]);
        let new = map(2, &[peer("b/gw1", true)]);
        let d = old.diff(&new);
        let mut stale = map(0, &[]);
        assert_eq!(stale.apply(&d), Err(VersionGap { have: 0, from: 1 }));
        assert!(map(3, &[]).diff(&map(4, &[])).is_empty());
    }

    #[test]
    fn a_policy_change_travels_in_deltas_and_old_maps_load_allowing_all() {
        use crate::access::{AccessRule, Action, Service, Source};
        let old = map(1, &[peer("b/gw1", true)]);
        let mut new = map(2, &[peer("b/gw1", true)]);
        new.access = AccessPolicy {
            default: Action::Deny,
            rules: vec![AccessRule {
                name: "web".into(),
                action: Action::Allow,
                from: vec![Source::Site("b".into())],
                to: vec!["10.1.0.0/16".parse().unwrap()],
                to_node: true,
                services: vec![Service::Tcp {
                    first: 443,
                    last: 443,
                }],
            }],
        };
        let d = old.diff(&new);
        assert!(!d.is_empty() && d.upsert_peers.is_empty() && d.node.is_none());
        assert_eq!(d.access.as_ref(), Some(&new.access));
        let mut m = old.clone();
        m.apply(&d).unwrap();
        assert_eq!(m, new);
        // And back to no policy.
        let back = new.diff(&map(3, &[peer("b/gw1", true)]));
        assert_eq!(back.access, Some(AccessPolicy::default()));
        // A map saved before policies existed has no `access`: it allows all, and a map
        // without a policy is written as before.
        let json = serde_json::to_string(&old).unwrap();
        assert!(!json.contains("access"), "{json}");
        let loaded: NetworkMap = serde_json::from_str(&json).unwrap();
        assert!(loaded.access.allows_all());
    }
}
