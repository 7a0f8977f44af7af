//! Working directories per issue, always inside the configured root.

use std::path::{Path, PathBuf};

use mosaic_domain::IssueRef;

/// Why a working directory could not be provided.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WorkDirError {
    #[error("cannot create or resolve `{path}`: {message}")]
    Io { path: String, message: String },
    #[error("`{path}` resolves outside the work root `{root}`")]
    Escapes { path: String, root: String },
}

/// One path segment made safe: only ASCII letters, digits, `-`, `_` and `.` survive (others
/// become `_`), and `.`/`..`/empty become `_`, so a segment never climbs or vanishes.
pub fn sanitize_segment(segment: &str) -> String {
    let cleaned: String = segment
        .chars()
        .take(100)
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '_'
            }
        })
        .collect();
    if cleaned.is_empty() || cleaned.chars().all(|c| c == '.') {
        "_".to_owned()
    } else {
        cleaned
    }
}

/// `<root>/<owner>/<repo>/issue-<n>`, relative to the root.
pub fn issue_relative_dir(issue: &IssueRef) -> PathBuf {
    [
        sanitize_segment(issue.repo.owner()),
        sanitize_segment(issue.repo.name()),
        format!("issue-{}", issue.number),
    ]
    .iter()
    .collect()
}

fn io_error(path: &Path, err: &std::io::Error) -> WorkDirError {
    WorkDirError::Io {
        path: path.display().to_string(),
        message: err.to_string(),
    }
}

/// Creates `relative` under `root` (an already canonical path) and proves the result, with every
/// symlink resolved, is still inside `root`.
pub fn create_inside(root: &Path, relative: &Path) -> Result<PathBuf, WorkDirError> {
    let wanted = root.join(relative);
    std::fs::create_dir_all(&wanted).map_err(|err| io_error(&wanted, &err))?;
    let resolved = wanted
        .canonicalize()
        .map_err(|err| io_error(&wanted, &err))?;
    if resolved.starts_with(root) && resolved != root {
        Ok(resolved)
    } else {
        Err(WorkDirError::Escapes {
            path: resolved.display().to_string(),
            root: root.display().to_string(),
        })
    }
}

/// Creates `path` if needed and returns its canonical form.
pub fn canonical_dir(path: &Path) -> Result<PathBuf, WorkDirError> {
    std::fs::create_dir_all(path).map_err(|err| io_error(path, &err))?;
    path.canonicalize().map_err(|err| io_error(path, &err))
}

#[cfg(test)]
mod tests {
    use super::*;
    use mosaic_domain::RepoName;

    #[test]
    fn sanitizes_segments() {
        let check = |input: &str, expect: &str| assert_eq!(sanitize_segment(input), expect);
        check("mosaic", "mosaic");
        check("my-repo_1.x", "my-repo_1.x");
        check("..", "_");
        check(".", "_");
        check("", "_");
        check("a/b", "a_b");
        check("../../etc", ".._.._etc");
        check("naïve", "na_ve");
        check("a\0b", "a_b");
    }

    #[test]
    fn issue_dirs_stay_inside_the_root() {
        let root_dir = tempfile::tempdir().unwrap();
        let root = canonical_dir(root_dir.path()).unwrap();
        let issue = IssueRef::new(RepoName::new("mosaic", "coordinator").unwrap(), 7);
        let dir = create_inside(&root, &issue_relative_dir(&issue)).unwrap();
        assert_eq!(dir, root.join("mosaic/coordinator/issue-7"));
        assert!(dir.is_dir());

        // A symlink planted inside the root cannot lead out of it.
        let outside = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(outside.path(), root.join("evil")).unwrap();
        let err = create_inside(&root, Path::new("evil/issue-1")).unwrap_err();
        assert!(matches!(err, WorkDirError::Escapes { .. }), "{err}");
        let err = create_inside(&root, Path::new("..")).unwrap_err();
        assert!(matches!(err, WorkDirError::Escapes { .. }), "{err}");
    }
}
