//! The coordinator as the simulator runs it: the real registry ([`Mesh`]) and handlers, the
//! real SQLite store in a temporary file (a restart reads it back), the real built-in CA,
//! and the fan-out's pure bookkeeping ([`Sessions`], and the settling delays
//! `fanout::settle_at` combines). What
//! `server/` does with tokio and quinn is done here synchronously: a session registers,
//! gets `Registered` and its snapshot, then the update [`handlers::session::update`]
//! decides whenever a version concerns it (or once versions settle); a newer session of a
//! node closes the older; a session ends when the certificate it was opened with expires.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use strait_coordinator::config::Config;
use strait_coordinator::fanout::{Sessions, VERSION_ONLY_DELAY, VERSION_ONLY_MAX_WAIT};
use strait_coordinator::handlers::session::Update;
use strait_coordinator::handlers::{self, admission, core_err, SeededEntropy};
use strait_coordinator::mesh::{Mesh, NodeKey, NodeView, StoreOp, Views};
use strait_coordinator::store::{SqliteStore, Store};
use strait_pki::ca::BuiltinCa;
use strait_pki::Identity;
use strait_proto::msg::{close, AgentEvent, ErrorBody, ErrorCode, Request, Response, SessionEvent};
use strait_proto::probe::{Action as CommandAction, Command};

/// What the coordinator does to a connection.
// Executed at once, never stored in bulk: a frame's size does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum Out {
    Send(u64, SessionEvent),
    /// Finish the session stream (after what was sent).
    Finish(u64),
    /// Close the connection with a reason.
    Close(u64, String),
}

/// A session the coordinator holds, by connection.
#[derive(Debug)]
struct Held {
    key: NodeKey,
    serial: String,
    not_after: u64,
    /// The view its map was last sent from (`None` until registered).
    view: Option<NodeView>,
    fan: u64,
}

/// What a connection presents at its handshake.
#[derive(Debug, Clone)]
pub struct Presented {
    pub identity: Identity,
    pub serial: String,
    pub not_after: u64,
}

pub struct Coordinator {
    pub config: Arc<Config>,
    path: PathBuf,
    store: Option<SqliteStore>,
    mesh: Option<Mesh>,
    pub ca: BuiltinCa,
    rng: SeededEntropy,
    pub generation: u64,
    held: BTreeMap<u64, Held>,
    by_node: BTreeMap<NodeKey, u64>,
    fan: Sessions<u64>,
    views: Arc<Views>,
    /// Versions published since the last settling: the first's and the last's times.
    unsettled: Option<(Duration, Duration)>,
    next_command: u64,
    epoch: SystemTime,
}

impl Coordinator {
    /// A coordinator with an empty store at `path`.
    pub fn new(config: Arc<Config>, path: PathBuf, seed: u64, epoch: SystemTime) -> Coordinator {
        let ca = BuiltinCa::generate(&config.mesh).expect("generating the simulation's CA");
        let mut c = Coordinator {
            config,
            path,
            store: None,
            mesh: None,
            ca,
            rng: SeededEntropy::new(seed),
            generation: 0,
            held: BTreeMap::new(),
            by_node: BTreeMap::new(),
            fan: Sessions::default(),
            views: Arc::new(Views::default()),
            unsettled: None,
            next_command: 1,
            epoch,
        };
        c.start();
        c
    }

    pub fn is_up(&self) -> bool {
        self.mesh.is_some()
    }

    /// The registry (the coordinator is up).
    pub fn mesh(&self) -> Option<&Mesh> {
        self.mesh.as_ref()
    }

    /// Starts: the store opened, the registry loaded from it.
    pub fn start(&mut self) {
        let mut store = SqliteStore::open(&self.path).expect("opening the simulation's store");
        let persisted = store.load().expect("loading the simulation's store");
        let mesh = Mesh::new(self.config.clone(), persisted);
        self.views = mesh.views();
        self.mesh = Some(mesh);
        self.store = Some(store);
        self.generation += 1;
        self.unsettled = None;
    }

    /// Crashes: memory is lost (sessions, live figures); the store stays.
    pub fn crash(&mut self) {
        self.mesh = None;
        self.store = None;
        self.held.clear();
        self.by_node.clear();
        self.fan = Sessions::default();
        self.unsettled = None;
    }

    fn sys(&self, now: Duration) -> SystemTime {
        self.epoch + now
    }

    fn unix(&self, now: Duration) -> u64 {
        handlers::unix(self.sys(now))
    }

    /// Runs `f` on the registry, persists its ops, and publishes a new version to the
    /// sessions it concerns.
    pub fn mutate<T>(
        &mut self,
        now: Duration,
        out: &mut Vec<Out>,
        f: impl FnOnce(
            &mut Mesh,
            &BuiltinCa,
            &mut SeededEntropy,
        ) -> Result<(T, Vec<StoreOp>), ErrorBody>,
    ) -> Result<T, ErrorBody> {
        let (Some(mesh), Some(store)) = (self.mesh.as_mut(), self.store.as_mut()) else {
            return Err(ErrorBody::new(ErrorCode::Unavailable, "coordinator down"));
        };
        let before = mesh.version();
        let (value, ops) = f(mesh, &self.ca, &mut self.rng)?;
        store
            .apply(&ops)
            .expect("writing the simulation's SQLite store");
        if mesh.version() != before {
            self.publish(now, out);
        }
        Ok(value)
    }

    fn publish(&mut self, now: Duration, out: &mut Vec<Out>) {
        let Some(mesh) = &self.mesh else { return };
        let next = mesh.views();
        if next.version <= self.views.version {
            return;
        }
        let changes = self.views.changes(&next);
        let concerned: Vec<u64> = self
            .fan
            .concerned(&changes, &next)
            .into_iter()
            .copied()
            .collect();
        self.views = next;
        for conn in concerned {
            self.update(conn, false, out);
        }
        self.unsettled = Some(match self.unsettled {
            Some((first, _)) => (first, now),
            None => (now, now),
        });
    }

    /// When versions settle next (see `fanout::settle_at`).
    fn settle_at(&self) -> Option<Duration> {
        let (first, last) = self.unsettled?;
        Some((last + VERSION_ONLY_DELAY).min(first + VERSION_ONLY_MAX_WAIT))
    }

    /// The session on `conn` catches up with the views.
    fn update(&mut self, conn: u64, settling: bool, out: &mut Vec<Out>) {
        let Some(held) = self.held.get_mut(&conn) else {
            return;
        };
        let Some(view) = &held.view else { return };
        match handlers::session::update(view, &self.views, &held.key, settling) {
            Update::Nothing => {}
            Update::Send { delta, next, .. } => {
                out.push(Out::Send(conn, SessionEvent::Delta(delta)));
                held.view = Some(next);
            }
            Update::Removed(body) => {
                out.push(Out::Send(conn, SessionEvent::Closing(body)));
                out.push(Out::Finish(conn));
                self.forget(conn);
            }
        }
    }

    /// The session on `conn` is over (the connection may live on).
    pub fn forget(&mut self, conn: u64) {
        if let Some(held) = self.held.remove(&conn) {
            self.fan.remove(&held.key, held.fan);
            if self.by_node.get(&held.key) == Some(&conn) {
                self.by_node.remove(&held.key);
            }
        }
    }

    /// The earliest time [`Coordinator::on_time`] has something to do.
    pub fn deadline(&self) -> Option<Duration> {
        if !self.is_up() {
            return None;
        }
        let expiry = self
            .held
            .values()
            .map(|h| Duration::from_secs(h.not_after).saturating_sub(self.since_epoch()))
            .min();
        [self.settle_at(), expiry].into_iter().flatten().min()
    }

    fn since_epoch(&self) -> Duration {
        self.epoch
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
    }

    /// Settles versions and ends sessions whose certificate expired, as due at `now`.
    pub fn on_time(&mut self, now: Duration, out: &mut Vec<Out>) {
        if !self.is_up() {
            return;
        }
        if self.settle_at().is_some_and(|t| t <= now) {
            self.unsettled = None;
            let conns: Vec<u64> = self.held.keys().copied().collect();
            for conn in conns {
                self.update(conn, true, out);
            }
        }
        let unix = self.unix(now);
        let expired: Vec<u64> = self
            .held
            .iter()
            .filter(|(_, h)| h.not_after <= unix)
            .map(|(c, _)| *c)
            .collect();
        for conn in expired {
            let serial = self.held[&conn].serial.clone();
            let body = ErrorBody::new(
                ErrorCode::Unauthenticated,
                format!("the certificate this session was opened with (serial {serial}) expired; reconnect with a renewed certificate"),
            );
            out.push(Out::Send(conn, SessionEvent::Closing(body)));
            out.push(Out::Finish(conn));
            out.push(Out::Close(
                conn,
                format!("code {}: certificate expired", close::CERT_EXPIRED),
            ));
            self.forget(conn);
        }
    }

    /// The one-second tick: nodes without heartbeats go offline.
    pub fn tick(&mut self, now: Duration, out: &mut Vec<Out>) {
        let unix = self.unix(now);
        let _ = self.mutate(now, out, |mesh, _, _| Ok(((), mesh.tick(unix))));
    }

    /// Whether the transport refuses a connection presenting `serial` (revoked).
    pub fn refuses(&self, serial: &str) -> bool {
        self.mesh.as_ref().is_some_and(|m| m.is_revoked(serial))
    }

    /// A session stream's first frame: the subscription.
    pub fn subscribe(
        &mut self,
        now: Duration,
        conn: u64,
        who: &Presented,
        request: Request,
        out: &mut Vec<Out>,
    ) -> Result<(), ErrorBody> {
        let identity = match admission::admit(Some(&who.identity), &request) {
            Ok(admission::Admitted::Identity(id)) => id.clone(),
            Ok(admission::Admitted::Enrollment) | Err(_) => {
                let body = ErrorBody::new(ErrorCode::BadRequest, "not a subscription");
                out.push(Out::Send(conn, SessionEvent::Closing(body.clone())));
                out.push(Out::Finish(conn));
                return Err(body);
            }
        };
        let Request::Subscribe(reg) = request else {
            let body = ErrorBody::new(ErrorCode::BadRequest, "expected a subscription");
            out.push(Out::Send(conn, SessionEvent::Closing(body.clone())));
            out.push(Out::Finish(conn));
            return Err(body);
        };
        let key = handlers::session::node_key(&identity);
        let fan = self.fan.insert(&key, conn);
        self.held.insert(
            conn,
            Held {
                key: key.clone(),
                serial: who.serial.clone(),
                not_after: who.not_after,
                view: None,
                fan,
            },
        );
        let sys = self.sys(now);
        let registered = self.mutate(now, out, |mesh, _, _| {
            handlers::session::register(mesh, &identity, &reg, &who.serial, who.not_after, sys)
                .map_err(core_err)
        });
        let registered = match registered {
            Ok(r) => r,
            Err(e) => {
                self.forget(conn);
                out.push(Out::Send(conn, SessionEvent::Closing(e.clone())));
                out.push(Out::Finish(conn));
                return Err(e);
            }
        };
        if let Some(old) = self.by_node.insert(key.clone(), conn) {
            if old != conn {
                self.forget(old);
                out.push(Out::Close(
                    old,
                    format!("code {}: replaced by a newer session", close::SHUTDOWN),
                ));
            }
        }
        let Some((view, snapshot)) = handlers::session::snapshot(&self.views, &key) else {
            self.forget(conn);
            out.push(Out::Finish(conn));
            return Ok(());
        };
        out.push(Out::Send(conn, SessionEvent::Registered(registered)));
        out.push(Out::Send(conn, SessionEvent::Snapshot(snapshot)));
        if let Some(h) = self.held.get_mut(&conn) {
            h.view = Some(view);
        }
        Ok(())
    }

    /// What a node reported on its session.
    pub fn agent_event(
        &mut self,
        now: Duration,
        conn: u64,
        event: AgentEvent,
        out: &mut Vec<Out>,
    ) -> Option<Result<(), ErrorBody>> {
        let key = self.held.get(&conn)?.key.clone();
        if let AgentEvent::Probe { .. } = event {
            return Some(Ok(()));
        }
        let sys = self.sys(now);
        Some(self.mutate(now, out, |mesh, _, _| {
            Ok(((), handlers::session::agent_event(mesh, &key, &event, sys)?))
        }))
    }

    /// `straitctl revoke`: the node leaves the registry and its session is closed.
    pub fn revoke(
        &mut self,
        now: Duration,
        node: &str,
        out: &mut Vec<Out>,
    ) -> Result<Vec<String>, ErrorBody> {
        let sys = self.sys(now);
        let revoked = self.mutate(now, out, |mesh, _, _| {
            handlers::operator::revoke(mesh, node, sys)
        })?;
        if let Some(conn) = self.by_node.get(&revoked.node).copied() {
            self.forget(conn);
            out.push(Out::Close(
                conn,
                format!("code {}: certificate revoked", close::REVOKED),
            ));
        }
        Ok(revoked.serials)
    }

    /// `straitctl rotate-key`: the command goes to the node's session.
    pub fn rotate_key(&mut self, node: &str, out: &mut Vec<Out>) -> Result<u64, ErrorBody> {
        let mesh = self
            .mesh
            .as_ref()
            .ok_or_else(|| ErrorBody::new(ErrorCode::Unavailable, "coordinator down"))?;
        let key = handlers::operator::rotate_key_target(mesh, node)?;
        let conn = self.by_node.get(&key).copied().ok_or_else(|| {
            ErrorBody::new(ErrorCode::Unavailable, format!("{node} has no session"))
        })?;
        let id = self.next_command;
        self.next_command += 1;
        out.push(Out::Send(
            conn,
            SessionEvent::Command(Command {
                id,
                action: CommandAction::RotateKey,
            }),
        ));
        Ok(id)
    }

    /// `straitctl token create`.
    pub fn create_token(
        &mut self,
        now: Duration,
        site: &str,
        role: strait_pki::Role,
    ) -> Result<String, ErrorBody> {
        let sys = self.sys(now);
        let mut out = Vec::new();
        let created = self.mutate(now, &mut out, |mesh, ca, rng| {
            handlers::operator::create_token(mesh, ca, site, role, 3600, sys, rng)
        })?;
        Ok(created.token)
    }

    /// A one-shot request from a node (enrollment, renewal): its answer.
    pub fn request(
        &mut self,
        now: Duration,
        who: Option<&Presented>,
        request: Request,
    ) -> Response {
        let mut out = Vec::new();
        let sys = self.sys(now);
        let identity = who.map(|w| w.identity.clone());
        let r = match admission::admit(identity.as_ref(), &request) {
            Err(refused) => Response::Error(refused.error),
            Ok(admission::Admitted::Enrollment) => {
                let Request::Enroll(req) = &request else {
                    unreachable!("only enrollments are admitted as such")
                };
                let mesh_name = self.config.mesh.clone();
                match handlers::certs::check_enrollment(&self.ca, &mesh_name, req) {
                    Err(e) => Response::Error(e),
                    Ok(enrollment) => self
                        .mutate(now, &mut out, |mesh, ca, rng| {
                            handlers::certs::enroll(mesh, ca, &enrollment, sys, rng)
                        })
                        .map_or_else(Response::Error, |issued| issued.enrolled()),
                }
            }
            Ok(admission::Admitted::Identity(id)) => match &request {
                Request::Renew { csr_pem } => {
                    let id = id.clone();
                    let serial = who.map_or(String::new(), |w| w.serial.clone());
                    self.mutate(now, &mut out, |mesh, ca, rng| {
                        handlers::certs::renew(mesh, ca, &id, &serial, csr_pem, sys, rng)
                    })
                    .map_or_else(Response::Error, |issued| issued.renewed())
                }
                _ => Response::Error(ErrorBody::new(ErrorCode::BadRequest, "not simulated")),
            },
        };
        debug_assert!(out.is_empty(), "enrollment and renewal change no map");
        r
    }

    /// Who holds the node's session now.
    pub fn session_of(&self, key: &NodeKey) -> Option<u64> {
        self.by_node.get(key).copied()
    }
}
