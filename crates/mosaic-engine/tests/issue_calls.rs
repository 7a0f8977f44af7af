//! How many Gitea calls one issue costs from assignment to done: the real engine (inbox,
//! dispatch, a scripted agent session) and the outbox worker, against the mock Gitea over
//! HTTP and the real SQLite store.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use chrono::Utc;
use mosaic_context::{
    AgentRuntime, AgentSession, ContextUsage, RuntimeError, SessionError, SessionId,
    SessionOutcome, SessionSnapshot, SessionTask,
};
use mosaic_domain::{
    AgentProfile, AgentProfiles, AssignmentPolicy, Difficulty, IssueRef, IssueState, PriorityOrder,
    RepoName,
};
use mosaic_engine::engine::{Engine, EngineConfig, EngineParts};
use mosaic_engine::inbox::{InboxConfig, InboxWorker};
use mosaic_engine::outbox::{OutboxConfig, OutboxWorker};
use mosaic_gitea::mock::{MockGitea, NewIssue};
use mosaic_gitea::{GiteaApi, GiteaClient, GiteaConfig};
use mosaic_parser::{KnownAgents, TemplateParser, TemplateSettings};
use mosaic_store::{IntakeStatus, NewDelivery, Store, StoreConfig};
use mosaic_store_sqlite::SqliteStore;
use tokio::sync::{Notify, watch};

const SMALL: &str = "## Context Estimate\n- **Total estimated: 20,000 tokens**\n\n## Difficulty\nmedium\n\n## Acceptance Criteria\n- [ ] it works\n";

#[derive(Debug)]
struct Session {
    id: SessionId,
    issue: IssueRef,
    state: watch::Sender<SessionSnapshot>,
}

#[async_trait]
impl AgentSession for Session {
    fn id(&self) -> &SessionId {
        &self.id
    }
    fn agent_type(&self) -> &str {
        "glm"
    }
    fn issue(&self) -> &IssueRef {
        &self.issue
    }
    fn process_id(&self) -> Option<u32> {
        None
    }
    async fn usage(&self) -> Result<Option<ContextUsage>, SessionError> {
        Ok(None)
    }
    async fn send(&self, _prompt: &str) -> Result<(), SessionError> {
        Ok(())
    }
    async fn compact(&self, _instructions: &str) -> Result<ContextUsage, SessionError> {
        Ok(ContextUsage::new(1_000, 128_000).unwrap())
    }
    async fn close(&self, _reason: &str) -> Result<SessionOutcome, SessionError> {
        Ok(self.outcome())
    }
    fn outcome(&self) -> SessionOutcome {
        self.state.borrow().outcome.clone()
    }
    fn latest_summary(&self) -> Option<String> {
        None
    }
    fn subscribe(&self) -> watch::Receiver<SessionSnapshot> {
        self.state.subscribe()
    }
}

#[derive(Debug, Default)]
struct Runtime {
    sessions: Mutex<Vec<Arc<Session>>>,
}

#[async_trait]
impl AgentRuntime for Runtime {
    async fn spawn_with_id(
        &self,
        id: SessionId,
        _profile: &AgentProfile,
        task: &SessionTask,
    ) -> Result<Arc<dyn AgentSession>, RuntimeError> {
        let (state, _) = watch::channel(SessionSnapshot::new(Utc::now()));
        let session = Arc::new(Session {
            id,
            issue: task.issue.clone(),
            state,
        });
        self.sessions.lock().unwrap().push(Arc::clone(&session));
        Ok(session)
    }
    fn can_compact(&self, _profile: &AgentProfile) -> bool {
        true
    }
}

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

struct Setup {
    _dir: tempfile::TempDir,
    store: Arc<dyn Store>,
    gitea: MockGitea,
    repo: RepoName,
    runtime: Arc<Runtime>,
    engine: Engine,
    /// `None` while the worker runs on its own task (`prompt`).
    outbox: Option<OutboxWorker>,
    _outbox_task: Option<tokio_util::sync::DropGuard>,
}

/// How the outbox delivers.
#[derive(Clone, Copy, PartialEq)]
enum Delivery {
    /// After the issue is done, from a backlog (as after an outage): rows are old, nothing
    /// waits to coalesce.
    Backlog,
    /// The worker runs as in `serve`, woken at every enqueue, with its default settings: each
    /// state is delivered as it happens.
    Prompt,
}

async fn setup(delivery: Delivery) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> =
        Arc::new(SqliteStore::open(&StoreConfig::sqlite(dir.path().join("s.db"))).unwrap());
    let (gitea, url) = MockGitea::start().await.unwrap();
    let client: Arc<dyn GiteaApi> =
        Arc::new(GiteaClient::new(&GiteaConfig::new(url, Some(gitea.bot_token()))).unwrap());
    let runtime = Arc::new(Runtime::default());
    let profiles = profiles();
    let (engine, _) = Engine::start(EngineParts {
        store: Arc::clone(&store),
        parser: Arc::new(TemplateParser::new(
            TemplateSettings::default(),
            KnownAgents::new(profiles.names()),
        )),
        gitea: Some(Arc::clone(&client)),
        acts_for: MockGitea::BOT_LOGIN.into(),
        bot_login: MockGitea::BOT_LOGIN.into(),
        redactor: mosaic_security::Redactor::default(),
        profiles,
        policy: AssignmentPolicy::default(),
        priorities: PriorityOrder::default(),
        runtime: runtime.clone(),
        config: EngineConfig::default(),
        workspaces: None,
    })
    .await
    .unwrap();
    let config = match delivery {
        Delivery::Backlog => OutboxConfig {
            coalesce_ms: 0,
            ..OutboxConfig::default()
        },
        Delivery::Prompt => OutboxConfig::default(),
    };
    let outbox = OutboxWorker::new(Arc::clone(&store), client, Arc::new(Notify::new()), config)
        .with_bot_login(MockGitea::BOT_LOGIN);
    let (outbox, outbox_task) = match delivery {
        Delivery::Backlog => (Some(outbox), None),
        Delivery::Prompt => {
            let cancel = tokio_util::sync::CancellationToken::new();
            tokio::spawn(outbox.run(cancel.clone()));
            (None, Some(cancel.drop_guard()))
        }
    };
    Setup {
        _dir: dir,
        store,
        gitea,
        repo: "acme/widgets".parse().unwrap(),
        runtime,
        engine,
        outbox,
        _outbox_task: outbox_task,
    }
}

/// Waits until `check` holds (10 s at most).
async fn until(what: &str, mut check: impl FnMut() -> bool) {
    for _ in 0..500 {
        if check() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("timed out waiting for {what}");
}

impl Setup {
    /// Records a delivery of `action` on `issue` (sent by `sender`) and lets the inbox
    /// handle it.
    async fn deliver(&self, issue: &IssueRef, action: &str, sender: &str, id: &str) {
        self.record(issue, action, sender, id).await;
        InboxWorker::new(
            Arc::clone(&self.store),
            Arc::new(self.engine.clone()),
            Arc::new(Notify::new()),
            InboxConfig::default(),
        )
        .run_once()
        .await
        .unwrap();
    }

    /// Records a delivery of `action` on `issue`, not handled yet.
    async fn record(&self, issue: &IssueRef, action: &str, sender: &str, id: &str) {
        let event = self.gitea.issue_event(issue, action, sender).unwrap();
        let body = serde_json::to_vec(&event).unwrap();
        self.store
            .record_delivery(NewDelivery {
                delivery_id: Some(id.to_owned()),
                event: "issues".into(),
                event_type: Some(format!("issue_{action}")),
                action: Some(action.into()),
                repository: Some(self.repo.to_string()),
                issue_number: Some(issue.number),
                body_sha256: body_digest_for(id),
                body,
                status: IntakeStatus::Pending,
                received_at: Utc::now(),
            })
            .await
            .unwrap();
    }

    /// Assigns a new issue and dispatches it; with prompt delivery, returns once Gitea shows
    /// it in progress. Gitea's request log starts at the assignment.
    async fn start(&self, n: u8) -> (IssueRef, Arc<Session>) {
        let issue = self.gitea.create_issue(
            &self.repo,
            NewIssue::titled("Add caching")
                .body(SMALL)
                .assigned_to(MockGitea::BOT_LOGIN),
        );
        self.gitea.clear_requests();
        self.deliver(&issue, "assigned", "alice", &format!("hook-{n}"))
            .await;
        assert_eq!(self.engine.dispatch_once().await, 1);
        let session = self
            .runtime
            .sessions
            .lock()
            .unwrap()
            .last()
            .unwrap()
            .clone();
        assert_eq!(session.issue, issue);
        if self.outbox.is_none() {
            // Delivered as it happens: the session works on while Gitea shows it in progress.
            until("the in-progress label", || {
                self.gitea
                    .issue_labels(&issue)
                    .contains(&"mosaic:in-progress".to_owned())
            })
            .await;
        }
        (issue, session)
    }

    /// Ends the session with success and waits until the outbox delivered everything;
    /// returns the Gitea calls made since [`Self::start`] ("METHOD path").
    async fn finish(&self, issue: &IssueRef, session: &Session) -> Vec<String> {
        session.state.send_modify(|snapshot| {
            snapshot.outcome = SessionOutcome::Succeeded {
                summary: "Implemented it.".into(),
                tokens: 12_345,
                cost_usd: Some(0.5),
            };
        });
        for _ in 0..250 {
            let state = self.store.get_issue(issue).await.unwrap().map(|r| r.state);
            if state == Some(IssueState::Completed) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let record = self.store.get_issue(issue).await.unwrap().unwrap();
        assert_eq!(record.state, IssueState::Completed);

        // The outbox delivers what the engine queued (queued, in progress, done).
        match &self.outbox {
            Some(outbox) => while outbox.run_once().await.unwrap() > 0 {},
            None => {
                until("the finished comment and the done label", || {
                    self.gitea.comments(issue).len() == 2
                        && self
                            .gitea
                            .issue_labels(issue)
                            .contains(&"mosaic:done".to_owned())
                })
                .await;
                // Let anything still on its way arrive, so that it is counted.
                tokio::time::sleep(Duration::from_millis(2_000)).await;
            }
        }
        assert_eq!(self.store.outbox_backlog().await.unwrap().pending, 0);
        // What Gitea shows afterwards: the status comment (saying done) and the finished
        // comment.
        let comments = self.gitea.comments(issue);
        assert_eq!(comments.len(), 2, "{comments:#?}");
        assert!(
            comments.iter().any(|c| c.body.contains("Implemented it.")),
            "{comments:#?}"
        );
        self.gitea
            .requests()
            .iter()
            .map(|r| format!("{} {}", r.method, r.path))
            .collect()
    }

    /// Assigns a new issue, runs its session to success, delivers the outbox; returns the
    /// Gitea calls made meanwhile ("METHOD path").
    async fn issue_to_done(&self, n: u8) -> (IssueRef, Vec<String>) {
        let (issue, session) = self.start(n).await;
        let calls = self.finish(&issue, &session).await;
        assert_eq!(self.gitea.issue_labels(&issue), vec!["mosaic:done"]);
        (issue, calls)
    }

    /// The id of the bot's status comment on `issue`.
    fn status_comment_id(&self, issue: &IssueRef) -> i64 {
        self.gitea
            .comments(issue)
            .iter()
            .find(|comment| comment.body.contains("<!-- mosaic:status -->"))
            .expect("a status comment")
            .id
    }
}

/// A distinct body digest per delivery id (the store deduplicates by body hash too).
fn body_digest_for(id: &str) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(id.as_bytes()).into()
}

#[tokio::test]
async fn an_issue_from_assignment_to_done_costs_at_most_six_gitea_calls_from_a_backlog() {
    let s = setup(Delivery::Backlog).await;
    // The first issue in a repository also lists its labels and creates the missing state
    // label: once per repository, not per issue.
    let (_, first) = s.issue_to_done(1).await;
    let per_repository: Vec<&String> = first
        .iter()
        .filter(|call| call.ends_with("/repos/acme/widgets/labels"))
        .collect();
    assert_eq!(per_repository.len(), 2, "{first:#?}");
    assert!(first.len() - per_repository.len() <= 6, "{first:#?}");

    let (issue, second) = s.issue_to_done(2).await;
    let n = issue.number;
    let prefix = "/api/v1/repos/acme/widgets/issues";
    assert_eq!(
        second,
        vec![
            // The engine: are there blockers?
            format!("GET {prefix}/{n}/dependencies"),
            // The status comment, only its last text: the earlier ones were superseded before
            // anything sent them, so there is none yet and no search.
            format!("POST {prefix}/{n}/comments"),
            // The state label (only the last one is sent), by its remembered id.
            format!("POST {prefix}/{n}/labels"),
            // The finished comment, first attempt: no search.
            format!("POST {prefix}/{n}/comments"),
        ],
        "{second:#?}"
    );
}

#[tokio::test]
async fn an_issue_from_assignment_to_done_costs_at_most_six_gitea_calls_delivered_as_it_happens() {
    let s = setup(Delivery::Prompt).await;
    let (_, first) = s.issue_to_done(1).await;
    // Once per repository: its labels listed, and each state label created when first used.
    let per_repository = first
        .iter()
        .filter(|call| call.ends_with("/repos/acme/widgets/labels"))
        .count();
    assert_eq!(per_repository, 3, "{first:#?}");
    assert!(first.len() - per_repository <= 6, "{first:#?}");

    let (issue, second) = s.issue_to_done(2).await;
    let n = issue.number;
    let prefix = "/api/v1/repos/acme/widgets/issues";
    assert_eq!(
        second,
        vec![
            // The engine: are there blockers?
            format!("GET {prefix}/{n}/dependencies"),
            // Queued, then dispatched at once: the queued state waited to coalesce and was
            // replaced before it was sent. The status comment is new (nothing was ever sent
            // for this issue): created without a search.
            format!("POST {prefix}/{n}/comments"),
            // The in-progress label, by its remembered id; Gitea answers with all the labels.
            format!("POST {prefix}/{n}/labels"),
            // Done: the status comment edited by its remembered id.
            format!(
                "PATCH /api/v1/repos/acme/widgets/issues/comments/{}",
                s.status_comment_id(&issue)
            ),
            // In progress → done in one call, from the labels Gitea last reported.
            format!("PUT {prefix}/{n}/labels"),
            // The finished comment, first attempt: no search.
            format!("POST {prefix}/{n}/comments"),
        ],
        "{second:#?}"
    );
}

/// While the agent works, someone labels the issue; Gitea's webhook about it is handled
/// (`handled`) or only recorded when the issue is done. The one-call state label write must
/// keep the person's label either way.
async fn a_persons_label_survives_the_done_label(handled: bool) {
    let s = setup(Delivery::Prompt).await;
    let (issue, session) = s.start(1).await;
    assert!(s.gitea.add_issue_label(&issue, "priority:high"));
    if handled {
        s.deliver(&issue, "label_updated", "alice", "hook-label")
            .await;
    } else {
        // The stored snapshot still shows the old labels.
        s.record(&issue, "label_updated", "alice", "hook-label")
            .await;
    }
    let calls = s.finish(&issue, &session).await;
    let mut labels = s.gitea.issue_labels(&issue);
    labels.sort();
    assert_eq!(labels, vec!["mosaic:done", "priority:high"], "{calls:#?}");
}

#[tokio::test]
async fn a_label_someone_added_meanwhile_is_kept_when_the_state_label_changes() {
    a_persons_label_survives_the_done_label(true).await;
}

#[tokio::test]
async fn a_label_someone_added_is_kept_while_its_webhook_waits_to_be_handled() {
    a_persons_label_survives_the_done_label(false).await;
}
