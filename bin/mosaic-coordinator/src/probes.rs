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
