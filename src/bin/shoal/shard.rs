//! `shoal shard`: one shard as a process of its own, joined to a hub over the control link.
//!
//! Order: config (file, then flags) → certificates → bind the shard's socket → dial the hub and
//! register (retried with backoff; a shard that never reaches its hub gives up after
//! `--hub-wait`) → serve until a signal (then drain: go-away, the grace period, `drained`) or
//! until the hub tells it to drain or stop. A refusal that cannot change (another link
//! version, certificates from another CA) ends it at once with the hub's reason.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;

use shoal::cluster::config::Config;
use shoal::cluster::remote::{ShardOptions, ShardProcess};
use shoal::ids::{GroupId, ShardId};
use shoal::link::net::BridgeOptions;

use crate::wait_for_signal;

#[derive(Args)]
pub struct ShardArgs {
    /// The hub's control listener (`hub.control_listen`).
    #[arg(long)]
    hub: SocketAddr,
    /// UDP address clients reach this shard on (port 0: any free port).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Address registered with the hub for clients, when it is not `--listen` (NAT, a
    /// balancer, or `--listen 0.0.0.0:…`).
    #[arg(long)]
    advertise: Option<SocketAddr>,
    /// The shard group this shard serves.
    #[arg(long, default_value_t = 0)]
    group: u32,
    /// Shard id (unique in the cluster); a random one above the pool's ranges by default.
    #[arg(long, value_parser = crate::args::count32(0, u64::from(shoal::lb::HUB_SERVER_ID) - 1))]
    id: Option<u32>,
    /// TOML config (the hub's format: `cluster`, `tls`, `shards`, `streams`, `transport` apply).
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Seconds to keep trying to reach the hub before the first registration, then give up
    /// (once registered, the shard keeps trying for as long as it runs).
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    hub_wait: u64,
}

pub async fn run(a: ShardArgs) -> Result<()> {
    let config = match &a.config {
        Some(p) => Config::load(p)?,
        None => Config::default(),
    };
    let grace = config.shutdown.grace;
    let bridge = BridgeOptions {
        first_contact: Duration::from_secs(a.hub_wait),
        ..BridgeOptions::default()
    };
    let process = ShardProcess::start(ShardOptions {
        hub: a.hub,
        listen: a.listen,
        advertise: a.advertise,
        group: GroupId(a.group),
        id: a.id.map(ShardId),
        config,
        bridge,
    })
    .await
    .context("starting the shard")?;
    let shard = process.shard().clone();
    let counters = process.counters().clone();
    let drain = process.drain_handle();
    let wait = process.wait();
    tokio::pin!(wait);
    let outcome = tokio::select! {
        r = &mut wait => r.map_err(anyhow::Error::from),
        () = wait_for_signal("shard") => {
            tracing::info!(grace_ms = grace.as_millis() as u64, "signal: draining");
            drain.drain(grace).await;
            match tokio::time::timeout(grace + Duration::from_secs(3), &mut wait).await {
                Ok(r) => r.map_err(anyhow::Error::from),
                Err(_) => {
                    shard.kill();
                    Ok(())
                }
            }
        }
    };
    let c = &*counters;
    use std::sync::atomic::Ordering::Relaxed;
    tracing::info!(
        shard = shard.id().0,
        registrations = c.registrations.load(Relaxed),
        failed_attempts = c.failed_attempts.load(Relaxed),
        delivered_late = c.delivered_late.load(Relaxed),
        outbox_dropped = c.outbox_dropped.load(Relaxed),
        "shard stopped"
    );
    outcome
}
