//! Synthetic streams: payloads derived from `(stream, seq)` so that any receiver verifies them,
//! and a live edge derived from the wall clock so that every shard agrees on it.

use bytes::Bytes;
use sha2::{Digest, Sha256};

use crate::ids::{Seq, StreamName};
use crate::wire::Chunk;

/// Rate and size of the synthetic streams of a cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SyntheticSpec {
    pub rate_hz: u32,
    pub chunk_bytes: u32,
}

impl SyntheticSpec {
    /// At least 1 µs (a rate above 1 MHz is served at 1 MHz).
    pub fn period_us(&self) -> u64 {
        (1_000_000 / u64::from(self.rate_hz.max(1))).max(1)
    }

    /// The newest sequence produced at `now_us` (microseconds since the Unix epoch); at most
    /// [`Seq::LAST`], the highest a chunk may carry.
    pub fn live_seq(&self, now_us: u64) -> Seq {
        Seq::new(now_us / self.period_us()).min(Seq::LAST)
    }

    /// When chunk `seq` is due, in microseconds since the Unix epoch.
    pub fn due_us(&self, seq: Seq) -> u64 {
        seq.get().saturating_mul(self.period_us())
    }

    pub fn chunk(&self, stream: &StreamName, seq: Seq) -> Chunk {
        self.chunk_seeded(stream_seed(stream), seq)
    }

    /// Chunk `seq` of the stream whose [`stream_seed`] is `seed`.
    pub fn chunk_seeded(&self, seed: u64, seq: Seq) -> Chunk {
        Chunk {
            seq,
            timestamp_us: self.due_us(seq),
            payload: payload(seed, seq, self.chunk_bytes as usize),
        }
    }
}

/// The per-stream seed of the payload generator.
pub fn stream_seed(stream: &StreamName) -> u64 {
    let d = Sha256::digest(stream.as_str().as_bytes());
    u64::from_le_bytes(d[..8].try_into().expect("digest is 32 bytes"))
}

fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn fill(seed: u64, seq: Seq, out: &mut [u8]) {
    let base = splitmix64(seed ^ seq.get().wrapping_mul(0xd6e8_feb8_6659_fd93));
    for (i, word) in out.chunks_mut(8).enumerate() {
        let v = splitmix64(base.wrapping_add(i as u64)).to_le_bytes();
        word.copy_from_slice(&v[..word.len()]);
    }
}

/// The payload of chunk `seq` of the stream with `seed`.
pub fn payload(seed: u64, seq: Seq, len: usize) -> Bytes {
    let mut v = vec![0u8; len];
    fill(seed, seq, &mut v);
    Bytes::from(v)
}

/// Whether `payload` is the synthetic payload of chunk `seq` (any length).
pub fn verify(seed: u64, seq: Seq, payload: &[u8]) -> bool {
    let base = splitmix64(seed ^ seq.get().wrapping_mul(0xd6e8_feb8_6659_fd93));
    payload.chunks(8).enumerate().all(|(i, word)| {
        let v = splitmix64(base.wrapping_add(i as u64)).to_le_bytes();
        word == &v[..word.len()]
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_verify_and_differ() {
        let spec = SyntheticSpec {
            rate_hz: 100,
            chunk_bytes: 37,
        };
        let s = StreamName::new("synth/a").unwrap();
        let seed = stream_seed(&s);
        let (five, six) = (Seq::new(5), Seq::new(6));
        let c = spec.chunk(&s, five);
        assert_eq!(c.payload.len(), 37);
        assert!(verify(seed, five, &c.payload));
        assert!(!verify(seed, six, &c.payload));
        assert!(!verify(seed ^ 1, five, &c.payload));
        let mut bad = c.payload.to_vec();
        bad[36] ^= 1;
        assert!(!verify(seed, five, &bad));
        assert_eq!(spec.live_seq(spec.due_us(Seq::new(99))), Seq::new(99));
    }

    #[test]
    fn the_live_edge_stays_below_the_end_of_the_sequence_space() {
        let fast = SyntheticSpec {
            rate_hz: u32::MAX,
            chunk_bytes: 1,
        };
        assert_eq!(fast.period_us(), 1);
        assert_eq!(fast.live_seq(u64::MAX), Seq::LAST);
        assert_eq!(fast.due_us(Seq::MAX), u64::MAX);
    }
}
