//! Dependency graph and queue at scale: 100,000 issues, 300,000 blocked-by edges.
//!
//! `cargo bench -p mosaic-domain --bench graph`. Targets (issue 4): closing one issue and
//! getting the newly ready set, median ≤ 20 µs; rebuilding graph and queue from a snapshot,
//! ≤ 1 s.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::hint::black_box;
use std::time::{Duration, Instant};

use chrono::{DateTime, TimeZone, Utc};
use criterion::{Criterion, criterion_group, criterion_main};
use mosaic_domain::graph::{EdgeSnapshot, NodeSnapshot};
use mosaic_domain::{
    DependencyGraph, GraphSnapshot, IssueQueue, IssueRef, IssueState, PriorityOrder, QueueEntry,
    QueueSnapshot,
};

const ISSUES: u64 = 100_000;
const EDGES: usize = 300_000;
const REPOS: u64 = 10;
/// Blockers are chosen among the previous issues within this distance (recent work).
const WINDOW: u64 = 5_000;
/// The oldest 70% of issues are closed, as in a tracker with history.
const CLOSED_FRACTION: f64 = 0.7;

/// Deterministic xorshift, so every run measures the same graph.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

fn issue(i: u64) -> IssueRef {
    format!("org/repo{}#{}", i % REPOS, i / REPOS + 1)
        .parse()
        .unwrap()
}

fn created(i: u64) -> DateTime<Utc> {
    Utc.timestamp_opt(1_700_000_000 + i as i64 * 60, 0).unwrap()
}

fn snapshots() -> (GraphSnapshot, QueueSnapshot) {
    let refs: Vec<IssueRef> = (0..ISSUES).map(issue).collect();
    let closed_below = (ISSUES as f64 * CLOSED_FRACTION) as u64;
    let nodes = (0..ISSUES)
        .map(|i| NodeSnapshot {
            issue: refs[i as usize].clone(),
            open: i >= closed_below,
            known: true,
            coordinated: true,
        })
        .collect();
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let mut edges = Vec::with_capacity(EDGES);
    let mut i = 1;
    while edges.len() < EDGES {
        let dependent = 1 + (i % (ISSUES - 1));
        i += 1;
        let back = 1 + rng.next() % dependent.min(WINDOW);
        edges.push(EdgeSnapshot {
            issue: refs[dependent as usize].clone(),
            blocked_by: refs[(dependent - back) as usize].clone(),
        });
    }
    let graph = GraphSnapshot { nodes, edges };
    let built = DependencyGraph::from_snapshot(&graph).unwrap();
    let priorities = ["priority:high", "priority:medium", "bug", "priority:low"];
    let entries = (closed_below..ISSUES)
        .map(|i| {
            let issue = refs[i as usize].clone();
            let state = if built.is_ready(&issue) {
                IssueState::Ready
            } else {
                IssueState::Blocked
            };
            QueueEntry {
                labels: vec![priorities[(i % 4) as usize].to_owned()],
                issue,
                state,
                created_at: created(i),
                agent: None,
                attempts: 0,
            }
        })
        .collect();
    (graph, QueueSnapshot { entries })
}

fn rebuild(graph: &GraphSnapshot, queue: &QueueSnapshot) -> (DependencyGraph, IssueQueue) {
    (
        DependencyGraph::from_snapshot(graph).unwrap(),
        IssueQueue::from_snapshot(queue.clone(), PriorityOrder::default()).unwrap(),
    )
}

fn bench(c: &mut Criterion) {
    let (graph_snapshot, queue_snapshot) = snapshots();
    let (mut graph, _queue) = rebuild(&graph_snapshot, &queue_snapshot);
    assert_eq!(graph.len() as u64, ISSUES);
    assert_eq!(graph_snapshot.edges.len(), EDGES);

    // Ready issues with the most dependents: closing them unblocks the most work.
    let mut ready = graph.ready_set();
    ready.sort_by_key(|issue| std::cmp::Reverse(graph.dependents(issue).len()));
    ready.truncate(64);
    let unblocked: Vec<usize> = ready
        .iter()
        .map(|issue| {
            let newly = graph.close(issue).unwrap().len();
            graph.set_open(issue, true).unwrap();
            newly
        })
        .collect();
    println!(
        "graph: {} issues, {} edges, {} ready, {} cycles; closing a benchmarked issue unblocks {}..={} issues ({} dependents max)",
        graph.len(),
        graph_snapshot.edges.len(),
        graph.ready_count(),
        graph.cycles().len(),
        unblocked.iter().min().unwrap(),
        unblocked.iter().max().unwrap(),
        graph.dependents(&ready[0]).len(),
    );

    c.bench_function("graph/close_one_issue_newly_ready", |b| {
        // Each iteration closes one ready issue (timed) and reopens it (not timed), so every
        // sample sees the same graph.
        b.iter_custom(|iterations| {
            let mut total = Duration::ZERO;
            for n in 0..iterations {
                let issue = &ready[n as usize % ready.len()];
                let start = Instant::now();
                let newly_ready = graph.close(black_box(issue)).unwrap();
                total += start.elapsed();
                black_box(newly_ready);
                graph.set_open(issue, true).unwrap();
            }
            total
        });
    });

    // The slow path: an edge that closes a cycle (an issue made to wait on its own
    // dependent) forces a full cycle recomputation, O(V + E); removing it does again.
    let older = (0..ISSUES)
        .rev()
        .map(issue)
        .find(|i| {
            graph.is_open(i) == Some(true)
                && !graph.open_blockers(i).is_empty()
                && !graph.dependents(i).is_empty()
        })
        .unwrap();
    let newer = graph.dependents(&older)[0].clone();
    let (older, newer) = (&older, &newer);
    assert_eq!(graph.add_blocker(older, newer).unwrap().new_cycles.len(), 1);
    graph.remove_blocker(older, newer).unwrap();
    c.bench_function("graph/add_edge_forcing_cycle_recompute", |b| {
        b.iter_custom(|iterations| {
            let mut total = Duration::ZERO;
            for _ in 0..iterations {
                let start = Instant::now();
                let change = graph
                    .add_blocker(black_box(older), black_box(newer))
                    .unwrap();
                total += start.elapsed();
                black_box(change);
                graph.remove_blocker(older, newer).unwrap();
            }
            total
        });
    });

    let mut group = c.benchmark_group("rebuild");
    group.sample_size(10);
    group.bench_function("graph_and_queue_from_snapshot", |b| {
        b.iter(|| {
            black_box(rebuild(
                black_box(&graph_snapshot),
                black_box(&queue_snapshot),
            ))
        });
    });
    // What the engine pays per change today: it computes each change on a copy of graph and
    // queue and installs the copy after the commit.
    let (graph, queue) = rebuild(&graph_snapshot, &queue_snapshot);
    group.bench_function("clone_graph_and_queue", |b| {
        b.iter(|| black_box((graph.clone(), queue.clone())));
    });
    let graph_json = serde_json::to_vec(&graph_snapshot).unwrap();
    let queue_json = serde_json::to_vec(&queue_snapshot).unwrap();
    group.bench_function("graph_and_queue_from_json", |b| {
        b.iter(|| {
            let graph: GraphSnapshot = serde_json::from_slice(black_box(&graph_json)).unwrap();
            let queue: QueueSnapshot = serde_json::from_slice(black_box(&queue_json)).unwrap();
            black_box(rebuild(&graph, &queue))
        });
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
