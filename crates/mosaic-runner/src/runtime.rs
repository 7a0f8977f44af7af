//! `ProcessRuntime`: the `AgentRuntime` that runs agent CLIs as child processes.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use mosaic_context::{
    AgentRuntime, AgentSession, ContextUsage, RuntimeError, SessionId, SessionTask,
};
use mosaic_domain::{AgentProfile, IssueRef};

use crate::config::{AgentCommand, InputMode, RunnerConfig, RunnerConfigError};
use crate::log::SessionLog;
use crate::process::{ProcessSession, SessionSpec};
use crate::workdir::{canonical_dir, create_inside, issue_relative_dir};

/// Starts sessions as processes, as configured in `[runner]`.
#[derive(Debug, Clone)]
pub struct ProcessRuntime {
    config: RunnerConfig,
    work_root: PathBuf,
    log_dir: PathBuf,
}

impl ProcessRuntime {
    /// Validates the configuration and creates the work root and the log directory.
    pub fn new(config: RunnerConfig) -> Result<Self, RunnerConfigError> {
        config.validate()?;
        let work_root =
            canonical_dir(&config.work_root).map_err(|err| RunnerConfigError::WorkRoot {
                path: config.work_root.display().to_string(),
                message: err.to_string(),
            })?;
        let wanted_log_dir = config
            .log_dir
            .clone()
            .unwrap_or_else(|| work_root.join(".mosaic-logs"));
        let log_dir = canonical_dir(&wanted_log_dir).map_err(|err| RunnerConfigError::LogDir {
            path: wanted_log_dir.display().to_string(),
            message: err.to_string(),
        })?;
        Ok(Self {
            config,
            work_root,
            log_dir,
        })
    }

    pub fn config(&self) -> &RunnerConfig {
        &self.config
    }

    pub fn work_root(&self) -> &Path {
        &self.work_root
    }

    pub fn log_dir(&self) -> &Path {
        &self.log_dir
    }

    /// The working directory of `issue`, created if needed; always inside the work root.
    pub fn work_dir_for(&self, issue: &IssueRef) -> Result<PathBuf, RuntimeError> {
        create_inside(&self.work_root, &issue_relative_dir(issue)).map_err(|err| {
            RuntimeError::WorkDir {
                issue: issue.clone(),
                message: err.to_string(),
            }
        })
    }

    fn command_for(&self, profile: &AgentProfile) -> Result<&AgentCommand, RuntimeError> {
        self.config
            .agents
            .get(&profile.name)
            .ok_or_else(|| RuntimeError::UnknownAgent(profile.name.clone()))
    }

    /// Like [`AgentRuntime::spawn`], with the concrete session type (its log path, work dir).
    pub async fn spawn_process(
        &self,
        profile: &AgentProfile,
        task: &SessionTask,
    ) -> Result<ProcessSession, RuntimeError> {
        let command = self.command_for(profile)?;
        ContextUsage::new(0, profile.context_window).map_err(|err| RuntimeError::Config {
            agent: profile.name.clone(),
            message: err.to_string(),
        })?;
        let work_dir = self.work_dir_for(&task.issue)?;
        let id = SessionId::generate();
        let log_path = self.log_dir.join(format!("{id}.log"));
        let log = SessionLog::create(log_path.clone(), self.config.log_max_bytes)
            .await
            .map_err(|err| RuntimeError::Spawn {
                agent: profile.name.clone(),
                message: format!("cannot create log file {}: {err}", log_path.display()),
            })?;
        let spec = SessionSpec {
            id,
            agent_type: profile.name.clone(),
            issue: task.issue.clone(),
            program: command.program.clone(),
            args: command.args.clone(),
            env: command
                .env
                .iter()
                .map(|(key, value)| (key.clone(), value.clone()))
                .collect(),
            work_dir,
            input: command.input,
            can_compact: command.can_compact,
            window: profile.context_window,
            stall_timeout: command
                .stall_timeout_secs
                .unwrap_or(self.config.stall_timeout_secs),
            time_limit: command
                .time_limit_secs
                .unwrap_or(self.config.time_limit_secs),
            kill_grace: self.config.kill_grace_secs,
            compact_timeout: self.config.compact_timeout_secs,
            prompt: task.prompt(),
        };
        ProcessSession::start(spec, log)
            .await
            .map_err(|err| RuntimeError::Spawn {
                agent: profile.name.clone(),
                message: format!("`{}`: {err}", command.program),
            })
    }
}

#[async_trait]
impl AgentRuntime for ProcessRuntime {
    async fn spawn(
        &self,
        profile: &AgentProfile,
        task: &SessionTask,
    ) -> Result<Arc<dyn AgentSession>, RuntimeError> {
        let session = self.spawn_process(profile, task).await?;
        Ok(Arc::new(session))
    }

    fn can_compact(&self, profile: &AgentProfile) -> bool {
        self.command_for(profile)
            .is_ok_and(|command| command.can_compact && command.input == InputMode::JsonLines)
    }
}
