//! The mesh simulator in tier 1: a fixed set of seeds must hold every property; a seed
//! replays exactly; and the checks catch a broken agent shell, so passing means something.

use strait_sim::{run, shrink, Fault, Options, Report};

fn options(steps: usize) -> Options {
    Options {
        steps,
        max_nodes: 10,
        quiet_every: 150,
        ..Options::default()
    }
}

fn passes(seed: u64, options: &Options) -> Report {
    let report = run(seed, options);
    if let Some(f) = &report.failure {
        panic!("{f}");
    }
    report
}

#[test]
fn fixed_seeds_hold_every_property() {
    let options = options(500);
    let mut totals = Vec::new();
    for seed in 1000..1012 {
        let r = passes(seed, &options);
        assert!(r.stats.quiet_periods >= 3, "seed {seed}: {:?}", r.stats);
        totals.push(r.stats);
    }
    // Not vacuous: the seeds did what the simulator is for.
    let sum = |f: fn(&strait_sim::world::Stats) -> u64| totals.iter().map(f).sum::<u64>();
    assert!(sum(|s| s.registrations) > 100);
    assert!(sum(|s| s.deltas) > 300);
    assert!(sum(|s| s.revocations) > 5);
    assert!(sum(|s| s.key_switches) > 5);
    assert!(sum(|s| s.renewals) > 5);
    assert!(sum(|s| s.moves) > 5);
    assert!(sum(|s| s.coordinator_restarts) > 10);
    assert!(sum(|s| s.agent_restarts) > 50);
}

#[test]
fn one_seed_replays_exactly() {
    let options = Options {
        keep_trace: true,
        ..options(250)
    };
    let a = passes(42, &options);
    let b = passes(42, &options);
    assert_eq!(a.trace_hash, b.trace_hash);
    assert_eq!(a.trace, b.trace);
    assert_eq!(a.stats, b.stats);
    assert!(a.trace_lines > 500, "{}", a.trace_lines);
    let other = passes(43, &options);
    assert_ne!(a.trace_hash, other.trace_hash, "another seed, another run");
}

fn caught(fault: Fault, property: &str) {
    let options = Options {
        fault: Some(fault),
        quiet_every: 40,
        ..options(100)
    };
    let report = run(5, &options);
    let failure = report
        .failure
        .unwrap_or_else(|| panic!("{fault:?} went unnoticed: {:?}", report.stats));
    assert_eq!(failure.property, property, "{failure}");
    assert!(failure.step >= fault.at(), "{failure}");
    let text = failure.to_string();
    assert!(text.contains("seed 5 failed property"), "{text}");
    assert!(
        text.contains("replay: cargo run -p strait-sim -- --seed 5"),
        "{text}"
    );
}

#[test]
fn the_checks_catch_a_wrong_map() {
    caught(Fault::WrongMap { at: 10 }, "convergence");
}

#[test]
fn the_checks_catch_a_prefix_routed_to_two_sites() {
    caught(Fault::PhantomRoute { at: 10 }, "one-site-per-prefix");
}

#[test]
fn the_checks_catch_missing_fail_closed_routes() {
    caught(Fault::NoFailClosed { at: 10 }, "fail-closed");
}

#[test]
fn a_failure_shrinks_and_the_shrunk_steps_replay() {
    let options = Options {
        fault: Some(Fault::WrongMap { at: 10 }),
        quiet_every: 40,
        ..options(100)
    };
    let failure = run(5, &options).failure.expect("the fault is caught");
    let small = shrink(&failure, 100);
    assert_eq!(small.property, failure.property);
    assert!(small.steps.len() < failure.steps.len(), "{small}");
    let only: Vec<usize> = small.steps.iter().map(|s| s.0).collect();
    assert!(small.to_string().contains("--only "), "{small}");
    let again = run(
        5,
        &Options {
            only: Some(only),
            ..options
        },
    );
    let again = again.failure.expect("the shrunk steps fail again");
    assert_eq!((again.property, again.step), (small.property, small.step));
}
