//! A deterministic simulator of a whole Strait mesh, for tier-1 tests.
//!
//! Real: every node's session state machine (`strait_agent::session::Session`), its key
//! rotation schedule, the route plan and peer specs it would hand the kernel and the
//! engine (`dataplane::routes::desired`, `dataplane::peers::peer_specs`); the
//! coordinator's registry (`Mesh`), request handlers (admission, enrollment with join
//! tokens, renewal, registration, snapshot and updates, agent events, revocation,
//! rotate-key), the fan-out's choice of sessions and its settling delays, the SQLite store
//! (a restart reads it back), the built-in CA signing real certificates; the wire frames
//! (`proto::frame`) both ways.
//!
//! Simulated: time (virtual, from the seed), the network (latency, loss as retransmission
//! delays, partitions between a node and the coordinator, idle timeouts, stateless resets
//! after a coordinator restart), process crashes. Not simulated: packets through tunnels
//! (boringtun's `Tunn` reads the clock itself), so traffic is checked through the route
//! plans; TLS (a connection presents its certificate's serial and expiry); path probing.
//!
//! [`run`] plays the scenario of a seed and checks the properties of [`props`] after every
//! step; the same seed gives the same trace, whose hash [`Report::trace_hash`] holds. A
//! failure names the seed, the property and the steps, and is shrunk to fewer steps
//! ([`shrink`]), replayable with `--seed N --only i,j,k`.

pub mod agent;
pub mod coord;
mod link;
pub mod net;
pub mod ops;
pub mod props;
pub mod rng;
pub mod trace;
mod transport;
pub mod world;

use std::fmt;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::Duration;

use ipnetwork::IpNetwork;
use strait_coordinator::config::Config;
use strait_proto::map::{NetworkMap, PeerKind, PeerView};

use ops::{Shape, Step};
use world::{Stats, World};

/// A deliberately broken agent shell, to show the checks catch what they claim to: from
/// step `at` on, every agent publishes a corrupted map (the maps they hold then are
/// corrupted too).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Its own overlay address changed: only convergence can tell.
    WrongMap { at: usize },
    /// An extra peer of another site carrying a third site's whole prefix.
    PhantomRoute { at: usize },
    /// The `fail-closed` list dropped.
    NoFailClosed { at: usize },
}

impl Fault {
    pub fn at(&self) -> usize {
        match *self {
            Fault::WrongMap { at } | Fault::PhantomRoute { at } | Fault::NoFailClosed { at } => at,
        }
    }

    fn apply(&self, map: &mut NetworkMap, config: &Config) {
        match self {
            Fault::WrongMap { .. } => {
                map.node.overlay_ip = std::net::Ipv4Addr::new(100, 127, 255, 254);
            }
            Fault::PhantomRoute { .. } => {
                let others: Vec<_> = config
                    .sites
                    .iter()
                    .filter(|s| s.name != map.node.site)
                    .collect();
                if others.len() < 2 {
                    return;
                }
                let prefix: IpNetwork = others[0].prefixes[0];
                let site = others[1].name.clone();
                map.peers.insert(
                    format!("{site}/phantom"),
                    PeerView {
                        id: format!("{site}/phantom"),
                        site: site.clone(),
                        name: "phantom".into(),
                        kind: PeerKind::Agent,
                        role: None,
                        wg_public_key: base64::Engine::encode(
                            &base64::engine::general_purpose::STANDARD,
                            [0x77; 32],
                        ),
                        next_wg_public_key: None,
                        endpoints: Vec::new(),
                        allowed_ips: vec![prefix],
                        overlay_ip: None,
                        online: true,
                        priority: 0,
                    },
                );
            }
            Fault::NoFailClosed { .. } => map.node.fail_closed.clear(),
        }
    }
}

/// How to run.
#[derive(Debug, Clone)]
pub struct Options {
    pub steps: usize,
    pub max_nodes: usize,
    pub quiet_every: usize,
    pub fault: Option<Fault>,
    /// Keep the trace's lines (not only its hash).
    pub keep_trace: bool,
    /// Run only these steps of the scenario (indices, ascending): a shrunk failure.
    pub only: Option<Vec<usize>>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            steps: 500,
            max_nodes: 10,
            quiet_every: 200,
            fault: None,
            keep_trace: false,
            only: None,
        }
    }
}

/// The sites every scenario has (the coordinator's config has `a`, `b` and `c`).
pub const SITES: usize = 3;

/// What one seed did.
#[derive(Debug, Clone)]
pub struct Report {
    pub seed: u64,
    pub steps_run: usize,
    pub trace_hash: u64,
    pub trace_lines: u64,
    pub trace: Vec<String>,
    pub virtual_time: Duration,
    pub stats: Stats,
    pub failure: Option<Failure>,
}

/// A property that failed.
#[derive(Debug, Clone)]
pub struct Failure {
    pub seed: u64,
    /// The step (index into the scenario) after which it failed.
    pub step: usize,
    pub at: Duration,
    pub property: String,
    pub detail: String,
    /// The steps that ran, with their indices.
    pub steps: Vec<(usize, Step)>,
    pub options: Options,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "seed {} failed property `{}` at step {} (virtual time {:.3} s): {}",
            self.seed,
            self.property,
            self.step,
            self.at.as_secs_f64(),
            self.detail
        )?;
        writeln!(f, "steps run:")?;
        for (i, s) in &self.steps {
            writeln!(f, "  {i:>5}  {s}")?;
        }
        write!(
            f,
            "replay: cargo run -p strait-sim -- --seed {} --steps {} --nodes {} --quiet-every {}",
            self.seed, self.options.steps, self.options.max_nodes, self.options.quiet_every
        )?;
        if let Some(only) = &self.options.only {
            let list: Vec<String> = only.iter().map(|i| i.to_string()).collect();
            write!(f, " --only {}", list.join(","))?;
        }
        Ok(())
    }
}

/// The scenario of `seed`.
pub fn scenario(seed: u64, options: &Options) -> Vec<Step> {
    ops::generate(
        seed,
        &Shape {
            steps: options.steps,
            max_nodes: options.max_nodes,
            sites: SITES,
            quiet_every: options.quiet_every,
        },
    )
}

/// Plays `seed`'s scenario (or the steps `options.only` keeps) and checks every property
/// after every step. A panic inside the code under test is a failure too.
pub fn run(seed: u64, options: &Options) -> Report {
    let steps = scenario(seed, options);
    let indices: Vec<usize> = match &options.only {
        Some(only) => only.iter().copied().filter(|i| *i < steps.len()).collect(),
        None => (0..steps.len()).collect(),
    };
    let mut ran: Vec<(usize, Step)> = Vec::new();
    let outcome = catch_unwind(AssertUnwindSafe(|| {
        let mut w = World::new(seed, SITES, options.keep_trace, options.fault);
        let mut failed = None;
        for &i in &indices {
            ran.push((i, steps[i].clone()));
            let inject = options.fault.is_some_and(|f| f.at() <= i) && !w.injected;
            if inject {
                w.injected = true;
                w.step_index = i;
                w.inject();
            }
            if let Err(v) = w.step(i, &steps[i]) {
                failed = Some((i, v));
                break;
            }
        }
        (w, failed)
    }));
    let (report, failed) = match outcome {
        Ok((w, failed)) => (
            Report {
                seed,
                steps_run: ran.len(),
                trace_hash: w.trace.hash(),
                trace_lines: w.trace.len(),
                trace: w.trace.lines().to_vec(),
                virtual_time: w.now,
                stats: w.stats.clone(),
                failure: None,
            },
            failed.map(|(i, v)| (i, w.now, v.property.to_string(), v.detail)),
        ),
        Err(panic) => {
            let message = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "a panic".into());
            let step = ran.last().map_or(0, |s| s.0);
            (
                Report {
                    seed,
                    steps_run: ran.len(),
                    trace_hash: 0,
                    trace_lines: 0,
                    trace: Vec::new(),
                    virtual_time: Duration::ZERO,
                    stats: Stats::default(),
                    failure: None,
                },
                Some((step, Duration::ZERO, "no-panic".to_string(), message)),
            )
        }
    };
    Report {
        failure: failed.map(|(step, at, property, detail)| Failure {
            seed,
            step,
            at,
            property,
            detail,
            steps: ran,
            options: options.clone(),
        }),
        ..report
    }
}

/// Fewer steps that fail the same property: chunks of the steps before the failing one
/// are dropped while the failure stays (at most `budget` runs).
pub fn shrink(failure: &Failure, budget: usize) -> Failure {
    let mut keep: Vec<usize> = failure.steps.iter().map(|s| s.0).collect();
    let mut best = failure.clone();
    let mut runs = 0;
    let mut chunk = (keep.len() / 2).max(1);
    while chunk >= 1 && runs < budget {
        let mut start = 0;
        let mut progressed = false;
        while start + 1 < keep.len() && runs < budget {
            // The failing step stays.
            let end = (start + chunk).min(keep.len() - 1);
            if end <= start {
                break;
            }
            let candidate: Vec<usize> = keep[..start].iter().chain(&keep[end..]).copied().collect();
            let options = Options {
                only: Some(candidate.clone()),
                keep_trace: false,
                ..failure.options.clone()
            };
            runs += 1;
            let report = run(failure.seed, &options);
            match report.failure {
                Some(f) if f.property == failure.property => {
                    keep = candidate;
                    best = f;
                    progressed = true;
                }
                _ => start = end,
            }
        }
        if chunk == 1 && !progressed {
            break;
        }
        chunk = (chunk / 2).max(1);
    }
    best
}
