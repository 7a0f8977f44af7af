//! Reconciliation against the in-memory Gitea, the real SQLite store and the real engine: the
//! synthetic deliveries go through the same inbox worker and engine as webhooks do.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use mosaic_context::MockAgentRuntime;
use mosaic_domain::events::IssueAction;
use mosaic_domain::{
    AgentProfile, AgentProfiles, AssignmentPolicy, Difficulty, IssueRef, IssueState, PriorityOrder,
    RepoName, WebhookPayload,
};
use mosaic_engine::engine::{Engine, EngineConfig, EngineParts};
use mosaic_engine::inbox::{InboxConfig, InboxWorker, decode};
use mosaic_engine::outbox::{OutboxConfig, OutboxWorker};
use mosaic_engine::reconcile::{
    ChangeKind, RECONCILER_SENDER, ReconcileConfig, ReconcileError, Reconciler,
};
use mosaic_gitea::mock::{MockGitea, NewIssue};
use mosaic_gitea::{BotIdentity, GiteaApi, GiteaClient, GiteaConfig, IssueState as TrackerState};
use mosaic_parser::{KnownAgents, TemplateParser, TemplateSettings};
use mosaic_store::{Delivery, IntakeStatus, NewDelivery, RecordOutcome, Store, StoreConfig};
use mosaic_store_sqlite::SqliteStore;
use sha2::{Digest, Sha256};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

const BOT: &str = MockGitea::BOT_LOGIN;
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

struct Harness {
    _dir: tempfile::TempDir,
    store: Arc<dyn Store>,
    gitea: MockGitea,
    client: Arc<GiteaClient>,
    bot: BotIdentity,
    engine: Engine,
    notify_inbox: Arc<Notify>,
    repo: RepoName,
}

async fn harness() -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> =
        Arc::new(SqliteStore::open(&StoreConfig::sqlite(dir.path().join("r.db"))).unwrap());
    let (gitea, url) = MockGitea::start().await.unwrap();
    let client =
        Arc::new(GiteaClient::new(&GiteaConfig::new(url, Some(gitea.bot_token()))).unwrap());
    let bot = BotIdentity::resolve(client.as_ref(), Some(BOT))
        .await
        .unwrap();
    let profiles = profiles();
    // No dispatcher runs in these tests, so the runtime is never asked to start anything.
    let (engine, _) = Engine::start(EngineParts {
        store: Arc::clone(&store),
        parser: Arc::new(TemplateParser::new(
            TemplateSettings::default(),
            KnownAgents::new(profiles.names()),
        )),
        gitea: Some(client.clone() as Arc<dyn GiteaApi>),
        acts_for: BOT.into(),
        bot_login: BOT.into(),
        redactor: mosaic_security::Redactor::default(),
        profiles,
        policy: AssignmentPolicy::default(),
        priorities: PriorityOrder::default(),
        runtime: Arc::new(MockAgentRuntime::new()),
        config: EngineConfig::default(),
        workspaces: None,
    })
    .await
    .unwrap();
    Harness {
        _dir: dir,
        store,
        gitea,
        client,
        bot,
        engine,
        notify_inbox: Arc::new(Notify::new()),
        repo: "acme/widgets".parse().unwrap(),
    }
}

fn fast() -> ReconcileConfig {
    ReconcileConfig {
        max_requests_per_sec: 1_000,
        ..ReconcileConfig::default()
    }
}

impl Harness {
    fn reconciler(&self, config: ReconcileConfig) -> Reconciler {
        Reconciler::new(
            Arc::clone(&self.store),
            self.client.clone(),
            self.bot.clone(),
            config,
            Arc::clone(&self.notify_inbox),
        )
    }

    fn new_issue(&self, title: &str, assignee: Option<&str>) -> IssueRef {
        let mut new = NewIssue::titled(title).body(SMALL);
        if let Some(login) = assignee {
            new = new.assigned_to(login);
        }
        self.gitea.create_issue(&self.repo, new)
    }

    /// A bot-assigned issue whose body declares it blocks `targets` (`Blocks: #N`); every issue
    /// of `targets` and then the blocker are delivered as assigned and handled.
    async fn declaring_blocker(&self, targets: &[&IssueRef]) -> IssueRef {
        let numbers: Vec<String> = targets.iter().map(|t| format!("#{}", t.number)).collect();
        let body = format!(
            "{SMALL}\n## Dependencies\n- Blocks: {}\n",
            numbers.join(" and ")
        );
        let blocker = self.gitea.create_issue(
            &self.repo,
            NewIssue::titled("blocks others")
                .body(&body)
                .assigned_to(BOT),
        );
        for issue in targets.iter().copied().chain([&blocker]) {
            self.webhook(issue, "assigned", "alice").await;
        }
        self.process_inbox().await;
        blocker
    }

    /// The webhook Gitea sends for `issue` now, recorded as intake would.
    async fn webhook(&self, issue: &IssueRef, action: &str, sender: &str) {
        let body =
            serde_json::to_vec(&self.gitea.issue_event(issue, action, sender).unwrap()).unwrap();
        self.store
            .record_delivery(NewDelivery {
                delivery_id: Some(format!("hook-{}-{action}-{}", issue.number, Utc::now())),
                event: "issues".into(),
                event_type: Some("issues".into()),
                action: Some(action.into()),
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

    async fn pending(&self) -> Vec<Delivery> {
        self.store
            .pending_deliveries(Utc::now(), 100)
            .await
            .unwrap()
    }

    /// Runs the inbox through the engine until nothing is pending.
    async fn process_inbox(&self) {
        let worker = InboxWorker::new(
            Arc::clone(&self.store),
            Arc::new(self.engine.clone()),
            Arc::new(Notify::new()),
            InboxConfig::default(),
        );
        while worker.run_once().await.unwrap() > 0 {}
        assert!(self.pending().await.is_empty(), "every delivery handled");
    }

    async fn state(&self, issue: &IssueRef) -> Option<IssueState> {
        self.store
            .get_issue(issue)
            .await
            .unwrap()
            .map(|record| record.state)
    }
}

fn kinds(report: &mosaic_engine::reconcile::ReconcileReport) -> Vec<(u64, ChangeKind, String)> {
    let mut kinds: Vec<_> = report
        .changes
        .iter()
        .map(|c| (c.issue.number, c.kind, c.action.clone()))
        .collect();
    kinds.sort();
    kinds
}

#[tokio::test]
async fn a_missed_assignment_and_a_missed_close_are_repaired_through_the_inbox() {
    let h = harness().await;
    let missed = h.new_issue("never announced", Some(BOT));
    let closed = h.new_issue("announced, closed silently", Some(BOT));
    let unrelated = h.new_issue("someone else's", Some("alice"));
    h.webhook(&closed, "assigned", "alice").await;
    h.process_inbox().await;
    assert_eq!(h.state(&closed).await, Some(IssueState::Ready));
    assert_eq!(h.state(&missed).await, None);
    h.gitea.set_issue_state(&closed, TrackerState::Closed);

    let reconciler = h.reconciler(fast());
    let report = reconciler.run_once().await.unwrap();
    assert_eq!(
        kinds(&report),
        vec![
            (
                missed.number,
                ChangeKind::MissedAssignment,
                "assigned".into()
            ),
            (closed.number, ChangeKind::MissedClose, "closed".into()),
        ]
    );
    assert_eq!(report.recorded(), 2);
    assert_eq!((report.open_assigned, report.coordinated), (1, 1));
    tokio::time::timeout(Duration::from_secs(1), h.notify_inbox.notified())
        .await
        .expect("the inbox worker is woken");

    // The synthetic deliveries are valid issue webhooks, from the reconciler, not the bot.
    let pending = h.pending().await;
    assert_eq!(pending.len(), 2);
    for delivery in &pending {
        assert!(
            delivery
                .delivery_id
                .as_deref()
                .unwrap()
                .starts_with("reconcile-")
        );
        let WebhookPayload::Issue(payload) = decode(delivery).unwrap() else {
            panic!("an issue event");
        };
        assert_eq!(payload.sender.as_ref().unwrap().login, RECONCILER_SENDER);
        assert_eq!(payload.action.as_str(), delivery.action.as_deref().unwrap());
        let issue = payload.issue_ref().unwrap();
        if issue == missed {
            assert_eq!(payload.action, IssueAction::Assigned);
            assert_eq!(delivery.event_type.as_deref(), Some("issue_assign"));
            assert_eq!(payload.issue.assignee_logins(), vec![BOT]);
            assert_eq!(payload.issue.body, SMALL);
        } else {
            assert_eq!(issue, closed);
            assert_eq!(payload.action, IssueAction::Closed);
            assert!(!payload.issue.state.is_open());
        }
    }

    // The engine handles them like webhooks.
    h.process_inbox().await;
    assert_eq!(h.state(&missed).await, Some(IssueState::Ready));
    assert_eq!(h.state(&closed).await, Some(IssueState::Cancelled));
    assert_eq!(h.state(&unrelated).await, None);

    // Nothing left to repair: a second run changes nothing.
    let again = reconciler.run_once().await.unwrap();
    assert!(again.changes.is_empty(), "{again:?}");
    assert!(h.pending().await.is_empty());
    let counts = reconciler.stats().counts();
    assert_eq!(
        (
            counts.runs,
            counts.missed_assignments,
            counts.missed_closes,
            counts.failed_runs
        ),
        (2, 1, 1, 0)
    );
}

#[tokio::test]
async fn unassignments_deletions_and_dependency_changes_are_repaired() {
    let h = harness().await;
    let unassigned = h.new_issue("taken back", Some(BOT));
    let deleted = h.new_issue("deleted by an admin", Some(BOT));
    let waiting = h.new_issue("gains a dependency", Some(BOT));
    let blocker = h.new_issue("the blocker", Some("alice"));
    for issue in [&unassigned, &deleted, &waiting] {
        h.webhook(issue, "assigned", "alice").await;
    }
    h.process_inbox().await;
    assert_eq!(h.state(&waiting).await, Some(IssueState::Ready));

    h.gitea.set_assignees(&unassigned, &["alice"]);
    assert!(h.gitea.delete_issue(&deleted));
    // Gitea sends no webhook when dependencies change.
    assert!(h.gitea.add_dependency(&waiting, &blocker));

    let reconciler = h.reconciler(fast());
    let report = reconciler.run_once().await.unwrap();
    assert_eq!(
        kinds(&report),
        vec![
            (
                unassigned.number,
                ChangeKind::MissedUnassignment,
                "unassigned".into()
            ),
            (deleted.number, ChangeKind::Deleted, "deleted".into()),
            (
                waiting.number,
                ChangeKind::DependenciesChanged,
                "edited".into()
            ),
        ]
    );
    h.process_inbox().await;
    assert_eq!(h.state(&unassigned).await, Some(IssueState::Cancelled));
    assert_eq!(h.state(&deleted).await, Some(IssueState::Cancelled));
    assert_eq!(h.state(&waiting).await, Some(IssueState::Blocked));
    assert!(reconciler.run_once().await.unwrap().changes.is_empty());

    // The blocker is closed without a webhook reaching the coordinator: it is repaired too,
    // and the waiting issue becomes ready.
    h.gitea.set_issue_state(&blocker, TrackerState::Closed);
    let report = reconciler.run_once().await.unwrap();
    assert_eq!(
        kinds(&report),
        vec![(blocker.number, ChangeKind::BlockerClosed, "closed".into())]
    );
    h.process_inbox().await;
    assert_eq!(h.state(&waiting).await, Some(IssueState::Ready));
    assert_eq!(h.state(&blocker).await, None, "never coordinated");
    assert!(reconciler.run_once().await.unwrap().changes.is_empty());

    // The dependency removed again: the waiting issue is re-read (and stays ready).
    assert!(h.gitea.remove_dependency(&waiting, &blocker));
    let report = reconciler.run_once().await.unwrap();
    assert_eq!(
        kinds(&report),
        vec![(
            waiting.number,
            ChangeKind::DependenciesChanged,
            "edited".into()
        )]
    );
    h.process_inbox().await;
    assert!(h.store.dependency_edges().await.unwrap().is_empty());
    assert!(reconciler.run_once().await.unwrap().changes.is_empty());

    // And added again with the blocker reopened: the list is back to an earlier state, and
    // the repair is recorded and applied again (not taken for the earlier one).
    h.gitea.set_issue_state(&blocker, TrackerState::Open);
    assert!(h.gitea.add_dependency(&waiting, &blocker));
    let report = reconciler.run_once().await.unwrap();
    assert_eq!(
        kinds(&report),
        vec![(
            waiting.number,
            ChangeKind::DependenciesChanged,
            "edited".into()
        )]
    );
    assert_eq!(report.recorded(), 1, "{report:?}");
    h.process_inbox().await;
    assert_eq!(h.state(&waiting).await, Some(IssueState::Blocked));
    assert!(reconciler.run_once().await.unwrap().changes.is_empty());
    let counts = reconciler.stats().counts();
    assert_eq!(
        (
            counts.missed_unassignments,
            counts.deleted,
            counts.dependencies_changed,
            counts.blockers_closed
        ),
        (1, 1, 3, 1)
    );
}

#[tokio::test]
async fn the_bots_own_writes_are_not_fed_back() {
    let h = harness().await;
    let issue = h.new_issue("queued", Some(BOT));
    h.webhook(&issue, "assigned", "alice").await;
    h.process_inbox().await;
    // The outbox writes the status comment and the state label as the bot.
    let outbox = OutboxWorker::new(
        Arc::clone(&h.store),
        h.client.clone(),
        Arc::new(Notify::new()),
        OutboxConfig {
            coalesce_ms: 0,
            ..OutboxConfig::default()
        },
    );
    while outbox.run_once().await.unwrap() > 0 {}
    assert_eq!(h.gitea.comments(&issue).len(), 1);
    assert!(
        h.gitea
            .issue_labels(&issue)
            .contains(&"mosaic:queued".to_owned())
    );
    // The bot's own events arrive as webhooks too; recorded, never acted on.
    h.webhook(&issue, "label_updated", BOT).await;
    h.process_inbox().await;

    let reconciler = h.reconciler(fast());
    let report = reconciler.run_once().await.unwrap();
    assert!(report.changes.is_empty(), "{report:?}");
    assert_eq!(h.state(&issue).await, Some(IssueState::Ready));
}

#[tokio::test]
async fn a_missed_reassignment_is_repaired_but_an_operator_cancel_is_kept() {
    let h = harness().await;
    let issue = h.new_issue("comes back", Some(BOT));
    h.webhook(&issue, "assigned", "alice").await;
    h.process_inbox().await;
    // Unassigned with a webhook: cancelled (terminal), and the stored snapshot says so.
    h.gitea.set_assignees(&issue, &["alice"]);
    h.webhook(&issue, "unassigned", "alice").await;
    h.process_inbox().await;
    assert_eq!(h.state(&issue).await, Some(IssueState::Cancelled));
    let reconciler = h.reconciler(fast());
    assert!(reconciler.run_once().await.unwrap().changes.is_empty());

    // Assigned again, webhook lost.
    h.gitea.set_assignees(&issue, &[BOT]);
    let report = reconciler.run_once().await.unwrap();
    assert_eq!(
        kinds(&report),
        vec![(
            issue.number,
            ChangeKind::MissedAssignment,
            "assigned".into()
        )]
    );
    h.process_inbox().await;
    assert_eq!(h.state(&issue).await, Some(IssueState::Ready));

    // An operator cancels it through the API while it stays assigned: that is not a missed
    // event, and the reconciler must not undo it.
    h.engine.cancel(&issue).await.unwrap();
    assert_eq!(h.state(&issue).await, Some(IssueState::Cancelled));
    assert!(reconciler.run_once().await.unwrap().changes.is_empty());
}

#[tokio::test]
async fn a_gitea_outage_fails_the_run_and_the_loop_goes_on() {
    let h = harness().await;
    let missed = h.new_issue("missed", Some(BOT));
    h.gitea.fail_next("/repos/issues/search", 503, 1);
    let reconciler = h.reconciler(fast());
    let err = reconciler.run_once().await.unwrap_err();
    assert!(matches!(err, ReconcileError::Gitea(_)), "{err}");
    assert!(h.pending().await.is_empty());
    assert_eq!(reconciler.stats().counts().failed_runs, 1);

    // The loop: the first run (at start) fails, the next one (after the interval) repairs.
    h.gitea.fail_next("/repos/issues/search", 503, 1);
    let reconciler = h.reconciler(ReconcileConfig {
        interval_secs: 1,
        ..fast()
    });
    let stats = reconciler.stats();
    let cancel = CancellationToken::new();
    let task = tokio::spawn(reconciler.run(cancel.clone()));
    for _ in 0..300 {
        if stats.counts().missed_assignments == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let counts = stats.counts();
    assert_eq!((counts.failed_runs, counts.missed_assignments), (1, 1));
    assert!(counts.runs >= 2);
    cancel.cancel();
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("stops when cancelled")
        .unwrap();
    let pending = h.pending().await;
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0].issue_number, Some(missed.number));
}

#[tokio::test]
async fn configured_repositories_are_listed_and_requests_are_paced() {
    let h = harness().await;
    let other: RepoName = "acme/gadgets".parse().unwrap();
    h.new_issue("in widgets", Some(BOT));
    let gadget = h.gitea.create_issue(
        &other,
        NewIssue::titled("in gadgets").body(SMALL).assigned_to(BOT),
    );
    let reconciler = h.reconciler(ReconcileConfig {
        max_requests_per_sec: 4,
        repositories: vec![other.clone()],
        ..ReconcileConfig::default()
    });
    h.gitea.clear_requests();
    let started = std::time::Instant::now();
    let report = reconciler.run_once().await.unwrap();
    assert_eq!(
        kinds(&report),
        vec![(
            gadget.number,
            ChangeKind::MissedAssignment,
            "assigned".into()
        )]
    );
    assert_eq!(
        report.changes[0].issue, gadget,
        "only the configured repository"
    );
    assert_eq!(h.gitea.count_requests("GET", "/repos/issues/search"), 0);
    // Three runs: the first request of each waits at most one slot after the previous run.
    reconciler.run_once().await.unwrap();
    reconciler.run_once().await.unwrap();
    assert!(
        started.elapsed() >= Duration::from_millis(500),
        "3 requests at 4/s take at least 0.5 s: {:?}",
        started.elapsed()
    );
    assert_eq!(
        h.gitea.count_requests("GET", "/repos/acme/gadgets/issues"),
        3
    );
    // The unprocessed repair is not recorded again: its body is the same.
    assert_eq!(reconciler.stats().counts().duplicates, 2);
    assert_eq!(h.pending().await.len(), 1);
}

#[tokio::test]
async fn a_transferred_issue_is_repaired_as_deleted_from_the_stored_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let sqlite = SqliteStore::open(&StoreConfig::sqlite(dir.path().join("t.db"))).unwrap();
    let old: IssueRef = "acme/widgets#4".parse().unwrap();
    sqlite
        .commit_transitions(vec![mosaic_store::TransitionBatch::update(
            mosaic_store::IssueRecord::new(old.clone(), IssueState::Ready, Utc::now()),
        )])
        .await
        .unwrap();
    sqlite
        .upsert_issue_snapshot(mosaic_store::IssueSnapshot {
            issue: old.clone(),
            title: "moved".into(),
            body: SMALL.into(),
            labels: vec!["mosaic:queued".into()],
            assignees: vec![BOT.into()],
            state: mosaic_domain::events::TrackerState::Open,
            updated_at: Utc::now(),
            html_url: None,
            comments: None,
        })
        .await
        .unwrap();
    let store: Arc<dyn Store> = Arc::new(sqlite);
    // Gitea follows the transfer and shows the issue in its new repository.
    let moved: mosaic_gitea::Issue = serde_json::from_value(serde_json::json!({
        "id": 40, "number": 1, "title": "moved", "body": "", "state": "open",
        "user": {"id": 3, "login": "alice"},
        "assignees": [{"id": 1, "login": BOT}],
        "created_at": "2026-01-01T00:00:00Z", "updated_at": "2026-01-02T00:00:00Z",
        "repository": {"id": 9, "name": "elsewhere", "owner": "acme", "full_name": "acme/elsewhere"}
    }))
    .unwrap();
    let mut api = mosaic_gitea::MockGiteaApi::new();
    api.expect_search_issues_assigned_to_me()
        .returning(|_| Ok(Vec::new()));
    api.expect_get_issue()
        .withf(|issue| issue.to_string() == "acme/widgets#4")
        .returning(move |_| Ok(moved.clone()));
    let bot_user = mosaic_gitea::User {
        id: 1,
        login: BOT.into(),
        full_name: String::new(),
        email: String::new(),
        is_admin: false,
    };
    api.expect_current_user()
        .returning(move || Ok(bot_user.clone()));
    let api: Arc<dyn GiteaApi> = Arc::new(api);
    let bot = BotIdentity::resolve(api.as_ref(), None).await.unwrap();
    let reconciler = Reconciler::new(
        Arc::clone(&store),
        api,
        bot,
        fast(),
        Arc::new(Notify::new()),
    );
    let report = reconciler.run_once().await.unwrap();
    assert_eq!(
        kinds(&report),
        vec![(4, ChangeKind::Transferred, "deleted".into())]
    );
    let pending = store.pending_deliveries(Utc::now(), 10).await.unwrap();
    let WebhookPayload::Issue(payload) = decode(&pending[0]).unwrap() else {
        panic!("an issue event");
    };
    assert_eq!(payload.action, IssueAction::Deleted);
    assert_eq!(
        payload.issue_ref().unwrap(),
        old,
        "names the issue the store knows"
    );
    assert_eq!(payload.issue.title, "moved");
    assert_eq!(reconciler.stats().counts().deleted, 1);
}

#[test]
fn the_config_has_the_documented_defaults() {
    let config = ReconcileConfig::default();
    assert_eq!(
        (config.interval_secs, config.max_requests_per_sec),
        (300, 5)
    );
    let url = "http://gitea.invalid".parse().unwrap();
    let gitea = GiteaConfig::new(url, None);
    let from = ReconcileConfig::from_gitea(&gitea);
    assert_eq!(from.interval_secs, gitea.reconcile_interval_secs);
    assert_eq!(
        from.max_requests_per_sec,
        gitea.reconcile_max_requests_per_sec
    );
}

#[tokio::test]
async fn a_dependency_declared_by_its_blocker_is_not_taken_for_a_change() {
    let h = harness().await;
    let waiting = h.new_issue("waits", Some(BOT));
    let blocker = h.declaring_blocker(&[&waiting]).await;
    assert_eq!(h.state(&waiting).await, Some(IssueState::Blocked));
    assert_eq!(h.state(&blocker).await, Some(IssueState::Ready));

    // Gitea's dependency list of the waiting issue is empty; the edge is the metadata's.
    let report = h.reconciler(fast()).run_once().await.unwrap();
    assert!(report.changes.is_empty(), "{report:?}");
    assert_eq!(h.state(&waiting).await, Some(IssueState::Blocked));
}

/// Withdrawing `Blocks: #N` removes only the engine's own edge: when Gitea's dependency list of
/// #N also names the blocker (or cannot be read), #N keeps waiting; the reconciler takes the
/// edge away once Gitea's list no longer has it.
#[tokio::test]
async fn withdrawing_a_declaration_keeps_the_edge_gitea_also_lists() {
    let h = harness().await;
    let listed = h.new_issue("also in Gitea's list", Some(BOT));
    let unreadable = h.new_issue("list cannot be read", Some(BOT));
    let blocker = h.declaring_blocker(&[&listed, &unreadable]).await;
    assert_eq!(h.state(&listed).await, Some(IssueState::Blocked));
    assert_eq!(h.state(&unreadable).await, Some(IssueState::Blocked));
    assert!(h.gitea.add_dependency(&listed, &blocker));

    // The blocker's body no longer declares anything; Gitea fails on the second issue's list.
    assert!(h.gitea.set_body(&blocker, SMALL));
    h.gitea.fail_next(
        &format!("/issues/{}/dependencies", unreadable.number),
        500,
        10,
    );
    h.webhook(&blocker, "edited", "alice").await;
    h.process_inbox().await;
    let blockers_of = |edges: &[mosaic_store::DependencyEdge], issue: &IssueRef| -> Vec<u64> {
        edges
            .iter()
            .filter(|edge| &edge.issue == issue)
            .map(|edge| edge.blocker.number)
            .collect()
    };
    let edges = h.store.dependency_edges().await.unwrap();
    assert_eq!(blockers_of(&edges, &listed), vec![blocker.number]);
    assert_eq!(blockers_of(&edges, &unreadable), vec![blocker.number]);
    assert_eq!(h.state(&listed).await, Some(IssueState::Blocked));
    assert_eq!(h.state(&unreadable).await, Some(IssueState::Blocked));

    // The reconciler sees Gitea's lists: the listed edge is Gitea's and stays; the other is
    // nobody's any more and goes.
    h.gitea.clear_failures();
    let report = h.reconciler(fast()).run_once().await.unwrap();
    assert_eq!(
        kinds(&report),
        vec![(
            unreadable.number,
            ChangeKind::DependenciesChanged,
            "edited".into()
        )]
    );
    h.process_inbox().await;
    assert_eq!(h.state(&listed).await, Some(IssueState::Blocked));
    assert_eq!(h.state(&unreadable).await, Some(IssueState::Ready));
}

// ----- possible replays: the same body under a new delivery id (issue 6) -----

impl Harness {
    /// Records `body` as intake would under `delivery_id`.
    async fn record_body(&self, issue: &IssueRef, delivery_id: &str, body: &[u8]) -> RecordOutcome {
        self.store
            .record_delivery(NewDelivery {
                delivery_id: Some(delivery_id.into()),
                event: "issues".into(),
                event_type: Some("issue_assign".into()),
                action: None,
                repository: Some(issue.repo.to_string()),
                issue_number: Some(issue.number),
                body_sha256: Sha256::digest(body).into(),
                body: body.to_vec(),
                status: IntakeStatus::Pending,
                received_at: Utc::now(),
            })
            .await
            .unwrap()
    }

    /// `GET` requests for the issue itself (not its comments or dependencies).
    fn issue_reads(&self, issue: &IssueRef) -> usize {
        let path = format!("/api/v1/repos/{}/issues/{}", issue.repo, issue.number);
        self.gitea
            .requests()
            .iter()
            .filter(|r| r.method == "GET" && r.path == path)
            .count()
    }
}

#[tokio::test]
async fn a_real_repeat_within_one_second_is_honoured_after_asking_gitea() {
    let h = harness().await;
    let issue = h.new_issue("assigned twice", Some(BOT));
    // Assign, unassign, assign within one second: Gitea sends the first body again, byte for
    // byte, under a new delivery id.
    let assigned =
        serde_json::to_vec(&h.gitea.issue_event(&issue, "assigned", "alice").unwrap()).unwrap();
    assert!(matches!(
        h.record_body(&issue, "hook-1", &assigned).await,
        RecordOutcome::Recorded { .. }
    ));
    // Handled before the unassign arrives (handled together, the unassign waiting behind it
    // would make the engine give its evaluation up: never queued, nothing to cancel).
    h.process_inbox().await;
    h.gitea.set_assignees(&issue, &[]);
    let unassigned =
        serde_json::to_vec(&h.gitea.issue_event(&issue, "unassigned", "alice").unwrap()).unwrap();
    h.record_body(&issue, "hook-2", &unassigned).await;
    h.gitea.set_assignees(&issue, &[BOT]);
    assert!(matches!(
        h.record_body(&issue, "hook-3", &assigned).await,
        RecordOutcome::PossibleReplay { .. }
    ));
    // The same delivery id again is a duplicate, and is never handled.
    assert!(matches!(
        h.record_body(&issue, "hook-3", &assigned).await,
        RecordOutcome::Duplicate { .. }
    ));
    h.gitea.clear_requests();
    h.process_inbox().await;
    assert_eq!(h.state(&issue).await, Some(IssueState::Ready));
    assert_eq!(
        h.issue_reads(&issue),
        1,
        "only the possible replay is confirmed, with one call"
    );
    let history: Vec<_> = h
        .store
        .issue_history(&issue)
        .await
        .unwrap()
        .iter()
        .map(|t| t.to)
        .collect();
    assert_eq!(
        history,
        vec![
            IssueState::Pending,
            IssueState::Ready,
            IssueState::Cancelled,
            IssueState::Pending,
            IssueState::Ready
        ]
    );
}

#[tokio::test]
async fn a_replayed_old_delivery_changes_nothing() {
    let h = harness().await;
    let issue = h.new_issue("unassigned later", Some(BOT));
    let assigned =
        serde_json::to_vec(&h.gitea.issue_event(&issue, "assigned", "alice").unwrap()).unwrap();
    h.record_body(&issue, "hook-1", &assigned).await;
    h.process_inbox().await;
    h.gitea.set_assignees(&issue, &[]);
    h.webhook(&issue, "unassigned", "alice").await;
    h.process_inbox().await;
    assert_eq!(h.state(&issue).await, Some(IssueState::Cancelled));
    let outbox = h.store.outbox_for_issue(&issue).await.unwrap().len();
    let snapshot = h.store.get_issue_snapshot(&issue).await.unwrap();

    // Someone sends the old "assigned" body again under a fresh delivery id.
    assert!(matches!(
        h.record_body(&issue, "replayed-by-someone", &assigned)
            .await,
        RecordOutcome::PossibleReplay { .. }
    ));
    h.process_inbox().await;
    assert_eq!(h.state(&issue).await, Some(IssueState::Cancelled));
    assert_eq!(
        h.store.outbox_for_issue(&issue).await.unwrap().len(),
        outbox
    );
    let now = h.store.get_issue_snapshot(&issue).await.unwrap().unwrap();
    assert!(now.assignees.is_empty(), "the stored snapshot is Gitea's");
    assert_eq!(now.updated_at, snapshot.unwrap().updated_at);
}
