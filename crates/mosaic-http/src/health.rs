//! `/health`: whether the coordinator can accept webhooks, and how each component is doing.
//!
//! Only a critical component (the store) being down makes the answer 503; anything else
//! (Gitea, the LLM) degrades it but keeps 200, so an orchestrator never restarts a healthy
//! coordinator because Gitea is down.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::Serialize;

/// How one component is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ComponentStatus {
    Up,
    Down,
    /// Not configured on purpose (e.g. no Gitea token): not an error, but worth showing.
    Disabled,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ComponentHealth {
    pub status: ComponentStatus,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

impl ComponentHealth {
    pub fn up() -> Self {
        Self {
            status: ComponentStatus::Up,
            detail: None,
        }
    }

    pub fn down(detail: impl Into<String>) -> Self {
        Self {
            status: ComponentStatus::Down,
            detail: Some(detail.into()),
        }
    }

    pub fn disabled(detail: impl Into<String>) -> Self {
        Self {
            status: ComponentStatus::Disabled,
            detail: Some(detail.into()),
        }
    }

    #[must_use]
    pub fn with_detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = Some(detail.into());
        self
    }
}

/// Something `/health` asks about.
#[async_trait]
pub trait HealthProbe: Send + Sync {
    /// The component's name in the report, e.g. `store`.
    fn name(&self) -> &str;
    /// Critical components are needed to accept webhooks: when one is down, `/health` is 503.
    fn critical(&self) -> bool;
    async fn check(&self) -> ComponentHealth;
}

/// The body of `/health`.
#[derive(Debug, Clone, Serialize)]
pub struct HealthReport {
    pub status: &'static str,
    pub version: &'static str,
    pub uptime_seconds: u64,
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub components: std::collections::BTreeMap<String, ComponentHealth>,
}

impl HealthReport {
    /// Whether the coordinator can accept webhooks.
    pub fn is_serviceable(&self) -> bool {
        self.status != "unhealthy"
    }
}

/// A probe that takes longer than this is reported down rather than stalling `/health`.
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

pub(crate) async fn build_report(
    probes: &[Arc<dyn HealthProbe>],
    version: &'static str,
    uptime: Duration,
) -> HealthReport {
    let results = futures::future::join_all(probes.iter().map(|probe| async move {
        let health = tokio::time::timeout(PROBE_TIMEOUT, probe.check())
            .await
            .unwrap_or_else(|_| ComponentHealth::down("health check timed out"));
        (probe.name().to_owned(), probe.critical(), health)
    }))
    .await;

    let mut status = "healthy";
    let mut components = std::collections::BTreeMap::new();
    for (name, critical, health) in results {
        if health.status == ComponentStatus::Down {
            if critical {
                status = "unhealthy";
            } else if status == "healthy" {
                status = "degraded";
            }
        }
        components.insert(name, health);
    }
    HealthReport {
        status,
        version,
        uptime_seconds: uptime.as_secs(),
        components,
    }
}
