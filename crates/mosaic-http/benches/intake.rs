//! Load benchmark of webhook intake: durable (SQLite, synchronous=FULL, group commit) against a
//! bare route that only reads the body and answers 200, over real HTTP on loopback.
//!
//! `cargo bench -p mosaic-http --bench intake` (env: `BENCH_SECONDS`, default 10;
//! `BENCH_CONNECTIONS`, default 32; `BENCH_ROUNDS`, default 1, to alternate both routes several
//! times and print the median ratio; `BENCH_SYNCHRONOUS=normal` to compare with the durable
//! default). Prints req/s, p50, p99 for both, their ratio, and how the store grouped commits.
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
use mosaic_store_sqlite::SqliteStore;
use tokio::net::TcpListener;

const SECRET: &str = "bench-secret";
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
    let counter = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let deadline = started + duration;
    let mut tasks = Vec::new();
    for _ in 0..connections {
        let url = url.to_owned();
        let counter = Arc::clone(&counter);
        let errors = Arc::clone(&errors);
        tasks.push(tokio::spawn(async move {
            let client = reqwest::Client::builder()
                .pool_max_idle_per_host(1)
                .build()
                .unwrap();
            let mut latencies = Vec::new();
            while Instant::now() < deadline {
                let n = counter.fetch_add(1, Ordering::Relaxed);
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
        let verifier = WebhookVerifier::new(vec![Secret::new(SECRET.to_owned())]).unwrap();
        let state = AppState::new("bench").with_intake(Intake {
            verifier,
            store: Arc::clone(&store),
            max_body_bytes: 1024 * 1024,
            notify: Arc::new(tokio::sync::Notify::new()),
        });
        let durable = spawn(router(state)).await;
        let bare =
            spawn(Router::new().route("/webhook/gitea", post(|_body: Bytes| async { "ok" }))).await;

        let rounds = env_or("BENCH_ROUNDS", 1).max(1);
        println!(
            "intake benchmark: {connections} connections, {seconds} s per route, {rounds} round(s), synchronous={synchronous:?}"
        );
        let duration = Duration::from_secs(seconds);
        // Warm both paths so connection set-up is not measured.
        let _ = load(&bare, connections, Duration::from_millis(500)).await;
        // Each round measures both routes back to back: this machine's speed drifts by tens of
        // percent within minutes, so only a ratio from one round is a fair comparison.
        let mut ratios = Vec::new();
        for round in 1..=rounds {
            if rounds > 1 {
                println!("round {round}:");
            }
            let bare_m = load(&bare, connections, duration).await;
            let before = store.stats();
            let durable_m = load(&durable, connections, duration).await;
            let after = store.stats();
            let bare_rate = report("bare route (read + 200)", &bare_m);
            let durable_rate = report("durable intake", &durable_m);
            let ratio = durable_rate / bare_rate;
            println!("ratio durable / bare: {ratio:.2}");
            ratios.push(ratio);
            // How the writer grouped the durable run's requests: commits per second bound the
            // rate (one sync each), the group size shows how much concurrency each sync absorbed.
            let commits = after.commits - before.commits;
            let writes = after.writes - before.writes;
            println!(
                "store writer: {commits} commits for {writes} writes, average group {:.1}, {:.0} commits/s",
                writes as f64 / commits.max(1) as f64,
                commits as f64 / durable_m.elapsed.as_secs_f64()
            );
        }
        if rounds > 1 {
            ratios.sort_by(f64::total_cmp);
            println!(
                "median ratio over {rounds} rounds: {:.2} (from {:.2} to {:.2})",
                ratios[ratios.len() / 2],
                ratios[0],
                ratios[ratios.len() - 1]
            );
        }
    });
}
