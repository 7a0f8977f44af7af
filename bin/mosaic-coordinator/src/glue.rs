//! Small adapters between crates that do not know each other.

use std::sync::Arc;

use async_trait::async_trait;
use mosaic_parser::{CacheError, ParseCache};
use mosaic_store::Store;

/// The parser's cache, persisted in the store: an unchanged issue is never sent to an LLM twice,
/// even across restarts.
#[derive(Debug)]
pub struct StoreParseCache {
    pub store: Arc<dyn Store>,
}

#[async_trait]
impl ParseCache for StoreParseCache {
    async fn get(&self, key: &str) -> Result<Option<String>, CacheError> {
        self.store.cache_get(key).await.map_err(CacheError::new)
    }

    async fn put(&self, key: &str, json: &str) -> Result<(), CacheError> {
        self.store
            .cache_put(key, json)
            .await
            .map_err(CacheError::new)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mosaic_store::StoreConfig;
    use mosaic_store_sqlite::SqliteStore;

    #[tokio::test]
    async fn the_cache_survives_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let config = StoreConfig::sqlite(dir.path().join("c.db"));
        {
            let cache = StoreParseCache {
                store: Arc::new(SqliteStore::open(&config).unwrap()),
            };
            assert_eq!(cache.get("k").await.unwrap(), None);
            cache.put("k", r#"{"a":1}"#).await.unwrap();
        }
        let cache = StoreParseCache {
            store: Arc::new(SqliteStore::open(&config).unwrap()),
        };
        assert_eq!(cache.get("k").await.unwrap().as_deref(), Some(r#"{"a":1}"#));
    }
}
