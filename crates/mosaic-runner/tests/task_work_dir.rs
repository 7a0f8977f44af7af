#![allow(clippy::unwrap_used, clippy::expect_used)]
//! A task's own working directory (the issue's git worktree): used when it lies under the
//! workspace root, refused anywhere else.

use std::time::Duration;

use mosaic_context::{AgentRuntime, RuntimeError, SessionOutcome, SessionTask, wait_for_outcome};
use mosaic_domain::{AgentProfile, Difficulty, IssueRef, RepoName};
use mosaic_runner::{AgentCommand, InputMode, ProcessRuntime, RunnerConfig};

fn profile() -> AgentProfile {
    AgentProfile {
        name: "pwd".to_owned(),
        context_window: 100_000,
        cost_input_per_mtok: 0.0,
        cost_output_per_mtok: 0.0,
        max_difficulty: Difficulty::High,
        self_hosted: true,
        enabled: true,
        compact_threshold: None,
        rotate_threshold: None,
    }
}

fn task(work_dir: Option<std::path::PathBuf>) -> SessionTask {
    let repo = RepoName::new("mosaic", "coordinator").unwrap();
    SessionTask {
        issue: IssueRef::new(repo.clone(), 7),
        title: "Where am I".to_owned(),
        body: String::new(),
        repository: repo,
        acceptance_criteria: Vec::new(),
        handover_summary: None,
        work_dir,
    }
}

/// A runtime whose only agent writes its working directory into `cwd.txt` there.
fn runtime(root: &std::path::Path) -> ProcessRuntime {
    let mut config = RunnerConfig::new(root.join("work"));
    config.kill_grace_secs = Duration::from_millis(500);
    config.agents.insert(
        "pwd".to_owned(),
        AgentCommand {
            program: "sh".to_owned(),
            args: vec!["-c".to_owned(), "pwd -P > cwd.txt".to_owned()],
            env: Default::default(),
            pass_env: Vec::new(),
            input: InputMode::Text,
            can_compact: false,
            protocol: mosaic_runner::AgentProtocol::JsonLines,
            finish_on_result: true,
            stall_timeout_secs: None,
            time_limit_secs: None,
        },
    );
    ProcessRuntime::new(config).unwrap()
}

#[tokio::test]
async fn a_session_runs_in_the_tasks_worktree_under_the_workspace_root() {
    let root = tempfile::tempdir().unwrap();
    let workspaces = root.path().join("workspaces");
    let worktree = workspaces.join("worktrees/mosaic/coordinator/issue-7");
    std::fs::create_dir_all(&worktree).unwrap();
    let runtime = runtime(root.path())
        .with_workspace_root(&workspaces)
        .unwrap();
    let session = runtime
        .spawn(&profile(), &task(Some(worktree.clone())))
        .await
        .unwrap();
    let outcome = wait_for_outcome(session.as_ref()).await;
    assert!(!matches!(outcome, SessionOutcome::Running), "{outcome:?}");
    let written = std::fs::read_to_string(worktree.join("cwd.txt")).unwrap();
    assert_eq!(
        written.trim(),
        worktree.canonicalize().unwrap().display().to_string()
    );
}

#[tokio::test]
async fn a_task_directory_outside_the_workspace_root_is_refused() {
    let root = tempfile::tempdir().unwrap();
    let workspaces = root.path().join("workspaces");
    let outside = root.path().join("elsewhere");
    std::fs::create_dir_all(&outside).unwrap();
    // A symlink inside the root that points out of it is outside too.
    std::fs::create_dir_all(&workspaces).unwrap();
    let link = workspaces.join("sneaky");
    std::os::unix::fs::symlink(&outside, &link).unwrap();
    let with_root = runtime(root.path())
        .with_workspace_root(&workspaces)
        .unwrap();
    for dir in [outside.clone(), link, workspaces.clone()] {
        let err = with_root
            .spawn(&profile(), &task(Some(dir.clone())))
            .await
            .err()
            .unwrap_or_else(|| panic!("{} was accepted", dir.display()));
        assert!(matches!(err, RuntimeError::WorkDir { .. }), "{err:?}");
    }
    // Without a workspace root no task directory is accepted at all.
    let without_root = runtime(root.path());
    let Err(err) = without_root
        .spawn(&profile(), &task(Some(outside.clone())))
        .await
    else {
        panic!("accepted without a workspace root");
    };
    assert!(matches!(err, RuntimeError::WorkDir { .. }), "{err:?}");
    assert!(!outside.join("cwd.txt").exists(), "nothing ran there");
}
