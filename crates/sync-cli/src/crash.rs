//! Crash points: named places where a `starkeep-sync` process dies by SIGKILL, for the crash
//! tests (`crates/sync-cli/tests/crash.rs`, decision 0031).
//!
//! Off unless [`ENV_AT`] is set: `STARKEEP_CRASH_AT=<point>[:<n>]` makes the process kill
//! itself with SIGKILL the `n`-th time (default: the first) it reaches `<point>`, after
//! writing [`MARKER`] and the point's name on stderr. With [`ENV_PAUSE`] set it stops itself
//! with SIGSTOP instead, frozen exactly at the point, so the test can copy its files (a
//! power-loss image) before it sends the SIGKILL.
//!
//! The points live in wrappers around the ports the CLI builds (record, app-row and state
//! stores, object stores, the exchange transport and the responder), so `sync-core` and the
//! adapters stay untouched; the wrappers are only put in place when a point is armed.

mod object_store;
mod ports;

use std::{
    io::Write,
    process::Command,
    sync::{
        atomic::{AtomicU64, Ordering},
        OnceLock,
    },
};

use anyhow::{bail, Result};

pub use self::object_store::{node_local, node_remote, server_blobs};
pub use self::ports::{node_state, node_stores, node_transport, server_responder, server_stores};

/// The variable that arms a crash point: `<point>[:<n>]`.
pub const ENV_AT: &str = "STARKEEP_CRASH_AT";
/// When set (to anything but `0` or empty), the process stops itself at the point (SIGSTOP)
/// and waits for a SIGKILL from outside instead of killing itself.
pub const ENV_PAUSE: &str = "STARKEEP_CRASH_PAUSE";
/// What the process writes on stderr, followed by the point's name, when it reaches the
/// armed point.
pub const MARKER: &str = "starkeep-crash-point reached:";

/// Every crash point, with where it is. A node's points fire in the requester's commands
/// (`sync`, and local writes such as `put` for the store and local-blob points); a server's
/// in `serve`.
pub const POINTS: &[(&str, &str)] = &[
    (
        "node.state.load",
        "a round starts, before its watermarks are loaded (hit n: the start of round n)",
    ),
    (
        "node.store.coverage",
        "before a coverage read of the local store (the outbound cut)",
    ),
    (
        "node.store.scan",
        "before a scan of the local store (the outbound selection)",
    ),
    (
        "node.remote.head",
        "push: before asking the peer whether it holds a blob",
    ),
    (
        "node.remote.put.part",
        "mid blob upload: a part of a multipart upload was handed to the connection, the rest not",
    ),
    (
        "node.remote.put.complete",
        "blob upload: every part sent, before the upload is completed",
    ),
    (
        "node.remote.put.done",
        "the peer stored a blob, before its metadata ships",
    ),
    ("node.exchange.send", "before the exchange request is sent"),
    (
        "node.exchange.response",
        "the response arrived (the peer applied our page), before any of it is applied",
    ),
    (
        "node.store.apply.before",
        "before a batch of inbound items (or a local write) is applied",
    ),
    (
        "node.store.apply.after",
        "a batch was applied and committed, before its blobs are pulled and watermarks persisted",
    ),
    (
        "node.remote.get.chunk",
        "mid blob download: a chunk of the peer's blob arrived, the rest not",
    ),
    (
        "node.local.put.part",
        "mid blob download (or import): a part was written to the local staging file",
    ),
    (
        "node.local.put.done",
        "a blob landed in local storage, before the watermarks covering it are persisted",
    ),
    (
        "node.state.commit.before",
        "before a round's watermarks and clock are persisted",
    ),
    (
        "node.state.commit.after",
        "a round's state is persisted, before the next round starts",
    ),
    (
        "node.state.save-clock",
        "a local write is stored, before the clock state is saved",
    ),
    (
        "server.start.migrated",
        "start-up: the database is open and migrated, before anything else is written",
    ),
    (
        "server.exchange.received",
        "a request was decoded, before the responder handles it",
    ),
    (
        "server.store.coverage",
        "before a coverage read (the gap check, the coverage report)",
    ),
    (
        "server.store.scan",
        "before a scan (the response's selection)",
    ),
    (
        "server.blob.head",
        "before checking that a blob is in storage (a pushed item's blob, or HEAD /files)",
    ),
    (
        "server.store.apply.before",
        "before a request's items are applied",
    ),
    (
        "server.store.apply.after",
        "a request's items are committed, before the response is built",
    ),
    (
        "server.exchange.responded",
        "the response is built, before it is sent",
    ),
    (
        "server.blob.put.part",
        "mid blob upload: a part was written to storage, the rest not yet received",
    ),
    (
        "server.blob.put.complete",
        "an upload was received completely, before it is completed in storage",
    ),
    (
        "server.blob.put.done",
        "an upload is stored, before the client hears so",
    ),
    (
        "server.blob.get.chunk",
        "mid blob download: a chunk was read for a GET, the rest not",
    ),
];

struct Armed {
    point: &'static str,
    nth: u64,
    pause: bool,
    hits: AtomicU64,
}

static ARMED: OnceLock<Option<Armed>> = OnceLock::new();

fn parse(at: &str, pause: bool) -> Result<Armed> {
    let (name, nth) = match at.rsplit_once(':') {
        Some((name, n)) => match n.parse::<u64>() {
            Ok(n) if n >= 1 => (name, n),
            _ => bail!("{ENV_AT}={at:?}: the hit count after ':' must be a number from 1 up"),
        },
        None => (at, 1),
    };
    let Some(&(point, _)) = POINTS.iter().find(|(p, _)| *p == name) else {
        let known: Vec<&str> = POINTS.iter().map(|(p, _)| *p).collect();
        bail!(
            "{ENV_AT}: unknown crash point {name:?}; known points: {}",
            known.join(", ")
        );
    };
    Ok(Armed {
        point,
        nth,
        pause,
        hits: AtomicU64::new(0),
    })
}

/// Reads [`ENV_AT`] and [`ENV_PAUSE`] once, at start; an unknown point is an error.
pub fn init() -> Result<()> {
    let armed = match std::env::var(ENV_AT) {
        Ok(at) if !at.is_empty() => {
            let pause = std::env::var(ENV_PAUSE).is_ok_and(|v| !v.is_empty() && v != "0");
            Some(parse(&at, pause)?)
        }
        _ => None,
    };
    let _ = ARMED.set(armed);
    Ok(())
}

fn armed_point() -> Option<&'static Armed> {
    ARMED.get().and_then(Option::as_ref)
}

/// Whether a crash point is armed in this process (the wrappers are only built then).
pub fn armed() -> bool {
    armed_point().is_some()
}

/// Marks `point` as reached: dies there if it is the armed point and this is its `n`-th hit.
pub fn point(point: &'static str) {
    let Some(armed) = armed_point() else {
        return;
    };
    if armed.point == point && armed.hits.fetch_add(1, Ordering::SeqCst) + 1 == armed.nth {
        fire(armed);
    }
}

/// Announces the point, then SIGKILLs (or SIGSTOPs) this process. Never returns: a process
/// resumed from a pause is killed again, and if `kill` cannot run it aborts.
fn fire(armed: &Armed) -> ! {
    let pid = std::process::id().to_string();
    {
        let mut err = std::io::stderr().lock();
        let _ = writeln!(err, "{MARKER} {} (hit {})", armed.point, armed.nth);
        let _ = err.flush();
    }
    let signal = if armed.pause { "-STOP" } else { "-KILL" };
    let _ = Command::new("kill").args([signal, &pid]).status();
    // Resumed after a pause, or `kill` is missing: never go on past the point.
    let _ = Command::new("kill").args(["-KILL", &pid]).status();
    std::process::abort()
}

/// [`point`] for an optional point (wrappers whose side has no point at some place).
fn hit(point_name: Option<&'static str>) {
    if let Some(p) = point_name {
        point(p);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn points_parse_with_an_optional_hit_count() {
        let a = parse("node.store.apply.after", false).unwrap();
        assert_eq!(
            (a.point, a.nth, a.pause),
            ("node.store.apply.after", 1, false)
        );
        let a = parse("server.blob.put.part:3", true).unwrap();
        assert_eq!((a.point, a.nth, a.pause), ("server.blob.put.part", 3, true));
        let e = parse("node.nowhere", false).err().unwrap().to_string();
        assert!(
            e.contains("unknown crash point") && e.contains("node.state.load"),
            "{e}"
        );
        assert!(parse("node.state.load:0", false).is_err());
        assert!(parse("node.state.load:x", false).is_err());
    }

    #[test]
    fn point_names_are_unique() {
        let mut names: Vec<&str> = POINTS.iter().map(|(p, _)| *p).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), POINTS.len());
        assert!(POINTS.len() >= 20);
    }
}
