//! The `[engine]` section.

use std::collections::BTreeMap;
use std::time::Duration;

use mosaic_context::{ContextThresholds, MonitorConfig};
use mosaic_domain::AgentProfiles;
use serde::{Deserialize, Serialize};

use crate::report::StateLabels;

/// How the coordinator dispatches and reports.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EngineConfig {
    /// Sessions running at once, over all agents.
    pub max_concurrent_agents: u32,
    /// Optional cap per agent name (`glm = 2`).
    pub per_agent_limits: BTreeMap<String, u32>,
    /// Sessions an issue may use (failed or killed ones) before it is marked failed.
    pub max_attempts: u32,
    /// Close the issue in Gitea when its session succeeds (otherwise it is only labelled done).
    pub close_on_success: bool,
    pub labels: StateLabels,
    pub monitor: MonitorSettings,
    /// How often the dispatcher looks at the queue when nothing wakes it.
    pub dispatch_poll_ms: u64,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            max_concurrent_agents: 10,
            per_agent_limits: BTreeMap::new(),
            max_attempts: 2,
            close_on_success: false,
            labels: StateLabels::default(),
            monitor: MonitorSettings::default(),
            dispatch_poll_ms: 1_000,
        }
    }
}

/// The context monitor's settings (`[engine.monitor]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MonitorSettings {
    pub compact_threshold: f64,
    pub rotate_threshold: f64,
    /// Sessions that push no usage are asked every this many milliseconds.
    pub poll_interval_ms: u64,
    /// Usage readings kept per session.
    pub history_len: usize,
}

impl Default for MonitorSettings {
    fn default() -> Self {
        Self {
            compact_threshold: mosaic_context::DEFAULT_COMPACT_THRESHOLD,
            rotate_threshold: mosaic_context::DEFAULT_ROTATE_THRESHOLD,
            poll_interval_ms: 10_000,
            history_len: 120,
        }
    }
}

/// A configuration the engine cannot run with.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum EngineConfigError {
    #[error("engine.max_concurrent_agents must be at least 1")]
    NoCapacity,
    #[error("engine.max_attempts must be at least 1")]
    NoAttempts,
    #[error("engine.per_agent_limits names agent `{0}`, which is not configured")]
    UnknownAgentLimit(String),
    #[error("engine.monitor: {0}")]
    Monitor(String),
    #[error("engine.labels: state label names must be non-empty and distinct")]
    Labels,
}

impl EngineConfig {
    /// Checks the settings against the configured agents.
    pub fn validate(&self, profiles: &AgentProfiles) -> Result<(), EngineConfigError> {
        if self.max_concurrent_agents == 0 {
            return Err(EngineConfigError::NoCapacity);
        }
        if self.max_attempts == 0 {
            return Err(EngineConfigError::NoAttempts);
        }
        if let Some(name) = self
            .per_agent_limits
            .keys()
            .find(|name| profiles.get(name).is_none())
        {
            return Err(EngineConfigError::UnknownAgentLimit(name.clone()));
        }
        let labels = self.labels.all();
        let distinct: std::collections::BTreeSet<&str> = labels.iter().copied().collect();
        if labels.iter().any(|label| label.trim().is_empty()) || distinct.len() != labels.len() {
            return Err(EngineConfigError::Labels);
        }
        self.monitor_config()?;
        Ok(())
    }

    /// The monitor's configuration (documented defaults for what is not configurable here).
    pub fn monitor_config(&self) -> Result<MonitorConfig, EngineConfigError> {
        let thresholds = ContextThresholds::new(
            self.monitor.compact_threshold,
            self.monitor.rotate_threshold,
        )
        .map_err(|err| EngineConfigError::Monitor(err.to_string()))?;
        if self.monitor.poll_interval_ms == 0 {
            return Err(EngineConfigError::Monitor(
                "poll_interval_ms must be at least 1".to_owned(),
            ));
        }
        Ok(MonitorConfig {
            thresholds,
            poll_interval: Duration::from_millis(self.monitor.poll_interval_ms),
            history_len: self.monitor.history_len.max(1),
            ..MonitorConfig::default()
        })
    }

    /// The cap for `agent`: its own limit, never above the global one (`capacity`: the
    /// configured `max_concurrent_agents`, or what the coordinators sharing the store offer).
    pub(crate) fn limit_for(&self, agent: &str, capacity: u32) -> u32 {
        self.per_agent_limits
            .iter()
            .find(|(name, _)| name.eq_ignore_ascii_case(agent))
            .map_or(capacity, |(_, limit)| (*limit).min(capacity))
    }
}
