//! The SQL behind every store operation, as plain functions on a connection.
//! Write functions run inside the writer's transaction (one savepoint each); read functions
//! run on a read connection.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use mosaic_domain::events::TrackerState;
use mosaic_domain::{IssueMetadata, IssueRef, IssueState, RepoName};
use mosaic_store::body::{self, BodyCodec, StoredBody};
use mosaic_store::*;
use rusqlite::types::Value;
use rusqlite::{Connection, OptionalExtension, Params, Row, params};

use crate::failure::Failure;

/// Longest error text kept per row; error messages can embed whole responses.
const MAX_ERROR_LEN: usize = 4_000;

// ----- conversions -----

fn micros(at: DateTime<Utc>) -> i64 {
    at.timestamp_micros()
}

fn time_from(column: &'static str, value: i64) -> Result<DateTime<Utc>, StoreError> {
    DateTime::from_timestamp_micros(value)
        .ok_or_else(|| StoreError::corrupt(column, format!("timestamp {value} out of range")))
}

fn opt_time_from(
    column: &'static str,
    value: Option<i64>,
) -> Result<Option<DateTime<Utc>>, StoreError> {
    value.map(|v| time_from(column, v)).transpose()
}

fn to_i64(what: &str, value: u64) -> Result<i64, StoreError> {
    i64::try_from(value)
        .map_err(|_| StoreError::InvalidInput(format!("{what} {value} is too large to store")))
}

fn to_u64(column: &'static str, value: i64) -> Result<u64, StoreError> {
    u64::try_from(value).map_err(|_| StoreError::corrupt(column, format!("negative value {value}")))
}

fn to_u32(column: &'static str, value: i64) -> Result<u32, StoreError> {
    u32::try_from(value)
        .map_err(|_| StoreError::corrupt(column, format!("value {value} out of range")))
}

fn finite(what: &str, value: f64) -> Result<f64, Failure> {
    if value.is_finite() {
        Ok(value)
    } else {
        Err(StoreError::InvalidInput(format!("{what} must be a finite number, got {value}")).into())
    }
}

fn truncate_error(error: &str) -> &str {
    if error.len() <= MAX_ERROR_LEN {
        return error;
    }
    let mut end = MAX_ERROR_LEN;
    while !error.is_char_boundary(end) {
        end -= 1;
    }
    &error[..end]
}

fn repo_from(repo_column: &'static str, repository: &str) -> Result<RepoName, StoreError> {
    repository
        .parse()
        .map_err(|e| StoreError::corrupt(repo_column, format!("{e}")))
}

fn issue_from(
    repo_column: &'static str,
    repository: &str,
    number: i64,
) -> Result<IssueRef, Failure> {
    Ok(IssueRef::new(
        repo_from(repo_column, repository)?,
        to_u64("number", number)?,
    ))
}

/// Repository names met in one bulk read, each parsed once: rows name few repositories, and
/// a parsed name is shared (a clone costs a reference count, not an allocation).
#[derive(Default)]
struct RepoNames(HashMap<String, RepoName>);

impl RepoNames {
    /// Beyond this many distinct names the rest are parsed each time (bounded memory).
    const MAX: usize = 4_096;

    fn issue(
        &mut self,
        repo_column: &'static str,
        repository: &str,
        number: i64,
    ) -> Result<IssueRef, Failure> {
        let repo = match self.0.get(repository) {
            Some(repo) => repo.clone(),
            None => {
                let repo = repo_from(repo_column, repository)?;
                if self.0.len() < Self::MAX {
                    self.0.insert(repository.to_owned(), repo.clone());
                }
                repo
            }
        };
        Ok(IssueRef::new(repo, to_u64("number", number)?))
    }
}

fn issue_key(issue: &IssueRef) -> Result<(String, i64), Failure> {
    Ok((
        issue.repo.to_string(),
        to_i64("issue number", issue.number)?,
    ))
}

fn state_from(column: &'static str, name: &str) -> Result<IssueState, StoreError> {
    name.parse()
        .map_err(|_| StoreError::corrupt(column, format!("unknown issue state `{name}`")))
}

fn tracker_state_name(state: TrackerState) -> &'static str {
    match state {
        TrackerState::Open => "open",
        TrackerState::Closed => "closed",
    }
}

fn tracker_state_from(name: &str) -> Result<TrackerState, Failure> {
    match name {
        "open" => Ok(TrackerState::Open),
        "closed" => Ok(TrackerState::Closed),
        other => Err(StoreError::corrupt("issue_snapshots.state", format!("`{other}`")).into()),
    }
}

fn json_list(column: &'static str, text: &str) -> Result<Vec<String>, StoreError> {
    serde_json::from_str(text).map_err(|e| StoreError::corrupt(column, e.to_string()))
}

fn to_json<T: serde::Serialize>(what: &str, value: &T) -> Result<String, StoreError> {
    serde_json::to_string(value)
        .map_err(|e| StoreError::InvalidInput(format!("{what} cannot be stored as JSON: {e}")))
}

fn hash_from(value: Vec<u8>) -> Result<[u8; 32], StoreError> {
    <[u8; 32]>::try_from(value.as_slice())
        .map_err(|_| StoreError::corrupt("inbox.body_sha256", format!("{} bytes", value.len())))
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut out, b| {
            let _ = write!(out, "{b:02x}");
            out
        })
}

/// Collects every row of a query through a converter that may fail with a typed error.
fn collect<T>(
    conn: &Connection,
    sql: &str,
    params: impl Params,
    mut convert: impl FnMut(&Row<'_>) -> Result<T, Failure>,
) -> Result<Vec<T>, Failure> {
    let mut stmt = conn.prepare_cached(sql)?;
    let mut rows = stmt.query(params)?;
    let mut out = Vec::new();
    while let Some(row) = rows.next()? {
        out.push(convert(row)?);
    }
    Ok(out)
}

// ----- inbox -----

const DELIVERY_COLUMNS: &str = "id, delivery_id, event, event_type, action, repository, \
    issue_number, body_sha256, body, status, attempts, last_error, received_at, next_attempt_at, \
    body_codec, replay_of";

fn delivery_status_from(name: &str) -> Result<DeliveryStatus, StoreError> {
    DeliveryStatus::parse(name)
        .ok_or_else(|| StoreError::corrupt("inbox.status", format!("`{name}`")))
}

fn delivery_from(row: &Row<'_>) -> Result<Delivery, Failure> {
    let status: String = row.get(9)?;
    Ok(Delivery {
        id: row.get(0)?,
        delivery_id: row.get(1)?,
        event: row.get(2)?,
        event_type: row.get(3)?,
        action: row.get(4)?,
        repository: row.get(5)?,
        issue_number: row
            .get::<_, Option<i64>>(6)?
            .map(|n| to_u64("inbox.issue_number", n))
            .transpose()?,
        body_sha256: hash_from(row.get(7)?)?,
        body: match row.get::<_, Option<Vec<u8>>>(8)? {
            Some(stored) => body::decode(&row.get::<_, String>(14)?, stored)?,
            None => Vec::new(),
        },
        status: delivery_status_from(&status)?,
        attempts: to_u32("inbox.attempts", row.get(10)?)?,
        last_error: row.get(11)?,
        received_at: time_from("inbox.received_at", row.get(12)?)?,
        next_attempt_at: time_from("inbox.next_attempt_at", row.get(13)?)?,
        replay_of: row.get(15)?,
    })
}

macro_rules! insert_inbox_sql {
    () => {
        "INSERT INTO inbox (delivery_id, event, event_type, action, repository, issue_number,
             body_sha256, body, body_codec, status, duplicate_of, received_at, next_attempt_at,
             replay_of)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?12, ?13)"
    };
}
/// A new delivery: inserts nothing (0 rows) when its delivery id or body is already taken.
const INSERT_NEW_DELIVERY: &str = concat!(insert_inbox_sql!(), " ON CONFLICT DO NOTHING");
/// A duplicate row, or a possible replay (its body is not unique-indexed).
const INSERT_REPEAT_DELIVERY: &str = insert_inbox_sql!();

/// Records a delivery, or a duplicate row pointing at the delivery it repeats.
///
/// Changes the database with exactly one INSERT whatever happens (the store runs it without a
/// savepoint). The common case, a new delivery, is that INSERT alone: the unique indexes
/// detect a repeat, and only then are the originals looked up.
pub(crate) fn record_delivery(
    conn: &Connection,
    delivery: &NewDelivery,
    stored: &StoredBody,
) -> Result<RecordOutcome, Failure> {
    let issue_number = delivery
        .issue_number
        .map(|n| to_i64("issue number", n))
        .transpose()?;
    let received_at = micros(delivery.received_at);
    let insert = |sql: &str,
                  body: Option<&StoredBody>,
                  status: DeliveryStatus,
                  duplicate_of: Option<i64>,
                  replay_of: Option<i64>| {
        conn.prepare_cached(sql)?.execute(params![
            delivery.delivery_id,
            delivery.event,
            delivery.event_type,
            delivery.action,
            delivery.repository,
            issue_number,
            &delivery.body_sha256[..],
            body.map(|b| &b.bytes),
            body.map_or(BodyCodec::Identity, |b| b.codec).as_str(),
            status.as_str(),
            duplicate_of,
            received_at,
            replay_of,
        ])
    };

    let status = DeliveryStatus::from(delivery.status);
    if insert(INSERT_NEW_DELIVERY, Some(stored), status, None, None)? == 1 {
        return Ok(RecordOutcome::Recorded {
            id: conn.last_insert_rowid(),
        });
    }

    // A unique key is taken: the delivery id first (the same delivery again), else the body.
    let by_id = match &delivery.delivery_id {
        Some(delivery_id) => conn
            .prepare_cached("SELECT id FROM inbox WHERE duplicate_of IS NULL AND delivery_id = ?1")?
            .query_row([delivery_id], |row| row.get::<_, i64>(0))
            .optional()?,
        None => None,
    };
    let existing_id = match by_id {
        Some(id) => id,
        None => {
            let original = conn
                .prepare_cached(
                    "SELECT id FROM inbox
                     WHERE duplicate_of IS NULL AND replay_of IS NULL AND body_sha256 = ?1",
                )?
                .query_row([&delivery.body_sha256[..]], |row| row.get::<_, i64>(0))
                .optional()?
                .ok_or_else(|| {
                    StoreError::Conflict(
                        "the delivery conflicts with a stored one that has neither its id nor its body"
                            .to_owned(),
                    )
                })?;
            // The same body under a new delivery id: Gitea repeats a body byte for byte when
            // the same change happens again within its one-second timestamps, so it is kept
            // and handled; only the handler can tell (by asking Gitea) whether it changes
            // anything. Without an id nothing tells it from a resend, and an ignored event has
            // nothing to handle: a duplicate.
            if delivery.delivery_id.is_some() && delivery.status == IntakeStatus::Pending {
                insert(
                    INSERT_REPEAT_DELIVERY,
                    Some(stored),
                    status,
                    None,
                    Some(original),
                )?;
                return Ok(RecordOutcome::PossibleReplay {
                    id: conn.last_insert_rowid(),
                    replay_of: original,
                });
            }
            original
        }
    };
    // Kept for auditing (who replayed what, when) without a second copy of the body.
    insert(
        INSERT_REPEAT_DELIVERY,
        None,
        DeliveryStatus::Duplicate,
        Some(existing_id),
        None,
    )?;
    Ok(RecordOutcome::Duplicate { existing_id })
}

pub(crate) fn pending_deliveries(
    conn: &Connection,
    now: DateTime<Utc>,
    limit: u32,
) -> Result<Vec<Delivery>, Failure> {
    collect(
        conn,
        &format!(
            "SELECT {DELIVERY_COLUMNS} FROM inbox
             WHERE status = 'pending' AND next_attempt_at <= ?1 ORDER BY id LIMIT ?2"
        ),
        params![micros(now), limit],
        delivery_from,
    )
}

fn delivery_status(conn: &Connection, id: DeliveryRowId) -> Result<DeliveryStatus, Failure> {
    let status: Option<String> = conn
        .prepare_cached("SELECT status FROM inbox WHERE id = ?1")?
        .query_row([id], |row| row.get(0))
        .optional()?;
    match status {
        Some(status) => Ok(delivery_status_from(&status)?),
        None => Err(StoreError::not_found(format!("delivery {id}")).into()),
    }
}

fn not_pending(id: DeliveryRowId, status: DeliveryStatus, operation: &str) -> StoreError {
    StoreError::Conflict(format!(
        "delivery {id} is {}, so it cannot be {operation}",
        status.as_str()
    ))
}

pub(crate) fn mark_processed(conn: &Connection, id: DeliveryRowId) -> Result<(), Failure> {
    match delivery_status(conn, id)? {
        DeliveryStatus::Processed => Ok(()),
        DeliveryStatus::Pending => {
            conn.prepare_cached(
                "UPDATE inbox SET status = 'processed', processed_at = ?2 WHERE id = ?1",
            )?
            .execute(params![id, micros(Utc::now())])?;
            Ok(())
        }
        other => Err(not_pending(id, other, "marked processed").into()),
    }
}

pub(crate) fn mark_failed_attempt(
    conn: &Connection,
    id: DeliveryRowId,
    error: &str,
    next_attempt_at: DateTime<Utc>,
) -> Result<(), Failure> {
    match delivery_status(conn, id)? {
        DeliveryStatus::Pending => {
            conn.prepare_cached(
                "UPDATE inbox SET attempts = attempts + 1, last_error = ?2, next_attempt_at = ?3
                 WHERE id = ?1",
            )?
            .execute(params![id, truncate_error(error), micros(next_attempt_at)])?;
            Ok(())
        }
        other => Err(not_pending(id, other, "retried").into()),
    }
}

pub(crate) fn mark_dead(conn: &Connection, id: DeliveryRowId, error: &str) -> Result<(), Failure> {
    match delivery_status(conn, id)? {
        DeliveryStatus::Failed => Ok(()),
        DeliveryStatus::Pending => {
            conn.prepare_cached(
                "UPDATE inbox SET status = 'failed', attempts = attempts + 1, last_error = ?2,
                     processed_at = ?3
                 WHERE id = ?1",
            )?
            .execute(params![id, truncate_error(error), micros(Utc::now())])?;
            Ok(())
        }
        other => Err(not_pending(id, other, "marked failed").into()),
    }
}

/// Rows whose body retention may drop: handled (not pending), received before `?1`, still
/// holding one. A dropped body is NULL, like a duplicate's, and reads back empty.
const PRUNABLE: &str = "status != 'pending' AND received_at < ?1 AND body IS NOT NULL";

pub(crate) fn prune_delivery_bodies(
    conn: &Connection,
    before: DateTime<Utc>,
) -> Result<Volume, Failure> {
    let before = micros(before);
    let (rows, bytes): (i64, i64) = conn.query_row(
        &format!("SELECT COUNT(*), COALESCE(SUM(LENGTH(body)), 0) FROM inbox WHERE {PRUNABLE}"),
        params![before],
        |row| Ok((row.get(0)?, row.get(1)?)),
    )?;
    conn.execute(
        &format!("UPDATE inbox SET body = NULL WHERE {PRUNABLE}"),
        params![before],
    )?;
    Ok(Volume {
        count: to_u64("pruned rows", rows)?,
        bytes: to_u64("pruned bytes", bytes)?,
    })
}

pub(crate) fn retained_delivery_bodies(conn: &Connection) -> Result<Volume, Failure> {
    let (rows, bytes): (i64, i64) = conn.query_row(
        "SELECT COUNT(*), COALESCE(SUM(LENGTH(body)), 0) FROM inbox WHERE body IS NOT NULL",
        [],
        |row| Ok((row.get(0)?, row.get(1)?)),
    )?;
    Ok(Volume {
        count: to_u64("retained rows", rows)?,
        bytes: to_u64("retained bytes", bytes)?,
    })
}

pub(crate) fn recent_deliveries(
    conn: &Connection,
    before: Option<DeliveryRowId>,
    limit: u32,
) -> Result<Vec<DeliverySummary>, Failure> {
    collect(
        conn,
        "SELECT id, delivery_id, event, event_type, action, repository, issue_number,
             body_sha256, status, duplicate_of, attempts, last_error, received_at, processed_at
         FROM inbox WHERE ?2 IS NULL OR id < ?2 ORDER BY id DESC LIMIT ?1",
        params![limit, before],
        |row| {
            let status: String = row.get(8)?;
            Ok(DeliverySummary {
                id: row.get(0)?,
                delivery_id: row.get(1)?,
                event: row.get(2)?,
                event_type: row.get(3)?,
                action: row.get(4)?,
                repository: row.get(5)?,
                issue_number: row
                    .get::<_, Option<i64>>(6)?
                    .map(|n| to_u64("inbox.issue_number", n))
                    .transpose()?,
                body_sha256: hex(&row.get::<_, Vec<u8>>(7)?),
                status: delivery_status_from(&status)?,
                duplicate_of: row.get(9)?,
                attempts: to_u32("inbox.attempts", row.get(10)?)?,
                last_error: row.get(11)?,
                received_at: time_from("inbox.received_at", row.get(12)?)?,
                processed_at: opt_time_from("inbox.processed_at", row.get(13)?)?,
            })
        },
    )
}

pub(crate) fn has_pending_delivery(conn: &Connection, issue: &IssueRef) -> Result<bool, Failure> {
    // The pending rows are few: the status index finds them, then the issue filters.
    let found: i64 = conn
        .prepare_cached(
            "SELECT EXISTS (SELECT 1 FROM inbox WHERE status = 'pending' AND repository = ?1
                 AND issue_number = ?2)",
        )?
        .query_row(
            params![
                issue.repo.to_string(),
                to_i64("issue number", issue.number)?
            ],
            |row| row.get(0),
        )?;
    Ok(found != 0)
}

pub(crate) fn latest_outbox_id(conn: &Connection) -> Result<Option<OutboxId>, Failure> {
    Ok(conn
        .prepare_cached("SELECT max(id) FROM outbox")?
        .query_row([], |row| row.get(0))?)
}

pub(crate) fn delivery_counts(conn: &Connection) -> Result<DeliveryCounts, Failure> {
    let rows = collect(
        conn,
        "SELECT status, COUNT(*) FROM inbox GROUP BY status",
        [],
        |row| Ok((row.get::<_, String>(0)?, row.get::<_, i64>(1)?)),
    )?;
    let mut counts = DeliveryCounts::default();
    for (status, count) in rows {
        let count = to_u64("inbox count", count)?;
        match delivery_status_from(&status)? {
            DeliveryStatus::Pending => counts.pending = count,
            DeliveryStatus::Processed => counts.processed = count,
            DeliveryStatus::Ignored => counts.ignored = count,
            DeliveryStatus::Duplicate => counts.duplicate = count,
            DeliveryStatus::Failed => counts.failed = count,
        }
    }
    Ok(counts)
}

pub(crate) fn complete_delivery(
    conn: &Connection,
    id: DeliveryRowId,
    effects: &DeliveryEffects,
) -> Result<CompletionOutcome, Failure> {
    match delivery_status(conn, id)? {
        DeliveryStatus::Processed => Ok(CompletionOutcome::AlreadyProcessed),
        DeliveryStatus::Pending => {
            if let Some(snapshot) = &effects.snapshot {
                upsert_issue_snapshot(conn, snapshot)?;
            }
            for batch in &effects.transitions {
                apply_batch(conn, batch)?;
            }
            mark_processed(conn, id)?;
            Ok(CompletionOutcome::Completed)
        }
        other => Err(not_pending(id, other, "completed").into()),
    }
}

// ----- issue snapshots -----

pub(crate) fn upsert_issue_snapshot(
    conn: &Connection,
    snapshot: &IssueSnapshot,
) -> Result<SnapshotOutcome, Failure> {
    let (repository, number) = issue_key(&snapshot.issue)?;
    // An equal updated_at replaces: deliveries are handled in order, so the later one wins.
    let changed = conn
        .prepare_cached(
            "INSERT INTO issue_snapshots (repository, number, title, body, labels, assignees,
                 state, updated_at, html_url, stored_at, comments)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)
             ON CONFLICT (repository, number) DO UPDATE SET
                 title = excluded.title, body = excluded.body, labels = excluded.labels,
                 assignees = excluded.assignees, state = excluded.state,
                 updated_at = excluded.updated_at, html_url = excluded.html_url,
                 stored_at = excluded.stored_at, comments = excluded.comments
             WHERE excluded.updated_at >= issue_snapshots.updated_at",
        )?
        .execute(params![
            repository,
            number,
            snapshot.title,
            snapshot.body,
            to_json("labels", &snapshot.labels)?,
            to_json("assignees", &snapshot.assignees)?,
            tracker_state_name(snapshot.state),
            micros(snapshot.updated_at),
            snapshot.html_url,
            micros(Utc::now()),
            snapshot
                .comments
                .map(|n| to_i64("comment count", n))
                .transpose()?,
        ])?;
    Ok(if changed > 0 {
        SnapshotOutcome::Stored
    } else {
        SnapshotOutcome::KeptNewer
    })
}

pub(crate) fn get_issue_snapshot(
    conn: &Connection,
    issue: &IssueRef,
) -> Result<Option<IssueSnapshot>, Failure> {
    let (repository, number) = issue_key(issue)?;
    let mut found = collect(
        conn,
        "SELECT title, body, labels, assignees, state, updated_at, html_url, comments
         FROM issue_snapshots WHERE repository = ?1 AND number = ?2",
        params![repository, number],
        |row| {
            let labels: String = row.get(2)?;
            let assignees: String = row.get(3)?;
            let state: String = row.get(4)?;
            Ok(IssueSnapshot {
                issue: issue.clone(),
                title: row.get(0)?,
                body: row.get(1)?,
                labels: json_list("issue_snapshots.labels", &labels)?,
                assignees: json_list("issue_snapshots.assignees", &assignees)?,
                state: tracker_state_from(&state)?,
                updated_at: time_from("issue_snapshots.updated_at", row.get(5)?)?,
                html_url: row.get(6)?,
                comments: row
                    .get::<_, Option<i64>>(7)?
                    .map(|n| to_u64("issue_snapshots.comments", n))
                    .transpose()?,
            })
        },
    )?;
    Ok(found.pop())
}

/// Up to this many issues are looked up one by one; more are matched in one pass over the
/// table (recovery asks for every coordinated issue, where a scan is several times faster).
const SUMMARY_LOOKUPS_UP_TO: usize = 256;

/// A text column, borrowed from the row.
fn text<'r>(row: &'r Row<'_>, index: usize, column: &'static str) -> Result<&'r str, Failure> {
    row.get_ref(index)?
        .as_str()
        .map_err(|e| StoreError::corrupt(column, e.to_string()).into())
}

fn summary_from(state: &str, labels: &str) -> Result<SnapshotSummary, Failure> {
    Ok(SnapshotSummary {
        state: tracker_state_from(state)?,
        labels: json_list("issue_snapshots.labels", labels)?,
    })
}

pub(crate) fn issue_snapshot_summaries(
    conn: &Connection,
    issues: &[IssueRef],
) -> Result<Vec<Option<SnapshotSummary>>, Failure> {
    if issues.len() <= SUMMARY_LOOKUPS_UP_TO {
        let mut stmt = conn.prepare_cached(
            "SELECT state, labels FROM issue_snapshots WHERE repository = ?1 AND number = ?2",
        )?;
        return issues
            .iter()
            .map(|issue| {
                let (repository, number) = issue_key(issue)?;
                stmt.query_row(params![repository, number], |row| {
                    Ok((row.get::<_, String>(0)?, row.get::<_, String>(1)?))
                })
                .optional()?
                .map(|(state, labels)| summary_from(&state, &labels))
                .transpose()
            })
            .collect();
    }
    // Positions by repository, then number, so a row is matched without allocating; a
    // repeated issue is answered from its first position afterwards.
    let mut by_repo: HashMap<&RepoName, HashMap<i64, usize>> = HashMap::new();
    let mut repeats = Vec::new();
    for (position, issue) in issues.iter().enumerate() {
        let number = to_i64("issue number", issue.number)?;
        let numbers = by_repo.entry(&issue.repo).or_default();
        if let Some(&first) = numbers.get(&number) {
            repeats.push((position, first));
        } else {
            numbers.insert(number, position);
        }
    }
    let wanted: HashMap<String, HashMap<i64, usize>> = by_repo
        .into_iter()
        .map(|(repo, numbers)| (repo.to_string(), numbers))
        .collect();
    let mut found = vec![None; issues.len()];
    let mut stmt =
        conn.prepare_cached("SELECT repository, number, state, labels FROM issue_snapshots")?;
    let mut rows = stmt.query([])?;
    while let Some(row) = rows.next()? {
        let repository = text(row, 0, "issue_snapshots.repository")?;
        let Some(numbers) = wanted.get(repository) else {
            continue;
        };
        let Some(&position) = numbers.get(&row.get::<_, i64>(1)?) else {
            continue;
        };
        let state = text(row, 2, "issue_snapshots.state")?;
        let labels = text(row, 3, "issue_snapshots.labels")?;
        found[position] = Some(summary_from(state, labels)?);
    }
    for (position, first) in repeats {
        found[position] = found[first].clone();
    }
    Ok(found)
}

// ----- coordinated issues -----

const ISSUE_COLUMNS: &str = "repository, number, state, metadata, assigned_agent, estimate, \
    priority, queued_at, attempts, input_tokens, output_tokens, cost_usd, updated_at";

fn issue_record_from(row: &Row<'_>, names: &mut RepoNames) -> Result<IssueRecord, Failure> {
    let metadata = match row.get_ref(3)? {
        rusqlite::types::ValueRef::Null => None,
        value => {
            let text = value
                .as_str()
                .map_err(|e| StoreError::corrupt("issues.metadata", e.to_string()))?;
            Some(
                serde_json::from_str::<IssueMetadata>(text)
                    .map_err(|e| StoreError::corrupt("issues.metadata", e.to_string()))?,
            )
        }
    };
    Ok(IssueRecord {
        issue: names.issue(
            "issues.repository",
            text(row, 0, "issues.repository")?,
            row.get(1)?,
        )?,
        state: state_from("issues.state", text(row, 2, "issues.state")?)?,
        metadata,
        assigned_agent: row.get(4)?,
        estimate: row
            .get::<_, Option<i64>>(5)?
            .map(|n| to_u64("issues.estimate", n))
            .transpose()?,
        priority: row.get(6)?,
        queued_at: opt_time_from("issues.queued_at", row.get(7)?)?,
        attempts: to_u32("issues.attempts", row.get(8)?)?,
        input_tokens: to_u64("issues.input_tokens", row.get(9)?)?,
        output_tokens: to_u64("issues.output_tokens", row.get(10)?)?,
        cost_usd: row.get(11)?,
        updated_at: time_from("issues.updated_at", row.get(12)?)?,
    })
}

fn stored_state(conn: &Connection, issue: &IssueRef) -> Result<Option<IssueState>, Failure> {
    let (repository, number) = issue_key(issue)?;
    let state: Option<String> = conn
        .prepare_cached("SELECT state FROM issues WHERE repository = ?1 AND number = ?2")?
        .query_row(params![repository, number], |row| row.get(0))
        .optional()?;
    Ok(state.map(|s| state_from("issues.state", &s)).transpose()?)
}

fn state_name(state: Option<IssueState>) -> &'static str {
    state.map_or("absent", IssueState::as_str)
}

pub(crate) fn apply_batch(conn: &Connection, batch: &TransitionBatch) -> Result<(), Failure> {
    let record = &batch.issue;
    let (repository, number) = issue_key(&record.issue)?;

    if let Some(transition) = &batch.transition {
        if transition.to != record.state {
            return Err(StoreError::InvalidInput(format!(
                "transition of {} goes to {} but the record says {}",
                record.issue, transition.to, record.state
            ))
            .into());
        }
        let current = stored_state(conn, &record.issue)?;
        if current != transition.from {
            return Err(StoreError::Conflict(format!(
                "{} is {}, not {} as the transition to {} expects",
                record.issue,
                state_name(current),
                state_name(transition.from),
                transition.to
            ))
            .into());
        }
    }

    let metadata = record
        .metadata
        .as_ref()
        .map(|m| to_json("metadata", m))
        .transpose()?;
    conn.prepare_cached(&format!(
        "INSERT INTO issues ({ISSUE_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)
         ON CONFLICT (repository, number) DO UPDATE SET
             state = excluded.state, metadata = excluded.metadata,
             assigned_agent = excluded.assigned_agent, estimate = excluded.estimate,
             priority = excluded.priority, queued_at = excluded.queued_at,
             attempts = excluded.attempts, input_tokens = excluded.input_tokens,
             output_tokens = excluded.output_tokens, cost_usd = excluded.cost_usd,
             updated_at = excluded.updated_at"
    ))?
    .execute(params![
        repository,
        number,
        record.state.as_str(),
        metadata,
        record.assigned_agent,
        record.estimate.map(|e| to_i64("estimate", e)).transpose()?,
        record.priority,
        record.queued_at.map(micros),
        record.attempts,
        to_i64("input tokens", record.input_tokens)?,
        to_i64("output tokens", record.output_tokens)?,
        finite("cost", record.cost_usd)?,
        micros(record.updated_at),
    ])?;

    if let Some(transition) = &batch.transition {
        conn.prepare_cached(
            "INSERT INTO issue_transitions (repository, number, from_state, to_state, cause, at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        )?
        .execute(params![
            repository,
            number,
            transition.from.map(IssueState::as_str),
            transition.to.as_str(),
            transition.cause,
            micros(transition.at),
        ])?;
    }

    if let Some(blockers) = &batch.blocked_by {
        conn.prepare_cached("DELETE FROM dependencies WHERE repository = ?1 AND number = ?2")?
            .execute(params![repository, number])?;
        let mut insert = conn.prepare_cached(
            "INSERT INTO dependencies (repository, number, blocker_repository, blocker_number)
             VALUES (?1, ?2, ?3, ?4) ON CONFLICT DO NOTHING",
        )?;
        for blocker in blockers {
            let (blocker_repository, blocker_number) = issue_key(blocker)?;
            insert.execute(params![
                repository,
                number,
                blocker_repository,
                blocker_number
            ])?;
        }
    }

    for item in &batch.outbox {
        enqueue_outbox(conn, item)?;
    }
    if let Some(session) = &batch.session_started {
        start_session(conn, session)?;
    }
    if let Some(end) = &batch.session_ended {
        end_session(conn, end)?;
    }
    Ok(())
}

pub(crate) fn commit_transitions(
    conn: &Connection,
    batches: &[TransitionBatch],
) -> Result<(), Failure> {
    batches
        .iter()
        .try_for_each(|batch| apply_batch(conn, batch))
}

pub(crate) fn get_issue(
    conn: &Connection,
    issue: &IssueRef,
) -> Result<Option<IssueRecord>, Failure> {
    let (repository, number) = issue_key(issue)?;
    let mut found = collect(
        conn,
        &format!("SELECT {ISSUE_COLUMNS} FROM issues WHERE repository = ?1 AND number = ?2"),
        params![repository, number],
        |row| issue_record_from(row, &mut RepoNames::default()),
    )?;
    Ok(found.pop())
}

pub(crate) fn prune_session_requests(
    conn: &Connection,
    before: DateTime<Utc>,
) -> Result<u64, Failure> {
    conn.prepare_cached(
        "DELETE FROM session_commands WHERE session_id IN
             (SELECT session_id FROM session_requests
               WHERE COALESCE(ended_at, cancelled_at) < ?1)",
    )?
    .execute([micros(before)])?;
    let removed = conn
        .prepare_cached("DELETE FROM session_requests WHERE COALESCE(ended_at, cancelled_at) < ?1")?
        .execute([micros(before)])?;
    Ok(u64::try_from(removed).unwrap_or_default())
}

pub(crate) fn issue_state_counts(conn: &Connection) -> Result<Vec<(IssueState, u64)>, Failure> {
    collect(
        conn,
        "SELECT state, COUNT(*) FROM issues GROUP BY state ORDER BY state",
        [],
        |row| {
            let state: String = row.get(0)?;
            let count: i64 = row.get(1)?;
            Ok((
                state_from("issues.state", &state)?,
                u64::try_from(count).unwrap_or_default(),
            ))
        },
    )
}

pub(crate) fn list_issues(
    conn: &Connection,
    states: &[IssueState],
) -> Result<Vec<IssueRecord>, Failure> {
    let mut names = RepoNames::default();
    // No ORDER BY: sorting by key would walk the key index and look every row up again
    // (recovery reads every issue; issue 4 gives it one second), and SQL's text order is not
    // `IssueRef`'s (owner, then name) — the order the trait promises on every backend.
    let mut records = if states.is_empty() {
        collect(
            conn,
            &format!("SELECT {ISSUE_COLUMNS} FROM issues"),
            [],
            |row| issue_record_from(row, &mut names),
        )?
    } else {
        let placeholders = (1..=states.len())
            .map(|i| format!("?{i}"))
            .collect::<Vec<_>>()
            .join(", ");
        let states: Vec<Value> = states
            .iter()
            .map(|s| Value::Text(s.as_str().to_owned()))
            .collect();
        collect(
            conn,
            &format!("SELECT {ISSUE_COLUMNS} FROM issues WHERE state IN ({placeholders})"),
            rusqlite::params_from_iter(states),
            |row| issue_record_from(row, &mut names),
        )?
    };
    records.sort_unstable_by(|a, b| a.issue.cmp(&b.issue));
    Ok(records)
}

pub(crate) fn issue_history(
    conn: &Connection,
    issue: &IssueRef,
) -> Result<Vec<TransitionRecord>, Failure> {
    let (repository, number) = issue_key(issue)?;
    collect(
        conn,
        "SELECT id, from_state, to_state, cause, at FROM issue_transitions
         WHERE repository = ?1 AND number = ?2 ORDER BY id",
        params![repository, number],
        |row| {
            let from: Option<String> = row.get(1)?;
            let to: String = row.get(2)?;
            Ok(TransitionRecord {
                id: row.get(0)?,
                issue: issue.clone(),
                from: from
                    .map(|s| state_from("issue_transitions.from_state", &s))
                    .transpose()?,
                to: state_from("issue_transitions.to_state", &to)?,
                cause: row.get(3)?,
                at: time_from("issue_transitions.at", row.get(4)?)?,
            })
        },
    )
}

pub(crate) fn dependency_edges(conn: &Connection) -> Result<Vec<DependencyEdge>, Failure> {
    let mut names = RepoNames::default();
    collect(
        conn,
        "SELECT repository, number, blocker_repository, blocker_number FROM dependencies
         ORDER BY repository, number, blocker_repository, blocker_number",
        [],
        |row| {
            Ok(DependencyEdge {
                issue: names.issue(
                    "dependencies.repository",
                    text(row, 0, "dependencies.repository")?,
                    row.get(1)?,
                )?,
                blocker: names.issue(
                    "dependencies.blocker_repository",
                    text(row, 2, "dependencies.blocker_repository")?,
                    row.get(3)?,
                )?,
            })
        },
    )
}

// ----- outbox -----

fn enqueue_outbox(conn: &Connection, item: &NewOutboxItem) -> Result<(), Failure> {
    let (repository, number) = issue_key(&item.issue)?;
    if item.idempotency_key.is_empty() {
        return Err(StoreError::InvalidInput(
            "an outbox item needs a non-empty idempotency key".to_owned(),
        )
        .into());
    }
    // A replayed state change produces the same key: the first enqueue wins.
    conn.prepare_cached(
        "INSERT INTO outbox (repository, number, idempotency_key, kind, payload, status,
             next_attempt_at, created_at)
         VALUES (?1, ?2, ?3, ?4, ?5, 'pending', ?6, ?6)
         ON CONFLICT (idempotency_key) DO NOTHING",
    )?
    .execute(params![
        repository,
        number,
        item.idempotency_key,
        item.kind,
        to_json("outbox payload", &item.payload)?,
        micros(item.created_at),
    ])?;
    Ok(())
}

const OUTBOX_COLUMNS: &str = "id, repository, number, idempotency_key, kind, payload, status, \
    attempts, last_error, next_attempt_at, created_at";

fn outbox_item_from(row: &Row<'_>) -> Result<OutboxItem, Failure> {
    let repository: String = row.get(1)?;
    let payload: String = row.get(5)?;
    let status: String = row.get(6)?;
    Ok(OutboxItem {
        id: row.get(0)?,
        issue: issue_from("outbox.repository", &repository, row.get(2)?)?,
        idempotency_key: row.get(3)?,
        kind: row.get(4)?,
        payload: serde_json::from_str(&payload)
            .map_err(|e| StoreError::corrupt("outbox.payload", e.to_string()))?,
        status: OutboxStatus::parse(&status)
            .ok_or_else(|| StoreError::corrupt("outbox.status", format!("`{status}`")))?,
        attempts: to_u32("outbox.attempts", row.get(7)?)?,
        last_error: row.get(8)?,
        next_attempt_at: time_from("outbox.next_attempt_at", row.get(9)?)?,
        created_at: time_from("outbox.created_at", row.get(10)?)?,
    })
}

pub(crate) fn next_outbox_items(
    conn: &Connection,
    now: DateTime<Utc>,
    limit: u32,
) -> Result<Vec<OutboxItem>, Failure> {
    // Head of line per issue: an item waits while an older pending write to its issue exists,
    // even when that older one is backing off.
    collect(
        conn,
        &format!(
            "SELECT {OUTBOX_COLUMNS} FROM outbox o
             WHERE o.status = 'pending' AND o.next_attempt_at <= ?1
               AND o.id = (SELECT MIN(p.id) FROM outbox p
                           WHERE p.status = 'pending'
                             AND p.repository = o.repository AND p.number = o.number)
             ORDER BY o.id LIMIT ?2"
        ),
        params![micros(now), limit],
        outbox_item_from,
    )
}

fn outbox_status(conn: &Connection, id: OutboxId) -> Result<OutboxStatus, Failure> {
    let status: Option<String> = conn
        .prepare_cached("SELECT status FROM outbox WHERE id = ?1")?
        .query_row([id], |row| row.get(0))
        .optional()?;
    let status = status.ok_or_else(|| StoreError::not_found(format!("outbox item {id}")))?;
    OutboxStatus::parse(&status)
        .ok_or_else(|| StoreError::corrupt("outbox.status", format!("`{status}`")).into())
}

pub(crate) fn mark_outbox_done(conn: &Connection, id: OutboxId) -> Result<(), Failure> {
    match outbox_status(conn, id)? {
        OutboxStatus::Done => Ok(()),
        OutboxStatus::Pending => {
            conn.prepare_cached(
                "UPDATE outbox SET status = 'done', attempts = attempts + 1, done_at = ?2
                 WHERE id = ?1",
            )?
            .execute(params![id, micros(Utc::now())])?;
            Ok(())
        }
        OutboxStatus::Failed => Err(StoreError::Conflict(format!(
            "outbox item {id} was given up, so it cannot be marked done"
        ))
        .into()),
    }
}

pub(crate) fn mark_outbox_failed(
    conn: &Connection,
    id: OutboxId,
    error: &str,
    retry_at: Option<DateTime<Utc>>,
) -> Result<(), Failure> {
    match outbox_status(conn, id)? {
        OutboxStatus::Pending => {
            let error = truncate_error(error);
            match retry_at {
                Some(at) => conn
                    .prepare_cached(
                        "UPDATE outbox SET attempts = attempts + 1, last_error = ?2,
                             next_attempt_at = ?3
                         WHERE id = ?1",
                    )?
                    .execute(params![id, error, micros(at)])?,
                None => conn
                    .prepare_cached(
                        "UPDATE outbox SET status = 'failed', attempts = attempts + 1,
                             last_error = ?2, done_at = ?3
                         WHERE id = ?1",
                    )?
                    .execute(params![id, error, micros(Utc::now())])?,
            };
            Ok(())
        }
        other => Err(StoreError::Conflict(format!(
            "outbox item {id} is {}, so it cannot fail again",
            other.as_str()
        ))
        .into()),
    }
}

pub(crate) fn outbox_backlog(conn: &Connection) -> Result<OutboxBacklog, Failure> {
    let rows = collect(
        conn,
        "SELECT status, COUNT(*), MIN(created_at) FROM outbox
         WHERE status IN ('pending', 'failed') GROUP BY status",
        [],
        |row| {
            Ok((
                row.get::<_, String>(0)?,
                row.get::<_, i64>(1)?,
                row.get::<_, Option<i64>>(2)?,
            ))
        },
    )?;
    let mut backlog = OutboxBacklog::default();
    for (status, count, oldest) in rows {
        let count = to_u64("outbox count", count)?;
        match status.as_str() {
            "pending" => {
                backlog.pending = count;
                backlog.oldest_pending_at = opt_time_from("outbox.created_at", oldest)?;
            }
            _ => backlog.failed = count,
        }
    }
    Ok(backlog)
}

pub(crate) fn outbox_for_issue(
    conn: &Connection,
    issue: &IssueRef,
) -> Result<Vec<OutboxItem>, Failure> {
    let (repository, number) = issue_key(issue)?;
    collect(
        conn,
        &format!(
            "SELECT {OUTBOX_COLUMNS} FROM outbox WHERE repository = ?1 AND number = ?2 ORDER BY id"
        ),
        params![repository, number],
        outbox_item_from,
    )
}

// ----- sessions -----

fn start_session(conn: &Connection, session: &NewSession) -> Result<(), Failure> {
    let (repository, number) = issue_key(&session.issue)?;
    let exists: Option<i64> = conn
        .prepare_cached("SELECT 1 FROM sessions WHERE id = ?1")?
        .query_row([&session.id], |row| row.get(0))
        .optional()?;
    if exists.is_some() {
        return Err(
            StoreError::Conflict(format!("session {} was already started", session.id)).into(),
        );
    }
    conn.prepare_cached(
        "INSERT INTO sessions (id, agent, repository, number, pid, started_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?
    .execute(params![
        session.id,
        session.agent,
        repository,
        number,
        session.pid,
        micros(session.started_at),
    ])?;
    Ok(())
}

fn end_session(conn: &Connection, end: &SessionEnd) -> Result<(), Failure> {
    let changed = conn
        .prepare_cached(
            "UPDATE sessions SET ended_at = ?2, outcome = ?3, detail = ?4, input_tokens = ?5,
                 output_tokens = ?6, cost_usd = ?7, cache_read_tokens = ?8,
                 cache_creation_tokens = ?9
             WHERE id = ?1 AND ended_at IS NULL",
        )?
        .execute(params![
            end.session_id,
            micros(end.ended_at),
            end.outcome.as_str(),
            end.detail.as_deref().map(truncate_error),
            to_i64("input tokens", end.input_tokens)?,
            to_i64("output tokens", end.output_tokens)?,
            finite("cost", end.cost_usd)?,
            to_i64("cache read tokens", end.cache_read_tokens)?,
            to_i64("cache creation tokens", end.cache_creation_tokens)?,
        ])?;
    if changed == 1 {
        return Ok(());
    }
    let exists: Option<i64> = conn
        .prepare_cached("SELECT 1 FROM sessions WHERE id = ?1")?
        .query_row([&end.session_id], |row| row.get(0))
        .optional()?;
    Err(match exists {
        Some(_) => StoreError::Conflict(format!("session {} already ended", end.session_id)),
        None => StoreError::not_found(format!("session {}", end.session_id)),
    }
    .into())
}

const SESSION_COLUMNS: &str = "id, agent, repository, number, pid, started_at, ended_at, outcome, \
    detail, input_tokens, output_tokens, cost_usd, cache_read_tokens, cache_creation_tokens";

fn session_from(row: &Row<'_>) -> Result<SessionRecord, Failure> {
    let repository: String = row.get(2)?;
    let outcome: Option<String> = row.get(7)?;
    Ok(SessionRecord {
        id: row.get(0)?,
        agent: row.get(1)?,
        issue: issue_from("sessions.repository", &repository, row.get(3)?)?,
        pid: row.get(4)?,
        started_at: time_from("sessions.started_at", row.get(5)?)?,
        ended_at: opt_time_from("sessions.ended_at", row.get(6)?)?,
        outcome: outcome
            .map(|name| {
                SessionOutcome::parse(&name)
                    .ok_or_else(|| StoreError::corrupt("sessions.outcome", format!("`{name}`")))
            })
            .transpose()?,
        detail: row.get(8)?,
        input_tokens: to_u64("sessions.input_tokens", row.get(9)?)?,
        output_tokens: to_u64("sessions.output_tokens", row.get(10)?)?,
        cost_usd: row.get(11)?,
        cache_read_tokens: to_u64("sessions.cache_read_tokens", row.get(12)?)?,
        cache_creation_tokens: to_u64("sessions.cache_creation_tokens", row.get(13)?)?,
    })
}

pub(crate) fn open_sessions(conn: &Connection) -> Result<Vec<SessionRecord>, Failure> {
    collect(
        conn,
        &format!(
            "SELECT {SESSION_COLUMNS} FROM sessions WHERE ended_at IS NULL
             ORDER BY started_at, id"
        ),
        [],
        session_from,
    )
}

pub(crate) fn sessions_for_issue(
    conn: &Connection,
    issue: &IssueRef,
) -> Result<Vec<SessionRecord>, Failure> {
    let (repository, number) = issue_key(issue)?;
    collect(
        conn,
        &format!(
            "SELECT {SESSION_COLUMNS} FROM sessions WHERE repository = ?1 AND number = ?2
             ORDER BY started_at, id"
        ),
        params![repository, number],
        session_from,
    )
}

pub(crate) fn record_rotation(conn: &Connection, rotation: &RotationRecord) -> Result<(), Failure> {
    let (repository, number) = issue_key(&rotation.issue)?;
    conn.prepare_cached(
        "INSERT INTO session_rotations (old_session_id, new_session_id, agent_type, repository,
             number, next_issue, context_before_tokens, context_before_percent, success,
             error_message, at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
    )?
    .execute(params![
        rotation.old_session_id,
        rotation.new_session_id,
        rotation.agent_type,
        repository,
        number,
        rotation.next_issue.as_ref().map(ToString::to_string),
        to_i64("context tokens", rotation.context_before_tokens)?,
        finite("context percent", rotation.context_before_percent)?,
        rotation.success,
        rotation.error_message.as_deref().map(truncate_error),
        micros(rotation.at),
    ])?;
    Ok(())
}

pub(crate) fn recent_rotations(
    conn: &Connection,
    before: Option<RotationRowId>,
    limit: u32,
) -> Result<Vec<StoredRotation>, Failure> {
    collect(
        conn,
        "SELECT old_session_id, new_session_id, agent_type, repository, number, next_issue,
             context_before_tokens, context_before_percent, success, error_message, at, id
         FROM session_rotations WHERE ?2 IS NULL OR id < ?2 ORDER BY id DESC LIMIT ?1",
        params![limit, before],
        |row| {
            let repository: String = row.get(3)?;
            let next_issue: Option<String> = row.get(5)?;
            let rotation = RotationRecord {
                old_session_id: row.get(0)?,
                new_session_id: row.get(1)?,
                agent_type: row.get(2)?,
                issue: issue_from("session_rotations.repository", &repository, row.get(4)?)?,
                next_issue: next_issue
                    .map(|text| {
                        text.parse::<IssueRef>().map_err(|e| {
                            StoreError::corrupt("session_rotations.next_issue", e.to_string())
                        })
                    })
                    .transpose()?,
                context_before_tokens: to_u64(
                    "session_rotations.context_before_tokens",
                    row.get(6)?,
                )?,
                context_before_percent: row.get(7)?,
                success: row.get(8)?,
                error_message: row.get(9)?,
                at: time_from("session_rotations.at", row.get(10)?)?,
            };
            Ok(StoredRotation {
                id: row.get(11)?,
                rotation,
            })
        },
    )
}

pub(crate) fn record_compaction(
    conn: &Connection,
    compaction: &CompactionRecord,
) -> Result<(), Failure> {
    let (repository, number) = issue_key(&compaction.issue)?;
    conn.prepare_cached(
        "INSERT INTO compactions (session_id, repository, number, before_tokens, after_tokens,
             freed_tokens, freed_percent, success, at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
    )?
    .execute(params![
        compaction.session_id,
        repository,
        number,
        to_i64("tokens before", compaction.before_tokens)?,
        to_i64("tokens after", compaction.after_tokens)?,
        to_i64("freed tokens", compaction.freed_tokens)?,
        finite("freed percent", compaction.freed_percent)?,
        compaction.success,
        micros(compaction.at),
    ])?;
    Ok(())
}

pub(crate) fn compactions_for_session(
    conn: &Connection,
    session_id: &str,
) -> Result<Vec<CompactionRecord>, Failure> {
    collect(
        conn,
        "SELECT session_id, repository, number, before_tokens, after_tokens, freed_tokens,
             freed_percent, success, at
         FROM compactions WHERE session_id = ?1 ORDER BY id",
        [session_id],
        |row| {
            let repository: String = row.get(1)?;
            Ok(CompactionRecord {
                session_id: row.get(0)?,
                issue: issue_from("compactions.repository", &repository, row.get(2)?)?,
                before_tokens: to_u64("compactions.before_tokens", row.get(3)?)?,
                after_tokens: to_u64("compactions.after_tokens", row.get(4)?)?,
                freed_tokens: to_u64("compactions.freed_tokens", row.get(5)?)?,
                freed_percent: row.get(6)?,
                success: row.get(7)?,
                at: time_from("compactions.at", row.get(8)?)?,
            })
        },
    )
}

pub(crate) fn record_session_spend(
    conn: &Connection,
    session_id: &str,
    spend: &SessionSpend,
) -> Result<(), Failure> {
    conn.prepare_cached(
        "UPDATE sessions SET input_tokens = ?2, output_tokens = ?3, cache_read_tokens = ?4,
             cache_creation_tokens = ?5, cost_usd = ?6
         WHERE id = ?1 AND ended_at IS NULL",
    )?
    .execute(params![
        session_id,
        to_i64("input tokens", spend.input_tokens)?,
        to_i64("output tokens", spend.output_tokens)?,
        to_i64("cache read tokens", spend.cache_read_tokens)?,
        to_i64("cache creation tokens", spend.cache_creation_tokens)?,
        finite("cost", spend.cost_usd)?,
    ])?;
    Ok(())
}

pub(crate) fn record_session_process(
    conn: &Connection,
    session_id: &str,
    pid: u32,
) -> Result<bool, Failure> {
    let updated = conn
        .prepare_cached(
            "UPDATE sessions SET pid = ?2 WHERE id = ?1 AND ended_at IS NULL AND pid IS NULL",
        )?
        .execute(params![session_id, pid])?;
    Ok(updated > 0)
}

// ----- workspaces and pull requests -----

pub(crate) fn put_workspace(conn: &Connection, record: &WorkspaceRecord) -> Result<(), Failure> {
    let (repository, number) = issue_key(&record.issue)?;
    conn.prepare_cached(
        "INSERT INTO workspaces (repository, number, path, branch, base_branch, head_commit,
             prepared_at, removed_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
         ON CONFLICT (repository, number) DO UPDATE SET
             pull_number = CASE WHEN workspaces.branch = excluded.branch
                 THEN workspaces.pull_number END,
             pull_url = CASE WHEN workspaces.branch = excluded.branch
                 THEN workspaces.pull_url END,
             path = excluded.path,
             branch = excluded.branch,
             base_branch = excluded.base_branch,
             head_commit = excluded.head_commit,
             prepared_at = excluded.prepared_at,
             removed_at = excluded.removed_at",
    )?
    .execute(params![
        repository,
        number,
        record.path,
        record.branch,
        record.base_branch,
        record.head_commit,
        micros(record.prepared_at),
        record.removed_at.map(micros),
    ])?;
    Ok(())
}

pub(crate) fn record_pull_request(
    conn: &Connection,
    issue: &IssueRef,
    branch: &str,
    pull_request: &PullRequestLink,
) -> Result<(), Failure> {
    let (repository, number) = issue_key(issue)?;
    conn.prepare_cached(
        "UPDATE workspaces SET pull_number = ?4, pull_url = ?5
         WHERE repository = ?1 AND number = ?2 AND branch = ?3",
    )?
    .execute(params![
        repository,
        number,
        branch,
        to_i64("pull request number", pull_request.number)?,
        pull_request.url,
    ])?;
    Ok(())
}

pub(crate) fn get_workspace(
    conn: &Connection,
    issue: &IssueRef,
) -> Result<Option<IssueWorkspace>, Failure> {
    let (repository, number) = issue_key(issue)?;
    let mut found = collect(
        conn,
        "SELECT path, branch, base_branch, head_commit, prepared_at, removed_at, pull_number,
             pull_url
         FROM workspaces WHERE repository = ?1 AND number = ?2",
        params![repository, number],
        |row| {
            let pull_number: Option<i64> = row.get(6)?;
            let pull_url: Option<String> = row.get(7)?;
            Ok(IssueWorkspace {
                workspace: WorkspaceRecord {
                    issue: issue.clone(),
                    path: row.get(0)?,
                    branch: row.get(1)?,
                    base_branch: row.get(2)?,
                    head_commit: row.get(3)?,
                    prepared_at: time_from("workspaces.prepared_at", row.get(4)?)?,
                    removed_at: opt_time_from("workspaces.removed_at", row.get(5)?)?,
                },
                pull_request: pull_number
                    .map(|number| {
                        Ok::<_, StoreError>(PullRequestLink {
                            number: to_u64("workspaces.pull_number", number)?,
                            url: pull_url.unwrap_or_default(),
                        })
                    })
                    .transpose()?,
            })
        },
    )?;
    Ok(found.pop())
}

pub(crate) fn record_gate_runs(conn: &Connection, runs: &[GateRunRecord]) -> Result<(), Failure> {
    let mut insert = conn.prepare_cached(
        "INSERT INTO gate_runs (repository, number, attempt, session_id, gate, command, required,
             status, detail, duration_ms, output_tail, coverage_percent, at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
    )?;
    for run in runs {
        let (repository, number) = issue_key(&run.issue)?;
        insert.execute(params![
            repository,
            number,
            i64::from(run.attempt),
            run.session_id,
            run.gate,
            to_json("gate command", &run.command)?,
            run.required,
            run.status,
            run.detail,
            to_i64("gate duration", run.duration_ms)?,
            run.output_tail,
            run.coverage_percent
                .map(|percent| finite("coverage percent", percent))
                .transpose()?,
            micros(run.at),
        ])?;
    }
    Ok(())
}

pub(crate) fn gate_runs_for_issue(
    conn: &Connection,
    issue: &IssueRef,
) -> Result<Vec<GateRunRecord>, Failure> {
    let (repository, number) = issue_key(issue)?;
    collect(
        conn,
        "SELECT attempt, session_id, gate, command, required, status, detail, duration_ms,
             output_tail, coverage_percent, at
         FROM gate_runs WHERE repository = ?1 AND number = ?2 ORDER BY id",
        params![repository, number],
        |row| {
            let command: String = row.get(3)?;
            Ok(GateRunRecord {
                issue: issue.clone(),
                attempt: u32::try_from(row.get::<_, i64>(0)?).map_err(|_| {
                    StoreError::corrupt("gate_runs.attempt", "out of range".to_owned())
                })?,
                session_id: row.get(1)?,
                gate: row.get(2)?,
                command: json_list("gate_runs.command", &command)?,
                required: row.get(4)?,
                status: row.get(5)?,
                detail: row.get(6)?,
                duration_ms: to_u64("gate_runs.duration_ms", row.get(7)?)?,
                output_tail: row.get(8)?,
                coverage_percent: row.get(9)?,
                at: time_from("gate_runs.at", row.get(10)?)?,
            })
        },
    )
}

// ----- parse cache and LLM usage -----

pub(crate) fn cache_get(conn: &Connection, key: &str) -> Result<Option<String>, Failure> {
    Ok(conn
        .prepare_cached("SELECT value FROM parse_cache WHERE cache_key = ?1")?
        .query_row([key], |row| row.get(0))
        .optional()?)
}

pub(crate) fn cache_put(conn: &Connection, key: &str, value_json: &str) -> Result<(), Failure> {
    if key.is_empty() {
        return Err(StoreError::InvalidInput("cache key must not be empty".to_owned()).into());
    }
    serde_json::from_str::<serde::de::IgnoredAny>(value_json).map_err(|e| {
        StoreError::InvalidInput(format!("cache value for `{key}` is not valid JSON: {e}"))
    })?;
    conn.prepare_cached(
        "INSERT INTO parse_cache (cache_key, value, stored_at) VALUES (?1, ?2, ?3)
         ON CONFLICT (cache_key) DO UPDATE SET value = excluded.value, stored_at = excluded.stored_at",
    )?
    .execute(params![key, value_json, micros(Utc::now())])?;
    Ok(())
}

pub(crate) fn record_llm_usage(conn: &Connection, usage: &LlmUsageRecord) -> Result<(), Failure> {
    conn.prepare_cached(
        "INSERT INTO llm_usage (provider, model, input_tokens, output_tokens, cost_usd, issue, at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )?
    .execute(params![
        usage.provider,
        usage.model,
        to_i64("input tokens", usage.input_tokens)?,
        to_i64("output tokens", usage.output_tokens)?,
        finite("cost", usage.cost_usd)?,
        usage.issue.as_ref().map(ToString::to_string),
        micros(usage.at),
    ])?;
    Ok(())
}

pub(crate) fn beat_peer(conn: &Connection, peer: &Peer, now: DateTime<Utc>) -> Result<(), Failure> {
    conn.prepare_cached(
        "INSERT INTO peers (id, name, is_leader, capacity, at) VALUES (?1, ?2, ?3, ?4, ?5)
         ON CONFLICT (id) DO UPDATE SET name = excluded.name, is_leader = excluded.is_leader,
             capacity = excluded.capacity, at = excluded.at",
    )?
    .execute(params![
        peer.id,
        peer.name,
        peer.leading,
        i64::from(peer.capacity),
        micros(now)
    ])?;
    // Every start is a new peer: forget those not heard from for a day.
    conn.prepare_cached("DELETE FROM peers WHERE at < ?1")?
        .execute(params![micros(now - chrono::Duration::days(1))])?;
    Ok(())
}

pub(crate) fn peers_alive(
    conn: &Connection,
    since: DateTime<Utc>,
) -> Result<Vec<PeerBeat>, Failure> {
    collect(
        conn,
        "SELECT id, name, is_leader, capacity, at FROM peers WHERE at >= ?1 ORDER BY name, id",
        [micros(since)],
        |row| {
            Ok(PeerBeat {
                peer: Peer {
                    id: row.get(0)?,
                    name: row.get(1)?,
                    leading: row.get(2)?,
                    capacity: to_u32("peers.capacity", row.get(3)?)?,
                },
                at: time_from("peers.at", row.get(4)?)?,
            })
        },
    )
}

// ----- sessions shared among coordinators -----

pub(crate) fn request_session(
    conn: &Connection,
    request: &SessionRequest,
    now: DateTime<Utc>,
) -> Result<(), Failure> {
    let (repository, number) = issue_key(&request.issue)?;
    let inserted = conn
        .prepare_cached(
            "INSERT INTO session_requests
                 (session_id, repository, number, agent, task_json, requested_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT (session_id) DO NOTHING",
        )?
        .execute(params![
            request.session_id,
            repository,
            number,
            request.agent,
            request.task_json,
            micros(now),
        ])?;
    if inserted == 0 {
        return Err(StoreError::Conflict(format!(
            "session {} was already requested",
            request.session_id
        ))
        .into());
    }
    Ok(())
}

const REQUEST_COLUMNS: &str = "session_id, repository, number, agent, task_json";

fn request_from(row: &Row<'_>) -> Result<SessionRequest, Failure> {
    let repository: String = row.get(1)?;
    Ok(SessionRequest {
        session_id: row.get(0)?,
        issue: issue_from("session_requests.repository", &repository, row.get(2)?)?,
        agent: row.get(3)?,
        task_json: row.get(4)?,
    })
}

/// Runs in the single writer: nobody else claims between the count and the claim.
pub(crate) fn claim_session(
    conn: &Connection,
    claimant: &Peer,
    agents: &[String],
    now: DateTime<Utc>,
    busy_since: DateTime<Utc>,
) -> Result<Option<SessionRequest>, Failure> {
    if agents.is_empty() {
        return Ok(None);
    }
    let open: i64 = conn
        .prepare_cached(
            "SELECT COUNT(*) FROM session_requests
             WHERE claimant_id = ?1 AND ended_at IS NULL",
        )?
        .query_row([&claimant.id], |row| row.get(0))?;
    if open >= i64::from(claimant.capacity) {
        return Ok(None);
    }
    // The agents as a JSON array: one cached statement whatever their number.
    let Some(request) = collect(
        conn,
        &format!(
            "SELECT {REQUEST_COLUMNS} FROM session_requests AS r
             WHERE r.claimant_id IS NULL AND r.cancelled_at IS NULL
               AND r.agent IN (SELECT value FROM json_each(?1))
               AND NOT EXISTS (
                   SELECT 1 FROM session_requests AS other
                    WHERE other.repository = r.repository AND other.number = r.number
                      AND other.claimant_id IS NOT NULL AND other.ended_at IS NULL
                      AND other.reported_at > ?2)
             ORDER BY r.request_seq LIMIT 1"
        ),
        params![to_json("agents", &agents)?, micros(busy_since)],
        request_from,
    )?
    .pop() else {
        return Ok(None);
    };
    conn.prepare_cached(
        "UPDATE session_requests SET claimant_id = ?2, claimant_name = ?3, claimed_at = ?4,
             reported_at = ?4
         WHERE session_id = ?1",
    )?
    .execute(params![
        request.session_id,
        claimant.id,
        claimant.name,
        micros(now)
    ])?;
    Ok(Some(request))
}

pub(crate) fn report_session(
    conn: &Connection,
    report: &SessionReport,
    after_seq: i64,
    now: DateTime<Utc>,
) -> Result<SessionOrders, Failure> {
    let row: Option<(Option<String>, bool)> = conn
        .prepare_cached(
            "SELECT claimant_id, cancelled_at IS NOT NULL FROM session_requests
             WHERE session_id = ?1",
        )?
        .query_row([&report.session_id], |row| Ok((row.get(0)?, row.get(1)?)))
        .optional()?;
    let Some((claimant, cancelled)) = row else {
        return Ok(cancelled_orders());
    };
    if claimant.as_deref() != Some(report.claimant.as_str()) {
        return Ok(cancelled_orders());
    }
    conn.prepare_cached(
        "UPDATE session_requests SET state_json = ?2, reported_at = ?3,
             ended_at = CASE WHEN ?4 THEN ?3 END
         WHERE session_id = ?1 AND ended_at IS NULL",
    )?
    .execute(params![
        report.session_id,
        report.state_json,
        micros(now),
        report.ended
    ])?;
    let commands = collect(
        conn,
        "SELECT seq, command_json FROM session_commands WHERE session_id = ?1 AND seq > ?2
         ORDER BY seq",
        params![report.session_id, after_seq],
        |row| {
            Ok(SessionCommand {
                seq: row.get(0)?,
                command_json: row.get(1)?,
            })
        },
    )?;
    Ok(SessionOrders {
        cancelled,
        commands,
    })
}

/// What a reporter that does not (or no longer) run the session is told: stop, no commands.
fn cancelled_orders() -> SessionOrders {
    SessionOrders {
        cancelled: true,
        commands: Vec::new(),
    }
}

pub(crate) fn command_session(
    conn: &Connection,
    session_id: &str,
    command_json: &str,
    now: DateTime<Utc>,
) -> Result<i64, Failure> {
    let exists: Option<i64> = conn
        .prepare_cached("SELECT 1 FROM session_requests WHERE session_id = ?1")?
        .query_row([session_id], |row| row.get(0))
        .optional()?;
    if exists.is_none() {
        return Err(StoreError::not_found(format!("session request {session_id}")).into());
    }
    let inserted = conn
        .prepare_cached(
            "INSERT INTO session_commands (session_id, command_json, created_at) VALUES (?1, ?2, ?3)
             ON CONFLICT (session_id, command_json) DO NOTHING",
        )?
        .execute(params![session_id, command_json, micros(now)])?;
    if inserted > 0 {
        return Ok(conn.last_insert_rowid());
    }
    // Stored before (a retry): its first sequence number.
    Ok(conn
        .prepare_cached(
            "SELECT seq FROM session_commands WHERE session_id = ?1 AND command_json = ?2",
        )?
        .query_row(params![session_id, command_json], |row| row.get(0))?)
}

pub(crate) fn cancel_session_requests(
    conn: &Connection,
    session_ids: Option<&[String]>,
    now: DateTime<Utc>,
) -> Result<u64, Failure> {
    let changed = match session_ids {
        None => conn
            .prepare_cached(
                "UPDATE session_requests SET cancelled_at = ?1
                 WHERE cancelled_at IS NULL AND ended_at IS NULL",
            )?
            .execute([micros(now)])?,
        Some(ids) => conn
            .prepare_cached(
                "UPDATE session_requests SET cancelled_at = ?1
                 WHERE cancelled_at IS NULL AND ended_at IS NULL
                   AND session_id IN (SELECT value FROM json_each(?2))",
            )?
            .execute(params![micros(now), to_json("session ids", &ids)?])?,
    };
    Ok(changed as u64)
}

pub(crate) fn session_requests(
    conn: &Connection,
    session_ids: &[String],
    now: DateTime<Utc>,
) -> Result<Vec<SessionRequestView>, Failure> {
    let mut views = collect(
        conn,
        "SELECT session_id, claimant_id, state_json, ended_at IS NOT NULL,
             cancelled_at IS NOT NULL, reported_at
         FROM session_requests WHERE session_id IN (SELECT value FROM json_each(?1))",
        [to_json("session ids", &session_ids)?],
        |row| {
            let claimant: Option<String> = row.get(1)?;
            let reported_at: Option<i64> = row.get(5)?;
            Ok(SessionRequestView {
                session_id: row.get(0)?,
                silent_ms: match (&claimant, reported_at) {
                    // A clock set back reads as no silence, not as a negative one.
                    (Some(_), Some(at)) => Some(to_u64(
                        "session_requests.reported_at",
                        (micros(now) - at).max(0) / 1_000,
                    )?),
                    _ => None,
                },
                claimant,
                state_json: row.get(2)?,
                ended: row.get(3)?,
                cancelled: row.get(4)?,
            })
        },
    )?;
    // In the order asked for.
    views.sort_by_key(|view| session_ids.iter().position(|id| *id == view.session_id));
    Ok(views)
}

pub(crate) fn sessions_left_by(
    conn: &Connection,
    name: &str,
    current_id: &str,
) -> Result<Vec<SessionRequest>, Failure> {
    collect(
        conn,
        &format!(
            "SELECT {REQUEST_COLUMNS} FROM session_requests
             WHERE claimant_name = ?1 AND claimant_id IS NOT NULL AND claimant_id <> ?2
               AND ended_at IS NULL
             ORDER BY request_seq"
        ),
        params![name, current_id],
        request_from,
    )
}

pub(crate) fn llm_usage_totals(conn: &Connection) -> Result<Vec<LlmUsageTotal>, Failure> {
    collect(
        conn,
        "SELECT provider, model, COUNT(*), SUM(input_tokens), SUM(output_tokens), SUM(cost_usd)
         FROM llm_usage GROUP BY provider, model ORDER BY provider, model",
        [],
        |row| {
            Ok(LlmUsageTotal {
                provider: row.get(0)?,
                model: row.get(1)?,
                calls: to_u64("llm_usage count", row.get(2)?)?,
                input_tokens: to_u64("llm_usage.input_tokens", row.get(3)?)?,
                output_tokens: to_u64("llm_usage.output_tokens", row.get(4)?)?,
                cost_usd: row.get(5)?,
            })
        },
    )
}

pub(crate) fn agent_spend_totals(conn: &Connection) -> Result<Vec<AgentSpendTotal>, Failure> {
    collect(
        conn,
        "SELECT agent, COUNT(*), SUM(input_tokens), SUM(output_tokens), SUM(cache_read_tokens),
             SUM(cache_creation_tokens), SUM(cost_usd)
         FROM sessions GROUP BY agent ORDER BY agent",
        [],
        |row| {
            Ok(AgentSpendTotal {
                agent: row.get(0)?,
                sessions: to_u64("sessions count", row.get(1)?)?,
                input_tokens: to_u64("sessions.input_tokens", row.get(2)?)?,
                output_tokens: to_u64("sessions.output_tokens", row.get(3)?)?,
                cache_read_tokens: to_u64("sessions.cache_read_tokens", row.get(4)?)?,
                cache_creation_tokens: to_u64("sessions.cache_creation_tokens", row.get(5)?)?,
                cost_usd: row.get(6)?,
            })
        },
    )
}

// ----- operations -----

/// Counts a beat, and records a delivery that is then rolled back: a webhook is accepted only
/// when that insert works, so a damaged inbox must fail the health check too.
pub(crate) fn heartbeat(conn: &Connection, probe_body: &StoredBody) -> Result<(), Failure> {
    let now = Utc::now();
    let changed = conn
        .prepare_cached("UPDATE heartbeat SET beats = beats + 1, at = ?1 WHERE id = 1")?
        .execute([micros(now)])?;
    if changed != 1 {
        return Err(StoreError::corrupt("heartbeat", "the heartbeat row is missing").into());
    }
    let mut body_sha256 = [0_u8; 32];
    body_sha256[..8].copy_from_slice(&now.timestamp_micros().to_be_bytes());
    body_sha256[8..20].copy_from_slice(b"health-probe");
    let probe = NewDelivery {
        delivery_id: None,
        event: "health_probe".to_owned(),
        event_type: None,
        action: None,
        repository: None,
        issue_number: None,
        body_sha256,
        body: Vec::new(),
        status: IntakeStatus::Ignored,
        received_at: now,
    };
    conn.prepare_cached("SAVEPOINT health_probe")?.execute([])?;
    let recorded = record_delivery(conn, &probe, probe_body);
    conn.prepare_cached("ROLLBACK TO health_probe")?
        .execute([])?;
    conn.prepare_cached("RELEASE health_probe")?.execute([])?;
    recorded.map(|_| ())
}
