//! The shoal wire protocol: versioned, length-prefixed frames on QUIC streams.
//!
//! ```text
//! frame   = length:u32be  version:u8  kind:u8  body          (length counts version..body)
//! kind 1  = control: body is one MessagePack-encoded `Message` (maps with field names, decoded
//!           strictly: see `strict`)
//! kind 2  = chunk:   body is the MessagePack array [seq:uint64, timestamp_us:uint64, payload:bin32]
//! ```
//!
//! Control frames are at most [`MAX_CONTROL_BODY`] bytes and chunk payloads at most
//! [`MAX_CHUNK_PAYLOAD`]; a reader checks the header before it reads (or allocates for) the body.
//! Chunks use a fixed MessagePack layout so that encoding writes a 30-byte header in front of the
//! payload and decoding slices the payload out of the receive buffer: no per-chunk allocation
//! beyond the payload's `Bytes`. `PROTOCOL.md` is the full specification.

mod codes;
pub mod datagram;
mod frame;
mod messages;
pub(crate) mod strict;

pub use codes::ErrorCode;
pub use frame::{
    encode_chunk_header, encode_control, write_chunk, write_control, Frame, FrameReader, WireError,
    CHUNK_HEADER_LEN, KIND_CHUNK, KIND_CONTROL, MAX_CHUNK_PAYLOAD, MAX_CONTROL_BODY, VERSION,
};
pub use messages::*;
pub use strict::DecodeError;
