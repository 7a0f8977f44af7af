//! The outbox worker: delivers the Gitea writes the engine stored with its state changes
//! (invariant 4), in order per issue, with retries, and exactly once as Gitea sees them.
//!
//! Every write is safe to repeat, which is what makes a crash between "Gitea did it" and "the
//! store knows" harmless: a comment carries its idempotency key as a hidden marker and is only
//! posted when no comment with that marker exists; the status comment is found by its fixed
//! marker and edited; labels are put into the wanted state; closing a closed issue is a no-op.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use chrono::Utc;
use mosaic_gitea::{
    CommentDelivery, CreatePullRequestOption, EditPullRequestOption, GiteaApi, GiteaError,
    IdempotencyKey, LabelRemoval, MarkerError, post_comment_once,
};
use mosaic_store::{OutboxBacklog, OutboxItem, Store, StoreError};
use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, OnceCell};
use tokio_util::sync::CancellationToken;

use crate::effects::GiteaWrite;

/// The key of the coordinator's single status comment per issue: `<!-- mosaic:status -->`.
pub const STATUS_KEY: &str = "status";

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
}

impl Default for OutboxConfig {
    fn default() -> Self {
        Self {
            batch: 50,
            base_backoff_ms: 1_000,
            max_backoff_ms: 5 * 60 * 1_000,
            max_attempts: 10,
            idle_poll_ms: 1_000,
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
}

/// A plain copy of [`OutboxStats`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct OutboxCounts {
    pub delivered: u64,
    pub retried: u64,
    pub given_up: u64,
}

impl OutboxStats {
    pub fn counts(&self) -> OutboxCounts {
        OutboxCounts {
            delivered: self.delivered.load(Ordering::Relaxed),
            retried: self.retried.load(Ordering::Relaxed),
            given_up: self.given_up.load(Ordering::Relaxed),
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
        }
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

    /// Delivers what is due now (per issue only its oldest pending item); returns how many
    /// items it took.
    pub async fn run_once(&self) -> Result<usize, OutboxError> {
        let due = self
            .store
            .next_outbox_items(Utc::now(), self.config.batch)
            .await?;
        for item in &due {
            self.deliver_one(item).await?;
        }
        Ok(due.len())
    }

    async fn deliver_one(&self, item: &OutboxItem) -> Result<(), OutboxError> {
        let span = tracing::info_span!(
            "outbox",
            outbox_id = item.id,
            issue = %item.issue,
            kind = %item.kind,
            key = %item.idempotency_key,
        );
        let _entered = span.enter();
        match self.apply(item).await {
            Ok(()) => {
                self.store.mark_outbox_done(item.id).await?;
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
        Ok(())
    }

    /// Performs one write; repeating it after any outcome has the effect of doing it once.
    async fn apply(&self, item: &OutboxItem) -> Result<(), WriteError> {
        let issue = &item.issue;
        match GiteaWrite::from_outbox(item)? {
            GiteaWrite::Comment { body, marker } => {
                let key = comment_key(item, marker.as_deref())?;
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
            GiteaWrite::StatusComment { body } => self.put_status_comment(item, &body).await?,
            GiteaWrite::StateLabel { add, remove } => {
                let current = match &add {
                    Some(name) => {
                        self.gitea
                            .add_labels(issue, std::slice::from_ref(name))
                            .await?
                    }
                    None => self.gitea.get_issue(issue).await?.labels,
                };
                for name in &remove {
                    if add.as_ref() == Some(name) || !current.iter().any(|l| &l.name == name) {
                        continue;
                    }
                    if self.gitea.remove_label(issue, name).await? == LabelRemoval::NotInRepository
                    {
                        tracing::debug!(label = %name, "label not in the repository; nothing to remove");
                    }
                }
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
        }
        Ok(())
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

    /// Edits the issue's status comment, or creates it when there is none: one per issue.
    async fn put_status_comment(&self, item: &OutboxItem, body: &str) -> Result<(), WriteError> {
        let issue = &item.issue;
        let key = IdempotencyKey::new(STATUS_KEY)?;
        let marked = key.mark(body);
        let bot = self.bot_login().await?;
        let existing = self
            .gitea
            .list_comments(issue)
            .await?
            .into_iter()
            .find(|comment| key.is_in(&comment.body) && comment.user.is(bot));
        if let Some(comment) = existing {
            if comment.body == marked {
                tracing::debug!(comment_id = comment.id, "status comment already says this");
                return Ok(());
            }
            match self
                .gitea
                .edit_comment(&issue.repo, comment.id, &marked)
                .await
            {
                Ok(_) => {
                    tracing::info!(comment_id = comment.id, "status comment updated");
                    return Ok(());
                }
                // Deleted between listing and editing: write a new one.
                Err(err) if err.is_not_found() => {
                    tracing::warn!(
                        comment_id = comment.id,
                        "status comment vanished; creating a new one"
                    );
                }
                Err(err) => return Err(err.into()),
            }
        }
        let created = self.gitea.create_comment(issue, &marked).await?;
        tracing::info!(comment_id = created.id, "status comment created");
        Ok(())
    }

    /// Works until `cancel` fires: at start (items left by a crash), whenever woken, and every
    /// `idle_poll_ms` for new items and retries that fell due.
    pub async fn run(self, cancel: CancellationToken) {
        let idle = Duration::from_millis(self.config.idle_poll_ms);
        let mut failures: u32 = 0;
        loop {
            // Register interest before looking, so a wake-up during the round is not lost.
            let notified = self.notify.notified();
            let pause = match self.run_once().await {
                Ok(taken) => {
                    failures = 0;
                    // Something was delivered: the issue's next item may be due at once.
                    if taken > 0 { Duration::ZERO } else { idle }
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
