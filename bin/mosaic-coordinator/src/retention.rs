//! Retention: delivery bodies and session logs are kept for a while (for the operator's
//! questions and for replays), then removed by a periodic clean-up; so are the work directories
//! of finished issues (git worktrees and the runner's own directories). What is kept shows at
//! `/api/v1/retention` and in /metrics.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock, PoisonError};
use std::time::{Duration, SystemTime};

use chrono::Utc;
use mosaic_engine::engine::Engine;
use mosaic_http::{RetentionStatus, SharedRetention, Volume};
use mosaic_runner::workdir::issue_relative_dir;
use mosaic_store::Store;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

/// The `[retention]` section.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetentionConfig {
    /// Days the body of a handled delivery is kept (its row, hash and status stay).
    pub delivery_bodies_days: u32,
    /// Days a session's log is kept after it was last written.
    pub session_logs_days: u32,
    /// Days the work directory of a finished issue (done, no changes, failed, rejected,
    /// cancelled) is kept after the issue last changed; 0 removes it at the next clean-up. An
    /// issue waiting or running keeps its directory whatever this says.
    pub work_dirs_days: u32,
    /// Seconds between clean-ups (the first runs at start).
    pub interval_secs: u64,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        Self {
            delivery_bodies_days: 30,
            session_logs_days: 30,
            work_dirs_days: 7,
            interval_secs: 3_600,
        }
    }
}

impl RetentionConfig {
    pub fn validate(&self) -> Result<(), String> {
        if self.interval_secs == 0 {
            return Err("`retention.interval_secs` must be at least 1".to_owned());
        }
        for (key, days) in [
            ("delivery_bodies_days", self.delivery_bodies_days),
            ("session_logs_days", self.session_logs_days),
        ] {
            if days == 0 {
                return Err(format!(
                    "`retention.{key}` must be at least 1 (a day); bodies and logs are needed while work runs"
                ));
            }
        }
        Ok(())
    }
}

fn as_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// /metrics families of retention.
#[derive(Debug, Clone, Default)]
pub struct RetentionMetrics {
    kept_bodies: Gauge,
    kept_body_bytes: Gauge,
    kept_logs: Gauge,
    kept_log_bytes: Gauge,
    removed_bodies: Counter,
    removed_logs: Counter,
    kept_work_dirs: Gauge,
    kept_work_dir_bytes: Gauge,
    removed_work_dirs: Counter,
}

impl RetentionMetrics {
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "retained_delivery_bodies",
            "Delivery bodies kept in the store",
            self.kept_bodies.clone(),
        );
        registry.register(
            "retained_delivery_body_bytes",
            "Bytes of delivery bodies kept in the store (compressed)",
            self.kept_body_bytes.clone(),
        );
        registry.register(
            "retained_session_logs",
            "Session log files kept",
            self.kept_logs.clone(),
        );
        registry.register(
            "retained_session_log_bytes",
            "Bytes of session logs kept",
            self.kept_log_bytes.clone(),
        );
        registry.register(
            "removed_delivery_bodies",
            "Delivery bodies removed by retention",
            self.removed_bodies.clone(),
        );
        registry.register(
            "removed_session_logs",
            "Session log files removed by retention",
            self.removed_logs.clone(),
        );
        registry.register(
            "retained_work_dirs",
            "Work directories kept (git worktrees and the runner's issue directories)",
            self.kept_work_dirs.clone(),
        );
        registry.register(
            "retained_work_dir_bytes",
            "Bytes of the work directories kept",
            self.kept_work_dir_bytes.clone(),
        );
        registry.register(
            "removed_work_dirs",
            "Work directories of finished issues removed by retention",
            self.removed_work_dirs.clone(),
        );
    }
}

/// Runs the clean-up.
#[derive(Debug)]
pub struct Retention {
    pub store: Arc<dyn Store>,
    pub log_dir: PathBuf,
    /// The runner's root of per-issue directories (sessions that run without a worktree).
    pub work_root: PathBuf,
    /// Set while this coordinator leads: only the engine knows which issues are finished, so a
    /// standby removes no work directory.
    pub engine: Arc<OnceLock<Engine>>,
    /// Whether this coordinator may still act as the leader: a leader paused past its lease
    /// removes nothing (another may be using the directories by then).
    pub lease: Arc<crate::probes::LeaseClock>,
    pub config: RetentionConfig,
    pub metrics: RetentionMetrics,
    pub status: SharedRetention,
}

fn days(n: u32) -> Duration {
    Duration::from_secs(u64::from(n) * 86_400)
}

impl Retention {
    /// One clean-up: removes what is older than the settings allow, then measures what is kept.
    pub async fn run_once(&self) {
        let mut errors = Vec::new();
        let now = Utc::now();
        let bodies_before = now
            - chrono::Duration::from_std(days(self.config.delivery_bodies_days))
                .unwrap_or_default();
        let removed_bodies = match self.store.prune_delivery_bodies(bodies_before).await {
            Ok(volume) => volume,
            Err(err) => {
                errors.push(format!("delivery bodies: {err}"));
                Volume::default()
            }
        };
        // A session's requests and commands (how it travelled between coordinators) go with
        // its log.
        let requests_before = now
            - chrono::Duration::from_std(days(self.config.session_logs_days)).unwrap_or_default();
        if let Err(err) = self.store.prune_session_requests(requests_before).await {
            errors.push(format!("session requests: {err}"));
        }
        let log_dir = self.log_dir.clone();
        let logs_before = SystemTime::now() - days(self.config.session_logs_days);
        let removed_logs = match tokio::task::spawn_blocking(move || {
            mosaic_runner::retention::prune_session_logs(&log_dir, logs_before)
        })
        .await
        {
            Ok(Ok(volume)) => volume,
            Ok(Err(err)) => {
                errors.push(format!("session logs in {}: {err}", self.log_dir.display()));
                Volume::default()
            }
            Err(err) => {
                errors.push(format!("session logs: {err}"));
                Volume::default()
            }
        };
        let (removed_work_dirs, kept_work_dirs) = self.work_dirs(now, &mut errors).await;
        if removed_bodies.count > 0 || removed_logs.count > 0 || removed_work_dirs.count > 0 {
            tracing::info!(
                delivery_bodies = removed_bodies.count,
                delivery_body_bytes = removed_bodies.bytes,
                session_logs = removed_logs.count,
                session_log_bytes = removed_logs.bytes,
                work_dirs = removed_work_dirs.count,
                work_dir_bytes = removed_work_dirs.bytes,
                "retention removed what is past its time"
            );
        }
        self.metrics.removed_bodies.inc_by(removed_bodies.count);
        self.metrics.removed_logs.inc_by(removed_logs.count);
        self.metrics
            .removed_work_dirs
            .inc_by(removed_work_dirs.count);

        let kept_bodies = match self.store.retained_delivery_bodies().await {
            Ok(volume) => Some(volume),
            Err(err) => {
                errors.push(format!("counting delivery bodies: {err}"));
                None
            }
        };
        let log_dir = self.log_dir.clone();
        let kept_logs = match tokio::task::spawn_blocking(move || {
            mosaic_runner::retention::session_logs(&log_dir)
        })
        .await
        {
            Ok(Ok(volume)) => Some(volume),
            Ok(Err(err)) => {
                errors.push(format!("counting session logs: {err}"));
                None
            }
            Err(err) => {
                errors.push(format!("counting session logs: {err}"));
                None
            }
        };
        if let Some(kept) = kept_bodies {
            self.metrics.kept_bodies.set(as_i64(kept.count));
            self.metrics.kept_body_bytes.set(as_i64(kept.bytes));
        }
        if let Some(kept) = kept_logs {
            self.metrics.kept_logs.set(as_i64(kept.count));
            self.metrics.kept_log_bytes.set(as_i64(kept.bytes));
        }
        if let Some(kept) = kept_work_dirs {
            self.metrics.kept_work_dirs.set(as_i64(kept.count));
            self.metrics.kept_work_dir_bytes.set(as_i64(kept.bytes));
        }
        let error = (!errors.is_empty()).then(|| errors.join("; "));
        if let Some(error) = &error {
            tracing::warn!(%error, "retention could not finish");
        }
        let mut status = self.status.write().unwrap_or_else(PoisonError::into_inner);
        let RetentionStatus {
            removed_delivery_bodies,
            removed_session_logs,
            removed_work_dirs: removed_work_dirs_before,
            ..
        } = *status;
        *status = RetentionStatus {
            delivery_bodies: kept_bodies.unwrap_or(status.delivery_bodies),
            session_logs: kept_logs.unwrap_or(status.session_logs),
            work_dirs: kept_work_dirs.unwrap_or(status.work_dirs),
            removed_delivery_bodies: removed_delivery_bodies.plus(removed_bodies),
            removed_session_logs: removed_session_logs.plus(removed_logs),
            removed_work_dirs: removed_work_dirs_before.plus(removed_work_dirs),
            keep_delivery_bodies_days: self.config.delivery_bodies_days,
            keep_session_logs_days: self.config.session_logs_days,
            keep_work_dirs_days: self.config.work_dirs_days,
            last_run_at: Some(now),
            last_error: error,
        };
    }

    /// Removes the work directories of issues finished before the cut-off (worktrees through
    /// the engine, which records their removal; then the runner's own directories) and measures
    /// those kept. Returns (removed, kept; `None` when they could not be counted).
    async fn work_dirs(
        &self,
        now: chrono::DateTime<Utc>,
        errors: &mut Vec<String>,
    ) -> (Volume, Option<Volume>) {
        let before = now - chrono::Duration::days(i64::from(self.config.work_dirs_days));
        // Only a leader that still holds its lease removes anything; otherwise only count.
        let engine = self.engine.get().cloned().filter(|_| self.lease.holds());
        let work_root = self.work_root.clone();
        let (worktrees, set_aside) = match &engine {
            Some(engine) => {
                let worktrees = engine.remove_expired_worktrees(before).await;
                // Under the engine's lock, so an issue reopened now waits for its directory's
                // fate; only a quick rename happens there, measuring and deleting come after.
                let work_root = work_root.clone();
                let set_aside = engine
                    .while_finished_issues_stay_finished(before, move |finished| {
                        // Two issues whose names clean up to the same directory: it stays
                        // while either needs it.
                        let needed: HashSet<PathBuf> =
                            finished.kept.iter().map(issue_relative_dir).collect();
                        let removable: HashSet<PathBuf> = finished
                            .expired
                            .iter()
                            .map(issue_relative_dir)
                            .filter(|dir| !needed.contains(dir))
                            .collect();
                        mosaic_runner::retention::set_aside_issue_work_dirs(
                            &work_root,
                            |relative| removable.contains(relative),
                        )
                    })
                    .await;
                (worktrees, Some(set_aside))
            }
            // A standby (or a leader that cannot confirm its lease) removes nothing: it counts.
            None => (Volume::default(), None),
        };
        let failed_to_set_aside = match &set_aside {
            Some(Ok(Err(err))) => Some(err.to_string()),
            Some(Err(err)) => Some(err.to_string()),
            _ => None,
        };
        if let Some(err) = failed_to_set_aside {
            errors.push(format!(
                "work directories in {}: {err}",
                self.work_root.display()
            ));
        }
        let deleting = engine.is_some();
        let runner_dirs = tokio::task::spawn_blocking(move || {
            let removed = if deleting {
                mosaic_runner::retention::delete_set_aside(&work_root)?
            } else {
                Volume::default()
            };
            let kept = mosaic_runner::retention::issue_work_dirs_volume(&work_root)?;
            Ok::<_, std::io::Error>((kept, removed))
        })
        .await;
        let runner_dirs = match runner_dirs {
            Ok(Ok(volumes)) => Some(volumes),
            Ok(Err(err)) => {
                errors.push(format!(
                    "work directories in {}: {err}",
                    self.work_root.display()
                ));
                None
            }
            Err(err) => {
                errors.push(format!("work directories: {err}"));
                None
            }
        };
        let (kept_runner, removed_runner) = runner_dirs.unzip();
        let removed_runner = removed_runner.unwrap_or_default();
        let removed = worktrees.plus(removed_runner);
        let kept_worktrees = match &engine {
            Some(engine) => engine.workspace_usage().await.map(|usage| Volume {
                count: usage.workspaces,
                bytes: usage.bytes,
            }),
            None => None,
        }
        .unwrap_or_default();
        let kept = kept_runner.map(|runner| runner.plus(kept_worktrees));
        (removed, kept)
    }

    /// Cleans up at once, then every `interval_secs`, until cancelled.
    pub async fn run(self, cancel: CancellationToken) {
        let every = Duration::from_secs(self.config.interval_secs);
        loop {
            self.run_once().await;
            tokio::select! {
                () = cancel.cancelled() => return,
                () = tokio::time::sleep(every) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mosaic_store::{IntakeStatus, NewDelivery, RecordOutcome};

    #[tokio::test]
    async fn a_run_removes_old_bodies_and_logs_and_reports_what_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(
            mosaic_store_sqlite::SqliteStore::open(&mosaic_store::StoreConfig::sqlite(
                dir.path().join("s.db"),
            ))
            .unwrap(),
        );
        let received = |days_ago: i64| Utc::now() - chrono::Duration::days(days_ago);
        let mut ids = Vec::new();
        for (name, age) in [("old", 40), ("new", 1)] {
            let body = format!("{{\"which\": \"{name}\"}}").into_bytes();
            let outcome = store
                .record_delivery(NewDelivery {
                    delivery_id: Some(name.to_owned()),
                    event: "issues".to_owned(),
                    event_type: None,
                    action: None,
                    repository: None,
                    issue_number: None,
                    body_sha256: [u8::from(name == "old"); 32],
                    body,
                    status: IntakeStatus::Pending,
                    received_at: received(age),
                })
                .await
                .unwrap();
            let RecordOutcome::Recorded { id } = outcome else {
                panic!("{outcome:?}");
            };
            store.mark_processed(id).await.unwrap();
            ids.push(id);
        }
        let logs = dir.path().join("logs");
        std::fs::create_dir(&logs).unwrap();
        for (name, age_days) in [("old.log", 40_u64), ("new.log", 0)] {
            let path = logs.join(name);
            std::fs::write(&path, b"line\n").unwrap();
            std::fs::File::options()
                .write(true)
                .open(&path)
                .unwrap()
                .set_modified(SystemTime::now() - Duration::from_secs(age_days * 86_400))
                .unwrap();
        }
        // A runner directory: without an engine (a standby) nothing says its issue is
        // finished, so it is counted and kept.
        let work_dir = dir.path().join("work/acme/widgets/issue-1");
        std::fs::create_dir_all(&work_dir).unwrap();
        std::fs::write(work_dir.join("notes.md"), b"notes\n").unwrap();
        let retention = Retention {
            store,
            log_dir: logs.clone(),
            work_root: dir.path().join("work"),
            engine: Arc::default(),
            lease: Arc::new(crate::probes::LeaseClock::new(Duration::from_secs(5))),
            config: RetentionConfig::default(),
            metrics: RetentionMetrics::default(),
            status: SharedRetention::default(),
        };
        retention.run_once().await;
        let status = retention.status.read().unwrap().clone();
        assert_eq!(status.removed_delivery_bodies.count, 1, "{status:?}");
        assert_eq!(status.delivery_bodies.count, 1);
        assert_eq!(status.removed_session_logs.count, 1);
        assert_eq!(status.session_logs, Volume { count: 1, bytes: 5 });
        assert!(status.last_error.is_none());
        assert!(!logs.join("old.log").exists());
        assert_eq!(retention.metrics.kept_bodies.get(), 1);
        assert_eq!(status.work_dirs, Volume { count: 1, bytes: 6 });
        assert_eq!(status.removed_work_dirs, Volume::default());
        assert_eq!(status.keep_work_dirs_days, 7);
        assert!(work_dir.join("notes.md").is_file());
        assert_eq!(retention.metrics.kept_work_dirs.get(), 1);
        // Nothing more to remove the second time; the totals stay.
        retention.run_once().await;
        let status = retention.status.read().unwrap().clone();
        assert_eq!(status.removed_delivery_bodies.count, 1);
        assert_eq!(retention.metrics.removed_logs.get(), 1);
    }

    #[test]
    fn settings_are_checked() {
        assert!(RetentionConfig::default().validate().is_ok());
        let zero = RetentionConfig {
            session_logs_days: 0,
            ..RetentionConfig::default()
        };
        assert!(
            zero.validate()
                .unwrap_err()
                .contains("retention.session_logs_days")
        );
    }
}
