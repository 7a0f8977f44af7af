//! What a session is to the coordinator, independent of how it runs (process, API, mock).

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use mosaic_domain::{AgentProfile, IssueRef, RepoName};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::policy::{ContextUsage, PolicyError};

/// A session's identity; unique across restarts (UUID v7, so ids sort by start time).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SessionId(String);

impl SessionId {
    pub fn generate() -> Self {
        Self(uuid::Uuid::now_v7().to_string())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl From<String> for SessionId {
    fn from(value: String) -> Self {
        Self(value)
    }
}

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The work a session is started with. Issue text is untrusted data: it is only ever written to
/// the agent's stdin, never used to pick a command, an environment or a path.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionTask {
    pub issue: IssueRef,
    pub title: String,
    pub body: String,
    pub repository: RepoName,
    pub acceptance_criteria: Vec<String>,
    /// What a previous session of this issue left behind (after a rotation or a retry).
    pub handover_summary: Option<String>,
    /// The issue's git worktree, made by the coordinator; the session runs there. `None`: the
    /// runtime's own per-issue directory. A runtime refuses one outside its allowed roots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub work_dir: Option<std::path::PathBuf>,
}

impl SessionTask {
    /// The task text an agent receives. Kept here so every runtime sends the same prompt.
    pub fn prompt(&self) -> String {
        let mut prompt = format!(
            "You are working on issue {issue} in repository {repo}.\n\n# {title}\n\n{body}\n",
            issue = self.issue,
            repo = self.repository,
            title = self.title.trim(),
            body = self.body.trim(),
        );
        if !self.acceptance_criteria.is_empty() {
            prompt.push_str("\n## Acceptance criteria\n");
            for criterion in &self.acceptance_criteria {
                prompt.push_str("- ");
                prompt.push_str(criterion.trim());
                prompt.push('\n');
            }
        }
        if let Some(summary) = &self.handover_summary {
            prompt.push_str("\n## Handover from the previous session\n");
            prompt.push_str(summary.trim());
            prompt.push('\n');
        }
        prompt
    }
}

/// Why a session was ended from outside.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum KillReason {
    /// No output for the stall timeout.
    Stalled { silent_for_secs: u64 },
    /// The hard time limit per session was reached.
    TimeLimit { limit_secs: u64 },
    /// Closed on purpose (rotation, unassignment, shutdown).
    Closed { reason: String },
    /// The process died from a signal nobody here sent.
    Signal { signal: i32 },
    /// The coordinator running the session stopped, or stopped answering: not the agent's
    /// doing, so the attempt does not count and the issue runs again.
    Interrupted { reason: String },
}

impl fmt::Display for KillReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Stalled { silent_for_secs } => {
                write!(f, "stalled: no output for {silent_for_secs} s")
            }
            Self::TimeLimit { limit_secs } => write!(f, "time limit of {limit_secs} s reached"),
            Self::Closed { reason } => write!(f, "closed: {reason}"),
            Self::Signal { signal } => write!(f, "killed by signal {signal}"),
            Self::Interrupted { reason } => write!(f, "interrupted: {reason}"),
        }
    }
}

/// What a session has cost so far: the latest cumulative figures its agent reported, with the
/// four token kinds kept apart (they are priced differently). Whatever ends a session, this is
/// what it spent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct AgentSpend {
    /// Uncached input tokens.
    pub input_tokens: u64,
    pub output_tokens: u64,
    /// Input tokens read from the prompt cache.
    pub cache_read_tokens: u64,
    /// Input tokens written to the prompt cache.
    pub cache_creation_tokens: u64,
    /// US dollars; 0 for self-hosted agents whatever they report.
    pub cost_usd: f64,
}

impl AgentSpend {
    /// All four token kinds together.
    pub fn total_tokens(&self) -> u64 {
        self.input_tokens
            .saturating_add(self.output_tokens)
            .saturating_add(self.cache_read_tokens)
            .saturating_add(self.cache_creation_tokens)
    }
}

/// The agent is retrying a failed call to its model API (Claude Code's `system/api_retry`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApiRetry {
    pub attempt: u32,
    pub max_retries: Option<u32>,
    /// The HTTP status of the failed call, when reported.
    pub error_status: Option<u16>,
    pub error: Option<String>,
    pub at: DateTime<Utc>,
}

/// Where a session stands.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum SessionOutcome {
    Running,
    Succeeded {
        summary: String,
        /// Tokens the agent reports for the whole session (all kinds; the breakdown, for every
        /// outcome, is [`SessionSnapshot::spend`]).
        tokens: u64,
        /// US dollars, when the agent reports it.
        cost_usd: Option<f64>,
    },
    Failed {
        reason: String,
    },
    Killed {
        reason: KillReason,
    },
}

impl SessionOutcome {
    pub fn is_running(&self) -> bool {
        matches!(self, Self::Running)
    }
}

/// The latest state of a session, published on every change (and, for a session another
/// coordinator runs, sent through the store as JSON).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionSnapshot {
    /// The latest usage reading, if the agent has reported any.
    pub usage: Option<ContextUsage>,
    /// Counts usage readings, so a watcher can tell a new reading from an old one of equal value.
    pub usage_seq: u64,
    /// Compactions the agent confirmed.
    pub compactions: u32,
    /// The latest spend the agent reported; kept after the end, whatever the outcome.
    pub spend: AgentSpend,
    /// Set while the agent retries its model API; cleared by its next answer.
    pub api_retry: Option<ApiRetry>,
    /// Turns the agent finished (Claude Code: `result` lines) while the session stays open.
    pub turns: u32,
    /// Set when every turn sent has its result and the session stays open for more input (an
    /// agent whose stdin is kept, `finish_on_result = false`): the task's latest result. The
    /// coordinator then sends the next turn or finishes the session; sending clears it.
    pub waiting: Option<TurnResult>,
    pub outcome: SessionOutcome,
    pub last_activity: DateTime<Utc>,
}

/// What an agent answered at the end of a turn.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TurnResult {
    pub success: bool,
    /// The answer's text, or what went wrong.
    pub summary: String,
}

/// What the coordinator does with a session that waits for input after a turn.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NextTurn {
    /// Close its input: the session ends with the turn's result.
    Finish,
    /// Send this prompt as the next turn of the same session (a continuation).
    Continue(String),
}

impl SessionSnapshot {
    pub fn new(now: DateTime<Utc>) -> Self {
        Self {
            usage: None,
            usage_seq: 0,
            compactions: 0,
            spend: AgentSpend::default(),
            api_retry: None,
            turns: 0,
            waiting: None,
            outcome: SessionOutcome::Running,
            last_activity: now,
        }
    }
}

/// What went wrong talking to a live session.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SessionError {
    #[error("session {0} has already ended")]
    Ended(SessionId),
    #[error("session {session} cannot {operation}: {why}")]
    Unsupported {
        session: SessionId,
        operation: &'static str,
        why: String,
    },
    #[error("session {session}: compaction not confirmed within {waited:?}")]
    CompactionTimeout {
        session: SessionId,
        waited: Duration,
    },
    #[error("session {session}: {message}")]
    Io { session: SessionId, message: String },
    #[error(transparent)]
    Usage(#[from] PolicyError),
}

/// Why a session could not be started.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RuntimeError {
    #[error("no command configured for agent `{0}`")]
    UnknownAgent(String),
    #[error("agent `{agent}` is misconfigured: {message}")]
    Config { agent: String, message: String },
    #[error("working directory for {issue}: {message}")]
    WorkDir { issue: IssueRef, message: String },
    #[error("could not start agent `{agent}`: {message}")]
    Spawn { agent: String, message: String },
}

/// Starts sessions of configured agents.
#[cfg_attr(any(test, feature = "mock"), mockall::automock)]
#[async_trait]
pub trait AgentRuntime: Send + Sync + fmt::Debug {
    /// Starts a session of `profile` working on `task` under a new id, in a working directory
    /// the runtime derives from the task's issue under its own root (so no caller can point it
    /// elsewhere).
    async fn spawn(
        &self,
        profile: &AgentProfile,
        task: &SessionTask,
    ) -> Result<Arc<dyn AgentSession>, RuntimeError> {
        self.spawn_with_id(SessionId::generate(), profile, task)
            .await
    }

    /// [`AgentRuntime::spawn`] under a given id: a session run for another coordinator keeps
    /// the id it was requested under (its records and its processes' marker).
    async fn spawn_with_id(
        &self,
        id: SessionId,
        profile: &AgentProfile,
        task: &SessionTask,
    ) -> Result<Arc<dyn AgentSession>, RuntimeError>;

    /// Whether sessions of this profile can be asked to compact; when not, the monitor rotates
    /// where it would have compacted.
    fn can_compact(&self, profile: &AgentProfile) -> bool;
}

/// One live (or finished) agent session.
#[cfg_attr(any(test, feature = "mock"), mockall::automock)]
#[async_trait]
pub trait AgentSession: Send + Sync + fmt::Debug {
    fn id(&self) -> &SessionId;
    fn agent_type(&self) -> &str;
    fn issue(&self) -> &IssueRef;
    /// The operating-system process (group leader) behind the session, if there is one.
    fn process_id(&self) -> Option<u32>;
    /// The latest usage reading; `None` until the agent has reported one. Runtimes that can ask
    /// their agent do so here (the monitor calls it for sessions that push nothing).
    async fn usage(&self) -> Result<Option<ContextUsage>, SessionError>;
    /// Sends a further prompt to the running agent.
    async fn send(&self, prompt: &str) -> Result<(), SessionError>;
    /// Asks the agent to compact with `instructions` and returns the usage measured afterwards.
    async fn compact(&self, instructions: &str) -> Result<ContextUsage, SessionError>;
    /// Ends the session (and every process it started) and returns its final outcome.
    async fn close(&self, reason: &str) -> Result<SessionOutcome, SessionError>;
    /// Ends the session at its next turn boundary: agents that work in turns (Claude Code) get
    /// until the current turn's result, at most their configured bound, before being closed.
    /// Rotation uses this so no turn is cut in the middle. Others close at once.
    async fn close_after_turn(&self, reason: &str) -> Result<SessionOutcome, SessionError> {
        self.close(reason).await
    }
    /// Lets the session end on its own terms: no more input (stdin closed), then waits for the
    /// agent to finish its current turn and exit. For turn-based agents whose `result` ends a
    /// turn, not the session; others just wait for their end.
    async fn finish(&self) -> Result<SessionOutcome, SessionError> {
        let mut updates = self.subscribe();
        loop {
            let outcome = updates.borrow_and_update().outcome.clone();
            if !outcome.is_running() {
                return Ok(outcome);
            }
            if updates.changed().await.is_err() {
                return Ok(self.outcome());
            }
        }
    }
    fn outcome(&self) -> SessionOutcome;
    /// The latest text the agent produced that can serve as a handover summary.
    fn latest_summary(&self) -> Option<String>;
    /// Changes as they happen: usage readings, compactions, the final outcome.
    fn subscribe(&self) -> watch::Receiver<SessionSnapshot>;
}

/// Waits until `session` has ended and returns its outcome.
pub async fn wait_for_outcome(session: &dyn AgentSession) -> SessionOutcome {
    let mut updates = session.subscribe();
    loop {
        let outcome = updates.borrow_and_update().outcome.clone();
        if !outcome.is_running() {
            return outcome;
        }
        if updates.changed().await.is_err() {
            // The publisher is gone; whatever the session says now is final.
            return session.outcome();
        }
    }
}
