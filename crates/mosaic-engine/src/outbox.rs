//! The outbox worker: delivers the Gitea writes the engine stored with its state changes
//! (invariant 4), in order per issue, with retries, and exactly once as Gitea sees them.
//!
//! Every write is safe to repeat, which is what makes a crash between "Gitea did it" and "the
//! store knows" harmless: a comment carries its idempotency key as a hidden marker and is only
//! posted when no comment with that marker exists; the status comment is found by its fixed
//! marker and edited; labels are put into the wanted state; closing a closed issue is a no-op.
//!
//! Throughput: a status comment or state label write that a newer queued one of the same
//! issue supersedes is not sent; the status comment's id and each repository's label ids are
//! remembered, so edits and label writes go straight to Gitea; and the writes of different
//! issues go out concurrently (`max_concurrent_issues`), each issue's strictly in order.
//!
//! Calls per issue: a status comment or state label write waits `coalesce_ms` before it is
//! sent, so a state replaced at once (ready, then in progress a moment later) never reaches
//! Gitea; the first status comment of an issue that certainly has none is posted without a
//! search; and once Gitea has told the worker an issue's labels, a state change is one call
//! that sets them all (unless a newer webhook shows them changed by someone else).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use mosaic_domain::{IssueRef, RepoName};
use mosaic_gitea::{
    CommentDelivery, CreatePullRequestOption, CreateStatusOption, EditPullRequestOption, GiteaApi,
    GiteaError, IdempotencyKey, Label, MarkerError, PullRequest, post_comment_once,
};
use mosaic_store::{
    IssueWorkspace, OutboxBacklog, OutboxItem, OutboxStatus, PullRequestLink, Store, StoreError,
};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::sync::{Notify, OnceCell};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::effects::GiteaWrite;
use crate::report::link_pull_request;

/// The key of the coordinator's single status comment per issue: `<!-- mosaic:status -->`.
pub const STATUS_KEY: &str = "status";

/// Issues whose labels the worker remembers at most (a cache; forgotten all at once when full).
const MAX_REMEMBERED_ISSUES: usize = 10_000;

/// Settings of the outbox worker (the `[outbox]` section).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OutboxConfig {
    /// Items taken per round (at most one per issue).
    pub batch: u32,
    /// First retry delay; doubles per attempt up to `max_backoff_ms`.
    pub base_backoff_ms: u64,
    pub max_backoff_ms: u64,
    /// Attempts (retryable failures included) before an item is given up.
    pub max_attempts: u32,
    /// How often the worker looks for new items and due retries when nothing wakes it.
    pub idle_poll_ms: u64,
    /// Issues whose writes are in flight at once; each issue's writes stay in order.
    pub max_concurrent_issues: u32,
    /// How long a status comment or state label write waits before it is sent, in
    /// milliseconds, so that a state replaced within this time is never sent (the issue's
    /// later writes wait behind it, keeping their order). 0: send at once.
    pub coalesce_ms: u64,
}

impl Default for OutboxConfig {
    fn default() -> Self {
        Self {
            batch: 50,
            base_backoff_ms: 1_000,
            max_backoff_ms: 5 * 60 * 1_000,
            max_attempts: 10,
            idle_poll_ms: 1_000,
            max_concurrent_issues: 4,
            coalesce_ms: 1_500,
        }
    }
}

impl OutboxConfig {
    /// Delay before attempt `attempts + 1`, with ±20% jitter so failures do not synchronise.
    pub fn backoff(&self, attempts: u32) -> Duration {
        crate::backoff::jittered(self.base_backoff_ms, self.max_backoff_ms, attempts)
    }
}

/// Counters for `/metrics` (since start).
#[derive(Debug, Default)]
pub struct OutboxStats {
    /// Writes Gitea confirmed (or found already done).
    pub delivered: AtomicU64,
    /// Failed attempts scheduled for another try.
    pub retried: AtomicU64,
    /// Writes given up: refused by Gitea, unknown to this version, or out of attempts.
    pub given_up: AtomicU64,
    /// Status comment and state label writes not sent because a newer one of the same issue
    /// was queued behind them.
    pub superseded: AtomicU64,
}

/// What a round did with one due item.
enum Taken {
    /// Sent, superseded, scheduled for a retry or given up.
    Handled,
    /// Left for later: it may still be superseded (see `coalesce_ms`); due at this time.
    Deferred(DateTime<Utc>),
    /// Not sent: this coordinator may not write to Gitea now (see
    /// [`OutboxWorker::with_write_gate`]).
    Held,
}

/// Whether this coordinator may write to Gitea now.
pub type WriteGate = Arc<dyn Fn() -> bool + Send + Sync>;

/// A plain copy of [`OutboxStats`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct OutboxCounts {
    pub delivered: u64,
    pub retried: u64,
    pub given_up: u64,
    pub superseded: u64,
}

impl OutboxStats {
    pub fn counts(&self) -> OutboxCounts {
        OutboxCounts {
            delivered: self.delivered.load(Ordering::Relaxed),
            retried: self.retried.load(Ordering::Relaxed),
            given_up: self.given_up.load(Ordering::Relaxed),
            superseded: self.superseded.load(Ordering::Relaxed),
        }
    }
}

/// Why a round of the outbox could not run.
#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    #[error("outbox store: {0}")]
    Store(#[from] StoreError),
}

/// Why one write failed.
#[derive(Debug, thiserror::Error)]
enum WriteError {
    #[error(transparent)]
    Gitea(#[from] GiteaError),
    #[error(transparent)]
    Unknown(#[from] crate::effects::UnknownWrite),
    #[error("no idempotency key can be made for the item: {0}")]
    Key(#[from] MarkerError),
}

/// Delivers pending outbox items until cancelled.
pub struct OutboxWorker {
    store: Arc<dyn Store>,
    gitea: Arc<dyn GiteaApi>,
    notify: Arc<Notify>,
    config: OutboxConfig,
    stats: Arc<OutboxStats>,
    /// Only the bot's own comments count as already posted or as the status comment; asked
    /// from Gitea once when not given.
    bot_login: OnceCell<String>,
    /// What the worker learnt from Gitea's answers, to skip look-ups.
    known: Mutex<Known>,
    /// Held while listing a repository's labels, so issues delivered at once list them once.
    label_listing: tokio::sync::Mutex<()>,
    /// Rows created before this moment may have been attempted by an earlier process whose
    /// record of the attempt was lost with it.
    started_at: DateTime<Utc>,
    /// Set by [`Self::run`] at its start: the newest row then. Only rows after it are certainly
    /// new — a rule without clocks, where `started_at` compares this host's clock with that of
    /// the coordinator that wrote the row (on PostgreSQL, another host).
    newest_at_start: std::sync::OnceLock<Option<i64>>,
    /// Closed while this coordinator may not act as the leader: nothing is sent.
    write_gate: Option<WriteGate>,
}

/// Ids learnt from Gitea. Only a cache: a miss costs a look-up, a stale entry a 404/422 and a
/// look-up.
#[derive(Debug, Default)]
struct Known {
    /// The bot's status comment per issue: its id and a digest of the body it was last given
    /// (a digest, so thousands of issues do not keep their texts in memory).
    status_comments: HashMap<IssueRef, (i64, [u8; 32])>,
    /// Label ids by name, per repository.
    label_ids: HashMap<RepoName, HashMap<String, i64>>,
    /// Rows this worker has sent a comment for (whatever the outcome).
    attempted: HashSet<i64>,
    /// Per issue whose status comment is not known yet: the status rows this worker marked
    /// superseded before anything could have sent them (so they posted nothing).
    unsent_status_rows: HashMap<IssueRef, HashSet<i64>>,
    /// The issue's labels as Gitea last reported them to this worker.
    issue_labels: HashMap<IssueRef, Vec<Label>>,
}

impl std::fmt::Debug for OutboxWorker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OutboxWorker")
            .field("config", &self.config)
            .field("bot_login", &self.bot_login)
            .finish_non_exhaustive()
    }
}

impl OutboxWorker {
    pub fn new(
        store: Arc<dyn Store>,
        gitea: Arc<dyn GiteaApi>,
        notify: Arc<Notify>,
        config: OutboxConfig,
    ) -> Self {
        Self {
            store,
            gitea,
            notify,
            config,
            stats: Arc::new(OutboxStats::default()),
            bot_login: OnceCell::new(),
            known: Mutex::new(Known::default()),
            label_listing: tokio::sync::Mutex::new(()),
            started_at: Utc::now(),
            newest_at_start: std::sync::OnceLock::new(),
            write_gate: None,
        }
    }

    /// Sends nothing while `gate` says no: a leader whose lease may have passed to another
    /// coordinator (it was paused, or cannot confirm its hold) must not write to Gitea, where
    /// fencing in the store cannot reach.
    pub fn with_write_gate(self, gate: WriteGate) -> Self {
        Self {
            write_gate: Some(gate),
            ..self
        }
    }

    fn known(&self) -> std::sync::MutexGuard<'_, Known> {
        // The cache holds no invariant a panic could break half-way.
        self.known.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The bot's login, known already (otherwise the worker asks Gitea for the token's user
    /// before its first comment). Only the bot's own comments count: a person quoting a hidden
    /// marker must neither have their comment overwritten nor suppress the bot's.
    pub fn with_bot_login(self, login: &str) -> Self {
        Self {
            bot_login: OnceCell::new_with(Some(login.to_owned())),
            ..self
        }
    }

    async fn bot_login(&self) -> Result<&str, GiteaError> {
        self.bot_login
            .get_or_try_init(|| async { Ok(self.gitea.current_user().await?.login) })
            .await
            .map(String::as_str)
    }

    /// The counters, shared: keep a clone for metrics before `run` takes the worker.
    pub fn stats(&self) -> Arc<OutboxStats> {
        Arc::clone(&self.stats)
    }

    /// Pending and given-up items, for `/metrics` and `/health`.
    pub async fn backlog(&self) -> Result<OutboxBacklog, StoreError> {
        self.store.outbox_backlog().await
    }

    /// Delivers what is due now (per issue only its oldest pending item, up to
    /// `max_concurrent_issues` issues at once); returns how many items it took (items left to
    /// coalesce are not counted).
    pub async fn run_once(&self) -> Result<usize, OutboxError> {
        Ok(self.run_round().await?.0)
    }

    /// [`Self::run_once`], also saying when the earliest item it left to coalesce falls due.
    async fn run_round(&self) -> Result<(usize, Option<DateTime<Utc>>), OutboxError> {
        let due = self
            .store
            .next_outbox_items(Utc::now(), self.config.batch)
            .await?;
        let parallel = usize::try_from(self.config.max_concurrent_issues.max(1)).unwrap_or(1);
        // Plain `FuturesUnordered` rather than a stream combinator with a closure, which would
        // make this future lose `Send` for `tokio::spawn`.
        let mut waiting = due.iter();
        let mut in_flight = FuturesUnordered::new();
        let mut first_error = None;
        let mut taken = 0;
        let mut next_due: Option<DateTime<Utc>> = None;
        loop {
            while in_flight.len() < parallel {
                let Some(item) = waiting.next() else { break };
                in_flight.push(self.deliver_traced(item));
            }
            let Some(outcome) = in_flight.next().await else {
                break;
            };
            match outcome {
                Ok(Taken::Handled) => taken += 1,
                Ok(Taken::Deferred(at)) => {
                    next_due = Some(next_due.map_or(at, |earliest| earliest.min(at)));
                }
                Ok(Taken::Held) => {}
                Err(err) => {
                    taken += 1;
                    first_error.get_or_insert(err);
                }
            }
        }
        if let Some(err) = first_error {
            return Err(err);
        }
        Ok((taken, next_due))
    }

    /// Until when `item` waits for a write that may supersede it (`coalesce_ms`), if it does.
    fn coalescing_until(&self, item: &OutboxItem) -> Option<DateTime<Utc>> {
        if self.config.coalesce_ms == 0 || item.attempts > 0 {
            return None;
        }
        let write = GiteaWrite::from_outbox(item).ok()?;
        if !matches!(
            write,
            GiteaWrite::StatusComment { .. } | GiteaWrite::StateLabel { .. }
        ) {
            return None;
        }
        let window = chrono::Duration::milliseconds(
            i64::try_from(self.config.coalesce_ms).unwrap_or(i64::MAX),
        );
        let until = item.created_at.checked_add_signed(window)?;
        (until > Utc::now()).then_some(until)
    }

    /// Whether a newer pending write on the same issue makes this one moot: a status comment
    /// says the whole current state, so only the last one queued matters; a state label write
    /// is moot when a later one touches (adds or removes) every label this one touches.
    async fn is_superseded(&self, item: &OutboxItem) -> Result<bool, StoreError> {
        let Ok(write) = GiteaWrite::from_outbox(item) else {
            return Ok(false);
        };
        if !matches!(
            write,
            GiteaWrite::StatusComment { .. } | GiteaWrite::StateLabel { .. }
        ) {
            return Ok(false);
        }
        let later = self.store.outbox_for_issue(&item.issue).await?;
        Ok(later
            .iter()
            .filter(|later| later.id > item.id && later.status == OutboxStatus::Pending)
            .filter_map(|later| GiteaWrite::from_outbox(later).ok())
            .any(|later| supersedes(&later, &write)))
    }

    async fn deliver_traced(&self, item: &OutboxItem) -> Result<Taken, OutboxError> {
        let span = tracing::info_span!(
            "outbox",
            outbox_id = item.id,
            issue = %item.issue,
            kind = %item.kind,
            key = %item.idempotency_key,
        );
        self.deliver_one(item).instrument(span).await
    }

    async fn deliver_one(&self, item: &OutboxItem) -> Result<Taken, OutboxError> {
        if self.is_superseded(item).await? {
            if self.never_sent(item) && is_status_comment(item) {
                self.known()
                    .unsent_status_rows
                    .entry(item.issue.clone())
                    .or_default()
                    .insert(item.id);
            }
            self.store.mark_outbox_done(item.id).await?;
            self.stats.superseded.fetch_add(1, Ordering::Relaxed);
            tracing::debug!("superseded by a newer write of the same kind; not sent");
            return Ok(Taken::Handled);
        }
        if let Some(until) = self.coalescing_until(item) {
            return Ok(Taken::Deferred(until));
        }
        if self.write_gate.as_ref().is_some_and(|open| !open()) {
            tracing::warn!("not sent: this coordinator cannot confirm it still leads");
            return Ok(Taken::Held);
        }
        match self.apply(item).await {
            Ok(()) => {
                self.store.mark_outbox_done(item.id).await?;
                // Done rows are never delivered again.
                self.known().attempted.remove(&item.id);
                self.stats.delivered.fetch_add(1, Ordering::Relaxed);
                tracing::debug!("Gitea write delivered");
            }
            Err(err @ (WriteError::Unknown(_) | WriteError::Key(_))) => {
                let reason = err.to_string();
                tracing::error!(%reason, "outbox item cannot be understood; given up");
                self.store
                    .mark_outbox_failed(item.id, &reason, None)
                    .await?;
                self.stats.given_up.fetch_add(1, Ordering::Relaxed);
            }
            Err(WriteError::Gitea(err)) if err.was_written() => {
                // Gitea did the write; what it answered is unknown, which costs at most a lookup
                // by marker later. Sending it again would write it twice.
                tracing::warn!(error = %err, "Gitea did the write but its answer was unreadable; counted as delivered");
                self.store.mark_outbox_done(item.id).await?;
                self.known().attempted.remove(&item.id);
                self.stats.delivered.fetch_add(1, Ordering::Relaxed);
            }
            Err(WriteError::Gitea(err)) => {
                let attempts = item.attempts.saturating_add(1);
                let reason = err.to_string();
                if !err.is_retryable() {
                    tracing::error!(%reason, status = ?err.status(), "Gitea refused the write; given up (will not change by retrying)");
                    self.store
                        .mark_outbox_failed(item.id, &reason, None)
                        .await?;
                    self.stats.given_up.fetch_add(1, Ordering::Relaxed);
                } else if attempts >= self.config.max_attempts {
                    tracing::error!(%reason, attempts, "Gitea write failed too often; given up");
                    self.store
                        .mark_outbox_failed(item.id, &reason, None)
                        .await?;
                    self.stats.given_up.fetch_add(1, Ordering::Relaxed);
                } else {
                    let delay = match &err {
                        // Gitea's wish, within our own bound: `Retry-After: 999999` must not
                        // park a write for days.
                        GiteaError::RateLimited {
                            retry_after: Some(after),
                            ..
                        } => (*after).min(Duration::from_millis(self.config.max_backoff_ms)),
                        _ => self.config.backoff(attempts),
                    };
                    tracing::warn!(%reason, attempts, retry_in_ms = delay.as_millis() as u64, "Gitea write failed; will retry");
                    let retry_at = Utc::now()
                        + chrono::Duration::from_std(delay)
                            .unwrap_or_else(|_| chrono::Duration::seconds(60));
                    self.store
                        .mark_outbox_failed(item.id, &reason, Some(retry_at))
                        .await?;
                    self.stats.retried.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        Ok(Taken::Handled)
    }

    /// Performs one write; repeating it after any outcome has the effect of doing it once.
    async fn apply(&self, item: &OutboxItem) -> Result<(), WriteError> {
        let issue = &item.issue;
        match GiteaWrite::from_outbox(item)? {
            GiteaWrite::Comment { body, marker } => {
                let key = comment_key(item, marker.as_deref())?;
                if self.first_attempt(item) {
                    // Nothing can have posted this row yet: no search needed.
                    let comment = self.gitea.create_comment(issue, &key.mark(&body)).await?;
                    tracing::info!(comment_id = comment.id, "comment posted");
                    return Ok(());
                }
                let author = self.bot_login().await?;
                match post_comment_once(self.gitea.as_ref(), issue, &key, author, &body).await? {
                    CommentDelivery::Posted(comment) => {
                        tracing::info!(comment_id = comment.id, "comment posted");
                    }
                    CommentDelivery::AlreadyPresent(comment) => {
                        tracing::info!(
                            comment_id = comment.id,
                            "comment was already posted by an earlier attempt; not posted again"
                        );
                    }
                }
            }
            GiteaWrite::StatusComment { body, pull_request } => {
                let body = match pull_request {
                    Some(head) => self.with_pull_request_link(issue, body, &head).await,
                    None => body,
                };
                self.put_status_comment(item, &body).await?;
            }
            GiteaWrite::StateLabel { add, remove } => {
                self.put_state_label(issue, add.as_deref(), &remove).await?;
            }
            GiteaWrite::CloseIssue => {
                self.gitea.close_issue(issue).await?;
            }
            GiteaWrite::PullRequest {
                head,
                base,
                title,
                body,
            } => {
                self.put_pull_request(item, head, base, title, body).await?;
            }
            GiteaWrite::CommitStatus {
                sha,
                context,
                state,
                description,
            } => {
                let status = CreateStatusOption {
                    state,
                    context,
                    description,
                    target_url: String::new(),
                };
                self.gitea
                    .create_commit_status(&issue.repo, &sha, &status)
                    .await?;
                tracing::info!(%sha, context = %status.context, state = ?status.state, "commit status put");
            }
        }
        Ok(())
    }

    /// Whether this is certainly the row's first attempt: never tried by this worker, and
    /// created after it started (an earlier process may have posted and died before recording
    /// it, leaving `attempts` at 0). Only then may a comment be posted without a search.
    fn first_attempt(&self, item: &OutboxItem) -> bool {
        let fresh = item.attempts == 0 && self.created_since_start(item);
        // Recorded before the post: a lost answer or a failed store write must not make the
        // next try skip the search.
        let first = self.known().attempted.insert(item.id);
        fresh && first
    }

    /// Whether nothing can have sent the row yet: created after this worker started, and
    /// never attempted by it.
    fn never_sent(&self, item: &OutboxItem) -> bool {
        item.attempts == 0
            && self.created_since_start(item)
            && !self.known().attempted.contains(&item.id)
    }

    /// Whether the row was written after this worker started, so no earlier process can have
    /// sent it: by row id once [`Self::run`] noted the newest row, else by the row's time.
    fn created_since_start(&self, item: &OutboxItem) -> bool {
        match self.newest_at_start.get() {
            Some(newest) => newest.is_none_or(|newest| item.id > newest),
            None => item.created_at >= self.started_at,
        }
    }

    /// Whether the issue certainly has no status comment from the bot: this is the first
    /// attempt of its status row, every earlier status row of the issue is one this worker
    /// marked superseded before anything could send it, and the latest webhook showed the issue
    /// without any comment (the store's rows say nothing of what an earlier store, wiped or
    /// replaced, had the bot post). Then the comment is created without listing the issue's
    /// comments first.
    async fn certainly_no_status_comment(&self, item: &OutboxItem) -> Result<bool, StoreError> {
        if !self.first_attempt(item) {
            return Ok(false);
        }
        let uncommented = self
            .store
            .get_issue_snapshot(&item.issue)
            .await?
            .is_some_and(|snapshot| snapshot.comments == Some(0));
        if !uncommented {
            return Ok(false);
        }
        let rows = self.store.outbox_for_issue(&item.issue).await?;
        let known = self.known();
        let unsent = known.unsent_status_rows.get(&item.issue);
        Ok(rows
            .iter()
            .filter(|row| row.id < item.id && is_status_comment(row))
            .all(|row| unsent.is_some_and(|ids| ids.contains(&row.id))))
    }

    /// Puts `add` on the issue and takes the other state labels in `remove` off. With the
    /// issue's labels known from Gitea's last answer: one call that sets them all, or none
    /// when they are already right. Otherwise one call adding `add` (the usual first label),
    /// and one more setting the labels Gitea then reported minus the stale ones.
    async fn put_state_label(
        &self,
        issue: &IssueRef,
        add: Option<&str>,
        remove: &[String],
    ) -> Result<(), GiteaError> {
        if let Some(current) = self.trusted_labels(issue, add, remove).await {
            match self.set_state_label(issue, &current, add, remove).await {
                Ok(()) => return Ok(()),
                Err(err) if matches!(err.status(), Some(404 | 422)) => {
                    // A remembered id is gone (label deleted or renamed): learn them again.
                    tracing::debug!(error = %err, "a remembered label id is unknown to Gitea; listing labels again");
                    let mut known = self.known();
                    known.label_ids.remove(&issue.repo);
                    known.issue_labels.remove(issue);
                }
                Err(err) => {
                    // The outcome is unknown: ask Gitea next time.
                    self.known().issue_labels.remove(issue);
                    return Err(err);
                }
            }
        }
        let current = match add {
            Some(name) => match self.add_label(issue, name, false).await {
                Err(err) if matches!(err.status(), Some(404 | 422)) => {
                    // The remembered id may be gone (label deleted or renamed): look again.
                    tracing::debug!(label = %name, "label id unknown to Gitea; listing labels again");
                    self.add_label(issue, name, true).await?
                }
                other => other?,
            },
            None => self.gitea.get_issue(issue).await?.labels,
        };
        let stale: Vec<i64> = current
            .iter()
            .filter(|label| Some(label.name.as_str()) != add && remove.contains(&label.name))
            .map(|label| label.id)
            .collect();
        if stale.is_empty() {
            self.remember_labels(issue, current);
            return Ok(());
        }
        let kept: Vec<i64> = current
            .iter()
            .map(|label| label.id)
            .filter(|id| !stale.contains(id))
            .collect();
        let labels = self.gitea.replace_labels(issue, &kept).await?;
        self.remember_labels(issue, labels);
        Ok(())
    }

    /// Sets the issue's labels to `current` with `add` put on and `remove` taken off, in one
    /// call (none when nothing changes).
    async fn set_state_label(
        &self,
        issue: &IssueRef,
        current: &[Label],
        add: Option<&str>,
        remove: &[String],
    ) -> Result<(), GiteaError> {
        let mut wanted: Vec<i64> = current
            .iter()
            .filter(|label| Some(label.name.as_str()) == add || !remove.contains(&label.name))
            .map(|label| label.id)
            .collect();
        let removed_any = wanted.len() < current.len();
        let missing = add.filter(|name| !current.iter().any(|label| label.name == *name));
        if let Some(name) = missing {
            wanted.push(self.label_id(&issue.repo, name, false).await?);
        }
        if !removed_any && missing.is_none() {
            tracing::debug!("the issue's labels already say this");
            return Ok(());
        }
        let labels = self.gitea.replace_labels(issue, &wanted).await?;
        self.remember_labels(issue, labels);
        Ok(())
    }

    /// The issue's labels as Gitea last reported them to this worker, unless the latest
    /// webhook shows other labels than the state labels different (someone else changed them:
    /// their change must not be overwritten). State labels are left out of the comparison: a
    /// webhook from before the worker's own last write shows an older one.
    async fn trusted_labels(
        &self,
        issue: &IssueRef,
        add: Option<&str>,
        remove: &[String],
    ) -> Option<Vec<Label>> {
        let labels = self.known().issue_labels.get(issue).cloned()?;
        // A webhook about the issue not handled yet may say its labels changed: not trusted
        // until it is.
        match self.store.has_pending_delivery(issue).await {
            Ok(false) => {}
            Ok(true) => {
                tracing::debug!(
                    "a delivery about the issue is not handled yet; asking Gitea for its labels"
                );
                return None;
            }
            Err(err) => {
                tracing::debug!(error = %err, "the inbox could not be read; asking Gitea for its labels");
                return None;
            }
        }
        let snapshot = match self.store.get_issue_snapshot(issue).await {
            Ok(snapshot) => snapshot,
            Err(err) => {
                tracing::debug!(error = %err, "the issue's snapshot could not be read; asking Gitea for its labels");
                return None;
            }
        };
        let managed = |name: &&str| Some(*name) == add || remove.iter().any(|r| r == name);
        if let Some(snapshot) = snapshot {
            let seen: HashSet<&str> = snapshot
                .labels
                .iter()
                .map(String::as_str)
                .filter(|name| !managed(name))
                .collect();
            let ours: HashSet<&str> = labels
                .iter()
                .map(|label| label.name.as_str())
                .filter(|name| !managed(name))
                .collect();
            if seen != ours {
                tracing::debug!(
                    "someone changed the issue's labels since Gitea last reported them; asking again"
                );
                self.known().issue_labels.remove(issue);
                return None;
            }
        }
        Some(labels)
    }

    fn remember_labels(&self, issue: &IssueRef, labels: Vec<Label>) {
        let mut known = self.known();
        // Only a cache: bounded by forgetting everything now and then.
        if known.issue_labels.len() >= MAX_REMEMBERED_ISSUES {
            known.issue_labels.clear();
        }
        known.issue_labels.insert(issue.clone(), labels);
    }

    /// Adds the label `name` by its id; returns the issue's labels afterwards.
    async fn add_label(
        &self,
        issue: &IssueRef,
        name: &str,
        refresh: bool,
    ) -> Result<Vec<Label>, GiteaError> {
        let id = self.label_id(&issue.repo, name, refresh).await?;
        // Its answer (the issue's labels) decides the next step.
        self.gitea.add_label_ids(issue, &[id]).await.map_err(midway)
    }

    /// The id of the repository's label `name`: remembered, or from listing the repository's
    /// labels once (again when `refresh`), creating it when missing.
    async fn label_id(
        &self,
        repo: &RepoName,
        name: &str,
        refresh: bool,
    ) -> Result<i64, GiteaError> {
        let cached = |known: &Known| {
            known
                .label_ids
                .get(repo)
                .and_then(|ids| ids.get(name).copied())
        };
        let remembered = if refresh {
            self.known().label_ids.remove(repo);
            None
        } else {
            cached(&self.known())
        };
        if let Some(id) = remembered {
            return Ok(id);
        }
        let _listing = self.label_listing.lock().await;
        // Another issue's delivery may have listed them while this one waited.
        let listed_meanwhile = if refresh { None } else { cached(&self.known()) };
        if let Some(id) = listed_meanwhile {
            return Ok(id);
        }
        if self.known().label_ids.contains_key(repo) {
            // Listed already, without this one: create it (a new state label of the repository).
            match self.gitea.create_managed_label(repo, name).await {
                Ok(created) => {
                    if let Some(ids) = self.known().label_ids.get_mut(repo) {
                        ids.insert(name.to_owned(), created.id);
                    }
                    return Ok(created.id);
                }
                // Someone created it since the listing: list again.
                Err(err) if matches!(err.status(), Some(409 | 422)) => {}
                Err(err) => {
                    // It may have been created all the same (a lost answer; Gitea allows two
                    // labels of one name): list before creating it again.
                    self.known().label_ids.remove(repo);
                    return Err(midway(err));
                }
            }
        }
        let listed = self.gitea.list_labels(repo).await?;
        let found = listed.iter().find(|label| label.name == name).map(|l| l.id);
        let mut ids: HashMap<String, i64> = listed
            .into_iter()
            .map(|label| (label.name, label.id))
            .collect();
        let id = match found {
            Some(id) => id,
            None => {
                self.gitea
                    .create_managed_label(repo, name)
                    .await
                    .map_err(midway)?
                    .id
            }
        };
        ids.insert(name.to_owned(), id);
        self.known().label_ids.insert(repo.clone(), ids);
        Ok(id)
    }

    /// Opens the pull request, or, when Gitea says one from `head` into `base` exists (409),
    /// gives that one the new body.
    async fn put_pull_request(
        &self,
        item: &OutboxItem,
        head: String,
        base: String,
        title: String,
        body: String,
    ) -> Result<(), WriteError> {
        let repo = &item.issue.repo;
        let pull = CreatePullRequestOption {
            head,
            base,
            title,
            body,
        };
        let err = match self.gitea.create_pull_request(repo, &pull).await {
            Ok(opened) => {
                tracing::info!(pull = opened.number, head = %pull.head, "pull request opened");
                self.remember_pull_request(&item.issue, &pull.head, &opened)
                    .await;
                return Ok(());
            }
            Err(err) => err,
        };
        if err.status() != Some(409) {
            return Err(err.into());
        }
        let existing = self
            .gitea
            .pull_request_by_branches(repo, &pull.base, &pull.head)
            .await?;
        self.remember_pull_request(&item.issue, &pull.head, &existing)
            .await;
        if existing.body == pull.body {
            tracing::debug!(pull = existing.number, "pull request already says this");
            return Ok(());
        }
        let edit = EditPullRequestOption {
            title: None,
            body: Some(pull.body),
        };
        self.gitea
            .edit_pull_request(repo, existing.number, &edit)
            .await?;
        tracing::info!(pull = existing.number, head = %pull.head, "pull request updated");
        Ok(())
    }

    /// Stores which pull request the issue's branch has, for its status comment and the API.
    /// Gitea has it either way, so a store failure costs only the link.
    async fn remember_pull_request(&self, issue: &IssueRef, head: &str, pull: &PullRequest) {
        let link = PullRequestLink {
            number: pull.number,
            url: pull.html_url.clone(),
        };
        if let Err(err) = self.store.record_pull_request(issue, head, link).await {
            tracing::warn!(error = %err, pull = pull.number, "the pull request's number could not be stored; the status comment names only its branch");
        }
    }

    /// `body` with the pull request opened from `head` linked in, when the store knows it.
    async fn with_pull_request_link(&self, issue: &IssueRef, body: String, head: &str) -> String {
        match self.store.get_workspace(issue).await {
            Ok(Some(IssueWorkspace {
                workspace,
                pull_request: Some(pull),
            })) if workspace.branch == head => {
                link_pull_request(&body, head, pull.number, &pull.url)
            }
            Ok(_) => body,
            Err(err) => {
                tracing::warn!(error = %err, "the pull request's number could not be read; the status comment names only its branch");
                body
            }
        }
    }

    /// Edits the issue's status comment, or creates it when there is none: one per issue.
    /// The id is remembered from the first look-up or creation, so later edits need no search.
    async fn put_status_comment(&self, item: &OutboxItem, body: &str) -> Result<(), WriteError> {
        let issue = &item.issue;
        let key = IdempotencyKey::new(STATUS_KEY)?;
        let marked = key.mark(body);
        let remembered = self.known().status_comments.get(issue).cloned();
        let existing = match remembered {
            Some(known) => Some(known),
            None if self.certainly_no_status_comment(item).await.unwrap_or_else(|err| {
                tracing::warn!(error = %err, "the outbox's rows could not be read; looking for the status comment instead");
                false
            }) =>
            {
                None
            }
            None => {
                let bot = self.bot_login().await?;
                self.gitea
                    .list_comments(issue)
                    .await?
                    .into_iter()
                    .find(|comment| key.is_in(&comment.body) && comment.user.is(bot))
                    .map(|comment| (comment.id, digest(&comment.body)))
            }
        };
        if let Some((id, current)) = existing {
            if current == digest(&marked) {
                tracing::debug!(comment_id = id, "status comment already says this");
                self.remember_status(issue, id, &marked);
                return Ok(());
            }
            match self.gitea.edit_comment(&issue.repo, id, &marked).await {
                Ok(_) => {
                    tracing::info!(comment_id = id, "status comment updated");
                    self.remember_status(issue, id, &marked);
                    return Ok(());
                }
                // Deleted since: write a new one.
                Err(err) if err.is_not_found() => {
                    self.known().status_comments.remove(issue);
                    tracing::warn!(
                        comment_id = id,
                        "status comment vanished; creating a new one"
                    );
                }
                Err(err) => {
                    // The outcome is unknown: look again next time.
                    self.known().status_comments.remove(issue);
                    return Err(err.into());
                }
            }
        }
        let created = self.gitea.create_comment(issue, &marked).await?;
        tracing::info!(comment_id = created.id, "status comment created");
        self.remember_status(issue, created.id, &marked);
        Ok(())
    }

    fn remember_status(&self, issue: &IssueRef, id: i64, body: &str) {
        let mut known = self.known();
        known
            .status_comments
            .insert(issue.clone(), (id, digest(body)));
        // The comment is known now: no need to prove there is none.
        known.unsent_status_rows.remove(issue);
    }

    /// Works until `cancel` fires: at start (items left by a crash), whenever woken, and every
    /// `idle_poll_ms` for new items and retries that fell due.
    pub async fn run(self, cancel: CancellationToken) {
        match self.store.latest_outbox_id().await {
            Ok(newest) => {
                let _ = self.newest_at_start.set(newest);
            }
            Err(err) => {
                tracing::warn!(error = %err, "the newest outbox row could not be read; rows are told new by their time");
            }
        }
        let idle = Duration::from_millis(self.config.idle_poll_ms);
        let mut failures: u32 = 0;
        loop {
            // Register interest before looking, so a wake-up during the round is not lost.
            let notified = self.notify.notified();
            let pause = match self.run_round().await {
                Ok((taken, _)) if taken > 0 => {
                    failures = 0;
                    // Something was delivered: the issue's next item may be due at once.
                    Duration::ZERO
                }
                Ok((_, coalescing)) => {
                    failures = 0;
                    // Back when the first write left to coalesce falls due, not a poll later.
                    // (A time already past cannot be a `Duration`: that one is due at once.)
                    coalescing
                        .map(|at| (at - Utc::now()).to_std().unwrap_or(Duration::ZERO))
                        .map_or(idle, |wait| wait.min(idle).max(Duration::from_millis(1)))
                }
                Err(err) => {
                    failures = failures.saturating_add(1);
                    let delay = self.config.backoff(failures);
                    tracing::error!(error = %err, retry_in_ms = delay.as_millis() as u64, "outbox unavailable");
                    delay
                }
            };
            if pause.is_zero() {
                if cancel.is_cancelled() {
                    return;
                }
                tokio::task::yield_now().await;
                continue;
            }
            tokio::select! {
                () = cancel.cancelled() => return,
                () = notified => {}
                () = tokio::time::sleep(pause) => {}
            }
        }
    }
}

/// An error of a call whose answer a later step of the same write needs: a write Gitea did but
/// whose answer is unreadable leaves that step undone, so the write is retried (the call is
/// safe to repeat) instead of being counted delivered.
fn midway(err: GiteaError) -> GiteaError {
    match err {
        GiteaError::WrittenUnreadable { operation, message } => GiteaError::Transport {
            operation,
            message: format!("done, but its answer is needed and could not be read: {message}"),
        },
        other => other,
    }
}

fn is_status_comment(item: &OutboxItem) -> bool {
    matches!(
        GiteaWrite::from_outbox(item),
        Ok(GiteaWrite::StatusComment { .. })
    )
}

fn digest(body: &str) -> [u8; 32] {
    Sha256::digest(body.as_bytes()).into()
}

/// Whether delivering `later` leaves nothing of `earlier` to do.
fn supersedes(later: &GiteaWrite, earlier: &GiteaWrite) -> bool {
    match (later, earlier) {
        (GiteaWrite::StatusComment { .. }, GiteaWrite::StatusComment { .. }) => true,
        (
            GiteaWrite::StateLabel {
                add: later_add,
                remove: later_remove,
            },
            GiteaWrite::StateLabel { add, remove },
        ) => {
            let touched_later =
                |name: &String| later_add.as_ref() == Some(name) || later_remove.contains(name);
            add.iter().chain(remove).all(touched_later)
        }
        _ => false,
    }
}

/// The write's stored random marker. Rows enqueued before markers were stored keep what they
/// were posted with: the item's own key when it is a valid marker key, else `outbox:<row id>`
/// (predictable, which is why only the bot's own comments count).
fn comment_key(item: &OutboxItem, marker: Option<&str>) -> Result<IdempotencyKey, MarkerError> {
    match marker {
        Some(marker) => IdempotencyKey::new(marker),
        None => IdempotencyKey::new(&item.idempotency_key)
            .or_else(|_| IdempotencyKey::new(&format!("outbox:{}", item.id))),
    }
}
