//! One admitted session, as a state machine: what a shard does with each frame a client sends
//! on its attach stream, and when the session must send a heartbeat or end.
//!
//! Sans-IO: inputs are `handle_*(…, now)`, the driver (`super::conn`) carries out the returned
//! [`Action`] and asks [`SessionCore::poll_timeout`] when to call
//! [`SessionCore::handle_timeout`]. An error is the code the connection closes with.
//!
//! ```text
//!  attach in 0-RTT ──► Provisional ──handshake complete──► Open ──bind ok──► Bound ──publish──► Publishing
//!  attach after the handshake ─────────────────────────────┘
//! ```
//!
//! - **Provisional**: admitted from 0-RTT data before the handshake completed. A copy of a
//!   client's first flight looks exactly like this and never completes, so nothing is
//!   committed yet: it may subscribe (its 0.5-RTT answers are encrypted for the real client
//!   only), but it reports no outcome and ends with `TIMEOUT` if the handshake does not
//!   complete by its deadline.
//! - `subscribe` is taken once in any state; `bind` once after the handshake (the exporter
//!   exists only then); `publish` needs `Bound`; chunks need `Publishing`.
//! - Liveness: a session that hears nothing for four heartbeat intervals ends with
//!   `HEARTBEAT_TIMEOUT`; one that sent nothing for an interval sends a heartbeat.

use std::time::{Duration, Instant};

use crate::ids::{Seq, StreamName};
use crate::wire::{Chunk, ErrorCode, Frame, Message};

/// Where a session stands (see the module doc).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Provisional { deadline: Instant },
    Open,
    Bound,
    Publishing,
}

/// What the driver must do for a frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Nothing (a heartbeat).
    None,
    /// Start the session's cursor on `stream`.
    Subscribe {
        stream: StreamName,
        from: Option<Seq>,
        /// The client asked for `stream_end`.
        stream_end: bool,
    },
    /// Check the bind MAC against this connection's exporter, once the handshake completed,
    /// then call [`SessionCore::handle_bind_checked`].
    CheckBind { mac: Vec<u8> },
    /// Take chunks for `stream` from now on.
    Publish { stream: StreamName },
    /// A published chunk to add to the stream.
    Chunk(Chunk),
}

/// What is due at a timeout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Due {
    Nothing,
    Heartbeat,
}

/// The session's decisions (see the module doc).
#[derive(Debug)]
pub struct SessionCore {
    state: State,
    subscribed: Option<StreamName>,
    published: Option<StreamName>,
    heartbeat: Duration,
    last_rx: Instant,
    last_tx: Instant,
}

impl SessionCore {
    /// A session admitted at `now`; `provisional_until` when the attach came in 0-RTT data
    /// before the handshake completed.
    pub fn new(now: Instant, heartbeat: Duration, provisional_until: Option<Instant>) -> Self {
        Self {
            state: match provisional_until {
                Some(deadline) => State::Provisional { deadline },
                None => State::Open,
            },
            subscribed: None,
            published: None,
            heartbeat,
            last_rx: now,
            last_tx: now,
        }
    }

    pub fn state(&self) -> State {
        self.state
    }

    /// Whether the handshake completed (a provisional session is not committed).
    pub fn is_confirmed(&self) -> bool {
        !matches!(self.state, State::Provisional { .. })
    }

    /// The stream subscribed to and the stream published to, if any (for the outcome).
    pub fn roles(&self) -> (Option<&StreamName>, Option<&StreamName>) {
        (self.subscribed.as_ref(), self.published.as_ref())
    }

    pub fn handle_handshake_complete(&mut self) {
        if let State::Provisional { .. } = self.state {
            self.state = State::Open;
        }
    }

    /// A frame from the client.
    pub fn handle_frame(&mut self, frame: Frame, now: Instant) -> Result<Action, ErrorCode> {
        self.last_rx = now;
        match (frame, self.state) {
            (Frame::Control(Message::Heartbeat(_)), _) => Ok(Action::None),
            (Frame::Control(Message::Subscribe(s)), _) => {
                if self.subscribed.is_some() {
                    return Err(ErrorCode::ProtocolViolation);
                }
                self.subscribed = Some(s.stream.clone());
                Ok(Action::Subscribe {
                    stream: s.stream,
                    from: s.from_seq,
                    stream_end: s.stream_end,
                })
            }
            (Frame::Control(Message::Bind(b)), State::Provisional { .. } | State::Open) => {
                Ok(Action::CheckBind { mac: b.mac })
            }
            (Frame::Control(Message::Bind(_)), _) => Err(ErrorCode::ProtocolViolation),
            (Frame::Control(Message::Publish(p)), State::Bound) => {
                if p.stream.is_synthetic() {
                    return Err(ErrorCode::UnknownStream);
                }
                self.state = State::Publishing;
                self.published = Some(p.stream.clone());
                Ok(Action::Publish { stream: p.stream })
            }
            // One stream per session.
            (Frame::Control(Message::Publish(_)), State::Publishing) => {
                Err(ErrorCode::UnknownStream)
            }
            (Frame::Control(Message::Publish(_)), _) => Err(ErrorCode::NotBound),
            (Frame::Chunk(c), State::Publishing) => Ok(Action::Chunk(c)),
            (Frame::Chunk(_), State::Bound) => Err(ErrorCode::ProtocolViolation),
            (Frame::Chunk(_), _) => Err(ErrorCode::NotBound),
            (Frame::Control(_), _) => Err(ErrorCode::ProtocolViolation),
        }
    }

    /// The driver checked a bind (after the handshake completed).
    pub fn handle_bind_checked(&mut self, ok: bool) -> Result<(), ErrorCode> {
        match (self.state, ok) {
            (State::Open, true) => {
                self.state = State::Bound;
                Ok(())
            }
            (State::Open, false) => Err(ErrorCode::BindInvalid),
            // Not reachable through `handle_frame`; refused rather than trusted.
            _ => Err(ErrorCode::ProtocolViolation),
        }
    }

    /// The driver wrote something to the client.
    pub fn handle_sent(&mut self, now: Instant) {
        self.last_tx = now;
    }

    /// When [`SessionCore::handle_timeout`] must run next.
    pub fn poll_timeout(&self) -> Instant {
        let mut at = (self.last_rx + self.heartbeat * 4).min(self.last_tx + self.heartbeat);
        if let State::Provisional { deadline } = self.state {
            at = at.min(deadline);
        }
        at
    }

    pub fn handle_timeout(&mut self, now: Instant) -> Result<Due, ErrorCode> {
        if let State::Provisional { deadline } = self.state {
            if now >= deadline {
                return Err(ErrorCode::Timeout);
            }
        }
        if now.saturating_duration_since(self.last_rx) > self.heartbeat * 4 {
            return Err(ErrorCode::HeartbeatTimeout);
        }
        if now.saturating_duration_since(self.last_tx) >= self.heartbeat {
            return Ok(Due::Heartbeat);
        }
        Ok(Due::Nothing)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{Bind, Heartbeat, Publish, Subscribe};

    const HB: Duration = Duration::from_millis(100);

    fn stream(n: &str) -> StreamName {
        StreamName::new(n).unwrap()
    }

    fn sub(n: &str) -> Frame {
        Frame::Control(Message::Subscribe(Subscribe {
            stream: stream(n),
            from_seq: None,
            stream_end: false,
        }))
    }

    fn publish(n: &str) -> Frame {
        Frame::Control(Message::Publish(Publish { stream: stream(n) }))
    }

    fn bind() -> Frame {
        Frame::Control(Message::Bind(Bind { mac: vec![1; 32] }))
    }

    fn chunk() -> Frame {
        Frame::Chunk(Chunk {
            seq: Seq::new(1),
            timestamp_us: 0,
            payload: bytes::Bytes::from_static(b"x"),
        })
    }

    #[test]
    fn publishing_needs_a_bind_after_the_handshake() {
        let t = crate::clock::now();
        let mut s = SessionCore::new(t, HB, Some(t + Duration::from_secs(1)));
        assert!(!s.is_confirmed());
        assert_eq!(
            s.handle_frame(publish("live/a"), t),
            Err(ErrorCode::NotBound)
        );
        assert_eq!(s.handle_frame(chunk(), t), Err(ErrorCode::NotBound));
        assert!(matches!(
            s.handle_frame(bind(), t),
            Ok(Action::CheckBind { .. })
        ));
        // The driver waits for the handshake before it checks.
        assert_eq!(
            s.handle_bind_checked(true),
            Err(ErrorCode::ProtocolViolation)
        );
        s.handle_handshake_complete();
        assert!(s.is_confirmed());
        s.handle_bind_checked(true).unwrap();
        assert_eq!(s.state(), State::Bound);
        assert_eq!(s.handle_frame(bind(), t), Err(ErrorCode::ProtocolViolation));
        assert_eq!(
            s.handle_frame(chunk(), t),
            Err(ErrorCode::ProtocolViolation)
        );
        assert_eq!(
            s.handle_frame(publish("synth/x"), t),
            Err(ErrorCode::UnknownStream)
        );
        assert!(matches!(
            s.handle_frame(publish("live/a"), t),
            Ok(Action::Publish { .. })
        ));
        assert!(matches!(s.handle_frame(chunk(), t), Ok(Action::Chunk(_))));
        assert_eq!(
            s.handle_frame(publish("live/b"), t),
            Err(ErrorCode::UnknownStream)
        );
        assert_eq!(s.roles().1, Some(&stream("live/a")));
    }

    #[test]
    fn a_wrong_bind_and_a_second_subscribe_are_refused() {
        let t = crate::clock::now();
        let mut s = SessionCore::new(t, HB, None);
        assert!(matches!(
            s.handle_frame(sub("synth/a"), t),
            Ok(Action::Subscribe { .. })
        ));
        assert_eq!(
            s.handle_frame(sub("synth/b"), t),
            Err(ErrorCode::ProtocolViolation)
        );
        assert_eq!(s.handle_bind_checked(false), Err(ErrorCode::BindInvalid));
        let hb = Frame::Control(Message::Heartbeat(Heartbeat { at_us: 1 }));
        assert_eq!(s.handle_frame(hb, t), Ok(Action::None));
        let other = Frame::Control(Message::Bound(crate::wire::Bound {}));
        assert_eq!(s.handle_frame(other, t), Err(ErrorCode::ProtocolViolation));
    }

    #[test]
    fn a_provisional_session_ends_when_its_handshake_never_completes() {
        let t = crate::clock::now();
        let deadline = t + Duration::from_millis(250);
        let mut s = SessionCore::new(t, HB, Some(deadline));
        assert!(s.poll_timeout() <= t + HB);
        assert_eq!(s.handle_timeout(t + HB), Ok(Due::Heartbeat));
        s.handle_sent(t + HB);
        s.handle_frame(sub("synth/a"), t + HB).unwrap();
        assert_eq!(s.handle_timeout(deadline), Err(ErrorCode::Timeout));
        // Confirmed in time: no deadline any more.
        let mut s = SessionCore::new(t, HB, Some(deadline));
        s.handle_handshake_complete();
        s.handle_frame(sub("synth/a"), t + Duration::from_millis(200))
            .unwrap();
        s.handle_sent(t + Duration::from_millis(300));
        assert_eq!(s.handle_timeout(deadline + HB), Ok(Due::Nothing));
    }

    #[test]
    fn silence_for_four_intervals_ends_the_session() {
        let t = crate::clock::now();
        let mut s = SessionCore::new(t, HB, None);
        s.handle_sent(t + HB * 4);
        assert_eq!(s.handle_timeout(t + HB * 4), Ok(Due::Nothing));
        assert_eq!(
            s.handle_timeout(t + HB * 4 + Duration::from_millis(1)),
            Err(ErrorCode::HeartbeatTimeout)
        );
        assert_eq!(s.poll_timeout(), t + HB * 4);
    }
}
