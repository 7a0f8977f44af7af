//! From an assigned issue to a pull request, with real git: a bare repository served over
//! smart HTTP by `git http-backend` (requiring the bot token), the mock Gitea whose repository
//! names it as `clone_url`, the built coordinator, and the sample agent working in the issue's
//! worktree. What the tests check is what a person would see: the branch on the remote with the
//! agent's commit, one pull request saying `Closes #n`, the status comment naming both.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hmac::{Hmac, KeyInit, Mac};
use mosaic_domain::{IssueRef, IssueState, RepoName};
use mosaic_gitea::PullRequest;
use mosaic_gitea::mock::{MockGitea, NewIssue};
use mosaic_store::sqlite::SqliteStore;
use mosaic_store::{OutboxStatus, Store, StoreConfig};
use mosaic_testkit::GitHttpServer;
use mosaic_testkit::repo::{create_bare_repository, git};
use serde_json::Value;

use crate::helpers::{Running, SECRET, binary};

const STEP: Duration = Duration::from_secs(30);
const HUMAN: &str = "alice";
const OWNER: &str = "e2e";
const NAME: &str = "app";

fn toml_string(text: &str) -> String {
    serde_json::to_string(text).unwrap()
}

/// Every built-in profile runs the sample agent with `flags` (a few quick steps first).
fn config_toml(gitea_url: &str, data: &Path, flags: &[&str], min_free_bytes: u64) -> String {
    let program = binary("mosaic-coordinator");
    let mut text = format!(
        "[gitea]\nurl = {}\ntoken = {}\nreconcile_interval_secs = 3600\nrepositories = [\"e2e/elsewhere\"]\n\n\
         [inbox]\nidle_poll_ms = 100\n\n\
         [engine]\ndispatch_poll_ms = 100\n\n\
         [runner]\nwork_root = {}\nkill_grace_secs = 2\n\n\
         [workspace]\nroot = {}\nmin_free_bytes = {min_free_bytes}\n",
        toml_string(gitea_url),
        toml_string(MockGitea::BOT_TOKEN),
        toml_string(&data.join("work").display().to_string()),
        toml_string(&data.join("workspaces").display().to_string()),
    );
    let args: Vec<String> = [
        "sample-agent",
        "--steps",
        "3",
        "--tokens-per-step",
        "1000",
        "--start-tokens",
        "5000",
        "--step-delay-ms",
        "30",
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

const BODY: &str = "## Context Estimate\n- Total estimated: 20000 tokens\n- Recommended agent: glm\n\n\
                    ## Difficulty\nlow\n\n## Dependencies\nNone\n";

struct Scenario {
    gitea: MockGitea,
    repo: RepoName,
    /// The bare repository the git server serves.
    remote: PathBuf,
    _git: GitHttpServer,
    _projects: tempfile::TempDir,
    app: Running,
    store: Arc<dyn Store>,
    config: PathBuf,
}

impl Scenario {
    async fn start(flags: &[&str]) -> Self {
        Self::start_with(flags, Duration::ZERO, 1).await
    }

    /// The git server answers each request only after `delay` (a slow push).
    async fn start_with_git_delay(flags: &[&str], delay: Duration) -> Self {
        Self::start_with(flags, delay, 1).await
    }

    async fn start_with(flags: &[&str], delay: Duration, min_free_bytes: u64) -> Self {
        let projects = tempfile::tempdir().unwrap();
        let remote = create_bare_repository(projects.path(), OWNER, NAME, "main").unwrap();
        let git_server =
            GitHttpServer::start_with_delay(projects.path(), MockGitea::BOT_TOKEN, delay)
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
            config_toml(url.as_str(), data.path(), flags, min_free_bytes),
        )
        .unwrap();
        let app = launch(data, config.clone()).await;
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
            config,
        }
    }

    /// SIGKILLs the coordinator and starts it again on the same data directory.
    async fn crash_and_restart(self) -> Self {
        let Self {
            gitea,
            repo,
            remote,
            _git,
            _projects,
            app,
            store,
            config,
        } = self;
        let data = tokio::task::spawn_blocking(move || app.crash())
            .await
            .unwrap();
        let app = launch(data, config.clone()).await;
        Self {
            gitea,
            repo,
            remote,
            _git,
            _projects,
            app,
            store,
            config,
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

    async fn deliver(&self, issue: &IssueRef, action: &str) {
        let body =
            serde_json::to_vec(&self.gitea.issue_event(issue, action, HUMAN).unwrap()).unwrap();
        let mut mac = Hmac::<sha2::Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
        mac.update(&body);
        let event_type = match action {
            "assigned" | "unassigned" => "issue_assign",
            _ => "issues",
        };
        let response = self
            .app
            .client
            .post(self.app.url("/webhook/gitea"))
            .header("content-type", "application/json")
            .header("x-gitea-event", "issues")
            .header("x-gitea-event-type", event_type)
            .header("x-gitea-delivery", uuid::Uuid::new_v4().to_string())
            .header(
                "x-gitea-signature",
                hex::encode(mac.finalize().into_bytes()),
            )
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "delivery {action} for {issue}");
    }

    async fn state(&self, issue: &IssueRef) -> Option<IssueState> {
        self.store
            .get_issue(issue)
            .await
            .unwrap()
            .map(|record| record.state)
    }

    async fn wait_for_state(&self, issue: &IssueRef, wanted: IssueState) {
        let mut last = None;
        let reached = poll(async || {
            last = self.state(issue).await;
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

    /// Branches of the remote under `mosaic/`, with their commit ids.
    fn remote_branches(&self) -> Vec<(String, String)> {
        git(
            &self.remote,
            &[
                "for-each-ref",
                "--format=%(refname:lstrip=2) %(objectname)",
                "refs/heads/mosaic/",
            ],
        )
        .unwrap()
        .lines()
        .filter_map(|line| line.split_once(' '))
        .map(|(name, id)| (name.to_owned(), id.to_owned()))
        .collect()
    }

    fn pull_requests(&self) -> Vec<PullRequest> {
        self.gitea.pull_requests(&self.repo)
    }

    fn status_comment(&self, issue: &IssueRef) -> String {
        self.gitea
            .comments(issue)
            .into_iter()
            .map(|c| c.body)
            .find(|body| body.contains("mosaic:status"))
            .unwrap_or_default()
    }

    fn worktree(&self, issue: &IssueRef) -> PathBuf {
        self.app
            .data
            .path()
            .join("workspaces/worktrees")
            .join(issue.repo.owner())
            .join(issue.repo.name())
            .join(format!("issue-{}", issue.number))
    }

    fn fail(&self, message: &str) -> ! {
        let log = self.app.log();
        let tail: Vec<&str> = log.lines().rev().take(60).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        panic!("{message}\ncoordinator log (tail):\n{}", tail.join("\n"));
    }
}

async fn launch(data: tempfile::TempDir, config: PathBuf) -> Running {
    tokio::task::spawn_blocking(move || Running::start_configured(data, &config, &[]))
        .await
        .unwrap()
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

/// Subject lines of `branch` in the bare repository, newest first.
fn subjects(remote: &Path, branch: &str) -> Vec<String> {
    git(remote, &["log", "--format=%s", branch])
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_assigned_issue_ends_in_one_pull_request_with_the_agents_commit() {
    let s = Scenario::start(&["--write-file", "NOTES.md", "--commit"]).await;
    let issue = s.issue("Add release notes");
    s.deliver(&issue, "assigned").await;
    s.wait_for_state(&issue, IssueState::Completed).await;

    // The remote has the issue's branch with the agent's commit on top of main.
    let branches = s.remote_branches();
    let branch = format!("mosaic/{}-add-release-notes", issue.number);
    assert_eq!(
        branches.iter().map(|(b, _)| b.as_str()).collect::<Vec<_>>(),
        [branch.as_str()]
    );
    assert_eq!(
        subjects(&s.remote, &branch),
        ["Sample agent: work on the issue", "Initial commit"]
    );
    let notes = git(&s.remote, &["show", &format!("{branch}:NOTES.md")]).unwrap();
    assert!(notes.contains("Written by mosaic-sample-agent"), "{notes}");

    // Exactly one pull request, from the branch into main, closing the issue.
    s.wait_outbox_delivered(&issue).await;
    let pulls = s.pull_requests();
    assert_eq!(pulls.len(), 1, "{pulls:#?}");
    assert_eq!(pulls[0].head.name, branch);
    assert_eq!(pulls[0].base.name, "main");
    assert_eq!(pulls[0].title, "Add release notes");
    assert!(
        pulls[0]
            .body
            .starts_with(&format!("Closes #{}\n", issue.number)),
        "{}",
        pulls[0].body
    );
    assert!(
        pulls[0].body.contains("Completed 3 steps"),
        "{}",
        pulls[0].body
    );
    assert!(pulls[0].body.contains("1 session"), "{}", pulls[0].body);
    assert!(!pulls[0].body.contains(MockGitea::BOT_TOKEN));

    // The status comment names the branch and the pull request; the API shows both.
    let status = s.status_comment(&issue);
    assert!(
        status.contains(&format!("pull request `{branch}` → `main`")),
        "{status}"
    );
    assert_eq!(s.gitea.issue_labels(&issue), ["mosaic:done"]);
    let detail = s.api_issue(&issue).await;
    assert_eq!(detail["workspace"]["branch"], branch.as_str());
    assert_eq!(detail["workspace"]["base"], "main");
    assert_eq!(
        detail["workspace"]["head_commit"],
        s.remote_branches()[0].1.as_str()
    );
    assert_eq!(detail["pull_request"]["head"], branch.as_str());
    assert_eq!(detail["pull_request"]["status"], "done");

    // The session ran in the worktree, which goes when the issue is closed (the branch stays).
    let worktree = s.worktree(&issue);
    assert!(
        worktree.join("NOTES.md").is_file(),
        "{}",
        worktree.display()
    );
    s.gitea
        .set_issue_state(&issue, mosaic_gitea::IssueState::Closed);
    s.deliver(&issue, "closed").await;
    let gone = poll(async || (!worktree.exists()).then_some(())).await;
    if gone.is_none() {
        s.fail(&format!("{} still exists after close", worktree.display()));
    }
    assert_eq!(s.remote_branches().len(), 1, "the remote branch stays");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_that_changes_nothing_ends_in_no_changes_without_a_pull_request() {
    let s = Scenario::start(&[]).await;
    let issue = s.issue("Look at the logs");
    s.deliver(&issue, "assigned").await;
    s.wait_for_state(&issue, IssueState::NoChanges).await;
    s.wait_outbox_delivered(&issue).await;
    assert!(s.pull_requests().is_empty());
    assert!(s.remote_branches().is_empty(), "nothing pushed");
    assert_eq!(s.gitea.issue_labels(&issue), ["mosaic:no-changes"]);
    let status = s.status_comment(&issue);
    assert!(status.contains("No changes"), "{status}");
    assert!(
        s.gitea
            .comments(&issue)
            .iter()
            .any(|c| c.body.contains("no pull request was opened")),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_the_agent_left_uncommitted_are_committed_by_the_bot_and_published() {
    let s = Scenario::start(&["--write-file", "docs/left.md"]).await;
    let issue = s.issue("Write the docs");
    s.deliver(&issue, "assigned").await;
    s.wait_for_state(&issue, IssueState::Completed).await;
    let branch = format!("mosaic/{}-write-the-docs", issue.number);
    assert_eq!(
        subjects(&s.remote, &branch),
        [
            "Commit changes the agent left uncommitted",
            "Initial commit"
        ]
    );
    let author = git(&s.remote, &["log", "-1", "--format=%an <%ae>", &branch]).unwrap();
    assert_eq!(author, "Mosaic Coordinator <mosaic-coordinator@localhost>");
    assert!(
        git(&s.remote, &["show", &format!("{branch}:docs/left.md")])
            .unwrap()
            .contains("Written by")
    );
    s.wait_outbox_delivered(&issue).await;
    let pulls = s.pull_requests();
    assert_eq!(pulls.len(), 1, "{pulls:#?}");
    assert_eq!(pulls[0].head.name, branch);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_later_assignment_continues_the_branch_and_updates_the_same_pull_request() {
    let s = Scenario::start(&["--write-file", "NOTES.md", "--commit"]).await;
    let issue = s.issue("Add release notes");
    s.deliver(&issue, "assigned").await;
    s.wait_for_state(&issue, IssueState::Completed).await;
    s.wait_outbox_delivered(&issue).await;
    let first = s.remote_branches();

    // Unassigned and assigned again: the issue runs again on the same branch.
    s.gitea.set_assignees(&issue, &[]);
    s.deliver(&issue, "unassigned").await;
    s.gitea.set_assignees(&issue, &[MockGitea::BOT_LOGIN]);
    s.deliver(&issue, "assigned").await;
    let again = poll(async || {
        let sessions = s.store.sessions_for_issue(&issue).await.unwrap();
        (sessions.len() == 2 && s.state(&issue).await == Some(IssueState::Completed)).then_some(())
    })
    .await;
    if again.is_none() {
        s.fail("the second assignment did not complete");
    }
    s.wait_outbox_delivered(&issue).await;
    let second = s.remote_branches();
    assert_eq!(second.len(), 1, "{second:?}");
    assert_eq!(second[0].0, first[0].0, "same branch");
    assert_ne!(second[0].1, first[0].1, "a new commit on it");
    let pulls = s.pull_requests();
    assert_eq!(pulls.len(), 1, "{pulls:#?}");
    assert!(pulls[0].body.contains("2 sessions"), "{}", pulls[0].body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_while_publishing_ends_in_one_pull_request_without_running_the_agent_again() {
    // Every git request takes 400 ms, so publishing (leftovers, push) is long enough to be
    // caught: the agent's success is stored while the issue is still in progress.
    let s = Scenario::start_with_git_delay(
        &["--write-file", "NOTES.md", "--commit"],
        Duration::from_millis(400),
    )
    .await;
    let issue = s.issue("Add release notes");
    s.deliver(&issue, "assigned").await;
    let publishing = poll(async || {
        let sessions = s.store.sessions_for_issue(&issue).await.unwrap();
        let succeeded = sessions
            .iter()
            .any(|session| session.outcome == Some(mosaic_store::SessionOutcome::Succeeded));
        (succeeded && s.state(&issue).await == Some(IssueState::InProgress)).then_some(())
    })
    .await;
    if publishing.is_none() {
        s.fail("the publishing stage was never seen");
    }
    assert!(
        s.pull_requests().is_empty(),
        "killed before the pull request"
    );
    let s = s.crash_and_restart().await;

    s.wait_for_state(&issue, IssueState::Completed).await;
    s.wait_outbox_delivered(&issue).await;
    let sessions = s.store.sessions_for_issue(&issue).await.unwrap();
    assert_eq!(
        sessions.len(),
        1,
        "the agent did not run again: {sessions:#?}"
    );
    let pulls = s.pull_requests();
    assert_eq!(pulls.len(), 1, "{pulls:#?}");
    let branch = format!("mosaic/{}-add-release-notes", issue.number);
    assert_eq!(pulls[0].head.name, branch);
    assert_eq!(
        subjects(&s.remote, &branch),
        ["Sample agent: work on the issue", "Initial commit"]
    );
    assert!(s.app.log().contains("publishing now"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_issue_is_dispatched_while_the_workspace_root_lacks_free_space() {
    // More free bytes than any disk has: the issue is queued and waits.
    let s = Scenario::start_with(&["--commit"], Duration::ZERO, u64::MAX / 2).await;
    let issue = s.issue("Add release notes");
    s.deliver(&issue, "assigned").await;
    s.wait_for_state(&issue, IssueState::Ready).await;
    let logged = poll(async || s.app.log().contains("too little free space").then_some(())).await;
    if logged.is_none() {
        s.fail("the lack of space was not logged");
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(s.state(&issue).await, Some(IssueState::Ready));
    assert!(s.store.sessions_for_issue(&issue).await.unwrap().is_empty());
    assert!(s.remote_branches().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_session_hands_over_the_workspace_state_and_the_next_one_publishes() {
    let prompts = tempfile::tempdir().unwrap();
    let log = prompts.path().join("prompts.txt");
    let log_arg = log.display().to_string();
    // A burst at step 2 takes the context past 80% of the window; these agents cannot compact,
    // so the session is rotated and the next one resumes after the burst.
    let s = Scenario::start(&[
        "--burst-at-step",
        "2",
        "--burst-tokens",
        "160000",
        "--write-file",
        "NOTES.md",
        "--commit",
        "--prompt-log",
        &log_arg,
    ])
    .await;
    let issue = s.issue("Write the notes");
    s.deliver(&issue, "assigned").await;
    s.wait_for_state(&issue, IssueState::Completed).await;

    let told = std::fs::read_to_string(&log).unwrap();
    let sessions: Vec<&str> = told
        .split("\n----\n")
        .filter(|p| !p.trim().is_empty())
        .collect();
    assert_eq!(sessions.len(), 2, "one rotation: {told}");
    let branch = format!("mosaic/{}-write-the-notes", issue.number);
    assert!(
        !sessions[0].contains("Workspace: branch"),
        "the first session has no hand-over: {}",
        sessions[0]
    );
    assert!(
        sessions[1].contains(&format!("Workspace: branch `{branch}`")),
        "the second session is told the workspace's state: {}",
        sessions[1]
    );
    // The second session worked in the same worktree and its work was published.
    s.wait_outbox_delivered(&issue).await;
    assert_eq!(
        subjects(&s.remote, &branch),
        ["Sample agent: work on the issue", "Initial commit"]
    );
    assert_eq!(s.pull_requests().len(), 1);
}
