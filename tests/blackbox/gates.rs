//! Quality gates in the attempt pipeline, with real git (the git server from mosaic-testkit), the
//! mock Gitea and the sample agent: a gate that fails sends the agent back with the failures
//! (a continuation), a gate that passes lets the branch be published with the report, and gates
//! that keep failing end the issue `failed` with the branch pushed and the report posted.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hmac::{Hmac, KeyInit, Mac};
use mosaic_domain::{IssueRef, IssueState, RepoName};
use mosaic_gitea::PullRequest;
use mosaic_gitea::mock::{MockGitea, NewIssue};
use mosaic_store::sqlite::SqliteStore;
use mosaic_store::{OutboxStatus, SessionOutcome, Store, StoreConfig};
use mosaic_testkit::GitHttpServer;
use mosaic_testkit::repo::{create_bare_repository, git};
use serde_json::Value;

use crate::helpers::{Running, SECRET, binary};

const STEP: Duration = Duration::from_secs(40);
const HUMAN: &str = "alice";
const OWNER: &str = "e2e";
const NAME: &str = "gated";

fn toml_string(text: &str) -> String {
    serde_json::to_string(text).unwrap()
}

/// Every built-in profile runs the sample agent with `flags`; `gates` is the `[gates]` section.
fn config_toml(gitea_url: &str, data: &Path, flags: &[&str], gates: &str) -> String {
    let program = binary("mosaic-coordinator");
    let mut text = format!(
        "[gitea]\nurl = {}\ntoken = {}\nreconcile_interval_secs = 3600\nrepositories = [\"e2e/elsewhere\"]\n\n\
         [inbox]\nidle_poll_ms = 100\n\n\
         [engine]\ndispatch_poll_ms = 100\nmax_attempts = 1\n\n\
         [runner]\nwork_root = {}\nkill_grace_secs = 2\n\n\
         [workspace]\nroot = {}\nmin_free_bytes = 1\n\n{gates}\n",
        toml_string(gitea_url),
        toml_string(MockGitea::BOT_TOKEN),
        toml_string(&data.join("work").display().to_string()),
        toml_string(&data.join("workspaces").display().to_string()),
    );
    let args: Vec<String> = [
        "sample-agent",
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
    ]
    .iter()
    .chain(flags)
    .map(|arg| toml_string(arg))
    .collect();
    for name in ["opus", "sonnet", "haiku", "glm", "minimax"] {
        text.push_str(&format!(
            "\n[runner.agents.{name}]\nprogram = {}\nargs = [{}]\ninput = \"json_lines\"\n",
            toml_string(&program.display().to_string()),
            args.join(", "),
        ));
    }
    text
}

/// The repository's test gate: fails until the agent created `fixed.txt`.
const TEST_GATE: &str = "[[gates.gates]]\nname = \"test\"\ncommand = [\"sh\", \"-c\", \"echo checking fixed.txt; test -f fixed.txt\"]\ntimeout_secs = 30\n";

const BODY: &str = "## Context Estimate\n- Total estimated: 20000 tokens\n- Recommended agent: glm\n\n\
                    ## Difficulty\nlow\n\n## Dependencies\nNone\n";

struct Scenario {
    gitea: MockGitea,
    repo: RepoName,
    remote: PathBuf,
    _git: GitHttpServer,
    _projects: tempfile::TempDir,
    app: Running,
    store: Arc<dyn Store>,
}

impl Scenario {
    async fn start(flags: &[&str], gates: &str) -> Self {
        let projects = tempfile::tempdir().unwrap();
        let remote = create_bare_repository(projects.path(), OWNER, NAME, "main").unwrap();
        let git_server = GitHttpServer::start(projects.path(), MockGitea::BOT_TOKEN)
            .await
            .unwrap();
        let (gitea, url) = MockGitea::start().await.unwrap();
        let repo: RepoName = format!("{OWNER}/{NAME}").parse().unwrap();
        gitea.create_repo(&repo);
        gitea.set_clone_url(&repo, &git_server.clone_url(OWNER, NAME));
        gitea.create_repo(&"e2e/elsewhere".parse().unwrap());
        let data = tempfile::tempdir().unwrap();
        let config = data.path().join("mosaic-e2e.toml");
        std::fs::write(
            &config,
            config_toml(url.as_str(), data.path(), flags, gates),
        )
        .unwrap();
        let app =
            tokio::task::spawn_blocking(move || Running::start_configured(data, &config, &[]))
                .await
                .unwrap();
        let store: Arc<dyn Store> = Arc::new(
            SqliteStore::open(&StoreConfig::sqlite(app.data.path().join("mosaic.db"))).unwrap(),
        );
        Self {
            gitea,
            repo,
            remote,
            _git: git_server,
            _projects: projects,
            app,
            store,
        }
    }

    fn issue(&self, title: &str) -> IssueRef {
        self.gitea.create_issue(
            &self.repo,
            NewIssue::titled(title)
                .body(BODY)
                .by(HUMAN)
                .assigned_to(MockGitea::BOT_LOGIN),
        )
    }

    async fn assign(&self, issue: &IssueRef) {
        let body =
            serde_json::to_vec(&self.gitea.issue_event(issue, "assigned", HUMAN).unwrap()).unwrap();
        let mut mac = Hmac::<sha2::Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
        mac.update(&body);
        let response = self
            .app
            .client
            .post(self.app.url("/webhook/gitea"))
            .header("content-type", "application/json")
            .header("x-gitea-event", "issues")
            .header("x-gitea-event-type", "issue_assign")
            .header("x-gitea-delivery", uuid::Uuid::new_v4().to_string())
            .header(
                "x-gitea-signature",
                hex::encode(mac.finalize().into_bytes()),
            )
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
    }

    async fn wait_for_state(&self, issue: &IssueRef, wanted: IssueState) {
        let mut last = None;
        let reached = poll(async || {
            last = self
                .store
                .get_issue(issue)
                .await
                .unwrap()
                .map(|record| record.state);
            (last == Some(wanted)).then_some(())
        })
        .await;
        if reached.is_none() {
            self.fail(&format!("{issue} did not reach {wanted:?} (last {last:?})"));
        }
    }

    async fn wait_outbox_delivered(&self, issue: &IssueRef) {
        let mut last = Vec::new();
        let done = poll(async || {
            last = self.store.outbox_for_issue(issue).await.unwrap();
            last.iter()
                .all(|item| item.status == OutboxStatus::Done)
                .then_some(())
        })
        .await;
        if done.is_none() {
            self.fail(&format!("outbox of {issue} not delivered: {last:#?}"));
        }
    }

    async fn succeeded_sessions(&self, issue: &IssueRef) -> usize {
        self.store
            .sessions_for_issue(issue)
            .await
            .unwrap()
            .iter()
            .filter(|session| session.outcome == Some(SessionOutcome::Succeeded))
            .count()
    }

    async fn api_issue(&self, issue: &IssueRef) -> Value {
        let path = format!(
            "/api/v1/issues/{}/{}/{}",
            issue.repo.owner(),
            issue.repo.name(),
            issue.number
        );
        let response = self
            .app
            .client
            .get(self.app.url(&path))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "GET {path}");
        let mut body: Value = response.json().await.unwrap();
        body["detail"].take()
    }

    fn remote_branches(&self) -> Vec<String> {
        git(
            &self.remote,
            &[
                "for-each-ref",
                "--format=%(refname:lstrip=2)",
                "refs/heads/mosaic/",
            ],
        )
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
    }

    fn pull_requests(&self) -> Vec<PullRequest> {
        self.gitea.pull_requests(&self.repo)
    }

    fn comments(&self, issue: &IssueRef) -> Vec<String> {
        self.gitea
            .comments(issue)
            .into_iter()
            .map(|comment| comment.body)
            .collect()
    }

    async fn metrics(&self) -> String {
        self.app
            .client
            .get(self.app.url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    fn fail(&self, message: &str) -> ! {
        let log = self.app.log();
        let tail: Vec<&str> = log.lines().rev().take(80).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        panic!("{message}\ncoordinator log (tail):\n{}", tail.join("\n"));
    }
}

async fn poll<T>(mut probe: impl AsyncFnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + STEP;
    loop {
        if let Some(value) = probe().await {
            return Some(value);
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_gate_sends_the_agent_back_once_then_the_pull_request_shows_the_gates_passing() {
    let gates = format!("[gates]\nmax_continuations = 3\n\n{TEST_GATE}");
    let s = Scenario::start(&["--fix-on-continuation", "fixed.txt"], &gates).await;
    let issue = s.issue("Fix the widget");
    s.assign(&issue).await;
    s.wait_for_state(&issue, IssueState::Completed).await;
    s.wait_outbox_delivered(&issue).await;

    // Exactly one continuation: two succeeded sessions, the second one fixed it.
    assert_eq!(s.succeeded_sessions(&issue).await, 2);
    let branch = format!("mosaic/{}-fix-the-widget", issue.number);
    assert_eq!(s.remote_branches(), std::slice::from_ref(&branch));
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

    let detail = s.api_issue(&issue).await;
    assert_eq!(detail["gates"][0]["gate"], "test");
    assert_eq!(detail["gates"][0]["status"], "passed");
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
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_that_never_fixes_the_gate_fails_with_its_branch_pushed_and_the_report_posted() {
    let gates = format!(
        "[gates]\nmax_continuations = 1\non_gate_failure = \"wip_pull_request\"\n\n{TEST_GATE}"
    );
    let s = Scenario::start(&[], &gates).await;
    let issue = s.issue("Break the widget");
    s.assign(&issue).await;
    s.wait_for_state(&issue, IssueState::Failed).await;
    s.wait_outbox_delivered(&issue).await;

    // The first run and one continuation.
    assert_eq!(s.succeeded_sessions(&issue).await, 2);
    let branch = format!("mosaic/{}-break-the-widget", issue.number);
    assert_eq!(
        s.remote_branches(),
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

    let pulls = s.pull_requests();
    assert_eq!(pulls.len(), 1, "{pulls:#?}");
    assert_eq!(pulls[0].title, "WIP: Break the widget");
    assert!(pulls[0].body.contains("❌ failed"), "{}", pulls[0].body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gate_that_hangs_is_reported_timed_out() {
    let gates = "[gates]\nmax_continuations = 0\n\n[[gates.gates]]\nname = \"slow\"\ncommand = [\"sh\", \"-c\", \"sleep 600\"]\ntimeout_secs = 1\n";
    let s = Scenario::start(&[], gates).await;
    let issue = s.issue("Wait forever");
    let started = Instant::now();
    s.assign(&issue).await;
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
    assert_eq!(s.remote_branches().len(), 1, "the branch is pushed");
    let detail = s.api_issue(&issue).await;
    assert_eq!(detail["gates"][0]["status"], "timed_out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trusted_repository_file_on_the_base_branch_adds_its_gates() {
    let gates = "[gates]\ntrust_repository_file = true\nmax_continuations = 0\n";
    let s = Scenario::start(&[], gates).await;
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
    s.assign(&issue).await;
    s.wait_for_state(&issue, IssueState::Failed).await;
    s.wait_outbox_delivered(&issue).await;
    let comments = s.comments(&issue);
    let report = comments
        .iter()
        .find(|c| c.contains("did not pass the required quality gates"))
        .unwrap_or_else(|| s.fail(&format!("no gate report among {comments:#?}")));
    assert!(report.contains("| repo-check | ❌ failed |"), "{report}");
}
