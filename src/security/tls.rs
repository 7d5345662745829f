//! TLS and QUIC transport settings shared by hub, shards and clients.
//!
//! 0-RTT to a shard with a ticket from the hub needs (DESIGN.md): the same SNI and ALPN on hub
//! and shards, the *same* `Arc<rustls::ClientConfig>` for every connection of a client, and shard
//! transport limits no lower than the hub's — so every endpoint takes its transport settings
//! from [`transport_config`].

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::ALPN;

/// Loading certificates or building a TLS configuration failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path} holds no {what}")]
    Empty { path: String, what: &'static str },
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("QUIC does not accept this TLS configuration: {0}")]
    Quic(String),
}

/// Transport settings used by every shoal endpoint.
pub fn transport_config(idle_timeout: Duration) -> Arc<quinn::TransportConfig> {
    Arc::new(transport(idle_timeout))
}

fn transport(idle_timeout: Duration) -> quinn::TransportConfig {
    let mut t = quinn::TransportConfig::default();
    t.max_idle_timeout(Some(
        quinn::IdleTimeout::try_from(idle_timeout).unwrap_or(quinn::VarInt::MAX.into()),
    ));
    // Failure detection is done with application heartbeats (see the shard and the client),
    // never with the idle timeout.
    t.keep_alive_interval(None);
    t.max_concurrent_bidi_streams(64u32.into());
    t.max_concurrent_uni_streams(64u32.into());
    t
}

/// Transport settings of the hub's client connections (both ends): [`transport_config`]
/// without path-MTU discovery. They carry a request, a grant and the first chunk, all far
/// under the 1,200 bytes every QUIC path carries; a grant to a shard on another host is held
/// for the shard's confirmation (a link round trip), and in that time each end's probes at
/// 1,389, 1,420 and 1,452 bytes, with their acknowledgements, were 12 of the 26 packets of a
/// grant's connection (`bench grant --remote-shards`).
pub fn hub_transport_config(idle_timeout: Duration) -> Arc<quinn::TransportConfig> {
    let mut t = transport(idle_timeout);
    t.mtu_discovery_config(None);
    Arc::new(t)
}

pub fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let data = std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.display().to_string(),
        source,
    })?;
    let certs = rustls_pemfile::certs(&mut &data[..])
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| TlsError::Read {
            path: path.display().to_string(),
            source,
        })?;
    if certs.is_empty() {
        return Err(TlsError::Empty {
            path: path.display().to_string(),
            what: "PEM certificate",
        });
    }
    Ok(certs)
}

pub fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let data = std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.display().to_string(),
        source,
    })?;
    rustls_pemfile::private_key(&mut &data[..])
        .map_err(|source| TlsError::Read {
            path: path.display().to_string(),
            source,
        })?
        .ok_or_else(|| TlsError::Empty {
            path: path.display().to_string(),
            what: "PEM private key",
        })
}

fn root_store(roots: &[CertificateDer<'static>]) -> Result<rustls::RootCertStore, TlsError> {
    let mut store = rustls::RootCertStore::empty();
    for r in roots {
        store.add(r.clone())?;
    }
    Ok(store)
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The client's TLS configuration. Build it once per client and share it: rustls enables
/// 0-RTT only when the resumed ticket came from the very same configuration.
pub fn client_crypto(
    roots: &[CertificateDer<'static>],
) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let store = root_store(roots)?;
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(store)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![ALPN.to_vec()];
    cfg.enable_early_data = true;
    // Room for the 8 tickets rustls keeps per server name, for a few names.
    cfg.resumption = rustls::client::Resumption::in_memory_sessions(64);
    Ok(Arc::new(cfg))
}

/// A quinn client configuration over a shared TLS configuration.
pub fn client_config(
    crypto: Arc<rustls::ClientConfig>,
    idle_timeout: Duration,
) -> Result<quinn::ClientConfig, TlsError> {
    client_config_with(crypto, transport_config(idle_timeout))
}

fn client_config_with(
    crypto: Arc<rustls::ClientConfig>,
    transport: Arc<quinn::TransportConfig>,
) -> Result<quinn::ClientConfig, TlsError> {
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(crypto)
        .map_err(|e| TlsError::Quic(e.to_string()))?;
    let mut cfg = quinn::ClientConfig::new(Arc::new(quic));
    cfg.transport_config(transport);
    Ok(cfg)
}

/// [`client_config`] for connections to the hub ([`hub_transport_config`]).
pub fn hub_client_config(
    crypto: Arc<rustls::ClientConfig>,
    idle_timeout: Duration,
) -> Result<quinn::ClientConfig, TlsError> {
    client_config_with(crypto, hub_transport_config(idle_timeout))
}

/// The server's TLS configuration: stateful resumption through `store` (the only kind that
/// allows early data in rustls 0.23), `tickets` session tickets per handshake, 0-RTT on.
#[cfg(feature = "server")]
pub fn server_crypto(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    store: Arc<dyn rustls::server::StoresServerSessions>,
    tickets: usize,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let slot = super::certslot::CertSlot::new(chain, &key)?;
    server_crypto_in(slot, store, tickets)
}

/// [`server_crypto`] presenting the certificate `slot` holds (replaceable while serving).
#[cfg(feature = "server")]
pub fn server_crypto_in(
    slot: Arc<super::certslot::CertSlot>,
    store: Arc<dyn rustls::server::StoresServerSessions>,
    tickets: usize,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_cert_resolver(slot);
    cfg.alpn_protocols = vec![ALPN.to_vec()];
    cfg.max_early_data_size = u32::MAX;
    cfg.session_storage = store;
    cfg.send_tls13_tickets = tickets;
    Ok(Arc::new(cfg))
}

/// TLS of a mutually authenticated client (a mirror sender, a shard's control link): trusts
/// `roots`, presents `chain`/`key` as its client certificate, speaks `alpn`.
pub fn mtls_client_crypto(
    roots: &[CertificateDer<'static>],
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    alpn: &[u8],
) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let store = root_store(roots)?;
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(store)
        .with_client_auth_cert(chain, key)?;
    cfg.alpn_protocols = vec![alpn.to_vec()];
    Ok(Arc::new(cfg))
}

/// TLS of a server that admits only clients whose certificate chains to `client_roots` (a
/// mirror receiver, the hub's control listener): presents `chain`/`key`, speaks `alpn`.
pub fn mtls_server_crypto(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    client_roots: &[CertificateDer<'static>],
    alpn: &[u8],
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(client_verifier(client_roots)?)
        .with_single_cert(chain, key)?;
    cfg.alpn_protocols = vec![alpn.to_vec()];
    Ok(Arc::new(cfg))
}

/// [`mtls_server_crypto`] presenting the certificate `slot` holds (replaceable while serving).
#[cfg(feature = "server")]
pub fn mtls_server_crypto_in(
    slot: Arc<super::certslot::CertSlot>,
    client_roots: &[CertificateDer<'static>],
    alpn: &[u8],
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(client_verifier(client_roots)?)
        .with_cert_resolver(slot);
    cfg.alpn_protocols = vec![alpn.to_vec()];
    Ok(Arc::new(cfg))
}

fn client_verifier(
    roots: &[CertificateDer<'static>],
) -> Result<Arc<dyn rustls::server::danger::ClientCertVerifier>, TlsError> {
    let store = root_store(roots)?;
    rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(store), provider())
        .build()
        .map_err(|e| TlsError::Quic(format!("client verifier: {e}")))
}

/// TLS of a mirror sender (see [`mtls_client_crypto`]).
pub fn mirror_client_crypto(
    roots: &[CertificateDer<'static>],
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    mtls_client_crypto(roots, chain, key, crate::mirror::MIRROR_ALPN)
}

/// TLS of a mirror receiver (see [`mtls_server_crypto`]).
pub fn mirror_server_crypto(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    client_roots: &[CertificateDer<'static>],
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    mtls_server_crypto(chain, key, client_roots, crate::mirror::MIRROR_ALPN)
}
