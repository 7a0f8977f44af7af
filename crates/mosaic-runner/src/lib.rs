//! The process runtime: agent CLIs (Claude Code, the sample agent, anything speaking the generic
//! JSON-lines protocol) as child processes, each session in its own process group.
//!
//! - [`ProcessRuntime`] implements `mosaic_context::AgentRuntime` from a [`RunnerConfig`].
//! - [`ProcessSession`] implements `AgentSession`: prompt on stdin, usage from stdout, stderr
//!   and unknown stdout in a size-bounded log, stall and time limits, and an end that takes
//!   the whole process group with it.
//! - [`protocol`] reads stdout lines; [`workdir`] keeps working directories inside their root.

pub mod config;
pub mod log;
pub mod orphans;
pub mod process;
pub mod protocol;
pub mod retention;
pub mod runtime;
pub mod workdir;

pub use config::{
    AgentCommand, AgentProtocol, BASE_ENV, CLAUDE_CODE_ENV, CoordinatorSecret, InputMode,
    RunnerConfig, RunnerConfigError, SessionVariables,
};
pub use process::ProcessSession;
pub use protocol::{AgentEvent, ParsedLine, parse_line};
pub use runtime::ProcessRuntime;
pub use workdir::WorkDirError;
