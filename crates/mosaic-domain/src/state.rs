//! The states a coordinated issue moves through (see DESIGN.md, "Issue states").

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Where a coordinated issue stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IssueState {
    Pending,
    Blocked,
    Ready,
    InProgress,
    Completed,
    Failed,
    /// The 50% rule or no capable agent.
    Rejected,
    /// Unassigned or closed before it finished.
    Cancelled,
}

impl IssueState {
    pub const ALL: [Self; 8] = [
        Self::Pending,
        Self::Blocked,
        Self::Ready,
        Self::InProgress,
        Self::Completed,
        Self::Failed,
        Self::Rejected,
        Self::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Blocked => "blocked",
            Self::Ready => "ready",
            Self::InProgress => "in_progress",
            Self::Completed => "completed",
            Self::Failed => "failed",
            Self::Rejected => "rejected",
            Self::Cancelled => "cancelled",
        }
    }

    /// States an issue leaves only through a new event (reopen, re-assign, requeue).
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            Self::Completed | Self::Failed | Self::Rejected | Self::Cancelled
        )
    }
}

/// A state name that is not one of [`IssueState::ALL`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown issue state `{0}`")]
pub struct UnknownState(pub String);

impl FromStr for IssueState {
    type Err = UnknownState;
    fn from_str(name: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|state| state.as_str() == name)
            .ok_or_else(|| UnknownState(name.to_owned()))
    }
}

impl fmt::Display for IssueState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for state in IssueState::ALL {
            assert_eq!(state.as_str().parse::<IssueState>().unwrap(), state);
            assert_eq!(
                serde_json::to_string(&state).unwrap(),
                format!("\"{}\"", state.as_str())
            );
        }
        assert!("done".parse::<IssueState>().is_err());
    }
}
