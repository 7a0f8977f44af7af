//! Configuration: built-in defaults < TOML file < environment, validated once at start.
//!
//! Each crate owns the struct for its own section; this module composes them, maps the
//! environment names operators already use (`PORT`, `GITEA_WEBHOOK_SECRET`, …) onto them, and
//! turns every problem into one clear message (exit status 78).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use figment::providers::{Format, Toml};
use figment::value::{Dict, Map, Value};
use figment::{Figment, Metadata, Profile, Provider};
use serde::{Deserialize, Serialize};

use crate::logging::LogConfig;

/// The file read when `--config` is not given, if it exists.
pub const DEFAULT_CONFIG_FILE: &str = "mosaic.toml";

/// Every setting of the coordinator.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub server: mosaic_http::HttpConfig,
    pub log: LogConfig,
    pub webhook: mosaic_http::WebhookConfig,
    pub api: mosaic_http::ApiConfig,
    pub store: mosaic_store::StoreConfig,
    pub inbox: mosaic_engine::inbox::InboxConfig,
    pub parser: mosaic_parser::ParserConfig,
    /// Absent: no Gitea configured (deliveries are recorded; nothing is read from or written to
    /// Gitea).
    pub gitea: Option<mosaic_gitea::GiteaConfig>,
    /// Absent: sessions work under `data/work` and no agent command is configured.
    pub runner: Option<mosaic_runner::RunnerConfig>,
    /// Agent profiles (`[[agents]]`); empty: the built-in defaults (opus, sonnet, haiku, glm,
    /// minimax).
    pub agents: Vec<mosaic_domain::AgentProfile>,
    pub assignment: mosaic_domain::assignment::AssignmentPolicy,
    /// Order among ready issues by label (`[priorities]`).
    pub priorities: mosaic_domain::queue::PriorityOrder,
    pub engine: mosaic_engine::engine::EngineConfig,
    pub outbox: mosaic_engine::outbox::OutboxConfig,
    /// How long delivery bodies and session logs are kept (`[retention]`).
    pub retention: crate::retention::RetentionConfig,
    /// Where the per-issue git worktrees live and how branches are named (`[workspace]`); used
    /// when Gitea is configured with a token.
    pub workspace: mosaic_workspace::WorkspaceConfig,
    /// Quality gates run in an issue's worktree before its branch is published (`[gates]`,
    /// each gate a `[[gates.gates]]`); none configured: published without a check.
    pub gates: mosaic_gates::GatesConfig,
}

/// Environment variables with names of their own (kept from the original coordinator), and the
/// setting each one feeds.
const NAMED_ENV: &[NamedEnv] = &[
    NamedEnv::set("HOST", "server.host"),
    NamedEnv::set("PORT", "server.port"),
    NamedEnv::set("LOG_LEVEL", "log.level"),
    NamedEnv::append("GITEA_WEBHOOK_SECRET", "webhook.secrets"),
    NamedEnv::set("MOSAIC_API_TOKEN", "api.token"),
    NamedEnv::set("MOSAIC_DATABASE_URL", "store.url"),
    NamedEnv::set("ANTHROPIC_API_KEY", "parser.api_key"),
    NamedEnv::set("GITEA_URL", "gitea.url"),
    NamedEnv::set("GITEA_BOT_TOKEN", "gitea.token"),
    NamedEnv::set("GITEA_BOT_USERNAME", "gitea.bot_username"),
];

/// Keys whose values are never shown (check-config prints `[redacted]`).
const SECRET_KEYS: &[&str] = &[
    "webhook.secrets",
    "api.token",
    "parser.api_key",
    "gitea.token",
];

#[derive(Debug, Clone, Copy)]
struct NamedEnv {
    var: &'static str,
    key: &'static str,
    /// Adds to a list instead of replacing it (a webhook secret joins those in the file).
    append: bool,
}

impl NamedEnv {
    const fn set(var: &'static str, key: &'static str) -> Self {
        Self {
            var,
            key,
            append: false,
        }
    }
    const fn append(var: &'static str, key: &'static str) -> Self {
        Self {
            var,
            key,
            append: true,
        }
    }
}

/// One environment variable as a figment provider, so errors and `check-config` can say
/// "from `PORT` environment variable".
struct EnvVarProvider {
    var: String,
    /// The dotted configuration key it sets.
    key: String,
    value: String,
    /// Adds to a list instead of replacing it (a webhook secret joins those in the file).
    append: bool,
}

impl EnvVarProvider {
    /// The value as configuration data: secrets and the named variables stay strings (the
    /// target types parse them with their own messages); `MOSAIC_*` values are read like
    /// figment reads environment values (numbers, booleans, arrays).
    fn value(&self, parse: bool) -> Value {
        if parse && !is_secret_key(&self.key) {
            self.value
                .parse::<Value>()
                .unwrap_or_else(|_| Value::from(self.value.clone()))
        } else {
            Value::from(self.value.clone())
        }
    }
}

struct Parsed(EnvVarProvider);

impl Provider for EnvVarProvider {
    fn metadata(&self) -> Metadata {
        Metadata::named(format!("`{}` environment variable", self.var))
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        Ok(nest(&self.key, self.value(false), self.append))
    }
}

impl Provider for Parsed {
    fn metadata(&self) -> Metadata {
        self.0.metadata()
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        Ok(nest(&self.0.key, self.0.value(true), self.0.append))
    }
}

/// `{"a": {"b": value}}` for key `a.b`, in the default profile.
fn nest(key: &str, leaf: Value, append: bool) -> Map<Profile, Dict> {
    let mut value = if append {
        Value::from(vec![leaf])
    } else {
        leaf
    };
    for part in key.rsplit('.') {
        let mut dict = Dict::new();
        dict.insert(part.to_owned(), value);
        value = Value::from(dict);
    }
    let dict = match value {
        Value::Dict(_, dict) => dict,
        _ => Dict::new(),
    };
    Profile::Default.collect(dict)
}

/// A configuration problem, already worded for the operator.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

/// Everything needed to read the configuration, so tests can supply their own environment.
#[derive(Debug, Clone)]
pub struct Sources {
    pub file: Option<PathBuf>,
    /// The environment, as (name, value) pairs.
    pub env: Vec<(String, String)>,
    /// Where `mosaic.toml` is looked for when no file is given.
    pub working_dir: PathBuf,
}

impl Sources {
    pub fn from_process(file: Option<PathBuf>) -> Self {
        Self {
            file,
            env: std::env::vars().collect(),
            working_dir: PathBuf::from("."),
        }
    }
}

/// The merged, not yet extracted configuration.
pub fn figment(sources: &Sources) -> Result<Figment, ConfigError> {
    let mut figment = Figment::new();
    match &sources.file {
        Some(path) => {
            check_readable(path)?;
            figment = figment.merge(Toml::file_exact(path));
        }
        None => {
            let default = sources.working_dir.join(DEFAULT_CONFIG_FILE);
            if default.exists() {
                check_readable(&default)?;
                figment = figment.merge(Toml::file_exact(default));
            }
        }
    }

    let named: Vec<&str> = NAMED_ENV.iter().map(|e| e.var).collect();
    // MOSAIC_<SECTION>__<KEY>, except the variables with names of their own.
    for (name, value) in &sources.env {
        let Some(rest) = name.strip_prefix("MOSAIC_") else {
            continue;
        };
        if named.contains(&name.as_str()) || rest.is_empty() {
            continue;
        }
        let key = rest
            .to_ascii_lowercase()
            .split("__")
            .collect::<Vec<_>>()
            .join(".");
        figment = figment.merge(Parsed(EnvVarProvider {
            var: name.clone(),
            key,
            value: value.clone(),
            append: false,
        }));
    }
    let env_map: BTreeMap<&str, &str> = sources
        .env
        .iter()
        .map(|(name, value)| (name.as_str(), value.as_str()))
        .collect();
    for env in NAMED_ENV {
        if let Some(value) = env_map.get(env.var) {
            let provider = EnvVarProvider {
                var: env.var.to_owned(),
                key: env.key.to_owned(),
                value: (*value).to_owned(),
                append: env.append,
            };
            figment = if env.append {
                figment.admerge(provider)
            } else {
                figment.merge(provider)
            };
        }
    }
    Ok(figment)
}

fn check_readable(path: &Path) -> Result<(), ConfigError> {
    std::fs::read_to_string(path).map(|_| ()).map_err(|err| {
        ConfigError(format!(
            "cannot read configuration file `{}`: {err}",
            path.display()
        ))
    })
}

/// Reads and validates the configuration.
pub fn load(sources: &Sources) -> Result<(Config, Figment), ConfigError> {
    let figment = figment(sources)?;
    let config: Config = figment.extract().map_err(|err| describe(&err))?;
    Ok((config, figment))
}

/// Extra checks for `serve`: what it cannot run without.
pub fn validate_for_serve(config: &Config) -> Result<(), ConfigError> {
    if config.webhook.secrets.is_empty() {
        return Err(ConfigError(
            "no webhook secret configured: set GITEA_WEBHOOK_SECRET (or `webhook.secrets` in the \
             configuration file) to the secret of the Gitea webhook"
                .to_owned(),
        ));
    }
    validate(config)
}

/// Every rule a loaded configuration must satisfy (`check-config` applies it too; `serve` also
/// needs a webhook secret).
/// The longest `outbox.coalesce_ms` accepted.
const MAX_COALESCE_MS: u64 = 60_000;

pub fn validate(config: &Config) -> Result<(), ConfigError> {
    config
        .retention
        .validate()
        .map_err(|err| ConfigError(format!("invalid configuration: {err}")))?;
    config
        .workspace
        .validate()
        .map_err(|err| ConfigError(format!("invalid configuration: {err}")))?;
    config
        .gates
        .validate()
        .map_err(|err| ConfigError(format!("invalid configuration: gates.{err}")))?;
    if !config.webhook.secrets.is_empty() {
        mosaic_security::WebhookVerifier::new(config.webhook.secrets.clone()).map_err(|err| {
            ConfigError(format!("invalid configuration: `webhook.secrets`: {err}"))
        })?;
    }
    config
        .server
        .validate()
        .map_err(|err| ConfigError(format!("invalid configuration: {err}")))?;
    config
        .inbox
        .validate()
        .map_err(|err| ConfigError(format!("invalid configuration: {err}")))?;
    if config.webhook.max_body_bytes == 0 {
        return Err(ConfigError(
            "invalid configuration: `webhook.max_body_bytes`: must be at least 1".to_owned(),
        ));
    }
    // The leader checks its hold every second; a shorter lease would lose it in passing.
    if config.store.leader_lease_ms < 2_000 {
        return Err(ConfigError(format!(
            "invalid configuration: `store.leader_lease_ms`: must be at least 2000 (the leader checks its hold every second), got {}",
            config.store.leader_lease_ms
        )));
    }
    // A status or label write waits this long for one that replaces it; past a minute it
    // would hold an issue's writes back rather than save calls.
    if config.outbox.coalesce_ms > MAX_COALESCE_MS {
        return Err(ConfigError(format!(
            "invalid configuration: `outbox.coalesce_ms`: must be at most {MAX_COALESCE_MS} (a minute), got {}",
            config.outbox.coalesce_ms
        )));
    }
    config
        .parser
        .validate()
        .map_err(|err| ConfigError(format!("invalid configuration: {err}")))?;
    if let Some(gitea) = &config.gitea {
        gitea.validate().map_err(|errors| {
            ConfigError(
                errors
                    .iter()
                    .map(|err| format!("invalid configuration: {err}"))
                    .collect::<Vec<_>>()
                    .join("\n"),
            )
        })?;
    }
    let profiles = agent_profiles(config)?;
    config
        .engine
        .validate(&profiles)
        .map_err(|err| ConfigError(format!("invalid configuration: {err}")))?;
    if let Some(runner) = &config.runner {
        runner
            .validate()
            .map_err(|err| ConfigError(format!("invalid configuration: {err}")))?;
        // Agents get a built environment; none of it may be a credential of the coordinator.
        runner
            .refuse_coordinator_secrets(&coordinator_secrets(config), |name| {
                std::env::var(name).ok()
            })
            .map_err(|err| ConfigError(format!("invalid configuration: {err}")))?;
    }
    Ok(())
}

/// The credentials the coordinator itself uses, with the environment variable each is read
/// from: no agent may receive one (`runner.agents.*.pass_env` / `env`).
pub fn coordinator_secrets(config: &Config) -> Vec<mosaic_runner::CoordinatorSecret> {
    let env_var = |key: &str| {
        NAMED_ENV
            .iter()
            .find(|named| named.key == key)
            .map(|named| named.var.to_owned())
    };
    let secret = |key: &str, value: &mosaic_security::Secret| mosaic_runner::CoordinatorSecret {
        key: key.to_owned(),
        env_var: env_var(key),
        value: value.expose_secret().to_owned(),
    };
    let mut secrets: Vec<_> = config
        .webhook
        .secrets
        .iter()
        .map(|value| secret("webhook.secrets", value))
        .collect();
    secrets.extend(
        config
            .api
            .token
            .iter()
            .map(|value| secret("api.token", value)),
    );
    secrets.extend(
        config
            .gitea
            .as_ref()
            .and_then(|gitea| gitea.token.as_ref())
            .map(|value| secret("gitea.token", value)),
    );
    // The key is the coordinator's only when its parser uses it; with `parser.provider =
    // "template"` the operator may forward ANTHROPIC_API_KEY as the agent's own key.
    if config.parser.resolved_provider() != mosaic_parser::ProviderKind::Template {
        secrets.extend(
            config
                .parser
                .usable_api_key()
                .map(|value| secret("parser.api_key", value)),
        );
    }
    secrets.extend(
        database_password(config).map(|value| mosaic_runner::CoordinatorSecret {
            key: "store.url (its password)".to_owned(),
            env_var: env_var("store.url"),
            value: value.expose_secret().to_owned(),
        }),
    );
    secrets
}

/// The password in `store.url` (`postgres://user:password@host/db`), if it has one.
fn database_password(config: &Config) -> Option<mosaic_security::Secret> {
    let url = url::Url::parse(&config.store.url).ok()?;
    url.password()
        .filter(|password| !password.is_empty())
        .map(mosaic_security::Secret::new)
}

/// Cleans agent text of every secret the coordinator holds (the parser's key even when unused)
/// before it reaches a session log, a log line or a comment (invariant 9).
pub fn redactor(config: &Config) -> mosaic_security::Redactor {
    let mut values: Vec<mosaic_security::Secret> = coordinator_secrets(config)
        .into_iter()
        .map(|secret| mosaic_security::Secret::new(secret.value))
        .collect();
    values.extend(config.parser.api_key.clone());
    mosaic_security::Redactor::new(&values)
}

/// The configured agent profiles, validated, or the built-in defaults.
pub fn agent_profiles(config: &Config) -> Result<mosaic_domain::agent::AgentProfiles, ConfigError> {
    if config.agents.is_empty() {
        return Ok(mosaic_domain::agent::AgentProfiles::defaults());
    }
    mosaic_domain::agent::AgentProfiles::new(config.agents.clone())
        .map_err(|err| ConfigError(format!("invalid configuration: `agents`: {err}")))
}

/// The agent profiles as they will be used: only an enabled profile with a runner command can
/// be assigned (one without would fail every issue it is given, in public).
#[derive(Debug, Clone)]
pub struct ProfilesInForce {
    /// Every profile, validated: the configured `[[agents]]`, or the built-in defaults.
    pub all: mosaic_domain::agent::AgentProfiles,
    /// Whether `all` are the built-in defaults (no `[[agents]]` configured).
    pub built_in: bool,
    /// Enabled profiles with no `[runner.agents.<name>]` command: not assignable.
    pub without_command: Vec<String>,
    /// Profiles whose rotate threshold was lowered to what their agent kind can reach, with the
    /// threshold in force (Claude Code: 85%).
    pub capped: Vec<(String, f64)>,
}

/// The profiles with each threshold below what its agent's protocol can reach: a profile run
/// by Claude Code rotates at 85% at most (and compacts below that), whatever the configured or
/// global threshold says, since the CLI stops calling the model at 88.5%.
fn cap_thresholds(
    all: mosaic_domain::agent::AgentProfiles,
    config: &Config,
) -> Result<(mosaic_domain::agent::AgentProfiles, Vec<(String, f64)>), ConfigError> {
    let global = mosaic_domain::Thresholds {
        compact: config.engine.monitor.compact_threshold,
        rotate: config.engine.monitor.rotate_threshold,
    };
    let mut capped = Vec::new();
    let profiles: Vec<mosaic_domain::AgentProfile> = all
        .iter()
        .cloned()
        .map(|mut profile| {
            let limit = config
                .runner
                .as_ref()
                .and_then(|runner| runner.agents.get(&profile.name))
                .and_then(|command| command.protocol.max_rotate_threshold());
            let current = profile.thresholds(global);
            if let Some(limit) = limit.filter(|limit| current.rotate > *limit) {
                profile.rotate_threshold = Some(limit);
                // The compaction threshold stays below the rotation one (5 points under).
                let below = ((limit - 0.05) * 100.0).round() / 100.0;
                profile.compact_threshold = Some(current.compact.min(below));
                capped.push((profile.name.clone(), limit));
            }
            profile
        })
        .collect();
    if capped.is_empty() {
        return Ok((all, capped));
    }
    let profiles = mosaic_domain::AgentProfiles::with_global_thresholds(profiles, global)
        .map_err(|err| ConfigError(format!("invalid configuration: `agents`: {err}")))?;
    Ok((profiles, capped))
}

impl ProfilesInForce {
    pub fn from_config(config: &Config) -> Result<Self, ConfigError> {
        let (all, capped) = cap_thresholds(agent_profiles(config)?, config)?;
        let has_command = |name: &str| {
            config
                .runner
                .as_ref()
                .is_some_and(|runner| runner.agents.contains_key(name))
        };
        let without_command = all
            .enabled()
            .filter(|profile| !has_command(&profile.name))
            .map(|profile| profile.name.clone())
            .collect();
        Ok(Self {
            all,
            built_in: config.agents.is_empty(),
            without_command,
            capped,
        })
    }

    /// The profiles the engine may assign: enabled ones with a command; `None` when there is
    /// none (the coordinator then records deliveries and coordinates nothing).
    pub fn assignable(&self) -> Option<mosaic_domain::agent::AgentProfiles> {
        let profiles = self
            .all
            .iter()
            .cloned()
            .map(|mut profile| {
                if self.without_command.contains(&profile.name) {
                    profile.enabled = false;
                }
                profile
            })
            .collect();
        mosaic_domain::agent::AgentProfiles::new(profiles).ok()
    }

    /// One line per profile for check-config: what it is, where it came from, and whether it
    /// can be assigned.
    pub fn describe(&self) -> String {
        let origin = if self.built_in {
            "built-in default (configure [[agents]] to replace all five)"
        } else {
            "[[agents]] in the configuration (the built-in profiles are replaced)"
        };
        let mut out = String::from("\n# Agent profiles in force\n");
        for profile in self.all.iter() {
            let state = if !profile.enabled {
                "disabled".to_owned()
            } else if self.without_command.contains(&profile.name) {
                format!(
                    "NOT assignable: no command (add [runner.agents.{}])",
                    profile.name
                )
            } else {
                "assignable".to_owned()
            };
            out.push_str(&format!(
                "# {:<10} window {:>7}, {}, max difficulty {}: {state}  # {origin}\n",
                profile.name,
                profile.context_window,
                if profile.self_hosted {
                    "self-hosted"
                } else {
                    "hosted"
                },
                format!("{:?}", profile.max_difficulty).to_lowercase(),
            ));
        }
        for (name, limit) in &self.capped {
            out.push_str(&format!(
                "# {name} rotates at {:.0}% at most: Claude Code stops calling the model past 88.5% of its window\n",
                limit * 100.0
            ));
        }
        if self.assignable().is_none() {
            out.push_str(
                "# No profile can be assigned: deliveries are recorded, nothing is coordinated.\n",
            );
        }
        out
    }
}

/// One message per problem: the key, where the value came from, and what was expected.
fn describe(error: &figment::Error) -> ConfigError {
    let lines: Vec<String> = error
        .clone()
        .into_iter()
        .map(|err| {
            let key = err.path.join(".");
            let source = err
                .metadata
                .as_ref()
                .map(|m| format!(" (from {})", origin(m)))
                .unwrap_or_default();
            let reason = redact_reason(&key, &err.kind.to_string());
            if key.is_empty() {
                format!("invalid configuration{source}: {reason}")
            } else {
                format!("invalid configuration: `{key}`{source}: {reason}")
            }
        })
        .collect();
    ConfigError(lines.join("\n"))
}

/// serde's messages quote the offending value; for secret keys that value must not appear.
fn redact_reason(key: &str, reason: &str) -> String {
    if is_secret_key(key) {
        "invalid value (not shown: secret)".to_owned()
    } else {
        reason.to_owned()
    }
}

fn is_secret_key(key: &str) -> bool {
    SECRET_KEYS
        .iter()
        .any(|secret| key == *secret || key.starts_with(&format!("{secret}.")))
}

/// `check-config`: the effective configuration as TOML-like lines, secrets redacted, each value
/// followed by where it came from.
pub fn render(config: &Config, figment: &Figment) -> String {
    let value = serde_json::to_value(config).unwrap_or(serde_json::Value::Null);
    let mut out = String::from("# Effective configuration (secrets redacted)\n");
    let Some(sections) = value.as_object() else {
        return out;
    };
    for (section, body) in sections {
        out.push_str(&format!("\n[{section}]\n"));
        let fields = match body {
            serde_json::Value::Object(fields) => fields,
            serde_json::Value::Null => {
                out.push_str("# not configured\n");
                continue;
            }
            serde_json::Value::Array(items) if items.is_empty() => {
                out.push_str("# none configured: built-in defaults\n");
                continue;
            }
            other => {
                let origin = figment
                    .find_metadata(section)
                    .map_or_else(|| "default".to_owned(), origin);
                out.push_str(&format!("{other}  # {origin}\n"));
                continue;
            }
        };
        for (field, value) in fields {
            let key = format!("{section}.{field}");
            let shown = if is_secret_key(&key) {
                redacted_shape(value)
            } else if value.is_null() {
                "(not set)".to_owned()
            } else {
                value.to_string()
            };
            let origin = figment
                .find_metadata(&key)
                .map_or_else(|| "default".to_owned(), origin);
            out.push_str(&format!("{field} = {shown}  # {origin}\n"));
        }
    }
    if let Ok(in_force) = ProfilesInForce::from_config(config) {
        out.push_str(&in_force.describe());
    }
    out.push_str(&describe_gates(config));
    out
}

/// The quality gates for each repository `gitea.repositories` names, and each gate's `repos`
/// for the others, as check-config shows them.
fn describe_gates(config: &Config) -> String {
    let gates = &config.gates;
    let mut out = String::from("\n# Quality gates per repository\n");
    if gates.gates.is_empty() && !gates.trust_repository_file {
        out.push_str("# none: a branch is published without a check\n");
        return out;
    }
    let line = |gate: &mosaic_gates::Gate| {
        format!(
            "{} ({}, {} s): {}",
            gate.name,
            if gate.required {
                "required"
            } else {
                "optional"
            },
            gate.timeout_secs,
            gate.command.join(" ")
        )
    };
    let listed = config
        .gitea
        .as_ref()
        .map(|gitea| gitea.repositories.as_slice())
        .unwrap_or_default();
    for repo in listed {
        let applying: Vec<String> = gates.gates_for(repo).into_iter().map(line).collect();
        let text = if applying.is_empty() {
            "no gate".to_owned()
        } else {
            applying.join(" · ")
        };
        out.push_str(&format!("# {:<24} {text}\n", repo.as_str()));
    }
    if !gates.gates.is_empty() {
        if !listed.is_empty() {
            out.push_str("# other repositories get the gates whose repos match them:\n");
        }
        for gate in &gates.gates {
            out.push_str(&format!(
                "# {} · repos {}\n",
                line(gate),
                gate.repos.join(", ")
            ));
        }
    }
    if gates.trust_repository_file {
        out.push_str(&format!(
            "# trust_repository_file: a repository's own {} on its base branch adds gates\n",
            mosaic_gates::REPOSITORY_FILE
        ));
    }
    out.push_str(&format!(
        "# failing required gates send the agent back up to {} time(s); then: {}\n",
        gates.max_continuations,
        match gates.on_gate_failure {
            mosaic_gates::OnGateFailure::Branch => "the branch is pushed, no pull request",
            mosaic_gates::OnGateFailure::WipPullRequest => "a WIP: pull request is opened",
        }
    ));
    out
}

/// Where a value came from: the provider's name, with the file for a file.
fn origin(metadata: &Metadata) -> String {
    match &metadata.source {
        Some(figment::Source::File(path)) => format!("{} {}", metadata.name, path.display()),
        _ => metadata.name.to_string(),
    }
}

fn redacted_shape(value: &serde_json::Value) -> String {
    match value {
        serde_json::Value::Null => "(not set)".to_owned(),
        serde_json::Value::Array(items) => {
            format!("[{}]", vec!["\"[redacted]\""; items.len()].join(", "))
        }
        _ => "\"[redacted]\"".to_owned(),
    }
}

#[cfg(test)]
#[allow(clippy::result_large_err)] // figment::Jail's closures return figment::Error by design
mod tests {
    use super::*;

    fn sources(env: &[(&str, &str)]) -> Sources {
        Sources {
            file: None,
            env: env
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            working_dir: PathBuf::from("/nonexistent-dir-for-tests"),
        }
    }

    fn error_of(sources: &Sources) -> String {
        load(sources).unwrap_err().to_string()
    }

    #[test]
    fn defaults_apply_without_any_source() {
        let (config, _) = load(&sources(&[])).unwrap();
        assert_eq!(config.server.port.get(), 8000);
        assert_eq!(config.server.host.to_string(), "0.0.0.0");
        assert_eq!(config.log.level.to_string(), "info");
        assert!(config.webhook.secrets.is_empty());
    }

    #[test]
    fn environment_overrides_file_overrides_defaults() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "custom.toml",
                "[server]\nport = 9000\nhost = \"127.0.0.1\"\n[log]\nlevel = \"debug\"\n",
            )?;
            let mut s = sources(&[("PORT", "9100"), ("MOSAIC_LOG__FORMAT", "json")]);
            s.file = Some(jail.directory().join("custom.toml"));
            let (config, figment) = load(&s).unwrap();
            assert_eq!(config.server.port.get(), 9100);
            assert_eq!(config.server.host.to_string(), "127.0.0.1");
            assert_eq!(config.log.level.to_string(), "debug");
            assert_eq!(config.log.format, crate::logging::LogFormat::Json);
            let rendered = render(&config, &figment);
            assert!(
                rendered.contains("port = 9100  # `PORT` environment variable"),
                "{rendered}"
            );
            assert!(rendered.contains("custom.toml"), "{rendered}");
            Ok(())
        });
    }

    #[test]
    fn mosaic_toml_in_the_working_directory_is_read() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("mosaic.toml", "[server]\nport = 8123\n")?;
            let mut s = sources(&[]);
            s.working_dir = jail.directory().to_owned();
            assert_eq!(load(&s).unwrap().0.server.port.get(), 8123);
            Ok(())
        });
    }

    #[test]
    fn bad_values_name_key_source_and_expectation() {
        let check = |env: &[(&str, &str)], expect: &[&str]| {
            let message = error_of(&sources(env));
            for part in expect {
                assert!(message.contains(part), "{message:?} lacks {part:?}");
            }
        };
        check(
            &[("PORT", "abc")],
            &[
                "server.port",
                "`PORT` environment variable",
                "`abc` is not a TCP port",
                "1 to 65535",
            ],
        );
        check(
            &[("PORT", "70000")],
            &["server.port", "`70000` is not a TCP port"],
        );
        check(
            &[("LOG_LEVEL", "loud")],
            &[
                "log.level",
                "`LOG_LEVEL`",
                "`loud` is not a log level",
                "debug, info, warning, error",
            ],
        );
        check(&[("HOST", "not-an-ip")], &["server.host", "`HOST`"]);
        check(&[("MOSAIC_LOG__FORMAT", "fancy")], &["log.format", "fancy"]);
    }

    #[test]
    fn warn_is_accepted_as_a_level() {
        let (config, _) = load(&sources(&[("LOG_LEVEL", "warn")])).unwrap();
        assert_eq!(config.log.level.to_string(), "warn");
    }

    #[test]
    fn unreadable_file_and_toml_syntax_errors_are_clear() {
        let mut s = sources(&[]);
        s.file = Some(PathBuf::from("/definitely/missing/mosaic.toml"));
        let message = error_of(&s);
        assert!(
            message.contains("cannot read configuration file `/definitely/missing/mosaic.toml`"),
            "{message}"
        );

        figment::Jail::expect_with(|jail| {
            jail.create_file("broken.toml", "[server]\nport = 8000\nhost = \n")?;
            let mut s = sources(&[]);
            s.file = Some(jail.directory().join("broken.toml"));
            let message = error_of(&s);
            assert!(message.contains("line 3"), "{message}");
            Ok(())
        });
    }

    #[test]
    fn unknown_keys_are_rejected() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("typo.toml", "[server]\nprot = 8000\n")?;
            let mut s = sources(&[]);
            s.file = Some(jail.directory().join("typo.toml"));
            let message = error_of(&s);
            assert!(
                message.contains("unknown field") && message.contains("`prot`"),
                "{message}"
            );
            assert!(message.contains("server.prot"), "{message}");
            Ok(())
        });
    }

    #[test]
    fn the_example_file_is_valid_and_states_the_defaults() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("example.toml", include_str!("../../../mosaic.example.toml"))?;
            let mut s = sources(&[]);
            s.file = Some(jail.directory().join("example.toml"));
            let (from_example, _) = load(&s).unwrap();
            let (defaults, _) = load(&sources(&[])).unwrap();
            assert_eq!(
                serde_json::to_value(&from_example).unwrap(),
                serde_json::to_value(&defaults).unwrap(),
                "mosaic.example.toml must give exactly the built-in defaults"
            );
            Ok(())
        });
    }

    #[test]
    fn serve_needs_a_webhook_secret() {
        let (config, _) = load(&sources(&[])).unwrap();
        let message = validate_for_serve(&config).unwrap_err().to_string();
        assert!(message.contains("GITEA_WEBHOOK_SECRET"), "{message}");
        let (config, _) = load(&sources(&[("GITEA_WEBHOOK_SECRET", "s3cr3t")])).unwrap();
        assert!(validate_for_serve(&config).is_ok());
    }

    #[test]
    fn the_environment_secret_joins_those_in_the_file() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("secrets.toml", "[webhook]\nsecrets = [\"old-one\"]\n")?;
            let mut s = sources(&[("GITEA_WEBHOOK_SECRET", "new-one")]);
            s.file = Some(jail.directory().join("secrets.toml"));
            let (config, _) = load(&s).unwrap();
            let exposed: Vec<&str> = config
                .webhook
                .secrets
                .iter()
                .map(|s| s.expose_secret())
                .collect();
            assert_eq!(exposed, ["old-one", "new-one"]);
            Ok(())
        });
    }

    #[test]
    fn rendering_never_shows_a_secret() {
        let (config, figment) = load(&sources(&[
            ("GITEA_WEBHOOK_SECRET", "hunter2-webhook"),
            ("MOSAIC_API_TOKEN", "hunter2-api"),
        ]))
        .unwrap();
        let rendered = render(&config, &figment);
        assert!(!rendered.contains("hunter2"), "{rendered}");
        assert!(
            rendered.contains(
                "secrets = [\"[redacted]\"]  # `GITEA_WEBHOOK_SECRET` environment variable"
            ),
            "{rendered}"
        );
        assert!(!format!("{config:?}").contains("hunter2"));
    }

    #[test]
    fn check_config_output() {
        let (config, figment) = load(&sources(&[
            ("GITEA_WEBHOOK_SECRET", "s"),
            ("GITEA_URL", "https://git.example.com"),
            ("GITEA_BOT_TOKEN", "t"),
            ("PORT", "9000"),
            ("MOSAIC_ENGINE__MAX_CONCURRENT_AGENTS", "4"),
        ]))
        .unwrap();
        insta::assert_snapshot!(render(&config, &figment));
    }

    #[test]
    fn check_config_shows_the_gates_of_each_repository() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "gates.toml",
                "[gitea]\nurl = \"https://git.example.com\"\nrepositories = [\"acme/app\", \"other/site\"]\n\n\
                 [gates]\nmax_continuations = 2\ntrust_repository_file = true\n\n\
                 [[gates.gates]]\nname = \"test\"\ncommand = [\"cargo\", \"test\"]\n\n\
                 [[gates.gates]]\nname = \"lint\"\ncommand = [\"cargo\", \"clippy\"]\nrepos = [\"acme/*\"]\nrequired = false\ntimeout_secs = 60\n",
            )?;
            let mut s = sources(&[("GITEA_WEBHOOK_SECRET", "s")]);
            s.file = Some(jail.directory().join("gates.toml"));
            let (config, _) = load(&s).unwrap();
            insta::assert_snapshot!(describe_gates(&config));
            Ok(())
        });
        let (config, _) = load(&sources(&[("GITEA_WEBHOOK_SECRET", "s")])).unwrap();
        assert!(describe_gates(&config).contains("# none: a branch is published without a check"));
    }

    #[test]
    fn an_outbox_coalescing_wait_past_a_minute_is_refused_by_name() {
        let (config, _) = load(&sources(&[("MOSAIC_OUTBOX__COALESCE_MS", "60000")])).unwrap();
        validate(&config).unwrap();
        let (config, _) = load(&sources(&[("MOSAIC_OUTBOX__COALESCE_MS", "3600000")])).unwrap();
        let err = validate(&config).unwrap_err().to_string();
        assert!(err.contains("outbox.coalesce_ms"), "{err}");
    }

    #[test]
    fn a_leader_lease_shorter_than_two_checks_is_refused_by_name() {
        let (config, _) = load(&sources(&[("MOSAIC_STORE__LEADER_LEASE_MS", "3000")])).unwrap();
        assert_eq!(config.store.leader_lease_ms, 3_000);
        validate(&config).unwrap();
        let (config, _) = load(&sources(&[("MOSAIC_STORE__LEADER_LEASE_MS", "1500")])).unwrap();
        let err = validate(&config).unwrap_err().to_string();
        assert!(err.contains("store.leader_lease_ms"), "{err}");
    }

    #[test]
    fn workspace_settings_come_from_the_environment_and_bad_ones_name_their_key() {
        let (config, _) = load(&sources(&[
            ("MOSAIC_WORKSPACE__ROOT", "/srv/mosaic/ws"),
            ("MOSAIC_WORKSPACE__MIN_FREE_BYTES", "42"),
        ]))
        .unwrap();
        assert_eq!(config.workspace.root, PathBuf::from("/srv/mosaic/ws"));
        assert_eq!(config.workspace.min_free_bytes, 42);
        validate(&config).unwrap();
        let (config, _) = load(&sources(&[(
            "MOSAIC_WORKSPACE__BRANCH_PREFIX",
            "bad..prefix/",
        )]))
        .unwrap();
        let err = validate(&config).unwrap_err().0;
        assert!(err.contains("workspace.branch_prefix"), "{err}");
    }

    #[test]
    fn gates_come_from_the_file_and_a_bad_one_names_its_key() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "gates.toml",
                "[gates]\nmax_continuations = 1\non_gate_failure = \"wip_pull_request\"\n\n\
                 [[gates.gates]]\nname = \"test\"\ncommand = [\"cargo\", \"test\"]\n\n\
                 [[gates.gates]]\nname = \"lint\"\ncommand = []\n",
            )?;
            let mut s = sources(&[]);
            s.file = Some(jail.directory().join("gates.toml"));
            let (config, _) = load(&s).unwrap();
            assert_eq!(config.gates.max_continuations, 1);
            assert_eq!(config.gates.gates[0].command, ["cargo", "test"]);
            let err = validate(&config).unwrap_err().0;
            assert!(
                err.contains("gates.gates[1].command must not be empty"),
                "{err}"
            );
            Ok(())
        });
    }

    #[test]
    fn numeric_secrets_are_still_secrets() {
        let (config, _) = load(&sources(&[
            ("GITEA_WEBHOOK_SECRET", "12345"),
            ("MOSAIC_API_TOKEN", "987"),
        ]))
        .unwrap();
        assert_eq!(config.webhook.secrets[0].expose_secret(), "12345");
    }
}

#[cfg(test)]
#[allow(clippy::result_large_err)] // figment::Jail's closures return figment::Error by design
mod profiles_in_force_tests {
    use super::*;

    fn config_with(env: &[(&str, &str)]) -> Config {
        let sources = Sources {
            file: None,
            env: env
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            working_dir: PathBuf::from("/nonexistent-dir-for-tests"),
        };
        load(&sources).unwrap().0
    }

    #[test]
    fn only_profiles_with_a_command_are_assignable() {
        let config = config_with(&[
            ("MOSAIC_RUNNER__WORK_ROOT", "/tmp/w"),
            ("MOSAIC_RUNNER__AGENTS__SONNET__PROGRAM", "claude"),
        ]);
        let in_force = ProfilesInForce::from_config(&config).unwrap();
        assert!(in_force.built_in);
        assert_eq!(
            in_force.without_command,
            ["opus", "haiku", "glm", "minimax"]
        );
        let assignable = in_force.assignable().unwrap();
        let enabled: Vec<&str> = assignable.enabled().map(|p| p.name.as_str()).collect();
        assert_eq!(enabled, ["sonnet"]);
        let described = in_force.describe();
        assert!(described.contains("sonnet"), "{described}");
        assert!(
            described.contains("NOT assignable: no command (add [runner.agents.glm])"),
            "{described}"
        );
        assert!(described.contains("built-in default"), "{described}");
    }

    #[test]
    fn a_profile_run_by_claude_code_rotates_at_85_percent_at_most() {
        let mut config = config_with(&[
            ("MOSAIC_RUNNER__WORK_ROOT", "/tmp/w"),
            ("MOSAIC_RUNNER__AGENTS__SONNET__PROGRAM", "claude"),
            ("MOSAIC_RUNNER__AGENTS__GLM__PROGRAM", "sample-agent"),
        ]);
        let runner = config.runner.as_mut().unwrap();
        runner.agents.get_mut("sonnet").unwrap().protocol =
            mosaic_runner::AgentProtocol::ClaudeCode;
        let in_force = ProfilesInForce::from_config(&config).unwrap();
        let global = mosaic_domain::Thresholds::default();
        let sonnet = in_force.all.iter().find(|p| p.name == "sonnet").unwrap();
        let thresholds = sonnet.effective_thresholds(global).unwrap();
        assert_eq!((thresholds.compact, thresholds.rotate), (0.8, 0.85));
        // Other agent kinds keep the global 95%.
        let glm = in_force.all.iter().find(|p| p.name == "glm").unwrap();
        assert_eq!(glm.effective_thresholds(global).unwrap().rotate, 0.95);
        assert_eq!(in_force.capped, [("sonnet".to_owned(), 0.85)]);
        let described = in_force.describe();
        assert!(
            described.contains("# sonnet rotates at 85% at most: Claude Code stops calling the model past 88.5% of its window"),
            "{described}"
        );

        // A lower threshold of the operator's stays; a compaction threshold above the cap
        // moves below it.
        config.engine.monitor.rotate_threshold = 0.99;
        config.engine.monitor.compact_threshold = 0.9;
        let in_force = ProfilesInForce::from_config(&config).unwrap();
        let global = mosaic_domain::Thresholds {
            compact: 0.9,
            rotate: 0.99,
        };
        let sonnet = in_force.all.iter().find(|p| p.name == "sonnet").unwrap();
        let thresholds = sonnet.effective_thresholds(global).unwrap();
        assert_eq!(thresholds.rotate, 0.85);
        assert!((thresholds.compact - 0.80).abs() < 1e-9, "{thresholds:?}");
        config.engine.monitor.rotate_threshold = 0.82;
        config.engine.monitor.compact_threshold = 0.7;
        let in_force = ProfilesInForce::from_config(&config).unwrap();
        assert!(in_force.capped.is_empty());
    }

    /// The example's commented `[[agents]]` block, uncommented, is a complete profile: no
    /// required field is hidden from a user who copies it.
    #[test]
    fn the_example_agent_profile_shows_every_required_field() {
        let example = include_str!("../../../mosaic.example.toml");
        let start = example.find("# [[agents]]").unwrap();
        let block: String = example[start..]
            .lines()
            .take_while(|line| line.starts_with('#'))
            .map(|line| line.trim_start_matches('#').trim())
            .map(|line| line.split("  #").next().unwrap_or(line).trim())
            .collect::<Vec<_>>()
            .join("\n");
        #[derive(serde::Deserialize)]
        struct Profiles {
            agents: Vec<mosaic_domain::agent::AgentProfile>,
        }
        let parsed: Profiles =
            toml::from_str(&block).unwrap_or_else(|err| panic!("{err}\n{block}"));
        assert_eq!(parsed.agents.len(), 1);
        assert!(parsed.agents[0].enabled && parsed.agents[0].self_hosted);
    }

    #[test]
    fn without_any_command_nothing_is_assignable_and_check_config_says_so() {
        let config = config_with(&[]);
        let in_force = ProfilesInForce::from_config(&config).unwrap();
        assert!(in_force.assignable().is_none());
        assert!(
            in_force
                .describe()
                .contains("No profile can be assigned: deliveries are recorded")
        );
    }

    /// Profiles from `[[agents]]` replace the built-in ones, and check-config says where they
    /// came from.
    #[test]
    fn check_config_says_configured_profiles_come_from_the_file() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "agents.toml",
                "[[agents]]\nname = \"local\"\ncontext_window = 64000\ncost_input_per_mtok = 0.0\n\
                 cost_output_per_mtok = 0.0\nmax_difficulty = \"medium\"\nself_hosted = true\nenabled = true\n\n\
                 [[agents]]\nname = \"cloud\"\ncontext_window = 200000\ncost_input_per_mtok = 3.0\n\
                 cost_output_per_mtok = 15.0\nmax_difficulty = \"high\"\nself_hosted = false\nenabled = true\n\n\
                 [runner]\nwork_root = \"/tmp/w\"\n\n[runner.agents.local]\nprogram = \"sample-agent\"\n",
            )?;
            let sources = Sources {
                file: Some(jail.directory().join("agents.toml")),
                env: Vec::new(),
                working_dir: PathBuf::from("/nonexistent-dir-for-tests"),
            };
            let (config, _) = load(&sources).unwrap();
            validate(&config).unwrap();
            let in_force = ProfilesInForce::from_config(&config).unwrap();
            assert!(!in_force.built_in);
            let names: Vec<&str> = in_force.all.iter().map(|p| p.name.as_str()).collect();
            assert_eq!(names, ["local", "cloud"]);
            assert_eq!(in_force.without_command, ["cloud"]);
            let described = in_force.describe();
            let lines: Vec<&str> = described
                .lines()
                .filter(|line| line.starts_with("# local") || line.starts_with("# cloud"))
                .collect();
            assert_eq!(lines.len(), 2, "{described}");
            for line in &lines {
                assert!(
                    line.ends_with(
                        "# [[agents]] in the configuration (the built-in profiles are replaced)"
                    ),
                    "{described}"
                );
            }
            assert!(lines[0].contains(": assignable"), "{described}");
            assert!(
                lines[1].contains("NOT assignable: no command (add [runner.agents.cloud])"),
                "{described}"
            );
            assert!(!described.contains("built-in default"), "{described}");
            assert!(!described.contains("sonnet"), "{described}");
            Ok(())
        });
    }

    /// The README's "minimal configuration", with the variables its next step exports, passes
    /// what `serve` and `check-config` check, and its one profile can be assigned.
    #[test]
    fn the_readme_minimal_configuration_is_valid_and_assigns_its_profile() {
        let readme = include_str!("../../../README.md");
        let section = readme
            .find("## Real use: a minimal configuration")
            .map(|start| &readme[start..])
            .unwrap();
        let block = section
            .split_once("```toml\n")
            .and_then(|(_, rest)| rest.split_once("\n```"))
            .map(|(block, _)| block)
            .unwrap();
        assert!(block.contains("[runner.agents.sonnet]"), "{block}");
        figment::Jail::expect_with(|jail| {
            jail.create_file("mosaic.toml", block)?;
            let sources = Sources {
                file: None,
                env: [
                    ("GITEA_WEBHOOK_SECRET", "webhook-secret"),
                    ("GITEA_BOT_TOKEN", "bot-token"),
                    ("ANTHROPIC_API_KEY", "sk-ant-agent-key"),
                ]
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
                working_dir: jail.directory().to_owned(),
            };
            let (config, figment) = load(&sources).unwrap_or_else(|err| panic!("{err}\n{block}"));
            validate_for_serve(&config).unwrap_or_else(|err| panic!("{err}\n{block}"));
            assert_eq!(
                config.gitea.as_ref().map(|gitea| gitea.url.as_str()),
                Some("https://git.example.com/")
            );
            let in_force = ProfilesInForce::from_config(&config).unwrap();
            let assignable = in_force.assignable().unwrap();
            let enabled: Vec<&str> = assignable.enabled().map(|p| p.name.as_str()).collect();
            assert_eq!(enabled, ["sonnet"]);
            // check-config shows it (what it prints for the file's values).
            let rendered = render(&config, &figment);
            assert!(rendered.contains("sonnet"), "{rendered}");
            Ok(())
        });
    }
}

#[cfg(test)]
mod agent_secrets_tests {
    use super::*;

    fn config_with(env: &[(&str, &str)]) -> Config {
        let sources = Sources {
            file: None,
            env: env
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            working_dir: PathBuf::from("/nonexistent-dir-for-tests"),
        };
        load(&sources).unwrap().0
    }

    #[test]
    fn every_coordinator_credential_is_known_to_the_runner_and_the_redactor() {
        let config = config_with(&[
            ("GITEA_WEBHOOK_SECRET", "webhook-secret-1"),
            ("GITEA_URL", "https://git.example.com"),
            ("GITEA_BOT_TOKEN", "bot-token-22"),
            ("MOSAIC_API_TOKEN", "api-token-333"),
            ("ANTHROPIC_API_KEY", "sk-ant-parser-4444"),
            (
                "MOSAIC_DATABASE_URL",
                "postgres://mosaic:db-password-55555@db/mosaic",
            ),
        ]);
        let secrets = coordinator_secrets(&config);
        let named: Vec<(&str, Option<&str>)> = secrets
            .iter()
            .map(|s| (s.key.as_str(), s.env_var.as_deref()))
            .collect();
        assert_eq!(
            named,
            [
                ("webhook.secrets", Some("GITEA_WEBHOOK_SECRET")),
                ("api.token", Some("MOSAIC_API_TOKEN")),
                ("gitea.token", Some("GITEA_BOT_TOKEN")),
                ("parser.api_key", Some("ANTHROPIC_API_KEY")),
                ("store.url (its password)", Some("MOSAIC_DATABASE_URL")),
            ]
        );
        let text =
            "webhook-secret-1 bot-token-22 api-token-333 sk-ant-parser-4444 db-password-55555";
        let redacted = redactor(&config).redact(text);
        assert_eq!(redacted.matches("[redacted]").count(), 5, "{redacted}");

        // A parser that does not use the key leaves ANTHROPIC_API_KEY to the agents.
        let config = config_with(&[
            ("ANTHROPIC_API_KEY", "sk-ant-agents-66"),
            ("MOSAIC_PARSER__PROVIDER", "template"),
        ]);
        assert!(coordinator_secrets(&config).is_empty());
        assert_eq!(redactor(&config).redact("sk-ant-agents-66"), "[redacted]");
    }
}
