//! Quality gates in the attempt pipeline, with real git (the git server from mosaic-testkit), the
//! mock Gitea and the sample agent: a gate that fails sends the agent back with the failures
//! (a continuation), a gate that passes lets the branch be published with the report, and gates
//! that keep failing end the issue `failed` with the branch pushed and the report posted.

use std::time::{Duration, Instant};

use mosaic_domain::IssueState;
use mosaic_testkit::repo::git;

use crate::git_scenario::{Scenario, Setup, poll};

/// The repository's test gate: fails until the agent created `fixed.txt`.
const TEST_GATE: &str = "[[gates.gates]]\nname = \"test\"\ncommand = [\"sh\", \"-c\", \"echo checking fixed.txt; test -f fixed.txt\"]\ntimeout_secs = 30\n";

impl Scenario {
    /// Every built-in profile runs the sample agent (two quick steps writing `WORK.md`, then
    /// `flags`) with one attempt; `gates` is the `[gates]` section.
    async fn start_gated(flags: &[&str], gates: &str) -> Self {
        let mut agent_args = vec![
            "--steps",
            "2",
            "--tokens-per-step",
            "1000",
            "--start-tokens",
            "5000",
            "--step-delay-ms",
            "20",
            "--write-file",
            "WORK.md",
        ];
        agent_args.extend_from_slice(flags);
        Self::start(Setup {
            name: "gated",
            agent_args,
            engine: "max_attempts = 1",
            extra: gates,
            git_delay: Duration::ZERO,
            min_free_bytes: 1,
            agents: None,
        })
        .await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_gate_sends_the_agent_back_once_then_the_pull_request_shows_the_gates_passing() {
    let gates = format!("[gates]\nmax_continuations = 3\n\n{TEST_GATE}");
    let s = Scenario::start_gated(&["--fix-on-continuation", "fixed.txt"], &gates).await;
    let issue = s.issue("Fix the widget");
    s.deliver(&issue, "assigned").await;
    s.wait_for_state(&issue, IssueState::Completed).await;
    s.wait_outbox_delivered(&issue).await;

    // Exactly one continuation: two succeeded sessions, the second one fixed it.
    assert_eq!(s.succeeded_sessions(&issue).await, 2);
    let branch = format!("mosaic/{}-fix-the-widget", issue.number);
    assert_eq!(s.remote_branch_names(), std::slice::from_ref(&branch));
    let fixed = git(&s.remote, &["show", &format!("{branch}:fixed.txt")]).unwrap();
    assert!(fixed.contains("Fixed after the quality gates"), "{fixed}");

    let pulls = s.pull_requests();
    assert_eq!(pulls.len(), 1, "{pulls:#?}");
    let body = &pulls[0].body;
    assert!(body.contains("### Quality gates"), "{body}");
    assert!(body.contains("| test | ✅ passed |"), "{body}");
    assert!(!pulls[0].title.starts_with("WIP:"), "{}", pulls[0].title);
    assert!(
        s.comments(&issue)
            .iter()
            .any(|c| c.contains("**Quality gates**") && c.contains("✅ passed")),
        "{:#?}",
        s.comments(&issue)
    );

    // The status comment carries the table too.
    let status = s.status_comment(&issue);
    assert!(
        status.contains("**Quality gates**") && status.contains("| test | ✅ passed |"),
        "{status}"
    );
    // The pushed head carries the gate's verdict as a commit status.
    let head = s.remote_branches()[0].1.clone();
    let statuses = s.gitea.commit_statuses(&s.repo, &head);
    assert_eq!(statuses.len(), 1, "{statuses:#?}");
    assert_eq!(statuses[0].context, "mosaic/test");
    assert_eq!(statuses[0].state, mosaic_gitea::CommitStatusState::Success);

    let detail = s.api_issue(&issue).await;
    assert_eq!(detail["gates"][0]["gate"], "test");
    assert_eq!(detail["gates"][0]["status"], "passed");
    // Every run is kept with its attempt and the session it checked, after a restart too.
    let check_runs = |detail: &serde_json::Value| {
        let runs = detail["gate_runs"].as_array().unwrap().clone();
        assert_eq!(runs.len(), 2, "{detail}");
        assert_eq!(runs[0]["status"], "failed");
        assert!(
            runs[0]["output_tail"]
                .as_str()
                .unwrap()
                .contains("checking fixed.txt"),
            "{detail}"
        );
        assert_eq!(runs[1]["status"], "passed");
        assert_eq!(runs[0]["attempt"], 1);
        assert_eq!(runs[1]["attempt"], 1);
        assert_ne!(runs[0]["session_id"], runs[1]["session_id"], "{detail}");
        assert!(runs[1]["session_id"].is_string(), "{detail}");
    };
    check_runs(&detail);
    // /metrics is refreshed from the engine in the background: wait for the figures.
    let wanted = [
        "mosaic_gate_runs_total{gate=\"test\"} 2",
        "mosaic_gate_failures_total{gate=\"test\"} 1",
        "mosaic_gate_continuations_total 1",
    ];
    let mut metrics = String::new();
    let seen = poll(async || {
        metrics = s.metrics().await;
        wanted
            .iter()
            .all(|line| metrics.contains(line))
            .then_some(())
    })
    .await;
    assert!(seen.is_some(), "{wanted:?} not in:\n{metrics}");

    let s = s.crash_and_restart().await;
    // The restarted engine answers once it runs again.
    let restarted = poll(async || {
        let detail = s.api_issue(&issue).await;
        detail["gate_runs"].is_array().then_some(detail)
    })
    .await;
    match restarted {
        Some(detail) => check_runs(&detail),
        None => s.fail("the restarted coordinator never showed the gate runs"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_continuation_that_is_rotated_hands_the_gates_findings_to_the_next_session() {
    // Every session bursts past the rotation threshold at step 2, continuations too: the
    // session that finally finishes a continuation is a rotated one, and it must still be told
    // what the gates rejected, or it never fixes it.
    let gates = format!("[gates]\nmax_continuations = 1\n\n{TEST_GATE}");
    let s = Scenario::start_gated(
        &[
            "--fix-on-continuation",
            "fixed.txt",
            // The burst comes a step before the end, with time after it for the monitor to
            // see it: a burst in the last step races the session's own success.
            "--steps",
            "3",
            "--step-delay-ms",
            "500",
            "--burst-at-step",
            "2",
            "--burst-tokens",
            "160000",
        ],
        &gates,
    )
    .await;
    let issue = s.issue("Fix the gadget");
    s.deliver(&issue, "assigned").await;
    s.wait_for_state(&issue, IssueState::Completed).await;
    let rotations = s
        .store
        .sessions_for_issue(&issue)
        .await
        .unwrap()
        .iter()
        .filter(|session| session.outcome == Some(mosaic_store::SessionOutcome::Rotated))
        .count();
    assert!(
        rotations >= 2,
        "the continuation was rotated too: {rotations}"
    );
    let branch = format!("mosaic/{}-fix-the-gadget", issue.number);
    let fixed = git(&s.remote, &["show", &format!("{branch}:fixed.txt")]).unwrap();
    assert!(fixed.contains("Fixed after the quality gates"), "{fixed}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_that_never_fixes_the_gate_fails_with_its_branch_pushed_and_the_report_posted() {
    let gates = format!(
        "[gates]\nmax_continuations = 1\non_gate_failure = \"wip_pull_request\"\n\n{TEST_GATE}"
    );
    let s = Scenario::start_gated(&[], &gates).await;
    let issue = s.issue("Break the widget");
    s.deliver(&issue, "assigned").await;
    s.wait_for_state(&issue, IssueState::Failed).await;
    s.wait_outbox_delivered(&issue).await;

    // The first run and one continuation.
    assert_eq!(s.succeeded_sessions(&issue).await, 2);
    let branch = format!("mosaic/{}-break-the-widget", issue.number);
    assert_eq!(
        s.remote_branch_names(),
        std::slice::from_ref(&branch),
        "no work is lost"
    );
    let work = git(&s.remote, &["show", &format!("{branch}:WORK.md")]).unwrap();
    assert!(work.contains("Written by mosaic-sample-agent"), "{work}");

    let comments = s.comments(&issue);
    let report = comments
        .iter()
        .find(|c| c.contains("did not pass the required quality gates"))
        .unwrap_or_else(|| s.fail(&format!("no gate report among {comments:#?}")));
    assert!(report.contains("after 1 continuation,"), "{report}");
    assert!(report.contains("| test | ❌ failed | "), "{report}");
    assert!(report.contains("exit code 1"), "{report}");
    assert!(report.contains(&branch), "{report}");
    assert_eq!(s.gitea.issue_labels(&issue), ["mosaic:failed"]);
    let status = s.status_comment(&issue);
    assert!(status.contains("| test | ❌ failed | "), "{status}");

    let pulls = s.pull_requests();
    assert_eq!(pulls.len(), 1, "{pulls:#?}");
    assert_eq!(pulls[0].title, "WIP: Break the widget");
    assert!(pulls[0].body.contains("❌ failed"), "{}", pulls[0].body);
    let head = s.remote_branches()[0].1.clone();
    let statuses = s.gitea.commit_statuses(&s.repo, &head);
    assert_eq!(statuses.len(), 1, "{statuses:#?}");
    assert_eq!(statuses[0].context, "mosaic/test");
    assert_eq!(statuses[0].state, mosaic_gitea::CommitStatusState::Failure);
    assert!(
        statuses[0].description.contains("exit code 1"),
        "{statuses:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gate_that_hangs_is_reported_timed_out() {
    let gates = "[gates]\nmax_continuations = 0\n\n[[gates.gates]]\nname = \"slow\"\ncommand = [\"sh\", \"-c\", \"sleep 600\"]\ntimeout_secs = 1\n";
    let s = Scenario::start_gated(&[], gates).await;
    let issue = s.issue("Wait forever");
    let started = Instant::now();
    s.deliver(&issue, "assigned").await;
    s.wait_for_state(&issue, IssueState::Failed).await;
    s.wait_outbox_delivered(&issue).await;
    assert!(started.elapsed() < Duration::from_secs(30));
    assert_eq!(s.succeeded_sessions(&issue).await, 1, "no continuation");
    let comments = s.comments(&issue);
    let report = comments
        .iter()
        .find(|c| c.contains("did not pass the required quality gates"))
        .unwrap_or_else(|| s.fail(&format!("no gate report among {comments:#?}")));
    assert!(report.contains("| slow | ⏱️ timed out |"), "{report}");
    assert!(report.contains("no result within 1 s; killed"), "{report}");
    assert!(s.pull_requests().is_empty(), "on_gate_failure = branch");
    assert_eq!(s.remote_branch_names().len(), 1, "the branch is pushed");
    let head = s.remote_branches()[0].1.clone();
    let statuses = s.gitea.commit_statuses(&s.repo, &head);
    assert_eq!(statuses[0].state, mosaic_gitea::CommitStatusState::Error);
    let detail = s.api_issue(&issue).await;
    assert_eq!(detail["gates"][0]["status"], "timed_out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trusted_repository_file_on_the_base_branch_adds_its_gates() {
    let gates = "[gates]\ntrust_repository_file = true\nmax_continuations = 0\n";
    let s = Scenario::start_gated(&[], gates).await;
    // The repository's own gate, committed to main before the issue is assigned.
    let clone = tempfile::tempdir().unwrap();
    let checkout = clone.path().join("app");
    git(
        clone.path(),
        &["clone", "--quiet", s.remote.to_str().unwrap(), "app"],
    )
    .unwrap();
    std::fs::create_dir(checkout.join(".mosaic")).unwrap();
    std::fs::write(
        checkout.join(".mosaic/gates.toml"),
        "[[gates]]\nname = \"repo-check\"\ncommand = [\"sh\", \"-c\", \"test -f fixed.txt\"]\n",
    )
    .unwrap();
    git(&checkout, &["add", ".mosaic/gates.toml"]).unwrap();
    git(
        &checkout,
        &[
            "-c",
            "user.name=Alice",
            "-c",
            "user.email=alice@example.invalid",
            "commit",
            "--quiet",
            "-m",
            "Add the repository's gates",
        ],
    )
    .unwrap();
    git(&checkout, &["push", "--quiet", "origin", "HEAD:main"]).unwrap();

    let issue = s.issue("Check the repository gate");
    s.deliver(&issue, "assigned").await;
    s.wait_for_state(&issue, IssueState::Failed).await;
    s.wait_outbox_delivered(&issue).await;
    let comments = s.comments(&issue);
    let report = comments
        .iter()
        .find(|c| c.contains("did not pass the required quality gates"))
        .unwrap_or_else(|| s.fail(&format!("no gate report among {comments:#?}")));
    assert!(report.contains("| repo-check | ❌ failed |"), "{report}");
}
