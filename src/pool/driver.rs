//! The pool driver of a running cluster: once per step it reads each group's arrivals (grants)
//! and each shard's load from the hub's [`Directory`] (fed by the shards' own reports), lets
//! the [`Scaler`] set the desired size, runs the [`Pool`] rules, and carries out their actions
//! through a [`Launcher`] (start, reap) and the shards' links (drain). A started shard takes
//! clients once it registered in the directory; a drained one leaves the directory when it
//! reports `drained`, and is reaped then.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use tracing::{info, warn};

use super::launcher::Launcher;
use super::policy::{Scaler, ScalerConfig};
use super::{Pool, PoolAction, PoolConfig};
use crate::cluster::Cluster;
use crate::hub::directory::Directory;
use crate::hub::links::Links;
use crate::ids::{GroupId, ShardId};
use crate::link::ShardLoad;
use crate::sync::lock;

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

/// Shard ids each group's pool may use before the next group's range (groups are at most
/// 1 000, so the ranges stay disjoint within u32; a start whose id is taken fails).
const ID_STRIDE: u32 = 4_000_000;

/// A started shard that has not registered this long is given up (its launcher kills a
/// process that does not register within [`crate::cluster::processes::REGISTER_TIMEOUT`]).
const START_TIMEOUT: Duration = Duration::from_secs(35);

/// A running pool driver.
pub struct PoolDriver {
    task: tokio::task::JoinHandle<()>,
    /// The hub's demand signal (detached when the driver stops).
    demand: crate::hub::ArrivalsHandle,
    status: Arc<Mutex<Vec<GroupStatus>>>,
    /// Drains of shards the pool retired, still running.
    drains: Drains,
    /// Bounds a reload set, applied at the next step.
    bounds: Bounds,
}

type Bounds = Arc<Mutex<Option<(u32, u32)>>>;

type Drains = Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>>;

struct GroupState {
    pool: Pool,
    scaler: Scaler,
}

impl PoolDriver {
    /// Drives one pool per group over the cluster's shards, every `scaler.step`.
    pub fn start(cluster: &Cluster, pool: PoolConfig, scaler: ScalerConfig, groups: u32) -> Self {
        let now = crate::clock::now();
        let shards: Vec<(ShardId, GroupId)> = lock(cluster.directory())
            .records()
            .map(|r| (r.id, r.group))
            .collect();
        let mut states = Vec::new();
        for g in 0..groups {
            let group = GroupId(g);
            let existing: Vec<ShardId> = shards
                .iter()
                .filter(|s| s.1 == group)
                .map(|s| s.0)
                .collect();
            // Disjoint id ranges per group for the shards the pools add, above every id the
            // cluster started with.
            let base = shards
                .iter()
                .map(|s| s.0 .0)
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
        let bounds = Bounds::default();
        let demand = cluster.hub.arrivals_handle();
        demand.attach_driver();
        let detach = demand.clone();
        let task = tokio::spawn(run(
            states,
            Ctx {
                links: cluster.hub.links().clone(),
                launcher: cluster.pool_launcher(),
                grace: pool.drain_grace,
                drains: drains.clone(),
            },
            cluster_arrivals(cluster),
            demand,
            scaler.step,
            status.clone(),
            bounds.clone(),
        ));
        info!(
            groups,
            policy = scaler.policy.name(),
            "shard pool driver started"
        );
        PoolDriver {
            task,
            demand: detach,
            status,
            drains,
            bounds,
        }
    }

    /// Every group's pool keeps between `min_shards` and `max_shards` shards from the next
    /// step on (a reload).
    pub fn set_bounds(&self, min_shards: u32, max_shards: u32) {
        *lock(&self.bounds) = Some((min_shards, max_shards));
    }

    /// Each group's status after the last step.
    pub fn status(&self) -> Vec<GroupStatus> {
        lock(&self.status).clone()
    }

    /// Stops resizing and waits for the drains of shards the pool retired (each is bounded by
    /// the drain grace period). Requests that find no room are refused at once from now on.
    pub async fn stop(&self) {
        self.task.abort();
        self.demand.detach_driver();
        let pending: Vec<_> = std::mem::take(&mut *lock(&self.drains));
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

/// One more shard in each group that lacked room, now.
fn on_demand(groups: &mut [GroupState], lacking: &[GroupId], ctx: &Ctx) {
    let now = crate::clock::now();
    for g in groups {
        let group = g.pool.group();
        if !lacking.contains(&group) {
            continue;
        }
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
    links: Links,
    launcher: Arc<dyn Launcher>,
    grace: Duration,
    drains: Drains,
}

impl Ctx {
    fn directory(&self) -> &Arc<Mutex<Directory>> {
        self.links.directory()
    }
}

async fn run(
    mut groups: Vec<GroupState>,
    ctx: Ctx,
    arrivals: Arrivals,
    demand: crate::hub::ArrivalsHandle,
    step: Duration,
    status: Arc<Mutex<Vec<GroupStatus>>>,
    bounds: Bounds,
) {
    let mut tick = tokio::time::interval(step);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last: HashMap<ShardId, ShardLoad> = HashMap::new();
    let mut last_at = crate::clock::now();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            lacking = demand.demanded() => {
                on_demand(&mut groups, &lacking, &ctx);
                continue;
            }
        }
        if let Some((min, max)) = lock(&bounds).take() {
            for g in &mut groups {
                g.pool.set_bounds(min, max);
            }
        }
        let now = crate::clock::now();
        let span = now
            .saturating_duration_since(last_at)
            .as_secs_f64()
            .max(1e-3);
        last_at = now;
        let counts = arrivals();
        let shards: Vec<(ShardId, GroupId, ShardLoad)> = lock(ctx.directory())
            .records()
            .map(|r| (r.id, r.group, r.load.clone()))
            .collect();
        let mut out = Vec::with_capacity(groups.len());
        for g in &mut groups {
            let group = g.pool.group();
            // A starting shard is ready once it registered (readiness is registration), and
            // failed if it did not within the bound. A warm or active shard that left the
            // directory died (a drained one is draining in the pool): it leaves the pool,
            // which replaces it if it is short.
            for slot in g.pool.snapshot(now) {
                let gone = !shards.iter().any(|s| s.0 == slot.id);
                if slot.life == super::Life::Starting {
                    if !gone {
                        let _ = g.pool.handle_started(slot.id, now);
                    } else if slot.age_s > START_TIMEOUT.as_secs_f64() {
                        warn!(shard = slot.id.0, "a started shard never registered");
                        let _ = g.pool.handle_start_failed(slot.id, now);
                        ctx.launcher.reap(slot.id);
                    }
                    continue;
                }
                if gone && g.pool.handle_lost(slot.id).is_ok() {
                    warn!(shard = slot.id.0, group = group.0, "pool lost a shard");
                    ctx.launcher.reap(slot.id);
                }
            }
            let (mut cpu, mut send_bps, mut buffer_bytes) = (0.0, 0.0, 0);
            for (id, _, u) in shards.iter().filter(|s| s.1 == group) {
                let prev = last.insert(*id, u.clone()).unwrap_or_else(|| u.clone());
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
                let _ = g.pool.handle_load(*id, report, now);
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
        last.retain(|id, _| shards.iter().any(|s| s.0 == *id));
        *lock(&status) = out;
    }
}

fn carry_out(action: PoolAction, group: GroupId, pool: &mut Pool, ctx: &Ctx, now: Instant) {
    match action {
        PoolAction::Start { shard } => match ctx.launcher.launch(shard, group) {
            Ok(()) => {
                info!(shard = shard.0, group = group.0, "pool started a shard");
                // An embedded shard registered already; a process registers in a moment (the
                // next step sees it).
                if lock(ctx.directory()).record(shard).is_some() {
                    let _ = pool.handle_started(shard, now);
                }
            }
            Err(e) => {
                warn!(shard = shard.0, error = %e, "pool could not start a shard");
                let _ = pool.handle_start_failed(shard, now);
            }
        },
        PoolAction::Drain { shard } | PoolAction::Stop { shard } => {
            // Out of placement first, then a graceful drain: clients resume elsewhere.
            let Some(drained) = ctx.links.drain(shard, ctx.grace) else {
                // Not in the directory (it died): nothing to drain, only to reap.
                ctx.launcher.reap(shard);
                return;
            };
            info!(
                shard = shard.0,
                group = group.0,
                how = if matches!(action, PoolAction::Drain { .. }) {
                    "drain"
                } else {
                    "stop"
                },
                "pool retires a shard"
            );
            let launcher = ctx.launcher.clone();
            let mut d = lock(&ctx.drains);
            d.retain(|h| !h.is_finished());
            d.push(tokio::spawn(async move {
                drained.await;
                launcher.reap(shard);
            }));
        }
    }
}
