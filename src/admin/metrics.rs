//! `GET /metrics`: the Prometheus text exposition format (version 0.0.4), written by hand.
//!
//! One `# HELP` and `# TYPE` line per family, then its samples; a family without samples is
//! left out. Label values are escaped as the format requires (`\\`, `\"`, `\n`); values are
//! written as Prometheus floats (`NaN`, `+Inf`, `-Inf`). A histogram is written as
//! `<name>_bucket{…,le="…"}` (cumulative, `+Inf` last), `<name>_sum` and `<name>_count`, with
//! the buckets of [`crate::metrics_hist::BOUNDS_US`] (0.0005 s … 10 s).
//!
//! What is read, in order: the mirrors' snapshots, the hub's counters, the shard directory
//! (every shard the hub knows, embedded or in another process: each one's figures come from
//! its last `load` report over the link, so both kinds have the same families), then this
//! process (`/proc/self`). The families:
//!
//! | family | type | labels | what |
//! |---|---|---|---|
//! | `shoal_build_info` | gauge | `version`, `revision` | 1; crate version and git revision |
//! | `process_cpu_seconds_total` | counter | | user + system CPU (Linux) |
//! | `process_resident_memory_bytes`, `process_virtual_memory_bytes` | gauge | | memory (Linux) |
//! | `process_open_fds`, `process_max_fds` | gauge | | descriptors, soft limit (Linux) |
//! | `process_start_time_seconds` | gauge | | since the Unix epoch (Linux) |
//! | [`MIRROR`] `shoal_mirror_*` | counter, gauge | `stream` | switches, pushed, replayed, dropped, conflated, gap chunks, blocked pushes, buffered chunks, endpoints |
//! | `shoal_mirror_failover_detection_seconds` | histogram | `stream` | the failed active endpoint's last sign of life → failure acted on |
//! | `shoal_mirror_failover_switch_seconds` | histogram | `stream` | failure acted on → the next active acknowledged its first chunk |
//! | [`ENDPOINT`] `shoal_mirror_endpoint_*` | gauge, counter | `stream`, `endpoint`, `addr` | srtt, loss, bandwidth, rate, rank, pending, chunks and bytes sent, degradations, connects |
//! | `shoal_mirror_endpoint_state` | gauge | … `state` | 1 for the current state |
//! | [`HUB`] `shoal_hub_*_total` | counter | | connections, grants, rejects, idle closes, 0-RTT requests, session reports, link events |
//! | `shoal_hub_rejections_total` | counter | `code` | rejects and error closes by wire code (snake_case name, `0x…` for a code this build does not know) |
//! | `shoal_hub_grant_seconds` | histogram | | request read → grant written |
//! | [`SHARD`] `shoal_shard_*` | gauge, counter | `shard`, `group` | sessions, capacity, streams, committed bytes/s, buffer bytes, alive, allocations, chunks and bytes sent, CPU, 0-RTT attempted / accepted / admitted, ticket misses, promotions, misrouted, malformed, reports dropped |
//! | `shoal_shard_rejections_total` | counter | `shard`, `group`, `code` | connections refused or closed with an error code |
//! | `shoal_shard_attach_seconds` | histogram | `shard`, `group` | connection accepted → attach admitted |
//! | `shoal_shard_first_chunk_seconds` | histogram | `shard`, `group` | attach admitted → first chunk written |
//! | `shoal_live_replication_lag_{seqs,seconds}` | gauge | `stream`, `primary`, `standby` | a live stream's standby behind its primary |
//!
//! Series with a `code` label appear once that code was counted; every other per-shard and
//! per-mirror family has a series for each shard and mirror, histograms included (all zeros
//! until an observation).

mod families;
mod process;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::hub::directory::ShardRecord;
use crate::hub::HubCounters;
use crate::ids::StreamName;
use crate::metrics_hist::{le_labels, CodeCount, HistogramSnapshot};
use crate::mirror::machine::EndpointSnapshot;
use crate::mirror::{EndpointState, MirrorSnapshot};
use crate::wire::ErrorCode;
pub use families::{Metric, ENDPOINT, HUB, MIRROR, SHARD};
pub use process::{build_info, ProcessStats};

/// The content type of the exposition.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

const STATES: [(EndpointState, &str); 5] = [
    (EndpointState::Connecting, "connecting"),
    (EndpointState::Standby, "standby"),
    (EndpointState::Active, "active"),
    (EndpointState::Draining, "draining"),
    (EndpointState::Degraded, "degraded"),
];

/// A label set: name and value pairs, values unescaped.
pub type Labels = Vec<(&'static str, String)>;

/// Builds one exposition.
#[derive(Default)]
pub struct Exposition {
    out: String,
}

impl Exposition {
    /// Writes one family: its help, its type (`gauge` or `counter`) and its samples.
    pub fn family(
        &mut self,
        name: &str,
        kind: &str,
        help: &str,
        samples: impl IntoIterator<Item = (Labels, f64)>,
    ) {
        let mut samples = samples.into_iter().peekable();
        if samples.peek().is_none() {
            return;
        }
        self.head(name, kind, help);
        for (labels, value) in samples {
            self.sample(name, &labels, None, value);
        }
    }

    /// Writes one histogram family: per series its cumulative buckets, sum (seconds) and
    /// count. A series whose snapshot has other buckets than this build's is left out.
    pub fn histogram<'a>(
        &mut self,
        name: &str,
        help: &str,
        series: impl IntoIterator<Item = (Labels, &'a HistogramSnapshot)>,
    ) {
        let series: Vec<_> = series
            .into_iter()
            .filter_map(|(l, h)| Some((l, h.cumulative()?, h.sum_seconds())))
            .collect();
        if series.is_empty() {
            return;
        }
        self.head(name, "histogram", help);
        let (bucket, sum, count) = (
            format!("{name}_bucket"),
            format!("{name}_sum"),
            format!("{name}_count"),
        );
        let le = le_labels();
        for (labels, cumulative, seconds) in series {
            for (bound, n) in le.iter().zip(cumulative) {
                self.sample(&bucket, &labels, Some(bound), n as f64);
            }
            self.sample(&sum, &labels, None, seconds);
            let total = cumulative.last().copied().unwrap_or(0);
            self.sample(&count, &labels, None, total as f64);
        }
    }

    fn head(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.out, "# HELP {name} {}", escape_help(help));
        let _ = writeln!(self.out, "# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &Labels, le: Option<&str>, value: f64) {
        self.out.push_str(name);
        let le = le.map(|v| ("le", v));
        let all = labels.iter().map(|(k, v)| (*k, v.as_str())).chain(le);
        for (i, (k, v)) in all.enumerate() {
            self.out.push(if i == 0 { '{' } else { ',' });
            let _ = write!(self.out, "{k}=\"{}\"", escape_label(v));
        }
        if !labels.is_empty() || le.is_some() {
            self.out.push('}');
        }
        let _ = writeln!(self.out, " {}", number(value));
    }

    pub fn finish(self) -> String {
        self.out
    }
}

/// Escapes a label value: backslash, double quote and line feed.
pub fn escape_label(v: &str) -> String {
    let mut s = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => s.push_str("\\\\"),
            '"' => s.push_str("\\\""),
            '\n' => s.push_str("\\n"),
            c => s.push(c),
        }
    }
    s
}

fn escape_help(v: &str) -> String {
    v.replace('\\', "\\\\").replace('\n', "\\n")
}

fn number(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v == f64::INFINITY {
        "+Inf".into()
    } else if v == f64::NEG_INFINITY {
        "-Inf".into()
    } else {
        format!("{v}")
    }
}

/// The `code` label of a wire error code: its name in snake_case (`token_invalid`), or
/// `0x…` for a value this build does not know (a newer shard's).
pub fn code_label(code: u32) -> String {
    let Some(c) = ErrorCode::from_u32(code) else {
        return format!("0x{code:02x}");
    };
    let mut out = String::new();
    for (i, ch) in format!("{c:?}").chars().enumerate() {
        if ch.is_ascii_uppercase() && i > 0 {
            out.push('_');
        }
        out.push(ch.to_ascii_lowercase());
    }
    out
}

/// Counts by `code` label (a list from a peer may name a code twice: summed).
fn by_code(counts: &[CodeCount]) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for c in counts {
        let n: &mut u64 = out.entry(code_label(c.code)).or_default();
        *n = n.saturating_add(c.count);
    }
    out
}

fn shard_labels(s: &ShardRecord) -> Labels {
    vec![
        ("shard", s.id.0.to_string()),
        ("group", s.group.0.to_string()),
    ]
}

/// The whole exposition of one admin server, this process's figures included.
pub fn render(
    mirrors: &[(StreamName, MirrorSnapshot)],
    hub: Option<&HubCounters>,
    shards: &[ShardRecord],
) -> String {
    render_with(mirrors, hub, shards, process::read().as_ref())
}

/// [`render`] with the process's figures given (none: the `process_*` families left out).
pub fn render_with(
    mirrors: &[(StreamName, MirrorSnapshot)],
    hub: Option<&HubCounters>,
    shards: &[ShardRecord],
    proc_stats: Option<&ProcessStats>,
) -> String {
    let mut x = Exposition::default();
    build_info(&mut x);
    if let Some(p) = proc_stats {
        process::families(&mut x, p);
    }
    mirror_families(&mut x, mirrors);
    if let Some(h) = hub {
        hub_families(&mut x, h);
    }
    shard_families(&mut x, shards);
    x.finish()
}

fn mirror_families(x: &mut Exposition, mirrors: &[(StreamName, MirrorSnapshot)]) {
    let stream = |s: &StreamName| vec![("stream", s.to_string())];
    for (name, kind, help, f) in MIRROR {
        x.family(
            name,
            kind,
            help,
            mirrors.iter().map(|(s, m)| (stream(s), f(m))),
        );
    }
    x.histogram(
        "shoal_mirror_failover_detection_seconds",
        "Failover mode: the failed active endpoint's last sign of life to its failure being acted on (degraded, or its connection closed).",
        mirrors.iter().map(|(s, m)| (stream(s), &m.failover.detection)),
    );
    x.histogram(
        "shoal_mirror_failover_switch_seconds",
        "Failover mode: the active endpoint's failure acted on to the next active endpoint acknowledging the first chunk it was sent.",
        mirrors.iter().map(|(s, m)| (stream(s), &m.failover.switch)),
    );
    for (name, kind, help, f) in ENDPOINT {
        let samples = mirrors
            .iter()
            .flat_map(|(s, m)| m.endpoints.iter().map(move |ep| (ep_labels(s, ep), f(ep))));
        x.family(name, kind, help, samples);
    }
    let mut states = Vec::new();
    for (s, m) in mirrors {
        for ep in &m.endpoints {
            for (state, name) in STATES {
                let mut l = ep_labels(s, ep);
                l.push(("state", name.to_string()));
                states.push((l, f64::from(u8::from(ep.state == state))));
            }
        }
    }
    x.family(
        "shoal_mirror_endpoint_state",
        "gauge",
        "1 for the endpoint's current state, 0 for the others.",
        states,
    );
}

fn hub_families(x: &mut Exposition, h: &HubCounters) {
    for (name, kind, help, f) in HUB {
        x.family(name, kind, help, [(Labels::new(), f(h))]);
    }
    let codes = by_code(&h.rejections.snapshot());
    x.family(
        "shoal_hub_rejections_total",
        "counter",
        "Requests the hub answered with a reject, and hub connections it closed with an error code, by code.",
        codes
            .into_iter()
            .map(|(code, n)| (vec![("code", code)], n as f64)),
    );
    let grants = h.grant_seconds.snapshot();
    x.histogram(
        "shoal_hub_grant_seconds",
        "A stream request read to its grant written (placement, preparing the shards, sealing the token).",
        [(Labels::new(), &grants)],
    );
}

/// Per shard in the hub's directory, from its last load report.
fn shard_families(x: &mut Exposition, shards: &[ShardRecord]) {
    for (name, kind, help, f) in SHARD {
        x.family(
            name,
            kind,
            help,
            shards.iter().map(|s| (shard_labels(s), f(s))),
        );
    }
    let rejections = shards.iter().flat_map(|s| {
        by_code(&s.load.rejected).into_iter().map(move |(code, n)| {
            let mut l = shard_labels(s);
            l.push(("code", code));
            (l, n as f64)
        })
    });
    x.family(
        "shoal_shard_rejections_total",
        "counter",
        "Connections the shard refused or closed with an error code, by code.",
        rejections,
    );
    x.histogram(
        "shoal_shard_attach_seconds",
        "A connection accepted by the shard to its attach admitted (handshake, token and proof checks, quota).",
        shards.iter().map(|s| (shard_labels(s), &s.load.attach_seconds)),
    );
    x.histogram(
        "shoal_shard_first_chunk_seconds",
        "An attach admitted to the first chunk written to the subscriber (time to first byte at the shard).",
        shards.iter().map(|s| (shard_labels(s), &s.load.first_chunk_seconds)),
    );
    // Live streams: each primary's view of its standbys.
    type LagFn = fn(&crate::link::StandbyLag) -> f64;
    let lags: [(&str, &str, LagFn); 2] = [
        (
            "shoal_live_replication_lag_seqs",
            "Sequences a live stream's standby copy is behind its primary.",
            |l| l.lag_seqs as f64,
        ),
        (
            "shoal_live_replication_lag_seconds",
            "Age of the oldest chunk a live stream's standby has not acknowledged.",
            |l| l.lag_ms as f64 / 1e3,
        ),
    ];
    for (name, help, f) in lags {
        let samples = shards.iter().flat_map(|s| {
            s.replicas
                .iter()
                .filter(|r| r.role == crate::link::ReplicaRole::Primary)
                .flat_map(move |r| {
                    r.standbys.iter().map(move |l| {
                        let labels = vec![
                            ("stream", r.stream.to_string()),
                            ("primary", s.id.0.to_string()),
                            ("standby", l.shard.0.to_string()),
                        ];
                        (labels, f(l))
                    })
                })
        });
        x.family(name, "gauge", help, samples);
    }
}

fn ep_labels(stream: &StreamName, ep: &EndpointSnapshot) -> Labels {
    vec![
        ("stream", stream.to_string()),
        ("endpoint", ep.id.to_string()),
        ("addr", ep.addr.to_string()),
    ]
}
