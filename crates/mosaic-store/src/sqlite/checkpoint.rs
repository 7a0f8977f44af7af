//! WAL checkpoints off the commit path.
//!
//! SQLite's automatic checkpoint runs inside the commit that crosses its threshold, on the
//! only writer: every queued request waits while it copies the WAL into the database file and
//! syncs it. Instead the writer runs with `wal_autocheckpoint = 0` and this thread, on its own
//! connection, runs a PASSIVE checkpoint (which never takes the writer's lock) every interval
//! while commits happen. Once a checkpoint has copied the whole log, the writer's next commit
//! starts the WAL from its beginning again, so the file does not grow. Only when no commit
//! happened for a whole interval, and a burst left the WAL file larger than its limit, does it
//! run a TRUNCATE checkpoint (which briefly takes the writer's lock) to give the space back.
//!
//! Durability does not depend on this thread: a commit is synced into the WAL by the writer
//! before it is acknowledged; a checkpoint only moves committed pages into the database file.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread::JoinHandle;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};

use super::{Counters, synchronous_pragma};
use crate::config::StoreConfig;
use crate::error::StoreError;

/// A TRUNCATE checkpoint waits at most this long for the writer and readers: it only runs when
/// the store is idle, and it must not hold up a request that arrives meanwhile for long.
const TRUNCATE_BUSY_TIMEOUT: Duration = Duration::from_millis(50);

/// What one `PRAGMA wal_checkpoint` reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct CheckpointResult {
    /// The checkpoint could not finish because a connection held a lock it needed.
    pub busy: bool,
    /// Frames in the WAL.
    pub log_frames: i64,
    /// Frames of the WAL already copied into the database file.
    pub checkpointed_frames: i64,
}

impl CheckpointResult {
    /// Whether committed frames remain to be copied into the database file.
    fn behind(self) -> bool {
        self.busy || self.checkpointed_frames < self.log_frames
    }
}

#[derive(Debug, Clone, Copy)]
pub(super) enum Mode {
    Passive,
    Truncate,
}

pub(super) fn checkpoint(conn: &Connection, mode: Mode) -> Result<CheckpointResult, StoreError> {
    let sql = match mode {
        Mode::Passive => "PRAGMA wal_checkpoint(PASSIVE)",
        Mode::Truncate => "PRAGMA wal_checkpoint(TRUNCATE)",
    };
    Ok(conn.query_row(sql, [], |row| {
        Ok(CheckpointResult {
            busy: row.get::<_, i64>(0)? != 0,
            log_frames: row.get(1)?,
            checkpointed_frames: row.get(2)?,
        })
    })?)
}

fn wal_path(database: &Path) -> PathBuf {
    let mut name = database.as_os_str().to_owned();
    name.push("-wal");
    PathBuf::from(name)
}

/// Checkpoints done in the background, for statistics and tests.
#[derive(Debug, Default)]
pub(super) struct CheckpointCounters {
    pub checkpoints: AtomicU64,
    pub truncations: AtomicU64,
}

/// The checkpoint thread; stopping it (drop) waits for a checkpoint in progress.
#[derive(Debug)]
pub(super) struct Checkpointer {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Checkpointer {
    pub(super) fn start(
        path: &Path,
        config: &StoreConfig,
        commits: Arc<Counters>,
        counters: Arc<CheckpointCounters>,
    ) -> Result<Self, StoreError> {
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        conn.busy_timeout(TRUNCATE_BUSY_TIMEOUT)?;
        // A checkpoint syncs the WAL and the database file as this connection's setting says.
        conn.pragma_update(None, "synchronous", synchronous_pragma(config.synchronous))?;
        let task = Task {
            conn,
            wal: wal_path(path),
            interval: Duration::from_millis(config.checkpoint_interval_ms),
            wal_size_limit: config.wal_size_limit_bytes,
            commits,
            counters,
        };
        let (stop, stopped) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("mosaic-store-checkpoint".to_owned())
            .spawn(move || task.run(&stopped))
            .map_err(|e| {
                StoreError::InvalidConfig(format!("cannot start the checkpoint thread: {e}"))
            })?;
        Ok(Self {
            stop: Some(stop),
            thread: Some(thread),
        })
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        self.stop.take();
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            tracing::error!("store checkpoint thread panicked");
        }
    }
}

struct Task {
    conn: Connection,
    wal: PathBuf,
    interval: Duration,
    wal_size_limit: u64,
    commits: Arc<Counters>,
    counters: Arc<CheckpointCounters>,
}

impl Task {
    fn run(self, stop: &mpsc::Receiver<()>) {
        let mut seen_commits = self.commits.commits.load(Ordering::Relaxed);
        let mut behind = false;
        // Ends when the store closes (the sender is dropped) or asks it to stop.
        while let Err(RecvTimeoutError::Timeout) = stop.recv_timeout(self.interval) {
            let commits = self.commits.commits.load(Ordering::Relaxed);
            let writing = commits != seen_commits;
            seen_commits = commits;
            if writing || behind {
                // Also while idle when the last one was held back by a reader's snapshot.
                behind = self
                    .run_checkpoint(Mode::Passive)
                    .is_none_or(CheckpointResult::behind);
            } else if self.wal_len() > self.wal_size_limit {
                behind = self
                    .run_checkpoint(Mode::Truncate)
                    .is_none_or(CheckpointResult::behind);
            }
        }
        tracing::debug!("store checkpoint thread stopped");
    }

    fn run_checkpoint(&self, mode: Mode) -> Option<CheckpointResult> {
        match checkpoint(&self.conn, mode) {
            Ok(result) => {
                self.counters.checkpoints.fetch_add(1, Ordering::Relaxed);
                if matches!(mode, Mode::Truncate) && !result.busy {
                    self.counters.truncations.fetch_add(1, Ordering::Relaxed);
                }
                tracing::trace!(?mode, ?result, "store checkpoint");
                Some(result)
            }
            Err(error) => {
                // Nothing committed is at risk; the WAL only grows until a checkpoint succeeds.
                tracing::warn!(%error, ?mode, "store checkpoint failed");
                None
            }
        }
    }

    fn wal_len(&self) -> u64 {
        std::fs::metadata(&self.wal).map_or(0, |m| m.len())
    }
}
