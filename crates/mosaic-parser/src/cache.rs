//! Validated model answers by content hash, so an unchanged issue is never sent to a model twice.

use std::collections::HashMap;
use std::sync::Mutex;

use async_trait::async_trait;
use sha2::{Digest, Sha256};

use crate::parser::ParseInput;

/// A cache backend failed; the parser logs it and carries on without the cache.
#[derive(Debug, thiserror::Error)]
#[error("parse cache: {0}")]
pub struct CacheError(#[source] pub Box<dyn std::error::Error + Send + Sync>);

impl CacheError {
    pub fn new(source: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        Self(source.into())
    }
}

/// Storage for validated metadata (JSON of `IssueMetadata`), keyed by [`cache_key`].
/// The store implements it persistently so the cache survives restarts.
#[cfg_attr(any(test, feature = "mock"), mockall::automock)]
#[async_trait]
pub trait ParseCache: Send + Sync {
    async fn get(&self, key: &str) -> Result<Option<String>, CacheError>;

    async fn put(&self, key: &str, json: &str) -> Result<(), CacheError>;
}

/// A process-local cache: for tests and for running without a store.
#[derive(Debug, Default)]
pub struct InMemoryParseCache {
    entries: Mutex<HashMap<String, String>>,
}

impl InMemoryParseCache {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, String>> {
        // A panic while holding this lock cannot leave the map half-updated (single inserts).
        self.entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[async_trait]
impl ParseCache for InMemoryParseCache {
    async fn get(&self, key: &str) -> Result<Option<String>, CacheError> {
        Ok(self.lock().get(key).cloned())
    }

    async fn put(&self, key: &str, json: &str) -> Result<(), CacheError> {
        self.lock().insert(key.to_owned(), json.to_owned());
        Ok(())
    }
}

/// Hex SHA-256 over (provider, model, prompt version, repository, title, body, sorted labels).
///
/// Every field is length-prefixed so no two different inputs frame to the same bytes (`"ab","c"`
/// vs `"a","bc"`). The repository is included because references such as `#12` are stored
/// resolved against it: the same text in another repository means other issues.
pub fn cache_key(provider: &str, model: &str, prompt_version: u32, input: &ParseInput) -> String {
    let mut hasher = Sha256::new();
    let mut field = |bytes: &[u8]| {
        hasher.update((bytes.len() as u64).to_be_bytes());
        hasher.update(bytes);
    };
    field(b"mosaic-parse-cache/v1");
    field(provider.as_bytes());
    field(model.as_bytes());
    field(&prompt_version.to_be_bytes());
    field(input.repository.to_string().as_bytes());
    field(input.title.as_bytes());
    field(input.body.as_bytes());
    let mut labels: Vec<&str> = input.labels.iter().map(String::as_str).collect();
    labels.sort_unstable();
    field(&(labels.len() as u64).to_be_bytes());
    for label in labels {
        field(label.as_bytes());
    }
    hex::encode(hasher.finalize())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(title: &str, body: &str, labels: &[&str]) -> ParseInput {
        ParseInput {
            repository: "o/r".parse().unwrap(),
            number: 1,
            title: title.to_owned(),
            body: body.to_owned(),
            labels: labels.iter().map(|l| (*l).to_owned()).collect(),
        }
    }

    #[test]
    fn key_depends_on_every_field_and_not_on_label_order() {
        let base = cache_key("anthropic", "m", 1, &input("t", "b", &["x", "y"]));
        assert_eq!(base.len(), 64);
        assert_eq!(
            base,
            cache_key("anthropic", "m", 1, &input("t", "b", &["y", "x"]))
        );
        let different = [
            cache_key("openai", "m", 1, &input("t", "b", &["x", "y"])),
            cache_key("anthropic", "m2", 1, &input("t", "b", &["x", "y"])),
            cache_key("anthropic", "m", 2, &input("t", "b", &["x", "y"])),
            cache_key("anthropic", "m", 1, &input("t2", "b", &["x", "y"])),
            cache_key("anthropic", "m", 1, &input("t", "b2", &["x", "y"])),
            cache_key("anthropic", "m", 1, &input("t", "b", &["x"])),
            // Framing: moving bytes between fields changes the key.
            cache_key("anthropic", "m", 1, &input("tb", "", &["x", "y"])),
            cache_key("anthropic", "m", 1, &input("t", "b", &["xy"])),
        ];
        for key in different {
            assert_ne!(key, base);
        }
        let mut other_repo = input("t", "b", &["x", "y"]);
        other_repo.repository = "o/other".parse().unwrap();
        assert_ne!(cache_key("anthropic", "m", 1, &other_repo), base);
    }

    #[tokio::test]
    async fn in_memory_cache_round_trips() {
        let cache = InMemoryParseCache::new();
        assert_eq!(cache.get("k").await.unwrap(), None);
        cache.put("k", "{}").await.unwrap();
        assert_eq!(cache.get("k").await.unwrap().as_deref(), Some("{}"));
        assert_eq!(cache.len(), 1);
    }
}
