//! Behind UDP load balancers: QUIC-LB connection IDs ([`cid`]) that carry each endpoint's
//! server id, and the quinn connection-id generator that issues them.
//!
//! quinn asks an endpoint's generator for every CID it issues and fixes the CID length when
//! the endpoint is made, so each endpoint gets an [`LbHandle`] of a fixed length whose
//! configuration (config id, key, server id) is installed later — by the hub over the link, for
//! a shard in another process. Until then the endpoint issues *unroutable* CIDs (config id
//! 0b111, the draft's rule for a server with no configuration), of the same length.
//!
//! **Rotation** goes through the config id ([`LbPlan`]): each of the seven ids has its own
//! key from the cluster key schedule, and rotating makes the next id current on the hub and,
//! over the link, on every shard. New CIDs carry the new id at once; an endpoint keeps
//! recognising the CIDs of the configurations it had before (its connections keep theirs:
//! quinn looks a known CID up before it asks the generator anything).

pub mod cid;
mod plan;
pub mod rules;

pub use plan::LbPlan;

use std::sync::{Arc, RwLock};

pub use cid::{LbConfig, LbError};

/// The hub's server id, in every configuration (shard ids stop below it).
pub const HUB_SERVER_ID: u32 = u32::MAX;

/// Server id `id` in `len` octets: the big-endian id, zero-extended on the left (a length
/// below 4 keeps the low octets).
pub fn server_id_bytes(id: u32, len: usize) -> Vec<u8> {
    let be = id.to_be_bytes();
    if len >= 4 {
        let mut v = vec![0; len - 4];
        v.extend_from_slice(&be);
        v
    } else {
        be[4 - len..].to_vec()
    }
}

/// A QUIC-LB configuration as the hub sends it to a shard in another process (the link's
/// `lb` command): the shard holds no cluster secret, so the key travels. Secret: `Debug` omits
/// the key.
#[derive(Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LbParams {
    pub config_id: u8,
    pub server_id_len: u8,
    pub nonce_len: u8,
    /// 16 octets, or none for plaintext CIDs.
    #[serde(default)]
    pub key: Option<bytes::Bytes>,
    /// The shard's server id in this configuration (from the hub's directory).
    pub server_id: bytes::Bytes,
}

impl std::fmt::Debug for LbParams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LbParams")
            .field("config_id", &self.config_id)
            .field("server_id_len", &self.server_id_len)
            .field("nonce_len", &self.nonce_len)
            .field("encrypted", &self.key.is_some())
            .finish_non_exhaustive()
    }
}

impl LbParams {
    /// The configuration these parameters describe.
    pub fn config(&self) -> Result<LbConfig, LbError> {
        let key = match &self.key {
            Some(k) => {
                Some(<[u8; 16]>::try_from(k.as_ref()).map_err(|_| LbError::BadKey(k.len()))?)
            }
            None => None,
        };
        LbConfig::new(
            self.config_id,
            usize::from(self.server_id_len),
            usize::from(self.nonce_len),
            key,
        )
    }
}

/// An endpoint's QUIC-LB state, shared with its connection-id generator.
#[derive(Clone)]
pub struct LbHandle {
    cid_len: usize,
    configs: Arc<RwLock<Configs>>,
    /// Packets that reached this endpoint with another server's CID (misrouted or forged).
    foreign: Arc<std::sync::atomic::AtomicU64>,
}

/// A configuration and this endpoint's server id in it.
type Installed = (Arc<LbConfig>, Vec<u8>);

/// The configuration new CIDs use, and the ones before it (one per config id, at most six):
/// CIDs they issued still belong to this endpoint.
#[derive(Default)]
struct Configs {
    current: Option<Installed>,
    earlier: Vec<Installed>,
}

impl Configs {
    /// The installed configuration that CIDs of `config_id` belong to.
    fn of(&self, config_id: u8) -> Option<&Installed> {
        self.current
            .iter()
            .chain(&self.earlier)
            .find(|(c, _)| c.config_id() == config_id)
    }
}

impl std::fmt::Debug for LbHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LbHandle")
            .field("cid_len", &self.cid_len)
            .field("configured", &self.configured())
            .finish()
    }
}

impl LbHandle {
    /// A handle whose CIDs are `cid_len` octets (at least 5, at most 20), unroutable until
    /// [`LbHandle::set`].
    pub fn new(cid_len: usize) -> Self {
        Self {
            cid_len: cid_len.clamp(5, cid::MAX_CID_LEN),
            configs: Arc::default(),
            foreign: Arc::default(),
        }
    }

    pub fn cid_len(&self) -> usize {
        self.cid_len
    }

    pub fn configured(&self) -> bool {
        self.read().current.is_some()
    }

    /// The config id new CIDs carry (`None` before any configuration).
    pub fn config_id(&self) -> Option<u8> {
        self.read().current.as_ref().map(|(c, _)| c.config_id())
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Configs> {
        self.configs.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Installs `config` with this endpoint's `server_id`; new CIDs carry it from now on, and
    /// the configuration it replaces (another config id) is still recognised.
    pub fn set(&self, config: Arc<LbConfig>, server_id: Vec<u8>) -> Result<(), LbError> {
        if config.cid_len() != self.cid_len {
            return Err(LbError::WrongLength {
                got: config.cid_len(),
                want: self.cid_len,
            });
        }
        if server_id.len() != config.server_id_len() {
            return Err(LbError::WrongServerId {
                got: server_id.len(),
                want: config.server_id_len(),
            });
        }
        let mut configs = self.configs.write().unwrap_or_else(|p| p.into_inner());
        let id = config.config_id();
        configs.earlier.retain(|(c, _)| c.config_id() != id);
        if let Some(before) = configs.current.take() {
            if before.0.config_id() != id {
                configs.earlier.push(before);
            }
        }
        configs.current = Some((config, server_id));
        Ok(())
    }

    /// One CID: routable to this endpoint once configured, unroutable before.
    pub fn cid(&self) -> Vec<u8> {
        match &self.read().current {
            Some((config, sid)) => {
                let nonce = random(config.nonce_len());
                config
                    .encode(sid, &nonce)
                    .expect("lengths were checked when the configuration was set")
            }
            None => {
                let mut c = random(self.cid_len);
                c[0] = cid::UNROUTABLE << 5 | (self.cid_len - 1) as u8;
                c
            }
        }
    }

    /// Packets with another server's CID seen so far ([`LbHandle::note_foreign`] and the
    /// generator's validation).
    pub fn foreign(&self) -> u64 {
        self.foreign.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Counts a packet that carried another server's CID.
    pub fn note_foreign(&self) {
        self.foreign
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// Whether a client's first packet with destination CID `cid` was meant for this endpoint:
    /// its server id is ours in the configuration its config id names. True when that is no
    /// configuration this endpoint knows (or none is installed yet): a client's first CID is
    /// its own choice, random unless it routes (a client talking to the hub, or straight to a
    /// shard), and the draft has balancers send those to a fallback, not drop them.
    pub fn routes_here(&self, cid: &[u8]) -> bool {
        let Some(id) = LbConfig::config_id_of(cid) else {
            return true;
        };
        match self.read().of(id) {
            Some((config, sid)) => config.decode_server_id(cid).map_or(true, |s| &s == sid),
            None => true,
        }
    }

    /// Whether `cid` is one this endpoint could have issued.
    fn is_own(&self, cid: &[u8]) -> bool {
        if cid.len() != self.cid_len {
            return false;
        }
        let Some(id) = LbConfig::config_id_of(cid) else {
            return false;
        };
        if id == cid::UNROUTABLE {
            return true;
        }
        match self.read().of(id) {
            Some((config, sid)) => config.decode_server_id(cid).is_ok_and(|s| &s == sid),
            None => false,
        }
    }
}

fn random(n: usize) -> Vec<u8> {
    use ring::rand::SecureRandom;
    let mut v = vec![0u8; n];
    // Without randomness the CID still routes; quinn retries a colliding one.
    let _ = ring::rand::SystemRandom::new().fill(&mut v);
    v
}

/// quinn's view of an [`LbHandle`].
struct Generator(LbHandle);

impl quinn::ConnectionIdGenerator for Generator {
    fn generate_cid(&mut self) -> quinn::ConnectionId {
        quinn::ConnectionId::new(&self.0.cid())
    }

    fn validate(&self, cid: &quinn::ConnectionId) -> Result<(), quinn_proto::InvalidCid> {
        // A short-header packet for another server's CID was misrouted or forged: dropped
        // (a stateless reset is only for this endpoint's own CIDs).
        if self.0.is_own(cid) {
            Ok(())
        } else {
            self.0.note_foreign();
            Err(quinn_proto::InvalidCid)
        }
    }

    fn cid_len(&self) -> usize {
        self.0.cid_len
    }

    fn cid_lifetime(&self) -> Option<std::time::Duration> {
        None
    }
}

/// `base` with its connection IDs issued through `handle`.
pub fn with_cids(mut base: quinn::EndpointConfig, handle: &LbHandle) -> quinn::EndpointConfig {
    let h = handle.clone();
    base.cid_generator(move || Box::new(Generator(h.clone())));
    base
}

#[cfg(test)]
mod tests {
    use super::*;
    use quinn::ConnectionIdGenerator;

    #[test]
    fn the_generator_issues_routable_cids_once_configured_and_validates_only_its_own() {
        let c = Arc::new(LbConfig::new(1, 4, 8, Some([7; 16])).unwrap());
        let h = LbHandle::new(c.cid_len());
        let mut g = Generator(h.clone());
        // Not configured: unroutable, the right length.
        let u = g.generate_cid();
        assert_eq!((u.len(), u[0] >> 5), (13, cid::UNROUTABLE));
        assert!(g.validate(&u).is_ok());
        h.set(c.clone(), server_id_bytes(42, 4)).unwrap();
        let (a, b) = (g.generate_cid(), g.generate_cid());
        assert_ne!(a, b, "fresh nonces");
        assert_eq!(c.decode_server_id(&a).unwrap(), vec![0, 0, 0, 42]);
        assert!(g.validate(&a).is_ok());
        let other = LbHandle::new(13);
        other.set(c.clone(), server_id_bytes(43, 4)).unwrap();
        assert!(g.validate(&quinn::ConnectionId::new(&other.cid())).is_err());
        assert!(g.validate(&quinn::ConnectionId::new(&[0x20; 8])).is_err());
        assert!(h.set(c.clone(), vec![1, 2]).is_err());
        assert!(LbHandle::new(9).set(c, server_id_bytes(1, 4)).is_err());
    }

    #[test]
    fn after_a_rotation_the_cids_of_the_configuration_before_are_still_ours() {
        let c0 = Arc::new(LbConfig::new(0, 4, 8, Some([7; 16])).unwrap());
        let c1 = Arc::new(LbConfig::new(1, 4, 8, Some([9; 16])).unwrap());
        let h = LbHandle::new(13);
        let g = Generator(h.clone());
        let sid = server_id_bytes(42, 4);
        h.set(c0.clone(), sid.clone()).unwrap();
        let old = h.cid();
        h.set(c1.clone(), sid.clone()).unwrap();
        assert_eq!(h.config_id(), Some(1));
        let new = h.cid();
        assert_eq!((old[0] >> 5, new[0] >> 5), (0, 1));
        for cid in [&old, &new] {
            assert!(g.validate(&quinn::ConnectionId::new(cid)).is_ok());
            assert!(h.routes_here(cid));
        }
        // Another server's CIDs are foreign in either configuration.
        let other = server_id_bytes(43, 4);
        for c in [&c0, &c1] {
            let theirs = c.encode(&other, &[1; 8]).unwrap();
            assert!(g.validate(&quinn::ConnectionId::new(&theirs)).is_err());
            assert!(!h.routes_here(&theirs));
        }
        // A config id this endpoint never had: not its own CID (a short header is dropped),
        // but a first packet with it is a client's own choice, served.
        let mut unknown = new.clone();
        unknown[0] = 3 << 5 | (unknown[0] & 0x1f);
        assert!(g.validate(&quinn::ConnectionId::new(&unknown)).is_err());
        assert!(h.routes_here(&unknown));
        // Back to config 0: one entry per config id, the current one first.
        h.set(c0, sid).unwrap();
        assert_eq!(h.config_id(), Some(0));
        assert_eq!(h.read().earlier.len(), 1);
        assert!(g.validate(&quinn::ConnectionId::new(&new)).is_ok());
    }

    #[test]
    fn server_ids_are_big_endian_and_zero_extended() {
        assert_eq!(
            server_id_bytes(0x0102_0304, 8),
            vec![0, 0, 0, 0, 1, 2, 3, 4]
        );
        assert_eq!(server_id_bytes(0x0102_0304, 4), vec![1, 2, 3, 4]);
        assert_eq!(server_id_bytes(0x0102_0304, 2), vec![3, 4]);
    }
}
