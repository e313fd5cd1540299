//! Issue 8, "Clocks": three nodes and a real server on loopback, each with a physical clock
//! the test controls. Node A's clock runs two hours ahead, node B's two hours behind, and
//! node C's jumps back 30 minutes mid-run (and C restarts while it is behind). With the
//! default one-hour skew guard (SPEC §3):
//!
//! * A's items are refused by the server while its physical time is behind them, and by
//!   the other nodes once the server has them; each refusal names the offending timestamp
//!   and says to check the clock. The server's clock is never dragged forward by them.
//! * B's and C's writes are all accepted; B refuses what others wrote at the true time
//!   (two hours ahead of B's clock) until B's clock is fixed.
//! * No node ever issues a timestamp at or below one it issued before, across C's jump and
//!   restart.
//! * Once the clocks are fixed and time has caught up with A's timestamps, every side
//!   converges, and no watermark is ever ahead of the data.
//!
//! The round-level rules on in-memory ports are in sync-testkit's `scenarios_clock.rs`; the
//! clock arithmetic in sync-hlc's unit and property tests.

mod loopback;

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use loopback::{app_channel, bytes, watermarks, Node, NodeOptions, Server, Truth};
use sync_engine::{
    core::{Direction, Item, ItemProblem, RoundReport, SyncStateStore, TimeSource},
    hlc::Hlc,
    protocol::Codec,
    Channel, RetryPolicy,
};
use sync_testkit::memory::{AtomicI64Wrapper, ManualTime, SkewedTime};

const MINUTE: i64 = 60 * 1000;
const HOUR: i64 = 60 * MINUTE;

/// The true time at the start (a fixed instant, so runs are alike).
const T0: u64 = 1_760_000_000_000;

/// A side's physical clock: the true time plus an offset the test sets.
fn skewed(world: &Arc<ManualTime>, offset_ms: i64) -> Arc<SkewedTime> {
    Arc::new(SkewedTime {
        base: world.clone(),
        offset_ms: AtomicI64Wrapper::new(offset_ms),
    })
}

fn options(codec: Codec, time: Arc<SkewedTime>) -> NodeOptions {
    NodeOptions {
        codec,
        request_timeout: Duration::from_secs(10),
        retry: RetryPolicy::none(),
        time,
    }
}

/// Every timestamp each node issued, in the order it issued them.
#[derive(Default)]
struct Issued(BTreeMap<String, Vec<Hlc>>);

impl Issued {
    fn note(&mut self, node: &Node, item: &Item) {
        self.0
            .entry(node.id.clone())
            .or_default()
            .push(item.hlc().clone());
    }

    /// Each node's timestamps are strictly increasing: none reissued, none went back.
    fn assert_strictly_increasing(&self) {
        for (node, stamps) in &self.0 {
            for pair in stamps.windows(2) {
                assert!(
                    pair[0] < pair[1],
                    "{node} issued {} after {}: a timestamp at or below an earlier one",
                    pair[1],
                    pair[0]
                );
            }
        }
    }

    fn of(&self, node: &str) -> &[Hlc] {
        self.0.get(node).map_or(&[], Vec::as_slice)
    }
}

/// A few writes of every kind on both channels; returns what was written.
async fn writes(node: &Node, tag: &str, truth: &mut Truth, issued: &mut Issued) -> Vec<Item> {
    let seed = tag
        .bytes()
        .fold(7u64, |h, b| h.wrapping_mul(31) ^ u64::from(b));
    let items = vec![
        Item::Record(node.put_file(&format!("f-{tag}"), &bytes(seed, 3000)).await),
        Item::Record(
            node.put_file(&format!("big-{tag}"), &bytes(seed + 1, 200_000))
                .await,
        ),
        Item::Row(
            node.put_file_row(&format!("ar-{tag}"), &bytes(seed + 2, 1000), tag)
                .await,
        ),
        Item::Row(node.put_note(&format!("note-{tag}"), tag).await),
        Item::Row(node.put_note("note-shared", tag).await),
    ];
    for item in &items {
        truth.record(item.clone());
        issued.note(node, item);
    }
    items
}

/// One round on each channel of `node`.
async fn rounds(node: &Node) -> Vec<RoundReport> {
    let mut reports = Vec::new();
    for engine in [&node.drive, &node.app] {
        reports.push(
            engine
                .exchange()
                .await
                .unwrap_or_else(|e| panic!("{}'s round on {}: {e}", node.id, engine.channel())),
        );
    }
    reports
}

/// What `view` holds of the items `items`: how many are there at that version.
async fn held(view: &loopback::View, items: &[Item]) -> usize {
    let mut n = 0;
    for item in items {
        let key = match item {
            Item::Record(r) => loopback::Key::Record(r.id.clone()),
            Item::Row(r) => {
                let id = r.row.as_ref().unwrap()["id"].as_str().unwrap().to_string();
                loopback::Key::Row(r.table.clone(), id)
            }
        };
        if view.get(&key).await.is_some_and(|h| h.hlc() >= item.hlc()) {
            n += 1;
        }
    }
    n
}

async fn check_coverage(nodes: &[&Node], server: &Server, truth: &Truth, when: &str) {
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
                    .check_covered("the server's report", &channel, &peer, truth)
                    .await,
            );
        }
    }
    assert!(problems.is_empty(), "{when}:\n{}", problems.join("\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skewed_clocks_are_refused_with_a_hint_never_reissue_and_converge_once_fixed() {
    let dir = tempfile::tempdir().unwrap();
    // Every read of the true time moves it on by a millisecond.
    let world = ManualTime::new(T0, 1);
    let server_time = skewed(&world, 0);
    let (a_time, b_time, c_time) = (
        skewed(&world, 2 * HOUR),
        skewed(&world, -2 * HOUR),
        skewed(&world, 0),
    );
    let server = Server::start(&dir.path().join("server"), server_time.clone()).await;
    let url = format!("http://{}", server.addr);
    let a = Node::open(
        &dir.path().join("a"),
        "node-a",
        &url,
        &options(Codec::Json, a_time.clone()),
    )
    .await;
    let b = Node::open(
        &dir.path().join("b"),
        "node-b",
        &url,
        &options(Codec::MessagePack, b_time.clone()),
    )
    .await;
    let c_options = options(Codec::Json, c_time.clone());
    let mut c = Node::open(&dir.path().join("c"), "node-c", &url, &c_options).await;
    let mut truth = Truth::default();
    let mut issued = Issued::default();

    // Phase 1: A ahead, B behind, C right.
    let a_items = writes(&a, "a1", &mut truth, &mut issued).await;
    let b_items = writes(&b, "b1", &mut truth, &mut issued).await;
    let c_items = writes(&c, "c1", &mut truth, &mut issued).await;
    let mut a_reports = Vec::new();
    let mut b_reports = Vec::new();
    for _ in 0..2 {
        a_reports.extend(rounds(&a).await);
        b_reports.extend(rounds(&b).await);
        rounds(&c).await;
    }

    // The server refused every item of A, on both channels, with the offending value and
    // a hint, and halted A; its clock stayed where its own physical time and the accepted
    // items put it.
    assert_eq!(
        held(&server.view(), &a_items).await,
        0,
        "A's items are refused"
    );
    let a_first: Vec<&Hlc> = [&a_items[0], &a_items[2]].map(Item::hlc).to_vec();
    for (report, first) in a_reports.iter().take(2).zip(&a_first) {
        assert_eq!(report.halted_by_peer, vec![a.drive.node_id().clone()]);
        let refusal = &report.peer_refusals[0];
        assert_eq!(
            &&refusal.at, first,
            "the refusal names A's first unaccepted item"
        );
        assert!(
            refusal.reason.contains(&first.to_string())
                && refusal.reason.contains("ahead")
                && refusal.reason.contains("check the clock of node node-a"),
            "the offending value and a hint: {}",
            refusal.reason
        );
        assert!(report.has_more && report.stalled(), "{report:?}");
    }
    let summary = a.drive.sync_until_idle().await.unwrap();
    assert!(
        summary.stalled && !summary.complete,
        "A's sync ends stalled, not in an error and not complete: {summary:?}"
    );
    let a_min_wall = a_items.iter().map(|i| i.hlc().wall_time()).min().unwrap();
    assert!(
        server.clock_last().wall_time() <= server_time.now_ms()
            && server.clock_last().wall_time() < a_min_wall,
        "the server's clock was dragged toward A's: {}",
        server.clock_last()
    );

    // B's and C's writes were all accepted; A took them (they are behind its clock).
    assert_eq!(held(&server.view(), &b_items).await, b_items.len());
    assert_eq!(held(&server.view(), &c_items).await, c_items.len());
    assert_eq!(held(&a.view(), &b_items).await, b_items.len());
    assert_eq!(held(&a.view(), &c_items).await, c_items.len());
    assert_eq!(held(&c.view(), &b_items).await, b_items.len());

    // B refused C's items, written at the true time, two hours ahead of B's clock: an
    // inbound skew refusal naming C's timestamp, with a hint; B's clock stayed behind them.
    assert_eq!(held(&b.view(), &c_items).await, 0);
    let b_refusals: Vec<_> = b_reports
        .iter()
        .flat_map(|r| &r.failures)
        .filter(|f| f.direction == Direction::Inbound)
        .collect();
    assert!(!b_refusals.is_empty(), "B reports what it refused");
    for f in &b_refusals {
        match &f.problem {
            ItemProblem::Skew(s) => {
                assert_eq!(s.remote, f.at);
                assert_eq!(s.remote.node_id().as_str(), "node-c");
                assert!(s.ahead_ms > HOUR as u64);
                let text = f.problem.to_string();
                assert!(
                    text.contains(&f.at.to_string()) && text.contains("check the clock"),
                    "{text}"
                );
            }
            other => panic!("B failed an item for another reason: {other}"),
        }
    }
    let c_min_wall = c_items.iter().map(|i| i.hlc().wall_time()).min().unwrap();
    assert!(b.drive.clock().lock().unwrap().last().wall_time() < c_min_wall);
    check_coverage(&[&a, &b, &c], &server, &truth, "phase 1").await;

    // C's clock jumps back 30 minutes: its timestamps keep increasing (the HLC holds its
    // wall time and counts), and the server accepts them.
    c_time.offset_ms.set(-30 * MINUTE);
    let c_items2 = writes(&c, "c2", &mut truth, &mut issued).await;
    let c_before_jump = issued.of("node-c")[c_items.len() - 1].clone();
    assert!(c_items2
        .iter()
        .all(|i| i.hlc().wall_time() >= c_before_jump.wall_time()));
    rounds(&c).await;
    assert_eq!(held(&server.view(), &c_items2).await, c_items2.len());

    // C restarts while 30 minutes behind: the clock state it persisted keeps it above
    // everything it issued.
    let last = issued.of("node-c").last().unwrap().clone();
    let persisted = c
        .store
        .load_clock()
        .await
        .unwrap()
        .expect("C saved its clock");
    assert!(
        (persisted.wall_time, persisted.counter) >= (last.wall_time(), last.counter()),
        "the persisted clock {persisted:?} is below C's last timestamp {last}"
    );
    c.close().await;
    c = Node::open(&dir.path().join("c"), "node-c", &url, &c_options).await;
    let c_items3 = writes(&c, "c3", &mut truth, &mut issued).await;
    for item in &c_items3 {
        assert!(
            item.hlc() > &last,
            "C reissued after its restart: {} is not above {last}",
            item.hlc()
        );
    }
    rounds(&c).await;
    assert_eq!(held(&server.view(), &c_items3).await, c_items3.len());
    issued.assert_strictly_increasing();

    // A fixes its clock, but its timestamps stay ahead: an HLC never goes back, so A's next
    // write is stamped above its last one, two hours ahead, and is refused too, until the
    // true time has caught up to within an hour of them.
    a_time.offset_ms.set(0);
    let a_items2 = writes(&a, "a2", &mut truth, &mut issued).await;
    assert!(a_items2.iter().all(|i| i.hlc().wall_time() >= a_min_wall));
    let reports = rounds(&a).await;
    assert!(reports.iter().all(|r| !r.peer_refusals.is_empty()));
    assert_eq!(held(&server.view(), &a_items2).await, 0);

    // The server's time runs ahead to within the guard of A's timestamps: it accepts them,
    // and the nodes, still at the true time (C 30 minutes behind), refuse them in turn.
    server_time.offset_ms.set(HOUR + 5 * MINUTE);
    let reports = rounds(&a).await;
    assert!(
        reports.iter().all(|r| r.peer_refusals.is_empty()),
        "{reports:?}"
    );
    assert_eq!(held(&server.view(), &a_items).await, a_items.len());
    b_time.offset_ms.set(0);
    for node in [&b, &c] {
        let reports = rounds(node).await;
        let skewed: Vec<_> = reports
            .iter()
            .flat_map(|r| &r.failures)
            .filter(|f| matches!(&f.problem, ItemProblem::Skew(s) if s.remote.node_id().as_str() == "node-a"))
            .collect();
        assert!(!skewed.is_empty(), "{} refuses A's items", node.id);
        assert_eq!(held(&node.view(), &a_items).await, 0);
    }
    check_coverage(&[&a, &b, &c], &server, &truth, "server ahead").await;

    // Time catches up: the true time moves on by an hour and five minutes (the server's
    // clock with it, continuously), C's clock is fixed. Everything converges.
    world.advance(HOUR + 5 * MINUTE);
    server_time.offset_ms.set(0);
    c_time.offset_ms.set(0);
    // B writes again, at the true time; on `note-shared` A's earlier write still wins, as
    // it carries the larger timestamp (last-write-wins by HLC, not by the true time).
    writes(&b, "b2", &mut truth, &mut issued).await;
    for _pass in 0..2 {
        for node in [&a, &b, &c] {
            for engine in [&node.drive, &node.app] {
                let s = engine.sync_until_idle().await.unwrap();
                assert!(s.complete, "{} on {}: {s:?}", node.id, engine.channel());
            }
        }
    }
    let mut problems = server.view().check_converged(&truth).await;
    for node in [&a, &b, &c] {
        problems.extend(node.view().check_converged(&truth).await);
    }
    assert!(
        problems.is_empty(),
        "after the clocks were fixed:\n{}",
        problems.join("\n")
    );
    check_coverage(&[&a, &b, &c], &server, &truth, "converged").await;
    issued.assert_strictly_increasing();

    for node in [a, b, c] {
        node.close().await;
    }
    server.stop().await;
}
