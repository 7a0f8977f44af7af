//! The PostgreSQL backend of the coordinator's [`Store`] trait.
//!
//! A pool of tokio-postgres connections (deadpool). Every write runs in its own transaction and
//! returns only after PostgreSQL committed it (with the server's default
//! `synchronous_commit = on`, committed means flushed to the WAL on disk): an acknowledged
//! delivery is durable. A session set to `synchronous_commit = off` is refused at connect. Operations that write several things (completing a delivery, several
//! transition batches) are one transaction: all or nothing. Concurrent writers run side by
//! side; the unique indexes deduplicate deliveries, row locks order status changes of one row,
//! and per-issue advisory locks keep a transition's check and write together.
//!
//! Migrations are embedded and applied at [`PostgresStore::connect`], in one transaction under
//! an advisory lock, so several coordinators may start at once. The same conformance suite as
//! the SQLite backend's specifies the behaviour (`tests/postgres.rs`).

mod failure;
mod migrate;
mod ops;

use std::str::FromStr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use mosaic_domain::{IssueRef, IssueState};
use mosaic_store::*;
use tokio_postgres::NoTls;

use crate::failure::Failure;

pub use migrate::supported_version as schema_version;

/// How to connect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PostgresOptions {
    /// Most connections open at once (concurrent operations beyond this wait for one).
    pub pool_size: usize,
    /// The schema the store's tables live in (PostgreSQL's `search_path`), created when
    /// missing; `None`: the server's default (normally `public`). Lets several stores share a
    /// database, as the tests do. Letters, digits and `_` only.
    pub schema: Option<String>,
    /// How long opening a connection, or waiting for a free one, may take.
    pub connect_timeout: Duration,
    /// How long a leader that stops answering (paused, hung, cut off) keeps the leadership:
    /// PostgreSQL ends its leadership connection after this long idle (the leader checks
    /// every second), and aborts any of its transactions left open this long, so the next
    /// leader's epoch can begin. At least 2 s.
    pub leader_lease: Duration,
}

impl Default for PostgresOptions {
    fn default() -> Self {
        Self {
            pool_size: 16,
            schema: None,
            connect_timeout: Duration::from_secs(10),
            leader_lease: Duration::from_secs(5),
        }
    }
}

/// Whether `url` names a PostgreSQL database (`postgres://` or `postgresql://`).
pub fn is_postgres_url(url: &str) -> bool {
    let url = url.trim_start();
    ["postgres://", "postgresql://"].iter().any(|scheme| {
        url.get(..scheme.len())
            .is_some_and(|start| start.eq_ignore_ascii_case(scheme))
    })
}

fn check_schema_name(schema: &str) -> Result<(), StoreError> {
    let valid = !schema.is_empty()
        && schema.len() <= 63
        && schema
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !schema.starts_with(|c: char| c.is_ascii_digit());
    if valid {
        Ok(())
    } else {
        Err(StoreError::InvalidConfig(format!(
            "PostgreSQL schema `{schema}`: use 1 to 63 letters, digits and `_`, not starting with a digit"
        )))
    }
}

/// Refuses a session whose commits may return before they are on disk
/// (`synchronous_commit = off`): the coordinator acknowledges a webhook once its row committed,
/// so such a commit could lose an acknowledged delivery in a crash. Every other level (`local`,
/// `on`, and the replicated `remote_write` and `remote_apply`) waits for the local flush at least.
async fn refuse_lost_commits(conn: &deadpool_postgres::Object) -> Result<(), StoreError> {
    let level: String = conn
        .query_one("SELECT current_setting('synchronous_commit')", &[])
        .await
        .and_then(|row| row.try_get(0))
        .map_err(|e| Failure::Db(e).in_write())?;
    if level == "off" {
        return Err(StoreError::InvalidConfig(
            "PostgreSQL runs with synchronous_commit = off, so an acknowledged delivery could be \
             lost in a crash; set it to on (the default) for the coordinator's role or database"
                .to_owned(),
        ));
    }
    Ok(())
}

#[derive(Debug, Default)]
struct Counters {
    commits: AtomicU64,
    writes: AtomicU64,
    outcomes: Mutex<WriteOutcomes>,
}

/// The PostgreSQL store. Cheap to share behind an `Arc`; dropping it closes its connections.
#[derive(Debug)]
pub struct PostgresStore {
    pool: Pool,
    counters: Counters,
    /// How to open the leadership connection (the pool's own settings).
    config: tokio_postgres::Config,
    /// The advisory lock's key: one per schema, so installations sharing a database do not
    /// compete.
    leader_key: i64,
    /// The leadership connection's `application_name`: `mosaic leader <schema>`.
    leader_name: String,
    /// The dedicated connection that asks for the advisory lock (kept while standing by, so a
    /// standby does not connect anew every second) and whether it holds it.
    leader: tokio::sync::Mutex<Option<(tokio_postgres::Client, bool)>>,
    /// Set once this store took the leadership; every write checks it from then on.
    fence: Mutex<Option<Fence>>,
    leader_lease: Duration,
}

/// Appends a server setting (`-c name=value`) to the connection's startup options.
fn add_option(config: &mut tokio_postgres::Config, option: &str) {
    let earlier = config.get_options().map(str::to_owned);
    config.options(match earlier {
        Some(earlier) if !earlier.is_empty() => format!("{earlier} {option}"),
        _ => option.to_owned(),
    });
}

/// What a leader's writes prove in their transaction: its epoch is still the current one and
/// its leadership connection still exists (backend `pid` started at `backend_start`: the
/// session-level lock lives exactly as long as that session, and a reused pid has another
/// start).
#[derive(Debug, Clone, Copy)]
struct Fence {
    epoch: i64,
    pid: i32,
    backend_start: DateTime<Utc>,
}

impl Fence {
    /// Refuses the transaction unless this coordinator still leads in its epoch. The row lock
    /// (`FOR SHARE`) makes a new leader's epoch wait until this transaction ends, so a write
    /// that passed the check is seen by the next leader's recovery. Also marks the rows the
    /// transaction inserts with the epoch (`mosaic.epoch`).
    async fn check(&self, tx: &impl deadpool_postgres::GenericClient) -> Result<(), Failure> {
        let row = tx
            .query_one(
                // pg_stat_activity rather than pg_locks: reading pg_locks takes every lock
                // manager partition, on every write.
                "SELECT e.epoch,
                        EXISTS (SELECT 1 FROM pg_stat_activity a
                                 WHERE a.pid = $1 AND a.backend_start = $2) AS held,
                        set_config('mosaic.epoch', $3, true)
                   FROM leader_epoch e WHERE e.id = 1 FOR SHARE OF e",
                &[&self.pid, &self.backend_start, &self.epoch.to_string()],
            )
            .await?;
        let current: i64 = row.try_get(0)?;
        let held: bool = row.try_get(1)?;
        if current != self.epoch || !held {
            return Err(Failure::Store(StoreError::Fenced {
                held: self.epoch,
                current: Some(current),
            }));
        }
        Ok(())
    }
}

/// Runs `$body` on a pooled connection (`$client`), as a read.
macro_rules! read {
    ($store:expr, |$client:ident| $body:expr) => {{
        let result: Result<_, Failure> = async {
            let conn = $store.pool.get().await?;
            let $client = &conn;
            $body.await
        }
        .await;
        result.map_err(Failure::in_read)
    }};
}

/// Runs `$body` in a transaction on a pooled connection (`$tx`) and commits it; on any error
/// the transaction is rolled back and nothing of it stays.
macro_rules! write_in_transaction {
    ($store:expr, |$tx:ident| $body:expr) => {{
        let result: Result<_, Failure> = async {
            let mut conn = $store.pool.get().await?;
            #[allow(unused_mut)]
            let mut $tx = conn.transaction().await?;
            if let Some(fence) = $store.fence() {
                fence.check(&$tx).await?;
            }
            // Awaited apart from the match: the future borrows the transaction.
            let outcome = $body.await;
            match outcome {
                Ok(value) => {
                    $tx.commit().await?;
                    Ok(value)
                }
                Err(error) => {
                    // The connection goes back to the pool either way; a failed rollback
                    // leaves it to deadpool to discard.
                    let _ = $tx.rollback().await;
                    Err(error)
                }
            }
        }
        .await;
        $store.noted(result)
    }};
}

impl PostgresStore {
    /// Connects to `url` (`postgres://` or `postgresql://`, any parameter tokio-postgres
    /// accepts) and brings the schema up to date. Fails when the server cannot be reached.
    pub async fn connect(url: &str, options: PostgresOptions) -> Result<Self, StoreError> {
        if !is_postgres_url(url) {
            return Err(StoreError::InvalidConfig(
                "a PostgreSQL store URL starts with postgres:// or postgresql://".to_owned(),
            ));
        }
        if options.pool_size == 0 {
            return Err(StoreError::InvalidConfig(
                "the PostgreSQL pool size must be at least 1".to_owned(),
            ));
        }
        // The error never repeats the URL: it may hold a password.
        let mut config = tokio_postgres::Config::from_str(url.trim()).map_err(|e| {
            StoreError::InvalidConfig(format!("cannot read the PostgreSQL URL: {e}"))
        })?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(options.connect_timeout);
        }
        if config.get_application_name().is_none() {
            config.application_name("mosaic-coordinator");
        }
        if options.leader_lease < Duration::from_secs(2) {
            return Err(StoreError::InvalidConfig(format!(
                "the leader's lease must be at least 2 s (the leader checks it every second); {} ms given",
                options.leader_lease.as_millis()
            )));
        }
        if let Some(schema) = &options.schema {
            check_schema_name(schema)?;
            add_option(&mut config, &format!("-c search_path={schema}"));
        }
        // A transaction left open by a coordinator that stopped (paused, hung) must not hold
        // its row locks past the lease: the next leader's epoch waits for them.
        add_option(
            &mut config,
            &format!(
                "-c idle_in_transaction_session_timeout={}",
                options.leader_lease.as_millis()
            ),
        );
        let manager = Manager::from_config(
            config.clone(),
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(options.pool_size)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(options.connect_timeout))
            .create_timeout(Some(options.connect_timeout))
            .build()
            .map_err(|e| StoreError::InvalidConfig(format!("PostgreSQL pool: {e}")))?;
        let mut conn = pool.get().await.map_err(|e| Failure::Pool(e).in_write())?;
        refuse_lost_commits(&conn).await?;
        migrate::migrate(&mut conn, options.schema.as_deref()).await?;
        drop(conn);
        Ok(Self {
            pool,
            counters: Counters::default(),
            config,
            leader_key: leader_key(options.schema.as_deref().unwrap_or("public")),
            leader_name: format!(
                "mosaic leader {}",
                options.schema.as_deref().unwrap_or("public")
            ),
            leader: tokio::sync::Mutex::new(None),
            fence: Mutex::new(None),
            leader_lease: options.leader_lease,
        })
    }

    /// The fence every write checks, once this store has led.
    fn fence(&self) -> Option<Fence> {
        *self
            .fence
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The epoch this store leads (or led) in, if it ever took the leadership.
    pub fn leader_epoch(&self) -> Option<i64> {
        self.fence().map(|fence| fence.epoch)
    }

    /// Stores `snapshot` unless the stored one has a newer `updated_at`, outside any delivery:
    /// for tests and benchmarks that seed a store, as `SqliteStore::upsert_issue_snapshot`
    /// (the coordinator writes snapshots with their delivery, [`Store::complete_delivery`]).
    pub async fn upsert_issue_snapshot(
        &self,
        snapshot: IssueSnapshot,
    ) -> Result<SnapshotOutcome, StoreError> {
        write_in_transaction!(self, |tx| ops::upsert_issue_snapshot(&tx, &snapshot))
    }

    /// Counts a write and notes how it went; a database failure (not a caller's conflict or
    /// bad input) is what [`Store::write_outcomes`] reports.
    fn noted<T>(&self, result: Result<T, Failure>) -> Result<T, StoreError> {
        self.counters.writes.fetch_add(1, Ordering::Relaxed);
        let result = result.map_err(Failure::in_write);
        let failure = match &result {
            Ok(_) => {
                self.counters.commits.fetch_add(1, Ordering::Relaxed);
                None
            }
            Err(error) if error.is_storage_failure() => Some(error.to_string()),
            Err(_) => None,
        };
        if let Some(error) = &failure {
            tracing::error!(%error, "store write failed");
        }
        let mut outcomes = self
            .counters
            .outcomes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let at = Utc::now();
        match failure {
            None => outcomes.last_success = Some(at),
            Some(error) => outcomes.last_failure = Some(WriteFailure { at, error }),
        }
        drop(outcomes);
        result
    }
}

#[async_trait]
impl Store for PostgresStore {
    async fn record_delivery(
        &self,
        mut delivery: NewDelivery,
    ) -> Result<RecordOutcome, StoreError> {
        // The hottest write: one INSERT in the common case, committed on its own (no BEGIN and
        // COMMIT round trips); see the op.
        let stored = mosaic_store::body::encode(std::mem::take(&mut delivery.body));
        let result = async {
            let conn = self.pool.get().await?;
            ops::record_delivery(&conn, &delivery, &stored).await
        }
        .await;
        self.noted(result)
    }

    async fn pending_deliveries(
        &self,
        now: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<Delivery>, StoreError> {
        read!(self, |client| ops::pending_deliveries(client, now, limit))
    }

    async fn mark_processed(&self, id: DeliveryRowId) -> Result<(), StoreError> {
        write_in_transaction!(self, |tx| ops::mark_processed(&tx, id))
    }

    async fn mark_failed_attempt(
        &self,
        id: DeliveryRowId,
        error: &str,
        next_attempt_at: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        write_in_transaction!(self, |tx| ops::mark_failed_attempt(
            &tx,
            id,
            error,
            next_attempt_at
        ))
    }

    async fn mark_dead(&self, id: DeliveryRowId, error: &str) -> Result<(), StoreError> {
        write_in_transaction!(self, |tx| ops::mark_dead(&tx, id, error))
    }

    async fn prune_session_requests(&self, before: DateTime<Utc>) -> Result<u64, StoreError> {
        write_in_transaction!(self, |tx| ops::prune_session_requests(&tx, before))
    }

    async fn prune_delivery_bodies(&self, before: DateTime<Utc>) -> Result<Volume, StoreError> {
        write_in_transaction!(self, |tx| ops::prune_delivery_bodies(&tx, before))
    }

    async fn retained_delivery_bodies(&self) -> Result<Volume, StoreError> {
        read!(self, |client| ops::retained_delivery_bodies(client))
    }

    async fn recent_deliveries(
        &self,
        before: Option<DeliveryRowId>,
        limit: u32,
    ) -> Result<Vec<DeliverySummary>, StoreError> {
        read!(self, |client| ops::recent_deliveries(client, before, limit))
    }

    async fn delivery_counts(&self) -> Result<DeliveryCounts, StoreError> {
        read!(self, |client| ops::delivery_counts(client))
    }

    async fn has_pending_delivery(&self, issue: &IssueRef) -> Result<bool, StoreError> {
        read!(self, |client| ops::has_pending_delivery(client, issue))
    }

    async fn complete_delivery(
        &self,
        id: DeliveryRowId,
        effects: DeliveryEffects,
    ) -> Result<CompletionOutcome, StoreError> {
        write_in_transaction!(self, |tx| ops::complete_delivery(&tx, id, &effects))
    }

    async fn get_issue_snapshot(
        &self,
        issue: &IssueRef,
    ) -> Result<Option<IssueSnapshot>, StoreError> {
        read!(self, |client| ops::get_issue_snapshot(client, issue))
    }

    async fn issue_snapshot_summaries(
        &self,
        issues: Vec<IssueRef>,
    ) -> Result<Vec<Option<SnapshotSummary>>, StoreError> {
        read!(self, |client| ops::issue_snapshot_summaries(
            client, &issues
        ))
    }

    async fn commit_transitions(&self, batches: Vec<TransitionBatch>) -> Result<(), StoreError> {
        write_in_transaction!(self, |tx| ops::commit_transitions(&tx, &batches))
    }

    async fn get_issue(&self, issue: &IssueRef) -> Result<Option<IssueRecord>, StoreError> {
        read!(self, |client| ops::get_issue(client, issue))
    }

    async fn list_issues(&self, states: &[IssueState]) -> Result<Vec<IssueRecord>, StoreError> {
        read!(self, |client| ops::list_issues(client, states))
    }

    async fn issue_state_counts(&self) -> Result<Vec<(IssueState, u64)>, StoreError> {
        read!(self, |client| ops::issue_state_counts(client))
    }

    async fn issue_history(&self, issue: &IssueRef) -> Result<Vec<TransitionRecord>, StoreError> {
        read!(self, |client| ops::issue_history(client, issue))
    }

    async fn dependency_edges(&self) -> Result<Vec<DependencyEdge>, StoreError> {
        read!(self, |client| ops::dependency_edges(client))
    }

    async fn next_outbox_items(
        &self,
        now: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<OutboxItem>, StoreError> {
        read!(self, |client| ops::next_outbox_items(client, now, limit))
    }

    async fn mark_outbox_done(&self, id: OutboxId) -> Result<(), StoreError> {
        write_in_transaction!(self, |tx| ops::mark_outbox_done(&tx, id))
    }

    async fn mark_outbox_failed(
        &self,
        id: OutboxId,
        error: &str,
        retry_at: Option<DateTime<Utc>>,
    ) -> Result<(), StoreError> {
        write_in_transaction!(self, |tx| ops::mark_outbox_failed(&tx, id, error, retry_at))
    }

    async fn outbox_backlog(&self) -> Result<OutboxBacklog, StoreError> {
        read!(self, |client| ops::outbox_backlog(client))
    }

    async fn latest_outbox_id(&self) -> Result<Option<OutboxId>, StoreError> {
        read!(self, |client| ops::latest_outbox_id(client))
    }

    async fn outbox_for_issue(&self, issue: &IssueRef) -> Result<Vec<OutboxItem>, StoreError> {
        read!(self, |client| ops::outbox_for_issue(client, issue))
    }

    async fn open_sessions(&self) -> Result<Vec<SessionRecord>, StoreError> {
        read!(self, |client| ops::open_sessions(client))
    }

    async fn sessions_for_issue(&self, issue: &IssueRef) -> Result<Vec<SessionRecord>, StoreError> {
        read!(self, |client| ops::sessions_for_issue(client, issue))
    }

    async fn record_rotation(&self, rotation: RotationRecord) -> Result<(), StoreError> {
        write_in_transaction!(self, |tx| ops::record_rotation(&tx, &rotation))
    }

    async fn recent_rotations(
        &self,
        before: Option<RotationRowId>,
        limit: u32,
    ) -> Result<Vec<StoredRotation>, StoreError> {
        read!(self, |client| ops::recent_rotations(client, before, limit))
    }

    async fn record_compaction(&self, compaction: CompactionRecord) -> Result<(), StoreError> {
        write_in_transaction!(self, |tx| ops::record_compaction(&tx, &compaction))
    }

    async fn compactions_for_session(
        &self,
        session_id: &str,
    ) -> Result<Vec<CompactionRecord>, StoreError> {
        read!(self, |client| ops::compactions_for_session(
            client, session_id
        ))
    }

    async fn record_session_spend(
        &self,
        session_id: &str,
        spend: SessionSpend,
    ) -> Result<(), StoreError> {
        write_in_transaction!(self, |tx| ops::record_session_spend(
            &tx, session_id, &spend
        ))
    }

    async fn record_session_process(&self, session_id: &str, pid: u32) -> Result<bool, StoreError> {
        write_in_transaction!(self, |tx| ops::record_session_process(&tx, session_id, pid))
    }

    async fn try_lead(&self) -> Result<bool, StoreError> {
        let unavailable = |what: &str, e: &tokio_postgres::Error| {
            StoreError::Unavailable(format!("{what}: {}", failure::describe(e)))
        };
        let mut leader = self.leader.lock().await;
        if let Some((_, true)) = leader.as_ref() {
            return Ok(true);
        }
        if leader.as_ref().is_none_or(|(client, _)| client.is_closed()) {
            // A connection of its own: the session-level lock lives exactly as long as it
            // does. Its name says what it is, for an operator looking at pg_stat_activity.
            let mut config = self.config.clone();
            config.application_name(&self.leader_name);
            // The lease: a leader that stops asking (it checks every second) loses the
            // connection, and with it the lock, after this long.
            add_option(
                &mut config,
                &format!("-c idle_session_timeout={}", self.leader_lease.as_millis()),
            );
            let (client, connection) = config
                .connect(NoTls)
                .await
                .map_err(|e| unavailable("leadership connection", &e))?;
            tokio::spawn(async move {
                if let Err(err) = connection.await {
                    tracing::warn!(error = %failure::describe(&err), "the leadership connection ended");
                }
            });
            *leader = Some((client, false));
        }
        let Some((client, held)) = leader.as_mut() else {
            return Ok(false);
        };
        let row = client
            .query_one("SELECT pg_try_advisory_lock($1)", &[&self.leader_key])
            .await
            .map_err(|e| unavailable("leadership lock", &e))?;
        let locked: bool = row
            .try_get(0)
            .map_err(|e| unavailable("leadership lock", &e))?;
        if !locked {
            return Ok(false);
        }
        // A new epoch begins: the previous leader's writes are refused from now on. This waits
        // for any of its transactions that passed their check to end (their row lock).
        let begin = client.query_one(
            "UPDATE leader_epoch SET epoch = epoch + 1, since = now(),
                    holder = current_setting('application_name') || ' (backend ' || pg_backend_pid() || ')'
              WHERE id = 1
          RETURNING epoch, pg_backend_pid(),
                    (SELECT backend_start FROM pg_stat_activity WHERE pid = pg_backend_pid())",
            &[],
        );
        // It waits for the previous leader's writes that passed their check; the server ends a
        // paused leader's transactions after the lease, so wait no longer than about that.
        let begun: Result<(i64, i32, DateTime<Utc>), StoreError> =
            match tokio::time::timeout(self.leader_lease * 2, begin).await {
                Ok(Ok(row)) => (|| Ok((row.try_get(0)?, row.try_get(1)?, row.try_get(2)?)))()
                    .map_err(|e: tokio_postgres::Error| unavailable("leadership epoch", &e)),
                Ok(Err(err)) => Err(unavailable("leadership epoch", &err)),
                Err(_) => Err(StoreError::Unavailable(
                    "leadership epoch: the previous leader's writes did not end in time".to_owned(),
                )),
            };
        let (epoch, pid, backend_start) = match begun {
            Ok(begun) => begun,
            Err(err) => {
                // Without a new epoch it must not lead: drop the connection and the lock.
                *leader = None;
                return Err(err);
            }
        };
        let fence = Fence {
            epoch,
            pid,
            backend_start,
        };
        *self
            .fence
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(fence);
        *held = true;
        tracing::info!(epoch, "leading: a new epoch begins");
        Ok(true)
    }

    async fn still_leading(&self) -> Result<bool, StoreError> {
        let mut leader = self.leader.lock().await;
        let Some((client, true)) = leader.as_ref() else {
            return Ok(false);
        };
        let alive = tokio::time::timeout(Duration::from_secs(5), client.simple_query("SELECT 1"))
            .await
            .is_ok_and(|answer| answer.is_ok());
        if !alive {
            // The lock went with the connection (or may have): never claim it again on it.
            *leader = None;
        }
        Ok(alive)
    }

    async fn put_workspace(&self, workspace: WorkspaceRecord) -> Result<(), StoreError> {
        write_in_transaction!(self, |tx| ops::put_workspace(&tx, &workspace))
    }

    async fn record_pull_request(
        &self,
        issue: &IssueRef,
        branch: &str,
        pull_request: PullRequestLink,
    ) -> Result<(), StoreError> {
        write_in_transaction!(self, |tx| ops::record_pull_request(
            &tx,
            issue,
            branch,
            &pull_request
        ))
    }

    async fn get_workspace(&self, issue: &IssueRef) -> Result<Option<IssueWorkspace>, StoreError> {
        read!(self, |client| ops::get_workspace(client, issue))
    }

    async fn record_gate_runs(&self, runs: Vec<GateRunRecord>) -> Result<(), StoreError> {
        write_in_transaction!(self, |tx| ops::record_gate_runs(&tx, &runs))
    }

    async fn gate_runs_for_issue(
        &self,
        issue: &IssueRef,
    ) -> Result<Vec<GateRunRecord>, StoreError> {
        read!(self, |client| ops::gate_runs_for_issue(client, issue))
    }

    async fn cache_get(&self, key: &str) -> Result<Option<String>, StoreError> {
        read!(self, |client| ops::cache_get(client, key))
    }

    async fn cache_put(&self, key: &str, value_json: &str) -> Result<(), StoreError> {
        write_in_transaction!(self, |tx| ops::cache_put(&tx, key, value_json))
    }

    async fn record_llm_usage(&self, usage: LlmUsageRecord) -> Result<(), StoreError> {
        write_in_transaction!(self, |tx| ops::record_llm_usage(&tx, &usage))
    }

    async fn llm_usage_totals(&self) -> Result<Vec<LlmUsageTotal>, StoreError> {
        read!(self, |client| ops::llm_usage_totals(client))
    }

    async fn beat_peer(&self, peer: &Peer) -> Result<(), StoreError> {
        write_in_transaction!(self, |tx| ops::beat_peer(&tx, peer))
    }

    async fn peers_alive(&self, within: std::time::Duration) -> Result<Vec<PeerBeat>, StoreError> {
        read!(self, |client| ops::peers_alive(client, within))
    }

    async fn agent_spend_totals(&self) -> Result<Vec<AgentSpendTotal>, StoreError> {
        read!(self, |client| ops::agent_spend_totals(client))
    }

    async fn request_session(&self, request: &SessionRequest) -> Result<(), StoreError> {
        write_in_transaction!(self, |tx| ops::request_session(&tx, request))
    }

    async fn claim_session(
        &self,
        claimant: &Peer,
        agents: &[String],
        busy_within: std::time::Duration,
    ) -> Result<Option<SessionRequest>, StoreError> {
        write_in_transaction!(self, |tx| ops::claim_session(
            &tx,
            claimant,
            agents,
            busy_within
        ))
    }

    async fn report_session(
        &self,
        report: &SessionReport,
        after_seq: i64,
    ) -> Result<SessionOrders, StoreError> {
        write_in_transaction!(self, |tx| ops::report_session(&tx, report, after_seq))
    }

    async fn command_session(
        &self,
        session_id: &str,
        command_json: &str,
    ) -> Result<i64, StoreError> {
        write_in_transaction!(self, |tx| ops::command_session(
            &tx,
            session_id,
            command_json
        ))
    }

    async fn cancel_session_requests(
        &self,
        session_ids: Option<&[String]>,
    ) -> Result<u64, StoreError> {
        write_in_transaction!(self, |tx| ops::cancel_session_requests(&tx, session_ids))
    }

    async fn session_requests(
        &self,
        session_ids: &[String],
    ) -> Result<Vec<SessionRequestView>, StoreError> {
        read!(self, |client| ops::session_requests(client, session_ids))
    }

    async fn sessions_left_by(
        &self,
        name: &str,
        current_id: &str,
    ) -> Result<Vec<SessionRequest>, StoreError> {
        read!(self, |client| ops::sessions_left_by(
            client, name, current_id
        ))
    }

    async fn health_check(&self) -> Result<(), StoreError> {
        let probe = mosaic_store::body::encode(b"{}".to_vec());
        write_in_transaction!(self, |tx| ops::heartbeat(&mut tx, &probe))
    }

    fn write_outcomes(&self) -> WriteOutcomes {
        self.counters
            .outcomes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    fn stats(&self) -> StoreStats {
        StoreStats {
            commits: self.counters.commits.load(Ordering::Relaxed),
            writes: self.counters.writes.load(Ordering::Relaxed),
        }
    }
}

/// The advisory lock key for a schema: the first 8 bytes of a stable hash of its name.
fn leader_key(schema: &str) -> i64 {
    // FNV-1a: stable across builds and platforms, unlike the standard hasher.
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in b"mosaic-coordinator leader "
        .iter()
        .chain(schema.as_bytes())
    {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    i64::from_ne_bytes(hash.to_ne_bytes())
}

#[cfg(test)]
mod tests {
    #[test]
    fn each_schema_has_its_own_stable_leadership_key() {
        assert_eq!(super::leader_key("public"), super::leader_key("public"));
        assert_ne!(super::leader_key("public"), super::leader_key("team_b"));
    }

    use super::*;

    #[test]
    fn recognises_postgres_urls() {
        assert!(is_postgres_url("postgres://u:p@h/db"));
        assert!(is_postgres_url("postgresql://h/db"));
        assert!(is_postgres_url("PostgreSQL://h/db"));
        assert!(!is_postgres_url("sqlite://data/mosaic.db"));
        assert!(!is_postgres_url("data/mosaic.db"));
        assert!(!is_postgres_url("postgres:/h"));
        // Byte 11 falls inside `é`: no panic on a non-ASCII URL.
        assert!(!is_postgres_url("postgres:/é/x"));
    }

    #[test]
    fn schema_names_are_plain_identifiers() {
        for good in ["public", "mosaic_test_01", "_x"] {
            assert!(check_schema_name(good).is_ok(), "{good}");
        }
        for bad in ["", "1abc", "a-b", "a b", "x\"; DROP", &"a".repeat(64)] {
            assert!(
                matches!(check_schema_name(bad), Err(StoreError::InvalidConfig(_))),
                "{bad}"
            );
        }
    }

    #[tokio::test]
    async fn refuses_other_urls_and_an_empty_pool_before_connecting() {
        let other = PostgresStore::connect("sqlite://x.db", PostgresOptions::default()).await;
        assert!(matches!(other, Err(StoreError::InvalidConfig(m)) if m.contains("postgres://")));
        let empty = PostgresStore::connect(
            "postgres://u:secret@127.0.0.1:1/db",
            PostgresOptions {
                pool_size: 0,
                ..PostgresOptions::default()
            },
        )
        .await;
        assert!(matches!(empty, Err(StoreError::InvalidConfig(m)) if m.contains("pool size")));
    }

    #[tokio::test]
    async fn an_unreachable_server_is_a_clear_error_without_the_password() {
        // Port 1 on loopback: nothing listens, the connection is refused at once.
        let err = PostgresStore::connect(
            "postgres://u:hunter2@127.0.0.1:1/db",
            PostgresOptions {
                connect_timeout: Duration::from_secs(2),
                ..PostgresOptions::default()
            },
        )
        .await
        .unwrap_err();
        let message = err.to_string();
        assert!(message.contains("no connection to PostgreSQL"), "{message}");
        assert!(!message.contains("hunter2"), "{message}");
        assert!(err.is_storage_failure());
    }
}
