//! One agent session as a child process in its own process group.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::os::unix::process::ExitStatusExt as _;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use chrono::Utc;
use mosaic_context::{
    AgentSession, AgentSpend, ApiRetry, ContextUsage, KillReason, SessionError, SessionId,
    SessionOutcome, SessionSnapshot, TurnResult, wait_for_outcome,
};
use mosaic_domain::IssueRef;
use mosaic_security::Redactor;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use serde_json::json;
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::{OwnedMutexGuard, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::config::{AgentProtocol, InputMode};
use crate::log::SessionLog;
use crate::protocol::{AgentEvent, parse_line};

/// Longest stdout/stderr line kept; the rest of an overlong line is dropped.
const MAX_LINE_BYTES: usize = 1024 * 1024;
/// Longest handover summary kept from the agent's text.
const MAX_SUMMARY_CHARS: usize = 16 * 1024;
/// stderr lines quoted in a failure reason.
const STDERR_TAIL_LINES: usize = 5;
/// Characters of one stderr line kept for the tail (the session log keeps the whole line).
const STDERR_TAIL_LINE_CHARS: usize = 500;
/// Characters of agent text (stderr tail, error summary) a failure reason quotes: the reason
/// ends up in a Gitea comment.
const REASON_QUOTE_CHARS: usize = 1_000;
/// How long the output readers may take to drain after the process group is gone.
const READER_DRAIN: Duration = Duration::from_secs(5);

/// Everything needed to start one session process.
#[derive(Debug, Clone)]
pub struct SessionSpec {
    pub id: SessionId,
    pub agent_type: String,
    pub issue: IssueRef,
    pub program: String,
    pub args: Vec<String>,
    /// The agent's whole environment (nothing else is inherited), session variables included:
    /// see [`crate::AgentCommand::environment`].
    pub env: Vec<(OsString, OsString)>,
    pub work_dir: PathBuf,
    pub input: InputMode,
    pub protocol: AgentProtocol,
    /// `claude_code`: close stdin once every turn sent has its result.
    pub finish_on_result: bool,
    /// Costs nothing whatever the agent reports (profile `self_hosted`).
    pub self_hosted: bool,
    pub can_compact: bool,
    pub window: u64,
    pub stall_timeout: Duration,
    pub time_limit: Duration,
    pub kill_grace: Duration,
    pub compact_timeout: Duration,
    /// How long a rotation waits for the current turn's result (`claude_code`).
    pub rotate_wait: Duration,
    pub prompt: String,
}

/// What the agent said about its end.
#[derive(Debug, Clone, PartialEq)]
struct Finished {
    success: bool,
    summary: String,
    tokens: Option<u64>,
    cost_usd: Option<f64>,
}

/// State shared by the session handle, the output readers and the supervisor.
#[derive(Debug)]
struct Shared {
    id: SessionId,
    window: u64,
    /// The window the agent reported (0: none yet); wins over the profile's.
    reported_window: AtomicU64,
    protocol: AgentProtocol,
    finish_on_result: bool,
    self_hosted: bool,
    /// `claude_code`: user lines written whose turn has not ended with a `result` yet.
    pending_turns: AtomicU64,
    /// Whether the agent reported any spend (otherwise the outcome's tokens fall back), and
    /// any cost.
    spend_reported: AtomicBool,
    cost_reported: AtomicBool,
    stdin: Arc<tokio::sync::Mutex<Option<ChildStdin>>>,
    started: Instant,
    last_activity_ms: AtomicU64,
    state: watch::Sender<SessionSnapshot>,
    /// (readings taken after a compaction, the latest such reading).
    after_compaction: watch::Sender<(u64, Option<ContextUsage>)>,
    awaiting_after_compaction: AtomicBool,
    summary: Mutex<Option<String>>,
    finished: Mutex<Option<Finished>>,
    stderr_tail: Mutex<VecDeque<String>>,
    log: SessionLog,
    /// Applied to agent text before it is kept for a failure reason.
    redactor: Arc<Redactor>,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Plain data behind these locks; a panicked writer leaves nothing half-done that matters.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Shared {
    fn touch(&self) {
        let elapsed = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_activity_ms.store(elapsed, Ordering::Relaxed);
    }

    fn last_activity(&self) -> Instant {
        self.started + Duration::from_millis(self.last_activity_ms.load(Ordering::Relaxed))
    }

    fn record_usage(&self, context_tokens: u64, window: Option<u64>) {
        let reported = Some(self.reported_window.load(Ordering::Relaxed));
        let window = window
            .filter(|window| *window > 0)
            .or(reported.filter(|window| *window > 0))
            .unwrap_or(self.window);
        let Ok(usage) = ContextUsage::new(context_tokens, window) else {
            return;
        };
        self.state.send_modify(|snapshot| {
            snapshot.usage = Some(usage);
            snapshot.usage_seq += 1;
            // An answer came: whatever retrying there was is over.
            snapshot.api_retry = None;
            snapshot.last_activity = Utc::now();
        });
        if self.awaiting_after_compaction.swap(false, Ordering::SeqCst) {
            self.after_compaction.send_modify(|(count, latest)| {
                *count += 1;
                *latest = Some(usage);
            });
        }
    }

    async fn handle_stdout(&self, line: &str) {
        self.touch();
        let parsed = parse_line(line);
        if !parsed.known {
            self.log.line("stdout", line).await;
            return;
        }
        for event in parsed.events {
            match event {
                AgentEvent::Usage {
                    context_tokens,
                    window,
                } => self.record_usage(context_tokens, window),
                AgentEvent::Text(text) => {
                    let kept: String = text.chars().take(MAX_SUMMARY_CHARS).collect();
                    *lock(&self.summary) = Some(kept);
                }
                AgentEvent::Compacted {
                    before_tokens,
                    after_tokens,
                } => {
                    debug!(session = %self.id, ?before_tokens, ?after_tokens, "agent compacted");
                    self.state.send_modify(|snapshot| {
                        snapshot.compactions = snapshot.compactions.saturating_add(1);
                    });
                    // The next usage reading is the one after compaction.
                    self.awaiting_after_compaction.store(true, Ordering::SeqCst);
                    if let Some(after) = after_tokens {
                        self.record_usage(after, None);
                    }
                }
                AgentEvent::Finished {
                    success,
                    summary,
                    tokens,
                    cost_usd,
                } => {
                    // An end without words (Codex's `turn.completed`) takes the agent's latest text.
                    let summary = if summary.is_empty() {
                        lock(&self.summary).clone().unwrap_or_default()
                    } else {
                        summary
                    };
                    *lock(&self.finished) = Some(Finished {
                        success,
                        summary,
                        tokens,
                        cost_usd: cost_usd.map(|cost| if self.self_hosted { 0.0 } else { cost }),
                    });
                }
                AgentEvent::TurnEnded {
                    success,
                    summary,
                    terminal_reason,
                    local_command,
                } => self.turn_ended(success, summary, terminal_reason, local_command),
                AgentEvent::Spend {
                    input_tokens,
                    output_tokens,
                    cache_read_tokens,
                    cache_creation_tokens,
                    cost_usd,
                } => {
                    self.spend_reported.store(true, Ordering::SeqCst);
                    if cost_usd.is_some() {
                        self.cost_reported.store(true, Ordering::SeqCst);
                    }
                    self.state.send_modify(|snapshot| {
                        let cost_usd = if self.self_hosted {
                            0.0
                        } else {
                            // A report without a cost keeps the last one known.
                            cost_usd.unwrap_or(snapshot.spend.cost_usd)
                        };
                        snapshot.spend = AgentSpend {
                            input_tokens,
                            output_tokens,
                            cache_read_tokens,
                            cache_creation_tokens,
                            cost_usd,
                        };
                    });
                }
                AgentEvent::ContextWindow(window) => {
                    self.reported_window.store(window, Ordering::Relaxed);
                }
                AgentEvent::ApiRetry {
                    attempt,
                    max_retries,
                    error_status,
                    error,
                } => {
                    warn!(session = %self.id, attempt, ?max_retries, ?error_status, ?error, "agent retrying the model API");
                    self.state.send_modify(|snapshot| {
                        snapshot.api_retry = Some(ApiRetry {
                            attempt,
                            max_retries,
                            error_status,
                            error,
                            at: Utc::now(),
                        });
                    });
                }
            }
        }
    }

    /// A `result`: the turn is over. It is the session's result unless a later turn replaces it;
    /// a local command's (`/compact`) says nothing about the task and does not.
    fn turn_ended(
        &self,
        success: bool,
        summary: String,
        terminal_reason: Option<String>,
        local_command: bool,
    ) {
        {
            let mut finished = lock(&self.finished);
            if !local_command || finished.is_none() {
                let summary = match terminal_reason.as_deref() {
                    Some(reason) if !success => format!("{summary} (terminal_reason: {reason})"),
                    _ => summary,
                };
                *finished = Some(Finished {
                    success,
                    summary,
                    tokens: None,
                    cost_usd: None,
                });
            }
        }
        self.state.send_modify(|snapshot| {
            snapshot.turns = snapshot.turns.saturating_add(1);
            snapshot.api_retry = None;
        });
        if self.protocol != AgentProtocol::ClaudeCode {
            return;
        }
        let before = self
            .pending_turns
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                Some(n.saturating_sub(1))
            })
            .unwrap_or(0);
        if before <= 1 && !self.finish_on_result {
            // Kept open: the coordinator decides whether a next turn follows.
            let result = lock(&self.finished).as_ref().map(|finished| TurnResult {
                success: finished.success,
                summary: finished.summary.clone(),
            });
            if let Some(result) = result {
                debug!(session = %self.id, "every turn answered; waiting for the coordinator");
                self.state
                    .send_modify(|snapshot| snapshot.waiting = Some(result));
            }
            return;
        }
        if before <= 1 {
            debug!(session = %self.id, "every turn answered; closing stdin so the agent exits");
            // Not awaited here: the stdout reader must keep reading while the lock is taken.
            let stdin = Arc::clone(&self.stdin);
            tokio::spawn(async move {
                *stdin.lock().await = None;
            });
        }
    }

    async fn handle_stderr(&self, line: &str) {
        self.touch();
        self.log.line("stderr", line).await;
        // Redacted before it is cut, so a cut cannot leave half a secret unrecognised.
        let kept = self.redactor.for_comment(line, STDERR_TAIL_LINE_CHARS);
        let mut tail = lock(&self.stderr_tail);
        tail.push_back(kept);
        while tail.len() > STDERR_TAIL_LINES {
            tail.pop_front();
        }
    }
}

/// Reads one line of at most `max` bytes (the rest of a longer line is skipped); `None` at end.
pub async fn read_bounded_line<R: AsyncBufRead + Unpin>(
    reader: &mut R,
    max: usize,
) -> std::io::Result<Option<String>> {
    let mut line = Vec::new();
    let mut read_any = false;
    loop {
        let available = reader.fill_buf().await?;
        if available.is_empty() {
            return Ok(read_any.then(|| finish_line(&line)));
        }
        read_any = true;
        let newline = available.iter().position(|byte| *byte == b'\n');
        let chunk = newline.map_or(available, |at| &available[..at]);
        let room = max.saturating_sub(line.len());
        line.extend_from_slice(&chunk[..chunk.len().min(room)]);
        let consumed = newline.map_or(available.len(), |at| at + 1);
        reader.consume(consumed);
        if newline.is_some() {
            return Ok(Some(finish_line(&line)));
        }
    }
}

fn finish_line(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    text.strip_suffix('\r').unwrap_or(&text).to_owned()
}

fn signal_group(pgid: Option<Pid>, signal: Signal) {
    if let Some(pgid) = pgid {
        match killpg(pgid, signal) {
            // ESRCH: the group is already gone, which is what we want.
            Ok(()) | Err(nix::errno::Errno::ESRCH) => {}
            Err(err) => warn!(pgid = pgid.as_raw(), ?signal, error = %err, "killpg failed"),
        }
    }
}

/// Kills the process group if the supervisor ends without doing so (runtime shut down).
struct GroupGuard(Option<Pid>);

impl Drop for GroupGuard {
    fn drop(&mut self) {
        signal_group(self.0, Signal::SIGKILL);
    }
}

/// SIGTERM to the group, `grace`, then SIGKILL; returns the leader's exit status.
async fn terminate(
    child: &mut Child,
    pgid: Option<Pid>,
    grace: Duration,
) -> std::io::Result<ExitStatus> {
    if pgid.is_some() {
        signal_group(pgid, Signal::SIGTERM);
    } else {
        child.start_kill()?;
    }
    if let Ok(status) = tokio::time::timeout(grace, child.wait()).await {
        return status;
    }
    signal_group(pgid, Signal::SIGKILL);
    child.wait().await
}

/// The outcome from what the agent said, why it was killed, and how it exited. Agent text in a
/// failure reason (stderr tail, error summary) is redacted, stripped of control sequences and
/// bounded: the reason is posted to Gitea.
fn outcome_of(
    finished: Option<Finished>,
    killed: Option<KillReason>,
    status: &std::io::Result<ExitStatus>,
    last_usage: Option<ContextUsage>,
    spend: Option<AgentSpend>,
    cost_reported: bool,
    stderr_tail: &[String],
    redactor: &Redactor,
) -> SessionOutcome {
    let stderr = if stderr_tail.is_empty() {
        String::new()
    } else {
        format!(
            "; stderr: {}",
            redactor.for_comment(&stderr_tail.join(" | "), REASON_QUOTE_CHARS)
        )
    };
    let exit_code = status.as_ref().ok().and_then(ExitStatus::code);
    match (finished, killed) {
        (Some(done), killed) if done.success => {
            if killed.is_none() && exit_code != Some(0) {
                let how = status
                    .as_ref()
                    .map_or_else(ToString::to_string, ToString::to_string);
                return SessionOutcome::Failed {
                    reason: format!("agent reported success but then {how}{stderr}"),
                };
            }
            SessionOutcome::Succeeded {
                summary: done.summary,
                tokens: spend
                    .map(|spend| spend.total_tokens())
                    .or(done.tokens)
                    .or_else(|| last_usage.map(|usage| usage.used_tokens))
                    .unwrap_or(0),
                cost_usd: done
                    .cost_usd
                    .or(spend.filter(|_| cost_reported).map(|spend| spend.cost_usd)),
            }
        }
        (Some(done), _) => SessionOutcome::Failed {
            reason: format!(
                "agent reported an error: {}{stderr}",
                redactor.for_comment(&done.summary, REASON_QUOTE_CHARS)
            ),
        },
        (None, Some(reason)) => SessionOutcome::Killed { reason },
        (None, None) => match status {
            Ok(status) => match (status.code(), status.signal()) {
                (Some(0), _) => SessionOutcome::Failed {
                    reason: format!("exited with status 0 without reporting a result{stderr}"),
                },
                (Some(code), _) => SessionOutcome::Failed {
                    reason: format!("exited with status {code}{stderr}"),
                },
                (None, Some(signal)) => SessionOutcome::Killed {
                    reason: KillReason::Signal { signal },
                },
                (None, None) => SessionOutcome::Failed {
                    reason: format!("ended with {status}{stderr}"),
                },
            },
            Err(err) => SessionOutcome::Failed {
                reason: format!("could not wait for the process: {err}"),
            },
        },
    }
}

/// A running (or finished) agent process. Dropping the last handle ends its process group:
/// a session nobody holds can be owned by nobody (one owner per session).
#[derive(Debug)]
pub struct ProcessSession {
    id: SessionId,
    agent_type: String,
    issue: IssueRef,
    pid: Option<u32>,
    work_dir: PathBuf,
    input: InputMode,
    can_compact: bool,
    compact_timeout: Duration,
    rotate_wait: Duration,
    kill_grace: Duration,
    shared: Arc<Shared>,
    stdin: Arc<tokio::sync::Mutex<Option<ChildStdin>>>,
    kill: watch::Sender<Option<KillReason>>,
}

impl ProcessSession {
    /// Starts the process, hands it the prompt and starts watching it.
    pub async fn start(
        spec: SessionSpec,
        log: SessionLog,
        redactor: Arc<Redactor>,
    ) -> Result<Self, std::io::Error> {
        let mut command = Command::new(&spec.program);
        command
            .args(&spec.args)
            // Built, not inherited: the coordinator's own credentials stay with it.
            .env_clear()
            .envs(spec.env.iter().map(|(key, value)| (key, value)))
            .current_dir(&spec.work_dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Its own process group, so the whole tree can be signalled at once.
            .process_group(0)
            .kill_on_drop(true);
        let mut child = command.spawn()?;
        let pid = child.id();
        let pgid = pid
            .and_then(|pid| i32::try_from(pid).ok())
            .map(Pid::from_raw);
        let stdout = child.stdout.take();
        let stderr = child.stderr.take();
        let stdin = Arc::new(tokio::sync::Mutex::new(child.stdin.take()));

        let now = Utc::now();
        let (state, _) = watch::channel(SessionSnapshot::new(now));
        let (after_compaction, _) = watch::channel((0, None));
        let shared = Arc::new(Shared {
            id: spec.id.clone(),
            window: spec.window,
            reported_window: AtomicU64::new(0),
            protocol: spec.protocol,
            finish_on_result: spec.finish_on_result,
            self_hosted: spec.self_hosted,
            // The prompt is the first turn.
            pending_turns: AtomicU64::new(1),
            spend_reported: AtomicBool::new(false),
            cost_reported: AtomicBool::new(false),
            stdin: Arc::clone(&stdin),
            started: Instant::now(),
            last_activity_ms: AtomicU64::new(0),
            state,
            after_compaction,
            awaiting_after_compaction: AtomicBool::new(false),
            summary: Mutex::new(None),
            finished: Mutex::new(None),
            stderr_tail: Mutex::new(VecDeque::new()),
            log,
            redactor,
        });
        info!(session = %spec.id, agent = %spec.agent_type, issue = %spec.issue, pid, dir = %spec.work_dir.display(), "agent process started");

        // The prompt goes in the background: a child that reads slowly must not block the caller.
        let prompt_guard = Arc::clone(&stdin).lock_owned().await;
        tokio::spawn(write_prompt(
            prompt_guard,
            spec.input,
            spec.prompt.clone(),
            spec.id.clone(),
        ));

        let mut readers = Vec::new();
        if let Some(stdout) = stdout {
            let shared = Arc::clone(&shared);
            readers.push(tokio::spawn(async move {
                let mut reader = BufReader::new(stdout);
                while let Ok(Some(line)) = read_bounded_line(&mut reader, MAX_LINE_BYTES).await {
                    shared.handle_stdout(&line).await;
                }
            }));
        }
        if let Some(stderr) = stderr {
            let shared = Arc::clone(&shared);
            readers.push(tokio::spawn(async move {
                let mut reader = BufReader::new(stderr);
                while let Ok(Some(line)) = read_bounded_line(&mut reader, MAX_LINE_BYTES).await {
                    shared.handle_stderr(&line).await;
                }
            }));
        }

        let (kill, kill_requests) = watch::channel(None);
        tokio::spawn(supervise(
            child,
            pgid,
            Arc::clone(&shared),
            kill_requests,
            readers,
            Limits {
                stall: spec.stall_timeout,
                time: spec.time_limit,
                grace: spec.kill_grace,
            },
        ));

        Ok(Self {
            id: spec.id,
            agent_type: spec.agent_type,
            issue: spec.issue,
            pid,
            work_dir: spec.work_dir,
            input: spec.input,
            can_compact: spec.can_compact,
            compact_timeout: spec.compact_timeout,
            rotate_wait: spec.rotate_wait,
            kill_grace: spec.kill_grace,
            shared,
            stdin,
            kill,
        })
    }

    pub fn work_dir(&self) -> &Path {
        &self.work_dir
    }

    pub fn log_path(&self) -> &Path {
        self.shared.log.path()
    }

    async fn write_line(&self, line: &serde_json::Value) -> Result<(), SessionError> {
        let mut stdin = self.stdin.lock().await;
        let Some(pipe) = stdin.as_mut() else {
            return Err(SessionError::Ended(self.id.clone()));
        };
        let text = format!("{line}\n");
        let written = async {
            pipe.write_all(text.as_bytes()).await?;
            pipe.flush().await
        }
        .await;
        written.map_err(|err| SessionError::Io {
            session: self.id.clone(),
            message: format!("writing to the agent's stdin: {err}"),
        })
    }

    /// A user line that starts a turn; counted so the turn's `result` can be waited for.
    async fn write_turn(&self, content: &str) -> Result<(), SessionError> {
        self.shared.pending_turns.fetch_add(1, Ordering::SeqCst);
        self.shared
            .state
            .send_modify(|snapshot| snapshot.waiting = None);
        let written = self
            .write_line(&json!({"type": "user", "message": {"role": "user", "content": content}}))
            .await;
        if written.is_err() {
            self.shared
                .pending_turns
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                    Some(n.saturating_sub(1))
                })
                .ok();
        }
        written
    }

    /// No more input: the agent finishes what it was given and exits.
    async fn close_stdin(&self) {
        *self.stdin.lock().await = None;
    }

    /// Waits until every turn sent has its `result` or the session ended, at most `limit`;
    /// whether that happened.
    async fn wait_for_turn_end(&self, limit: Duration) -> bool {
        let mut state = self.shared.state.subscribe();
        let ended = async {
            loop {
                if self.shared.pending_turns.load(Ordering::SeqCst) == 0
                    || !state.borrow_and_update().outcome.is_running()
                {
                    return;
                }
                if state.changed().await.is_err() {
                    return;
                }
            }
        };
        tokio::time::timeout(limit, ended).await.is_ok()
    }

    fn unsupported(&self, operation: &'static str, why: &str) -> SessionError {
        SessionError::Unsupported {
            session: self.id.clone(),
            operation,
            why: why.to_owned(),
        }
    }
}

async fn write_prompt(
    mut stdin: OwnedMutexGuard<Option<ChildStdin>>,
    input: InputMode,
    prompt: String,
    id: SessionId,
) {
    let Some(pipe) = stdin.as_mut() else {
        return;
    };
    let bytes = match input {
        InputMode::Text => prompt.into_bytes(),
        InputMode::JsonLines => {
            let line = json!({"type": "user", "message": {"role": "user", "content": prompt}});
            format!("{line}\n").into_bytes()
        }
    };
    let written = async {
        pipe.write_all(&bytes).await?;
        pipe.flush().await
    }
    .await;
    if let Err(err) = written {
        // The outcome (exit status, stderr) will say why the agent stopped reading.
        warn!(session = %id, error = %err, "could not write the prompt to the agent");
        *stdin = None;
        return;
    }
    if input == InputMode::Text {
        // End of input is how a text-mode agent knows the prompt is complete.
        *stdin = None;
    }
}

#[derive(Debug, Clone, Copy)]
struct Limits {
    stall: Duration,
    time: Duration,
    grace: Duration,
}

async fn supervise(
    mut child: Child,
    pgid: Option<Pid>,
    shared: Arc<Shared>,
    mut kill_requests: watch::Receiver<Option<KillReason>>,
    readers: Vec<JoinHandle<()>>,
    limits: Limits,
) {
    let _guard = GroupGuard(pgid);
    let time_limit_at = shared.started + limits.time;
    let mut killed = None;
    let status = loop {
        let stall_at = shared.last_activity() + limits.stall;
        tokio::select! {
            status = child.wait() => break status,
            changed = kill_requests.changed() => {
                let reason = match changed {
                    Ok(()) => kill_requests.borrow_and_update().clone(),
                    // The session handle is gone: nobody can own this process any more.
                    Err(_) => Some(KillReason::Closed { reason: "session handle dropped".to_owned() }),
                };
                if let Some(reason) = reason {
                    killed = Some(reason);
                    break terminate(&mut child, pgid, limits.grace).await;
                }
            }
            () = tokio::time::sleep_until(stall_at) => {
                let silent_for = shared.last_activity().elapsed();
                if silent_for >= limits.stall {
                    warn!(session = %shared.id, ?silent_for, "agent stalled; killing its process group");
                    killed = Some(KillReason::Stalled { silent_for_secs: silent_for.as_secs() });
                    break terminate(&mut child, pgid, limits.grace).await;
                }
            }
            () = tokio::time::sleep_until(time_limit_at) => {
                warn!(session = %shared.id, limit = ?limits.time, "agent hit its time limit; killing its process group");
                killed = Some(KillReason::TimeLimit { limit_secs: limits.time.as_secs() });
                break terminate(&mut child, pgid, limits.grace).await;
            }
        }
    };
    // The leader is gone; whatever it left behind in its group goes too, which also closes the
    // pipes so the readers see end of output. Descendants that left the group (`setsid`) still
    // carry the session marker in their environment and are ended by it.
    signal_group(pgid, Signal::SIGKILL);
    let session_id = shared.id.to_string();
    let escaped = tokio::task::spawn_blocking(move || {
        crate::orphans::kill_marked(std::path::Path::new("/proc"), &session_id)
    })
    .await
    .unwrap_or_default();
    if escaped > 0 {
        warn!(session = %shared.id, processes = escaped, "ended processes of the session that had left its process group");
    }
    for reader in readers {
        let abort = reader.abort_handle();
        if tokio::time::timeout(READER_DRAIN, reader).await.is_err() {
            abort.abort();
        }
    }
    shared.log.flush().await;

    let finished = lock(&shared.finished).clone();
    let tail: Vec<String> = lock(&shared.stderr_tail).iter().cloned().collect();
    let (last_usage, spend) = {
        let snapshot = shared.state.borrow();
        (snapshot.usage, snapshot.spend)
    };
    let spend = shared
        .spend_reported
        .load(Ordering::SeqCst)
        .then_some(spend);
    let outcome = outcome_of(
        finished,
        killed,
        &status,
        last_usage,
        spend,
        shared.cost_reported.load(Ordering::SeqCst),
        &tail,
        &shared.redactor,
    );
    info!(session = %shared.id, ?outcome, "agent process ended");
    shared.state.send_modify(|snapshot| {
        snapshot.outcome = outcome;
        snapshot.last_activity = Utc::now();
    });
}

#[async_trait]
impl AgentSession for ProcessSession {
    fn id(&self) -> &SessionId {
        &self.id
    }

    fn agent_type(&self) -> &str {
        &self.agent_type
    }

    fn issue(&self) -> &IssueRef {
        &self.issue
    }

    fn process_id(&self) -> Option<u32> {
        self.pid
    }

    async fn usage(&self) -> Result<Option<ContextUsage>, SessionError> {
        // Process agents push their usage; the latest reading is all there is to ask for.
        Ok(self.shared.state.borrow().usage)
    }

    async fn send(&self, prompt: &str) -> Result<(), SessionError> {
        if self.input != InputMode::JsonLines {
            return Err(
                self.unsupported("send", "its stdin closes after the prompt (input = text)")
            );
        }
        if !self.outcome().is_running() {
            return Err(SessionError::Ended(self.id.clone()));
        }
        self.write_turn(prompt).await
    }

    async fn compact(&self, instructions: &str) -> Result<ContextUsage, SessionError> {
        if !self.can_compact || self.input != InputMode::JsonLines {
            return Err(self.unsupported(
                "compact",
                "its agent profile does not take compaction requests (can_compact)",
            ));
        }
        let mut readings = self.shared.after_compaction.subscribe();
        let mut state = self.shared.state.subscribe();
        let seen = readings.borrow_and_update().0;
        if !state.borrow_and_update().outcome.is_running() {
            return Err(SessionError::Ended(self.id.clone()));
        }
        match self.shared.protocol {
            AgentProtocol::JsonLines => {
                self.write_line(&json!({"type": "compact", "instructions": instructions}))
                    .await?;
            }
            // Claude Code's own command, honoured also with automatic compaction disabled; it
            // is a turn of its own, ending with a `result` (measured with 2.1.328).
            AgentProtocol::ClaudeCode => {
                self.write_turn(&format!("/compact {instructions}")).await?;
            }
        }
        let confirmed = async {
            loop {
                if let (count, Some(usage)) = *readings.borrow_and_update()
                    && count > seen
                {
                    return Ok(usage);
                }
                if !state.borrow_and_update().outcome.is_running() {
                    return Err(SessionError::Ended(self.id.clone()));
                }
                tokio::select! {
                    changed = readings.changed() => if changed.is_err() { return Err(SessionError::Ended(self.id.clone())) },
                    changed = state.changed() => if changed.is_err() { return Err(SessionError::Ended(self.id.clone())) },
                }
            }
        };
        tokio::time::timeout(self.compact_timeout, confirmed)
            .await
            .map_err(|_| SessionError::CompactionTimeout {
                session: self.id.clone(),
                waited: self.compact_timeout,
            })?
    }

    async fn close(&self, reason: &str) -> Result<SessionOutcome, SessionError> {
        self.kill.send_if_modified(|current| {
            // A kill already under way (stall, time limit) keeps its reason.
            if current.is_none() {
                *current = Some(KillReason::Closed {
                    reason: reason.to_owned(),
                });
                true
            } else {
                false
            }
        });
        Ok(wait_for_outcome(self).await)
    }

    async fn close_after_turn(&self, reason: &str) -> Result<SessionOutcome, SessionError> {
        if self.shared.protocol == AgentProtocol::ClaudeCode && self.outcome().is_running() {
            if self.wait_for_turn_end(self.rotate_wait).await {
                // At a turn boundary the CLI exits cleanly once its input ends.
                self.close_stdin().await;
                let mut state = self.shared.state.subscribe();
                let exited = async {
                    while state.borrow_and_update().outcome.is_running() {
                        if state.changed().await.is_err() {
                            return;
                        }
                    }
                };
                if tokio::time::timeout(self.kill_grace, exited).await.is_ok() {
                    return Ok(self.outcome());
                }
            } else {
                warn!(session = %self.id, waited = ?self.rotate_wait, "turn did not end in time; closing the session mid-turn");
            }
        }
        self.close(reason).await
    }

    async fn finish(&self) -> Result<SessionOutcome, SessionError> {
        self.close_stdin().await;
        Ok(wait_for_outcome(self).await)
    }

    fn outcome(&self) -> SessionOutcome {
        self.shared.state.borrow().outcome.clone()
    }

    fn latest_summary(&self) -> Option<String> {
        lock(&self.shared.summary).clone()
    }

    fn subscribe(&self) -> watch::Receiver<SessionSnapshot> {
        self.shared.state.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exited(code: i32) -> std::io::Result<ExitStatus> {
        Ok(ExitStatus::from_raw(code << 8))
    }

    fn signalled(signal: i32) -> std::io::Result<ExitStatus> {
        Ok(ExitStatus::from_raw(signal))
    }

    fn done(success: bool) -> Option<Finished> {
        Some(Finished {
            success,
            summary: "the summary".to_owned(),
            tokens: None,
            cost_usd: Some(0.25),
        })
    }

    #[test]
    fn maps_exits_to_outcomes() {
        let usage = ContextUsage::new(1234, 10_000).ok();
        let check = |finished: Option<Finished>,
                     killed: Option<KillReason>,
                     status: std::io::Result<ExitStatus>,
                     expect: &str| {
            let outcome = outcome_of(
                finished,
                killed,
                &status,
                usage,
                None,
                false,
                &["boom".to_owned()],
                &Redactor::default(),
            );
            let text = format!("{outcome:?}");
            assert!(text.contains(expect), "{text} should contain {expect}");
        };
        let stalled = || {
            Some(KillReason::Stalled {
                silent_for_secs: 300,
            })
        };
        check(
            done(true),
            None,
            exited(0),
            "Succeeded { summary: \"the summary\", tokens: 1234, cost_usd: Some(0.25) }",
        );
        check(
            done(true),
            None,
            exited(3),
            "agent reported success but then exit status: 3",
        );
        check(done(true), stalled(), signalled(9), "Succeeded");
        check(
            done(false),
            None,
            exited(1),
            "agent reported an error: the summary; stderr: boom",
        );
        check(
            None,
            stalled(),
            signalled(15),
            "Stalled { silent_for_secs: 300 }",
        );
        check(
            None,
            None,
            exited(0),
            "exited with status 0 without reporting a result",
        );
        check(None, None, exited(2), "exited with status 2; stderr: boom");
        check(None, None, signalled(9), "Signal { signal: 9 }");
        check(
            None,
            None,
            Err(std::io::Error::other("gone")),
            "could not wait for the process: gone",
        );
    }

    #[test]
    fn failure_reasons_quote_agent_text_redacted_and_bounded() {
        let secrets = [
            mosaic_security::Secret::new("whsec-0123456789"),
            mosaic_security::Secret::new("gitea-bot-token-abcdef"),
        ];
        let redactor = Redactor::new(&secrets);
        let tail = [
            "\u{1b}[31mfatal\u{1b}[0m: push with gitea-bot-token-abcdef failed".to_owned(),
            "signing with whsec-0123456789 \u{1b}]0;pwned\u{7}".to_owned(),
            "x".repeat(5_000),
        ];
        let outcome = outcome_of(None, None, &exited(2), None, None, false, &tail, &redactor);
        let SessionOutcome::Failed { reason } = outcome else {
            panic!("{outcome:?}");
        };
        assert!(reason.starts_with("exited with status 2; stderr: fatal: push with [redacted] failed | signing with [redacted]"), "{reason}");
        assert!(
            !reason.contains('\u{1b}') && !reason.contains('\u{7}'),
            "{reason:?}"
        );
        assert!(!reason.contains("pwned"), "{reason}");
        assert!(
            reason.chars().count() <= REASON_QUOTE_CHARS + 40,
            "{}",
            reason.len()
        );

        let failed = Some(Finished {
            success: false,
            summary: "could not use whsec-0123456789".to_owned(),
            tokens: None,
            cost_usd: None,
        });
        let outcome = outcome_of(failed, None, &exited(1), None, None, false, &[], &redactor);
        assert_eq!(
            outcome,
            SessionOutcome::Failed {
                reason: "agent reported an error: could not use [redacted]".to_owned()
            }
        );
    }

    #[tokio::test]
    async fn reads_bounded_lines() {
        let input: &[u8] = b"short\r\nthis line is long\nlast";
        let mut reader = BufReader::with_capacity(4, input);
        let mut lines = Vec::new();
        while let Some(line) = read_bounded_line(&mut reader, 8).await.unwrap() {
            lines.push(line);
        }
        assert_eq!(lines, ["short", "this lin", "last"]);
    }
}
