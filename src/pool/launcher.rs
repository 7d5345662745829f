//! How the pool starts and stops shards.
//!
//! The pool decides *that* a shard starts or stops; a [`Launcher`] makes it so. A launched
//! shard joins the cluster by registering over its link (the hub's directory then places on
//! it); readiness is registration, never the launcher's word. A stopped shard is reaped: its
//! process or endpoint and whatever it held are gone. Launchers never restart a shard on
//! their own: restarts are the pool's decision.

use crate::ids::{GroupId, ShardId};

/// A launcher could not start a shard.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LaunchError {
    #[error("no free shard port in {first}..{end} (shards.base_port and the pool's size)")]
    NoPort { first: u16, end: u32 },
    #[error("cannot start shard {shard:?}: {source}")]
    Start {
        shard: ShardId,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// Starts and stops shards for the pool.
pub trait Launcher: Send + Sync {
    /// Starts shard `id` of `group`. When this returns, the shard is on its way to
    /// registering; the directory says when it is there.
    fn launch(&self, id: ShardId, group: GroupId) -> Result<(), LaunchError>;

    /// Frees what shard `id` held after it drained, stopped or died. Idempotent.
    fn reap(&self, id: ShardId);
}
