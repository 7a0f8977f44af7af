//! What both provider clients share: one bounded POST, status classification, `retry-after`.

use std::time::Duration;

use reqwest::StatusCode;
use reqwest::header::{HeaderMap, RETRY_AFTER};
use serde_json::Value;

use crate::error::LlmError;

/// Largest response body read; a real answer is a few kilobytes.
const MAX_RESPONSE_BYTES: usize = 4 * 1024 * 1024;
/// Longest provider error message kept (they end up in logs and `/health`).
const MAX_MESSAGE_CHARS: usize = 300;

/// A successful (2xx) response: the body bytes.
#[derive(Debug)]
pub(crate) struct Success {
    pub body: Vec<u8>,
}

/// `{base_url}/{path}`, keeping any path prefix of the base (proxies mount APIs under one).
pub(crate) fn endpoint(base_url: &url::Url, path: &str) -> Result<url::Url, url::ParseError> {
    url::Url::parse(&format!(
        "{}/{}",
        base_url.as_str().trim_end_matches('/'),
        path.trim_start_matches('/')
    ))
}

/// The HTTP client both providers use; the overall per-call bound is applied in `post_json`.
pub(crate) fn http_client(timeout: Duration) -> Result<reqwest::Client, reqwest::Error> {
    reqwest::Client::builder()
        .connect_timeout(timeout)
        .timeout(timeout)
        .build()
}

/// What both provider clients are built from: the endpoint under `base_url` and the HTTP
/// client, each failure worded as the configuration problem it is.
pub(crate) fn connection(
    base_url: &url::Url,
    path: &str,
    timeout: Duration,
) -> Result<(url::Url, reqwest::Client), crate::config::ParserConfigError> {
    let endpoint = endpoint(base_url, path)
        .map_err(|error| crate::config::ParserConfigError::BaseUrl(error.to_string()))?;
    let client = http_client(timeout)
        .map_err(|error| crate::config::ParserConfigError::Http(error.to_string()))?;
    Ok((endpoint, client))
}

/// One POST with a JSON body, bounded in time (connect, send and read) and size.
pub(crate) async fn post_json(
    request: reqwest::RequestBuilder,
    timeout: Duration,
) -> Result<Success, LlmError> {
    let exchange = async {
        let mut response = request
            .send()
            .await
            .map_err(|error| transport(&error, timeout))?;
        let status = response.status();
        let headers = response.headers().clone();
        let mut body = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|error| transport(&error, timeout))?
        {
            if body.len() + chunk.len() > MAX_RESPONSE_BYTES {
                return Err(LlmError::invalid(
                    format!("response larger than {MAX_RESPONSE_BYTES} bytes"),
                    None,
                ));
            }
            body.extend_from_slice(&chunk);
        }
        if status.is_success() {
            Ok(Success { body })
        } else {
            Err(classify_failure(status, &headers, &body))
        }
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .unwrap_or(Err(LlmError::Timeout { after: timeout }))
}

fn transport(error: &reqwest::Error, timeout: Duration) -> LlmError {
    if error.is_timeout() {
        LlmError::Timeout { after: timeout }
    } else {
        // The chain holds the useful part ("connection refused", DNS errors).
        let mut message = error.to_string();
        let mut source = std::error::Error::source(error);
        while let Some(cause) = source {
            message.push_str(": ");
            message.push_str(&cause.to_string());
            source = cause.source();
        }
        LlmError::Transport { message }
    }
}

/// Maps a non-2xx answer to the error kind that decides retrying and logging.
pub(crate) fn classify_failure(status: StatusCode, headers: &HeaderMap, body: &[u8]) -> LlmError {
    let (error_type, message) = error_details(body);
    let message = if message.is_empty() {
        status.canonical_reason().unwrap_or("no message").to_owned()
    } else {
        message
    };
    let retry_after = retry_after(headers);
    let code = status.as_u16();
    match code {
        429 => LlmError::RateLimited {
            retry_after,
            message,
        },
        // 529 is Anthropic's "overloaded"; the error type says the same on other statuses.
        529 => LlmError::Overloaded {
            status: code,
            retry_after,
            message,
        },
        _ if error_type == "overloaded_error" => LlmError::Overloaded {
            status: code,
            retry_after,
            message,
        },
        401 | 403 => LlmError::Auth {
            status: code,
            message,
        },
        // A request timeout is the server giving up on us: as transient as a 5xx.
        408 | 500..=599 => LlmError::Server {
            status: code,
            retry_after,
            message,
        },
        _ => LlmError::BadRequest {
            status: code,
            message,
        },
    }
}

/// `error.type` and `error.message` (both providers use this shape), bounded in length.
fn error_details(body: &[u8]) -> (String, String) {
    let Ok(value) = serde_json::from_slice::<Value>(body) else {
        let text = String::from_utf8_lossy(body);
        return (String::new(), bounded(text.trim()));
    };
    let error = &value["error"];
    let text_of = |field: &str| error[field].as_str().unwrap_or_default().to_owned();
    (text_of("type"), bounded(&text_of("message")))
}

pub(crate) fn bounded(text: &str) -> String {
    if text.chars().count() <= MAX_MESSAGE_CHARS {
        text.to_owned()
    } else {
        let mut short: String = text.chars().take(MAX_MESSAGE_CHARS).collect();
        short.push('…');
        short
    }
}

/// `retry-after` as seconds (`"7"`, `"1.5"`) or an HTTP date; a date in the past means now.
pub(crate) fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let text = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(seconds) = text.parse::<f64>() {
        return (seconds.is_finite() && seconds >= 0.0)
            .then(|| Duration::try_from_secs_f64(seconds).ok())
            .flatten();
    }
    let at = chrono::DateTime::parse_from_rfc2822(text).ok()?;
    let wait = at.signed_duration_since(chrono::Utc::now());
    Some(wait.to_std().unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use reqwest::header::HeaderValue;

    use super::*;

    fn headers(retry: Option<&str>) -> HeaderMap {
        let mut headers = HeaderMap::new();
        if let Some(retry) = retry {
            headers.insert(RETRY_AFTER, HeaderValue::from_str(retry).unwrap());
        }
        headers
    }

    #[test]
    fn reads_retry_after() {
        assert_eq!(
            retry_after(&headers(Some("7"))),
            Some(Duration::from_secs(7))
        );
        assert_eq!(
            retry_after(&headers(Some("1.5"))),
            Some(Duration::from_millis(1_500))
        );
        assert_eq!(
            retry_after(&headers(Some("Wed, 21 Oct 2015 07:28:00 GMT"))),
            Some(Duration::ZERO)
        );
        let future = (chrono::Utc::now() + chrono::Duration::seconds(120)).to_rfc2822();
        let wait = retry_after(&headers(Some(&future))).unwrap();
        assert!(wait > Duration::from_secs(100) && wait <= Duration::from_secs(120));
        assert_eq!(retry_after(&headers(Some("-3"))), None);
        assert_eq!(retry_after(&headers(Some("soon"))), None);
        assert_eq!(retry_after(&headers(Some("1e400"))), None);
        assert_eq!(retry_after(&headers(None)), None);
    }

    #[test]
    fn classifies_statuses() {
        let check = |status: u16, body: &str, expect: &str| {
            let status = StatusCode::from_u16(status).unwrap();
            let error = classify_failure(status, &headers(Some("2")), body.as_bytes());
            let got = format!(
                "{} retry={} after={:?}",
                error,
                error.is_retryable(),
                error.retry_after()
            );
            assert_eq!(got, expect);
        };
        let overloaded =
            r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#;
        check(
            529,
            overloaded,
            "the provider is overloaded (529): Overloaded retry=true after=Some(2s)",
        );
        check(
            503,
            overloaded,
            "the provider is overloaded (503): Overloaded retry=true after=Some(2s)",
        );
        check(
            429,
            r#"{"type":"error","error":{"type":"rate_limit_error","message":"slow down"}}"#,
            "rate limited by the provider (429): slow down retry=true after=Some(2s)",
        );
        check(
            500,
            "upstream exploded",
            "provider server error (500): upstream exploded retry=true after=Some(2s)",
        );
        check(
            502,
            "",
            "provider server error (502): Bad Gateway retry=true after=Some(2s)",
        );
        check(
            401,
            r#"{"type":"error","error":{"type":"authentication_error","message":"invalid x-api-key"}}"#,
            "the provider rejected the credentials (401): invalid x-api-key; check the API key in the parser configuration retry=false after=None",
        );
        check(
            403,
            r#"{"error":{"message":"forbidden","type":"permission_error"}}"#,
            "the provider rejected the credentials (403): forbidden; check the API key in the parser configuration retry=false after=None",
        );
        check(
            400,
            r#"{"error":{"message":"bad schema","type":"invalid_request_error","code":null}}"#,
            "the provider rejected the request (400): bad schema retry=false after=None",
        );
        check(
            404,
            "",
            "the provider rejected the request (404): Not Found retry=false after=None",
        );
    }

    #[test]
    fn long_messages_are_bounded() {
        let long = "x".repeat(10_000);
        assert_eq!(bounded(&long).chars().count(), MAX_MESSAGE_CHARS + 1);
    }
}
