//! The leader's side: sessions that run wherever a coordinator claims them.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use async_trait::async_trait;
use chrono::Utc;
use mosaic_context::{
    AgentRuntime, AgentSession, ContextUsage, KillReason, RuntimeError, SessionError, SessionId,
    SessionOutcome, SessionSnapshot, SessionTask,
};
use mosaic_domain::{AgentProfile, IssueRef};
use mosaic_store::{SessionRequest, SessionRequestView, Store};
use tokio::sync::watch;

use super::wire::{Command, CommandAnswer, ReportedState};

/// How the leader follows remote sessions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RemoteConfig {
    /// How often the store is read for the sessions' reports.
    pub poll: Duration,
    /// A claimant silent this long (by the store's clock) has lost its session: the leader's
    /// lease, since a coordinator that stops answering stops leading after it too.
    pub lost_after: Duration,
    /// A request no coordinator claimed for this long fails (and says so): no coordinator
    /// with room runs its agent. The leader dispatches only within the capacity its peers
    /// report, so a request normally waits a poll or two.
    pub claim_timeout: Duration,
}

impl Default for RemoteConfig {
    fn default() -> Self {
        Self {
            poll: Duration::from_millis(200),
            lost_after: Duration::from_secs(5),
            claim_timeout: Duration::from_secs(300),
        }
    }
}

/// An [`AgentRuntime`] whose sessions any coordinator sharing the store may run.
#[derive(Debug, Clone)]
pub struct RemoteRuntime {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    store: Arc<dyn Store>,
    /// The runtime the claimants run (configured alike everywhere): it says what can compact.
    local: Arc<dyn AgentRuntime>,
    config: RemoteConfig,
    followed: Mutex<HashMap<String, Arc<RemoteSession>>>,
}

impl RemoteRuntime {
    /// Starts following the sessions it will request (a task on the current tokio runtime,
    /// ending when the last clone of this runtime is dropped).
    pub fn new(store: Arc<dyn Store>, local: Arc<dyn AgentRuntime>, config: RemoteConfig) -> Self {
        let shared = Arc::new(Shared {
            store,
            local,
            config,
            followed: Mutex::new(HashMap::new()),
        });
        tokio::spawn(follow(Arc::downgrade(&shared)));
        Self { shared }
    }
}

#[async_trait]
impl AgentRuntime for RemoteRuntime {
    async fn spawn_with_id(
        &self,
        id: SessionId,
        profile: &AgentProfile,
        task: &SessionTask,
    ) -> Result<Arc<dyn AgentSession>, RuntimeError> {
        let spawn_error = |message: String| RuntimeError::Spawn {
            agent: profile.name.clone(),
            message,
        };
        let task_json = serde_json::to_string(task)
            .map_err(|err| spawn_error(format!("the task could not be written: {err}")))?;
        let session = Arc::new(RemoteSession::new(
            id.clone(),
            profile.name.clone(),
            task.issue.clone(),
            Arc::clone(&self.shared.store),
        ));
        let requested = self
            .shared
            .store
            .request_session(&SessionRequest {
                session_id: id.to_string(),
                issue: task.issue.clone(),
                agent: profile.name.clone(),
                task_json,
            })
            .await;
        if let Err(err) = requested {
            // It may have been stored all the same (an answer lost after the commit): it is
            // cancelled, so nobody runs a session the leader does not follow.
            if !session.cancel_request().await {
                tracing::error!(session = %id, "a session request that failed could not be cancelled; if it was stored, its claimant stops when the next leader starts");
            }
            return Err(spawn_error(format!(
                "the session could not be requested: {err}"
            )));
        }
        self.shared
            .followed
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(id.to_string(), Arc::clone(&session));
        Ok(session)
    }

    fn can_compact(&self, profile: &AgentProfile) -> bool {
        self.shared.local.can_compact(profile)
    }
}

/// Reads the followed sessions' requests every `poll` and brings each session up to date.
async fn follow(shared: Weak<Shared>) {
    let mut failures = 0u32;
    loop {
        let Some(shared) = shared.upgrade() else {
            return;
        };
        let poll = shared.config.poll;
        let ids: Vec<String> = shared
            .followed
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .keys()
            .cloned()
            .collect();
        if !ids.is_empty() {
            match shared.store.session_requests(&ids).await {
                Ok(views) => {
                    failures = 0;
                    for view in views {
                        let session = shared
                            .followed
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .get(&view.session_id)
                            .cloned();
                        if let Some(session) = session
                            && session.apply(&view, &shared.config).await
                        {
                            shared
                                .followed
                                .lock()
                                .unwrap_or_else(PoisonError::into_inner)
                                .remove(&view.session_id);
                        }
                    }
                }
                Err(err) => {
                    failures = failures.saturating_add(1);
                    if failures == 1 || failures.is_multiple_of(50) {
                        tracing::warn!(error = %err, failures, "could not read the sessions' reports; trying again");
                    }
                }
            }
        }
        drop(shared);
        tokio::time::sleep(poll).await;
    }
}

/// Polls that try to record a session's process before giving up (its row had one already).
const PID_TRIES: u32 = 50;

/// What the leader knows of a remote session beside its snapshot.
#[derive(Debug, Default)]
struct Known {
    claimant: Option<String>,
    pid: Option<u32>,
    summary: Option<String>,
    answers: Vec<CommandAnswer>,
    /// The claimant's report as last read: an unchanged one is not read again.
    last_report: Option<String>,
    /// Why the leader closed it (shown when it ends before anyone claimed it).
    close_reason: Option<String>,
    /// The session's row has its process (recorded once the claimant named it), or enough
    /// tries found it had one already (the claim came before the row, which took it).
    pid_recorded: bool,
    pid_tries: u32,
    unreadable_logged: bool,
}

/// A session requested from the coordinators sharing the store, as the leader sees it.
#[derive(Debug)]
pub(crate) struct RemoteSession {
    id: SessionId,
    agent: String,
    issue: IssueRef,
    store: Arc<dyn Store>,
    snapshot: watch::Sender<SessionSnapshot>,
    /// When it was requested, for the claim timeout.
    requested: std::time::Instant,
    known: Mutex<Known>,
    /// Bumped whenever `known` changes (answers, end), for waiters.
    generation: watch::Sender<u64>,
}

impl RemoteSession {
    fn new(id: SessionId, agent: String, issue: IssueRef, store: Arc<dyn Store>) -> Self {
        Self {
            id,
            agent,
            issue,
            store,
            snapshot: watch::Sender::new(SessionSnapshot::new(Utc::now())),
            requested: std::time::Instant::now(),
            known: Mutex::new(Known::default()),
            generation: watch::Sender::new(0),
        }
    }

    fn known(&self) -> std::sync::MutexGuard<'_, Known> {
        self.known.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Takes in the request as the store has it; returns whether the session has ended.
    async fn apply(&self, view: &SessionRequestView, config: &RemoteConfig) -> bool {
        let lost_after = config.lost_after;
        let new_report = view
            .state_json
            .as_deref()
            .filter(|text| self.known().last_report.as_deref() != Some(*text));
        let state = new_report.and_then(|text| match serde_json::from_str::<ReportedState>(text) {
                Ok(state) => Some(state),
                Err(err) => {
                    let mut known = self.known();
                    if !known.unreadable_logged {
                        known.unreadable_logged = true;
                        tracing::warn!(session = %self.id, error = %err, "unreadable session report ignored (said once per session)");
                    }
                    None
                }
            });
        let silent = view
            .silent_ms
            .is_some_and(|ms| u128::from(ms) > lost_after.as_millis());
        let lost = !view.ended && view.claimant.is_some() && silent;
        let unclaimed_cancel = !view.ended && view.claimant.is_none() && view.cancelled;
        let unclaimed_too_long = !view.ended
            && view.claimant.is_none()
            && !view.cancelled
            && self.requested.elapsed() > config.claim_timeout;
        // Cancelled first (unless it is already), so a claimant that comes back (or claims it
        // right now) stops rather than works on.
        if (lost || unclaimed_too_long)
            && !view.cancelled
            && let Err(err) = self
                .store
                .cancel_session_requests(Some(&[self.id.to_string()]))
                .await
        {
            // Until that is stored, the session is not ended here and stays followed (the next
            // poll tries again).
            tracing::warn!(session = %self.id, error = %err, "could not cancel a lost session's request; trying again");
            return false;
        }
        let unrecorded_pid = {
            let known = self.known();
            state
                .as_ref()
                .and_then(|state| state.pid)
                .or(known.pid)
                .filter(|_| !known.pid_recorded)
        };
        if let Some(pid) = unrecorded_pid {
            // Recorded for the API and for ending orphans; the session's row may not be
            // written yet (the claim can come first), so this is tried again until it is.
            match self
                .store
                .record_session_process(self.id.as_str(), pid)
                .await
            {
                Ok(true) => self.known().pid_recorded = true,
                Ok(false) => {
                    let mut known = self.known();
                    known.pid_tries += 1;
                    known.pid_recorded = known.pid_tries >= PID_TRIES;
                }
                Err(err) => {
                    tracing::debug!(session = %self.id, error = %err, "could not record the session's process yet")
                }
            }
        }
        let mut known = self.known();
        known.claimant.clone_from(&view.claimant);
        if let Some(text) = new_report {
            known.last_report = Some(text.to_owned());
        }
        if let Some(state) = &state {
            known.pid = state.pid.or(known.pid);
            if state.latest_summary.is_some() {
                known.summary.clone_from(&state.latest_summary);
            }
            known.answers.clone_from(&state.answers);
        }
        let mut snapshot = state.as_ref().map_or_else(
            || self.snapshot.borrow().clone(),
            |state| state.snapshot.clone(),
        );
        let ended = if view.ended {
            if snapshot.outcome.is_running() {
                // Ended with an unreadable last word: nothing to go on but that it ended.
                snapshot.outcome = SessionOutcome::Killed {
                    reason: KillReason::Interrupted {
                        reason: "its coordinator's last report could not be read".to_owned(),
                    },
                };
            }
            true
        } else if lost {
            let silent_for = view.silent_ms.unwrap_or_default() / 1000;
            tracing::warn!(session = %self.id, issue = %self.issue, claimant = ?view.claimant, silent_for_secs = silent_for, "the coordinator running the session stopped answering; the issue runs again");
            snapshot.outcome = SessionOutcome::Killed {
                reason: KillReason::Interrupted {
                    reason: format!(
                        "the coordinator running it stopped answering for {silent_for} s"
                    ),
                },
            };
            true
        } else if unclaimed_too_long {
            let waited = config.claim_timeout.as_secs();
            tracing::error!(session = %self.id, issue = %self.issue, agent = %self.agent, waited_secs = waited, "no coordinator claimed the session");
            snapshot.outcome = SessionOutcome::Failed {
                reason: format!(
                    "no coordinator with room for agent `{}` claimed the session within {waited} s",
                    self.agent
                ),
            };
            true
        } else if unclaimed_cancel {
            snapshot.outcome = SessionOutcome::Killed {
                reason: KillReason::Closed {
                    reason: known
                        .close_reason
                        .clone()
                        .unwrap_or_else(|| "cancelled before a coordinator claimed it".to_owned()),
                },
            };
            true
        } else {
            false
        };
        drop(known);
        self.snapshot.send_if_modified(|current| {
            if *current == snapshot {
                false
            } else {
                *current = snapshot;
                true
            }
        });
        // Waiters for an answer or the end wake only when there may be one.
        if state.is_some() || ended {
            self.generation.send_modify(|generation| *generation += 1);
        }
        ended
    }

    /// Leaves `command` for the claimant; returns its sequence number. A store that fails is
    /// tried again until it takes the command or the session has ended (a command lost would
    /// leave the monitor waiting for an answer that never comes).
    async fn command(&self, command: &Command) -> Result<i64, SessionError> {
        // One text for every try: the store keeps a repeated text once.
        let text = command.to_text().map_err(|err| self.io(err.to_string()))?;
        for attempt in 1u32.. {
            match self.store.command_session(self.id.as_str(), &text).await {
                Ok(seq) => return Ok(seq),
                // This coordinator leads no more: nothing it writes will be stored, and the
                // session ends anyway (its new leader cancels it; here it falls silent).
                Err(err @ mosaic_store::StoreError::Fenced { .. }) => {
                    return Err(self.io(format!("the command could not be stored: {err}")));
                }
                Err(err) => {
                    if self.has_ended() {
                        return Err(SessionError::Ended(self.id.clone()));
                    }
                    if attempt == 1 || attempt.is_multiple_of(20) {
                        tracing::warn!(session = %self.id, error = %err, attempt, "could not store a command for the session's claimant; trying again");
                    }
                    tokio::time::sleep(crate::backoff::jittered(200, 5_000, attempt)).await;
                }
            }
        }
        Err(self.io("the command could not be stored".to_owned()))
    }

    /// Cancels the session's request, trying a few times; returns whether it is stored.
    async fn cancel_request(&self) -> bool {
        for attempt in 1u32..=5 {
            match self
                .store
                .cancel_session_requests(Some(&[self.id.to_string()]))
                .await
            {
                Ok(_) => return true,
                Err(err @ mosaic_store::StoreError::Fenced { .. }) => {
                    tracing::warn!(session = %self.id, error = %err, "could not cancel the session's request: this coordinator leads no more");
                    return false;
                }
                Err(err) => {
                    tracing::warn!(session = %self.id, error = %err, attempt, "could not cancel the session's request");
                    tokio::time::sleep(crate::backoff::jittered(200, 2_000, attempt)).await;
                }
            }
        }
        false
    }

    fn io(&self, message: String) -> SessionError {
        SessionError::Io {
            session: self.id.clone(),
            message,
        }
    }

    /// Waits for the claimant's answer to command `seq`.
    async fn answer(&self, seq: i64) -> Result<Option<ContextUsage>, SessionError> {
        let mut generation = self.generation.subscribe();
        loop {
            {
                let known = self.known();
                if let Some(answer) = known.answers.iter().find(|answer| answer.seq == seq) {
                    return answer.result.clone().map_err(|message| self.io(message));
                }
                if self.has_ended() {
                    return Err(SessionError::Ended(self.id.clone()));
                }
            }
            if generation.changed().await.is_err() {
                return Err(SessionError::Ended(self.id.clone()));
            }
        }
    }

    fn has_ended(&self) -> bool {
        !self.snapshot.borrow().outcome.is_running()
    }

    /// Waits until the session has ended and returns its outcome.
    async fn ended(&self) -> SessionOutcome {
        let mut updates = self.snapshot.subscribe();
        loop {
            let outcome = updates.borrow_and_update().outcome.clone();
            if !outcome.is_running() {
                return outcome;
            }
            if updates.changed().await.is_err() {
                return self.outcome();
            }
        }
    }

    /// Ends the session: a claimed one by its claimant (the command), an unclaimed one by
    /// cancelling its request (the follower then ends it here).
    async fn end(&self, command: Command, reason: &str) -> SessionOutcome {
        {
            if self.has_ended() {
                return self.outcome();
            }
            self.known().close_reason = Some(reason.to_owned());
        }
        if let Err(err) = self.command(&command).await {
            tracing::warn!(session = %self.id, error = %err, "could not ask the claimant to end the session");
        }
        let unclaimed = self.known().claimant.is_none();
        if unclaimed {
            // A claimant that claims it meanwhile is told to stop at its first report.
            self.cancel_request().await;
        }
        self.ended().await
    }
}

#[async_trait]
impl AgentSession for RemoteSession {
    fn id(&self) -> &SessionId {
        &self.id
    }

    fn agent_type(&self) -> &str {
        &self.agent
    }

    fn issue(&self) -> &IssueRef {
        &self.issue
    }

    fn process_id(&self) -> Option<u32> {
        self.known().pid
    }

    async fn usage(&self) -> Result<Option<ContextUsage>, SessionError> {
        Ok(self.snapshot.borrow().usage)
    }

    async fn send(&self, prompt: &str) -> Result<(), SessionError> {
        let seq = self
            .command(&Command::Send {
                prompt: prompt.to_owned(),
            })
            .await?;
        self.answer(seq).await.map(|_| ())
    }

    async fn compact(&self, instructions: &str) -> Result<ContextUsage, SessionError> {
        let seq = self
            .command(&Command::Compact {
                instructions: instructions.to_owned(),
            })
            .await?;
        self.answer(seq)
            .await?
            .ok_or_else(|| self.io("the claimant measured no usage after compacting".to_owned()))
    }

    async fn close(&self, reason: &str) -> Result<SessionOutcome, SessionError> {
        let command = Command::Close {
            reason: reason.to_owned(),
        };
        Ok(self.end(command, reason).await)
    }

    async fn close_after_turn(&self, reason: &str) -> Result<SessionOutcome, SessionError> {
        let command = Command::CloseAfterTurn {
            reason: reason.to_owned(),
        };
        Ok(self.end(command, reason).await)
    }

    async fn finish(&self) -> Result<SessionOutcome, SessionError> {
        self.command(&Command::Finish).await?;
        Ok(self.ended().await)
    }

    fn outcome(&self) -> SessionOutcome {
        self.snapshot.borrow().outcome.clone()
    }

    fn latest_summary(&self) -> Option<String> {
        self.known().summary.clone()
    }

    fn subscribe(&self) -> watch::Receiver<SessionSnapshot> {
        self.snapshot.subscribe()
    }
}
