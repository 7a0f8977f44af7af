//! The HTTP client for Gitea's REST API: authentication, timeouts, typed errors, pagination,
//! optional pacing (bounded request rate) and an observer hook for metrics.

use std::collections::HashSet;
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use http::{HeaderMap, HeaderValue, Method, header};
use mosaic_domain::{IssueRef, RepoName};
use mosaic_security::Secret;
use serde::Serialize;
use serde::de::DeserializeOwned;
use url::Url;

use crate::config::GiteaConfig;
use crate::error::{GiteaError, error_message_from_body};
use crate::types::{
    Comment, CommentOption, CommitStatus, CreateHookOption, CreateLabelOption,
    CreatePullRequestOption, CreateStatusOption, Dependencies, EditHookOption, EditIssueOption,
    EditPullRequestOption, Hook, Issue, IssueFilter, IssueLabelsOption, IssueState, Label,
    PullRequest, Repository, StateFilter, User,
};

/// Items asked for per page: Gitea's default `[api] MAX_RESPONSE_ITEMS` (it caps larger values).
pub const PAGE_LIMIT: u32 = 50;
/// Default bound on the pages one listing may walk (5,000 items at the default page size).
pub const DEFAULT_MAX_PAGES: u32 = 100;

/// How one call ended, for metrics ("Gitea calls by status").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallOutcome {
    Status(u16),
    Timeout,
    TransportError,
}

/// Receives one record per HTTP request the client makes.
pub trait CallObserver: Send + Sync + fmt::Debug {
    /// `operation` is a fixed, low-cardinality name such as `issue.comments.create`.
    fn observe(&self, operation: &'static str, outcome: CallOutcome, elapsed: Duration);
}

/// Spaces requests evenly so that at most `per_second` start in any second.
#[derive(Debug)]
pub struct RequestPacer {
    interval: Duration,
    next_slot: tokio::sync::Mutex<Option<tokio::time::Instant>>,
}

impl RequestPacer {
    /// `per_second` of 0 is treated as 1: a pacer that never lets anything through would hang.
    pub fn per_second(per_second: u32) -> Self {
        Self {
            interval: Duration::from_secs(1) / per_second.max(1),
            next_slot: tokio::sync::Mutex::new(None),
        }
    }

    /// Waits for this request's slot. Waiters queue on the lock, so slots are taken in order.
    pub async fn wait(&self) {
        let mut next_slot = self.next_slot.lock().await;
        let now = tokio::time::Instant::now();
        let slot = match *next_slot {
            Some(slot) if slot > now => {
                tokio::time::sleep_until(slot).await;
                slot
            }
            _ => now,
        };
        *next_slot = Some(slot + self.interval);
    }
}

/// A Gitea REST client. Cheap to clone (clones share the connection pool).
#[derive(Debug, Clone)]
pub struct GiteaClient {
    http: reqwest::Client,
    /// `…/api/v1` of the configured Gitea.
    api_base: Url,
    has_token: bool,
    config: Arc<GiteaConfig>,
    max_pages: u32,
    pacer: Option<Arc<RequestPacer>>,
    observer: Option<Arc<dyn CallObserver>>,
    /// Repositories whose disabled dependency feature was already logged (log once per repo).
    dependencies_disabled_logged: Arc<Mutex<HashSet<RepoName>>>,
}

/// A `User-Agent` naming the coordinator and its version.
pub fn user_agent() -> String {
    format!("mosaic-coordinator/{}", env!("CARGO_PKG_VERSION"))
}

impl GiteaClient {
    /// Builds a client from the `[gitea]` section; without a token requests are anonymous.
    pub fn new(config: &GiteaConfig) -> Result<Self, GiteaError> {
        let mut headers = HeaderMap::new();
        headers.insert(header::ACCEPT, HeaderValue::from_static("application/json"));
        if let Some(token) = &config.token {
            headers.insert(header::AUTHORIZATION, authorization_value(token)?);
        }
        let http = reqwest::Client::builder()
            .user_agent(user_agent())
            .default_headers(headers)
            .connect_timeout(config.connect_timeout())
            .timeout(config.request_timeout())
            .build()
            .map_err(|e| GiteaError::InvalidRequest(format!("cannot build HTTP client: {e}")))?;
        Ok(Self {
            http,
            api_base: api_base(&config.url)?,
            has_token: config.token.is_some(),
            config: Arc::new(config.clone()),
            max_pages: DEFAULT_MAX_PAGES,
            pacer: None,
            observer: None,
            dependencies_disabled_logged: Arc::new(Mutex::new(HashSet::new())),
        })
    }

    /// Paces every request of this client (and its clones made afterwards).
    pub fn with_pacer(mut self, pacer: RequestPacer) -> Self {
        self.pacer = Some(Arc::new(pacer));
        self
    }

    pub fn with_observer(mut self, observer: Arc<dyn CallObserver>) -> Self {
        self.observer = Some(observer);
        self
    }

    /// Bound on the pages one listing may walk before it fails with `TooManyPages`.
    pub fn with_max_pages(mut self, max_pages: u32) -> Self {
        self.max_pages = max_pages.max(1);
        self
    }

    pub fn has_token(&self) -> bool {
        self.has_token
    }

    pub fn config(&self) -> &GiteaConfig {
        &self.config
    }

    /// `…/api/v1`.
    pub fn api_base(&self) -> &Url {
        &self.api_base
    }

    // ---- endpoints outside the engine's trait (set-up commands) ----

    /// `GET /repos/{owner}/{repo}`.
    pub async fn get_repository(&self, repo: &RepoName) -> Result<Repository, GiteaError> {
        let url = self.endpoint(&["repos", repo.owner(), repo.name()])?;
        self.get_json("repo.get", url).await
    }

    /// `GET /repos/{owner}/{repo}/hooks`, every page.
    pub async fn list_hooks(&self, repo: &RepoName) -> Result<Vec<Hook>, GiteaError> {
        let url = self.endpoint(&["repos", repo.owner(), repo.name(), "hooks"])?;
        self.get_all_pages("repo.hooks.list", url).await
    }

    /// `POST /repos/{owner}/{repo}/hooks`.
    pub async fn create_hook(
        &self,
        repo: &RepoName,
        hook: &CreateHookOption,
    ) -> Result<Hook, GiteaError> {
        let url = self.endpoint(&["repos", repo.owner(), repo.name(), "hooks"])?;
        self.send_json("repo.hooks.create", Method::POST, url, hook)
            .await
    }

    /// `PATCH /repos/{owner}/{repo}/hooks/{id}`.
    pub async fn edit_hook(
        &self,
        repo: &RepoName,
        hook_id: i64,
        edit: &EditHookOption,
    ) -> Result<Hook, GiteaError> {
        let id = hook_id.to_string();
        let url = self.endpoint(&["repos", repo.owner(), repo.name(), "hooks", &id])?;
        self.send_json("repo.hooks.edit", Method::PATCH, url, edit)
            .await
    }

    /// `GET /repos/{owner}/{repo}/labels`, every page.
    pub async fn list_labels(&self, repo: &RepoName) -> Result<Vec<Label>, GiteaError> {
        let url = self.endpoint(&["repos", repo.owner(), repo.name(), "labels"])?;
        self.get_all_pages("repo.labels.list", url).await
    }

    /// `POST /repos/{owner}/{repo}/labels`.
    pub async fn create_label(
        &self,
        repo: &RepoName,
        label: &CreateLabelOption,
    ) -> Result<Label, GiteaError> {
        let url = self.endpoint(&["repos", repo.owner(), repo.name(), "labels"])?;
        self.send_json("repo.labels.create", Method::POST, url, label)
            .await
    }

    // ---- the engine's calls (also reachable through `GiteaApi`) ----

    /// `GET /user`: who the token belongs to.
    pub async fn current_user(&self) -> Result<User, GiteaError> {
        let url = self.endpoint(&["user"])?;
        self.get_json("user.current", url).await
    }

    /// `GET /repos/{owner}/{repo}/issues/{index}`.
    pub async fn get_issue(&self, issue: &IssueRef) -> Result<Issue, GiteaError> {
        let url = self.issue_endpoint(issue, &[])?;
        self.get_json("issue.get", url).await
    }

    /// `GET /repos/{owner}/{repo}/issues?type=issues&…`, every page.
    pub async fn list_issues(
        &self,
        repo: &RepoName,
        filter: &IssueFilter,
    ) -> Result<Vec<Issue>, GiteaError> {
        let mut url = self.endpoint(&["repos", repo.owner(), repo.name(), "issues"])?;
        {
            let mut query = url.query_pairs_mut();
            query.append_pair("type", "issues");
            query.append_pair("state", filter.state.as_query());
            if !filter.labels.is_empty() {
                query.append_pair("labels", &filter.labels.join(","));
            }
            if let Some(assignee) = &filter.assignee {
                query.append_pair("assigned_by", assignee);
            }
        }
        self.get_all_pages("repo.issues.list", url).await
    }

    /// `GET /repos/issues/search?type=issues&assigned=true&…`: issues assigned to the token's
    /// user across every repository it can see, every page.
    pub async fn search_issues_assigned_to_me(
        &self,
        state: StateFilter,
    ) -> Result<Vec<Issue>, GiteaError> {
        let mut url = self.endpoint(&["repos", "issues", "search"])?;
        url.query_pairs_mut()
            .append_pair("type", "issues")
            .append_pair("state", state.as_query())
            .append_pair("assigned", "true");
        self.get_all_pages("issues.search", url).await
    }

    /// `GET /repos/{owner}/{repo}/issues/{index}/comments` (Gitea returns them all at once).
    pub async fn list_comments(&self, issue: &IssueRef) -> Result<Vec<Comment>, GiteaError> {
        let url = self.issue_endpoint(issue, &["comments"])?;
        self.get_json("issue.comments.list", url).await
    }

    /// The first comment by `author` carrying `key`'s marker, if any (a marker anyone else
    /// wrote does not count).
    pub async fn find_marked_comment(
        &self,
        issue: &IssueRef,
        key: &crate::IdempotencyKey,
        author: &str,
    ) -> Result<Option<Comment>, GiteaError> {
        let comments = self.list_comments(issue).await?;
        Ok(comments
            .into_iter()
            .find(|c| c.user.is(author) && key.is_in(&c.body)))
    }

    /// `POST /repos/{owner}/{repo}/issues/{index}/comments`.
    pub async fn create_comment(
        &self,
        issue: &IssueRef,
        body: &str,
    ) -> Result<Comment, GiteaError> {
        let url = self.issue_endpoint(issue, &["comments"])?;
        let body = CommentOption {
            body: body.to_owned(),
        };
        self.send_json("issue.comments.create", Method::POST, url, &body)
            .await
    }

    /// `PATCH /repos/{owner}/{repo}/issues/comments/{id}`.
    pub async fn edit_comment(
        &self,
        repo: &RepoName,
        comment_id: i64,
        body: &str,
    ) -> Result<Comment, GiteaError> {
        let id = comment_id.to_string();
        let url = self.endpoint(&[
            "repos",
            repo.owner(),
            repo.name(),
            "issues",
            "comments",
            &id,
        ])?;
        let body = CommentOption {
            body: body.to_owned(),
        };
        self.send_json("issue.comments.edit", Method::PATCH, url, &body)
            .await
    }

    /// Adds labels by name, creating missing repository labels with their configured colour.
    /// Returns the issue's labels afterwards.
    pub async fn add_labels(
        &self,
        issue: &IssueRef,
        names: &[String],
    ) -> Result<Vec<Label>, GiteaError> {
        if names.is_empty() {
            return Ok(self.get_issue(issue).await?.labels);
        }
        let existing = self.list_labels(&issue.repo).await?;
        let mut ids = Vec::with_capacity(names.len());
        for name in names {
            let id = match existing.iter().find(|label| &label.name == name) {
                Some(label) => label.id,
                None => self.create_managed_label(&issue.repo, name).await?.id,
            };
            if !ids.contains(&id) {
                ids.push(id);
            }
        }
        let url = self.issue_endpoint(issue, &["labels"])?;
        self.send_json(
            "issue.labels.add",
            Method::POST,
            url,
            &IssueLabelsOption { labels: ids },
        )
        .await
    }

    /// Creates the repository label `name` with its configured colour.
    pub async fn create_managed_label(
        &self,
        repo: &RepoName,
        name: &str,
    ) -> Result<Label, GiteaError> {
        let created = self
            .create_label(
                repo,
                &CreateLabelOption {
                    name: name.to_owned(),
                    color: self.config.label_colour(name),
                    description: "Managed by Mosaic Coordinator".to_owned(),
                },
            )
            .await?;
        tracing::info!(repo = %repo, label = %name, "created missing label");
        Ok(created)
    }

    /// `POST /repos/{owner}/{repo}/issues/{index}/labels` by label id; returns the issue's
    /// labels afterwards. Gitea answers 422 for an id the repository does not have.
    pub async fn add_label_ids(
        &self,
        issue: &IssueRef,
        ids: &[i64],
    ) -> Result<Vec<Label>, GiteaError> {
        let url = self.issue_endpoint(issue, &["labels"])?;
        self.send_json(
            "issue.labels.add",
            Method::POST,
            url,
            &IssueLabelsOption {
                labels: ids.to_vec(),
            },
        )
        .await
    }

    /// `PUT /repos/{owner}/{repo}/issues/{index}/labels`: the issue's labels become exactly
    /// `ids`; returns them.
    pub async fn replace_labels(
        &self,
        issue: &IssueRef,
        ids: &[i64],
    ) -> Result<Vec<Label>, GiteaError> {
        let url = self.issue_endpoint(issue, &["labels"])?;
        self.send_json(
            "issue.labels.replace",
            Method::PUT,
            url,
            &IssueLabelsOption {
                labels: ids.to_vec(),
            },
        )
        .await
    }

    /// Removes a label by name; a label the repository does not have is already "removed".
    pub async fn remove_label(
        &self,
        issue: &IssueRef,
        name: &str,
    ) -> Result<LabelRemoval, GiteaError> {
        let labels = self.list_labels(&issue.repo).await?;
        let Some(label) = labels.iter().find(|label| label.name == name) else {
            return Ok(LabelRemoval::NotInRepository);
        };
        let id = label.id.to_string();
        let url = self.issue_endpoint(issue, &["labels", &id])?;
        self.send_no_content("issue.labels.remove", Method::DELETE, url)
            .await?;
        Ok(LabelRemoval::Removed)
    }

    /// Adds and removes assignees. Gitea's PATCH replaces the whole list, so the current list is
    /// read first and merged; nothing is sent when the merge changes nothing.
    pub async fn update_assignees(
        &self,
        issue: &IssueRef,
        add: &[String],
        remove: &[String],
    ) -> Result<Issue, GiteaError> {
        let current = self.get_issue(issue).await?;
        let current_logins = current.assignee_logins();
        let merged = merge_assignees(&current_logins, add, remove);
        if same_logins(&merged, &current_logins) {
            return Ok(current);
        }
        let url = self.issue_endpoint(issue, &[])?;
        let edit = EditIssueOption {
            assignees: Some(merged),
            ..EditIssueOption::default()
        };
        self.send_json("issue.edit.assignees", Method::PATCH, url, &edit)
            .await
    }

    /// `GET /repos/{owner}/{repo}/issues/{index}/dependencies`: the issues that block this one.
    /// Gitea answers 404 both for a missing issue and for a repository with dependencies
    /// disabled; one extra request tells the two apart.
    pub async fn dependencies(&self, issue: &IssueRef) -> Result<Dependencies, GiteaError> {
        let url = self.issue_endpoint(issue, &["dependencies"])?;
        match self.get_all_pages("issue.dependencies", url).await {
            Ok(blockers) => Ok(Dependencies::Listed(blockers)),
            Err(GiteaError::NotFound { .. }) => {
                self.get_issue(issue).await?;
                self.log_dependencies_disabled_once(&issue.repo);
                Ok(Dependencies::DependenciesDisabled)
            }
            Err(other) => Err(other),
        }
    }

    /// `GET /repos/{owner}/{repo}/issues/{index}/blocks`: the issues this one blocks.
    pub async fn blocks(&self, issue: &IssueRef) -> Result<Vec<Issue>, GiteaError> {
        let url = self.issue_endpoint(issue, &["blocks"])?;
        self.get_all_pages("issue.blocks", url).await
    }

    /// `PATCH /repos/{owner}/{repo}/issues/{index}` with `state=closed`.
    pub async fn close_issue(&self, issue: &IssueRef) -> Result<Issue, GiteaError> {
        let url = self.issue_endpoint(issue, &[])?;
        let edit = EditIssueOption {
            state: Some(IssueState::Closed),
            ..EditIssueOption::default()
        };
        self.send_json("issue.edit.close", Method::PATCH, url, &edit)
            .await
    }

    /// `POST /repos/{owner}/{repo}/pulls`. Gitea answers 409 when an open pull request from
    /// `head` into `base` exists already.
    pub async fn create_pull_request(
        &self,
        repo: &RepoName,
        pull: &CreatePullRequestOption,
    ) -> Result<PullRequest, GiteaError> {
        let url = self.endpoint(&["repos", repo.owner(), repo.name(), "pulls"])?;
        self.send_json("repo.pulls.create", Method::POST, url, pull)
            .await
    }

    /// `GET /repos/{owner}/{repo}/pulls/{base}/{head}`: the pull request from `head` into
    /// `base`.
    pub async fn pull_request_by_branches(
        &self,
        repo: &RepoName,
        base: &str,
        head: &str,
    ) -> Result<PullRequest, GiteaError> {
        let url = self.endpoint(&["repos", repo.owner(), repo.name(), "pulls", base, head])?;
        self.get_json("repo.pulls.get_by_branches", url).await
    }

    /// `PATCH /repos/{owner}/{repo}/pulls/{index}`.
    pub async fn edit_pull_request(
        &self,
        repo: &RepoName,
        number: u64,
        edit: &EditPullRequestOption,
    ) -> Result<PullRequest, GiteaError> {
        let index = number.to_string();
        let url = self.endpoint(&["repos", repo.owner(), repo.name(), "pulls", &index])?;
        self.send_json("repo.pulls.edit", Method::PATCH, url, edit)
            .await
    }

    /// `POST /repos/{owner}/{repo}/statuses/{sha}`: a status on the commit `sha`. Repeating it
    /// adds an entry that says the same; Gitea shows the newest per context.
    pub async fn create_commit_status(
        &self,
        repo: &RepoName,
        sha: &str,
        status: &CreateStatusOption,
    ) -> Result<CommitStatus, GiteaError> {
        let url = self.endpoint(&["repos", repo.owner(), repo.name(), "statuses", sha])?;
        self.send_json("repo.statuses.create", Method::POST, url, status)
            .await
    }

    fn log_dependencies_disabled_once(&self, repo: &RepoName) {
        let first_time = self
            .dependencies_disabled_logged
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(repo.clone());
        if first_time {
            tracing::warn!(
                %repo,
                "issue dependencies are disabled in this repository; using the references in the issue metadata instead"
            );
        }
    }

    // ---- plumbing ----

    fn endpoint(&self, segments: &[&str]) -> Result<Url, GiteaError> {
        let mut url = self.api_base.clone();
        url.path_segments_mut()
            .map_err(|()| {
                GiteaError::InvalidRequest(format!("`{}` cannot be a base URL", self.api_base))
            })?
            .pop_if_empty()
            .extend(segments);
        Ok(url)
    }

    fn issue_endpoint(&self, issue: &IssueRef, tail: &[&str]) -> Result<Url, GiteaError> {
        let number = issue.number.to_string();
        let mut segments = vec![
            "repos",
            issue.repo.owner(),
            issue.repo.name(),
            "issues",
            &number,
        ];
        segments.extend_from_slice(tail);
        self.endpoint(&segments)
    }

    async fn send(
        &self,
        operation: &'static str,
        request: reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, GiteaError> {
        if let Some(pacer) = &self.pacer {
            pacer.wait().await;
        }
        let started = Instant::now();
        let result = request.send().await;
        let elapsed = started.elapsed();
        let response = match result {
            Ok(response) => {
                self.observe(
                    operation,
                    CallOutcome::Status(response.status().as_u16()),
                    elapsed,
                );
                response
            }
            Err(error) => {
                let outcome = if error.is_timeout() {
                    CallOutcome::Timeout
                } else {
                    CallOutcome::TransportError
                };
                self.observe(operation, outcome, elapsed);
                return Err(transport_error(operation, &error));
            }
        };
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let retry_after = response
            .headers()
            .get(header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        // The body only explains the failure; if it cannot be read the status still decides.
        let body = response.text().await.unwrap_or_default();
        Err(GiteaError::from_status(
            operation,
            status.as_u16(),
            error_message_from_body(&body),
            retry_after,
        ))
    }

    /// A GET with the read timeout: reads sit on the delivery path (dependencies, blocker
    /// states) and have a fallback, so a hanging Gitea must not hold them for a write's timeout.
    fn read(&self, url: Url) -> reqwest::RequestBuilder {
        self.http.get(url).timeout(self.config.read_timeout())
    }

    fn observe(&self, operation: &'static str, outcome: CallOutcome, elapsed: Duration) {
        if let Some(observer) = &self.observer {
            observer.observe(operation, outcome, elapsed);
        }
    }

    async fn get_json<T: DeserializeOwned>(
        &self,
        operation: &'static str,
        url: Url,
    ) -> Result<T, GiteaError> {
        let response = self.send(operation, self.read(url)).await?;
        decode(operation, response).await
    }

    async fn send_json<B: Serialize + ?Sized, T: DeserializeOwned>(
        &self,
        operation: &'static str,
        method: Method,
        url: Url,
        body: &B,
    ) -> Result<T, GiteaError> {
        let response = self
            .send(operation, self.http.request(method, url).json(body))
            .await?;
        // A 2xx is success: an unreadable answer does not undo the write.
        decode(operation, response).await.map_err(|err| match err {
            GiteaError::Decode { operation, message } => {
                GiteaError::WrittenUnreadable { operation, message }
            }
            other => other,
        })
    }

    async fn send_no_content(
        &self,
        operation: &'static str,
        method: Method,
        url: Url,
    ) -> Result<(), GiteaError> {
        self.send(operation, self.http.request(method, url))
            .await
            .map(drop)
    }

    /// Walks `url`'s pages (`page`, `limit`) following `Link: rel="next"` and stopping at
    /// `X-Total-Count`, an empty page or the last page; more than `max_pages` pages is an error
    /// rather than a silently truncated list.
    async fn get_all_pages<T: DeserializeOwned>(
        &self,
        operation: &'static str,
        url: Url,
    ) -> Result<Vec<T>, GiteaError> {
        let mut items: Vec<T> = Vec::new();
        let mut page: u32 = 1;
        let mut pages_read: u32 = 0;
        loop {
            if pages_read >= self.max_pages {
                return Err(GiteaError::TooManyPages {
                    operation,
                    max_pages: self.max_pages,
                });
            }
            let mut page_url = url.clone();
            page_url
                .query_pairs_mut()
                .append_pair("page", &page.to_string())
                .append_pair("limit", &PAGE_LIMIT.to_string());
            let response = self.send(operation, self.read(page_url)).await?;
            pages_read += 1;
            let total = response
                .headers()
                .get("x-total-count")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<usize>().ok());
            let next = response
                .headers()
                .get_all(header::LINK)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .find_map(next_page_from_link);
            let batch: Vec<T> = decode(operation, response).await?;
            let batch_was_empty = batch.is_empty();
            items.extend(batch);
            if batch_was_empty || total.is_some_and(|total| items.len() >= total) {
                break;
            }
            match next {
                // A `next` that does not move forward would loop forever.
                Some(next) if next > page => page = next,
                _ => break,
            }
        }
        Ok(items)
    }
}

/// What `remove_label` found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LabelRemoval {
    Removed,
    /// The repository has no label of that name, so the issue cannot carry it.
    NotInRepository,
}

fn authorization_value(token: &Secret) -> Result<HeaderValue, GiteaError> {
    let mut value =
        HeaderValue::from_str(&format!("token {}", token.expose_secret())).map_err(|_| {
            GiteaError::InvalidRequest(
                "the Gitea token contains characters not allowed in an HTTP header".to_owned(),
            )
        })?;
    value.set_sensitive(true);
    Ok(value)
}

/// `https://git.example/sub/` → `https://git.example/sub/api/v1`.
fn api_base(base: &Url) -> Result<Url, GiteaError> {
    let mut url = base.clone();
    url.set_query(None);
    url.set_fragment(None);
    url.path_segments_mut()
        .map_err(|()| GiteaError::InvalidRequest(format!("`{base}` cannot be a base URL")))?
        .pop_if_empty()
        .extend(["api", "v1"]);
    Ok(url)
}

fn transport_error(operation: &'static str, error: &reqwest::Error) -> GiteaError {
    if error.is_timeout() {
        return GiteaError::Timeout { operation };
    }
    // The chain holds the useful part ("connection refused", a TLS complaint).
    let mut message = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    GiteaError::Transport { operation, message }
}

async fn decode<T: DeserializeOwned>(
    operation: &'static str,
    response: reqwest::Response,
) -> Result<T, GiteaError> {
    let bytes = response
        .bytes()
        .await
        .map_err(|error| transport_error(operation, &error))?;
    serde_json::from_slice(&bytes).map_err(|error| GiteaError::Decode {
        operation,
        message: error.to_string(),
    })
}

/// The page number of the `rel="next"` entry of a `Link` header. Only the number is taken: the
/// URL itself is built from Gitea's `ROOT_URL`, which is often not the address we reach it at.
pub(crate) fn next_page_from_link(link: &str) -> Option<u32> {
    link.split(',').find_map(|entry| {
        let (target, params) = entry.trim().split_once(';')?;
        let is_next = params
            .split(';')
            .any(|param| matches!(param.trim(), "rel=\"next\"" | "rel=next"));
        if !is_next {
            return None;
        }
        let target = target.trim().strip_prefix('<')?.strip_suffix('>')?;
        let url = Url::parse(target)
            .or_else(|_| Url::parse("http://relative.invalid")?.join(target))
            .ok()?;
        url.query_pairs()
            .find(|(key, _)| key == "page")
            .and_then(|(_, value)| value.parse().ok())
    })
}

/// `current ∪ add − remove`, keeping the current order, comparing logins case-insensitively.
pub(crate) fn merge_assignees(
    current: &[String],
    add: &[String],
    remove: &[String],
) -> Vec<String> {
    let removed = |login: &str| remove.iter().any(|r| r.eq_ignore_ascii_case(login));
    let mut merged: Vec<String> = Vec::new();
    for login in current.iter().chain(add) {
        if !removed(login) && !merged.iter().any(|m| m.eq_ignore_ascii_case(login)) {
            merged.push(login.clone());
        }
    }
    merged
}

fn same_logins(a: &[String], b: &[String]) -> bool {
    a.len() == b.len()
        && a.iter()
            .all(|x| b.iter().any(|y| y.eq_ignore_ascii_case(x)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_base_keeps_a_sub_path() {
        let check = |input: &str, expect: &str| {
            assert_eq!(
                api_base(&Url::parse(input).unwrap()).unwrap().as_str(),
                expect
            );
        };
        check("https://git.example", "https://git.example/api/v1");
        check("https://git.example/", "https://git.example/api/v1");
        check(
            "https://git.example/gitea/",
            "https://git.example/gitea/api/v1",
        );
        check(
            "http://127.0.0.1:3000/x?y=1",
            "http://127.0.0.1:3000/x/api/v1",
        );
    }

    #[test]
    fn link_headers_yield_the_next_page() {
        let check = |input: &str, expect: Option<u32>| {
            assert_eq!(next_page_from_link(input), expect, "{input:?}");
        };
        check(
            r#"<https://g.example/api/v1/repos/o/r/issues?limit=2&page=3&state=open>; rel="next",<https://g.example/api/v1/repos/o/r/issues?limit=2&page=9&state=open>; rel="last""#,
            Some(3),
        );
        check(
            r#"<https://g.example/x?page=1>; rel="first", <https://g.example/x?page=2>; rel="prev""#,
            None,
        );
        check(r#"</api/v1/x?page=4>; rel="next""#, Some(4));
        check(r#"<https://g.example/x?page=abc>; rel="next""#, None);
        check("garbage", None);
        check("", None);
    }

    #[test]
    fn assignees_merge_without_duplicates() {
        let v = |items: &[&str]| items.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        let check = |current: &[&str], add: &[&str], remove: &[&str], expect: &[&str]| {
            assert_eq!(merge_assignees(&v(current), &v(add), &v(remove)), v(expect));
        };
        check(&["alice"], &["mosaic-bot"], &[], &["alice", "mosaic-bot"]);
        check(
            &["alice", "Mosaic-Bot"],
            &["mosaic-bot"],
            &[],
            &["alice", "Mosaic-Bot"],
        );
        check(&["alice", "mosaic-bot"], &[], &["MOSAIC-BOT"], &["alice"]);
        check(&[], &["a", "a"], &[], &["a"]);
        check(&["a"], &["b"], &["b"], &["a"]);
        assert!(same_logins(&v(&["A", "b"]), &v(&["B", "a"])));
        assert!(!same_logins(&v(&["a"]), &v(&["a", "b"])));
    }

    #[tokio::test]
    async fn the_pacer_spaces_requests() {
        let pacer = RequestPacer::per_second(50);
        let start = tokio::time::Instant::now();
        for _ in 0..5 {
            pacer.wait().await;
        }
        // Five requests at 50/s: the fifth starts four intervals (80 ms) after the first.
        assert!(
            start.elapsed() >= Duration::from_millis(80),
            "{:?}",
            start.elapsed()
        );
    }
}
