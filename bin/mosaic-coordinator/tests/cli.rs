//! The command line's own surface. Having an integration test here also makes
//! `cargo test --workspace` build the binary before any test runs, which the black-box tests in
//! `tests/` rely on.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

fn coordinator(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_mosaic-coordinator"))
        .args(args)
        .env_clear()
        .output()
        .unwrap()
}

#[test]
fn version_and_help_name_every_command() {
    let version = coordinator(&["--version"]);
    assert!(version.status.success());
    assert_eq!(
        String::from_utf8_lossy(&version.stdout).trim(),
        format!("mosaic-coordinator {}", env!("CARGO_PKG_VERSION"))
    );
    let help = coordinator(&["--help"]);
    assert!(help.status.success());
    let text = String::from_utf8_lossy(&help.stdout);
    for command in ["serve", "demo", "check-config", "healthcheck", "gitea"] {
        assert!(text.contains(command), "{command} missing from:\n{text}");
    }
    assert!(
        !text.contains("sample-agent"),
        "the agent stand-in is not advertised:\n{text}"
    );
}

#[test]
fn an_unknown_command_is_a_usage_error() {
    let output = coordinator(&["launch"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("unrecognized subcommand"));
}

#[test]
fn the_built_in_sample_agent_runs_a_task_to_its_result() {
    use std::io::Write as _;
    let mut child = Command::new(env!("CARGO_BIN_EXE_mosaic-coordinator"))
        .args([
            "sample-agent",
            "--steps",
            "2",
            "--step-delay-ms",
            "1",
            "--protocol",
            "stream-json",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"Implement the thing.\n")
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success());
    let last = String::from_utf8_lossy(&output.stdout)
        .lines()
        .last()
        .map(str::to_owned)
        .unwrap();
    let result: serde_json::Value = serde_json::from_str(&last).unwrap();
    assert_eq!(result["type"], "result");
    assert_eq!(result["is_error"], false);
}
