//! The inbox against a slow Gitea: 2,000 "assigned" deliveries of 2,000 issues, recorded in a
//! SQLite store, handled by the engine's inbox worker while the mock Gitea answers every
//! request after 40 ms. Measures the time until every delivery is processed and its issue
//! queued, one issue at a time (`max_concurrent_issues = 1`, the former sequential worker)
//! and with the default bound.
//!
//! `cargo run --release -p mosaic-engine --example inbox_slow_gitea [deliveries] [latency_ms]
//! [concurrency,…]` (defaults: 2000, 40, "1,16").
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use mosaic_context::MockAgentRuntime;
use mosaic_domain::{
    AgentProfile, AgentProfiles, AssignmentPolicy, Difficulty, IssueRef, IssueState, PriorityOrder,
    RepoName,
};
use mosaic_engine::engine::{Engine, EngineConfig, EngineParts};
use mosaic_engine::inbox::{InboxConfig, InboxWorker};
use mosaic_gitea::mock::{MockGitea, NewIssue};
use mosaic_gitea::{GiteaApi, GiteaClient, GiteaConfig};
use mosaic_parser::{KnownAgents, TemplateParser, TemplateSettings};
use mosaic_store::{IntakeStatus, NewDelivery, Store, StoreConfig};
use mosaic_store_sqlite::SqliteStore;
use sha2::{Digest, Sha256};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

const SMALL: &str = "## Context Estimate\n- **Total estimated: 20,000 tokens**\n\n## Difficulty\nmedium\n\n## Acceptance Criteria\n- [ ] it works\n";

fn profiles() -> AgentProfiles {
    AgentProfiles::new(vec![AgentProfile {
        name: "glm".into(),
        context_window: 128_000,
        cost_input_per_mtok: 0.0,
        cost_output_per_mtok: 0.0,
        max_difficulty: Difficulty::High,
        self_hosted: true,
        enabled: true,
        compact_threshold: None,
        rotate_threshold: None,
    }])
    .unwrap()
}

/// Records one "assigned" delivery per issue (as intake would), runs the inbox worker with
/// `max_concurrent_issues` and returns the time until all are processed.
async fn run(gitea: &MockGitea, issues: &[IssueRef], max_concurrent_issues: u32) -> Duration {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> =
        Arc::new(SqliteStore::open(&StoreConfig::sqlite(dir.path().join("inbox.db"))).unwrap());
    for issue in issues {
        let body =
            serde_json::to_vec(&gitea.issue_event(issue, "assigned", "alice").unwrap()).unwrap();
        store
            .record_delivery(NewDelivery {
                delivery_id: Some(format!("hook-{}", issue.number)),
                event: "issues".into(),
                event_type: Some("issue_assign".into()),
                action: Some("assigned".into()),
                repository: Some(issue.repo.to_string()),
                issue_number: Some(issue.number),
                body_sha256: Sha256::digest(&body).into(),
                body,
                status: IntakeStatus::Pending,
                received_at: Utc::now(),
            })
            .await
            .unwrap();
    }
    let client = GiteaClient::new(&GiteaConfig::new(
        gitea.base_url().clone(),
        Some(gitea.bot_token()),
    ))
    .unwrap();
    let profiles = profiles();
    let (engine, _) = Engine::start(EngineParts {
        store: Arc::clone(&store),
        parser: Arc::new(TemplateParser::new(
            TemplateSettings::default(),
            KnownAgents::new(profiles.names()),
        )),
        gitea: Some(Arc::new(client) as Arc<dyn GiteaApi>),
        acts_for: MockGitea::BOT_LOGIN.into(),
        bot_login: MockGitea::BOT_LOGIN.into(),
        redactor: mosaic_security::Redactor::default(),
        profiles,
        policy: AssignmentPolicy::default(),
        priorities: PriorityOrder::default(),
        // No dispatcher runs: nothing is ever started.
        runtime: Arc::new(MockAgentRuntime::new()),
        config: EngineConfig::default(),
        workspaces: None,
    })
    .await
    .unwrap();
    let worker = InboxWorker::new(
        Arc::clone(&store),
        Arc::new(engine),
        Arc::new(Notify::new()),
        InboxConfig {
            max_concurrent_issues,
            ..InboxConfig::default()
        },
    );
    let cancel = CancellationToken::new();
    let started = Instant::now();
    let running = tokio::spawn(worker.run(cancel.clone()));
    loop {
        let counts = store.delivery_counts().await.unwrap();
        assert_eq!(counts.failed, 0, "a delivery failed");
        if counts.processed as usize == issues.len() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let elapsed = started.elapsed();
    cancel.cancel();
    running.await.unwrap();
    for issue in issues {
        let state = store.get_issue(issue).await.unwrap().map(|r| r.state);
        assert_eq!(state, Some(IssueState::Ready), "{issue} queued");
    }
    elapsed
}

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let deliveries: u64 = args.next().map_or(2_000, |n| n.parse().unwrap());
    let latency = Duration::from_millis(args.next().map_or(40, |ms| ms.parse().unwrap()));
    let (gitea, _) = MockGitea::start().await.unwrap();
    let repo: RepoName = "bench/widgets".parse().unwrap();
    let issues: Vec<IssueRef> = (0..deliveries)
        .map(|n| {
            gitea.create_issue(
                &repo,
                NewIssue::titled(&format!("Issue {n}"))
                    .body(SMALL)
                    .assigned_to(MockGitea::BOT_LOGIN),
            )
        })
        .collect();
    gitea.set_latency(latency);
    println!(
        "{deliveries} \"assigned\" deliveries of {deliveries} issues, Gitea answering in {} ms",
        latency.as_millis()
    );
    let bounds: Vec<u32> = args.next().map_or_else(
        || vec![1, InboxConfig::default().max_concurrent_issues],
        |list| list.split(',').map(|n| n.parse().unwrap()).collect(),
    );
    for concurrency in bounds {
        gitea.clear_requests();
        let elapsed = run(&gitea, &issues, concurrency).await;
        println!(
            "max_concurrent_issues = {concurrency:>2}: all queued after {:>6.2} s ({:.0} deliveries/s, {} Gitea requests)",
            elapsed.as_secs_f64(),
            deliveries as f64 / elapsed.as_secs_f64(),
            gitea.requests().len(),
        );
    }
}
