//! Live streams survive their shard: the group mirrors them.
//!
//! A live stream lives where its publisher is attached: that shard is its *primary*. The
//! primary mirrors the stream, with the mirror sender in broadcast mode, to its *standbys*:
//! the next `standbys` shards after it in the stream's rendezvous order over the group
//! ([`crate::hub::placement::rendezvous_order`], the order grants rank shards in), plus any
//! shard ranked ahead of it (a shard that joined there is where new grants point first). Each
//! standby takes the copy on its mirror receiver and publishes it into its own registry, so it
//! holds the stream with its own sequence position and replay buffer, and serves subscribers
//! from it like the primary does.
//!
//! When the primary dies, its publisher and subscribers move to the next shard of their grant,
//! which is a standby: subscribers resume at their next sequence from its buffer; the publisher
//! replays what it kept and the standby drops every sequence it already has, so nothing is lost
//! or delivered twice (a publisher that races its own failover is resolved the same way, by
//! sequence). The first publisher bind on a standby copy *promotes* it: it is the primary now
//! and mirrors to its own standbys. Standby sets follow the group's membership: the hub sends
//! the group's peers (`peers`) whenever it changes, and every primary adds and removes mirror
//! endpoints to match.
//!
//! Bounds: a primary without a publisher for [`PRIMARY_LINGER`] stops mirroring; a copy that
//! was not fed for [`COPY_LINGER`] is let go (the registry then drops the stream once nobody
//! holds it). A standby that falls behind the primary's mirror buffer gets an explicit gap,
//! which its subscribers see as one.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{debug, info, info_span, warn, Instrument};

use super::streams::{Item, StreamRegistry, StreamState};
use crate::ids::{Seq, ShardId, StreamName};
use crate::link::{GroupPeers, Peer, ReplicaReport, ReplicaRole, StandbyLag};
use crate::mirror::{
    EndpointId, MirrorConfig, MirrorIdentity, MirrorSender, Mode, Overflow, Receiver,
    ReceiverEvent, ReceiverOptions,
};
use crate::sync::lock;

/// A primary whose stream had no publisher this long stops mirroring it.
pub const PRIMARY_LINGER: Duration = Duration::from_secs(10);
/// A standby copy that was not fed this long is let go.
pub const COPY_LINGER: Duration = Duration::from_secs(30);
/// Push times a primary remembers per stream, for the standbys' lag in milliseconds.
const PUSH_LOG: usize = 8192;
/// Most live streams one report lists.
pub const MAX_REPORTED: usize = 256;

/// What a shard needs to mirror live streams.
#[derive(Clone, Debug)]
pub struct ReplicaParams {
    /// The certificate the shard's mirror sender and receiver present (cluster CA).
    pub identity: MirrorIdentity,
    /// Where the shard's mirror receiver binds (port 0: any).
    pub listen: SocketAddr,
    /// The IP peers reach the receiver on, when it is not the bound one (an unspecified bind
    /// address, NAT).
    pub advertise_ip: Option<std::net::IpAddr>,
}

/// The mirror settings of group replication: every standby gets every chunk (broadcast); a
/// standby too slow for the buffer gets a gap rather than holding the primary back.
pub fn mirror_config() -> MirrorConfig {
    MirrorConfig {
        mode: Mode::Broadcast,
        overflow: Overflow::DropOldest,
        revert_after: None,
        ..MirrorConfig::default()
    }
}

/// A shard's replication: its mirror receiver, its primaries and its standby copies.
pub struct Replication {
    me: ShardId,
    identity: MirrorIdentity,
    receiver_addr: SocketAddr,
    peers: watch::Sender<Option<GroupPeers>>,
    inner: Mutex<Inner>,
    promotions: AtomicU64,
    /// Chunks standby copies received that were already held (a race resolved by sequence).
    copy_duplicates: AtomicU64,
}

#[derive(Default)]
struct Inner {
    primaries: HashMap<StreamName, Primary>,
    copies: HashMap<StreamName, Copy>,
    promoted: HashMap<StreamName, u64>,
}

struct Primary {
    task: JoinHandle<()>,
    status: Arc<Mutex<PrimaryStatus>>,
}

#[derive(Default)]
struct PrimaryStatus {
    standbys: Vec<StandbyLag>,
}

struct Copy {
    /// Held so the registry keeps the stream while the copy is fed.
    stream: Arc<StreamState>,
    fed: Instant,
}

impl Replication {
    /// Binds the mirror receiver and starts taking copies into `registry`. Runs in a tokio
    /// runtime; the returned tasks end with the shard.
    pub fn start(
        me: ShardId,
        p: ReplicaParams,
        registry: Arc<StreamRegistry>,
    ) -> Result<(Arc<Replication>, Vec<JoinHandle<()>>), crate::client::ClientError> {
        let id = &p.identity;
        let mut opts = ReceiverOptions::new(
            p.listen,
            id.chain.clone(),
            id.key.clone_key(),
            id.ca.clone(),
        );
        opts.idle_timeout = Duration::from_secs(5);
        let receiver = Receiver::bind(opts)?;
        let mut receiver_addr = receiver.addr();
        if let Some(ip) = p.advertise_ip {
            receiver_addr.set_ip(ip);
        }
        let repl = Arc::new(Replication {
            me,
            identity: p.identity,
            receiver_addr,
            peers: watch::channel(None).0,
            inner: Mutex::default(),
            promotions: AtomicU64::new(0),
            copy_duplicates: AtomicU64::new(0),
        });
        let span = info_span!("replica", shard = me.0);
        let take =
            tokio::spawn(take_copies(repl.clone(), receiver, registry).instrument(span.clone()));
        let sweep = tokio::spawn(sweep_copies(repl.clone()).instrument(span));
        Ok((repl, vec![take, sweep]))
    }

    /// Where peers mirror live streams to this shard.
    pub fn receiver_addr(&self) -> SocketAddr {
        self.receiver_addr
    }

    /// The hub's latest list of the group's peers.
    pub fn set_peers(&self, peers: GroupPeers) {
        debug!(
            peers = peers.shards.len(),
            standbys = peers.standbys,
            "group peers"
        );
        self.peers.send_replace(Some(peers));
    }

    /// Standby copies promoted to primary here.
    pub fn promotions(&self) -> u64 {
        self.promotions.load(Ordering::Relaxed)
    }

    /// A publisher bound to `stream` here: this shard is its primary from now on (a standby
    /// copy of it is promoted), and mirrors it to its standbys.
    pub fn on_publisher(
        self: &Arc<Self>,
        registry: &Arc<StreamRegistry>,
        stream: &Arc<StreamState>,
    ) {
        let name = stream.name().clone();
        let mut inner = lock(&self.inner);
        if inner.copies.remove(&name).is_some() {
            self.promotions.fetch_add(1, Ordering::Relaxed);
            *inner.promoted.entry(name.clone()).or_insert(0) += 1;
            info!(stream = %name, "standby copy promoted to primary");
        }
        if inner
            .primaries
            .get(&name)
            .is_some_and(|p| !p.task.is_finished())
        {
            return;
        }
        let status = Arc::new(Mutex::new(PrimaryStatus::default()));
        let span = info_span!("primary", shard = self.me.0, stream = %name);
        let task = tokio::spawn(
            mirror_primary(
                self.clone(),
                registry.clone(),
                stream.clone(),
                status.clone(),
            )
            .instrument(span),
        );
        inner.primaries.insert(name, Primary { task, status });
    }

    /// The live streams held here, for the hub (at most [`MAX_REPORTED`]).
    pub fn reports(&self) -> Vec<ReplicaReport> {
        let inner = lock(&self.inner);
        let promoted = |n: &StreamName| inner.promoted.get(n).copied().unwrap_or(0);
        let mut out: Vec<ReplicaReport> = Vec::new();
        for (name, p) in &inner.primaries {
            if p.task.is_finished() {
                continue;
            }
            out.push(ReplicaReport {
                stream: name.clone(),
                role: ReplicaRole::Primary,
                last_seq: None,
                standbys: lock(&p.status).standbys.clone(),
                promotions: promoted(name),
            });
        }
        for (name, c) in &inner.copies {
            out.push(ReplicaReport {
                stream: name.clone(),
                role: ReplicaRole::Standby,
                last_seq: c.stream.last_seq().map(Seq::get),
                standbys: Vec::new(),
                promotions: promoted(name),
            });
        }
        drop(inner);
        out.sort_by(|a, b| a.stream.cmp(&b.stream));
        out.truncate(MAX_REPORTED);
        out
    }

    /// Stops every primary's mirroring (the shard stops).
    pub fn stop(&self) {
        let mut inner = lock(&self.inner);
        for (_, p) in inner.primaries.drain() {
            p.task.abort();
        }
        inner.copies.clear();
    }
}

/// The standbys of `stream` when `me` is its primary: every peer ranked ahead of `me`, then the
/// next `peers.standbys` after it (wrapping around the order).
pub fn standbys_of(stream: &StreamName, me: ShardId, peers: &GroupPeers) -> Vec<Peer> {
    let want = peers.standbys as usize;
    if want == 0 {
        return Vec::new();
    }
    let order = crate::hub::placement::rendezvous_order(
        stream,
        peers.shards.iter().map(|p| p.shard).chain([me]),
    );
    let pos = order.iter().position(|&s| s == me).unwrap_or(0);
    // Those ahead, then the next `want` after it; wrapping around would only reach shards
    // ahead of it again (the order has no repeats).
    order[..pos]
        .iter()
        .chain(order[pos + 1..].iter().take(want))
        .copied()
        .filter_map(|s| peers.shards.iter().find(|p| p.shard == s).cloned())
        // A mirror takes at most this many endpoints.
        .take(crate::mirror::MAX_ENDPOINTS)
        .collect()
}

/// Copies from the mirror receiver into the registry: each chunk is published there (a
/// sequence already held is dropped).
async fn take_copies(
    repl: Arc<Replication>,
    mut receiver: Receiver,
    registry: Arc<StreamRegistry>,
) {
    while let Some(ev) = receiver.next().await {
        match ev {
            ReceiverEvent::Chunk { stream, chunk } => {
                if stream.is_synthetic() {
                    continue;
                }
                let now_us = crate::unix_us();
                let state = {
                    let mut inner = lock(&repl.inner);
                    let is_primary = inner
                        .primaries
                        .get(&stream)
                        .is_some_and(|p| !p.task.is_finished());
                    if is_primary {
                        None
                    } else {
                        let c = inner.copies.entry(stream.clone()).or_insert_with(|| Copy {
                            stream: registry.stream(&stream, now_us),
                            fed: crate::clock::now(),
                        });
                        c.fed = crate::clock::now();
                        Some(c.stream.clone())
                    }
                };
                let state = state.unwrap_or_else(|| registry.stream(&stream, now_us));
                match state.publish(chunk) {
                    Ok(true) => {}
                    Ok(false) => {
                        repl.copy_duplicates.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => debug!(%stream, error = ?e, "mirrored chunk refused"),
                }
            }
            ReceiverEvent::Gap { stream, from, to } => {
                // The registry's cursors see the jump and report it as a gap.
                warn!(%stream, from = from.get(), to = to.get(), "standby copy has a gap");
            }
            ReceiverEvent::End { stream, last } => {
                // The copy's cursors end once it holds `last`.
                if let Some(s) = registry.get(&stream) {
                    s.end_after(last);
                }
            }
            ReceiverEvent::Connected { stream, remote } => {
                debug!(%stream, %remote, "primary connected");
            }
            ReceiverEvent::Disconnected { stream, remote, .. } => {
                debug!(%stream, %remote, "primary disconnected");
            }
        }
    }
}

/// Lets go of copies nobody fed for [`COPY_LINGER`], and of finished primaries.
async fn sweep_copies(repl: Arc<Replication>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        let now = crate::clock::now();
        let mut inner = lock(&repl.inner);
        inner
            .copies
            .retain(|_, c| now.saturating_duration_since(c.fed) < COPY_LINGER);
        inner.primaries.retain(|_, p| !p.task.is_finished());
        let Inner {
            primaries,
            copies,
            promoted,
        } = &mut *inner;
        promoted.retain(|name, _| primaries.contains_key(name) || copies.contains_key(name));
    }
}

/// When each sequence was pushed to the mirror, for the standbys' lag in milliseconds.
#[derive(Default)]
struct PushLog(VecDeque<(Seq, Instant)>);

impl PushLog {
    fn record(&mut self, seq: Seq, at: Instant) {
        if self.0.len() >= PUSH_LOG {
            self.0.pop_front();
        }
        self.0.push_back((seq, at));
    }

    /// Age of the oldest pushed chunk after `acked` (0 if there is none).
    fn lag_ms(&self, acked: Option<Seq>, now: Instant) -> u64 {
        // Pushes are in sequence order.
        let i = acked.map_or(0, |a| self.0.partition_point(|(s, _)| *s <= a));
        self.0.get(i).map_or(0, |(_, at)| {
            u64::try_from(now.saturating_duration_since(*at).as_millis()).unwrap_or(u64::MAX)
        })
    }

    /// Forgets pushes every standby acknowledged.
    fn trim(&mut self, acked_by_all: Seq) {
        while self.0.front().is_some_and(|(s, _)| *s <= acked_by_all) {
            self.0.pop_front();
        }
    }
}

/// The primary's mirroring of one stream: a cursor from the oldest chunk held, pushed into a
/// broadcast mirror to the current standbys, until the stream has had no publisher for
/// [`PRIMARY_LINGER`].
async fn mirror_primary(
    repl: Arc<Replication>,
    registry: Arc<StreamRegistry>,
    stream: Arc<StreamState>,
    status: Arc<Mutex<PrimaryStatus>>,
) {
    let name = stream.name().clone();
    // From the oldest chunk held: a standby that lags the old primary catches up from here.
    let mut cursor = registry.subscribe(&name, stream.oldest_seq(), crate::unix_us());
    let mut peers = repl.peers.subscribe();
    let mut sender: Option<MirrorSender> = None;
    let mut members: Members = HashMap::new();
    // Standbys that left the set but whose removal the mirror refused for now (the only
    // active one, until a newer one connects): retried every check.
    let mut leaving: HashMap<ShardId, EndpointId> = HashMap::new();
    let mut log = PushLog::default();
    let mut check = tokio::time::interval(Duration::from_millis(100));
    let mut unpublished_since: Option<Instant> = None;
    let mut resync = true;
    loop {
        if resync {
            resync = false;
            let want = match peers.borrow_and_update().as_ref() {
                Some(p) => standbys_of(&name, repl.me, p),
                None => Vec::new(),
            };
            let started = sync_standbys(
                &repl,
                &name,
                &mut sender,
                (&mut members, &mut leaving),
                &want,
            );
            if started {
                // A mirror that starts now starts from the oldest chunk held, as one that
                // started with the stream would have.
                cursor = registry.subscribe(&name, stream.oldest_seq(), crate::unix_us());
            }
        }
        tokio::select! {
            item = cursor.next() => match item {
                Some(Item::Chunk(c)) => {
                    let seq = c.seq;
                    if let Some(s) = &sender {
                        log.record(seq, crate::clock::now());
                        if let Err(e) = s.push(c).await {
                            debug!(error = %e, "mirror push refused");
                        }
                    }
                }
                Some(Item::Gap { from, to }) => {
                    if let Some(s) = &sender {
                        s.push_gap(from, to);
                    }
                }
                Some(Item::End { last }) => {
                    if let Some(s) = &sender {
                        s.push_end(last);
                    }
                }
                None => break,
            },
            changed = peers.changed() => {
                if changed.is_err() {
                    break;
                }
                resync = true;
            }
            _ = check.tick() => {
                let now = crate::clock::now();
                if stream.publishers() == 0 {
                    let since = *unpublished_since.get_or_insert(now);
                    if now.saturating_duration_since(since) >= PRIMARY_LINGER {
                        // Decided under the lock a new publisher's bind takes: it either
                        // finds this task still the primary, or none (and starts one).
                        let mut inner = lock(&repl.inner);
                        if stream.publishers() == 0 {
                            inner.primaries.remove(&name);
                            info!("no publisher for a while; mirroring stopped");
                            break;
                        }
                    }
                } else {
                    unpublished_since = None;
                }
                if let Some(s) = &sender {
                    leaving.retain(|id, ep| match s.remove_endpoint(*ep) {
                        Ok(()) => {
                            info!(standby = id.0, "standby removed");
                            false
                        }
                        // Gone already: nothing left to remove.
                        Err(crate::mirror::SenderError::Mirror(
                            crate::mirror::MirrorError::UnknownEndpoint(_),
                        )) => false,
                        Err(_) => true,
                    });
                }
                let lags = standby_lags(sender.as_ref(), &members, stream.last_seq(), &log, now);
                if let Some(min) = lags.iter().map(|l| l.acked_seq).min().flatten() {
                    log.trim(Seq::new(min));
                }
                lock(&status).standbys = lags;
            }
        }
    }
    if let Some(s) = sender {
        s.stop(Duration::from_millis(500)).await;
    }
}

/// A primary's standbys in its mirror: shard → (endpoint, mirror address).
type Members = HashMap<ShardId, (EndpointId, SocketAddr)>;

/// Makes the mirror's endpoints the wanted standbys (starting or stopping the mirror when the
/// set becomes non-empty or empty); true when it started the mirror.
fn sync_standbys(
    repl: &Replication,
    stream: &StreamName,
    sender: &mut Option<MirrorSender>,
    (members, leaving): (&mut Members, &mut HashMap<ShardId, EndpointId>),
    want: &[Peer],
) -> bool {
    if want.is_empty() {
        if sender.take().is_some() {
            info!("no standby left in the group; mirroring paused");
        }
        members.clear();
        leaving.clear();
        return false;
    }
    let Some(s) = sender.as_ref() else {
        let opts = repl
            .identity
            .sender_options(stream.clone(), mirror_config());
        let addrs: Vec<SocketAddr> = want.iter().map(|p| p.mirror).collect();
        match MirrorSender::start(opts, &addrs) {
            Ok(s) => {
                members.clear();
                for p in want {
                    if let Some(ep) = s.endpoint_id(p.mirror) {
                        members.insert(p.shard, (ep, p.mirror));
                    }
                }
                let standbys: Vec<String> = want.iter().map(|p| p.shard.0.to_string()).collect();
                info!(standbys = standbys.join(","), "mirroring to standbys");
                *sender = Some(s);
                leaving.clear();
                return true;
            }
            Err(e) => warn!(error = %e, "cannot start mirroring to the standbys"),
        }
        return false;
    };
    // Added first, removed after: a mirror keeps at least one endpoint, and removing the
    // only active one waits until another can take over (then it is retried).
    let gone: Vec<ShardId> = members
        .keys()
        .filter(|id| !want.iter().any(|p| p.shard == **id))
        .copied()
        .collect();
    for p in want {
        if members.contains_key(&p.shard) {
            continue;
        }
        // Back before its removal went through: it never left.
        if let Some(ep) = leaving.remove(&p.shard) {
            members.insert(p.shard, (ep, p.mirror));
            continue;
        }
        match s.add_endpoint(p.mirror, None) {
            Ok(ep) => {
                info!(standby = p.shard.0, "standby added");
                members.insert(p.shard, (ep, p.mirror));
            }
            Err(e) => warn!(standby = p.shard.0, error = %e, "cannot add a standby"),
        }
    }
    for id in gone {
        if let Some((ep, _)) = members.remove(&id) {
            match s.remove_endpoint(ep) {
                Ok(()) => info!(standby = id.0, "standby removed"),
                Err(e) => {
                    debug!(standby = id.0, error = %e, "standby removal refused for now");
                    leaving.insert(id, ep);
                }
            }
        }
    }
    false
}

fn standby_lags(
    sender: Option<&MirrorSender>,
    members: &Members,
    head: Option<Seq>,
    log: &PushLog,
    now: Instant,
) -> Vec<StandbyLag> {
    let Some(s) = sender else { return Vec::new() };
    let snap = s.snapshot();
    let mut out: Vec<StandbyLag> = members
        .iter()
        .filter_map(|(shard, (ep, _))| {
            let e = snap.endpoints.iter().find(|e| e.id == *ep)?;
            let lag_seqs = match (head, e.acked_seq) {
                (Some(h), Some(a)) => h.get().saturating_sub(a.get()),
                // Nothing acknowledged yet: everything pushed is outstanding.
                (Some(_), None) => log.0.len() as u64,
                (None, _) => 0,
            };
            Some(StandbyLag {
                shard: *shard,
                acked_seq: e.acked_seq.map(Seq::get),
                lag_seqs,
                lag_ms: log.lag_ms(e.acked_seq, now),
                connected: e.state == crate::mirror::EndpointState::Active,
            })
        })
        .collect();
    out.sort_by_key(|l| l.shard);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::GroupId;

    fn peers(ids: &[u32], standbys: u32) -> GroupPeers {
        GroupPeers {
            group: GroupId(0),
            standbys,
            shards: ids
                .iter()
                .map(|&i| Peer {
                    shard: ShardId(i),
                    mirror: SocketAddr::from(([127, 0, 0, 1], 9000 + i as u16)),
                })
                .collect(),
        }
    }

    #[test]
    fn the_standbys_follow_the_rendezvous_order() {
        let stream = StreamName::new("live/order").unwrap();
        let p = peers(&[0, 1, 2, 3, 4], 1);
        let order =
            crate::hub::placement::rendezvous_order(&stream, p.shards.iter().map(|x| x.shard));
        // The first in order is the primary: its standby is the second.
        let s = standbys_of(&stream, order[0], &p);
        assert_eq!(
            s.iter().map(|x| x.shard).collect::<Vec<_>>(),
            vec![order[1]]
        );
        // The second, promoted: everything ahead of it (the old primary, while still listed),
        // then the next one.
        let s = standbys_of(&stream, order[1], &p);
        assert_eq!(
            s.iter().map(|x| x.shard).collect::<Vec<_>>(),
            vec![order[0], order[2]]
        );
        // The old primary gone from the peers: the next one alone.
        let rest: Vec<u32> = order[1..].iter().map(|s| s.0).collect();
        let s = standbys_of(&stream, order[1], &peers(&rest, 1));
        assert_eq!(
            s.iter().map(|x| x.shard).collect::<Vec<_>>(),
            vec![order[2]]
        );
        // The last one wraps around; no mirroring with 0 standbys or alone.
        let last = *order.last().unwrap();
        assert_eq!(standbys_of(&stream, last, &p).len(), 4);
        assert!(standbys_of(&stream, order[0], &peers(&[0, 1, 2, 3, 4], 0)).is_empty());
        assert!(standbys_of(&stream, ShardId(7), &peers(&[7], 1)).is_empty());
    }

    #[test]
    fn lag_in_ms_is_the_age_of_the_oldest_unacknowledged_push() {
        let t0 = crate::clock::now();
        let mut log = PushLog::default();
        for i in 1..=5u64 {
            log.record(Seq::new(i), t0 + Duration::from_millis(10 * i));
        }
        let now = t0 + Duration::from_millis(100);
        assert_eq!(log.lag_ms(Some(Seq::new(5)), now), 0);
        assert_eq!(log.lag_ms(Some(Seq::new(3)), now), 60);
        assert_eq!(log.lag_ms(None, now), 90);
    }
}
