//! The context monitor: watches every live session, compacts and rotates.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use chrono::Utc;
use mosaic_domain::{AgentProfile, IssueRef};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, error, info, warn};

use crate::policy::{ContextThresholds, ContextUsage, Decision, PolicyError, decide};
use crate::records::{
    COMPACTION_PROMPT, COMPACTION_PROMPT_VERSION, CompactionRecord, CompactionResult,
    HandoverSource, LiveSession, MonitorSink, SessionRotation, SinkError, UsageReading,
};
use crate::session::{
    AgentRuntime, AgentSession, RuntimeError, SessionError, SessionId, SessionOutcome,
    SessionSnapshot, SessionTask,
};

/// Exponential backoff: `initial`, doubled per attempt, capped at `max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Total attempts, the first one included; at least 1.
    pub attempts: u32,
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
}

impl RetryPolicy {
    /// The pause after failed attempt number `attempt` (1-based).
    pub fn backoff(&self, attempt: u32) -> Duration {
        let factor = 2u32.saturating_pow(attempt.saturating_sub(1));
        self.initial_backoff
            .saturating_mul(factor)
            .min(self.max_backoff)
    }
}

/// How the monitor behaves; `Default` gives the documented defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct MonitorConfig {
    /// Global thresholds; a profile's own values override them.
    pub thresholds: ContextThresholds,
    /// Sessions that push nothing for this long are asked for their usage.
    pub poll_interval: Duration,
    /// Usage readings kept per session.
    pub history_len: usize,
    /// Spawning the replacement session in a rotation.
    pub spawn_retry: RetryPolicy,
    /// Delivering a record to the sink or a task back to the queue.
    pub sink_retry: RetryPolicy,
    /// Pauses after failed usage polls (attempts is ignored: polling never gives up).
    pub poll_error_backoff: RetryPolicy,
}

impl Default for MonitorConfig {
    fn default() -> Self {
        Self {
            thresholds: ContextThresholds::default(),
            poll_interval: Duration::from_secs(10),
            history_len: 120,
            spawn_retry: RetryPolicy {
                attempts: 3,
                initial_backoff: Duration::from_secs(2),
                max_backoff: Duration::from_secs(30),
            },
            sink_retry: RetryPolicy {
                attempts: 4,
                initial_backoff: Duration::from_millis(200),
                max_backoff: Duration::from_secs(5),
            },
            poll_error_backoff: RetryPolicy {
                attempts: u32::MAX,
                initial_backoff: Duration::from_secs(1),
                max_backoff: Duration::from_secs(60),
            },
        }
    }
}

/// What the monitor could not do.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum MonitorError {
    #[error(transparent)]
    Policy(#[from] PolicyError),
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    #[error(transparent)]
    Session(#[from] SessionError),
    #[error("session {0} is not watched by the monitor")]
    UnknownSession(SessionId),
    #[error("rotation of session {old_session_id} failed after {attempts} attempts: {last_error}")]
    RotationFailed {
        old_session_id: SessionId,
        attempts: u32,
        last_error: String,
    },
    #[error("session {0} ended before the request was handled")]
    SessionEnded(SessionId),
}

enum Command {
    Rotate(oneshot::Sender<Result<SessionRotation, MonitorError>>),
    Close(
        String,
        oneshot::Sender<Result<SessionOutcome, MonitorError>>,
    ),
}

/// One line of sessions: the first session of an issue and the ones rotation put in its place.
struct Chain {
    session: Arc<dyn AgentSession>,
    profile: AgentProfile,
    task: SessionTask,
    thresholds: ContextThresholds,
    history: VecDeque<UsageReading>,
    started_at: chrono::DateTime<Utc>,
    rotations: u32,
    commands: mpsc::Sender<Command>,
}

impl Chain {
    fn live(&self) -> LiveSession {
        let snapshot = self.session.subscribe().borrow().clone();
        LiveSession {
            session_id: self.session.id().clone(),
            agent_type: self.session.agent_type().to_owned(),
            issue: self.session.issue().clone(),
            process_id: self.session.process_id(),
            started_at: self.started_at,
            usage: self.history.back().map(|reading| reading.usage),
            compactions: snapshot.compactions,
            rotations: self.rotations,
            spend: snapshot.spend,
            api_retry: snapshot.api_retry,
        }
    }
}

struct Inner {
    runtime: Arc<dyn AgentRuntime>,
    sink: Arc<dyn MonitorSink>,
    handover: Arc<dyn HandoverSource>,
    config: MonitorConfig,
    chains: Mutex<HashMap<u64, Chain>>,
    next_chain: AtomicU64,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ContextMonitor")
            .field("config", &self.config)
            .field("sessions", &self.chains().len())
            .finish_non_exhaustive()
    }
}

impl Inner {
    fn chains(&self) -> MutexGuard<'_, HashMap<u64, Chain>> {
        // The map holds plain data; a panic elsewhere cannot leave it half-updated in a way
        // that matters more than stopping the monitor would.
        self.chains.lock().unwrap_or_else(PoisonError::into_inner)
    }

    async fn deliver<F, Fut>(&self, what: &str, mut call: F)
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<(), SinkError>>,
    {
        let retry = self.config.sink_retry;
        for attempt in 1..=retry.attempts.max(1) {
            match call().await {
                Ok(()) => return,
                Err(err) if attempt < retry.attempts => {
                    warn!(what, attempt, error = %err, "monitor sink refused a record; retrying");
                    tokio::time::sleep(retry.backoff(attempt)).await;
                }
                Err(err) => {
                    error!(what, attempt, error = %err, "monitor sink refused a record; giving up");
                }
            }
        }
    }
}

/// Watches sessions; cheap to clone (all clones share the same sessions).
#[derive(Debug, Clone)]
pub struct ContextMonitor {
    inner: Arc<Inner>,
}

impl ContextMonitor {
    pub fn new(
        runtime: Arc<dyn AgentRuntime>,
        sink: Arc<dyn MonitorSink>,
        handover: Arc<dyn HandoverSource>,
        config: MonitorConfig,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                runtime,
                sink,
                handover,
                config,
                chains: Mutex::new(HashMap::new()),
                next_chain: AtomicU64::new(1),
            }),
        }
    }

    pub fn config(&self) -> &MonitorConfig {
        &self.inner.config
    }

    /// Starts a session of `profile` on `task` and watches it. The profile's thresholds are
    /// checked first, so a misconfigured profile never starts a process.
    pub async fn start(
        &self,
        profile: &AgentProfile,
        task: SessionTask,
    ) -> Result<Arc<dyn AgentSession>, MonitorError> {
        self.inner.config.thresholds.for_profile(profile)?;
        ContextUsage::new(0, profile.context_window)?;
        let session = self.inner.runtime.spawn(profile, &task).await?;
        self.watch(Arc::clone(&session), profile.clone(), task)?;
        Ok(session)
    }

    /// Watches a session started elsewhere.
    pub fn watch(
        &self,
        session: Arc<dyn AgentSession>,
        profile: AgentProfile,
        task: SessionTask,
    ) -> Result<(), MonitorError> {
        let thresholds = self.inner.config.thresholds.for_profile(&profile)?;
        let (commands, receiver) = mpsc::channel(8);
        let key = self.inner.next_chain.fetch_add(1, Ordering::Relaxed);
        info!(session = %session.id(), agent = session.agent_type(), issue = %session.issue(), "watching session");
        self.inner.chains().insert(
            key,
            Chain {
                session,
                profile,
                task,
                thresholds,
                history: VecDeque::new(),
                started_at: Utc::now(),
                rotations: 0,
                commands,
            },
        );
        tokio::spawn(supervise(Arc::clone(&self.inner), key, receiver));
        Ok(())
    }

    /// Every watched session, for the API and metrics.
    pub fn live_sessions(&self) -> Vec<LiveSession> {
        let mut sessions: Vec<_> = self.inner.chains().values().map(Chain::live).collect();
        sessions.sort_by(|a, b| a.session_id.cmp(&b.session_id));
        sessions
    }

    /// The watched session working on `issue`, if any.
    pub fn session_for_issue(&self, issue: &IssueRef) -> Option<Arc<dyn AgentSession>> {
        self.inner
            .chains()
            .values()
            .find(|chain| chain.session.issue() == issue)
            .map(|chain| Arc::clone(&chain.session))
    }

    /// The bounded usage history of a watched session, oldest first.
    pub fn history(&self, session_id: &SessionId) -> Option<Vec<UsageReading>> {
        self.inner
            .chains()
            .values()
            .find(|chain| chain.session.id() == session_id)
            .map(|chain| chain.history.iter().copied().collect())
    }

    /// Rotates a session now, whatever its usage (steps 1–5 of a rotation).
    pub async fn trigger_rotation(
        &self,
        session_id: &SessionId,
    ) -> Result<SessionRotation, MonitorError> {
        let (reply, answer) = oneshot::channel();
        self.send(session_id, Command::Rotate(reply)).await?;
        answer
            .await
            .map_err(|_| MonitorError::SessionEnded(session_id.clone()))?
    }

    /// Closes a watched session (unassigned, closed issue, shutdown) and reports its outcome.
    pub async fn close(
        &self,
        session_id: &SessionId,
        reason: &str,
    ) -> Result<SessionOutcome, MonitorError> {
        let (reply, answer) = oneshot::channel();
        self.send(session_id, Command::Close(reason.to_owned(), reply))
            .await?;
        answer
            .await
            .map_err(|_| MonitorError::SessionEnded(session_id.clone()))?
    }

    /// Closes every watched session, e.g. on shutdown.
    pub async fn close_all(&self, reason: &str) {
        let ids: Vec<SessionId> = self
            .live_sessions()
            .into_iter()
            .map(|live| live.session_id)
            .collect();
        for id in ids {
            if let Err(err) = self.close(&id, reason).await {
                warn!(session = %id, error = %err, "could not close session");
            }
        }
    }

    async fn send(&self, session_id: &SessionId, command: Command) -> Result<(), MonitorError> {
        let sender = {
            let chains = self.inner.chains();
            chains
                .values()
                .find(|chain| chain.session.id() == session_id)
                .map(|chain| chain.commands.clone())
        }
        .ok_or_else(|| MonitorError::UnknownSession(session_id.clone()))?;
        sender
            .send(command)
            .await
            .map_err(|_| MonitorError::SessionEnded(session_id.clone()))
    }
}

/// Runs a chain's watcher and restarts it if it panics (a faulty sink, runtime or session must
/// not end the monitoring of this chain, and never that of the others).
async fn supervise(inner: Arc<Inner>, key: u64, receiver: mpsc::Receiver<Command>) {
    let receiver = Arc::new(tokio::sync::Mutex::new(receiver));
    let mut restarts = 0u32;
    loop {
        let watcher = tokio::spawn(run_chain(Arc::clone(&inner), key, Arc::clone(&receiver)));
        match watcher.await {
            Ok(()) => return,
            Err(join_error) => {
                restarts = restarts.saturating_add(1);
                error!(chain = key, restarts, error = %join_error, "session watcher crashed; restarting it");
                if !inner.chains().contains_key(&key) {
                    return;
                }
                tokio::time::sleep(inner.config.poll_error_backoff.backoff(restarts)).await;
            }
        }
    }
}

enum Wake {
    Command(Option<Command>),
    Changed { publisher_alive: bool },
    Poll,
}

/// What the watcher does next after handling a reading or a command.
enum Flow {
    Continue,
    Stop,
}

async fn run_chain(
    inner: Arc<Inner>,
    key: u64,
    receiver: Arc<tokio::sync::Mutex<mpsc::Receiver<Command>>>,
) {
    let mut commands = receiver.lock().await;
    let Some(mut session) = current_session(&inner, key) else {
        return;
    };
    let mut updates = session.subscribe();
    let mut publisher_alive = true;
    let mut commands_open = true;
    let mut last_usage: Option<ContextUsage> = None;
    let mut last_seq = 0u64;
    let mut poll_failures = 0u32;
    // The turn count at which the session's wait for input was last answered.
    let mut answered_wait: Option<u32> = None;

    loop {
        let wake = tokio::select! {
            command = commands.recv(), if commands_open => Wake::Command(command),
            changed = updates.changed(), if publisher_alive => Wake::Changed { publisher_alive: changed.is_ok() },
            () = tokio::time::sleep(inner.config.poll_interval) => Wake::Poll,
        };

        let mut reading = None;
        match wake {
            Wake::Command(None) => commands_open = false,
            Wake::Command(Some(Command::Close(reason, reply))) => {
                let result = session.close(&reason).await.map_err(MonitorError::from);
                let outcome = result.clone().unwrap_or_else(|_| session.outcome());
                report_outcome(&inner, key, &outcome).await;
                // The caller may have gone away; the outcome is recorded either way.
                let _ = reply.send(result);
                return;
            }
            Wake::Command(Some(Command::Rotate(reply))) => {
                let result = rotate(&inner, key, "requested").await;
                let flow = after_rotation(&result);
                let _ = reply.send(result);
                if let Flow::Stop = flow {
                    return;
                }
            }
            Wake::Changed {
                publisher_alive: alive,
            } => {
                publisher_alive = alive;
                let snapshot: SessionSnapshot = updates.borrow_and_update().clone();
                if snapshot.usage_seq != last_seq {
                    last_seq = snapshot.usage_seq;
                    reading = snapshot.usage;
                }
            }
            Wake::Poll => match session.usage().await {
                Ok(usage) => {
                    poll_failures = 0;
                    reading = usage.filter(|usage| Some(*usage) != last_usage);
                }
                Err(err) => {
                    poll_failures = poll_failures.saturating_add(1);
                    warn!(session = %session.id(), failures = poll_failures, error = %err, "usage poll failed");
                    tokio::time::sleep(inner.config.poll_error_backoff.backoff(poll_failures))
                        .await;
                }
            },
        }

        // A rotation may have replaced the session.
        match current_session(&inner, key) {
            Some(current) if current.id() != session.id() => {
                session = current;
                updates = session.subscribe();
                publisher_alive = true;
                last_usage = None;
                last_seq = 0;
                answered_wait = None;
                continue;
            }
            Some(_) => {}
            None => return,
        }

        let outcome = session.outcome();
        if !outcome.is_running() {
            report_outcome(&inner, key, &outcome).await;
            return;
        }

        if let Some(usage) = reading {
            last_usage = Some(usage);
            if let Flow::Stop = handle_reading(&inner, key, &session, usage).await {
                return;
            }
            last_seq = updates.borrow_and_update().usage_seq;
            // The reading may have rotated the session: follow the new one at once rather than
            // at the next poll, so its usage and outcome are seen as they happen.
            if let Some(current) = current_session(&inner, key)
                && current.id() != session.id()
            {
                session = current;
                updates = session.subscribe();
                publisher_alive = true;
                last_usage = None;
                last_seq = 0;
                answered_wait = None;
            }
        }

        // After the reading (which may have rotated it): a session waiting for input after its
        // turns is answered once per turn count.
        let snapshot = session.subscribe().borrow().clone();
        if let Some(result) = snapshot.waiting
            && snapshot.outcome.is_running()
            && answered_wait != Some(snapshot.turns)
        {
            answered_wait = Some(snapshot.turns);
            answer_wait(&inner, key, &session, &result).await;
        }
    }
}

fn current_session(inner: &Inner, key: u64) -> Option<Arc<dyn AgentSession>> {
    inner
        .chains()
        .get(&key)
        .map(|chain| Arc::clone(&chain.session))
}

fn after_rotation(result: &Result<SessionRotation, MonitorError>) -> Flow {
    match result {
        Ok(rotation) if rotation.new_session_id.is_some() => Flow::Continue,
        _ => Flow::Stop,
    }
}

async fn handle_reading(
    inner: &Arc<Inner>,
    key: u64,
    session: &Arc<dyn AgentSession>,
    usage: ContextUsage,
) -> Flow {
    let Some((live, thresholds, profile)) = record_reading(inner, key, usage) else {
        return Flow::Stop;
    };
    inner
        .deliver("usage", || inner.sink.on_usage(&live, &usage))
        .await;
    let decision = decide(&usage, &thresholds);
    debug!(session = %session.id(), percent = usage.percent, ?decision, "context reading");
    let rotate_because = match decision {
        Decision::Continue => return Flow::Continue,
        Decision::Rotate => format!("context at {:.1}%", usage.percent),
        Decision::Compact if !inner.runtime.can_compact(&profile) => format!(
            "context at {:.1}% and agent `{}` cannot compact",
            usage.percent, profile.name
        ),
        Decision::Compact => match compact(inner, session, &live, usage, &thresholds).await {
            None => return Flow::Continue,
            Some(why) => why,
        },
    };
    if !session.outcome().is_running() {
        // It finished meanwhile; the watcher reports the outcome instead of rotating.
        return Flow::Continue;
    }
    after_rotation(&rotate(inner, key, &rotate_because).await)
}

/// Asks the sink what a session waiting for input does next, and does it: the next turn, or the
/// end of its input (the loop then sees the outcome). A sink that cannot answer finishes it.
async fn answer_wait(
    inner: &Arc<Inner>,
    key: u64,
    session: &Arc<dyn AgentSession>,
    result: &crate::session::TurnResult,
) {
    let Some(live) = inner.chains().get(&key).map(Chain::live) else {
        return;
    };
    let next = match inner.sink.on_waiting(&live, result).await {
        Ok(next) => next,
        Err(err) => {
            warn!(session = %session.id(), error = %err, "no answer for a session waiting for input; finishing it");
            crate::session::NextTurn::Finish
        }
    };
    match next {
        crate::session::NextTurn::Continue(prompt) => {
            info!(session = %session.id(), "sending the session its next turn");
            if let Err(err) = session.send(&prompt).await {
                warn!(session = %session.id(), error = %err, "the next turn could not be sent; finishing the session");
                let _ = session.finish().await;
            }
        }
        crate::session::NextTurn::Finish => {
            if let Err(err) = session.finish().await {
                warn!(session = %session.id(), error = %err, "finishing the session reported an error");
            }
        }
    }
}

fn record_reading(
    inner: &Inner,
    key: u64,
    usage: ContextUsage,
) -> Option<(LiveSession, ContextThresholds, AgentProfile)> {
    let mut chains = inner.chains();
    let chain = chains.get_mut(&key)?;
    chain.history.push_back(UsageReading {
        usage,
        at: Utc::now(),
    });
    while chain.history.len() > inner.config.history_len.max(1) {
        chain.history.pop_front();
    }
    Some((chain.live(), chain.thresholds, chain.profile.clone()))
}

/// Compacts; returns why the session must be rotated instead, or `None` when compaction worked.
async fn compact(
    inner: &Inner,
    session: &Arc<dyn AgentSession>,
    live: &LiveSession,
    before: ContextUsage,
    thresholds: &ContextThresholds,
) -> Option<String> {
    info!(session = %session.id(), percent = before.percent, "compacting session");
    let (result, error_message) = match session.compact(COMPACTION_PROMPT).await {
        Ok(after) => {
            let success = after.fraction() < thresholds.compact();
            (
                CompactionResult::measured(before.used_tokens, after.used_tokens, success),
                None,
            )
        }
        Err(err) => (
            CompactionResult::measured(before.used_tokens, before.used_tokens, false),
            Some(err.to_string()),
        ),
    };
    let record = CompactionRecord {
        session_id: live.session_id.clone(),
        agent_type: live.agent_type.clone(),
        issue: live.issue.clone(),
        prompt_version: COMPACTION_PROMPT_VERSION,
        result,
        error_message: error_message.clone(),
        at: Utc::now(),
    };
    info!(
        session = %record.session_id,
        before = result.before_tokens,
        after = result.after_tokens,
        freed_percent = result.freed_percent,
        success = result.success,
        "compaction finished"
    );
    inner
        .deliver("compaction", || inner.sink.on_compaction(&record))
        .await;
    if result.success {
        None
    } else {
        Some(error_message.map_or_else(
            || {
                format!(
                    "compaction left {} tokens, at or above the compact threshold",
                    result.after_tokens
                )
            },
            |err| format!("compaction failed: {err}"),
        ))
    }
}

/// Steps 1–5: read usage, close the session, spawn a new one of the same agent type, hand over
/// the next issue, record the rotation.
async fn rotate(inner: &Arc<Inner>, key: u64, why: &str) -> Result<SessionRotation, MonitorError> {
    let Some((old, profile, task, last_usage)) = inner.chains().get(&key).map(|chain| {
        (
            Arc::clone(&chain.session),
            chain.profile.clone(),
            chain.task.clone(),
            chain.history.back().map(|reading| reading.usage),
        )
    }) else {
        return Err(MonitorError::UnknownSession(SessionId::from(String::new())));
    };
    let old_id = old.id().clone();
    info!(session = %old_id, agent = %profile.name, issue = %task.issue, why, "rotating session");

    // 1. The usage the rotation is measured by.
    let before = match old.usage().await {
        Ok(Some(usage)) => Some(usage),
        Ok(None) => last_usage,
        Err(err) => {
            warn!(session = %old_id, error = %err, "usage before rotation unavailable; using the last reading");
            last_usage
        }
    };
    // 2. Close it at its turn boundary; its runtime ends every process it started.
    if let Err(err) = old.close_after_turn(&format!("rotation: {why}")).await {
        warn!(session = %old_id, error = %err, "closing the rotated session reported an error");
    }
    // Read after the close: the turn's own closing answer is the best hand-over there is.
    let summary = old.latest_summary();
    // Read after the close: whatever the agent reported last is what the session spent.
    let old_spend = old.subscribe().borrow().spend;

    // 4 (decided before 3, because it names the task the new session gets).
    let unfinished = SessionTask {
        handover_summary: summary.or_else(|| task.handover_summary.clone()),
        ..task.clone()
    };
    let next = match inner
        .handover
        .next_issue_for(&profile.name, &unfinished)
        .await
    {
        Ok(next) => next,
        Err(err) => {
            warn!(session = %old_id, error = %err, "handover source failed; continuing the unfinished issue");
            Some(unfinished.clone())
        }
    };
    let record = |new_session_id: Option<SessionId>,
                  next_issue: Option<IssueRef>,
                  success: bool,
                  error_message: Option<String>,
                  attempt: u32| SessionRotation {
        old_session_id: old_id.clone(),
        new_session_id,
        agent_type: profile.name.clone(),
        issue: task.issue.clone(),
        next_issue,
        context_before_tokens: before.map_or(0, |usage| usage.used_tokens),
        context_before_percent: before.map_or(0.0, |usage| usage.percent),
        old_spend,
        success,
        error_message,
        attempt,
        at: Utc::now(),
    };

    let Some(next) = next else {
        let rotation = record(None, None, true, None, 1);
        info!(session = %old_id, "rotation: nothing left to hand over");
        inner
            .deliver("rotation", || inner.sink.on_rotation(&rotation))
            .await;
        inner.chains().remove(&key);
        return Ok(rotation);
    };

    // 3. Spawn the replacement, with backoff; a failure is recorded every time.
    let retry = inner.config.spawn_retry;
    let attempts = retry.attempts.max(1);
    let mut last_error = String::new();
    for attempt in 1..=attempts {
        match inner.runtime.spawn(&profile, &next).await {
            Ok(new_session) => {
                let rotation = record(
                    Some(new_session.id().clone()),
                    Some(next.issue.clone()),
                    true,
                    None,
                    attempt,
                );
                info!(
                    old = %rotation.old_session_id,
                    new = %new_session.id(),
                    issue = %rotation.issue,
                    next_issue = %next.issue,
                    context_before_tokens = rotation.context_before_tokens,
                    context_before_percent = rotation.context_before_percent,
                    "session rotated"
                );
                if let Some(chain) = inner.chains().get_mut(&key) {
                    chain.session = new_session;
                    chain.task = next.clone();
                    chain.history.clear();
                    chain.started_at = Utc::now();
                    chain.rotations = chain.rotations.saturating_add(1);
                }
                // 5. Record it.
                inner
                    .deliver("rotation", || inner.sink.on_rotation(&rotation))
                    .await;
                return Ok(rotation);
            }
            Err(err) => {
                last_error = err.to_string();
                let rotation = record(
                    None,
                    Some(next.issue.clone()),
                    false,
                    Some(last_error.clone()),
                    attempt,
                );
                error!(session = %old_id, attempt, error = %last_error, "rotation could not start the new session");
                inner
                    .deliver("rotation", || inner.sink.on_rotation(&rotation))
                    .await;
                if attempt < attempts {
                    tokio::time::sleep(retry.backoff(attempt)).await;
                }
            }
        }
    }

    // Never lost: the task goes back to the engine's queue.
    let reason = format!("rotation could not start a new session: {last_error}");
    inner
        .deliver("requeue", || {
            let handover = Arc::clone(&inner.handover);
            let next = next.clone();
            let reason = reason.clone();
            async move {
                handover
                    .requeue(&next, &reason)
                    .await
                    .map_err(|err| SinkError(err.to_string()))
            }
        })
        .await;
    inner.chains().remove(&key);
    Err(MonitorError::RotationFailed {
        old_session_id: old_id,
        attempts,
        last_error,
    })
}

async fn report_outcome(inner: &Inner, key: u64, outcome: &SessionOutcome) {
    let Some(live) = inner.chains().remove(&key).map(|chain| chain.live()) else {
        return;
    };
    info!(session = %live.session_id, issue = %live.issue, ?outcome, "session ended");
    inner
        .deliver("outcome", || inner.sink.on_outcome(&live, outcome))
        .await;
}
