//! The git CLI adapter of [`mosaic_workspace::Workspaces`].
//!
//! Per repository one bare mirror (`<root>/mirrors/<owner>/<name>.git`), fetched under a
//! per-repository lock before each use; per issue one worktree
//! (`<root>/worktrees/<owner>/<name>/issue-<n>`) on `<prefix><n>-<slug>`. The remote's
//! branches live in the mirror as `refs/remotes/origin/*`, so they never mix with the local
//! worktree branches. Every clone, fetch and push names the clone URL explicitly and carries
//! the bot token only in the git child's environment (`GIT_CONFIG_*`, scoped to the server):
//! never in a URL, an argv, a configuration file, a log line or an error.

mod command;
mod disk;
mod layout;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use mosaic_domain::{IssueRef, RepoName};
use mosaic_security::Secret;
use mosaic_workspace::{
    CommitSummary, PrepareRequest, Prepared, Pushed, Removed, RepoSource, Workspace,
    WorkspaceConfig, WorkspaceError, WorkspaceState, Workspaces, branch_name, is_issue_branch,
    is_valid_ref_name,
};
use tracing::{debug, info, warn};

use crate::command::{Git, GitCall};
use crate::layout::Layout;

/// Commits listed in a [`WorkspaceState`] at most (the count stays exact).
const MAX_LISTED_COMMITS: usize = 50;
/// Characters of status and diffstat kept in a [`WorkspaceState`].
const MAX_STATE_TEXT_CHARS: usize = 20_000;

/// The message of the commit the coordinator makes of what an agent left uncommitted.
pub const LEFTOVER_COMMIT_SUBJECT: &str = "Commit changes the agent left uncommitted";

/// Workspaces made with the git CLI. Cheap to share (`Arc`); every method may run concurrently.
pub struct GitWorkspaces {
    config: WorkspaceConfig,
    layout: Layout,
    git: Git,
    /// One lock per repository: fetches, pushes and worktree additions and removals of one
    /// repository run one at a time (parallel `git worktree add` races on `config.lock`).
    repo_locks: Mutex<HashMap<RepoName, Arc<tokio::sync::Mutex<()>>>>,
}

impl std::fmt::Debug for GitWorkspaces {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GitWorkspaces")
            .field("root", &self.layout.root())
            .field("branch_prefix", &self.config.branch_prefix)
            .finish_non_exhaustive()
    }
}

fn io_error(path: &Path, err: impl ToString) -> WorkspaceError {
    WorkspaceError::Io {
        path: path.to_path_buf(),
        message: err.to_string(),
    }
}

/// A clone URL the token may be sent to: http or https, no user or password in it. Returns the
/// URL as git gets it and the scope the token is limited to: the repository's own URL, so a
/// rewrite planted in the repository's configuration (`url.*.insteadOf`) can lead git to
/// another repository or host, but never with the token.
fn checked_clone_url(repo: &str, clone_url: &str) -> Result<(String, String), WorkspaceError> {
    let bad = |reason: &str| WorkspaceError::BadCloneUrl {
        repo: repo.to_owned(),
        reason: reason.to_owned(),
    };
    let url = url::Url::parse(clone_url.trim()).map_err(|_| bad("not a URL"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(bad("only http and https clone URLs are supported"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        // Said without the URL: it holds a credential.
        return Err(bad(
            "it carries credentials; the token is sent in a header instead",
        ));
    }
    if url.host_str().is_none() {
        return Err(bad("it names no host"));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(bad("it has a query or fragment"));
    }
    let scope = format!(
        "{}{}",
        url.origin().ascii_serialization(),
        url.path().trim_end_matches('/')
    );
    Ok((url.to_string(), scope))
}

fn lines(text: &str) -> impl Iterator<Item = &str> {
    text.lines().map(str::trim).filter(|line| !line.is_empty())
}

fn count(text: &str) -> u64 {
    text.trim().parse().unwrap_or(0)
}

impl GitWorkspaces {
    /// Validates the configuration, creates the root and git's home under it.
    pub fn new(config: WorkspaceConfig, token: Secret) -> Result<Self, WorkspaceError> {
        config.validate()?;
        std::fs::create_dir_all(&config.root).map_err(|err| io_error(&config.root, err))?;
        let root = config
            .root
            .canonicalize()
            .map_err(|err| io_error(&config.root, err))?;
        let layout = Layout::new(root);
        for dir in [layout.home(), layout.mirrors(), layout.worktrees()] {
            std::fs::create_dir_all(&dir).map_err(|err| io_error(&dir, err))?;
        }
        let git = Git::new(&config, layout.home(), token);
        Ok(Self {
            config,
            layout,
            git,
            repo_locks: Mutex::new(HashMap::new()),
        })
    }

    /// The canonical root everything lives under.
    pub fn root(&self) -> &Path {
        self.layout.root()
    }

    /// The bare mirror of `repo` (it exists once a workspace of the repository was prepared).
    pub fn mirror_path(&self, repo: &RepoName) -> PathBuf {
        self.layout.mirror(repo)
    }

    fn repo_lock(&self, repo: &RepoName) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self
            .repo_locks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        Arc::clone(locks.entry(repo.clone()).or_default())
    }

    fn base_branch(&self, source: &RepoSource) -> Result<String, WorkspaceError> {
        let base = self
            .config
            .base_branch
            .clone()
            .unwrap_or_else(|| source.default_branch.clone());
        if base.is_empty() || !is_valid_ref_name(&format!("refs/heads/{base}")) {
            return Err(WorkspaceError::MissingBase {
                repo: source.repo.to_string(),
                branch: base,
            });
        }
        Ok(base)
    }

    fn ensure_free_space(&self) -> Result<(), WorkspaceError> {
        let free = disk::free_bytes(self.layout.root())?;
        if free < self.config.min_free_bytes {
            return Err(WorkspaceError::LowDiskSpace {
                root: self.layout.root().to_path_buf(),
                free_bytes: free,
                required_bytes: self.config.min_free_bytes,
            });
        }
        Ok(())
    }

    /// Creates the mirror of `repo` when missing and fetches every branch of the remote at
    /// `clone_url` into `refs/remotes/origin/*`. Call with the repository's lock held.
    async fn fetch_mirror(
        &self,
        repo: &RepoName,
        clone_url: &str,
    ) -> Result<PathBuf, WorkspaceError> {
        let (url, scope) = checked_clone_url(repo.as_str(), clone_url)?;
        let mirror = self.layout.mirror(repo);
        if !mirror.join("HEAD").is_file() {
            std::fs::create_dir_all(&mirror).map_err(|err| io_error(&mirror, err))?;
            // `init` + fetch rather than `clone --bare`: a bare clone would put the remote's
            // branches into refs/heads, where the worktree branches live. No remote is
            // configured: every fetch and push names the URL, so nothing in the mirror's
            // configuration can redirect them.
            self.git
                .run(&GitCall::local(
                    "init",
                    &mirror,
                    &["init", "--quiet", "--bare"],
                ))
                .await?;
            info!(repo = %repo, mirror = %mirror.display(), "created mirror");
        }
        self.reset_mirror_config(&mirror).await?;
        self.git
            .run(
                &GitCall::local(
                    "fetch",
                    &mirror,
                    &[
                        "fetch",
                        "--quiet",
                        "--prune",
                        "--no-tags",
                        "--no-write-fetch-head",
                    ],
                )
                .arg(&url)
                .arg("+refs/heads/*:refs/remotes/origin/*")
                .remote(&scope, repo.as_str()),
            )
            .await?;
        Ok(mirror)
    }

    /// Rewrites the mirror's configuration to what `git init --bare` made, dropping everything
    /// else. Agents work in worktrees of this repository and can write its configuration; what
    /// they could plant there (`url.*.insteadOf`, `http.*.proxy`, `http.*.sslVerify`, ...) must
    /// not steer the coordinator's fetch or push. Call with the repository's lock held.
    async fn reset_mirror_config(&self, mirror: &Path) -> Result<(), WorkspaceError> {
        const KEPT: &[&str] = &[
            "core.repositoryformatversion",
            "extensions.objectformat",
            "extensions.refstorage",
        ];
        let fresh = mirror.join("config.mosaic-new");
        let _ = std::fs::remove_file(&fresh);
        let mut values = vec![
            ("core.bare".to_owned(), "true".to_owned()),
            ("core.filemode".to_owned(), "true".to_owned()),
        ];
        for key in KEPT {
            let call = GitCall::local(
                "config",
                mirror,
                &["config", "--file", "config", "--get", key],
            );
            let output = self.git.output(&call).await?;
            match output.code {
                Some(0) => values.push(((*key).to_owned(), output.stdout.trim().to_owned())),
                Some(1) => {} // not set
                _ => return Err(self.git.failure(&call, &output)),
            }
        }
        for (key, value) in values {
            self.git
                .run(
                    &GitCall::local("config", mirror, &["config", "--file", "config.mosaic-new"])
                        .arg(key)
                        .arg(value),
                )
                .await?;
        }
        let config = mirror.join("config");
        std::fs::rename(&fresh, &config).map_err(|err| io_error(&config, err))
    }

    async fn resolve(&self, dir: &Path, reference: &str) -> Result<Option<String>, WorkspaceError> {
        let call = GitCall::local("rev-parse", dir, &["rev-parse", "--verify", "--quiet"])
            .arg(format!("{reference}^{{commit}}"));
        let output = self.git.output(&call).await?;
        match output.code {
            Some(0) => Ok(Some(output.stdout.trim().to_owned())),
            Some(1) => Ok(None),
            _ => Err(self.git.failure(&call, &output)),
        }
    }

    /// Branches (short names) under `namespace` (`refs/heads/` or `refs/remotes/origin/`)
    /// that belong to issue `number`.
    async fn issue_branches(
        &self,
        mirror: &Path,
        namespace: &str,
        number: u64,
    ) -> Result<Vec<String>, WorkspaceError> {
        // The whole namespace, filtered here: a for-each-ref pattern matches only whole path
        // components, and a prefix need not end in `/`.
        let listing = self
            .git
            .run(
                &GitCall::local(
                    "for-each-ref",
                    mirror,
                    &["for-each-ref", "--format=%(refname)"],
                )
                .arg(namespace),
            )
            .await?;
        Ok(lines(&listing)
            .filter_map(|name| name.strip_prefix(namespace))
            .filter(|branch| is_issue_branch(&self.config.branch_prefix, number, branch))
            .map(str::to_owned)
            .collect())
    }

    /// `path → branch` of every worktree registered in the mirror.
    async fn registered_worktrees(
        &self,
        mirror: &Path,
    ) -> Result<HashMap<PathBuf, Option<String>>, WorkspaceError> {
        let listing = self
            .git
            .run(&GitCall::local(
                "worktree list",
                mirror,
                &["worktree", "list", "--porcelain"],
            ))
            .await?;
        let mut worktrees = HashMap::new();
        for block in listing.split("\n\n") {
            let mut path = None;
            let mut branch = None;
            for line in block.lines() {
                if let Some(value) = line.strip_prefix("worktree ") {
                    path = Some(PathBuf::from(value));
                } else if let Some(value) = line.strip_prefix("branch refs/heads/") {
                    branch = Some(value.to_owned());
                }
            }
            if let Some(path) = path {
                worktrees.insert(path, branch);
            }
        }
        Ok(worktrees)
    }

    async fn current_branch(&self, path: &Path) -> Result<Option<String>, WorkspaceError> {
        let call = GitCall::local(
            "symbolic-ref",
            path,
            &["symbolic-ref", "--quiet", "--short", "HEAD"],
        );
        let output = self.git.output(&call).await?;
        match output.code {
            Some(0) => Ok(Some(output.stdout.trim().to_owned())),
            Some(1) => Ok(None), // detached
            _ => Err(self.git.failure(&call, &output)),
        }
    }

    /// The worktree's path, checked, and the worktree on the recorded branch.
    async fn checked_workspace(&self, workspace: &Workspace) -> Result<PathBuf, WorkspaceError> {
        let path = self
            .layout
            .checked_worktree(&workspace.issue, &workspace.path)?;
        if !path.join(".git").exists() {
            return Err(io_error(&path, "not a worktree (no .git)"));
        }
        let found = self.current_branch(&path).await?;
        if found.as_deref() != Some(workspace.branch.as_str()) {
            return Err(WorkspaceError::WrongBranch {
                path,
                expected: workspace.branch.clone(),
                found: found.unwrap_or_else(|| "a detached HEAD".to_owned()),
            });
        }
        Ok(path)
    }

    async fn count_range(&self, dir: &Path, range: &str) -> Result<u64, WorkspaceError> {
        let out = self
            .git
            .run(&GitCall::local("rev-list", dir, &["rev-list", "--count"]).arg(range))
            .await?;
        Ok(count(&out))
    }

    /// Removes the worktree at `path` of `issue` (already checked) and its local `branch`.
    /// Call with the repository's lock held.
    async fn remove_worktree(
        &self,
        issue: &IssueRef,
        path: &Path,
        branch: Option<&str>,
    ) -> Result<Removed, WorkspaceError> {
        let mirror = self.layout.mirror(&issue.repo);
        let has_mirror = mirror.join("HEAD").is_file();
        if has_mirror && path.exists() {
            let call = GitCall::local(
                "worktree remove",
                &mirror,
                &["worktree", "remove", "--force", "--force"],
            )
            .arg(path);
            let output = self.git.output(&call).await?;
            if output.code != Some(0) {
                // Not registered (a leftover directory): deleted below, as a checked path.
                debug!(path = %path.display(), stderr = %output.stderr, "worktree remove refused");
            }
        }
        if std::fs::symlink_metadata(path).is_ok() {
            std::fs::remove_dir_all(path).map_err(|err| io_error(path, err))?;
        }
        let mut deleted_branch = None;
        if has_mirror {
            self.git
                .run(&GitCall::local(
                    "worktree prune",
                    &mirror,
                    &["worktree", "prune"],
                ))
                .await?;
            if let Some(branch) =
                branch.filter(|b| is_issue_branch(&self.config.branch_prefix, issue.number, b))
                && self
                    .resolve(&mirror, &format!("refs/heads/{branch}"))
                    .await?
                    .is_some()
            {
                self.git
                    .run(
                        &GitCall::local("branch -D", &mirror, &["branch", "--quiet", "-D"])
                            .arg(branch),
                    )
                    .await?;
                deleted_branch = Some(branch.to_owned());
            }
        }
        info!(issue = %issue, path = %path.display(), branch = ?deleted_branch, "removed workspace");
        Ok(Removed {
            issue: issue.clone(),
            path: path.to_path_buf(),
            branch: deleted_branch,
        })
    }
}

#[async_trait]
impl Workspaces for GitWorkspaces {
    async fn prepare(&self, request: &PrepareRequest) -> Result<Prepared, WorkspaceError> {
        let issue = &request.issue;
        let source = &request.source;
        if source.repo != issue.repo {
            return Err(WorkspaceError::BadCloneUrl {
                repo: source.repo.to_string(),
                reason: format!("it is not the repository of {issue}"),
            });
        }
        let base = self.base_branch(source)?;
        self.ensure_free_space()?;
        let lock = self.repo_lock(&issue.repo);
        let _held = lock.lock().await;
        let mirror = self.fetch_mirror(&source.repo, &source.clone_url).await?;
        let base_ref = format!("refs/remotes/origin/{base}");
        if self.resolve(&mirror, &base_ref).await?.is_none() {
            return Err(WorkspaceError::MissingBase {
                repo: issue.repo.to_string(),
                branch: base,
            });
        }
        let path = self
            .layout
            .checked_worktree(issue, &self.layout.worktree(issue))?;
        let (url, _) = checked_clone_url(issue.repo.as_str(), &source.clone_url)?;
        let registered = self.registered_worktrees(&mirror).await?;

        if registered.contains_key(&path) && path.join(".git").exists() {
            let branch = match self.current_branch(&path).await? {
                Some(branch)
                    if is_issue_branch(&self.config.branch_prefix, issue.number, &branch) =>
                {
                    branch
                }
                other => {
                    return Err(WorkspaceError::WrongBranch {
                        path,
                        expected: format!("{}{}-…", self.config.branch_prefix, issue.number),
                        found: other.unwrap_or_else(|| "a detached HEAD".to_owned()),
                    });
                }
            };
            let behind = self
                .count_range(&path, &format!("HEAD..{base_ref}"))
                .await?;
            info!(issue = %issue, path = %path.display(), behind, "reusing workspace");
            return Ok(Prepared {
                workspace: Workspace {
                    issue: issue.clone(),
                    path,
                    branch,
                    base_branch: base,
                    clone_url: url,
                },
                reused: true,
                commits_behind_base: behind,
            });
        }

        if std::fs::symlink_metadata(&path).is_ok() {
            // A directory git no longer knows as a worktree (an interrupted add, say).
            warn!(path = %path.display(), "removing a stale workspace directory");
            std::fs::remove_dir_all(&path).map_err(|err| io_error(&path, err))?;
        }
        self.git
            .run(&GitCall::local(
                "worktree prune",
                &mirror,
                &["worktree", "prune"],
            ))
            .await?;
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|err| io_error(parent, err))?;
        }

        // An earlier attempt's branch is continued: the local one if the worktree was removed
        // but the branch kept, else the one pushed before.
        let local = self
            .issue_branches(&mirror, "refs/heads/", issue.number)
            .await?;
        let remote = self
            .issue_branches(&mirror, "refs/remotes/origin/", issue.number)
            .await?;
        let add = GitCall::local("worktree add", &mirror, &["worktree", "add", "--quiet"]);
        let (branch, add) = if let Some(branch) = local.into_iter().next() {
            let add = add.arg(&path).arg(&branch);
            (branch, add)
        } else if let Some(branch) = remote.into_iter().next() {
            let add = add
                .arg("--no-track")
                .arg("-b")
                .arg(&branch)
                .arg(&path)
                .arg(format!("refs/remotes/origin/{branch}"));
            (branch, add)
        } else {
            let branch = branch_name(&self.config.branch_prefix, issue.number, &request.title);
            let add = add
                .arg("--no-track")
                .arg("-b")
                .arg(&branch)
                .arg(&path)
                .arg(&base_ref);
            (branch, add)
        };
        self.git.run(&add).await?;
        let behind = self
            .count_range(&path, &format!("HEAD..{base_ref}"))
            .await?;
        info!(issue = %issue, path = %path.display(), branch = %branch, "created workspace");
        Ok(Prepared {
            workspace: Workspace {
                issue: issue.clone(),
                path,
                branch,
                base_branch: base,
                clone_url: url,
            },
            reused: false,
            commits_behind_base: behind,
        })
    }

    async fn state(&self, workspace: &Workspace) -> Result<WorkspaceState, WorkspaceError> {
        let path = self.checked_workspace(workspace).await?;
        let base_ref = format!("refs/remotes/origin/{}", workspace.base_branch);
        let missing_base = || WorkspaceError::MissingBase {
            repo: workspace.issue.repo.to_string(),
            branch: workspace.base_branch.clone(),
        };
        let base_commit = self
            .resolve(&path, &base_ref)
            .await?
            .ok_or_else(missing_base)?;
        let head_commit = self
            .resolve(&path, "HEAD")
            .await?
            .ok_or_else(|| io_error(&path, "HEAD names no commit"))?;
        let commits_ahead = self
            .count_range(&path, &format!("{base_ref}..HEAD"))
            .await?;
        let commits_behind = self
            .count_range(&path, &format!("HEAD..{base_ref}"))
            .await?;
        let log = self
            .git
            .run(
                &GitCall::local("log", &path, &["log", "--no-color", "--format=%H%x1f%s"])
                    .arg(format!("--max-count={MAX_LISTED_COMMITS}"))
                    .arg(format!("{base_ref}..HEAD")),
            )
            .await?;
        let ahead = lines(&log)
            .filter_map(|line| line.split_once('\u{1f}'))
            .map(|(id, subject)| CommitSummary {
                id: id.to_owned(),
                subject: subject.to_owned(),
            })
            .collect();
        // `--no-optional-locks`: the agent may still be working; reading must not take its lock.
        let status = self
            .git
            .run(&GitCall::local(
                "status",
                &path,
                &["--no-optional-locks", "status", "--short"],
            ))
            .await?;
        let diffstat = self
            .git
            .run(
                &GitCall::local(
                    "diff --stat",
                    &path,
                    &[
                        "diff",
                        "--no-color",
                        "--no-ext-diff",
                        "--no-textconv",
                        "--stat",
                    ],
                )
                .arg(format!("{base_ref}...HEAD")),
            )
            .await?;
        let redactor = self.git.redactor();
        Ok(WorkspaceState {
            branch: workspace.branch.clone(),
            base_branch: workspace.base_branch.clone(),
            base_commit,
            head_commit,
            commits_ahead,
            commits_behind,
            ahead,
            status_short: redactor.for_comment(status.trim_end(), MAX_STATE_TEXT_CHARS),
            diffstat: redactor.for_comment(diffstat.trim_end(), MAX_STATE_TEXT_CHARS),
        })
    }

    async fn follow_remote(&self, workspace: &Workspace) -> Result<bool, WorkspaceError> {
        // Under the lock throughout: the reset moves the branch in the mirror's shared refs,
        // which a push of the same repository reads.
        let lock = self.repo_lock(&workspace.issue.repo);
        let _held = lock.lock().await;
        let path = self.checked_workspace(workspace).await?;
        let mirror = self
            .fetch_mirror(&workspace.issue.repo, &workspace.clone_url)
            .await?;
        let tracking_ref = format!("refs/remotes/origin/{}", workspace.branch);
        let Some(remote) = self.resolve(&mirror, &tracking_ref).await? else {
            return Ok(false);
        };
        let call = GitCall::local(
            "merge-base --is-ancestor",
            &path,
            &["merge-base", "--is-ancestor"],
        )
        .arg(&remote)
        .arg("HEAD");
        let contained = self.git.output(&call).await?;
        match contained.code {
            Some(0) => return Ok(false),
            Some(1) => {}
            _ => return Err(self.git.failure(&call, &contained)),
        }
        let before = self.resolve(&path, "HEAD").await?.unwrap_or_default();
        // The commit id, not the ref: what was checked above is what the worktree gets.
        self.git
            .run(&GitCall::local("reset", &path, &["reset", "--quiet", "--hard"]).arg(&remote))
            .await?;
        // Untracked files (and nested repositories: `-f` twice) are what an agent left here;
        // they would otherwise be committed as leftovers on top of the remote's work. Ignored
        // files (no `-x`) are build output and caches: keeping them only saves rebuilding.
        // After the reset, so the remote's `.gitignore` decides what counts as ignored.
        self.git
            .run(&GitCall::local(
                "clean",
                &path,
                &["clean", "--quiet", "-d", "-f", "-f"],
            ))
            .await?;
        info!(issue = %workspace.issue, branch = %workspace.branch, from = %before, to = %remote, "followed the remote branch");
        Ok(true)
    }

    async fn commit_leftovers(
        &self,
        workspace: &Workspace,
    ) -> Result<Option<String>, WorkspaceError> {
        let path = self.checked_workspace(workspace).await?;
        self.git
            .run(&GitCall::local("add", &path, &["add", "--all"]))
            .await?;
        let call = GitCall::local("diff --cached", &path, &["diff", "--cached", "--quiet"]);
        let staged = self.git.output(&call).await?;
        match staged.code {
            Some(0) => return Ok(None),
            Some(1) => {}
            _ => return Err(self.git.failure(&call, &staged)),
        }
        let message = format!(
            "{LEFTOVER_COMMIT_SUBJECT}\n\nThe coordinator committed what the agent left \
             uncommitted in the workspace of {}.",
            workspace.issue
        );
        self.git
            .run(
                &GitCall::local("commit", &path, &["commit", "--quiet", "--no-verify", "-m"])
                    .arg(message),
            )
            .await?;
        let head = self
            .resolve(&path, "HEAD")
            .await?
            .ok_or_else(|| io_error(&path, "HEAD names no commit"))?;
        info!(issue = %workspace.issue, commit = %head, "committed leftovers");
        Ok(Some(head))
    }

    async fn ahead_of_base(&self, workspace: &Workspace) -> Result<u64, WorkspaceError> {
        let path = self.checked_workspace(workspace).await?;
        self.count_range(
            &path,
            &format!("refs/remotes/origin/{}..HEAD", workspace.base_branch),
        )
        .await
    }

    async fn read_base_file(
        &self,
        workspace: &Workspace,
        path: &str,
    ) -> Result<Option<String>, WorkspaceError> {
        let dir = self.checked_workspace(workspace).await?;
        let object = format!("refs/remotes/origin/{}:{path}", workspace.base_branch);
        // `cat-file -e` tells "no such file on the base" (exit 128 on a valid base) apart
        // from a base that is missing altogether, which `resolve` reports.
        let base_ref = format!("refs/remotes/origin/{}", workspace.base_branch);
        if self.resolve(&dir, &base_ref).await?.is_none() {
            return Err(WorkspaceError::MissingBase {
                repo: workspace.issue.repo.to_string(),
                branch: workspace.base_branch.clone(),
            });
        }
        let exists = GitCall::local("cat-file -e", &dir, &["cat-file", "-e"]).arg(&object);
        if self.git.output(&exists).await?.code != Some(0) {
            return Ok(None);
        }
        let text = self
            .git
            .run(&GitCall::local("cat-file blob", &dir, &["cat-file", "blob"]).arg(&object))
            .await?;
        Ok(Some(text))
    }

    async fn push(&self, workspace: &Workspace) -> Result<Pushed, WorkspaceError> {
        let branch = &workspace.branch;
        if !is_issue_branch(&self.config.branch_prefix, workspace.issue.number, branch) {
            return Err(WorkspaceError::NotOurBranch {
                branch: branch.clone(),
                prefix: self.config.branch_prefix.clone(),
            });
        }
        self.layout
            .checked_worktree(&workspace.issue, &workspace.path)?;
        let repo = workspace.issue.repo.as_str();
        let (url, scope) = checked_clone_url(repo, &workspace.clone_url)?;
        let lock = self.repo_lock(&workspace.issue.repo);
        let _held = lock.lock().await;
        let mirror = self.layout.mirror(&workspace.issue.repo);
        let local_ref = format!("refs/heads/{branch}");
        let tracking_ref = format!("refs/remotes/origin/{branch}");
        let commit = self
            .resolve(&mirror, &local_ref)
            .await?
            .ok_or_else(|| io_error(&mirror, format!("branch `{branch}` does not exist")))?;
        // The lease: the remote branch must still be where the last fetch or push saw it
        // (absent, if it never existed), so nobody else's push is overwritten.
        let expected = self
            .resolve(&mirror, &tracking_ref)
            .await?
            .unwrap_or_default();
        self.reset_mirror_config(&mirror).await?;
        self.git
            .run(
                &GitCall::local("push", &mirror, &["push", "--quiet", "--no-verify"])
                    .arg(format!("--force-with-lease={local_ref}:{expected}"))
                    .arg(&url)
                    .arg(format!("{local_ref}:{local_ref}"))
                    .remote(&scope, repo),
            )
            .await?;
        self.git
            .run(
                &GitCall::local("update-ref", &mirror, &["update-ref"])
                    .arg(&tracking_ref)
                    .arg(&commit),
            )
            .await?;
        info!(issue = %workspace.issue, branch = %branch, commit = %commit, "pushed");
        Ok(Pushed {
            branch: branch.clone(),
            commit,
        })
    }

    async fn cleanup(&self, workspace: &Workspace) -> Result<Removed, WorkspaceError> {
        let path = self
            .layout
            .checked_worktree(&workspace.issue, &workspace.path)?;
        let lock = self.repo_lock(&workspace.issue.repo);
        let _held = lock.lock().await;
        self.remove_worktree(&workspace.issue, &path, Some(&workspace.branch))
            .await
    }

    async fn prune_orphans(&self, live: &[IssueRef]) -> Result<Vec<Removed>, WorkspaceError> {
        let mut found: Vec<IssueRef> = Vec::new();
        let worktrees = self.layout.worktrees();
        let read = |dir: &Path| -> Result<Vec<(String, PathBuf)>, WorkspaceError> {
            let mut entries = Vec::new();
            for entry in std::fs::read_dir(dir).map_err(|err| io_error(dir, err))? {
                let entry = entry.map_err(|err| io_error(dir, err))?;
                let is_dir = entry
                    .file_type()
                    .map_err(|err| io_error(dir, err))?
                    .is_dir();
                if is_dir && let Some(name) = entry.file_name().to_str() {
                    entries.push((name.to_owned(), entry.path()));
                }
            }
            Ok(entries)
        };
        for (owner, owner_dir) in read(&worktrees)? {
            for (name, repo_dir) in read(&owner_dir)? {
                for (dir_name, _) in read(&repo_dir)? {
                    // Anything that is not a workspace place is not ours to delete.
                    if let Some(issue) = self.layout.issue_of(&owner, &name, &dir_name) {
                        found.push(issue);
                    }
                }
            }
        }
        found.sort();
        let mut removed = Vec::new();
        for issue in found.into_iter().filter(|issue| !live.contains(issue)) {
            let path = self
                .layout
                .checked_worktree(&issue, &self.layout.worktree(&issue))?;
            let lock = self.repo_lock(&issue.repo);
            let _held = lock.lock().await;
            let mirror = self.layout.mirror(&issue.repo);
            let branch = if mirror.join("HEAD").is_file() {
                self.registered_worktrees(&mirror)
                    .await?
                    .remove(&path)
                    .flatten()
            } else {
                None
            };
            removed.push(
                self.remove_worktree(&issue, &path, branch.as_deref())
                    .await?,
            );
        }
        Ok(removed)
    }

    async fn free_bytes(&self) -> Result<u64, WorkspaceError> {
        disk::free_bytes(self.layout.root())
    }

    async fn disk_usage(&self, workspace: &Workspace) -> Result<u64, WorkspaceError> {
        let path = self
            .layout
            .checked_worktree(&workspace.issue, &workspace.path)?;
        tokio::task::spawn_blocking(move || disk::disk_usage(&path))
            .await
            .map_err(|err| io_error(&workspace.path, err))?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clone_urls_must_be_http_without_credentials() {
        let (url, scope) = checked_clone_url("o/r", "https://gitea.example/o/r.git").unwrap();
        assert_eq!(url, "https://gitea.example/o/r.git");
        assert_eq!(scope, "https://gitea.example/o/r.git");
        let (_, scope) = checked_clone_url("o/r", "http://127.0.0.1:3000/o/r.git/").unwrap();
        assert_eq!(scope, "http://127.0.0.1:3000/o/r.git");
        for bad in [
            "https://bot:hunter2hunter2@gitea.example/o/r.git",
            "https://hunter2hunter2@gitea.example/o/r.git",
            "ssh://git@gitea.example/o/r.git",
            "file:///srv/o/r.git",
            "--upload-pack=evil",
            "https://gitea.example/o/r.git?x=1",
            "",
        ] {
            let err = checked_clone_url("o/r", bad).unwrap_err();
            assert!(
                matches!(err, WorkspaceError::BadCloneUrl { .. }),
                "{bad}: {err}"
            );
            assert!(!err.to_string().contains("hunter2"), "{err}");
        }
    }
}
