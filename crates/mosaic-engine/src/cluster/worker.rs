//! Every coordinator's side: claiming requested sessions and running them here.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use chrono::{DateTime, Utc};
use mosaic_context::{
    AgentRuntime, AgentSession, KillReason, SessionId, SessionOutcome, SessionSnapshot, SessionTask,
};
use mosaic_domain::{AgentProfiles, IssueRef, IssueState};
use mosaic_gitea::GiteaApi;
use mosaic_store::{Peer, SessionReport, SessionRequest, Store};
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
        let mut running = JoinSet::new();
        let mut failures = 0u32;
        let running_issues = Arc::new(Mutex::new(Vec::<IssueRef>::new()));
        let mut last_prune: Option<tokio::time::Instant> = None;
        while !cancel.is_cancelled() {
            while running.try_join_next().is_some() {}
            if last_prune.is_none_or(|at| at.elapsed() >= self.parts.config.prune_every) {
                last_prune = Some(tokio::time::Instant::now());
                let running_now = running_issues
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .clone();
                self.prune(running_now).await;
            }
            while running.len() < capacity && !cancel.is_cancelled() {
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
                            run_claimed(parts, request, cancel).await;
                            let mut issues = issues.lock().unwrap_or_else(PoisonError::into_inner);
                            if let Some(at) = issues.iter().position(|held| *held == issue) {
                                issues.swap_remove(at);
                            }
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
                Some(_) = running.join_next(), if !running.is_empty() => {}
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

/// Runs one claimed session to its end, reporting as it goes.
async fn run_claimed(parts: Arc<WorkerParts>, request: SessionRequest, cancel: CancellationToken) {
    let mut reporter = Reporter {
        store: Arc::clone(&parts.store),
        session_id: request.session_id.clone(),
        claimant: parts.peer.id.clone(),
        after_seq: 0,
        report_every: parts.config.report_every,
    };
    let (session, workspace, started_at) = match start(&parts, &request).await {
        Ok(started) => started,
        Err(reason) => {
            tracing::warn!(session = %request.session_id, issue = %request.issue, %reason, "the claimed session could not start");
            let outcome = SessionOutcome::Failed { reason };
            let mut snapshot = SessionSnapshot::new(Utc::now());
            snapshot.outcome = outcome;
            let state = ReportedState::of(&snapshot, None, None, None, Vec::new());
            reporter.report_end(&state, &cancel).await;
            return;
        }
    };
    let answers = Arc::new(Mutex::new(Vec::<CommandAnswer>::new()));
    let (commands, queued) = mpsc::unbounded_channel();
    let applier = tokio::spawn(apply_commands(
        Arc::clone(&session),
        queued,
        Arc::clone(&answers),
    ));
    let mut updates = session.subscribe();
    let mut pushed_turns = 0;
    let mut closing = false;
    let mut shutting_down = false;
    let pid = session.process_id();
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
        let state = ReportedState::of(
            &snapshot,
            pid,
            Some(started_at),
            session.latest_summary(),
            answers
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone(),
        );
        if let Some(orders) = reporter.report(&state, false).await {
            for command in orders.commands {
                match serde_json::from_str::<Command>(&command.command_json) {
                    Ok(parsed) => {
                        let _ = commands.send((command.seq, parsed));
                    }
                    Err(err) => remember(
                        &answers,
                        CommandAnswer {
                            seq: command.seq,
                            result: Err(format!("unreadable command: {err}")),
                        },
                    ),
                }
            }
            if orders.cancelled && !closing {
                closing = true;
                close_in_background(&session, "the leader cancelled the session");
            }
        }
        tokio::select! {
            () = cancel.cancelled(), if !shutting_down => {
                shutting_down = true;
                close_in_background(&session, "the coordinator running it is shutting down");
            }
            changed = updates.changed() => {
                if changed.is_err() {
                    break;
                }
                // Readings come in bursts: one report for the burst.
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            () = tokio::time::sleep(reporter.report_every) => {}
        }
    }
    applier.abort();
    let snapshot = session.subscribe().borrow().clone();
    let mut outcome = if snapshot.outcome.is_running() {
        session.outcome()
    } else {
        snapshot.outcome.clone()
    };
    if shutting_down && !matches!(outcome, SessionOutcome::Succeeded { .. }) {
        outcome = SessionOutcome::Killed {
            reason: KillReason::Interrupted {
                reason: "the coordinator running it shut down".to_owned(),
            },
        };
    }
    // The branch carries the work to whoever continues or publishes it.
    if let Some(workspace) = &workspace
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
    let state = ReportedState::of(
        &last,
        pid,
        Some(started_at),
        session.latest_summary(),
        answers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone(),
    );
    reporter.report_end(&state, &cancel).await;
    tracing::info!(session = %request.session_id, issue = %request.issue, "claimed session ended");
}

type Started = (Arc<dyn AgentSession>, Option<Workspace>, DateTime<Utc>);

/// Prepares the session's workspace here (from the issue's branch as last pushed) and starts
/// its agent under the requested id.
async fn start(parts: &WorkerParts, request: &SessionRequest) -> Result<Started, String> {
    let mut task: SessionTask = serde_json::from_str(&request.task_json)
        .map_err(|err| format!("the session's task could not be read: {err}"))?;
    let profile = parts
        .profiles
        .get(&request.agent)
        .filter(|profile| profile.enabled)
        .ok_or_else(|| format!("agent `{}` is not configured here", request.agent))?;
    // The leader's path means nothing here: a worktree is local to its machine.
    let wanted_workspace = task.work_dir.take().is_some();
    let workspace = if wanted_workspace {
        let (Some(gitea), Some(workspaces)) = (&parts.gitea, &parts.workspaces) else {
            return Err("this coordinator has no [workspace] or no Gitea to clone from".to_owned());
        };
        match workspace_request(gitea.as_ref(), &task.issue, &task.title).await? {
            Some(prepare) => {
                let prepared = workspaces
                    .prepare(&prepare)
                    .await
                    .map_err(|err| format!("the workspace could not be prepared: {err}"))?;
                let workspace = prepared.workspace;
                workspaces
                    .follow_remote(&workspace)
                    .await
                    .map_err(|err| format!("the pushed work could not be taken up: {err}"))?;
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
        .map_err(|err| format!("the session could not start: {err}"))?;
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

fn close_in_background(session: &Arc<dyn AgentSession>, reason: &'static str) {
    let session = Arc::clone(session);
    tokio::spawn(async move {
        if let Err(err) = session.close(reason).await {
            tracing::debug!(session = %session.id(), error = %err, "closing the session");
        }
    });
}

/// Applies the leader's commands to the session in order, keeping their answers.
async fn apply_commands(
    session: Arc<dyn AgentSession>,
    mut queued: mpsc::UnboundedReceiver<(i64, Command)>,
    answers: Arc<Mutex<Vec<CommandAnswer>>>,
) {
    while let Some((seq, command)) = queued.recv().await {
        let result = match command {
            Command::Send { prompt } => session
                .send(&prompt)
                .await
                .map(|()| None)
                .map_err(|err| err.to_string()),
            Command::Compact { instructions } => session
                .compact(&instructions)
                .await
                .map(Some)
                .map_err(|err| err.to_string()),
            Command::Close { reason } => {
                close_after(&session, reason, false);
                Ok(None)
            }
            Command::CloseAfterTurn { reason } => {
                close_after(&session, reason, true);
                Ok(None)
            }
            Command::Finish => {
                let session = Arc::clone(&session);
                tokio::spawn(async move { session.finish().await });
                Ok(None)
            }
        };
        remember(&answers, CommandAnswer { seq, result });
    }
}

/// Closing waits for the session's end, so it runs beside the commands that may follow.
fn close_after(session: &Arc<dyn AgentSession>, reason: String, after_turn: bool) {
    let session = Arc::clone(session);
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

fn remember(answers: &Mutex<Vec<CommandAnswer>>, answer: CommandAnswer) {
    let mut answers = answers.lock().unwrap_or_else(PoisonError::into_inner);
    answers.push(answer);
    let excess = answers.len().saturating_sub(ANSWERS_KEPT);
    answers.drain(..excess);
}

/// Writes a session's reports for its claimant.
struct Reporter {
    store: Arc<dyn Store>,
    session_id: String,
    claimant: String,
    after_seq: i64,
    report_every: Duration,
}

impl Reporter {
    /// One report; the leader's orders in answer, or `None` when the store failed (logged;
    /// the next report tries again).
    async fn report(
        &mut self,
        state: &ReportedState,
        ended: bool,
    ) -> Option<mosaic_store::SessionOrders> {
        let state_json = match serde_json::to_string(state) {
            Ok(text) => text,
            Err(err) => {
                tracing::error!(session = %self.session_id, error = %err, "the session's report could not be written");
                return None;
            }
        };
        let report = SessionReport {
            session_id: self.session_id.clone(),
            claimant: self.claimant.clone(),
            state_json,
            ended,
        };
        match self.store.report_session(&report, self.after_seq).await {
            Ok(orders) => {
                if let Some(last) = orders.commands.last() {
                    self.after_seq = last.seq;
                }
                Some(orders)
            }
            Err(err) => {
                tracing::warn!(session = %self.session_id, error = %err, "could not report the session; trying again");
                None
            }
        }
    }

    /// The final report, tried until it is stored: the leader waits for it. Past the
    /// leader's patience it treats the session as lost anyway, so a shutdown gives up after a
    /// few tries.
    async fn report_end(&mut self, state: &ReportedState, cancel: &CancellationToken) {
        for attempt in 0u32.. {
            if self.report(state, true).await.is_some() {
                return;
            }
            if cancel.is_cancelled() && attempt >= 3 {
                tracing::warn!(session = %self.session_id, "giving up reporting the session's end while shutting down; the leader will find it silent");
                return;
            }
            tokio::time::sleep(crate::backoff::jittered(
                self.report_every.as_millis().try_into().unwrap_or(250),
                5_000,
                attempt,
            ))
            .await;
        }
    }
}
