//! Retention of session logs: a log is kept for a while after its session (for the operator's
//! questions), then deleted. Only regular `*.log` files directly in the log folder count; a
//! symbolic link or anything else found there is left alone.

use std::path::Path;
use std::time::SystemTime;

/// Session log files and their size: what is kept, or what a run removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
pub struct LogVolume {
    pub files: u64,
    pub bytes: u64,
}

/// The session logs in `dir` (none when it does not exist).
pub fn session_logs(dir: &Path) -> std::io::Result<LogVolume> {
    walk(dir, |_| false).map(|(kept, _)| kept)
}

/// Deletes the session logs in `dir` last written before `before`; returns what was removed.
/// A live session writes its log, so its log is never that old.
pub fn prune_session_logs(dir: &Path, before: SystemTime) -> std::io::Result<LogVolume> {
    walk(dir, |modified| modified < before).map(|(_, removed)| removed)
}

/// Visits the logs of `dir`; `remove(modified)` says which to delete. Returns (kept, removed).
fn walk(
    dir: &Path,
    remove: impl Fn(SystemTime) -> bool,
) -> std::io::Result<(LogVolume, LogVolume)> {
    let mut found = LogVolume::default();
    let mut removed = LogVolume::default();
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok((found, removed)),
        Err(err) => return Err(err),
    };
    for entry in entries {
        let entry = entry?;
        let path = entry.path();
        // `symlink_metadata`: a link is not followed, so nothing outside the folder is touched.
        let metadata = std::fs::symlink_metadata(&path)?;
        if !metadata.file_type().is_file() || path.extension().is_none_or(|ext| ext != "log") {
            continue;
        }
        let modified = metadata.modified()?;
        if remove(modified) {
            match std::fs::remove_file(&path) {
                Ok(()) => {
                    removed.files += 1;
                    removed.bytes += metadata.len();
                }
                // Gone meanwhile: nothing left to remove.
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
                Err(err) => return Err(err),
            }
        } else {
            found.files += 1;
            found.bytes += metadata.len();
        }
    }
    Ok((found, removed))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn write(dir: &Path, name: &str, bytes: usize, age: Duration) {
        let path = dir.join(name);
        std::fs::write(&path, vec![b'x'; bytes]).unwrap();
        let file = std::fs::File::options().write(true).open(&path).unwrap();
        file.set_modified(SystemTime::now() - age).unwrap();
    }

    #[test]
    fn old_logs_go_recent_ones_and_other_files_stay() {
        let dir = tempfile::tempdir().unwrap();
        let day = Duration::from_secs(86_400);
        write(dir.path(), "old.log", 100, 40 * day);
        write(dir.path(), "recent.log", 10, day);
        write(dir.path(), "old-notes.txt", 7, 40 * day);
        std::os::unix::fs::symlink(dir.path().join("old.log"), dir.path().join("link.log"))
            .unwrap();
        assert_eq!(
            session_logs(dir.path()).unwrap(),
            LogVolume {
                files: 2,
                bytes: 110
            }
        );
        let removed = prune_session_logs(dir.path(), SystemTime::now() - 30 * day).unwrap();
        assert_eq!(
            removed,
            LogVolume {
                files: 1,
                bytes: 100
            }
        );
        assert_eq!(
            prune_session_logs(dir.path(), SystemTime::now() - 30 * day).unwrap(),
            LogVolume::default(),
            "nothing left to prune"
        );
        assert!(!dir.path().join("old.log").exists());
        assert!(dir.path().join("recent.log").exists());
        assert!(dir.path().join("old-notes.txt").exists());
        assert!(std::fs::symlink_metadata(dir.path().join("link.log")).is_ok());
        assert_eq!(
            session_logs(dir.path()).unwrap(),
            LogVolume {
                files: 1,
                bytes: 10
            }
        );
        assert_eq!(
            session_logs(&dir.path().join("missing")).unwrap(),
            LogVolume::default()
        );
    }
}
