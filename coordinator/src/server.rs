//! The coordinator's IO shell: QUIC with mutual TLS, one task per connection and per
//! stream, the registry behind one lock, map changes fanned out to the sessions they concern
//! (see [`crate::fanout`]).

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result};
use quinn::{RecvStream, SendStream};
use strait_pki::ca::{BuiltinCa, Validity};
use strait_pki::material::{certs_to_pem, CertInfo};
use strait_pki::tls::{self, CertStore, ClientAuth};
use strait_pki::token::{random_token_bytes, JoinToken};
use strait_pki::{Identity, Role};
use strait_proto::frame::MAX_FRAME;
use strait_proto::msg::{
    close, AgentEvent, EnrollRequest, ErrorBody, ErrorCode, Registration, Request, Response,
    SessionEvent, TokenCreated,
};
use strait_proto::probe::{mbit_per_s, ProbeRequest};
use strait_proto::{io as wire, ALPN};
use tokio::sync::mpsc;

use crate::config::Config;
use crate::connlimit::{self, Connections, Over};
use crate::fanout::Fanout;
use crate::mesh::{CoreError, IssuedCert, Mesh, NodeKey, Presence, ProbePair, StoreOp, Views};
use crate::metrics::{CoordinatorMetrics, Refusal};
use crate::probes::{self, Probes};
use crate::ratelimit::FailureLimiter;
use crate::store::{Store, StoreError, Watcher};

/// Largest request an unauthenticated peer may send (a token and a CSR).
const MAX_ANONYMOUS_FRAME: usize = 16 << 10;
/// Streams a connection may have open at once: an agent uses two at most (its session and a
/// renewal), straitctl one. quinn keeps per-connection state for each allowed stream (16
/// cost 1 KiB more per connection than 4, measured with heaptrack).
const MAX_STREAMS_PER_CONNECTION: u32 = 4;
/// Why a revoked node's connection is closed, and what its operator does about it.
const REVOKED_REASON: &[u8] =
    b"certificate revoked; enroll this node again with a new join token (straitctl token create)";
/// How long a session that the coordinator ends waits for the agent to read why.
const SESSION_LINGER: Duration = Duration::from_secs(2);
/// How long a client may take to finish its handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshakes in progress above which clients must first prove their address with a QUIC
/// Retry (one round trip; a spoofed source address cannot answer it).
const HANDSHAKES_BEFORE_RETRY: u32 = 256;
/// Connection attempts quinn queues before the accept loop sees them; past this they are
/// refused by quinn itself. The loop decides on each at once, so the queue stays short.
const MAX_INCOMING: usize = 1024;
/// Bytes buffered per queued connection attempt (beyond its first packet), and in all.
const INCOMING_BUFFER: u64 = 64 << 10;
const INCOMING_BUFFER_TOTAL: u64 = 16 << 20;
/// How often, at most, refused connection attempts are logged at WARN (a flood would
/// otherwise fill the log; each refusal is counted and logged at DEBUG).
const REFUSAL_LOG_EVERY: Duration = Duration::from_secs(10);
/// How many times a change is made again after another coordinator sharing the store
/// changed it first.
const MAX_ATTEMPTS: u32 = 8;

/// Unix seconds now.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The coordinator's PKI.
pub enum Pki {
    /// The built-in mesh CA, whose key is in the state directory.
    Builtin { ca: Box<BuiltinCa> },
    /// Vault's PKI engine: agents get certificates from Vault; the coordinator only trusts
    /// its CA and cannot enroll, renew or create join tokens.
    Vault,
}

impl Pki {
    fn name(&self) -> &'static str {
        match self {
            Pki::Builtin { .. } => "builtin",
            Pki::Vault => "vault",
        }
    }

    fn builtin(&self, what: &str) -> Result<&BuiltinCa, Box<Response>> {
        match self {
            Pki::Builtin { ca } => Ok(ca),
            Pki::Vault => Err(Box::new(error(
                ErrorCode::Unsupported,
                format!("{what} is not available: this coordinator uses Vault's PKI, so nodes get certificates from Vault"),
            ))),
        }
    }
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
                    self.diverged = false;
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
    pki: Pki,
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

/// Bad join tokens an address may present at once, then one more per
/// [`ENROLL_FAILURE_EVERY`] (a mistyped token is fine; guessing is not).
pub const ENROLL_FAILURE_BURST: u32 = 10;
pub const ENROLL_FAILURE_EVERY: Duration = Duration::from_secs(6);

impl Coordinator {
    pub fn new(
        config: Arc<Config>,
        mut store: Box<dyn Store>,
        pki: Pki,
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
            enroll_failures: Mutex::new(FailureLimiter::new(
                ENROLL_FAILURE_BURST,
                ENROLL_FAILURE_EVERY,
                100_000,
            )),
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

    /// Admits a connection from `ip` (see [`connlimit`]); the slot releases it on drop.
    fn admit(self: &Arc<Self>, ip: std::net::IpAddr) -> Result<ConnectionSlot, Over> {
        let mut conns = self.connections.lock().unwrap_or_else(|p| p.into_inner());
        conns.admit(ip)?;
        self.metrics.connections.set(i64::from(conns.total()));
        Ok(ConnectionSlot {
            c: self.clone(),
            ip,
        })
    }

    /// Counts and logs a connection attempt refused for `over`.
    fn refused_over(&self, remote: SocketAddr, over: Over) {
        let why = match over {
            Over::Total { .. } => Refusal::TooManyConnections,
            Over::Source { .. } => Refusal::TooManyFromAddress,
        };
        self.refused_attempt(
            remote,
            why,
            &over,
            "raise [limits] in the config if these are real agents",
        );
    }

    /// Counts a refused connection attempt (over the limits, or a failed handshake) and
    /// logs it at DEBUG, and at WARN at most every [`REFUSAL_LOG_EVERY`] with how many were
    /// refused since: a flood of attempts must not flood the log.
    fn refused_attempt(
        &self,
        remote: SocketAddr,
        why: Refusal,
        detail: &dyn std::fmt::Display,
        advice: &str,
    ) {
        self.metrics.refused(why);
        tracing::debug!(%remote, reason = why.label(), %detail, "connection attempt refused");
        let now = std::time::Instant::now();
        let mut log = self.refusal_log.lock().unwrap_or_else(|p| p.into_inner());
        log.1 += 1;
        if log
            .0
            .is_none_or(|at| now.duration_since(at) >= REFUSAL_LOG_EVERY)
        {
            tracing::warn!(%remote, reason = why.label(), %detail, refused = log.1, "refusing connection attempts (this one and the count since the last such line; each is logged at DEBUG): {advice}");
            *log = (Some(now), 0);
        }
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

/// An admitted connection's place in the limits; released when dropped.
struct ConnectionSlot {
    c: Arc<Coordinator>,
    ip: std::net::IpAddr,
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        let mut conns = self.c.connections.lock().unwrap_or_else(|p| p.into_inner());
        conns.release(self.ip);
        self.c.metrics.connections.set(i64::from(conns.total()));
    }
}

/// Counts a handshake in progress while alive (`strait_coordinator_handshakes`).
struct Handshaking(prometheus_client::metrics::gauge::Gauge);

impl Handshaking {
    fn new(n: &prometheus_client::metrics::gauge::Gauge) -> Self {
        n.inc();
        Handshaking(n.clone())
    }
}

impl Drop for Handshaking {
    fn drop(&mut self) {
        self.0.dec();
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
async fn sync_loop(c: Arc<Coordinator>, watcher: Box<dyn Watcher>) {
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

fn core_err(e: CoreError) -> ErrorBody {
    ErrorBody::new(e.code(), e.to_string())
}

/// Length of the secret behind the endpoint's stateless resets and connection IDs.
const ENDPOINT_SECRET_LEN: usize = 32;

/// The QUIC endpoint settings that must survive a restart, from the secret in `path`
/// (created, random and 0600, when missing): the key authenticating stateless resets and the
/// key of the connection IDs. A coordinator restarted after a crash then recognises the
/// connection IDs of its previous run and answers their packets with a stateless reset the
/// agents can verify, and they reconnect at once. With new keys it would drop those packets
/// as noise, and every agent would wait for its idle timeout (30 s) before reconnecting.
pub fn endpoint_config(path: &std::path::Path) -> Result<quinn::EndpointConfig> {
    let secret = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut bytes = vec![0u8; ENDPOINT_SECRET_LEN];
            ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)
                .map_err(|_| anyhow::anyhow!("no randomness for the QUIC endpoint secret"))?;
            strait_pki::material::write_file(path, &bytes, 0o600)?;
            bytes
        }
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    if secret.len() != ENDPOINT_SECRET_LEN {
        anyhow::bail!(
            "{} holds {} bytes instead of {ENDPOINT_SECRET_LEN}; remove it and a new one is made",
            path.display(),
            secret.len()
        );
    }
    let derive = |label: &[u8]| {
        ring::hmac::sign(
            &ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &secret),
            label,
        )
    };
    let reset = derive(b"strait quic stateless reset");
    let cid = derive(b"strait quic connection ids");
    let mut cid_key = [0u8; 8];
    cid_key.copy_from_slice(&cid.as_ref()[..8]);
    let cid_key = u64::from_le_bytes(cid_key);
    let mut config = quinn::EndpointConfig::new(Arc::new(ring::hmac::Key::new(
        ring::hmac::HMAC_SHA256,
        reset.as_ref(),
    )));
    config.cid_generator(move || {
        Box::new(quinn_proto::HashedConnectionIdGenerator::from_key(cid_key))
    });
    Ok(config)
}

/// Binds the QUIC endpoint presenting `certs` and trusting client certificates from `cas`,
/// with `endpoint` from [`endpoint_config`].
pub fn bind(
    listen: SocketAddr,
    certs: CertStore,
    cas: &[rustls_pki_types::CertificateDer<'static>],
    endpoint: quinn::EndpointConfig,
) -> Result<quinn::Endpoint> {
    let tls = tls::server_config(cas, certs, ClientAuth::OptionalForEnrollment, ALPN)?;
    let mut server = tls::quic_server_config(tls)?;
    server
        .max_incoming(MAX_INCOMING)
        .incoming_buffer_size(INCOMING_BUFFER)
        .incoming_buffer_size_total(INCOMING_BUFFER_TOTAL);
    let mut transport = quinn::TransportConfig::default();
    transport
        .max_concurrent_bidi_streams(MAX_STREAMS_PER_CONNECTION.into())
        .max_concurrent_uni_streams(0u32.into())
        // Control messages are small; modest windows keep per-connection memory low.
        .stream_receive_window((256u32 << 10).into())
        .receive_window((1u32 << 20).into())
        .send_window(1 << 20)
        // No UDP GSO: control traffic is a few datagrams at a time, and with GSO every
        // connection keeps a send buffer for a whole batch (about 13 KiB each, 65 MB at
        // 5,000 agents; measured with heaptrack).
        .enable_segmentation_offload(false)
        // Datagrams stay at QUIC's minimum size (1,200 bytes): with path MTU discovery every
        // connection's send buffer grew from 1,200 to 2,400 bytes (heaptrack: 11.7 MiB at
        // 5,000 agents), for control messages that fit a datagram or a few anyway.
        .mtu_discovery_config(None)
        .max_idle_timeout(Some(
            Duration::from_secs(30).try_into().context("idle timeout")?,
        ));
    server.transport_config(Arc::new(transport));
    let socket =
        std::net::UdpSocket::bind(listen).with_context(|| format!("binding UDP {listen}"))?;
    let runtime = quinn::default_runtime().context("no async runtime for QUIC")?;
    quinn::Endpoint::new(endpoint, Some(server), socket, runtime)
        .with_context(|| format!("serving QUIC on UDP {listen}"))
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
        tokio::spawn(sync_loop(coordinator.clone(), w))
    });
    let scheduled = coordinator
        .config
        .throughput_probes
        .clone()
        .map(|t| tokio::spawn(throughput_schedule(coordinator.clone(), t)));
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            incoming = endpoint.accept() => {
                let Some(incoming) = incoming else { break };
                accept(&coordinator, incoming);
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

/// Decides on a connection attempt at once: refused over the limits (no TLS work done),
/// asked to prove its address when many handshakes are in progress, or admitted and handed
/// to its own task.
fn accept(coordinator: &Arc<Coordinator>, incoming: quinn::Incoming) {
    let remote = incoming.remote_address();
    let slot = match coordinator.admit(remote.ip()) {
        Ok(slot) => slot,
        Err(over) => {
            coordinator.refused_over(remote, over);
            incoming.refuse();
            return;
        }
    };
    let busy = coordinator.metrics.handshakes.get() >= i64::from(HANDSHAKES_BEFORE_RETRY);
    if busy && !incoming.remote_address_validated() {
        drop(slot);
        coordinator.metrics.address_validations.inc();
        tracing::debug!(%remote, "many handshakes in progress: asking the client to prove its address");
        if let Err(e) = incoming.retry() {
            e.into_incoming().ignore();
        }
        return;
    }
    let c = coordinator.clone();
    // Counted here, not in the task: the next connection attempt's `busy` must see it.
    let handshaking = Handshaking::new(&c.metrics.handshakes);
    // Boxed, and made outside the connection's task: the handshake's state (the incoming
    // connection alone is 384 bytes) is large and over once it is done; inside the task it
    // would size the task for the connection's whole life (968 bytes instead of 592,
    // measured with -Zprint-type-sizes).
    let handshake = {
        Box::pin(async move {
            let _handshaking = handshaking;
            match incoming.accept() {
                Ok(connecting) => tokio::time::timeout(HANDSHAKE_TIMEOUT, connecting).await,
                Err(e) => Ok(Err(e)),
            }
        })
    };
    tokio::spawn(async move {
        let _slot = slot;
        let conn = handshake.await;
        match conn {
            Ok(Ok(conn)) => handle_connection(c, conn).await,
            Ok(Err(e)) => {
                let why = crate::handshake::refusal(&e);
                c.refused_attempt(
                    remote,
                    why,
                    &e,
                    "the client's certificate must come from this mesh's CA and be valid now",
                );
            }
            Err(_) => {
                let detail = format!("handshake not finished within {HANDSHAKE_TIMEOUT:?}");
                c.refused_attempt(
                    remote,
                    Refusal::HandshakeTimeout,
                    &detail,
                    "a client that starts a handshake must finish it",
                );
            }
        }
    });
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

/// Who is on the other end of a connection.
#[derive(Clone, Debug)]
struct Peer {
    identity: Option<Identity>,
    serial: String,
    not_after: u64,
    addr: SocketAddr,
}

fn peer_of(conn: &quinn::Connection) -> Result<Peer, String> {
    let identity = tls::peer_identity(conn).map_err(|e| e.to_string())?;
    let (serial, not_after) = match tls::peer_certificate(conn) {
        Some(info) => (info.serial, unix(info.not_after)),
        None => (String::new(), 0),
    };
    Ok(Peer {
        identity,
        serial,
        not_after,
        addr: conn.remote_address(),
    })
}

async fn handle_connection(c: Arc<Coordinator>, conn: quinn::Connection) {
    let peer = match peer_of(&conn) {
        Ok(p) => p,
        Err(e) => {
            c.metrics.refused(Refusal::BadIdentity);
            tracing::warn!(remote = %conn.remote_address(), error = %e, "refused: unusable certificate");
            conn.close(close::BAD_IDENTITY.into(), e.as_bytes());
            return;
        }
    };
    if let Some(id) = &peer.identity {
        if id.mesh() != c.config.mesh {
            c.metrics.refused(Refusal::OtherMesh);
            tracing::warn!(remote = %peer.addr, identity = %id, "refused: certificate of another mesh");
            conn.close(
                close::BAD_IDENTITY.into(),
                b"certificate is for another mesh",
            );
            return;
        }
        if c.core().mesh.is_revoked(&peer.serial) {
            c.metrics.refused(Refusal::Revoked);
            tracing::warn!(remote = %peer.addr, identity = %id, serial = %peer.serial, "refused: revoked certificate");
            conn.close(close::REVOKED.into(), REVOKED_REASON);
            return;
        }
    }
    tracing::debug!(remote = %peer.addr, identity = ?peer.identity.as_ref().map(|i| i.to_string()), "connection");
    let anonymous = peer.identity.is_none();
    let streams = async {
        while let Ok((send, recv)) = conn.accept_bi().await {
            let (c, conn, peer) = (c.clone(), conn.clone(), peer.clone());
            tokio::spawn(async move { handle_stream(c, conn, peer, send, recv).await });
        }
    };
    if !anonymous {
        streams.await;
        return;
    }
    // Without a certificate a connection may only enroll, which takes one request.
    let lifetime = c.config.limits.anonymous_lifetime;
    if tokio::time::timeout(lifetime, streams).await.is_err() {
        c.metrics.refused(Refusal::AnonymousLifetime);
        tracing::debug!(remote = %peer.addr, "closing a connection without a certificate after {lifetime:?}");
        let reason = format!(
            "connections without a client certificate last at most {}; enroll on a new connection",
            humantime::format_duration(lifetime)
        );
        conn.close(close::LIMIT.into(), reason.as_bytes());
    }
}

async fn respond(send: &mut SendStream, response: &Response) {
    if wire::write(send, response).await.is_ok() {
        let _ = send.finish();
        let _ = tokio::time::timeout(Duration::from_secs(5), send.stopped()).await;
    }
}

fn error(code: ErrorCode, message: impl Into<String>) -> Response {
    Response::Error(ErrorBody::new(code, message))
}

async fn handle_stream(
    c: Arc<Coordinator>,
    conn: quinn::Connection,
    peer: Peer,
    mut send: SendStream,
    mut recv: RecvStream,
) {
    let limit = if peer.identity.is_some() {
        MAX_FRAME
    } else {
        MAX_ANONYMOUS_FRAME
    };
    let request: Request =
        match tokio::time::timeout(Duration::from_secs(10), wire::read(&mut recv, limit)).await {
            Ok(Ok(Some(r))) => r,
            Ok(Ok(None)) => return,
            Ok(Err(e)) => {
                c.metrics.refused(Refusal::BadFrame);
                tracing::warn!(remote = %peer.addr, error = %e, "refused: bad request frame");
                respond(
                    &mut send,
                    &error(ErrorCode::BadRequest, format!("bad request: {e}")),
                )
                .await;
                return;
            }
            Err(_) => {
                respond(
                    &mut send,
                    &error(ErrorCode::BadRequest, "no request within 10 s"),
                )
                .await;
                return;
            }
        };
    let kind = request.kind();
    c.metrics.request(kind);
    let identity = match (&peer.identity, &request) {
        (_, Request::Enroll(req)) => {
            let r = enroll(&c, req, peer.addr.ip());
            respond(&mut send, &r).await;
            if peer.identity.is_none() && matches!(r, Response::Enrolled { .. }) {
                // The node comes back with its certificate; nothing else is allowed here.
                conn.close(
                    close::SHUTDOWN.into(),
                    b"enrolled; connect again with the new certificate",
                );
            }
            return;
        }
        (Some(id), _) => id.clone(),
        (None, _) => {
            c.metrics.refused(Refusal::Unauthenticated);
            tracing::warn!(remote = %peer.addr, request = kind, "refused: no client certificate");
            let r = error(
                ErrorCode::Unauthenticated,
                format!("{kind} needs a client certificate; without one only enrollment with a join token is allowed"),
            );
            respond(&mut send, &r).await;
            return;
        }
    };
    if let Err(denied) = crate::audit::authorize(&identity, &request) {
        let reason = match denied {
            crate::audit::Denied::NotOperator => "not an operator",
            crate::audit::Denied::Role { .. } => "operator role too low",
        };
        c.metrics.refused(match denied {
            crate::audit::Denied::NotOperator => Refusal::NotOperator,
            crate::audit::Denied::Role { .. } => Refusal::OperatorRole,
        });
        tracing::warn!(remote = %peer.addr, identity = %identity, request = kind, "refused: {reason}");
        let r = Response::Error(denied.body(kind, &identity));
        c.audit(&peer, &identity, &request, &r);
        respond(&mut send, &r).await;
        return;
    }
    // What the audit log needs of the request, before it is taken apart.
    let audited = request.audit_summary().is_some().then(|| request.clone());
    let response = match request {
        Request::Enroll(_) => unreachable!("handled above"),
        Request::Subscribe(reg) => {
            // A session lasts as long as its agent: it gets a task of its own that holds
            // only what a session needs, not this task's request handling (2,832 bytes per
            // session before, measured with -Zprint-type-sizes).
            let opened = Opened {
                serial: peer.serial,
                not_after: peer.not_after,
                reg: Box::new(reg),
            };
            tokio::spawn(session(c, conn, identity, opened, send, recv));
            return;
        }
        Request::Probe(req) => {
            // Boxed: a probe's future is large, and inline it would size every stream's
            // task, sessions included (4,272 bytes instead of 2,528, measured).
            Box::pin(probe(&c, &identity, req, &mut send)).await;
            return;
        }
        Request::Renew { csr_pem } => renew(&c, &identity, &csr_pem),
        Request::Status => Response::Status(c.core().mesh.status(c.pki.name())),
        Request::Nodes => Response::Nodes {
            nodes: c.core().mesh.nodes(),
        },
        Request::Routes => Response::Routes {
            routes: c.core().mesh.routes(),
        },
        Request::Links => Response::Links {
            links: c.core().mesh.links(),
        },
        Request::Graph => Response::Graph(c.core().mesh.graph()),
        Request::CreateToken {
            site,
            role,
            ttl_secs,
        } => create_token(&c, &site, role, ttl_secs),
        Request::Revoke { node } => revoke(&c, &node),
        Request::RotateKey { node } => rotate_key(&c, &node).await,
        Request::ExternalPeerConfig { name } => match c.core().mesh.external_peer_config(&name) {
            Ok(config) => Response::ExternalPeerConfig { config },
            Err(e) => Response::Error(core_err(e)),
        },
        Request::Policy => Response::Policy(c.core().mesh.policy_view()),
        Request::CreateOperator {
            name,
            role,
            csr_pem,
            ttl_secs,
        } => create_operator(&c, &name, role, &csr_pem, ttl_secs),
        Request::Audit { limit, before } => {
            let limit = limit.clamp(1, MAX_AUDIT_ENTRIES);
            match c.core().store.audit(limit, before) {
                Ok(entries) => Response::Audit { entries },
                Err(e) => Response::Error(store_err(&e)),
            }
        }
    };
    if let Response::Error(e) = &response {
        tracing::info!(identity = %identity, request = kind, error = %e, "request refused");
    }
    if let Some(request) = &audited {
        c.audit(&peer, &identity, request, &response);
    }
    respond(&mut send, &response).await;
}

/// Audit entries one `straitctl audit` may ask for.
const MAX_AUDIT_ENTRIES: u32 = 1000;

/// The longest life of an operator certificate made by `straitctl operator create`.
const MAX_OPERATOR_LIFETIME: Duration = crate::init::OPERATOR_LIFETIME;

/// An operator certificate for `name` with `role`, signed from the operator's CSR (the key
/// never leaves the operator's machine).
fn create_operator(
    c: &Coordinator,
    name: &str,
    role: strait_pki::OperatorRole,
    csr_pem: &str,
    ttl_secs: u64,
) -> Response {
    let ca = match c.pki.builtin("creating operator certificates") {
        Ok(ca) => ca,
        Err(r) => return *r,
    };
    let lifetime = Duration::from_secs(ttl_secs);
    if lifetime < Duration::from_secs(60) || lifetime > MAX_OPERATOR_LIFETIME {
        return error(
            ErrorCode::BadRequest,
            format!(
                "--ttl {ttl_secs}s: an operator certificate lasts from 1m to {}",
                humantime::format_duration(MAX_OPERATOR_LIFETIME)
            ),
        );
    }
    let identity = match Identity::operator(&c.config.mesh, name, role) {
        Ok(i) => i,
        Err(e) => return error(ErrorCode::BadRequest, e.to_string()),
    };
    let leaf = match ca.sign_csr(csr_pem, &identity, Validity::for_lifetime(lifetime)) {
        Ok(leaf) => leaf,
        Err(e) => return error(ErrorCode::BadRequest, e.to_string()),
    };
    let info = match CertInfo::parse(&leaf) {
        Ok(info) => info,
        Err(e) => return error(ErrorCode::Internal, e.to_string()),
    };
    tracing::info!(identity = %identity, serial = %info.serial, "operator certificate issued");
    Response::OperatorCreated {
        cert_pem: certs_to_pem(&[leaf]),
        ca_pem: ca.cert_pem().to_string(),
        identity: identity.dns_name(),
        serial: info.serial,
        expires_at: unix(info.not_after),
    }
}

/// An operator's probe: validated here, run by the agents, each event relayed on `send`
/// as it comes, then `ProbeDone` (or the error).
async fn probe(
    c: &Arc<Coordinator>,
    identity: &Identity,
    req: ProbeRequest,
    send: &mut SendStream,
) {
    if let Err(message) = req.validate() {
        respond(send, &error(ErrorCode::BadRequest, message)).await;
        return;
    }
    let pair = c.core().mesh.probe_pair(&req.from, &req.to);
    let pair = match pair {
        Ok(p) => p,
        Err(e) => {
            tracing::info!(identity = %identity, error = %e, "probe refused");
            respond(send, &Response::Error(core_err(e))).await;
            return;
        }
    };
    tracing::info!(identity = %identity, from = %pair.a_id, to = %pair.b_id, throughput = ?req.throughput_secs, "probe");
    let (tx, mut rx) = mpsc::channel(64);
    let work = run_probe(c, &pair, &req, tx);
    tokio::pin!(work);
    let result = loop {
        tokio::select! {
            r = &mut work => break r,
            Some(response) = rx.recv() => {
                if wire::write(send, &response).await.is_err() {
                    return; // the operator left; the agents finish on their own
                }
            }
        }
    };
    while let Ok(response) = rx.try_recv() {
        if wire::write(send, &response).await.is_err() {
            return;
        }
    }
    let last = match result {
        Ok(()) => Response::ProbeDone,
        Err(e) => {
            tracing::info!(identity = %identity, error = %e, "probe failed");
            Response::Error(e)
        }
    };
    respond(send, &last).await;
}

async fn run_probe(
    c: &Coordinator,
    pair: &ProbePair,
    req: &ProbeRequest,
    out: mpsc::Sender<Response>,
) -> Result<(), ErrorBody> {
    match req.throughput_secs {
        None => probes::ping(&c.probes, pair, req.count, req.interval_ms, &out).await,
        Some(secs) => {
            let m = probes::throughput(&c.probes, pair, secs, &out).await?;
            let mbps = mbit_per_s(m.bytes, m.elapsed_ms);
            c.core()
                .mesh
                .record_throughput(&pair.a, &pair.b_id, mbps, unix_now());
            tracing::info!(from = %pair.a_id, to = %pair.b_id, mbps, bytes = m.bytes, "throughput measured");
            Ok(())
        }
    }
}

/// Scheduled throughput probes: every `interval`, the next pair of online tunnel peers.
async fn throughput_schedule(c: Arc<Coordinator>, t: crate::config::ThroughputProbes) {
    let mut every = tokio::time::interval_at(tokio::time::Instant::now() + t.interval, t.interval);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last: Option<(String, String)> = None;
    let secs = t.duration.as_secs() as u32;
    loop {
        every.tick().await;
        let pair = {
            let core = c.core();
            let pairs = core.mesh.tunnel_pairs();
            probes::next_pair(&pairs, last.as_ref())
                .cloned()
                .and_then(|(a, b)| core.mesh.probe_pair(&a, &b).ok().map(|p| ((a, b), p)))
        };
        let Some((ids, pair)) = pair else { continue };
        last = Some(ids);
        let (tx, mut rx) = mpsc::channel(64);
        let drain = tokio::spawn(async move { while rx.recv().await.is_some() {} });
        let req = ProbeRequest {
            from: pair.a_id.clone(),
            to: pair.b_id.clone(),
            count: 0,
            interval_ms: 0,
            throughput_secs: Some(secs),
        };
        if let Err(e) = run_probe(&c, &pair, &req, tx).await {
            tracing::warn!(from = %pair.a_id, to = %pair.b_id, error = %e, "scheduled throughput probe failed");
        }
        let _ = drain.await;
    }
}

/// An enrollment from `from`. A valid join token is always accepted, whoever shares its
/// address (agents behind one NAT address must not be locked out by a neighbour). Bad
/// tokens are counted per address (see [`ENROLL_FAILURE_BURST`]): past the limit they are
/// answered `RateLimited` and logged at DEBUG only. Guessing stays infeasible without a
/// hold-back: a token's secret is 128 random bits.
fn enroll(c: &Coordinator, req: &EnrollRequest, from: std::net::IpAddr) -> Response {
    let ca = match c.pki.builtin("enrollment with a join token") {
        Ok(ca) => ca,
        Err(r) => return *r,
    };
    // Bad tokens count per IPv4 address or IPv6 /64 (one host holds a whole /64).
    let from = connlimit::source(from);
    let bad_token = |c: &Coordinator, e: ErrorBody| -> Response {
        c.metrics.enrollment(false);
        let now = std::time::Instant::now();
        let mut failures = c.enroll_failures();
        let held = failures.check(from, now);
        failures.failed(from, now);
        drop(failures);
        match held {
            Ok(()) => {
                c.metrics.refused(Refusal::Token);
                tracing::warn!(%from, node = %req.node, site = %req.site, error = %e, "enrollment refused: bad join token");
                Response::Error(e)
            }
            Err(wait) => {
                c.metrics.refused(Refusal::RateLimited);
                tracing::debug!(%from, error = %e, "enrollment refused: bad join token, address over its limit");
                error(
                    ErrorCode::RateLimited,
                    format!(
                        "{}; {from} presented too many bad join tokens: more are refused as rate-limited for {} s (a valid token is always accepted)",
                        e.message,
                        wait.as_secs().max(1)
                    ),
                )
            }
        }
    };
    let token: JoinToken = match req.token.parse() {
        Ok(t) => t,
        Err(e) => {
            return bad_token(c, ErrorBody::new(ErrorCode::InvalidToken, e.to_string()));
        }
    };
    let identity = match Identity::node(&c.config.mesh, &req.site, &req.node, req.role) {
        Ok(i) => i,
        Err(e) => return error(ErrorCode::BadRequest, e.to_string()),
    };
    let lifetime = c.config.pki.agent_cert_lifetime;
    let result = c.mutate(|mesh| {
        let now = unix_now();
        mesh.check_enrollment(&token, &req.site, &req.node, req.role, now)
            .map_err(core_err)?;
        let leaf = ca
            .sign_csr(&req.csr_pem, &identity, Validity::for_lifetime(lifetime))
            .map_err(|e| ErrorBody::new(ErrorCode::BadRequest, e.to_string()))?;
        let info = CertInfo::parse(&leaf)
            .map_err(|e| ErrorBody::new(ErrorCode::Internal, e.to_string()))?;
        let issued = IssuedCert {
            serial: info.serial,
            site: req.site.clone(),
            name: req.node.clone(),
            not_after: unix(info.not_after),
        };
        let ops = mesh
            .complete_enrollment(&token, &req.site, req.role, issued, now)
            .map_err(core_err)?;
        Ok((leaf, ops))
    });
    match result {
        Ok(leaf) => {
            c.metrics.enrollment(true);
            tracing::info!(identity = %identity, token = token.id(), "enrolled");
            Response::Enrolled {
                cert_pem: certs_to_pem(&[leaf]),
                ca_pem: ca.cert_pem().to_string(),
            }
        }
        Err(e) if e.code == ErrorCode::InvalidToken => bad_token(c, e),
        Err(e) => {
            c.metrics.enrollment(false);
            tracing::warn!(identity = %identity, token = token.id(), error = %e, "enrollment refused");
            Response::Error(e)
        }
    }
}

fn renew(c: &Coordinator, identity: &Identity, csr_pem: &str) -> Response {
    let ca = match c.pki.builtin("renewal through the coordinator") {
        Ok(ca) => ca,
        Err(r) => return *r,
    };
    if !identity.role().has_site() {
        return error(
            ErrorCode::PermissionDenied,
            format!("{identity} cannot renew through the coordinator"),
        );
    }
    let lifetime = c.config.pki.agent_cert_lifetime;
    let result = c.mutate(|mesh| {
        let leaf = ca
            .sign_csr(csr_pem, identity, Validity::for_lifetime(lifetime))
            .map_err(|e| ErrorBody::new(ErrorCode::BadRequest, e.to_string()))?;
        let info = CertInfo::parse(&leaf)
            .map_err(|e| ErrorBody::new(ErrorCode::Internal, e.to_string()))?;
        let op = mesh.record_issued(IssuedCert {
            serial: info.serial,
            site: identity.site().unwrap_or_default().to_string(),
            name: identity.name().to_string(),
            not_after: unix(info.not_after),
        });
        Ok((leaf, vec![op]))
    });
    match result {
        Ok(leaf) => Response::Renewed {
            cert_pem: certs_to_pem(&[leaf]),
            ca_pem: ca.cert_pem().to_string(),
        },
        Err(e) => Response::Error(e),
    }
}

fn create_token(c: &Coordinator, site: &str, role: Role, ttl_secs: u64) -> Response {
    let ca = match c.pki.builtin("creating join tokens") {
        Ok(ca) => ca,
        Err(r) => return *r,
    };
    let fp = ca.fingerprint();
    let result = c.mutate(|mesh| {
        let (token, record, ops) = mesh
            .create_token(
                site,
                role,
                Duration::from_secs(ttl_secs),
                unix_now(),
                fp,
                random_token_bytes(),
            )
            .map_err(core_err)?;
        Ok(((token, record), ops))
    });
    match result {
        Ok((token, record)) => Response::Token(TokenCreated {
            token: token.to_string(),
            id: record.id,
            site: record.site,
            role: record.role,
            expires_at: record.expires_at,
        }),
        Err(e) => Response::Error(e),
    }
}

fn revoke(c: &Coordinator, node: &str) -> Response {
    let result = c.mutate(|mesh| {
        let key = mesh.resolve(node).map_err(core_err)?;
        let (serials, ops) = mesh.revoke(&key, unix_now());
        Ok(((key, serials), ops))
    });
    match result {
        Ok((key, serials)) => {
            if let Some(conn) = c
                .sessions
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&key)
            {
                conn.close(close::REVOKED.into(), REVOKED_REASON);
            }
            tracing::info!(node = %format!("{}/{}", key.0, key.1), serials = ?serials, "revoked");
            Response::Revoked {
                node: format!("{}/{}", key.0, key.1),
                serials,
            }
        }
        Err(e) => Response::Error(e),
    }
}

/// Asks a connected node to rotate its WireGuard key now.
async fn rotate_key(c: &Coordinator, node: &str) -> Response {
    let key = match c.core().mesh.resolve(node) {
        Ok(k) => k,
        Err(e) => return Response::Error(core_err(e)),
    };
    let id = format!("{}/{}", key.0, key.1);
    match probes::rotate_key(&c.probes, &key, &id).await {
        Ok(()) => {
            tracing::info!(node = %id, "key rotation started");
            Response::KeyRotation { node: id }
        }
        Err(e) => Response::Error(e),
    }
}

/// What a session is opened with, besides its connection and identity.
struct Opened {
    serial: String,
    not_after: u64,
    reg: Box<Registration>,
}

/// Ends a session with the reason, and lets the agent read it: the stream is finished, then
/// whatever the agent still sends is read and dropped until its side ends or
/// [`SESSION_LINGER`] passes. Dropping the receive side at once would send STOP_SENDING,
/// which can reach the agent first: its next heartbeat then fails with "stopped by peer"
/// and the reason (say, "this node was removed") is never read.
async fn end_session(
    send: &mut SendStream,
    recv: &mut RecvStream,
    frames: &mut wire::FrameReader,
    body: ErrorBody,
) {
    if wire::write_encoded(send, SessionEvent::Closing(body))
        .await
        .is_err()
    {
        return;
    }
    let _ = send.finish();
    let drain = async { while let Ok(Some(_)) = frames.next::<AgentEvent, _>(recv).await {} };
    let _ = tokio::time::timeout(SESSION_LINGER, drain).await;
}

/// An agent's session: register, send a snapshot, then a delta for every map change, and
/// take heartbeats until the stream or connection ends.
///
/// Thousands of these wait at once, so their state is kept small (about 36 KiB per agent is
/// quinn's and rustls' own; see BENCHMARKS.md): a plain function returning an `async`
/// block (an `async fn` keeps two copies of its arguments), registration in a boxed future
/// freed once done, frames read in place by a cancel-safe reader (no reader task or channel)
/// and messages encoded before they are written (a future holds bytes, not the message).
// Not an `async fn`: its state would hold every argument twice (rustc copies them).
#[allow(clippy::manual_async_fn)]
fn session(
    c: Arc<Coordinator>,
    conn: quinn::Connection,
    identity: Identity,
    opened: Opened,
    mut send: SendStream,
    mut recv: RecvStream,
) -> impl Future<Output = ()> {
    async move {
        let key: NodeKey = (
            identity.site().unwrap_or_default().to_string(),
            identity.name().to_string(),
        );
        let Some((changes, mut settled, mut current)) =
            Box::pin(open_session(&c, &conn, &identity, &opened, &key, &mut send)).await
        else {
            return;
        };
        let Opened {
            serial, not_after, ..
        } = opened;
        let (command_tx, mut commands) = c.probes.attach(&key);
        c.metrics.agents_connected.inc();
        let mut frames = wire::FrameReader::new(MAX_FRAME);
        // A session ends when the certificate it was opened with expires: identity is only
        // as good as a current certificate (agents move to a renewed one before,
        // make-before-break).
        let expiry = tokio::time::sleep(Duration::from_secs(not_after.saturating_sub(unix_now())));
        tokio::pin!(expiry);
        // A change that leaves this node's map as it was only moves the version: the fan-out
        // does not wake this session for it, and the new version is sent with this node's
        // next change or once versions settle (see `crate::fanout`), so a burst of
        // registrations elsewhere costs neither a wake-up nor a message each.
        loop {
            let settling = tokio::select! {
                _ = &mut expiry => {
                    tracing::warn!(identity = %identity, serial = %serial, "session closed: its certificate expired");
                    let body = ErrorBody::new(
                        ErrorCode::Unauthenticated,
                        format!("the certificate this session was opened with (serial {serial}) expired; reconnect with a renewed certificate"),
                    );
                    Box::pin(end_session(&mut send, &mut recv, &mut frames, body)).await;
                    conn.close(close::CERT_EXPIRED.into(), b"certificate expired");
                    break;
                }
                () = changes.changed() => false,
                changed = settled.changed() => {
                    if changed.is_err() { break }
                    true
                }
                Some(command) = commands.recv() => {
                    let out = wire::write_encoded(&mut send, SessionEvent::Command(*command));
                    if out.await.is_err() {
                        break;
                    }
                    continue;
                }
                event = frames.next::<AgentEvent, _>(&mut recv) => {
                    match event {
                        Ok(Some(event)) => on_agent_event(&c, &key, &identity, event),
                        Ok(None) => break,
                        Err(wire::IoError::Stream(e)) => {
                            tracing::info!(identity = %identity, error = %e, "session ended: connection lost");
                            break;
                        }
                        Err(e) => {
                            tracing::warn!(identity = %identity, error = %e, "session closed: bad frame from agent");
                            conn.close(close::PROTOCOL.into(), b"bad frame on session stream");
                            break;
                        }
                    }
                    continue;
                }
            };
            let Some(next) = c.fanout.views().view(&key) else {
                let body =
                    ErrorBody::new(ErrorCode::Revoked, "this node was removed from the mesh");
                Box::pin(end_session(&mut send, &mut recv, &mut frames, body)).await;
                break;
            };
            if next.version <= current.version {
                continue;
            }
            let delta = current.delta(&next);
            let version_only = delta.is_empty();
            if version_only && !settling {
                continue;
            }
            let out = wire::write_encoded(&mut send, SessionEvent::Delta(delta));
            if out.await.is_err() {
                break;
            }
            if !version_only {
                let (version, at) = *c.published.lock().unwrap_or_else(|p| p.into_inner());
                if version == next.version {
                    c.metrics.fanout.observe(at.elapsed().as_secs_f64());
                }
            }
            current = next;
        }
        c.probes.detach(&key, &command_tx);
        c.metrics.agents_connected.dec();
        let mut sessions = c.sessions.lock().unwrap_or_else(|p| p.into_inner());
        if sessions
            .get(&key)
            .is_some_and(|s| s.stable_id() == conn.stable_id())
        {
            sessions.remove(&key);
        }
    }
}

/// Registers the node and sends it `Registered` and its snapshot. Returns the session's
/// subscriptions (made before registering, so no change after the snapshot is missed) and
/// the view the snapshot showed; `None` once the session is over (refused or gone).
async fn open_session<'c>(
    c: &'c Coordinator,
    conn: &quinn::Connection,
    identity: &Identity,
    opened: &Opened,
    key: &NodeKey,
    send: &mut SendStream,
) -> Option<(
    crate::fanout::Subscription<'c>,
    tokio::sync::watch::Receiver<u64>,
    crate::mesh::NodeView,
)> {
    let changes = c.fanout.subscribe(key);
    let settled = c.fanout.settled();
    let mut refusal = Refusal::Registration;
    let registered = c.mutate(|mesh| {
        mesh.register(
            identity,
            &opened.reg,
            &opened.serial,
            opened.not_after,
            unix_now(),
        )
        .map_err(|e| {
            if matches!(e, CoreError::KeyInUse { .. }) {
                refusal = Refusal::DuplicateKey;
            }
            core_err(e)
        })
    });
    let registered = match registered {
        Ok(r) => r,
        Err(e) => {
            c.metrics.refused(refusal);
            tracing::warn!(identity = %identity, error = %e, "registration refused");
            let _ = wire::write(send, &SessionEvent::Closing(e)).await;
            let _ = send.finish();
            return None;
        }
    };
    tracing::info!(identity = %identity, overlay = %registered.overlay_ip, refused = registered.refused.len(), "registered");
    for r in &registered.refused {
        c.metrics
            .refused_prefix(crate::policy::Conflict::of(&r.reason).label());
        tracing::warn!(identity = %identity, prefix = %r.prefix, reason = %r.reason, "advertised prefix refused");
    }
    if let Some(old) = c
        .sessions
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(key.clone(), conn.clone())
    {
        if old.stable_id() != conn.stable_id() {
            old.close(close::SHUTDOWN.into(), b"replaced by a newer session");
        }
    }
    // Only this node's parts of the views are kept across the writes: a whole `Views` held
    // by every session while it waits on a slow peer would keep one version per session
    // alive (memory quadratic in the number of agents during a burst of changes).
    let (current, snapshot) = {
        let views = c.fanout.views();
        let current = views.view(key)?;
        let snapshot = current.to_map(views.mesh());
        (current, snapshot)
    };
    if wire::write(send, &SessionEvent::Registered(registered))
        .await
        .is_err()
        || wire::write(send, &SessionEvent::Snapshot(snapshot))
            .await
            .is_err()
    {
        return None;
    }
    Some((changes, settled, current))
}

/// What an agent reports on its session.
fn on_agent_event(c: &Coordinator, key: &NodeKey, identity: &Identity, event: AgentEvent) {
    match event {
        AgentEvent::Heartbeat { map_version } => {
            let _ = c.mutate(|mesh| Ok(((), mesh.heartbeat(key, map_version, unix_now()))));
        }
        AgentEvent::RouteConflicts { conflicts } => {
            let _ = c.mutate(|mesh| Ok(((), mesh.report_conflicts(key, conflicts.clone()))));
        }
        AgentEvent::Probe { id, event } => {
            c.probes.deliver(key, id, event);
        }
        AgentEvent::AnnounceKey { next_wg_public_key } => {
            match c.mutate(|mesh| {
                Ok((
                    (),
                    mesh.announce_key(key, &next_wg_public_key)
                        .map_err(core_err)?,
                ))
            }) {
                Ok(()) => {
                    tracing::info!(identity = %identity, next_key = %next_wg_public_key, "key rotation: next key announced")
                }
                Err(e) => {
                    tracing::warn!(identity = %identity, error = %e, "key rotation: announced key refused")
                }
            }
        }
        AgentEvent::KeyInUse { wg_public_key } => {
            match c.mutate(|mesh| Ok(((), mesh.key_in_use(key, &wg_public_key).map_err(core_err)?)))
            {
                Ok(()) => {
                    tracing::info!(identity = %identity, key = %wg_public_key, "key rotation: new key in use")
                }
                Err(e) => {
                    tracing::warn!(identity = %identity, error = %e, "key rotation: switch refused")
                }
            }
        }
        AgentEvent::LinkReport {
            peers,
            access_drops,
        } => {
            // Live figures: never stored, no map change.
            let mut core = c.core();
            core.mesh.report_links(key, peers);
            core.mesh.report_access_drops(key, access_drops);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_endpoint_secret_is_made_once_private_and_kept() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("quic.key");
        endpoint_config(&path).unwrap();
        let first = std::fs::read(&path).unwrap();
        assert_eq!(first.len(), ENDPOINT_SECRET_LEN);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        // A restart reads the same secret, so it resets the previous run's connections.
        endpoint_config(&path).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), first);
        std::fs::write(&path, b"short").unwrap();
        let e = endpoint_config(&path).unwrap_err().to_string();
        assert!(e.contains("holds 5 bytes instead of 32"), "{e}");
    }
}
