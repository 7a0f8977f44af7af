//! Free space under the root and space used by one worktree.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use mosaic_workspace::WorkspaceError;

fn io_error(path: &Path, message: impl ToString) -> WorkspaceError {
    WorkspaceError::Io {
        path: path.to_path_buf(),
        message: message.to_string(),
    }
}

/// Bytes an unprivileged user may still write on the file system holding `path`.
pub(crate) fn free_bytes(path: &Path) -> Result<u64, WorkspaceError> {
    let stats = nix::sys::statvfs::statvfs(path).map_err(|err| io_error(path, err))?;
    #[allow(clippy::useless_conversion)] // the field types differ between platforms
    let (available, fragment) = (
        u64::from(stats.blocks_available()),
        u64::from(stats.fragment_size()),
    );
    Ok(available.saturating_mul(fragment))
}

/// Bytes of disk allocated to the files under `path` (symlinks not followed; a hard-linked
/// file counts each time).
pub(crate) fn disk_usage(path: &Path) -> Result<u64, WorkspaceError> {
    let mut total: u64 = 0;
    let mut pending: Vec<PathBuf> = vec![path.to_path_buf()];
    while let Some(next) = pending.pop() {
        let meta = std::fs::symlink_metadata(&next).map_err(|err| io_error(&next, err))?;
        total = total.saturating_add(meta.blocks().saturating_mul(512));
        if meta.is_dir() {
            let entries = std::fs::read_dir(&next).map_err(|err| io_error(&next, err))?;
            for entry in entries {
                let entry = entry.map_err(|err| io_error(&next, err))?;
                pending.push(entry.path());
            }
        }
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn measures_free_and_used_space() {
        let dir = tempfile::tempdir().unwrap();
        assert!(free_bytes(dir.path()).unwrap() > 0);
        let before = disk_usage(dir.path()).unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::fs::write(dir.path().join("sub/data"), vec![7_u8; 256 * 1024]).unwrap();
        std::os::unix::fs::symlink("/usr", dir.path().join("link")).unwrap();
        let after = disk_usage(dir.path()).unwrap();
        assert!(after >= before + 256 * 1024, "{before} → {after}");
        // The symlink to /usr was not followed.
        assert!(after < before + 10 * 1024 * 1024, "{before} → {after}");
    }
}
