//! The outbox draining a backlog: 2,000 issues' worth of the writes the engine makes for an
//! issue from assignment to done (queued, in-progress and done status edits and state labels,
//! and the finished comment: 7 writes per issue), stored in a SQLite store and delivered to the
//! mock Gitea over real HTTP. Prints the drain time and the Gitea requests per issue, for each
//! concurrency and latency given; then the requests per issue when every state's writes are
//! delivered before the next state (nothing to supersede).
//!
//! `cargo run -p mosaic-engine --example outbox_drain [issues] [latencies_ms,…]
//! [concurrency,…]` (defaults: 2000, "0,5", "1,4").
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use mosaic_domain::{IssueRef, IssueState, RepoName};
use mosaic_engine::effects::GiteaWrite;
use mosaic_engine::outbox::{OutboxConfig, OutboxWorker};
use mosaic_gitea::mock::{MockGitea, NewIssue};
use mosaic_gitea::{GiteaClient, GiteaConfig};
use mosaic_store::{IssueRecord, Store, StoreConfig, TransitionBatch};
use mosaic_store_sqlite::SqliteStore;
use tokio::sync::Notify;

const STATE_LABELS: [&str; 7] = [
    "mosaic:queued",
    "mosaic:blocked",
    "mosaic:in-progress",
    "mosaic:done",
    "mosaic:no-changes",
    "mosaic:failed",
    "mosaic:rejected",
];

/// The writes of one state change, as the engine's `announce` makes them (plus the finished
/// comment when done).
fn step(state: &str, label: &str, done: bool) -> Vec<(String, GiteaWrite)> {
    let mut writes = Vec::new();
    if done {
        writes.push((
            "done-comment".to_owned(),
            GiteaWrite::comment("Finished: 12,000 tokens, $0.00.".into()),
        ));
    }
    writes.push((
        format!("{state}-status"),
        GiteaWrite::StatusComment {
            body: format!("**Mosaic:** {state}"),
            pull_request: None,
        },
    ));
    writes.push((
        format!("{state}-label"),
        GiteaWrite::StateLabel {
            add: Some(label.to_owned()),
            remove: STATE_LABELS
                .iter()
                .filter(|l| **l != label)
                .map(|l| (*l).to_owned())
                .collect(),
        },
    ));
    writes
}

fn steps() -> Vec<Vec<(String, GiteaWrite)>> {
    vec![
        step("ready", "mosaic:queued", false),
        step("in_progress", "mosaic:in-progress", false),
        step("completed", "mosaic:done", true),
    ]
}

async fn enqueue(store: &dyn Store, issues: &[IssueRef], writes: &[(String, GiteaWrite)]) {
    let batches = issues
        .iter()
        .map(|issue| {
            let mut batch = TransitionBatch::update(IssueRecord::new(
                issue.clone(),
                IssueState::Pending,
                Utc::now(),
            ));
            batch.outbox = writes
                .iter()
                .map(|(key, write)| {
                    write.to_outbox(issue, format!("{}-{key}", issue.number), Utc::now())
                })
                .collect();
            batch
        })
        .collect::<Vec<_>>();
    for chunk in batches.chunks(200) {
        store.commit_transitions(chunk.to_vec()).await.unwrap();
    }
}

async fn drain(worker: &OutboxWorker) {
    while worker.run_once().await.unwrap() > 0 {}
}

fn worker(store: &Arc<dyn Store>, client: &Arc<GiteaClient>, concurrency: u32) -> OutboxWorker {
    let config = OutboxConfig {
        batch: 500,
        max_concurrent_issues: concurrency,
        // A backlog's rows are old: nothing waits to coalesce. (The prompt case below delivers
        // each state before the next is queued, as when states are minutes apart.)
        coalesce_ms: 0,
        ..OutboxConfig::default()
    };
    OutboxWorker::new(
        Arc::clone(store),
        client.clone(),
        Arc::new(Notify::new()),
        config,
    )
    .with_bot_login(MockGitea::BOT_LOGIN)
}

struct Setup {
    _dir: tempfile::TempDir,
    store: Arc<dyn Store>,
    gitea: MockGitea,
    client: Arc<GiteaClient>,
    issues: Vec<IssueRef>,
}

async fn setup(count: usize) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> =
        Arc::new(SqliteStore::open(&StoreConfig::sqlite(dir.path().join("outbox.db"))).unwrap());
    let (gitea, url) = MockGitea::start().await.unwrap();
    let client =
        Arc::new(GiteaClient::new(&GiteaConfig::new(url, Some(gitea.bot_token()))).unwrap());
    let repo: RepoName = "acme/widgets".parse().unwrap();
    let issues = (0..count)
        .map(|n| {
            gitea.create_issue(
                &repo,
                NewIssue::titled(&format!("Task {n}")).assigned_to(MockGitea::BOT_LOGIN),
            )
        })
        .collect();
    Setup {
        _dir: dir,
        store,
        gitea,
        client,
        issues,
    }
}

fn requests_by_kind(gitea: &MockGitea) -> BTreeMap<String, usize> {
    let mut kinds = BTreeMap::new();
    for request in gitea.requests() {
        // `/api/v1/repos/acme/widgets/issues/17/comments` → `issues/{n}/comments`.
        let path = request
            .path
            .split('/')
            .skip(6)
            .map(|segment| {
                if segment.chars().all(|c| c.is_ascii_digit()) {
                    "{n}"
                } else {
                    segment
                }
            })
            .collect::<Vec<_>>()
            .join("/");
        *kinds
            .entry(format!("{} {path}", request.method))
            .or_default() += 1;
    }
    kinds
}

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let count: usize = args.next().map_or(2000, |a| a.parse().unwrap());
    let latencies: Vec<u64> = args
        .next()
        .unwrap_or_else(|| "0,5".into())
        .split(',')
        .map(|l| l.parse().unwrap())
        .collect();
    let concurrencies: Vec<u32> = args
        .next()
        .unwrap_or_else(|| "1,4".into())
        .split(',')
        .map(|c| c.parse().unwrap())
        .collect();

    println!("backlog: {count} issues x 7 writes, drained after all were queued");
    for latency in &latencies {
        for concurrency in &concurrencies {
            let s = setup(count).await;
            // The coordinator was running while the backlog built up.
            let worker = worker(&s.store, &s.client, *concurrency);
            for writes in steps() {
                enqueue(s.store.as_ref(), &s.issues, &writes).await;
            }
            s.gitea.set_latency(Duration::from_millis(*latency));
            s.gitea.clear_requests();
            let started = Instant::now();
            drain(&worker).await;
            let took = started.elapsed();
            let requests = s.gitea.requests().len();
            println!(
                "latency {latency} ms, concurrency {concurrency}: {:.1} s, {requests} requests ({:.2} per issue)",
                took.as_secs_f64(),
                requests as f64 / count as f64,
            );
            println!("  {:?}", requests_by_kind(&s.gitea));
        }
    }

    // After a restart: every comment row queued before the worker started is searched for
    // before it is posted (an earlier process may have posted it).
    let s = setup(count).await;
    for writes in steps() {
        enqueue(s.store.as_ref(), &s.issues, &writes).await;
    }
    s.gitea.clear_requests();
    let restarted = worker(&s.store, &s.client, 4);
    let started = Instant::now();
    drain(&restarted).await;
    let requests = s.gitea.requests().len();
    println!(
        "after a restart (latency 0 ms, concurrency 4): {:.1} s, {requests} requests ({:.2} per issue)",
        started.elapsed().as_secs_f64(),
        requests as f64 / count as f64,
    );
    println!("  {:?}", requests_by_kind(&s.gitea));

    // Each state's writes delivered before the next state: the worst case for superseding.
    let prompt = count.min(200);
    let s = setup(prompt).await;
    s.gitea.clear_requests();
    let worker = worker(&s.store, &s.client, 4);
    for writes in steps() {
        enqueue(s.store.as_ref(), &s.issues, &writes).await;
        drain(&worker).await;
    }
    let requests = s.gitea.requests().len();
    println!(
        "prompt delivery ({prompt} issues, each state delivered before the next): {requests} requests ({:.2} per issue)",
        requests as f64 / prompt as f64
    );
    println!("  {:?}", requests_by_kind(&s.gitea));
}
