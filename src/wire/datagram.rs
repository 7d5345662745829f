//! Mirror feedback datagrams (QUIC DATAGRAM frames, RFC 9221): unordered, unreliable, and so
//! free of head-of-line blocking — a silence measured on them is the path's silence.
//!
//! ```text
//! probe    (sender → receiver) = 0x01 | id:u64be                          9 bytes
//! feedback (receiver → sender) = 0x02 | echo:u64be | acked_plus_one:u64be 17 bytes
//! ```
//!
//! `echo` is the id of the probe being answered (0: none); `acked_plus_one` is one more than the
//! newest sequence the receiver has delivered or been told is missing, with everything before
//! it settled (0: nothing yet). Feedback is cumulative, so a lost datagram costs nothing.

use bytes::{BufMut, Bytes, BytesMut};

use crate::ids::Seq;

const PROBE: u8 = 0x01;
const FEEDBACK: u8 = 0x02;

/// A sender's probe.
pub fn encode_probe(id: u64) -> Bytes {
    let mut b = BytesMut::with_capacity(9);
    b.put_u8(PROBE);
    b.put_u64(id);
    b.freeze()
}

/// The id of a probe datagram; `None` for anything else.
pub fn decode_probe(d: &[u8]) -> Option<u64> {
    match d {
        [PROBE, rest @ ..] if rest.len() == 8 => Some(u64::from_be_bytes(rest.try_into().ok()?)),
        _ => None,
    }
}

/// A receiver's feedback.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Feedback {
    pub echo: Option<u64>,
    pub acked: Option<Seq>,
}

impl Feedback {
    pub fn encode(&self) -> Bytes {
        let mut b = BytesMut::with_capacity(17);
        b.put_u8(FEEDBACK);
        b.put_u64(self.echo.unwrap_or(0));
        // Exact: an acknowledged sequence is a chunk's, never `Seq::MAX`.
        b.put_u64(self.acked.map_or(0, |a| a.saturating_next().get()));
        b.freeze()
    }

    /// `None` for a datagram of another kind or length.
    pub fn decode(d: &[u8]) -> Option<Feedback> {
        let [FEEDBACK, rest @ ..] = d else {
            return None;
        };
        if rest.len() != 16 {
            return None;
        }
        let echo = u64::from_be_bytes(rest[..8].try_into().ok()?);
        let acked = u64::from_be_bytes(rest[8..].try_into().ok()?);
        Some(Feedback {
            echo: (echo != 0).then_some(echo),
            acked: Seq::new(acked).prev(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_garbage() {
        assert_eq!(decode_probe(&encode_probe(7)), Some(7));
        let f = Feedback {
            echo: Some(3),
            acked: Some(Seq::ZERO),
        };
        assert_eq!(Feedback::decode(&f.encode()), Some(f));
        // The highest acknowledgement a chunk allows travels as `acked_plus_one = 2^64 - 1`.
        let last = Feedback {
            echo: None,
            acked: Some(Seq::LAST),
        };
        assert_eq!(&last.encode()[9..], &[0xff; 8]);
        assert_eq!(Feedback::decode(&last.encode()), Some(last));
        let none = Feedback {
            echo: None,
            acked: None,
        };
        assert_eq!(Feedback::decode(&none.encode()), Some(none));
        for bad in [&[][..], &[1], &[2, 0, 0], &[9; 17], &[1; 17]] {
            assert_eq!(Feedback::decode(bad), None);
        }
        assert_eq!(decode_probe(&[2; 9]), None);
        assert_eq!(decode_probe(&[1; 10]), None);
    }
}
