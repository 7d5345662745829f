//! `shoal subscribe`: subscribe to a stream and print what arrives.

use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Args;

use shoal::client::Delivery;
use shoal::ids::StreamName;
use shoal::synthetic::{stream_seed, verify};

use crate::{client, ConnectArgs};

#[derive(Args)]
pub struct SubscribeArgs {
    #[command(flatten)]
    conn: ConnectArgs,
    /// Stop after this many chunks (0: no limit).
    #[arg(long, default_value_t = 0)]
    count: u64,
    /// Stop after this many seconds (0: no limit).
    #[arg(long, default_value_t = 0.0, value_parser = crate::args::secs_or_zero)]
    seconds: f64,
    /// Only print a summary at the end.
    #[arg(long, short)]
    quiet: bool,
    /// After this many seconds, move the client's socket to a new local port (QUIC connection
    /// migration: the session should go on, with no resume).
    #[arg(long, value_name = "SECS", value_parser = crate::args::secs_or_zero)]
    rebind_after: Option<f64>,
    stream: String,
}

pub async fn run(a: SubscribeArgs) -> Result<()> {
    let stream = StreamName::new(a.stream.clone())?;
    let client = client(&a.conn)?;
    let seed = stream.is_synthetic().then(|| stream_seed(&stream));
    let mut sub = client
        .subscribe(&stream)
        .await
        .with_context(|| format!("subscribing to {stream} at {}", a.conn.hub))?;
    let started = shoal::clock::now();
    let limit = (a.seconds > 0.0).then(|| Duration::from_secs_f64(a.seconds));
    let (mut chunks, mut bad) = (0u64, 0u64);
    let mut signals = crate::signals::Signals::new().context("watching signals")?;
    let mut ended = None;
    let mut rebind = a
        .rebind_after
        .filter(|s| s.is_finite() && *s >= 0.0)
        .map(|s| shoal::clock::now() + Duration::from_secs_f64(s));
    loop {
        if rebind.is_some_and(|at| shoal::clock::now() >= at) {
            rebind = None;
            let socket = std::net::UdpSocket::bind(("0.0.0.0", 0)).context("a new local socket")?;
            let to = socket.local_addr()?;
            client
                .endpoint()
                .rebind(socket)
                .context("moving the client's socket")?;
            crate::logs::say(&format!("rebound the client's socket to {to}"));
        }
        let left = limit.map(|l| l.saturating_sub(shoal::clock::since(started)));
        let next = async {
            tokio::select! {
                n = sub.next() => Some(n),
                () = signals.stop("subscribe") => None,
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
            Some(Some(Err(e))) => {
                ended = Some(e);
                break;
            }
        }
    }
    let s = sub.stats();
    // The summary comes first, whatever ended the subscription.
    let ttfb_ms = s.ttfb_us as f64 / 1000.0;
    let mut text = format!(
        "{chunks} chunks, {} missing, {} duplicated, {bad} integrity failures, {} resumes, 0-RTT {}/{}, ttfb {ttfb_ms:.2} ms",
        s.missing, s.duplicates, s.resumes, s.zero_rtt_accepted, s.zero_rtt_attempted,
    );
    if s.ended {
        let last = s.ended_after_seq.map_or("none".into(), |q| q.to_string());
        text.push_str(&format!(
            "\nthe publisher finished the stream (last seq {last})"
        ));
    }
    crate::logs::summary(
        &text,
        "subscription summary",
        serde_json::json!({
            "chunks": chunks,
            "missing": s.missing,
            "duplicated": s.duplicates,
            "integrity_failures": bad,
            "resumes": s.resumes,
            "zero_rtt_accepted": s.zero_rtt_accepted,
            "zero_rtt_attempted": s.zero_rtt_attempted,
            "ttfb_ms": ttfb_ms,
            "ended_by_publisher": s.ended,
            "ended_after_seq": s.ended_after_seq,
        }),
    );
    drop(sub);
    client.close().await;
    if let Some(e) = ended {
        bail!("subscription ended: {e}");
    }
    if bad > 0 {
        bail!("{bad} chunks failed the integrity check");
    }
    Ok(())
}
