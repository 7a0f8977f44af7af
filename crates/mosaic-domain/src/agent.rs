//! Agent profiles: what each kind of agent can take on and what it costs.

use serde::{Deserialize, Serialize};

use crate::metadata::Difficulty;

/// One kind of agent the coordinator may assign work to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentProfile {
    /// Unique name, e.g. `sonnet`; what issues and labels refer to.
    pub name: String,
    /// Context window in tokens; > 0.
    pub context_window: u64,
    /// US dollars per million input tokens; >= 0.
    pub cost_input_per_mtok: f64,
    /// US dollars per million output tokens; >= 0.
    pub cost_output_per_mtok: f64,
    /// The hardest issues this agent handles.
    pub max_difficulty: Difficulty,
    /// Runs on our own hardware (preferred when costs tie).
    pub self_hosted: bool,
    pub enabled: bool,
    /// Fraction of the window at which a session is compacted; the global default when `None`.
    pub compact_threshold: Option<f64>,
    /// Fraction of the window at which a session is rotated; the global default when `None`.
    pub rotate_threshold: Option<f64>,
}
