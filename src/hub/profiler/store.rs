//! The profile database: one redb file, one table of client profiles, one table of quarantined
//! records.
//!
//! Key: the client id's UTF-8 bytes. Value: [`FORMAT_VERSION`] followed by the profile as
//! MessagePack with named fields (`rmp_serde::encode::write_named`), so fields can be added
//! with `#[serde(default)]` without a new version. Keys and values are stored as raw bytes and
//! decoded here, so a damaged record is an error this module counts, never a panic in redb's
//! own decoding.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use redb::{Database, ReadableTable, TableDefinition};
use tracing::warn;

use super::{ClientProfile, ProfilerError};
use crate::ids::ClientId;

/// The first byte of every stored value.
pub const FORMAT_VERSION: u8 = 1;

/// Client id bytes → version byte + MessagePack profile.
pub(super) const PROFILES: TableDefinition<&[u8], &[u8]> = TableDefinition::new("client_profiles");
/// Records that failed to decode, moved here byte for byte by [`ProfileStore::load_all`] so
/// that a later save under the same key cannot overwrite them.
pub(super) const QUARANTINE: TableDefinition<&[u8], &[u8]> =
    TableDefinition::new("client_profiles_corrupt");

/// An open profile database. Every write is one redb write transaction (durable on commit).
pub struct ProfileStore {
    db: Database,
    path: PathBuf,
    skipped: AtomicU64,
}

impl std::fmt::Debug for ProfileStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProfileStore")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl ProfileStore {
    /// Opens the database at `path`, creating it (and its tables) when the file is missing or
    /// empty. A file that is not a redb database, or a profile database of an unknown layout,
    /// is an error for which [`ProfilerError::is_corrupt`] is true.
    pub fn open(path: impl AsRef<Path>) -> Result<ProfileStore, ProfilerError> {
        let path = path.as_ref().to_path_buf();
        let db = Database::create(&path).map_err(store_err(&path, "open"))?;
        let txn = db.begin_write().map_err(store_err(&path, "begin write"))?;
        {
            txn.open_table(PROFILES)
                .map_err(store_err(&path, "open table"))?;
            txn.open_table(QUARANTINE)
                .map_err(store_err(&path, "open table"))?;
        }
        txn.commit().map_err(store_err(&path, "commit"))?;
        Ok(ProfileStore {
            db,
            path,
            skipped: AtomicU64::new(0),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Records skipped by [`load_all`](Self::load_all) because they did not decode, since open.
    pub fn skipped_records(&self) -> u64 {
        self.skipped.load(Ordering::Relaxed)
    }

    /// Every profile that decodes. A record that does not (bad key, unknown version byte,
    /// undecodable body, body naming another client) is skipped, counted in
    /// [`skipped_records`](Self::skipped_records), logged without its bytes, and moved to the
    /// quarantine table. An error reading the database itself is returned.
    pub fn load_all(&self) -> Result<Vec<ClientProfile>, ProfilerError> {
        let mut profiles = Vec::new();
        let mut bad: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
        {
            let txn = self
                .db
                .begin_read()
                .map_err(store_err(&self.path, "begin read"))?;
            let table = txn
                .open_table(PROFILES)
                .map_err(store_err(&self.path, "open table"))?;
            for row in table.iter().map_err(store_err(&self.path, "read"))? {
                let (key, value) = row.map_err(store_err(&self.path, "read"))?;
                match decode(key.value(), value.value()) {
                    Ok(p) => profiles.push(p),
                    Err(why) => {
                        warn!(
                            path = %self.path.display(),
                            why,
                            len = value.value().len(),
                            "skipping a client profile record that does not decode"
                        );
                        bad.push((key.value().to_vec(), value.value().to_vec()));
                    }
                }
            }
        }
        if !bad.is_empty() {
            self.skipped.fetch_add(bad.len() as u64, Ordering::Relaxed);
            if let Err(e) = self.quarantine(&bad) {
                // Not fatal: the records stay where they are and are skipped again next time.
                warn!(error = %e, "cannot quarantine corrupt client profile records");
            }
        }
        Ok(profiles)
    }

    /// Writes `profiles` in one write transaction.
    pub fn save(&self, profiles: &[&ClientProfile]) -> Result<(), ProfilerError> {
        self.apply(profiles, &[])
    }

    /// Deletes the profiles of `ids` in one write transaction; missing ids are not an error.
    pub fn delete(&self, ids: &[&ClientId]) -> Result<(), ProfilerError> {
        self.apply(&[], ids)
    }

    /// Deletes `delete`, then writes `save`, in one write transaction: all or nothing.
    pub fn apply(
        &self,
        save: &[&ClientProfile],
        delete: &[&ClientId],
    ) -> Result<(), ProfilerError> {
        let encoded = save
            .iter()
            .map(|p| Ok((p.client_id.as_str().as_bytes(), encode(p)?)))
            .collect::<Result<Vec<_>, ProfilerError>>()?;
        let txn = self
            .db
            .begin_write()
            .map_err(store_err(&self.path, "begin write"))?;
        {
            let mut table = txn
                .open_table(PROFILES)
                .map_err(store_err(&self.path, "open table"))?;
            for id in delete {
                table
                    .remove(id.as_str().as_bytes())
                    .map_err(store_err(&self.path, "delete"))?;
            }
            for (key, value) in &encoded {
                table
                    .insert(*key, value.as_slice())
                    .map_err(store_err(&self.path, "write"))?;
            }
        }
        txn.commit().map_err(store_err(&self.path, "commit"))
    }

    /// Moves undecodable records from the profile table to the quarantine table.
    fn quarantine(&self, bad: &[(Vec<u8>, Vec<u8>)]) -> Result<(), ProfilerError> {
        let txn = self
            .db
            .begin_write()
            .map_err(store_err(&self.path, "begin write"))?;
        {
            let mut profiles = txn
                .open_table(PROFILES)
                .map_err(store_err(&self.path, "open table"))?;
            let mut quarantine = txn
                .open_table(QUARANTINE)
                .map_err(store_err(&self.path, "open table"))?;
            for (key, value) in bad {
                quarantine
                    .insert(key.as_slice(), value.as_slice())
                    .map_err(store_err(&self.path, "write"))?;
                profiles
                    .remove(key.as_slice())
                    .map_err(store_err(&self.path, "delete"))?;
            }
        }
        txn.commit().map_err(store_err(&self.path, "commit"))
    }

    /// How many records sit in the quarantine table.
    pub fn quarantined(&self) -> Result<u64, ProfilerError> {
        use redb::ReadableTableMetadata;
        let txn = self
            .db
            .begin_read()
            .map_err(store_err(&self.path, "begin read"))?;
        let table = txn
            .open_table(QUARANTINE)
            .map_err(store_err(&self.path, "open table"))?;
        table.len().map_err(store_err(&self.path, "read"))
    }
}

/// The stored form of a profile: version byte, then named-field MessagePack.
pub(super) fn encode(p: &ClientProfile) -> Result<Vec<u8>, ProfilerError> {
    let mut buf = vec![FORMAT_VERSION];
    rmp_serde::encode::write_named(&mut buf, p)?;
    Ok(buf)
}

/// Decodes one record; the error says why (never the bytes).
pub(super) fn decode(key: &[u8], value: &[u8]) -> Result<ClientProfile, &'static str> {
    let key = std::str::from_utf8(key).map_err(|_| "key is not UTF-8")?;
    let (&version, body) = value.split_first().ok_or("value is empty")?;
    if version != FORMAT_VERSION {
        return Err("unknown format version");
    }
    let profile: ClientProfile =
        rmp_serde::from_slice(body).map_err(|_| "value is not a client profile")?;
    if profile.client_id.as_str() != key {
        return Err("key does not match the profile's client id");
    }
    Ok(profile)
}

fn store_err<'a, E: Into<redb::Error>>(
    path: &'a Path,
    op: &'static str,
) -> impl FnOnce(E) -> ProfilerError + 'a {
    move |e| ProfilerError::Store {
        path: path.to_path_buf(),
        op,
        source: Box::new(e.into()),
    }
}
