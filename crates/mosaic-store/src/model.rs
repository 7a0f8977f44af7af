//! Plain records the store reads and writes. Timestamps are UTC; the store keeps them with
//! microsecond precision.

use chrono::{DateTime, Utc};
use mosaic_domain::events::TrackerState;
use mosaic_domain::{IssueMetadata, IssueRef, IssueState};
use serde::Serialize;

/// Identifier of an inbox row; increases with every recorded delivery.
pub type DeliveryRowId = i64;
/// Identifier of an outbox item; increases with every enqueued write.
pub type OutboxId = i64;
/// Identifier of a recorded rotation; increases with every rotation recorded.
pub type RotationRowId = i64;

/// The status a delivery is recorded with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum IntakeStatus {
    /// To be handled by the worker.
    Pending,
    /// Verified but not acted on (push, pull requests…).
    Ignored,
}

/// Where an inbox row stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryStatus {
    Pending,
    Processed,
    Ignored,
    /// The same delivery id or body was recorded before; never processed.
    Duplicate,
    /// Gave up after the maximum number of attempts.
    Failed,
}

impl DeliveryStatus {
    pub const ALL: [Self; 5] = [
        Self::Pending,
        Self::Processed,
        Self::Ignored,
        Self::Duplicate,
        Self::Failed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Processed => "processed",
            Self::Ignored => "ignored",
            Self::Duplicate => "duplicate",
            Self::Failed => "failed",
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|status| status.as_str() == name)
    }
}

impl From<IntakeStatus> for DeliveryStatus {
    fn from(status: IntakeStatus) -> Self {
        match status {
            IntakeStatus::Pending => Self::Pending,
            IntakeStatus::Ignored => Self::Ignored,
        }
    }
}

/// A verified delivery to record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewDelivery {
    /// `X-Gitea-Delivery` (or `X-GitHub-Delivery`), when sent.
    pub delivery_id: Option<String>,
    pub event: String,
    pub event_type: Option<String>,
    pub action: Option<String>,
    /// `owner/name`, when the payload names one.
    pub repository: Option<String>,
    pub issue_number: Option<u64>,
    /// SHA-256 of the verified JSON body; the second deduplication key.
    pub body_sha256: [u8; 32],
    pub body: Vec<u8>,
    pub status: IntakeStatus,
    pub received_at: DateTime<Utc>,
}

/// What recording a delivery did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "outcome")]
pub enum RecordOutcome {
    /// A new inbox row.
    Recorded { id: DeliveryRowId },
    /// The delivery id was seen before (or, without an id, the body). The attempt is kept as
    /// a `duplicate` row for auditing; `existing_id` is the original row.
    Duplicate { existing_id: DeliveryRowId },
    /// A new inbox row whose body is byte for byte that of row `replay_of`, under a new
    /// delivery id: a replay of an old delivery, or a real repeat (Gitea's timestamps have
    /// one-second resolution). It is handled; the handler confirms with Gitea first.
    PossibleReplay {
        id: DeliveryRowId,
        replay_of: DeliveryRowId,
    },
}

/// A pending inbox row, with its body, as the worker gets it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    pub id: DeliveryRowId,
    pub delivery_id: Option<String>,
    pub event: String,
    pub event_type: Option<String>,
    pub action: Option<String>,
    pub repository: Option<String>,
    pub issue_number: Option<u64>,
    pub body_sha256: [u8; 32],
    pub body: Vec<u8>,
    pub status: DeliveryStatus,
    pub attempts: u32,
    pub last_error: Option<String>,
    pub received_at: DateTime<Utc>,
    pub next_attempt_at: DateTime<Utc>,
    /// For a possible replay: the earlier row with the same body
    /// ([`RecordOutcome::PossibleReplay`]).
    pub replay_of: Option<DeliveryRowId>,
}

/// An inbox row without its body, for listings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeliverySummary {
    pub id: DeliveryRowId,
    pub delivery_id: Option<String>,
    pub event: String,
    pub event_type: Option<String>,
    pub action: Option<String>,
    pub repository: Option<String>,
    pub issue_number: Option<u64>,
    /// Lower-case hex.
    pub body_sha256: String,
    pub status: DeliveryStatus,
    /// For a duplicate: the row it repeats.
    pub duplicate_of: Option<DeliveryRowId>,
    pub attempts: u32,
    pub last_error: Option<String>,
    pub received_at: DateTime<Utc>,
    pub processed_at: Option<DateTime<Utc>>,
}

/// How many delivery bodies (rows) are kept and the bytes they take as stored (compressed),
/// or how many a retention run removed.
pub use mosaic_domain::Volume;

/// Inbox rows per status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct DeliveryCounts {
    pub pending: u64,
    pub processed: u64,
    pub ignored: u64,
    pub duplicate: u64,
    pub failed: u64,
}

/// The tracker's view of an issue, as the last delivery (or reconciliation) described it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct IssueSnapshot {
    pub issue: IssueRef,
    pub title: String,
    pub body: String,
    pub labels: Vec<String>,
    pub assignees: Vec<String>,
    pub state: TrackerState,
    /// The tracker's `updated_at`; an older snapshot never replaces a newer one.
    pub updated_at: DateTime<Utc>,
    pub html_url: Option<String>,
    /// How many comments the issue had (Gitea's count; `None` when not known).
    pub comments: Option<u64>,
}

/// What recovery needs of a stored snapshot: whether the tracker has the issue open, and its
/// labels (for queue priority).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SnapshotSummary {
    pub state: TrackerState,
    pub labels: Vec<String>,
}

impl From<IssueSnapshot> for SnapshotSummary {
    fn from(snapshot: IssueSnapshot) -> Self {
        Self {
            state: snapshot.state,
            labels: snapshot.labels,
        }
    }
}

/// Whether a snapshot write changed the stored snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SnapshotOutcome {
    Stored,
    /// The stored snapshot is newer; nothing changed.
    KeptNewer,
}

/// A coordinated issue: its queue state and what the coordinator decided about it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct IssueRecord {
    pub issue: IssueRef,
    pub state: IssueState,
    pub metadata: Option<IssueMetadata>,
    pub assigned_agent: Option<String>,
    /// Estimated context in tokens (from the metadata, kept as a column for queue queries).
    pub estimate: Option<u64>,
    /// Higher runs first (the engine maps priority labels to numbers).
    pub priority: i32,
    pub queued_at: Option<DateTime<Utc>>,
    /// Sessions started for this issue.
    pub attempts: u32,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cost_usd: f64,
    pub updated_at: DateTime<Utc>,
}

impl IssueRecord {
    /// A fresh record in `state`, with nothing decided yet.
    pub fn new(issue: IssueRef, state: IssueState, at: DateTime<Utc>) -> Self {
        Self {
            issue,
            state,
            metadata: None,
            assigned_agent: None,
            estimate: None,
            priority: 0,
            queued_at: None,
            attempts: 0,
            input_tokens: 0,
            output_tokens: 0,
            cost_usd: 0.0,
            updated_at: at,
        }
    }
}

/// One state change of a coordinated issue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StateTransition {
    /// The state the change starts from; `None` for an issue the store has not seen.
    /// The store refuses the change when the stored state differs (a lost update).
    pub from: Option<IssueState>,
    pub to: IssueState,
    /// What caused it: `delivery:42`, `reconcile`, `session:abc succeeded`…
    pub cause: String,
    pub at: DateTime<Utc>,
}

/// A recorded transition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TransitionRecord {
    pub id: i64,
    pub issue: IssueRef,
    pub from: Option<IssueState>,
    pub to: IssueState,
    pub cause: String,
    pub at: DateTime<Utc>,
}

/// A Gitea write to deliver later (invariant 4: enqueued with the state change).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NewOutboxItem {
    pub issue: IssueRef,
    /// Unique per intended write; enqueuing a key twice keeps the first (idempotent replays).
    pub idempotency_key: String,
    /// What to do (`comment`, `add_labels`, …); the outbox worker interprets it.
    pub kind: String,
    /// JSON arguments of the write.
    pub payload: serde_json::Value,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OutboxStatus {
    Pending,
    Done,
    /// Given up; no longer blocks later writes to the issue.
    Failed,
}

impl OutboxStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Done => "done",
            Self::Failed => "failed",
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        [Self::Pending, Self::Done, Self::Failed]
            .into_iter()
            .find(|status| status.as_str() == name)
    }
}

/// A stored outbox item.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OutboxItem {
    pub id: OutboxId,
    pub issue: IssueRef,
    pub idempotency_key: String,
    pub kind: String,
    pub payload: serde_json::Value,
    pub status: OutboxStatus,
    pub attempts: u32,
    pub last_error: Option<String>,
    pub next_attempt_at: DateTime<Utc>,
    pub created_at: DateTime<Utc>,
}

/// The outbox at a glance, for `/health` and `/metrics`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct OutboxBacklog {
    pub pending: u64,
    pub failed: u64,
    pub oldest_pending_at: Option<DateTime<Utc>>,
}

/// One blocked-by edge: `issue` waits for `blocker`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct DependencyEdge {
    pub issue: IssueRef,
    pub blocker: IssueRef,
}

/// How a session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SessionOutcome {
    Succeeded,
    Failed,
    /// Stalled, over its time limit, or cancelled: the process group was killed.
    Killed,
    /// Closed for a rotation; the work continues in the next session.
    Rotated,
    /// Running when the coordinator stopped; found at restart.
    Interrupted,
}

impl SessionOutcome {
    pub const ALL: [Self; 5] = [
        Self::Succeeded,
        Self::Failed,
        Self::Killed,
        Self::Rotated,
        Self::Interrupted,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Killed => "killed",
            Self::Rotated => "rotated",
            Self::Interrupted => "interrupted",
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|outcome| outcome.as_str() == name)
    }
}

/// A started agent session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NewSession {
    pub id: String,
    pub agent: String,
    pub issue: IssueRef,
    pub pid: Option<u32>,
    pub started_at: DateTime<Utc>,
}

/// How and when a session ended, with what it consumed.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SessionEnd {
    pub session_id: String,
    pub ended_at: DateTime<Utc>,
    pub outcome: SessionOutcome,
    /// The agent's summary or the failure reason.
    pub detail: Option<String>,
    /// The last figures the agent reported, whatever ended the session; input tokens are the
    /// uncached ones, cache reads and writes are kept apart (they are priced differently).
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cache_read_tokens: u64,
    pub cache_creation_tokens: u64,
    pub cost_usd: f64,
}

/// What a running session's agent reported it spent so far (cumulative figures, the latest
/// replacing the earlier ones).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct SessionSpend {
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cache_read_tokens: u64,
    pub cache_creation_tokens: u64,
    pub cost_usd: f64,
}

/// A stored session; `ended_at` is `None` while it runs.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SessionRecord {
    pub id: String,
    pub agent: String,
    pub issue: IssueRef,
    pub pid: Option<u32>,
    pub started_at: DateTime<Utc>,
    pub ended_at: Option<DateTime<Utc>>,
    pub outcome: Option<SessionOutcome>,
    pub detail: Option<String>,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cache_read_tokens: u64,
    pub cache_creation_tokens: u64,
    pub cost_usd: f64,
}

/// A session rotation (the sessions issue's `SessionRotation`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RotationRecord {
    pub old_session_id: String,
    /// `None` when the new session could not be spawned.
    pub new_session_id: Option<String>,
    pub agent_type: String,
    pub issue: IssueRef,
    pub next_issue: Option<IssueRef>,
    pub context_before_tokens: u64,
    pub context_before_percent: f64,
    pub success: bool,
    pub error_message: Option<String>,
    pub at: DateTime<Utc>,
}

/// A rotation as read back, with its row id: the cursor of [`crate::Store::recent_rotations`]
/// (times repeat, ids do not). Serialised flat: `id` beside the rotation's fields.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StoredRotation {
    pub id: RotationRowId,
    #[serde(flatten)]
    pub rotation: RotationRecord,
}

/// A compaction (the sessions issue's `CompactionResult`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CompactionRecord {
    pub session_id: String,
    pub issue: IssueRef,
    pub before_tokens: u64,
    pub after_tokens: u64,
    pub freed_tokens: u64,
    pub freed_percent: f64,
    pub success: bool,
    pub at: DateTime<Utc>,
}

/// An issue's git workspace as the coordinator prepared it: a worktree at `path` on `branch`,
/// made from `base_branch`. The record outlives the worktree (`removed_at`), since the branch and
/// its pull request stay in Gitea.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WorkspaceRecord {
    pub issue: IssueRef,
    pub path: String,
    pub branch: String,
    pub base_branch: String,
    /// The commit last pushed from the branch.
    pub head_commit: Option<String>,
    pub prepared_at: DateTime<Utc>,
    pub removed_at: Option<DateTime<Utc>>,
}

/// A pull request in Gitea, as the outbox saw it opened (or found it open).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PullRequestLink {
    pub number: u64,
    /// Its web page (`html_url`); empty when Gitea gave none.
    pub url: String,
}

/// An issue's workspace and the pull request of its branch, once there is one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct IssueWorkspace {
    #[serde(flatten)]
    pub workspace: WorkspaceRecord,
    pub pull_request: Option<PullRequestLink>,
}

/// One quality gate's run on an issue's branch: which attempt, the session whose result it
/// checked, and what came of it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GateRunRecord {
    pub issue: IssueRef,
    pub attempt: u32,
    pub session_id: Option<String>,
    pub gate: String,
    pub command: Vec<String>,
    pub required: bool,
    /// `passed`, `failed`, `timed_out`, `could_not_start`, `below_coverage` or
    /// `no_coverage_figure`.
    pub status: String,
    /// Why it did not pass (empty when it passed).
    pub detail: String,
    pub duration_ms: u64,
    /// The end of its output, redacted and bounded.
    pub output_tail: String,
    pub coverage_percent: Option<f64>,
    pub at: DateTime<Utc>,
}

/// One LLM call's usage.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LlmUsageRecord {
    pub provider: String,
    pub model: String,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cost_usd: f64,
    /// The issue the call was about, when there is one.
    pub issue: Option<IssueRef>,
    pub at: DateTime<Utc>,
}

/// What the sessions of one agent profile spent, summed (ended sessions and live ones alike,
/// as last recorded).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AgentSpendTotal {
    pub agent: String,
    pub sessions: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cache_read_tokens: u64,
    pub cache_creation_tokens: u64,
    pub cost_usd: f64,
}

/// A coordinator sharing the store, as it says it is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Peer {
    /// Unique per process (made at start), so a restarted coordinator is a new peer.
    pub id: String,
    /// What an operator recognises it by: host and listening address.
    pub name: String,
    pub leading: bool,
    /// Agent sessions it runs at most at once (its `max_concurrent_agents`); 0 runs none.
    pub capacity: u32,
}

/// A peer and when the store last heard from it, by the store's clock (so coordinators whose
/// clocks differ still agree on who is alive).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PeerBeat {
    #[serde(flatten)]
    pub peer: Peer,
    pub at: DateTime<Utc>,
}

/// Usage summed per provider and model.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LlmUsageTotal {
    pub provider: String,
    pub model: String,
    pub calls: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cost_usd: f64,
}

/// Everything one state change writes, committed atomically (invariant 4).
#[derive(Debug, Clone, PartialEq)]
pub struct TransitionBatch {
    /// The issue's full record after the change (inserted or replaced).
    pub issue: IssueRecord,
    /// The state change, recorded in the history; checked against the stored state.
    /// `None` for updates that keep the state (new metadata, token totals).
    pub transition: Option<StateTransition>,
    /// Gitea writes the change causes.
    pub outbox: Vec<NewOutboxItem>,
    /// When set, replaces the issue's blocked-by edges.
    pub blocked_by: Option<Vec<IssueRef>>,
    pub session_started: Option<NewSession>,
    pub session_ended: Option<SessionEnd>,
}

impl TransitionBatch {
    /// A batch that only stores `issue`.
    pub fn update(issue: IssueRecord) -> Self {
        Self {
            issue,
            transition: None,
            outbox: Vec::new(),
            blocked_by: None,
            session_started: None,
            session_ended: None,
        }
    }
}

/// What handling an inbox row wrote; committed together with marking the row processed.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct DeliveryEffects {
    pub snapshot: Option<IssueSnapshot>,
    pub transitions: Vec<TransitionBatch>,
}

/// What completing a delivery did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CompletionOutcome {
    /// The effects were written and the row marked processed.
    Completed,
    /// The row was already processed; nothing was written again (invariant 3).
    AlreadyProcessed,
}

/// How the store's writes have been going, for `/health`: a webhook is accepted only if its
/// write succeeds, so a failing write path must show even when reads still work.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct WriteOutcomes {
    /// When a group of write requests last went through without a database failure.
    pub last_success: Option<DateTime<Utc>>,
    /// The last database failure of a write (a caller's conflict or bad input is none).
    pub last_failure: Option<WriteFailure>,
}

/// One failed write, as [`WriteOutcomes`] reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WriteFailure {
    pub at: DateTime<Utc>,
    pub error: String,
}

/// Writer counters: `writes / commits` is the average group size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct StoreStats {
    /// Transactions committed by the writer.
    pub commits: u64,
    /// Write requests handled (succeeded or failed).
    pub writes: u64,
}

/// A session the leader asks for, to be run by whichever coordinator sharing the store claims it
/// first (each within its own capacity). The task and the commands are the engine's JSON: the
/// store keeps them as text and never reads them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRequest {
    /// The session's id, also the id of its `sessions` row and of the process marker.
    pub session_id: String,
    pub issue: IssueRef,
    pub agent: String,
    pub task_json: String,
}

/// A claimant's latest word on a session it runs. Reporting is also its heartbeat.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionReport {
    pub session_id: String,
    /// The claimant's peer id ([`Peer::id`]).
    pub claimant: String,
    pub state_json: String,
    /// The session has ended; `state_json` holds its outcome. Final: later reports are ignored.
    pub ended: bool,
}

/// A command the leader left for the claimant of a session, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionCommand {
    pub seq: i64,
    pub command_json: String,
}

/// What a claimant is told when it reports.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SessionOrders {
    /// The session is no longer wanted (cancelled by the leader, or claimed by someone else):
    /// end it.
    pub cancelled: bool,
    /// Commands after the `after_seq` the claimant gave, oldest first.
    pub commands: Vec<SessionCommand>,
}

/// The leader's view of a requested session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRequestView {
    pub session_id: String,
    /// The claimant's peer id, once claimed.
    pub claimant: Option<String>,
    /// The claimant's latest report.
    pub state_json: Option<String>,
    pub ended: bool,
    pub cancelled: bool,
    /// Milliseconds since the claim or the latest report, by the store's clock; `None` while
    /// unclaimed.
    pub silent_ms: Option<u64>,
}
