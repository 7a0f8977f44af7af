//! What the HTTP layer reads and does: plain serialisable views and two actions.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;

use chrono::{DateTime, Utc};
use mosaic_domain::{IssueRef, IssueState};
use mosaic_store::{
    GateRunRecord, IssueRecord, IssueSnapshot, OutboxItem, RotationRowId, SessionRecord, Store,
    StoredRotation, TransitionRecord, WorkspaceRecord,
};
use serde::Serialize;

use crate::effects::GiteaWrite;
use crate::report::Status;

use super::attempt::WorkspaceUsage;

use super::work::Work;
use super::{Engine, EngineError};

/// Rotations scanned for an issue's detail view.
const DETAIL_ROTATIONS: u32 = 500;

/// One line of the queue.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct QueueItem {
    pub issue: IssueRef,
    pub state: IssueState,
    pub agent: Option<String>,
    pub estimate: Option<u64>,
    /// Open blockers it waits for; `None` (left out) where only the leader knows them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub blockers: Option<Vec<IssueRef>>,
    pub attempts: u32,
    pub queued_at: Option<DateTime<Utc>>,
}

/// Everything known about one issue.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct IssueDetail {
    pub record: IssueRecord,
    pub state: IssueState,
    /// The dependency graph's view; `None` (left out) where only the leader has the graph.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub blockers: Option<Vec<IssueRef>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub open_blockers: Option<Vec<IssueRef>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dependents: Option<Vec<IssueRef>>,
    pub history: Vec<TransitionRecord>,
    pub sessions: Vec<SessionRecord>,
    pub rotations: Vec<StoredRotation>,
    pub snapshot: Option<IssueSnapshot>,
    pub live: Option<LiveSessionView>,
    /// The issue's git worktree (also after it was removed: `removed_at`).
    pub workspace: Option<WorkspaceRecord>,
    /// What the worktree holds on disk, while this process has it.
    pub workspace_bytes: Option<u64>,
    /// The newest pull request write for the issue, once one was enqueued.
    pub pull_request: Option<PullRequestView>,
    /// The quality gates' latest round of results.
    pub gates: Vec<GateRunRecord>,
    /// Every gate run of the issue, oldest first (each attempt and continuation).
    pub gate_runs: Vec<GateRunRecord>,
}

/// A pull request the coordinator opened (or updated) for an issue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PullRequestView {
    pub head: String,
    pub base: String,
    pub title: String,
    /// The write's outbox status: `pending` (not yet in Gitea), `done` or `failed`.
    pub status: String,
    /// Gitea's number and web page for it, once the outbox saw it open.
    pub number: Option<u64>,
    pub url: Option<String>,
}

impl PullRequestView {
    fn from_outbox(item: &OutboxItem) -> Option<Self> {
        match GiteaWrite::from_outbox(item).ok()? {
            GiteaWrite::PullRequest {
                head, base, title, ..
            } => Some(Self {
                head,
                base,
                title,
                status: item.status.as_str().to_owned(),
                number: None,
                url: None,
            }),
            _ => None,
        }
    }
}

/// A running session as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LiveSessionView {
    pub session_id: String,
    pub agent: String,
    pub issue: IssueRef,
    pub process_id: Option<u32>,
    pub started_at: DateTime<Utc>,
    pub context_percent: Option<f64>,
    pub context_tokens: Option<u64>,
    pub context_window: Option<u64>,
    /// Counted by the leader's monitor; `None` (left out) elsewhere.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub compactions: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rotations: Option<u32>,
}

/// Counters for `/metrics`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EngineStats {
    /// Every state, zero included.
    pub queue_depth: BTreeMap<String, u64>,
    /// Sessions running (or starting) per agent.
    pub running_by_agent: BTreeMap<String, u64>,
    /// Context use per live session id, in percent.
    pub context_percent: BTreeMap<String, f64>,
    /// Compactions and successful rotations since start.
    pub compactions: u64,
    pub rotations: u64,
    /// Quality gate runs and runs that did not pass, by gate name, since start.
    pub gate_runs: BTreeMap<String, u64>,
    pub gate_failures: BTreeMap<String, u64>,
    /// Agents sent back after failing required gates, since start.
    pub gate_continuations: u64,
}

fn state_rank(state: IssueState) -> u8 {
    match state {
        IssueState::InProgress => 0,
        IssueState::Ready => 1,
        IssueState::Blocked => 2,
        IssueState::Pending => 3,
        _ => 4,
    }
}

impl Engine {
    /// Issues not yet finished: in progress, ready (in dispatch order), blocked, pending.
    pub async fn queue(&self) -> Vec<QueueItem> {
        let core = self.inner.core.lock().await;
        // Each ready issue's place in dispatch order, looked up once per item (a search inside
        // the comparator made large queues quadratic).
        let ready: std::collections::HashMap<IssueRef, usize> = core
            .queue
            .ready_in_order()
            .enumerate()
            .map(|(place, issue)| (issue, place))
            .collect();
        let mut items: Vec<QueueItem> = core
            .queue
            .iter()
            .filter(|entry| !entry.state.is_terminal())
            .map(|entry| {
                let record = core.records.get(&entry.issue);
                QueueItem {
                    issue: entry.issue.clone(),
                    state: entry.state,
                    agent: entry.agent.clone(),
                    estimate: record.and_then(|r| r.estimate),
                    blockers: Some(core.graph.open_blockers(&entry.issue)),
                    attempts: record.map_or(0, |r| r.attempts),
                    queued_at: record.and_then(|r| r.queued_at),
                }
            })
            .collect();
        items.sort_by(|a, b| {
            state_rank(a.state).cmp(&state_rank(b.state)).then_with(|| {
                let position = |issue: &IssueRef| ready.get(issue).copied();
                position(&a.issue)
                    .cmp(&position(&b.issue))
                    .then_with(|| a.queued_at.cmp(&b.queued_at))
                    .then_with(|| a.issue.cmp(&b.issue))
            })
        });
        items
    }

    pub async fn issue_detail(&self, issue: &IssueRef) -> Result<IssueDetail, EngineError> {
        let (record, blockers, open_blockers, dependents) = {
            let core = self.inner.core.lock().await;
            let record = core
                .records
                .get(issue)
                .cloned()
                .ok_or_else(|| EngineError::NotFound(issue.clone()))?;
            (
                record,
                core.graph.blockers(issue),
                core.graph.open_blockers(issue),
                core.graph.dependents(issue),
            )
        };
        let mut detail = stored_detail(self.inner.store.as_ref(), issue, record).await?;
        detail.blockers = Some(blockers);
        detail.open_blockers = Some(open_blockers);
        detail.dependents = Some(dependents);
        detail.workspace_bytes = self.inner.workspace_bytes(issue).await;
        detail.live = self.live_sessions().into_iter().find(|s| &s.issue == issue);
        Ok(detail)
    }

    /// Disk use under the workspace root (`None` without `[workspace]`). The worktrees' size is
    /// measured at most once a minute; the free space every time.
    pub async fn workspace_usage(&self) -> Option<WorkspaceUsage> {
        self.inner.workspace_usage().await
    }

    /// Sessions the monitor watches now.
    pub fn live_sessions(&self) -> Vec<LiveSessionView> {
        self.inner
            .monitor
            .live_sessions()
            .into_iter()
            .map(|live| LiveSessionView {
                session_id: live.session_id.to_string(),
                agent: live.agent_type,
                issue: live.issue,
                process_id: live.process_id,
                started_at: live.started_at,
                context_percent: live.usage.map(|u| u.percent),
                context_tokens: live.usage.map(|u| u.used_tokens),
                context_window: live.usage.map(|u| u.window),
                compactions: Some(live.compactions),
                rotations: Some(live.rotations),
            })
            .collect()
    }

    /// Newest first; with `before` (the `id` of the last one seen), only those recorded
    /// earlier (the next page).
    pub async fn rotations(
        &self,
        before: Option<RotationRowId>,
        limit: u32,
    ) -> Result<Vec<StoredRotation>, EngineError> {
        Ok(self.inner.store.recent_rotations(before, limit).await?)
    }

    /// Puts a finished, failed, rejected or cancelled issue back in the queue (attempts reset);
    /// a waiting one is re-judged with its stored metadata. An issue in progress is refused.
    pub async fn requeue(&self, issue: &IssueRef) -> Result<IssueState, EngineError> {
        let inner = &self.inner;
        let mut core = inner.core.lock().await;
        let state = core
            .queue
            .state(issue)
            .ok_or_else(|| EngineError::NotFound(issue.clone()))?;
        if state == IssueState::InProgress {
            return Err(EngineError::InvalidTransition {
                issue: issue.clone(),
                from: state,
                to: IssueState::Pending,
            });
        }
        let mut work = Work::new(
            &core,
            "api:requeue".to_owned(),
            format!("q{}", uuid::Uuid::now_v7()),
        );
        if state != IssueState::Pending {
            work.step(&core, issue, IssueState::Pending)?;
        }
        work.update(&core, issue, |record| record.attempts = 0);
        let change = work.graph.set_open(issue, true)?;
        inner.follow(&core, &mut work, &change, Some(issue))?;
        inner.evaluate(&core, &mut work, issue, None, true)?;
        // Without metadata the issue waits at pending for its next delivery.
        inner.store.commit_transitions(work.batches()).await?;
        let new_state = work.queue.state(issue).unwrap_or(IssueState::Pending);
        work.install(&mut core);
        drop(core);
        inner.wake.notify_one();
        Ok(new_state)
    }

    /// Takes an issue out of the queue; a running session is closed.
    pub async fn cancel(&self, issue: &IssueRef) -> Result<(), EngineError> {
        let inner = &self.inner;
        let mut core = inner.core.lock().await;
        let state = core
            .queue
            .state(issue)
            .ok_or_else(|| EngineError::NotFound(issue.clone()))?;
        if state.is_terminal() {
            return Err(EngineError::InvalidTransition {
                issue: issue.clone(),
                from: state,
                to: IssueState::Cancelled,
            });
        }
        let mut work = Work::new(
            &core,
            "api:cancel".to_owned(),
            format!("q{}", uuid::Uuid::now_v7()),
        );
        let change = work.graph.set_coordinated(issue, false)?;
        inner.follow(&core, &mut work, &change, Some(issue))?;
        work.step(&core, issue, IssueState::Cancelled)?;
        work.announce(
            &core,
            issue,
            &inner.config.labels,
            &Status::Cancelled {
                why: "cancelled through the API",
            },
        );
        inner.store.commit_transitions(work.batches()).await?;
        work.install(&mut core);
        let closing: Vec<(String, String)> = core
            .running
            .get(issue)
            .and_then(|running| running.session_id.clone())
            .map(|id| (id, "cancelled through the API".to_owned()))
            .into_iter()
            .collect();
        drop(core);
        inner.close_sessions(closing).await;
        inner.wake.notify_one();
        Ok(())
    }

    pub async fn stats(&self) -> EngineStats {
        let core = self.inner.core.lock().await;
        let mut queue_depth: BTreeMap<String, u64> = IssueState::ALL
            .iter()
            .map(|state| (state.as_str().to_owned(), 0))
            .collect();
        for entry in core.queue.iter() {
            *queue_depth
                .entry(entry.state.as_str().to_owned())
                .or_default() += 1;
        }
        let mut running_by_agent: BTreeMap<String, u64> = self
            .inner
            .profiles
            .names()
            .map(|name| (name.to_owned(), 0))
            .collect();
        for running in core.running.values() {
            *running_by_agent.entry(running.agent.clone()).or_default() += 1;
        }
        drop(core);
        let context_percent = self
            .live_sessions()
            .into_iter()
            .filter_map(|live| live.context_percent.map(|p| (live.session_id, p)))
            .collect();
        let gates = self.inner.gate_stats.totals();
        EngineStats {
            queue_depth,
            running_by_agent,
            context_percent,
            compactions: self.inner.compactions.load(Ordering::Relaxed),
            rotations: self.inner.rotations.load(Ordering::Relaxed),
            gate_runs: gates.runs_by_gate,
            gate_failures: gates.failures_by_gate,
            gate_continuations: gates.continuations,
        }
    }
}

/// The runs of the newest round (one verification records all its gates at one time).
fn latest_round(runs: &[GateRunRecord]) -> Vec<GateRunRecord> {
    let Some(newest) = runs.iter().map(|run| run.at).max() else {
        return Vec::new();
    };
    runs.iter()
        .filter(|run| run.at == newest)
        .cloned()
        .collect()
}

/// What the store alone says of a coordinated issue, so a coordinator that does not lead (and
/// has no engine) can answer too: everything but its place in the dependency graph, the live
/// session and the worktree's size, which only the leader knows (left empty). `None`: the issue
/// is not coordinated.
/// The unfinished issues as the shared store has them, for a coordinator that does not lead:
/// in progress, ready, blocked, pending; ready ones by priority, then by when they were queued.
/// Blockers (the dependency graph) and the leader's exact dispatch order are the leader's: not
/// given here.
pub async fn stored_queue(store: &dyn Store) -> Result<Vec<QueueItem>, EngineError> {
    let waiting = [
        IssueState::InProgress,
        IssueState::Ready,
        IssueState::Blocked,
        IssueState::Pending,
    ];
    let mut items: Vec<(i32, QueueItem)> = store
        .list_issues(&waiting)
        .await?
        .into_iter()
        .map(|record| {
            (
                record.priority,
                QueueItem {
                    issue: record.issue,
                    state: record.state,
                    agent: record.assigned_agent,
                    estimate: record.estimate,
                    blockers: None,
                    attempts: record.attempts,
                    queued_at: record.queued_at,
                },
            )
        })
        .collect();
    items.sort_by(|(a_priority, a), (b_priority, b)| {
        state_rank(a.state)
            .cmp(&state_rank(b.state))
            // A higher priority runs first.
            .then_with(|| b_priority.cmp(a_priority))
            .then_with(|| a.queued_at.cmp(&b.queued_at))
            .then_with(|| a.issue.cmp(&b.issue))
    });
    Ok(items.into_iter().map(|(_, item)| item).collect())
}

/// The sessions the shared store has open, for a coordinator that does not lead: agent, issue,
/// process and start; their context use is known to the leader only.
pub async fn stored_sessions(store: &dyn Store) -> Result<Vec<LiveSessionView>, EngineError> {
    Ok(store
        .open_sessions()
        .await?
        .into_iter()
        .map(|session| LiveSessionView {
            session_id: session.id,
            agent: session.agent,
            issue: session.issue,
            process_id: session.pid,
            started_at: session.started_at,
            context_percent: None,
            context_tokens: None,
            context_window: None,
            compactions: None,
            rotations: None,
        })
        .collect())
}

pub async fn stored_issue_detail(
    store: &dyn Store,
    issue: &IssueRef,
) -> Result<Option<IssueDetail>, EngineError> {
    match store.get_issue(issue).await? {
        Some(record) => Ok(Some(stored_detail(store, issue, record).await?)),
        None => Ok(None),
    }
}

async fn stored_detail(
    store: &dyn Store,
    issue: &IssueRef,
    record: IssueRecord,
) -> Result<IssueDetail, EngineError> {
    let rotations = store
        .recent_rotations(None, DETAIL_ROTATIONS)
        .await?
        .into_iter()
        .filter(|r| &r.rotation.issue == issue || r.rotation.next_issue.as_ref() == Some(issue))
        .collect();
    let stored_workspace = store.get_workspace(issue).await?;
    let pull_request = store
        .outbox_for_issue(issue)
        .await?
        .iter()
        .rev()
        .find_map(PullRequestView::from_outbox)
        .map(|mut view| {
            let opened = stored_workspace
                .as_ref()
                .filter(|stored| stored.workspace.branch == view.head)
                .and_then(|stored| stored.pull_request.as_ref());
            if let Some(opened) = opened {
                view.number = Some(opened.number);
                view.url = Some(opened.url.clone());
            }
            view
        });
    let gate_runs = store.gate_runs_for_issue(issue).await?;
    Ok(IssueDetail {
        gates: latest_round(&gate_runs),
        gate_runs,
        workspace: stored_workspace.map(|stored| stored.workspace),
        workspace_bytes: None,
        pull_request,
        state: record.state,
        history: store.issue_history(issue).await?,
        sessions: store.sessions_for_issue(issue).await?,
        snapshot: store.get_issue_snapshot(issue).await?,
        live: None,
        record,
        blockers: None,
        open_blockers: None,
        dependents: None,
        rotations,
    })
}
