//! The shard's end of the hub↔shard link: it registers, reports load, and carries out the
//! hub's commands. The shard itself knows nothing of its hub beyond this.
//!
//! Order: `register` first (waits for room), then concurrently: load reports after a change of
//! the session count (at most one per [`REPORT_GAP`]) and at least every [`REPORT_INTERVAL`]
//! (dropped and counted when the hub is behind — the next one supersedes), and the hub's
//! commands in arrival order. The
//! agent ends when the shard stops (its link closes: the hub sees the shard gone), after a
//! drain (`drained` is sent first), or when the hub's end closes (the shard keeps serving the
//! sessions it has; the embedded hub only goes away with its process).

use std::time::Duration;

use tokio::task::JoinHandle;
use tracing::{debug, info, Instrument};

use super::Shard;
use crate::link::channel::ShardEnd;
use crate::link::{HubCmd, Register, ShardMsg, LINK_VERSION};

/// A shard reports its load at least this often (and soon after its session count moves).
pub const REPORT_INTERVAL: Duration = Duration::from_millis(250);
/// Reports on a change come at most this often (changes in between are in the next one).
pub const REPORT_GAP: Duration = Duration::from_millis(5);

/// The registration a shard sends first.
pub fn registration(shard: &Shard) -> ShardMsg {
    ShardMsg::Register(Register {
        version: LINK_VERSION,
        shard: shard.id(),
        group: shard.group(),
        addr: shard.advertised(),
        capacity: shard.capacity(),
        mirror: shard.mirror_addr(),
    })
}

/// Runs the agent of `shard` over `end`. The registration is sent first unless the caller
/// already queued it (`registered`).
pub fn spawn(shard: Shard, end: ShardEnd, registered: bool) -> JoinHandle<()> {
    let span = tracing::info_span!("link", shard = shard.id().0);
    tokio::spawn(run(shard, end, registered).instrument(span))
}

async fn run(shard: Shard, mut end: ShardEnd, registered: bool) {
    let up = end.up.clone();
    if !registered && up.send(registration(&shard)).await.is_err() {
        return;
    }
    let mut tick = tokio::time::interval(REPORT_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut stopped = shard.stopped();
    if *stopped.borrow_and_update() {
        return;
    }
    let mut drain: Option<JoinHandle<()>> = None;
    // The last report, and whether a change waits for the next.
    let mut last = crate::clock::tokio_now();
    let mut changed = false;
    // Whether the last replicas report listed any stream.
    let mut held_replicas = false;
    loop {
        let due = last + REPORT_GAP;
        tokio::select! {
            biased;
            changed = stopped.changed(), if drain.is_none() => {
                if changed.is_err() || *stopped.borrow() {
                    debug!("shard stopped; closing its link");
                    return;
                }
            }
            _ = async { drain.as_mut().expect("guarded").await }, if drain.is_some() => {
                let _ = up.send(ShardMsg::Load(shard.load())).await;
                let _ = up.send(ShardMsg::Drained).await;
                info!("drained; link closed");
                return;
            }
            cmd = end.commands.recv() => match cmd {
                Some(cmd) => {
                    if let Some(d) = carry_out(&shard, &up, cmd).await {
                        drain.get_or_insert(d);
                    }
                }
                None => {
                    info!("the hub closed the link; serving the sessions held");
                    return;
                }
            },
            _ = shard.load_changed(), if !changed => changed = true,
            _ = tokio::time::sleep_until(due), if changed => {
                changed = false;
                last = crate::clock::tokio_now();
                up.report(ShardMsg::Load(shard.load()));
            }
            _ = tick.tick() => {
                changed = false;
                last = crate::clock::tokio_now();
                up.report(ShardMsg::Load(shard.load()));
                let streams = shard.replica_reports();
                // One empty report after the last live stream went, so the hub forgets them.
                if !streams.is_empty() || held_replicas {
                    held_replicas = !streams.is_empty();
                    up.report(ShardMsg::Replicas { streams });
                }
            }
        }
    }
}

/// Carries out one command; a drain returns its task (the agent reports `drained` after it).
async fn carry_out(
    shard: &Shard,
    up: &crate::link::channel::Uplink,
    cmd: HubCmd,
) -> Option<JoinHandle<()>> {
    match cmd {
        HubCmd::Prepare {
            batch,
            stream,
            entries,
        } => {
            shard.warm(&stream);
            for e in entries {
                shard.store().put_entry(e);
            }
            // An acknowledgement must arrive: the hub waits for it before its grant leaves.
            let _ = up.send(ShardMsg::Prepared { batch }).await;
        }
        HubCmd::StoreEntries { entries, forget } => {
            for e in entries {
                shard.store().put_entry(e);
            }
            for key in forget {
                shard.store().forget(&key);
            }
        }
        HubCmd::Drain { grace_ms } => {
            let s = shard.clone();
            let grace = Duration::from_millis(grace_ms);
            return Some(tokio::spawn(async move { s.drain(grace).await }));
        }
        HubCmd::Stop => shard.kill(),
        HubCmd::Peers(peers) => shard.set_peers(peers),
        HubCmd::Lb(params) => match shard.install_lb(&params) {
            Ok(()) => info!(
                config_id = params.config_id,
                server_id_len = params.server_id_len,
                nonce_len = params.nonce_len,
                encrypted = params.key.is_some(),
                "QUIC-LB connection IDs configured"
            ),
            Err(e) => tracing::warn!(error = %e, "QUIC-LB configuration refused"),
        },
        HubCmd::Keys(keys) => match shard.install_keys(&keys) {
            Ok(()) => debug!(?keys, "token keys installed"),
            Err(e) => tracing::warn!(error = %e, "token keys refused"),
        },
    }
    None
}
