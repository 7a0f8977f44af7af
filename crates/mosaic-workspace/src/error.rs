//! What can go wrong with a workspace. No variant carries a credential: git's own messages are
//! redacted by the adapter before they get here.

use std::path::PathBuf;

/// Why a workspace operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WorkspaceError {
    #[error(transparent)]
    Config(#[from] crate::WorkspaceConfigError),
    /// The Git server refused the bot's credentials (HTTP 401/403).
    #[error("the git server rejected the bot's credentials during {operation} of {repo}: {detail}")]
    Unauthorized {
        operation: &'static str,
        repo: String,
        detail: String,
    },
    /// git ran and failed; `stderr` is redacted and bounded.
    #[error("git {operation} failed ({status}): {stderr}")]
    Git {
        operation: &'static str,
        status: String,
        stderr: String,
    },
    /// git did not finish in time and was killed with its process group.
    #[error("git {operation} did not finish within {seconds} s and was stopped")]
    Timeout {
        operation: &'static str,
        seconds: u64,
    },
    /// git could not be started at all.
    #[error("cannot run `{program}`: {message}")]
    Spawn { program: String, message: String },
    #[error("file system error at `{}`: {message}", path.display())]
    Io { path: PathBuf, message: String },
    /// A path to delete or work in is not inside the workspace root; nothing was touched.
    #[error("`{}` is not a workspace under `{}`; refusing to touch it", path.display(), root.display())]
    OutsideRoot { path: PathBuf, root: PathBuf },
    #[error("only {free_bytes} bytes are free under `{}`, {required_bytes} required", root.display())]
    LowDiskSpace {
        root: PathBuf,
        free_bytes: u64,
        required_bytes: u64,
    },
    /// The clone URL cannot be used (not http(s), or it carries credentials).
    #[error("clone URL of {repo} cannot be used: {reason}")]
    BadCloneUrl { repo: String, reason: String },
    #[error("base branch `{branch}` does not exist in {repo}")]
    MissingBase { repo: String, branch: String },
    /// Push refused: the branch is not one the coordinator made.
    #[error("refusing to push `{branch}`: only branches under `{prefix}` are pushed")]
    NotOurBranch { branch: String, prefix: String },
    /// The worktree is not on the branch recorded for it (the agent switched branches).
    #[error("worktree `{}` is on `{found}`, expected `{expected}`", path.display())]
    WrongBranch {
        path: PathBuf,
        expected: String,
        found: String,
    },
}
