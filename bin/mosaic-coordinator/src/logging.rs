//! Log set-up: `LOG_LEVEL` (or `RUST_LOG`-style directives), human lines on a terminal and JSON
//! lines everywhere else.

use std::fmt;
use std::io::IsTerminal;
use std::str::FromStr;

use std::sync::OnceLock;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{EnvFilter, Layer as _};

use crate::repeats::RepeatLimit;

/// `LOG_LEVEL`: a level word (debug, info, warning/warn, error, trace) or `RUST_LOG`-style
/// directives such as `info,mosaic_http=debug`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLevel {
    directives: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "`{0}` is not a log level: expected debug, info, warning, error (or RUST_LOG-style directives such as `info,mosaic_http=debug`)"
)]
pub struct LogLevelError(String);

impl FromStr for LogLevel {
    type Err = LogLevelError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let trimmed = text.trim();
        let word = match trimmed.to_ascii_lowercase().as_str() {
            "trace" => Some("trace"),
            "debug" => Some("debug"),
            "info" => Some("info"),
            "warning" | "warn" => Some("warn"),
            "error" => Some("error"),
            _ => None,
        };
        if let Some(level) = word {
            return Ok(Self {
                directives: level.to_owned(),
            });
        }
        // A bare unknown word ("loud") would silently parse as a target filter; only accept
        // text that is recognisably a directive list.
        let looks_like_directives = trimmed.contains('=') || trimmed.contains(',');
        if looks_like_directives && EnvFilter::try_new(trimmed).is_ok() {
            Ok(Self {
                directives: trimmed.to_owned(),
            })
        } else {
            Err(LogLevelError(text.to_owned()))
        }
    }
}

impl Default for LogLevel {
    fn default() -> Self {
        Self {
            directives: "info".to_owned(),
        }
    }
}

impl fmt::Display for LogLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.directives)
    }
}

impl Serialize for LogLevel {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.directives)
    }
}

impl<'de> Deserialize<'de> for LogLevel {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// How log lines look.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Pretty on a terminal, JSON otherwise.
    #[default]
    Auto,
    Json,
    Pretty,
}

/// The `[log]` section.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    pub level: LogLevel,
    pub format: LogFormat,
}

/// The repeat limit of the installed subscriber, for [`spawn_repeat_reporter`].
static REPEATS: OnceLock<RepeatLimit> = OnceLock::new();

/// Installs the global subscriber. Logs go to stderr so that stdout stays clean for command
/// output (`check-config`). Identical warnings and errors are rate-limited ([`RepeatLimit`]).
pub fn init(config: &LogConfig) {
    // RUST_LOG, when set and valid, refines the configured level (as operators expect).
    let filter = std::env::var("RUST_LOG")
        .ok()
        .and_then(|directives| EnvFilter::try_new(directives).ok())
        .unwrap_or_else(|| EnvFilter::new(config.level.to_string()));
    let json = match config.format {
        LogFormat::Json => true,
        LogFormat::Pretty => false,
        LogFormat::Auto => !std::io::stderr().is_terminal(),
    };
    let limit = RepeatLimit::default();
    let registry = tracing_subscriber::registry().with(filter);
    // A second init (tests, embedding) keeps the first subscriber; that is not an error.
    let installed = if json {
        registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_current_span(true)
                    .with_span_list(false)
                    .with_writer(std::io::stderr)
                    .with_filter(limit.clone()),
            )
            .try_init()
    } else {
        registry
            .with(
                tracing_subscriber::fmt::layer()
                    .compact()
                    .with_writer(std::io::stderr)
                    .with_filter(limit.clone()),
            )
            .try_init()
    };
    if installed.is_ok() {
        let _ = REPEATS.set(limit);
    }
}

/// Logs the sums of held-back repeats once per window (needs a tokio runtime); does nothing when
/// this module's subscriber is not the one installed.
pub fn spawn_repeat_reporter() {
    if let Some(limit) = REPEATS.get() {
        tokio::spawn(limit.clone().report_loop());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_and_directives() {
        let check = |input: &str, expect: Option<&str>| {
            let got = input.parse::<LogLevel>().ok().map(|l| l.to_string());
            assert_eq!(got.as_deref(), expect, "{input:?}");
        };
        check("debug", Some("debug"));
        check("INFO", Some("info"));
        check("warning", Some("warn"));
        check("warn", Some("warn"));
        check("error", Some("error"));
        check("info,mosaic_http=debug", Some("info,mosaic_http=debug"));
        check("loud", None);
        check("", None);
        check("info,=x=y", None);
    }
}
