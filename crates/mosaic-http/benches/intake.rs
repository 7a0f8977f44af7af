//! Load benchmark of webhook intake over real HTTP on loopback: durable on SQLite
//! (synchronous=FULL, group commit) and durable on PostgreSQL (`synchronous_commit = on`, a pool
//! of as many connections as the load has), against a bare route that only reads the body and
//! answers 200, all in one run.
//!
//! `cargo bench -p mosaic-http --bench intake` (env: `BENCH_SECONDS`, default 10;
//! `BENCH_CONNECTIONS`, default 32; `BENCH_ROUNDS`, default 1, to alternate the routes several
//! times and print the median ratio; `BENCH_SYNCHRONOUS=normal` to compare with the durable
//! default). Prints req/s, p50, p99 for each, the ratio to the bare route, and how the SQLite
//! store grouped commits. PostgreSQL: `MOSAIC_TEST_POSTGRES_URL` (default
//! `postgres://mosaic:mosaic@127.0.0.1:5432/mosaic_test`), a fresh schema dropped at the end;
//! when the server cannot be reached the benchmark says so and measures SQLite only.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::routing::post;
use mosaic_http::{AppState, Intake, router};
use mosaic_security::{Secret, WebhookVerifier, sign_hex};
use mosaic_store::Store;
use mosaic_store::{StoreConfig, Synchronous};
use mosaic_store_postgres::{PostgresOptions, PostgresStore};
use mosaic_store_sqlite::SqliteStore;
use tokio::net::TcpListener;

const SECRET: &str = "bench-secret";
const DEFAULT_POSTGRES_URL: &str = "postgres://mosaic:mosaic@127.0.0.1:5432/mosaic_test";
/// Numbers bodies and delivery ids across every load of the run: a body or id sent twice
/// would be a duplicate or a possible replay, a cheaper path than a new delivery.
static NEXT: AtomicU64 = AtomicU64::new(0);
const FIXTURE: &str = include_str!("../../../tests/fixtures/gitea/issue-assign-event.json");

struct Measurement {
    requests: u64,
    elapsed: Duration,
    p50: Duration,
    p99: Duration,
    errors: u64,
}

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn sign(body: &[u8]) -> String {
    sign_hex(&Secret::new(SECRET), body)
}

/// A distinct, validly signed body per request: the same event with another issue id.
fn body_for(n: u64) -> Vec<u8> {
    FIXTURE
        .replacen("\"id\": 1", &format!("\"id\": {}", 1_000_000 + n), 1)
        .into_bytes()
}

async fn spawn(app: Router) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    format!("http://{address}/webhook/gitea")
}

async fn load(url: &str, connections: u64, duration: Duration) -> Measurement {
    let errors = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let deadline = started + duration;
    let mut tasks = Vec::new();
    for _ in 0..connections {
        let url = url.to_owned();
        let errors = Arc::clone(&errors);
        tasks.push(tokio::spawn(async move {
            let client = reqwest::Client::builder()
                .pool_max_idle_per_host(1)
                .build()
                .unwrap();
            let mut latencies = Vec::new();
            while Instant::now() < deadline {
                let n = NEXT.fetch_add(1, Ordering::Relaxed);
                let body = body_for(n);
                let signature = sign(&body);
                let sent = Instant::now();
                let response = client
                    .post(&url)
                    .header("content-type", "application/json")
                    .header("x-gitea-event", "issues")
                    .header("x-gitea-event-type", "issue_assign")
                    .header("x-gitea-delivery", format!("bench-{n}"))
                    .header("x-gitea-signature", signature)
                    .body(body)
                    .send()
                    .await;
                match response {
                    Ok(r) if r.status() == 200 => {
                        let _ = r.bytes().await;
                        latencies.push(sent.elapsed());
                    }
                    _ => {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            latencies
        }));
    }
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await.unwrap());
    }
    let elapsed = started.elapsed();
    all.sort();
    let pick = |q: f64| {
        all.get(((all.len() as f64 * q) as usize).min(all.len().saturating_sub(1)))
            .copied()
            .unwrap_or_default()
    };
    Measurement {
        requests: all.len() as u64,
        elapsed,
        p50: pick(0.50),
        p99: pick(0.99),
        errors: errors.load(Ordering::Relaxed),
    }
}

fn report(name: &str, m: &Measurement) -> f64 {
    let rate = m.requests as f64 / m.elapsed.as_secs_f64();
    println!(
        "{name:<28} {rate:>9.0} req/s   p50 {:>7.2} ms   p99 {:>7.2} ms   ({} requests, {} errors)",
        m.p50.as_secs_f64() * 1000.0,
        m.p99.as_secs_f64() * 1000.0,
        m.requests,
        m.errors
    );
    rate
}

/// A router whose webhook route records into `store`.
fn durable_router(store: Arc<dyn Store>) -> Router {
    let verifier = WebhookVerifier::new(vec![Secret::new(SECRET.to_owned())]).unwrap();
    router(AppState::new("bench").with_intake(Intake {
        verifier,
        store,
        max_body_bytes: 1024 * 1024,
        notify: Arc::new(tokio::sync::Notify::new()),
    }))
}

/// A PostgreSQL store in `schema` (created), or `None` after saying why it cannot be reached.
async fn postgres(url: &str, schema: &str, pool_size: usize) -> Option<Arc<PostgresStore>> {
    let options = PostgresOptions {
        pool_size,
        schema: Some(schema.to_owned()),
        connect_timeout: Duration::from_secs(5),
        ..PostgresOptions::default()
    };
    match PostgresStore::connect(url, options).await {
        Ok(store) => Some(Arc::new(store)),
        Err(error) => {
            println!(
                "PostgreSQL is not reachable at MOSAIC_TEST_POSTGRES_URL (default {DEFAULT_POSTGRES_URL}): {error}; measuring SQLite only (start it with `pg_ctlcluster 15 main start`)"
            );
            None
        }
    }
}

async fn drop_schema(url: &str, schema: &str) {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    client
        .batch_execute(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
        .await
        .unwrap();
}

fn median(mut values: Vec<f64>) -> (f64, f64, f64) {
    values.sort_by(f64::total_cmp);
    (
        values[values.len() / 2],
        values[0],
        values[values.len() - 1],
    )
}

fn main() {
    let seconds = env_or("BENCH_SECONDS", 10);
    let connections = env_or("BENCH_CONNECTIONS", 32);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        // `BENCH_SYNCHRONOUS=normal` shows what the per-commit sync costs (the target is FULL).
        let synchronous = match std::env::var("BENCH_SYNCHRONOUS").as_deref() {
            Ok("normal") => Synchronous::Normal,
            _ => Synchronous::Full,
        };
        let defaults = StoreConfig::default();
        let config = StoreConfig {
            url: format!("sqlite://{}", dir.path().join("bench.db").display()),
            synchronous,
            group_window_us: env_or("BENCH_GROUP_WINDOW_US", defaults.group_window_us),
            checkpoint_interval_ms: env_or(
                "BENCH_CHECKPOINT_INTERVAL_MS",
                defaults.checkpoint_interval_ms,
            ),
            ..defaults
        };
        let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&config).unwrap());
        let durable = spawn(durable_router(Arc::clone(&store))).await;
        let bare =
            spawn(Router::new().route("/webhook/gitea", post(|_body: Bytes| async { "ok" }))).await;

        // PostgreSQL beside it: one pooled connection per load connection, so no request waits
        // for a connection.
        let postgres_url = std::env::var("MOSAIC_TEST_POSTGRES_URL")
            .unwrap_or_else(|_| DEFAULT_POSTGRES_URL.to_owned());
        let schema = format!("mosaic_bench_{}", uuid::Uuid::new_v4().simple());
        let postgres_store = postgres(&postgres_url, &schema, connections as usize).await;
        let postgres_route = match &postgres_store {
            Some(store) => Some(spawn(durable_router(Arc::clone(store) as Arc<dyn Store>)).await),
            None => None,
        };

        let rounds = env_or("BENCH_ROUNDS", 1).max(1);
        println!(
            "intake benchmark: {connections} connections, {seconds} s per route, {rounds} round(s), SQLite synchronous={synchronous:?}, PostgreSQL {}",
            if postgres_route.is_some() { "pool of one connection per load connection" } else { "not reachable" }
        );
        let duration = Duration::from_secs(seconds);
        // Warm every path so connection set-up is not measured.
        let _ = load(&bare, connections, Duration::from_millis(500)).await;
        let _ = load(&durable, connections, Duration::from_millis(500)).await;
        if let Some(route) = &postgres_route {
            let _ = load(route, connections, Duration::from_millis(500)).await;
        }
        // Each round measures the routes back to back: this machine's speed drifts by tens of
        // percent within minutes, so only figures from one round compare fairly.
        let mut ratios = Vec::new();
        let mut postgres_ratios = Vec::new();
        for round in 1..=rounds {
            if rounds > 1 {
                println!("round {round}:");
            }
            let bare_m = load(&bare, connections, duration).await;
            let before = store.stats();
            let durable_m = load(&durable, connections, duration).await;
            let after = store.stats();
            let postgres_m = match &postgres_route {
                Some(route) => Some(load(route, connections, duration).await),
                None => None,
            };
            let bare_rate = report("bare route (read + 200)", &bare_m);
            let durable_rate = report("durable intake, SQLite", &durable_m);
            let postgres_rate = postgres_m
                .as_ref()
                .map(|m| report("durable intake, PostgreSQL", m));
            let ratio = durable_rate / bare_rate;
            ratios.push(ratio);
            match postgres_rate {
                Some(rate) => {
                    postgres_ratios.push(rate / bare_rate);
                    println!(
                        "ratio to bare: SQLite {ratio:.2}, PostgreSQL {:.2}; PostgreSQL / SQLite {:.2}",
                        rate / bare_rate,
                        rate / durable_rate
                    );
                }
                None => println!("ratio durable / bare: {ratio:.2}"),
            }
            // How the writer grouped the durable run's requests: commits per second bound the
            // rate (one sync each), the group size shows how much concurrency each sync absorbed.
            let commits = after.commits - before.commits;
            let writes = after.writes - before.writes;
            println!(
                "SQLite writer: {commits} commits for {writes} writes, average group {:.1}, {:.0} commits/s",
                writes as f64 / commits.max(1) as f64,
                commits as f64 / durable_m.elapsed.as_secs_f64()
            );
        }
        if rounds > 1 {
            let (mid, low, high) = median(ratios);
            println!(
                "median ratio SQLite / bare over {rounds} rounds: {mid:.2} (from {low:.2} to {high:.2})"
            );
            if !postgres_ratios.is_empty() {
                let (mid, low, high) = median(postgres_ratios);
                println!(
                    "median ratio PostgreSQL / bare over {rounds} rounds: {mid:.2} (from {low:.2} to {high:.2})"
                );
            }
        }
        if let Some(store) = postgres_store {
            drop(store);
            drop_schema(&postgres_url, &schema).await;
        }
    });
}
