//! Sealed tokens: what the hub gives a client and a shard checks in the first flight.
//!
//! ```text
//! token  = version:u8 (=1) | epoch:u32be | nonce:12 | AES-256-GCM(claims) | tag:16
//! claims = token_id:16 | group:u32be | issued_at_ms:u64be | expires_at_ms:u64be
//!          | session_secret:32 | priority:u8 | expect_kbps:u32be | client_id_len:u8 | client_id
//! ```
//!
//! The header (version, epoch, nonce) is the AEAD's associated data, so no byte of a token can
//! change without [`TokenKeys::open`] failing. Sealing keys rotate every epoch (a configurable
//! interval since the Unix epoch); tokens of the current and the previous epoch are accepted.
//! The type is sans-IO: every call takes the time.

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};
use ring::rand::{SecureRandom, SystemRandom};

use crate::ids::{ClientId, GroupId, TokenId};
use crate::security::keys::KeySchedule;
use crate::wire::ErrorCode;

pub const TOKEN_VERSION: u8 = 2;
const HEADER_LEN: usize = 1 + 4 + 12;
const TAG_LEN: usize = 16;
const FIXED_CLAIMS: usize = 16 + 4 + 8 + 8 + 32 + 1 + 4 + 1;
/// Longest valid token.
pub const MAX_TOKEN_LEN: usize = HEADER_LEN + FIXED_CLAIMS + crate::ids::MAX_CLIENT_ID + TAG_LEN;

/// How a shard near its quota treats a client (the hub decides; see
/// [`crate::shard::admit_limit`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Priority {
    /// Admitted only well below quota (a client over its request rate).
    Low = 0,
    #[default]
    Normal = 1,
    /// Admitted up to the full quota: the shard's reserve is kept for these.
    High = 2,
}

impl Priority {
    pub fn from_u8(v: u8) -> Option<Priority> {
        match v {
            0 => Some(Priority::Low),
            1 => Some(Priority::Normal),
            2 => Some(Priority::High),
            _ => None,
        }
    }
}

/// The sealed fields of a token.
#[derive(Clone, PartialEq, Eq)]
pub struct Claims {
    pub id: TokenId,
    pub group: GroupId,
    pub client: ClientId,
    pub secret: [u8; 32],
    pub issued_at_ms: u64,
    pub expires_at_ms: u64,
    /// The hub's priority for this client.
    pub priority: Priority,
    /// The bitrate the hub expects the session to pull (0: unknown); shards add it up.
    pub expect_kbps: u32,
}

impl std::fmt::Debug for Claims {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Claims")
            .field("id", &self.id)
            .field("group", &self.group)
            .field("client", &self.client)
            .field("issued_at_ms", &self.issued_at_ms)
            .field("expires_at_ms", &self.expires_at_ms)
            .field("priority", &self.priority)
            .field("expect_kbps", &self.expect_kbps)
            .finish_non_exhaustive()
    }
}

/// Why a token was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TokenError {
    #[error("token malformed")]
    Malformed,
    #[error("token failed authentication")]
    Invalid,
    #[error("token expired")]
    Expired,
    #[error("token sealed under unknown epoch {0}")]
    UnknownEpoch(u32),
    #[error("no randomness available")]
    Rng,
}

impl TokenError {
    pub fn code(self) -> ErrorCode {
        match self {
            TokenError::Malformed => ErrorCode::TokenMalformed,
            TokenError::Invalid => ErrorCode::TokenInvalid,
            TokenError::Expired => ErrorCode::TokenExpired,
            TokenError::UnknownEpoch(_) => ErrorCode::TokenUnknownEpoch,
            TokenError::Rng => ErrorCode::Internal,
        }
    }
}

/// Seals and opens tokens with epoch keys derived from the cluster secret.
pub struct TokenKeys {
    schedule: KeySchedule,
    epoch_secs: u64,
    rng: SystemRandom,
}

impl TokenKeys {
    /// `epoch_secs`: the rotation interval in seconds (at least 1).
    pub fn new(schedule: KeySchedule, epoch_secs: u64) -> Self {
        Self {
            schedule,
            epoch_secs: epoch_secs.max(1),
            rng: SystemRandom::new(),
        }
    }

    /// The epoch in force at `now_ms` (milliseconds since the Unix epoch).
    pub fn epoch_at(&self, now_ms: u64) -> u32 {
        (now_ms / 1000 / self.epoch_secs) as u32
    }

    fn key(&self, epoch: u32) -> LessSafeKey {
        let k = self.schedule.token_key(epoch);
        LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &k).expect("32-byte key for AES-256"))
    }

    pub fn random_bytes<const N: usize>(&self) -> Result<[u8; N], TokenError> {
        let mut b = [0u8; N];
        self.rng.fill(&mut b).map_err(|_| TokenError::Rng)?;
        Ok(b)
    }

    /// Seals `claims` under the epoch key in force at `now_ms`.
    pub fn seal(&self, claims: &Claims, now_ms: u64) -> Result<Vec<u8>, TokenError> {
        let epoch = self.epoch_at(now_ms);
        let nonce: [u8; 12] = self.random_bytes()?;
        let client = claims.client.as_str().as_bytes();
        let mut out = Vec::with_capacity(HEADER_LEN + FIXED_CLAIMS + client.len() + TAG_LEN);
        out.push(TOKEN_VERSION);
        out.extend_from_slice(&epoch.to_be_bytes());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&claims.id.0);
        out.extend_from_slice(&claims.group.0.to_be_bytes());
        out.extend_from_slice(&claims.issued_at_ms.to_be_bytes());
        out.extend_from_slice(&claims.expires_at_ms.to_be_bytes());
        out.extend_from_slice(&claims.secret);
        out.push(claims.priority as u8);
        out.extend_from_slice(&claims.expect_kbps.to_be_bytes());
        out.push(client.len() as u8);
        out.extend_from_slice(client);
        let (header, body) = out.split_at_mut(HEADER_LEN);
        let tag = self
            .key(epoch)
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(&header[..]),
                body,
            )
            .map_err(|_| TokenError::Invalid)?;
        out.extend_from_slice(tag.as_ref());
        Ok(out)
    }

    /// Opens a token, checking format, epoch, authenticity and expiry, in that order.
    pub fn open(&self, token: &[u8], now_ms: u64) -> Result<Claims, TokenError> {
        if token.len() < HEADER_LEN + FIXED_CLAIMS + TAG_LEN || token.len() > MAX_TOKEN_LEN {
            return Err(TokenError::Malformed);
        }
        if token[0] != TOKEN_VERSION {
            return Err(TokenError::Malformed);
        }
        let epoch = u32::from_be_bytes(token[1..5].try_into().expect("4 bytes"));
        let current = self.epoch_at(now_ms);
        if epoch != current && Some(epoch) != current.checked_sub(1) {
            return Err(TokenError::UnknownEpoch(epoch));
        }
        let nonce: [u8; 12] = token[5..HEADER_LEN].try_into().expect("12 bytes");
        let mut body = token[HEADER_LEN..].to_vec();
        let plain = self
            .key(epoch)
            .open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(&token[..HEADER_LEN]),
                &mut body,
            )
            .map_err(|_| TokenError::Invalid)?;
        // Authentic from here on: the layout was written by `seal`, but check it anyway.
        let c = |r: std::ops::Range<usize>| &plain[r];
        let client_len = plain[FIXED_CLAIMS - 1] as usize;
        if plain.len() != FIXED_CLAIMS + client_len {
            return Err(TokenError::Malformed);
        }
        let client = std::str::from_utf8(&plain[FIXED_CLAIMS..])
            .ok()
            .and_then(|s| ClientId::new(s).ok())
            .ok_or(TokenError::Malformed)?;
        let claims = Claims {
            id: TokenId(c(0..16).try_into().expect("16 bytes")),
            group: GroupId(u32::from_be_bytes(c(16..20).try_into().expect("4 bytes"))),
            issued_at_ms: u64::from_be_bytes(c(20..28).try_into().expect("8 bytes")),
            expires_at_ms: u64::from_be_bytes(c(28..36).try_into().expect("8 bytes")),
            secret: c(36..68).try_into().expect("32 bytes"),
            priority: Priority::from_u8(plain[68]).ok_or(TokenError::Malformed)?,
            expect_kbps: u32::from_be_bytes(c(69..73).try_into().expect("4 bytes")),
            client,
        };
        if now_ms > claims.expires_at_ms {
            return Err(TokenError::Expired);
        }
        Ok(claims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::security::keys::ClusterSecret;

    fn keys(secs: u64) -> TokenKeys {
        TokenKeys::new(KeySchedule::new(&ClusterSecret::from_bytes([3; 32])), secs)
    }

    fn claims(now_ms: u64) -> Claims {
        Claims {
            id: TokenId([1; 16]),
            group: GroupId(2),
            client: ClientId::new("client-1").unwrap(),
            secret: [9; 32],
            issued_at_ms: now_ms,
            expires_at_ms: now_ms + 60_000,
            priority: Priority::High,
            expect_kbps: 2500,
        }
    }

    const T0: u64 = 1_800_000_000_000;

    #[test]
    fn seal_open_round_trip() {
        let k = keys(3600);
        let t = k.seal(&claims(T0), T0).unwrap();
        assert_eq!(k.open(&t, T0 + 1).unwrap(), claims(T0));
        assert!(t.len() <= MAX_TOKEN_LEN);
    }

    #[test]
    fn every_flipped_byte_is_refused() {
        let k = keys(3600);
        let t = k.seal(&claims(T0), T0).unwrap();
        for i in 0..t.len() {
            let mut bad = t.clone();
            bad[i] ^= 0x01;
            let err = k.open(&bad, T0).unwrap_err();
            assert!(
                matches!(
                    err,
                    TokenError::Malformed | TokenError::Invalid | TokenError::UnknownEpoch(_)
                ),
                "byte {i}: {err:?}"
            );
        }
        assert_eq!(k.open(&t[..t.len() - 1], T0), Err(TokenError::Invalid));
        assert_eq!(k.open(&[], T0), Err(TokenError::Malformed));
    }

    #[test]
    fn expiry_and_other_clusters() {
        let k = keys(3600);
        let t = k.seal(&claims(T0), T0).unwrap();
        assert_eq!(k.open(&t, T0 + 60_001), Err(TokenError::Expired));
        let other = TokenKeys::new(KeySchedule::new(&ClusterSecret::from_bytes([4; 32])), 3600);
        assert_eq!(other.open(&t, T0), Err(TokenError::Invalid));
    }

    #[test]
    fn rotation_accepts_current_and_previous_epoch_only() {
        let k = keys(10);
        // Seal one second before an epoch boundary.
        let boundary = (T0 / 10_000 + 1) * 10_000;
        let mut c = claims(boundary - 1000);
        c.expires_at_ms = boundary + 100_000;
        let t = k.seal(&c, boundary - 1000).unwrap();
        let sealed_epoch = k.epoch_at(boundary - 1000);
        assert_eq!(k.epoch_at(boundary), sealed_epoch + 1);
        // Still valid one epoch later (now the previous epoch)...
        assert!(k.open(&t, boundary + 1).is_ok());
        assert!(k.open(&t, boundary + 9_999).is_ok());
        // ...and refused two epochs later.
        assert_eq!(
            k.open(&t, boundary + 10_000),
            Err(TokenError::UnknownEpoch(sealed_epoch))
        );
        // A token from the future epoch is unknown too.
        let future = k.seal(&c, boundary + 20_000).unwrap();
        assert!(matches!(
            k.open(&future, boundary),
            Err(TokenError::UnknownEpoch(_))
        ));
    }
}
