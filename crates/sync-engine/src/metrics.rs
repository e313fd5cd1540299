//! Node counters: what an operator sees of a node's rounds (docs/decisions/0032).
//!
//! Everything here is derived from what a round already reports ([`RoundReport`]) and from
//! the channel's persisted watermarks; the core is not asked for anything extra. The counters
//! are plain data ([`MetricsSnapshot`]) so a one-shot process (the CLI's `sync`) can persist
//! them and continue counting on its next run ([`NodeMetrics::from_snapshot`]).

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex, MutexGuard},
};

use serde::{Deserialize, Serialize};
use sync_core::{Channel, Direction, ItemKey, ItemProblem, RoundReport};
use sync_hlc::{Hlc, Watermarks};

/// How many failing items [`NodeMetrics`] remembers; beyond it the one that failed longest
/// ago is forgotten (its counts stay in the channel totals).
pub const MAX_FAILING_ITEMS: usize = 100;

/// The counters of a node, shared by its engines (one per channel). Cheap to clone; clones
/// count into the same figures.
#[derive(Clone, Default)]
pub struct NodeMetrics {
    inner: Arc<Mutex<MetricsSnapshot>>,
}

impl std::fmt::Debug for NodeMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("NodeMetrics").field(&*self.lock()).finish()
    }
}

/// A copy of a node's counters, serializable (camelCase JSON) to persist them between runs.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
#[non_exhaustive]
pub struct MetricsSnapshot {
    /// Per channel (`drive`, `app:X`), its counters.
    pub channels: BTreeMap<String, ChannelMetrics>,
    /// Items that failed and have not landed (or been covered) since, most recent failure
    /// first, at most [`MAX_FAILING_ITEMS`].
    pub failing_items: Vec<FailingItem>,
}

/// The counters of one channel. Totals count since the metrics were first created (the CLI
/// keeps them in `metrics.json` of the node's home).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
#[non_exhaustive]
pub struct ChannelMetrics {
    /// Rounds that completed (their state was persisted).
    pub rounds_ok: u64,
    /// Rounds that failed as a whole (nothing persisted), retried ones included.
    pub rounds_failed: u64,
    /// Completed rounds that only retried failing items ("stalled").
    pub rounds_stalled: u64,
    /// Items newly applied here.
    pub applied: u64,
    /// Items shipped to the peer.
    pub shipped: u64,
    /// Items whose blob landed in a later round than their metadata (staged -> resident).
    pub became_resident: u64,
    /// Item failures, one per item per round, of every kind.
    pub item_failures: u64,
    /// Item failures whose cause was a blob transfer or verification.
    pub blob_failures: u64,
    /// Inbound items this node refused because their timestamp was too far ahead.
    pub skew_refusals: u64,
    /// Origin nodes the peer halted, summed over rounds.
    pub peer_halts: u64,
    /// Blob bytes pushed to the peer through `/files` (copies; a blob it had moved nothing).
    pub blob_bytes_pushed: u64,
    /// Blob bytes pulled from the peer through `/files`.
    pub blob_bytes_pulled: u64,
    /// Blob bytes sent inline in requests.
    pub inline_bytes_sent: u64,
    /// Blob bytes received inline in responses and stored here.
    pub inline_bytes_received: u64,
    /// Rounds whose outbound side was skipped because a local read failed.
    pub outbound_blocked: u64,
    /// When the last round completed (ms since the Unix epoch).
    pub last_round_ms: Option<u64>,
    /// The last failure of a whole round, if it failed after the last completed one.
    pub last_error: Option<String>,
    /// When that failure happened (ms since the Unix epoch).
    pub last_error_ms: Option<u64>,
    /// The origin nodes the peer halted in the last completed round, with its reasons.
    pub halted_by_peer: Vec<PeerHalt>,
    /// The most recent skew refusal.
    pub last_skew_refusal: Option<SkewNote>,
}

/// An origin node the peer halted for a round.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
#[non_exhaustive]
pub struct PeerHalt {
    /// The origin node.
    pub node: String,
    /// The refused item's version, when the peer said.
    pub at: Option<String>,
    /// The peer's reason, when it gave one.
    pub reason: Option<String>,
    /// The peer's stable code for the reason (`sync_protocol::refusal_code`), when it gave
    /// one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
}

/// An inbound item refused by the skew guard.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
#[non_exhaustive]
pub struct SkewNote {
    /// Its version (the origin node's clock is the suspect).
    pub at: String,
    /// How far ahead of this node's clock it was, in ms.
    pub ahead_ms: u64,
    /// The configured limit, in ms.
    pub max_drift_ms: u64,
    /// When it was refused (ms since the Unix epoch).
    pub refused_ms: u64,
}

/// An item that keeps failing: its watermark stays behind it and every round retries it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
#[non_exhaustive]
pub struct FailingItem {
    /// Its channel (`drive`, `app:X`).
    pub channel: String,
    /// `inbound` or `outbound`.
    pub direction: String,
    /// Its identity, when known.
    pub item: Option<ItemKey>,
    /// Its version (the origin node is the part after the last colon).
    pub at: String,
    /// `blob`, `skew`, `apply`, `refused` or `held-back`.
    pub kind: String,
    /// Rounds in which it failed.
    pub attempts: u64,
    /// When it first failed (ms since the Unix epoch).
    pub first_failed_ms: u64,
    /// When it last failed (ms since the Unix epoch).
    pub last_failed_ms: u64,
    /// The last failure's message.
    pub last_error: String,
}

impl FailingItem {
    fn same_item(&self, channel: &str, direction: &str, item: &Option<ItemKey>, at: &str) -> bool {
        self.channel == channel
            && self.direction == direction
            && match (&self.item, item) {
                // A later version of the same item replaces the failing one.
                (Some(a), Some(b)) => a == b,
                _ => self.at == at,
            }
    }
}

fn direction_name(d: Direction) -> &'static str {
    match d {
        Direction::Inbound => "inbound",
        Direction::Outbound => "outbound",
    }
}

fn problem_kind(p: &ItemProblem) -> &'static str {
    match p {
        ItemProblem::Skew(_) => "skew",
        ItemProblem::Blob(_) => "blob",
        ItemProblem::Apply(_) => "apply",
        ItemProblem::Refused(_) => "refused",
        ItemProblem::HeldBack(_) => "held-back",
        _ => "other",
    }
}

impl NodeMetrics {
    /// Counters starting at zero.
    pub fn new() -> Self {
        Self::default()
    }

    /// Counters continuing from a snapshot (for example one persisted by an earlier run).
    pub fn from_snapshot(snapshot: MetricsSnapshot) -> Self {
        Self {
            inner: Arc::new(Mutex::new(snapshot)),
        }
    }

    /// A copy of the counters as they are now.
    pub fn snapshot(&self) -> MetricsSnapshot {
        self.lock().clone()
    }

    fn lock(&self) -> MutexGuard<'_, MetricsSnapshot> {
        // Counters are updated with plain assignments; a panic elsewhere cannot leave them
        // half-written, so a poisoned lock is still usable.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether `channel` has failing items that a watermark may have covered since.
    pub(crate) fn has_failing_items(&self, channel: &Channel) -> bool {
        let name = channel.to_string();
        self.lock().failing_items.iter().any(|f| f.channel == name)
    }

    /// Counts a completed round. `own` and `peer` are the channel's watermarks after it,
    /// when loaded (only needed while items are failing): an item is no longer failing once
    /// the watermark of its direction covers it (inbound: own; outbound: the peer's report),
    /// or once it landed.
    pub(crate) fn round_completed(
        &self,
        channel: &Channel,
        report: &RoundReport,
        state: Option<(&Watermarks, &Watermarks)>,
        now_ms: u64,
    ) {
        let name = channel.to_string();
        let mut m = self.lock();
        let c = m.channels.entry(name.clone()).or_default();
        c.rounds_ok += 1;
        c.rounds_stalled += u64::from(report.stalled());
        c.applied += report.applied as u64;
        c.shipped += report.shipped as u64;
        c.became_resident += report.became_resident as u64;
        c.blob_bytes_pushed += report.blob_bytes_pushed;
        c.blob_bytes_pulled += report.blob_bytes_pulled;
        c.inline_bytes_sent += report.inline_bytes_sent;
        c.inline_bytes_received += report.inline_bytes_received;
        c.item_failures += report.failures.len() as u64;
        c.outbound_blocked += u64::from(report.outbound_blocked.is_some());
        c.peer_halts += report.halted_by_peer.len() as u64;
        c.last_round_ms = Some(now_ms);
        c.last_error = None;
        c.last_error_ms = None;
        c.halted_by_peer = report
            .halted_by_peer
            .iter()
            .map(|node| {
                let refusal = report.peer_refusals.iter().find(|r| r.at.node_id() == node);
                PeerHalt {
                    node: node.to_string(),
                    at: refusal.map(|r| r.at.to_string()),
                    reason: refusal.map(|r| r.reason.clone()),
                    code: refusal.and_then(|r| r.code.clone()),
                }
            })
            .collect();
        for f in &report.failures {
            match &f.problem {
                ItemProblem::Blob(_) => c.blob_failures += 1,
                ItemProblem::Skew(s) => {
                    c.skew_refusals += 1;
                    c.last_skew_refusal = Some(SkewNote {
                        at: s.remote.to_string(),
                        ahead_ms: s.ahead_ms,
                        max_drift_ms: s.max_drift_ms,
                        refused_ms: now_ms,
                    });
                }
                _ => {}
            }
        }

        // Resolve first (what landed, what a watermark now covers), then record this
        // round's failures: a failing item's watermark stays behind it by construction.
        m.failing_items.retain(|f| {
            if f.channel != name {
                return true;
            }
            if f.direction == "inbound"
                && f.item.as_ref().is_some_and(|k| report.landed.contains(k))
            {
                return false;
            }
            let Some((own, peer)) = state else {
                return true;
            };
            let Ok(at) = f.at.parse::<Hlc>() else {
                return true;
            };
            let covering = if f.direction == "inbound" { own } else { peer };
            !covering.covers(&at)
        });
        for f in &report.failures {
            let direction = direction_name(f.direction);
            let at = f.at.to_string();
            let problem = f.problem.to_string();
            let found = m
                .failing_items
                .iter()
                .position(|x| x.same_item(&name, direction, &f.key, &at));
            let mut entry = match found {
                Some(i) => m.failing_items.remove(i),
                None => FailingItem {
                    channel: name.clone(),
                    direction: direction.into(),
                    item: f.key.clone(),
                    first_failed_ms: now_ms,
                    ..FailingItem::default()
                },
            };
            entry.at = at;
            entry.kind = problem_kind(&f.problem).into();
            entry.attempts += 1;
            entry.last_failed_ms = now_ms;
            entry.last_error = problem;
            m.failing_items.insert(0, entry);
        }
        // Most recent first; forget the oldest beyond the bound.
        m.failing_items.truncate(MAX_FAILING_ITEMS);
    }

    /// Counts a round that failed as a whole.
    pub(crate) fn round_failed(&self, channel: &Channel, error: &str, now_ms: u64) {
        let mut m = self.lock();
        let c = m.channels.entry(channel.to_string()).or_default();
        c.rounds_failed += 1;
        c.last_error = Some(error.to_string());
        c.last_error_ms = Some(now_ms);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sync_core::ItemFailure;
    use sync_hlc::NodeId;

    fn hlc(wall: u64, node: &str) -> Hlc {
        Hlc::new(wall, 0, NodeId::new(node).unwrap()).unwrap()
    }

    fn failure(id: &str, at: Hlc, direction: Direction) -> ItemFailure {
        ItemFailure {
            direction,
            key: Some(ItemKey::Record { id: id.into() }),
            at,
            problem: ItemProblem::Blob("not found".into()),
        }
    }

    #[test]
    fn attempts_count_per_item_and_clear_once_covered() {
        let m = NodeMetrics::new();
        let mut r = RoundReport::default();
        r.failures = vec![
            failure("a", hlc(10, "n1"), Direction::Inbound),
            failure("b", hlc(20, "me"), Direction::Outbound),
        ];
        m.round_completed(&Channel::Drive, &r, None, 1);
        m.round_completed(&Channel::Drive, &r, None, 2);
        let s = m.snapshot();
        assert_eq!(s.failing_items.len(), 2);
        assert!(s.failing_items.iter().all(|f| f.attempts == 2));
        assert_eq!(s.channels["drive"].blob_failures, 4);
        assert_eq!(s.failing_items[0].first_failed_ms, 1);
        assert_eq!(s.failing_items[0].last_failed_ms, 2);

        // The peer now covers the outbound item; own coverage does not reach the inbound one.
        let own: Watermarks = [hlc(9, "n1")].into_iter().collect();
        let peer: Watermarks = [hlc(20, "me")].into_iter().collect();
        m.round_completed(
            &Channel::Drive,
            &RoundReport::default(),
            Some((&own, &peer)),
            3,
        );
        let s = m.snapshot();
        assert_eq!(s.failing_items.len(), 1);
        assert_eq!(
            s.failing_items[0].item,
            Some(ItemKey::Record { id: "a".into() })
        );

        // It landed.
        let mut r = RoundReport::default();
        r.landed = vec![ItemKey::Record { id: "a".into() }];
        m.round_completed(&Channel::Drive, &r, None, 4);
        assert!(m.snapshot().failing_items.is_empty());
        assert_eq!(m.snapshot().channels["drive"].rounds_ok, 4);
    }

    #[test]
    fn failing_items_are_bounded_and_survive_a_snapshot_round_trip() {
        let m = NodeMetrics::new();
        let mut r = RoundReport::default();
        r.failures = (0..MAX_FAILING_ITEMS as u64 + 5)
            .map(|i| failure(&format!("r{i}"), hlc(i + 1, "n1"), Direction::Inbound))
            .collect();
        m.round_completed(&Channel::Drive, &r, None, 7);
        let s = m.snapshot();
        assert_eq!(s.failing_items.len(), MAX_FAILING_ITEMS);
        assert_eq!(
            s.channels["drive"].item_failures,
            MAX_FAILING_ITEMS as u64 + 5
        );

        let json = serde_json::to_string(&s).unwrap();
        let back: MetricsSnapshot = serde_json::from_str(&json).unwrap();
        assert_eq!(back, s);
        let restored = NodeMetrics::from_snapshot(back);
        restored.round_failed(&Channel::Drive, "transport: connection refused", 8);
        let c = &restored.snapshot().channels["drive"];
        assert_eq!((c.rounds_ok, c.rounds_failed), (1, 1));
        assert_eq!(
            c.last_error.as_deref(),
            Some("transport: connection refused")
        );
    }
}
