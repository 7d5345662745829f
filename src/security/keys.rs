//! The cluster secret and the HKDF-SHA256 key schedule derived from it.
//!
//! Every key is `HKDF-Expand(HKDF-Extract("shoal cluster v1", secret), label)` with a distinct
//! label: `token group <g> epoch <n>` for the token-sealing key of group `g` in epoch `n` (a
//! shard holds only its own group's, see [`crate::security::token::TokenKeys::held`]),
//! `stateless reset` for QUIC stateless resets, `new token` for QUIC address-validation tokens.

use std::path::Path;

use hkdf::Hkdf;
use sha2::Sha256;

/// Bytes in the cluster secret.
pub const SECRET_LEN: usize = 32;
/// Environment variable that may hold the cluster secret, as 64 hex digits.
pub const SECRET_ENV: &str = "SHOAL_CLUSTER_SECRET";

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SecretError {
    #[error("cannot read the cluster secret from {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot write the cluster secret to {path}: {source}")]
    Write {
        path: String,
        source: std::io::Error,
    },
    #[error("the cluster secret in {origin} must be {SECRET_LEN} bytes as 64 hex digits")]
    Format { origin: String },
    #[error("no randomness available")]
    Rng,
}

/// The one secret every key of a cluster derives from.
#[derive(Clone)]
pub struct ClusterSecret([u8; SECRET_LEN]);

impl std::fmt::Debug for ClusterSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClusterSecret(..)")
    }
}

fn parse_hex(s: &str) -> Option<[u8; SECRET_LEN]> {
    let s = s.trim();
    if s.len() != SECRET_LEN * 2 {
        return None;
    }
    let mut out = [0u8; SECRET_LEN];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

pub fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl ClusterSecret {
    pub fn from_bytes(b: [u8; SECRET_LEN]) -> Self {
        Self(b)
    }

    pub fn random() -> Result<Self, SecretError> {
        let mut b = [0u8; SECRET_LEN];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b)
            .map_err(|_| SecretError::Rng)?;
        Ok(Self(b))
    }

    pub fn from_hex(s: &str, origin: &str) -> Result<Self, SecretError> {
        parse_hex(s).map(Self).ok_or_else(|| SecretError::Format {
            origin: origin.to_string(),
        })
    }

    pub fn load(path: &Path) -> Result<Self, SecretError> {
        let s = std::fs::read_to_string(path).map_err(|source| SecretError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_hex(&s, &path.display().to_string())
    }

    /// Writes the secret as hex, readable by the owner only.
    pub fn save(&self, path: &Path) -> Result<(), SecretError> {
        let err = |source| SecretError::Write {
            path: path.display().to_string(),
            source,
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(err)?;
        }
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
        let mut f = opts.open(path).map_err(err)?;
        std::io::Write::write_all(&mut f, format!("{}\n", to_hex(&self.0)).as_bytes()).map_err(err)
    }
}

/// Derives the cluster's keys.
#[derive(Clone)]
pub struct KeySchedule {
    hk: Hkdf<Sha256>,
}

impl std::fmt::Debug for KeySchedule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KeySchedule(..)")
    }
}

impl KeySchedule {
    pub fn new(secret: &ClusterSecret) -> Self {
        Self {
            hk: Hkdf::<Sha256>::new(Some(b"shoal cluster v1"), &secret.0),
        }
    }

    fn expand(&self, label: &[u8]) -> [u8; 32] {
        let mut out = [0u8; 32];
        self.hk
            .expand(label, &mut out)
            .expect("32 bytes is a valid HKDF-SHA256 output length");
        out
    }

    /// The token-sealing key of `group` in `epoch`.
    pub fn token_key(&self, group: u32, epoch: u32) -> [u8; 32] {
        self.expand(format!("token group {group} epoch {epoch}").as_bytes())
    }

    /// The AES-128 key of QUIC-LB configuration `config_id` (the same on every endpoint and
    /// balancer of the cluster).
    pub fn lb_key(&self, config_id: u8) -> [u8; 16] {
        let k = self.expand(format!("quic-lb config {config_id}").as_bytes());
        k[..16].try_into().expect("16 of 32 octets")
    }

    /// Key for QUIC stateless resets; the same on every endpoint of the cluster.
    pub fn stateless_reset_key(&self) -> ring::hmac::Key {
        ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &self.expand(b"stateless reset"))
    }

    /// Key for QUIC retry and NEW_TOKEN tokens; the same on every endpoint of the cluster.
    pub fn new_token_key(&self) -> ring::hkdf::Prk {
        ring::hkdf::Prk::new_less_safe(ring::hkdf::HKDF_SHA256, &self.expand(b"new token"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_give_distinct_keys_and_hex_round_trips() {
        let s = ClusterSecret::from_bytes([7; 32]);
        let k = KeySchedule::new(&s);
        assert_ne!(k.token_key(0, 1), k.token_key(0, 2));
        assert_ne!(
            k.token_key(0, 1),
            k.token_key(1, 1),
            "groups have their own keys"
        );
        assert_eq!(k.token_key(0, 1), KeySchedule::new(&s).token_key(0, 1));
        assert_ne!(
            k.token_key(0, 1),
            KeySchedule::new(&ClusterSecret::from_bytes([8; 32])).token_key(0, 1)
        );
        let hex = to_hex(&[7; 32]);
        assert!(ClusterSecret::from_hex(&hex, "t").is_ok());
        assert!(ClusterSecret::from_hex(&hex[1..], "t").is_err());
        assert!(ClusterSecret::from_hex(&"zz".repeat(32), "t").is_err());
    }

    #[test]
    fn save_refuses_to_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s");
        let s = ClusterSecret::random().unwrap();
        s.save(&p).unwrap();
        assert_eq!(ClusterSecret::load(&p).unwrap().0, s.0);
        assert!(s.save(&p).is_err());
    }
}
