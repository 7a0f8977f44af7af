//! `GET /api/v1/retention`: what the coordinator keeps (delivery bodies, session logs, work
//! directories) and what
//! its retention runs removed. The runner of retention (the binary) fills it in.

use std::sync::{Arc, PoisonError, RwLock};

use axum::Json;
use axum::extract::State;
use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::error::ApiError;
use crate::server::AppState;

pub use mosaic_domain::Volume;

/// The latest retention run and what is kept.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RetentionStatus {
    /// Delivery bodies still stored (compressed size).
    pub delivery_bodies: Volume,
    pub session_logs: Volume,
    /// Git worktrees and the runner's per-issue directories.
    pub work_dirs: Volume,
    /// Removed since the coordinator started.
    pub removed_delivery_bodies: Volume,
    pub removed_session_logs: Volume,
    pub removed_work_dirs: Volume,
    pub keep_delivery_bodies_days: u32,
    pub keep_session_logs_days: u32,
    pub keep_work_dirs_days: u32,
    pub last_run_at: Option<DateTime<Utc>>,
    pub last_error: Option<String>,
}

/// Shared between the retention task (writes) and the API (reads).
pub type SharedRetention = Arc<RwLock<RetentionStatus>>;

pub(crate) async fn retention(
    State(state): State<AppState>,
) -> Result<Json<RetentionStatus>, ApiError> {
    let shared = state
        .retention()
        .ok_or_else(|| ApiError::NotFound("retention is not running".to_owned()))?;
    let status = shared
        .read()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    Ok(Json(status))
}
