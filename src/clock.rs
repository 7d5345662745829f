//! The one place that reads the clock.
//!
//! Decisions take `now` as a parameter (sans-IO cores); drivers read it here, at their entry
//! points. `.clippy.toml` bans `Instant::now` (std's and tokio's) and `SystemTime::now`
//! everywhere else; each remaining exception carries an `#[allow]` with its reason.

use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// The monotonic clock.
#[allow(clippy::disallowed_methods)] // the clock module
pub fn now() -> Instant {
    Instant::now()
}

/// The tokio timer clock, for `sleep_until` / `timeout_at` deadlines in drivers. Under a paused
/// runtime (`start_paused` tests) it is virtual time, which is why deadlines use it, not [`now`].
#[allow(clippy::disallowed_methods)] // the clock module
pub fn tokio_now() -> tokio::time::Instant {
    tokio::time::Instant::now()
}

/// Microseconds since the Unix epoch (0 if the clock is before it).
#[allow(clippy::disallowed_methods)] // the clock module
pub fn unix_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

/// Milliseconds since the Unix epoch.
pub fn unix_ms() -> u64 {
    unix_us() / 1000
}
