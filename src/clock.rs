//! The one place that reads the clock.
//!
//! Decisions take `now` as a parameter (sans-IO cores); drivers read it here, at their entry
//! points. `.clippy.toml` bans `Instant::now` (std's and tokio's) and `SystemTime::now`
//! everywhere else; each remaining exception carries an `#[allow]` with its reason.

use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// The monotonic clock: tokio's, as a std `Instant`. Outside a paused runtime that is the
/// system's monotonic clock; under a paused one (`start_paused` tests) it is the runtime's
/// virtual time, so drivers, their deadlines and the decisions they feed all see the same time.
pub fn now() -> Instant {
    tokio_now().into_std()
}

/// The tokio timer clock, for `sleep_until` / `timeout_at` deadlines in drivers (the same time
/// as [`now`]).
#[allow(clippy::disallowed_methods)] // the clock module
pub fn tokio_now() -> tokio::time::Instant {
    tokio::time::Instant::now()
}

/// Time passed since `then` (zero if `then` is later): `Instant::elapsed` reads the clock, so
/// it is banned as `Instant::now` is.
pub fn since(then: Instant) -> std::time::Duration {
    now().saturating_duration_since(then)
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
