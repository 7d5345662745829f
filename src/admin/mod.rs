//! The admin HTTP API of a hub process: probes, start and steer stream mirrors, read metrics.
//!
//! Started by `shoal up` after the cluster (on `admin.listen`, default `127.0.0.1:4480`), or by
//! [`Admin::start`] in tests; [`Admin::stop`] ends it after the cluster drained: the servers
//! stop accepting and finish the requests in flight, then every mirror is stopped with a grace
//! period. While the drain runs the API keeps serving and `/ready` answers 503
//! ([`Admin::set_draining`]). Routes (stream names hold `/`, so the stream is the rest of the
//! path):
//!
//! | route | answer |
//! | --- | --- |
//! | `GET /live` | 200 `{"status":"ok"}` while the process serves (liveness) |
//! | `GET /ready` | 200 [`Readiness`] (`{"ready":true,"draining":false,…}`) when the hub should get clients; 503 with the same body and its `reasons` otherwise ([`probes`]) |
//! | `GET /health` | `{"status":"ok"\|"draining","draining":bool}` |
//! | `POST /mirrors` `{"stream","endpoints":[..],"config":{..}?}` | 201, the mirror ([`MirrorView`]) |
//! | `GET /mirrors` | `[`[`MirrorSummary`]`]` |
//! | `GET /mirrors/{stream}` | the mirror ([`MirrorView`]): snapshot with per-endpoint health |
//! | `DELETE /mirrors/{stream}` | 200 `{"stream","stopped":true}` after a graceful stop |
//! | `POST /mirrors/{stream}/endpoints` `{"addr","rank"?}` | 201 `{"stream","addr","id"}` |
//! | `DELETE /mirrors/{stream}/endpoints/{addr}` | 200 `{"stream","addr","id","removed":true}` |
//! | `GET /lb` | `{"enabled","config_id","rotations"}`: the QUIC-LB configuration new CIDs carry |
//! | `POST /lb/rotate` | 200 `{"from","to","shards"}`: the next config id (and its key) is current on the hub and every shard told; 409 `lb_disabled` when QUIC-LB is off |
//! | `GET /streams/live` | `[`[`LiveStream`]`]`: each live stream's primary, standbys with their lag, copies and promotions, from the shards' reports |
//! | `GET /metrics` | Prometheus text ([`metrics`]) |
//!
//! Every error is JSON, `{"error":"<message>","code":"<snake_case kind>"}`, with the status of
//! [`AdminError::status`]: unknown routes and malformed bodies included. Request bodies are
//! parsed here (any content type), so a bad body is a 400 with serde's message.
//!
//! **Authentication** ([`auth`]): with `admin.token_file`, every request but `GET`/`HEAD`
//! needs `Authorization: Bearer <token>`; without it the answer is 401 `unauthorized` with a
//! `WWW-Authenticate: Bearer` challenge, whatever the route (before routing, so a refused request
//! learns nothing of the routes). Reads stay open. Refusals are counted
//! ([`Admin::unauthorized_total`]) and logged at debug, never with the token.
//!
//! **Metrics listener** (`admin.metrics_listen`): a second listener, started and stopped with
//! the API, that serves only `GET /metrics`, `/live`, `/ready` and `/health` (anything else is a
//! 404 `not_found`), so a scraper can reach it on a public address while the API that changes
//! things stays on loopback.
//!
//! - [`probes`] — liveness and readiness.
//! - [`auth`] — the bearer token of the mutating routes.
//! - [`mirrors`] — the mirrors, their sources and their lifecycle.
//! - [`metrics`] — the Prometheus exposition.
//! - [`client`] — the small HTTP client behind `shoal mirror …`.

pub mod auth;
pub mod client;
mod live;
pub mod metrics;
pub mod mirrors;
pub mod probes;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{Path, Request, State};
use axum::http::{header, Method, StatusCode, Uri};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use crate::hub::HubCounters;
use crate::ids::{GroupId, InvalidName, StreamName};
use crate::mirror::{MirrorConfig, MirrorError};
use crate::security::token::TokenKeys;
use crate::sync::lock;
pub use auth::{AdminAuth, AuthFailure, TokenFileError};
use live::live_streams;
pub use live::{live_streams_of, LiveStream};
use mirrors::ShardSources;
pub use mirrors::{MirrorIdentity, MirrorManager, MirrorSummary, MirrorView};
pub use probes::{NotReady, Probes, Readiness};

/// Grace period of `DELETE /mirrors/{stream}`: how long a stopping mirror waits for every
/// pushed chunk to be acknowledged.
pub const STOP_GRACE: Duration = Duration::from_secs(2);

/// Why an admin request was refused. Each variant has an HTTP status and a stable code.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum AdminError {
    #[error("invalid JSON body: {0}")]
    InvalidJson(String),
    /// Well-formed JSON with a field of the wrong type or value (e.g. a duration without a
    /// unit).
    #[error("invalid value in the body: {0}")]
    InvalidValue(String),
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
    /// A request that changes state came without the bearer token of `admin.token_file`, or
    /// with another one (401, with a `WWW-Authenticate: Bearer` challenge).
    #[error(transparent)]
    Unauthorized(#[from] AuthFailure),
}

impl AdminError {
    /// The HTTP status.
    pub fn status(&self) -> u16 {
        match self {
            AdminError::InvalidJson(_)
            | AdminError::InvalidValue(_)
            | AdminError::InvalidPath(_)
            | AdminError::InvalidStream(_)
            | AdminError::InvalidAddress { .. }
            | AdminError::DuplicateInList(_) => 400,
            AdminError::Unauthorized(_) => 401,
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
            AdminError::InvalidValue(_) => "invalid_value",
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
            AdminError::Unauthorized(_) => "unauthorized",
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
        let mut response = (status, Json(body)).into_response();
        if let AdminError::Unauthorized(why) = &self {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static(why.challenge()),
            );
        }
        response
    }
}

/// What an admin server serves.
pub struct AdminState {
    /// The shards (from the hub's directory) mirrors read their streams from; `/metrics`
    /// and `/ready` read the same directory.
    pub shards: ShardSources,
    /// The hub's counters, for the metrics.
    pub hub: Option<Arc<HubCounters>>,
    /// The identity mirrors present to receivers.
    pub identity: MirrorIdentity,
    /// The hub's links (QUIC-LB rotation), where this admin server fronts a hub.
    pub links: Option<crate::hub::links::Links>,
    /// The hub's token keys: `/ready` checks they are loaded (none: not checked).
    pub tokens: Option<Arc<TokenKeys>>,
    /// Groups that must each have an alive shard for `/ready`, besides those the directory
    /// lists ([`probes`]).
    pub groups: BTreeSet<GroupId>,
    /// The token of the mutating routes (none: they are open, and the config keeps such an
    /// API on loopback).
    pub auth: Option<AdminAuth>,
    /// Where the metrics listener binds (none: no second listener).
    pub metrics_listen: Option<SocketAddr>,
}

impl AdminState {
    /// The state for `cluster`, with mirrors presenting `chain`/`key` (a certificate of the
    /// cluster CA, e.g. the cluster's own) and checking receivers against the cluster CA.
    /// `/ready` expects the groups of the shards the directory lists now (the cluster's first
    /// shards); no token, no metrics listener (see [`AdminState::with_auth`] and
    /// [`AdminState::with_metrics_listen`]).
    pub fn for_cluster(
        cluster: &crate::cluster::Cluster,
        chain: Vec<rustls::pki_types::CertificateDer<'static>>,
        key: rustls::pki_types::PrivateKeyDer<'static>,
    ) -> Self {
        let groups = lock(cluster.directory())
            .records()
            .map(|r| r.group)
            .collect();
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
            tokens: Some(cluster.hub.tokens().clone()),
            groups,
            auth: None,
            metrics_listen: None,
        }
    }

    /// The mutating routes need `auth`'s token (none: they are open).
    pub fn with_auth(mut self, auth: Option<AdminAuth>) -> Self {
        self.auth = auth;
        self
    }

    /// A metrics listener on `addr` (none: no second listener).
    pub fn with_metrics_listen(mut self, addr: Option<SocketAddr>) -> Self {
        self.metrics_listen = addr;
        self
    }
}

struct Inner {
    mirrors: MirrorManager,
    hub: Option<Arc<HubCounters>>,
    shards: ShardSources,
    links: Option<crate::hub::links::Links>,
    probes: Probes,
    auth: Option<AdminAuth>,
}

type Shared = State<Arc<Inner>>;

/// A running admin server: the API and, when configured, the metrics listener.
pub struct Admin {
    addr: SocketAddr,
    metrics_addr: Option<SocketAddr>,
    inner: Arc<Inner>,
    /// Set to true to stop both servers gracefully.
    shutdown: watch::Sender<bool>,
    servers: Vec<JoinHandle<std::io::Result<()>>>,
    /// Set when a server stops serving on its own (which, and the error, as text).
    ended: watch::Receiver<Option<String>>,
}

/// Binds a TCP listener for tokio.
fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let std_listener = std::net::TcpListener::bind(addr)?;
    std_listener.set_nonblocking(true)?;
    tokio::net::TcpListener::from_std(std_listener)
}

/// Serves `app` on `listener` until `stop` turns true; the first server to end says why in
/// `ended`.
fn serve(
    what: &'static str,
    listener: tokio::net::TcpListener,
    app: Router,
    mut stop: watch::Receiver<bool>,
    ended: Arc<watch::Sender<Option<String>>>,
) -> JoinHandle<std::io::Result<()>> {
    tokio::spawn(async move {
        let r = axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = stop.wait_for(|stop| *stop).await;
            })
            .await;
        let why = match &r {
            Ok(()) => format!("the {what} stopped"),
            Err(e) => format!("the {what}: {e}"),
        };
        ended.send_if_modified(|v| {
            let first = v.is_none();
            if first {
                *v = Some(why);
            }
            first
        });
        r
    })
}

impl Admin {
    /// Binds `addr` (TCP) and serves the API, and the metrics listener on
    /// `state.metrics_listen` when set. Must run in a tokio runtime. Returns the API's bound
    /// address too (for port 0; [`Admin::metrics_addr`] for the other).
    pub fn start(addr: SocketAddr, state: AdminState) -> std::io::Result<(Admin, SocketAddr)> {
        let listener = bind(addr)?;
        let bound = listener.local_addr()?;
        let metrics = match state.metrics_listen {
            Some(m) => Some(bind(m).map_err(|e| {
                std::io::Error::new(e.kind(), format!("the metrics listener on {m}: {e}"))
            })?),
            None => None,
        };
        let metrics_addr = metrics.as_ref().map(|l| l.local_addr()).transpose()?;
        let inner = Arc::new(Inner {
            mirrors: MirrorManager::new(state.shards.clone(), state.identity),
            hub: state.hub,
            shards: state.shards,
            links: state.links,
            probes: Probes::new(state.tokens, state.groups),
            auth: state.auth,
        });
        let (shutdown, stop) = watch::channel(false);
        let (ended_tx, ended) = watch::channel(None);
        let ended_tx = Arc::new(ended_tx);
        let mut servers = vec![serve(
            "admin API",
            listener,
            router(inner.clone()),
            stop.clone(),
            ended_tx.clone(),
        )];
        if let Some(l) = metrics {
            let app = metrics_router(inner.clone());
            servers.push(serve("metrics listener", l, app, stop, ended_tx));
        }
        info!(
            addr = %bound,
            metrics = metrics_addr.map(tracing::field::display),
            token = inner.auth.is_some(),
            "admin API listening"
        );
        let admin = Admin {
            addr: bound,
            metrics_addr,
            ended,
            inner,
            shutdown,
            servers,
        };
        Ok((admin, bound))
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The metrics listener's bound address, when one runs.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    /// The mirrors this server runs.
    pub fn mirrors(&self) -> &MirrorManager {
        &self.inner.mirrors
    }

    /// From now on `/ready` answers 503 with the reason `draining` and `/health` says
    /// `draining`; one way (a draining hub does not come back). Call it when the drain starts.
    pub fn set_draining(&self) {
        if self.inner.probes.set_draining() {
            info!("admin: draining; /ready answers 503 from now on");
        }
    }

    pub fn is_draining(&self) -> bool {
        self.inner.probes.is_draining()
    }

    /// What `GET /ready` would answer now.
    pub fn readiness(&self) -> Readiness {
        ready_now(&self.inner)
    }

    /// Requests refused for want of the right bearer token, since the start.
    pub fn unauthorized_total(&self) -> u64 {
        self.inner.auth.as_ref().map_or(0, AdminAuth::refused)
    }

    /// Reads `admin.token_file` again (on SIGHUP); the new token is in force at once. Returns
    /// whether it changed; `Ok(false)` without a token file. On an error the token in force
    /// stays.
    pub fn reload_token(&self) -> Result<bool, TokenFileError> {
        let Some(auth) = &self.inner.auth else {
            return Ok(false);
        };
        let changed = auth.reload()?;
        if changed {
            info!(path = %auth.path().display(), "admin: bearer token reloaded");
        }
        Ok(changed)
    }

    /// Resolves when a server stopped serving (on its own or after [`Admin::stop`]), with
    /// which and why; a supervisor treats it as a failure while the service runs.
    pub fn ended(&self) -> impl std::future::Future<Output = String> + Send + 'static {
        let mut rx = self.ended.clone();
        async move {
            match rx.wait_for(Option::is_some).await {
                Ok(v) => v.clone().unwrap_or_default(),
                Err(_) => "the admin server task is gone".to_string(),
            }
        }
    }

    /// Graceful stop: no new connections on either listener, requests in flight finish (at
    /// most `grace`), then every mirror stops within `grace`.
    pub async fn stop(mut self, grace: Duration) {
        self.shutdown.send_replace(true);
        let servers = &mut self.servers;
        let all = async {
            for server in servers.iter_mut() {
                match server.await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => warn!(error = %e, "admin server ended with an error"),
                    Err(e) => warn!(error = %e, "admin server task failed"),
                }
            }
        };
        if tokio::time::timeout(grace, all).await.is_err() {
            warn!("admin requests still running after the grace period; cut");
            for server in &self.servers {
                server.abort();
            }
        }
        self.inner.mirrors.stop_all(grace).await;
        info!("admin API stopped");
    }
}

impl Drop for Admin {
    fn drop(&mut self) {
        for server in &self.servers {
            server.abort();
        }
    }
}

/// The API: every route, behind the token check.
fn router(inner: Arc<Inner>) -> Router {
    Router::new()
        .route("/live", get(live))
        .route("/ready", get(ready))
        .route("/health", get(health))
        .route("/metrics", get(metrics_text))
        .route("/streams/live", get(live_streams))
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
        // Last, so it runs first: for the routes and the fallbacks alike.
        .layer(axum::middleware::from_fn_with_state(
            inner.clone(),
            require_token,
        ))
        .with_state(inner)
}

/// The metrics listener: the read-only probes and the metrics, nothing else.
fn metrics_router(inner: Arc<Inner>) -> Router {
    Router::new()
        .route("/live", get(live))
        .route("/ready", get(ready))
        .route("/health", get(health))
        .route("/metrics", get(metrics_text))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(inner)
}

/// Refuses a request that changes state without the right bearer token ([`auth`]).
async fn require_token(State(s): Shared, req: Request, next: Next) -> Response {
    if let Some(auth) = &s.auth {
        let header = req
            .headers()
            .get(header::AUTHORIZATION)
            .map(|v| v.as_bytes());
        if let Err(why) = auth.authorize(req.method(), header) {
            debug!(
                method = %req.method(),
                path = req.uri().path(),
                reason = %why,
                "admin request refused"
            );
            return AdminError::Unauthorized(why).into_response();
        }
    }
    next.run(req).await
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

async fn live() -> Json<serde_json::Value> {
    Json(json!({ "status": "ok" }))
}

fn ready_now(s: &Inner) -> Readiness {
    let views = lock(&s.shards.directory).views();
    s.probes.readiness(&views, crate::clock::unix_ms())
}

async fn ready(State(s): Shared) -> (StatusCode, Json<Readiness>) {
    let r = ready_now(&s);
    let status = if r.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(r))
}

async fn health(State(s): Shared) -> Json<serde_json::Value> {
    let draining = s.probes.is_draining();
    let status = if draining { "draining" } else { "ok" };
    Json(json!({ "status": status, "draining": draining }))
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
    let records: Vec<_> = lock(&s.shards.directory).records().cloned().collect();
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
    serde_json::from_slice(&body).map_err(|e| match e.classify() {
        serde_json::error::Category::Data => AdminError::InvalidValue(e.to_string()),
        _ => AdminError::InvalidJson(e.to_string()),
    })
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
