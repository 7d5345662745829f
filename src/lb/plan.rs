//! The cluster's QUIC-LB configurations, one per config id, and the rotation between them.

use std::sync::{Arc, Mutex};

use super::{server_id_bytes, LbConfig, LbError, LbHandle, LbParams};
use crate::sync::lock;

/// The seven configurations of a cluster (config ids 0..=6, each with its own key when the
/// profile encrypts) and which one is current: the hub's side of a rotation. Clones share it.
#[derive(Clone)]
pub struct LbPlan {
    inner: Arc<Inner>,
}

struct Inner {
    /// By config id.
    configs: Vec<Arc<LbConfig>>,
    state: Mutex<State>,
}

struct State {
    current: u8,
    rotations: u64,
    /// Endpoints in this process that follow the plan (the hub's own), with their server id.
    local: Vec<(LbHandle, Vec<u8>)>,
}

impl std::fmt::Debug for LbPlan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LbPlan")
            .field("config_id", &self.current().config_id())
            .field("rotations", &self.rotations())
            .finish_non_exhaustive()
    }
}

impl LbPlan {
    /// The plan whose configuration of config id `id` is `make(id)`, starting at `first`.
    pub fn new(first: u8, make: impl Fn(u8) -> Result<LbConfig, LbError>) -> Result<Self, LbError> {
        let configs = (0..super::cid::UNROUTABLE)
            .map(|id| make(id).map(Arc::new))
            .collect::<Result<Vec<_>, _>>()?;
        if usize::from(first) >= configs.len() {
            return Err(LbError::ConfigId(first));
        }
        Ok(Self {
            inner: Arc::new(Inner {
                configs,
                state: Mutex::new(State {
                    current: first,
                    rotations: 0,
                    local: Vec::new(),
                }),
            }),
        })
    }

    /// The configuration new CIDs and grants use.
    pub fn current(&self) -> Arc<LbConfig> {
        let id = lock(&self.inner.state).current;
        self.inner.configs[usize::from(id)].clone()
    }

    /// Rotations since the hub started.
    pub fn rotations(&self) -> u64 {
        lock(&self.inner.state).rotations
    }

    /// Installs the current configuration on `handle`, an endpoint in this process with
    /// `server_id`, and again after every rotation.
    pub fn attach(&self, handle: LbHandle, server_id: Vec<u8>) -> Result<(), LbError> {
        let mut state = lock(&self.inner.state);
        let config = self.inner.configs[usize::from(state.current)].clone();
        handle.set(config, server_id.clone())?;
        state.local.push((handle, server_id));
        Ok(())
    }

    /// Makes the next config id current (6 wraps to 0) on every attached endpoint; returns
    /// the configurations before and after. The shards get theirs over the link
    /// ([`LbPlan::params_for`]).
    pub fn rotate(&self) -> (Arc<LbConfig>, Arc<LbConfig>) {
        let mut state = lock(&self.inner.state);
        let before = self.inner.configs[usize::from(state.current)].clone();
        state.current = (state.current + 1) % self.inner.configs.len() as u8;
        state.rotations += 1;
        let after = self.inner.configs[usize::from(state.current)].clone();
        for (handle, sid) in &state.local {
            // Every configuration of a plan has the same lengths: this cannot fail.
            let _ = handle.set(after.clone(), sid.clone());
        }
        (before, after)
    }

    /// What shard `shard` gets on its link (the `lb` command): the current configuration, its
    /// key and the shard's server id in it.
    pub fn params_for(&self, shard: u32) -> LbParams {
        let c = self.current();
        LbParams {
            config_id: c.config_id(),
            server_id_len: c.server_id_len() as u8,
            nonce_len: c.nonce_len() as u8,
            key: c.key().map(|k| bytes::Bytes::copy_from_slice(&k)),
            server_id: server_id_bytes(shard, c.server_id_len()).into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(first: u8) -> LbPlan {
        LbPlan::new(first, |id| LbConfig::new(id, 4, 8, Some([id + 1; 16]))).unwrap()
    }

    #[test]
    fn a_rotation_moves_every_attached_endpoint_to_the_next_config_id_and_wraps() {
        let p = plan(5);
        let h = LbHandle::new(13);
        p.attach(h.clone(), server_id_bytes(u32::MAX, 4)).unwrap();
        assert_eq!(h.config_id(), Some(5));
        let (before, after) = p.rotate();
        assert_eq!((before.config_id(), after.config_id()), (5, 6));
        assert_eq!(h.config_id(), Some(6));
        assert_eq!(
            p.rotate().1.config_id(),
            0,
            "6 wraps to 0 (7 is unroutable)"
        );
        assert_eq!((h.config_id(), p.rotations()), (Some(0), 2));
        // Each config id has its own key.
        assert_ne!(before.key(), after.key());
        let params = p.params_for(3);
        assert_eq!(
            (params.config_id, &params.server_id[..]),
            (0, &[0, 0, 0, 3][..])
        );
        assert_eq!(params.config().unwrap().key(), p.current().key());
    }

    #[test]
    fn a_plan_starts_only_at_a_routable_config_id() {
        let r = LbPlan::new(7, |id| LbConfig::new(id, 4, 8, None));
        assert!(matches!(r, Err(LbError::ConfigId(7))), "{r:?}");
    }
}
