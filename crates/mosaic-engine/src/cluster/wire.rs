//! What leader and claimant say to each other through the store (JSON the store keeps as text).

use chrono::{DateTime, Utc};
use mosaic_context::{ContextUsage, SessionSnapshot};
use serde::{Deserialize, Serialize};

/// The latest answers kept in a report: commands are applied in order, and a waiter reads its
/// own answer within a few reports, so a few suffice.
pub(crate) const ANSWERS_KEPT: usize = 16;

/// The handover summary travels bounded: a report is written several times a second.
pub(crate) const MAX_SUMMARY_CHARS: usize = 16_000;

/// A command from the leader's monitor to the session's claimant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub(crate) enum Command {
    Send { prompt: String },
    Compact { instructions: String },
    Close { reason: String },
    CloseAfterTurn { reason: String },
    Finish,
}

impl Command {
    /// The command's text for the store, unique to this call (an id beside it): a retry after
    /// a lost answer repeats the same text, which the store keeps once.
    pub(crate) fn to_text(&self) -> Result<String, serde_json::Error> {
        let mut value = serde_json::to_value(self)?;
        if let serde_json::Value::Object(fields) = &mut value {
            fields.insert(
                "id".to_owned(),
                serde_json::Value::String(uuid::Uuid::now_v7().to_string()),
            );
        }
        serde_json::to_string(&value)
    }

    /// A command as the store keeps it (its id is only there to make the text unique).
    pub(crate) fn from_text(text: &str) -> Result<Self, serde_json::Error> {
        let mut value: serde_json::Value = serde_json::from_str(text)?;
        if let serde_json::Value::Object(fields) = &mut value {
            fields.remove("id");
        }
        serde_json::from_value(value)
    }
}

/// How a command went: a compaction answers with the usage measured afterwards.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct CommandAnswer {
    pub seq: i64,
    pub result: Result<Option<ContextUsage>, String>,
}

/// The claimant's report of a session: its snapshot, and what the leader needs beside it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct ReportedState {
    #[serde(flatten)]
    pub snapshot: SessionSnapshot,
    /// The agent's process (group leader) on the claimant's machine, and when it started.
    pub pid: Option<u32>,
    pub started_at: Option<DateTime<Utc>>,
    pub latest_summary: Option<String>,
    /// Answers to the latest commands, oldest first.
    pub answers: Vec<CommandAnswer>,
}

impl ReportedState {
    pub(crate) fn of(
        snapshot: SessionSnapshot,
        pid: Option<u32>,
        started_at: Option<DateTime<Utc>>,
        latest_summary: Option<String>,
        answers: Vec<CommandAnswer>,
    ) -> Self {
        Self {
            snapshot,
            pid,
            started_at,
            latest_summary: latest_summary
                .map(|summary| mosaic_security::clip(&summary, MAX_SUMMARY_CHARS)),
            answers,
        }
    }
}

/// The pid and start of the agent's process a report names, for ending orphans: `None` when
/// the text is no report or names no process.
pub fn reported_process(state_json: &str) -> Option<(u32, DateTime<Utc>)> {
    let state: ReportedState = serde_json::from_str(state_json).ok()?;
    Some((state.pid?, state.started_at?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use mosaic_context::TurnResult;

    #[test]
    fn a_report_round_trips_into_the_same_snapshot() {
        let mut snapshot = SessionSnapshot::new(Utc::now());
        snapshot.usage = Some(ContextUsage::new(500, 1000).unwrap());
        snapshot.usage_seq = 3;
        snapshot.compactions = 1;
        snapshot.turns = 2;
        snapshot.waiting = Some(TurnResult {
            success: true,
            summary: "done".to_owned(),
        });
        let state = ReportedState::of(
            snapshot.clone(),
            Some(42),
            Some(Utc::now()),
            None,
            Vec::new(),
        );
        let text = serde_json::to_string(&state).unwrap();
        let back: ReportedState = serde_json::from_str(&text).unwrap();
        assert_eq!(back.snapshot, snapshot);
        assert_eq!(reported_process(&text).map(|(pid, _)| pid), Some(42));
    }

    #[test]
    fn every_command_text_is_unique_and_reads_back_as_the_command() {
        for command in [
            Command::Finish,
            Command::Send {
                prompt: "go on".to_owned(),
            },
            Command::CloseAfterTurn {
                reason: "rotated".to_owned(),
            },
        ] {
            let (first, second) = (command.to_text().unwrap(), command.to_text().unwrap());
            assert_ne!(first, second);
            assert_eq!(Command::from_text(&first).unwrap(), command);
        }
    }
}
