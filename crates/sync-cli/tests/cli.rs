//! End-to-end: the real `starkeep-sync` binary, servers and nodes as separate processes over
//! loopback HTTP.

use std::{
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
};

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_starkeep-sync");
const TOKEN: &str = "test-token-0123456789abcdef";
const APPS: &str = r#"[{"appId": "notes", "tables": [{"name": "notes", "pkColumns": ["id"]}], "filesEnabled": true}]"#;

/// A `serve` process, killed when dropped.
struct Server {
    child: Child,
    url: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn serve(args: &[&str], envs: &[(&str, &str)]) -> Server {
    let mut child = Command::new(BIN)
        .arg("serve")
        .args(["--listen", "127.0.0.1:0"])
        .args(args)
        .envs(envs.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start serve");
    let mut first = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut first)
        .expect("read the first line");
    let url = first
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("first line of serve: {first:?}"))
        .to_string();
    Server { child, url }
}

fn run(home: &Path, args: &[&str]) -> Output {
    Command::new(BIN)
        .arg("--home")
        .arg(home)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run starkeep-sync")
}

fn ok(home: &Path, args: &[&str]) -> String {
    let out = run(home, args);
    assert!(
        out.status.success(),
        "{args:?} failed ({:?}): {}{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8")
}

fn json(home: &Path, args: &[&str]) -> Value {
    serde_json::from_str(&ok(home, args)).expect("JSON output")
}

struct Tmp(tempfile::TempDir);

impl Tmp {
    fn new() -> Self {
        let t = Tmp(tempfile::tempdir().expect("temp dir"));
        std::fs::write(t.path("apps.json"), APPS).unwrap();
        t
    }
    fn path(&self, p: &str) -> PathBuf {
        self.0.path().join(p)
    }
}

fn init(t: &Tmp, name: &str, url: &str) -> PathBuf {
    let home = t.path(name);
    let apps = t.path("apps.json");
    ok(
        &home,
        &[
            "init",
            "--node-id",
            name,
            "--server",
            url,
            "--token",
            TOKEN,
            "--apps",
            apps.to_str().unwrap(),
        ],
    );
    home
}

/// Two nodes converge through `url`: files, rows, a concurrent row edit and a delete.
fn two_nodes_converge(t: &Tmp, url_a: &str, url_b: &str) {
    let a = init(t, "node-a", url_a);
    let b = init(t, "node-b", url_b);
    let dir = t.path("photos");
    std::fs::create_dir_all(dir.join("sub")).unwrap();
    std::fs::write(dir.join("one.jpg"), b"first photo bytes").unwrap();
    std::fs::write(dir.join("sub/two.txt"), b"second file").unwrap();
    let added = json(&a, &["put", dir.to_str().unwrap(), "--json"]);
    assert_eq!(added.as_array().unwrap().len(), 2);
    let one_id = added[0]["id"].as_str().unwrap().to_string();
    ok(
        &a,
        &[
            "row",
            "put",
            "--app",
            "notes",
            "--table",
            "notes",
            r#"{"id": "n1", "title": "from a"}"#,
        ],
    );
    ok(&a, &["sync", "--until-idle"]);
    ok(&b, &["sync", "--until-idle"]);

    let listed = json(&b, &["ls", "--json"]);
    assert_eq!(listed.as_array().unwrap().len(), 2);
    assert!(listed
        .as_array()
        .unwrap()
        .iter()
        .all(|r| r["residency"] == "resident"));
    let out = t.path("one-copy.jpg");
    ok(&b, &["get", &one_id, "--out", out.to_str().unwrap()]);
    assert_eq!(std::fs::read(&out).unwrap(), b"first photo bytes");

    // A concurrent edit of one row (b writes last and wins), and a delete on b.
    ok(
        &a,
        &[
            "row",
            "put",
            "--app",
            "notes",
            "--table",
            "notes",
            r#"{"id": "n1", "title": "a again"}"#,
        ],
    );
    ok(
        &b,
        &[
            "row",
            "put",
            "--app",
            "notes",
            "--table",
            "notes",
            r#"{"id": "n1", "title": "b wins"}"#,
        ],
    );
    ok(&b, &["rm", &one_id]);
    for home in [&b, &a, &b] {
        ok(home, &["sync", "--until-idle"]);
    }
    let rows_a = json(
        &a,
        &["row", "ls", "--app", "notes", "--table", "notes", "--json"],
    );
    let rows_b = json(
        &b,
        &["row", "ls", "--app", "notes", "--table", "notes", "--json"],
    );
    assert_eq!(rows_a, rows_b);
    assert_eq!(rows_a[0]["row"]["title"], "b wins");
    let ls_a = json(&a, &["ls", "--json"]);
    let ls_b = json(&b, &["ls", "--json"]);
    assert_eq!(ls_a, ls_b);
    let deleted: Vec<&Value> = ls_a
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["residency"] == "deleted")
        .collect();
    assert_eq!(deleted.len(), 1);
    assert_eq!(deleted[0]["id"], one_id.as_str());
    let status = json(&a, &["status", "--json"]);
    assert_eq!(status["nodeId"], "node-a");
}

#[test]
fn demo_exits_zero_and_says_it_converged() {
    let out = Command::new(BIN).arg("demo").output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("converged:"), "{stdout}");
    assert!(stdout.contains("concurrent edits"), "{stdout}");
}

#[test]
fn two_nodes_converge_through_a_sqlite_server() {
    let t = Tmp::new();
    let data = t.path("server");
    let apps = t.path("apps.json");
    let server = serve(
        &[
            "--data",
            data.to_str().unwrap(),
            "--token",
            TOKEN,
            "--apps",
            apps.to_str().unwrap(),
        ],
        &[],
    );
    two_nodes_converge(&t, &server.url, &server.url);
}

#[test]
fn two_nodes_converge_through_two_servers_sharing_postgres_and_s3() {
    let vars = [
        "STARKEEP_TEST_POSTGRES_URL",
        "STARKEEP_TEST_S3_ENDPOINT",
        "STARKEEP_TEST_S3_BUCKET",
        "STARKEEP_TEST_S3_ACCESS_KEY",
        "STARKEEP_TEST_S3_SECRET_KEY",
    ];
    let values: Vec<Option<String>> = vars.iter().map(|v| std::env::var(v).ok()).collect();
    if values.iter().any(Option::is_none) {
        let msg = "PostgreSQL and S3 are not configured (run through `cargo xtask test`)";
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("{msg}; under CI=true this test must run");
        }
        eprintln!("SKIPPED two_nodes_converge_through_two_servers_sharing_postgres_and_s3: {msg}");
        return;
    }
    let v: Vec<String> = values.into_iter().map(Option::unwrap).collect();
    let t = Tmp::new();
    let apps = t.path("apps.json");
    let schema = format!("cli_e2e_{}", std::process::id());
    let bucket = format!("s3://{}", v[2]);
    let envs = [
        ("AWS_ACCESS_KEY_ID", v[3].as_str()),
        ("AWS_SECRET_ACCESS_KEY", v[4].as_str()),
        ("AWS_ENDPOINT_URL", v[1].as_str()),
        ("AWS_ALLOW_HTTP", "true"),
        ("AWS_REGION", "us-east-1"),
    ];
    let args = [
        "--database",
        v[0].as_str(),
        "--database-schema",
        schema.as_str(),
        "--blobs",
        bucket.as_str(),
        "--token",
        TOKEN,
        "--apps",
        apps.to_str().unwrap(),
    ];
    // Started one after the other: the first creates the schema.
    let first = serve(&args, &envs);
    let second = serve(&args, &envs);
    two_nodes_converge(&t, &first.url, &second.url);
}

#[test]
fn bad_flags_and_wrong_tokens_fail_clearly() {
    let t = Tmp::new();
    // Bad usage: exit 2 from the argument parser.
    let out = Command::new(BIN)
        .args(["sync", "--page-limit", "many"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    // No node here: exit 1, and the message says how to make one.
    let out = run(&t.path("nowhere"), &["ls"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("starkeep-sync init"));
    // A token the server does not know: exit 4, and the message says so.
    let data = t.path("server");
    let server = serve(&["--data", data.to_str().unwrap(), "--token", TOKEN], &[]);
    let home = t.path("intruder");
    ok(
        &home,
        &[
            "init",
            "--node-id",
            "intruder",
            "--server",
            &server.url,
            "--token",
            "not-the-right-token-at-all",
        ],
    );
    let out = run(&home, &["sync"]);
    assert_eq!(
        out.status.code(),
        Some(4),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("not authorized"));
    // The failure is remembered for `status`.
    let status = json(&home, &["status", "--json"]);
    assert!(
        status["lastError"]["error"]
            .as_str()
            .unwrap()
            .contains("not authorized"),
        "{status}"
    );
    // A token too short to be safe is refused at start.
    let out = Command::new(BIN)
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--data",
            data.to_str().unwrap(),
            "--token",
            "short",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("at least 16"));
}

#[test]
fn serve_without_a_token_creates_one_and_prints_it_once() {
    let t = Tmp::new();
    let data = t.path("server");
    let mut child = Command::new(BIN)
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--data",
            data.to_str().unwrap(),
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = lines.next().unwrap().unwrap();
    let second = lines.next().unwrap().unwrap();
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        first.starts_with("listening on http://127.0.0.1:"),
        "{first}"
    );
    let token = second.rsplit(' ').next().unwrap();
    assert_eq!(
        std::fs::read_to_string(data.join("access-token")).unwrap(),
        token
    );
}
