//! `cargo xtask bench`: builds `starkeep-sync` in release, runs its benchmark suite, and puts
//! the generated section into `docs/benchmarks.md` between markers, leaving the rest of the
//! page (other sections, the analysis) as it is.

use std::path::Path;

use anyhow::{Context, Result};

use crate::{cargo, workspace_root};

/// The markers around the generated section of a full run.
pub const FULL: (&str, &str) = ("<!-- bench:full:begin -->", "<!-- bench:full:end -->");
/// The markers around the generated section of a `--quick` run.
pub const QUICK: (&str, &str) = ("<!-- bench:quick:begin -->", "<!-- bench:quick:end -->");

/// Builds, runs the suite (`--quick` sizes if asked; `extra` goes to `starkeep-sync bench`),
/// and updates docs/benchmarks.md. The JSON of every figure is left in
/// `target/bench/results[-quick].json`.
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
    let mut cmd = std::process::Command::new(target.join("release").join("starkeep-sync"));
    cmd.arg("bench");
    if quick {
        cmd.arg("--quick");
    }
    cmd.arg("--out")
        .arg(&json)
        .arg("--markdown")
        .arg(&markdown)
        .args(extra)
        .current_dir(&root);
    crate::run(&mut cmd)?;
    let section = std::fs::read_to_string(&markdown)
        .with_context(|| format!("reading {}", markdown.display()))?;
    let doc = root.join("docs").join("benchmarks.md");
    splice(&doc, if quick { QUICK } else { FULL }, &section)?;
    println!("xtask: wrote the figures into {}", doc.display());
    Ok(())
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
