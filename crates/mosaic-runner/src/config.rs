//! `[runner]` configuration: where sessions work, how long they may run, which command each
//! agent profile runs.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A configuration the runner cannot work with; every variant names the key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RunnerConfigError {
    #[error("runner.work_root must not be empty")]
    EmptyWorkRoot,
    #[error("runner.work_root `{path}` cannot be created or resolved: {message}")]
    WorkRoot { path: String, message: String },
    #[error("runner.log_dir `{path}` cannot be created or resolved: {message}")]
    LogDir { path: String, message: String },
    #[error("runner.{key} must be greater than zero")]
    Zero { key: String },
    #[error("runner.agents.{agent}.program must not be empty")]
    EmptyProgram { agent: String },
    #[error(
        "runner.agents.{agent}.can_compact needs input = \"json_lines\": a text prompt closes stdin, so no compaction request can reach the agent"
    )]
    CompactNeedsJsonLines { agent: String },
    #[error(
        "runner.agents.{agent}: protocol = \"claude_code\" needs input = \"json_lines\" and the args `-p --input-format stream-json --output-format stream-json --verbose`; missing: {missing}"
    )]
    ClaudeCodeNeedsStreamJson { agent: String, missing: String },
    #[error(
        "runner.agents.{agent}.pass_env: `{name}` is not an environment variable name (expected letters, digits and `_`, not starting with a digit)"
    )]
    PassEnvName { agent: String, name: String },
    #[error(
        "runner.agents.{agent}.{field}: `{name}` is set by the runner for every session (MOSAIC_SESSION_ID, MOSAIC_ISSUE, MOSAIC_AGENT) and cannot be configured"
    )]
    SessionVariable {
        agent: String,
        field: &'static str,
        name: String,
    },
    #[error(
        "runner.agents.{agent}.pass_env: `{name}` belongs to the coordinator's own configuration (MOSAIC_* variables, or the variable of {secret_key}); agents never receive the coordinator's settings or credentials"
    )]
    CoordinatorVariable {
        agent: String,
        name: String,
        secret_key: String,
    },
    #[error(
        "runner.agents.{agent}.{field}: `{name}` would hand the agent the value of {secret_key}, the coordinator's own credential; give the agent a credential of its own"
    )]
    CoordinatorSecret {
        agent: String,
        field: &'static str,
        name: String,
        secret_key: String,
    },
}

/// Variables an agent gets from the coordinator's environment without asking (when set there):
/// what a CLI needs to find programs, its home directory, its locale, its terminal type and a
/// place for temporary files. Nothing in it is a credential.
pub const BASE_ENV: &[&str] = &[
    "PATH",
    "HOME",
    "USER",
    "LOGNAME",
    "SHELL",
    "LANG",
    "LANGUAGE",
    "LC_ALL",
    "LC_CTYPE",
    "LC_MESSAGES",
    "TERM",
    "TMPDIR",
    "TZ",
];

/// Set by the runner for every session, after everything else, so nothing can override them:
/// the session marker identifies a session's processes in `/proc/<pid>/environ` (orphans).
pub const SESSION_ID_VAR: &str = "MOSAIC_SESSION_ID";
pub const SESSION_ISSUE_VAR: &str = "MOSAIC_ISSUE";
pub const SESSION_AGENT_VAR: &str = "MOSAIC_AGENT";
const SESSION_VARS: &[&str] = &[SESSION_ID_VAR, SESSION_ISSUE_VAR, SESSION_AGENT_VAR];

/// The prefix of the coordinator's own configuration variables (`MOSAIC_API_TOKEN`,
/// `MOSAIC_DATABASE_URL`, `MOSAIC_GITEA__TOKEN`, …): never forwarded to an agent.
const COORDINATOR_PREFIX: &str = "MOSAIC_";

/// Secrets at least this long are refused also as part of a longer value.
const CONTAINED_SECRET_MIN_CHARS: usize = 8;

/// One credential the coordinator itself holds, which no agent may receive.
#[derive(Clone, PartialEq, Eq)]
pub struct CoordinatorSecret {
    /// Its configuration key, for messages (`gitea.token`).
    pub key: String,
    /// The environment variable the coordinator reads it from, if any (`GITEA_BOT_TOKEN`).
    pub env_var: Option<String>,
    pub value: String,
}

impl std::fmt::Debug for CoordinatorSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CoordinatorSecret")
            .field("key", &self.key)
            .field("env_var", &self.env_var)
            .field("value", &"[redacted]")
            .finish()
    }
}

/// How the prompt and later requests reach the agent on stdin.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InputMode {
    /// The prompt as plain text, then stdin is closed (`claude -p`). No compaction, no `send`.
    #[default]
    Text,
    /// One JSON object per line, stdin kept open: first the prompt as a stream-json `user`
    /// message, later `user` messages for `send` and `{"type":"compact","instructions":…}`.
    JsonLines,
}

/// What the agent's stdout and stdin mean beyond single lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AgentProtocol {
    /// The generic JSON-lines protocol (the sample agent): one session is one piece of work, a
    /// `done` line (or Claude Code's `result` in text mode) ends it, compaction is a
    /// `{"type":"compact"}` control line.
    #[default]
    JsonLines,
    /// Claude Code in stream-json mode (`claude -p --input-format stream-json --output-format
    /// stream-json --verbose`): each `result` ends a turn, not the session; the session ends when
    /// its stdin is closed (see `finish_on_result`) and the CLI exits. Compaction is a user line
    /// `/compact <instructions>`; rotation waits for the current turn's `result`. The runner sets
    /// [`CLAUDE_CODE_ENV`] so the coordinator's thresholds, not the CLI, decide compaction.
    ClaudeCode,
}

impl AgentProtocol {
    /// The highest rotate threshold this kind of agent can reach. Claude Code refuses every
    /// further model call once its context passed its blocking limit, 177,000 of a 200k window
    /// (88.5%; measured with 2.1.328, docs/AGENTS.md), so a threshold above that would never be
    /// met: its sessions rotate at 85% at most.
    pub fn max_rotate_threshold(self) -> Option<f64> {
        match self {
            Self::JsonLines => None,
            Self::ClaudeCode => Some(0.85),
        }
    }
}

/// Set for `protocol = "claude_code"` sessions, under the profile's own `env` (which may override
/// them): no automatic compaction (measured with 2.1.328: `DISABLE_AUTO_COMPACT=1` stops both the
/// threshold and the reactive compaction), no self-update, no traffic beyond the model API.
pub const CLAUDE_CODE_ENV: &[(&str, &str)] = &[
    ("DISABLE_AUTO_COMPACT", "1"),
    ("DISABLE_AUTOUPDATER", "1"),
    ("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "1"),
];

/// The command line of one agent profile.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentCommand {
    pub program: String,
    #[serde(default)]
    pub args: Vec<String>,
    /// Set in the agent's environment (over [`BASE_ENV`] and `pass_env`). Values may be
    /// credentials, so they serialise as `[redacted]` (check-config shows the names only).
    #[serde(default, serialize_with = "redacted_values")]
    pub env: BTreeMap<String, String>,
    /// Variables copied from the coordinator's environment when set there, beyond [`BASE_ENV`]
    /// (an agent's own API key). The coordinator's own variables are refused.
    #[serde(default)]
    pub pass_env: Vec<String>,
    #[serde(default)]
    pub input: InputMode,
    /// Whether the agent takes compaction requests (needs `json_lines` input): a
    /// `{"type":"compact"}` control line, or `/compact` for `protocol = "claude_code"`.
    #[serde(default)]
    pub can_compact: bool,
    #[serde(default)]
    pub protocol: AgentProtocol,
    /// `protocol = "claude_code"`: `true` closes stdin once every turn sent has its `result`, so
    /// the CLI exits and the session ends with that result. `false` (the default) keeps the
    /// session open and says so in its snapshot (`waiting`): the coordinator verifies the work
    /// (the quality gates) and then sends the next turn (a continuation) or finishes it.
    #[serde(default)]
    pub finish_on_result: bool,
    /// Overrides `runner.stall_timeout_secs` for this agent.
    #[serde(
        default,
        deserialize_with = "optional_secs",
        serialize_with = "optional_as_secs"
    )]
    pub stall_timeout_secs: Option<Duration>,
    /// Overrides `runner.time_limit_secs` for this agent.
    #[serde(
        default,
        deserialize_with = "optional_secs",
        serialize_with = "optional_as_secs"
    )]
    pub time_limit_secs: Option<Duration>,
}

/// The `[runner]` section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunnerConfig {
    /// Every session works in `<work_root>/<owner>/<repo>/issue-<n>`.
    pub work_root: PathBuf,
    /// Per-session logs (stderr and unknown stdout); `<work_root>/.mosaic-logs` when unset.
    #[serde(default)]
    pub log_dir: Option<PathBuf>,
    /// Size limit of one session's log file.
    #[serde(default = "default_log_max_bytes")]
    pub log_max_bytes: u64,
    /// No output for this long: the session is stalled and killed.
    #[serde(
        default = "default_stall_timeout",
        deserialize_with = "secs",
        serialize_with = "as_secs"
    )]
    pub stall_timeout_secs: Duration,
    /// Hard limit on one session's run time.
    #[serde(
        default = "default_time_limit",
        deserialize_with = "secs",
        serialize_with = "as_secs"
    )]
    pub time_limit_secs: Duration,
    /// Between SIGTERM and SIGKILL when a process group is ended.
    #[serde(
        default = "default_kill_grace",
        deserialize_with = "secs",
        serialize_with = "as_secs"
    )]
    pub kill_grace_secs: Duration,
    /// How long a compaction may take to be confirmed (boundary plus a fresh usage reading).
    #[serde(
        default = "default_compact_timeout",
        deserialize_with = "secs",
        serialize_with = "as_secs"
    )]
    pub compact_timeout_secs: Duration,
    /// A rotation of a turn-based agent (`protocol = "claude_code"`) waits at most this long for
    /// the current turn's `result` before the session is closed anyway.
    #[serde(
        default = "default_rotate_wait",
        deserialize_with = "secs",
        serialize_with = "as_secs"
    )]
    pub rotate_wait_secs: Duration,
    /// Command per agent profile name.
    #[serde(default)]
    pub agents: BTreeMap<String, AgentCommand>,
}

fn default_log_max_bytes() -> u64 {
    10 * 1024 * 1024
}
fn default_stall_timeout() -> Duration {
    Duration::from_secs(300)
}
fn default_time_limit() -> Duration {
    Duration::from_secs(4 * 3600)
}
fn default_kill_grace() -> Duration {
    Duration::from_secs(10)
}
fn default_compact_timeout() -> Duration {
    Duration::from_secs(180)
}
fn default_rotate_wait() -> Duration {
    Duration::from_secs(300)
}

/// Seconds as a number (fractions allowed), so TOML stays plain: `stall_timeout_secs = 300`.
fn secs<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
    let seconds = f64::deserialize(deserializer)?;
    Duration::try_from_secs_f64(seconds).map_err(|_| {
        serde::de::Error::custom(format!(
            "{seconds} is not a usable number of seconds (needs a finite value >= 0)"
        ))
    })
}

fn as_secs<S: Serializer>(duration: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_f64(duration.as_secs_f64())
}

fn optional_as_secs<S: Serializer>(
    duration: &Option<Duration>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    match duration {
        Some(duration) => serializer.serialize_some(&duration.as_secs_f64()),
        None => serializer.serialize_none(),
    }
}

/// `env` as check-config shows it: a value is replaced when its name says it is a credential
/// (`…_KEY`, `…_TOKEN`, `…_SECRET`, `…PASSWORD…`) or it looks like one (a known key prefix,
/// `token=…`); every other value (`ANTHROPIC_LOG = "error"`) is shown, so a reader can check it.
fn redacted_values<S: Serializer>(
    env: &BTreeMap<String, String>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.collect_map(
        env.iter()
            .map(|(name, value)| (name, shown_env_value(name, value))),
    )
}

fn shown_env_value<'v>(name: &str, value: &'v str) -> &'v str {
    let upper = name.to_ascii_uppercase();
    let secret_name = ["KEY", "TOKEN", "SECRET"]
        .iter()
        .any(|suffix| upper == *suffix || upper.ends_with(&format!("_{suffix}")))
        || upper.contains("PASSWORD")
        || upper.contains("PASSWD");
    let looks_secret = mosaic_security::Redactor::default().redact(value) != value;
    if secret_name || looks_secret {
        mosaic_security::REDACTION
    } else {
        value
    }
}

fn optional_secs<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<Duration>, D::Error> {
    secs(deserializer).map(Some)
}

impl RunnerConfig {
    /// A configuration with defaults, rooted at `work_root`, with no agents.
    pub fn new(work_root: impl Into<PathBuf>) -> Self {
        Self {
            work_root: work_root.into(),
            log_dir: None,
            log_max_bytes: default_log_max_bytes(),
            stall_timeout_secs: default_stall_timeout(),
            time_limit_secs: default_time_limit(),
            kill_grace_secs: default_kill_grace(),
            compact_timeout_secs: default_compact_timeout(),
            rotate_wait_secs: default_rotate_wait(),
            agents: BTreeMap::new(),
        }
    }

    /// Checks everything that can be checked without touching the file system.
    pub fn validate(&self) -> Result<(), RunnerConfigError> {
        if self.work_root.as_os_str().is_empty() {
            return Err(RunnerConfigError::EmptyWorkRoot);
        }
        let zero = |key: &str| RunnerConfigError::Zero {
            key: key.to_owned(),
        };
        if self.log_max_bytes == 0 {
            return Err(zero("log_max_bytes"));
        }
        for (key, value) in [
            ("stall_timeout_secs", self.stall_timeout_secs),
            ("time_limit_secs", self.time_limit_secs),
            ("compact_timeout_secs", self.compact_timeout_secs),
            ("rotate_wait_secs", self.rotate_wait_secs),
        ] {
            if value.is_zero() {
                return Err(zero(key));
            }
        }
        for (agent, command) in &self.agents {
            if command.program.trim().is_empty() {
                return Err(RunnerConfigError::EmptyProgram {
                    agent: agent.clone(),
                });
            }
            if command.can_compact && command.input != InputMode::JsonLines {
                return Err(RunnerConfigError::CompactNeedsJsonLines {
                    agent: agent.clone(),
                });
            }
            if command.protocol == AgentProtocol::ClaudeCode {
                let missing = command.missing_stream_json();
                if !missing.is_empty() {
                    return Err(RunnerConfigError::ClaudeCodeNeedsStreamJson {
                        agent: agent.clone(),
                        missing: missing.join(", "),
                    });
                }
            }
            command.validate_environment(agent)?;
            for (key, value) in [
                ("stall_timeout_secs", command.stall_timeout_secs),
                ("time_limit_secs", command.time_limit_secs),
            ] {
                if value.is_some_and(|duration| duration.is_zero()) {
                    return Err(zero(&format!("agents.{agent}.{key}")));
                }
            }
        }
        Ok(())
    }
}

impl RunnerConfig {
    /// Refuses any agent environment that would carry one of the coordinator's own credentials:
    /// a `pass_env` name the coordinator reads a credential from, or whose current value (looked
    /// up with `lookup`) is one, and an `env` value that is one.
    pub fn refuse_coordinator_secrets(
        &self,
        secrets: &[CoordinatorSecret],
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<(), RunnerConfigError> {
        // Long secrets also count inside a value (a URL with the token in it); a short one only
        // as the whole value, or every value with a common digit in it would be refused.
        let holding = |value: &str| {
            secrets.iter().find(|secret| {
                !secret.value.is_empty()
                    && (secret.value == value
                        || (secret.value.chars().count() >= CONTAINED_SECRET_MIN_CHARS
                            && value.contains(secret.value.as_str())))
            })
        };
        for (agent, command) in &self.agents {
            for name in &command.pass_env {
                if let Some(secret) = secrets
                    .iter()
                    .find(|secret| secret.env_var.as_deref() == Some(name.as_str()))
                {
                    return Err(RunnerConfigError::CoordinatorVariable {
                        agent: agent.clone(),
                        name: name.clone(),
                        secret_key: secret.key.clone(),
                    });
                }
                if let Some(secret) = lookup(name).as_deref().and_then(holding) {
                    return Err(RunnerConfigError::CoordinatorSecret {
                        agent: agent.clone(),
                        field: "pass_env",
                        name: name.clone(),
                        secret_key: secret.key.clone(),
                    });
                }
            }
            for (name, value) in &command.env {
                if let Some(secret) = holding(value) {
                    return Err(RunnerConfigError::CoordinatorSecret {
                        agent: agent.clone(),
                        field: "env",
                        name: name.clone(),
                        secret_key: secret.key.clone(),
                    });
                }
            }
        }
        Ok(())
    }
}

impl AgentCommand {
    /// What a `claude_code` command lacks to speak stream-json both ways.
    fn missing_stream_json(&self) -> Vec<&'static str> {
        let has_flag = |flag: &str| self.args.iter().any(|arg| arg == flag);
        let has_value = |option: &str, value: &str| {
            self.args
                .windows(2)
                .any(|pair| pair[0] == option && pair[1] == value)
                || self.args.iter().any(|arg| {
                    arg.strip_prefix(option)
                        .and_then(|rest| rest.strip_prefix('='))
                        == Some(value)
                })
        };
        let mut missing = Vec::new();
        if self.input != InputMode::JsonLines {
            missing.push("input = \"json_lines\"");
        }
        if !has_flag("-p") && !has_flag("--print") {
            missing.push("-p");
        }
        if !has_value("--input-format", "stream-json") {
            missing.push("--input-format stream-json");
        }
        if !has_value("--output-format", "stream-json") {
            missing.push("--output-format stream-json");
        }
        if !has_flag("--verbose") {
            missing.push("--verbose");
        }
        missing
    }

    fn validate_environment(&self, agent: &str) -> Result<(), RunnerConfigError> {
        for name in &self.pass_env {
            if !is_variable_name(name) {
                return Err(RunnerConfigError::PassEnvName {
                    agent: agent.to_owned(),
                    name: name.clone(),
                });
            }
            if SESSION_VARS.contains(&name.as_str()) {
                return Err(RunnerConfigError::SessionVariable {
                    agent: agent.to_owned(),
                    field: "pass_env",
                    name: name.clone(),
                });
            }
            if name.starts_with(COORDINATOR_PREFIX) {
                return Err(RunnerConfigError::CoordinatorVariable {
                    agent: agent.to_owned(),
                    name: name.clone(),
                    secret_key: "its configuration".to_owned(),
                });
            }
        }
        if let Some(name) = self
            .env
            .keys()
            .find(|name| SESSION_VARS.contains(&name.as_str()))
        {
            return Err(RunnerConfigError::SessionVariable {
                agent: agent.to_owned(),
                field: "env",
                name: name.clone(),
            });
        }
        Ok(())
    }

    /// The agent's whole environment: [`BASE_ENV`] and `pass_env` as far as `lookup` (the
    /// coordinator's environment) has them, then `env`, then the session variables. Nothing else
    /// of the coordinator's environment is inherited.
    pub fn environment(
        &self,
        lookup: impl Fn(&str) -> Option<OsString>,
        session: &SessionVariables<'_>,
    ) -> Vec<(OsString, OsString)> {
        let mut vars: BTreeMap<OsString, OsString> = BTreeMap::new();
        for name in BASE_ENV
            .iter()
            .copied()
            .chain(self.pass_env.iter().map(String::as_str))
        {
            if let Some(value) = lookup(name) {
                vars.insert(name.into(), value);
            }
        }
        if self.protocol == AgentProtocol::ClaudeCode {
            for (name, value) in CLAUDE_CODE_ENV {
                vars.insert(name.into(), value.into());
            }
        }
        for (name, value) in &self.env {
            vars.insert(name.into(), value.into());
        }
        for (name, value) in [
            (SESSION_ID_VAR, session.id),
            (SESSION_ISSUE_VAR, session.issue),
            (SESSION_AGENT_VAR, session.agent),
        ] {
            vars.insert(name.into(), value.into());
        }
        vars.into_iter().collect()
    }
}

/// The values of the session variables.
#[derive(Debug, Clone, Copy)]
pub struct SessionVariables<'a> {
    pub id: &'a str,
    pub issue: &'a str,
    pub agent: &'a str,
}

fn is_variable_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|first| first.is_ascii_alphabetic() || first == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<RunnerConfig, String> {
        let config: RunnerConfig = toml::from_str(text).map_err(|e| e.to_string())?;
        config.validate().map_err(|e| e.to_string())?;
        Ok(config)
    }

    #[test]
    fn reads_a_full_section() {
        let config = parse(
            r#"
            work_root = "/var/lib/mosaic/work"
            stall_timeout_secs = 120
            time_limit_secs = 0.5
            [agents.sonnet]
            program = "claude"
            args = ["-p", "--output-format", "stream-json", "--verbose", "--model", "sonnet"]
            env = { ANTHROPIC_LOG = "error" }
            [agents.sample]
            program = "mosaic-sample-agent"
            input = "json_lines"
            can_compact = true
            stall_timeout_secs = 5
            "#,
        )
        .unwrap();
        assert_eq!(config.stall_timeout_secs, Duration::from_secs(120));
        assert_eq!(config.time_limit_secs, Duration::from_millis(500));
        assert_eq!(config.kill_grace_secs, Duration::from_secs(10));
        assert_eq!(config.agents["sonnet"].input, InputMode::Text);
        assert_eq!(config.agents["sonnet"].args.len(), 6);
        assert!(config.agents["sample"].can_compact);
        assert_eq!(
            config.agents["sample"].stall_timeout_secs,
            Some(Duration::from_secs(5))
        );
    }

    #[test]
    fn rejects_bad_sections() {
        let check = |text: &str, expect: &str| {
            let err = parse(text).unwrap_err();
            assert!(err.contains(expect), "{text}: {err}");
        };
        check(r#"work_root = """#, "work_root must not be empty");
        check(
            "work_root = \"/w\"\nstall_timeout_secs = -1",
            "not a usable number of seconds",
        );
        check(
            "work_root = \"/w\"\ntime_limit_secs = 0",
            "time_limit_secs must be greater",
        );
        check("work_root = \"/w\"\nlog_max_bytes = 0", "log_max_bytes");
        check(
            "work_root = \"/w\"\n[agents.x]\nprogram = \" \"",
            "agents.x.program",
        );
        check(
            "work_root = \"/w\"\n[agents.x]\nprogram = \"claude\"\ncan_compact = true",
            "agents.x.can_compact",
        );
        check(
            "work_root = \"/w\"\n[agents.x]\nprogram = \"a\"\nstall_timeout_secs = 0",
            "agents.x.stall_timeout_secs",
        );
        check("work_root = \"/w\"\nbogus = 1", "unknown field");
    }

    #[test]
    fn claude_code_needs_stream_json_both_ways_and_gets_its_environment() {
        let agent =
            "work_root = \"/w\"\n[agents.c]\nprogram = \"claude\"\nprotocol = \"claude_code\"\n";
        let err = parse(&format!("{agent}args = [\"-p\"]")).unwrap_err();
        assert!(
            err.contains("runner.agents.c: protocol = \"claude_code\" needs")
                && err.contains("missing: input = \"json_lines\", --input-format stream-json, --output-format stream-json, --verbose"),
            "{err}"
        );
        let config = parse(&format!(
            "{agent}input = \"json_lines\"\ncan_compact = true\nargs = [\"-p\", \"--input-format=stream-json\", \"--output-format\", \"stream-json\", \"--verbose\"]\nenv = {{ CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC = \"0\" }}"
        ))
        .unwrap();
        let command = &config.agents["c"];
        assert_eq!(command.protocol, AgentProtocol::ClaudeCode);
        assert!(
            !command.finish_on_result,
            "kept open for the gates' continuations"
        );
        assert_eq!(config.rotate_wait_secs, Duration::from_secs(300));
        let env = command.environment(
            |_| None,
            &SessionVariables {
                id: "s",
                issue: "o/r#1",
                agent: "c",
            },
        );
        let value = |name: &str| {
            env.iter()
                .find(|(key, _)| key == name)
                .map(|(_, value)| value.to_string_lossy().into_owned())
        };
        assert_eq!(value("DISABLE_AUTO_COMPACT").as_deref(), Some("1"));
        assert_eq!(value("DISABLE_AUTOUPDATER").as_deref(), Some("1"));
        // The profile's own env wins.
        assert_eq!(
            value("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC").as_deref(),
            Some("0")
        );
        // The generic protocol gets none of them.
        let generic = parse("work_root = \"/w\"\n[agents.g]\nprogram = \"a\"").unwrap();
        let env = generic.agents["g"].environment(
            |_| None,
            &SessionVariables {
                id: "s",
                issue: "o/r#1",
                agent: "g",
            },
        );
        assert!(!env.iter().any(|(key, _)| key == "DISABLE_AUTO_COMPACT"));
    }

    #[test]
    fn pass_env_names_are_checked() {
        let check = |text: &str, expect: &str| {
            let err = parse(text).unwrap_err();
            assert!(err.contains(expect), "{text}: {err}");
        };
        let agent = "work_root = \"/w\"\n[agents.x]\nprogram = \"claude\"\n";
        check(
            &format!("{agent}pass_env = [\"MOSAIC_API_TOKEN\"]"),
            "runner.agents.x.pass_env: `MOSAIC_API_TOKEN` belongs to the coordinator",
        );
        check(
            &format!("{agent}pass_env = [\"MOSAIC_GITEA__TOKEN\"]"),
            "`MOSAIC_GITEA__TOKEN` belongs to the coordinator",
        );
        check(
            &format!("{agent}pass_env = [\"MOSAIC_SESSION_ID\"]"),
            "set by the runner",
        );
        check(
            &format!("{agent}env = {{ MOSAIC_ISSUE = \"o/r#1\" }}"),
            "runner.agents.x.env: `MOSAIC_ISSUE` is set by the runner",
        );
        check(
            &format!("{agent}pass_env = [\"A=B\"]"),
            "`A=B` is not an environment variable name",
        );
        let config = parse(&format!(
            "{agent}pass_env = [\"ANTHROPIC_API_KEY\", \"_X1\"]"
        ))
        .unwrap();
        assert_eq!(config.agents["x"].pass_env, ["ANTHROPIC_API_KEY", "_X1"]);
    }

    fn secrets() -> Vec<CoordinatorSecret> {
        vec![
            CoordinatorSecret {
                key: "gitea.token".into(),
                env_var: Some("GITEA_BOT_TOKEN".into()),
                value: "bot-token-123456".into(),
            },
            CoordinatorSecret {
                key: "parser.api_key".into(),
                env_var: Some("ANTHROPIC_API_KEY".into()),
                value: "sk-ant-coordinator".into(),
            },
        ]
    }

    #[test]
    fn the_coordinators_secrets_are_never_forwarded() {
        let lookup = |name: &str| match name {
            "GITEA_BOT_TOKEN" => Some("bot-token-123456".to_owned()),
            "COPY_OF_THE_TOKEN" => Some("bot-token-123456".to_owned()),
            "AGENT_KEY" => Some("sk-ant-agent-own".to_owned()),
            _ => None,
        };
        let with = |pass_env: &[&str], env: &[(&str, &str)]| {
            let mut config = RunnerConfig::new("/w");
            config.agents.insert(
                "claude".into(),
                AgentCommand {
                    program: "claude".into(),
                    args: vec![],
                    env: env
                        .iter()
                        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                        .collect(),
                    pass_env: pass_env.iter().map(|n| (*n).to_owned()).collect(),
                    input: InputMode::Text,
                    can_compact: false,
                    protocol: AgentProtocol::JsonLines,
                    finish_on_result: true,
                    stall_timeout_secs: None,
                    time_limit_secs: None,
                },
            );
            config
                .refuse_coordinator_secrets(&secrets(), lookup)
                .map_err(|err| err.to_string())
        };
        let err = with(&["GITEA_BOT_TOKEN"], &[]).unwrap_err();
        assert!(
            err.contains("runner.agents.claude.pass_env: `GITEA_BOT_TOKEN`"),
            "{err}"
        );
        assert!(err.contains("gitea.token"), "{err}");
        // Listed by name even while unset.
        let err = with(&["ANTHROPIC_API_KEY"], &[]).unwrap_err();
        assert!(
            err.contains("`ANTHROPIC_API_KEY`") && err.contains("parser.api_key"),
            "{err}"
        );
        // Another name holding the same value.
        let err = with(&["COPY_OF_THE_TOKEN"], &[]).unwrap_err();
        assert!(
            err.contains("`COPY_OF_THE_TOKEN` would hand the agent the value of gitea.token"),
            "{err}"
        );
        let err = with(
            &[],
            &[("GIT_URL", "https://bot:bot-token-123456@git.example.com")],
        )
        .unwrap_err();
        assert!(err.contains("runner.agents.claude.env: `GIT_URL`"), "{err}");
        let err = with(&[], &[("TOKEN", "sk-ant-coordinator")]).unwrap_err();
        assert!(err.contains("runner.agents.claude.env: `TOKEN`"), "{err}");
        assert!(
            !err.contains("sk-ant-coordinator"),
            "the message never shows the value: {err}"
        );
        with(&["AGENT_KEY", "UNSET"], &[("OTHER", "value")]).unwrap();
    }

    #[test]
    fn the_environment_is_built_in_layers() {
        let command = AgentCommand {
            program: "agent".into(),
            args: vec![],
            env: [
                ("LANG".to_owned(), "C.UTF-8".to_owned()),
                ("FOO".to_owned(), "bar".to_owned()),
            ]
            .into(),
            pass_env: vec!["AGENT_KEY".into(), "UNSET".into()],
            input: InputMode::Text,
            can_compact: false,
            protocol: AgentProtocol::JsonLines,
            finish_on_result: true,
            stall_timeout_secs: None,
            time_limit_secs: None,
        };
        let coordinator = |name: &str| {
            [
                ("PATH", "/usr/bin"),
                ("LANG", "de_DE.UTF-8"),
                ("AGENT_KEY", "k"),
                ("GITEA_BOT_TOKEN", "t"),
                ("MOSAIC_SESSION_ID", "forged"),
            ]
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| OsString::from(v))
        };
        let env = command.environment(
            coordinator,
            &SessionVariables {
                id: "s-1",
                issue: "o/r#7",
                agent: "sonnet",
            },
        );
        let shown: Vec<(String, String)> = env
            .into_iter()
            .map(|(k, v)| {
                (
                    k.to_string_lossy().into_owned(),
                    v.to_string_lossy().into_owned(),
                )
            })
            .collect();
        let expected: Vec<(String, String)> = [
            ("AGENT_KEY", "k"),
            ("FOO", "bar"),
            ("LANG", "C.UTF-8"),
            ("MOSAIC_AGENT", "sonnet"),
            ("MOSAIC_ISSUE", "o/r#7"),
            ("MOSAIC_SESSION_ID", "s-1"),
            ("PATH", "/usr/bin"),
        ]
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
        assert_eq!(shown, expected);
    }
}

#[cfg(test)]
mod shown_env_tests {
    use super::*;

    #[test]
    fn only_credentials_are_hidden_in_the_shown_environment() {
        let env: BTreeMap<String, String> = [
            ("ANTHROPIC_LOG", "error"),
            ("ANTHROPIC_API_KEY", "sk-ant-api03-abcdefghijklmnopqrstuvwx"),
            ("GH_TOKEN", "plain-looking"),
            ("DB_PASSWORD_FILE", "/run/secrets/db"),
            ("CLIENT_SECRET", "x"),
            ("EXTRA_ARGS", "--verbose"),
            ("CONFIG", "Authorization: Bearer abcdef123456"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        #[derive(Serialize)]
        struct Shown<'a>(#[serde(serialize_with = "redacted_values")] &'a BTreeMap<String, String>);
        let shown = serde_json::to_value(Shown(&env)).unwrap();
        assert_eq!(shown["ANTHROPIC_LOG"], "error");
        assert_eq!(shown["EXTRA_ARGS"], "--verbose");
        for hidden in [
            "ANTHROPIC_API_KEY",
            "GH_TOKEN",
            "DB_PASSWORD_FILE",
            "CLIENT_SECRET",
            "CONFIG",
        ] {
            assert_eq!(shown[hidden], "[redacted]", "{hidden}");
        }
    }
}
