//! The pool driver of a running cluster: once per step it reads each group's arrivals (grants)
//! and each shard's usage, turns them into load reports, lets the [`Scaler`] set the desired
//! size, runs the [`Pool`] rules, and carries out their actions on real embedded shards —
//! started with the cluster's [`ShardFactory`], added to the hub's [`ShardSet`], drained and
//! removed when the pool says so.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use tracing::{info, warn};

use super::policy::{Scaler, ScalerConfig};
use super::{Pool, PoolAction, PoolConfig};
use crate::cluster::{Cluster, ShardFactory};
use crate::ids::{GroupId, ShardId};
use crate::shard::{ShardSet, Usage};

/// What the driver shows of one group, every step.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct GroupStatus {
    pub group: GroupId,
    /// Shards the pool runs (starting ones included) and the size it wants.
    pub shards: u32,
    pub desired: u32,
    pub sessions: u64,
    /// Grants in the last step.
    pub arrivals: u64,
    /// Sessions the predictive policy expects one lead time ahead.
    pub forecast: f64,
    /// CPU of the group's shards over the last step (1.0 = one core).
    pub cpu: f64,
    pub send_bps: f64,
    /// Bytes the group's streams hold now.
    pub buffer_bytes: u64,
}

/// Shard ids each group's pool may use before the next group's range.
const ID_STRIDE: u32 = 100_000;

/// A running pool driver.
pub struct PoolDriver {
    task: tokio::task::JoinHandle<()>,
    status: Arc<Mutex<Vec<GroupStatus>>>,
    /// Drains of shards the pool retired, still running.
    drains: Drains,
}

type Drains = Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>>;

struct GroupState {
    pool: Pool,
    scaler: Scaler,
}

impl PoolDriver {
    /// Drives one pool per group over the cluster's shards, every `scaler.step`.
    pub fn start(cluster: &Cluster, pool: PoolConfig, scaler: ScalerConfig, groups: u32) -> Self {
        let now = Instant::now();
        let set = cluster.hub.shard_set().clone();
        let shards = set.snapshot();
        let mut states = Vec::new();
        for g in 0..groups {
            let group = GroupId(g);
            let existing: Vec<ShardId> = shards
                .iter()
                .filter(|s| s.group() == group)
                .map(|s| s.id())
                .collect();
            // Disjoint id ranges per group for the shards the pools add, above every id the
            // cluster started with.
            let base = shards
                .iter()
                .map(|s| s.id().0)
                .max()
                .unwrap_or(0)
                .saturating_add(1);
            let first_new = base.saturating_add(g.saturating_mul(ID_STRIDE));
            states.push(GroupState {
                pool: Pool::adopting(group, pool, &existing, first_new, now),
                scaler: Scaler::new(scaler),
            });
        }
        let status = Arc::new(Mutex::new(Vec::new()));
        let drains = Drains::default();
        let demand = cluster.hub.arrivals_handle();
        demand.attach_driver();
        let task = tokio::spawn(run(
            states,
            Ctx {
                set,
                factory: cluster.factory.clone(),
                grace: pool.drain_grace,
                drains: drains.clone(),
            },
            cluster_arrivals(cluster),
            demand,
            scaler.step,
            status.clone(),
        ));
        info!(groups, policy = ?scaler.policy, "shard pool driver started");
        PoolDriver {
            task,
            status,
            drains,
        }
    }

    /// Each group's status after the last step.
    pub fn status(&self) -> Vec<GroupStatus> {
        self.status
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Stops resizing and waits for the drains of shards the pool retired (each is bounded by
    /// the drain grace period).
    pub async fn stop(&self) {
        self.task.abort();
        let pending: Vec<_> =
            std::mem::take(&mut *self.drains.lock().unwrap_or_else(|p| p.into_inner()));
        for d in pending {
            let _ = d.await;
        }
    }
}

impl Drop for PoolDriver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

type Arrivals = Box<dyn Fn() -> HashMap<GroupId, u64> + Send>;

fn cluster_arrivals(cluster: &Cluster) -> Arrivals {
    let hub = cluster.hub.arrivals_handle();
    Box::new(move || hub.take())
}

/// One more shard per group, now: a request found no room anywhere.
fn on_demand(groups: &mut [GroupState], ctx: &Ctx) {
    let now = Instant::now();
    for g in groups {
        let group = g.pool.group();
        let more = g.pool.live_shards().saturating_add(1);
        if g.pool.desired() < more {
            g.pool.set_desired(more);
            g.pool.handle_timeout(now);
            while let Some(action) = g.pool.poll_action() {
                carry_out(action, group, &mut g.pool, ctx, now);
            }
            info!(
                group = group.0,
                shards = g.pool.live_shards(),
                "capacity started on demand"
            );
        }
    }
}

/// What carrying out an action needs.
struct Ctx {
    set: ShardSet,
    factory: ShardFactory,
    grace: Duration,
    drains: Drains,
}

async fn run(
    mut groups: Vec<GroupState>,
    ctx: Ctx,
    arrivals: Arrivals,
    demand: crate::hub::ArrivalsHandle,
    step: Duration,
    status: Arc<Mutex<Vec<GroupStatus>>>,
) {
    let set = ctx.set.clone();
    let mut tick = tokio::time::interval(step);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last: HashMap<ShardId, Usage> = HashMap::new();
    let mut last_at = Instant::now();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = demand.demanded() => {
                on_demand(&mut groups, &ctx);
                continue;
            }
        }
        let now = Instant::now();
        let span = now
            .saturating_duration_since(last_at)
            .as_secs_f64()
            .max(1e-3);
        last_at = now;
        let counts = arrivals();
        let shards = set.snapshot();
        let mut out = Vec::with_capacity(groups.len());
        for g in &mut groups {
            let group = g.pool.group();
            let (mut cpu, mut send_bps, mut buffer_bytes) = (0.0, 0.0, 0);
            for s in shards.iter().filter(|s| s.group() == group) {
                let u = s.usage();
                let prev = last.insert(s.id(), u).unwrap_or(u);
                let report = super::LoadReport {
                    sessions: u.sessions,
                    streams: u.streams,
                    send_bps: ((u.bytes_sent - prev.bytes_sent.min(u.bytes_sent)) as f64 / span)
                        as u64,
                    buffer_bytes: u.buffer_bytes,
                    cpu: u.cpu_ns.saturating_sub(prev.cpu_ns) as f64 / 1e9 / span,
                };
                cpu += report.cpu;
                send_bps += report.send_bps as f64;
                buffer_bytes += report.buffer_bytes;
                let _ = g.pool.handle_load(s.id(), report, now);
            }
            let arrived = counts.get(&group).copied().unwrap_or(0);
            let sessions = g.pool.total_sessions();
            g.scaler
                .step(&mut g.pool, arrived as f64, sessions as f64, now);
            g.pool.handle_timeout(now);
            while let Some(action) = g.pool.poll_action() {
                carry_out(action, group, &mut g.pool, &ctx, now);
            }
            out.push(GroupStatus {
                group,
                shards: g.pool.live_shards(),
                desired: g.pool.desired(),
                sessions,
                arrivals: arrived,
                forecast: g.scaler.forecast(),
                cpu,
                send_bps,
                buffer_bytes,
            });
        }
        last.retain(|id, _| shards.iter().any(|s| s.id() == *id));
        *status.lock().unwrap_or_else(|p| p.into_inner()) = out;
    }
}

fn carry_out(action: PoolAction, group: GroupId, pool: &mut Pool, ctx: &Ctx, now: Instant) {
    let (set, factory, grace, drains) = (&ctx.set, &ctx.factory, ctx.grace, &ctx.drains);
    match action {
        PoolAction::Start { shard } => match factory.start(shard, group, 0) {
            Ok(s) => {
                info!(shard = shard.0, group = group.0, addr = %s.addr(), "pool started a shard");
                set.add(s);
                let _ = pool.handle_started(shard, now);
            }
            Err(e) => {
                warn!(shard = shard.0, error = %e, "pool could not start a shard");
                let _ = pool.handle_start_failed(shard, now);
            }
        },
        PoolAction::Drain { shard } | PoolAction::Stop { shard } => {
            // Out of placement first, then a graceful drain: clients resume elsewhere.
            if let Some(s) = set.remove(shard) {
                info!(
                    shard = shard.0,
                    group = group.0,
                    ?action,
                    "pool retires a shard"
                );
                let mut d = drains.lock().unwrap_or_else(|p| p.into_inner());
                d.retain(|h| !h.is_finished());
                d.push(tokio::spawn(async move { s.drain(grace).await }));
            }
        }
    }
}
