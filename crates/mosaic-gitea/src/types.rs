//! Request and response bodies mirroring Gitea's REST API (`/api/v1`), limited to the fields the
//! coordinator reads. Unknown fields are ignored, so newer Gitea versions keep working; fields
//! Gitea sends as `null` instead of an empty list are read as empty. Only what the coordinator
//! decides on is required (ids it refers back to, names, numbers, states); everything else has a
//! default, so a reply from an older, newer or trimmed Gitea (a comment without `created_at`)
//! is not taken for a failure after Gitea did the work.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use mosaic_domain::{IssueRef, RepoName};
use serde::{Deserialize, Deserializer, Serialize};

fn null_as_empty<'de, D, T>(deserializer: D) -> Result<Vec<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Ok(Option::<Vec<T>>::deserialize(deserializer)?.unwrap_or_default())
}

fn null_as_default<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Option::<T>::deserialize(deserializer)?.unwrap_or_default())
}

/// A time Gitea did not send: never read by the coordinator, only kept for display.
fn unknown_time() -> DateTime<Utc> {
    DateTime::UNIX_EPOCH
}

fn null_as_empty_string<'de, D>(deserializer: D) -> Result<String, D::Error>
where
    D: Deserializer<'de>,
{
    Ok(Option::<String>::deserialize(deserializer)?.unwrap_or_default())
}

/// A Gitea account (`GET /user`, posters, assignees). A missing user reads as one with an
/// empty login, which is never the bot and never an assignee.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct User {
    #[serde(default)]
    pub id: i64,
    #[serde(default, deserialize_with = "null_as_empty_string")]
    pub login: String,
    #[serde(default, deserialize_with = "null_as_empty_string")]
    pub full_name: String,
    #[serde(default, deserialize_with = "null_as_empty_string")]
    pub email: String,
    #[serde(default)]
    pub is_admin: bool,
}

impl User {
    /// Gitea logins are unique regardless of case.
    pub fn is(&self, login: &str) -> bool {
        self.login.eq_ignore_ascii_case(login)
    }
}

/// A repository label.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Label {
    pub id: i64,
    pub name: String,
    /// Six hex digits; Gitea answers without `#` (older versions with).
    #[serde(default, deserialize_with = "null_as_empty_string")]
    pub color: String,
    #[serde(default, deserialize_with = "null_as_empty_string")]
    pub description: String,
    #[serde(default)]
    pub exclusive: bool,
    #[serde(default)]
    pub is_archived: bool,
    #[serde(default, deserialize_with = "null_as_empty_string")]
    pub url: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IssueState {
    Open,
    Closed,
}

/// The short repository description embedded in issues.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RepositoryMeta {
    #[serde(default)]
    pub id: i64,
    #[serde(default, deserialize_with = "null_as_empty_string")]
    pub name: String,
    #[serde(default, deserialize_with = "null_as_empty_string")]
    pub owner: String,
    pub full_name: String,
}

/// Present on an "issue" that is really a pull request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PullRequestMeta {
    #[serde(default)]
    pub merged: bool,
}

/// An issue (`GET /repos/{owner}/{repo}/issues/{index}` and listings).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Issue {
    #[serde(default)]
    pub id: i64,
    /// The per-repository issue number (Gitea calls it `index` in paths).
    pub number: u64,
    #[serde(default, deserialize_with = "null_as_empty_string")]
    pub url: String,
    #[serde(default, deserialize_with = "null_as_empty_string")]
    pub html_url: String,
    #[serde(default, deserialize_with = "null_as_default")]
    pub user: User,
    #[serde(default, deserialize_with = "null_as_empty_string")]
    pub title: String,
    #[serde(default, deserialize_with = "null_as_empty_string")]
    pub body: String,
    #[serde(default, deserialize_with = "null_as_empty")]
    pub labels: Vec<Label>,
    #[serde(default)]
    pub assignee: Option<User>,
    #[serde(default, deserialize_with = "null_as_empty")]
    pub assignees: Vec<User>,
    pub state: IssueState,
    #[serde(default)]
    pub is_locked: bool,
    #[serde(default)]
    pub comments: u64,
    #[serde(default = "unknown_time")]
    pub created_at: DateTime<Utc>,
    #[serde(default = "unknown_time")]
    pub updated_at: DateTime<Utc>,
    #[serde(default)]
    pub closed_at: Option<DateTime<Utc>>,
    #[serde(default)]
    pub pull_request: Option<PullRequestMeta>,
    #[serde(default)]
    pub repository: Option<RepositoryMeta>,
}

impl Issue {
    /// `owner/name#N`, when Gitea named the repository and the name is valid.
    pub fn issue_ref(&self) -> Option<IssueRef> {
        let repo: RepoName = self.repository.as_ref()?.full_name.parse().ok()?;
        Some(IssueRef::new(repo, self.number))
    }

    pub fn is_open(&self) -> bool {
        self.state == IssueState::Open
    }

    pub fn is_pull_request(&self) -> bool {
        self.pull_request.is_some()
    }

    pub fn is_assigned_to(&self, login: &str) -> bool {
        self.assignees.iter().any(|user| user.is(login))
            || self.assignee.as_ref().is_some_and(|user| user.is(login))
    }

    pub fn assignee_logins(&self) -> Vec<String> {
        let mut logins: Vec<String> = self.assignees.iter().map(|u| u.login.clone()).collect();
        if let Some(single) = &self.assignee
            && !logins.iter().any(|l| single.is(l))
        {
            logins.push(single.login.clone());
        }
        logins
    }

    pub fn label_names(&self) -> Vec<String> {
        self.labels.iter().map(|l| l.name.clone()).collect()
    }

    pub fn has_label(&self, name: &str) -> bool {
        self.labels.iter().any(|l| l.name == name)
    }
}

/// A comment on an issue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Comment {
    pub id: i64,
    #[serde(default, deserialize_with = "null_as_empty_string")]
    pub html_url: String,
    #[serde(default, deserialize_with = "null_as_empty_string")]
    pub issue_url: String,
    #[serde(default, deserialize_with = "null_as_default")]
    pub user: User,
    #[serde(default, deserialize_with = "null_as_empty_string")]
    pub body: String,
    #[serde(default = "unknown_time")]
    pub created_at: DateTime<Utc>,
    #[serde(default = "unknown_time")]
    pub updated_at: DateTime<Utc>,
}

/// What the token may do in a repository.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Permission {
    #[serde(default)]
    pub admin: bool,
    #[serde(default)]
    pub push: bool,
    #[serde(default)]
    pub pull: bool,
}

/// The repository's issue tracker settings (only present when it uses Gitea's own tracker).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct InternalTracker {
    #[serde(default)]
    pub enable_time_tracker: bool,
    #[serde(default)]
    pub allow_only_contributors_to_track_time: bool,
    #[serde(default)]
    pub enable_issue_dependencies: bool,
}

/// A repository (`GET /repos/{owner}/{repo}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Repository {
    #[serde(default)]
    pub id: i64,
    #[serde(default, deserialize_with = "null_as_empty_string")]
    pub name: String,
    pub full_name: String,
    #[serde(default, deserialize_with = "null_as_default")]
    pub owner: User,
    #[serde(default)]
    pub private: bool,
    #[serde(default)]
    pub archived: bool,
    #[serde(default)]
    pub has_issues: bool,
    #[serde(default)]
    pub permissions: Option<Permission>,
    #[serde(default)]
    pub internal_tracker: Option<InternalTracker>,
    /// Where the repository is cloned from over HTTP(S) (workspaces fetch and push here).
    #[serde(default, deserialize_with = "null_as_empty_string")]
    pub clone_url: String,
    /// The branch new work starts from.
    #[serde(default, deserialize_with = "null_as_empty_string")]
    pub default_branch: String,
}

/// A repository webhook. Gitea never returns the hook's secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hook {
    pub id: i64,
    #[serde(rename = "type")]
    pub kind: String,
    /// `url` and `content_type` (plus type-specific keys).
    #[serde(default)]
    pub config: BTreeMap<String, String>,
    #[serde(default, deserialize_with = "null_as_empty")]
    pub events: Vec<String>,
    #[serde(default)]
    pub active: bool,
    #[serde(default, deserialize_with = "null_as_empty_string")]
    pub branch_filter: String,
    #[serde(default)]
    pub created_at: Option<DateTime<Utc>>,
    #[serde(default)]
    pub updated_at: Option<DateTime<Utc>>,
}

impl Hook {
    pub fn target_url(&self) -> Option<&str> {
        self.config.get("url").map(String::as_str)
    }

    pub fn content_type(&self) -> Option<&str> {
        self.config.get("content_type").map(String::as_str)
    }
}

/// Body of `POST /repos/{owner}/{repo}/hooks`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreateHookOption {
    #[serde(rename = "type")]
    pub kind: String,
    pub config: BTreeMap<String, String>,
    pub events: Vec<String>,
    #[serde(default)]
    pub branch_filter: String,
    pub active: bool,
}

/// Body of `PATCH /repos/{owner}/{repo}/hooks/{id}`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct EditHookOption {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub events: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active: Option<bool>,
}

/// Body of `POST /repos/{owner}/{repo}/issues/{index}/comments` and of the comment PATCH.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommentOption {
    pub body: String,
}

/// One end of a pull request (`head` or `base`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PullRequestBranch {
    /// The branch name.
    #[serde(rename = "ref", default, deserialize_with = "null_as_empty_string")]
    pub name: String,
    #[serde(default, deserialize_with = "null_as_empty_string")]
    pub sha: String,
}

/// A pull request (`GET /repos/{owner}/{repo}/pulls/{index}`), limited to what the coordinator
/// reads.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PullRequest {
    pub id: i64,
    pub number: u64,
    #[serde(default, deserialize_with = "null_as_empty_string")]
    pub title: String,
    #[serde(default, deserialize_with = "null_as_empty_string")]
    pub body: String,
    #[serde(default, deserialize_with = "null_as_empty_string")]
    pub html_url: String,
    pub state: IssueState,
    pub head: PullRequestBranch,
    pub base: PullRequestBranch,
}

/// Body of `POST /repos/{owner}/{repo}/pulls`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreatePullRequestOption {
    pub head: String,
    pub base: String,
    pub title: String,
    pub body: String,
}

/// Body of `PATCH /repos/{owner}/{repo}/pulls/{index}`, limited to what the coordinator edits.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct EditPullRequestOption {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
}

/// A commit status's state, as Gitea names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CommitStatusState {
    Pending,
    Success,
    Error,
    Failure,
    Warning,
}

/// Body of `POST /repos/{owner}/{repo}/statuses/{sha}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreateStatusOption {
    pub state: CommitStatusState,
    /// What reports it (`mosaic/test`); Gitea shows the newest status per context.
    pub context: String,
    #[serde(default)]
    pub description: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub target_url: String,
}

/// A commit status as Gitea answers it (`status` is its state).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommitStatus {
    #[serde(default)]
    pub id: i64,
    #[serde(rename = "status")]
    pub state: CommitStatusState,
    #[serde(default, deserialize_with = "null_as_empty_string")]
    pub context: String,
    #[serde(default, deserialize_with = "null_as_empty_string")]
    pub description: String,
}

/// Body of `POST /repos/{owner}/{repo}/labels`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreateLabelOption {
    pub name: String,
    /// `#rrggbb`.
    pub color: String,
    #[serde(default)]
    pub description: String,
}

/// Body of `POST /repos/{owner}/{repo}/issues/{index}/labels`: label ids (understood by every
/// Gitea version, unlike names).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IssueLabelsOption {
    pub labels: Vec<i64>,
}

/// Body of `PATCH /repos/{owner}/{repo}/issues/{index}`, limited to what the coordinator edits.
/// `assignees` replaces the whole list.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct EditIssueOption {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub assignees: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<IssueState>,
}

/// Which issues a repository listing returns.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct IssueFilter {
    pub state: StateFilter,
    /// Issues carrying any of these labels (Gitea's semantics); empty: no label filter.
    pub labels: Vec<String>,
    /// Only issues assigned to this login.
    pub assignee: Option<String>,
}

impl IssueFilter {
    pub fn open_assigned_to(login: &str) -> Self {
        Self {
            state: StateFilter::Open,
            labels: Vec::new(),
            assignee: Some(login.to_owned()),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StateFilter {
    #[default]
    Open,
    Closed,
    All,
}

impl StateFilter {
    pub fn as_query(self) -> &'static str {
        match self {
            Self::Open => "open",
            Self::Closed => "closed",
            Self::All => "all",
        }
    }
}

/// The answer to "what blocks this issue": Gitea's list, or the news that the repository has
/// dependencies switched off (the caller then relies on the references in the metadata).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dependencies {
    Listed(Vec<Issue>),
    DependenciesDisabled,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_missing_fields_the_coordinator_does_not_use_still_decode() {
        // A comment reply as a trimmed or older Gitea may send it (no dates, no poster).
        let comment: Comment = serde_json::from_str(r#"{"id": 7, "body": "ok"}"#).unwrap();
        assert_eq!(comment.id, 7);
        assert!(!comment.user.is("mosaic-bot"), "a missing poster is nobody");
        // An issue reply with what decisions need: number and state.
        let issue: Issue = serde_json::from_str(
            r#"{"number": 3, "state": "closed", "assignees": null, "user": null}"#,
        )
        .unwrap();
        assert!(!issue.is_open());
        assert!(issue.assignee_logins().is_empty());
        let label: Label = serde_json::from_str(r#"{"id": 1, "name": "mosaic:done"}"#).unwrap();
        assert_eq!(label.name, "mosaic:done");
        // What decisions rest on stays required: a comment without an id is an error.
        assert!(serde_json::from_str::<Comment>(r#"{"body": "x"}"#).is_err());
        assert!(serde_json::from_str::<Issue>(r#"{"number": 3}"#).is_err());
    }

    /// An issue as Gitea 1.22 sends it, trimmed of fields the coordinator ignores only where
    /// they are long; `assignees: null` and a `closed_at: null` are kept on purpose.
    const GITEA_ISSUE: &str = r##"{
      "id": 1201, "url": "https://git.example/api/v1/repos/mosaic/coordinator/issues/12",
      "html_url": "https://git.example/mosaic/coordinator/issues/12", "number": 12,
      "user": {"id": 3, "login": "alice", "login_name": "", "source_id": 0, "full_name": "Alice",
               "email": "alice@example.com", "avatar_url": "x", "html_url": "x", "language": "",
               "is_admin": false, "last_login": "0001-01-01T00:00:00Z",
               "created": "2024-01-01T10:00:00+01:00", "restricted": false, "active": true,
               "prohibit_login": false, "location": "", "website": "", "description": "",
               "visibility": "public", "followers_count": 0, "following_count": 0,
               "starred_repos_count": 0, "username": "alice"},
      "original_author": "", "original_author_id": 0, "title": "Add caching",
      "body": "Depends on #11", "ref": "", "assets": [],
      "labels": [{"id": 5, "name": "mosaic:queued", "exclusive": false, "is_archived": false,
                  "color": "1d76db", "description": "", "url": "x"}],
      "milestone": null, "assignee": null, "assignees": null, "state": "open",
      "is_locked": false, "comments": 2, "created_at": "2024-03-01T09:30:00+01:00",
      "updated_at": "2024-03-02T09:30:00Z", "closed_at": null, "due_date": null,
      "pull_request": null,
      "repository": {"id": 7, "name": "coordinator", "owner": "mosaic",
                     "full_name": "mosaic/coordinator"},
      "pin_order": 0
    }"##;

    #[test]
    fn reads_a_gitea_issue() {
        let issue: Issue = serde_json::from_str(GITEA_ISSUE).unwrap();
        assert_eq!(
            issue.issue_ref().unwrap().to_string(),
            "mosaic/coordinator#12"
        );
        assert!(issue.assignees.is_empty());
        assert!(issue.is_open());
        assert!(!issue.is_pull_request());
        assert!(issue.has_label("mosaic:queued"));
        assert_eq!(issue.created_at.to_rfc3339(), "2024-03-01T08:30:00+00:00");
        assert_eq!(issue.closed_at, None);
    }

    #[test]
    fn assignment_checks_ignore_case_and_merge_both_fields() {
        let mut issue: Issue = serde_json::from_str(GITEA_ISSUE).unwrap();
        let bot = User {
            id: 9,
            login: "Mosaic-Bot".into(),
            full_name: String::new(),
            email: String::new(),
            is_admin: false,
        };
        issue.assignee = Some(bot.clone());
        assert!(issue.is_assigned_to("mosaic-bot"));
        assert_eq!(issue.assignee_logins(), vec!["Mosaic-Bot".to_owned()]);
        issue.assignees = vec![bot];
        assert_eq!(issue.assignee_logins(), vec!["Mosaic-Bot".to_owned()]);
    }

    #[test]
    fn reads_a_gitea_hook_and_skips_unset_edit_fields() {
        let hook: Hook = serde_json::from_str(
            r#"{"id": 4, "type": "gitea", "branch_filter": "*",
                "config": {"content_type": "json", "url": "https://mosaic.example/webhook/gitea"},
                "events": ["issues", "issue_comment"], "authorization_header": "",
                "active": true, "updated_at": "2024-03-02T09:30:00Z",
                "created_at": "2024-03-02T09:30:00Z"}"#,
        )
        .unwrap();
        assert_eq!(
            hook.target_url(),
            Some("https://mosaic.example/webhook/gitea")
        );
        assert_eq!(hook.content_type(), Some("json"));
        let edit = EditHookOption {
            active: Some(true),
            ..EditHookOption::default()
        };
        assert_eq!(serde_json::to_string(&edit).unwrap(), r#"{"active":true}"#);
    }
}
