//! WAL checkpoints off the commit path.
//!
//! SQLite's automatic checkpoint runs inside the commit that crosses its threshold, on the
//! only writer: every queued request waits while it copies the WAL into the database file and
//! syncs it. Instead this thread, on its own connection, runs a PASSIVE checkpoint (which never
//! takes the writer's lock) every interval while commits happen.
//!
//! The log starts again from its beginning (instead of growing) at the writer's first commit
//! after a checkpoint has copied it up to its last frame. That happens by itself whenever
//! writes pause for as long as one pass takes, but never under a load that does not pause. So
//! once the WAL holds `wal_restart_pages`, this thread copies back to back until little is
//! left and then asks the writer to copy that remainder itself between two groups: one short
//! pause of the writer (one sync of the database file) per that many pages. SQLite's own
//! checkpoint stays on the writer only as a safety net, at twice that size. When no commit
//! happened for a whole interval and a burst left the WAL file larger than its limit, a
//! TRUNCATE checkpoint (which briefly takes the writer's lock) gives the space back.
//!
//! Durability does not depend on any of this: a commit is synced into the WAL by the writer
//! before it is acknowledged; a checkpoint only moves committed pages into the database file.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError, TryRecvError};
use std::thread::JoinHandle;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};

use mosaic_store::StoreError;

use crate::failure::Failure;
use crate::options::SqliteOptions;
use crate::{Counters, synchronous_pragma};

/// Back-to-back passes at most before the writer is asked to finish anyway.
const MAX_CATCH_UP_PASSES: usize = 8;

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

    /// Frames not yet copied into the database file.
    fn remainder(self) -> i64 {
        (self.log_frames - self.checkpointed_frames).max(0)
    }
}

#[derive(Debug, Clone, Copy)]
pub(super) enum Mode {
    Passive,
    Truncate,
}

pub(super) fn checkpoint(conn: &Connection, mode: Mode) -> Result<CheckpointResult, Failure> {
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

pub(super) fn wal_path(database: &Path) -> PathBuf {
    let mut name = database.as_os_str().to_owned();
    name.push("-wal");
    PathBuf::from(name)
}

/// What the checkpoint thread and the writer share.
#[derive(Debug, Default)]
pub(super) struct CheckpointState {
    /// Set by the checkpoint thread when the WAL is long and nearly all copied; the writer
    /// copies the rest between two groups and clears it.
    restart_wanted: AtomicBool,
    /// Checkpoints run by the checkpoint thread.
    pub checkpoints: AtomicU64,
    /// Checkpoints the writer ran on request to let the log restart.
    pub writer_checkpoints: AtomicU64,
    /// TRUNCATE checkpoints that emptied the WAL file.
    pub truncations: AtomicU64,
}

/// On the writer, between groups: when asked, copies the little the checkpoint thread left,
/// so that the next commit starts the log again from its beginning.
pub(super) fn finish_checkpoint_if_asked(conn: &Connection, state: &CheckpointState) {
    if !state.restart_wanted.load(Ordering::Acquire) {
        return;
    }
    match checkpoint(conn, Mode::Passive) {
        // Cannot happen while the thread waits for us; try again after the next group.
        Ok(result) if result.busy => return,
        Ok(result) => {
            state.writer_checkpoints.fetch_add(1, Ordering::Relaxed);
            tracing::trace!(?result, "store writer finished a checkpoint");
        }
        // Nothing committed is at risk; the checkpoint thread asks again later.
        Err(error) => tracing::warn!(%error, "store writer checkpoint failed"),
    }
    state.restart_wanted.store(false, Ordering::Release);
}

/// The checkpoint thread; stopping it (drop) waits for a checkpoint in progress.
#[derive(Debug)]
pub(super) struct Checkpointer {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Checkpointer {
    pub(super) fn start(
        options: &SqliteOptions,
        commits: Arc<Counters>,
        state: Arc<CheckpointState>,
    ) -> Result<Self, Failure> {
        let conn = Connection::open_with_flags(
            &options.path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        conn.busy_timeout(TRUNCATE_BUSY_TIMEOUT)?;
        // A checkpoint syncs the WAL and the database file as this connection's setting says.
        conn.pragma_update(None, "synchronous", synchronous_pragma(options.synchronous))?;
        let task = Task {
            conn,
            wal: wal_path(&options.path),
            interval: options.checkpoint_interval,
            wal_size_limit: options.wal_size_limit_bytes,
            restart_frames: i64::from(options.wal_restart_pages),
            commits,
            state,
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
    restart_frames: i64,
    commits: Arc<Counters>,
    state: Arc<CheckpointState>,
}

impl Task {
    fn run(self, stop: &mpsc::Receiver<()>) {
        let mut seen_commits = self.commits.commits.load(Ordering::Relaxed);
        let mut behind = false;
        // Ends when the store closes (the sender is dropped) or asks it to stop.
        while let Err(RecvTimeoutError::Timeout) = stop.recv_timeout(self.interval) {
            if self.state.restart_wanted.load(Ordering::Acquire) {
                // The writer's turn: a pass of ours now would only make its pass fail busy.
                continue;
            }
            let commits = self.commits.commits.load(Ordering::Relaxed);
            let writing = commits != seen_commits;
            seen_commits = commits;
            if writing || behind {
                // Also while idle when the last one was held back by a reader's snapshot.
                let result = self.run_checkpoint(Mode::Passive);
                behind = result.is_none_or(CheckpointResult::behind);
                if let Some(result) = result
                    && result.log_frames >= self.restart_frames
                {
                    self.catch_up(result, stop);
                }
            } else if self.wal_len() > self.wal_size_limit {
                behind = self
                    .run_checkpoint(Mode::Truncate)
                    .is_none_or(CheckpointResult::behind);
            }
        }
        tracing::debug!("store checkpoint thread stopped");
    }

    /// Copies back to back until only a little is left (each pass copies what the writer
    /// added during the last one), then hands the rest to the writer.
    fn catch_up(&self, mut result: CheckpointResult, stop: &mpsc::Receiver<()>) {
        let little = (self.restart_frames / 8).max(1);
        for _ in 0..MAX_CATCH_UP_PASSES {
            if result.remainder() <= little || !matches!(stop.try_recv(), Err(TryRecvError::Empty))
            {
                break;
            }
            match self.run_checkpoint(Mode::Passive) {
                Some(next) => result = next,
                None => return,
            }
        }
        self.state.restart_wanted.store(true, Ordering::Release);
    }

    fn run_checkpoint(&self, mode: Mode) -> Option<CheckpointResult> {
        match checkpoint(&self.conn, mode) {
            Ok(result) => {
                self.state.checkpoints.fetch_add(1, Ordering::Relaxed);
                if matches!(mode, Mode::Truncate) && !result.busy {
                    self.state.truncations.fetch_add(1, Ordering::Relaxed);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{migrate, open_writer};

    fn options(path: &Path) -> SqliteOptions {
        SqliteOptions::from_config(&mosaic_store::StoreConfig::sqlite(path)).unwrap()
    }

    /// A writer connection (SQLite's own checkpoint off) with `rows` rows of 8 KiB committed.
    fn writer_with_rows(path: &Path, rows: usize) -> Connection {
        let mut conn = open_writer(&options(path)).unwrap();
        migrate::migrate(&mut conn).unwrap();
        conn.pragma_update(None, "wal_autocheckpoint", 0).unwrap();
        add_rows(&conn, 0, rows);
        conn
    }

    fn add_rows(conn: &Connection, from: usize, rows: usize) {
        let value = format!("\"{}\"", "x".repeat(8_192));
        for n in from..from + rows {
            conn.execute(
                "INSERT INTO parse_cache (cache_key, value, stored_at) VALUES (?1, ?2, 0)",
                rusqlite::params![format!("k{n}"), value],
            )
            .unwrap();
        }
    }

    fn task(path: &Path, restart_frames: i64) -> Task {
        let options = options(path);
        let conn = Connection::open(path).unwrap();
        conn.pragma_update(None, "synchronous", "FULL").unwrap();
        Task {
            conn,
            wal: wal_path(path),
            interval: options.checkpoint_interval,
            wal_size_limit: options.wal_size_limit_bytes,
            restart_frames,
            commits: Arc::new(Counters::default()),
            state: Arc::new(CheckpointState::default()),
        }
    }

    #[test]
    fn a_long_wal_is_copied_then_restarted_by_the_writer_between_groups() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.db");
        let writer = writer_with_rows(&path, 50);
        let task = task(&path, 10);
        let (_stop, stopped) = mpsc::channel();

        let first = task.run_checkpoint(Mode::Passive).unwrap();
        assert!(first.log_frames >= 100, "{first:?}");
        assert_eq!(first.remainder(), 0);
        // The writer went on meanwhile: those frames are the remainder.
        add_rows(&writer, 50, 5);
        task.catch_up(first, &stopped);
        assert!(task.state.restart_wanted.load(Ordering::Acquire));

        finish_checkpoint_if_asked(&writer, &task.state);
        assert!(!task.state.restart_wanted.load(Ordering::Acquire));
        assert_eq!(task.state.writer_checkpoints.load(Ordering::Relaxed), 1);
        let copied = checkpoint(&task.conn, Mode::Passive).unwrap();
        assert_eq!(copied.remainder(), 0, "{copied:?}");

        // The next commit starts the log from its beginning instead of appending to it.
        add_rows(&writer, 55, 1);
        let after = checkpoint(&task.conn, Mode::Passive).unwrap();
        assert!(
            after.log_frames < first.log_frames / 10,
            "{after:?} after {first:?}"
        );
        let rows: i64 = writer
            .query_row("SELECT COUNT(*) FROM parse_cache", [], |row| row.get(0))
            .unwrap();
        assert_eq!(rows, 56);
    }

    #[test]
    fn the_writer_does_nothing_unless_asked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.db");
        let writer = writer_with_rows(&path, 5);
        let state = CheckpointState::default();
        finish_checkpoint_if_asked(&writer, &state);
        assert_eq!(state.writer_checkpoints.load(Ordering::Relaxed), 0);
        let task = task(&path, 10);
        let untouched = checkpoint(&task.conn, Mode::Passive).unwrap();
        assert!(untouched.log_frames > 0);
    }

    #[test]
    fn a_wal_under_the_restart_size_is_left_to_the_background_passes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.db");
        let _writer = writer_with_rows(&path, 5);
        let task = task(&path, i64::MAX);
        let (stop, stopped) = mpsc::channel();
        let state = Arc::clone(&task.state);
        let commits = Arc::clone(&task.commits);
        let thread = std::thread::spawn(move || task.run(&stopped));
        let started = std::time::Instant::now();
        while state.checkpoints.load(Ordering::Relaxed) == 0 {
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "no checkpoint ran"
            );
            // Commits keep happening, as far as the thread can tell.
            commits.commits.fetch_add(1, Ordering::Relaxed);
            std::thread::sleep(Duration::from_millis(5));
        }
        drop(stop);
        thread.join().unwrap();
        assert!(!state.restart_wanted.load(Ordering::Acquire));
    }
}
