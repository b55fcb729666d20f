//! Map fan-out to sessions: the views of the current version, and waking only the sessions
//! whose map a new version changes.
//!
//! A new version wakes the sessions [`Changes::concerns`] (a registration in one site wakes
//! that node's session, not every session). Every other session's map differs only in its
//! version; those sessions are woken together through [`Fanout::settled`] once versions stop
//! moving for [`VERSION_ONLY_DELAY`] (at most [`VERSION_ONLY_MAX_WAIT`] after the first
//! unsettled one), so every agent still reaches the latest version, and a burst of changes
//! costs each session one wake-up instead of one per change.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{watch, Notify};
use tokio::time::Instant;

use crate::mesh::{Changes, NodeKey, Views};

/// How long versions must stay unchanged before sessions take a version-only change.
pub const VERSION_ONLY_DELAY: Duration = Duration::from_millis(300);
/// The longest a version-only change waits while versions keep moving. During a storm of
/// registrations each settling costs every session a message; with 2 s, 5,000 agents
/// registering took every session a version-only delta every 2 s (BENCHMARKS.md).
pub const VERSION_ONLY_MAX_WAIT: Duration = Duration::from_secs(10);

/// When to hand sessions the latest version, for changes that have been coming since `first`,
/// the last at `last`.
pub fn settle_at(first: Instant, last: Instant) -> Instant {
    (last + VERSION_ONLY_DELAY).min(first + VERSION_ONLY_MAX_WAIT)
}

/// Sessions by site and node name (a node may briefly have two, while a newer session
/// replaces an older one). Pure bookkeeping; `T` is how a session is woken.
#[derive(Debug)]
pub struct Sessions<T> {
    next_id: u64,
    by_site: BTreeMap<String, BTreeMap<String, Vec<(u64, T)>>>,
}

impl<T> Default for Sessions<T> {
    fn default() -> Self {
        Sessions {
            next_id: 0,
            by_site: BTreeMap::new(),
        }
    }
}

impl<T> Sessions<T> {
    /// Adds a session of node `key`; returns its id for [`Sessions::remove`].
    pub fn insert(&mut self, key: &NodeKey, waker: T) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        self.by_site
            .entry(key.0.clone())
            .or_default()
            .entry(key.1.clone())
            .or_default()
            .push((id, waker));
        id
    }

    /// Removes the session `id` of node `key`.
    pub fn remove(&mut self, key: &NodeKey, id: u64) {
        let Some(site) = self.by_site.get_mut(&key.0) else {
            return;
        };
        if let Some(node) = site.get_mut(&key.1) {
            node.retain(|(i, _)| *i != id);
            if node.is_empty() {
                site.remove(&key.1);
            }
        }
        if site.is_empty() {
            self.by_site.remove(&key.0);
        }
    }

    /// The sessions whose map `changes` (from the current views to `next`) concerns, each
    /// once. Only the sites whose sessions may be concerned are visited: all of them when a
    /// peer changed (tunnel nodes anywhere see it), else the sites whose routes or access
    /// policy changed and the changed nodes themselves.
    pub fn concerned<'a>(&'a self, changes: &Changes, next: &Views) -> Vec<&'a T> {
        let mut out = Vec::new();
        let mut visit = |site: &String, nodes: &'a BTreeMap<String, Vec<(u64, T)>>| {
            for (name, sessions) in nodes {
                if changes.concerns(&(site.clone(), name.clone()), next) {
                    out.extend(sessions.iter().map(|(_, w)| w));
                }
            }
        };
        let whole_sites: Vec<&String> = if changes.peer_sites.is_empty() {
            let sites: std::collections::BTreeSet<&String> = changes
                .route_sites
                .iter()
                .chain(&changes.access_sites)
                .collect();
            sites.into_iter().collect()
        } else {
            self.by_site.keys().collect()
        };
        for site in &whole_sites {
            if let Some(nodes) = self.by_site.get(*site) {
                visit(site, nodes);
            }
        }
        for key in &changes.nodes {
            if whole_sites.contains(&&key.0) {
                continue;
            }
            if let Some(sessions) = self.by_site.get(&key.0).and_then(|s| s.get(&key.1)) {
                out.extend(sessions.iter().map(|(_, w)| w));
            }
        }
        out
    }
}

struct State {
    views: Arc<Views>,
    sessions: Sessions<Arc<Notify>>,
}

/// The current views and the sessions following them.
pub struct Fanout {
    state: Mutex<State>,
    /// The version every session should reach even if its map did not change.
    settled: watch::Sender<u64>,
    /// Signalled on every new version, for [`Fanout::settle_loop`].
    published: Notify,
}

impl Fanout {
    /// Starts at `views`.
    pub fn new(views: Arc<Views>) -> Fanout {
        let (settled, _) = watch::channel(views.version);
        Fanout {
            state: Mutex::new(State {
                views,
                sessions: Sessions::default(),
            }),
            settled,
            published: Notify::new(),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The views of the latest version published.
    pub fn views(&self) -> Arc<Views> {
        self.state().views.clone()
    }

    /// Makes `next` current unless a newer version is out already (two changes may finish
    /// in either order), and wakes the sessions whose map it changes. Returns whether it
    /// became current.
    pub fn publish(&self, next: Arc<Views>) -> bool {
        {
            let mut state = self.state();
            if next.version <= state.views.version {
                return false;
            }
            let changes = state.views.changes(&next);
            for wake in state.sessions.concerned(&changes, &next) {
                wake.notify_one();
            }
            state.views = next;
        }
        self.published.notify_one();
        true
    }

    /// Follows node `key`'s map: woken when a version changes it. Subscribe before reading
    /// the views, so no change in between is missed.
    pub fn subscribe(&self, key: &NodeKey) -> Subscription<'_> {
        let wake = Arc::new(Notify::new());
        let id = self.state().sessions.insert(key, wake.clone());
        Subscription {
            fanout: self,
            key: key.clone(),
            id,
            wake,
        }
    }

    /// The latest settled version (see the module documentation); every session follows it.
    pub fn settled(&self) -> watch::Receiver<u64> {
        self.settled.subscribe()
    }

    /// Announces the latest version on [`Fanout::settled`] once versions stop moving (see
    /// [`settle_at`]). Runs for as long as the server does.
    pub async fn settle_loop(&self) {
        loop {
            self.published.notified().await;
            let first = Instant::now();
            let mut last = first;
            loop {
                tokio::select! {
                    _ = tokio::time::sleep_until(settle_at(first, last)) => break,
                    _ = self.published.notified() => last = Instant::now(),
                }
            }
            let version = self.state().views.version;
            self.settled.send_if_modified(|settled| {
                let newer = version > *settled;
                if newer {
                    *settled = version;
                }
                newer
            });
        }
    }
}

/// One session's place in the [`Fanout`]; leaves it when dropped.
pub struct Subscription<'a> {
    fanout: &'a Fanout,
    key: NodeKey,
    id: u64,
    wake: Arc<Notify>,
}

impl Subscription<'_> {
    /// Completes once a version published since the last call (or since subscribing)
    /// changes this node's map.
    pub async fn changed(&self) {
        self.wake.notified().await
    }
}

impl Drop for Subscription<'_> {
    fn drop(&mut self) {
        self.fanout.state().sessions.remove(&self.key, self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mesh::Mesh;
    use strait_pki::{Identity, Role};
    use strait_proto::msg::{Endpoint, EndpointKind, Registration};

    fn key(site: &str, name: &str) -> NodeKey {
        (site.into(), name.into())
    }

    #[test]
    fn version_only_changes_wait_for_quiet_but_not_forever() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        assert_eq!(settle_at(t0, t0), t0 + VERSION_ONLY_DELAY);
        assert_eq!(settle_at(t0, t0 + ms(500)), t0 + ms(800));
        // Changes every 100 ms from t0 on: the latest version goes out at t0 + 10 s anyway.
        assert_eq!(settle_at(t0, t0 + ms(9_900)), t0 + VERSION_ONLY_MAX_WAIT);
    }

    /// Registers (or re-registers) `site/name` with its LAN address `lan`.
    fn register(mesh: &mut Mesh, site: &str, name: &str, role: Role, lan: &str) {
        let prefixes = match (role, site) {
            (Role::Gateway, "a") => vec!["10.1.0.0/16".parse().unwrap()],
            (Role::Gateway, _) => vec!["10.2.0.0/16".parse().unwrap()],
            _ => vec![],
        };
        // One WireGuard key per node (a key held by another node is refused).
        let mut wg = [0u8; 32];
        wg[..4].copy_from_slice(&lan.parse::<std::net::Ipv4Addr>().unwrap().octets());
        let reg = Registration {
            wg_public_key: base64::Engine::encode(&base64::engine::general_purpose::STANDARD, wg),
            endpoints: vec![Endpoint {
                address: format!("{lan}:51820").parse().unwrap(),
                kind: EndpointKind::Private,
                cost: None,
            }],
            prefixes,
            agent_version: "test".into(),
            have_version: None,
            priority: 0,
        };
        let id = Identity::node("prod", site, name, role).unwrap();
        // A serial of the node's own: revoking one node revokes no other's certificate.
        let serial = format!("{site}-{name}");
        mesh.register(&id, &reg, &serial, 0, 100).unwrap();
    }

    /// The nodes whose map differs (not only in version) from `before` to `after`.
    fn really_changed(before: &Views, after: &Views, keys: &[NodeKey]) -> Vec<NodeKey> {
        keys.iter()
            .filter(|k| match (before.view(k), after.view(k)) {
                (Some(a), Some(b)) => !a.delta(&b).is_empty(),
                (None, None) => false,
                _ => true,
            })
            .cloned()
            .collect()
    }

    #[test]
    fn a_new_version_concerns_exactly_the_sessions_whose_map_it_changes() {
        let mut mesh = Mesh::new(Arc::new(crate::fuzzing::config(0)), Default::default());
        let keys = [
            key("a", "gw"),
            key("b", "gw"),
            key("a", "m1"),
            key("a", "m2"),
            key("b", "m3"),
            key("a", "m4"),
        ];
        let mut sessions = Sessions::default();
        for k in &keys {
            sessions.insert(k, k.clone());
        }
        let step = |mesh: &mut Mesh, change: &dyn Fn(&mut Mesh)| {
            let before = mesh.views();
            change(mesh);
            let after = mesh.views();
            let changes = before.changes(&after);
            let mut woken: Vec<NodeKey> = sessions
                .concerned(&changes, &after)
                .into_iter()
                .cloned()
                .collect();
            woken.sort();
            let mut expected = really_changed(&before, &after, &keys);
            expected.sort();
            assert_eq!(woken, expected, "{changes:?}");
            woken
        };
        for (site, name, role, lan) in [
            ("a", "gw", Role::Gateway, "10.1.0.1"),
            ("b", "gw", Role::Gateway, "10.2.0.1"),
            ("a", "m1", Role::Member, "10.1.0.11"),
            ("a", "m2", Role::Member, "10.1.0.12"),
            ("b", "m3", Role::Member, "10.2.0.13"),
        ] {
            step(&mut mesh, &|m| register(m, site, name, role, lan));
        }
        // A member joining wakes only itself.
        let woken = step(&mut mesh, &|m| {
            register(m, "a", "m4", Role::Member, "10.1.0.14")
        });
        assert_eq!(woken, vec![key("a", "m4")]);
        // A gateway's new LAN address: the other site's gateway (a peer changed) and its
        // own site's members (their routes go through that address), no one else.
        let woken = step(&mut mesh, &|m| {
            register(m, "a", "gw", Role::Gateway, "10.1.0.2")
        });
        assert_eq!(
            woken,
            vec![
                key("a", "m1"),
                key("a", "m2"),
                key("a", "m4"),
                key("b", "gw")
            ]
        );
        // A revocation wakes the revoked node's session (to close it).
        let woken = step(&mut mesh, &|m| {
            m.revoke(&key("a", "m2"), 200);
        });
        assert_eq!(woken, vec![key("a", "m2")]);
        // A member registering again as it was moves only the version: nobody is woken.
        let before = mesh.version();
        let woken = step(&mut mesh, &|m| {
            register(m, "b", "m3", Role::Member, "10.2.0.13")
        });
        assert!(mesh.version() > before);
        assert!(woken.is_empty(), "{woken:?}");
    }

    #[test]
    fn sessions_are_found_by_node_and_removed_by_id() {
        let mut s = Sessions::default();
        let a = s.insert(&key("a", "m1"), 1);
        let b = s.insert(&key("a", "m1"), 2);
        s.insert(&key("b", "gw"), 3);
        s.remove(&key("a", "m1"), a);
        s.remove(&key("a", "m1"), 99);
        assert_eq!(
            s.by_site["a"]["m1"].iter().map(|x| x.1).collect::<Vec<_>>(),
            vec![2]
        );
        s.remove(&key("a", "m1"), b);
        assert!(!s.by_site.contains_key("a"), "an empty site is dropped");
        assert_eq!(s.by_site.len(), 1);
    }
}
