//! The page cut: which items a side ships, as a sans-IO state machine.
//!
//! **The most important rule of the engine.** For every origin node, the items in a page
//! are exactly that node's lowest unseen versions, in version order, across every stream
//! (shared records and every app table). A cut made per stream or per table lets a later
//! item of a node ship while an earlier one stays behind; the peer's coverage then jumps over
//! the earlier item and it is lost for good. Here the page is the globally earliest `limit`
//! versions over all (stream, origin node) cursors, which is a per-origin prefix by
//! construction. A group of items sharing one version is never split (a watermark cannot
//! fall inside one timestamp), so a page may exceed `limit` by the rest of such a group.

use std::collections::VecDeque;

use sync_hlc::{Hlc, NodeId};

use crate::Item;

/// A stream of items within a channel, scanned per origin node in version order.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Stream {
    /// Shared records.
    Records,
    /// One table of one app.
    Table {
        /// App id.
        app: String,
        /// Table name.
        table: String,
    },
}

/// A scan the driver must perform and [`PageSelector::feed`] back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScanRequest {
    /// Which cursor to feed the result to.
    pub cursor: usize,
    /// The stream to scan.
    pub stream: Stream,
    /// The origin node whose versions to return.
    pub origin: NodeId,
    /// Return versions strictly above this one (all when `None`).
    pub above: Option<Hlc>,
    /// Return at most this many, in version order.
    pub limit: usize,
}

/// What the selector needs next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SelectStep {
    /// Perform this scan and feed its result.
    Scan(ScanRequest),
    /// The page is decided; call [`PageSelector::finish`].
    Done,
}

/// How the cut orders candidates. Only [`CutOrder::PerOriginVersion`] is correct; the other
/// exists so the simulator can prove it catches the classic page-order bug.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum CutOrder {
    /// Globally earliest versions first (a per-origin prefix across every stream).
    #[default]
    PerOriginVersion,
    /// Deliberately wrong: stream by stream (table order), as the TypeScript reference did.
    #[doc(hidden)]
    StreamOrder,
}

/// The decided page.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Selection {
    /// The items, in version order.
    pub items: Vec<Item>,
    /// Whether at least one more unseen item exists beyond the page (probed, exact).
    pub has_more: bool,
}

#[derive(Debug)]
struct Cursor {
    stream: Stream,
    origin: NodeId,
    above: Option<Hlc>,
    up_to: Option<Hlc>,
    buf: VecDeque<Item>,
    exhausted: bool,
    requested: usize,
    /// The size of this cursor's previous scan (0 before the first).
    last_request: usize,
}

/// Chooses a page over several (stream, origin node) cursors, asking the driver for scans
/// as it goes. Scans are lazy: a cursor is read a page at a time, and only as far as the
/// cut needs, plus one probe to tell `has_more` exactly.
///
/// A cursor's first scan asks for an even share of the page (what the page still needs over
/// the cursors still open, plus one), and each refill of the same cursor for twice its
/// previous scan, never more than the scan page or the page's remaining room plus one. So a
/// page over `k` origin nodes reads about one page of items (plus up to two per cursor)
/// when their versions interleave, and a few doubling scans more when one node holds most
/// of them; asking every cursor for a whole page up front would read `k` pages to ship one.
#[derive(Debug)]
pub struct PageSelector {
    limit: usize,
    scan_page: usize,
    order: CutOrder,
    cursors: Vec<Cursor>,
    selected: Vec<Item>,
    has_more: Option<bool>,
}

impl PageSelector {
    /// A selector over cursors `(stream, origin, above)`, cutting after `limit` items and
    /// scanning at most `scan_page` items per request.
    pub fn new(
        limit: usize,
        scan_page: usize,
        cursors: impl IntoIterator<Item = (Stream, NodeId, Option<Hlc>)>,
    ) -> Self {
        Self::bounded(
            limit,
            scan_page,
            cursors
                .into_iter()
                .map(|(stream, origin, above)| (stream, origin, above, None)),
        )
    }

    /// Like [`PageSelector::new`], with an optional inclusive upper bound per cursor:
    /// versions above it are never selected.
    pub fn bounded(
        limit: usize,
        scan_page: usize,
        cursors: impl IntoIterator<Item = (Stream, NodeId, Option<Hlc>, Option<Hlc>)>,
    ) -> Self {
        Self {
            limit,
            scan_page: scan_page.max(1),
            order: CutOrder::PerOriginVersion,
            cursors: cursors
                .into_iter()
                .map(|(stream, origin, above, up_to)| Cursor {
                    stream,
                    origin,
                    above,
                    up_to,
                    buf: VecDeque::new(),
                    exhausted: false,
                    requested: 0,
                    last_request: 0,
                })
                .collect(),
            selected: Vec::new(),
            has_more: None,
        }
    }

    /// Sets the cut order (tests only need anything but the default).
    pub fn with_order(mut self, order: CutOrder) -> Self {
        self.order = order;
        self
    }

    /// The next thing the selector needs.
    pub fn next_step(&mut self) -> SelectStep {
        loop {
            if self.has_more.is_some() {
                return SelectStep::Done;
            }
            let needed = self.limit.saturating_sub(self.selected.len());
            if let Some(i) = self
                .cursors
                .iter()
                .position(|c| c.buf.is_empty() && !c.exhausted && c.requested == 0)
            {
                let open = self.cursors.iter().filter(|c| !c.exhausted).count();
                let c = &mut self.cursors[i];
                c.requested = scan_size(self.scan_page, needed, open, c.last_request);
                c.last_request = c.requested;
                return SelectStep::Scan(ScanRequest {
                    cursor: i,
                    stream: c.stream.clone(),
                    origin: c.origin.clone(),
                    above: c.above.clone(),
                    limit: c.requested,
                });
            }
            let Some(best) = self.best_cursor() else {
                self.has_more = Some(false);
                continue;
            };
            let head = self.cursors[best].buf.front().expect("best has a head");
            let same_group = self.selected.last().is_some_and(|l| l.hlc() == head.hlc());
            if needed == 0 && !same_group {
                self.has_more = Some(true);
                continue;
            }
            let item = self.cursors[best].buf.pop_front().expect("head");
            self.selected.push(item);
        }
    }

    /// The cursor whose head comes next in the cut order.
    fn best_cursor(&self) -> Option<usize> {
        let heads = self
            .cursors
            .iter()
            .enumerate()
            .filter_map(|(i, c)| c.buf.front().map(|h| (i, c, h)));
        match self.order {
            CutOrder::PerOriginVersion => heads
                .min_by(|(_, ca, a), (_, cb, b)| {
                    a.hlc().cmp(b.hlc()).then_with(|| ca.stream.cmp(&cb.stream))
                })
                .map(|(i, _, _)| i),
            CutOrder::StreamOrder => heads
                .min_by(|(_, ca, a), (_, cb, b)| {
                    ca.stream.cmp(&cb.stream).then_with(|| a.hlc().cmp(b.hlc()))
                })
                .map(|(i, _, _)| i),
        }
    }

    /// Feeds the result of a [`ScanRequest`]: items of that cursor's origin above its
    /// position, in version order. Fewer items than requested means the cursor is exhausted.
    pub fn feed(&mut self, cursor: usize, items: Vec<Item>) {
        let c = &mut self.cursors[cursor];
        c.exhausted = items.len() < c.requested;
        c.requested = 0;
        if let Some(last) = items.last() {
            c.above = Some(last.hlc().clone());
        }
        for item in items {
            if c.up_to.as_ref().is_some_and(|u| item.hlc() > u) {
                c.exhausted = true;
                break;
            }
            c.buf.push_back(item);
        }
    }

    /// The decided page. Call after [`SelectStep::Done`].
    pub fn finish(self) -> Selection {
        Selection {
            items: self.selected,
            has_more: self.has_more.unwrap_or(false),
        }
    }
}

/// How many items a cursor's next scan asks for: an even share of the `needed` items over
/// the `open` cursors plus one (the has-more probe, when one cursor is left), at least twice
/// the cursor's `last` scan, at most `needed + 1` and `scan_page`, and at least 1.
fn scan_size(scan_page: usize, needed: usize, open: usize, last: usize) -> usize {
    let share = needed.div_ceil(open.max(1)) + 1;
    share
        .max(last.saturating_mul(2))
        .min(needed + 1)
        .min(scan_page)
        .max(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use sync_protocol::{AppRow, RowOp};

    fn row(table: &str, wall: u64, node: &str) -> Item {
        Item::Row(AppRow {
            timestamp: Hlc::new(wall, 0, NodeId::new(node).unwrap()).unwrap(),
            app_id: "a".into(),
            table: table.into(),
            op: RowOp::Insert,
            row: None,
            where_: None,
        })
    }

    /// Runs a selector against in-memory streams.
    fn run(
        data: &BTreeMap<Stream, Vec<Item>>,
        limit: usize,
        scan_page: usize,
        order: CutOrder,
    ) -> (Selection, usize) {
        let (selection, scans, _) = run_counting(data, limit, scan_page, order);
        (selection, scans)
    }

    /// [`run`], also counting the items the scans returned.
    fn run_counting(
        data: &BTreeMap<Stream, Vec<Item>>,
        limit: usize,
        scan_page: usize,
        order: CutOrder,
    ) -> (Selection, usize, usize) {
        let mut read = 0;
        let mut cursors = Vec::new();
        for (stream, items) in data {
            let mut origins: Vec<NodeId> = items.iter().map(|i| i.origin().clone()).collect();
            origins.sort();
            origins.dedup();
            for o in origins {
                cursors.push((stream.clone(), o, None));
            }
        }
        let mut sel = PageSelector::new(limit, scan_page, cursors).with_order(order);
        let mut scans = 0;
        while let SelectStep::Scan(req) = sel.next_step() {
            scans += 1;
            let mut items: Vec<Item> = data[&req.stream]
                .iter()
                .filter(|i| i.origin() == &req.origin)
                .filter(|i| req.above.as_ref().is_none_or(|a| i.hlc() > a))
                .cloned()
                .collect();
            items.sort_by(|a, b| a.hlc().cmp(b.hlc()));
            items.truncate(req.limit);
            read += items.len();
            sel.feed(req.cursor, items);
        }
        (sel.finish(), scans, read)
    }

    fn t(name: &str) -> Stream {
        Stream::Table {
            app: "a".into(),
            table: name.into(),
        }
    }

    #[test]
    fn cuts_per_origin_in_version_order_across_tables() {
        let mut data = BTreeMap::new();
        data.insert(t("t1"), vec![row("t1", 1, "n"), row("t1", 4, "n")]);
        data.insert(t("t2"), vec![row("t2", 2, "n"), row("t2", 3, "n")]);
        let (sel, _) = run(&data, 3, 2, CutOrder::PerOriginVersion);
        let walls: Vec<u64> = sel.items.iter().map(|i| i.hlc().wall_time()).collect();
        assert_eq!(walls, vec![1, 2, 3]);
        assert!(sel.has_more);
        // The deliberately wrong order skips version 2 and 3 in favour of 4.
        let (bad, _) = run(&data, 3, 2, CutOrder::StreamOrder);
        let walls: Vec<u64> = bad.items.iter().map(|i| i.hlc().wall_time()).collect();
        assert_eq!(walls, vec![1, 4, 2]);
    }

    #[test]
    fn has_more_is_exact_at_the_limit() {
        let mut data = BTreeMap::new();
        data.insert(Stream::Records, (1..=5).map(|w| row("r", w, "n")).collect());
        let (sel, _) = run(&data, 5, 500, CutOrder::PerOriginVersion);
        assert_eq!(sel.items.len(), 5);
        assert!(!sel.has_more, "no wasted round at the exact limit (W-A3)");
        let (sel, _) = run(&data, 4, 500, CutOrder::PerOriginVersion);
        assert_eq!(sel.items.len(), 4);
        assert!(sel.has_more);
    }

    #[test]
    fn never_splits_one_version_group() {
        let mut data = BTreeMap::new();
        data.insert(t("t1"), vec![row("t1", 1, "n"), row("t1", 5, "n")]);
        data.insert(t("t2"), vec![row("t2", 5, "n"), row("t2", 6, "n")]);
        let (sel, _) = run(&data, 2, 1, CutOrder::PerOriginVersion);
        let walls: Vec<u64> = sel.items.iter().map(|i| i.hlc().wall_time()).collect();
        assert_eq!(walls, vec![1, 5, 5]);
        assert!(sel.has_more);
        // Equal wall times of different origins are different versions and may be split.
        let mut data = BTreeMap::new();
        data.insert(Stream::Records, vec![row("r", 5, "a"), row("r", 5, "b")]);
        let (sel, _) = run(&data, 1, 10, CutOrder::PerOriginVersion);
        assert_eq!(sel.items.len(), 1);
        assert!(sel.has_more);
    }

    #[test]
    fn zero_limit_selects_nothing_but_reports_more() {
        let mut data = BTreeMap::new();
        data.insert(Stream::Records, vec![row("r", 1, "n")]);
        let (sel, _) = run(&data, 0, 10, CutOrder::PerOriginVersion);
        assert!(sel.items.is_empty() && sel.has_more);
        let (sel, scans) = run(&BTreeMap::new(), 10, 10, CutOrder::PerOriginVersion);
        assert!(sel.items.is_empty() && !sel.has_more && scans == 0);
    }

    #[test]
    fn reads_only_what_the_cut_needs() {
        let mut data = BTreeMap::new();
        data.insert(
            Stream::Records,
            (1..=10_000).map(|w| row("r", w, "n")).collect(),
        );
        let (sel, scans) = run(&data, 3, 500, CutOrder::PerOriginVersion);
        assert_eq!(sel.items.len(), 3);
        assert_eq!(
            scans, 1,
            "one scan of limit+1 decides the page and has_more"
        );
    }

    /// `origins` nodes with `per_origin` versions each, interleaved in time (node `o`'s
    /// `i`-th version at wall time `i * origins + o`), or all but the first node holding a
    /// single version when `skewed`.
    fn many_origins(origins: u64, per_origin: u64, skewed: bool) -> BTreeMap<Stream, Vec<Item>> {
        let mut items = Vec::new();
        for o in 0..origins {
            let n = if skewed && o > 0 { 1 } else { per_origin };
            for i in 0..n {
                items.push(row("r", 1 + i * origins + o, &format!("node-{o:03}")));
            }
        }
        BTreeMap::from([(Stream::Records, items)])
    }

    /// The page by brute force: the `limit` earliest versions overall, and whether more exist.
    fn earliest(data: &BTreeMap<Stream, Vec<Item>>, limit: usize) -> (Vec<Hlc>, bool) {
        let mut all: Vec<Hlc> = data.values().flatten().map(|i| i.hlc().clone()).collect();
        all.sort();
        let more = all.len() > limit;
        all.truncate(limit);
        (all, more)
    }

    #[test]
    fn a_page_over_many_origins_reads_about_one_page() {
        for skewed in [false, true] {
            let data = many_origins(100, 1_000, skewed);
            let (sel, scans, read) = run_counting(&data, 1_000, 1_001, CutOrder::PerOriginVersion);
            let (want, more) = earliest(&data, 1_000);
            let got: Vec<Hlc> = sel.items.iter().map(|i| i.hlc().clone()).collect();
            assert_eq!(got, want, "skewed: {skewed}");
            assert_eq!(sel.has_more, more);
            // About one page plus two items per cursor, in about one or two scans per
            // cursor. Asking each of the 100 cursors for a whole page read 100,000 here.
            assert!(
                read <= 1_000 + 2 * 100,
                "skewed: {skewed}: read {read} items"
            );
            assert!(scans <= 2 * 100, "skewed: {skewed}: {scans} scans");
        }
    }

    #[test]
    fn scan_sizes_share_the_page_and_double() {
        // One cursor: the page and its probe in one scan.
        assert_eq!(scan_size(1001, 1000, 1, 0), 1001);
        // A hundred: a share each, then doubling refills, capped by the room left.
        assert_eq!(scan_size(1001, 1000, 100, 0), 11);
        assert_eq!(scan_size(1001, 1000, 100, 11), 22);
        assert_eq!(scan_size(1001, 5, 100, 400), 6);
        assert_eq!(scan_size(500, 1000, 1, 0), 500);
        // The probe at a full page, and degenerate inputs.
        assert_eq!(scan_size(1001, 0, 100, 0), 1);
        assert_eq!(scan_size(0, 10, 0, 0), 1);
    }
}
