//! What the monitor reports, and the two traits through which the engine receives it.

use std::fmt;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use mosaic_domain::IssueRef;
use serde::{Deserialize, Serialize};

use crate::policy::ContextUsage;
use crate::session::{AgentSpend, SessionId, SessionOutcome, SessionTask};

/// Version of [`COMPACTION_PROMPT`]; stored with every compaction so results stay comparable.
pub const COMPACTION_PROMPT_VERSION: u32 = 1;

/// The one place the compaction request is worded.
pub const COMPACTION_PROMPT: &str = "Compact your context now. Replace the conversation so far \
with a concise summary that keeps: (1) the work completed, with the files and commands involved; \
(2) the decisions made and why; (3) the open problems and anything that failed; (4) the next \
steps, in order. Drop tool output and exploration that no longer matters. Then continue the task.";

/// What one compaction achieved.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct CompactionResult {
    pub before_tokens: u64,
    pub after_tokens: u64,
    pub freed_tokens: u64,
    /// Freed tokens as a percentage of the tokens before.
    pub freed_percent: f64,
    /// The compaction was confirmed and left usage below the compact threshold.
    pub success: bool,
}

impl CompactionResult {
    pub fn measured(before_tokens: u64, after_tokens: u64, success: bool) -> Self {
        let freed_tokens = before_tokens.saturating_sub(after_tokens);
        #[allow(clippy::cast_precision_loss)] // token counts stay far below 2^52
        let freed_percent = if before_tokens == 0 {
            0.0
        } else {
            freed_tokens as f64 / before_tokens as f64 * 100.0
        };
        Self {
            before_tokens,
            after_tokens,
            freed_tokens,
            freed_percent,
            success,
        }
    }
}

/// A compaction as stored and logged.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CompactionRecord {
    pub session_id: SessionId,
    pub agent_type: String,
    pub issue: IssueRef,
    pub prompt_version: u32,
    pub result: CompactionResult,
    /// Why the compaction failed, when it did not even produce a measurement.
    pub error_message: Option<String>,
    pub at: DateTime<Utc>,
}

/// One rotation attempt: the old session closed, a new one (maybe) started.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionRotation {
    pub old_session_id: SessionId,
    /// `None` when the spawn failed or nothing was left to hand over.
    pub new_session_id: Option<SessionId>,
    pub agent_type: String,
    /// The issue the old session was working on.
    pub issue: IssueRef,
    /// The issue handed to the new session (the unfinished one or the next queued one).
    pub next_issue: Option<IssueRef>,
    pub context_before_tokens: u64,
    pub context_before_percent: f64,
    /// What the old session spent, read after it was closed.
    #[serde(default)]
    pub old_spend: AgentSpend,
    pub success: bool,
    pub error_message: Option<String>,
    /// 1 for the first spawn attempt of this rotation, 2 for the first retry, ...
    pub attempt: u32,
    pub at: DateTime<Utc>,
}

/// A watched session as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LiveSession {
    pub session_id: SessionId,
    pub agent_type: String,
    pub issue: IssueRef,
    pub process_id: Option<u32>,
    pub started_at: DateTime<Utc>,
    pub usage: Option<ContextUsage>,
    pub compactions: u32,
    pub rotations: u32,
    /// The latest spend the session's agent reported.
    #[serde(default)]
    pub spend: AgentSpend,
    /// The agent is retrying its model API ("retrying the model API").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_retry: Option<crate::session::ApiRetry>,
}

/// One usage reading in a session's (bounded) history.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct UsageReading {
    pub usage: ContextUsage,
    pub at: DateTime<Utc>,
}

/// A receiver that could not take a record; the monitor retries and then logs it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct SinkError(pub String);

/// Where the monitor's records go (the engine persists them).
#[cfg_attr(any(test, feature = "mock"), mockall::automock)]
#[async_trait]
pub trait MonitorSink: Send + Sync + fmt::Debug {
    async fn on_usage(&self, session: &LiveSession, usage: &ContextUsage) -> Result<(), SinkError>;
    async fn on_compaction(&self, record: &CompactionRecord) -> Result<(), SinkError>;
    async fn on_rotation(&self, record: &SessionRotation) -> Result<(), SinkError>;
    /// A session ended on its own or was closed through the monitor; sessions closed by a
    /// rotation are reported by [`MonitorSink::on_rotation`] instead.
    async fn on_outcome(
        &self,
        session: &LiveSession,
        outcome: &SessionOutcome,
    ) -> Result<(), SinkError>;

    /// A session that keeps its input open answered every turn it was sent and waits: finish
    /// it, or send it the next turn (the quality gates' continuation). By default it finishes.
    async fn on_waiting(
        &self,
        _session: &LiveSession,
        _result: &crate::session::TurnResult,
    ) -> Result<crate::session::NextTurn, SinkError> {
        Ok(crate::session::NextTurn::Finish)
    }
}

/// The engine's failure to answer a handover question.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct HandoverError(pub String);

/// The engine's queue, as far as a rotation needs it.
#[cfg_attr(any(test, feature = "mock"), mockall::automock)]
#[async_trait]
pub trait HandoverSource: Send + Sync + fmt::Debug {
    /// The task a fresh session of `agent_type` takes over. `unfinished` is the rotated session's
    /// task with its latest summary attached: return it while the issue is still open, the next
    /// queued issue for this agent when it is done, or `None` when there is nothing to do.
    async fn next_issue_for(
        &self,
        agent_type: &str,
        unfinished: &SessionTask,
    ) -> Result<Option<SessionTask>, HandoverError>;

    /// A task whose session could not be started goes back to the queue; never lost.
    async fn requeue(&self, task: &SessionTask, reason: &str) -> Result<(), HandoverError>;
}
