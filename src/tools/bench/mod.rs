//! `shoal bench`: every figure as a ratio against raw quinn doing the same work in the same run.
//!
//! This machine class is shared and noisy, so absolute times drift; ratios measured in the same
//! run, in alternating rounds (A then B, then B then A), normalised per CPU-second of the
//! measured server, do not. Each measured server is a child process ([`child`]); the load runs
//! in this process. A scenario reports the median of its rounds.
//!
//! Order of a run: spawn the children → warm up each side once → `rounds` × (A, B) → stop the
//! children → one [`Figure`].

mod baseline;
mod child;
pub mod failover;
pub mod flood;
pub mod latency;
pub mod lb;
pub mod live_failover;
mod load;
mod memory;
pub mod placement;
mod relay;
mod scenarios;

use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;

pub use baseline::BaselineSpec;
pub use child::{cpu_time, rss_bytes, serve as serve_child, ChildServer, ServerSpec};
pub use relay::DelayRelay;

/// Why a benchmark could not run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BenchError {
    #[error("server child: {0}")]
    Child(String),
    #[error("load: {0}")]
    Load(String),
    #[error("scenario {scenario} did not finish within {after:?}")]
    Timeout {
        scenario: &'static str,
        after: Duration,
    },
}

/// The scenarios.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scenario {
    Grant,
    Attach,
    Ttfb,
    Fanout,
    Memory,
    Tickets,
}

impl Scenario {
    pub const ALL: [Scenario; 6] = [
        Scenario::Grant,
        Scenario::Attach,
        Scenario::Ttfb,
        Scenario::Fanout,
        Scenario::Memory,
        Scenario::Tickets,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Scenario::Grant => "grant",
            Scenario::Attach => "attach",
            Scenario::Ttfb => "ttfb",
            Scenario::Fanout => "fanout",
            Scenario::Memory => "memory",
            Scenario::Tickets => "tickets",
        }
    }

    /// The goal the figure is held against (see issue 3).
    pub fn goal(self) -> Goal {
        match self {
            Scenario::Grant => Goal::AtMost(1.25),
            Scenario::Attach => Goal::AtMost(1.15),
            Scenario::Ttfb => Goal::AtMost(2.2),
            Scenario::Fanout => Goal::AtLeast(0.8),
            Scenario::Memory => Goal::AtMost(1.2),
            Scenario::Tickets => Goal::AtMost(1.1),
        }
    }
}

/// A bound on a ratio.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Goal {
    AtMost(f64),
    AtLeast(f64),
}

impl Goal {
    pub fn met(self, ratio: f64) -> bool {
        match self {
            Goal::AtMost(g) => ratio <= g,
            Goal::AtLeast(g) => ratio >= g,
        }
    }
}

impl std::fmt::Display for Goal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Goal::AtMost(g) => write!(f, "<= {g}"),
            Goal::AtLeast(g) => write!(f, ">= {g}"),
        }
    }
}

/// How big a run is.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// The `shoal` executable that serves as child (`bench-serve`).
    pub exe: PathBuf,
    pub rounds: usize,
    /// Smoke-test sizes: every code path once, figures too small to mean much.
    pub quick: bool,
    /// Round-trip time of the delay relay (`ttfb`).
    pub rtt: Duration,
    /// Subscribers (`fanout`).
    pub subscribers: usize,
    /// Idle attached clients (`memory`).
    pub idle_clients: usize,
    /// `grant`, `attach`, `ttfb`: shards as `shoal shard` processes with this one-way delay on
    /// their control link to the hub (through a [`DelayRelay`]).
    pub remote_link_delay: Option<Duration>,
}

impl BenchOptions {
    pub fn new(exe: PathBuf) -> Self {
        Self {
            exe,
            rounds: 3,
            quick: false,
            rtt: Duration::from_millis(20),
            subscribers: 32,
            idle_clients: 2000,
            remote_link_delay: None,
        }
    }

    /// Operations per round for the CPU-per-operation scenarios.
    fn ops(&self) -> usize {
        if self.quick {
            16
        } else {
            300
        }
    }
}

/// The result of one scenario: one JSON line.
#[derive(Debug, Clone, Serialize)]
pub struct Figure {
    pub scenario: &'static str,
    /// shoal's figure (median of the rounds).
    pub shoal: f64,
    /// The baseline's figure (median of the rounds).
    pub baseline: f64,
    /// Median of the per-round ratios.
    pub ratio: f64,
    pub unit: &'static str,
    pub goal: String,
    pub goal_met: bool,
    pub rounds: usize,
    /// The scenario's own fields.
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

impl Figure {
    fn new(s: Scenario, unit: &'static str, rounds: &[Round]) -> Figure {
        let ratio = median(rounds.iter().map(|r| r.ratio()));
        Figure {
            scenario: s.name(),
            shoal: median(rounds.iter().map(|r| r.shoal)),
            baseline: median(rounds.iter().map(|r| r.baseline)),
            ratio,
            unit,
            goal: s.goal().to_string(),
            goal_met: s.goal().met(ratio),
            rounds: rounds.len(),
            extra: serde_json::Map::new(),
        }
    }

    fn with(mut self, key: &str, value: f64) -> Figure {
        let v = serde_json::Number::from_f64(value)
            .map_or(serde_json::Value::Null, serde_json::Value::Number);
        self.extra.insert(key.to_string(), v);
        self
    }

    /// One row of the readable table.
    pub fn row(&self) -> String {
        let extra: Vec<String> = self
            .extra
            .iter()
            .map(|(k, v)| match v.as_f64() {
                Some(f) => format!("{k}={}", short(f)),
                None => format!("{k}={v}"),
            })
            .collect();
        format!(
            "{:<8} {:>12} {:>12} {:>7} {:<8} {:<4} {:<22} {}",
            self.scenario,
            short(self.shoal),
            short(self.baseline),
            format!("{:.3}", self.ratio),
            self.goal,
            if self.goal_met { "yes" } else { "NO" },
            self.unit,
            extra.join(" ")
        )
    }

    pub fn header() -> String {
        format!(
            "{:<8} {:>12} {:>12} {:>7} {:<8} {:<4} {:<22} {}",
            "scenario", "shoal", "baseline", "ratio", "goal", "met", "unit", "details"
        )
    }
}

fn short(f: f64) -> String {
    if f.abs() >= 100.0 {
        format!("{f:.0}")
    } else if f.abs() >= 1.0 {
        format!("{f:.2}")
    } else {
        format!("{f:.4}")
    }
}

/// One round's pair of figures.
#[derive(Debug, Clone, Copy)]
struct Round {
    shoal: f64,
    baseline: f64,
}

impl Round {
    fn ratio(&self) -> f64 {
        if self.baseline > 0.0 {
            self.shoal / self.baseline
        } else {
            f64::NAN
        }
    }
}

/// Median of finite values (NaN when there are none).
pub fn median(values: impl IntoIterator<Item = f64>) -> f64 {
    let mut v: Vec<f64> = values.into_iter().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let m = v.len() / 2;
    if v.len() % 2 == 1 {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2.0
    }
}

/// Runs one scenario; `progress` gets one line per round. Bounded: a scenario that takes more
/// than five minutes (plus a minute per extra round) fails with [`BenchError::Timeout`].
pub async fn run(
    s: Scenario,
    opts: &BenchOptions,
    progress: &mut (dyn FnMut(&str) + Send),
) -> Result<Figure, BenchError> {
    let after = Duration::from_secs(300 + 60 * opts.rounds as u64);
    let work = async {
        match s {
            Scenario::Grant => scenarios::grant(opts, progress).await,
            Scenario::Attach => scenarios::attach(opts, progress).await,
            Scenario::Ttfb => scenarios::ttfb(opts, progress).await,
            Scenario::Fanout => scenarios::fanout(opts, progress).await,
            Scenario::Memory => memory::memory(opts, progress).await,
            Scenario::Tickets => scenarios::tickets(opts, progress).await,
        }
    };
    tokio::time::timeout(after, work)
        .await
        .map_err(|_| BenchError::Timeout {
            scenario: s.name(),
            after,
        })?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_ignores_nan_and_averages_the_middle_pair() {
        assert_eq!(median([3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median([4.0, 1.0, 3.0, 2.0]), 2.5);
        assert_eq!(median([f64::NAN, 5.0]), 5.0);
        assert!(median([]).is_nan());
    }

    #[test]
    fn goals_compare_in_their_direction() {
        assert!(Scenario::Grant.goal().met(1.2));
        assert!(!Scenario::Grant.goal().met(1.3));
        assert!(Scenario::Fanout.goal().met(0.9));
        assert!(!Scenario::Fanout.goal().met(0.7));
        let r = Round {
            shoal: 2.0,
            baseline: 0.0,
        };
        assert!(r.ratio().is_nan());
    }
}
