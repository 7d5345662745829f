//! Client profiler: what the hub remembers about each client id, across requests and restarts.
//!
//! # What it decides
//!
//! Nothing about admission or placement. It keeps one bounded [`ClientProfile`] per
//! [`ClientId`] — requests, favourite streams, the hints last declared, a ring of recent
//! sessions and running aggregates — and turns it into [`RequestFeatures`] for the load
//! predictor. What it decides is what to remember and what to forget:
//!
//! - which requests count: at most [`ProfilerConfig::max_requests_per_minute`] per client per
//!   minute; the rest are counted as `rate_limited` and change nothing but that count and the
//!   last-seen time, so a client id that never stops requesting cannot grow its profile or
//!   dominate the statistics;
//! - which hints to believe: the wire layer validates them ([`Hints::validate`]), but the
//!   profiler does not trust that. A hint string that is empty, longer than [`MAX_HINT_LEN`] or
//!   holds control characters, or a bitrate outside `1..=`[`MAX_BITRATE_KBPS`], is ignored (the
//!   previous value stays) and counted in `rejected_hints`;
//! - which profiles to drop (see *Bounds* and *Retention*).
//!
//! # Call order
//!
//! 1. At start: [`Profiler::open_or_fresh`] (or [`Profiler::with_store`], or [`Profiler::new`]
//!    for a memory-only profiler). Every stored profile is loaded.
//! 2. Per stream request, after [`Hints::validate`]: [`Profiler::features`] for the predictor,
//!    then [`Profiler::record_request`].
//! 3. Per ended session (the shards report them to the hub): [`Profiler::record_session`].
//! 4. Every [`ProfilerConfig::flush_interval`], and once on shutdown: [`Profiler::flush`]. It
//!    purges expired profiles, then deletes gone profiles and writes changed ones in one write
//!    transaction. A failed flush keeps everything pending for the next one.
//!
//! Every method takes `now_ms` (milliseconds since the Unix epoch); the profiler reads no clock.
//!
//! # Bounds
//!
//! At most `max_clients` profiles, in memory and on disk; a new client past that evicts the
//! least recently seen one (counted in `evictions`, deleted from disk at the next flush). A
//! profile holds at most `max_history` sessions (oldest dropped first), `max_streams` stream
//! counters (Space-Saving: a new stream replaces the least requested one and inherits its
//! count + 1, so counts are upper bounds), and hint strings of at most [`MAX_HINT_LEN`] bytes.
//! With the defaults a profile is at most ~15 KiB encoded, usually far less. Every operation is
//! O(log n) in the number of clients (a hash map plus a `BTreeMap` index by last-seen time).
//!
//! # Retention
//!
//! A profile not seen for longer than [`ProfilerConfig::retention`] (default 30 days) is purged
//! by [`Profiler::purge_expired`] (which [`Profiler::flush`] calls) and deleted from disk.
//!
//! # On-disk format
//!
//! One [redb](https://docs.rs/redb/2) file. Table `client_profiles`: key = the client id's
//! UTF-8 bytes, value = [`FORMAT_VERSION`] then the profile as MessagePack with named fields.
//! A record that fails to decode is skipped, counted (`corrupt_records`) and moved byte for byte
//! to table `client_profiles_corrupt`. A file that is not a readable profile database is renamed
//! to `<name>.corrupt-<unix_ms>` by [`Profiler::open_or_fresh`] — never deleted — and a fresh
//! database is started in its place (`corrupt_databases`).
//!
//! [`MAX_HINT_LEN`]: crate::wire::MAX_HINT_LEN

mod profile;
mod store;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tracing::{debug, info, warn};

use crate::ids::{ClientId, StreamName};
use crate::wire::Hints;

pub use profile::{ClientProfile, SessionRecord, SessionTotals, StreamCount};
pub use store::{ProfileStore, FORMAT_VERSION};

use profile::{bitrate_kbps, bucket, sanitize_hints, valid_bitrate, valid_hint};

/// Largest declared bitrate believed (the same bound as [`Hints::validate`]).
pub const MAX_BITRATE_KBPS: u32 = 10_000_000;
/// Hashed region and device-class buckets in [`RequestFeatures`]: `0` is unknown, hashed
/// values fall in `1..FEATURE_BUCKETS`.
pub const FEATURE_BUCKETS: u8 = 16;
pub(super) const MINUTE_MS: u64 = 60_000;

/// Settings of the profiler. Every default is safe for production.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProfilerConfig {
    /// Most profiles kept, in memory and on disk; past it the least recently seen is evicted.
    /// Default 100 000.
    pub max_clients: usize,
    /// Sessions kept per profile (0 keeps none); the oldest goes first. Default 64.
    pub max_history: usize,
    /// Stream counters kept per profile. Default 16.
    pub max_streams: usize,
    /// Requests per client per minute that update its profile; the rest only count as
    /// rate limited. Default 120.
    pub max_requests_per_minute: u32,
    /// A profile not seen for longer is purged. Default 30 days.
    #[serde(with = "humantime_serde")]
    pub retention: Duration,
    /// How often the hub calls [`Profiler::flush`]. Default 10 s.
    #[serde(with = "humantime_serde")]
    pub flush_interval: Duration,
}

impl Default for ProfilerConfig {
    fn default() -> Self {
        Self {
            max_clients: 100_000,
            max_history: 64,
            max_streams: 16,
            max_requests_per_minute: 120,
            retention: Duration::from_secs(30 * 24 * 3600),
            flush_interval: Duration::from_secs(10),
        }
    }
}

impl ProfilerConfig {
    pub fn validate(&self) -> Result<(), ProfilerError> {
        let why = if self.max_clients == 0 {
            "max_clients must be at least 1"
        } else if self.max_streams == 0 {
            "max_streams must be at least 1"
        } else if self.max_requests_per_minute == 0 {
            "max_requests_per_minute must be at least 1"
        } else if self.retention.is_zero() {
            "retention must be more than zero"
        } else if self.flush_interval.is_zero() {
            "flush_interval must be more than zero"
        } else {
            return Ok(());
        };
        Err(ProfilerError::InvalidConfig(why))
    }

    fn retention_ms(&self) -> u64 {
        u64::try_from(self.retention.as_millis()).unwrap_or(u64::MAX)
    }
}

/// Errors of the profiler and its database.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProfilerError {
    #[error("invalid profiler config: {0}")]
    InvalidConfig(&'static str),
    #[error("profile database {}: {op}: {source}", path.display())]
    Store {
        path: PathBuf,
        op: &'static str,
        source: Box<redb::Error>,
    },
    #[error("profile database {}: panicked while reading it", path.display())]
    Panicked { path: PathBuf },
    #[error(
        "cannot move corrupt profile database {} aside to {}: {source}",
        path.display(),
        to.display()
    )]
    MoveAside {
        path: PathBuf,
        to: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot encode a client profile: {0}")]
    Encode(#[from] rmp_serde::encode::Error),
}

impl ProfilerError {
    /// True when the database file itself is unreadable as a profile database (not a redb
    /// file, damaged pages, an old redb format, tables of another layout) — as opposed to a
    /// file that is locked by another process or cannot be opened at all.
    pub fn is_corrupt(&self) -> bool {
        match self {
            ProfilerError::Store { source, .. } => {
                matches!(
                    **source,
                    redb::Error::Corrupted(_)
                        | redb::Error::UpgradeRequired(_)
                        | redb::Error::TableTypeMismatch { .. }
                        | redb::Error::TableIsMultimap(_)
                        | redb::Error::TypeDefinitionChanged { .. }
                ) || matches!(
                    &**source,
                    redb::Error::Io(e) if e.kind() == std::io::ErrorKind::InvalidData
                )
            }
            ProfilerError::Panicked { .. } => true,
            _ => false,
        }
    }
}

/// What [`Profiler::record_request`] did with a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recorded {
    /// The request updated the profile.
    Counted,
    /// The client is over its per-minute cap; only `rate_limited` and last-seen changed.
    RateLimited,
}

/// Features of one request for the load predictor. Every `f64` is finite; an unknown value
/// is `None` (or bucket 0), never NaN.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct RequestFeatures {
    /// Whether the profiler has a profile for the client.
    pub known_client: bool,
    /// The request's valid bitrate hint, else the profile's last one.
    pub declared_bitrate_kbps: Option<f64>,
    /// Mean delivered bitrate over the client's sessions; `None` without sessions.
    pub mean_bitrate_kbps: Option<f64>,
    /// Mean session duration in seconds; `None` without sessions.
    pub mean_duration_s: Option<f64>,
    /// Sessions seen.
    pub sessions: f64,
    /// Requests in the last minute, rate-limited ones included.
    pub requests_per_minute: f64,
    /// Hashed region (request's, else profile's): `0` unknown, else `1..FEATURE_BUCKETS`.
    pub region_bucket: u8,
    /// Hashed device class, as `region_bucket`.
    pub device_bucket: u8,
}

/// Counters of the profiler, since it was built.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct ProfilerCounters {
    /// `record_request` calls, rate-limited ones included.
    pub requests: u64,
    /// Requests over a client's per-minute cap.
    pub rate_limited: u64,
    /// `record_session` calls.
    pub sessions: u64,
    /// Sessions whose start was in the future, clamped to now.
    pub clamped_sessions: u64,
    /// Hint fields ignored because they were out of range.
    pub rejected_hints: u64,
    /// Profiles dropped to stay within `max_clients`.
    pub evictions: u64,
    /// Profiles dropped after `retention`.
    pub purged: u64,
    /// Profiles loaded from the database at start.
    pub loaded: u64,
    /// Loaded profiles that broke a bound or invariant and were repaired.
    pub repaired: u64,
    /// Stored records that did not decode (skipped and quarantined).
    pub corrupt_records: u64,
    /// Database files moved aside because they were unreadable.
    pub corrupt_databases: u64,
    /// Successful flushes that wrote or deleted something.
    pub flushes: u64,
    /// Failed flushes.
    pub flush_errors: u64,
}

/// What one [`Profiler::flush`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FlushStats {
    pub purged: usize,
    pub saved: usize,
    pub deleted: usize,
}

struct Slot {
    profile: ClientProfile,
    /// Tie-breaker in the last-seen index, unique per slot.
    seq: u64,
}

/// The profiler: profiles in memory, optionally backed by a [`ProfileStore`].
pub struct Profiler {
    cfg: ProfilerConfig,
    clients: HashMap<ClientId, Slot>,
    /// (last_seen_ms, seq) → client, oldest first: eviction and retention walk its front.
    by_last_seen: BTreeMap<(u64, u64), ClientId>,
    next_seq: u64,
    /// Profiles changed since the last flush (tracked only with a store).
    dirty: HashSet<ClientId>,
    /// Profiles evicted or purged since the last flush (tracked only with a store).
    gone: HashSet<ClientId>,
    store: Option<ProfileStore>,
    counters: ProfilerCounters,
}

impl std::fmt::Debug for Profiler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Profiler")
            .field("clients", &self.clients.len())
            .field("dirty", &self.dirty.len())
            .field("store", &self.store)
            .field("counters", &self.counters)
            .finish()
    }
}

impl Profiler {
    /// A memory-only profiler: [`flush`](Self::flush) only purges.
    pub fn new(cfg: ProfilerConfig) -> Self {
        Self {
            cfg,
            clients: HashMap::new(),
            by_last_seen: BTreeMap::new(),
            next_seq: 0,
            dirty: HashSet::new(),
            gone: HashSet::new(),
            store: None,
            counters: ProfilerCounters::default(),
        }
    }

    /// A profiler over `store`, with every stored profile loaded (the newest `max_clients` of
    /// them; older ones are evicted and deleted at the first flush). Loaded profiles are
    /// repaired to the current bounds; records that do not decode are skipped and counted.
    pub fn with_store(cfg: ProfilerConfig, store: ProfileStore) -> Result<Self, ProfilerError> {
        let mut loaded = store.load_all()?;
        let mut p = Self::new(cfg);
        p.counters.corrupt_records = store.skipped_records();
        p.store = Some(store);
        loaded.sort_by_key(|c| c.last_seen_ms);
        p.counters.loaded = loaded.len() as u64;
        for mut profile in loaded {
            let repaired = profile.repair(&p.cfg);
            let id = profile.client_id.clone();
            p.insert(profile);
            if repaired {
                p.counters.repaired += 1;
                p.dirty.insert(id);
            }
        }
        info!(
            profiles = p.clients.len(),
            corrupt = p.counters.corrupt_records,
            repaired = p.counters.repaired,
            "client profiles loaded"
        );
        Ok(p)
    }

    /// Opens the database at `path` (creating it when missing) and loads it. A file that is
    /// not a readable profile database ([`ProfilerError::is_corrupt`], or a panic while
    /// reading it) is renamed to `<name>.corrupt-<now_ms>` — never deleted — with a warning,
    /// counted in `corrupt_databases`, and a fresh database is started. Other errors (the file
    /// is locked by another hub, the directory is not writable) are returned; the caller may
    /// then run with [`Profiler::new`].
    pub fn open_or_fresh(
        cfg: ProfilerConfig,
        path: impl AsRef<Path>,
        now_ms: u64,
    ) -> Result<Self, ProfilerError> {
        let path = path.as_ref();
        let first = catch_unwind(AssertUnwindSafe(|| {
            ProfileStore::open(path).and_then(|s| Self::with_store(cfg.clone(), s))
        }))
        .unwrap_or_else(|_| {
            Err(ProfilerError::Panicked {
                path: path.to_path_buf(),
            })
        });
        let e = match first {
            Ok(p) => return Ok(p),
            Err(e) if e.is_corrupt() => e,
            Err(e) => return Err(e),
        };
        let aside = move_aside(path, now_ms)?;
        warn!(
            path = %path.display(),
            moved_to = %aside.display(),
            error = %e,
            "profile database unreadable: moved aside, starting a fresh one"
        );
        let mut p = Self::with_store(cfg, ProfileStore::open(path)?)?;
        p.counters.corrupt_databases += 1;
        Ok(p)
    }

    pub fn config(&self) -> &ProfilerConfig {
        &self.cfg
    }

    pub fn counters(&self) -> &ProfilerCounters {
        &self.counters
    }

    /// Profiles held.
    pub fn len(&self) -> usize {
        self.clients.len()
    }

    pub fn is_empty(&self) -> bool {
        self.clients.is_empty()
    }

    /// Closes the database (after a last [`Profiler::flush`]): the file is free for the next
    /// profiler even while something still holds this one, which goes on in memory only.
    pub fn release_store(&mut self) -> Option<ProfileStore> {
        self.dirty.clear();
        self.gone.clear();
        self.store.take()
    }

    pub fn store(&self) -> Option<&ProfileStore> {
        self.store.as_ref()
    }

    pub fn profile(&self, id: &ClientId) -> Option<&ClientProfile> {
        self.clients.get(id).map(|s| &s.profile)
    }

    /// Every profile, in no particular order.
    pub fn profiles(&self) -> impl Iterator<Item = &ClientProfile> {
        self.clients.values().map(|s| &s.profile)
    }

    /// Records one stream request of `id`. Invalid hint fields are ignored and counted; a
    /// request over the client's per-minute cap only counts as rate limited.
    pub fn record_request(
        &mut self,
        id: &ClientId,
        stream: &StreamName,
        hints: &Hints,
        now_ms: u64,
    ) -> Recorded {
        self.counters.requests += 1;
        let (hints, rejected) = sanitize_hints(hints);
        if rejected > 0 {
            self.counters.rejected_hints += rejected;
            debug!(client = %id, rejected, "ignored out-of-range hints");
        }
        let max_rpm = self.cfg.max_requests_per_minute.max(1);
        let max_streams = self.cfg.max_streams;
        let p = self.touch(id, now_ms);
        if p.rate.hit(now_ms, max_rpm) {
            p.rate_limited = p.rate_limited.saturating_add(1);
            let first_in_window = p.rate.count == max_rpm.saturating_add(1);
            self.counters.rate_limited += 1;
            if first_in_window {
                warn!(
                    client = %id,
                    max_per_minute = max_rpm,
                    "client over its request rate: not profiling it until the next minute"
                );
            }
            return Recorded::RateLimited;
        }
        p.requests = p.requests.saturating_add(1);
        p.count_stream(stream, max_streams);
        let Hints {
            region,
            device_class,
            bitrate_kbps,
        } = hints;
        if region.is_some() {
            p.hints.region = region;
        }
        if device_class.is_some() {
            p.hints.device_class = device_class;
        }
        if bitrate_kbps.is_some() {
            p.hints.bitrate_kbps = bitrate_kbps;
        }
        Recorded::Counted
    }

    /// Records one ended session of `id`. The bitrate is recomputed from bytes and duration; a
    /// start in the future is clamped to `now_ms` and counted.
    pub fn record_session(&mut self, id: &ClientId, mut record: SessionRecord, now_ms: u64) {
        self.counters.sessions += 1;
        if record.started_ms > now_ms {
            record.started_ms = now_ms;
            self.counters.clamped_sessions += 1;
        }
        record.bitrate_kbps = bitrate_kbps(record.bytes, record.duration_ms);
        let max_history = self.cfg.max_history;
        let p = self.touch(id, now_ms);
        p.totals.add(&record);
        p.history.push_back(record);
        while p.history.len() > max_history {
            p.history.pop_front();
        }
    }

    /// Features of a request of `id` with `hints`, for the load predictor. Reads only; invalid
    /// hints fall back to the profile's (they are counted by `record_request`).
    pub fn features(&self, id: &ClientId, hints: &Hints, now_ms: u64) -> RequestFeatures {
        let p = self.profile(id);
        let last = p.map(|p| &p.hints);
        let declared = valid_bitrate(hints.bitrate_kbps)
            .or_else(|| last.and_then(|h| valid_bitrate(h.bitrate_kbps)));
        let region = valid_hint(&hints.region).or_else(|| last.and_then(|h| valid_hint(&h.region)));
        let device = valid_hint(&hints.device_class)
            .or_else(|| last.and_then(|h| valid_hint(&h.device_class)));
        let with_sessions = p.filter(|p| p.totals.sessions > 0);
        RequestFeatures {
            known_client: p.is_some(),
            declared_bitrate_kbps: declared.map(f64::from),
            mean_bitrate_kbps: with_sessions
                .map(|p| p.totals.mean_bitrate_kbps)
                .filter(|m| m.is_finite()),
            mean_duration_s: with_sessions
                .map(|p| p.totals.mean_duration_ms / 1000.0)
                .filter(|m| m.is_finite()),
            sessions: p.map_or(0.0, |p| p.totals.sessions as f64),
            requests_per_minute: p.map_or(0.0, |p| p.rate.per_minute(now_ms)),
            region_bucket: region.map_or(0, bucket),
            device_bucket: device.map_or(0, bucket),
        }
    }

    /// What the request's hints alone say (no profile read): for when the profiler is busy.
    pub fn hint_features(hints: &Hints) -> RequestFeatures {
        RequestFeatures {
            declared_bitrate_kbps: valid_bitrate(hints.bitrate_kbps).map(f64::from),
            region_bucket: valid_hint(&hints.region).map_or(0, bucket),
            device_bucket: valid_hint(&hints.device_class).map_or(0, bucket),
            ..RequestFeatures::default()
        }
    }

    /// Drops every profile not seen for longer than `retention`; returns how many.
    pub fn purge_expired(&mut self, now_ms: u64) -> usize {
        let cutoff = now_ms.saturating_sub(self.cfg.retention_ms());
        let mut purged = 0;
        while let Some(entry) = self.by_last_seen.first_entry() {
            if entry.key().0 >= cutoff {
                break;
            }
            let id = entry.remove();
            self.forget(id);
            purged += 1;
        }
        if purged > 0 {
            self.counters.purged += purged as u64;
            debug!(purged, "purged expired client profiles");
        }
        purged
    }

    /// Purges expired profiles, then (with a store) deletes evicted and purged profiles and
    /// writes changed ones in one write transaction. On error nothing is lost: everything
    /// stays pending for the next flush.
    pub fn flush(&mut self, now_ms: u64) -> Result<FlushStats, ProfilerError> {
        let purged = self.purge_expired(now_ms);
        let mut stats = FlushStats {
            purged,
            ..FlushStats::default()
        };
        let Some(store) = &self.store else {
            return Ok(stats);
        };
        if self.dirty.is_empty() && self.gone.is_empty() {
            return Ok(stats);
        }
        let result = {
            let save: Vec<&ClientProfile> = self
                .dirty
                .iter()
                .filter_map(|id| self.clients.get(id).map(|s| &s.profile))
                .collect();
            let gone: Vec<&ClientId> = self.gone.iter().collect();
            stats.saved = save.len();
            stats.deleted = gone.len();
            store.apply(&save, &gone)
        };
        match result {
            Ok(()) => {
                self.dirty.clear();
                self.gone.clear();
                self.counters.flushes += 1;
                debug!(
                    saved = stats.saved,
                    deleted = stats.deleted,
                    "client profiles flushed"
                );
                Ok(stats)
            }
            Err(e) => {
                self.counters.flush_errors += 1;
                warn!(error = %e, "cannot flush client profiles; will retry");
                Err(e)
            }
        }
    }

    /// The profile of `id`, created if new (evicting the least recently seen one when full),
    /// with its last-seen time moved to `now_ms` and marked dirty.
    fn touch(&mut self, id: &ClientId, now_ms: u64) -> &mut ClientProfile {
        if !self.clients.contains_key(id) {
            self.insert(ClientProfile::new(id.clone(), now_ms));
        }
        if self.store.is_some() && !self.dirty.contains(id) {
            self.dirty.insert(id.clone());
        }
        let Self {
            clients,
            by_last_seen,
            ..
        } = self;
        let slot = clients
            .get_mut(id)
            .expect("a slot for the id was inserted above");
        let p = &mut slot.profile;
        p.first_seen_ms = p.first_seen_ms.min(now_ms);
        // Last seen never goes back, so the index stays ordered by it.
        if now_ms > p.last_seen_ms {
            by_last_seen.remove(&(p.last_seen_ms, slot.seq));
            by_last_seen.insert((now_ms, slot.seq), id.clone());
            p.last_seen_ms = now_ms;
        }
        p
    }

    /// Inserts a profile the map does not hold, evicting to stay within `max_clients`.
    fn insert(&mut self, profile: ClientProfile) {
        while self.clients.len() >= self.cfg.max_clients.max(1) {
            let Some((_, oldest)) = self.by_last_seen.pop_first() else {
                break;
            };
            self.forget(oldest);
            self.counters.evictions += 1;
        }
        let id = profile.client_id.clone();
        let seq = self.next_seq;
        self.next_seq += 1;
        self.by_last_seen
            .insert((profile.last_seen_ms, seq), id.clone());
        self.gone.remove(&id);
        self.clients.insert(id, Slot { profile, seq });
    }

    /// Removes a client whose index entry is already gone.
    fn forget(&mut self, id: ClientId) {
        self.clients.remove(&id);
        self.dirty.remove(&id);
        if self.store.is_some() {
            self.gone.insert(id);
        }
    }
}

/// Renames `path` to `<name>.corrupt-<now_ms>` (with a `-N` suffix if that exists).
fn move_aside(path: &Path, now_ms: u64) -> Result<PathBuf, ProfilerError> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "profiles".into());
    let base = path.with_file_name(format!("{name}.corrupt-{now_ms}"));
    let mut to = base.clone();
    let mut n = 0u32;
    while to.exists() {
        n += 1;
        let mut name = base.clone().into_os_string();
        name.push(format!("-{n}"));
        to = PathBuf::from(name);
    }
    std::fs::rename(path, &to).map_err(|source| ProfilerError::MoveAside {
        path: path.to_path_buf(),
        to: to.clone(),
        source,
    })?;
    Ok(to)
}
