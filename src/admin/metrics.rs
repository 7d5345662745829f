//! `GET /metrics`: the Prometheus text exposition format (version 0.0.4), written by hand.
//!
//! One `# HELP` and `# TYPE` line per family, then its samples. Label values are escaped as
//! the format requires (`\\`, `\"`, `\n`); values are written as Prometheus floats (`NaN`,
//! `+Inf`, `-Inf`). The families:
//!
//! - per mirror (label `stream`): [`MIRROR`] (switches, replayed, dropped, conflated and gap
//!   chunk counters, buffered chunks);
//! - per mirror endpoint (labels `stream`, `endpoint`, `addr`): [`ENDPOINT`] (srtt, loss,
//!   bandwidth, rate, chunks sent, …) and `shoal_mirror_endpoint_state` (one sample per state
//!   with label `state`, 1 for the current one);
//! - [`HUB`] counters and, per shard (labels `shard`, `group`), [`SHARD`] (sessions, …).

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::hub::directory::{ShardRecord, ShardState};
use crate::hub::HubCounters;
use crate::ids::StreamName;
use crate::mirror::machine::EndpointSnapshot;
use crate::mirror::{EndpointState, MirrorSnapshot};

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
        let _ = writeln!(self.out, "# HELP {name} {}", escape_help(help));
        let _ = writeln!(self.out, "# TYPE {name} {kind}");
        for (labels, value) in samples {
            self.out.push_str(name);
            if !labels.is_empty() {
                self.out.push('{');
                for (i, (k, v)) in labels.iter().enumerate() {
                    if i > 0 {
                        self.out.push(',');
                    }
                    let _ = write!(self.out, "{k}=\"{}\"", escape_label(v));
                }
                self.out.push('}');
            }
            let _ = writeln!(self.out, " {}", number(value));
        }
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

/// A family computed from one value per item: name, type, help, value.
pub type Metric<T> = (&'static str, &'static str, &'static str, fn(&T) -> f64);

pub const MIRROR: &[Metric<MirrorSnapshot>] = &[
    (
        "shoal_mirror_pushed_chunks_total",
        "counter",
        "Chunks the source pushed into the mirror.",
        |m| m.counters.pushed as f64,
    ),
    (
        "shoal_mirror_switches_total",
        "counter",
        "Changes of the active endpoint.",
        |m| m.counters.switches as f64,
    ),
    (
        "shoal_mirror_replayed_chunks_total",
        "counter",
        "Chunks sent again after a failover.",
        |m| m.counters.replayed as f64,
    ),
    (
        "shoal_mirror_dropped_chunks_total",
        "counter",
        "Chunks dropped by the overflow policy.",
        |m| m.counters.dropped as f64,
    ),
    (
        "shoal_mirror_conflated_chunks_total",
        "counter",
        "Chunks skipped because a newer one had the same key.",
        |m| m.counters.conflated as f64,
    ),
    (
        "shoal_mirror_gap_chunks_total",
        "counter",
        "Chunks reported to receivers as a gap.",
        |m| m.counters.gap_chunks as f64,
    ),
    (
        "shoal_mirror_blocked_total",
        "counter",
        "Pushes that waited for room (overflow policy block).",
        |m| m.counters.blocked as f64,
    ),
    (
        "shoal_mirror_buffered_chunks",
        "gauge",
        "Chunks kept for replay.",
        |m| m.buffered as f64,
    ),
    (
        "shoal_mirror_endpoints",
        "gauge",
        "Endpoints in the mirror's list.",
        |m| m.endpoints.len() as f64,
    ),
];

pub const ENDPOINT: &[Metric<EndpointSnapshot>] = &[
    (
        "shoal_mirror_endpoint_srtt_seconds",
        "gauge",
        "Smoothed round-trip time of the endpoint's path.",
        |e| e.health.srtt_ms / 1e3,
    ),
    (
        "shoal_mirror_endpoint_loss_ratio",
        "gauge",
        "Lost over sent QUIC packets in the last window.",
        |e| e.health.loss,
    ),
    (
        "shoal_mirror_endpoint_bandwidth_bytes_per_second",
        "gauge",
        "Delivered bandwidth measured on the endpoint's path.",
        |e| e.health.bandwidth_bps,
    ),
    (
        "shoal_mirror_endpoint_rate_bytes_per_second",
        "gauge",
        "Adaptive send rate towards the endpoint.",
        |e| e.rate_bps,
    ),
    (
        "shoal_mirror_endpoint_rank",
        "gauge",
        "Rank of the endpoint (0 is best).",
        |e| e.rank as f64,
    ),
    (
        "shoal_mirror_endpoint_pending_chunks",
        "gauge",
        "Chunks waiting to be sent to the endpoint.",
        |e| e.pending as f64,
    ),
    (
        "shoal_mirror_endpoint_chunks_sent_total",
        "counter",
        "Chunks sent to the endpoint.",
        |e| e.counters.chunks_sent as f64,
    ),
    (
        "shoal_mirror_endpoint_bytes_sent_total",
        "counter",
        "Payload bytes sent to the endpoint.",
        |e| e.counters.bytes_sent as f64,
    ),
    (
        "shoal_mirror_endpoint_degradations_total",
        "counter",
        "Times the endpoint failed the health rule.",
        |e| e.counters.degradations as f64,
    ),
    (
        "shoal_mirror_endpoint_connects_total",
        "counter",
        "Connections made to the endpoint.",
        |e| e.counters.connects as f64,
    ),
];

pub const HUB: &[Metric<HubCounters>] = &[
    (
        "shoal_hub_connections_total",
        "counter",
        "Connections the hub accepted.",
        |h| load(&h.connections),
    ),
    (
        "shoal_hub_grants_total",
        "counter",
        "Grants the hub issued.",
        |h| load(&h.grants),
    ),
    (
        "shoal_hub_rejects_total",
        "counter",
        "Requests the hub rejected.",
        |h| load(&h.rejects),
    ),
    (
        "shoal_hub_idle_closed_total",
        "counter",
        "Hub connections closed with TIMEOUT because they opened no stream in time.",
        |h| load(&h.idle_closed),
    ),
    (
        "shoal_hub_zero_rtt_requests_total",
        "counter",
        "Requests that arrived in 0-RTT data.",
        |h| load(&h.zero_rtt_requests),
    ),
    (
        "shoal_hub_sessions_reported_total",
        "counter",
        "Ended sessions the shards reported to the hub's profiler.",
        |h| load(&h.sessions_reported),
    ),
    (
        "shoal_hub_sessions_dropped_total",
        "counter",
        "Session reports dropped because the profiler was behind or closed.",
        |h| load(&h.sessions_dropped),
    ),
    (
        "shoal_hub_model_expectations_total",
        "counter",
        "Requests whose expected bitrate came from the learned request model.",
        |h| load(&h.model_expectations),
    ),
    (
        "shoal_hub_grants_forgotten_total",
        "counter",
        "Ended subscriptions learned against the profile at session end because their grant's features were no longer remembered.",
        |h| load(&h.grants_forgotten),
    ),
    (
        "shoal_hub_shards_registered_total",
        "counter",
        "Shards that registered over a link (contract version accepted).",
        |h| load(&h.link.registered),
    ),
    (
        "shoal_hub_shard_registrations_refused_total",
        "counter",
        "Links refused at registration (another contract version, a duplicate id, no registration first).",
        |h| load(&h.link.refused),
    ),
    (
        "shoal_hub_shards_lost_total",
        "counter",
        "Shard links that closed without the shard reporting drained (crash, kill).",
        |h| load(&h.link.lost),
    ),
    (
        "shoal_hub_shards_drained_total",
        "counter",
        "Shards that reported drained and left the directory.",
        |h| load(&h.link.drained),
    ),
    (
        "shoal_hub_shards_silent_total",
        "counter",
        "Times a shard was taken out of placement for silence.",
        |h| load(&h.link.silent),
    ),
    (
        "shoal_hub_prepares_confirmed_total",
        "counter",
        "Granted shards that confirmed their preparation (stream warm, the client's session entries held) within 250 ms.",
        |h| load(&h.link.entries_held),
    ),
    (
        "shoal_hub_prepares_missed_total",
        "counter",
        "Granted shards that did not confirm their preparation within 250 ms (see shoal_shard_ticket_misses_total for the clients that then resumed without 0-RTT).",
        |h| load(&h.link.entries_missed),
    ),
    (
        "shoal_hub_entries_forwarded_total",
        "counter",
        "Copies of session entries sent to a client's shards after its grant.",
        |h| load(&h.link.entries_forwarded),
    ),
    (
        "shoal_hub_entry_forwards_dropped_total",
        "counter",
        "Copies of session entries dropped because a shard's link was full.",
        |h| load(&h.link.forwards_dropped),
    ),
];

/// Per shard in the hub's directory, from the shard's last load report.
pub const SHARD: &[Metric<ShardRecord>] = &[
    (
        "shoal_shard_sessions",
        "gauge",
        "Sessions open on the shard.",
        |s| s.load.sessions as f64,
    ),
    (
        "shoal_shard_buffer_bytes",
        "gauge",
        "Payload bytes the shard's streams hold.",
        |s| s.load.buffer_bytes as f64,
    ),
    (
        "shoal_shard_alive",
        "gauge",
        "1 while the hub places on the shard, 0 while it drains or is silent (a shard leaves the directory, and this list, once drained or gone).",
        |s| f64::from(u8::from(s.state == ShardState::Ready)),
    ),
    (
        "shoal_shard_allocations_total",
        "counter",
        "Sessions the shard ever admitted.",
        |s| s.load.allocations as f64,
    ),
    (
        "shoal_shard_chunks_sent_total",
        "counter",
        "Chunks the shard sent to subscribers.",
        |s| s.load.chunks_sent as f64,
    ),
    (
        "shoal_shard_reports_dropped_total",
        "counter",
        "Reports the shard dropped because its link to the hub was full.",
        |s| s.load.reports_dropped as f64,
    ),
    (
        "shoal_shard_ticket_misses_total",
        "counter",
        "Session tickets clients offered that the shard's store did not hold (resumed without 0-RTT).",
        |s| s.load.ticket_misses as f64,
    ),
    (
        "shoal_shard_promotions_total",
        "counter",
        "Standby copies of live streams promoted to primary at the shard (their publisher moved there).",
        |s| s.load.promotions as f64,
    ),
    (
        "shoal_shard_misrouted_total",
        "counter",
        "Packets that reached the shard with another server's QUIC-LB connection ID (misrouted by the balancer, or forged).",
        |s| s.load.misrouted as f64,
    ),
    (
        "shoal_shard_malformed_total",
        "counter",
        "Datagrams that reached the shard with a QUIC header that does not parse (dropped unread).",
        |s| s.load.malformed as f64,
    ),
    (
        "shoal_shard_rejections_total",
        "counter",
        "Connections the shard refused or closed with an error code.",
        |s| s.load.rejections as f64,
    ),
];

fn load(a: &AtomicU64) -> f64 {
    a.load(Ordering::Relaxed) as f64
}

/// The whole exposition of one admin server.
pub fn render(
    mirrors: &[(StreamName, MirrorSnapshot)],
    hub: Option<&HubCounters>,
    shards: &[ShardRecord],
) -> String {
    let mut x = Exposition::default();
    for (name, kind, help, f) in MIRROR {
        let samples = mirrors
            .iter()
            .map(|(s, m)| (vec![("stream", s.to_string())], f(m)));
        x.family(name, kind, help, samples);
    }
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
    if let Some(h) = hub {
        for (name, kind, help, f) in HUB {
            x.family(name, kind, help, [(Labels::new(), f(h))]);
        }
    }
    for (name, kind, help, f) in SHARD {
        let samples = shards.iter().map(|s| {
            let l = vec![
                ("shard", s.id.0.to_string()),
                ("group", s.group.0.to_string()),
            ];
            (l, f(s))
        });
        x.family(name, kind, help, samples);
    }
    // Live streams: each primary's view of its standbys.
    type LagFn = fn(&crate::link::StandbyLag) -> f64;
    let lags: [(&str, &str, LagFn); 2] = [
        (
            "shoal_live_replication_lag_seqs",
            "Sequences a live stream's standby copy is behind its primary.",
            |l| l.lag_seqs as f64,
        ),
        (
            "shoal_live_replication_lag_ms",
            "Age of the oldest chunk a live stream's standby has not acknowledged.",
            |l| l.lag_ms as f64,
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
    x.finish()
}

fn ep_labels(stream: &StreamName, ep: &EndpointSnapshot) -> Labels {
    vec![
        ("stream", stream.to_string()),
        ("endpoint", ep.id.to_string()),
        ("addr", ep.addr.to_string()),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape_label(r#"a\b"c"#), r#"a\\b\"c"#);
        assert_eq!(escape_label("x\ny"), "x\\ny");
    }

    #[test]
    fn families_have_help_type_and_samples() {
        let mut x = Exposition::default();
        x.family(
            "m_total",
            "counter",
            "Help.",
            vec![(vec![("k", "v\"".to_string())], 3.0)],
        );
        x.family("empty", "gauge", "Skipped.", Vec::new());
        x.family("g", "gauge", "G.", vec![(Labels::new(), f64::NAN)]);
        let text = x.finish();
        assert_eq!(
            text,
            "# HELP m_total Help.\n# TYPE m_total counter\nm_total{k=\"v\\\"\"} 3\n# HELP g G.\n# TYPE g gauge\ng NaN\n"
        );
    }
}
