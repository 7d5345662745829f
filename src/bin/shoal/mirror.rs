//! `shoal receive` (a mirror receiver) and `shoal mirror …` (the admin API's mirror routes).

use std::collections::BTreeMap;
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use serde_json::json;

use shoal::admin::auth::BearerToken;
use shoal::admin::client::{encode_segment, request_with_token, HttpResponse};
use shoal::ids::{Seq, StreamName};
use shoal::mirror::{Mode, Overflow};
use shoal::mirror::{ReceivedStats, Receiver, ReceiverEvent, ReceiverOptions};

/// Time limit of one admin request.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Args)]
pub struct ReceiveArgs {
    /// UDP address to listen on (port 0: any free port; the bound address is printed).
    #[arg(long)]
    listen: SocketAddr,
    /// Check synthetic (`synth/…`) payloads against their generator.
    #[arg(long)]
    verify: bool,
    /// The receiver's certificate chain (PEM), named for the cluster.
    #[arg(long, default_value = ".shoal/cluster.pem")]
    cert: PathBuf,
    /// The receiver's private key (PEM).
    #[arg(long, default_value = ".shoal/cluster.key")]
    key: PathBuf,
    /// CA that senders' client certificates must chain to (PEM).
    #[arg(long, default_value = ".shoal/ca.pem")]
    ca: PathBuf,
    /// Accept only this stream.
    #[arg(long)]
    stream: Option<String>,
    /// Print `chunk STREAM SEQ` and `gap STREAM FROM TO` lines on stdout as they arrive.
    #[arg(long)]
    print_seqs: bool,
    /// Stop after this many seconds (0: until Ctrl-C).
    #[arg(long, default_value_t = 0.0, value_parser = crate::args::secs_or_zero)]
    seconds: f64,
    /// Print the per-stream counters as one JSON object on stdout at the end.
    #[arg(long)]
    json: bool,
}

fn cert_context(what: &str, path: &Path) -> String {
    format!(
        "reading the {what} {} (run `shoal up` once to create dev certificates in .shoal/, or `shoal certs --out DIR` and pass --cert, --key and --ca)",
        path.display()
    )
}

pub async fn receive(a: ReceiveArgs) -> Result<()> {
    if !(0.0..=86_400.0).contains(&a.seconds) {
        refuse!("--seconds must be in [0, 86400]");
    }
    let chain = shoal::security::tls::read_certs(&a.cert)
        .with_context(|| cert_context("receiver certificate", &a.cert))?;
    let key = shoal::security::tls::read_key(&a.key)
        .with_context(|| cert_context("receiver key", &a.key))?;
    let ca = shoal::security::tls::read_certs(&a.ca).with_context(|| cert_context("CA", &a.ca))?;
    let mut opts = ReceiverOptions::new(a.listen, chain, key, ca);
    opts.verify = a.verify;
    opts.only_stream = a.stream.clone().map(StreamName::new).transpose()?;
    let mut receiver =
        Receiver::bind(opts).with_context(|| format!("starting the receiver on {}", a.listen))?;
    crate::logs::say(&format!("listening on {}", receiver.addr()));
    let started = shoal::clock::now();
    let deadline =
        (a.seconds > 0.0).then(|| shoal::clock::tokio_now() + Duration::from_secs_f64(a.seconds));
    let signal = super::wait_for_signal("receive");
    tokio::pin!(signal);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    let stdout = std::io::stdout();
    loop {
        let until_deadline = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            ev = receiver.next() => {
                let line = match ev {
                    None => break,
                    Some(ReceiverEvent::Chunk { stream, chunk }) => format!("chunk {stream} {}", chunk.seq),
                    Some(ReceiverEvent::Gap { stream, from, to }) => format!("gap {stream} {from} {to}"),
                    Some(_) => continue,
                };
                if a.print_seqs {
                    let mut out = stdout.lock();
                    writeln!(out, "{line}").and_then(|()| out.flush()).context("writing to stdout")?;
                }
            }
            _ = tick.tick() => progress(started, &receiver.stats()),
            _ = &mut signal => break,
            _ = until_deadline => break,
        }
    }
    let stats = receiver.stats();
    receiver.close();
    crate::logs::say(&summary(&stats));
    if a.json {
        let by_name: BTreeMap<&str, &ReceivedStats> =
            stats.iter().map(|(k, v)| (k.as_str(), v)).collect();
        println!("{}", serde_json::to_string(&by_name)?);
    }
    let bad: u64 = stats.values().map(|s| s.verify_failures).sum();
    if bad > 0 {
        bail!("{bad} chunks failed verification");
    }
    Ok(())
}

fn seq_text(s: Option<Seq>) -> String {
    s.map_or_else(|| "-".into(), |s| s.to_string())
}

fn progress(started: Instant, stats: &BTreeMap<StreamName, ReceivedStats>) {
    let t = shoal::clock::since(started).as_secs();
    if stats.is_empty() {
        crate::logs::say(&format!("[{t}s] no sender yet"));
    }
    for (stream, s) in stats {
        crate::logs::say(&format!(
            "[{t}s] {stream}: delivered {}, duplicates {}, missing {}, verify failures {}, last seq {}, migrations {}",
            s.delivered,
            s.duplicates,
            s.missing,
            s.verify_failures,
            seq_text(s.last_seq),
            s.migrations
        ));
    }
}

fn summary(stats: &BTreeMap<StreamName, ReceivedStats>) -> String {
    let mut t = format!(
        "{:<32} {:>10} {:>10} {:>8} {:>8} {:>12} {:>6} {:>10}",
        "stream", "delivered", "duplicate", "missing", "verify", "last_seq", "conns", "migrations"
    );
    for (stream, s) in stats {
        t.push_str(&format!(
            "\n{:<32} {:>10} {:>10} {:>8} {:>8} {:>12} {:>6} {:>10}",
            stream.as_str(),
            s.delivered,
            s.duplicates,
            s.missing,
            s.verify_failures,
            seq_text(s.last_seq),
            s.connections,
            s.migrations
        ));
    }
    if stats.is_empty() {
        t.push_str("\n(no stream received)");
    }
    t
}

#[derive(Args)]
pub struct MirrorArgs {
    #[command(subcommand)]
    cmd: MirrorCmd,
}

#[derive(Args)]
struct AdminArg {
    /// Address of the admin API of `shoal up`.
    #[arg(long, default_value = "127.0.0.1:4480")]
    admin: SocketAddr,
    #[command(flatten)]
    token: AdminTokenArg,
}

/// The admin API's bearer token, for the requests that change something.
#[derive(Args)]
pub struct AdminTokenArg {
    /// File holding the admin API's bearer token (the admin.token_file of `shoal up`); sent
    /// as `Authorization: Bearer` with the requests that change something.
    #[arg(long, value_name = "PATH", env = "SHOAL_ADMIN_TOKEN_FILE")]
    pub admin_token_file: Option<PathBuf>,
}

impl AdminTokenArg {
    /// The token, when a file is given (a file that holds none is an input error).
    pub fn read(&self) -> Result<Option<BearerToken>> {
        let Some(path) = &self.admin_token_file else {
            return Ok(None);
        };
        match BearerToken::read_file(path, "--admin-token-file") {
            Ok(t) => Ok(Some(t)),
            Err(e) => Err(crate::args::InputError(e.to_string()).into()),
        }
    }

    /// The error for an answer that is not a success: a 401 says how to pass the token.
    pub fn refusal(&self, r: &HttpResponse) -> anyhow::Error {
        if r.is_unauthorized() {
            let text = match &self.admin_token_file {
                None => "the admin API needs a token: pass --admin-token-file PATH (or set SHOAL_ADMIN_TOKEN_FILE) with the file of its admin.token_file".to_string(),
                Some(p) => format!(
                    "the admin API refused the token in {}: {} (HTTP 401)",
                    p.display(),
                    r.error_message()
                ),
            };
            return crate::args::InputError(text).into();
        }
        let code = r.code().unwrap_or_else(|| "error".into());
        anyhow::anyhow!("{} (HTTP {}, {code})", r.error_message(), r.status)
    }
}

#[derive(Subcommand)]
enum MirrorCmd {
    /// Start mirroring a stream to endpoints (best first).
    Start(StartArgs),
    /// Add an endpoint to a running mirror.
    Add(AddArgs),
    /// Remove an endpoint from a running mirror (an active one is drained first).
    Remove(EndpointArgs),
    /// Show every mirror, or one in full.
    Status(StatusArgs),
    /// Stop a mirror gracefully.
    Stop(StopArgs),
}

#[derive(Args)]
struct StartArgs {
    #[command(flatten)]
    admin: AdminArg,
    /// The mirrored stream, e.g. synth/x or live/demo.
    #[arg(long)]
    stream: String,
    /// Receiver address (repeat; the first is the best).
    #[arg(long = "endpoint", value_name = "ADDR", required = true)]
    endpoints: Vec<String>,
    /// failover or broadcast.
    #[arg(long)]
    mode: Option<Mode>,
    /// block, drop-oldest or conflate.
    #[arg(long)]
    overflow: Option<Overflow>,
    /// Switch back to a better endpoint once healthy this long (e.g. 5s, 1m), or `never`.
    #[arg(long, value_parser = revert_after)]
    revert_after: Option<String>,
}

/// `never` or a duration the mirror settings take (checked here, sent as written).
fn revert_after(text: &str) -> Result<String, String> {
    if text.trim() == "never" {
        return Ok("never".into());
    }
    shoal::mirror::parse_duration(text).map(|_| text.trim().to_string())
}

/// One endpoint of one mirrored stream.
#[derive(Args)]
struct EndpointArgs {
    #[command(flatten)]
    admin: AdminArg,
    /// The mirrored stream, e.g. synth/x or live/demo.
    #[arg(long)]
    stream: String,
    /// The endpoint's address, IP:PORT.
    #[arg(long, value_name = "ADDR")]
    addr: String,
}

#[derive(Args)]
struct AddArgs {
    #[command(flatten)]
    endpoint: EndpointArgs,
    /// Position in the ranking (0 is best; last when left out).
    #[arg(long)]
    rank: Option<usize>,
}

#[derive(Args)]
struct StatusArgs {
    #[command(flatten)]
    admin: AdminArg,
    /// Show this mirror in full (per-endpoint health) instead of the list.
    #[arg(long)]
    stream: Option<String>,
}

#[derive(Args)]
struct StopArgs {
    #[command(flatten)]
    admin: AdminArg,
    /// The mirrored stream, e.g. synth/x or live/demo.
    #[arg(long)]
    stream: String,
}

/// The path of a stream's mirror (stream names are checked first: they hold only URL-safe
/// characters).
fn mirror_path(stream: &str) -> Result<String> {
    let s = StreamName::new(stream)?;
    Ok(format!("/mirrors/{}", s.as_str()))
}

pub async fn mirror(a: MirrorArgs) -> Result<()> {
    let (admin, method, path, body) = match a.cmd {
        MirrorCmd::Start(s) => {
            let mut config = serde_json::Map::new();
            if let Some(m) = s.mode {
                config.insert("mode".into(), serde_json::to_value(m)?);
            }
            if let Some(o) = s.overflow {
                config.insert("overflow".into(), serde_json::to_value(o)?);
            }
            if let Some(r) = s.revert_after {
                config.insert("revert_after".into(), r.into());
            }
            let body = json!({ "stream": s.stream, "endpoints": s.endpoints, "config": config });
            (s.admin, "POST", "/mirrors".to_string(), Some(body))
        }
        MirrorCmd::Add(AddArgs { endpoint: s, rank }) => {
            let body = json!({ "addr": s.addr, "rank": rank });
            let path = format!("{}/endpoints", mirror_path(&s.stream)?);
            (s.admin, "POST", path, Some(body))
        }
        MirrorCmd::Remove(s) => {
            let path = format!(
                "{}/endpoints/{}",
                mirror_path(&s.stream)?,
                encode_segment(s.addr.trim())
            );
            (s.admin, "DELETE", path, None)
        }
        MirrorCmd::Status(s) => {
            let path = match &s.stream {
                Some(stream) => mirror_path(stream)?,
                None => "/mirrors".into(),
            };
            (s.admin, "GET", path, None)
        }
        MirrorCmd::Stop(s) => (s.admin, "DELETE", mirror_path(&s.stream)?, None),
    };
    let body = body.map(|b| b.to_string());
    // Reads need no token: only a change reads the file.
    let token = match method {
        "GET" => None,
        _ => admin.token.read()?,
    };
    let r = request_with_token(
        admin.admin,
        method,
        &path,
        body.as_deref().map(str::as_bytes),
        token.as_ref(),
        ADMIN_TIMEOUT,
    )
    .await?;
    if !r.is_success() {
        return Err(admin.token.refusal(&r));
    }
    match r.json() {
        Some(v) => println!("{}", serde_json::to_string_pretty(&v)?),
        None => println!("{}", String::from_utf8_lossy(&r.body)),
    }
    Ok(())
}
