//! What keeps the cluster's promises: the key schedule and the sealed token (server), the
//! attach proof and bind MAC, TLS settings shared by every endpoint, and dev certificates.

#[cfg(feature = "server")]
pub mod certs;
#[cfg(feature = "server")]
pub mod certslot;
#[cfg(feature = "server")]
pub mod keys;
pub mod proof;
pub mod tls;
#[cfg(feature = "server")]
pub mod token;
