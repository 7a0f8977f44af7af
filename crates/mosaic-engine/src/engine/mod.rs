//! The coordinator itself: turns deliveries into queue decisions, dispatches ready issues to
//! agent sessions, records what the sessions do, and comes back after a crash.
//!
//! Every state change is computed on a copy of the in-memory graph and queue, committed to the
//! store in one transaction together with its Gitea writes (the outbox) and, for deliveries,
//! the inbox row's processed mark; only then is the copy installed (invariants 3 and 4).
//!
//! Locks: `core` guards the in-memory picture and is never held while waiting for the context
//! monitor; `gate` serialises "spawn a session and record it" against the monitor's reports,
//! so a report never overtakes the record of the session it is about. Order: gate, then core.

mod api;
mod attempt;
mod config;
mod dispatch;
mod handle;
mod recover;
mod retention;
mod sink;
mod work;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, Mutex as StdMutex, PoisonError};

use mosaic_context::{AgentRuntime, ContextMonitor};
use mosaic_domain::{
    AgentProfiles, AssignmentPolicy, GraphError, IssueRef, IssueState, PriorityOrder, QueueError,
    RepoName,
};
use mosaic_gitea::GiteaApi;
use mosaic_parser::IssueParser;
use mosaic_security::Redactor;
use mosaic_store::{Store, StoreError};
use tokio::sync::{Mutex, Notify};

pub use api::{
    EngineStats, IssueDetail, LiveSessionView, PullRequestView, QueueItem, stored_issue_detail,
    stored_queue, stored_sessions,
};
pub(crate) use attempt::workspace_request;
pub use attempt::{WorkspaceParts, WorkspaceUsage};
pub use config::{EngineConfig, EngineConfigError, MonitorSettings};
pub use recover::RecoveryReport;
pub use retention::FinishedIssues;

use work::Core;

/// What the engine could not do.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("issue {0} is not coordinated")]
    NotFound(IssueRef),
    #[error("issue {issue} cannot go from {from} to {to}")]
    InvalidTransition {
        issue: IssueRef,
        from: IssueState,
        to: IssueState,
    },
    #[error(transparent)]
    Config(#[from] EngineConfigError),
    #[error("store: {0}")]
    Store(#[from] StoreError),
    #[error("dependency graph: {0}")]
    Graph(#[from] GraphError),
    #[error("queue: {0}")]
    Queue(QueueError),
}

impl From<QueueError> for EngineError {
    fn from(err: QueueError) -> Self {
        match err {
            QueueError::InvalidTransition { issue, source } => Self::InvalidTransition {
                issue,
                from: source.from,
                to: source.to,
            },
            QueueError::NotQueued(issue) => Self::NotFound(issue),
            other => Self::Queue(other),
        }
    }
}

/// Everything the engine is built from: traits and configuration, never a concrete adapter.
#[derive(Clone)]
pub struct EngineParts {
    pub store: Arc<dyn Store>,
    pub parser: Arc<dyn IssueParser>,
    /// `None` without a Gitea token: deliveries are still recorded and acted on, dependencies
    /// come from the metadata only, and the outbox keeps the writes.
    pub gitea: Option<Arc<dyn GiteaApi>>,
    /// The assignee whose issues are coordinated (`gitea.assignee`, else the bot's login).
    pub acts_for: String,
    /// The bot's own login (the token's user): events it sent are recorded, never acted on.
    /// Differs from `acts_for` when `gitea.assignee` names another user.
    pub bot_login: String,
    /// Cleans text that came from an agent before it reaches a comment or a stored reason
    /// (invariant 9), built from every configured secret.
    pub redactor: Redactor,
    pub profiles: AgentProfiles,
    pub policy: AssignmentPolicy,
    pub priorities: PriorityOrder,
    pub runtime: Arc<dyn AgentRuntime>,
    pub config: EngineConfig,
    /// One git worktree per issue, published as a pull request. `None` (or no Gitea to say
    /// where a repository lives): sessions run in the runtime's own empty directories and
    /// nothing is pushed.
    pub workspaces: Option<WorkspaceParts>,
}

impl std::fmt::Debug for EngineParts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EngineParts")
            .field("acts_for", &self.acts_for)
            .field("bot_login", &self.bot_login)
            .field("gitea", &self.gitea.is_some())
            .field("config", &self.config)
            .field("workspaces", &self.workspaces)
            .finish_non_exhaustive()
    }
}

pub(crate) struct Inner {
    store: Arc<dyn Store>,
    parser: Arc<dyn IssueParser>,
    gitea: Option<Arc<dyn GiteaApi>>,
    acts_for: String,
    bot_login: String,
    redactor: Redactor,
    profiles: AgentProfiles,
    policy: AssignmentPolicy,
    config: EngineConfig,
    core: Mutex<Core>,
    gate: Mutex<()>,
    monitor: ContextMonitor,
    /// Wakes the dispatcher after every change that may make work startable.
    wake: Notify,
    shutting_down: AtomicBool,
    compactions: AtomicU64,
    rotations: AtomicU64,
    /// Repositories whose disabled dependency API was already logged (logged once).
    deps_disabled_logged: StdMutex<HashSet<RepoName>>,
    workspaces: Option<WorkspaceParts>,
    /// Workspaces prepared by this process, by issue.
    issue_workspaces: StdMutex<work::IssueMap<attempt::KnownWorkspace>>,
    /// Dispatch is held back for lack of disk space (logged when it changes).
    low_disk: AtomicBool,
    /// The spend last stored per running session (a reading that changes nothing writes
    /// nothing); an entry goes when its session ends.
    stored_spend: StdMutex<HashMap<String, mosaic_context::AgentSpend>>,
    /// The bytes the worktrees held when last measured, and when (a walk of every worktree is
    /// not repeated at every metrics refresh).
    measured_usage: StdMutex<Option<(std::time::Instant, u64)>>,
    /// Quality gate counters and each issue's last results (the verify stage).
    gate_stats: attempt::GateStats,
    /// Waiting deliveries that unassign or close an issue (earlier evaluations give up).
    withdrawals: handle::Withdrawals,
    /// Orders open/closed states learnt by deliveries handled concurrently.
    tracker_clock: handle::TrackerClock,
    /// Sessions run at most at once: `max_concurrent_agents`, or, when coordinators sharing
    /// the store run them, the sum of the live ones' capacities ([`Engine::set_agent_capacity`]).
    capacity: std::sync::atomic::AtomicU32,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("acts_for", &self.acts_for)
            .field("bot_login", &self.bot_login)
            .field("config", &self.config)
            .field("gitea", &self.gitea.is_some())
            .finish_non_exhaustive()
    }
}

/// The coordinator's engine; cheap to clone (clones share everything).
#[derive(Debug, Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

impl Engine {
    /// Builds the engine without touching the store; call [`Engine::recover`] before use, or use
    /// [`Engine::start`] which does both.
    pub fn new(parts: EngineParts) -> Result<Self, EngineError> {
        parts.config.validate(&parts.profiles)?;
        let monitor_config = parts.config.monitor_config()?;
        let inner = Arc::new_cyclic(|weak| {
            // The monitor reports back through a weak handle, so engine and monitor do not
            // keep each other alive.
            let sink = Arc::new(sink::EngineSink::new(weak.clone()));
            let monitor = ContextMonitor::new(
                Arc::clone(&parts.runtime),
                Arc::clone(&sink) as Arc<dyn mosaic_context::MonitorSink>,
                sink as Arc<dyn mosaic_context::HandoverSource>,
                monitor_config,
            );
            Inner {
                store: parts.store,
                parser: parts.parser,
                gitea: parts.gitea,
                acts_for: parts.acts_for,
                bot_login: parts.bot_login,
                redactor: parts.redactor,
                profiles: parts.profiles,
                policy: parts.policy,
                core: Mutex::new(Core {
                    queue: mosaic_domain::IssueQueue::new(parts.priorities),
                    ..Core::default()
                }),
                gate: Mutex::new(()),
                monitor,
                wake: Notify::new(),
                shutting_down: AtomicBool::new(false),
                compactions: AtomicU64::new(0),
                rotations: AtomicU64::new(0),
                deps_disabled_logged: StdMutex::new(HashSet::new()),
                workspaces: parts.workspaces,
                issue_workspaces: StdMutex::new(work::IssueMap::default()),
                low_disk: AtomicBool::new(false),
                stored_spend: StdMutex::new(HashMap::new()),
                measured_usage: StdMutex::new(None),
                gate_stats: attempt::GateStats::default(),
                withdrawals: handle::Withdrawals::default(),
                tracker_clock: handle::TrackerClock::default(),
                capacity: std::sync::atomic::AtomicU32::new(parts.config.max_concurrent_agents),
                config: parts.config,
            }
        });
        Ok(Self { inner })
    }

    /// [`Engine::new`] followed by [`Engine::recover`].
    pub async fn start(parts: EngineParts) -> Result<(Self, RecoveryReport), EngineError> {
        let engine = Self::new(parts)?;
        let report = engine.recover().await?;
        Ok((engine, report))
    }

    pub fn config(&self) -> &EngineConfig {
        &self.inner.config
    }

    /// The assignee the engine acts for.
    pub fn acts_for(&self) -> &str {
        &self.inner.acts_for
    }

    /// The bot's own login.
    pub fn bot_login(&self) -> &str {
        &self.inner.bot_login
    }

    /// Sets how many sessions may run at once across the coordinators that run them (the sum
    /// of their capacities, as they report it); wakes the dispatcher when it grew. At least 1.
    pub fn set_agent_capacity(&self, capacity: u32) {
        let capacity = capacity.max(1);
        let before = self
            .inner
            .capacity
            .swap(capacity, std::sync::atomic::Ordering::SeqCst);
        if capacity > before {
            self.inner.wake.notify_one();
        }
    }

    /// How many sessions may run at once now.
    pub fn agent_capacity(&self) -> u32 {
        self.inner
            .capacity
            .load(std::sync::atomic::Ordering::SeqCst)
    }

    /// The context monitor watching the engine's sessions.
    pub fn monitor(&self) -> &ContextMonitor {
        &self.inner.monitor
    }
}

impl Inner {
    /// Whether finishing an issue closes it (`close_on_success`), so that its dependents need
    /// not wait for a person to close it. Issue 4: ready means every blocker is closed.
    fn completion_closes(&self) -> bool {
        self.config.close_on_success
    }

    /// Whether `login` is the bot itself (the sender of its own writes).
    fn is_bot(&self, login: &str) -> bool {
        login.eq_ignore_ascii_case(&self.bot_login)
    }

    /// Whether `login` is the assignee the coordinator works for.
    fn is_coordinated_assignee(&self, login: &str) -> bool {
        login.eq_ignore_ascii_case(&self.acts_for)
    }

    fn log_deps_disabled_once(&self, repo: &RepoName) {
        let first = self
            .deps_disabled_logged
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(repo.clone());
        if first {
            tracing::info!(%repo, "Gitea dependencies are disabled for this repository; using the references in the issue metadata");
        }
    }
}
