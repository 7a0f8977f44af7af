//! The attempt's git stages around the agent sessions: prepare the issue's workspace before its
//! first session, publish it after the agent reported success (commit leftovers → ahead of the
//! base? → push → pull request through the outbox, or `no_changes`), clean it up when the issue
//! leaves the coordinator.
//!
//! The engine sees only the [`Workspaces`] trait. Git work never runs under the engine's locks;
//! the stage between "the agent succeeded" and "the result is committed" is stored as a
//! succeeded session of an issue still `in_progress`, so recovery resumes it at publish instead
//! of running the agent again (pushing again is idempotent with the lease, the pull request
//! write through its 409 path).

use std::sync::Arc;
use std::sync::atomic::Ordering;

use mosaic_domain::{IssueRef, IssueState};
use mosaic_store::{SessionOutcome as StoredOutcome, SessionRecord};
use mosaic_workspace::{PrepareRequest, RepoSource, Workspace, Workspaces};
use serde::Serialize;

use crate::report::thousands;

use super::dispatch::Conclusion;
use super::work::Work;
use super::{EngineError, Inner};

/// The workspaces the engine prepares, and the free space it needs before it dispatches.
#[derive(Clone)]
pub struct WorkspaceParts {
    pub workspaces: Arc<dyn Workspaces>,
    /// No issue is dispatched while less is free under the workspace root (`workspace.min_free_bytes`).
    pub min_free_bytes: u64,
}

impl std::fmt::Debug for WorkspaceParts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkspaceParts")
            .field("min_free_bytes", &self.min_free_bytes)
            .finish_non_exhaustive()
    }
}

/// An issue's workspace as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WorkspaceView {
    pub path: String,
    pub branch: String,
    pub base: String,
    /// The branch's newest commit, once the attempt published it.
    pub head_commit: Option<String>,
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
}

/// A known workspace and, once pushed, its head.
#[derive(Debug, Clone)]
pub(crate) struct KnownWorkspace {
    pub workspace: Workspace,
    pub head_commit: Option<String>,
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
    format!(
        "Closes #{number}\n\n{summary}\n\n---\n**Mosaic** · {sessions} session{s} · {rotations} rotation{r} · {tokens} tokens · ${cost_usd:.2}",
        number = issue.number,
        sessions = pushed.sessions,
        s = if pushed.sessions == 1 { "" } else { "s" },
        rotations = pushed.rotations,
        r = if pushed.rotations == 1 { "" } else { "s" },
        tokens = thousands(tokens),
    )
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
        let repository = gitea
            .repository(&issue.repo)
            .await
            .map_err(|err| format!("the repository could not be read from Gitea: {err}"))?;
        if repository.clone_url.is_empty() {
            // Nothing to clone: the session runs in the runtime's own directory.
            return Ok(None);
        }
        if repository.default_branch.is_empty() {
            return Err("Gitea shows no default branch for the repository".to_owned());
        }
        let request = PrepareRequest {
            issue: issue.clone(),
            title: title.to_owned(),
            source: RepoSource {
                repo: issue.repo.clone(),
                clone_url: repository.clone_url,
                default_branch: repository.default_branch,
            },
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
        self.issue_workspaces
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(
                issue.clone(),
                KnownWorkspace {
                    workspace: prepared.workspace.clone(),
                    head_commit: None,
                },
            );
        Ok(Some(prepared.workspace))
    }

    /// Commits leftovers as the bot, then pushes the branch when it is ahead of the base.
    pub(crate) async fn publish(&self, issue: &IssueRef) -> Result<Publication, String> {
        let Some(parts) = &self.workspaces else {
            return Ok(Publication::Unpublished);
        };
        let known = match self.known_workspace(issue) {
            Some(known) => known.workspace,
            None => {
                // After a restart: the worktree is still there; prepare finds and reuses it.
                let title = self.issue_title(issue).await;
                match self.prepare_workspace(issue, &title).await? {
                    Some(workspace) => workspace,
                    None => return Ok(Publication::Unpublished),
                }
            }
        };
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
            return Ok(Publication::NoChanges {
                branch: known.branch,
            });
        }
        let pushed = workspaces
            .push(&known)
            .await
            .map_err(|err| format!("pushing the branch failed: {err}"))?;
        tracing::info!(%issue, branch = %pushed.branch, commit = %pushed.commit, ahead, "branch pushed");
        if let Some(entry) = self
            .issue_workspaces
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get_mut(issue)
        {
            entry.head_commit = Some(pushed.commit);
        }
        let sessions = self
            .store
            .sessions_for_issue(issue)
            .await
            .map_err(|err| format!("the issue's sessions could not be read: {err}"))?;
        let rotations = sessions
            .iter()
            .filter(|session| session.outcome == Some(StoredOutcome::Rotated))
            .count();
        Ok(Publication::Pushed(Box::new(PushedBranch {
            branch: pushed.branch,
            base: known.base_branch,
            title: self.issue_title(issue).await,
            sessions: sessions.len(),
            rotations,
        })))
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
        let conclusion = match self.publish(issue).await {
            Ok(publication) => Conclusion::Succeeded {
                summary,
                tokens,
                cost_usd,
                publication,
            },
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
        let history = self.store.issue_history(issue).await?;
        let Some(since) = history
            .iter()
            .rev()
            .find(|transition| transition.to == IssueState::InProgress)
            .map(|transition| transition.at)
        else {
            return Ok(None);
        };
        let sessions = self.store.sessions_for_issue(issue).await?;
        Ok(sessions
            .into_iter()
            .filter(|session| {
                session.started_at >= since && session.outcome == Some(StoredOutcome::Succeeded)
            })
            .max_by_key(|session| session.started_at))
    }

    /// Removes the issue's worktree and local branch (the remote branch stays), when one is
    /// known and the issue is not running.
    pub(crate) async fn cleanup_workspace(&self, issue: &IssueRef) {
        let Some(parts) = &self.workspaces else {
            return;
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
                return;
            }
        }
        let known = self
            .issue_workspaces
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(issue);
        let Some(known) = known else {
            return;
        };
        match parts.workspaces.cleanup(&known.workspace).await {
            Ok(removed) => {
                tracing::info!(%issue, path = %removed.path.display(), branch = ?removed.branch, "workspace removed")
            }
            Err(err) => {
                tracing::warn!(%issue, error = %err, "the workspace could not be removed; it is pruned at the next start")
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
                )
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
}
