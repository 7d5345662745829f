//! The `shoal` command: serve a cluster, subscribe, publish, run the demo, make certificates,
//! receive mirrored streams and steer mirrors through the admin API.

#[path = "shoal/mirror_cmd.rs"]
mod mirror_cmd;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use clap::{Args, Parser, Subcommand};

use shoal::admin::{Admin, AdminState};
use shoal::client::{Client, ClientOptions, Delivery};
use shoal::cluster::{Cluster, Material};
use shoal::config::Config;
use shoal::demo::{self, DemoOptions};
use shoal::ids::{ClientId, StreamName};
use shoal::synthetic::{stream_seed, verify};

#[derive(Parser)]
#[command(
    name = "shoal",
    version,
    about = "QUIC-native stream transport: hub, shards, clients"
)]
struct Cli {
    /// Log as JSON lines instead of text. Filter with RUST_LOG (default: info).
    #[arg(long, global = true)]
    log_json: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Serve a hub with embedded shards until Ctrl-C (then drain gracefully).
    Up(UpArgs),
    /// Run the embedded cluster with N subscribing clients, kill a shard halfway, report.
    Demo(DemoArgs),
    /// Subscribe to a stream and print what arrives.
    Subscribe(SubscribeArgs),
    /// Publish chunks to a live stream.
    Publish(PublishArgs),
    /// Generate a CA and a cluster certificate.
    Certs(CertsArgs),
    /// Receive mirrored streams (a mirror endpoint) and report what arrives.
    Receive(mirror_cmd::ReceiveArgs),
    /// Start, change, inspect and stop mirrors through the admin API of `shoal up`.
    Mirror(mirror_cmd::MirrorArgs),
    /// Measure shoal against raw quinn doing the same work in the same run (ratios).
    Bench(BenchArgs),
    /// Drive many simulated clients against a running hub and report latencies.
    Loadgen(LoadgenArgs),
    /// (internal) Serve one measured server for `shoal bench` until stdin closes.
    #[command(hide = true)]
    BenchServe { spec: String },
}

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
struct BenchArgs {
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

#[derive(Args)]
struct LoadgenArgs {
    #[command(flatten)]
    conn: ConnectArgs,
    /// Clients in all (each a cold client with its own socket).
    #[arg(long, default_value_t = 200)]
    clients: usize,
    /// New clients per second.
    #[arg(long, default_value_t = 50.0)]
    rate: f64,
    /// Seconds each client stays subscribed.
    #[arg(long, default_value_t = 2.0)]
    hold: f64,
    /// Stream mix: NAME[:WEIGHT],... (weight 1 when left out).
    #[arg(long, default_value = "synth/load-a:3,synth/load-b:1")]
    streams: String,
    /// Profile hint: the client's region.
    #[arg(long)]
    region: Option<String>,
    /// Profile hint: the client's device class.
    #[arg(long)]
    device_class: Option<String>,
    /// Profile hint: expected bitrate in kbit/s.
    #[arg(long)]
    bitrate_kbps: Option<u32>,
    /// Time limit of each grant and attach, in seconds.
    #[arg(long, default_value_t = 5.0)]
    timeout: f64,
    /// Print the summary as one JSON object as the last line.
    #[arg(long)]
    json: bool,
    /// Write an SVG chart of time-to-first-byte and attach latency distributions.
    #[arg(long)]
    plot: Option<PathBuf>,
}

#[derive(Args)]
struct UpArgs {
    /// TOML config file; every field has a default.
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Override hub.listen.
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Override shards.count.
    #[arg(long)]
    shards: Option<u32>,
    /// Override shards.groups.
    #[arg(long)]
    groups: Option<u32>,
    /// Override data_dir.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Override admin.listen (TCP address of the admin HTTP API, or `off`).
    #[arg(long, value_name = "ADDR|off")]
    admin: Option<String>,
    /// Print the effective configuration as TOML and exit.
    #[arg(long)]
    print_config: bool,
}

#[derive(Args)]
struct DemoArgs {
    #[arg(long, default_value_t = 50)]
    clients: usize,
    #[arg(long, default_value_t = 5.0)]
    seconds: f64,
    /// Distinct synthetic streams.
    #[arg(long, default_value_t = 8)]
    streams: usize,
    /// Do not kill a shard halfway.
    #[arg(long)]
    no_kill: bool,
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

#[derive(Args)]
struct ConnectArgs {
    /// Hub address.
    #[arg(long, default_value = "127.0.0.1:4433")]
    hub: SocketAddr,
    /// CA certificate to trust (PEM).
    #[arg(long, default_value = ".shoal/ca.pem")]
    ca: PathBuf,
    /// Cluster name (TLS server name).
    #[arg(long, default_value = shoal::DEFAULT_CLUSTER)]
    cluster: String,
    /// Client id the hub profiles.
    #[arg(long, default_value = "cli")]
    client_id: String,
}

#[derive(Args)]
struct SubscribeArgs {
    #[command(flatten)]
    conn: ConnectArgs,
    /// Stop after this many chunks (0: no limit).
    #[arg(long, default_value_t = 0)]
    count: u64,
    /// Stop after this many seconds (0: no limit).
    #[arg(long, default_value_t = 0.0)]
    seconds: f64,
    /// Only print a summary at the end.
    #[arg(long, short)]
    quiet: bool,
    stream: String,
}

#[derive(Args)]
struct PublishArgs {
    #[command(flatten)]
    conn: ConnectArgs,
    /// Chunks per second.
    #[arg(long, default_value_t = 10)]
    rate: u32,
    /// Number of chunks to send (0: until Ctrl-C).
    #[arg(long, default_value_t = 0)]
    count: u64,
    /// Payload bytes per chunk.
    #[arg(long, default_value_t = 256)]
    size: usize,
    stream: String,
}

#[derive(Args)]
struct CertsArgs {
    #[arg(long)]
    out: PathBuf,
    #[arg(long, default_value = shoal::DEFAULT_CLUSTER)]
    cluster: String,
}

fn init_logs(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        b.json().init();
    } else {
        b.init();
    }
}

/// Raises the soft open-file limit to the hard one: load runs hold a socket per client.
fn raise_fd_limit() {
    // SAFETY: getrlimit/setrlimit only read and write the struct passed by pointer.
    unsafe {
        let mut l = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut l) == 0 && l.rlim_cur < l.rlim_max {
            l.rlim_cur = l.rlim_max;
            let _ = libc::setrlimit(libc::RLIMIT_NOFILE, &l);
        }
    }
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    raise_fd_limit();
    init_logs(cli.log_json);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    rt.block_on(async {
        match cli.cmd {
            Cmd::Up(a) => up(a).await,
            Cmd::Demo(a) => run_demo(a).await,
            Cmd::Subscribe(a) => subscribe(a).await,
            Cmd::Publish(a) => publish(a).await,
            Cmd::Certs(a) => certs(a),
            Cmd::Receive(a) => mirror_cmd::receive(a).await,
            Cmd::Mirror(a) => mirror_cmd::mirror(a).await,
            Cmd::Bench(a) => bench(a).await,
            Cmd::Loadgen(a) => loadgen(a).await,
            Cmd::BenchServe { spec } => Ok(shoal::bench::serve_child(&spec).await?),
        }
    })
}

async fn up(a: UpArgs) -> Result<()> {
    let mut cfg = match &a.config {
        Some(p) => Config::load(p)?,
        None => Config::default(),
    };
    if let Some(l) = a.listen {
        cfg.hub.listen = l;
    }
    if let Some(n) = a.shards {
        cfg.shards.count = n;
    }
    if let Some(g) = a.groups {
        cfg.shards.groups = g;
    }
    if let Some(d) = a.data_dir {
        cfg.data_dir = d;
    }
    if let Some(admin) = &a.admin {
        cfg.admin.listen = shoal::config::parse_admin_listen(admin)
            .map_err(|e| anyhow::anyhow!("--admin: {e}"))?;
    }
    cfg.validate()?;
    if a.print_config {
        print!("{}", toml::to_string(&cfg).context("printing the config")?);
        return Ok(());
    }
    if cfg.profiles.path.is_none() {
        cfg.profiles.path = Some(cfg.data_dir.join("profiles.redb"));
    }
    if let Some(dir) = cfg.profiles.path.as_ref().and_then(|p| p.parent()) {
        if !dir.as_os_str().is_empty() {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("creating {} for the profile database", dir.display()))?;
        }
    }
    let (material, notes) = Material::load_or_create(&cfg)?;
    for n in notes {
        tracing::info!("{n}");
    }
    // The mirrors' client certificate is read before any socket is bound.
    let mirror_identity = match cfg.admin.listen {
        Some(_) => {
            let (cert, key) = (cfg.mirror_cert_path(), cfg.mirror_key_path());
            let chain = shoal::tls::read_certs(&cert)
                .with_context(|| format!("reading admin.mirror_cert {}", cert.display()))?;
            let key = shoal::tls::read_key(&key)
                .with_context(|| format!("reading admin.mirror_key {}", key.display()))?;
            Some((chain, key))
        }
        None => None,
    };
    let cluster = Cluster::start(&cfg, material)?;
    let admin = match (cfg.admin.listen, mirror_identity) {
        (Some(addr), Some((chain, key))) => {
            let state = AdminState::for_cluster(&cluster, chain, key);
            match Admin::start(addr, state) {
                Ok((admin, _)) => Some(admin),
                Err(e) => {
                    cluster.shutdown().await;
                    return Err(e).with_context(|| format!("binding the admin API on {addr}"));
                }
            }
        }
        _ => None,
    };
    tracing::info!(
        hub = %cluster.hub.addr(),
        ca = %cfg.ca_path().display(),
        admin = ?admin.as_ref().map(Admin::addr),
        "ready: try `shoal subscribe --hub {} synth/hello`",
        cluster.hub.addr()
    );
    let pool = cfg.pool.enabled.then(|| start_pool(&cfg, &cluster));
    wait_for_signal().await;
    if let Some(p) = pool {
        p.stop().await;
    }
    if let Some(admin) = admin {
        admin.stop(shoal::admin::STOP_GRACE).await;
    }
    cluster.shutdown().await;
    Ok(())
}

fn start_pool(cfg: &Config, cluster: &Cluster) -> shoal::pool::driver::PoolDriver {
    use shoal::pool::policy::ScalerConfig;
    use shoal::pool::{PoolConfig, Quota};
    let p = &cfg.pool;
    let pool = PoolConfig {
        // Embedded shards start in milliseconds; the lead is one step of the driver.
        startup: p.step,
        min_lifespan: p.min_lifespan,
        idle_stop_after: p.idle_stop_after,
        scale_in_step: p.step * 5,
        drain_grace: cfg.shutdown.grace,
        min_shards: p.min_shards,
        max_shards: p.max_shards,
        quota: Quota {
            sessions: u64::from(cfg.shards.max_sessions),
            ..Quota::default()
        },
    };
    let scaler = ScalerConfig {
        policy: p.policy,
        static_size: p.min_shards,
        target_utilization: p.target_utilization,
        sync_period: p.sync_period,
        scale_out_threshold: (p.target_utilization + 0.1).min(1.0),
        step: p.step,
        startup: p.step,
        plan_ahead: p.plan_ahead,
        initial_mean_session: Duration::from_secs(60),
    };
    shoal::pool::driver::PoolDriver::start(cluster, pool, scaler, cfg.shards.groups)
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}

async fn run_traffic(a: &DemoArgs, shape: TrafficArg) -> Result<()> {
    use shoal::pool::policy::Policy;
    use shoal::traffic::{self, Shape, TrafficOptions};
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
    let r = traffic::run(o, |line| eprintln!("demo: {line}")).await?;
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

async fn run_demo(a: DemoArgs) -> Result<()> {
    if let Some(shape) = a.traffic {
        if !(a.seconds > 0.0 && a.seconds <= 3600.0) {
            bail!("--seconds must be in (0, 3600]");
        }
        return run_traffic(&a, shape).await;
    }
    if a.clients == 0 || !(a.seconds > 0.0 && a.seconds <= 3600.0) {
        bail!("--clients must be at least 1 and --seconds in (0, 3600]");
    }
    let opts = DemoOptions {
        clients: a.clients,
        duration: Duration::from_secs_f64(a.seconds),
        streams: a.streams,
        kill: !a.no_kill,
        ..DemoOptions::default()
    };
    let report = demo::run(opts, |line| eprintln!("demo: {line}")).await?;
    println!("{}", report.table());
    if a.json {
        println!("{}", serde_json::to_string(&report)?);
    }
    Ok(())
}

fn client(c: &ConnectArgs) -> Result<Client> {
    let ca = shoal::tls::read_certs(&c.ca)
        .context("reading the CA (start `shoal up` first, or pass --ca)")?;
    let id = ClientId::new(c.client_id.clone())?;
    Ok(Client::new(
        c.hub,
        ClientOptions::new(c.cluster.clone(), ca, id),
    )?)
}

async fn subscribe(a: SubscribeArgs) -> Result<()> {
    let stream = StreamName::new(a.stream.clone())?;
    let client = client(&a.conn)?;
    let seed = stream.is_synthetic().then(|| stream_seed(&stream));
    let mut sub = client
        .subscribe(&stream)
        .await
        .with_context(|| format!("subscribing to {stream} at {}", a.conn.hub))?;
    let started = Instant::now();
    let limit = (a.seconds > 0.0).then(|| Duration::from_secs_f64(a.seconds));
    let (mut chunks, mut bad) = (0u64, 0u64);
    loop {
        let left = limit.map(|l| l.saturating_sub(started.elapsed()));
        let next = async {
            tokio::select! {
                n = sub.next() => Some(n),
                _ = tokio::signal::ctrl_c() => None,
            }
        };
        let item = match left {
            Some(l) => tokio::time::timeout(l, next).await.ok().flatten(),
            None => next.await,
        };
        match item {
            None | Some(None) => break,
            Some(Some(Ok(Delivery::Chunk(c)))) => {
                chunks += 1;
                let ok = seed.is_none_or(|s| verify(s, c.seq, &c.payload));
                bad += u64::from(!ok);
                if !a.quiet {
                    println!(
                        "seq={} ts_us={} bytes={}{}",
                        c.seq,
                        c.timestamp_us,
                        c.payload.len(),
                        if ok { "" } else { " INTEGRITY-FAILURE" }
                    );
                }
                if a.count > 0 && chunks >= a.count {
                    break;
                }
            }
            Some(Some(Ok(Delivery::Gap { from, to }))) => println!("gap {from}..{to}"),
            Some(Some(Err(e))) => bail!("subscription ended: {e}"),
        }
    }
    let s = sub.stats();
    eprintln!(
        "{chunks} chunks, {} missing, {} duplicated, {bad} integrity failures, 0-RTT {}/{}, ttfb {:.2} ms",
        s.missing,
        s.duplicates,
        s.zero_rtt_accepted,
        s.zero_rtt_attempted,
        s.ttfb_us as f64 / 1000.0
    );
    drop(sub);
    client.close().await;
    if bad > 0 {
        bail!("{bad} chunks failed the integrity check");
    }
    Ok(())
}

async fn publish(a: PublishArgs) -> Result<()> {
    let stream = StreamName::new(a.stream.clone())?;
    if stream.is_synthetic() {
        bail!("{stream} is synthetic (synth/…); publish to another name, e.g. live/demo");
    }
    if a.rate == 0 || a.size > shoal::wire::MAX_CHUNK_PAYLOAD {
        bail!("--rate must be at least 1 and --size at most 1 MiB");
    }
    let client = client(&a.conn)?;
    let mut publisher = client
        .publish(&stream)
        .await
        .with_context(|| format!("publishing to {stream} at {}", a.conn.hub))?;
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(a.rate)));
    let mut sent = 0u64;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = tokio::signal::ctrl_c() => break,
        }
        let payload =
            Bytes::from(format!("{stream} chunk {sent} ").repeat(a.size / 16 + 1)).slice(..a.size);
        let seq = publisher.send(payload).await?;
        sent += 1;
        tracing::debug!(seq, "published");
        if a.count > 0 && sent >= a.count {
            break;
        }
    }
    publisher.finish().await?;
    eprintln!("published {sent} chunks to {stream}");
    client.close().await;
    Ok(())
}

fn certs(a: CertsArgs) -> Result<()> {
    let c = shoal::certs::generate(&a.cluster)?;
    for p in shoal::certs::write(&a.out, &c)? {
        println!("wrote {}", p.display());
    }
    Ok(())
}

async fn bench(a: BenchArgs) -> Result<()> {
    use shoal::bench::{self, BenchOptions, Figure, Scenario};
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
    use shoal::bench::placement::{self, SimOptions, Trace};
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
    let f = shoal::bench::failover::run(
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

async fn loadgen(a: LoadgenArgs) -> Result<()> {
    use shoal::loadgen::{self, LoadgenOptions};
    if !((0.0..=3600.0).contains(&a.hold) && a.timeout > 0.0 && a.timeout <= 600.0) {
        bail!("--hold must be in [0, 3600] seconds and --timeout in (0, 600]");
    }
    let mix = loadgen::parse_mix(&a.streams).map_err(|e| anyhow::anyhow!("--streams: {e}"))?;
    let ca = shoal::tls::read_certs(&a.conn.ca)
        .context("reading the CA (start `shoal up` first, or pass --ca)")?;
    let opts = LoadgenOptions {
        hub: a.conn.hub,
        ca,
        cluster: a.conn.cluster.clone(),
        clients: a.clients,
        rate: a.rate,
        hold: Duration::from_secs_f64(a.hold),
        mix,
        hints: shoal::wire::Hints {
            region: a.region.clone(),
            device_class: a.device_class.clone(),
            bitrate_kbps: a.bitrate_kbps,
        },
        request_timeout: Duration::from_secs_f64(a.timeout),
    };
    let bar = indicatif::ProgressBar::new(a.clients as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{elapsed_precise} [{bar:30}] {pos}/{len} clients done {msg}",
        )
        .expect("the template is valid")
        .progress_chars("=> "),
    );
    let (report, samples) = loadgen::run(opts, |t| {
        bar.set_position(t.done + t.failed);
        bar.set_message(format!(
            "· {} active · {} failed · {} chunks",
            t.started - t.done - t.failed,
            t.failed,
            t.chunks
        ));
    })
    .await
    .with_context(|| format!("load against {}", a.conn.hub))?;
    bar.finish_and_clear();
    println!("{}", report.table());
    if let Some(p) = &a.plot {
        loadgen::plot(&samples, p).map_err(|e| anyhow::anyhow!(e))?;
        eprintln!("wrote {}", p.display());
    }
    if a.json {
        println!("{}", serde_json::to_string(&report)?);
    }
    if report.succeeded == 0 {
        bail!("every client failed");
    }
    Ok(())
}
