//! What the coordinator knows about one issue before it runs: size, difficulty,
//! recommended agent and dependencies.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::issue::IssueRef;

/// How hard an issue is; agents handle everything up to their own level.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Difficulty {
    Low,
    Medium,
    High,
}

/// A difficulty word that is not one of easy/low, medium, hard/high.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("difficulty `{0}` is not one of easy, low, medium, hard, high")]
pub struct UnknownDifficulty(pub String);

impl FromStr for Difficulty {
    type Err = UnknownDifficulty;

    fn from_str(word: &str) -> Result<Self, Self::Err> {
        match word.trim().to_ascii_lowercase().as_str() {
            "easy" | "low" => Ok(Self::Low),
            "medium" | "moderate" => Ok(Self::Medium),
            "hard" | "high" => Ok(Self::High),
            _ => Err(UnknownDifficulty(word.to_owned())),
        }
    }
}

impl Difficulty {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Low => "low",
            Self::Medium => "medium",
            Self::High => "high",
        }
    }
}

impl fmt::Display for Difficulty {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where a piece of metadata came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MetadataSource {
    /// Read from the issue template (or labels) without a model.
    Template,
    /// Extracted by an LLM and validated.
    Llm,
    /// The LLM failed; the template parser's result was used instead.
    Fallback,
    /// Nothing usable was found; configured defaults were used.
    Default,
}

impl MetadataSource {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Template => "template",
            Self::Llm => "llm",
            Self::Fallback => "fallback",
            Self::Default => "default",
        }
    }
}

/// Validated metadata of one issue.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IssueMetadata {
    /// Estimated context the work needs, in tokens; always > 0.
    pub estimated_context: u64,
    pub difficulty: Difficulty,
    /// An agent the issue recommends; only ever a configured agent's name once validated.
    pub recommended_agent: Option<String>,
    /// Issues this one blocks.
    pub blocks: Vec<IssueRef>,
    /// Issues that must be closed before this one can run.
    pub blocked_by: Vec<IssueRef>,
    pub source: MetadataSource,
    /// 0.0 ..= 1.0: how sure the source is.
    pub confidence: f32,
}
