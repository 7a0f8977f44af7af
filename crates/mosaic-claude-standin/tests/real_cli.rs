//! The real Claude Code CLI against the scripted Messages stand-in, in a temporary git repository.
//!
//! The CLI is taken from `$MOSAIC_CLAUDE_BIN`, else `<repo>/.cache/agents/node_modules/.bin/claude`
//! (installed by `.ci/run`). Without it the tests return after one line saying how to install it,
//! except under `CI=true`, where they fail.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use mosaic_claude_standin::{
    Block, CLAUDE_MODEL as MODEL, MessagesStandin, Reply, Script, StandinHandle, Step, Usage,
    claude_stream_json_args,
};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

const TURN_TIMEOUT: Duration = Duration::from_secs(120);

fn claude_bin() -> Option<PathBuf> {
    mosaic_claude_standin::claude_cli()
}

/// A temporary git repository (the CLI's working directory) and a HOME of its own.
struct Sandbox {
    _dir: tempfile::TempDir,
    repo: PathBuf,
    home: PathBuf,
}

fn sandbox() -> Sandbox {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    let home = dir.path().join("home");
    std::fs::create_dir_all(&repo).unwrap();
    std::fs::create_dir_all(&home).unwrap();
    git(&repo, &["init", "-q", "-b", "main"]);
    std::fs::write(repo.join("README.md"), "sandbox\n").unwrap();
    git(&repo, &["add", "README.md"]);
    git(
        &repo,
        &[
            "-c",
            "user.name=Sandbox",
            "-c",
            "user.email=sandbox@example.invalid",
            "commit",
            "-q",
            "-m",
            "initial",
        ],
    );
    Sandbox {
        _dir: dir,
        repo,
        home,
    }
}

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
    String::from_utf8(out.stdout).unwrap()
}

/// A running `claude -p` in stream-json mode; lines are read one turn at a time.
struct Session {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: tokio::io::Lines<BufReader<ChildStdout>>,
    lines: Vec<String>,
}

impl Session {
    fn start(
        bin: &Path,
        standin: &StandinHandle,
        sandbox: &Sandbox,
        extra_args: &[&str],
        extra_env: &[(&str, &str)],
    ) -> Self {
        Self::start_in(
            bin,
            standin,
            &sandbox.repo,
            &sandbox.home,
            extra_args,
            extra_env,
        )
    }

    fn start_in(
        bin: &Path,
        standin: &StandinHandle,
        cwd: &Path,
        home: &Path,
        extra_args: &[&str],
        extra_env: &[(&str, &str)],
    ) -> Self {
        let mut command = Command::new(bin);
        command
            .args(claude_stream_json_args(extra_args))
            .current_dir(cwd)
            // Nothing of the caller's environment (keys, settings) reaches the CLI.
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", home)
            .env("ANTHROPIC_BASE_URL", standin.base_url())
            .env("ANTHROPIC_API_KEY", "sk-ant-standin-dummy")
            .env("DISABLE_AUTOUPDATER", "1")
            .env("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "1")
            .envs(extra_env.iter().copied().filter(|(_, v)| !v.is_empty()))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        // An empty value removes a variable set above.
        for (name, _) in extra_env.iter().filter(|(_, v)| v.is_empty()) {
            command.env_remove(name);
        }
        let mut child = command.spawn().unwrap();
        let stdin = child.stdin.take();
        let stdout = BufReader::new(child.stdout.take().unwrap()).lines();
        Self {
            child,
            stdin,
            stdout,
            lines: Vec::new(),
        }
    }

    /// Sends one user line and returns the stdout lines up to and including its `result`.
    async fn turn(&mut self, content: &str) -> Vec<Value> {
        let line = json!({ "type": "user", "message": { "role": "user", "content": content } });
        let stdin = self.stdin.as_mut().unwrap();
        stdin
            .write_all(format!("{line}\n").as_bytes())
            .await
            .unwrap();
        stdin.flush().await.unwrap();
        let mut turn = Vec::new();
        loop {
            let next = tokio::time::timeout(TURN_TIMEOUT, self.stdout.next_line())
                .await
                .unwrap_or_else(|_| panic!("no result within {TURN_TIMEOUT:?}; so far: {turn:#?}"))
                .unwrap();
            let Some(raw) = next else {
                panic!("stdout closed before a result; so far: {turn:#?}");
            };
            let value: Value =
                serde_json::from_str(&raw).unwrap_or_else(|e| panic!("not JSON ({e}): {raw}"));
            self.lines.push(raw);
            let is_result = value["type"] == "result";
            turn.push(value);
            if is_result {
                return turn;
            }
        }
    }

    /// Closes stdin, collects the remaining lines and waits for the exit.
    async fn finish(mut self) -> (Vec<String>, std::process::ExitStatus, String) {
        drop(self.stdin.take());
        while let Ok(Ok(Some(raw))) =
            tokio::time::timeout(TURN_TIMEOUT, self.stdout.next_line()).await
        {
            self.lines.push(raw);
        }
        let status = tokio::time::timeout(TURN_TIMEOUT, self.child.wait())
            .await
            .unwrap()
            .unwrap();
        let mut stderr = String::new();
        if let Some(mut err) = self.child.stderr.take() {
            use tokio::io::AsyncReadExt;
            let _ = err.read_to_string(&mut stderr).await;
        }
        (self.lines, status, stderr)
    }
}

/// Writes the captured stdout to `$MOSAIC_CAPTURE_DIR/<name>.jsonl` when that is set (how the
/// fixtures in `tests/fixtures/claude-code/` were made).
/// `<name>.requests.json` beside it holds what the stand-in received, for investigation.
fn capture(name: &str, lines: &[String], standin: &StandinHandle) {
    if let Some(dir) = std::env::var_os("MOSAIC_CAPTURE_DIR") {
        let dir = PathBuf::from(dir);
        std::fs::write(dir.join(format!("{name}.jsonl")), lines.join("\n") + "\n").unwrap();
        let requests = serde_json::to_string_pretty(&standin.requests()).unwrap();
        std::fs::write(dir.join(format!("{name}.requests.json")), requests).unwrap();
    }
}

fn dump_requests(standin: &StandinHandle) {
    for request in standin.requests() {
        let first_line: String = request.last_user_text.chars().take(100).collect();
        println!(
            "request: {} {}?{} model={:?} stream={} max_tokens={:?} tools={} kind={:?} last_user={first_line:?}",
            request.method,
            request.path,
            request.query.clone().unwrap_or_default(),
            request.model,
            request.stream,
            request.max_tokens,
            request.tool_count,
            request.kind,
        );
    }
}

fn of_type<'a>(lines: &'a [Value], kind: &str, subtype: Option<&str>) -> Vec<&'a Value> {
    lines
        .iter()
        .filter(|l| l["type"] == kind && subtype.is_none_or(|s| l["subtype"] == s))
        .collect()
}

/// Claude Sonnet 4.5 list prices in USD per million tokens, as the CLI applies them: input, cache
/// write (5 minutes), cache read, output.
const SONNET_PRICES: [f64; 4] = [3.0, 3.75, 0.30, 15.0];

fn cost_usd(usage: &Usage) -> f64 {
    let [input, cache_write, cache_read, output] = SONNET_PRICES;
    (usage.input_tokens as f64 * input
        + usage.cache_creation_input_tokens as f64 * cache_write
        + usage.cache_read_input_tokens as f64 * cache_read
        + usage.output_tokens as f64 * output)
        / 1_000_000.0
}

fn sum(usages: &[Usage]) -> Usage {
    usages.iter().fold(Usage::default(), |acc, u| Usage {
        input_tokens: acc.input_tokens + u.input_tokens,
        cache_creation_input_tokens: acc.cache_creation_input_tokens
            + u.cache_creation_input_tokens,
        cache_read_input_tokens: acc.cache_read_input_tokens + u.cache_read_input_tokens,
        output_tokens: acc.output_tokens + u.output_tokens,
    })
}

fn assert_usage(result: &Value, expected: &Usage) {
    let usage = &result["usage"];
    assert_eq!(usage["input_tokens"], expected.input_tokens, "{result}");
    assert_eq!(
        usage["cache_creation_input_tokens"], expected.cache_creation_input_tokens,
        "{result}"
    );
    assert_eq!(
        usage["cache_read_input_tokens"], expected.cache_read_input_tokens,
        "{result}"
    );
    assert_eq!(usage["output_tokens"], expected.output_tokens, "{result}");
}

fn assert_cost(result: &Value, expected: f64) {
    let cost = result["total_cost_usd"].as_f64().unwrap();
    assert!(
        (cost - expected).abs() < 1e-9,
        "total_cost_usd {cost} != {expected}: {result}"
    );
}

fn context_usage(context_tokens: u64) -> Usage {
    Usage {
        input_tokens: 2_000,
        cache_creation_input_tokens: 8_000,
        cache_read_input_tokens: context_tokens - 10_000,
        output_tokens: 300,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scripted_write_and_git_commit_run_and_result_reports_the_scripted_usage() {
    let Some(bin) = claude_bin() else { return };
    let sandbox = sandbox();
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
    let script = Script::new(vec![
        Step::Reply(Reply::tool_calls(
            vec![
                Block::text("Writing the file."),
                Block::tool_use(
                    "Write",
                    json!({ "file_path": sandbox.repo.join("hello.txt"), "content": "hello from the stand-in\n" }),
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
    ]);
    let standin = MessagesStandin::start(script).await.unwrap();
    let mut session = Session::start(
        &bin,
        &standin,
        &sandbox,
        &[
            "--permission-mode",
            "acceptEdits",
            "--allowedTools",
            "Bash(git add:*)",
            "Bash(git -c:*)",
        ],
        &[],
    );
    let turn = session.turn("Create hello.txt and commit it.").await;
    let (lines, status, stderr) = session.finish().await;
    dump_requests(&standin);
    capture("write-and-commit", &lines, &standin);
    assert!(status.success(), "exit {status}; stderr: {stderr}");

    assert_eq!(
        std::fs::read_to_string(sandbox.repo.join("hello.txt")).unwrap(),
        "hello from the stand-in\n"
    );
    assert_eq!(
        git(&sandbox.repo, &["log", "-1", "--format=%s"]).trim(),
        "Add hello.txt"
    );
    assert_eq!(git(&sandbox.repo, &["status", "--porcelain"]), "");

    // The tool results went back to the model: the Write's confirmation, then the Bash call's.
    let requests = standin.requests();
    assert_eq!(requests.len(), 3, "see the request lines above");
    assert!(
        requests
            .iter()
            .all(|r| r.path == "/v1/messages" && r.stream)
    );
    assert!(
        requests[1]
            .last_user_text
            .contains("File created successfully")
    );
    assert_eq!(standin.steps_used(), 3);

    let results = of_type(&turn, "result", None);
    assert_eq!(results.len(), 1);
    let result = results[0];
    assert_eq!(result["subtype"], "success");
    assert_eq!(result["is_error"], false);
    assert_eq!(result["result"], "Committed hello.txt.");
    assert_eq!(result["num_turns"], 3);
    let expected = sum(&[tool_usage, tool_usage, final_usage]);
    assert_usage(result, &expected);
    assert_cost(result, cost_usd(&expected));
    assert_eq!(result["modelUsage"][MODEL]["contextWindow"], 200_000);
    let tool_uses: Vec<&str> = of_type(&turn, "assistant", None)
        .iter()
        .flat_map(|l| l["message"]["content"].as_array().unwrap().iter())
        .filter(|b| b["type"] == "tool_use")
        .map(|b| b["name"].as_str().unwrap())
        .collect();
    assert_eq!(tool_uses, ["Write", "Bash"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manual_compact_line_makes_one_compaction_call_and_a_compact_boundary() {
    let Some(bin) = claude_bin() else { return };
    let sandbox = sandbox();
    let first = context_usage(60_000);
    let compaction_usage = Usage {
        input_tokens: 61_000,
        output_tokens: 700,
        ..Usage::default()
    };
    let script = Script::new(vec![Step::Reply(Reply::text("Parser implemented.", first))])
        .with_compaction(Reply::text(
            "<analysis>Parser done.</analysis>\n<summary>Parser implemented; tests are next.</summary>",
            compaction_usage,
        ));
    let standin = MessagesStandin::start(script).await.unwrap();
    // The set-up the coordinator wants: it compacts, the CLI does not on its own.
    let mut session = Session::start(
        &bin,
        &standin,
        &sandbox,
        &[],
        &[("DISABLE_AUTO_COMPACT", "1")],
    );
    let turn1 = session.turn("Implement the parser.").await;
    let turn2 = session
        .turn("/compact Keep the decisions and the open problems.")
        .await;
    let (lines, status, stderr) = session.finish().await;
    dump_requests(&standin);
    capture("compact-manual", &lines, &standin);
    assert!(status.success(), "exit {status}; stderr: {stderr}");
    assert_eq!(of_type(&turn1, "result", None)[0]["subtype"], "success");

    let requests = standin.requests();
    let compactions: Vec<_> = requests.iter().filter(|r| r.is_compaction()).collect();
    assert_eq!(compactions.len(), 1, "see the request lines above");
    assert!(
        compactions[0]
            .last_user_text
            .contains("Keep the decisions and the open problems."),
        "the caller's instructions reach the summary request"
    );
    assert_eq!(requests.len(), 2, "one conversation call, one compaction");

    let boundaries = of_type(&turn2, "system", Some("compact_boundary"));
    assert_eq!(boundaries.len(), 1, "{turn2:#?}");
    let metadata = &boundaries[0]["compact_metadata"];
    assert_eq!(metadata["trigger"], "manual");
    assert!(metadata["pre_tokens"].as_u64().unwrap() >= first.context_tokens());
    assert!(metadata["post_tokens"].as_u64().is_some(), "{metadata}");
    let statuses = of_type(&turn2, "system", Some("status"));
    assert!(
        statuses.iter().any(|s| s["status"] == "compacting"),
        "{turn2:#?}"
    );
    assert!(
        statuses.iter().any(|s| s["compact_result"] == "success"),
        "{turn2:#?}"
    );
    let result = of_type(&turn2, "result", None)[0];
    assert_eq!(result["is_error"], false);
    // The compaction call is billed like any other call: the cost stays cumulative.
    assert_cost(result, cost_usd(&sum(&[first, compaction_usage])));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_outage_is_retried_then_reported_as_an_error_result() {
    let Some(bin) = claude_bin() else { return };
    let sandbox = sandbox();
    let script = Script::new(vec![Step::outage(); 3]);
    let standin = MessagesStandin::start(script).await.unwrap();
    let mut session = Session::start(
        &bin,
        &standin,
        &sandbox,
        &[],
        &[("CLAUDE_CODE_MAX_RETRIES", "2")],
    );
    let turn = session.turn("Implement the parser.").await;
    let (lines, status, stderr) = session.finish().await;
    dump_requests(&standin);
    capture("api-error-retries", &lines, &standin);
    println!("exit {status}; stderr: {stderr}");

    assert_eq!(standin.steps_used(), 3, "one call and two retries");
    assert_eq!(standin.requests().len(), 3);
    let retries = of_type(&turn, "system", Some("api_retry"));
    assert_eq!(retries.len(), 2, "{turn:#?}");
    assert_eq!(retries[0]["attempt"], 1);
    assert_eq!(retries[0]["max_retries"], 2);
    assert_eq!(retries[0]["error_status"], 500);
    let result = of_type(&turn, "result", None)[0];
    assert_eq!(result["is_error"], true, "{result}");
}

/// Runs three turns whose answers each report `context_tokens` of context and tells whether the
/// CLI compacted on its own (the first check after one exchange fails with `too_few_groups`, so
/// the third turn is the first that can compact below the blocking limit).
async fn auto_compaction(
    bin: &Path,
    context_tokens: u64,
    env: &[(&str, &str)],
    capture_as: &str,
) -> (bool, Vec<Value>, std::process::ExitStatus) {
    let sandbox = sandbox();
    let steps = (1..=3)
        .map(|n| {
            Step::Reply(Reply::text(
                format!("Step {n} done."),
                context_usage(context_tokens),
            ))
        })
        .collect();
    let standin = MessagesStandin::start(Script::new(steps)).await.unwrap();
    let mut session = Session::start(bin, &standin, &sandbox, &[], env);
    let mut lines = Vec::new();
    for n in 1..=3 {
        lines.extend(session.turn(&format!("Step {n}.")).await);
    }
    let (raw, status, stderr) = session.finish().await;
    dump_requests(&standin);
    capture(capture_as, &raw, &standin);
    println!("{capture_as}: exit {status}; stderr: {stderr}");
    let compaction_calls = standin
        .requests()
        .iter()
        .filter(|r| r.is_compaction())
        .count();
    let boundaries = of_type(&lines, "system", Some("compact_boundary")).len();
    assert_eq!(
        compaction_calls, boundaries,
        "one summary call per compaction"
    );
    (boundaries > 0, lines, status)
}

/// The auto-compaction window that makes the CLI compact on its own (unset, 2.1.328 does not).
const WINDOW_200K: (&str, &str) = ("CLAUDE_CODE_AUTO_COMPACT_WINDOW", "200000");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_compaction_needs_a_window_and_disable_auto_compact_stops_it() {
    let Some(bin) = claude_bin() else { return };

    // By default the CLI does not compact on its own, even at 99.5% of the reported window.
    let (compacted, lines, status) =
        auto_compaction(&bin, 199_000, &[], "compact-auto-default-995pct").await;
    assert!(status.success());
    assert!(
        !compacted,
        "no proactive compaction without a configured window"
    );
    let result = of_type(&lines, "result", None)[0];
    assert_eq!(result["modelUsage"][MODEL]["contextWindow"], 200_000);
    assert_eq!(result["modelUsage"][MODEL]["maxOutputTokens"], 32_000);

    // With a 200k window the threshold is 200k - 20k (output reserve) - 13k = 167k (83.5%).
    let (compacted, _, status) =
        auto_compaction(&bin, 160_000, &[WINDOW_200K], "compact-auto-80pct").await;
    assert!(status.success());
    assert!(!compacted, "80% of the window is below the threshold");
    let (compacted, lines, status) =
        auto_compaction(&bin, 170_000, &[WINDOW_200K], "compact-auto").await;
    assert!(status.success());
    assert!(compacted, "85% of the window passes the threshold");
    let boundary = of_type(&lines, "system", Some("compact_boundary"))[0];
    assert_eq!(boundary["compact_metadata"]["trigger"], "auto");
    assert!(boundary["compact_metadata"]["pre_tokens"].as_u64().unwrap() >= 170_000);

    let disabled = [WINDOW_200K, ("DISABLE_AUTO_COMPACT", "1")];
    let (compacted, _, status) =
        auto_compaction(&bin, 172_000, &disabled, "compact-auto-disabled").await;
    assert!(status.success());
    assert!(
        !compacted,
        "DISABLE_AUTO_COMPACT=1 leaves compaction to the caller"
    );

    // Past the blocking limit (180k - 3k = 177k) the CLI refuses to call the model at all.
    let (compacted, lines, status) =
        auto_compaction(&bin, 190_000, &disabled, "blocking-limit").await;
    assert!(!compacted);
    assert_eq!(status.code(), Some(1), "the last result was an error");
    let results = of_type(&lines, "result", None);
    let blocked = results.last().unwrap();
    assert_eq!(blocked["is_error"], true);
    assert_eq!(blocked["result"], "Prompt is too long");
    assert_eq!(blocked["terminal_reason"], "blocking_limit");

    // The percentage override lowers the threshold (50% of 180k = 90k) but cannot raise it: 95%
    // would be 171k, yet 168.5k still compacts at the default 167k.
    let (compacted, _, _) = auto_compaction(
        &bin,
        120_000,
        &[WINDOW_200K, ("CLAUDE_AUTOCOMPACT_PCT_OVERRIDE", "50")],
        "compact-auto-pct50",
    )
    .await;
    assert!(compacted, "the override lowers the threshold");
    let (compacted, _, _) = auto_compaction(
        &bin,
        168_500,
        &[WINDOW_200K, ("CLAUDE_AUTOCOMPACT_PCT_OVERRIDE", "95")],
        "compact-auto-pct95",
    )
    .await;
    assert!(compacted, "the override cannot raise the threshold");
}

/// Two turns; the model API rejects the second turn's first call as too long (at 150k context of
/// a 200k window, below every threshold of the CLI).
async fn prompt_too_long(
    bin: &Path,
    env: &[(&str, &str)],
    capture_as: &str,
) -> (
    Vec<Value>,
    Vec<mosaic_claude_standin::LoggedRequest>,
    std::process::ExitStatus,
) {
    let sandbox = sandbox();
    let script = Script::new(vec![
        Step::Reply(Reply::text("Step 1 done.", context_usage(150_000))),
        Step::prompt_too_long(210_000, 200_000),
        Step::Reply(Reply::text("Step 2 done.", context_usage(30_000))),
    ]);
    let standin = MessagesStandin::start(script).await.unwrap();
    let mut session = Session::start(bin, &standin, &sandbox, &[], env);
    let mut lines = session.turn("Step 1.").await;
    lines.extend(session.turn("Step 2.").await);
    let (raw, status, stderr) = session.finish().await;
    dump_requests(&standin);
    capture(capture_as, &raw, &standin);
    println!("{capture_as}: exit {status}; stderr: {stderr}");
    (lines, standin.requests(), status)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prompt_too_long_compacts_and_retries_unless_auto_compact_is_disabled() {
    let Some(bin) = claude_bin() else { return };

    let (lines, requests, status) = prompt_too_long(&bin, &[], "compact-reactive").await;
    assert!(status.success());
    let kinds: Vec<_> = requests.iter().map(|r| r.kind).collect();
    use mosaic_claude_standin::RequestKind::{Compaction, Step as Answered};
    assert_eq!(kinds, [Answered(0), Answered(1), Compaction, Answered(2)]);
    let boundary = of_type(&lines, "system", Some("compact_boundary"))[0];
    assert_eq!(boundary["compact_metadata"]["trigger"], "auto");
    let result = of_type(&lines, "result", None)[1];
    assert_eq!(result["is_error"], false);
    assert_eq!(result["result"], "Step 2 done.");

    let (lines, requests, status) = prompt_too_long(
        &bin,
        &[("DISABLE_AUTO_COMPACT", "1")],
        "prompt-too-long-auto-compact-disabled",
    )
    .await;
    assert_eq!(status.code(), Some(1));
    assert_eq!(requests.len(), 2, "no compaction, no retry");
    assert!(of_type(&lines, "system", Some("compact_boundary")).is_empty());
    let result = of_type(&lines, "result", None)[1];
    assert_eq!(result["is_error"], true);
    assert_eq!(result["api_error_status"], 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_continues_the_session_from_another_working_directory_too() {
    let Some(bin) = claude_bin() else { return };
    let sandbox = sandbox();
    let other = sandbox.home.parent().unwrap().join("other");
    std::fs::create_dir_all(&other).unwrap();
    let steps = (1..=3)
        .map(|n| Step::Reply(Reply::text(format!("Answer {n}."), context_usage(20_000))))
        .collect();
    let standin = MessagesStandin::start(Script::new(steps)).await.unwrap();
    let mut first = Session::start(&bin, &standin, &sandbox, &[], &[]);
    let turn = first.turn("Remember the word PELICAN.").await;
    let session_id = turn[0]["session_id"].as_str().unwrap().to_owned();
    let first_cost = of_type(&turn, "result", None)[0]["total_cost_usd"]
        .as_f64()
        .unwrap();
    let (_, status, _) = first.finish().await;
    assert!(status.success());

    for (name, cwd) in [
        ("resume-same-dir", &sandbox.repo),
        ("resume-other-dir", &other),
    ] {
        let mut resumed = Session::start_in(
            &bin,
            &standin,
            cwd,
            &sandbox.home,
            &["--resume", &session_id],
            &[],
        );
        let turn = resumed.turn("Which word?").await;
        let (lines, status, stderr) = resumed.finish().await;
        capture(name, &lines, &standin);
        assert!(status.success(), "{name}: exit {status}; stderr: {stderr}");
        assert_eq!(turn[0]["session_id"], session_id.as_str(), "{name}");
        let result = of_type(&turn, "result", None)[0];
        assert_eq!(result["is_error"], false, "{name}");
        // The restored session carries its cost: total_cost_usd keeps growing across processes.
        assert!(
            result["total_cost_usd"].as_f64().unwrap() > first_cost,
            "{name}"
        );
        let request = standin.requests().last().unwrap().clone();
        let history = serde_json::to_string(&request.body["messages"]).unwrap();
        assert!(
            history.contains("PELICAN"),
            "{name}: the earlier turn is in the request"
        );
    }
    dump_requests(&standin);
}
