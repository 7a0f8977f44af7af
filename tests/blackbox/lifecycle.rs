//! Start, serve, stop: the process as a container runtime sees it.

use std::time::Duration;

use nix::sys::signal::Signal;

use crate::helpers::{Running, run};

#[tokio::test]
async fn serves_health_and_stops_cleanly_on_sigterm() {
    let mut app = Running::start();
    let response = app.client.get(app.url("/health")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert!(response.headers().contains_key("x-request-id"));
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["version"], env!("CARGO_PKG_VERSION"));

    app.signal(Signal::SIGTERM);
    let status = app.wait_exit(Duration::from_secs(15));
    assert_eq!(status.code(), Some(0), "log:\n{}", app.log());
}

#[tokio::test]
async fn sigint_stops_cleanly_too() {
    let mut app = Running::start();
    app.signal(Signal::SIGINT);
    assert_eq!(app.wait_exit(Duration::from_secs(15)).code(), Some(0));
}

#[tokio::test]
async fn unknown_routes_and_methods_answer_json() {
    let app = Running::start();
    let response = app
        .client
        .get(app.url("/no/such/route"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
    let body: serde_json::Value = response.json().await.unwrap();
    assert!(body["error"].is_string());
    let response = app.client.delete(app.url("/health")).send().await.unwrap();
    assert_eq!(response.status(), 405);
}

#[test]
fn healthcheck_command_reports_the_running_server() {
    let app = Running::start();
    let port = app.port.to_string();
    let env = [("HOST", "127.0.0.1"), ("PORT", port.as_str())];
    let output = run(&["healthcheck"], &env, app.data.path());
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    drop(app);
    let output = run(&["healthcheck"], &env, std::path::Path::new("."));
    assert_eq!(output.status.code(), Some(1));
}

#[test]
fn logs_are_json_lines_with_request_ids() {
    let app = Running::start();
    let url = app.url("/health");
    assert_eq!(crate::helpers::http_status(&url).unwrap(), 200);
    std::thread::sleep(Duration::from_millis(200));
    let log = app.log();
    let line = log
        .lines()
        .find(|line| line.contains("request finished"))
        .unwrap_or_else(|| panic!("no request line in:\n{log}"));
    let json: serde_json::Value = serde_json::from_str(line).unwrap();
    assert!(json["span"]["request_id"].is_string(), "{line}");
}

#[tokio::test]
async fn metrics_are_prometheus_text_with_every_family() {
    let app = Running::start();
    let response = app.client.get(app.url("/metrics")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let content_type = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(content_type.contains("text"), "{content_type}");
    let mut text = response.text().await.unwrap();
    // Families with samples from the start (the engine's appear once it runs; see
    // coordinator.rs). The store's are read by a refresh that runs at start, beside the first
    // request.
    let families = [
        "mosaic_webhook_intake_seconds",
        "mosaic_deliveries",
        "mosaic_outbox_backlog",
        "mosaic_store_commits",
        "mosaic_coordinators_alive",
    ];
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !families
        .iter()
        .all(|family| text.contains(&format!("# TYPE {family}")))
        && std::time::Instant::now() < deadline
    {
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        text = app.get_text("/metrics").await;
    }
    for family in families {
        assert!(
            text.contains(&format!("# TYPE {family}")),
            "{family} missing:\n{text}"
        );
    }
    // A refused delivery is counted with its reason.
    let refused = app
        .client
        .post(app.url("/webhook/gitea"))
        .header("content-type", "application/json")
        .header("x-gitea-event", "issues")
        .header("x-gitea-signature", "00")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 401);
    let text = app.get_text("/metrics").await;
    assert!(
        text.contains(
            "mosaic_webhook_requests_total{event=\"unknown\",outcome=\"rejected_signature\"} 1"
        ),
        "{text}"
    );
    assert!(
        text.contains("mosaic_webhook_signature_failures_total{reason=\"malformed\"} 1"),
        "{text}"
    );
}

/// A second coordinator on the same SQLite file stands by; one that cannot even ask for the
/// leadership (its lock file cannot be opened) says why in /health instead of claiming standby.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leadership_on_sqlite_is_one_coordinator_at_a_time_and_a_failure_to_ask_is_shown() {
    let shared = tempfile::tempdir().unwrap();
    let url = shared.path().join("mosaic.db").display().to_string();
    let first = Running::start_with(&[("MOSAIC_DATABASE_URL", url.as_str())]);
    let second = Running::start_with(&[("MOSAIC_DATABASE_URL", url.as_str())]);
    let leadership = |health: &serde_json::Value| {
        health["components"]["leadership"]["detail"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    };
    let mut details = (String::new(), String::new());
    for _ in 0..100 {
        details = (
            leadership(&first.get_json("/health").await),
            leadership(&second.get_json("/health").await),
        );
        if details.0 == "leader" && details.1.starts_with("standby") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(details.0, "leader", "{details:?}");
    assert!(details.1.starts_with("standby"), "{details:?}");

    let blocked = tempfile::tempdir().unwrap();
    let url = blocked.path().join("mosaic.db").display().to_string();
    // A directory where the lock file belongs: it cannot be opened for writing.
    std::fs::create_dir_all(format!("{url}.leader")).unwrap();
    let app = Running::start_with(&[("MOSAIC_DATABASE_URL", url.as_str())]);
    let mut health = serde_json::Value::Null;
    for _ in 0..100 {
        health = app.get_json("/health").await;
        if health["components"]["leadership"]["status"] == "down" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let component = &health["components"]["leadership"];
    assert_eq!(component["status"], "down", "{health}");
    assert!(
        component["detail"]
            .as_str()
            .unwrap_or_default()
            .starts_with("cannot ask for the leadership: "),
        "{health}"
    );
    assert_eq!(health["status"], "degraded", "{health}");
}
