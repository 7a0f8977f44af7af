//! The hand-over text a fresh session reads about the workspace it continues in.

use std::fmt::Write as _;

use crate::WorkspaceState;

/// Longest hand-over text, in characters.
pub const MAX_HANDOVER_CHARS: usize = 6_000;
/// Commits listed at most.
const MAX_LISTED_COMMITS: usize = 20;
/// Lines of status and of diffstat shown at most, each.
const MAX_LISTED_LINES: usize = 40;

/// A plain-text summary of the workspace (branch, base, commits ahead, uncommitted files,
/// diffstat), at most [`MAX_HANDOVER_CHARS`] characters.
pub fn handover_text(state: &WorkspaceState) -> String {
    let mut text = String::new();
    let _ = writeln!(
        text,
        "Workspace: branch `{}` based on `{}` (base at {}, head at {}).",
        state.branch,
        state.base_branch,
        short(&state.base_commit),
        short(&state.head_commit),
    );
    if state.commits_behind > 0 {
        let _ = writeln!(
            text,
            "The base branch has {} commit(s) the branch does not contain yet.",
            state.commits_behind
        );
    }
    if state.commits_ahead == 0 {
        text.push_str("No commits ahead of the base yet.\n");
    } else {
        let _ = writeln!(text, "{} commit(s) ahead of the base:", state.commits_ahead);
        for commit in state.ahead.iter().take(MAX_LISTED_COMMITS) {
            let _ = writeln!(
                text,
                "- {} {}",
                short(&commit.id),
                one_line(&commit.subject)
            );
        }
        let listed = state.ahead.len().min(MAX_LISTED_COMMITS) as u64;
        if state.commits_ahead > listed {
            let _ = writeln!(text, "- … and {} older", state.commits_ahead - listed);
        }
    }
    if state.status_short.trim().is_empty() {
        text.push_str("Working tree clean.\n");
    } else {
        text.push_str("Uncommitted changes (git status --short):\n");
        push_lines(&mut text, &state.status_short);
    }
    if !state.diffstat.trim().is_empty() {
        text.push_str("Changes committed so far (git diff --stat):\n");
        push_lines(&mut text, &state.diffstat);
    }
    clip(&text, MAX_HANDOVER_CHARS)
}

fn short(id: &str) -> &str {
    id.get(..12).unwrap_or(id)
}

fn one_line(text: &str) -> String {
    clip(&text.replace(['\n', '\r'], " "), 200)
}

fn push_lines(text: &mut String, block: &str) {
    let lines: Vec<&str> = block.lines().filter(|l| !l.trim().is_empty()).collect();
    for line in lines.iter().take(MAX_LISTED_LINES) {
        let _ = writeln!(text, "  {}", clip(line, 200));
    }
    if lines.len() > MAX_LISTED_LINES {
        let _ = writeln!(text, "  … {} more line(s)", lines.len() - MAX_LISTED_LINES);
    }
}

fn clip(text: &str, max_chars: usize) -> String {
    if text.chars().count() <= max_chars {
        return text.to_owned();
    }
    let kept: String = text.chars().take(max_chars.saturating_sub(1)).collect();
    format!("{kept}…")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::CommitSummary;

    fn state() -> WorkspaceState {
        WorkspaceState {
            branch: "mosaic/7-fix-login".to_owned(),
            base_branch: "main".to_owned(),
            base_commit: "a".repeat(40),
            head_commit: "b".repeat(40),
            commits_ahead: 2,
            commits_behind: 3,
            ahead: vec![
                CommitSummary {
                    id: "c".repeat(40),
                    subject: "Add test".to_owned(),
                },
                CommitSummary {
                    id: "d".repeat(40),
                    subject: "Fix login".to_owned(),
                },
            ],
            status_short: " M src/lib.rs\n?? notes.txt\n".to_owned(),
            diffstat: " src/login.rs | 4 ++--\n 1 file changed\n".to_owned(),
        }
    }

    #[test]
    fn tells_branch_base_commits_status_and_diffstat() {
        let text = handover_text(&state());
        for expected in [
            "branch `mosaic/7-fix-login` based on `main`",
            "3 commit(s) the branch does not contain",
            "2 commit(s) ahead of the base:",
            "- cccccccccccc Add test",
            "- dddddddddddd Fix login",
            "  M src/lib.rs",
            "?? notes.txt",
            "src/login.rs | 4 ++--",
        ] {
            assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
        }
        let clean = WorkspaceState {
            commits_ahead: 0,
            commits_behind: 0,
            ahead: vec![],
            status_short: String::new(),
            diffstat: String::new(),
            ..state()
        };
        let text = handover_text(&clean);
        assert!(
            text.contains("No commits ahead") && text.contains("Working tree clean"),
            "{text}"
        );
        assert!(clean.is_unchanged() && !state().is_unchanged());
    }

    #[test]
    fn is_bounded_however_large_the_state() {
        let mut big = state();
        big.commits_ahead = 10_000;
        big.ahead = (0..10_000)
            .map(|i| CommitSummary {
                id: format!("{i:040}"),
                subject: "x".repeat(10_000),
            })
            .collect();
        big.status_short = "?? file\n".repeat(100_000);
        big.diffstat = format!("{}\n", "y".repeat(1_000_000));
        let text = handover_text(&big);
        assert!(text.chars().count() <= MAX_HANDOVER_CHARS, "{}", text.len());
        assert!(text.contains("and 9980 older"), "{text}");
    }
}
