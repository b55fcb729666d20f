//! The session's IO shell: connections to the coordinators over QUIC, the session streams'
//! frames, timers, the map file, operator commands' tasks and the certificate renewal
//! task. Every decision is [`Session`]'s (see `session.rs`); this loop feeds it events with
//! the time and executes the actions it returns. The last map is kept in the state
//! directory and used at start when no coordinator answers.

mod renewal;

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result};
use quinn::{RecvStream, SendStream};
use strait_observe::Readiness;
use strait_pki::material::write_file;
use strait_pki::renewal::{self as cert_renewal, RenewalState};
use strait_pki::tls::{self, client_config, quic_client_config, CertStore};
use strait_pki::vault::{VaultCertSource, VaultPki};
use strait_pki::Role;
use strait_proto::access::AccessDrop;
use strait_proto::frame::MAX_FRAME;
use strait_proto::map::NetworkMap;
use strait_proto::msg::{
    AgentEvent, BgpReport, PeerLink, Refusal, Registration, Request, SessionEvent,
};
use strait_proto::probe::ProbeEvent;
use strait_proto::{client, io as wire, ALPN};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;

use crate::commands;
use crate::config::Config;
use crate::dataplane::pump::PingRequest;
use crate::enroll::{ensure_certificate, resolve};
use crate::keyrotation::KeyRotation;
use crate::metrics::AgentMetrics;
use crate::session::{self, Action, ConnId, Event, Session};
use crate::wgkey::WgKey;
use renewal::{report_expired, CoordinatorRenewal, SavingSource};

/// QUIC keep-alives on the session, so a silent coordinator is told from an idle one.
const SESSION_KEEPALIVE: Duration = Duration::from_secs(2);
/// A session with nothing received for this long is over (the coordinator died or the path
/// is gone); the agent then tries the next coordinator.
const SESSION_IDLE_TIMEOUT: Duration = Duration::from_secs(10);

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
    /// A gateway's BGP side (with `[bgp]`), sent with the links.
    pub bgp: watch::Receiver<Option<BgpReport>>,
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
        None => cert_renewal::spawn_counted(
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
            cert_renewal::spawn_counted(source, certs.clone())
        }
    };
    telemetry
        .metrics
        .set_renewal(renewal_state.clone(), renewal_counts);
    let map_path = config.state_dir.join("map.json");
    let saved_map = match load_map(&map_path) {
        Ok(Some(map)) => {
            tracing::info!(
                version = map.version,
                peers = map.peers.len(),
                "using the last known map until a coordinator answers"
            );
            let map = Arc::new(map);
            maps.send_replace(Some(map.clone()));
            telemetry.readiness.set_ready();
            Some(map)
        }
        Ok(None) => None,
        Err(e) => {
            tracing::warn!(error = %e, "ignoring the saved map");
            None
        }
    };
    let registration = Registration {
        wg_public_key: wg.public_base64(),
        endpoints: config.endpoints.clone(),
        prefixes: config.prefixes.clone(),
        agent_version: env!("CARGO_PKG_VERSION").to_string(),
        have_version: None,
        priority: config.priority,
    };
    let rotation = KeyRotation::new(
        config.wg_key_rotation,
        WgKey::age_of_file(&config.state_dir.join("wg.key")),
        Instant::now(),
    );
    let settings = session::Settings {
        coordinators: config.coordinators.clone(),
        heartbeat_interval: config.heartbeat_interval,
        registration,
        rotation,
        saved_map,
        seed: seed(),
    };
    let mut session = Session::new(settings, Instant::now())?;
    let (frames_tx, frames) = mpsc::channel(64);
    let (progress_tx, progress) = mpsc::channel(256);
    let mut shell = Shell {
        config: &config,
        certs,
        telemetry: &telemetry,
        maps,
        map_path,
        keys: reports.keys,
        commands: commands::Context::new(reports.pings),
        links: HashMap::new(),
        connecting: Tasks::default(),
        running: Tasks::default(),
        frames_tx,
        progress_tx,
        next_key: None,
    };
    let inputs = Inputs {
        frames,
        progress,
        conflicts: reports.conflicts,
        links: reports.links,
        access_drops: reports.access_drops,
        bgp: reports.bgp,
        renewal: renewal_state,
    };
    shell.drive(&mut session, inputs, shutdown).await;
    renewal_task.abort();
    tracing::info!("agent stopped");
    Ok(())
}

/// Seeds the session's reconnect jitter.
fn seed() -> u64 {
    let mut b = [0u8; 8];
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b);
    u64::from_le_bytes(b)
}

/// What the session hears besides timers.
struct Inputs {
    frames: mpsc::Receiver<(ConnId, Read)>,
    progress: mpsc::Receiver<(u64, ProbeEvent)>,
    conflicts: watch::Receiver<Vec<Refusal>>,
    links: watch::Receiver<Vec<PeerLink>>,
    access_drops: watch::Receiver<Vec<AccessDrop>>,
    bgp: watch::Receiver<Option<BgpReport>>,
    renewal: watch::Receiver<RenewalState>,
}

/// One frame read from a session stream, its end (`Ok(None)`) or a failure.
type Read = Result<Option<SessionEvent>, wire::IoError>;

/// An open connection: its session stream's sending half, the task reading the other.
struct Link {
    conn: quinn::Connection,
    send: SendStream,
    reader: tokio::task::JoinHandle<()>,
    /// When the certificate the coordinator presented expires.
    coordinator_not_after: Option<SystemTime>,
}

impl Drop for Link {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

/// What a connection attempt yields.
struct Opened {
    conn: quinn::Connection,
    send: SendStream,
    recv: RecvStream,
    /// The certificate this node presented.
    serial: String,
}

/// Tasks that report, when they end (a panic too), the key they were started with.
struct Tasks<K, T> {
    set: JoinSet<T>,
    keys: HashMap<tokio::task::Id, K>,
}

impl<K, T: Send + 'static> Default for Tasks<K, T> {
    fn default() -> Self {
        Tasks {
            set: JoinSet::new(),
            keys: HashMap::new(),
        }
    }
}

impl<K, T: Send + 'static> Tasks<K, T> {
    fn spawn(&mut self, key: K, task: impl Future<Output = T> + Send + 'static) {
        let handle = self.set.spawn(task);
        self.keys.insert(handle.id(), key);
    }

    /// The next task to end; pending while there is none.
    async fn next(&mut self) -> (Option<K>, Result<T, tokio::task::JoinError>) {
        match self.set.join_next_with_id().await {
            Some(Ok((id, value))) => (self.keys.remove(&id), Ok(value)),
            Some(Err(e)) => (self.keys.remove(&e.id()), Err(e)),
            None => std::future::pending().await,
        }
    }

    fn abort_all(&mut self) {
        self.set.abort_all();
        self.keys.clear();
    }
}

struct Shell<'a> {
    config: &'a Config,
    certs: CertStore,
    telemetry: &'a Telemetry,
    maps: watch::Sender<Option<Arc<NetworkMap>>>,
    map_path: PathBuf,
    keys: watch::Sender<Arc<WgKey>>,
    commands: commands::Context,
    links: HashMap<ConnId, Link>,
    connecting: Tasks<ConnId, Result<Opened>>,
    running: Tasks<u64, ()>,
    frames_tx: mpsc::Sender<(ConnId, Read)>,
    progress_tx: mpsc::Sender<(u64, ProbeEvent)>,
    /// The key a rotation generated, until the switch.
    next_key: Option<WgKey>,
}

impl Shell<'_> {
    /// Feeds `session` until `shutdown`.
    async fn drive(
        &mut self,
        session: &mut Session,
        mut inputs: Inputs,
        shutdown: impl Future<Output = ()>,
    ) {
        tokio::pin!(shutdown);
        let now = Instant::now();
        let serial = self.certs.bundle().serial;
        session.handle(now, Event::CertificateRenewed { serial });
        let conflicts = inputs.conflicts.borrow_and_update().clone();
        session.handle(now, Event::RouteConflicts(conflicts));
        let peers = inputs.links.borrow_and_update().clone();
        let access_drops = inputs.access_drops.borrow().clone();
        let bgp = inputs.bgp.borrow().clone();
        session.handle(
            now,
            Event::Links {
                peers,
                access_drops,
                bgp,
            },
        );
        inputs.renewal.borrow_and_update();
        let (mut conflicts_alive, mut links_alive, mut renewal_alive) = (true, true, true);
        loop {
            while let Some(action) = session.poll_action() {
                if let Some(event) = self.execute(action).await {
                    session.handle(Instant::now(), event);
                }
            }
            let deadline = session.poll_timeout();
            let timer = async {
                match deadline {
                    Some(t) => tokio::time::sleep_until(t.into()).await,
                    None => std::future::pending().await,
                }
            };
            let event = tokio::select! {
                () = timer => {
                    session.handle_timeout(Instant::now());
                    continue;
                }
                (conn, opened) = self.connecting.next() => {
                    let Some(conn) = conn else { continue };
                    self.connected(conn, opened)
                }
                Some((conn, read)) = inputs.frames.recv() => match read {
                    Ok(Some(frame)) => Event::Frame { conn, frame },
                    Ok(None) => Event::Ended { conn, error: None },
                    Err(e) => Event::Ended { conn, error: Some(format!("reading from the coordinator: {e}")) },
                },
                Some((id, event)) = inputs.progress.recv() => Event::CommandProgress { id, event },
                (id, _) = self.running.next() => match id {
                    Some(id) => Event::CommandEnded { id },
                    None => continue,
                },
                changed = inputs.conflicts.changed(), if conflicts_alive => {
                    if changed.is_err() {
                        conflicts_alive = false;
                        continue;
                    }
                    Event::RouteConflicts(inputs.conflicts.borrow_and_update().clone())
                }
                changed = inputs.links.changed(), if links_alive => {
                    if changed.is_err() {
                        links_alive = false;
                        continue;
                    }
                    let peers = inputs.links.borrow_and_update().clone();
                    let access_drops = inputs.access_drops.borrow().clone();
                    let bgp = inputs.bgp.borrow().clone();
                    Event::Links { peers, access_drops, bgp }
                }
                changed = inputs.renewal.changed(), if renewal_alive => {
                    if changed.is_err() {
                        renewal_alive = false;
                        continue;
                    }
                    match &*inputs.renewal.borrow_and_update() {
                        RenewalState::Valid { serial, .. } => Event::CertificateRenewed { serial: serial.clone() },
                        _ => continue,
                    }
                }
                () = &mut shutdown => break,
            };
            session.handle(Instant::now(), event);
        }
        self.connecting.abort_all();
        self.running.abort_all();
    }

    /// A connection attempt ended.
    fn connected(
        &mut self,
        conn: ConnId,
        opened: Result<Result<Opened>, tokio::task::JoinError>,
    ) -> Event {
        let opened = match opened {
            Ok(Ok(opened)) => opened,
            Ok(Err(e)) => {
                return Event::ConnectFailed {
                    conn,
                    error: format!("{e:#}"),
                }
            }
            Err(e) => {
                return Event::ConnectFailed {
                    conn,
                    error: format!("connecting failed: {e}"),
                }
            }
        };
        // The certificate the coordinator authenticated this connection with: when it
        // expires the session moves to a new connection (whose handshake checks the
        // coordinator's current certificate), as the coordinator ends a session at the
        // agent's certificate's expiry.
        let not_after = tls::peer_certificate(&opened.conn).map(|c| c.not_after);
        let left = not_after.map(|t| {
            t.duration_since(SystemTime::now())
                .unwrap_or(Duration::ZERO)
        });
        let reader = spawn_reader(conn, opened.recv, self.frames_tx.clone());
        self.links.insert(
            conn,
            Link {
                conn: opened.conn,
                send: opened.send,
                reader,
                coordinator_not_after: not_after,
            },
        );
        Event::Connected {
            conn,
            serial: opened.serial,
            coordinator_cert_left: left,
        }
    }

    /// Executes `action`; some report back at once.
    async fn execute(&mut self, action: Action) -> Option<Event> {
        match action {
            Action::Connect {
                conn,
                coordinator,
                registration,
            } => {
                let (config, certs) = (self.config.clone(), self.certs.clone());
                self.connecting.spawn(conn, async move {
                    subscribe(&config, &certs, &coordinator, registration).await
                });
                None
            }
            Action::Send { conn, event } => {
                let link = self.links.get_mut(&conn)?;
                match wire::write(&mut link.send, &event).await {
                    Ok(()) => None,
                    Err(e) => Some(Event::Ended {
                        conn,
                        error: Some(format!("{}: {e}", writing(&event))),
                    }),
                }
            }
            Action::Registered { conn } => {
                let not_after = self.links.get(&conn)?.coordinator_not_after;
                self.telemetry.metrics.set_session_up(true);
                self.telemetry
                    .metrics
                    .set_coordinator_cert_expiry(not_after);
                None
            }
            Action::Publish(map) => {
                if let Err(e) = save_map(&self.map_path, &map) {
                    tracing::warn!(error = %e, "could not save the map");
                }
                self.maps.send_replace(Some(map));
                self.telemetry.readiness.set_ready();
                None
            }
            Action::RunCommand { command, map } => {
                let id = command.id;
                let run = commands::run(
                    command,
                    map,
                    self.commands.clone(),
                    self.progress_tx.clone(),
                );
                self.running.spawn(id, run);
                None
            }
            Action::GenerateKey => {
                let key = WgKey::generate();
                let public = key.public_base64();
                self.next_key = Some(key);
                Some(Event::KeyGenerated { public })
            }
            Action::SwitchKey { public } => Some(self.switch_key(&public)),
            Action::Close { conn, reason } => {
                if let Some(link) = self.links.remove(&conn) {
                    link.conn.close(0u32.into(), reason.as_bytes());
                }
                None
            }
            Action::Over {
                conn,
                coordinator,
                reason,
                retry_in,
            } => {
                self.running.abort_all();
                let mut failure = (!reason.is_clean()).then(|| reason.to_string());
                if let Some(link) = conn.and_then(|c| self.links.remove(&c)) {
                    if let Some(closed) = link.conn.close_reason() {
                        failure = Some(format!("connection closed: {closed}"));
                    }
                    link.conn.close(0u32.into(), b"session over");
                }
                self.telemetry.metrics.set_session_up(false);
                self.telemetry.metrics.set_coordinator_cert_expiry(None);
                match failure {
                    None => tracing::info!(%coordinator, ?retry_in, "session ended"),
                    Some(error) => {
                        tracing::warn!(%coordinator, ?retry_in, %error, "session failed")
                    }
                }
                None
            }
        }
    }

    /// Switches to the generated key: saved first (a restart must not go back to the old
    /// key), then handed to the data plane.
    fn switch_key(&mut self, public: &str) -> Event {
        let Some(key) = self.next_key.take().filter(|k| k.public_base64() == public) else {
            tracing::error!(key = %public, "key rotation abandoned: the generated key is gone; the current key stays");
            return Event::KeySwitchFailed;
        };
        if let Err(e) = key.replace_file(&self.config.state_dir.join("wg.key")) {
            tracing::error!(error = %format!("{e:#}"), "key rotation abandoned: the current key stays");
            return Event::KeySwitchFailed;
        }
        self.keys.send_replace(Arc::new(key));
        Event::KeySwitched {
            public: public.to_string(),
        }
    }
}

/// What a failed write was doing, for the session's end.
fn writing(event: &AgentEvent) -> &'static str {
    match event {
        AgentEvent::Heartbeat { .. } => "sending a heartbeat",
        AgentEvent::RouteConflicts { .. } => "reporting route conflicts",
        AgentEvent::LinkReport { .. } => "reporting links",
        AgentEvent::Probe { .. } => "reporting a command's progress",
        AgentEvent::AnnounceKey { .. } | AgentEvent::KeyInUse { .. } => "key rotation",
    }
}

/// Reads `recv`'s frames into `frames` until its end; a `select!` over several
/// connections' streams (two during a move) stays simple this way.
fn spawn_reader(
    conn: ConnId,
    mut recv: RecvStream,
    frames: mpsc::Sender<(ConnId, Read)>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let read = wire::read::<SessionEvent, _>(&mut recv, MAX_FRAME).await;
            let end = !matches!(read, Ok(Some(_)));
            if frames.send((conn, read)).await.is_err() || end {
                break;
            }
        }
    })
}

/// Connects with the current certificate, opens the session stream and subscribes.
async fn subscribe(
    config: &Config,
    certs: &CertStore,
    addr: &str,
    registration: Registration,
) -> Result<Opened> {
    let serial = certs.bundle().serial;
    let conn = connect(config, certs, addr).await?;
    let (mut send, recv) = conn.open_bi().await.context("opening the session stream")?;
    wire::write(&mut send, &Request::Subscribe(registration)).await?;
    Ok(Opened {
        conn,
        send,
        recv,
        serial,
    })
}

pub(crate) async fn connect(
    config: &Config,
    certs: &CertStore,
    addr: &str,
) -> Result<quinn::Connection> {
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
