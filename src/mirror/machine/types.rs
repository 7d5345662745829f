//! The machine's vocabulary: endpoint states, switch causes, the events and transmits it
//! outputs, the push refusal, and the counters and snapshots the API shows. No decisions here;
//! what produces each value is in the sibling modules.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::ids::Seq;
use crate::metrics_hist::HistogramSnapshot;
use crate::mirror::health::{Degradation, HealthSnapshot};
use crate::mirror::{EndpointId, Mode, Overflow};
use crate::wire::Chunk;

/// The state of one endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EndpointState {
    /// No connection yet (or it was lost); the driver is connecting.
    Connecting,
    /// Connected, healthy, probed; not sent the stream (failover mode).
    Standby,
    /// Sent the stream.
    Active,
    /// Planned switch away from it: sent nothing new until it acknowledged what it has.
    Draining,
    /// Connected but failing the health rule; probed until it recovers.
    Degraded,
}

/// Why the active endpoint changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SwitchCause {
    /// The first endpoint became active.
    Initial,
    /// The active endpoint degraded or its connection closed.
    Failure,
    /// A higher-ranked endpoint recovered (revert policy).
    Revert,
    /// The active endpoint was removed.
    Removed,
}

impl std::fmt::Display for SwitchCause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SwitchCause::Initial => "initial",
            SwitchCause::Failure => "failure",
            SwitchCause::Revert => "revert",
            SwitchCause::Removed => "removed",
        })
    }
}

/// What the machine reports.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    Connected {
        ep: EndpointId,
    },
    Disconnected {
        ep: EndpointId,
    },
    Degraded {
        ep: EndpointId,
        reason: Degradation,
        /// Silence when declared, and the bound it crossed.
        silence: Duration,
        bound: Duration,
        srtt: Option<Duration>,
        rttvar: Duration,
        at: Instant,
    },
    Recovered {
        ep: EndpointId,
    },
    /// `to` is active from `from_seq` on.
    Switched {
        from: Option<EndpointId>,
        to: EndpointId,
        cause: SwitchCause,
        from_seq: Option<Seq>,
        at: Instant,
    },
    /// The new active endpoint acknowledged the first chunk it was sent after the switch.
    SwitchConfirmed {
        ep: EndpointId,
        seq: Seq,
        at: Instant,
    },
    /// No endpoint can take the stream; chunks wait in the buffer.
    NoEndpoint,
    /// The driver must close this endpoint's connection (with `EndpointRemoved` when `removed`,
    /// and then forget it; otherwise it reconnects).
    DropConnection {
        ep: EndpointId,
        removed: bool,
    },
    /// Chunks `from..to` will not reach `ep`: the buffer no longer holds them or the overflow
    /// policy dropped them. The receiver is told with a `gap` message.
    Gap {
        ep: EndpointId,
        from: Seq,
        to: Seq,
    },
}

/// What an endpoint's connection writes next.
#[derive(Debug, Clone, PartialEq)]
pub enum Transmit {
    Chunk(Chunk),
    Gap {
        from: Seq,
        to: Seq,
    },
    /// Nothing now; ask again at this time (or earlier when woken).
    Wait(Instant),
}

/// A refused push.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PushError {
    /// Overflow policy `block`: the active endpoint is too far behind; retry after it moved.
    #[error("the mirror's buffer is full (overflow policy block)")]
    Full,
    #[error("chunk {seq} is not after the newest pushed ({head})")]
    NotIncreasing { seq: Seq, head: Seq },
    /// A chunk at [`Seq::MAX`], which no chunk may carry (it has no successor; receivers
    /// refuse it with `SEQ_EXHAUSTED`).
    #[error("chunk at sequence {}, which has no successor", Seq::MAX)]
    SeqExhausted,
}

#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct EpCounters {
    pub chunks_sent: u64,
    pub bytes_sent: u64,
    pub replayed: u64,
    pub dropped: u64,
    pub conflated: u64,
    pub gap_chunks: u64,
    pub connects: u64,
    pub degradations: u64,
    pub activations: u64,
}

/// Counters of the whole mirror.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct MirrorCounters {
    pub pushed: u64,
    pub switches: u64,
    pub replayed: u64,
    pub dropped: u64,
    pub conflated: u64,
    pub gap_chunks: u64,
    pub blocked: u64,
}

/// An endpoint as the API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct EndpointSnapshot {
    pub id: EndpointId,
    pub addr: SocketAddr,
    pub rank: usize,
    pub state: EndpointState,
    pub state_for_ms: f64,
    pub health: HealthSnapshot,
    pub rate_bps: f64,
    pub acked_seq: Option<Seq>,
    pub next_seq: Option<Seq>,
    /// Chunks waiting to be sent to it.
    pub pending: u64,
    pub last_error: Option<String>,
    #[serde(flatten)]
    pub counters: EpCounters,
}

/// The mirror as the API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct MirrorSnapshot {
    pub mode: Mode,
    pub overflow: Overflow,
    pub head_seq: Option<Seq>,
    pub committed_seq: Option<Seq>,
    pub buffered: usize,
    /// Shown by the admin API as `{id, addr}` pairs (`MirrorView::active`).
    #[serde(skip)]
    pub active: Vec<EndpointId>,
    #[serde(flatten)]
    pub counters: MirrorCounters,
    pub endpoints: Vec<EndpointSnapshot>,
    pub failover: FailoverTimings,
}

/// How long the failovers of the active endpoint took (failover mode), as the machine saw
/// them: `shoal_mirror_failover_{detection,switch}_seconds`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct FailoverTimings {
    /// The failed active endpoint's last sign of life → its failure acted on (degraded, or its
    /// connection closed).
    pub detection: HistogramSnapshot,
    /// Failure acted on → the next active endpoint acknowledged the first chunk it was sent
    /// (the stream flows again).
    pub switch: HistogramSnapshot,
}
