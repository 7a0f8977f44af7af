//! The inbox worker: takes pending deliveries in order and hands each to the event handler.
//!
//! A handler completes a delivery itself (its effects and the `processed` mark commit in one
//! transaction), so a crash between the two cannot happen; handling the same row twice has the
//! effect of handling it once (invariant 3). A failing handler leaves the row pending with
//! exponential backoff; a row that can never succeed is marked failed at once.
//!
//! Deliveries of different issues are handled concurrently (bounded); those of one issue one
//! after another, in the order they arrived.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::Utc;
use mosaic_domain::events::{EventKind, WebhookPayload, parse_payload};
use mosaic_store::{Delivery, DeliveryRowId, IssueSnapshot, Store};
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

/// Why a delivery could not be handled.
#[derive(Debug, thiserror::Error)]
pub enum HandlerError {
    /// Worth another attempt later (store busy, Gitea down, …).
    #[error("{0}")]
    Transient(String),
    /// Can never succeed (a stored body that is not a valid payload); given up at once.
    #[error("{0}")]
    Permanent(String),
}

impl From<mosaic_store::StoreError> for HandlerError {
    fn from(err: mosaic_store::StoreError) -> Self {
        Self::Transient(format!("store: {err}"))
    }
}

/// Turns one recorded delivery into its effects.
#[async_trait]
pub trait DeliveryHandler: Send + Sync {
    /// Handles `delivery` and marks it processed in the same transaction as its effects.
    async fn handle(&self, delivery: &Delivery) -> Result<(), HandlerError>;

    /// The worker took `delivery` while earlier deliveries of the same issue are still being
    /// handled or waiting; it is handled after them. A handler may give up slow work of those
    /// earlier deliveries that this one makes moot (an unassign or a close). By default nothing.
    fn queued(&self, _delivery: &Delivery) {}
}

/// Reads a stored delivery's payload again (it was verified and validated at intake).
pub fn decode(delivery: &Delivery) -> Result<WebhookPayload, HandlerError> {
    let kind = EventKind::classify(&delivery.event, delivery.event_type.as_deref());
    parse_payload(&kind, &delivery.body)
        .map_err(|err| HandlerError::Permanent(format!("stored payload is invalid: {err}")))
}

/// The tracker's view of the issue a payload describes.
pub fn snapshot_of(payload: &WebhookPayload) -> Result<IssueSnapshot, HandlerError> {
    let issue = payload.issue();
    Ok(IssueSnapshot {
        issue: payload.issue_ref().map_err(|err| {
            HandlerError::Permanent(format!("payload names no valid issue: {err}"))
        })?,
        title: issue.title.clone(),
        body: issue.body.clone(),
        labels: issue.label_names().map(str::to_owned).collect(),
        assignees: issue
            .assignee_logins()
            .into_iter()
            .map(str::to_owned)
            .collect(),
        state: issue.state,
        updated_at: issue.updated_at,
        html_url: (!issue.html_url.is_empty()).then(|| issue.html_url.clone()),
        comments: issue.comments,
    })
}

/// The handler of the intake stage: records the issue's current state from every delivery.
#[derive(Debug)]
pub struct SnapshotHandler {
    store: Arc<dyn Store>,
}

impl SnapshotHandler {
    pub fn new(store: Arc<dyn Store>) -> Self {
        Self { store }
    }
}

#[async_trait]
impl DeliveryHandler for SnapshotHandler {
    async fn handle(&self, delivery: &Delivery) -> Result<(), HandlerError> {
        let payload = decode(delivery)?;
        let snapshot = snapshot_of(&payload)?;
        if delivery.replay_of.is_some() {
            // A possible replay may describe the past, and nothing here can ask Gitea.
            self.store.mark_processed(delivery.id).await?;
            return Ok(());
        }
        self.store
            .process_delivery_with_snapshot(delivery.id, snapshot)
            .await?;
        Ok(())
    }
}

/// Settings of the inbox worker (the `[inbox]` section).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct InboxConfig {
    /// Rows taken per round.
    pub batch: u32,
    /// Attempts before a row is marked failed.
    pub max_attempts: u32,
    /// First retry delay; doubles per attempt up to `max_backoff_ms`.
    pub base_backoff_ms: u64,
    pub max_backoff_ms: u64,
    /// How often the worker looks for due retries when nothing wakes it.
    pub idle_poll_ms: u64,
    /// Issues whose deliveries are handled at the same time (a slow model or Gitea for one
    /// issue does not hold up the others). Deliveries of one issue are always handled one
    /// after another, in the order they arrived. 1: one delivery at a time.
    pub max_concurrent_issues: u32,
}

impl Default for InboxConfig {
    fn default() -> Self {
        Self {
            batch: 100,
            max_attempts: 8,
            base_backoff_ms: 1_000,
            max_backoff_ms: 5 * 60 * 1_000,
            idle_poll_ms: 1_000,
            max_concurrent_issues: 16,
        }
    }
}

/// An `[inbox]` setting that cannot work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`inbox.{setting}`: must be at least 1")]
pub struct InboxConfigError {
    pub setting: &'static str,
}

impl InboxConfig {
    /// Delay before attempt `attempts + 1`, with ±20% jitter so failures do not synchronise.
    pub fn backoff(&self, attempts: u32) -> Duration {
        crate::backoff::jittered(self.base_backoff_ms, self.max_backoff_ms, attempts)
    }

    /// Rejects settings that would stop the worker (nothing taken, nothing handled).
    pub fn validate(&self) -> Result<(), InboxConfigError> {
        for (setting, value) in [
            ("batch", self.batch),
            ("max_attempts", self.max_attempts),
            ("max_concurrent_issues", self.max_concurrent_issues),
        ] {
            if value == 0 {
                return Err(InboxConfigError { setting });
            }
        }
        Ok(())
    }

    fn concurrency(&self) -> usize {
        usize::try_from(self.max_concurrent_issues.max(1)).unwrap_or(usize::MAX)
    }

    fn batch_size(&self) -> usize {
        usize::try_from(self.batch.max(1)).unwrap_or(usize::MAX)
    }
}

/// Deliveries that must be handled one after another: those of one issue. Rows that name no
/// issue (they can only fail) share one lane.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Lane {
    /// Repository full name in lower case (Gitea's names are case-insensitive), issue number.
    Issue(String, u64),
    NoIssue,
}

impl Lane {
    fn of(delivery: &Delivery) -> Self {
        if let (Some(repository), Some(number)) = (&delivery.repository, delivery.issue_number) {
            return Self::Issue(repository.to_ascii_lowercase(), number);
        }
        match decode(delivery) {
            Ok(payload) => Self::Issue(
                payload.repository().full_name.to_ascii_lowercase(),
                payload.issue().number,
            ),
            Err(_) => Self::NoIssue,
        }
    }
}

/// Rows taken from the store and not finished yet, by lane.
#[derive(Debug, Default)]
struct Lanes {
    /// Rows waiting for their turn, oldest first.
    waiting: HashMap<Lane, VecDeque<Delivery>>,
    /// Lanes whose oldest row is being handled.
    busy: HashSet<Lane>,
    /// Lanes with waiting rows and none being handled, in the order they became so.
    startable: VecDeque<Lane>,
    /// Every row taken and not finished (waiting or being handled).
    taken: HashSet<DeliveryRowId>,
    /// What each running task holds: its lane, its row and the row's attempts so far.
    running: HashMap<tokio::task::Id, (Lane, DeliveryRowId, u32)>,
}

impl Lanes {
    /// Adds a row behind the others of its lane; returns it when rows of the same issue are
    /// ahead of it.
    fn push(&mut self, delivery: Delivery) -> Option<&Delivery> {
        let lane = Lane::of(&delivery);
        self.taken.insert(delivery.id);
        let queue = self.waiting.entry(lane.clone()).or_default();
        let behind = !queue.is_empty() || self.busy.contains(&lane);
        if !behind {
            self.startable.push_back(lane);
        }
        queue.push_back(delivery);
        queue.back().filter(|_| behind)
    }

    /// The next row whose lane is free, its lane now busy.
    fn next(&mut self) -> Option<(Lane, Delivery)> {
        let lane = self.startable.pop_front()?;
        let queue = self.waiting.get_mut(&lane)?;
        let delivery = queue.pop_front()?;
        if queue.is_empty() {
            self.waiting.remove(&lane);
        }
        self.busy.insert(lane.clone());
        Some((lane, delivery))
    }

    /// The row is done (handled, failed or given up); its lane's next row may start.
    fn finish(&mut self, lane: Lane, id: DeliveryRowId) {
        self.taken.remove(&id);
        self.busy.remove(&lane);
        if self.waiting.contains_key(&lane) {
            self.startable.push_back(lane);
        }
    }

    /// Rows that could start as soon as a slot frees (their lane is not busy).
    fn ready_rows(&self) -> usize {
        self.waiting
            .iter()
            .filter(|(lane, _)| !self.busy.contains(*lane))
            .map(|(_, queue)| queue.len())
            .sum()
    }

    /// Whether more rows may be taken: few are ready to start, and at most ten batches are
    /// held (rows of one stalled issue wait in the store, not in memory).
    fn has_room(&self, batch: usize) -> bool {
        self.ready_rows() < batch && self.taken.len() < batch.saturating_mul(10)
    }
}

/// Everything a handler task needs (tasks outlive a borrow of the worker).
struct Shared {
    store: Arc<dyn Store>,
    handler: Arc<dyn DeliveryHandler>,
    config: InboxConfig,
}

/// Runs the inbox until cancelled.
///
/// Deliveries of different issues are handled concurrently (at most
/// `max_concurrent_issues` at once), so an issue waiting for its model or for Gitea holds up
/// only its own later deliveries; those of one issue keep their order (a lane per issue).
pub struct InboxWorker {
    shared: Arc<Shared>,
    notify: Arc<Notify>,
}

impl std::fmt::Debug for InboxWorker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InboxWorker")
            .field("config", &self.shared.config)
            .finish_non_exhaustive()
    }
}

/// How a round of taking rows went.
enum Taken {
    /// The store may hold more due rows than were taken.
    More(usize),
    All(usize),
}

impl InboxWorker {
    pub fn new(
        store: Arc<dyn Store>,
        handler: Arc<dyn DeliveryHandler>,
        notify: Arc<Notify>,
        config: InboxConfig,
    ) -> Self {
        Self {
            shared: Arc::new(Shared {
                store,
                handler,
                config,
            }),
            notify,
        }
    }

    /// Handles what is due now and waits until it is done; returns how many rows it took.
    pub async fn run_once(&self) -> Result<usize, mosaic_store::StoreError> {
        let mut lanes = Lanes::default();
        let mut tasks = JoinSet::new();
        let taken = match self.take(&mut lanes).await? {
            Taken::More(n) | Taken::All(n) => n,
        };
        loop {
            self.start(&mut lanes, &mut tasks);
            match tasks.join_next_with_id().await {
                Some(done) => self.finished(&mut lanes, done).await,
                None => return Ok(taken),
            }
        }
    }

    /// Takes the due rows not taken yet (at most `batch`) into their lanes.
    async fn take(&self, lanes: &mut Lanes) -> Result<Taken, mosaic_store::StoreError> {
        let batch = self.shared.config.batch_size();
        // Rows already taken are still pending and come first: ask for enough to see `batch`
        // new ones behind them.
        let limit = u32::try_from(lanes.taken.len().saturating_add(batch)).unwrap_or(u32::MAX);
        let due = self
            .shared
            .store
            .pending_deliveries(Utc::now(), limit)
            .await?;
        let complete = due.len() < limit as usize;
        let mut new = 0;
        for delivery in due {
            if lanes.taken.contains(&delivery.id) {
                continue;
            }
            if new == batch {
                return Ok(Taken::More(new));
            }
            new += 1;
            if let Some(behind) = lanes.push(delivery) {
                // Earlier rows of its issue are still ahead: the handler may give up slow
                // work this row makes moot.
                self.shared.handler.queued(behind);
            }
        }
        Ok(if complete {
            Taken::All(new)
        } else {
            Taken::More(new)
        })
    }

    /// Starts rows of free lanes while slots are free.
    fn start(&self, lanes: &mut Lanes, tasks: &mut JoinSet<()>) {
        while tasks.len() < self.shared.config.concurrency() {
            let Some((lane, delivery)) = lanes.next() else {
                return;
            };
            let (id, attempts) = (delivery.id, delivery.attempts);
            let shared = Arc::clone(&self.shared);
            let span = tracing::info_span!(
                "delivery",
                inbox_id = delivery.id,
                delivery = delivery.delivery_id.as_deref().unwrap_or(""),
                event = %delivery.event,
                action = delivery.action.as_deref().unwrap_or(""),
            );
            let handle =
                tasks.spawn(async move { shared.handle_one(&delivery).await }.instrument(span));
            lanes.running.insert(handle.id(), (lane, id, attempts));
        }
    }

    /// Frees the lane of a finished task. A handler that panicked leaves its row pending: it
    /// counts as a failed attempt, so it is retried later and given up in the end.
    async fn finished(
        &self,
        lanes: &mut Lanes,
        done: Result<(tokio::task::Id, ()), tokio::task::JoinError>,
    ) {
        let task = match &done {
            Ok((task, ())) => *task,
            Err(err) => err.id(),
        };
        let Some((lane, id, attempts)) = lanes.running.remove(&task) else {
            return;
        };
        if let Err(err) = done {
            tracing::error!(inbox_id = id, error = %err, "the delivery's handler panicked");
            self.shared
                .record_failure(id, attempts, &format!("handler panicked: {err}"))
                .await;
        }
        lanes.finish(lane, id);
    }

    /// Works until `cancel` fires: at start (unfinished rows after a crash), whenever intake
    /// accepts a delivery, and every `idle_poll_ms` for retries that fell due. New rows are
    /// taken while handlers run, so a delivery of another issue never waits for a slow one.
    /// On cancel no new row starts; rows being handled are finished.
    pub async fn run(self, cancel: CancellationToken) {
        let idle = Duration::from_millis(self.shared.config.idle_poll_ms);
        let mut lanes = Lanes::default();
        let mut tasks: JoinSet<()> = JoinSet::new();
        let mut failures: u32 = 0;
        let mut look = true;
        let mut more_due = false;
        let mut next_look = tokio::time::Instant::now();
        loop {
            // Register interest before looking, so a wake-up during the round is not lost.
            let notified = self.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            // Rows are taken ahead only while there is room, so a burst stays in the store
            // rather than in memory.
            if look && lanes.has_room(self.shared.config.batch_size()) {
                look = false;
                next_look = tokio::time::Instant::now() + idle;
                match self.take(&mut lanes).await {
                    Ok(Taken::More(_)) => {
                        failures = 0;
                        more_due = true;
                    }
                    Ok(Taken::All(_)) => {
                        failures = 0;
                        more_due = false;
                    }
                    Err(err) => {
                        failures = failures.saturating_add(1);
                        let delay = self.shared.config.backoff(failures);
                        tracing::error!(error = %err, retry_in_ms = delay.as_millis() as u64, "inbox unavailable");
                        next_look = tokio::time::Instant::now() + delay;
                        more_due = false;
                    }
                }
            }
            self.start(&mut lanes, &mut tasks);
            if more_due && lanes.has_room(self.shared.config.batch_size()) {
                look = true;
                if cancel.is_cancelled() {
                    break;
                }
                continue;
            }
            tokio::select! {
                () = cancel.cancelled() => break,
                Some(done) = tasks.join_next_with_id() => {
                    self.finished(&mut lanes, done).await;
                }
                () = &mut notified => look = true,
                // Once a look is due it waits for room (a finished row), not for the timer.
                () = tokio::time::sleep_until(next_look), if !look => look = true,
            }
        }
        // Rows being handled finish (their effects commit with their processed mark); rows
        // not started stay pending for the next run.
        while let Some(done) = tasks.join_next_with_id().await {
            self.finished(&mut lanes, done).await;
        }
    }
}

impl Shared {
    async fn handle_one(&self, delivery: &Delivery) {
        match self.handler.handle(delivery).await {
            Ok(()) => tracing::debug!("delivery processed"),
            Err(HandlerError::Permanent(reason)) => {
                tracing::error!(%reason, "delivery cannot be processed; marked failed");
                if let Err(err) = self.store.mark_dead(delivery.id, &reason).await {
                    // The row stays pending and is taken again later.
                    tracing::error!(error = %err, "could not record the delivery's failure");
                }
            }
            Err(HandlerError::Transient(reason)) => {
                self.record_failure(delivery.id, delivery.attempts, &reason)
                    .await;
            }
        }
    }

    /// A failed attempt: retried after a backoff, or given up after `max_attempts`.
    async fn record_failure(&self, id: DeliveryRowId, attempts_before: u32, reason: &str) {
        let attempts = attempts_before + 1;
        let outcome = if attempts >= self.config.max_attempts {
            tracing::error!(%reason, attempts, "delivery failed too often; marked failed");
            self.store.mark_dead(id, reason).await
        } else {
            let delay = self.config.backoff(attempts);
            tracing::warn!(%reason, attempts, retry_in_ms = delay.as_millis() as u64, "delivery failed; will retry");
            let next = Utc::now()
                + chrono::Duration::from_std(delay)
                    .unwrap_or_else(|_| chrono::Duration::seconds(60));
            self.store.mark_failed_attempt(id, reason, next).await
        };
        if let Err(err) = outcome {
            // The row stays pending and is taken again later.
            tracing::error!(error = %err, "could not record the delivery's failure");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mosaic_store::{DeliveryStatus, IntakeStatus, NewDelivery, RecordOutcome, StoreConfig};
    use mosaic_store_sqlite::SqliteStore;
    use std::sync::Mutex;

    const ASSIGN: &[u8] = include_bytes!("../../../tests/fixtures/gitea/issue-assign-event.json");

    fn store(dir: &tempfile::TempDir) -> Arc<dyn Store> {
        Arc::new(SqliteStore::open(&StoreConfig::sqlite(dir.path().join("t.db"))).unwrap())
    }

    fn delivery(id: &str, body: &[u8]) -> NewDelivery {
        NewDelivery {
            delivery_id: Some(id.to_owned()),
            event: "issues".to_owned(),
            event_type: Some("issue_assign".to_owned()),
            action: Some("assigned".to_owned()),
            repository: None,
            issue_number: None,
            body_sha256: fake_hash(body, id),
            body: body.to_vec(),
            status: IntakeStatus::Pending,
            received_at: Utc::now(),
        }
    }

    /// Distinct per test row (the store only needs uniqueness here).
    fn fake_hash(body: &[u8], salt: &str) -> [u8; 32] {
        let mut out = [0_u8; 32];
        for (i, b) in body.iter().chain(salt.as_bytes()).enumerate() {
            out[i % 32] = out[i % 32].wrapping_mul(31).wrapping_add(*b);
        }
        out
    }

    #[tokio::test]
    async fn snapshot_handler_records_the_issue_and_completes_the_row() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(&dir);
        store.record_delivery(delivery("a", ASSIGN)).await.unwrap();
        let worker = InboxWorker::new(
            Arc::clone(&store),
            Arc::new(SnapshotHandler::new(Arc::clone(&store))),
            Arc::new(Notify::new()),
            InboxConfig::default(),
        );
        assert_eq!(worker.run_once().await.unwrap(), 1);
        assert_eq!(
            worker.run_once().await.unwrap(),
            0,
            "processed rows are not taken again"
        );
        let counts = store.delivery_counts().await.unwrap();
        assert_eq!((counts.pending, counts.processed), (0, 1));
        let payload: serde_json::Value = serde_json::from_slice(ASSIGN).unwrap();
        let repo: mosaic_domain::RepoName = payload["repository"]["full_name"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
        let number = payload["issue"]["number"].as_u64().unwrap();
        let snapshot = store
            .get_issue_snapshot(&mosaic_domain::IssueRef::new(repo, number))
            .await
            .unwrap()
            .expect("snapshot stored");
        assert_eq!(snapshot.title, payload["issue"]["title"].as_str().unwrap());
    }

    struct Flaky {
        failures_left: Mutex<u32>,
        permanent: bool,
    }

    #[async_trait]
    impl DeliveryHandler for Flaky {
        async fn handle(&self, _delivery: &Delivery) -> Result<(), HandlerError> {
            let mut left = self.failures_left.lock().unwrap();
            if *left > 0 {
                *left -= 1;
                return Err(if self.permanent {
                    HandlerError::Permanent("never".into())
                } else {
                    HandlerError::Transient("not now".into())
                });
            }
            Ok(())
        }
    }

    fn fast() -> InboxConfig {
        InboxConfig {
            base_backoff_ms: 1,
            max_backoff_ms: 1,
            max_attempts: 3,
            ..InboxConfig::default()
        }
    }

    #[tokio::test]
    async fn transient_failures_back_off_then_give_up() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(&dir);
        store.record_delivery(delivery("b", ASSIGN)).await.unwrap();
        let handler = Arc::new(Flaky {
            failures_left: Mutex::new(10),
            permanent: false,
        });
        let worker = InboxWorker::new(Arc::clone(&store), handler, Arc::new(Notify::new()), fast());
        for _ in 0..3 {
            tokio::time::sleep(Duration::from_millis(5)).await;
            worker.run_once().await.unwrap();
        }
        let rows = store.recent_deliveries(None, 10).await.unwrap();
        assert_eq!(rows[0].status, DeliveryStatus::Failed);
        assert_eq!(rows[0].last_error.as_deref(), Some("not now"));
    }

    #[tokio::test]
    async fn a_permanent_failure_is_given_up_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(&dir);
        store
            .record_delivery(delivery("c", b"{\"not\":\"an issue\"}"))
            .await
            .unwrap();
        let worker = InboxWorker::new(
            Arc::clone(&store),
            Arc::new(SnapshotHandler::new(Arc::clone(&store))),
            Arc::new(Notify::new()),
            fast(),
        );
        worker.run_once().await.unwrap();
        let rows = store.recent_deliveries(None, 10).await.unwrap();
        assert_eq!(rows[0].status, DeliveryStatus::Failed);
        assert!(
            rows[0]
                .last_error
                .as_deref()
                .unwrap()
                .contains("stored payload is invalid")
        );
    }

    #[tokio::test]
    async fn a_transient_failure_is_retried_and_then_succeeds() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(&dir);
        store.record_delivery(delivery("d", ASSIGN)).await.unwrap();
        let handler = Arc::new(Flaky {
            failures_left: Mutex::new(1),
            permanent: false,
        });
        let worker = InboxWorker::new(Arc::clone(&store), handler, Arc::new(Notify::new()), fast());
        worker.run_once().await.unwrap();
        let rows = store.recent_deliveries(None, 10).await.unwrap();
        assert_eq!(
            (rows[0].status, rows[0].attempts),
            (DeliveryStatus::Pending, 1)
        );
    }

    #[tokio::test]
    async fn snapshot_handler_does_not_take_a_possible_replay_for_the_present() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(&dir);
        let mut edited: serde_json::Value = serde_json::from_slice(ASSIGN).unwrap();
        edited["issue"]["title"] = "renamed in the same second".into();
        let edited = serde_json::to_vec(&edited).unwrap();
        let same_hash = |mut new: NewDelivery| {
            new.body_sha256 = fake_hash(ASSIGN, "the body");
            new
        };
        store
            .record_delivery(same_hash(delivery("a", ASSIGN)))
            .await
            .unwrap();
        store.record_delivery(delivery("b", &edited)).await.unwrap();
        let replay = store
            .record_delivery(same_hash(delivery("c", ASSIGN)))
            .await
            .unwrap();
        assert!(matches!(replay, RecordOutcome::PossibleReplay { .. }));
        let worker = InboxWorker::new(
            Arc::clone(&store),
            Arc::new(SnapshotHandler::new(Arc::clone(&store))),
            Arc::new(Notify::new()),
            InboxConfig::default(),
        );
        while worker.run_once().await.unwrap() > 0 {}
        let counts = store.delivery_counts().await.unwrap();
        assert_eq!((counts.pending, counts.processed), (0, 3));
        let payload: serde_json::Value = serde_json::from_slice(ASSIGN).unwrap();
        let repo: mosaic_domain::RepoName = payload["repository"]["full_name"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
        let number = payload["issue"]["number"].as_u64().unwrap();
        let snapshot = store
            .get_issue_snapshot(&mosaic_domain::IssueRef::new(repo, number))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(snapshot.title, "renamed in the same second");
    }

    /// Notes when each delivery starts and ends, taking a while per delivery.
    struct Recording {
        store: Arc<dyn Store>,
        events: Mutex<Vec<(u64, DeliveryRowId, bool)>>,
        running: Mutex<u32>,
        most_at_once: Mutex<u32>,
    }

    #[async_trait]
    impl DeliveryHandler for Recording {
        async fn handle(&self, delivery: &Delivery) -> Result<(), HandlerError> {
            let issue = delivery.issue_number.unwrap_or(0);
            self.events.lock().unwrap().push((issue, delivery.id, true));
            {
                let mut running = self.running.lock().unwrap();
                *running += 1;
                let mut most = self.most_at_once.lock().unwrap();
                *most = (*most).max(*running);
            }
            // Uneven times, so that issues finish in another order than they started.
            tokio::time::sleep(Duration::from_millis(1 + (delivery.id as u64 * 7) % 13)).await;
            *self.running.lock().unwrap() -= 1;
            self.events
                .lock()
                .unwrap()
                .push((issue, delivery.id, false));
            self.store.mark_processed(delivery.id).await?;
            Ok(())
        }
    }

    #[tokio::test]
    async fn issues_are_handled_concurrently_and_each_issue_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(&dir);
        for i in 0..60_u64 {
            let mut row = delivery(&format!("r{i}"), ASSIGN);
            row.repository = Some("Acme/Widgets".to_owned());
            row.issue_number = Some(i % 6 + 1);
            store.record_delivery(row).await.unwrap();
        }
        let handler = Arc::new(Recording {
            store: Arc::clone(&store),
            events: Mutex::default(),
            running: Mutex::default(),
            most_at_once: Mutex::default(),
        });
        let config = InboxConfig {
            max_concurrent_issues: 4,
            batch: 25,
            ..InboxConfig::default()
        };
        let worker = InboxWorker::new(
            Arc::clone(&store),
            Arc::clone(&handler) as Arc<dyn DeliveryHandler>,
            Arc::new(Notify::new()),
            config,
        );
        while worker.run_once().await.unwrap() > 0 {}
        let most = *handler.most_at_once.lock().unwrap();
        assert!((2..=4).contains(&most), "{most} at once");
        let events = handler.events.lock().unwrap().clone();
        assert_eq!(events.len(), 120);
        for issue in 1..=6 {
            let of_issue: Vec<_> = events.iter().filter(|(n, _, _)| *n == issue).collect();
            for pair in of_issue.chunks(2) {
                // Each start is followed by its own end before the next row of the issue starts.
                assert_eq!((pair[0].1, pair[0].2), (pair[1].1, true), "{of_issue:?}");
                assert_eq!((pair[1].1, pair[1].2), (pair[0].1, false), "{of_issue:?}");
            }
            let ids: Vec<_> = of_issue.iter().step_by(2).map(|(_, id, _)| *id).collect();
            assert!(ids.is_sorted(), "in arrival order: {ids:?}");
            assert_eq!(ids.len(), 10);
        }
    }

    #[tokio::test]
    async fn the_running_worker_takes_new_rows_while_a_handler_waits() {
        struct Stuck {
            store: Arc<dyn Store>,
            release: Notify,
            handled: Mutex<Vec<u64>>,
        }
        #[async_trait]
        impl DeliveryHandler for Stuck {
            async fn handle(&self, delivery: &Delivery) -> Result<(), HandlerError> {
                if delivery.delivery_id.as_deref() == Some("a") {
                    self.release.notified().await;
                }
                self.handled
                    .lock()
                    .unwrap()
                    .push(delivery.issue_number.unwrap_or(0));
                self.store.mark_processed(delivery.id).await?;
                Ok(())
            }
        }
        let dir = tempfile::tempdir().unwrap();
        let store = store(&dir);
        let numbered = |id: &str, issue: u64| {
            let mut row = delivery(id, ASSIGN);
            row.repository = Some("acme/widgets".to_owned());
            row.issue_number = Some(issue);
            row
        };
        let handler = Arc::new(Stuck {
            store: Arc::clone(&store),
            release: Notify::new(),
            handled: Mutex::new(Vec::new()),
        });
        let notify = Arc::new(Notify::new());
        let cancel = CancellationToken::new();
        let worker = InboxWorker::new(
            Arc::clone(&store),
            Arc::clone(&handler) as Arc<dyn DeliveryHandler>,
            Arc::clone(&notify),
            InboxConfig::default(),
        );
        let running = tokio::spawn(worker.run(cancel.clone()));
        store.record_delivery(numbered("a", 1)).await.unwrap();
        notify.notify_one();
        tokio::time::sleep(Duration::from_millis(50)).await;
        store.record_delivery(numbered("b", 2)).await.unwrap();
        store.record_delivery(numbered("c", 1)).await.unwrap();
        notify.notify_one();
        for _ in 0..100 {
            if handler.handled.lock().unwrap().contains(&2) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(
            *handler.handled.lock().unwrap(),
            vec![2],
            "#1 waits, #2 does not"
        );
        handler.release.notify_one();
        for _ in 0..100 {
            if handler.handled.lock().unwrap().len() == 3 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(*handler.handled.lock().unwrap(), vec![2, 1, 1]);
        cancel.cancel();
        running.await.unwrap();
        let counts = store.delivery_counts().await.unwrap();
        assert_eq!((counts.pending, counts.processed), (0, 3));
    }

    #[test]
    fn zero_concurrency_is_refused() {
        let config = InboxConfig {
            max_concurrent_issues: 0,
            ..InboxConfig::default()
        };
        assert_eq!(
            config.validate().unwrap_err().to_string(),
            "`inbox.max_concurrent_issues`: must be at least 1"
        );
        assert_eq!(InboxConfig::default().validate(), Ok(()));
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        let config = InboxConfig::default();
        let first = config.backoff(1).as_millis();
        assert!((800..=1200).contains(&first), "{first}");
        let fourth = config.backoff(4).as_millis();
        assert!((6400..=9600).contains(&fourth), "{fourth}");
        assert!(config.backoff(40).as_millis() <= 360_000);
    }
}
