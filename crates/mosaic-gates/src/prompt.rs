//! The one place the continuation request is worded: what an agent reads when it said it was
//! done but required gates failed.
//!
//! Changing the wording in a way that changes what agents do must bump
//! [`CONTINUATION_PROMPT_VERSION`], so results recorded under each wording stay comparable.

use std::fmt::Write as _;

use crate::run::GateResult;

/// Version of the wording [`continuation_prompt`] produces.
pub const CONTINUATION_PROMPT_VERSION: u32 = 1;

/// The prompt that sends the agent back after failing gates.
///
/// `attempt` is the attempt this prompt starts, counting the agent's first run as attempt 1
/// (so the first continuation is attempt 2); `max_attempts` is the last one (1 +
/// `max_continuations`). The wording escalates: from attempt 2 fix only the failures, from
/// attempt 3 with minimal changes, and on the last attempt it says so.
pub fn continuation_prompt(results: &[GateResult], attempt: u32, max_attempts: u32) -> String {
    let mut text = String::new();
    let _ = writeln!(
        text,
        "REJECTED: quality gates failed (attempt {attempt} of {max_attempts})."
    );
    text.push('\n');
    text.push_str(
        "You said the work is done, but these required checks failed in your worktree. \
         Nothing has been published.\n",
    );
    for result in results.iter().filter(|result| result.blocks()) {
        text.push('\n');
        let _ = writeln!(text, "## Gate `{}`", result.gate);
        let _ = writeln!(
            text,
            "Command: {}",
            fenced_inline(&display_command(&result.command))
        );
        let _ = writeln!(
            text,
            "Result: {} (after {})",
            result.outcome.describe(result.timeout),
            seconds(result.duration)
        );
        if result.output_tail.trim().is_empty() {
            text.push_str("Output: (none)\n");
        } else {
            text.push_str("End of its output:\n");
            let fence = fence_for(&result.output_tail);
            let _ = writeln!(
                text,
                "{fence}text\n{}\n{fence}",
                result.output_tail.trim_end()
            );
        }
    }
    text.push_str("\nRules:\n");
    text.push_str("- Fix every failure listed above.\n");
    text.push_str(
        "- Do not defer anything to follow-up work: no TODO, no skipped or ignored test, no \
         lowered threshold, no \"will fix later\".\n",
    );
    text.push_str("- Do not claim you are done until every gate passes.\n");
    text.push_str("- Run the checks yourself before you finish:\n");
    for result in results.iter().filter(|result| result.required) {
        let _ = writeln!(
            text,
            "  - {}",
            fenced_inline(&display_command(&result.command))
        );
    }
    if attempt >= 2 {
        text.push_str(
            "- Fix only these failures; do not refactor or change code the failures do not \
             need.\n",
        );
    }
    if attempt >= 3 {
        text.push_str(
            "- Make the smallest change that makes the gates pass; earlier attempts did not \
             get there, so keep each change small and check it at once.\n",
        );
    }
    if attempt >= max_attempts {
        text.push_str(
            "- FINAL ATTEMPT: there is no further attempt after this one. If any gate still \
             fails, the work is not accepted as done.\n",
        );
    }
    text
}

/// argv as a person would type it: words with spaces or shell characters single-quoted.
pub(crate) fn display_command(command: &[String]) -> String {
    command
        .iter()
        .map(|arg| {
            let plain = !arg.is_empty()
                && arg.chars().all(|c| {
                    c.is_ascii_alphanumeric()
                        || matches!(c, '-' | '_' | '.' | '/' | ':' | '=' | ',' | '+' | '@')
                });
            if plain {
                arg.clone()
            } else {
                format!("'{}'", arg.replace('\'', r"'\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Inline code that survives backticks inside.
pub(crate) fn fenced_inline(text: &str) -> String {
    let longest = longest_backtick_run(text);
    let ticks = "`".repeat(longest + 1);
    if longest > 0 {
        format!("{ticks} {text} {ticks}")
    } else {
        format!("{ticks}{text}{ticks}")
    }
}

/// A code fence longer than any backtick run in `text`, so the output cannot close it.
fn fence_for(text: &str) -> String {
    "`".repeat(longest_backtick_run(text).max(2) + 1)
}

fn longest_backtick_run(text: &str) -> usize {
    text.split(|c| c != '`').map(str::len).max().unwrap_or(0)
}

/// `12.3 s`.
pub(crate) fn seconds(duration: std::time::Duration) -> String {
    format!("{:.1} s", duration.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_display_quoted_where_needed() {
        let argv = |words: &[&str]| words.iter().map(|w| (*w).to_owned()).collect::<Vec<_>>();
        assert_eq!(
            display_command(&argv(&["cargo", "test", "--workspace"])),
            "cargo test --workspace"
        );
        assert_eq!(
            display_command(&argv(&["sh", "-c", "test -f 'x'"])),
            r"sh -c 'test -f '\''x'\'''"
        );
        assert_eq!(display_command(&argv(&["echo", ""])), "echo ''");
    }

    #[test]
    fn backticks_in_output_cannot_close_the_fence() {
        assert_eq!(fence_for("plain"), "```");
        assert_eq!(fence_for("a ```` b"), "`````");
        assert_eq!(fenced_inline("a`b"), "`` a`b ``");
    }
}
