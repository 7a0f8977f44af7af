//! What can go wrong talking to Gitea, told apart so callers can decide: retry, give up, or fall back.

use std::time::Duration;

/// One failed Gitea call.
///
/// `is_retryable()` separates passing trouble (server errors, timeouts, rate limits, a dropped
/// connection) from answers that will not change by asking again (a rejected token, a missing
/// issue, a validation error).
#[derive(Debug, thiserror::Error)]
pub enum GiteaError {
    /// 401: the token is missing, expired or revoked.
    #[error("Gitea rejected the token (401) for {operation}: {message}")]
    Unauthorized {
        operation: &'static str,
        message: String,
    },

    /// 403: the token works but lacks the permission (or scope) for this call.
    #[error("Gitea refused {operation} (403, missing permission or token scope): {message}")]
    Forbidden {
        operation: &'static str,
        message: String,
    },

    /// 404: the repository, issue, comment or hook does not exist or is not visible to the bot.
    #[error("Gitea found nothing for {operation} (404): {message}")]
    NotFound {
        operation: &'static str,
        message: String,
    },

    /// 409 or 422: Gitea understood the request and refused its content.
    #[error("Gitea refused {operation} ({status}): {message}")]
    Unprocessable {
        operation: &'static str,
        status: u16,
        message: String,
    },

    /// 429: slow down; `retry_after` is Gitea's hint when it sent one.
    #[error("Gitea rate-limited {operation} (429)")]
    RateLimited {
        operation: &'static str,
        retry_after: Option<Duration>,
    },

    /// 5xx: Gitea (or a proxy in front of it) failed.
    #[error("Gitea failed {operation} ({status}): {message}")]
    Server {
        operation: &'static str,
        status: u16,
        message: String,
    },

    /// Any other unexpected status (e.g. 400, 423 for an archived repository).
    #[error("Gitea answered {operation} with {status}: {message}")]
    UnexpectedStatus {
        operation: &'static str,
        status: u16,
        message: String,
    },

    /// The connect or request timeout expired.
    #[error("Gitea did not answer {operation} in time")]
    Timeout { operation: &'static str },

    /// Gitea could not be reached (DNS, refused connection, TLS, reset).
    #[error("could not reach Gitea for {operation}: {message}")]
    Transport {
        operation: &'static str,
        message: String,
    },

    /// Gitea answered 2xx with a body that is not the expected JSON.
    #[error("Gitea's answer to {operation} could not be read: {message}")]
    Decode {
        operation: &'static str,
        message: String,
    },

    /// A write Gitea accepted (2xx) whose answer could not be read: the write happened; only
    /// what Gitea said about it is unknown.
    #[error("Gitea did {operation} but its answer could not be read: {message}")]
    WrittenUnreadable {
        operation: &'static str,
        message: String,
    },

    /// A listing had more pages than the caller allowed; a partial list would mislead.
    #[error("Gitea's listing for {operation} exceeds {max_pages} pages; refusing a partial result")]
    TooManyPages {
        operation: &'static str,
        max_pages: u32,
    },

    /// The client could not be built or a request could not be formed from its inputs.
    #[error("invalid Gitea request: {0}")]
    InvalidRequest(String),
}

impl GiteaError {
    /// Whether the same call may succeed later without anything being changed.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            Self::RateLimited { .. }
                | Self::Server { .. }
                | Self::Timeout { .. }
                | Self::Transport { .. }
        )
    }

    /// Whether the write was done although its answer could not be read (a 2xx is success).
    pub fn was_written(&self) -> bool {
        matches!(self, Self::WrittenUnreadable { .. })
    }

    /// Whether Gitea refused the credentials themselves (401 or 403).
    pub fn is_auth_failure(&self) -> bool {
        matches!(self, Self::Unauthorized { .. } | Self::Forbidden { .. })
    }

    pub fn is_not_found(&self) -> bool {
        matches!(self, Self::NotFound { .. })
    }

    /// The HTTP status Gitea answered with, when it answered at all.
    pub fn status(&self) -> Option<u16> {
        match self {
            Self::Unauthorized { .. } => Some(401),
            Self::Forbidden { .. } => Some(403),
            Self::NotFound { .. } => Some(404),
            Self::RateLimited { .. } => Some(429),
            Self::Unprocessable { status, .. }
            | Self::Server { status, .. }
            | Self::UnexpectedStatus { status, .. } => Some(*status),
            Self::Timeout { .. }
            | Self::Transport { .. }
            | Self::Decode { .. }
            | Self::WrittenUnreadable { .. }
            | Self::TooManyPages { .. }
            | Self::InvalidRequest(_) => None,
        }
    }

    /// Maps a non-success status and Gitea's message to the matching variant.
    pub(crate) fn from_status(
        operation: &'static str,
        status: u16,
        message: String,
        retry_after: Option<Duration>,
    ) -> Self {
        match status {
            401 => Self::Unauthorized { operation, message },
            403 => Self::Forbidden { operation, message },
            404 => Self::NotFound { operation, message },
            409 | 422 => Self::Unprocessable {
                operation,
                status,
                message,
            },
            429 => Self::RateLimited {
                operation,
                retry_after,
            },
            500..=599 => Self::Server {
                operation,
                status,
                message,
            },
            _ => Self::UnexpectedStatus {
                operation,
                status,
                message,
            },
        }
    }
}

/// Longest piece of an error body kept in a message: enough for Gitea's messages, bounded for
/// an HTML error page from a proxy.
const MAX_MESSAGE_CHARS: usize = 300;

/// Gitea's error bodies are `{"message": "...", "url": "..."}`, validation errors a list of
/// `{"fieldNames": [...], "message": "..."}`; anything else (a proxy's HTML) is kept, shortened.
pub(crate) fn error_message_from_body(body: &str) -> String {
    if let Ok(value) = serde_json::from_str::<serde_json::Value>(body) {
        if let Some(message) = value.get("message").and_then(|m| m.as_str()) {
            return shorten(message);
        }
        if let Some(items) = value.as_array() {
            let messages: Vec<&str> = items
                .iter()
                .filter_map(|item| item.get("message").and_then(|m| m.as_str()))
                .collect();
            if !messages.is_empty() {
                return shorten(&messages.join("; "));
            }
        }
        if let Some(text) = value.as_str() {
            return shorten(text);
        }
    }
    let trimmed = body.trim();
    if trimmed.is_empty() {
        "(empty body)".to_owned()
    } else {
        shorten(trimmed)
    }
}

fn shorten(text: &str) -> String {
    if text.chars().count() <= MAX_MESSAGE_CHARS {
        text.to_owned()
    } else {
        let mut short: String = text.chars().take(MAX_MESSAGE_CHARS).collect();
        short.push('…');
        short
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_map_to_variants_and_retryability() {
        let check = |status: u16, expect_retryable: bool, expect_name: &str| {
            let error = GiteaError::from_status("op", status, "m".into(), None);
            assert_eq!(error.is_retryable(), expect_retryable, "{status}");
            assert!(
                format!("{error:?}").starts_with(expect_name),
                "{status}: {error:?}"
            );
            assert_eq!(error.status(), Some(status));
        };
        check(401, false, "Unauthorized");
        check(403, false, "Forbidden");
        check(404, false, "NotFound");
        check(409, false, "Unprocessable");
        check(422, false, "Unprocessable");
        check(429, true, "RateLimited");
        check(500, true, "Server");
        check(502, true, "Server");
        check(503, true, "Server");
        check(400, false, "UnexpectedStatus");
        check(423, false, "UnexpectedStatus");
    }

    #[test]
    fn messages_are_taken_from_gitea_bodies() {
        let check = |body: &str, expect: &str| assert_eq!(error_message_from_body(body), expect);
        check(
            r#"{"message":"token is required","url":"x"}"#,
            "token is required",
        );
        check(
            r#"[{"fieldNames":["Color"],"classification":"InvalidColor","message":"Color"},{"message":"Name"}]"#,
            "Color; Name",
        );
        check(
            r#""CrossRepositoryDependencies not enabled""#,
            "CrossRepositoryDependencies not enabled",
        );
        check("", "(empty body)");
        check("<html>bad gateway</html>", "<html>bad gateway</html>");
        let long = "x".repeat(1000);
        assert_eq!(
            error_message_from_body(&long).chars().count(),
            MAX_MESSAGE_CHARS + 1
        );
    }
}
