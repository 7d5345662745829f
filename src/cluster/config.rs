//! Configuration: a TOML file with production-safe defaults for every field.
//!
//! Loaded and checked before any socket is bound. Unknown fields are errors. Durations are
//! written like `"500ms"`, `"10s"`, `"1h"`. `shoal up --print-config` prints the defaults.

mod admin;
mod bounds;
pub mod env;
pub mod example;
mod lb;
mod log;
pub use admin::{parse_admin_listen, AdminConfig};
pub use lb::{LbProfile, LbSettings};
pub use log::LogConfig;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::synthetic::SyntheticSpec;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    #[error("cannot read config {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("config {path}: {source}")]
    Parse {
        path: String,
        source: Box<toml::de::Error>,
    },
    /// A value out of its range: `key` is the setting (`pool.step`), `rule` what it must be.
    /// `path` is the file (or other origin) it came from, when known: [`Config::load`] and
    /// [`Config::parse`] set it, [`Config::validate`] alone cannot.
    #[error("config{}: {key}: {rule}", in_file(path))]
    Invalid {
        path: Option<String>,
        key: &'static str,
        rule: &'static str,
    },
    /// A `SHOAL_*` environment variable the config cannot take (see [`env`]).
    #[error("config: {0}")]
    Env(#[from] env::EnvError),
    /// `profiles.limits` is out of range (the profiler says how).
    #[error("config{}: profiles.limits: {source}", in_file(path))]
    ProfileLimits {
        path: Option<String>,
        source: crate::hub::profiler::ProfilerError,
    },
}

impl ConfigError {
    /// The same error, naming the file (or other origin) the config came from.
    pub fn in_file(self, origin: &str) -> Self {
        match self {
            Self::Invalid { key, rule, .. } => Self::Invalid {
                path: Some(origin.to_string()),
                key,
                rule,
            },
            Self::ProfileLimits { source, .. } => Self::ProfileLimits {
                path: Some(origin.to_string()),
                source,
            },
            other => other,
        }
    }
}

/// ` {path}` when the origin is known, nothing otherwise (after `config` in a message).
fn in_file(path: &Option<String>) -> String {
    path.as_ref().map(|p| format!(" {p}")).unwrap_or_default()
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Cluster name: the TLS server name of the hub and every shard.
    pub cluster: String,
    /// Where `shoal up` keeps the dev secret and dev certificates it creates.
    pub data_dir: PathBuf,
    pub hub: HubConfig,
    pub keys: KeysConfig,
    pub tls: TlsFiles,
    pub shards: ShardsConfig,
    pub streams: StreamsConfig,
    pub transport: TransportSettings,
    pub shutdown: ShutdownConfig,
    pub admin: AdminConfig,
    pub profiles: ProfilesConfig,
    pub pool: PoolSettings,
    pub lb: LbSettings,
    pub log: LogConfig,
}

/// The shard pool of `shoal up` (see `pool`): off by default, the cluster keeps
/// `shards.count` shards; on, each group's pool grows and shrinks with the predicted load.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PoolSettings {
    pub enabled: bool,
    /// `static`, `reactive` (HPA-like) or `predictive`.
    pub policy: crate::pool::policy::Policy,
    /// How often the driver reads load and arrivals and resizes.
    #[serde(with = "humantime_serde")]
    pub step: Duration,
    /// Share of a shard's session quota the pool aims to use.
    pub target_utilization: f64,
    /// Per group.
    pub min_shards: u32,
    pub max_shards: u32,
    /// A shard is never stopped younger than this (no churn).
    #[serde(with = "humantime_serde")]
    pub min_lifespan: Duration,
    /// A shard without sessions this long is stopped (when the pool is above its size).
    #[serde(with = "humantime_serde")]
    pub idle_stop_after: Duration,
    /// Reactive policy: how often it looks.
    #[serde(with = "humantime_serde")]
    pub sync_period: Duration,
    /// Predictive policy: capacity the forecast needs this far ahead is kept (and warmed).
    #[serde(with = "humantime_serde")]
    pub plan_ahead: Duration,
}

impl Default for PoolSettings {
    fn default() -> Self {
        Self {
            enabled: false,
            policy: crate::pool::policy::Policy::Predictive,
            step: Duration::from_secs(1),
            target_utilization: 0.7,
            min_shards: 1,
            max_shards: 16,
            min_lifespan: Duration::from_secs(60),
            idle_stop_after: Duration::from_secs(30),
            sync_period: Duration::from_secs(15),
            plan_ahead: Duration::from_secs(10),
        }
    }
}

impl PoolSettings {
    /// What the pool driver runs with, derived from these settings: the one place the rules
    /// below are written (`shoal up`, the traffic demo and the tests build their pool here; the
    /// placement benchmark simulates shards with a measured start-up and sizes of its own).
    ///
    /// - a shard's start-up is one `step`: embedded shards start in milliseconds, so the lead
    ///   the predictive policy plans for is one step of the driver;
    /// - the pool scales in at most one shard per five steps;
    /// - a retired shard drains for `grace` (`shutdown.grace` in `shoal up`);
    /// - a shard's session quota is `shards.max_sessions` (other quotas keep their defaults);
    /// - the static policy keeps `min_shards`;
    /// - the reactive policy scales out over `target_utilization + 0.1` (at most 1);
    /// - the mean session length is taken as 60 s until Little's law has measured one.
    pub fn pool_and_scaler(
        &self,
        shards: &ShardsConfig,
        grace: Duration,
    ) -> (crate::pool::PoolConfig, crate::pool::policy::ScalerConfig) {
        let pool = crate::pool::PoolConfig {
            startup: self.step,
            min_lifespan: self.min_lifespan,
            idle_stop_after: self.idle_stop_after,
            scale_in_step: self.step * 5,
            drain_grace: grace,
            min_shards: self.min_shards,
            max_shards: self.max_shards,
            quota: crate::pool::Quota {
                sessions: u64::from(shards.max_sessions),
                ..crate::pool::Quota::default()
            },
        };
        let scaler = crate::pool::policy::ScalerConfig {
            policy: self.policy,
            static_size: self.min_shards,
            target_utilization: self.target_utilization,
            sync_period: self.sync_period,
            scale_out_threshold: (self.target_utilization + 0.1).min(1.0),
            step: self.step,
            startup: self.step,
            plan_ahead: self.plan_ahead,
            initial_mean_session: Duration::from_secs(60),
        };
        (pool, scaler)
    }
}

/// The hub's client profiles (see `hub::profiler`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProfilesConfig {
    /// The profile database (redb). Unset: profiles live in memory only; `shoal up` uses
    /// `<data_dir>/profiles.redb`.
    pub path: Option<PathBuf>,
    /// Bounds and retention.
    pub limits: crate::hub::profiler::ProfilerConfig,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HubConfig {
    /// UDP address of the hub.
    pub listen: SocketAddr,
    /// How many ranked shards of the chosen group a grant lists.
    pub grant_shards: usize,
    /// Lifetime of a token.
    #[serde(with = "humantime_serde")]
    pub token_ttl: Duration,
    /// TLS session tickets sent per hub handshake: one per shard connection the client may
    /// open with 0-RTT (primary, failovers), plus spare.
    pub tickets_per_handshake: usize,
    /// UDP address of the control listener (`shoal-ctl/1`, mutual TLS) where shards in other
    /// processes register (`shoal shard --hub ADDR`). Off by default; with
    /// `shards.launcher = "processes"` an ephemeral loopback port is used when unset.
    pub control_listen: Option<SocketAddr>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KeysConfig {
    /// File holding the cluster secret as 64 hex digits. Without it, the secret comes from
    /// `SHOAL_CLUSTER_SECRET`, else from `<data_dir>/cluster.secret` (created by `shoal up`).
    pub secret_file: Option<PathBuf>,
    /// Token-sealing key rotation interval.
    #[serde(with = "humantime_serde")]
    pub epoch_interval: Duration,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsFiles {
    /// PEM certificate chain of the cluster (hub and shards). Default: `<data_dir>/cluster.pem`.
    pub cert: Option<PathBuf>,
    /// PEM private key. Default: `<data_dir>/cluster.key`.
    pub key: Option<PathBuf>,
    /// PEM CA that clients trust. Default: `<data_dir>/ca.pem`.
    pub ca: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ShardsConfig {
    /// Embedded shards started with the hub.
    pub count: u32,
    /// Groups the shards are spread over (round robin).
    pub groups: u32,
    /// IP the shards bind; port `base_port + index`, or ephemeral ports when `base_port` is 0.
    pub listen_ip: IpAddr,
    pub base_port: u16,
    /// Most sessions one shard admits.
    pub max_sessions: u32,
    /// UDP send and receive buffer size requested for every socket.
    pub socket_buffer_bytes: usize,
    /// How long a shard waits for the attach on a new connection.
    #[serde(with = "humantime_serde")]
    pub attach_timeout: Duration,
    /// Remembered attach nonces per shard (replay protection), bounded.
    pub replay_cache: usize,
    /// TLS session tickets sent per shard handshake. One replaces the ticket the handshake
    /// used (the hub's tickets cover the failovers of a grant); each is kept by the hub too
    /// and copied to the other shards of the client's grant.
    pub tickets_per_handshake: usize,
    /// How the cluster's (and the pool's) shards run: inside this process (`embedded`) or
    /// each as a `shoal shard` child process linked over the control listener (`processes`).
    pub launcher: LauncherKind,
    /// The `shoal` binary the `processes` launcher runs as `shoal shard` (default: this
    /// program).
    pub program: Option<PathBuf>,
    /// The address shard processes dial for the control listener, when it is not the
    /// listener's own (a relay, a NAT or a balancer in front of it).
    pub hub_link: Option<SocketAddr>,
}

/// Where shards run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LauncherKind {
    #[default]
    Embedded,
    Processes,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StreamsConfig {
    /// Chunks per second of every `synth/…` stream.
    pub synthetic_rate_hz: u32,
    /// Payload bytes of every synthetic chunk.
    pub synthetic_chunk_bytes: u32,
    /// Chunks a shard keeps per live stream for subscribers that resume.
    pub buffer_chunks: usize,
    /// How far back (in chunks) a synthetic stream can be resumed.
    pub replay_window_chunks: u64,
    /// Standby copies of every live stream, on the next shards of its group in rendezvous
    /// order (0: not mirrored; a live stream then dies with its shard).
    pub live_standbys: u32,
    /// Session store capacity (tickets) shared by hub and shards.
    pub session_store_entries: usize,
    /// Lifetime of a stored session ticket.
    #[serde(with = "humantime_serde")]
    pub session_ttl: Duration,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TransportSettings {
    /// QUIC idle timeout (a backstop only; failures are detected with heartbeats).
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// A side that sent nothing for this long sends a heartbeat.
    #[serde(with = "humantime_serde")]
    pub heartbeat_interval: Duration,
    /// What every endpoint (hub and shards) lets into its handshakes: Retry past a backlog,
    /// per-source limits (see [`crate::guard`]).
    pub handshakes: crate::guard::GuardSettings,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ShutdownConfig {
    /// After a go-away, how long clients get to move before connections close.
    #[serde(with = "humantime_serde")]
    pub grace: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            cluster: crate::DEFAULT_CLUSTER.into(),
            data_dir: PathBuf::from(".shoal"),
            hub: HubConfig::default(),
            keys: KeysConfig::default(),
            tls: TlsFiles::default(),
            shards: ShardsConfig::default(),
            streams: StreamsConfig::default(),
            transport: TransportSettings::default(),
            shutdown: ShutdownConfig::default(),
            admin: AdminConfig::default(),
            profiles: ProfilesConfig::default(),
            pool: PoolSettings::default(),
            lb: LbSettings::default(),
            log: LogConfig::default(),
        }
    }
}

impl Default for HubConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 4433),
            grant_shards: 2,
            token_ttl: Duration::from_secs(600),
            tickets_per_handshake: 4,
            control_listen: None,
        }
    }
}

impl Default for KeysConfig {
    fn default() -> Self {
        Self {
            secret_file: None,
            epoch_interval: Duration::from_secs(3600),
        }
    }
}

impl Default for ShardsConfig {
    fn default() -> Self {
        Self {
            count: 4,
            groups: 2,
            listen_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
            base_port: 0,
            max_sessions: 10_000,
            socket_buffer_bytes: 4 << 20,
            attach_timeout: Duration::from_secs(5),
            replay_cache: 100_000,
            tickets_per_handshake: 1,
            launcher: LauncherKind::Embedded,
            program: None,
            hub_link: None,
        }
    }
}

impl Default for StreamsConfig {
    fn default() -> Self {
        Self {
            synthetic_rate_hz: 100,
            synthetic_chunk_bytes: 1024,
            buffer_chunks: 1024,
            replay_window_chunks: 30_000,
            live_standbys: 1,
            session_store_entries: 100_000,
            // rustls advertises 86 400 s in every stateful ticket and cannot be told
            // otherwise: keep them that long, so what a ticket says is true.
            session_ttl: Duration::from_secs(86_400),
        }
    }
}

impl Default for TransportSettings {
    fn default() -> Self {
        Self {
            idle_timeout: Duration::from_secs(30),
            heartbeat_interval: Duration::from_millis(500),
            handshakes: Default::default(),
        }
    }
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        Self {
            grace: Duration::from_secs(2),
        }
    }
}

impl Config {
    /// The file at `path`, then the `SHOAL_*` environment variables over it ([`env`]).
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        Self::from_env_and_file(Some(path))
    }

    pub fn parse(text: &str, origin: &str) -> Result<Self, ConfigError> {
        let cfg: Config = toml::from_str(text).map_err(|source| ConfigError::Parse {
            path: origin.to_string(),
            source: Box::new(source),
        })?;
        cfg.validate().map_err(|e| e.in_file(origin))?;
        Ok(cfg)
    }

    /// Checks ranges that types cannot express. The first broken rule is the error.
    pub fn validate(&self) -> Result<(), ConfigError> {
        // First: the rules below compute with these values (a duration times 4).
        bounds::check(self)?;
        let bad = |key, rule| {
            Err(ConfigError::Invalid {
                path: None,
                key,
                rule,
            })
        };
        let p = &self.pool;
        if !(p.target_utilization > 0.0 && p.target_utilization <= 1.0) {
            return bad("pool.target_utilization", "must be in (0, 1]");
        }
        if p.max_shards > 1000 {
            return bad("pool.max_shards", "must be at most 1000");
        }
        if p.min_shards == 0 || p.min_shards > p.max_shards {
            return bad("pool.min_shards", "must be in 1..=pool.max_shards");
        }
        if p.step < Duration::from_millis(100) {
            return bad("pool.step", "must be at least 100ms");
        }
        if let Err(source) = self.profiles.limits.validate() {
            return Err(ConfigError::ProfileLimits { path: None, source });
        }
        if crate::security::certs::check_cluster_name(&self.cluster).is_err() {
            return bad("cluster", "must be a DNS name (not an IP address)");
        }
        let sh = &self.shards;
        // No shard of its own is fine for a hub whose shards register over the control link.
        if sh.count == 0 && self.hub.control_listen.is_none() {
            return bad(
                "shards.count",
                "must be at least 1 unless hub.control_listen is set",
            );
        }
        if sh.count > 10_000 {
            return bad("shards.count", "must be in 0..=10000");
        }
        if sh.groups == 0 || sh.groups > 1_000 {
            return bad("shards.groups", "must be in 1..=1000");
        }
        if sh.count > 0 && sh.groups > sh.count {
            return bad("shards.groups", "must not exceed shards.count");
        }
        if self.hub.grant_shards == 0 {
            return bad("hub.grant_shards", "must be at least 1");
        }
        if self.hub.tickets_per_handshake == 0 || self.hub.tickets_per_handshake > 8 {
            return bad(
                "hub.tickets_per_handshake",
                "must be in 1..=8 (clients keep 8 per name)",
            );
        }
        if sh.tickets_per_handshake > 8 {
            return bad("shards.tickets_per_handshake", "must be in 0..=8");
        }
        if self.keys.epoch_interval < Duration::from_secs(1) {
            return bad("keys.epoch_interval", "must be at least 1s");
        }
        if self.hub.token_ttl.is_zero() || self.hub.token_ttl > self.keys.epoch_interval {
            return bad(
                "hub.token_ttl",
                "must be positive and at most keys.epoch_interval",
            );
        }
        let s = &self.streams;
        if s.synthetic_rate_hz == 0 || s.synthetic_rate_hz > 100_000 {
            return bad("streams.synthetic_rate_hz", "must be in 1..=100000");
        }
        if s.synthetic_chunk_bytes as usize > crate::wire::MAX_CHUNK_PAYLOAD {
            return bad("streams.synthetic_chunk_bytes", "must be at most 1 MiB");
        }
        let lb = &self.lb;
        if lb.enabled {
            let (sid, nonce) = lb.lengths();
            if !(4..=15).contains(&sid) {
                return bad(
                    "lb.server_id_len",
                    "must be in 4..=15 (a shard id is 4 octets)",
                );
            }
            if !(4..=18).contains(&nonce) || sid + nonce > 19 {
                return bad(
                    "lb.nonce_len",
                    "must be in 4..=18, with server_id_len at most 19",
                );
            }
            if lb.config_id > 6 {
                return bad("lb.config_id", "must be in 0..=6 (7 marks unroutable CIDs)");
            }
        }
        if s.live_standbys > 8 {
            return bad("streams.live_standbys", "must be in 0..=8");
        }
        if s.buffer_chunks == 0 {
            return bad("streams.buffer_chunks", "must be at least 1");
        }
        if s.session_ttl.is_zero() || s.session_ttl > Duration::from_secs(7 * 86_400) {
            return bad("streams.session_ttl", "must be in 1s..=7d");
        }
        if s.session_store_entries == 0 {
            return bad("streams.session_store_entries", "must be at least 1");
        }
        if self.transport.heartbeat_interval.is_zero()
            || self.transport.heartbeat_interval * 4 > self.transport.idle_timeout
        {
            return bad(
                "transport.heartbeat_interval",
                "must be positive and at most transport.idle_timeout/4",
            );
        }
        match (&self.admin.mirror_cert, &self.admin.mirror_key) {
            (Some(_), None) => {
                return bad("admin.mirror_key", "must be set with admin.mirror_cert");
            }
            (None, Some(_)) => {
                return bad("admin.mirror_cert", "must be set with admin.mirror_key");
            }
            _ => {}
        }
        self.admin.check()?;
        Ok(())
    }

    pub fn synthetic(&self) -> SyntheticSpec {
        SyntheticSpec {
            rate_hz: self.streams.synthetic_rate_hz,
            chunk_bytes: self.streams.synthetic_chunk_bytes,
        }
    }

    pub fn cert_path(&self) -> PathBuf {
        self.tls
            .cert
            .clone()
            .unwrap_or_else(|| self.data_dir.join("cluster.pem"))
    }
    pub fn key_path(&self) -> PathBuf {
        self.tls
            .key
            .clone()
            .unwrap_or_else(|| self.data_dir.join("cluster.key"))
    }
    pub fn ca_path(&self) -> PathBuf {
        self.tls
            .ca
            .clone()
            .unwrap_or_else(|| self.data_dir.join("ca.pem"))
    }
    /// The client certificate mirrors present (default: the cluster certificate).
    pub fn mirror_cert_path(&self) -> PathBuf {
        self.admin
            .mirror_cert
            .clone()
            .unwrap_or_else(|| self.cert_path())
    }
    pub fn mirror_key_path(&self) -> PathBuf {
        self.admin
            .mirror_key
            .clone()
            .unwrap_or_else(|| self.key_path())
    }
    pub fn secret_path(&self) -> PathBuf {
        self.keys
            .secret_file
            .clone()
            .unwrap_or_else(|| self.data_dir.join("cluster.secret"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_round_trip() {
        let c = Config::default();
        c.validate().unwrap();
        let text = toml::to_string(&c).unwrap();
        assert_eq!(Config::parse(&text, "t").unwrap(), c);
    }

    #[test]
    fn unknown_fields_and_bad_ranges_are_refused() {
        let e = Config::parse("[hub]\nlisen = \"1.2.3.4:5\"\n", "t").unwrap_err();
        assert!(e.to_string().contains("lisen"), "{e}");
        assert!(Config::parse("[shards]\ncount = 0\n", "t").is_err());
        assert!(Config::parse("[transport]\nheartbeat_interval = \"20s\"\n", "t").is_err());
        let c = Config::parse(
            "[shards]\ncount = 6\ngroups = 3\n[hub]\ntoken_ttl = \"30s\"\n",
            "t",
        )
        .unwrap();
        assert_eq!(c.shards.count, 6);
        assert_eq!(c.hub.token_ttl, Duration::from_secs(30));
    }

    #[test]
    fn a_value_out_of_range_names_its_key_its_rule_and_its_file() {
        let e = Config::parse("[pool]\nstep = \"10ms\"\n", "shoal.toml").unwrap_err();
        assert!(
            matches!(
                &e,
                ConfigError::Invalid { path: Some(p), key: "pool.step", rule }
                    if p == "shoal.toml" && *rule == "must be at least 100ms"
            ),
            "{e:?}"
        );
        assert_eq!(
            e.to_string(),
            "config shoal.toml: pool.step: must be at least 100ms"
        );
        // Checked alone, the origin is unknown.
        let mut c = Config::default();
        c.shards.count = 2;
        c.shards.groups = 3;
        assert_eq!(
            c.validate().unwrap_err().to_string(),
            "config: shards.groups: must not exceed shards.count"
        );
        let mut c = Config::default();
        c.admin.mirror_cert = Some("a.pem".into());
        assert!(matches!(
            c.validate(),
            Err(ConfigError::Invalid {
                key: "admin.mirror_key",
                ..
            })
        ));
        let e = Config::parse("[profiles.limits]\nmax_clients = 0\n", "p.toml").unwrap_err();
        assert!(
            matches!(&e, ConfigError::ProfileLimits { path: Some(p), .. } if p == "p.toml"),
            "{e:?}"
        );
        assert!(
            e.to_string()
                .starts_with("config p.toml: profiles.limits: invalid profiler config: "),
            "{e}"
        );
    }

    #[test]
    fn pool_settings_give_the_pool_and_the_scaler_their_derived_values() {
        let mut c = Config::default();
        c.shards.max_sessions = 40;
        c.pool.step = Duration::from_millis(500);
        c.pool.min_shards = 3;
        let (pool, scaler) = c.pool.pool_and_scaler(&c.shards, Duration::from_secs(7));
        let p = &c.pool;
        assert_eq!(pool.startup, p.step);
        assert_eq!(pool.scale_in_step, p.step * 5);
        assert_eq!(pool.drain_grace, Duration::from_secs(7));
        assert_eq!(
            (pool.min_shards, pool.max_shards, pool.quota.sessions),
            (3, p.max_shards, 40)
        );
        assert_eq!(
            (pool.min_lifespan, pool.idle_stop_after),
            (p.min_lifespan, p.idle_stop_after)
        );
        assert_eq!((scaler.policy, scaler.static_size), (p.policy, 3));
        assert_eq!((scaler.step, scaler.startup), (p.step, p.step));
        assert_eq!(
            (scaler.sync_period, scaler.plan_ahead),
            (p.sync_period, p.plan_ahead)
        );
        assert!((scaler.scale_out_threshold - (p.target_utilization + 0.1)).abs() < 1e-9);
        c.pool.target_utilization = 0.95;
        let (_, scaler) = c.pool.pool_and_scaler(&c.shards, Duration::ZERO);
        assert_eq!(scaler.scale_out_threshold, 1.0);
    }

    #[test]
    fn admin_section_parses_and_round_trips() {
        let c = Config::parse("[admin]\nlisten = \"off\"\n", "t").unwrap();
        assert_eq!(c.admin.listen, None);
        let text = toml::to_string(&c).unwrap();
        assert_eq!(Config::parse(&text, "t").unwrap(), c);
        let c = Config::parse("[admin]\nlisten = \"127.0.0.1:9000\"\n", "t").unwrap();
        assert_eq!(c.admin.listen, Some("127.0.0.1:9000".parse().unwrap()));
        assert!(Config::parse("[admin]\nlisten = \"nope\"\n", "t").is_err());
        assert!(Config::parse("[admin]\nmirror_cert = \"a.pem\"\n", "t").is_err());
        assert!(Config::parse("[admin]\nport = 1\n", "t").is_err());
    }
}
