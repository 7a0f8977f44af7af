#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]
//! Acknowledged means durable: a child process records deliveries and prints each one the
//! store acknowledged; it is SIGKILLed mid-stream, and every acknowledged row must be there
//! after reopening.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::Arc;

use chrono::Utc;
use mosaic_store::{IntakeStatus, NewDelivery, RecordOutcome, Store, StoreConfig};
use mosaic_store_sqlite::SqliteStore;

const CHILD_ENV: &str = "MOSAIC_STORE_CRASH_DB";
const ACKS_BEFORE_KILL: usize = 300;

fn delivery(writer: usize, n: usize) -> NewDelivery {
    let body = format!("{{\"writer\":{writer},\"n\":{n}}}");
    let mut hash = [0_u8; 32];
    hash[..8].copy_from_slice(&(writer as u64).to_le_bytes());
    hash[8..16].copy_from_slice(&(n as u64).to_le_bytes());
    NewDelivery {
        delivery_id: Some(format!("w{writer}-{n}")),
        event: "issues".to_owned(),
        event_type: None,
        action: Some("opened".to_owned()),
        repository: Some("o/r".to_owned()),
        issue_number: Some(1),
        body_sha256: hash,
        body: body.into_bytes(),
        status: IntakeStatus::Pending,
        received_at: Utc::now(),
    }
}

/// Runs only inside the child process started by the test below.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "child process of acknowledged_deliveries_survive_sigkill"]
async fn crash_child() {
    let path = std::env::var(CHILD_ENV).expect("started by the crash test");
    let store = Arc::new(SqliteStore::open(&StoreConfig::sqlite(path)).unwrap());
    let writers = (0..16).map(|writer| {
        let store = Arc::clone(&store);
        tokio::spawn(async move {
            for n in 0.. {
                let outcome = store.record_delivery(delivery(writer, n)).await.unwrap();
                let RecordOutcome::Recorded { id } = outcome else {
                    panic!("unexpected duplicate");
                };
                let mut out = std::io::stdout().lock();
                writeln!(out, "ACK {id} w{writer}-{n}").unwrap();
                out.flush().unwrap();
            }
        })
    });
    futures::future::join_all(writers).await;
}

#[tokio::test]
async fn acknowledged_deliveries_survive_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("crash.db");
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--ignored",
            "--exact",
            "crash_child",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, &path)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();

    let mut acked = BTreeMap::new();
    let read_ack = |line: String, acked: &mut BTreeMap<i64, String>| {
        if let Some(rest) = line.strip_prefix("ACK ") {
            let (id, delivery_id) = rest.split_once(' ').unwrap();
            acked.insert(id.parse::<i64>().unwrap(), delivery_id.to_owned());
        }
    };
    while acked.len() < ACKS_BEFORE_KILL {
        let line = lines
            .next()
            .expect("child ended before acknowledging enough deliveries")
            .unwrap();
        read_ack(line, &mut acked);
    }
    // std's kill is SIGKILL on Unix: no destructors, no clean close of the database.
    child.kill().unwrap();
    let status = child.wait().unwrap();
    assert!(!status.success());
    // Acknowledgements already in the pipe count too: they were answered before the kill.
    for line in lines {
        let Ok(line) = line else { break };
        read_ack(line, &mut acked);
    }

    let store = SqliteStore::open(&StoreConfig::sqlite(&path)).unwrap();
    let stored: BTreeMap<i64, Option<String>> = store
        .recent_deliveries(None, u32::MAX)
        .await
        .unwrap()
        .into_iter()
        .map(|d| (d.id, d.delivery_id))
        .collect();
    println!(
        "acknowledged {} deliveries before SIGKILL; {} rows after reopening",
        acked.len(),
        stored.len()
    );
    for (id, delivery_id) in &acked {
        assert_eq!(
            stored.get(id),
            Some(&Some(delivery_id.clone())),
            "acknowledged delivery {delivery_id} (row {id}) lost"
        );
    }
    let check: String = rusqlite::Connection::open(&path)
        .unwrap()
        .query_row("PRAGMA integrity_check", [], |row| row.get(0))
        .unwrap();
    assert_eq!(check, "ok");
}
