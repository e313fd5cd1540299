//! Local files as shared records: hashing, object keys, MIME types, ids.

use std::{
    path::Path,
    sync::atomic::{AtomicU64, Ordering},
    time::{SystemTime, UNIX_EPOCH},
};

use anyhow::{Context, Result};
use sha2::{Digest, Sha256};
use sync_blobs::{
    object_store::{path::Path as ObjectPath, ObjectStoreExt, WriteMultipart},
    ObjectBlobs,
};
use tokio::io::AsyncReadExt;

/// The MIME type of a file, by extension.
pub fn mime_type(path: &Path) -> &'static str {
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase)
        .unwrap_or_default();
    match ext.as_str() {
        "jpg" | "jpeg" => "image/jpeg",
        "png" => "image/png",
        "gif" => "image/gif",
        "webp" => "image/webp",
        "heic" => "image/heic",
        "svg" => "image/svg+xml",
        "mp4" => "video/mp4",
        "mov" => "video/quicktime",
        "webm" => "video/webm",
        "mp3" => "audio/mpeg",
        "wav" => "audio/wav",
        "flac" => "audio/flac",
        "txt" | "log" => "text/plain",
        "md" => "text/markdown",
        "csv" => "text/csv",
        "html" | "htm" => "text/html",
        "json" => "application/json",
        "pdf" => "application/pdf",
        "zip" => "application/zip",
        _ => "application/octet-stream",
    }
}

/// The shared-namespace key of a blob: `shared/<category>/<2 hex>/<sha256>`.
pub fn shared_key(mime: &str, sha256_hex: &str) -> String {
    let category = mime.split('/').next().unwrap_or("application");
    format!("shared/{category}/{}/{sha256_hex}", &sha256_hex[..2])
}

/// A time-ordered, ULID-style id (48-bit milliseconds + 80 random bits, Crockford base32).
/// Time order keeps inserts at the end of the primary-key index.
pub fn new_id() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    const ALPHABET: &[u8] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let ms = now.as_millis() as u64 & ((1 << 48) - 1);
    let mut hasher = Sha256::new();
    hasher.update(now.as_nanos().to_le_bytes());
    hasher.update(std::process::id().to_le_bytes());
    hasher.update(COUNTER.fetch_add(1, Ordering::Relaxed).to_le_bytes());
    let random = hasher.finalize();
    let mut value: u128 = (u128::from(ms)) << 80;
    value |= u128::from_be_bytes(random[..16].try_into().expect("16 bytes")) >> 48;
    (0..26)
        .rev()
        .map(|i| ALPHABET[((value >> (i * 5)) & 31) as usize] as char)
        .collect()
}

/// A file copied into object storage.
pub struct StoredFile {
    /// SHA-256, lower-case hex.
    pub sha256: String,
    /// Bytes.
    pub size: u64,
    /// Object key.
    pub key: String,
    /// MIME type.
    pub mime: &'static str,
}

/// Hashes a file, then streams it into `blobs` under its content-addressed key (skipped when
/// the key is already there). Memory stays bounded whatever the file's size.
pub async fn store_file(path: &Path, blobs: &ObjectBlobs) -> Result<StoredFile> {
    let mime = mime_type(path);
    let (sha256, size) = hash_file(path).await?;
    let key = shared_key(mime, &sha256);
    let store = blobs.object_store();
    let location = ObjectPath::parse(&key).context("building the object key")?;
    if store.head(&location).await.is_err() {
        let upload = store
            .put_multipart(&location)
            .await
            .with_context(|| format!("storing {}", path.display()))?;
        let mut writer = WriteMultipart::new_with_chunk_size(upload, 8 << 20);
        let mut file = tokio::fs::File::open(path)
            .await
            .with_context(|| format!("opening {}", path.display()))?;
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = file.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            writer.wait_for_capacity(4).await?;
            writer.write(&buf[..n]);
        }
        writer
            .finish()
            .await
            .with_context(|| format!("storing {}", path.display()))?;
    }
    Ok(StoredFile {
        sha256,
        size,
        key,
        mime,
    })
}

async fn hash_file(path: &Path) -> Result<(String, u64)> {
    let mut file = tokio::fs::File::open(path)
        .await
        .with_context(|| format!("opening {}", path.display()))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = file.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        size += n as u64;
        hasher.update(&buf[..n]);
    }
    Ok((hex::encode(hasher.finalize()), size))
}

/// Every regular file under `path` (itself if it is a file), sorted.
pub fn walk(path: &Path) -> Result<Vec<std::path::PathBuf>> {
    let meta = std::fs::metadata(path).with_context(|| format!("reading {}", path.display()))?;
    if meta.is_file() {
        return Ok(vec![path.to_path_buf()]);
    }
    let mut out = Vec::new();
    let mut stack = vec![path.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in
            std::fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))?
        {
            let entry = entry?;
            let ty = entry.file_type()?;
            if ty.is_dir() {
                stack.push(entry.path());
            } else if ty.is_file() {
                out.push(entry.path());
            }
        }
    }
    out.sort();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_time_ordered_and_unique() {
        let ids: Vec<String> = (0..100).map(|_| new_id()).collect();
        assert!(ids.iter().all(|i| i.len() == 26));
        // The first 10 characters are the millisecond timestamp: never decreasing.
        assert!(ids.windows(2).all(|w| w[0][..10] <= w[1][..10]));
        let unique: std::collections::BTreeSet<&String> = ids.iter().collect();
        assert_eq!(unique.len(), ids.len());
    }

    #[test]
    fn keys_follow_the_shared_namespace() {
        let h = "ab".repeat(32);
        assert_eq!(shared_key("image/png", &h), format!("shared/image/ab/{h}"));
        assert_eq!(mime_type(Path::new("x/IMG.JPG")), "image/jpeg");
        assert_eq!(mime_type(Path::new("noext")), "application/octet-stream");
    }
}
