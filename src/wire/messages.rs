//! Control messages and stream chunks.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::ids::{ClientId, GroupId, Seq, ShardId, StreamName};

/// One chunk of a stream. Receivers detect gaps and duplicates by `seq` and resume from it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk {
    pub seq: Seq,
    /// Microseconds since the Unix epoch at which the chunk was produced.
    pub timestamp_us: u64,
    pub payload: Bytes,
}

/// What the requester wants to do with the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Subscribe,
    Publish,
}

/// Optional facts a client declares about itself; the hub's profiler and predictor use them.
///
/// Decoding separates the type of a field from its range: a field of the wrong MessagePack type
/// makes the frame malformed, a value of the right type out of range is for [`Hints::validate`]
/// (the hub rejects the request with `BadRequest`). So `bitrate_kbps` takes any MessagePack
/// integer: one outside `u32` decodes to the nearest bound (a negative one to 0, a larger one to
/// `u32::MAX`), both of which `validate` refuses, so that it accepts exactly the wire values
/// in `1..=10_000_000`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Hints {
    pub region: Option<String>,
    pub device_class: Option<String>,
    #[serde(deserialize_with = "any_integer_clamped")]
    pub bitrate_kbps: Option<u32>,
}

/// Longest hint string accepted.
pub const MAX_HINT_LEN: usize = 64;
/// Range of `bitrate_kbps` accepted.
pub const HINT_BITRATE_KBPS: std::ops::RangeInclusive<u32> = 1..=10_000_000;

impl Hints {
    /// Checks the ranges; the hub rejects a request whose hints fail with `BadRequest`.
    pub fn validate(&self) -> Result<(), &'static str> {
        for s in [&self.region, &self.device_class].into_iter().flatten() {
            if s.len() > MAX_HINT_LEN {
                return Err("hint string longer than 64 bytes");
            }
        }
        if let Some(b) = self.bitrate_kbps {
            if !HINT_BITRATE_KBPS.contains(&b) {
                return Err("bitrate_kbps must be in 1..=10000000");
            }
        }
        Ok(())
    }
}

/// An optional integer of any size, clamped into `u32` (see [`Hints`]).
fn any_integer_clamped<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
    struct Clamped(u32);
    impl<'de> Deserialize<'de> for Clamped {
        fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct V;
            impl serde::de::Visitor<'_> for V {
                type Value = Clamped;
                fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                    f.write_str("an integer")
                }
                fn visit_u64<E>(self, v: u64) -> Result<Clamped, E> {
                    Ok(Clamped(u32::try_from(v).unwrap_or(u32::MAX)))
                }
                fn visit_i64<E>(self, v: i64) -> Result<Clamped, E> {
                    Ok(Clamped(u32::try_from(v.max(0)).unwrap_or(u32::MAX)))
                }
            }
            d.deserialize_i64(V)
        }
    }
    Ok(Option::<Clamped>::deserialize(d)?.map(|c| c.0))
}

/// `nil` (or an absent field, with `#[serde(default)]`) as the type's default.
fn nil_as_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// Client → hub: the first message on a hub connection's bidirectional stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamRequest {
    pub client_id: ClientId,
    pub stream: StreamName,
    pub role: Role,
    /// Absent or `nil`: no hints.
    #[serde(default, deserialize_with = "nil_as_default")]
    pub hints: Hints,
}

/// A shard as the grant lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardAddr {
    pub id: ShardId,
    /// `ip:port` of the shard's UDP socket (behind a balancer: the balancer's address).
    pub addr: String,
    /// Behind a QUIC-LB balancer: connection IDs that route to this shard, for the destination
    /// CID of a client's first packets (one per connection, used in turn; PROTOCOL §1.1).
    /// Absent otherwise.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub route_cids: Vec<serde_bytes::ByteBuf>,
}

/// Hub → client: the answer to a [`StreamRequest`]. Chunk frames may follow on the same stream
/// (the first chunks of the stream, so the first byte arrives with the grant).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    pub group: GroupId,
    /// Shards of the group, best first.
    pub shards: Vec<ShardAddr>,
    #[serde(with = "serde_bytes")]
    pub token: Vec<u8>,
    /// 32 bytes; the key of the attach proof and the bind MAC.
    #[serde(with = "serde_bytes")]
    pub session_secret: Vec<u8>,
    /// Milliseconds since the Unix epoch after which the token is refused.
    pub expires_at_ms: u64,
}

impl std::fmt::Debug for Grant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Grant")
            .field("group", &self.group)
            .field("shards", &self.shards)
            .field("token_len", &self.token.len())
            .field("expires_at_ms", &self.expires_at_ms)
            .finish_non_exhaustive()
    }
}

/// Hub → client: the request is refused, with its code. The hub finishes the stream after it;
/// the connection stays usable. (Shards refuse by closing the connection with the code.)
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reject {
    pub code: u32,
    pub reason: String,
}

/// Client → shard, in the first (0-RTT) flight: the token and the shard-bound proof
/// `HMAC-SHA256(secret, "shoal attach" | shard_id:u32be | nonce)` (see [`crate::security::proof`]).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attach {
    #[serde(with = "serde_bytes")]
    pub token: Vec<u8>,
    /// 16 random bytes, fresh for every attach.
    #[serde(with = "serde_bytes")]
    pub nonce: Vec<u8>,
    /// 32 bytes.
    #[serde(with = "serde_bytes")]
    pub proof: Vec<u8>,
}

impl std::fmt::Debug for Attach {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Attach")
            .field("token_len", &self.token.len())
            .finish_non_exhaustive()
    }
}

/// Shard → client: the attach was admitted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attached {
    pub shard: ShardId,
    /// Whether the shard read the attach from 0-RTT data.
    pub zero_rtt: bool,
    /// The shard's load when it admitted: open sessions per 1000 of its quota (a probe for
    /// clients racing several shards). Optional on the wire.
    #[serde(default)]
    pub load_permille: Option<u32>,
}

/// Client → shard, after the handshake: `HMAC-SHA256(secret, "shoal bind" | exporter)` where the
/// exporter is 32 bytes of `export_keying_material(label "EXPORTER-shoal-bind", context "")`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bind {
    #[serde(with = "serde_bytes")]
    pub mac: Vec<u8>,
}

impl std::fmt::Debug for Bind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Bind { .. }")
    }
}

/// Shard → client: the session is bound to this connection.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bound {}

/// Client → shard: send the stream, starting at `from_seq` (or at the live edge).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Subscribe {
    pub stream: StreamName,
    pub from_seq: Option<Seq>,
    /// The client understands `stream_end` ([`StreamEnd`]) and wants it when the publisher
    /// finishes; absent (false): the shard never sends it (a client written before it would
    /// refuse an unknown message).
    #[serde(default)]
    pub stream_end: bool,
}

/// Client → shard (bound sessions only): chunk frames that follow are published to the stream.
/// The publisher chooses the sequence numbers; the shard drops any at or below its newest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Publish {
    pub stream: StreamName,
}

/// Either side, when it has sent nothing else for a heartbeat interval.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Heartbeat {
    pub at_us: u64,
}

/// Server → client: stop using this connection; resume elsewhere. The connection closes with
/// `code` after the grace period.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GoAway {
    pub code: u32,
    pub grace_ms: u64,
}

/// Shard → subscriber: chunks `from..to` (end exclusive) cannot be delivered; the stream goes on
/// at `to`. Gaps are always reported, never silent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Gap {
    pub from: Seq,
    pub to: Seq,
}

/// Mirror sender → receiver, first frame on the first bidirectional stream of a
/// `shoal-mirror/1` connection: the chunks that follow belong to `stream`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MirrorHello {
    pub stream: StreamName,
}

/// Mirror receiver → sender, the answer to [`MirrorHello`]: the newest sequence the receiver
/// has delivered for the stream (from an earlier connection), so the sender resumes after it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MirrorWelcome {
    pub last_seq: Option<Seq>,
}

/// Shard → subscriber: the stream's publisher finished (a clean end of its publish stream)
/// and every chunk up to `last_seq` (none: it published nothing) was sent. Nothing follows;
/// the shard finishes its stream and the subscriber closes the connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamEnd {
    pub last_seq: Option<Seq>,
}

/// Every control message. Encoded as a MessagePack map with one key, the variant name in
/// snake_case, whose value is the message's map.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Message {
    StreamRequest(StreamRequest),
    Grant(Grant),
    Reject(Reject),
    Attach(Attach),
    Attached(Attached),
    Bind(Bind),
    Bound(Bound),
    Subscribe(Subscribe),
    Publish(Publish),
    Heartbeat(Heartbeat),
    GoAway(GoAway),
    Gap(Gap),
    MirrorHello(MirrorHello),
    MirrorWelcome(MirrorWelcome),
    StreamEnd(StreamEnd),
}

impl Message {
    /// Name for logs and errors.
    pub fn kind(&self) -> &'static str {
        match self {
            Message::StreamRequest(_) => "stream_request",
            Message::Grant(_) => "grant",
            Message::Reject(_) => "reject",
            Message::Attach(_) => "attach",
            Message::Attached(_) => "attached",
            Message::Bind(_) => "bind",
            Message::Bound(_) => "bound",
            Message::Subscribe(_) => "subscribe",
            Message::Publish(_) => "publish",
            Message::Heartbeat(_) => "heartbeat",
            Message::GoAway(_) => "go_away",
            Message::Gap(_) => "gap",
            Message::MirrorHello(_) => "mirror_hello",
            Message::MirrorWelcome(_) => "mirror_welcome",
            Message::StreamEnd(_) => "stream_end",
        }
    }
}
