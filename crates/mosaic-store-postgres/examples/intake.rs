#![allow(clippy::print_stdout, clippy::unwrap_used, clippy::expect_used)]
//! Measures durable intake through the PostgreSQL store alone: N deliveries (copies of a real
//! 5.4 KB Gitea delivery) recorded by C concurrent callers, each awaiting its commit. Prints
//! throughput and latency percentiles; compare with `mosaic-store-sqlite`'s `group_commit`
//! example.
//!
//! `cargo run --release -p mosaic-store-postgres --example intake -- [N] [C] [POOL]`
//! (defaults 5000, 32, 32) against `MOSAIC_TEST_POSTGRES_URL` (default
//! `postgres://mosaic:mosaic@127.0.0.1:5432/mosaic_test`), in a fresh schema dropped at the end.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use mosaic_store::{IntakeStatus, NewDelivery, Store};
use mosaic_store_postgres::{PostgresOptions, PostgresStore};

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let total: usize = args.next().map_or(5_000, |a| a.parse().unwrap());
    let callers: usize = args.next().map_or(32, |a| a.parse().unwrap());
    let pool_size: usize = args.next().map_or(32, |a| a.parse().unwrap());
    let url = std::env::var("MOSAIC_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://mosaic:mosaic@127.0.0.1:5432/mosaic_test".to_owned());
    let schema = format!("mosaic_bench_{:016x}", rand::random::<u64>());
    let store = Arc::new(
        PostgresStore::connect(
            &url,
            PostgresOptions {
                pool_size,
                schema: Some(schema.clone()),
                ..PostgresOptions::default()
            },
        )
        .await
        .unwrap(),
    );
    // A real Gitea delivery (5.4 KB of JSON), made unique per delivery below.
    let body = include_str!("../../../tests/fixtures/gitea/issue-assign-event.json");

    let started = Instant::now();
    let tasks = (0..callers).map(|caller| {
        let store = Arc::clone(&store);
        tokio::spawn(async move {
            let mut latencies = Vec::new();
            for n in (caller..total).step_by(callers) {
                let mut hash = [0_u8; 32];
                hash[..8].copy_from_slice(&(n as u64).to_le_bytes());
                let delivery = NewDelivery {
                    delivery_id: Some(format!("d-{n}")),
                    event: "issues".to_owned(),
                    event_type: Some("issue_assign".to_owned()),
                    action: Some("assigned".to_owned()),
                    repository: Some("o/r".to_owned()),
                    issue_number: Some(n as u64 + 1),
                    body_sha256: hash,
                    body: body
                        .replacen("\"id\": 1", &format!("\"id\": {}", 1_000_000 + n), 1)
                        .into_bytes(),
                    status: IntakeStatus::Pending,
                    received_at: Utc::now(),
                };
                let one = Instant::now();
                store.record_delivery(delivery).await.unwrap();
                latencies.push(one.elapsed());
            }
            latencies
        })
    });
    let mut latencies: Vec<Duration> = futures::future::join_all(tasks)
        .await
        .into_iter()
        .flat_map(Result::unwrap)
        .collect();
    let elapsed = started.elapsed();
    latencies.sort_unstable();
    let pick = |q: f64| latencies[((latencies.len() - 1) as f64 * q) as usize];
    println!(
        "postgres: {total} deliveries, {callers} callers, pool {pool_size}: {:.0} writes/s, \
         p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms, {} commits",
        total as f64 / elapsed.as_secs_f64(),
        pick(0.50).as_secs_f64() * 1e3,
        pick(0.99).as_secs_f64() * 1e3,
        pick(1.0).as_secs_f64() * 1e3,
        store.stats().commits,
    );

    drop(store);
    let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    client
        .batch_execute(&format!("DROP SCHEMA {schema} CASCADE"))
        .await
        .unwrap();
}
