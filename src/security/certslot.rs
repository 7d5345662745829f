//! The certificate a server presents, replaceable while it serves: every TLS configuration of
//! a cluster (hub, embedded shards, control listener) resolves its certificate through one
//! [`CertSlot`], so a reload (SIGHUP) takes effect for the next handshake everywhere while
//! connections already up keep theirs. [`check_covers`] is what a client will check of it.

use std::sync::{Arc, RwLock};

use rustls::client::danger::ServerCertVerifier as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use super::tls::TlsError;

/// A certificate chain and its key, swapped atomically.
#[derive(Debug)]
pub struct CertSlot(RwLock<Arc<CertifiedKey>>);

impl CertSlot {
    /// A slot holding `chain` and `key`; fails when the key does not match the certificate.
    pub fn new(
        chain: Vec<CertificateDer<'static>>,
        key: &PrivateKeyDer<'static>,
    ) -> Result<Arc<Self>, TlsError> {
        Ok(Arc::new(Self(RwLock::new(certified(chain, key)?))))
    }

    /// Presents `chain`/`key` from the next handshake on. Returns whether they differ from
    /// what it held (an unchanged reload is no change).
    pub fn replace(
        &self,
        chain: Vec<CertificateDer<'static>>,
        key: &PrivateKeyDer<'static>,
    ) -> Result<bool, TlsError> {
        let new = certified(chain, key)?;
        let mut cur = self.0.write().unwrap_or_else(|e| e.into_inner());
        let changed = cur.cert != new.cert;
        *cur = new;
        Ok(changed)
    }

    /// The chain presented now.
    pub fn chain(&self) -> Vec<CertificateDer<'static>> {
        self.0
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .cert
            .clone()
    }
}

impl ResolvesServerCert for CertSlot {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.read().unwrap_or_else(|e| e.into_inner()).clone())
    }
}

fn certified(
    chain: Vec<CertificateDer<'static>>,
    key: &PrivateKeyDer<'static>,
) -> Result<Arc<CertifiedKey>, TlsError> {
    let signer = rustls::crypto::ring::sign::any_supported_type(key)?;
    let ck = CertifiedKey::new(chain, signer);
    ck.keys_match()?;
    Ok(Arc::new(ck))
}

/// Whether a client trusting `ca` accepts `chain` for the server name `name` now: the chain
/// leads to the CA, is within its validity and names `name`. The error is rustls's reason.
pub fn check_covers(
    chain: &[CertificateDer<'static>],
    ca: &[CertificateDer<'static>],
    name: &str,
) -> Result<(), TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    for c in ca {
        roots.add(c.clone())?;
    }
    let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
        Arc::new(roots),
        Arc::new(rustls::crypto::ring::default_provider()),
    )
    .build()
    .map_err(|e| TlsError::Quic(format!("cannot build a verifier: {e}")))?;
    let (leaf, rest) = chain.split_first().ok_or(TlsError::Empty {
        path: "the certificate chain".into(),
        what: "certificate",
    })?;
    let server = ServerName::try_from(name.to_string()).map_err(|_| {
        TlsError::Rustls(rustls::Error::General(format!(
            "{name:?} is not a DNS name"
        )))
    })?;
    verifier.verify_server_cert(leaf, rest, &server, &[], UnixTime::now())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_slot_swaps_and_a_foreign_or_misnamed_certificate_is_refused() {
        let a = crate::security::certs::generate("alpha.shoal").unwrap();
        let b = crate::security::certs::generate("beta.shoal").unwrap();
        let certs = |pem: &str| crate::cluster::pem_certs(pem);
        let key = |pem: &str| {
            rustls_pemfile::private_key(&mut pem.as_bytes())
                .unwrap()
                .unwrap()
        };
        let (ca_a, chain_a, key_a) = (certs(&a.ca_pem), certs(&a.chain_pem), key(&a.key_pem));
        let (chain_b, key_b) = (certs(&b.chain_pem), key(&b.key_pem));
        check_covers(&chain_a, &ca_a, "alpha.shoal").unwrap();
        // Another name, another CA.
        assert!(check_covers(&chain_a, &ca_a, "other.shoal").is_err());
        assert!(check_covers(&chain_b, &ca_a, "beta.shoal").is_err());

        let slot = CertSlot::new(chain_a.clone(), &key_a).unwrap();
        assert!(
            !slot.replace(chain_a.clone(), &key_a).unwrap(),
            "same: no change"
        );
        assert!(slot.replace(chain_b.clone(), &key_b).unwrap());
        assert_eq!(slot.chain(), chain_b);
        // A key that does not belong to the certificate is refused and changes nothing.
        assert!(slot.replace(chain_a, &key_b).is_err());
        assert_eq!(slot.chain(), chain_b);
    }
}
