#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Gates run as real processes in a temporary "repository".

use std::ffi::OsString;
use std::path::Path;
use std::time::{Duration, Instant};

use mosaic_domain::RepoName;
use mosaic_gates::{
    Gate, GateOutcome, GatesConfig, RepositoryFileUse, all_required_passed, report_markdown,
    run_gates,
};
use mosaic_security::{Redactor, Secret};

const TAIL: usize = 4000;

fn base_env() -> Vec<(OsString, OsString)> {
    vec![(
        OsString::from("PATH"),
        std::env::var_os("PATH").unwrap_or_default(),
    )]
}

fn sh(name: &str, script: &str) -> Gate {
    Gate::new(name, ["sh", "-c", script])
}

async fn run_one(dir: &Path, gate: &Gate) -> mosaic_gates::GateResult {
    let mut results = run_gates(dir, &[gate], &Redactor::default(), &base_env(), TAIL).await;
    assert_eq!(results.len(), 1);
    results.remove(0)
}

#[tokio::test]
async fn a_test_gate_fails_until_the_fix_exists_then_passes() {
    let repo = tempfile::tempdir().unwrap();
    std::fs::write(repo.path().join("README"), "a small repository\n").unwrap();
    let gate = sh(
        "test",
        "test -f fixed.txt || { echo 'FAILED: fixed.txt missing'; exit 1; }",
    );
    let before = run_one(repo.path(), &gate).await;
    assert_eq!(before.outcome, GateOutcome::Failed { exit_code: Some(1) });
    assert!(
        before.output_tail.contains("FAILED: fixed.txt missing"),
        "{}",
        before.output_tail
    );
    assert!(!all_required_passed(std::slice::from_ref(&before)));

    std::fs::write(repo.path().join("fixed.txt"), "fixed\n").unwrap();
    let after = run_one(repo.path(), &gate).await;
    assert_eq!(after.outcome, GateOutcome::Passed);
    assert!(all_required_passed(&[after]));
}

/// Running processes whose environment holds `MOSAIC_GATE_MARKER=<marker>` (zombies excluded).
fn processes_with_marker(marker: &str) -> Vec<String> {
    let needle = format!("MOSAIC_GATE_MARKER={marker}");
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let pid = entry.file_name().to_string_lossy().into_owned();
        if !pid.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let Ok(environ) = std::fs::read(entry.path().join("environ")) else {
            continue;
        };
        let zombie = std::fs::read_to_string(entry.path().join("stat")).is_ok_and(|stat| {
            stat.rsplit(')')
                .next()
                .is_some_and(|rest| rest.trim_start().starts_with('Z'))
        });
        if !zombie
            && environ
                .split(|b| *b == 0)
                .any(|var| var == needle.as_bytes())
        {
            found.push(pid);
        }
    }
    found
}

fn assert_none_left(marker: &str) {
    for _ in 0..100 {
        if processes_with_marker(marker).is_empty() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("still running: {:?}", processes_with_marker(marker));
}

fn marked(mut gate: Gate, marker: &str) -> Gate {
    gate.env.insert("MOSAIC_GATE_MARKER".into(), marker.into());
    gate
}

#[tokio::test]
async fn a_hanging_gate_is_killed_at_its_limit() {
    let repo = tempfile::tempdir().unwrap();
    let marker = format!("hang-{}", std::process::id());
    let mut gate = marked(Gate::new("hang", ["sleep", "60"]), &marker);
    gate.timeout_secs = 1;
    let started = Instant::now();
    let result = run_one(repo.path(), &gate).await;
    assert_eq!(result.outcome, GateOutcome::TimedOut);
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    assert!(result.duration >= Duration::from_secs(1));
    assert_none_left(&marker);
    assert!(report_markdown(&[result]).contains("no result within 1 s; killed"));
}

#[tokio::test]
async fn nothing_a_gate_starts_outlives_it() {
    let repo = tempfile::tempdir().unwrap();
    let marker = format!("children-{}", std::process::id());
    let gate = marked(sh("spawner", "sleep 60 & sleep 60 & exit 1"), &marker);
    let started = Instant::now();
    let result = run_one(repo.path(), &gate).await;
    assert_eq!(result.outcome, GateOutcome::Failed { exit_code: Some(1) });
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    assert_none_left(&marker);
}

#[tokio::test]
async fn low_coverage_is_reported_with_its_figure() {
    let repo = tempfile::tempdir().unwrap();
    let mut gate = sh(
        "coverage",
        "echo 'src/lib.rs   50   10   80%'; echo 'TOTAL        100   28   72%'",
    );
    gate.percent_regex = Some(r"(?m)^TOTAL.*\s([0-9.]+)%".into());
    gate.min_percent = Some(85.0);
    let result = run_one(repo.path(), &gate).await;
    assert_eq!(
        result.outcome,
        GateOutcome::BelowCoverage {
            percent: 72.0,
            min: 85.0
        }
    );
    assert_eq!(result.coverage_percent, Some(72.0));
    let report = report_markdown(&[result]);
    assert!(
        report.contains("coverage 72 % is below the required 85 %"),
        "{report}"
    );

    gate.min_percent = Some(70.0);
    let enough = run_one(repo.path(), &gate).await;
    assert_eq!(enough.outcome, GateOutcome::Passed);
    assert!(report_markdown(&[enough]).contains("coverage 72 %"));
}

#[tokio::test]
async fn a_coverage_gate_without_a_figure_fails_clearly() {
    let repo = tempfile::tempdir().unwrap();
    let mut gate = sh("coverage", "echo 'all tests passed'");
    gate.percent_regex = Some(r"TOTAL.*\s([0-9.]+)%".into());
    let result = run_one(repo.path(), &gate).await;
    assert_eq!(result.outcome, GateOutcome::NoCoverageFigure);
    assert!(!all_required_passed(std::slice::from_ref(&result)));
    assert!(report_markdown(&[result]).contains("holds no coverage figure"));
}

#[tokio::test]
async fn a_missing_program_could_not_start() {
    let repo = tempfile::tempdir().unwrap();
    let gate = Gate::new("build", ["mosaic-no-such-build-tool", "--all"]);
    let result = run_one(repo.path(), &gate).await;
    match &result.outcome {
        GateOutcome::CouldNotStart { reason } => {
            assert!(reason.contains("mosaic-no-such-build-tool"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn output_is_redacted_and_bounded_to_its_tail() {
    let repo = tempfile::tempdir().unwrap();
    let token = "gitea-bot-token-0123456789";
    let script = format!(
        "i=0; while [ $i -lt 5000 ]; do echo \"line $i\"; i=$((i+1)); done; \
         echo 'leaked {token}'; echo 'last words' >&2; exit 2"
    );
    let gate = sh("noisy", &script);
    let redactor = Redactor::new([&Secret::new(token)]);
    let results = run_gates(repo.path(), &[&gate], &redactor, &base_env(), 1000).await;
    let tail = &results[0].output_tail;
    assert!(tail.len() <= 1000, "{} bytes", tail.len());
    assert!(!tail.contains(token), "{tail}");
    assert!(tail.contains("leaked [redacted]"), "{tail}");
    assert!(tail.contains("[… earlier output cut …]"), "{tail}");
    assert!(
        tail.contains("line 4999") && !tail.contains("line 10\n"),
        "{tail}"
    );
    assert!(tail.ends_with("[stderr]\nlast words"), "{tail}");
}

#[tokio::test]
async fn gates_run_in_order_and_an_optional_failure_does_not_block() {
    let repo = tempfile::tempdir().unwrap();
    let mut lint = sh("lint", "exit 3");
    lint.required = false;
    let test = sh("test", "pwd; echo \"$GATE_MODE\"");
    let mut test = test;
    test.env.insert("GATE_MODE".into(), "ci".into());
    let results = run_gates(
        repo.path(),
        &[&lint, &test],
        &Redactor::default(),
        &base_env(),
        TAIL,
    )
    .await;
    let names: Vec<&str> = results.iter().map(|r| r.gate.as_str()).collect();
    assert_eq!(names, ["lint", "test"]);
    assert_eq!(
        results[0].outcome,
        GateOutcome::Failed { exit_code: Some(3) }
    );
    assert_eq!(results[1].outcome, GateOutcome::Passed);
    let cwd = repo.path().canonicalize().unwrap();
    assert_eq!(results[1].output_tail, format!("{}\nci", cwd.display()));
    assert!(all_required_passed(&results));
}

/// The agent can write `.mosaic/gates.toml` in its worktree; the configuration only ever comes
/// from the text the caller read from the base branch.
#[tokio::test]
async fn an_agent_editing_the_file_in_its_worktree_changes_nothing() {
    let worktree = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(worktree.path().join(".mosaic")).unwrap();
    // The agent's version: drops the test gate by adding a lenient twin and a pass-all gate.
    std::fs::write(
        worktree.path().join(".mosaic/gates.toml"),
        "[[gates]]\nname = \"always\"\ncommand = [\"true\"]\n",
    )
    .unwrap();
    let operator = GatesConfig {
        gates: vec![sh("test", "test -f fixed.txt")],
        trust_repository_file: true,
        ..GatesConfig::default()
    };
    let repo: RepoName = "acme/app".parse().unwrap();
    let base_text = "[[gates]]\nname = \"docs\"\ncommand = [\"sh\", \"-c\", \"test -f README\"]\n";
    let effective = operator.effective_gates(&repo, Some(base_text));
    assert_eq!(
        effective.repository_file,
        RepositoryFileUse::Added { count: 1 }
    );
    let names: Vec<&str> = effective.gates.iter().map(|g| g.name.as_str()).collect();
    assert_eq!(names, ["test", "docs"]);

    let no_base_file = operator.effective_gates(&repo, None);
    assert_eq!(no_base_file.repository_file, RepositoryFileUse::Absent);
    assert_eq!(no_base_file.gates, operator.gates);

    let untrusted = GatesConfig {
        trust_repository_file: false,
        ..operator.clone()
    };
    assert_eq!(
        untrusted.effective_gates(&repo, Some(base_text)).gates,
        operator.gates
    );

    // And running them in the worktree still fails the operator's test gate.
    let gates: Vec<&Gate> = effective.gates.iter().collect();
    let results = run_gates(
        worktree.path(),
        &gates,
        &Redactor::default(),
        &base_env(),
        TAIL,
    )
    .await;
    assert_eq!(
        results[0].outcome,
        GateOutcome::Failed { exit_code: Some(1) }
    );
    assert!(!all_required_passed(&results));
}
