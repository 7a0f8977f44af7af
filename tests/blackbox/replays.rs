//! Possible replays end to end (the built binary, the mock Gitea over real HTTP, signed
//! deliveries): Gitea's `updated_at` has one-second resolution, so assign → unassign → assign
//! within a second sends the first body again, byte for byte, under a new delivery id. Such a
//! delivery is accepted and handled after the coordinator asked Gitea, never dropped as a
//! duplicate; an old body sent again changes nothing.

use std::sync::Arc;
use std::time::{Duration, Instant};

use hmac::{Hmac, KeyInit, Mac};
use mosaic_domain::{IssueRef, IssueState, RepoName};
use mosaic_gitea::mock::{MockGitea, NewIssue};
use mosaic_store::{DeliveryStatus, Store, StoreConfig};
use mosaic_store_sqlite::SqliteStore;
use serde_json::Value;

use crate::helpers::{Running, SECRET, binary};

/// Waits on an open issue, so no session starts (the configuration has no agent command) and
/// the states stay what the deliveries make them.
const BODY: &str = "## Context Estimate\n- Total estimated: 20,000 tokens\n\n## Difficulty\nlow\n\n\
                    ## Dependencies\n- Blocked by: #1\n";

struct Replays {
    gitea: MockGitea,
    app: Running,
    store: Arc<dyn Store>,
    issue: IssueRef,
}

impl Replays {
    async fn start() -> Self {
        let (gitea, url) = MockGitea::start().await.unwrap();
        let repo: RepoName = "e2e/app".parse().unwrap();
        gitea.create_repo(&repo);
        gitea.create_repo(&"e2e/elsewhere".parse().unwrap());
        gitea.create_issue(&repo, NewIssue::titled("the blocker").by("alice"));
        let issue = gitea.create_issue(
            &repo,
            NewIssue::titled("assigned twice")
                .body(BODY)
                .by("alice")
                .assigned_to(MockGitea::BOT_LOGIN),
        );
        let data = tempfile::tempdir().unwrap();
        let config = data.path().join("mosaic-replays.toml");
        std::fs::write(
            &config,
            format!(
                "[gitea]\nurl = {}\ntoken = {}\nreconcile_interval_secs = 3600\n\
                 repositories = [\"e2e/elsewhere\"]\n\n[inbox]\nidle_poll_ms = 100\n\n\
                 [engine]\ndispatch_poll_ms = 100\n\n\
                 [runner]\nwork_root = {}\n\n\
                 [runner.agents.glm]\nprogram = {}\nargs = [\"sample-agent\"]\n\
                 input = \"json_lines\"\n",
                serde_json::to_string(url.as_str()).unwrap(),
                serde_json::to_string(MockGitea::BOT_TOKEN).unwrap(),
                serde_json::to_string(&data.path().join("work").display().to_string()).unwrap(),
                serde_json::to_string(&binary("mosaic-coordinator").display().to_string()).unwrap(),
            ),
        )
        .unwrap();
        let app =
            tokio::task::spawn_blocking(move || Running::start_configured(data, &config, &[]))
                .await
                .unwrap();
        let store: Arc<dyn Store> = Arc::new(
            SqliteStore::open(&StoreConfig::sqlite(app.data.path().join("mosaic.db"))).unwrap(),
        );
        Self {
            gitea,
            app,
            store,
            issue,
        }
    }

    /// The `issues` delivery Gitea would send for the issue as the mock shows it now.
    fn event(&self, action: &str) -> Vec<u8> {
        serde_json::to_vec(
            &self
                .gitea
                .issue_event(&self.issue, action, "alice")
                .unwrap(),
        )
        .unwrap()
    }

    /// Posts `body`, signed, under `delivery_id`; returns the answer.
    async fn post(&self, body: &[u8], delivery_id: &str) -> Value {
        let mut mac = Hmac::<sha2::Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
        mac.update(body);
        let response = self
            .app
            .client
            .post(self.app.url("/webhook/gitea"))
            .header("content-type", "application/json")
            .header("x-gitea-event", "issues")
            .header("x-gitea-event-type", "issue_assign")
            .header("x-gitea-delivery", delivery_id)
            .header(
                "x-gitea-signature",
                hex::encode(mac.finalize().into_bytes()),
            )
            .body(body.to_vec())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        response.json().await.unwrap()
    }

    /// Waits until no delivery is pending (every one handled).
    async fn settled(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let rows = self.store.recent_deliveries(None, 50).await.unwrap();
            if rows.iter().all(|row| row.status != DeliveryStatus::Pending) {
                assert!(
                    rows.iter().all(|row| row.status != DeliveryStatus::Failed),
                    "{rows:?}"
                );
                return;
            }
            assert!(
                Instant::now() < deadline,
                "deliveries still pending: {rows:?}\n{}",
                self.app.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn steps(&self) -> Vec<(Option<IssueState>, IssueState)> {
        self.store
            .issue_history(&self.issue)
            .await
            .unwrap()
            .iter()
            .map(|t| (t.from, t.to))
            .collect()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn assign_unassign_assign_within_a_second_ends_assigned_and_queued() {
    let s = Replays::start().await;
    let assigned = s.event("assigned");
    assert_eq!(s.post(&assigned, "gitea-1").await["status"], "accepted");
    s.settled().await;
    s.gitea.set_assignees(&s.issue, &["alice"]);
    s.post(&s.event("unassigned"), "gitea-2").await;
    s.settled().await;
    assert_eq!(
        s.steps().await.last(),
        Some(&(Some(IssueState::Blocked), IssueState::Cancelled))
    );

    // Assigned again within the same second: the same bytes as the first delivery.
    s.gitea
        .set_assignees(&s.issue, &["alice", MockGitea::BOT_LOGIN]);
    let answer = s.post(&assigned, "gitea-3").await;
    assert_eq!(answer["status"], "accepted", "{answer}");
    assert_eq!(answer["possible_replay"], true, "{answer}");
    // Gitea redelivering that delivery is a duplicate.
    assert_eq!(s.post(&assigned, "gitea-3").await["status"], "duplicate");
    s.settled().await;
    let steps = s.steps().await;
    assert!(
        steps.contains(&(Some(IssueState::Cancelled), IssueState::Pending)),
        "the repeat was honoured: {steps:?}"
    );
    let record = s.store.get_issue(&s.issue).await.unwrap().unwrap();
    assert_eq!(record.state, IssueState::Blocked, "{steps:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_old_delivery_sent_again_changes_nothing() {
    let s = Replays::start().await;
    let assigned = s.event("assigned");
    s.post(&assigned, "gitea-1").await;
    s.settled().await;
    s.gitea.set_assignees(&s.issue, &[]);
    s.post(&s.event("unassigned"), "gitea-2").await;
    s.settled().await;
    let before = s.steps().await;
    assert_eq!(
        before.last(),
        Some(&(Some(IssueState::Blocked), IssueState::Cancelled))
    );

    let answer = s.post(&assigned, "someone-else-1").await;
    assert_eq!(answer["possible_replay"], true, "{answer}");
    s.settled().await;
    assert_eq!(s.steps().await, before);
    assert_eq!(
        s.store.get_issue(&s.issue).await.unwrap().unwrap().state,
        IssueState::Cancelled
    );
}
