//! Reconciliation: Gitea sends each webhook at most once and none when dependencies change, so
//! at start and every interval the reconciler compares Gitea with the store and repairs what
//! was missed (issue 6, "Reconciliation").
//!
//! It never touches the engine: each repair is a synthetic `issues` delivery recorded in the
//! inbox (`reconcile-…` delivery id, sender `mosaic-reconciler`) carrying the issue as Gitea
//! shows it now, so the normal pipeline handles it durably and idempotently, exactly like a
//! webhook that arrived late. The engine's decisions are level-triggered (open? assigned to the
//! bot?), so the action mainly says why the delivery exists.
//!
//! Only facts other people change are compared (open/closed, assignees, existence, repository,
//! dependencies); labels, comments and `updated_at`, which the bot's own writes change, are
//! not, so the bot's own state is never fed back.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use chrono::Utc;
use mosaic_domain::{IssueRef, IssueState, RepoName};
use mosaic_gitea::{
    BotIdentity, Dependencies, GiteaApi, GiteaError, Issue, IssueFilter, RequestPacer, StateFilter,
};
use mosaic_store::{
    IntakeStatus, IssueRecord, IssueSnapshot, NewDelivery, RecordOutcome, Store, StoreError,
};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// The sender of every synthetic delivery (id 0: no Gitea account).
pub const RECONCILER_SENDER: &str = "mosaic-reconciler";

/// Settings of the reconciler (from the `[gitea]` section).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReconcileConfig {
    /// Seconds between runs (`gitea.reconcile_interval_secs`); the first run is at start.
    pub interval_secs: u64,
    /// Upper bound on Gitea requests per second during a run.
    pub max_requests_per_sec: u32,
    /// Repositories to list; empty: every repository the bot can see (Gitea's search).
    pub repositories: Vec<RepoName>,
}

impl Default for ReconcileConfig {
    fn default() -> Self {
        Self {
            interval_secs: 300,
            max_requests_per_sec: 5,
            repositories: Vec::new(),
        }
    }
}

impl ReconcileConfig {
    pub fn from_gitea(config: &mosaic_gitea::GiteaConfig) -> Self {
        Self {
            interval_secs: config.reconcile_interval_secs,
            max_requests_per_sec: config.reconcile_max_requests_per_sec,
            repositories: config.repositories.clone(),
        }
    }
}

/// What a repair is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ChangeKind {
    /// Open and assigned to the bot, but the coordinator never took it (or took its earlier
    /// unassignment or close as final).
    MissedAssignment,
    /// Coordinated and still waiting or running, but closed in Gitea.
    MissedClose,
    /// Coordinated, but no longer assigned to the bot.
    MissedUnassignment,
    /// Coordinated, but Gitea answers 404 for it.
    Deleted,
    /// Coordinated, but Gitea now shows it in another repository.
    Transferred,
    /// Waiting, and Gitea's dependency list differs from the stored edges.
    DependenciesChanged,
    /// Blocks a waiting issue and was closed (or deleted) without the coordinator hearing.
    BlockerClosed,
}

impl ChangeKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::MissedAssignment => "missed_assignment",
            Self::MissedClose => "missed_close",
            Self::MissedUnassignment => "missed_unassignment",
            Self::Deleted => "deleted",
            Self::Transferred => "transferred",
            Self::DependenciesChanged => "dependencies_changed",
            Self::BlockerClosed => "blocker_closed",
        }
    }
}

/// One repair a run made (or found already made).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReconcileChange {
    pub issue: IssueRef,
    pub kind: ChangeKind,
    /// The synthetic delivery's action (`assigned`, `closed`, …).
    pub action: String,
    pub delivery_id: String,
    /// `false`: the store already held a delivery with the same body (this exact repair was
    /// injected by an earlier run); nothing new was recorded.
    pub recorded: bool,
}

/// What one run saw and changed.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct ReconcileReport {
    pub run_id: String,
    /// Open issues assigned to the bot in Gitea.
    pub open_assigned: usize,
    /// Coordinated issues in the store.
    pub coordinated: usize,
    pub changes: Vec<ReconcileChange>,
    /// Issues that could not be checked (a refused call); the rest of the run went on.
    pub errors: Vec<String>,
}

impl ReconcileReport {
    /// Repairs recorded in the inbox by this run.
    pub fn recorded(&self) -> usize {
        self.changes.iter().filter(|c| c.recorded).count()
    }
}

/// Counters for `/metrics` (since start).
#[derive(Debug, Default)]
pub struct ReconcileStats {
    pub runs: AtomicU64,
    pub failed_runs: AtomicU64,
    pub missed_assignments: AtomicU64,
    pub missed_closes: AtomicU64,
    pub missed_unassignments: AtomicU64,
    /// Deleted or transferred.
    pub deleted: AtomicU64,
    pub dependencies_changed: AtomicU64,
    pub blockers_closed: AtomicU64,
    /// Repairs an earlier run had already recorded.
    pub duplicates: AtomicU64,
    /// Issues a run could not check.
    pub errors: AtomicU64,
}

/// A plain copy of [`ReconcileStats`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct ReconcileCounts {
    pub runs: u64,
    pub failed_runs: u64,
    pub missed_assignments: u64,
    pub missed_closes: u64,
    pub missed_unassignments: u64,
    pub deleted: u64,
    pub dependencies_changed: u64,
    pub blockers_closed: u64,
    pub duplicates: u64,
    pub errors: u64,
}

impl ReconcileStats {
    pub fn counts(&self) -> ReconcileCounts {
        let get = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        ReconcileCounts {
            runs: get(&self.runs),
            failed_runs: get(&self.failed_runs),
            missed_assignments: get(&self.missed_assignments),
            missed_closes: get(&self.missed_closes),
            missed_unassignments: get(&self.missed_unassignments),
            deleted: get(&self.deleted),
            dependencies_changed: get(&self.dependencies_changed),
            blockers_closed: get(&self.blockers_closed),
            duplicates: get(&self.duplicates),
            errors: get(&self.errors),
        }
    }

    fn count(&self, kind: ChangeKind) {
        let counter = match kind {
            ChangeKind::MissedAssignment => &self.missed_assignments,
            ChangeKind::MissedClose => &self.missed_closes,
            ChangeKind::MissedUnassignment => &self.missed_unassignments,
            ChangeKind::Deleted | ChangeKind::Transferred => &self.deleted,
            ChangeKind::DependenciesChanged => &self.dependencies_changed,
            ChangeKind::BlockerClosed => &self.blockers_closed,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// Why a run failed as a whole (it is tried again next interval).
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error("Gitea unavailable during reconciliation: {0}")]
    Gitea(#[from] GiteaError),
    #[error("store unavailable during reconciliation: {0}")]
    Store(#[from] StoreError),
    #[error("could not build the synthetic delivery for {issue}: {reason}")]
    Payload { issue: IssueRef, reason: String },
}

/// Compares Gitea with the store and injects the repairs.
pub struct Reconciler {
    store: Arc<dyn Store>,
    gitea: Arc<dyn GiteaApi>,
    bot: BotIdentity,
    config: ReconcileConfig,
    notify_inbox: Arc<Notify>,
    pacer: RequestPacer,
    stats: Arc<ReconcileStats>,
}

impl std::fmt::Debug for Reconciler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reconciler")
            .field("bot", &self.bot.login())
            .field("acts_for", &self.bot.acts_for())
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// A repair to record.
struct Repair {
    issue: IssueRef,
    kind: ChangeKind,
    action: &'static str,
    /// The `issue` object of the payload (Gitea's JSON shape).
    issue_json: Value,
    /// Extra facts that make the body differ when the repaired fact differs (the dependency
    /// list, which changes nothing else on the issue).
    detail: Value,
}

fn is_waiting(state: IssueState) -> bool {
    matches!(
        state,
        IssueState::Pending | IssueState::Blocked | IssueState::Ready
    )
}

impl Reconciler {
    pub fn new(
        store: Arc<dyn Store>,
        gitea: Arc<dyn GiteaApi>,
        bot: BotIdentity,
        config: ReconcileConfig,
        notify_inbox: Arc<Notify>,
    ) -> Self {
        let pacer = RequestPacer::per_second(config.max_requests_per_sec);
        Self {
            store,
            gitea,
            bot,
            config,
            notify_inbox,
            pacer,
            stats: Arc::new(ReconcileStats::default()),
        }
    }

    /// The counters, shared: keep a clone for metrics before `run` takes the reconciler.
    pub fn stats(&self) -> Arc<ReconcileStats> {
        Arc::clone(&self.stats)
    }

    /// One comparison of Gitea with the store; records a synthetic delivery per repair and
    /// wakes the inbox worker. A Gitea outage or a store failure fails the whole run.
    pub async fn run_once(&self) -> Result<ReconcileReport, ReconcileError> {
        self.stats.runs.fetch_add(1, Ordering::Relaxed);
        let result = self.reconcile().await;
        match &result {
            Ok(report) => {
                self.stats
                    .errors
                    .fetch_add(report.errors.len() as u64, Ordering::Relaxed);
            }
            Err(_) => {
                self.stats.failed_runs.fetch_add(1, Ordering::Relaxed);
            }
        }
        result
    }

    async fn reconcile(&self) -> Result<ReconcileReport, ReconcileError> {
        let run_id = Utc::now().format("%Y%m%dT%H%M%S%3fZ").to_string();
        let mut report = ReconcileReport {
            run_id: run_id.clone(),
            ..ReconcileReport::default()
        };
        let records: BTreeMap<IssueRef, IssueRecord> = self
            .store
            .list_issues(&[])
            .await?
            .into_iter()
            .map(|record| (record.issue.clone(), record))
            .collect();
        report.coordinated = records.len();
        let open = self.open_assigned(&records).await?;
        report.open_assigned = open.len();
        let edges = self.store.dependency_edges().await?;
        // Edges the blockers declared (`Blocks: #N`) are the engine's, not Gitea's.
        let declared = crate::declared::DeclaredBlocks::from_records(records.values());

        let mut repairs = Vec::new();

        // Open and assigned in Gitea: missed assignments, changed dependencies.
        for (issue, current) in &open {
            match records.get(issue) {
                None => repairs.push(Repair {
                    issue: issue.clone(),
                    kind: ChangeKind::MissedAssignment,
                    action: "assigned",
                    issue_json: issue_json(current, issue)?,
                    detail: Value::Null,
                }),
                Some(record) if record.state.is_terminal() => {
                    // A terminal record of an open, assigned issue is normal (completed
                    // without closing, rejected, cancelled by an operator) unless the last
                    // event the coordinator saw said closed or unassigned.
                    let snapshot = self.store.get_issue_snapshot(issue).await?;
                    let seen_closed = snapshot.as_ref().is_some_and(|s| !s.state.is_open());
                    let seen_assigned = snapshot.as_ref().is_some_and(|s| {
                        s.assignees
                            .iter()
                            .any(|login| self.bot.is_coordinated_assignee(login))
                    });
                    if seen_closed || !seen_assigned {
                        repairs.push(Repair {
                            issue: issue.clone(),
                            kind: ChangeKind::MissedAssignment,
                            action: if seen_closed { "reopened" } else { "assigned" },
                            issue_json: issue_json(current, issue)?,
                            detail: Value::Null,
                        });
                    }
                }
                Some(record) if is_waiting(record.state) => {
                    match self.dependencies_changed(record, &edges, &declared).await {
                        Ok(Some(listed)) => repairs.push(Repair {
                            issue: issue.clone(),
                            kind: ChangeKind::DependenciesChanged,
                            action: "edited",
                            issue_json: issue_json(current, issue)?,
                            // The record's time makes a repair differ from an earlier one
                            // that was processed (a list that returns to an earlier state),
                            // while one still waiting in the inbox is not recorded twice.
                            detail: json!({
                                "blocked_by": listed,
                                "record_updated_at": record.updated_at,
                            }),
                        }),
                        Ok(None) => {}
                        Err(err) if err.is_retryable() => return Err(err.into()),
                        Err(err) => {
                            tracing::warn!(%issue, error = %err, "could not compare dependencies");
                            report.errors.push(format!("{issue}: {err}"));
                        }
                    }
                }
                Some(_) => {}
            }
        }

        // Coordinated and not finished, but not open and assigned in Gitea any more.
        for (issue, record) in &records {
            if record.state.is_terminal() || open.contains_key(issue) {
                continue;
            }
            match self.check_gone(issue).await {
                Ok(Some(repair)) => repairs.push(repair),
                Ok(None) => {}
                Err(ReconcileError::Gitea(err)) if !err.is_retryable() => {
                    tracing::warn!(%issue, error = %err, "could not check the issue");
                    report.errors.push(format!("{issue}: {err}"));
                }
                Err(err) => return Err(err),
            }
        }

        // Blockers of waiting issues that closed unheard (the engine's graph still waits).
        let blockers: BTreeSet<&IssueRef> = edges
            .iter()
            .filter(|edge| {
                records
                    .get(&edge.issue)
                    .is_some_and(|r| is_waiting(r.state))
            })
            .map(|edge| &edge.blocker)
            .filter(|blocker| {
                !open.contains_key(*blocker)
                    && records.get(*blocker).is_none_or(|r| r.state.is_terminal())
            })
            .collect();
        for blocker in blockers {
            match self.check_blocker(blocker).await {
                Ok(Some(repair)) => repairs.push(repair),
                Ok(None) => {}
                Err(ReconcileError::Gitea(err)) if !err.is_retryable() => {
                    tracing::warn!(%blocker, error = %err, "could not check the blocker");
                    report.errors.push(format!("{blocker}: {err}"));
                }
                Err(err) => return Err(err),
            }
        }

        for repair in repairs {
            let change = self.inject(&run_id, repair).await?;
            report.changes.push(change);
        }
        if report.recorded() > 0 {
            self.notify_inbox.notify_one();
        }
        Ok(report)
    }

    /// Open issues assigned to the coordinated assignee, by issue (pull requests left out).
    async fn open_assigned(
        &self,
        records: &BTreeMap<IssueRef, IssueRecord>,
    ) -> Result<BTreeMap<IssueRef, Issue>, GiteaError> {
        let acts_for = self.bot.acts_for();
        let mut found = Vec::new();
        if self.config.repositories.is_empty() && self.bot.is_self(acts_for) {
            self.pacer.wait().await;
            found = self
                .gitea
                .search_issues_assigned_to_me(StateFilter::Open)
                .await?;
        } else {
            let repos: BTreeSet<RepoName> = if self.config.repositories.is_empty() {
                // Gitea's search only knows the token's own assignments: for another assignee
                // look in the repositories the coordinator already knows.
                tracing::warn!(
                    assignee = acts_for,
                    "gitea.repositories is empty and the assignee is not the bot: reconciling only repositories with coordinated issues"
                );
                records.keys().map(|issue| issue.repo.clone()).collect()
            } else {
                self.config.repositories.iter().cloned().collect()
            };
            let filter = IssueFilter::open_assigned_to(acts_for);
            for repo in repos {
                self.pacer.wait().await;
                found.extend(self.gitea.list_issues(&repo, &filter).await?);
            }
        }
        Ok(found
            .into_iter()
            .filter(|issue| {
                issue.is_open() && !issue.is_pull_request() && issue.is_assigned_to(acts_for)
            })
            .filter_map(|issue| Some((issue.issue_ref()?, issue)))
            .collect())
    }

    /// Gitea's blockers of a waiting issue when they differ from the stored edges. The stored
    /// edges also hold the metadata's references (its own `blocked_by` and other issues'
    /// `blocks`), so only Gitea's own list is compared: every listed blocker must be stored,
    /// and every stored blocker not from the metadata listed.
    async fn dependencies_changed(
        &self,
        record: &IssueRecord,
        edges: &[mosaic_store::DependencyEdge],
        declared: &crate::declared::DeclaredBlocks,
    ) -> Result<Option<Vec<String>>, GiteaError> {
        let issue = &record.issue;
        self.pacer.wait().await;
        let listed = match self.gitea.dependencies(issue).await? {
            Dependencies::Listed(listed) => listed,
            Dependencies::DependenciesDisabled => return Ok(None),
        };
        let listed: BTreeSet<IssueRef> = listed
            .iter()
            .filter_map(Issue::issue_ref)
            .filter(|blocker| blocker != issue)
            .collect();
        let stored: BTreeSet<&IssueRef> = edges
            .iter()
            .filter(|edge| &edge.issue == issue)
            .map(|edge| &edge.blocker)
            .collect();
        let mut from_metadata: BTreeSet<&IssueRef> = record
            .metadata
            .as_ref()
            .map(|m| m.blocked_by.iter().collect())
            .unwrap_or_default();
        from_metadata.extend(declared.blockers_of(issue));
        let added = listed.iter().any(|blocker| !stored.contains(blocker));
        let removed = stored
            .iter()
            .any(|blocker| !from_metadata.contains(blocker) && !listed.contains(*blocker));
        Ok((added || removed).then(|| listed.iter().map(ToString::to_string).collect()))
    }

    /// What became of a coordinated issue that Gitea no longer lists as open and assigned.
    async fn check_gone(&self, issue: &IssueRef) -> Result<Option<Repair>, ReconcileError> {
        self.pacer.wait().await;
        let current = match self.gitea.get_issue(issue).await {
            Ok(current) => current,
            Err(err) if err.is_not_found() => {
                return Ok(Some(self.gone(issue, ChangeKind::Deleted).await?));
            }
            Err(err) => return Err(err.into()),
        };
        if current.issue_ref().as_ref() != Some(issue) {
            return Ok(Some(self.gone(issue, ChangeKind::Transferred).await?));
        }
        let (kind, action) = if !current.is_open() {
            (ChangeKind::MissedClose, "closed")
        } else if !current.is_assigned_to(self.bot.acts_for()) {
            (ChangeKind::MissedUnassignment, "unassigned")
        } else {
            // Open and assigned: the listing and this call raced; the next run sees it.
            return Ok(None);
        };
        Ok(Some(Repair {
            issue: issue.clone(),
            kind,
            action,
            issue_json: issue_json(&current, issue)?,
            detail: Value::Null,
        }))
    }

    /// A blocker the store last saw open (or never saw) that Gitea shows closed or deleted.
    async fn check_blocker(&self, blocker: &IssueRef) -> Result<Option<Repair>, ReconcileError> {
        let snapshot = self.store.get_issue_snapshot(blocker).await?;
        if snapshot.as_ref().is_some_and(|s| !s.state.is_open()) {
            return Ok(None);
        }
        self.pacer.wait().await;
        match self.gitea.get_issue(blocker).await {
            Ok(current) if current.is_open() => Ok(None),
            Ok(current) if current.issue_ref().as_ref() == Some(blocker) => Ok(Some(Repair {
                issue: blocker.clone(),
                kind: ChangeKind::BlockerClosed,
                action: "closed",
                issue_json: issue_json(&current, blocker)?,
                detail: Value::Null,
            })),
            // Closed or moved elsewhere: gone from this repository either way.
            Ok(_) => Ok(Some(self.gone(blocker, ChangeKind::BlockerClosed).await?)),
            Err(err) if err.is_not_found() => {
                Ok(Some(self.gone(blocker, ChangeKind::BlockerClosed).await?))
            }
            Err(err) => Err(err.into()),
        }
    }

    /// A `deleted` repair for an issue Gitea no longer has here, described by what the store
    /// last saw (Gitea cannot describe it any more).
    async fn gone(&self, issue: &IssueRef, kind: ChangeKind) -> Result<Repair, ReconcileError> {
        let snapshot = self.store.get_issue_snapshot(issue).await?;
        Ok(Repair {
            issue: issue.clone(),
            kind,
            action: "deleted",
            issue_json: snapshot_json(issue, snapshot.as_ref()),
            detail: Value::Null,
        })
    }

    /// Records the repair as a pending inbox row.
    async fn inject(
        &self,
        run_id: &str,
        repair: Repair,
    ) -> Result<ReconcileChange, ReconcileError> {
        let Repair {
            issue,
            kind,
            action,
            issue_json,
            detail,
        } = repair;
        let owner = issue.repo.owner();
        let body = json!({
            "action": action,
            "number": issue.number,
            "issue": issue_json,
            "repository": {
                "id": 0,
                "name": issue.repo.name(),
                "full_name": issue.repo.to_string(),
                "owner": {"id": 0, "login": owner, "username": owner},
            },
            "sender": {"id": 0, "login": RECONCILER_SENDER, "username": RECONCILER_SENDER},
            "mosaic_reconcile": {"reason": kind.as_str(), "detail": detail},
        });
        let body = serde_json::to_vec(&body).map_err(|err| ReconcileError::Payload {
            issue: issue.clone(),
            reason: err.to_string(),
        })?;
        let body_sha256: [u8; 32] = Sha256::digest(&body).into();
        // Named by its content, not by the run: the same repair found again by a later run is
        // the same delivery (a duplicate), while a new body under a new id would be handled
        // again as a possible replay.
        let content: String = body_sha256[..8]
            .iter()
            .map(|byte| format!("{byte:02x}"))
            .collect();
        let delivery_id = format!(
            "reconcile-{content}-{owner}-{}-{}-{action}",
            issue.repo.name(),
            issue.number
        );
        let event_type = match action {
            "assigned" | "unassigned" => "issue_assign",
            _ => "issues",
        };
        let outcome = self
            .store
            .record_delivery(NewDelivery {
                delivery_id: Some(delivery_id.clone()),
                event: "issues".to_owned(),
                event_type: Some(event_type.to_owned()),
                action: Some(action.to_owned()),
                repository: Some(issue.repo.to_string()),
                issue_number: Some(issue.number),
                body_sha256,
                body,
                status: IntakeStatus::Pending,
                received_at: Utc::now(),
            })
            .await?;
        let recorded = match outcome {
            RecordOutcome::Recorded { id } | RecordOutcome::PossibleReplay { id, .. } => {
                self.stats.count(kind);
                tracing::info!(%issue, kind = kind.as_str(), action, inbox_id = id, %delivery_id, run = run_id, "reconciliation: synthetic delivery recorded");
                true
            }
            RecordOutcome::Duplicate { existing_id } => {
                self.stats.duplicates.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(%issue, kind = kind.as_str(), existing_id, "reconciliation: this repair was already recorded");
                false
            }
        };
        Ok(ReconcileChange {
            issue,
            kind,
            action: action.to_owned(),
            delivery_id,
            recorded,
        })
    }

    /// Runs at start and every `interval_secs` until cancelled; a failed run is logged and
    /// tried again at the next interval.
    pub async fn run(self, cancel: CancellationToken) {
        let interval = Duration::from_secs(self.config.interval_secs.max(1));
        loop {
            let started = tokio::time::Instant::now();
            tokio::select! {
                () = cancel.cancelled() => return,
                result = self.run_once() => match result {
                    Ok(report) => {
                        let level_info = !report.changes.is_empty() || !report.errors.is_empty();
                        if level_info {
                            tracing::info!(run = %report.run_id, open_assigned = report.open_assigned, coordinated = report.coordinated, recorded = report.recorded(), errors = report.errors.len(), elapsed_ms = started.elapsed().as_millis() as u64, "reconciliation run finished");
                        } else {
                            tracing::debug!(run = %report.run_id, open_assigned = report.open_assigned, coordinated = report.coordinated, "reconciliation run: nothing to repair");
                        }
                    }
                    Err(err) => {
                        tracing::error!(error = %err, retry_in_secs = interval.as_secs(), "reconciliation run failed");
                    }
                },
            }
            tokio::select! {
                () = cancel.cancelled() => return,
                () = tokio::time::sleep(interval) => {}
            }
        }
    }
}

/// The API's issue as a webhook's `issue` object (the shapes agree on every field the
/// coordinator reads).
fn issue_json(issue: &Issue, issue_ref: &IssueRef) -> Result<Value, ReconcileError> {
    serde_json::to_value(issue).map_err(|err| ReconcileError::Payload {
        issue: issue_ref.clone(),
        reason: err.to_string(),
    })
}

/// An `issue` object from the stored snapshot, for an issue Gitea no longer shows here. It
/// reads as closed, so the stored snapshot says "gone" afterwards and the next run does not
/// repair it again; its time is the snapshot's (or the epoch), so the body is deterministic
/// and a repeated repair is recognised as a duplicate.
fn snapshot_json(issue: &IssueRef, snapshot: Option<&IssueSnapshot>) -> Value {
    let user = |login: &str| json!({"id": 0, "login": login, "username": login});
    let at = snapshot.map_or(chrono::DateTime::UNIX_EPOCH, |s| s.updated_at);
    json!({
        "id": 0,
        "number": issue.number,
        "title": snapshot.map(|s| s.title.as_str()).unwrap_or_default(),
        "body": snapshot.map(|s| s.body.as_str()).unwrap_or_default(),
        "labels": snapshot
            .map(|s| s.labels.iter().map(|name| json!({"id": 0, "name": name})).collect::<Vec<_>>())
            .unwrap_or_default(),
        "user": user("ghost"),
        "assignees": snapshot
            .map(|s| s.assignees.iter().map(|login| user(login)).collect::<Vec<_>>())
            .unwrap_or_default(),
        "state": "closed",
        "created_at": at,
        "updated_at": at,
        "html_url": snapshot.and_then(|s| s.html_url.clone()).unwrap_or_default(),
    })
}
