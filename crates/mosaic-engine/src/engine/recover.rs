//! Recovery: the queue and graph come back from the store; sessions that were running when the
//! process stopped are ended as interrupted and their issues dispatched again.

use std::collections::HashMap;

use mosaic_domain::{DependencyGraph, IssueQueue, IssueRef, IssueState, QueueEntry, QueueSnapshot};
use mosaic_store::SessionOutcome;
use serde::Serialize;

use super::dispatch::{Conclusion, session_end};
use super::work::{Core, Work};
use super::{Engine, EngineError};

/// What recovery found and did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RecoveryReport {
    /// Coordinated issues loaded.
    pub issues: usize,
    pub edges: usize,
    /// Sessions found open and ended as interrupted.
    pub interrupted_sessions: usize,
    /// Issues that were in progress and went back to the queue.
    pub requeued: Vec<IssueRef>,
    /// Waiting issues whose state was brought in line with the graph.
    pub settled: usize,
}

fn is_waiting_or_running(state: IssueState) -> bool {
    matches!(
        state,
        IssueState::Pending | IssueState::Blocked | IssueState::Ready | IssueState::InProgress
    )
}

impl Engine {
    /// Rebuilds the in-memory queue and graph from the store and requeues interrupted work.
    /// Call once, before [`Engine::run`] and before deliveries are handled.
    pub async fn recover(&self) -> Result<RecoveryReport, EngineError> {
        let inner = &self.inner;
        let records = inner.store.list_issues(&[]).await?;
        let edges = inner.store.dependency_edges().await?;
        let sessions = inner.store.open_sessions().await?;
        let mut report = RecoveryReport {
            issues: records.len(),
            edges: edges.len(),
            ..RecoveryReport::default()
        };

        let mut graph = DependencyGraph::new();
        let mut entries = Vec::with_capacity(records.len());
        let mut by_issue = HashMap::with_capacity(records.len());
        for record in records {
            let issue = record.issue.clone();
            let snapshot = inner.store.get_issue_snapshot(&issue).await?;
            let tracker_open = snapshot.as_ref().is_none_or(|s| s.state.is_open());
            graph.insert(&issue)?;
            graph.set_open(
                &issue,
                tracker_open
                    && !(inner.completion_closes() && record.state == IssueState::Completed),
            )?;
            graph.set_coordinated(&issue, is_waiting_or_running(record.state))?;
            entries.push(QueueEntry {
                issue: issue.clone(),
                state: record.state,
                created_at: record.queued_at.unwrap_or(record.updated_at),
                labels: snapshot.map(|s| s.labels).unwrap_or_default(),
                agent: record.assigned_agent.clone(),
                attempts: record.attempts,
            });
            by_issue.insert(issue, record);
        }
        for edge in &edges {
            if !graph.is_known(&edge.blocker)
                && let Some(snapshot) = inner.store.get_issue_snapshot(&edge.blocker).await?
            {
                graph.set_open(&edge.blocker, snapshot.state.is_open())?;
            }
            graph.add_blocker(&edge.issue, &edge.blocker)?;
        }
        let mut core = inner.core.lock().await;
        let priorities = core.queue.priorities().clone();
        let queue = IssueQueue::from_snapshot(QueueSnapshot { entries }, priorities)?;
        *core = Core {
            graph,
            queue,
            records: by_issue,
            running: HashMap::new(),
        };

        // Sessions that were running: ended as interrupted, one transaction each.
        for session in sessions {
            let mut work = Work::new(
                &core,
                format!("recovery: session {} interrupted", session.id),
                format!("rec-{}", session.id),
            );
            work.end_session(
                &core,
                &session.issue,
                session_end(
                    &session.id,
                    SessionOutcome::Interrupted,
                    Some("the coordinator stopped while the session ran".to_owned()),
                    0,
                    0.0,
                ),
            );
            if core.queue.state(&session.issue) == Some(IssueState::InProgress) {
                inner.conclude(
                    &core,
                    &mut work,
                    &session.issue,
                    &Conclusion::Interrupted,
                    "recovery",
                )?;
                report.requeued.push(session.issue.clone());
            }
            inner.store.commit_transitions(work.batches()).await?;
            work.install(&mut core);
            report.interrupted_sessions += 1;
            tracing::warn!(session = %session.id, issue = %session.issue, "session interrupted by a restart; issue requeued");
        }

        // In progress without a session record (the process died between the two commits).
        let orphans: Vec<IssueRef> = core
            .queue
            .iter()
            .filter(|entry| entry.state == IssueState::InProgress)
            .map(|entry| entry.issue.clone())
            .collect();
        for issue in orphans {
            let mut work = Work::new(
                &core,
                "recovery: in progress without a session".to_owned(),
                format!("rec-{}", uuid::Uuid::now_v7()),
            );
            inner.conclude(
                &core,
                &mut work,
                &issue,
                &Conclusion::Interrupted,
                "recovery",
            )?;
            inner.store.commit_transitions(work.batches()).await?;
            work.install(&mut core);
            report.requeued.push(issue);
        }

        // Waiting issues whose stored state disagrees with the rebuilt graph.
        let waiting: Vec<IssueRef> = core
            .queue
            .iter()
            .filter(|entry| {
                matches!(
                    entry.state,
                    IssueState::Pending | IssueState::Blocked | IssueState::Ready
                )
            })
            .map(|entry| entry.issue.clone())
            .collect();
        let mut work = Work::new(
            &core,
            "recovery".to_owned(),
            format!("rec-{}", uuid::Uuid::now_v7()),
        );
        for issue in waiting {
            if work.settle(&core, &issue)? {
                work.announce_waiting(&core, &issue, &inner.config.labels);
                report.settled += 1;
            }
        }
        if !work.is_empty() {
            inner.store.commit_transitions(work.batches()).await?;
            work.install(&mut core);
        }
        drop(core);
        tracing::info!(
            issues = report.issues,
            interrupted = report.interrupted_sessions,
            requeued = report.requeued.len(),
            "engine recovered"
        );
        inner.wake.notify_one();
        Ok(report)
    }
}
