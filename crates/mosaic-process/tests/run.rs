#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Real children under `sh`: the group is gone afterwards, deadlines hold, output is capped.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use mosaic_process::{ChildSpec, Ending, OutputLimit, ProcessError, run};

fn sh(dir: &Path, script: &str, timeout: Duration) -> ChildSpec {
    ChildSpec::new("sh", dir, timeout)
        .args(["-c", script])
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
}

/// The pids the script wrote to `pids`, one a line, once `expected` are there.
fn pids_written(dir: &Path, expected: usize) -> Vec<String> {
    for _ in 0..250 {
        let text = std::fs::read_to_string(dir.join("pids")).unwrap_or_default();
        let pids: Vec<String> = text.lines().map(|l| l.trim().to_owned()).collect();
        if pids.len() >= expected && pids.iter().all(|p| !p.is_empty()) {
            return pids;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("the script did not write {expected} pids");
}

/// Running: present in /proc and not a zombie waiting to be reaped by whoever adopted it.
fn running(pid: &str) -> bool {
    std::fs::read_to_string(PathBuf::from(format!("/proc/{pid}/stat"))).is_ok_and(|text| {
        text.rsplit(')')
            .next()
            .is_some_and(|rest| !rest.trim_start().starts_with('Z'))
    })
}

/// Every pid ends within two seconds (SIGKILL is immediate; the margin is for a busy machine).
fn assert_all_end(pids: &[String]) {
    for _ in 0..100 {
        if pids.iter().all(|pid| !running(pid)) {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let alive: Vec<&String> = pids.iter().filter(|pid| running(pid)).collect();
    panic!("still running: {alive:?}");
}

#[tokio::test]
async fn grandchildren_left_in_the_group_end_when_the_leader_exits() {
    let dir = tempfile::tempdir().unwrap();
    let script = "sleep 60 & echo $! >> pids; sleep 60 & echo $! >> pids; echo started; exit 0";
    let started = Instant::now();
    let finished = run(&sh(dir.path(), script, Duration::from_secs(30)))
        .await
        .unwrap();
    // The background sleeps hold stdout open; the result still comes as soon as the leader exits.
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(finished.ending, Ending::Exited { code: 0 });
    assert_eq!(finished.stdout.text_lossy(), "started\n");
    assert_all_end(&pids_written(dir.path(), 2));
}

#[tokio::test]
async fn a_hanging_child_is_killed_at_its_deadline_with_its_group() {
    let dir = tempfile::tempdir().unwrap();
    let script = "sleep 60 & echo $! >> pids; echo $$ >> pids; echo waiting; sleep 60";
    let started = Instant::now();
    let finished = run(&sh(dir.path(), script, Duration::from_secs(1)))
        .await
        .unwrap();
    let elapsed = started.elapsed();
    assert_eq!(finished.ending, Ending::TimedOut);
    assert!(!finished.ending.success());
    assert!(
        elapsed >= Duration::from_secs(1) && elapsed < Duration::from_secs(10),
        "{elapsed:?}"
    );
    // What it printed before the deadline is kept.
    assert_eq!(finished.stdout.text_lossy(), "waiting\n");
    assert_all_end(&pids_written(dir.path(), 2));
}

#[tokio::test]
async fn a_dropped_run_kills_its_group() {
    let dir = tempfile::tempdir().unwrap();
    let script = "sleep 60 & echo $! >> pids; echo $$ >> pids; sleep 60";
    let spec = sh(dir.path(), script, Duration::from_secs(60));
    let cancelled = tokio::time::timeout(Duration::from_millis(500), run(&spec)).await;
    assert!(cancelled.is_err());
    assert_all_end(&pids_written(dir.path(), 2));
}

#[tokio::test]
async fn output_beyond_the_cap_is_cut_and_says_so() {
    let dir = tempfile::tempdir().unwrap();
    // 100 000 bytes on stdout (numbered lines), 3 on stderr.
    let script = "i=0; while [ $i -lt 10000 ]; do printf '%09d\\n' $i; i=$((i+1)); done; \
                  printf 'err' >&2";
    let spec = sh(dir.path(), script, Duration::from_secs(60))
        .output_limits(OutputLimit::tail(1000), OutputLimit::head(2));
    let finished = run(&spec).await.unwrap();
    assert_eq!(finished.ending, Ending::Exited { code: 0 });
    assert!(finished.stdout.truncated());
    assert_eq!(finished.stdout.total_bytes(), 100_000);
    assert_eq!(finished.stdout.omitted_bytes(), 99_000);
    assert_eq!(finished.stdout.bytes().len(), 1000);
    assert!(finished.stdout.text_lossy().ends_with("000009999\n"));
    assert!(finished.stdout.text_lossy().starts_with("000009900\n"));
    assert_eq!(finished.stderr.text_lossy(), "er");
    assert!(finished.stderr.truncated());
}

#[tokio::test]
async fn the_environment_is_only_what_the_spec_gives() {
    let dir = tempfile::tempdir().unwrap();
    let spec = sh(
        dir.path(),
        "echo \"$MARKER|${HOME:-no home}|$(pwd)\"; exit 7",
        Duration::from_secs(30),
    )
    .env("MARKER", "m1");
    let finished = run(&spec).await.unwrap();
    assert_eq!(finished.ending, Ending::Exited { code: 7 });
    assert_eq!(finished.ending.code(), Some(7));
    let cwd = dir.path().canonicalize().unwrap();
    assert_eq!(
        finished.stdout.text_lossy(),
        format!("m1|no home|{}\n", cwd.display())
    );
}

#[tokio::test]
async fn a_child_killed_by_a_signal_says_which() {
    let dir = tempfile::tempdir().unwrap();
    let finished = run(&sh(dir.path(), "kill -TERM $$", Duration::from_secs(30)))
        .await
        .unwrap();
    assert_eq!(finished.ending, Ending::Signalled { signal: 15 });
    assert_eq!(finished.ending.to_string(), "killed by signal 15");
}

#[tokio::test]
async fn a_missing_program_is_a_spawn_error() {
    let dir = tempfile::tempdir().unwrap();
    let spec = ChildSpec::new(
        "/nonexistent/mosaic-no-such-program",
        dir.path(),
        Duration::from_secs(5),
    );
    let err = run(&spec).await.unwrap_err();
    assert!(matches!(err, ProcessError::Spawn { .. }), "{err}");
    assert!(err.to_string().contains("mosaic-no-such-program"), "{err}");
}

#[test]
fn debug_output_names_environment_variables_but_not_their_values() {
    let spec =
        ChildSpec::new("git", "/tmp", Duration::from_secs(1)).env("TOKEN_HOLDER", "s3cr3t-value");
    let text = format!("{spec:?}");
    assert!(
        text.contains("TOKEN_HOLDER") && !text.contains("s3cr3t-value"),
        "{text}"
    );
}
