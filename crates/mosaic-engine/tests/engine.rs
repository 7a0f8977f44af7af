//! The engine against a real SQLite store, the template parser and a scripted agent runtime.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{TimeZone, Utc};
use mosaic_context::{
    AgentRuntime, AgentSession, ContextUsage, KillReason, RuntimeError, SessionError, SessionId,
    SessionOutcome, SessionSnapshot, SessionTask,
};
use mosaic_domain::{
    AgentProfile, AgentProfiles, AssignmentPolicy, Difficulty, IssueRef, IssueState, PriorityOrder,
};
use mosaic_engine::effects::GiteaWrite;
use mosaic_engine::engine::{Engine, EngineConfig, EngineError, EngineParts};
use mosaic_engine::inbox::{DeliveryHandler, InboxConfig, InboxWorker};
use mosaic_parser::{KnownAgents, TemplateParser, TemplateSettings};
use mosaic_security::{Redactor, Secret};
use mosaic_store::{
    Delivery, IntakeStatus, NewDelivery, RecordOutcome, SessionOutcome as Stored, Store,
    StoreConfig,
};
use mosaic_store_sqlite::SqliteStore;
use tokio::sync::{Notify, watch};

const BOT: &str = "mosaic-bot";
const FIXTURE: &[u8] = include_bytes!("../../../tests/fixtures/gitea/issue-assign-event.json");

// ----- a scripted agent runtime -----

#[derive(Debug)]
struct FakeSession {
    id: SessionId,
    agent: String,
    issue: IssueRef,
    state: watch::Sender<SessionSnapshot>,
    closed: Mutex<Option<String>>,
}

impl FakeSession {
    fn finish(&self, outcome: SessionOutcome) {
        self.state
            .send_modify(|snapshot| snapshot.outcome = outcome);
    }
}

#[async_trait]
impl AgentSession for FakeSession {
    fn id(&self) -> &SessionId {
        &self.id
    }
    fn agent_type(&self) -> &str {
        &self.agent
    }
    fn issue(&self) -> &IssueRef {
        &self.issue
    }
    fn process_id(&self) -> Option<u32> {
        None
    }
    async fn usage(&self) -> Result<Option<ContextUsage>, SessionError> {
        Ok(self.state.borrow().usage)
    }
    async fn send(&self, _prompt: &str) -> Result<(), SessionError> {
        Ok(())
    }
    async fn compact(&self, _instructions: &str) -> Result<ContextUsage, SessionError> {
        Ok(ContextUsage::new(1_000, 128_000).unwrap())
    }
    async fn close(&self, reason: &str) -> Result<SessionOutcome, SessionError> {
        *self.closed.lock().unwrap() = Some(reason.to_owned());
        let outcome = SessionOutcome::Killed {
            reason: KillReason::Closed {
                reason: reason.to_owned(),
            },
        };
        self.finish(outcome.clone());
        Ok(outcome)
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
struct FakeRuntime {
    sessions: Mutex<Vec<Arc<FakeSession>>>,
    spawns: AtomicU32,
}

impl FakeRuntime {
    fn sessions(&self) -> Vec<Arc<FakeSession>> {
        self.sessions.lock().unwrap().clone()
    }
    fn running(&self) -> Vec<Arc<FakeSession>> {
        self.sessions()
            .into_iter()
            .filter(|s| s.outcome().is_running())
            .collect()
    }
}

#[async_trait]
impl AgentRuntime for FakeRuntime {
    async fn spawn_with_id(
        &self,
        id: SessionId,
        profile: &AgentProfile,
        task: &SessionTask,
    ) -> Result<Arc<dyn AgentSession>, RuntimeError> {
        self.spawns.fetch_add(1, Ordering::SeqCst);
        let (state, _) = watch::channel(SessionSnapshot::new(Utc::now()));
        let session = Arc::new(FakeSession {
            id,
            agent: profile.name.clone(),
            issue: task.issue.clone(),
            state,
            closed: Mutex::new(None),
        });
        self.sessions.lock().unwrap().push(Arc::clone(&session));
        Ok(session)
    }
    fn can_compact(&self, _profile: &AgentProfile) -> bool {
        true
    }
}

// ----- set-up -----

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

struct Harness {
    _dir: tempfile::TempDir,
    path: std::path::PathBuf,
    store: Arc<dyn Store>,
    runtime: Arc<FakeRuntime>,
    engine: Engine,
    seq: AtomicU32,
}

/// Secrets the engine's redactor knows, as the binary configures them.
const BOT_TOKEN: &str = "b0t-t0ken-5f2c9a7e1d";
const WEBHOOK_SECRET: &str = "whsec-8d1e4b7c2a9f";

fn parts(store: Arc<dyn Store>, runtime: Arc<FakeRuntime>, config: EngineConfig) -> EngineParts {
    parts_for(store, runtime, config, BOT)
}

/// The engine working for `assignee` while the bot's own login is [`BOT`].
fn parts_for(
    store: Arc<dyn Store>,
    runtime: Arc<FakeRuntime>,
    config: EngineConfig,
    assignee: &str,
) -> EngineParts {
    let profiles = profiles();
    let secrets = [Secret::new(BOT_TOKEN), Secret::new(WEBHOOK_SECRET)];
    EngineParts {
        store,
        parser: Arc::new(TemplateParser::new(
            TemplateSettings::default(),
            KnownAgents::new(profiles.names()),
        )),
        gitea: None,
        acts_for: assignee.into(),
        bot_login: BOT.into(),
        redactor: Redactor::new(&secrets),
        profiles,
        policy: AssignmentPolicy::default(),
        priorities: PriorityOrder::default(),
        runtime,
        config,
        workspaces: None,
    }
}

async fn harness_with(config: EngineConfig) -> Harness {
    harness_for(config, BOT).await
}

async fn harness_for(config: EngineConfig, assignee: &str) -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("engine.db");
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&StoreConfig::sqlite(&path)).unwrap());
    let runtime = Arc::new(FakeRuntime::default());
    let (engine, _) = Engine::start(parts_for(
        Arc::clone(&store),
        Arc::clone(&runtime),
        config,
        assignee,
    ))
    .await
    .unwrap();
    Harness {
        _dir: dir,
        path,
        store,
        runtime,
        engine,
        seq: AtomicU32::new(0),
    }
}

async fn start_on(
    store: &Arc<dyn Store>,
    runtime: Arc<FakeRuntime>,
) -> (Engine, mosaic_engine::engine::RecoveryReport) {
    Engine::start(parts(Arc::clone(store), runtime, EngineConfig::default()))
        .await
        .unwrap()
}

async fn harness() -> Harness {
    harness_with(EngineConfig::default()).await
}

fn issue(n: u64) -> IssueRef {
    format!("example/example#{n}").parse().unwrap()
}

/// An issue event as Gitea sends it.
struct Event<'a> {
    action: &'a str,
    number: u64,
    body: &'a str,
    assignees: &'a [&'a str],
    open: bool,
    sender: &'a str,
}

impl<'a> Event<'a> {
    fn assigned(number: u64, body: &'a str) -> Self {
        Self {
            action: "assigned",
            number,
            body,
            assignees: &[BOT],
            open: true,
            sender: "alice",
        }
    }
}

impl Harness {
    /// Records the event in the inbox and returns the stored row.
    async fn record(&self, event: &Event<'_>) -> Delivery {
        let seq = self.seq.fetch_add(1, Ordering::SeqCst);
        let mut payload: serde_json::Value = serde_json::from_slice(FIXTURE).unwrap();
        let user = |login: &str| {
            let mut user = payload["sender"].clone();
            user["login"] = login.into();
            user["username"] = login.into();
            user
        };
        let assignees: Vec<serde_json::Value> = event.assignees.iter().map(|l| user(l)).collect();
        let sender = user(event.sender);
        payload["action"] = event.action.into();
        payload["number"] = event.number.into();
        payload["sender"] = sender;
        let issue = &mut payload["issue"];
        issue["number"] = event.number.into();
        issue["id"] = event.number.into();
        issue["title"] = format!("Issue {}", event.number).into();
        issue["body"] = event.body.into();
        issue["assignee"] = assignees
            .first()
            .cloned()
            .unwrap_or(serde_json::Value::Null);
        issue["assignees"] = assignees.into();
        issue["state"] = if event.open { "open" } else { "closed" }.into();
        issue["updated_at"] = Utc
            .with_ymd_and_hms(2026, 1, 1, 0, 0, 0)
            .unwrap()
            .checked_add_signed(chrono::Duration::seconds(i64::from(seq)))
            .unwrap()
            .to_rfc3339()
            .into();
        let body = serde_json::to_vec(&payload).unwrap();
        let mut hash = [0_u8; 32];
        hash[..4].copy_from_slice(&seq.to_be_bytes());
        hash[4] = 0xAB;
        let outcome = self
            .store
            .record_delivery(NewDelivery {
                delivery_id: Some(format!("delivery-{seq}")),
                event: "issues".into(),
                event_type: Some("issues".into()),
                action: Some(event.action.into()),
                repository: Some("example/example".into()),
                issue_number: Some(event.number),
                body_sha256: hash,
                body,
                status: IntakeStatus::Pending,
                received_at: Utc::now(),
            })
            .await
            .unwrap();
        let RecordOutcome::Recorded { id } = outcome else {
            panic!("duplicate delivery");
        };
        self.store
            .pending_deliveries(Utc::now(), 100)
            .await
            .unwrap()
            .into_iter()
            .find(|d| d.id == id)
            .unwrap()
    }

    /// Records and handles an event through the inbox worker.
    async fn deliver(&self, event: &Event<'_>) -> Delivery {
        let delivery = self.record(event).await;
        let worker = InboxWorker::new(
            Arc::clone(&self.store),
            Arc::new(self.engine.clone()),
            Arc::new(Notify::new()),
            InboxConfig::default(),
        );
        worker.run_once().await.unwrap();
        let rows = self.store.recent_deliveries(None, 1).await.unwrap();
        assert_eq!(
            rows[0].status,
            mosaic_store::DeliveryStatus::Processed,
            "{:?}",
            rows[0].last_error
        );
        delivery
    }

    /// The engine goes away (its sessions left open in the store, as after a crash) and a new
    /// one starts on the same store file with a fresh runtime.
    async fn restart(
        self,
    ) -> (
        tempfile::TempDir,
        Arc<dyn Store>,
        Arc<FakeRuntime>,
        Engine,
        mosaic_engine::engine::RecoveryReport,
    ) {
        let Self {
            _dir, path, engine, ..
        } = self;
        drop(engine);
        let store: Arc<dyn Store> =
            Arc::new(SqliteStore::open(&StoreConfig::sqlite(&path)).unwrap());
        let runtime = Arc::new(FakeRuntime::default());
        let (engine, report) = start_on(&store, Arc::clone(&runtime)).await;
        (_dir, store, runtime, engine, report)
    }

    async fn state(&self, n: u64) -> Option<IssueState> {
        self.store
            .get_issue(&issue(n))
            .await
            .unwrap()
            .map(|r| r.state)
    }

    async fn writes(&self, n: u64) -> Vec<GiteaWrite> {
        self.store
            .outbox_for_issue(&issue(n))
            .await
            .unwrap()
            .iter()
            .map(|item| GiteaWrite::from_outbox(item).unwrap())
            .collect()
    }

    async fn wait_for_state(&self, n: u64, state: IssueState) {
        for _ in 0..200 {
            if self.state(n).await == Some(state) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!(
            "issue #{n} never reached {state}; it is {:?}",
            self.state(n).await
        );
    }
}

const SMALL: &str = "## Context Estimate\n- **Total estimated: 20,000 tokens**\n\n## Difficulty\nmedium\n\n## Acceptance Criteria\n- [ ] it works\n";

fn status_texts(writes: &[GiteaWrite]) -> Vec<String> {
    writes
        .iter()
        .filter_map(|w| match w {
            GiteaWrite::StatusComment { body, .. } => Some(body.clone()),
            _ => None,
        })
        .collect()
}

fn added_labels(writes: &[GiteaWrite]) -> Vec<String> {
    writes
        .iter()
        .filter_map(|w| match w {
            GiteaWrite::StateLabel { add, .. } => add.clone(),
            _ => None,
        })
        .collect()
}

// ----- tests -----

#[tokio::test]
async fn an_assigned_issue_is_queued_with_a_status_comment_and_a_label() {
    let h = harness().await;
    h.deliver(&Event::assigned(1, SMALL)).await;
    assert_eq!(h.state(1).await, Some(IssueState::Ready));
    let writes = h.writes(1).await;
    assert_eq!(
        status_texts(&writes),
        vec!["**Mosaic** · Queued for glm · estimate 20,000 tokens".to_owned()]
    );
    assert_eq!(added_labels(&writes), vec!["mosaic:queued".to_owned()]);
    let queue = h.engine.queue().await;
    assert_eq!(queue.len(), 1);
    assert_eq!(
        (queue[0].state, queue[0].agent.as_deref(), queue[0].estimate),
        (IssueState::Ready, Some("glm"), Some(20_000))
    );
    let history = h.store.issue_history(&issue(1)).await.unwrap();
    let steps: Vec<_> = history.iter().map(|t| (t.from, t.to)).collect();
    assert_eq!(
        steps,
        vec![
            (None, IssueState::Pending),
            (Some(IssueState::Pending), IssueState::Ready)
        ]
    );
    assert!(history.iter().all(|t| t.cause.starts_with("delivery:")));
}

#[tokio::test]
async fn handling_the_same_delivery_twice_has_the_effect_of_once() {
    let h = harness().await;
    let delivery = h.deliver(&Event::assigned(1, SMALL)).await;
    let outbox = h.store.outbox_for_issue(&issue(1)).await.unwrap().len();
    let history = h.store.issue_history(&issue(1)).await.unwrap().len();
    h.engine.handle(&delivery).await.unwrap();
    assert_eq!(
        h.store.outbox_for_issue(&issue(1)).await.unwrap().len(),
        outbox
    );
    assert_eq!(
        h.store.issue_history(&issue(1)).await.unwrap().len(),
        history
    );
    assert_eq!(h.engine.queue().await.len(), 1);
}

#[tokio::test]
async fn the_bots_own_events_cause_nothing() {
    let h = harness().await;
    let mut event = Event::assigned(1, SMALL);
    event.sender = BOT;
    h.deliver(&event).await;
    assert_eq!(h.state(1).await, None);
    assert!(h.writes(1).await.is_empty());
    assert!(h.engine.queue().await.is_empty());
    assert!(
        h.store
            .get_issue_snapshot(&issue(1))
            .await
            .unwrap()
            .is_some(),
        "the snapshot is still recorded"
    );
}

#[tokio::test]
async fn an_oversized_issue_is_rejected_with_the_fifty_percent_message() {
    let h = harness().await;
    h.deliver(&Event::assigned(
        1,
        "## Context Estimate\n- **Total estimated: 90,000 tokens**\n\n## Difficulty\nmedium\n",
    ))
    .await;
    assert_eq!(h.state(1).await, Some(IssueState::Rejected));
    let writes = h.writes(1).await;
    let texts = status_texts(&writes);
    assert_eq!(texts.len(), 1);
    assert!(
        texts[0].contains("exceeds 50% rule for glm agent"),
        "{}",
        texts[0]
    );
    assert!(
        texts[0].contains("Maximum allowed: 64000 tokens"),
        "{}",
        texts[0]
    );
    assert_eq!(added_labels(&writes), vec!["mosaic:rejected".to_owned()]);
    assert_eq!(h.engine.dispatch_once().await, 0);
}

#[tokio::test]
async fn a_blocked_issue_waits_for_its_blocker_to_close_then_runs() {
    let h = harness().await;
    h.deliver(&Event::assigned(
        2,
        "## Context Estimate\n- **Total estimated: 20,000 tokens**\n\n## Dependencies\n- Blocked by: #1\n",
    ))
    .await;
    assert_eq!(h.state(2).await, Some(IssueState::Blocked));
    assert_eq!(
        status_texts(&h.writes(2).await),
        vec!["**Mosaic** · Queued for glm · estimate 20,000 tokens · waiting on #1".to_owned()]
    );
    assert_eq!(h.engine.dispatch_once().await, 0);
    assert!(h.runtime.sessions().is_empty());

    // The blocker (not coordinated) is closed by someone.
    h.deliver(&Event {
        action: "closed",
        number: 1,
        body: "",
        assignees: &[],
        open: false,
        sender: "alice",
    })
    .await;
    assert_eq!(h.state(2).await, Some(IssueState::Ready));
    assert_eq!(h.engine.dispatch_once().await, 1);
    assert_eq!(h.state(2).await, Some(IssueState::InProgress));
    let sessions = h.runtime.sessions();
    assert_eq!(sessions.len(), 1);
    assert_eq!(sessions[0].issue, issue(2));
    let texts = status_texts(&h.writes(2).await);
    assert_eq!(texts.last().unwrap(), "**Mosaic** · In progress with glm");
}

#[tokio::test]
async fn a_successful_session_completes_the_issue_with_a_comment() {
    let h = harness().await;
    h.deliver(&Event::assigned(1, SMALL)).await;
    assert_eq!(h.engine.dispatch_once().await, 1);
    let session = h.runtime.sessions()[0].clone();
    assert_eq!(session.issue, issue(1));
    let stored = h.store.open_sessions().await.unwrap();
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].id, session.id.to_string());

    session.finish(SessionOutcome::Succeeded {
        summary: "Implemented it; tests pass.".into(),
        tokens: 12_345,
        cost_usd: Some(0.5),
    });
    h.wait_for_state(1, IssueState::Completed).await;
    let writes = h.writes(1).await;
    let comment = writes
        .iter()
        .find_map(|w| match w {
            GiteaWrite::Comment { body, .. } => Some(body.clone()),
            _ => None,
        })
        .expect("a done comment");
    assert!(comment.contains("Implemented it; tests pass."), "{comment}");
    assert!(comment.contains("12,345 tokens"), "{comment}");
    assert!(comment.contains("$0.50"), "{comment}");
    assert!(
        !writes.contains(&GiteaWrite::CloseIssue),
        "close_on_success is off"
    );
    assert_eq!(added_labels(&writes).last().unwrap(), "mosaic:done");
    let record = h.store.get_issue(&issue(1)).await.unwrap().unwrap();
    assert_eq!(record.input_tokens, 12_345);
    assert!((record.cost_usd - 0.5).abs() < 1e-9);
    let sessions = h.store.sessions_for_issue(&issue(1)).await.unwrap();
    assert_eq!(sessions[0].outcome, Some(Stored::Succeeded));
    assert!(h.store.open_sessions().await.unwrap().is_empty());
    assert_eq!(h.engine.stats().await.queue_depth["completed"], 1);
}

#[tokio::test]
async fn close_on_success_enqueues_the_close() {
    let h = harness_with(EngineConfig {
        close_on_success: true,
        ..EngineConfig::default()
    })
    .await;
    h.deliver(&Event::assigned(1, SMALL)).await;
    h.engine.dispatch_once().await;
    h.runtime.sessions()[0].finish(SessionOutcome::Succeeded {
        summary: "done".into(),
        tokens: 1,
        cost_usd: None,
    });
    h.wait_for_state(1, IssueState::Completed).await;
    assert!(h.writes(1).await.contains(&GiteaWrite::CloseIssue));
}

#[tokio::test]
async fn a_completed_blocker_still_blocks_until_it_is_closed() {
    let h = harness().await;
    h.deliver(&Event::assigned(1, SMALL)).await;
    h.deliver(&Event::assigned(
        2,
        "## Context Estimate\n- **Total estimated: 20,000 tokens**\n\n## Dependencies\n- Blocked by: #1\n",
    ))
    .await;
    assert_eq!(h.engine.dispatch_once().await, 1);
    h.runtime.sessions()[0].finish(SessionOutcome::Succeeded {
        summary: "done".into(),
        tokens: 1,
        cost_usd: None,
    });
    h.wait_for_state(1, IssueState::Completed).await;
    // Done is not closed: a person reviews and closes it (close_on_success is off).
    assert_eq!(h.state(2).await, Some(IssueState::Blocked));
    assert_eq!(h.engine.dispatch_once().await, 0);

    h.deliver(&Event {
        action: "closed",
        number: 1,
        body: SMALL,
        assignees: &[BOT],
        open: false,
        sender: "alice",
    })
    .await;
    assert_eq!(h.state(1).await, Some(IssueState::Completed));
    assert_eq!(h.state(2).await, Some(IssueState::Ready));
    assert_eq!(h.engine.dispatch_once().await, 1);
}

#[tokio::test]
async fn with_close_on_success_a_completed_blocker_releases_its_dependents() {
    let h = harness_with(EngineConfig {
        close_on_success: true,
        ..EngineConfig::default()
    })
    .await;
    h.deliver(&Event::assigned(1, SMALL)).await;
    h.deliver(&Event::assigned(
        2,
        "## Context Estimate\n- **Total estimated: 20,000 tokens**\n\n## Dependencies\n- Blocked by: #1\n",
    ))
    .await;
    assert_eq!(h.engine.dispatch_once().await, 1);
    h.runtime.sessions()[0].finish(SessionOutcome::Succeeded {
        summary: "done".into(),
        tokens: 1,
        cost_usd: None,
    });
    h.wait_for_state(1, IssueState::Completed).await;
    assert_eq!(h.state(2).await, Some(IssueState::Ready));
}

#[tokio::test]
async fn a_failing_issue_is_retried_then_failed() {
    let h = harness().await;
    h.deliver(&Event::assigned(1, SMALL)).await;
    assert_eq!(h.engine.dispatch_once().await, 1);
    h.runtime.sessions()[0].finish(SessionOutcome::Failed {
        reason: "exit status 1".into(),
    });
    h.wait_for_state(1, IssueState::Ready).await;
    assert_eq!(h.engine.dispatch_once().await, 1);
    let second = h.runtime.sessions()[1].clone();
    assert_eq!(second.issue, issue(1));
    assert_eq!(
        status_texts(&h.writes(1).await).last().unwrap(),
        "**Mosaic** · In progress with glm (attempt 2)"
    );
    second.finish(SessionOutcome::Failed {
        reason: "exit status 1".into(),
    });
    h.wait_for_state(1, IssueState::Failed).await;
    let writes = h.writes(1).await;
    assert!(
        status_texts(&writes)
            .last()
            .unwrap()
            .starts_with("**Mosaic** · Failed with glm after 2 attempts")
    );
    assert!(writes.iter().any(
        |w| matches!(w, GiteaWrite::Comment { body, .. } if body.contains("could not finish"))
    ));
    assert_eq!(h.engine.dispatch_once().await, 0);
    let sessions = h.store.sessions_for_issue(&issue(1)).await.unwrap();
    assert_eq!(sessions.len(), 2);
    assert!(sessions.iter().all(|s| s.outcome == Some(Stored::Failed)));
}

#[tokio::test]
async fn unassigning_cancels_the_running_session() {
    let h = harness().await;
    h.deliver(&Event::assigned(1, SMALL)).await;
    assert_eq!(h.engine.dispatch_once().await, 1);
    let session = h.runtime.sessions()[0].clone();
    h.deliver(&Event {
        action: "unassigned",
        number: 1,
        body: SMALL,
        assignees: &[],
        open: true,
        sender: "alice",
    })
    .await;
    assert_eq!(h.state(1).await, Some(IssueState::Cancelled));
    assert!(
        session.closed.lock().unwrap().is_some(),
        "the session was closed"
    );
    for _ in 0..200 {
        if h.store.open_sessions().await.unwrap().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let sessions = h.store.sessions_for_issue(&issue(1)).await.unwrap();
    assert_eq!(sessions[0].outcome, Some(Stored::Killed));
    assert_eq!(
        status_texts(&h.writes(1).await).last().unwrap(),
        "**Mosaic** · Cancelled · unassigned from the bot"
    );
    assert!(
        h.engine
            .stats()
            .await
            .running_by_agent
            .values()
            .all(|n| *n == 0)
    );
}

#[tokio::test]
async fn recovery_redispatches_an_interrupted_issue_exactly_once() {
    let h = harness().await;
    h.deliver(&Event::assigned(1, SMALL)).await;
    assert_eq!(h.engine.dispatch_once().await, 1);
    assert_eq!(h.store.open_sessions().await.unwrap().len(), 1);
    // "Crash": the engine goes away with its session open in the store.
    let (_dir, store, runtime, engine, report) = h.restart().await;
    assert_eq!(report.interrupted_sessions, 1);
    assert_eq!(report.requeued, vec![issue(1)]);
    assert_eq!(
        store.get_issue(&issue(1)).await.unwrap().unwrap().state,
        IssueState::Ready
    );
    assert_eq!(engine.dispatch_once().await, 1);
    assert_eq!(engine.dispatch_once().await, 0, "never twice at once");
    assert_eq!(runtime.spawns.load(Ordering::SeqCst), 1);
    let sessions = store.sessions_for_issue(&issue(1)).await.unwrap();
    assert_eq!(sessions.len(), 2);
    assert_eq!(sessions[0].outcome, Some(Stored::Interrupted));
    assert_eq!(store.open_sessions().await.unwrap().len(), 1);
    // The interrupted attempt does not count against max_attempts.
    assert_eq!(
        store.get_issue(&issue(1)).await.unwrap().unwrap().attempts,
        1
    );
    runtime.running()[0].finish(SessionOutcome::Succeeded {
        summary: "done after restart".into(),
        tokens: 10,
        cost_usd: None,
    });
    for _ in 0..200 {
        if store.get_issue(&issue(1)).await.unwrap().unwrap().state == IssueState::Completed {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        store.get_issue(&issue(1)).await.unwrap().unwrap().state,
        IssueState::Completed
    );
}

#[tokio::test]
async fn capacity_limits_how_many_sessions_run() {
    let h = harness_with(EngineConfig {
        max_concurrent_agents: 1,
        ..EngineConfig::default()
    })
    .await;
    h.deliver(&Event::assigned(1, SMALL)).await;
    h.deliver(&Event::assigned(2, SMALL)).await;
    assert_eq!(h.engine.dispatch_once().await, 1);
    assert_eq!(h.engine.dispatch_once().await, 0);
    let queue = h.engine.queue().await;
    assert_eq!(queue[0].state, IssueState::InProgress);
    assert_eq!(queue[1].state, IssueState::Ready);
    h.runtime.sessions()[0].finish(SessionOutcome::Succeeded {
        summary: "ok".into(),
        tokens: 1,
        cost_usd: None,
    });
    h.wait_for_state(1, IssueState::Completed).await;
    assert_eq!(h.engine.dispatch_once().await, 1);
}

#[tokio::test]
async fn requeue_and_cancel_through_the_api() {
    let h = harness().await;
    h.deliver(&Event::assigned(1, SMALL)).await;
    h.engine.cancel(&issue(1)).await.unwrap();
    assert_eq!(h.state(1).await, Some(IssueState::Cancelled));
    assert!(matches!(
        h.engine.cancel(&issue(1)).await,
        Err(EngineError::InvalidTransition { .. })
    ));
    assert!(matches!(
        h.engine.cancel(&issue(9)).await,
        Err(EngineError::NotFound(_))
    ));
    assert_eq!(
        h.engine.requeue(&issue(1)).await.unwrap(),
        IssueState::Ready
    );
    assert_eq!(h.engine.dispatch_once().await, 1);
    assert!(matches!(
        h.engine.requeue(&issue(1)).await,
        Err(EngineError::InvalidTransition { .. })
    ));
    let detail = h.engine.issue_detail(&issue(1)).await.unwrap();
    assert_eq!(detail.state, IssueState::InProgress);
    assert_eq!(detail.sessions.len(), 1);
    assert!(detail.snapshot.is_some());
    assert!(detail.history.len() >= 5);
    assert_eq!(h.engine.live_sessions().len(), 1);
}

#[tokio::test]
async fn closing_a_running_issue_completes_it_and_ends_the_session() {
    let h = harness().await;
    h.deliver(&Event::assigned(1, SMALL)).await;
    h.deliver(&Event::assigned(
        2,
        "## Context Estimate\n- **Total estimated: 20,000 tokens**\n\n## Dependencies\n- Blocked by: #1\n",
    ))
    .await;
    assert_eq!(h.engine.dispatch_once().await, 1);
    let session = h.runtime.sessions()[0].clone();
    h.deliver(&Event {
        action: "closed",
        number: 1,
        body: SMALL,
        assignees: &[BOT],
        open: false,
        sender: "alice",
    })
    .await;
    assert_eq!(h.state(1).await, Some(IssueState::Completed));
    assert!(session.closed.lock().unwrap().is_some());
    assert_eq!(
        h.state(2).await,
        Some(IssueState::Ready),
        "its dependent is unblocked"
    );
}

#[tokio::test]
async fn a_full_context_rotates_the_session_and_the_issue_continues() {
    // The monitor notices the replacement session at its next poll.
    let mut config = EngineConfig::default();
    config.monitor.poll_interval_ms = 50;
    let h = harness_with(config).await;
    h.deliver(&Event::assigned(1, SMALL)).await;
    assert_eq!(h.engine.dispatch_once().await, 1);
    let first = h.runtime.sessions()[0].clone();
    first.state.send_modify(|snapshot| {
        snapshot.usage = Some(ContextUsage::new(125_000, 128_000).unwrap());
        snapshot.usage_seq += 1;
    });
    let mut rotations = Vec::new();
    for _ in 0..200 {
        rotations = h.engine.rotations(None, 10).await.unwrap();
        if !rotations.is_empty() && h.runtime.sessions().len() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(rotations.len(), 1);
    assert!(rotations[0].rotation.success);
    assert_eq!(rotations[0].rotation.next_issue, Some(issue(1)));
    let second = h.runtime.sessions()[1].clone();
    assert_eq!(second.issue, issue(1));
    for _ in 0..200 {
        if h.store
            .open_sessions()
            .await
            .unwrap()
            .first()
            .map(|s| s.id.clone())
            == Some(second.id.to_string())
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let sessions = h.store.sessions_for_issue(&issue(1)).await.unwrap();
    assert_eq!(sessions.len(), 2);
    assert_eq!(sessions[0].outcome, Some(Stored::Rotated));
    assert_eq!(sessions[1].ended_at, None);
    assert_eq!(h.engine.stats().await.rotations, 1);
    assert_eq!(h.state(1).await, Some(IssueState::InProgress));
    second.finish(SessionOutcome::Succeeded {
        summary: "finished after the rotation".into(),
        tokens: 5,
        cost_usd: None,
    });
    h.wait_for_state(1, IssueState::Completed).await;
    assert_eq!(h.engine.dispatch_once().await, 0);
}

fn blocks(numbers: &str) -> String {
    format!(
        "## Context Estimate\n- **Total estimated: 20,000 tokens**\n\n## Dependencies\n- Blocks: {numbers}\n"
    )
}

async fn stored_blockers(h: &Harness, n: u64) -> Vec<u64> {
    h.store
        .dependency_edges()
        .await
        .unwrap()
        .into_iter()
        .filter(|edge| edge.issue == issue(n))
        .map(|edge| edge.blocker.number)
        .collect()
}

#[tokio::test]
async fn a_dependency_declared_by_the_blocker_holds_back_a_queued_issue() {
    let h = harness().await;
    h.deliver(&Event::assigned(2, SMALL)).await;
    assert_eq!(h.state(2).await, Some(IssueState::Ready));

    // #1 says it blocks #2 (only on its own side): #2 now waits for #1.
    h.deliver(&Event::assigned(1, &blocks("#2"))).await;
    assert_eq!(h.state(1).await, Some(IssueState::Ready));
    assert_eq!(h.state(2).await, Some(IssueState::Blocked));
    assert_eq!(stored_blockers(&h, 2).await, vec![1]);
    assert_eq!(
        status_texts(&h.writes(2).await).last().unwrap(),
        "**Mosaic** · Queued for glm · estimate 20,000 tokens · waiting on #1"
    );
    assert_eq!(h.engine.dispatch_once().await, 1);
    let sessions = h.runtime.sessions();
    assert_eq!(sessions.len(), 1);
    assert_eq!(sessions[0].issue, issue(1), "only the blocker runs");

    // Closing the blocker releases #2.
    h.deliver(&Event {
        action: "closed",
        number: 1,
        body: &blocks("#2"),
        assignees: &[BOT],
        open: false,
        sender: "alice",
    })
    .await;
    assert_eq!(h.state(2).await, Some(IssueState::Ready));
    assert_eq!(h.engine.dispatch_once().await, 1);
    assert_eq!(h.runtime.sessions()[1].issue, issue(2));
}

#[tokio::test]
async fn a_declaration_made_before_the_blocked_issue_is_coordinated_counts_when_it_is() {
    let h = harness().await;
    h.deliver(&Event::assigned(1, &blocks("#2 and #3"))).await;
    assert_eq!(h.state(1).await, Some(IssueState::Ready));
    // #2 knows nothing of #1 itself.
    h.deliver(&Event::assigned(2, SMALL)).await;
    assert_eq!(h.state(2).await, Some(IssueState::Blocked));
    assert_eq!(stored_blockers(&h, 2).await, vec![1]);
    assert_eq!(
        status_texts(&h.writes(2).await),
        vec!["**Mosaic** · Queued for glm · estimate 20,000 tokens · waiting on #1".to_owned()]
    );
}

#[tokio::test]
async fn withdrawing_a_declaration_releases_the_issue_unless_it_names_the_blocker_itself() {
    let h = harness().await;
    h.deliver(&Event::assigned(2, SMALL)).await;
    h.deliver(&Event::assigned(
        3,
        "## Context Estimate\n- **Total estimated: 20,000 tokens**\n\n## Dependencies\n- Blocked by: #1\n",
    ))
    .await;
    h.deliver(&Event::assigned(1, &blocks("#2, #3"))).await;
    assert_eq!(h.state(2).await, Some(IssueState::Blocked));
    assert_eq!(h.state(3).await, Some(IssueState::Blocked));

    // #1's body is edited: it no longer blocks anything.
    h.deliver(&Event {
        action: "edited",
        ..Event::assigned(1, SMALL)
    })
    .await;
    assert_eq!(h.state(2).await, Some(IssueState::Ready));
    assert!(stored_blockers(&h, 2).await.is_empty());
    assert_eq!(
        status_texts(&h.writes(2).await).last().unwrap(),
        "**Mosaic** · Queued for glm · estimate 20,000 tokens"
    );
    // #3 says "Blocked by: #1" itself: that edge stays.
    assert_eq!(h.state(3).await, Some(IssueState::Blocked));
    assert_eq!(stored_blockers(&h, 3).await, vec![1]);
}

#[tokio::test]
async fn declared_dependencies_survive_a_restart() {
    let h = harness().await;
    h.deliver(&Event::assigned(2, SMALL)).await;
    h.deliver(&Event::assigned(1, &blocks("#2"))).await;
    assert_eq!(h.state(2).await, Some(IssueState::Blocked));
    let (_dir, store, runtime, engine, report) = h.restart().await;
    assert_eq!((report.settled, report.edges_added), (0, 0));
    let queue = engine.queue().await;
    let waiting = queue.iter().find(|item| item.issue == issue(2)).unwrap();
    assert_eq!(waiting.state, IssueState::Blocked);
    assert_eq!(engine.dispatch_once().await, 1);
    assert_eq!(runtime.sessions()[0].issue, issue(1));
    assert_eq!(engine.dispatch_once().await, 0, "#2 still waits for #1");
    drop(engine);

    // A store written before declared edges were followed lacks #2's edge: recovery adds it.
    let mut record = store.get_issue(&issue(2)).await.unwrap().unwrap();
    record.state = IssueState::Ready;
    let mut batch = mosaic_store::TransitionBatch::update(record);
    batch.blocked_by = Some(Vec::new());
    store.commit_transitions(vec![batch]).await.unwrap();
    assert!(store.dependency_edges().await.unwrap().is_empty());
    let (engine, report) = start_on(&store, Arc::new(FakeRuntime::default())).await;
    assert_eq!(report.edges_added, 1);
    let queue = engine.queue().await;
    let waiting = queue.iter().find(|item| item.issue == issue(2)).unwrap();
    assert_eq!(waiting.state, IssueState::Blocked);
    assert_eq!(waiting.blockers, Some(vec![issue(1)]));
    assert_eq!(store.dependency_edges().await.unwrap().len(), 1);
}

// ----- agent text is redacted before it leaves (issue 2) -----

/// Everything the engine wrote for Gitea about issue `n`, and the stored session reasons.
async fn everything_said(h: &Harness, n: u64) -> String {
    let mut said: Vec<String> = h
        .store
        .outbox_for_issue(&issue(n))
        .await
        .unwrap()
        .iter()
        .map(|item| item.payload.to_string())
        .collect();
    said.extend(
        h.store
            .sessions_for_issue(&issue(n))
            .await
            .unwrap()
            .into_iter()
            .filter_map(|s| s.detail),
    );
    said.join("\n")
}

fn assert_clean(said: &str) {
    for secret in [BOT_TOKEN, WEBHOOK_SECRET, "sk-ant-api03-abcdefghijkl"] {
        assert!(!said.contains(secret), "`{secret}` leaked: {said}");
    }
    assert!(
        !said.contains('\u{1b}'),
        "an escape sequence leaked: {said}"
    );
    assert!(
        !said.contains("\\u001b"),
        "an escape sequence leaked: {said}"
    );
}

#[tokio::test]
async fn a_failure_reason_and_a_summary_reach_comments_only_redacted() {
    let h = harness_with(EngineConfig {
        max_attempts: 1,
        ..EngineConfig::default()
    })
    .await;
    h.deliver(&Event::assigned(1, SMALL)).await;
    assert_eq!(h.engine.dispatch_once().await, 1);
    h.runtime.sessions()[0].finish(SessionOutcome::Failed {
        reason: format!(
            "exited with status 128; stderr: \u{1b}[31mfatal:\u{1b}[0m Authentication failed for \
             'https://mosaic-bot:{BOT_TOKEN}@gitea.example/o/r.git' (hook secret {WEBHOOK_SECRET})\u{7}"
        ),
    });
    h.wait_for_state(1, IssueState::Failed).await;
    let said = everything_said(&h, 1).await;
    assert_clean(&said);
    let writes = h.writes(1).await;
    let failed = writes
        .iter()
        .find_map(|w| match w {
            GiteaWrite::Comment { body, .. } if body.contains("could not finish") => {
                Some(body.clone())
            }
            _ => None,
        })
        .expect("a failed comment");
    assert!(failed.contains("fatal:"), "{failed}");
    assert!(failed.contains("[redacted]"), "{failed}");
    assert!(status_texts(&writes).last().unwrap().contains("[redacted]"));

    h.deliver(&Event::assigned(2, SMALL)).await;
    assert_eq!(h.engine.dispatch_once().await, 1);
    let long_tail = "x".repeat(10_000);
    h.runtime.sessions()[1].finish(SessionOutcome::Succeeded {
        summary: format!(
            "Done.\n\u{1b}]0;title\u{7}Authorization: token {BOT_TOKEN}\nused key sk-ant-api03-abcdefghijkl \
             and {WEBHOOK_SECRET}\n{long_tail}"
        ),
        tokens: 10,
        cost_usd: None,
    });
    h.wait_for_state(2, IssueState::Completed).await;
    let said = everything_said(&h, 2).await;
    assert_clean(&said);
    let done = h
        .writes(2)
        .await
        .iter()
        .find_map(|w| match w {
            GiteaWrite::Comment { body, .. } => Some(body.clone()),
            _ => None,
        })
        .expect("a done comment");
    assert!(done.contains("Done."), "{done}");
    assert!(
        done.chars().count() < 3_000,
        "the summary is bounded: {} chars",
        done.chars().count()
    );
}

// ----- the bot and the assignee it works for are told apart (issue 5) -----

const ASSIGNEE: &str = "team-bot";
const OVERSIZED: &str =
    "## Context Estimate\n- **Total estimated: 90,000 tokens**\n\n## Difficulty\nmedium\n";

#[tokio::test]
async fn an_assignment_to_the_assignee_is_coordinated_whoever_makes_it() {
    let h = harness_for(EngineConfig::default(), ASSIGNEE).await;
    for (number, sender) in [(1, "alice"), (2, ASSIGNEE)] {
        h.deliver(&Event {
            assignees: &[ASSIGNEE],
            sender,
            ..Event::assigned(number, SMALL)
        })
        .await;
        assert_eq!(
            h.state(number).await,
            Some(IssueState::Ready),
            "assigned by {sender}"
        );
    }
}

#[tokio::test]
async fn an_assignment_to_the_bot_itself_is_not_coordinated_when_it_works_for_another() {
    let h = harness_for(EngineConfig::default(), ASSIGNEE).await;
    h.deliver(&Event::assigned(1, SMALL)).await;
    assert_eq!(h.state(1).await, None);
    assert!(h.writes(1).await.is_empty());
}

#[tokio::test]
async fn the_bots_own_events_are_not_acted_on_when_it_works_for_another() {
    let h = harness_for(EngineConfig::default(), ASSIGNEE).await;
    h.deliver(&Event {
        assignees: &[ASSIGNEE],
        ..Event::assigned(1, OVERSIZED)
    })
    .await;
    assert_eq!(h.state(1).await, Some(IssueState::Rejected));
    let history = h.store.issue_history(&issue(1)).await.unwrap().len();
    let writes = h.writes(1).await.len();
    // The bot putting its state label on the issue.
    h.deliver(&Event {
        action: "label_updated",
        assignees: &[ASSIGNEE],
        sender: BOT,
        ..Event::assigned(1, OVERSIZED)
    })
    .await;
    assert_eq!(
        h.store.issue_history(&issue(1)).await.unwrap().len(),
        history
    );
    assert_eq!(h.writes(1).await.len(), writes);
    // Even an edit is the bot's own: a person's edit re-judges a rejected issue, this does not.
    h.deliver(&Event {
        action: "edited",
        assignees: &[ASSIGNEE],
        sender: BOT,
        ..Event::assigned(1, SMALL)
    })
    .await;
    assert_eq!(h.state(1).await, Some(IssueState::Rejected));
    assert_eq!(h.writes(1).await.len(), writes);
    // Sent by the bot while the assignee is assigned: still only recorded.
    h.deliver(&Event {
        assignees: &[ASSIGNEE],
        sender: BOT,
        ..Event::assigned(2, SMALL)
    })
    .await;
    assert_eq!(h.state(2).await, None);
}

// ----- a finished issue comes back only on an explicit trigger (issue 8) -----

impl Harness {
    async fn complete(&self, n: u64) {
        assert_eq!(self.engine.dispatch_once().await, 1);
        let session = self.runtime.sessions().last().unwrap().clone();
        assert_eq!(session.issue, issue(n));
        session.finish(SessionOutcome::Succeeded {
            summary: "done".into(),
            tokens: 1,
            cost_usd: None,
        });
        self.wait_for_state(n, IssueState::Completed).await;
    }
}

#[tokio::test]
async fn a_completed_issue_stays_done_when_a_person_joins_as_co_assignee() {
    let h = harness().await;
    h.deliver(&Event::assigned(1, SMALL)).await;
    h.complete(1).await;
    let writes = h.writes(1).await.len();
    for event in [
        // A person added next to the bot: Gitea sends "assigned" with the bot still there.
        Event {
            assignees: &[BOT, "alice"],
            ..Event::assigned(1, SMALL)
        },
        Event {
            action: "edited",
            ..Event::assigned(
                1,
                "## Context Estimate\n- **Total estimated: 10,000 tokens**\n",
            )
        },
        Event {
            action: "label_updated",
            ..Event::assigned(1, SMALL)
        },
        Event {
            action: "opened",
            ..Event::assigned(1, SMALL)
        },
    ] {
        h.deliver(&event).await;
        assert_eq!(
            h.state(1).await,
            Some(IssueState::Completed),
            "after {}",
            event.action
        );
    }
    assert_eq!(h.engine.dispatch_once().await, 0);
    assert_eq!(
        h.runtime.spawns.load(Ordering::SeqCst),
        1,
        "no second session"
    );
    assert_eq!(h.writes(1).await.len(), writes, "no second comment");
}

#[tokio::test]
async fn a_completed_issue_runs_again_when_the_bot_is_unassigned_then_assigned() {
    let h = harness().await;
    h.deliver(&Event::assigned(1, SMALL)).await;
    h.complete(1).await;
    h.deliver(&Event {
        action: "unassigned",
        assignees: &["alice"],
        ..Event::assigned(1, SMALL)
    })
    .await;
    assert_eq!(h.state(1).await, Some(IssueState::Completed));
    h.deliver(&Event {
        assignees: &["alice", BOT],
        ..Event::assigned(1, SMALL)
    })
    .await;
    assert_eq!(h.state(1).await, Some(IssueState::Ready));
    assert_eq!(h.engine.dispatch_once().await, 1);
}

#[tokio::test]
async fn a_completed_issue_runs_again_when_reopened() {
    let h = harness().await;
    h.deliver(&Event::assigned(1, SMALL)).await;
    h.complete(1).await;
    h.deliver(&Event {
        action: "closed",
        open: false,
        ..Event::assigned(1, SMALL)
    })
    .await;
    assert_eq!(h.state(1).await, Some(IssueState::Completed));
    h.deliver(&Event {
        action: "reopened",
        ..Event::assigned(1, SMALL)
    })
    .await;
    assert_eq!(h.state(1).await, Some(IssueState::Ready));
}

#[tokio::test]
async fn a_failed_issue_stays_failed_until_an_explicit_trigger() {
    let h = harness_with(EngineConfig {
        max_attempts: 1,
        ..EngineConfig::default()
    })
    .await;
    h.deliver(&Event::assigned(1, SMALL)).await;
    assert_eq!(h.engine.dispatch_once().await, 1);
    h.runtime.sessions()[0].finish(SessionOutcome::Failed {
        reason: "exit status 1".into(),
    });
    h.wait_for_state(1, IssueState::Failed).await;
    h.deliver(&Event {
        assignees: &[BOT, "alice"],
        ..Event::assigned(1, SMALL)
    })
    .await;
    assert_eq!(h.state(1).await, Some(IssueState::Failed));
    assert_eq!(h.engine.dispatch_once().await, 0);
    assert_eq!(
        h.engine.requeue(&issue(1)).await.unwrap(),
        IssueState::Ready
    );
}

#[tokio::test]
async fn only_issues_finished_before_the_cut_off_and_idle_give_up_their_work_directories() {
    let h = harness().await;
    h.deliver(&Event::assigned(1, SMALL)).await;
    h.complete(1).await;
    h.deliver(&Event::assigned(2, SMALL)).await;
    assert_eq!(h.engine.dispatch_once().await, 1, "issue 2 runs");
    h.deliver(&Event::assigned(3, SMALL)).await;
    assert_eq!(h.state(3).await, Some(IssueState::Ready), "issue 3 waits");

    let sorted = |mut issues: Vec<IssueRef>| {
        issues.sort_by_key(|issue| issue.number);
        issues
    };
    // Every issue changed just now: nothing is older than a day.
    let split = h
        .engine
        .finished_issues(Utc::now() - chrono::Duration::days(1))
        .await;
    assert!(split.expired.is_empty(), "{split:?}");
    assert_eq!(sorted(split.kept), [issue(1), issue(2), issue(3)]);
    // A cut-off after every change: only the finished issue expires; the running and the
    // waiting one keep their directories whatever their age.
    let split = h
        .engine
        .finished_issues(Utc::now() + chrono::Duration::seconds(1))
        .await;
    assert_eq!(split.expired, [issue(1)]);
    assert_eq!(sorted(split.kept), [issue(2), issue(3)]);
    // Without workspaces there is no worktree to remove.
    let removed = h
        .engine
        .remove_expired_worktrees(Utc::now() + chrono::Duration::seconds(1))
        .await;
    assert_eq!(removed.count, 0);
}

#[tokio::test]
async fn a_rejected_issue_is_judged_again_only_when_its_text_changes() {
    let h = harness().await;
    h.deliver(&Event::assigned(1, OVERSIZED)).await;
    assert_eq!(h.state(1).await, Some(IssueState::Rejected));
    let writes = h.writes(1).await.len();
    // A person's label event that changes nothing the parser reads, and a co-assignee.
    h.deliver(&Event {
        action: "label_updated",
        ..Event::assigned(1, OVERSIZED)
    })
    .await;
    h.deliver(&Event {
        assignees: &[BOT, "alice"],
        ..Event::assigned(1, OVERSIZED)
    })
    .await;
    assert_eq!(h.state(1).await, Some(IssueState::Rejected));
    assert_eq!(h.writes(1).await.len(), writes, "not rejected again");
    // Split: the estimate went down.
    h.deliver(&Event {
        action: "edited",
        ..Event::assigned(1, SMALL)
    })
    .await;
    assert_eq!(h.state(1).await, Some(IssueState::Ready));
}

// ----- the inbox: issues handled concurrently, each issue in order -----

/// The template parser, except that parsing a gated issue waits until the gate opens (a model
/// that takes minutes to answer), and parsing sleeps `delay_ms(number)` milliseconds.
struct GatedParser {
    inner: TemplateParser,
    gated: Vec<u64>,
    gate: watch::Sender<bool>,
    delay_ms: fn(u64) -> u64,
    started: Mutex<Vec<u64>>,
    finished: Mutex<Vec<u64>>,
}

impl GatedParser {
    fn new(gated: &[u64]) -> Self {
        Self {
            inner: TemplateParser::new(
                TemplateSettings::default(),
                KnownAgents::new(profiles().names()),
            ),
            gated: gated.to_vec(),
            gate: watch::Sender::new(false),
            delay_ms: |_| 0,
            started: Mutex::new(Vec::new()),
            finished: Mutex::new(Vec::new()),
        }
    }

    fn set_gate(&self, open: bool) {
        self.gate.send_replace(open);
    }

    fn started(&self, number: u64) -> usize {
        self.started
            .lock()
            .unwrap()
            .iter()
            .filter(|n| **n == number)
            .count()
    }

    fn finished(&self, number: u64) -> usize {
        self.finished
            .lock()
            .unwrap()
            .iter()
            .filter(|n| **n == number)
            .count()
    }

    async fn wait_until_started(&self, number: u64, times: usize) {
        for _ in 0..200 {
            if self.started(number) >= times {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("the parse of #{number} never started");
    }
}

#[async_trait]
impl mosaic_parser::IssueParser for GatedParser {
    async fn parse(&self, input: &mosaic_parser::ParseInput) -> mosaic_parser::ParseOutcome {
        self.started.lock().unwrap().push(input.number);
        let delay = (self.delay_ms)(input.number);
        if delay > 0 {
            tokio::time::sleep(Duration::from_millis(delay)).await;
        }
        if self.gated.contains(&input.number) {
            let mut gate = self.gate.subscribe();
            gate.wait_for(|open| *open).await.unwrap();
        }
        let outcome = self.inner.parse(input).await;
        self.finished.lock().unwrap().push(input.number);
        outcome
    }

    fn health(&self) -> mosaic_parser::ParserHealth {
        self.inner.health()
    }
}

/// A harness whose engine uses `parser` (and `gitea`, if any), with the inbox worker running
/// continuously as `serve` runs it.
struct Running {
    h: Harness,
    notify: Arc<Notify>,
    cancel: tokio_util::sync::CancellationToken,
    worker: tokio::task::JoinHandle<()>,
}

async fn running_inbox(
    parser: Arc<GatedParser>,
    gitea: Option<Arc<dyn mosaic_gitea::GiteaApi>>,
    inbox: InboxConfig,
) -> Running {
    Running::start(engine_with(parser, gitea).await, inbox)
}

/// A harness whose engine uses `parser` (and `gitea`, if any).
async fn engine_with(
    parser: Arc<GatedParser>,
    gitea: Option<Arc<dyn mosaic_gitea::GiteaApi>>,
) -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("engine.db");
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&StoreConfig::sqlite(&path)).unwrap());
    let runtime = Arc::new(FakeRuntime::default());
    let mut parts = parts(
        Arc::clone(&store),
        Arc::clone(&runtime),
        EngineConfig::default(),
    );
    parts.parser = parser;
    parts.gitea = gitea;
    let (engine, _) = Engine::start(parts).await.unwrap();
    Harness {
        _dir: dir,
        path,
        store,
        runtime,
        engine,
        seq: AtomicU32::new(0),
    }
}

impl Running {
    /// Runs the inbox worker of `h` until [`Running::stop`].
    fn start(h: Harness, inbox: InboxConfig) -> Self {
        let notify = Arc::new(Notify::new());
        let cancel = tokio_util::sync::CancellationToken::new();
        let worker = InboxWorker::new(
            Arc::clone(&h.store),
            Arc::new(h.engine.clone()),
            Arc::clone(&notify),
            inbox,
        );
        let worker = tokio::spawn(worker.run(cancel.clone()));
        Self {
            h,
            notify,
            cancel,
            worker,
        }
    }

    /// Records the event as intake does (which wakes the worker).
    async fn webhook(&self, event: &Event<'_>) -> Delivery {
        let delivery = self.h.record(event).await;
        self.notify.notify_one();
        delivery
    }

    async fn wait_until_processed(&self, delivery: &Delivery) {
        for _ in 0..200 {
            let rows = self.h.store.recent_deliveries(None, 10_000).await.unwrap();
            let row = rows.iter().find(|row| row.id == delivery.id).unwrap();
            if row.status == mosaic_store::DeliveryStatus::Processed {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("delivery {} was never processed", delivery.id);
    }

    async fn wait_until_none_pending(&self) {
        for _ in 0..200 {
            if self.h.store.delivery_counts().await.unwrap().pending == 0 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("deliveries are still pending");
    }

    async fn stop(self) -> Harness {
        self.cancel.cancel();
        self.worker.await.unwrap();
        self.h
    }
}

fn unassigned(number: u64) -> Event<'static> {
    Event {
        action: "unassigned",
        assignees: &[],
        ..Event::assigned(number, SMALL)
    }
}

#[tokio::test]
async fn another_issue_is_queued_while_one_issue_waits_for_its_model() {
    let parser = Arc::new(GatedParser::new(&[1]));
    let inbox = running_inbox(Arc::clone(&parser), None, InboxConfig::default()).await;
    inbox.webhook(&Event::assigned(1, SMALL)).await;
    parser.wait_until_started(1, 1).await;

    let second = inbox.webhook(&Event::assigned(2, SMALL)).await;
    inbox.h.wait_for_state(2, IssueState::Ready).await;
    inbox.wait_until_processed(&second).await;
    assert_eq!(inbox.h.state(1).await, None, "#1 still waits for its model");
    assert_eq!(parser.finished(1), 0);

    parser.set_gate(true);
    inbox.h.wait_for_state(1, IssueState::Ready).await;
    inbox.stop().await;
}

#[tokio::test]
async fn an_unassign_is_honoured_while_the_issue_waits_for_its_model() {
    let parser = Arc::new(GatedParser::new(&[1]));
    let inbox = running_inbox(Arc::clone(&parser), None, InboxConfig::default()).await;
    let assigned = inbox.webhook(&Event::assigned(1, SMALL)).await;
    parser.wait_until_started(1, 1).await;

    let started = std::time::Instant::now();
    let unassign = inbox.webhook(&unassigned(1)).await;
    inbox.wait_until_processed(&unassign).await;
    inbox.wait_until_processed(&assigned).await;
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "honoured at once, not after the model: {:?}",
        started.elapsed()
    );
    assert_eq!(inbox.h.state(1).await, None, "never queued");

    // The model answers late: nothing of that evaluation is applied.
    parser.set_gate(true);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(parser.finished(1), 0, "the stale evaluation was given up");
    let h = inbox.stop().await;
    assert_eq!(h.state(1).await, None);
    assert!(h.writes(1).await.is_empty(), "{:?}", h.writes(1).await);
    let counts = h.store.delivery_counts().await.unwrap();
    assert_eq!((counts.pending, counts.processed), (0, 2));
}

#[tokio::test]
async fn a_close_cancels_a_queued_issue_whose_edit_waits_for_the_model() {
    let parser = Arc::new(GatedParser::new(&[1]));
    parser.set_gate(true);
    let inbox = running_inbox(Arc::clone(&parser), None, InboxConfig::default()).await;
    inbox.webhook(&Event::assigned(1, SMALL)).await;
    inbox.h.wait_for_state(1, IssueState::Ready).await;

    parser.set_gate(false);
    inbox
        .webhook(&Event {
            action: "edited",
            ..Event::assigned(1, "## Difficulty\nhigh\n")
        })
        .await;
    parser.wait_until_started(1, 2).await;
    let close = inbox
        .webhook(&Event {
            action: "closed",
            open: false,
            ..Event::assigned(1, "## Difficulty\nhigh\n")
        })
        .await;
    inbox.wait_until_processed(&close).await;
    assert_eq!(inbox.h.state(1).await, Some(IssueState::Cancelled));

    parser.set_gate(true);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let h = inbox.stop().await;
    assert_eq!(h.state(1).await, Some(IssueState::Cancelled));
    assert_eq!(parser.finished(1), 1, "only the first evaluation finished");
    let statuses = status_texts(&h.writes(1).await);
    assert!(
        statuses.last().unwrap().contains("Cancelled"),
        "{statuses:?}"
    );
}

#[tokio::test]
async fn deliveries_of_one_issue_keep_their_order_while_issues_run_concurrently() {
    let mut parser = GatedParser::new(&[]);
    // Unequal parse times, so issues finish in another order than they started, and an
    // assignment takes longer than an unassign.
    parser.delay_ms = |number| 5 + (number * 7) % 30;
    let h = engine_with(Arc::new(parser), None).await;
    // #1–#20: assigned, unassigned, assigned again; #21–#40: assigned, unassigned. An issue's
    // deliveries follow each other closely.
    for number in 1..=40 {
        let mut events = vec![Event::assigned(number, SMALL), unassigned(number)];
        if number <= 20 {
            events.push(Event::assigned(number, SMALL));
        }
        for event in &events {
            h.record(event).await;
        }
    }
    // All of them wait when the worker starts (as after a burst or a restart).
    let inbox = Running::start(h, InboxConfig::default());
    inbox.wait_until_none_pending().await;
    let h = inbox.stop().await;
    let counts = h.store.delivery_counts().await.unwrap();
    assert_eq!((counts.pending, counts.processed), (0, 100));
    for number in 1..=20 {
        assert_eq!(
            h.state(number).await,
            Some(IssueState::Ready),
            "#{number}: assigned, unassigned, assigned again"
        );
    }
    for number in 21..=40 {
        let state = h.state(number).await;
        assert!(
            matches!(state, None | Some(IssueState::Cancelled)),
            "#{number}: assigned, then unassigned, is not queued: {state:?}"
        );
    }
}

#[tokio::test]
async fn gitea_reads_of_different_issues_overlap() {
    const ISSUES: u64 = 8;
    const LATENCY: Duration = Duration::from_millis(250);
    let (gitea, url) = mosaic_gitea::mock::MockGitea::start().await.unwrap();
    let repo: mosaic_domain::RepoName = "example/example".parse().unwrap();
    for n in 1..=ISSUES {
        let created = gitea.create_issue(
            &repo,
            mosaic_gitea::mock::NewIssue::titled(&format!("Issue {n}"))
                .body(SMALL)
                .assigned_to(BOT),
        );
        assert_eq!(created, issue(n));
    }
    gitea.set_latency(LATENCY);
    let client = mosaic_gitea::GiteaClient::new(&mosaic_gitea::GiteaConfig::new(
        url,
        Some(gitea.bot_token()),
    ))
    .unwrap();
    let inbox = running_inbox(
        Arc::new(GatedParser::new(&[])),
        Some(Arc::new(client)),
        InboxConfig::default(),
    )
    .await;
    let started = std::time::Instant::now();
    let mut last = None;
    for n in 1..=ISSUES {
        last = Some(inbox.webhook(&Event::assigned(n, SMALL)).await);
    }
    inbox.wait_until_processed(&last.unwrap()).await;
    for n in 1..=ISSUES {
        inbox.h.wait_for_state(n, IssueState::Ready).await;
    }
    let elapsed = started.elapsed();
    inbox.stop().await;
    assert!(
        gitea.count_requests("GET", "/dependencies") >= ISSUES as usize,
        "every issue's dependencies were read"
    );
    assert!(elapsed >= LATENCY, "Gitea answered slowly: {elapsed:?}");
    // One at a time this takes ISSUES × LATENCY (2 s).
    assert!(elapsed < LATENCY * (ISSUES as u32) / 2, "took {elapsed:?}");
}

#[tokio::test]
async fn every_session_keeps_its_spend_whatever_ended_it_and_the_issue_sums_them() {
    let spend = |n: u32| mosaic_context::AgentSpend {
        input_tokens: 100 * u64::from(n),
        output_tokens: 10 * u64::from(n),
        cache_read_tokens: 1_000 * u64::from(n),
        cache_creation_tokens: 50 * u64::from(n),
        cost_usd: 0.25 * f64::from(n),
    };
    let h = harness().await;
    h.deliver(&Event::assigned(1, SMALL)).await;
    assert_eq!(h.engine.dispatch_once().await, 1);
    let first = h.runtime.sessions()[0].clone();
    first.state.send_modify(|state| state.spend = spend(1));
    first.finish(SessionOutcome::Failed {
        reason: "agent reported an error: API Error: 500".into(),
    });
    h.wait_for_state(1, IssueState::Ready).await;
    assert_eq!(h.engine.dispatch_once().await, 1);
    let second = h.runtime.sessions()[1].clone();
    second.state.send_modify(|state| state.spend = spend(2));
    second.finish(SessionOutcome::Succeeded {
        summary: "Done.".into(),
        tokens: spend(2).total_tokens(),
        cost_usd: Some(0.5),
    });
    h.wait_for_state(1, IssueState::Completed).await;
    let sessions = h.store.sessions_for_issue(&issue(1)).await.unwrap();
    for (session, n) in [(&first, 1), (&second, 2)] {
        let row = sessions
            .iter()
            .find(|row| row.id == session.id.to_string())
            .unwrap();
        let expected = spend(n);
        assert_eq!(
            (
                row.input_tokens,
                row.output_tokens,
                row.cache_read_tokens,
                row.cache_creation_tokens
            ),
            (
                expected.input_tokens,
                expected.output_tokens,
                expected.cache_read_tokens,
                expected.cache_creation_tokens
            ),
            "{row:?}"
        );
        assert!((row.cost_usd - expected.cost_usd).abs() < 1e-9, "{row:?}");
    }
    let record = h.store.get_issue(&issue(1)).await.unwrap().unwrap();
    assert_eq!((record.input_tokens, record.output_tokens), (300, 30));
    assert!((record.cost_usd - 0.75).abs() < 1e-9, "{}", record.cost_usd);
}

#[tokio::test]
async fn a_crash_keeps_what_the_interrupted_session_had_spent() {
    let mut config = EngineConfig::default();
    config.monitor.poll_interval_ms = 50;
    let h = harness_with(config).await;
    h.deliver(&Event::assigned(1, SMALL)).await;
    assert_eq!(h.engine.dispatch_once().await, 1);
    let spent = mosaic_context::AgentSpend {
        input_tokens: 700,
        output_tokens: 70,
        cache_read_tokens: 7_000,
        cache_creation_tokens: 350,
        cost_usd: 1.75,
    };
    let session = h.runtime.sessions()[0].clone();
    session.state.send_modify(|snapshot| {
        snapshot.spend = spent;
        snapshot.usage = Some(ContextUsage::new(20_000, 128_000).unwrap());
        snapshot.usage_seq += 1;
    });
    // Stored with the reading, while the session runs.
    let mut stored = None;
    for _ in 0..200 {
        let open = h.store.open_sessions().await.unwrap();
        if open.first().is_some_and(|s| s.output_tokens == 70) {
            stored = open.first().cloned();
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let stored = stored.expect("the spend so far was never stored");
    assert_eq!(stored.cache_read_tokens, 7_000);

    // "Crash": the interrupted session ends with those figures, and the issue counts them.
    let (_dir, store, _runtime, _engine, report) = h.restart().await;
    assert_eq!(report.interrupted_sessions, 1);
    let sessions = store.sessions_for_issue(&issue(1)).await.unwrap();
    assert_eq!(sessions[0].outcome, Some(Stored::Interrupted));
    assert_eq!(
        (
            sessions[0].input_tokens,
            sessions[0].output_tokens,
            sessions[0].cache_read_tokens,
            sessions[0].cache_creation_tokens
        ),
        (700, 70, 7_000, 350)
    );
    assert!((sessions[0].cost_usd - 1.75).abs() < 1e-9);
    let record = store.get_issue(&issue(1)).await.unwrap().unwrap();
    assert_eq!((record.input_tokens, record.output_tokens), (700, 70));
    assert!((record.cost_usd - 1.75).abs() < 1e-9, "{}", record.cost_usd);
}

/// A session killed because its issue was unassigned keeps the last figures its agent
/// reported (not the reading stored while it ran), and the cancelled issue counts them.
#[tokio::test]
async fn a_session_ended_by_an_unassignment_keeps_its_last_spend() {
    let spend = |n: u32| mosaic_context::AgentSpend {
        input_tokens: 100 * u64::from(n),
        output_tokens: 10 * u64::from(n),
        cache_read_tokens: 1_000 * u64::from(n),
        cache_creation_tokens: 50 * u64::from(n),
        cost_usd: 0.25 * f64::from(n),
    };
    let mut config = EngineConfig::default();
    config.monitor.poll_interval_ms = 50;
    let h = harness_with(config).await;
    h.deliver(&Event::assigned(1, SMALL)).await;
    assert_eq!(h.engine.dispatch_once().await, 1);
    let session = h.runtime.sessions()[0].clone();
    // A reading while it runs is stored...
    session.state.send_modify(|snapshot| {
        snapshot.spend = spend(1);
        snapshot.usage = Some(ContextUsage::new(20_000, 128_000).unwrap());
        snapshot.usage_seq += 1;
    });
    let mut stored = false;
    for _ in 0..200 {
        let open = h.store.open_sessions().await.unwrap();
        if open.first().is_some_and(|s| s.output_tokens == 10) {
            stored = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(stored, "the spend so far was never stored");
    // ...then the agent reports more, and the issue is unassigned before another reading.
    session
        .state
        .send_modify(|snapshot| snapshot.spend = spend(3));
    h.deliver(&unassigned(1)).await;
    assert_eq!(h.state(1).await, Some(IssueState::Cancelled));
    assert!(
        session.closed.lock().unwrap().is_some(),
        "the session was closed"
    );
    for _ in 0..200 {
        if h.store.open_sessions().await.unwrap().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let sessions = h.store.sessions_for_issue(&issue(1)).await.unwrap();
    assert_eq!(sessions.len(), 1, "{sessions:?}");
    let row = &sessions[0];
    assert_eq!(row.outcome, Some(Stored::Killed), "{row:?}");
    let expected = spend(3);
    assert_eq!(
        (
            row.input_tokens,
            row.output_tokens,
            row.cache_read_tokens,
            row.cache_creation_tokens
        ),
        (
            expected.input_tokens,
            expected.output_tokens,
            expected.cache_read_tokens,
            expected.cache_creation_tokens
        ),
        "{row:?}"
    );
    assert!((row.cost_usd - expected.cost_usd).abs() < 1e-9, "{row:?}");
    let record = h.store.get_issue(&issue(1)).await.unwrap().unwrap();
    assert_eq!(record.state, IssueState::Cancelled);
    assert_eq!((record.input_tokens, record.output_tokens), (300, 30));
    assert!((record.cost_usd - 0.75).abs() < 1e-9, "{}", record.cost_usd);
}

#[tokio::test]
async fn an_issue_cannot_be_reopened_and_dispatched_while_its_work_directory_is_removed() {
    let h = harness().await;
    h.deliver(&Event::assigned(1, SMALL)).await;
    h.complete(1).await;
    let (started_tx, started_rx) = tokio::sync::oneshot::channel();
    let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
    let engine = h.engine.clone();
    let cleanup = tokio::spawn(async move {
        engine
            .while_finished_issues_stay_finished(
                Utc::now() + chrono::Duration::seconds(1),
                move |finished| {
                    let _ = started_tx.send(());
                    // Removing directories takes a while.
                    release_rx.recv().unwrap();
                    finished.expired
                },
            )
            .await
            .unwrap()
    });
    started_rx.await.unwrap();
    let reopened = Event {
        action: "reopened",
        ..Event::assigned(1, SMALL)
    };
    // Reopened and dispatched meanwhile: it waits until the removal is over.
    let raced = tokio::time::timeout(Duration::from_millis(300), async {
        h.deliver(&reopened).await;
        h.engine.dispatch_once().await
    })
    .await;
    assert!(
        raced.is_err(),
        "dispatched while its directory was being removed"
    );
    release_tx.send(()).unwrap();
    assert_eq!(cleanup.await.unwrap(), [issue(1)]);
    h.deliver(&reopened).await;
    assert_eq!(h.engine.dispatch_once().await, 1);
}
