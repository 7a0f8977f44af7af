//! Model first, validated like untrusted input, cached, with the template parser as the net.

use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use mosaic_domain::{IssueMetadata, IssueRef, MetadataSource};
use serde::{Deserialize, Serialize};

use crate::cache::{ParseCache, cache_key};
use crate::error::LlmError;
use crate::llm::{LlmClient, LlmUsage};
use crate::parser::{IssueParser, ParseInput, ParseOutcome, ParserHealth};
use crate::prompt::{PROMPT_VERSION, extraction_request};
use crate::retry::RetryPolicy;
use crate::template::TemplateParser;
use crate::validate::{AnswerFields, read_answer};

/// Default of [`LlmParser::with_failure_backoff`].
pub const DEFAULT_FAILURE_BACKOFF: Duration = Duration::from_secs(3_600);

/// An unusable answer's problems as one line.
fn problems_text(fields: &AnswerFields) -> String {
    let problems: Vec<String> = fields.problems().iter().map(ToString::to_string).collect();
    problems.join("; ")
}

/// Asks a model, validates its answer, caches it; falls back to the template parser.
pub struct LlmParser {
    client: Arc<dyn LlmClient>,
    template: TemplateParser,
    cache: Arc<dyn ParseCache>,
    retry: RetryPolicy,
    max_tokens: u32,
    /// How long a failed parse of the same content is not retried.
    failure_backoff: Duration,
    provider: String,
    model: String,
    health: Mutex<HealthState>,
}

/// What the cache remembers of a parse that failed, under [`failure_key`].
#[derive(Debug, Serialize, Deserialize)]
struct RememberedFailure {
    failed_at: DateTime<Utc>,
    error: String,
}

/// The cache key under which a failure for `key`'s content is remembered.
fn failure_key(key: &str) -> String {
    format!("failed:{key}")
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
            failure_backoff: DEFAULT_FAILURE_BACKOFF,
            provider,
            model,
            health: Mutex::new(HealthState::default()),
        }
    }

    /// How long the model is not asked again about content it failed on (default one hour).
    pub fn with_failure_backoff(mut self, backoff: Duration) -> Self {
        self.failure_backoff = backoff;
        self
    }

    /// A failure for this content still inside the back-off horizon: its error text.
    async fn recent_failure(&self, key: &str) -> Option<String> {
        let json = self.cache.get(&failure_key(key)).await.ok()??;
        let failure: RememberedFailure = serde_json::from_str(&json).ok()?;
        let age = Utc::now().signed_duration_since(failure.failed_at);
        let horizon = chrono::Duration::from_std(self.failure_backoff).ok()?;
        (age >= chrono::Duration::zero() && age < horizon).then_some(failure.error)
    }

    async fn remember_failure(&self, key: &str, error: &str) {
        let failure = RememberedFailure {
            failed_at: Utc::now(),
            error: error.chars().take(500).collect(),
        };
        let Ok(json) = serde_json::to_string(&failure) else {
            return;
        };
        if let Err(error) = self.cache.put(&failure_key(key), &json).await {
            tracing::warn!(%error, "could not remember a failed parse in the parse cache");
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

    /// Up to `max_attempts` calls; the metadata (the answer's valid fields over `template`),
    /// or the last error with the last answer's readable fields. Usage of every answered call
    /// is added to `usage`.
    async fn ask_model(
        &self,
        input: &ParseInput,
        template: &IssueMetadata,
        usage: &mut Option<LlmUsage>,
    ) -> Result<IssueMetadata, (LlmError, Option<AnswerFields>)> {
        let settings = self.template.settings();
        let request = extraction_request(
            input,
            self.template.agents(),
            settings.max_body_bytes,
            self.max_tokens,
        );
        let own = IssueRef::new(input.repository.clone(), input.number);
        let mut attempt = 1;
        let mut last_fields = None;
        loop {
            let result = self.client.extract(&request).await.and_then(|answer| {
                *usage.get_or_insert_default() += answer.usage;
                read_answer(
                    &answer.value,
                    &input.repository,
                    input.number,
                    self.template.agents(),
                    settings.bounds,
                )
                .map_err(|error| LlmError::invalid(error.to_string(), None))
            });
            let error = match result {
                Ok(fields) => {
                    let problems = fields.problems();
                    if !problems.is_empty() {
                        let problems: Vec<String> =
                            problems.iter().map(ToString::to_string).collect();
                        tracing::warn!(
                            provider = %self.provider, model = %self.model, issue = %own,
                            problems = %problems.join("; "),
                            "the model's answer has fields outside the schema; those fall back to the template's reading"
                        );
                    }
                    if fields.usable() {
                        return Ok(fields.merge_over(template.clone(), &own));
                    }
                    let reason = problems_text(&fields);
                    last_fields = Some(fields);
                    LlmError::invalid(reason, None)
                }
                Err(error) => error,
            };
            if let Some(spent) = error.usage() {
                *usage.get_or_insert_default() += spent;
            }
            self.log_failure(input, attempt, &error);
            if !error.is_retryable() || attempt >= self.retry.max_attempts {
                return Err((error, last_fields));
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
        // The body's own statements (`Blocked by: #N`) count whatever the model says.
        let template = self.template.parse_metadata(input);
        if let Some(error) = self.recent_failure(&key).await {
            let mut metadata = template;
            metadata.source = MetadataSource::Fallback;
            return ParseOutcome {
                metadata,
                usage: None,
                from_cache: true,
                llm_error: Some(format!(
                    "not asked again within the failure back-off ({} s): {error}",
                    self.failure_backoff.as_secs()
                )),
            };
        }
        let mut usage = None;
        match self.ask_model(input, &template, &mut usage).await {
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
            Err((error, fields)) => {
                {
                    let mut health = self.health_state();
                    health.last_error = Some(error.to_string());
                    health.auth_failed = matches!(error, LlmError::Auth { .. });
                }
                self.remember_failure(&key, &error.to_string()).await;
                let own = IssueRef::new(input.repository.clone(), input.number);
                let mut metadata = match fields {
                    Some(fields) => fields.merge_over(template, &own),
                    None => template,
                };
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
