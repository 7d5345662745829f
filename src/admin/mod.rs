//! The admin HTTP API of a hub process: start and steer stream mirrors, read metrics.
//!
//! Started by `shoal up` after the cluster (on `admin.listen`, default `127.0.0.1:4480`), or by
//! [`Admin::start`] in tests; [`Admin::stop`] ends it before the cluster shuts down: the server
//! stops accepting and finishes the requests in flight, then every mirror is stopped with a
//! grace period. Routes (stream names hold `/`, so the stream is the rest of the path):
//!
//! | route | answer |
//! | --- | --- |
//! | `GET /health` | `{"status":"ok"}` |
//! | `POST /mirrors` `{"stream","endpoints":[..],"config":{..}?}` | 201, the mirror ([`MirrorView`]) |
//! | `GET /mirrors` | `[`[`MirrorSummary`]`]` |
//! | `GET /mirrors/{stream}` | the mirror ([`MirrorView`]): snapshot with per-endpoint health |
//! | `DELETE /mirrors/{stream}` | 200 `{"stream","stopped":true}` after a graceful stop |
//! | `POST /mirrors/{stream}/endpoints` `{"addr","rank"?}` | 201 `{"stream","addr","id"}` |
//! | `DELETE /mirrors/{stream}/endpoints/{addr}` | 200 `{"stream","addr","id","removed":true}` |
//! | `GET /lb` | `{"enabled","config_id","rotations"}`: the QUIC-LB configuration new CIDs carry |
//! | `POST /lb/rotate` | 200 `{"from","to","shards"}`: the next config id (and its key) is current on the hub and every shard told; 409 `lb_disabled` when QUIC-LB is off |
//! | `GET /live` | `[`[`LiveStream`]`]`: each live stream's primary, standbys with their lag, copies and promotions, from the shards' reports |
//! | `GET /metrics` | Prometheus text ([`metrics`]) |
//!
//! Every error is JSON, `{"error":"<message>","code":"<snake_case kind>"}`, with the status of
//! [`AdminError::status`]: unknown routes and malformed bodies included. Request bodies are
//! parsed here (any content type), so a bad body is a 400 with serde's message.
//!
//! - [`mirrors`] — the mirrors, their sources and their lifecycle.
//! - [`metrics`] — the Prometheus exposition.
//! - [`client`] — the small HTTP client behind `shoal mirror …`.

pub mod client;
pub mod metrics;
pub mod mirrors;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{Path, State};
use axum::http::{header, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::hub::HubCounters;
use crate::ids::{InvalidName, StreamName};
use crate::mirror::{MirrorConfig, MirrorError};
use mirrors::ShardSources;
pub use mirrors::{MirrorIdentity, MirrorManager, MirrorSummary, MirrorView};

/// Grace period of `DELETE /mirrors/{stream}`: how long a stopping mirror waits for every
/// pushed chunk to be acknowledged.
pub const STOP_GRACE: Duration = Duration::from_secs(2);

/// Why an admin request was refused. Each variant has an HTTP status and a stable code.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum AdminError {
    #[error("invalid JSON body: {0}")]
    InvalidJson(String),
    #[error("invalid path: {0}")]
    InvalidPath(String),
    #[error(transparent)]
    InvalidStream(#[from] InvalidName),
    #[error("invalid endpoint address {value:?}: {why}")]
    InvalidAddress { value: String, why: String },
    #[error("endpoint {0} is listed twice")]
    DuplicateInList(SocketAddr),
    #[error("a mirror of {0} is already running (stop it first, or add endpoints to it)")]
    MirrorExists(StreamName),
    #[error("no mirror of {0}")]
    UnknownStream(StreamName),
    #[error("mirror of {stream} has no endpoint {addr}")]
    UnknownEndpoint {
        stream: StreamName,
        addr: SocketAddr,
    },
    #[error("no alive shard to read the stream from")]
    NoShard,
    #[error(transparent)]
    Rejected(#[from] MirrorError),
    #[error("cannot start the mirror: {0}")]
    Start(String),
    #[error("no route {method} {path}")]
    NotFound { method: String, path: String },
    #[error("method {method} is not allowed on {path}")]
    MethodNotAllowed { method: String, path: String },
    #[error("QUIC-LB is off (lb.enabled = false): there is no configuration to rotate")]
    LbDisabled,
}

impl AdminError {
    /// The HTTP status.
    pub fn status(&self) -> u16 {
        match self {
            AdminError::InvalidJson(_)
            | AdminError::InvalidPath(_)
            | AdminError::InvalidStream(_)
            | AdminError::InvalidAddress { .. }
            | AdminError::DuplicateInList(_) => 400,
            AdminError::UnknownStream(_)
            | AdminError::UnknownEndpoint { .. }
            | AdminError::NotFound { .. } => 404,
            AdminError::MethodNotAllowed { .. } => 405,
            AdminError::MirrorExists(_) | AdminError::LbDisabled => 409,
            AdminError::Start(_) => 500,
            AdminError::NoShard => 503,
            AdminError::Rejected(e) => match e {
                MirrorError::NoEndpoints
                | MirrorError::TooManyEndpoints(_)
                | MirrorError::InvalidConfig(_) => 400,
                MirrorError::UnknownEndpoint(_) => 404,
                MirrorError::DuplicateEndpoint(_)
                | MirrorError::LastEndpoint
                | MirrorError::NoStandby(_)
                | MirrorError::Stopped => 409,
            },
        }
    }

    /// The stable snake_case code of the error body.
    pub fn code(&self) -> &'static str {
        match self {
            AdminError::InvalidJson(_) => "invalid_json",
            AdminError::InvalidPath(_) => "invalid_path",
            AdminError::InvalidStream(_) => "invalid_stream",
            AdminError::InvalidAddress { .. } => "invalid_address",
            AdminError::DuplicateInList(_) => "duplicate_endpoint",
            AdminError::MirrorExists(_) => "mirror_exists",
            AdminError::UnknownStream(_) => "unknown_stream",
            AdminError::UnknownEndpoint { .. } => "unknown_endpoint",
            AdminError::NoShard => "no_shard",
            AdminError::Start(_) => "mirror_start_failed",
            AdminError::NotFound { .. } => "not_found",
            AdminError::MethodNotAllowed { .. } => "method_not_allowed",
            AdminError::LbDisabled => "lb_disabled",
            AdminError::Rejected(e) => match e {
                MirrorError::NoEndpoints => "no_endpoints",
                MirrorError::DuplicateEndpoint(_) => "duplicate_endpoint",
                MirrorError::TooManyEndpoints(_) => "too_many_endpoints",
                MirrorError::UnknownEndpoint(_) => "unknown_endpoint",
                MirrorError::LastEndpoint => "last_endpoint",
                MirrorError::NoStandby(_) => "no_standby",
                MirrorError::InvalidConfig(_) => "invalid_config",
                MirrorError::Stopped => "mirror_stopped",
            },
        }
    }
}

impl IntoResponse for AdminError {
    fn into_response(self) -> Response {
        let status =
            StatusCode::from_u16(self.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = json!({ "error": self.to_string(), "code": self.code() });
        (status, Json(body)).into_response()
    }
}

/// What an admin server serves.
pub struct AdminState {
    /// The shards (from the hub's directory) mirrors read their streams from; `/metrics`
    /// lists the same directory.
    pub shards: ShardSources,
    /// The hub's counters, for the metrics.
    pub hub: Option<Arc<HubCounters>>,
    /// The identity mirrors present to receivers.
    pub identity: MirrorIdentity,
    /// The hub's links (QUIC-LB rotation), where this admin server fronts a hub.
    pub links: Option<crate::hub::links::Links>,
}

impl AdminState {
    /// The state for `cluster`, with mirrors presenting `chain`/`key` (a certificate of the
    /// cluster CA, e.g. the cluster's own) and checking receivers against the cluster CA.
    pub fn for_cluster(
        cluster: &crate::cluster::Cluster,
        chain: Vec<rustls::pki_types::CertificateDer<'static>>,
        key: rustls::pki_types::PrivateKeyDer<'static>,
    ) -> Self {
        Self {
            shards: ShardSources {
                directory: cluster.directory().clone(),
                launcher: cluster.launcher.clone(),
            },
            hub: Some(cluster.hub.shared_counters()),
            links: Some(cluster.hub.links().clone()),
            identity: MirrorIdentity {
                server_name: cluster.cluster.clone(),
                ca: cluster.ca.clone(),
                chain,
                key: Arc::new(key),
                bind_ip: std::net::IpAddr::from([0, 0, 0, 0]),
            },
        }
    }
}

struct Inner {
    mirrors: MirrorManager,
    hub: Option<Arc<HubCounters>>,
    shards: ShardSources,
    links: Option<crate::hub::links::Links>,
}

type Shared = State<Arc<Inner>>;

/// A running admin server.
pub struct Admin {
    addr: SocketAddr,
    inner: Arc<Inner>,
    shutdown: Option<oneshot::Sender<()>>,
    server: JoinHandle<std::io::Result<()>>,
    /// Set when the server stops serving on its own (the error, as text).
    ended: tokio::sync::watch::Receiver<Option<String>>,
}

impl Admin {
    /// Binds `addr` (TCP) and serves the API. Must run in a tokio runtime. Returns the bound
    /// address too (for port 0).
    pub fn start(addr: SocketAddr, state: AdminState) -> std::io::Result<(Admin, SocketAddr)> {
        let std_listener = std::net::TcpListener::bind(addr)?;
        std_listener.set_nonblocking(true)?;
        let listener = tokio::net::TcpListener::from_std(std_listener)?;
        let bound = listener.local_addr()?;
        let inner = Arc::new(Inner {
            mirrors: MirrorManager::new(state.shards.clone(), state.identity),
            hub: state.hub,
            shards: state.shards,
            links: state.links,
        });
        let (tx, rx) = oneshot::channel::<()>();
        let app = router(inner.clone());
        let (ended_tx, ended) = tokio::sync::watch::channel(None);
        let server = tokio::spawn(async move {
            let r = axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = rx.await;
                })
                .await;
            let why = match &r {
                Ok(()) => "stopped".to_string(),
                Err(e) => e.to_string(),
            };
            ended_tx.send_replace(Some(why));
            r
        });
        info!(addr = %bound, "admin API listening");
        let admin = Admin {
            addr: bound,
            ended,
            inner,
            shutdown: Some(tx),
            server,
        };
        Ok((admin, bound))
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The mirrors this server runs.
    pub fn mirrors(&self) -> &MirrorManager {
        &self.inner.mirrors
    }

    /// Graceful stop: no new connections, requests in flight finish (at most `grace`), then
    /// every mirror stops within `grace`.
    /// Resolves when the server stopped serving (on its own or after [`Admin::stop`]), with
    /// why; a supervisor treats it as a failure while the service runs.
    pub fn ended(&self) -> impl std::future::Future<Output = String> + Send + 'static {
        let mut rx = self.ended.clone();
        async move {
            match rx.wait_for(Option::is_some).await {
                Ok(v) => v.clone().unwrap_or_default(),
                Err(_) => "the admin server task is gone".to_string(),
            }
        }
    }

    pub async fn stop(mut self, grace: Duration) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        let server = &mut self.server;
        match tokio::time::timeout(grace, server).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => warn!(error = %e, "admin server ended with an error"),
            Ok(Err(e)) => warn!(error = %e, "admin server task failed"),
            Err(_) => {
                warn!("admin requests still running after the grace period; cut");
                self.server.abort();
            }
        }
        self.inner.mirrors.stop_all(grace).await;
        info!("admin API stopped");
    }
}

impl Drop for Admin {
    fn drop(&mut self) {
        self.server.abort();
    }
}

fn router(inner: Arc<Inner>) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/metrics", get(metrics_text))
        .route("/live", get(live_streams))
        .route("/lb", get(lb_state))
        .route("/lb/rotate", axum::routing::post(lb_rotate))
        .route("/mirrors", get(list_mirrors).post(create_mirror))
        .route(
            "/mirrors/{*rest}",
            get(get_mirror)
                .post(post_under_mirror)
                .delete(delete_under_mirror),
        )
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(inner)
}

async fn not_found(method: Method, uri: Uri) -> AdminError {
    AdminError::NotFound {
        method: method.to_string(),
        path: uri.path().to_string(),
    }
}

async fn method_not_allowed(method: Method, uri: Uri) -> AdminError {
    AdminError::MethodNotAllowed {
        method: method.to_string(),
        path: uri.path().to_string(),
    }
}

async fn health() -> Json<serde_json::Value> {
    Json(json!({ "status": "ok" }))
}

/// One live stream as `GET /live` shows it.
#[derive(Debug, Clone, serde::Serialize, PartialEq)]
pub struct LiveStream {
    pub stream: StreamName,
    /// The shard its publisher is attached to (none while it has no primary).
    pub primary: Option<crate::ids::ShardId>,
    /// The primary's standbys, each with its lag.
    pub standbys: Vec<crate::link::StandbyLag>,
    /// Every shard holding a standby copy, with the newest sequence it holds.
    pub copies: Vec<(crate::ids::ShardId, Option<u64>)>,
    /// Promotions of a standby copy to primary, over all shards.
    pub promotions: u64,
}

/// The live streams the shards report, by name.
pub fn live_streams_of(records: &[crate::hub::directory::ShardRecord]) -> Vec<LiveStream> {
    let mut by: std::collections::BTreeMap<StreamName, LiveStream> = Default::default();
    for rec in records {
        for r in &rec.replicas {
            let e = by.entry(r.stream.clone()).or_insert_with(|| LiveStream {
                stream: r.stream.clone(),
                primary: None,
                standbys: Vec::new(),
                copies: Vec::new(),
                promotions: 0,
            });
            e.promotions += r.promotions;
            match r.role {
                crate::link::ReplicaRole::Primary => {
                    e.primary = Some(rec.id);
                    e.standbys = r.standbys.clone();
                }
                crate::link::ReplicaRole::Standby => e.copies.push((rec.id, r.last_seq)),
            }
        }
    }
    by.into_values().collect()
}

async fn live_streams(State(s): Shared) -> impl IntoResponse {
    let records: Vec<_> = crate::sync::lock(&s.shards.directory)
        .records()
        .cloned()
        .collect();
    Json(live_streams_of(&records))
}

async fn lb_state(State(s): Shared) -> Json<serde_json::Value> {
    let links = s.links.as_ref();
    Json(match links.and_then(|l| l.lb_state()) {
        Some((config_id, rotations)) => {
            json!({ "enabled": true, "config_id": config_id, "rotations": rotations })
        }
        None => json!({ "enabled": false }),
    })
}

async fn lb_rotate(State(s): Shared) -> Result<Json<serde_json::Value>, AdminError> {
    let (from, to, shards) = s
        .links
        .as_ref()
        .and_then(|l| l.rotate_lb())
        .ok_or(AdminError::LbDisabled)?;
    info!(from, to, shards, "admin: QUIC-LB configuration rotated");
    Ok(Json(json!({ "from": from, "to": to, "shards": shards })))
}

async fn metrics_text(State(s): Shared) -> impl IntoResponse {
    let records: Vec<_> = crate::sync::lock(&s.shards.directory)
        .records()
        .cloned()
        .collect();
    let text = metrics::render(&s.mirrors.snapshots(), s.hub.as_deref(), &records);
    ([(header::CONTENT_TYPE, metrics::CONTENT_TYPE)], text)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateBody {
    stream: String,
    endpoints: Vec<String>,
    #[serde(default)]
    config: Option<MirrorConfig>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AddBody {
    addr: String,
    #[serde(default)]
    rank: Option<usize>,
}

fn parse_body<T: serde::de::DeserializeOwned>(
    body: Result<Bytes, BytesRejection>,
) -> Result<T, AdminError> {
    let body = body.map_err(|e| AdminError::InvalidJson(e.body_text()))?;
    serde_json::from_slice(&body).map_err(|e| AdminError::InvalidJson(e.to_string()))
}

fn parse_path(path: Result<Path<String>, PathRejection>) -> Result<String, AdminError> {
    path.map(|Path(p)| p)
        .map_err(|e| AdminError::InvalidPath(e.body_text()))
}

/// An endpoint address: `IP:PORT`, connectable (no port 0, no unspecified IP).
pub fn parse_addr(value: &str) -> Result<SocketAddr, AdminError> {
    let bad = |why: &str| AdminError::InvalidAddress {
        value: value.to_string(),
        why: why.to_string(),
    };
    let addr: SocketAddr = value
        .trim()
        .parse()
        .map_err(|_| bad("expected IP:PORT, e.g. 127.0.0.1:7000 or [::1]:7000"))?;
    if addr.port() == 0 || addr.ip().is_unspecified() {
        return Err(bad("port 0 and unspecified IPs cannot be connected to"));
    }
    Ok(addr)
}

async fn list_mirrors(State(s): Shared) -> Json<Vec<MirrorSummary>> {
    Json(s.mirrors.list())
}

async fn create_mirror(
    State(s): Shared,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<MirrorView>), AdminError> {
    let b: CreateBody = parse_body(body)?;
    let stream = StreamName::new(b.stream)?;
    let endpoints = b
        .endpoints
        .iter()
        .map(|e| parse_addr(e))
        .collect::<Result<Vec<_>, _>>()?;
    let view = s
        .mirrors
        .create(stream, &endpoints, b.config.unwrap_or_default())?;
    Ok((StatusCode::CREATED, Json(view)))
}

async fn get_mirror(
    State(s): Shared,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<MirrorView>, AdminError> {
    let stream = StreamName::new(parse_path(path)?)?;
    Ok(Json(s.mirrors.view(&stream)?))
}

/// `POST /mirrors/{stream}/endpoints`.
async fn post_under_mirror(
    State(s): Shared,
    method: Method,
    uri: Uri,
    path: Result<Path<String>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<serde_json::Value>), AdminError> {
    let rest = parse_path(path)?;
    let Some(stream) = rest.strip_suffix("/endpoints") else {
        return Err(not_found(method, uri).await);
    };
    let stream = StreamName::new(stream)?;
    let b: AddBody = parse_body(body)?;
    let addr = parse_addr(&b.addr)?;
    let id = s.mirrors.add_endpoint(&stream, addr, b.rank)?;
    let body = json!({ "stream": stream, "addr": addr, "id": id });
    Ok((StatusCode::CREATED, Json(body)))
}

/// `DELETE /mirrors/{stream}/endpoints/{addr}` or `DELETE /mirrors/{stream}`.
///
/// A path `S/endpoints/A` removes endpoint `A` of mirror `S` when `A` is an address or `S` is a
/// mirror; otherwise the whole path names the mirror to stop.
async fn delete_under_mirror(
    State(s): Shared,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<serde_json::Value>, AdminError> {
    let rest = parse_path(path)?;
    if let Some((prefix, addr)) = rest.rsplit_once("/endpoints/") {
        let parsed = parse_addr(addr);
        let prefix_is_mirror = StreamName::new(prefix)
            .ok()
            .is_some_and(|p| s.mirrors.view(&p).is_ok());
        if parsed.is_ok() || prefix_is_mirror {
            let stream = StreamName::new(prefix)?;
            let addr = parsed?;
            let id = s.mirrors.remove_endpoint(&stream, addr)?;
            let body = json!({ "stream": stream, "addr": addr, "id": id, "removed": true });
            return Ok(Json(body));
        }
    }
    let stream = StreamName::new(rest)?;
    s.mirrors.stop(&stream, STOP_GRACE).await?;
    Ok(Json(json!({ "stream": stream, "stopped": true })))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::directory::Directory;
    use crate::ids::{GroupId, ShardId};
    use crate::link::{Register, ReplicaReport, ReplicaRole, StandbyLag, LINK_VERSION};

    #[test]
    fn live_streams_join_the_primary_and_its_copies_by_name() {
        let now = crate::clock::now();
        let mut d = Directory::new(Duration::from_secs(2));
        for id in [1, 2] {
            let reg = Register {
                version: LINK_VERSION,
                shard: ShardId(id),
                group: GroupId(0),
                addr: SocketAddr::from(([127, 0, 0, 1], 7000 + id as u16)),
                capacity: 10,
                mirror: None,
            };
            d.handle_register(&reg, now).unwrap();
        }
        let stream = StreamName::new("live/a").unwrap();
        let lag = StandbyLag {
            shard: ShardId(2),
            acked_seq: Some(9),
            lag_seqs: 1,
            lag_ms: 3,
            connected: true,
        };
        let report = |role, standbys: Vec<StandbyLag>, promotions| ReplicaReport {
            stream: stream.clone(),
            role,
            last_seq: Some(9),
            standbys,
            promotions,
        };
        d.handle_replicas(
            ShardId(1),
            vec![report(ReplicaRole::Primary, vec![lag.clone()], 1)],
            now,
        );
        d.handle_replicas(
            ShardId(2),
            vec![report(ReplicaRole::Standby, vec![], 0)],
            now,
        );
        let records: Vec<_> = d.records().cloned().collect();
        let live = live_streams_of(&records);
        assert_eq!(
            live,
            vec![LiveStream {
                stream,
                primary: Some(ShardId(1)),
                standbys: vec![lag],
                copies: vec![(ShardId(2), Some(9))],
                promotions: 1,
            }]
        );
    }
}
