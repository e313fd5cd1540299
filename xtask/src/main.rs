//! `cargo xtask`: the workspace's test, simulation, fixture, tidy and CI commands.
//! Run `cargo xtask help` for the list; `docs/testing.md` explains them.

use std::{
    process::ExitCode,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::Instant,
};

use anyhow::{bail, Context, Result};
use xtask::{cargo, fixtures, postgres, run, s3, tidy, workspace_root};

const USAGE: &str = "\
usage: cargo xtask <command>

commands:
  test [-- <cargo test args>]   start PostgreSQL and an S3-compatible server on loopback,
                                run `cargo test --workspace`, then the scenario suite again
                                on SQLite and on PostgreSQL, stop them
  sim --seeds N [--seed S] [-- <cargo test args>]
                                run the seeded simulation (sync-testkit) over N seeds from S
                                (default 0); `--seed S` alone replays seed S
  fixtures [--check]            write the golden wire fixtures of sync-protocol (or check them)
  tidy                          check that the pure crates have no I/O dependency or clock read
  bench [--quick] [-- <bench args>]
                                build `starkeep-sync` in release, run its benchmark suite and
                                write the figures into docs/benchmarks.md
  soak [--minutes N] [--target NAME]... [--seed S] [--sim-seeds N] [--jobs N] [--record]
                                run every fuzz target N minutes (default 10) in release, then
                                the simulation over 100,000 seeds, then the extra runs; print
                                the summary (`--record`: also into docs/soak.md). Not in CI
  ci                            fmt, clippy, docs, tidy, fixtures --check, then test
";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match dispatch(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn dispatch(args: &[String]) -> Result<()> {
    let (command, rest) = args
        .split_first()
        .map_or(("help", &[][..]), |(c, r)| (c, r));
    let (options, passthrough) = split_passthrough(rest);
    match command {
        "test" => {
            expect_no_options(command, options)?;
            test(passthrough)
        }
        "sim" => sim(options, passthrough),
        "fixtures" => match options {
            [] => write_fixtures(),
            [flag] if flag == "--check" => check_fixtures(),
            _ => bail!("usage: cargo xtask fixtures [--check]"),
        },
        "tidy" => {
            expect_no_options(command, options)?;
            check_tidy()
        }
        "bench" => match options {
            [] => xtask::bench::run(false, passthrough),
            [flag] if flag == "--quick" => xtask::bench::run(true, passthrough),
            _ => bail!("usage: cargo xtask bench [--quick] [-- <starkeep-sync bench args>]"),
        },
        "soak" => {
            if !passthrough.is_empty() {
                bail!("`soak` passes nothing to cargo; {}", xtask::soak::USAGE);
            }
            xtask::soak::run(&xtask::soak::Options::parse(options)?)
        }
        "ci" => {
            expect_no_options(command, options)?;
            ci()
        }
        "help" | "-h" | "--help" => {
            print!("{USAGE}");
            Ok(())
        }
        other => bail!("unknown command `{other}`\n\n{USAGE}"),
    }
}

/// Splits `args` at the first `--` into our options and the arguments passed on to cargo.
fn split_passthrough(args: &[String]) -> (&[String], &[String]) {
    match args.iter().position(|a| a == "--") {
        Some(at) => (&args[..at], &args[at + 1..]),
        None => (args, &[]),
    }
}

fn expect_no_options(command: &str, options: &[String]) -> Result<()> {
    if let Some(first) = options.first() {
        bail!("`{command}` takes no option `{first}` (cargo test arguments go after `--`)");
    }
    Ok(())
}

/// `cargo xtask test`: the whole suite, with the services it needs on loopback.
fn test(cargo_args: &[String]) -> Result<()> {
    // Survive Ctrl-C (and SIGTERM, SIGHUP) until the server is stopped: a Ctrl-C at the
    // terminal also reaches `cargo test`, which ends, and then the guard stops PostgreSQL
    // (in its own process group, the server does not see the Ctrl-C). A signal sent to xtask
    // alone takes effect when the test run ends.
    let interrupted = Arc::new(AtomicBool::new(false));
    for signal in signal_hook::consts::TERM_SIGNALS {
        signal_hook::flag::register(*signal, Arc::clone(&interrupted))?;
    }

    // The S3-compatible server first: its one-time install takes minutes, and PostgreSQL
    // need not idle through it.
    let object_store = start_s3()?;
    let server = start_postgres()?;
    if interrupted.load(Ordering::SeqCst) {
        bail!("interrupted");
    }
    let mut cmd = cargo();
    cmd.arg("test");
    // `-p` narrows the run (e.g. `cargo xtask test -- -p sync-hlc`); otherwise test everything,
    // unit, integration and doc tests, in one cargo invocation.
    if !cargo_args
        .iter()
        .any(|a| a.starts_with("-p") || a.starts_with("--package") || a == "--workspace")
    {
        cmd.arg("--workspace");
    }
    cmd.args(cargo_args);
    if let Some(pg) = &server {
        cmd.env(postgres::URL_VAR, pg.url());
    }
    if let Some(s3) = &object_store {
        cmd.envs(s3.env());
    }
    let postgres_url = server
        .as_ref()
        .map(postgres::TestPostgres::url)
        .or_else(|| std::env::var(postgres::URL_VAR).ok());
    let tests = run(&mut cmd).and_then(|()| {
        if interrupted.load(Ordering::SeqCst) {
            return Ok(());
        }
        scenarios_on_sql_backends(cargo_args, postgres_url.as_deref())
    });
    let stopped = server.map_or(Ok(()), postgres::TestPostgres::stop);
    let s3_stopped = object_store.map_or(Ok(()), s3::TestS3::stop);
    if interrupted.load(Ordering::SeqCst) {
        bail!("interrupted");
    }
    tests?;
    stopped.context("the tests passed, but PostgreSQL did not stop cleanly")?;
    s3_stopped.context("the tests passed, but the S3-compatible server did not stop cleanly")
}

/// The environment variable that puts the scenario harness of sync-testkit on a backend.
const BACKEND_VAR: &str = "STARKEEP_TEST_BACKEND";

/// After the main run: the scenario suite of sync-testkit (`tests/scenarios_*.rs`) once more
/// on SQLite and once on PostgreSQL. The binaries are the ones the main run built (the same
/// `--workspace` feature set; the backend is read at run time), so nothing is rebuilt.
///
/// A narrowed run (cargo options such as `-p` before the test binaries' own `--`) skips
/// this; the test binaries' arguments (a name filter, `--nocapture`) are passed on. Without
/// a PostgreSQL URL the PostgreSQL pass is skipped loudly, or fails under `CI=true`.
fn scenarios_on_sql_backends(cargo_args: &[String], postgres_url: Option<&str>) -> Result<()> {
    let (cargo_options, binary_args) = split_passthrough(cargo_args);
    if !cargo_options.is_empty() {
        eprintln!(
            "xtask: narrowed run ({}): the scenario suite is not repeated on SQLite and \
             PostgreSQL; set {BACKEND_VAR}=sqlite or =postgres to pick one",
            cargo_options.join(" ")
        );
        return Ok(());
    }
    for backend in ["sqlite", "postgres"] {
        if backend == "postgres" && postgres_url.is_none() {
            let what = format!(
                "{} is not set: the scenario suite did NOT run on PostgreSQL",
                postgres::URL_VAR
            );
            if xtask::in_ci() {
                bail!("{what}; CI must run it");
            }
            eprintln!(
                "\n{banner}\nxtask: WARNING: {what}.\n{banner}\n",
                banner = "!".repeat(78)
            );
            continue;
        }
        let mut cmd = cargo();
        cmd.args(["test", "--workspace", "--test", "scenarios_*"])
            .env(BACKEND_VAR, backend);
        if !binary_args.is_empty() {
            cmd.arg("--").args(binary_args);
        }
        if let Some(url) = postgres_url {
            cmd.env(postgres::URL_VAR, url);
        }
        eprintln!("xtask: the scenario suite on {backend} ({BACKEND_VAR}={backend})");
        let started = Instant::now();
        let result = run(&mut cmd);
        eprintln!(
            "xtask: the scenario suite on {backend} {} after {:.1?}",
            if result.is_ok() { "passed" } else { "FAILED" },
            started.elapsed()
        );
        result?;
    }
    Ok(())
}

/// Installs (once, into `.tools/`) and starts the S3-compatible server, unless the
/// environment already names one or (outside CI) it cannot be installed: `None` then.
fn start_s3() -> Result<Option<s3::TestS3>> {
    if std::env::var_os(s3::ENDPOINT_VAR).is_some() {
        eprintln!(
            "xtask: using the S3-compatible server named by {} from the environment",
            s3::ENDPOINT_VAR
        );
        return Ok(None);
    }
    let bin = match s3::install(&workspace_root()) {
        Ok(bin) => bin,
        Err(e) if !xtask::in_ci() => {
            eprintln!("\n{banner}\nxtask: WARNING: cannot install s3s-fs: {e:#}.\nxtask: WARNING: running WITHOUT {var}: the S3 blob tests will be skipped.\n{banner}\n",
                banner = "!".repeat(78), var = s3::ENDPOINT_VAR);
            return Ok(None);
        }
        Err(e) => return Err(e.context("CI must run the S3 blob tests")),
    };
    let server = s3::TestS3::start(&bin).context("cannot start s3s-fs")?;
    eprintln!(
        "xtask: s3s-fs {} on {}, bucket {}",
        s3::VERSION,
        server.endpoint(),
        s3::BUCKET
    );
    Ok(Some(server))
}

/// Starts the throwaway PostgreSQL, unless the environment already names a server or (outside
/// CI) the binaries are missing: `None` then, and the tests see the environment as it is.
fn start_postgres() -> Result<Option<postgres::TestPostgres>> {
    if std::env::var_os(postgres::URL_VAR).is_some() {
        // Nothing to start or stop; the tests inherit the variable.
        eprintln!(
            "xtask: using the PostgreSQL server named by {} from the environment",
            postgres::URL_VAR
        );
        return Ok(None);
    }
    let bin = postgres::bin_dir();
    let missing = postgres::missing_binaries(&bin);
    if !missing.is_empty() {
        let what = format!(
            "PostgreSQL server binaries missing from {} ({}); set {} to their directory or \
             install postgresql-15",
            bin.display(),
            missing.join(", "),
            postgres::BIN_DIR_VAR,
        );
        if xtask::in_ci() {
            bail!("{what}: CI must run the PostgreSQL tests");
        }
        eprintln!("\n{banner}\nxtask: WARNING: {what}.\nxtask: WARNING: running WITHOUT {url}: the PostgreSQL tests will be skipped.\n{banner}\n",
            banner = "!".repeat(78), url = postgres::URL_VAR);
        return Ok(None);
    }
    let pg = postgres::TestPostgres::start(&bin).context("cannot start PostgreSQL")?;
    eprintln!(
        "xtask: PostgreSQL 15 on 127.0.0.1:{}, {}={}",
        pg.port(),
        postgres::URL_VAR,
        pg.url()
    );
    Ok(Some(pg))
}

/// `cargo xtask sim`: the seeded deterministic simulation of sync-testkit.
fn sim(options: &[String], cargo_args: &[String]) -> Result<()> {
    let mut seeds: Option<u64> = None;
    let mut seed: Option<u64> = None;
    let mut it = options.iter();
    while let Some(option) = it.next() {
        let (name, inline) = match option.split_once('=') {
            Some((name, value)) => (name, Some(value.to_owned())),
            None => (option.as_str(), None),
        };
        let slot = match name {
            "--seeds" => &mut seeds,
            "--seed" => &mut seed,
            _ => bail!("unknown option `{option}`; usage: cargo xtask sim --seeds N [--seed S]"),
        };
        let value = inline
            .or_else(|| it.next().cloned())
            .with_context(|| format!("`{name}` needs a number"))?;
        *slot = Some(
            value
                .parse()
                .with_context(|| format!("`{name} {value}`: not a non-negative integer"))?,
        );
    }
    let seeds = match (seeds, seed) {
        (Some(n), _) => n,
        // Replaying one seed needs no count.
        (None, Some(_)) => 1,
        (None, None) => bail!("usage: cargo xtask sim --seeds N [--seed S]"),
    };

    let mut cmd = cargo();
    cmd.args(["test", "-p", "sync-testkit", "--test", "simulation"])
        .args(cargo_args)
        .args(["--", "--nocapture"])
        .env("STARKEEP_SIM_SEEDS", seeds.to_string());
    match seed {
        Some(s) => cmd.env("STARKEEP_SIM_SEED", s.to_string()),
        None => cmd.env_remove("STARKEEP_SIM_SEED"),
    };
    let started = Instant::now();
    let result = run(&mut cmd);
    eprintln!(
        "xtask: simulation of {seeds} seed(s) from {} {} after {:.1?}",
        seed.unwrap_or(0),
        if result.is_ok() { "passed" } else { "FAILED" },
        started.elapsed()
    );
    result
}

fn write_fixtures() -> Result<()> {
    let dir = fixtures::dir(&workspace_root());
    let changed = fixtures::write(&dir)?;
    if changed.is_empty() {
        println!("fixtures in {} are up to date", dir.display());
    }
    for name in changed {
        println!("wrote {}", dir.join(name).display());
    }
    Ok(())
}

fn check_fixtures() -> Result<()> {
    let dir = fixtures::dir(&workspace_root());
    fixtures::check(&dir)?;
    println!("fixtures in {} are up to date", dir.display());
    Ok(())
}

fn check_tidy() -> Result<()> {
    let problems = tidy::check(&workspace_root())?;
    if !problems.is_empty() {
        for problem in &problems {
            eprintln!("tidy: {problem}");
        }
        bail!(
            "{} tidy problem(s): pure crates must stay sans-IO",
            problems.len()
        );
    }
    println!("tidy: {} are pure", tidy::PURE_CRATES.join(", "));
    Ok(())
}

/// `cargo xtask ci`: everything CI checks, cheapest first.
fn ci() -> Result<()> {
    run(cargo().args(["fmt", "--all", "--", "--check"]))?;
    run(cargo().args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    run(cargo()
        .args(["doc", "--workspace", "--no-deps"])
        .env("RUSTDOCFLAGS", "-D warnings"))?;
    check_tidy()?;
    check_fixtures()?;
    test(&[])
}
