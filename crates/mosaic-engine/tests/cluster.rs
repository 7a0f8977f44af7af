//! Sessions shared among coordinators (the cluster module) on a real SQLite store: the leader's
//! `RemoteRuntime` requests, a `SessionWorker` claims and runs with a scripted local runtime,
//! and what the leader's session shows is what the claimant's session did.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chrono::Utc;
use mosaic_context::{
    AgentRuntime, AgentSession, ContextUsage, KillReason, RuntimeError, SessionError, SessionId,
    SessionOutcome, SessionSnapshot, SessionTask,
};
use mosaic_domain::{AgentProfile, AgentProfiles, Difficulty, IssueRef, IssueState};
use mosaic_engine::cluster::{
    RemoteConfig, RemoteRuntime, SessionWorker, WorkerConfig, WorkerParts,
};
use mosaic_store::{IssueRecord, Peer, StateTransition, Store, StoreConfig, TransitionBatch};
use mosaic_store_sqlite::SqliteStore;
use mosaic_workspace::{
    PrepareRequest, Prepared, Pushed, Removed, Workspace, WorkspaceError, WorkspaceState,
    Workspaces,
};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

// ----- the claimant's scripted runtime -----

#[derive(Debug)]
struct LocalSession {
    id: SessionId,
    issue: IssueRef,
    state: watch::Sender<SessionSnapshot>,
    sent: Mutex<Vec<String>>,
    /// Closing is asked for but the agent finishes its own way (its turn ends first).
    finishes_its_turn: bool,
    close_asked: Mutex<Option<String>>,
}

impl LocalSession {
    fn report_usage(&self, used: u64) {
        self.state.send_modify(|snapshot| {
            snapshot.usage = Some(ContextUsage::new(used, 100_000).unwrap());
            snapshot.usage_seq += 1;
        });
    }

    fn end(&self, outcome: SessionOutcome) {
        self.state
            .send_modify(|snapshot| snapshot.outcome = outcome);
    }
}

#[async_trait]
impl AgentSession for LocalSession {
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
        Some(4321)
    }
    async fn usage(&self) -> Result<Option<ContextUsage>, SessionError> {
        Ok(self.state.borrow().usage)
    }
    async fn send(&self, prompt: &str) -> Result<(), SessionError> {
        self.sent.lock().unwrap().push(prompt.to_owned());
        Ok(())
    }
    async fn compact(&self, _instructions: &str) -> Result<ContextUsage, SessionError> {
        let usage = ContextUsage::new(20_000, 100_000).unwrap();
        self.state.send_modify(|snapshot| {
            snapshot.compactions += 1;
            snapshot.usage = Some(usage);
            snapshot.usage_seq += 1;
        });
        Ok(usage)
    }
    async fn close(&self, reason: &str) -> Result<SessionOutcome, SessionError> {
        *self.close_asked.lock().unwrap() = Some(reason.to_owned());
        if self.finishes_its_turn {
            return Ok(self.outcome());
        }
        let outcome = SessionOutcome::Killed {
            reason: KillReason::Closed {
                reason: reason.to_owned(),
            },
        };
        self.end(outcome.clone());
        Ok(outcome)
    }
    fn outcome(&self) -> SessionOutcome {
        self.state.borrow().outcome.clone()
    }
    fn latest_summary(&self) -> Option<String> {
        Some("half way there".to_owned())
    }
    fn subscribe(&self) -> watch::Receiver<SessionSnapshot> {
        self.state.subscribe()
    }
}

#[derive(Debug, Default)]
struct LocalRuntime {
    sessions: Mutex<Vec<Arc<LocalSession>>>,
    /// How long starting a session takes (a first clone, a slow CLI).
    spawn_delay: Duration,
    /// Its sessions finish their turn when asked to close.
    finish_turns: bool,
}

impl LocalRuntime {
    fn sessions(&self) -> Vec<Arc<LocalSession>> {
        self.sessions.lock().unwrap().clone()
    }

    async fn wait_for_sessions(&self, count: usize) -> Vec<Arc<LocalSession>> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let sessions = self.sessions();
            if sessions.len() >= count {
                return sessions;
            }
            assert!(
                Instant::now() < deadline,
                "{} sessions started",
                sessions.len()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

#[async_trait]
impl AgentRuntime for LocalRuntime {
    async fn spawn_with_id(
        &self,
        id: SessionId,
        _profile: &AgentProfile,
        task: &SessionTask,
    ) -> Result<Arc<dyn AgentSession>, RuntimeError> {
        tokio::time::sleep(self.spawn_delay).await;
        let session = Arc::new(LocalSession {
            id,
            issue: task.issue.clone(),
            state: watch::Sender::new(SessionSnapshot::new(Utc::now())),
            sent: Mutex::new(Vec::new()),
            finishes_its_turn: self.finish_turns,
            close_asked: Mutex::new(None),
        });
        self.sessions.lock().unwrap().push(Arc::clone(&session));
        Ok(session)
    }
    fn can_compact(&self, _profile: &AgentProfile) -> bool {
        true
    }
}

// ----- the claimant's worktrees, as far as pruning goes -----

/// Records every `prune_orphans` call; nothing else is used by these tests.
#[derive(Debug, Default)]
struct PruneLog {
    calls: Mutex<Vec<Vec<IssueRef>>>,
}

fn unused() -> WorkspaceError {
    WorkspaceError::Spawn {
        program: "git".to_owned(),
        message: "not used by these tests".to_owned(),
    }
}

#[async_trait]
impl Workspaces for PruneLog {
    async fn prepare(&self, _: &PrepareRequest) -> Result<Prepared, WorkspaceError> {
        Err(unused())
    }
    async fn state(&self, _: &Workspace) -> Result<WorkspaceState, WorkspaceError> {
        Err(unused())
    }
    async fn follow_remote(&self, _: &Workspace) -> Result<bool, WorkspaceError> {
        Err(unused())
    }
    async fn commit_leftovers(&self, _: &Workspace) -> Result<Option<String>, WorkspaceError> {
        Err(unused())
    }
    async fn ahead_of_base(&self, _: &Workspace) -> Result<u64, WorkspaceError> {
        Err(unused())
    }
    async fn read_base_file(
        &self,
        _: &Workspace,
        _: &str,
    ) -> Result<Option<String>, WorkspaceError> {
        Err(unused())
    }
    async fn push(&self, _: &Workspace) -> Result<Pushed, WorkspaceError> {
        Err(unused())
    }
    async fn cleanup(&self, _: &Workspace) -> Result<Removed, WorkspaceError> {
        Err(unused())
    }
    async fn prune_orphans(&self, live: &[IssueRef]) -> Result<Vec<Removed>, WorkspaceError> {
        let mut live = live.to_vec();
        live.sort();
        self.calls.lock().unwrap().push(live);
        Ok(Vec::new())
    }
    async fn free_bytes(&self) -> Result<u64, WorkspaceError> {
        Err(unused())
    }
    async fn disk_usage(&self, _: &Workspace) -> Result<u64, WorkspaceError> {
        Err(unused())
    }
}

// ----- set-up -----

fn profile() -> AgentProfile {
    AgentProfile {
        name: "glm".into(),
        context_window: 100_000,
        cost_input_per_mtok: 0.0,
        cost_output_per_mtok: 0.0,
        max_difficulty: Difficulty::High,
        self_hosted: true,
        enabled: true,
        compact_threshold: None,
        rotate_threshold: None,
    }
}

fn task(number: u64) -> SessionTask {
    let issue: IssueRef = format!("o/r#{number}").parse().unwrap();
    SessionTask {
        repository: issue.repo.clone(),
        issue,
        title: "Add caching".to_owned(),
        body: "Cache it.".to_owned(),
        acceptance_criteria: Vec::new(),
        handover_summary: None,
        work_dir: None,
    }
}

struct Cluster {
    dir: tempfile::TempDir,
    store: Arc<dyn Store>,
    leader: RemoteRuntime,
}

// Long enough that a slow store on a busy machine does not end healthy sessions (the fence is
// half of it).
const LOST_AFTER: Duration = Duration::from_millis(1500);

async fn cluster() -> Cluster {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> =
        Arc::new(SqliteStore::open(&StoreConfig::sqlite(dir.path().join("mosaic.db"))).unwrap());
    let leader = RemoteRuntime::new(
        Arc::clone(&store),
        Arc::new(LocalRuntime::default()),
        RemoteConfig {
            poll: Duration::from_millis(20),
            lost_after: LOST_AFTER,
            claim_timeout: Duration::from_secs(60),
        },
    );
    Cluster { dir, store, leader }
}

/// A worker named `name` running at most `capacity` sessions on its own scripted runtime.
fn worker(store: &Arc<dyn Store>, name: &str, capacity: u32) -> (Arc<LocalRuntime>, SessionWorker) {
    worker_on(store, name, capacity, LocalRuntime::default())
}

fn worker_on(
    store: &Arc<dyn Store>,
    name: &str,
    capacity: u32,
    runtime: LocalRuntime,
) -> (Arc<LocalRuntime>, SessionWorker) {
    let runtime = Arc::new(runtime);
    let worker = SessionWorker::new(WorkerParts {
        store: Arc::clone(store),
        runtime: Arc::clone(&runtime) as Arc<dyn AgentRuntime>,
        profiles: AgentProfiles::new(vec![profile()]).unwrap(),
        gitea: None,
        workspaces: None,
        peer: Peer {
            id: format!("{name}-id"),
            name: name.to_owned(),
            leading: false,
            capacity,
        },
        config: WorkerConfig {
            poll: Duration::from_millis(20),
            report_every: Duration::from_millis(50),
            prune_every: Duration::from_secs(60),
            lost_after: LOST_AFTER,
        },
    });
    (runtime, worker)
}

fn run(worker: SessionWorker) -> (CancellationToken, tokio::task::JoinHandle<()>) {
    let cancel = CancellationToken::new();
    let handle = {
        let cancel = cancel.clone();
        tokio::spawn(async move { worker.run(cancel).await })
    };
    (cancel, handle)
}

async fn wait_until(
    session: &Arc<dyn AgentSession>,
    what: &str,
    done: impl Fn(&SessionSnapshot) -> bool,
) -> SessionSnapshot {
    let mut updates = session.subscribe();
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let snapshot = updates.borrow_and_update().clone();
            if done(&snapshot) {
                return snapshot;
            }
            updates.changed().await.unwrap();
        }
    })
    .await
    .unwrap_or_else(|_| panic!("never: {what}"))
}

/// One worker (`b`, room for one session) on `runtime`, and the leader's session of issue 1,
/// claimed and started.
struct OneClaimed {
    cluster: Cluster,
    session: Arc<dyn AgentSession>,
    /// The session as the claimant runs it.
    ran: Arc<LocalSession>,
    cancel: CancellationToken,
    handle: tokio::task::JoinHandle<()>,
}

async fn one_claimed(runtime: LocalRuntime) -> OneClaimed {
    let cluster = cluster().await;
    let (local, worker) = worker_on(&cluster.store, "b", 1, runtime);
    let (cancel, handle) = run(worker);
    let session = cluster.leader.spawn(&profile(), &task(1)).await.unwrap();
    let ran = local.wait_for_sessions(1).await.remove(0);
    OneClaimed {
        cluster,
        session,
        ran,
        cancel,
        handle,
    }
}

impl OneClaimed {
    /// The store's database file, opened beside the store (to take it away from the worker).
    fn database(&self) -> rusqlite::Connection {
        rusqlite::Connection::open(self.cluster.dir.path().join("mosaic.db")).unwrap()
    }

    async fn stop(self) {
        self.cancel.cancel();
        self.handle.await.unwrap();
    }
}

/// Polls `done` until it holds, failing with `what` after `within`.
async fn poll_until(within: Duration, what: &str, done: impl Fn() -> bool) {
    let deadline = Instant::now() + within;
    while !done() {
        assert!(Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn assert_interrupted(outcome: &SessionOutcome) {
    assert!(
        matches!(
            outcome,
            SessionOutcome::Killed {
                reason: KillReason::Interrupted { .. }
            }
        ),
        "{outcome:?}"
    );
}

// ----- tests -----

#[tokio::test]
async fn a_claimed_session_reports_its_usage_and_outcome_to_the_leader() {
    let claimed = one_claimed(LocalRuntime::default()).await;
    let (session, ran) = (&claimed.session, &claimed.ran);
    // The claimant runs it under the id the leader requested.
    assert_eq!(ran.id, *session.id());

    ran.report_usage(42_000);
    let seen = wait_until(session, "usage", |s| s.usage.is_some()).await;
    assert_eq!(seen.usage.unwrap().used_tokens, 42_000);
    assert_eq!(session.process_id(), Some(4321));

    ran.end(SessionOutcome::Succeeded {
        summary: "done".to_owned(),
        tokens: 50_000,
        cost_usd: None,
    });
    let ended = wait_until(session, "the end", |s| !s.outcome.is_running()).await;
    assert!(
        matches!(&ended.outcome, SessionOutcome::Succeeded { summary, .. } if summary == "done"),
        "{:?}",
        ended.outcome
    );
    assert_eq!(session.latest_summary().as_deref(), Some("half way there"));
    claimed.stop().await;
}

#[tokio::test]
async fn compactions_and_prompts_travel_to_the_claimant_and_back() {
    let claimed = one_claimed(LocalRuntime::default()).await;
    let (session, ran) = (&claimed.session, &claimed.ran);

    let usage = tokio::time::timeout(Duration::from_secs(10), session.compact("keep it short"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(usage.used_tokens, 20_000);
    let seen = wait_until(session, "the compaction", |s| s.compactions == 1).await;
    assert_eq!(seen.usage.unwrap().used_tokens, 20_000);

    tokio::time::timeout(Duration::from_secs(10), session.send("go on"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(*ran.sent.lock().unwrap(), ["go on"]);

    let outcome = tokio::time::timeout(Duration::from_secs(10), session.close("rotated"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        outcome,
        SessionOutcome::Killed {
            reason: KillReason::Closed {
                reason: "rotated".to_owned()
            }
        }
    );
    assert!(!ran.outcome().is_running());
    claimed.stop().await;
}

#[tokio::test]
async fn a_claimant_runs_no_more_than_its_capacity_and_takes_the_next_when_one_ends() {
    let cluster = cluster().await;
    let (local, worker) = worker(&cluster.store, "b", 1);
    let (cancel, handle) = run(worker);
    let first = cluster.leader.spawn(&profile(), &task(1)).await.unwrap();
    let second = cluster.leader.spawn(&profile(), &task(2)).await.unwrap();
    let ran = local.wait_for_sessions(1).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(local.sessions().len(), 1, "claimed beyond its capacity");
    assert_eq!(ran[0].id, *first.id(), "the oldest request first");

    ran[0].end(SessionOutcome::Failed {
        reason: "gave up".to_owned(),
    });
    let ran = local.wait_for_sessions(2).await;
    assert_eq!(ran[1].id, *second.id());
    let ended = wait_until(&first, "the first's end", |s| !s.outcome.is_running()).await;
    assert_eq!(
        ended.outcome,
        SessionOutcome::Failed {
            reason: "gave up".to_owned()
        }
    );
    cancel.cancel();
    handle.await.unwrap();
}

#[tokio::test]
async fn a_claimant_that_falls_silent_loses_its_session_as_interrupted() {
    let cluster = cluster().await;
    let session = cluster.leader.spawn(&profile(), &task(1)).await.unwrap();
    // Claimed by a coordinator that then never reports (it died).
    let dead = Peer {
        id: "dead-id".to_owned(),
        name: "dead".to_owned(),
        leading: false,
        capacity: 1,
    };
    let claimed = cluster
        .store
        .claim_session(&dead, &["glm".to_owned()], LOST_AFTER)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(claimed.session_id, session.id().as_str());
    let started = Instant::now();
    let ended = wait_until(&session, "the loss", |s| !s.outcome.is_running()).await;
    assert!(
        started.elapsed() >= LOST_AFTER / 2,
        "{:?}",
        started.elapsed()
    );
    assert_interrupted(&ended.outcome);
    // Its request is cancelled: the claimant, were it to come back, is told to stop.
    let views = cluster
        .store
        .session_requests(&[session.id().to_string()])
        .await
        .unwrap();
    assert!(views[0].cancelled, "{views:?}");
}

#[tokio::test]
async fn closing_a_session_nobody_claimed_cancels_its_request() {
    let cluster = cluster().await;
    let session = cluster.leader.spawn(&profile(), &task(1)).await.unwrap();
    let outcome = tokio::time::timeout(Duration::from_secs(10), session.close("unassigned"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        outcome,
        SessionOutcome::Killed {
            reason: KillReason::Closed {
                reason: "unassigned".to_owned()
            }
        }
    );
    // A worker starting now finds nothing to claim.
    let (local, worker) = worker(&cluster.store, "late", 1);
    let (cancel, handle) = run(worker);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(local.sessions().is_empty());
    cancel.cancel();
    handle.await.unwrap();
}

#[tokio::test]
async fn a_worker_shutting_down_ends_its_sessions_as_interrupted() {
    // The leader (in `_cluster`) follows on while the worker stops.
    let OneClaimed {
        cluster: _cluster,
        session,
        ran,
        cancel,
        handle,
    } = one_claimed(LocalRuntime::default()).await;
    cancel.cancel();
    tokio::time::timeout(Duration::from_secs(10), handle)
        .await
        .unwrap()
        .unwrap();
    assert!(!ran.outcome().is_running(), "the local session still runs");
    let ended = wait_until(&session, "the end", |s| !s.outcome.is_running()).await;
    assert_interrupted(&ended.outcome);
}

#[tokio::test]
async fn a_worker_keeps_only_the_worktrees_of_issues_running_here_or_in_progress() {
    let cluster = cluster().await;
    // o/r#5 is in progress (its next session may come here); o/r#6 has finished.
    for (number, state) in [(5, IssueState::InProgress), (6, IssueState::Completed)] {
        let issue: IssueRef = format!("o/r#{number}").parse().unwrap();
        let batch = TransitionBatch {
            transition: Some(StateTransition {
                from: None,
                to: state,
                cause: "seeded".to_owned(),
                at: Utc::now(),
            }),
            ..TransitionBatch::update(IssueRecord::new(issue, state, Utc::now()))
        };
        cluster.store.commit_transitions(vec![batch]).await.unwrap();
    }
    let log = Arc::new(PruneLog::default());
    let runtime = Arc::new(LocalRuntime::default());
    let worker = SessionWorker::new(WorkerParts {
        store: Arc::clone(&cluster.store),
        runtime: Arc::clone(&runtime) as Arc<dyn AgentRuntime>,
        profiles: AgentProfiles::new(vec![profile()]).unwrap(),
        gitea: None,
        workspaces: Some(Arc::clone(&log) as Arc<dyn Workspaces>),
        peer: Peer {
            id: "b-id".to_owned(),
            name: "b".to_owned(),
            leading: false,
            capacity: 1,
        },
        config: WorkerConfig {
            poll: Duration::from_millis(20),
            report_every: Duration::from_millis(50),
            prune_every: Duration::from_millis(100),
            lost_after: LOST_AFTER,
        },
    });
    let (cancel, handle) = run(worker);
    // o/r#1 runs here.
    let _session = cluster.leader.spawn(&profile(), &task(1)).await.unwrap();
    runtime.wait_for_sessions(1).await;
    let wanted: Vec<IssueRef> = vec!["o/r#1".parse().unwrap(), "o/r#5".parse().unwrap()];
    let deadline = Instant::now() + Duration::from_secs(10);
    while !log.calls.lock().unwrap().contains(&wanted) {
        assert!(
            Instant::now() < deadline,
            "pruned with {:?}",
            log.calls.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    cancel.cancel();
    handle.await.unwrap();
}

#[tokio::test]
async fn a_request_nobody_claims_fails_saying_why() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> =
        Arc::new(SqliteStore::open(&StoreConfig::sqlite(dir.path().join("mosaic.db"))).unwrap());
    let leader = RemoteRuntime::new(
        Arc::clone(&store),
        Arc::new(LocalRuntime::default()),
        RemoteConfig {
            poll: Duration::from_millis(20),
            lost_after: LOST_AFTER,
            claim_timeout: Duration::from_millis(300),
        },
    );
    let session = leader.spawn(&profile(), &task(1)).await.unwrap();
    let ended = wait_until(&session, "the claim timeout", |s| !s.outcome.is_running()).await;
    assert!(
        matches!(&ended.outcome, SessionOutcome::Failed { reason } if reason.contains("no coordinator with room for agent `glm`")),
        "{:?}",
        ended.outcome
    );
    // Cancelled: a coordinator with room now does not start it.
    let views = store
        .session_requests(&[session.id().to_string()])
        .await
        .unwrap();
    assert!(views[0].cancelled, "{views:?}");
}

#[tokio::test]
async fn a_session_whose_start_outlasts_the_lease_is_not_taken_for_lost() {
    let claimed = one_claimed(LocalRuntime {
        spawn_delay: LOST_AFTER * 3,
        ..LocalRuntime::default()
    })
    .await;
    let (session, ran) = (&claimed.session, &claimed.ran);
    assert!(
        session.outcome().is_running(),
        "taken for lost while starting: {:?}",
        session.outcome()
    );
    ran.report_usage(10_000);
    let seen = wait_until(session, "usage", |s| s.usage.is_some()).await;
    assert!(seen.outcome.is_running(), "{:?}", seen.outcome);
    claimed.stop().await;
}

#[tokio::test]
async fn a_worker_that_cannot_reach_the_store_ends_its_session_before_the_lease_runs_out() {
    let claimed = one_claimed(LocalRuntime::default()).await;
    let ran = &claimed.ran;
    // The store stops taking its reports (as a database out of reach would).
    let database = claimed.database();
    database
        .execute_batch("ALTER TABLE session_requests RENAME TO session_requests_gone")
        .unwrap();
    let cut = Instant::now();
    poll_until(
        LOST_AFTER * 3,
        "the session ran on without the store",
        || !ran.outcome().is_running(),
    )
    .await;
    // Ended before the leader would count it lost, by this coordinator itself.
    assert!(cut.elapsed() < LOST_AFTER * 2, "{:?}", cut.elapsed());
    assert_eq!(
        ran.outcome(),
        SessionOutcome::Killed {
            reason: KillReason::Closed {
                reason: "this coordinator lost touch with the store".to_owned()
            }
        }
    );
    database
        .execute_batch("ALTER TABLE session_requests_gone RENAME TO session_requests")
        .unwrap();
    claimed.stop().await;
}

#[tokio::test]
async fn a_report_that_hangs_does_not_hold_off_the_end_of_a_session_cut_off_from_its_store() {
    let claimed = one_claimed(LocalRuntime::default()).await;
    let ran = &claimed.ran;
    // Another writer holds the database: every write waits (the store's busy timeout is 5 s,
    // far past the lease), as over a connection that no longer answers.
    let database = claimed.database();
    database.execute_batch("BEGIN EXCLUSIVE").unwrap();
    let cut = Instant::now();
    poll_until(
        LOST_AFTER * 3,
        "the session ran on while its reports hung",
        || !ran.outcome().is_running(),
    )
    .await;
    assert!(cut.elapsed() < LOST_AFTER * 2, "{:?}", cut.elapsed());
    database.execute_batch("ROLLBACK").unwrap();
    claimed.stop().await;
}

#[tokio::test]
async fn a_success_after_the_worker_gave_its_session_up_is_reported_as_an_interruption() {
    let claimed = one_claimed(LocalRuntime {
        finish_turns: true,
        ..LocalRuntime::default()
    })
    .await;
    let (session, ran) = (&claimed.session, &claimed.ran);
    let database = claimed.database();
    database
        .execute_batch("ALTER TABLE session_requests RENAME TO session_requests_gone")
        .unwrap();
    // The worker gives the session up (asks it to close), and the agent's turn ends in success.
    poll_until(LOST_AFTER * 3, "the session was never given up", || {
        ran.close_asked.lock().unwrap().is_some()
    })
    .await;
    ran.end(SessionOutcome::Succeeded {
        summary: "done".to_owned(),
        tokens: 10,
        cost_usd: None,
    });
    database
        .execute_batch("ALTER TABLE session_requests_gone RENAME TO session_requests")
        .unwrap();
    // Its work was not pushed: the leader must not take it for a success.
    let ended = wait_until(session, "the end", |s| !s.outcome.is_running()).await;
    assert_interrupted(&ended.outcome);
    claimed.stop().await;
}
