//! Context policy for agent sessions: how full a context window may get, what to do about it,
//! and the monitor that does it.
//!
//! - [`policy`]: usage, thresholds and the pure [`decide`] function.
//! - [`session`]: the [`AgentRuntime`]/[`AgentSession`] traits any runtime implements.
//! - [`monitor`]: the [`ContextMonitor`], which compacts and rotates sessions.
//! - [`records`]: what the monitor reports, through [`MonitorSink`] and [`HandoverSource`].
//!
//! No process code lives here; `mosaic-runner` implements the runtime with real processes.

pub mod monitor;
pub mod policy;
pub mod records;
pub mod session;

pub use monitor::{ContextMonitor, MonitorConfig, MonitorError, RetryPolicy};
pub use policy::{
    ContextThresholds, ContextUsage, DEFAULT_COMPACT_THRESHOLD, DEFAULT_ROTATE_THRESHOLD, Decision,
    PolicyError, decide,
};
pub use records::{
    COMPACTION_PROMPT, COMPACTION_PROMPT_VERSION, CompactionRecord, CompactionResult,
    HandoverError, HandoverSource, LiveSession, MonitorSink, SessionRotation, SinkError,
    UsageReading,
};
pub use session::{
    AgentRuntime, AgentSession, AgentSpend, ApiRetry, KillReason, NextTurn, RuntimeError,
    SessionError, SessionId, SessionOutcome, SessionSnapshot, SessionTask, TurnResult,
    wait_for_outcome,
};

#[cfg(any(test, feature = "mock"))]
pub use records::{MockHandoverSource, MockMonitorSink};
#[cfg(any(test, feature = "mock"))]
pub use session::{MockAgentRuntime, MockAgentSession};
