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
pub type Seq = u64;

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
}
