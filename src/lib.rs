//! shoal — a QUIC-native transport service for real-time streams.
//!
//! A *hub* answers a stream request with a [`wire::Grant`]: a sealed token that binds a fresh
//! session secret to a shard group, the ranked shards of that group, and (for synthetic streams)
//! the newest chunk of the stream. The client then attaches straight to a shard with 0-RTT; the shard checks the token in
//! that first flight before it allocates anything, and serves a sequenced stream that the client
//! resumes on another shard of the group if the first one dies.
//!
//! Features: `client` (the [`client`] module) and `server` (hub, shards, key schedule, session
//! store, certificates). Both are on by default; an application that only consumes streams can
//! depend on `shoal` with `default-features = false, features = ["client"]`.
//!
//! The protocol is specified in `PROTOCOL.md` at the root of the repository.

pub mod ids;
pub mod proof;
pub mod synthetic;
pub mod tls;
pub mod wire;

#[cfg(feature = "client")]
pub mod client;
#[cfg(feature = "client")]
pub mod mirror;

#[cfg(all(feature = "server", feature = "client"))]
pub mod admin;
#[cfg(all(feature = "server", feature = "client"))]
pub mod bench;
#[cfg(feature = "server")]
pub mod certs;
#[cfg(feature = "server")]
pub mod cluster;
#[cfg(feature = "server")]
pub mod config;
#[cfg(feature = "server")]
pub mod demo;
#[cfg(feature = "server")]
pub mod hub;
#[cfg(feature = "server")]
pub mod keys;
#[cfg(all(feature = "server", feature = "client"))]
pub mod loadgen;
#[cfg(feature = "server")]
pub mod net;
#[cfg(feature = "server")]
pub mod pool;
#[cfg(feature = "server")]
pub mod shard;
#[cfg(feature = "server")]
pub mod tickets;
#[cfg(feature = "server")]
pub mod token;
#[cfg(all(feature = "server", feature = "client"))]
pub mod traffic;

/// ALPN of the hub and the shards.
pub const ALPN: &[u8] = b"shoal/1";
/// The cluster name used when none is configured; it is the TLS server name of hub and shards.
pub const DEFAULT_CLUSTER: &str = "shoal.local";

/// Microseconds since the Unix epoch (0 if the clock is before it).
pub fn unix_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}
