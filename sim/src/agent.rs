//! The agents: each node's real session state machine ([`Session`]) with a shell that does
//! what `control.rs` does, in virtual time: connections through the simulated network,
//! frames written and read, the map saved (as the JSON of `map.json`) and published, keys
//! generated and switched, commands ended at once (no probes are simulated), the
//! certificate enrolled with a join token and renewed through the coordinator at
//! `renew_at`. A restart keeps only what the agent keeps on disk: its certificate, its
//! WireGuard key and the saved map.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use ipnetwork::IpNetwork;
use strait_agent::keyrotation::KeyRotation;
use strait_agent::session::{Action, ConnId, Event, Session, Settings, State};
use strait_coordinator::mesh::NodeKey;
use strait_pki::material::{parse_certs, CertInfo};
use strait_pki::{Identity, Role};
use strait_proto::endpoint::Endpoint;
use strait_proto::map::NetworkMap;
use strait_proto::msg::{
    EndpointKind, EnrollRequest, ErrorCode, Registration, Request, Response, SessionEvent,
};

use crate::coord::Presented;
use crate::net::{self, Ev, Side};
use crate::ops::Kind;
use crate::rng::Rng;
use crate::trace::fnv;
use crate::world::{prefix_choice, World, COORDINATOR};

/// How often an agent without a certificate tries to enroll again.
const ENROLL_RETRY: Duration = Duration::from_secs(5);
/// The agents' heartbeat interval (the agent's default).
pub const HEARTBEAT: Duration = Duration::from_secs(5);

/// A certificate a node holds.
#[derive(Debug, Clone)]
pub struct Cert {
    pub serial: String,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
}

/// What a running agent process holds; lost when it stops.
pub struct Process {
    /// `None` while enrolling.
    pub session: Option<Session>,
    conns: BTreeMap<ConnId, u64>,
    /// The map last published to the data plane.
    pub published: Option<Arc<NetworkMap>>,
    next_key: Option<String>,
    /// When the enrollment or renewal timer is due.
    timer: Option<Duration>,
    in_flight: bool,
    renew_attempt: u32,
}

/// A node: its configuration, what its agent keeps on disk, and its process if running.
pub struct Node {
    pub index: usize,
    pub site_index: usize,
    pub site: String,
    pub name: String,
    pub role: Role,
    pub identity: Identity,
    pub prefixes: Vec<IpNetwork>,
    pub endpoints: Vec<Endpoint>,
    token: Option<String>,
    // On disk.
    pub cert: Option<Cert>,
    pub wg: String,
    wg_since: Duration,
    pub map_file: Option<String>,
    // What the simulator knows.
    pub revoked_at: Option<Duration>,
    /// Enrollment was refused (say, the token was used up by a request whose answer was
    /// lost): the node never joins.
    pub refused: Option<String>,
    /// The highest map version this node ever published.
    pub max_version: u64,
    pub partitioned: bool,
    /// Moves each time the node's path goes up or down.
    pub epoch: u64,
    pub process: Option<Process>,
    pub incarnation: u64,
    rng: Rng,
    rotation_period: Option<Duration>,
}

impl Node {
    pub fn id(&self) -> String {
        format!("{}/{}", self.site, self.name)
    }

    pub fn key(&self) -> NodeKey {
        (self.site.clone(), self.name.clone())
    }

    pub fn session(&self) -> Option<&Session> {
        self.process.as_ref()?.session.as_ref()
    }

    pub fn session_mut(&mut self) -> Option<&mut Session> {
        self.process.as_mut()?.session.as_mut()
    }

    pub fn published(&self) -> Option<&Arc<NetworkMap>> {
        self.process.as_ref()?.published.as_ref()
    }

    /// Registered with the coordinator and holding this session's map: what the
    /// properties call online.
    pub fn online(&self) -> bool {
        self.session().is_some_and(|s| {
            matches!(s.state(), State::Registered | State::Moving(_)) && s.map().is_some()
        })
    }

    /// What a connection with the current certificate presents.
    fn presented(&self) -> Option<Presented> {
        let cert = self.cert.as_ref()?;
        Some(Presented {
            identity: self.identity.clone(),
            serial: cert.serial.clone(),
            not_after: strait_coordinator::handlers::unix(cert.not_after),
        })
    }
}

impl World {
    /// An operator makes a join token and a new node enrolls with it, then runs.
    pub fn enroll(&mut self, site: usize, kind: Kind, prefixes: &[usize]) {
        let i = self.nodes.len();
        let site_name = self.coord.config.sites[site % self.coord.config.sites.len()]
            .name
            .clone();
        let site_index = site % self.sites;
        let (role, name) = match kind {
            Kind::Gateway => (Role::Gateway, format!("gw{i}")),
            Kind::Member => (Role::Member, format!("m{i}")),
        };
        let identity = Identity::node(&self.coord.config.mesh, &site_name, &name, role)
            .expect("simulated names are labels");
        let mut rng = self.rng.fork(0x6e6f_6465 + i as u64);
        let private: SocketAddr = format!("10.{}.0.{}:51820", site_index + 1, 10 + i)
            .parse()
            .expect("constant address");
        let mut endpoints = vec![Endpoint {
            address: private,
            kind: EndpointKind::Private,
            cost: None,
        }];
        if role == Role::Gateway {
            endpoints.push(Endpoint {
                address: format!("203.0.113.{}:51820", 1 + i)
                    .parse()
                    .expect("constant address"),
                kind: EndpointKind::Public,
                cost: None,
            });
        }
        let wg = base64::engine::general_purpose::STANDARD.encode(rng.bytes32());
        let rotation_period = rng
            .chance(0.5)
            .then(|| rng.millis(10 * 60_000, 30 * 60_000));
        let token = self.coord.create_token(self.now, &site_name, role).ok();
        self.nodes.push(Node {
            index: i,
            site_index,
            site: site_name,
            name,
            role,
            identity,
            prefixes: prefixes
                .iter()
                .map(|p| prefix_choice(site_index, self.sites, *p))
                .collect(),
            endpoints,
            token,
            cert: None,
            wg,
            wg_since: self.now,
            map_file: None,
            revoked_at: None,
            refused: None,
            max_version: 0,
            partitioned: false,
            epoch: 0,
            process: None,
            incarnation: 0,
            rng,
            rotation_period,
        });
        let id = self.nodes[i].id();
        self.record(format!("node #{i} is {id} ({role})"));
        self.start(i);
    }

    /// Starts node `i`'s agent: it enrolls first if it has no certificate.
    pub fn start(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        node.incarnation += 1;
        node.process = Some(Process {
            session: None,
            conns: BTreeMap::new(),
            published: None,
            next_key: None,
            timer: None,
            in_flight: false,
            renew_attempt: 0,
        });
        if node.cert.is_none() {
            if node.refused.is_none() {
                self.set_timer(i, self.now);
            }
            return;
        }
        self.begin_session(i);
    }

    /// The agent crashes: its connections' coordinator side times out later.
    pub fn stop(&mut self, i: usize) {
        let Some(p) = self.nodes[i].process.take() else {
            return;
        };
        self.stats.agent_restarts += 1;
        for conn in p.conns.values() {
            if let Some(c) = self.conns.get_mut(conn) {
                c.alive[Side::Agent.index()] = false;
                self.queue.push(
                    self.now + net::COORDINATOR_IDLE,
                    Ev::Gone {
                        conn: *conn,
                        side: Side::Coordinator,
                        error: "idle timeout".into(),
                    },
                );
            }
        }
    }

    /// `straitctl revoke` of node `i`.
    pub fn revoke(&mut self, i: usize) {
        if self.nodes[i].cert.is_none() || self.nodes[i].revoked_at.is_some() {
            return;
        }
        let id = self.nodes[i].id();
        let mut out = Vec::new();
        let r = self.coord.revoke(self.now, &id, &mut out);
        self.record(format!("revoke {id}: {r:?}"));
        if r.is_ok() {
            self.stats.revocations += 1;
            self.nodes[i].revoked_at = Some(self.now);
        }
        self.coordinator_out(out);
    }

    fn begin_session(&mut self, i: usize) {
        let now = self.instant(self.now);
        let node = &mut self.nodes[i];
        let saved_map = node
            .map_file
            .as_deref()
            .and_then(|text| serde_json::from_str::<NetworkMap>(text).ok().map(Arc::new));
        let age = self.now.saturating_sub(node.wg_since);
        let settings = Settings {
            coordinators: vec![COORDINATOR.to_string()],
            heartbeat_interval: HEARTBEAT,
            registration: Registration {
                wg_public_key: node.wg.clone(),
                endpoints: node.endpoints.clone(),
                prefixes: node.prefixes.clone(),
                agent_version: "sim".into(),
                have_version: None,
                priority: 0,
            },
            rotation: KeyRotation::new(node.rotation_period, age, now),
            saved_map: saved_map.clone(),
            seed: node.rng.next_u64(),
        };
        let mut session = Session::new(settings, now).expect("one coordinator is configured");
        let serial = node.cert.as_ref().expect("enrolled").serial.clone();
        session.handle(now, Event::CertificateRenewed { serial });
        session.handle(now, Event::RouteConflicts(Vec::new()));
        session.handle(
            now,
            Event::Links {
                peers: Vec::new(),
                access_drops: Vec::new(),
                bgp: None,
            },
        );
        let p = node.process.as_mut().expect("started");
        p.published = saved_map;
        p.session = Some(session);
        let renew = self.renew_at(i);
        self.set_timer(i, renew);
        self.drain(i);
    }

    /// When node `i`'s certificate is due for renewal (`strait_pki::renewal::renew_at`).
    fn renew_at(&mut self, i: usize) -> Duration {
        let node = &mut self.nodes[i];
        let cert = node.cert.as_ref().expect("enrolled");
        let jitter = node.rng.unit();
        let at = strait_pki::renewal::renew_at(cert.not_before, cert.not_after, jitter);
        at.duration_since(self.epoch).unwrap_or_default()
    }

    fn set_timer(&mut self, i: usize, at: Duration) {
        let node = &mut self.nodes[i];
        let Some(p) = node.process.as_mut() else {
            return;
        };
        p.timer = Some(at);
        let incarnation = node.incarnation;
        self.queue.push(
            at.max(self.now),
            Ev::NodeTimer {
                node: i,
                incarnation,
            },
        );
    }

    /// Node `i`'s timer: an enrollment attempt or a renewal.
    pub fn node_timer(&mut self, i: usize, incarnation: u64) {
        let node = &self.nodes[i];
        let Some(p) = node.process.as_ref() else {
            return;
        };
        if node.incarnation != incarnation || p.in_flight || p.timer.is_none_or(|t| t > self.now) {
            return;
        }
        if node.refused.is_some() || node.revoked_at.is_some() && node.cert.is_none() {
            return;
        }
        let request = match &node.cert {
            None => {
                if node.token.is_none() {
                    let (site, role) = (node.site.clone(), node.role);
                    self.nodes[i].token = self.coord.create_token(self.now, &site, role).ok();
                }
                let node = &self.nodes[i];
                let Some(token) = node.token.clone() else {
                    return self.set_timer(i, self.now + ENROLL_RETRY);
                };
                Request::Enroll(EnrollRequest {
                    token,
                    site: node.site.clone(),
                    node: node.name.clone(),
                    role: node.role,
                    csr_pem: self.csr.clone(),
                })
            }
            Some(_) => Request::Renew {
                csr_pem: self.csr.clone(),
            },
        };
        let who = match &request {
            Request::Enroll(_) => None,
            _ => self.nodes[i].presented(),
        };
        let bytes = match strait_proto::frame::encode(&request) {
            Ok(b) => b,
            Err(e) => return self.violate("codec", format!("a request could not be encoded: {e}")),
        };
        let p = self.nodes[i].process.as_mut().expect("checked");
        p.in_flight = true;
        p.timer = None;
        if self.usable(i) {
            let delay = self.cond.delay(&mut self.rng) + self.cond.delay(&mut self.rng);
            self.queue.push(
                self.now + delay,
                Ev::Request {
                    node: i,
                    incarnation,
                    who,
                    bytes: bytes[4..].to_vec(),
                    accepted: false,
                },
            );
        } else {
            self.queue.push(
                self.now + net::CONNECT_TIMEOUT,
                Ev::Answer {
                    node: i,
                    incarnation,
                    bytes: None,
                },
            );
        }
    }

    /// The answer to node `i`'s enrollment or renewal.
    pub fn answer(&mut self, i: usize, incarnation: u64, bytes: Option<Vec<u8>>) {
        if self.nodes[i].incarnation != incarnation {
            return;
        }
        let Some(p) = self.nodes[i].process.as_mut() else {
            return;
        };
        p.in_flight = false;
        let response = match bytes {
            Some(b) => self.decode_answer(&b),
            None => None,
        };
        let enrolled = self.nodes[i].cert.is_some();
        let id = self.nodes[i].id();
        match response {
            Some(Response::Enrolled { cert_pem, .. })
            | Some(Response::Renewed { cert_pem, .. }) => {
                let Some(cert) = read_cert(&cert_pem) else {
                    return self.violate(
                        "pki",
                        format!("{id}: the certificate it got does not parse"),
                    );
                };
                self.record(format!("{id} holds certificate {}", cert.serial));
                self.nodes[i].cert = Some(cert.clone());
                if enrolled {
                    self.stats.renewals += 1;
                    if let Some(p) = self.nodes[i].process.as_mut() {
                        p.renew_attempt = 0;
                    }
                    let now = self.instant(self.now);
                    if let Some(s) = self.nodes[i].session_mut() {
                        s.handle(
                            now,
                            Event::CertificateRenewed {
                                serial: cert.serial,
                            },
                        );
                    }
                    let renew = self.renew_at(i);
                    self.set_timer(i, renew);
                    self.drain(i);
                } else {
                    self.stats.enrolled += 1;
                    self.begin_session(i);
                }
            }
            Some(Response::Error(e)) if !enrolled && e.code != ErrorCode::Unavailable => {
                // A used or refused token: the operator would make a new one.
                self.record(format!("{id} enrollment refused: {e}"));
                self.nodes[i].refused = Some(e.to_string());
            }
            other => {
                if let Some(Response::Error(e)) = &other {
                    self.record(format!("{id} request refused: {e}"));
                }
                if !enrolled {
                    return self.set_timer(i, self.now + ENROLL_RETRY);
                }
                let node = &mut self.nodes[i];
                let cert = node.cert.as_ref().expect("enrolled");
                let jitter = node.rng.unit();
                let p = node.process.as_mut().expect("checked");
                let delay = strait_pki::renewal::retry_delay(
                    p.renew_attempt,
                    jitter,
                    self.epoch + self.now,
                    cert.not_after,
                );
                p.renew_attempt += 1;
                self.set_timer(i, self.now + delay);
            }
        }
    }

    // ---- the session's side of connections ----

    pub fn agent_connected(&mut self, i: usize, conn: ConnId, serial: String, left: Duration) {
        let now = self.instant(self.now);
        if let Some(s) = self.nodes[i].session_mut() {
            s.handle(
                now,
                Event::Connected {
                    conn,
                    serial,
                    coordinator_cert_left: Some(left),
                },
            );
        }
        self.drain(i);
    }

    pub fn agent_connect_failed(
        &mut self,
        i: usize,
        incarnation: u64,
        conn: ConnId,
        error: String,
    ) {
        if self.nodes[i].incarnation != incarnation {
            return;
        }
        let now = self.instant(self.now);
        if let Some(p) = self.nodes[i].process.as_mut() {
            p.conns.remove(&conn);
        }
        if let Some(s) = self.nodes[i].session_mut() {
            s.handle(now, Event::ConnectFailed { conn, error });
        }
        self.drain(i);
    }

    pub fn agent_conn_lost(&mut self, i: usize, incarnation: u64, conn: ConnId, error: String) {
        if self.nodes[i].incarnation != incarnation {
            return;
        }
        let Some(p) = self.nodes[i].process.as_mut() else {
            return;
        };
        if p.conns.remove(&conn).is_none() {
            return;
        }
        let now = self.instant(self.now);
        if let Some(s) = self.nodes[i].session_mut() {
            s.handle(
                now,
                Event::Ended {
                    conn,
                    error: Some(error),
                },
            );
        }
        self.drain(i);
    }

    /// The coordinator finished `conn`'s session stream.
    pub fn agent_stream_end(&mut self, conn: u64) {
        let Some(c) = self.conns.get(&conn) else {
            return;
        };
        let (i, incarnation, agent_conn) = (c.node, c.incarnation, c.agent_conn);
        if self.nodes[i].incarnation != incarnation {
            return;
        }
        let now = self.instant(self.now);
        if let Some(s) = self.nodes[i].session_mut() {
            s.handle(
                now,
                Event::Ended {
                    conn: agent_conn,
                    error: None,
                },
            );
        }
        self.drain(i);
    }

    pub fn agent_frame(&mut self, conn: u64, frame: SessionEvent) {
        let Some(c) = self.conns.get(&conn) else {
            return;
        };
        let (i, incarnation, agent_conn) = (c.node, c.incarnation, c.agent_conn);
        if self.nodes[i].incarnation != incarnation || self.nodes[i].process.is_none() {
            return;
        }
        let now = self.instant(self.now);
        if let Some(s) = self.nodes[i].session_mut() {
            s.handle(
                now,
                Event::Frame {
                    conn: agent_conn,
                    frame,
                },
            );
        }
        self.drain(i);
    }

    /// Executes node `i`'s session's actions, as `control.rs` does.
    pub fn drain(&mut self, i: usize) {
        for _ in 0..crate::world::MAX_ACTIONS {
            let Some(action) = self.nodes[i].session_mut().and_then(|s| s.poll_action()) else {
                return;
            };
            if let Some(event) = self.execute(i, action) {
                let now = self.instant(self.now);
                if let Some(s) = self.nodes[i].session_mut() {
                    s.handle(now, event);
                }
            }
        }
        let id = self.nodes[i].id();
        self.violate(
            "progress",
            format!("{id}'s session queued 10000 actions in a row"),
        );
    }

    fn execute(&mut self, i: usize, action: Action) -> Option<Event> {
        let id = self.nodes[i].id();
        match action {
            Action::Connect {
                conn, registration, ..
            } => {
                let presented = self.nodes[i].presented()?;
                self.record(format!("{id} connects {conn}"));
                let sim = self.open_conn(i, conn, presented, Request::Subscribe(registration));
                self.nodes[i].process.as_mut()?.conns.insert(conn, sim);
                None
            }
            Action::Send { conn, event } => {
                let sim = *self.nodes[i].process.as_ref()?.conns.get(&conn)?;
                if self.conns.get(&sim).is_some_and(|c| c.alive(Side::Agent)) {
                    self.send_frame(sim, Side::Coordinator, &event);
                }
                None
            }
            Action::Registered { conn } => {
                self.record(format!("{id} registered on {conn}"));
                None
            }
            Action::Publish(map) => {
                self.publish(i, map);
                None
            }
            Action::RunCommand { command, .. } => Some(Event::CommandEnded { id: command.id }),
            Action::GenerateKey => {
                let node = &mut self.nodes[i];
                let public = base64::engine::general_purpose::STANDARD.encode(node.rng.bytes32());
                node.process.as_mut()?.next_key = Some(public.clone());
                self.record(format!("{id} generated key {public}"));
                Some(Event::KeyGenerated { public })
            }
            Action::SwitchKey { public } => {
                let node = &mut self.nodes[i];
                let p = node.process.as_mut()?;
                if p.next_key.take().as_deref() != Some(public.as_str()) {
                    return Some(Event::KeySwitchFailed);
                }
                node.wg = public.clone();
                node.wg_since = self.now;
                self.stats.key_switches += 1;
                self.record(format!("{id} switched to key {public}"));
                Some(Event::KeySwitched { public })
            }
            Action::Close { conn, reason } => {
                if reason.starts_with("moved") || reason.contains("certificate expired") {
                    self.stats.moves += 1;
                }
                self.record(format!("{id} closes {conn}: {reason}"));
                let sim = self.nodes[i].process.as_mut()?.conns.remove(&conn)?;
                self.close(sim, Side::Agent, reason.to_string());
                None
            }
            Action::Over { conn, reason, .. } => {
                self.stats.sessions_over += 1;
                self.record(format!("{id} session over: {reason}"));
                let sim = self.nodes[i].process.as_mut()?.conns.remove(&conn?)?;
                self.close(sim, Side::Agent, "session over".into());
                None
            }
        }
    }

    /// `Action::Publish`: the map saved and handed to the data plane.
    fn publish(&mut self, i: usize, map: Arc<NetworkMap>) {
        let map = self.faulty(map);
        let node = &mut self.nodes[i];
        if map.version < node.max_version {
            let detail = format!(
                "{} published map version {} after {}",
                node.id(),
                map.version,
                node.max_version
            );
            self.violate("versions-grow", detail);
            return;
        }
        node.max_version = map.version;
        let text = match serde_json::to_string(&*map) {
            Ok(t) => t,
            Err(e) => return self.violate("codec", format!("a map could not be saved: {e}")),
        };
        let line = format!(
            "{} publishes v{} ({} peers, {} routes) {:016x}",
            node.id(),
            map.version,
            map.peers.len(),
            map.routes.len(),
            fnv(0, text.as_bytes())
        );
        node.map_file = Some(text);
        if let Some(p) = node.process.as_mut() {
            p.published = Some(map);
        }
        self.record(line);
    }

    /// The map a broken shell would publish (only with an injected [`crate::Fault`]).
    fn faulty(&self, map: Arc<NetworkMap>) -> Arc<NetworkMap> {
        let Some(fault) = &self.fault else { return map };
        if self.step_index < fault.at() {
            return map;
        }
        let mut m = (*map).clone();
        fault.apply(&mut m, &self.coord.config);
        Arc::new(m)
    }

    /// Applies the fault to every running agent's current map when it starts.
    pub fn inject(&mut self) {
        for i in 0..self.nodes.len() {
            let Some(map) = self.nodes[i].published().cloned() else {
                continue;
            };
            let map = self.faulty(map);
            if let Some(p) = self.nodes[i].process.as_mut() {
                p.published = Some(map);
            }
        }
    }
}

/// What a node reads from the certificate it got.
fn read_cert(pem: &str) -> Option<Cert> {
    let der = parse_certs("certificate", pem).ok()?.into_iter().next()?;
    let info = CertInfo::parse(&der).ok()?;
    Some(Cert {
        serial: info.serial,
        not_before: info.not_before,
        not_after: info.not_after,
    })
}
