//! `strait-sim`: runs the deterministic mesh simulator over many seeds, or replays one.
//!
//! ```sh
//! cargo run -p strait-sim -- --seeds 500 --steps 2000
//! cargo run -p strait-sim -- --seed 17 --steps 2000 --trace
//! ```

use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Parser;
use strait_sim::{run, shrink, Options};

#[derive(Parser, Debug)]
#[command(
    about = "Deterministic simulation of a Strait mesh: agents' sessions and the coordinator's handlers over a simulated network"
)]
struct Args {
    /// How many seeds to run (from --from).
    #[arg(long, default_value_t = 100)]
    seeds: u64,
    /// The first seed.
    #[arg(long, default_value_t = 0)]
    from: u64,
    /// Run (or replay) only this seed.
    #[arg(long)]
    seed: Option<u64>,
    /// Steps per scenario.
    #[arg(long, default_value_t = 500)]
    steps: usize,
    /// Most nodes a scenario enrolls.
    #[arg(long, default_value_t = 10)]
    nodes: usize,
    /// A quiet period (convergence check) every this many steps.
    #[arg(long, default_value_t = 200)]
    quiet_every: usize,
    /// Replay only these steps of the scenario (as a shrunk failure prints them).
    #[arg(long, value_delimiter = ',')]
    only: Option<Vec<usize>>,
    /// Print the trace of the (single) seed.
    #[arg(long)]
    trace: bool,
    /// Do not shrink failures.
    #[arg(long)]
    no_shrink: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let options = Options {
        steps: args.steps,
        max_nodes: args.nodes,
        quiet_every: args.quiet_every,
        fault: None,
        keep_trace: args.trace,
        only: args.only.clone(),
    };
    let seeds: Vec<u64> = match args.seed {
        Some(s) => vec![s],
        None => (args.from..args.from.saturating_add(args.seeds)).collect(),
    };
    let started = Instant::now();
    let mut failed = 0u64;
    let mut virtual_time = Duration::ZERO;
    let mut max_convergence = Duration::ZERO;
    let mut totals = strait_sim::world::Stats::default();
    for &seed in &seeds {
        let report = run(seed, &options);
        if args.trace {
            for line in &report.trace {
                println!("{line}");
            }
        }
        virtual_time += report.virtual_time;
        max_convergence = max_convergence.max(report.stats.max_convergence);
        add(&mut totals, &report.stats);
        match &report.failure {
            None => {
                if seeds.len() == 1 {
                    println!(
                        "seed {seed}: ok, {} steps, {:.0} s virtual, trace {:016x} ({} lines), {:?}",
                        report.steps_run,
                        report.virtual_time.as_secs_f64(),
                        report.trace_hash,
                        report.trace_lines,
                        report.stats
                    );
                }
            }
            Some(f) => {
                failed += 1;
                println!("{f}");
                if !args.no_shrink && f.options.only.is_none() {
                    let small = shrink(f, 300);
                    println!("\nshrunk to {} steps:\n{small}\n", small.steps.len());
                }
            }
        }
    }
    println!(
        "{} seeds, {} failed, {:.0} s virtual time in {:.1} s; longest convergence {:.1} s; totals: {:?}",
        seeds.len(),
        failed,
        virtual_time.as_secs_f64(),
        started.elapsed().as_secs_f64(),
        max_convergence.as_secs_f64(),
        totals
    );
    if failed > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

fn add(t: &mut strait_sim::world::Stats, s: &strait_sim::world::Stats) {
    t.enrolled += s.enrolled;
    t.registrations += s.registrations;
    t.snapshots += s.snapshots;
    t.deltas += s.deltas;
    t.sessions_over += s.sessions_over;
    t.revocations += s.revocations;
    t.key_switches += s.key_switches;
    t.renewals += s.renewals;
    t.moves += s.moves;
    t.coordinator_restarts += s.coordinator_restarts;
    t.agent_restarts += s.agent_restarts;
    t.quiet_periods += s.quiet_periods;
    t.max_convergence = t.max_convergence.max(s.max_convergence);
}
