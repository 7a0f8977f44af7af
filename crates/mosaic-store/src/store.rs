//! The backend-neutral store interface.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use mosaic_domain::{IssueRef, IssueState};

use crate::error::StoreError;
use crate::model::*;

/// Durable state of the coordinator. Every method that returns `Ok` after a write has
/// committed that write; a read started afterwards sees it.
///
/// Used as `Arc<dyn Store>`; backends: `mosaic_store_sqlite::SqliteStore` and
/// `mosaic_store_postgres::PostgresStore`, held to the same conformance suite
/// (`tests/conformance`). A snapshot is written with the delivery it came with
/// ([`Store::complete_delivery`]), never older over newer.
#[async_trait]
pub trait Store: Send + Sync + std::fmt::Debug {
    // ----- inbox -----

    /// Records a verified delivery, deduplicated by delivery id and by body hash.
    async fn record_delivery(&self, delivery: NewDelivery) -> Result<RecordOutcome, StoreError>;

    /// Pending rows whose `next_attempt_at <= now`, oldest first.
    async fn pending_deliveries(
        &self,
        now: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<Delivery>, StoreError>;

    /// Marks a pending row processed. Already processed: `Ok` (idempotent).
    async fn mark_processed(&self, id: DeliveryRowId) -> Result<(), StoreError>;

    /// Counts a failed attempt; the row stays pending until `next_attempt_at`.
    async fn mark_failed_attempt(
        &self,
        id: DeliveryRowId,
        error: &str,
        next_attempt_at: DateTime<Utc>,
    ) -> Result<(), StoreError>;

    /// Gives up on a pending row: status `failed` with the last error.
    async fn mark_dead(&self, id: DeliveryRowId, error: &str) -> Result<(), StoreError>;

    /// Newest rows first, without bodies; with `before`, only rows older than that row (the
    /// cursor of the next page).
    async fn recent_deliveries(
        &self,
        before: Option<DeliveryRowId>,
        limit: u32,
    ) -> Result<Vec<DeliverySummary>, StoreError>;

    async fn delivery_counts(&self) -> Result<DeliveryCounts, StoreError>;

    /// Whether a delivery about `issue` is recorded and not handled yet: what the tracker says
    /// of the issue may be newer than its stored snapshot.
    async fn has_pending_delivery(&self, issue: &IssueRef) -> Result<bool, StoreError>;

    /// Writes a delivery's effects and marks it processed in one transaction. A row that is
    /// already processed is left alone and nothing is written ([`CompletionOutcome::AlreadyProcessed`]).
    async fn complete_delivery(
        &self,
        id: DeliveryRowId,
        effects: DeliveryEffects,
    ) -> Result<CompletionOutcome, StoreError>;

    /// [`Store::complete_delivery`] with only a snapshot.
    async fn process_delivery_with_snapshot(
        &self,
        id: DeliveryRowId,
        snapshot: IssueSnapshot,
    ) -> Result<CompletionOutcome, StoreError> {
        self.complete_delivery(
            id,
            DeliveryEffects {
                snapshot: Some(snapshot),
                transitions: Vec::new(),
            },
        )
        .await
    }

    // ----- issue snapshots -----

    async fn get_issue_snapshot(
        &self,
        issue: &IssueRef,
    ) -> Result<Option<IssueSnapshot>, StoreError>;

    /// The state and labels of the stored snapshot of each of `issues`, in the same order
    /// (`None` where there is none). For recovery, which needs them for every coordinated issue:
    /// one read instead of one per issue. The default asks [`Store::get_issue_snapshot`] per issue.
    async fn issue_snapshot_summaries(
        &self,
        issues: Vec<IssueRef>,
    ) -> Result<Vec<Option<SnapshotSummary>>, StoreError> {
        let mut found = Vec::with_capacity(issues.len());
        for issue in &issues {
            let snapshot = self.get_issue_snapshot(issue).await?;
            found.push(snapshot.map(SnapshotSummary::from));
        }
        Ok(found)
    }

    // ----- coordinated issues -----

    /// Applies every batch in one transaction: all of them or none.
    /// Fails with [`StoreError::Conflict`] when a transition's `from` is not the stored state.
    async fn commit_transitions(&self, batches: Vec<TransitionBatch>) -> Result<(), StoreError>;

    async fn get_issue(&self, issue: &IssueRef) -> Result<Option<IssueRecord>, StoreError>;

    /// Issues in any of `states` (all issues when empty), in `IssueRef` order (owner, name,
    /// number) on every backend, whatever its text collation.
    async fn list_issues(&self, states: &[IssueState]) -> Result<Vec<IssueRecord>, StoreError>;

    /// How many coordinated issues are in each state (states with none left out), for
    /// `/metrics` on any coordinator: one query, not a read of every record.
    async fn issue_state_counts(&self) -> Result<Vec<(IssueState, u64)>, StoreError>;

    /// The issue's transitions, oldest first.
    async fn issue_history(&self, issue: &IssueRef) -> Result<Vec<TransitionRecord>, StoreError>;

    /// Every blocked-by edge (to rebuild the dependency graph at start).
    async fn dependency_edges(&self) -> Result<Vec<DependencyEdge>, StoreError>;

    // ----- outbox -----

    /// The next writes to deliver: for each issue only its oldest pending item (writes to one
    /// issue apply in order), and only when `next_attempt_at <= now`; oldest first.
    async fn next_outbox_items(
        &self,
        now: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<OutboxItem>, StoreError>;

    async fn mark_outbox_done(&self, id: OutboxId) -> Result<(), StoreError>;

    /// A failed delivery attempt: retried at `retry_at`, or given up (`failed`) when `None`.
    async fn mark_outbox_failed(
        &self,
        id: OutboxId,
        error: &str,
        retry_at: Option<DateTime<Utc>>,
    ) -> Result<(), StoreError>;

    async fn outbox_backlog(&self) -> Result<OutboxBacklog, StoreError>;

    /// All items of one issue, in order (for the API and tests).
    async fn outbox_for_issue(&self, issue: &IssueRef) -> Result<Vec<OutboxItem>, StoreError>;

    /// The newest outbox item's id (`None`: none yet). A worker starting reads it: every item
    /// after it is certainly new, whatever the clocks of the coordinators that wrote them.
    async fn latest_outbox_id(&self) -> Result<Option<OutboxId>, StoreError>;

    // ----- sessions, rotations, compactions -----

    /// Sessions without an end (running, or interrupted by a crash), oldest first.
    async fn open_sessions(&self) -> Result<Vec<SessionRecord>, StoreError>;

    async fn sessions_for_issue(&self, issue: &IssueRef) -> Result<Vec<SessionRecord>, StoreError>;

    /// Stores what a running session spent so far, so a crash loses none of it (recovery ends
    /// the session with these figures). Ignored once the session has ended.
    async fn record_session_spend(
        &self,
        session_id: &str,
        spend: SessionSpend,
    ) -> Result<(), StoreError>;

    /// Records the process of a session started without one known (a session another
    /// coordinator claimed, once it says which process runs it); returns whether a session
    /// row not ended and without a process took it.
    async fn record_session_process(&self, session_id: &str, pid: u32) -> Result<bool, StoreError>;

    async fn record_rotation(&self, rotation: RotationRecord) -> Result<(), StoreError>;

    /// Newest first; with `before`, only rotations recorded before that row (the cursor of the
    /// next page: the `id` of the last one seen).
    async fn recent_rotations(
        &self,
        before: Option<RotationRowId>,
        limit: u32,
    ) -> Result<Vec<StoredRotation>, StoreError>;

    async fn record_compaction(&self, compaction: CompactionRecord) -> Result<(), StoreError>;

    /// Oldest first.
    async fn compactions_for_session(
        &self,
        session_id: &str,
    ) -> Result<Vec<CompactionRecord>, StoreError>;

    // ----- leadership among coordinators sharing the store -----

    /// Takes the leadership of the coordinators that share this store when no other holds it;
    /// `Ok(true)` while this process holds it. One coordinator at a time decides (the inbox,
    /// dispatch, the outbox); the others only record deliveries. SQLite holds an exclusive lock
    /// on `<database>.leader`, PostgreSQL an advisory lock on a connection of its own: either
    /// ends with the process.
    async fn try_lead(&self) -> Result<bool, StoreError>;

    /// Whether this process still holds the leadership it took. When it is lost, the process
    /// must stop deciding.
    async fn still_leading(&self) -> Result<bool, StoreError>;

    /// Records that a coordinator sharing the store is alive now, by the store's clock
    /// (replacing its earlier beat); beats older than a day are forgotten.
    async fn beat_peer(&self, peer: &Peer) -> Result<(), StoreError>;

    /// The coordinators heard from within `within` of now (the store's clock), in name order.
    async fn peers_alive(&self, within: std::time::Duration) -> Result<Vec<PeerBeat>, StoreError>;

    // ----- sessions shared among coordinators -----

    /// Asks for a session to be run by any coordinator sharing the store. Written by the
    /// leader (fenced like its other writes); a repeated id is refused as `Conflict`.
    async fn request_session(&self, request: &SessionRequest) -> Result<(), StoreError>;

    /// Claims the oldest request that is unclaimed, not cancelled and of one of `agents`, when
    /// `claimant` (by its id) has fewer than its `capacity` claimed sessions not ended; rows
    /// another claimant is claiming are skipped, never waited for. Counting and claiming are
    /// one transaction. The claimant's name is kept with the claim. A request whose issue has
    /// another session claimed, not ended and heard from within `busy_within` is passed over:
    /// that one is still running or winding down (pushing its work), and an issue never has two
    /// live sessions; one silent for longer has lost its claimant.
    async fn claim_session(
        &self,
        claimant: &Peer,
        agents: &[String],
        busy_within: std::time::Duration,
    ) -> Result<Option<SessionRequest>, StoreError>;

    /// Stores the claimant's report (ignored when the session is claimed by another or has
    /// ended) and answers with the commands after `after_seq` and whether the session is still
    /// wanted.
    async fn report_session(
        &self,
        report: &SessionReport,
        after_seq: i64,
    ) -> Result<SessionOrders, StoreError>;

    /// Leaves a command for the session's claimant; returns its sequence number (increasing
    /// per store). Written by the leader. The same text for the same session is stored once
    /// (its first sequence number is returned): the leader makes each command's text unique, so
    /// a retry after a lost answer does not repeat the command.
    async fn command_session(
        &self,
        session_id: &str,
        command_json: &str,
    ) -> Result<i64, StoreError>;

    /// Cancels the listed requests, or every request not ended when `None` (a new leader
    /// starting); returns how many were newly cancelled. Written by the leader.
    async fn cancel_session_requests(
        &self,
        session_ids: Option<&[String]>,
    ) -> Result<u64, StoreError>;

    /// The listed requests as they stand (unknown ids are left out).
    async fn session_requests(
        &self,
        session_ids: &[String],
    ) -> Result<Vec<SessionRequestView>, StoreError>;

    /// Claimed sessions not ended whose claimant has the given peer `name` but another id: a
    /// coordinator restarted under its old name finds what its previous process ran.
    async fn sessions_left_by(
        &self,
        name: &str,
        current_id: &str,
    ) -> Result<Vec<SessionRequest>, StoreError>;

    // ----- workspaces and pull requests -----

    /// Records (or replaces) the issue's workspace. The pull request recorded for it stays when
    /// the branch is the same and is forgotten when the branch changed.
    async fn put_workspace(&self, workspace: WorkspaceRecord) -> Result<(), StoreError>;

    /// Records the pull request opened from `branch`; ignored unless the issue's workspace is
    /// on that branch (a newer attempt on another branch has its own).
    async fn record_pull_request(
        &self,
        issue: &IssueRef,
        branch: &str,
        pull_request: PullRequestLink,
    ) -> Result<(), StoreError>;

    async fn get_workspace(&self, issue: &IssueRef) -> Result<Option<IssueWorkspace>, StoreError>;

    /// Records one round of quality gate runs (one transaction).
    async fn record_gate_runs(&self, runs: Vec<GateRunRecord>) -> Result<(), StoreError>;

    /// The issue's gate runs, oldest first.
    async fn gate_runs_for_issue(&self, issue: &IssueRef)
    -> Result<Vec<GateRunRecord>, StoreError>;

    // ----- parse cache and LLM usage -----

    async fn cache_get(&self, key: &str) -> Result<Option<String>, StoreError>;

    /// Stores `value_json` (must be valid JSON) under `key`, replacing an older value.
    async fn cache_put(&self, key: &str, value_json: &str) -> Result<(), StoreError>;

    async fn record_llm_usage(&self, usage: LlmUsageRecord) -> Result<(), StoreError>;

    /// Totals per provider and model, ordered by provider then model.
    async fn llm_usage_totals(&self) -> Result<Vec<LlmUsageTotal>, StoreError>;

    /// Agent sessions' tokens and cost summed per agent profile, in name order.
    async fn agent_spend_totals(&self) -> Result<Vec<AgentSpendTotal>, StoreError>;

    // ----- operations -----

    /// Retention: drops the bodies of deliveries received before `before` that are no longer
    /// pending (the row, its hash and status stay, so dedupe and history still work); returns
    /// what was removed.
    async fn prune_delivery_bodies(&self, before: DateTime<Utc>) -> Result<Volume, StoreError>;

    /// Retention: removes the session requests that ended, or were cancelled, before
    /// `before`, with their commands (the sessions' own rows stay); returns how many went.
    async fn prune_session_requests(&self, before: DateTime<Utc>) -> Result<u64, StoreError>;

    /// The delivery bodies the store still holds.
    async fn retained_delivery_bodies(&self) -> Result<Volume, StoreError>;

    /// Proves the store can write: a tiny write through the same path as every other write,
    /// including a delivery insert that is rolled back (so a broken inbox shows here too).
    async fn health_check(&self) -> Result<(), StoreError>;

    /// How the latest writes went (the writer knows without writing again).
    fn write_outcomes(&self) -> WriteOutcomes;

    /// Writer counters since open.
    fn stats(&self) -> StoreStats;
}
