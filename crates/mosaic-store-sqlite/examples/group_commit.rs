#![allow(clippy::print_stdout, clippy::unwrap_used, clippy::expect_used)]
//! Measures durable intake through the store alone: N deliveries (copies of a real 5.4 KB
//! Gitea delivery) recorded by C concurrent callers, each awaiting its commit. Prints throughput, latency percentiles and group sizes.
//!
//! `cargo run --release -p mosaic-store-sqlite --example group_commit -- [N] [C] [full|normal]
//! [group_window_us] [checkpoint_interval_ms] [wal_restart_pages]` (the last three default to the store's defaults;
//! `0 0` is the store without the grouping window and with SQLite's automatic checkpoint).

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use mosaic_store::{IntakeStatus, NewDelivery, Store, StoreConfig, Synchronous};
use mosaic_store_sqlite::SqliteStore;

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let total: usize = args.next().map_or(5_000, |a| a.parse().unwrap());
    let callers: usize = args.next().map_or(32, |a| a.parse().unwrap());
    let synchronous = match args.next().as_deref() {
        Some("normal") => Synchronous::Normal,
        _ => Synchronous::Full,
    };
    let defaults = StoreConfig::default();
    let group_window_us = args
        .next()
        .map_or(defaults.group_window_us, |a| a.parse().unwrap());
    let checkpoint_interval_ms = args
        .next()
        .map_or(defaults.checkpoint_interval_ms, |a| a.parse().unwrap());
    let wal_restart_pages = args
        .next()
        .map_or(defaults.wal_restart_pages, |a| a.parse().unwrap());
    let dir = tempfile::tempdir().unwrap();
    let config = StoreConfig {
        synchronous,
        wal_restart_pages,
        group_window_us,
        checkpoint_interval_ms,
        ..StoreConfig::sqlite(dir.path().join("bench.db"))
    };
    let store = Arc::new(SqliteStore::open(&config).unwrap());
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
    let stats = store.stats();
    println!(
        "{total} deliveries, {callers} callers, synchronous={synchronous:?}, window \
         {group_window_us} µs, checkpoint every {checkpoint_interval_ms} ms: {:.0} writes/s, \
         p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms, {} commits (avg group {:.1}), \
         checkpoints: {} background, {} by the writer, WAL file {:.1} MB",
        total as f64 / elapsed.as_secs_f64(),
        pick(0.50).as_secs_f64() * 1e3,
        pick(0.99).as_secs_f64() * 1e3,
        pick(1.0).as_secs_f64() * 1e3,
        stats.commits,
        stats.writes as f64 / stats.commits.max(1) as f64,
        store.checkpoints().background,
        store.checkpoints().by_writer,
        std::fs::metadata(dir.path().join("bench.db-wal")).map_or(0, |m| m.len()) as f64 / 1e6,
    );
}
