//! What differs between two versions of the views, as far as nodes' maps go: which maps a
//! new version can concern. The server wakes only those nodes' sessions; every other
//! session's map is unchanged but for its version.

use std::collections::BTreeSet;
use std::sync::Arc;

use super::{NodeKey, Views};

/// The parts of the maps that differ between two [`Views`] (see [`Views::changes`]).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Changes {
    /// Sites with a peer added, removed or changed: every tunnel node of another site sees it.
    pub peer_sites: BTreeSet<String>,
    /// Sites whose members' routes changed.
    pub route_sites: BTreeSet<String>,
    /// Sites whose access policy changed: every tunnel node of the site enforces it.
    pub access_sites: BTreeSet<String>,
    /// Nodes whose own part changed, that became or stopped being tunnel nodes, or that
    /// were added or removed.
    pub nodes: BTreeSet<NodeKey>,
}

impl Changes {
    /// Whether no node's map differs but for its version.
    pub fn is_empty(&self) -> bool {
        self.peer_sites.is_empty()
            && self.route_sites.is_empty()
            && self.access_sites.is_empty()
            && self.nodes.is_empty()
    }

    /// Whether the map of node `key` may differ, `next` being the newer views.
    pub fn concerns(&self, key: &NodeKey, next: &Views) -> bool {
        if self.nodes.contains(key) {
            return true;
        }
        match next.nodes.get(key) {
            Some((_, true)) => {
                self.peer_sites.iter().any(|s| *s != key.0) || self.access_sites.contains(&key.0)
            }
            Some((_, false)) => self.route_sites.contains(&key.0),
            // Not registered in either version (a removed node is in `nodes`).
            None => false,
        }
    }
}

impl Views {
    /// The registered nodes.
    pub fn keys(&self) -> impl Iterator<Item = &NodeKey> {
        self.nodes.keys()
    }

    /// What differs from these views to `next`. Parts shared by pointer (see
    /// `Mesh::rebuild_views`) are skipped without comparing them, so this is a walk of
    /// pointers for everything that did not change.
    pub fn changes(&self, next: &Views) -> Changes {
        let mut changes = Changes::default();
        merge(
            self.peers.iter().map(|p| (&p.id, p)),
            next.peers.iter().map(|p| (&p.id, p)),
            |a, b| Arc::ptr_eq(a, b) || a == b,
            |p| {
                changes.peer_sites.insert(p.site.clone());
            },
        );
        merge(
            self.site_routes.iter(),
            next.site_routes.iter(),
            |a, b| Arc::ptr_eq(a, b) || a == b,
            |_| {},
        )
        .into_iter()
        .for_each(|site| {
            changes.route_sites.insert(site.clone());
        });
        merge(
            self.site_access.iter(),
            next.site_access.iter(),
            |a, b| Arc::ptr_eq(a, b) || a == b,
            |_| {},
        )
        .into_iter()
        .for_each(|site| {
            changes.access_sites.insert(site.clone());
        });
        merge(
            self.nodes.iter(),
            next.nodes.iter(),
            |(a, at), (b, bt)| at == bt && (Arc::ptr_eq(a, b) || a == b),
            |_| {},
        )
        .into_iter()
        .for_each(|key| {
            changes.nodes.insert(key.clone());
        });
        changes
    }
}

/// Walks two sequences of `(id, entry)` sorted by id, calls `changed` with every entry
/// present in only one of them and with both entries of an id whose entries are not `same`,
/// and returns the ids of all those.
fn merge<'a, K: Ord + ?Sized + 'a, T: 'a>(
    old: impl Iterator<Item = (&'a K, &'a T)>,
    new: impl Iterator<Item = (&'a K, &'a T)>,
    same: impl Fn(&T, &T) -> bool,
    mut changed: impl FnMut(&T),
) -> Vec<&'a K> {
    let mut ids = Vec::new();
    let (mut old, mut new) = (old.peekable(), new.peekable());
    loop {
        let order = match (old.peek(), new.peek()) {
            (Some(a), Some(b)) => a.0.cmp(b.0),
            (Some(_), None) => std::cmp::Ordering::Less,
            (None, Some(_)) => std::cmp::Ordering::Greater,
            (None, None) => break,
        };
        match order {
            std::cmp::Ordering::Equal => {
                let ((id, a), (_, b)) = (old.next().expect("peeked"), new.next().expect("peeked"));
                if !same(a, b) {
                    changed(a);
                    changed(b);
                    ids.push(id);
                }
            }
            std::cmp::Ordering::Less => {
                let (id, a) = old.next().expect("peeked");
                changed(a);
                ids.push(id);
            }
            std::cmp::Ordering::Greater => {
                let (id, b) = new.next().expect("peeked");
                changed(b);
                ids.push(id);
            }
        }
    }
    ids
}
