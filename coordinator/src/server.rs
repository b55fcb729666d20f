//! The coordinator's IO shell: QUIC with mutual TLS, one task per connection and per
//! stream, the registry behind one lock, map changes fanned out to the sessions they concern
//! (see [`crate::fanout`]). Decisions are made by the pure [`crate::handlers`]; this shell
//! moves bytes, reads the clock and the OS's randomness, persists the store operations the
//! handlers return and keeps the metrics.
//!
//! - `transport`: the endpoint, connection admission, handshakes, refusals, peers;
//! - `requests`: one request per stream, from its frame to its answer (probes included);
//! - `sessions`: agents' sessions;
//! - `sync`: following a store that other coordinators share.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result};
use strait_pki::tls::CertStore;
use strait_pki::Identity;
use strait_proto::msg::{close, ErrorBody, ErrorCode, Request, Response};

use crate::config::Config;
use crate::connlimit::Connections;
use crate::fanout::Fanout;
use crate::handlers::{unix, Pki};
use crate::mesh::{Mesh, NodeKey, StoreOp, Views};
use crate::metrics::CoordinatorMetrics;
use crate::probes::Probes;
use crate::ratelimit::FailureLimiter;
use crate::store::{Store, StoreError};

mod requests;
mod sessions;
mod sync;
mod transport;

use transport::Peer;
pub use transport::{bind, endpoint_config};

/// Why a revoked node's connection is closed, and what its operator does about it.
const REVOKED_REASON: &[u8] =
    b"certificate revoked; enroll this node again with a new join token (straitctl token create)";
/// How many times a change is made again after another coordinator sharing the store
/// changed it first.
const MAX_ATTEMPTS: u32 = 8;

/// Unix seconds now.
pub fn unix_now() -> u64 {
    unix(SystemTime::now())
}

struct Core {
    mesh: Mesh,
    store: Box<dyn Store>,
    /// A shared store's write failed and the registry could not be reloaded since: memory
    /// may hold a change the store does not, so nothing is announced until a reload.
    diverged: bool,
}

fn store_err(e: &StoreError) -> ErrorBody {
    ErrorBody::new(
        ErrorCode::Internal,
        format!("the coordinator could not persist the change: {e}"),
    )
}

impl Core {
    /// Replaces the registry with the store's (shared stores: another coordinator wrote),
    /// keeping the live data that is never stored.
    fn reload(&mut self, config: &Arc<Config>) -> Result<(), StoreError> {
        let persisted = self.store.load()?;
        self.replace(config, persisted);
        Ok(())
    }

    fn replace(&mut self, config: &Arc<Config>, persisted: crate::mesh::Persisted) {
        let mut mesh = Mesh::new(config.clone(), persisted);
        mesh.carry_live(&self.mesh);
        self.mesh = mesh;
        self.diverged = false;
    }

    /// Whether another coordinator sharing the store changed it, in which case the
    /// registry is reloaded (and true returned).
    fn refresh(&mut self, config: &Arc<Config>) -> bool {
        match self.store.changed_elsewhere() {
            Ok(true) => match self.reload(config) {
                Ok(()) => true,
                Err(e) => {
                    tracing::error!(error = %e, "reloading the shared store failed");
                    false
                }
            },
            Ok(false) => false,
            Err(e) => {
                tracing::warn!(error = %e, "cannot tell whether the shared store changed");
                false
            }
        }
    }

    /// Runs `f` and persists its ops. With a shared store, `f` runs again on the store's
    /// fresh state when another coordinator wrote first, and a refusal is checked against
    /// fresh state (the token it names may have just been created elsewhere). A store
    /// failure is logged and reported; with a private store, the in-memory registry
    /// already holds the change.
    fn run<T>(
        &mut self,
        config: &Arc<Config>,
        f: &mut impl FnMut(&mut Mesh) -> Result<(T, Vec<StoreOp>), ErrorBody>,
    ) -> Result<T, ErrorBody> {
        let mut attempt = 1;
        loop {
            let last = attempt >= MAX_ATTEMPTS;
            attempt += 1;
            let (out, ops) = match f(&mut self.mesh) {
                Ok(done) => done,
                Err(e) => {
                    if !last && self.store.is_shared() && self.refresh(config) {
                        continue;
                    }
                    return Err(e);
                }
            };
            match self.store.apply(&ops) {
                Ok(()) => {
                    // Only a write proves memory and store agree: no ops write nothing (a
                    // heartbeat must not clear what a failed write left diverged).
                    if !ops.is_empty() {
                        self.diverged = false;
                    }
                    return Ok(out);
                }
                Err(StoreError::Conflict) if !last => {
                    tracing::debug!(attempt, "another coordinator wrote first; reloading");
                    if let Err(e) = self.reload(config) {
                        // `f`'s change, made on stale state, is in memory only.
                        self.diverged = true;
                        tracing::error!(error = %e, "reloading the shared store failed");
                        return Err(store_err(&e));
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e, "store write failed");
                    if self.store.is_shared() {
                        // Do not keep (or announce) a change the store may not hold.
                        if let Err(e) = self.reload(config) {
                            self.diverged = true;
                            tracing::warn!(error = %e, "reloading the shared store failed; retrying in the background");
                        }
                    }
                    return Err(store_err(&e));
                }
            }
        }
    }
}

/// Shared state of a running coordinator.
pub struct Coordinator {
    config: Arc<Config>,
    core: Mutex<Core>,
    pki: Box<dyn Pki>,
    /// The views of the current map version; a change wakes the sessions it concerns.
    fanout: Fanout,
    sessions: Mutex<HashMap<NodeKey, quinn::Connection>>,
    /// Commands to agents for operators' probes, and their events.
    probes: Probes,
    pub metrics: CoordinatorMetrics,
    /// When the current map version was published (for the fan-out histogram).
    published: Mutex<(u64, std::time::Instant)>,
    /// This coordinator's own certificate (its expiry is exported).
    own_cert: std::sync::OnceLock<CertStore>,
    own_renewal: std::sync::OnceLock<(
        tokio::sync::watch::Receiver<strait_pki::renewal::RenewalState>,
        Arc<strait_pki::renewal::RenewalCounts>,
    )>,
    /// Bad join tokens per client address.
    enroll_failures: Mutex<FailureLimiter>,
    /// Open connections per source and in total (`[limits]`).
    connections: Mutex<Connections>,
    /// When a refused connection attempt was last logged at WARN, and how many were refused
    /// since.
    refusal_log: Mutex<(Option<std::time::Instant>, u64)>,
}

impl Coordinator {
    pub fn new(
        config: Arc<Config>,
        mut store: Box<dyn Store>,
        pki: Box<dyn Pki>,
    ) -> Result<Arc<Coordinator>> {
        let persisted = store.load().context("loading the store")?;
        let connections = Connections::new(
            config.limits.max_connections,
            config.limits.max_connections_per_address,
        );
        let mesh = Mesh::new(config.clone(), persisted);
        let fanout = Fanout::new(mesh.views());
        Ok(Arc::new(Coordinator {
            config,
            core: Mutex::new(Core {
                mesh,
                store,
                diverged: false,
            }),
            pki,
            fanout,
            sessions: Mutex::new(HashMap::new()),
            probes: Probes::default(),
            metrics: CoordinatorMetrics::default(),
            published: Mutex::new((0, std::time::Instant::now())),
            own_cert: std::sync::OnceLock::new(),
            own_renewal: std::sync::OnceLock::new(),
            enroll_failures: Mutex::new(crate::handlers::certs::enroll_failure_limiter()),
            connections: Mutex::new(connections),
            refusal_log: Mutex::new((None, 0)),
        }))
    }

    /// Exports the expiry of `certs`, this coordinator's certificate.
    pub fn watch_own_cert(&self, certs: CertStore) {
        let _ = self.own_cert.set(certs);
    }

    /// Exports the state and counts of this coordinator's certificate renewal.
    pub fn watch_own_renewal(
        &self,
        state: tokio::sync::watch::Receiver<strait_pki::renewal::RenewalState>,
        counts: Arc<strait_pki::renewal::RenewalCounts>,
    ) {
        let _ = self.own_renewal.set((state, counts));
    }

    fn enroll_failures(&self) -> std::sync::MutexGuard<'_, FailureLimiter> {
        self.enroll_failures
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// Records a state-changing request and its outcome in the store's append-only audit
    /// log and as a structured log line (target `strait::audit`). A store failure is
    /// logged at ERROR: the request has happened either way.
    fn audit(&self, peer: &Peer, identity: &Identity, request: &Request, response: &Response) {
        let actor = crate::audit::Actor {
            identity,
            serial: &peer.serial,
            from: peer.addr,
        };
        let Some(mut entry) =
            crate::audit::entry(&self.config.name, &actor, request, response, unix_now())
        else {
            return;
        };
        match self.core().store.append_audit(&entry) {
            Ok(seq) => entry.seq = seq,
            Err(e) => {
                tracing::error!(error = %e, request = %entry.request, operator = %entry.operator, "could not write the audit log");
            }
        }
        tracing::info!(
            target: "strait::audit",
            seq = entry.seq,
            operator = %entry.operator,
            serial = %entry.serial,
            from = %entry.from,
            request = %entry.request,
            ok = entry.ok,
            result = %entry.result,
            "audit"
        );
    }

    fn core(&self) -> std::sync::MutexGuard<'_, Core> {
        // A panic while holding the lock is a bug; the registry is still consistent
        // because every mutation completes before its ops are persisted.
        self.core.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs `f` on the core, persists its ops and announces a new version if it changed.
    /// With a shared store `f` may run more than once (each time on fresh state).
    fn mutate<T>(
        &self,
        mut f: impl FnMut(&mut Mesh) -> Result<(T, Vec<StoreOp>), ErrorBody>,
    ) -> Result<T, ErrorBody> {
        let (out, views) = {
            let mut core = self.core();
            let before = core.mesh.version();
            let out = core.run(&self.config, &mut f);
            let changed = core.mesh.version() != before && !core.diverged;
            (out, changed.then(|| core.mesh.views()))
        };
        if let Some(v) = views {
            self.publish(v);
        }
        out
    }

    /// Puts a new `[policy]` in force (the config file reloaded on SIGHUP): checked against
    /// the sites and overlay this coordinator runs with, then a new map version carries it
    /// to every node. Returns that version.
    pub fn reload_policy(&self, policy: crate::access::PolicyConfig) -> Result<u64> {
        let mut config = (*self.config).clone();
        config.policy = policy;
        let policy = crate::access::Policy::build(&config)?;
        self.mutate(|mesh| Ok(((), mesh.set_access_policy(policy.clone()))))
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        Ok(self.core().mesh.version())
    }

    /// Announces `v` to the sessions unless a newer version is out already.
    fn publish(&self, v: Arc<Views>) {
        // Two mutations may finish in either order after releasing the lock; never let an
        // older version replace a newer one.
        let version = v.version;
        if self.fanout.publish(v) {
            *self.published.lock().unwrap_or_else(|p| p.into_inner()) =
                (version, std::time::Instant::now());
            self.metrics.map_version.set(version as i64);
        }
    }
}

/// Serves until `shutdown` completes.
pub async fn serve(
    coordinator: Arc<Coordinator>,
    endpoint: quinn::Endpoint,
    shutdown: impl Future<Output = ()>,
) -> Result<()> {
    let ticker = tokio::spawn(tick_loop(coordinator.clone()));
    let settle = {
        let c = coordinator.clone();
        tokio::spawn(async move { c.fanout.settle_loop().await })
    };
    let watcher = coordinator.core().store.watcher();
    let sync = watcher.map(|w| {
        tracing::info!(
            poll = ?w.poll_interval(),
            "shared store: following changes made through other coordinators"
        );
        tokio::spawn(sync::sync_loop(coordinator.clone(), w))
    });
    let scheduled = coordinator
        .config
        .throughput_probes
        .clone()
        .map(|t| tokio::spawn(requests::throughput_schedule(coordinator.clone(), t)));
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            incoming = endpoint.accept() => {
                let Some(incoming) = incoming else { break };
                transport::accept(&coordinator, incoming);
            }
            _ = &mut shutdown => break,
        }
    }
    ticker.abort();
    settle.abort();
    if let Some(s) = sync {
        s.abort();
    }
    if let Some(s) = scheduled {
        s.abort();
    }
    endpoint.close(close::SHUTDOWN.into(), b"coordinator shutting down");
    let _ = tokio::time::timeout(Duration::from_secs(2), endpoint.wait_idle()).await;
    Ok(())
}

async fn tick_loop(c: Arc<Coordinator>) {
    let mut every = tokio::time::interval(Duration::from_secs(1));
    loop {
        every.tick().await;
        let now = unix_now();
        let _ = c.mutate(|mesh| Ok(((), mesh.tick(now))));
        let (total, online) = c.core().mesh.node_counts();
        c.metrics.nodes_total.set(total as i64);
        c.metrics.nodes_online.set(online as i64);
        if let Some(certs) = c.own_cert.get() {
            c.metrics
                .cert_expiry
                .set(unix(certs.bundle().not_after) as f64);
        }
        if let Some((state, counts)) = c.own_renewal.get() {
            let name = state.borrow().name();
            c.metrics
                .own_renewal(name, counts.renewed(), counts.failed());
        }
    }
}
