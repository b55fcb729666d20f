//! The simulated mesh: a coordinator, nodes, the network between them and virtual time.
//! [`World::step`] applies one operation and runs the mesh for the time the step says;
//! the checks of `props` run after each.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use ipnetwork::IpNetwork;
use strait_coordinator::config::Config;

use crate::agent::Node;
use crate::coord::Coordinator;
use crate::net::{Conditions, Conn, Ev, Queue};
use crate::ops::{Op, Step};
use crate::props::{self, Violation};
use crate::rng::Rng;
use crate::trace::Trace;
use crate::Fault;

/// Prefixes a gateway may advertise, per site (see [`prefix_choice`]).
pub const PREFIX_CHOICES: usize = 6;
/// The coordinator's address, as agents are configured with it.
pub const COORDINATOR: &str = "coordinator.sim.invalid:7443";
/// Virtual time starts here (2026-01-01T00:00:00Z).
pub const EPOCH_UNIX: u64 = 1_767_225_600;
/// The agents' certificate lifetime in the simulation (renewed at about two thirds).
pub const AGENT_CERT_LIFETIME: Duration = Duration::from_secs(20 * 60);
/// The coordinator certificate's lifetime; it is renewed every two thirds of it.
pub const COORDINATOR_CERT_LIFETIME: Duration = Duration::from_secs(15 * 60);
/// How long a revoked node's agent keeps running (refused) before its machine goes.
pub const DECOMMISSION_AFTER: Duration = Duration::from_secs(120);
/// Most session actions one event may cause before the simulator calls it a livelock.
pub(crate) const MAX_ACTIONS: usize = 10_000;

/// Counts of what a run did, to show a scenario exercised something.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    pub enrolled: u64,
    pub registrations: u64,
    pub snapshots: u64,
    pub deltas: u64,
    pub sessions_over: u64,
    pub revocations: u64,
    pub key_switches: u64,
    pub renewals: u64,
    pub moves: u64,
    pub coordinator_restarts: u64,
    pub agent_restarts: u64,
    pub quiet_periods: u64,
    /// The longest time a quiet period took to converge.
    pub max_convergence: Duration,
}

/// The prefix choice `i` of site `site` (0-based) among `sites` sites: the whole site,
/// two /24s of it, and three that must be refused (another site's, the overlay's, the
/// default route).
pub fn prefix_choice(site: usize, sites: usize, i: usize) -> IpNetwork {
    let s = site + 1;
    let text = match i % PREFIX_CHOICES {
        0 => format!("10.{s}.0.0/16"),
        1 => format!("10.{s}.1.0/24"),
        2 => format!("10.{s}.2.0/24"),
        3 => format!("10.{}.5.0/24", (site + 1) % sites.max(1) + 1),
        4 => "100.64.0.0/24".to_string(),
        _ => "0.0.0.0/0".to_string(),
    };
    text.parse().expect("constant prefix")
}

pub struct World {
    pub seed: u64,
    pub now: Duration,
    pub base: Instant,
    pub epoch: SystemTime,
    pub queue: Queue,
    pub rng: Rng,
    pub cond: Conditions,
    pub coord: Coordinator,
    pub conns: BTreeMap<u64, Conn>,
    pub(crate) next_conn: u64,
    pub nodes: Vec<Node>,
    pub trace: Trace,
    pub stats: Stats,
    /// A CSR every node presents (its key is never used: the simulation has no TLS).
    pub csr: String,
    pub fault: Option<Fault>,
    pub step_index: usize,
    /// The fault (if any) was applied to the maps held.
    pub injected: bool,
    /// Safety violations seen while events ran (checked with the step's properties).
    pub violations: Vec<Violation>,
    pub sites: usize,
    _dir: tempfile::TempDir,
}

impl World {
    pub fn new(seed: u64, sites: usize, keep_trace: bool, fault: Option<Fault>) -> World {
        let mut rng = Rng::new(seed);
        let config_rng = &mut rng.fork(1);
        let flags = *config_rng.pick(&[2u8, 2 | 1, 2 | 8, 2 | 1 | 64, 2 | 8 | 128, 2 | 16]);
        let mut config: Config = strait_coordinator::fuzzing::config(flags);
        config.heartbeat_timeout = Duration::from_secs(15);
        config.pki.agent_cert_lifetime = AGENT_CERT_LIFETIME;
        config.pki.coordinator_cert_lifetime = COORDINATOR_CERT_LIFETIME;
        config
            .validate()
            .expect("the simulation's config validates");
        let dir = tempfile::tempdir().expect("a temporary directory for the store");
        let epoch = SystemTime::UNIX_EPOCH + Duration::from_secs(EPOCH_UNIX);
        let coord = Coordinator::new(
            Arc::new(config),
            dir.path().join("strait.db"),
            rng.next_u64(),
            epoch,
        );
        let csr = strait_pki::ca::generate_csr("sim")
            .expect("generating the simulation's CSR")
            .csr_pem;
        let cond = Conditions::from_rng(&mut rng.fork(2));
        let mut trace = Trace::new(keep_trace);
        trace.record(format!(
            "seed {seed} config flags {flags} latency {:?} loss {}",
            cond.latency, cond.loss
        ));
        let mut w = World {
            seed,
            now: Duration::ZERO,
            base: Instant::now(),
            epoch,
            queue: Queue::default(),
            rng: rng.fork(3),
            cond,
            coord,
            conns: BTreeMap::new(),
            next_conn: 1,
            nodes: Vec::new(),
            trace,
            stats: Stats::default(),
            csr,
            fault,
            step_index: 0,
            injected: false,
            violations: Vec::new(),
            sites,
            _dir: dir,
        };
        w.queue.push(
            Duration::from_secs(1),
            Ev::Tick {
                generation: w.coord.generation,
            },
        );
        w
    }

    pub fn instant(&self, at: Duration) -> Instant {
        self.base + at
    }

    pub fn offset(&self, at: Instant) -> Duration {
        at.saturating_duration_since(self.base)
    }

    pub fn sys(&self, at: Duration) -> SystemTime {
        self.epoch + at
    }

    pub fn record(&mut self, line: String) {
        let line = format!("{:>9} {line}", self.now.as_millis());
        self.trace.record(line);
    }

    pub fn violate(&mut self, property: &'static str, detail: String) {
        self.violations.push(Violation { property, detail });
    }

    /// Node `i` of an operation, modulo the nodes not revoked (a revoked node's agent keeps
    /// running, refused, until the end).
    pub(crate) fn pick(&self, i: usize) -> Option<usize> {
        let live: Vec<usize> = (0..self.nodes.len())
            .filter(|n| self.nodes[*n].revoked_at.is_none())
            .collect();
        (!live.is_empty()).then(|| live[i % live.len()])
    }

    /// Applies `step`'s operation and runs the mesh for its time.
    pub fn step(&mut self, index: usize, step: &Step) -> Result<(), Violation> {
        self.step_index = index;
        // A revoked node's machine is decommissioned a while after (its agent, refused
        // meanwhile, has shown it cannot come back).
        for i in 0..self.nodes.len() {
            let gone = self.nodes[i]
                .revoked_at
                .is_some_and(|t| self.now.saturating_sub(t) > DECOMMISSION_AFTER);
            if gone && self.nodes[i].process.is_some() {
                self.stop(i);
            }
        }
        self.record(format!("step {index}: {}", step.op));
        match &step.op {
            Op::Enroll {
                site,
                kind,
                prefixes,
            } => self.enroll(*site, *kind, prefixes),
            Op::Restart { node } => {
                if let Some(i) = self.pick(*node) {
                    self.stop(i);
                    self.start(i);
                }
            }
            Op::Stop { node } => {
                if let Some(i) = self.pick(*node) {
                    self.stop(i);
                }
            }
            Op::Start { node } => {
                if let Some(i) = self.pick(*node) {
                    if self.nodes[i].process.is_none() {
                        self.start(i);
                    }
                }
            }
            Op::Partition { node } => {
                if let Some(i) = self.pick(*node) {
                    self.set_partitioned(i, true);
                }
            }
            Op::Heal { node } => {
                if let Some(i) = self.pick(*node) {
                    self.set_partitioned(i, false);
                }
            }
            Op::Revoke { node } => {
                if let Some(i) = self.pick(*node) {
                    self.revoke(i);
                }
            }
            Op::RotateKey { node } => {
                if let Some(i) = self.pick(*node) {
                    let id = self.nodes[i].id();
                    let mut out = Vec::new();
                    let r = self.coord.rotate_key(&id, &mut out);
                    self.record(format!("rotate-key {id}: {r:?}"));
                    self.coordinator_out(out);
                }
            }
            Op::SetPrefixes { node, prefixes } => {
                if let Some(i) = self.pick(*node) {
                    let site = self.nodes[i].site_index;
                    self.nodes[i].prefixes = prefixes
                        .iter()
                        .map(|p| prefix_choice(site, self.sites, *p))
                        .collect();
                    if self.nodes[i].process.is_some() {
                        self.stop(i);
                        self.start(i);
                    }
                }
            }
            Op::CoordinatorRestart { down } => self.coordinator_restart(*down),
            Op::Wait => {}
            Op::Quiet => return self.quiet(),
        }
        let end = self.now + step.after;
        self.run_until(end)?;
        props::safety(self)
    }

    /// Heals every partition, brings the coordinator up, and runs until the maps converge
    /// (or the bound passes: a violation).
    pub(crate) fn quiet(&mut self) -> Result<(), Violation> {
        self.stats.quiet_periods += 1;
        for i in 0..self.nodes.len() {
            self.set_partitioned(i, false);
        }
        if !self.coord.is_up() {
            self.coordinator_up();
        }
        let start = self.now;
        loop {
            let end = self.now + Duration::from_millis(500);
            self.run_until(end)?;
            props::safety(self)?;
            match props::converged(self) {
                Ok(()) => {
                    let took = self.now - start;
                    self.stats.max_convergence = self.stats.max_convergence.max(took);
                    self.record(format!("converged after {} ms", took.as_millis()));
                    return Ok(());
                }
                Err(why) if self.now - start >= props::CONVERGENCE_BOUND => {
                    return Err(Violation {
                        property: "convergence",
                        detail: format!(
                            "not converged {} s after the mesh went quiet: {why}",
                            props::CONVERGENCE_BOUND.as_secs()
                        ),
                    });
                }
                Err(_) => {}
            }
        }
    }

    /// Runs every event, timer and timeout due up to `end`.
    pub fn run_until(&mut self, end: Duration) -> Result<(), Violation> {
        let mut spins = 0usize;
        loop {
            if let Some(v) = self.violations.first() {
                return Err(v.clone());
            }
            let next = self.next_deadline();
            match next {
                Some(t) if t <= end => {
                    if t > self.now {
                        self.now = t;
                        spins = 0;
                    }
                }
                _ => {
                    self.now = self.now.max(end);
                    return Ok(());
                }
            }
            spins += 1;
            if spins > 100_000 {
                return Err(Violation {
                    property: "progress",
                    detail: format!(
                        "more than 100000 events at {} ms: a livelock",
                        self.now.as_millis()
                    ),
                });
            }
            self.run_due();
        }
    }

    pub(crate) fn next_deadline(&self) -> Option<Duration> {
        let sessions = self.nodes.iter().filter_map(|n| {
            let t = n.process.as_ref()?.session.as_ref()?.poll_timeout()?;
            Some(self.offset(t))
        });
        [self.queue.next_at(), self.coord.deadline()]
            .into_iter()
            .flatten()
            .chain(sessions)
            .min()
    }

    pub(crate) fn run_due(&mut self) {
        if let Some(ev) = self.queue.pop_due(self.now) {
            self.event(ev);
            return;
        }
        if self.coord.deadline().is_some_and(|t| t <= self.now) {
            let mut out = Vec::new();
            self.coord.on_time(self.now, &mut out);
            self.coordinator_out(out);
        }
        for i in 0..self.nodes.len() {
            let now = self.instant(self.now);
            let due = self.nodes[i]
                .process
                .as_ref()
                .and_then(|p| p.session.as_ref())
                .and_then(|s| s.poll_timeout())
                .is_some_and(|t| t <= now);
            if due {
                if let Some(s) = self.nodes[i].session_mut() {
                    s.handle_timeout(now);
                }
                self.drain(i);
            }
        }
    }

    pub(crate) fn event(&mut self, ev: Ev) {
        match ev {
            Ev::Deliver { conn, to, payload } => self.deliver(conn, to, payload),
            Ev::Handshake { conn } => self.handshake(conn),
            Ev::ConnectFailed { conn, error } => {
                if let Some(c) = self.conns.remove(&conn) {
                    self.agent_connect_failed(c.node, c.incarnation, c.agent_conn, error);
                }
            }
            Ev::Gone { conn, side, error } => self.kill(conn, side, error),
            Ev::Idle { conn, side, epoch } => {
                let Some(c) = self.conns.get(&conn) else {
                    return;
                };
                let node = &self.nodes[c.node];
                if node.epoch == epoch && !self.usable(c.node) && c.alive(side) {
                    self.kill(
                        conn,
                        side,
                        "timed out: no answer from the other side".into(),
                    );
                }
            }
            Ev::Request {
                node,
                incarnation,
                who,
                bytes,
                accepted,
            } => self.one_shot(node, incarnation, who, bytes, accepted),
            Ev::Answer {
                node,
                incarnation,
                bytes,
            } => self.answer(node, incarnation, bytes),
            Ev::Tick { generation } => {
                if self.coord.is_up() && generation == self.coord.generation {
                    let mut out = Vec::new();
                    self.coord.tick(self.now, &mut out);
                    self.coordinator_out(out);
                    self.queue
                        .push(self.now + Duration::from_secs(1), Ev::Tick { generation });
                }
            }
            Ev::CoordinatorUp => {
                if !self.coord.is_up() {
                    self.coordinator_up();
                }
            }
            Ev::NodeTimer { node, incarnation } => self.node_timer(node, incarnation),
        }
    }
}
