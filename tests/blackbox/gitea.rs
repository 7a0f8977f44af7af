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
async fn without_a_token_gitea_is_disabled_and_nothing_coordinated_is_degraded() {
    let app = Running::start();
    let (status, body) = health(&app).await;
    assert_eq!(status, 200, "webhooks are still accepted: {body}");
    assert_eq!(body["components"]["gitea"]["status"], "disabled", "{body}");
    // The workers decide within moments of the start.
    let mut body = body;
    for _ in 0..50 {
        if body["components"]["coordination"]["status"] == "down" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        body = health(&app).await.1;
    }
    assert_eq!(body["status"], "degraded", "{body}");
    let detail = body["components"]["coordination"]["detail"]
        .as_str()
        .unwrap_or_default();
    assert!(detail.contains("no bot login"), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bot_login_without_gitea_coordinates_and_is_healthy() {
    // Gitea named but no token: nothing is written, yet issues are coordinated for the bot.
    let work = tempfile::tempdir().unwrap();
    let app = Running::start_with(&[
        ("GITEA_URL", "http://127.0.0.1:9/"),
        ("GITEA_BOT_USERNAME", "mosaic-bot"),
        ("MOSAIC_RUNNER__WORK_ROOT", work.path().to_str().unwrap()),
        ("MOSAIC_RUNNER__AGENTS__GLM__PROGRAM", "/bin/true"),
    ]);
    let mut body = health(&app).await.1;
    for _ in 0..50 {
        if body["components"]["coordination"]["status"] == "up" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        body = health(&app).await.1;
    }
    assert_eq!(body["components"]["coordination"]["status"], "up", "{body}");
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn install_webhook_creates_then_updates_one_hook_and_check_approves() {
    let (gitea, url) = MockGitea::start().await.unwrap();
    let repo: mosaic_domain::RepoName = "team/app".parse().unwrap();
    gitea.create_repo(&repo);
    let dir = tempfile::tempdir().unwrap();
    let hook_url = "https://mosaic.example.com/webhook/gitea";
    let run_with = move |args: Vec<&'static str>, secret: &'static str| {
        let url = url.clone();
        let dir = dir.path().to_owned();
        move || {
            run(
                &args,
                &[
                    ("GITEA_URL", url.as_str()),
                    ("GITEA_BOT_TOKEN", MockGitea::BOT_TOKEN),
                    ("GITEA_WEBHOOK_SECRET", secret),
                    ("MOSAIC_GITEA__REPOSITORIES", "[\"team/app\"]"),
                    ("MOSAIC_WEBHOOK__PUBLIC_URL", hook_url),
                ],
                &dir,
            )
        }
    };
    let install = vec!["gitea", "install-webhook", "--repo", "team/app"];
    let output = tokio::task::spawn_blocking(run_with(install.clone(), "first-secret"))
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(
        output.status.code(),
        Some(0),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("created a webhook on team/app"), "{stdout}");
    let hooks = gitea.hooks(&repo);
    assert_eq!(hooks.len(), 1);
    assert_eq!(hooks[0].secret, "first-secret");
    assert_eq!(
        hooks[0].hook.config.get("url").map(String::as_str),
        Some(hook_url)
    );
    assert_eq!(
        hooks[0].hook.config.get("content_type").map(String::as_str),
        Some("json")
    );
    for event in ["issues", "issue_assign", "issue_label", "issue_comment"] {
        assert!(
            hooks[0].hook.events.iter().any(|e| e == event),
            "{event}: {:?}",
            hooks[0].hook.events
        );
    }
    assert!(
        !stdout.contains("first-secret"),
        "the secret is never printed"
    );

    // A second installation (a rotated secret) updates the same hook.
    let output = tokio::task::spawn_blocking(run_with(install, "second-secret"))
        .await
        .unwrap();
    assert_eq!(output.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&output.stdout).contains("updated the webhook"));
    let hooks = gitea.hooks(&repo);
    assert_eq!(hooks.len(), 1, "still one hook");
    assert_eq!(hooks[0].secret, "second-secret");

    let output = tokio::task::spawn_blocking(run_with(vec!["gitea", "check"], "second-secret"))
        .await
        .unwrap();
    let report = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(0), "{report}");
    assert!(report.contains(MockGitea::BOT_LOGIN), "{report}");
    assert!(report.contains("team/app"), "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_fails_when_the_webhook_is_missing() {
    let (gitea, url) = MockGitea::start().await.unwrap();
    let repo: mosaic_domain::RepoName = "team/other".parse().unwrap();
    gitea.create_repo(&repo);
    let dir = tempfile::tempdir().unwrap();
    let output = tokio::task::spawn_blocking(move || {
        run(
            &[
                "gitea",
                "check",
                "--url",
                "https://mosaic.example.com/webhook/gitea",
            ],
            &[
                ("GITEA_URL", url.as_str()),
                ("GITEA_BOT_TOKEN", MockGitea::BOT_TOKEN),
                ("MOSAIC_GITEA__REPOSITORIES", "[\"team/other\"]"),
            ],
            dir.path(),
        )
    })
    .await
    .unwrap();
    let report = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(1), "{report}");
    assert!(report.contains("team/other"), "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_gitea_delays_neither_the_start_nor_health() {
    // Connections complete in the kernel's backlog, and nothing ever answers.
    let hanging = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/", hanging.local_addr().unwrap());
    let started = std::time::Instant::now();
    // A long request timeout: a start that waited on Gitea would not be healthy in time.
    let app = Running::start_with(&[
        ("GITEA_URL", &url),
        ("GITEA_BOT_TOKEN", "t0ken"),
        ("MOSAIC_GITEA__REQUEST_TIMEOUT_SECS", "120"),
        ("MOSAIC_GITEA__READ_TIMEOUT_SECS", "120"),
    ]);
    let waited = started.elapsed();
    assert!(
        waited < Duration::from_secs(20),
        "serving waited {waited:?} on Gitea"
    );
    let (status, body) = health(&app).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "degraded", "{body}");
    assert_eq!(body["components"]["gitea"]["status"], "down", "{body}");
    drop(hanging);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_says_what_it_checked_and_fails_on_an_unreadable_repository() {
    let (gitea, url) = MockGitea::start().await.unwrap();
    gitea.create_repo(&"team/app".parse().unwrap());
    let dir = tempfile::tempdir().unwrap();
    let check = |args: Vec<&'static str>| {
        let url = url.clone();
        let dir = dir.path().to_owned();
        move || {
            run(
                &args,
                &[
                    ("GITEA_URL", url.as_str()),
                    ("GITEA_BOT_TOKEN", MockGitea::BOT_TOKEN),
                ],
                &dir,
            )
        }
    };
    // Nothing but the token configured: OK, and it says so.
    let output = tokio::task::spawn_blocking(check(vec!["gitea", "check"]))
        .await
        .unwrap();
    let report = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(0), "{report}");
    assert!(
        report.contains("Checked:   the token, no repository (pass --repo"),
        "{report}"
    );
    assert!(report.contains("no webhook (pass --url"), "{report}");
    // A repository the bot cannot read: not OK.
    let output = tokio::task::spawn_blocking(check(vec![
        "gitea",
        "check",
        "--repo",
        "team/app",
        "--repo",
        "team/secret",
    ]))
    .await
    .unwrap();
    let report = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(1), "{report}");
    assert!(report.contains("team/app: reachable"), "{report}");
    assert!(report.contains("team/secret: NOT FOUND"), "{report}");
    assert!(report.contains("2 repositories"), "{report}");
}
