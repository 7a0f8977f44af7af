//! The mock's in-memory data, shaped like Gitea's.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, SubsecRound, Utc};
use mosaic_domain::{IssueRef, RepoName};

use crate::types::{
    Comment, CommitStatus, Hook, InternalTracker, Issue, IssueState, Label, Permission,
    PullRequest, Repository, RepositoryMeta, User,
};

/// One request the mock received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedRequest {
    pub method: String,
    /// The path, e.g. `/api/v1/repos/o/r/issues/1/comments`.
    pub path: String,
    pub query: Option<String>,
    /// The `Authorization` header was present (its value is never recorded).
    pub authenticated: bool,
    pub status: u16,
}

/// Makes the next `times` requests matching `method` and `path_contains` fail with `status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InjectedFailure {
    /// `None` matches every method.
    pub method: Option<String>,
    pub path_contains: String,
    pub status: u16,
    pub times: u32,
    /// Sent as `Retry-After` with the failure.
    pub retry_after: Option<String>,
    /// How long the mock waits before answering (a hanging Gitea).
    pub delay: Option<std::time::Duration>,
}

impl InjectedFailure {
    pub fn new(path_contains: &str, status: u16, times: u32) -> Self {
        Self {
            method: None,
            path_contains: path_contains.to_owned(),
            status,
            times,
            retry_after: None,
            delay: None,
        }
    }

    pub fn with_retry_after(mut self, value: &str) -> Self {
        self.retry_after = Some(value.to_owned());
        self
    }

    /// Answers only after `delay` (a Gitea that hangs, then fails).
    pub fn after(mut self, delay: std::time::Duration) -> Self {
        self.delay = Some(delay);
        self
    }

    pub fn for_method(mut self, method: &str) -> Self {
        self.method = Some(method.to_ascii_uppercase());
        self
    }
}

/// An issue to seed with [`super::MockGitea::create_issue`].
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NewIssue {
    pub title: String,
    pub body: String,
    /// Login of the author; created when unknown. Empty: `alice`.
    pub author: String,
    pub assignees: Vec<String>,
    /// Label names; missing repository labels are created.
    pub labels: Vec<String>,
}

impl NewIssue {
    pub fn titled(title: &str) -> Self {
        Self {
            title: title.to_owned(),
            ..Self::default()
        }
    }

    pub fn body(mut self, body: &str) -> Self {
        body.clone_into(&mut self.body);
        self
    }

    pub fn assigned_to(mut self, login: &str) -> Self {
        self.assignees.push(login.to_owned());
        self
    }

    pub fn labelled(mut self, name: &str) -> Self {
        self.labels.push(name.to_owned());
        self
    }

    pub fn by(mut self, login: &str) -> Self {
        login.clone_into(&mut self.author);
        self
    }
}

/// A hook as stored, with the secret Gitea keeps but never returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MockHook {
    pub hook: Hook,
    pub secret: String,
}

#[derive(Debug, Clone)]
pub(crate) struct MockIssue {
    pub id: i64,
    pub title: String,
    pub body: String,
    pub author: String,
    pub assignees: Vec<String>,
    pub label_ids: Vec<i64>,
    pub state: IssueState,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub closed_at: Option<DateTime<Utc>>,
    pub comments: Vec<Comment>,
    /// Issues that block this one.
    pub blocked_by: Vec<IssueRef>,
}

#[derive(Debug, Clone)]
pub(crate) struct MockRepo {
    pub id: i64,
    pub issues: BTreeMap<u64, MockIssue>,
    pub next_number: u64,
    pub labels: Vec<Label>,
    pub hooks: Vec<MockHook>,
    pub dependencies_enabled: bool,
    /// Per-login permissions; a login not listed has full (admin) access.
    pub permissions: HashMap<String, Permission>,
    /// The `clone_url` the repository object shows; empty (nothing to clone) when unset.
    pub clone_url: Option<String>,
    pub default_branch: String,
    /// Pull requests; their numbers share the sequence of the issues, as in Gitea.
    pub pulls: Vec<PullRequest>,
    /// Commit statuses by commit id, oldest first.
    pub statuses: BTreeMap<String, Vec<CommitStatus>>,
}

#[derive(Debug)]
pub(crate) struct State {
    /// `http://127.0.0.1:PORT`, for `Link` headers and `url` fields.
    pub base_url: String,
    next_id: i64,
    /// By lower-case login.
    pub users: BTreeMap<String, User>,
    /// Token → lower-case login.
    pub tokens: HashMap<String, String>,
    pub repos: BTreeMap<RepoName, MockRepo>,
    pub failures: Vec<InjectedFailure>,
    pub requests: Vec<RecordedRequest>,
    /// Gitea's `[api] MAX_RESPONSE_ITEMS`.
    pub max_page_size: usize,
    /// Gitea's `[api] DEFAULT_PAGING_NUM`.
    pub default_page_size: usize,
    /// How long every request takes before it is answered (a slow or distant Gitea).
    pub latency: std::time::Duration,
}

pub(crate) fn now() -> DateTime<Utc> {
    Utc::now().trunc_subsecs(0)
}

impl State {
    pub fn new(base_url: String) -> Self {
        Self {
            base_url,
            next_id: 1,
            users: BTreeMap::new(),
            tokens: HashMap::new(),
            repos: BTreeMap::new(),
            failures: Vec::new(),
            requests: Vec::new(),
            max_page_size: 50,
            default_page_size: 30,
            latency: std::time::Duration::ZERO,
        }
    }

    pub fn next_id(&mut self) -> i64 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    pub fn ensure_user(&mut self, login: &str) -> User {
        let key = login.to_ascii_lowercase();
        if let Some(user) = self.users.get(&key) {
            return user.clone();
        }
        let user = User {
            id: self.next_id(),
            login: login.to_owned(),
            full_name: String::new(),
            email: format!("{key}@mock.invalid"),
            is_admin: false,
        };
        self.users.insert(key, user.clone());
        user
    }

    pub fn user(&self, login: &str) -> Option<&User> {
        self.users.get(&login.to_ascii_lowercase())
    }

    pub fn ensure_repo(&mut self, repo: &RepoName) -> &mut MockRepo {
        self.ensure_user(repo.owner());
        let id = if self.repos.contains_key(repo) {
            0
        } else {
            self.next_id()
        };
        self.repos
            .entry(repo.clone())
            .or_insert_with(|| MockRepo::new(id))
    }

    pub fn permission(&self, repo: &RepoName, login: &str) -> Permission {
        self.repos
            .get(repo)
            .and_then(|r| r.permissions.get(&login.to_ascii_lowercase()).copied())
            .unwrap_or(Permission {
                admin: true,
                push: true,
                pull: true,
            })
    }

    /// Finds or creates a repository label, returning its id.
    pub fn ensure_label(&mut self, repo: &RepoName, name: &str, color: &str) -> i64 {
        if let Some(label) = self
            .repos
            .get(repo)
            .and_then(|r| r.labels.iter().find(|l| l.name == name))
        {
            return label.id;
        }
        let id = self.next_id();
        let url = format!("{}/api/v1/repos/{repo}/labels/{id}", self.base_url);
        self.ensure_repo(repo).labels.push(Label {
            id,
            name: name.to_owned(),
            color: color.trim_start_matches('#').to_ascii_lowercase(),
            description: String::new(),
            exclusive: false,
            is_archived: false,
            url,
        });
        id
    }

    pub fn repository(&self, repo: &RepoName, login: &str) -> Option<Repository> {
        let stored = self.repos.get(repo)?;
        let owner = self.user(repo.owner()).cloned()?;
        Some(Repository {
            id: stored.id,
            name: repo.name().to_owned(),
            full_name: repo.to_string(),
            owner,
            private: false,
            archived: false,
            has_issues: true,
            permissions: Some(self.permission(repo, login)),
            internal_tracker: Some(InternalTracker {
                enable_time_tracker: true,
                allow_only_contributors_to_track_time: true,
                enable_issue_dependencies: stored.dependencies_enabled,
            }),
            clone_url: stored.clone_url.clone().unwrap_or_default(),
            default_branch: stored.default_branch.clone(),
        })
    }

    /// The issue in Gitea's JSON shape.
    pub fn render_issue(&self, repo: &RepoName, number: u64) -> Option<Issue> {
        let stored_repo = self.repos.get(repo)?;
        let issue = stored_repo.issues.get(&number)?;
        let user_or_ghost = |login: &str| {
            self.user(login).cloned().unwrap_or(User {
                id: -1,
                login: "Ghost".to_owned(),
                full_name: String::new(),
                email: String::new(),
                is_admin: false,
            })
        };
        let assignees: Vec<User> = issue.assignees.iter().map(|l| user_or_ghost(l)).collect();
        let labels = issue
            .label_ids
            .iter()
            .filter_map(|id| stored_repo.labels.iter().find(|l| l.id == *id).cloned())
            .collect();
        Some(Issue {
            id: issue.id,
            number,
            url: format!("{}/api/v1/repos/{repo}/issues/{number}", self.base_url),
            html_url: format!("{}/{repo}/issues/{number}", self.base_url),
            user: user_or_ghost(&issue.author),
            title: issue.title.clone(),
            body: issue.body.clone(),
            labels,
            assignee: assignees.first().cloned(),
            assignees,
            state: issue.state,
            is_locked: false,
            comments: issue.comments.len() as u64,
            created_at: issue.created_at,
            updated_at: issue.updated_at,
            closed_at: issue.closed_at,
            pull_request: None,
            repository: Some(RepositoryMeta {
                id: stored_repo.id,
                name: repo.name().to_owned(),
                owner: repo.owner().to_owned(),
                full_name: repo.to_string(),
            }),
        })
    }

    pub fn issue_mut(&mut self, issue: &IssueRef) -> Option<&mut MockIssue> {
        self.repos
            .get_mut(&issue.repo)?
            .issues
            .get_mut(&issue.number)
    }

    pub fn create_issue(&mut self, repo: &RepoName, new: NewIssue) -> IssueRef {
        let author = if new.author.is_empty() {
            "alice".to_owned()
        } else {
            new.author
        };
        self.ensure_user(&author);
        let assignees: Vec<String> = new
            .assignees
            .iter()
            .map(|login| self.ensure_user(login).login)
            .collect();
        let label_ids = new
            .labels
            .iter()
            .map(|name| self.ensure_label(repo, name, "#ededed"))
            .collect();
        let id = self.next_id();
        let created = now();
        let stored_repo = self.ensure_repo(repo);
        let number = stored_repo.next_number;
        stored_repo.next_number += 1;
        stored_repo.issues.insert(
            number,
            MockIssue {
                id,
                title: new.title,
                body: new.body,
                author,
                assignees,
                label_ids,
                state: IssueState::Open,
                created_at: created,
                updated_at: created,
                closed_at: None,
                comments: Vec::new(),
                blocked_by: Vec::new(),
            },
        );
        IssueRef::new(repo.clone(), number)
    }
}

impl MockRepo {
    fn new(id: i64) -> Self {
        Self {
            id,
            issues: BTreeMap::new(),
            next_number: 1,
            labels: Vec::new(),
            hooks: Vec::new(),
            dependencies_enabled: true,
            permissions: HashMap::new(),
            clone_url: None,
            default_branch: "main".to_owned(),
            pulls: Vec::new(),
            statuses: BTreeMap::new(),
        }
    }
}
