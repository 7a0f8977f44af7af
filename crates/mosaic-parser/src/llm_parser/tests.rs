use std::time::Duration;

use mosaic_domain::Difficulty;
use serde_json::json;

use super::*;
use crate::agents::KnownAgents;
use crate::cache::{CacheError, InMemoryParseCache, MockParseCache};
use crate::llm::{LlmAnswer, MockLlmClient};
use crate::template::TemplateSettings;

fn input(body: &str) -> ParseInput {
    ParseInput {
        repository: "mosaic/coordinator".parse().unwrap(),
        number: 150,
        title: "Context monitor".to_owned(),
        body: body.to_owned(),
        labels: vec![],
    }
}

fn answer() -> LlmAnswer {
    LlmAnswer {
        value: json!({
            "estimated_context": 46800,
            "difficulty": "medium",
            "recommended_agent": "glm",
            "blocked_by": ["#151"],
            "blocks": [],
            "confidence": 0.9
        }),
        usage: LlmUsage {
            input_tokens: 1_000,
            output_tokens: 100,
            cost_usd: 0.0045,
        },
    }
}

fn mock_client() -> MockLlmClient {
    let mut client = MockLlmClient::new();
    client.expect_provider().return_const("mock".to_owned());
    client.expect_model().return_const("m1".to_owned());
    client
}

fn parser_with(client: MockLlmClient, cache: Arc<dyn ParseCache>) -> LlmParser {
    LlmParser::new(
        Arc::new(client),
        TemplateParser::new(
            TemplateSettings::default(),
            KnownAgents::new(["glm", "opus"]),
        ),
        cache,
        RetryPolicy {
            max_attempts: 3,
            base_delay: Duration::from_millis(1),
            max_delay: Duration::from_millis(5),
        },
        512,
    )
}

#[tokio::test]
async fn a_valid_answer_becomes_llm_metadata_and_is_cached() {
    let mut client = mock_client();
    client.expect_extract().times(1).returning(|_| Ok(answer()));
    let cache = Arc::new(InMemoryParseCache::new());
    let parser = parser_with(client, cache.clone());
    let first = parser.parse(&input("body")).await;
    assert_eq!(first.metadata.source, MetadataSource::Llm);
    assert_eq!(first.metadata.estimated_context, 46_800);
    assert_eq!(first.metadata.recommended_agent.as_deref(), Some("glm"));
    assert_eq!(first.usage.map(|u| u.input_tokens), Some(1_000));
    assert!(!first.from_cache);
    assert_eq!(cache.len(), 1);
    // The mock allows one call only: the second parse must come from the cache.
    let second = parser.parse(&input("body")).await;
    assert!(second.from_cache);
    assert_eq!(second.usage, None);
    assert_eq!(second.metadata, first.metadata);
}

#[tokio::test]
async fn retryable_failures_are_retried_then_fall_back_to_the_template() {
    let mut client = mock_client();
    client.expect_extract().times(3).returning(|_| {
        Err(LlmError::Overloaded {
            status: 529,
            retry_after: Some(Duration::from_millis(1)),
            message: "Overloaded".to_owned(),
        })
    });
    let cache = Arc::new(InMemoryParseCache::new());
    let parser = parser_with(client, cache.clone());
    let outcome = parser
        .parse(&input("Total estimated: 12k\nDifficulty: hard"))
        .await;
    assert_eq!(outcome.metadata.source, MetadataSource::Fallback);
    assert_eq!(outcome.metadata.estimated_context, 12_000);
    assert_eq!(outcome.metadata.difficulty, Difficulty::High);
    assert_eq!(
        outcome.llm_error.as_deref(),
        Some("the provider is overloaded (529): Overloaded")
    );
    assert_eq!(
        parser.health().last_error.as_deref(),
        Some("the provider is overloaded (529): Overloaded")
    );
    // The failure is remembered: the same content is not sent again within the back-off (the
    // mock allows three calls only), and the template's reading stands meanwhile.
    assert_eq!(cache.len(), 1, "the failure, not a result");
    let again = parser
        .parse(&input("Total estimated: 12k\nDifficulty: hard"))
        .await;
    assert_eq!(again.metadata.source, MetadataSource::Fallback);
    assert_eq!(again.metadata.estimated_context, 12_000);
    assert!(again.usage.is_none());
    assert!(
        again
            .llm_error
            .as_deref()
            .unwrap()
            .starts_with("not asked again within the failure back-off (3600 s)"),
        "{:?}",
        again.llm_error
    );
}

#[tokio::test]
async fn a_remembered_failure_expires_after_the_back_off() {
    let cache = Arc::new(InMemoryParseCache::new());
    let key = cache_key("mock", "m1", PROMPT_VERSION, &input("body"));
    // A failure remembered (by an earlier run) two hours ago.
    let old = RememberedFailure {
        failed_at: Utc::now() - chrono::Duration::hours(2),
        error: "boom".to_owned(),
    };
    cache
        .put(&failure_key(&key), &serde_json::to_string(&old).unwrap())
        .await
        .unwrap();
    let mut client = mock_client();
    client.expect_extract().times(1).returning(|_| Ok(answer()));
    let parser = parser_with(client, cache.clone());
    let outcome = parser.parse(&input("body")).await;
    assert_eq!(outcome.metadata.source, MetadataSource::Llm);
    // Within a shorter horizon it would have been skipped; a longer one skips it.
    let parser = parser_with(mock_client(), cache.clone())
        .with_failure_backoff(Duration::from_secs(3 * 3600));
    let other = input("another body");
    let other_key = cache_key("mock", "m1", PROMPT_VERSION, &other);
    cache
        .put(
            &failure_key(&other_key),
            &serde_json::to_string(&old).unwrap(),
        )
        .await
        .unwrap();
    let skipped = parser.parse(&other).await;
    assert_eq!(skipped.metadata.source, MetadataSource::Fallback);
}

#[tokio::test]
async fn a_missing_optional_field_keeps_the_answer_and_the_body_s_blockers_are_merged() {
    let mut client = mock_client();
    client.expect_extract().times(1).returning(|_| {
        let mut partial = answer();
        if let Some(object) = partial.value.as_object_mut() {
            object.remove("recommended_agent");
        }
        Ok(partial)
    });
    let parser = parser_with(client, Arc::new(InMemoryParseCache::new()));
    let outcome = parser
        .parse(&input("## Dependencies\n- Blocked by: #99\n"))
        .await;
    assert_eq!(outcome.metadata.source, MetadataSource::Llm, "{outcome:?}");
    assert_eq!(outcome.metadata.estimated_context, 46_800);
    let blockers: Vec<u64> = outcome
        .metadata
        .blocked_by
        .iter()
        .map(|r| r.number)
        .collect();
    assert_eq!(blockers, [151, 99], "the model's #151 and the body's #99");
}

#[tokio::test]
async fn auth_failures_are_not_retried_and_show_in_health() {
    let mut client = mock_client();
    client.expect_extract().times(1).returning(|_| {
        Err(LlmError::Auth {
            status: 401,
            message: "invalid x-api-key".to_owned(),
        })
    });
    let parser = parser_with(client, Arc::new(InMemoryParseCache::new()));
    let outcome = parser.parse(&input("")).await;
    assert_eq!(outcome.metadata.source, MetadataSource::Fallback);
    let health = parser.health();
    assert!(health.auth_failed);
    assert_eq!(health.provider, "mock");
}

#[tokio::test]
async fn invalid_answers_fail_once_and_keep_their_usage() {
    let mut client = mock_client();
    client.expect_extract().times(1).returning(|_| {
        let mut bad = answer();
        bad.value["difficulty"] = json!("impossible");
        Ok(bad)
    });
    let parser = parser_with(client, Arc::new(InMemoryParseCache::new()));
    let outcome = parser.parse(&input("")).await;
    assert_eq!(outcome.metadata.source, MetadataSource::Fallback);
    assert_eq!(outcome.usage.map(|u| u.output_tokens), Some(100));
    assert_eq!(
        outcome.llm_error.as_deref(),
        Some(
            "the model's answer is unusable: field `difficulty` has a value outside the schema: impossible"
        )
    );
    // Field by field: the answer's valid estimate and blocker count; its difficulty does not.
    assert_eq!(outcome.metadata.estimated_context, 46_800);
    assert_eq!(
        outcome.metadata.difficulty,
        Difficulty::Medium,
        "the default"
    );
    assert_eq!(outcome.metadata.blocked_by.len(), 1);
}

#[tokio::test]
async fn a_success_after_failures_clears_health_and_sums_usage() {
    let mut client = mock_client();
    let mut calls = 0;
    client.expect_extract().times(2).returning(move |_| {
        calls += 1;
        if calls == 1 {
            Err(LlmError::Server {
                status: 500,
                retry_after: None,
                message: "boom".to_owned(),
            })
        } else {
            Ok(answer())
        }
    });
    let parser = parser_with(client, Arc::new(InMemoryParseCache::new()));
    let outcome = parser.parse(&input("")).await;
    assert_eq!(outcome.metadata.source, MetadataSource::Llm);
    assert_eq!(outcome.llm_error, None);
    assert_eq!(parser.health().last_error, None);
}

#[tokio::test]
async fn cache_entries_are_checked_again_on_the_way_out() {
    let cache = Arc::new(InMemoryParseCache::new());
    let key = cache_key("mock", "m1", PROMPT_VERSION, &input("body"));
    // Written when `root-shell` was (hypothetically) configured, or tampered with.
    let stale = IssueMetadata {
        estimated_context: 9_000_000,
        difficulty: Difficulty::Low,
        recommended_agent: Some("root-shell".to_owned()),
        blocks: vec![],
        blocked_by: vec![],
        source: MetadataSource::Llm,
        confidence: 0.5,
    };
    cache
        .put(&key, &serde_json::to_string(&stale).unwrap())
        .await
        .unwrap();
    let client = mock_client();
    let parser = parser_with(client, cache.clone());
    let outcome = parser.parse(&input("body")).await;
    assert!(outcome.from_cache);
    assert_eq!(outcome.metadata.recommended_agent, None);
    assert_eq!(outcome.metadata.estimated_context, 2_000_000);

    // Unreadable entries are misses, not errors.
    cache.put(&key, "{not json").await.unwrap();
    let mut client = mock_client();
    client.expect_extract().times(1).returning(|_| Ok(answer()));
    let parser = parser_with(client, cache.clone());
    assert!(!parser.parse(&input("body")).await.from_cache);
}

#[tokio::test]
async fn a_failing_cache_does_not_stop_parsing() {
    let mut cache = MockParseCache::new();
    cache
        .expect_get()
        .returning(|_| Err(CacheError::new("database is locked")));
    cache
        .expect_put()
        .times(1)
        .returning(|_, _| Err(CacheError::new("database is locked")));
    let mut client = mock_client();
    client.expect_extract().times(1).returning(|_| Ok(answer()));
    let parser = parser_with(client, Arc::new(cache));
    let outcome = parser.parse(&input("body")).await;
    assert_eq!(outcome.metadata.source, MetadataSource::Llm);
}
