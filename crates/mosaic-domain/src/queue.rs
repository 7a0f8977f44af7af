//! The queue of coordinated issues: each issue's state, explicit transitions, and the order
//! in which ready issues are dispatched.
//!
//! Ready issues are ordered by priority label, then oldest first, then issue number (then
//! repository, so the order is total and deterministic). The ready order is kept in a
//! `BTreeSet`, so taking the next issue is O(log n).

use std::collections::BTreeSet;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::cow::CowMap;
use crate::graph::{DependencyGraph, GraphChange};
use crate::issue::{IssueRef, RepoName};
use crate::state::{InvalidTransition, IssueState};

/// Which labels raise or lower an issue's priority, highest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "PriorityOrderConfig", into = "PriorityOrderConfig")]
pub struct PriorityOrder {
    /// Labels ranking above unlabelled issues, highest first (lower-cased).
    above_unlabelled: Vec<String>,
    /// Labels ranking below unlabelled issues, highest first (lower-cased).
    below_unlabelled: Vec<String>,
}

/// The configuration form of [`PriorityOrder`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PriorityOrderConfig {
    pub above_unlabelled: Vec<String>,
    pub below_unlabelled: Vec<String>,
}

/// A priority configuration that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PriorityError {
    #[error("priority labels must not be empty")]
    EmptyLabel,
    #[error("priority label `{0}` is listed more than once (labels compare case-insensitively)")]
    DuplicateLabel(String),
}

impl PriorityOrder {
    /// Labels compare case-insensitively and must be distinct.
    pub fn new(
        above_unlabelled: Vec<String>,
        below_unlabelled: Vec<String>,
    ) -> Result<Self, PriorityError> {
        let normalise = |labels: Vec<String>| -> Vec<String> {
            labels
                .into_iter()
                .map(|label| label.trim().to_lowercase())
                .collect()
        };
        let (above, below) = (normalise(above_unlabelled), normalise(below_unlabelled));
        let mut seen = BTreeSet::new();
        for label in above.iter().chain(&below) {
            if label.is_empty() {
                return Err(PriorityError::EmptyLabel);
            }
            if !seen.insert(label.as_str()) {
                return Err(PriorityError::DuplicateLabel(label.clone()));
            }
        }
        Ok(Self {
            above_unlabelled: above,
            below_unlabelled: below,
        })
    }

    /// Rank of an issue with `labels`: lower runs first. An issue with several priority
    /// labels takes the highest one.
    pub fn rank<S: AsRef<str>>(&self, labels: &[S]) -> u32 {
        let unlabelled = self.above_unlabelled.len();
        let rank_of = |label: &str| -> Option<usize> {
            let label = label.trim();
            // Known labels are lower-cased; an ASCII label compares without allocating.
            let lowered = (!label.is_ascii()).then(|| label.to_lowercase());
            let same = |known: &String| match &lowered {
                Some(lowered) => known == lowered,
                None => known.eq_ignore_ascii_case(label),
            };
            if let Some(i) = self.above_unlabelled.iter().position(&same) {
                Some(i)
            } else {
                self.below_unlabelled
                    .iter()
                    .position(&same)
                    .map(|j| unlabelled + 1 + j)
            }
        };
        let best = labels
            .iter()
            .filter_map(|label| rank_of(label.as_ref()))
            .min()
            .unwrap_or(unlabelled);
        u32::try_from(best).unwrap_or(u32::MAX)
    }
}

impl Default for PriorityOrder {
    /// `priority:high` > `priority:medium` > no priority label > `priority:low`.
    fn default() -> Self {
        Self {
            above_unlabelled: vec!["priority:high".into(), "priority:medium".into()],
            below_unlabelled: vec!["priority:low".into()],
        }
    }
}

impl TryFrom<PriorityOrderConfig> for PriorityOrder {
    type Error = PriorityError;
    fn try_from(config: PriorityOrderConfig) -> Result<Self, Self::Error> {
        Self::new(config.above_unlabelled, config.below_unlabelled)
    }
}

impl From<PriorityOrder> for PriorityOrderConfig {
    fn from(order: PriorityOrder) -> Self {
        Self {
            above_unlabelled: order.above_unlabelled,
            below_unlabelled: order.below_unlabelled,
        }
    }
}

/// One coordinated issue in the queue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueEntry {
    pub issue: IssueRef,
    pub state: IssueState,
    /// When the issue was created in the tracker (oldest runs first).
    pub created_at: DateTime<Utc>,
    /// The issue's labels as last seen (priority comes from these).
    pub labels: Vec<String>,
    /// The agent assigned, once one is.
    pub agent: Option<String>,
    /// How many times the issue entered `in_progress`.
    pub attempts: u32,
}

/// A state change that happened.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Transition {
    pub issue: IssueRef,
    pub from: IssueState,
    pub to: IssueState,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueueError {
    #[error("issue {0} is not in the queue")]
    NotQueued(IssueRef),
    #[error("issue {issue} is already queued (state {state})")]
    AlreadyQueued { issue: IssueRef, state: IssueState },
    #[error("issue {issue}: {source}")]
    InvalidTransition {
        issue: IssueRef,
        #[source]
        source: InvalidTransition,
    },
    #[error("snapshot lists issue {0} more than once")]
    DuplicateIssue(IssueRef),
}

/// The serialisable state of the queue, for the store.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueSnapshot {
    pub entries: Vec<QueueEntry>,
}

/// Position among ready issues: priority rank, then age, then number, then repository.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct OrderKey {
    rank: u32,
    created_at: DateTime<Utc>,
    number: u64,
    repo: RepoName,
}

#[derive(Debug, Clone)]
struct Slot {
    /// Shared between copies of the queue (the engine computes each change on a copy); a
    /// write copies the one entry it changes.
    entry: Arc<QueueEntry>,
    rank: u32,
}

impl Slot {
    fn key(&self) -> OrderKey {
        OrderKey {
            rank: self.rank,
            created_at: self.entry.created_at,
            number: self.entry.issue.number,
            repo: self.entry.issue.repo.clone(),
        }
    }
}

/// Coordinated issues and their states.
#[derive(Debug, Clone, Default)]
pub struct IssueQueue {
    priorities: PriorityOrder,
    /// Copy-on-write (see `cow`): copies share the shards they do not write to.
    slots: CowMap<IssueRef, Slot>,
    ready: BTreeSet<OrderKey>,
}

impl IssueQueue {
    pub fn new(priorities: PriorityOrder) -> Self {
        Self {
            priorities,
            slots: CowMap::default(),
            ready: BTreeSet::new(),
        }
    }

    pub fn priorities(&self) -> &PriorityOrder {
        &self.priorities
    }

    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    pub fn get(&self, issue: &IssueRef) -> Option<&QueueEntry> {
        self.slots.get(issue).map(|slot| &*slot.entry)
    }

    pub fn state(&self, issue: &IssueRef) -> Option<IssueState> {
        self.get(issue).map(|entry| entry.state)
    }

    /// Every entry, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = &QueueEntry> {
        self.slots.values().map(|slot| &*slot.entry)
    }

    /// How many entries are in `state`.
    pub fn count(&self, state: IssueState) -> usize {
        if state == IssueState::Ready {
            return self.ready.len();
        }
        self.iter().filter(|entry| entry.state == state).count()
    }

    /// Adds a newly coordinated issue at `pending`.
    pub fn enqueue(
        &mut self,
        issue: IssueRef,
        created_at: DateTime<Utc>,
        labels: Vec<String>,
    ) -> Result<&QueueEntry, QueueError> {
        if let Some(existing) = self.slots.get(&issue) {
            return Err(QueueError::AlreadyQueued {
                issue,
                state: existing.entry.state,
            });
        }
        let rank = self.priorities.rank(&labels);
        let entry = QueueEntry {
            issue: issue.clone(),
            state: IssueState::Pending,
            created_at,
            labels,
            agent: None,
            attempts: 0,
        };
        let slot = self.slots.insert(
            issue,
            Slot {
                entry: Arc::new(entry),
                rank,
            },
        );
        Ok(&*slot.entry)
    }

    /// Removes an issue altogether (deleted in the tracker).
    pub fn remove(&mut self, issue: &IssueRef) -> Option<QueueEntry> {
        let slot = self.slots.remove(issue)?;
        if slot.entry.state == IssueState::Ready {
            self.ready.remove(&slot.key());
        }
        Some(Arc::unwrap_or_clone(slot.entry))
    }

    /// Moves `issue` to `to`; an arrow the state diagram lacks is an error and changes nothing.
    pub fn transition(
        &mut self,
        issue: &IssueRef,
        to: IssueState,
    ) -> Result<Transition, QueueError> {
        let slot = self
            .slots
            .get_mut(issue)
            .ok_or_else(|| QueueError::NotQueued(issue.clone()))?;
        let from = slot.entry.state;
        from.transition(to)
            .map_err(|source| QueueError::InvalidTransition {
                issue: issue.clone(),
                source,
            })?;
        if from == IssueState::Ready {
            self.ready.remove(&slot.key());
        }
        if to == IssueState::Ready {
            self.ready.insert(slot.key());
        }
        if to == IssueState::InProgress {
            let entry = Arc::make_mut(&mut slot.entry);
            entry.attempts = entry.attempts.saturating_add(1);
        }
        Arc::make_mut(&mut slot.entry).state = to;
        Ok(Transition {
            issue: issue.clone(),
            from,
            to,
        })
    }

    /// Records the issue's current labels (its priority may change).
    pub fn set_labels(&mut self, issue: &IssueRef, labels: Vec<String>) -> Result<(), QueueError> {
        let rank = self.priorities.rank(&labels);
        let slot = self
            .slots
            .get_mut(issue)
            .ok_or_else(|| QueueError::NotQueued(issue.clone()))?;
        let was_ready = slot.entry.state == IssueState::Ready;
        if was_ready {
            self.ready.remove(&slot.key());
        }
        slot.rank = rank;
        Arc::make_mut(&mut slot.entry).labels = labels;
        if was_ready {
            self.ready.insert(slot.key());
        }
        Ok(())
    }

    pub fn set_agent(&mut self, issue: &IssueRef, agent: Option<String>) -> Result<(), QueueError> {
        let slot = self
            .slots
            .get_mut(issue)
            .ok_or_else(|| QueueError::NotQueued(issue.clone()))?;
        Arc::make_mut(&mut slot.entry).agent = agent;
        Ok(())
    }

    /// Ready issues in dispatch order.
    pub fn ready_in_order(&self) -> impl Iterator<Item = IssueRef> + '_ {
        self.ready
            .iter()
            .map(|key| IssueRef::new(key.repo.clone(), key.number))
    }

    /// The ready issue to dispatch next.
    pub fn next_ready(&self) -> Option<IssueRef> {
        self.ready_in_order().next()
    }

    /// Puts a waiting issue (pending, blocked or ready) where the graph says it belongs:
    /// ready when the graph says so, blocked otherwise. Other states are left alone, so this
    /// is safe to call after any event; returns the transition made, if any.
    pub fn settle(
        &mut self,
        issue: &IssueRef,
        graph: &DependencyGraph,
    ) -> Result<Option<Transition>, QueueError> {
        let state = self
            .state(issue)
            .ok_or_else(|| QueueError::NotQueued(issue.clone()))?;
        let target = if graph.is_ready(issue) {
            IssueState::Ready
        } else {
            IssueState::Blocked
        };
        match state {
            IssueState::Pending | IssueState::Blocked | IssueState::Ready if state != target => {
                self.transition(issue, target).map(Some)
            }
            _ => Ok(None),
        }
    }

    /// Applies a graph change to waiting issues: newly ready blocked issues become ready,
    /// newly blocked ready issues become blocked. Pending issues wait for [`Self::settle`]
    /// (they are not yet admitted); issues not in the queue are ignored.
    pub fn apply_graph_change(&mut self, change: &GraphChange) -> Vec<Transition> {
        let mut transitions = Vec::new();
        let moves = change
            .newly_ready
            .iter()
            .map(|issue| (issue, IssueState::Blocked, IssueState::Ready))
            .chain(
                change
                    .newly_blocked
                    .iter()
                    .map(|issue| (issue, IssueState::Ready, IssueState::Blocked)),
            );
        for (issue, from, to) in moves {
            if self.state(issue) == Some(from)
                && let Ok(transition) = self.transition(issue, to)
            {
                transitions.push(transition);
            }
        }
        transitions
    }

    /// The queue's state, sorted by issue, for the store.
    pub fn snapshot(&self) -> QueueSnapshot {
        let mut entries: Vec<QueueEntry> = self.iter().cloned().collect();
        entries.sort_unstable_by(|a, b| a.issue.cmp(&b.issue));
        QueueSnapshot { entries }
    }

    /// Rebuilds a queue; priorities come from the current configuration, not the snapshot.
    pub fn from_snapshot(
        snapshot: QueueSnapshot,
        priorities: PriorityOrder,
    ) -> Result<Self, QueueError> {
        let mut queue = Self::new(priorities);
        queue.slots.reserve(snapshot.entries.len());
        for entry in snapshot.entries {
            let rank = queue.priorities.rank(&entry.labels);
            let slot = Slot {
                entry: Arc::new(entry),
                rank,
            };
            if slot.entry.state == IssueState::Ready {
                queue.ready.insert(slot.key());
            }
            let issue = slot.entry.issue.clone();
            if queue.slots.contains_key(&issue) {
                return Err(QueueError::DuplicateIssue(issue));
            }
            queue.slots.insert(issue, slot);
        }
        Ok(queue)
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;

    fn issue(text: &str) -> IssueRef {
        text.parse().unwrap()
    }

    fn at(minute: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 1, 1, 0, minute, 0).unwrap()
    }

    fn labels(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| (*s).to_owned()).collect()
    }

    fn ready_queue(rows: &[(&str, u32, &[&str])]) -> IssueQueue {
        let mut queue = IssueQueue::new(PriorityOrder::default());
        for (name, minute, names) in rows {
            queue
                .enqueue(issue(name), at(*minute), labels(names))
                .unwrap();
            queue.transition(&issue(name), IssueState::Ready).unwrap();
        }
        queue
    }

    fn order(queue: &IssueQueue) -> Vec<String> {
        queue.ready_in_order().map(|i| i.to_string()).collect()
    }

    #[test]
    fn ready_issues_order_by_priority_then_age_then_number() {
        let queue = ready_queue(&[
            ("o/r#1", 5, &["bug"]),
            ("o/r#2", 1, &["priority:low"]),
            ("o/r#3", 9, &["Priority:High"]),
            ("o/r#4", 3, &[]),
            ("o/r#5", 3, &["priority:medium"]),
            ("o/r#6", 3, &[]),
            ("a/b#6", 3, &[]),
            ("o/r#7", 0, &["priority:low", "priority:high"]),
        ]);
        assert_eq!(
            order(&queue),
            [
                "o/r#7", "o/r#3", "o/r#5", "o/r#4", "a/b#6", "o/r#6", "o/r#1", "o/r#2"
            ]
        );
        assert_eq!(queue.next_ready(), Some(issue("o/r#7")));
    }

    #[test]
    fn priority_is_configurable_and_validated() {
        let order = PriorityOrder::new(labels(&["urgent"]), labels(&["someday", "never"])).unwrap();
        let check = |names: &[&str], expect: u32| assert_eq!(order.rank(&labels(names)), expect);
        check(&["urgent"], 0);
        check(&[], 1);
        check(&["priority:high"], 1);
        check(&["someday"], 2);
        check(&["never", "someday"], 2);
        check(&[" URGENT "], 0);
        check(&["SomeDay"], 2);
        let accented = PriorityOrder::new(labels(&["Ñoño"]), Vec::new()).unwrap();
        assert_eq!(accented.rank(&labels(&["ÑOÑO"])), 0);
        assert_eq!(accented.rank(&labels(&["nono"])), 1);
        assert_eq!(
            PriorityOrder::new(labels(&["a"]), labels(&["A"])).unwrap_err(),
            PriorityError::DuplicateLabel("a".into())
        );
        assert_eq!(
            PriorityOrder::new(labels(&[" "]), vec![]).unwrap_err(),
            PriorityError::EmptyLabel
        );
        let json = serde_json::to_string(&PriorityOrder::default()).unwrap();
        assert_eq!(
            serde_json::from_str::<PriorityOrder>(&json).unwrap(),
            PriorityOrder::default()
        );
        assert!(
            serde_json::from_str::<PriorityOrder>(
                r#"{"above_unlabelled":["x"],"below_unlabelled":["x"]}"#
            )
            .is_err()
        );
    }

    #[test]
    fn transitions_are_explicit() {
        let mut queue = IssueQueue::new(PriorityOrder::default());
        let a = issue("o/r#1");
        queue.enqueue(a.clone(), at(0), vec![]).unwrap();
        assert!(matches!(
            queue.enqueue(a.clone(), at(0), vec![]),
            Err(QueueError::AlreadyQueued {
                state: IssueState::Pending,
                ..
            })
        ));
        let err = queue.transition(&a, IssueState::Completed).unwrap_err();
        assert_eq!(
            err.to_string(),
            "issue o/r#1: invalid transition from pending to completed"
        );
        assert_eq!(
            queue.state(&a),
            Some(IssueState::Pending),
            "a refused move changes nothing"
        );

        for to in [
            IssueState::Ready,
            IssueState::InProgress,
            IssueState::Pending,
        ] {
            queue.transition(&a, to).unwrap();
        }
        queue.transition(&a, IssueState::Ready).unwrap();
        queue.transition(&a, IssueState::InProgress).unwrap();
        assert_eq!(queue.get(&a).unwrap().attempts, 2);
        assert_eq!(queue.next_ready(), None);
        queue.transition(&a, IssueState::Completed).unwrap();
        assert!(queue.transition(&a, IssueState::Ready).is_err());
        // Reopened: back to pending.
        let t = queue.transition(&a, IssueState::Pending).unwrap();
        assert_eq!((t.from, t.to), (IssueState::Completed, IssueState::Pending));
        assert_eq!(
            queue
                .transition(&issue("o/r#9"), IssueState::Ready)
                .unwrap_err(),
            QueueError::NotQueued(issue("o/r#9"))
        );
    }

    #[test]
    fn label_changes_reorder_ready_issues() {
        let mut queue = ready_queue(&[("o/r#1", 0, &[]), ("o/r#2", 1, &[])]);
        assert_eq!(order(&queue), ["o/r#1", "o/r#2"]);
        queue
            .set_labels(&issue("o/r#2"), labels(&["priority:high"]))
            .unwrap();
        assert_eq!(order(&queue), ["o/r#2", "o/r#1"]);
        assert_eq!(queue.count(IssueState::Ready), 2);
        queue.remove(&issue("o/r#2"));
        assert_eq!(order(&queue), ["o/r#1"]);
    }

    #[test]
    fn settles_against_the_graph() {
        let mut graph = DependencyGraph::new();
        let (a, b) = (issue("o/r#1"), issue("o/r#2"));
        for i in [&a, &b] {
            graph.set_open(i, true).unwrap();
            graph.set_coordinated(i, true).unwrap();
        }
        graph.add_blocker(&b, &a).unwrap();
        let mut queue = IssueQueue::new(PriorityOrder::default());
        queue.enqueue(a.clone(), at(0), vec![]).unwrap();
        queue.enqueue(b.clone(), at(1), vec![]).unwrap();
        assert_eq!(
            queue.settle(&a, &graph).unwrap().map(|t| t.to),
            Some(IssueState::Ready)
        );
        assert_eq!(
            queue.settle(&b, &graph).unwrap().map(|t| t.to),
            Some(IssueState::Blocked)
        );
        assert_eq!(queue.settle(&b, &graph).unwrap(), None);

        queue.transition(&a, IssueState::InProgress).unwrap();
        queue.transition(&a, IssueState::Completed).unwrap();
        let change = graph.set_open(&a, false).unwrap();
        let moved = queue.apply_graph_change(&change);
        assert_eq!(moved.len(), 1);
        assert_eq!(
            (moved[0].issue.clone(), moved[0].to),
            (b.clone(), IssueState::Ready)
        );
        assert_eq!(
            queue.settle(&a, &graph).unwrap(),
            None,
            "completed stays completed"
        );
    }

    proptest::proptest! {
        #[test]
        fn ready_order_is_the_documented_sort(
            rows in proptest::collection::vec((0u64..3, 1u64..30, 0u32..5, 0usize..5), 0..40),
            relabel in proptest::collection::vec((1u64..30, 0usize..5), 0..10),
        ) {
            let names = ["priority:high", "priority:medium", "bug", "priority:low", "PRIORITY:HIGH"];
            let mut queue = IssueQueue::new(PriorityOrder::default());
            for (repo, number, minute, label) in &rows {
                let issue = issue(&format!("o/r{repo}#{number}"));
                if queue.enqueue(issue.clone(), at(*minute), labels(&[names[*label]])).is_ok() {
                    queue.transition(&issue, IssueState::Ready).unwrap();
                }
            }
            for (number, label) in &relabel {
                // Ignored when the issue is not queued: that is the error path.
                let _ = queue.set_labels(&issue(&format!("o/r0#{number}")), labels(&[names[*label]]));
            }
            let rank = |entry: &QueueEntry| match entry.labels[0].to_lowercase().as_str() {
                "priority:high" => 0,
                "priority:medium" => 1,
                "priority:low" => 3,
                _ => 2,
            };
            let mut expected: Vec<&QueueEntry> = queue.iter().collect();
            expected.sort_by(|a, b| {
                (rank(a), a.created_at, a.issue.number, &a.issue.repo)
                    .cmp(&(rank(b), b.created_at, b.issue.number, &b.issue.repo))
            });
            let expected: Vec<IssueRef> = expected.into_iter().map(|e| e.issue.clone()).collect();
            proptest::prop_assert_eq!(queue.ready_in_order().collect::<Vec<_>>(), expected);
        }
    }

    #[test]
    fn snapshot_round_trip_keeps_order_and_states() {
        let mut queue = ready_queue(&[
            ("o/r#1", 0, &["priority:low"]),
            ("o/r#2", 1, &[]),
            ("o/r#3", 2, &[]),
        ]);
        queue
            .transition(&issue("o/r#3"), IssueState::InProgress)
            .unwrap();
        queue
            .set_agent(&issue("o/r#3"), Some("glm".into()))
            .unwrap();
        let json = serde_json::to_string(&queue.snapshot()).unwrap();
        let snapshot: QueueSnapshot = serde_json::from_str(&json).unwrap();
        let rebuilt =
            IssueQueue::from_snapshot(snapshot.clone(), PriorityOrder::default()).unwrap();
        assert_eq!(rebuilt.snapshot(), queue.snapshot());
        assert_eq!(order(&rebuilt), order(&queue));
        assert_eq!(
            rebuilt.get(&issue("o/r#3")).unwrap().agent.as_deref(),
            Some("glm")
        );

        let mut duplicated = snapshot;
        duplicated.entries.push(duplicated.entries[0].clone());
        assert!(matches!(
            IssueQueue::from_snapshot(duplicated, PriorityOrder::default()),
            Err(QueueError::DuplicateIssue(_))
        ));
    }
}
