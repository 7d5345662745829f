//! `shoal bench`: shoal against raw quinn doing the same work in the same run (ratios), mirror
//! failover, and the shard pool policies on traffic traces.

use std::time::Duration;

use anyhow::{Context, Result};
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
    /// A live stream's primary shard process killed with SIGKILL under a publisher and its
    /// subscribers (shard processes on loopback; `--subscribers` default 50 here).
    LiveFailover,
    /// Clients through a stateless nftables balancer (QUIC-LB server ids) against direct, in
    /// network namespaces (needs root): misrouted packets, 0-RTT, TTFB ratio, migrations.
    Lb,
    /// Shard pool policies (static, reactive, buffer, predictive) on a traffic trace, virtual
    /// time.
    Placement,
    /// An attacker process (handshake flood, idle connections, stalled streams, garbage
    /// datagrams) against a hub with shard processes, while legitimate clients run.
    Flood,
    /// Open-loop latency (Poisson arrivals) at 25, 50 and 80 % of shoal's capacity: p50, p99
    /// and p999 of shoal and raw quinn at the same offered rates.
    Latency,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum StandbyArg {
    Off,
    Warm,
    Hot,
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
    #[arg(long, default_value_t = 3, value_parser = crate::args::count(1, 1000))]
    rounds: usize,
    /// Smoke-test sizes: every path runs once, figures mean little.
    #[arg(long)]
    quick: bool,
    /// Round-trip time of the delay relay (ttfb), in milliseconds.
    #[arg(long, default_value_t = 20, value_parser = crate::args::count64(0, 10_000))]
    rtt_ms: u64,
    /// Subscribers (fanout).
    #[arg(long, default_value_t = 32, value_parser = crate::args::count(1, 1_000_000))]
    subscribers: usize,
    /// grant, attach, ttfb: the shards are `shoal shard` processes, their control link to the
    /// hub through a delay relay (`--link-delay-ms`); CPU counts the hub and its shards.
    #[arg(long)]
    remote_shards: bool,
    /// One-way delay of the hub↔shard link with --remote-shards, in milliseconds.
    #[arg(long, default_value_t = 5.0, value_parser = crate::args::millis)]
    link_delay_ms: f64,
    /// Idle attached clients (memory).
    #[arg(long, default_value_t = 2000, value_parser = crate::args::count(1, 1_000_000))]
    idle_clients: usize,
    /// Chunks per second of the mirrored stream (failover).
    #[arg(long, default_value_t = 500, value_parser = crate::args::count32(1, 100_000))]
    rate_hz: u32,
    /// Traffic trace (placement).
    #[arg(long, value_enum, default_value = "all")]
    trace: TraceArg,
    /// Seconds of traffic simulated per trace (placement).
    #[arg(long, default_value_t = 1800, value_parser = crate::args::count(1, 10_000_000))]
    steps: usize,
    /// Seed of the traces and session lengths (placement), of the arrival times (latency).
    #[arg(long, default_value_t = 7)]
    seed: u64,
    /// Use this shard start-up cost instead of measuring one (placement), e.g. for shards that
    /// are processes on other hosts or containers.
    #[arg(long, conflicts_with = "startup_sweep", value_parser = crate::args::millis)]
    startup_ms: Option<f64>,
    /// Run at the measured start-up, then at 1000 ms and 5000 ms (container-like), in one table
    /// (placement).
    #[arg(long)]
    startup_sweep: bool,
    /// live-failover: the subscribers' second session on the next shard of their grant: `off`
    /// (a failover attaches anew), `warm` (attached, idle) or `hot` (attached and subscribed).
    #[arg(long, value_enum, default_value = "hot")]
    standby: StandbyArg,
    /// Seconds per load level per side (latency; default 5, with --quick 1).
    #[arg(long, value_parser = crate::args::secs)]
    seconds: Option<f64>,
    /// The buffer policy's spare shards (placement). Default: the spare whose shard-seconds are
    /// closest to predictive's on the same run.
    #[arg(long, value_parser = crate::args::count32(0, 100_000))]
    buffer_shards: Option<u32>,
}

async fn bench_flood(a: &BenchArgs) -> Result<()> {
    let mut o = shoal::tools::bench::BenchOptions::new(
        std::env::current_exe().context("finding the shoal executable")?,
    );
    o.rounds = if a.quick { 1 } else { a.rounds };
    o.quick = a.quick;
    eprintln!(
        "bench: flood ({} rounds{})",
        o.rounds,
        if o.quick { ", quick" } else { "" }
    );
    let r = shoal::tools::bench::flood::run(&o, &mut |line: &str| eprintln!("{line}")).await?;
    println!(
        "flood  attack {:.0} handshakes/s  legit ttfb p99 ratio {:.2}  failures {}  RSS end/start hub {:.2} shards {:.2}  goal {}  {}",
        r.attack_handshakes_per_s,
        r.legit_ttfb_p99_ratio,
        r.legit_failures,
        r.hub_rss_mib.ratio,
        r.shard_rss_mib.ratio,
        r.goal,
        if r.goal_met { "met" } else { "NOT met" }
    );
    if a.json {
        println!("{}", serde_json::to_string(&r)?);
    }
    Ok(())
}

async fn bench_latency(a: &BenchArgs) -> Result<()> {
    use shoal::tools::bench::latency::{self, LatencyOptions};
    let mut o = shoal::tools::bench::BenchOptions::new(
        std::env::current_exe().context("finding the shoal executable")?,
    );
    o.rounds = a.rounds;
    o.quick = a.quick;
    let mut l = LatencyOptions::new(a.quick);
    l.seed = a.seed;
    if let Some(s) = a.seconds {
        if !(0.2..=600.0).contains(&s) {
            refuse!("--seconds must be in 0.2..=600");
        }
        l.window = Duration::from_secs_f64(s);
    }
    eprintln!(
        "bench: latency ({} rounds, {:.1} s per level per side, levels {:?} % of shoal's capacity{})",
        o.rounds,
        l.window.as_secs_f64(),
        latency::LEVELS,
        if o.quick { ", quick" } else { "" }
    );
    let r = latency::run(&o, &l, &mut |line: &str| eprintln!("bench: {line}"))
        .await
        .context("scenario latency")?;
    println!(
        "latency  capacity {:.0} ops/s (raw quinn {:.0}), {} rounds of {:.1} s per level and side",
        r.capacity_ops_per_s, r.quinn_capacity_ops_per_s, r.rounds, r.window_s
    );
    println!(
        "{:<6} {:>9}  {:>24}  {:>24}  {:>9}  {:>15}",
        "load",
        "offered/s",
        "shoal p50/p99/p999 ms",
        "quinn p50/p99/p999 ms",
        "p99 ratio",
        "failed/dropped"
    );
    let p = |s: &latency::SideLevel| format!("{:.2}/{:.2}/{:.2}", s.p50_ms, s.p99_ms, s.p999_ms);
    for v in &r.levels {
        println!(
            "{:<6} {:>9.0}  {:>24}  {:>24}  {:>9.3}  {:>15}",
            format!("{} %", v.load_percent),
            v.shoal.offered_ops_per_s,
            p(&v.shoal),
            p(&v.quinn),
            v.p99_ratio,
            format!(
                "{}/{} vs {}/{}",
                v.shoal.failures, v.shoal.drops, v.quinn.failures, v.quinn.drops
            )
        );
    }
    println!(
        "latency  goal {}  {}",
        r.goal,
        if r.goal_met { "met" } else { "NOT met" }
    );
    if a.json {
        println!("{}", serde_json::to_string(&r)?);
    }
    Ok(())
}

async fn bench_lb(a: &BenchArgs) -> Result<()> {
    use shoal::tools::bench::lb::{run, LbBenchOptions};
    let o = LbBenchOptions {
        rounds: if a.quick { 1 } else { a.rounds },
        clients: if a.quick { 4 } else { 30 },
        program: std::env::current_exe().context("finding the shoal executable")?,
    };
    eprintln!(
        "bench: lb ({} rounds, {} clients each way, network namespaces)",
        o.rounds, o.clients
    );
    let r = tokio::task::spawn_blocking(move || run(&o, &mut |line: &str| eprintln!("{line}")))
        .await
        .context("the lab thread")??;
    println!(
        "lb  misrouted {}  0-RTT {:.3}  ttfb_ratio {:.3} (with the hop {:.3})  migrations kept {}/{}  goal {}  {}",
        r.misrouted,
        r.zero_rtt_acceptance,
        r.ttfb_ratio,
        r.ttfb_ratio_extra_hop,
        r.migrations_kept,
        r.migrations_tried,
        r.goal,
        if r.goal_met { "met" } else { "NOT met" }
    );
    if a.json {
        println!("{}", serde_json::to_string(&r)?);
    }
    Ok(())
}

async fn bench_live_failover(a: &BenchArgs) -> Result<()> {
    use shoal::tools::bench::live_failover::{run, LiveFailoverOptions};
    let mut o = LiveFailoverOptions {
        rounds: a.rounds.max(5),
        rate_hz: a.rate_hz,
        seed: a.seed,
        standby: match a.standby {
            StandbyArg::Off => shoal::client::StandbyMode::Off,
            StandbyArg::Warm => shoal::client::StandbyMode::Warm,
            StandbyArg::Hot => shoal::client::StandbyMode::Hot,
        },
        ..LiveFailoverOptions::default()
    };
    if a.subscribers != 32 {
        o.subscribers = a.subscribers;
    }
    if a.quick {
        o.rounds = 1;
        o.subscribers = o.subscribers.min(5);
        o.duration = Duration::from_millis(1500);
    }
    if a.rate_hz == 0 || a.rate_hz > 100_000 {
        refuse!("--rate-hz must be in 1..=100000");
    }
    eprintln!(
        "bench: live-failover ({} rounds, {} subscribers, {} chunks/s, shard processes on loopback, standby sessions {:?})",
        o.rounds, o.subscribers, o.rate_hz, o.standby
    );
    let r = run(&o, &mut |line: &str| eprintln!("bench: {line}")).await?;
    println!(
        "live-failover  lost {}  duplicated {}  max_gap {:.0} ms  detection {:.0} ms  promotion {:.0} ms  lag p99 {:.1} ms  rtt {:.2} ms  goal {}  {}",
        r.lost,
        r.duplicated,
        r.max_gap_ms,
        r.detection_ms,
        r.promotion_ms,
        r.replication_lag_p99_ms,
        r.rtt_ms,
        r.goal,
        if r.goal_met { "met" } else { "NOT met" }
    );
    if a.json {
        println!("{}", serde_json::to_string(&r)?);
    }
    Ok(())
}

/// The given start-ups of `--startup-sweep`, after the measured one.
const SWEEP_STARTUPS_MS: [f64; 2] = [1000.0, 5000.0];

pub async fn run(a: BenchArgs) -> Result<()> {
    use shoal::tools::bench::{self, BenchOptions, Figure, Scenario};
    if a.rounds == 0 || a.rounds > 100 {
        refuse!("--rounds must be in 1..=100");
    }
    if a.rtt_ms == 0 || a.rtt_ms > 2000 {
        refuse!("--rtt-ms must be in 1..=2000");
    }
    if a.subscribers == 0
        || a.subscribers > 10_000
        || a.idle_clients == 0
        || a.idle_clients > 100_000
    {
        refuse!("--subscribers must be in 1..=10000 and --idle-clients in 1..=100000");
    }
    if a.scenario == BenchScenario::Failover {
        return bench_failover(&a).await;
    }
    if a.scenario == BenchScenario::Placement {
        return bench_placement(&a).await;
    }
    if a.scenario == BenchScenario::LiveFailover {
        return bench_live_failover(&a).await;
    }
    if a.scenario == BenchScenario::Lb {
        return bench_lb(&a).await;
    }
    if a.scenario == BenchScenario::Flood {
        return bench_flood(&a).await;
    }
    if a.scenario == BenchScenario::Latency {
        return bench_latency(&a).await;
    }
    let exe = std::env::current_exe().context("finding the shoal executable")?;
    let mut opts = BenchOptions::new(exe);
    opts.rounds = a.rounds;
    opts.quick = a.quick;
    opts.rtt = Duration::from_millis(a.rtt_ms);
    opts.subscribers = a.subscribers;
    opts.idle_clients = a.idle_clients;
    if a.remote_shards {
        if !(0.0..=1000.0).contains(&a.link_delay_ms) {
            refuse!("--link-delay-ms must be in 0..=1000");
        }
        if !matches!(
            a.scenario,
            BenchScenario::Grant | BenchScenario::Attach | BenchScenario::Ttfb
        ) {
            refuse!("--remote-shards applies to grant, attach and ttfb");
        }
        opts.remote_link_delay = Some(Duration::from_secs_f64(a.link_delay_ms / 1e3));
    }
    let list: Vec<Scenario> = match a.scenario {
        BenchScenario::Grant => vec![Scenario::Grant],
        BenchScenario::Attach => vec![Scenario::Attach],
        BenchScenario::Ttfb => vec![Scenario::Ttfb],
        BenchScenario::Fanout => vec![Scenario::Fanout],
        BenchScenario::Memory => vec![Scenario::Memory],
        BenchScenario::Tickets => vec![Scenario::Tickets],
        BenchScenario::All => Scenario::ALL.to_vec(),
        BenchScenario::Failover
        | BenchScenario::Placement
        | BenchScenario::LiveFailover
        | BenchScenario::Lb
        | BenchScenario::Flood
        | BenchScenario::Latency => unreachable!("handled above"),
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
    use shoal::tools::bench::placement::{self, PlacementFigure, SimOptions, StartupSource, Trace};
    if a.steps < 60 || a.steps > 1_000_000 {
        refuse!("--steps must be in 60..=1000000");
    }
    if a.buffer_shards.is_some_and(|n| n > 256) {
        refuse!("--buffer-shards must be in 0..=256");
    }
    let traces = match a.trace {
        TraceArg::Ramp => vec![Trace::Ramp],
        TraceArg::Diurnal => vec![Trace::Diurnal],
        TraceArg::Flash => vec![Trace::Flash],
        TraceArg::All => vec![Trace::Ramp, Trace::Diurnal, Trace::Flash],
    };
    let given = |ms: f64| Duration::from_secs_f64(ms / 1e3);
    let mut startups = Vec::new();
    match a.startup_ms {
        Some(ms) if ms.is_finite() && (0.0..=600_000.0).contains(&ms) => {
            eprintln!("bench: placement: shard start-up given: {ms} ms (not measured)");
            startups.push((given(ms), StartupSource::Given));
        }
        Some(_) => refuse!("--startup-ms must be in 0..=600000"),
        None => {
            let exe = std::env::current_exe().context("finding the shoal executable")?;
            let rounds = if a.quick { 1 } else { 3 };
            eprintln!(
                "bench: placement: measuring a shard's start-up (a shard process, {rounds}x)"
            );
            let measured = placement::measure_startup(&exe, rounds)
                .await
                .context("measuring the shard start-up")?;
            startups.push((measured, StartupSource::Measured));
            if a.startup_sweep {
                startups.extend(SWEEP_STARTUPS_MS.map(|ms| (given(ms), StartupSource::Given)));
            }
        }
    }
    eprintln!("bench: placement: measuring the warm time to first byte (real cluster)");
    let warm = placement::measure_warm_ttfb(if a.quick { 2 } else { 9 })
        .await
        .context("measuring the warm TTFB")?;
    eprintln!(
        "bench: placement: start-ups {:?} ms, warm TTFB {:.2} ms",
        startups
            .iter()
            .map(|(d, _)| (d.as_secs_f64() * 1e4).round() / 10.0)
            .collect::<Vec<_>>(),
        warm.as_secs_f64() * 1e3
    );
    let mut figures: Vec<PlacementFigure> = Vec::new();
    for &t in &traces {
        for &(startup, source) in &startups {
            let mut o = SimOptions::new(t, startup, warm);
            o.startup_source = source;
            o.buffer_shards = a.buffer_shards;
            o.seed = a.seed;
            o.steps = if a.quick { a.steps.min(600) } else { a.steps };
            o.warmup_steps = o.warmup_steps.min(o.steps / 4);
            eprintln!(
                "bench: placement: trace {} at {:.1} ms start-up ({} s simulated)",
                t.name(),
                startup.as_secs_f64() * 1e3,
                o.steps
            );
            figures.push(placement::run(&o));
        }
    }
    println!(
        "{:<8} {:>9} {:<10} {:>6} {:>8} {:>10} {:>10} {:>11} {:>13} {:>5}",
        "trace",
        "start ms",
        "policy",
        "cold",
        "admits",
        "p999 wait",
        "p99 wait",
        "p99 ttfb",
        "shard-seconds",
        "peak"
    );
    let r = |x: Option<f64>| x.map_or_else(|| "-".to_owned(), |v| format!("{v:.2}x"));
    for f in &figures {
        let spare = format!("buffer+{}", f.buffer_shards);
        for p in [&f.static_, &f.reactive, &f.buffer, &f.predictive] {
            let name = if p.policy == shoal::pool::policy::Policy::Buffer {
                spare.as_str()
            } else {
                p.policy.name()
            };
            println!(
                "{:<8} {:>9.1} {:<10} {:>6} {:>8} {:>10.1} {:>10.1} {:>11.2} {:>13.0} {:>5}",
                f.trace.name(),
                f.startup_ms,
                name,
                p.cold_admissions,
                p.admissions,
                p.p999_admission_wait_ms,
                p.p99_admission_wait_ms,
                p.p99_ttfb_ms,
                p.shard_seconds,
                p.peak_shards
            );
        }
        let v = &f.verdict;
        println!(
            "{:<8} {:>9.1} predictive/reactive: cold {}, shard-seconds {}; /buffer: cold {}, shard-seconds {}; MAE at {} s {:.3} vs last value {:.3} ({:.2}x); goal {}",
            f.trace.name(),
            f.startup_ms,
            r(f.cold_ratio_vs_reactive),
            r(f.shard_seconds_ratio_vs_reactive),
            r(f.cold_ratio_vs_buffer),
            r(f.shard_seconds_ratio_vs_buffer),
            f.plan_steps,
            f.mae,
            f.last_value_mae,
            f.mae_vs_last_value,
            match (v.applies, v.met) {
                (true, true) => "met",
                (true, false) => "MISSED",
                (false, true) => "met (no goal on this trace)",
                (false, false) => "missed (no goal on this trace)",
            }
        );
    }
    println!(
        "buffer: Agones-style spare shards above the packed need, sized {}",
        if a.buffer_shards.is_some() {
            "by --buffer-shards"
        } else {
            "per run: the spare whose shard-seconds are closest to predictive's (frontier in the JSON)"
        }
    );
    if a.json {
        for f in &figures {
            println!("{}", serde_json::to_string(f)?);
        }
    }
    Ok(())
}

async fn bench_failover(a: &BenchArgs) -> Result<()> {
    if a.rate_hz == 0 || a.rate_hz > 100_000 {
        refuse!("--rate-hz must be in 1..=100000");
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
