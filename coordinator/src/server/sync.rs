//! Store sync, for coordinators sharing a store (HA): other coordinators' writes are
//! noticed by polling the store's generation and loaded off the registry lock, their views
//! published; and `Presence` (each coordinator's sessions' heartbeats) is exchanged, so
//! every coordinator knows which nodes are alive without a store write per heartbeat.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::{Coordinator, Core};
use crate::mesh::{NodeKey, Presence};
use crate::store::{StoreError, Watcher};

impl Coordinator {
    /// One round of the shared-store work: reloads when another coordinator wrote, and, if
    /// `presence` is due, records the heartbeats of this coordinator's sessions and takes
    /// the others'.
    fn sync_once(&self, s: &mut SyncState, presence: bool) {
        let outcome = self.sync_round(s, presence);
        match (&outcome, s.failing) {
            (Err(e), false) => {
                tracing::warn!(error = %e, "shared store unreachable; serving the registry as last loaded");
            }
            (Ok(()), true) => tracing::info!("shared store reachable again"),
            _ => {}
        }
        s.failing = outcome.is_err();
    }

    fn sync_round(&self, s: &mut SyncState, presence: bool) -> Result<(), StoreError> {
        let generation = s.watcher.generation()?;
        let behind = |core: &Core| core.store.generation().is_none_or(|seen| generation > seen);
        if behind(&self.core()) {
            // Read on the watcher's connection, without holding the registry lock.
            let (loaded, persisted) = s.watcher.load()?;
            let views = {
                let mut core = self.core();
                // A write through this coordinator meanwhile makes the snapshot old.
                if core.store.generation().is_none_or(|seen| loaded > seen) {
                    let before = core.mesh.version();
                    core.replace(&self.config, persisted);
                    core.store.adopt(loaded);
                    self.metrics.store_reloads.inc();
                    (core.mesh.version() != before).then(|| core.mesh.views())
                } else {
                    None
                }
            };
            if let Some(v) = views {
                tracing::debug!(
                    version = v.version,
                    "map changed through another coordinator"
                );
                self.publish(v);
            }
        }
        if !presence {
            return Ok(());
        }
        let keys: Vec<NodeKey> = self
            .sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .keys()
            .cloned()
            .collect();
        let rows: Vec<Presence> = {
            let core = self.core();
            keys.iter()
                .filter_map(|k| core.mesh.node(k))
                .map(|n| Presence {
                    site: n.site.clone(),
                    name: n.name.clone(),
                    last_seen: n.last_seen,
                    map_version: n.map_version,
                })
                .filter(|p| {
                    s.written.get(&(p.site.clone(), p.name.clone()))
                        != Some(&(p.last_seen, p.map_version))
                })
                .collect()
        };
        s.watcher.put_presence(&rows)?;
        let connected: std::collections::HashSet<&NodeKey> = keys.iter().collect();
        s.written.retain(|k, _| connected.contains(k));
        for p in rows {
            s.written
                .insert((p.site, p.name), (p.last_seen, p.map_version));
        }
        let all = s.watcher.presence()?;
        self.core().mesh.observe(&all);
        Ok(())
    }
}

/// The background work of a coordinator on a shared store.
struct SyncState {
    watcher: Box<dyn Watcher>,
    /// What this coordinator last recorded for each of its sessions.
    written: HashMap<NodeKey, (u64, u64)>,
    failing: bool,
}

/// How often a coordinator on a shared store records its sessions' heartbeats: a quarter
/// of the heartbeat timeout (so another coordinator never takes a live node for offline),
/// at most every 250 ms and at least every 2 s.
fn presence_interval(heartbeat_timeout: Duration) -> Duration {
    (heartbeat_timeout / 4).clamp(Duration::from_millis(250), Duration::from_secs(2))
}

/// Follows a shared store: other coordinators' changes are loaded and announced within a
/// poll interval; heartbeats are exchanged every [`presence_interval`].
pub(super) async fn sync_loop(c: Arc<Coordinator>, watcher: Box<dyn Watcher>) {
    let poll = watcher.poll_interval();
    let every = presence_interval(c.config.heartbeat_timeout);
    let state = Arc::new(Mutex::new(SyncState {
        watcher,
        written: HashMap::new(),
        failing: false,
    }));
    let mut next_presence = tokio::time::Instant::now();
    let mut ticks = tokio::time::interval(poll);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let now = tokio::time::Instant::now();
        let presence = now >= next_presence;
        if presence {
            next_presence = now + every;
        }
        let (c, state) = (c.clone(), state.clone());
        let _ = tokio::task::spawn_blocking(move || {
            let mut s = state.lock().unwrap_or_else(|p| p.into_inner());
            c.sync_once(&mut s, presence);
        })
        .await;
    }
}
