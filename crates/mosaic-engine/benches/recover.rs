//! Recovery at scale: `Engine::recover` over a store holding 100,000 coordinated issues and
//! 300,000 blocked-by edges (issue 4: rebuilding graph and queue from the store, ≤ 1 s on SQLite;
//! issue 17: ≤ 2 s on PostgreSQL), SQLite and PostgreSQL side by side in one run.
//!
//! `cargo bench -p mosaic-engine --bench recover`. Each store is filled once with the same data
//! through the public `Store` API and the backend's `upsert_issue_snapshot` (outside the timed
//! loop); with no open sessions recovery is repeatable on the same store, so every iteration (a
//! fresh engine, as at start-up) measures the same work: read everything, rebuild graph and
//! queue, find nothing to requeue or settle.
//!
//! PostgreSQL: `MOSAIC_TEST_POSTGRES_URL` (default
//! `postgres://mosaic:mosaic@127.0.0.1:5432/mosaic_test`), a fresh schema dropped at the end
//! (kept with `BENCH_KEEP_SCHEMA=1`, to `EXPLAIN` the recovery queries); when the server cannot be
//! reached the benchmark says so and measures SQLite only.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::collections::BTreeSet;
use std::hint::black_box;
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use chrono::{DateTime, TimeZone, Utc};
use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use mosaic_context::{AgentRuntime, AgentSession, RuntimeError, SessionTask};
use mosaic_domain::events::TrackerState;
use mosaic_domain::{
    AgentProfile, AgentProfiles, AssignmentPolicy, Difficulty, IssueMetadata, IssueRef, IssueState,
    MetadataSource, PriorityOrder,
};
use mosaic_engine::engine::{Engine, EngineConfig, EngineParts};
use mosaic_parser::{InMemoryParseCache, ParserConfig, ProviderKind, build_parser};
use mosaic_store::{
    IssueRecord, IssueSnapshot, StateTransition, Store, StoreConfig, Synchronous, TransitionBatch,
};
use mosaic_store_postgres::{PostgresOptions, PostgresStore};
use mosaic_store_sqlite::SqliteStore;
use tokio::runtime::Runtime;

const ISSUES: u64 = 100_000;
const EDGES: usize = 300_000;
const REPOS: u64 = 10;
/// Blockers are chosen among the previous issues within this distance (recent work).
const WINDOW: u64 = 5_000;
/// The oldest 70% of issues are completed and closed, as in a tracker with history.
const CLOSED_FRACTION: f64 = 0.7;
/// One edge in this many names an issue the coordinator does not coordinate.
const EXTERNAL_EVERY: u64 = 100;
/// Issues written per `commit_transitions` call while filling the store.
const FILL_BATCH: usize = 2_000;
/// `commit_transitions` calls in flight while filling: PostgreSQL runs each on a connection of
/// its own (one round trip per statement, so one batch at a time would take minutes); SQLite's
/// single writer takes them in turn.
const FILL_CONCURRENCY: usize = 8;
const DEFAULT_POSTGRES_URL: &str = "postgres://mosaic:mosaic@127.0.0.1:5432/mosaic_test";

/// The store being filled: the trait for everything but snapshots, which only the backends
/// write outside a delivery (their inherent `upsert_issue_snapshot`).
#[derive(Clone)]
enum Backend {
    Sqlite(Arc<SqliteStore>),
    Postgres(Arc<PostgresStore>),
}

impl Backend {
    fn store(&self) -> Arc<dyn Store> {
        match self {
            Self::Sqlite(store) => Arc::clone(store) as Arc<dyn Store>,
            Self::Postgres(store) => Arc::clone(store) as Arc<dyn Store>,
        }
    }

    async fn upsert_issue_snapshot(&self, snapshot: IssueSnapshot) {
        match self {
            Self::Sqlite(store) => store.upsert_issue_snapshot(snapshot).await.unwrap(),
            Self::Postgres(store) => store.upsert_issue_snapshot(snapshot).await.unwrap(),
        };
    }
}

/// Deterministic xorshift, so every run measures the same data.
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

/// A blocker in another repository, never coordinated; some have a snapshot, some not.
fn external(k: u64) -> IssueRef {
    format!("other/lib#{}", k + 1).parse().unwrap()
}

fn created(i: u64) -> DateTime<Utc> {
    Utc.timestamp_opt(1_700_000_000 + i as i64 * 60, 0).unwrap()
}

/// The usual mix: old work completed; the rest waiting, with some failed, rejected, cancelled.
fn state_of(i: u64, closed_below: u64) -> IssueState {
    if i < closed_below {
        return IssueState::Completed;
    }
    match i % 20 {
        0 => IssueState::Failed,
        1 => IssueState::Rejected,
        2 => IssueState::Cancelled,
        // Settled into ready or blocked by the first recovery (set-up), as a restart would.
        _ => IssueState::Pending,
    }
}

/// Blocked-by edges per dependent: each blocker an earlier issue within `WINDOW` (no cycles).
fn edges() -> Vec<BTreeSet<IssueRef>> {
    let mut blockers: Vec<BTreeSet<IssueRef>> = vec![BTreeSet::new(); ISSUES as usize];
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let mut count = 0;
    let mut i = 1;
    while count < EDGES {
        let dependent = 1 + (i % (ISSUES - 1));
        i += 1;
        let blocker = if i % EXTERNAL_EVERY == 0 {
            external(rng.next() % 1_000)
        } else {
            issue(dependent - (1 + rng.next() % dependent.min(WINDOW)))
        };
        if blockers[dependent as usize].insert(blocker) {
            count += 1;
        }
    }
    blockers
}

fn snapshot(issue: IssueRef, i: u64, open: bool) -> IssueSnapshot {
    let priorities = ["priority:high", "priority:medium", "bug", "priority:low"];
    IssueSnapshot {
        title: format!("Issue {issue}"),
        body: "## Context estimate\nEstimated tokens: 40000\nDifficulty: medium\n".to_owned(),
        labels: vec![
            priorities[(i % 4) as usize].to_owned(),
            "area:core".to_owned(),
        ],
        assignees: vec!["mosaic-bot".to_owned()],
        state: if open {
            TrackerState::Open
        } else {
            TrackerState::Closed
        },
        updated_at: created(i),
        html_url: Some(format!(
            "https://git.example/{}/issues/{}",
            issue.repo, issue.number
        )),
        comments: Some(0),
        issue,
    }
}

async fn fill(backend: &Backend) {
    let store = backend.store();
    let mut writes = tokio::task::JoinSet::new();
    let closed_below = (ISSUES as f64 * CLOSED_FRACTION) as u64;
    let blockers = edges();
    let mut batches = Vec::with_capacity(FILL_BATCH);
    for (i, blocked_by) in (0..ISSUES).zip(blockers) {
        let issue = issue(i);
        let state = state_of(i, closed_below);
        let blocked_by: Vec<IssueRef> = blocked_by.into_iter().collect();
        let mut record = IssueRecord::new(issue, state, created(i));
        record.metadata = Some(IssueMetadata {
            estimated_context: 40_000,
            difficulty: Difficulty::Medium,
            recommended_agent: None,
            blocks: Vec::new(),
            blocked_by: blocked_by.clone(),
            source: MetadataSource::Template,
            confidence: 0.9,
        });
        record.assigned_agent = Some("glm".to_owned());
        record.estimate = Some(40_000);
        record.queued_at = Some(created(i));
        record.attempts = u32::from(state == IssueState::Completed);
        batches.push(TransitionBatch {
            transition: Some(StateTransition {
                from: None,
                to: state,
                cause: "bench".to_owned(),
                at: created(i),
            }),
            blocked_by: Some(blocked_by),
            ..TransitionBatch::update(record)
        });
        if batches.len() == FILL_BATCH {
            // Batches name disjoint issues, so they commit in any order.
            let store = Arc::clone(&store);
            let batch = std::mem::take(&mut batches);
            writes.spawn(async move { store.commit_transitions(batch).await });
            if writes.len() >= FILL_CONCURRENCY {
                writes.join_next().await.unwrap().unwrap().unwrap();
            }
        }
    }
    if !batches.is_empty() {
        store.commit_transitions(batches).await.unwrap();
    }
    while let Some(done) = writes.join_next().await {
        done.unwrap().unwrap();
    }

    // Snapshots, many requests in flight so the writer commits them in groups.
    let snapshots = (0..ISSUES)
        .map(|i| snapshot(issue(i), i, i >= closed_below))
        // Half the external blockers are known to be closed; the rest were never seen.
        .chain(
            (0..1_000)
                .step_by(2)
                .map(|k| snapshot(external(k), k, false)),
        );
    let mut tasks = tokio::task::JoinSet::new();
    for snapshot in snapshots {
        let backend = backend.clone();
        tasks.spawn(async move { backend.upsert_issue_snapshot(snapshot).await });
        if tasks.len() >= 1_024 {
            tasks.join_next().await.unwrap().unwrap();
        }
    }
    while let Some(done) = tasks.join_next().await {
        done.unwrap();
    }
}

/// Recovery never spawns; a runtime that refuses proves it.
#[derive(Debug)]
struct RefusingRuntime;

#[async_trait]
impl AgentRuntime for RefusingRuntime {
    async fn spawn_with_id(
        &self,
        _id: mosaic_context::SessionId,
        profile: &AgentProfile,
        _task: &SessionTask,
    ) -> Result<Arc<dyn AgentSession>, RuntimeError> {
        Err(RuntimeError::Spawn {
            agent: profile.name.clone(),
            message: "the recovery benchmark starts no sessions".to_owned(),
        })
    }
    fn can_compact(&self, _profile: &AgentProfile) -> bool {
        false
    }
}

fn engine(store: Arc<dyn Store>) -> Engine {
    let profiles = AgentProfiles::defaults();
    let parser = build_parser(
        &ParserConfig {
            provider: Some(ProviderKind::Template),
            ..ParserConfig::default()
        },
        profiles.names(),
        Arc::new(InMemoryParseCache::new()),
    )
    .unwrap();
    Engine::new(EngineParts {
        store,
        parser,
        gitea: None,
        acts_for: "mosaic-bot".to_owned(),
        bot_login: "mosaic-bot".to_owned(),
        redactor: mosaic_security::Redactor::default(),
        profiles,
        policy: AssignmentPolicy::default(),
        priorities: PriorityOrder::default(),
        runtime: Arc::new(RefusingRuntime),
        config: EngineConfig::default(),
        workspaces: None,
    })
    .unwrap()
}

/// Fills `backend`, checks what a recovery finds, and times each store read recovery makes.
fn prepare(runtime: &Runtime, name: &str, backend: &Backend) -> Arc<dyn Store> {
    let started = Instant::now();
    runtime.block_on(fill(backend));
    let store = backend.store();
    let filled = started.elapsed();

    let engine = engine(Arc::clone(&store));
    let started = Instant::now();
    let first = runtime.block_on(engine.recover()).unwrap();
    let first_took = started.elapsed();
    let again = runtime.block_on(engine.recover()).unwrap();
    println!(
        "{name}: store filled in {filled:.1?}: {} issues, {} edges; first recovery settled {} waiting issues in {first_took:.1?}",
        again.issues, again.edges, first.settled
    );
    assert_eq!(again.issues as u64, ISSUES);
    assert_eq!(again.edges, EDGES);
    // Repeatable: nothing left to requeue or settle, so every iteration does the same work.
    assert_eq!(again.settled, 0);
    assert_eq!(again.interrupted_sessions, 0);
    assert!(again.requeued.is_empty());

    // Where the time goes: the store reads recovery makes, each alone.
    let time =
        |what: &str, started: Instant| println!("  {name} {what}: {:.1?}", started.elapsed());
    runtime.block_on(async {
        let started = Instant::now();
        let records = store.list_issues(&[]).await.unwrap();
        time("list_issues", started);
        let started = Instant::now();
        black_box(store.dependency_edges().await.unwrap());
        time("dependency_edges", started);
        let started = Instant::now();
        black_box(store.open_sessions().await.unwrap());
        time("open_sessions", started);
        let issues: Vec<IssueRef> = records.into_iter().map(|r| r.issue).collect();
        let started = Instant::now();
        black_box(store.issue_snapshot_summaries(issues).await.unwrap());
        time("issue_snapshot_summaries", started);
    });
    store
}

/// A PostgreSQL store in a fresh schema, or `None` (after saying why) when the server cannot
/// be reached.
fn postgres(runtime: &Runtime, url: &str, schema: &str) -> Option<Arc<PostgresStore>> {
    let options = PostgresOptions {
        pool_size: FILL_CONCURRENCY * 2,
        schema: Some(schema.to_owned()),
        ..PostgresOptions::default()
    };
    match runtime.block_on(PostgresStore::connect(url, options)) {
        Ok(store) => Some(Arc::new(store)),
        Err(error) => {
            println!(
                "PostgreSQL is not reachable at MOSAIC_TEST_POSTGRES_URL (default {DEFAULT_POSTGRES_URL}): {error}; measuring SQLite only (start it with `pg_ctlcluster 15 main start`)"
            );
            None
        }
    }
}

fn drop_schema(runtime: &Runtime, url: &str, schema: &str) {
    if std::env::var("BENCH_KEEP_SCHEMA").is_ok_and(|keep| keep == "1") {
        println!("kept PostgreSQL schema {schema}");
        return;
    }
    runtime.block_on(async {
        let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(connection);
        client
            .batch_execute(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
            .await
            .unwrap();
    });
}

fn bench(c: &mut Criterion) {
    let runtime = Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = StoreConfig {
        synchronous: Synchronous::Normal,
        ..StoreConfig::sqlite(dir.path().join("recover.db"))
    };
    let sqlite = Backend::Sqlite(Arc::new(SqliteStore::open(&config).unwrap()));
    let mut stores = vec![("sqlite", prepare(&runtime, "sqlite", &sqlite))];

    let url = std::env::var("MOSAIC_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| DEFAULT_POSTGRES_URL.to_owned());
    let schema = format!("mosaic_bench_{:016x}", rand::random::<u64>());
    let postgres = postgres(&runtime, &url, &schema);
    if let Some(store) = &postgres {
        let backend = Backend::Postgres(Arc::clone(store));
        stores.push(("postgres", prepare(&runtime, "postgres", &backend)));
    }

    let mut group = c.benchmark_group("recover");
    group.sample_size(10);
    // Both backends in one run, one after the other: this machine's speed drifts within minutes.
    for (name, store) in &stores {
        group.bench_function(
            format!("engine_recover_100k_issues_300k_edges/{name}"),
            |b| {
                // A fresh engine each time, as at start-up; the previous one is dropped untimed.
                b.iter_batched(
                    || self::engine(Arc::clone(store)),
                    |engine| {
                        black_box(runtime.block_on(engine.recover()).unwrap());
                        engine
                    },
                    BatchSize::PerIteration,
                );
            },
        );
    }
    group.finish();

    drop(stores);
    if let Some(store) = postgres {
        drop(store);
        drop_schema(&runtime, &url, &schema);
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
