//! Residency of a stored item, and blob garbage collection as an explicit operation.

use futures::TryStreamExt;
use object_store::ObjectStoreExt;
use sync_core::{BlobError, BlobStore, Item, Residency};

use crate::{error::classify, key::object_path, store::ObjectBlobs};

/// Where a stored item stands: derived from the row and, only when the row needs a blob,
/// one existence check.
///
/// No row is [`Residency::Absent`], a tombstone is [`Residency::Tombstoned`], a row that
/// needs no blob (no key, or an app without files) is [`Residency::Resident`]; otherwise the
/// blob decides between [`Residency::Resident`] and [`Residency::Staged`].
pub async fn residency(
    item: Option<&Item>,
    files_enabled: bool,
    blobs: &dyn BlobStore,
) -> Result<Residency, BlobError> {
    let present = match item.and_then(|i| i.blob(files_enabled)) {
        // `Item::blob` is `None` for tombstones: they never cost a check.
        Some(manifest) => blobs.contains(&manifest.key).await?,
        None => false,
    };
    Ok(Residency::derive(item, files_enabled, present))
}

/// What a garbage collection removed (or, in a dry run, would remove).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct GcReport {
    /// Keys removed (dry run: that would be removed), in listing order.
    pub removed: Vec<String>,
    /// Blobs kept because a row references them.
    pub kept: usize,
    /// Bytes removed (dry run: that would be freed).
    pub bytes_freed: u64,
    /// Whether this was a dry run (nothing was deleted).
    pub dry_run: bool,
}

/// Removes the blobs under `prefix` that no row references.
///
/// `referenced` answers, for a key, whether a live or staged row still needs it (tombstones
/// reference nothing); pass `|k| set.contains(k)` for a set of keys. A key it confirms is
/// never deleted. With `dry_run`, nothing is deleted and the report lists what would be.
///
/// `prefix` is a key prefix made of whole segments (`shared/` or `apps/X/`; a trailing `/`
/// is optional) and is checked like a key before the listing; the empty prefix is refused so
/// one namespace's references can never collect another's blobs.
///
/// Run it when no round is pushing into this storage, or accept that a blob pushed before
/// its metadata landed may be collected and pushed again by the next round.
pub async fn collect_garbage(
    store: &ObjectBlobs,
    prefix: &str,
    referenced: impl Fn(&str) -> bool,
    dry_run: bool,
) -> Result<GcReport, BlobError> {
    let scope = object_path(prefix.strip_suffix('/').unwrap_or(prefix))?;
    // The whole listing first: deleting while walking a directory tree could make the walk
    // trip over directories the deletions removed.
    let listing: Vec<_> = store
        .object_store()
        .list(Some(&scope))
        .try_collect()
        .await
        .map_err(|e| classify(prefix, "list blobs", e))?;
    let mut report = GcReport {
        dry_run,
        ..GcReport::default()
    };
    for meta in listing {
        let key = meta.location.as_ref();
        if referenced(key) {
            report.kept += 1;
            continue;
        }
        if !dry_run {
            match store.object_store().delete(&meta.location).await {
                // Someone else removed it first: just as gone.
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(classify(key, "delete an unreferenced blob", e)),
            }
            tracing::info!(key, bytes = meta.size, "unreferenced blob deleted");
        }
        report.bytes_freed += meta.size;
        report.removed.push(key.to_string());
    }
    Ok(report)
}
