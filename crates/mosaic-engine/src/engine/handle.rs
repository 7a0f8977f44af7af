//! A delivery becomes queue decisions (issue 8, "Behaviour").
//!
//! Decisions are level-triggered: what matters is the issue's state as the delivery shows it
//! (open, assigned to the bot) against what the engine has; the action only decides whether
//! metadata is read again. So synthetic `reconcile-…` deliveries need no special path.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::future::Future;
use std::sync::{Mutex as StdMutex, PoisonError};

use async_trait::async_trait;
use chrono::Utc;
use mosaic_domain::events::{IssueAction, TrackerState};
use mosaic_domain::{IssueMetadata, IssueRef, IssueState, WebhookPayload, assign};
use mosaic_gitea::Dependencies;
use mosaic_parser::ParseInput;
use mosaic_store::{
    CompletionOutcome, Delivery, DeliveryEffects, DeliveryRowId, IssueSnapshot, LlmUsageRecord,
};
use tokio::sync::watch;

use crate::inbox::{DeliveryHandler, HandlerError, decode, snapshot_of};
use crate::report::Status;

use super::work::{Core, Work};
use super::{Engine, EngineError, Inner};

/// Most blockers whose tracker state is looked up per evaluation (bounded work per event).
const MAX_STATE_LOOKUPS: usize = 20;

/// What reading an issue produced, gathered before the engine's lock is taken.
#[derive(Debug, Clone)]
pub(crate) struct Evaluation {
    pub metadata: IssueMetadata,
    /// Blockers from Gitea's dependency API and the metadata, without the issue itself.
    pub blockers: Vec<IssueRef>,
    /// Tracker states (open?) learnt for blockers.
    pub blocker_states: Vec<(IssueRef, bool)>,
    /// Issues this one no longer says it blocks whose own Gitea dependency list still names it
    /// (or could not be read): their edge stays when the declaration is withdrawn.
    pub still_listed_by: Vec<IssueRef>,
}

/// A session to close once the change is committed (never while holding the lock).
pub(crate) type Closing = (String, String);

#[async_trait]
impl DeliveryHandler for Engine {
    async fn handle(&self, delivery: &Delivery) -> Result<(), HandlerError> {
        self.inner.handle_delivery(delivery).await
    }

    fn queued(&self, delivery: &Delivery) {
        if let Some(issue) = self.inner.withdrawn_by(delivery) {
            tracing::debug!(%issue, by = delivery.id, "a waiting delivery unassigns or closes the issue; earlier evaluations give up");
            self.inner.withdrawals.record(issue, delivery.id);
        }
    }
}

/// Orders what the engine learns about whether issues are open, now that deliveries of
/// different issues are handled concurrently: each evaluation starts at a tick, and each
/// issue remembers the tick at which its open state was last learnt (its own delivery, or
/// another evaluation's reads). A blocker state read by an evaluation that started before is
/// older and is not applied, so a slow read can never undo a close handled meanwhile.
#[derive(Debug, Default)]
pub(crate) struct TrackerClock {
    state: StdMutex<ClockState>,
}

#[derive(Debug, Default)]
struct ClockState {
    now: u64,
    /// Ticks of the evaluations under way (a tick → how many started at it).
    under_way: BTreeMap<u64, usize>,
    /// Only ticks newer than the oldest evaluation under way matter; cleared when none is.
    learnt: HashMap<IssueRef, u64>,
}

/// An evaluation under way; ends when dropped.
pub(crate) struct Reading<'a> {
    clock: &'a TrackerClock,
    started: u64,
}

impl Drop for Reading<'_> {
    fn drop(&mut self) {
        let mut state = self.clock.state();
        if let Some(count) = state.under_way.get_mut(&self.started) {
            *count -= 1;
            if *count == 0 {
                state.under_way.remove(&self.started);
            }
        }
        match state.under_way.keys().next().copied() {
            None => state.learnt.clear(),
            Some(oldest) if state.learnt.len() > 4_096 => {
                state.learnt.retain(|_, tick| *tick > oldest);
            }
            Some(_) => {}
        }
    }
}

impl TrackerClock {
    fn state(&self) -> std::sync::MutexGuard<'_, ClockState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Starts an evaluation (before its first read).
    fn begin(&self) -> Reading<'_> {
        let mut state = self.state();
        state.now += 1;
        let started = state.now;
        *state.under_way.entry(started).or_default() += 1;
        Reading {
            clock: self,
            started,
        }
    }

    /// `issue`'s open state was just learnt from its own delivery (called under the core lock).
    fn learnt_now(&self, issue: &IssueRef) {
        let mut state = self.state();
        if state.under_way.is_empty() {
            return;
        }
        state.now += 1;
        let now = state.now;
        state.learnt.insert(issue.clone(), now);
    }

    /// Keeps the blocker states `reading` may still apply, those not learnt since it began,
    /// and notes them as learnt at its start (called under the core lock).
    fn keep_current(&self, reading: &Reading<'_>, states: &mut Vec<(IssueRef, bool)>) {
        let mut state = self.state();
        states.retain(|(blocker, _)| {
            state
                .learnt
                .get(blocker)
                .is_none_or(|tick| *tick < reading.started)
        });
        for (blocker, _) in states.iter() {
            let tick = state.learnt.entry(blocker.clone()).or_default();
            *tick = (*tick).max(reading.started);
        }
    }
}

/// Deliveries taken but not handled yet that take their issue out of coordination (unassigned,
/// closed, deleted), by issue. An earlier delivery of the same issue still reading it (waiting
/// for the model or Gitea) gives up: whatever it decided would be undone by the later one at
/// once, and handling is level-triggered, so the later one alone leads to the right state.
#[derive(Debug)]
pub(crate) struct Withdrawals {
    /// The newest withdrawing row per issue.
    newest: StdMutex<HashMap<IssueRef, DeliveryRowId>>,
    /// Wakes waiting evaluations when a withdrawal is recorded.
    changed: watch::Sender<()>,
}

impl Default for Withdrawals {
    fn default() -> Self {
        Self {
            newest: StdMutex::new(HashMap::new()),
            changed: watch::Sender::new(()),
        }
    }
}

impl Withdrawals {
    fn newest(&self) -> std::sync::MutexGuard<'_, HashMap<IssueRef, DeliveryRowId>> {
        self.newest.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn record(&self, issue: IssueRef, by: DeliveryRowId) {
        self.newest()
            .entry(issue)
            .and_modify(|newest| *newest = (*newest).max(by))
            .or_insert(by);
        self.changed.send_modify(|()| {});
    }

    /// Whether a row newer than `row` withdraws `issue`.
    fn withdraws(&self, issue: &IssueRef, row: DeliveryRowId) -> bool {
        self.newest().get(issue).is_some_and(|newest| *newest > row)
    }

    /// `row` of `issue` is being handled: withdrawals up to it are used up.
    fn reached(&self, issue: &IssueRef, row: DeliveryRowId) {
        let mut newest = self.newest();
        if newest.get(issue).is_some_and(|by| *by <= row) {
            newest.remove(issue);
        }
    }

    /// Runs `work` for `row` of `issue` unless a newer row withdraws the issue first (`None`;
    /// `work` is dropped unfinished).
    async fn unless_withdrawn<T>(
        &self,
        issue: &IssueRef,
        row: DeliveryRowId,
        work: impl Future<Output = T>,
    ) -> Option<T> {
        let mut changes = self.changed.subscribe();
        if self.withdraws(issue, row) {
            return None;
        }
        let mut work = std::pin::pin!(work);
        loop {
            tokio::select! {
                done = &mut work => return Some(done),
                changed = changes.changed() => match changed {
                    Ok(()) if self.withdraws(issue, row) => return None,
                    Ok(()) => {}
                    // Never while the engine lives (it owns the sender).
                    Err(_) => return Some(work.await),
                },
            }
        }
    }
}

fn handler_error(err: EngineError) -> HandlerError {
    match err {
        EngineError::Store(err) => HandlerError::Transient(format!("store: {err}")),
        other => HandlerError::Permanent(format!("engine: {other}")),
    }
}

/// The explicit triggers a delivery carries, judged against the issue's stored snapshot (what
/// the coordinator saw before it): only these bring a finished issue back (docs/DESIGN.md,
/// issue states). Any other delivery, e.g. a person added as a co-assignee while the bot stays
/// assigned, leaves a finished issue finished.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Triggers {
    /// Reopened. For a possible replay only when the issue was seen closed before.
    pub reopened: bool,
    /// Assigned to the coordinated assignee, who was not assigned before.
    pub reassigned: bool,
    /// The parser's input (title, body, labels other than state labels) changed.
    pub edited: bool,
}

/// Whether an issue in a terminal state comes back to the queue on these triggers; a rejected
/// issue also when edited (split, estimate lowered).
fn reenters(state: IssueState, triggers: Triggers) -> bool {
    triggers.reopened || triggers.reassigned || (state == IssueState::Rejected && triggers.edited)
}

/// The issue as Gitea shows it now, in the form a delivery's snapshot has.
fn snapshot_from_gitea(issue: &IssueRef, current: &mosaic_gitea::Issue) -> IssueSnapshot {
    IssueSnapshot {
        issue: issue.clone(),
        title: current.title.clone(),
        body: current.body.clone(),
        labels: current.label_names(),
        assignees: current.assignee_logins(),
        state: if current.is_open() {
            TrackerState::Open
        } else {
            TrackerState::Closed
        },
        updated_at: current.updated_at,
        html_url: (!current.html_url.is_empty()).then(|| current.html_url.clone()),
        comments: Some(current.comments),
    }
}

/// Whether a waiting issue's metadata is read again on `action`.
fn reevaluates(action: &IssueAction) -> bool {
    matches!(
        action,
        IssueAction::Opened
            | IssueAction::Edited
            | IssueAction::Assigned
            | IssueAction::Reopened
            | IssueAction::LabelUpdated
            | IssueAction::LabelCleared
    )
}

impl Inner {
    pub(crate) async fn handle_delivery(&self, delivery: &Delivery) -> Result<(), HandlerError> {
        let payload = decode(delivery)?;
        let mut snapshot = snapshot_of(&payload)?;
        let (action, sender) = match &payload {
            WebhookPayload::Issue(p) => (Some(p.action.clone()), p.sender.as_ref()),
            WebhookPayload::IssueComment(p) => (None, p.sender.as_ref()),
        };
        let from_bot = sender.is_some_and(|user| self.is_bot(&user.login));
        let replay = delivery.replay_of.is_some();
        // Comments, pull requests and the bot's own events are recorded, never acted on.
        let action = match action {
            Some(action) if !from_bot && !payload.issue().is_pull_request() => action,
            _ => {
                if from_bot {
                    tracing::debug!(issue = %snapshot.issue, "event sent by the bot itself; recorded only");
                }
                self.store
                    .complete_delivery(
                        delivery.id,
                        DeliveryEffects {
                            // A possible replay may describe the past: not recorded as current.
                            snapshot: (!replay).then_some(snapshot),
                            transitions: Vec::new(),
                        },
                    )
                    .await?;
                return Ok(());
            }
        };
        // A possible replay (this body was delivered before, under another id) may be an old
        // delivery sent again or a real repeat within Gitea's one-second timestamps: what it
        // says about the issue is confirmed with Gitea (one call) before anything is decided.
        if replay {
            match self.confirm_with_gitea(&snapshot.issue).await? {
                Some(current) => snapshot = current,
                None => {
                    tracing::warn!(issue = %snapshot.issue, delivery = delivery.id, "possible replay cannot be confirmed without Gitea; recorded only");
                    self.store
                        .complete_delivery(delivery.id, DeliveryEffects::default())
                        .await?;
                    return Ok(());
                }
            }
        }
        let issue = snapshot.issue.clone();
        self.withdrawals.reached(&issue, delivery.id);
        let open = snapshot.state.is_open();
        let deleted = action == IssueAction::Deleted;
        let assigned = self.coordinates(&snapshot, &action);
        // Read before this delivery's snapshot replaces it; only an open, assigned issue can
        // come back, so only then is it needed.
        let triggers = if assigned {
            let previous = self.store.get_issue_snapshot(&issue).await?;
            self.triggers(&action, replay, previous.as_ref(), &snapshot)
        } else {
            Triggers::default()
        };

        let needs_reading = assigned && {
            let core = self.core.lock().await;
            match core.queue.state(&issue) {
                None => true,
                Some(IssueState::InProgress) => false,
                Some(state) if state.is_terminal() => reenters(state, triggers),
                Some(_) => {
                    reevaluates(&action)
                        || core
                            .records
                            .get(&issue)
                            .is_none_or(|record| record.metadata.is_none())
                }
            }
        };
        let reading = needs_reading.then(|| self.tracker_clock.begin());
        let mut evaluation = if needs_reading {
            let reads = self.read_issue(&snapshot);
            match self
                .withdrawals
                .unless_withdrawn(&issue, delivery.id, reads)
                .await
            {
                Some(evaluation) => Some(evaluation),
                None => {
                    // A later delivery unassigns or closes the issue: deciding on this one
                    // would only be undone by it. Its snapshot is recorded, nothing decided.
                    tracing::info!(%issue, delivery = delivery.id, "issue withdrawn by a later delivery; this one's evaluation is given up");
                    self.store
                        .complete_delivery(
                            delivery.id,
                            DeliveryEffects {
                                snapshot: Some(snapshot),
                                transitions: Vec::new(),
                            },
                        )
                        .await?;
                    return Ok(());
                }
            }
        } else {
            None
        };

        let mut core = self.core.lock().await;
        if let (Some(reading), Some(evaluation)) = (&reading, &mut evaluation) {
            self.tracker_clock
                .keep_current(reading, &mut evaluation.blocker_states);
        }
        let mut work = Work::new(
            &core,
            format!("delivery:{}", delivery.id),
            format!("d{}", delivery.id),
        );
        let mut closing = Vec::new();
        self.decide(
            &core,
            &mut work,
            &DeliveryFacts {
                issue: &issue,
                triggers,
                open,
                deleted,
                assigned,
                labels: &snapshot.labels,
            },
            evaluation.as_ref(),
            &mut closing,
        )
        .map_err(handler_error)?;
        let outcome = self
            .store
            .complete_delivery(
                delivery.id,
                DeliveryEffects {
                    snapshot: Some(snapshot),
                    transitions: work.batches(),
                },
            )
            .await?;
        match outcome {
            CompletionOutcome::Completed => {
                work.install(&mut core);
                self.tracker_clock.learnt_now(&issue);
            }
            CompletionOutcome::AlreadyProcessed => {
                tracing::debug!(issue = %issue, "delivery was already processed; nothing written again");
                closing.clear();
            }
        }
        drop(core);
        self.close_sessions(closing).await;
        if !assigned {
            // Closed, deleted or unassigned: its worktree goes (the pushed branch stays).
            self.cleanup_workspace(&issue).await;
        }
        self.wake.notify_one();
        Ok(())
    }

    /// Whether an issue in this state, after `action`, is coordinated: open, not deleted and
    /// assigned to the coordinated assignee.
    fn coordinates(&self, snapshot: &IssueSnapshot, action: &IssueAction) -> bool {
        snapshot.state.is_open()
            && *action != IssueAction::Deleted
            && snapshot
                .assignees
                .iter()
                .any(|login| self.is_coordinated_assignee(login))
    }

    /// The issue `delivery` takes out of coordination when handled (unassigned, closed,
    /// deleted), if any: decided as [`Inner::handle_delivery`] decides it. Possible replays are
    /// confirmed with Gitea first and the bot's own events are ignored, so neither withdraws.
    fn withdrawn_by(&self, delivery: &Delivery) -> Option<IssueRef> {
        if delivery.replay_of.is_some() {
            return None;
        }
        let payload = decode(delivery).ok()?;
        let WebhookPayload::Issue(event) = &payload else {
            return None;
        };
        let from_bot = event
            .sender
            .as_ref()
            .is_some_and(|user| self.is_bot(&user.login));
        if from_bot || payload.issue().is_pull_request() {
            return None;
        }
        let snapshot = snapshot_of(&payload).ok()?;
        (!self.coordinates(&snapshot, &event.action)).then_some(snapshot.issue)
    }

    /// The issue as Gitea shows it now (`None` without a Gitea client).
    async fn confirm_with_gitea(
        &self,
        issue: &IssueRef,
    ) -> Result<Option<IssueSnapshot>, HandlerError> {
        let Some(gitea) = &self.gitea else {
            return Ok(None);
        };
        match gitea.get_issue(issue).await {
            Ok(current) => Ok(Some(snapshot_from_gitea(issue, &current))),
            Err(err) if err.is_retryable() => Err(HandlerError::Transient(format!(
                "confirming a possible replay with Gitea: {err}"
            ))),
            Err(err) => Err(HandlerError::Permanent(format!(
                "confirming a possible replay with Gitea: {err}"
            ))),
        }
    }

    /// The explicit triggers in a delivery, against the snapshot stored before it.
    fn triggers(
        &self,
        action: &IssueAction,
        replay: bool,
        previous: Option<&IssueSnapshot>,
        current: &IssueSnapshot,
    ) -> Triggers {
        let was_assigned = previous.is_some_and(|before| {
            before
                .assignees
                .iter()
                .any(|login| self.is_coordinated_assignee(login))
        });
        let was_closed = previous.is_some_and(|before| !before.state.is_open());
        let state_labels = self.config.labels.all();
        let parse_input = |snapshot: &IssueSnapshot| {
            let mut labels: Vec<&str> = snapshot
                .labels
                .iter()
                .map(String::as_str)
                .filter(|label| !state_labels.contains(label))
                .collect();
            labels.sort_unstable();
            (
                snapshot.title.clone(),
                snapshot.body.clone(),
                labels.join("\n"),
            )
        };
        Triggers {
            // A real reopen needs no proof; a replayed one must show the issue was closed.
            reopened: *action == IssueAction::Reopened && (!replay || was_closed),
            reassigned: *action == IssueAction::Assigned && !was_assigned,
            edited: matches!(
                action,
                IssueAction::Edited | IssueAction::LabelUpdated | IssueAction::LabelCleared
            ) && previous.is_none_or(|before| parse_input(before) != parse_input(current)),
        }
    }

    /// Closes sessions after their issue's change is committed; the outcome arrives through
    /// the monitor sink, which ends the session record.
    pub(crate) async fn close_sessions(&self, closing: Vec<Closing>) {
        for (session_id, reason) in closing {
            let id = mosaic_context::SessionId::from(session_id);
            if let Err(err) = self.monitor.close(&id, &reason).await {
                tracing::warn!(session = %id, error = %err, "could not close the session");
            }
        }
    }

    /// Parses the issue (the parser's cache decides whether a model is asked) and gathers its
    /// dependencies. Never fails: every failure has a logged fallback.
    pub(crate) async fn read_issue(&self, snapshot: &IssueSnapshot) -> Evaluation {
        let issue = &snapshot.issue;
        let input = ParseInput {
            repository: issue.repo.clone(),
            number: issue.number,
            title: snapshot.title.clone(),
            body: snapshot.body.clone(),
            labels: snapshot.labels.clone(),
        };
        let outcome = self.parser.parse(&input).await;
        if let Some(error) = &outcome.llm_error {
            tracing::warn!(%issue, %error, "model answer not used; template metadata instead");
        }
        if let Some(usage) = outcome.usage {
            let health = self.parser.health();
            let record = LlmUsageRecord {
                provider: health.provider,
                model: health.model.unwrap_or_default(),
                input_tokens: usage.input_tokens,
                output_tokens: usage.output_tokens,
                cost_usd: usage.cost_usd,
                issue: Some(issue.clone()),
                at: Utc::now(),
            };
            if let Err(err) = self.store.record_llm_usage(record).await {
                tracing::warn!(%issue, error = %err, "could not record LLM usage");
            }
        }
        let metadata = outcome.metadata;
        let mut blockers: Vec<IssueRef> = metadata.blocked_by.clone();
        let mut states = Vec::new();
        if let Some(gitea) = &self.gitea {
            match gitea.dependencies(issue).await {
                Ok(Dependencies::Listed(listed)) => {
                    for dependency in listed {
                        if let Some(blocker) = dependency.issue_ref() {
                            states.push((blocker.clone(), dependency.is_open()));
                            blockers.push(blocker);
                        }
                    }
                }
                Ok(Dependencies::DependenciesDisabled) => self.log_deps_disabled_once(&issue.repo),
                Err(err) => {
                    tracing::warn!(%issue, error = %err, "Gitea dependencies unavailable; using the metadata's references")
                }
            }
        }
        blockers.retain(|blocker| blocker != issue);
        blockers.sort_unstable();
        blockers.dedup();
        let mut lookups = 0;
        for blocker in &blockers {
            if states.iter().any(|(known, _)| known == blocker) || lookups >= MAX_STATE_LOOKUPS {
                continue;
            }
            lookups += 1;
            match self.store.get_issue_snapshot(blocker).await {
                Ok(Some(snapshot)) => {
                    states.push((blocker.clone(), snapshot.state.is_open()));
                    continue;
                }
                Ok(None) => {}
                Err(err) => {
                    tracing::warn!(%blocker, error = %err, "could not read the blocker's snapshot")
                }
            }
            if let Some(gitea) = &self.gitea {
                match gitea.get_issue(blocker).await {
                    Ok(found) => states.push((blocker.clone(), found.is_open())),
                    Err(err) => {
                        tracing::warn!(%blocker, error = %err, "could not read the blocker from Gitea; treated as open")
                    }
                }
            }
        }
        let still_listed_by = self.still_listed_by(issue, &metadata.blocks).await;
        Evaluation {
            metadata,
            blockers,
            blocker_states: states,
            still_listed_by,
        }
    }

    /// Of the issues `issue` said it blocks before and no longer does, those whose Gitea
    /// dependency list still names it. Asked here, outside the lock, because withdrawing the
    /// declaration must not remove an edge Gitea also holds; an unreadable list counts as
    /// naming it (keeping an edge only delays an issue; the reconciler corrects it).
    async fn still_listed_by(&self, issue: &IssueRef, blocks_now: &[IssueRef]) -> Vec<IssueRef> {
        let Some(gitea) = &self.gitea else {
            return Vec::new();
        };
        let withdrawn: Vec<IssueRef> = {
            let core = self.core.lock().await;
            core.records
                .get(issue)
                .and_then(|record| record.metadata.as_ref())
                .map(|metadata| {
                    metadata
                        .blocks
                        .iter()
                        .filter(|target| *target != issue && !blocks_now.contains(target))
                        .filter(|target| core.graph.blockers(target).contains(issue))
                        .cloned()
                        .collect()
                })
                .unwrap_or_default()
        };
        let mut listing = Vec::new();
        for target in withdrawn.into_iter().take(MAX_STATE_LOOKUPS) {
            let listed = match gitea.dependencies(&target).await {
                Ok(Dependencies::Listed(listed)) => listed
                    .iter()
                    .any(|blocker| blocker.issue_ref().as_ref() == Some(issue)),
                Ok(Dependencies::DependenciesDisabled) => false,
                Err(err) => {
                    tracing::warn!(%target, error = %err, "Gitea dependencies unavailable; the declared edge stays until reconciliation");
                    true
                }
            };
            if listed {
                listing.push(target);
            }
        }
        listing
    }

    fn decide(
        &self,
        core: &Core,
        work: &mut Work,
        facts: &DeliveryFacts<'_>,
        evaluation: Option<&Evaluation>,
        closing: &mut Vec<Closing>,
    ) -> Result<(), EngineError> {
        let issue = facts.issue;
        let labels = &self.config.labels;
        let state = work.queue.state(issue);

        // The tracker's open/closed state matters to every issue this one blocks.
        if work.graph.contains(issue) || state.is_some() {
            let closed = !facts.open || facts.deleted;
            // With `close_on_success` a completed issue is as good as closed for its
            // dependents (the coordinator closes it itself); otherwise they wait for the close.
            let done_is_closed = self.completion_closes() && state == Some(IssueState::Completed);
            let graph_open = !closed && !done_is_closed;
            let change = work.graph.set_open(issue, graph_open)?;
            self.follow(core, work, &change, Some(issue))?;
        }

        let Some(state) = state else {
            if facts.assigned {
                work.admit(core, issue, facts.labels.to_vec())?;
                self.evaluate(core, work, issue, evaluation, true)?;
            }
            return Ok(());
        };

        if !facts.open || facts.deleted || !facts.assigned {
            if state.is_terminal() {
                return Ok(());
            }
            let why = if facts.deleted {
                "deleted in the tracker"
            } else if !facts.open {
                "closed in the tracker"
            } else {
                "unassigned from the bot"
            };
            let change = work.graph.set_coordinated(issue, false)?;
            self.follow(core, work, &change, Some(issue))?;
            if state == IssueState::InProgress {
                if let Some(session) = core.running.get(issue).and_then(|r| r.session_id.clone()) {
                    closing.push((session, why.to_owned()));
                }
                if !facts.open && !facts.deleted {
                    // Closed while the agent worked: the issue is done as far as Gitea is concerned.
                    work.step(core, issue, IssueState::Completed)?;
                    let record = work.record(core, issue).unwrap_or_else(|| {
                        mosaic_store::IssueRecord::new(
                            issue.clone(),
                            IssueState::Completed,
                            work.at,
                        )
                    });
                    let agent = record.assigned_agent.clone().unwrap_or_default();
                    work.announce(
                        core,
                        issue,
                        labels,
                        &Status::Done {
                            agent: &agent,
                            summary: "The issue was closed in the tracker while the agent worked; the session was ended.",
                            tokens: record.input_tokens.saturating_add(record.output_tokens),
                            cost_usd: record.cost_usd,
                        },
                    );
                    return Ok(());
                }
            }
            work.step(core, issue, IssueState::Cancelled)?;
            work.announce(core, issue, labels, &Status::Cancelled { why });
            return Ok(());
        }

        // Open and assigned to the bot.
        work.queue.set_labels(issue, facts.labels.to_vec())?;
        match state {
            IssueState::InProgress => {
                // Not re-evaluated while an agent works on it; the snapshot is recorded.
                Ok(())
            }
            state if state.is_terminal() => {
                if reenters(state, facts.triggers) {
                    work.step(core, issue, IssueState::Pending)?;
                    work.update(core, issue, |record| record.attempts = 0);
                    self.evaluate(core, work, issue, evaluation, true)?;
                }
                Ok(())
            }
            _ => {
                if evaluation.is_some() {
                    self.evaluate(core, work, issue, evaluation, false)?;
                } else if work.settle(core, issue)? {
                    work.announce_waiting(core, issue, labels);
                }
                Ok(())
            }
        }
    }

    /// Re-settles waiting issues a graph change affected (other than `except`) and tells them.
    pub(crate) fn follow(
        &self,
        core: &Core,
        work: &mut Work,
        change: &mosaic_domain::GraphChange,
        except: Option<&IssueRef>,
    ) -> Result<(), EngineError> {
        for moved in work.follow_graph(core, change, except)? {
            work.announce_waiting(core, &moved, &self.config.labels);
        }
        Ok(())
    }

    /// Applies metadata, dependencies and the 50% rule to a waiting issue (pending, blocked or
    /// ready). Without a fresh evaluation the stored metadata is used (requeue).
    pub(crate) fn evaluate(
        &self,
        core: &Core,
        work: &mut Work,
        issue: &IssueRef,
        evaluation: Option<&Evaluation>,
        always_announce: bool,
    ) -> Result<(), EngineError> {
        let labels = &self.config.labels;
        let before_state = work.queue.state(issue);
        let before = work.record(core, issue);
        let before_blockers = work.graph.open_blockers(issue);

        let (metadata, blockers) = match evaluation {
            Some(evaluation) => {
                for (blocker, open) in &evaluation.blocker_states {
                    // Our own completed issues count as done when we close them ourselves.
                    let completed = self.completion_closes()
                        && work
                            .record(core, blocker)
                            .is_some_and(|record| record.state == IssueState::Completed);
                    if !completed {
                        let change = work.graph.set_open(blocker, *open)?;
                        self.follow(core, work, &change, Some(issue))?;
                    }
                }
                // Its own references and Gitea's list, plus coordinated issues that declare
                // they block it.
                let mut blockers = evaluation.blockers.clone();
                blockers.extend(work.declared_blockers(core, issue));
                blockers.sort_unstable();
                blockers.dedup();
                work.set_blocked_by(core, issue, blockers.clone());
                (evaluation.metadata.clone(), blockers)
            }
            None => match before.as_ref().and_then(|record| record.metadata.clone()) {
                Some(metadata) => (metadata, work.graph.blockers(issue)),
                // Nothing known yet: wait for the next delivery that carries the text.
                None => return Ok(()),
            },
        };
        let rank = work.queue.priorities().rank(
            &work
                .queue
                .get(issue)
                .map(|entry| entry.labels.clone())
                .unwrap_or_default(),
        );
        let estimate = metadata.estimated_context;
        let assignment = assign(&metadata, &self.profiles, &self.policy);
        let agent = assignment.as_ref().ok().map(|a| a.agent.clone());
        let blocks_before = before
            .as_ref()
            .and_then(|record| record.metadata.as_ref())
            .map(|m| m.blocks.clone())
            .unwrap_or_default();
        let blocks_now = metadata.blocks.clone();
        work.update(core, issue, |record| {
            record.metadata = Some(metadata);
            record.estimate = Some(estimate);
            record.priority = i32::try_from(rank).map_or(i32::MIN, |rank| -rank);
            record.assigned_agent = agent.clone();
        });
        // Whatever becomes of this issue, what it says it blocks waits for it while it is open.
        let still_listed_by = evaluation.map_or(&[][..], |e| &e.still_listed_by);
        self.follow_declarations(
            core,
            work,
            issue,
            (&blocks_before, &blocks_now),
            still_listed_by,
        )?;
        work.queue.set_agent(issue, agent.clone())?;
        let change = work.graph.set_blockers(issue, &blockers)?;
        self.follow(core, work, &change, Some(issue))?;

        match assignment {
            Err(rejection) => {
                let change = work.graph.set_coordinated(issue, false)?;
                self.follow(core, work, &change, Some(issue))?;
                work.step(core, issue, IssueState::Rejected)?;
                let reason = rejection.to_string();
                tracing::info!(%issue, %reason, "issue rejected");
                work.announce(core, issue, labels, &Status::Rejected { reason: &reason });
            }
            Ok(assignment) => {
                let change = work.graph.set_coordinated(issue, true)?;
                self.follow(core, work, &change, Some(issue))?;
                let moved = work.settle(core, issue)?;
                let changed = moved
                    || always_announce
                    || before_state != work.queue.state(issue)
                    || before.as_ref().and_then(|r| r.assigned_agent.clone())
                        != Some(assignment.agent.clone())
                    || before.as_ref().and_then(|r| r.estimate) != Some(estimate)
                    || before_blockers != work.graph.open_blockers(issue);
                if changed {
                    work.announce_waiting(core, issue, labels);
                }
                tracing::info!(%issue, agent = %assignment.agent, estimate, state = ?work.queue.state(issue), "issue evaluated");
            }
        }
        Ok(())
    }

    /// Adds or removes the edges `issue` declares on other coordinated issues (`Blocks: #N`)
    /// when its metadata changed from `before` to `now`. An issue not coordinated yet picks
    /// the declaration up when it is evaluated; an edge the target names itself, or that the
    /// target's Gitea dependency list holds (`still_listed_by`), stays.
    fn follow_declarations(
        &self,
        core: &Core,
        work: &mut Work,
        issue: &IssueRef,
        (before, now): (&[IssueRef], &[IssueRef]),
        still_listed_by: &[IssueRef],
    ) -> Result<(), EngineError> {
        let changed: BTreeSet<&IssueRef> = before
            .iter()
            .filter(|target| !now.contains(target))
            .chain(now.iter().filter(|target| !before.contains(target)))
            .filter(|target| *target != issue)
            .collect();
        for target in changed {
            let Some(record) = work.record(core, target) else {
                continue;
            };
            let declared = now.contains(target);
            let has_edge = work.graph.blockers(target).contains(issue);
            let named_by_target = record
                .metadata
                .as_ref()
                .is_some_and(|m| m.blocked_by.contains(issue));
            let change = if declared && !has_edge {
                work.graph.add_blocker(target, issue)?
            } else if !declared && has_edge && !named_by_target && !still_listed_by.contains(target)
            {
                work.graph.remove_blocker(target, issue)?
            } else {
                continue;
            };
            let blockers = work.graph.blockers(target);
            work.set_blocked_by(core, target, blockers);
            let moved = work.follow_graph(core, &change, Some(issue))?;
            for other in &moved {
                work.announce_waiting(core, other, &self.config.labels);
            }
            // What it waits on changed even when its state did not.
            let waiting = matches!(
                work.queue.state(target),
                Some(IssueState::Blocked | IssueState::Ready)
            );
            if waiting && !moved.contains(target) {
                work.announce_waiting(core, target, &self.config.labels);
            }
            tracing::info!(%issue, %target, declared, "dependency declared by the blocker followed");
        }
        Ok(())
    }
}

/// What a delivery says about its issue.
pub(crate) struct DeliveryFacts<'a> {
    pub issue: &'a IssueRef,
    pub triggers: Triggers,
    pub open: bool,
    pub deleted: bool,
    pub assigned: bool,
    pub labels: &'a [String],
}

#[cfg(test)]
mod tests {
    use super::*;

    fn issue(n: u64) -> IssueRef {
        format!("acme/widgets#{n}").parse().unwrap()
    }

    #[test]
    fn a_read_older_than_a_delivery_of_the_blocker_is_not_applied() {
        let clock = TrackerClock::default();
        let reading = clock.begin();
        // #2's own delivery (it was closed) is handled while the read is under way.
        clock.learnt_now(&issue(2));
        let mut states = vec![(issue(2), true), (issue(3), true)];
        clock.keep_current(&reading, &mut states);
        assert_eq!(states, vec![(issue(3), true)]);
        drop(reading);
        // A read that starts afterwards is newer.
        let later = clock.begin();
        let mut states = vec![(issue(2), false)];
        clock.keep_current(&later, &mut states);
        assert_eq!(states.len(), 1);
    }

    #[test]
    fn of_two_reads_the_one_that_started_later_wins() {
        let clock = TrackerClock::default();
        let older = clock.begin();
        let newer = clock.begin();
        let mut newer_states = vec![(issue(2), false)];
        clock.keep_current(&newer, &mut newer_states);
        assert_eq!(newer_states.len(), 1);
        let mut older_states = vec![(issue(2), true)];
        clock.keep_current(&older, &mut older_states);
        assert!(older_states.is_empty(), "the older read would reopen #2");
    }

    #[test]
    fn nothing_is_remembered_once_no_read_is_under_way() {
        let clock = TrackerClock::default();
        clock.learnt_now(&issue(2));
        assert!(clock.state().learnt.is_empty(), "no read to protect");
        let reading = clock.begin();
        clock.learnt_now(&issue(2));
        assert_eq!(clock.state().learnt.len(), 1);
        drop(reading);
        assert!(clock.state().learnt.is_empty());
        assert!(clock.state().under_way.is_empty());
    }
}
