//! The crash suite's harness: real `starkeep-sync` processes (servers and nodes) over
//! loopback HTTP, crash points armed through the environment, SIGKILL, restarts, and the
//! convergence checks.

use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader},
    os::unix::process::ExitStatusExt,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Output, Stdio},
    sync::{mpsc, Arc, Mutex},
    time::{Duration, Instant},
};

use serde_json::Value;
use sha2::{Digest, Sha256};
use sync_engine::{hlc::Hlc, protocol::AppRow};

pub const BIN: &str = env!("CARGO_BIN_EXE_starkeep-sync");
const TOKEN: &str = "crash-test-token-0123456789abcdef";
/// What a process writes when it reaches its armed crash point (`src/crash.rs`).
const MARKER: &str = "starkeep-crash-point reached:";
const APP: &str = "notes";
const FILES_TABLE: &str = "_starkeep_sync_records";
const APPS: &str = r#"[{"appId": "notes", "tables": [{"name": "notes", "pkColumns": ["id"]}], "filesEnabled": true}]"#;
/// Larger than two 8 MiB parts (sync-blobs' `PART_SIZE`, sync-http's `blob_part_size`), so an
/// upload or download of it has a middle: three parts, and many body chunks.
pub const BIG: usize = (17 << 20) + 4321;
/// Above the 64 KiB inline limit: these go through `/files` too, in one put.
const MEDIUM: usize = 200 << 10;
/// How long anything may take before the test gives up on it.
const DEADLINE: Duration = Duration::from_secs(120);

/// A crash point to arm in a process: `at` is `<point>[:<n>]`.
#[derive(Debug, Clone, Copy)]
pub struct Crash {
    pub at: &'static str,
    /// Stop at the point (SIGSTOP) so the test can copy files before it sends the SIGKILL.
    pub pause: bool,
}

impl Crash {
    pub const fn kill(at: &'static str) -> Self {
        Self { at, pause: false }
    }
    pub const fn pause(at: &'static str) -> Self {
        Self { at, pause: true }
    }
    fn envs(&self) -> Vec<(String, String)> {
        let mut v = vec![("STARKEEP_CRASH_AT".to_string(), self.at.to_string())];
        if self.pause {
            v.push(("STARKEEP_CRASH_PAUSE".into(), "1".into()));
        }
        v
    }
}

enum Event {
    Marker(String),
    Eof,
}

/// A child whose stderr is read on a thread: kept for failure messages, watched for the
/// crash marker.
pub struct Watched {
    pub child: Child,
    events: mpsc::Receiver<Event>,
    stderr: Arc<Mutex<String>>,
    what: String,
}

impl Watched {
    fn spawn(mut command: Command, what: String) -> Watched {
        let mut child = command
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {what}: {e}"));
        let stderr = Arc::new(Mutex::new(String::new()));
        let (tx, events) = mpsc::channel();
        let pipe = child.stderr.take().expect("stderr is piped");
        let log = stderr.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines() {
                let Ok(line) = line else { break };
                if line.contains(MARKER) {
                    let _ = tx.send(Event::Marker(line.clone()));
                }
                let mut log = log.lock().unwrap();
                log.push_str(&line);
                log.push('\n');
            }
            let _ = tx.send(Event::Eof);
        });
        Watched {
            child,
            events,
            stderr,
            what,
        }
    }

    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Waits until the process reports reaching its crash point; `None` if it exited first.
    fn marker(&mut self, deadline: Instant) -> Option<String> {
        let left = deadline.saturating_duration_since(Instant::now());
        match self.events.recv_timeout(left) {
            Ok(Event::Marker(line)) => Some(line),
            Ok(Event::Eof) | Err(mpsc::RecvTimeoutError::Disconnected) => None,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                let _ = self.child.kill();
                panic!(
                    "{} neither reached its crash point nor exited within {DEADLINE:?}:\n{}",
                    self.what,
                    self.stderr()
                );
            }
        }
    }

    /// Waits for the process to end (its stderr closes first), within the deadline.
    fn exit(&mut self, deadline: Instant) -> ExitStatus {
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.events.recv_timeout(left) {
                Ok(Event::Marker(_)) => continue,
                Ok(Event::Eof) | Err(mpsc::RecvTimeoutError::Disconnected) => break,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    let _ = self.child.kill();
                    panic!(
                        "{} did not exit within {DEADLINE:?}:\n{}",
                        self.what,
                        self.stderr()
                    );
                }
            }
        }
        self.child.wait().expect("wait for the child")
    }

    /// Waits for the armed point and for the SIGKILL the process sends itself there.
    pub fn crashed_by_itself(&mut self) -> String {
        let deadline = Instant::now() + DEADLINE;
        let Some(marker) = self.marker(deadline) else {
            let status = self.child.wait().expect("wait");
            panic!(
                "{} exited ({status}) without reaching its crash point:\n{}",
                self.what,
                self.stderr()
            );
        };
        let status = self.exit(deadline);
        assert_eq!(
            status.signal(),
            Some(9),
            "{} should have died by SIGKILL at its crash point, but: {status}",
            self.what
        );
        marker
    }

    /// Waits until the process stopped itself at the armed point (SIGSTOP), frozen there.
    pub fn paused(&mut self) -> String {
        let deadline = Instant::now() + DEADLINE;
        let Some(marker) = self.marker(deadline) else {
            let status = self.child.wait().expect("wait");
            panic!(
                "{} exited ({status}) without reaching its crash point:\n{}",
                self.what,
                self.stderr()
            );
        };
        let stat = format!("/proc/{}/stat", self.child.id());
        loop {
            let text = std::fs::read_to_string(&stat).unwrap_or_default();
            // `pid (comm) S ...`: the state follows the command name's closing parenthesis.
            let state = text
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.trim_start().chars().next());
            if state == Some('T') {
                return marker;
            }
            assert!(
                Instant::now() < deadline,
                "{} reached its point but never stopped (state {state:?})",
                self.what
            );
            std::thread::yield_now();
        }
    }

    /// SIGKILL, from outside.
    pub fn kill(&mut self) {
        self.child.kill().expect("SIGKILL");
        let status = self.exit(Instant::now() + DEADLINE);
        assert_eq!(status.signal(), Some(9), "{}: {status}", self.what);
    }

    /// Waits for the process to end by itself; its exit status.
    pub fn finish(&mut self) -> ExitStatus {
        self.exit(Instant::now() + DEADLINE)
    }
}

impl Drop for Watched {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// PostgreSQL and S3 for the scale-out server, from the variables `cargo xtask test` sets.
#[derive(Debug, Clone)]
pub struct ScaleOut {
    url: String,
    endpoint: String,
    bucket: String,
    access_key: String,
    secret_key: String,
}

impl ScaleOut {
    /// The services, or `None` (with a SKIPPED banner) when they are not configured; under
    /// `CI=true` a missing service fails the test instead.
    pub fn from_env(test: &str) -> Option<ScaleOut> {
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
                panic!("{test}: {msg}; under CI=true this test must run");
            }
            eprintln!("SKIPPED {test}: {msg}");
            return None;
        }
        let mut v = values.into_iter().map(Option::unwrap);
        let mut next = || v.next().unwrap();
        Some(ScaleOut {
            url: next(),
            endpoint: next(),
            bucket: next(),
            access_key: next(),
            secret_key: next(),
        })
    }

    /// A `psql` session on the test database.
    pub fn psql(&self) -> Psql {
        let mut child = Command::new("psql")
            .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1"])
            .arg(&self.url)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("psql (the PostgreSQL client) must be installed for this test");
        let stdin = child.stdin.take().unwrap();
        let lines = BufReader::new(child.stdout.take().unwrap()).lines();
        Psql {
            child,
            stdin: Some(stdin),
            lines,
        }
    }

    /// One query's output through `psql -c`.
    pub fn query(&self, sql: &str) -> String {
        let out = Command::new("psql")
            .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1"])
            .arg(&self.url)
            .args(["-c", sql])
            .output()
            .expect("psql");
        expect_ok("psql", &out).trim().to_string()
    }

    fn s3_envs(&self) -> Vec<(String, String)> {
        [
            ("AWS_ACCESS_KEY_ID", self.access_key.as_str()),
            ("AWS_SECRET_ACCESS_KEY", self.secret_key.as_str()),
            ("AWS_ENDPOINT_URL", self.endpoint.as_str()),
            ("AWS_ALLOW_HTTP", "true"),
            ("AWS_REGION", "us-east-1"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    }

    fn s3(&self) -> sync_blobs::ObjectBlobs {
        sync_blobs::ObjectBlobs::s3(
            sync_blobs::S3Config::new(&self.bucket, &self.access_key, &self.secret_key)
                .with_endpoint(&self.endpoint)
                .with_allow_http(true),
        )
        .expect("the S3 test bucket")
    }
}

/// An interactive `psql`, for holding a transaction open.
pub struct Psql {
    child: Child,
    stdin: Option<std::process::ChildStdin>,
    lines: std::io::Lines<BufReader<std::process::ChildStdout>>,
}

impl Psql {
    /// Runs `sql`, then returns the output lines up to a sync marker.
    pub fn run(&mut self, sql: &str) -> Vec<String> {
        use std::io::Write;
        let stdin = self.stdin.as_mut().expect("session open");
        writeln!(stdin, "{sql}\n\\echo -- done --").unwrap();
        stdin.flush().unwrap();
        let mut out = Vec::new();
        for line in self.lines.by_ref() {
            let line = line.expect("psql output");
            if line == "-- done --" {
                return out;
            }
            out.push(line);
        }
        panic!("psql ended early after {out:?}");
    }

    /// Ends the session (after `ROLLBACK` or `COMMIT` was sent).
    pub fn close(mut self) {
        drop(self.stdin.take());
        let status = self.child.wait().unwrap();
        assert!(status.success(), "psql: {status}");
    }
}

/// Where the servers keep their data.
#[derive(Debug, Clone)]
pub enum Backend {
    /// One server on SQLite and a blob directory.
    Sqlite,
    /// Two servers sharing one PostgreSQL schema and one S3 bucket.
    Postgres(ScaleOut),
}

/// A `serve` process, restartable at the same address.
pub struct Server {
    args: Vec<String>,
    envs: Vec<(String, String)>,
    addr: String,
    pub process: Option<Watched>,
    /// The data directory of an embedded server.
    pub data: Option<PathBuf>,
}

impl Server {
    fn start(
        args: Vec<String>,
        envs: Vec<(String, String)>,
        data: Option<PathBuf>,
        crash: Option<Crash>,
    ) -> Server {
        let mut server = Server {
            args,
            envs,
            addr: "127.0.0.1:0".into(),
            process: None,
            data,
        };
        server.spawn(crash);
        server
    }

    fn spawn(&mut self, crash: Option<Crash>) {
        let mut command = Command::new(BIN);
        command
            .arg("serve")
            .args(["--listen", &self.addr])
            .args(&self.args)
            .envs(self.envs.iter().map(|(k, v)| (k, v)))
            .envs(crash.iter().flat_map(Crash::envs))
            .stdin(Stdio::null())
            .stdout(Stdio::piped());
        let mut process = Watched::spawn(command, format!("serve ({crash:?})"));
        let mut first = String::new();
        BufReader::new(process.child.stdout.take().expect("stdout"))
            .read_line(&mut first)
            .expect("read the first line of serve");
        let url = first
            .trim()
            .strip_prefix("listening on http://")
            .unwrap_or_else(|| panic!("serve did not start: {first:?}\n{}", process.stderr()));
        self.addr = url.to_string();
        self.process = Some(process);
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Starts the server again at the same address, unarmed (after it was killed).
    pub fn restart(&mut self) {
        self.process = None;
        self.spawn(None);
    }

    /// Stops the server gracefully (SIGINT) and starts it again at the same address with
    /// `crash` armed.
    pub fn rearm(&mut self, crash: Crash) {
        let mut process = self.process.take().expect("the server is running");
        let pid = process.child.id().to_string();
        let status = Command::new("kill").args(["-INT", &pid]).status().unwrap();
        assert!(status.success(), "kill -INT {pid}");
        let exit = process.finish();
        assert!(
            exit.success(),
            "serve after SIGINT: {exit}\n{}",
            process.stderr()
        );
        self.spawn(Some(crash));
    }

    /// Stops the server gracefully (SIGINT, right after it announced that it listens),
    /// empties its data directory and starts it with `crash` armed at a start-up point: the
    /// process, which never starts listening.
    pub fn restart_fresh_crashing(&mut self, crash: Crash) -> Watched {
        let mut process = self.process.take().expect("the server is running");
        let pid = process.child.id().to_string();
        let status = Command::new("kill").args(["-INT", &pid]).status().unwrap();
        assert!(status.success(), "kill -INT {pid}");
        let exit = process.finish();
        assert!(
            exit.success(),
            "serve after SIGINT: {exit}\n{}",
            process.stderr()
        );
        let data = self.data.as_ref().expect("an embedded server");
        std::fs::remove_dir_all(data).unwrap();
        let mut command = Command::new(BIN);
        command
            .arg("serve")
            .args(["--listen", &self.addr])
            .args(&self.args)
            .envs(self.envs.iter().map(|(k, v)| (k, v)))
            .envs(crash.envs())
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        Watched::spawn(command, format!("serve ({crash:?})"))
    }

    pub fn process(&mut self) -> &mut Watched {
        self.process.as_mut().expect("the server is running")
    }
}

/// A node's home.
#[derive(Debug, Clone)]
pub struct Node {
    pub name: &'static str,
    pub home: PathBuf,
}

/// What the test wrote, and so what every side must hold in the end.
#[derive(Debug, Default)]
struct Expect {
    /// Shared records: id -> (content hash, deleted).
    records: BTreeMap<String, (String, bool)>,
    /// Rows of the notes table: id -> title, `None` once deleted.
    notes: BTreeMap<String, Option<String>>,
    /// Rows of the reserved file table: id -> content hash, `None` once deleted.
    files: BTreeMap<String, Option<String>>,
}

/// One crash scenario's world: servers, nodes, and what they must converge to.
pub struct World {
    pub name: String,
    dir: tempfile::TempDir,
    pub backend: Backend,
    pub servers: Vec<Server>,
    expect: Expect,
    /// Keys of every blob written, to check on the server's storage.
    keys: BTreeMap<String, String>,
    fingerprints: std::cell::Cell<usize>,
}

fn command(home: &Path) -> Command {
    let mut c = Command::new(BIN);
    c.arg("--home").arg(home).stdin(Stdio::null());
    c
}

fn expect_ok(what: &str, out: &Output) -> String {
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).expect("utf-8 output")
}

/// Deterministic bytes, different for every (case, name).
fn content(case: &str, name: &str, len: usize) -> Vec<u8> {
    let seed = Sha256::digest(format!("{case}/{name}"));
    let mut x = u64::from_le_bytes(seed[..8].try_into().unwrap()) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

impl World {
    /// Servers for `backend` (the first armed with `server_crash`), no nodes yet.
    pub fn new(name: &str, backend: Backend, server_crash: Option<Crash>) -> World {
        let dir = tempfile::tempdir().expect("temp dir");
        Self::new_in(dir, name, backend, server_crash)
    }

    /// A world whose first server, on fresh storage, is first started with `crash` armed at
    /// a start-up point and dies there (before it listens); then the servers start as in
    /// [`World::new`], on what that start left behind. Also what the crashed start said.
    pub fn after_start_up_crash(name: &str, backend: Backend, crash: Crash) -> (World, String) {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(dir.path().join("apps.json"), APPS).unwrap();
        let apps = dir.path().join("apps.json").display().to_string();
        let (args, envs) = Self::server_args(dir.path(), name, &backend, apps);
        let mut command = Command::new(BIN);
        command
            .arg("serve")
            .args(["--listen", "127.0.0.1:0"])
            .args(&args)
            .envs(envs.iter().map(|(k, v)| (k, v)))
            .envs(crash.envs())
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        let mut crashed = Watched::spawn(command, format!("serve ({crash:?})"));
        let said = crashed.crashed_by_itself();
        (Self::new_in(dir, name, backend, None), said)
    }

    /// The arguments and environment of `serve` for `backend` in `dir`.
    fn server_args(
        dir: &Path,
        name: &str,
        backend: &Backend,
        apps: String,
    ) -> (Vec<String>, Vec<(String, String)>) {
        match backend {
            Backend::Sqlite => {
                let data = dir.join("server");
                let args = vec![
                    "--data".into(),
                    data.display().to_string(),
                    "--token".into(),
                    TOKEN.into(),
                    "--apps".into(),
                    apps,
                ];
                (args, vec![])
            }
            Backend::Postgres(so) => {
                let args = vec![
                    "--database".into(),
                    so.url.clone(),
                    "--database-schema".into(),
                    schema_of(name),
                    "--blobs".into(),
                    format!("s3://{}", so.bucket),
                    "--token".into(),
                    TOKEN.into(),
                    "--apps".into(),
                    apps,
                ];
                (args, so.s3_envs())
            }
        }
    }

    fn new_in(
        dir: tempfile::TempDir,
        name: &str,
        backend: Backend,
        server_crash: Option<Crash>,
    ) -> World {
        std::fs::write(dir.path().join("apps.json"), APPS).unwrap();
        let apps = dir.path().join("apps.json").display().to_string();
        let (args, envs) = Self::server_args(dir.path(), name, &backend, apps);
        let mut servers = Vec::new();
        match &backend {
            Backend::Sqlite => {
                let data = dir.path().join("server");
                servers.push(Server::start(args, envs, Some(data), server_crash));
            }
            Backend::Postgres(_) => {
                // One after the other: the first creates the schema. The second shares the
                // database and the bucket, and is never killed.
                servers.push(Server::start(
                    args.clone(),
                    envs.clone(),
                    None,
                    server_crash,
                ));
                servers.push(Server::start(args, envs, None, None));
            }
        }
        World {
            name: name.to_string(),
            dir,
            backend,
            servers,
            expect: Expect::default(),
            keys: BTreeMap::new(),
            fingerprints: std::cell::Cell::new(0),
        }
    }

    fn fingerprints_taken(&self) -> usize {
        let n = self.fingerprints.get();
        self.fingerprints.set(n + 1);
        n
    }

    pub fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    /// A node syncing through server `server`.
    pub fn node(&self, name: &'static str, server: usize) -> Node {
        let home = self.path(name);
        let apps = self.path("apps.json");
        let out = command(&home)
            .args(["init", "--node-id", name, "--server"])
            .arg(self.servers[server].url())
            .args(["--token", TOKEN, "--apps"])
            .arg(apps)
            .output()
            .unwrap();
        expect_ok("init", &out);
        Node { name, home }
    }

    pub fn run(&self, node: &Node, args: &[&str]) -> Output {
        command(&node.home).args(args).output().expect("run")
    }

    pub fn ok(&self, node: &Node, args: &[&str]) -> String {
        expect_ok(&format!("{} {args:?}", node.name), &self.run(node, args))
    }

    fn json(&self, node: &Node, args: &[&str]) -> Value {
        serde_json::from_str(&self.ok(node, args)).expect("JSON output")
    }

    /// Runs `args` on `node` with `crash` armed; it must die there by its own SIGKILL.
    pub fn crash(&self, node: &Node, args: &[&str], crash: Crash) -> String {
        let mut c = command(&node.home);
        c.args(args).envs(crash.envs());
        let mut p = Watched::spawn(c, format!("{} {args:?} ({crash:?})", node.name));
        p.crashed_by_itself()
    }

    /// Starts `args` on `node` (optionally armed) without waiting.
    pub fn spawn(&self, node: &Node, args: &[&str], crash: Option<Crash>) -> Watched {
        let mut c = command(&node.home);
        c.args(args)
            .envs(crash.iter().flat_map(Crash::envs))
            .stdout(Stdio::null());
        Watched::spawn(c, format!("{} {args:?} ({crash:?})", node.name))
    }

    /// The file a node imports as `name`.
    fn source(&self, node: &Node, name: &str, len: usize) -> PathBuf {
        let dir = self.path("sources").join(node.name);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        if !path.exists() {
            std::fs::write(&path, content(&self.name, name, len)).unwrap();
        }
        path
    }

    fn expect_record(&mut self, id: &str, hash: &str, key: &str) {
        self.expect
            .records
            .insert(id.to_string(), (hash.to_string(), false));
        self.keys.insert(key.to_string(), hash.to_string());
    }

    /// `put` of a new file of `len` bytes; its record id.
    pub fn put(&mut self, node: &Node, name: &str, len: usize) -> String {
        let path = self.source(node, name, len);
        let out = self.json(node, &["put", path.to_str().unwrap(), "--json"]);
        let r = &out[0];
        let id = r["id"].as_str().unwrap().to_string();
        self.expect_record(
            &id,
            r["contentHash"].as_str().unwrap(),
            r["objectStorageKey"].as_str().unwrap(),
        );
        id
    }

    /// `put` of a new file with `crash` armed: it dies there; then `put` again, as a user
    /// would, unless the record was already stored. The record's id.
    pub fn put_crashing(&mut self, node: &Node, name: &str, len: usize, crash: Crash) -> String {
        let path = self.source(node, name, len);
        let hash = sha256_hex(&std::fs::read(&path).unwrap());
        self.crash(node, &["put", path.to_str().unwrap()], crash);
        let stored = self
            .ls(node)
            .into_iter()
            .find(|r| r["contentHash"] == hash.as_str());
        match stored {
            Some(r) => {
                // Stored before the crash; its key is content-addressed by MIME type.
                let id = r["id"].as_str().unwrap().to_string();
                let category = r["mimeType"].as_str().unwrap().split('/').next().unwrap();
                let key = format!("shared/{category}/{}/{hash}", &hash[..2]);
                self.expect_record(&id, &hash, &key);
                id
            }
            None => self.put(node, name, len),
        }
    }

    pub fn rm(&mut self, node: &Node, id: &str) {
        self.ok(node, &["rm", id]);
        self.expect.records.get_mut(id).expect("a known record").1 = true;
    }

    fn row_args(table: &str) -> Vec<String> {
        ["--app", APP, "--table", table]
            .iter()
            .map(|s| s.to_string())
            .collect()
    }

    /// Writes note `id` with `title`, optionally with a crash point armed.
    pub fn note(&mut self, node: &Node, id: &str, title: &str, crash: Option<Crash>) {
        let row = serde_json::json!({ "id": id, "title": title }).to_string();
        let mut args: Vec<String> = vec!["row".into(), "put".into()];
        args.extend(Self::row_args("notes"));
        args.push(row);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        match crash {
            Some(c) => {
                self.crash(node, &args, c);
            }
            None => {
                self.ok(node, &args);
            }
        }
        self.expect
            .notes
            .insert(id.to_string(), Some(title.to_string()));
    }

    pub fn note_rm(&mut self, node: &Node, id: &str) {
        let key = serde_json::json!({ "id": id }).to_string();
        let mut args: Vec<String> = vec!["row".into(), "rm".into()];
        args.extend(Self::row_args("notes"));
        args.push(key);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.ok(node, &args);
        self.expect.notes.insert(id.to_string(), None);
    }

    /// A row of the app's file table with a blob of `len` bytes (stored in the node's blob
    /// directory first, as an app would).
    pub fn attach(&mut self, node: &Node, id: &str, len: usize) {
        let bytes = content(&self.name, id, len);
        let hash = sha256_hex(&bytes);
        let key = format!("apps/{APP}/files/{}/{hash}", &hash[..2]);
        let path = node.home.join("blobs").join(&key);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, &bytes).unwrap();
        let at = format!("{:012x}:0000:{}", 1_700_000_000_000u64, node.name);
        let row = serde_json::json!({
            "id": id, "object_storage_key": key, "content_hash": hash,
            "mime_type": "application/octet-stream", "size_bytes": len,
            "original_filename": format!("{id}.bin"), "origin_app_id": APP,
            "created_at": at, "updated_at": at, "deleted_at": null,
        })
        .to_string();
        let mut args: Vec<String> = vec!["row".into(), "put".into()];
        args.extend(Self::row_args(FILES_TABLE));
        args.push(row);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.ok(node, &args);
        self.expect.files.insert(id.to_string(), Some(hash.clone()));
        self.keys.insert(key, hash);
    }

    /// `sync --until-idle` with small pages (several rounds per channel); the summaries.
    pub fn sync(&self, node: &Node) -> Value {
        self.json(
            node,
            &["sync", "--until-idle", "--page-limit", "2", "--json"],
        )
    }

    pub fn ls(&self, node: &Node) -> Vec<Value> {
        self.json(node, &["ls", "--json"])
            .as_array()
            .unwrap()
            .clone()
    }

    fn rows(&self, node: &Node, table: &str) -> Vec<AppRow> {
        let mut args: Vec<String> = vec!["row".into(), "ls".into()];
        args.extend(Self::row_args(table));
        args.push("--json".into());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut rows: Vec<AppRow> =
            serde_json::from_value(self.json(node, &args)).expect("rows as JSON");
        rows.sort_by_key(row_id);
        rows
    }

    /// The standard data set: a base both nodes hold, then concurrent writes on both
    /// (new files large and small, a file deleted, a note edited on both sides, notes
    /// deleted, app files), B's side already at the server. What `a` writes after the base
    /// is left to `a_writes`, so a case can crash one of those local writes.
    pub fn standard(&mut self, a: &Node, b: &Node, big: bool, a_writes: impl FnOnce(&mut World)) {
        // The base.
        let a1 = self.put(a, "a1.txt", 2000);
        self.put(a, "a2.bin", MEDIUM);
        self.note(a, "n1", "first", None);
        self.note(a, "n2", "second", None);
        self.note(a, "n3", "third", None);
        self.sync(a);
        self.put(b, "b1.txt", 3000);
        self.note(b, "m1", "from b", None);
        self.sync(b);
        self.sync(a);
        // Concurrent writes.
        a_writes(self);
        self.rm(a, &a1);
        self.note(a, "n1", "edited on a", None);
        self.note_rm(a, "n3");
        self.attach(a, "fa", 300 << 10);
        self.put(b, "b2.bin", 150 << 10);
        if big {
            self.put(b, "b-big.bin", BIG);
        }
        // B edits n1 after A did: B's version is newer and wins everywhere.
        self.note(b, "n1", "edited on b", None);
        self.note_rm(b, "n2");
        self.note(b, "m2", "more from b", None);
        self.attach(b, "fb", 100 << 10);
        self.sync(b);
    }

    /// A's own new writes in the standard set (a case may do them differently).
    pub fn a_writes(&mut self, a: &Node, big: bool) {
        self.put(a, "a3.txt", 1500);
        if big {
            self.put(a, "a-big.bin", BIG);
        }
        self.note(a, "n4", "fourth", None);
    }

    /// The invariants a node's persisted state must keep at any instant, checked on its
    /// files right after a crash (before it syncs again): no watermark ahead of the data it
    /// covers, no staged item covered by its watermark, every blob intact.
    pub fn check_at_rest(&self, node: &Node) {
        let status = self.json(node, &["status", "--json"]);
        let own = |channel: &str| -> BTreeMap<String, Hlc> {
            let c = status["channels"]
                .as_array()
                .unwrap()
                .iter()
                .find(|c| c["channel"] == channel)
                .unwrap_or_else(|| panic!("channel {channel} in status"));
            hlc_map(&c["own"])
        };
        for c in status["channels"].as_array().unwrap() {
            let (own, local) = (hlc_map(&c["own"]), hlc_map(&c["local"]));
            for (origin, mark) in &own {
                let held = local.get(origin);
                assert!(
                    held.is_some_and(|h| h >= mark),
                    "{}: {} own watermark of {origin} is {mark}, ahead of the data held ({held:?})\n{status:#}",
                    node.name,
                    c["channel"]
                );
            }
        }
        let drive = own("drive");
        for r in self.ls(node) {
            if r["residency"] == "staged" {
                let at: Hlc = r["updatedAt"].as_str().unwrap().parse().unwrap();
                let mark = drive.get(at.node_id().as_str());
                assert!(
                    mark.is_none_or(|m| *m < at),
                    "{}: record {} is staged (its blob is missing) but the watermark {mark:?} covers it",
                    node.name,
                    r["id"]
                );
            }
        }
        let notes = own(&format!("app:{APP}"));
        for row in self.rows(node, FILES_TABLE) {
            let values = row.row.clone().unwrap_or_default();
            if row.is_tombstone() {
                continue;
            }
            let key = values["object_storage_key"].as_str().unwrap();
            if LocalBlobs::node(&node.home).read(key).is_none() {
                let mark = notes.get(row.timestamp.node_id().as_str());
                assert!(
                    mark.is_none_or(|m| *m < row.timestamp),
                    "{}: app file {} is staged but the watermark {mark:?} covers it",
                    node.name,
                    row_id(&row)
                );
            }
        }
        let staging = LocalBlobs::node(&node.home).check();
        if staging > 0 {
            eprintln!(
                "{}: {}: {staging} upload staging file(s) left by a crash",
                self.name, node.name
            );
        }
    }

    /// Syncs every node until a whole pass moves nothing, then checks that they converged to
    /// exactly what was written, with every blob intact everywhere, and that a new node
    /// gets all of it from the servers.
    pub fn converge_and_check(&mut self, nodes: &[&Node]) {
        let mut quiet = false;
        for _pass in 0..6 {
            quiet = true;
            for node in nodes {
                for s in self.sync(node).as_array().unwrap() {
                    assert_eq!(s["complete"], true, "{}: {s}", node.name);
                    let moved = ["shipped", "applied", "becameResident"]
                        .iter()
                        .any(|k| s[k].as_u64() != Some(0));
                    quiet &= !moved;
                }
            }
            if quiet {
                break;
            }
        }
        assert!(
            quiet,
            "{}: the nodes kept moving data after 6 passes",
            self.name
        );
        let observer = self.node("observer", self.servers.len() - 1);
        self.sync(&observer);
        let mut all: Vec<&Node> = nodes.to_vec();
        all.push(&observer);

        let first = self.ls(all[0]);
        for node in &all {
            let listed = self.ls(node);
            assert_eq!(
                listed, first,
                "{}: {} and {} hold different records",
                self.name, node.name, all[0].name
            );
            self.check_at_rest(node);
        }
        let expected: BTreeMap<String, (String, bool)> = self.expect.records.clone();
        let held: BTreeMap<String, (String, bool)> = first
            .iter()
            .map(|r| {
                assert!(
                    r["residency"] == "resident" || r["residency"] == "deleted",
                    "{}: record not resident after convergence: {r}",
                    self.name
                );
                (
                    r["id"].as_str().unwrap().to_string(),
                    (
                        r["contentHash"].as_str().unwrap().to_string(),
                        r["residency"] == "deleted",
                    ),
                )
            })
            .collect();
        assert_eq!(held, expected, "{}: records", self.name);

        for table in ["notes", FILES_TABLE] {
            let first = self.rows(all[0], table);
            for node in &all {
                assert_eq!(
                    self.rows(node, table),
                    first,
                    "{}: {} and {} hold different {table} rows",
                    self.name,
                    node.name,
                    all[0].name
                );
            }
            let held: BTreeMap<String, Option<String>> = first
                .iter()
                .map(|r| {
                    let values = r.row.clone().unwrap_or_default();
                    let v = (!r.is_tombstone()).then(|| {
                        let column = if table == "notes" {
                            "title"
                        } else {
                            "content_hash"
                        };
                        values[column].as_str().unwrap().to_string()
                    });
                    (row_id(r), v)
                })
                .collect();
            let expected = if table == "notes" {
                &self.expect.notes
            } else {
                &self.expect.files
            };
            assert_eq!(&held, expected, "{}: {table} rows", self.name);
            if table == FILES_TABLE {
                for node in &all {
                    let blobs = LocalBlobs::node(&node.home);
                    for r in first.iter().filter(|r| !r.is_tombstone()) {
                        let key = r.row.as_ref().unwrap()["object_storage_key"]
                            .as_str()
                            .unwrap();
                        assert!(
                            blobs.read(key).is_some(),
                            "{}: app file {key} missing on {}",
                            self.name,
                            node.name
                        );
                    }
                }
            }
        }
        for node in &all {
            let status = self.json(node, &["status", "--json"]);
            for c in status["channels"].as_array().unwrap() {
                assert_eq!(
                    c["pendingOutboundNodes"],
                    Value::Array(vec![]),
                    "{}: {} still has work for the server: {c}",
                    self.name,
                    node.name
                );
            }
        }
        self.check_server_blobs();
    }

    /// Every blob written is on the servers' storage, byte for byte.
    fn check_server_blobs(&self) {
        match &self.backend {
            Backend::Sqlite => {
                let blobs = LocalBlobs::server(self.servers[0].data.as_ref().unwrap());
                let staging = blobs.check();
                if staging > 0 {
                    eprintln!(
                        "{}: server: {staging} upload staging file(s) left by a crash",
                        self.name
                    );
                }
                for (key, hash) in &self.keys {
                    let bytes = blobs
                        .read(key)
                        .unwrap_or_else(|| panic!("{}: server blob {key} missing", self.name));
                    assert_eq!(&sha256_hex(&bytes), hash, "server blob {key}");
                }
            }
            Backend::Postgres(so) => {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                runtime.block_on(async {
                    use sync_blobs::object_store::{path::Path as ObjectPath, ObjectStoreExt};
                    // As the servers store them: small blobs in the pack of their database,
                    // the rest in the bucket (decision 0014).
                    let store = sync_postgres::PostgresStore::connect_with(
                        &so.url,
                        &sync_postgres::PostgresOptions::default()
                            .with_schema(schema_of(&self.name)),
                    )
                    .await
                    .expect("the servers' database");
                    let blobs = so
                        .s3()
                        .with_pack(Arc::new(store.blob_pack()), sync_blobs::DEFAULT_PACK_LIMIT);
                    for (key, hash) in &self.keys {
                        let got = blobs
                            .object_store()
                            .get(&ObjectPath::parse(key).unwrap())
                            .await
                            .unwrap_or_else(|e| panic!("{}: server blob {key}: {e}", self.name));
                        let bytes = got.bytes().await.unwrap();
                        assert_eq!(&sha256_hex(&bytes), hash, "server blob {key}");
                    }
                    store.close().await;
                });
            }
        }
    }
}

/// The PostgreSQL schema of a case's servers.
pub fn schema_of(case: &str) -> String {
    format!(
        "crash_{}_{}",
        case.replace(|c: char| !c.is_ascii_alphanumeric(), "_"),
        std::process::id()
    )
}

fn row_id(r: &AppRow) -> String {
    let values = r.row.as_ref().or(r.where_.as_ref()).expect("row values");
    values["id"].as_str().unwrap().to_string()
}

fn hlc_map(v: &Value) -> BTreeMap<String, Hlc> {
    v.as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap().parse().unwrap()))
                .collect()
        })
        .unwrap_or_default()
}

/// The blobs of a node home or of an embedded server's data directory, read the way
/// `starkeep-sync` stores them: small ones packed in its database, larger ones as files
/// (decision 0014). Opened for one check and closed again, never while the process runs.
struct LocalBlobs {
    runtime: tokio::runtime::Runtime,
    store: sync_sqlite::SqliteStore,
    blobs: sync_blobs::ObjectBlobs,
    dir: PathBuf,
}

impl LocalBlobs {
    fn node(home: &Path) -> Self {
        Self::open(&home.join("blobs"), &home.join("node.db"))
    }

    fn server(data: &Path) -> Self {
        Self::open(&data.join("blobs"), &data.join("server.db"))
    }

    fn open(dir: &Path, db: &Path) -> Self {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let store = runtime
            .block_on(sync_sqlite::SqliteStore::open(db))
            .unwrap_or_else(|e| panic!("opening {}: {e}", db.display()));
        let blobs = sync_blobs::ObjectBlobs::filesystem(dir)
            .unwrap()
            .with_pack(Arc::new(store.blob_pack()), sync_blobs::DEFAULT_PACK_LIMIT);
        Self {
            runtime,
            store,
            blobs,
            dir: dir.to_path_buf(),
        }
    }

    /// The blob at `key`, from the pack or its file.
    fn read(&self, key: &str) -> Option<Vec<u8>> {
        use sync_blobs::object_store::{path::Path as ObjectPath, ObjectStoreExt};
        self.runtime.block_on(async {
            let path = ObjectPath::parse(key).unwrap();
            match self.blobs.object_store().get(&path).await {
                Ok(got) => Some(got.bytes().await.unwrap().to_vec()),
                Err(sync_blobs::object_store::Error::NotFound { .. }) => None,
                Err(e) => panic!("reading blob {key}: {e}"),
            }
        })
    }

    /// Every blob stored hashes to the last segment of its key (keys end in the content
    /// hash). Upload staging files (`<key>#<n>`) are invisible to readers and skipped; how
    /// many there are is returned (an upload cut by a crash leaves its staging file behind).
    fn check(&self) -> usize {
        use futures::TryStreamExt;
        let keys: Vec<String> = self.runtime.block_on(async {
            self.blobs
                .object_store()
                .list(None)
                .map_ok(|m| m.location.to_string())
                .try_collect()
                .await
                .unwrap()
        });
        for key in &keys {
            let bytes = self.read(key).unwrap();
            let name = key.rsplit('/').next().unwrap();
            assert_eq!(
                sha256_hex(&bytes),
                name,
                "blob {key} does not match its content hash ({} bytes)",
                bytes.len()
            );
        }
        count_staging(&self.dir)
    }
}

impl Drop for LocalBlobs {
    fn drop(&mut self) {
        self.runtime.block_on(self.store.close());
    }
}

/// Upload staging files (`<key>#<n>`) under `dir`.
fn count_staging(dir: &Path) -> usize {
    let mut staging = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for entry in entries {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            if name
                .rsplit_once('#')
                .is_some_and(|(_, n)| n.bytes().all(|b| b.is_ascii_digit()))
            {
                staging += 1;
            }
        }
    }
    staging
}

/// What a node's files hold, as its commands show it (state, records, rows), read from a
/// scratch copy so the files themselves stay untouched.
pub fn node_fingerprint(w: &World, home: &Path) -> String {
    let scratch = w.path(&format!("fingerprint-{}", w.fingerprints_taken()));
    copy_dir(home, &scratch);
    let node = Node {
        name: "fingerprint",
        home: scratch,
    };
    let mut status = w.json(&node, &["status", "--json"]);
    status["lastSync"] = Value::Null;
    let mut out = format!("{status}\n{:?}\n", w.ls(&node));
    for table in ["notes", FILES_TABLE] {
        out.push_str(&format!("{:?}\n", w.rows(&node, table)));
    }
    std::fs::remove_dir_all(&node.home).unwrap();
    out
}

/// The per-origin coverage of a server's SQLite database (records and both app tables),
/// read from a scratch copy of its files.
pub fn server_fingerprint(w: &World, db: &Path) -> String {
    use sync_engine::core::{AppRowStore, RecordStore};
    let scratch = w.path(&format!("fingerprint-{}", w.fingerprints_taken()));
    std::fs::create_dir_all(&scratch).unwrap();
    for suffix in ["", "-wal", "-shm"] {
        let from = PathBuf::from(format!("{}{suffix}", db.display()));
        if from.exists() {
            std::fs::copy(&from, scratch.join(format!("server.db{suffix}"))).unwrap();
        }
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let out = runtime.block_on(async {
        let store = sync_sqlite::SqliteStore::open(scratch.join("server.db"))
            .await
            .expect("the server database opens");
        let records = RecordStore::coverage(&store).await.unwrap();
        let notes = AppRowStore::coverage(&store, APP, "notes").await.unwrap();
        let files = AppRowStore::coverage(&store, APP, FILES_TABLE)
            .await
            .unwrap();
        store.close().await;
        format!("{records:?}\n{notes:?}\n{files:?}")
    });
    std::fs::remove_dir_all(&scratch).unwrap();
    out
}

/// Copies a directory tree.
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// Replaces `dir` with `copy` (a power-loss image of it).
pub fn replace_dir(dir: &Path, copy: &Path) {
    std::fs::remove_dir_all(dir).unwrap();
    std::fs::rename(copy, dir).unwrap();
}

/// The end offsets of the valid commit frames of a SQLite WAL file: frames whose salts
/// match the header and whose cumulative checksums verify, as SQLite's recovery reads them.
fn wal_commits(wal: &[u8]) -> Vec<usize> {
    if wal.len() < 32 {
        return Vec::new();
    }
    let be = |b: &[u8], o: usize| u32::from_be_bytes(b[o..o + 4].try_into().unwrap());
    let magic = be(wal, 0);
    assert!(
        magic & !1 == 0x377f_0682,
        "not a WAL file (magic {magic:#x})"
    );
    let native_be = magic & 1 == 1;
    let word = |b: &[u8], o: usize| {
        let w: [u8; 4] = b[o..o + 4].try_into().unwrap();
        if native_be {
            u32::from_be_bytes(w)
        } else {
            u32::from_le_bytes(w)
        }
    };
    let checksum = |data: &[u8], mut s: (u32, u32)| {
        for o in (0..data.len()).step_by(8) {
            s.0 = s.0.wrapping_add(word(data, o)).wrapping_add(s.1);
            s.1 = s.1.wrapping_add(word(data, o + 4)).wrapping_add(s.0);
        }
        s
    };
    let page = be(wal, 8) as usize;
    let salts = (be(wal, 16), be(wal, 20));
    let mut sum = checksum(&wal[..24], (0, 0));
    assert_eq!(sum, (be(wal, 24), be(wal, 28)), "WAL header checksum");
    let frame = 24 + page;
    let mut commits = Vec::new();
    let mut at = 32;
    while at + frame <= wal.len() {
        let f = &wal[at..at + frame];
        if (be(f, 8), be(f, 12)) != salts {
            break;
        }
        sum = checksum(&f[24..], checksum(&f[..8], sum));
        if sum != (be(f, 16), be(f, 20)) {
            break;
        }
        if be(f, 4) != 0 {
            commits.push(at + frame);
        }
        at += frame;
    }
    commits
}

/// A power cut in the middle of writing the last transaction: the database's WAL is cut
/// halfway through that transaction's frames (so it has no commit frame any more) and the
/// shared-memory index is dropped, as after a reboot. Returns the cut offset.
pub fn tear_last_commit(db: &Path) -> usize {
    let wal_path = PathBuf::from(format!("{}-wal", db.display()));
    let wal = std::fs::read(&wal_path).expect("the database has a WAL");
    let commits = wal_commits(&wal);
    let last = *commits
        .last()
        .unwrap_or_else(|| panic!("{} holds no committed transaction", wal_path.display()));
    let before = commits.len().checked_sub(2).map_or(32, |i| commits[i]);
    let cut = before + (last - before) / 2;
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&wal_path)
        .unwrap();
    file.set_len(cut as u64).unwrap();
    let _ = std::fs::remove_file(format!("{}-shm", db.display()));
    assert_eq!(
        wal_commits(&std::fs::read(&wal_path).unwrap()).last(),
        commits.len().checked_sub(2).map(|i| &commits[i]),
        "the cut removes exactly the last transaction"
    );
    cut
}
