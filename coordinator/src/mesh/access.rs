//! The access policy's part of the core: the policy in force (from the config, or reloaded),
//! compiled into each site's maps, and what nodes report dropping.

use std::collections::BTreeMap;
use std::sync::Arc;

use strait_proto::access::{AccessDrop, AccessPolicy, NodeDrops, PolicyView};

use super::{Mesh, NodeKey, StoreOp, Views};
use crate::access::Policy;
use crate::config::Config;
use crate::config::SiteConfig;

/// Most drop lines kept per node (a node reports one per sending site and reason).
pub const MAX_REPORTED_DROPS: usize = 1024;

#[derive(Debug)]
pub(super) struct AccessState {
    policy: Policy,
    /// The map version that carried the current policy first.
    since: u64,
    /// What each node last reported dropping (live, never stored).
    drops: BTreeMap<NodeKey, Vec<AccessDrop>>,
}

impl AccessState {
    pub(super) fn new(config: &Config, version: u64) -> AccessState {
        AccessState {
            // `Config::validate` refuses an invalid policy; a config that skipped it gets
            // a policy that lets nothing through rather than an open mesh.
            policy: Policy::build(config).unwrap_or_else(|_| Policy::deny_all()),
            since: version,
            drops: BTreeMap::new(),
        }
    }
}

impl Mesh {
    /// The access policy in force.
    pub fn access_policy(&self) -> &Policy {
        &self.access.policy
    }

    /// Puts `policy` in force (a reload of `[policy]`, validated by the caller against this
    /// mesh's config): a new map version, whose maps carry it.
    pub fn set_access_policy(&mut self, policy: Policy) -> Vec<StoreOp> {
        self.access.policy = policy;
        let mut ops = Vec::new();
        self.bump(&mut ops);
        self.access.since = self.version;
        ops
    }

    /// What node `key` dropped for the policy (live figures: no map change, not stored).
    pub fn report_access_drops(&mut self, key: &NodeKey, mut drops: Vec<AccessDrop>) {
        if !self.nodes.contains_key(key) {
            return;
        }
        drops.truncate(MAX_REPORTED_DROPS);
        if drops.is_empty() {
            self.access.drops.remove(key);
        } else {
            self.access.drops.insert(key.clone(), drops);
        }
    }

    /// `straitctl policy`: the rules as written, and per tunnel node what it enforces and
    /// dropped.
    pub fn policy_view(&self) -> PolicyView {
        let nodes = self
            .nodes
            .values()
            .filter(|n| self.tunnel_capable(n))
            .map(|n| NodeDrops {
                node: n.id(),
                online: n.online,
                map_version: n.map_version,
                rules: self
                    .views
                    .site_access
                    .get(&n.site)
                    .map_or(0, |a| a.rules.len()),
                drops: self.access.drops.get(&n.key()).cloned().unwrap_or_default(),
            })
            .collect();
        PolicyView {
            default: self.access.policy.default,
            rules: self.access.policy.views(),
            since_version: self.access.since,
            nodes,
        }
    }

    /// After a reload from a shared store: keeps the policy in force (a reloaded one is in
    /// no store) and the nodes' reports.
    pub(super) fn carry_access(&mut self, old: &Mesh) {
        self.access.since = old.access.since;
        self.access.drops = old
            .access
            .drops
            .iter()
            .filter(|(k, _)| self.nodes.contains_key(*k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        if self.access.policy != old.access.policy {
            self.access.policy = old.access.policy.clone();
            self.rebuild_views();
        }
    }

    /// Each site's part of the policy, sharing the previous views' parts that did not
    /// change.
    pub(super) fn site_access(&self, prev: &Views) -> BTreeMap<String, Arc<AccessPolicy>> {
        self.config
            .sites
            .iter()
            .map(|site| {
                // Packets are judged as they travel in the tunnel, before the site's
                // translation: by the site's mesh addresses.
                let mesh_site = SiteConfig {
                    prefixes: self.globals.mesh_prefixes(site),
                    ..site.clone()
                };
                let access = self
                    .access
                    .policy
                    .for_site(&mesh_site, self.config.overlay_cidr);
                let access = match prev.site_access.get(&site.name) {
                    Some(old) if **old == access => old.clone(),
                    _ => Arc::new(access),
                };
                (site.name.clone(), access)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use strait_pki::{Identity, Role};
    use strait_proto::access::{Action, Source};
    use strait_proto::msg::{Endpoint, EndpointKind, Registration};

    use super::*;
    use crate::mesh::Persisted;

    fn config(policy: &str) -> Config {
        let text = format!(
            "mesh = \"prod\"\nstate-dir = \"/nonexistent\"\n\
             [[sites]]\nname = \"a\"\nprefixes = [\"10.1.0.0/16\"]\n\
             [[sites]]\nname = \"b\"\nprefixes = [\"10.2.0.0/16\"]\n{policy}"
        );
        let c: Config = toml::from_str(&text).unwrap();
        c.validate().unwrap();
        c
    }

    fn register(mesh: &mut Mesh, store: &mut Persisted, site: &str, name: &str, role: Role) {
        let lan: Ipv4Addr = match (site, name) {
            ("a", "gw") => "10.1.0.1",
            ("b", "gw") => "10.2.0.1",
            _ => "10.1.0.9",
        }
        .parse()
        .unwrap();
        let mut key = [0u8; 32];
        key[..4].copy_from_slice(&lan.octets());
        let reg = Registration {
            wg_public_key: {
                use base64::Engine;
                base64::engine::general_purpose::STANDARD.encode(key)
            },
            endpoints: vec![Endpoint {
                address: std::net::SocketAddr::new(lan.into(), 51820),
                kind: EndpointKind::Private,
                cost: None,
            }],
            prefixes: match role {
                Role::Gateway => vec![format!("{}/16", lan).parse().unwrap()],
                _ => vec![],
            },
            agent_version: "test".into(),
            have_version: None,
            priority: 0,
        };
        let id = Identity::node("prod", site, name, role).unwrap();
        let (_, ops) = mesh.register(&id, &reg, "01", 0, 100).unwrap();
        store.version = mesh.version();
        for op in ops {
            if let StoreOp::PutNode(n) = op {
                store.nodes.retain(|x| x.key() != n.key());
                store.nodes.push(n);
            }
        }
    }

    fn key(site: &str, name: &str) -> NodeKey {
        (site.into(), name.into())
    }

    #[test]
    fn maps_carry_each_sites_rules_and_a_reload_reaches_them_as_deltas() {
        let cfg = config(
            "[policy]\ndefault = \"deny\"\n\
             [[policy.rules]]\nname = \"web\"\nfrom = \"a\"\nto = \"b\"\nports = [\"tcp/443\", \"icmp\"]\n",
        );
        let mut mesh = Mesh::new(Arc::new(cfg.clone()), Persisted::default());
        let mut store = Persisted::default();
        register(&mut mesh, &mut store, "a", "gw", Role::Gateway);
        register(&mut mesh, &mut store, "b", "gw", Role::Gateway);
        register(&mut mesh, &mut store, "a", "m1", Role::Member);

        // b's gateway enforces the rule into b; a's only the default; a member nothing.
        let b = mesh.map_for(&key("b", "gw")).unwrap();
        assert_eq!(b.access.default, Action::Deny);
        assert_eq!(b.access.rules.len(), 1);
        assert_eq!(b.access.rules[0].from, vec![Source::Site("a".into())]);
        assert!(b.access.rules[0].to_node);
        let a = mesh.map_for(&key("a", "gw")).unwrap();
        assert_eq!(a.access.default, Action::Deny);
        assert!(a.access.rules.is_empty());
        assert!(mesh.map_for(&key("a", "m1")).unwrap().access.allows_all());

        // A reload: allow by default, deny ssh from a into b. A new version, whose delta
        // carries the policy to the tunnel nodes of both sites and leaves the member alone.
        let before = mesh.views();
        let since = mesh.policy_view().since_version;
        let mut reloaded = cfg.clone();
        reloaded.policy = toml::from_str::<Config>(
            "mesh = \"prod\"\nstate-dir = \"/x\"\n[policy]\n\
             [[policy.rules]]\nname = \"no-ssh\"\naction = \"deny\"\nfrom = \"a\"\nto = \"b\"\nports = \"tcp/22\"\n"
        )
        .unwrap()
        .policy;
        let policy = Policy::build(&reloaded).unwrap();
        let ops = mesh.set_access_policy(policy.clone());
        assert_eq!(ops, vec![StoreOp::SetVersion(mesh.version())]);
        store.version = mesh.version();
        assert!(mesh.version() > before.version);
        let after = mesh.views();
        let changes = before.changes(&after);
        assert!(changes.concerns(&key("a", "gw"), &after));
        assert!(changes.concerns(&key("b", "gw"), &after));
        assert!(!changes.concerns(&key("a", "m1"), &after));
        for node in [key("a", "gw"), key("b", "gw")] {
            let old = before.view(&node).unwrap();
            let new = after.view(&node).unwrap();
            let delta = old.delta(&new);
            assert!(delta.access.is_some(), "{node:?}: {delta:?}");
            let mut map = old.to_map(before.mesh());
            map.apply(&delta).unwrap();
            assert_eq!(map, new.to_map(after.mesh()));
        }
        let b = mesh.map_for(&key("b", "gw")).unwrap();
        assert_eq!(b.access.default, Action::Allow);
        assert_eq!(b.access.rules[0].name, "no-ssh");
        assert!(mesh.map_for(&key("a", "gw")).unwrap().access.allows_all());
        let member = before.view(&key("a", "m1")).unwrap();
        assert!(member
            .delta(&after.view(&key("a", "m1")).unwrap())
            .is_empty());
        let view = mesh.policy_view();
        assert!(view.since_version > since);
        assert_eq!(view.rules[0].name, "no-ssh");

        // A reload of the shared store (the registry rebuilt from the config) keeps the
        // policy in force and the nodes' reports.
        mesh.report_access_drops(
            &key("b", "gw"),
            vec![AccessDrop {
                site: "a".into(),
                reason: "no-ssh".into(),
                packets: 3,
            }],
        );
        mesh.report_access_drops(&key("x", "nobody"), vec![]);
        let mut fresh = Mesh::new(Arc::new(cfg), store);
        assert_eq!(
            fresh.map_for(&key("b", "gw")).unwrap().access.rules[0].name,
            "web",
            "the config's policy before carrying"
        );
        fresh.carry_live(&mesh);
        assert_eq!(
            fresh.map_for(&key("b", "gw")),
            mesh.map_for(&key("b", "gw"))
        );
        assert_eq!(fresh.access_policy(), &policy);
        let view = fresh.policy_view();
        let nodes: Vec<&str> = view.nodes.iter().map(|n| n.node.as_str()).collect();
        assert_eq!(nodes, ["a/gw", "b/gw"], "tunnel nodes only");
        assert_eq!(view.nodes[1].drops[0].packets, 3);
        assert_eq!(view.nodes[1].rules, 1);
        assert_eq!(view.nodes[0].rules, 0);
    }
}
