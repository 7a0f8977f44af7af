//! Recovery: the queue and graph come back from the store; sessions that were running when the
//! process stopped are ended as interrupted and their issues dispatched again.

use std::collections::{HashMap, HashSet};

use mosaic_domain::graph::{EdgeSnapshot, NodeSnapshot};
use mosaic_domain::{
    DependencyGraph, GraphSnapshot, IssueQueue, IssueRef, IssueState, QueueEntry, QueueSnapshot,
};
use mosaic_store::SessionOutcome;
use serde::Serialize;

use super::dispatch::{Conclusion, session_end_spent};
use super::work::{Core, IssueMap, Running, Work};
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
    /// Issues found with their agent's success stored but not yet published; publishing
    /// resumes for them (the agent does not run again).
    pub resumed_publishing: Vec<IssueRef>,
    /// Issues that gained edges their blockers declared (`Blocks: #N`) but the store lacked.
    pub edges_added: usize,
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
        let (records, edges, sessions) = tokio::try_join!(
            inner.store.list_issues(&[]),
            inner.store.dependency_edges(),
            inner.store.open_sessions(),
        )?;
        let mut report = RecoveryReport {
            issues: records.len(),
            edges: edges.len(),
            ..RecoveryReport::default()
        };

        // Blockers that are not coordinated issues, in order of first mention.
        let coordinated: HashSet<&IssueRef, foldhash::fast::RandomState> =
            records.iter().map(|record| &record.issue).collect();
        let mut mentioned: HashSet<&IssueRef, foldhash::fast::RandomState> = HashSet::default();
        let outside: Vec<IssueRef> = edges
            .iter()
            .map(|edge| &edge.blocker)
            .filter(|blocker| !coordinated.contains(blocker) && mentioned.insert(*blocker))
            .cloned()
            .collect();
        // What the tracker last said about all of them, in one read.
        let wanted: Vec<IssueRef> = records
            .iter()
            .map(|record| record.issue.clone())
            .chain(outside.iter().cloned())
            .collect();
        let mut tracker = inner
            .store
            .issue_snapshot_summaries(wanted)
            .await?
            .into_iter();

        // The graph in one pass (O(V + E)), as adding edges one at a time would leave it:
        // coordinated issues are known (open unless the tracker or a closing completion says
        // otherwise); other blockers are known when they have a snapshot, else open and unknown.
        let mut nodes = Vec::with_capacity(records.len() + outside.len());
        let mut entries = Vec::with_capacity(records.len());
        let mut by_issue = IssueMap::with_capacity_and_hasher(
            records.len(),
            foldhash::fast::RandomState::default(),
        );
        for record in records {
            let summary = tracker.next().flatten();
            let tracker_open = summary.as_ref().is_none_or(|s| s.state.is_open());
            nodes.push(NodeSnapshot {
                issue: record.issue.clone(),
                open: tracker_open
                    && !(inner.completion_closes() && record.state == IssueState::Completed),
                known: true,
                coordinated: is_waiting_or_running(record.state),
            });
            entries.push(QueueEntry {
                issue: record.issue.clone(),
                state: record.state,
                created_at: record.queued_at.unwrap_or(record.updated_at),
                labels: summary.map(|s| s.labels).unwrap_or_default(),
                agent: record.assigned_agent.clone(),
                attempts: record.attempts,
            });
            by_issue.insert(record.issue.clone(), record);
        }
        for blocker in outside {
            let summary = tracker.next().flatten();
            nodes.push(NodeSnapshot {
                open: summary.as_ref().is_none_or(|s| s.state.is_open()),
                known: summary.is_some(),
                coordinated: false,
                issue: blocker,
            });
        }
        let edges = edges
            .into_iter()
            .map(|edge| EdgeSnapshot {
                issue: edge.issue,
                blocked_by: edge.blocker,
            })
            .collect();
        let graph = DependencyGraph::from_snapshot(&GraphSnapshot { nodes, edges })?;
        let mut core = inner.core.lock().await;
        let priorities = core.queue.priorities().clone();
        let queue = IssueQueue::from_snapshot(QueueSnapshot { entries }, priorities)?;
        *core = Core {
            graph,
            queue,
            declared: crate::declared::DeclaredBlocks::from_records(by_issue.values()),
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
            // What it spent up to its last stored reading counts, for the session and the issue.
            let spent = mosaic_context::AgentSpend {
                input_tokens: session.input_tokens,
                output_tokens: session.output_tokens,
                cache_read_tokens: session.cache_read_tokens,
                cache_creation_tokens: session.cache_creation_tokens,
                cost_usd: session.cost_usd,
            };
            work.end_session(
                &core,
                &session.issue,
                session_end_spent(
                    &session.id,
                    SessionOutcome::Interrupted,
                    Some("the coordinator stopped while the session ran".to_owned()),
                    &spent,
                ),
            );
            work.update(&core, &session.issue, |record| {
                record.input_tokens = record.input_tokens.saturating_add(spent.input_tokens);
                record.output_tokens = record.output_tokens.saturating_add(spent.output_tokens);
                record.cost_usd += spent.cost_usd;
            });
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
        let mut resume = Vec::new();
        for issue in orphans {
            if let Some(success) = inner.stored_success(&issue).await? {
                // Stage "publishing": the slot stays taken until the result is committed.
                core.running.insert(
                    issue.clone(),
                    Running {
                        session_id: None,
                        agent: success.agent.clone(),
                        started_at: chrono::Utc::now(),
                    },
                );
                report.resumed_publishing.push(issue.clone());
                resume.push((issue, success));
                continue;
            }
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

        // Edges declared on the blocker's side (`Blocks: #N`) that the stored edges lack
        // (written by a version that did not follow them). Usually none.
        let mut undeclared: Vec<(IssueRef, IssueRef)> = Vec::new();
        for (target, blockers) in core.declared.iter() {
            if core
                .records
                .get(target)
                .is_none_or(|record| record.state.is_terminal())
            {
                continue;
            }
            let stored = core.graph.blockers(target);
            undeclared.extend(
                blockers
                    .iter()
                    .filter(|blocker| !stored.contains(blocker))
                    .map(|blocker| (target.clone(), blocker.clone())),
            );
        }
        if !undeclared.is_empty() {
            let mut work = Work::new(
                &core,
                "recovery: dependencies declared by blockers".to_owned(),
                format!("rec-{}", uuid::Uuid::now_v7()),
            );
            let mut targets = Vec::new();
            for (target, blocker) in undeclared {
                work.graph.add_blocker(&target, &blocker)?;
                targets.push(target);
            }
            targets.sort_unstable();
            targets.dedup();
            for target in &targets {
                let blockers = work.graph.blockers(target);
                work.set_blocked_by(&core, target, blockers);
            }
            inner.store.commit_transitions(work.batches()).await?;
            work.install(&mut core);
            report.edges_added = targets.len();
        }

        // Waiting issues whose stored state disagrees with the rebuilt graph. Usually there are
        // none, and then no change (a copy of graph and queue) is made at all.
        let waiting: Vec<IssueRef> = core
            .queue
            .iter()
            .filter(|entry| {
                let target = if core.graph.is_ready(&entry.issue) {
                    IssueState::Ready
                } else {
                    IssueState::Blocked
                };
                matches!(
                    entry.state,
                    IssueState::Pending | IssueState::Blocked | IssueState::Ready
                ) && entry.state != target
            })
            .map(|entry| entry.issue.clone())
            .collect();
        if !waiting.is_empty() {
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
        }
        let live: Vec<IssueRef> = core
            .queue
            .iter()
            .filter(|entry| !entry.state.is_terminal())
            .map(|entry| entry.issue.clone())
            .collect();
        drop(core);
        inner.prune_workspaces(&live).await;
        for (issue, success) in resume {
            tracing::warn!(%issue, session = %success.id, "the agent's success was stored but not published; publishing now");
            let inner = std::sync::Arc::clone(&self.inner);
            tokio::spawn(async move {
                let summary = success.detail.unwrap_or_default();
                if let Err(err) = inner
                    .publish_and_conclude(&issue, summary, success.input_tokens, success.cost_usd)
                    .await
                {
                    tracing::error!(%issue, error = %err, "could not finish publishing; the next start tries again");
                }
            });
        }
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
