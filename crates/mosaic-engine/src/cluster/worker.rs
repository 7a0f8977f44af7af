//! Every coordinator's side: claiming requested sessions and running them here.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use chrono::{DateTime, Utc};
use mosaic_context::{
    AgentRuntime, AgentSession, KillReason, SessionId, SessionOutcome, SessionSnapshot, SessionTask,
};
use mosaic_domain::{AgentProfiles, IssueRef, IssueState};
use mosaic_gitea::GiteaApi;
use mosaic_store::{Peer, SessionCommand, SessionReport, SessionRequest, Store};
use mosaic_workspace::{Workspace, Workspaces};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::wire::{ANSWERS_KEPT, Command, CommandAnswer, ReportedState};
use crate::engine::workspace_request;

/// How a worker claims and reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WorkerConfig {
    /// How often it looks for a request to claim while it has capacity.
    pub poll: Duration,
    /// The longest it stays silent about a running session: its heartbeat, and how soon it
    /// sees the leader's commands. Well under the leader's `lost_after`.
    pub report_every: Duration,
    /// How often worktrees of issues no longer in progress are removed.
    pub prune_every: Duration,
    /// A session silent this long has lost its claimant (the leader's `lost_after`, the
    /// lease). Until then an issue's next session is not claimed while its previous one is
    /// claimed and not ended (its claimant may still be pushing the work).
    pub lost_after: Duration,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        Self {
            poll: Duration::from_millis(250),
            report_every: Duration::from_millis(250),
            prune_every: Duration::from_secs(60),
            lost_after: Duration::from_secs(5),
        }
    }
}

/// What a worker is built from.
#[derive(Clone)]
pub struct WorkerParts {
    pub store: Arc<dyn Store>,
    /// This machine's runtime (the agent CLIs as child processes).
    pub runtime: Arc<dyn AgentRuntime>,
    pub profiles: AgentProfiles,
    /// Where a repository lives (its clone URL and base branch), for the workspace.
    pub gitea: Option<Arc<dyn GiteaApi>>,
    /// This machine's worktrees for the sessions it claims, under a root of their own (not
    /// the engine's): the worker removes those of issues no longer in progress — their work is
    /// on the remote branch, and the leader keeps its own copy for as long as retention says.
    pub workspaces: Option<Arc<dyn Workspaces>>,
    /// This coordinator as its peers know it; `capacity` is how many sessions it runs at once.
    pub peer: Peer,
    pub config: WorkerConfig,
}

impl std::fmt::Debug for WorkerParts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerParts")
            .field("peer", &self.peer)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// Claims requested sessions while this coordinator has capacity and runs them here.
#[derive(Debug, Clone)]
pub struct SessionWorker {
    parts: Arc<WorkerParts>,
}

impl SessionWorker {
    pub fn new(parts: WorkerParts) -> Self {
        Self {
            parts: Arc::new(parts),
        }
    }

    /// Claims and runs until `cancel` fires; then ends every session it runs (as interrupted:
    /// their issues run again, elsewhere or after the restart), pushes their work and reports
    /// their end before returning.
    pub async fn run(&self, cancel: CancellationToken) {
        let agents: Vec<String> = self
            .parts
            .profiles
            .enabled()
            .map(|profile| profile.name.clone())
            .collect();
        let capacity = usize::try_from(self.parts.peer.capacity).unwrap_or(usize::MAX);
        let mut running: JoinSet<Ran> = JoinSet::new();
        let mut failures = 0u32;
        // Sessions this machine could not start in a row: claiming pauses after each.
        let mut start_failures = 0u32;
        let mut paused_until: Option<tokio::time::Instant> = None;
        let running_issues = Arc::new(Mutex::new(Vec::<IssueRef>::new()));
        let mut last_prune: Option<tokio::time::Instant> = None;
        let mut note = |ran: Result<Ran, tokio::task::JoinError>,
                        paused_until: &mut Option<tokio::time::Instant>| {
            match ran {
                // Concurrent sessions end in any order: one start does not undo every failure.
                Ok(Ran::Started) => start_failures = start_failures.saturating_sub(1),
                Ok(Ran::CouldNotStart) => {
                    start_failures = start_failures.saturating_add(1);
                    let pause = crate::backoff::jittered(1_000, 60_000, start_failures);
                    tracing::warn!(
                        pause_secs = pause.as_secs(),
                        start_failures,
                        "this coordinator could not start a claimed session; pausing its claims"
                    );
                    *paused_until = Some(tokio::time::Instant::now() + pause);
                }
                Err(err) => tracing::error!(error = %err, "a claimed session's task failed"),
            }
        };
        while !cancel.is_cancelled() {
            while let Some(ran) = running.try_join_next() {
                note(ran, &mut paused_until);
            }
            if last_prune.is_none_or(|at| at.elapsed() >= self.parts.config.prune_every) {
                last_prune = Some(tokio::time::Instant::now());
                let running_now = running_issues
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .clone();
                self.prune(running_now).await;
            }
            let paused = paused_until.is_some_and(|until| tokio::time::Instant::now() < until);
            while !paused && running.len() < capacity && !cancel.is_cancelled() {
                match self
                    .parts
                    .store
                    .claim_session(&self.parts.peer, &agents, self.parts.config.lost_after)
                    .await
                {
                    Ok(Some(request)) => {
                        failures = 0;
                        tracing::info!(session = %request.session_id, issue = %request.issue, agent = %request.agent, "claimed a session");
                        let issues = Arc::clone(&running_issues);
                        let parts = Arc::clone(&self.parts);
                        let cancel = cancel.child_token();
                        issues
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .push(request.issue.clone());
                        running.spawn(async move {
                            let issue = request.issue.clone();
                            let ran = run_claimed(parts, request, cancel).await;
                            let mut issues = issues.lock().unwrap_or_else(PoisonError::into_inner);
                            if let Some(at) = issues.iter().position(|held| *held == issue) {
                                issues.swap_remove(at);
                            }
                            ran
                        });
                    }
                    Ok(None) => break,
                    Err(err) => {
                        failures = failures.saturating_add(1);
                        if failures == 1 || failures.is_multiple_of(50) {
                            tracing::warn!(error = %err, failures, "could not claim a session; trying again");
                        }
                        break;
                    }
                }
            }
            tokio::select! {
                () = cancel.cancelled() => {}
                () = tokio::time::sleep(self.parts.config.poll) => {}
                Some(ran) = running.join_next(), if !running.is_empty() => {
                    note(ran, &mut paused_until);
                }
            }
        }
        while running.join_next().await.is_some() {}
    }

    /// Removes the worktrees of issues neither running here nor in progress anywhere (an
    /// issue in progress may come back here at its next rotation, and keeps its build files).
    async fn prune(&self, running_here: Vec<IssueRef>) {
        let Some(workspaces) = &self.parts.workspaces else {
            return;
        };
        let in_progress = match self
            .parts
            .store
            .list_issues(&[IssueState::InProgress])
            .await
        {
            Ok(records) => records,
            Err(err) => {
                tracing::warn!(error = %err, "cannot list the issues in progress; no worktree removed");
                return;
            }
        };
        let mut live = running_here;
        live.extend(in_progress.into_iter().map(|record| record.issue));
        match workspaces.prune_orphans(&live).await {
            Ok(removed) if !removed.is_empty() => {
                tracing::info!(
                    removed = removed.len(),
                    "removed the worktrees of claimed sessions whose issues are no longer in progress"
                )
            }
            Ok(_) => {}
            Err(err) => tracing::warn!(error = %err, "could not remove finished worktrees"),
        }
    }
}

/// How a claimed session went, for the worker's claiming pace.
enum Ran {
    Started,
    /// This machine could not start it (its configuration, Gitea, git, the agent's CLI): the
    /// worker waits before it claims again, so a coordinator that cannot run sessions does
    /// not keep winning them.
    CouldNotStart,
}

/// Why a claimed session did not start.
struct StartFailure {
    reason: String,
    /// Nothing to do with the task: another coordinator may well run it (reported as
    /// interrupted, so the attempt does not count).
    here_only: bool,
}

impl StartFailure {
    fn task(reason: String) -> Self {
        Self {
            reason,
            here_only: false,
        }
    }

    fn here(reason: String) -> Self {
        Self {
            reason,
            here_only: true,
        }
    }
}

/// Runs one claimed session to its end. A heartbeat reports it from the claim to the end —
/// through the workspace's preparation and every push, which may outlast the lease — and
/// brings back the leader's commands and its cancellation.
async fn run_claimed(
    parts: Arc<WorkerParts>,
    request: SessionRequest,
    cancel: CancellationToken,
) -> Ran {
    let (heartbeat, commands) = Heartbeat::start(&parts, &request.session_id);
    let started = tokio::select! {
        started = start(&parts, &request) => started,
        () = heartbeat.fenced.cancelled() => Err(StartFailure::here(
            "this coordinator lost touch with the store while preparing the session".to_owned(),
        )),
    };
    let (session, workspace, started_at) = match started {
        Ok(started) => started,
        Err(failure) => {
            let here_only = failure.here_only;
            tracing::warn!(session = %request.session_id, issue = %request.issue, reason = %failure.reason, "the claimed session could not start");
            let outcome = if failure.here_only {
                SessionOutcome::Killed {
                    reason: KillReason::Interrupted {
                        reason: failure.reason,
                    },
                }
            } else {
                SessionOutcome::Failed {
                    reason: failure.reason,
                }
            };
            let mut snapshot = SessionSnapshot::new(Utc::now());
            snapshot.outcome = outcome;
            let state = ReportedState::of(snapshot, None, None, None, Vec::new());
            heartbeat.stop().await;
            report_end(&parts, &request.session_id, &state, &cancel).await;
            // A task nobody can read is its own fault, not this machine's.
            return if here_only {
                Ran::CouldNotStart
            } else {
                Ran::Started
            };
        }
    };
    heartbeat.started(Arc::clone(&session), started_at);
    let applier = tokio::spawn(apply_commands(
        Arc::clone(&session),
        commands,
        Arc::clone(&heartbeat.shared),
    ));
    let mut updates = session.subscribe();
    let mut pushed_turns = 0;
    let mut closing = false;
    let mut interrupted: Option<&'static str> = None;
    loop {
        let snapshot = updates.borrow_and_update().clone();
        if !snapshot.outcome.is_running() {
            break;
        }
        // A waiting session's work is pushed before the wait is reported: the leader verifies
        // it at once from the branch.
        if snapshot.waiting.is_some() && snapshot.turns > pushed_turns {
            if let Some(workspace) = &workspace
                && let Err(reason) = push_work(&parts, workspace).await
            {
                tracing::warn!(session = %request.session_id, %reason, "could not push the turn's work");
            }
            pushed_turns = snapshot.turns;
        }
        heartbeat.publish(snapshot);
        tokio::select! {
            () = cancel.cancelled(), if interrupted.is_none() => {
                interrupted = Some("the coordinator running it shut down");
                close_after(&session, "the coordinator running it is shutting down", false);
            }
            () = heartbeat.fenced.cancelled(), if interrupted.is_none() => {
                // The leader counts it lost by now or soon: it must not run on beside the
                // session that replaces it.
                tracing::error!(session = %request.session_id, "no report reached the store for most of the lease; ending the session");
                interrupted = Some("the coordinator running it lost touch with the store");
                close_after(&session, "this coordinator lost touch with the store", false);
            }
            () = heartbeat.cancelled.cancelled(), if !closing => {
                closing = true;
                close_after(&session, "the leader cancelled the session", false);
            }
            changed = updates.changed() => {
                if changed.is_err() {
                    break;
                }
            }
        }
    }
    applier.abort();
    let snapshot = session.subscribe().borrow().clone();
    let mut outcome = if snapshot.outcome.is_running() {
        session.outcome()
    } else {
        snapshot.outcome.clone()
    };
    // Given up for lost, the session's work is not pushed (the issue's next session may be
    // pushing from elsewhere by now), so even a success is only an interruption: the leader
    // must not publish a branch that lacks it.
    let fenced = heartbeat.fenced.is_cancelled();
    if fenced {
        interrupted = Some("the coordinator running it lost touch with the store");
    }
    if let Some(why) = interrupted
        && (fenced || !matches!(outcome, SessionOutcome::Succeeded { .. }))
    {
        outcome = SessionOutcome::Killed {
            reason: KillReason::Interrupted {
                reason: why.to_owned(),
            },
        };
    }
    // The branch carries the work to whoever continues or publishes it; the heartbeat goes on
    // while it is pushed.
    if let Some(workspace) = workspace.as_ref().filter(|_| !fenced)
        && let Err(reason) = push_work(&parts, workspace).await
    {
        tracing::warn!(session = %request.session_id, %reason, "could not push the session's work");
        if matches!(outcome, SessionOutcome::Succeeded { .. }) {
            outcome = SessionOutcome::Failed {
                reason: format!("the agent finished but its work could not be pushed: {reason}"),
            };
        }
    }
    let mut last = snapshot;
    last.outcome = outcome;
    let state = heartbeat.shared.state_with(last);
    heartbeat.stop().await;
    report_end(&parts, &request.session_id, &state, &cancel).await;
    tracing::info!(session = %request.session_id, issue = %request.issue, "claimed session ended");
    Ran::Started
}

type Started = (Arc<dyn AgentSession>, Option<Workspace>, DateTime<Utc>);

/// Prepares the session's workspace here (from the issue's branch as last pushed) and starts
/// its agent under the requested id.
async fn start(parts: &WorkerParts, request: &SessionRequest) -> Result<Started, StartFailure> {
    let mut task: SessionTask = serde_json::from_str(&request.task_json).map_err(|err| {
        StartFailure::task(format!("the session's task could not be read: {err}"))
    })?;
    let profile = parts
        .profiles
        .get(&request.agent)
        .filter(|profile| profile.enabled)
        .ok_or_else(|| {
            StartFailure::here(format!("agent `{}` is not configured here", request.agent))
        })?;
    // The leader's path means nothing here: a worktree is local to its machine.
    let wanted_workspace = task.work_dir.take().is_some();
    let workspace = if wanted_workspace {
        let (Some(gitea), Some(workspaces)) = (&parts.gitea, &parts.workspaces) else {
            return Err(StartFailure::here(
                "this coordinator has no [workspace] or no Gitea to clone from".to_owned(),
            ));
        };
        match workspace_request(gitea.as_ref(), &task.issue, &task.title)
            .await
            .map_err(StartFailure::here)?
        {
            Some(prepare) => {
                let prepared = workspaces.prepare(&prepare).await.map_err(|err| {
                    StartFailure::here(format!("the workspace could not be prepared: {err}"))
                })?;
                let workspace = prepared.workspace;
                workspaces.follow_remote(&workspace).await.map_err(|err| {
                    StartFailure::here(format!("the pushed work could not be taken up: {err}"))
                })?;
                Some(workspace)
            }
            None => None,
        }
    } else {
        None
    };
    task.work_dir = workspace.as_ref().map(|workspace| workspace.path.clone());
    let started_at = Utc::now();
    let session = parts
        .runtime
        .spawn_with_id(SessionId::from(request.session_id.clone()), profile, &task)
        .await
        .map_err(|err| StartFailure::here(format!("the session could not start: {err}")))?;
    Ok((session, workspace, started_at))
}

/// Commits what the agent left and pushes the branch when it has anything on the base.
async fn push_work(parts: &WorkerParts, workspace: &Workspace) -> Result<(), String> {
    let Some(workspaces) = &parts.workspaces else {
        return Ok(());
    };
    workspaces
        .commit_leftovers(workspace)
        .await
        .map_err(|err| format!("committing the agent's leftovers failed: {err}"))?;
    let ahead = workspaces
        .ahead_of_base(workspace)
        .await
        .map_err(|err| format!("comparing the branch with its base failed: {err}"))?;
    if ahead > 0 {
        workspaces
            .push(workspace)
            .await
            .map_err(|err| format!("pushing the branch failed: {err}"))?;
    }
    Ok(())
}

/// Applies the leader's commands to the session in order, keeping their answers. Ending the
/// session (close, close after the turn, finish) does not wait behind a compaction.
async fn apply_commands(
    session: Arc<dyn AgentSession>,
    mut queued: mpsc::UnboundedReceiver<SessionCommand>,
    shared: Arc<Shared>,
) {
    let (ordered, mut in_order) = mpsc::unbounded_channel::<(i64, Command)>();
    let ordered_session = Arc::clone(&session);
    let ordered_shared = Arc::clone(&shared);
    let sequential = tokio::spawn(async move {
        while let Some((seq, command)) = in_order.recv().await {
            let result = match command {
                Command::Send { prompt } => ordered_session
                    .send(&prompt)
                    .await
                    .map(|()| None)
                    .map_err(|err| err.to_string()),
                Command::Compact { instructions } => ordered_session
                    .compact(&instructions)
                    .await
                    .map(Some)
                    .map_err(|err| err.to_string()),
                Command::Close { .. } | Command::CloseAfterTurn { .. } | Command::Finish => {
                    Ok(None)
                }
            };
            ordered_shared.answer(CommandAnswer { seq, result });
        }
    });
    while let Some(command) = queued.recv().await {
        let seq = command.seq;
        let result = match Command::from_text(&command.command_json) {
            Ok(Command::Close { reason }) => {
                close_after(&session, reason, false);
                Ok(())
            }
            Ok(Command::CloseAfterTurn { reason }) => {
                close_after(&session, reason, true);
                Ok(())
            }
            Ok(Command::Finish) => {
                let session = Arc::clone(&session);
                tokio::spawn(async move { session.finish().await });
                Ok(())
            }
            Ok(command) => {
                let _ = ordered.send((seq, command));
                continue;
            }
            Err(err) => Err(format!("unreadable command: {err}")),
        };
        shared.answer(CommandAnswer {
            seq,
            result: result.map(|()| None),
        });
    }
    sequential.abort();
}

/// Closing waits for the session's end, so it runs beside the commands that may follow.
fn close_after(session: &Arc<dyn AgentSession>, reason: impl Into<String>, after_turn: bool) {
    let (session, reason) = (Arc::clone(session), reason.into());
    tokio::spawn(async move {
        let result = if after_turn {
            session.close_after_turn(&reason).await
        } else {
            session.close(&reason).await
        };
        if let Err(err) = result {
            tracing::debug!(session = %session.id(), error = %err, "closing the session");
        }
    });
}

/// What the heartbeat reports: the session's snapshot as the loop last published it (a
/// waiting turn only once its work is pushed), the answers to the leader's commands, and what
/// the agent last summarised.
struct Shared {
    inner: Mutex<SharedState>,
    /// Something new to report: the heartbeat reports at once.
    changed: tokio::sync::Notify,
}

struct SharedState {
    snapshot: SessionSnapshot,
    answers: Vec<CommandAnswer>,
    session: Option<Arc<dyn AgentSession>>,
    started_at: Option<DateTime<Utc>>,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, SharedState> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn answer(&self, answer: CommandAnswer) {
        {
            let mut state = self.lock();
            state.answers.push(answer);
            let excess = state.answers.len().saturating_sub(ANSWERS_KEPT);
            state.answers.drain(..excess);
        }
        self.changed.notify_one();
    }

    /// The report of `snapshot` with everything else as it stands.
    fn state_with(&self, snapshot: SessionSnapshot) -> ReportedState {
        let state = self.lock();
        let session = state.session.clone();
        let answers = state.answers.clone();
        let started_at = state.started_at;
        drop(state);
        ReportedState::of(
            snapshot,
            session.as_ref().and_then(|session| session.process_id()),
            started_at,
            session
                .as_ref()
                .and_then(|session| session.latest_summary()),
            answers,
        )
    }

    fn state(&self) -> ReportedState {
        let snapshot = self.lock().snapshot.clone();
        self.state_with(snapshot)
    }
}

/// Reports a claimed session every `report_every` and at every change, from the claim until it
/// is stopped: the session's heartbeat. Its answers bring the leader's commands (to
/// the receiver `start` returns) and the cancellation (`cancelled`); when no report has reached the store
/// for half of `lost_after` it fires `fenced`, since the leader is about to count the session
/// lost and run the issue elsewhere.
struct Heartbeat {
    shared: Arc<Shared>,
    cancelled: CancellationToken,
    fenced: CancellationToken,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Heartbeat {
    /// The heartbeat, and the commands its reports bring back.
    fn start(
        parts: &Arc<WorkerParts>,
        session_id: &str,
    ) -> (Self, mpsc::UnboundedReceiver<SessionCommand>) {
        let shared = Arc::new(Shared {
            inner: Mutex::new(SharedState {
                snapshot: SessionSnapshot::new(Utc::now()),
                answers: Vec::new(),
                session: None,
                started_at: None,
            }),
            changed: tokio::sync::Notify::new(),
        });
        let (commands, received) = mpsc::unbounded_channel();
        let (cancelled, fenced, stop) = (
            CancellationToken::new(),
            CancellationToken::new(),
            CancellationToken::new(),
        );
        let task = tokio::spawn(beat(
            Arc::clone(parts),
            session_id.to_owned(),
            Arc::clone(&shared),
            commands,
            (cancelled.clone(), fenced.clone(), stop.clone()),
        ));
        let heartbeat = Self {
            shared,
            cancelled,
            fenced,
            stop,
            task,
        };
        (heartbeat, received)
    }

    fn started(&self, session: Arc<dyn AgentSession>, at: DateTime<Utc>) {
        {
            let mut state = self.shared.lock();
            state.session = Some(session);
            state.started_at = Some(at);
        }
        self.shared.changed.notify_one();
    }

    fn publish(&self, snapshot: SessionSnapshot) {
        self.shared.lock().snapshot = snapshot;
        self.shared.changed.notify_one();
    }

    async fn stop(mut self) {
        self.stop.cancel();
        let _ = (&mut self.task).await;
    }
}

impl Drop for Heartbeat {
    // A task that ends without `stop` (a panic, an abort) must not leave its session reported
    // alive forever, holding its issue.
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn beat(
    parts: Arc<WorkerParts>,
    session_id: String,
    shared: Arc<Shared>,
    commands: mpsc::UnboundedSender<SessionCommand>,
    (cancelled, fenced, stop): (CancellationToken, CancellationToken, CancellationToken),
) {
    // Half the lease: closing the agent takes its grace period, and the leader gives the issue
    // away once the lease has passed.
    let fence_after = parts.config.lost_after / 2;
    let mut last_stored = tokio::time::Instant::now();
    let mut after_seq = 0;
    let mut failures = 0u32;
    loop {
        let state = shared.state();
        let state_json = match serde_json::to_string(&state) {
            Ok(text) => text,
            Err(err) => {
                // Nothing is written (an empty text would replace the last good report); the
                // fence fires if this lasts.
                tracing::error!(session = %session_id, error = %err, "the session's report could not be written");
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(parts.config.report_every) => continue,
                }
            }
        };
        let sent = tokio::time::Instant::now();
        let report = SessionReport {
            session_id: session_id.clone(),
            claimant: parts.peer.id.clone(),
            state_json,
            ended: false,
        };
        // A report that hangs (a half-open connection) must not hold the fence off: it gets
        // what is left until the fence, at least one period.
        let limit = fence_after
            .saturating_sub(last_stored.elapsed())
            .max(parts.config.report_every);
        let reported = tokio::select! {
            () = stop.cancelled() => return,
            reported = tokio::time::timeout(limit, parts.store.report_session(&report, after_seq)) => reported,
        };
        let reported = reported.unwrap_or_else(|_| {
            Err(mosaic_store::StoreError::Unavailable(format!(
                "no answer within {limit:?}"
            )))
        });
        match reported {
            Ok(orders) => {
                last_stored = sent;
                failures = 0;
                for command in orders.commands {
                    after_seq = command.seq;
                    let _ = commands.send(command);
                }
                if orders.cancelled {
                    cancelled.cancel();
                }
            }
            Err(err) => {
                failures = failures.saturating_add(1);
                if failures == 1 || failures.is_multiple_of(40) {
                    tracing::warn!(session = %session_id, error = %err, failures, "could not report the session; trying again");
                }
                if last_stored.elapsed() >= fence_after {
                    fenced.cancel();
                }
            }
        }
        // Changes within half a period share the next report: a busy agent's readings cost
        // the store a few writes a second, not one each.
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(parts.config.report_every / 2) => {}
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = shared.changed.notified() => {}
            () = tokio::time::sleep(parts.config.report_every / 2) => {}
        }
    }
}

/// The session's last report, tried until it is stored (the leader waits for it); while
/// shutting down, a few tries only — past the lease the leader counts the session lost anyway.
async fn report_end(
    parts: &WorkerParts,
    session_id: &str,
    state: &ReportedState,
    cancel: &CancellationToken,
) {
    let state_json = match serde_json::to_string(state) {
        Ok(text) => text,
        Err(err) => {
            tracing::error!(session = %session_id, error = %err, "the session's last report could not be written");
            return;
        }
    };
    let report = SessionReport {
        session_id: session_id.to_owned(),
        claimant: parts.peer.id.clone(),
        state_json,
        ended: true,
    };
    for attempt in 0u32.. {
        // No commands wanted any more: none after the last possible sequence number.
        match parts.store.report_session(&report, i64::MAX).await {
            Ok(_) => return,
            Err(err) => {
                if attempt == 0 || attempt.is_multiple_of(20) {
                    tracing::warn!(session = %session_id, error = %err, "could not report the session's end; trying again");
                }
            }
        }
        if cancel.is_cancelled() && attempt >= 3 {
            tracing::warn!(session = %session_id, "giving up reporting the session's end while shutting down; the leader will find it silent");
            return;
        }
        let base = u64::try_from(parts.config.report_every.as_millis()).unwrap_or(250);
        tokio::time::sleep(crate::backoff::jittered(base, 5_000, attempt)).await;
    }
}
