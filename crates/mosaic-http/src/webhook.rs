//! `POST /webhook/gitea`: size limit → signature → headers → parse → durable record → answer.
//!
//! Nothing in a body is interpreted before its signature holds (invariant 2), and the answer is
//! 200 only once the delivery's inbox row is committed (invariant 1).

use std::time::Instant;

use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use http::{HeaderMap, StatusCode, header};
use mosaic_domain::events::{EventKind, WebhookPayload, parse_payload};
use mosaic_security::VerifyError;
use mosaic_store::{IntakeStatus, NewDelivery, RecordOutcome};
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::error::ApiError;
use crate::server::AppState;

/// Header names for the event, its fine-grained type and the delivery id, in the order they
/// are looked for (Gitea, Forgejo, Gogs, then GitHub-compatible).
const EVENT_HEADERS: [&str; 4] = [
    "x-gitea-event",
    "x-forgejo-event",
    "x-gogs-event",
    "x-github-event",
];
const EVENT_TYPE_HEADERS: [&str; 3] = [
    "x-gitea-event-type",
    "x-forgejo-event-type",
    "x-gogs-event-type",
];
const DELIVERY_HEADERS: [&str; 4] = [
    "x-gitea-delivery",
    "x-forgejo-delivery",
    "x-gogs-delivery",
    "x-github-delivery",
];

fn first_header<'a>(headers: &'a HeaderMap, names: &[&str]) -> Option<&'a str> {
    names
        .iter()
        .filter_map(|name| headers.get(*name))
        .filter_map(|value| value.to_str().ok())
        .map(str::trim)
        .find(|value| !value.is_empty())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BodyEncoding {
    Json,
    Form,
}

fn body_encoding(headers: &HeaderMap) -> Result<BodyEncoding, ApiError> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    match essence.as_str() {
        "application/json" => Ok(BodyEncoding::Json),
        "application/x-www-form-urlencoded" => Ok(BodyEncoding::Form),
        _ => Err(ApiError::UnsupportedMediaType(format!(
            "content type `{}` is not supported: send application/json or application/x-www-form-urlencoded",
            truncate(content_type, 80)
        ))),
    }
}

fn truncate(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

/// Reads at most `limit` bytes; one byte more and the request is refused without reading on.
async fn read_limited(
    headers: &HeaderMap,
    body: Body,
    limit: usize,
) -> Result<bytes::Bytes, ApiError> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|length| length > limit as u64) {
        return Err(ApiError::PayloadTooLarge { limit });
    }
    axum::body::to_bytes(body, limit).await.map_err(|err| {
        if is_length_limit(&err) {
            ApiError::PayloadTooLarge { limit }
        } else {
            ApiError::BadRequest(format!("could not read the request body: {err}"))
        }
    })
}

fn is_length_limit(err: &axum::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(current) = source {
        if current.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        source = current.source();
    }
    false
}

/// The webhook handler.
pub(crate) async fn receive(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let started = Instant::now();
    let result = intake(&state, &headers, body).await;
    let (event, outcome) = match &result {
        Ok((event, outcome, _)) => (*event, *outcome),
        // Refused before (or while) the event was read: no trustworthy event name.
        Err(err) => ("unknown", err_outcome(err)),
    };
    state
        .metrics()
        .observe_intake(event, outcome, started.elapsed());
    match result {
        Ok((_, _, response)) => response,
        Err(err) => err.into_response(),
    }
}

fn err_outcome(err: &ApiError) -> &'static str {
    match err {
        ApiError::Unauthorized(_) => "rejected_signature",
        ApiError::PayloadTooLarge { .. } => "rejected_too_large",
        ApiError::UnsupportedMediaType(_) => "rejected_content_type",
        ApiError::BadRequest(_) => "rejected_headers",
        ApiError::Unprocessable(_) => "rejected_payload",
        _ => "error",
    }
}

/// A fixed metrics label for an event kind (label values must stay few).
fn event_label(kind: &EventKind) -> &'static str {
    match kind {
        EventKind::Issue(fine) => fine.as_str(),
        EventKind::IssueComment => "issue_comment",
        EventKind::Other(_) => "other",
    }
}

async fn intake(
    state: &AppState,
    headers: &HeaderMap,
    body: Body,
) -> Result<(&'static str, &'static str, Response), ApiError> {
    let intake = state.intake()?;
    let raw = read_limited(headers, body, intake.max_body_bytes).await?;
    let encoding = body_encoding(headers)?;

    let verified = intake.verifier.verify(headers, &raw).map_err(|err| {
        state.metrics().signature_failure(verify_error_kind(&err));
        tracing::warn!(reason = %err, "webhook refused: signature");
        ApiError::Unauthorized(err.to_string())
    })?;
    debug_assert!(encoding == BodyEncoding::Form || verified.json == raw);

    // Only from here on is anything in the request interpreted.
    let event = first_header(headers, &EVENT_HEADERS)
        .ok_or_else(|| ApiError::BadRequest("missing event header (X-Gitea-Event)".to_owned()))?;
    let event_type = first_header(headers, &EVENT_TYPE_HEADERS);
    let delivery_id = first_header(headers, &DELIVERY_HEADERS).map(|id| truncate(id, 128));
    let kind = EventKind::classify(event, event_type);
    let label = event_label(&kind);

    let (status, action, repository, issue_number) = match &kind {
        EventKind::Other(_) => (IntakeStatus::Ignored, None, None, None),
        _ => {
            let payload = parse_payload(&kind, &verified.json).map_err(|err| {
                ApiError::Unprocessable(format!("invalid {event} payload: {err}"))
            })?;
            let (action, repository, number) = describe(&payload);
            (
                IntakeStatus::Pending,
                Some(action),
                Some(repository),
                Some(number),
            )
        }
    };

    let digest: [u8; 32] = Sha256::digest(&verified.json).into();
    let new = NewDelivery {
        delivery_id: delivery_id.clone(),
        event: truncate(event, 64),
        event_type: event_type.map(|t| truncate(t, 64)),
        action: action.clone(),
        repository: repository.clone(),
        issue_number,
        body_sha256: digest,
        body: verified.json.to_vec(),
        status,
        received_at: chrono::Utc::now(),
    };
    let recorded = intake.store.record_delivery(new).await.map_err(|err| {
        tracing::error!(error = %err, "webhook not recorded: store failure");
        ApiError::ServiceUnavailable(
            "the delivery could not be stored; it was not accepted".to_owned(),
        )
    })?;

    let log = |outcome: &str| {
        tracing::info!(
            event,
            event_type = event_type.unwrap_or(""),
            action = action.as_deref().unwrap_or(""),
            repository = repository.as_deref().unwrap_or(""),
            issue = issue_number.unwrap_or(0),
            delivery = delivery_id.as_deref().unwrap_or(""),
            outcome,
            "webhook"
        );
    };
    Ok(match (recorded, status) {
        (RecordOutcome::Duplicate { .. }, _) => {
            log("duplicate");
            (
                label,
                "duplicate",
                (StatusCode::OK, Json(json!({"status": "duplicate"}))).into_response(),
            )
        }
        (
            RecordOutcome::Recorded { .. } | RecordOutcome::PossibleReplay { .. },
            IntakeStatus::Ignored,
        ) => {
            log("ignored");
            (
                label,
                "ignored",
                (StatusCode::OK, Json(json!({"status": "ignored"}))).into_response(),
            )
        }
        (RecordOutcome::Recorded { id }, _) => {
            log("accepted");
            intake.notify.notify_one();
            let shown = delivery_id.unwrap_or_else(|| format!("inbox-{id}"));
            (
                label,
                "accepted",
                (
                    StatusCode::OK,
                    Json(json!({"status": "accepted", "delivery": shown})),
                )
                    .into_response(),
            )
        }
        // Same body, new delivery id: handled (Gitea repeats bodies within one second), with
        // the issue confirmed from Gitea first; told apart in the answer and the log.
        (RecordOutcome::PossibleReplay { id, .. }, _) => {
            log("possible_replay");
            intake.notify.notify_one();
            let shown = delivery_id.unwrap_or_else(|| format!("inbox-{id}"));
            (
                label,
                "accepted",
                (
                    StatusCode::OK,
                    Json(json!({"status": "accepted", "delivery": shown, "possible_replay": true})),
                )
                    .into_response(),
            )
        }
    })
}

fn describe(payload: &WebhookPayload) -> (String, String, u64) {
    match payload {
        WebhookPayload::Issue(p) => (
            p.action.to_string(),
            p.repository.full_name.clone(),
            p.issue.number,
        ),
        WebhookPayload::IssueComment(p) => (
            format!("comment_{}", p.action),
            p.repository.full_name.clone(),
            p.issue.number,
        ),
    }
}

fn verify_error_kind(err: &VerifyError) -> &'static str {
    match err {
        VerifyError::MissingSignature => "missing",
        VerifyError::MalformedSignature { .. } => "malformed",
        VerifyError::Mismatch => "mismatch",
        VerifyError::BadForm => "bad_form",
        VerifyError::RepeatedSignature { .. } => "repeated",
    }
}
