//! Sealed tokens: what the hub gives a client and a shard checks in the first flight.
//!
//! ```text
//! token  = version:u8 (=3) | epoch:u32be | group:u32be | nonce:12 | AES-256-GCM(claims) | tag:16
//! claims = token_id:16 | issued_at_ms:u64be | expires_at_ms:u64be | session_secret:32
//!          | priority:u8 | expect_kbps:u32be | client_id_len:u8 | client_id
//! ```
//!
//! The header (version, epoch, group, nonce) is the AEAD's associated data, so no byte of a
//! token can change without [`TokenKeys::open`] failing. Each group has its own sealing key per
//! epoch (a configurable interval since the Unix epoch), so a shard holds only its group's
//! keys ([`TokenKeys::held`], installed from the hub's `keys` message) and can neither open nor
//! make another group's tokens; the hub derives every key from the cluster secret
//! ([`TokenKeys::new`]). Tokens of the current and the previous epoch are accepted. The type is
//! sans-IO: every call takes the time.

use std::sync::RwLock;

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};
use ring::rand::{SecureRandom, SystemRandom};

use crate::ids::{ClientId, GroupId, TokenId};
use crate::link::{EpochKey, GroupKeys};
use crate::security::keys::KeySchedule;
use crate::wire::ErrorCode;

pub const TOKEN_VERSION: u8 = 3;
const HEADER_LEN: usize = 1 + 4 + 4 + 12;
const TAG_LEN: usize = 16;
const FIXED_CLAIMS: usize = 16 + 8 + 8 + 32 + 1 + 4 + 1;
/// Longest valid token.
pub const MAX_TOKEN_LEN: usize = HEADER_LEN + FIXED_CLAIMS + crate::ids::MAX_CLIENT_ID + TAG_LEN;

/// How long before an epoch begins the hub hands its key to the shards (a tenth of the epoch,
/// at most a minute), so a token sealed at the boundary never reaches a shard before its key.
pub fn key_lead_ms(epoch_secs: u64) -> u64 {
    (epoch_secs.max(1) * 100).min(60_000)
}

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

/// The sealed fields of a token (the group travels in the authenticated header).
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
    #[error("token for group {0:?}, not this shard's")]
    WrongGroup(GroupId),
    #[error("these keys cannot seal tokens (a shard's keys only open them)")]
    CannotSeal,
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
            TokenError::WrongGroup(_) => ErrorCode::TokenWrongGroup,
            TokenError::CannotSeal | TokenError::Rng => ErrorCode::Internal,
        }
    }
}

/// Where the keys come from.
enum Source {
    /// The hub: every group's keys, derived from the cluster secret.
    Schedule(KeySchedule),
    /// A shard: its group's keys as the hub sent them.
    Held { group: GroupId, keys: RwLock<Held> },
}

#[derive(Default)]
struct Held {
    epoch_secs: u64,
    keys: Vec<(u32, LessSafeKey)>,
}

fn aead_key(k: &[u8; 32]) -> LessSafeKey {
    LessSafeKey::new(UnboundKey::new(&AES_256_GCM, k).expect("32-byte key for AES-256"))
}

/// Seals and opens tokens.
pub struct TokenKeys {
    source: Source,
    epoch_secs: u64,
    rng: SystemRandom,
}

impl Claims {
    /// The claims as a token carries them behind its tag (all but the group, which is in the
    /// header).
    pub(crate) fn plaintext(&self) -> Vec<u8> {
        let client = self.client.as_str().as_bytes();
        let mut plain = Vec::with_capacity(FIXED_CLAIMS + client.len());
        plain.extend_from_slice(&self.id.0);
        plain.extend_from_slice(&self.issued_at_ms.to_be_bytes());
        plain.extend_from_slice(&self.expires_at_ms.to_be_bytes());
        plain.extend_from_slice(&self.secret);
        plain.push(self.priority as u8);
        plain.extend_from_slice(&self.expect_kbps.to_be_bytes());
        plain.push(client.len() as u8);
        plain.extend_from_slice(client);
        plain
    }
}

impl TokenKeys {
    /// The hub's keys: every group's, derived from the schedule. `epoch_secs`: the rotation
    /// interval in seconds (at least 1).
    pub fn new(schedule: KeySchedule, epoch_secs: u64) -> Self {
        Self {
            source: Source::Schedule(schedule),
            epoch_secs: epoch_secs.max(1),
            rng: SystemRandom::new(),
        }
    }

    /// A shard's keys: none until the hub's first [`GroupKeys`] arrive
    /// ([`TokenKeys::install`]); until then every token is of an unknown epoch.
    pub fn held(group: GroupId) -> Self {
        Self {
            source: Source::Held {
                group,
                keys: RwLock::default(),
            },
            epoch_secs: 1,
            rng: SystemRandom::new(),
        }
    }

    fn epoch_secs(&self) -> u64 {
        match &self.source {
            Source::Schedule(_) => self.epoch_secs,
            Source::Held { keys, .. } => read(keys).epoch_secs.max(1),
        }
    }

    /// The epoch in force at `now_ms` (milliseconds since the Unix epoch).
    pub fn epoch_at(&self, now_ms: u64) -> u32 {
        (now_ms / 1000 / self.epoch_secs()) as u32
    }

    /// The keys a shard of `group` needs at `now_ms`: the previous and the current epoch's,
    /// and the next one's from [`key_lead_ms`] before it begins. Only the hub's keys can say.
    pub fn group_keys(&self, group: GroupId, now_ms: u64) -> Option<GroupKeys> {
        let Source::Schedule(schedule) = &self.source else {
            return None;
        };
        let secs = self.epoch_secs;
        let cur = self.epoch_at(now_ms);
        let mut epochs: Vec<u32> = cur.checked_sub(1).into_iter().chain([cur]).collect();
        if self.epoch_at(now_ms + key_lead_ms(secs)) != cur {
            epochs.push(cur.saturating_add(1));
        }
        Some(GroupKeys {
            group,
            epoch_secs: secs,
            keys: epochs
                .into_iter()
                .map(|epoch| EpochKey {
                    epoch,
                    key: schedule.token_key(group.0, epoch).to_vec().into(),
                })
                .collect(),
        })
    }

    /// Which epochs [`TokenKeys::group_keys`] would name at `now_ms` (the same for every
    /// group): the hub sends new keys when this changes.
    pub fn key_set_at(&self, now_ms: u64) -> (u32, bool) {
        let cur = self.epoch_at(now_ms);
        (
            cur,
            self.epoch_at(now_ms + key_lead_ms(self.epoch_secs())) != cur,
        )
    }

    /// Replaces a shard's keys with the hub's. Keys of another group or of the wrong size are
    /// refused (the set is left as it was).
    pub fn install(&self, set: &GroupKeys) -> Result<(), TokenError> {
        let Source::Held { group, keys } = &self.source else {
            return Err(TokenError::CannotSeal);
        };
        if set.group != *group {
            return Err(TokenError::WrongGroup(set.group));
        }
        let mut parsed = Vec::with_capacity(set.keys.len());
        for k in &set.keys {
            let bytes: [u8; 32] = k
                .key
                .as_ref()
                .try_into()
                .map_err(|_| TokenError::Malformed)?;
            parsed.push((k.epoch, aead_key(&bytes)));
        }
        let mut held = keys.write().unwrap_or_else(|p| p.into_inner());
        held.epoch_secs = set.epoch_secs.max(1);
        held.keys = parsed;
        Ok(())
    }

    /// The epochs a shard holds keys for (empty on the hub).
    pub fn held_epochs(&self) -> Vec<u32> {
        match &self.source {
            Source::Schedule(_) => Vec::new(),
            Source::Held { keys, .. } => read(keys).keys.iter().map(|k| k.0).collect(),
        }
    }

    pub fn random_bytes<const N: usize>(&self) -> Result<[u8; N], TokenError> {
        let mut b = [0u8; N];
        self.rng.fill(&mut b).map_err(|_| TokenError::Rng)?;
        Ok(b)
    }

    /// Seals `claims` under their group's key of the epoch in force at `now_ms` (the hub's
    /// keys only).
    pub fn seal(&self, claims: &Claims, now_ms: u64) -> Result<Vec<u8>, TokenError> {
        self.seal_raw(self.epoch_at(now_ms), claims.group.0, &claims.plaintext())
    }

    /// Seals `plaintext` as the claims of a token of `group` and `epoch`, its layout
    /// unchecked (the hub's keys only): what [`TokenKeys::seal`] seals its claims with, and
    /// how the fuzz targets reach the parsing behind the tag.
    pub fn seal_raw(
        &self,
        epoch: u32,
        group: u32,
        plaintext: &[u8],
    ) -> Result<Vec<u8>, TokenError> {
        let Source::Schedule(schedule) = &self.source else {
            return Err(TokenError::CannotSeal);
        };
        let nonce: [u8; 12] = self.random_bytes()?;
        let mut out = Vec::with_capacity(HEADER_LEN + plaintext.len() + TAG_LEN);
        out.push(TOKEN_VERSION);
        out.extend_from_slice(&epoch.to_be_bytes());
        out.extend_from_slice(&group.to_be_bytes());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(plaintext);
        let (header, body) = out.split_at_mut(HEADER_LEN);
        let tag = aead_key(&schedule.token_key(group, epoch))
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(&header[..]),
                body,
            )
            .map_err(|_| TokenError::Invalid)?;
        out.extend_from_slice(tag.as_ref());
        Ok(out)
    }

    /// Opens a token, checking format, group, epoch, authenticity and expiry, in that order.
    pub fn open(&self, token: &[u8], now_ms: u64) -> Result<Claims, TokenError> {
        if token.len() < HEADER_LEN + FIXED_CLAIMS + TAG_LEN || token.len() > MAX_TOKEN_LEN {
            return Err(TokenError::Malformed);
        }
        if token[0] != TOKEN_VERSION {
            return Err(TokenError::Malformed);
        }
        let epoch = u32::from_be_bytes(token[1..5].try_into().expect("4 bytes"));
        let group = GroupId(u32::from_be_bytes(token[5..9].try_into().expect("4 bytes")));
        let nonce: [u8; 12] = token[9..HEADER_LEN].try_into().expect("12 bytes");
        let mut body = token[HEADER_LEN..].to_vec();
        let open = |key: &LessSafeKey, body: &mut Vec<u8>| {
            key.open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(&token[..HEADER_LEN]),
                body,
            )
            .map(|plain| plain.len())
            .map_err(|_| TokenError::Invalid)
        };
        let current = self.epoch_at(now_ms);
        let plain_len = match &self.source {
            Source::Schedule(schedule) => {
                if epoch != current && Some(epoch) != current.checked_sub(1) {
                    return Err(TokenError::UnknownEpoch(epoch));
                }
                open(&aead_key(&schedule.token_key(group.0, epoch)), &mut body)?
            }
            Source::Held { group: mine, keys } => {
                if group != *mine {
                    return Err(TokenError::WrongGroup(group));
                }
                // A held key opens tokens until its epoch is two behind this shard's clock
                // (the hub may run a little ahead: the next epoch's key arrives early).
                if epoch.saturating_add(1) < current {
                    return Err(TokenError::UnknownEpoch(epoch));
                }
                let held = read(keys);
                let key = held
                    .keys
                    .iter()
                    .find(|k| k.0 == epoch)
                    .ok_or(TokenError::UnknownEpoch(epoch))?;
                open(&key.1, &mut body)?
            }
        };
        let plain = &body[..plain_len];
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
            group,
            issued_at_ms: u64::from_be_bytes(c(16..24).try_into().expect("8 bytes")),
            expires_at_ms: u64::from_be_bytes(c(24..32).try_into().expect("8 bytes")),
            secret: c(32..64).try_into().expect("32 bytes"),
            priority: Priority::from_u8(plain[64]).ok_or(TokenError::Malformed)?,
            expect_kbps: u32::from_be_bytes(c(65..69).try_into().expect("4 bytes")),
            client,
        };
        if now_ms > claims.expires_at_ms {
            return Err(TokenError::Expired);
        }
        Ok(claims)
    }
}

fn read(keys: &RwLock<Held>) -> std::sync::RwLockReadGuard<'_, Held> {
    keys.read().unwrap_or_else(|p| p.into_inner())
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
    fn a_shard_opens_only_its_groups_tokens_with_the_keys_the_hub_sent() {
        let hub = keys(3600);
        let shard = TokenKeys::held(GroupId(2));
        let t = hub.seal(&claims(T0), T0).unwrap();
        let epoch = hub.epoch_at(T0);
        assert_eq!(shard.open(&t, T0), Err(TokenError::UnknownEpoch(epoch)));
        shard
            .install(&hub.group_keys(GroupId(2), T0).unwrap())
            .unwrap();
        assert_eq!(shard.held_epochs(), vec![epoch - 1, epoch]);
        assert_eq!(shard.open(&t, T0 + 1).unwrap(), claims(T0));
        // Another group's token names its group in the header: refused as such.
        let mut other = claims(T0);
        other.group = GroupId(5);
        let t5 = hub.seal(&other, T0).unwrap();
        assert_eq!(shard.open(&t5, T0), Err(TokenError::WrongGroup(GroupId(5))));
        // Another group's keys are refused, and a shard cannot seal.
        assert!(shard
            .install(&hub.group_keys(GroupId(5), T0).unwrap())
            .is_err());
        assert_eq!(shard.seal(&claims(T0), T0), Err(TokenError::CannotSeal));
        assert!(shard.group_keys(GroupId(2), T0).is_none());
        // Rewriting the header's group to this shard's breaks authentication.
        let mut forged = t5.clone();
        forged[5..9].copy_from_slice(&2u32.to_be_bytes());
        assert_eq!(shard.open(&forged, T0), Err(TokenError::Invalid));
    }

    #[test]
    fn the_next_epochs_key_arrives_before_the_epoch_and_old_keys_lapse() {
        let hub = keys(10);
        let shard = TokenKeys::held(GroupId(2));
        let boundary = (T0 / 10_000 + 1) * 10_000;
        let e = hub.epoch_at(boundary - 1);
        // Two seconds before the boundary: not yet; one second before (lead 1 s): the next one.
        assert_eq!(
            hub.group_keys(GroupId(2), boundary - 2000)
                .unwrap()
                .keys
                .len(),
            2
        );
        shard
            .install(&hub.group_keys(GroupId(2), boundary - 500).unwrap())
            .unwrap();
        assert_eq!(shard.held_epochs(), vec![e - 1, e, e + 1]);
        // The hub, a moment ahead, seals in the next epoch: the shard opens it already.
        let mut c = claims(boundary);
        c.expires_at_ms = boundary + 100_000;
        let early = hub.seal(&c, boundary + 1).unwrap();
        assert!(shard.open(&early, boundary - 400).is_ok());
        // Without new keys (the hub is down), a key lapses two epochs after its own.
        let old = hub.seal(&c, boundary - 500).unwrap();
        assert!(shard.open(&old, boundary + 9_999).is_ok());
        assert_eq!(
            shard.open(&old, boundary + 10_000),
            Err(TokenError::UnknownEpoch(e))
        );
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
