//! `mosaic-sample-agent`: a stand-in for an agent CLI such as Claude Code.
//!
//! It reads its prompt from stdin (a stream-json `user` line, or plain text up to end of input),
//! then "works" in steps: each step grows its context and reports usage on stdout. While it
//! works it reads control lines from stdin; `{"type":"compact","instructions":"…"}` shrinks its
//! context and emits a `compact_boundary`. It ends with a `result` line (or `done` in the generic
//! protocol). A prompt carrying `progress: step K/N` (a handover summary) resumes at step K + 1.
//! Every knob has an environment variable so the coordinator's configuration can set it.

use std::io::Write as _;
use std::path::Path;
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::mpsc;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Protocol {
    /// Claude Code's `--output-format stream-json`.
    StreamJson,
    /// The generic JSON-lines protocol (`usage`, `message`, `compacted`, `done`).
    JsonLines,
}

#[derive(Debug, Parser)]
// A flag given again overrides the earlier one: a test adds its own flags after the defaults.
#[command(
    version,
    about = "Sample agent for Mosaic Coordinator tests and demos",
    args_override_self = true
)]
struct Args {
    /// Work steps until the task is done.
    #[arg(long, env = "SAMPLE_AGENT_STEPS", default_value_t = 10)]
    steps: u32,
    /// Context tokens added per step.
    #[arg(long, env = "SAMPLE_AGENT_TOKENS_PER_STEP", default_value_t = 5_000)]
    tokens_per_step: u64,
    /// Context tokens at the start (system prompt and task).
    #[arg(long, env = "SAMPLE_AGENT_START_TOKENS", default_value_t = 10_000)]
    start_tokens: u64,
    /// Pause per step, in milliseconds.
    #[arg(long, env = "SAMPLE_AGENT_STEP_DELAY_MS", default_value_t = 200)]
    step_delay_ms: u64,
    /// Context window reported to the coordinator.
    #[arg(long, env = "SAMPLE_AGENT_WINDOW", default_value_t = 200_000)]
    window: u64,
    /// Extra tokens added at step `burst_at_step` (a big file read, say).
    #[arg(long, env = "SAMPLE_AGENT_BURST_TOKENS", default_value_t = 0)]
    burst_tokens: u64,
    #[arg(long, env = "SAMPLE_AGENT_BURST_AT_STEP", default_value_t = 0)]
    burst_at_step: u32,
    /// Fraction of the context kept by a compaction.
    #[arg(long, env = "SAMPLE_AGENT_COMPACT_KEEP", default_value_t = 0.25)]
    compact_keep: f64,
    /// Finish with an error result and exit status 1.
    #[arg(long, env = "SAMPLE_AGENT_FAIL")]
    fail: bool,
    /// Stop producing output at this step and hang (0: never).
    #[arg(long, env = "SAMPLE_AGENT_HANG_AT_STEP", default_value_t = 0)]
    hang_at_step: u32,
    /// Ignore SIGTERM, so only SIGKILL ends the agent.
    #[arg(long, env = "SAMPLE_AGENT_IGNORE_SIGTERM")]
    ignore_sigterm: bool,
    /// Start a long-running child process (it shares the agent's process group).
    #[arg(long, env = "SAMPLE_AGENT_SPAWN_CHILD")]
    spawn_child: bool,
    #[arg(long, value_enum, env = "SAMPLE_AGENT_PROTOCOL", default_value_t = Protocol::StreamJson)]
    protocol: Protocol,
    /// On success, write this file (relative to the working directory) before finishing.
    #[arg(long, env = "SAMPLE_AGENT_WRITE_FILE")]
    write_file: Option<std::path::PathBuf>,
    /// Commit every change in the working directory with `git` before finishing (as an agent
    /// working in a git worktree does; it never pushes).
    #[arg(long, env = "SAMPLE_AGENT_COMMIT")]
    commit: bool,
    /// On success, also write this file when the prompt says the quality gates rejected the
    /// previous work (a continuation): an agent that fixes what the gates found.
    #[arg(long, env = "SAMPLE_AGENT_FIX_ON_CONTINUATION")]
    fix_on_continuation: Option<std::path::PathBuf>,
    /// Append every prompt received to this file, each followed by a `----` line (tests read
    /// what a session was told).
    #[arg(long, env = "SAMPLE_AGENT_PROMPT_LOG")]
    prompt_log: Option<std::path::PathBuf>,
    /// At this step write `checkpoint_file` and commit it with `git` (0: never): work committed
    /// midway, as an agent does that commits as it goes. A checkpoint file already there (the
    /// work of an earlier session on the issue, taken up) is left as it is.
    #[arg(long, env = "SAMPLE_AGENT_CHECKPOINT_AT_STEP", default_value_t = 0)]
    checkpoint_at_step: u32,
    /// The file a checkpoint writes (relative to the working directory).
    #[arg(
        long,
        env = "SAMPLE_AGENT_CHECKPOINT_FILE",
        default_value = "CHECKPOINT.md"
    )]
    checkpoint_file: std::path::PathBuf,
}

/// The subject of a checkpoint's commit.
const CHECKPOINT_SUBJECT: &str = "Sample agent: checkpoint";

/// What a continuation prompt starts with (mosaic-gates' `continuation_prompt`).
const GATES_REJECTED: &str = "REJECTED: quality gates failed";

/// What arrives on stdin after the prompt.
enum Control {
    Compact,
    Prompt(String),
}

struct Agent {
    args: Args,
    session_id: String,
    context: u64,
    step: u32,
    processed_tokens: u64,
    output_tokens: u64,
    resumed_from: Option<u32>,
    /// The prompt sends the agent back after failed quality gates.
    continuation: bool,
    /// Why the checkpoint could not be written or committed.
    checkpoint_failed: Option<String>,
}

fn emit(line: &Value) {
    let mut out = std::io::stdout().lock();
    // A closed stdout means the coordinator is gone; there is nobody left to tell.
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

impl Agent {
    fn progress(&self) -> String {
        format!("progress: step {}/{}", self.step, self.args.steps)
    }

    fn report(&mut self, text: &str) {
        self.output_tokens += 50;
        self.processed_tokens += self.context;
        match self.args.protocol {
            Protocol::StreamJson => {
                let cache_creation = self.context / 10;
                let input = self.context / 10;
                emit(&json!({
                    "type": "assistant",
                    "session_id": self.session_id,
                    "message": {
                        "role": "assistant",
                        "model": "mosaic-sample",
                        "content": [{"type": "text", "text": text}],
                        "usage": {
                            "input_tokens": input,
                            "cache_creation_input_tokens": cache_creation,
                            "cache_read_input_tokens": self.context - input - cache_creation,
                            "output_tokens": 50
                        }
                    }
                }));
            }
            Protocol::JsonLines => {
                emit(&json!({"type": "message", "text": text}));
                emit(&json!({
                    "type": "usage",
                    "context_tokens": self.context,
                    "context_window": self.args.window
                }));
            }
        }
    }

    fn compact(&mut self) {
        let before = self.context;
        #[allow(
            clippy::cast_precision_loss,
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss
        )]
        let kept = (before as f64 * self.args.compact_keep.clamp(0.0, 1.0)) as u64;
        self.context = kept.max(1);
        let summary = format!(
            "Summary after compaction. Completed: {}. Decisions: none worth keeping. Open problems: none. Next: step {}.",
            self.progress(),
            self.step + 1
        );
        match self.args.protocol {
            Protocol::StreamJson => emit(&json!({
                "type": "system",
                "subtype": "compact_boundary",
                "session_id": self.session_id,
                "compact_metadata": {"trigger": "manual", "pre_tokens": before}
            })),
            Protocol::JsonLines => emit(&json!({
                "type": "compacted",
                "before_tokens": before,
                "after_tokens": self.context
            })),
        }
        self.report(&summary);
    }

    /// Writes the requested file and commits, as configured; says what it did.
    fn change_files(&self) -> Result<String, String> {
        let mut done = String::new();
        if let Some(file) = &self.args.write_file {
            if let Some(parent) = file.parent().filter(|p| !p.as_os_str().is_empty()) {
                std::fs::create_dir_all(parent)
                    .map_err(|err| format!("cannot create {}: {err}", parent.display()))?;
            }
            let text = format!(
                "Written by mosaic-sample-agent after {} steps.\n",
                self.args.steps
            );
            std::fs::write(file, text)
                .map_err(|err| format!("cannot write {}: {err}", file.display()))?;
            done.push_str(&format!(" Wrote {}.", file.display()));
        }
        if let Some(file) = self
            .args
            .fix_on_continuation
            .as_ref()
            .filter(|_| self.continuation)
        {
            std::fs::write(file, "Fixed after the quality gates rejected the work.\n")
                .map_err(|err| format!("cannot write {}: {err}", file.display()))?;
            done.push_str(&format!(
                " Fixed the gates' findings in {}.",
                file.display()
            ));
        }
        if self.args.commit {
            commit_all(Path::new("."), "Sample agent: work on the issue")?;
            done.push_str(" Committed.");
        }
        Ok(done)
    }

    fn finish(&self, started: Instant) -> i32 {
        let resumed = self
            .resumed_from
            .map(|step| format!(" (resumed after step {step})"))
            .unwrap_or_default();
        let changed = if self.args.fail {
            Ok(String::new())
        } else if let Some(reason) = &self.checkpoint_failed {
            Err(format!("checkpoint at step {}: {reason}", self.step))
        } else {
            self.change_files()
        };
        let failed = self.args.fail || changed.is_err();
        let summary = match &changed {
            _ if self.args.fail => format!("Failed on request at step {}{resumed}.", self.step),
            Err(reason) => format!("Failed to change files: {reason}"),
            Ok(done) => format!("Completed {} steps{resumed}.{done}", self.args.steps),
        };
        #[allow(clippy::cast_precision_loss)]
        let cost = (self.processed_tokens + self.output_tokens) as f64 * 3.0 / 1_000_000.0;
        match self.args.protocol {
            Protocol::StreamJson => emit(&json!({
                "type": "result",
                "subtype": if failed { "error_during_execution" } else { "success" },
                "is_error": failed,
                "duration_ms": u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
                "num_turns": self.step,
                "result": summary,
                "session_id": self.session_id,
                "total_cost_usd": cost,
                "usage": {
                    "input_tokens": self.processed_tokens,
                    "cache_creation_input_tokens": 0,
                    "cache_read_input_tokens": 0,
                    "output_tokens": self.output_tokens
                }
            })),
            Protocol::JsonLines => emit(&json!({
                "type": "done",
                "status": if failed { "error" } else { "success" },
                "summary": summary,
                "tokens": self.processed_tokens + self.output_tokens,
                "cost_usd": cost
            })),
        }
        i32::from(failed)
    }
}

/// Stages every change under `dir` and commits it as the sample agent (an empty commit when
/// nothing changed).
fn commit_all(dir: &Path, message: &str) -> Result<(), String> {
    let git = |args: &[&str]| -> Result<(), String> {
        let output = std::process::Command::new("git")
            .current_dir(dir)
            .args([
                "-c",
                "user.name=Mosaic Sample Agent",
                "-c",
                "user.email=sample-agent@localhost",
                "-c",
                "commit.gpgsign=false",
            ])
            .args(args)
            .output()
            .map_err(|err| format!("cannot run git: {err}"))?;
        if output.status.success() {
            Ok(())
        } else {
            Err(format!(
                "git {} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&output.stderr).trim()
            ))
        }
    };
    git(&["add", "--all"])?;
    git(&["commit", "--quiet", "--allow-empty", "-m", message])
}

/// Writes `file` (under `dir`) and commits it, unless it is there already. Says what it did.
fn checkpoint(dir: &Path, file: &Path, session_id: &str, step: u32) -> Result<String, String> {
    let path = dir.join(file);
    if path.exists() {
        return Ok(format!("Found {} already written.", file.display()));
    }
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .map_err(|err| format!("cannot create {}: {err}", parent.display()))?;
    }
    std::fs::write(
        &path,
        format!("Checkpoint of {session_id} at step {step}.\n"),
    )
    .map_err(|err| format!("cannot write {}: {err}", path.display()))?;
    commit_all(dir, CHECKPOINT_SUBJECT)?;
    Ok(format!("Committed {}.", file.display()))
}

/// The text of a stream-json `user` line: `message.content` as a string or as text blocks.
fn user_text(line: &Value) -> Option<String> {
    if line.get("type")?.as_str()? != "user" {
        return None;
    }
    let content = line.get("message")?.get("content")?;
    match content {
        Value::String(text) => Some(text.clone()),
        Value::Array(blocks) => Some(
            blocks
                .iter()
                .filter_map(|block| block.get("text").and_then(Value::as_str))
                .collect::<Vec<_>>()
                .join("\n"),
        ),
        _ => None,
    }
}

/// Reads the prompt, then forwards control lines until stdin ends.
async fn read_stdin(prompt_tx: mpsc::Sender<String>, control_tx: mpsc::Sender<Control>) {
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    let Ok(Some(first)) = lines.next_line().await else {
        let _ = prompt_tx.send(String::new()).await;
        return;
    };
    let first_json = serde_json::from_str::<Value>(&first).ok();
    if let Some(prompt) = first_json.as_ref().and_then(user_text) {
        let _ = prompt_tx.send(prompt).await;
    } else {
        // Plain text: the prompt is everything up to end of input; no control lines follow.
        let mut prompt = first;
        while let Ok(Some(line)) = lines.next_line().await {
            prompt.push('\n');
            prompt.push_str(&line);
        }
        let _ = prompt_tx.send(prompt).await;
        return;
    }
    while let Ok(Some(line)) = lines.next_line().await {
        let Ok(value) = serde_json::from_str::<Value>(&line) else {
            continue;
        };
        let control = if value.get("type").and_then(Value::as_str) == Some("compact") {
            Some(Control::Compact)
        } else {
            user_text(&value).map(Control::Prompt)
        };
        if let Some(control) = control
            && control_tx.send(control).await.is_err()
        {
            return;
        }
    }
}

/// `progress: step K/N` in a handover summary means steps up to K are done.
fn resumed_step(prompt: &str) -> Option<u32> {
    let (_, rest) = prompt.rsplit_once("progress: step ")?;
    let (done, _) = rest.split_once('/')?;
    done.trim().parse().ok()
}

fn spawn_child() -> Option<u32> {
    std::process::Command::new("sleep")
        .arg("3600")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .spawn()
        .ok()
        .map(|child| child.id())
}

async fn run(args: Args) -> i32 {
    let started = Instant::now();
    if args.ignore_sigterm {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut sigterm) => {
                tokio::spawn(async move { while sigterm.recv().await.is_some() {} });
            }
            Err(err) => {
                let _ = writeln!(std::io::stderr(), "cannot ignore SIGTERM: {err}");
            }
        }
    }
    let (prompt_tx, mut prompt_rx) = mpsc::channel(1);
    let (control_tx, mut control_rx) = mpsc::channel(16);
    tokio::spawn(read_stdin(prompt_tx, control_tx));
    let prompt = prompt_rx.recv().await.unwrap_or_default();
    if let Some(path) = &args.prompt_log {
        let logged = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .and_then(|mut file| writeln!(file, "{prompt}\n----"));
        if let Err(err) = logged {
            let _ = writeln!(std::io::stderr(), "cannot log the prompt: {err}");
        }
    }

    let session_id = format!("sample-{}", std::process::id());
    let resumed_from = resumed_step(&prompt).filter(|step| *step <= args.steps);
    let mut agent = Agent {
        session_id,
        context: args.start_tokens,
        step: resumed_from.unwrap_or(0),
        processed_tokens: 0,
        output_tokens: 0,
        resumed_from,
        continuation: prompt.contains(GATES_REJECTED),
        checkpoint_failed: None,
        args,
    };
    if agent.args.protocol == Protocol::StreamJson {
        emit(&json!({
            "type": "system",
            "subtype": "init",
            "session_id": agent.session_id,
            "model": "mosaic-sample",
            "context_window": agent.args.window,
            "cwd": std::env::current_dir().map(|dir| dir.display().to_string()).unwrap_or_default()
        }));
    }
    if agent.args.spawn_child
        && let Some(pid) = spawn_child()
    {
        emit(&json!({"type": "system", "subtype": "sample_child", "pid": pid}));
    }
    let _ = writeln!(
        std::io::stderr(),
        "sample agent: prompt of {} bytes",
        prompt.len()
    );
    let first_words: String = prompt
        .lines()
        .next()
        .unwrap_or_default()
        .chars()
        .take(120)
        .collect();
    agent.report(&format!("Starting: {first_words}. {}", agent.progress()));

    let delay = Duration::from_millis(agent.args.step_delay_ms);
    let mut controls_open = true;
    while agent.step < agent.args.steps {
        tokio::select! {
            control = control_rx.recv(), if controls_open => match control {
                Some(Control::Compact) => agent.compact(),
                Some(Control::Prompt(text)) => {
                    agent.context += u64::try_from(text.len() / 4).unwrap_or(u64::MAX);
                    let progress = agent.progress();
                    agent.report(&format!("Noted the new instructions. {progress}"));
                }
                None => controls_open = false,
            },
            () = tokio::time::sleep(delay) => {
                agent.step += 1;
                if agent.args.hang_at_step != 0 && agent.step >= agent.args.hang_at_step {
                    // Silent on purpose: the coordinator's stall detection has to notice.
                    std::future::pending::<()>().await;
                }
                agent.context += agent.args.tokens_per_step;
                if agent.step == agent.args.burst_at_step {
                    agent.context += agent.args.burst_tokens;
                }
                let mut progress = agent.progress();
                if agent.args.checkpoint_at_step != 0 && agent.step == agent.args.checkpoint_at_step {
                    match checkpoint(
                        Path::new("."),
                        &agent.args.checkpoint_file,
                        &agent.session_id,
                        agent.step,
                    ) {
                        Ok(done) => progress = format!("{done} {progress}"),
                        Err(reason) => {
                            // Finishes as a failure, the reason as its result.
                            agent.checkpoint_failed = Some(reason);
                            break;
                        }
                    }
                }
                agent.report(&format!("Worked on the task. {progress}"));
            }
        }
    }
    agent.finish(started)
}

/// Runs the agent with command-line `args` (the first one is the program name) and returns
/// its exit status. Used by this crate's binary and by `mosaic-coordinator sample-agent`, so a
/// demo needs no second executable.
pub fn run_cli<I, T>(args: I) -> i32
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let args = match Args::try_parse_from(args) {
        Ok(args) => args,
        Err(err) => {
            let _ = err.print();
            return err.exit_code();
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            let _ = writeln!(std::io::stderr(), "cannot start the async runtime: {err}");
            return 2;
        }
    };
    let code = runtime.block_on(run(args));
    // Leak the runtime instead of dropping it: dropping would wait for the blocking stdin read,
    // and the caller exits right after this returns.
    std::mem::forget(runtime);
    code
}

#[cfg(test)]
mod tests {
    use super::*;

    fn git_log(dir: &Path) -> String {
        let output = std::process::Command::new("git")
            .current_dir(dir)
            .args(["log", "--format=%s"])
            .output()
            .unwrap();
        assert!(output.status.success(), "{output:?}");
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    #[test]
    fn a_checkpoint_commits_its_file_once() {
        let dir = tempfile::tempdir().unwrap();
        let init = std::process::Command::new("git")
            .current_dir(dir.path())
            .args(["init", "--quiet"])
            .status()
            .unwrap();
        assert!(init.success());
        let file = Path::new("notes/CHECKPOINT.md");

        let done = checkpoint(dir.path(), file, "sample-1", 3).unwrap();
        assert_eq!(done, "Committed notes/CHECKPOINT.md.");
        assert_eq!(
            std::fs::read_to_string(dir.path().join(file)).unwrap(),
            "Checkpoint of sample-1 at step 3.\n"
        );
        assert_eq!(git_log(dir.path()), format!("{CHECKPOINT_SUBJECT}\n"));

        // A later session that finds the file leaves it and commits nothing.
        let again = checkpoint(dir.path(), file, "sample-2", 3).unwrap();
        assert_eq!(again, "Found notes/CHECKPOINT.md already written.");
        assert!(
            std::fs::read_to_string(dir.path().join(file))
                .unwrap()
                .contains("sample-1")
        );
        assert_eq!(git_log(dir.path()), format!("{CHECKPOINT_SUBJECT}\n"));
    }

    #[test]
    fn a_checkpoint_outside_a_repository_fails() {
        let dir = tempfile::tempdir().unwrap();
        let failed = checkpoint(dir.path(), Path::new("CHECKPOINT.md"), "sample-1", 1);
        assert!(failed.is_err(), "{failed:?}");
    }

    #[test]
    fn a_flag_given_again_overrides_the_earlier_one() {
        let args = Args::try_parse_from(["sample-agent", "--steps", "2", "--steps", "3"]).unwrap();
        assert_eq!(args.steps, 3);
    }
}
