//! The attempt's git stages around the agent sessions: prepare the issue's workspace before its
//! first session, publish it after the agent reported success (commit leftovers → ahead of the
//! base? → push → pull request through the outbox, or `no_changes`), clean it up when the issue
//! leaves the coordinator.
//!
//! Verify stage (invariant 10, published means verified): when quality gates are configured, they
//! run in the worktree after the leftovers are committed and before the push, so the commit
//! pushed is the one that passed. A required gate failing sends the same agent back into the
//! same worktree with the failures (a continuation), counted per attempt from the stored
//! sessions (each succeeded session of the attempt but the last was sent back), so the count
//! survives a restart; when they are spent the branch is still pushed and the issue fails with
//! the report.
//!
//! The engine sees only the [`Workspaces`] trait. Git work never runs under the engine's locks;
//! the stage between "the agent succeeded" and "the result is committed" is stored as a
//! succeeded session of an issue still `in_progress`, so recovery resumes it at publish instead
//! of running the agent again (pushing again is idempotent with the lease, the pull request
//! write through its 409 path).

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex as StdMutex, PoisonError};

use chrono::{DateTime, Utc};
use mosaic_context::{NextTurn, TurnResult};
use mosaic_domain::{IssueRef, IssueState};
use mosaic_gates::{
    Gate, GateOutcome, GateResult, GatesConfig, OnGateFailure, REPOSITORY_FILE, RepositoryFileUse,
    all_required_passed, continuation_prompt, report_markdown, run_gates,
};
use mosaic_gitea::{CommitStatusState, GiteaApi};
use mosaic_store::{
    GateRunRecord, SessionOutcome as StoredOutcome, SessionRecord, WorkspaceRecord,
};
use mosaic_workspace::{PrepareRequest, RepoSource, Workspace, Workspaces};
use serde::Serialize;

use crate::effects::GiteaWrite;
use crate::report::{MAX_SUMMARY_CHARS, Status, agent_text, gates_failed_comment, thousands};

use super::dispatch::{Claim, Conclusion};
use super::work::{Core, Work};
use super::{EngineError, Inner};

/// The workspaces the engine prepares, and the free space it needs before it dispatches.
#[derive(Clone)]
pub struct WorkspaceParts {
    pub workspaces: Arc<dyn Workspaces>,
    /// No issue is dispatched while less is free under the workspace root (`workspace.min_free_bytes`).
    pub min_free_bytes: u64,
    /// The quality gates run in the worktree before anything is published (`[gates]`). With no
    /// gate for a repository (and no trusted repository file) it publishes without a check.
    pub gates: GatesConfig,
    /// The environment gates start from. They run the agent's code, so no secret belongs here.
    pub gate_env: Vec<(OsString, OsString)>,
    /// Sessions run on other coordinators too (several share the store): they push their work,
    /// so the worktree here takes it up (`Workspaces::follow_remote`) before it is read,
    /// verified or published.
    pub follow_remote: bool,
}

impl WorkspaceParts {
    /// Takes up what a session elsewhere pushed, when sessions run elsewhere. On a failure
    /// the worktree here is stale: nothing may be verified or published from it.
    pub(crate) async fn take_up_pushed_work(&self, workspace: &Workspace) -> Result<(), String> {
        if !self.follow_remote {
            return Ok(());
        }
        match self.workspaces.follow_remote(workspace).await {
            Ok(true) => {
                tracing::info!(issue = %workspace.issue, branch = %workspace.branch, "took up the work pushed by another coordinator");
                Ok(())
            }
            Ok(false) => Ok(()),
            Err(err) => Err(format!(
                "the work pushed to `{}` could not be taken up: {err}",
                workspace.branch
            )),
        }
    }
}

impl std::fmt::Debug for WorkspaceParts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkspaceParts")
            .field("min_free_bytes", &self.min_free_bytes)
            .field("gates", &self.gates.gates.len())
            .finish_non_exhaustive()
    }
}

/// What preparing the issue's workspace needs from Gitea (its `clone_url` and
/// `default_branch`); `None` when the repository has nothing to clone (the session runs in the
/// runtime's own directory).
pub(crate) async fn workspace_request(
    gitea: &dyn GiteaApi,
    issue: &IssueRef,
    title: &str,
) -> Result<Option<PrepareRequest>, String> {
    let repository = gitea
        .repository(&issue.repo)
        .await
        .map_err(|err| format!("the repository could not be read from Gitea: {err}"))?;
    if repository.clone_url.is_empty() {
        return Ok(None);
    }
    if repository.default_branch.is_empty() {
        return Err("Gitea shows no default branch for the repository".to_owned());
    }
    Ok(Some(PrepareRequest {
        issue: issue.clone(),
        title: title.to_owned(),
        source: RepoSource {
            repo: issue.repo.clone(),
            clone_url: repository.clone_url,
            default_branch: repository.default_branch,
        },
    }))
}

/// Disk use under the workspace root, for /metrics, /health and the API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct WorkspaceUsage {
    /// Worktrees this process prepared and has not removed.
    pub workspaces: u64,
    /// What they hold, measured again after every worktree made, pushed or removed, and at
    /// most every [`USAGE_MEASURE_INTERVAL`] otherwise.
    pub bytes: u64,
    /// Free space under the root; `None` when it could not be read.
    pub free_bytes: Option<u64>,
    pub min_free_bytes: u64,
    /// No issue is dispatched: less than `min_free_bytes` is free (or it cannot be read).
    pub low_disk: bool,
}

/// How old a measurement of the worktrees' size may be before it is taken again.
pub const USAGE_MEASURE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(60);

/// A gate's result as the store keeps it (and the API shows it).
fn gate_run_record(
    result: &GateResult,
    issue: &IssueRef,
    attempt: u32,
    session_id: Option<String>,
    at: DateTime<Utc>,
) -> GateRunRecord {
    let status = match result.outcome {
        GateOutcome::Passed => "passed",
        GateOutcome::Failed { .. } => "failed",
        GateOutcome::TimedOut => "timed_out",
        GateOutcome::CouldNotStart { .. } => "could_not_start",
        GateOutcome::BelowCoverage { .. } => "below_coverage",
        GateOutcome::NoCoverageFigure => "no_coverage_figure",
    };
    GateRunRecord {
        issue: issue.clone(),
        attempt,
        session_id,
        gate: result.gate.clone(),
        command: result.command.clone(),
        required: result.required,
        status: status.to_owned(),
        detail: if result.outcome.passed() {
            String::new()
        } else {
            result.outcome.describe(result.timeout)
        },
        duration_ms: u64::try_from(result.duration.as_millis()).unwrap_or(u64::MAX),
        output_tail: result.output_tail.clone(),
        coverage_percent: result.coverage_percent,
        at,
    }
}

/// Gate counters since start (for `/metrics`; the results themselves are stored).
#[derive(Debug, Default)]
pub(crate) struct GateStats {
    inner: StdMutex<GateCounters>,
}

#[derive(Debug, Default, Clone)]
pub(crate) struct GateCounters {
    pub runs_by_gate: BTreeMap<String, u64>,
    pub failures_by_gate: BTreeMap<String, u64>,
    pub continuations: u64,
}

impl GateStats {
    fn record(&self, results: &[GateResult]) {
        let mut counters = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        for result in results {
            *counters
                .runs_by_gate
                .entry(result.gate.clone())
                .or_default() += 1;
            if !result.outcome.passed() {
                *counters
                    .failures_by_gate
                    .entry(result.gate.clone())
                    .or_default() += 1;
            }
        }
    }

    fn continued(&self) {
        self.inner
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .continuations += 1;
    }

    pub(crate) fn totals(&self) -> GateCounters {
        self.inner
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// What the verify stage decided about an attempt the agent called done.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Verdict {
    /// Nothing to verify, or every required gate passed: published (or `no_changes`).
    Publish(Publication),
    /// Required gates failed and a continuation is left: nothing was pushed; the agent is sent
    /// back with this hand-over.
    Continue { handover: String },
    /// Required gates still failed with every continuation spent: pushed so no work is lost.
    Rejected(Box<GateFailure>),
}

/// An attempt whose required gates failed after its last continuation.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct GateFailure {
    pub pushed: PushedBranch,
    pub summary: String,
    pub continuations: u32,
    /// `on_gate_failure = "wip_pull_request"`: a pull request titled `WIP: …` is opened too.
    pub wip_pull_request: bool,
}

/// The gates' results and the report that goes with them.
#[derive(Debug, Clone)]
pub(crate) struct Verification {
    results: Vec<GateResult>,
    report: String,
}

/// What publishing an attempt's workspace led to.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Publication {
    /// The issue has no workspace (no Gitea or no `[workspace]`): finished as before.
    Unpublished,
    /// The branch has no commit the base lacks: nothing to review.
    NoChanges { branch: String },
    /// The branch was pushed; its pull request is written through the outbox.
    Pushed(Box<PushedBranch>),
}

/// A pushed branch and what its pull request says besides the summary.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct PushedBranch {
    pub branch: String,
    pub base: String,
    pub title: String,
    pub sessions: usize,
    pub rotations: usize,
    /// The quality gates' report (a Markdown table), when gates ran.
    pub gates: Option<String>,
    /// The commit pushed, which the gates' statuses are put on.
    pub commit: String,
    /// One status per gate that ran (empty when none did).
    pub statuses: Vec<GateStatus>,
}

impl PushedBranch {
    /// Enqueues the pull request from this branch, then the gates' statuses on its commit.
    pub(crate) fn write_pull_request(
        &self,
        work: &mut Work,
        core: &Core,
        issue: &IssueRef,
        tag: &str,
        title: String,
        body: String,
    ) {
        work.write(
            core,
            issue,
            &format!("{tag}-pull-request"),
            GiteaWrite::PullRequest {
                head: self.branch.clone(),
                base: self.base.clone(),
                title,
                body,
            },
        );
        self.write_statuses(work, core, issue, tag);
    }

    /// Enqueues the gates' statuses on the pushed commit.
    pub(crate) fn write_statuses(&self, work: &mut Work, core: &Core, issue: &IssueRef, tag: &str) {
        for status in &self.statuses {
            work.write(
                core,
                issue,
                &format!("{tag}-{}", status.context),
                status.write(&self.commit),
            );
        }
    }
}

/// A gate's result as a commit status on the pushed commit (context `mosaic/<gate>`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct GateStatus {
    pub context: String,
    pub state: CommitStatusState,
    pub description: String,
}

/// Gitea keeps a status description short (its column holds 255 characters).
const STATUS_DESCRIPTION_CHARS: usize = 140;

impl GateStatus {
    fn of(result: &GateResult) -> Self {
        let state = match result.outcome {
            GateOutcome::Passed => CommitStatusState::Success,
            GateOutcome::Failed { .. }
            | GateOutcome::BelowCoverage { .. }
            | GateOutcome::NoCoverageFigure => CommitStatusState::Failure,
            // The gate could not give a verdict.
            GateOutcome::TimedOut | GateOutcome::CouldNotStart { .. } => CommitStatusState::Error,
        };
        let description = if result.outcome.passed() {
            format!("passed in {:.1} s", result.duration.as_secs_f64())
        } else {
            result.outcome.describe(result.timeout)
        };
        let description: String = description
            .lines()
            .next()
            .unwrap_or_default()
            .chars()
            .take(STATUS_DESCRIPTION_CHARS)
            .collect();
        Self {
            context: format!("mosaic/{}", result.gate),
            state,
            description,
        }
    }

    /// The outbox write that puts this status on `sha`.
    pub(crate) fn write(&self, sha: &str) -> GiteaWrite {
        GiteaWrite::CommitStatus {
            sha: sha.to_owned(),
            context: self.context.clone(),
            state: self.state,
            description: self.description.clone(),
        }
    }
}

/// A workspace this process prepared (the store keeps its record for the API).
#[derive(Debug, Clone)]
pub(crate) struct KnownWorkspace {
    pub workspace: Workspace,
    /// The gates' rejection the current continuation was sent back with: a rotation during
    /// the continuation hands it on, or the fresh session would not know what to fix.
    pub continuation: Option<String>,
    /// The gates' verdict on a commit, reached while the session waited for input: publishing
    /// that same commit takes it instead of running the gates again.
    pub verified: Option<(String, Verification)>,
}

/// The pull request's body: the closing keyword, the (redacted) summary, and what it cost.
pub(crate) fn pull_request_body(
    issue: &IssueRef,
    summary: &str,
    pushed: &PushedBranch,
    tokens: u64,
    cost_usd: f64,
) -> String {
    let summary = summary.trim();
    let summary = if summary.is_empty() {
        "The agent reported success without a summary."
    } else {
        summary
    };
    let gates = pushed
        .gates
        .as_deref()
        .map(|report| format!("\n\n### Quality gates\n\n{}", report.trim_end()))
        .unwrap_or_default();
    format!(
        "Closes #{number}\n\n{summary}{gates}\n\n---\n**Mosaic** · {sessions} session{s} · {rotations} rotation{r} · {tokens} tokens · ${cost_usd:.2}",
        number = issue.number,
        sessions = pushed.sessions,
        s = if pushed.sessions == 1 { "" } else { "s" },
        rotations = pushed.rotations,
        r = if pushed.rotations == 1 { "" } else { "s" },
        tokens = thousands(tokens),
    )
}

/// The comment a finished issue gets, with the gates' report when they ran.
pub(crate) fn with_gate_report(comment: String, publication: &Publication) -> String {
    match publication {
        Publication::Pushed(pushed) => match &pushed.gates {
            Some(report) => format!("{comment}\n\n**Quality gates**\n\n{}", report.trim_end()),
            None => comment,
        },
        _ => comment,
    }
}

impl Inner {
    /// The issue's workspace, when one is known (prepared by this process).
    pub(crate) fn known_workspace(&self, issue: &IssueRef) -> Option<KnownWorkspace> {
        self.issue_workspaces
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(issue)
            .cloned()
    }

    /// Disk use under the workspace root; `None` without `[workspace]`.
    pub(crate) async fn workspace_usage(&self) -> Option<WorkspaceUsage> {
        let parts = self.workspaces.as_ref()?;
        let known: Vec<Workspace> = self
            .issue_workspaces
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .map(|known| known.workspace.clone())
            .collect();
        let fresh = self
            .measured_usage
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .filter(|(at, _)| at.elapsed() < USAGE_MEASURE_INTERVAL)
            .map(|(_, bytes)| bytes);
        let bytes = match fresh {
            Some(bytes) => bytes,
            None => {
                let mut bytes = 0u64;
                for workspace in &known {
                    match parts.workspaces.disk_usage(workspace).await {
                        Ok(used) => bytes = bytes.saturating_add(used),
                        // Removed meanwhile, or unreadable: counts as nothing.
                        Err(err) => {
                            tracing::debug!(issue = %workspace.issue, error = %err, "workspace size unknown")
                        }
                    }
                }
                *self
                    .measured_usage
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner) =
                    Some((std::time::Instant::now(), bytes));
                bytes
            }
        };
        let free_bytes = parts.workspaces.free_bytes().await.ok();
        Some(WorkspaceUsage {
            workspaces: u64::try_from(known.len()).unwrap_or(u64::MAX),
            bytes,
            free_bytes,
            min_free_bytes: parts.min_free_bytes,
            low_disk: free_bytes.is_none_or(|free| free < parts.min_free_bytes),
        })
    }

    /// The worktrees changed (one made, pushed or removed): measure them again when next asked.
    fn forget_measured_usage(&self) {
        *self
            .measured_usage
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = None;
    }

    /// What the issue's live worktree holds on disk, when there is one.
    pub(crate) async fn workspace_bytes(&self, issue: &IssueRef) -> Option<u64> {
        let parts = self.workspaces.as_ref()?;
        let known = self.known_workspace(issue)?;
        parts.workspaces.disk_usage(&known.workspace).await.ok()
    }

    /// Whether there is room under the workspace root to dispatch (logged when it changes).
    pub(crate) async fn disk_allows_dispatch(&self) -> bool {
        let Some(parts) = &self.workspaces else {
            return true;
        };
        let low = match parts.workspaces.free_bytes().await {
            Ok(free) if free < parts.min_free_bytes => {
                if !self.low_disk.swap(true, Ordering::SeqCst) {
                    tracing::warn!(
                        free_bytes = free,
                        min_free_bytes = parts.min_free_bytes,
                        "too little free space under the workspace root; no issue is dispatched until there is more"
                    );
                }
                true
            }
            Ok(_) => false,
            Err(err) => {
                if !self.low_disk.swap(true, Ordering::SeqCst) {
                    tracing::warn!(error = %err, "free space under the workspace root unknown; no issue is dispatched");
                }
                true
            }
        };
        if !low && self.low_disk.swap(false, Ordering::SeqCst) {
            tracing::info!("free space under the workspace root is sufficient again; dispatching");
        }
        !low
    }

    /// Fetches the repository's mirror and makes (or reuses) the issue's worktree. `Ok(None)`:
    /// no workspaces configured or no Gitea to say where the repository lives.
    pub(crate) async fn prepare_workspace(
        &self,
        issue: &IssueRef,
        title: &str,
    ) -> Result<Option<Workspace>, String> {
        let (Some(parts), Some(gitea)) = (&self.workspaces, &self.gitea) else {
            return Ok(None);
        };
        let Some(request) = workspace_request(gitea.as_ref(), issue, title).await? else {
            return Ok(None);
        };
        let prepared = parts
            .workspaces
            .prepare(&request)
            .await
            .map_err(|err| format!("the workspace could not be prepared: {err}"))?;
        tracing::info!(
            %issue,
            path = %prepared.workspace.path.display(),
            branch = %prepared.workspace.branch,
            reused = prepared.reused,
            behind_base = prepared.commits_behind_base,
            "workspace ready"
        );
        self.record_workspace(&prepared.workspace).await?;
        self.issue_workspaces
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(
                issue.clone(),
                KnownWorkspace {
                    workspace: prepared.workspace.clone(),
                    continuation: None,
                    verified: None,
                },
            );
        self.forget_measured_usage();
        Ok(Some(prepared.workspace))
    }

    /// Stores the prepared workspace (the API and the status comment read it, after a restart
    /// too). A reused worktree on the same branch keeps when it was made and what was pushed.
    async fn record_workspace(&self, workspace: &Workspace) -> Result<(), String> {
        let stored = self
            .store
            .get_workspace(&workspace.issue)
            .await
            .map_err(|err| format!("the workspace record could not be read: {err}"))?
            .map(|stored| stored.workspace)
            .filter(|stored| stored.branch == workspace.branch && stored.removed_at.is_none());
        let record = WorkspaceRecord {
            issue: workspace.issue.clone(),
            path: workspace.path.display().to_string(),
            branch: workspace.branch.clone(),
            base_branch: workspace.base_branch.clone(),
            head_commit: stored.as_ref().and_then(|s| s.head_commit.clone()),
            prepared_at: stored.map_or_else(Utc::now, |s| s.prepared_at),
            removed_at: None,
        };
        self.store
            .put_workspace(record)
            .await
            .map_err(|err| format!("the workspace could not be recorded: {err}"))
    }

    /// Changes the issue's stored workspace record; a failure costs only what the API shows.
    async fn update_workspace_record(
        &self,
        issue: &IssueRef,
        change: impl FnOnce(&mut WorkspaceRecord),
    ) {
        let result = match self.store.get_workspace(issue).await {
            Ok(Some(stored)) => {
                let mut record = stored.workspace;
                change(&mut record);
                self.store.put_workspace(record).await
            }
            Ok(None) => Ok(()),
            Err(err) => Err(err),
        };
        if let Err(err) = result {
            tracing::warn!(%issue, error = %err, "the workspace record could not be updated");
        }
    }

    /// Commits leftovers as the bot; when the branch is ahead of the base runs the gates on
    /// that commit and pushes it if they pass (or when continuations are spent).
    pub(crate) async fn publish(&self, issue: &IssueRef, summary: &str) -> Result<Verdict, String> {
        let Some(parts) = &self.workspaces else {
            return Ok(Verdict::Publish(Publication::Unpublished));
        };
        let known = match self.known_workspace(issue) {
            Some(known) => known.workspace,
            None => {
                // After a restart: the worktree is still there; prepare finds and reuses it.
                let title = self.issue_title(issue).await;
                match self.prepare_workspace(issue, &title).await? {
                    Some(workspace) => workspace,
                    None => return Ok(Verdict::Publish(Publication::Unpublished)),
                }
            }
        };
        parts.take_up_pushed_work(&known).await?;
        let workspaces = &parts.workspaces;
        if let Some(commit) = workspaces
            .commit_leftovers(&known)
            .await
            .map_err(|err| format!("committing the agent's leftovers failed: {err}"))?
        {
            tracing::info!(%issue, %commit, "committed what the agent left uncommitted");
        }
        let ahead = workspaces
            .ahead_of_base(&known)
            .await
            .map_err(|err| format!("comparing the branch with its base failed: {err}"))?;
        if ahead == 0 {
            tracing::info!(%issue, branch = %known.branch, "the agent changed nothing");
            return Ok(Verdict::Publish(Publication::NoChanges {
                branch: known.branch,
            }));
        }
        // The gates see the committed tree as the agent left it; what they write afterwards
        // (build output) is not part of the commit that is pushed.
        let verification = match self.verified_earlier(parts, issue, &known).await {
            Some(verification) => Some(verification),
            None => self.verify(parts, issue, &known).await?,
        };
        let report = verification.as_ref().map(|v| v.report.clone());
        let statuses: Vec<GateStatus> = verification
            .as_ref()
            .map(|v| v.results.iter().map(GateStatus::of).collect())
            .unwrap_or_default();
        if let Some(verification) = verification
            && !all_required_passed(&verification.results)
        {
            let continuations = self.continuations_so_far(issue).await?;
            let max = parts.gates.max_continuations;
            if continuations < max {
                tracing::warn!(%issue, continuation = continuations + 1, max, "required quality gates failed; the agent continues");
                return Ok(Verdict::Continue {
                    handover: continuation_prompt(
                        &verification.results,
                        continuations + 2,
                        max.saturating_add(1),
                    ),
                });
            }
            tracing::warn!(%issue, continuations, "required quality gates failed with every continuation spent; pushing the branch and failing the issue");
            let pushed = self.push_branch(issue, &known, report, statuses).await?;
            return Ok(Verdict::Rejected(Box::new(GateFailure {
                pushed,
                summary: summary.to_owned(),
                continuations,
                wip_pull_request: parts.gates.on_gate_failure == OnGateFailure::WipPullRequest,
            })));
        }
        let pushed = self.push_branch(issue, &known, report, statuses).await?;
        Ok(Verdict::Publish(Publication::Pushed(Box::new(pushed))))
    }

    /// Runs the repository's gates in the worktree (off the engine's locks). `None`: no gate
    /// applies to the repository.
    async fn verify(
        &self,
        parts: &WorkspaceParts,
        issue: &IssueRef,
        workspace: &Workspace,
    ) -> Result<Option<Verification>, String> {
        let config = &parts.gates;
        if config.gates.is_empty() && !config.trust_repository_file {
            return Ok(None);
        }
        // Read from the base branch only: the agent can write its own copy.
        let base_file = if config.trust_repository_file {
            parts
                .workspaces
                .read_base_file(workspace, REPOSITORY_FILE)
                .await
                .map_err(|err| {
                    format!("reading {REPOSITORY_FILE} from the base branch failed: {err}")
                })?
        } else {
            None
        };
        let effective = config.effective_gates(&issue.repo, base_file.as_deref());
        let note = match &effective.repository_file {
            RepositoryFileUse::Rejected { error } => {
                tracing::warn!(%issue, %error, "the repository's gates file was not used");
                Some(format!(
                    "\n`{REPOSITORY_FILE}` on the base branch was not used: {}\n",
                    agent_text(&self.redactor, &error.to_string(), MAX_SUMMARY_CHARS)
                ))
            }
            _ => None,
        };
        if effective.gates.is_empty() {
            return Ok(None);
        }
        let gates: Vec<&Gate> = effective.gates.iter().collect();
        tracing::info!(%issue, gates = gates.len(), "running the quality gates");
        let results = run_gates(
            &workspace.path,
            &gates,
            &self.redactor,
            &parts.gate_env,
            config.output_tail_bytes,
        )
        .await;
        self.gate_stats.record(&results);
        self.store_gate_runs(issue, &results).await;
        for result in &results {
            tracing::info!(%issue, gate = %result.gate, passed = result.outcome.passed(), required = result.required, duration_ms = result.duration.as_millis(), "gate finished");
        }
        let mut report = report_markdown(&results);
        if let Some(note) = note {
            report.push_str(&note);
        }
        Ok(Some(Verification { results, report }))
    }

    /// Stores the round's results with the attempt and the session whose result they checked;
    /// a failure costs only the API's view of them (the report is in Gitea either way).
    async fn store_gate_runs(&self, issue: &IssueRef, results: &[GateResult]) {
        let attempt = {
            let core = self.core.lock().await;
            core.records.get(issue).map_or(0, |record| record.attempts)
        };
        let session_id = match self.attempt_sessions(issue).await {
            Ok(sessions) => sessions
                .into_iter()
                .filter(|session| session.outcome == Some(StoredOutcome::Succeeded))
                .max_by_key(|session| session.started_at)
                .map(|session| session.id),
            Err(_) => None,
        };
        let at = Utc::now();
        let runs = results
            .iter()
            .map(|result| gate_run_record(result, issue, attempt, session_id.clone(), at))
            .collect();
        if let Err(err) = self.store.record_gate_runs(runs).await {
            tracing::warn!(%issue, error = %err, "the gates' results could not be stored");
        }
    }

    /// Continuations this attempt already had: every succeeded session of the attempt but the
    /// newest (the one being verified) was sent back by the gates.
    async fn continuations_so_far(&self, issue: &IssueRef) -> Result<u32, String> {
        let attempt = {
            let core = self.core.lock().await;
            core.records.get(issue).map_or(0, |record| record.attempts)
        };
        let runs = self
            .store
            .gate_runs_for_issue(issue)
            .await
            .map_err(|err| format!("the issue's gate runs could not be read: {err}"))?;
        // Each round of this attempt that a required gate failed sent the agent back, but the
        // newest (the one being judged). Stored, so the count survives a restart.
        let mut failed_rounds: Vec<chrono::DateTime<Utc>> = runs
            .iter()
            .filter(|run| run.attempt == attempt && run.required && run.status != "passed")
            .map(|run| run.at)
            .collect();
        failed_rounds.dedup();
        Ok(u32::try_from(failed_rounds.len().saturating_sub(1)).unwrap_or(u32::MAX))
    }

    /// The gates' verdict reached while the session waited, when the worktree's head is still
    /// the commit it was reached on.
    async fn verified_earlier(
        &self,
        parts: &WorkspaceParts,
        issue: &IssueRef,
        workspace: &Workspace,
    ) -> Option<Verification> {
        let (commit, verification) = self.known_workspace(issue)?.verified?;
        let head = parts.workspaces.state(workspace).await.ok()?.head_commit;
        (head == commit).then_some(verification)
    }

    /// A session that keeps its input open answered its turn: when the agent says it succeeded
    /// and gates apply, they run now on its committed work; a required gate failing (with
    /// continuations left) sends the continuation prompt into the same session. Anything else
    /// finishes the session, and publishing follows as for any success.
    pub(crate) async fn next_turn(&self, issue: &IssueRef, result: &TurnResult) -> NextTurn {
        if !result.success {
            return NextTurn::Finish;
        }
        let (Some(parts), Some(known)) = (&self.workspaces, self.known_workspace(issue)) else {
            return NextTurn::Finish;
        };
        {
            let core = self.core.lock().await;
            if core.queue.state(issue) != Some(IssueState::InProgress) {
                return NextTurn::Finish;
            }
        }
        let workspace = &known.workspace;
        if let Err(reason) = parts.take_up_pushed_work(workspace).await {
            // Publishing tries again and says why.
            tracing::warn!(%issue, %reason, "finishing the session without verifying its turn");
            return NextTurn::Finish;
        }
        match parts.workspaces.commit_leftovers(workspace).await {
            Ok(Some(commit)) => {
                tracing::info!(%issue, %commit, "committed what the agent left uncommitted")
            }
            Ok(None) => {}
            // Publishing tries again and says why.
            Err(_) => return NextTurn::Finish,
        }
        if !matches!(parts.workspaces.ahead_of_base(workspace).await, Ok(ahead) if ahead > 0) {
            return NextTurn::Finish;
        }
        let verification = match self.verify(parts, issue, workspace).await {
            Ok(Some(verification)) => verification,
            Ok(None) | Err(_) => return NextTurn::Finish,
        };
        if let Ok(state) = parts.workspaces.state(workspace).await
            && let Some(entry) = self
                .issue_workspaces
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .get_mut(issue)
        {
            entry.verified = Some((state.head_commit, verification.clone()));
        }
        if all_required_passed(&verification.results) {
            return NextTurn::Finish;
        }
        let Ok(continuations) = self.continuations_so_far(issue).await else {
            return NextTurn::Finish;
        };
        let max = parts.gates.max_continuations;
        if continuations >= max {
            return NextTurn::Finish;
        }
        tracing::warn!(%issue, continuation = continuations + 1, max, "required quality gates failed; the agent continues in the same session");
        let prompt = continuation_prompt(
            &verification.results,
            continuations + 2,
            max.saturating_add(1),
        );
        self.gate_stats.continued();
        if let Some(entry) = self
            .issue_workspaces
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get_mut(issue)
        {
            entry.continuation = Some(prompt.clone());
            entry.verified = None;
        }
        NextTurn::Continue(prompt)
    }

    /// Pushes the branch and describes it for the pull request.
    async fn push_branch(
        &self,
        issue: &IssueRef,
        known: &Workspace,
        gates: Option<String>,
        statuses: Vec<GateStatus>,
    ) -> Result<PushedBranch, String> {
        let Some(parts) = &self.workspaces else {
            return Err("no workspaces are configured".to_owned());
        };
        let pushed = parts
            .workspaces
            .push(known)
            .await
            .map_err(|err| format!("pushing the branch failed: {err}"))?;
        tracing::info!(%issue, branch = %pushed.branch, commit = %pushed.commit, "branch pushed");
        let commit = pushed.commit.clone();
        self.update_workspace_record(issue, |record| record.head_commit = Some(commit))
            .await;
        self.forget_measured_usage();
        let sessions = self
            .store
            .sessions_for_issue(issue)
            .await
            .map_err(|err| format!("the issue's sessions could not be read: {err}"))?;
        let rotations = sessions
            .iter()
            .filter(|session| session.outcome == Some(StoredOutcome::Rotated))
            .count();
        Ok(PushedBranch {
            branch: pushed.branch,
            base: known.base_branch.clone(),
            title: self.issue_title(issue).await,
            sessions: sessions.len(),
            rotations,
            gates,
            commit: pushed.commit,
            statuses,
        })
    }

    async fn issue_title(&self, issue: &IssueRef) -> String {
        match self.store.get_issue_snapshot(issue).await {
            Ok(Some(snapshot)) if !snapshot.title.trim().is_empty() => snapshot.title,
            _ => format!("Issue #{}", issue.number),
        }
    }

    /// Publishes an issue whose agent succeeded (its session already ended and recorded) and
    /// commits the result: completed with its pull request, `no_changes`, or a failed attempt
    /// when publishing failed.
    pub(crate) async fn publish_and_conclude(
        &self,
        issue: &IssueRef,
        summary: String,
        tokens: u64,
        cost_usd: f64,
    ) -> Result<(), EngineError> {
        let conclusion = match self.publish(issue, &summary).await {
            Ok(Verdict::Publish(publication)) => Conclusion::Succeeded {
                summary,
                tokens,
                cost_usd,
                publication,
            },
            Ok(Verdict::Continue { handover }) => {
                return self.continue_after_gates(issue, handover).await;
            }
            Ok(Verdict::Rejected(failure)) => Conclusion::GatesFailed(failure),
            Err(reason) => {
                tracing::error!(%issue, %reason, "publishing the attempt failed");
                Conclusion::Failed { reason }
            }
        };
        let _gate = self.gate.lock().await;
        let mut core = self.core.lock().await;
        if core.queue.state(issue) != Some(IssueState::InProgress) {
            // Cancelled or closed while publishing: that change already said what happened.
            core.running.remove(issue);
            drop(core);
            self.wake.notify_one();
            return Ok(());
        }
        let mut work = Work::new(
            &core,
            format!("attempt of {issue} published"),
            format!("p{}", uuid::Uuid::now_v7()),
        );
        self.conclude(&core, &mut work, issue, &conclusion, "publish")?;
        self.store.commit_transitions(work.batches()).await?;
        work.install(&mut core);
        core.running.remove(issue);
        drop(core);
        self.wake.notify_one();
        Ok(())
    }

    /// Sends the agent back into the same worktree with the gates' failures as its hand-over.
    async fn continue_after_gates(
        &self,
        issue: &IssueRef,
        handover: String,
    ) -> Result<(), EngineError> {
        let agent = {
            let mut core = self.core.lock().await;
            if core.queue.state(issue) != Some(IssueState::InProgress) {
                // Cancelled or closed while the gates ran: that change already said what happened.
                core.running.remove(issue);
                drop(core);
                self.wake.notify_one();
                return Ok(());
            }
            core.running.get(issue).map(|running| running.agent.clone())
        };
        let profile = agent.and_then(|name| {
            self.profiles
                .get(&name)
                .filter(|profile| profile.enabled)
                .cloned()
        });
        if self.shutting_down.load(Ordering::SeqCst) {
            // No new session while stopping: the attempt runs again after the restart.
            let _gate = self.gate.lock().await;
            let mut core = self.core.lock().await;
            self.conclude_now(&mut core, issue, Conclusion::Interrupted, None)
                .await;
            return Ok(());
        }
        let Some(profile) = profile else {
            let _gate = self.gate.lock().await;
            let mut core = self.core.lock().await;
            let reason =
                "the quality gates failed and the agent is no longer configured to continue"
                    .to_owned();
            self.conclude_now(&mut core, issue, Conclusion::Failed { reason }, None)
                .await;
            return Ok(());
        };
        self.gate_stats.continued();
        if let Some(known) = self
            .issue_workspaces
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get_mut(issue)
        {
            known.continuation = Some(handover.clone());
        }
        let task = self.task_for(issue, Some(handover)).await;
        tracing::info!(%issue, agent = %profile.name, "continuing after failed quality gates");
        self.launch(Claim {
            issue: issue.clone(),
            profile,
            task,
        })
        .await;
        Ok(())
    }

    /// An issue failed for good because its required gates kept failing: the branch is pushed;
    /// the report goes into the failure comment (and a `WIP:` pull request when configured).
    pub(crate) fn conclude_gates_failed(
        &self,
        core: &Core,
        work: &mut Work,
        issue: &IssueRef,
        failure: &GateFailure,
        tag: &str,
    ) -> Result<(), EngineError> {
        let labels = &self.config.labels;
        let record = work
            .record(core, issue)
            .ok_or_else(|| EngineError::NotFound(issue.clone()))?;
        let agent = record.assigned_agent.clone().unwrap_or_default();
        let attempts = record.attempts;
        let total = record.input_tokens.saturating_add(record.output_tokens);
        let cost = record.cost_usd;
        let reason = format!(
            "required quality gates still failed after {} continuation{}",
            failure.continuations,
            if failure.continuations == 1 { "" } else { "s" }
        );
        work.step(core, issue, IssueState::Failed)?;
        work.announce(
            core,
            issue,
            labels,
            &Status::Failed {
                agent: &agent,
                attempts,
                reason: &reason,
                gates: failure.pushed.gates.as_deref(),
            },
        );
        let pushed = &failure.pushed;
        if failure.wip_pull_request {
            let summary = agent_text(&self.redactor, &failure.summary, MAX_SUMMARY_CHARS);
            pushed.write_pull_request(
                work,
                core,
                issue,
                tag,
                format!("WIP: {}", pushed.title),
                pull_request_body(issue, &summary, pushed, total, cost),
            );
        } else {
            pushed.write_statuses(work, core, issue, tag);
        }
        work.write(
            core,
            issue,
            &format!("{tag}-gates-failed"),
            GiteaWrite::comment(gates_failed_comment(
                &agent,
                failure.continuations,
                &pushed.branch,
                failure.wip_pull_request,
                pushed.gates.as_deref().unwrap_or_default(),
            )),
        );
        Ok(())
    }

    /// The sessions of the issue's current attempt (started since it last went in progress).
    async fn attempt_sessions(&self, issue: &IssueRef) -> Result<Vec<SessionRecord>, EngineError> {
        let history = self.store.issue_history(issue).await?;
        let Some(since) = history
            .iter()
            .rev()
            .find(|transition| transition.to == IssueState::InProgress)
            .map(|transition| transition.at)
        else {
            return Ok(Vec::new());
        };
        let sessions = self.store.sessions_for_issue(issue).await?;
        Ok(sessions
            .into_iter()
            .filter(|session| session.started_at >= since)
            .collect())
    }

    /// The session whose success an in-progress issue's attempt has stored but not yet
    /// published: a succeeded session started in the current attempt (since the issue last
    /// went in progress). Only with workspaces: without them success concludes at once.
    pub(crate) async fn stored_success(
        &self,
        issue: &IssueRef,
    ) -> Result<Option<SessionRecord>, EngineError> {
        if self.workspaces.is_none() {
            return Ok(None);
        }
        Ok(self
            .attempt_sessions(issue)
            .await?
            .into_iter()
            .filter(|session| session.outcome == Some(StoredOutcome::Succeeded))
            .max_by_key(|session| session.started_at))
    }

    /// Removes the issue's worktree and local branch (the remote branch stays), when one is
    /// known and the issue is not running; returns whether it was removed.
    pub(crate) async fn cleanup_workspace(&self, issue: &IssueRef) -> bool {
        let Some(parts) = &self.workspaces else {
            return false;
        };
        {
            let core = self.core.lock().await;
            // A slot without a session is an attempt starting or publishing in the worktree.
            if core
                .running
                .get(issue)
                .is_some_and(|running| running.session_id.is_none())
                || core
                    .queue
                    .state(issue)
                    .is_some_and(|state| !state.is_terminal())
            {
                return false;
            }
        }
        let known = self
            .issue_workspaces
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(issue);
        let Some(known) = known else {
            return false;
        };
        self.forget_measured_usage();
        match parts.workspaces.cleanup(&known.workspace).await {
            Ok(removed) => {
                tracing::info!(%issue, path = %removed.path.display(), branch = ?removed.branch, "workspace removed");
                self.update_workspace_record(issue, |record| record.removed_at = Some(Utc::now()))
                    .await;
                true
            }
            Err(err) => {
                tracing::warn!(%issue, error = %err, "the workspace could not be removed; it is pruned at the next start");
                false
            }
        }
    }

    /// At start: removes every worktree of an issue that is not waiting or running.
    pub(crate) async fn prune_workspaces(&self, live: &[IssueRef]) {
        let Some(parts) = &self.workspaces else {
            return;
        };
        match parts.workspaces.prune_orphans(live).await {
            Ok(removed) if !removed.is_empty() => {
                tracing::info!(
                    removed = removed.len(),
                    "removed the workspaces of finished issues"
                );
                let at = Utc::now();
                for gone in &removed {
                    self.update_workspace_record(&gone.issue, |record| {
                        record.removed_at.get_or_insert(at);
                    })
                    .await;
                }
            }
            Ok(_) => {}
            Err(err) => tracing::warn!(error = %err, "workspaces could not be pruned"),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn pushed(sessions: usize, rotations: usize) -> PushedBranch {
        PushedBranch {
            branch: "mosaic/12-add-caching".to_owned(),
            base: "main".to_owned(),
            title: "Add caching".to_owned(),
            sessions,
            rotations,
            gates: None,
            commit: "0123456789abcdef0123456789abcdef01234567".to_owned(),
            statuses: Vec::new(),
        }
    }

    #[test]
    fn each_gate_outcome_becomes_a_commit_status_named_after_the_gate() {
        let mut passed = gate_result(GateOutcome::Passed);
        passed.duration = std::time::Duration::from_millis(1_300);
        let cases = [
            (passed, CommitStatusState::Success, "passed in 1.3 s"),
            (
                gate_result(GateOutcome::Failed { exit_code: Some(1) }),
                CommitStatusState::Failure,
                "",
            ),
            (
                gate_result(GateOutcome::BelowCoverage {
                    percent: 71.5,
                    min: 85.0,
                }),
                CommitStatusState::Failure,
                "",
            ),
            (
                gate_result(GateOutcome::TimedOut),
                CommitStatusState::Error,
                "",
            ),
            (
                gate_result(GateOutcome::CouldNotStart {
                    reason: "x".repeat(500),
                }),
                CommitStatusState::Error,
                "",
            ),
        ];
        for (result, state, description) in cases {
            let status = GateStatus::of(&result);
            assert_eq!(status.context, format!("mosaic/{}", result.gate));
            assert_eq!(status.state, state, "{result:?}");
            assert!(status.description.chars().count() <= STATUS_DESCRIPTION_CHARS);
            assert!(!status.description.is_empty());
            if !description.is_empty() {
                assert_eq!(status.description, description);
            } else {
                assert_eq!(
                    status.description,
                    result
                        .outcome
                        .describe(result.timeout)
                        .chars()
                        .take(STATUS_DESCRIPTION_CHARS)
                        .collect::<String>()
                );
            }
            match status.write("abc1234") {
                GiteaWrite::CommitStatus { sha, context, .. } => {
                    assert_eq!(sha, "abc1234");
                    assert_eq!(context, status.context);
                }
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn the_pull_request_body_closes_the_issue_and_says_what_it_cost() {
        let issue: IssueRef = "acme/widgets#12".parse().unwrap();
        let body = pull_request_body(&issue, "  Added the cache.\n", &pushed(2, 1), 46_800, 0.125);
        assert_eq!(
            body,
            "Closes #12\n\nAdded the cache.\n\n---\n**Mosaic** · 2 sessions · 1 rotation · 46,800 tokens · $0.12"
        );
        let body = pull_request_body(&issue, " ", &pushed(1, 0), 0, 0.0);
        assert!(body.starts_with("Closes #12\n\nThe agent reported success without a summary."));
        assert!(
            body.ends_with("1 session · 0 rotations · 0 tokens · $0.00"),
            "{body}"
        );
    }

    fn gate_result(outcome: GateOutcome) -> GateResult {
        GateResult {
            gate: "test".to_owned(),
            command: vec![
                "sh".to_owned(),
                "-c".to_owned(),
                "test -f fixed.txt".to_owned(),
            ],
            required: true,
            timeout: std::time::Duration::from_secs(5),
            outcome,
            duration: std::time::Duration::from_millis(1500),
            output_tail: String::new(),
            coverage_percent: None,
        }
    }

    #[test]
    fn the_pull_request_body_and_the_done_comment_carry_the_gate_report() {
        let issue: IssueRef = "acme/widgets#12".parse().unwrap();
        let report = report_markdown(&[gate_result(GateOutcome::Passed)]);
        let mut branch = pushed(1, 0);
        branch.gates = Some(report.clone());
        let body = pull_request_body(&issue, "Done.", &branch, 10, 0.0);
        assert!(
            body.starts_with(&format!(
                "Closes #12\n\nDone.\n\n### Quality gates\n\n{}",
                report.trim_end()
            )),
            "{body}"
        );
        assert!(body.contains("| test | ✅ passed |"), "{body}");
        assert!(
            body.ends_with("1 session · 0 rotations · 10 tokens · $0.00"),
            "{body}"
        );

        let published = Publication::Pushed(Box::new(branch));
        let comment = with_gate_report("finished".to_owned(), &published);
        assert!(
            comment.starts_with("finished\n\n**Quality gates**\n\n| Gate |"),
            "{comment}"
        );
        let unchecked = Publication::Pushed(Box::new(pushed(1, 0)));
        assert_eq!(
            with_gate_report("finished".to_owned(), &unchecked),
            "finished"
        );
    }

    #[test]
    fn a_stored_gate_run_names_its_outcome_and_why() {
        let issue: IssueRef = "acme/widgets#12".parse().unwrap();
        let record = |outcome| {
            gate_run_record(
                &gate_result(outcome),
                &issue,
                2,
                Some("s1".into()),
                Utc::now(),
            )
        };
        let timed_out = record(GateOutcome::TimedOut);
        assert_eq!(timed_out.status, "timed_out");
        assert_eq!(timed_out.detail, "no result within 5 s; killed");
        assert_eq!(timed_out.duration_ms, 1500);
        assert_eq!(
            (timed_out.attempt, timed_out.session_id.as_deref()),
            (2, Some("s1"))
        );
        let passed = record(GateOutcome::Passed);
        assert_eq!(
            (passed.status.as_str(), passed.detail.as_str()),
            ("passed", "")
        );
        let failed = record(GateOutcome::Failed { exit_code: Some(1) });
        assert_eq!(
            (failed.status.as_str(), failed.detail.as_str()),
            ("failed", "exit code 1")
        );
        assert_eq!(failed.command, ["sh", "-c", "test -f fixed.txt"]);
    }

    #[test]
    fn gate_stats_count_runs_and_failures_by_gate() {
        let stats = GateStats::default();
        stats.record(&[gate_result(GateOutcome::Failed { exit_code: Some(1) })]);
        stats.continued();
        stats.record(&[gate_result(GateOutcome::Passed)]);
        let totals = stats.totals();
        assert_eq!(totals.runs_by_gate.get("test"), Some(&2));
        assert_eq!(totals.failures_by_gate.get("test"), Some(&1));
        assert_eq!(totals.continuations, 1);
    }
}
