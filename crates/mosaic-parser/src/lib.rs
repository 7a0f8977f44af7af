//! Reads an issue's metadata (size, difficulty, recommended agent, dependencies).
//!
//! Three ways, one trait ([`IssueParser`]): the [`TemplateParser`] reads the issue template
//! offline; the [`LlmParser`] asks a model ([`AnthropicClient`], [`OpenAiClient`]), validates the
//! answer like any untrusted input, caches it ([`ParseCache`]) and falls back to the template
//! parser when the model fails. No path can yield an agent that configuration did not define.

mod agents;
mod anthropic;
mod cache;
mod config;
mod error;
mod http;
mod llm;
mod llm_parser;
mod numbers;
mod openai;
mod parser;
mod prompt;
mod retry;
mod template;
mod validate;

pub use agents::KnownAgents;
pub use anthropic::AnthropicClient;
pub use cache::{CacheError, InMemoryParseCache, ParseCache, cache_key};
pub use config::{
    DEFAULT_ANTHROPIC_BASE_URL, DEFAULT_ANTHROPIC_MODEL, DEFAULT_OPENAI_BASE_URL,
    DEFAULT_OPENAI_MODEL, EstimateBounds, ModelPrice, ParserConfig, ParserConfigError,
    ProviderKind, build_parser,
};
pub use error::LlmError;
pub use llm::{ExtractionRequest, LlmAnswer, LlmClient, LlmUsage};
pub use llm_parser::LlmParser;
pub use openai::OpenAiClient;
pub use parser::{IssueParser, ParseInput, ParseOutcome, ParserHealth};
pub use prompt::{PROMPT_VERSION, TOOL_NAME, metadata_schema};
pub use retry::RetryPolicy;
pub use template::{TemplateParser, TemplateSettings};
pub use validate::{AnswerError, AnswerFields, read_answer, validate_answer};

#[cfg(any(test, feature = "mock"))]
pub use cache::MockParseCache;
#[cfg(any(test, feature = "mock"))]
pub use llm::MockLlmClient;
#[cfg(any(test, feature = "mock"))]
pub use parser::MockIssueParser;
