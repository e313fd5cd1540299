//! Issue 8, "Network faults": a fault-injecting TCP proxy (`sync_testkit::proxy`) on
//! 127.0.0.1 between each node and a real server delays, drops, truncates, resets and
//! stalls connections by a seeded schedule. Nodes keep writing and syncing through it; after
//! every step no watermark is ahead of the data it claims; once the proxies heal, every side
//! converges with no duplicate or lost item and byte-identical blobs. Rounds time out rather
//! than hang: every engine call runs under an outer deadline that fails the test loudly.
//!
//! `STARKEEP_NET_SEEDS=N` runs N seeds (default 4), `STARKEEP_NET_SEED=S` starts at seed S;
//! a failure prints its seed (replay: `STARKEEP_NET_SEED=S STARKEEP_NET_SEEDS=1 cargo test
//! -p sync-engine --test network_faults`). The proxy's faults are a function of the seed and
//! the connection number; which request a connection carries depends on timing, so a replay
//! injects the same faults but may not hit the very same requests.
//!
//! The tests at the end pin down what these tests found: hangs on a stalled blob body (fixed
//! by idle and part deadlines in `HttpObjectStore`), data loss when a page is cut while
//! another transaction's items commit (fixed by `ChannelData::select` settling the page and
//! by local writes committing in timestamp order), and a phantom pending status (fixed by
//! probing for shippable versions); docs/testing.md lists them.

mod loopback;

use std::{
    future::Future,
    path::Path,
    sync::Arc,
    time::{Duration, Instant},
};

use futures::future::join_all;
use loopback::{app_channel, bytes, watermarks, Node, NodeOptions, Server, Truth, NOTES};
use sync_engine::{
    core::{Item, TimeSource},
    protocol::Codec,
    Channel, Error, RetryPolicy, SystemClock,
};
use sync_testkit::proxy::{Fault, FaultCounts, FaultMix, FaultProxy, FaultSchedule, Flow};

/// The HTTP client's request and connect timeout on every node.
const REQUEST_TIMEOUT: Duration = Duration::from_millis(500);

/// The outer deadline of any one engine call. A round under faults takes a few request
/// timeouts at most (blob pushes, the exchange, blob pulls, each bounded); far beyond that
/// it hangs.
const CALL_DEADLINE: Duration = Duration::from_secs(20);

/// Writing steps under faults, each followed by rounds on both channels of every node.
const STEPS: usize = 6;
const ROUNDS_PER_STEP: usize = 2;
/// Chunks (up to 16 KiB) per 1000 that start a fault, besides the fault each connection
/// draws: keep-alive connections live long.
const CHUNK_FAULTS_PER_MILLE: u32 = 40;
const NODES: [&str; 3] = ["node-a", "node-b", "node-c"];

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

/// Prints the seed if the test panics while it is alive.
struct SeedGuard(u64);

impl Drop for SeedGuard {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "network_faults failed with seed {s}; replay with \
                 STARKEEP_NET_SEED={s} STARKEEP_NET_SEEDS=1 cargo test -p sync-engine --test network_faults",
                s = self.0
            );
        }
    }
}

/// Runs `fut` under [`CALL_DEADLINE`], failing loudly if it hangs.
async fn bounded<T>(what: &str, fut: impl Future<Output = T>) -> T {
    match tokio::time::timeout(CALL_DEADLINE, fut).await {
        Ok(v) => v,
        Err(_) => panic!(
            "{what} did not finish within {CALL_DEADLINE:?}: a round must time out, not hang"
        ),
    }
}

fn system_time() -> Arc<dyn TimeSource> {
    Arc::new(SystemClock)
}

fn options(codec: Codec) -> NodeOptions {
    NodeOptions {
        codec,
        request_timeout: REQUEST_TIMEOUT,
        retry: RetryPolicy::default()
            .with_max_attempts(2)
            .with_delays(Duration::from_millis(5), Duration::from_millis(20)),
        time: system_time(),
    }
}

/// A small seeded generator for the test's own choices.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        (z ^ (z >> 31)) % n.max(1)
    }
}

/// A blob size: mostly small, some above the proxy's 16 KiB chunk, some above the 256 KiB
/// chunk blobs are read from files in, a few of 1.5 MiB.
fn blob_size(rng: &mut Rng) -> usize {
    match rng.below(100) {
        0..=59 => 100 + rng.below(4000) as usize,
        60..=84 => 20_000 + rng.below(40_000) as usize,
        85..=96 => 300_000 + rng.below(400_000) as usize,
        _ => 1_500_000,
    }
}

/// One writing step of node `n`: a few writes of every kind, shared ids included so that
/// nodes overwrite each other (last writer wins).
async fn write_step(node: &Node, n: usize, step: usize, rng: &mut Rng, truth: &mut Truth) {
    for w in 0..3 {
        let tag = format!("{}-s{step}-w{w}", node.id);
        let blob_seed = rng.below(u64::MAX);
        let item = match rng.below(7) {
            0 | 1 => {
                let id = format!("f-{tag}");
                Item::Record(node.put_file(&id, &bytes(blob_seed, blob_size(rng))).await)
            }
            2 => {
                let id = format!("shared-{}", rng.below(3));
                Item::Record(node.put_file(&id, &bytes(blob_seed, blob_size(rng))).await)
            }
            3 => {
                // Delete a shared record this node holds, or write one.
                let id = format!("shared-{}", rng.below(3));
                match node.drive.record(&id).await.unwrap() {
                    Some(_) => Item::Record(node.drive.delete_record(&id).await.unwrap()),
                    None => Item::Record(node.put_file(&id, &bytes(blob_seed, 64)).await),
                }
            }
            4 => {
                let id = if rng.below(2) == 0 {
                    format!("ar-{tag}")
                } else {
                    format!("ar-shared-{}", rng.below(2))
                };
                let size = blob_size(rng);
                Item::Row(node.put_file_row(&id, &bytes(blob_seed, size), &tag).await)
            }
            5 => {
                let id = format!("note-{}", rng.below(4));
                Item::Row(node.put_note(&id, &format!("{tag} (node {n})")).await)
            }
            _ => {
                let id = format!("note-{}", rng.below(4));
                let key = serde_json::json!([id]).to_string();
                match node.app.row(NOTES, &key).await.unwrap() {
                    Some(_) => Item::Row(node.delete_row(NOTES, &id).await),
                    None => Item::Row(node.put_note(&id, &tag).await),
                }
            }
        };
        truth.record(item);
    }
}

/// Checks that no watermark of any node is ahead of the data it claims: the node's own
/// watermarks against its own stores, the server's last coverage report against the
/// server's stores.
async fn check_coverage(nodes: &[Node], server: &Server, truth: &Truth, when: &str) {
    let mut problems = Vec::new();
    for node in nodes {
        for channel in [Channel::Drive, app_channel()] {
            let (own, peer) = watermarks(node, &channel).await;
            problems.extend(
                node.view()
                    .check_covered("its own watermark", &channel, &own, truth)
                    .await,
            );
            problems.extend(
                server
                    .view()
                    .check_covered(
                        &format!("the coverage report to {}", node.id),
                        &channel,
                        &peer,
                        truth,
                    )
                    .await,
            );
            let authored = truth.authored(&channel);
            for (origin, mark) in own.iter().chain(peer.iter()) {
                let wrote = authored.get(origin.as_str());
                if wrote.is_none_or(|w| mark > w) {
                    problems.push(format!(
                        "{}: a watermark of {origin} at {mark} is above everything it wrote ({wrote:?})",
                        node.id
                    ));
                }
            }
        }
    }
    assert!(problems.is_empty(), "{when}:\n{}", problems.join("\n"));
}

async fn converges_after_faults_heal(seed: u64) {
    let _guard = SeedGuard(seed);
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("server"), system_time()).await;
    let mut proxies = Vec::new();
    let mut nodes = Vec::new();
    for (i, id) in NODES.iter().enumerate() {
        let schedule = FaultSchedule::seeded(
            seed.wrapping_mul(31).wrapping_add(i as u64),
            FaultMix::default().with_chunk_faults_per_mille(CHUNK_FAULTS_PER_MILLE),
        );
        let proxy = FaultProxy::start(server.addr, schedule).await.unwrap();
        // Both codecs in every run.
        let codec = if (seed as usize + i) % 2 == 0 {
            Codec::MessagePack
        } else {
            Codec::Json
        };
        nodes.push(Node::open(&dir.path().join(id), id, &proxy.url(), &options(codec)).await);
        proxies.push(proxy);
    }
    let mut rng = Rng(seed);
    let mut truth = Truth::default();
    let app_turn = tokio::sync::Mutex::new(());
    let (mut rounds, mut failed, mut item_failures) = (0, 0, 0);
    for step in 0..STEPS {
        for (n, node) in nodes.iter().enumerate() {
            write_step(node, n, step, &mut rng, &mut truth).await;
        }
        // Every node syncs both channels at once, a few rounds each. Rounds on the app
        // channel take turns: concurrent requests on a channel of two tables can make the
        // responder cut a page with a hole (the ignored
        // `concurrent_rounds_on_two_tables_keep_watermarks_honest`); drop the lock once
        // that is fixed.
        let app_turn = &app_turn;
        let results = join_all(nodes.iter().map(|node| async move {
            let mut out = Vec::new();
            for _ in 0..ROUNDS_PER_STEP {
                for engine in [&node.drive, &node.app] {
                    let what = format!("{}'s round on {} (step {step})", node.id, engine.channel());
                    let _turn = match engine.channel() {
                        Channel::Drive => None,
                        _ => Some(app_turn.lock().await),
                    };
                    out.push(bounded(&what, engine.exchange()).await);
                }
            }
            out
        }))
        .await;
        for result in results.into_iter().flatten() {
            rounds += 1;
            match result {
                Ok(report) => item_failures += report.failures.len(),
                Err(e) => {
                    failed += 1;
                    assert!(
                        e.is_transient(),
                        "a network fault surfaced as a permanent error: {e}"
                    );
                }
            }
        }
        check_coverage(&nodes, &server, &truth, &format!("after step {step}")).await;
    }

    for proxy in &proxies {
        proxy.heal();
    }
    let mut quiet = false;
    for _pass in 0..6 {
        quiet = true;
        for node in &nodes {
            for engine in [&node.drive, &node.app] {
                let what = format!("{}'s sync on {} after healing", node.id, engine.channel());
                let s = bounded(&what, engine.sync_until_idle())
                    .await
                    .unwrap_or_else(|e| panic!("{what}: {e}"));
                assert!(s.complete, "{what} did not complete: {s:?}");
                quiet &= s.applied == 0 && s.shipped == 0 && s.became_resident == 0;
            }
        }
        if quiet {
            break;
        }
    }
    assert!(
        quiet,
        "still moving data after six passes over healed proxies"
    );

    let mut problems = server.view().check_converged(&truth).await;
    for node in &nodes {
        problems.extend(node.view().check_converged(&truth).await);
    }
    assert!(
        problems.is_empty(),
        "after healing:\n{}",
        problems.join("\n")
    );
    check_coverage(&nodes, &server, &truth, "after healing").await;
    let counts: Vec<FaultCounts> = proxies.iter().map(FaultProxy::counts).collect();
    let total = |f: fn(&FaultCounts) -> u64| counts.iter().map(f).sum::<u64>();
    eprintln!(
        "seed {seed}: {} writes, {rounds} rounds under faults ({failed} failed as a whole, \
         {item_failures} item failures); proxies: {counts:?}",
        truth.writes.len()
    );
    assert!(
        failed + item_failures > 0,
        "the faults must have failed rounds or items, or the test proves nothing"
    );
    assert!(
        total(|c| c.truncated + c.reset + c.dropped) > 0 && total(|c| c.stalled + c.delayed) > 0,
        "the schedule must have broken connections: {counts:?}"
    );
    for node in nodes {
        node.close().await;
    }
    drop(proxies);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nodes_converge_exactly_once_after_a_faulty_network_heals() {
    let first = env_u64("STARKEEP_NET_SEED").unwrap_or(0);
    let count = env_u64("STARKEEP_NET_SEEDS").unwrap_or(4);
    for seed in first..first + count {
        converges_after_faults_heal(seed).await;
    }
}

/// A node behind a proxy with `fault` on every connection, and a server.
async fn single(dir: &Path, fault: Fault, codec: Codec) -> (Server, FaultProxy, Node) {
    let server = Server::start(&dir.join("server"), system_time()).await;
    let proxy = FaultProxy::start(server.addr, FaultSchedule::always(fault))
        .await
        .unwrap();
    let node = Node::open(&dir.join("node"), "node-a", &proxy.url(), &options(codec)).await;
    (server, proxy, node)
}

fn assert_timed_out(what: &str, result: Result<impl std::fmt::Debug, Error>) {
    let err = result.expect_err(what);
    let text = err.to_string();
    assert!(err.is_transient(), "{what}: a timeout is transient: {text}");
    assert!(
        text.contains(&format!(
            "timed out after {} ms",
            REQUEST_TIMEOUT.as_millis()
        )),
        "{what}: the error names the timeout: {text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_connection_fails_the_round_with_a_timeout_instead_of_hanging() {
    for flow in [Flow::ToServer, Flow::ToClient] {
        let dir = tempfile::tempdir().unwrap();
        let stall = Fault::Stall { flow, after: 0 };
        let (server, proxy, node) = single(dir.path(), stall, Codec::MessagePack).await;
        let mut truth = Truth::default();
        truth.record(Item::Record(node.put_file("r1", &bytes(1, 5000)).await));
        truth.record(Item::Row(node.put_note("n1", "hello").await));

        // One round: the blob push (HEAD, then PUT) and the exchange each wait one request
        // timeout, no more.
        let started = Instant::now();
        let result = bounded("a round over a stalled connection", node.drive.exchange()).await;
        let took = started.elapsed();
        assert_timed_out(&format!("{flow:?}: the round"), result);
        assert!(
            took >= REQUEST_TIMEOUT && took < REQUEST_TIMEOUT * 6,
            "{flow:?}: the round took {took:?} with a {REQUEST_TIMEOUT:?} timeout"
        );

        // sync_until_idle retries (twice here), then reports the timeout.
        let started = Instant::now();
        let result = bounded("sync_until_idle over a stall", node.app.sync_until_idle()).await;
        let took = started.elapsed();
        assert_timed_out(&format!("{flow:?}: sync_until_idle"), result);
        assert!(took < REQUEST_TIMEOUT * 6, "{flow:?}: {took:?}");
        assert!(proxy.counts().stalled >= 2, "{:?}", proxy.counts());

        // Toward the client, the server did apply the note (a lost response); either way,
        // once healed everything lands exactly once.
        proxy.heal();
        for engine in [&node.drive, &node.app] {
            let s = bounded("sync after healing", engine.sync_until_idle())
                .await
                .unwrap();
            assert!(s.complete, "{s:?}");
        }
        let mut problems = server.view().check_converged(&truth).await;
        problems.extend(node.view().check_converged(&truth).await);
        assert!(problems.is_empty(), "{flow:?}:\n{}", problems.join("\n"));
        node.close().await;
        drop(proxy);
        server.stop().await;
    }
}

/// A stall after the response head of a blob download, or in the middle of a large upload:
/// the round must give up within a few request timeouts (as it does for a stall before the
/// head), reporting the blob as failed or the round as timed out.
async fn a_stall_inside_a_blob_body_times_out(flow: Flow, size: usize) {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("server"), system_time()).await;
    // The stall falls past every exchange body and blob head, inside the blob's body.
    let stall = Fault::Stall {
        flow,
        after: 256 * 1024,
    };
    let (writer_fault, reader_fault) = match flow {
        Flow::ToServer => (stall, Fault::Pass),
        Flow::ToClient => (Fault::Pass, stall),
    };
    let mut nodes = Vec::new();
    let mut proxies = Vec::new();
    for (id, fault) in [("writer", writer_fault), ("reader", reader_fault)] {
        let proxy = FaultProxy::start(server.addr, FaultSchedule::always(fault))
            .await
            .unwrap();
        let node = Node::open(
            &dir.path().join(id),
            id,
            &proxy.url(),
            &options(Codec::MessagePack),
        )
        .await;
        nodes.push(node);
        proxies.push(proxy);
    }
    let (writer, reader) = (&nodes[0], &nodes[1]);
    writer.put_file("big", &bytes(7, size)).await;
    let round = match flow {
        Flow::ToServer => &writer.drive,
        Flow::ToClient => {
            let s = bounded("the upload", writer.drive.sync_until_idle())
                .await
                .unwrap();
            assert!(s.complete, "{s:?}");
            &reader.drive
        }
    };
    let started = Instant::now();
    let result = bounded(
        &format!("a round with a stalled blob body ({flow:?})"),
        round.exchange(),
    )
    .await;
    let took = started.elapsed();
    match result {
        Err(e) => assert!(e.is_transient(), "{e}"),
        Ok(report) => assert!(
            !report.failures.is_empty() && report.has_more,
            "the stalled blob is reported as failed: {report:?}"
        ),
    }
    // An upload may take its size at a modest 1 MiB/s besides the request timeout (the
    // allowance a single put has): one part's worth before the stall shows.
    let allowance = match flow {
        Flow::ToServer => Duration::from_secs((sync_blobs::PART_SIZE >> 20) as u64),
        Flow::ToClient => Duration::ZERO,
    };
    assert!(
        took < REQUEST_TIMEOUT * 8 + allowance,
        "{flow:?}: the round took {took:?} with a {REQUEST_TIMEOUT:?} request timeout"
    );
    assert!(proxies.iter().any(|p| p.counts().stalled > 0));
    for node in nodes {
        node.close().await;
    }
    drop(proxies);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stall_inside_a_blob_download_times_out() {
    a_stall_inside_a_blob_body_times_out(Flow::ToClient, 1 << 20).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stall_inside_a_multipart_upload_times_out() {
    // Three 8 MiB parts: more than the socket buffers on the way can absorb.
    a_stall_inside_a_blob_body_times_out(Flow::ToServer, 20 << 20).await;
}

/// Found by the convergence test above: a node's own write that lost, at the server, to a
/// newer version of the same item (here without any fault: the other node synced first)
/// keeps the node's `status()` reporting outbound work for its own origin, although every
/// side has converged and the round has nothing to ship. The status compares the peer's
/// report with the local coverage, which counts replaced versions (decision 0008); the
/// server never held the losing version, so its report stays below it until the node's
/// next write lands.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_status_shows_no_outbound_work_after_a_write_lost_to_a_newer_one() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("server"), system_time()).await;
    let url = format!("http://{}", server.addr);
    let a = Node::open(&dir.path().join("a"), "node-a", &url, &options(Codec::Json)).await;
    let b = Node::open(
        &dir.path().join("b"),
        "node-b",
        &url,
        &options(Codec::MessagePack),
    )
    .await;
    let mut truth = Truth::default();
    truth.record(Item::Row(a.put_note("x", "from a").await));
    truth.record(Item::Row(b.put_note("x", "from b, later").await));
    for node in [&b, &a, &b] {
        let s = bounded("sync", node.app.sync_until_idle()).await.unwrap();
        assert!(s.complete, "{s:?}");
    }
    let mut problems = server.view().check_converged(&truth).await;
    for node in [&a, &b] {
        problems.extend(node.view().check_converged(&truth).await);
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    let status = a.app.status().await.unwrap();
    assert!(
        status.pending_outbound_nodes.is_empty(),
        "idle and converged, yet status shows pending outbound work: {status:?}"
    );
    for node in [a, b] {
        node.close().await;
    }
    server.stop().await;
}

/// Node C writes and syncs while node B runs rounds on the same channel as fast as it can;
/// after every burst, B's own watermark must not cover anything of C that B lacks.
async fn concurrent_rounds_keep_watermarks_honest(channel: Channel) {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("server"), system_time()).await;
    let url = format!("http://{}", server.addr);
    let b = Node::open(
        &dir.path().join("b"),
        "node-b",
        &url,
        &options(Codec::MessagePack),
    )
    .await;
    let c = Node::open(
        &dir.path().join("c"),
        "node-c",
        &url,
        &options(Codec::MessagePack),
    )
    .await;
    let (b_engine, c_engine) = (b.engine(&channel), c.engine(&channel));
    let mut truth = Truth::default();
    let started = Instant::now();
    let mut bursts = 0;
    while started.elapsed() < Duration::from_secs(4) {
        bursts += 1;
        for i in 0..10u64 {
            let id = format!("i{bursts}-{i}");
            if channel == Channel::Drive {
                truth.record(Item::Record(c.put_file(&id, &bytes(i, 100)).await));
                truth.record(Item::Record(
                    c.put_file(&format!("{id}b"), &bytes(i, 50)).await,
                ));
            } else {
                truth.record(Item::Row(c.put_note(&id, "x").await));
                truth.record(Item::Row(c.put_file_row(&id, &bytes(i, 100), "x").await));
            }
        }
        let done = std::sync::atomic::AtomicBool::new(false);
        let writer = async {
            let s = bounded("C's sync", c_engine.sync_until_idle())
                .await
                .unwrap();
            done.store(true, std::sync::atomic::Ordering::SeqCst);
            assert!(s.complete, "{s:?}");
        };
        let reader = async {
            while !done.load(std::sync::atomic::Ordering::SeqCst) {
                bounded("B's round", b_engine.exchange()).await.unwrap();
            }
        };
        tokio::join!(writer, reader);
        let (own, _) = watermarks(&b, &channel).await;
        let problems = b
            .view()
            .check_covered("its own watermark", &channel, &own, &truth)
            .await;
        assert!(
            problems.is_empty(),
            "{channel}, burst {bursts}:\n{}",
            problems.join("\n")
        );
    }
    eprintln!("{channel}: {bursts} bursts without a watermark ahead of the data");
    for node in [b, c] {
        node.close().await;
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_rounds_on_one_stream_keep_watermarks_honest() {
    concurrent_rounds_keep_watermarks_honest(Channel::Drive).await;
}

/// Found by the convergence test above (seed 310, not reproducible on demand), pinned down
/// here: a node's own watermark covered versions of another node it never received. The
/// responder reads each stream's coverage, then scans each stream, as separate store
/// calls; when another request's apply commits items of both tables in between, a page can
/// carry that node's later items from one table without its earlier items from the other,
/// and the requester's watermark jumps over the missing ones for good (data loss for that
/// requester). Fails within a few bursts today.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_rounds_on_two_tables_keep_watermarks_honest() {
    concurrent_rounds_keep_watermarks_honest(app_channel()).await;
}

/// The requester's side of the same race: a node writes to both tables of an app channel
/// while its own rounds run. Its outbound page is cut from per-stream reads too, so a page
/// may carry a later write from one table without an earlier one from the other, and the
/// server's coverage report then jumps over the earlier one: the node never ships it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn writes_during_rounds_all_reach_the_server() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("server"), system_time()).await;
    let url = format!("http://{}", server.addr);
    let c = Node::open(
        &dir.path().join("c"),
        "node-c",
        &url,
        &options(Codec::MessagePack),
    )
    .await;
    let mut truth = Truth::default();
    let started = Instant::now();
    let mut bursts = 0;
    while started.elapsed() < Duration::from_secs(10) {
        bursts += 1;
        let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
        // The rounds run on their own task, so they interleave with the writes for real.
        let rounds = tokio::spawn({
            let (engine, done) = (c.app.clone(), done.clone());
            async move {
                while !done.load(std::sync::atomic::Ordering::SeqCst) {
                    bounded("C's round", engine.exchange()).await.unwrap();
                }
            }
        });
        for i in 0..400u64 {
            let id = format!("w{bursts}-{i}");
            truth.record(if i % 2 == 0 {
                Item::Row(c.put_note(&id, "x").await)
            } else {
                Item::Row(c.put_file_row(&id, &bytes(i, 100), "x").await)
            });
        }
        done.store(true, std::sync::atomic::Ordering::SeqCst);
        rounds.await.unwrap();
        let s = bounded("C's sync", c.app.sync_until_idle()).await.unwrap();
        assert!(s.complete, "{s:?}");
        let problems = server.view().check_converged(&truth).await;
        assert!(
            problems.is_empty(),
            "burst {bursts}: {} of {} writes never reached the server:\n{}",
            problems.len(),
            truth.writes.len(),
            problems.join("\n")
        );
    }
    eprintln!("{bursts} bursts of writes during rounds, all on the server");
    c.close().await;
    server.stop().await;
}
