//! A repository served over git's smart HTTP (requiring the bot token), a mock Gitea whose
//! repository names it as `clone_url`, and the built coordinator whose agents are the sample
//! agent: the set-up of the black-box tests that follow an issue to its pull request (publish,
//! gates), with what they read back (state, outbox, branches, pull requests, comments, API).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hmac::{Hmac, KeyInit, Mac};
use mosaic_domain::{IssueRef, IssueState, RepoName};
use mosaic_gitea::PullRequest;
use mosaic_gitea::mock::{MockGitea, NewIssue};
use mosaic_store::{OutboxStatus, SessionOutcome, Store, StoreConfig};
use mosaic_store_sqlite::SqliteStore;
use mosaic_testkit::GitHttpServer;
use mosaic_testkit::repo::{create_bare_repository, git};
use serde_json::Value;

use crate::helpers::{Running, SECRET, binary, toml_string};

/// How long one step of a scenario may take before the test fails.
const STEP: Duration = Duration::from_secs(40);
const HUMAN: &str = "alice";
pub(crate) const OWNER: &str = "e2e";

/// What differs between scenarios.
pub(crate) struct Setup<'a> {
    /// The repository's name (under `e2e/`).
    pub name: &'a str,
    /// The sample agent's arguments, for every built-in profile.
    pub agent_args: Vec<&'a str>,
    /// Extra lines of the `[engine]` section.
    pub engine: &'a str,
    /// More configuration after the rest (e.g. a `[gates]` section).
    pub extra: &'a str,
    /// The git server answers each request only after this (a slow push).
    pub git_delay: Duration,
    pub min_free_bytes: u64,
    /// The agent profiles' `[runner.agents.*]` sections; `None`: the sample agent with
    /// `agent_args` for every built-in profile.
    pub agents: Option<String>,
}

impl Setup<'_> {
    pub(crate) fn config_toml(&self, gitea_url: &str, data: &Path) -> String {
        let program = binary("mosaic-coordinator");
        let mut text = format!(
            "[gitea]\nurl = {}\ntoken = {}\nreconcile_interval_secs = 3600\nrepositories = [\"e2e/elsewhere\"]\n\n\
             [inbox]\nidle_poll_ms = 100\n\n\
             [engine]\ndispatch_poll_ms = 100\n{}\n\n\
             [runner]\nwork_root = {}\nkill_grace_secs = 2\n\n\
             [workspace]\nroot = {}\nmin_free_bytes = {}\n\n{}\n",
            toml_string(gitea_url),
            toml_string(MockGitea::BOT_TOKEN),
            self.engine,
            toml_string(&data.join("work").display().to_string()),
            toml_string(&data.join("workspaces").display().to_string()),
            self.min_free_bytes,
            self.extra,
        );
        if let Some(agents) = &self.agents {
            text.push_str(agents);
            return text;
        }
        let args: Vec<String> = std::iter::once("sample-agent")
            .chain(self.agent_args.iter().copied())
            .map(toml_string)
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
}

pub(crate) const BODY: &str = "## Context Estimate\n- Total estimated: 20000 tokens\n- Recommended agent: glm\n\n\
                    ## Difficulty\nlow\n\n## Dependencies\nNone\n";

pub(crate) struct Scenario {
    pub gitea: MockGitea,
    pub repo: RepoName,
    /// The bare repository the git server serves.
    pub remote: PathBuf,
    _git: GitHttpServer,
    _projects: tempfile::TempDir,
    pub app: Running,
    pub store: Arc<dyn Store>,
    config: PathBuf,
}

impl Scenario {
    /// Starts the git server with a fresh repository `e2e/<setup.name>`, the mock Gitea and the
    /// coordinator.
    pub(crate) async fn start(setup: Setup<'_>) -> Self {
        let name = setup.name;
        let projects = tempfile::tempdir().unwrap();
        let remote = create_bare_repository(projects.path(), OWNER, name, "main").unwrap();
        let git_server =
            GitHttpServer::start_with_delay(projects.path(), MockGitea::BOT_TOKEN, setup.git_delay)
                .await
                .unwrap();
        let (gitea, url) = MockGitea::start().await.unwrap();
        let repo: RepoName = format!("{OWNER}/{name}").parse().unwrap();
        gitea.create_repo(&repo);
        gitea.set_clone_url(&repo, &git_server.clone_url(OWNER, name));
        gitea.create_repo(&"e2e/elsewhere".parse().unwrap());
        let data = tempfile::tempdir().unwrap();
        let config = data.path().join("mosaic-e2e.toml");
        std::fs::write(&config, setup.config_toml(url.as_str(), data.path())).unwrap();
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
    pub(crate) async fn crash_and_restart(self) -> Self {
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

    pub(crate) fn issue(&self, title: &str) -> IssueRef {
        self.gitea.create_issue(
            &self.repo,
            NewIssue::titled(title)
                .body(BODY)
                .by(HUMAN)
                .assigned_to(MockGitea::BOT_LOGIN),
        )
    }

    pub(crate) async fn deliver(&self, issue: &IssueRef, action: &str) {
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

    pub(crate) async fn state(&self, issue: &IssueRef) -> Option<IssueState> {
        self.store
            .get_issue(issue)
            .await
            .unwrap()
            .map(|record| record.state)
    }

    pub(crate) async fn wait_for_state(&self, issue: &IssueRef, wanted: IssueState) {
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

    pub(crate) async fn wait_outbox_delivered(&self, issue: &IssueRef) {
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

    pub(crate) async fn api_issue(&self, issue: &IssueRef) -> Value {
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
    pub(crate) fn remote_branches(&self) -> Vec<(String, String)> {
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

    /// The names of the remote's branches under `mosaic/`.
    pub(crate) fn remote_branch_names(&self) -> Vec<String> {
        self.remote_branches()
            .into_iter()
            .map(|(name, _)| name)
            .collect()
    }

    pub(crate) fn comments(&self, issue: &IssueRef) -> Vec<String> {
        self.gitea
            .comments(issue)
            .into_iter()
            .map(|comment| comment.body)
            .collect()
    }

    pub(crate) async fn succeeded_sessions(&self, issue: &IssueRef) -> usize {
        self.store
            .sessions_for_issue(issue)
            .await
            .unwrap()
            .iter()
            .filter(|session| session.outcome == Some(SessionOutcome::Succeeded))
            .count()
    }

    pub(crate) async fn metrics(&self) -> String {
        self.app.get_text("/metrics").await
    }

    pub(crate) fn pull_requests(&self) -> Vec<PullRequest> {
        self.gitea.pull_requests(&self.repo)
    }

    pub(crate) fn status_comment(&self, issue: &IssueRef) -> String {
        self.gitea
            .comments(issue)
            .into_iter()
            .map(|c| c.body)
            .find(|body| body.contains("mosaic:status"))
            .unwrap_or_default()
    }

    pub(crate) fn worktree(&self, issue: &IssueRef) -> PathBuf {
        self.app
            .data
            .path()
            .join("workspaces/worktrees")
            .join(issue.repo.owner())
            .join(issue.repo.name())
            .join(format!("issue-{}", issue.number))
    }

    pub(crate) fn fail(&self, message: &str) -> ! {
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

pub(crate) async fn poll<T>(mut probe: impl AsyncFnMut() -> Option<T>) -> Option<T> {
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
pub(crate) fn subjects(remote: &Path, branch: &str) -> Vec<String> {
    git(remote, &["log", "--format=%s", branch])
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}
