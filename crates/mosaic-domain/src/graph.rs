//! The dependency graph: which issues block which, and which are ready to run.
//!
//! Readiness is kept with a per-issue counter of open blockers, so every change costs
//! O(degree) and closing an issue finds exactly the issues it unblocks by looking at its
//! dependents only. Cycles never make an issue ready (each member keeps an open blocker);
//! they are additionally named, using a topological rank per issue that lets most edge
//! additions prove in O(1) that they close no cycle. Only a change that may create or break
//! a cycle among open issues recomputes the strongly connected components (O(V + E)).

use std::collections::HashSet;

use serde::{Deserialize, Serialize};

use crate::cow::{CowMap, CowVec};
use crate::issue::IssueRef;

type NodeId = u32;

type Edges = smallvec::SmallVec<[NodeId; 4]>;

#[derive(Debug, Clone)]
struct Node {
    issue: IssueRef,
    open: bool,
    /// The tracker has told us about this issue (unknown blockers count as open).
    known: bool,
    coordinated: bool,
    /// Issues this one is blocked by (inline up to four: copying the graph stays cheap).
    blockers: Edges,
    /// Issues blocked by this one.
    dependents: Edges,
    /// How many of `blockers` are open.
    open_blockers: u32,
    ready: bool,
    /// Position in a topological order of open issues: blockers rank lower than dependents
    /// unless they share a cycle.
    rank: i64,
    /// Index into `cycles` when this open issue is part of a cycle of open issues.
    cycle: Option<u32>,
}

impl Node {
    fn new(issue: IssueRef, rank: i64) -> Self {
        Self {
            issue,
            open: true,
            known: false,
            coordinated: false,
            blockers: Edges::new(),
            dependents: Edges::new(),
            open_blockers: 0,
            ready: false,
            rank,
            cycle: None,
        }
    }

    fn should_be_ready(&self) -> bool {
        self.open && self.coordinated && self.open_blockers == 0
    }
}

/// What a change did to readiness and cycles.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GraphChange {
    /// Issues that became ready, in no particular order.
    pub newly_ready: Vec<IssueRef>,
    /// Issues that were ready and no longer are.
    pub newly_blocked: Vec<IssueRef>,
    /// Cycles that exist after the change and did not before (members sorted).
    pub new_cycles: Vec<Vec<IssueRef>>,
}

impl GraphChange {
    pub fn is_empty(&self) -> bool {
        self.newly_ready.is_empty() && self.newly_blocked.is_empty() && self.new_cycles.is_empty()
    }
}

/// Where one issue stands in the graph.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Readiness {
    /// Open, coordinated, and every blocker closed.
    Ready,
    /// Closed in the tracker.
    Closed,
    /// Open but not (or no longer) coordinated.
    NotCoordinated,
    /// Part of a dependency cycle of open issues: it can never become ready on its own.
    BlockedByCycle(Vec<IssueRef>),
    /// Waiting for these open (or unknown) blockers.
    Blocked(Vec<IssueRef>),
    /// The graph has never heard of this issue.
    Unknown,
}

/// One issue in a [`GraphSnapshot`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeSnapshot {
    pub issue: IssueRef,
    pub open: bool,
    pub known: bool,
    pub coordinated: bool,
}

/// `issue` is blocked by `blocked_by`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct EdgeSnapshot {
    pub issue: IssueRef,
    pub blocked_by: IssueRef,
}

/// Everything needed to rebuild a [`DependencyGraph`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GraphSnapshot {
    pub nodes: Vec<NodeSnapshot>,
    pub edges: Vec<EdgeSnapshot>,
}

/// A snapshot that cannot be rebuilt.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GraphError {
    #[error("snapshot lists issue {0} more than once")]
    DuplicateIssue(IssueRef),
    #[error("the graph is full ({0} issues)")]
    TooManyIssues(usize),
}

/// Blocked-by relations between repository-qualified issues.
#[derive(Debug, Clone, Default)]
pub struct DependencyGraph {
    /// Copy-on-write storage: a copy of the graph (the engine computes each change on one)
    /// shares every piece it does not write to.
    nodes: CowVec<Node>,
    index: CowMap<IssueRef, NodeId>,
    ready: HashSet<NodeId, foldhash::fast::RandomState>,
    /// Members of each cycle of open issues (sorted); `Node::cycle` points here.
    cycles: Vec<Vec<NodeId>>,
    min_rank: i64,
    max_rank: i64,
}

impl DependencyGraph {
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of issues the graph knows, including blockers only referenced by others.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.len() == 0
    }

    pub fn contains(&self, issue: &IssueRef) -> bool {
        self.index.contains_key(issue)
    }

    fn id(&self, issue: &IssueRef) -> Option<NodeId> {
        self.index.get(issue).copied()
    }

    fn node(&self, id: NodeId) -> &Node {
        &self.nodes[id as usize]
    }

    fn node_mut(&mut self, id: NodeId) -> &mut Node {
        &mut self.nodes[id as usize]
    }

    /// The node for `issue`, created (open, unknown, uncoordinated) when missing. New nodes
    /// rank after everything, which keeps the order valid for a new issue's blockers.
    fn ensure(&mut self, issue: &IssueRef) -> Result<NodeId, GraphError> {
        if let Some(id) = self.id(issue) {
            return Ok(id);
        }
        let id = NodeId::try_from(self.nodes.len())
            .map_err(|_| GraphError::TooManyIssues(self.nodes.len()))?;
        self.max_rank += 1;
        self.nodes.push(Node::new(issue.clone(), self.max_rank));
        self.index.insert(issue.clone(), id);
        Ok(id)
    }

    /// Adds `issue` (open, not yet confirmed by the tracker, uncoordinated) if missing.
    /// Returns whether it was new.
    pub fn insert(&mut self, issue: &IssueRef) -> Result<bool, GraphError> {
        let before = self.nodes.len();
        self.ensure(issue)?;
        Ok(self.nodes.len() > before)
    }

    /// Brings `Node::ready` and the ready set in line with the counters, recording the flip.
    fn refresh(&mut self, id: NodeId, change: &mut GraphChange) {
        let node = &mut self.nodes[id as usize];
        let should = node.should_be_ready();
        if should == node.ready {
            return;
        }
        node.ready = should;
        if should {
            self.ready.insert(id);
            change.newly_ready.push(node.issue.clone());
        } else {
            self.ready.remove(&id);
            change.newly_blocked.push(node.issue.clone());
        }
    }

    /// Records what the tracker says about `issue`: open or closed. Unknown issues are added.
    pub fn set_open(&mut self, issue: &IssueRef, open: bool) -> Result<GraphChange, GraphError> {
        let id = self.ensure(issue)?;
        let mut change = GraphChange::default();
        let node = self.node_mut(id);
        node.known = true;
        if node.open == open {
            return Ok(change);
        }
        node.open = open;
        let dependents = std::mem::take(&mut node.dependents);
        for &dependent in &dependents {
            let counter = &mut self.node_mut(dependent).open_blockers;
            if open {
                *counter += 1;
            } else {
                *counter = counter.saturating_sub(1);
            }
            self.refresh(dependent, &mut change);
        }
        self.node_mut(id).dependents = dependents;
        self.refresh(id, &mut change);

        let node = self.node(id);
        let cycles_may_change = if open {
            // A reopened issue rejoins the order; it can close a cycle only when it both
            // waits on and blocks open issues.
            let has_open_blocker = node.open_blockers > 0;
            let blocks_open = node.dependents.iter().any(|&d| self.node(d).open);
            match (has_open_blocker, blocks_open) {
                (true, true) => true,
                (true, false) => {
                    self.max_rank += 1;
                    self.node_mut(id).rank = self.max_rank;
                    false
                }
                (false, _) => {
                    self.min_rank -= 1;
                    self.node_mut(id).rank = self.min_rank;
                    false
                }
            }
        } else {
            node.cycle.is_some()
        };
        if cycles_may_change {
            self.recompute_cycles(&mut change);
        }
        Ok(change)
    }

    /// Closes `issue` and returns exactly the issues that became ready because of it.
    pub fn close(&mut self, issue: &IssueRef) -> Result<Vec<IssueRef>, GraphError> {
        Ok(self.set_open(issue, false)?.newly_ready)
    }

    /// Marks whether the coordinator is responsible for `issue` (only coordinated issues are
    /// ever ready).
    pub fn set_coordinated(
        &mut self,
        issue: &IssueRef,
        coordinated: bool,
    ) -> Result<GraphChange, GraphError> {
        let id = self.ensure(issue)?;
        self.node_mut(id).coordinated = coordinated;
        let mut change = GraphChange::default();
        self.refresh(id, &mut change);
        Ok(change)
    }

    /// Records that `issue` is blocked by `blocker`. Adding an existing edge changes nothing.
    pub fn add_blocker(
        &mut self,
        issue: &IssueRef,
        blocker: &IssueRef,
    ) -> Result<GraphChange, GraphError> {
        let id = self.ensure(issue)?;
        let blocker_id = self.ensure(blocker)?;
        let mut change = GraphChange::default();
        if self.node(id).blockers.contains(&blocker_id) {
            return Ok(change);
        }
        self.node_mut(id).blockers.push(blocker_id);
        self.node_mut(blocker_id).dependents.push(id);
        let (blocker_open, blocker_rank) = {
            let b = self.node(blocker_id);
            (b.open, b.rank)
        };
        if blocker_open {
            self.node_mut(id).open_blockers += 1;
        }
        self.refresh(id, &mut change);
        // A cycle of open issues can only appear when both ends are open and the new edge
        // runs against the current order. Often one end can simply move: an issue with no
        // open blockers may go first, one blocking no open issue may go last.
        let node = self.node(id);
        if blocker_open && node.open && blocker_rank >= node.rank {
            if id != blocker_id && self.node(blocker_id).open_blockers == 0 {
                self.min_rank -= 1;
                self.node_mut(blocker_id).rank = self.min_rank;
            } else if id != blocker_id
                && !self.node(id).dependents.iter().any(|&d| self.node(d).open)
            {
                self.max_rank += 1;
                self.node_mut(id).rank = self.max_rank;
            } else {
                self.recompute_cycles(&mut change);
            }
        }
        Ok(change)
    }

    /// Removes the relation "`issue` is blocked by `blocker`" if present.
    pub fn remove_blocker(
        &mut self,
        issue: &IssueRef,
        blocker: &IssueRef,
    ) -> Result<GraphChange, GraphError> {
        let mut change = GraphChange::default();
        let (Some(id), Some(blocker_id)) = (self.id(issue), self.id(blocker)) else {
            return Ok(change);
        };
        let blockers = &mut self.node_mut(id).blockers;
        let Some(position) = blockers.iter().position(|&b| b == blocker_id) else {
            return Ok(change);
        };
        blockers.swap_remove(position);
        let dependents = &mut self.node_mut(blocker_id).dependents;
        if let Some(position) = dependents.iter().position(|&d| d == id) {
            dependents.swap_remove(position);
        }
        if self.node(blocker_id).open {
            let counter = &mut self.node_mut(id).open_blockers;
            *counter = counter.saturating_sub(1);
        }
        self.refresh(id, &mut change);
        let (a, b) = (self.node(id).cycle, self.node(blocker_id).cycle);
        if a.is_some() && a == b {
            self.recompute_cycles(&mut change);
        }
        Ok(change)
    }

    /// Replaces the blockers of `issue` with `blockers` (what the issue now declares).
    pub fn set_blockers(
        &mut self,
        issue: &IssueRef,
        blockers: &[IssueRef],
    ) -> Result<GraphChange, GraphError> {
        let id = self.ensure(issue)?;
        let wanted: HashSet<&IssueRef> = blockers.iter().collect();
        let stale: Vec<IssueRef> = self
            .node(id)
            .blockers
            .iter()
            .map(|&b| self.node(b).issue.clone())
            .filter(|b| !wanted.contains(b))
            .collect();
        let mut total = GraphChange::default();
        for blocker in &stale {
            merge(&mut total, self.remove_blocker(issue, blocker)?);
        }
        for blocker in blockers {
            merge(&mut total, self.add_blocker(issue, blocker)?);
        }
        Ok(total)
    }

    pub fn is_ready(&self, issue: &IssueRef) -> bool {
        self.id(issue).is_some_and(|id| self.node(id).ready)
    }

    /// Every ready issue, sorted (queue order is the queue's business).
    pub fn ready_set(&self) -> Vec<IssueRef> {
        let mut ready: Vec<IssueRef> = self
            .ready
            .iter()
            .map(|&id| self.node(id).issue.clone())
            .collect();
        ready.sort_unstable();
        ready
    }

    pub fn ready_count(&self) -> usize {
        self.ready.len()
    }

    pub fn is_open(&self, issue: &IssueRef) -> Option<bool> {
        self.id(issue).map(|id| self.node(id).open)
    }

    /// Whether the tracker has told us about `issue` (rather than it only being referenced).
    pub fn is_known(&self, issue: &IssueRef) -> bool {
        self.id(issue).is_some_and(|id| self.node(id).known)
    }

    /// What `issue` is blocked by, sorted.
    pub fn blockers(&self, issue: &IssueRef) -> Vec<IssueRef> {
        self.collect_sorted(issue, |node| &node.blockers, |_| true)
    }

    /// The blockers of `issue` still open (or never seen), sorted.
    pub fn open_blockers(&self, issue: &IssueRef) -> Vec<IssueRef> {
        self.collect_sorted(issue, |node| &node.blockers, |node| node.open)
    }

    /// The issues `issue` blocks, sorted.
    pub fn dependents(&self, issue: &IssueRef) -> Vec<IssueRef> {
        self.collect_sorted(issue, |node| &node.dependents, |_| true)
    }

    fn collect_sorted(
        &self,
        issue: &IssueRef,
        edges: impl Fn(&Node) -> &Edges,
        keep: impl Fn(&Node) -> bool,
    ) -> Vec<IssueRef> {
        let Some(id) = self.id(issue) else {
            return Vec::new();
        };
        let mut out: Vec<IssueRef> = edges(self.node(id))
            .iter()
            .map(|&other| self.node(other))
            .filter(|node| keep(node))
            .map(|node| node.issue.clone())
            .collect();
        out.sort_unstable();
        out
    }

    /// Every cycle of open issues, members sorted, cycles sorted by first member.
    pub fn cycles(&self) -> Vec<Vec<IssueRef>> {
        let mut cycles: Vec<Vec<IssueRef>> = (0..self.cycles.len())
            .map(|c| self.cycle_members(c))
            .collect();
        cycles.sort_unstable();
        cycles
    }

    fn cycle_members(&self, cycle: usize) -> Vec<IssueRef> {
        let mut members: Vec<IssueRef> = self.cycles[cycle]
            .iter()
            .map(|&id| self.node(id).issue.clone())
            .collect();
        members.sort_unstable();
        members
    }

    /// The cycle `issue` is part of, if any.
    pub fn cycle_of(&self, issue: &IssueRef) -> Option<Vec<IssueRef>> {
        let id = self.id(issue)?;
        self.node(id).cycle.map(|c| self.cycle_members(c as usize))
    }

    /// Where `issue` stands, with the reason when it is not ready.
    pub fn readiness(&self, issue: &IssueRef) -> Readiness {
        let Some(id) = self.id(issue) else {
            return Readiness::Unknown;
        };
        let node = self.node(id);
        if !node.open {
            Readiness::Closed
        } else if let Some(cycle) = node.cycle {
            Readiness::BlockedByCycle(self.cycle_members(cycle as usize))
        } else if node.open_blockers > 0 {
            Readiness::Blocked(self.open_blockers(issue))
        } else if !node.coordinated {
            Readiness::NotCoordinated
        } else {
            Readiness::Ready
        }
    }

    /// Recomputes cycles and ranks (Tarjan over open issues, iterative so deep chains cannot
    /// overflow the stack) and reports cycles that did not exist before.
    fn recompute_cycles(&mut self, change: &mut GraphChange) {
        let before: HashSet<Vec<IssueRef>> = (0..self.cycles.len())
            .map(|c| self.cycle_members(c))
            .collect();
        self.compute_cycles_and_ranks();
        for c in 0..self.cycles.len() {
            let members = self.cycle_members(c);
            if !before.contains(&members) {
                change.new_cycles.push(members);
            }
        }
        change.new_cycles.sort_unstable();
    }

    fn compute_cycles_and_ranks(&mut self) {
        const UNVISITED: u32 = u32::MAX;
        let count = self.nodes.len();
        let mut order = vec![UNVISITED; count];
        let mut low = vec![0u32; count];
        let mut on_stack = vec![false; count];
        let mut stack: Vec<NodeId> = Vec::new();
        // (node, next blocker position to look at)
        let mut calls: Vec<(NodeId, usize)> = Vec::new();
        let mut next_order = 0u32;
        let mut next_rank = 0i64;
        let mut cycles: Vec<Vec<NodeId>> = Vec::new();
        for node in self.nodes.iter_mut() {
            node.cycle = None;
        }

        for root in 0..count {
            if order[root] != UNVISITED || !self.nodes[root].open {
                continue;
            }
            calls.push((root as NodeId, 0));
            order[root] = next_order;
            low[root] = next_order;
            next_order += 1;
            stack.push(root as NodeId);
            on_stack[root] = true;

            while let Some(&(current, position)) = calls.last() {
                let current_index = current as usize;
                if let Some(&next) = self.nodes[current_index].blockers.get(position) {
                    if let Some(top) = calls.last_mut() {
                        top.1 += 1;
                    }
                    let next_index = next as usize;
                    if !self.nodes[next_index].open {
                        continue;
                    }
                    if order[next_index] == UNVISITED {
                        order[next_index] = next_order;
                        low[next_index] = next_order;
                        next_order += 1;
                        stack.push(next);
                        on_stack[next_index] = true;
                        calls.push((next, 0));
                    } else if on_stack[next_index] {
                        low[current_index] = low[current_index].min(order[next_index]);
                    }
                    continue;
                }
                calls.pop();
                if let Some(&(parent, _)) = calls.last() {
                    let parent_index = parent as usize;
                    low[parent_index] = low[parent_index].min(low[current_index]);
                }
                if low[current_index] == order[current_index] {
                    // Components complete blockers-first, so emission order is topological.
                    let mut component = Vec::new();
                    while let Some(member) = stack.pop() {
                        on_stack[member as usize] = false;
                        component.push(member);
                        if member == current {
                            break;
                        }
                    }
                    next_rank += 1;
                    let self_loop = component.len() == 1
                        && self.nodes[current_index].blockers.contains(&current);
                    let cycle = (component.len() > 1 || self_loop).then(|| {
                        component.sort_unstable();
                        cycles.len() as u32
                    });
                    for &member in &component {
                        let node = &mut self.nodes[member as usize];
                        node.rank = next_rank;
                        node.cycle = cycle;
                    }
                    if cycle.is_some() {
                        cycles.push(component);
                    }
                }
            }
        }
        // Closed issues keep a rank outside the open order; they get a fresh one on reopen.
        self.min_rank = 0;
        self.max_rank = next_rank;
        self.cycles = cycles;
    }

    /// The graph's state, for the store.
    pub fn snapshot(&self) -> GraphSnapshot {
        let nodes = self
            .nodes
            .iter()
            .map(|node| NodeSnapshot {
                issue: node.issue.clone(),
                open: node.open,
                known: node.known,
                coordinated: node.coordinated,
            })
            .collect();
        let edges = self
            .nodes
            .iter()
            .flat_map(|node| {
                node.blockers.iter().map(|&b| EdgeSnapshot {
                    issue: node.issue.clone(),
                    blocked_by: self.node(b).issue.clone(),
                })
            })
            .collect();
        GraphSnapshot { nodes, edges }
    }

    /// Rebuilds a graph in O(V + E): counters, ready set and cycles computed once.
    /// Edges may name issues the node list lacks (blockers never seen): they are added as
    /// open and unknown. Repeated edges count once.
    pub fn from_snapshot(snapshot: &GraphSnapshot) -> Result<Self, GraphError> {
        let mut graph = Self::new();
        graph.index.reserve(snapshot.nodes.len());
        for entry in &snapshot.nodes {
            if graph.contains(&entry.issue) {
                return Err(GraphError::DuplicateIssue(entry.issue.clone()));
            }
            let id = graph.ensure(&entry.issue)?;
            let node = graph.node_mut(id);
            node.open = entry.open;
            node.known = entry.known;
            node.coordinated = entry.coordinated;
        }
        for edge in &snapshot.edges {
            let id = graph.ensure(&edge.issue)?;
            let blocker = graph.ensure(&edge.blocked_by)?;
            graph.node_mut(id).blockers.push(blocker);
        }
        for id in 0..graph.nodes.len() {
            let blockers = &mut graph.nodes[id].blockers;
            blockers.sort_unstable();
            blockers.dedup();
            let blockers = std::mem::take(blockers);
            let mut open_blockers = 0;
            for &blocker in &blockers {
                let blocker_node = &mut graph.nodes[blocker as usize];
                blocker_node.dependents.push(id as NodeId);
                open_blockers += u32::from(blocker_node.open);
            }
            let node = &mut graph.nodes[id];
            node.blockers = blockers;
            node.open_blockers = open_blockers;
            node.ready = node.should_be_ready();
            if node.ready {
                graph.ready.insert(id as NodeId);
            }
        }
        graph.compute_cycles_and_ranks();
        Ok(graph)
    }
}

fn merge(total: &mut GraphChange, part: GraphChange) {
    // An issue that flipped twice within one compound change reports its final state only.
    for issue in part.newly_ready {
        if let Some(position) = total.newly_blocked.iter().position(|i| *i == issue) {
            total.newly_blocked.swap_remove(position);
        } else {
            total.newly_ready.push(issue);
        }
    }
    for issue in part.newly_blocked {
        if let Some(position) = total.newly_ready.iter().position(|i| *i == issue) {
            total.newly_ready.swap_remove(position);
        } else {
            total.newly_blocked.push(issue);
        }
    }
    total.new_cycles.extend(part.new_cycles);
}

#[cfg(test)]
mod tests;
