#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]
//! The git adapter against real git: a bare repository served over smart HTTP by
//! `git http-backend` behind a server that requires the bot's token.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use mosaic_domain::{IssueRef, RepoName};
use mosaic_git::{GitWorkspaces, LEFTOVER_COMMIT_SUBJECT};
use mosaic_security::Secret;
use mosaic_testkit::GitHttpServer;
use mosaic_testkit::repo::{commit_file, create_bare_repository, git};
use mosaic_workspace::{
    PrepareRequest, RepoSource, Workspace, WorkspaceConfig, WorkspaceError, Workspaces,
    handover_text,
};

const TOKEN: &str = "mosaic-bot-token-7f3a9c2e5b1d";

struct Fixture {
    /// The served repositories (`acme/app.git`).
    served: tempfile::TempDir,
    /// The workspace root.
    root: tempfile::TempDir,
    server: GitHttpServer,
    bare: PathBuf,
    workspaces: Arc<GitWorkspaces>,
}

/// The settings every test starts from, with the workspace root under `dir`.
fn test_config(dir: &Path) -> WorkspaceConfig {
    WorkspaceConfig {
        root: dir.join("ws"),
        min_free_bytes: 1024,
        committer_name: "Mosaic Bot".to_owned(),
        committer_email: "bot@mosaic.invalid".to_owned(),
        network_timeout_secs: 60,
        command_timeout_secs: 60,
        ..WorkspaceConfig::default()
    }
}

fn repo() -> RepoName {
    RepoName::new("acme", "app").unwrap()
}

fn issue(number: u64) -> IssueRef {
    IssueRef::new(repo(), number)
}

impl Fixture {
    async fn new() -> Self {
        Self::with(|config| config, TOKEN, Duration::ZERO).await
    }

    async fn with(
        adjust: impl FnOnce(WorkspaceConfig) -> WorkspaceConfig,
        token: &str,
        delay: Duration,
    ) -> Self {
        let served = tempfile::tempdir().unwrap();
        let bare = create_bare_repository(served.path(), "acme", "app", "main").unwrap();
        let server = GitHttpServer::start_with_delay(served.path(), TOKEN, delay)
            .await
            .unwrap();
        let root = tempfile::tempdir().unwrap();
        let config = adjust(test_config(root.path()));
        let workspaces = Arc::new(GitWorkspaces::new(config, Secret::new(token)).unwrap());
        Self {
            served,
            root,
            server,
            bare,
            workspaces,
        }
    }

    fn request(&self, number: u64, title: &str) -> PrepareRequest {
        PrepareRequest {
            issue: issue(number),
            title: title.to_owned(),
            source: RepoSource {
                repo: repo(),
                clone_url: self.server.clone_url("acme", "app"),
                default_branch: "main".to_owned(),
            },
        }
    }

    async fn prepare(&self, number: u64, title: &str) -> Workspace {
        self.workspaces
            .prepare(&self.request(number, title))
            .await
            .unwrap()
            .workspace
    }

    fn mirror(&self) -> PathBuf {
        self.workspaces.mirror_path(&repo())
    }

    /// Another coordinator, with a root of its own, sharing the same remote.
    fn other_coordinator(&self) -> (tempfile::TempDir, GitWorkspaces) {
        let root = tempfile::tempdir().unwrap();
        let workspaces = GitWorkspaces::new(test_config(root.path()), Secret::new(TOKEN)).unwrap();
        (root, workspaces)
    }

    /// The commit the remote's branch `branch` names.
    fn remote_commit(&self, branch: &str) -> String {
        git(&self.bare, &["rev-parse", &format!("refs/heads/{branch}")]).unwrap()
    }
}

fn head(worktree: &Path) -> String {
    git(worktree, &["rev-parse", "HEAD"]).unwrap()
}

/// An agent's commit, made with the test's own git identity.
fn agent_commit(worktree: &Path, file: &str, content: &str, message: &str) {
    std::fs::write(worktree.join(file), content).unwrap();
    git(worktree, &["add", file]).unwrap();
    git(worktree, &["commit", "--quiet", "-m", message]).unwrap();
}

/// Every file under `dir` whose bytes contain `needle`.
fn files_containing(dir: &Path, needle: &str) -> Vec<PathBuf> {
    let mut hits = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(next) = pending.pop() {
        let meta = std::fs::symlink_metadata(&next).unwrap();
        if meta.is_dir() {
            for entry in std::fs::read_dir(&next).unwrap() {
                pending.push(entry.unwrap().path());
            }
        } else if meta.is_file() {
            let bytes = std::fs::read(&next).unwrap();
            if bytes
                .windows(needle.len())
                .any(|window| window == needle.as_bytes())
            {
                hits.push(next);
            }
        }
    }
    hits
}

#[tokio::test]
async fn prepare_commit_state_push_reaches_the_remote() {
    let fx = Fixture::new().await;
    let started = std::time::Instant::now();
    let prepared = fx
        .workspaces
        .prepare(&fx.request(7, "Fix the login page"))
        .await
        .unwrap();
    println!("first prepare (mirror created): {:?}", started.elapsed());
    assert!(!prepared.reused);
    assert_eq!(prepared.commits_behind_base, 0);
    let ws = prepared.workspace;
    assert_eq!(ws.branch, "mosaic/7-fix-the-login-page");
    assert_eq!(ws.base_branch, "main");
    assert!(ws.path.starts_with(fx.workspaces.root()));
    assert!(ws.path.join("README.md").is_file());
    assert_eq!(fx.workspaces.ahead_of_base(&ws).await.unwrap(), 0);

    agent_commit(&ws.path, "login.rs", "fn login() {}\n", "Fix login");
    std::fs::write(ws.path.join("scratch.txt"), "notes").unwrap();
    let state = fx.workspaces.state(&ws).await.unwrap();
    assert_eq!(state.branch, ws.branch);
    assert_eq!(state.base_branch, "main");
    assert_eq!(state.commits_ahead, 1);
    assert_eq!(state.commits_behind, 0);
    assert_eq!(state.ahead.len(), 1);
    assert_eq!(state.ahead[0].subject, "Fix login");
    assert_eq!(state.ahead[0].id, state.head_commit);
    assert_eq!(state.status_short.trim(), "?? scratch.txt");
    assert!(state.diffstat.contains("login.rs"), "{}", state.diffstat);
    assert_ne!(state.base_commit, state.head_commit);
    let text = handover_text(&state);
    assert!(
        text.contains("Fix login") && text.contains("scratch.txt"),
        "{text}"
    );
    assert_eq!(fx.workspaces.ahead_of_base(&ws).await.unwrap(), 1);

    let started = std::time::Instant::now();
    let pushed = fx.workspaces.push(&ws).await.unwrap();
    println!("push: {:?}", started.elapsed());
    assert_eq!(pushed.branch, ws.branch);
    assert_eq!(pushed.commit, state.head_commit);
    let remote = git(
        &fx.bare,
        &["rev-parse", "refs/heads/mosaic/7-fix-the-login-page"],
    )
    .unwrap();
    assert_eq!(remote, pushed.commit);
    let subject = git(&fx.bare, &["log", "-1", "--format=%s", &remote]).unwrap();
    assert_eq!(subject, "Fix login");
    // The remote's default branch is untouched.
    assert_eq!(
        git(&fx.bare, &["rev-list", "--count", "main"]).unwrap(),
        "1"
    );
    // A second push of the same commit is a no-op that succeeds (the lease holds).
    fx.workspaces.push(&ws).await.unwrap();
    // Every request to the server carried the token.
    let served = fx.server.served();
    assert!(!served.is_empty());
    assert!(
        served.iter().all(|r| r.authorized && r.status < 400),
        "{served:?}"
    );
    assert!(fx.workspaces.disk_usage(&ws).await.unwrap() > 0);
    assert!(fx.workspaces.free_bytes().await.unwrap() > 0);
}

#[tokio::test]
async fn a_second_prepare_reuses_the_worktree_and_reports_how_far_the_base_moved() {
    let fx = Fixture::new().await;
    let first = fx.prepare(3, "Add a cache").await;
    agent_commit(&first.path, "cache.rs", "// cache\n", "Start the cache");
    std::fs::write(first.path.join("wip.txt"), "unfinished").unwrap();
    commit_file(&fx.bare, "main", "CHANGELOG.md", "one\n", "Upstream one").unwrap();
    commit_file(&fx.bare, "main", "CHANGELOG.md", "two\n", "Upstream two").unwrap();

    // The title changed in between: the branch stays.
    let started = std::time::Instant::now();
    let again = fx
        .workspaces
        .prepare(&fx.request(3, "Add a cache (renamed)"))
        .await
        .unwrap();
    println!("reusing prepare (fetch): {:?}", started.elapsed());
    assert!(again.reused);
    assert_eq!(again.workspace, first);
    assert_eq!(again.commits_behind_base, 2);
    assert_eq!(
        std::fs::read_to_string(first.path.join("wip.txt")).unwrap(),
        "unfinished"
    );
    let state = fx.workspaces.state(&again.workspace).await.unwrap();
    assert_eq!((state.commits_ahead, state.commits_behind), (1, 2));
    assert!(handover_text(&state).contains("2 commit(s) the branch does not contain"));
}

#[tokio::test]
async fn issues_of_one_repository_prepared_concurrently_get_their_own_worktrees() {
    let fx = Fixture::new().await;
    // First while the mirror does not exist yet (all of them would create it), then with it.
    for numbers in [[11_u64, 12, 13, 14, 15, 16], [21, 22, 23, 24, 25, 26]] {
        let tasks: Vec<_> = numbers
            .iter()
            .map(|&n| {
                let workspaces = Arc::clone(&fx.workspaces);
                let request = fx.request(n, &format!("Task {n}"));
                tokio::spawn(async move { workspaces.prepare(&request).await })
            })
            .collect();
        let mut paths = Vec::new();
        for task in tasks {
            let prepared = task.await.unwrap().unwrap();
            assert!(!prepared.reused);
            paths.push(prepared.workspace.path);
        }
        paths.sort();
        paths.dedup();
        assert_eq!(paths.len(), numbers.len());
        let listing = git(&fx.mirror(), &["worktree", "list", "--porcelain"]).unwrap();
        for n in numbers {
            let branch = format!("branch refs/heads/mosaic/{n}-task-{n}");
            assert!(listing.contains(&branch), "{listing}");
        }
    }
}

#[tokio::test]
async fn cleanup_removes_worktree_and_local_branch_but_keeps_the_remote_branch() {
    let fx = Fixture::new().await;
    let ws = fx.prepare(5, "Remove dead code").await;
    agent_commit(&ws.path, "dead.rs", "", "Remove dead code");
    let pushed = fx.workspaces.push(&ws).await.unwrap();

    let removed = fx.workspaces.cleanup(&ws).await.unwrap();
    assert_eq!(removed.path, ws.path);
    assert_eq!(removed.branch.as_deref(), Some(ws.branch.as_str()));
    assert!(!ws.path.exists());
    let listing = git(&fx.mirror(), &["worktree", "list", "--porcelain"]).unwrap();
    assert!(!listing.contains("issue-5"), "{listing}");
    assert_eq!(listing.matches("worktree ").count(), 1, "{listing}");
    let local = format!("refs/heads/{}", ws.branch);
    assert!(git(&fx.mirror(), &["rev-parse", "--verify", "--quiet", &local]).is_err());
    assert_eq!(
        git(&fx.bare, &["rev-parse", &local]).unwrap(),
        pushed.commit
    );

    // Cleaning up again is harmless; preparing again continues from the pushed branch.
    fx.workspaces.cleanup(&ws).await.unwrap();
    let again = fx
        .workspaces
        .prepare(&fx.request(5, "Another title"))
        .await
        .unwrap();
    assert!(!again.reused);
    assert_eq!(again.workspace.branch, ws.branch);
    assert!(again.workspace.path.join("dead.rs").exists());
    assert_eq!(
        fx.workspaces.ahead_of_base(&again.workspace).await.unwrap(),
        1
    );
}

#[tokio::test]
async fn a_wrong_token_gives_a_clear_error_without_any_token() {
    let wrong = "wrong-token-9d8c7b6a5f4e";
    let fx = Fixture::with(|config| config, wrong, Duration::ZERO).await;
    let err = fx
        .workspaces
        .prepare(&fx.request(1, "Anything"))
        .await
        .unwrap_err();
    println!("wrong token: {err}");
    assert!(
        matches!(err, WorkspaceError::Unauthorized { .. }),
        "{err:?}"
    );
    let text = format!("{err} / {err:?}");
    assert!(text.contains("rejected the bot's credentials"), "{text}");
    assert!(text.contains("acme/app"), "{text}");
    assert!(!text.contains(wrong) && !text.contains(TOKEN), "{text}");
    assert!(fx.server.served().iter().all(|r| !r.authorized));
}

/// Writes a `git` wrapper that records each argv line, then runs the real git.
fn recording_git(dir: &Path) -> (PathBuf, PathBuf) {
    use std::os::unix::fs::PermissionsExt;
    let log = dir.join("argv.log");
    let script = dir.join("git-recording");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\nprintf '%s\\n' \"$*\" >> '{}'\nexec git \"$@\"\n",
            log.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    (script, log)
}

/// Command lines of every process on the machine that hold `needle`, and whether a
/// git HTTP helper was seen at all (proof that the watch ran while git talked to the server).
fn scan_processes(needle: &str, seen_helper: &AtomicBool) -> Vec<String> {
    let mut hits = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return hits;
    };
    for entry in entries.flatten() {
        let Ok(bytes) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&bytes).replace('\0', " ");
        if cmdline.contains("remote-http") {
            seen_helper.store(true, Ordering::Relaxed);
        }
        if cmdline.contains(needle) {
            hits.push(cmdline);
        }
    }
    hits
}

#[tokio::test]
async fn the_token_is_in_no_file_and_no_command_line() {
    let scripts = tempfile::tempdir().unwrap();
    let (script, argv_log) = recording_git(scripts.path());
    // Each request waits, so the push's processes are alive long enough to be seen.
    let fx = Fixture::with(
        |config| WorkspaceConfig {
            git_program: script.clone(),
            ..config
        },
        TOKEN,
        Duration::from_millis(300),
    )
    .await;

    let stop = Arc::new(AtomicBool::new(false));
    let seen_helper = Arc::new(AtomicBool::new(false));
    let watcher = {
        let stop = Arc::clone(&stop);
        let seen_helper = Arc::clone(&seen_helper);
        std::thread::spawn(move || {
            let mut hits = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                hits.extend(scan_processes(TOKEN, &seen_helper));
                std::thread::sleep(Duration::from_millis(5));
            }
            hits
        })
    };
    let ws = fx.prepare(9, "Secure things").await;
    agent_commit(&ws.path, "a.txt", "a\n", "Agent work");
    std::fs::write(ws.path.join("left.txt"), "left over").unwrap();
    fx.workspaces.commit_leftovers(&ws).await.unwrap();
    fx.workspaces.push(&ws).await.unwrap();
    stop.store(true, Ordering::Relaxed);
    let hits = watcher.join().unwrap();
    assert!(hits.is_empty(), "token in a command line: {hits:?}");
    assert!(
        seen_helper.load(Ordering::Relaxed),
        "the watch never saw git talk HTTP"
    );

    let argv = std::fs::read_to_string(&argv_log).unwrap();
    assert!(argv.contains("push") && argv.contains("fetch"), "{argv}");
    assert!(!argv.contains(TOKEN), "{argv}");

    // No file under the root (mirror config, worktree `.git`, the worktree's own files, git's
    // home) holds the token.
    let hits = files_containing(fx.root.path(), TOKEN);
    assert!(hits.is_empty(), "token in {hits:?}");
    // What the agent's git sees in the worktree: no credential, no extra header.
    let config = git(&ws.path, &["config", "--list", "--show-origin"]).unwrap();
    assert!(
        !config.contains(TOKEN) && !config.to_lowercase().contains("extraheader"),
        "{config}"
    );
    assert!(!config.contains("credential"), "{config}");
}

#[tokio::test]
async fn uncommitted_changes_are_committed_by_the_bot() {
    let fx = Fixture::new().await;
    let ws = fx.prepare(4, "Tidy up").await;
    assert_eq!(fx.workspaces.commit_leftovers(&ws).await.unwrap(), None);
    assert_eq!(fx.workspaces.ahead_of_base(&ws).await.unwrap(), 0);

    std::fs::write(ws.path.join("README.md"), "# changed\n").unwrap();
    std::fs::create_dir(ws.path.join("src")).unwrap();
    std::fs::write(ws.path.join("src/new.rs"), "// new\n").unwrap();
    let commit = fx.workspaces.commit_leftovers(&ws).await.unwrap().unwrap();
    let line = git(
        &ws.path,
        &["log", "-1", "--format=%H|%an|%ae|%cn|%ce|%s|%b"],
    )
    .unwrap();
    let expected = format!(
        "{commit}|Mosaic Bot|bot@mosaic.invalid|Mosaic Bot|bot@mosaic.invalid|{LEFTOVER_COMMIT_SUBJECT}|"
    );
    assert!(line.starts_with(&expected), "{line}");
    assert!(line.contains("the agent left uncommitted"), "{line}");
    let state = fx.workspaces.state(&ws).await.unwrap();
    assert!(state.status_short.is_empty(), "{}", state.status_short);
    assert_eq!(state.commits_ahead, 1);
    assert!(state.diffstat.contains("src/new.rs"), "{}", state.diffstat);
    assert_eq!(fx.workspaces.commit_leftovers(&ws).await.unwrap(), None);
}

#[tokio::test]
async fn a_path_outside_the_root_is_never_deleted() {
    let fx = Fixture::new().await;
    let ws = fx.prepare(7, "Real one").await;
    let other = fx.prepare(8, "Other one").await;
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("precious"), "keep").unwrap();

    let forged = [
        Workspace {
            path: outside.path().to_path_buf(),
            ..ws.clone()
        },
        Workspace {
            path: fx.workspaces.root().to_path_buf(),
            ..ws.clone()
        },
        Workspace {
            path: ws.path.join("..").join("issue-8"),
            ..ws.clone()
        },
        // Issue 7's record pointing at issue 8's worktree.
        Workspace {
            path: other.path.clone(),
            ..ws.clone()
        },
    ];
    for workspace in &forged {
        let err = fx.workspaces.cleanup(workspace).await.unwrap_err();
        assert!(matches!(err, WorkspaceError::OutsideRoot { .. }), "{err}");
        let err = fx.workspaces.disk_usage(workspace).await.unwrap_err();
        assert!(matches!(err, WorkspaceError::OutsideRoot { .. }), "{err}");
    }
    assert!(outside.path().join("precious").is_file());
    assert!(other.path.join("README.md").is_file());
    assert!(ws.path.join("README.md").is_file());
}

#[tokio::test]
async fn push_refuses_branches_outside_the_prefix() {
    let fx = Fixture::new().await;
    let ws = fx.prepare(2, "Something").await;
    let before = git(&fx.bare, &["rev-parse", "main"]).unwrap();
    for branch in ["main", "mosaic/3-not-this-issue", "other/2-x"] {
        let forged = Workspace {
            branch: branch.to_owned(),
            ..ws.clone()
        };
        let err = fx.workspaces.push(&forged).await.unwrap_err();
        assert!(matches!(err, WorkspaceError::NotOurBranch { .. }), "{err}");
    }
    assert_eq!(git(&fx.bare, &["rev-parse", "main"]).unwrap(), before);
}

#[tokio::test]
async fn a_push_never_overwrites_someone_elses_commit_on_the_branch() {
    let fx = Fixture::new().await;
    let ws = fx.prepare(6, "Shared").await;
    agent_commit(&ws.path, "a.txt", "a\n", "First");
    fx.workspaces.push(&ws).await.unwrap();
    let theirs = commit_file(&fx.bare, &ws.branch, "b.txt", "b\n", "Someone else").unwrap();
    agent_commit(&ws.path, "c.txt", "c\n", "Second");
    let err = fx.workspaces.push(&ws).await.unwrap_err();
    assert!(
        matches!(
            err,
            WorkspaceError::Git {
                operation: "push",
                ..
            }
        ),
        "{err}"
    );
    let remote = git(
        &fx.bare,
        &["rev-parse", &format!("refs/heads/{}", ws.branch)],
    )
    .unwrap();
    assert_eq!(remote, theirs);
}

#[tokio::test]
async fn prune_orphans_removes_the_worktrees_of_no_live_issue() {
    let fx = Fixture::new().await;
    let one = fx.prepare(1, "One").await;
    let two = fx.prepare(2, "Two").await;
    let three = fx.prepare(3, "Three").await;
    // Not a workspace place: left alone.
    let stray = one.path.parent().unwrap().join("notes");
    std::fs::create_dir(&stray).unwrap();

    let removed = fx.workspaces.prune_orphans(&[issue(2)]).await.unwrap();
    let mut issues: Vec<u64> = removed.iter().map(|r| r.issue.number).collect();
    issues.sort_unstable();
    assert_eq!(issues, [1, 3]);
    assert!(removed.iter().all(|r| r.branch.is_some()), "{removed:?}");
    assert!(!one.path.exists() && !three.path.exists());
    assert!(two.path.join("README.md").is_file() && stray.is_dir());
    let listing = git(&fx.mirror(), &["worktree", "list", "--porcelain"]).unwrap();
    assert!(
        listing.contains("issue-2") && !listing.contains("issue-1") && !listing.contains("issue-3")
    );
    let branches = git(
        &fx.mirror(),
        &["for-each-ref", "--format=%(refname)", "refs/heads"],
    )
    .unwrap();
    assert_eq!(branches.trim(), "refs/heads/mosaic/2-two");
    assert!(
        fx.workspaces
            .prune_orphans(&[issue(2)])
            .await
            .unwrap()
            .is_empty()
    );
}

#[tokio::test]
async fn too_little_free_space_prepares_nothing() {
    let fx = Fixture::with(
        |config| WorkspaceConfig {
            min_free_bytes: u64::MAX,
            ..config
        },
        TOKEN,
        Duration::ZERO,
    )
    .await;
    let err = fx
        .workspaces
        .prepare(&fx.request(1, "x"))
        .await
        .unwrap_err();
    assert!(matches!(err, WorkspaceError::LowDiskSpace { .. }), "{err}");
    assert!(fx.server.served().is_empty());
}

#[tokio::test]
async fn a_configured_base_branch_is_used_and_a_missing_one_is_named() {
    let fx = Fixture::with(
        |config| WorkspaceConfig {
            base_branch: Some("release".to_owned()),
            ..config
        },
        TOKEN,
        Duration::ZERO,
    )
    .await;
    let err = fx
        .workspaces
        .prepare(&fx.request(1, "x"))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, WorkspaceError::MissingBase { branch, .. } if branch == "release"),
        "{err}"
    );
    let release = commit_file(&fx.bare, "release", "R.md", "r\n", "Release base").unwrap();
    let ws = fx.prepare(1, "x").await;
    assert_eq!(ws.base_branch, "release");
    assert_eq!(git(&ws.path, &["rev-parse", "HEAD"]).unwrap(), release);
}

#[tokio::test]
async fn hooks_an_agent_plants_never_run_with_the_token() {
    use std::os::unix::fs::PermissionsExt;
    let fx = Fixture::new().await;
    let ws = fx.prepare(10, "Hooks").await;
    // The agent can write the shared repository: it plants hooks that dump their environment,
    // in the mirror's hook folder and in one it configures itself.
    let marker = fx.root.path().join("hook-ran");
    let own_hooks = ws.path.join("my-hooks");
    std::fs::create_dir_all(&own_hooks).unwrap();
    for dir in [fx.mirror().join("hooks"), own_hooks.clone()] {
        std::fs::create_dir_all(&dir).unwrap();
        for hook in [
            "pre-commit",
            "post-commit",
            "pre-push",
            "reference-transaction",
        ] {
            let path = dir.join(hook);
            std::fs::write(&path, format!("#!/bin/sh\nenv >> '{}'\n", marker.display())).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
    }
    git(
        &ws.path,
        &["config", "core.hooksPath", own_hooks.to_str().unwrap()],
    )
    .unwrap();
    std::fs::write(ws.path.join("work.txt"), "work").unwrap();

    fx.workspaces.commit_leftovers(&ws).await.unwrap().unwrap();
    fx.workspaces.push(&ws).await.unwrap();
    fx.workspaces
        .prepare(&fx.request(10, "Hooks"))
        .await
        .unwrap();
    assert!(
        !marker.exists(),
        "a hook ran: {}",
        std::fs::read_to_string(&marker).unwrap_or_default()
    );
}

#[tokio::test]
async fn a_url_rewrite_planted_by_the_agent_does_not_carry_the_token_elsewhere() {
    let fx = Fixture::new().await;
    let ws = fx.prepare(12, "Redirect").await;
    agent_commit(&ws.path, "x.txt", "x\n", "Work");
    // Another server the agent controls, holding a copy of the repository.
    let elsewhere = tempfile::tempdir().unwrap();
    create_bare_repository(elsewhere.path(), "acme", "app", "main").unwrap();
    let evil = GitHttpServer::start(elsewhere.path(), TOKEN).await.unwrap();
    let rewrite = format!("url.{}/.insteadOf", evil.base_url());
    git(
        &ws.path,
        &["config", &rewrite, &format!("{}/", fx.server.base_url())],
    )
    .unwrap();

    // And a proxy and no TLS checks for exactly the URLs git will request.
    for (key, value) in [
        (
            format!(
                "http.{}/info/refs.proxy",
                fx.server.clone_url("acme", "app")
            ),
            evil.base_url(),
        ),
        ("http.proxy".to_owned(), evil.base_url()),
        ("http.sslVerify".to_owned(), "false".to_owned()),
    ] {
        git(&ws.path, &["config", &key, &value]).unwrap();
    }

    let pushed = fx.workspaces.push(&ws).await.unwrap();
    assert!(evil.served().is_empty(), "{:?}", evil.served());
    let remote = git(
        &fx.bare,
        &["rev-parse", &format!("refs/heads/{}", ws.branch)],
    )
    .unwrap();
    assert_eq!(remote, pushed.commit);
    // What the agent planted is gone from the shared configuration.
    let config = std::fs::read_to_string(fx.mirror().join("config")).unwrap();
    assert!(
        !config.contains("insteadOf") && !config.contains("proxy"),
        "{config}"
    );
    assert!(config.contains("bare = true"), "{config}");
    assert_eq!(
        git(&ws.path, &["rev-parse", "--is-inside-work-tree"]).unwrap(),
        "true"
    );
}

#[tokio::test]
async fn a_rewrite_to_another_repository_on_the_same_server_gets_no_token_either() {
    let fx = Fixture::new().await;
    let ws = fx.prepare(13, "Other repository").await;
    agent_commit(&ws.path, "x.txt", "x\n", "Work");
    let other = create_bare_repository(fx.served.path(), "acme", "other", "main").unwrap();
    let rewrite = format!("url.{}.insteadOf", fx.server.clone_url("acme", "other"));
    git(
        &ws.path,
        &["config", &rewrite, &fx.server.clone_url("acme", "app")],
    )
    .unwrap();

    fx.workspaces.push(&ws).await.unwrap();
    let to_other: Vec<_> = fx
        .server
        .served()
        .into_iter()
        .filter(|r| r.uri.starts_with("/acme/other.git"))
        .collect();
    assert!(to_other.is_empty(), "{to_other:?}");
    let branch = format!("refs/heads/{}", ws.branch);
    assert!(git(&other, &["rev-parse", "--verify", "--quiet", &branch]).is_err());
    assert!(git(&fx.bare, &["rev-parse", "--verify", "--quiet", &branch]).is_ok());
}

#[tokio::test]
async fn a_prefix_without_a_slash_names_and_finds_the_branches() {
    let fx = Fixture::with(
        |config| WorkspaceConfig {
            branch_prefix: "bot-".to_owned(),
            ..config
        },
        TOKEN,
        Duration::ZERO,
    )
    .await;
    let ws = fx.prepare(5, "Flat names").await;
    assert_eq!(ws.branch, "bot-5-flat-names");
    agent_commit(&ws.path, "f.txt", "f\n", "Flat");
    fx.workspaces.push(&ws).await.unwrap();
    fx.workspaces.cleanup(&ws).await.unwrap();
    // Continued from the pushed branch, whatever the title says now.
    let again = fx.prepare(5, "Renamed").await;
    assert_eq!(again.branch, "bot-5-flat-names");
    assert!(again.path.join("f.txt").is_file());
}

#[tokio::test]
async fn a_base_file_is_read_from_the_base_branch_never_from_the_agents_worktree() {
    let fx = Fixture::new().await;
    commit_file(
        &fx.bare,
        "main",
        "gates.toml",
        "# from the base\n",
        "Add gates",
    )
    .unwrap();
    let ws = fx.prepare(21, "Read the base").await;
    // The agent rewrites the file and commits it on its branch: the base's copy still counts.
    agent_commit(&ws.path, "gates.toml", "# the agent's\n", "Mine");
    assert_eq!(
        fx.workspaces
            .read_base_file(&ws, "gates.toml")
            .await
            .unwrap()
            .as_deref(),
        Some("# from the base\n")
    );
    assert_eq!(
        fx.workspaces
            .read_base_file(&ws, "missing.toml")
            .await
            .unwrap(),
        None
    );
    let other_base = Workspace {
        base_branch: "gone".to_owned(),
        ..ws.clone()
    };
    assert!(matches!(
        fx.workspaces
            .read_base_file(&other_base, "gates.toml")
            .await,
        Err(mosaic_workspace::WorkspaceError::MissingBase { .. })
    ));
}

#[tokio::test]
async fn follow_remote_takes_up_what_another_coordinator_pushed() {
    let fx = Fixture::new().await;
    let ws = fx.prepare(30, "Shared work").await;
    agent_commit(&ws.path, ".gitignore", "target/\n", "Ignore build output");
    fx.workspaces.push(&ws).await.unwrap();

    // Coordinator B runs the next session of the issue and pushes.
    let (_other_root, other) = fx.other_coordinator();
    let theirs = other
        .prepare(&fx.request(30, "Shared work"))
        .await
        .unwrap()
        .workspace;
    assert_eq!(theirs.branch, ws.branch);
    agent_commit(&theirs.path, "b.txt", "from B\n", "Work on B");
    let pushed = other.push(&theirs).await.unwrap();

    // Here the worktree is stale, with what an agent left in it.
    std::fs::write(ws.path.join("README.md"), "# changed here\n").unwrap();
    std::fs::write(ws.path.join("stray.txt"), "left over").unwrap();
    std::fs::create_dir_all(ws.path.join("notes/deep")).unwrap();
    std::fs::write(ws.path.join("notes/deep/n.txt"), "left over").unwrap();
    git(&ws.path, &["init", "--quiet", "nested"]).unwrap();
    std::fs::create_dir_all(ws.path.join("target")).unwrap();
    std::fs::write(ws.path.join("target/cache"), "ignored").unwrap();

    assert!(fx.workspaces.follow_remote(&ws).await.unwrap());
    assert_eq!(head(&ws.path), pushed.commit);
    assert_eq!(
        std::fs::read_to_string(ws.path.join("b.txt")).unwrap(),
        "from B\n"
    );
    assert_eq!(
        std::fs::read_to_string(ws.path.join("README.md")).unwrap(),
        "# app\n"
    );
    for gone in ["stray.txt", "notes", "nested"] {
        assert!(!ws.path.join(gone).exists(), "{gone} is still there");
    }
    // Ignored files are build output, not work: they stay.
    assert!(ws.path.join("target/cache").is_file());
    let state = fx.workspaces.state(&ws).await.unwrap();
    assert!(state.status_short.is_empty(), "{}", state.status_short);
    assert_eq!(state.head_commit, pushed.commit);

    // Nothing more to take up.
    assert!(!fx.workspaces.follow_remote(&ws).await.unwrap());
    assert_eq!(head(&ws.path), pushed.commit);

    // The next session's work is pushed on top of B's.
    agent_commit(&ws.path, "a.txt", "from A\n", "Work on A");
    let ours = fx.workspaces.push(&ws).await.unwrap();
    assert_eq!(fx.remote_commit(&ws.branch), ours.commit);
    assert_eq!(
        git(&fx.bare, &["rev-parse", &format!("{}^", ours.commit)]).unwrap(),
        pushed.commit
    );
}

#[tokio::test]
async fn follow_remote_without_a_remote_branch_changes_nothing() {
    let fx = Fixture::new().await;
    let ws = fx.prepare(31, "Never pushed").await;
    agent_commit(&ws.path, "a.txt", "a\n", "Local work");
    std::fs::write(ws.path.join("README.md"), "# changed here\n").unwrap();
    std::fs::write(ws.path.join("stray.txt"), "keep").unwrap();
    let before = head(&ws.path);

    assert!(!fx.workspaces.follow_remote(&ws).await.unwrap());
    assert_eq!(head(&ws.path), before);
    assert_eq!(
        std::fs::read_to_string(ws.path.join("README.md")).unwrap(),
        "# changed here\n"
    );
    assert!(ws.path.join("stray.txt").is_file());
    let branch = format!("refs/heads/{}", ws.branch);
    assert!(git(&fx.bare, &["rev-parse", "--verify", "--quiet", &branch]).is_err());

    // A record naming another branch than the worktree's is refused, untouched.
    let forged = Workspace {
        branch: "main".to_owned(),
        ..ws.clone()
    };
    let err = fx.workspaces.follow_remote(&forged).await.unwrap_err();
    assert!(matches!(err, WorkspaceError::WrongBranch { .. }), "{err}");
    assert_eq!(head(&ws.path), before);
    assert!(ws.path.join("stray.txt").is_file());
}

#[tokio::test]
async fn follow_remote_keeps_local_commits_the_remote_lacks() {
    let fx = Fixture::new().await;
    let ws = fx.prepare(32, "Ahead here").await;
    agent_commit(&ws.path, "a.txt", "a\n", "Pushed work");
    let pushed = fx.workspaces.push(&ws).await.unwrap();
    agent_commit(&ws.path, "b.txt", "b\n", "Not pushed yet");
    std::fs::write(ws.path.join("stray.txt"), "keep").unwrap();
    let before = head(&ws.path);

    assert!(!fx.workspaces.follow_remote(&ws).await.unwrap());
    assert_eq!(head(&ws.path), before);
    assert!(ws.path.join("b.txt").is_file() && ws.path.join("stray.txt").is_file());
    assert_eq!(fx.remote_commit(&ws.branch), pushed.commit);
    // The push that follows is an ordinary fast-forward.
    assert_eq!(fx.workspaces.push(&ws).await.unwrap().commit, before);
    assert_eq!(fx.remote_commit(&ws.branch), before);
}

#[tokio::test]
async fn follow_remote_lets_the_remote_win_when_both_moved() {
    let fx = Fixture::new().await;
    let ws = fx.prepare(33, "Diverged").await;
    agent_commit(&ws.path, "a.txt", "a\n", "Shared start");
    fx.workspaces.push(&ws).await.unwrap();
    let theirs = commit_file(&fx.bare, &ws.branch, "b.txt", "b\n", "Pushed elsewhere").unwrap();
    agent_commit(&ws.path, "c.txt", "c\n", "Only here");
    let ours = head(&ws.path);

    assert!(fx.workspaces.follow_remote(&ws).await.unwrap());
    assert_eq!(head(&ws.path), theirs);
    assert!(ws.path.join("b.txt").is_file() && !ws.path.join("c.txt").exists());
    let local = format!("refs/heads/{}", ws.branch);
    assert_eq!(git(&fx.mirror(), &["rev-parse", &local]).unwrap(), theirs);
    assert!(
        git(&ws.path, &["merge-base", "--is-ancestor", &ours, "HEAD"]).is_err(),
        "the local-only commit is still on the branch"
    );
    // Publishing after the follow does not trip over the lease.
    agent_commit(&ws.path, "d.txt", "d\n", "Next session");
    let pushed = fx.workspaces.push(&ws).await.unwrap();
    assert_eq!(fx.remote_commit(&ws.branch), pushed.commit);
}
