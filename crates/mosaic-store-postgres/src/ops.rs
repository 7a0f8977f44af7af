//! The SQL behind every store operation, as plain functions on a connection or a transaction.
//! Mirrors `mosaic-store`'s SQLite operations rule for rule; where SQLite relies on its single
//! writer, these take row locks (`FOR UPDATE`) or per-issue advisory locks instead, since
//! PostgreSQL runs concurrent writers side by side.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use deadpool_postgres::GenericClient;
use mosaic_domain::events::TrackerState;
use mosaic_domain::{IssueMetadata, IssueRef, IssueState, RepoName};
use mosaic_store::*;
use tokio_postgres::Row;
use tokio_postgres::types::{FromSql, Json};

use crate::failure::Failure;
use mosaic_store::body::{self, BodyCodec, StoredBody};

type OpResult<T> = Result<T, Failure>;

/// Longest error text kept per row; error messages can embed whole responses.
const MAX_ERROR_LEN: usize = 4_000;

// ----- conversions -----

fn corrupt(column: &'static str, reason: impl Into<String>) -> Failure {
    Failure::Store(StoreError::Corrupt {
        column,
        reason: reason.into(),
    })
}

fn not_found(what: String) -> Failure {
    Failure::Store(StoreError::NotFound { what })
}

fn conflict(message: String) -> Failure {
    Failure::Store(StoreError::Conflict(message))
}

fn invalid(message: String) -> Failure {
    Failure::Store(StoreError::InvalidInput(message))
}

/// A column's value; a value of an unexpected type is a corrupt column, not a panic.
fn get<'r, T: FromSql<'r>>(row: &'r Row, column: &'static str) -> OpResult<T> {
    row.try_get(column)
        .map_err(|e| corrupt(column, crate::failure::describe(&e)))
}

fn to_i64(what: &str, value: u64) -> OpResult<i64> {
    i64::try_from(value).map_err(|_| invalid(format!("{what} {value} is too large to store")))
}

fn to_u64(column: &'static str, value: i64) -> OpResult<u64> {
    u64::try_from(value).map_err(|_| corrupt(column, format!("negative value {value}")))
}

fn to_u32(column: &'static str, value: i64) -> OpResult<u32> {
    u32::try_from(value).map_err(|_| corrupt(column, format!("value {value} out of range")))
}

fn finite(what: &str, value: f64) -> OpResult<f64> {
    if value.is_finite() {
        Ok(value)
    } else {
        Err(invalid(format!(
            "{what} must be a finite number, got {value}"
        )))
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

fn repo_from(column: &'static str, repository: &str) -> OpResult<RepoName> {
    repository
        .parse()
        .map_err(|e| corrupt(column, format!("{e}")))
}

fn issue_from(column: &'static str, repository: &str, number: i64) -> OpResult<IssueRef> {
    Ok(IssueRef::new(
        repo_from(column, repository)?,
        to_u64("number", number)?,
    ))
}

/// Repository names met in one bulk read, each parsed once (a parsed name is shared).
#[derive(Default)]
struct RepoNames(HashMap<String, RepoName>);

impl RepoNames {
    /// Beyond this many distinct names the rest are parsed each time (bounded memory).
    const MAX: usize = 4_096;

    fn issue(&mut self, column: &'static str, repository: &str, number: i64) -> OpResult<IssueRef> {
        let repo = match self.0.get(repository) {
            Some(repo) => repo.clone(),
            None => {
                let repo = repo_from(column, repository)?;
                if self.0.len() < Self::MAX {
                    self.0.insert(repository.to_owned(), repo.clone());
                }
                repo
            }
        };
        Ok(IssueRef::new(repo, to_u64("number", number)?))
    }
}

fn issue_key(issue: &IssueRef) -> OpResult<(String, i64)> {
    Ok((
        issue.repo.to_string(),
        to_i64("issue number", issue.number)?,
    ))
}

fn state_from(column: &'static str, name: &str) -> OpResult<IssueState> {
    name.parse()
        .map_err(|_| corrupt(column, format!("unknown issue state `{name}`")))
}

fn tracker_state_name(state: TrackerState) -> &'static str {
    match state {
        TrackerState::Open => "open",
        TrackerState::Closed => "closed",
    }
}

fn tracker_state_from(name: &str) -> OpResult<TrackerState> {
    match name {
        "open" => Ok(TrackerState::Open),
        "closed" => Ok(TrackerState::Closed),
        other => Err(corrupt("issue_snapshots.state", format!("`{other}`"))),
    }
}

/// A JSONB column holding a `T`.
fn json_column<T: serde::de::DeserializeOwned>(row: &Row, column: &'static str) -> OpResult<T> {
    let value: serde_json::Value = get(row, column)?;
    serde_json::from_value(value).map_err(|e| corrupt(column, e.to_string()))
}

fn to_json<T: serde::Serialize>(what: &str, value: &T) -> OpResult<serde_json::Value> {
    serde_json::to_value(value)
        .map_err(|e| invalid(format!("{what} cannot be stored as JSON: {e}")))
}

fn hash_from(value: Vec<u8>) -> OpResult<[u8; 32]> {
    <[u8; 32]>::try_from(value.as_slice())
        .map_err(|_| corrupt("inbox.body_sha256", format!("{} bytes", value.len())))
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

/// Runs a cached statement and converts every row.
async fn collect<T>(
    client: &impl GenericClient,
    sql: &str,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    mut convert: impl FnMut(&Row) -> OpResult<T>,
) -> OpResult<Vec<T>> {
    let statement = client.prepare_cached(sql).await?;
    client
        .query(&statement, params)
        .await?
        .iter()
        .map(&mut convert)
        .collect()
}

async fn query_opt(
    client: &impl GenericClient,
    sql: &str,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
) -> OpResult<Option<Row>> {
    let statement = client.prepare_cached(sql).await?;
    Ok(client.query_opt(&statement, params).await?)
}

async fn execute(
    client: &impl GenericClient,
    sql: &str,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
) -> OpResult<u64> {
    let statement = client.prepare_cached(sql).await?;
    Ok(client.execute(&statement, params).await?)
}

// ----- inbox -----

const DELIVERY_COLUMNS: &str = "id, delivery_id, event, event_type, action, repository, \
    issue_number, body_sha256, body, status, attempts, last_error, received_at, next_attempt_at, \
    body_codec, replay_of";

fn delivery_status_from(name: &str) -> OpResult<DeliveryStatus> {
    DeliveryStatus::parse(name).ok_or_else(|| corrupt("inbox.status", format!("`{name}`")))
}

fn delivery_from(row: &Row) -> OpResult<Delivery> {
    let status: String = get(row, "status")?;
    Ok(Delivery {
        id: get(row, "id")?,
        delivery_id: get(row, "delivery_id")?,
        event: get(row, "event")?,
        event_type: get(row, "event_type")?,
        action: get(row, "action")?,
        repository: get(row, "repository")?,
        issue_number: get::<Option<i64>>(row, "issue_number")?
            .map(|n| to_u64("inbox.issue_number", n))
            .transpose()?,
        body_sha256: hash_from(get(row, "body_sha256")?)?,
        body: match get::<Option<Vec<u8>>>(row, "body")? {
            Some(stored) => body::decode(&get::<String>(row, "body_codec")?, stored)?,
            None => Vec::new(),
        },
        status: delivery_status_from(&status)?,
        attempts: to_u32("inbox.attempts", get(row, "attempts")?)?,
        last_error: get(row, "last_error")?,
        received_at: get(row, "received_at")?,
        next_attempt_at: get(row, "next_attempt_at")?,
        replay_of: get(row, "replay_of")?,
    })
}

macro_rules! insert_inbox_sql {
    () => {
        "INSERT INTO inbox (delivery_id, event, event_type, action, repository, issue_number,
             body_sha256, body, body_codec, status, duplicate_of, received_at, next_attempt_at,
             replay_of)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $12, $13)"
    };
}
/// A new delivery, or a possible replay: inserts nothing when its delivery id (or, for a new
/// delivery, its body) is already taken. A concurrent insert of the same key waits for the
/// other transaction and then inserts nothing, so the original can be looked up afterwards.
const INSERT_UNLESS_TAKEN: &str =
    concat!(insert_inbox_sql!(), " ON CONFLICT DO NOTHING RETURNING id");
/// A duplicate row: outside every unique index.
const INSERT_DUPLICATE: &str = concat!(insert_inbox_sql!(), " RETURNING id");

/// How often recording retries after a concurrent writer took the key it was about to use.
const RECORD_ATTEMPTS: usize = 3;

/// Records a delivery, or a duplicate row pointing at the delivery it repeats.
///
/// Changes the database with exactly one INSERT whatever happens, so it needs no transaction
/// of its own (each statement commits by itself). The common case, a new delivery, is that
/// INSERT alone: the unique indexes detect a repeat, and only then are the originals looked up.
pub(crate) async fn record_delivery(
    client: &impl GenericClient,
    delivery: &NewDelivery,
    stored: &StoredBody,
) -> OpResult<RecordOutcome> {
    let issue_number = delivery
        .issue_number
        .map(|n| to_i64("issue number", n))
        .transpose()?;
    let status = DeliveryStatus::from(delivery.status);
    let insert = async |sql: &str,
                        body: Option<&StoredBody>,
                        status: DeliveryStatus,
                        duplicate_of: Option<i64>,
                        replay_of: Option<i64>|
           -> OpResult<Option<i64>> {
        let statement = client.prepare_cached(sql).await?;
        let row = client
            .query_opt(
                &statement,
                &[
                    &delivery.delivery_id,
                    &delivery.event,
                    &delivery.event_type,
                    &delivery.action,
                    &delivery.repository,
                    &issue_number,
                    &&delivery.body_sha256[..],
                    &body.map(|b| b.bytes.as_slice()),
                    &body.map_or(BodyCodec::Identity, |b| b.codec).as_str(),
                    &status.as_str(),
                    &duplicate_of,
                    &delivery.received_at,
                    &replay_of,
                ],
            )
            .await?;
        row.map(|row| get::<i64>(&row, "id")).transpose()
    };

    if let Some(id) = insert(INSERT_UNLESS_TAKEN, Some(stored), status, None, None).await? {
        return Ok(RecordOutcome::Recorded { id });
    }
    for _ in 0..RECORD_ATTEMPTS {
        // A unique key is taken: the delivery id first (the same delivery again), else the body.
        let by_id = match &delivery.delivery_id {
            Some(delivery_id) => query_opt(
                client,
                "SELECT id FROM inbox WHERE duplicate_of IS NULL AND delivery_id = $1",
                &[delivery_id],
            )
            .await?
            .map(|row| get::<i64>(&row, "id"))
            .transpose()?,
            None => None,
        };
        let existing_id = match by_id {
            Some(id) => id,
            None => {
                let original = query_opt(
                    client,
                    "SELECT id FROM inbox
                     WHERE duplicate_of IS NULL AND replay_of IS NULL AND body_sha256 = $1",
                    &[&&delivery.body_sha256[..]],
                )
                .await?
                .map(|row| get::<i64>(&row, "id"))
                .transpose()?
                .ok_or_else(|| {
                    conflict(
                        "the delivery conflicts with a stored one that has neither its id nor its body"
                            .to_owned(),
                    )
                })?;
                // The same body under a new delivery id: kept and handled (Gitea repeats a body
                // byte for byte when the same change happens again within its one-second
                // timestamps). Without an id nothing tells it from a resend, and an ignored
                // event has nothing to handle: a duplicate.
                if delivery.delivery_id.is_some() && delivery.status == IntakeStatus::Pending {
                    match insert(
                        INSERT_UNLESS_TAKEN,
                        Some(stored),
                        status,
                        None,
                        Some(original),
                    )
                    .await?
                    {
                        Some(id) => {
                            return Ok(RecordOutcome::PossibleReplay {
                                id,
                                replay_of: original,
                            });
                        }
                        // A concurrent caller recorded this delivery id meanwhile: look again.
                        None => continue,
                    }
                }
                original
            }
        };
        // Kept for auditing (who replayed what, when) without a second copy of the body.
        insert(
            INSERT_DUPLICATE,
            None,
            DeliveryStatus::Duplicate,
            Some(existing_id),
            None,
        )
        .await?;
        return Ok(RecordOutcome::Duplicate { existing_id });
    }
    Err(conflict(format!(
        "delivery {:?} kept colliding with concurrent writers",
        delivery.delivery_id
    )))
}

pub(crate) async fn pending_deliveries(
    client: &impl GenericClient,
    now: DateTime<Utc>,
    limit: u32,
) -> OpResult<Vec<Delivery>> {
    collect(
        client,
        &format!(
            "SELECT {DELIVERY_COLUMNS} FROM inbox
             WHERE status = 'pending' AND next_attempt_at <= $1 ORDER BY id LIMIT $2"
        ),
        &[&now, &i64::from(limit)],
        delivery_from,
    )
    .await
}

/// The row's status, locked until the transaction ends: concurrent status changes of one row
/// run one after the other (SQLite's single writer gives that for free).
async fn locked_delivery_status(
    client: &impl GenericClient,
    id: DeliveryRowId,
) -> OpResult<DeliveryStatus> {
    match query_opt(
        client,
        "SELECT status FROM inbox WHERE id = $1 FOR UPDATE",
        &[&id],
    )
    .await?
    {
        Some(row) => delivery_status_from(&get::<String>(&row, "status")?),
        None => Err(not_found(format!("delivery {id}"))),
    }
}

fn not_pending(id: DeliveryRowId, status: DeliveryStatus, operation: &str) -> Failure {
    conflict(format!(
        "delivery {id} is {}, so it cannot be {operation}",
        status.as_str()
    ))
}

pub(crate) async fn mark_processed(client: &impl GenericClient, id: DeliveryRowId) -> OpResult<()> {
    match locked_delivery_status(client, id).await? {
        DeliveryStatus::Processed => Ok(()),
        DeliveryStatus::Pending => {
            execute(
                client,
                "UPDATE inbox SET status = 'processed', processed_at = $2 WHERE id = $1",
                &[&id, &Utc::now()],
            )
            .await?;
            Ok(())
        }
        other => Err(not_pending(id, other, "marked processed")),
    }
}

pub(crate) async fn mark_failed_attempt(
    client: &impl GenericClient,
    id: DeliveryRowId,
    error: &str,
    next_attempt_at: DateTime<Utc>,
) -> OpResult<()> {
    match locked_delivery_status(client, id).await? {
        DeliveryStatus::Pending => {
            execute(
                client,
                "UPDATE inbox SET attempts = attempts + 1, last_error = $2, next_attempt_at = $3
                 WHERE id = $1",
                &[&id, &truncate_error(error), &next_attempt_at],
            )
            .await?;
            Ok(())
        }
        other => Err(not_pending(id, other, "retried")),
    }
}

pub(crate) async fn mark_dead(
    client: &impl GenericClient,
    id: DeliveryRowId,
    error: &str,
) -> OpResult<()> {
    match locked_delivery_status(client, id).await? {
        DeliveryStatus::Failed => Ok(()),
        DeliveryStatus::Pending => {
            execute(
                client,
                "UPDATE inbox SET status = 'failed', attempts = attempts + 1, last_error = $2,
                     processed_at = $3
                 WHERE id = $1",
                &[&id, &truncate_error(error), &Utc::now()],
            )
            .await?;
            Ok(())
        }
        other => Err(not_pending(id, other, "marked failed")),
    }
}

/// Handled rows received before `$1` that still hold a body (retention drops it: NULL, like a
/// duplicate's, read back empty).
const PRUNABLE: &str = "status <> 'pending' AND received_at < $1 AND body IS NOT NULL";

async fn body_volume(
    client: &impl GenericClient,
    sql: &str,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
) -> OpResult<Volume> {
    let rows = collect(client, sql, params, |row| {
        Ok((get::<i64>(row, "rows")?, get::<i64>(row, "bytes")?))
    })
    .await?;
    let (rows, bytes) = rows.first().copied().unwrap_or_default();
    Ok(Volume {
        count: to_u64("inbox rows", rows)?,
        bytes: to_u64("inbox body bytes", bytes)?,
    })
}

/// Runs inside one transaction: the measure and the removal see the same rows.
pub(crate) async fn prune_delivery_bodies(
    client: &impl GenericClient,
    before: DateTime<Utc>,
) -> OpResult<Volume> {
    let pruned = body_volume(
        client,
        &format!(
            "SELECT COUNT(*)::BIGINT AS rows, COALESCE(SUM(LENGTH(body)), 0)::BIGINT AS bytes
             FROM inbox WHERE {PRUNABLE}"
        ),
        &[&before],
    )
    .await?;
    execute(
        client,
        &format!("UPDATE inbox SET body = NULL WHERE {PRUNABLE}"),
        &[&before],
    )
    .await?;
    Ok(pruned)
}

pub(crate) async fn retained_delivery_bodies(client: &impl GenericClient) -> OpResult<Volume> {
    body_volume(
        client,
        "SELECT COUNT(*)::BIGINT AS rows, COALESCE(SUM(LENGTH(body)), 0)::BIGINT AS bytes
         FROM inbox WHERE body IS NOT NULL",
        &[],
    )
    .await
}

pub(crate) async fn recent_deliveries(
    client: &impl GenericClient,
    before: Option<DeliveryRowId>,
    limit: u32,
) -> OpResult<Vec<DeliverySummary>> {
    collect(
        client,
        "SELECT id, delivery_id, event, event_type, action, repository, issue_number,
             body_sha256, status, duplicate_of, attempts, last_error, received_at, processed_at
         FROM inbox WHERE $2::BIGINT IS NULL OR id < $2 ORDER BY id DESC LIMIT $1",
        &[&i64::from(limit), &before],
        |row| {
            let status: String = get(row, "status")?;
            Ok(DeliverySummary {
                id: get(row, "id")?,
                delivery_id: get(row, "delivery_id")?,
                event: get(row, "event")?,
                event_type: get(row, "event_type")?,
                action: get(row, "action")?,
                repository: get(row, "repository")?,
                issue_number: get::<Option<i64>>(row, "issue_number")?
                    .map(|n| to_u64("inbox.issue_number", n))
                    .transpose()?,
                body_sha256: hex(get::<&[u8]>(row, "body_sha256")?),
                status: delivery_status_from(&status)?,
                duplicate_of: get(row, "duplicate_of")?,
                attempts: to_u32("inbox.attempts", get(row, "attempts")?)?,
                last_error: get(row, "last_error")?,
                received_at: get(row, "received_at")?,
                processed_at: get(row, "processed_at")?,
            })
        },
    )
    .await
}

pub(crate) async fn has_pending_delivery(
    client: &impl GenericClient,
    issue: &IssueRef,
) -> OpResult<bool> {
    // The partial index of pending rows finds the few there are; the issue filters them.
    let row = client
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM inbox WHERE status = 'pending' AND repository = $1
                 AND issue_number = $2)",
            &[
                &issue.repo.to_string(),
                &to_i64("issue number", issue.number)?,
            ],
        )
        .await?;
    Ok(row.try_get(0)?)
}

pub(crate) async fn latest_outbox_id(client: &impl GenericClient) -> OpResult<Option<OutboxId>> {
    let row = client.query_one("SELECT max(id) FROM outbox", &[]).await?;
    Ok(row.try_get(0)?)
}

pub(crate) async fn delivery_counts(client: &impl GenericClient) -> OpResult<DeliveryCounts> {
    let rows = collect(
        client,
        "SELECT status, COUNT(*) AS count FROM inbox GROUP BY status",
        &[],
        |row| Ok((get::<String>(row, "status")?, get::<i64>(row, "count")?)),
    )
    .await?;
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

/// Runs inside one transaction: the effects and the status change commit together or not at all.
pub(crate) async fn complete_delivery(
    client: &impl GenericClient,
    id: DeliveryRowId,
    effects: &DeliveryEffects,
) -> OpResult<CompletionOutcome> {
    match locked_delivery_status(client, id).await? {
        DeliveryStatus::Processed => Ok(CompletionOutcome::AlreadyProcessed),
        DeliveryStatus::Pending => {
            if let Some(snapshot) = &effects.snapshot {
                upsert_issue_snapshot(client, snapshot).await?;
            }
            commit_transitions(client, &effects.transitions).await?;
            mark_processed(client, id).await?;
            Ok(CompletionOutcome::Completed)
        }
        other => Err(not_pending(id, other, "completed")),
    }
}

// ----- issue snapshots -----

pub(crate) async fn upsert_issue_snapshot(
    client: &impl GenericClient,
    snapshot: &IssueSnapshot,
) -> OpResult<SnapshotOutcome> {
    let (repository, number) = issue_key(&snapshot.issue)?;
    // An equal updated_at replaces: deliveries are handled in order, so the later one wins.
    let changed = execute(
        client,
        "INSERT INTO issue_snapshots (repository, number, title, body, labels, assignees,
             state, updated_at, html_url, stored_at, comments)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
         ON CONFLICT (repository, number) DO UPDATE SET
             title = excluded.title, body = excluded.body, labels = excluded.labels,
             assignees = excluded.assignees, state = excluded.state,
             updated_at = excluded.updated_at, html_url = excluded.html_url,
             stored_at = excluded.stored_at, comments = excluded.comments
         WHERE excluded.updated_at >= issue_snapshots.updated_at",
        &[
            &repository,
            &number,
            &snapshot.title,
            &snapshot.body,
            &Json(&snapshot.labels),
            &Json(&snapshot.assignees),
            &tracker_state_name(snapshot.state),
            &snapshot.updated_at,
            &snapshot.html_url,
            &Utc::now(),
            &snapshot
                .comments
                .map(|n| to_i64("comment count", n))
                .transpose()?,
        ],
    )
    .await?;
    Ok(if changed > 0 {
        SnapshotOutcome::Stored
    } else {
        SnapshotOutcome::KeptNewer
    })
}

pub(crate) async fn get_issue_snapshot(
    client: &impl GenericClient,
    issue: &IssueRef,
) -> OpResult<Option<IssueSnapshot>> {
    let (repository, number) = issue_key(issue)?;
    let Some(row) = query_opt(
        client,
        "SELECT title, body, labels, assignees, state, updated_at, html_url, comments
         FROM issue_snapshots WHERE repository = $1 AND number = $2",
        &[&repository, &number],
    )
    .await?
    else {
        return Ok(None);
    };
    Ok(Some(IssueSnapshot {
        issue: issue.clone(),
        title: get(&row, "title")?,
        body: get(&row, "body")?,
        labels: json_column(&row, "labels")?,
        assignees: json_column(&row, "assignees")?,
        state: tracker_state_from(get(&row, "state")?)?,
        updated_at: get(&row, "updated_at")?,
        html_url: get(&row, "html_url")?,
        comments: get::<Option<i64>>(&row, "comments")?
            .map(|n| to_u64("issue_snapshots.comments", n))
            .transpose()?,
    }))
}

/// One query for any number of issues: the asked keys go in as two arrays, joined with the
/// table, and come back with their positions (a repeated issue is found at each of them).
pub(crate) async fn issue_snapshot_summaries(
    client: &impl GenericClient,
    issues: &[IssueRef],
) -> OpResult<Vec<Option<SnapshotSummary>>> {
    let mut found = vec![None; issues.len()];
    if issues.is_empty() {
        return Ok(found);
    }
    if issues.len() > SUMMARY_LOOKUPS_UP_TO {
        return all_snapshot_summaries(client, issues).await;
    }
    let mut repositories = Vec::with_capacity(issues.len());
    let mut numbers = Vec::with_capacity(issues.len());
    for issue in issues {
        let (repository, number) = issue_key(issue)?;
        repositories.push(repository);
        numbers.push(number);
    }
    let rows = collect(
        client,
        "SELECT asked.position, s.state, s.labels
         FROM unnest($1::text[], $2::int8[]) WITH ORDINALITY AS asked (repository, number, position)
         JOIN issue_snapshots s USING (repository, number)",
        &[&repositories, &numbers],
        |row| {
            let position: i64 = get(row, "position")?;
            let summary = SnapshotSummary {
                state: tracker_state_from(get(row, "state")?)?,
                labels: json_column(row, "labels")?,
            };
            Ok((position, summary))
        },
    )
    .await?;
    for (position, summary) in rows {
        // WITH ORDINALITY counts from 1.
        let slot = usize::try_from(position - 1)
            .ok()
            .and_then(|index| found.get_mut(index))
            .ok_or_else(|| corrupt("issue_snapshots", format!("position {position}")))?;
        *slot = Some(summary);
    }
    Ok(found)
}

/// Above this many issues, summaries come from one scan of the table, as on SQLite (the same
/// bound, so the conformance suite's 603 issues take this path on both): the planner expects
/// `unnest` to give 10 rows and looks every asked key up in the primary key, which took 0.35 of
/// 0.45 s for a recovery's 100,000 issues (EXPLAIN ANALYZE).
const SUMMARY_LOOKUPS_UP_TO: usize = 256;

async fn all_snapshot_summaries(
    client: &impl GenericClient,
    issues: &[IssueRef],
) -> OpResult<Vec<Option<SnapshotSummary>>> {
    // Positions by repository, then number, so a row is matched without allocating; a repeated
    // issue is answered from its first position afterwards.
    let mut wanted: HashMap<&str, HashMap<i64, usize>> = HashMap::new();
    let mut repeats = Vec::new();
    for (position, issue) in issues.iter().enumerate() {
        let number = to_i64("issue number", issue.number)?;
        let numbers = wanted.entry(issue.repo.as_str()).or_default();
        if let Some(&first) = numbers.get(&number) {
            repeats.push((position, first));
        } else {
            numbers.insert(number, position);
        }
    }
    let mut found = vec![None; issues.len()];
    let rows = collect(
        client,
        "SELECT repository, number, state, labels FROM issue_snapshots",
        &[],
        |row| {
            let Some(numbers) = wanted.get(get::<&str>(row, "repository")?) else {
                return Ok(None);
            };
            let Some(&position) = numbers.get(&get::<i64>(row, "number")?) else {
                return Ok(None);
            };
            let summary = SnapshotSummary {
                state: tracker_state_from(get(row, "state")?)?,
                labels: json_column(row, "labels")?,
            };
            Ok(Some((position, summary)))
        },
    )
    .await?;
    for (position, summary) in rows.into_iter().flatten() {
        found[position] = Some(summary);
    }
    for (position, first) in repeats {
        found[position] = found[first].clone();
    }
    Ok(found)
}

// ----- coordinated issues -----

const ISSUE_COLUMNS: &str = "repository, number, state, metadata, assigned_agent, estimate, \
    priority, queued_at, attempts, input_tokens, output_tokens, cost_usd, updated_at";

fn issue_record_from(row: &Row, names: &mut RepoNames) -> OpResult<IssueRecord> {
    let metadata = match get::<Option<serde_json::Value>>(row, "metadata")? {
        None => None,
        Some(value) => Some(
            serde_json::from_value::<IssueMetadata>(value)
                .map_err(|e| corrupt("issues.metadata", e.to_string()))?,
        ),
    };
    Ok(IssueRecord {
        issue: names.issue(
            "issues.repository",
            get(row, "repository")?,
            get(row, "number")?,
        )?,
        state: state_from("issues.state", get(row, "state")?)?,
        metadata,
        assigned_agent: get(row, "assigned_agent")?,
        estimate: get::<Option<i64>>(row, "estimate")?
            .map(|n| to_u64("issues.estimate", n))
            .transpose()?,
        priority: get(row, "priority")?,
        queued_at: get(row, "queued_at")?,
        attempts: to_u32("issues.attempts", get(row, "attempts")?)?,
        input_tokens: to_u64("issues.input_tokens", get(row, "input_tokens")?)?,
        output_tokens: to_u64("issues.output_tokens", get(row, "output_tokens")?)?,
        cost_usd: get(row, "cost_usd")?,
        updated_at: get(row, "updated_at")?,
    })
}

async fn stored_state(
    client: &impl GenericClient,
    issue: &IssueRef,
) -> OpResult<Option<IssueState>> {
    let (repository, number) = issue_key(issue)?;
    query_opt(
        client,
        "SELECT state FROM issues WHERE repository = $1 AND number = $2",
        &[&repository, &number],
    )
    .await?
    .map(|row| state_from("issues.state", get(&row, "state")?))
    .transpose()
}

fn state_name(state: Option<IssueState>) -> &'static str {
    state.map_or("absent", IssueState::as_str)
}

/// The most issues a transaction locks one by one; a batch naming more locks them all at once.
/// PostgreSQL's lock table is shared and small (about `max_locks_per_transaction` × connections:
/// 6,400 entries by default): a recovery settling 25,500 issues in one transaction ran out of it
/// ("out of shared memory").
const MOST_ISSUE_LOCKS: usize = 64;
const EVERY_ISSUE: &str = "mosaic-store every issue";

/// Holds every issue the batches change until the transaction ends, so a transition's check of
/// the stored state and its write cannot interleave with another writer's (a lost update), also
/// for an issue not stored yet. Taken in one order (sorted) so two writers cannot deadlock. A
/// large batch takes one exclusive lock on every issue instead; the others share it first.
async fn lock_issues(client: &impl GenericClient, batches: &[TransitionBatch]) -> OpResult<()> {
    let mut keys: Vec<String> = batches
        .iter()
        .map(|batch| format!("mosaic-store issue {}", batch.issue.issue))
        .collect();
    keys.sort_unstable();
    keys.dedup();
    if keys.len() > MOST_ISSUE_LOCKS {
        execute(
            client,
            "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))",
            &[&EVERY_ISSUE],
        )
        .await?;
        return Ok(());
    }
    execute(
        client,
        "SELECT pg_advisory_xact_lock_shared(hashtextextended($1, 0))",
        &[&EVERY_ISSUE],
    )
    .await?;
    for key in &keys {
        execute(
            client,
            "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))",
            &[key],
        )
        .await?;
    }
    Ok(())
}

async fn apply_batch(client: &impl GenericClient, batch: &TransitionBatch) -> OpResult<()> {
    let record = &batch.issue;
    let (repository, number) = issue_key(&record.issue)?;

    if let Some(transition) = &batch.transition {
        if transition.to != record.state {
            return Err(invalid(format!(
                "transition of {} goes to {} but the record says {}",
                record.issue, transition.to, record.state
            )));
        }
        let current = stored_state(client, &record.issue).await?;
        if current != transition.from {
            return Err(conflict(format!(
                "{} is {}, not {} as the transition to {} expects",
                record.issue,
                state_name(current),
                state_name(transition.from),
                transition.to
            )));
        }
    }

    let metadata = record
        .metadata
        .as_ref()
        .map(|m| to_json("metadata", m))
        .transpose()?;
    let estimate = record.estimate.map(|e| to_i64("estimate", e)).transpose()?;
    execute(
        client,
        &format!(
            "INSERT INTO issues ({ISSUE_COLUMNS})
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)
             ON CONFLICT (repository, number) DO UPDATE SET
                 state = excluded.state, metadata = excluded.metadata,
                 assigned_agent = excluded.assigned_agent, estimate = excluded.estimate,
                 priority = excluded.priority, queued_at = excluded.queued_at,
                 attempts = excluded.attempts, input_tokens = excluded.input_tokens,
                 output_tokens = excluded.output_tokens, cost_usd = excluded.cost_usd,
                 updated_at = excluded.updated_at"
        ),
        &[
            &repository,
            &number,
            &record.state.as_str(),
            &metadata,
            &record.assigned_agent,
            &estimate,
            &record.priority,
            &record.queued_at,
            &i64::from(record.attempts),
            &to_i64("input tokens", record.input_tokens)?,
            &to_i64("output tokens", record.output_tokens)?,
            &finite("cost", record.cost_usd)?,
            &record.updated_at,
        ],
    )
    .await?;

    if let Some(transition) = &batch.transition {
        execute(
            client,
            "INSERT INTO issue_transitions (repository, number, from_state, to_state, cause, at)
             VALUES ($1, $2, $3, $4, $5, $6)",
            &[
                &repository,
                &number,
                &transition.from.map(IssueState::as_str),
                &transition.to.as_str(),
                &transition.cause,
                &transition.at,
            ],
        )
        .await?;
    }

    if let Some(blockers) = &batch.blocked_by {
        execute(
            client,
            "DELETE FROM dependencies WHERE repository = $1 AND number = $2",
            &[&repository, &number],
        )
        .await?;
        for blocker in blockers {
            let (blocker_repository, blocker_number) = issue_key(blocker)?;
            execute(
                client,
                "INSERT INTO dependencies (repository, number, blocker_repository, blocker_number)
                 VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
                &[&repository, &number, &blocker_repository, &blocker_number],
            )
            .await?;
        }
    }

    for item in &batch.outbox {
        enqueue_outbox(client, item).await?;
    }
    if let Some(session) = &batch.session_started {
        start_session(client, session).await?;
    }
    if let Some(end) = &batch.session_ended {
        end_session(client, end).await?;
    }
    Ok(())
}

/// Runs inside one transaction: every batch or none.
pub(crate) async fn commit_transitions(
    client: &impl GenericClient,
    batches: &[TransitionBatch],
) -> OpResult<()> {
    lock_issues(client, batches).await?;
    for batch in batches {
        apply_batch(client, batch).await?;
    }
    Ok(())
}

pub(crate) async fn get_issue(
    client: &impl GenericClient,
    issue: &IssueRef,
) -> OpResult<Option<IssueRecord>> {
    let (repository, number) = issue_key(issue)?;
    query_opt(
        client,
        &format!("SELECT {ISSUE_COLUMNS} FROM issues WHERE repository = $1 AND number = $2"),
        &[&repository, &number],
    )
    .await?
    .map(|row| issue_record_from(&row, &mut RepoNames::default()))
    .transpose()
}

pub(crate) async fn prune_session_requests(
    client: &impl GenericClient,
    before: DateTime<Utc>,
) -> OpResult<u64> {
    execute(
        client,
        "DELETE FROM session_commands WHERE session_id IN
             (SELECT session_id FROM session_requests
               WHERE COALESCE(ended_at, cancelled_at) < $1)",
        &[&before],
    )
    .await?;
    execute(
        client,
        "DELETE FROM session_requests WHERE COALESCE(ended_at, cancelled_at) < $1",
        &[&before],
    )
    .await
}

pub(crate) async fn issue_state_counts(
    client: &impl GenericClient,
) -> OpResult<Vec<(IssueState, u64)>> {
    collect(
        client,
        "SELECT state, COUNT(*) AS n FROM issues GROUP BY state ORDER BY state",
        &[],
        |row| {
            let count: i64 = get(row, "n")?;
            Ok((
                state_from("issues.state", get(row, "state")?)?,
                u64::try_from(count).unwrap_or_default(),
            ))
        },
    )
    .await
}

pub(crate) async fn list_issues(
    client: &impl GenericClient,
    states: &[IssueState],
) -> OpResult<Vec<IssueRecord>> {
    let mut names = RepoNames::default();
    // Sorted here, not in SQL: the trait promises `IssueRef` order (owner, then name, then
    // number), which no text collation gives.
    let mut records = if states.is_empty() {
        collect(
            client,
            &format!("SELECT {ISSUE_COLUMNS} FROM issues"),
            &[],
            |row| issue_record_from(row, &mut names),
        )
        .await?
    } else {
        let states: Vec<&str> = states.iter().map(|s| s.as_str()).collect();
        collect(
            client,
            &format!("SELECT {ISSUE_COLUMNS} FROM issues WHERE state = ANY($1)"),
            &[&states],
            |row| issue_record_from(row, &mut names),
        )
        .await?
    };
    records.sort_unstable_by(|a, b| a.issue.cmp(&b.issue));
    Ok(records)
}

pub(crate) async fn issue_history(
    client: &impl GenericClient,
    issue: &IssueRef,
) -> OpResult<Vec<TransitionRecord>> {
    let (repository, number) = issue_key(issue)?;
    collect(
        client,
        "SELECT id, from_state, to_state, cause, at FROM issue_transitions
         WHERE repository = $1 AND number = $2 ORDER BY id",
        &[&repository, &number],
        |row| {
            Ok(TransitionRecord {
                id: get(row, "id")?,
                issue: issue.clone(),
                from: get::<Option<&str>>(row, "from_state")?
                    .map(|s| state_from("issue_transitions.from_state", s))
                    .transpose()?,
                to: state_from("issue_transitions.to_state", get(row, "to_state")?)?,
                cause: get(row, "cause")?,
                at: get(row, "at")?,
            })
        },
    )
    .await
}

pub(crate) async fn dependency_edges(client: &impl GenericClient) -> OpResult<Vec<DependencyEdge>> {
    let mut names = RepoNames::default();
    let mut edges = collect(
        client,
        "SELECT repository, number, blocker_repository, blocker_number FROM dependencies",
        &[],
        |row| {
            Ok(DependencyEdge {
                issue: names.issue(
                    "dependencies.repository",
                    get(row, "repository")?,
                    get(row, "number")?,
                )?,
                blocker: names.issue(
                    "dependencies.blocker_repository",
                    get(row, "blocker_repository")?,
                    get(row, "blocker_number")?,
                )?,
            })
        },
    )
    .await?;
    // Byte order, as SQLite sorts text, sorted here: `ORDER BY … COLLATE "C"` cannot use the
    // primary key (the database's collation) and sorted 300,000 edges on disk (`work_mem`),
    // 0.37 of 0.42 s (EXPLAIN ANALYZE).
    fn key(edge: &DependencyEdge) -> (&[u8], u64, &[u8], u64) {
        (
            edge.issue.repo.as_str().as_bytes(),
            edge.issue.number,
            edge.blocker.repo.as_str().as_bytes(),
            edge.blocker.number,
        )
    }
    edges.sort_unstable_by(|a, b| key(a).cmp(&key(b)));
    Ok(edges)
}

// ----- outbox -----

async fn enqueue_outbox(client: &impl GenericClient, item: &NewOutboxItem) -> OpResult<()> {
    let (repository, number) = issue_key(&item.issue)?;
    if item.idempotency_key.is_empty() {
        return Err(invalid(
            "an outbox item needs a non-empty idempotency key".to_owned(),
        ));
    }
    // A replayed state change produces the same key: the first enqueue wins.
    execute(
        client,
        "INSERT INTO outbox (repository, number, idempotency_key, kind, payload, status,
             next_attempt_at, created_at)
         VALUES ($1, $2, $3, $4, $5, 'pending', $6, $6)
         ON CONFLICT (idempotency_key) DO NOTHING",
        &[
            &repository,
            &number,
            &item.idempotency_key,
            &item.kind,
            &item.payload,
            &item.created_at,
        ],
    )
    .await?;
    Ok(())
}

const OUTBOX_COLUMNS: &str = "id, repository, number, idempotency_key, kind, payload, status, \
    attempts, last_error, next_attempt_at, created_at";

fn outbox_item_from(row: &Row) -> OpResult<OutboxItem> {
    let status: &str = get(row, "status")?;
    Ok(OutboxItem {
        id: get(row, "id")?,
        issue: issue_from(
            "outbox.repository",
            get(row, "repository")?,
            get(row, "number")?,
        )?,
        idempotency_key: get(row, "idempotency_key")?,
        kind: get(row, "kind")?,
        payload: get(row, "payload")?,
        status: OutboxStatus::parse(status)
            .ok_or_else(|| corrupt("outbox.status", format!("`{status}`")))?,
        attempts: to_u32("outbox.attempts", get(row, "attempts")?)?,
        last_error: get(row, "last_error")?,
        next_attempt_at: get(row, "next_attempt_at")?,
        created_at: get(row, "created_at")?,
    })
}

pub(crate) async fn next_outbox_items(
    client: &impl GenericClient,
    now: DateTime<Utc>,
    limit: u32,
) -> OpResult<Vec<OutboxItem>> {
    // Head of line per issue: an item waits while an older pending write to its issue exists,
    // even when that older one is backing off.
    collect(
        client,
        &format!(
            "SELECT {OUTBOX_COLUMNS} FROM outbox o
             WHERE o.status = 'pending' AND o.next_attempt_at <= $1
               AND o.id = (SELECT MIN(p.id) FROM outbox p
                           WHERE p.status = 'pending'
                             AND p.repository = o.repository AND p.number = o.number)
             ORDER BY o.id LIMIT $2"
        ),
        &[&now, &i64::from(limit)],
        outbox_item_from,
    )
    .await
}

/// The item's status, locked until the transaction ends (see [`locked_delivery_status`]).
async fn locked_outbox_status(client: &impl GenericClient, id: OutboxId) -> OpResult<OutboxStatus> {
    let row = query_opt(
        client,
        "SELECT status FROM outbox WHERE id = $1 FOR UPDATE",
        &[&id],
    )
    .await?
    .ok_or_else(|| not_found(format!("outbox item {id}")))?;
    let status: &str = get(&row, "status")?;
    OutboxStatus::parse(status).ok_or_else(|| corrupt("outbox.status", format!("`{status}`")))
}

pub(crate) async fn mark_outbox_done(client: &impl GenericClient, id: OutboxId) -> OpResult<()> {
    match locked_outbox_status(client, id).await? {
        OutboxStatus::Done => Ok(()),
        OutboxStatus::Pending => {
            execute(
                client,
                "UPDATE outbox SET status = 'done', attempts = attempts + 1, done_at = $2
                 WHERE id = $1",
                &[&id, &Utc::now()],
            )
            .await?;
            Ok(())
        }
        OutboxStatus::Failed => Err(conflict(format!(
            "outbox item {id} was given up, so it cannot be marked done"
        ))),
    }
}

pub(crate) async fn mark_outbox_failed(
    client: &impl GenericClient,
    id: OutboxId,
    error: &str,
    retry_at: Option<DateTime<Utc>>,
) -> OpResult<()> {
    match locked_outbox_status(client, id).await? {
        OutboxStatus::Pending => {
            let error = truncate_error(error);
            match retry_at {
                Some(at) => {
                    execute(
                        client,
                        "UPDATE outbox SET attempts = attempts + 1, last_error = $2,
                             next_attempt_at = $3
                         WHERE id = $1",
                        &[&id, &error, &at],
                    )
                    .await?
                }
                None => {
                    execute(
                        client,
                        "UPDATE outbox SET status = 'failed', attempts = attempts + 1,
                             last_error = $2, done_at = $3
                         WHERE id = $1",
                        &[&id, &error, &Utc::now()],
                    )
                    .await?
                }
            };
            Ok(())
        }
        other => Err(conflict(format!(
            "outbox item {id} is {}, so it cannot fail again",
            other.as_str()
        ))),
    }
}

pub(crate) async fn outbox_backlog(client: &impl GenericClient) -> OpResult<OutboxBacklog> {
    let rows = collect(
        client,
        "SELECT status, COUNT(*) AS count, MIN(created_at) AS oldest FROM outbox
         WHERE status IN ('pending', 'failed') GROUP BY status",
        &[],
        |row| {
            Ok((
                get::<String>(row, "status")?,
                get::<i64>(row, "count")?,
                get::<Option<DateTime<Utc>>>(row, "oldest")?,
            ))
        },
    )
    .await?;
    let mut backlog = OutboxBacklog::default();
    for (status, count, oldest) in rows {
        let count = to_u64("outbox count", count)?;
        match status.as_str() {
            "pending" => {
                backlog.pending = count;
                backlog.oldest_pending_at = oldest;
            }
            _ => backlog.failed = count,
        }
    }
    Ok(backlog)
}

pub(crate) async fn outbox_for_issue(
    client: &impl GenericClient,
    issue: &IssueRef,
) -> OpResult<Vec<OutboxItem>> {
    let (repository, number) = issue_key(issue)?;
    collect(
        client,
        &format!(
            "SELECT {OUTBOX_COLUMNS} FROM outbox WHERE repository = $1 AND number = $2 ORDER BY id"
        ),
        &[&repository, &number],
        outbox_item_from,
    )
    .await
}

// ----- sessions -----

async fn start_session(client: &impl GenericClient, session: &NewSession) -> OpResult<()> {
    let (repository, number) = issue_key(&session.issue)?;
    let inserted = execute(
        client,
        "INSERT INTO sessions (id, agent, repository, number, pid, started_at)
         VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (id) DO NOTHING",
        &[
            &session.id,
            &session.agent,
            &repository,
            &number,
            &session.pid.map(i64::from),
            &session.started_at,
        ],
    )
    .await?;
    if inserted == 0 {
        return Err(conflict(format!(
            "session {} was already started",
            session.id
        )));
    }
    Ok(())
}

async fn end_session(client: &impl GenericClient, end: &SessionEnd) -> OpResult<()> {
    let changed = execute(
        client,
        "UPDATE sessions SET ended_at = $2, outcome = $3, detail = $4, input_tokens = $5,
             output_tokens = $6, cost_usd = $7, cache_read_tokens = $8,
             cache_creation_tokens = $9
         WHERE id = $1 AND ended_at IS NULL",
        &[
            &end.session_id,
            &end.ended_at,
            &end.outcome.as_str(),
            &end.detail.as_deref().map(truncate_error),
            &to_i64("input tokens", end.input_tokens)?,
            &to_i64("output tokens", end.output_tokens)?,
            &finite("cost", end.cost_usd)?,
            &to_i64("cache read tokens", end.cache_read_tokens)?,
            &to_i64("cache creation tokens", end.cache_creation_tokens)?,
        ],
    )
    .await?;
    if changed == 1 {
        return Ok(());
    }
    let exists = query_opt(
        client,
        "SELECT 1 FROM sessions WHERE id = $1",
        &[&end.session_id],
    )
    .await?;
    Err(match exists {
        Some(_) => conflict(format!("session {} already ended", end.session_id)),
        None => not_found(format!("session {}", end.session_id)),
    })
}

const SESSION_COLUMNS: &str = "id, agent, repository, number, pid, started_at, ended_at, outcome, \
    detail, input_tokens, output_tokens, cost_usd, cache_read_tokens, cache_creation_tokens";

fn session_from(row: &Row) -> OpResult<SessionRecord> {
    Ok(SessionRecord {
        id: get(row, "id")?,
        agent: get(row, "agent")?,
        issue: issue_from(
            "sessions.repository",
            get(row, "repository")?,
            get(row, "number")?,
        )?,
        pid: get::<Option<i64>>(row, "pid")?
            .map(|pid| to_u32("sessions.pid", pid))
            .transpose()?,
        started_at: get(row, "started_at")?,
        ended_at: get(row, "ended_at")?,
        outcome: get::<Option<&str>>(row, "outcome")?
            .map(|name| {
                SessionOutcome::parse(name)
                    .ok_or_else(|| corrupt("sessions.outcome", format!("`{name}`")))
            })
            .transpose()?,
        detail: get(row, "detail")?,
        input_tokens: to_u64("sessions.input_tokens", get(row, "input_tokens")?)?,
        output_tokens: to_u64("sessions.output_tokens", get(row, "output_tokens")?)?,
        cache_read_tokens: to_u64("sessions.cache_read_tokens", get(row, "cache_read_tokens")?)?,
        cache_creation_tokens: to_u64(
            "sessions.cache_creation_tokens",
            get(row, "cache_creation_tokens")?,
        )?,
        cost_usd: get(row, "cost_usd")?,
    })
}

pub(crate) async fn open_sessions(client: &impl GenericClient) -> OpResult<Vec<SessionRecord>> {
    collect(
        client,
        &format!(
            "SELECT {SESSION_COLUMNS} FROM sessions WHERE ended_at IS NULL
             ORDER BY started_at, id COLLATE \"C\""
        ),
        &[],
        session_from,
    )
    .await
}

pub(crate) async fn sessions_for_issue(
    client: &impl GenericClient,
    issue: &IssueRef,
) -> OpResult<Vec<SessionRecord>> {
    let (repository, number) = issue_key(issue)?;
    collect(
        client,
        &format!(
            "SELECT {SESSION_COLUMNS} FROM sessions WHERE repository = $1 AND number = $2
             ORDER BY started_at, id COLLATE \"C\""
        ),
        &[&repository, &number],
        session_from,
    )
    .await
}

pub(crate) async fn record_rotation(
    client: &impl GenericClient,
    rotation: &RotationRecord,
) -> OpResult<()> {
    let (repository, number) = issue_key(&rotation.issue)?;
    execute(
        client,
        "INSERT INTO session_rotations (old_session_id, new_session_id, agent_type, repository,
             number, next_issue, context_before_tokens, context_before_percent, success,
             error_message, at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
        &[
            &rotation.old_session_id,
            &rotation.new_session_id,
            &rotation.agent_type,
            &repository,
            &number,
            &rotation.next_issue.as_ref().map(ToString::to_string),
            &to_i64("context tokens", rotation.context_before_tokens)?,
            &finite("context percent", rotation.context_before_percent)?,
            &rotation.success,
            &rotation.error_message.as_deref().map(truncate_error),
            &rotation.at,
        ],
    )
    .await?;
    Ok(())
}

pub(crate) async fn recent_rotations(
    client: &impl GenericClient,
    before: Option<RotationRowId>,
    limit: u32,
) -> OpResult<Vec<StoredRotation>> {
    collect(
        client,
        "SELECT id, old_session_id, new_session_id, agent_type, repository, number, next_issue,
             context_before_tokens, context_before_percent, success, error_message, at
         FROM session_rotations WHERE $2::BIGINT IS NULL OR id < $2
         ORDER BY id DESC LIMIT $1",
        &[&i64::from(limit), &before],
        |row| {
            let rotation = RotationRecord {
                old_session_id: get(row, "old_session_id")?,
                new_session_id: get(row, "new_session_id")?,
                agent_type: get(row, "agent_type")?,
                issue: issue_from(
                    "session_rotations.repository",
                    get(row, "repository")?,
                    get(row, "number")?,
                )?,
                next_issue: get::<Option<&str>>(row, "next_issue")?
                    .map(|text| {
                        text.parse::<IssueRef>()
                            .map_err(|e| corrupt("session_rotations.next_issue", e.to_string()))
                    })
                    .transpose()?,
                context_before_tokens: to_u64(
                    "session_rotations.context_before_tokens",
                    get(row, "context_before_tokens")?,
                )?,
                context_before_percent: get(row, "context_before_percent")?,
                success: get(row, "success")?,
                error_message: get(row, "error_message")?,
                at: get(row, "at")?,
            };
            Ok(StoredRotation {
                id: get(row, "id")?,
                rotation,
            })
        },
    )
    .await
}

pub(crate) async fn record_compaction(
    client: &impl GenericClient,
    compaction: &CompactionRecord,
) -> OpResult<()> {
    let (repository, number) = issue_key(&compaction.issue)?;
    execute(
        client,
        "INSERT INTO compactions (session_id, repository, number, before_tokens, after_tokens,
             freed_tokens, freed_percent, success, at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        &[
            &compaction.session_id,
            &repository,
            &number,
            &to_i64("tokens before", compaction.before_tokens)?,
            &to_i64("tokens after", compaction.after_tokens)?,
            &to_i64("freed tokens", compaction.freed_tokens)?,
            &finite("freed percent", compaction.freed_percent)?,
            &compaction.success,
            &compaction.at,
        ],
    )
    .await?;
    Ok(())
}

pub(crate) async fn compactions_for_session(
    client: &impl GenericClient,
    session_id: &str,
) -> OpResult<Vec<CompactionRecord>> {
    collect(
        client,
        "SELECT session_id, repository, number, before_tokens, after_tokens, freed_tokens,
             freed_percent, success, at
         FROM compactions WHERE session_id = $1 ORDER BY id",
        &[&session_id],
        |row| {
            Ok(CompactionRecord {
                session_id: get(row, "session_id")?,
                issue: issue_from(
                    "compactions.repository",
                    get(row, "repository")?,
                    get(row, "number")?,
                )?,
                before_tokens: to_u64("compactions.before_tokens", get(row, "before_tokens")?)?,
                after_tokens: to_u64("compactions.after_tokens", get(row, "after_tokens")?)?,
                freed_tokens: to_u64("compactions.freed_tokens", get(row, "freed_tokens")?)?,
                freed_percent: get(row, "freed_percent")?,
                success: get(row, "success")?,
                at: get(row, "at")?,
            })
        },
    )
    .await
}

pub(crate) async fn record_session_spend(
    client: &impl GenericClient,
    session_id: &str,
    spend: &SessionSpend,
) -> OpResult<()> {
    execute(
        client,
        "UPDATE sessions SET input_tokens = $2, output_tokens = $3, cache_read_tokens = $4,
             cache_creation_tokens = $5, cost_usd = $6
         WHERE id = $1 AND ended_at IS NULL",
        &[
            &session_id,
            &to_i64("input tokens", spend.input_tokens)?,
            &to_i64("output tokens", spend.output_tokens)?,
            &to_i64("cache read tokens", spend.cache_read_tokens)?,
            &to_i64("cache creation tokens", spend.cache_creation_tokens)?,
            &finite("cost", spend.cost_usd)?,
        ],
    )
    .await?;
    Ok(())
}

pub(crate) async fn record_session_process(
    client: &impl GenericClient,
    session_id: &str,
    pid: u32,
) -> OpResult<bool> {
    let updated = execute(
        client,
        "UPDATE sessions SET pid = $2 WHERE id = $1 AND ended_at IS NULL AND pid IS NULL",
        &[&session_id, &i64::from(pid)],
    )
    .await?;
    Ok(updated > 0)
}

// ----- workspaces and pull requests -----

pub(crate) async fn put_workspace(
    client: &impl GenericClient,
    record: &WorkspaceRecord,
) -> OpResult<()> {
    let (repository, number) = issue_key(&record.issue)?;
    execute(
        client,
        "INSERT INTO workspaces (repository, number, path, branch, base_branch, head_commit,
             prepared_at, removed_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
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
        &[
            &repository,
            &number,
            &record.path,
            &record.branch,
            &record.base_branch,
            &record.head_commit,
            &record.prepared_at,
            &record.removed_at,
        ],
    )
    .await?;
    Ok(())
}

pub(crate) async fn record_pull_request(
    client: &impl GenericClient,
    issue: &IssueRef,
    branch: &str,
    pull_request: &PullRequestLink,
) -> OpResult<()> {
    let (repository, number) = issue_key(issue)?;
    execute(
        client,
        "UPDATE workspaces SET pull_number = $4, pull_url = $5
         WHERE repository = $1 AND number = $2 AND branch = $3",
        &[
            &repository,
            &number,
            &branch,
            &to_i64("pull request number", pull_request.number)?,
            &pull_request.url,
        ],
    )
    .await?;
    Ok(())
}

pub(crate) async fn get_workspace(
    client: &impl GenericClient,
    issue: &IssueRef,
) -> OpResult<Option<IssueWorkspace>> {
    let (repository, number) = issue_key(issue)?;
    let Some(row) = query_opt(
        client,
        "SELECT path, branch, base_branch, head_commit, prepared_at, removed_at, pull_number,
             pull_url
         FROM workspaces WHERE repository = $1 AND number = $2",
        &[&repository, &number],
    )
    .await?
    else {
        return Ok(None);
    };
    let pull_number: Option<i64> = get(&row, "pull_number")?;
    let pull_url: Option<String> = get(&row, "pull_url")?;
    Ok(Some(IssueWorkspace {
        workspace: WorkspaceRecord {
            issue: issue.clone(),
            path: get(&row, "path")?,
            branch: get(&row, "branch")?,
            base_branch: get(&row, "base_branch")?,
            head_commit: get(&row, "head_commit")?,
            prepared_at: get(&row, "prepared_at")?,
            removed_at: get(&row, "removed_at")?,
        },
        pull_request: pull_number
            .map(|number| {
                Ok::<_, Failure>(PullRequestLink {
                    number: to_u64("workspaces.pull_number", number)?,
                    url: pull_url.unwrap_or_default(),
                })
            })
            .transpose()?,
    }))
}

pub(crate) async fn record_gate_runs(
    client: &impl GenericClient,
    runs: &[GateRunRecord],
) -> OpResult<()> {
    for run in runs {
        let (repository, number) = issue_key(&run.issue)?;
        let coverage = run
            .coverage_percent
            .map(|percent| finite("coverage percent", percent))
            .transpose()?;
        execute(
            client,
            "INSERT INTO gate_runs (repository, number, attempt, session_id, gate, command,
                 required, status, detail, duration_ms, output_tail, coverage_percent, at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
            &[
                &repository,
                &number,
                &i64::from(run.attempt),
                &run.session_id,
                &run.gate,
                &Json(&run.command),
                &run.required,
                &run.status,
                &run.detail,
                &to_i64("gate duration", run.duration_ms)?,
                &run.output_tail,
                &coverage,
                &run.at,
            ],
        )
        .await?;
    }
    Ok(())
}

pub(crate) async fn gate_runs_for_issue(
    client: &impl GenericClient,
    issue: &IssueRef,
) -> OpResult<Vec<GateRunRecord>> {
    let (repository, number) = issue_key(issue)?;
    collect(
        client,
        "SELECT attempt, session_id, gate, command, required, status, detail, duration_ms,
             output_tail, coverage_percent, at
         FROM gate_runs WHERE repository = $1 AND number = $2 ORDER BY id",
        &[&repository, &number],
        |row| {
            Ok(GateRunRecord {
                issue: issue.clone(),
                attempt: to_u32("gate_runs.attempt", get(row, "attempt")?)?,
                session_id: get(row, "session_id")?,
                gate: get(row, "gate")?,
                command: json_column(row, "command")?,
                required: get(row, "required")?,
                status: get(row, "status")?,
                detail: get(row, "detail")?,
                duration_ms: to_u64("gate_runs.duration_ms", get(row, "duration_ms")?)?,
                output_tail: get(row, "output_tail")?,
                coverage_percent: get(row, "coverage_percent")?,
                at: get(row, "at")?,
            })
        },
    )
    .await
}

// ----- parse cache and LLM usage -----

pub(crate) async fn cache_get(client: &impl GenericClient, key: &str) -> OpResult<Option<String>> {
    query_opt(
        client,
        "SELECT value FROM parse_cache WHERE cache_key = $1",
        &[&key],
    )
    .await?
    .map(|row| get::<String>(&row, "value"))
    .transpose()
}

pub(crate) async fn cache_put(
    client: &impl GenericClient,
    key: &str,
    value_json: &str,
) -> OpResult<()> {
    if key.is_empty() {
        return Err(invalid("cache key must not be empty".to_owned()));
    }
    serde_json::from_str::<serde::de::IgnoredAny>(value_json)
        .map_err(|e| invalid(format!("cache value for `{key}` is not valid JSON: {e}")))?;
    execute(
        client,
        "INSERT INTO parse_cache (cache_key, value, stored_at) VALUES ($1, $2, $3)
         ON CONFLICT (cache_key) DO UPDATE SET value = excluded.value, stored_at = excluded.stored_at",
        &[&key, &value_json, &Utc::now()],
    )
    .await?;
    Ok(())
}

pub(crate) async fn record_llm_usage(
    client: &impl GenericClient,
    usage: &LlmUsageRecord,
) -> OpResult<()> {
    execute(
        client,
        "INSERT INTO llm_usage (provider, model, input_tokens, output_tokens, cost_usd, issue, at)
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
        &[
            &usage.provider,
            &usage.model,
            &to_i64("input tokens", usage.input_tokens)?,
            &to_i64("output tokens", usage.output_tokens)?,
            &finite("cost", usage.cost_usd)?,
            &usage.issue.as_ref().map(ToString::to_string),
            &usage.at,
        ],
    )
    .await?;
    Ok(())
}

/// By the database's clock: coordinators on several hosts agree on who is alive.
pub(crate) async fn beat_peer(client: &impl GenericClient, peer: &Peer) -> OpResult<()> {
    execute(
        client,
        "INSERT INTO peers (id, name, is_leader, capacity, at) VALUES ($1, $2, $3, $4, now())
         ON CONFLICT (id) DO UPDATE SET name = excluded.name, is_leader = excluded.is_leader,
             capacity = excluded.capacity, at = excluded.at",
        &[
            &peer.id,
            &peer.name,
            &peer.leading,
            &i64::from(peer.capacity),
        ],
    )
    .await?;
    // Every start is a new peer: forget those not heard from for a day.
    execute(
        client,
        "DELETE FROM peers WHERE at < now() - interval '1 day'",
        &[],
    )
    .await?;
    Ok(())
}

pub(crate) async fn peers_alive(
    client: &impl GenericClient,
    within: std::time::Duration,
) -> OpResult<Vec<PeerBeat>> {
    collect(
        client,
        "SELECT id, name, is_leader, capacity, at FROM peers
          WHERE at >= now() - make_interval(secs => $1)
          ORDER BY name COLLATE \"C\", id COLLATE \"C\"",
        &[&within.as_secs_f64()],
        |row| {
            Ok(PeerBeat {
                peer: Peer {
                    id: get(row, "id")?,
                    name: get(row, "name")?,
                    leading: get(row, "is_leader")?,
                    capacity: to_u32("peers.capacity", get(row, "capacity")?)?,
                },
                at: get(row, "at")?,
            })
        },
    )
    .await
}

// ----- sessions shared among coordinators -----
// Times are the database's (now()): coordinators on several hosts agree on a session's silence.

pub(crate) async fn request_session(
    client: &impl GenericClient,
    request: &SessionRequest,
) -> OpResult<()> {
    let (repository, number) = issue_key(&request.issue)?;
    let inserted = execute(
        client,
        "INSERT INTO session_requests (session_id, repository, number, agent, task_json)
         VALUES ($1, $2, $3, $4, $5) ON CONFLICT (session_id) DO NOTHING",
        &[
            &request.session_id,
            &repository,
            &number,
            &request.agent,
            &request.task_json,
        ],
    )
    .await?;
    if inserted == 0 {
        return Err(conflict(format!(
            "session {} was already requested",
            request.session_id
        )));
    }
    Ok(())
}

const REQUEST_COLUMNS: &str = "session_id, repository, number, agent, task_json";

fn request_from(row: &Row) -> OpResult<SessionRequest> {
    let repository: String = get(row, "repository")?;
    Ok(SessionRequest {
        session_id: get(row, "session_id")?,
        issue: issue_from(
            "session_requests.repository",
            &repository,
            get(row, "number")?,
        )?,
        agent: get(row, "agent")?,
        task_json: get(row, "task_json")?,
    })
}

/// One transaction (the caller's). The claimant's own lock keeps two claims of one claimant
/// from both counting the same free place; `SKIP LOCKED` lets claimants pass each other's
/// rows instead of waiting for them (a skipped row is being claimed by someone else).
pub(crate) async fn claim_session(
    client: &impl GenericClient,
    claimant: &Peer,
    agents: &[String],
    busy_within: std::time::Duration,
) -> OpResult<Option<SessionRequest>> {
    let busy_ms = i64::try_from(busy_within.as_millis()).unwrap_or(i64::MAX);
    if agents.is_empty() || claimant.capacity == 0 {
        return Ok(None);
    }
    execute(
        client,
        "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))",
        &[&format!("mosaic-store claimant {}", claimant.id)],
    )
    .await?;
    let open: i64 = query_opt(
        client,
        "SELECT COUNT(*) FROM session_requests WHERE claimant_id = $1 AND ended_at IS NULL",
        &[&claimant.id],
    )
    .await?
    .map_or(Ok(0), |row| get(&row, "count"))?;
    if open >= i64::from(claimant.capacity) {
        return Ok(None);
    }
    let Some(row) = query_opt(
        client,
        &format!(
            "SELECT {REQUEST_COLUMNS} FROM session_requests AS r
              WHERE r.claimant_id IS NULL AND r.cancelled_at IS NULL AND r.agent = ANY($1)
                AND NOT EXISTS (
                    SELECT 1 FROM session_requests AS other
                     WHERE other.repository = r.repository AND other.number = r.number
                       AND other.claimant_id IS NOT NULL AND other.ended_at IS NULL
                       AND other.reported_at > now() - $2::BIGINT * INTERVAL '1 millisecond')
              ORDER BY r.request_seq LIMIT 1 FOR UPDATE OF r SKIP LOCKED"
        ),
        &[&agents, &busy_ms],
    )
    .await?
    else {
        return Ok(None);
    };
    let request = request_from(&row)?;
    // Two claimants may each pick a different request of one issue (the check above reads
    // what was committed when it began): the issue's lock makes the second see the first's
    // claim, and pass.
    let (repository, number) = issue_key(&request.issue)?;
    execute(
        client,
        "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))",
        &[&format!("mosaic-store issue {repository}#{number}")],
    )
    .await?;
    let busy = query_opt(
        client,
        "SELECT 1 AS busy FROM session_requests
          WHERE repository = $1 AND number = $2 AND claimant_id IS NOT NULL
            AND ended_at IS NULL
            AND reported_at > now() - $3::BIGINT * INTERVAL '1 millisecond'",
        &[&repository, &number, &busy_ms],
    )
    .await?;
    if busy.is_some() {
        return Ok(None);
    }
    execute(
        client,
        "UPDATE session_requests SET claimant_id = $2, claimant_name = $3, claimed_at = now(),
             reported_at = now()
          WHERE session_id = $1",
        &[&request.session_id, &claimant.id, &claimant.name],
    )
    .await?;
    Ok(Some(request))
}

/// The row is locked first: a command left meanwhile is either before this report (and
/// answered now) or after it (and answered next time), never skipped.
pub(crate) async fn report_session(
    client: &impl GenericClient,
    report: &SessionReport,
    after_seq: i64,
) -> OpResult<SessionOrders> {
    let Some(row) = query_opt(
        client,
        "SELECT claimant_id, cancelled_at IS NOT NULL AS cancelled FROM session_requests
          WHERE session_id = $1 FOR UPDATE",
        &[&report.session_id],
    )
    .await?
    else {
        return Ok(cancelled_orders());
    };
    let claimant: Option<String> = get(&row, "claimant_id")?;
    if claimant.as_deref() != Some(report.claimant.as_str()) {
        return Ok(cancelled_orders());
    }
    execute(
        client,
        "UPDATE session_requests SET state_json = $2, reported_at = now(),
             ended_at = CASE WHEN $3 THEN now() END
          WHERE session_id = $1 AND ended_at IS NULL",
        &[&report.session_id, &report.state_json, &report.ended],
    )
    .await?;
    let commands = collect(
        client,
        "SELECT seq, command_json FROM session_commands WHERE session_id = $1 AND seq > $2
          ORDER BY seq",
        &[&report.session_id, &after_seq],
        |row| {
            Ok(SessionCommand {
                seq: get(row, "seq")?,
                command_json: get(row, "command_json")?,
            })
        },
    )
    .await?;
    Ok(SessionOrders {
        cancelled: get(&row, "cancelled")?,
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

/// Holds the session's row while numbering the command: commands of one session commit in
/// their order, so a claimant reading after the last one it saw misses none.
pub(crate) async fn command_session(
    client: &impl GenericClient,
    session_id: &str,
    command_json: &str,
) -> OpResult<i64> {
    let locked = query_opt(
        client,
        "SELECT 1 FROM session_requests WHERE session_id = $1 FOR UPDATE",
        &[&session_id],
    )
    .await?;
    if locked.is_none() {
        return Err(not_found(format!("session request {session_id}")));
    }
    let inserted = query_opt(
        client,
        "INSERT INTO session_commands (session_id, command_json) VALUES ($1, $2)
         ON CONFLICT (session_id, md5(command_json)) DO NOTHING RETURNING seq",
        &[&session_id, &command_json],
    )
    .await?;
    let row = match inserted {
        Some(row) => row,
        // Stored before (a retry): its first sequence number.
        None => query_opt(
            client,
            "SELECT seq FROM session_commands
              WHERE session_id = $1 AND md5(command_json) = md5($2) AND command_json = $2",
            &[&session_id, &command_json],
        )
        .await?
        .ok_or_else(|| {
            corrupt(
                "session_commands.command_json",
                "a repeated command vanished",
            )
        })?,
    };
    get(&row, "seq")
}

pub(crate) async fn cancel_session_requests(
    client: &impl GenericClient,
    session_ids: Option<&[String]>,
) -> OpResult<u64> {
    match session_ids {
        None => {
            execute(
                client,
                "UPDATE session_requests SET cancelled_at = now()
                  WHERE cancelled_at IS NULL AND ended_at IS NULL",
                &[],
            )
            .await
        }
        Some(ids) => {
            execute(
                client,
                "UPDATE session_requests SET cancelled_at = now()
                  WHERE cancelled_at IS NULL AND ended_at IS NULL AND session_id = ANY($1)",
                &[&ids],
            )
            .await
        }
    }
}

pub(crate) async fn session_requests(
    client: &impl GenericClient,
    session_ids: &[String],
) -> OpResult<Vec<SessionRequestView>> {
    let mut views = collect(
        client,
        "SELECT session_id, claimant_id, state_json, ended_at IS NOT NULL AS ended,
                cancelled_at IS NOT NULL AS cancelled,
                CASE WHEN claimant_id IS NOT NULL THEN
                    GREATEST(0, floor(extract(epoch FROM clock_timestamp() - reported_at) * 1000))::BIGINT
                END AS silent_ms
           FROM session_requests WHERE session_id = ANY($1)",
        &[&session_ids],
        |row| {
            let silent_ms: Option<i64> = get(row, "silent_ms")?;
            Ok(SessionRequestView {
                session_id: get(row, "session_id")?,
                claimant: get(row, "claimant_id")?,
                state_json: get(row, "state_json")?,
                ended: get(row, "ended")?,
                cancelled: get(row, "cancelled")?,
                silent_ms: silent_ms
                    .map(|ms| to_u64("session_requests.reported_at", ms))
                    .transpose()?,
            })
        },
    )
    .await?;
    // In the order asked for.
    views.sort_by_key(|view| session_ids.iter().position(|id| *id == view.session_id));
    Ok(views)
}

pub(crate) async fn sessions_left_by(
    client: &impl GenericClient,
    name: &str,
    current_id: &str,
) -> OpResult<Vec<SessionRequest>> {
    collect(
        client,
        &format!(
            "SELECT {REQUEST_COLUMNS} FROM session_requests
              WHERE claimant_name = $1 AND claimant_id IS NOT NULL AND claimant_id <> $2
                AND ended_at IS NULL
              ORDER BY request_seq"
        ),
        &[&name, &current_id],
        request_from,
    )
    .await
}

pub(crate) async fn llm_usage_totals(client: &impl GenericClient) -> OpResult<Vec<LlmUsageTotal>> {
    // SUM of BIGINT is NUMERIC in PostgreSQL: cast back (a total beyond i64 fails loudly).
    collect(
        client,
        "SELECT provider, model, COUNT(*) AS calls, SUM(input_tokens)::int8 AS input_tokens,
             SUM(output_tokens)::int8 AS output_tokens, SUM(cost_usd) AS cost_usd
         FROM llm_usage GROUP BY provider, model
         ORDER BY provider COLLATE \"C\", model COLLATE \"C\"",
        &[],
        |row| {
            Ok(LlmUsageTotal {
                provider: get(row, "provider")?,
                model: get(row, "model")?,
                calls: to_u64("llm_usage count", get(row, "calls")?)?,
                input_tokens: to_u64("llm_usage.input_tokens", get(row, "input_tokens")?)?,
                output_tokens: to_u64("llm_usage.output_tokens", get(row, "output_tokens")?)?,
                cost_usd: get(row, "cost_usd")?,
            })
        },
    )
    .await
}

pub(crate) async fn agent_spend_totals(
    client: &impl GenericClient,
) -> OpResult<Vec<AgentSpendTotal>> {
    // SUM of BIGINT is NUMERIC in PostgreSQL: cast back (a total beyond i64 fails loudly).
    collect(
        client,
        "SELECT agent, COUNT(*) AS sessions, SUM(input_tokens)::int8 AS input_tokens,
             SUM(output_tokens)::int8 AS output_tokens,
             SUM(cache_read_tokens)::int8 AS cache_read_tokens,
             SUM(cache_creation_tokens)::int8 AS cache_creation_tokens,
             SUM(cost_usd) AS cost_usd
         FROM sessions GROUP BY agent ORDER BY agent COLLATE \"C\"",
        &[],
        |row| {
            Ok(AgentSpendTotal {
                agent: get(row, "agent")?,
                sessions: to_u64("sessions count", get(row, "sessions")?)?,
                input_tokens: to_u64("sessions.input_tokens", get(row, "input_tokens")?)?,
                output_tokens: to_u64("sessions.output_tokens", get(row, "output_tokens")?)?,
                cache_read_tokens: to_u64(
                    "sessions.cache_read_tokens",
                    get(row, "cache_read_tokens")?,
                )?,
                cache_creation_tokens: to_u64(
                    "sessions.cache_creation_tokens",
                    get(row, "cache_creation_tokens")?,
                )?,
                cost_usd: get(row, "cost_usd")?,
            })
        },
    )
    .await
}

// ----- operations -----

/// Counts a beat, and records a delivery that is then rolled back: a webhook is accepted only
/// when that insert works, so a damaged inbox must fail the health check too. Runs inside the
/// caller's transaction.
pub(crate) async fn heartbeat(
    tx: &mut deadpool_postgres::Transaction<'_>,
    probe_body: &StoredBody,
) -> OpResult<()> {
    let now = Utc::now();
    let changed = execute(
        &*tx,
        "UPDATE heartbeat SET beats = beats + 1, at = $1 WHERE id = 1",
        &[&now],
    )
    .await?;
    if changed != 1 {
        return Err(corrupt("heartbeat", "the heartbeat row is missing"));
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
    let savepoint = tx.savepoint("health_probe").await?;
    let recorded = record_delivery(&savepoint, &probe, probe_body).await;
    savepoint.rollback().await?;
    recorded.map(|_| ())
}
