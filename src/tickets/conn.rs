//! Which session-store entries one connection's handshake produced.
//!
//! rustls calls `StoresServerSessions::put` inside the handshake, with no connection in sight.
//! So every connection gets its own server configuration (quinn `Incoming::accept_with`) whose
//! store is a [`ConnStore`]: it records the entry for this connection. Until the connection
//! names its client (the hub: the stream request; a shard: the admitted token), entries wait
//! in the record, and reach the endpoint's [`SessionStore`] only once the connection sent a
//! whole first frame ([`ConnStore::commit`]; a bind commits too): a connection that never asks
//! for anything (a handshake flood, a stream stalled after two bytes) stores nothing.
//! [`ConnStore::bind`] hands them to a sink that knows the client; later ones go to the store
//! at once and [`ConnStore::flush`] hands them over (the driver flushes when the handshake completes,
//! which is when rustls issues its tickets).

use std::sync::{Arc, Mutex};

use rustls::server::StoresServerSessions;

use super::SessionStore;
use crate::link::StoreEntry;

/// Entries one connection may record before it is bound; rustls puts `send_tls13_tickets`
/// (≤ 8) per handshake, so more means something is wrong, and the rest are not recorded.
pub const MAX_PENDING: usize = 16;

/// Receives a bound connection's entries.
pub type EntrySink = Arc<dyn Fn(Vec<StoreEntry>) + Send + Sync>;

enum Record {
    Pending(Vec<StoreEntry>),
    /// Bound to a client: entries collect in `held` until the next [`ConnStore::flush`].
    Bound {
        sink: EntrySink,
        held: Vec<StoreEntry>,
    },
}

/// A per-connection view of an endpoint's store (see the module doc).
pub struct ConnStore {
    store: Arc<SessionStore>,
    record: Mutex<Record>,
    /// The connection sent a whole first frame: its entries go to the store.
    committed: std::sync::atomic::AtomicBool,
    /// The handshake resumed a stored session (`take` found it).
    resumed: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for ConnStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnStore").finish_non_exhaustive()
    }
}

impl ConnStore {
    pub fn new(store: Arc<SessionStore>) -> Self {
        Self {
            store,
            record: Mutex::new(Record::Pending(Vec::new())),
            committed: std::sync::atomic::AtomicBool::new(false),
            resumed: std::sync::atomic::AtomicBool::new(false),
        }
    }

    fn record(&self) -> std::sync::MutexGuard<'_, Record> {
        self.record.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Hands what was recorded to `sink`, and from then on what each [`ConnStore::flush`]
    /// finds (rustls puts one ticket at a time; a flush hands them over together). Only the
    /// first bind counts (a connection serves one client); returns whether this was it.
    pub fn bind(&self, sink: EntrySink) -> bool {
        let mut r = self.record();
        let Record::Pending(pending) = &mut *r else {
            return false;
        };
        let pending = std::mem::take(pending);
        *r = Record::Bound {
            sink: sink.clone(),
            held: Vec::new(),
        };
        // Under the record's lock, like `commit`: one of them stores what was pending.
        let store_pending = !self
            .committed
            .swap(true, std::sync::atomic::Ordering::Relaxed);
        drop(r);
        if store_pending {
            self.store_all(&pending);
        }
        if !pending.is_empty() {
            sink(pending);
        }
        true
    }

    /// The connection sent a whole first frame: what its handshake recorded goes to the
    /// endpoint's store now, and later entries at once (still waiting for a bind's sink).
    pub fn commit(&self) {
        let r = self.record();
        if self
            .committed
            .swap(true, std::sync::atomic::Ordering::Relaxed)
        {
            return;
        }
        if let Record::Pending(pending) = &*r {
            self.store_all(pending);
        }
    }

    /// Puts `entries` in the endpoint's store.
    fn store_all(&self, entries: &[StoreEntry]) {
        for e in entries {
            self.store.put(e.key.to_vec(), e.value.to_vec());
        }
    }

    /// Hands the entries put since the last flush to the bound sink (nothing before a bind).
    pub fn flush(&self) {
        let mut r = self.record();
        let Record::Bound { sink, held } = &mut *r else {
            return;
        };
        if held.is_empty() {
            return;
        }
        let (sink, held) = (sink.clone(), std::mem::take(held));
        drop(r);
        sink(held);
    }

    /// Whether this connection's handshake resumed a stored session. rustls takes the stored
    /// session for every TLS 1.3 resumption, and accepts early data whenever it resumes a
    /// stored session the client offered early data on.
    pub fn resumed(&self) -> bool {
        self.resumed.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Entries recorded and not yet handed to a sink.
    pub fn pending(&self) -> usize {
        match &*self.record() {
            Record::Pending(p) => p.len(),
            Record::Bound { held, .. } => held.len(),
        }
    }
}

impl StoresServerSessions for ConnStore {
    fn put(&self, key: Vec<u8>, value: Vec<u8>) -> bool {
        let entry = StoreEntry {
            key: bytes::Bytes::copy_from_slice(&key),
            value: bytes::Bytes::copy_from_slice(&value),
        };
        match &mut *self.record() {
            // Stored when the connection binds (the ticket still goes out: a client whose
            // connection never binds falls back to a full handshake next time).
            Record::Pending(p) => {
                if p.len() < MAX_PENDING {
                    p.push(entry);
                }
                if self.committed.load(std::sync::atomic::Ordering::Relaxed) {
                    return self.store.put(key, value);
                }
                true
            }
            Record::Bound { held, .. } => {
                if held.len() < MAX_PENDING {
                    held.push(entry);
                }
                self.store.put(key, value)
            }
        }
    }

    fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.store.get(key)
    }

    fn take(&self, key: &[u8]) -> Option<Vec<u8>> {
        let v = self.store.take(key);
        if v.is_some() {
            self.resumed
                .store(true, std::sync::atomic::Ordering::Relaxed);
        }
        v
    }

    fn can_cache(&self) -> bool {
        true
    }
}

/// Builds one server configuration per connection over an endpoint's store.
#[derive(Clone)]
pub struct ConnConfigs {
    crypto: Arc<rustls::ServerConfig>,
    transport: Arc<quinn::TransportConfig>,
    token_key: Arc<dyn quinn::crypto::HandshakeTokenKey>,
    store: Arc<SessionStore>,
    guard: crate::guard::Guard,
}

impl ConnConfigs {
    /// `crypto` is the endpoint's TLS configuration; its session storage is replaced per
    /// connection by a [`ConnStore`] over `store`.
    pub fn new(
        crypto: Arc<rustls::ServerConfig>,
        transport: Arc<quinn::TransportConfig>,
        token_key: Arc<dyn quinn::crypto::HandshakeTokenKey>,
        store: Arc<SessionStore>,
    ) -> Self {
        Self {
            crypto,
            transport,
            token_key,
            store,
            guard: crate::guard::Guard::new(Default::default()),
        }
    }

    /// These configurations with the handshake limits `settings` (see [`crate::guard`]).
    pub fn with_guard(mut self, settings: crate::guard::GuardSettings) -> Self {
        self.guard = crate::guard::Guard::new(settings);
        self
    }

    /// The endpoint's handshake guard.
    pub fn guard(&self) -> &crate::guard::Guard {
        &self.guard
    }

    pub fn store(&self) -> &Arc<SessionStore> {
        &self.store
    }

    /// The endpoint's default configuration (its store records nothing).
    pub fn endpoint_default(&self) -> Result<quinn::ServerConfig, crate::security::tls::TlsError> {
        let mut crypto = (*self.crypto).clone();
        crypto.session_storage = self.store.clone();
        self.quinn(crypto)
    }

    /// Binds a server endpoint at `addr` (see [`crate::net::screened_server_endpoint`])
    /// whose default configuration is [`ConnConfigs::endpoint_default`].
    pub fn bind(
        &self,
        addr: std::net::SocketAddr,
        buffer: usize,
        endpoint_config: quinn::EndpointConfig,
        screen: Option<crate::net::Screen>,
    ) -> std::io::Result<(quinn::Endpoint, std::net::SocketAddr)> {
        let default = self
            .endpoint_default()
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        crate::net::screened_server_endpoint(addr, buffer, endpoint_config, default, screen)
    }

    /// A configuration for one connection, and the record of what its handshake stores.
    pub fn for_connection(
        &self,
    ) -> Result<(Arc<quinn::ServerConfig>, Arc<ConnStore>), crate::security::tls::TlsError> {
        let conn = Arc::new(ConnStore::new(self.store.clone()));
        let mut crypto = (*self.crypto).clone();
        crypto.session_storage = conn.clone();
        Ok((Arc::new(self.quinn(crypto)?), conn))
    }

    fn quinn(
        &self,
        crypto: rustls::ServerConfig,
    ) -> Result<quinn::ServerConfig, crate::security::tls::TlsError> {
        let quic = quinn::crypto::rustls::QuicServerConfig::try_from(Arc::new(crypto))
            .map_err(|e| crate::security::tls::TlsError::Quic(e.to_string()))?;
        let mut sc = quinn::ServerConfig::new(Arc::new(quic), self.token_key.clone());
        sc.transport_config(self.transport.clone());
        Ok(sc)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn entries_wait_for_the_client_then_flow_to_its_sink() {
        let store = Arc::new(SessionStore::new(100, Duration::from_secs(60)));
        let conn = ConnStore::new(store.clone());
        assert!(conn.put(b"k1".to_vec(), b"v1".to_vec()));
        assert_eq!(conn.pending(), 1);
        assert_eq!(
            store.len(),
            0,
            "nothing is stored for a connection that asked nothing"
        );
        let refused = ConnStore::new(store.clone());
        refused.put(b"r1".to_vec(), b"v".to_vec());
        refused.commit();
        assert_eq!(store.len(), 1, "a whole first frame commits, bound or not");
        refused.put(b"r2".to_vec(), b"v".to_vec());
        assert_eq!(store.len(), 2, "and what comes after it");
        store.take(b"r1");
        store.take(b"r2");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = seen.clone();
        assert!(conn.bind(Arc::new(move |e: Vec<StoreEntry>| {
            s.lock().unwrap().extend(e);
        })));
        assert_eq!(
            store.len(),
            1,
            "stored once the connection named its client"
        );
        assert!(!conn.bind(Arc::new(|_| {})), "one client per connection");
        conn.put(b"k2".to_vec(), b"v2".to_vec());
        conn.put(b"k3".to_vec(), b"v3".to_vec());
        assert_eq!(
            seen.lock().unwrap().len(),
            1,
            "later entries wait for a flush"
        );
        assert_eq!(
            store.len(),
            3,
            "a bound connection's entries are stored at once"
        );
        conn.flush();
        conn.flush();
        let keys: Vec<Vec<u8>> = seen
            .lock()
            .unwrap()
            .iter()
            .map(|e| e.key.to_vec())
            .collect();
        assert_eq!(keys, vec![b"k1".to_vec(), b"k2".to_vec(), b"k3".to_vec()]);
        // Reads go to the endpoint's store, single-use.
        assert_eq!(conn.take(b"k1"), Some(b"v1".to_vec()));
        assert_eq!(conn.take(b"k1"), None);
    }

    #[test]
    fn an_unbound_connection_records_a_bounded_number() {
        let store = Arc::new(SessionStore::new(100, Duration::from_secs(60)));
        let conn = ConnStore::new(store);
        for i in 0..MAX_PENDING + 5 {
            conn.put(vec![i as u8], vec![]);
        }
        assert_eq!(conn.pending(), MAX_PENDING);
    }
}
