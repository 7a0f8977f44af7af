//! The built coordinator with the REAL Codex CLI (`@openai/codex` 0.169.0) as its agent, driven
//! by the scripted Responses API stand-in: Codex reads the task from stdin, runs a scripted
//! command in its `workspace-write` sandbox (which keeps `.git` read-only, so it cannot commit),
//! and the coordinator commits what it left, pushes and opens the pull request.
//!
//! The CLI comes from `$MOSAIC_CODEX_BIN` or `.cache/agents` (installed by `.ci/run`); without
//! it the test returns after one line saying how to install it, except under `CI=true`.

use std::time::Duration;

use mosaic_claude_standin::codex_cli;
use mosaic_claude_standin::responses::{
    ResponsesHandle, ResponsesStep, ResponsesUsage, codex_exec_args,
};
use mosaic_domain::IssueState;

use crate::git_scenario::{Scenario, Setup, subjects};
use crate::helpers::toml_string;

/// Every built-in profile runs Codex against the stand-in, as docs/AGENTS.md wires it.
fn agents_toml(bin: &std::path::Path, base_url: &str, home: &std::path::Path) -> String {
    let args: Vec<String> = codex_exec_args(base_url)
        .iter()
        .map(|arg| toml_string(arg))
        .collect();
    let mut text = String::new();
    for name in ["opus", "sonnet", "haiku", "glm", "minimax"] {
        text.push_str(&format!(
            "\n[runner.agents.{name}]\nprogram = {}\nargs = [{}]\ninput = \"text\"\nenv = {{ HOME = {}, STANDIN_API_KEY = \"dummy\" }}\n",
            toml_string(&bin.display().to_string()),
            args.join(", "),
            toml_string(&home.display().to_string()),
        ));
    }
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_issue_assigned_to_the_real_codex_cli_ends_in_a_pull_request_with_its_work() {
    let Some(bin) = codex_cli() else { return };
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
    let home = tempfile::tempdir().unwrap();
    let s = Scenario::start(Setup {
        name: "codex",
        agent_args: Vec::new(),
        engine: "max_attempts = 1",
        extra: "",
        git_delay: Duration::ZERO,
        min_free_bytes: 1,
        agents: Some(agents_toml(&bin, &standin.base_url(), home.path())),
    })
    .await;
    let issue = s.issue("Say hello");
    s.deliver(&issue, "assigned").await;
    s.wait_for_state(&issue, IssueState::Completed).await;
    s.wait_outbox_delivered(&issue).await;

    // The task reached Codex through stdin; its file was committed by the coordinator.
    let requests = standin.requests();
    assert!(
        requests[0].input_text.contains("# Say hello"),
        "{requests:#?}"
    );
    let branch = format!("mosaic/{}-say-hello", issue.number);
    let commits = subjects(&s.remote, &branch);
    assert_eq!(commits.len(), 2, "{commits:?}");
    assert_eq!(commits[1], "Initial commit");
    let hello =
        mosaic_testkit::repo::git(&s.remote, &["show", &format!("{branch}:hello.txt")]).unwrap();
    assert_eq!(hello.trim(), "hello");
    let pulls = s.pull_requests();
    assert_eq!(pulls.len(), 1, "{pulls:#?}");
    assert!(
        pulls[0].body.contains("Wrote hello.txt."),
        "{}",
        pulls[0].body
    );

    // The spend is Codex's own report: two calls, uncached input apart from the cached part.
    let sessions = s.store.sessions_for_issue(&issue).await.unwrap();
    assert_eq!(sessions.len(), 1, "{sessions:#?}");
    let session = &sessions[0];
    assert_eq!(
        (
            session.input_tokens,
            session.cache_read_tokens,
            session.output_tokens
        ),
        (16_000, 8_000, 600),
        "{session:#?}"
    );
}
