//! The hub's end of its shard links: it feeds the [`Directory`] from what shards send and
//! carries the hub's commands to them.
//!
//! [`Links::accept`] takes a new link; its first message must be a registration, and every
//! later message goes where it belongs: load into the directory, session outcomes to the
//! profiler, store entries into the client's book (and on to where the client was sent),
//! confirmations to the grant waiting for them. A link that closes without `drained`
//! is a shard that died: it leaves the directory at once. A timer marks shards silent for
//! longer than the directory's bound as lost.
//!
//! Commands wait for room ([`Links::command`]); copies of entries that arrive after a grant
//! are best effort ([`Links::forward`]: a full link drops and counts them — the client then
//! resumes with 1-RTT).

mod forward;
mod lb;
mod peers;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tracing::{debug, info, warn, Instrument};

use super::directory::Directory;
use crate::ids::{ClientId, ShardId, StreamName};
use crate::link::channel::HubEnd;
use crate::link::{HubCmd, SessionOutcome, ShardMsg, StoreEntry};
use crate::security::token::TokenKeys;
use crate::sync::lock;
use crate::tickets::book::Book;
use crate::tickets::SessionStore;

/// Counters of the hub's links.
#[derive(Debug, Default)]
pub struct LinkCounters {
    pub registered: AtomicU64,
    /// Registrations refused (wrong version, duplicate id, no registration first).
    pub refused: AtomicU64,
    /// Links that closed without the shard reporting `drained` (crash, kill).
    pub lost: AtomicU64,
    pub drained: AtomicU64,
    /// Shards marked lost for silence.
    pub silent: AtomicU64,
    pub commands: AtomicU64,
    /// Granted shards that confirmed their preparation (stream warm, the client's entries
    /// held) within the wait, and those that did not (the client may then attach with 1-RTT
    /// there; the shard counts that as a ticket miss).
    pub entries_held: AtomicU64,
    pub entries_missed: AtomicU64,
    /// Entry copies sent after a grant, and those dropped because a link was full.
    pub entries_forwarded: AtomicU64,
    pub forwards_dropped: AtomicU64,
}

/// A link's base round trip: the least smoothed estimate over the last window of samples, so
/// that load on either end (which inflates the estimate) does not make a near link look far.
#[derive(Debug, Clone, Copy)]
struct LinkRtt {
    min: Duration,
    window_min: Duration,
    samples: u32,
    /// Samples ever: the first ones come from a connection still settling (and quinn starts
    /// from a guess), so a link is judged only after [`LinkRtt::SETTLED`].
    seen: u32,
}

impl LinkRtt {
    /// Samples per window (load reports come at least every 250 ms: about 10 s).
    const WINDOW: u32 = 40;
    const SETTLED: u32 = 4;

    /// The base round trip, once there were enough samples to trust it.
    fn base(&self) -> Option<Duration> {
        (self.seen >= Self::SETTLED).then_some(self.min)
    }

    fn note(&mut self, rtt: Duration) {
        self.seen = self.seen.saturating_add(1);
        self.window_min = self.window_min.min(rtt);
        self.min = self.min.min(rtt);
        self.samples += 1;
        if self.samples >= Self::WINDOW {
            // A new window: the base follows a path that really got longer.
            self.min = self.window_min;
            self.window_min = rtt;
            self.samples = 0;
        }
    }
}

/// A link this fast costs a grant little to wait for (the same host, a LAN).
pub const FAST_LINK: Duration = Duration::from_millis(2);
/// How much shorter than the client's round trip a link must be for a grant not to wait.
const RACE_MARGIN: Duration = Duration::from_millis(2);

/// Where ended sessions go (the profiler).
pub type SessionSink = Arc<dyn Fn(SessionOutcome) + Send + Sync>;

/// Why a link's registration was refused (the link is dropped).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Refused {
    #[error("the link's first message was not a registration")]
    NotRegistered,
    #[error(transparent)]
    Directory(#[from] super::directory::DirectoryError),
}

/// Why a command did not reach a shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LinkError {
    #[error("no link to shard {0:?}")]
    NoLink(ShardId),
    #[error("the link to shard {0:?} closed")]
    Closed(ShardId),
}

/// How long the peer announcer waits for room on one shard's link.
const PEERS_SEND_WAIT: Duration = Duration::from_millis(500);

/// The hub's links (cheap to clone).
#[derive(Clone)]
pub struct Links {
    inner: Arc<Inner>,
}

struct Inner {
    directory: Arc<Mutex<Directory>>,
    senders: Mutex<HashMap<ShardId, mpsc::Sender<HubCmd>>>,
    pending: Mutex<HashMap<u64, (ShardId, oneshot::Sender<()>)>>,
    next_batch: AtomicU64,
    book: Mutex<Book>,
    /// Keys each shard is to forget, waiting to ride with its next copy.
    forgets: Mutex<forward::ForgetQueue>,
    /// The hub's counters; the links count into `link`.
    hub: Arc<super::HubCounters>,
    /// The hub's own session store (entries from shards go there too: a returning client
    /// presents the newest ticket it holds, wherever it came from).
    store: Arc<SessionStore>,
    sessions: SessionSink,
    /// The hub's token keys: each shard gets its group's share ([`HubCmd::Keys`]).
    tokens: Arc<TokenKeys>,
    /// Round trip of each networked link (embedded links have none).
    link_rtt: Mutex<HashMap<ShardId, LinkRtt>>,
    /// Standby copies per live stream, told to every shard with its group's peers.
    live_standbys: std::sync::atomic::AtomicU32,
    /// Groups whose membership changed since their peers were last sent.
    peers_dirty: Mutex<std::collections::BTreeSet<crate::ids::GroupId>>,
    peers_changed: tokio::sync::Notify,
    /// Behind a QUIC-LB balancer: the configuration every shard's CIDs use.
    lb: Mutex<Option<crate::lb::LbPlan>>,
}

impl Links {
    pub fn new(
        directory: Arc<Mutex<Directory>>,
        book: Book,
        store: Arc<SessionStore>,
        sessions: SessionSink,
        hub: Arc<super::HubCounters>,
        tokens: Arc<TokenKeys>,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                directory,
                senders: Mutex::default(),
                pending: Mutex::default(),
                next_batch: AtomicU64::new(1),
                book: Mutex::new(book),
                forgets: Mutex::default(),
                hub,
                store,
                sessions,
                tokens,
                link_rtt: Mutex::default(),
                live_standbys: std::sync::atomic::AtomicU32::new(1),
                peers_dirty: Mutex::default(),
                peers_changed: tokio::sync::Notify::new(),
                lb: Mutex::default(),
            }),
        }
    }

    /// Standby copies each live stream keeps (told to the shards with their peers).
    pub fn set_live_standbys(&self, n: u32) {
        self.inner.live_standbys.store(n, Ordering::Relaxed);
    }

    pub fn counters(&self) -> &LinkCounters {
        &self.inner.hub.link
    }

    pub fn directory(&self) -> &Arc<Mutex<Directory>> {
        &self.inner.directory
    }

    /// Takes a new link. A registration already waiting on it is handled now (`Ok(Some(id))`:
    /// the shard is placed on when this returns; `Err`: refused, the link is dropped); without
    /// one, the registration is awaited by the link's reader task (`Ok(None)`).
    pub fn accept(&self, mut end: HubEnd) -> Result<Option<ShardId>, Refused> {
        let registered = match end.messages.try_recv() {
            Ok(msg) => Some(self.register(msg, &end)?),
            Err(_) => None,
        };
        let links = self.clone();
        let span = tracing::info_span!("link", shard = registered.map(|s| s.0));
        tokio::spawn(async move { links.read(end, registered).await }.instrument(span));
        Ok(registered)
    }

    /// Handles the first message of a link: the shard's id if it registered. Its group's
    /// token keys are the first command on the link.
    fn register(&self, msg: ShardMsg, end: &HubEnd) -> Result<ShardId, Refused> {
        let c = &self.inner.hub.link;
        let refuse = |r: Refused| {
            warn!(error = %r, "registration refused; link closed");
            c.refused.fetch_add(1, Ordering::Relaxed);
            r
        };
        let ShardMsg::Register(reg) = msg else {
            return Err(refuse(Refused::NotRegistered));
        };
        let now = crate::clock::now();
        lock(&self.inner.directory)
            .handle_register(&reg, now)
            .map_err(|e| refuse(e.into()))?;
        if let Some(keys) = self
            .inner
            .tokens
            .group_keys(reg.group, crate::clock::unix_ms())
        {
            // A fresh link has room: the keys go before any other command.
            if end.commands.try_send(HubCmd::Keys(keys)).is_err() {
                warn!(
                    shard = reg.shard.0,
                    "no room for the token keys on a new link"
                );
            }
        }
        // Held until the shard is among the senders: a rotation either sees it there or
        // happens before its configuration is taken.
        let lb = lock(&self.inner.lb);
        if let Some(plan) = lb.as_ref() {
            let params = plan.params_for(reg.shard.0);
            if end.commands.try_send(HubCmd::Lb(params)).is_err() {
                warn!(
                    shard = reg.shard.0,
                    "no room for the QUIC-LB configuration on a new link"
                );
            }
        }
        lock(&self.inner.senders).insert(reg.shard, end.commands.clone());
        drop(lb);
        self.peers_changed(reg.group);
        c.registered.fetch_add(1, Ordering::Relaxed);
        info!(shard = reg.shard.0, group = reg.group.0, addr = %reg.addr, capacity = reg.capacity, "shard registered");
        Ok(reg.shard)
    }

    async fn read(self, mut end: HubEnd, mut id: Option<ShardId>) {
        if id.is_none() {
            match end.messages.recv().await {
                Some(msg) => id = self.register(msg, &end).ok(),
                None => return,
            }
        }
        let Some(id) = id else { return };
        let mut drained = false;
        let mut closing = false;
        loop {
            // The shard's agent holds the command receiver: when it goes, the link is closing,
            // even if other parts of the shard still hold a sender of reports. What the shard
            // queued before (its last reports, `drained`) is still read.
            let msg = if closing {
                match end.messages.try_recv() {
                    Ok(m) => m,
                    Err(_) => break,
                }
            } else {
                tokio::select! {
                    biased;
                    msg = end.messages.recv() => match msg {
                        Some(m) => m,
                        None => break,
                    },
                    () = end.commands.closed() => {
                        closing = true;
                        continue;
                    }
                }
            };
            let now = crate::clock::now();
            match msg {
                ShardMsg::Register(_) => {
                    warn!(shard = id.0, "registered twice; link closed");
                    break;
                }
                ShardMsg::Load(load) => {
                    let back = {
                        let mut d = lock(&self.inner.directory);
                        match d.handle_load(id, load, now) {
                            Ok(true) => d.record(id).map(|r| r.group),
                            _ => None,
                        }
                    };
                    // A shard back from silence takes standby copies again.
                    if let Some(group) = back {
                        self.peers_changed(group);
                    }
                }
                ShardMsg::SessionEnded(outcome) => {
                    lock(&self.inner.directory).handle_heard(id, now);
                    (self.inner.sessions)(outcome);
                }
                ShardMsg::Entries(ce) => {
                    for e in &ce.entries {
                        self.inner.store.put_entry(e.clone());
                    }
                    let f = lock(&self.inner.book).add(&ce.client, ce.entries, Some(id), now);
                    self.forward(f);
                }
                ShardMsg::Prepared { batch } => {
                    // Only the shard the batch went to can confirm it.
                    let mut pending = lock(&self.inner.pending);
                    if pending.get(&batch).is_some_and(|(to, _)| *to == id) {
                        if let Some((_, tx)) = pending.remove(&batch) {
                            let _ = tx.send(());
                        }
                    }
                }
                ShardMsg::Drained => {
                    drained = true;
                    break;
                }
                ShardMsg::Replicas { streams } => {
                    lock(&self.inner.directory).handle_replicas(id, streams, now);
                }
            }
        }
        lock(&self.inner.senders).remove(&id);
        lock(&self.inner.link_rtt).remove(&id);
        if let Some(r) = lock(&self.inner.directory).handle_link_lost(id) {
            self.peers_changed(r.group);
        }
        let c = &self.inner.hub.link;
        if drained {
            c.drained.fetch_add(1, Ordering::Relaxed);
            info!(shard = id.0, "shard drained and left the directory");
        } else {
            c.lost.fetch_add(1, Ordering::Relaxed);
            warn!(
                shard = id.0,
                "shard link lost; the shard left the directory"
            );
        }
    }

    /// Sends `cmd` to `shard`, waiting for room on its link.
    pub async fn command(&self, shard: ShardId, cmd: HubCmd) -> Result<(), LinkError> {
        let tx = lock(&self.inner.senders)
            .get(&shard)
            .cloned()
            .ok_or(LinkError::NoLink(shard))?;
        tx.send(cmd).await.map_err(|_| LinkError::Closed(shard))?;
        self.inner.hub.link.commands.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Takes `shard` out of placement and tells it to drain within `grace`; `None` when it is
    /// not in the directory (nothing to drain). The returned future waits, bounded by the grace
    /// period and a moment to close, until the shard reported `drained` or its link closed.
    pub fn drain(
        &self,
        shard: ShardId,
        grace: Duration,
    ) -> Option<impl std::future::Future<Output = ()> + Send + 'static> {
        let (cmd, group) = {
            let mut d = lock(&self.inner.directory);
            let cmd = d.begin_drain(shard, grace).ok()?;
            (cmd, d.record(shard)?.group)
        };
        // A draining shard takes no new standby copies.
        self.peers_changed(group);
        let links = self.clone();
        Some(async move {
            if links.command(shard, cmd).await.is_err() {
                return;
            }
            let deadline = crate::clock::now() + grace + Duration::from_secs(2);
            while lock(links.directory()).record(shard).is_some() && crate::clock::now() < deadline
            {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    }

    /// The latest round-trip estimate of `shard`'s networked link.
    pub fn note_link_rtt(&self, shard: ShardId, rtt: Duration) {
        lock(&self.inner.link_rtt)
            .entry(shard)
            .or_insert(LinkRtt {
                min: rtt,
                window_min: rtt,
                samples: 0,
                seen: 0,
            })
            .note(rtt);
    }

    /// Whether a grant should wait for its shards' confirmations: only when the entries could
    /// lose the race to the client's first flight. They travel hub → shard (half the link's
    /// round trip), the client's attach hub → client → shard (at least half the client's):
    /// on a fast link (base round trip ≤ [`FAST_LINK`], the same host or LAN) waiting is
    /// almost free and covers a shard slow to process, so the grant waits; on a slower link it
    /// waits only when that link is not clearly shorter than the client's path. `client_rtt`:
    /// the hub's estimate for the client's connection.
    pub fn should_wait(&self, shards: &[ShardId], client_rtt: Duration) -> bool {
        let rtts = lock(&self.inner.link_rtt);
        // An embedded link has no round trip (zero); a networked one not yet judged is waited
        // for.
        let mut slowest = Duration::ZERO;
        for r in shards.iter().filter_map(|s| rtts.get(s)) {
            match r.base() {
                Some(b) => slowest = slowest.max(b),
                None => return true,
            }
        }
        slowest <= FAST_LINK || slowest + RACE_MARGIN >= client_rtt
    }

    /// Prepares every shard of a grant: one `prepare` each (warm `stream`, hold that shard's
    /// share of the client's entries), sent before the grant leaves, in order on each link.
    /// Returns the shards the hub could not reach at all (no link, link closed, no room within
    /// `wait`): the grant must not name them.
    ///
    /// With `confirm`, it also waits (within `wait` in all) until each confirmed; without, the
    /// confirmations are counted as they come ([`Links::should_wait`] says which: waiting on a
    /// slow link adds its round trip to the client's first byte, while the client needs a
    /// longer path to use the entries). Confirmations within `wait` count as `entries_held`,
    /// the others as `entries_missed`; a shard counts the tickets it did not hold when a client
    /// offered one (`ticket_misses` in its load).
    pub async fn prepare(
        &self,
        plan: Vec<(ShardId, Vec<StoreEntry>)>,
        stream: &StreamName,
        wait: Duration,
        confirm: bool,
    ) -> Vec<ShardId> {
        let deadline = crate::clock::tokio_now() + wait;
        let mut acks = Vec::with_capacity(plan.len());
        let mut unreachable = Vec::new();
        let planned = plan.len();
        for (shard, entries) in plan {
            let batch = self.inner.next_batch.fetch_add(1, Ordering::Relaxed);
            let (tx, rx) = oneshot::channel();
            lock(&self.inner.pending).insert(batch, (shard, tx));
            let cmd = HubCmd::Prepare {
                batch,
                stream: stream.clone(),
                entries,
            };
            match tokio::time::timeout_at(deadline, self.command(shard, cmd)).await {
                Ok(Ok(())) => acks.push((batch, rx)),
                Ok(Err(_)) => {
                    lock(&self.inner.pending).remove(&batch);
                    unreachable.push(shard);
                }
                // A full link: not confirmed in time, like a slow answer.
                Err(_) => {
                    lock(&self.inner.pending).remove(&batch);
                }
            }
        }
        let links = self.clone();
        let count = async move {
            let mut held = 0;
            for (batch, rx) in acks {
                if matches!(tokio::time::timeout_at(deadline, rx).await, Ok(Ok(()))) {
                    held += 1;
                } else {
                    lock(&links.inner.pending).remove(&batch);
                }
            }
            let c = &links.inner.hub.link;
            c.entries_held.fetch_add(held as u64, Ordering::Relaxed);
            let missed = (planned - held) as u64;
            if missed > 0 {
                c.entries_missed.fetch_add(missed, Ordering::Relaxed);
                debug!(
                    missed,
                    "granted shards did not confirm their preparation in time"
                );
            }
        };
        if confirm {
            count.await;
        } else {
            tokio::spawn(count);
        }
        unreachable
    }

    /// The client is granted `shards`: per shard, the client's live entries it lacks.
    pub fn grant_entries(
        &self,
        client: &ClientId,
        shards: &[ShardId],
    ) -> Vec<(ShardId, Vec<StoreEntry>)> {
        lock(&self.inner.book).grant(client, shards, crate::clock::now())
    }

    /// Entries a hub handshake produced for `client` (already in the hub's store): kept for
    /// the client, and copied at once to where it was last sent.
    pub fn hub_entries(&self, client: &ClientId, entries: Vec<StoreEntry>) {
        let f = lock(&self.inner.book).add(client, entries, None, crate::clock::now());
        self.forward(f);
    }

    /// Sends every shard its group's new token keys whenever the set changes (a new epoch, or
    /// the next one's key ahead of it), checking every second, until the hub goes; on the same
    /// tick, the forgets waiting for each shard ([`Links::flush_forgets`]).
    pub fn spawn_key_rotation(&self) -> tokio::task::JoinHandle<()> {
        let links = self.clone();
        tokio::spawn(async move {
            let tokens = links.inner.tokens.clone();
            let mut sent = tokens.key_set_at(crate::clock::unix_ms());
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tick.tick().await;
                links.flush_forgets();
                let now_ms = crate::clock::unix_ms();
                let set = tokens.key_set_at(now_ms);
                if set == sent {
                    continue;
                }
                sent = set;
                let shards: Vec<_> = lock(links.directory())
                    .records()
                    .map(|r| (r.id, r.group))
                    .collect();
                info!(
                    epoch = set.0,
                    next = set.1,
                    shards = shards.len(),
                    "token keys rotate"
                );
                for (id, group) in shards {
                    let Some(keys) = tokens.group_keys(group, now_ms) else {
                        continue;
                    };
                    let links = links.clone();
                    tokio::spawn(async move {
                        if let Err(e) = links.command(id, HubCmd::Keys(keys)).await {
                            debug!(error = %e, "token keys not sent");
                        }
                    });
                }
            }
        })
    }

    /// Marks shards silent for longer than the directory's bound as lost, every quarter of
    /// that bound, until the hub goes.
    pub fn spawn_silence_timer(&self) -> tokio::task::JoinHandle<()> {
        let links = self.clone();
        tokio::spawn(async move {
            let every = lock(&links.inner.directory).silence() / 4;
            let mut tick = tokio::time::interval(every.max(Duration::from_millis(10)));
            loop {
                tick.tick().await;
                let lost = lock(&links.inner.directory).handle_timeout(crate::clock::now());
                for id in lost {
                    if let Some(r) = lock(&links.inner.directory).record(id) {
                        links.peers_changed(r.group);
                    }
                    links.inner.hub.link.silent.fetch_add(1, Ordering::Relaxed);
                    warn!(shard = id.0, "shard silent; taken out of placement");
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::GroupId;
    use crate::link::channel::pair;
    use crate::link::{Register, ShardLoad, LINK_VERSION};

    fn links(silence: Duration) -> Links {
        let directory = Arc::new(Mutex::new(Directory::new(silence)));
        let ttl = Duration::from_secs(60);
        Links::new(
            directory,
            Book::new(100, 8, ttl),
            Arc::new(SessionStore::new(100, ttl)),
            Arc::new(|_| {}),
            Arc::default(),
            Arc::new(TokenKeys::new(
                crate::security::keys::KeySchedule::new(
                    &crate::security::keys::ClusterSecret::from_bytes([1; 32]),
                ),
                3600,
            )),
        )
    }

    fn register(id: u32) -> ShardMsg {
        ShardMsg::Register(Register {
            version: LINK_VERSION,
            shard: ShardId(id),
            group: GroupId(0),
            addr: "127.0.0.1:7000".parse().unwrap(),
            capacity: 10,
            mirror: None,
        })
    }

    fn alive(l: &Links, id: u32) -> Option<bool> {
        lock(l.directory())
            .record(ShardId(id))
            .map(|r| r.view().alive)
    }

    /// Lets the link tasks run (virtual time does not move on its own here).
    async fn settle() {
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
    }

    #[test]
    fn a_grant_waits_for_its_shards_only_where_the_entries_could_lose_the_race() {
        let l = links(Duration::from_secs(2));
        let ms = Duration::from_millis;
        let (far, near, new) = (ShardId(1), ShardId(2), ShardId(3));
        // Embedded (no round trip known): wait, it is free.
        assert!(l.should_wait(&[ShardId(9)], ms(50)));
        for _ in 0..LinkRtt::SETTLED {
            l.note_link_rtt(far, ms(10));
            l.note_link_rtt(near, ms(1));
        }
        l.note_link_rtt(new, ms(10));
        // A 10 ms link against a 30 ms client: the entries win, no wait.
        assert!(!l.should_wait(&[far], ms(30)));
        // Against a 5 ms client: they would lose, wait.
        assert!(l.should_wait(&[far], ms(5)));
        // A fast link: always wait (a slow shard is covered too).
        assert!(l.should_wait(&[near], ms(30)));
        // A link not judged yet: wait.
        assert!(l.should_wait(&[far, new], ms(30)));
        // Load inflates one estimate: the base stays.
        l.note_link_rtt(far, ms(40));
        assert!(!l.should_wait(&[far], ms(30)));
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_shard_leaves_placement_and_a_closed_link_leaves_the_directory() {
        let l = links(Duration::from_secs(2));
        let timer = l.spawn_silence_timer();
        let (hub, shard) = pair();
        assert!(shard.up.report(register(1)));
        l.accept(hub).unwrap();
        assert_eq!(
            alive(&l, 1),
            Some(true),
            "registered when the link is taken"
        );
        tokio::time::sleep(Duration::from_millis(2600)).await;
        settle().await;
        assert_eq!(alive(&l, 1), Some(false), "silent past the bound");
        shard.up.report(ShardMsg::Load(ShardLoad::default()));
        settle().await;
        assert_eq!(alive(&l, 1), Some(true), "heard again");
        drop(shard);
        settle().await;
        assert_eq!(alive(&l, 1), None, "a closed link is a shard gone");
        assert_eq!(l.counters().lost.load(Ordering::Relaxed), 1);
        timer.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn what_a_shard_queued_before_it_went_is_still_read() {
        let l = links(Duration::from_secs(2));
        let (hub, shard) = pair();
        shard.up.report(register(2));
        l.accept(hub).unwrap();
        shard.up.report(ShardMsg::Load(ShardLoad {
            sessions: 3,
            ..ShardLoad::default()
        }));
        shard.up.report(ShardMsg::Drained);
        drop(shard);
        settle().await;
        assert_eq!(alive(&l, 2), None);
        assert_eq!(l.counters().drained.load(Ordering::Relaxed), 1);
        assert_eq!(l.counters().lost.load(Ordering::Relaxed), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_link_that_does_not_register_first_or_speaks_another_version_is_refused() {
        let l = links(Duration::from_secs(2));
        let (hub, shard) = pair();
        shard.up.report(ShardMsg::Drained);
        assert_eq!(l.accept(hub).err(), Some(Refused::NotRegistered));
        let (hub, old) = pair();
        let mut r = register(3);
        if let ShardMsg::Register(reg) = &mut r {
            reg.version = LINK_VERSION + 1;
        }
        old.up.report(r);
        assert!(matches!(l.accept(hub), Err(Refused::Directory(_))));
        settle().await;
        assert!(lock(l.directory()).is_empty());
        assert_eq!(l.counters().refused.load(Ordering::Relaxed), 2);
        drop(shard);
    }

    #[tokio::test(start_paused = true)]
    async fn a_prepare_to_a_shard_without_a_link_names_it_unreachable_and_a_slow_one_is_a_miss() {
        let l = links(Duration::from_secs(2));
        let (hub, mut shard) = pair();
        shard.up.report(register(4));
        l.accept(hub).unwrap();
        let stream = StreamName::new("synth/x").unwrap();
        let plan = vec![(ShardId(4), vec![]), (ShardId(9), vec![])];
        let gone = l
            .prepare(plan, &stream, Duration::from_millis(250), false)
            .await;
        assert_eq!(gone, vec![ShardId(9)]);
        // The confirmations are counted once the wait is over.
        tokio::time::sleep(Duration::from_millis(300)).await;
        settle().await;
        // Its group's keys came first; then the preparation, which it never answered:
        // counted as missed, not unreachable.
        match shard.commands.try_recv() {
            Ok(HubCmd::Keys(k)) => assert!(k.group == GroupId(0) && k.keys.len() >= 2),
            other => panic!("keys first, got {other:?}"),
        }
        assert!(matches!(
            shard.commands.try_recv(),
            Ok(HubCmd::Prepare { .. })
        ));
        assert_eq!(l.counters().entries_missed.load(Ordering::Relaxed), 2);
        assert!(
            lock(&l.inner.pending).is_empty(),
            "no answer is waited for any more"
        );
    }
}
