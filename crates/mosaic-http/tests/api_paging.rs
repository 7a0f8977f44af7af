//! The API's lists page with a cursor (`?before=…&limit=N`) and say when a limit was clamped:
//! the queue (an engine's live order, its cursor the last issue seen) and the rotations (stored,
//! their cursor the last row id seen), through the router with a real SQLite store.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use chrono::{TimeZone, Utc};
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use mosaic_context::MockAgentRuntime;
use mosaic_domain::{AgentProfiles, AssignmentPolicy, IssueRef, IssueState, PriorityOrder};
use mosaic_engine::engine::{Engine, EngineConfig, EngineParts};
use mosaic_http::{AppState, Intake, router};
use mosaic_parser::{KnownAgents, TemplateParser, TemplateSettings};
use mosaic_security::{Redactor, Secret, WebhookVerifier};
use mosaic_store::{IssueRecord, RotationRecord, Store, StoreConfig, TransitionBatch};
use mosaic_store_sqlite::SqliteStore;
use serde_json::Value;
use tower::ServiceExt;

struct Harness {
    app: Router,
    store: Arc<dyn Store>,
    engine: Engine,
    _dir: tempfile::TempDir,
}

/// The router with a store and an engine recovered from `queued` (each waiting, nothing runs:
/// the runtime is never asked to start a session).
async fn harness(queued: &[IssueRef]) -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> =
        Arc::new(SqliteStore::open(&StoreConfig::sqlite(dir.path().join("mosaic.db"))).unwrap());
    let batches = queued
        .iter()
        .enumerate()
        .map(|(n, issue)| {
            let at = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap()
                + chrono::Duration::seconds(i64::try_from(n).unwrap());
            let mut record = IssueRecord::new(issue.clone(), IssueState::Ready, at);
            record.assigned_agent = Some("sonnet".to_owned());
            record.queued_at = Some(at);
            TransitionBatch::update(record)
        })
        .collect();
    store.commit_transitions(batches).await.unwrap();
    let profiles = AgentProfiles::defaults();
    let (engine, _) = Engine::start(EngineParts {
        store: Arc::clone(&store),
        parser: Arc::new(TemplateParser::new(
            TemplateSettings::default(),
            KnownAgents::new(profiles.names()),
        )),
        gitea: None,
        acts_for: "mosaic-bot".to_owned(),
        bot_login: "mosaic-bot".to_owned(),
        redactor: Redactor::new(std::iter::empty()),
        profiles,
        policy: AssignmentPolicy::default(),
        priorities: PriorityOrder::default(),
        runtime: Arc::new(MockAgentRuntime::new()),
        config: EngineConfig::default(),
        workspaces: None,
    })
    .await
    .unwrap();
    let state = AppState::new("test")
        .with_intake(Intake {
            verifier: WebhookVerifier::new(vec![Secret::new("paging-secret")]).unwrap(),
            store: Arc::clone(&store),
            max_body_bytes: 1024 * 1024,
            notify: Arc::new(tokio::sync::Notify::new()),
        })
        .with_engine(engine.clone());
    Harness {
        app: router(state),
        store,
        engine,
        _dir: dir,
    }
}

impl Harness {
    /// GET from a loopback client (the API needs no token then).
    async fn get(&self, path: &str) -> (StatusCode, Value) {
        let mut request = Request::get(path).body(Body::empty()).unwrap();
        request
            .extensions_mut()
            .insert(ConnectInfo(SocketAddr::from(([127, 0, 0, 1], 40_000))));
        let response = self.app.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        (status, serde_json::from_slice(&bytes).unwrap())
    }

    /// Follows `next_before` from `first` to the last page; every entry's `key`, in order.
    async fn page_through(&self, first: &str, list: &str, key: &str) -> (Vec<Value>, usize) {
        let mut seen = Vec::new();
        let mut pages = 0;
        let mut path = first.to_owned();
        loop {
            let (status, body) = self.get(&path).await;
            assert_eq!(status, StatusCode::OK, "{path}: {body}");
            assert!(body.get("limit_clamped").is_none(), "{body}");
            pages += 1;
            assert!(pages <= 20, "paging never ends: {seen:?}");
            seen.extend(
                body[list]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|entry| entry[key].clone()),
            );
            let Some(cursor) = body.get("next_before") else {
                break;
            };
            let cursor = match cursor {
                Value::String(text) => text.replace('#', "%23"),
                other => other.to_string(),
            };
            path = format!("{first}&before={cursor}");
        }
        (seen, pages)
    }
}

fn issue(n: u64) -> IssueRef {
    format!("acme/app#{n}").parse().unwrap()
}

#[tokio::test]
async fn the_queue_pages_after_the_last_issue_seen_and_says_when_a_limit_was_clamped() {
    let queued: Vec<IssueRef> = (1..=5).map(issue).collect();
    let h = harness(&queued).await;
    let order: Vec<Value> = h
        .engine
        .queue()
        .await
        .iter()
        .map(|item| Value::String(item.issue.to_string()))
        .collect();
    assert_eq!(order.len(), 5, "{order:?}");

    // Two per page: 2 + 2 + 1, each page after the last issue of the one before.
    let (seen, pages) = h
        .page_through("/api/v1/queue?limit=2", "queue", "issue")
        .await;
    assert_eq!(seen, order);
    assert_eq!(pages, 3);
    // A page that ends the queue exactly has no cursor (no empty page to fetch).
    let (_, pages) = h
        .page_through("/api/v1/queue?limit=5", "queue", "issue")
        .await;
    assert_eq!(pages, 1);
    // Without a limit, the default page holds the whole (short) queue.
    let (status, body) = h.get("/api/v1/queue").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["queue"].as_array().unwrap().len(), 5, "{body}");
    assert_eq!(
        (body["total"].as_u64(), body["limit"].as_u64()),
        (Some(5), Some(50))
    );
    assert!(body.get("next_before").is_none(), "{body}");

    // Out of bounds: clamped, and the answer says so.
    let (status, body) = h.get("/api/v1/queue?limit=0").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["limit"], 1);
    assert_eq!(body["queue"].as_array().unwrap().len(), 1, "{body}");
    assert_eq!(body["limit_clamped"], "limit 0 is outside 1..=1000; 1 used");
    let (_, body) = h.get("/api/v1/queue?limit=5000").await;
    assert_eq!(body["limit"], 1000);
    assert_eq!(
        body["limit_clamped"],
        "limit 5000 is outside 1..=1000; 1000 used"
    );

    // A cursor naming no queued issue has no place to resume from; a `#` left unencoded
    // ends the URL, and the answer says how to write it.
    let (status, body) = h.get("/api/v1/queue?before=acme/app%2399").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(
        body.to_string().contains("acme/app#99 is not queued"),
        "{body}"
    );
    let (status, body) = h.get("/api/v1/queue?before=acme/app#3").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(body.to_string().contains("%23"), "{body}");
}

#[tokio::test]
async fn rotations_page_by_row_id_so_rotations_at_the_same_time_are_all_listed() {
    let h = harness(&[]).await;
    let at = Utc.with_ymd_and_hms(2026, 1, 1, 12, 0, 0).unwrap();
    // Five rotations, three of them in the same instant.
    for n in 1..=5_u64 {
        h.store
            .record_rotation(RotationRecord {
                old_session_id: format!("s{n}"),
                new_session_id: Some(format!("s{n}-next")),
                agent_type: "sonnet".to_owned(),
                issue: issue(n),
                next_issue: Some(issue(n)),
                context_before_tokens: 190_000,
                context_before_percent: 95.0,
                success: true,
                error_message: None,
                at: if n <= 3 {
                    at
                } else {
                    at + chrono::Duration::seconds(i64::try_from(n).unwrap())
                },
            })
            .await
            .unwrap();
    }
    let (seen, pages) = h
        .page_through("/api/v1/rotations?limit=1", "rotations", "old_session_id")
        .await;
    assert_eq!(seen, ["s5", "s4", "s3", "s2", "s1"]);
    // A full last page cannot know it is the last: one empty page ends the list.
    assert_eq!(pages, 6);
    let (_, body) = h.get("/api/v1/rotations?limit=2").await;
    let ids: Vec<i64> = body["rotations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_i64().unwrap())
        .collect();
    assert_eq!(body["next_before"].as_i64(), ids.last().copied(), "{body}");

    let (status, body) = h.get("/api/v1/rotations?limit=100000").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["limit"], 1000);
    assert_eq!(
        body["limit_clamped"],
        "limit 100000 is outside 1..=1000; 1000 used"
    );
    assert_eq!(body["rotations"].as_array().unwrap().len(), 5, "{body}");
    // The old cursor, a time, is refused rather than misread.
    let (status, body) = h.get("/api/v1/rotations?before=2026-01-01T12:00:00Z").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
}
