//! What every data-plane service shares: configuration and secrets from the environment, the
//! JSON error body, `/healthz`, `/readyz`, `/metrics`, and serving until a shutdown signal.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use serde::Serialize;
use tokio::sync::watch;

use crate::crd::SecretKeyRef;
use crate::pipeline::PipelineConfig;
use crate::store::Store;

/// Why a service could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("CDP_STORE_URL is not set (sqlite:PATH or postgres://...)")]
    NoStoreUrl,
    #[error("CDP_STORE_URL is not a valid URL")]
    BadStoreUrl,
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path}: not a PipelineConfig: {source}")]
    Config { path: PathBuf, source: serde_json::Error },
    #[error("secret {name}/{key} not found")]
    Secret { name: String, key: String },
    #[error("store: {0}")]
    Store(#[from] crate::store::StoreError),
    #[error("matching model: {0}")]
    Model(#[from] crate::identity::ModelError),
    #[error("cannot listen on {addr}: {source}")]
    Listen { addr: SocketAddr, source: std::io::Error },
    #[error("api tokens: {0}")]
    Tokens(String),
    #[error(transparent)]
    Import(#[from] crate::ingest::import::ImportError),
    #[error(transparent)]
    Platform(#[from] crate::local::PlatformError),
    #[error(transparent)]
    Feeds(#[from] crate::feeds::FeedsError),
    #[error(transparent)]
    Enrich(#[from] crate::enrich::EnrichError),
    #[error("source {name}: kafka consumer: {error}")]
    Kafka { name: String, error: rdkafka::error::KafkaError },
}

impl StartError {
    pub fn reason(&self) -> &'static str {
        match self {
            Self::NoStoreUrl | Self::BadStoreUrl => "StoreUrl",
            Self::Read { .. } | Self::Config { .. } => "Config",
            Self::Secret { .. } => "SecretNotFound",
            Self::Store(_) => "Store",
            Self::Model(_) => "Model",
            Self::Listen { .. } => "Listen",
            Self::Tokens(_) => "Tokens",
            Self::Import(e) => e.reason(),
            Self::Platform(e) => e.reason(),
            Self::Feeds(e) => e.reason(),
            Self::Enrich(e) => e.reason(),
            Self::Kafka { .. } => "KafkaConsumer",
        }
    }
}

/// The store URL from `CDP_STORE_URL`, with `CDP_STORE_PASSWORD` inserted into a PostgreSQL
/// URL when set (the password comes from a Secret, the rest from the ConfigMap).
pub fn store_url_from_env() -> Result<String, StartError> {
    let url = std::env::var("CDP_STORE_URL").map_err(|_| StartError::NoStoreUrl)?;
    let password = std::env::var("CDP_STORE_PASSWORD").ok().filter(|p| !p.is_empty());
    with_password(&url, password.as_deref())
}

/// The store of a long-running service (`CDP_STORE_URL`), opened once it answers. In a
/// cluster the PostgreSQL pod may start after the workloads, or restart under them; waiting
/// here, rather than exiting into the kubelet's growing restart back-off, lets a workload be
/// ready as soon as the store is. Any other failure (a wrong password, a bad URL) ends the start.
pub async fn open_store_from_env() -> Result<Store, StartError> {
    const MAX_DELAY: std::time::Duration = std::time::Duration::from_secs(5);
    let url = store_url_from_env()?;
    let mut delay = std::time::Duration::from_millis(250);
    loop {
        match Store::open(&url).await {
            Ok(store) => return Ok(store),
            Err(error) if error.is_unreachable() => {
                tracing::warn!(%error, retry_in = ?delay, "the store does not answer yet; waiting for it");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(MAX_DELAY);
            }
            Err(error) => return Err(error.into()),
        }
    }
}

/// `url` with `password` set in it (a PostgreSQL URL; a SQLite one has none).
pub fn with_password(url: &str, password: Option<&str>) -> Result<String, StartError> {
    let Some(password) = password else { return Ok(url.to_string()) };
    if url.starts_with("sqlite:") {
        return Ok(url.to_string());
    }
    let mut parsed = url::Url::parse(url).map_err(|_| StartError::BadStoreUrl)?;
    parsed.set_password(Some(password)).map_err(|_| StartError::BadStoreUrl)?;
    Ok(parsed.to_string())
}

/// The `PipelineConfig` JSON the operator mounts.
pub fn load_config(path: &Path) -> Result<PipelineConfig, StartError> {
    let text = std::fs::read_to_string(path).map_err(|source| StartError::Read { path: path.into(), source })?;
    serde_json::from_str(&text).map_err(|source| StartError::Config { path: path.into(), source })
}

/// Where secret values come from: files `DIR/<secret>/<key>` in a cluster (mounted Secrets),
/// or the Secret manifests of a directory in `cdp local`.
#[derive(Clone, Debug)]
pub enum Secrets {
    Dir(PathBuf),
    Values(std::collections::BTreeMap<SecretKeyRef, String>),
}

impl Secrets {
    /// `$CDP_SECRETS_DIR`, by default `/var/run/secrets/cdp`.
    pub fn from_env() -> Secrets {
        Secrets::Dir(std::env::var_os("CDP_SECRETS_DIR").map_or_else(|| "/var/run/secrets/cdp".into(), PathBuf::from))
    }

    pub fn get(&self, secret: &SecretKeyRef) -> Result<String, StartError> {
        let missing = || StartError::Secret { name: secret.name.clone(), key: secret.key.clone() };
        match self {
            Secrets::Dir(dir) => std::fs::read_to_string(dir.join(&secret.name).join(&secret.key))
                .map(|v| v.trim_end_matches(['\n', '\r']).to_string())
                .map_err(|_| missing()),
            Secrets::Values(values) => values.get(secret).cloned().ok_or_else(missing),
        }
    }
}

/// The error body of every service: `{"error": {"code", "message", "details"}}`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    /// Stable machine-readable code.
    pub code: String,
    pub message: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    #[schema(value_type = Vec<Object>)]
    pub details: Vec<serde_json::Value>,
}

/// An error answered as JSON with a status and a stable code.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub details: Vec<serde_json::Value>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError { status, code, message: message.into(), details: Vec::new() }
    }

    pub fn with_details(mut self, details: Vec<serde_json::Value>) -> Self {
        self.details = details;
        self
    }

    pub fn not_found(what: &str) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", format!("{what} not found"))
    }

    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    pub fn unauthorized() -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", "missing or invalid bearer token")
    }

    /// A request body over `limit` bytes.
    pub fn payload_too_large(limit: usize) -> Self {
        let message = format!("the request body is larger than the limit of {} MiB ({limit} bytes)", limit as f64 / MIB);
        Self::new(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", message)
            .with_details(vec![serde_json::json!({"limitBytes": limit})])
    }
}

const MIB: f64 = (1 << 20) as f64;

/// Refuse request bodies over `limit` bytes with 413 in the error envelope, stating the limit.
/// The extractors that read a body (`Bytes`, `Json`) enforce the limit, and answer 413 in
/// plain text: that answer is replaced (no handler answers 413 itself).
pub fn limit_body(router: Router, limit: usize) -> Router {
    router.layer(DefaultBodyLimit::max(limit)).layer(axum::middleware::map_response(move |response: Response| async move {
        let json = response.headers().get(header::CONTENT_TYPE).is_some_and(|t| t.as_bytes().starts_with(b"application/json"));
        if response.status() == StatusCode::PAYLOAD_TOO_LARGE && !json {
            return ApiError::payload_too_large(limit).into_response();
        }
        response
    }))
}

impl From<crate::store::StoreError> for ApiError {
    fn from(e: crate::store::StoreError) -> Self {
        tracing::error!(error = %e, reason = e.reason(), "store error");
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "store_unavailable", "the store failed; retry later")
    }
}

impl From<ApiError> for ErrorBody {
    fn from(e: ApiError) -> Self {
        ErrorBody { error: ErrorDetail { code: e.code.into(), message: e.message, details: e.details } }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status;
        (status, Json(ErrorBody::from(self))).into_response()
    }
}

/// The OpenAPI security scheme of every service: a bearer token (an API token, or a Source's
/// intake key).
pub struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme("bearer", SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()));
    }
}

/// The metrics every service exposes (each updates the ones of its role).
pub struct Metrics {
    pub registry: Registry,
    /// Intake outcomes by source: accepted, duplicate, rejected.
    pub intake_records: Family<Vec<(&'static str, String)>, Counter>,
    /// Matcher decisions: new, join, merge; and failures by reason.
    pub matcher_records: Family<Vec<(&'static str, String)>, Counter>,
    pub matcher_errors: Family<Vec<(&'static str, String)>, Counter>,
    /// Seconds from intake to the record being resolved.
    pub resolve_lag: Histogram,
    /// Stored records the resolved records were compared with; per record, it grows with the
    /// blocks of the matching policy, up to `maxCandidates` profiles.
    pub compared_records: Counter,
    /// Review items opened.
    pub review_items: Counter,
    /// API requests by route group and status.
    pub api_requests: Family<Vec<(&'static str, String)>, Counter>,
    /// Queued intake records (sampled by the matcher, what the scaler reads).
    pub intake_queued: Gauge,
    /// Review items waiting for a person's decision (sampled by the matcher).
    pub review_open: Gauge,
    /// Whether the store answered this replica's last readiness check (1) or not (0).
    pub store_up: Gauge,
    /// Work measured per scaled workload, for `/v1/load` and the `cdp_load_*` metrics.
    pub meters: super::load::Meters,
    pub feeds: crate::feeds::status::FeedMetrics,
    pub enrich: crate::enrich::status::EnrichMetrics,
    /// This replica's Kafka consumers (intake), for `/v1/load` and the `cdp_kafka_*` metrics.
    pub kafka: crate::ingest::kafka::KafkaStatus,
}

impl Metrics {
    pub fn new() -> Arc<Metrics> {
        let mut registry = Registry::with_prefix("cdp");
        let intake_records = Family::default();
        registry.register("intake_records", "Records received, by source and outcome", intake_records.clone());
        let matcher_records = Family::default();
        registry.register("matcher_records", "Records resolved, by decision", matcher_records.clone());
        let matcher_errors = Family::default();
        registry.register("matcher_errors", "Resolution failures, by reason", matcher_errors.clone());
        let resolve_lag = Histogram::new(exponential_buckets(0.001, 2.0, 16));
        registry.register("resolve_lag_seconds", "Time from intake to resolution", resolve_lag.clone());
        let compared_records = Counter::default();
        registry.register("matcher_compared_records", "Stored records resolved records were compared with", compared_records.clone());
        let review_items = Counter::default();
        registry.register("review_items", "Pairs sent to the review queue", review_items.clone());
        let api_requests = Family::default();
        registry.register("api_requests", "API requests, by route and status", api_requests.clone());
        let intake_queued = Gauge::default();
        registry.register("intake_queued", "Records waiting in the intake queue", intake_queued.clone());
        let review_open = Gauge::default();
        registry.register("review_open", "Review items waiting for a decision", review_open.clone());
        let store_up = Gauge::default();
        registry.register("store_up", "Whether the store answered the last readiness check", store_up.clone());
        let meters = super::load::Meters::new(super::load::LoadMetrics::register(&mut registry));
        let feeds = crate::feeds::status::FeedMetrics::register(&mut registry);
        let enrich = crate::enrich::status::EnrichMetrics::register(&mut registry);
        let kafka = crate::ingest::kafka::KafkaStatus::register(&mut registry);
        Arc::new(Metrics {
            registry,
            intake_records,
            matcher_records,
            compared_records,
            matcher_errors,
            resolve_lag,
            review_items,
            api_requests,
            intake_queued,
            review_open,
            store_up,
            meters,
            feeds,
            enrich,
            kafka,
        })
    }
}

#[derive(Clone)]
struct OpsState {
    store: Store,
    metrics: Arc<Metrics>,
    shutdown: Shutdown,
}

/// `/healthz` (the process runs), `/readyz` (the store answers), `/metrics` (Prometheus text).
pub fn ops_router<S>(store: Store, metrics: Arc<Metrics>, shutdown: Shutdown) -> Router<S> {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .with_state(OpsState { store, metrics, shutdown })
}

async fn readyz(State(state): State<OpsState>) -> Result<&'static str, ApiError> {
    if state.shutdown.draining() {
        return Err(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "draining", "shutting down"));
    }
    if let Some(reason) = state.metrics.meters.stuck(std::time::Instant::now()) {
        return Err(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "stuck", reason));
    }
    let answered = state.store.ping().await;
    state.metrics.store_up.set(i64::from(answered.is_ok()));
    answered?;
    Ok("ready")
}

async fn metrics_text(State(state): State<OpsState>) -> Response {
    let mut out = String::new();
    match prometheus_client::encoding::text::encode(&mut out, &state.metrics.registry) {
        Ok(()) => ([("content-type", "application/openmetrics-text; version=1.0.0; charset=utf-8")], out).into_response(),
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

/// Where a process is in its life: running, draining (still serving, but no longer ready, so
/// that Kubernetes takes it out of its Service's endpoints), or stopping.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Running,
    Draining,
    Stopping,
}

/// The shutdown state every task of a process watches.
#[derive(Clone)]
pub struct Shutdown(watch::Receiver<Phase>);

pub struct ShutdownTrigger(watch::Sender<Phase>);

pub fn shutdown_channel() -> (ShutdownTrigger, Shutdown) {
    let (tx, rx) = watch::channel(Phase::Running);
    (ShutdownTrigger(tx), Shutdown(rx))
}

impl ShutdownTrigger {
    pub fn trigger(&self) {
        let _ = self.0.send(Phase::Stopping);
    }

    fn drain(&self) {
        let _ = self.0.send(Phase::Draining);
    }
}

impl Shutdown {
    /// Resolves once shutdown was requested.
    pub async fn wait(mut self) {
        let _ = self.0.wait_for(|phase| *phase == Phase::Stopping).await;
    }

    pub fn requested(&self) -> bool {
        *self.0.borrow() == Phase::Stopping
    }

    /// Draining or stopping: `/readyz` says so.
    pub fn draining(&self) -> bool {
        *self.0.borrow() != Phase::Running
    }
}

/// How long a service behind a Kubernetes Service keeps serving after SIGTERM, unready: the
/// endpoint controllers and every node's proxy need a moment to stop sending it new
/// connections, which would otherwise be refused during a rolling update.
pub const DRAIN_DELAY: std::time::Duration = std::time::Duration::from_secs(5);

/// On Ctrl-C or SIGTERM: drain for `drain` (unready, still serving), then trigger `trigger`.
/// A second signal during the drain stops at once.
pub fn on_signal(trigger: ShutdownTrigger, drain: std::time::Duration) {
    tokio::spawn(async move {
        let mut signals = Signals::new();
        signals.next().await;
        if !drain.is_zero() {
            tracing::info!(?drain, "draining: not ready, still serving");
            trigger.drain();
            tokio::select! {
                _ = tokio::time::sleep(drain) => {}
                _ = signals.next() => {}
            }
        }
        tracing::info!("shutting down");
        trigger.trigger();
    });
}

/// Ctrl-C and SIGTERM, as one stream.
struct Signals {
    #[cfg(unix)]
    term: Option<tokio::signal::unix::Signal>,
}

impl Signals {
    fn new() -> Signals {
        #[cfg(unix)]
        let signals = Signals { term: tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok() };
        #[cfg(not(unix))]
        let signals = Signals {};
        signals
    }

    async fn next(&mut self) {
        #[cfg(unix)]
        let term = async {
            match self.term.as_mut() {
                Some(term) => {
                    term.recv().await;
                }
                None => std::future::pending().await,
            }
        };
        #[cfg(not(unix))]
        let term = std::future::pending::<()>();
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term => {}
        }
    }
}

/// Bind `addr`.
pub async fn bind(addr: SocketAddr) -> Result<tokio::net::TcpListener, StartError> {
    tokio::net::TcpListener::bind(addr).await.map_err(|source| StartError::Listen { addr, source })
}

/// Serve `router` on `listener` until shutdown; in-flight requests finish. Every error is
/// answered in the one JSON envelope (see [`enveloped_errors`]).
pub async fn serve(listener: tokio::net::TcpListener, router: Router, shutdown: Shutdown) -> std::io::Result<()> {
    let router = router.layer(axum::middleware::from_fn(enveloped_errors));
    axum::serve(listener, router).with_graceful_shutdown(shutdown.wait()).await
}

/// Longest request target (path and query) served; a longer one gets a 414 in the envelope
/// here, rather than whatever the HTTP layer would answer for it.
pub const MAX_URI_LENGTH: usize = 8 * 1024;

/// The error answers axum makes itself (an unknown route, a method a route does not take, a
/// path id, query string or body its extractors refuse) come as plain text or with no body;
/// they are rewritten into the `{"error": {"code", "message"}}` envelope every service's own
/// errors use, with the status and headers (such as `Allow`) kept.
async fn enveloped_errors(request: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let target = request.uri().path_and_query().map_or(0, |p| p.as_str().len());
    if target > MAX_URI_LENGTH {
        let message = format!("the request target is {target} bytes long; at most {MAX_URI_LENGTH} are served");
        return ApiError::new(StatusCode::URI_TOO_LONG, "uri_too_long", message).into_response();
    }
    let response = next.run(request).await;
    let status = response.status();
    let json = response
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !(status.is_client_error() || status.is_server_error()) || json {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, 64 * 1024).await.unwrap_or_default();
    let text = String::from_utf8_lossy(&text).trim().to_string();
    let message = if text.is_empty() { status.canonical_reason().unwrap_or("error").to_string() } else { text };
    let code = match status {
        StatusCode::BAD_REQUEST => "bad_request",
        StatusCode::NOT_FOUND => "not_found",
        StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
        StatusCode::PAYLOAD_TOO_LARGE => "payload_too_large",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
        StatusCode::UNPROCESSABLE_ENTITY => "unprocessable",
        s if s.is_server_error() => "internal",
        _ => "request_refused",
    };
    let enveloped = ApiError::new(status, code, message).into_response();
    parts.headers.remove(axum::http::header::CONTENT_LENGTH);
    parts.headers.extend(enveloped.headers().clone());
    Response::from_parts(parts, enveloped.into_body())
}

/// Serve a service's router together with the ops endpoints until shutdown.
pub async fn serve_with_ops(listener: tokio::net::TcpListener, app: Router, store: Store, metrics: Arc<Metrics>, shutdown: Shutdown) {
    let router = app.merge(ops_router(store, metrics, shutdown.clone()));
    if let Err(error) = serve(listener, router, shutdown).await {
        tracing::error!(%error, "server failed");
    }
}
