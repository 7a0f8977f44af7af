//! What the coordinator says on an issue: one short status comment per state, and the state
//! label. Pure text, so the wording is reviewed in snapshots.

use mosaic_domain::{IssueRef, IssueState, RepoName};
use mosaic_security::Redactor;
use serde::{Deserialize, Serialize};

/// Names of the state labels (the `[labels]` section).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StateLabels {
    pub queued: String,
    pub blocked: String,
    pub in_progress: String,
    pub done: String,
    /// The agent succeeded without changing anything: no pull request.
    pub no_changes: String,
    pub failed: String,
    pub rejected: String,
}

impl Default for StateLabels {
    fn default() -> Self {
        Self {
            queued: "mosaic:queued".to_owned(),
            blocked: "mosaic:blocked".to_owned(),
            in_progress: "mosaic:in-progress".to_owned(),
            done: "mosaic:done".to_owned(),
            no_changes: "mosaic:no-changes".to_owned(),
            failed: "mosaic:failed".to_owned(),
            rejected: "mosaic:rejected".to_owned(),
        }
    }
}

impl StateLabels {
    /// The label an issue in `state` carries; `None` for states that carry none.
    pub fn for_state(&self, state: IssueState) -> Option<&str> {
        match state {
            IssueState::Pending | IssueState::Cancelled => None,
            IssueState::Ready => Some(&self.queued),
            IssueState::Blocked => Some(&self.blocked),
            IssueState::InProgress => Some(&self.in_progress),
            IssueState::Completed => Some(&self.done),
            IssueState::NoChanges => Some(&self.no_changes),
            IssueState::Failed => Some(&self.failed),
            IssueState::Rejected => Some(&self.rejected),
        }
    }

    /// Every state label, to remove the stale ones when the state changes.
    pub fn all(&self) -> [&str; 7] {
        [
            &self.queued,
            &self.blocked,
            &self.in_progress,
            &self.done,
            &self.no_changes,
            &self.failed,
            &self.rejected,
        ]
    }
}

/// `46800` → `46,800`.
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, ch) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

fn references(issues: &[IssueRef], base: &RepoName) -> String {
    issues
        .iter()
        .map(|issue| issue.display_from(base))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The facts a status comment is made of.
#[derive(Debug, Clone, PartialEq)]
pub enum Status<'a> {
    Queued {
        agent: &'a str,
        estimate: u64,
        waiting_on: &'a [IssueRef],
    },
    BlockedByCycle {
        cycle: &'a [IssueRef],
    },
    Rejected {
        reason: &'a str,
    },
    InProgress {
        agent: &'a str,
        attempt: u32,
    },
    Done {
        agent: &'a str,
        summary: &'a str,
        tokens: u64,
        cost_usd: f64,
    },
    /// Done, with the branch pushed and its pull request requested.
    Published {
        agent: &'a str,
        summary: &'a str,
        tokens: u64,
        cost_usd: f64,
        branch: &'a str,
        base: &'a str,
        /// The quality gates' report (a Markdown table), when gates ran.
        gates: Option<&'a str>,
    },
    /// The agent succeeded but the branch has nothing the base lacks.
    NoChanges {
        agent: &'a str,
        branch: &'a str,
    },
    Failed {
        agent: &'a str,
        attempts: u32,
        reason: &'a str,
        /// The quality gates' report, when they are why it failed.
        gates: Option<&'a str>,
    },
    Cancelled {
        why: &'a str,
    },
}

/// Longest agent summary quoted in a comment; the rest stays in the session log.
pub const MAX_SUMMARY_CHARS: usize = 2_000;
/// Longest failure reason quoted in a comment.
pub const MAX_REASON_CHARS: usize = 500;

/// Text that came from an agent (a summary, a failure reason with its stderr) as a comment may
/// quote it: configured secrets and credential-shaped values replaced, control and escape
/// sequences removed, at most `max_chars` characters (invariant 9). Every agent text passes
/// here before it reaches a [`Status`] or a comment.
pub fn agent_text(redactor: &Redactor, text: &str, max_chars: usize) -> String {
    redactor.for_comment(text.trim(), max_chars)
}

/// The comment posted once when an agent finished an issue; `summary` is [`agent_text`].
pub fn finished_comment(agent: &str, tokens: u64, cost_usd: f64, summary: &str) -> String {
    format!(
        "**Mosaic** · {agent} finished this issue · {} tokens this session · ${cost_usd:.2}\n\n{}",
        thousands(tokens),
        clip(summary, MAX_SUMMARY_CHARS)
    )
}

/// The comment posted once when an agent succeeded without changing anything; `summary` is
/// [`agent_text`].
pub fn no_changes_comment(agent: &str, branch: &str, summary: &str) -> String {
    format!(
        "**Mosaic** · {agent} reported success but left `{branch}` without a change, so no pull request was opened. Assign the issue again to retry.\n\n{}",
        clip(summary, MAX_SUMMARY_CHARS)
    )
}

/// The comment posted once when an issue failed for good; `reason` is [`agent_text`].
pub fn failed_comment(agent: &str, attempts: u32, reason: &str) -> String {
    format!(
        "**Mosaic** · {agent} could not finish this issue after {attempts} attempt{}: {}",
        if attempts == 1 { "" } else { "s" },
        clip(reason, MAX_REASON_CHARS)
    )
}

/// The comment posted once when an issue failed because its required quality gates kept
/// failing; `report` is the gates' table (output already redacted).
pub fn gates_failed_comment(
    agent: &str,
    continuations: u32,
    branch: &str,
    wip_pull_request: bool,
    report: &str,
) -> String {
    format!(
        "**Mosaic** · {agent}'s work did not pass the required quality gates after {continuations} continuation{}, so nothing was published as done. The branch `{branch}` is pushed so no work is lost{}.\n\n{}",
        if continuations == 1 { "" } else { "s" },
        if wip_pull_request {
            "; its pull request is marked WIP"
        } else {
            ""
        },
        report.trim_end()
    )
}

fn clip(text: &str, max: usize) -> String {
    let text = text.trim();
    match text.char_indices().nth(max) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_owned(),
    }
}

impl Status<'_> {
    /// The head branch of the pull request this status reports, whose number and address the
    /// outbox links in once Gitea has opened it ([`link_pull_request`]).
    pub fn pull_request_head(&self) -> Option<&str> {
        match self {
            Status::Published { branch, .. } => Some(branch),
            _ => None,
        }
    }
}

/// The status text with the pull request of `head` linked where the first line names the
/// branch: `pull request [#12](url) `head``.
pub fn link_pull_request(body: &str, head: &str, number: u64, url: &str) -> String {
    let named = format!("pull request `{head}`");
    let first_line = body.split('\n').next().unwrap_or_default();
    if !first_line.contains(&named) {
        return body.to_owned();
    }
    let linked = if url.is_empty() {
        format!("pull request #{number} `{head}`")
    } else {
        format!("pull request [#{number}]({url}) `{head}`")
    };
    body.replacen(&named, &linked, 1)
}

/// `text` followed by the gates' report table, when there is one.
fn with_gates(text: String, gates: Option<&str>) -> String {
    match gates.map(str::trim_end).filter(|table| !table.is_empty()) {
        Some(table) => format!("{text}\n\n**Quality gates**\n\n{table}"),
        None => text,
    }
}

/// The status comment's text (without the idempotency marker, which the outbox adds).
pub fn status_comment(status: &Status<'_>, repo: &RepoName) -> String {
    match status {
        Status::Queued {
            agent,
            estimate,
            waiting_on,
        } => {
            let mut text = format!(
                "**Mosaic** · Queued for {agent} · estimate {} tokens",
                thousands(*estimate)
            );
            if !waiting_on.is_empty() {
                text.push_str(&format!(" · waiting on {}", references(waiting_on, repo)));
            }
            text
        }
        Status::BlockedByCycle { cycle } => format!(
            "**Mosaic** · Blocked: dependency cycle {} — remove one of these blocked-by links.",
            references(cycle, repo)
        ),
        Status::Rejected { reason } => format!(
            "**Mosaic** · Rejected · {reason}\n\nSplit the issue into smaller ones (or raise the estimate's precision) and assign them again."
        ),
        Status::InProgress { agent, attempt } => {
            if *attempt > 1 {
                format!("**Mosaic** · In progress with {agent} (attempt {attempt})")
            } else {
                format!("**Mosaic** · In progress with {agent}")
            }
        }
        Status::Done {
            agent,
            summary,
            tokens,
            cost_usd,
        } => format!(
            "**Mosaic** · Done by {agent} · {} tokens · ${cost_usd:.2}\n\n{}",
            thousands(*tokens),
            clip(summary, MAX_SUMMARY_CHARS)
        ),
        Status::Published {
            agent,
            summary,
            tokens,
            cost_usd,
            branch,
            base,
            gates,
        } => with_gates(
            format!(
                "**Mosaic** · Done by {agent} · {} tokens · ${cost_usd:.2} · pull request `{branch}` → `{base}`\n\n{}",
                thousands(*tokens),
                clip(summary, MAX_SUMMARY_CHARS)
            ),
            *gates,
        ),
        Status::NoChanges { agent, branch } => format!(
            "**Mosaic** · No changes · {agent} finished without a commit on `{branch}`; no pull request"
        ),
        Status::Failed {
            agent,
            attempts,
            reason,
            gates,
        } => with_gates(
            format!(
                "**Mosaic** · Failed with {agent} after {attempts} attempt{} · {}",
                if *attempts == 1 { "" } else { "s" },
                clip(reason, MAX_REASON_CHARS)
            ),
            *gates,
        ),
        Status::Cancelled { why } => format!("**Mosaic** · Cancelled · {why}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repo() -> RepoName {
        "mosaic/coordinator".parse().unwrap()
    }

    fn issue(text: &str) -> IssueRef {
        IssueRef::parse_relative(text, &repo()).unwrap()
    }

    #[test]
    fn the_gates_failed_comment_says_what_was_kept_and_shows_the_report() {
        let table = "| Gate | Status | Duration | Details |\n|---|---|---|---|\n| test | ❌ failed | 0.1 s | exit code 1 |\n";
        let text = gates_failed_comment("glm", 1, "mosaic/7-fix", false, table);
        assert_eq!(
            text,
            format!(
                "**Mosaic** · glm's work did not pass the required quality gates after 1 continuation, so nothing was published as done. The branch `mosaic/7-fix` is pushed so no work is lost.\n\n{}",
                table.trim_end()
            )
        );
        let wip = gates_failed_comment("glm", 3, "mosaic/7-fix", true, table);
        assert!(wip.contains("after 3 continuations"), "{wip}");
        assert!(
            wip.contains("no work is lost; its pull request is marked WIP."),
            "{wip}"
        );
    }

    #[test]
    fn the_published_status_links_its_pull_request_once_gitea_numbered_it() {
        let published = Status::Published {
            agent: "glm",
            summary: "Mentions pull request `mosaic/12-add-caching` too.",
            tokens: 4_200,
            cost_usd: 0.5,
            branch: "mosaic/12-add-caching",
            base: "main",
            gates: None,
        };
        assert_eq!(published.pull_request_head(), Some("mosaic/12-add-caching"));
        let body = status_comment(&published, &repo());
        let linked = link_pull_request(
            &body,
            "mosaic/12-add-caching",
            7,
            "http://gitea/o/r/pulls/7",
        );
        assert_eq!(
            linked,
            "**Mosaic** · Done by glm · 4,200 tokens · $0.50 · pull request [#7](http://gitea/o/r/pulls/7) `mosaic/12-add-caching` → `main`\n\nMentions pull request `mosaic/12-add-caching` too."
        );
        assert!(
            link_pull_request(&body, "mosaic/12-add-caching", 7, "")
                .starts_with("**Mosaic** · Done by glm · 4,200 tokens · $0.50 · pull request #7 `mosaic/12-add-caching`")
        );
        // Only the first line is ever rewritten, so a summary cannot place a link.
        let done = "**Mosaic** · Done by glm\n\npull request `mosaic/12-add-caching`";
        assert_eq!(
            link_pull_request(done, "mosaic/12-add-caching", 7, "u"),
            done
        );
        assert_eq!(
            Status::InProgress {
                agent: "glm",
                attempt: 1
            }
            .pull_request_head(),
            None
        );
    }

    #[test]
    fn thousands_separators() {
        for (n, expect) in [
            (0, "0"),
            (999, "999"),
            (1_000, "1,000"),
            (46_800, "46,800"),
            (1_234_567, "1,234,567"),
        ] {
            assert_eq!(thousands(n), expect);
        }
    }

    #[test]
    fn status_comments() {
        let waiting = [issue("#151"), issue("mosaic/infra#7")];
        let cycle = [issue("#3"), issue("#4")];
        let long_summary = "x".repeat(3_000);
        let cases = [
            Status::Queued {
                agent: "glm",
                estimate: 46_800,
                waiting_on: &waiting,
            },
            Status::Queued {
                agent: "minimax",
                estimate: 10_000,
                waiting_on: &[],
            },
            Status::BlockedByCycle { cycle: &cycle },
            Status::Rejected {
                reason: "Issue context estimate (120000 tokens) exceeds 50% rule for sonnet agent. Maximum allowed: 100000 tokens (50% of 200000 context limit).",
            },
            Status::InProgress {
                agent: "sonnet",
                attempt: 1,
            },
            Status::InProgress {
                agent: "sonnet",
                attempt: 2,
            },
            Status::Done {
                agent: "glm",
                summary: "Implemented the monitor; tests pass.",
                tokens: 123_456,
                cost_usd: 0.0,
            },
            Status::Done {
                agent: "opus",
                summary: &long_summary,
                tokens: 1,
                cost_usd: 1.234,
            },
            Status::Published {
                agent: "glm",
                summary: "Added the cache.",
                tokens: 4_200,
                cost_usd: 0.5,
                branch: "mosaic/12-add-caching",
                base: "main",
                gates: Some(
                    "| Gate | Status | Duration | Details |\n|---|---|---|---|\n| test | ✅ passed | 0.1 s |  |\n",
                ),
            },
            Status::NoChanges {
                agent: "glm",
                branch: "mosaic/12-add-caching",
            },
            Status::Failed {
                agent: "haiku",
                attempts: 2,
                reason: "process exited with status 1",
                gates: None,
            },
            Status::Cancelled {
                why: "unassigned from the bot",
            },
        ];
        let rendered: Vec<String> = cases
            .iter()
            .map(|status| status_comment(status, &repo()))
            .collect();
        insta::assert_debug_snapshot!(rendered);
    }

    #[test]
    fn labels_per_state() {
        let labels = StateLabels::default();
        assert_eq!(labels.for_state(IssueState::Ready), Some("mosaic:queued"));
        assert_eq!(
            labels.for_state(IssueState::InProgress),
            Some("mosaic:in-progress")
        );
        assert_eq!(labels.for_state(IssueState::Pending), None);
        assert_eq!(
            labels.for_state(IssueState::NoChanges),
            Some("mosaic:no-changes")
        );
        assert_eq!(labels.all().len(), 7);
    }
}
