//! `shoal loadgen`: many simulated clients against a running hub, with a progress bar, a
//! latency report and an optional SVG chart.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Args;

use crate::ConnectArgs;

#[derive(Args)]
pub struct LoadgenArgs {
    #[command(flatten)]
    conn: ConnectArgs,
    /// Clients in all (each a cold client with its own socket).
    #[arg(long, default_value_t = 200, value_parser = crate::args::count(1, 1_000_000))]
    clients: usize,
    /// New clients per second.
    #[arg(long, default_value_t = 50.0, value_parser = crate::args::per_sec)]
    rate: f64,
    /// Seconds each client stays subscribed.
    #[arg(long, default_value_t = 2.0, value_parser = crate::args::secs_or_zero)]
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
    #[arg(long, value_parser = crate::args::count32(0, 100_000_000))]
    bitrate_kbps: Option<u32>,
    /// Time limit of each grant and attach, in seconds.
    #[arg(long, default_value_t = 5.0, value_parser = crate::args::secs)]
    timeout: f64,
    /// Each client's heartbeat interval in milliseconds (a shard silent for four intervals
    /// is dead and the client resumes on the next one); the client library's default when
    /// left out.
    #[arg(long, value_parser = crate::args::count64(10, 3_600_000))]
    heartbeat_ms: Option<u64>,
    /// Print the summary as one JSON object as the last line.
    #[arg(long)]
    json: bool,
    /// Write an SVG chart of time-to-first-byte and attach latency distributions.
    #[arg(long)]
    plot: Option<PathBuf>,
}

pub async fn run(a: LoadgenArgs) -> Result<()> {
    use shoal::tools::loadgen::{self, LoadgenOptions};
    if !((0.0..=3600.0).contains(&a.hold) && a.timeout > 0.0 && a.timeout <= 600.0) {
        refuse!("--hold must be in [0, 3600] seconds and --timeout in (0, 600]");
    }
    if let Some(p) = &a.plot {
        check_plot_path(p)?;
    }
    let mix = loadgen::parse_mix(&a.streams)
        .map_err(|e| crate::args::InputError(format!("--streams: {e}")))?;
    let ca = shoal::security::tls::read_certs(&a.conn.ca)
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
        heartbeat_interval: a.heartbeat_ms.map(Duration::from_millis),
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
    // The result first: a chart that cannot be written loses nothing else.
    if a.json {
        println!("{}", serde_json::to_string(&report)?);
    }
    if let Some(p) = &a.plot {
        loadgen::plot(&samples, p).map_err(|e| anyhow::anyhow!(e))?;
        crate::logs::say(&format!("wrote {}", p.display()));
    }
    if report.succeeded == 0 {
        bail!("every client failed");
    }
    Ok(())
}

/// `--plot` writes SVG: the name must say so, and its directory must take a file. Checked
/// before the run, not after it.
fn check_plot_path(p: &std::path::Path) -> Result<()> {
    let svg = p.extension().is_some_and(|e| e.eq_ignore_ascii_case("svg"));
    if !svg {
        refuse!(
            "--plot {}: the chart is SVG; name the file .svg",
            p.display()
        );
    }
    let dir = match p.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => std::path::Path::new("."),
    };
    if !dir.is_dir() {
        refuse!(
            "--plot {}: the directory {} does not exist",
            p.display(),
            dir.display()
        );
    }
    // Whether a file can be made there (removed again unless it was there before).
    let existed = p.exists();
    std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(p)
        .map_err(|e| crate::args::InputError(format!("--plot {}: {e}", p.display())))?;
    if !existed {
        let _ = std::fs::remove_file(p);
    }
    Ok(())
}
