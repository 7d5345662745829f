//! Per-request load: bitrate × duration, in kilobits.

use tracing::warn;

use super::rls::Rls;
use super::CLAMP_FACTOR;

/// What is known about a request when it is placed. Absent or unusable (non-finite, negative)
/// values count as unknown.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct RequestFeatures {
    /// What the client declared it will pull.
    pub declared_bitrate_kbps: Option<f64>,
    /// The client's mean bitrate in past sessions (profile).
    pub history_bitrate_kbps: Option<f64>,
    /// The client's mean session duration (profile).
    pub history_duration_s: Option<f64>,
    /// Past sessions of this client.
    pub sessions_seen: f64,
    /// Device class; buckets at or above [`DEVICE_BUCKETS`] fold onto `bucket % DEVICE_BUCKETS`.
    pub device_bucket: u8,
    /// Region; buckets at or above [`REGION_BUCKETS`] fold onto `bucket % REGION_BUCKETS`.
    pub region_bucket: u8,
}

/// Device classes the learned model tells apart.
pub const DEVICE_BUCKETS: usize = 8;
/// Regions the learned model tells apart.
pub const REGION_BUCKETS: usize = 8;

/// Predicts one request's load (kbit/s × seconds, i.e. kilobits) from request features.
pub trait RequestLoadPredictor: Send {
    /// Finite and >= 0.
    fn predict(&self, f: &RequestFeatures) -> f64;
    /// Online update with the observed load. NaN, infinite or negative loads are ignored and
    /// counted.
    fn learn(&mut self, f: &RequestFeatures, actual: f64);
    fn name(&self) -> &'static str;
}

fn usable(v: f64) -> bool {
    v.is_finite() && v >= 0.0
}

fn warn_rejected(model: &'static str, rejected: u64, actual: f64) {
    if rejected.is_power_of_two() {
        warn!(
            model,
            actual, rejected, "predictor: ignored a NaN/negative actual load"
        );
    }
}

/// Naive baseline: the mean load of every request seen.
#[derive(Debug, Clone, Default)]
pub struct MeanLoad {
    mean: f64,
    n: u64,
    rejected: u64,
}

impl MeanLoad {
    /// Actuals ignored because they were NaN, infinite or negative.
    pub fn rejected(&self) -> u64 {
        self.rejected
    }
}

impl RequestLoadPredictor for MeanLoad {
    fn predict(&self, _f: &RequestFeatures) -> f64 {
        self.mean
    }

    fn learn(&mut self, _f: &RequestFeatures, actual: f64) {
        if !usable(actual) {
            self.rejected += 1;
            return warn_rejected(self.name(), self.rejected, actual);
        }
        self.n += 1;
        self.mean += (actual - self.mean) / self.n as f64;
    }

    fn name(&self) -> &'static str {
        "mean-load"
    }
}

/// Feature dimension: `1`, three (log value, present) pairs, log sessions, two one-hot blocks.
const DIM: usize = 1 + 3 * 2 + 1 + DEVICE_BUCKETS + REGION_BUCKETS;

/// The learned request model: RLS on log-features predicting `ln(1 + load)` (see the module
/// docs). Until it has seen `DIM` requests it answers the population mean.
#[derive(Debug, Clone)]
pub struct OnlineLoadRegression {
    model: Rls,
    mean: MeanLoad,
    max_seen: f64,
}

impl Default for OnlineLoadRegression {
    fn default() -> Self {
        OnlineLoadRegression::new(0.999)
    }
}

impl OnlineLoadRegression {
    /// `forgetting`: the RLS λ (remembers about `1 / (1 − λ)` requests); out-of-range values
    /// become the default 0.999.
    pub fn new(forgetting: f64) -> OnlineLoadRegression {
        let lambda = if forgetting > 0.5 && forgetting <= 1.0 {
            forgetting
        } else {
            0.999
        };
        OnlineLoadRegression {
            model: Rls::new(vec![0.0; DIM], lambda, 100.0),
            mean: MeanLoad::default(),
            max_seen: 0.0,
        }
    }

    /// Actuals ignored because they were NaN, infinite or negative.
    pub fn rejected(&self) -> u64 {
        self.mean.rejected()
    }

    /// Times the model's state went non-finite and was reset.
    pub fn resets(&self) -> u64 {
        self.model.resets()
    }

    fn features(f: &RequestFeatures) -> [f64; DIM] {
        let mut x = [0.0; DIM];
        x[0] = 1.0;
        let opts = [
            f.declared_bitrate_kbps,
            f.history_bitrate_kbps,
            f.history_duration_s,
        ];
        for (i, v) in opts.into_iter().enumerate() {
            if let Some(v) = v.filter(|v| usable(*v)) {
                x[1 + 2 * i] = v.ln_1p();
                x[2 + 2 * i] = 1.0;
            }
        }
        x[7] = if usable(f.sessions_seen) {
            f.sessions_seen.ln_1p()
        } else {
            0.0
        };
        x[8 + f.device_bucket as usize % DEVICE_BUCKETS] = 1.0;
        x[8 + DEVICE_BUCKETS + f.region_bucket as usize % REGION_BUCKETS] = 1.0;
        x
    }
}

impl RequestLoadPredictor for OnlineLoadRegression {
    fn predict(&self, f: &RequestFeatures) -> f64 {
        if self.model.updates() < DIM as u64 {
            return self.mean.predict(f);
        }
        let max_log = (CLAMP_FACTOR * self.max_seen).ln_1p();
        let log = self.model.predict(&Self::features(f));
        if !log.is_finite() {
            return self.mean.predict(f);
        }
        log.clamp(0.0, max_log).exp_m1().max(0.0)
    }

    fn learn(&mut self, f: &RequestFeatures, actual: f64) {
        self.mean.learn(f, actual);
        if usable(actual) {
            self.max_seen = self.max_seen.max(actual);
            self.model.update(&Self::features(f), actual.ln_1p());
        }
    }

    fn name(&self) -> &'static str {
        "online-load-rls"
    }
}

/// The hub's request models, trained online on ended sessions (see [`RequestModels::learn`]):
/// one predicts a request's load (kilobits, bitrate × duration), one its delivered bitrate,
/// which placement uses. Neither answers before it has learned from `DIM` sessions.
///
/// So that they learn from what they will be asked, the features a grant was decided on are
/// remembered under the grant's id ([`RequestModels::remember`]) and the session that grant
/// led to is learned against them ([`RequestModels::learn_grant`]). The memory is bounded
/// ([`GRANT_MEMORY`] grants, oldest forgotten first); a session whose grant was forgotten is
/// learned against the caller's fallback features.
#[derive(Debug, Clone, Default)]
pub struct RequestModels {
    load: OnlineLoadRegression,
    bitrate: OnlineLoadRegression,
    learned: u64,
    grants: std::collections::HashMap<[u8; 16], RequestFeatures>,
    /// Insertion order of `grants` (the same ids: an id is only ever removed by forgetting).
    order: std::collections::VecDeque<[u8; 16]>,
}

/// Grants whose features [`RequestModels`] remembers at most (about 180 bytes each with the
/// map's overhead). At 100 grants a second that covers sessions of up to about 11 minutes.
pub const GRANT_MEMORY: usize = 65_536;

/// Sessions shorter than this teach the bitrate model nothing (their bitrate is mostly noise).
const MIN_BITRATE_SESSION_MS: u64 = 1_000;

impl RequestModels {
    /// Learns from one ended session of a request with features `f`: `bytes` delivered over
    /// `duration_ms`.
    pub fn learn(&mut self, f: &RequestFeatures, duration_ms: u64, bytes: u64) {
        let kilobits = bytes as f64 * 8.0 / 1000.0;
        self.load.learn(f, kilobits);
        if duration_ms >= MIN_BITRATE_SESSION_MS {
            self.bitrate
                .learn(f, kilobits * 1000.0 / duration_ms as f64);
        }
        self.learned += 1;
    }

    /// Remembers the features grant `id` was decided on, for [`RequestModels::learn_grant`].
    pub fn remember(&mut self, id: [u8; 16], f: RequestFeatures) {
        if self.grants.insert(id, f).is_none() {
            self.order.push_back(id);
        }
        while self.grants.len() > GRANT_MEMORY {
            let Some(old) = self.order.pop_front() else {
                break;
            };
            self.grants.remove(&old);
        }
    }

    /// Learns from a session that grant `id` led to, against the features the grant was
    /// decided on, else (forgotten, or never remembered) against `fallback`; returns whether
    /// the grant was remembered. It stays remembered: one grant may lead to several sessions
    /// (a resume after failover).
    pub fn learn_grant(
        &mut self,
        id: [u8; 16],
        fallback: &RequestFeatures,
        duration_ms: u64,
        bytes: u64,
    ) -> bool {
        let (f, remembered) = match self.grants.get(&id) {
            Some(f) => (*f, true),
            None => (*fallback, false),
        };
        self.learn(&f, duration_ms, bytes);
        remembered
    }

    /// Sessions learned from.
    pub fn learned(&self) -> u64 {
        self.learned
    }

    /// Grants remembered now.
    pub fn remembered_grants(&self) -> usize {
        self.grants.len()
    }

    /// The expected delivered bitrate (kbit/s) of a request, once the model is trained.
    pub fn bitrate_kbps(&self, f: &RequestFeatures) -> Option<f64> {
        trained(&self.bitrate, f)
    }

    /// The expected load (kilobits) of a request, once the model is trained.
    pub fn load_kilobits(&self, f: &RequestFeatures) -> Option<f64> {
        trained(&self.load, f)
    }
}

/// Below this a prediction is no answer (0 would read as "unknown" downstream).
const MIN_ANSWER: f64 = 1.0;

fn trained(m: &OnlineLoadRegression, f: &RequestFeatures) -> Option<f64> {
    (m.model.updates() >= DIM as u64)
        .then(|| m.predict(f))
        .filter(|v| usable(*v) && *v >= MIN_ANSWER)
}
