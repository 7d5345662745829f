//! Frame encoding and the incremental frame reader.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use super::strict::{self, DecodeError};
use super::{Chunk, ErrorCode, Message};
use crate::ids::Seq;

/// The protocol version this build speaks.
pub const VERSION: u8 = 1;
pub const KIND_CONTROL: u8 = 1;
pub const KIND_CHUNK: u8 = 2;
/// Largest control message body, in bytes.
pub const MAX_CONTROL_BODY: usize = 16 * 1024;
/// Largest chunk payload, in bytes.
pub const MAX_CHUNK_PAYLOAD: usize = 1024 * 1024;
/// Bytes in front of a chunk's payload: frame header (6) and the MessagePack array header (24).
pub const CHUNK_HEADER_LEN: usize = 6 + CHUNK_BODY_OVERHEAD;
const CHUNK_BODY_OVERHEAD: usize = 1 + 9 + 9 + 5;
const HEADER_LEN: usize = 6;

/// A decoded frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    Control(Message),
    Chunk(Chunk),
}

impl Frame {
    /// Name for logs and errors; never includes a payload.
    pub fn kind(&self) -> &'static str {
        match self {
            Frame::Control(m) => m.kind(),
            Frame::Chunk(_) => "chunk",
        }
    }
}

/// Why a frame could not be read. Each maps to the error code the reader closes with.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WireError {
    #[error("stream ended in the middle of a frame")]
    Truncated,
    #[error("unsupported protocol version {0}")]
    UnsupportedVersion(u8),
    #[error("{kind} frame of {len} bytes is over the limit of {max}")]
    TooLarge {
        kind: &'static str,
        len: usize,
        max: usize,
    },
    #[error("malformed frame: {0}")]
    Malformed(String),
    /// A chunk at sequence 2^64 − 1, which no chunk may carry (it has no successor).
    #[error("chunk at sequence {0}, which has no successor")]
    SeqExhausted(Seq),
    /// A control body that is not a message in the documented encoding (see [`strict`]).
    #[error("malformed control message: {0}")]
    Control(#[from] DecodeError),
    #[error("stream read failed: {0}")]
    Io(#[from] std::io::Error),
}

impl WireError {
    /// The code to close the connection with.
    pub fn code(&self) -> ErrorCode {
        match self {
            WireError::Truncated | WireError::Malformed(_) | WireError::Control(_) => {
                ErrorCode::MalformedFrame
            }
            WireError::UnsupportedVersion(_) => ErrorCode::UnsupportedVersion,
            WireError::TooLarge { .. } => ErrorCode::FrameTooLarge,
            WireError::SeqExhausted(_) => ErrorCode::SeqExhausted,
            WireError::Io(_) => ErrorCode::ProtocolViolation,
        }
    }
}

/// Encodes a control message as one frame.
pub fn encode_control(msg: &Message) -> Bytes {
    let body = rmp_serde::to_vec_named(msg).expect("messages always serialize to MessagePack");
    let mut out = BytesMut::with_capacity(HEADER_LEN + body.len());
    out.put_u32((body.len() + 2) as u32);
    out.put_u8(VERSION);
    out.put_u8(KIND_CONTROL);
    out.put_slice(&body);
    out.freeze()
}

/// The bytes that go in front of `chunk.payload` on the wire. A reader refuses a chunk at
/// [`Seq::MAX`]; nothing here sends one.
pub fn encode_chunk_header(chunk: &Chunk) -> [u8; CHUNK_HEADER_LEN] {
    let mut h = [0u8; CHUNK_HEADER_LEN];
    let mut w = &mut h[..];
    w.put_u32((2 + CHUNK_BODY_OVERHEAD + chunk.payload.len()) as u32);
    w.put_u8(VERSION);
    w.put_u8(KIND_CHUNK);
    w.put_u8(0x93); // fixarray, 3 elements
    w.put_u8(0xcf); // uint64
    w.put_u64(chunk.seq.get());
    w.put_u8(0xcf);
    w.put_u64(chunk.timestamp_us);
    w.put_u8(0xc6); // bin32
    w.put_u32(chunk.payload.len() as u32);
    h
}

/// Writes one control frame.
pub async fn write_control(
    send: &mut quinn::SendStream,
    msg: &Message,
) -> Result<(), quinn::WriteError> {
    send.write_all(&encode_control(msg)).await
}

/// Writes one chunk frame without copying the payload.
pub async fn write_chunk(
    send: &mut quinn::SendStream,
    chunk: &Chunk,
) -> Result<(), quinn::WriteError> {
    debug_assert!(chunk.payload.len() <= MAX_CHUNK_PAYLOAD);
    let header = Bytes::copy_from_slice(&encode_chunk_header(chunk));
    send.write_all_chunks(&mut [header, chunk.payload.clone()])
        .await
}

fn decode_chunk(mut body: Bytes) -> Result<Chunk, WireError> {
    let bad = |what: &str| WireError::Malformed(format!("chunk: {what}"));
    if body.len() < CHUNK_BODY_OVERHEAD {
        return Err(bad("shorter than its header"));
    }
    if body.get_u8() != 0x93 {
        return Err(bad("expected a 3-element array"));
    }
    if body.get_u8() != 0xcf {
        return Err(bad("seq must be encoded as uint64"));
    }
    let seq = Seq::new(body.get_u64());
    if body.get_u8() != 0xcf {
        return Err(bad("timestamp must be encoded as uint64"));
    }
    let timestamp_us = body.get_u64();
    if body.get_u8() != 0xc6 {
        return Err(bad("payload must be encoded as bin32"));
    }
    let len = body.get_u32() as usize;
    if len != body.len() {
        return Err(bad("payload length disagrees with the frame length"));
    }
    // Well-formed, but out of range: refused with its own code (see `Seq`).
    if !seq.is_chunk_seq() {
        return Err(WireError::SeqExhausted(seq));
    }
    Ok(Chunk {
        seq,
        timestamp_us,
        payload: body,
    })
}

/// A byte stream a [`FrameReader`] reads in owned pieces.
pub trait ByteSource: Unpin {
    /// The next bytes of the stream, `None` at its end. Cancel-safe: bytes are taken from
    /// the stream only when the future completes.
    fn next_bytes(
        &mut self,
    ) -> impl std::future::Future<Output = std::io::Result<Option<Bytes>>> + Send;
}

/// quinn hands over what it received as it is, without a copy.
impl ByteSource for quinn::RecvStream {
    async fn next_bytes(&mut self) -> std::io::Result<Option<Bytes>> {
        Ok(self.read_chunk(usize::MAX, true).await?.map(|c| c.bytes))
    }
}

/// A whole input at once (fuzzing, tests).
impl ByteSource for &[u8] {
    fn next_bytes(
        &mut self,
    ) -> impl std::future::Future<Output = std::io::Result<Option<Bytes>>> + Send {
        let out = (!self.is_empty()).then(|| Bytes::copy_from_slice(self));
        *self = &[];
        std::future::ready(Ok(out))
    }
}

/// Reads frames from a byte stream, checking each header before reading its body.
///
/// What the stream delivers is kept as it came ([`ByteSource::next_bytes`]): a frame inside
/// one piece is split off it without a copy, and only a frame that spans pieces is copied,
/// once, into a buffer sized for it. A reader waiting for its next frame holds no buffer: an
/// idle session costs nothing here.
pub struct FrameReader<R> {
    inner: R,
    /// Unread bytes, as the stream delivered them (when `joined` is empty).
    head: Bytes,
    /// Unread bytes of a frame that spans pieces, copied together.
    joined: BytesMut,
}

impl<R: ByteSource> FrameReader<R> {
    pub fn new(inner: R) -> Self {
        Self {
            inner,
            head: Bytes::new(),
            joined: BytesMut::new(),
        }
    }

    pub fn into_inner(self) -> R {
        self.inner
    }

    pub fn get_mut(&mut self) -> &mut R {
        &mut self.inner
    }

    fn unread(&self) -> &[u8] {
        if self.joined.is_empty() {
            &self.head
        } else {
            &self.joined
        }
    }

    /// The next frame, or `None` when the stream ended cleanly between frames.
    pub async fn next(&mut self) -> Result<Option<Frame>, WireError> {
        if !self.fill(HEADER_LEN).await? {
            return if self.unread().is_empty() {
                Ok(None)
            } else {
                Err(WireError::Truncated)
            };
        }
        let b = self.unread();
        let len = u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize;
        let (version, kind) = (b[4], b[5]);
        if version != VERSION {
            return Err(WireError::UnsupportedVersion(version));
        }
        if len < 2 {
            return Err(WireError::Malformed("frame length below 2".into()));
        }
        let body_len = len - 2;
        let (name, max) = match kind {
            KIND_CONTROL => ("control", MAX_CONTROL_BODY),
            KIND_CHUNK => ("chunk", MAX_CHUNK_PAYLOAD + CHUNK_BODY_OVERHEAD),
            other => return Err(WireError::Malformed(format!("unknown frame kind {other}"))),
        };
        if body_len > max {
            return Err(WireError::TooLarge {
                kind: name,
                len: body_len,
                max,
            });
        }
        if !self.fill(HEADER_LEN + body_len).await? {
            return Err(WireError::Truncated);
        }
        let body = if self.joined.is_empty() {
            self.head.advance(HEADER_LEN);
            self.head.split_to(body_len)
        } else {
            self.joined.advance(HEADER_LEN);
            let body = self.joined.split_to(body_len).freeze();
            if self.joined.is_empty() {
                // Nothing left of it: let go of the allocation (the body keeps its part).
                self.joined = BytesMut::new();
            }
            body
        };
        let frame = match kind {
            KIND_CONTROL => Frame::Control(strict::from_slice(&body)?),
            _ => Frame::Chunk(decode_chunk(body)?),
        };
        Ok(Some(frame))
    }

    /// Reads until `need` bytes are unread; false if the stream ended first. What each read
    /// returns is stored before the next one, so a cancelled call loses nothing.
    async fn fill(&mut self, need: usize) -> Result<bool, WireError> {
        while self.unread().len() < need {
            let Some(more) = self.inner.next_bytes().await? else {
                return Ok(false);
            };
            if !self.joined.is_empty() {
                self.joined.reserve(need.saturating_sub(self.joined.len()));
                self.joined.extend_from_slice(&more);
            } else if self.head.is_empty() {
                self.head = more;
            } else {
                // A frame spans pieces: one buffer, sized for what is needed so far.
                let mut joined = BytesMut::with_capacity(need.max(self.head.len() + more.len()));
                joined.extend_from_slice(&self.head);
                joined.extend_from_slice(&more);
                self.head = Bytes::new();
                self.joined = joined;
            }
        }
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::StreamName;
    use crate::wire::{Heartbeat, Subscribe};

    async fn read_all(bytes: &[u8]) -> Vec<Result<Frame, String>> {
        let mut r = FrameReader::new(bytes);
        let mut out = Vec::new();
        loop {
            match r.next().await {
                Ok(Some(f)) => out.push(Ok(f)),
                Ok(None) => return out,
                Err(e) => {
                    out.push(Err(e.to_string()));
                    return out;
                }
            }
        }
    }

    fn chunk_bytes(c: &Chunk) -> Vec<u8> {
        let mut v = encode_chunk_header(c).to_vec();
        v.extend_from_slice(&c.payload);
        v
    }

    #[tokio::test]
    async fn round_trip_control_and_chunks() {
        let sub = Message::Subscribe(Subscribe {
            stream: StreamName::new("synth/x").unwrap(),
            from_seq: Some(Seq::new(7)),
            stream_end: true,
        });
        let c = Chunk {
            seq: Seq::new(42),
            timestamp_us: 1_700_000_000_000_000,
            payload: Bytes::from_static(b"hello"),
        };
        let mut wire = encode_control(&sub).to_vec();
        wire.extend(chunk_bytes(&c));
        wire.extend_from_slice(&encode_control(&Message::Heartbeat(Heartbeat { at_us: 9 })));
        let frames = read_all(&wire).await;
        assert_eq!(frames.len(), 3);
        assert_eq!(frames[0].as_ref().unwrap(), &Frame::Control(sub));
        assert_eq!(frames[1].as_ref().unwrap(), &Frame::Chunk(c));
    }

    /// Pieces as they were sent, like a QUIC stream's.
    struct Pieces(tokio::sync::mpsc::UnboundedReceiver<Bytes>);

    impl ByteSource for Pieces {
        async fn next_bytes(&mut self) -> std::io::Result<Option<Bytes>> {
            Ok(self.0.recv().await)
        }
    }

    fn pieces() -> (
        tokio::sync::mpsc::UnboundedSender<Bytes>,
        FrameReader<Pieces>,
    ) {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        (tx, FrameReader::new(Pieces(rx)))
    }

    /// A reader waiting for its next frame holds no buffer, whether the last frame came in one
    /// piece or in several.
    #[tokio::test]
    async fn a_waiting_reader_holds_nothing() {
        let (tx, mut r) = pieces();
        let hb = encode_control(&Message::Heartbeat(Heartbeat { at_us: 1 }));
        tx.send(hb.clone()).unwrap();
        assert!(matches!(r.next().await, Ok(Some(Frame::Control(_)))));
        for (i, b) in hb.iter().enumerate() {
            tx.send(Bytes::copy_from_slice(&[*b])).unwrap();
            if i == 2 {
                let wait = tokio::time::timeout(std::time::Duration::from_millis(5), r.next());
                assert!(wait.await.is_err(), "a partial frame is not a frame");
            }
        }
        assert!(matches!(r.next().await, Ok(Some(Frame::Control(_)))));
        let wait = tokio::time::timeout(std::time::Duration::from_millis(20), r.next()).await;
        assert!(wait.is_err(), "nothing more was sent");
        assert!(r.head.is_empty());
        assert_eq!(r.joined.capacity(), 0, "an idle reader holds no buffer");
    }

    /// A chunk inside one piece is that piece's memory; frames across piece boundaries, in
    /// any split, come out whole and in order.
    #[tokio::test]
    async fn frames_inside_a_piece_are_not_copied_and_split_ones_are_joined() {
        let c = |seq: u64| Chunk {
            seq: Seq::new(seq),
            timestamp_us: seq,
            payload: Bytes::from(vec![seq as u8; 700]),
        };
        let piece = Bytes::from(chunk_bytes(&c(1)));
        let (tx, mut r) = pieces();
        tx.send(piece.clone()).unwrap();
        let Ok(Some(Frame::Chunk(got))) = r.next().await else {
            panic!("a chunk")
        };
        let range = piece.as_ptr_range();
        assert!(
            range.contains(&got.payload.as_ptr()),
            "the payload is a slice of the piece"
        );
        let mut wire = Vec::new();
        for seq in 2..6 {
            wire.extend(chunk_bytes(&c(seq)));
        }
        for cut in [1, 5, 6, 7, 333, 731, 1000, 2000] {
            let (tx, mut r) = pieces();
            for part in wire.chunks(cut) {
                tx.send(Bytes::copy_from_slice(part)).unwrap();
            }
            drop(tx);
            for seq in 2..6 {
                match r.next().await {
                    Ok(Some(Frame::Chunk(got))) => assert_eq!(got, c(seq), "cut {cut}"),
                    other => panic!("cut {cut}: {other:?}"),
                }
            }
            assert!(matches!(r.next().await, Ok(None)), "cut {cut}");
        }
    }

    #[tokio::test]
    async fn chunk_is_valid_messagepack() {
        let c = Chunk {
            seq: Seq::new(1),
            timestamp_us: 2,
            payload: Bytes::from_static(&[7, 8, 9]),
        };
        let v = chunk_bytes(&c);
        let (seq, ts, payload): (u64, u64, serde_bytes::ByteBuf) =
            rmp_serde::from_slice(&v[6..]).unwrap();
        assert_eq!((seq, ts, payload.into_vec()), (1, 2, vec![7, 8, 9]));
    }

    #[tokio::test]
    async fn a_chunk_at_the_end_of_the_sequence_space_is_refused() {
        let at = |seq| Chunk {
            seq,
            timestamp_us: 1,
            payload: Bytes::from_static(b"x"),
        };
        let last = chunk_bytes(&at(Seq::LAST));
        assert_eq!(read_all(&last).await, vec![Ok(Frame::Chunk(at(Seq::LAST)))]);
        let err = FrameReader::new(&chunk_bytes(&at(Seq::MAX))[..])
            .next()
            .await
            .unwrap_err();
        assert!(matches!(err, WireError::SeqExhausted(Seq::MAX)), "{err}");
        assert_eq!(err.code(), ErrorCode::SeqExhausted);
    }

    #[tokio::test]
    async fn rejects_bad_headers_before_reading_bodies() {
        // Unknown version.
        let mut v = encode_control(&Message::Heartbeat(Heartbeat { at_us: 1 })).to_vec();
        v[4] = 9;
        assert!(matches!(
            FrameReader::new(&v[..]).next().await,
            Err(WireError::UnsupportedVersion(9))
        ));
        // Oversize control frame: only the header is present, the reader must not wait for
        // (or allocate) the body.
        let mut big = ((MAX_CONTROL_BODY + 3) as u32).to_be_bytes().to_vec();
        big.extend([VERSION, KIND_CONTROL]);
        let err = FrameReader::new(&big[..]).next().await.unwrap_err();
        assert_eq!(err.code(), ErrorCode::FrameTooLarge);
        // Unknown kind, garbage body, truncated frame.
        let mut k = [0, 0, 0, 3, VERSION, 77, 0];
        assert_eq!(
            FrameReader::new(&k[..]).next().await.unwrap_err().code(),
            ErrorCode::MalformedFrame
        );
        k[5] = KIND_CONTROL;
        k[6] = 0xc1; // never-used MessagePack byte
        assert_eq!(
            FrameReader::new(&k[..]).next().await.unwrap_err().code(),
            ErrorCode::MalformedFrame
        );
        assert!(matches!(
            FrameReader::new(&k[..4]).next().await,
            Err(WireError::Truncated)
        ));
    }

    #[tokio::test]
    async fn every_prefix_and_every_byte_flip_is_handled() {
        // A poor man's fuzz: truncations and single-byte corruptions of a valid stream never
        // panic and never yield more frames than were sent.
        let c = Chunk {
            seq: Seq::new(3),
            timestamp_us: 4,
            payload: Bytes::from(vec![5u8; 40]),
        };
        let mut wire = chunk_bytes(&c);
        wire.extend_from_slice(&encode_control(&Message::Heartbeat(Heartbeat { at_us: 1 })));
        for cut in 0..wire.len() {
            assert!(read_all(&wire[..cut]).await.len() <= 2);
        }
        for i in 0..wire.len() {
            for flip in [0x01u8, 0x80, 0xff] {
                let mut w = wire.clone();
                w[i] ^= flip;
                assert!(read_all(&w).await.len() <= 2);
            }
        }
    }
}
