#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The continuation prompt and the report table, as the agent and readers see them.

use std::time::Duration;

use mosaic_gates::{
    CONTINUATION_PROMPT_VERSION, GateOutcome, GateResult, continuation_prompt, report_markdown,
};

fn result(gate: &str, command: &[&str], outcome: GateOutcome, tail: &str) -> GateResult {
    GateResult {
        gate: gate.into(),
        command: command.iter().map(|w| (*w).to_owned()).collect(),
        required: true,
        timeout: Duration::from_secs(600),
        outcome,
        duration: Duration::from_millis(12_345),
        output_tail: tail.into(),
        coverage_percent: None,
    }
}

fn results() -> Vec<GateResult> {
    let build = result(
        "build",
        &["cargo", "build", "--workspace"],
        GateOutcome::Passed,
        "",
    );
    let test = result(
        "test",
        &["cargo", "test", "--workspace"],
        GateOutcome::Failed {
            exit_code: Some(101),
        },
        "test parser::tests::empty ... FAILED\n\nfailures:\n    parser::tests::empty\n\ntest result: FAILED. 41 passed; 1 failed",
    );
    let mut coverage = result(
        "coverage",
        &["cargo", "llvm-cov", "--summary-only"],
        GateOutcome::BelowCoverage {
            percent: 72.0,
            min: 85.0,
        },
        "TOTAL    1200    336    72.00%",
    );
    coverage.coverage_percent = Some(72.0);
    let mut hang = result(
        "e2e",
        &["sh", "-c", "npm run e2e"],
        GateOutcome::TimedOut,
        "waiting for server",
    );
    hang.timeout = Duration::from_secs(300);
    hang.duration = Duration::from_secs(300);
    let mut lint = result(
        "lint | style",
        &["npm", "run", "lint"],
        GateOutcome::Failed { exit_code: Some(1) },
        "```\n3 problems",
    );
    lint.required = false;
    vec![build, test, coverage, hang, lint]
}

#[test]
fn the_prompt_version_is_recorded() {
    assert_eq!(CONTINUATION_PROMPT_VERSION, 1);
}

#[test]
fn first_continuation_prompt() {
    insta::assert_snapshot!(continuation_prompt(&results(), 2, 4));
}

#[test]
fn third_attempt_asks_for_minimal_changes() {
    insta::assert_snapshot!(continuation_prompt(&results(), 3, 4));
}

#[test]
fn last_attempt_says_so() {
    let prompt = continuation_prompt(&results(), 4, 4);
    assert!(prompt.contains("FINAL ATTEMPT"));
    assert!(prompt.contains("smallest change"));
    insta::assert_snapshot!(prompt);
}

#[test]
fn only_blocking_failures_are_listed() {
    let prompt = continuation_prompt(&results(), 2, 4);
    assert!(!prompt.contains("## Gate `build`"));
    assert!(!prompt.contains("## Gate `lint | style`"));
    assert!(prompt.contains("## Gate `test`") && prompt.contains("## Gate `e2e`"));
    assert!(!prompt.contains("FINAL ATTEMPT") && !prompt.contains("smallest change"));
}

#[test]
fn report_table() {
    insta::assert_snapshot!(report_markdown(&results()));
}
