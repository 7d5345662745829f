//! Stream mirroring: push a live stream to a ranked list of endpoints over concurrent QUIC
//! connections and fail over between them without losing or duplicating a chunk.
//!
//! - [`health`] — per-endpoint RTT/RTTVar, loss, delivered bandwidth and the degradation rule.
//! - [`machine`] — the sans-IO failover machine: states, ranking, replay buffer, pacing.
//! - [`sender`] — the tokio driver: one QUIC endpoint and connection per receiver (so each can
//!   migrate alone), probes as QUIC datagrams, chunks on one bidirectional stream.
//!
//! Receivers are [`Receiver`] (ALPN `shoal-mirror/1`). Senders authenticate with
//! a client certificate issued by the cluster CA (mutual TLS); see `PROTOCOL.md` section 9.

pub mod health;
pub mod machine;
pub mod receiver;
pub mod sender;

use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use health::HealthConfig;
pub use machine::{EndpointState, Event, Mirror, MirrorSnapshot, PushError, SwitchCause};
pub use receiver::{ReceivedStats, Receiver, ReceiverEvent, ReceiverOptions, StatsHandle};
pub use sender::{ConnectError, MirrorSender, SenderError, SenderOptions};

/// The TLS identity mirrors present to receivers (mutual TLS, `PROTOCOL.md` section 9).
#[derive(Clone)]
pub struct MirrorIdentity {
    /// TLS name the receivers' certificates must carry (the cluster name).
    pub server_name: String,
    /// CA the receivers' certificates chain to.
    pub ca: Vec<rustls::pki_types::CertificateDer<'static>>,
    /// Client certificate chain and key, issued by the CA the receivers trust.
    pub chain: Vec<rustls::pki_types::CertificateDer<'static>>,
    pub key: std::sync::Arc<rustls::pki_types::PrivateKeyDer<'static>>,
    /// Local IP of the mirrors' sockets.
    pub bind_ip: std::net::IpAddr,
}

impl MirrorIdentity {
    /// A sender of `stream` presenting this identity, with `config`.
    pub fn sender_options(
        &self,
        stream: crate::ids::StreamName,
        config: MirrorConfig,
    ) -> SenderOptions {
        let mut opts = SenderOptions::new(
            stream,
            self.server_name.clone(),
            self.ca.clone(),
            self.chain.clone(),
            self.key.clone_key(),
        );
        opts.config = config;
        opts.bind_ip = self.bind_ip;
        opts
    }
}

impl std::fmt::Debug for MirrorIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MirrorIdentity")
            .field("server_name", &self.server_name)
            .field("bind_ip", &self.bind_ip)
            .finish_non_exhaustive()
    }
}

/// ALPN of mirror receivers.
pub const MIRROR_ALPN: &[u8] = b"shoal-mirror/1";
/// Most endpoints one mirrored stream may have.
pub const MAX_ENDPOINTS: usize = 32;

/// An endpoint of one mirror, stable while it is in the list (its rank may change).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct EndpointId(pub u32);

impl std::fmt::Display for EndpointId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ep-{}", self.0)
    }
}

/// One active endpoint at a time, or all of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    #[default]
    Failover,
    Broadcast,
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Mode::Failover => "failover",
            Mode::Broadcast => "broadcast",
        })
    }
}

/// What happens when the provider produces faster than an active endpoint takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Overflow {
    /// Back-pressure: the provider waits.
    #[default]
    Block,
    /// The oldest unsent chunks are dropped (the receiver gets a `gap`).
    DropOldest,
    /// Queued chunks superseded by a newer one with the same key are skipped (and reported
    /// as a `gap`); beyond the limit the oldest are dropped.
    Conflate,
}

impl std::str::FromStr for Mode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "failover" => Ok(Mode::Failover),
            "broadcast" => Ok(Mode::Broadcast),
            _ => Err(format!("unknown mode {s:?} (failover or broadcast)")),
        }
    }
}

impl std::str::FromStr for Overflow {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "block" => Ok(Overflow::Block),
            "drop-oldest" => Ok(Overflow::DropOldest),
            "conflate" => Ok(Overflow::Conflate),
            _ => Err(format!(
                "unknown overflow policy {s:?} (block, drop-oldest or conflate)"
            )),
        }
    }
}

/// A duration as the mirror settings (and `shoal mirror start --revert-after`) take it:
/// `250ms`, `5s`, `1m`, `1m30s`, `2h` (under a day).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    health::humantime_ser::parse(text)
}

/// Settings of one mirrored stream. Every field has a default.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MirrorConfig {
    pub mode: Mode,
    pub overflow: Overflow,
    /// Switch back to a higher-ranked endpoint once it has been healthy this long; `None`:
    /// stay on the current one.
    #[serde(with = "opt_duration")]
    pub revert_after: Option<Duration>,
    pub health: HealthConfig,
    /// Probes (heartbeats) to every connected endpoint, standbys too.
    #[serde(with = "health::humantime_ser")]
    pub probe_interval: Duration,
    /// Chunks kept for replay after a failover.
    pub buffer_chunks: usize,
    /// Chunks that may wait for one active endpoint before the overflow policy applies.
    pub max_pending: usize,
    /// A degraded endpoint's connection is dropped and made anew after this long.
    #[serde(with = "health::humantime_ser")]
    pub reconnect_after: Duration,
    /// Bounds of the adaptive per-endpoint send rate, bytes/s.
    pub min_rate_bps: u64,
    pub max_rate_bps: u64,
}

impl Default for MirrorConfig {
    fn default() -> Self {
        Self {
            mode: Mode::Failover,
            overflow: Overflow::Block,
            revert_after: Some(Duration::from_secs(5)),
            health: HealthConfig::default(),
            probe_interval: Duration::from_millis(20),
            buffer_chunks: 8192,
            max_pending: 4096,
            reconnect_after: Duration::from_secs(3),
            min_rate_bps: 64 * 1024,
            max_rate_bps: 1 << 30,
        }
    }
}

mod opt_duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => super::health::humantime_ser::serialize(d, s),
            None => s.serialize_str("never"),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        let text = String::deserialize(d)?;
        if text == "never" {
            return Ok(None);
        }
        super::health::humantime_ser::parse(&text)
            .map(Some)
            .map_err(serde::de::Error::custom)
    }
}

impl MirrorConfig {
    pub fn validate(&self) -> Result<(), MirrorError> {
        let bad = |m: &str| Err(MirrorError::InvalidConfig(m.to_string()));
        if self.buffer_chunks == 0 || self.buffer_chunks > 1 << 20 {
            return bad("buffer_chunks must be in 1..=1048576");
        }
        if self.max_pending == 0 || self.max_pending > self.buffer_chunks {
            return bad("max_pending must be in 1..=buffer_chunks");
        }
        if self.probe_interval < Duration::from_millis(1) {
            return bad("probe_interval must be at least 1ms");
        }
        if self.probe_interval * 2 > self.health.silence_floor {
            return bad("probe_interval must be at most half of health.silence_floor, or idle standbys would look silent");
        }
        if !(self.health.max_loss > 0.0 && self.health.max_loss <= 1.0) {
            return bad("health.max_loss must be in (0, 1]");
        }
        if self.health.window < Duration::from_millis(10) {
            return bad("health.window must be at least 10ms");
        }
        if self.min_rate_bps == 0 || self.min_rate_bps > self.max_rate_bps {
            return bad("min_rate_bps must be in 1..=max_rate_bps");
        }
        Ok(())
    }
}

/// Why a mirror operation was refused. Every variant is a clear API error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MirrorError {
    #[error("the endpoint list is empty")]
    NoEndpoints,
    #[error("endpoint {0} is listed twice")]
    DuplicateEndpoint(SocketAddr),
    #[error("at most {0} endpoints per mirror")]
    TooManyEndpoints(usize),
    #[error("no endpoint {0} in this mirror")]
    UnknownEndpoint(EndpointId),
    #[error("cannot remove the last endpoint: the stream would have nowhere to go (stop the mirror instead)")]
    LastEndpoint,
    #[error("cannot remove {0}: it carries the stream and no other endpoint is connected and healthy to take over")]
    NoStandby(EndpointId),
    #[error("invalid mirror configuration: {0}")]
    InvalidConfig(String),
    #[error("the mirror has stopped")]
    Stopped,
}
