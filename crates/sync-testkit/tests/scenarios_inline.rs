//! Inline small blobs (protocol version 2, issue 7): a blob at most the negotiated size rides
//! inside the exchange instead of one `/files` request each, in both directions, with the
//! same guarantees as a transfer: verified against the content hash before it is stored,
//! nothing stored for a refused item, per-origin contiguity, and a peer without the
//! extension still converges.

use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use futures::executor::block_on;
use sync_core::{
    Direction, ExchangeError, ExchangeTransport, ItemProblem, Requester, RequesterParts, Residency,
    ResponderConfig,
};
use sync_protocol::{ExchangeRequest, ExchangeResponse};
use sync_testkit::{
    harness::Pair,
    memory::{FaultyTransport, MemoryTransfer},
};

const LIMIT: u64 = 1024;

type Tamper<T> = Box<dyn Fn(&mut T) + Send + Sync>;

/// The transport between the two sides of a pair, keeping what went each way and letting a
/// test tamper with the messages.
struct Wire {
    inner: Arc<dyn ExchangeTransport>,
    requests: Mutex<Vec<ExchangeRequest>>,
    responses: Mutex<Vec<ExchangeResponse>>,
    on_request: Mutex<Option<Tamper<ExchangeRequest>>>,
    on_response: Mutex<Option<Tamper<ExchangeResponse>>>,
}

#[async_trait]
impl ExchangeTransport for Wire {
    async fn exchange(
        &self,
        mut request: ExchangeRequest,
    ) -> Result<ExchangeResponse, ExchangeError> {
        if let Some(f) = &*self.on_request.lock().unwrap() {
            f(&mut request);
        }
        self.requests.lock().unwrap().push(request.clone());
        let mut response = self.inner.exchange(request).await?;
        if let Some(f) = &*self.on_response.lock().unwrap() {
            f(&mut response);
        }
        self.responses.lock().unwrap().push(response.clone());
        Ok(response)
    }
}

/// A pair whose blob stores take blobs up to [`LIMIT`] inline, with one long-lived
/// requester (it learns the responder's limit from the first response, as an engine does).
struct Inline {
    pair: Pair,
    wire: Arc<Wire>,
    requester: Requester,
}

impl Inline {
    fn new(pair: Pair, responder: ResponderConfig) -> Self {
        pair.local.blobs.set_inline_limit(LIMIT);
        pair.cloud.blobs.set_inline_limit(LIMIT);
        let wire = Arc::new(Wire {
            inner: Arc::new(pair.cloud.responder(&pair.channel, responder)),
            requests: Mutex::default(),
            responses: Mutex::default(),
            on_request: Mutex::default(),
            on_response: Mutex::default(),
        });
        let requester = Requester::new(RequesterParts {
            data: pair.local.data(&pair.channel),
            state: pair.local.state.clone(),
            transfer: Arc::new(MemoryTransfer {
                local: pair.local.blobs.clone(),
                remote: pair.cloud.blobs.clone(),
            }),
            transport: Arc::new(FaultyTransport {
                inner: wire.clone(),
                faults: pair.transport_faults.clone(),
            }),
            clock: pair.local.clock.clone(),
            time: pair.local.time.clone(),
            config: pair.config.clone(),
        });
        Self {
            pair,
            wire,
            requester,
        }
    }

    fn drive() -> Self {
        Self::new(Pair::drive(), ResponderConfig::default())
    }

    fn round(&self) -> sync_core::RoundReport {
        block_on(self.requester.exchange()).expect("round")
    }

    fn last_request(&self) -> ExchangeRequest {
        self.wire.requests.lock().unwrap().last().cloned().unwrap()
    }

    fn last_response(&self) -> ExchangeResponse {
        self.wire.responses.lock().unwrap().last().cloned().unwrap()
    }
}

#[test]
fn in01_the_first_round_learns_the_limit_then_small_blobs_ride_in_the_request() {
    let t = Inline::drive();
    let r1 = t.pair.local.put_record("R1", Some(b"first small blob"));
    let r = t.round();
    assert_eq!((r.shipped, r.has_more), (1, false));
    // Round 1: the responder's limit is not known yet, so the blob went through a push.
    let req = t.last_request();
    assert_eq!(req.accept_inline_blobs, Some(LIMIT));
    assert!(req.inline_blobs.is_empty());
    assert_eq!(t.last_response().accept_inline_blobs, Some(LIMIT));
    assert!(t.pair.cloud.blobs.has(&r1.object_storage_key));

    let small = t.pair.local.put_record("R2", Some(b"second small blob"));
    let big_bytes = vec![7u8; LIMIT as usize + 1];
    let big = t.pair.local.put_record("R3", Some(&big_bytes));
    let puts_before = t.pair.cloud.blobs.put_count();
    let r = t.round();
    assert_eq!((r.shipped, r.has_more), (2, false), "{r:?}");
    let req = t.last_request();
    let inline: Vec<&str> = req.inline_blobs.iter().map(|b| b.key.as_str()).collect();
    assert_eq!(
        inline,
        [small.object_storage_key.as_str()],
        "only the small one"
    );
    assert_eq!(req.inline_blobs[0].bytes, b"second small blob");
    // Both blobs are at the responder, byte for byte, one of them pushed.
    assert_eq!(
        t.pair
            .cloud
            .blobs
            .bytes(&small.object_storage_key)
            .as_deref(),
        Some(&b"second small blob"[..])
    );
    assert_eq!(
        t.pair.cloud.blobs.bytes(&big.object_storage_key),
        Some(big_bytes)
    );
    assert_eq!(t.pair.cloud.blobs.put_count(), puts_before + 2);
    assert_eq!(t.pair.cloud.record_residency("R2"), Residency::Resident);
    assert_eq!(t.pair.cloud.record("R3"), t.pair.local.record("R3"));
}

#[test]
fn in02_a_page_arrives_with_its_small_blobs_and_lands_resident() {
    let t = Inline::drive();
    let a = t.pair.cloud.put_record("A", Some(b"blob a"));
    let b = t.pair.cloud.put_record("B", Some(b"blob b"));
    let c = t.pair.cloud.put_record("C", None);
    let r = t.round();
    assert_eq!((r.applied, r.has_more), (3, false), "{r:?}");
    let resp = t.last_response();
    let mut keys: Vec<&str> = resp.inline_blobs.iter().map(|b| b.key.as_str()).collect();
    keys.sort();
    let mut want = [a.object_storage_key.as_str(), b.object_storage_key.as_str()];
    want.sort();
    assert_eq!(keys, want);
    for id in ["A", "B", "C"] {
        assert_eq!(
            t.pair.local.record_residency(id),
            Residency::Resident,
            "{id}"
        );
    }
    assert_eq!(
        t.pair.local.blobs.bytes(&a.object_storage_key).as_deref(),
        Some(&b"blob a"[..])
    );
    assert!(c.object_storage_key.is_empty());
    assert_eq!(t.pair.own().get("cloud"), Some(&c.updated_at));
}

#[test]
fn in03_a_corrupted_inline_blob_in_a_request_is_refused_and_nothing_is_stored() {
    let t = Inline::drive();
    t.pair.local.put_record("warm-up", Some(b"learn the limit"));
    t.round();
    let r1 = t.pair.local.put_record("R1", Some(b"will be corrupted"));
    let r2 = t.pair.local.put_record("R2", Some(b"behind it"));
    *t.wire.on_request.lock().unwrap() = Some(Box::new(|req: &mut ExchangeRequest| {
        for blob in &mut req.inline_blobs {
            blob.bytes[0] ^= 0xff;
        }
    }));
    let r = t.round();
    assert_eq!(r.halted_by_peer, vec![t.pair.local.node.clone()]);
    assert!(
        r.peer_refusals[0].reason.contains("content hash"),
        "{:?}",
        r.peer_refusals
    );
    // Nothing of either item, and no bytes at either key.
    assert_eq!(t.pair.cloud.record("R1"), None);
    assert_eq!(t.pair.cloud.record("R2"), None);
    assert!(!t.pair.cloud.blobs.has(&r1.object_storage_key));
    assert!(!t.pair.cloud.blobs.has(&r2.object_storage_key));
    assert!(t.pair.peer().get("local") < Some(&r1.updated_at));

    // The wire heals: the next round ships both again, and they land.
    *t.wire.on_request.lock().unwrap() = None;
    let r = t.round();
    assert_eq!((r.shipped, r.halted_by_peer.len()), (2, 0), "{r:?}");
    assert_eq!(t.pair.cloud.record_residency("R1"), Residency::Resident);
    assert_eq!(t.pair.cloud.record_residency("R2"), Residency::Resident);
    assert_eq!(t.pair.peer().get("local"), Some(&r2.updated_at));
}

#[test]
fn in04_a_corrupted_inline_blob_in_a_response_stages_the_item_and_the_next_round_lands_it() {
    let t = Inline::drive();
    let a = t.pair.cloud.put_record("A", Some(b"blob a"));
    *t.wire.on_response.lock().unwrap() = Some(Box::new(|resp: &mut ExchangeResponse| {
        for blob in &mut resp.inline_blobs {
            blob.bytes.push(b'!');
        }
    }));
    let r = t.round();
    assert_eq!(r.applied, 0);
    assert!(r.has_more);
    let failure = &r.failures[0];
    assert_eq!(failure.direction, Direction::Inbound);
    assert!(
        matches!(&failure.problem, ItemProblem::Blob(m) if m.contains("content hash")),
        "{failure:?}"
    );
    assert_eq!(t.pair.local.record_residency("A"), Residency::Staged);
    assert!(!t.pair.local.blobs.has(&a.object_storage_key));
    assert_eq!(
        t.pair.own().get("cloud"),
        None,
        "the watermark stays behind it"
    );

    *t.wire.on_response.lock().unwrap() = None;
    let r = t.round();
    assert_eq!(r.became_resident, 1, "{r:?}");
    assert!(!r.has_more);
    assert_eq!(t.pair.local.record_residency("A"), Residency::Resident);
    assert_eq!(t.pair.own().get("cloud"), Some(&a.updated_at));
}

#[test]
fn in05_inline_blobs_no_item_names_or_outside_the_namespace_are_never_stored() {
    let t = Inline::drive();
    t.pair.local.put_record("warm-up", Some(b"learn the limit"));
    t.round();
    let r = t.pair.local.put_record("R", None);
    *t.wire.on_request.lock().unwrap() = Some(Box::new(|req: &mut ExchangeRequest| {
        req.inline_blobs.push(sync_protocol::InlineBlob {
            key: "shared/test/zz/stowaway".into(),
            bytes: b"not named by any item".to_vec(),
        });
    }));
    let rep = t.round();
    assert_eq!((rep.shipped, rep.halted_by_peer.len()), (1, 0));
    assert_eq!(t.pair.cloud.record("R"), Some(r));
    assert!(!t.pair.cloud.blobs.has("shared/test/zz/stowaway"));

    // A Drive record naming an app's key, with the bytes inline: refused, nothing stored.
    *t.wire.on_request.lock().unwrap() = None;
    let bytes = b"escape attempt";
    let mut evil = t.pair.local.make_record("EVIL", Some(bytes));
    let hash = evil.content_hash.clone();
    evil.object_storage_key = format!("apps/other/syncable/{hash}");
    t.pair.local.blobs.insert(&evil.object_storage_key, bytes);
    t.pair.local.apply_record(&evil);
    let rep = t.round();
    assert_eq!(
        rep.halted_by_peer,
        vec![t.pair.local.node.clone()],
        "{rep:?}"
    );
    assert!(rep.peer_refusals[0].reason.contains("namespace"));
    assert_eq!(t.pair.cloud.record("EVIL"), None);
    assert!(!t.pair.cloud.blobs.has(&evil.object_storage_key));
}

#[test]
fn in06_a_responder_without_inline_blobs_refuses_them_and_the_next_round_pushes() {
    // A peer that takes none (a TypeScript responder ignores `inlineBlobs` and finds the
    // blob missing): the items are refused, the requester learns, and pushes instead.
    let pair = Pair::drive();
    let t = Inline::new(pair, ResponderConfig::default().with_inline_blob_limit(0));
    let t = Inline {
        requester: t.requester.assume_peer_inline_limit(LIMIT),
        ..t
    };
    let r1 = t.pair.local.put_record("R1", Some(b"small"));
    let rep = t.round();
    assert_eq!(t.last_request().inline_blobs.len(), 1);
    assert_eq!(rep.halted_by_peer, vec![t.pair.local.node.clone()]);
    assert_eq!(t.last_response().accept_inline_blobs, None);
    assert!(!t.pair.cloud.blobs.has(&r1.object_storage_key));

    let rep = t.round();
    assert!(t.last_request().inline_blobs.is_empty());
    assert_eq!((rep.shipped, rep.has_more), (1, false), "{rep:?}");
    assert_eq!(t.pair.cloud.record_residency("R1"), Residency::Resident);
}

#[test]
fn in06b_rounds_until_idle_pull_first_and_then_ship_small_blobs_inline() {
    // A requester that has not heard from its peer yet: the first round of a sync until
    // idle ships nothing and learns the limit, so the page's small blobs ride inside the
    // next request instead of one upload each; a larger blob is still pushed.
    let t = Inline::drive();
    let small: Vec<_> = (0..5)
        .map(|i| {
            t.pair
                .local
                .put_record(&format!("S{i}"), Some(format!("small {i}").as_bytes()))
        })
        .collect();
    let big = t
        .pair
        .local
        .put_record("B", Some(&vec![3u8; LIMIT as usize + 1]));
    let summary = block_on(t.requester.sync_until_idle(10)).expect("sync");
    assert!(summary.complete, "{summary:?}");
    assert_eq!(summary.shipped, 6, "{summary:?}");
    let requests = t.wire.requests.lock().unwrap().clone();
    assert!(
        requests[0].records.is_empty() && requests[0].inline_blobs.is_empty(),
        "the first request only pulls: {:?}",
        requests[0]
    );
    assert_eq!(requests[1].records.len(), 6);
    assert_eq!(requests[1].inline_blobs.len(), 5);
    // Only the large blob was pushed; every blob is at the responder.
    assert_eq!(t.pair.cloud.blobs.put_count(), 1 + 5);
    for r in small.iter().chain([&big]) {
        assert_eq!(
            t.pair.cloud.blobs.bytes(&r.object_storage_key),
            t.pair.local.blobs.bytes(&r.object_storage_key)
        );
    }
    // Once known, a later sync ships in its first round.
    t.pair.local.put_record("S9", Some(b"later"));
    let before = t.wire.requests.lock().unwrap().len();
    let summary = block_on(t.requester.sync_until_idle(10)).expect("sync");
    assert_eq!((summary.shipped, summary.rounds), (1, 1), "{summary:?}");
    assert_eq!(
        t.wire.requests.lock().unwrap()[before].inline_blobs.len(),
        1
    );
}

#[test]
fn in06c_rounds_until_idle_with_a_peer_without_inline_blobs_push_after_learning() {
    // A TypeScript responder announces no inline limit: after the pulling round, the blobs
    // go through `/files` as before, and everything lands.
    let t = Inline::new(
        Pair::drive(),
        ResponderConfig::default().with_inline_blob_limit(0),
    );
    let r = t.pair.local.put_record("R1", Some(b"small"));
    let summary = block_on(t.requester.sync_until_idle(10)).expect("sync");
    assert!(summary.complete, "{summary:?}");
    let requests = t.wire.requests.lock().unwrap().clone();
    assert!(requests[0].records.is_empty());
    assert!(requests.iter().all(|q| q.inline_blobs.is_empty()));
    assert_eq!(t.pair.cloud.record_residency("R1"), Residency::Resident);
    assert!(t.pair.cloud.blobs.has(&r.object_storage_key));
}

#[test]
fn in07_the_budget_bounds_inline_bytes_per_message_and_the_rest_still_lands() {
    let pair = Pair::drive();
    let mut pair = pair;
    pair.config = pair.config.clone().with_inline_budget(250);
    let t = Inline::new(pair, ResponderConfig::default().with_inline_budget(250));
    t.pair.local.put_record("warm-up", Some(b"learn the limit"));
    t.round();
    for i in 0..5 {
        t.pair
            .local
            .put_record(&format!("up{i}"), Some(&[i as u8; 100]));
        t.pair
            .cloud
            .put_record(&format!("down{i}"), Some(&[100 + i as u8; 100]));
    }
    let rep = t.round();
    assert_eq!((rep.shipped, rep.applied, rep.has_more), (5, 5, false));
    assert_eq!(
        t.last_request().inline_blobs.len(),
        2,
        "250 bytes: two of 100"
    );
    assert_eq!(t.last_response().inline_blobs.len(), 2);
    for i in 0..5 {
        assert_eq!(
            t.pair.cloud.record_residency(&format!("up{i}")),
            Residency::Resident
        );
        assert_eq!(
            t.pair.local.record_residency(&format!("down{i}")),
            Residency::Resident
        );
    }
}

#[test]
fn in08_an_lww_loser_lands_no_inline_blob() {
    let t = Inline::drive();
    let old = t.pair.cloud.put_record("X", Some(b"old bytes"));
    let new = t.pair.local.put_record("X", Some(b"new bytes"));
    assert!(new.updated_at > old.updated_at);
    // The local version is taken as already shipped, so the cloud's older one comes down.
    let mut peer = sync_hlc::Watermarks::default();
    peer.advance(&new.updated_at);
    t.pair.set_watermarks(sync_hlc::Watermarks::default(), peer);
    let r = t.round();
    assert_eq!((r.shipped, r.applied), (0, 0), "{r:?}");
    let resp = t.last_response();
    assert_eq!(resp.records, vec![old.clone()]);
    assert_eq!(
        resp.inline_blobs[0].key, old.object_storage_key,
        "sent inline"
    );
    assert_eq!(t.pair.local.record("X"), Some(new));
    assert!(
        !t.pair.local.blobs.has(&old.object_storage_key),
        "the loser's blob is not landed"
    );
    assert_eq!(t.pair.own().get("cloud"), Some(&old.updated_at));
}

#[test]
fn in09_the_time_budget_bounds_inline_reads_and_the_rest_still_lands() {
    // A responder with no time for inline reads (its object storage as good as stalled)
    // sends none; the requester pulls every blob through `/files` in the same round.
    let t = Inline::new(
        Pair::drive(),
        ResponderConfig::default().with_inline_time_budget_ms(0),
    );
    for i in 0..3 {
        t.pair
            .cloud
            .put_record(&format!("down{i}"), Some(&[i as u8; 100]));
    }
    let rep = t.round();
    assert_eq!((rep.applied, rep.has_more), (3, false), "{rep:?}");
    assert!(t.last_request().accept_inline_blobs.is_some());
    assert!(t.last_response().inline_blobs.is_empty());
    for i in 0..3 {
        assert_eq!(
            t.pair.local.record_residency(&format!("down{i}")),
            Residency::Resident
        );
    }
    // With the default budget the same page rides inline.
    let t = Inline::drive();
    for i in 0..3 {
        t.pair
            .cloud
            .put_record(&format!("down{i}"), Some(&[i as u8; 100]));
    }
    assert_eq!(t.round().applied, 3);
    assert_eq!(t.last_response().inline_blobs.len(), 3);
}

/// Decision 0032: a round reports the blob bytes it moved, by way (`/files` or inline,
/// each direction); a blob the other side already had moves nothing.
#[test]
fn in_blob_bytes_are_counted_per_round_by_way() {
    let t = Inline::drive();
    t.pair.local.put_record("R1", Some(b"first small blob"));
    let r = t.round();
    // The responder's inline limit is learned from this round: pushed.
    assert_eq!((r.blob_bytes_pushed, r.inline_bytes_sent), (16, 0));
    let big = vec![7u8; LIMIT as usize + 1];
    t.pair.local.put_record("R2", Some(b"second"));
    t.pair.local.put_record("R3", Some(&big));
    let r = t.round();
    assert_eq!((r.blob_bytes_pushed, r.inline_bytes_sent), (LIMIT + 1, 6));
    assert_eq!((r.blob_bytes_pulled, r.inline_bytes_received), (0, 0));

    t.pair.cloud.put_record("C1", Some(b"cloud small"));
    t.pair
        .cloud
        .put_record("C2", Some(&vec![8u8; LIMIT as usize + 2]));
    // Bytes this node already holds under the same key: nothing moves for it.
    t.pair.cloud.put_record("C3", Some(&big));
    let r = t.round();
    assert_eq!(r.applied, 3, "{r:?}");
    assert_eq!(
        (r.blob_bytes_pulled, r.inline_bytes_received),
        (LIMIT + 2, 11)
    );
    assert_eq!((r.blob_bytes_pushed, r.inline_bytes_sent), (0, 0));

    let r = t.round();
    assert_eq!(
        (
            r.blob_bytes_pushed,
            r.blob_bytes_pulled,
            r.inline_bytes_sent,
            r.inline_bytes_received
        ),
        (0, 0, 0, 0)
    );
}
