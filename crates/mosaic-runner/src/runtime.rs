//! `ProcessRuntime`: the `AgentRuntime` that runs agent CLIs as child processes.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use mosaic_context::{
    AgentRuntime, AgentSession, ContextUsage, RuntimeError, SessionId, SessionTask,
};
use mosaic_domain::{AgentProfile, IssueRef};
use mosaic_security::Redactor;

use crate::config::{AgentCommand, InputMode, RunnerConfig, RunnerConfigError, SessionVariables};
use crate::log::SessionLog;
use crate::process::{ProcessSession, SessionSpec};
use crate::workdir::{canonical_dir, create_inside, issue_relative_dir};

/// Starts sessions as processes, as configured in `[runner]`.
#[derive(Debug, Clone)]
pub struct ProcessRuntime {
    config: RunnerConfig,
    work_root: PathBuf,
    log_dir: PathBuf,
    /// Cleans agent text for the session logs and failure reasons.
    redactor: Arc<Redactor>,
    /// Canonical root of the coordinator's git worktrees: the only place a task's own
    /// `work_dir` may be.
    workspace_root: Option<PathBuf>,
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
            redactor: Arc::default(),
            workspace_root: None,
        })
    }

    /// Lets sessions run in a task's `work_dir` when it lies under `root` (the `[workspace]`
    /// root); any other directory is refused.
    pub fn with_workspace_root(mut self, root: &Path) -> Result<Self, RunnerConfigError> {
        let root = canonical_dir(root).map_err(|err| RunnerConfigError::WorkRoot {
            path: root.display().to_string(),
            message: err.to_string(),
        })?;
        self.workspace_root = Some(root);
        Ok(self)
    }

    /// The task's own working directory, proven (symlinks resolved) to lie under the
    /// workspace root.
    fn task_work_dir(&self, issue: &IssueRef, dir: &Path) -> Result<PathBuf, RuntimeError> {
        let refuse = |message: String| RuntimeError::WorkDir {
            issue: issue.clone(),
            message,
        };
        let root = self.workspace_root.as_ref().ok_or_else(|| {
            refuse("no workspace root is configured for task directories".to_owned())
        })?;
        let resolved = dir
            .canonicalize()
            .map_err(|err| refuse(format!("cannot resolve `{}`: {err}", dir.display())))?;
        if resolved.starts_with(root) && resolved != *root && resolved.is_dir() {
            Ok(resolved)
        } else {
            Err(refuse(format!(
                "`{}` is not a directory under the workspace root `{}`",
                resolved.display(),
                root.display()
            )))
        }
    }

    /// Redacts agent text (session logs, failure reasons) with `redactor`, which knows the
    /// coordinator's secrets. Without it only credential-shaped text and control sequences are
    /// cleaned.
    #[must_use]
    pub fn with_redactor(mut self, redactor: Redactor) -> Self {
        self.redactor = Arc::new(redactor);
        self
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
        self.spawn_process_as(SessionId::generate(), profile, task)
            .await
    }

    /// [`ProcessRuntime::spawn_process`] under a given session id (the marker its processes
    /// carry and the name of its log).
    pub async fn spawn_process_as(
        &self,
        id: SessionId,
        profile: &AgentProfile,
        task: &SessionTask,
    ) -> Result<ProcessSession, RuntimeError> {
        let command = self.command_for(profile)?;
        ContextUsage::new(0, profile.context_window).map_err(|err| RuntimeError::Config {
            agent: profile.name.clone(),
            message: err.to_string(),
        })?;
        let work_dir = match &task.work_dir {
            Some(dir) => self.task_work_dir(&task.issue, dir)?,
            None => self.work_dir_for(&task.issue)?,
        };
        let log_path = self.log_dir.join(format!("{id}.log"));
        let log = SessionLog::create(
            log_path.clone(),
            self.config.log_max_bytes,
            Arc::clone(&self.redactor),
        )
        .await
        .map_err(|err| RuntimeError::Spawn {
            agent: profile.name.clone(),
            message: format!("cannot create log file {}: {err}", log_path.display()),
        })?;
        let env = command.environment(
            |name| std::env::var_os(name),
            &SessionVariables {
                id: id.as_str(),
                issue: &task.issue.to_string(),
                agent: &profile.name,
            },
        );
        let spec = SessionSpec {
            id,
            agent_type: profile.name.clone(),
            issue: task.issue.clone(),
            program: command.program.clone(),
            args: command.args.clone(),
            env,
            work_dir,
            input: command.input,
            protocol: command.protocol,
            finish_on_result: command.finish_on_result,
            self_hosted: profile.self_hosted,
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
            rotate_wait: self.config.rotate_wait_secs,
            prompt: task.prompt(),
        };
        ProcessSession::start(spec, log, Arc::clone(&self.redactor))
            .await
            .map_err(|err| RuntimeError::Spawn {
                agent: profile.name.clone(),
                message: format!("`{}`: {err}", command.program),
            })
    }
}

#[async_trait]
impl AgentRuntime for ProcessRuntime {
    async fn spawn_with_id(
        &self,
        id: SessionId,
        profile: &AgentProfile,
        task: &SessionTask,
    ) -> Result<Arc<dyn AgentSession>, RuntimeError> {
        let session = self.spawn_process_as(id, profile, task).await?;
        Ok(Arc::new(session))
    }

    fn can_compact(&self, profile: &AgentProfile) -> bool {
        self.command_for(profile)
            .is_ok_and(|command| command.can_compact && command.input == InputMode::JsonLines)
    }
}
