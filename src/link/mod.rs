//! The contract between the hub and its shards, as messages.
//!
//! Everything the hub learns about a shard, and everything it asks of one, is one of these
//! messages; nothing else crosses between the roles (no shared memory, no closures, no
//! handles). Embedded shards speak it over bounded in-process channels ([`channel`]); shards
//! in other processes will speak the same messages, MessagePack-encoded, over the control link.
//!
//! ```text
//!  shard ──► hub   register · load · session_ended · entries · prepared · drained · replicas
//!  hub ──► shard   keys · lb · peers · prepare · store_entries · drain · stop
//! ```
//!
//! Order on one link: a shard's first message is [`ShardMsg::Register`]; the hub refuses
//! (drops the link) a registration whose [`LINK_VERSION`] it does not speak or whose shard id
//! is already live. After that, messages flow both ways in any order. `prepare` (a client was
//! granted this shard: warm its stream, hold its session entries) is acknowledged with
//! `prepared` carrying the same batch number, so a grant leaves only once its shards hold the
//! client's entries. A link that closes is a shard that is gone.
//!
//! Which messages may be dropped: load reports, session outcomes and entry copies are
//! *reports* (the next one supersedes, or losing one costs a statistic or one 0-RTT); a full
//! link drops and counts them. Registration, `drained` and every hub command are never
//! dropped: senders wait (back-pressure).

pub mod channel;
pub mod net;

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use crate::ids::{ClientId, GroupId, ShardId, StreamName, TokenId};
use crate::metrics_hist::{CodeCount, HistogramSnapshot};

/// The version of the hub↔shard contract. A shard registers with it; the hub refuses another.
/// Version 4 added the load report's 0-RTT counters, rejections by code and latency
/// histograms ([`ShardLoad`]); version 5 the keys `store_entries` has a shard forget.
pub const LINK_VERSION: u16 = 5;

/// Shard → hub.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ShardMsg {
    /// The first message on a link.
    Register(Register),
    /// The shard's load now (gauges and cumulative counters).
    Load(ShardLoad),
    /// One ended session.
    SessionEnded(SessionOutcome),
    /// Session-store entries a handshake at this shard produced for a client: the hub keeps
    /// them for the client and copies them where the client goes next.
    Entries(ClientEntries),
    /// `prepare` batch `batch` is done: the stream is warm, the entries are in the store.
    Prepared { batch: u64 },
    /// The shard finished draining: every session is gone; it stops now.
    Drained,
    /// The live streams this shard holds (primary or standby copy), with each one's
    /// replication state: a report, sent with the load when the shard holds any.
    Replicas { streams: Vec<ReplicaReport> },
}

/// Hub → shard.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum HubCmd {
    /// A client was granted this shard: start producing `stream` ahead of its attach, put its
    /// session entries in the store, answer `prepared { batch }`.
    Prepare {
        batch: u64,
        stream: StreamName,
        entries: Vec<StoreEntry>,
    },
    /// More entries of a client that was granted this shard, and the keys of entries that
    /// fell out of their client's newest (see [`crate::tickets::book`]), to forget (no answer).
    StoreEntries {
        entries: Vec<StoreEntry>,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        forget: Vec<bytes::Bytes>,
    },
    /// Send go-away to every session, give them `grace_ms` to move, then stop and report
    /// `drained`.
    Drain { grace_ms: u64 },
    /// Stop at once: every connection closed with `SHARD_STOPPED`.
    Stop,
    /// The token keys of the shard's group: the hub's first command on every link, and again
    /// whenever the set changes (a new epoch, or the next epoch's key ahead of it). Replaces
    /// the keys the shard held.
    Keys(GroupKeys),
    /// The shards of this shard's group that live streams are mirrored between, and how many
    /// standby copies each live stream keeps: sent after `keys` on every link, and again
    /// whenever the group's membership changes. Replaces the list the shard held.
    Peers(GroupPeers),
    /// Behind a QUIC-LB balancer: the configuration the shard's connection IDs use, with its
    /// server id (after `keys`, before anything else, on every link of such a hub).
    Lb(crate::lb::LbParams),
}

/// The mirroring peers of one group (see [`crate::shard::replica`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupPeers {
    pub group: GroupId,
    /// Standby copies per live stream (0: live streams are not mirrored).
    pub standbys: u32,
    pub shards: Vec<Peer>,
}

/// One shard that takes mirrored copies of live streams.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Peer {
    pub shard: ShardId,
    /// Its mirror receiver (ALPN `shoal-mirror/1`).
    #[serde(with = "addr_text")]
    pub mirror: SocketAddr,
}

/// One live stream at one shard.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplicaReport {
    pub stream: StreamName,
    pub role: ReplicaRole,
    /// The newest sequence this shard holds.
    pub last_seq: Option<u64>,
    /// Primary: the standbys it mirrors to, each with its lag.
    pub standbys: Vec<StandbyLag>,
    /// Standby copies of this stream promoted to primary here.
    pub promotions: u64,
}

/// How a live stream's copy is held.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReplicaRole {
    /// Its publisher is attached here; the shard mirrors it to its standbys.
    Primary,
    /// A mirrored copy, fed by the primary.
    Standby,
}

/// A primary's view of one standby.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StandbyLag {
    pub shard: ShardId,
    /// Newest sequence the standby acknowledged.
    pub acked_seq: Option<u64>,
    /// Sequences the standby is behind the primary.
    pub lag_seqs: u64,
    /// Age of the oldest chunk the standby has not acknowledged (0 when it has all).
    pub lag_ms: u64,
    /// Whether the mirror is sending to it now (false: connecting, or failing the health
    /// rule; its lag then grows until it is back or leaves the group).
    pub connected: bool,
}

/// The token-opening keys of one group (see [`crate::security::token`]): the previous and the
/// current epoch's, and the next one's shortly before it begins. Secret: `Debug` shows epochs
/// only.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupKeys {
    pub group: GroupId,
    /// The rotation interval: epoch `n` starts at `n * epoch_secs` seconds since the Unix
    /// epoch.
    pub epoch_secs: u64,
    pub keys: Vec<EpochKey>,
}

/// One epoch's key (32 bytes).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EpochKey {
    pub epoch: u32,
    pub key: bytes::Bytes,
}

impl std::fmt::Debug for GroupKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let epochs: Vec<u32> = self.keys.iter().map(|k| k.epoch).collect();
        f.debug_struct("GroupKeys")
            .field("group", &self.group)
            .field("epoch_secs", &self.epoch_secs)
            .field("epochs", &epochs)
            .finish()
    }
}

/// A shard introduces itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Register {
    pub version: u16,
    pub shard: ShardId,
    pub group: GroupId,
    /// Where clients reach the shard (`ip:port` on the wire).
    #[serde(with = "addr_text")]
    pub addr: SocketAddr,
    /// Most sessions the shard admits.
    pub capacity: u64,
    /// Its mirror receiver for standby copies of live streams (none: it takes no copies).
    #[serde(
        default,
        with = "opt_addr_text",
        skip_serializing_if = "Option::is_none"
    )]
    pub mirror: Option<SocketAddr>,
}

/// Socket addresses travel as `ip:port` text (the same in every encoding).
mod addr_text {
    use std::net::SocketAddr;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(a: &SocketAddr, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(a)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SocketAddr, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// Optional socket addresses, as [`addr_text`].
mod opt_addr_text {
    use std::net::SocketAddr;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(a: &Option<SocketAddr>, s: S) -> Result<S::Ok, S::Error> {
        match a {
            Some(a) => s.collect_str(a),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SocketAddr>, D::Error> {
        match Option::<String>::deserialize(d)? {
            Some(t) => t.parse().map(Some).map_err(serde::de::Error::custom),
            None => Ok(None),
        }
    }
}

/// A shard's load: gauges now and counters since it started.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShardLoad {
    pub sessions: u64,
    pub streams: u64,
    /// Sum of the expected bitrates (token `expect_kbps`) of the open sessions.
    pub committed_kbps: u64,
    /// Payload bytes the shard's streams hold.
    pub buffer_bytes: u64,
    pub bytes_sent: u64,
    pub chunks_sent: u64,
    /// Nanoseconds of CPU time the shard's tasks used.
    pub cpu_ns: u64,
    /// Sessions ever admitted.
    pub allocations: u64,
    pub zero_rtt_attaches: u64,
    /// Connections refused or closed with an error code.
    pub rejections: u64,
    /// Reports this shard dropped because its link was full.
    #[serde(default)]
    pub reports_dropped: u64,
    /// Session tickets clients offered that this shard's store did not hold (not copied here
    /// in time, expired or evicted): each one a resumption without 0-RTT.
    #[serde(default)]
    pub ticket_misses: u64,
    /// Standby copies of live streams promoted to primary here (their publisher moved in).
    #[serde(default)]
    pub promotions: u64,
    /// Behind a QUIC-LB balancer: packets that reached this shard carrying another server's
    /// connection ID (a first packet routed here for another shard, or a short header with a
    /// foreign CID). 0 when the balancer routes right.
    #[serde(default)]
    pub misrouted: u64,
    /// Datagrams whose QUIC header does not parse (a long header cut short, a CID over 20
    /// octets, a short header shorter than a CID), dropped unread.
    #[serde(default)]
    pub malformed: u64,
    /// Connections that offered 0-RTT data: those whose early data was accepted and those
    /// that offered a session ticket this shard's store did not hold (early data refused).
    #[serde(default)]
    pub zero_rtt_attempted: u64,
    /// Connections whose handshake resumed a stored session, and so took their early data.
    #[serde(default)]
    pub zero_rtt_accepted: u64,
    /// Connections refused or closed with an error code, per code (the codes counted at
    /// least once; their sum is `rejections`).
    #[serde(default)]
    pub rejected: Vec<CodeCount>,
    /// Connection accepted → attach admitted, in seconds' buckets
    /// ([`crate::metrics_hist::BOUNDS_US`]).
    #[serde(default)]
    pub attach_seconds: HistogramSnapshot,
    /// Attach admitted → first chunk written to the subscriber (time to first byte here).
    #[serde(default)]
    pub first_chunk_seconds: HistogramSnapshot,
}

/// One ended session, as a shard reports it: the hub's profiler records it and its load model
/// learns from it. Carries no payload and no secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionOutcome {
    pub client: ClientId,
    /// The grant (token id) the session was admitted on.
    pub grant: TokenId,
    /// The stream the session subscribed or published to.
    pub stream: StreamName,
    pub role: crate::wire::Role,
    /// When the shard admitted it (ms since the Unix epoch).
    pub started_ms: u64,
    pub duration_ms: u64,
    /// Payload bytes delivered to a subscriber, or accepted from a publisher.
    pub bytes: u64,
}

/// Session-store entries that belong to one client.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientEntries {
    pub client: ClientId,
    pub entries: Vec<StoreEntry>,
}

/// One TLS session-store entry (rustls `StoresServerSessions`): the ticket id and the
/// encoded session it resumes (shared buffers: an entry copied to several shards is not
/// copied in memory). Secret: never logged (`Debug` shows sizes only).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreEntry {
    pub key: bytes::Bytes,
    pub value: bytes::Bytes,
}

impl std::fmt::Debug for StoreEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "StoreEntry({} + {} bytes)",
            self.key.len(),
            self.value.len()
        )
    }
}

/// Encodes a message as the networked link will (MessagePack with field names).
pub fn encode<T: Serialize>(msg: &T) -> Vec<u8> {
    rmp_serde::to_vec_named(msg).expect("link messages always serialize to MessagePack")
}

/// Decodes a message; a malformed one is an error, never a panic.
pub fn decode<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, rmp_serde::decode::Error> {
    rmp_serde::from_slice(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry() -> StoreEntry {
        StoreEntry {
            key: vec![1; 32].into(),
            value: vec![2; 90].into(),
        }
    }

    #[test]
    fn every_message_survives_the_wire_encoding() {
        let client = ClientId::new("c-1").unwrap();
        let stream = StreamName::new("live/x").unwrap();
        let shard_msgs = [
            ShardMsg::Register(Register {
                version: LINK_VERSION,
                shard: ShardId(3),
                group: GroupId(1),
                addr: "127.0.0.1:7001".parse().unwrap(),
                capacity: 100,
                mirror: Some("127.0.0.1:7002".parse().unwrap()),
            }),
            ShardMsg::Load(ShardLoad {
                sessions: 4,
                cpu_ns: 9,
                zero_rtt_attempted: 3,
                zero_rtt_accepted: 2,
                rejected: vec![CodeCount {
                    code: crate::wire::ErrorCode::TokenInvalid.as_u32(),
                    count: 5,
                }],
                attach_seconds: {
                    let mut h = HistogramSnapshot::default();
                    h.observe(std::time::Duration::from_millis(3));
                    h
                },
                ..ShardLoad::default()
            }),
            ShardMsg::SessionEnded(SessionOutcome {
                client: client.clone(),
                grant: TokenId([7; 16]),
                stream: stream.clone(),
                role: crate::wire::Role::Subscribe,
                started_ms: 1,
                duration_ms: 2,
                bytes: 3,
            }),
            ShardMsg::Entries(ClientEntries {
                client,
                entries: vec![entry()],
            }),
            ShardMsg::Prepared { batch: 5 },
            ShardMsg::Drained,
        ];
        for m in shard_msgs {
            assert_eq!(decode::<ShardMsg>(&encode(&m)).unwrap(), m);
        }
        let cmds = [
            HubCmd::Prepare {
                batch: 1,
                stream,
                entries: vec![entry()],
            },
            HubCmd::StoreEntries {
                entries: vec![entry(), entry()],
                forget: Vec::new(),
            },
            HubCmd::StoreEntries {
                entries: Vec::new(),
                forget: vec![vec![1; 32].into()],
            },
            HubCmd::Drain { grace_ms: 2000 },
            HubCmd::Stop,
            HubCmd::Keys(GroupKeys {
                group: GroupId(1),
                epoch_secs: 3600,
                keys: vec![EpochKey {
                    epoch: 7,
                    key: vec![5; 32].into(),
                }],
            }),
        ];
        for c in cmds {
            assert_eq!(decode::<HubCmd>(&encode(&c)).unwrap(), c);
        }
    }

    #[test]
    fn malformed_messages_are_errors() {
        let good = encode(&HubCmd::Drain { grace_ms: 1 });
        for cut in 0..good.len() {
            assert!(decode::<HubCmd>(&good[..cut]).is_err(), "cut at {cut}");
        }
        assert!(decode::<HubCmd>(b"\x81\xa4type\xa4boom").is_err());
    }

    #[test]
    fn entries_and_keys_do_not_show_their_bytes() {
        assert_eq!(format!("{:?}", entry()), "StoreEntry(32 + 90 bytes)");
        let keys = GroupKeys {
            group: GroupId(1),
            epoch_secs: 10,
            keys: vec![EpochKey {
                epoch: 3,
                key: vec![0xab; 32].into(),
            }],
        };
        let shown = format!("{keys:?}");
        assert!(
            shown.contains("epochs: [3]") && !shown.contains("171"),
            "{shown}"
        );
    }
}
