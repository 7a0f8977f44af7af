//! Model first, validated like untrusted input, cached, with the template parser as the net.

use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use async_trait::async_trait;
use mosaic_domain::{IssueMetadata, MetadataSource};

use crate::cache::{ParseCache, cache_key};
use crate::error::LlmError;
use crate::llm::{LlmClient, LlmUsage};
use crate::parser::{IssueParser, ParseInput, ParseOutcome, ParserHealth};
use crate::prompt::{PROMPT_VERSION, extraction_request};
use crate::retry::RetryPolicy;
use crate::template::TemplateParser;
use crate::validate::validate_answer;

/// Asks a model, validates its answer, caches it; falls back to the template parser.
pub struct LlmParser {
    client: Arc<dyn LlmClient>,
    template: TemplateParser,
    cache: Arc<dyn ParseCache>,
    retry: RetryPolicy,
    max_tokens: u32,
    provider: String,
    model: String,
    health: Mutex<HealthState>,
}

#[derive(Debug, Default)]
struct HealthState {
    last_error: Option<String>,
    auth_failed: bool,
}

impl fmt::Debug for LlmParser {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LlmParser")
            .field("provider", &self.provider)
            .field("model", &self.model)
            .field("retry", &self.retry)
            .finish_non_exhaustive()
    }
}

impl LlmParser {
    /// `template` supplies the configured agents, bounds and body cap as well as the fallback.
    pub fn new(
        client: Arc<dyn LlmClient>,
        template: TemplateParser,
        cache: Arc<dyn ParseCache>,
        retry: RetryPolicy,
        max_tokens: u32,
    ) -> Self {
        let provider = client.provider();
        let model = client.model();
        Self {
            client,
            template,
            cache,
            retry,
            max_tokens,
            provider,
            model,
            health: Mutex::new(HealthState::default()),
        }
    }

    fn health_state(&self) -> MutexGuard<'_, HealthState> {
        // Only plain assignments happen under this lock; a poisoned one still holds valid data.
        self.health.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Cached metadata, checked again: configuration (agents, bounds) may have changed since.
    async fn cached(&self, key: &str) -> Option<IssueMetadata> {
        let json = match self.cache.get(key).await {
            Ok(json) => json?,
            Err(error) => {
                tracing::warn!(%error, "parse cache lookup failed; asking the model");
                return None;
            }
        };
        let mut metadata: IssueMetadata = match serde_json::from_str(&json) {
            Ok(metadata) => metadata,
            Err(error) => {
                tracing::warn!(%error, "ignoring an unreadable parse cache entry");
                return None;
            }
        };
        if metadata.source != MetadataSource::Llm {
            return None;
        }
        let settings = self.template.settings();
        metadata.estimated_context = settings.bounds.clamp(metadata.estimated_context);
        metadata.recommended_agent = metadata
            .recommended_agent
            .and_then(|agent| self.template.agents().resolve(&agent));
        metadata.confidence = metadata.confidence.clamp(0.0, 1.0);
        Some(metadata)
    }

    async fn remember(&self, key: &str, metadata: &IssueMetadata) {
        let json = match serde_json::to_string(metadata) {
            Ok(json) => json,
            Err(error) => {
                tracing::warn!(%error, "could not serialise metadata for the parse cache");
                return;
            }
        };
        if let Err(error) = self.cache.put(key, &json).await {
            tracing::warn!(%error, "could not store parsed metadata in the parse cache");
        }
    }

    /// Up to `max_attempts` calls; the validated metadata, or the last error. Usage of every
    /// answered call is added to `usage`.
    async fn ask_model(
        &self,
        input: &ParseInput,
        usage: &mut Option<LlmUsage>,
    ) -> Result<IssueMetadata, LlmError> {
        let settings = self.template.settings();
        let request = extraction_request(
            input,
            self.template.agents(),
            settings.max_body_bytes,
            self.max_tokens,
        );
        let mut attempt = 1;
        loop {
            let result = self.client.extract(&request).await.and_then(|answer| {
                *usage.get_or_insert_default() += answer.usage;
                validate_answer(
                    &answer.value,
                    &input.repository,
                    input.number,
                    self.template.agents(),
                    settings.bounds,
                )
                .map_err(|error| LlmError::invalid(error.to_string(), None))
            });
            let error = match result {
                Ok(metadata) => return Ok(metadata),
                Err(error) => error,
            };
            if let Some(spent) = error.usage() {
                *usage.get_or_insert_default() += spent;
            }
            self.log_failure(input, attempt, &error);
            if !error.is_retryable() || attempt >= self.retry.max_attempts {
                return Err(error);
            }
            tokio::time::sleep(self.retry.jittered_delay(attempt, error.retry_after())).await;
            attempt += 1;
        }
    }

    fn log_failure(&self, input: &ParseInput, attempt: u32, error: &LlmError) {
        let issue = format!("{}#{}", input.repository, input.number);
        let max_attempts = self.retry.max_attempts;
        match error {
            LlmError::Auth { .. } => tracing::error!(
                provider = %self.provider, model = %self.model, %issue, %error,
                "model call rejected: the parser's API key is wrong or lacks access"
            ),
            LlmError::BadRequest { .. } => tracing::error!(
                provider = %self.provider, model = %self.model, %issue, %error,
                "model call rejected as a bad request (model name or base URL?)"
            ),
            _ => tracing::warn!(
                provider = %self.provider, model = %self.model, %issue, attempt, max_attempts,
                %error, "model call failed"
            ),
        }
    }
}

#[async_trait]
impl IssueParser for LlmParser {
    async fn parse(&self, input: &ParseInput) -> ParseOutcome {
        let key = cache_key(&self.provider, &self.model, PROMPT_VERSION, input);
        if let Some(metadata) = self.cached(&key).await {
            return ParseOutcome {
                metadata,
                usage: None,
                from_cache: true,
                llm_error: None,
            };
        }
        let mut usage = None;
        match self.ask_model(input, &mut usage).await {
            Ok(metadata) => {
                *self.health_state() = HealthState::default();
                self.remember(&key, &metadata).await;
                ParseOutcome {
                    metadata,
                    usage,
                    from_cache: false,
                    llm_error: None,
                }
            }
            Err(error) => {
                {
                    let mut health = self.health_state();
                    health.last_error = Some(error.to_string());
                    health.auth_failed = matches!(error, LlmError::Auth { .. });
                }
                let mut metadata = self.template.parse_metadata(input);
                metadata.source = MetadataSource::Fallback;
                ParseOutcome {
                    metadata,
                    usage,
                    from_cache: false,
                    llm_error: Some(error.to_string()),
                }
            }
        }
    }

    fn health(&self) -> ParserHealth {
        let health = self.health_state();
        ParserHealth {
            provider: self.provider.clone(),
            model: Some(self.model.clone()),
            last_error: health.last_error.clone(),
            auth_failed: health.auth_failed,
        }
    }
}

#[cfg(test)]
mod tests;
