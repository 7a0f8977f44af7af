use std::collections::BTreeSet;

use proptest::prelude::*;

use super::*;

fn issue(n: u64) -> IssueRef {
    format!("o/r#{n}").parse().unwrap()
}

fn issues(ns: &[u64]) -> Vec<IssueRef> {
    ns.iter().map(|&n| issue(n)).collect()
}

/// A coordinated, known, open issue.
fn add(graph: &mut DependencyGraph, n: u64) {
    graph.set_open(&issue(n), true).unwrap();
    graph.set_coordinated(&issue(n), true).unwrap();
}

#[test]
fn readiness_follows_blockers() {
    let mut graph = DependencyGraph::new();
    for n in 1..=4 {
        add(&mut graph, n);
    }
    // 3 is blocked by 1 and 2; 4 by 3.
    graph.add_blocker(&issue(3), &issue(1)).unwrap();
    graph.add_blocker(&issue(3), &issue(2)).unwrap();
    let change = graph.add_blocker(&issue(4), &issue(3)).unwrap();
    assert_eq!(change.newly_blocked, issues(&[4]));
    assert_eq!(graph.ready_set(), issues(&[1, 2]));
    assert_eq!(
        graph.readiness(&issue(3)),
        Readiness::Blocked(issues(&[1, 2]))
    );

    assert_eq!(graph.close(&issue(1)).unwrap(), Vec::<IssueRef>::new());
    assert_eq!(graph.close(&issue(2)).unwrap(), issues(&[3]));
    assert_eq!(graph.readiness(&issue(1)), Readiness::Closed);
    // Closing twice is not a change.
    assert_eq!(graph.close(&issue(2)).unwrap(), Vec::<IssueRef>::new());

    // Reopening a blocker blocks its dependents again.
    let change = graph.set_open(&issue(1), true).unwrap();
    assert_eq!(change.newly_ready, issues(&[1]));
    assert_eq!(change.newly_blocked, issues(&[3]));
    assert_eq!(graph.close(&issue(1)).unwrap(), issues(&[3]));
    assert_eq!(graph.close(&issue(3)).unwrap(), issues(&[4]));
}

#[test]
fn unknown_blockers_count_as_open_until_the_tracker_speaks() {
    let mut graph = DependencyGraph::new();
    add(&mut graph, 1);
    graph.add_blocker(&issue(1), &issue(99)).unwrap();
    assert!(!graph.is_ready(&issue(1)));
    assert!(!graph.is_known(&issue(99)));
    assert_eq!(graph.is_open(&issue(99)), Some(true));
    assert!(
        !graph.is_ready(&issue(99)),
        "never coordinated, never ready"
    );
    assert_eq!(graph.close(&issue(99)).unwrap(), issues(&[1]));
    assert!(graph.is_known(&issue(99)));
}

#[test]
fn only_coordinated_issues_are_ready() {
    let mut graph = DependencyGraph::new();
    graph.set_open(&issue(1), true).unwrap();
    assert_eq!(graph.readiness(&issue(1)), Readiness::NotCoordinated);
    let change = graph.set_coordinated(&issue(1), true).unwrap();
    assert_eq!(change.newly_ready, issues(&[1]));
    let change = graph.set_coordinated(&issue(1), false).unwrap();
    assert_eq!(change.newly_blocked, issues(&[1]));
    assert_eq!(graph.readiness(&issue(42)), Readiness::Unknown);
}

#[test]
fn cycles_are_named_and_never_ready() {
    let mut graph = DependencyGraph::new();
    for n in 1..=5 {
        add(&mut graph, n);
    }
    graph.add_blocker(&issue(2), &issue(1)).unwrap();
    graph.add_blocker(&issue(3), &issue(2)).unwrap();
    let change = graph.add_blocker(&issue(1), &issue(3)).unwrap();
    assert_eq!(change.new_cycles, vec![issues(&[1, 2, 3])]);
    assert_eq!(change.newly_blocked, issues(&[1]));
    // 4 waits on the cycle; it is blocked, not itself in the cycle.
    graph.add_blocker(&issue(4), &issue(2)).unwrap();
    for n in 1..=3 {
        assert_eq!(
            graph.readiness(&issue(n)),
            Readiness::BlockedByCycle(issues(&[1, 2, 3]))
        );
    }
    assert_eq!(graph.readiness(&issue(4)), Readiness::Blocked(issues(&[2])));
    assert_eq!(graph.ready_set(), issues(&[5]));
    assert_eq!(graph.cycles(), vec![issues(&[1, 2, 3])]);

    // Self-loops are cycles too.
    let change = graph.add_blocker(&issue(5), &issue(5)).unwrap();
    assert_eq!(change.new_cycles, vec![issues(&[5])]);
    assert!(graph.ready_set().is_empty());
    graph.remove_blocker(&issue(5), &issue(5)).unwrap();
    assert_eq!(graph.cycle_of(&issue(5)), None);

    // Breaking the cycle by removing an edge.
    let change = graph.remove_blocker(&issue(1), &issue(3)).unwrap();
    assert_eq!(change.newly_ready, issues(&[1]));
    assert!(graph.cycles().is_empty());

    // Closing a member breaks a cycle as well.
    graph.add_blocker(&issue(1), &issue(3)).unwrap();
    assert_eq!(graph.cycles().len(), 1);
    assert_eq!(graph.close(&issue(2)).unwrap(), issues(&[3, 4]));
    assert!(graph.cycles().is_empty());
    // … and reopening it restores the cycle.
    let change = graph.set_open(&issue(2), true).unwrap();
    assert_eq!(change.new_cycles, vec![issues(&[1, 2, 3])]);
}

#[test]
fn set_blockers_replaces_the_declared_set() {
    let mut graph = DependencyGraph::new();
    for n in 1..=4 {
        add(&mut graph, n);
    }
    graph.set_blockers(&issue(4), &issues(&[1, 2])).unwrap();
    assert_eq!(graph.blockers(&issue(4)), issues(&[1, 2]));
    assert_eq!(graph.dependents(&issue(1)), issues(&[4]));
    graph.close(&issue(1)).unwrap();
    let change = graph.set_blockers(&issue(4), &issues(&[1])).unwrap();
    assert_eq!(change.newly_ready, issues(&[4]));
    assert_eq!(graph.open_blockers(&issue(4)), Vec::<IssueRef>::new());
    // Re-declaring the same set changes nothing.
    assert!(
        graph
            .set_blockers(&issue(4), &issues(&[1]))
            .unwrap()
            .is_empty()
    );
}

#[test]
fn snapshot_round_trip() {
    let mut graph = DependencyGraph::new();
    for n in 1..=4 {
        add(&mut graph, n);
    }
    graph.add_blocker(&issue(2), &issue(1)).unwrap();
    graph.add_blocker(&issue(1), &issue(2)).unwrap();
    graph.add_blocker(&issue(3), &issue(77)).unwrap();
    graph.close(&issue(4)).unwrap();
    let snapshot = graph.snapshot();
    let json = serde_json::to_string(&snapshot).unwrap();
    let back: GraphSnapshot = serde_json::from_str(&json).unwrap();
    let rebuilt = DependencyGraph::from_snapshot(&back).unwrap();
    assert_eq!(observe(&rebuilt), observe(&graph));
    assert!(!rebuilt.is_known(&issue(77)));

    let mut duplicate = snapshot;
    duplicate.nodes.push(duplicate.nodes[0].clone());
    assert_eq!(
        DependencyGraph::from_snapshot(&duplicate).unwrap_err(),
        GraphError::DuplicateIssue(issue(1))
    );
}

/// Everything observable about a graph, in a comparable form.
#[derive(Debug, PartialEq, Eq)]
struct Observed {
    ready: Vec<IssueRef>,
    readiness: Vec<(IssueRef, Readiness, bool, bool)>,
    edges: BTreeSet<(IssueRef, IssueRef)>,
    cycles: Vec<Vec<IssueRef>>,
}

fn observe(graph: &DependencyGraph) -> Observed {
    let snapshot = graph.snapshot();
    let mut readiness: Vec<_> = snapshot
        .nodes
        .iter()
        .map(|n| {
            (
                n.issue.clone(),
                graph.readiness(&n.issue),
                n.known,
                n.coordinated,
            )
        })
        .collect();
    readiness.sort_by(|a, b| a.0.cmp(&b.0));
    Observed {
        ready: graph.ready_set(),
        readiness,
        edges: snapshot
            .edges
            .into_iter()
            .map(|e| (e.issue, e.blocked_by))
            .collect(),
        cycles: graph.cycles(),
    }
}

#[derive(Debug, Clone)]
enum Op {
    AddEdge(u64, u64),
    RemoveEdge(u64, u64),
    SetOpen(u64, bool),
    Coordinate(u64, bool),
}

const SMALL: u64 = 8;

fn op() -> impl Strategy<Value = Op> {
    let n = || 1..=SMALL;
    prop_oneof![
        4 => (n(), n()).prop_map(|(a, b)| Op::AddEdge(a, b)),
        2 => (n(), n()).prop_map(|(a, b)| Op::RemoveEdge(a, b)),
        2 => (n(), any::<bool>()).prop_map(|(a, open)| Op::SetOpen(a, open)),
        1 => (n(), any::<bool>()).prop_map(|(a, c)| Op::Coordinate(a, c)),
    ]
}

fn apply(graph: &mut DependencyGraph, op: &Op) -> GraphChange {
    match *op {
        Op::AddEdge(a, b) => graph.add_blocker(&issue(a), &issue(b)),
        Op::RemoveEdge(a, b) => graph.remove_blocker(&issue(a), &issue(b)),
        Op::SetOpen(a, open) => graph.set_open(&issue(a), open),
        Op::Coordinate(a, c) => graph.set_coordinated(&issue(a), c),
    }
    .unwrap()
}

/// Brute force: the sets of open issues that reach each other through blocked-by edges
/// between open issues (including self-loops).
fn brute_force_cycles(graph: &DependencyGraph) -> Vec<Vec<IssueRef>> {
    let snapshot = graph.snapshot();
    let open: BTreeSet<IssueRef> = snapshot
        .nodes
        .iter()
        .filter(|n| n.open)
        .map(|n| n.issue.clone())
        .collect();
    let edges: Vec<(IssueRef, IssueRef)> = snapshot
        .edges
        .iter()
        .filter(|e| open.contains(&e.issue) && open.contains(&e.blocked_by))
        .map(|e| (e.issue.clone(), e.blocked_by.clone()))
        .collect();
    let reach = |from: &IssueRef| -> BTreeSet<IssueRef> {
        let mut seen = BTreeSet::new();
        let mut todo = vec![from.clone()];
        while let Some(current) = todo.pop() {
            for (a, b) in &edges {
                if *a == current && seen.insert(b.clone()) {
                    todo.push(b.clone());
                }
            }
        }
        seen
    };
    let mut cycles: BTreeSet<Vec<IssueRef>> = BTreeSet::new();
    for v in &open {
        let from_v = reach(v);
        if from_v.contains(v) {
            let members: Vec<IssueRef> = open
                .iter()
                .filter(|u| from_v.contains(*u) && reach(u).contains(v))
                .cloned()
                .collect();
            cycles.insert(members);
        }
    }
    cycles.into_iter().collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn ready_set_never_has_an_open_blocker(ops in prop::collection::vec(op(), 0..60)) {
        let mut graph = DependencyGraph::new();
        for op in &ops {
            apply(&mut graph, op);
        }
        for ready in graph.ready_set() {
            prop_assert!(graph.open_blockers(&ready).is_empty(), "{ready} has open blockers");
            prop_assert_eq!(graph.is_open(&ready), Some(true));
            prop_assert!(graph.cycle_of(&ready).is_none());
        }
        // And every open, coordinated issue without open blockers is in it.
        for node in graph.snapshot().nodes {
            let should = node.open && node.coordinated && graph.open_blockers(&node.issue).is_empty();
            prop_assert_eq!(graph.is_ready(&node.issue), should, "{}", node.issue);
        }
    }

    #[test]
    fn changes_report_exactly_the_flips(ops in prop::collection::vec(op(), 0..60)) {
        let mut graph = DependencyGraph::new();
        for op in &ops {
            let before: BTreeSet<IssueRef> = graph.ready_set().into_iter().collect();
            let change = apply(&mut graph, op);
            let after: BTreeSet<IssueRef> = graph.ready_set().into_iter().collect();
            let gained: BTreeSet<IssueRef> = after.difference(&before).cloned().collect();
            let lost: BTreeSet<IssueRef> = before.difference(&after).cloned().collect();
            prop_assert_eq!(change.newly_ready.iter().cloned().collect::<BTreeSet<_>>(), gained);
            prop_assert_eq!(change.newly_blocked.iter().cloned().collect::<BTreeSet<_>>(), lost);
            prop_assert_eq!(change.newly_ready.len() + change.newly_blocked.len(),
                after.symmetric_difference(&before).count(), "no duplicates");
        }
    }

    #[test]
    fn adding_then_removing_an_edge_restores_the_state(
        ops in prop::collection::vec(op(), 0..40),
        a in 1..=SMALL,
        b in 1..=SMALL,
    ) {
        let mut graph = DependencyGraph::new();
        for op in &ops {
            apply(&mut graph, op);
        }
        // Both ends exist first, so the comparison is about edges, not node creation.
        graph.insert(&issue(a)).unwrap();
        graph.insert(&issue(b)).unwrap();
        let had_edge = graph.blockers(&issue(a)).contains(&issue(b));
        prop_assume!(!had_edge);
        let before = observe(&graph);
        graph.add_blocker(&issue(a), &issue(b)).unwrap();
        graph.remove_blocker(&issue(a), &issue(b)).unwrap();
        prop_assert_eq!(observe(&graph), before);
    }

    #[test]
    fn cycle_detection_agrees_with_brute_force(ops in prop::collection::vec(op(), 0..60)) {
        let mut graph = DependencyGraph::new();
        for op in &ops {
            apply(&mut graph, op);
            prop_assert_eq!(graph.cycles(), brute_force_cycles(&graph), "after {:?}", op);
        }
    }

    #[test]
    fn incremental_state_equals_a_rebuild(ops in prop::collection::vec(op(), 0..60)) {
        let mut graph = DependencyGraph::new();
        for op in &ops {
            apply(&mut graph, op);
        }
        let rebuilt = DependencyGraph::from_snapshot(&graph.snapshot()).unwrap();
        prop_assert_eq!(observe(&rebuilt), observe(&graph));
    }
}

#[test]
fn a_change_on_a_copy_leaves_the_original_as_it_was() {
    // More issues than one storage chunk, so copies share some pieces and not others.
    let mut graph = DependencyGraph::new();
    for n in 1..=600 {
        add(&mut graph, n);
    }
    for n in 2..=600 {
        graph.add_blocker(&issue(n), &issue(n - 1)).unwrap();
    }
    let before = graph.snapshot();
    let mut copy = graph.clone();
    assert_eq!(copy.close(&issue(1)).unwrap(), issues(&[2]));
    copy.add_blocker(&issue(599), &issue(3)).unwrap();
    copy.set_coordinated(&issue(700), true).unwrap();
    copy.add_blocker(&issue(1), &issue(600)).unwrap();
    assert_eq!(graph.snapshot(), before);
    assert_eq!(graph.ready_set(), issues(&[1]));
    assert!(!graph.contains(&issue(700)) && copy.contains(&issue(700)));
    assert_eq!(copy.ready_set(), issues(&[2, 700]));
}
