//! Workspaces: one git worktree per issue, behind the backend-neutral [`Workspaces`] trait.
//!
//! This crate holds no git code: the trait, its values, the settings ([`WorkspaceConfig`]),
//! branch naming ([`branch_name`], [`slug`]) and the hand-over text ([`handover_text`]).
//! `mosaic-git` implements the trait with the git CLI.

mod branch;
mod config;
mod error;
mod handover;
mod types;

use async_trait::async_trait;
use mosaic_domain::IssueRef;

pub use branch::{
    EMPTY_TITLE_SLUG, MAX_SLUG_CHARS, branch_name, is_issue_branch, is_valid_ref_name, slug,
};
pub use config::{WorkspaceConfig, WorkspaceConfigError};
pub use error::WorkspaceError;
pub use handover::{MAX_HANDOVER_CHARS, handover_text};
pub use types::{
    CommitSummary, PrepareRequest, Prepared, Pushed, Removed, RepoSource, Workspace, WorkspaceState,
};

/// Per-issue git workspaces. Every method is safe to call concurrently; operations that touch a
/// repository's shared mirror are serialised per repository by the implementation.
#[async_trait]
pub trait Workspaces: Send + Sync {
    /// Fetches the repository's mirror (creating it on first use) and returns the issue's
    /// worktree: the existing one, kept as it is, or a new one on `<prefix><n>-<slug>` from
    /// the base branch.
    async fn prepare(&self, request: &PrepareRequest) -> Result<Prepared, WorkspaceError>;

    /// Branch, base, head, commits ahead with subjects, `git status --short`, diffstat.
    async fn state(&self, workspace: &Workspace) -> Result<WorkspaceState, WorkspaceError>;

    /// Takes up the work another coordinator pushed: fetches, and when the remote's issue
    /// branch has commits the worktree's branch lacks, resets the branch and the worktree to
    /// the remote's commit (the latest session's work; what was only here is dropped — a
    /// session always pushes before it ends). Returns whether the worktree moved. No remote
    /// branch, or one the local branch already contains: nothing changes.
    async fn follow_remote(&self, workspace: &Workspace) -> Result<bool, WorkspaceError>;

    /// Commits whatever the agent left uncommitted, as the bot, with a message saying so.
    /// Returns the new commit's id, or `None` when there was nothing to commit.
    async fn commit_leftovers(
        &self,
        workspace: &Workspace,
    ) -> Result<Option<String>, WorkspaceError>;

    /// Commits on the branch that the base lacks; 0 means the agent changed nothing.
    async fn ahead_of_base(&self, workspace: &Workspace) -> Result<u64, WorkspaceError>;

    /// A file's text as the base branch has it (as last fetched), never the agent's copy:
    /// `None` when the base branch has no such file.
    async fn read_base_file(
        &self,
        workspace: &Workspace,
        path: &str,
    ) -> Result<Option<String>, WorkspaceError>;

    /// Pushes the workspace's branch with `--force-with-lease`; refuses any branch not under
    /// the configured prefix.
    async fn push(&self, workspace: &Workspace) -> Result<Pushed, WorkspaceError>;

    /// Removes the worktree and its local branch (the remote branch stays).
    async fn cleanup(&self, workspace: &Workspace) -> Result<Removed, WorkspaceError>;

    /// Removes every worktree under the root that belongs to none of `live` (with its local
    /// branch). `live` must include issues whose workspace is being prepared right now.
    async fn prune_orphans(&self, live: &[IssueRef]) -> Result<Vec<Removed>, WorkspaceError>;

    /// Bytes free for an unprivileged user under the root.
    async fn free_bytes(&self) -> Result<u64, WorkspaceError>;

    /// Bytes of disk the worktree uses.
    async fn disk_usage(&self, workspace: &Workspace) -> Result<u64, WorkspaceError>;
}
