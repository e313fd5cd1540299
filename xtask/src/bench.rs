//! `cargo xtask bench`: builds `starkeep-sync` in release, runs its benchmark suite, and puts
//! the generated sections into `docs/benchmarks.md` between markers, leaving the rest of the
//! page (other sections, the analysis) as it is.
//!
//! It starts the services the suite can use, as `cargo xtask test` does: a throwaway
//! PostgreSQL (issue 3's storage figures on PostgreSQL, and the load scenario's scale-out
//! setup) and, when the load scenario is asked for, the S3-compatible server. Missing
//! PostgreSQL binaries are not an error: the suite then says loudly that its PostgreSQL
//! figures were not measured, and the page shows them as such.

use std::path::Path;

use anyhow::{Context, Result};

use crate::{cargo, postgres, s3, workspace_root};

/// The markers around the generated section of a full run.
pub const FULL: (&str, &str) = ("<!-- bench:full:begin -->", "<!-- bench:full:end -->");
/// The markers around the generated section of a `--quick` run.
pub const QUICK: (&str, &str) = ("<!-- bench:quick:begin -->", "<!-- bench:quick:end -->");
/// The markers around the load scenario's section (issue 8).
pub const LOAD: (&str, &str) = ("<!-- bench:load:begin -->", "<!-- bench:load:end -->");
/// The markers around the load scenario's section of a `--quick` run.
pub const LOAD_QUICK: (&str, &str) = (
    "<!-- bench:load-quick:begin -->",
    "<!-- bench:load-quick:end -->",
);

/// The variable through which the suite receives a PostgreSQL URL.
pub const POSTGRES_URL_VAR: &str = "STARKEEP_BENCH_POSTGRES_URL";
/// The variables through which the suite receives the S3-compatible server (endpoint,
/// bucket, access key, secret key), in [`s3::TestS3::env`] order.
pub const S3_VARS: [&str; 4] = [
    "STARKEEP_BENCH_S3_ENDPOINT",
    "STARKEEP_BENCH_S3_BUCKET",
    "STARKEEP_BENCH_S3_ACCESS_KEY",
    "STARKEEP_BENCH_S3_SECRET_KEY",
];

/// Builds, starts the services, runs the suite (`--quick` sizes if asked; `extra` goes to
/// `starkeep-sync bench`), and updates docs/benchmarks.md. The JSON of every figure is left
/// in `target/bench/results[-quick].json`.
pub fn run(quick: bool, extra: &[String]) -> Result<()> {
    let root = workspace_root();
    crate::run(cargo().args(["build", "-p", "sync-cli", "--release"]))?;
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    let out_dir = target.join("bench");
    std::fs::create_dir_all(&out_dir)?;
    let suffix = if quick { "-quick" } else { "" };
    let json = out_dir.join(format!("results{suffix}.json"));
    let markdown = out_dir.join(format!("results{suffix}.md"));
    let load_markdown = out_dir.join(format!("results-load{suffix}.md"));
    for stale in [&markdown, &load_markdown] {
        let _ = std::fs::remove_file(stale);
    }
    let mut cmd = std::process::Command::new(target.join("release").join("starkeep-sync"));
    cmd.arg("bench");
    if quick {
        cmd.arg("--quick");
    }
    cmd.arg("--out")
        .arg(&json)
        .arg("--markdown")
        .arg(&markdown)
        .arg("--load-markdown")
        .arg(&load_markdown)
        .args(extra)
        .current_dir(&root);

    // The services live until the suite ends (drop guards stop them on failure too).
    let pg = start_postgres()?;
    if let Some(pg) = &pg {
        cmd.env(POSTGRES_URL_VAR, pg.url());
    }
    let object_store = if asks_for_load(extra) {
        start_s3(&root)?
    } else {
        None
    };
    if let Some(s3) = &object_store {
        for (var, (_, value)) in S3_VARS.iter().zip(s3.env()) {
            cmd.env(var, value);
        }
    }
    let ran = crate::run(&mut cmd);
    let pg_stopped = pg.map_or(Ok(()), postgres::TestPostgres::stop);
    let s3_stopped = object_store.map_or(Ok(()), s3::TestS3::stop);
    // The figures are written even when a load run failed its checks (exit 3): keep them.
    // A run of chosen scenarios leaves the suite's section alone (it would replace the
    // whole table with a few rows); the load scenario has a section of its own.
    let doc = root.join("docs").join("benchmarks.md");
    let partial = extra
        .iter()
        .any(|a| a == "--scenario" || a.starts_with("--scenario="));
    for (file, markers, is_load) in [
        (&markdown, if quick { QUICK } else { FULL }, false),
        (&load_markdown, if quick { LOAD_QUICK } else { LOAD }, true),
    ] {
        let section = std::fs::read_to_string(file).unwrap_or_default();
        if section.trim().is_empty() {
            continue;
        }
        if partial && !is_load {
            println!(
                "xtask: a run of chosen scenarios: {} left as it is; the figures are in {}",
                doc.display(),
                file.display()
            );
            continue;
        }
        splice(&doc, markers, &section)?;
        println!(
            "xtask: wrote the figures into {} ({})",
            doc.display(),
            markers.0
        );
    }
    ran?;
    pg_stopped.context("the suite ran, but PostgreSQL did not stop cleanly")?;
    s3_stopped.context("the suite ran, but the S3-compatible server did not stop cleanly")
}

/// Whether `extra` selects the load scenario (`--scenario load` or `--scenario=load`).
pub fn asks_for_load(extra: &[String]) -> bool {
    extra.iter().enumerate().any(|(i, a)| {
        a == "--scenario=load" || (a == "load" && i > 0 && extra[i - 1] == "--scenario")
    })
}

/// A throwaway PostgreSQL for the suite, unless [`POSTGRES_URL_VAR`] already names one or
/// the binaries are missing (then `None`, with a loud warning: the suite reports its
/// PostgreSQL figures as not measured).
fn start_postgres() -> Result<Option<postgres::TestPostgres>> {
    if std::env::var_os(POSTGRES_URL_VAR).is_some() {
        eprintln!("xtask: using the PostgreSQL server named by {POSTGRES_URL_VAR}");
        return Ok(None);
    }
    let bin = postgres::bin_dir();
    let missing = postgres::missing_binaries(&bin);
    if !missing.is_empty() {
        eprintln!(
            "\n{banner}\nxtask: WARNING: PostgreSQL server binaries missing from {} ({}); set \
             {} or install postgresql-15.\nxtask: WARNING: the PostgreSQL figures will NOT be \
             measured.\n{banner}\n",
            bin.display(),
            missing.join(", "),
            postgres::BIN_DIR_VAR,
            banner = "!".repeat(78)
        );
        return Ok(None);
    }
    let pg = postgres::TestPostgres::start(&bin).context("cannot start PostgreSQL")?;
    eprintln!("xtask: PostgreSQL 15 on 127.0.0.1:{}", pg.port());
    Ok(Some(pg))
}

/// The S3-compatible server for the load scenario's scale-out setup, unless
/// `STARKEEP_BENCH_S3_ENDPOINT` already names one or it cannot be installed (then `None`,
/// loudly: the suite reports that setup as not measured).
fn start_s3(root: &Path) -> Result<Option<s3::TestS3>> {
    if std::env::var_os(S3_VARS[0]).is_some() {
        eprintln!(
            "xtask: using the S3-compatible server named by {}",
            S3_VARS[0]
        );
        return Ok(None);
    }
    let bin = match s3::install(root) {
        Ok(bin) => bin,
        Err(e) => {
            eprintln!(
                "\n{banner}\nxtask: WARNING: cannot install s3s-fs: {e:#}.\nxtask: WARNING: the \
                 load scenario's PostgreSQL + S3 setup will NOT be measured.\n{banner}\n",
                banner = "!".repeat(78)
            );
            return Ok(None);
        }
    };
    let server = s3::TestS3::start(&bin).context("cannot start s3s-fs")?;
    eprintln!("xtask: s3s-fs {} on {}", s3::VERSION, server.endpoint());
    Ok(Some(server))
}

/// Replaces what lies between `markers` in the file at `path` with `section` (appending a
/// new marked section at the end if the markers are missing).
pub fn splice(path: &Path, markers: (&str, &str), section: &str) -> Result<()> {
    let doc = std::fs::read_to_string(path).unwrap_or_default();
    std::fs::write(path, spliced(&doc, markers, section))
        .with_context(|| format!("writing {}", path.display()))
}

/// The text of [`splice`].
pub fn spliced(doc: &str, (begin, end): (&str, &str), section: &str) -> String {
    let body = format!("{begin}\n{}\n{end}", section.trim_end());
    match (doc.find(begin), doc.find(end)) {
        (Some(b), Some(e)) if b < e => {
            format!("{}{body}{}", &doc[..b], &doc[e + end.len()..])
        }
        _ => format!("{}\n\n{body}\n", doc.trim_end()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn load_is_asked_for_by_name() {
        let args = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(asks_for_load(&args(&["--scenario", "load"])));
        assert!(asks_for_load(&args(&["--runs", "1", "--scenario=load"])));
        assert!(!asks_for_load(&args(&["--scenario", "storage"])));
        assert!(!asks_for_load(&args(&["load"])));
        assert!(!asks_for_load(&[]));
    }

    #[test]
    fn splices_between_markers_and_keeps_the_rest() {
        let m = ("<!-- b -->", "<!-- e -->");
        let doc = "# T\n\nintro\n\n<!-- b -->\nold\n<!-- e -->\n\n## After\n";
        assert_eq!(
            spliced(doc, m, "new\n"),
            "# T\n\nintro\n\n<!-- b -->\nnew\n<!-- e -->\n\n## After\n"
        );
        assert_eq!(
            spliced("# T\n", m, "x"),
            "# T\n\n<!-- b -->\nx\n<!-- e -->\n"
        );
    }
}
