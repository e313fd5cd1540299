//! Crashes (issue 8): real `starkeep-sync` processes killed with SIGKILL at named crash
//! points (`src/crash.rs`, decision 0031), restarted, and synced until idle; then every
//! record and app row must be on every side at the right version, every blob intact, and
//! no watermark ahead of the data it covers. Also servers killed mid-request, on SQLite and
//! on PostgreSQL + S3, and power cuts of SQLite databases (a copy of the files taken at a
//! frozen instant, with the last transaction torn).
//!
//! Every case builds the same world (`World::standard`): a server, node A and node B with a
//! shared base, then concurrent writes on both (files small, medium and, where a transfer
//! must have a middle, larger than two 8 MiB parts; a deleted file; a note edited on both
//! sides; deleted notes; app files), B's already at the server. A then syncs with small
//! pages (several rounds per channel, uploads and downloads both ways) and something dies.

#[path = "crash/harness.rs"]
mod harness;

use harness::{
    copy_dir, node_fingerprint, replace_dir, server_fingerprint, tear_last_commit, Backend, Crash,
    ScaleOut, World,
};

const SYNC: [&str; 4] = ["sync", "--until-idle", "--page-limit", "2"];

/// A and B in `w`: A on the first server, B on the last (the same one on SQLite).
fn nodes(w: &World) -> (harness::Node, harness::Node) {
    (w.node("node-a", 0), w.node("node-b", w.servers.len() - 1))
}

/// A's `sync` dies at `at`; A restarts and everyone syncs until idle.
fn node_crash(name: &str, at: &'static str, big: bool) {
    let mut w = World::new(name, Backend::Sqlite, None);
    let (a, b) = nodes(&w);
    w.standard(&a, &b, big, |w| w.a_writes(&a, big));
    let marker = w.crash(&a, &SYNC, Crash::kill(at));
    eprintln!("{name}: {marker}");
    w.check_at_rest(&a);
    w.converge_and_check(&[&a, &b]);
}

/// One of A's local writes dies at `at` (and is redone when it did not finish, as a user
/// would); then A syncs and everyone converges.
enum LocalWrite {
    /// `put` of the large file.
    PutBig,
    /// `put` of a small file.
    PutSmall,
    /// `row put` of a note.
    Note,
}

fn local_write_crash(name: &str, write: LocalWrite, at: &'static str) {
    let mut w = World::new(name, Backend::Sqlite, None);
    let (a, b) = nodes(&w);
    w.standard(&a, &b, true, |w| {
        let crash = Crash::kill(at);
        match write {
            LocalWrite::PutBig => {
                w.put(&a, "a3.txt", 1500);
                w.put_crashing(&a, "a-big.bin", harness::BIG, crash);
                w.note(&a, "n4", "fourth", None);
            }
            LocalWrite::PutSmall => {
                w.put_crashing(&a, "a3.txt", 1500, crash);
                w.put(&a, "a-big.bin", harness::BIG);
                w.note(&a, "n4", "fourth", None);
            }
            LocalWrite::Note => {
                w.put(&a, "a3.txt", 1500);
                w.put(&a, "a-big.bin", harness::BIG);
                w.note(&a, "n4", "fourth", Some(crash));
            }
        }
    });
    w.check_at_rest(&a);
    w.sync(&a);
    w.converge_and_check(&[&a, &b]);
}

/// The server A syncs with dies at `at` while A syncs; it restarts at the same address,
/// A's sync ends however it ends, and everyone syncs until idle.
fn server_crash(name: &str, backend: Backend, at: &'static str, big: bool) {
    let mut w = World::new(name, backend, None);
    let (a, b) = nodes(&w);
    w.standard(&a, &b, big, |w| w.a_writes(&a, big));
    w.servers[0].rearm(Crash::kill(at));
    let mut sync = w.spawn(&a, &SYNC, None);
    let marker = w.servers[0].process().crashed_by_itself();
    eprintln!("{name}: {marker}");
    w.servers[0].restart();
    let status = sync.finish();
    eprintln!("{name}: A's sync during the crash ended with {status}");
    w.check_at_rest(&a);
    w.converge_and_check(&[&a, &b]);
}

/// A power cut of node A while its `sync` is frozen at `at`: A's home is copied at that
/// instant (the files as the kernel holds them), the process killed, and the copy becomes
/// A's home; with `tear`, the last transaction of its database is cut halfway through its
/// WAL frames, as a power loss in the middle of that commit leaves it.
fn node_power_cut(name: &str, at: &'static str, tear: bool, big: bool) {
    let mut w = World::new(name, Backend::Sqlite, None);
    let (a, b) = nodes(&w);
    w.standard(&a, &b, big, |w| w.a_writes(&a, big));
    let mut sync = w.spawn(&a, &SYNC, Some(Crash::pause(at)));
    let marker = sync.paused();
    eprintln!("{name}: {marker}");
    let image = w.path("node-a.image");
    copy_dir(&a.home, &image);
    sync.kill();
    replace_dir(&a.home, &image);
    if tear {
        let before = node_fingerprint(&w, &a.home);
        let cut = tear_last_commit(&a.home.join("node.db"));
        eprintln!("{name}: WAL cut at byte {cut}");
        // The cut lost something the node had committed.
        assert_ne!(
            before,
            node_fingerprint(&w, &a.home),
            "{name}: the cut lost nothing"
        );
    }
    w.check_at_rest(&a);
    w.converge_and_check(&[&a, &b]);
}

/// The same for the SQLite server, frozen at `at` while A syncs.
fn server_power_cut(name: &str, at: &'static str, tear: bool) {
    let mut w = World::new(name, Backend::Sqlite, None);
    let (a, b) = nodes(&w);
    w.standard(&a, &b, false, |w| w.a_writes(&a, false));
    w.servers[0].rearm(Crash::pause(at));
    let mut sync = w.spawn(&a, &SYNC, None);
    let marker = w.servers[0].process().paused();
    eprintln!("{name}: {marker}");
    let data = w.servers[0].data.clone().unwrap();
    let image = w.path("server.image");
    copy_dir(&data, &image);
    w.servers[0].process().kill();
    replace_dir(&data, &image);
    if tear {
        let db = data.join("server.db");
        let before = server_fingerprint(&w, &db);
        let cut = tear_last_commit(&db);
        eprintln!("{name}: WAL cut at byte {cut}");
        // The cut lost coverage the server had committed.
        assert_ne!(
            before,
            server_fingerprint(&w, &db),
            "{name}: the cut lost nothing"
        );
    }
    w.servers[0].restart();
    let status = sync.finish();
    eprintln!("{name}: A's sync during the cut ended with {status}");
    w.check_at_rest(&a);
    w.converge_and_check(&[&a, &b]);
}

macro_rules! node_crashes {
    ($($name:ident: $at:literal, big: $big:literal;)*) => {$(
        #[test]
        fn $name() {
            node_crash(stringify!($name), $at, $big);
        }
    )*};
}

node_crashes! {
    node_at_round_start_2: "node.state.load:2", big: false;
    node_at_coverage: "node.store.coverage", big: false;
    node_at_scan: "node.store.scan", big: false;
    node_before_push_head: "node.remote.head", big: true;
    node_mid_upload: "node.remote.put.part", big: true;
    node_upload_sent: "node.remote.put.complete", big: true;
    node_after_push_before_metadata: "node.remote.put.done", big: true;
    node_before_send: "node.exchange.send", big: false;
    node_after_response: "node.exchange.response", big: false;
    node_before_apply: "node.store.apply.before", big: false;
    node_after_apply_page_1: "node.store.apply.after", big: false;
    node_after_apply_page_3: "node.store.apply.after:3", big: false;
    node_mid_download_chunk: "node.remote.get.chunk:2", big: true;
    node_mid_download_part: "node.local.put.part", big: true;
    node_blob_landed_before_watermark: "node.local.put.done", big: true;
    node_before_state_commit: "node.state.commit.before", big: false;
    node_after_state_commit: "node.state.commit.after", big: false;
    node_between_rounds_2: "node.state.commit.after:2", big: false;
}

/// A crash while recovering from a crash: A dies mid-download, and again at the same place
/// in the sync after its restart.
#[test]
fn node_crashes_twice_mid_download() {
    let name = "node_crashes_twice_mid_download";
    let mut w = World::new(name, Backend::Sqlite, None);
    let (a, b) = nodes(&w);
    w.standard(&a, &b, true, |w| w.a_writes(&a, true));
    for _ in 0..2 {
        let marker = w.crash(&a, &SYNC, Crash::kill("node.local.put.part"));
        eprintln!("{name}: {marker}");
        w.check_at_rest(&a);
    }
    w.converge_and_check(&[&a, &b]);
}

#[test]
fn put_of_a_large_file_cut_mid_import() {
    local_write_crash(
        "put_of_a_large_file_cut_mid_import",
        LocalWrite::PutBig,
        "node.local.put.part",
    );
}

#[test]
fn put_after_the_blob_before_the_record() {
    local_write_crash(
        "put_after_the_blob_before_the_record",
        LocalWrite::PutSmall,
        "node.store.apply.before",
    );
}

#[test]
fn row_written_before_the_clock_is_saved() {
    local_write_crash(
        "row_written_before_the_clock_is_saved",
        LocalWrite::Note,
        "node.state.save-clock",
    );
}

macro_rules! server_crashes {
    ($($name:ident: $at:literal, big: $big:literal;)*) => {$(
        #[test]
        fn $name() {
            server_crash(stringify!($name), Backend::Sqlite, $at, $big);
        }
    )*};
}

server_crashes! {
    server_on_request: "server.exchange.received", big: false;
    server_at_coverage: "server.store.coverage", big: false;
    server_at_blob_check: "server.blob.head", big: false;
    server_before_apply: "server.store.apply.before", big: false;
    server_after_apply_before_response: "server.store.apply.after", big: false;
    server_at_scan: "server.store.scan", big: false;
    server_response_built: "server.exchange.responded", big: false;
    server_mid_upload: "server.blob.put.part", big: true;
    server_upload_received: "server.blob.put.complete", big: true;
    server_upload_stored: "server.blob.put.done", big: true;
    server_mid_download: "server.blob.get.chunk:3", big: true;
}

macro_rules! postgres_server_crashes {
    ($($name:ident: $at:literal, big: $big:literal;)*) => {$(
        #[test]
        fn $name() {
            let Some(so) = ScaleOut::from_env(stringify!($name)) else {
                return;
            };
            server_crash(stringify!($name), Backend::Postgres(so), $at, $big);
        }
    )*};
}

postgres_server_crashes! {
    postgres_server_on_request: "server.exchange.received", big: false;
    postgres_server_before_apply: "server.store.apply.before", big: false;
    postgres_server_after_apply_before_response: "server.store.apply.after", big: false;
    postgres_server_response_built: "server.exchange.responded", big: false;
    postgres_server_mid_upload: "server.blob.put.part", big: true;
    postgres_server_upload_stored: "server.blob.put.done", big: true;
    postgres_server_mid_download: "server.blob.get.chunk:3", big: true;
}

#[test]
fn power_cut_node_after_an_apply() {
    node_power_cut(
        "power_cut_node_after_an_apply",
        "node.store.apply.after",
        false,
        false,
    );
}

#[test]
fn power_cut_node_mid_download() {
    node_power_cut(
        "power_cut_node_mid_download",
        "node.local.put.part",
        false,
        true,
    );
}

#[test]
fn power_cut_node_tears_an_apply_commit() {
    node_power_cut(
        "power_cut_node_tears_an_apply_commit",
        "node.store.apply.after",
        true,
        false,
    );
}

#[test]
fn power_cut_node_tears_the_state_commit() {
    node_power_cut(
        "power_cut_node_tears_the_state_commit",
        "node.state.commit.after",
        true,
        false,
    );
}

#[test]
fn power_cut_server_tears_an_apply_commit() {
    server_power_cut(
        "power_cut_server_tears_an_apply_commit",
        "server.store.apply.after",
        true,
    );
}

/// The server acknowledged a page, then lost its commit (`synchronous = NORMAL` lets a power
/// loss take the last commits): A believes the server covers what it no longer holds.
#[test]
fn power_cut_server_loses_an_acknowledged_commit() {
    server_power_cut(
        "power_cut_server_loses_an_acknowledged_commit",
        "server.exchange.received:2",
        true,
    );
}

/// A server on PostgreSQL killed with its apply transaction open and half done: another
/// session holds an uncommitted insert of a note A ships (`n4`), so the server's batch
/// inserts `n35` (the batch is written in key order) and then waits on `n4`'s key inside its
/// transaction. The server is killed while it waits; PostgreSQL must roll its half back.
/// The schema migrations applied to the SQLite database at `db`.
fn migrations_applied(db: &std::path::Path) -> i64 {
    let url = format!("sqlite://{}?mode=ro", db.display());
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(async {
            use sqlx::Connection;
            let mut c = sqlx::SqliteConnection::connect(&url).await.unwrap();
            let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM _sqlx_migrations")
                .fetch_one(&mut c)
                .await
                .unwrap();
            c.close().await.unwrap();
            n
        })
}

/// A fresh server whose first start is killed once its storage is migrated, before it
/// listens: it starts again on what that left, and the world syncs and converges through it.
fn start_up_crash(name: &str, backend: Backend) {
    let (mut w, said) =
        World::after_start_up_crash(name, backend, Crash::kill("server.start.migrated"));
    eprintln!("{name}: {said}");
    let (a, b) = nodes(&w);
    w.standard(&a, &b, false, |w| w.a_writes(&a, false));
    w.sync(&a);
    w.converge_and_check(&[&a, &b]);
}

#[test]
fn server_killed_at_start_up_restarts_clean() {
    start_up_crash("server_killed_at_start_up", Backend::Sqlite);
}

/// The same on PostgreSQL + S3 (a pair of servers sharing the schema the first start
/// migrated).
#[test]
fn postgres_server_killed_at_start_up_restarts_clean() {
    let name = "postgres_server_killed_at_start_up";
    if let Some(so) = ScaleOut::from_env(name) {
        start_up_crash(name, Backend::Postgres(so));
    }
}

/// A power cut of a fresh server during start-up that tears the commit of its last schema
/// migration (each migration commits on its own, so this is the state a crash between
/// migrations leaves): the migrations are half done, and the restarted server finishes them
/// and serves the world to convergence.
#[test]
fn power_cut_server_between_its_start_up_migrations() {
    let name = "power_cut_server_between_migrations";
    let mut w = World::new(name, Backend::Sqlite, None);
    let mut serve = w.servers[0].restart_fresh_crashing(Crash::pause("server.start.migrated"));
    eprintln!("{name}: {}", serve.paused());
    let data = w.servers[0].data.clone().unwrap();
    let image = w.path("server.image");
    copy_dir(&data, &image);
    serve.kill();
    replace_dir(&data, &image);
    let db = data.join("server.db");
    let all = std::fs::read_dir(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../sync-sqlite/migrations"
    ))
    .unwrap()
    .count() as i64;
    // sqlx commits each migration with its bookkeeping, then records its execution time
    // in a commit of its own: cut commits off the end until a migration is gone.
    let mut left = all;
    for _ in 0..4 {
        let cut = tear_last_commit(&db);
        left = migrations_applied(&db);
        eprintln!("{name}: WAL cut at byte {cut}: {left} of {all} migrations left");
        if left < all {
            break;
        }
    }
    assert!(
        (1..all).contains(&left),
        "{name}: half migrated: {left} of {all}"
    );
    w.servers[0].restart();
    assert_eq!(migrations_applied(&db), all, "{name}: migrated again");
    let (a, b) = nodes(&w);
    w.standard(&a, &b, false, |w| w.a_writes(&a, false));
    w.sync(&a);
    w.converge_and_check(&[&a, &b]);
}

#[test]
fn postgres_server_killed_mid_transaction() {
    let name = "postgres_server_killed_mid_transaction";
    let Some(so) = ScaleOut::from_env(name) else {
        return;
    };
    let mut w = World::new(name, Backend::Postgres(so.clone()), None);
    let (a, b) = nodes(&w);
    // A's first app page: two new notes, `n35` written before `n4`.
    w.standard(&a, &b, false, |w| {
        w.put(&a, "a3.txt", 1500);
        w.note(&a, "n35", "between", None);
        w.note(&a, "n4", "fourth", None);
    });
    let schema = harness::schema_of(name);
    let mut blocker = so.psql();
    let xid = blocker.run(&format!(
        "BEGIN;\n\
         INSERT INTO \"{schema}\".app_rows \
         (app_id, table_name, pk, node_id, hlc, tombstone, op, row_json, where_json) \
         VALUES ('notes', 'notes', '[\"n4\"]', 'blocker', '000000000000:0000:blocker', \
         false, 'insert', '{{}}', NULL);\n\
         SELECT pg_current_xact_id()::text;"
    ));
    let xid = xid.last().expect("the blocking transaction's id").clone();
    let mut sync = w.spawn(&a, &SYNC, None);
    // Wait until a server's transaction waits for ours: it is inside its apply.
    let waiting = format!(
        "SELECT count(*) FROM pg_locks WHERE locktype = 'transactionid' \
         AND transactionid::text = '{xid}' AND NOT granted"
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while so.query(&waiting) != "1" {
        assert!(
            std::time::Instant::now() < deadline,
            "{name}: no server transaction ever waited on the blocker"
        );
    }
    // Only the first server serves A: it is the one waiting.
    w.servers[0].process().kill();
    blocker.run("ROLLBACK;");
    blocker.close();
    // Nothing of the killed server's transaction is visible (its client is gone: it never
    // commits).
    let visible = so.query(&format!(
        "SELECT count(*) FROM \"{schema}\".app_rows WHERE pk IN ('[\"n35\"]', '[\"n4\"]')"
    ));
    assert_eq!(
        visible, "0",
        "{name}: half a transaction survived the crash"
    );
    w.servers[0].restart();
    let status = sync.finish();
    eprintln!("{name}: A's sync during the crash ended with {status}");
    w.check_at_rest(&a);
    w.converge_and_check(&[&a, &b]);
}

/// An unknown crash point is refused at start, naming the known ones.
#[test]
fn an_unknown_crash_point_is_refused() {
    let out = std::process::Command::new(harness::BIN)
        .args(["--home", "/nonexistent", "status"])
        .env("STARKEEP_CRASH_AT", "node.nowhere")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("unknown crash point") && stderr.contains("node.remote.put.part"),
        "{stderr}"
    );
}
