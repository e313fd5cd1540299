use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sync_hlc::{Hlc, NodeId};
use sync_protocol::{AppRow, RowOp, SharedRecord, RESERVED_TABLE};

/// One synced item: a shared record or an app row, at one version.
#[derive(Debug, Clone, PartialEq)]
pub enum Item {
    /// A shared record (Drive channel).
    Record(SharedRecord),
    /// An app row (that app's channel).
    Row(AppRow),
}

/// The identity of an item across versions: what last-write-wins is decided per.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "kind")]
pub enum ItemKey {
    /// A shared record, by id.
    Record {
        /// Record id.
        id: String,
    },
    /// An app row, by app, table and canonical primary key (a JSON array of key values).
    Row {
        /// App id.
        app: String,
        /// Table.
        table: String,
        /// Canonical primary key.
        key: String,
    },
}

impl fmt::Display for ItemKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ItemKey::Record { id } => write!(f, "record {id}"),
            ItemKey::Row { app, table, key } => write!(f, "row {app}.{table}{key}"),
        }
    }
}

/// What a blob transfer needs to know about a file-backed item's blob.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BlobManifest {
    /// Object-storage key.
    pub key: String,
    /// Content hash to verify (SHA-256 hex, `sha256:<hex>`, or opaque: unverified).
    pub content_hash: String,
    /// Expected size in bytes (informational).
    pub size_bytes: u64,
    /// MIME type to store the blob with.
    pub mime_type: Option<String>,
}

impl BlobManifest {
    /// The SHA-256 the content hash names, lower-case, if it names one: 64 hex digits,
    /// optionally after `sha256:` (as sync-blobs' `expected_sha256`). Any other form is
    /// opaque and its blob is accepted unverified.
    pub fn sha256(&self) -> Option<String> {
        let hash = &self.content_hash;
        let hex = hash.strip_prefix("sha256:").unwrap_or(hash);
        (hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
            .then(|| hex.to_ascii_lowercase())
    }
}

/// Where a file-backed item stands on one side. Derived, never stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Residency {
    /// No row.
    Absent,
    /// Row present, its blob required and missing.
    Staged,
    /// Row present with its blob, or a row that needs no blob.
    Resident,
    /// The row is a tombstone.
    Tombstoned,
}

impl Residency {
    /// Residency from the stored row (if any) and whether its blob is present. A row with no
    /// blob key is resident.
    pub fn derive(item: Option<&Item>, files_enabled: bool, blob_present: bool) -> Residency {
        match item {
            None => Residency::Absent,
            Some(item) if item.is_tombstone() => Residency::Tombstoned,
            Some(item) => match item.blob(files_enabled) {
                Some(_) if !blob_present => Residency::Staged,
                _ => Residency::Resident,
            },
        }
    }
}

impl Item {
    /// The item's version.
    pub fn hlc(&self) -> &Hlc {
        match self {
            Item::Record(r) => r.hlc(),
            Item::Row(r) => r.hlc(),
        }
    }

    /// The node that wrote this version.
    pub fn origin(&self) -> &NodeId {
        self.hlc().node_id()
    }

    /// Whether this version is a soft delete.
    pub fn is_tombstone(&self) -> bool {
        match self {
            Item::Record(r) => r.is_tombstone(),
            Item::Row(r) => r.is_tombstone(),
        }
    }

    /// The blob this version needs, if any.
    ///
    /// A shared record needs one when it is live and has a non-empty object key. A row
    /// needs one when it is in the reserved table, live, names a non-empty
    /// `object_storage_key`, and its app has files enabled. Tombstones never move blobs.
    pub fn blob(&self, files_enabled: bool) -> Option<BlobManifest> {
        match self {
            Item::Record(r) => {
                if r.is_tombstone() || r.object_storage_key.is_empty() {
                    return None;
                }
                Some(BlobManifest {
                    key: r.object_storage_key.clone(),
                    content_hash: if r.content_hash.is_empty() {
                        r.object_storage_key.clone()
                    } else {
                        r.content_hash.clone()
                    },
                    size_bytes: r.size_bytes,
                    mime_type: r.mime_type.clone(),
                })
            }
            Item::Row(r) => {
                if !files_enabled
                    || r.table != RESERVED_TABLE
                    || r.op == RowOp::Delete
                    || r.is_tombstone()
                {
                    return None;
                }
                let row = r.row.as_ref()?;
                let key = row.get("object_storage_key")?.as_str()?;
                if key.is_empty() {
                    return None;
                }
                let content_hash = match row.get("content_hash").and_then(Value::as_str) {
                    Some(h) if !h.is_empty() => h.to_string(),
                    _ => key.to_string(),
                };
                let size_bytes = match row.get("size_bytes") {
                    Some(Value::Number(n)) => n.as_u64().unwrap_or(0),
                    Some(Value::String(s)) => s.parse().unwrap_or(0),
                    _ => 0,
                };
                Some(BlobManifest {
                    key: key.to_string(),
                    content_hash,
                    size_bytes,
                    mime_type: row
                        .get("mime_type")
                        .and_then(Value::as_str)
                        .map(str::to_string),
                })
            }
        }
    }
}
