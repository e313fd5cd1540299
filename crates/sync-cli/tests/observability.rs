//! What an operator sees, with the real binary: `status` shows the node's counters after
//! `sync` runs (they persist between runs), including a file that keeps failing with its
//! attempt count; `sync --log info` logs one line per round; the server's `GET /metrics`
//! needs a token with the metrics scope.

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::TcpStream,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
};

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_starkeep-sync");
const TOKEN: &str = "test-token-0123456789abcdef";
const METRICS_TOKEN: &str = "scraper-token-0123456789";

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

fn serve(data: &Path) -> Server {
    let mut child = Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--data"])
        .arg(data)
        .args(["--token", TOKEN])
        .args(["--token", &format!("{METRICS_TOKEN}:metrics")])
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
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .output()
        .expect("run starkeep-sync")
}

fn stdout(out: &Output) -> String {
    String::from_utf8(out.stdout.clone()).expect("utf-8")
}

fn ok(home: &Path, args: &[&str]) -> String {
    let out = run(home, args);
    assert!(
        out.status.success(),
        "{args:?} failed ({:?}): {}{}",
        out.status.code(),
        stdout(&out),
        String::from_utf8_lossy(&out.stderr)
    );
    stdout(&out)
}

/// `GET /metrics` over a plain socket: status code and body.
fn scrape(url: &str, token: Option<&str>) -> (u16, String) {
    let addr = url.strip_prefix("http://").expect("http URL");
    let mut stream = TcpStream::connect(addr).expect("connect");
    let auth = token.map_or_else(String::new, |t| format!("Authorization: Bearer {t}\r\n"));
    write!(
        stream,
        "GET /metrics HTTP/1.1\r\nHost: {addr}\r\n{auth}Connection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").expect("head and body");
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    (status, body.to_string())
}

/// The value of one sample line, `name{labels} value`, written exactly so.
fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no {series} in:\n{text}"))
        .parse()
        .unwrap()
}

#[test]
fn status_shows_counters_and_a_failing_file_with_its_attempts_across_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let server = serve(&tmp.path().join("server"));
    let home: PathBuf = tmp.path().join("node-a");
    // Every blob a file (no pack, decision 0014), so the test can lose one and bring it back.
    ok(
        &home,
        &[
            "init",
            "--node-id",
            "node-a",
            "--server",
            &server.url,
            "--token",
            TOKEN,
            "--blob-pack-limit",
            "0",
        ],
    );
    let files = tmp.path().join("files");
    std::fs::create_dir_all(&files).unwrap();
    std::fs::write(files.join("1-kept.txt"), b"this one syncs").unwrap();
    let added: Value = serde_json::from_str(&ok(
        &home,
        &["put", files.join("1-kept.txt").to_str().unwrap(), "--json"],
    ))
    .unwrap();
    let kept = added[0]["id"].as_str().unwrap().to_string();
    std::fs::write(files.join("2-lost.txt"), b"this one goes missing").unwrap();
    let added: Value = serde_json::from_str(&ok(
        &home,
        &["put", files.join("2-lost.txt").to_str().unwrap(), "--json"],
    ))
    .unwrap();
    let lost = added[0]["id"].as_str().unwrap().to_string();
    // Its file disappears from the node before it was uploaded: missing at the source.
    let key = added[0]["objectStorageKey"].as_str().unwrap();
    std::fs::remove_file(home.join("blobs").join(key)).expect("the stored blob");

    // Until idle: the kept file ships, the lost one fails every round until sync gives up
    // (stalled, exit code 3). At info, every round is a log line with what it did.
    let first = run(&home, &["sync", "--until-idle", "--json", "--log", "info"]);
    assert_eq!(
        first.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    let summary: Value = serde_json::from_str(&stdout(&first)).unwrap();
    let rounds = summary[0]["rounds"].as_u64().unwrap();
    assert!(
        summary[0]["stalled"].as_bool().unwrap() && rounds >= 2,
        "{summary}"
    );
    let log = String::from_utf8_lossy(&first.stderr);
    let round_lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("round{") && l.contains("close"))
        .collect();
    assert_eq!(round_lines.len() as u64, rounds, "{log}");
    // Round 1 only pulls: the node learns the server's inline limit before it ships small
    // blobs (decision 0015). Round 2 ships, and the lost file fails.
    assert!(round_lines[0].contains("channel=drive round=1"), "{log}");
    assert!(round_lines[0].contains("shipped=0"), "{log}");
    assert!(round_lines[1].contains("shipped=1"), "{log}");
    assert!(round_lines[1].contains("failures=1"), "{log}");
    assert!(
        round_lines.iter().all(|l| l.contains("duration_ms=")),
        "{log}"
    );
    // One more round, in a separate run: the counters continue.
    assert_eq!(run(&home, &["sync"]).status.code(), Some(3));
    let (attempts, rounds_ok) = (rounds, rounds + 1);

    let status: Value = serde_json::from_str(&ok(&home, &["status", "--json"])).unwrap();
    let failing = status["failingItems"].as_array().unwrap();
    assert_eq!(failing.len(), 1, "{status}");
    let f = &failing[0];
    assert_eq!(f["item"]["id"], lost.as_str(), "{f}");
    assert_eq!(
        (f["direction"].as_str(), f["kind"].as_str()),
        (Some("outbound"), Some("blob"))
    );
    assert_eq!(f["attempts"].as_u64(), Some(attempts), "{f}");
    assert!(f["lastError"].as_str().unwrap().contains(key), "{f}");
    let drive = &status["channels"][0];
    let counters = &drive["counters"];
    assert_eq!(counters["roundsOk"].as_u64(), Some(rounds_ok), "{counters}");
    assert_eq!(counters["roundsFailed"].as_u64(), Some(0));
    assert_eq!(counters["shipped"].as_u64(), Some(1));
    assert_eq!(counters["blobFailures"].as_u64(), Some(attempts));
    assert_eq!(counters["skewRefusals"].as_u64(), Some(0));
    // The server trails this node: the lost record is stored here, not covered there.
    let lag = drive["lag"].as_array().unwrap();
    assert_eq!(lag.len(), 1, "{drive}");
    assert_eq!(lag[0]["node"], "node-a");
    assert_eq!(lag[0]["outboundPending"], true);

    let text = ok(&home, &["status"]);
    assert!(
        text.contains(&format!("  rounds: {rounds_ok} ok (")),
        "{text}"
    );
    assert!(text.contains(" stalled), 0 failed; last "), "{text}");
    assert!(
        text.contains(&format!(
            "item failures: {attempts} ({attempts} blob), skew refusals: 0"
        )),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "drive outbound record {lost}: blob, {attempts} attempt(s), first "
        )),
        "{text}"
    );
    assert!(
        text.contains("lag of node-a's data: the server behind by"),
        "{text}"
    );
    assert!(
        !text.contains(&kept),
        "the kept file is not failing: {text}"
    );

    // The file comes back: it ships, and nothing is failing any more.
    std::fs::write(files.join("2-lost.txt"), b"this one goes missing").unwrap();
    std::fs::copy(files.join("2-lost.txt"), home.join("blobs").join(key)).unwrap();
    ok(&home, &["sync", "--until-idle"]);
    let status: Value = serde_json::from_str(&ok(&home, &["status", "--json"])).unwrap();
    assert_eq!(status["failingItems"], Value::Array(vec![]), "{status}");
    let counters = &status["channels"][0]["counters"];
    assert_eq!(counters["shipped"].as_u64(), Some(2));
    let rounds_total = counters["roundsOk"].as_u64().unwrap();
    assert!(rounds_total > rounds_ok);
    assert!(!ok(&home, &["status"]).contains("failing items"));

    // The server's metrics: 401 without a valid token; the scraper's token reads them, and
    // so does the node's token (it reaches every channel).
    let (code, _) = scrape(&server.url, None);
    assert_eq!(code, 401);
    let (code, _) = scrape(&server.url, Some("not-a-token-at-all"));
    assert_eq!(code, 401);
    let (code, body) = scrape(&server.url, Some(METRICS_TOKEN));
    assert_eq!(code, 200, "{body}");
    assert_eq!(
        sample(
            &body,
            "starkeep_exchanges_total{channel=\"drive\",outcome=\"ok\"}"
        ),
        rounds_total as f64,
        "every round the node ran: {body}"
    );
    assert_eq!(
        sample(
            &body,
            "starkeep_exchange_items_received_total{channel=\"drive\"}"
        ),
        2.0
    );
    assert_eq!(
        sample(
            &body,
            "starkeep_exchange_items_accepted_total{channel=\"drive\"}"
        ),
        2.0
    );
    let (code, _) = scrape(&server.url, Some(TOKEN));
    assert_eq!(code, 200);
}
