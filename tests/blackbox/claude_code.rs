//! The built coordinator with the REAL Claude Code CLI (the pinned npm package) as its agent,
//! driven by the scripted Messages API stand-in: an assigned issue ends in a pull request whose
//! commit the CLI made through its own Write and Bash tools, and the spend the coordinator records
//! is what the CLI reported.
//!
//! The CLI comes from `$MOSAIC_CLAUDE_BIN` or `.cache/agents` (installed by `.ci/run`); without
//! it the test returns after one line saying how to install it, except under `CI=true`.

use std::time::Duration;

use mosaic_claude_standin::{
    Block, MessagesStandin, Reply, Script, Step, Usage, claude_cli, claude_stream_json_args,
};
use mosaic_domain::IssueState;
use serde_json::json;

use crate::git_scenario::{Scenario, Setup, subjects};
use crate::helpers::toml_string;

/// The `profiles` run the CLI against the stand-in, as docs/AGENTS.md wires it (the others have
/// no command, so they cannot be assigned).
fn agents_toml(
    profiles: &[&str],
    bin: &std::path::Path,
    standin_url: &str,
    home: &std::path::Path,
    extra_env: &[(&str, &str)],
) -> String {
    let args: Vec<String> = claude_stream_json_args(&[
        "--permission-mode",
        "acceptEdits",
        "--allowedTools",
        "Bash(git add:*)",
        "Bash(git -c:*)",
    ])
    .iter()
    .map(|arg| toml_string(arg))
    .collect();
    let extra: String = extra_env
        .iter()
        .map(|(name, value)| format!(", {name} = {}", toml_string(value)))
        .collect();
    let env = format!(
        "{{ ANTHROPIC_BASE_URL = {}, ANTHROPIC_API_KEY = \"sk-ant-standin-dummy\", HOME = {}, DISABLE_AUTOUPDATER = \"1\", CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC = \"1\"{extra} }}",
        toml_string(standin_url),
        toml_string(&home.display().to_string()),
    );
    let mut text = String::new();
    for name in profiles {
        text.push_str(&format!(
            "\n[runner.agents.{name}]\nprogram = {}\nargs = [{}]\ninput = \"json_lines\"\nprotocol = \"claude_code\"\ncan_compact = true\nenv = {env}\n",
            toml_string(&bin.display().to_string()),
            args.join(", "),
        ));
    }
    text
}

/// The pinned CLI, a stand-in whose script each test sets once it knows the worktree, and a
/// HOME of the CLI's own.
struct Cli {
    bin: std::path::PathBuf,
    standin: mosaic_claude_standin::StandinHandle,
    home: tempfile::TempDir,
}

impl Cli {
    /// `None` when the CLI is not installed (outside CI).
    async fn start() -> Option<Self> {
        let bin = claude_cli()?;
        let standin = MessagesStandin::start(Script::new(Vec::new()))
            .await
            .unwrap();
        Some(Self {
            bin,
            standin,
            home: tempfile::tempdir().unwrap(),
        })
    }

    /// The coordinator running `sonnet` (a 200k window) as the CLI with `extra_env`; `engine`
    /// and `extra` as in [`Setup`].
    async fn scenario(
        &self,
        name: &'static str,
        engine: &'static str,
        extra: &'static str,
        extra_env: &[(&str, &str)],
    ) -> Scenario {
        Scenario::start(Setup {
            name,
            agent_args: Vec::new(),
            engine,
            extra,
            git_delay: Duration::ZERO,
            min_free_bytes: 1,
            agents: Some(agents_toml(
                &["sonnet"],
                &self.bin,
                &self.standin.base_url(),
                self.home.path(),
                extra_env,
            )),
        })
        .await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_issue_assigned_to_the_real_claude_code_cli_ends_in_a_pull_request_with_its_commit() {
    let Some(cli) = Cli::start().await else {
        return;
    };
    let standin = &cli.standin;
    let s = cli.scenario("cli", "max_attempts = 1", "", &[]).await;
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
    // The stand-in answers the CLI's side calls with zero usage, so its result's figures are
    // exactly the scripted calls' sums.
    let main_calls = [tool_usage, tool_usage, final_usage];
    let sum = |field: fn(&Usage) -> u64| main_calls.iter().map(field).sum::<u64>();
    assert_eq!(
        (
            session.input_tokens,
            session.output_tokens,
            session.cache_read_tokens,
            session.cache_creation_tokens
        ),
        (
            sum(|u| u.input_tokens),
            sum(|u| u.output_tokens),
            sum(|u| u.cache_read_input_tokens),
            sum(|u| u.cache_creation_input_tokens)
        ),
        "{session:#?}"
    );
    assert!(
        session.cost_usd > 0.0,
        "the CLI's reported cost: {session:#?}"
    );
}

/// Token figures whose context (everything read) is `context` tokens.
fn reading(context: u64, output: u64) -> Usage {
    Usage {
        input_tokens: 2_000,
        cache_creation_input_tokens: 8_000,
        cache_read_input_tokens: context - 10_000,
        output_tokens: output,
    }
}

/// A `Write` tool call of `content` to `path`.
fn write_file(path: &std::path::Path, content: &str, usage: Usage) -> Step {
    Step::Reply(Reply::tool_calls(
        vec![Block::tool_use(
            "Write",
            json!({ "file_path": path, "content": content }),
        )],
        usage,
    ))
}

/// A `Bash` tool call that commits `file` with `message`.
fn commit_file(file: &str, message: &str, usage: Usage) -> Step {
    let command = format!(
        "git add {file} && git -c user.name=Agent -c user.email=agent@example.invalid commit -q -m '{message}'"
    );
    Step::Reply(Reply::tool_calls(
        vec![Block::tool_use(
            "Bash",
            json!({ "command": command, "description": format!("Commit {file}") }),
        )],
        usage,
    ))
}

fn write_hello(path: &std::path::Path, usage: Usage) -> Step {
    write_file(path, "hello\n", usage)
}

fn commit_hello(usage: Usage) -> Step {
    commit_file("hello.txt", "Add hello.txt", usage)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_80_percent_the_coordinator_compacts_the_real_cli_and_does_not_rotate_it() {
    let Some(cli) = Cli::start().await else {
        return;
    };
    let standin = &cli.standin;
    let s = cli.scenario("compact", "max_attempts = 1", "", &[]).await;
    let issue = s.issue("Say hello");
    // 165k of sonnet's 200k: 82.5%, past the compaction threshold and below the rotation one
    // (85% for Claude Code).
    standin.replace_script(Script::new(vec![
        write_hello(&s.worktree(&issue).join("hello.txt"), reading(165_000, 300)),
        commit_hello(reading(166_000, 200)),
        Step::Reply(Reply::text("Committed hello.txt.", reading(167_000, 50))),
    ]));
    s.deliver(&issue, "assigned").await;
    s.wait_for_state(&issue, IssueState::Completed).await;
    s.wait_outbox_delivered(&issue).await;

    // The coordinator sent `/compact`; the CLI asked the model for a summary once.
    let compactions = standin
        .requests()
        .iter()
        .filter(|request| request.is_compaction())
        .count();
    assert_eq!(compactions, 1, "{:#?}", standin.requests());
    let sessions = s.store.sessions_for_issue(&issue).await.unwrap();
    assert_eq!(sessions.len(), 1, "compacted, not rotated: {sessions:#?}");
    let recorded = s
        .store
        .compactions_for_session(&sessions[0].id)
        .await
        .unwrap();
    assert_eq!(recorded.len(), 1, "{recorded:#?}");
    assert!(recorded[0].success, "{recorded:#?}");
    assert!(recorded[0].before_tokens >= 165_000, "{recorded:#?}");
    assert!(recorded[0].after_tokens < 100_000, "{recorded:#?}");
    assert!(s.store.recent_rotations(None, 10).await.unwrap().is_empty());
    let branch = format!("mosaic/{}-say-hello", issue.number);
    assert_eq!(
        subjects(&s.remote, &branch),
        ["Add hello.txt", "Initial commit"]
    );
    assert_eq!(s.pull_requests().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_85_percent_the_real_cli_is_rotated_after_its_turn_and_the_next_session_finishes_in_the_worktree()
 {
    let Some(cli) = Cli::start().await else {
        return;
    };
    let standin = &cli.standin;
    let s = cli.scenario("rotate", "max_attempts = 1", "", &[]).await;
    let issue = s.issue("Say hello");
    // The first session writes the file at 86% of the window: past the 85% a Claude Code
    // profile rotates at (the CLI itself stops at 88.5%), so the monitor rotates it once its
    // turn has ended. The next session (the script goes on) commits the file and finishes.
    standin.replace_script(Script::new(vec![
        write_hello(&s.worktree(&issue).join("hello.txt"), reading(172_000, 300)),
        Step::Reply(Reply::text(
            "Wrote hello.txt; it still needs a commit.",
            reading(173_000, 80),
        )),
        commit_hello(reading(20_000, 200)),
        Step::Reply(Reply::text("Committed hello.txt.", reading(21_000, 50))),
    ]));
    s.deliver(&issue, "assigned").await;
    s.wait_for_state(&issue, IssueState::Completed).await;
    s.wait_outbox_delivered(&issue).await;

    let sessions = s.store.sessions_for_issue(&issue).await.unwrap();
    assert_eq!(sessions.len(), 2, "{sessions:#?}");
    let rotations: Vec<_> = s
        .store
        .recent_rotations(None, 10)
        .await
        .unwrap()
        .into_iter()
        .map(|stored| stored.rotation)
        .collect();
    assert_eq!(rotations.len(), 1, "{rotations:#?}");
    assert!(rotations[0].success, "{rotations:#?}");
    assert!(
        rotations[0].context_before_tokens >= 172_000,
        "{rotations:#?}"
    );
    // The second session was told what the first did, and where the work stands.
    let second_prompt = standin
        .requests()
        .into_iter()
        .find(|request| request.kind == mosaic_claude_standin::RequestKind::Step(2))
        .map(|request| request.body.to_string())
        .unwrap_or_default();
    assert!(
        second_prompt.contains("Handover from the previous session"),
        "{second_prompt}"
    );
    assert!(
        second_prompt.contains("Wrote hello.txt; it still needs a commit."),
        "{second_prompt}"
    );
    let branch = format!("mosaic/{}-say-hello", issue.number);
    assert_eq!(
        subjects(&s.remote, &branch),
        ["Add hello.txt", "Initial commit"]
    );
    assert_eq!(s.pull_requests().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_model_api_fails_the_session_and_the_next_attempt_publishes() {
    let Some(cli) = Cli::start().await else {
        return;
    };
    let standin = &cli.standin;
    // One retry, so the CLI gives up within the test.
    let s = cli
        .scenario(
            "refused",
            "max_attempts = 2",
            "",
            &[("CLAUDE_CODE_MAX_RETRIES", "1")],
        )
        .await;
    let issue = s.issue("Say hello");
    // The model API fails twice: the CLI retries once, gives up and ends its turn in an error
    // `result` (`is_error: true`).
    standin.replace_script(Script::new(vec![
        Step::outage(),
        Step::outage(),
        write_hello(&s.worktree(&issue).join("hello.txt"), reading(20_000, 300)),
        commit_hello(reading(21_000, 200)),
        Step::Reply(Reply::text("Committed hello.txt.", reading(22_000, 50))),
    ]));
    s.deliver(&issue, "assigned").await;
    s.wait_for_state(&issue, IssueState::Completed).await;
    s.wait_outbox_delivered(&issue).await;

    let sessions = s.store.sessions_for_issue(&issue).await.unwrap();
    assert_eq!(sessions.len(), 2, "{sessions:#?}");
    assert_eq!(
        sessions[0].outcome,
        Some(mosaic_store::SessionOutcome::Failed),
        "{sessions:#?}"
    );
    assert!(
        sessions[0]
            .detail
            .as_deref()
            .is_some_and(|detail| detail.contains("API Error: 500")),
        "the CLI's error is the failure's reason: {sessions:#?}"
    );
    assert_eq!(
        sessions[1].outcome,
        Some(mosaic_store::SessionOutcome::Succeeded)
    );
    let record = s.store.get_issue(&issue).await.unwrap().unwrap();
    assert_eq!(record.attempts, 2);
    let branch = format!("mosaic/{}-say-hello", issue.number);
    assert_eq!(
        subjects(&s.remote, &branch),
        ["Add hello.txt", "Initial commit"]
    );
    assert_eq!(s.pull_requests().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_gate_sends_the_real_cli_back_within_the_same_session() {
    let Some(cli) = Cli::start().await else {
        return;
    };
    let standin = &cli.standin;
    // Its input stays open after a turn (the default): the coordinator verifies, then sends the
    // next turn or closes it.
    let s = cli
        .scenario(
            "gated",
            "max_attempts = 1",
            "[gates]\nmax_continuations = 2\n\n[[gates.gates]]\nname = \"test\"\ncommand = [\"sh\", \"-c\", \"echo checking fixed.txt; test -f fixed.txt\"]\ntimeout_secs = 30\n",
            &[],
        )
        .await;
    let issue = s.issue("Say hello");
    let worktree = s.worktree(&issue);
    let fixed = write_file(&worktree.join("fixed.txt"), "fixed\n", reading(23_000, 100));
    let commit_fixed = commit_file("fixed.txt", "Fix the gate", reading(24_000, 100));
    standin.replace_script(Script::new(vec![
        write_hello(&worktree.join("hello.txt"), reading(20_000, 300)),
        commit_hello(reading(21_000, 200)),
        Step::Reply(Reply::text("Committed hello.txt.", reading(22_000, 50))),
        // The continuation, a turn of the same session.
        fixed,
        commit_fixed,
        Step::Reply(Reply::text(
            "Fixed what the gate found.",
            reading(25_000, 50),
        )),
    ]));
    s.deliver(&issue, "assigned").await;
    s.wait_for_state(&issue, IssueState::Completed).await;
    s.wait_outbox_delivered(&issue).await;

    // One session, two turns: the second was the gates' continuation, sent as a user line.
    let sessions = s.store.sessions_for_issue(&issue).await.unwrap();
    assert_eq!(sessions.len(), 1, "{sessions:#?}");
    let continuation = standin
        .requests()
        .into_iter()
        .find(|request| request.kind == mosaic_claude_standin::RequestKind::Step(3))
        .map(|request| request.last_user_text)
        .unwrap_or_default();
    assert!(
        continuation.contains("REJECTED: quality gates failed"),
        "{continuation}"
    );
    assert!(
        continuation.contains("checking fixed.txt"),
        "{continuation}"
    );
    let detail = s.api_issue(&issue).await;
    let runs = detail["gate_runs"].as_array().unwrap();
    let statuses: Vec<&str> = runs
        .iter()
        .map(|run| run["status"].as_str().unwrap())
        .collect();
    assert_eq!(statuses, ["failed", "passed"], "{detail}");
    let branch = format!("mosaic/{}-say-hello", issue.number);
    assert_eq!(
        subjects(&s.remote, &branch),
        ["Fix the gate", "Add hello.txt", "Initial commit"]
    );
    let pulls = s.pull_requests();
    assert_eq!(pulls.len(), 1);
    assert!(
        pulls[0].body.contains("Fixed what the gate found."),
        "{}",
        pulls[0].body
    );
    assert!(
        pulls[0].body.contains("| test | ✅ passed |"),
        "{}",
        pulls[0].body
    );
}
