//! The gates' report as a Markdown table, for the status comment and the pull request body.

use std::fmt::Write as _;

use crate::prompt::seconds;
use crate::run::{GateOutcome, GateResult, figure};

/// Most characters of a reason in one table cell.
const MAX_REASON_CHARS: usize = 200;

/// `| Gate | Status | Duration | Details |`, one row per gate in run order. Cells are escaped
/// (no `|` or line break from a gate's name or reason can break the table).
pub fn report_markdown(results: &[GateResult]) -> String {
    let mut text = String::from("| Gate | Status | Duration | Details |\n|---|---|---|---|\n");
    for result in results {
        let name = if result.required {
            cell(&result.gate)
        } else {
            format!("{} (optional)", cell(&result.gate))
        };
        let status = match (&result.outcome, result.required) {
            (GateOutcome::Passed, _) => "✅ passed",
            (GateOutcome::TimedOut, true) => "⏱️ timed out",
            (GateOutcome::BelowCoverage { .. }, true) => "❌ coverage too low",
            (GateOutcome::CouldNotStart { .. }, true) => "❌ could not start",
            (_, true) => "❌ failed",
            (_, false) => "⚠️ failed (not required)",
        };
        let details = match (&result.outcome, result.coverage_percent) {
            (GateOutcome::Passed, Some(percent)) => format!("coverage {} %", figure(percent)),
            (GateOutcome::Passed, None) => String::new(),
            (outcome, _) => outcome.describe(result.timeout),
        };
        let _ = writeln!(
            text,
            "| {name} | {status} | {} | {} |",
            seconds(result.duration),
            cell(&mosaic_security::clip(&details, MAX_REASON_CHARS))
        );
    }
    text
}

/// One table cell: pipes escaped, line breaks and other control characters as spaces.
fn cell(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect::<String>()
        .replace('|', "\\|")
        .trim()
        .to_owned()
}
