//! The values the [`crate::Workspaces`] trait takes and returns.

use std::path::PathBuf;

use mosaic_domain::{IssueRef, RepoName};
use serde::{Deserialize, Serialize};

/// Where a repository comes from, as Gitea's repository object describes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RepoSource {
    pub repo: RepoName,
    /// Gitea's `clone_url` (http or https, without credentials).
    pub clone_url: String,
    /// Gitea's `default_branch`; used when no base branch is configured.
    pub default_branch: String,
}

/// What [`crate::Workspaces::prepare`] needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrepareRequest {
    pub issue: IssueRef,
    /// The issue title; it names the branch of a new workspace (a reused one keeps its branch).
    pub title: String,
    pub source: RepoSource,
}

/// One issue's worktree. The caller records it (the path above all) and hands it back for
/// every later call; the adapter re-validates the path each time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Workspace {
    pub issue: IssueRef,
    /// The worktree directory, under the configured root.
    pub path: PathBuf,
    /// Local branch the worktree is on: `<prefix><number>-<slug>`.
    pub branch: String,
    /// The base branch's name on the remote (`main`).
    pub base_branch: String,
    /// The clone URL the workspace fetches from and pushes to.
    pub clone_url: String,
}

/// What [`crate::Workspaces::prepare`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prepared {
    pub workspace: Workspace,
    /// An existing worktree was kept (files, commits and uncommitted changes included).
    pub reused: bool,
    /// Commits on the freshly fetched base that the worktree's branch does not contain.
    pub commits_behind_base: u64,
}

/// One commit: full id and subject line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommitSummary {
    pub id: String,
    pub subject: String,
}

/// The worktree after an agent worked in it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkspaceState {
    pub branch: String,
    pub base_branch: String,
    pub base_commit: String,
    pub head_commit: String,
    /// How many commits the branch has that the base lacks.
    pub commits_ahead: u64,
    /// How many commits the base has that the branch lacks.
    pub commits_behind: u64,
    /// The newest commits ahead of the base, newest first (bounded; `commits_ahead` is exact).
    pub ahead: Vec<CommitSummary>,
    /// `git status --short` (uncommitted and untracked files), bounded.
    pub status_short: String,
    /// `git diff --stat` of the commits ahead of the base, bounded.
    pub diffstat: String,
}

impl WorkspaceState {
    /// No commit ahead of the base and nothing uncommitted.
    pub fn is_unchanged(&self) -> bool {
        self.commits_ahead == 0 && self.status_short.trim().is_empty()
    }
}

/// What a push sent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pushed {
    pub branch: String,
    pub commit: String,
}

/// What a removal took away.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Removed {
    pub issue: IssueRef,
    pub path: PathBuf,
    /// The local branch deleted with it, if there was one (the remote branch stays).
    pub branch: Option<String>,
}
