//! The one interface the engine sees: issue in, validated metadata out.

use async_trait::async_trait;
use mosaic_domain::{IssueMetadata, RepoName};
use serde::Serialize;

use crate::llm::LlmUsage;

/// One issue as the tracker shows it; everything but `repository` and `number` is untrusted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseInput {
    pub repository: RepoName,
    pub number: u64,
    pub title: String,
    pub body: String,
    pub labels: Vec<String>,
}

/// What a parse produced. Never an error: a failed model falls back to the template parser and
/// says why in `llm_error`, so an event is never lost to a parser failure.
#[derive(Debug, Clone, PartialEq)]
pub struct ParseOutcome {
    pub metadata: IssueMetadata,
    /// Tokens and cost spent on model calls for this parse (all attempts); `None` when no model
    /// answered (template provider, cache hit, or every attempt failed before any usage).
    pub usage: Option<LlmUsage>,
    pub from_cache: bool,
    /// Why the model's answer was not used, when it was not.
    pub llm_error: Option<String>,
}

/// What `/health` shows about the parser: a wrong API key must be obvious there.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ParserHealth {
    pub provider: String,
    pub model: Option<String>,
    /// The last model failure, cleared by the next success.
    pub last_error: Option<String>,
    /// The provider rejected our credentials (401/403): only configuration can fix this.
    pub auth_failed: bool,
}

/// Issue → metadata with source and confidence.
#[cfg_attr(any(test, feature = "mock"), mockall::automock)]
#[async_trait]
pub trait IssueParser: Send + Sync {
    async fn parse(&self, input: &ParseInput) -> ParseOutcome;

    fn health(&self) -> ParserHealth;
}
