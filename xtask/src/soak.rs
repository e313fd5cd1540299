//! `cargo xtask soak`: every fuzz target for minutes each, the long simulation, and any
//! extra runs (the load benchmark), with one summary at the end. Not part of CI.
//!
//! The fuzz targets are the tests of `crates/sync-protocol/tests/fuzz/` and
//! `crates/sync-http/tests/http/fuzz_service.rs` (see `docs/testing.md`). They are built once
//! in release (`cargo test --release --no-run`) and their binaries run directly, so the
//! long runs hold no cargo lock and are not rebuilt by edits made meanwhile. A crasher is
//! saved by the target itself into its corpus directory. A run that dies (a stack overflow
//! aborts the process) is replayed from the last batch it announced, with each input written
//! to `<corpus>/.pending` first; the input that kills the replay is kept as
//! `crash-abort-<seed>-<batch>`.

use std::{
    collections::BTreeMap,
    fs,
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{bail, Context, Result};

use crate::{cargo, describe, workspace_root};

/// A fuzz target: its name, the package and test binary it lives in, the test to run.
#[derive(Debug, Clone, Copy)]
pub struct FuzzTarget {
    /// What `--target` and `STARKEEP_FUZZ_TARGET` call it.
    pub name: &'static str,
    /// The package its test lives in.
    pub package: &'static str,
    /// The test binary (integration test target).
    pub test: &'static str,
    /// The test function, as `--exact` wants it.
    pub filter: &'static str,
    /// Its corpus directory, relative to the workspace root.
    pub corpus: &'static str,
}

/// Every fuzz target.
pub const TARGETS: &[FuzzTarget] = &[
    FuzzTarget {
        name: "json",
        package: "sync-protocol",
        test: "fuzz",
        filter: "fuzz_json_decoders",
        corpus: "crates/sync-protocol/tests/corpus/json",
    },
    FuzzTarget {
        name: "msgpack",
        package: "sync-protocol",
        test: "fuzz",
        filter: "fuzz_msgpack_decoders",
        corpus: "crates/sync-protocol/tests/corpus/msgpack",
    },
    FuzzTarget {
        name: "hlc",
        package: "sync-protocol",
        test: "fuzz",
        filter: "fuzz_hlc_parsers",
        corpus: "crates/sync-protocol/tests/corpus/hlc",
    },
    FuzzTarget {
        name: "http",
        package: "sync-http",
        test: "http",
        filter: "fuzz_service::fuzz_http_service",
        corpus: "crates/sync-http/tests/corpus/http",
    },
];

/// Options of `cargo xtask soak`.
#[derive(Debug, Clone)]
pub struct Options {
    /// Minutes per fuzz target.
    pub minutes: f64,
    /// Targets to run (all when empty).
    pub targets: Vec<String>,
    /// The fuzz seed (default: from the clock, printed, so a run can be repeated).
    pub seed: Option<u64>,
    /// Seeds of the simulation (0: skip it).
    pub sim_seeds: u64,
    /// Fuzz targets run at once.
    pub jobs: usize,
    /// Write the summary into `docs/soak.md`.
    pub record: bool,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            minutes: 10.0,
            targets: Vec::new(),
            seed: None,
            sim_seeds: 100_000,
            jobs: 1,
            record: false,
        }
    }
}

/// The command line of `soak`.
pub const USAGE: &str = "usage: cargo xtask soak [--minutes N] [--target NAME]... [--seed S] \
                         [--sim-seeds N] [--jobs N] [--record]";

impl Options {
    /// Parses the command line options of `soak`.
    pub fn parse(args: &[String]) -> Result<Self> {
        let mut o = Options::default();
        let mut it = args.iter();
        while let Some(arg) = it.next() {
            let (name, inline) = match arg.split_once('=') {
                Some((n, v)) => (n, Some(v.to_string())),
                None => (arg.as_str(), None),
            };
            if name == "--record" {
                o.record = true;
                continue;
            }
            let value = inline
                .or_else(|| it.next().cloned())
                .with_context(|| format!("`{name}` needs a value; {USAGE}"))?;
            let number = || -> Result<u64> {
                value
                    .parse()
                    .with_context(|| format!("`{name} {value}`: not a non-negative integer"))
            };
            match name {
                "--minutes" => {
                    o.minutes = value
                        .parse()
                        .ok()
                        .filter(|m: &f64| *m > 0.0)
                        .with_context(|| format!("`--minutes {value}`: not a positive number"))?
                }
                "--target" => {
                    if !TARGETS.iter().any(|t| t.name == value) {
                        bail!(
                            "unknown fuzz target `{value}`; targets: {}",
                            TARGETS
                                .iter()
                                .map(|t| t.name)
                                .collect::<Vec<_>>()
                                .join(", ")
                        );
                    }
                    o.targets.push(value.clone());
                }
                "--seed" => o.seed = Some(number()?),
                "--sim-seeds" => o.sim_seeds = number()?,
                "--jobs" => o.jobs = number()?.max(1) as usize,
                _ => bail!("unknown option `{arg}`; {USAGE}"),
            }
        }
        Ok(o)
    }
}

/// How one fuzz target's run went.
#[derive(Debug, Clone, Default)]
pub struct FuzzOutcome {
    /// Inputs tried.
    pub inputs: u64,
    /// How long it ran.
    pub seconds: f64,
    /// Crashers found (each saved in the corpus directory).
    pub crashers: u64,
    /// Distinct outcomes seen (error kinds, statuses).
    pub outcomes: u64,
    /// The process died without its summary (kept crasher, if the replay found it).
    pub died: Option<String>,
    /// Files in the target's corpus directory afterwards.
    pub corpus_files: usize,
}

/// The summary line a fuzz target prints, parsed:
/// `fuzz target NAME: N inputs in T s (R/s), B batches from batch F of seed S, O distinct
/// outcomes, C crashers`.
pub fn parse_summary(line: &str) -> Option<(String, FuzzOutcome)> {
    let rest = line.trim().strip_prefix("fuzz target ")?;
    let (name, rest) = rest.split_once(": ")?;
    let number_before = |word: &str| -> Option<f64> {
        let end = rest.find(word)?;
        rest[..end].split_whitespace().last()?.parse().ok()
    };
    Some((
        name.to_string(),
        FuzzOutcome {
            inputs: number_before(" inputs in ")? as u64,
            seconds: number_before(" s (")?,
            outcomes: number_before(" distinct outcomes")? as u64,
            crashers: number_before(" crashers")? as u64,
            ..FuzzOutcome::default()
        },
    ))
}

/// The batch a progress line announces: `fuzz target NAME: batch B (seed S), ...`.
fn parse_batch(line: &str) -> Option<u64> {
    let rest = line.split_once(": batch ")?.1;
    rest.split_whitespace().next()?.parse().ok()
}

/// Builds the release test binaries of `packages`/`tests` and returns their paths by
/// `(package, test)`.
fn build(targets: &[FuzzTarget], sim: bool) -> Result<BTreeMap<(String, String), PathBuf>> {
    let mut cmd = cargo();
    cmd.args(["test", "--release", "--no-run", "--message-format=json"]);
    // A target directory of its own: a soak must not wait for (or hold) the lock of the
    // shared one while other builds and test runs use it.
    if std::env::var_os("CARGO_TARGET_DIR").is_none() {
        cmd.env("CARGO_TARGET_DIR", workspace_root().join("target/soak"));
    }
    let mut wanted: Vec<(&str, &str)> = targets.iter().map(|t| (t.package, t.test)).collect();
    if sim {
        wanted.push(("sync-testkit", "simulation"));
    }
    wanted.sort();
    wanted.dedup();
    for (package, test) in &wanted {
        cmd.args(["-p", package, "--test", test]);
    }
    cmd.stderr(Stdio::inherit());
    eprintln!("xtask: building {}", describe(&cmd));
    let out = cmd
        .output()
        .with_context(|| format!("cannot start {}", describe(&cmd)))?;
    if !out.status.success() {
        bail!("{} failed ({})", describe(&cmd), out.status);
    }
    let mut found = BTreeMap::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let (Some(exe), Some(name), Some(id)) = (
            v["executable"].as_str(),
            v["target"]["name"].as_str(),
            v["package_id"].as_str(),
        ) else {
            continue;
        };
        for (package, test) in &wanted {
            // `package_id` is `path+file:///.../crates/<package>#<version>` (or the older
            // `<package> <version> (...)` form).
            let matches_package =
                id.contains(&format!("/{package}#")) || id.starts_with(&format!("{package} "));
            if name == *test && matches_package {
                found.insert((package.to_string(), test.to_string()), PathBuf::from(exe));
            }
        }
    }
    for (package, test) in &wanted {
        if !found.contains_key(&(package.to_string(), test.to_string())) {
            bail!("cargo built no test binary `{test}` of {package}");
        }
    }
    Ok(found)
}

/// Runs one command, echoing its output lines with a prefix, and returns them and whether
/// it succeeded.
fn run_echoed(cmd: &mut Command, prefix: &str) -> Result<(bool, Vec<String>)> {
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .with_context(|| format!("cannot start {}", describe(cmd)))?;
    let lines = Arc::new(Mutex::new(Vec::new()));
    let stderr = child.stderr.take().expect("piped");
    let prefix_err = prefix.to_string();
    let err_lines = Arc::clone(&lines);
    let err_thread = std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            eprintln!("[{prefix_err}] {line}");
            err_lines.lock().unwrap().push(line);
        }
    });
    let stdout = child.stdout.take().expect("piped");
    for line in BufReader::new(stdout).lines().map_while(Result::ok) {
        println!("[{prefix}] {line}");
        lines.lock().unwrap().push(line);
    }
    let status = child.wait()?;
    let _ = err_thread.join();
    let lines = std::mem::take(&mut *lines.lock().unwrap());
    Ok((status.success(), lines))
}

/// Runs one fuzz target for `secs` from `binary`.
fn fuzz_one(target: &FuzzTarget, binary: &Path, secs: f64, seed: u64) -> Result<FuzzOutcome> {
    let mut cmd = Command::new(binary);
    cmd.args([
        "--exact",
        target.filter,
        "--nocapture",
        "--test-threads",
        "1",
    ])
    .env("STARKEEP_FUZZ_TARGET", target.name)
    .env("STARKEEP_FUZZ_SECS", secs.to_string())
    .env("STARKEEP_FUZZ_SEED", seed.to_string())
    .env_remove("STARKEEP_FUZZ_BATCH")
    .env_remove("STARKEEP_FUZZ_BATCHES")
    .env_remove("STARKEEP_FUZZ_CAREFUL");
    let started = Instant::now();
    let (ok, lines) = run_echoed(&mut cmd, target.name)?;
    let summary = lines
        .iter()
        .filter_map(|l| parse_summary(l))
        .find(|(name, _)| name == target.name)
        .map(|(_, o)| o);
    let corpus = workspace_root().join(target.corpus);
    let mut outcome = match summary {
        Some(o) => o,
        None => {
            // Died without a summary: replay from the last batch it announced, carefully.
            let last_batch = lines.iter().rev().find_map(|l| parse_batch(l)).unwrap_or(0);
            let inputs = lines
                .iter()
                .rev()
                .find_map(|l| {
                    let rest = l.split_once("), ")?.1;
                    rest.split_whitespace().next()?.parse::<u64>().ok()
                })
                .unwrap_or(0);
            eprintln!(
                "xtask: fuzz target {} died (ok = {ok}); replaying seed {seed} from batch \
                 {last_batch}, writing each input first",
                target.name
            );
            let mut replay = Command::new(binary);
            replay
                .args([
                    "--exact",
                    target.filter,
                    "--nocapture",
                    "--test-threads",
                    "1",
                ])
                .env("STARKEEP_FUZZ_TARGET", target.name)
                .env("STARKEEP_FUZZ_SECS", "900")
                .env("STARKEEP_FUZZ_SEED", seed.to_string())
                .env("STARKEEP_FUZZ_BATCH", last_batch.to_string())
                .env("STARKEEP_FUZZ_BATCHES", "200")
                .env("STARKEEP_FUZZ_CAREFUL", "1");
            let (replay_ok, _) = run_echoed(&mut replay, &format!("{} replay", target.name))?;
            let pending = corpus.join(".pending");
            let died = if !replay_ok && pending.exists() {
                let name = format!("crash-abort-{seed}-{last_batch}");
                fs::rename(&pending, corpus.join(&name))?;
                format!(
                    "process died; the last input checked before it died again in the replay: \
                     {}/{name}",
                    target.corpus
                )
            } else {
                format!(
                    "process died; the careful replay from batch {last_batch} did not \
                     reproduce it (replay ok = {replay_ok})"
                )
            };
            FuzzOutcome {
                inputs,
                seconds: started.elapsed().as_secs_f64(),
                crashers: 1,
                died: Some(died),
                ..FuzzOutcome::default()
            }
        }
    };
    outcome.corpus_files = fs::read_dir(&corpus)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
                .count()
        })
        .unwrap_or(0);
    Ok(outcome)
}

/// Extra long runs after the fuzzing and the simulation: each a name and a command.
///
/// The load benchmark of issue 8 (decision 0040): 100 node processes against one `serve` on
/// SQLite and against two sharing PostgreSQL and an S3 bucket, which `cargo xtask bench`
/// starts; it fails (exit 3) on any failed request or missing item, and rewrites the load
/// section of docs/benchmarks.md. 100 records per node, a tenth of the issue's, so it fits a
/// development disk (`--scenario load` alone runs the full size where about 64 GiB are free).
pub fn extra_runs() -> Vec<(String, Command)> {
    let mut load = cargo();
    load.current_dir(workspace_root()).args([
        "xtask",
        "bench",
        "--",
        "--scenario",
        "load",
        "--nodes",
        "100",
        "--load-records",
        "100",
        "--load-rows",
        "1000",
    ]);
    vec![("load (100 nodes)".to_string(), load)]
}

/// What `soak` did, for the summary.
#[derive(Debug, Default)]
pub struct Summary {
    /// The command line, to repeat the run.
    pub command: String,
    /// The fuzz seed.
    pub seed: u64,
    /// Minutes per target.
    pub minutes: f64,
    /// Per fuzz target, how it went.
    pub fuzz: Vec<(String, FuzzOutcome)>,
    /// The simulation: seeds, passed, time, its own summary line.
    pub sim: Option<(u64, bool, Duration, String)>,
    /// Extra runs: name, passed, time.
    pub extra: Vec<(String, bool, Duration)>,
    /// Wall time of the whole soak.
    pub total: Duration,
}

impl Summary {
    /// Whether anything was found or failed.
    pub fn failed(&self) -> bool {
        self.fuzz
            .iter()
            .any(|(_, o)| o.crashers > 0 || o.died.is_some())
            || self.sim.as_ref().is_some_and(|(_, ok, _, _)| !ok)
            || self.extra.iter().any(|(_, ok, _)| !ok)
    }

    /// The summary as Markdown.
    pub fn markdown(&self, date: &str) -> String {
        let mut s = format!(
            "Run of {date}: `{}`, {:.0} min in all, on the 2-core development machine \
             (release build).\n\n\
             | target | time | inputs | inputs/s | distinct outcomes | crashers | corpus files |\n\
             |---|---|---|---|---|---|---|\n",
            self.command,
            self.total.as_secs_f64() / 60.0
        );
        for (name, o) in &self.fuzz {
            s.push_str(&format!(
                "| {name} | {:.1} min | {} | {:.0} | {} | {}{} | {} |\n",
                o.seconds / 60.0,
                o.inputs,
                o.inputs as f64 / o.seconds.max(1e-9),
                o.outcomes,
                o.crashers,
                o.died
                    .as_ref()
                    .map(|d| format!(" ({d})"))
                    .unwrap_or_default(),
                o.corpus_files
            ));
        }
        if let Some((seeds, ok, took, line)) = &self.sim {
            s.push_str(&format!(
                "\nSimulation: {seeds} seeds {} in {:.1} min{}.\n",
                if *ok { "passed" } else { "FAILED" },
                took.as_secs_f64() / 60.0,
                if line.is_empty() {
                    String::new()
                } else {
                    format!(" ({line})")
                }
            ));
        }
        for (name, ok, took) in &self.extra {
            s.push_str(&format!(
                "\n{name}: {} in {:.1} min.\n",
                if *ok { "passed" } else { "FAILED" },
                took.as_secs_f64() / 60.0
            ));
        }
        s
    }
}

/// Today's date (UTC), from the system clock.
fn today() -> String {
    let days = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() / 86_400)
        .unwrap_or(0) as i64;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}")
}

/// Where `--record` writes: between these markers in `docs/soak.md`.
const BEGIN: &str = "<!-- soak:begin (cargo xtask soak --record writes below) -->";
const END: &str = "<!-- soak:end -->";

fn record(markdown: &str) -> Result<PathBuf> {
    let path = workspace_root().join("docs/soak.md");
    let text = fs::read_to_string(&path).unwrap_or_else(|_| {
        format!("# Soak runs\n\nSee docs/testing.md (\"The soak\").\n\n{BEGIN}\n{END}\n")
    });
    let (Some(b), Some(e)) = (text.find(BEGIN), text.find(END)) else {
        bail!("{} lacks the soak markers", path.display());
    };
    let updated = format!("{}{BEGIN}\n\n{markdown}\n{}", &text[..b], &text[e..]);
    fs::write(&path, updated)?;
    Ok(path)
}

/// `cargo xtask soak`.
pub fn run(options: &Options) -> Result<()> {
    let started = Instant::now();
    let seed = options.seed.unwrap_or_else(|| {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(1)
    });
    let targets: Vec<FuzzTarget> = TARGETS
        .iter()
        .filter(|t| options.targets.is_empty() || options.targets.iter().any(|n| n == t.name))
        .copied()
        .collect();
    let binaries = build(&targets, options.sim_seeds > 0)?;
    eprintln!(
        "xtask: soak: {} fuzz target(s) x {} min (seed {seed}, {} at a time), then {} \
         simulation seeds, then {} extra run(s)",
        targets.len(),
        options.minutes,
        options.jobs,
        options.sim_seeds,
        extra_runs().len()
    );
    let secs = options.minutes * 60.0;
    let results: Arc<Mutex<Vec<(String, FuzzOutcome)>>> = Arc::default();
    let queue = Arc::new(Mutex::new(targets.clone()));
    let errors: Arc<Mutex<Vec<String>>> = Arc::default();
    std::thread::scope(|scope| {
        for _ in 0..options.jobs.min(targets.len().max(1)) {
            let (queue, results, errors, binaries) = (&queue, &results, &errors, &binaries);
            scope.spawn(move || loop {
                let Some(target) = queue.lock().unwrap().pop() else {
                    return;
                };
                let binary = &binaries[&(target.package.to_string(), target.test.to_string())];
                match fuzz_one(&target, binary, secs, seed) {
                    Ok(o) => results.lock().unwrap().push((target.name.to_string(), o)),
                    Err(e) => errors
                        .lock()
                        .unwrap()
                        .push(format!("{}: {e:#}", target.name)),
                }
            });
        }
    });
    if let Some(e) = errors.lock().unwrap().first() {
        bail!("fuzz target could not run: {e}");
    }
    let mut fuzz = std::mem::take(&mut *results.lock().unwrap());
    fuzz.sort_by_key(|(name, _)| TARGETS.iter().position(|t| t.name == name));

    let sim = if options.sim_seeds > 0 {
        let binary = &binaries[&("sync-testkit".to_string(), "simulation".to_string())];
        let mut cmd = Command::new(binary);
        cmd.args(["--nocapture", "--test-threads", "1"])
            .env("STARKEEP_SIM_SEEDS", options.sim_seeds.to_string())
            .env_remove("STARKEEP_SIM_SEED");
        let t = Instant::now();
        let (ok, lines) = run_echoed(&mut cmd, "sim")?;
        let line = lines
            .iter()
            .find(|l| l.starts_with("simulated "))
            .cloned()
            .unwrap_or_default();
        Some((options.sim_seeds, ok, t.elapsed(), line))
    } else {
        None
    };

    let mut extra = Vec::new();
    for (name, mut cmd) in extra_runs() {
        let t = Instant::now();
        let (ok, _) = run_echoed(&mut cmd, &name)?;
        extra.push((name, ok, t.elapsed()));
    }

    let mut command = format!(
        "cargo xtask soak --minutes {} --seed {seed} --jobs {} --sim-seeds {}",
        options.minutes, options.jobs, options.sim_seeds
    );
    for t in &options.targets {
        command.push_str(&format!(" --target {t}"));
    }
    let summary = Summary {
        command,
        seed,
        minutes: options.minutes,
        fuzz,
        sim,
        extra,
        total: started.elapsed(),
    };
    let markdown = summary.markdown(&today());
    println!("\n{markdown}");
    if options.record {
        let path = record(&markdown)?;
        eprintln!("xtask: soak summary written to {}", path.display());
    }
    if summary.failed() {
        bail!("the soak found problems (see above); crashers are kept in the corpus directories");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_summary_line_of_a_fuzz_target() {
        let line = "fuzz target json: 438874 inputs in 30.0 s (14618/s), 220 batches from \
                    batch 0 of seed 7, 27417 distinct outcomes, 4 crashers";
        let (name, o) = parse_summary(line).unwrap();
        assert_eq!(name, "json");
        assert_eq!((o.inputs, o.crashers, o.outcomes), (438_874, 4, 27_417));
        assert!((o.seconds - 30.0).abs() < 1e-9);
        assert_eq!(
            parse_summary("fuzz target json: skipped (not selected)").map(|x| x.0),
            None
        );
        assert_eq!(
            parse_batch("fuzz target http: batch 17 (seed 3), 3400 inputs so far"),
            Some(17)
        );
    }

    #[test]
    fn options() {
        let args = |s: &str| s.split_whitespace().map(String::from).collect::<Vec<_>>();
        let o = Options::parse(&args("--minutes 2 --target json --target=http --jobs 2")).unwrap();
        assert_eq!(o.minutes, 2.0);
        assert_eq!(o.targets, vec!["json", "http"]);
        assert_eq!(o.jobs, 2);
        assert_eq!(o.sim_seeds, 100_000);
        assert!(Options::parse(&args("--target nope")).is_err());
        assert!(Options::parse(&args("--minutes 0")).is_err());
        assert!(Options::parse(&args("--bogus 1")).is_err());
        // Every target's corpus directory exists.
        for t in TARGETS {
            assert!(workspace_root().join(t.corpus).is_dir(), "{}", t.corpus);
        }
    }

    #[test]
    fn today_is_a_date() {
        let d = today();
        assert_eq!(d.len(), 10);
        assert!(d.starts_with("20"), "{d}");
    }
}
