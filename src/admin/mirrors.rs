//! The mirrors the admin API runs: at most one [`MirrorSender`] per stream, each fed from an
//! embedded shard.
//!
//! [`MirrorManager::create`] picks the source shard ([`source_shard`]), subscribes to the stream
//! there at its newest chunk, starts the sender and spawns a *forward* task that moves the
//! cursor's items into the sender (`Item::Chunk` → [`MirrorSender::push`], `Item::Gap` →
//! [`MirrorSender::push_gap`]). If the source shard dies, the forward task re-subscribes on the
//! shard placement now picks, from the sequence after the last one it forwarded, so the
//! receivers see the stream go on (or a `gap` for what no live shard still has).
//!
//! The manager's map sits behind a mutex that is never held across an await; stopping a mirror
//! first takes it out of the map, so concurrent requests see it gone at once.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde::Serialize;
use tokio::task::JoinHandle;
use tracing::{debug, info, info_span, warn, Instrument};

use super::AdminError;
use crate::hub::placement::{HeadroomPlacer, PlacementRequest, Placer, ShardView};
use crate::ids::{ClientId, Seq, ShardId, StreamName};
use crate::mirror::{
    EndpointId, MirrorConfig, MirrorError, MirrorSender, MirrorSnapshot, Mode, SenderError,
};
use crate::shard::streams::Item;
use crate::shard::Shard;
use crate::sync::lock;

/// Where mirrors read their streams: the shards the hub's directory lists (only those), and
/// the embedded launcher that holds their stream registries.
#[derive(Clone)]
pub struct ShardSources {
    pub directory: Arc<Mutex<crate::hub::directory::Directory>>,
    pub launcher: crate::cluster::EmbeddedLauncher,
}

impl ShardSources {
    /// The shard to read `stream` from now (see [`source_shard`]).
    pub fn pick(&self, stream: &StreamName) -> Option<Shard> {
        let views = lock(&self.directory).views();
        let id = source_shard(&views, stream)?;
        self.launcher.shard(id).filter(Shard::is_alive)
    }

    fn alive(&self, id: ShardId) -> bool {
        lock(&self.directory)
            .record(id)
            .is_some_and(|r| r.view().alive)
    }
}

/// How often the forward task checks that its source shard is still alive.
const SOURCE_CHECK: Duration = Duration::from_millis(250);

pub use crate::mirror::MirrorIdentity;

/// An endpoint a mirror sends to now: its id (as in the endpoint list) and its address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ActiveEndpoint {
    pub id: crate::mirror::EndpointId,
    pub addr: SocketAddr,
}

fn active_of(s: &MirrorSnapshot) -> Vec<ActiveEndpoint> {
    s.endpoints
        .iter()
        .filter(|ep| s.active.contains(&ep.id))
        .map(|ep| ActiveEndpoint {
            id: ep.id,
            addr: ep.addr,
        })
        .collect()
}

/// A mirror as `GET /mirrors/{stream}` and `POST /mirrors` show it.
#[derive(Debug, Clone, Serialize)]
pub struct MirrorView {
    pub stream: StreamName,
    /// The shard the mirror reads the stream from now.
    pub source_shard: ShardId,
    /// The endpoints sent the stream now, by id and address (as in `GET /mirrors`).
    pub active: Vec<ActiveEndpoint>,
    #[serde(flatten)]
    pub snapshot: MirrorSnapshot,
}

/// One line of `GET /mirrors`.
#[derive(Debug, Clone, Serialize)]
pub struct MirrorSummary {
    pub stream: StreamName,
    pub mode: Mode,
    /// The endpoints sent the stream now, by id and address.
    pub active: Vec<ActiveEndpoint>,
    /// Endpoints in the list.
    pub endpoints: usize,
    pub head_seq: Option<Seq>,
    pub switches: u64,
}

struct Entry {
    sender: Arc<MirrorSender>,
    source: Arc<Mutex<ShardId>>,
    forward: JoinHandle<()>,
}

/// The running mirrors, keyed by stream.
pub struct MirrorManager {
    shards: ShardSources,
    identity: MirrorIdentity,
    mirrors: Mutex<BTreeMap<StreamName, Entry>>,
}

impl MirrorManager {
    pub fn new(shards: ShardSources, identity: MirrorIdentity) -> Self {
        Self {
            shards,
            identity,
            mirrors: Mutex::new(BTreeMap::new()),
        }
    }

    fn map(&self) -> MutexGuard<'_, BTreeMap<StreamName, Entry>> {
        self.mirrors.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts mirroring `stream` to `endpoints`, best first. Must run in a tokio runtime.
    pub fn create(
        &self,
        stream: StreamName,
        endpoints: &[SocketAddr],
        config: MirrorConfig,
    ) -> Result<MirrorView, AdminError> {
        if endpoints.is_empty() {
            return Err(MirrorError::NoEndpoints.into());
        }
        for (i, a) in endpoints.iter().enumerate() {
            if endpoints[..i].contains(a) {
                return Err(AdminError::DuplicateInList(*a));
            }
        }
        config.validate()?;
        let mut map = self.map();
        if map.contains_key(&stream) {
            return Err(AdminError::MirrorExists(stream));
        }
        let shard = self.shards.pick(&stream).ok_or(AdminError::NoShard)?;
        let opts = self.identity.sender_options(stream.clone(), config);
        let sender = Arc::new(MirrorSender::start(opts, endpoints).map_err(sender_error)?);
        let source = Arc::new(Mutex::new(shard.id()));
        let span = info_span!("mirror_source", %stream);
        let forward = tokio::spawn(
            forward(
                self.shards.clone(),
                shard,
                stream.clone(),
                sender.clone(),
                source.clone(),
            )
            .instrument(span),
        );
        let snapshot = sender.snapshot();
        let view = MirrorView {
            stream: stream.clone(),
            source_shard: *lock(&source),
            active: active_of(&snapshot),
            snapshot,
        };
        map.insert(
            stream.clone(),
            Entry {
                sender,
                source,
                forward,
            },
        );
        info!(%stream, source = view.source_shard.0, "admin: mirror created");
        Ok(view)
    }

    pub fn list(&self) -> Vec<MirrorSummary> {
        self.map()
            .iter()
            .map(|(stream, e)| {
                let s = e.sender.snapshot();
                let active = active_of(&s);
                MirrorSummary {
                    stream: stream.clone(),
                    mode: s.mode,
                    active,
                    endpoints: s.endpoints.len(),
                    head_seq: s.head_seq,
                    switches: s.counters.switches,
                }
            })
            .collect()
    }

    pub fn view(&self, stream: &StreamName) -> Result<MirrorView, AdminError> {
        let map = self.map();
        let e = map
            .get(stream)
            .ok_or_else(|| AdminError::UnknownStream(stream.clone()))?;
        let source_shard = *lock(&e.source);
        let snapshot = e.sender.snapshot();
        Ok(MirrorView {
            stream: stream.clone(),
            source_shard,
            active: active_of(&snapshot),
            snapshot,
        })
    }

    /// Every mirror's snapshot, by stream (for the metrics).
    pub fn snapshots(&self) -> Vec<(StreamName, MirrorSnapshot)> {
        self.map()
            .iter()
            .map(|(s, e)| (s.clone(), e.sender.snapshot()))
            .collect()
    }

    pub fn add_endpoint(
        &self,
        stream: &StreamName,
        addr: SocketAddr,
        rank: Option<usize>,
    ) -> Result<EndpointId, AdminError> {
        let sender = self.sender(stream)?;
        let id = sender.add_endpoint(addr, rank).map_err(sender_error)?;
        info!(%stream, %addr, %id, "admin: endpoint added");
        Ok(id)
    }

    /// Asks the mirror to remove the endpoint at `addr` (an active one is drained first).
    pub fn remove_endpoint(
        &self,
        stream: &StreamName,
        addr: SocketAddr,
    ) -> Result<EndpointId, AdminError> {
        let sender = self.sender(stream)?;
        let id = sender
            .endpoint_id(addr)
            .ok_or_else(|| AdminError::UnknownEndpoint {
                stream: stream.clone(),
                addr,
            })?;
        sender.remove_endpoint(id).map_err(sender_error)?;
        info!(%stream, %addr, %id, "admin: endpoint removal requested");
        Ok(id)
    }

    fn sender(&self, stream: &StreamName) -> Result<Arc<MirrorSender>, AdminError> {
        self.map()
            .get(stream)
            .map(|e| e.sender.clone())
            .ok_or_else(|| AdminError::UnknownStream(stream.clone()))
    }

    /// Stops one mirror: its source first, then the sender, which gets `grace` to have every
    /// pushed chunk acknowledged.
    pub async fn stop(&self, stream: &StreamName, grace: Duration) -> Result<(), AdminError> {
        let entry = self
            .map()
            .remove(stream)
            .ok_or_else(|| AdminError::UnknownStream(stream.clone()))?;
        stop_entry(entry, grace).await;
        info!(%stream, "admin: mirror stopped");
        Ok(())
    }

    /// Stops every mirror, all within one `grace`.
    pub async fn stop_all(&self, grace: Duration) {
        let entries: Vec<Entry> = std::mem::take(&mut *self.map()).into_values().collect();
        let tasks: Vec<_> = entries
            .into_iter()
            .map(|e| tokio::spawn(stop_entry(e, grace)))
            .collect();
        for t in tasks {
            let _ = t.await;
        }
    }

    pub fn len(&self) -> usize {
        self.map().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

async fn stop_entry(e: Entry, grace: Duration) {
    e.forward.abort();
    let _ = e.forward.await;
    let Entry { sender, .. } = e;
    match Arc::try_unwrap(sender) {
        Ok(sender) => sender.stop(grace).await,
        // A request still holds it for a moment; dropping the last handle closes it without
        // the grace period.
        Err(shared) => drop(shared),
    }
}

fn sender_error(e: SenderError) -> AdminError {
    match e {
        SenderError::Mirror(m) => AdminError::Rejected(m),
        other => AdminError::Start(other.to_string()),
    }
}

/// The shard a mirror reads `stream` from, among `shards` (the directory's views): for a
/// synthetic stream the first alive shard (every shard produces the same chunks); for a live
/// stream the shard the default placement ([`HeadroomPlacer`], rendezvous on the stream name)
/// ranks first, which is where publishers publish it. `None` when no shard is alive.
///
/// A hub started with another [`Placer`] may send publishers elsewhere; the admin API still
/// follows the default placement.
pub fn source_shard(shards: &[ShardView], stream: &StreamName) -> Option<ShardId> {
    let first_alive = || shards.iter().find(|s| s.alive).map(|s| s.id);
    if stream.is_synthetic() {
        return first_alive();
    }
    let client = ClientId::new("shoal-admin").expect("a valid client id");
    let hints = crate::wire::Hints::default();
    let req = PlacementRequest {
        client: &client,
        stream,
        role: crate::wire::Role::Subscribe,
        hints: &hints,
        priority: crate::security::token::Priority::High,
        expect_kbps: 0,
    };
    match HeadroomPlacer::default().place(&req, shards, 1, crate::clock::now()) {
        Ok(d) => d.shards.first().map(|v| v.id).or_else(first_alive),
        Err(_) => first_alive(),
    }
}

/// Moves the source's items into the sender until the sender stops (or no shard is left).
async fn forward(
    shards: ShardSources,
    mut shard: Shard,
    stream: StreamName,
    sender: Arc<MirrorSender>,
    source: Arc<Mutex<ShardId>>,
) {
    let mut cursor = shard.subscribe(&stream, None);
    let mut last: Option<Seq> = None;
    let mut check = tokio::time::interval(SOURCE_CHECK);
    check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let item = tokio::select! {
            item = cursor.next() => item,
            _ = check.tick() => {
                if shard.is_alive() && shards.alive(shard.id()) {
                    continue;
                }
                None
            }
        };
        let Some(item) = item else {
            // The source shard is gone: go on from the next sequence on another one.
            let Some(next) = shards.pick(&stream) else {
                warn!(%stream, "no alive shard to read the mirrored stream from; waiting");
                tokio::time::sleep(SOURCE_CHECK).await;
                continue;
            };
            info!(%stream, from = next.id().0, was = shard.id().0, "mirror source moved");
            shard = next;
            *lock(&source) = shard.id();
            // Exact: `last` is a chunk's sequence or a gap's `to - 1`, never `Seq::MAX`.
            cursor = shard.subscribe(&stream, last.map(Seq::saturating_next));
            continue;
        };
        let r = match item {
            Item::Chunk(c) => {
                let seq = c.seq;
                if last.is_some_and(|l| seq <= l) {
                    continue;
                }
                last = Some(seq);
                sender.push(c).await
            }
            // The mirror goes on when a publisher does.
            Item::End { .. } => continue,
            Item::Gap { from, to } => {
                let from = last.map_or(from, |l| from.max(l.saturating_next()));
                // Not empty (`to > from`), so `to - 1` exists.
                if let Some(to_last) = to.prev().filter(|_| to > from) {
                    last = Some(to_last);
                    sender.push_gap(from, to);
                }
                Ok(())
            }
        };
        match r {
            Ok(()) => {}
            Err(SenderError::Mirror(MirrorError::Stopped)) => return,
            Err(e) => debug!(%stream, error = %e, "push refused"),
        }
    }
}
