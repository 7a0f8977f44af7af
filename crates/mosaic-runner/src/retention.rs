//! Retention of session logs and of the per-issue working directories. A log is kept for a
//! while after its session (for the operator's questions), then deleted. Only regular `*.log`
//! files directly in the log folder count; a symbolic link or anything else found there is left
//! alone. A working directory goes when the caller (who knows the issue's state) says so.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

pub use mosaic_domain::Volume;

/// The session logs in `dir` (none when it does not exist).
pub fn session_logs(dir: &Path) -> std::io::Result<Volume> {
    walk(dir, |_| false).map(|(kept, _)| kept)
}

/// Deletes the session logs in `dir` last written before `before`; returns what was removed.
/// A live session writes its log, so its log is never that old.
pub fn prune_session_logs(dir: &Path, before: SystemTime) -> std::io::Result<Volume> {
    walk(dir, |modified| modified < before).map(|(_, removed)| removed)
}

/// Visits the logs of `dir`; `remove(modified)` says which to delete. Returns (kept, removed).
fn walk(dir: &Path, remove: impl Fn(SystemTime) -> bool) -> std::io::Result<(Volume, Volume)> {
    let mut found = Volume::default();
    let mut removed = Volume::default();
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
                    removed.count += 1;
                    removed.bytes += metadata.len();
                }
                // Gone meanwhile: nothing left to remove.
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
                Err(err) => return Err(err),
            }
        } else {
            found.count += 1;
            found.bytes += metadata.len();
        }
    }
    Ok((found, removed))
}

/// Where directories set aside for deletion wait, under the work root: renaming is quick, so
/// it can happen while nothing may start in them; deleting (and measuring) comes later.
const SET_ASIDE: &str = ".removed";

static SET_ASIDE_COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// The per-issue working directories under `root` (`<owner>/<repo>/issue-<n>`, as
/// [`crate::workdir::issue_relative_dir`] makes them), relative to it. Only real directories
/// count: a symbolic link on the way is neither followed nor listed.
fn issue_work_dirs(root: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut found = Vec::new();
    for owner in subdirectories(root)? {
        // The set-aside folder is not an owner (Gitea's names never start with a dot).
        if owner.to_string_lossy().starts_with('.') {
            continue;
        }
        for repo in subdirectories(&root.join(&owner))? {
            for issue in subdirectories(&root.join(&owner).join(&repo))? {
                if issue.to_string_lossy().starts_with("issue-") {
                    found.push([&owner, &repo, &issue].iter().collect());
                }
            }
        }
    }
    Ok(found)
}

/// Sets aside the per-issue working directories `remove(relative path)` chooses: each is
/// renamed into `<root>/.removed`, a quick step that touches none of its files; returns how
/// many. [`delete_set_aside`] deletes them afterwards.
pub fn set_aside_issue_work_dirs(
    root: &Path,
    remove: impl Fn(&Path) -> bool,
) -> std::io::Result<u64> {
    let mut set_aside = 0;
    let dirs = issue_work_dirs(root)?;
    if !dirs.iter().any(|relative| remove(relative)) {
        return Ok(0);
    }
    let aside = root.join(SET_ASIDE);
    std::fs::create_dir_all(&aside)?;
    for relative in dirs.iter().filter(|relative| remove(relative)) {
        // Unique without a random source: this process, the time, and a counter.
        let target = aside.join(format!(
            "{}-{}-{}",
            std::process::id(),
            chrono::Utc::now().timestamp_micros(),
            SET_ASIDE_COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        match std::fs::rename(root.join(relative), &target) {
            Ok(()) => set_aside += 1,
            // Gone meanwhile: nothing left to remove.
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
            Err(err) => return Err(err),
        }
    }
    Ok(set_aside)
}

/// Deletes what [`set_aside_issue_work_dirs`] set aside (also what a run cut short left);
/// returns what it held.
pub fn delete_set_aside(root: &Path) -> std::io::Result<Volume> {
    let aside = root.join(SET_ASIDE);
    let mut removed = Volume::default();
    for name in subdirectories(&aside)? {
        let path = aside.join(name);
        let bytes = tree_bytes(&path)?;
        match std::fs::remove_dir_all(&path) {
            Ok(()) => {
                removed.count += 1;
                removed.bytes += bytes;
            }
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
            Err(err) => return Err(err),
        }
    }
    Ok(removed)
}

/// The per-issue working directories under `root` and the bytes they hold.
pub fn issue_work_dirs_volume(root: &Path) -> std::io::Result<Volume> {
    let mut kept = Volume::default();
    for relative in issue_work_dirs(root)? {
        kept.count += 1;
        kept.bytes += tree_bytes(&root.join(relative))?;
    }
    Ok(kept)
}

/// The names of the real directories in `dir` (none when it does not exist).
fn subdirectories(dir: &Path) -> std::io::Result<Vec<std::ffi::OsString>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(err) => return Err(err),
    };
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry?;
        // `file_type` does not follow a link, so a link to elsewhere is never entered.
        if entry.file_type()?.is_dir() {
            names.push(entry.file_name());
        }
    }
    Ok(names)
}

/// The bytes of the files under `dir`, links not followed.
fn tree_bytes(dir: &Path) -> std::io::Result<u64> {
    let mut total = 0u64;
    let mut pending = vec![dir.to_path_buf()];
    while let Some(next) = pending.pop() {
        let entries = match std::fs::read_dir(&next) {
            Ok(entries) => entries,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => continue,
            Err(err) => return Err(err),
        };
        for entry in entries {
            let entry = entry?;
            let kind = entry.file_type()?;
            if kind.is_dir() {
                pending.push(entry.path());
            } else if kind.is_file() {
                match entry.metadata() {
                    Ok(metadata) => total = total.saturating_add(metadata.len()),
                    Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
                    Err(err) => return Err(err),
                }
            }
        }
    }
    Ok(total)
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
            Volume {
                count: 2,
                bytes: 110
            }
        );
        let removed = prune_session_logs(dir.path(), SystemTime::now() - 30 * day).unwrap();
        assert_eq!(
            removed,
            Volume {
                count: 1,
                bytes: 100
            }
        );
        assert_eq!(
            prune_session_logs(dir.path(), SystemTime::now() - 30 * day).unwrap(),
            Volume::default(),
            "nothing left to prune"
        );
        assert!(!dir.path().join("old.log").exists());
        assert!(dir.path().join("recent.log").exists());
        assert!(dir.path().join("old-notes.txt").exists());
        assert!(std::fs::symlink_metadata(dir.path().join("link.log")).is_ok());
        assert_eq!(
            session_logs(dir.path()).unwrap(),
            Volume {
                count: 1,
                bytes: 10
            }
        );
        assert_eq!(
            session_logs(&dir.path().join("missing")).unwrap(),
            Volume::default()
        );
    }

    #[test]
    fn only_the_work_dirs_named_go_and_links_are_left_alone() {
        let root = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("precious"), b"keep").unwrap();
        let finished = root.path().join("acme/widgets/issue-1");
        let running = root.path().join("acme/widgets/issue-2");
        std::fs::create_dir_all(finished.join("src")).unwrap();
        std::fs::create_dir_all(&running).unwrap();
        std::fs::write(finished.join("src/a.rs"), vec![b'x'; 100]).unwrap();
        std::fs::write(running.join("b.rs"), vec![b'x'; 7]).unwrap();
        // A link inside a removed directory is removed as a link; its target stays.
        std::os::unix::fs::symlink(outside.path(), finished.join("link")).unwrap();
        // A linked "issue directory" is never entered or removed.
        std::os::unix::fs::symlink(outside.path(), root.path().join("acme/widgets/issue-3"))
            .unwrap();
        let set_aside = set_aside_issue_work_dirs(root.path(), |relative| {
            relative != Path::new("acme/widgets/issue-2")
        })
        .unwrap();
        assert_eq!(set_aside, 1);
        // Set aside: gone from its place at once, deleted (and measured) afterwards.
        assert!(!finished.exists());
        assert_eq!(
            issue_work_dirs_volume(root.path()).unwrap(),
            Volume { count: 1, bytes: 7 }
        );
        assert_eq!(
            delete_set_aside(root.path()).unwrap(),
            Volume {
                count: 1,
                bytes: 100
            }
        );
        assert_eq!(delete_set_aside(root.path()).unwrap(), Volume::default());
        assert!(!finished.exists());
        assert!(running.join("b.rs").is_file());
        assert!(outside.path().join("precious").is_file());
        assert!(
            std::fs::symlink_metadata(root.path().join("acme/widgets/issue-3")).is_ok(),
            "a link is left alone"
        );
        let missing = root.path().join("missing");
        assert_eq!(set_aside_issue_work_dirs(&missing, |_| true).unwrap(), 0);
        assert_eq!(issue_work_dirs_volume(&missing).unwrap(), Volume::default());
        assert_eq!(delete_set_aside(&missing).unwrap(), Volume::default());
    }
}
