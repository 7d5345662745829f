//! `shoal demo`: the embedded cluster with subscribing clients and a shard killed halfway, or
//! (`--traffic`) the shard pool growing under a traffic shape.

use std::time::Duration;

use anyhow::Result;
use clap::Args;

use shoal::tools::demo::{self, DemoOptions};

#[derive(Args)]
pub struct DemoArgs {
    #[arg(long, default_value_t = 50, value_parser = crate::args::count(1, 1_000_000))]
    clients: usize,
    #[arg(long, default_value_t = 5.0, value_parser = crate::args::secs)]
    seconds: f64,
    /// Distinct synthetic streams.
    #[arg(long, default_value_t = 8, value_parser = crate::args::count(1, 100_000))]
    streams: usize,
    /// Do not kill a shard halfway.
    #[arg(long)]
    no_kill: bool,
    /// Run every shard as a `shoal shard` child process on loopback, linked to the hub over
    /// the control link (the one killed halfway gets SIGKILL).
    #[arg(long)]
    shard_processes: bool,
    /// Print one JSON object as the last line.
    #[arg(long)]
    json: bool,
    /// Instead: drive the shard pool with clients arriving along a traffic shape and show it
    /// growing (one line per second).
    #[arg(long, value_enum)]
    traffic: Option<TrafficArg>,
    /// Pool policy for --traffic.
    #[arg(long, value_enum, default_value = "predictive")]
    policy: PolicyArg,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum TrafficArg {
    Ramp,
    Flash,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum PolicyArg {
    Static,
    Reactive,
    Predictive,
}

pub async fn run(a: DemoArgs) -> Result<()> {
    if let Some(shape) = a.traffic {
        if !(a.seconds > 0.0 && a.seconds <= 3600.0) {
            refuse!("--seconds must be in (0, 3600]");
        }
        return run_traffic(&a, shape).await;
    }
    if a.clients == 0 || !(a.seconds > 0.0 && a.seconds <= 3600.0) {
        refuse!("--clients must be at least 1 and --seconds in (0, 3600]");
    }
    let opts = DemoOptions {
        clients: a.clients,
        duration: Duration::from_secs_f64(a.seconds),
        streams: a.streams,
        kill: !a.no_kill,
        shard_processes: a.shard_processes,
        ..DemoOptions::default()
    };
    let report = demo::run(opts, |line| crate::logs::say(&format!("demo: {line}"))).await?;
    println!("{}", report.table());
    if a.json {
        println!("{}", serde_json::to_string(&report)?);
    }
    Ok(())
}

async fn run_traffic(a: &DemoArgs, shape: TrafficArg) -> Result<()> {
    use shoal::pool::policy::Policy;
    use shoal::tools::traffic::{self, Shape, TrafficOptions};
    let o = TrafficOptions {
        shape: match shape {
            TrafficArg::Ramp => Shape::Ramp,
            TrafficArg::Flash => Shape::Flash,
        },
        duration: Duration::from_secs_f64(a.seconds.max(10.0)),
        policy: match a.policy {
            PolicyArg::Static => Policy::Static,
            PolicyArg::Reactive => Policy::Reactive,
            PolicyArg::Predictive => Policy::Predictive,
        },
        ..TrafficOptions::default()
    };
    let r = traffic::run(o, |line| crate::logs::say(&format!("demo: {line}"))).await?;
    println!(
        "clients {}, chunks {}, missing {}, duplicated {}, integrity failures {}, client errors {}",
        r.clients, r.chunks, r.missing, r.duplicates, r.integrity_failures, r.client_errors
    );
    println!(
        "peak sessions {} (90 % reached at {} s), peak pool {} shards (reached at {} s)",
        r.peak_sessions, r.load_peak_at_s, r.peak_shards, r.pool_peak_at_s
    );
    println!(
        "ended sessions reported to the hub's profiler {}, learned from by its request models {}",
        r.sessions_reported, r.sessions_learned
    );
    if a.json {
        println!("{}", serde_json::to_string(&r)?);
    }
    Ok(())
}
