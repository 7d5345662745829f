//! The shard directory: the hub's only view of its shards.
//!
//! Sans-IO. It is fed only by the messages shards send over their links
//! ([`crate::link::ShardMsg`]) and by link loss, and it decides which shards placement may use.
//! Placement, the pool driver, the admin API, `/metrics` and mirror sources all read it; none
//! of them holds a shard handle or a list made at start-up.
//!
//! A shard's life in the directory:
//!
//! ```text
//!  register ──► Ready ──begin_drain──► Draining ──drained / link lost──► (removed)
//!                 │                                          ▲
//!                 └── silent past `silence` ──► Lost ────────┘ (link lost)
//! ```
//!
//! Call order: [`Directory::handle_register`] first on each link, then any of
//! [`Directory::handle_load`], [`Directory::begin_drain`], [`Directory::handle_drained`],
//! [`Directory::handle_link_lost`] as they happen; [`Directory::handle_timeout`] on a timer.
//! Only `Ready` shards are placed on. A lost shard (silent) is taken out of placement at once
//! and stays listed (alive 0) until its link closes.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::hub::placement::ShardView;
use crate::ids::{GroupId, ShardId};
use crate::link::{HubCmd, Register, ShardLoad, LINK_VERSION};

/// Where a shard stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ShardState {
    /// Registered and placed on.
    Ready,
    /// Told to drain: no new clients.
    Draining,
    /// Silent for longer than the directory's bound: no new clients.
    Lost,
}

/// What the directory knows of one shard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardRecord {
    pub id: ShardId,
    pub group: GroupId,
    pub addr: SocketAddr,
    pub capacity: u64,
    /// Its mirror receiver for standby copies of live streams.
    pub mirror: Option<SocketAddr>,
    pub version: u16,
    pub state: ShardState,
    pub load: ShardLoad,
    pub registered_at: Instant,
    pub last_heard: Instant,
    /// The live streams it holds, as it last reported them (primary or standby copy).
    pub replicas: Vec<crate::link::ReplicaReport>,
}

impl ShardRecord {
    /// What placement sees.
    pub fn view(&self) -> ShardView {
        ShardView {
            id: self.id,
            group: self.group,
            addr: self.addr,
            alive: self.state == ShardState::Ready,
            sessions: self.load.sessions,
            capacity: self.capacity,
            committed_kbps: self.load.committed_kbps,
        }
    }
}

/// Why the directory refused a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DirectoryError {
    #[error("shard {shard:?} speaks link version {version}, this hub {LINK_VERSION}")]
    Version { shard: ShardId, version: u16 },
    #[error("shard {0:?} is already registered")]
    Duplicate(ShardId),
    #[error("no shard {0:?} in the directory")]
    Unknown(ShardId),
    #[error("shard {0:?} is not ready")]
    NotReady(ShardId),
}

/// The directory (see the module doc).
#[derive(Debug)]
pub struct Directory {
    shards: BTreeMap<ShardId, ShardRecord>,
    silence: Duration,
    /// Bumped on every change of membership or state, so readers can tell a list is stale.
    generation: u64,
}

impl Directory {
    /// A directory that takes a shard out of placement once it has been silent for `silence`.
    pub fn new(silence: Duration) -> Self {
        Self {
            shards: BTreeMap::new(),
            silence,
            generation: 0,
        }
    }

    pub fn handle_register(&mut self, r: &Register, now: Instant) -> Result<(), DirectoryError> {
        if r.version != LINK_VERSION {
            return Err(DirectoryError::Version {
                shard: r.shard,
                version: r.version,
            });
        }
        if self.shards.contains_key(&r.shard) {
            return Err(DirectoryError::Duplicate(r.shard));
        }
        self.shards.insert(
            r.shard,
            ShardRecord {
                id: r.shard,
                group: r.group,
                addr: r.addr,
                capacity: r.capacity,
                mirror: r.mirror,
                version: r.version,
                state: ShardState::Ready,
                load: ShardLoad::default(),
                registered_at: now,
                last_heard: now,
                replicas: Vec::new(),
            },
        );
        self.generation += 1;
        Ok(())
    }

    /// A load report; `Ok(true)` when it brought a lost shard back into placement.
    pub fn handle_load(
        &mut self,
        id: ShardId,
        load: ShardLoad,
        now: Instant,
    ) -> Result<bool, DirectoryError> {
        let r = self.record_mut(id)?;
        r.load = load;
        r.last_heard = now;
        if r.state == ShardState::Lost {
            // Heard again: it was slow, not gone.
            r.state = ShardState::Ready;
            self.generation += 1;
            return Ok(true);
        }
        Ok(false)
    }

    /// Any other message from the shard: it is alive.
    pub fn handle_heard(&mut self, id: ShardId, now: Instant) {
        if let Ok(r) = self.record_mut(id) {
            r.last_heard = now;
        }
    }

    /// Takes `id` out of placement and returns the command that tells it to drain.
    pub fn begin_drain(&mut self, id: ShardId, grace: Duration) -> Result<HubCmd, DirectoryError> {
        let r = self.record_mut(id)?;
        r.state = ShardState::Draining;
        self.generation += 1;
        Ok(HubCmd::Drain {
            grace_ms: u64::try_from(grace.as_millis()).unwrap_or(u64::MAX),
        })
    }

    /// The shard finished draining: it leaves the directory.
    pub fn handle_drained(&mut self, id: ShardId) -> Option<ShardRecord> {
        self.remove(id)
    }

    /// The shard's link closed (it stopped, crashed or was killed): it leaves the directory.
    pub fn handle_link_lost(&mut self, id: ShardId) -> Option<ShardRecord> {
        self.remove(id)
    }

    /// Marks every ready shard silent for longer than the bound as lost; returns them.
    pub fn handle_timeout(&mut self, now: Instant) -> Vec<ShardId> {
        let mut lost = Vec::new();
        for r in self.shards.values_mut() {
            if r.state == ShardState::Ready
                && now.saturating_duration_since(r.last_heard) > self.silence
            {
                r.state = ShardState::Lost;
                lost.push(r.id);
            }
        }
        if !lost.is_empty() {
            self.generation += 1;
        }
        lost
    }

    /// Every shard, by id.
    pub fn records(&self) -> impl Iterator<Item = &ShardRecord> {
        self.shards.values()
    }

    pub fn record(&self, id: ShardId) -> Option<&ShardRecord> {
        self.shards.get(&id)
    }

    /// What placement sees of every shard (only `Ready` ones are alive).
    pub fn views(&self) -> Vec<ShardView> {
        self.shards.values().map(ShardRecord::view).collect()
    }

    /// A shard's report of its live streams (it replaces the last one).
    pub fn handle_replicas(
        &mut self,
        id: ShardId,
        streams: Vec<crate::link::ReplicaReport>,
        now: Instant,
    ) {
        if let Some(r) = self.shards.get_mut(&id) {
            r.replicas = streams;
            r.last_heard = now;
        }
    }

    /// The ready shards of `group` that take standby copies of live streams.
    pub fn peers(&self, group: GroupId) -> Vec<crate::link::Peer> {
        self.shards
            .values()
            .filter(|r| r.group == group && r.state == ShardState::Ready)
            .filter_map(|r| {
                r.mirror.map(|mirror| crate::link::Peer {
                    shard: r.id,
                    mirror,
                })
            })
            .collect()
    }

    /// Whether `id` is ready, for commands that only a ready shard takes.
    pub fn is_ready(&self, id: ShardId) -> Result<(), DirectoryError> {
        match self.shards.get(&id) {
            None => Err(DirectoryError::Unknown(id)),
            Some(r) if r.state != ShardState::Ready => Err(DirectoryError::NotReady(id)),
            Some(_) => Ok(()),
        }
    }

    pub fn len(&self) -> usize {
        self.shards.len()
    }

    pub fn is_empty(&self) -> bool {
        self.shards.is_empty()
    }

    pub fn generation(&self) -> u64 {
        self.generation
    }

    pub fn silence(&self) -> Duration {
        self.silence
    }

    fn record_mut(&mut self, id: ShardId) -> Result<&mut ShardRecord, DirectoryError> {
        self.shards.get_mut(&id).ok_or(DirectoryError::Unknown(id))
    }

    fn remove(&mut self, id: ShardId) -> Option<ShardRecord> {
        let r = self.shards.remove(&id);
        if r.is_some() {
            self.generation += 1;
        }
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reg(id: u32, group: u32) -> Register {
        Register {
            version: LINK_VERSION,
            shard: ShardId(id),
            group: GroupId(group),
            addr: SocketAddr::from(([127, 0, 0, 1], 7000 + id as u16)),
            capacity: 10,
            mirror: None,
        }
    }

    #[test]
    fn registered_shards_are_placed_on_and_follow_their_reports() {
        let t0 = crate::clock::now();
        let mut d = Directory::new(Duration::from_secs(2));
        d.handle_register(&reg(0, 0), t0).unwrap();
        d.handle_register(&reg(1, 1), t0).unwrap();
        let load = ShardLoad {
            sessions: 7,
            committed_kbps: 900,
            ..ShardLoad::default()
        };
        d.handle_load(ShardId(1), load.clone(), t0).unwrap();
        let v = d.views();
        assert_eq!(v.len(), 2);
        assert!(v.iter().all(|s| s.alive));
        assert_eq!((v[1].sessions, v[1].committed_kbps), (7, 900));
        assert_eq!(
            d.handle_load(ShardId(9), load, t0),
            Err(DirectoryError::Unknown(ShardId(9)))
        );
    }

    #[test]
    fn a_wrong_version_or_a_duplicate_id_is_refused() {
        let t0 = crate::clock::now();
        let mut d = Directory::new(Duration::from_secs(2));
        let mut old = reg(0, 0);
        old.version = LINK_VERSION + 1;
        assert!(matches!(
            d.handle_register(&old, t0),
            Err(DirectoryError::Version { .. })
        ));
        d.handle_register(&reg(0, 0), t0).unwrap();
        assert_eq!(
            d.handle_register(&reg(0, 1), t0),
            Err(DirectoryError::Duplicate(ShardId(0)))
        );
        assert_eq!(d.len(), 1);
    }

    #[test]
    fn draining_leaves_placement_then_the_directory() {
        let t0 = crate::clock::now();
        let mut d = Directory::new(Duration::from_secs(2));
        d.handle_register(&reg(0, 0), t0).unwrap();
        let cmd = d.begin_drain(ShardId(0), Duration::from_secs(3)).unwrap();
        assert_eq!(cmd, HubCmd::Drain { grace_ms: 3000 });
        assert!(!d.views()[0].alive);
        assert_eq!(
            d.is_ready(ShardId(0)),
            Err(DirectoryError::NotReady(ShardId(0)))
        );
        assert!(d.handle_drained(ShardId(0)).is_some());
        assert!(d.is_empty());
        assert!(d.handle_drained(ShardId(0)).is_none());
    }

    #[test]
    fn a_silent_shard_is_lost_until_heard_again() {
        let t0 = crate::clock::now();
        let mut d = Directory::new(Duration::from_secs(2));
        d.handle_register(&reg(0, 0), t0).unwrap();
        d.handle_register(&reg(1, 0), t0).unwrap();
        d.handle_heard(ShardId(1), t0 + Duration::from_secs(2));
        assert!(d.handle_timeout(t0 + Duration::from_secs(2)).is_empty());
        let lost = d.handle_timeout(t0 + Duration::from_millis(2001));
        assert_eq!(lost, vec![ShardId(0)]);
        assert!(!d.record(ShardId(0)).unwrap().view().alive);
        assert!(d.record(ShardId(1)).unwrap().view().alive);
        let g = d.generation();
        d.handle_load(
            ShardId(0),
            ShardLoad::default(),
            t0 + Duration::from_secs(3),
        )
        .unwrap();
        assert!(d.record(ShardId(0)).unwrap().view().alive);
        assert!(d.generation() > g);
        assert!(d.handle_link_lost(ShardId(0)).is_some());
        assert_eq!(d.len(), 1);
    }
}
