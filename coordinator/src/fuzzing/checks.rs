//! What must hold after every operation of the `messages` harness (see
//! [`super::messages`]).

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use ipnetwork::IpNetwork;
use strait_pki::Role;
use strait_proto::map::NetworkMap;

use super::harness::{Harness, Session};
use super::{NAMES, SERIALS};
use crate::config::Config;
use crate::mesh::{Mesh, NodeKey, NodeView};
use crate::policy;

impl Harness {
    pub(super) fn check(&mut self) {
        let mesh = &self.mesh;
        let version = mesh.version();
        assert!(
            version >= self.version,
            "the version went from {} to {version}",
            self.version
        );
        self.version = version;
        let views = mesh.views();
        assert_eq!(views.version, version, "views behind the mesh");
        assert_eq!(views.mesh(), self.config.mesh);
        let nodes = mesh.nodes();
        let (total, online) = mesh.node_counts();
        assert_eq!(
            (total, online),
            (nodes.len(), nodes.iter().filter(|n| n.online).count())
        );

        let IpNetwork::V4(overlay) = self.config.overlay_cidr else {
            panic!("the fuzzed config has an IPv6 overlay");
        };
        let mut ips: BTreeSet<Ipv4Addr> = self
            .config
            .external_peers
            .iter()
            .filter_map(|e| e.overlay_ip)
            .collect();
        for n in &nodes {
            let ip = n.overlay_ip;
            assert!(
                overlay.contains(ip) && ip != overlay.network() && ip != overlay.broadcast(),
                "{}/{} has overlay address {ip}, outside {overlay}",
                n.site,
                n.name
            );
            assert!(ips.insert(ip), "overlay address {ip} given twice");
            let site = self
                .config
                .site(&n.site)
                .unwrap_or_else(|| panic!("a node of undeclared site {}", n.site));
            for p in &n.prefixes {
                assert_eq!(p.ip(), p.network(), "accepted prefix {p} is not normalized");
                assert!(
                    site.prefixes.iter().any(|own| policy::contains(*own, *p)),
                    "accepted prefix {p} is outside site {}",
                    n.site
                );
            }
        }
        // One WireGuard key, one peer (agents' engines key peers by it).
        let mut keys: BTreeSet<&str> = self
            .config
            .external_peers
            .iter()
            .map(|e| e.public_key.as_str())
            .collect();
        for n in &nodes {
            assert!(
                keys.insert(&n.wg_public_key),
                "{}/{}'s WireGuard key is another peer's",
                n.site,
                n.name
            );
        }
        // ...and a key announced for a rotation is no one else's either.
        for n in &nodes {
            if let Some(next) = &n.next_wg_public_key {
                assert!(
                    keys.insert(next),
                    "{}/{} announced a key already held",
                    n.site,
                    n.name
                );
            }
        }
        // In mesh addresses (global prefixes for translated sites): overlapping sites may
        // carry the same real prefix, never the same mesh prefix.
        let globals = crate::globals::Globals::of(&self.config);
        let mesh_prefixes = |n: &strait_proto::msg::NodeInfo| -> Vec<IpNetwork> {
            n.prefixes
                .iter()
                .map(|p| globals.to_mesh(&n.site, *p))
                .collect()
        };
        for n in &nodes {
            if globals.is_translated(&n.site) {
                assert_eq!(n.global_prefixes, mesh_prefixes(n), "{}/{}", n.site, n.name);
            } else {
                assert!(n.global_prefixes.is_empty(), "{}/{}", n.site, n.name);
            }
        }
        for (i, n) in nodes.iter().enumerate() {
            for m in nodes[i + 1..].iter().filter(|m| m.site != n.site) {
                for p in &mesh_prefixes(n) {
                    for q in &mesh_prefixes(m) {
                        assert!(
                            !policy::overlaps(*p, *q),
                            "{}/{} carries {p}, {}/{} carries {q}",
                            n.site,
                            n.name,
                            m.site,
                            m.name
                        );
                    }
                }
            }
        }

        let mut keys = BTreeSet::new();
        for n in &nodes {
            let key: NodeKey = (n.site.clone(), n.name.clone());
            let view = views
                .view(&key)
                .unwrap_or_else(|| panic!("registered node {key:?} has no view"));
            let map = view.to_map(views.mesh());
            assert_eq!(mesh.map_for(&key).as_ref(), Some(&map));
            let tunnel = !view.peers.is_empty()
                || nodes.iter().any(|n| {
                    (&n.site, &n.name) == (&key.0, &key.1)
                        && (n.role == Role::Gateway
                            || self.config.site(&n.site).is_some_and(|s| s.full_mesh))
                });
            check_map(&key, &view, &map, version, &self.config, tunnel);
            match self.sessions.get_mut(&key) {
                None => {
                    self.sessions.insert(key.clone(), Session { view, map });
                }
                Some(s) if s.view.version == view.version => {}
                Some(s) => {
                    let delta = s.view.delta(&view);
                    if delta.is_empty() {
                        // Sent later, batched with the next change.
                        let mut same = s.map.clone();
                        same.version = map.version;
                        assert_eq!(same, map, "{key:?}: an empty delta between different maps");
                    } else {
                        s.map
                            .apply(&delta)
                            .unwrap_or_else(|e| panic!("{key:?}: the session's delta: {e}"));
                        assert_eq!(s.map, map, "{key:?}: the delta does not reach the map");
                        s.view = view;
                    }
                }
            }
            keys.insert(key);
        }
        self.sessions.retain(|k, _| keys.contains(k));

        // The fan-out wakes only the sessions `changes` concerns: every node whose map
        // differs (not only in version) from the last check must be among them.
        let changes = self.views.changes(&views);
        let before: BTreeSet<NodeKey> = self.views.keys().cloned().collect();
        for key in keys.union(&before) {
            let differs = match (self.views.view(key), views.view(key)) {
                (Some(a), Some(b)) => !a.delta(&b).is_empty(),
                (None, None) => false,
                _ => true,
            };
            if differs {
                assert!(
                    changes.concerns(key, &views),
                    "{key:?}'s map changed, but the fan-out would not wake its session: {changes:?}"
                );
            }
        }
        self.views = views.clone();

        // A restart from what the store holds.
        let restarted = Mesh::new(self.config.clone(), self.store.clone());
        assert_eq!(
            restarted.version(),
            version,
            "the store holds another version"
        );
        let forget = |mut n: strait_proto::msg::NodeInfo| {
            // Heartbeats are not written while a node stays online.
            n.last_seen = 0;
            n.map_version = 0;
            n
        };
        let again: Vec<_> = restarted.nodes().into_iter().map(forget).collect();
        let nodes: Vec<_> = nodes.into_iter().map(forget).collect();
        assert_eq!(again, nodes, "the store holds other nodes");
        for key in &keys {
            assert_eq!(
                restarted.map_for(key),
                mesh.map_for(key),
                "{key:?}'s map changes in a restart"
            );
        }
        for s in SERIALS {
            assert_eq!(restarted.is_revoked(s), mesh.is_revoked(s), "serial {s:?}");
        }
        for name in NAMES {
            assert_eq!(
                restarted.resolve(name),
                mesh.resolve(name),
                "resolving {name}"
            );
        }

        // Operators' views.
        let _ = (mesh.status("builtin"), mesh.routes(), mesh.graph());
        let policy = mesh.policy_view();
        assert_eq!(policy.rules.len(), self.config.policy.rules.len());
        assert!(policy.since_version <= version);
        for l in mesh.links() {
            assert!(l.a != l.b, "a link from {} to itself", l.a);
        }
        for (a, b) in mesh.tunnel_pairs() {
            if let Err(e) = mesh.probe_pair(&a, &b) {
                panic!("tunnel pair {a} {b} cannot be probed: {e}");
            }
        }
        for ext in &self.config.external_peers {
            mesh.external_peer_config(&ext.name)
                .unwrap_or_else(|e| panic!("external peer {}: {e}", ext.name));
        }
    }
}

/// What one node's view and map must be. `site` is the node's site's config, `tunnel`
/// whether the node terminates tunnels.
fn check_map(
    key: &NodeKey,
    view: &NodeView,
    map: &NetworkMap,
    version: u64,
    config: &Config,
    tunnel: bool,
) {
    // The access policy: a member enforces none; a tunnel node the default, and only rules
    // whose destinations lie in its site or the overlay, in the configured order.
    let site = config.site(&key.0).expect("a node of a declared site");
    // Global addresses: the node has its site's pairs; a translated site's node never
    // routes, closes or accepts from a peer an address of its own local space (its hosts
    // use them), and closes its own global prefixes.
    let globals = crate::globals::Globals::of(config);
    let pairs = if tunnel { globals.pairs(&key.0) } else { &[] };
    assert_eq!(map.node.translations, pairs, "{key:?}");
    for t in globals.pairs(&key.0) {
        assert!(
            map.node.fail_closed.contains(&t.global),
            "{key:?} does not close its own global {}",
            t.global
        );
        let shadowed = map
            .peers
            .values()
            .flat_map(|p| p.allowed_ips.iter())
            .chain(map.routes.keys())
            .chain(&map.node.fail_closed)
            .find(|p| policy::overlaps(t.local, **p));
        assert_eq!(shadowed, None, "{key:?}: inside its own local {}", t.local);
    }
    if !tunnel {
        assert!(map.access.allows_all(), "{key:?}: a member got a policy");
    } else {
        assert_eq!(map.access.default, config.policy.default);
        let configured: Vec<String> = crate::access::Policy::build(config)
            .expect("a validated config's policy builds")
            .rules
            .into_iter()
            .map(|r| r.name)
            .collect();
        let mut at = 0;
        for r in &map.access.rules {
            let Some(i) = configured[at..].iter().position(|n| *n == r.name) else {
                panic!("{key:?}: rule {} out of order or unknown", r.name);
            };
            at += i + 1;
            assert!(
                r.to_node || !r.to.is_empty(),
                "{key:?}: rule {} with no destination",
                r.name
            );
            for p in &r.to {
                assert!(
                    policy::contains(config.overlay_cidr, *p)
                        || globals
                            .mesh_prefixes(site)
                            .iter()
                            .any(|own| policy::overlaps(*own, *p)),
                    "{key:?}: rule {} sends {p} here, outside the site",
                    r.name
                );
            }
        }
    }
    assert_eq!(map.version, version);
    assert_eq!((&map.node.site, &map.node.name), (&key.0, &key.1));
    assert!(
        view.peers.windows(2).all(|w| w[0].id < w[1].id),
        "{key:?}: peer ids are not strictly increasing: {:?}",
        view.peers.iter().map(|p| &p.id).collect::<Vec<_>>()
    );
    assert!(
        view.peers.is_empty() || view.routes.is_empty(),
        "{key:?} has both tunnels and routes"
    );
    // A prefix may be carried by several peers (a site's gateways), never by two sites.
    let mut routed: BTreeMap<IpNetwork, (&str, &str)> = BTreeMap::new();
    for (id, p) in &map.peers {
        assert_eq!(*id, p.id);
        assert_ne!(p.site, key.0, "{key:?} has peer {id} of its own site");
        for prefix in &p.allowed_ips {
            if let Some((other, site)) = routed.insert(*prefix, (id, &p.site)) {
                assert_eq!(
                    site, p.site,
                    "{key:?}: {prefix} is routed to both {other} and {id}, of two sites"
                );
            }
        }
    }
    for (prefix, route) in &map.routes {
        assert_eq!(*prefix, route.prefix);
        assert_ne!(route.site, key.0, "{key:?} routes its own site's {prefix}");
        assert!(
            route.via.starts_with(&format!("{}/", key.0)),
            "{key:?} routes {prefix} via {}, of another site",
            route.via
        );
    }
}
