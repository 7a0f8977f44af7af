//! The embedded SQLite backend of the coordinator's [`Store`] trait.
//!
//! One writer thread owns the only write connection. Callers send write requests over a
//! channel and await a reply; the writer takes every request that is queued (up to
//! `max_batch`), runs each inside its own SAVEPOINT within ONE transaction, commits once (one
//! sync under `synchronous=FULL`) and only then answers. A failing request rolls back to its
//! savepoint and does not disturb the others in its group; a request that writes with a single
//! statement (recording a delivery) skips the savepoint, since SQLite undoes a failed
//! statement by itself. Reads use separate connections on blocking threads; WAL lets them run
//! while the writer commits. Delivery bodies are stored LZ4-compressed ([`mosaic_store::body`]).
//!
//! When the previous group held several requests, the writer waits a short, bounded window
//! (`group_window_us`) for the callers it just answered to come back before it begins, so
//! groups fill up instead of alternating between halves. WAL checkpoints run on their own
//! thread ([`checkpoint`]), never inside a commit.

mod checkpoint;
mod failure;
mod migrate;
mod ops;
mod options;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use mosaic_domain::{IssueRef, IssueState};
use mosaic_store::*;
use rusqlite::{Connection, OpenFlags};
use tokio::sync::{Semaphore, oneshot};

use crate::failure::Failure;
use crate::options::SqliteOptions;

pub use migrate::supported_version as schema_version;

/// A write request as the writer thread sees it.
trait WriteJob: Send {
    /// Runs the request inside the open transaction, within its own savepoint.
    fn run(&mut self, conn: &Connection);
    /// The error, when the database failed this request (see
    /// [`StoreError::is_storage_failure`]); known once it ran and the group's fate is known.
    fn storage_failure(&self, commit: &Result<(), String>) -> Option<String>;
    /// Answers the caller once the group's fate is known.
    fn finish(self: Box<Self>, commit: &Result<(), String>);
}

struct Job<T, F> {
    op: Option<F>,
    /// Whether `op` runs inside its own savepoint; see [`Isolation`].
    isolation: Isolation,
    result: Option<Result<T, StoreError>>,
    reply: oneshot::Sender<Result<T, StoreError>>,
}

/// How a request is kept from disturbing the others in its group when it fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Isolation {
    /// In its own SAVEPOINT, rolled back on error: for any operation.
    Savepoint,
    /// None needed: the operation changes the database with at most one statement, and
    /// SQLite undoes a failed statement by itself. Saves the savepoint's statements and its
    /// copy of every page the request touches (a large part of a small write's cost).
    SingleStatement,
}

impl<T, F> WriteJob for Job<T, F>
where
    T: Send,
    F: FnOnce(&Connection) -> Result<T, Failure> + Send,
{
    fn run(&mut self, conn: &Connection) {
        if let Some(op) = self.op.take() {
            let result = match self.isolation {
                Isolation::Savepoint => in_savepoint(conn, op),
                Isolation::SingleStatement => op(conn),
            };
            self.result = Some(result.map_err(StoreError::from));
        }
    }

    fn storage_failure(&self, commit: &Result<(), String>) -> Option<String> {
        match (commit, &self.result) {
            (Err(message), _) => Some(message.clone()),
            (Ok(()), Some(Err(error))) if error.is_storage_failure() => Some(error.to_string()),
            _ => None,
        }
    }

    fn finish(self: Box<Self>, commit: &Result<(), String>) {
        let outcome = match (commit, self.result) {
            // A request that failed on its own reports its own error either way.
            (_, Some(Err(error))) => Err(error),
            (Ok(()), Some(Ok(value))) => Ok(value),
            (Err(message), _) => Err(StoreError::CommitFailed(message.clone())),
            (Ok(()), None) => Err(StoreError::WriterStopped),
        };
        // The caller may have stopped waiting (its request was cancelled); the write stands.
        let _ = self.reply.send(outcome);
    }
}

fn in_savepoint<T>(
    conn: &Connection,
    op: impl FnOnce(&Connection) -> Result<T, Failure>,
) -> Result<T, Failure> {
    run_cached(conn, "SAVEPOINT request")?;
    match op(conn) {
        Ok(value) => {
            run_cached(conn, "RELEASE request")?;
            Ok(value)
        }
        Err(error) => {
            run_cached(conn, "ROLLBACK TO request")?;
            run_cached(conn, "RELEASE request")?;
            Err(error)
        }
    }
}

/// Runs one statement without parameters from the connection's statement cache: the writer
/// runs the same transaction-control statements for every request.
fn run_cached(conn: &Connection, sql: &str) -> rusqlite::Result<()> {
    conn.prepare_cached(sql)?.execute([])?;
    Ok(())
}

#[derive(Debug, Default)]
struct Counters {
    commits: AtomicU64,
    writes: AtomicU64,
    outcomes: Mutex<WriteOutcomes>,
}

impl Counters {
    /// Notes how a group went: any request the database failed makes it a failure.
    fn record_outcome(&self, failure: Option<String>) {
        let mut outcomes = self
            .outcomes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let at = Utc::now();
        match failure {
            None => outcomes.last_success = Some(at),
            Some(error) => outcomes.last_failure = Some(WriteFailure { at, error }),
        }
    }
}

/// How the writer forms groups.
#[derive(Debug, Clone, Copy)]
struct Grouping {
    max_batch: usize,
    window: Duration,
}

fn writer_loop(
    conn: Connection,
    requests: mpsc::Receiver<Box<dyn WriteJob>>,
    grouping: Grouping,
    counters: Arc<Counters>,
    checkpoints: Option<Arc<checkpoint::CheckpointState>>,
) {
    let mut previous = 0;
    while let Ok(first) = requests.recv() {
        let mut batch = collect_group(&requests, first, grouping, previous);
        previous = batch.len();
        let commit = run_group(&conn, &mut batch);
        if commit.is_ok() {
            counters.commits.fetch_add(1, Ordering::Relaxed);
        } else if let Err(message) = &commit {
            tracing::error!(error = %message, requests = batch.len(), "store group commit failed");
        }
        counters
            .writes
            .fetch_add(batch.len() as u64, Ordering::Relaxed);
        // Noted before anyone is answered, so a caller that saw its write fail sees it here too.
        let failure = batch.iter().find_map(|job| job.storage_failure(&commit));
        counters.record_outcome(failure);
        for job in batch {
            job.finish(&commit);
        }
        // After answering, so only the next group waits for it.
        if let Some(state) = &checkpoints {
            checkpoint::finish_checkpoint_if_asked(&conn, state);
        }
    }
    tracing::debug!("store writer stopped");
}

/// Takes every queued request (up to `max_batch`). When the previous group had several
/// requests, more are likely: the callers it just answered are about to send their next one.
/// Then it waits up to `window` for them, but no longer than it takes to hold as many as the
/// previous group, so a steady load pays little of the window and single writes none.
fn collect_group(
    requests: &mpsc::Receiver<Box<dyn WriteJob>>,
    first: Box<dyn WriteJob>,
    grouping: Grouping,
    previous: usize,
) -> Vec<Box<dyn WriteJob>> {
    let max_batch = grouping.max_batch;
    let mut batch = Vec::with_capacity(previous.clamp(1, max_batch));
    batch.push(first);
    drain(requests, &mut batch, max_batch);
    let target = previous.min(max_batch);
    if previous > 1 && batch.len() < target && !grouping.window.is_zero() {
        let deadline = Instant::now() + grouping.window;
        while batch.len() < target {
            let left = deadline.saturating_duration_since(Instant::now());
            match requests.recv_timeout(left) {
                Ok(job) => batch.push(job),
                // Timeout, or the store is closing: commit what we hold.
                Err(_) => break,
            }
        }
        drain(requests, &mut batch, max_batch);
    }
    batch
}

fn drain(
    requests: &mpsc::Receiver<Box<dyn WriteJob>>,
    batch: &mut Vec<Box<dyn WriteJob>>,
    max_batch: usize,
) {
    while batch.len() < max_batch {
        match requests.try_recv() {
            Ok(job) => batch.push(job),
            Err(_) => break,
        }
    }
}

fn run_group(conn: &Connection, batch: &mut [Box<dyn WriteJob>]) -> Result<(), String> {
    run_cached(conn, "BEGIN IMMEDIATE").map_err(|e| e.to_string())?;
    for job in batch.iter_mut() {
        job.run(conn);
    }
    run_cached(conn, "COMMIT").map_err(|error| {
        // Leave the connection usable for the next group.
        let _ = conn.execute_batch("ROLLBACK");
        error.to_string()
    })
}

/// Read connections, reused; at most `read_connections` in use at once.
#[derive(Debug)]
struct Readers {
    path: PathBuf,
    busy_timeout: Duration,
    idle: Mutex<Vec<Connection>>,
    permits: Semaphore,
}

impl Readers {
    fn take(&self) -> Result<Connection, Failure> {
        let idle = self
            .idle
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .pop();
        match idle {
            Some(conn) => Ok(conn),
            None => open_reader(&self.path, self.busy_timeout),
        }
    }

    fn give_back(&self, conn: Connection) {
        self.idle
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(conn);
    }
}

/// Room for every statement the operations cache (rusqlite keeps 16 by default, fewer than
/// the operations use, so they would be prepared again and again).
const STATEMENT_CACHE: usize = 128;

fn open_reader(path: &Path, busy_timeout: Duration) -> Result<Connection, Failure> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(busy_timeout)?;
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
    Ok(conn)
}

pub(crate) fn synchronous_pragma(synchronous: Synchronous) -> &'static str {
    match synchronous {
        Synchronous::Full => "FULL",
        Synchronous::Normal => "NORMAL",
    }
}

fn open_writer(options: &SqliteOptions) -> Result<Connection, Failure> {
    let path = &options.path;
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(options.busy_timeout)?;
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
    let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |row| row.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(Failure::Store(StoreError::InvalidConfig(format!(
            "{} cannot use WAL mode (got `{mode}`); use a file on a local disk",
            path.display()
        ))));
    }
    conn.pragma_update(None, "synchronous", synchronous_pragma(options.synchronous))?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    // Savepoint journals (one per request) stay in memory instead of a temporary file.
    conn.pragma_update(None, "temp_store", "MEMORY")?;
    // Checked against i64::MAX when the options were read.
    let limit = i64::try_from(options.wal_size_limit_bytes).unwrap_or(i64::MAX);
    conn.pragma_update(None, "journal_size_limit", limit)?;
    if !options.checkpoint_interval.is_zero() {
        // The checkpoint thread copies the WAL (see `checkpoint`); SQLite's own checkpoint on
        // this connection is only a safety net for when that thread falls far behind.
        conn.pragma_update(
            None,
            "wal_autocheckpoint",
            options.wal_restart_pages.saturating_mul(2),
        )?;
    }
    Ok(conn)
}

/// WAL checkpoint counts of a [`SqliteStore`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CheckpointStats {
    /// Run by the checkpoint thread (PASSIVE while writing, TRUNCATE when idle).
    pub background: u64,
    /// Run by the writer between two groups to let the log restart.
    pub by_writer: u64,
}

/// The SQLite store. Cheap to share as `Arc<dyn Store>`; dropping it finishes queued writes
/// and closes the database.
#[derive(Debug)]
pub struct SqliteStore {
    path: PathBuf,
    requests: Option<mpsc::Sender<Box<dyn WriteJob>>>,
    writer: Option<JoinHandle<()>>,
    readers: Arc<Readers>,
    counters: Arc<Counters>,
    /// Stopped before the writer when the store is dropped.
    checkpointer: Option<checkpoint::Checkpointer>,
    checkpoints: Arc<checkpoint::CheckpointState>,
    /// `<database>.leader`, exclusively locked while this process leads the coordinators that
    /// share the file (the operating system drops the lock with the process).
    leader: Mutex<Option<std::fs::File>>,
}

impl SqliteStore {
    /// Opens (creating if needed) the database `config.url` names, applies migrations and
    /// starts the writer; reads the SQLite settings of `config` and refuses bad ones.
    /// Blocking: call it at start-up, before serving.
    pub fn open(config: &StoreConfig) -> Result<Self, StoreError> {
        let options = SqliteOptions::from_config(config)?;
        let path = options.path.clone();
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|source| StoreError::CreateDir {
                path: parent.display().to_string(),
                source,
            })?;
        }
        let mut writer_conn = open_writer(&options)?;
        migrate::migrate(&mut writer_conn)?;

        let busy_timeout = options.busy_timeout;
        // One reader now, so a path readers cannot open fails here rather than on first read.
        let first_reader = open_reader(&path, busy_timeout)?;
        let readers = Arc::new(Readers {
            path: path.clone(),
            busy_timeout,
            idle: Mutex::new(vec![first_reader]),
            permits: Semaphore::new(options.read_connections),
        });

        let counters = Arc::new(Counters::default());
        let checkpoints = Arc::new(checkpoint::CheckpointState::default());
        let checkpointer = if options.checkpoint_interval.is_zero() {
            None
        } else {
            Some(checkpoint::Checkpointer::start(
                &options,
                Arc::clone(&counters),
                Arc::clone(&checkpoints),
            )?)
        };
        let (requests, receiver) = mpsc::channel();
        let grouping = Grouping {
            max_batch: options.max_batch,
            window: options.group_window,
        };
        let writer_counters = Arc::clone(&counters);
        let writer_checkpoints = checkpointer.as_ref().map(|_| Arc::clone(&checkpoints));
        let writer = std::thread::Builder::new()
            .name("mosaic-store-writer".to_owned())
            .spawn(move || {
                writer_loop(
                    writer_conn,
                    receiver,
                    grouping,
                    writer_counters,
                    writer_checkpoints,
                );
            })
            .map_err(|e| StoreError::InvalidConfig(format!("cannot start the writer: {e}")))?;
        tracing::info!(
            path = %path.display(),
            synchronous = ?options.synchronous,
            group_window_us = config.group_window_us,
            checkpoint_interval_ms = config.checkpoint_interval_ms,
            "store opened"
        );
        Ok(Self {
            path,
            requests: Some(requests),
            writer: Some(writer),
            readers,
            counters,
            checkpointer,
            checkpoints,
            leader: Mutex::new(None),
        })
    }

    /// WAL checkpoints run so far by the checkpoint thread, and by the writer when the thread
    /// asked it to finish one (both 0 when `checkpoint_interval_ms` is 0).
    pub fn checkpoints(&self) -> CheckpointStats {
        CheckpointStats {
            background: self.checkpoints.checkpoints.load(Ordering::Relaxed),
            by_writer: self.checkpoints.writer_checkpoints.load(Ordering::Relaxed),
        }
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Stores `snapshot` unless the stored one has a newer `updated_at`, outside any delivery:
    /// for tests and benchmarks that seed a store (the coordinator writes snapshots with their
    /// delivery, [`Store::complete_delivery`]).
    pub async fn upsert_issue_snapshot(
        &self,
        snapshot: IssueSnapshot,
    ) -> Result<SnapshotOutcome, StoreError> {
        self.write(move |conn| ops::upsert_issue_snapshot(conn, &snapshot))
            .await
    }

    async fn write<T, F>(&self, op: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, Failure> + Send + 'static,
    {
        self.write_isolated(Isolation::Savepoint, op).await
    }

    async fn write_isolated<T, F>(&self, isolation: Isolation, op: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, Failure> + Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        let job: Box<dyn WriteJob> = Box::new(Job {
            op: Some(op),
            isolation,
            result: None,
            reply,
        });
        self.requests
            .as_ref()
            .ok_or(StoreError::WriterStopped)?
            .send(job)
            .map_err(|_| StoreError::WriterStopped)?;
        answer.await.map_err(|_| StoreError::WriterStopped)?
    }

    async fn read<T, F>(&self, op: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, Failure> + Send + 'static,
    {
        let _permit = self
            .readers
            .permits
            .acquire()
            .await
            .map_err(|e| StoreError::ReaderFailed(e.to_string()))?;
        let readers = Arc::clone(&self.readers);
        tokio::task::spawn_blocking(move || -> Result<T, StoreError> {
            let conn = readers.take()?;
            // One read transaction: multi-statement reads see one consistent snapshot.
            conn.execute_batch("BEGIN").map_err(failure::sqlite_error)?;
            let result = op(&conn);
            let ended = conn.execute_batch("COMMIT");
            if ended.is_ok() {
                readers.give_back(conn);
            }
            let value = result?;
            ended.map_err(failure::sqlite_error)?;
            Ok(value)
        })
        .await
        .map_err(|e| StoreError::ReaderFailed(e.to_string()))?
    }
}

impl Drop for SqliteStore {
    fn drop(&mut self) {
        // Waits for a checkpoint in progress; the writer's own close checkpoints what is left.
        self.checkpointer.take();
        // Closing the channel lets the writer finish what is queued and exit.
        self.requests.take();
        if let Some(writer) = self.writer.take()
            && writer.join().is_err()
        {
            tracing::error!("store writer thread panicked");
        }
    }
}

#[async_trait]
impl Store for SqliteStore {
    async fn record_delivery(
        &self,
        mut delivery: NewDelivery,
    ) -> Result<RecordOutcome, StoreError> {
        // Compressed here, on the caller's task: the writer is shared by every request. The
        // stored form replaces the body (the op reads only the other fields).
        let stored = body::encode(std::mem::take(&mut delivery.body));
        // The hottest write: it changes the database with one INSERT (see the op).
        self.write_isolated(Isolation::SingleStatement, move |conn| {
            ops::record_delivery(conn, &delivery, &stored)
        })
        .await
    }

    async fn pending_deliveries(
        &self,
        now: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<Delivery>, StoreError> {
        self.read(move |conn| ops::pending_deliveries(conn, now, limit))
            .await
    }

    async fn mark_processed(&self, id: DeliveryRowId) -> Result<(), StoreError> {
        self.write(move |conn| ops::mark_processed(conn, id)).await
    }

    async fn mark_failed_attempt(
        &self,
        id: DeliveryRowId,
        error: &str,
        next_attempt_at: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let error = error.to_owned();
        self.write(move |conn| ops::mark_failed_attempt(conn, id, &error, next_attempt_at))
            .await
    }

    async fn mark_dead(&self, id: DeliveryRowId, error: &str) -> Result<(), StoreError> {
        let error = error.to_owned();
        self.write(move |conn| ops::mark_dead(conn, id, &error))
            .await
    }

    async fn prune_session_requests(&self, before: DateTime<Utc>) -> Result<u64, StoreError> {
        self.write(move |conn| ops::prune_session_requests(conn, before))
            .await
    }

    async fn prune_delivery_bodies(&self, before: DateTime<Utc>) -> Result<Volume, StoreError> {
        self.write(move |conn| ops::prune_delivery_bodies(conn, before))
            .await
    }

    async fn retained_delivery_bodies(&self) -> Result<Volume, StoreError> {
        self.read(ops::retained_delivery_bodies).await
    }

    async fn recent_deliveries(
        &self,
        before: Option<DeliveryRowId>,
        limit: u32,
    ) -> Result<Vec<DeliverySummary>, StoreError> {
        self.read(move |conn| ops::recent_deliveries(conn, before, limit))
            .await
    }

    async fn delivery_counts(&self) -> Result<DeliveryCounts, StoreError> {
        self.read(ops::delivery_counts).await
    }

    async fn has_pending_delivery(&self, issue: &IssueRef) -> Result<bool, StoreError> {
        let issue = issue.clone();
        self.read(move |conn| ops::has_pending_delivery(conn, &issue))
            .await
    }

    async fn complete_delivery(
        &self,
        id: DeliveryRowId,
        effects: DeliveryEffects,
    ) -> Result<CompletionOutcome, StoreError> {
        self.write(move |conn| ops::complete_delivery(conn, id, &effects))
            .await
    }

    async fn get_issue_snapshot(
        &self,
        issue: &IssueRef,
    ) -> Result<Option<IssueSnapshot>, StoreError> {
        let issue = issue.clone();
        self.read(move |conn| ops::get_issue_snapshot(conn, &issue))
            .await
    }

    async fn issue_snapshot_summaries(
        &self,
        issues: Vec<IssueRef>,
    ) -> Result<Vec<Option<SnapshotSummary>>, StoreError> {
        self.read(move |conn| ops::issue_snapshot_summaries(conn, &issues))
            .await
    }

    async fn commit_transitions(&self, batches: Vec<TransitionBatch>) -> Result<(), StoreError> {
        self.write(move |conn| ops::commit_transitions(conn, &batches))
            .await
    }

    async fn get_issue(&self, issue: &IssueRef) -> Result<Option<IssueRecord>, StoreError> {
        let issue = issue.clone();
        self.read(move |conn| ops::get_issue(conn, &issue)).await
    }

    async fn list_issues(&self, states: &[IssueState]) -> Result<Vec<IssueRecord>, StoreError> {
        let states = states.to_vec();
        self.read(move |conn| ops::list_issues(conn, &states)).await
    }

    async fn issue_state_counts(&self) -> Result<Vec<(IssueState, u64)>, StoreError> {
        self.read(ops::issue_state_counts).await
    }

    async fn issue_history(&self, issue: &IssueRef) -> Result<Vec<TransitionRecord>, StoreError> {
        let issue = issue.clone();
        self.read(move |conn| ops::issue_history(conn, &issue))
            .await
    }

    async fn dependency_edges(&self) -> Result<Vec<DependencyEdge>, StoreError> {
        self.read(ops::dependency_edges).await
    }

    async fn next_outbox_items(
        &self,
        now: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<OutboxItem>, StoreError> {
        self.read(move |conn| ops::next_outbox_items(conn, now, limit))
            .await
    }

    async fn mark_outbox_done(&self, id: OutboxId) -> Result<(), StoreError> {
        self.write(move |conn| ops::mark_outbox_done(conn, id))
            .await
    }

    async fn mark_outbox_failed(
        &self,
        id: OutboxId,
        error: &str,
        retry_at: Option<DateTime<Utc>>,
    ) -> Result<(), StoreError> {
        let error = error.to_owned();
        self.write(move |conn| ops::mark_outbox_failed(conn, id, &error, retry_at))
            .await
    }

    async fn outbox_backlog(&self) -> Result<OutboxBacklog, StoreError> {
        self.read(ops::outbox_backlog).await
    }

    async fn latest_outbox_id(&self) -> Result<Option<OutboxId>, StoreError> {
        self.read(ops::latest_outbox_id).await
    }

    async fn outbox_for_issue(&self, issue: &IssueRef) -> Result<Vec<OutboxItem>, StoreError> {
        let issue = issue.clone();
        self.read(move |conn| ops::outbox_for_issue(conn, &issue))
            .await
    }

    async fn open_sessions(&self) -> Result<Vec<SessionRecord>, StoreError> {
        self.read(ops::open_sessions).await
    }

    async fn sessions_for_issue(&self, issue: &IssueRef) -> Result<Vec<SessionRecord>, StoreError> {
        let issue = issue.clone();
        self.read(move |conn| ops::sessions_for_issue(conn, &issue))
            .await
    }

    async fn record_rotation(&self, rotation: RotationRecord) -> Result<(), StoreError> {
        self.write(move |conn| ops::record_rotation(conn, &rotation))
            .await
    }

    async fn recent_rotations(
        &self,
        before: Option<RotationRowId>,
        limit: u32,
    ) -> Result<Vec<StoredRotation>, StoreError> {
        self.read(move |conn| ops::recent_rotations(conn, before, limit))
            .await
    }

    async fn record_compaction(&self, compaction: CompactionRecord) -> Result<(), StoreError> {
        self.write(move |conn| ops::record_compaction(conn, &compaction))
            .await
    }

    async fn compactions_for_session(
        &self,
        session_id: &str,
    ) -> Result<Vec<CompactionRecord>, StoreError> {
        let session_id = session_id.to_owned();
        self.read(move |conn| ops::compactions_for_session(conn, &session_id))
            .await
    }

    async fn try_lead(&self) -> Result<bool, StoreError> {
        let mut leader = self
            .leader
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if leader.is_some() {
            return Ok(true);
        }
        let mut lock_path = self.path.clone().into_os_string();
        lock_path.push(".leader");
        let unavailable = |err: std::io::Error| {
            StoreError::Unavailable(format!(
                "leadership lock {}: {err}",
                std::path::Path::new(&lock_path).display()
            ))
        };
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(unavailable)?;
        match file.try_lock() {
            Ok(()) => {
                *leader = Some(file);
                Ok(true)
            }
            Err(std::fs::TryLockError::WouldBlock) => Ok(false),
            Err(std::fs::TryLockError::Error(err)) => Err(unavailable(err)),
        }
    }

    async fn still_leading(&self) -> Result<bool, StoreError> {
        // A lock on an open file stays until the file is closed.
        Ok(self
            .leader
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .is_some())
    }

    async fn record_session_spend(
        &self,
        session_id: &str,
        spend: SessionSpend,
    ) -> Result<(), StoreError> {
        let session_id = session_id.to_owned();
        self.write(move |conn| ops::record_session_spend(conn, &session_id, &spend))
            .await
    }

    async fn record_session_process(&self, session_id: &str, pid: u32) -> Result<bool, StoreError> {
        let session_id = session_id.to_owned();
        self.write(move |conn| ops::record_session_process(conn, &session_id, pid))
            .await
    }

    async fn put_workspace(&self, workspace: WorkspaceRecord) -> Result<(), StoreError> {
        self.write(move |conn| ops::put_workspace(conn, &workspace))
            .await
    }

    async fn record_pull_request(
        &self,
        issue: &IssueRef,
        branch: &str,
        pull_request: PullRequestLink,
    ) -> Result<(), StoreError> {
        let issue = issue.clone();
        let branch = branch.to_owned();
        self.write(move |conn| ops::record_pull_request(conn, &issue, &branch, &pull_request))
            .await
    }

    async fn get_workspace(&self, issue: &IssueRef) -> Result<Option<IssueWorkspace>, StoreError> {
        let issue = issue.clone();
        self.read(move |conn| ops::get_workspace(conn, &issue))
            .await
    }

    async fn record_gate_runs(&self, runs: Vec<GateRunRecord>) -> Result<(), StoreError> {
        self.write(move |conn| ops::record_gate_runs(conn, &runs))
            .await
    }

    async fn gate_runs_for_issue(
        &self,
        issue: &IssueRef,
    ) -> Result<Vec<GateRunRecord>, StoreError> {
        let issue = issue.clone();
        self.read(move |conn| ops::gate_runs_for_issue(conn, &issue))
            .await
    }

    async fn cache_get(&self, key: &str) -> Result<Option<String>, StoreError> {
        let key = key.to_owned();
        self.read(move |conn| ops::cache_get(conn, &key)).await
    }

    async fn cache_put(&self, key: &str, value_json: &str) -> Result<(), StoreError> {
        let key = key.to_owned();
        let value = value_json.to_owned();
        self.write(move |conn| ops::cache_put(conn, &key, &value))
            .await
    }

    async fn record_llm_usage(&self, usage: LlmUsageRecord) -> Result<(), StoreError> {
        self.write(move |conn| ops::record_llm_usage(conn, &usage))
            .await
    }

    async fn llm_usage_totals(&self) -> Result<Vec<LlmUsageTotal>, StoreError> {
        self.read(ops::llm_usage_totals).await
    }

    async fn beat_peer(&self, peer: &Peer) -> Result<(), StoreError> {
        // One host shares an SQLite file: its clock is the store's.
        let (peer, now) = (peer.clone(), Utc::now());
        self.write(move |conn| ops::beat_peer(conn, &peer, now))
            .await
    }

    async fn peers_alive(&self, within: std::time::Duration) -> Result<Vec<PeerBeat>, StoreError> {
        let since = Utc::now()
            - chrono::Duration::from_std(within)
                .map_err(|e| StoreError::InvalidInput(e.to_string()))?;
        self.read(move |conn| ops::peers_alive(conn, since)).await
    }

    async fn agent_spend_totals(&self) -> Result<Vec<AgentSpendTotal>, StoreError> {
        self.read(ops::agent_spend_totals).await
    }

    // One host shares an SQLite file: its clock is the store's, for every time below.

    async fn request_session(&self, request: &SessionRequest) -> Result<(), StoreError> {
        let (request, now) = (request.clone(), Utc::now());
        self.write(move |conn| ops::request_session(conn, &request, now))
            .await
    }

    async fn claim_session(
        &self,
        claimant: &Peer,
        agents: &[String],
        busy_within: std::time::Duration,
    ) -> Result<Option<SessionRequest>, StoreError> {
        let (claimant, agents, now) = (claimant.clone(), agents.to_vec(), Utc::now());
        let busy_since =
            now - chrono::Duration::from_std(busy_within).unwrap_or(chrono::Duration::MAX);
        self.write(move |conn| ops::claim_session(conn, &claimant, &agents, now, busy_since))
            .await
    }

    async fn report_session(
        &self,
        report: &SessionReport,
        after_seq: i64,
    ) -> Result<SessionOrders, StoreError> {
        let (report, now) = (report.clone(), Utc::now());
        self.write(move |conn| ops::report_session(conn, &report, after_seq, now))
            .await
    }

    async fn command_session(
        &self,
        session_id: &str,
        command_json: &str,
    ) -> Result<i64, StoreError> {
        let (session_id, command_json, now) =
            (session_id.to_owned(), command_json.to_owned(), Utc::now());
        self.write(move |conn| ops::command_session(conn, &session_id, &command_json, now))
            .await
    }

    async fn cancel_session_requests(
        &self,
        session_ids: Option<&[String]>,
    ) -> Result<u64, StoreError> {
        let (session_ids, now) = (session_ids.map(<[String]>::to_vec), Utc::now());
        self.write(move |conn| ops::cancel_session_requests(conn, session_ids.as_deref(), now))
            .await
    }

    async fn session_requests(
        &self,
        session_ids: &[String],
    ) -> Result<Vec<SessionRequestView>, StoreError> {
        let session_ids = session_ids.to_vec();
        // Read at the time of reading, not of asking (a read may wait for a connection).
        self.read(move |conn| ops::session_requests(conn, &session_ids, Utc::now()))
            .await
    }

    async fn sessions_left_by(
        &self,
        name: &str,
        current_id: &str,
    ) -> Result<Vec<SessionRequest>, StoreError> {
        let (name, current_id) = (name.to_owned(), current_id.to_owned());
        self.read(move |conn| ops::sessions_left_by(conn, &name, &current_id))
            .await
    }

    async fn health_check(&self) -> Result<(), StoreError> {
        let probe = body::encode(b"{}".to_vec());
        self.write(move |conn| ops::heartbeat(conn, &probe)).await
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

#[cfg(test)]
mod tests {
    use super::*;

    type Answer<T> = oneshot::Receiver<Result<T, StoreError>>;

    fn job<T: Send + 'static>(
        op: impl FnOnce(&Connection) -> Result<T, Failure> + Send + 'static,
    ) -> (Box<dyn WriteJob>, Answer<T>) {
        job_isolated(Isolation::Savepoint, op)
    }

    fn job_isolated<T: Send + 'static>(
        isolation: Isolation,
        op: impl FnOnce(&Connection) -> Result<T, Failure> + Send + 'static,
    ) -> (Box<dyn WriteJob>, Answer<T>) {
        let (reply, answer) = oneshot::channel();
        let job = Box::new(Job {
            op: Some(op),
            isolation,
            result: None,
            reply,
        });
        (job, answer)
    }

    /// A migrated database's write connection, as the writer thread has it.
    fn migrated_writer(dir: &Path) -> Connection {
        let mut conn = open_writer(&options(&StoreConfig::sqlite(dir.join("t.db")))).unwrap();
        migrate::migrate(&mut conn).unwrap();
        conn
    }

    /// Runs `group` as the writer does and answers every request.
    fn run_and_finish(conn: &Connection, mut group: Vec<Box<dyn WriteJob>>) {
        let commit = run_group(conn, &mut group);
        assert_eq!(commit, Ok(()));
        for job in group {
            job.finish(&commit);
        }
    }

    fn cache_keys(conn: &Connection) -> Vec<String> {
        conn.prepare("SELECT cache_key FROM parse_cache ORDER BY cache_key")
            .unwrap()
            .query_map([], |row| row.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    }

    fn options(config: &StoreConfig) -> SqliteOptions {
        SqliteOptions::from_config(config).unwrap()
    }

    fn insert(conn: &Connection, key: &str) -> Result<(), Failure> {
        conn.execute(
            "INSERT INTO parse_cache (cache_key, value, stored_at) VALUES (?1, '1', 0)",
            [key],
        )?;
        Ok(())
    }

    #[test]
    fn a_failing_request_rolls_back_alone_and_the_group_commits_once() {
        let dir = tempfile::tempdir().unwrap();
        let conn = migrated_writer(dir.path());

        let (first, first_answer) = job(|conn| insert(conn, "a"));
        // Writes, then fails: its own write must vanish, the others' must stay.
        let (failing, failing_answer) = job(|conn| {
            insert(conn, "b")?;
            Err::<(), _>(StoreError::InvalidInput("refused".to_owned()).into())
        });
        let (constraint, constraint_answer) = job(|conn| insert(conn, "a"));
        let (last, last_answer) = job(|conn| insert(conn, "c"));
        run_and_finish(&conn, vec![first, failing, constraint, last]);

        assert!(first_answer.blocking_recv().unwrap().is_ok());
        assert!(matches!(
            failing_answer.blocking_recv().unwrap(),
            Err(StoreError::InvalidInput(_))
        ));
        assert!(matches!(
            constraint_answer.blocking_recv().unwrap(),
            Err(StoreError::Database(_))
        ));
        assert!(last_answer.blocking_recv().unwrap().is_ok());
        assert_eq!(cache_keys(&conn), ["a", "c"]);
    }

    /// A request run without a savepoint (one statement) fails alone too: SQLite undoes the
    /// failed statement, and the group's other writes commit.
    #[test]
    fn a_failing_single_statement_request_leaves_its_group_intact() {
        let dir = tempfile::tempdir().unwrap();
        let conn = migrated_writer(dir.path());

        let (first, first_answer) = job(|conn| insert(conn, "a"));
        let single = Isolation::SingleStatement;
        let (conflicting, conflicting_answer) = job_isolated(single, |conn| insert(conn, "a"));
        let (last, last_answer) = job_isolated(single, |conn| insert(conn, "c"));
        run_and_finish(&conn, vec![first, conflicting, last]);

        assert!(first_answer.blocking_recv().unwrap().is_ok());
        assert!(matches!(
            conflicting_answer.blocking_recv().unwrap(),
            Err(StoreError::Database(_))
        ));
        assert!(last_answer.blocking_recv().unwrap().is_ok());
        assert_eq!(cache_keys(&conn), ["a", "c"]);
    }

    #[test]
    fn a_failed_commit_fails_every_request_of_the_group() {
        let conn = Connection::open_in_memory().unwrap();
        let (mut ok, answer) = job(|_| Ok(5));
        let (mut failed, failed_answer) = job(|_| Err::<i32, _>(StoreError::WriterStopped.into()));
        ok.run(&conn);
        failed.run(&conn);
        let commit = Err("disk I/O error".to_owned());
        ok.finish(&commit);
        failed.finish(&commit);
        assert!(matches!(
            answer.blocking_recv().unwrap(),
            Err(StoreError::CommitFailed(message)) if message == "disk I/O error"
        ));
        // A request that failed on its own keeps its own reason.
        assert!(matches!(
            failed_answer.blocking_recv().unwrap(),
            Err(StoreError::WriterStopped)
        ));
    }

    fn queued(
        requests: &mpsc::Sender<Box<dyn WriteJob>>,
    ) -> oneshot::Receiver<Result<(), StoreError>> {
        let (job, answer) = job(|_| Ok(()));
        requests.send(job).unwrap();
        answer
    }

    const LONG: Duration = Duration::from_secs(30);

    #[test]
    fn after_a_single_request_the_writer_does_not_wait() {
        let (requests, receiver) = mpsc::channel();
        let (first, _answer) = job(|_| Ok(()));
        let grouping = Grouping {
            max_batch: 10,
            window: LONG,
        };
        let started = Instant::now();
        assert_eq!(collect_group(&receiver, first, grouping, 1).len(), 1);
        assert_eq!(
            collect_group(&receiver, job(|_| Ok(())).0, grouping, 0).len(),
            1
        );
        assert!(started.elapsed() < LONG / 2);
        drop(requests);
    }

    #[test]
    fn the_window_waits_for_as_many_requests_as_the_previous_group_then_stops() {
        let (requests, receiver) = mpsc::channel();
        let _queued = queued(&requests);
        let late = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            let answers = [queued(&requests), queued(&requests)];
            (requests, answers)
        });
        let grouping = Grouping {
            max_batch: 10,
            window: LONG,
        };
        let started = Instant::now();
        let (first, _answer) = job(|_| Ok(()));
        // Previous group of 4: the first, the queued one and the two late ones make 4.
        let group = collect_group(&receiver, first, grouping, 4);
        assert_eq!(group.len(), 4);
        assert!(started.elapsed() >= Duration::from_millis(20));
        assert!(
            started.elapsed() < LONG / 2,
            "stopped at the previous group's size"
        );
        drop(late.join().unwrap());
    }

    #[test]
    fn the_window_is_bounded_and_max_batch_still_holds() {
        let (requests, receiver) = mpsc::channel();
        let grouping = Grouping {
            max_batch: 3,
            window: Duration::from_millis(30),
        };
        let started = Instant::now();
        let group = collect_group(&receiver, job(|_| Ok(())).0, grouping, 8);
        let waited = started.elapsed();
        assert_eq!(group.len(), 1, "nobody came within the window");
        assert!(waited >= Duration::from_millis(30) && waited < LONG / 2);

        let _answers: Vec<_> = (0..5).map(|_| queued(&requests)).collect();
        let group = collect_group(&receiver, job(|_| Ok(())).0, grouping, 8);
        assert_eq!(group.len(), 3);
        assert_eq!(
            collect_group(&receiver, job(|_| Ok(())).0, grouping, 0).len(),
            3
        );
    }

    fn wal_len(db: &Path) -> u64 {
        std::fs::metadata(checkpoint::wal_path(db)).map_or(0, |m| m.len())
    }

    #[test]
    fn the_writer_checkpoints_itself_only_as_a_safety_net() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.db");
        let background = StoreConfig::sqlite(&path);
        let conn = open_writer(&options(&background)).unwrap();
        let auto: i64 = conn
            .pragma_query_value(None, "wal_autocheckpoint", |row| row.get(0))
            .unwrap();
        assert_eq!(auto, 2 * 16_384, "only a safety net");
        let limit: i64 = conn
            .pragma_query_value(None, "journal_size_limit", |row| row.get(0))
            .unwrap();
        assert_eq!(limit, 128 * 1024 * 1024);
        drop(conn);

        let automatic = StoreConfig {
            checkpoint_interval_ms: 0,
            ..StoreConfig::sqlite(&path)
        };
        let conn = open_writer(&options(&automatic)).unwrap();
        let auto: i64 = conn
            .pragma_query_value(None, "wal_autocheckpoint", |row| row.get(0))
            .unwrap();
        assert_eq!(auto, 1000, "SQLite's own checkpoint is kept when asked for");
    }

    fn delivery(n: usize) -> NewDelivery {
        let mut hash = [0_u8; 32];
        hash[..8].copy_from_slice(&(n as u64).to_le_bytes());
        NewDelivery {
            delivery_id: Some(format!("d-{n}")),
            event: "issues".to_owned(),
            event_type: None,
            action: Some("opened".to_owned()),
            repository: Some("o/r".to_owned()),
            issue_number: Some(1),
            body_sha256: hash,
            body: vec![b'x'; 8_192],
            status: IntakeStatus::Pending,
            received_at: Utc::now(),
        }
    }

    /// Polls until `done` holds; a slow, shared machine gets ample time.
    fn eventually(mut done: impl FnMut() -> bool) -> bool {
        let started = Instant::now();
        while started.elapsed() < LONG {
            if done() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        false
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_background_thread_checkpoints_while_writing_and_truncates_when_idle() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.db");
        let config = StoreConfig {
            checkpoint_interval_ms: 5,
            // Any WAL left when the store goes idle is given back.
            wal_size_limit_bytes: 0,
            ..StoreConfig::sqlite(&path)
        };
        let store = SqliteStore::open(&config).unwrap();
        for n in 0..200 {
            store.record_delivery(delivery(n)).await.unwrap();
        }
        // ~1.6 MB went through the WAL; the writer never checkpoints, so these are the
        // background thread's.
        let path_for_poll = path.clone();
        let truncated =
            tokio::task::spawn_blocking(move || eventually(|| wal_len(&path_for_poll) == 0))
                .await
                .unwrap();
        assert!(store.checkpoints().background > 0);
        assert!(truncated, "WAL still {} bytes", wal_len(&path));

        // The truncation lost nothing.
        let direct = Connection::open(&path).unwrap();
        let rows: i64 = direct
            .query_row("SELECT COUNT(*) FROM inbox", [], |row| row.get(0))
            .unwrap();
        assert_eq!(rows, 200);
        drop(direct);

        // And the store keeps writing after a truncation.
        store.record_delivery(delivery(200)).await.unwrap();
        assert_eq!(store.delivery_counts().await.unwrap().pending, 201);
    }
}
