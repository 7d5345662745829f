//! Admission: the decision a shard takes on the first message of a connection, before it
//! allocates anything for the connection.
//!
//! Order of checks (each failure has its own code): token format and epoch → AEAD (tamper,
//! forgery) → expiry → group → shard-bound proof → replay of this exact (token, nonce). Only a
//! fully checked attach is remembered in the replay cache. Sans-IO: time is a parameter.

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;

use crate::ids::{GroupId, ShardId, TokenId};
use crate::security::proof::{verify_attach_proof, NONCE_LEN};
use crate::security::token::{Claims, TokenKeys};
use crate::wire::{Attach, ErrorCode};

/// Remembers admitted (token, nonce) pairs until their token expires; bounded, oldest first.
pub struct ReplayCache {
    seen: HashSet<(TokenId, [u8; NONCE_LEN])>,
    order: VecDeque<(u64, TokenId, [u8; NONCE_LEN])>,
    capacity: usize,
}

impl ReplayCache {
    pub fn new(capacity: usize) -> Self {
        Self {
            seen: HashSet::new(),
            order: VecDeque::new(),
            capacity: capacity.max(1),
        }
    }

    /// False if the pair was seen before.
    pub fn insert(
        &mut self,
        id: TokenId,
        nonce: [u8; NONCE_LEN],
        expires_at_ms: u64,
        now_ms: u64,
    ) -> bool {
        while let Some(&(exp, fid, fnonce)) = self.order.front() {
            if exp >= now_ms && self.seen.len() < self.capacity {
                break;
            }
            self.order.pop_front();
            self.seen.remove(&(fid, fnonce));
        }
        if !self.seen.insert((id, nonce)) {
            return false;
        }
        self.order.push_back((expires_at_ms, id, nonce));
        true
    }

    pub fn len(&self) -> usize {
        self.seen.len()
    }

    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }
}

/// The admission decision of one shard.
pub struct Admission {
    shard: ShardId,
    group: GroupId,
    tokens: Arc<TokenKeys>,
    replay: ReplayCache,
}

impl Admission {
    pub fn new(shard: ShardId, group: GroupId, tokens: Arc<TokenKeys>, replay_cap: usize) -> Self {
        Self {
            shard,
            group,
            tokens,
            replay: ReplayCache::new(replay_cap),
        }
    }

    /// The keys this shard opens tokens with.
    pub fn tokens(&self) -> &Arc<TokenKeys> {
        &self.tokens
    }

    /// Checks an attach. On success the claims of its token; on failure the code to close with.
    pub fn check(&mut self, attach: &Attach, now_ms: u64) -> Result<Claims, ErrorCode> {
        let claims = self
            .tokens
            .open(&attach.token, now_ms)
            .map_err(|e| e.code())?;
        // Held keys refuse another group's token already; the hub's keys open any group's.
        if claims.group != self.group {
            return Err(ErrorCode::TokenWrongGroup);
        }
        let nonce: [u8; NONCE_LEN] = attach
            .nonce
            .as_slice()
            .try_into()
            .map_err(|_| ErrorCode::ProofInvalid)?;
        if !verify_attach_proof(&claims.secret, self.shard, &nonce, &attach.proof) {
            return Err(ErrorCode::ProofInvalid);
        }
        if !self
            .replay
            .insert(claims.id, nonce, claims.expires_at_ms, now_ms)
        {
            return Err(ErrorCode::AttachReplayed);
        }
        Ok(claims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::ClientId;
    use crate::security::keys::{ClusterSecret, KeySchedule};
    use crate::security::proof::attach_proof;

    const NOW: u64 = 1_800_000_000_000;

    fn setup() -> (Arc<TokenKeys>, Vec<u8>, [u8; 32]) {
        let keys = Arc::new(TokenKeys::new(
            KeySchedule::new(&ClusterSecret::from_bytes([5; 32])),
            3600,
        ));
        let secret = [7u8; 32];
        let claims = Claims {
            id: TokenId([1; 16]),
            group: GroupId(1),
            client: ClientId::new("c").unwrap(),
            secret,
            issued_at_ms: NOW,
            expires_at_ms: NOW + 10_000,
            priority: crate::security::token::Priority::Normal,
            expect_kbps: 0,
        };
        let token = keys.seal(&claims, NOW).unwrap();
        (keys, token, secret)
    }

    fn attach(token: &[u8], secret: &[u8], shard: u32, nonce: u8) -> Attach {
        Attach {
            token: token.to_vec(),
            nonce: vec![nonce; 16],
            proof: attach_proof(secret, ShardId(shard), &[nonce; 16]).to_vec(),
        }
    }

    #[test]
    fn each_failure_has_its_code() {
        let (keys, token, secret) = setup();
        let mut a = Admission::new(ShardId(3), GroupId(1), keys.clone(), 100);
        assert!(a.check(&attach(&token, &secret, 3, 1), NOW).is_ok());
        assert_eq!(
            a.check(&attach(&token, &secret, 3, 1), NOW),
            Err(ErrorCode::AttachReplayed)
        );
        assert_eq!(
            a.check(&attach(&token, &secret, 4, 2), NOW),
            Err(ErrorCode::ProofInvalid)
        );
        assert_eq!(
            a.check(&attach(&token, &secret, 3, 3), NOW + 10_001),
            Err(ErrorCode::TokenExpired)
        );
        let mut other_group = Admission::new(ShardId(3), GroupId(2), keys, 100);
        assert_eq!(
            other_group.check(&attach(&token, &secret, 3, 4), NOW),
            Err(ErrorCode::TokenWrongGroup)
        );
        let mut bad_nonce = attach(&token, &secret, 3, 5);
        bad_nonce.nonce.pop();
        assert_eq!(a.check(&bad_nonce, NOW), Err(ErrorCode::ProofInvalid));
    }

    #[test]
    fn replay_cache_is_bounded_and_forgets_expired() {
        let mut r = ReplayCache::new(2);
        assert!(r.insert(TokenId([1; 16]), [1; 16], 10, 0));
        assert!(r.insert(TokenId([1; 16]), [2; 16], 10, 0));
        assert!(r.insert(TokenId([1; 16]), [3; 16], 10, 0));
        assert_eq!(r.len(), 2);
        assert!(r.insert(TokenId([1; 16]), [4; 16], 10, 11));
        assert_eq!(r.len(), 1);
    }
}
