//! `/api/v1/...`: read-only views for operators (more arrive with the engine).
//!
//! With `MOSAIC_API_TOKEN` set, every call needs `Authorization: Bearer <token>`; without it,
//! only clients on loopback are answered, so a fresh install never exposes its data.

use std::net::{IpAddr, SocketAddr};

use axum::Json;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{ConnectInfo, FromRequestParts, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use mosaic_domain::issue::MAX_ISSUE_NUMBER;
use mosaic_domain::{IssueRef, RepoName};
use mosaic_engine::engine::EngineError;
use serde::Deserialize;
use serde_json::{Value, json};
use subtle::ConstantTimeEq;

use crate::error::ApiError;
use crate::server::AppState;

/// Checks the bearer token, or that the client is on loopback when no token is configured.
pub(crate) async fn authorize(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    match state.api_token() {
        Some(expected) => {
            let presented = request
                .headers()
                .get(http::header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(bearer_token);
            let Some(presented) = presented else {
                return bearer_challenge(
                    "missing `Authorization: Bearer <token>` header",
                    BEARER_CHALLENGE,
                );
            };
            if !bool::from(
                presented
                    .as_bytes()
                    .ct_eq(expected.expose_secret().as_bytes()),
            ) {
                return bearer_challenge("invalid API token", BEARER_INVALID_TOKEN);
            }
        }
        None => {
            let peer = request
                .extensions()
                .get::<ConnectInfo<SocketAddr>>()
                .map(|ConnectInfo(addr)| addr.ip());
            if !peer.is_some_and(is_loopback) {
                return ApiError::Forbidden(
                    "the API answers only loopback clients unless MOSAIC_API_TOKEN is set"
                        .to_owned(),
                )
                .into_response();
            }
        }
    }
    next.run(request).await
}

/// The challenge a 401 carries (RFC 6750), so clients know which scheme to use.
const BEARER_CHALLENGE: &str = "Bearer realm=\"mosaic\"";
const BEARER_INVALID_TOKEN: &str = "Bearer realm=\"mosaic\", error=\"invalid_token\"";

fn bearer_challenge(message: &str, challenge: &'static str) -> Response {
    let mut response = ApiError::Unauthorized(message.to_owned()).into_response();
    response.headers_mut().insert(
        http::header::WWW_AUTHENTICATE,
        http::HeaderValue::from_static(challenge),
    );
    response
}

/// The token of an `Authorization: Bearer <token>` value; the scheme name is
/// case-insensitive (RFC 9110, section 11.1).
fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim_start().split_once([' ', '\t'])?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// Loopback, including an IPv4 loopback client seen on an IPv6 socket (`::ffff:127.0.0.1`,
/// which a server bound to `::` reports).
pub fn is_loopback(ip: IpAddr) -> bool {
    ip.to_canonical().is_loopback()
}

/// axum's `Query`, answering a bad query string with this API's JSON error, not plain text.
#[derive(Debug, FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(ApiError))]
pub(crate) struct Query<T>(pub T);

/// axum's `Path`, answering a bad path segment (e.g. invalid UTF-8) with a JSON error.
#[derive(Debug, FromRequestParts)]
#[from_request(via(axum::extract::Path), rejection(ApiError))]
pub(crate) struct Path<T>(pub T);

impl From<QueryRejection> for ApiError {
    fn from(rejection: QueryRejection) -> Self {
        Self::BadRequest(rejection.body_text())
    }
}

impl From<PathRejection> for ApiError {
    fn from(rejection: PathRejection) -> Self {
        if rejection.status().is_server_error() {
            Self::Internal(rejection.body_text())
        } else {
            Self::BadRequest(rejection.body_text())
        }
    }
}

#[derive(Debug, Deserialize)]
pub(crate) struct LimitQuery {
    limit: Option<u32>,
    /// The cursor: only entries older than this row id (the `next_before` of the last page).
    before: Option<i64>,
}

/// Rows a list answers at most, and when none is asked for.
const MAX_LIMIT: u32 = 1_000;
const DEFAULT_LIMIT: u32 = 50;

impl LimitQuery {
    fn limit(&self) -> (u32, Option<String>) {
        limit_in_force(self.limit)
    }
}

/// The query of `/api/v1/queue`: its cursor names the last issue seen (`owner/repo#n`, the
/// `#` written `%23`); the page starts after it.
#[derive(Debug, Deserialize)]
pub(crate) struct QueueQuery {
    limit: Option<u32>,
    before: Option<String>,
}

/// The limit in force, and a note when the one asked for was clamped.
fn limit_in_force(asked: Option<u32>) -> (u32, Option<String>) {
    let asked = asked.unwrap_or(DEFAULT_LIMIT);
    let limit = asked.clamp(1, MAX_LIMIT);
    let note =
        (limit != asked).then(|| format!("limit {asked} is outside 1..={MAX_LIMIT}; {limit} used"));
    (limit, note)
}

/// `GET /api/v1/deliveries?limit=N&before=ID`: deliveries, newest first, and their status (no
/// bodies). `next_before` is the cursor of the next (older) page, absent on the last one.
pub(crate) async fn deliveries(
    State(state): State<AppState>,
    Query(query): Query<LimitQuery>,
) -> Result<Json<Value>, ApiError> {
    let store = state.store()?;
    let (limit, clamped) = query.limit();
    // Counts first: a delivery only moves forward (pending → processed), so rows read after
    // the counts are never behind them — "0 pending" never comes with a pending row.
    let counts = store
        .delivery_counts()
        .await
        .map_err(|err| ApiError::Internal(err.to_string()))?;
    let rows = store
        .recent_deliveries(query.before, limit)
        .await
        .map_err(|err| ApiError::Internal(err.to_string()))?;
    let next_before = (rows.len() == limit as usize)
        .then(|| rows.last().map(|row| row.id))
        .flatten();
    let mut answer = json!({ "deliveries": rows, "counts": counts, "limit": limit });
    if let Some(next) = next_before {
        answer["next_before"] = json!(next);
    }
    if let Some(note) = clamped {
        answer["limit_clamped"] = json!(note);
    }
    Ok(Json(answer))
}

fn issue_ref(owner: &str, repo: &str, number: &str) -> Result<IssueRef, ApiError> {
    let repository =
        RepoName::new(owner, repo).map_err(|err| ApiError::BadRequest(err.to_string()))?;
    let number: u64 = number
        .parse()
        .ok()
        .filter(|n| (1..=MAX_ISSUE_NUMBER).contains(n))
        .ok_or_else(|| ApiError::BadRequest(format!("`{number}` is not an issue number")))?;
    Ok(IssueRef::new(repository, number))
}

fn engine_error(err: EngineError) -> ApiError {
    match err {
        EngineError::NotFound(issue) => {
            ApiError::NotFound(format!("issue {issue} is not coordinated"))
        }
        err @ EngineError::InvalidTransition { .. } => ApiError::Conflict(err.to_string()),
        other => ApiError::Internal(other.to_string()),
    }
}

/// `GET /api/v1/issues/{owner}/{repo}/{number}`: what the coordinator knows of one issue —
/// metadata, state, history, sessions and rotations when it is coordinated, else the tracker's
/// view recorded from its deliveries.
pub(crate) async fn issue(
    State(state): State<AppState>,
    Path((owner, repo, number)): Path<(String, String, String)>,
) -> Result<Json<Value>, ApiError> {
    let issue = issue_ref(&owner, &repo, &number)?;
    if let Some(engine) = state.engine() {
        match engine.issue_detail(&issue).await {
            Ok(detail) => {
                return Ok(Json(
                    json!({ "issue": issue.to_string(), "coordinated": true, "detail": detail }),
                ));
            }
            Err(EngineError::NotFound(_)) => {}
            Err(err) => return Err(engine_error(err)),
        }
    } else if let Some(detail) =
        mosaic_engine::engine::stored_issue_detail(state.store()?.as_ref(), &issue)
            .await
            .map_err(engine_error)?
    {
        // A coordinator that does not lead answers from the shared store; the graph and the
        // live session are the leader's.
        return Ok(Json(json!({
            "issue": issue.to_string(),
            "coordinated": true,
            "detail": detail,
            "partial": "answered from the store by a coordinator that does not lead: blockers, dependents, the live session and the worktree's size are known to the leader",
        })));
    }
    let snapshot = state
        .store()?
        .get_issue_snapshot(&issue)
        .await
        .map_err(|err| ApiError::Internal(err.to_string()))?
        .ok_or_else(|| {
            ApiError::NotFound(format!("issue {issue} is not known to the coordinator"))
        })?;
    Ok(Json(
        json!({ "issue": issue.to_string(), "coordinated": false, "snapshot": snapshot }),
    ))
}

/// `GET /api/v1/queue?limit=N&before=ISSUE`: unfinished issues in order (in progress, ready in
/// dispatch order, blocked, pending) with agent, estimate and open blockers. `next_before` (the
/// page's last issue) is the cursor of the next page, absent on the last one. The queue is live:
/// an issue that moved since the last page is shown where it is now, and a cursor naming an
/// issue no longer queued is refused (400), as there is no place to resume from.
pub(crate) async fn queue(
    State(state): State<AppState>,
    Query(query): Query<QueueQuery>,
) -> Result<Json<Value>, ApiError> {
    let (limit, clamped) = limit_in_force(query.limit);
    let after = query.before.as_deref().map(queue_cursor).transpose()?;
    let (queue, partial) = match state.engine() {
        Some(engine) => (engine.queue().await, false),
        // A coordinator that does not lead answers from the shared store.
        None => (
            mosaic_engine::engine::stored_queue(state.store()?.as_ref())
                .await
                .map_err(engine_error)?,
            true,
        ),
    };
    let start = match &after {
        None => 0,
        Some(cursor) => queue
            .iter()
            .position(|item| &item.issue == cursor)
            .map(|at| at + 1)
            .ok_or_else(|| {
                ApiError::BadRequest(format!(
                    "`before`: {cursor} is not queued (any more): list again without `before`"
                ))
            })?,
    };
    let page = queue.get(start..).unwrap_or_default();
    let page = page.get(..limit as usize).unwrap_or(page);
    let next_before = (start + page.len() < queue.len())
        .then(|| page.last().map(|item| item.issue.to_string()))
        .flatten();
    let mut answer = json!({ "queue": page, "total": queue.len(), "limit": limit });
    if partial {
        answer["partial"] = json!(STANDBY_QUEUE);
    }
    if let Some(next) = next_before {
        answer["next_before"] = json!(next);
    }
    if let Some(note) = clamped {
        answer["limit_clamped"] = json!(note);
    }
    Ok(Json(answer))
}

/// The issue a queue cursor names; `#` must reach the server percent-encoded.
fn queue_cursor(text: &str) -> Result<IssueRef, ApiError> {
    text.parse().map_err(|err| {
        let hint = if text.contains('#') {
            ""
        } else {
            " (an unencoded `#` ends the URL: write it `%23`)"
        };
        ApiError::BadRequest(format!(
            "`before`: `{text}` is not an issue `owner/repo#number`{hint}: {err}"
        ))
    })
}

/// `GET /api/v1/sessions`: live sessions with agent, issue, context use and start time.
pub(crate) async fn sessions(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    if let Some(engine) = state.engine() {
        return Ok(Json(json!({ "sessions": engine.live_sessions() })));
    }
    let sessions = mosaic_engine::engine::stored_sessions(state.store()?.as_ref())
        .await
        .map_err(engine_error)?;
    Ok(Json(
        json!({ "sessions": sessions, "partial": STANDBY_SESSIONS }),
    ))
}

/// What a coordinator without a running engine cannot say about the queue and the sessions.
const STANDBY_QUEUE: &str = "answered from the store, without a running engine here (this coordinator stands by, or waits for the Gitea identity): blockers and the exact dispatch order are the leader's";
const STANDBY_SESSIONS: &str = "answered from the store, without a running engine here (this coordinator stands by, or waits for the Gitea identity): the live sessions' context use, compactions and rotations are the leader's";

/// `GET /api/v1/rotations?limit=N&before=ID`: recorded session rotations, newest first;
/// `next_before` (the last one's `id`) is the cursor of the next page.
pub(crate) async fn rotations(
    State(state): State<AppState>,
    Query(query): Query<LimitQuery>,
) -> Result<Json<Value>, ApiError> {
    let (limit, clamped) = query.limit();
    // Stored: any coordinator sharing the store answers, leading or not.
    let rotations = state
        .store()?
        .recent_rotations(query.before, limit)
        .await
        .map_err(|err| ApiError::Internal(err.to_string()))?;
    let next_before = (rotations.len() == limit as usize)
        .then(|| rotations.last().map(|rotation| rotation.id))
        .flatten();
    let mut answer = json!({ "rotations": rotations, "limit": limit });
    if let Some(next) = next_before {
        answer["next_before"] = json!(next);
    }
    if let Some(note) = clamped {
        answer["limit_clamped"] = json!(note);
    }
    Ok(Json(answer))
}

/// `POST /api/v1/issues/{owner}/{repo}/{number}/requeue`: back into the queue.
pub(crate) async fn requeue(
    State(state): State<AppState>,
    Path((owner, repo, number)): Path<(String, String, String)>,
) -> Result<Json<Value>, ApiError> {
    let issue = issue_ref(&owner, &repo, &number)?;
    let engine = state.require_engine()?;
    let new_state = engine.requeue(&issue).await.map_err(engine_error)?;
    tracing::info!(%issue, state = %new_state, "requeued through the API");
    Ok(Json(
        json!({ "issue": issue.to_string(), "state": new_state }),
    ))
}

/// `POST /api/v1/issues/{owner}/{repo}/{number}/cancel`: stop coordinating it (a running
/// session is closed).
pub(crate) async fn cancel(
    State(state): State<AppState>,
    Path((owner, repo, number)): Path<(String, String, String)>,
) -> Result<Json<Value>, ApiError> {
    let issue = issue_ref(&owner, &repo, &number)?;
    let engine = state.require_engine()?;
    engine.cancel(&issue).await.map_err(engine_error)?;
    tracing::info!(%issue, "cancelled through the API");
    Ok(Json(
        json!({ "issue": issue.to_string(), "state": "cancelled" }),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bearer_scheme_is_case_insensitive() {
        assert_eq!(bearer_token("Bearer abc"), Some("abc"));
        assert_eq!(bearer_token("bearer abc"), Some("abc"));
        assert_eq!(bearer_token("BEARER  abc "), Some("abc"));
        assert_eq!(bearer_token("Bearer\tabc"), Some("abc"));
        assert_eq!(bearer_token("Basic abc"), None);
        assert_eq!(bearer_token("Bearer"), None);
        assert_eq!(bearer_token("Bearer   "), None);
        assert_eq!(bearer_token("Bearerabc"), None);
    }

    #[test]
    fn ipv4_mapped_loopback_is_loopback() {
        let parse = |text: &str| text.parse::<IpAddr>().unwrap();
        assert!(is_loopback(parse("127.0.0.1")));
        assert!(is_loopback(parse("::1")));
        assert!(is_loopback(parse("::ffff:127.0.0.1")));
        assert!(is_loopback(parse("::ffff:127.1.2.3")));
        assert!(!is_loopback(parse("::ffff:10.0.0.1")));
        assert!(!is_loopback(parse("10.0.0.1")));
        assert!(!is_loopback(parse("2001:db8::1")));
    }
}
