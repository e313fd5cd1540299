#![doc = include_str!("../README.md")]

mod channel;
mod error;
mod item;
mod local;
mod namespace;
mod pipeline;
mod ports;
mod prefix;
mod responder;
mod resume;
mod round;
mod select;

pub use channel::{valid_app_id, Channel};
pub use error::{BlobError, BoxError, Error, ExchangeError, ItemProblem, StoreError};
pub use item::{BlobManifest, Item, ItemKey, Residency};
pub use local::ChannelData;
pub use namespace::{row_key, AppNamespace, MissingKey, NamespaceError, TableSpec};
pub use pipeline::Rounds;
pub use ports::{
    inline_unsupported, AppRowStore, Applied, BlobDigest, BlobPack, BlobStamp, BlobStore,
    BlobTransfer, ChannelState, DigestMemo, ExchangeTransport, PackListing, PackedBlob, PackedMeta,
    RecordStore, SyncStateStore, TimeSource, Transferred,
};
pub use prefix::PrefixLedger;
pub use responder::{Responder, ResponderConfig, ResponderParts};
pub use resume::resume_clock;
pub use round::{
    Direction, ItemFailure, Requester, RequesterParts, RoundConfig, RoundReport, SharedClock,
    SyncSummary,
};
pub use select::{CutOrder, PageSelector, ScanRequest, SelectStep, Selection, Stream};

pub use sync_hlc as hlc;
pub use sync_protocol as protocol;
