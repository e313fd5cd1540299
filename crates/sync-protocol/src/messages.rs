use serde::{Deserialize, Serialize};
use sync_hlc::{Hlc, NodeId, Watermarks};

/// The protocol version this crate speaks, sent as the `protocolVersion` extension.
/// A TypeScript peer sends none (version 0) and ignores ours.
///
/// * 1: `protocolVersion`, `peerWatermarks`, `haltedAuthors`, `refusals`.
/// * 2: inline small blobs (`acceptInlineBlobs`, `inlineBlobs`), negotiated per direction.
pub const PROTOCOL_VERSION: u32 = 2;

/// The column values of an app row, in wire order.
pub type RowValues = serde_json::Map<String, serde_json::Value>;

/// A shared record: owned by no app, file-backed, carried by the Drive channel.
///
/// Its version (for last-write-wins) is `updated_at`; its origin node is `updated_at`'s node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SharedRecord {
    /// Record id (a ULID in production).
    pub id: String,
    /// Always `"data"` today.
    pub kind: String,
    /// The record type, e.g. `image/jpeg`.
    #[serde(rename = "type")]
    pub record_type: String,
    /// When the record was created.
    pub created_at: Hlc,
    /// The version: when the record was last written (a soft delete sets it too).
    pub updated_at: Hlc,
    /// Set when the record is a tombstone.
    pub deleted_at: Option<Hlc>,
    /// Application-level version number.
    pub version: u64,
    /// SHA-256 of the blob (64 lower-case hex digits, or `sha256:<hex>`), or an opaque hash.
    pub content_hash: String,
    /// Where the blob lives in object storage; empty for a metadata-only record.
    pub object_storage_key: String,
    /// MIME type of the blob.
    pub mime_type: Option<String>,
    /// Size of the blob in bytes.
    pub size_bytes: u64,
    /// The file name it was imported from.
    pub original_filename: Option<String>,
    /// The app that created it.
    pub origin_app_id: String,
    /// Parent record, if any.
    pub parent_id: Option<String>,
    /// A display label.
    pub label: Option<String>,
}

impl SharedRecord {
    /// The record's version.
    pub fn hlc(&self) -> &Hlc {
        &self.updated_at
    }

    /// The node that wrote this version.
    pub fn origin(&self) -> &NodeId {
        self.updated_at.node_id()
    }

    /// Whether this version is a soft delete.
    pub fn is_tombstone(&self) -> bool {
        self.deleted_at.is_some()
    }
}

/// What an app row change does. On the wire: `"insert"`, `"update"` or `"delete"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RowOp {
    /// Insert (or upsert) the row.
    Insert,
    /// Update the row.
    Update,
    /// Soft-delete the row (a tombstone).
    Delete,
}

impl<'de> Deserialize<'de> for RowOp {
    /// Only the names. A derived decoder would also take a variant index (`1` for update)
    /// from MessagePack, a form the JSON protocol does not have (found by the fuzzer).
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        const NAMES: &[&str] = &["insert", "update", "delete"];
        let name = std::borrow::Cow::<'de, str>::deserialize(d)?;
        match &*name {
            "insert" => Ok(RowOp::Insert),
            "update" => Ok(RowOp::Update),
            "delete" => Ok(RowOp::Delete),
            other => Err(serde::de::Error::unknown_variant(other, NAMES)),
        }
    }
}

/// A row of one app's table, as a snapshot at `timestamp`. Carried by that app's channel.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AppRow {
    /// The version: when the row was written; its node is the origin node.
    pub timestamp: Hlc,
    /// The owning app.
    pub app_id: String,
    /// The table within the app.
    pub table: String,
    /// What the change does.
    pub op: RowOp,
    /// The column values (absent for a delete that only names its key).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub row: Option<RowValues>,
    /// The primary key of the row a delete or update targets.
    #[serde(default, rename = "where", skip_serializing_if = "Option::is_none")]
    pub where_: Option<RowValues>,
}

impl AppRow {
    /// The row's version.
    pub fn hlc(&self) -> &Hlc {
        &self.timestamp
    }

    /// The node that wrote this version.
    pub fn origin(&self) -> &NodeId {
        self.timestamp.node_id()
    }

    /// Whether this version is a soft delete: a `delete` op, or a non-null `deleted_at`.
    pub fn is_tombstone(&self) -> bool {
        self.op == RowOp::Delete
            || self
                .row
                .as_ref()
                .and_then(|r| r.get("deleted_at"))
                .is_some_and(|v| !v.is_null())
    }
}

/// `POST {base}/sync/exchange` request body.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExchangeRequest {
    /// The requester's coverage per origin node (including its own authorship), so the
    /// responder sends only what it lacks. Missing means `{}`.
    #[serde(default)]
    pub watermarks: Watermarks,
    /// Shared records the requester ships (Drive channel only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub records: Vec<SharedRecord>,
    /// App rows the requester ships (app channels only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub app_syncable_rows: Vec<AppRow>,
    /// Most items the responder may return.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u64>,
    /// Extension: the requester's protocol version (absent from TypeScript peers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol_version: Option<u32>,
    /// Extension: for each origin node whose items are shipped, the responder coverage the
    /// requester believed when it cut the page (its copy of the last coverage report). A
    /// responder that now covers less (it lost data since) refuses that node's items instead
    /// of letting them cover the gap.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer_watermarks: Option<Watermarks>,
    /// Extension (version 2): the largest blob, in bytes, the requester takes inline in the
    /// response instead of fetching it from `/files`. Absent: none (a TypeScript peer).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accept_inline_blobs: Option<u64>,
    /// Extension (version 2): blobs of shipped items, carried in the request instead of
    /// uploaded to `/files` first. Sent only to a responder that announced
    /// `acceptInlineBlobs`, each at most that size.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub inline_blobs: Vec<InlineBlob>,
}

/// A small blob carried inside an exchange message (protocol version 2): the bytes of the
/// object at `key`, verified against the content hash of the item naming that key before
/// they are stored. In JSON the bytes are a base64 string; in MessagePack a `bin`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InlineBlob {
    /// The object-storage key of the item that names this blob.
    pub key: String,
    /// The blob's bytes.
    #[serde(with = "blob_bytes")]
    pub bytes: Vec<u8>,
}

impl std::fmt::Debug for InlineBlob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InlineBlob")
            .field("key", &self.key)
            .field("len", &self.bytes.len())
            .finish()
    }
}

/// Bytes as MessagePack `bin` (compact), or a standard base64 string in JSON.
mod blob_bytes {
    use base64::{engine::general_purpose::STANDARD, Engine as _};
    use serde::{de, Deserializer, Serializer};
    use std::fmt;

    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            s.serialize_str(&STANDARD.encode(bytes))
        } else {
            s.serialize_bytes(bytes)
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        struct Visitor;
        impl<'de> de::Visitor<'de> for Visitor {
            type Value = Vec<u8>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("blob bytes (MessagePack bin or a base64 string)")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Vec<u8>, E> {
                STANDARD
                    .decode(v)
                    .map_err(|e| E::custom(format!("invalid base64: {e}")))
            }
            fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
                Ok(v.to_vec())
            }
            fn visit_byte_buf<E: de::Error>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
                Ok(v)
            }
        }
        if d.is_human_readable() {
            d.deserialize_str(Visitor)
        } else {
            d.deserialize_bytes(Visitor)
        }
    }
}

/// A refused inbound item, reported back to the requester (extension).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Refusal {
    /// The refused item's version (its node is the halted origin node).
    pub at: Hlc,
    /// Why, with a hint to fix it.
    pub reason: String,
    /// Extension: the reason as a stable machine-readable code, one of [`refusal_code`]'s
    /// (absent from older responders; a reader treats an unknown code as "other").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
}

impl Refusal {
    /// A refusal of the item at `at` with a code from [`refusal_code`].
    pub fn new(at: Hlc, code: &str, reason: impl Into<String>) -> Self {
        Self {
            at,
            reason: reason.into(),
            code: Some(code.to_string()),
        }
    }
}

/// The stable codes of the `code` field of an HTTP error body (`{"error": ..., "code": ...}`),
/// next to the human message. New codes may be added; their strings never change.
pub mod error_code {
    /// A malformed request (body, limit, key, header); the message names what.
    pub const BAD_REQUEST: &str = "bad_request";
    /// The request mixes channels (app rows on Drive, records or another app's rows on an
    /// app channel).
    pub const CHANNEL_VIOLATION: &str = "channel_violation";
    /// The app channel is not served here (the app is not registered).
    pub const UNKNOWN_APP: &str = "unknown_app";
    /// The channel is served but not usable (its namespace cannot be read or is missing).
    pub const CHANNEL_NOT_CONFIGURED: &str = "channel_not_configured";
    /// Missing or bad credentials (401).
    pub const UNAUTHORIZED: &str = "unauthorized";
    /// Credentials outside their scope (403).
    pub const FORBIDDEN: &str = "forbidden";
    /// Nothing at this route or key (404).
    pub const NOT_FOUND: &str = "not_found";
    /// The method is not allowed on this route (405).
    pub const METHOD_NOT_ALLOWED: &str = "method_not_allowed";
    /// The key collides with another (409).
    pub const CONFLICT: &str = "conflict";
    /// A precondition failed (412).
    pub const PRECONDITION_FAILED: &str = "precondition_failed";
    /// The body is larger than allowed (413).
    pub const TOO_LARGE: &str = "too_large";
    /// The body's content type or encoding is not taken (415).
    pub const UNSUPPORTED_MEDIA_TYPE: &str = "unsupported_media_type";
    /// The storage cannot do this (501).
    pub const NOT_IMPLEMENTED: &str = "not_implemented";
    /// Busy, shutting down or a failing backend: retry later (503, with `Retry-After`).
    pub const UNAVAILABLE: &str = "unavailable";
    /// A failure of the server (500).
    pub const INTERNAL: &str = "internal";
    /// Any other status.
    pub const OTHER: &str = "other";
}

/// The stable codes of [`Refusal::code`]. New codes may be added; their strings never change.
pub mod refusal_code {
    /// The item's timestamp is too far ahead of the responder's clock.
    pub const SKEW: &str = "skew";
    /// The responder lost data since the page was cut (decision 0001): ship again from its
    /// coverage report.
    pub const COVERAGE_GAP: &str = "coverage_gap";
    /// The app row's table is not registered for the app.
    pub const UNKNOWN_TABLE: &str = "unknown_table";
    /// The app row lacks part of its primary key.
    pub const MISSING_KEY: &str = "missing_key";
    /// The item's blob is not in the responder's storage: upload it first.
    pub const BLOB_MISSING: &str = "blob_missing";
    /// The stored or inline blob does not hash to the item's SHA-256 content hash.
    pub const BLOB_MISMATCH: &str = "blob_mismatch";
    /// The responder could not check the blob (its storage failed); retry.
    pub const BLOB_CHECK_FAILED: &str = "blob_check_failed";
    /// An inline blob was refused (outside the channel's namespace, too large, not matching
    /// the content hash, not stored): upload it to `/files` instead.
    pub const INLINE_BLOB: &str = "inline_blob";
    /// The responder's store failed to apply the item.
    pub const STORE_FAILED: &str = "store_failed";
    /// Every code above, for readers that bound what they accept (metrics labels).
    pub const ALL: &[&str] = &[
        SKEW,
        COVERAGE_GAP,
        UNKNOWN_TABLE,
        MISSING_KEY,
        BLOB_MISSING,
        BLOB_MISMATCH,
        BLOB_CHECK_FAILED,
        INLINE_BLOB,
        STORE_FAILED,
    ];
}

/// `POST {base}/sync/exchange` response body.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExchangeResponse {
    /// Shared records the requester has not covered.
    #[serde(default)]
    pub records: Vec<SharedRecord>,
    /// App rows the requester has not covered.
    #[serde(default)]
    pub app_syncable_rows: Vec<AppRow>,
    /// The responder's coverage over the whole channel after applying the request.
    pub responder_watermarks: Watermarks,
    /// Whether the responder holds more for the requester than this page.
    pub has_more: bool,
    /// Extension: origin nodes the responder halted for this request (absent: none).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub halted_authors: Vec<NodeId>,
    /// Extension: why each halted node was halted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub refusals: Vec<Refusal>,
    /// Extension: the responder's protocol version (absent from TypeScript peers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol_version: Option<u32>,
    /// Extension (version 2): the largest blob, in bytes, this responder takes inline in a
    /// request. Absent: none; upload blobs to `/files` first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accept_inline_blobs: Option<u64>,
    /// Extension (version 2): blobs of items in this page, for a requester that asked with
    /// `acceptInlineBlobs`; an item whose blob is not here is fetched from `/files`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub inline_blobs: Vec<InlineBlob>,
}
