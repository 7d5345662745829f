//! Newtypes for the identifiers that travel on the wire.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A shard, unique in its cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ShardId(pub u32);

/// A group of shards with the same allocation and priority; a token is valid in one group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct GroupId(pub u32);

/// Identifies one sealed token (and so one session).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct TokenId(pub [u8; 16]);

/// Position of a chunk in its stream. Sequences start at any value and grow by one per chunk.
///
/// On the wire a `Seq` is the plain unsigned integer it holds (a MessagePack integer in control
/// messages, the chunk header's `u64be`). Its arithmetic is checked: there is no `Add`, only
/// [`Seq::next`], [`Seq::checked_add`], [`Seq::distance`] and friends, which say when the
/// sequence space ends instead of wrapping or panicking.
///
/// [`Seq::MAX`] (2^64 − 1) has no successor, so **no chunk carries it**: every frame reader
/// refuses such a chunk with `SEQ_EXHAUSTED`, and the shard, the mirror and the publisher never
/// produce one. It remains a valid *position*: the exclusive end of a range (`gap{to: MAX}`)
/// or a start that nothing will reach (`subscribe{from_seq: MAX}`). The highest sequence a
/// chunk may carry is [`Seq::LAST`].
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Seq(u64);

impl Seq {
    pub const ZERO: Seq = Seq(0);
    /// The highest sequence a chunk may carry.
    pub const LAST: Seq = Seq(u64::MAX - 1);
    /// The end of the sequence space: a position, never the sequence of a chunk.
    pub const MAX: Seq = Seq(u64::MAX);

    pub const fn new(v: u64) -> Seq {
        Seq(v)
    }

    pub const fn get(self) -> u64 {
        self.0
    }

    /// The sequence after this one; `None` for [`Seq::MAX`].
    pub const fn next(self) -> Option<Seq> {
        match self.0.checked_add(1) {
            Some(v) => Some(Seq(v)),
            None => None,
        }
    }

    /// The sequence before this one; `None` for 0.
    pub const fn prev(self) -> Option<Seq> {
        match self.0.checked_sub(1) {
            Some(v) => Some(Seq(v)),
            None => None,
        }
    }

    /// Whether a chunk may carry this sequence: every one but [`Seq::MAX`].
    pub const fn is_chunk_seq(self) -> bool {
        self.0 != u64::MAX
    }

    /// The position just after `self` as the exclusive end of a range: `self + 1`, or
    /// [`Seq::MAX`] for [`Seq::MAX`]. Exact wherever `self` is the sequence of a chunk or an
    /// acknowledgement of one (`..=c` and `..c.saturating_next()` hold the same chunks, since
    /// no chunk carries `MAX`); use [`Seq::next`] anywhere else.
    pub const fn saturating_next(self) -> Seq {
        Seq(self.0.saturating_add(1))
    }

    /// `self + n`; `None` past [`Seq::MAX`].
    pub const fn checked_add(self, n: u64) -> Option<Seq> {
        match self.0.checked_add(n) {
            Some(v) => Some(Seq(v)),
            None => None,
        }
    }

    /// `self - n`; `None` below 0.
    pub const fn checked_sub(self, n: u64) -> Option<Seq> {
        match self.0.checked_sub(n) {
            Some(v) => Some(Seq(v)),
            None => None,
        }
    }

    /// `self - n`, or 0: the start of a window of `n` sequences that ends at `self`.
    pub const fn saturating_sub(self, n: u64) -> Seq {
        Seq(self.0.saturating_sub(n))
    }

    /// The number of sequences in `self..to`; `None` when `to` is before `self`.
    pub const fn distance(self, to: Seq) -> Option<u64> {
        to.0.checked_sub(self.0)
    }
}

impl From<u64> for Seq {
    fn from(v: u64) -> Seq {
        Seq(v)
    }
}

impl From<Seq> for u64 {
    fn from(s: Seq) -> u64 {
        s.0
    }
}

impl fmt::Display for Seq {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

/// Longest stream name accepted anywhere.
pub const MAX_STREAM_NAME: usize = 128;
/// Longest client id accepted anywhere.
pub const MAX_CLIENT_ID: usize = 64;

/// The name of a stream. Names that start with `synth/` are synthetic streams served by every
/// shard; any other name is a live stream fed by publishers.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct StreamName(String);

/// A client, as it names itself to the hub (the profiler keys on it).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ClientId(String);

/// A name or id was empty, too long, or held characters outside the allowed set.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {what} {value:?}: {why}")]
pub struct InvalidName {
    pub what: &'static str,
    pub value: String,
    pub why: &'static str,
}

fn check_name(what: &'static str, value: String, max: usize) -> Result<String, InvalidName> {
    let why = if value.is_empty() {
        "must not be empty"
    } else if value.len() > max {
        "is too long"
    } else if !value
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"-_./:".contains(&b))
    {
        "may hold only ASCII letters, digits and - _ . / :"
    } else {
        return Ok(value);
    };
    let mut value = value;
    value.truncate(max.min(value.len()));
    Err(InvalidName { what, value, why })
}

impl StreamName {
    pub const SYNTHETIC_PREFIX: &'static str = "synth/";

    pub fn new(name: impl Into<String>) -> Result<Self, InvalidName> {
        check_name("stream name", name.into(), MAX_STREAM_NAME).map(Self)
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
    pub fn is_synthetic(&self) -> bool {
        self.0.starts_with(Self::SYNTHETIC_PREFIX)
    }
}

impl ClientId {
    pub fn new(id: impl Into<String>) -> Result<Self, InvalidName> {
        check_name("client id", id.into(), MAX_CLIENT_ID).map(Self)
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

macro_rules! string_newtype_impls {
    ($t:ty) => {
        impl TryFrom<String> for $t {
            type Error = InvalidName;
            fn try_from(s: String) -> Result<Self, InvalidName> {
                Self::new(s)
            }
        }
        impl From<$t> for String {
            fn from(v: $t) -> String {
                v.0
            }
        }
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
        impl std::str::FromStr for $t {
            type Err = InvalidName;
            fn from_str(s: &str) -> Result<Self, InvalidName> {
                Self::new(s)
            }
        }
    };
}
string_newtype_impls!(StreamName);
string_newtype_impls!(ClientId);

impl fmt::Display for ShardId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "shard-{}", self.0)
    }
}
impl fmt::Display for GroupId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "group-{}", self.0)
    }
}
impl fmt::Debug for TokenId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The id is not secret; eight hex digits are enough to correlate logs.
        write!(f, "TokenId(")?;
        for b in &self.0[..4] {
            write!(f, "{b:02x}")?;
        }
        write!(f, "…)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        assert!(StreamName::new("synth/a-1").unwrap().is_synthetic());
        assert!(!StreamName::new("live/x").unwrap().is_synthetic());
        assert_eq!(StreamName::new("").unwrap_err().why, "must not be empty");
        assert!(StreamName::new("a b").is_err());
        assert!(StreamName::new("x".repeat(MAX_STREAM_NAME + 1)).is_err());
        assert!(ClientId::new("c".repeat(MAX_CLIENT_ID)).is_ok());
        // Decoding goes through the same check.
        let bytes = rmp_serde::to_vec(&"bad name!").unwrap();
        assert!(rmp_serde::from_slice::<StreamName>(&bytes).is_err());
    }

    #[test]
    fn seq_arithmetic_is_checked_at_both_ends() {
        let s = Seq::new(41);
        assert_eq!(s.next(), Some(Seq::new(42)));
        assert_eq!(s.prev(), Some(Seq::new(40)));
        assert_eq!(Seq::LAST.next(), Some(Seq::MAX));
        assert_eq!(Seq::MAX.next(), None);
        assert_eq!(Seq::ZERO.prev(), None);
        assert_eq!(Seq::MAX.prev(), Some(Seq::LAST));
        assert!(Seq::LAST.is_chunk_seq() && !Seq::MAX.is_chunk_seq());
        assert_eq!(Seq::LAST.saturating_next(), Seq::MAX);
        assert_eq!(Seq::MAX.saturating_next(), Seq::MAX);
        assert_eq!(s.checked_add(1), Some(Seq::new(42)));
        assert_eq!(Seq::LAST.checked_add(1), Some(Seq::MAX));
        assert_eq!(Seq::LAST.checked_add(2), None);
        assert_eq!(Seq::MAX.checked_add(0), Some(Seq::MAX));
        assert_eq!(s.checked_sub(41), Some(Seq::ZERO));
        assert_eq!(s.checked_sub(42), None);
        assert_eq!(s.saturating_sub(100), Seq::ZERO);
        assert_eq!(Seq::MAX.saturating_sub(1), Seq::LAST);
        assert_eq!(Seq::ZERO.distance(Seq::MAX), Some(u64::MAX));
        assert_eq!(Seq::MAX.distance(Seq::ZERO), None);
        assert_eq!(s.distance(s), Some(0));
        assert!(Seq::ZERO < Seq::LAST && Seq::LAST < Seq::MAX);
        assert_eq!(Seq::from(7u64).get(), 7);
        assert_eq!(u64::from(Seq::MAX), u64::MAX);
        assert_eq!(Seq::MAX.to_string(), "18446744073709551615");
        assert_eq!(Seq::default(), Seq::ZERO);
    }

    #[test]
    fn seq_serializes_as_the_plain_integer() {
        for v in [
            0,
            1,
            127,
            128,
            255,
            256,
            65_535,
            65_536,
            u64::from(u32::MAX),
            u64::MAX,
        ] {
            let as_seq = rmp_serde::to_vec_named(&Seq::new(v)).unwrap();
            assert_eq!(as_seq, rmp_serde::to_vec_named(&v).unwrap(), "{v}");
            assert_eq!(rmp_serde::from_slice::<Seq>(&as_seq).unwrap(), Seq::new(v));
        }
        // Optional sequences too (`from_seq`, `last_seq`).
        let some = rmp_serde::to_vec_named(&Some(Seq::MAX)).unwrap();
        assert_eq!(some, rmp_serde::to_vec_named(&Some(u64::MAX)).unwrap());
        assert_eq!(
            rmp_serde::to_vec_named(&None::<Seq>).unwrap(),
            rmp_serde::to_vec_named(&None::<u64>).unwrap()
        );
        assert_eq!(serde_json::to_string(&Seq::new(5)).unwrap(), "5");
    }
}
