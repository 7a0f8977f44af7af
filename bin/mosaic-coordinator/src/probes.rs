//! `/health` components backed by the real adapters.

use std::sync::Arc;

use async_trait::async_trait;
use mosaic_gitea::{CallObserver, CallOutcome};
use mosaic_http::{ComponentHealth, HealthProbe};

use crate::metrics::GiteaCalls;
use mosaic_store::Store;

/// The store is critical: without it no delivery can be acknowledged.
///
/// Down exactly when a webhook's write would fail: a recent write that went through proves the
/// path without another; otherwise (no recent write, or a recent failure) the store's health
/// check writes through the delivery path itself, so it also sees writes succeed again.
#[derive(Debug)]
pub struct StoreProbe {
    pub store: Arc<dyn Store>,
}

/// A successful write younger than this spares the probe's own write.
const FRESH_WRITE: chrono::TimeDelta = chrono::TimeDelta::seconds(5);
/// A failed write this recent makes every check write again, whatever succeeded since.
const RECENT_FAILURE: chrono::TimeDelta = chrono::TimeDelta::seconds(60);

impl StoreProbe {
    async fn can_write(&self) -> Result<(), String> {
        let outcomes = self.store.write_outcomes();
        let now = chrono::Utc::now();
        let failed_recently = outcomes
            .last_failure
            .as_ref()
            .is_some_and(|failure| now - failure.at < RECENT_FAILURE);
        let fresh_success = outcomes
            .last_success
            .is_some_and(|at| now - at < FRESH_WRITE);
        if fresh_success && !failed_recently {
            return Ok(());
        }
        self.store
            .health_check()
            .await
            .map_err(|err| format!("cannot write: {err}"))
    }
}

#[async_trait]
impl HealthProbe for StoreProbe {
    fn name(&self) -> &str {
        "store"
    }

    fn critical(&self) -> bool {
        true
    }

    async fn check(&self) -> ComponentHealth {
        match self.can_write().await {
            Ok(()) => ComponentHealth::up(),
            Err(why) => ComponentHealth::down(why),
        }
    }
}

/// Writes to Gitea that were given up, or that have waited too long, mean the issues no longer
/// show what the coordinator did: degraded (not 503: deliveries are still accepted).
#[derive(Debug)]
pub struct OutboxProbe {
    pub store: Arc<dyn Store>,
    /// A pending write older than this counts as stuck.
    pub stuck_after: chrono::TimeDelta,
}

impl OutboxProbe {
    fn judge(
        &self,
        backlog: &mosaic_store::OutboxBacklog,
        now: chrono::DateTime<chrono::Utc>,
    ) -> ComponentHealth {
        let stuck_for = backlog
            .oldest_pending_at
            .map(|oldest| now - oldest)
            .filter(|age| *age > self.stuck_after);
        let mut problems = Vec::new();
        if backlog.failed > 0 {
            problems.push(format!("{} write(s) to Gitea given up", backlog.failed));
        }
        if let Some(age) = stuck_for {
            problems.push(format!(
                "the oldest of {} pending write(s) has waited {} min",
                backlog.pending,
                age.num_minutes()
            ));
        }
        if problems.is_empty() {
            let health = ComponentHealth::up();
            if backlog.pending > 0 {
                health.with_detail(format!("{} pending", backlog.pending))
            } else {
                health
            }
        } else {
            ComponentHealth::down(problems.join("; "))
        }
    }
}

#[async_trait]
impl HealthProbe for OutboxProbe {
    fn name(&self) -> &str {
        "outbox"
    }

    fn critical(&self) -> bool {
        false
    }

    async fn check(&self) -> ComponentHealth {
        match self.store.outbox_backlog().await {
            Ok(backlog) => self.judge(&backlog, chrono::Utc::now()),
            Err(err) => ComponentHealth::down(format!("cannot read the outbox: {err}")),
        }
    }
}

/// What the coordinator knows of its Gitea connection, shared with `/health`.
#[derive(Debug, Clone)]
pub enum GiteaStatus {
    /// Not configured on purpose: events are recorded, nothing is written to Gitea.
    Disabled(String),
    /// Gitea could not be reached (yet); retried in the background.
    Unreachable(String),
    /// Connected as this login.
    Connected(String),
}

/// The outcome of the latest Gitea call, whatever made it (outbox, reconciler, engine), so
/// `/health` reflects a Gitea that hangs or fails now, not only the state at start.
#[derive(Debug, Default)]
pub struct LastGiteaCall(std::sync::Mutex<Option<(std::time::Instant, &'static str, CallOutcome)>>);

impl LastGiteaCall {
    fn record(&self, operation: &'static str, outcome: CallOutcome) {
        let mut last = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *last = Some((std::time::Instant::now(), operation, outcome));
    }

    /// Why the latest call counts as a failure of Gitea (a timeout, no connection, a 5xx).
    fn failure(&self) -> Option<String> {
        let last = *self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let (at, operation, outcome) = last?;
        let what = match outcome {
            CallOutcome::Status(code) if code >= 500 => format!("answered {code}"),
            CallOutcome::Status(_) => return None,
            CallOutcome::Timeout => "timed out".to_owned(),
            CallOutcome::TransportError => "could not be reached".to_owned(),
        };
        Some(format!(
            "the latest call ({operation}, {} s ago) {what}",
            at.elapsed().as_secs()
        ))
    }
}

/// Counts every call for /metrics and keeps the latest outcome for /health.
#[derive(Debug)]
pub struct ObservedGiteaCalls {
    pub metrics: GiteaCalls,
    pub last: Arc<LastGiteaCall>,
}

impl CallObserver for ObservedGiteaCalls {
    fn observe(&self, operation: &'static str, outcome: CallOutcome, elapsed: std::time::Duration) {
        self.metrics.observe(operation, outcome, elapsed);
        self.last.record(operation, outcome);
    }
}

/// Gitea is not needed to accept webhooks: down means degraded, never 503.
#[derive(Debug)]
pub struct GiteaProbe {
    pub status: Arc<std::sync::RwLock<GiteaStatus>>,
    pub last_call: Arc<LastGiteaCall>,
}

#[async_trait]
impl HealthProbe for GiteaProbe {
    fn name(&self) -> &str {
        "gitea"
    }

    fn critical(&self) -> bool {
        false
    }

    async fn check(&self) -> ComponentHealth {
        let status = self
            .status
            .read()
            .map(|status| status.clone())
            .unwrap_or_else(|poisoned| poisoned.into_inner().clone());
        match status {
            GiteaStatus::Disabled(why) => ComponentHealth::disabled(why),
            GiteaStatus::Unreachable(why) => ComponentHealth::down(why),
            GiteaStatus::Connected(login) => match self.last_call.failure() {
                Some(failure) => ComponentHealth::down(format!("as {login}; {failure}")),
                None => ComponentHealth::up().with_detail(format!("as {login}")),
            },
        }
    }
}

/// Whether issues are being coordinated: an engine that never starts (no bot login known, or
/// Gitea's identity still unknown) leaves deliveries recorded and nothing done, which an
/// operator must see as degraded, not healthy.
#[derive(Debug)]
pub struct CoordinationProbe {
    pub engine: Arc<std::sync::OnceLock<mosaic_engine::engine::Engine>>,
    /// Why nothing is coordinated, when the workers gave up on starting the engine.
    pub idle_because: Arc<std::sync::OnceLock<String>>,
    /// A standby coordinates nothing on purpose: the leader does.
    pub leadership: Arc<Leadership>,
}

#[async_trait]
impl HealthProbe for CoordinationProbe {
    fn name(&self) -> &str {
        "coordination"
    }

    fn critical(&self) -> bool {
        false
    }

    async fn check(&self) -> ComponentHealth {
        if self.engine.get().is_some() {
            return ComponentHealth::up();
        }
        if self.leadership.get() == Leadership::STANDBY && self.leadership.failure().is_none() {
            return ComponentHealth::up().with_detail("standby: the leader coordinates");
        }
        match self.idle_because.get() {
            Some(why) => ComponentHealth::down(why.clone()),
            None => ComponentHealth::down(
                "not started yet: waiting for the bot's identity from Gitea (deliveries are recorded)",
            ),
        }
    }
}

/// Whether this coordinator leads the ones sharing its store (decides and runs agents) or stands
/// by (records deliveries for the leader).
#[derive(Debug, Default)]
pub struct Leadership {
    state: std::sync::atomic::AtomicU8,
    /// Why the last ask for the leadership failed (cleared by an answer).
    failure: std::sync::Mutex<Option<String>>,
}

impl Leadership {
    const STANDBY: u8 = 0;
    const LEADER: u8 = 1;
    const LOST: u8 = 2;

    pub fn lead(&self) {
        self.state
            .store(Self::LEADER, std::sync::atomic::Ordering::SeqCst);
        self.asked(None);
    }

    pub fn lose(&self) {
        self.state
            .store(Self::LOST, std::sync::atomic::Ordering::SeqCst);
    }

    /// Notes how the last ask went: `Some(why)` when the store could not answer.
    pub fn asked(&self, failure: Option<String>) {
        *self
            .failure
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = failure;
    }

    fn get(&self) -> u8 {
        self.state.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Whether this coordinator leads now.
    pub fn leads(&self) -> bool {
        self.get() == Self::LEADER
    }

    fn failure(&self) -> Option<String> {
        self.failure
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

/// When this coordinator last confirmed it still leads, on the monotonic clock, which runs on
/// while the process is paused: its actions outside the store (Gitea writes, deleting
/// directories) stop once its lease may have passed to another coordinator, even before it
/// learns it lost the lead (the store refuses its writes by then: fencing).
#[derive(Debug)]
pub struct LeaseClock {
    origin: std::time::Instant,
    /// Milliseconds since `origin` at the last confirmation, plus one; 0: never confirmed.
    confirmed: std::sync::atomic::AtomicU64,
    /// How long after a confirmation this coordinator may still act: the lease minus a margin
    /// for the time the confirmation itself took.
    valid_for: std::time::Duration,
}

impl LeaseClock {
    pub fn new(lease: std::time::Duration) -> Self {
        Self {
            origin: std::time::Instant::now(),
            confirmed: std::sync::atomic::AtomicU64::new(0),
            valid_for: lease.saturating_sub(std::time::Duration::from_millis(500)),
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.origin.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// The store said this coordinator still leads.
    pub fn confirm(&self) {
        self.confirmed.store(
            self.now_ms().saturating_add(1),
            std::sync::atomic::Ordering::SeqCst,
        );
    }

    /// Whether this coordinator may still act as the leader.
    pub fn holds(&self) -> bool {
        match self.confirmed.load(std::sync::atomic::Ordering::SeqCst) {
            0 => false,
            confirmed => {
                let since = self.now_ms().saturating_sub(confirmed - 1);
                u128::from(since) < self.valid_for.as_millis()
            }
        }
    }
}

#[derive(Debug)]
pub struct LeadershipProbe {
    pub leadership: Arc<Leadership>,
}

#[async_trait]
impl HealthProbe for LeadershipProbe {
    fn name(&self) -> &str {
        "leadership"
    }

    fn critical(&self) -> bool {
        false
    }

    async fn check(&self) -> ComponentHealth {
        if let Some(why) = self.leadership.failure() {
            return ComponentHealth::down(format!("cannot ask for the leadership: {why}"));
        }
        match self.leadership.get() {
            Leadership::STANDBY => ComponentHealth::up().with_detail(
                "standby: another coordinator leads; deliveries are recorded here and handled by it",
            ),
            Leadership::LEADER => ComponentHealth::up().with_detail("leader"),
            _ => ComponentHealth::down("leadership lost; stopping"),
        }
    }
}

/// Free space under the workspace root: below `workspace.min_free_bytes` nothing is dispatched,
/// which degrades the coordinator (intake goes on).
pub struct WorkspacesProbe {
    pub engine: Arc<std::sync::OnceLock<mosaic_engine::engine::Engine>>,
}

impl std::fmt::Debug for WorkspacesProbe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkspacesProbe").finish_non_exhaustive()
    }
}

#[async_trait]
impl HealthProbe for WorkspacesProbe {
    fn name(&self) -> &str {
        "workspaces"
    }

    fn critical(&self) -> bool {
        false
    }

    async fn check(&self) -> ComponentHealth {
        let Some(engine) = self.engine.get() else {
            return ComponentHealth::up();
        };
        match engine.workspace_usage().await {
            Some(usage) if usage.low_disk => ComponentHealth::down(match usage.free_bytes {
                Some(free) => format!(
                    "{free} bytes free under the workspace root, below workspace.min_free_bytes ({}); no issue is dispatched",
                    usage.min_free_bytes
                ),
                None => {
                    "free space under the workspace root cannot be read; no issue is dispatched"
                        .to_owned()
                }
            }),
            _ => ComponentHealth::up(),
        }
    }
}

/// The metadata parser: a rejected API key degrades the coordinator (the template parser takes
/// over), it never stops intake.
pub struct ParserProbe {
    pub parser: Arc<dyn mosaic_parser::IssueParser>,
}

impl std::fmt::Debug for ParserProbe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ParserProbe").finish_non_exhaustive()
    }
}

#[async_trait]
impl HealthProbe for ParserProbe {
    fn name(&self) -> &str {
        "parser"
    }

    fn critical(&self) -> bool {
        false
    }

    async fn check(&self) -> ComponentHealth {
        let health = self.parser.health();
        let what = match &health.model {
            Some(model) => format!("{} ({model})", health.provider),
            None => health.provider.clone(),
        };
        if health.auth_failed {
            ComponentHealth::down(format!(
                "{what}: the API key was rejected; using the template parser"
            ))
        } else if let Some(error) = &health.last_error {
            ComponentHealth::up().with_detail(format!("{what}; last error: {error}"))
        } else {
            ComponentHealth::up().with_detail(what)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mosaic_http::ComponentStatus;

    trait Up {
        fn is_up(&self) -> bool;
    }
    impl Up for ComponentHealth {
        fn is_up(&self) -> bool {
            self.status == ComponentStatus::Up
        }
    }

    fn probe(last: &Arc<LastGiteaCall>) -> GiteaProbe {
        GiteaProbe {
            status: Arc::new(std::sync::RwLock::new(GiteaStatus::Connected(
                "bot".to_owned(),
            ))),
            last_call: Arc::clone(last),
        }
    }

    #[test]
    fn given_up_or_long_pending_writes_degrade_the_outbox() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(
            mosaic_store_sqlite::SqliteStore::open(&mosaic_store::StoreConfig::sqlite(
                dir.path().join("s.db"),
            ))
            .unwrap(),
        );
        let probe = OutboxProbe {
            store,
            stuck_after: chrono::TimeDelta::minutes(15),
        };
        let now = chrono::Utc::now();
        let backlog = |pending, failed, oldest_minutes: Option<i64>| mosaic_store::OutboxBacklog {
            pending,
            failed,
            oldest_pending_at: oldest_minutes.map(|m| now - chrono::TimeDelta::minutes(m)),
        };
        assert!(probe.judge(&backlog(0, 0, None), now).is_up());
        assert!(probe.judge(&backlog(3, 0, Some(2)), now).is_up());
        let given_up = probe.judge(&backlog(0, 116, None), now);
        assert!(!given_up.is_up());
        assert!(format!("{given_up:?}").contains("116 write(s) to Gitea given up"));
        let stuck = probe.judge(&backlog(4, 0, Some(40)), now);
        assert!(!stuck.is_up());
        assert!(format!("{stuck:?}").contains("waited 40 min"), "{stuck:?}");
    }

    #[tokio::test]
    async fn health_follows_the_latest_gitea_call() {
        let last = Arc::new(LastGiteaCall::default());
        let probe = probe(&last);
        assert!(probe.check().await.is_up());
        last.record("issue.get", CallOutcome::Timeout);
        let health = probe.check().await;
        assert!(!health.is_up(), "{health:?}");
        assert!(format!("{health:?}").contains("issue.get"), "{health:?}");
        last.record("issue.get", CallOutcome::Status(502));
        assert!(!probe.check().await.is_up());
        // A refusal is Gitea answering: it is up.
        last.record("issue.get", CallOutcome::Status(404));
        assert!(probe.check().await.is_up());
        last.record("issue.get", CallOutcome::TransportError);
        assert!(!probe.check().await.is_up());
        last.record("issue.get", CallOutcome::Status(200));
        assert!(probe.check().await.is_up());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_store_is_down_exactly_while_deliveries_cannot_be_written() {
        use mosaic_store::{IntakeStatus, NewDelivery, StoreConfig};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mosaic.db");
        let store: Arc<dyn Store> =
            Arc::new(mosaic_store_sqlite::SqliteStore::open(&StoreConfig::sqlite(&path)).unwrap());
        let probe = StoreProbe {
            store: Arc::clone(&store),
        };
        assert!(probe.check().await.is_up());

        // The inbox refuses inserts while the rest of the database still works.
        let outside = rusqlite::Connection::open(&path).unwrap();
        outside
            .execute_batch(
                "CREATE TRIGGER inbox_broken BEFORE INSERT ON inbox \
                 BEGIN SELECT RAISE(ABORT, 'simulated inbox failure'); END;",
            )
            .unwrap();
        let delivery = NewDelivery {
            delivery_id: Some("d-1".to_owned()),
            event: "issues".to_owned(),
            event_type: None,
            action: Some("opened".to_owned()),
            repository: Some("o/r".to_owned()),
            issue_number: Some(1),
            body_sha256: [7; 32],
            body: b"{}".to_vec(),
            status: IntakeStatus::Pending,
            received_at: chrono::Utc::now(),
        };
        assert!(store.record_delivery(delivery.clone()).await.is_err());
        let health = probe.check().await;
        assert!(!health.is_up(), "{health:?}");
        assert!(
            format!("{health:?}").contains("simulated inbox failure"),
            "{health:?}"
        );
        // Other writes still succeeding do not hide it.
        store.cache_put("k", "{}").await.unwrap();
        assert!(!probe.check().await.is_up());

        outside.execute_batch("DROP TRIGGER inbox_broken").unwrap();
        assert!(probe.check().await.is_up());
        store.record_delivery(delivery).await.unwrap();
    }
}

#[cfg(test)]
mod lease_tests {
    use super::LeaseClock;
    use std::time::Duration;

    #[test]
    fn the_lease_holds_only_for_a_while_after_each_confirmation() {
        let lease = LeaseClock::new(Duration::from_millis(1_500));
        assert!(!lease.holds(), "never confirmed");
        lease.confirm();
        assert!(lease.holds());
        // Paused (or not confirmed) past the lease minus its margin: it no longer holds.
        std::thread::sleep(Duration::from_millis(1_100));
        assert!(!lease.holds());
        lease.confirm();
        assert!(lease.holds());
    }
}
