//! The purity check of the core crates (STYLE "Pure crates stay pure").
//!
//! `sync-hlc`, `sync-protocol` and `sync-core` must stay sans-IO: no runtime or network crate
//! among their normal dependencies, and no clock, file system, socket, environment or
//! randomness read from their source. Time and seeds are passed in by the caller.

use std::{fs, path::Path};

use anyhow::{Context, Result};

/// The crates that must stay pure.
pub const PURE_CRATES: &[&str] = &["sync-hlc", "sync-protocol", "sync-core"];

/// Dependencies a pure crate must not have (any `sqlx*` and `tokio-*` crate counts too).
pub const FORBIDDEN_DEPENDENCIES: &[&str] = &[
    "tokio",
    "sqlx",
    "hyper",
    "http",
    "h2",
    "reqwest",
    "object_store",
    "mio",
    "socket2",
    "async-std",
    "smol",
];

/// What the source of a pure crate must not mention: clocks, files, sockets, the process
/// environment and ambient randomness.
pub const FORBIDDEN_SOURCE: &[&str] = &[
    "SystemTime",
    "Instant::now",
    "std::time::Instant",
    "chrono",
    "std::fs",
    "std::net",
    "std::env",
    "rand::",
];

/// Runs the whole check over the workspace at `root` and returns what is wrong, one line each
/// (empty when the pure crates are pure). Crates not created yet are skipped.
pub fn check(root: &Path) -> Result<Vec<String>> {
    let mut problems = Vec::new();
    for name in PURE_CRATES {
        let dir = root.join("crates").join(name);
        if !dir.join("Cargo.toml").exists() {
            continue;
        }
        let tree = crate::output(crate::cargo().current_dir(root).args([
            "tree",
            "--quiet",
            "--edges",
            "normal",
            "--target",
            "all",
            "--prefix",
            "none",
            "--package",
            name,
        ]))?;
        problems.extend(
            forbidden_dependencies(&tree)
                .into_iter()
                .map(|dep| format!("{name} depends on `{dep}` (an I/O or runtime crate)")),
        );
        problems.extend(
            forbidden_source(&dir.join("src"))?
                .into_iter()
                .map(|hit| format!("{name}: {hit}")),
        );
    }
    Ok(problems)
}

/// The forbidden crates named in `cargo tree --prefix none` output, each once, in order.
pub fn forbidden_dependencies(tree: &str) -> Vec<String> {
    let mut found: Vec<String> = tree
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .filter(|name| is_forbidden_dependency(name))
        .map(str::to_owned)
        .collect();
    found.sort();
    found.dedup();
    found
}

fn is_forbidden_dependency(name: &str) -> bool {
    FORBIDDEN_DEPENDENCIES.contains(&name)
        || name.starts_with("sqlx-")
        || name.starts_with("tokio-")
}

/// Every mention of a [`FORBIDDEN_SOURCE`] pattern in the `.rs` files under `dir`, as
/// `path:line: pattern`. Comments are skipped (a doc comment may say what the crate avoids).
pub fn forbidden_source(dir: &Path) -> Result<Vec<String>> {
    let mut hits = Vec::new();
    let mut files = Vec::new();
    collect_rust_files(dir, &mut files)?;
    files.sort();
    for file in files {
        let text =
            fs::read_to_string(&file).with_context(|| format!("cannot read {}", file.display()))?;
        for (number, line) in text.lines().enumerate() {
            let code = line.split("//").next().unwrap_or_default();
            for pattern in FORBIDDEN_SOURCE {
                if mentions(code, pattern) {
                    hits.push(format!("{}:{}: `{pattern}`", file.display(), number + 1));
                }
            }
        }
    }
    Ok(hits)
}

fn collect_rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) -> Result<()> {
    if !dir.exists() {
        return Ok(());
    }
    for entry in fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))? {
        let path = entry?.path();
        if path.is_dir() {
            collect_rust_files(&path, out)?;
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
    Ok(())
}

/// Whether `code` contains `pattern` as whole tokens: `chrono` matches `chrono::Utc` but not
/// `synchronous`, and `std::fs` does not match `std::fsx`.
fn mentions(code: &str, pattern: &str) -> bool {
    let ident = |c: char| c.is_alphanumeric() || c == '_';
    let starts_with_ident = pattern.starts_with(ident);
    let ends_with_ident = pattern.ends_with(ident);
    code.match_indices(pattern).any(|(at, _)| {
        let before_ok = !starts_with_ident || !code[..at].ends_with(ident);
        let after_ok = !ends_with_ident || !code[at + pattern.len()..].starts_with(ident);
        before_ok && after_ok
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs the real check over this workspace, so `cargo xtask test` enforces purity.
    #[test]
    fn pure_crates_stay_pure() {
        let problems = check(&crate::workspace_root()).unwrap();
        assert!(
            problems.is_empty(),
            "pure crates gained I/O:\n{}",
            problems.join("\n")
        );
    }

    #[test]
    fn finds_forbidden_dependencies_in_tree_output() {
        let tree = "sync-core v0.1.0 (/w/crates/sync-core)\nserde v1.0.1\ntokio v1.40.0\n\
                    sqlx-core v0.8.0\nhttparse v1.9.0\nhttp v1.1.0\ntokio v1.40.0 (*)\n";
        assert_eq!(
            forbidden_dependencies(tree),
            ["http", "sqlx-core", "tokio"].map(String::from)
        );
        assert!(forbidden_dependencies("serde v1\nhttp-body-util-not v1\n").is_empty());
    }

    #[test]
    fn matches_whole_tokens_outside_comments() {
        assert!(mentions("let t = SystemTime::now();", "SystemTime"));
        assert!(mentions("use chrono::Utc;", "chrono"));
        assert!(!mentions("a synchronous round", "chrono"));
        assert!(mentions("std::fs::read(p)", "std::fs"));
        assert!(!mentions("std::fsx", "std::fs"));
        assert!(mentions("rand::random()", "rand::"));
        assert!(!mentions("operand::x", "rand::"));

        let dir = std::env::temp_dir().join(format!("xtask-tidy-{}", std::process::id()));
        fs::create_dir_all(dir.join("nested")).unwrap();
        fs::write(
            dir.join("nested/a.rs"),
            "/// Never calls SystemTime.\nfn f() {}\nlet n = std::time::Instant::now(); // no\n",
        )
        .unwrap();
        let hits = forbidden_source(&dir).unwrap();
        fs::remove_dir_all(&dir).unwrap();
        assert_eq!(hits.len(), 2, "{hits:?}");
        assert!(hits[0].ends_with("a.rs:3: `Instant::now`"), "{hits:?}");
        assert!(
            hits[1].ends_with("a.rs:3: `std::time::Instant`"),
            "{hits:?}"
        );
    }
}
