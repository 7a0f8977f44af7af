//! Quality gates: checks the operator configures (build, lint, tests, coverage) that run in an
//! agent's worktree after it says it is done and before anything is published.
//!
//! - [`GatesConfig`]: the operator's `[[gates]]` and settings; [`GatesConfig::effective_gates`]
//!   adds a repository's own `.mosaic/gates.toml` (as read from its base branch) when trusted.
//! - [`run_gates`]: each gate in its own process group with its time limit, output bounded and
//!   redacted.
//! - [`continuation_prompt`]: what the agent reads when required gates failed.
//! - [`report_markdown`]: the table for the status comment and the pull request body.
//!
//! docs/GATES.md describes configuration and behaviour for operators.

mod config;
mod prompt;
mod report;
mod run;

pub use config::{
    DEFAULT_MIN_PERCENT, DEFAULT_OUTPUT_TAIL_BYTES, DEFAULT_TIMEOUT_SECS, EffectiveGates, Gate,
    GatesConfig, GatesConfigError, MAX_REPOSITORY_GATES, MAX_TIMEOUT_SECS, OUTPUT_TAIL_BYTES_RANGE,
    OnGateFailure, REPOSITORY_FILE, RepositoryFileUse,
};
pub use prompt::{CONTINUATION_PROMPT_VERSION, continuation_prompt};
pub use report::report_markdown;
pub use run::{GateOutcome, GateResult, all_required_passed, run_gates};
