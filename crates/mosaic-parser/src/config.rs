//! The `[parser]` configuration section and the one function that turns it into a parser.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use mosaic_domain::Difficulty;
use mosaic_security::Secret;
use serde::{Deserialize, Serialize};
use url::Url;

use crate::agents::KnownAgents;
use crate::anthropic::AnthropicClient;
use crate::cache::ParseCache;
use crate::llm::LlmClient;
use crate::llm_parser::LlmParser;
use crate::openai::OpenAiClient;
use crate::parser::IssueParser;
use crate::retry::RetryPolicy;
use crate::template::{TemplateParser, TemplateSettings};

pub const DEFAULT_ANTHROPIC_BASE_URL: &str = "https://api.anthropic.com";
pub const DEFAULT_ANTHROPIC_MODEL: &str = "claude-sonnet-4-5";
pub const DEFAULT_OPENAI_BASE_URL: &str = "https://api.openai.com";
pub const DEFAULT_OPENAI_MODEL: &str = "gpt-4o-mini";

/// Which parser reads issues.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProviderKind {
    Template,
    Anthropic,
    Openai,
}

impl ProviderKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Template => "template",
            Self::Anthropic => "anthropic",
            Self::Openai => "openai",
        }
    }
}

/// Sane limits for estimated context; anything outside is clamped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EstimateBounds {
    pub min: u64,
    pub max: u64,
}

impl Default for EstimateBounds {
    fn default() -> Self {
        Self {
            min: 1_000,
            max: 2_000_000,
        }
    }
}

impl EstimateBounds {
    pub fn clamp(self, tokens: u64) -> u64 {
        // `max(min)` first so inverted bounds (rejected by validation) cannot panic here.
        tokens.min(self.max).max(self.min)
    }
}

/// US dollars per million tokens of one model.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelPrice {
    pub input_per_mtok: f64,
    pub output_per_mtok: f64,
}

impl ModelPrice {
    pub fn cost(self, input_tokens: u64, output_tokens: u64) -> f64 {
        (input_tokens as f64 * self.input_per_mtok + output_tokens as f64 * self.output_per_mtok)
            / 1_000_000.0
    }
}

/// Prices known without configuration (list prices; configuration overrides or adds models).
fn default_prices() -> BTreeMap<String, ModelPrice> {
    let price = |input_per_mtok, output_per_mtok| ModelPrice {
        input_per_mtok,
        output_per_mtok,
    };
    [
        ("claude-sonnet-4-5", price(3.0, 15.0)),
        ("claude-sonnet-4-0", price(3.0, 15.0)),
        ("claude-opus-4-1", price(15.0, 75.0)),
        ("claude-haiku-4-5", price(1.0, 5.0)),
        ("claude-3-5-haiku-latest", price(0.8, 4.0)),
        ("gpt-4o", price(2.5, 10.0)),
        ("gpt-4o-mini", price(0.15, 0.6)),
        ("gpt-4.1", price(2.0, 8.0)),
        ("gpt-4.1-mini", price(0.4, 1.6)),
    ]
    .into_iter()
    .map(|(model, price)| (model.to_owned(), price))
    .collect()
}

/// The `[parser]` section.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ParserConfig {
    /// `None`: anthropic when an API key is configured, template otherwise.
    pub provider: Option<ProviderKind>,
    /// Defaults per provider: [`DEFAULT_ANTHROPIC_MODEL`], [`DEFAULT_OPENAI_MODEL`].
    pub model: Option<String>,
    /// Defaults per provider: [`DEFAULT_ANTHROPIC_BASE_URL`], [`DEFAULT_OPENAI_BASE_URL`].
    pub base_url: Option<Url>,
    /// Required for anthropic; optional for openai (self-hosted servers need none).
    pub api_key: Option<Secret>,
    /// Bound of one model call, connect to last byte.
    pub timeout_ms: u64,
    /// Attempts per parse, the first included.
    pub max_attempts: u32,
    pub retry_base_delay_ms: u64,
    pub retry_max_delay_ms: u64,
    /// Output tokens the model may spend on one answer.
    pub max_tokens: u32,
    /// Bytes of an issue body that are read (and sent to a model).
    pub max_body_bytes: usize,
    /// Estimate used, with low confidence, when an issue gives none.
    pub default_estimate: u64,
    /// Difficulty used, with low confidence, when an issue gives none.
    pub default_difficulty: Difficulty,
    pub bounds: EstimateBounds,
    /// Model id → price; merged over the built-in list prices.
    pub prices: BTreeMap<String, ModelPrice>,
    /// After a model failed on an issue's content, the same content is not sent again for this
    /// long (the template's reading is used meanwhile); remembered across restarts.
    pub failure_backoff_secs: u64,
}

impl Default for ParserConfig {
    fn default() -> Self {
        let template = TemplateSettings::default();
        let retry = RetryPolicy::default();
        Self {
            provider: None,
            model: None,
            base_url: None,
            api_key: None,
            timeout_ms: 30_000,
            max_attempts: retry.max_attempts,
            retry_base_delay_ms: duration_ms(retry.base_delay),
            retry_max_delay_ms: duration_ms(retry.max_delay),
            max_tokens: 1_024,
            max_body_bytes: template.max_body_bytes,
            default_estimate: template.default_estimate,
            default_difficulty: template.default_difficulty,
            bounds: template.bounds,
            prices: BTreeMap::new(),
            failure_backoff_secs: 3_600,
        }
    }
}

fn duration_ms(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// A `[parser]` section that cannot work, with what to change.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParserConfigError {
    #[error(
        "parser.provider = \"anthropic\" needs an API key (parser.api_key or ANTHROPIC_API_KEY)"
    )]
    MissingApiKey,
    #[error("parser.base_url is not usable: {0}")]
    BaseUrl(String),
    #[error("could not build the HTTP client: {0}")]
    Http(String),
    #[error("parser.model must not be empty")]
    EmptyModel,
    #[error("parser.bounds must satisfy 0 < min <= max (got min {min}, max {max})")]
    Bounds { min: u64, max: u64 },
    #[error("parser.default_estimate ({estimate}) must lie within parser.bounds ({min}..={max})")]
    DefaultEstimate { estimate: u64, min: u64, max: u64 },
    #[error("parser.{0} must be greater than zero")]
    Zero(&'static str),
    #[error("parser.retry_base_delay_ms must not exceed parser.retry_max_delay_ms")]
    RetryDelays,
    #[error("parser.prices.{model} must be finite and not negative")]
    Price { model: String },
}

impl ParserConfig {
    /// The provider in effect: the configured one, else anthropic when a key is present.
    pub fn resolved_provider(&self) -> ProviderKind {
        self.provider.unwrap_or(if self.usable_api_key().is_some() {
            ProviderKind::Anthropic
        } else {
            ProviderKind::Template
        })
    }

    /// The API key unless it is empty (an exported but empty `ANTHROPIC_API_KEY` is no key).
    pub fn usable_api_key(&self) -> Option<&Secret> {
        self.api_key.as_ref().filter(|key| !key.is_empty())
    }

    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }

    pub fn retry_policy(&self) -> RetryPolicy {
        RetryPolicy {
            max_attempts: self.max_attempts,
            base_delay: Duration::from_millis(self.retry_base_delay_ms),
            max_delay: Duration::from_millis(self.retry_max_delay_ms),
        }
    }

    pub fn template_settings(&self) -> TemplateSettings {
        TemplateSettings {
            bounds: self.bounds,
            default_estimate: self.default_estimate,
            default_difficulty: self.default_difficulty,
            max_body_bytes: self.max_body_bytes,
        }
    }

    /// The configured price of `model`, else its built-in list price.
    pub fn price_for(&self, model: &str) -> Option<ModelPrice> {
        self.prices
            .get(model)
            .copied()
            .or_else(|| default_prices().get(model).copied())
    }

    /// Every problem that would only show at the first parse, reported at startup instead.
    pub fn validate(&self) -> Result<(), ParserConfigError> {
        let EstimateBounds { min, max } = self.bounds;
        if min == 0 || min > max {
            return Err(ParserConfigError::Bounds { min, max });
        }
        if !(min..=max).contains(&self.default_estimate) {
            return Err(ParserConfigError::DefaultEstimate {
                estimate: self.default_estimate,
                min,
                max,
            });
        }
        for (value, name) in [
            (self.timeout_ms, "timeout_ms"),
            (u64::from(self.max_attempts), "max_attempts"),
            (u64::from(self.max_tokens), "max_tokens"),
            (self.max_body_bytes as u64, "max_body_bytes"),
        ] {
            if value == 0 {
                return Err(ParserConfigError::Zero(name));
            }
        }
        if self.retry_base_delay_ms > self.retry_max_delay_ms {
            return Err(ParserConfigError::RetryDelays);
        }
        if let Some((model, _)) = self.prices.iter().find(|(_, price)| {
            !(price.input_per_mtok.is_finite()
                && price.output_per_mtok.is_finite()
                && price.input_per_mtok >= 0.0
                && price.output_per_mtok >= 0.0)
        }) {
            return Err(ParserConfigError::Price {
                model: model.clone(),
            });
        }
        if self
            .model
            .as_deref()
            .is_some_and(|model| model.trim().is_empty())
        {
            return Err(ParserConfigError::EmptyModel);
        }
        if let Some(url) = &self.base_url
            && !matches!(url.scheme(), "http" | "https")
        {
            return Err(ParserConfigError::BaseUrl(format!(
                "scheme `{}` is not http or https",
                url.scheme()
            )));
        }
        Ok(())
    }

    fn base_url_or(&self, default: &str) -> Result<Url, ParserConfigError> {
        match &self.base_url {
            Some(url) => Ok(url.clone()),
            None => {
                Url::parse(default).map_err(|error| ParserConfigError::BaseUrl(error.to_string()))
            }
        }
    }
}

/// The parser the configuration asks for. `agent_names` are the configured agents: the only
/// names any parser may output. `cache` holds validated model answers (the store's, in
/// production).
pub fn build_parser<I, S>(
    config: &ParserConfig,
    agent_names: I,
    cache: Arc<dyn ParseCache>,
) -> Result<Arc<dyn IssueParser>, ParserConfigError>
where
    I: IntoIterator<Item = S>,
    S: Into<String>,
{
    config.validate()?;
    let agents = KnownAgents::new(agent_names);
    let template = TemplateParser::new(config.template_settings(), agents);
    let client: Arc<dyn LlmClient> = match config.resolved_provider() {
        ProviderKind::Template => return Ok(Arc::new(template)),
        ProviderKind::Anthropic => {
            let api_key = config
                .usable_api_key()
                .cloned()
                .ok_or(ParserConfigError::MissingApiKey)?;
            let model = config.model.as_deref().unwrap_or(DEFAULT_ANTHROPIC_MODEL);
            Arc::new(AnthropicClient::new(
                &config.base_url_or(DEFAULT_ANTHROPIC_BASE_URL)?,
                model,
                api_key,
                config.timeout(),
                priced(config, model),
            )?)
        }
        ProviderKind::Openai => {
            let model = config.model.as_deref().unwrap_or(DEFAULT_OPENAI_MODEL);
            Arc::new(OpenAiClient::new(
                &config.base_url_or(DEFAULT_OPENAI_BASE_URL)?,
                model,
                config.usable_api_key().cloned(),
                config.timeout(),
                priced(config, model),
            )?)
        }
    };
    Ok(Arc::new(
        LlmParser::new(
            client,
            template,
            cache,
            config.retry_policy(),
            config.max_tokens,
        )
        .with_failure_backoff(Duration::from_secs(config.failure_backoff_secs)),
    ))
}

fn priced(config: &ParserConfig, model: &str) -> Option<ModelPrice> {
    let price = config.price_for(model);
    if price.is_none() {
        tracing::warn!(
            model,
            "no price configured for this model (parser.prices); its calls are recorded at $0"
        );
    }
    price
}

#[cfg(test)]
mod tests;
