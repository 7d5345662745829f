//! The shard pool of one group: which shards exist, in which state, and when to start, drain
//! or stop one. Sans-IO: inputs carry `now`, outputs are polled as [`PoolAction`]s that a
//! driver carries out (creating or stopping real shard endpoints) or a simulation applies.
//!
//! Lifecycle of a shard, with the only transitions allowed (anything else is an
//! [`PoolError::IllegalTransition`]):
//!
//! ```text
//! Starting ──started──► Warm ──first session──► Active ──idle──► Warm
//!    │                   │                        │
//!    └──────────── stop ─┴──────── drain ─────────┴──► Draining ──empty or grace──► Stopped
//!
//!  Warm / Active ──lost (died without a drain)──► removed at once
//! ```
//!
//! Rules, in the order [`Pool::handle_timeout`] applies them:
//! 1. the pool never has fewer than `min_shards` nor more than `max_shards` shards that are
//!    starting, warm or active;
//! 2. scale out to the *desired* size (set by the policy: a fixed size, the current load, or
//!    the predicted load — see [`Pool::set_desired`]) at once; a start takes `startup` before
//!    the shard takes clients;
//! 3. scale in conservatively: only a shard that has had no session for `idle_stop_after`, has
//!    lived at least `min_lifespan`, and only while the pool is above its desired size — one
//!    shard per `scale_in_step`;
//! 4. a shard over any quota (sessions, send bandwidth, buffer memory) takes no new client; one
//!    over its bandwidth or buffer quota also counts as unusable when the desired size is
//!    checked, so the pool adds capacity for it. A shard that is only full of sessions still
//!    counts: the policies size the pool from sessions, so counting it out as well would add
//!    its capacity twice (every full shard replaced at once);
//! 5. a draining shard takes no client; its clients resume on another shard of the group (the
//!    client's resume path); it stops when empty or after `drain_grace`.

pub mod driver;
pub mod launcher;
pub mod policy;
#[cfg(test)]
mod tests;

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::ids::{GroupId, ShardId};

/// What one shard may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Quota {
    pub sessions: u64,
    pub send_bps: u64,
    pub buffer_bytes: u64,
}

impl Default for Quota {
    fn default() -> Self {
        Self {
            sessions: 10_000,
            send_bps: 1_000_000_000,
            buffer_bytes: 1 << 30,
        }
    }
}

/// How a pool behaves.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PoolConfig {
    /// Time from a start to the shard taking clients (measured on the machine).
    pub startup: Duration,
    pub min_lifespan: Duration,
    pub idle_stop_after: Duration,
    pub scale_in_step: Duration,
    pub drain_grace: Duration,
    pub min_shards: u32,
    pub max_shards: u32,
    pub quota: Quota,
}

impl Default for PoolConfig {
    fn default() -> Self {
        Self {
            startup: Duration::from_millis(500),
            min_lifespan: Duration::from_secs(60),
            idle_stop_after: Duration::from_secs(30),
            scale_in_step: Duration::from_secs(10),
            drain_grace: Duration::from_secs(2),
            min_shards: 1,
            max_shards: 64,
            quota: Quota::default(),
        }
    }
}

/// The state of one shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Life {
    Starting,
    Warm,
    Active,
    Draining,
    Stopped,
}

/// What a shard reports on its load-report interval.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct LoadReport {
    pub sessions: u64,
    pub streams: u64,
    pub send_bps: u64,
    pub buffer_bytes: u64,
    /// CPU time of the shard's tasks per second of wall time (1.0 = one core).
    pub cpu: f64,
}

/// What the driver must do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PoolAction {
    Start {
        shard: ShardId,
    },
    /// Send go-away to its sessions; they resume elsewhere in the group.
    Drain {
        shard: ShardId,
    },
    Stop {
        shard: ShardId,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PoolError {
    #[error("{shard} cannot go from {from:?} to {to:?}")]
    IllegalTransition {
        shard: ShardId,
        from: Life,
        to: Life,
    },
    #[error("no {0} in this pool")]
    UnknownShard(ShardId),
}

#[derive(Debug, Clone)]
struct Slot {
    id: ShardId,
    life: Life,
    started: Instant,
    ready_at: Instant,
    last_busy: Instant,
    drain_until: Option<Instant>,
    load: LoadReport,
    /// Sessions admitted since the last load report (the report catches up).
    admitted_since_report: u64,
}

/// A point-in-time view of one shard.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct SlotSnapshot {
    pub id: ShardId,
    pub life: Life,
    pub age_s: f64,
    pub sessions: u64,
    pub over_quota: bool,
}

/// Counters of a pool.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct PoolCounters {
    pub started: u64,
    pub stopped: u64,
    pub drained: u64,
    /// Admissions that found no warm capacity.
    pub cold_admissions: u64,
    /// Shards that died without a drain.
    pub lost: u64,
}

/// The pool of one group.
pub struct Pool {
    group: GroupId,
    cfg: PoolConfig,
    slots: Vec<Slot>,
    next_id: u32,
    desired: u32,
    last_scale_in: Option<Instant>,
    actions: VecDeque<PoolAction>,
    counters: PoolCounters,
}

/// Where an admission landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// A shard with room, warm now.
    Warm(ShardId),
    /// No warm room: this shard (already starting, or started for it) takes the client when
    /// ready.
    Cold { shard: ShardId, ready_at: Instant },
    /// The pool is at `max_shards` and full.
    Full,
}

impl Pool {
    /// A pool whose shard ids start at `first_id`; starts `min_shards` shards.
    pub fn new(group: GroupId, cfg: PoolConfig, first_id: u32, now: Instant) -> Self {
        let mut p = Pool {
            group,
            cfg,
            slots: Vec::new(),
            next_id: first_id,
            desired: cfg.min_shards,
            last_scale_in: None,
            actions: VecDeque::new(),
            counters: PoolCounters::default(),
        };
        for _ in 0..cfg.min_shards {
            p.start(now);
        }
        p
    }

    pub fn group(&self) -> GroupId {
        self.group
    }

    fn start(&mut self, now: Instant) -> ShardId {
        let id = ShardId(self.next_id);
        self.next_id += 1;
        self.slots.push(Slot {
            id,
            life: Life::Starting,
            started: now,
            ready_at: now + self.cfg.startup,
            last_busy: now,
            drain_until: None,
            load: LoadReport::default(),
            admitted_since_report: 0,
        });
        self.counters.started += 1;
        self.actions.push_back(PoolAction::Start { shard: id });
        id
    }

    fn slot(&mut self, id: ShardId) -> Result<&mut Slot, PoolError> {
        self.slots
            .iter_mut()
            .find(|s| s.id == id)
            .ok_or(PoolError::UnknownShard(id))
    }

    fn transition(&mut self, id: ShardId, to: Life, now: Instant) -> Result<(), PoolError> {
        let grace = self.cfg.drain_grace;
        let s = self.slot(id)?;
        let ok = matches!(
            (s.life, to),
            (Life::Starting, Life::Warm)
                | (Life::Warm, Life::Active)
                | (Life::Active, Life::Warm)
                | (Life::Starting | Life::Warm | Life::Active, Life::Draining)
                | (Life::Starting | Life::Warm | Life::Draining, Life::Stopped)
        );
        if !ok {
            return Err(PoolError::IllegalTransition {
                shard: id,
                from: s.life,
                to,
            });
        }
        s.life = to;
        match to {
            Life::Draining => {
                s.drain_until = Some(now + grace);
                self.counters.drained += 1;
                self.actions.push_back(PoolAction::Drain { shard: id });
            }
            Life::Stopped => {
                self.counters.stopped += 1;
                self.actions.push_back(PoolAction::Stop { shard: id });
            }
            _ => {}
        }
        Ok(())
    }

    /// The driver has the shard's endpoint up.
    pub fn handle_started(&mut self, id: ShardId, now: Instant) -> Result<(), PoolError> {
        self.transition(id, Life::Warm, now)?;
        let s = self.slot(id)?;
        s.ready_at = s.ready_at.min(now);
        s.last_busy = now;
        Ok(())
    }

    /// The driver could not start `id` (no port, say): it leaves the pool, and the next
    /// [`Pool::handle_timeout`] starts another if the pool is short.
    pub fn handle_start_failed(&mut self, id: ShardId, now: Instant) -> Result<(), PoolError> {
        self.transition(id, Life::Stopped, now)?;
        // No stop action for the driver: nothing runs.
        self.actions
            .retain(|a| *a != PoolAction::Stop { shard: id });
        self.slots.retain(|s| s.id != id);
        Ok(())
    }

    /// A warm or active shard died (it left the directory without a drain): it leaves the
    /// pool at once, and the next [`Pool::handle_timeout`] starts another if the pool is short.
    pub fn handle_lost(&mut self, id: ShardId) -> Result<(), PoolError> {
        let s = self.slot(id)?;
        if !matches!(s.life, Life::Warm | Life::Active) {
            return Err(PoolError::IllegalTransition {
                shard: id,
                from: s.life,
                to: Life::Stopped,
            });
        }
        self.slots.retain(|s| s.id != id);
        self.counters.lost += 1;
        Ok(())
    }

    /// A shard's load report.
    pub fn handle_load(
        &mut self,
        id: ShardId,
        load: LoadReport,
        now: Instant,
    ) -> Result<(), PoolError> {
        let s = self.slot(id)?;
        s.load = load;
        s.admitted_since_report = 0;
        let life = s.life;
        if load.sessions > 0 {
            s.last_busy = now;
        }
        match (life, load.sessions > 0) {
            (Life::Warm, true) => self.transition(id, Life::Active, now),
            (Life::Active, false) => self.transition(id, Life::Warm, now),
            _ => Ok(()),
        }
    }

    fn sessions(&self, s: &Slot) -> u64 {
        s.load.sessions + s.admitted_since_report
    }

    fn over_quota(&self, s: &Slot) -> bool {
        let q = self.cfg.quota;
        self.sessions(s) >= q.sessions
            || s.load.send_bps >= q.send_bps
            || s.load.buffer_bytes >= q.buffer_bytes
    }

    /// Over a quota that sessions do not show (rule 4).
    fn over_resource_quota(&self, s: &Slot) -> bool {
        let q = self.cfg.quota;
        s.load.send_bps >= q.send_bps || s.load.buffer_bytes >= q.buffer_bytes
    }

    fn running(&self) -> u32 {
        self.slots
            .iter()
            .filter(|s| matches!(s.life, Life::Starting | Life::Warm | Life::Active))
            .count() as u32
    }

    /// Places one arriving client: the warm shard with the most room, else a starting shard
    /// (cold), else a new shard (cold) if the pool may grow.
    pub fn admit(&mut self, now: Instant) -> Admission {
        let warm = self
            .slots
            .iter()
            .filter(|s| matches!(s.life, Life::Warm | Life::Active) && !self.over_quota(s))
            .min_by_key(|s| self.sessions(s))
            .map(|s| s.id);
        if let Some(id) = warm {
            self.note_admitted(id, now);
            return Admission::Warm(id);
        }
        self.counters.cold_admissions += 1;
        let cap = self.cfg.quota.sessions;
        let starting = self
            .slots
            .iter()
            .filter(|s| s.life == Life::Starting && self.sessions(s) < cap)
            .min_by_key(|s| s.ready_at)
            .map(|s| (s.id, s.ready_at));
        let (id, ready_at) = match starting {
            Some(x) => x,
            None if self.running() < self.cfg.max_shards => {
                let id = self.start(now);
                (id, now + self.cfg.startup)
            }
            None => return Admission::Full,
        };
        self.note_admitted(id, now);
        Admission::Cold {
            shard: id,
            ready_at,
        }
    }

    fn note_admitted(&mut self, id: ShardId, now: Instant) {
        if let Ok(s) = self.slot(id) {
            s.admitted_since_report += 1;
            s.last_busy = now;
        }
    }

    /// The size the policy wants (clamped to `min_shards..=max_shards`); scale-out happens at
    /// the next [`Pool::handle_timeout`].
    pub fn set_desired(&mut self, shards: u32) {
        self.desired = shards.clamp(self.cfg.min_shards, self.cfg.max_shards);
    }

    pub fn desired(&self) -> u32 {
        self.desired
    }

    /// New bounds (a reload): the desired size is clamped into them; shards above the new
    /// maximum are retired by the following steps like any scale-in, shards below the new
    /// minimum started at the next [`Pool::handle_timeout`].
    pub fn set_bounds(&mut self, min_shards: u32, max_shards: u32) {
        self.cfg.min_shards = min_shards.min(max_shards);
        self.cfg.max_shards = max_shards;
        self.desired = self.desired.clamp(self.cfg.min_shards, self.cfg.max_shards);
    }

    /// Sessions one shard may hold (its quota).
    pub fn shard_sessions(&self) -> u64 {
        self.cfg.quota.sessions
    }

    /// A pool that starts with shards that already run (`existing`, taken as warm); new shard
    /// ids start at `first_new_id`. Starts more only to reach `min_shards`.
    pub fn adopting(
        group: GroupId,
        cfg: PoolConfig,
        existing: &[ShardId],
        first_new_id: u32,
        now: Instant,
    ) -> Self {
        let mut p = Pool {
            group,
            cfg,
            slots: Vec::new(),
            next_id: first_new_id,
            desired: cfg.min_shards.max(existing.len() as u32),
            last_scale_in: None,
            actions: VecDeque::new(),
            counters: PoolCounters::default(),
        };
        for &id in existing {
            p.slots.push(Slot {
                id,
                life: Life::Warm,
                started: now,
                ready_at: now,
                last_busy: now,
                drain_until: None,
                load: LoadReport::default(),
                admitted_since_report: 0,
            });
        }
        for _ in existing.len() as u32..cfg.min_shards {
            p.start(now);
        }
        p
    }

    /// Shards needed for `sessions` at `target_utilization` of the session quota.
    pub fn shards_for(&self, sessions: f64, target_utilization: f64) -> u32 {
        let per = self.cfg.quota.sessions as f64 * target_utilization.clamp(0.05, 1.0);
        if !(sessions.is_finite() && sessions > 0.0) {
            return self.cfg.min_shards;
        }
        ((sessions / per).ceil() as u32).clamp(self.cfg.min_shards, self.cfg.max_shards)
    }

    /// An operator (or the manager) drains a shard: its clients move within the group.
    pub fn drain(&mut self, id: ShardId, now: Instant) -> Result<(), PoolError> {
        self.transition(id, Life::Draining, now)
    }

    /// Total sessions over the pool.
    pub fn total_sessions(&self) -> u64 {
        self.slots
            .iter()
            .filter(|s| s.life != Life::Stopped)
            .map(|s| self.sessions(s))
            .sum()
    }

    /// Applies the lifecycle rules (module doc).
    pub fn handle_timeout(&mut self, now: Instant) {
        // Draining shards stop when empty or after the grace period.
        let done: Vec<ShardId> = self
            .slots
            .iter()
            .filter(|s| {
                s.life == Life::Draining
                    && (self.sessions(s) == 0 || s.drain_until.is_some_and(|u| now >= u))
            })
            .map(|s| s.id)
            .collect();
        for id in done {
            let _ = self.transition(id, Life::Stopped, now);
        }
        // Shards over a resource quota do not count: the pool adds capacity for them (rule 4).
        let usable = self
            .slots
            .iter()
            .filter(|s| {
                matches!(s.life, Life::Starting | Life::Warm | Life::Active)
                    && !self.over_resource_quota(s)
            })
            .count() as u32;
        let want = self.desired.max(self.cfg.min_shards);
        let mut running = self.running();
        let mut usable = usable;
        while usable < want && running < self.cfg.max_shards {
            self.start(now);
            running += 1;
            usable += 1;
        }
        // Scale in: one idle, old-enough shard per step while more shards are usable than
        // wanted (those over a resource quota do not count, or one would churn an idle one).
        if usable > want
            && self
                .last_scale_in
                .is_none_or(|t| now >= t + self.cfg.scale_in_step)
        {
            let victim = self
                .slots
                .iter()
                .filter(|s| {
                    s.life == Life::Warm
                        && self.sessions(s) == 0
                        && now >= s.started + self.cfg.min_lifespan
                        && now >= s.last_busy + self.cfg.idle_stop_after
                })
                .min_by_key(|s| s.last_busy)
                .map(|s| s.id);
            if let Some(id) = victim {
                let _ = self.transition(id, Life::Stopped, now);
                self.last_scale_in = Some(now);
            }
        }
        self.slots.retain(|s| s.life != Life::Stopped);
    }

    pub fn poll_action(&mut self) -> Option<PoolAction> {
        self.actions.pop_front()
    }

    /// Shards not stopped (starting ones included): what the pool costs.
    pub fn live_shards(&self) -> u32 {
        self.slots
            .iter()
            .filter(|s| s.life != Life::Stopped)
            .count() as u32
    }

    /// Shards taking clients now.
    pub fn warm_shards(&self) -> u32 {
        self.slots
            .iter()
            .filter(|s| matches!(s.life, Life::Warm | Life::Active))
            .count() as u32
    }

    pub fn counters(&self) -> PoolCounters {
        self.counters
    }

    pub fn snapshot(&self, now: Instant) -> Vec<SlotSnapshot> {
        self.slots
            .iter()
            .map(|s| SlotSnapshot {
                id: s.id,
                life: s.life,
                age_s: now.saturating_duration_since(s.started).as_secs_f64(),
                sessions: self.sessions(s),
                over_quota: self.over_quota(s),
            })
            .collect()
    }

    /// Records sessions that ended on `id` (the simulation's stand-in for a load report).
    pub fn handle_departure(&mut self, id: ShardId, now: Instant) {
        if let Ok(s) = self.slot(id) {
            if s.admitted_since_report > 0 {
                s.admitted_since_report -= 1;
            } else {
                s.load.sessions = s.load.sessions.saturating_sub(1);
            }
            s.last_busy = now;
        }
    }

    /// The state of `id`, if it is in the pool.
    pub fn life(&self, id: ShardId) -> Option<Life> {
        self.slots.iter().find(|s| s.id == id).map(|s| s.life)
    }
}
