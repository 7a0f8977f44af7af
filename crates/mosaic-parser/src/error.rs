//! Why one model call failed, told apart so retries and logs can act on the difference.

use std::time::Duration;

use crate::llm::LlmUsage;

/// One failed model call.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum LlmError {
    #[error("the model did not answer within {}s", after.as_secs_f64())]
    Timeout { after: Duration },
    #[error("rate limited by the provider (429): {message}")]
    RateLimited {
        retry_after: Option<Duration>,
        message: String,
    },
    #[error("the provider is overloaded ({status}): {message}")]
    Overloaded {
        status: u16,
        retry_after: Option<Duration>,
        message: String,
    },
    #[error("provider server error ({status}): {message}")]
    Server {
        status: u16,
        retry_after: Option<Duration>,
        message: String,
    },
    #[error(
        "the provider rejected the credentials ({status}): {message}; check the API key in the parser configuration"
    )]
    Auth { status: u16, message: String },
    #[error("the provider rejected the request ({status}): {message}")]
    BadRequest { status: u16, message: String },
    #[error("the model's answer is unusable: {reason}")]
    InvalidAnswer {
        reason: String,
        /// Tokens the unusable answer still cost, when the provider reported them.
        usage: Option<LlmUsage>,
    },
    #[error("could not reach the provider: {message}")]
    Transport { message: String },
}

impl LlmError {
    /// Transient failures worth another attempt: 429, 5xx, 529, timeouts and connection errors.
    /// Client errors and unusable answers would fail the same way again.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            Self::Timeout { .. }
                | Self::RateLimited { .. }
                | Self::Overloaded { .. }
                | Self::Server { .. }
                | Self::Transport { .. }
        )
    }

    /// The provider's `retry-after`, when it sent one.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::RateLimited { retry_after, .. }
            | Self::Overloaded { retry_after, .. }
            | Self::Server { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// Usage the failed call still incurred.
    pub fn usage(&self) -> Option<LlmUsage> {
        match self {
            Self::InvalidAnswer { usage, .. } => *usage,
            _ => None,
        }
    }

    pub(crate) fn invalid(reason: impl Into<String>, usage: Option<LlmUsage>) -> Self {
        Self::InvalidAnswer {
            reason: reason.into(),
            usage,
        }
    }
}
