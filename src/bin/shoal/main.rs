//! The `shoal` command: serve a cluster, subscribe, publish, run the demo, make certificates,
//! receive mirrored streams and steer mirrors through the admin API. One module per command;
//! this file parses the command line, sets up logging and the runtime, and holds what several
//! commands share (the hub connection arguments, the shutdown signal).

/// Like `bail!`, for input the user must fix (a flag, a value): exit 2 (see `exit_code`).
macro_rules! refuse {
    ($($t:tt)*) => {
        return Err(crate::args::InputError(format!($($t)*)).into())
    };
}

mod args;
mod bench;
mod certs;
mod completions;
mod config_cmd;
mod demo;
mod lb;
mod loadgen;
mod logs;
mod mirror;
mod notify;
mod publish;
mod shard;
mod signals;
mod subscribe;
mod up;

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Args, CommandFactory, Parser, Subcommand};

use shoal::client::{Client, ClientOptions};
use shoal::ids::ClientId;

/// `shoal --version`: the crate version and the git revision it was built from.
const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (git ",
    env!("SHOAL_GIT_REVISION"),
    ")"
);

#[derive(Parser)]
#[command(
    name = "shoal",
    version = VERSION,
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
    Up(up::UpArgs),
    /// Serve one shard as its own process, registered with a hub over the control link.
    Shard(shard::ShardArgs),
    /// Run the embedded cluster with N subscribing clients, kill a shard halfway, report.
    Demo(demo::DemoArgs),
    /// Subscribe to a stream and print what arrives.
    Subscribe(subscribe::SubscribeArgs),
    /// Publish chunks to a live stream.
    Publish(publish::PublishArgs),
    /// Generate a CA and a cluster certificate.
    Certs(certs::CertsArgs),
    /// Receive mirrored streams (a mirror endpoint) and report what arrives.
    Receive(mirror::ReceiveArgs),
    /// Start, change, inspect and stop mirrors through the admin API of `shoal up`.
    Mirror(mirror::MirrorArgs),
    /// Measure shoal against raw quinn doing the same work in the same run (ratios).
    Bench(bench::BenchArgs),
    /// Drive many simulated clients against a running hub and report latencies.
    Loadgen(loadgen::LoadgenArgs),
    /// Print balancer configurations (nftables by QUIC-LB server id, nginx by address).
    Lb(lb::LbArgs),
    /// Print or check the configuration (`config example`: every key, documented).
    Config(config_cmd::ConfigArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell) to stdout.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// (internal) Serve one measured server for `shoal bench` until stdin closes.
    #[command(hide = true)]
    BenchServe { spec: String },
    /// (internal) The attacker of `shoal bench flood`.
    #[command(hide = true)]
    BenchAttack { spec: String },
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

/// The exit status of a failed command: 2 where the input was wrong (a flag's value, the
/// configuration), 1 for everything else (a peer, the network, the machine).
fn exit_code(e: &anyhow::Error) -> u8 {
    let input = e.chain().any(|c| {
        c.is::<shoal::cluster::config::ConfigError>()
            || c.is::<args::InputError>()
            || c.is::<shoal::ids::InvalidName>()
    });
    if input {
        2
    } else {
        1
    }
}

/// `e` and its causes on one line, each said once: an error whose message already ends with
/// its cause (`cannot read config x: No such file`) does not repeat it.
fn render(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if out.ends_with(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    raise_fd_limit();
    if let Err(e) = logs::init(cli.log_json) {
        eprintln!("error: {e}");
        return std::process::ExitCode::from(2);
    }
    match run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            let code = exit_code(&e);
            logs::fatal(&render(&e), code);
            std::process::ExitCode::from(code)
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    rt.block_on(async {
        match cli.cmd {
            Cmd::Up(a) => up::run(a).await,
            Cmd::Shard(a) => shard::run(a).await,
            Cmd::Demo(a) => demo::run(a).await,
            Cmd::Subscribe(a) => subscribe::run(a).await,
            Cmd::Publish(a) => publish::run(a).await,
            Cmd::Certs(a) => certs::run(a),
            Cmd::Receive(a) => mirror::receive(a).await,
            Cmd::Mirror(a) => mirror::mirror(a).await,
            Cmd::Bench(a) => bench::run(a).await,
            Cmd::Loadgen(a) => loadgen::run(a).await,
            Cmd::Lb(a) => lb::run(a).await,
            Cmd::Config(a) => config_cmd::run(a),
            Cmd::Completions { shell } => {
                completions::run(shell, &mut Cli::command());
                Ok(())
            }
            Cmd::BenchServe { spec } => Ok(shoal::tools::bench::serve_child(&spec).await?),
            Cmd::BenchAttack { spec } => Ok(shoal::tools::bench::flood::attack_child(&spec).await?),
        }
    })
}

fn client(c: &ConnectArgs) -> Result<Client> {
    let ca = shoal::security::tls::read_certs(&c.ca)
        .context("reading the CA (start `shoal up` first, or pass --ca)")?;
    let id = ClientId::new(c.client_id.clone())?;
    Ok(Client::new(
        c.hub,
        ClientOptions::new(c.cluster.clone(), ca, id),
    )?)
}

/// Waits for SIGINT or SIGTERM (a SIGHUP is logged and ignored): for the commands that do not
/// reload.
async fn wait_for_signal(command: &str) {
    match signals::Signals::new() {
        Ok(mut s) => s.stop(command).await,
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch signals; only Ctrl-C stops {command}");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
