//! A small, coverage-less fuzzing engine for stable Rust: seeded generation and mutation,
//! a corpus directory per target, crashers saved and replayed, a time budget.
//!
//! Shared by the decoder targets (`crates/sync-protocol/tests/fuzz/`) and the HTTP service
//! target (`crates/sync-http/tests/http/fuzz_service.rs`, which includes this file by path).
//! See `docs/testing.md` ("Fuzzing and the soak").
//!
//! * Every input is a byte string. A target generates it from a seeded [`Rng`] and a pool
//!   (its seed inputs plus every file of its corpus directory), and checks it: `Err` or a
//!   panic is a crasher, saved as `crash-<hash>` in the corpus directory and replayed by
//!   every later `cargo test` (the corpus replay runs every file there).
//! * Inputs come in batches. A batch's inputs depend only on the run's seed, the batch
//!   number and the pool, and a target may start fresh state per batch (the HTTP target a
//!   new server), so any batch replays alone: `STARKEEP_FUZZ_SEED=S STARKEEP_FUZZ_BATCH=B`.
//! * Within a batch, an input whose outcome the batch has not seen before (a new error
//!   kind, a new status) joins the batch's pool and is mutated further: cheap feedback in
//!   place of coverage.
//! * A crash that kills the process (a stack overflow aborts; it cannot be caught) is found
//!   by replaying from the last batch announced with `STARKEEP_FUZZ_CAREFUL=1`, which writes
//!   each input to `<corpus>/.pending` before running it; `cargo xtask soak` does this and
//!   keeps the file as the crasher.
//!
//! Environment: `STARKEEP_FUZZ_SECS` (time per target; default: each target's short burst),
//! `STARKEEP_FUZZ_SEED` (default 0), `STARKEEP_FUZZ_BATCH` (first batch, default 0),
//! `STARKEEP_FUZZ_BATCHES` (stop after this many), `STARKEEP_FUZZ_TARGET` (run only this
//! target's burst; the corpus replays always run), `STARKEEP_FUZZ_CAREFUL`.

#![allow(dead_code)] // Each test binary that includes this file uses a different part of it.

use std::{
    collections::HashSet,
    fs,
    hash::{Hash, Hasher},
    panic::{catch_unwind, AssertUnwindSafe},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

/// A fast, seedable generator (SplitMix64): the same seed gives the same inputs everywhere.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed ^ 0x5bd1_e995_9e37_79b9)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (`n > 0`).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }

    /// True with probability `num / den`.
    pub fn chance(&mut self, num: u32, den: u32) -> bool {
        self.next_u64() % u64::from(den) < u64::from(num)
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }

    pub fn byte(&mut self) -> u8 {
        self.next_u64() as u8
    }

    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.byte()).collect()
    }
}

/// A fuzz target: generates inputs and checks them.
pub trait Target {
    /// Short name: the corpus directory's name and what `STARKEEP_FUZZ_TARGET` selects.
    fn name(&self) -> &'static str;

    /// Inputs to start from besides the corpus files (e.g. the golden fixtures).
    fn seeds(&self) -> Vec<Vec<u8>>;

    /// Called before each batch: a target with state (a server) starts it afresh here, so a
    /// batch replays alone.
    fn begin_batch(&mut self) {}

    /// A new input from the pool.
    fn generate(&mut self, rng: &mut Rng, pool: &[Vec<u8>]) -> Vec<u8>;

    /// Checks one input: `Ok(outcome)` names what happened (inputs with an outcome the batch
    /// has not seen join its pool), `Err` is a finding. A panic is a finding too.
    fn check(&mut self, input: &[u8]) -> Result<String, String>;

    /// What to save for a crasher: the input itself, unless the target's state matters (the
    /// HTTP target saves the writes of the batch that led up to it as well).
    fn crasher(&mut self, input: &[u8]) -> Vec<u8> {
        input.to_vec()
    }
}

/// What a run did.
#[derive(Debug, Default)]
pub struct Report {
    pub inputs: u64,
    pub batches: u64,
    pub outcomes: usize,
    pub crashers: Vec<PathBuf>,
    pub elapsed: Duration,
}

/// Run settings from the environment.
#[derive(Debug, Clone)]
pub struct Settings {
    pub secs: f64,
    pub seed: u64,
    pub first_batch: u64,
    pub batches: Option<u64>,
    pub careful: bool,
}

fn env<T: std::str::FromStr>(name: &str) -> Option<T> {
    let v = std::env::var(name).ok()?;
    Some(
        v.trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a valid value")),
    )
}

impl Settings {
    /// The settings for `target`, with `default_secs` as its burst when
    /// `STARKEEP_FUZZ_SECS` is unset. A target not selected by `STARKEEP_FUZZ_TARGET` gets
    /// no time at all.
    pub fn for_target(target: &str, default_secs: f64) -> Self {
        let selected = std::env::var("STARKEEP_FUZZ_TARGET")
            .map(|t| t.split(',').any(|t| t.trim() == target))
            .unwrap_or(true);
        Self {
            secs: if selected {
                env("STARKEEP_FUZZ_SECS").unwrap_or(default_secs)
            } else {
                0.0
            },
            seed: env("STARKEEP_FUZZ_SEED").unwrap_or(0),
            first_batch: env("STARKEEP_FUZZ_BATCH").unwrap_or(0),
            batches: env("STARKEEP_FUZZ_BATCHES"),
            careful: std::env::var("STARKEEP_FUZZ_CAREFUL").is_ok_and(|v| v == "1"),
        }
    }
}

/// FNV-1a: a stable name for a crasher file.
pub fn fnv(bytes: &[u8]) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for b in bytes {
        h = (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// The files of a corpus directory (hidden files excluded), sorted by name.
pub fn corpus_files(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| !n.starts_with('.') && !n.ends_with(".md"))
        })
        .collect();
    files.sort();
    files
}

/// Runs one input through `check`, turning a panic into an error.
fn run_one(target: &mut dyn Target, input: &[u8]) -> Result<String, String> {
    match catch_unwind(AssertUnwindSafe(|| target.check(input))) {
        Ok(r) => r,
        Err(panic) => Err(format!(
            "panicked: {}",
            panic
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| panic.downcast_ref::<&str>().copied())
                .unwrap_or("(no message)")
        )),
    }
}

/// Checks every file of the target's corpus directory; fails listing those that do not
/// pass. Returns how many files ran.
pub fn replay_corpus(target: &mut dyn Target, dir: &Path) -> usize {
    let files = corpus_files(dir);
    target.begin_batch();
    let mut failures = Vec::new();
    for file in &files {
        let input = fs::read(file).unwrap();
        // A fresh state per file: each corpus entry stands alone, as it was found.
        target.begin_batch();
        if let Err(e) = run_one(target, &input) {
            failures.push(format!("{}: {e}", file.display()));
        }
    }
    assert!(
        failures.is_empty(),
        "corpus inputs of {} fail:\n{}",
        target.name(),
        failures.join("\n")
    );
    files.len()
}

/// Largest input tried (longer ones are cut): big enough for deep nesting and long
/// strings, small enough to keep the throughput up.
pub const MAX_INPUT: usize = 1 << 20;

/// An input whose check takes longer than this is a finding.
pub const SLOW: Duration = Duration::from_secs(5);

/// Inputs per batch.
pub const BATCH: u64 = 2_000;

/// Fuzzes `target` for the configured time, saving crashers into `dir`, and fails if it
/// found any. Prints one summary line `fuzz target NAME: N inputs in T s, ...` that
/// `cargo xtask soak` reads.
pub fn fuzz(target: &mut dyn Target, dir: &Path, settings: &Settings, batch: u64) -> Report {
    let name = target.name();
    let mut report = Report::default();
    if settings.secs <= 0.0 {
        println!("fuzz target {name}: skipped (not selected)");
        return report;
    }
    // Crashers are replayed by the corpus test, not mutated further: leaving them out keeps
    // a batch's inputs the same when a run saves a crasher and a replay follows.
    let mut base_pool = target.seeds();
    for f in corpus_files(dir) {
        if !f
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("crash-"))
        {
            base_pool.push(fs::read(f).unwrap());
        }
    }
    assert!(
        !base_pool.is_empty(),
        "fuzz target {name} has nothing to start from"
    );
    let start = Instant::now();
    let budget = Duration::from_secs_f64(settings.secs);
    let pending = dir.join(".pending");
    let mut last_note = Instant::now();
    let mut seen_outcomes = HashSet::new();
    let mut findings = Vec::new();
    let mut b = settings.first_batch;
    'run: loop {
        if settings
            .batches
            .is_some_and(|n| b >= settings.first_batch + n)
        {
            break;
        }
        if start.elapsed() >= budget {
            break;
        }
        if last_note.elapsed() >= Duration::from_secs(10) || b == settings.first_batch {
            // Announce the batch, so a run that dies can be replayed from here.
            println!(
                "fuzz target {name}: batch {b} (seed {}), {} inputs so far",
                settings.seed, report.inputs
            );
            last_note = Instant::now();
        }
        let mut rng = Rng::new(
            settings
                .seed
                .wrapping_mul(0x100_0000_01b3)
                .wrapping_add(b.wrapping_mul(0x9e37_79b9_7f4a_7c15)),
        );
        target.begin_batch();
        let mut pool = base_pool.clone();
        let mut batch_outcomes = HashSet::new();
        for _ in 0..batch {
            let mut input = target.generate(&mut rng, &pool);
            input.truncate(MAX_INPUT);
            if settings.careful {
                fs::create_dir_all(dir).unwrap();
                fs::write(&pending, &input).unwrap();
            }
            report.inputs += 1;
            let started = Instant::now();
            let result = run_one(target, &input).and_then(|outcome| {
                // A slow input is a finding too: a body that takes this long is a way to
                // tie up a server.
                let took = started.elapsed();
                if took > SLOW {
                    Err(format!(
                        "took {:.1} s (limit {} s)",
                        took.as_secs_f64(),
                        SLOW.as_secs()
                    ))
                } else {
                    Ok(outcome)
                }
            });
            match result {
                Ok(outcome) => {
                    let mut h = std::collections::hash_map::DefaultHasher::new();
                    outcome.hash(&mut h);
                    let key = h.finish();
                    seen_outcomes.insert(key);
                    if batch_outcomes.insert(key) && pool.len() < base_pool.len() + 512 {
                        pool.push(input);
                    }
                }
                Err(e) => {
                    fs::create_dir_all(dir).unwrap();
                    let saved = target.crasher(&input);
                    let path = dir.join(format!("crash-{:016x}", fnv(&saved)));
                    fs::write(&path, &saved).unwrap();
                    println!(
                        "fuzz target {name}: CRASHER in batch {b} (seed {}): {e}\n  saved as {}",
                        settings.seed,
                        path.display()
                    );
                    findings.push(format!("{}: {e}", path.display()));
                    report.crashers.push(path);
                    if report.crashers.len() >= 20 {
                        break 'run;
                    }
                }
            }
            if start.elapsed() >= budget && settings.batches.is_none() {
                report.batches += 1;
                break 'run;
            }
        }
        report.batches += 1;
        b += 1;
    }
    if settings.careful {
        let _ = fs::remove_file(&pending);
    }
    report.elapsed = start.elapsed();
    report.outcomes = seen_outcomes.len();
    println!(
        "fuzz target {name}: {} inputs in {:.1} s ({:.0}/s), {} batches from batch {} of seed \
         {}, {} distinct outcomes, {} crashers",
        report.inputs,
        report.elapsed.as_secs_f64(),
        report.inputs as f64 / report.elapsed.as_secs_f64().max(1e-9),
        report.batches,
        settings.first_batch,
        settings.seed,
        report.outcomes,
        report.crashers.len()
    );
    assert!(
        findings.is_empty(),
        "fuzz target {name} found {} crasher(s), saved in {} (they replay in the corpus \
         test from now on):\n{}",
        findings.len(),
        dir.display(),
        findings.join("\n")
    );
    report
}
