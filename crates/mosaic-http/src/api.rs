//! `/api/v1/...`: read-only views for operators (more arrive with the engine).
//!
//! With `MOSAIC_API_TOKEN` set, every call needs `Authorization: Bearer <token>`; without it,
//! only clients on loopback are answered, so a fresh install never exposes its data.

use std::net::SocketAddr;

use axum::Json;
use axum::extract::{ConnectInfo, Path, Query, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use mosaic_domain::{IssueRef, RepoName};
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
) -> Result<Response, ApiError> {
    match state.api_token() {
        Some(expected) => {
            let presented = request
                .headers()
                .get(http::header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "))
                .map(str::trim);
            let Some(presented) = presented else {
                return Err(ApiError::Unauthorized(
                    "missing `Authorization: Bearer <token>` header".to_owned(),
                ));
            };
            if !bool::from(
                presented
                    .as_bytes()
                    .ct_eq(expected.expose_secret().as_bytes()),
            ) {
                return Err(ApiError::Unauthorized("invalid API token".to_owned()));
            }
        }
        None => {
            let peer = request
                .extensions()
                .get::<ConnectInfo<SocketAddr>>()
                .map(|ConnectInfo(addr)| addr.ip());
            if !peer.is_some_and(|ip| ip.is_loopback()) {
                return Err(ApiError::Forbidden(
                    "the API answers only loopback clients unless MOSAIC_API_TOKEN is set"
                        .to_owned(),
                ));
            }
        }
    }
    Ok(next.run(request).await)
}

#[derive(Debug, Deserialize)]
pub(crate) struct LimitQuery {
    limit: Option<u32>,
}

/// `GET /api/v1/deliveries?limit=N`: recent deliveries and their status (no bodies).
pub(crate) async fn deliveries(
    State(state): State<AppState>,
    Query(query): Query<LimitQuery>,
) -> Result<Json<Value>, ApiError> {
    let store = state.store()?;
    let limit = query.limit.unwrap_or(50).clamp(1, 1000);
    let rows = store
        .recent_deliveries(limit)
        .await
        .map_err(|err| ApiError::Internal(err.to_string()))?;
    let counts = store
        .delivery_counts()
        .await
        .map_err(|err| ApiError::Internal(err.to_string()))?;
    Ok(Json(json!({ "deliveries": rows, "counts": counts })))
}

/// `GET /api/v1/issues/{owner}/{repo}/{number}`: what the coordinator knows of one issue.
pub(crate) async fn issue(
    State(state): State<AppState>,
    Path((owner, repo, number)): Path<(String, String, String)>,
) -> Result<Json<Value>, ApiError> {
    let repository =
        RepoName::new(&owner, &repo).map_err(|err| ApiError::BadRequest(err.to_string()))?;
    let number: u64 = number
        .parse()
        .ok()
        .filter(|n| *n > 0)
        .ok_or_else(|| ApiError::BadRequest(format!("`{number}` is not an issue number")))?;
    let issue = IssueRef::new(repository, number);
    let snapshot = state
        .store()?
        .get_issue_snapshot(&issue)
        .await
        .map_err(|err| ApiError::Internal(err.to_string()))?
        .ok_or_else(|| {
            ApiError::NotFound(format!("issue {issue} is not known to the coordinator"))
        })?;
    Ok(Json(
        json!({ "issue": issue.to_string(), "snapshot": snapshot }),
    ))
}
