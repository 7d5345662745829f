//! The hub's counters, read by `/metrics` (`crate::admin::metrics`) while the hub runs and
//! after it is gone. Every one is bumped by the hub's drivers, never by a decision core.

use std::sync::atomic::AtomicU64;

use crate::metrics_hist::{CodeCounters, Histogram};

/// Counters of the hub.
#[derive(Debug, Default)]
pub struct HubCounters {
    pub connections: AtomicU64,
    pub grants: AtomicU64,
    pub rejects: AtomicU64,
    /// Requests that arrived in 0-RTT (returning clients).
    pub zero_rtt_requests: AtomicU64,
    /// Connections closed with `TIMEOUT` because they opened no stream in time.
    pub idle_closed: AtomicU64,
    /// What the links to the shards saw.
    pub link: super::links::LinkCounters,
    /// Requests not recorded in the profiles because the profiler was behind.
    pub profiles_dropped: AtomicU64,
    /// Ended sessions the shards reported (each recorded in its client's profile).
    pub sessions_reported: AtomicU64,
    /// Session reports dropped because the profiler was behind or closed.
    pub sessions_dropped: AtomicU64,
    /// Requests whose expected bitrate came from the learned request model (assessed before
    /// placement, so refused ones count too).
    pub model_expectations: AtomicU64,
    /// Ended subscriptions the request models learned from against the client's profile at
    /// session end, because the features their grant was decided on were no longer
    /// remembered (see [`super::predictor::GRANT_MEMORY`]).
    pub grants_forgotten: AtomicU64,
    /// Request received → grant written, per grant.
    pub grant_seconds: Histogram,
    /// Refusals per code: `reject` answers, and connections closed with an error code.
    pub rejections: CodeCounters,
}
