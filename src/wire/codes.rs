//! Application error codes: every close reason and every rejection on the wire has one.
//!
//! Codes are QUIC application error codes (`CONNECTION_CLOSE` of type 0x1d) and also travel in
//! [`Reject`](super::Reject) and [`GoAway`](super::GoAway) messages. `PROTOCOL.md` section 6
//! lists them for third-party implementers, each with its value, name and reason phrase; a test
//! below fails when the two differ.

use std::fmt;

macro_rules! codes {
    ($( $(#[$doc:meta])* $name:ident = $value:literal, $text:literal; )*) => {
        /// A documented application error code.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[non_exhaustive]
        #[repr(u32)]
        pub enum ErrorCode {
            $( $(#[$doc])* $name = $value, )*
        }

        impl ErrorCode {
            /// Every code, in numeric order.
            pub const ALL: &'static [ErrorCode] = &[$(ErrorCode::$name,)*];

            pub fn from_u32(v: u32) -> Option<Self> {
                match v {
                    $( $value => Some(ErrorCode::$name), )*
                    _ => None,
                }
            }

            /// The short reason phrase sent with a close.
            pub fn reason(self) -> &'static str {
                match self {
                    $( ErrorCode::$name => $text, )*
                }
            }
        }
    };
}

codes! {
    /// Normal close; nothing went wrong.
    NoError = 0x00, "no error";
    /// A message arrived that the state of the connection does not allow.
    ProtocolViolation = 0x10, "protocol violation";
    /// A frame could not be decoded.
    MalformedFrame = 0x11, "malformed frame";
    /// A frame's length is above the limit for its kind.
    FrameTooLarge = 0x12, "frame too large";
    /// The frame's protocol version is not spoken here.
    UnsupportedVersion = 0x13, "unsupported protocol version";
    /// The first message did not arrive in time.
    Timeout = 0x14, "timed out";
    /// A request field is out of range (hub).
    BadRequest = 0x15, "bad request";
    /// The token cannot be parsed: wrong length or unknown token format version.
    TokenMalformed = 0x20, "token malformed";
    /// The token failed authentication: forged or tampered with.
    TokenInvalid = 0x21, "token invalid";
    /// The token is past its expiry.
    TokenExpired = 0x22, "token expired";
    /// The token was sealed under an epoch key this shard does not hold.
    TokenUnknownEpoch = 0x23, "token epoch unknown";
    /// The token is for another shard group.
    TokenWrongGroup = 0x24, "token for another group";
    /// The attach proof does not match this shard and nonce.
    ProofInvalid = 0x25, "attach proof invalid";
    /// This exact attach (token, nonce) was already used.
    AttachReplayed = 0x26, "attach replayed";
    /// A non-idempotent action came before the session was bound to the connection.
    NotBound = 0x27, "session not bound";
    /// The bind MAC does not match the connection's exporter secret.
    BindInvalid = 0x28, "bind invalid";
    /// The requested stream does not exist or cannot be served here.
    UnknownStream = 0x30, "unknown stream";
    /// The shard is at its quota.
    OverQuota = 0x31, "over quota";
    /// No shard group can take the request (hub).
    NoCapacity = 0x32, "no capacity";
    /// The requested sequence is no longer available and the stream cannot resume there.
    SeqUnavailable = 0x33, "sequence unavailable";
    /// A chunk carried sequence 2^64 − 1, which has no successor: no chunk may carry it (every
    /// frame reader refuses it; see [`crate::ids::Seq`]).
    SeqExhausted = 0x34, "sequence exhausted";
    /// The server is shutting down; reconnect elsewhere.
    GoingAway = 0x40, "going away";
    /// The shard was stopped.
    ShardStopped = 0x41, "shard stopped";
    /// The peer stopped answering heartbeats.
    HeartbeatTimeout = 0x42, "heartbeat timeout";
    /// A slow consumer fell too far behind the live edge and was cut.
    TooSlow = 0x43, "consumer too slow";
    /// The mirror sender removed this endpoint from the stream's endpoint list.
    EndpointRemoved = 0x44, "endpoint removed";
    /// A bug on the sending side.
    Internal = 0x50, "internal error";
}

impl ErrorCode {
    pub fn as_u32(self) -> u32 {
        self as u32
    }

    pub fn varint(self) -> quinn::VarInt {
        quinn::VarInt::from_u32(self as u32)
    }

    /// The code of a QUIC application close, if it is one of ours.
    pub fn of_close(err: &quinn::ConnectionError) -> Option<Self> {
        match err {
            quinn::ConnectionError::ApplicationClosed(c) => {
                u32::try_from(c.error_code.into_inner())
                    .ok()
                    .and_then(Self::from_u32)
            }
            _ => None,
        }
    }

    /// Token and proof failures: the attach itself is wrong, retrying elsewhere will not help.
    pub fn is_admission_failure(self) -> bool {
        (0x20..=0x26).contains(&(self as u32))
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (0x{:02x})", self.reason(), *self as u32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_and_are_distinct() {
        let mut seen = std::collections::HashSet::new();
        for &c in ErrorCode::ALL {
            assert_eq!(ErrorCode::from_u32(c.as_u32()), Some(c));
            assert!(seen.insert(c.as_u32()), "duplicate value for {c:?}");
        }
        assert_eq!(ErrorCode::from_u32(0xffff), None);
    }

    /// `ProtocolViolation` → `PROTOCOL_VIOLATION`, the name `PROTOCOL.md` uses.
    fn doc_name(c: ErrorCode) -> String {
        let mut out = String::new();
        for (i, ch) in format!("{c:?}").chars().enumerate() {
            if ch.is_ascii_uppercase() && i > 0 {
                out.push('_');
            }
            out.push(ch.to_ascii_uppercase());
        }
        out
    }

    #[test]
    fn protocol_md_lists_every_code_with_its_reason_phrase() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/PROTOCOL.md");
        let doc = std::fs::read_to_string(path).expect("PROTOCOL.md is in the crate root");
        let start = doc
            .find("\n## 6. Application error codes")
            .expect("section 6 lists the codes");
        let section = &doc[start + 1..];
        let section = &section[..section.find("\n## ").unwrap_or(section.len())];
        // Rows: | 0x10 | `PROTOCOL_VIOLATION` | `protocol violation` | meaning | when |
        let rows: Vec<Vec<&str>> = section
            .lines()
            .filter(|l| l.starts_with("| 0x"))
            .map(|l| {
                l.split(" | ")
                    .take(3)
                    .map(|c| c.trim_matches('|').trim())
                    .collect()
            })
            .collect();
        for &c in ErrorCode::ALL {
            let value = format!("0x{:02x}", c.as_u32());
            let row = rows
                .iter()
                .find(|r| r[0] == value)
                .unwrap_or_else(|| panic!("PROTOCOL.md section 6 has no row for {value}"));
            assert_eq!(row[1], format!("`{}`", doc_name(c)), "name of {value}");
            assert_eq!(
                row[2],
                format!("`{}`", c.reason()),
                "reason phrase of {value}"
            );
        }
        assert_eq!(
            rows.len(),
            ErrorCode::ALL.len(),
            "PROTOCOL.md lists a code that codes.rs does not define"
        );
    }
}
