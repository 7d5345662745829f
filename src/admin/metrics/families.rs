//! The families computed from one value per item (see the table in [`super`]'s doc): one
//! `(name, type, help, value)` row each. Families with labels of their own (rejections by
//! code, histograms, replication lag, endpoint states) are written in [`super::render`].

use std::sync::atomic::{AtomicU64, Ordering};

use crate::hub::directory::{ShardRecord, ShardState};
use crate::hub::HubCounters;
use crate::mirror::machine::EndpointSnapshot;
use crate::mirror::MirrorSnapshot;

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
        "shoal_shard_capacity",
        "gauge",
        "Most sessions the shard admits (from its registration).",
        |s| s.capacity as f64,
    ),
    (
        "shoal_shard_streams",
        "gauge",
        "Streams the shard holds.",
        |s| s.load.streams as f64,
    ),
    (
        "shoal_shard_committed_bytes_per_second",
        "gauge",
        "Sum of the expected rates (token expect_kbps) of the shard's open sessions.",
        |s| s.load.committed_kbps as f64 * 125.0,
    ),
    (
        "shoal_shard_bytes_sent_total",
        "counter",
        "Payload bytes the shard sent to subscribers.",
        |s| s.load.bytes_sent as f64,
    ),
    (
        "shoal_shard_cpu_seconds_total",
        "counter",
        "CPU time the shard's own tasks used, timed per poll by the monotonic clock (quinn's drivers are not charged).",
        |s| s.load.cpu_ns as f64 / 1e9,
    ),
    (
        "shoal_shard_zero_rtt_attaches_total",
        "counter",
        "Admitted attaches that arrived in 0-RTT data.",
        |s| s.load.zero_rtt_attaches as f64,
    ),
    (
        "shoal_shard_zero_rtt_attempted_total",
        "counter",
        "Connections that offered 0-RTT data: accepted ones, and those whose session ticket the shard did not hold (early data refused).",
        |s| s.load.zero_rtt_attempted as f64,
    ),
    (
        "shoal_shard_zero_rtt_accepted_total",
        "counter",
        "Connections whose early data the shard accepted (their handshake resumed a stored session).",
        |s| s.load.zero_rtt_accepted as f64,
    ),
];

fn load(a: &AtomicU64) -> f64 {
    a.load(Ordering::Relaxed) as f64
}
