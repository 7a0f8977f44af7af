//! Running gates in a worktree, one child process group each.

use std::ffi::OsString;
use std::path::Path;
use std::time::Duration;

use mosaic_process::{ChildSpec, Ending, Finished, OutputLimit};
use mosaic_security::Redactor;
use regex::Regex;

use crate::config::Gate;

/// Each stream is captured this far back at least, so a coverage summary is found and a secret
/// cut in half by the capture lies far before the part that is shown.
const MIN_CAPTURE_BYTES: usize = 64 * 1024;

/// How one gate ended.
#[derive(Debug, Clone, PartialEq)]
pub enum GateOutcome {
    Passed,
    /// Exited non-zero (`None`: killed by a signal).
    Failed {
        exit_code: Option<i32>,
    },
    /// Still running at its time limit; it and everything it started were killed.
    TimedOut,
    /// The program could not be started (missing, not executable).
    CouldNotStart {
        reason: String,
    },
    /// Exited 0 but reported less coverage than required.
    BelowCoverage {
        percent: f64,
        min: f64,
    },
    /// A coverage gate exited 0 but its output held no figure its `percent_regex` reads.
    NoCoverageFigure,
}

impl GateOutcome {
    pub fn passed(&self) -> bool {
        *self == Self::Passed
    }

    /// A short reason, for the report and the prompt.
    pub fn describe(&self, timeout: Duration) -> String {
        match self {
            Self::Passed => "passed".into(),
            Self::Failed {
                exit_code: Some(code),
            } => format!("exit code {code}"),
            Self::Failed { exit_code: None } => "killed by a signal".into(),
            Self::TimedOut => format!("no result within {} s; killed", timeout.as_secs()),
            Self::CouldNotStart { reason } => format!("could not start: {reason}"),
            Self::BelowCoverage { percent, min } => {
                format!(
                    "coverage {} % is below the required {} %",
                    figure(*percent),
                    figure(*min)
                )
            }
            Self::NoCoverageFigure => {
                "exited 0, but its output holds no coverage figure (percent_regex found none)"
                    .into()
            }
        }
    }
}

/// A percentage as people write it: `72`, `72.5`.
pub(crate) fn figure(value: f64) -> String {
    let rounded = (value * 100.0).round() / 100.0;
    format!("{rounded}")
}

/// One gate's run.
#[derive(Debug, Clone, PartialEq)]
pub struct GateResult {
    pub gate: String,
    pub command: Vec<String>,
    pub required: bool,
    pub timeout: Duration,
    pub outcome: GateOutcome,
    pub duration: Duration,
    /// The end of its output (stdout, then stderr), redacted and at most `output_tail_bytes`.
    pub output_tail: String,
    /// The figure a coverage gate read, whatever the outcome.
    pub coverage_percent: Option<f64>,
}

impl GateResult {
    /// A required gate that did not pass: the agent must fix it before publishing.
    pub fn blocks(&self) -> bool {
        self.required && !self.outcome.passed()
    }
}

/// Whether every required gate passed (optional failures are reported, not blocking).
pub fn all_required_passed(results: &[GateResult]) -> bool {
    results.iter().all(|result| !result.blocks())
}

/// Runs `gates` one after another in `worktree` (all of them, so the agent sees every failure at
/// once). Each runs in its own process group with its time limit; nothing it starts there
/// outlives it. The environment is `env_base` (the caller's choice: no secrets, as the gates run
/// the agent's code) with the gate's own `env` over it. Output is bounded and redacted.
pub async fn run_gates(
    worktree: &Path,
    gates: &[&Gate],
    redactor: &Redactor,
    env_base: &[(OsString, OsString)],
    output_tail_bytes: usize,
) -> Vec<GateResult> {
    let mut results = Vec::with_capacity(gates.len());
    for gate in gates {
        results.push(run_gate(worktree, gate, redactor, env_base, output_tail_bytes).await);
    }
    results
}

async fn run_gate(
    worktree: &Path,
    gate: &Gate,
    redactor: &Redactor,
    env_base: &[(OsString, OsString)],
    output_tail_bytes: usize,
) -> GateResult {
    let timeout = Duration::from_secs(gate.timeout_secs);
    let mut result = GateResult {
        gate: gate.name.trim().to_owned(),
        command: gate.command.clone(),
        required: gate.required,
        timeout,
        outcome: GateOutcome::Passed,
        duration: Duration::ZERO,
        output_tail: String::new(),
        coverage_percent: None,
    };
    let Some((program, args)) = gate.command.split_first() else {
        result.outcome = GateOutcome::CouldNotStart {
            reason: "the command is empty".into(),
        };
        return result;
    };
    let percent_regex = match gate.percent_regex.as_deref().map(Regex::new).transpose() {
        Ok(regex) => regex,
        Err(err) => {
            result.outcome = GateOutcome::CouldNotStart {
                reason: format!("percent_regex is invalid: {err}"),
            };
            return result;
        }
    };
    let capture = OutputLimit::tail(output_tail_bytes.saturating_mul(4).max(MIN_CAPTURE_BYTES));
    let spec = ChildSpec {
        program: program.into(),
        args: args.iter().map(OsString::from).collect(),
        dir: worktree.to_path_buf(),
        env: environment(env_base, gate),
        timeout,
        stdout: capture,
        stderr: capture,
    };
    let finished = match mosaic_process::run(&spec).await {
        Ok(finished) => finished,
        Err(err) => {
            result.outcome = GateOutcome::CouldNotStart {
                reason: redactor.redact(&err.to_string()),
            };
            return result;
        }
    };
    result.duration = finished.elapsed;
    let stdout = redactor.redact(&finished.stdout.text_lossy());
    let stderr = redactor.redact(&finished.stderr.text_lossy());
    result.coverage_percent = percent_regex
        .as_ref()
        .and_then(|regex| read_percent(regex, &stdout).or_else(|| read_percent(regex, &stderr)));
    result.output_tail = output_tail(&finished, &stdout, &stderr, output_tail_bytes);
    result.outcome = match finished.ending {
        Ending::TimedOut => GateOutcome::TimedOut,
        Ending::Signalled { .. } => GateOutcome::Failed { exit_code: None },
        Ending::Exited { code } if code != 0 => GateOutcome::Failed {
            exit_code: Some(code),
        },
        Ending::Exited { .. } => match (gate.coverage_minimum(), result.coverage_percent) {
            (None, _) => GateOutcome::Passed,
            (Some(_), None) => GateOutcome::NoCoverageFigure,
            (Some(min), Some(percent)) if percent < min => {
                GateOutcome::BelowCoverage { percent, min }
            }
            (Some(_), Some(_)) => GateOutcome::Passed,
        },
    };
    result
}

/// `env_base`, with the gate's own variables replacing same-named ones.
fn environment(env_base: &[(OsString, OsString)], gate: &Gate) -> Vec<(OsString, OsString)> {
    let mut env: Vec<(OsString, OsString)> = env_base
        .iter()
        .filter(|(name, _)| {
            name.to_str()
                .is_none_or(|name| !gate.env.contains_key(name))
        })
        .cloned()
        .collect();
    env.extend(
        gate.env
            .iter()
            .map(|(name, value)| (OsString::from(name), OsString::from(value))),
    );
    env
}

/// The first capture group of the LAST match (a summary line comes after per-file lines that
/// match too), read as a number; a trailing `%` is allowed.
fn read_percent(regex: &Regex, text: &str) -> Option<f64> {
    regex
        .captures_iter(text)
        .filter_map(|captures| {
            captures
                .get(1)
                .and_then(|group| {
                    group
                        .as_str()
                        .trim()
                        .trim_end_matches('%')
                        .trim()
                        .parse::<f64>()
                        .ok()
                })
                .filter(|value| value.is_finite())
        })
        .last()
}

/// The end of stdout and of stderr, marked, within `max_bytes` in all: each stream gets half
/// when both have something to say.
fn output_tail(finished: &Finished, stdout: &str, stderr: &str, max_bytes: usize) -> String {
    let stdout = stdout.trim_end();
    let stderr = stderr.trim_end();
    let (stdout_room, stderr_room) = match (stdout.is_empty(), stderr.is_empty()) {
        (false, false) => (max_bytes / 2, max_bytes - max_bytes / 2),
        (true, _) => (0, max_bytes),
        (false, true) => (max_bytes, 0),
    };
    let mut parts = Vec::new();
    let cut_before = |text: &str, room: usize, earlier_omitted: u64| -> String {
        let kept = tail_within(text, room.saturating_sub(40));
        if kept.len() < text.len() || earlier_omitted > 0 {
            format!("[… earlier output cut …]\n{kept}")
        } else {
            kept.to_owned()
        }
    };
    if !stdout.is_empty() {
        parts.push(cut_before(
            stdout,
            stdout_room,
            finished.stdout.omitted_bytes(),
        ));
    }
    if !stderr.is_empty() {
        parts.push(format!(
            "[stderr]\n{}",
            cut_before(
                stderr,
                stderr_room.saturating_sub(9),
                finished.stderr.omitted_bytes()
            )
        ));
    }
    parts.join("\n")
}

/// The longest end of `text` of at most `max_bytes`, starting on a character boundary.
fn tail_within(text: &str, max_bytes: usize) -> &str {
    if text.len() <= max_bytes {
        return text;
    }
    let mut start = text.len() - max_bytes;
    while !text.is_char_boundary(start) {
        start += 1;
    }
    &text[start..]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_match_gives_the_figure() {
        let regex = Regex::new(r"(?m)^TOTAL.*\s([0-9.]+)%").unwrap();
        let text = "src/a.rs 10 2 80%\nTOTAL 100 28 72%\n";
        assert_eq!(read_percent(&regex, text), Some(72.0));
        let figures = Regex::new(r"([0-9.]+)%").unwrap();
        assert_eq!(read_percent(&figures, "a 50%\nb 91.5%\n"), Some(91.5));
        assert_eq!(read_percent(&regex, "no figure here"), None);
    }

    #[test]
    fn tails_start_on_a_character_boundary() {
        assert_eq!(tail_within("äöü", 3), "ü");
        assert_eq!(tail_within("abc", 10), "abc");
    }

    #[test]
    fn gate_variables_replace_base_ones() {
        let mut gate = Gate::new("t", ["true"]);
        gate.env.insert("RUST_LOG".into(), "debug".into());
        let base = vec![
            (OsString::from("PATH"), OsString::from("/bin")),
            (OsString::from("RUST_LOG"), OsString::from("info")),
        ];
        let env = environment(&base, &gate);
        assert_eq!(
            env,
            vec![
                (OsString::from("PATH"), OsString::from("/bin")),
                (OsString::from("RUST_LOG"), OsString::from("debug")),
            ]
        );
    }
}
