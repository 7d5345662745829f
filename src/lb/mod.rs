//! Behind UDP load balancers: QUIC-LB connection IDs ([`cid`]) that carry each endpoint's
//! server id, and the quinn connection-id generator that issues them.

pub mod cid;

use std::sync::Arc;

pub use cid::{LbConfig, LbError};

/// Issues QUIC-LB connection IDs for one endpoint (its server id, fresh random nonces).
pub struct LbCidGenerator {
    config: Arc<LbConfig>,
    server_id: Vec<u8>,
}

impl LbCidGenerator {
    /// A generator for the endpoint with `server_id` (its length must be the configuration's).
    pub fn new(config: Arc<LbConfig>, server_id: Vec<u8>) -> Result<Self, LbError> {
        if server_id.len() != config.server_id_len() {
            return Err(LbError::WrongServerId {
                got: server_id.len(),
                want: config.server_id_len(),
            });
        }
        Ok(Self { config, server_id })
    }

    /// One CID with a fresh random nonce.
    pub fn cid(&self) -> Vec<u8> {
        use ring::rand::SecureRandom;
        let mut nonce = vec![0u8; self.config.nonce_len()];
        if ring::rand::SystemRandom::new().fill(&mut nonce).is_err() {
            // No randomness: a zero nonce still routes; uniqueness then comes from quinn's
            // collision check (it asks again).
            nonce.iter_mut().for_each(|b| *b = 0);
        }
        self.config
            .encode(&self.server_id, &nonce)
            .expect("lengths were checked when the generator was made")
    }
}

impl quinn::ConnectionIdGenerator for LbCidGenerator {
    fn generate_cid(&mut self) -> quinn::ConnectionId {
        quinn::ConnectionId::new(&self.cid())
    }

    fn validate(&self, cid: &quinn::ConnectionId) -> Result<(), quinn_proto::InvalidCid> {
        // Only this endpoint's own CIDs; anything else was misrouted or forged.
        match self.config.decode_server_id(cid) {
            Ok(sid) if sid == self.server_id => Ok(()),
            _ => Err(quinn_proto::InvalidCid),
        }
    }

    fn cid_len(&self) -> usize {
        self.config.cid_len()
    }

    fn cid_lifetime(&self) -> Option<std::time::Duration> {
        None
    }
}

/// An endpoint configuration whose connection IDs carry `server_id`.
pub fn endpoint_config(
    config: Arc<LbConfig>,
    server_id: Vec<u8>,
) -> Result<quinn::EndpointConfig, LbError> {
    // Checked once here: the factory below cannot fail.
    LbCidGenerator::new(config.clone(), server_id.clone())?;
    let mut e = quinn::EndpointConfig::default();
    e.cid_generator(move || {
        Box::new(
            LbCidGenerator::new(config.clone(), server_id.clone())
                .expect("checked when the endpoint configuration was made"),
        )
    });
    Ok(e)
}

#[cfg(test)]
mod tests {
    use super::*;
    use quinn::ConnectionIdGenerator;

    #[test]
    fn the_generator_issues_routable_cids_of_its_server_and_validates_only_those() {
        let c = Arc::new(LbConfig::new(1, 4, 8, Some([7; 16])).unwrap());
        let mut g = LbCidGenerator::new(c.clone(), vec![0, 0, 0, 42]).unwrap();
        let a = g.generate_cid();
        let b = g.generate_cid();
        assert_ne!(a, b, "fresh nonces");
        assert_eq!(a.len(), g.cid_len());
        assert_eq!(c.decode_server_id(&a).unwrap(), vec![0, 0, 0, 42]);
        assert!(g.validate(&a).is_ok());
        let other = LbCidGenerator::new(c.clone(), vec![0, 0, 0, 43]).unwrap();
        assert!(g.validate(&quinn::ConnectionId::new(&other.cid())).is_err());
        assert!(g.validate(&quinn::ConnectionId::new(&[0x20; 8])).is_err());
        assert!(LbCidGenerator::new(c, vec![1, 2]).is_err());
    }
}
