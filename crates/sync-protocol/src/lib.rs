#![doc = include_str!("../README.md")]

mod codec;
mod file_row;
mod messages;

pub use codec::{Codec, DecodeError, EncodeError};
pub use file_row::{FileRecordRow, FileRowError, RESERVED_TABLE};
pub use messages::{
    error_code, refusal_code, AppRow, ExchangeRequest, ExchangeResponse, InlineBlob, Refusal,
    RowOp, RowValues, SharedRecord, PROTOCOL_VERSION,
};
pub use sync_hlc::{Hlc, NodeId, Watermarks};
