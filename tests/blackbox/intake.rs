//! Webhook intake through the built binary: real HTTP, a real SQLite file, and a SIGKILL in the
//! middle of a stream of deliveries.
//!
//! Multi-threaded runtimes: starting the child blocks a thread while the load tasks run.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use hmac::{Hmac, KeyInit, Mac};
use serde_json::Value;

use mosaic_store::Store;

use crate::helpers::{Running, SECRET};

const FIXTURE: &[u8] = include_bytes!("../fixtures/gitea/issue-assign-event.json");
const FIXTURE_SIGNATURE: &str = "7d2adaf2fb3dc3769294c737ff48da003b7c3660b4f917b85c2c25dabd34a13c";

fn sign(secret: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

/// The capture as a distinct event: another issue id, so another body hash.
fn body_for(n: usize) -> Vec<u8> {
    let text = std::str::from_utf8(FIXTURE).unwrap();
    let body = text.replacen("\"id\": 1,", &format!("\"id\": {},", 100_000 + n), 1);
    assert_ne!(body, text);
    body.into_bytes()
}

/// Posts a delivery with the headers Gitea sends.
async fn deliver(
    client: &reqwest::Client,
    url: &str,
    body: Vec<u8>,
    delivery: &str,
    signature: &str,
) -> reqwest::Result<(u16, Value)> {
    let response = client
        .post(url)
        .header("content-type", "application/json")
        .header("x-gitea-event", "issues")
        .header("x-gitea-event-type", "issue_assign")
        .header("x-gitea-delivery", delivery)
        .header("x-gitea-signature", signature)
        .header("x-gogs-event", "issues")
        .header("x-gogs-delivery", delivery)
        .header("x-gogs-signature", signature)
        .header("x-github-event", "issues")
        .header("x-github-delivery", delivery)
        .header("x-hub-signature-256", format!("sha256={signature}"))
        .body(body)
        .send()
        .await?;
    let status = response.status().as_u16();
    let json = response.json().await?;
    Ok((status, json))
}

async fn deliveries(app: &Running) -> Value {
    let response = app
        .client
        .get(app.url("/api/v1/deliveries?limit=1000"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    response.json().await.unwrap()
}

/// Polls until no delivery is pending (the worker has handled everything recorded).
async fn wait_until_processed(app: &Running) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let listing = deliveries(app).await;
        if listing["counts"]["pending"] == 0 {
            return listing;
        }
        assert!(
            Instant::now() < deadline,
            "deliveries still pending: {}\nlog:\n{}",
            listing["counts"],
            app.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn start(extra: &'static [(&'static str, &'static str)]) -> Running {
    tokio::task::spawn_blocking(move || Running::start_with(extra))
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_delivery_is_accepted_processed_and_a_forged_one_refused() {
    let app = start(&[]).await;
    let url = app.url("/webhook/gitea");

    let (status, body) = deliver(
        &app.client,
        &url,
        FIXTURE.to_vec(),
        "e2e-1",
        FIXTURE_SIGNATURE,
    )
    .await
    .unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body,
        serde_json::json!({"status": "accepted", "delivery": "e2e-1"})
    );

    // Forged: signed with another secret; and a tampered body under the real signature.
    let forged = sign("not the secret", FIXTURE);
    let (status, body) = deliver(&app.client, &url, FIXTURE.to_vec(), "e2e-2", &forged)
        .await
        .unwrap();
    assert_eq!(status, 401, "{body}");
    assert!(body["error"].as_str().unwrap().contains("does not match"));
    let (status, _) = deliver(&app.client, &url, body_for(1), "e2e-3", FIXTURE_SIGNATURE)
        .await
        .unwrap();
    assert_eq!(status, 401);

    let listing = wait_until_processed(&app).await;
    let rows = listing["deliveries"].as_array().unwrap();
    assert_eq!(
        rows.len(),
        1,
        "only the genuine delivery is recorded: {listing}"
    );
    assert_eq!(rows[0]["delivery_id"], "e2e-1");
    assert_eq!(rows[0]["status"], "processed");

    // The handler recorded the issue's state.
    let response = app
        .client
        .get(app.url("/api/v1/issues/example/example/1"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let issue: Value = response.json().await.unwrap();
    assert_eq!(issue["issue"], "example/example#1", "{issue}");

    assert!(!app.log().contains(SECRET), "the secret reached the log");
}

/// What one load task saw.
#[derive(Default)]
struct Seen {
    accepted: Vec<String>,
    failed: usize,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acknowledged_delivery_survives_a_sigkill_and_is_processed_once() {
    const TASKS: usize = 16;
    // Below the listing's 1000 rows, so one page shows every row.
    const PER_TASK: usize = 55;
    const KILL_AFTER: usize = 150;

    let app = start(&[]).await;
    let url = app.url("/webhook/gitea");
    let accepted_so_far = Arc::new(AtomicUsize::new(0));
    let killed = Arc::new(AtomicBool::new(false));

    let mut tasks = Vec::new();
    for task in 0..TASKS {
        let url = url.clone();
        let accepted_so_far = Arc::clone(&accepted_so_far);
        let killed = Arc::clone(&killed);
        tasks.push(tokio::spawn(async move {
            let client = reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .unwrap();
            let mut seen = Seen::default();
            for i in 0..PER_TASK {
                let n = task * PER_TASK + i;
                let body = body_for(n);
                let signature = sign(SECRET, &body);
                let delivery = format!("crash-{n}");
                match deliver(&client, &url, body, &delivery, &signature).await {
                    Ok((200, answer)) => {
                        assert_eq!(answer["status"], "accepted", "{delivery}: {answer}");
                        assert_eq!(answer["delivery"], delivery.as_str());
                        seen.accepted.push(delivery);
                        accepted_so_far.fetch_add(1, Ordering::SeqCst);
                    }
                    Ok((status, answer)) => panic!("{delivery}: {status} {answer}"),
                    // The process is gone: this delivery was not acknowledged, so it may or
                    // may not be stored. Nothing more can be sent.
                    Err(_) if killed.load(Ordering::SeqCst) => {
                        seen.failed += 1;
                        break;
                    }
                    Err(err) => panic!("{delivery} failed before the kill: {err}"),
                }
            }
            seen
        }));
    }

    // SIGKILL while the tasks are still sending.
    let deadline = Instant::now() + Duration::from_secs(60);
    while accepted_so_far.load(Ordering::SeqCst) < KILL_AFTER {
        assert!(Instant::now() < deadline, "the load never got going");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    killed.store(true, Ordering::SeqCst);
    let data = tokio::task::spawn_blocking(move || app.crash())
        .await
        .unwrap();

    let mut accepted = Vec::new();
    let mut cut_off = 0;
    for task in tasks {
        let seen = task.await.unwrap();
        accepted.extend(seen.accepted);
        cut_off += seen.failed;
    }
    eprintln!(
        "{} deliveries acknowledged before the SIGKILL, {cut_off} cut off",
        accepted.len()
    );
    assert!(
        cut_off > 0,
        "the kill came after every task had finished: nothing was cut off"
    );
    assert!(accepted.len() < TASKS * PER_TASK);

    // Straight from the file the killed process left, before any restart logic runs.
    let path = data.path().join("mosaic.db");
    let store = tokio::task::spawn_blocking(move || {
        mosaic_store_sqlite::SqliteStore::open(&mosaic_store::StoreConfig::sqlite(path))
    })
    .await
    .unwrap()
    .unwrap();
    let on_disk = store.recent_deliveries(None, 1000).await.unwrap();
    for delivery in &accepted {
        assert!(
            on_disk
                .iter()
                .any(|row| row.delivery_id.as_deref() == Some(delivery.as_str())),
            "{delivery} was acknowledged but is not in the database file"
        );
    }
    let left_pending = on_disk
        .iter()
        .filter(|row| row.status == mosaic_store::DeliveryStatus::Pending)
        .count();
    eprintln!("{left_pending} deliveries were still pending when the process was killed");
    drop(store);

    let app = tokio::task::spawn_blocking(move || Running::start_in(data, &[]))
        .await
        .unwrap();
    let listing = wait_until_processed(&app).await;
    let rows = listing["deliveries"].as_array().unwrap();
    assert!(rows.len() < 1000, "the listing may be cut off");

    // Every row that is not an audit copy of a duplicate, by delivery id.
    let mut originals: HashMap<&str, Vec<&Value>> = HashMap::new();
    for row in rows {
        let id = row["delivery_id"].as_str().unwrap();
        assert!(
            row["duplicate_of"].is_null(),
            "unique bodies and ids: {row}"
        );
        originals.entry(id).or_default().push(row);
    }
    for delivery in &accepted {
        let found = originals
            .get(delivery.as_str())
            .unwrap_or_else(|| panic!("{delivery} was acknowledged but is not in the store"));
        assert_eq!(found.len(), 1, "{delivery} recorded {} times", found.len());
        assert_eq!(found[0]["status"], "processed", "{}", found[0]);
    }
    // Rows committed but never answered (killed in between) are processed too, nothing else is.
    for row in rows {
        assert_eq!(row["status"], "processed", "{row}");
    }
    assert_eq!(
        listing["counts"]["processed"].as_u64().unwrap() as usize,
        rows.len()
    );
    eprintln!("{} rows in the store after the restart", rows.len());
    assert!(rows.len() >= accepted.len());
    assert!(
        rows.len() <= accepted.len() + TASKS,
        "more rows than requests in flight"
    );

    // Sent again after the restart, an acknowledged delivery is a duplicate, not new work.
    let again = &accepted[0];
    let n: usize = again.trim_start_matches("crash-").parse().unwrap();
    let body = body_for(n);
    let signature = sign(SECRET, &body);
    let (status, answer) = deliver(
        &app.client,
        &app.url("/webhook/gitea"),
        body,
        again,
        &signature,
    )
    .await
    .unwrap();
    assert_eq!(status, 200);
    assert_eq!(answer["status"], "duplicate");
}
