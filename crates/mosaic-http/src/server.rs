//! The router, its shared state and the server loop.

use std::future::Future;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use http::{HeaderValue, StatusCode};
use mosaic_engine::engine::Engine;
use mosaic_security::{Secret, WebhookVerifier};
use mosaic_store::Store;
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tower_http::timeout::TimeoutLayer;
use tracing::Instrument;

use crate::config::HttpConfig;
use crate::connections::ConnectionLimits;
use crate::error::ApiError;
use crate::health::{self, HealthProbe};
use crate::metrics::Metrics;
use crate::retention::SharedRetention;
use crate::{api, webhook};

/// What every handler can reach. Cheap to clone: everything shared sits behind `Arc`s.
#[derive(Clone)]
pub struct AppState {
    started: Instant,
    version: &'static str,
    probes: Arc<Vec<Arc<dyn HealthProbe>>>,
    request_timeout: Duration,
    intake: Option<Arc<Intake>>,
    store: Option<Arc<dyn Store>>,
    api_token: Option<Arc<Secret>>,
    metrics: Arc<Metrics>,
    /// Filled once the engine runs (it may wait for Gitea after the server is up).
    engine: Arc<OnceLock<Engine>>,
    retention: Option<SharedRetention>,
}

/// What the webhook endpoint needs to accept deliveries.
pub struct Intake {
    pub verifier: WebhookVerifier,
    pub store: Arc<dyn Store>,
    pub max_body_bytes: usize,
    /// Woken after each accepted delivery, so the inbox worker need not poll.
    pub notify: Arc<Notify>,
}

impl std::fmt::Debug for Intake {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Intake")
            .field("max_body_bytes", &self.max_body_bytes)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState")
            .field("version", &self.version)
            .field(
                "probes",
                &self.probes.iter().map(|p| p.name()).collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

impl AppState {
    /// `version` is what `/health` reports, normally the binary's `CARGO_PKG_VERSION`.
    pub fn new(version: &'static str) -> Self {
        Self {
            started: Instant::now(),
            version,
            probes: Arc::new(Vec::new()),
            request_timeout: Duration::from_secs(30),
            intake: None,
            store: None,
            api_token: None,
            metrics: Metrics::new(|_| {}),
            engine: Arc::new(OnceLock::new()),
            retention: None,
        }
    }

    /// Shows what retention keeps and removed at `/api/v1/retention`.
    #[must_use]
    pub fn with_retention(mut self, retention: SharedRetention) -> Self {
        self.retention = Some(retention);
        self
    }

    pub(crate) fn retention(&self) -> Option<&SharedRetention> {
        self.retention.as_ref()
    }

    /// Adds a component to `/health`.
    #[must_use]
    pub fn with_probe(mut self, probe: Arc<dyn HealthProbe>) -> Self {
        Arc::make_mut(&mut self.probes).push(probe);
        self
    }

    #[must_use]
    pub fn with_request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// Enables `POST /webhook/gitea` and the store-backed API.
    #[must_use]
    pub fn with_intake(mut self, intake: Intake) -> Self {
        self.store = Some(Arc::clone(&intake.store));
        self.intake = Some(Arc::new(intake));
        self
    }

    /// Requires `Authorization: Bearer <token>` on `/api/*` (otherwise loopback only).
    #[must_use]
    pub fn with_api_token(mut self, token: Option<Secret>) -> Self {
        self.api_token = token.map(Arc::new);
        self
    }

    #[must_use]
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = metrics;
        self
    }

    /// Enables the engine's API (queue, sessions, rotations, requeue, cancel).
    #[must_use]
    pub fn with_engine(self, engine: Engine) -> Self {
        let _ = self.engine.set(engine);
        self
    }

    /// Where the engine goes when it starts after the server (set it once; later sets are
    /// ignored).
    pub fn engine_slot(&self) -> Arc<OnceLock<Engine>> {
        Arc::clone(&self.engine)
    }

    pub(crate) fn engine(&self) -> Option<&Engine> {
        self.engine.get()
    }

    pub(crate) fn require_engine(&self) -> Result<&Engine, ApiError> {
        self.engine.get().ok_or_else(|| {
            ApiError::ServiceUnavailable(
                "the engine is not running yet (waiting for the Gitea identity)".to_owned(),
            )
        })
    }

    pub(crate) fn intake(&self) -> Result<&Intake, ApiError> {
        self.intake.as_deref().ok_or_else(|| {
            ApiError::ServiceUnavailable("webhook intake is not configured".to_owned())
        })
    }

    pub(crate) fn store(&self) -> Result<&Arc<dyn Store>, ApiError> {
        self.store
            .as_ref()
            .ok_or_else(|| ApiError::ServiceUnavailable("no store is configured".to_owned()))
    }

    pub(crate) fn api_token(&self) -> Option<&Secret> {
        self.api_token.as_deref()
    }

    pub(crate) fn metrics(&self) -> &Metrics {
        &self.metrics
    }
}

/// The whole application: every route, the JSON 404/405 answers, request ids and timeouts.
pub fn router(state: AppState) -> Router {
    let timeout = state.request_timeout;
    Router::new()
        .route("/health", get(health_handler))
        .route("/metrics", get(metrics_handler))
        .route("/webhook/gitea", post(webhook::receive))
        .nest("/api/v1", api_routes(state.clone()))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            timeout,
        ))
        .layer(middleware::from_fn(request_context))
}

async fn health_handler(State(state): State<AppState>) -> Response {
    let report = health::build_report(&state.probes, state.version, state.started.elapsed()).await;
    let status = if report.is_serviceable() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(report)).into_response()
}

fn api_routes(state: AppState) -> Router<AppState> {
    Router::new()
        .route("/deliveries", get(api::deliveries))
        .route("/issues/{owner}/{repo}/{number}", get(api::issue))
        .route(
            "/issues/{owner}/{repo}/{number}/requeue",
            post(api::requeue),
        )
        .route("/issues/{owner}/{repo}/{number}/cancel", post(api::cancel))
        .route("/queue", get(api::queue))
        .route("/sessions", get(api::sessions))
        .route("/rotations", get(api::rotations))
        .route("/retention", get(crate::retention::retention))
        .route_layer(middleware::from_fn_with_state(state, api::authorize))
}

async fn metrics_handler(State(state): State<AppState>) -> Response {
    match state.metrics.encode() {
        Ok(text) => (
            [(
                http::header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        Err(err) => ApiError::Internal(format!("cannot encode metrics: {err}")).into_response(),
    }
}

async fn not_found(request: Request) -> ApiError {
    ApiError::NotFound(format!("no route for {}", request.uri().path()))
}

async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}

const REQUEST_ID: &str = "x-request-id";

/// A client's request id is kept only if it is short and plain, so it cannot flood or forge log
/// lines; otherwise a fresh one is made.
fn usable_request_id(value: &HeaderValue) -> Option<String> {
    let text = value.to_str().ok()?;
    let plain = !text.is_empty()
        && text.len() <= 128
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'));
    plain.then(|| text.to_owned())
}

/// Gives every request an id (echoed in `x-request-id`) and a span that carries it into every
/// log line written while the request is handled.
async fn request_context(mut request: Request, next: Next) -> Response {
    let id = request
        .headers()
        .get(REQUEST_ID)
        .and_then(usable_request_id)
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    let header = HeaderValue::from_str(&id).unwrap_or_else(|_| HeaderValue::from_static("invalid"));
    request.headers_mut().insert(REQUEST_ID, header.clone());

    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let span = tracing::info_span!("request", request_id = %id, %method, %path);
    let started = Instant::now();
    let mut response = next.run(request).instrument(span.clone()).await;
    span.in_scope(|| {
        tracing::info!(
            status = response.status().as_u16(),
            latency_ms = started.elapsed().as_secs_f64() * 1000.0,
            "request finished"
        );
    });
    response.headers_mut().insert(REQUEST_ID, header);
    response
}

/// Serves `app` on `listener` until `shutdown` completes, then stops accepting and gives
/// in-flight requests up to `shutdown_grace_secs` to finish. The `[server]` settings bound the
/// connections: at most `max_connections` open (the one idle the longest makes room for a new
/// one), `header_read_timeout_secs` to send a request head, `idle_timeout_secs` between requests.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
    config: &HttpConfig,
) -> std::io::Result<()> {
    let limits = ConnectionLimits {
        header_read_timeout: Duration::from_secs(config.header_read_timeout_secs),
        idle_timeout: Duration::from_secs(config.idle_timeout_secs),
        max_connections: config.max_connections,
        shutdown_grace: Duration::from_secs(config.shutdown_grace_secs),
    };
    serve_with_limits(listener, app, shutdown, limits).await
}

/// [`serve`] with limits given directly (tests use sub-second timeouts).
pub async fn serve_with_limits(
    listener: TcpListener,
    app: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
    limits: ConnectionLimits,
) -> std::io::Result<()> {
    crate::connections::serve(listener, app, shutdown, limits).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::health::ComponentHealth;
    use async_trait::async_trait;
    use axum::body::Body;
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    struct FixedProbe {
        name: &'static str,
        critical: bool,
        health: ComponentHealth,
    }

    #[async_trait]
    impl HealthProbe for FixedProbe {
        fn name(&self) -> &str {
            self.name
        }
        fn critical(&self) -> bool {
            self.critical
        }
        async fn check(&self) -> ComponentHealth {
            self.health.clone()
        }
    }

    fn probe(name: &'static str, critical: bool, health: ComponentHealth) -> Arc<dyn HealthProbe> {
        Arc::new(FixedProbe {
            name,
            critical,
            health,
        })
    }

    async fn send(
        app: Router,
        request: http::Request<Body>,
    ) -> (StatusCode, http::HeaderMap, serde_json::Value) {
        let response = app.oneshot(request).await.unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        let json = serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
        (status, headers, json)
    }

    fn get_req(path: &str) -> http::Request<Body> {
        http::Request::get(path).body(Body::empty()).unwrap()
    }

    #[tokio::test]
    async fn health_is_healthy_with_version_and_uptime() {
        let app = router(AppState::new("1.2.3"));
        let (status, _, body) = send(app, get_req("/health")).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body["status"], "healthy");
        assert_eq!(body["version"], "1.2.3");
        assert!(body["uptime_seconds"].is_u64());
    }

    #[tokio::test]
    async fn a_non_critical_component_down_degrades_but_stays_200() {
        let state = AppState::new("1")
            .with_probe(probe("store", true, ComponentHealth::up()))
            .with_probe(probe(
                "gitea",
                false,
                ComponentHealth::down("connection refused"),
            ));
        let (status, _, body) = send(router(state), get_req("/health")).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body["status"], "degraded");
        assert_eq!(body["components"]["gitea"]["status"], "down");
        assert_eq!(body["components"]["gitea"]["detail"], "connection refused");
        assert_eq!(body["components"]["store"]["status"], "up");
    }

    #[tokio::test]
    async fn a_critical_component_down_is_503() {
        let state = AppState::new("1")
            .with_probe(probe("store", true, ComponentHealth::down("disk full")))
            .with_probe(probe("gitea", false, ComponentHealth::disabled("no token")));
        let (status, _, body) = send(router(state), get_req("/health")).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(body["status"], "unhealthy");
        assert_eq!(body["components"]["gitea"]["status"], "disabled");
    }

    #[tokio::test]
    async fn a_disabled_component_keeps_the_coordinator_healthy() {
        let state = AppState::new("1").with_probe(probe(
            "gitea",
            false,
            ComponentHealth::disabled("no token"),
        ));
        let (status, _, body) = send(router(state), get_req("/health")).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body["status"], "healthy");
    }

    #[tokio::test]
    async fn unknown_routes_are_json_404() {
        let (status, _, body) = send(router(AppState::new("1")), get_req("/nope")).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_eq!(body["error"], "no route for /nope");
    }

    #[tokio::test]
    async fn wrong_method_is_json_405() {
        let request = http::Request::post("/health").body(Body::empty()).unwrap();
        let (status, _, body) = send(router(AppState::new("1")), request).await;
        assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(body["error"], "method not allowed");
    }

    #[tokio::test]
    async fn request_ids_are_generated_or_echoed() {
        let (_, headers, _) = send(router(AppState::new("1")), get_req("/health")).await;
        let generated = headers[REQUEST_ID].to_str().unwrap();
        assert_eq!(generated.len(), 36, "a UUID: {generated}");

        let request = http::Request::get("/health")
            .header(REQUEST_ID, "abc-123")
            .body(Body::empty())
            .unwrap();
        let (_, headers, _) = send(router(AppState::new("1")), request).await;
        assert_eq!(headers[REQUEST_ID], "abc-123");

        let request = http::Request::get("/nope")
            .header(REQUEST_ID, "evil\tid with spaces")
            .body(Body::empty())
            .unwrap();
        let (_, headers, _) = send(router(AppState::new("1")), request).await;
        assert_ne!(headers[REQUEST_ID], "evil\tid with spaces");
    }
}
