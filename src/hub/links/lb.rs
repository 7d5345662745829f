//! The QUIC-LB configuration on the links (`lb`): what each shard gets when it registers, and
//! rotations to the next config id (see [`crate::lb::LbPlan`]).

use std::sync::Arc;

use tracing::info;

use super::{lock, HubCmd, Links};

impl Links {
    /// The QUIC-LB configurations shards get on their links (`lb`): the plan's current one.
    pub fn set_lb(&self, plan: Option<crate::lb::LbPlan>) {
        *lock(&self.inner.lb) = plan;
    }

    /// Rotates the QUIC-LB configuration ([`crate::lb::LbPlan::rotate`]): the hub's endpoint
    /// at once, every registered shard over its link. Returns the config ids before and after
    /// and the shards told (a full link gets it as soon as it has room). `None`: QUIC-LB is off.
    pub fn rotate_lb(&self) -> Option<(u8, u8, usize)> {
        let lb = lock(&self.inner.lb);
        let plan = lb.clone()?;
        let (before, after) = plan.rotate();
        let senders = lock(&self.inner.senders);
        let mut told = 0;
        for (shard, tx) in senders.iter() {
            let cmd = HubCmd::Lb(plan.params_for(shard.0));
            match tx.try_send(cmd) {
                Ok(()) => told += 1,
                // A full link gets it as soon as there is room (commands are never dropped).
                Err(tokio::sync::mpsc::error::TrySendError::Full(cmd)) => {
                    told += 1;
                    let tx = tx.clone();
                    tokio::spawn(async move {
                        let _ = tx.send(cmd).await;
                    });
                }
                Err(tokio::sync::mpsc::error::TrySendError::Closed(_)) => {}
            }
        }
        drop(senders);
        drop(lb);
        info!(
            from = before.config_id(),
            to = after.config_id(),
            shards = told,
            "QUIC-LB configuration rotated"
        );
        Some((before.config_id(), after.config_id(), told))
    }

    /// The current config id and the rotations so far, where QUIC-LB is on.
    pub fn lb_state(&self) -> Option<(u8, u64)> {
        lock(&self.inner.lb)
            .as_ref()
            .map(|p| (p.current().config_id(), p.rotations()))
    }

    /// The current QUIC-LB configuration, where QUIC-LB is on.
    pub fn lb_config(&self) -> Option<Arc<crate::lb::LbConfig>> {
        lock(&self.inner.lb)
            .as_ref()
            .map(crate::lb::LbPlan::current)
    }
}
