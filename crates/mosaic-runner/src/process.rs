//! One agent session as a child process in its own process group.

use std::collections::VecDeque;
use std::os::unix::process::ExitStatusExt as _;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use chrono::Utc;
use mosaic_context::{
    AgentSession, ContextUsage, KillReason, SessionError, SessionId, SessionOutcome,
    SessionSnapshot, wait_for_outcome,
};
use mosaic_domain::IssueRef;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use serde_json::json;
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::{OwnedMutexGuard, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::config::InputMode;
use crate::log::SessionLog;
use crate::protocol::{AgentEvent, parse_line};

/// Longest stdout/stderr line kept; the rest of an overlong line is dropped.
const MAX_LINE_BYTES: usize = 1024 * 1024;
/// Longest handover summary kept from the agent's text.
const MAX_SUMMARY_CHARS: usize = 16 * 1024;
/// stderr lines quoted in a failure reason.
const STDERR_TAIL_LINES: usize = 5;
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
    pub env: Vec<(String, String)>,
    pub work_dir: PathBuf,
    pub input: InputMode,
    pub can_compact: bool,
    pub window: u64,
    pub stall_timeout: Duration,
    pub time_limit: Duration,
    pub kill_grace: Duration,
    pub compact_timeout: Duration,
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
        let window = window.filter(|window| *window > 0).unwrap_or(self.window);
        let Ok(usage) = ContextUsage::new(context_tokens, window) else {
            return;
        };
        self.state.send_modify(|snapshot| {
            snapshot.usage = Some(usage);
            snapshot.usage_seq += 1;
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
                    *lock(&self.finished) = Some(Finished {
                        success,
                        summary,
                        tokens,
                        cost_usd,
                    });
                }
            }
        }
    }

    async fn handle_stderr(&self, line: &str) {
        self.touch();
        self.log.line("stderr", line).await;
        let mut tail = lock(&self.stderr_tail);
        tail.push_back(line.chars().take(500).collect());
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

/// The outcome from what the agent said, why it was killed, and how it exited.
fn outcome_of(
    finished: Option<Finished>,
    killed: Option<KillReason>,
    status: &std::io::Result<ExitStatus>,
    last_usage: Option<ContextUsage>,
    stderr_tail: &[String],
) -> SessionOutcome {
    let stderr = if stderr_tail.is_empty() {
        String::new()
    } else {
        format!("; stderr: {}", stderr_tail.join(" | "))
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
                tokens: done
                    .tokens
                    .or_else(|| last_usage.map(|usage| usage.used_tokens))
                    .unwrap_or(0),
                cost_usd: done.cost_usd,
            }
        }
        (Some(done), _) => SessionOutcome::Failed {
            reason: format!("agent reported an error: {}{stderr}", done.summary),
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
    shared: Arc<Shared>,
    stdin: Arc<tokio::sync::Mutex<Option<ChildStdin>>>,
    kill: watch::Sender<Option<KillReason>>,
}

impl ProcessSession {
    /// Starts the process, hands it the prompt and starts watching it.
    pub async fn start(spec: SessionSpec, log: SessionLog) -> Result<Self, std::io::Error> {
        let mut command = Command::new(&spec.program);
        command
            .args(&spec.args)
            .envs(spec.env.iter().map(|(key, value)| (key, value)))
            .env("MOSAIC_SESSION_ID", spec.id.as_str())
            .env("MOSAIC_ISSUE", spec.issue.to_string())
            .env("MOSAIC_AGENT", &spec.agent_type)
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
            started: Instant::now(),
            last_activity_ms: AtomicU64::new(0),
            state,
            after_compaction,
            awaiting_after_compaction: AtomicBool::new(false),
            summary: Mutex::new(None),
            finished: Mutex::new(None),
            stderr_tail: Mutex::new(VecDeque::new()),
            log,
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
    // pipes so the readers see end of output.
    signal_group(pgid, Signal::SIGKILL);
    for reader in readers {
        let abort = reader.abort_handle();
        if tokio::time::timeout(READER_DRAIN, reader).await.is_err() {
            abort.abort();
        }
    }
    shared.log.flush().await;

    let finished = lock(&shared.finished).clone();
    let tail: Vec<String> = lock(&shared.stderr_tail).iter().cloned().collect();
    let last_usage = shared.state.borrow().usage;
    let outcome = outcome_of(finished, killed, &status, last_usage, &tail);
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
        self.write_line(&json!({"type": "user", "message": {"role": "user", "content": prompt}}))
            .await
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
        self.write_line(&json!({"type": "compact", "instructions": instructions}))
            .await?;
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
            let outcome = outcome_of(finished, killed, &status, usage, &["boom".to_owned()]);
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
