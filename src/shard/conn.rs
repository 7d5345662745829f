//! The driver of one shard connection: it moves bytes between quinn, the admission decision
//! ([`super::admission`]) and the session's state machine ([`super::session`]).
//!
//! Per connection: accept with its own server configuration (so the tickets its handshake
//! issues are known to belong to this client) → the first frame of the first bidirectional
//! stream, within `attach_timeout`, must be an attach → admission → quota → the session runs
//! until the client finishes, a rule ends it, or the shard stops.
//!
//! A refusal or error decided before the handshake completed is closed only once the handshake
//! completed (bounded by `attach_timeout`): a CONNECTION_CLOSE sent earlier travels in
//! Handshake packets, where RFC 9000 §10.2.3 turns it into a transport `APPLICATION_ERROR`
//! without shoal's code, and the client could not tell a forged token from an expired one.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Waker};
use std::time::Duration;

use tracing::{debug, warn};

use super::session::{Action, Due, SessionCore};
use super::streams::{self, Item};
use super::{admit_limit, ShardState};
use crate::clock;
use crate::link::{ClientEntries, SessionOutcome, ShardMsg};
use crate::sync::WakeGate;
use crate::wire::{
    write_chunk, write_control, Attach, Attached, Bound, ErrorCode, Frame, FrameReader, Heartbeat,
    Message, WireError,
};

/// How long a session admitted from 0-RTT data waits, at most, for its handshake to complete
/// (a copied first flight never completes; the real client's retransmissions reach the shard
/// once that connection is gone).
pub const PROVISIONAL_TIMEOUT: Duration = Duration::from_secs(1);

/// The handshake's completion, watched for a whole connection.
struct Handshake(Option<quinn::ZeroRttAccepted>);

impl Handshake {
    /// Whether the handshake completed (never waits).
    fn is_complete(&mut self) -> bool {
        let Some(f) = &mut self.0 else { return true };
        let mut cx = Context::from_waker(Waker::noop());
        if Pin::new(f).poll(&mut cx).is_ready() {
            self.0 = None;
        }
        self.0.is_none()
    }

    /// Resolves when the handshake completed (at once if it did). Cancel-safe: the watch is
    /// kept until it resolved.
    async fn complete(&mut self) {
        if let Some(f) = &mut self.0 {
            f.await;
            self.0 = None;
        }
    }
}

/// Closes `conn` with `code`, after the handshake completed (at most `wait`), so the close
/// carries the code.
async fn close_with(conn: &quinn::Connection, code: ErrorCode, hs: &mut Handshake, wait: Duration) {
    if !hs.is_complete() {
        let _ = tokio::time::timeout(wait, hs.complete()).await;
    }
    conn.close(code.varint(), code.reason().as_bytes());
}

async fn refuse(state: &ShardState, conn: &quinn::Connection, code: ErrorCode, hs: &mut Handshake) {
    state.counters.reject(code);
    debug!(%code, "refused");
    close_with(conn, code, hs, state.attach_timeout).await;
}

/// Decrements the open-session gauge when a session ends, however it ends.
struct SessionGuard(Arc<ShardState>, u64);

impl Drop for SessionGuard {
    fn drop(&mut self) {
        let c = &self.0.counters;
        c.sessions.fetch_sub(1, Ordering::Relaxed);
        c.committed_kbps.fetch_sub(self.1, Ordering::Relaxed);
        self.0.load_changed.notify_one();
    }
}

/// An admitted session, ready to run, and what its end is reported with.
struct Admitted {
    session: Session,
    zero_rtt: bool,
    client: crate::ids::ClientId,
    grant: crate::ids::TokenId,
    now_ms: u64,
    started: std::time::Instant,
    _guard: SessionGuard,
}

/// Serves one connection; `permit` (the handshake guard's) is held until its attach arrived.
///
/// A task's future is as large as its largest state, and an async fn keeps its arguments
/// twice: so admission and the session are two futures awaited one after the other, and what
/// passes between them (the `Incoming`, the admitted session) is boxed. Admission's future is
/// boxed too, for its length only (it is the larger of the two). An idle session then costs
/// its `Session` and its run loop, not also what admission held across its awaits.
pub(super) async fn serve(
    state: Arc<ShardState>,
    incoming: Box<quinn::Incoming>,
    permit: crate::guard::Permit,
) -> Result<(), quinn::ConnectionError> {
    if let Some(a) = Box::pin(admit(&state, incoming, permit)).await? {
        a.serve(&state).await;
    }
    Ok(())
}

impl Admitted {
    /// Runs the session, closes the connection with its code and reports it.
    async fn serve(mut self: Box<Self>, state: &ShardState) {
        let code = self.session.run(self.zero_rtt).await;
        let session = &mut self.session;
        session.store.flush();
        if code != ErrorCode::NoError {
            state.counters.reject(code);
        }
        close_with(
            &session.conn,
            code,
            &mut session.hs,
            Duration::from_millis(200),
        )
        .await;
        if !session.core.is_confirmed() {
            // Never committed: a copied first flight, or a client that vanished mid-handshake.
            state
                .counters
                .provisional_expired
                .fetch_add(1, Ordering::Relaxed);
            return;
        }
        // One report per role the session took (a session may both publish and subscribe).
        let duration_ms = u64::try_from(clock::since(self.started).as_millis()).unwrap_or(u64::MAX);
        let (subscribed, published) = session.core.roles();
        for (role, named, bytes) in [
            (crate::wire::Role::Subscribe, subscribed, session.delivered),
            (crate::wire::Role::Publish, published, session.accepted),
        ] {
            if let Some(stream) = named {
                state.uplink.report(ShardMsg::SessionEnded(SessionOutcome {
                    client: self.client.clone(),
                    grant: self.grant,
                    stream: stream.clone(),
                    role,
                    started_ms: self.now_ms,
                    duration_ms,
                    bytes,
                }));
            }
        }
    }
}

/// The handshake, the first frame and the admission decision; `None` when the connection was
/// refused (and closed with its code).
async fn admit(
    state: &Arc<ShardState>,
    incoming: Box<quinn::Incoming>,
    permit: crate::guard::Permit,
) -> Result<Option<Box<Admitted>>, quinn::ConnectionError> {
    let (config, conn_store) = match state.configs.for_connection() {
        Ok(c) => c,
        Err(e) => {
            warn!(error = %e, "no server configuration for a connection");
            (*incoming).refuse();
            return Ok(None);
        }
    };
    // The attach latency runs from here (the connection accepted) to the attach admitted.
    let accepted = clock::now();
    let connecting = (*incoming).accept_with(config)?;
    // A server can always answer in 0.5-RTT; `handshake` resolves when the handshake completes.
    let (conn, mut hs) = match connecting.into_0rtt() {
        Ok((conn, accepted)) => (conn, Handshake(Some(accepted))),
        Err(connecting) => (connecting.await?, Handshake(None)),
    };
    let first = tokio::time::timeout(state.attach_timeout, async {
        let (send, recv) = conn.accept_bi().await?;
        let mut reader = FrameReader::new(recv);
        let frame = reader.next().await;
        Ok::<_, quinn::ConnectionError>((send, reader, frame))
    })
    .await;
    drop(permit);
    let (send, reader, frame) = match first {
        Err(_) => {
            refuse(state, &conn, ErrorCode::Timeout, &mut hs).await;
            return Ok(None);
        }
        Ok(r) => r?,
    };
    // A whole first frame: this client's tickets may be stored (see `ConnStore::commit`).
    if matches!(frame, Ok(Some(_))) {
        conn_store.commit();
    }
    // The handshake (its ClientHello) is behind us: whether it resumed, taking early data.
    if conn_store.resumed() {
        let c = &state.counters.zero_rtt_accepted;
        c.fetch_add(1, Ordering::Relaxed);
    }
    let attach: Attach = match frame {
        Ok(Some(Frame::Control(Message::Attach(a)))) => a,
        Ok(_) => {
            refuse(state, &conn, ErrorCode::ProtocolViolation, &mut hs).await;
            return Ok(None);
        }
        Err(e) => {
            refuse(state, &conn, e.code(), &mut hs).await;
            return Ok(None);
        }
    };
    let now_ms = clock::unix_ms();
    let checked = crate::sync::lock(&state.admission).check(&attach, now_ms);
    let claims = match checked {
        Ok(c) => c,
        Err(code) => {
            refuse(state, &conn, code, &mut hs).await;
            return Ok(None);
        }
    };
    if !state.alive.load(Ordering::Relaxed) {
        // Draining or stopped: the client moves on to the next shard of its grant.
        refuse(state, &conn, ErrorCode::GoingAway, &mut hs).await;
        return Ok(None);
    }
    let c = &state.counters;
    let limit = admit_limit(state.max_sessions, claims.priority);
    if c.sessions.fetch_add(1, Ordering::Relaxed) >= limit {
        c.sessions.fetch_sub(1, Ordering::Relaxed);
        refuse(state, &conn, ErrorCode::OverQuota, &mut hs).await;
        return Ok(None);
    }
    let kbps = u64::from(claims.expect_kbps);
    c.committed_kbps.fetch_add(kbps, Ordering::Relaxed);
    let _guard = SessionGuard(state.clone(), kbps);
    state.load_changed.notify_one();
    c.allocations.fetch_add(1, Ordering::Relaxed);
    let admitted = clock::now();
    c.attach_seconds
        .observe(admitted.saturating_duration_since(accepted));
    // The handshake resumed a stored session: rustls accepted the client's early data, which
    // is where the protocol puts the attach.
    let zero_rtt = conn_store.resumed();
    if zero_rtt {
        c.zero_rtt_attaches.fetch_add(1, Ordering::Relaxed);
    }
    // The tickets this handshake issues belong to the client: the hub copies them where the
    // client goes next.
    let (up, client) = (state.uplink.clone(), claims.client.clone());
    conn_store.bind(Arc::new(move |entries| {
        up.report(ShardMsg::Entries(ClientEntries {
            client: client.clone(),
            entries,
        }));
    }));
    let started = clock::now();
    let provisional = (!hs.is_complete()).then(|| started + PROVISIONAL_TIMEOUT);
    if provisional.is_none() {
        // Completed meanwhile: its tickets are in already.
        conn_store.flush();
    }
    debug!(token = ?claims.id, client = %claims.client, zero_rtt, provisional = provisional.is_some(), "admitted");
    let session = Session {
        state: state.clone(),
        conn: conn.clone(),
        send,
        reader,
        secret: claims.secret,
        hs,
        store: conn_store.clone(),
        core: SessionCore::new(started, state.heartbeat, provisional),
        publishing: None,
        orphan_until: None,
        delivered: 0,
        accepted: 0,
        admitted,
        first_chunk: false,
        sent_end: false,
        wants_end: false,
    };
    Ok(Some(Box::new(Admitted {
        session,
        zero_rtt,
        client: claims.client,
        grant: claims.id,
        now_ms,
        started,
        _guard,
    })))
}

/// The I/O of one admitted session; its decisions are in `core`.
/// How long a resume on a live stream this shard holds no copy of waits for a chunk (a
/// publisher failing over to here), in heartbeat intervals.
pub const ORPHAN_WAIT_HEARTBEATS: u32 = 10;

struct Session {
    state: Arc<ShardState>,
    conn: quinn::Connection,
    send: quinn::SendStream,
    /// A field, not an argument of the run loop: an async fn keeps its arguments twice.
    reader: FrameReader<quinn::RecvStream>,
    secret: [u8; 32],
    hs: Handshake,
    /// This connection's view of the shard's session store.
    store: Arc<crate::tickets::conn::ConnStore>,
    core: SessionCore,
    publishing: Option<streams::Publishing>,
    /// A resume on a live stream this shard held no copy of: unless a chunk comes by then, the
    /// session ends with `UNKNOWN_STREAM` (every copy is gone; see [`ORPHAN_WAIT_HEARTBEATS`]).
    orphan_until: Option<tokio::time::Instant>,
    /// Payload bytes delivered to the subscriber and accepted from the publisher.
    delivered: u64,
    accepted: u64,
    /// When the attach was admitted, and whether a chunk went out since (the first one is
    /// timed).
    admitted: std::time::Instant,
    first_chunk: bool,
    /// `stream_end` went out and the send side is finished: nothing more is written.
    sent_end: bool,
    /// The subscriber asked for `stream_end` (`subscribe.stream_end`).
    wants_end: bool,
}

impl Session {
    /// Serves the session until it ends; returns the code to close with. When the session
    /// ends in an error, what was already written (the `attached`, say) gets a moment to
    /// reach the client before the connection closes.
    async fn run(&mut self, zero_rtt: bool) -> ErrorCode {
        let code = self.serve_frames(zero_rtt).await;
        if code != ErrorCode::NoError && self.send.finish().is_ok() {
            let _ = tokio::time::timeout(Duration::from_millis(100), self.send.stopped()).await;
        }
        code
    }

    async fn serve_frames(&mut self, zero_rtt: bool) -> ErrorCode {
        // Subscribed before `attached` goes out: a drain that starts meanwhile is seen.
        let mut go_away = self.state.go_away.subscribe();
        // In its own scope: the message is not kept in the future while the loop runs.
        {
            let attached = Message::Attached(Attached {
                shard: self.state.id,
                zero_rtt,
                load_permille: Some(self.load_permille()),
            });
            if self.control(&attached).await.is_err() {
                return ErrorCode::NoError;
            }
        }
        if go_away.borrow().is_some() {
            go_away.mark_changed();
        }
        // Kept across turns of the loop, like the timer: it waits on the channel once.
        let go_away = next_go_away(go_away);
        tokio::pin!(go_away);
        // One task per session, reading and writing in one loop (`FrameReader::next` is
        // cancel-safe). `biased`: a go-away goes out first; frames already received are read
        // before the timers run, so a session that was busy writing does not mistake queued
        // heartbeats for silence; timers come before chunks, so a busy stream cannot starve
        // them.
        let mut cursor: Option<streams::Cursor> = None;
        // One timer for the session, for its heartbeats and liveness and for the wait of a
        // resume no copy of whose stream is here. Each chunk sent moves the heartbeat deadline
        // later; the timer is moved only when the deadline comes earlier or after it fired
        // (firing early is harmless: nothing is found due), not once per chunk.
        let timer =
            tokio::time::sleep_until(tokio::time::Instant::from_std(self.core.poll_timeout()));
        tokio::pin!(timer);
        // The control stream and the go-away wait are each polled only after it woke: a turn
        // per chunk sent would otherwise poll both, taking the connection's lock and the lock
        // of a channel every session shares.
        let (reading, leaving) = (WakeGate::new(), WakeGate::new());
        loop {
            let mut wake = tokio::time::Instant::from_std(self.core.poll_timeout());
            if let Some(orphan) = self.orphan_until {
                wake = wake.min(orphan);
            }
            if wake < timer.deadline() || (timer.is_elapsed() && wake != timer.deadline()) {
                timer.as_mut().reset(wake);
            }
            let confirmed = self.core.is_confirmed();
            tokio::select! {
                biased;
                (msg, rx) = leaving.gated(&mut go_away) => {
                    go_away.set(next_go_away(rx));
                    if let Some(g) = msg {
                        if self.control(&Message::GoAway(g)).await.is_err() {
                            return ErrorCode::NoError;
                        }
                    }
                }
                () = self.hs.complete(), if !confirmed => {
                    // The future also resolves when the connection dies mid-handshake.
                    if self.conn.close_reason().is_some() {
                        return ErrorCode::NoError;
                    }
                    self.core.handle_handshake_complete();
                    // The tickets rustls issued at completion go to the hub in one report.
                    self.store.flush();
                }
                frame = reading.gated(self.reader.next()) => {
                    let frame = match frame {
                        Ok(Some(f)) => f,
                        // The client finished its side: the session is over. A publisher's clean
                        // end (the last one of the stream) ends the stream for its subscribers.
                        Ok(None) => {
                            if let Some(p) = self.publishing.take() {
                                p.finish();
                            }
                            return ErrorCode::NoError;
                        }
                        Err(WireError::Io(_)) => return ErrorCode::NoError,
                        Err(e) => return e.code(),
                    };
                    let action = match self.core.handle_frame(frame, clock::now()) {
                        Ok(a) => a,
                        Err(code) => return code,
                    };
                    if let Err(code) = self.carry_out(action, &mut cursor).await {
                        return code;
                    }
                }
                () = &mut timer => {
                    if self.orphan_until.is_some_and(|o| clock::tokio_now() >= o) {
                        debug!("resume on a live stream no copy of which is here; nothing came");
                        return ErrorCode::UnknownStream;
                    }
                    match self.core.handle_timeout(clock::now()) {
                        Err(code) => return code,
                        Ok(Due::Heartbeat) => {
                            let m = Message::Heartbeat(Heartbeat { at_us: clock::unix_us() });
                            if self.control(&m).await.is_err() {
                                return ErrorCode::NoError;
                            }
                        }
                        Ok(Due::Nothing) => {}
                    }
                }
                item = next_item(&mut cursor) => {
                    let Some(item) = item else { return ErrorCode::UnknownStream };
                    self.orphan_until = None;
                    let end = matches!(item, Item::End { .. }) && self.wants_end;
                    if self.deliver(item).await.is_err() {
                        return ErrorCode::NoError;
                    }
                    if end {
                        // The session waits for the subscriber to close.
                        cursor = None;
                    }
                }
            }
        }
    }

    fn load_permille(&self) -> u32 {
        let sessions = self.state.counters.sessions.load(Ordering::Relaxed);
        let max = self.state.max_sessions.max(1);
        (sessions.saturating_mul(1000) / max).min(1000) as u32
    }

    async fn control(&mut self, msg: &Message) -> Result<(), quinn::WriteError> {
        self.core.handle_sent(clock::now());
        if self.sent_end {
            // The subscriber closes on `stream_end`; heartbeats no longer go out.
            return Ok(());
        }
        write_control(&mut self.send, msg).await
    }

    async fn deliver(&mut self, item: Item) -> Result<(), quinn::WriteError> {
        self.core.handle_sent(clock::now());
        let c = &self.state.counters;
        match item {
            Item::Chunk(chunk) => {
                write_chunk(&mut self.send, &chunk).await?;
                if !self.first_chunk {
                    self.first_chunk = true;
                    c.first_chunk_seconds.observe(clock::since(self.admitted));
                }
                let len = chunk.payload.len() as u64;
                self.delivered += len;
                c.chunks_sent.fetch_add(1, Ordering::Relaxed);
                c.bytes_sent.fetch_add(len, Ordering::Relaxed);
            }
            Item::Gap { from, to } => {
                c.gaps_sent.fetch_add(1, Ordering::Relaxed);
                write_control(&mut self.send, &Message::Gap(crate::wire::Gap { from, to })).await?;
            }
            // A subscriber that did not ask for it keeps waiting, as before `stream_end`.
            Item::End { .. } if !self.wants_end => {}
            Item::End { last } => {
                let end = Message::StreamEnd(crate::wire::StreamEnd { last_seq: last });
                write_control(&mut self.send, &end).await?;
                // Nothing follows; the subscriber closes the connection.
                let _ = self.send.finish();
                self.sent_end = true;
            }
        }
        Ok(())
    }

    async fn carry_out(
        &mut self,
        action: Action,
        cursor: &mut Option<streams::Cursor>,
    ) -> Result<(), ErrorCode> {
        match action {
            Action::None => {}
            Action::Subscribe {
                stream,
                from,
                stream_end,
            } => {
                self.wants_end = stream_end;
                // No chunk of it held here (never published or mirrored here, or let go; a
                // warmed stream is empty). Without replication a resume waits, as before.
                let held = self
                    .state
                    .registry
                    .get(&stream)
                    .is_some_and(|s| s.last_seq().is_some());
                let mirrored = self.state.replication.is_some();
                if mirrored && from.is_some() && !stream.is_synthetic() && !held {
                    let wait = self.state.heartbeat * ORPHAN_WAIT_HEARTBEATS;
                    self.orphan_until = Some(clock::tokio_now() + wait);
                }
                *cursor = Some(
                    self.state
                        .registry
                        .subscribe(&stream, from, clock::unix_us()),
                );
            }
            Action::CheckBind { mac } => {
                // The exporter exists once the handshake is complete.
                if !self.core.is_confirmed() {
                    let wait = PROVISIONAL_TIMEOUT;
                    tokio::time::timeout(wait, self.hs.complete())
                        .await
                        .map_err(|_| ErrorCode::Timeout)?;
                    if self.conn.close_reason().is_some() {
                        return Err(ErrorCode::NoError);
                    }
                    self.core.handle_handshake_complete();
                    self.store.flush();
                }
                let ok = crate::security::proof::exporter(&self.conn).is_some_and(|e| {
                    crate::security::proof::verify_bind_mac(&self.secret, &e, &mac)
                });
                self.core.handle_bind_checked(ok)?;
                self.control(&Message::Bound(Bound {}))
                    .await
                    .map_err(|_| ErrorCode::NoError)?;
            }
            Action::Publish { stream } => {
                let live = self.state.registry.stream(&stream, clock::unix_us());
                // Counted first: the primary's mirroring never sees the stream unpublished.
                let publishing = streams::Publishing::new(live);
                if let Some(r) = &self.state.replication {
                    r.on_publisher(&self.state.registry, &publishing);
                }
                self.publishing = Some(publishing);
            }
            Action::Chunk(chunk) => {
                let len = chunk.payload.len() as u64;
                let stream = self
                    .publishing
                    .as_ref()
                    .ok_or(ErrorCode::ProtocolViolation)?;
                if stream.publish(chunk).map_err(streams::PublishError::code)? {
                    self.accepted += len;
                    self.state
                        .counters
                        .chunks_published
                        .fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        Ok(())
    }
}

/// The shard's next go-away message, and the receiver to wait for the one after; never
/// resolves once the shard is gone.
async fn next_go_away(
    mut rx: tokio::sync::watch::Receiver<Option<crate::wire::GoAway>>,
) -> (
    Option<crate::wire::GoAway>,
    tokio::sync::watch::Receiver<Option<crate::wire::GoAway>>,
) {
    if rx.changed().await.is_err() {
        std::future::pending::<()>().await;
    }
    let msg = rx.borrow_and_update().clone();
    (msg, rx)
}

async fn next_item(cursor: &mut Option<streams::Cursor>) -> Option<Item> {
    match cursor {
        Some(c) => c.next().await,
        None => std::future::pending().await,
    }
}
