//! The built coordinator with the REAL Claude Code CLI (the pinned npm package) as its agent,
//! driven by the scripted Messages API stand-in: an assigned issue ends in a pull request whose
//! commit the CLI made through its own Write and Bash tools, and the spend the coordinator records
//! is what the CLI reported.
//!
//! The CLI comes from `$MOSAIC_CLAUDE_BIN` or `.cache/agents` (installed by `.ci/run`); without
//! it the test returns after one line saying how to install it, except under `CI=true`.

use std::time::Duration;

use mosaic_claude_standin::{Block, MessagesStandin, Reply, Script, Step, Usage, claude_cli};
use mosaic_domain::IssueState;
use serde_json::json;

use crate::git_scenario::{Scenario, Setup, subjects};
use crate::helpers::toml_string;

const MODEL: &str = "claude-sonnet-4-5";

/// Every built-in profile runs the CLI against the stand-in, as docs/AGENTS.md wires it.
fn agents_toml(bin: &std::path::Path, standin_url: &str, home: &std::path::Path) -> String {
    let args: Vec<String> = [
        "-p",
        "--input-format",
        "stream-json",
        "--output-format",
        "stream-json",
        "--verbose",
        "--model",
        MODEL,
        "--permission-mode",
        "acceptEdits",
        "--allowedTools",
        "Bash(git add:*)",
        "Bash(git -c:*)",
    ]
    .iter()
    .map(|arg| toml_string(arg))
    .collect();
    let env = format!(
        "{{ ANTHROPIC_BASE_URL = {}, ANTHROPIC_API_KEY = \"sk-ant-standin-dummy\", HOME = {}, DISABLE_AUTOUPDATER = \"1\", CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC = \"1\" }}",
        toml_string(standin_url),
        toml_string(&home.display().to_string()),
    );
    let mut text = String::new();
    for name in ["opus", "sonnet", "haiku", "glm", "minimax"] {
        text.push_str(&format!(
            "\n[runner.agents.{name}]\nprogram = {}\nargs = [{}]\ninput = \"json_lines\"\nprotocol = \"claude_code\"\ncan_compact = true\nenv = {env}\n",
            toml_string(&bin.display().to_string()),
            args.join(", "),
        ));
    }
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_issue_assigned_to_the_real_claude_code_cli_ends_in_a_pull_request_with_its_commit() {
    let Some(bin) = claude_cli() else { return };
    let standin = MessagesStandin::start(Script::new(Vec::new()))
        .await
        .unwrap();
    let home = tempfile::tempdir().unwrap();
    let agents = agents_toml(&bin, &standin.base_url(), home.path());
    let s = Scenario::start(Setup {
        name: "cli",
        agent_args: Vec::new(),
        engine: "max_attempts = 1",
        extra: "",
        git_delay: Duration::ZERO,
        min_free_bytes: 1,
        agents: Some(agents),
    })
    .await;
    let issue = s.issue("Say hello");

    // The CLI's Write tool wants an absolute path: the worktree the coordinator will make.
    let hello = s.worktree(&issue).join("hello.txt");
    let tool_usage = Usage {
        input_tokens: 1_200,
        cache_creation_input_tokens: 3_000,
        cache_read_input_tokens: 10_000,
        output_tokens: 150,
    };
    let final_usage = Usage {
        input_tokens: 800,
        cache_creation_input_tokens: 500,
        cache_read_input_tokens: 14_000,
        output_tokens: 60,
    };
    standin.replace_script(Script::new(vec![
        Step::Reply(Reply::tool_calls(
            vec![
                Block::text("Writing the file."),
                Block::tool_use(
                    "Write",
                    json!({ "file_path": hello, "content": "hello from the real CLI\n" }),
                ),
            ],
            tool_usage,
        )),
        Step::Reply(Reply::tool_calls(
            vec![Block::tool_use(
                "Bash",
                json!({ "command": "git add hello.txt && git -c user.name=Agent -c user.email=agent@example.invalid commit -q -m 'Add hello.txt'", "description": "Commit hello.txt" }),
            )],
            tool_usage,
        )),
        Step::Reply(Reply::text("Committed hello.txt.", final_usage)),
    ]));

    s.deliver(&issue, "assigned").await;
    s.wait_for_state(&issue, IssueState::Completed).await;
    s.wait_outbox_delivered(&issue).await;

    // The commit the CLI made is on the pushed branch, and one pull request closes the issue.
    let branch = format!("mosaic/{}-say-hello", issue.number);
    assert_eq!(
        subjects(&s.remote, &branch),
        ["Add hello.txt", "Initial commit"]
    );
    let pulls = s.pull_requests();
    assert_eq!(pulls.len(), 1, "{pulls:#?}");
    assert!(
        pulls[0]
            .body
            .starts_with(&format!("Closes #{}\n", issue.number)),
        "{}",
        pulls[0].body
    );
    assert!(
        pulls[0].body.contains("Committed hello.txt."),
        "{}",
        pulls[0].body
    );
    assert_eq!(standin.steps_used(), 3, "the whole script was played");

    // The session's spend is the CLI's own: every scripted call's tokens, summed.
    let sessions = s.store.sessions_for_issue(&issue).await.unwrap();
    assert_eq!(sessions.len(), 1, "{sessions:#?}");
    let session = &sessions[0];
    assert_eq!(
        session.outcome,
        Some(mosaic_store::SessionOutcome::Succeeded)
    );
    let main_calls = [tool_usage, tool_usage, final_usage];
    let output: u64 = main_calls.iter().map(|u| u.output_tokens).sum();
    assert!(
        session.output_tokens >= output,
        "the CLI's output tokens ({}) cover the scripted ones ({output}): {session:#?}",
        session.output_tokens
    );
    // glm and minimax are self-hosted profiles: $0 whatever the CLI reports.
    if ["glm", "minimax"].contains(&session.agent.as_str()) {
        assert_eq!(session.cost_usd, 0.0, "{session:#?}");
    } else {
        assert!(session.cost_usd > 0.0, "{session:#?}");
    }
}
