//! Object-key hygiene: every key is checked here before any storage call sees it.

use object_store::path::Path;
use sync_core::{BlobError, Channel};

/// The longest key accepted, in bytes (S3's own limit).
pub const MAX_KEY_BYTES: usize = 1024;

/// Checks that `key` is a safe, canonical object key.
///
/// Refused: the empty key, keys longer than [`MAX_KEY_BYTES`], absolute keys (leading `/`),
/// empty segments (`a//b`, a trailing `/`), `.` and `..` segments, backslashes (a path
/// separator on some systems), control characters, and a last segment ending in `#` and
/// digits only (the local filesystem backend's name for an upload in progress). Every
/// operation of this crate calls it before touching storage, so a refused key never reaches
/// a backend.
///
/// ```
/// use sync_blobs::validate_key;
///
/// assert!(validate_key("shared/photo/ab/abcdef").is_ok());
/// assert!(validate_key("apps/notes/syncable/../../etc/passwd").is_err());
/// assert!(validate_key("/shared/x").is_err());
/// ```
pub fn validate_key(key: &str) -> Result<(), BlobError> {
    let refuse = |reason: &str| {
        Err(BlobError::InvalidKey {
            key: key.to_string(),
            reason: reason.to_string(),
        })
    };
    if key.is_empty() {
        return refuse("empty key");
    }
    if key.len() > MAX_KEY_BYTES {
        return refuse(&format!("longer than {MAX_KEY_BYTES} bytes"));
    }
    if key.starts_with('/') {
        return refuse("absolute key (leading `/`)");
    }
    if key.contains('\\') {
        return refuse("backslash in key");
    }
    if key.chars().any(char::is_control) {
        return refuse("control character in key");
    }
    for segment in key.split('/') {
        match segment {
            "" => return refuse("empty path segment"),
            "." | ".." => return refuse("relative path segment (`.` or `..`)"),
            _ => {}
        }
    }
    let last = key.rsplit('/').next().unwrap_or(key);
    if let Some((_, suffix)) = last.rsplit_once('#') {
        if !suffix.is_empty() && suffix.bytes().all(|b| b.is_ascii_digit()) {
            return refuse("last segment ends in `#<digits>` (reserved for uploads in progress)");
        }
    }
    Ok(())
}

/// Whether `key` is a valid key inside `channel`'s namespace: `shared/...` for the Drive
/// channel, `apps/X/...` for app `X`.
///
/// ```
/// use sync_blobs::key_in_namespace;
/// use sync_core::Channel;
///
/// assert!(key_in_namespace(&Channel::Drive, "shared/photo/ab/abcdef"));
/// assert!(!key_in_namespace(&Channel::Drive, "apps/notes/syncable/a"));
/// assert!(key_in_namespace(&Channel::App("notes".into()), "apps/notes/syncable/a"));
/// assert!(!key_in_namespace(&Channel::App("notes".into()), "apps/notes2/syncable/a"));
/// ```
pub fn key_in_namespace(channel: &Channel, key: &str) -> bool {
    validate_key(key).is_ok() && key.starts_with(&channel.key_prefix())
}

/// The storage path of a validated key.
pub(crate) fn object_path(key: &str) -> Result<Path, BlobError> {
    validate_key(key)?;
    // Cannot fail for a validated key; mapped anyway rather than trusted.
    Path::parse(key).map_err(|e| BlobError::InvalidKey {
        key: key.to_string(),
        reason: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_namespaced_keys() {
        for key in [
            "shared/photo/ab/0123456789abcdef",
            "apps/notes/syncable/2024/report final.pdf",
            "apps/x/syncable/ünïcødé.txt",
            "a",
            "a#b",
            "a/b#",
            "a/b#1x",
            "a#1/b",
            "with%percent",
        ] {
            assert!(validate_key(key).is_ok(), "{key:?} should be accepted");
        }
    }

    #[test]
    fn refuses_unsafe_keys() {
        let long = "a".repeat(MAX_KEY_BYTES + 1);
        for key in [
            "",
            "/shared/x",
            "/",
            "shared//x",
            "shared/x/",
            "shared/../x",
            "shared/./x",
            "..",
            ".",
            "shared/x/..",
            "shared\\x",
            "shared/x\n",
            "shared/\u{7f}",
            "shared/\u{0}",
            "shared/\u{85}x",
            "shared/x#12",
            long.as_str(),
        ] {
            match validate_key(key) {
                Err(BlobError::InvalidKey { key: k, .. }) => assert_eq!(k, key),
                other => panic!("{key:?} should be refused, got {other:?}"),
            }
        }
        assert!(validate_key(&"a".repeat(MAX_KEY_BYTES)).is_ok());
    }

    #[test]
    fn validated_keys_are_storage_paths_unchanged() {
        for key in ["shared/a/b", "apps/x/syncable/a b%c"] {
            assert_eq!(object_path(key).unwrap().as_ref(), key);
        }
    }

    #[test]
    fn namespaces_follow_channels() {
        let app = Channel::App("notes".into());
        assert!(key_in_namespace(&app, "apps/notes/syncable/f"));
        assert!(!key_in_namespace(&app, "apps/notes"));
        assert!(!key_in_namespace(&app, "apps/notes/"));
        assert!(!key_in_namespace(&app, "apps/notes/../other/f"));
        assert!(!key_in_namespace(&app, "shared/f"));
        assert!(key_in_namespace(&Channel::Drive, "shared/f"));
        assert!(!key_in_namespace(&Channel::Drive, "sharedx/f"));
        assert!(!key_in_namespace(&Channel::Drive, "shared/"));
    }
}
