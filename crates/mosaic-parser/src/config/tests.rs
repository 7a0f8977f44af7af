use super::*;
use crate::cache::InMemoryParseCache;

/// The section as JSON: the same serde shape the binary reads from TOML.
fn config(json: &str) -> ParserConfig {
    serde_json::from_str(json).unwrap()
}

#[test]
fn defaults_match_the_issue() {
    let config = config("{}");
    assert_eq!(config.resolved_provider(), ProviderKind::Template);
    assert_eq!(config.timeout(), Duration::from_secs(30));
    assert_eq!(config.max_attempts, 3);
    assert_eq!(
        config.bounds,
        EstimateBounds {
            min: 1_000,
            max: 2_000_000
        }
    );
    assert_eq!(config.validate(), Ok(()));
    assert_eq!(
        config.price_for(DEFAULT_ANTHROPIC_MODEL),
        Some(ModelPrice {
            input_per_mtok: 3.0,
            output_per_mtok: 15.0
        })
    );
}

#[test]
fn an_api_key_makes_anthropic_the_default() {
    let config = config(r#"{ "api_key": "sk-ant-test" }"#);
    assert_eq!(config.resolved_provider(), ProviderKind::Anthropic);
    assert!(!format!("{config:?}").contains("sk-ant-test"));
    let explicit = self::config(r#"{ "api_key": "k", "provider": "template" }"#);
    assert_eq!(explicit.resolved_provider(), ProviderKind::Template);
    let empty = self::config(r#"{ "api_key": "" }"#);
    assert_eq!(empty.resolved_provider(), ProviderKind::Template);
}

#[test]
fn configured_prices_override_and_extend_the_list() {
    let config = config(
        r#"{ "prices": { "gpt-4o": { "input_per_mtok": 1.0, "output_per_mtok": 2.0 },
                          "local-qwen": { "input_per_mtok": 0.0, "output_per_mtok": 0.0 } } }"#,
    );
    assert_eq!(
        config.price_for("gpt-4o").map(|p| p.input_per_mtok),
        Some(1.0)
    );
    assert_eq!(
        config.price_for("local-qwen").map(|p| p.output_per_mtok),
        Some(0.0)
    );
    assert_eq!(config.price_for("unknown-model"), None);
}

#[test]
fn unusable_sections_are_rejected_with_the_field_named() {
    let check = |json: &str, expect: &str| {
        let error = config(json).validate().unwrap_err();
        assert_eq!(error.to_string(), expect, "{json}");
    };
    check(
        r#"{ "bounds": { "min": 0, "max": 10 } }"#,
        "parser.bounds must satisfy 0 < min <= max (got min 0, max 10)",
    );
    check(
        r#"{ "bounds": { "min": 10, "max": 5 }, "default_estimate": 7 }"#,
        "parser.bounds must satisfy 0 < min <= max (got min 10, max 5)",
    );
    check(
        r#"{ "default_estimate": 10 }"#,
        "parser.default_estimate (10) must lie within parser.bounds (1000..=2000000)",
    );
    check(
        r#"{ "max_attempts": 0 }"#,
        "parser.max_attempts must be greater than zero",
    );
    check(
        r#"{ "timeout_ms": 0 }"#,
        "parser.timeout_ms must be greater than zero",
    );
    check(
        r#"{ "retry_base_delay_ms": 10, "retry_max_delay_ms": 1 }"#,
        "parser.retry_base_delay_ms must not exceed parser.retry_max_delay_ms",
    );
    check(
        r#"{ "prices": { "m": { "input_per_mtok": -1.0, "output_per_mtok": 0.0 } } }"#,
        "parser.prices.m must be finite and not negative",
    );
    check(r#"{ "model": " " }"#, "parser.model must not be empty");
    check(
        r#"{ "base_url": "file:///etc/passwd" }"#,
        "parser.base_url is not usable: scheme `file` is not http or https",
    );
}

#[test]
fn unknown_fields_and_providers_are_rejected() {
    assert!(serde_json::from_str::<ParserConfig>(r#"{ "provder": "openai" }"#).is_err());
    assert!(serde_json::from_str::<ParserConfig>(r#"{ "provider": "gemini" }"#).is_err());
}

#[tokio::test]
async fn build_parser_picks_the_configured_provider() {
    let cache = Arc::new(InMemoryParseCache::new());
    let agents = ["glm", "opus"];
    let template = build_parser(&config("{}"), agents, cache.clone()).unwrap();
    assert_eq!(template.health().provider, "template");
    let anthropic = build_parser(&config(r#"{ "api_key": "k" }"#), agents, cache.clone()).unwrap();
    assert_eq!(anthropic.health().provider, "anthropic");
    assert_eq!(
        anthropic.health().model.as_deref(),
        Some(DEFAULT_ANTHROPIC_MODEL)
    );
    let openai = build_parser(
        &config(
            r#"{ "provider": "openai", "base_url": "http://localhost:11434", "model": "qwen3" }"#,
        ),
        agents,
        cache.clone(),
    )
    .unwrap();
    assert_eq!(openai.health().provider, "openai");
    assert_eq!(openai.health().model.as_deref(), Some("qwen3"));
    let missing_key = build_parser(&config(r#"{ "provider": "anthropic" }"#), agents, cache);
    assert_eq!(missing_key.err(), Some(ParserConfigError::MissingApiKey));
}
