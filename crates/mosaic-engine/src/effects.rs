//! The Gitea writes a state change causes, as outbox items (invariant 4: they are stored in the
//! same transaction as the state change and delivered later by the outbox worker).
//!
//! This is the contract between the coordinator, which enqueues, and the outbox worker, which
//! delivers: `kind` and `payload` of a [`NewOutboxItem`] are exactly the serde form of
//! [`GiteaWrite`].

use chrono::{DateTime, Utc};
use mosaic_domain::IssueRef;
use mosaic_gitea::{CommitStatusState, IdempotencyKey};
use mosaic_store::{NewOutboxItem, OutboxItem};
use serde::{Deserialize, Serialize};

/// One write to Gitea on one issue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "payload", rename_all = "snake_case")]
pub enum GiteaWrite {
    /// Creates or updates the coordinator's single status comment on the issue (found by the
    /// fixed marker `<!-- mosaic:status -->`), so state changes do not pile up comments.
    /// With `pull_request` (the head branch), the worker links the pull request opened from
    /// that branch, which only Gitea numbers, into the body when it delivers it.
    StatusComment {
        body: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pull_request: Option<String>,
    },
    /// Posts a new comment exactly once: `marker`, a random key made when the write is
    /// enqueued ([`GiteaWrite::comment`]), goes into the body as `<!-- mosaic:KEY -->`, and
    /// after an uncertain outcome the worker looks for it, in the bot's own comments, first.
    /// Rows from before markers were stored have none (the worker then uses the row's key).
    Comment {
        body: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        marker: Option<String>,
    },
    /// Puts the state label on the issue and takes the other state labels off.
    StateLabel {
        add: Option<String>,
        remove: Vec<String>,
    },
    /// Closes the issue (`engine.close_on_success`).
    CloseIssue,
    /// Puts a status (a quality gate's result, context `mosaic/<gate>`) on the pushed commit
    /// `sha`; repeating it adds an entry saying the same, and Gitea shows the newest per context.
    CommitStatus {
        sha: String,
        context: String,
        state: CommitStatusState,
        description: String,
    },
    /// Opens the pull request from the pushed `head` branch into `base`; when one is open
    /// already (Gitea answers 409) its body is replaced, so repeating the write, or a later
    /// attempt on the same branch, leaves one pull request.
    PullRequest {
        head: String,
        base: String,
        title: String,
        body: String,
    },
}

/// An outbox item whose kind or payload this version does not understand.
#[derive(Debug, thiserror::Error)]
#[error("outbox item {id} has an unknown kind `{kind}` or a malformed payload: {reason}")]
pub struct UnknownWrite {
    pub id: i64,
    pub kind: String,
    pub reason: String,
}

impl GiteaWrite {
    /// A comment to post once, with a fresh unguessable marker (stored with the write, so a
    /// retry after a crash looks for the same one).
    pub fn comment(body: String) -> Self {
        Self::Comment {
            body,
            marker: Some(IdempotencyKey::random().as_str().to_owned()),
        }
    }

    /// The outbox row for this write. `key` must be unique per intended write (e.g.
    /// `t42-status`), so replaying the same state change enqueues nothing twice.
    pub fn to_outbox(&self, issue: &IssueRef, key: String, at: DateTime<Utc>) -> NewOutboxItem {
        let (kind, payload) = match serde_json::to_value(self) {
            Ok(serde_json::Value::Object(mut map)) => (
                map.remove("kind")
                    .and_then(|k| k.as_str().map(str::to_owned))
                    .unwrap_or_default(),
                map.remove("payload").unwrap_or(serde_json::Value::Null),
            ),
            // Serialising a plain enum into JSON cannot fail; keep the item recognisable anyway.
            _ => (String::new(), serde_json::Value::Null),
        };
        NewOutboxItem {
            issue: issue.clone(),
            idempotency_key: key,
            kind,
            payload,
            created_at: at,
        }
    }

    /// Reads a stored outbox item back.
    pub fn from_outbox(item: &OutboxItem) -> Result<Self, UnknownWrite> {
        let tagged = serde_json::json!({ "kind": item.kind, "payload": item.payload });
        serde_json::from_value(tagged).map_err(|err| UnknownWrite {
            id: item.id,
            kind: item.kind.clone(),
            reason: err.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mosaic_store::OutboxStatus;

    #[test]
    fn every_write_round_trips_through_an_outbox_row() {
        let issue: IssueRef = "o/r#5".parse().unwrap();
        let writes = [
            GiteaWrite::StatusComment {
                body: "Queued".into(),
                pull_request: None,
            },
            GiteaWrite::StatusComment {
                body: "Done".into(),
                pull_request: Some("mosaic/5-x".into()),
            },
            GiteaWrite::comment("Done".into()),
            GiteaWrite::Comment {
                body: "Done".into(),
                marker: None,
            },
            GiteaWrite::StateLabel {
                add: Some("mosaic:queued".into()),
                remove: vec!["mosaic:blocked".into()],
            },
            GiteaWrite::StateLabel {
                add: None,
                remove: vec![],
            },
            GiteaWrite::CloseIssue,
            GiteaWrite::PullRequest {
                head: "mosaic/5-x".into(),
                base: "main".into(),
                title: "X".into(),
                body: "Closes #5".into(),
            },
            GiteaWrite::CommitStatus {
                sha: "0123abcd".into(),
                context: "mosaic/test".into(),
                state: CommitStatusState::Failure,
                description: "failed (exit code 1)".into(),
            },
        ];
        for write in writes {
            let new = write.to_outbox(&issue, "k".into(), Utc::now());
            assert!(!new.kind.is_empty());
            let stored = OutboxItem {
                id: 1,
                issue: issue.clone(),
                idempotency_key: new.idempotency_key,
                kind: new.kind,
                payload: new.payload,
                status: OutboxStatus::Pending,
                attempts: 0,
                last_error: None,
                next_attempt_at: Utc::now(),
                created_at: Utc::now(),
            };
            assert_eq!(GiteaWrite::from_outbox(&stored).unwrap(), write);
        }
    }

    #[test]
    fn unknown_kinds_are_errors() {
        let stored = OutboxItem {
            id: 9,
            issue: "o/r#5".parse().unwrap(),
            idempotency_key: "k".into(),
            kind: "launch_rockets".into(),
            payload: serde_json::Value::Null,
            status: OutboxStatus::Pending,
            attempts: 0,
            last_error: None,
            next_attempt_at: Utc::now(),
            created_at: Utc::now(),
        };
        let err = GiteaWrite::from_outbox(&stored).unwrap_err().to_string();
        assert!(err.contains("launch_rockets"), "{err}");
    }
}
