//! shoal — a QUIC-native transport service for real-time streams.
//!
//! A *hub* answers a stream request with a [`wire::Grant`]: a sealed token that binds a fresh
//! session secret to a shard group, the ranked shards of that group, and (for synthetic streams)
//! the newest chunk of the stream. The client then attaches straight to a shard with 0-RTT; the shard checks the token in
//! that first flight before it allocates anything, and serves a sequenced stream that the client
//! resumes on another shard of the group if the first one dies.
//!
//! Features: `client` (the [`client`] module), `server` (hub, shards, key schedule, session
//! store, certificates, admin API) and `tools` (the demo, traffic shapes, load generator and
//! benchmarks, and the `shoal` binary; implies both others). All are on by default; an
//! application that only consumes streams can depend on `shoal` with
//! `default-features = false, features = ["client"]`, one that embeds a cluster with
//! `features = ["client", "server"]`, which builds none of the tools' dependencies (clap,
//! indicatif, plotters, …).
//!
//! The protocol is specified in `PROTOCOL.md` at the root of the repository.

pub mod clock;
pub mod ids;
pub mod metrics_hist;
pub mod security;
#[cfg(feature = "server")]
mod sync;
pub mod synthetic;
pub mod wire;

#[cfg(feature = "client")]
pub mod client;
#[cfg(feature = "client")]
pub mod mirror;

#[cfg(all(feature = "server", feature = "client"))]
pub mod admin;
#[cfg(feature = "server")]
pub mod cluster;
#[cfg(all(feature = "server", feature = "client"))]
#[doc(hidden)]
pub mod fuzzing;
#[cfg(feature = "server")]
pub mod guard;
#[cfg(feature = "server")]
pub mod hub;
#[cfg(feature = "server")]
pub mod lb;
#[cfg(feature = "server")]
pub mod link;
#[cfg(feature = "server")]
pub mod net;
#[cfg(feature = "server")]
pub mod pool;
#[cfg(feature = "server")]
pub mod shard;
#[cfg(feature = "server")]
pub mod tickets;
#[cfg(feature = "tools")]
pub mod tools;

/// ALPN of the hub and the shards.
pub const ALPN: &[u8] = b"shoal/1";
/// The cluster name used when none is configured; it is the TLS server name of hub and shards.
pub const DEFAULT_CLUSTER: &str = "shoal.local";
/// The git revision the crate was built from (`git rev-parse --short=12 HEAD` at build time;
/// `unknown` when built outside a git checkout). `shoal_build_info` carries it.
pub const GIT_REVISION: &str = env!("SHOAL_GIT_REVISION");

pub use clock::unix_us;
