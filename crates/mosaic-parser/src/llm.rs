//! The model-facing interface: one structured-extraction request, one structured answer.

use std::ops::AddAssign;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::error::LlmError;

/// Tokens one or more calls used and what they cost.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct LlmUsage {
    pub input_tokens: u64,
    pub output_tokens: u64,
    /// From the configured price table; 0 for models without a configured price.
    pub cost_usd: f64,
}

impl AddAssign for LlmUsage {
    fn add_assign(&mut self, other: Self) {
        self.input_tokens = self.input_tokens.saturating_add(other.input_tokens);
        self.output_tokens = self.output_tokens.saturating_add(other.output_tokens);
        self.cost_usd += other.cost_usd;
    }
}

/// Provider-neutral request: each client maps it to its API (a forced tool call for Anthropic,
/// a JSON-schema response format for OpenAI-compatible servers).
#[derive(Debug, Clone, PartialEq)]
pub struct ExtractionRequest {
    pub system: String,
    /// The user message, holding the untrusted issue text as delimited data.
    pub user: String,
    /// Name of the tool / schema the answer must follow.
    pub schema_name: String,
    pub schema_description: String,
    pub schema: serde_json::Value,
    pub max_tokens: u32,
}

/// The model's structured answer, still untrusted: it has not been validated yet.
#[derive(Debug, Clone, PartialEq)]
pub struct LlmAnswer {
    pub value: serde_json::Value,
    pub usage: LlmUsage,
}

/// One model endpoint. Implementations make exactly one attempt per call (bounded by their
/// timeout); retries and fallback belong to the caller.
#[cfg_attr(any(test, feature = "mock"), mockall::automock)]
#[async_trait]
pub trait LlmClient: Send + Sync {
    /// `anthropic`, `openai`, …: part of the cache key.
    fn provider(&self) -> String;

    /// The model id sent to the provider: part of the cache key.
    fn model(&self) -> String;

    async fn extract(&self, request: &ExtractionRequest) -> Result<LlmAnswer, LlmError>;
}
