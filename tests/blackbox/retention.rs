//! Retention as an operator sees it: what is kept, at /api/v1/retention and in /metrics, and
//! the work directories of finished issues going once their time is up.

use std::time::Duration;

use mosaic_domain::IssueState;
use mosaic_gitea::mock::{MockGitea, NewIssue};

use crate::git_scenario::{BODY, Scenario, Setup, poll};
use crate::helpers::Running;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_is_kept_shows_in_the_api_and_the_metrics() {
    let app = Running::start_with(&[("MOSAIC_RETENTION__SESSION_LOGS_DAYS", "7")]);
    let mut body = serde_json::Value::Null;
    for _ in 0..50 {
        body = app
            .client
            .get(app.url("/api/v1/retention"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if !body["last_run_at"].is_null() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        !body["last_run_at"].is_null(),
        "the first run is at start: {body}"
    );
    assert_eq!(body["keep_delivery_bodies_days"], 30, "{body}");
    assert_eq!(body["keep_session_logs_days"], 7, "{body}");
    assert_eq!(body["keep_work_dirs_days"], 7, "{body}");
    assert_eq!(body["delivery_bodies"]["count"], 0, "{body}");
    assert_eq!(body["work_dirs"]["count"], 0, "{body}");
    assert_eq!(body["removed_work_dirs"]["count"], 0, "{body}");
    assert!(body["last_error"].is_null(), "{body}");
    let metrics = app.get_text("/metrics").await;
    for family in [
        "mosaic_retained_delivery_bodies ",
        "mosaic_retained_delivery_body_bytes ",
        "mosaic_retained_session_log_bytes ",
        "mosaic_removed_delivery_bodies_total ",
        "mosaic_retained_work_dirs ",
        "mosaic_retained_work_dir_bytes ",
        "mosaic_removed_work_dirs_total ",
    ] {
        assert!(metrics.contains(family), "{family} missing:\n{metrics}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_work_directories_of_finished_issues_go_when_their_time_is_up() {
    // Zero days: a finished issue's directory goes at the next clean-up, every second here.
    let s = Scenario::start(Setup {
        name: "retained",
        agent_args: vec![
            "--steps",
            "2",
            "--tokens-per-step",
            "1000",
            "--start-tokens",
            "5000",
            "--step-delay-ms",
            "30",
            "--write-file",
            "NOTES.md",
        ],
        engine: "",
        extra: "[retention]\nwork_dirs_days = 0\ninterval_secs = 1\n",
        git_delay: Duration::ZERO,
        min_free_bytes: 1,
        agents: None,
    })
    .await;
    // One issue works in a git worktree; the other's repository has nothing to clone, so its
    // session runs in the runner's own directory.
    let in_worktree = s.issue("Add release notes");
    let elsewhere = s.gitea.create_issue(
        &"e2e/elsewhere".parse().unwrap(),
        NewIssue::titled("Tidy up")
            .body(BODY)
            .by("alice")
            .assigned_to(MockGitea::BOT_LOGIN),
    );
    let worktree = s.worktree(&in_worktree);
    let runner_dir = s
        .app
        .data
        .path()
        .join("work/e2e/elsewhere")
        .join(format!("issue-{}", elsewhere.number));
    s.deliver(&in_worktree, "assigned").await;
    s.wait_for_state(&in_worktree, IssueState::Completed).await;
    s.deliver(&elsewhere, "assigned").await;
    s.wait_for_state(&elsewhere, IssueState::Completed).await;

    let mut body = serde_json::Value::Null;
    let removed = poll(async || {
        body = s.app.get_json("/api/v1/retention").await;
        (body["removed_work_dirs"]["count"] == 2).then_some(())
    })
    .await;
    if removed.is_none() {
        s.fail(&format!("the work directories were not removed: {body}"));
    }
    assert!(!worktree.exists(), "{}", worktree.display());
    assert!(!runner_dir.exists(), "{}", runner_dir.display());
    assert!(
        body["removed_work_dirs"]["bytes"].as_u64().unwrap_or(0) > 0,
        "{body}"
    );
    assert_eq!(body["keep_work_dirs_days"], 0, "{body}");
    assert_eq!(body["work_dirs"]["count"], 0, "{body}");
    // Both issues stay open and done; the worktree's record says when it went, and the
    // pushed branch stays.
    assert_eq!(s.state(&in_worktree).await, Some(IssueState::Completed));
    assert_eq!(s.state(&elsewhere).await, Some(IssueState::Completed));
    let detail = s.api_issue(&in_worktree).await;
    assert!(detail["workspace"]["removed_at"].is_string(), "{detail}");
    assert_eq!(s.remote_branches().len(), 1);
    let mut metrics = String::new();
    let counted = poll(async || {
        metrics = s.metrics().await;
        let line = |wanted: &str| metrics.lines().any(|line| line == wanted);
        (line("mosaic_removed_work_dirs_total 2") && line("mosaic_retained_work_dirs 0"))
            .then_some(())
    })
    .await;
    assert!(counted.is_some(), "{metrics}");
}
