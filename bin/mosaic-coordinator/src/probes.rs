//! `/health` components backed by the real adapters.

use std::sync::Arc;

use async_trait::async_trait;
use mosaic_http::{ComponentHealth, HealthProbe};
use mosaic_store::Store;

/// The store is critical: without it no delivery can be acknowledged.
#[derive(Debug)]
pub struct StoreProbe {
    pub store: Arc<dyn Store>,
}

#[async_trait]
impl HealthProbe for StoreProbe {
    fn name(&self) -> &str {
        "store"
    }

    fn critical(&self) -> bool {
        true
    }

    async fn check(&self) -> ComponentHealth {
        match self.store.health_check().await {
            Ok(()) => match self.store.outbox_backlog().await {
                Ok(backlog) if backlog.pending > 0 || backlog.failed > 0 => ComponentHealth::up()
                    .with_detail(format!(
                        "outbox: {} pending, {} failed",
                        backlog.pending, backlog.failed
                    )),
                _ => ComponentHealth::up(),
            },
            Err(err) => ComponentHealth::down(format!("cannot write: {err}")),
        }
    }
}

/// What the coordinator knows of its Gitea connection, shared with `/health`.
#[derive(Debug, Clone)]
pub enum GiteaStatus {
    /// Not configured on purpose: events are recorded, nothing is written to Gitea.
    Disabled(String),
    /// Gitea could not be reached (yet); retried in the background.
    Unreachable(String),
    /// Connected as this login.
    Connected(String),
}

/// Gitea is not needed to accept webhooks: down means degraded, never 503.
#[derive(Debug)]
pub struct GiteaProbe {
    pub status: Arc<std::sync::RwLock<GiteaStatus>>,
}

#[async_trait]
impl HealthProbe for GiteaProbe {
    fn name(&self) -> &str {
        "gitea"
    }

    fn critical(&self) -> bool {
        false
    }

    async fn check(&self) -> ComponentHealth {
        let status = self
            .status
            .read()
            .map(|status| status.clone())
            .unwrap_or_else(|poisoned| poisoned.into_inner().clone());
        match status {
            GiteaStatus::Disabled(why) => ComponentHealth::disabled(why),
            GiteaStatus::Unreachable(why) => ComponentHealth::down(why),
            GiteaStatus::Connected(login) => {
                ComponentHealth::up().with_detail(format!("as {login}"))
            }
        }
    }
}

/// The metadata parser: a rejected API key degrades the coordinator (the template parser takes
/// over), it never stops intake.
pub struct ParserProbe {
    pub parser: Arc<dyn mosaic_parser::IssueParser>,
}

impl std::fmt::Debug for ParserProbe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ParserProbe").finish_non_exhaustive()
    }
}

#[async_trait]
impl HealthProbe for ParserProbe {
    fn name(&self) -> &str {
        "parser"
    }

    fn critical(&self) -> bool {
        false
    }

    async fn check(&self) -> ComponentHealth {
        let health = self.parser.health();
        let what = match &health.model {
            Some(model) => format!("{} ({model})", health.provider),
            None => health.provider.clone(),
        };
        if health.auth_failed {
            ComponentHealth::down(format!(
                "{what}: the API key was rejected; using the template parser"
            ))
        } else if let Some(error) = &health.last_error {
            ComponentHealth::up().with_detail(format!("{what}; last error: {error}"))
        } else {
            ComponentHealth::up().with_detail(what)
        }
    }
}
