//! `[runner]` configuration: where sessions work, how long they may run, which command each
//! agent profile runs.

use std::collections::BTreeMap;
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

/// The command line of one agent profile.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentCommand {
    pub program: String,
    #[serde(default)]
    pub args: Vec<String>,
    /// Added to the coordinator's own environment. Values may be credentials, so they
    /// serialise as `[redacted]` (check-config shows the names only).
    #[serde(default, serialize_with = "redacted_values")]
    pub env: BTreeMap<String, String>,
    #[serde(default)]
    pub input: InputMode,
    /// Whether the agent honours `{"type":"compact"}` control lines (needs `json_lines` input).
    #[serde(default)]
    pub can_compact: bool,
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

fn redacted_values<S: Serializer>(
    env: &BTreeMap<String, String>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.collect_map(env.keys().map(|name| (name, "[redacted]")))
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
}
