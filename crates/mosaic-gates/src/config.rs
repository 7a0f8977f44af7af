//! The gates' configuration: the operator's `[[gates]]`, the settings around them, and a
//! repository's own `.mosaic/gates.toml` when the operator trusts it.

use std::collections::{BTreeMap, BTreeSet};

use mosaic_domain::RepoName;
use serde::{Deserialize, Serialize};

/// Coverage threshold when a gate reads a percentage but names no `min_percent`.
pub const DEFAULT_MIN_PERCENT: f64 = 85.0;
/// A gate's time limit when it names none.
pub const DEFAULT_TIMEOUT_SECS: u64 = 600;
/// The longest time limit a gate may have (a day).
pub const MAX_TIMEOUT_SECS: u64 = 24 * 60 * 60;
/// Bytes of a gate's output kept for the agent and the report when the configuration names none.
pub const DEFAULT_OUTPUT_TAIL_BYTES: usize = 4000;
/// Bounds on `output_tail_bytes`: enough to show a failure, small enough for a comment.
pub const OUTPUT_TAIL_BYTES_RANGE: std::ops::RangeInclusive<usize> = 200..=65_536;
/// Most gates a repository's own file may add.
pub const MAX_REPOSITORY_GATES: usize = 20;
/// Where a repository keeps its own gates, read from its base branch.
pub const REPOSITORY_FILE: &str = ".mosaic/gates.toml";

const ALL_REPOSITORIES: &str = "*/*";

/// One check: a command run in the worktree that must exit 0 (and, for coverage, report at
/// least `min_percent`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Gate {
    pub name: String,
    /// Program and arguments, run directly (no shell unless the operator writes one).
    pub command: Vec<String>,
    /// `owner/name` globs (`*` and `?` within a segment, case-insensitive); every repository
    /// when left out.
    #[serde(default = "all_repositories")]
    pub repos: Vec<String>,
    #[serde(default = "default_timeout_secs")]
    pub timeout_secs: u64,
    /// A failing optional gate is reported but blocks nothing.
    #[serde(default = "required_by_default")]
    pub required: bool,
    /// Added to (and overriding) the base environment the caller gives.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Lowest coverage that passes; [`DEFAULT_MIN_PERCENT`] when `percent_regex` is set alone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_percent: Option<f64>,
    /// Reads the coverage figure from the output: the first capture group of the last match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percent_regex: Option<String>,
}

fn all_repositories() -> Vec<String> {
    vec![ALL_REPOSITORIES.to_owned()]
}

fn default_timeout_secs() -> u64 {
    DEFAULT_TIMEOUT_SECS
}

fn required_by_default() -> bool {
    true
}

impl Gate {
    /// A required gate for every repository with the default time limit.
    pub fn new<I, S>(name: impl Into<String>, command: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self {
            name: name.into(),
            command: command.into_iter().map(Into::into).collect(),
            repos: all_repositories(),
            timeout_secs: DEFAULT_TIMEOUT_SECS,
            required: true,
            env: BTreeMap::new(),
            min_percent: None,
            percent_regex: None,
        }
    }

    /// Whether this gate reads a coverage figure.
    pub fn is_coverage(&self) -> bool {
        self.percent_regex.is_some()
    }

    /// The coverage threshold, for a coverage gate.
    pub fn coverage_minimum(&self) -> Option<f64> {
        self.percent_regex
            .as_ref()
            .map(|_| self.min_percent.unwrap_or(DEFAULT_MIN_PERCENT))
    }

    /// Whether the gate applies to `repo`.
    pub fn applies_to(&self, repo: &RepoName) -> bool {
        self.repos
            .iter()
            .any(|pattern| glob_matches(pattern, repo.as_str()))
    }

    /// Checks one gate; `key` is how errors name it (`gates[2]`).
    fn validate(&self, key: &str) -> Result<(), GatesConfigError> {
        let invalid = |field: &str, problem: String| GatesConfigError::Invalid {
            key: format!("{key}.{field}"),
            problem,
        };
        let name = self.name.trim();
        if name.is_empty() {
            return Err(invalid("name", "must not be empty".into()));
        }
        if name.chars().count() > 64 || name.chars().any(char::is_control) {
            return Err(invalid(
                "name",
                "must be at most 64 characters on one line".into(),
            ));
        }
        match self.command.first() {
            None => return Err(invalid("command", "must not be empty".into())),
            Some(program) if program.trim().is_empty() => {
                return Err(invalid("command", "must start with a program name".into()));
            }
            Some(_) => {}
        }
        if self.command.iter().any(|arg| arg.contains('\0')) {
            return Err(invalid("command", "must not contain a NUL byte".into()));
        }
        if self.repos.is_empty() {
            return Err(invalid(
                "repos",
                "must not be empty (leave it out for every repository)".into(),
            ));
        }
        for (index, pattern) in self.repos.iter().enumerate() {
            let shaped = pattern.split_once('/').is_some_and(|(owner, name)| {
                !owner.is_empty() && !name.is_empty() && !name.contains('/')
            });
            if !shaped {
                return Err(GatesConfigError::Invalid {
                    key: format!("{key}.repos[{index}]"),
                    problem: format!("`{pattern}` must look like owner/name (globs: owner/*)"),
                });
            }
        }
        if !(1..=MAX_TIMEOUT_SECS).contains(&self.timeout_secs) {
            return Err(invalid(
                "timeout_secs",
                format!("must be between 1 and {MAX_TIMEOUT_SECS}"),
            ));
        }
        for name in self.env.keys() {
            if name.is_empty() || name.contains('=') || name.contains('\0') {
                return Err(invalid(
                    "env",
                    format!("`{name}` is not a valid variable name"),
                ));
            }
        }
        if self.env.values().any(|value| value.contains('\0')) {
            return Err(invalid("env", "values must not contain a NUL byte".into()));
        }
        if let Some(min) = self.min_percent {
            if !(0.0..=100.0).contains(&min) {
                return Err(invalid(
                    "min_percent",
                    format!("must be between 0 and 100, not {min}"),
                ));
            }
            if self.percent_regex.is_none() {
                return Err(invalid(
                    "min_percent",
                    "needs percent_regex to read the figure from the output".into(),
                ));
            }
        }
        if let Some(pattern) = &self.percent_regex {
            let regex = regex::Regex::new(pattern).map_err(|err| {
                invalid(
                    "percent_regex",
                    format!("is not a valid regular expression: {err}"),
                )
            })?;
            if regex.captures_len() < 2 {
                return Err(invalid(
                    "percent_regex",
                    "needs a capture group around the percentage, e.g. `TOTAL.* ([0-9.]+)%`".into(),
                ));
            }
        }
        Ok(())
    }
}

/// `*` matches any run and `?` any one character within a segment (never a `/`), ASCII case
/// ignored (Gitea's owner and repository names are case-insensitive).
fn glob_matches(pattern: &str, text: &str) -> bool {
    let pattern: Vec<char> = pattern.chars().map(|c| c.to_ascii_lowercase()).collect();
    let text: Vec<char> = text.chars().map(|c| c.to_ascii_lowercase()).collect();
    // Classic backtracking over the last `*`; linear enough for names of at most 201 characters.
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        match pattern.get(p) {
            Some('*') => {
                star = Some((p, t));
                p += 1;
            }
            Some('?') if text[t] != '/' => {
                p += 1;
                t += 1;
            }
            Some(&c) if c != '*' && c != '?' && c == text[t] => {
                p += 1;
                t += 1;
            }
            _ => match star {
                // The star takes one more character, but never a `/`.
                Some((star_p, star_t)) if text[star_t] != '/' => {
                    star = Some((star_p, star_t + 1));
                    p = star_p + 1;
                    t = star_t + 1;
                }
                _ => return false,
            },
        }
    }
    pattern[p..].iter().all(|&c| c == '*')
}

/// What to do when the gates still fail after the last continuation.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnGateFailure {
    /// Push the branch and report; no pull request.
    #[default]
    Branch,
    /// Open the pull request marked work in progress, with the gate report.
    WipPullRequest,
}

/// The operator's gates and the settings around them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatesConfig {
    #[serde(default)]
    pub gates: Vec<Gate>,
    /// Whether a repository's own `.mosaic/gates.toml` (read from its base branch) adds gates.
    #[serde(default)]
    pub trust_repository_file: bool,
    /// How many times an agent is sent back after failing gates before the issue gives up.
    #[serde(default = "default_max_continuations")]
    pub max_continuations: u32,
    #[serde(default)]
    pub on_gate_failure: OnGateFailure,
    /// Bytes of each gate's output (its end) shown to the agent and in the report.
    #[serde(default = "default_output_tail_bytes")]
    pub output_tail_bytes: usize,
}

fn default_max_continuations() -> u32 {
    3
}

fn default_output_tail_bytes() -> usize {
    DEFAULT_OUTPUT_TAIL_BYTES
}

impl Default for GatesConfig {
    fn default() -> Self {
        Self {
            gates: Vec::new(),
            trust_repository_file: false,
            max_continuations: default_max_continuations(),
            on_gate_failure: OnGateFailure::default(),
            output_tail_bytes: DEFAULT_OUTPUT_TAIL_BYTES,
        }
    }
}

/// The `[[gates]]` of a repository's own file; nothing else may be set there.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RepositoryFile {
    #[serde(default)]
    gates: Vec<Gate>,
}

/// The gates to run for one repository, and what became of its own file.
#[derive(Debug, Clone, PartialEq)]
pub struct EffectiveGates {
    /// The operator's gates for the repository first, then the repository's own.
    pub gates: Vec<Gate>,
    pub repository_file: RepositoryFileUse,
}

/// What became of a repository's `.mosaic/gates.toml`.
#[derive(Debug, Clone, PartialEq)]
pub enum RepositoryFileUse {
    /// `trust_repository_file` is off: the file, if any, was not looked at.
    NotTrusted,
    /// Trusted, but the base branch has no such file.
    Absent,
    /// Its gates were added after the operator's.
    Added { count: usize },
    /// Broken or conflicting: none of its gates were added (the operator's still run).
    Rejected { error: GatesConfigError },
}

impl GatesConfig {
    /// Parses a TOML document of this shape (`[[gates]]` and the settings) and validates it.
    pub fn from_toml(text: &str) -> Result<Self, GatesConfigError> {
        let config: Self = toml::from_str(text).map_err(|err| GatesConfigError::Parse {
            file: "gates configuration".into(),
            message: err.to_string(),
        })?;
        config.validate()?;
        Ok(config)
    }

    /// Checks every gate and setting; the error names the key (`gates[2].command must not be
    /// empty`).
    pub fn validate(&self) -> Result<(), GatesConfigError> {
        validate_gates(&self.gates, "gates", &BTreeSet::new())?;
        if !OUTPUT_TAIL_BYTES_RANGE.contains(&self.output_tail_bytes) {
            return Err(GatesConfigError::Invalid {
                key: "output_tail_bytes".into(),
                problem: format!(
                    "must be between {} and {}",
                    OUTPUT_TAIL_BYTES_RANGE.start(),
                    OUTPUT_TAIL_BYTES_RANGE.end()
                ),
            });
        }
        if self.max_continuations > 20 {
            return Err(GatesConfigError::Invalid {
                key: "max_continuations".into(),
                problem: "must be at most 20".into(),
            });
        }
        Ok(())
    }

    /// The operator's gates that apply to `repo`, in configuration order.
    pub fn gates_for(&self, repo: &RepoName) -> Vec<&Gate> {
        self.gates
            .iter()
            .filter(|gate| gate.applies_to(repo))
            .collect()
    }

    /// The gates to run for `repo`. `base_file_text` is the repository's `.mosaic/gates.toml`
    /// as read from its BASE branch (never from the agent's worktree, which the agent can
    /// write), or `None` when the base branch has none.
    ///
    /// How they combine: the operator's gates for the repository always run, unchanged; the
    /// file can only add gates after them. A repository gate may not reuse an operator gate's
    /// name (it could not replace or relax it anyway, but the report would be ambiguous), may
    /// not name `repos` (the file is about its own repository), and is validated like the
    /// operator's. Any problem rejects the whole file and is reported; the operator's gates
    /// still run.
    pub fn effective_gates(&self, repo: &RepoName, base_file_text: Option<&str>) -> EffectiveGates {
        let operator: Vec<Gate> = self.gates_for(repo).into_iter().cloned().collect();
        let repository_file = if !self.trust_repository_file {
            RepositoryFileUse::NotTrusted
        } else {
            match base_file_text {
                None => RepositoryFileUse::Absent,
                Some(text) => match self.repository_gates(text) {
                    Ok(added) => {
                        let count = added.len();
                        let mut gates = operator;
                        gates.extend(added);
                        return EffectiveGates {
                            gates,
                            repository_file: RepositoryFileUse::Added { count },
                        };
                    }
                    Err(error) => RepositoryFileUse::Rejected { error },
                },
            }
        };
        EffectiveGates {
            gates: operator,
            repository_file,
        }
    }

    /// Parses and validates a repository's file against the operator's gates.
    fn repository_gates(&self, text: &str) -> Result<Vec<Gate>, GatesConfigError> {
        let file: RepositoryFile = toml::from_str(text).map_err(|err| GatesConfigError::Parse {
            file: REPOSITORY_FILE.into(),
            message: err.to_string(),
        })?;
        let prefix = format!("{REPOSITORY_FILE}: gates");
        if file.gates.len() > MAX_REPOSITORY_GATES {
            return Err(GatesConfigError::Invalid {
                key: prefix,
                problem: format!("may hold at most {MAX_REPOSITORY_GATES} gates"),
            });
        }
        for (index, gate) in file.gates.iter().enumerate() {
            if gate.repos != all_repositories() {
                return Err(GatesConfigError::Invalid {
                    key: format!("{prefix}[{index}].repos"),
                    problem: "is not allowed here: the file applies to its own repository".into(),
                });
            }
        }
        let operator_names: BTreeSet<String> =
            self.gates.iter().map(|gate| gate_key(&gate.name)).collect();
        validate_gates(&file.gates, &prefix, &operator_names)?;
        Ok(file.gates)
    }
}

/// Names compare trimmed and case-insensitively, so `Test` cannot pose as a second `test`.
fn gate_key(name: &str) -> String {
    name.trim().to_lowercase()
}

fn validate_gates(
    gates: &[Gate],
    prefix: &str,
    taken: &BTreeSet<String>,
) -> Result<(), GatesConfigError> {
    let mut seen = BTreeSet::new();
    for (index, gate) in gates.iter().enumerate() {
        let key = format!("{prefix}[{index}]");
        gate.validate(&key)?;
        let name = gate_key(&gate.name);
        if taken.contains(&name) {
            return Err(GatesConfigError::Invalid {
                key: format!("{key}.name"),
                problem: format!("`{}` is already an operator gate", gate.name.trim()),
            });
        }
        if !seen.insert(name) {
            return Err(GatesConfigError::Invalid {
                key: format!("{key}.name"),
                problem: format!("`{}` is used by an earlier gate", gate.name.trim()),
            });
        }
    }
    Ok(())
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GatesConfigError {
    #[error("{key} {problem}")]
    Invalid { key: String, problem: String },
    #[error("{file} is not valid TOML of the expected shape: {message}")]
    Parse { file: String, message: String },
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repo(full: &str) -> RepoName {
        full.parse().unwrap()
    }

    #[test]
    fn globs_match_within_segments_and_ignore_case() {
        assert!(glob_matches("*/*", "acme/app"));
        assert!(glob_matches("acme/*", "Acme/App"));
        assert!(glob_matches("acme/app-?", "acme/app-1"));
        assert!(glob_matches("*/app*", "x/app-server"));
        assert!(!glob_matches("acme/*", "other/app"));
        assert!(!glob_matches("acme*", "acme/app"));
        assert!(!glob_matches("acme/app", "acme/app2"));
        assert!(!glob_matches("*", "acme/app"));
        assert!(!glob_matches("a?me/app", "a/me/app"));
    }

    #[test]
    fn gates_for_filters_by_glob_in_order() {
        let mut only_acme = Gate::new("acme-lint", ["lint"]);
        only_acme.repos = vec!["acme/*".into()];
        let config = GatesConfig {
            gates: vec![Gate::new("build", ["make"]), only_acme],
            ..GatesConfig::default()
        };
        let names = |repo: &str| -> Vec<String> {
            config
                .gates_for(&self::repo(repo))
                .iter()
                .map(|gate| gate.name.clone())
                .collect()
        };
        assert_eq!(names("acme/app"), ["build", "acme-lint"]);
        assert_eq!(names("other/app"), ["build"]);
    }

    #[test]
    fn defaults_fill_what_is_left_out() {
        let config = GatesConfig::from_toml(
            r#"
            [[gates]]
            name = "test"
            command = ["cargo", "test"]

            [[gates]]
            name = "coverage"
            command = ["cargo", "llvm-cov"]
            percent_regex = 'TOTAL.*\s([0-9.]+)%'
            "#,
        )
        .unwrap();
        assert!(!config.trust_repository_file);
        assert_eq!(config.max_continuations, 3);
        assert_eq!(config.on_gate_failure, OnGateFailure::Branch);
        assert_eq!(config.output_tail_bytes, DEFAULT_OUTPUT_TAIL_BYTES);
        let test = &config.gates[0];
        assert!(test.required);
        assert_eq!(test.timeout_secs, DEFAULT_TIMEOUT_SECS);
        assert_eq!(test.repos, ["*/*"]);
        assert_eq!(test.coverage_minimum(), None);
        assert_eq!(config.gates[1].coverage_minimum(), Some(85.0));
    }

    #[test]
    fn on_gate_failure_reads_both_spellings_and_refuses_others() {
        let wip = GatesConfig::from_toml("on_gate_failure = \"wip_pull_request\"").unwrap();
        assert_eq!(wip.on_gate_failure, OnGateFailure::WipPullRequest);
        let branch = GatesConfig::from_toml("on_gate_failure = \"branch\"").unwrap();
        assert_eq!(branch.on_gate_failure, OnGateFailure::Branch);
        assert!(matches!(
            GatesConfig::from_toml("on_gate_failure = \"merge\""),
            Err(GatesConfigError::Parse { .. })
        ));
        assert!(matches!(
            GatesConfig::from_toml("[[gates]]\nname = \"x\"\ncommand = [\"x\"]\ntimeout = 3"),
            Err(GatesConfigError::Parse { .. })
        ));
    }

    fn error_of(gates: Vec<Gate>) -> String {
        GatesConfig {
            gates,
            ..GatesConfig::default()
        }
        .validate()
        .unwrap_err()
        .to_string()
    }

    #[test]
    fn validation_names_the_key() {
        let ok = || Gate::new("ok", ["true"]);
        let empty = Gate::new("empty", Vec::<String>::new());
        assert_eq!(
            error_of(vec![ok(), Gate::new("b", ["x"]), empty]),
            "gates[2].command must not be empty"
        );
        let mut bad_regex = ok();
        bad_regex.percent_regex = Some("([0-9".into());
        assert!(
            error_of(vec![bad_regex])
                .starts_with("gates[0].percent_regex is not a valid regular expression")
        );
        let mut no_group = ok();
        no_group.percent_regex = Some("[0-9]+%".into());
        assert!(
            error_of(vec![no_group]).starts_with("gates[0].percent_regex needs a capture group")
        );
        let mut too_high = ok();
        too_high.percent_regex = Some("([0-9]+)%".into());
        too_high.min_percent = Some(101.0);
        assert_eq!(
            error_of(vec![too_high]),
            "gates[0].min_percent must be between 0 and 100, not 101"
        );
        let mut no_regex = ok();
        no_regex.min_percent = Some(80.0);
        assert!(error_of(vec![no_regex]).starts_with("gates[0].min_percent needs percent_regex"));
        assert_eq!(
            error_of(vec![ok(), Gate::new(" OK ", ["y"])]),
            "gates[1].name `OK` is used by an earlier gate"
        );
        assert_eq!(
            error_of(vec![Gate::new("  ", ["y"])]),
            "gates[0].name must not be empty"
        );
        let mut bad_repos = ok();
        bad_repos.repos = vec!["acme/*".into(), "acme".into()];
        assert_eq!(
            error_of(vec![bad_repos]),
            "gates[0].repos[1] `acme` must look like owner/name (globs: owner/*)"
        );
        let mut zero_timeout = ok();
        zero_timeout.timeout_secs = 0;
        assert!(error_of(vec![zero_timeout]).starts_with("gates[0].timeout_secs must be between"));
        let mut bad_env = ok();
        bad_env.env.insert("A=B".into(), "x".into());
        assert_eq!(
            error_of(vec![bad_env]),
            "gates[0].env `A=B` is not a valid variable name"
        );
        let tail = GatesConfig {
            output_tail_bytes: 10,
            ..GatesConfig::default()
        };
        assert!(
            tail.validate()
                .unwrap_err()
                .to_string()
                .starts_with("output_tail_bytes")
        );
    }

    fn operator() -> GatesConfig {
        GatesConfig {
            gates: vec![Gate::new("test", ["cargo", "test"])],
            trust_repository_file: true,
            ..GatesConfig::default()
        }
    }

    const REPOSITORY_TEXT: &str = r#"
        [[gates]]
        name = "docs"
        command = ["make", "docs"]
        required = false
    "#;

    #[test]
    fn a_trusted_file_adds_its_gates_after_the_operators() {
        let effective = operator().effective_gates(&repo("acme/app"), Some(REPOSITORY_TEXT));
        assert_eq!(
            effective.repository_file,
            RepositoryFileUse::Added { count: 1 }
        );
        let names: Vec<&str> = effective.gates.iter().map(|g| g.name.as_str()).collect();
        assert_eq!(names, ["test", "docs"]);
        assert!(effective.gates[0].required);
        assert!(!effective.gates[1].required);
    }

    #[test]
    fn an_untrusted_or_missing_file_yields_the_operators_gates() {
        let untrusted = GatesConfig {
            trust_repository_file: false,
            ..operator()
        };
        let effective = untrusted.effective_gates(&repo("acme/app"), Some(REPOSITORY_TEXT));
        assert_eq!(effective.repository_file, RepositoryFileUse::NotTrusted);
        assert_eq!(effective.gates, operator().gates);
        let absent = operator().effective_gates(&repo("acme/app"), None);
        assert_eq!(absent.repository_file, RepositoryFileUse::Absent);
        assert_eq!(absent.gates, operator().gates);
    }

    #[test]
    fn a_repository_cannot_replace_relax_or_widen_an_operator_gate() {
        let rejected = |text: &str| {
            let effective = operator().effective_gates(&repo("acme/app"), Some(text));
            assert_eq!(effective.gates, operator().gates, "{text}");
            match effective.repository_file {
                RepositoryFileUse::Rejected { error } => error.to_string(),
                other => panic!("{other:?}"),
            }
        };
        let same_name = "[[gates]]\nname = \"Test\"\ncommand = [\"true\"]\nrequired = false";
        assert_eq!(
            rejected(same_name),
            ".mosaic/gates.toml: gates[0].name `Test` is already an operator gate"
        );
        let settings = "trust_repository_file = true\nmax_continuations = 20";
        assert!(rejected(settings).starts_with(".mosaic/gates.toml is not valid TOML"));
        let repos = "[[gates]]\nname = \"x\"\ncommand = [\"x\"]\nrepos = [\"other/*\"]";
        assert!(rejected(repos).starts_with(".mosaic/gates.toml: gates[0].repos is not allowed"));
        let empty = "[[gates]]\nname = \"x\"\ncommand = []";
        assert_eq!(
            rejected(empty),
            ".mosaic/gates.toml: gates[0].command must not be empty"
        );
    }

    #[test]
    fn operator_gates_for_other_repositories_stay_out() {
        let mut config = operator();
        config.gates[0].repos = vec!["acme/*".into()];
        let effective = config.effective_gates(&repo("other/app"), Some(REPOSITORY_TEXT));
        let names: Vec<&str> = effective.gates.iter().map(|g| g.name.as_str()).collect();
        assert_eq!(names, ["docs"]);
    }
}
