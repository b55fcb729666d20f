//! The agent's side of its session with the coordinator, as a state machine: fed
//! [`Event`]s (frames, connections up or down, the data plane's reports, a renewed
//! certificate, a key rotation's progress) and the time, it queues [`Action`]s (connect,
//! write a frame, publish a map, run a command, generate or switch a key, close a
//! connection, end the session). It opens no socket, reads no clock, spawns no task and
//! draws no randomness of its own (the reconnect jitter comes from a seeded generator):
//! the same inputs give the same actions. `control.rs` is the tokio shell that drives it.
//!
//! Driving it (as quinn-proto is driven):
//! 1. [`Session::handle`] each event with the time it happened;
//! 2. execute every action from [`Session::poll_action`], in order; `GenerateKey`,
//!    `SwitchKey` and a failed `Send` report at once with an event, handled before the
//!    next action is polled; `Connect` and `RunCommand` report later;
//! 3. call [`Session::handle_timeout`] once [`Session::poll_timeout`] has passed.
//!
//! The session's life: wait (backoff), connect to the next coordinator (round robin),
//! subscribe, take `Registered`, the snapshot and deltas, heartbeat, and end on a
//! `Closing`, a lost connection or a delta that does not fit the map (the next session
//! starts with a snapshot). A renewed certificate, or the expiry of the certificate the
//! coordinator presented, moves the session make-before-break: a second connection up to
//! its `Registered`, then the first is closed. While a move is under way the end of the
//! first connection is held (the coordinator closes it as replaced); it ends the session
//! only if the move fails.
//!
//! `frames.rs` handles a connection's frames, `moves.rs` the moves, `rotation.rs` the key
//! rotation's steps.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use strait_proto::access::AccessDrop;
use strait_proto::map::{NetworkMap, VersionGap};
use strait_proto::msg::{
    AgentEvent, BgpReport, ErrorBody, PeerLink, Refusal, Registration, SessionEvent,
};
use strait_proto::probe::{Command, ProbeEvent};

use crate::keyrotation::KeyRotation;

/// Operator commands one node runs at once.
pub const MAX_COMMANDS: usize = 4;
/// How often a key rotation in progress (or due) is looked at.
pub const ROTATION_TICK: Duration = Duration::from_secs(1);
/// How long the second connection of a move may take to answer `Registered`.
pub const MOVE_TIMEOUT: Duration = Duration::from_secs(10);
/// A session that lasted longer than this starts the backoff over.
pub const STABLE_SESSION: Duration = Duration::from_secs(10);

/// Reconnect delay after `attempt` consecutive failures: 500 ms doubling to 30 s, plus up
/// to 25% jitter (`jitter` in `[0, 1)`).
pub fn backoff(attempt: u32, jitter: f64) -> Duration {
    let base = Duration::from_millis(500)
        .saturating_mul(1 << attempt.min(6))
        .min(Duration::from_secs(30));
    base + base.mul_f64(jitter.clamp(0.0, 1.0) * 0.25)
}

/// Names one connection to a coordinator, chosen by the session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(pub u64);

impl std::fmt::Display for ConnId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "#{}", self.0)
    }
}

/// What happened, as the shell saw it.
// Events are handled one at a time, never stored in bulk: a frame's size does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// The connection asked for by [`Action::Connect`] is up, its session stream open and
    /// the subscription written. `serial`: the certificate it presented.
    /// `coordinator_cert_left`: how long the certificate the coordinator presented stays
    /// valid (`None`: it presented none; the handshake does not allow that).
    Connected {
        conn: ConnId,
        serial: String,
        coordinator_cert_left: Option<Duration>,
    },
    /// [`Action::Connect`] failed.
    ConnectFailed { conn: ConnId, error: String },
    /// A frame read from `conn`'s session stream.
    Frame { conn: ConnId, frame: SessionEvent },
    /// `conn`'s stream ended: finished by the coordinator (`error: None`), or a read or a
    /// write failed, or the connection was lost.
    Ended { conn: ConnId, error: Option<String> },
    /// The routes the kernel refused, as the data plane now sees them.
    RouteConflicts(Vec<Refusal>),
    /// The data plane's tunnels, and the packets the access policy dropped so far.
    Links {
        peers: Vec<PeerLink>,
        access_drops: Vec<AccessDrop>,
        /// A gateway's BGP side (with `[bgp]`).
        bgp: Option<BgpReport>,
    },
    /// A running command's progress.
    CommandProgress { id: u64, event: ProbeEvent },
    /// A command started by [`Action::RunCommand`] is over (however it ended).
    CommandEnded { id: u64 },
    /// This node's certificate is now the one with `serial` (the renewal task swapped it
    /// in; also sent with the current one at start).
    CertificateRenewed { serial: String },
    /// [`Action::GenerateKey`] made a key; this is its public half (base64).
    KeyGenerated { public: String },
    /// [`Action::SwitchKey`] succeeded: the key file holds the new key and the data plane
    /// uses it.
    KeySwitched { public: String },
    /// [`Action::SwitchKey`] failed (the key file could not be replaced): the current key
    /// stays.
    KeySwitchFailed,
}

/// What the shell should do.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Connect to `coordinator` with the current certificate, open the session stream and
    /// write `Request::Subscribe(registration)`; report [`Event::Connected`] or
    /// [`Event::ConnectFailed`], then every frame as [`Event::Frame`] and the stream's end
    /// as [`Event::Ended`].
    Connect {
        conn: ConnId,
        coordinator: String,
        registration: Registration,
    },
    /// Write `event` on `conn`'s stream; a failure is reported as [`Event::Ended`].
    Send { conn: ConnId, event: AgentEvent },
    /// The session is registered on `conn` (at its start, or after a move): it is up, and
    /// `conn`'s coordinator certificate is the one to watch.
    Registered { conn: ConnId },
    /// A new current map: keep it on disk and hand it to the data plane.
    Publish(Arc<NetworkMap>),
    /// Run an operator's command against `map` (the current one); report its progress
    /// and its end.
    RunCommand {
        command: Command,
        map: Option<Arc<NetworkMap>>,
    },
    /// Generate the next WireGuard key (keep the secret half) and report
    /// [`Event::KeyGenerated`].
    GenerateKey,
    /// Switch to the generated key whose public half is `public`: replace the key file,
    /// then hand the key to the data plane; report [`Event::KeySwitched`] or
    /// [`Event::KeySwitchFailed`].
    SwitchKey { public: String },
    /// Close `conn` (QUIC code 0) with `reason`; nothing more from it matters.
    Close { conn: ConnId, reason: &'static str },
    /// The session is over: stop every running command, close `conn` (if one was open)
    /// and report `reason`. The session connects again in `retry_in`, by itself.
    Over {
        conn: Option<ConnId>,
        coordinator: String,
        reason: EndReason,
        retry_in: Duration,
    },
}

/// Why a session ended.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum EndReason {
    /// The coordinator finished the stream.
    #[error("the coordinator ended the session")]
    Finished,
    /// Connecting failed, or the connection or stream failed (the shell's words).
    #[error("{0}")]
    Connection(String),
    /// The coordinator said why (`Closing`): revoked, shutting down, refused.
    #[error("coordinator closed the session: {0}")]
    Closed(ErrorBody),
    #[error("delta before snapshot")]
    DeltaBeforeSnapshot,
    /// A delta did not start at the map's version: the next session starts with a
    /// snapshot.
    #[error("{0}; reconnecting for a snapshot")]
    Gap(VersionGap),
    /// The certificate the coordinator presented expired and no new connection could be
    /// opened.
    #[error("the coordinator's certificate for this session expired and a new session could not be opened; check that the coordinator at {coordinator} renews its certificate (its metric strait_coordinator_cert_expiry_timestamp_seconds): {error}")]
    CoordinatorCertExpired { coordinator: String, error: String },
}

impl EndReason {
    /// An orderly end, not a failure.
    pub fn is_clean(&self) -> bool {
        matches!(self, EndReason::Finished)
    }
}

/// Why a session moves to a new connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Move {
    /// This node's certificate was renewed.
    Renewed,
    /// The certificate the coordinator presented on the session expires.
    CoordinatorCertExpired,
}

/// Where the session is, for the shell's and tests' eyes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Waiting to connect (backoff).
    Waiting,
    Connecting,
    /// Connected, before `Registered`.
    Subscribed,
    Registered,
    /// Registered, and moving to a new connection.
    Moving(Move),
}

/// How the session starts.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `host:port` of each coordinator, tried in turn.
    pub coordinators: Vec<String>,
    pub heartbeat_interval: Duration,
    /// What this node registers (`have_version` is filled in at each connection).
    pub registration: Registration,
    pub rotation: KeyRotation,
    /// The map kept from an earlier run, already published.
    pub saved_map: Option<Arc<NetworkMap>>,
    /// Seeds the reconnect delays' jitter.
    pub seed: u64,
}

/// The session could not be set up.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SetupError {
    #[error("no coordinator to connect to; set key `coordinators` (host:port of each)")]
    NoCoordinator,
}

/// The agent's session with the coordinators, across connections.
#[derive(Debug)]
pub struct Session {
    coordinators: Vec<String>,
    heartbeat_interval: Duration,
    registration: Registration,
    rotation: KeyRotation,
    /// The public half of the generated key, until the switch.
    next_key: Option<String>,
    /// A `GenerateKey` is out, not reported yet.
    generating: bool,
    /// The map last published (maybe the saved one); what commands run against.
    published: Option<Arc<NetworkMap>>,
    /// The data plane's last reports, sent again on every new connection.
    conflicts: Vec<Refusal>,
    links: (Vec<PeerLink>, Vec<AccessDrop>, Option<BgpReport>),
    /// The serial of this node's current certificate, once told.
    serial: Option<String>,
    /// Commands running, by id.
    running: Vec<u64>,
    /// Consecutive failed sessions.
    attempt: u32,
    next_coordinator: usize,
    /// The coordinator of the current (or last) attempt, and when it began.
    coordinator: String,
    attempt_started: Instant,
    next_conn: u64,
    rng: u64,
    phase: Phase,
    actions: VecDeque<Action>,
}

#[derive(Debug)]
enum Phase {
    Waiting { at: Instant },
    Connecting { conn: ConnId },
    Open(Box<Open>),
}

#[derive(Debug)]
struct Open {
    conn: ConnId,
    /// The certificate this connection presented.
    serial: String,
    registered: bool,
    /// This session's map: deltas apply to it (`None` until its snapshot).
    map: Option<Arc<NetworkMap>>,
    heartbeat_at: Instant,
    rotation_at: Instant,
    coordinator_expiry: Option<Instant>,
    /// The key being rotated to was announced on this connection.
    announced: bool,
    moving: Option<Moving>,
    /// The connection's end while a move is under way.
    held: Option<EndReason>,
}

#[derive(Debug)]
struct Moving {
    why: Move,
    conn: ConnId,
    /// Once connected: its certificate's serial, the coordinator certificate's expiry and
    /// the deadline for `Registered`.
    connected: Option<(String, Option<Instant>, Instant)>,
}

impl Session {
    /// A session that connects at `now`.
    pub fn new(settings: Settings, now: Instant) -> Result<Session, SetupError> {
        if settings.coordinators.is_empty() {
            return Err(SetupError::NoCoordinator);
        }
        Ok(Session {
            coordinator: settings.coordinators[0].clone(),
            coordinators: settings.coordinators,
            heartbeat_interval: settings.heartbeat_interval,
            registration: settings.registration,
            rotation: settings.rotation,
            next_key: None,
            generating: false,
            published: settings.saved_map,
            conflicts: Vec::new(),
            links: (Vec::new(), Vec::new(), None),
            serial: None,
            running: Vec::new(),
            attempt: 0,
            next_coordinator: 0,
            attempt_started: now,
            next_conn: 1,
            rng: settings.seed,
            phase: Phase::Waiting { at: now },
            actions: VecDeque::new(),
        })
    }

    /// The next action to execute.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// When [`Session::handle_timeout`] is due next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match &self.phase {
            Phase::Waiting { at } => Some(*at),
            Phase::Connecting { .. } => None,
            Phase::Open(open) => [
                Some(open.heartbeat_at),
                Some(open.rotation_at),
                open.coordinator_expiry,
                open.moving
                    .as_ref()
                    .and_then(|m| m.connected.as_ref().map(|c| c.2)),
            ]
            .into_iter()
            .flatten()
            .min(),
        }
    }

    pub fn state(&self) -> State {
        match &self.phase {
            Phase::Waiting { .. } => State::Waiting,
            Phase::Connecting { .. } => State::Connecting,
            Phase::Open(open) => match (&open.moving, open.registered) {
                (Some(m), _) => State::Moving(m.why),
                (None, true) => State::Registered,
                (None, false) => State::Subscribed,
            },
        }
    }

    /// The connection carrying the session, if one is open.
    pub fn connection(&self) -> Option<ConnId> {
        match &self.phase {
            Phase::Open(open) => Some(open.conn),
            _ => None,
        }
    }

    /// This session's map (`None` before its snapshot).
    pub fn map(&self) -> Option<&NetworkMap> {
        match &self.phase {
            Phase::Open(open) => open.map.as_deref(),
            _ => None,
        }
    }

    /// The map last published.
    pub fn published(&self) -> Option<&Arc<NetworkMap>> {
        self.published.as_ref()
    }

    /// What the next connection registers (its key changes with a rotation).
    pub fn registration(&self) -> &Registration {
        &self.registration
    }

    /// The coordinator of the current or last attempt.
    pub fn coordinator(&self) -> &str {
        &self.coordinator
    }

    /// Commands running now.
    pub fn running_commands(&self) -> usize {
        self.running.len()
    }

    pub fn handle(&mut self, now: Instant, event: Event) {
        match event {
            Event::Connected {
                conn,
                serial,
                coordinator_cert_left,
            } => self.on_connected(now, conn, serial, coordinator_cert_left),
            Event::ConnectFailed { conn, error } => self.on_connect_failed(now, conn, error),
            Event::Frame { conn, frame } => self.on_frame(now, conn, frame),
            Event::Ended { conn, error } => {
                let reason = match error {
                    None => EndReason::Finished,
                    Some(e) => EndReason::Connection(e),
                };
                if self.moving_conn() == Some(conn) {
                    let error = match reason {
                        EndReason::Finished => {
                            "the coordinator ended the new session at once".to_string()
                        }
                        other => other.to_string(),
                    };
                    self.move_failed(now, error);
                } else if self.connection() == Some(conn) {
                    self.end_or_hold(now, reason);
                }
            }
            Event::RouteConflicts(conflicts) => {
                self.conflicts = conflicts;
                if let Some(conn) = self.connection() {
                    self.send_conflicts(conn);
                }
            }
            Event::Links {
                peers,
                access_drops,
                bgp,
            } => {
                self.links = (peers, access_drops, bgp);
                if let Some(conn) = self.connection() {
                    self.send_links(conn);
                }
            }
            Event::CommandProgress { id, event } => {
                if let Some(conn) = self.connection() {
                    self.send(conn, AgentEvent::Probe { id, event });
                }
            }
            Event::CommandEnded { id } => {
                if let Some(i) = self.running.iter().position(|r| *r == id) {
                    self.running.swap_remove(i);
                }
            }
            Event::CertificateRenewed { serial } => {
                self.serial = Some(serial);
                self.move_if_renewed();
            }
            Event::KeyGenerated { public } => self.on_key_generated(now, public),
            Event::KeySwitched { public } => self.on_key_switched(public),
            Event::KeySwitchFailed => {}
        }
    }

    /// Runs what is due at `now`: a connection attempt, a heartbeat, a key rotation's
    /// step, a move (the coordinator's certificate expires) or a move's deadline.
    pub fn handle_timeout(&mut self, now: Instant) {
        let open = match &mut self.phase {
            Phase::Waiting { at } => {
                let at = *at;
                if now >= at {
                    self.connect(now);
                }
                return;
            }
            Phase::Connecting { .. } => return,
            Phase::Open(open) => open,
        };
        let unanswered = match &open.moving {
            Some(Moving {
                conn,
                connected: Some((_, _, deadline)),
                ..
            }) if now >= *deadline => Some(*conn),
            _ => None,
        };
        if let Some(conn) = unanswered {
            self.actions.push_back(Action::Close {
                conn,
                reason: "no answer",
            });
            self.move_failed(now, "no answer from the coordinator".into());
        }
        let Phase::Open(open) = &mut self.phase else {
            return;
        };
        if open.coordinator_expiry.is_some_and(|t| now >= t) {
            open.coordinator_expiry = None;
            tracing::info!(coordinator = %self.coordinator, "the certificate the coordinator presented on this session expires now; moving the session to a new connection");
            match &mut open.moving {
                // The new connection checks the coordinator's current certificate too; if
                // it fails, this session cannot go on.
                Some(m) => m.why = Move::CoordinatorCertExpired,
                None => self.start_move(Move::CoordinatorCertExpired),
            }
        }
        let Phase::Open(open) = &mut self.phase else {
            return;
        };
        if now >= open.rotation_at {
            open.rotation_at = now + ROTATION_TICK;
            self.rotation_step(now);
        }
        let Phase::Open(open) = &mut self.phase else {
            return;
        };
        if now >= open.heartbeat_at {
            open.heartbeat_at = now + self.heartbeat_interval;
            let map_version = open.map.as_ref().map_or(0, |m| m.version);
            let conn = open.conn;
            self.send(conn, AgentEvent::Heartbeat { map_version });
        }
    }

    fn connect(&mut self, now: Instant) {
        let i = self.next_coordinator % self.coordinators.len();
        self.next_coordinator = self.next_coordinator.wrapping_add(1);
        self.coordinator = self.coordinators[i].clone();
        self.attempt_started = now;
        let conn = self.new_conn();
        self.phase = Phase::Connecting { conn };
        self.actions.push_back(Action::Connect {
            conn,
            coordinator: self.coordinator.clone(),
            registration: self.subscription(),
        });
    }

    fn new_conn(&mut self) -> ConnId {
        let conn = ConnId(self.next_conn);
        self.next_conn += 1;
        conn
    }

    /// The registration a new connection sends: with the version of the map held.
    fn subscription(&self) -> Registration {
        let mut registration = self.registration.clone();
        registration.have_version = self.published.as_ref().map(|m| m.version);
        registration
    }

    fn end_or_hold(&mut self, now: Instant, reason: EndReason) {
        if let Phase::Open(open) = &mut self.phase {
            if open.moving.is_some() {
                open.held.get_or_insert(reason);
                return;
            }
        }
        self.end(now, reason);
    }

    fn end(&mut self, now: Instant, reason: EndReason) {
        let conn = match &self.phase {
            Phase::Waiting { .. } => return,
            Phase::Connecting { .. } => None,
            Phase::Open(open) => {
                if let Some(m) = &open.moving {
                    self.actions.push_back(Action::Close {
                        conn: m.conn,
                        reason: "session over",
                    });
                }
                Some(open.conn)
            }
        };
        if now.saturating_duration_since(self.attempt_started) > STABLE_SESSION {
            self.attempt = 0;
        }
        let jitter = self.jitter();
        let retry_in = backoff(self.attempt, jitter);
        self.attempt = self.attempt.saturating_add(1);
        self.running.clear();
        self.phase = Phase::Waiting { at: now + retry_in };
        self.actions.push_back(Action::Over {
            conn,
            coordinator: self.coordinator.clone(),
            reason,
            retry_in,
        });
    }

    fn send(&mut self, conn: ConnId, event: AgentEvent) {
        self.actions.push_back(Action::Send { conn, event });
    }

    fn send_conflicts(&mut self, conn: ConnId) {
        let conflicts = self.conflicts.clone();
        self.send(conn, AgentEvent::RouteConflicts { conflicts });
    }

    fn send_links(&mut self, conn: ConnId) {
        let (peers, access_drops, bgp) = self.links.clone();
        self.send(
            conn,
            AgentEvent::LinkReport {
                peers,
                access_drops,
                bgp,
            },
        );
    }

    /// Uniform in `[0, 1)`, from the seeded generator (SplitMix64).
    fn jitter(&mut self) -> f64 {
        self.rng = self.rng.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64
    }
}

mod frames;
mod moves;
mod rotation;
#[cfg(test)]
mod tests;
