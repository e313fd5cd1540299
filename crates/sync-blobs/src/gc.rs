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
    /// Staging files of interrupted uploads removed (dry run: that would be removed), as
    /// paths relative to a filesystem store's root. Only files older than
    /// [`STAGING_GRACE`] count: a younger one may belong to an upload still running.
    pub staging_removed: Vec<String>,
}

/// How old a filesystem store's staging file (`<key>#<n>`, an upload in progress) must be
/// before garbage collection takes it for the leftover of an interrupted upload.
pub const STAGING_GRACE: std::time::Duration = std::time::Duration::from_secs(3600);

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
    if let Some(root) = store.root() {
        let dir = root.join(scope.as_ref());
        let found = tokio::task::spawn_blocking(move || stale_staging_files(&dir, STAGING_GRACE))
            .await
            .map_err(|e| BlobError::Fatal {
                key: prefix.to_string(),
                message: format!("staging sweep failed: {e}"),
                source: None,
            })?;
        for (path, size) in found {
            if !dry_run {
                match std::fs::remove_file(&path) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => {
                        return Err(BlobError::Transient {
                            key: path.display().to_string(),
                            message: format!("cannot remove a staging file: {e}"),
                            source: Some(Box::new(e)),
                        })
                    }
                }
                tracing::info!(path = %path.display(), "stale upload staging file deleted");
            }
            report.bytes_freed += size;
            let relative = path.strip_prefix(root).unwrap_or(&path);
            report
                .staging_removed
                .push(relative.to_string_lossy().into_owned());
        }
    }
    Ok(report)
}

/// Files under `dir` named like object_store's upload staging files (`<name>#<digits>`),
/// not modified for `grace`: what a crash in the middle of an upload leaves behind (the
/// listing of object_store skips them, so nothing else ever removes them).
fn stale_staging_files(
    dir: &std::path::Path,
    grace: std::time::Duration,
) -> Vec<(std::path::PathBuf, u64)> {
    let mut out = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let Ok(meta) = entry.metadata() else { continue };
            let path = entry.path();
            if meta.is_dir() {
                pending.push(path);
                continue;
            }
            let name = entry.file_name();
            let name = name.to_string_lossy();
            let staging = name.rsplit_once('#').is_some_and(|(stem, digits)| {
                !stem.is_empty() && !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit())
            });
            let stale = meta
                .modified()
                .ok()
                .and_then(|m| m.elapsed().ok())
                .is_some_and(|age| age >= grace);
            if staging && stale {
                out.push((path, meta.len()));
            }
        }
    }
    out.sort();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_old_staging_files_are_found() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("shared/x/ab");
        std::fs::create_dir_all(&sub).unwrap();
        for name in ["blob#1", "blob", "blob#", "#12", "blob#1a", "other#42"] {
            std::fs::write(sub.join(name), b"partial").unwrap();
        }
        let names = |grace| -> Vec<String> {
            stale_staging_files(dir.path(), grace)
                .into_iter()
                .map(|(p, _)| p.file_name().unwrap().to_string_lossy().into_owned())
                .collect()
        };
        assert_eq!(names(std::time::Duration::ZERO), ["blob#1", "other#42"]);
        // Young files may be uploads still running: kept.
        assert!(names(STAGING_GRACE).is_empty());
    }

    #[tokio::test]
    async fn collection_sweeps_stale_staging_files_of_its_namespace_only() {
        let dir = tempfile::tempdir().unwrap();
        let blobs = ObjectBlobs::filesystem(dir.path()).unwrap();
        let old = std::time::SystemTime::now() - 2 * STAGING_GRACE;
        for rel in ["shared/x/ab/blob#3", "apps/notes/syncable/n#1"] {
            let path = dir.path().join(rel);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, b"half an upload").unwrap();
            std::fs::File::options()
                .write(true)
                .open(&path)
                .unwrap()
                .set_modified(old)
                .unwrap();
        }
        let dry = collect_garbage(&blobs, "shared/", |_| true, true)
            .await
            .unwrap();
        assert_eq!(dry.staging_removed, ["shared/x/ab/blob#3"]);
        assert!(dir.path().join("shared/x/ab/blob#3").exists(), "dry run");
        let done = collect_garbage(&blobs, "shared/", |_| true, false)
            .await
            .unwrap();
        assert_eq!(done.staging_removed, ["shared/x/ab/blob#3"]);
        assert_eq!(done.bytes_freed, 14);
        assert!(!dir.path().join("shared/x/ab/blob#3").exists());
        assert!(
            dir.path().join("apps/notes/syncable/n#1").exists(),
            "other namespace"
        );
    }
}
