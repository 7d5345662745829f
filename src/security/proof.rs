//! The attach proof and the bind MAC (see `../shared/DESIGN.md`, "Security model of the token").
//!
//! Both are HMAC-SHA256 under the 32-byte session secret that the grant gives the client:
//! - attach: `HMAC(secret, "shoal attach" | shard_id:u32be | nonce)` — binds the first flight to
//!   one shard, so a captured flight replayed to another shard fails;
//! - bind: `HMAC(secret, "shoal bind" | exporter)` where `exporter` is 32 bytes of TLS keying
//!   material of the connection — binds the session to this connection.

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::ids::ShardId;

/// Length of the session secret, the proof and the bind MAC.
pub const SECRET_LEN: usize = 32;
/// Length of the attach nonce.
pub const NONCE_LEN: usize = 16;
/// TLS exporter label of the bind MAC.
pub const BIND_EXPORTER_LABEL: &[u8] = b"EXPORTER-shoal-bind";

type HmacSha256 = Hmac<Sha256>;

fn mac(secret: &[u8], parts: &[&[u8]]) -> HmacSha256 {
    let mut m = HmacSha256::new_from_slice(secret).expect("HMAC takes keys of any length");
    for p in parts {
        m.update(p);
    }
    m
}

pub fn attach_proof(secret: &[u8], shard: ShardId, nonce: &[u8]) -> [u8; 32] {
    mac(secret, &[b"shoal attach", &shard.0.to_be_bytes(), nonce])
        .finalize()
        .into_bytes()
        .into()
}

/// Constant-time check of an attach proof.
pub fn verify_attach_proof(secret: &[u8], shard: ShardId, nonce: &[u8], proof: &[u8]) -> bool {
    mac(secret, &[b"shoal attach", &shard.0.to_be_bytes(), nonce])
        .verify_slice(proof)
        .is_ok()
}

pub fn bind_mac(secret: &[u8], exporter: &[u8]) -> [u8; 32] {
    mac(secret, &[b"shoal bind", exporter])
        .finalize()
        .into_bytes()
        .into()
}

/// Constant-time check of a bind MAC.
pub fn verify_bind_mac(secret: &[u8], exporter: &[u8], tag: &[u8]) -> bool {
    mac(secret, &[b"shoal bind", exporter])
        .verify_slice(tag)
        .is_ok()
}

/// The exporter secret of a connection that the bind MAC covers.
pub fn exporter(conn: &quinn::Connection) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    conn.export_keying_material(&mut out, BIND_EXPORTER_LABEL, b"")
        .ok()?;
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proofs_bind_shard_nonce_and_secret() {
        let s = [1u8; 32];
        let n = [2u8; 16];
        let p = attach_proof(&s, ShardId(3), &n);
        assert!(verify_attach_proof(&s, ShardId(3), &n, &p));
        assert!(!verify_attach_proof(&s, ShardId(4), &n, &p));
        assert!(!verify_attach_proof(&s, ShardId(3), &[3u8; 16], &p));
        assert!(!verify_attach_proof(&[9u8; 32], ShardId(3), &n, &p));
        assert!(!verify_attach_proof(&s, ShardId(3), &n, &p[..31]));
        let b = bind_mac(&s, b"exp");
        assert!(verify_bind_mac(&s, b"exp", &b));
        assert!(!verify_bind_mac(&s, b"exq", &b));
    }
}
