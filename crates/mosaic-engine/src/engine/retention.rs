//! Retention of work directories. Closing or unassigning an issue removes its worktree at once;
//! a finished issue that stays open keeps it until it has been unchanged for the retention
//! period, then the periodic clean-up removes it the same way. An issue that is waiting, running
//! or has a live session keeps its directory whatever its age.

use std::collections::HashSet;

use chrono::{DateTime, Utc};
use mosaic_domain::{IssueRef, IssueState, Volume};

use super::Engine;

/// Known issues split by whether their work directories may go.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FinishedIssues {
    /// Finished (a terminal state, nothing running) and unchanged since the cut-off.
    pub expired: Vec<IssueRef>,
    /// Every other issue the engine knows: waiting, running, or finished more recently.
    pub kept: Vec<IssueRef>,
}

/// Whether an issue's work directory may go: its work is over (`state` and the queue's state
/// terminal, no session owned or watched) and it last changed before `before`.
fn expired(
    state: IssueState,
    queue_state: Option<IssueState>,
    updated_at: DateTime<Utc>,
    running: bool,
    before: DateTime<Utc>,
) -> bool {
    state.is_terminal()
        && queue_state.is_none_or(IssueState::is_terminal)
        && !running
        && updated_at < before
}

fn split_finished(
    core: &super::work::Core,
    watched: &HashSet<IssueRef>,
    before: DateTime<Utc>,
) -> FinishedIssues {
    let mut split = FinishedIssues::default();
    for (issue, record) in &core.records {
        let running = core.running.contains_key(issue) || watched.contains(issue);
        if expired(
            record.state,
            core.queue.state(issue),
            record.updated_at,
            running,
            before,
        ) {
            split.expired.push(issue.clone());
        } else {
            split.kept.push(issue.clone());
        }
    }
    split
}

impl Engine {
    /// Splits the known issues into those whose work directories may go (finished and
    /// unchanged since `before`) and the rest.
    pub async fn finished_issues(&self, before: DateTime<Utc>) -> FinishedIssues {
        let watched = self.watched_issues();
        let core = self.inner.core.lock().await;
        split_finished(&core, &watched, before)
    }

    /// Runs `remove` (blocking work, such as deleting directories) on [`Self::finished_issues`]
    /// while no issue can be dispatched: the engine's lock is held until `remove` returns, so
    /// an issue reopened meanwhile cannot start a session in a directory being removed.
    pub async fn while_finished_issues_stay_finished<T, F>(
        &self,
        before: DateTime<Utc>,
        remove: F,
    ) -> Result<T, tokio::task::JoinError>
    where
        F: FnOnce(FinishedIssues) -> T + Send + 'static,
        T: Send + 'static,
    {
        let watched = self.watched_issues();
        let core = self.inner.core.lock().await;
        let split = split_finished(&core, &watched, before);
        let outcome = tokio::task::spawn_blocking(move || remove(split)).await;
        drop(core);
        outcome
    }

    /// Issues a live session is watched for.
    fn watched_issues(&self) -> HashSet<IssueRef> {
        self.inner
            .monitor
            .live_sessions()
            .into_iter()
            .map(|live| live.issue)
            .collect()
    }

    /// Removes the git worktrees (and local branches; the pushed branch stays) of issues
    /// finished and unchanged since `before`, through the same path as closing an issue, so
    /// each workspace record gets its removal time.
    pub async fn remove_expired_worktrees(&self, before: DateTime<Utc>) -> Volume {
        let inner = &self.inner;
        let Some(parts) = &inner.workspaces else {
            return Volume::default();
        };
        let expired: HashSet<IssueRef> = self
            .finished_issues(before)
            .await
            .expired
            .into_iter()
            .collect();
        let candidates: Vec<_> = inner
            .issue_workspaces
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .filter(|(issue, _)| expired.contains(*issue))
            .map(|(issue, known)| (issue.clone(), known.workspace.clone()))
            .collect();
        let mut removed = Volume::default();
        for (issue, workspace) in candidates {
            // Measured first: afterwards there is nothing left to measure.
            let bytes = parts
                .workspaces
                .disk_usage(&workspace)
                .await
                .unwrap_or_default();
            // It checks again, under the engine's lock, that the issue is not running.
            if inner.cleanup_workspace(&issue).await {
                removed.count += 1;
                removed.bytes = removed.bytes.saturating_add(bytes);
            }
        }
        removed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_finished_idle_issue_past_the_cut_off_expires() {
        let now = Utc::now();
        let old = now - chrono::Duration::days(10);
        let before = now - chrono::Duration::days(7);
        for state in [
            IssueState::Completed,
            IssueState::NoChanges,
            IssueState::Failed,
            IssueState::Rejected,
            IssueState::Cancelled,
        ] {
            assert!(expired(state, Some(state), old, false, before), "{state}");
            assert!(expired(state, None, old, false, before), "{state}");
            // Finished recently, or something still runs for it: kept.
            assert!(!expired(state, Some(state), now, false, before), "{state}");
            assert!(!expired(state, Some(state), old, true, before), "{state}");
        }
        for state in [
            IssueState::Pending,
            IssueState::Blocked,
            IssueState::Ready,
            IssueState::InProgress,
        ] {
            assert!(!expired(state, Some(state), old, false, before), "{state}");
            // The queue moved on (requeued) before the record did: kept.
            assert!(
                !expired(IssueState::Completed, Some(state), old, false, before),
                "{state}"
            );
        }
    }
}
