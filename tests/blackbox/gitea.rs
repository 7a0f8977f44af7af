//! The coordinator against a Gitea server (the in-memory mock, over real HTTP).
//!
//! Multi-threaded runtimes: the helpers block while the child starts, and the mock Gitea must
//! keep answering meanwhile.

use std::time::Duration;

use mosaic_gitea::mock::MockGitea;

use crate::helpers::{Running, SECRET, run};

async fn health(app: &Running) -> (u16, serde_json::Value) {
    let response = app.client.get(app.url("/health")).send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_token_stops_the_start_with_78() {
    let (_gitea, url) = MockGitea::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let database = format!("sqlite://{}", dir.path().join("m.db").display());
    let output = tokio::task::spawn_blocking(move || {
        run(
            &["serve"],
            &[
                ("GITEA_WEBHOOK_SECRET", SECRET),
                ("GITEA_URL", url.as_str()),
                ("GITEA_BOT_TOKEN", "not-the-token"),
                ("MOSAIC_DATABASE_URL", &database),
                ("PORT", "1"),
            ],
            dir.path(),
        )
    })
    .await
    .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(78), "{stderr}");
    assert!(stderr.contains("Gitea refused"), "{stderr}");
    assert!(
        !stderr.contains("not-the-token"),
        "the token must never be printed: {stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_bot_username_stops_the_start() {
    let (_gitea, url) = MockGitea::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let database = format!("sqlite://{}", dir.path().join("m.db").display());
    let output = tokio::task::spawn_blocking(move || {
        run(
            &["serve"],
            &[
                ("GITEA_WEBHOOK_SECRET", SECRET),
                ("GITEA_URL", url.as_str()),
                ("GITEA_BOT_TOKEN", MockGitea::BOT_TOKEN),
                ("GITEA_BOT_USERNAME", "someone-else"),
                ("MOSAIC_DATABASE_URL", &database),
                ("PORT", "1"),
            ],
            dir.path(),
        )
    })
    .await
    .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(78), "{stderr}");
    assert!(stderr.contains("someone-else"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_gitea_degrades_health_but_webhooks_are_accepted() {
    // A port nothing listens on.
    let closed = format!("http://127.0.0.1:{}/", crate::helpers::free_port());
    let app = Running::start_with(&[("GITEA_URL", &closed), ("GITEA_BOT_TOKEN", "t")]);
    let (status, body) = health(&app).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "degraded", "{body}");
    assert_eq!(body["components"]["gitea"]["status"], "down", "{body}");
    assert_eq!(body["components"]["store"]["status"], "up", "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_token_gitea_is_disabled_and_said_so() {
    let app = Running::start();
    let (status, body) = health(&app).await;
    assert_eq!(status, 200);
    assert_eq!(body["status"], "healthy", "{body}");
    assert_eq!(body["components"]["gitea"]["status"], "disabled", "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_working_token_connects_as_the_bot() {
    let (_gitea, url) = MockGitea::start().await.unwrap();
    let app = Running::start_with(&[
        ("GITEA_URL", url.as_str()),
        ("GITEA_BOT_TOKEN", MockGitea::BOT_TOKEN),
    ]);
    let mut body = serde_json::Value::Null;
    for _ in 0..50 {
        body = health(&app).await.1;
        if body["components"]["gitea"]["status"] == "up" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(body["components"]["gitea"]["status"], "up", "{body}");
    assert_eq!(
        body["components"]["gitea"]["detail"],
        format!("as {}", MockGitea::BOT_LOGIN)
    );
}
