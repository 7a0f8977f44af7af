//! The sample agent as a process, in both protocols. Having an integration test here also makes
//! `cargo test --workspace` build the binary that other crates' tests start.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write as _;
use std::process::{Command, Stdio};

fn run(args: &[&str], stdin: &str) -> (i32, Vec<serde_json::Value>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_mosaic-sample-agent"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    let lines = String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    (output.status.code().unwrap_or(-1), lines)
}

#[test]
fn stream_json_reports_growing_usage_and_ends_with_a_result() {
    let (code, lines) = run(
        &[
            "--steps",
            "3",
            "--step-delay-ms",
            "1",
            "--start-tokens",
            "1000",
            "--tokens-per-step",
            "500",
        ],
        "Do the task.",
    );
    assert_eq!(code, 0);
    let context: Vec<u64> = lines
        .iter()
        .filter(|line| line["type"] == "assistant")
        .map(|line| {
            let usage = &line["message"]["usage"];
            usage["input_tokens"].as_u64().unwrap()
                + usage["cache_creation_input_tokens"].as_u64().unwrap()
                + usage["cache_read_input_tokens"].as_u64().unwrap()
        })
        .collect();
    assert!(
        context.windows(2).all(|pair| pair[0] < pair[1]),
        "{context:?}"
    );
    let last = lines.last().unwrap();
    assert_eq!(last["type"], "result");
    assert_eq!(last["is_error"], false);
}

#[test]
fn a_requested_failure_is_an_error_result_and_exit_1() {
    let (code, lines) = run(
        &["--steps", "1", "--step-delay-ms", "1", "--fail"],
        "Do it.",
    );
    assert_eq!(code, 1);
    assert_eq!(lines.last().unwrap()["is_error"], true);
}

#[test]
fn the_generic_protocol_ends_with_done() {
    let (code, lines) = run(
        &[
            "--steps",
            "2",
            "--step-delay-ms",
            "1",
            "--protocol",
            "json-lines",
        ],
        "Do it.",
    );
    assert_eq!(code, 0);
    assert!(lines.iter().any(|line| line["type"] == "usage"));
    assert_eq!(lines.last().unwrap()["type"], "done");
    assert_eq!(lines.last().unwrap()["status"], "success");
}

#[test]
fn the_fix_is_written_only_when_the_prompt_says_the_gates_rejected_the_work() {
    let dir = std::env::temp_dir().join(format!("sample-agent-fix-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let run_in = |prompt: &str| {
        let status = Command::new(env!("CARGO_BIN_EXE_mosaic-sample-agent"))
            .args(["--steps", "1", "--step-delay-ms", "1"])
            .args(["--fix-on-continuation", "fixed.txt"])
            .current_dir(&dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .and_then(|mut child| {
                child.stdin.take().unwrap().write_all(prompt.as_bytes())?;
                child.wait()
            })
            .unwrap();
        assert!(status.success());
    };
    run_in("Do the task.");
    assert!(!dir.join("fixed.txt").exists(), "a first run fixes nothing");
    run_in("Do the task.\n## Handover\nREJECTED: quality gates failed (attempt 2 of 4).");
    assert!(dir.join("fixed.txt").is_file());
    std::fs::remove_dir_all(&dir).unwrap();
}
