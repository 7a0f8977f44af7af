//! The states a coordinated issue moves through (see docs/DESIGN.md, "Issue states").

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
    /// The agent succeeded but left the branch without a commit the base lacks: nothing to
    /// review, so no pull request and not done.
    NoChanges,
    Failed,
    /// The 50% rule or no capable agent.
    Rejected,
    /// Unassigned or closed before it finished.
    Cancelled,
}

impl IssueState {
    pub const ALL: [Self; 9] = [
        Self::Pending,
        Self::Blocked,
        Self::Ready,
        Self::InProgress,
        Self::Completed,
        Self::NoChanges,
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
            Self::NoChanges => "no_changes",
            Self::Failed => "failed",
            Self::Rejected => "rejected",
            Self::Cancelled => "cancelled",
        }
    }

    /// States an issue leaves only through a new event (reopen, re-assign, requeue).
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            Self::Completed | Self::NoChanges | Self::Failed | Self::Rejected | Self::Cancelled
        )
    }
}

/// A move between states that the state diagram does not allow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("invalid transition from {from} to {to}")]
pub struct InvalidTransition {
    pub from: IssueState,
    pub to: IssueState,
}

impl IssueState {
    /// Whether docs/DESIGN.md's state diagram allows `self → to`:
    /// pending → blocked | ready; blocked ⇄ ready; ready → in_progress;
    /// in_progress → completed | no_changes | failed; every non-terminal state → rejected | cancelled;
    /// and every state but pending → pending (a reopened, re-assigned or requeued issue
    /// re-enters there). Staying in the same state is not a transition.
    pub fn can_transition_to(self, to: Self) -> bool {
        use IssueState::*;
        match (self, to) {
            (from, to) if from == to => false,
            (_, Pending) => true,
            (Pending, Blocked | Ready) => true,
            (Blocked, Ready) | (Ready, Blocked) => true,
            (Ready, InProgress) => true,
            (InProgress, Completed | NoChanges | Failed) => true,
            (from, Rejected | Cancelled) => !from.is_terminal(),
            _ => false,
        }
    }

    /// `to`, when the diagram allows moving there from `self`.
    pub fn transition(self, to: Self) -> Result<Self, InvalidTransition> {
        if self.can_transition_to(to) {
            Ok(to)
        } else {
            Err(InvalidTransition { from: self, to })
        }
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

    #[test]
    fn transitions_follow_the_diagram() {
        use IssueState::*;
        // Every allowed pair, listed once; everything else must be refused.
        let allowed = [
            (Pending, Blocked),
            (Pending, Ready),
            (Pending, Rejected),
            (Pending, Cancelled),
            (Blocked, Ready),
            (Blocked, Pending),
            (Blocked, Rejected),
            (Blocked, Cancelled),
            (Ready, Blocked),
            (Ready, InProgress),
            (Ready, Pending),
            (Ready, Rejected),
            (Ready, Cancelled),
            (InProgress, Completed),
            (InProgress, NoChanges),
            (InProgress, Failed),
            (InProgress, Pending),
            (InProgress, Rejected),
            (InProgress, Cancelled),
            (Completed, Pending),
            (NoChanges, Pending),
            (Failed, Pending),
            (Rejected, Pending),
            (Cancelled, Pending),
        ];
        for from in IssueState::ALL {
            for to in IssueState::ALL {
                let expect = allowed.contains(&(from, to));
                assert_eq!(from.can_transition_to(to), expect, "{from} -> {to}");
                match from.transition(to) {
                    Ok(state) => assert!(expect && state == to),
                    Err(err) => {
                        assert!(!expect);
                        assert_eq!(
                            err.to_string(),
                            format!("invalid transition from {from} to {to}")
                        );
                    }
                }
            }
        }
    }
}
