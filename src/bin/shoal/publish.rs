//! `shoal publish`: publish chunks to a live stream.

use std::time::Duration;

use anyhow::{Context, Result};
use bytes::Bytes;
use clap::Args;

use shoal::ids::StreamName;

use crate::{client, ConnectArgs};

#[derive(Args)]
pub struct PublishArgs {
    #[command(flatten)]
    conn: ConnectArgs,
    /// Chunks per second.
    #[arg(long, default_value_t = 10, value_parser = crate::args::count32(1, 100_000))]
    rate: u32,
    /// Number of chunks to send (0: until Ctrl-C).
    #[arg(long, default_value_t = 0)]
    count: u64,
    /// Payload bytes per chunk.
    #[arg(long, default_value_t = 256, value_parser = crate::args::count(1, 1 << 20))]
    size: usize,
    stream: String,
}

pub async fn run(a: PublishArgs) -> Result<()> {
    let stream = StreamName::new(a.stream.clone())?;
    if stream.is_synthetic() {
        refuse!("{stream} is synthetic (synth/…); publish to another name, e.g. live/demo");
    }
    if a.rate == 0 || a.size > shoal::wire::MAX_CHUNK_PAYLOAD {
        refuse!("--rate must be at least 1 and --size at most 1 MiB");
    }
    let client = client(&a.conn)?;
    let mut publisher = client
        .publish(&stream)
        .await
        .with_context(|| format!("publishing to {stream} at {}", a.conn.hub))?;
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(a.rate)));
    let mut sent = 0u64;
    let mut signals = crate::signals::Signals::new().context("watching signals")?;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = signals.stop("publish") => break,
        }
        let payload =
            Bytes::from(format!("{stream} chunk {sent} ").repeat(a.size / 16 + 1)).slice(..a.size);
        let seq = publisher.send(payload).await?;
        sent += 1;
        tracing::debug!(%seq, "published");
        if a.count > 0 && sent >= a.count {
            break;
        }
    }
    publisher.finish().await?;
    crate::logs::summary(
        &format!("published {sent} chunks to {stream}"),
        "publish summary",
        serde_json::json!({ "chunks": sent, "stream": stream.as_str() }),
    );
    client.close().await;
    Ok(())
}
