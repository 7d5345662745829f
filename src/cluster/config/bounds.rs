//! Bounds on the numbers and durations of a configuration that [`super::Config::validate`]'s
//! rules between fields do not cover: nothing a config file says may overflow a clock, a
//! buffer or a count later (a panic deep in a run), or leave the cluster unable to serve.

use std::time::Duration;

use super::{Config, ConfigError};

/// The longest any duration of the configuration may be.
const MAX_DURATION: Duration = Duration::from_secs(365 * 86_400);

fn bad(key: &'static str, rule: &'static str) -> Result<(), ConfigError> {
    Err(ConfigError::Invalid {
        path: None,
        key,
        rule,
    })
}

/// Every duration at most a year, the ones that pace something more than zero, and the
/// counts and sizes within what the process can hold.
pub(super) fn check(c: &Config) -> Result<(), ConfigError> {
    let p = &c.pool;
    // (key, value, may it be zero)
    let durations = [
        ("pool.step", p.step, false),
        ("pool.min_lifespan", p.min_lifespan, true),
        ("pool.idle_stop_after", p.idle_stop_after, true),
        ("pool.sync_period", p.sync_period, false),
        ("pool.plan_ahead", p.plan_ahead, true),
        ("hub.token_ttl", c.hub.token_ttl, false),
        ("keys.epoch_interval", c.keys.epoch_interval, false),
        ("shards.attach_timeout", c.shards.attach_timeout, false),
        ("streams.session_ttl", c.streams.session_ttl, false),
        ("transport.idle_timeout", c.transport.idle_timeout, false),
        (
            "transport.heartbeat_interval",
            c.transport.heartbeat_interval,
            false,
        ),
        ("shutdown.grace", c.shutdown.grace, true),
        (
            "profiles.limits.retention",
            c.profiles.limits.retention,
            false,
        ),
        (
            "profiles.limits.flush_interval",
            c.profiles.limits.flush_interval,
            false,
        ),
    ];
    for (key, d, zero_ok) in durations {
        if d > MAX_DURATION {
            return bad(key, "must be at most 365d");
        }
        if d.is_zero() && !zero_ok {
            return bad(key, "must be more than 0");
        }
    }
    if let Err(rule) = c.transport.handshakes.check() {
        return bad("transport.handshakes", rule);
    }
    let sh = &c.shards;
    if sh.max_sessions == 0 || sh.max_sessions > 10_000_000 {
        return bad("shards.max_sessions", "must be in 1..=10000000");
    }
    if sh.socket_buffer_bytes > 1 << 30 {
        return bad("shards.socket_buffer_bytes", "must be at most 1 GiB");
    }
    if sh.replay_cache == 0 || sh.replay_cache > 100_000_000 {
        return bad("shards.replay_cache", "must be in 1..=100000000");
    }
    if c.hub.grant_shards > 64 {
        return bad("hub.grant_shards", "must be in 1..=64");
    }
    let s = &c.streams;
    if s.buffer_chunks > 10_000_000 {
        return bad("streams.buffer_chunks", "must be in 1..=10000000");
    }
    if s.session_store_entries > 100_000_000 {
        return bad("streams.session_store_entries", "must be in 1..=100000000");
    }
    Ok(())
}
