//! The networked link: the contract's messages over QUIC (`shoal-ctl/1`, mutual TLS), so a
//! shard can run in another process on another host.
//!
//! One connection per shard, opened by the shard; one bidirectional stream, opened by the
//! shard, carries every message both ways as frames of `length:u32be | MessagePack` (at most
//! [`MAX_FRAME`] bytes). Both ends present certificates from the cluster CA. The first frame
//! is the shard's `register`; the hub's first frame is the group's `keys`, which is also the
//! shard's sign that it is registered. A refusal closes the connection with a [`CloseCode`].
//!
//! Each end turns its connection into the in-process channel ends of [`super::channel`], so
//! the hub's [`Links`] and the shard's agent are the same code whether a shard is embedded or
//! remote. The hub's end is [`ControlServer`]; the shard's is [`run_bridge`], which also
//! carries the policy of a shard that lost its hub: reconnect with capped backoff, re-register,
//! and queue session outcomes (bounded, counted) until then.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;

mod bridge;
mod control;

pub use bridge::{run_bridge, BridgeCounters, BridgeError, BridgeOptions, Dialer};
pub use control::{ControlCounters, ControlServer};

use crate::hub::directory::DirectoryError;
use crate::hub::links::Refused;

/// ALPN of the control link.
pub const CTL_ALPN: &[u8] = b"shoal-ctl/1";
/// Largest frame either end accepts (a `prepare` with a client's entries is a few KiB).
pub const MAX_FRAME: usize = 1 << 20;
/// Each end sends a QUIC PING this often when it has nothing else to send…
pub const KEEP_ALIVE: Duration = Duration::from_millis(500);
/// …and a connection silent this long is gone (a killed shard, a partitioned hub).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(5);
/// Handshake, first stream and registration must each come within this.
pub const SETUP_TIMEOUT: Duration = Duration::from_secs(5);
/// A write gathers what queued, up to about this many bytes (hub) or messages (shard).
pub(crate) const COALESCE_BYTES: usize = 64 * 1024;
pub(crate) const COALESCE_MESSAGES: usize = 256;
/// Reports (load, session outcomes, entries) one link may send per second, with bursts of
/// twice that; more are dropped and counted (a flooding shard costs its own reports only).
pub const REPORT_BUDGET: f64 = 20_000.0;

/// Why a control connection was closed (its QUIC application error code).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum CloseCode {
    /// The link ended normally (drained, or the other end went away on purpose).
    Done,
    /// The shard speaks another link version.
    Version,
    /// Another live shard has this id.
    IdTaken,
    /// The first frame was not a registration (or a second one came).
    NotRegistered,
    /// A frame did not decode.
    Malformed,
    /// A frame was over [`MAX_FRAME`].
    TooLarge,
    /// The hub is shutting down (a shard reconnects later).
    HubStopping,
    /// The shard is stopping.
    ShardStopping,
}

impl CloseCode {
    pub const ALL: [CloseCode; 8] = [
        CloseCode::Done,
        CloseCode::Version,
        CloseCode::IdTaken,
        CloseCode::NotRegistered,
        CloseCode::Malformed,
        CloseCode::TooLarge,
        CloseCode::HubStopping,
        CloseCode::ShardStopping,
    ];

    pub fn as_u32(self) -> u32 {
        match self {
            CloseCode::Done => 0x0,
            CloseCode::Version => 0x1,
            CloseCode::IdTaken => 0x2,
            CloseCode::NotRegistered => 0x3,
            CloseCode::Malformed => 0x4,
            CloseCode::TooLarge => 0x5,
            CloseCode::HubStopping => 0x6,
            CloseCode::ShardStopping => 0x7,
        }
    }

    pub fn from_u64(v: u64) -> Option<CloseCode> {
        Self::ALL.into_iter().find(|c| u64::from(c.as_u32()) == v)
    }

    pub fn reason(self) -> &'static str {
        match self {
            CloseCode::Done => "done",
            CloseCode::Version => "link version not supported",
            CloseCode::IdTaken => "shard id already registered",
            CloseCode::NotRegistered => "register first, once",
            CloseCode::Malformed => "malformed frame",
            CloseCode::TooLarge => "frame too large",
            CloseCode::HubStopping => "hub stopping",
            CloseCode::ShardStopping => "shard stopping",
        }
    }

    /// Whether a shard refused with this code may try again later (the cause can go away).
    pub fn retryable(self) -> bool {
        matches!(
            self,
            CloseCode::Done | CloseCode::IdTaken | CloseCode::HubStopping
        )
    }

    pub(crate) fn close(self, conn: &quinn::Connection) {
        conn.close(self.as_u32().into(), self.reason().as_bytes());
    }
}

impl From<Refused> for CloseCode {
    fn from(r: Refused) -> Self {
        match r {
            Refused::NotRegistered => CloseCode::NotRegistered,
            Refused::Directory(DirectoryError::Version { .. }) => CloseCode::Version,
            Refused::Directory(_) => CloseCode::IdTaken,
        }
    }
}

/// Transport settings of the control link: keep-alives so that silence means death.
pub fn transport() -> Arc<quinn::TransportConfig> {
    let mut t = quinn::TransportConfig::default();
    t.keep_alive_interval(Some(KEEP_ALIVE));
    t.max_idle_timeout(Some(
        quinn::IdleTimeout::try_from(IDLE_TIMEOUT).expect("5 s is a valid idle timeout"),
    ));
    t.max_concurrent_bidi_streams(1u32.into());
    t.max_concurrent_uni_streams(0u32.into());
    Arc::new(t)
}

/// A frame could not be read or written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    #[error("frame of {0} bytes is over the {MAX_FRAME}-byte limit")]
    TooLarge(usize),
    #[error("malformed frame: {0}")]
    Malformed(String),
    #[error("stream: {0}")]
    Stream(String),
}

impl FrameError {
    pub(crate) fn code(&self) -> Option<CloseCode> {
        match self {
            FrameError::TooLarge(_) => Some(CloseCode::TooLarge),
            FrameError::Malformed(_) => Some(CloseCode::Malformed),
            FrameError::Stream(_) => None,
        }
    }
}

/// Encodes one frame.
pub fn frame<T: Serialize>(msg: &T) -> Vec<u8> {
    let body = super::encode(msg);
    let mut out = Vec::with_capacity(4 + body.len());
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(&body);
    out
}

pub(crate) async fn write_frame<T: Serialize>(
    send: &mut quinn::SendStream,
    msg: &T,
) -> Result<(), FrameError> {
    send.write_all(&frame(msg))
        .await
        .map_err(|e| FrameError::Stream(e.to_string()))
}

/// Reads one frame; `None` when the peer finished the stream cleanly between frames.
pub(crate) async fn read_frame<T: DeserializeOwned>(
    recv: &mut quinn::RecvStream,
    buf: &mut Vec<u8>,
) -> Result<Option<T>, FrameError> {
    let mut len = [0u8; 4];
    match recv.read_exact(&mut len).await {
        Ok(()) => {}
        Err(quinn::ReadExactError::FinishedEarly(0)) => return Ok(None),
        Err(e) => return Err(FrameError::Stream(e.to_string())),
    }
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_FRAME {
        return Err(FrameError::TooLarge(len));
    }
    buf.resize(len, 0);
    recv.read_exact(buf)
        .await
        .map_err(|e| FrameError::Stream(e.to_string()))?;
    super::decode(buf)
        .map(Some)
        .map_err(|e| FrameError::Malformed(e.to_string()))
}

/// Logs a cause at `warn` the first time, at `debug` after (a flood of one fault is one line).
#[derive(Default)]
pub(crate) struct OnceLog(Mutex<std::collections::HashSet<String>>);

impl OnceLog {
    pub(crate) fn first(&self, cause: &str) -> bool {
        crate::sync::lock(&self.0).insert(cause.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn close_codes_round_trip_and_say_whether_to_retry() {
        for c in CloseCode::ALL {
            assert_eq!(CloseCode::from_u64(u64::from(c.as_u32())), Some(c));
        }
        assert_eq!(CloseCode::from_u64(0x99), None);
        assert!(!CloseCode::Version.retryable());
        assert!(
            CloseCode::IdTaken.retryable(),
            "the old link may still be timing out"
        );
        assert!(CloseCode::HubStopping.retryable());
    }

    #[test]
    fn a_frame_is_its_length_then_the_message() {
        use crate::link::ShardMsg;
        let f = frame(&ShardMsg::Drained);
        let len = u32::from_be_bytes(f[..4].try_into().unwrap()) as usize;
        assert_eq!(len, f.len() - 4);
        assert_eq!(
            crate::link::decode::<ShardMsg>(&f[4..]).unwrap(),
            ShardMsg::Drained
        );
    }
}
