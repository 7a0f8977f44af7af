//! The inbox worker: takes pending deliveries in order and hands each to the event handler.
//!
//! A handler completes a delivery itself (its effects and the `processed` mark commit in one
//! transaction), so a crash between the two cannot happen; handling the same row twice has the
//! effect of handling it once (invariant 3). A failing handler leaves the row pending with
//! exponential backoff; a row that can never succeed is marked failed at once.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::Utc;
use mosaic_domain::events::{EventKind, WebhookPayload, parse_payload};
use mosaic_store::{Delivery, IssueSnapshot, Store};
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

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
}

impl Default for InboxConfig {
    fn default() -> Self {
        Self {
            batch: 100,
            max_attempts: 8,
            base_backoff_ms: 1_000,
            max_backoff_ms: 5 * 60 * 1_000,
            idle_poll_ms: 1_000,
        }
    }
}

impl InboxConfig {
    /// Delay before attempt `attempts + 1`, with ±20% jitter so failures do not synchronise.
    pub fn backoff(&self, attempts: u32) -> Duration {
        crate::backoff::jittered(self.base_backoff_ms, self.max_backoff_ms, attempts)
    }
}

/// Runs the inbox until cancelled.
pub struct InboxWorker {
    store: Arc<dyn Store>,
    handler: Arc<dyn DeliveryHandler>,
    notify: Arc<Notify>,
    config: InboxConfig,
}

impl std::fmt::Debug for InboxWorker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InboxWorker")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl InboxWorker {
    pub fn new(
        store: Arc<dyn Store>,
        handler: Arc<dyn DeliveryHandler>,
        notify: Arc<Notify>,
        config: InboxConfig,
    ) -> Self {
        Self {
            store,
            handler,
            notify,
            config,
        }
    }

    /// Handles what is due now; returns how many rows it took.
    pub async fn run_once(&self) -> Result<usize, mosaic_store::StoreError> {
        let due = self
            .store
            .pending_deliveries(Utc::now(), self.config.batch)
            .await?;
        for delivery in &due {
            self.handle_one(delivery).await;
        }
        Ok(due.len())
    }

    async fn handle_one(&self, delivery: &Delivery) {
        let span = tracing::info_span!(
            "delivery",
            inbox_id = delivery.id,
            delivery = delivery.delivery_id.as_deref().unwrap_or(""),
            event = %delivery.event,
            action = delivery.action.as_deref().unwrap_or(""),
        );
        let _entered = span.enter();
        let result = self.handler.handle(delivery).await;
        let outcome = match result {
            Ok(()) => {
                tracing::debug!("delivery processed");
                return;
            }
            Err(HandlerError::Permanent(reason)) => {
                tracing::error!(%reason, "delivery cannot be processed; marked failed");
                self.store.mark_dead(delivery.id, &reason).await
            }
            Err(HandlerError::Transient(reason)) => {
                let attempts = delivery.attempts + 1;
                if attempts >= self.config.max_attempts {
                    tracing::error!(%reason, attempts, "delivery failed too often; marked failed");
                    self.store.mark_dead(delivery.id, &reason).await
                } else {
                    let delay = self.config.backoff(attempts);
                    tracing::warn!(%reason, attempts, retry_in_ms = delay.as_millis() as u64, "delivery failed; will retry");
                    let next = Utc::now()
                        + chrono::Duration::from_std(delay)
                            .unwrap_or_else(|_| chrono::Duration::seconds(60));
                    self.store
                        .mark_failed_attempt(delivery.id, &reason, next)
                        .await
                }
            }
        };
        if let Err(err) = outcome {
            // The row stays pending and is taken again next round.
            tracing::error!(error = %err, "could not record the delivery's failure");
        }
    }

    /// Works until `cancel` fires: at start (unfinished rows after a crash), whenever intake
    /// accepts a delivery, and every `idle_poll_ms` for retries that fell due.
    pub async fn run(self, cancel: CancellationToken) {
        let idle = Duration::from_millis(self.config.idle_poll_ms);
        let mut failures: u32 = 0;
        loop {
            // Register interest before looking, so a wake-up during the round is not lost.
            let notified = self.notify.notified();
            let pause = match self.run_once().await {
                Ok(taken) if taken as u32 >= self.config.batch => Duration::ZERO,
                Ok(_) => {
                    failures = 0;
                    idle
                }
                Err(err) => {
                    failures = failures.saturating_add(1);
                    let delay = self.config.backoff(failures);
                    tracing::error!(error = %err, retry_in_ms = delay.as_millis() as u64, "inbox unavailable");
                    delay
                }
            };
            if pause.is_zero() {
                if cancel.is_cancelled() {
                    return;
                }
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

#[cfg(test)]
mod tests {
    use super::*;
    use mosaic_store::sqlite::SqliteStore;
    use mosaic_store::{DeliveryStatus, IntakeStatus, NewDelivery, RecordOutcome, StoreConfig};
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
        let rows = store.recent_deliveries(10).await.unwrap();
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
        let rows = store.recent_deliveries(10).await.unwrap();
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
        let rows = store.recent_deliveries(10).await.unwrap();
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
