//! The coordinator's HTTP surface (axum): webhook intake, health, metrics and the API.
//!
//! `router(state)` builds the whole application so tests can drive it with
//! `tower::ServiceExt::oneshot`; `serve` runs it on a bound listener with graceful shutdown.

mod api;
mod config;
mod connections;
mod error;
mod health;
mod metrics;
mod retention;
mod server;
mod webhook;

pub use api::is_loopback;
pub use config::{ApiConfig, HttpConfig, Port, PortError, WebhookConfig};
pub use connections::ConnectionLimits;
pub use error::ApiError;
pub use health::{ComponentHealth, ComponentStatus, HealthProbe, HealthReport};
pub use metrics::Metrics;
pub use retention::{RetentionStatus, SharedRetention, Volume};
pub use server::{AppState, Intake, router, serve, serve_with_limits};
