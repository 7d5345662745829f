//! `shoal bench`: shoal against raw quinn doing the same work in the same run (ratios), mirror
//! failover, and the shard pool policies on traffic traces.

use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Args;

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum BenchScenario {
    Grant,
    Attach,
    Ttfb,
    Fanout,
    Memory,
    Tickets,
    /// Every ratio scenario above, one after the other.
    All,
    /// Mirror failover: a sender, 3 receivers behind delay relays, the active one blackholed.
    Failover,
    /// Shard pool policies (static, reactive, predictive) on a traffic trace, virtual time.
    Placement,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum TraceArg {
    Ramp,
    Diurnal,
    Flash,
    /// The three traces, one after the other.
    All,
}

#[derive(Args)]
pub struct BenchArgs {
    scenario: BenchScenario,
    /// Print one JSON object per scenario (after the table).
    #[arg(long)]
    json: bool,
    /// Rounds per scenario (the figures are medians).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Smoke-test sizes: every path runs once, figures mean little.
    #[arg(long)]
    quick: bool,
    /// Round-trip time of the delay relay (ttfb), in milliseconds.
    #[arg(long, default_value_t = 20)]
    rtt_ms: u64,
    /// Subscribers (fanout).
    #[arg(long, default_value_t = 32)]
    subscribers: usize,
    /// Idle attached clients (memory).
    #[arg(long, default_value_t = 2000)]
    idle_clients: usize,
    /// Chunks per second of the mirrored stream (failover).
    #[arg(long, default_value_t = 500)]
    rate_hz: u32,
    /// Traffic trace (placement).
    #[arg(long, value_enum, default_value = "all")]
    trace: TraceArg,
    /// Seconds of traffic simulated per trace (placement).
    #[arg(long, default_value_t = 1800)]
    steps: usize,
    /// Use this shard start-up cost instead of measuring one (placement), e.g. for shards that
    /// are processes on other hosts.
    #[arg(long)]
    startup_ms: Option<f64>,
}

pub async fn run(a: BenchArgs) -> Result<()> {
    use shoal::tools::bench::{self, BenchOptions, Figure, Scenario};
    if a.rounds == 0 || a.rounds > 100 {
        bail!("--rounds must be in 1..=100");
    }
    if a.rtt_ms == 0 || a.rtt_ms > 2000 {
        bail!("--rtt-ms must be in 1..=2000");
    }
    if a.subscribers == 0
        || a.subscribers > 10_000
        || a.idle_clients == 0
        || a.idle_clients > 100_000
    {
        bail!("--subscribers must be in 1..=10000 and --idle-clients in 1..=100000");
    }
    if a.scenario == BenchScenario::Failover {
        return bench_failover(&a).await;
    }
    if a.scenario == BenchScenario::Placement {
        return bench_placement(&a).await;
    }
    let exe = std::env::current_exe().context("finding the shoal executable")?;
    let mut opts = BenchOptions::new(exe);
    opts.rounds = a.rounds;
    opts.quick = a.quick;
    opts.rtt = Duration::from_millis(a.rtt_ms);
    opts.subscribers = a.subscribers;
    opts.idle_clients = a.idle_clients;
    let list: Vec<Scenario> = match a.scenario {
        BenchScenario::Grant => vec![Scenario::Grant],
        BenchScenario::Attach => vec![Scenario::Attach],
        BenchScenario::Ttfb => vec![Scenario::Ttfb],
        BenchScenario::Fanout => vec![Scenario::Fanout],
        BenchScenario::Memory => vec![Scenario::Memory],
        BenchScenario::Tickets => vec![Scenario::Tickets],
        BenchScenario::All => Scenario::ALL.to_vec(),
        BenchScenario::Failover | BenchScenario::Placement => unreachable!("handled above"),
    };
    let mut figures = Vec::new();
    for s in list {
        eprintln!(
            "bench: {} ({} rounds{})",
            s.name(),
            opts.rounds,
            if opts.quick { ", quick" } else { "" }
        );
        let f = bench::run(s, &opts, &mut |line: &str| eprintln!("bench: {line}"))
            .await
            .with_context(|| format!("scenario {}", s.name()))?;
        figures.push(f);
    }
    println!("{}", Figure::header());
    for f in &figures {
        println!("{}", f.row());
    }
    if a.json {
        for f in &figures {
            println!("{}", serde_json::to_string(f)?);
        }
    }
    Ok(())
}

async fn bench_placement(a: &BenchArgs) -> Result<()> {
    use shoal::tools::bench::placement::{self, SimOptions, Trace};
    if a.steps < 60 || a.steps > 1_000_000 {
        bail!("--steps must be in 60..=1000000");
    }
    let traces = match a.trace {
        TraceArg::Ramp => vec![Trace::Ramp],
        TraceArg::Diurnal => vec![Trace::Diurnal],
        TraceArg::Flash => vec![Trace::Flash],
        TraceArg::All => vec![Trace::Ramp, Trace::Diurnal, Trace::Flash],
    };
    let exe = std::env::current_exe().context("finding the shoal executable")?;
    let rounds = if a.quick { 1 } else { 3 };
    let startup = match a.startup_ms {
        Some(ms) if ms.is_finite() && (0.0..=600_000.0).contains(&ms) => {
            eprintln!("bench: placement: shard start-up given: {ms} ms (not measured)");
            Duration::from_secs_f64(ms / 1e3)
        }
        Some(_) => bail!("--startup-ms must be in 0..=600000"),
        None => {
            eprintln!(
                "bench: placement: measuring a shard's start-up (a shard process, {rounds}x)"
            );
            placement::measure_startup(&exe, rounds)
                .await
                .context("measuring the shard start-up")?
        }
    };
    eprintln!("bench: placement: measuring the warm time to first byte (real cluster)");
    let warm = placement::measure_warm_ttfb(if a.quick { 2 } else { 9 })
        .await
        .context("measuring the warm TTFB")?;
    eprintln!(
        "bench: placement: start-up {:.1} ms, warm TTFB {:.2} ms",
        startup.as_secs_f64() * 1e3,
        warm.as_secs_f64() * 1e3
    );
    let mut figures = Vec::new();
    for t in traces {
        let mut o = SimOptions::new(t, startup, warm);
        o.steps = if a.quick { a.steps.min(600) } else { a.steps };
        eprintln!(
            "bench: placement: trace {} ({} s simulated)",
            t.name(),
            o.steps
        );
        figures.push(placement::run(&o));
    }
    println!(
        "{:<8} {:<10} {:>12} {:>12} {:>8} {:>13} {:>6}",
        "trace", "policy", "p99 ttfb ms", "p50 ttfb ms", "cold", "shard-seconds", "peak"
    );
    for f in &figures {
        for p in [&f.static_, &f.reactive, &f.predictive] {
            println!(
                "{:<8} {:<10} {:>12.2} {:>12.2} {:>8} {:>13.0} {:>6}",
                f.trace.name(),
                format!("{:?}", p.policy).to_lowercase(),
                p.p99_ttfb_ms,
                p.p50_ttfb_ms,
                p.cold_admissions,
                p.shard_seconds,
                p.peak_shards
            );
        }
        println!(
            "{:<8} predictive/reactive: p99 {:.2}x, shard-seconds {:.2}x; goal {}",
            f.trace.name(),
            f.p99_ratio,
            f.shard_seconds_ratio,
            if f.goal_met { "met" } else { "MISSED" }
        );
        println!(
            "{:<8} predictor MAE at {} s: {:.3} vs naive {:.3} ({:.2}x); at the {} s lead: {:.3} vs {:.3} ({:.2}x); noise floor {:.3}",
            f.trace.name(),
            f.plan_steps,
            f.mae,
            f.naive_mae,
            f.mae_ratio,
            f.lead_steps,
            f.lead_mae,
            f.lead_naive_mae,
            f.lead_mae / f.lead_naive_mae.max(1e-9),
            f.oracle_mae
        );
    }
    if a.json {
        for f in &figures {
            println!("{}", serde_json::to_string(f)?);
        }
    }
    Ok(())
}

async fn bench_failover(a: &BenchArgs) -> Result<()> {
    if a.rate_hz == 0 || a.rate_hz > 100_000 {
        bail!("--rate-hz must be in 1..=100000");
    }
    let rounds = if a.quick { 1 } else { a.rounds.max(1) };
    eprintln!(
        "bench: failover ({rounds} rounds, relay RTT {} ms, {} chunks/s)",
        a.rtt_ms, a.rate_hz
    );
    let f = shoal::tools::bench::failover::run(
        rounds,
        Duration::from_millis(a.rtt_ms),
        a.rate_hz,
        &mut |line: &str| eprintln!("bench: {line}"),
    )
    .await
    .context("scenario failover")?;
    println!(
        "failover: detection {:.1} ms (bound {:.1} ms), switch {:.1} ms (srtt {:.1} ms), lost {}, duplicated {}, replayed {:.0}, overlap {:.0}, goal {}",
        f.detection_ms,
        f.detection_bound_ms,
        f.switch_ms,
        f.srtt_ms,
        f.lost,
        f.duplicated,
        f.replayed,
        f.overlap,
        if f.goal_met { "met" } else { "MISSED" }
    );
    if a.json {
        println!("{}", serde_json::to_string(&f)?);
    }
    Ok(())
}
