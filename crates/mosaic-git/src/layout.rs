//! Where things live under the root, and the checks that keep deletion inside it.

use std::path::{Component, Path, PathBuf};

use mosaic_domain::{IssueRef, RepoName};
use mosaic_workspace::WorkspaceError;

/// `<root>/mirrors/<owner>/<name>.git`, `<root>/worktrees/<owner>/<name>/issue-<n>`,
/// `<root>/home` (git's `HOME`). Repository name segments are already safe path segments
/// (ASCII letters, digits, `-`, `_`, `.`; never `.` or `..`: [`RepoName`] guarantees it).
#[derive(Debug, Clone)]
pub(crate) struct Layout {
    root: PathBuf,
}

impl Layout {
    /// `root` must be canonical (symlinks resolved), so prefix checks are meaningful.
    pub fn new(root: PathBuf) -> Self {
        Self { root }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn home(&self) -> PathBuf {
        self.root.join("home")
    }

    pub fn mirrors(&self) -> PathBuf {
        self.root.join("mirrors")
    }

    pub fn worktrees(&self) -> PathBuf {
        self.root.join("worktrees")
    }

    pub fn mirror(&self, repo: &RepoName) -> PathBuf {
        self.mirrors()
            .join(repo.owner())
            .join(format!("{}.git", repo.name()))
    }

    pub fn worktree(&self, issue: &IssueRef) -> PathBuf {
        self.worktrees()
            .join(issue.repo.owner())
            .join(issue.repo.name())
            .join(format!("issue-{}", issue.number))
    }

    /// The issue a worktree directory belongs to, from its place under the root.
    pub fn issue_of(&self, owner: &str, name: &str, dir_name: &str) -> Option<IssueRef> {
        let number = dir_name.strip_prefix("issue-")?.parse::<u64>().ok()?;
        let repo = RepoName::new(owner, name).ok()?;
        (number > 0).then(|| IssueRef::new(repo, number))
    }

    /// `path` when it is exactly the worktree place of `issue`, with no symlink on the way
    /// leading elsewhere; [`WorkspaceError::OutsideRoot`] otherwise. Only such paths are ever
    /// deleted or worked in.
    pub fn checked_worktree(
        &self,
        issue: &IssueRef,
        path: &Path,
    ) -> Result<PathBuf, WorkspaceError> {
        let expected = self.worktree(issue);
        let outside = || WorkspaceError::OutsideRoot {
            path: path.to_path_buf(),
            root: self.root.clone(),
        };
        let plain = path.is_absolute()
            && path
                .components()
                .all(|part| matches!(part, Component::RootDir | Component::Normal(_)));
        if !plain || path != expected {
            return Err(outside());
        }
        // Every existing ancestor must resolve to itself: a symlink planted on the way (by an
        // agent, say) must not turn a deletion inside the root into one outside it.
        let mut probe = path.to_path_buf();
        loop {
            if let Ok(meta) = std::fs::symlink_metadata(&probe) {
                if meta.file_type().is_symlink() {
                    return Err(outside());
                }
                let resolved = probe.canonicalize().map_err(|_| outside())?;
                if resolved != probe {
                    return Err(outside());
                }
                break;
            }
            if !probe.pop() || !probe.starts_with(&self.root) {
                break;
            }
        }
        Ok(expected)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn issue(n: u64) -> IssueRef {
        IssueRef::new(RepoName::new("acme", "app").unwrap(), n)
    }

    #[test]
    fn only_the_issues_own_place_passes() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::new(dir.path().canonicalize().unwrap());
        let good = layout.worktree(&issue(7));
        assert_eq!(layout.checked_worktree(&issue(7), &good).unwrap(), good);
        for bad in [
            layout.worktree(&issue(8)),
            layout.root().to_path_buf(),
            layout.worktrees(),
            PathBuf::from("/etc"),
            PathBuf::from("relative/issue-7"),
            good.join("..").join("issue-7"),
        ] {
            let err = layout.checked_worktree(&issue(7), &bad).unwrap_err();
            assert!(
                matches!(err, WorkspaceError::OutsideRoot { .. }),
                "{bad:?}: {err}"
            );
        }
    }

    #[test]
    fn a_symlink_on_the_way_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let layout = Layout::new(dir.path().canonicalize().unwrap());
        std::fs::create_dir_all(layout.worktrees().join("acme")).unwrap();
        std::os::unix::fs::symlink(outside.path(), layout.worktrees().join("acme/app")).unwrap();
        std::fs::create_dir_all(outside.path().join("issue-7")).unwrap();
        let err = layout
            .checked_worktree(&issue(7), &layout.worktree(&issue(7)))
            .unwrap_err();
        assert!(matches!(err, WorkspaceError::OutsideRoot { .. }), "{err}");
    }

    #[test]
    fn reads_the_issue_back_from_the_place() {
        let layout = Layout::new(PathBuf::from("/r"));
        assert_eq!(layout.issue_of("acme", "app", "issue-7"), Some(issue(7)));
        assert_eq!(layout.issue_of("acme", "app", "issue-0"), None);
        assert_eq!(layout.issue_of("acme", "app", "notes"), None);
        assert_eq!(layout.issue_of("..", "app", "issue-1"), None);
    }
}
