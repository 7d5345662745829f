//! Liveness and readiness, as an orchestrator probes them (`GET /live`, `GET /ready`).
//!
//! What it decides: whether this hub should be sent new clients. [`readiness`] is the rule, a
//! plain function of what the hub knows; [`Probes`] holds the little state it needs (the
//! draining flag, the groups seen) and reads the directory for it.
//!
//! The hub is ready when, in this order of the reasons it gives otherwise:
//!
//! 1. its token keys are loaded (it can seal the tokens grants carry);
//! 2. it has at least one shard, and every shard group has at least one alive shard (`Ready`
//!    in the directory: placement uses it). The groups are those named at start
//!    ([`Probes::new`]: the cluster's own) and those of the shards the directory lists now (a
//!    group whose last shard left the directory is no longer placed on, unless named at start);
//! 3. it is not draining ([`Probes::set_draining`]: one way, `shoal up` flips it when its
//!    drain starts, so a balancer stops sending clients while the shards hand theirs over).
//!
//! Liveness says only that the process serves HTTP: a hub that is alive but not ready is
//! left running.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use serde::Serialize;

use crate::hub::placement::ShardView;
use crate::ids::GroupId;
use crate::security::token::TokenKeys;

/// Why the hub is not ready. Serialized as its message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NotReady {
    #[error("token keys are not loaded")]
    KeysNotLoaded,
    #[error("no shard in the directory")]
    NoShard,
    #[error("no alive shard in group {}", .0 .0)]
    NoAliveShard(GroupId),
    #[error("draining")]
    Draining,
}

impl Serialize for NotReady {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// One group as `GET /ready` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GroupReadiness {
    pub group: GroupId,
    /// Shards of the group in the directory.
    pub shards: u32,
    /// Of those, the alive ones (placed on).
    pub alive: u32,
}

/// The answer of `GET /ready`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Readiness {
    pub ready: bool,
    pub draining: bool,
    pub keys_loaded: bool,
    pub groups: Vec<GroupReadiness>,
    /// Empty when ready.
    pub reasons: Vec<NotReady>,
}

/// The readiness rule (see the module doc): `groups` are the groups that must have an alive
/// shard, `shards` the directory's view.
pub fn readiness(
    keys_loaded: bool,
    draining: bool,
    groups: &BTreeSet<GroupId>,
    shards: &[ShardView],
) -> Readiness {
    let mut reasons = Vec::new();
    if !keys_loaded {
        reasons.push(NotReady::KeysNotLoaded);
    }
    let all: BTreeSet<GroupId> = groups
        .iter()
        .copied()
        .chain(shards.iter().map(|s| s.group))
        .collect();
    if shards.is_empty() {
        reasons.push(NotReady::NoShard);
    }
    let groups: Vec<GroupReadiness> = all
        .into_iter()
        .map(|group| {
            let of = || shards.iter().filter(move |s| s.group == group);
            let count = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
            GroupReadiness {
                group,
                shards: count(of().count()),
                alive: count(of().filter(|s| s.alive).count()),
            }
        })
        .collect();
    reasons.extend(
        groups
            .iter()
            .filter(|g| g.alive == 0)
            .map(|g| NotReady::NoAliveShard(g.group)),
    );
    if draining {
        reasons.push(NotReady::Draining);
    }
    Readiness {
        ready: reasons.is_empty(),
        draining,
        keys_loaded,
        groups,
        reasons,
    }
}

/// What the probes read besides the directory.
pub struct Probes {
    draining: AtomicBool,
    /// Groups that must have an alive shard whether the directory lists them or not.
    groups: BTreeSet<GroupId>,
    /// The hub's token keys (none: this server fronts no hub, keys are not checked).
    tokens: Option<Arc<TokenKeys>>,
}

impl Probes {
    pub fn new(tokens: Option<Arc<TokenKeys>>, groups: BTreeSet<GroupId>) -> Self {
        Self {
            draining: AtomicBool::new(false),
            groups,
            tokens,
        }
    }

    /// From now on the hub is draining (not ready). Returns whether this call started it.
    pub fn set_draining(&self) -> bool {
        !self.draining.swap(true, Ordering::Relaxed)
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// Whether the hub can seal tokens at `now_ms` (the keys of a group it serves).
    fn keys_loaded(&self, now_ms: u64) -> bool {
        let Some(tokens) = &self.tokens else {
            return true;
        };
        let group = self.groups.first().copied().unwrap_or(GroupId(0));
        tokens.group_keys(group, now_ms).is_some()
    }

    /// The groups named at start.
    pub fn groups(&self) -> &BTreeSet<GroupId> {
        &self.groups
    }

    /// The readiness at `now_ms` over the directory's `shards`.
    pub fn readiness(&self, shards: &[ShardView], now_ms: u64) -> Readiness {
        readiness(
            self.keys_loaded(now_ms),
            self.is_draining(),
            &self.groups,
            shards,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::ShardId;

    fn shard(id: u32, group: u32, alive: bool) -> ShardView {
        ShardView {
            id: ShardId(id),
            group: GroupId(group),
            addr: std::net::SocketAddr::from(([127, 0, 0, 1], 7000)),
            alive,
            sessions: 0,
            capacity: 10,
            committed_kbps: 0,
        }
    }

    #[test]
    fn ready_needs_keys_an_alive_shard_per_group_and_no_drain() {
        let groups: BTreeSet<_> = [GroupId(0), GroupId(1)].into();
        let both = [shard(1, 0, true), shard(2, 1, false), shard(3, 1, true)];
        let r = readiness(true, false, &groups, &both);
        assert!(r.ready && r.reasons.is_empty(), "{r:?}");
        assert_eq!(
            r.groups[1],
            GroupReadiness {
                group: GroupId(1),
                shards: 2,
                alive: 1
            }
        );

        let r = readiness(false, true, &groups, &both[..2]);
        assert!(!r.ready);
        assert_eq!(
            r.reasons,
            [
                NotReady::KeysNotLoaded,
                NotReady::NoAliveShard(GroupId(1)),
                NotReady::Draining
            ]
        );
        let text = serde_json::to_value(&r).unwrap();
        assert_eq!(
            text["reasons"],
            serde_json::json!([
                "token keys are not loaded",
                "no alive shard in group 1",
                "draining"
            ])
        );

        // A group named at start with no shard at all, and no shard anywhere.
        let r = readiness(true, false, &groups, &both[..1]);
        assert_eq!(r.reasons, [NotReady::NoAliveShard(GroupId(1))]);
        let r = readiness(true, false, &BTreeSet::new(), &[]);
        assert_eq!(r.reasons, [NotReady::NoShard]);
    }

    #[test]
    fn groups_named_at_start_stay_expected_and_draining_is_one_way() {
        let p = Probes::new(None, [GroupId(4)].into());
        assert!(p.readiness(&[shard(1, 4, true)], 0).ready);
        // Group 4, named at start, lost its last shard: it is still expected.
        let r = p.readiness(&[shard(2, 0, true)], 0);
        assert_eq!(r.reasons, [NotReady::NoAliveShard(GroupId(4))]);
        assert!(
            p.readiness(&[shard(1, 4, true), shard(2, 0, true)], 0)
                .ready
        );
        assert!(p.set_draining());
        assert!(!p.set_draining(), "already draining");
        assert!(p.is_draining());
        let r = p.readiness(&[shard(1, 4, true), shard(2, 0, true)], 0);
        assert_eq!((r.ready, r.draining), (false, true));
        assert_eq!(r.reasons, [NotReady::Draining]);
    }
}
