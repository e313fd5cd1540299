//! The deterministic simulation (SPEC §10): many seeds, every invariant of
//! shared/scenarios.md §21 after every round, convergence after healing.
//!
//! `STARKEEP_SIM_SEEDS=N` sets how many seeds run (default 300, the CI floor);
//! `STARKEEP_SIM_SEED=S` starts from seed S (replay a failure with `--seeds 1`).
//! `cargo xtask sim --seeds N [--seed S]` sets both.

use std::time::Instant;

use sync_core::CutOrder;
use sync_testkit::sim::{run_seed, SimOptions};

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().map(|v| {
        v.parse()
            .unwrap_or_else(|_| panic!("{name} must be a number, got {v:?}"))
    })
}

#[test]
fn simulation_keeps_every_invariant() {
    let seeds = env_u64("STARKEEP_SIM_SEEDS").unwrap_or(300);
    let first = env_u64("STARKEEP_SIM_SEED").unwrap_or(0);
    let started = Instant::now();
    let (mut rounds, mut writes, mut failed, mut inline) = (0, 0, 0, 0);
    let (mut pipelined, mut held_back, mut cut_ahead) = (0, 0, 0);
    for seed in first..first + seeds {
        match run_seed(seed, &SimOptions::default()) {
            Ok(stats) => {
                rounds += stats.rounds;
                writes += stats.writes;
                failed += stats.failed_rounds;
                inline += stats.inline_sent;
                pipelined += stats.pipelined_rounds;
                held_back += stats.held_back;
                cut_ahead += stats.cut_ahead_rounds;
            }
            Err(failure) => panic!("{failure}"),
        }
    }
    eprintln!(
        "simulated {seeds} seeds from {first}: {rounds} rounds ({failed} failed as a whole), \
         {writes} writes, {inline} blobs shipped inline, {pipelined} pipelined rounds \
         ({held_back} origin nodes held back at a gap), {cut_ahead} pages cut ahead, in {:.1?}",
        started.elapsed()
    );
    // Odd seeds carry small blobs inline: the run must have exercised that path.
    if seeds >= 10 {
        assert!(inline > 0, "no blob was ever shipped inline");
        // Seeds with bit 1 set sync with pipelined pulls and pushes.
        assert!(pipelined > 0, "no round was ever a pipelined pull");
        assert!(cut_ahead > 0, "no page was ever cut ahead");
    }
}

/// Seeds that once failed, kept as regressions whatever range the run covers.
/// 39224: a responder that refused a new version below its origin's coverage wedged two
/// devices, each halted behind a version the other relayed past (decision 0030).
#[test]
fn simulation_regression_seeds() {
    for seed in [39224] {
        if let Err(failure) = run_seed(seed, &SimOptions::default()) {
            panic!("{failure}");
        }
    }
}

/// The simulator has teeth: the classic page-order bug (cutting the page stream by stream,
/// table order, instead of per origin node in version order) is caught.
#[test]
fn simulation_catches_a_table_order_cut() {
    let options = SimOptions {
        cut_order: CutOrder::StreamOrder,
        ..SimOptions::default()
    };
    let caught = (0..200).find_map(|seed| run_seed(seed, &options).err());
    let failure = caught.expect("a table-order cut went unnoticed for 200 seeds");
    eprintln!("caught at seed {}: {}", failure.seed, failure.message);
}

/// The simulator has teeth: a pipelined page that moves a watermark over the gap the
/// previous page left (its origin failed there) is caught.
#[test]
fn simulation_catches_a_pipelined_pull_that_jumps_a_gap() {
    let options = SimOptions {
        jump_pipelined_gaps: true,
        ..SimOptions::default()
    };
    let caught = (0..2000).find_map(|seed| run_seed(seed, &options).err());
    let failure = caught.expect("a pipelined pull jumping a gap went unnoticed for 2000 seeds");
    eprintln!("caught at seed {}: {}", failure.seed, failure.message);
}

/// The simulator has teeth: a responder whose coverage report overstates what it holds is
/// caught.
#[test]
fn simulation_catches_an_overstating_coverage_report() {
    let options = SimOptions {
        overstate_coverage: true,
        ..SimOptions::default()
    };
    let caught = (0..200).find_map(|seed| run_seed(seed, &options).err());
    let failure = caught.expect("an overstating coverage report went unnoticed for 200 seeds");
    eprintln!("caught at seed {}: {}", failure.seed, failure.message);
}

/// The simulator has teeth: a page cut ahead (pipelined pushes) sent without checking that
/// the responder's coverage is what it was cut against is caught.
#[test]
fn simulation_catches_an_unchecked_page_cut_ahead() {
    let options = SimOptions {
        skip_cut_ahead_check: true,
        ..SimOptions::default()
    };
    let caught = (0..2000).find_map(|seed| run_seed(seed, &options).err());
    let failure = caught.expect("an unchecked page cut ahead went unnoticed for 2000 seeds");
    eprintln!("caught at seed {}: {}", failure.seed, failure.message);
}
