//! The in-memory picture (graph, queue, records, running sessions) and the unit of change
//! that is computed on a copy, committed in one store transaction, and only then installed.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use mosaic_domain::{DependencyGraph, IssueQueue, IssueRef, IssueState, Readiness};
use mosaic_store::{
    IssueRecord, NewOutboxItem, NewSession, SessionEnd, StateTransition, TransitionBatch,
};

use crate::declared::{DeclaredBlocks, declares};
use crate::effects::GiteaWrite;
use crate::report::{StateLabels, Status, status_comment};

use super::EngineError;

/// A map keyed by issue with a fast seeded hasher (the records run to 100,000s).
pub(crate) type IssueMap<V> = HashMap<IssueRef, V, foldhash::fast::RandomState>;

/// A session the engine owns (or is starting) for an issue.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Running {
    /// `None` while the session is being spawned (or between sessions of a rotation).
    pub session_id: Option<String>,
    pub agent: String,
    pub started_at: DateTime<Utc>,
}

/// What the engine knows in memory; the store is the truth it is rebuilt from.
#[derive(Debug, Default)]
pub(crate) struct Core {
    pub graph: DependencyGraph,
    pub queue: IssueQueue,
    pub records: IssueMap<IssueRecord>,
    /// Derived from `records`: who declares (`Blocks: #N`) that it blocks whom.
    pub declared: DeclaredBlocks,
    pub running: HashMap<IssueRef, Running>,
}

impl Core {
    pub fn running_for(&self, agent: &str) -> u32 {
        let count = self
            .running
            .values()
            .filter(|running| running.agent.eq_ignore_ascii_case(agent))
            .count();
        u32::try_from(count).unwrap_or(u32::MAX)
    }
}

/// One issue's share of a change.
#[derive(Debug)]
struct Touched {
    record: IssueRecord,
    steps: Vec<(Option<IssueState>, IssueState)>,
    outbox: Vec<NewOutboxItem>,
    blocked_by: Option<Vec<IssueRef>>,
    session_started: Option<NewSession>,
    session_ended: Option<SessionEnd>,
}

/// A change being computed: copies of graph and queue, the touched records, and the batches
/// they become. Nothing here is visible until [`Work::install`] after a successful commit.
#[derive(Debug)]
pub(crate) struct Work {
    pub graph: DependencyGraph,
    pub queue: IssueQueue,
    touched: Vec<IssueRef>,
    changes: HashMap<IssueRef, Touched>,
    /// Recorded in every transition (`delivery:42`, `session:… succeeded`).
    cause: String,
    /// Prefix of every idempotency key of this change (`d42`, `s<session>`).
    key: String,
    pub at: DateTime<Utc>,
}

impl Work {
    pub fn new(core: &Core, cause: String, key: String) -> Self {
        Self {
            graph: core.graph.clone(),
            queue: core.queue.clone(),
            touched: Vec::new(),
            changes: HashMap::new(),
            cause,
            key,
            at: Utc::now(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.changes.is_empty()
    }

    fn touch(&mut self, core: &Core, issue: &IssueRef) -> &mut Touched {
        let at = self.at;
        let order = &mut self.touched;
        self.changes.entry(issue.clone()).or_insert_with(|| {
            order.push(issue.clone());
            Touched {
                record: core
                    .records
                    .get(issue)
                    .cloned()
                    .unwrap_or_else(|| IssueRecord::new(issue.clone(), IssueState::Pending, at)),
                steps: Vec::new(),
                outbox: Vec::new(),
                blocked_by: None,
                session_started: None,
                session_ended: None,
            }
        })
    }

    /// The issue's record as this change leaves it.
    pub fn record(&self, core: &Core, issue: &IssueRef) -> Option<IssueRecord> {
        self.changes
            .get(issue)
            .map(|touched| touched.record.clone())
            .or_else(|| core.records.get(issue).cloned())
    }

    /// Changes fields of the record (not its state).
    pub fn update(&mut self, core: &Core, issue: &IssueRef, change: impl FnOnce(&mut IssueRecord)) {
        let at = self.at;
        let touched = self.touch(core, issue);
        change(&mut touched.record);
        touched.record.updated_at = at;
    }

    /// Adds a newly coordinated issue at `pending` (recorded as a transition from nothing).
    pub fn admit(
        &mut self,
        core: &Core,
        issue: &IssueRef,
        labels: Vec<String>,
    ) -> Result<(), EngineError> {
        let at = self.at;
        self.queue.enqueue(issue.clone(), at, labels)?;
        let touched = self.touch(core, issue);
        touched.record.state = IssueState::Pending;
        touched.record.queued_at = Some(at);
        touched.record.attempts = 0;
        touched.steps.push((None, IssueState::Pending));
        Ok(())
    }

    /// Moves an issue through the domain's state machine (invalid arrows are errors).
    pub fn step(
        &mut self,
        core: &Core,
        issue: &IssueRef,
        to: IssueState,
    ) -> Result<(), EngineError> {
        let transition = self.queue.transition(issue, to)?;
        let at = self.at;
        let touched = self.touch(core, issue);
        touched.record.state = to;
        touched.record.updated_at = at;
        if to == IssueState::Pending {
            touched.record.queued_at = Some(at);
        }
        touched.steps.push((Some(transition.from), to));
        Ok(())
    }

    /// Puts a waiting issue where the graph says (ready or blocked); returns whether it moved.
    pub fn settle(&mut self, core: &Core, issue: &IssueRef) -> Result<bool, EngineError> {
        let Some(state) = self.queue.state(issue) else {
            return Ok(false);
        };
        let target = if self.graph.is_ready(issue) {
            IssueState::Ready
        } else {
            IssueState::Blocked
        };
        if matches!(
            state,
            IssueState::Pending | IssueState::Blocked | IssueState::Ready
        ) && state != target
        {
            self.step(core, issue, target)?;
            return Ok(true);
        }
        Ok(false)
    }

    /// Applies a graph change to waiting issues other than `except` (blocked ⇄ ready) and returns
    /// those that moved.
    pub fn follow_graph(
        &mut self,
        core: &Core,
        change: &mosaic_domain::GraphChange,
        except: Option<&IssueRef>,
    ) -> Result<Vec<IssueRef>, EngineError> {
        let mut moved = Vec::new();
        for issue in change.newly_ready.iter().chain(&change.newly_blocked) {
            if Some(issue) != except && self.settle(core, issue)? {
                moved.push(issue.clone());
            }
        }
        Ok(moved)
    }

    pub fn set_blocked_by(&mut self, core: &Core, issue: &IssueRef, blockers: Vec<IssueRef>) {
        self.touch(core, issue).blocked_by = Some(blockers);
    }

    /// The issues whose metadata, as this change leaves it, says they block `target`.
    pub fn declared_blockers(&self, core: &Core, target: &IssueRef) -> Vec<IssueRef> {
        let mut found: std::collections::BTreeSet<&IssueRef> = core
            .declared
            .blockers_of(target)
            .filter(|blocker| !self.changes.contains_key(*blocker))
            .collect();
        found.extend(
            self.changes
                .iter()
                .filter(|(_, touched)| declares(&touched.record, target))
                .map(|(issue, _)| issue),
        );
        found.remove(target);
        found.into_iter().cloned().collect()
    }

    pub fn start_session(&mut self, core: &Core, issue: &IssueRef, session: NewSession) {
        self.touch(core, issue).session_started = Some(session);
    }

    pub fn end_session(&mut self, core: &Core, issue: &IssueRef, end: SessionEnd) {
        self.touch(core, issue).session_ended = Some(end);
    }

    /// Enqueues a write with a key unique to this change, issue and `what`.
    pub fn write(&mut self, core: &Core, issue: &IssueRef, what: &str, write: GiteaWrite) {
        let key = format!("{}-{}-{what}", self.key, issue);
        let at = self.at;
        let item = write.to_outbox(issue, key, at);
        // Within one change the last word counts (an issue can be told twice, e.g. its
        // blockers changed after it was announced); across changes the store keeps the first.
        let outbox = &mut self.touch(core, issue).outbox;
        match outbox
            .iter_mut()
            .find(|queued| queued.idempotency_key == item.idempotency_key)
        {
            Some(queued) => *queued = item,
            None => outbox.push(item),
        }
    }

    /// The status comment and state label for the issue's current state.
    pub fn announce(
        &mut self,
        core: &Core,
        issue: &IssueRef,
        labels: &StateLabels,
        status: &Status<'_>,
    ) {
        let Some(state) = self.queue.state(issue) else {
            return;
        };
        let body = status_comment(status, &issue.repo);
        self.write(
            core,
            issue,
            &format!("{state}-status"),
            GiteaWrite::StatusComment {
                body,
                pull_request: status.pull_request_head().map(str::to_owned),
            },
        );
        let add = labels.for_state(state).map(str::to_owned);
        let remove = labels
            .all()
            .iter()
            .filter(|label| Some(**label) != add.as_deref())
            .map(|label| (*label).to_owned())
            .collect();
        self.write(
            core,
            issue,
            &format!("{state}-label"),
            GiteaWrite::StateLabel { add, remove },
        );
    }

    /// The status of a waiting issue (queued, or what it waits for).
    pub fn announce_waiting(&mut self, core: &Core, issue: &IssueRef, labels: &StateLabels) {
        let Some(record) = self.record(core, issue) else {
            return;
        };
        let agent = record.assigned_agent.clone().unwrap_or_default();
        let estimate = record.estimate.unwrap_or(0);
        match self.graph.readiness(issue) {
            Readiness::BlockedByCycle(cycle) => {
                self.announce(
                    core,
                    issue,
                    labels,
                    &Status::BlockedByCycle { cycle: &cycle },
                );
            }
            Readiness::Blocked(waiting) => self.announce(
                core,
                issue,
                labels,
                &Status::Queued {
                    agent: &agent,
                    estimate,
                    waiting_on: &waiting,
                },
            ),
            _ => self.announce(
                core,
                issue,
                labels,
                &Status::Queued {
                    agent: &agent,
                    estimate,
                    waiting_on: &[],
                },
            ),
        }
    }

    /// The batches to commit, in order; each issue's extras ride on its last batch.
    pub fn batches(&self) -> Vec<TransitionBatch> {
        let mut batches = Vec::new();
        for issue in &self.touched {
            let Some(touched) = self.changes.get(issue) else {
                continue;
            };
            let mut issue_batches: Vec<TransitionBatch> = touched
                .steps
                .iter()
                .map(|(from, to)| {
                    let mut record = touched.record.clone();
                    record.state = *to;
                    TransitionBatch {
                        issue: record,
                        transition: Some(StateTransition {
                            from: *from,
                            to: *to,
                            cause: self.cause.clone(),
                            at: self.at,
                        }),
                        outbox: Vec::new(),
                        blocked_by: None,
                        session_started: None,
                        session_ended: None,
                    }
                })
                .collect();
            if issue_batches.is_empty() {
                issue_batches.push(TransitionBatch::update(touched.record.clone()));
            }
            if let Some(last) = issue_batches.last_mut() {
                last.outbox = touched.outbox.clone();
                last.blocked_by = touched.blocked_by.clone();
                last.session_started = touched.session_started.clone();
                last.session_ended = touched.session_ended.clone();
            }
            batches.extend(issue_batches);
        }
        batches
    }

    /// Makes the committed change visible.
    pub fn install(self, core: &mut Core) {
        core.graph = self.graph;
        core.queue = self.queue;
        for (issue, touched) in self.changes {
            let before = core.records.get(&issue).and_then(|r| r.metadata.as_ref());
            core.declared
                .replace(&issue, before, touched.record.metadata.as_ref());
            core.records.insert(issue, touched.record);
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn within_one_change_the_last_write_under_a_key_counts() {
        let core = Core::default();
        let issue: IssueRef = "o/r#1".parse().unwrap();
        let mut work = Work::new(&core, "test".to_owned(), "d1".to_owned());
        let status = |body: &str| GiteaWrite::StatusComment {
            body: body.to_owned(),
            pull_request: None,
        };
        work.write(&core, &issue, "ready-status", status("waiting on #2"));
        work.write(&core, &issue, "other", status("something else"));
        work.write(&core, &issue, "ready-status", status("waiting on #2, #3"));
        let outbox: Vec<(String, serde_json::Value)> = work
            .batches()
            .into_iter()
            .flat_map(|batch| batch.outbox)
            .map(|item| (item.idempotency_key, item.payload))
            .collect();
        assert_eq!(outbox.len(), 2, "{outbox:?}");
        assert_eq!(outbox[0].0, "d1-o/r#1-ready-status");
        assert!(outbox[0].1.to_string().contains("waiting on #2, #3"));
        assert_eq!(outbox[1].0, "d1-o/r#1-other");
    }
}
