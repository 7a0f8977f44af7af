//! Bare repositories for tests, built and read with the git CLI (plumbing only: no work tree,
//! no user configuration).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Runs git with a clean environment (no system or user configuration) in `dir`; stdout on
/// success, a message with stderr otherwise.
pub fn git(dir: &Path, args: &[&str]) -> Result<String, String> {
    git_with_input(dir, args, None)
}

/// [`git`] with `input` on stdin.
pub fn git_with_input(dir: &Path, args: &[&str], input: Option<&str>) -> Result<String, String> {
    let mut child = Command::new("git")
        .args(args)
        .current_dir(dir)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", dir)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_AUTHOR_NAME", "Test Author")
        .env("GIT_AUTHOR_EMAIL", "author@example.invalid")
        .env("GIT_COMMITTER_NAME", "Test Author")
        .env("GIT_COMMITTER_EMAIL", "author@example.invalid")
        .env("LANG", "C")
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|err| format!("git {args:?}: {err}"))?;
    if let (Some(text), Some(mut stdin)) = (input, child.stdin.take()) {
        stdin
            .write_all(text.as_bytes())
            .map_err(|err| format!("git {args:?}: {err}"))?;
    }
    let output = child
        .wait_with_output()
        .map_err(|err| format!("git {args:?}: {err}"))?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout)
            .trim_end()
            .to_owned())
    } else {
        Err(format!(
            "git {args:?} in {}: {}: {}",
            dir.display(),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}

/// Creates the bare repository `<project_root>/<owner>/<name>.git` with one commit on
/// `branch` holding `README.md`. Returns its path.
pub fn create_bare_repository(
    project_root: &Path,
    owner: &str,
    name: &str,
    branch: &str,
) -> Result<PathBuf, String> {
    let path = project_root.join(owner).join(format!("{name}.git"));
    std::fs::create_dir_all(&path).map_err(|err| format!("{}: {err}", path.display()))?;
    git(
        &path,
        &["init", "--quiet", "--bare", "--initial-branch", branch],
    )?;
    commit_file(
        &path,
        branch,
        "README.md",
        &format!("# {name}\n"),
        "Initial commit",
    )?;
    Ok(path)
}

/// Adds a commit on `branch` of the bare repository at `bare` that sets the top-level file
/// `file_name` to `content` (other top-level entries kept). Returns the commit id.
pub fn commit_file(
    bare: &Path,
    branch: &str,
    file_name: &str,
    content: &str,
    message: &str,
) -> Result<String, String> {
    let reference = format!("refs/heads/{branch}");
    let parent = git(bare, &["rev-parse", "--verify", "--quiet", &reference]).ok();
    let blob = git_with_input(bare, &["hash-object", "-w", "--stdin"], Some(content))?;
    let mut entries = match &parent {
        Some(parent) => git(bare, &["ls-tree", parent])?,
        None => String::new(),
    }
    .lines()
    .filter(|line| line.split('\t').nth(1) != Some(file_name))
    .map(str::to_owned)
    .collect::<Vec<_>>();
    entries.push(format!("100644 blob {blob}\t{file_name}"));
    let tree = git_with_input(
        bare,
        &["mktree"],
        Some(&format!("{}\n", entries.join("\n"))),
    )?;
    let mut args = vec!["commit-tree", tree.as_str(), "-m", message];
    if let Some(parent) = &parent {
        args.extend(["-p", parent.as_str()]);
    }
    let commit = git(bare, &args)?;
    git(bare, &["update-ref", &reference, &commit])?;
    Ok(commit)
}
