//! One side's data on one channel: the streams it carries, their coverage, the page cut
//! over them, and last-write-wins apply. Shared by the requester and the responder.

use std::{collections::BTreeMap, sync::Arc};

use sync_hlc::{Hlc, NodeId, Watermarks};
use sync_protocol::{AppRow, SharedRecord};

use crate::{
    row_key, AppNamespace, AppRowStore, Applied, Channel, CutOrder, Error, Item, ItemKey,
    PageSelector, RecordStore, SelectStep, Selection, StoreError, Stream,
};

/// The stores behind one channel on one side.
#[derive(Clone)]
pub struct ChannelData {
    channel: Channel,
    records: Option<Arc<dyn RecordStore>>,
    rows: Option<Arc<dyn AppRowStore>>,
}

/// A channel resolved against its registered namespace: the streams to scan.
#[derive(Debug, Clone)]
pub(crate) struct Scope {
    pub streams: Vec<Stream>,
    pub namespace: Option<AppNamespace>,
}

impl Scope {
    pub fn files_enabled(&self) -> bool {
        self.namespace.as_ref().is_none_or(|ns| ns.files_enabled)
    }
}

/// Why an inbound item is not acceptable on this channel at all (a protocol violation by
/// the peer, refused loudly).
pub(crate) fn channel_violation(channel: &Channel, item: &Item) -> Option<String> {
    match (channel, item) {
        (Channel::Drive, Item::Row(r)) => Some(format!(
            "the Drive channel does not carry app rows (got a row of {}.{})",
            r.app_id, r.table
        )),
        (Channel::App(app), Item::Record(r)) => Some(format!(
            "app channel {app} does not carry shared records (got record {})",
            r.id
        )),
        (Channel::App(app), Item::Row(r)) if r.app_id != *app => Some(format!(
            "app channel {app} does not carry rows of app {}",
            r.app_id
        )),
        _ => None,
    }
}

impl ChannelData {
    /// The data of `channel`: the record store for Drive, the app-row store for an app.
    pub fn new(
        channel: Channel,
        records: Option<Arc<dyn RecordStore>>,
        rows: Option<Arc<dyn AppRowStore>>,
    ) -> Self {
        Self {
            channel,
            records,
            rows,
        }
    }

    /// The channel.
    pub fn channel(&self) -> &Channel {
        &self.channel
    }

    fn config_error(&self, reason: impl Into<String>) -> Error {
        Error::Config {
            channel: self.channel.to_string(),
            reason: reason.into(),
        }
    }

    /// Resolves the channel's streams (reading the app's namespace).
    pub(crate) async fn scope(&self) -> Result<Scope, Error> {
        match &self.channel {
            Channel::Drive => {
                if self.records.is_none() {
                    return Err(self.config_error("no record store"));
                }
                Ok(Scope {
                    streams: vec![Stream::Records],
                    namespace: None,
                })
            }
            Channel::App(app) => {
                let rows = self
                    .rows
                    .as_ref()
                    .ok_or_else(|| self.config_error("no app-row store"))?;
                let ns = rows
                    .namespace(app)
                    .await
                    .map_err(|e| self.config_error(format!("reading the namespace: {e}")))?
                    .ok_or_else(|| self.config_error(format!("app {app} is not registered")))?;
                let streams = ns
                    .table_names()
                    .into_iter()
                    .map(|t| Stream::Table {
                        app: app.clone(),
                        table: t.to_string(),
                    })
                    .collect();
                Ok(Scope {
                    streams,
                    namespace: Some(ns),
                })
            }
        }
    }

    fn records(&self) -> Result<&Arc<dyn RecordStore>, StoreError> {
        self.records
            .as_ref()
            .ok_or_else(|| StoreError::fatal("no record store on this channel"))
    }

    fn rows(&self) -> Result<&Arc<dyn AppRowStore>, StoreError> {
        self.rows
            .as_ref()
            .ok_or_else(|| StoreError::fatal("no app-row store on this channel"))
    }

    /// Coverage of each stream.
    pub(crate) async fn stream_coverage(
        &self,
        streams: &[Stream],
    ) -> Result<Vec<(Stream, Watermarks)>, StoreError> {
        let mut out = Vec::with_capacity(streams.len());
        for s in streams {
            let cov = match s {
                Stream::Records => self.records()?.coverage().await?,
                Stream::Table { app, table } => self.rows()?.coverage(app, table).await?,
            };
            out.push((s.clone(), cov));
        }
        Ok(out)
    }

    /// The channel's coverage: per origin node, the maximum over every stream.
    pub async fn coverage(&self) -> Result<Watermarks, Error> {
        let scope = self.scope().await?;
        let per_stream = self
            .stream_coverage(&scope.streams)
            .await
            .map_err(Error::State)?;
        Ok(union(&per_stream))
    }

    /// The origin nodes with at least one stored version the peer has not seen (above
    /// `seen[origin]`) that a round would ship: for another node than `me`, only within
    /// this side's contiguous prefix of it (`own`), as [`select`](Self::select) relays.
    /// One index probe per stream and origin node; unlike comparing coverage, a version
    /// that was replaced here (it lost last-write-wins) is not pending work.
    pub async fn pending_origins(
        &self,
        seen: &Watermarks,
        me: &NodeId,
        own: &Watermarks,
    ) -> Result<Vec<NodeId>, Error> {
        let scope = self.scope().await?;
        let per_stream = self
            .stream_coverage(&scope.streams)
            .await
            .map_err(Error::State)?;
        let mut pending = std::collections::BTreeSet::new();
        for (stream, cov) in &per_stream {
            for (origin, above) in seen.unseen(cov) {
                if pending.contains(origin) {
                    continue;
                }
                let bound = (origin != me).then(|| own.get(origin.as_str()));
                let first: Option<Hlc> = match stream {
                    Stream::Records => self
                        .records()
                        .map_err(Error::State)?
                        .scan(origin, above, 1)
                        .await
                        .map_err(Error::State)?
                        .into_iter()
                        .map(|r| r.updated_at)
                        .next(),
                    Stream::Table { app, table } => self
                        .rows()
                        .map_err(Error::State)?
                        .scan(app, table, origin, above, 1)
                        .await
                        .map_err(Error::State)?
                        .into_iter()
                        .map(|r| r.timestamp)
                        .next(),
                };
                let shippable = match (first, bound) {
                    (None, _) => false,
                    (Some(_), None) => true,
                    (Some(v), Some(bound)) => bound.is_some_and(|b| &v <= b),
                };
                if shippable {
                    pending.insert(origin.clone());
                }
            }
        }
        Ok(pending.into_iter().collect())
    }

    /// The highest version of `origin` below `below` over every stream.
    pub(crate) async fn coverage_below(
        &self,
        streams: &[Stream],
        origin: &NodeId,
        below: &Hlc,
    ) -> Result<Option<Hlc>, StoreError> {
        let mut best: Option<Hlc> = None;
        for s in streams {
            let h = match s {
                Stream::Records => self.records()?.coverage_below(origin, below).await?,
                Stream::Table { app, table } => {
                    self.rows()?
                        .coverage_below(app, table, origin, below)
                        .await?
                }
            };
            best = best.max(h);
        }
        Ok(best)
    }

    /// The page of items the other side has not covered: per origin node, its lowest
    /// versions above `seen[origin]`, globally earliest first, up to `limit`.
    ///
    /// With `relay`, versions of an origin node other than `relay.0` are only selected up to
    /// `relay.1[origin]`, the contiguous prefix this side has fully received: above it, this
    /// side may hold later versions of that node but miss earlier ones, and shipping those
    /// would let the other side's coverage jump over the hole.
    pub(crate) async fn select(
        &self,
        coverage: &[(Stream, Watermarks)],
        seen: &Watermarks,
        relay: Option<(&NodeId, &Watermarks)>,
        limit: usize,
        scan_page: usize,
        order: CutOrder,
    ) -> Result<Selection, StoreError> {
        let cursors = coverage.iter().flat_map(|(stream, cov)| {
            seen.unseen(cov).filter_map(move |(origin, above)| {
                let up_to = match relay {
                    Some((me, _)) if origin == me => None,
                    Some((_, own)) => {
                        let bound = own.get(origin.as_str())?;
                        if above.is_some_and(|a| a >= bound) {
                            return None;
                        }
                        Some(bound.clone())
                    }
                    None => None,
                };
                Some((stream.clone(), origin.clone(), above.cloned(), up_to))
            })
        });
        let mut selector = PageSelector::bounded(limit, scan_page, cursors).with_order(order);
        while let SelectStep::Scan(req) = selector.next_step() {
            let items: Vec<Item> = match &req.stream {
                Stream::Records => self
                    .records()?
                    .scan(&req.origin, req.above.as_ref(), req.limit)
                    .await?
                    .into_iter()
                    .map(Item::Record)
                    .collect(),
                Stream::Table { app, table } => self
                    .rows()?
                    .scan(app, table, &req.origin, req.above.as_ref(), req.limit)
                    .await?
                    .into_iter()
                    .map(Item::Row)
                    .collect(),
            };
            selector.feed(req.cursor, items);
        }
        let mut selection = selector.finish();
        if !selection.items.is_empty() {
            self.settle(coverage, &mut selection).await?;
        }
        Ok(selection)
    }

    /// Guards the page against writes that committed while it was being cut.
    ///
    /// The streams are read one after the other, not in one snapshot. If another transaction
    /// commits versions of an origin node into two streams in between (another request's
    /// apply on a responder, or a local write into a second table), the page could hold the
    /// later version from one stream without the earlier one from the other, and the
    /// receiver's coverage would jump over it for good (the contiguous-prefix invariant).
    /// New versions of an origin node arrive above what a stream held (a sender ships each
    /// node's versions in order, and a node's own writes commit in timestamp order), so
    /// coverage is read again: for every origin node whose coverage moved in some stream,
    /// the page keeps only its versions up to what that stream held before (a prefix of the
    /// node's versions in the page, so still its lowest unseen ones), and the rest waits for
    /// the next round.
    async fn settle(
        &self,
        before: &[(Stream, Watermarks)],
        selection: &mut Selection,
    ) -> Result<(), StoreError> {
        let streams: Vec<Stream> = before.iter().map(|(s, _)| s.clone()).collect();
        let after = self.stream_coverage(&streams).await?;
        // Per origin node: the highest version the page may keep, or `None` for nothing.
        let mut caps: BTreeMap<&NodeId, Option<&Hlc>> = BTreeMap::new();
        for ((_, was), (_, now)) in before.iter().zip(&after) {
            for (origin, version) in now.iter() {
                let held = was.get(origin.as_str());
                if held == Some(version) {
                    continue;
                }
                let cap = caps.entry(version.node_id()).or_insert(held);
                *cap = (*cap).min(held);
            }
        }
        if caps.is_empty() {
            return Ok(());
        }
        let before_len = selection.items.len();
        selection
            .items
            .retain(|item| match caps.get(item.origin()) {
                None => true,
                Some(cap) => cap.is_some_and(|c| item.hlc() <= c),
            });
        if selection.items.len() < before_len {
            tracing::debug!(
                dropped = before_len - selection.items.len(),
                "page trimmed: versions committed while it was cut"
            );
            selection.has_more = true;
        }
        Ok(())
    }

    /// The identity of an item on this channel; refuses rows of unknown tables or without
    /// their primary key.
    pub(crate) fn key_of(&self, scope: &Scope, item: &Item) -> Result<ItemKey, String> {
        match item {
            Item::Record(r) => Ok(ItemKey::Record { id: r.id.clone() }),
            Item::Row(r) => {
                let ns = scope
                    .namespace
                    .as_ref()
                    .ok_or("app rows are not accepted on this channel")?;
                let spec = ns.table(&r.table).ok_or_else(|| {
                    format!(
                        "table {:?} is not registered for app {}",
                        r.table, ns.app_id
                    )
                })?;
                let key = row_key(spec, r).map_err(|e| e.to_string())?;
                Ok(ItemKey::Row {
                    app: r.app_id.clone(),
                    table: r.table.clone(),
                    key,
                })
            }
        }
    }

    /// Applies items with last-write-wins: one atomic batch per store, and item by item
    /// when a batch fails, so one bad item cannot stop the rest. Results follow `items`.
    ///
    /// With `halt`, the item-by-item retry skips every later item of an origin node once
    /// one of its items failed (items must come in per-origin version order).
    pub(crate) async fn apply(&self, items: &[&Item], halt: bool) -> Vec<Result<Applied, String>> {
        let mut results: Vec<Option<Result<Applied, String>>> = vec![None; items.len()];
        let (mut rec_idx, mut records) = (Vec::new(), Vec::<SharedRecord>::new());
        let (mut row_idx, mut rows) = (Vec::new(), Vec::<AppRow>::new());
        for (i, item) in items.iter().enumerate() {
            match item {
                Item::Record(r) => {
                    rec_idx.push(i);
                    records.push(r.clone());
                }
                Item::Row(r) => {
                    row_idx.push(i);
                    rows.push(r.clone());
                }
            }
        }
        if !records.is_empty() {
            let out = match self.records() {
                Ok(store) => apply_batch(&records, halt, |b| store.apply(b)).await,
                Err(e) => vec![Err(e.to_string()); records.len()],
            };
            for (i, r) in rec_idx.into_iter().zip(out) {
                results[i] = Some(r);
            }
        }
        if !rows.is_empty() {
            let out = match self.rows() {
                Ok(store) => apply_batch(&rows, halt, |b| store.apply(b)).await,
                Err(e) => vec![Err(e.to_string()); rows.len()],
            };
            for (i, r) in row_idx.into_iter().zip(out) {
                results[i] = Some(r);
            }
        }
        results
            .into_iter()
            .map(|r| r.expect("every item has a result"))
            .collect()
    }
}

/// Applies a batch atomically; if the batch fails, retries item by item to isolate the
/// failing ones (skipping the rest of a failed origin node's items when `halt`).
async fn apply_batch<'a, T: Versioned, F, Fut>(
    items: &'a [T],
    halt: bool,
    apply: F,
) -> Vec<Result<Applied, String>>
where
    F: Fn(&'a [T]) -> Fut,
    Fut: std::future::Future<Output = Result<Vec<Applied>, StoreError>>,
{
    match apply(items).await {
        Ok(out) if out.len() == items.len() => out.into_iter().map(Ok).collect(),
        Ok(out) => vec![
            Err(format!(
                "store returned {} results for {} items",
                out.len(),
                items.len()
            ));
            items.len()
        ],
        Err(_) if items.len() > 1 => {
            let mut out = Vec::with_capacity(items.len());
            let mut failed: Vec<&NodeId> = Vec::new();
            for one in items.chunks(1) {
                let origin = one[0].origin();
                if halt && failed.contains(&origin) {
                    out.push(Err(
                        "held back behind an earlier failure of its origin node".into(),
                    ));
                    continue;
                }
                let result = match apply(one).await {
                    Ok(mut r) if r.len() == 1 => Ok(r.remove(0)),
                    Ok(_) => Err("store returned no result".to_string()),
                    Err(e) => Err(e.to_string()),
                };
                if result.is_err() {
                    failed.push(origin);
                }
                out.push(result);
            }
            out
        }
        Err(e) => vec![Err(e.to_string())],
    }
}

/// Anything with a version.
pub(crate) trait Versioned {
    fn origin(&self) -> &NodeId;
}

impl Versioned for SharedRecord {
    fn origin(&self) -> &NodeId {
        SharedRecord::origin(self)
    }
}

impl Versioned for AppRow {
    fn origin(&self) -> &NodeId {
        AppRow::origin(self)
    }
}

/// Per origin node, the maximum over several coverages.
pub(crate) fn union(per_stream: &[(Stream, Watermarks)]) -> Watermarks {
    let mut all = Watermarks::new();
    for (_, w) in per_stream {
        all.merge(w);
    }
    all
}
