//! The real Codex CLI (`@openai/codex` 0.169.0) against the scripted Responses stand-in, in a
//! temporary git repository: the prompt read from stdin, a scripted `exec_command` run in the
//! sandbox, the JSON events the runner reads.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::Stdio;

use mosaic_claude_standin::codex_cli;
use mosaic_claude_standin::responses::{
    ResponsesHandle, ResponsesStep, ResponsesUsage, codex_exec_args,
};
use tokio::io::AsyncWriteExt;

fn git(dir: &Path, args: &[&str]) -> String {
    let out = std::process::Command::new("git")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn codex_reads_its_prompt_from_stdin_and_runs_a_scripted_command_in_the_sandbox() {
    let Some(bin) = codex_cli() else { return };
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    let home = dir.path().join("home");
    std::fs::create_dir_all(&repo).unwrap();
    std::fs::create_dir_all(&home).unwrap();
    git(&repo, &["init", "-q", "-b", "main"]);
    std::fs::write(repo.join("README.md"), "hi\n").unwrap();
    git(&repo, &["add", "README.md"]);
    git(
        &repo,
        &[
            "-c",
            "user.name=T",
            "-c",
            "user.email=t@example.invalid",
            "commit",
            "-q",
            "-m",
            "init",
        ],
    );
    let usage = ResponsesUsage {
        input_tokens: 12_000,
        cached_tokens: 4_000,
        output_tokens: 300,
    };
    let standin = ResponsesHandle::start(vec![
        ResponsesStep::Exec("echo hello > hello.txt".to_owned(), usage),
        ResponsesStep::Text("Wrote hello.txt.".to_owned(), usage),
    ])
    .await
    .unwrap();
    let mut child = tokio::process::Command::new(&bin)
        .args(codex_exec_args(&standin.base_url()))
        .current_dir(&repo)
        .env("HOME", &home)
        .env("STANDIN_API_KEY", "dummy")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(b"Write hello.txt.").await.unwrap();
    drop(stdin);
    let out = child.wait_with_output().await.unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let requests = standin.requests();
    assert!(
        requests[0].input_text.contains("Write hello.txt."),
        "the prompt came from stdin: {requests:#?}"
    );
    assert_eq!(
        std::fs::read_to_string(repo.join("hello.txt")).unwrap(),
        "hello\n"
    );
    assert!(
        stdout.contains(r#""type":"agent_message","text":"Wrote hello.txt.""#),
        "{stdout}"
    );
    assert!(stdout.contains(r#""type":"turn.completed""#), "{stdout}");
}
