//! An in-memory Gitea for tests of every crate and for the coordinator's `demo` command.
//!
//! It serves the routes the coordinator calls, with Gitea's status codes, JSON shapes and paging
//! (`Link`, `X-Total-Count`), lets a test seed issues, users, dependencies and permissions, inject
//! failures (the next N requests on a path answer 500, 401, …) and inspect what the coordinator
//! did (comments, labels, assignees, hooks, the request log). [`GitHttpServer`] serves bare
//! repositories over git's smart HTTP (the real `git http-backend`) for the `clone_url`s it
//! names, refusing requests without the bot's token as Gitea does; [`repo`] makes and reads the
//! bare repositories it serves with git plumbing.
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! use mosaic_gitea::mock::{MockGitea, NewIssue};
//! let (gitea, base_url) = MockGitea::start().await?;
//! let repo = "mosaic/coordinator".parse().expect("valid name");
//! let issue = gitea.create_issue(&repo, NewIssue::titled("Add caching").assigned_to("mosaic-bot"));
//! // … point a GiteaClient at `base_url` with `MockGitea::BOT_TOKEN` …
//! assert!(gitea.comments(&issue).is_empty());
//! # Ok(()) }
//! ```

mod git_http;
pub mod repo;
mod routes;
mod state;

use std::sync::{Arc, Mutex};

use mosaic_domain::{IssueRef, RepoName};
use mosaic_security::Secret;
use tokio::task::JoinHandle;
use url::Url;

pub use git_http::{GitHttpServer, ServedRequest};
pub use state::{InjectedFailure, MockHook, NewIssue, RecordedRequest};

use crate::types::{Comment, CommitStatus, Issue, IssueState, Label, Permission, PullRequest};
use routes::{Shared, lock};
use state::State;

/// A running mock Gitea. Clones share the server; it stops when the last clone is dropped.
#[derive(Debug, Clone)]
pub struct MockGitea {
    shared: Shared,
    base_url: Url,
    _server: Arc<ServerTask>,
}

#[derive(Debug)]
struct ServerTask(JoinHandle<()>);

impl Drop for ServerTask {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl MockGitea {
    /// The bot user every fresh mock knows.
    pub const BOT_LOGIN: &'static str = "mosaic-bot";
    /// The bot's token.
    pub const BOT_TOKEN: &'static str = "mock-bot-token";

    /// Starts the server on `127.0.0.1` with a free port; returns the handle and Gitea's base
    /// URL (without `/api/v1`). Must be called inside a Tokio runtime.
    pub async fn start() -> std::io::Result<(Self, Url)> {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?;
        let address = listener.local_addr()?;
        let base_url = Url::parse(&format!("http://{address}"))
            .map_err(|e| std::io::Error::other(format!("mock URL: {e}")))?;
        let mut state = State::new(base_url.as_str().trim_end_matches('/').to_owned());
        state.ensure_user(Self::BOT_LOGIN);
        state
            .tokens
            .insert(Self::BOT_TOKEN.to_owned(), Self::BOT_LOGIN.to_owned());
        let shared: Shared = Arc::new(Mutex::new(state));
        let app = routes::router(shared.clone());
        let server = tokio::spawn(async move {
            if let Err(error) = axum::serve(listener, app).await {
                tracing::error!(%error, "mock Gitea stopped");
            }
        });
        let mock = Self {
            shared,
            base_url: base_url.clone(),
            _server: Arc::new(ServerTask(server)),
        };
        Ok((mock, base_url))
    }

    pub fn base_url(&self) -> &Url {
        &self.base_url
    }

    /// The bot's token as the coordinator's configuration holds it.
    pub fn bot_token(&self) -> Secret {
        Secret::new(Self::BOT_TOKEN)
    }

    // ---- seeding ----

    /// Adds a user (if new) and returns a token for it: `token-<login>`.
    pub fn add_user(&self, login: &str) -> String {
        let mut state = lock(&self.shared);
        let user = state.ensure_user(login);
        let token = format!("token-{}", user.login.to_ascii_lowercase());
        state
            .tokens
            .insert(token.clone(), user.login.to_ascii_lowercase());
        token
    }

    pub fn create_repo(&self, repo: &RepoName) {
        lock(&self.shared).ensure_repo(repo);
    }

    /// Creates an issue (and the repository, author, assignees and labels it names).
    pub fn create_issue(&self, repo: &RepoName, issue: NewIssue) -> IssueRef {
        lock(&self.shared).create_issue(repo, issue)
    }

    /// The `clone_url` the repository object shows (e.g. a test git server's repository).
    pub fn set_clone_url(&self, repo: &RepoName, clone_url: &str) {
        lock(&self.shared).ensure_repo(repo).clone_url = Some(clone_url.to_owned());
    }

    /// The repository's `default_branch` (`main` unless set).
    pub fn set_default_branch(&self, repo: &RepoName, branch: &str) {
        branch.clone_into(&mut lock(&self.shared).ensure_repo(repo).default_branch);
    }

    /// Switches the repository's issue dependencies on or off (off: the API answers 404).
    pub fn set_dependencies_enabled(&self, repo: &RepoName, enabled: bool) {
        lock(&self.shared).ensure_repo(repo).dependencies_enabled = enabled;
    }

    /// Records that `blocker` blocks `blocked`. Returns false when `blocked` does not exist.
    pub fn add_dependency(&self, blocked: &IssueRef, blocker: &IssueRef) -> bool {
        let mut state = lock(&self.shared);
        match state.issue_mut(blocked) {
            Some(issue) => {
                if !issue.blocked_by.contains(blocker) {
                    issue.blocked_by.push(blocker.clone());
                }
                true
            }
            None => false,
        }
    }

    pub fn remove_dependency(&self, blocked: &IssueRef, blocker: &IssueRef) -> bool {
        let mut state = lock(&self.shared);
        match state.issue_mut(blocked) {
            Some(issue) => {
                issue.blocked_by.retain(|b| b != blocker);
                true
            }
            None => false,
        }
    }

    /// Changes an issue's state as a person would in Gitea's UI (no webhook is sent).
    pub fn set_issue_state(&self, issue: &IssueRef, new_state: IssueState) -> bool {
        let mut state = lock(&self.shared);
        match state.issue_mut(issue) {
            Some(stored) => {
                if stored.state != new_state {
                    stored.closed_at = (new_state == IssueState::Closed).then(state::now);
                }
                stored.state = new_state;
                stored.updated_at = state::now();
                true
            }
            None => false,
        }
    }

    /// Replaces an issue's body as a person editing it would (no webhook is sent).
    pub fn set_body(&self, issue: &IssueRef, body: &str) -> bool {
        let mut state = lock(&self.shared);
        match state.issue_mut(issue) {
            Some(stored) => {
                stored.body = body.to_owned();
                stored.updated_at = state::now();
                true
            }
            None => false,
        }
    }

    /// Replaces an issue's assignees as a person would (no webhook is sent).
    pub fn set_assignees(&self, issue: &IssueRef, logins: &[&str]) -> bool {
        let mut state = lock(&self.shared);
        let logins: Vec<String> = logins
            .iter()
            .map(|login| state.ensure_user(login).login)
            .collect();
        match state.issue_mut(issue) {
            Some(stored) => {
                stored.assignees = logins;
                stored.updated_at = state::now();
                true
            }
            None => false,
        }
    }

    /// Puts the label `name` on an issue as a person would in the web UI (creating the
    /// repository label when missing); false when the issue does not exist.
    pub fn add_issue_label(&self, issue: &IssueRef, name: &str) -> bool {
        let mut state = lock(&self.shared);
        if state.issue_mut(issue).is_none() {
            return false;
        }
        let id = state.ensure_label(&issue.repo, name, "#ededed");
        match state.issue_mut(issue) {
            Some(stored) => {
                if !stored.label_ids.contains(&id) {
                    stored.label_ids.push(id);
                }
                stored.updated_at = state::now();
                true
            }
            None => false,
        }
    }

    /// Deletes an issue (Gitea admins can); later calls on it answer 404.
    pub fn delete_issue(&self, issue: &IssueRef) -> bool {
        lock(&self.shared)
            .repos
            .get_mut(&issue.repo)
            .is_some_and(|r| r.issues.remove(&issue.number).is_some())
    }

    /// Limits what `login` may do in `repo` (by default every user is an admin everywhere).
    pub fn set_permission(&self, repo: &RepoName, login: &str, permission: Permission) {
        lock(&self.shared)
            .ensure_repo(repo)
            .permissions
            .insert(login.to_ascii_lowercase(), permission);
    }

    /// Gitea's `MAX_RESPONSE_ITEMS`: larger `limit`s are capped (to test paging with few items).
    pub fn set_max_page_size(&self, max: usize) {
        lock(&self.shared).max_page_size = max.max(1);
    }

    /// Every request from now on is answered only after `latency` (a slow or distant Gitea;
    /// requests still run concurrently). `Duration::ZERO` answers at once again.
    pub fn set_latency(&self, latency: std::time::Duration) {
        lock(&self.shared).latency = latency;
    }

    pub fn inject_failure(&self, failure: InjectedFailure) {
        lock(&self.shared).failures.push(failure);
    }

    /// Forgets the injected failures not used up yet.
    pub fn clear_failures(&self) {
        lock(&self.shared).failures.clear();
    }

    /// The next `times` requests whose path contains `path_contains` answer `status`.
    pub fn fail_next(&self, path_contains: &str, status: u16, times: u32) {
        self.inject_failure(InjectedFailure::new(path_contains, status, times));
    }

    // ---- inspection ----

    pub fn issue(&self, issue: &IssueRef) -> Option<Issue> {
        lock(&self.shared).render_issue(&issue.repo, issue.number)
    }

    /// The body of an `issues` webhook delivery for `issue` as it stands now, as Gitea sends it
    /// (`action`, `number`, `issue`, `repository`, `sender`). `None` for an unknown issue.
    pub fn issue_event(
        &self,
        issue: &IssueRef,
        action: &str,
        sender: &str,
    ) -> Option<serde_json::Value> {
        let current = self.issue(issue)?;
        let owner = issue.repo.owner();
        Some(serde_json::json!({
            "action": action,
            "number": issue.number,
            "issue": current,
            "repository": {
                "id": 1,
                "name": issue.repo.name(),
                "full_name": issue.repo.to_string(),
                "owner": {"id": 1, "login": owner, "username": owner},
                "html_url": format!("{}{}", self.base_url, issue.repo),
                "private": false,
                "default_branch": "main",
            },
            "sender": {"id": 2, "login": sender, "username": sender},
        }))
    }

    pub fn comments(&self, issue: &IssueRef) -> Vec<Comment> {
        lock(&self.shared)
            .issue_mut(issue)
            .map(|i| i.comments.clone())
            .unwrap_or_default()
    }

    /// The issue's label names, in the order they were added.
    pub fn issue_labels(&self, issue: &IssueRef) -> Vec<String> {
        self.issue(issue)
            .map(|i| i.label_names())
            .unwrap_or_default()
    }

    pub fn repo_labels(&self, repo: &RepoName) -> Vec<Label> {
        lock(&self.shared)
            .repos
            .get(repo)
            .map(|r| r.labels.clone())
            .unwrap_or_default()
    }

    /// Deletes a repository label (as a person in Gitea's settings would), taking it off every
    /// issue; false when there was none of that name.
    pub fn delete_repo_label(&self, repo: &RepoName, name: &str) -> bool {
        let mut state = lock(&self.shared);
        let Some(stored) = state.repos.get_mut(repo) else {
            return false;
        };
        let Some(position) = stored.labels.iter().position(|l| l.name == name) else {
            return false;
        };
        let id = stored.labels.remove(position).id;
        for issue in stored.issues.values_mut() {
            issue.label_ids.retain(|l| *l != id);
        }
        true
    }

    pub fn assignees(&self, issue: &IssueRef) -> Vec<String> {
        lock(&self.shared)
            .issue_mut(issue)
            .map(|i| i.assignees.clone())
            .unwrap_or_default()
    }

    /// The statuses put on commit `sha`, oldest first.
    pub fn commit_statuses(&self, repo: &RepoName, sha: &str) -> Vec<CommitStatus> {
        lock(&self.shared)
            .repos
            .get(repo)
            .and_then(|r| r.statuses.get(sha).cloned())
            .unwrap_or_default()
    }

    /// The repository's pull requests, in the order they were opened.
    pub fn pull_requests(&self, repo: &RepoName) -> Vec<PullRequest> {
        lock(&self.shared)
            .repos
            .get(repo)
            .map(|r| r.pulls.clone())
            .unwrap_or_default()
    }

    /// The repository's hooks, with the secrets Gitea's API never shows.
    pub fn hooks(&self, repo: &RepoName) -> Vec<MockHook> {
        lock(&self.shared)
            .repos
            .get(repo)
            .map(|r| r.hooks.clone())
            .unwrap_or_default()
    }

    /// Every request received so far, oldest first.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        lock(&self.shared).requests.clone()
    }

    /// How many requests so far had this method and a path containing `path_contains`.
    pub fn count_requests(&self, method: &str, path_contains: &str) -> usize {
        lock(&self.shared)
            .requests
            .iter()
            .filter(|r| r.method.eq_ignore_ascii_case(method) && r.path.contains(path_contains))
            .count()
    }

    pub fn clear_requests(&self) {
        lock(&self.shared).requests.clear();
    }
}
