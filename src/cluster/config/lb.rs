//! The `[lb]` section: QUIC-LB connection IDs behind UDP load balancers.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

/// QUIC-LB connection IDs (see [`crate::lb`]): off by default; on, the hub and every shard
/// issue CIDs that carry their server id, so a stateless UDP balancer can route them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LbSettings {
    pub enabled: bool,
    /// `encrypted` (the server id under an AES-128 key from the cluster secret), `plaintext`,
    /// or `nlb` (AWS NLB's QUIC listener: 8-octet server id, 16-octet CID, plaintext).
    pub profile: LbProfile,
    /// The configuration's id (0..=6), the first three bits of every CID.
    pub config_id: u8,
    /// Octets of server id (4..=15; `nlb`: 8).
    pub server_id_len: usize,
    /// Octets of nonce (4..=18, at most 19 with the server id; `nlb`: 7).
    pub nonce_len: usize,
    /// The balancer's address for the shards: grants name it instead of each shard's own
    /// (with routing CIDs that reach the shard). None: grants name the shards' addresses.
    pub shards_via: Option<SocketAddr>,
}

/// How server ids are encoded in CIDs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum LbProfile {
    #[default]
    Encrypted,
    Plaintext,
    Nlb,
}

impl Default for LbSettings {
    fn default() -> Self {
        Self {
            enabled: false,
            profile: LbProfile::Encrypted,
            config_id: 0,
            server_id_len: 4,
            nonce_len: 8,
            shards_via: None,
        }
    }
}

impl LbSettings {
    /// (server id length, nonce length) after the profile.
    pub fn lengths(&self) -> (usize, usize) {
        match self.profile {
            LbProfile::Nlb => (8, 7),
            _ => (self.server_id_len, self.nonce_len),
        }
    }

    /// Octets of every CID.
    pub fn cid_len(&self) -> usize {
        let (s, n) = self.lengths();
        1 + s + n
    }

    /// The configuration, with the key when the profile encrypts (from the cluster secret).
    pub fn config(
        &self,
        keys: Option<&crate::security::keys::KeySchedule>,
    ) -> Result<crate::lb::LbConfig, crate::lb::LbError> {
        let (s, n) = self.lengths();
        let key = match self.profile {
            LbProfile::Encrypted => keys.map(|k| k.lb_key(self.config_id)),
            _ => None,
        };
        crate::lb::LbConfig::new(self.config_id, s, n, key)
    }

    /// Every configuration of this section, one per config id (their keys from `keys` when
    /// the profile encrypts), starting at `config_id`: what the hub rotates through.
    pub fn plan(
        &self,
        keys: Option<&crate::security::keys::KeySchedule>,
    ) -> Result<crate::lb::LbPlan, crate::lb::LbError> {
        crate::lb::LbPlan::new(self.config_id, |id| {
            let mut s = self.clone();
            s.config_id = id;
            s.config(keys)
        })
    }
}
