//! The session with the coordinator: register, take the map snapshot and deltas, send
//! heartbeats, reconnect with backoff across coordinators. The last map is kept in the
//! state directory and used at start when no coordinator answers.

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use quinn::{RecvStream, SendStream};
use strait_observe::Readiness;
use strait_pki::ca::{bundle_from_signed, generate_csr};
use strait_pki::material::{parse_certs, write_file};
use strait_pki::renewal::{self, CertSource, RenewalState};
use strait_pki::tls::{self, client_config, quic_client_config, CertStore};
use strait_pki::vault::{VaultCertSource, VaultPki};
use strait_pki::{CertBundle, Role};
use strait_proto::access::AccessDrop;
use strait_proto::frame::MAX_FRAME;
use strait_proto::map::{NetworkMap, PeerKind};
use strait_proto::msg::{
    AgentEvent, ErrorCode, PeerLink, Refusal, Registration, Request, Response, SessionEvent,
};
use strait_proto::probe::{Action, ProbeEvent};
use strait_proto::{client, io as wire, ALPN};
use tokio::sync::{mpsc, watch};

use crate::commands;
use crate::config::Config;
use crate::dataplane::pump::PingRequest;
use crate::enroll::{ensure_certificate, resolve};
use crate::keyrotation::{KeyRotation, Step};
use crate::metrics::AgentMetrics;
use crate::wgkey::WgKey;

/// Operator commands one node runs at once.
const MAX_COMMANDS: usize = 4;
/// How often a key rotation in progress (or due) is looked at.
const ROTATION_TICK: Duration = Duration::from_secs(1);

/// QUIC keep-alives on the session, so a silent coordinator is told from an idle one.
const SESSION_KEEPALIVE: Duration = Duration::from_secs(2);
/// A session with nothing received for this long is over (the coordinator died or the path
/// is gone); the agent then tries the next coordinator.
const SESSION_IDLE_TIMEOUT: Duration = Duration::from_secs(10);

/// Reconnect delay after `attempt` consecutive failures: 500 ms doubling to 30 s, plus up
/// to 25% jitter (`jitter` in `[0, 1)`).
pub fn backoff(attempt: u32, jitter: f64) -> Duration {
    let base = Duration::from_millis(500)
        .saturating_mul(1 << attempt.min(6))
        .min(Duration::from_secs(30));
    base + base.mul_f64(jitter.clamp(0.0, 1.0) * 0.25)
}

fn jitter() -> f64 {
    let mut b = [0u8; 2];
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b);
    u16::from_le_bytes(b) as f64 / 65536.0
}

/// The wildcard address of `target`'s family, for a client socket.
pub fn wildcard(target: SocketAddr) -> SocketAddr {
    if target.is_ipv6() {
        SocketAddr::from(([0u16; 8], 0))
    } else {
        SocketAddr::from(([0u8; 4], 0))
    }
}

/// What the agent knows, shared with the data plane.
pub type MapWatch = watch::Receiver<Option<Arc<NetworkMap>>>;

/// What the data plane tells the coordinator through the control session, and how the
/// session asks the data plane for on-demand probes.
pub struct DataplaneChannels {
    /// Routes the kernel refused.
    pub conflicts: watch::Receiver<Vec<Refusal>>,
    /// Tunnels and their paths (published every few seconds).
    pub links: watch::Receiver<Vec<PeerLink>>,
    /// Packets the access policy dropped, sent with the links.
    pub access_drops: watch::Receiver<Vec<AccessDrop>>,
    /// On-demand probes (`None` without a userspace data plane).
    pub pings: Option<mpsc::Sender<PingRequest>>,
    /// This node's WireGuard key; a key rotation publishes the new one here.
    pub keys: watch::Sender<Arc<WgKey>>,
}

/// What the control plane tells the metrics endpoint.
pub struct Telemetry {
    pub metrics: Arc<AgentMetrics>,
    /// Ready once the node holds a network map.
    pub readiness: Arc<Readiness>,
}

/// Runs the agent's control plane until `shutdown` completes. The current map is
/// published on `maps`.
pub async fn run(
    config: Config,
    maps: watch::Sender<Option<Arc<NetworkMap>>>,
    reports: DataplaneChannels,
    telemetry: Telemetry,
    shutdown: impl Future<Output = ()>,
) -> Result<()> {
    let bundle = ensure_certificate(&config).await?;
    report_expired(&config, &bundle);
    let wg = reports.keys.borrow().clone();
    tracing::info!(identity = %bundle.identity, wg_public_key = %wg.public_base64(), "agent starting");
    let certs = CertStore::new(bundle)?;
    telemetry.metrics.set_certs(certs.clone());
    let (renewal_task, renewal_state, renewal_counts) = match &config.vault {
        None => renewal::spawn_counted(
            CoordinatorRenewal {
                config: config.clone(),
                certs: certs.clone(),
            },
            certs.clone(),
        ),
        Some(settings) => {
            let vault = VaultPki::login(settings.to_config()?).await?;
            let source = SavingSource {
                inner: VaultCertSource {
                    pki: Arc::new(vault),
                    identity: certs.identity(),
                    ttl: settings.cert_ttl()?,
                },
                dir: config.tls_dir(),
            };
            renewal::spawn_counted(source, certs.clone())
        }
    };
    telemetry
        .metrics
        .set_renewal(renewal_state.clone(), renewal_counts);
    let map_path = config.state_dir.join("map.json");
    match load_map(&map_path) {
        Ok(Some(map)) => {
            tracing::info!(
                version = map.version,
                peers = map.peers.len(),
                "using the last known map until a coordinator answers"
            );
            maps.send_replace(Some(Arc::new(map)));
            telemetry.readiness.set_ready();
        }
        Ok(None) => {}
        Err(e) => tracing::warn!(error = %e, "ignoring the saved map"),
    }
    let registration = Registration {
        wg_public_key: wg.public_base64(),
        endpoints: config.endpoints.clone(),
        prefixes: config.prefixes.clone(),
        agent_version: env!("CARGO_PKG_VERSION").to_string(),
        have_version: None,
    };
    let commands = commands::Context::new(reports.pings.clone());
    let rotation = KeyRotation::new(
        config.wg_key_rotation,
        WgKey::age_of_file(&config.state_dir.join("wg.key")),
        Instant::now(),
    );
    let mut session = Session {
        rotation,
        next_key: None,
        config: &config,
        certs,
        commands,
        reports,
        telemetry: &telemetry,
        maps,
        map_path,
        registration,
        renewal: renewal_state,
    };
    tokio::pin!(shutdown);
    let mut attempt = 0u32;
    let mut next = 0usize;
    loop {
        let addr = config.coordinators[next % config.coordinators.len()].clone();
        next += 1;
        let started = Instant::now();
        tokio::select! {
            result = session.run(&addr) => {
                telemetry.metrics.set_session_up(false);
                telemetry.metrics.set_coordinator_cert_expiry(None);
                match result {
                    Ok(()) => tracing::info!(coordinator = %addr, "session ended"),
                    Err(e) => tracing::warn!(coordinator = %addr, error = %format!("{e:#}"), "session failed"),
                }
            }
            _ = &mut shutdown => break,
        }
        if started.elapsed() > Duration::from_secs(10) {
            attempt = 0;
        }
        let delay = backoff(attempt, jitter());
        attempt = attempt.saturating_add(1);
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = &mut shutdown => break,
        }
    }
    renewal_task.abort();
    tracing::info!("agent stopped");
    Ok(())
}

struct Session<'a> {
    config: &'a Config,
    certs: CertStore,
    commands: commands::Context,
    reports: DataplaneChannels,
    telemetry: &'a Telemetry,
    maps: watch::Sender<Option<Arc<NetworkMap>>>,
    map_path: PathBuf,
    registration: Registration,
    rotation: KeyRotation,
    /// The key being rotated to, until it is in use.
    next_key: Option<WgKey>,
    /// The renewal task's state: a renewed certificate moves the session to it.
    renewal: watch::Receiver<RenewalState>,
}

/// Frames from the coordinator, read in their own task (see the invariants).
type Events = mpsc::Receiver<Result<Option<SessionEvent>, wire::IoError>>;

fn spawn_reader(mut recv: RecvStream) -> (tokio::task::JoinHandle<()>, Events) {
    let (tx, events) = mpsc::channel(64);
    let reader = tokio::spawn(async move {
        loop {
            let event = wire::read::<SessionEvent, _>(&mut recv, MAX_FRAME).await;
            let end = !matches!(event, Ok(Some(_)));
            if tx.send(event).await.is_err() || end {
                break;
            }
        }
    });
    (reader, events)
}

/// Why a session moves to a new connection.
enum Move {
    /// The renewal task swapped in a certificate with this serial.
    Renewed(String),
    /// The certificate the coordinator presented on the session expires.
    CoordinatorCertExpired,
}

/// How long moving a session to a renewed certificate may take before the agent keeps the
/// current session.
const MOVE_TIMEOUT: Duration = Duration::from_secs(10);

impl Session<'_> {
    /// Connects with the current certificate, opens the session stream and subscribes.
    /// Returns the serial of the certificate presented.
    async fn subscribe(
        &self,
        addr: &str,
    ) -> Result<(quinn::Connection, SendStream, RecvStream, String)> {
        let serial = self.certs.bundle().serial;
        let conn = connect(self.config, &self.certs, addr).await?;
        let (mut send, recv) = conn.open_bi().await.context("opening the session stream")?;
        let mut registration = self.registration.clone();
        registration.have_version = self.maps.borrow().as_ref().map(|m| m.version);
        wire::write(&mut send, &Request::Subscribe(registration)).await?;
        Ok((conn, send, recv, serial))
    }

    /// Make-before-break: a second session with the renewed certificate, up to its
    /// `Registered`. The coordinator then closes the old session (it is replaced).
    async fn open_renewed(
        &self,
        addr: &str,
    ) -> Result<(
        quinn::Connection,
        SendStream,
        RecvStream,
        String,
        SessionEvent,
    )> {
        let (conn, send, mut recv, serial) = self.subscribe(addr).await?;
        let first = tokio::time::timeout(
            MOVE_TIMEOUT,
            wire::read::<SessionEvent, _>(&mut recv, MAX_FRAME),
        )
        .await
        .context("no answer from the coordinator")??;
        match first {
            Some(e @ SessionEvent::Registered(_)) => Ok((conn, send, recv, serial, e)),
            Some(SessionEvent::Closing(e)) => {
                conn.close(0u32.into(), b"session refused");
                bail!("coordinator refused the session: {e}")
            }
            Some(other) => {
                conn.close(0u32.into(), b"unexpected answer");
                bail!("unexpected first answer {other:?}")
            }
            None => bail!("the coordinator ended the new session at once"),
        }
    }

    async fn run(&mut self, addr: &str) -> Result<()> {
        let (mut conn, mut send, recv, mut session_serial) = self.subscribe(addr).await?;
        // Report the current conflicts on every new session.
        self.reports.conflicts.mark_changed();
        self.reports.links.mark_changed();
        // Only a renewal after this point moves the session.
        self.renewal.borrow_and_update();
        let mut renewal_alive = true;

        let (mut reader, mut events) = spawn_reader(recv);
        // The certificate the coordinator authenticated this connection with: when it
        // expires the session moves to a new connection (whose handshake checks the
        // coordinator's current certificate), as the coordinator ends a session at the
        // agent's certificate's expiry.
        let coordinator_expiry = self.coordinator_expiry(&conn);
        tokio::pin!(coordinator_expiry);
        let mut moving: Option<Move> = None;
        let mut heartbeat = tokio::time::interval_at(
            tokio::time::Instant::now() + self.config.heartbeat_interval,
            self.config.heartbeat_interval,
        );
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Commands an operator asked for run in their own tasks and report here.
        let (probe_tx, mut probe_events) = mpsc::channel::<AgentEvent>(256);
        let mut running: Vec<tokio::task::JoinHandle<()>> = Vec::new();
        let mut map: Option<NetworkMap> = None;
        let mut rotation_tick = tokio::time::interval(ROTATION_TICK);
        // Whether the key being rotated to was announced on this session.
        let mut announced = false;
        let result = loop {
            tokio::select! {
                event = events.recv() => {
                    let event = match event {
                        Some(Ok(Some(e))) => e,
                        Some(Ok(None)) | None => break Ok(()),
                        Some(Err(e)) => break Err(anyhow::Error::from(e).context("reading from the coordinator")),
                    };
                    match event {
                        SessionEvent::Registered(r) => self.registered(addr, &r),
                        SessionEvent::Snapshot(m) => {
                            tracing::info!(version = m.version, peers = m.peers.len(), routes = m.routes.len(), "map snapshot");
                            self.publish(&m);
                            // Acknowledge at once so the coordinator sees the new version.
                            let ack = AgentEvent::Heartbeat { map_version: m.version };
                            map = Some(m);
                            if let Err(e) = wire::write(&mut send, &ack).await {
                                break Err(anyhow::Error::from(e).context("acknowledging the snapshot"));
                            }
                        }
                        SessionEvent::Delta(d) => {
                            let Some(current) = map.as_mut() else {
                                break Err(anyhow::anyhow!("delta before snapshot"));
                            };
                            if let Err(gap) = current.apply(&d) {
                                break Err(anyhow::anyhow!("{gap}; reconnecting for a snapshot"));
                            }
                            tracing::debug!(version = d.to_version, upserts = d.upsert_peers.len(), removals = d.remove_peers.len(), "map delta");
                            let current = current.clone();
                            self.publish(&current);
                        }
                        SessionEvent::Command(command) if matches!(command.action, Action::RotateKey) => {
                            tracing::info!(command = command.id, "operator asked for a key rotation");
                            let event = if self.rotation.request() {
                                ProbeEvent::Done
                            } else {
                                ProbeEvent::Failed { message: "a key rotation is already under way".into() }
                            };
                            if let Err(e) = wire::write(&mut send, &AgentEvent::Probe { id: command.id, event }).await {
                                break Err(anyhow::Error::from(e).context("answering a command"));
                            }
                            rotation_tick.reset_immediately();
                        }
                        SessionEvent::Command(command) => {
                            tracing::info!(command = command.id, action = ?command.action, "operator command");
                            running.retain(|t| !t.is_finished());
                            if running.len() >= MAX_COMMANDS {
                                let event = AgentEvent::Probe {
                                    id: command.id,
                                    event: ProbeEvent::Failed { message: format!("this node already runs {MAX_COMMANDS} commands; try again later") },
                                };
                                if let Err(e) = wire::write(&mut send, &event).await {
                                    break Err(anyhow::Error::from(e).context("answering a command"));
                                }
                                continue;
                            }
                            let current = self.maps.borrow().clone();
                            running.push(commands::spawn(command, current, self.commands.clone(), probe_tx.clone()));
                        }
                        SessionEvent::Closing(e) => {
                            if e.code == ErrorCode::Revoked {
                                tracing::error!("this node was revoked; enroll again with a new join token");
                            }
                            break Err(anyhow::anyhow!("coordinator closed the session: {e}"));
                        }
                    }
                }
                changed = self.reports.conflicts.changed() => {
                    if changed.is_ok() {
                        let conflicts = self.reports.conflicts.borrow_and_update().clone();
                        if let Err(e) = wire::write(&mut send, &AgentEvent::RouteConflicts { conflicts }).await {
                            break Err(anyhow::Error::from(e).context("reporting route conflicts"));
                        }
                    }
                }
                changed = self.reports.links.changed() => {
                    if changed.is_ok() {
                        let peers = self.reports.links.borrow_and_update().clone();
                        let access_drops = self.reports.access_drops.borrow().clone();
                        if let Err(e) = wire::write(&mut send, &AgentEvent::LinkReport { peers, access_drops }).await {
                            break Err(anyhow::Error::from(e).context("reporting links"));
                        }
                    }
                }
                Some(event) = probe_events.recv() => {
                    if let Err(e) = wire::write(&mut send, &event).await {
                        break Err(anyhow::Error::from(e).context("reporting a command's progress"));
                    }
                }
                _ = rotation_tick.tick() => {
                    if let Err(e) = self.rotation_step(map.as_ref(), &mut announced, &mut send).await {
                        break Err(e.context("key rotation"));
                    }
                }
                () = &mut coordinator_expiry => {
                    tracing::info!(coordinator = %addr, "the certificate the coordinator presented on this session expires now; moving the session to a new connection");
                    moving = Some(Move::CoordinatorCertExpired);
                }
                changed = self.renewal.changed(), if renewal_alive => {
                    if changed.is_err() {
                        renewal_alive = false;
                        continue;
                    }
                    match &*self.renewal.borrow_and_update() {
                        RenewalState::Valid { serial, .. } if *serial != session_serial => {
                            moving = Some(Move::Renewed(serial.clone()));
                        }
                        _ => continue,
                    }
                }
                _ = heartbeat.tick() => {
                    let version = map.as_ref().map(|m| m.version).unwrap_or(0);
                    if let Err(e) = wire::write(&mut send, &AgentEvent::Heartbeat { map_version: version }).await {
                        break Err(anyhow::Error::from(e).context("sending a heartbeat"));
                    }
                }
            }
            // Make-before-break: a second session, registered, then the old one closed.
            let Some(why) = moving.take() else { continue };
            match self.open_renewed(addr).await {
                Ok((new_conn, new_send, new_recv, serial, first)) => {
                    // Events still queued from the old session are dropped: the new
                    // session's snapshot follows its `Registered`.
                    reader.abort();
                    (reader, events) = spawn_reader(new_recv);
                    let old = std::mem::replace(&mut conn, new_conn);
                    send = new_send;
                    match &why {
                        Move::Renewed(_) => {
                            old.close(0u32.into(), b"moved to a renewed certificate");
                            tracing::info!(coordinator = %addr, previous_serial = %session_serial, serial = %serial, "moved the session to the renewed certificate");
                        }
                        Move::CoordinatorCertExpired => {
                            old.close(0u32.into(), b"the coordinator's certificate expired");
                            tracing::info!(coordinator = %addr, "moved the session to a connection with the coordinator's current certificate");
                        }
                    }
                    session_serial = serial;
                    coordinator_expiry.set(self.coordinator_expiry(&conn));
                    // The new registration dropped a key announcement; make it again.
                    announced = false;
                    if let SessionEvent::Registered(r) = first {
                        self.registered(addr, &r);
                    }
                    self.reports.conflicts.mark_changed();
                    self.reports.links.mark_changed();
                }
                Err(e) => match why {
                    // The current session goes on; the coordinator ends it when its
                    // certificate expires, and the agent then reconnects with the renewed one.
                    Move::Renewed(renewed) => {
                        tracing::warn!(coordinator = %addr, serial = %renewed, error = %format!("{e:#}"), "could not move the session to the renewed certificate; keeping the current session");
                    }
                    // An expired certificate no longer vouches for this connection: the
                    // session ends, and the agent reconnects with backoff (the data plane
                    // keeps its last map meanwhile).
                    Move::CoordinatorCertExpired => {
                        break Err(e.context(format!(
                            "the coordinator's certificate for this session expired and a new session could not be opened; check that the coordinator at {addr} renews its certificate (its metric strait_coordinator_cert_expiry_timestamp_seconds)"
                        )));
                    }
                },
            }
        };
        reader.abort();
        for task in running {
            task.abort();
        }
        if let Some(reason) = conn.close_reason() {
            return Err(anyhow::anyhow!("connection closed: {reason}"));
        }
        conn.close(0u32.into(), b"session over");
        result
    }

    /// Advances a key rotation (see [`crate::keyrotation`]), writing its messages on `send`.
    async fn rotation_step(
        &mut self,
        map: Option<&NetworkMap>,
        announced: &mut bool,
        send: &mut quinn::SendStream,
    ) -> Result<()> {
        let now = Instant::now();
        self.rotation
            .on_map(map.and_then(|m| m.node.next_wg_public_key.as_deref()), now);
        let external = map.is_some_and(|m| m.peers.values().any(|p| p.kind == PeerKind::External));
        match self.rotation.poll(now, external) {
            Some(Step::Generate) => {
                let key = WgKey::generate();
                tracing::info!(next_key = %key.public_base64(), "key rotation: announcing the next WireGuard key");
                self.rotation.started(key.public_base64(), now);
                self.next_key = Some(key);
                *announced = false;
            }
            Some(Step::Switch) => {
                self.rotation.switched(now);
                if let Some(key) = self.next_key.take() {
                    self.switch_key(key, send).await?;
                }
            }
            Some(Step::GiveUp) => {
                self.next_key = None;
                tracing::warn!(
                    retry_in = ?crate::keyrotation::RETRY_AFTER,
                    "key rotation: the coordinator did not record the announced key within 60 s (its log says why, e.g. a key another node holds); the current key stays, and the rotation is tried again"
                );
            }
            Some(Step::Postpone) => tracing::warn!(
                "key rotation postponed: external WireGuard peers are configured with this node's key; rotate with `straitctl rotate-key` and update their configuration"
            ),
            None => {}
        }
        if let (Some(public), false) = (self.rotation.pending().map(String::from), *announced) {
            // A new session's registration dropped any earlier announcement.
            self.rotation.reannounced();
            let event = AgentEvent::AnnounceKey {
                next_wg_public_key: public,
            };
            wire::write(send, &event).await?;
            *announced = true;
        }
        Ok(())
    }

    /// Switches to `key`: saved first (a restart must not go back to the old key), then
    /// handed to the data plane and the coordinator.
    async fn switch_key(&mut self, key: WgKey, send: &mut quinn::SendStream) -> Result<()> {
        if let Err(e) = key.replace_file(&self.config.state_dir.join("wg.key")) {
            tracing::error!(error = %format!("{e:#}"), "key rotation abandoned: the current key stays");
            return Ok(());
        }
        let public = key.public_base64();
        self.reports.keys.send_replace(Arc::new(key));
        self.registration.wg_public_key = public.clone();
        tracing::info!(key = %public, "key rotation: switched to the new WireGuard key");
        wire::write(
            send,
            &AgentEvent::KeyInUse {
                wg_public_key: public,
            },
        )
        .await?;
        Ok(())
    }

    /// Sleeps until the certificate the coordinator presented on `conn` expires (never, if
    /// it presented none, which the handshake does not allow), and exports that time.
    fn coordinator_expiry(&self, conn: &quinn::Connection) -> tokio::time::Sleep {
        let not_after = tls::peer_certificate(conn).map(|c| c.not_after);
        self.telemetry
            .metrics
            .set_coordinator_cert_expiry(not_after);
        let left = not_after.map_or(Duration::from_secs(365 * 86_400), |t| {
            t.duration_since(std::time::SystemTime::now())
                .unwrap_or_default()
        });
        tokio::time::sleep(left)
    }

    fn registered(&self, addr: &str, r: &strait_proto::msg::Registered) {
        tracing::info!(coordinator = %addr, overlay_ip = %r.overlay_ip, "registered");
        self.telemetry.metrics.set_session_up(true);
        for refusal in &r.refused {
            tracing::warn!(prefix = %refusal.prefix, reason = %refusal.reason, "coordinator refused an advertised prefix");
        }
    }

    fn publish(&self, map: &NetworkMap) {
        if let Err(e) = save_map(&self.map_path, map) {
            tracing::warn!(error = %e, "could not save the map");
        }
        self.maps.send_replace(Some(Arc::new(map.clone())));
        self.telemetry.readiness.set_ready();
    }
}

async fn connect(config: &Config, certs: &CertStore, addr: &str) -> Result<quinn::Connection> {
    let bundle = certs.bundle();
    let tls = client_config(
        &bundle.ca,
        Some(certs.clone()),
        &config.mesh,
        &[Role::Coordinator],
        ALPN,
    )?;
    let target = resolve(addr).await.map_err(anyhow::Error::msg)?;
    let endpoint = quinn::Endpoint::client(wildcard(target)).context("opening a UDP socket")?;
    let mut quic = quic_client_config(tls)?;
    let mut transport = quinn::TransportConfig::default();
    // A coordinator that died (rather than closing the session) is noticed after
    // SESSION_IDLE_TIMEOUT of silence; the agent then moves to the next coordinator.
    transport
        .keep_alive_interval(Some(SESSION_KEEPALIVE))
        .max_idle_timeout(Some(
            SESSION_IDLE_TIMEOUT
                .try_into()
                .context("session idle timeout")?,
        ));
    quic.transport_config(Arc::new(transport));
    Ok(client::connect(&endpoint, target, quic, Duration::from_secs(5)).await?)
}

fn load_map(path: &Path) -> Result<Option<NetworkMap>> {
    if !path.exists() {
        return Ok(None);
    }
    strait_pki::files::check_file(path, strait_pki::files::Sensitivity::Integrity)?;
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(Some(
        serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?,
    ))
}

fn save_map(path: &Path, map: &NetworkMap) -> Result<()> {
    let text = serde_json::to_vec_pretty(map)?;
    write_file(path, &text, 0o600)?;
    Ok(())
}

/// Renews this node's certificate through the coordinator (built-in CA): a fresh key and
/// CSR made here, sent over a connection authenticated by the current certificate.
struct CoordinatorRenewal {
    config: Config,
    certs: CertStore,
}

impl CertSource for CoordinatorRenewal {
    async fn fetch(&self) -> Result<CertBundle, String> {
        let identity = self.certs.identity();
        let node_key = generate_csr(&identity.dns_name()).map_err(|e| e.to_string())?;
        let mut tried = Vec::new();
        for addr in &self.config.coordinators {
            let conn = match connect(&self.config, &self.certs, addr).await {
                Ok(c) => c,
                Err(e) => {
                    tried.push(format!("{addr}: {e:#}"));
                    continue;
                }
            };
            let request = Request::Renew {
                csr_pem: node_key.csr_pem.clone(),
            };
            let answer = client::call(&conn, &request, Duration::from_secs(10)).await;
            conn.close(0u32.into(), b"renewed");
            match answer {
                Ok(Response::Renewed { cert_pem, ca_pem }) => {
                    let leaf = parse_certs("renewed certificate", &cert_pem)
                        .map_err(|e| e.to_string())?
                        .remove(0);
                    let bundle = bundle_from_signed(&leaf, node_key.key.clone(), &ca_pem)
                        .map_err(|e| e.to_string())?;
                    if bundle.identity != identity {
                        return Err(format!(
                            "renewed certificate names {} instead of {identity}",
                            bundle.identity
                        ));
                    }
                    bundle
                        .save(&self.config.tls_dir())
                        .map_err(|e| e.to_string())?;
                    return Ok(bundle);
                }
                Ok(Response::Error(e)) => return Err(format!("coordinator refused renewal: {e}")),
                Ok(other) => return Err(format!("unexpected answer to renewal: {other:?}")),
                Err(e) => tried.push(format!("{addr}: {e}")),
            }
        }
        Err(format!(
            "renewal through the coordinator failed: {}",
            tried.join("; ")
        ))
    }

    fn expiry_advice(&self) -> String {
        let dir = self.config.tls_dir();
        format!(
            "with the built-in CA a node renews through the coordinator, authenticated by its current certificate, which an expired one cannot do: \
             enroll this node again: stop the agent, remove {} and start it with a new join token (`straitctl token create --site {} --role {}`)",
            dir.display(),
            self.config.site,
            self.config.role
        )
    }
}

/// Saves every renewed certificate in the state directory.
struct SavingSource<S> {
    inner: S,
    dir: PathBuf,
}

impl<S: CertSource> CertSource for SavingSource<S> {
    async fn fetch(&self) -> Result<CertBundle, String> {
        let bundle = self.inner.fetch().await?;
        bundle.save(&self.dir).map_err(|e| e.to_string())?;
        Ok(bundle)
    }

    fn expiry_advice(&self) -> String {
        self.inner.expiry_advice()
    }
}

/// Says at start what to do when this node's certificate has already expired.
fn report_expired(config: &Config, bundle: &CertBundle) {
    if bundle.not_after > std::time::SystemTime::now() {
        return;
    }
    let expired_at = humantime::format_rfc3339_seconds(bundle.not_after);
    if config.vault.is_some() {
        tracing::warn!(%expired_at, "this node's certificate expired; asking Vault for a new one");
    } else {
        tracing::error!(
            %expired_at,
            "this node's certificate expired and cannot renew through the coordinator; enroll again: stop the agent, remove {} and start it with a new join token (`straitctl token create --site {} --role {}`)",
            config.tls_dir().display(),
            config.site,
            config.role
        );
    }
}

/// Checks at start that the configuration can run here.
/// The state directory and everything the agent keeps in it, before anything is used: the
/// directories created 0700, or existing ones checked (refused if another user owns them or
/// may write into them, tightened to 0700 if others may only read them), and every file in
/// them refused if another user could have written it (keys also if others can read them;
/// see `strait_pki::files`).
pub fn preflight(config: &Config) -> Result<()> {
    use strait_pki::files::{check_file, private_dir, Sensitivity};
    for dir in [config.state_dir.clone(), config.tls_dir()] {
        if dir == config.tls_dir() && !dir.exists() {
            continue;
        }
        let tightened = private_dir(&dir).map_err(|e| anyhow::anyhow!("key `state-dir`: {e}"))?;
        if tightened {
            tracing::info!(dir = %dir.display(), "directory was readable by others; set to mode 0700");
        }
    }
    let tls = config.tls_dir();
    for (path, s) in [
        (config.state_dir.join("wg.key"), Sensitivity::Secret),
        (config.state_dir.join("map.json"), Sensitivity::Integrity),
        (tls.join("key.pem"), Sensitivity::Secret),
        (tls.join("cert.pem"), Sensitivity::Integrity),
        (tls.join("ca.pem"), Sensitivity::Integrity),
    ] {
        check_file(&path, s).map_err(|e| anyhow::anyhow!("key `state-dir`: {e}"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_a_cap_with_bounded_jitter() {
        assert_eq!(backoff(0, 0.0), Duration::from_millis(500));
        assert_eq!(backoff(2, 0.0), Duration::from_secs(2));
        assert_eq!(backoff(20, 0.0), Duration::from_secs(30));
        assert_eq!(backoff(20, 1.0), Duration::from_millis(37_500));
    }
}
