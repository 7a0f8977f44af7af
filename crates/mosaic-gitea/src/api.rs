//! `GiteaApi`: exactly the Gitea calls the engine makes, so the engine can be tested without
//! HTTP (with `MockGiteaApi` under the `mockall` feature, or against the mock server).

use async_trait::async_trait;
use mosaic_domain::{IssueRef, RepoName};

use crate::client::GiteaClient;
use crate::error::GiteaError;
use crate::marker::IdempotencyKey;
use crate::types::{
    Comment, CommitStatus, CreatePullRequestOption, CreateStatusOption, Dependencies,
    EditPullRequestOption, Issue, IssueFilter, Label, PullRequest, Repository, StateFilter, User,
};

#[cfg_attr(any(test, feature = "mockall"), mockall::automock)]
#[async_trait]
pub trait GiteaApi: Send + Sync {
    /// The account the token belongs to.
    async fn current_user(&self) -> Result<User, GiteaError>;

    async fn get_issue(&self, issue: &IssueRef) -> Result<Issue, GiteaError>;

    /// Issues (not pull requests) of one repository, every page.
    async fn list_issues(
        &self,
        repo: &RepoName,
        filter: &IssueFilter,
    ) -> Result<Vec<Issue>, GiteaError>;

    /// Issues assigned to the token's own user in every repository it can see, every page.
    async fn search_issues_assigned_to_me(
        &self,
        state: StateFilter,
    ) -> Result<Vec<Issue>, GiteaError>;

    async fn list_comments(&self, issue: &IssueRef) -> Result<Vec<Comment>, GiteaError>;

    /// The first comment by `author` whose body carries `key`'s marker. Anyone can write a
    /// marker into a comment; only the author's own comments count.
    async fn find_marked_comment(
        &self,
        issue: &IssueRef,
        key: &IdempotencyKey,
        author: &str,
    ) -> Result<Option<Comment>, GiteaError>;

    async fn create_comment(&self, issue: &IssueRef, body: &str) -> Result<Comment, GiteaError>;

    async fn edit_comment(
        &self,
        repo: &RepoName,
        comment_id: i64,
        body: &str,
    ) -> Result<Comment, GiteaError>;

    /// The repository's labels, every page.
    async fn list_labels(&self, repo: &RepoName) -> Result<Vec<Label>, GiteaError>;

    /// Creates the repository label `name` (with its configured colour).
    async fn create_managed_label(&self, repo: &RepoName, name: &str) -> Result<Label, GiteaError>;

    /// Adds labels by id; returns the issue's labels afterwards (422 for an unknown id).
    async fn add_label_ids(&self, issue: &IssueRef, ids: &[i64]) -> Result<Vec<Label>, GiteaError>;

    /// Sets the issue's labels to exactly `ids` in one call; returns them.
    async fn replace_labels(&self, issue: &IssueRef, ids: &[i64])
    -> Result<Vec<Label>, GiteaError>;

    /// Merges `add` and `remove` into the current assignees (Gitea replaces the list).
    async fn update_assignees(
        &self,
        issue: &IssueRef,
        add: &[String],
        remove: &[String],
    ) -> Result<Issue, GiteaError>;

    /// The issues blocking this one, or `DependenciesDisabled` for the repository.
    async fn dependencies(&self, issue: &IssueRef) -> Result<Dependencies, GiteaError>;

    /// The issues this one blocks.
    async fn blocks(&self, issue: &IssueRef) -> Result<Vec<Issue>, GiteaError>;

    async fn close_issue(&self, issue: &IssueRef) -> Result<Issue, GiteaError>;

    /// The repository (its `clone_url` and `default_branch` make the workspaces).
    async fn repository(&self, repo: &RepoName) -> Result<Repository, GiteaError>;

    /// Opens a pull request; a 409 (`Conflict`) means one from `head` into `base` is open.
    async fn create_pull_request(
        &self,
        repo: &RepoName,
        pull: &CreatePullRequestOption,
    ) -> Result<PullRequest, GiteaError>;

    /// The pull request from `head` into `base`.
    async fn pull_request_by_branches(
        &self,
        repo: &RepoName,
        base: &str,
        head: &str,
    ) -> Result<PullRequest, GiteaError>;

    async fn edit_pull_request(
        &self,
        repo: &RepoName,
        number: u64,
        edit: &EditPullRequestOption,
    ) -> Result<PullRequest, GiteaError>;

    /// Puts a status on a pushed commit (repeating it is harmless).
    async fn create_commit_status(
        &self,
        repo: &RepoName,
        sha: &str,
        status: &CreateStatusOption,
    ) -> Result<CommitStatus, GiteaError>;
}

#[async_trait]
impl GiteaApi for GiteaClient {
    async fn current_user(&self) -> Result<User, GiteaError> {
        GiteaClient::current_user(self).await
    }

    async fn get_issue(&self, issue: &IssueRef) -> Result<Issue, GiteaError> {
        GiteaClient::get_issue(self, issue).await
    }

    async fn list_issues(
        &self,
        repo: &RepoName,
        filter: &IssueFilter,
    ) -> Result<Vec<Issue>, GiteaError> {
        GiteaClient::list_issues(self, repo, filter).await
    }

    async fn search_issues_assigned_to_me(
        &self,
        state: StateFilter,
    ) -> Result<Vec<Issue>, GiteaError> {
        GiteaClient::search_issues_assigned_to_me(self, state).await
    }

    async fn list_comments(&self, issue: &IssueRef) -> Result<Vec<Comment>, GiteaError> {
        GiteaClient::list_comments(self, issue).await
    }

    async fn find_marked_comment(
        &self,
        issue: &IssueRef,
        key: &IdempotencyKey,
        author: &str,
    ) -> Result<Option<Comment>, GiteaError> {
        GiteaClient::find_marked_comment(self, issue, key, author).await
    }

    async fn create_comment(&self, issue: &IssueRef, body: &str) -> Result<Comment, GiteaError> {
        GiteaClient::create_comment(self, issue, body).await
    }

    async fn edit_comment(
        &self,
        repo: &RepoName,
        comment_id: i64,
        body: &str,
    ) -> Result<Comment, GiteaError> {
        GiteaClient::edit_comment(self, repo, comment_id, body).await
    }

    async fn list_labels(&self, repo: &RepoName) -> Result<Vec<Label>, GiteaError> {
        GiteaClient::list_labels(self, repo).await
    }

    async fn create_managed_label(&self, repo: &RepoName, name: &str) -> Result<Label, GiteaError> {
        GiteaClient::create_managed_label(self, repo, name).await
    }

    async fn add_label_ids(&self, issue: &IssueRef, ids: &[i64]) -> Result<Vec<Label>, GiteaError> {
        GiteaClient::add_label_ids(self, issue, ids).await
    }

    async fn replace_labels(
        &self,
        issue: &IssueRef,
        ids: &[i64],
    ) -> Result<Vec<Label>, GiteaError> {
        GiteaClient::replace_labels(self, issue, ids).await
    }

    async fn update_assignees(
        &self,
        issue: &IssueRef,
        add: &[String],
        remove: &[String],
    ) -> Result<Issue, GiteaError> {
        GiteaClient::update_assignees(self, issue, add, remove).await
    }

    async fn dependencies(&self, issue: &IssueRef) -> Result<Dependencies, GiteaError> {
        GiteaClient::dependencies(self, issue).await
    }

    async fn blocks(&self, issue: &IssueRef) -> Result<Vec<Issue>, GiteaError> {
        GiteaClient::blocks(self, issue).await
    }

    async fn close_issue(&self, issue: &IssueRef) -> Result<Issue, GiteaError> {
        GiteaClient::close_issue(self, issue).await
    }

    async fn repository(&self, repo: &RepoName) -> Result<Repository, GiteaError> {
        GiteaClient::get_repository(self, repo).await
    }

    async fn create_pull_request(
        &self,
        repo: &RepoName,
        pull: &CreatePullRequestOption,
    ) -> Result<PullRequest, GiteaError> {
        GiteaClient::create_pull_request(self, repo, pull).await
    }

    async fn pull_request_by_branches(
        &self,
        repo: &RepoName,
        base: &str,
        head: &str,
    ) -> Result<PullRequest, GiteaError> {
        GiteaClient::pull_request_by_branches(self, repo, base, head).await
    }

    async fn edit_pull_request(
        &self,
        repo: &RepoName,
        number: u64,
        edit: &EditPullRequestOption,
    ) -> Result<PullRequest, GiteaError> {
        GiteaClient::edit_pull_request(self, repo, number, edit).await
    }

    async fn create_commit_status(
        &self,
        repo: &RepoName,
        sha: &str,
        status: &CreateStatusOption,
    ) -> Result<CommitStatus, GiteaError> {
        GiteaClient::create_commit_status(self, repo, sha, status).await
    }
}

/// What `post_comment_once` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommentDelivery {
    Posted(Comment),
    /// A comment with the key's marker was already there (an earlier attempt got through).
    AlreadyPresent(Comment),
}

impl CommentDelivery {
    pub fn comment(&self) -> &Comment {
        match self {
            Self::Posted(comment) | Self::AlreadyPresent(comment) => comment,
        }
    }
}

/// Posts `body` with `key`'s marker unless a comment by `author` (the bot, whose token posts
/// it) with that marker already exists: the outbox worker's "exactly one comment per state
/// change", safe to call again after a timeout or a crash between posting and recording the
/// delivery. A marker in someone else's comment does not count, so nobody can suppress the
/// comment by writing its marker first (and the key should be unguessable besides:
/// [`IdempotencyKey::random`]).
pub async fn post_comment_once(
    api: &dyn GiteaApi,
    issue: &IssueRef,
    key: &IdempotencyKey,
    author: &str,
    body: &str,
) -> Result<CommentDelivery, GiteaError> {
    if let Some(existing) = api.find_marked_comment(issue, key, author).await? {
        return Ok(CommentDelivery::AlreadyPresent(existing));
    }
    let posted = api.create_comment(issue, &key.mark(body)).await?;
    Ok(CommentDelivery::Posted(posted))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn comment(body: &str) -> Comment {
        serde_json::from_value(serde_json::json!({
            "id": 1, "user": {"id": 2, "login": "mosaic-bot"}, "body": body,
            "created_at": "2024-01-01T00:00:00Z", "updated_at": "2024-01-01T00:00:00Z"
        }))
        .unwrap()
    }

    #[tokio::test]
    async fn posts_with_the_marker_only_when_no_marked_comment_exists() {
        let issue: IssueRef = "o/r#1".parse().unwrap();
        let key = IdempotencyKey::new("outbox:1").unwrap();

        let mut api = MockGiteaApi::new();
        api.expect_find_marked_comment()
            .withf(|_, _, author| author == "mosaic-bot")
            .times(1)
            .returning(|_, _, _| Ok(None));
        api.expect_create_comment()
            .withf(|_, body| body == "Done\n\n<!-- mosaic:outbox:1 -->")
            .times(1)
            .returning(|_, body| Ok(comment(body)));
        let delivery = post_comment_once(&api, &issue, &key, "mosaic-bot", "Done")
            .await
            .unwrap();
        assert!(matches!(delivery, CommentDelivery::Posted(_)));

        let mut api = MockGiteaApi::new();
        api.expect_find_marked_comment()
            .times(1)
            .returning(|_, _, _| Ok(Some(comment("Done\n\n<!-- mosaic:outbox:1 -->"))));
        api.expect_create_comment().never();
        let delivery = post_comment_once(&api, &issue, &key, "mosaic-bot", "Done")
            .await
            .unwrap();
        assert!(matches!(delivery, CommentDelivery::AlreadyPresent(_)));

        // A failed lookup posts nothing: posting blind could duplicate the comment.
        let mut api = MockGiteaApi::new();
        api.expect_find_marked_comment()
            .times(1)
            .returning(|_, _, _| {
                Err(GiteaError::Timeout {
                    operation: "issue.comments.list",
                })
            });
        api.expect_create_comment().never();
        assert!(
            post_comment_once(&api, &issue, &key, "mosaic-bot", "Done")
                .await
                .is_err()
        );
    }
}
