//! The router end to end (`tower::ServiceExt::oneshot`, no sockets) with a real SQLite store:
//! webhook intake with real Gitea captures, every refusal, deduplication, secret rotation, a
//! property test over arbitrary requests, the API's authorisation and `/health`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use chrono::{DateTime, Utc};
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use mosaic_domain::events::TrackerState;
use mosaic_domain::{IssueRef, IssueState, RepoName};
use mosaic_http::{AppState, ComponentHealth, HealthProbe, Intake, router};
use mosaic_security::{Secret, WebhookVerifier, sign_hex};
use mosaic_store::*;
use mosaic_store_sqlite::SqliteStore;
use serde_json::{Value, json};
use tower::ServiceExt;

const SECRET: &str = "IsWishesWereHorsesWedAllBeEatingSteak!";

/// A real Gitea capture with what Gitea sent alongside it (fixtures README).
struct Fixture {
    name: &'static str,
    body: &'static [u8],
    event: &'static str,
    event_type: &'static str,
    signature: &'static str,
    action: &'static str,
}

const FIXTURES: [Fixture; 5] = [
    Fixture {
        name: "issues-event.json",
        body: include_bytes!("../../../tests/fixtures/gitea/issues-event.json"),
        event: "issues",
        event_type: "issues",
        signature: "98c44fd0ae42ca4208eac6f81e59b436837740abc8693bf828366b32d33b1cbc",
        action: "opened",
    },
    Fixture {
        name: "issue-assign-event.json",
        body: include_bytes!("../../../tests/fixtures/gitea/issue-assign-event.json"),
        event: "issues",
        event_type: "issue_assign",
        signature: "7d2adaf2fb3dc3769294c737ff48da003b7c3660b4f917b85c2c25dabd34a13c",
        action: "assigned",
    },
    Fixture {
        name: "issue-label-event.json",
        body: include_bytes!("../../../tests/fixtures/gitea/issue-label-event.json"),
        event: "issues",
        event_type: "issue_label",
        signature: "3611415860ed5904c87dd589a7c5fa7e87d2a72b0b2a92ea149ba9691ba8c785",
        action: "label_updated",
    },
    Fixture {
        name: "issue-milestone-event.json",
        body: include_bytes!("../../../tests/fixtures/gitea/issue-milestone-event.json"),
        event: "issues",
        event_type: "issue_milestone",
        signature: "4b782b02035ca264c8e7782b8f2eb9d64e4a61344a1bc3a08fa85d7eed1e77b5",
        action: "milestoned",
    },
    Fixture {
        name: "issue-comment-event.json",
        body: include_bytes!("../../../tests/fixtures/gitea/issue-comment-event.json"),
        event: "issue_comment",
        event_type: "issue_comment",
        signature: "690180a8c853460cba88f9b09911a531d449e9f63ed6b1ff0a0def3b972ca744",
        action: "comment_created",
    },
];

fn sign(secret: &str, body: &[u8]) -> String {
    sign_hex(&Secret::new(secret), body)
}

// ----- a store that records every call and can be made to fail its health check -----

/// Delegates to a real store, counting `record_delivery` calls; `health_check` fails on demand.
#[derive(Debug)]
struct SpyStore {
    inner: SqliteStore,
    recorded: Mutex<Vec<NewDelivery>>,
    unwritable: AtomicBool,
}

impl SpyStore {
    fn record_calls(&self) -> usize {
        self.recorded.lock().unwrap().len()
    }
}

#[async_trait]
impl Store for SpyStore {
    async fn record_delivery(&self, delivery: NewDelivery) -> Result<RecordOutcome, StoreError> {
        self.recorded.lock().unwrap().push(delivery.clone());
        self.inner.record_delivery(delivery).await
    }
    async fn pending_deliveries(
        &self,
        now: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<Delivery>, StoreError> {
        self.inner.pending_deliveries(now, limit).await
    }
    async fn mark_processed(&self, id: DeliveryRowId) -> Result<(), StoreError> {
        self.inner.mark_processed(id).await
    }
    async fn mark_failed_attempt(
        &self,
        id: DeliveryRowId,
        error: &str,
        next_attempt_at: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        self.inner
            .mark_failed_attempt(id, error, next_attempt_at)
            .await
    }
    async fn mark_dead(&self, id: DeliveryRowId, error: &str) -> Result<(), StoreError> {
        self.inner.mark_dead(id, error).await
    }
    async fn recent_deliveries(
        &self,
        before: Option<DeliveryRowId>,
        limit: u32,
    ) -> Result<Vec<DeliverySummary>, StoreError> {
        self.inner.recent_deliveries(before, limit).await
    }
    async fn prune_delivery_bodies(
        &self,
        before: chrono::DateTime<chrono::Utc>,
    ) -> Result<Volume, StoreError> {
        self.inner.prune_delivery_bodies(before).await
    }
    async fn retained_delivery_bodies(&self) -> Result<Volume, StoreError> {
        self.inner.retained_delivery_bodies().await
    }
    async fn delivery_counts(&self) -> Result<DeliveryCounts, StoreError> {
        self.inner.delivery_counts().await
    }
    async fn has_pending_delivery(&self, issue: &IssueRef) -> Result<bool, StoreError> {
        self.inner.has_pending_delivery(issue).await
    }
    async fn complete_delivery(
        &self,
        id: DeliveryRowId,
        effects: DeliveryEffects,
    ) -> Result<CompletionOutcome, StoreError> {
        self.inner.complete_delivery(id, effects).await
    }
    async fn get_issue_snapshot(
        &self,
        issue: &IssueRef,
    ) -> Result<Option<IssueSnapshot>, StoreError> {
        self.inner.get_issue_snapshot(issue).await
    }
    async fn commit_transitions(&self, batches: Vec<TransitionBatch>) -> Result<(), StoreError> {
        self.inner.commit_transitions(batches).await
    }
    async fn get_issue(&self, issue: &IssueRef) -> Result<Option<IssueRecord>, StoreError> {
        self.inner.get_issue(issue).await
    }
    async fn list_issues(&self, states: &[IssueState]) -> Result<Vec<IssueRecord>, StoreError> {
        self.inner.list_issues(states).await
    }
    async fn issue_history(&self, issue: &IssueRef) -> Result<Vec<TransitionRecord>, StoreError> {
        self.inner.issue_history(issue).await
    }
    async fn dependency_edges(&self) -> Result<Vec<DependencyEdge>, StoreError> {
        self.inner.dependency_edges().await
    }
    async fn next_outbox_items(
        &self,
        now: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<OutboxItem>, StoreError> {
        self.inner.next_outbox_items(now, limit).await
    }
    async fn mark_outbox_done(&self, id: OutboxId) -> Result<(), StoreError> {
        self.inner.mark_outbox_done(id).await
    }
    async fn mark_outbox_failed(
        &self,
        id: OutboxId,
        error: &str,
        retry_at: Option<DateTime<Utc>>,
    ) -> Result<(), StoreError> {
        self.inner.mark_outbox_failed(id, error, retry_at).await
    }
    async fn outbox_backlog(&self) -> Result<OutboxBacklog, StoreError> {
        self.inner.outbox_backlog().await
    }
    async fn latest_outbox_id(&self) -> Result<Option<mosaic_store::OutboxId>, StoreError> {
        self.inner.latest_outbox_id().await
    }
    async fn outbox_for_issue(&self, issue: &IssueRef) -> Result<Vec<OutboxItem>, StoreError> {
        self.inner.outbox_for_issue(issue).await
    }
    async fn open_sessions(&self) -> Result<Vec<SessionRecord>, StoreError> {
        self.inner.open_sessions().await
    }
    async fn sessions_for_issue(&self, issue: &IssueRef) -> Result<Vec<SessionRecord>, StoreError> {
        self.inner.sessions_for_issue(issue).await
    }
    async fn record_rotation(&self, rotation: RotationRecord) -> Result<(), StoreError> {
        self.inner.record_rotation(rotation).await
    }
    async fn recent_rotations(
        &self,
        before: Option<RotationRowId>,
        limit: u32,
    ) -> Result<Vec<StoredRotation>, StoreError> {
        self.inner.recent_rotations(before, limit).await
    }
    async fn record_compaction(&self, compaction: CompactionRecord) -> Result<(), StoreError> {
        self.inner.record_compaction(compaction).await
    }
    async fn compactions_for_session(
        &self,
        session_id: &str,
    ) -> Result<Vec<CompactionRecord>, StoreError> {
        self.inner.compactions_for_session(session_id).await
    }
    async fn try_lead(&self) -> Result<bool, StoreError> {
        self.inner.try_lead().await
    }
    async fn still_leading(&self) -> Result<bool, StoreError> {
        self.inner.still_leading().await
    }
    async fn beat_peer(&self, peer: &mosaic_store::Peer) -> Result<(), StoreError> {
        self.inner.beat_peer(peer).await
    }
    async fn issue_state_counts(&self) -> Result<Vec<(IssueState, u64)>, StoreError> {
        self.inner.issue_state_counts().await
    }
    async fn record_session_process(&self, session_id: &str, pid: u32) -> Result<bool, StoreError> {
        self.inner.record_session_process(session_id, pid).await
    }
    async fn request_session(
        &self,
        request: &mosaic_store::SessionRequest,
    ) -> Result<(), StoreError> {
        self.inner.request_session(request).await
    }
    async fn claim_session(
        &self,
        claimant: &mosaic_store::Peer,
        agents: &[String],
        busy_within: std::time::Duration,
    ) -> Result<Option<mosaic_store::SessionRequest>, StoreError> {
        self.inner
            .claim_session(claimant, agents, busy_within)
            .await
    }
    async fn report_session(
        &self,
        report: &mosaic_store::SessionReport,
        after_seq: i64,
    ) -> Result<mosaic_store::SessionOrders, StoreError> {
        self.inner.report_session(report, after_seq).await
    }
    async fn command_session(
        &self,
        session_id: &str,
        command_json: &str,
    ) -> Result<i64, StoreError> {
        self.inner.command_session(session_id, command_json).await
    }
    async fn cancel_session_requests(
        &self,
        session_ids: Option<&[String]>,
    ) -> Result<u64, StoreError> {
        self.inner.cancel_session_requests(session_ids).await
    }
    async fn session_requests(
        &self,
        session_ids: &[String],
    ) -> Result<Vec<mosaic_store::SessionRequestView>, StoreError> {
        self.inner.session_requests(session_ids).await
    }
    async fn sessions_left_by(
        &self,
        name: &str,
        current_id: &str,
    ) -> Result<Vec<mosaic_store::SessionRequest>, StoreError> {
        self.inner.sessions_left_by(name, current_id).await
    }
    async fn prune_session_requests(&self, before: DateTime<Utc>) -> Result<u64, StoreError> {
        self.inner.prune_session_requests(before).await
    }
    async fn peers_alive(
        &self,
        within: std::time::Duration,
    ) -> Result<Vec<mosaic_store::PeerBeat>, StoreError> {
        self.inner.peers_alive(within).await
    }
    async fn record_session_spend(
        &self,
        session_id: &str,
        spend: SessionSpend,
    ) -> Result<(), StoreError> {
        self.inner.record_session_spend(session_id, spend).await
    }
    async fn put_workspace(&self, workspace: WorkspaceRecord) -> Result<(), StoreError> {
        self.inner.put_workspace(workspace).await
    }
    async fn record_pull_request(
        &self,
        issue: &IssueRef,
        branch: &str,
        pull_request: PullRequestLink,
    ) -> Result<(), StoreError> {
        self.inner
            .record_pull_request(issue, branch, pull_request)
            .await
    }
    async fn get_workspace(&self, issue: &IssueRef) -> Result<Option<IssueWorkspace>, StoreError> {
        self.inner.get_workspace(issue).await
    }
    async fn record_gate_runs(&self, runs: Vec<GateRunRecord>) -> Result<(), StoreError> {
        self.inner.record_gate_runs(runs).await
    }
    async fn gate_runs_for_issue(
        &self,
        issue: &IssueRef,
    ) -> Result<Vec<GateRunRecord>, StoreError> {
        self.inner.gate_runs_for_issue(issue).await
    }
    async fn cache_get(&self, key: &str) -> Result<Option<String>, StoreError> {
        self.inner.cache_get(key).await
    }
    async fn cache_put(&self, key: &str, value_json: &str) -> Result<(), StoreError> {
        self.inner.cache_put(key, value_json).await
    }
    async fn record_llm_usage(&self, usage: LlmUsageRecord) -> Result<(), StoreError> {
        self.inner.record_llm_usage(usage).await
    }
    async fn llm_usage_totals(&self) -> Result<Vec<LlmUsageTotal>, StoreError> {
        self.inner.llm_usage_totals().await
    }
    async fn agent_spend_totals(&self) -> Result<Vec<AgentSpendTotal>, StoreError> {
        self.inner.agent_spend_totals().await
    }
    async fn health_check(&self) -> Result<(), StoreError> {
        if self.unwritable.load(Ordering::SeqCst) {
            return Err(StoreError::CommitFailed("disk I/O error".to_owned()));
        }
        self.inner.health_check().await
    }
    fn write_outcomes(&self) -> WriteOutcomes {
        self.inner.write_outcomes()
    }
    fn stats(&self) -> StoreStats {
        self.inner.stats()
    }
}

/// `/health`'s view of the store, as the binary wires it: critical, down when it cannot write.
struct StoreProbe {
    store: Arc<dyn Store>,
}

#[async_trait]
impl HealthProbe for StoreProbe {
    fn name(&self) -> &str {
        "store"
    }
    fn critical(&self) -> bool {
        true
    }
    async fn check(&self) -> ComponentHealth {
        match self.store.health_check().await {
            Ok(()) => ComponentHealth::up(),
            Err(err) => ComponentHealth::down(err.to_string()),
        }
    }
}

// ----- harness -----

struct Harness {
    app: Router,
    store: Arc<SpyStore>,
    _dir: tempfile::TempDir,
}

struct Options {
    secrets: Vec<&'static str>,
    max_body_bytes: usize,
    api_token: Option<&'static str>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            secrets: vec![SECRET],
            max_body_bytes: 1024 * 1024,
            api_token: None,
        }
    }
}

fn harness() -> Harness {
    harness_with(Options::default())
}

fn harness_with(options: Options) -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let inner = SqliteStore::open(&StoreConfig::sqlite(dir.path().join("mosaic.db"))).unwrap();
    let store = Arc::new(SpyStore {
        inner,
        recorded: Mutex::new(Vec::new()),
        unwritable: AtomicBool::new(false),
    });
    let verifier =
        WebhookVerifier::new(options.secrets.iter().map(|s| Secret::new(*s)).collect()).unwrap();
    let dyn_store: Arc<dyn Store> = store.clone();
    let state = AppState::new("test")
        .with_probe(Arc::new(StoreProbe {
            store: Arc::clone(&dyn_store),
        }))
        .with_api_token(options.api_token.map(Secret::new))
        .with_intake(Intake {
            verifier,
            store: dyn_store,
            max_body_bytes: options.max_body_bytes,
            notify: Arc::new(tokio::sync::Notify::new()),
        });
    Harness {
        app: router(state),
        store,
        _dir: dir,
    }
}

impl Harness {
    async fn send(&self, request: Request<Body>) -> (StatusCode, Value) {
        send(&self.app, request).await
    }

    async fn deliveries(&self) -> Vec<DeliverySummary> {
        self.store.recent_deliveries(None, 1000).await.unwrap()
    }
}

async fn send(app: &Router, request: Request<Body>) -> (StatusCode, Value) {
    let response = app.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    let json = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| panic!("not JSON ({status}): {}", String::from_utf8_lossy(&bytes)));
    (status, json)
}

/// A delivery with every header Gitea (1.16+) sends: its own names, the Gogs and GitHub
/// compatible ones, and the signature in both the plain and the `sha256=` form.
fn gitea_headers(
    builder: http::request::Builder,
    event: &str,
    event_type: &str,
    delivery: &str,
    signature: &str,
) -> http::request::Builder {
    builder
        .header("user-agent", "Go-http-client/1.1")
        .header("x-gitea-event", event)
        .header("x-gitea-event-type", event_type)
        .header("x-gitea-delivery", delivery)
        .header("x-gitea-signature", signature)
        .header("x-gogs-event", event)
        .header("x-gogs-event-type", event_type)
        .header("x-gogs-delivery", delivery)
        .header("x-gogs-signature", signature)
        .header("x-github-event", event)
        .header("x-github-event-type", event_type)
        .header("x-github-delivery", delivery)
        .header("x-hub-signature-256", format!("sha256={signature}"))
}

fn json_delivery(
    body: &[u8],
    event: &str,
    event_type: &str,
    delivery: &str,
    signature: &str,
) -> Request<Body> {
    gitea_headers(
        Request::post("/webhook/gitea"),
        event,
        event_type,
        delivery,
        signature,
    )
    .header("content-type", "application/json")
    .header("content-length", body.len())
    .body(Body::from(body.to_vec()))
    .unwrap()
}

/// Gitea's form encoding: `payload=<url-encoded JSON>`, signed over the inner JSON.
fn form_delivery(
    json_body: &[u8],
    event: &str,
    event_type: &str,
    delivery: &str,
    signature: &str,
) -> Request<Body> {
    let form = form_urlencoded::Serializer::new(String::new())
        .append_pair("payload", std::str::from_utf8(json_body).unwrap())
        .finish();
    gitea_headers(
        Request::post("/webhook/gitea"),
        event,
        event_type,
        delivery,
        signature,
    )
    .header("content-type", "application/x-www-form-urlencoded")
    .header("content-length", form.len())
    .body(Body::from(form))
    .unwrap()
}

/// A delivery signed with the test secret, with only the Gitea headers.
fn signed(body: &[u8], event: &str, delivery: &str) -> Request<Body> {
    Request::post("/webhook/gitea")
        .header("content-type", "application/json")
        .header("x-gitea-event", event)
        .header("x-gitea-delivery", delivery)
        .header("x-gitea-signature", sign(SECRET, body))
        .body(Body::from(body.to_vec()))
        .unwrap()
}

/// The same fixture as a distinct event: another issue id gives another body hash.
fn variant(fixture: &Fixture, n: u64) -> Vec<u8> {
    let text = std::str::from_utf8(fixture.body).unwrap();
    let replaced = text.replacen("\"id\": 1,", &format!("\"id\": {},", 1000 + n), 1);
    assert_ne!(replaced, text, "the fixture has an issue id to vary");
    replaced.into_bytes()
}

// ----- acceptance -----

async fn assert_accepted(h: &Harness, fixture: &Fixture, delivery: &str, encoding: &str) {
    let request = match encoding {
        "json" => json_delivery(
            fixture.body,
            fixture.event,
            fixture.event_type,
            delivery,
            fixture.signature,
        ),
        _ => form_delivery(
            fixture.body,
            fixture.event,
            fixture.event_type,
            delivery,
            fixture.signature,
        ),
    };
    let (status, body) = h.send(request).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "{} ({encoding}): {body}",
        fixture.name
    );
    assert_eq!(
        body,
        json!({"status": "accepted", "delivery": delivery}),
        "{}",
        fixture.name
    );
    let rows = h.deliveries().await;
    let row = rows
        .iter()
        .find(|row| row.delivery_id.as_deref() == Some(delivery))
        .unwrap_or_else(|| panic!("{}: no inbox row for {delivery}", fixture.name));
    assert_eq!(row.status, DeliveryStatus::Pending, "{}", fixture.name);
    assert_eq!(row.event, fixture.event);
    assert_eq!(row.event_type.as_deref(), Some(fixture.event_type));
    assert_eq!(
        row.action.as_deref(),
        Some(fixture.action),
        "{}",
        fixture.name
    );
    assert_eq!(row.repository.as_deref(), Some("example/example"));
    assert_eq!(row.issue_number, Some(1));
    assert_eq!(row.duplicate_of, None);
}

#[tokio::test]
async fn every_fixture_is_accepted_with_the_full_gitea_header_set() {
    // One store per fixture: the five captures are distinct bodies, but keeping them apart
    // makes a failure name exactly one capture.
    for fixture in &FIXTURES {
        let h = harness();
        assert_accepted(&h, fixture, &format!("json-{}", fixture.name), "json").await;
        assert_eq!(h.store.record_calls(), 1);
        // The stored body is the signed bytes, unchanged.
        let pending = h.store.pending_deliveries(Utc::now(), 10).await.unwrap();
        assert_eq!(pending[0].body, fixture.body, "{}", fixture.name);
    }
}

#[tokio::test]
async fn every_fixture_is_accepted_form_encoded() {
    for fixture in &FIXTURES {
        let h = harness();
        assert_accepted(&h, fixture, &format!("form-{}", fixture.name), "form").await;
        // What is stored is the inner JSON Gitea signed, not the form.
        let pending = h.store.pending_deliveries(Utc::now(), 10).await.unwrap();
        assert_eq!(pending[0].body, fixture.body, "{}", fixture.name);
    }
}

#[tokio::test]
async fn any_one_accepted_signature_header_is_enough() {
    let fixture = &FIXTURES[0];
    for header in [
        "x-gitea-signature",
        "x-forgejo-signature",
        "x-gogs-signature",
        "x-hub-signature-256",
    ] {
        let h = harness();
        let value = if header == "x-hub-signature-256" {
            format!("sha256={}", fixture.signature.to_uppercase())
        } else {
            fixture.signature.to_uppercase()
        };
        let request = Request::post("/webhook/gitea")
            .header("content-type", "application/json; charset=utf-8")
            .header("x-gitea-event", "issues")
            .header("x-gitea-delivery", "d-1")
            .header(header, value)
            .body(Body::from(fixture.body))
            .unwrap();
        let (status, body) = h.send(request).await;
        assert_eq!(status, StatusCode::OK, "{header}: {body}");
        assert_eq!(body["status"], "accepted", "{header}");
    }
}

#[tokio::test]
async fn a_delivery_without_an_id_is_accepted_under_its_inbox_row() {
    let h = harness();
    let fixture = &FIXTURES[0];
    let request = Request::post("/webhook/gitea")
        .header("content-type", "application/json")
        .header("x-gitea-event", "issues")
        .header("x-gitea-signature", fixture.signature)
        .body(Body::from(fixture.body))
        .unwrap();
    let (status, body) = h.send(request).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["status"], "accepted");
    let rows = h.deliveries().await;
    assert_eq!(body["delivery"], format!("inbox-{}", rows[0].id));
}

// ----- deduplication and ignored events -----

#[tokio::test]
async fn duplicates_by_id_and_replays_with_a_new_id_are_recognised() {
    let h = harness();
    let fixture = &FIXTURES[1];
    let request = |id: &str| {
        json_delivery(
            fixture.body,
            fixture.event,
            fixture.event_type,
            id,
            fixture.signature,
        )
    };
    let (status, body) = h.send(request("d-1")).await;
    assert_eq!(
        (status, body["status"].as_str()),
        (StatusCode::OK, Some("accepted"))
    );

    // Gitea redelivering the same delivery.
    let (status, body) = h.send(request("d-1")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, json!({"status": "duplicate"}));

    // Same body, new id: a replay from Gitea's UI, or the same change again within Gitea's
    // one-second timestamps. Kept and handled (the engine confirms with Gitea first).
    let (status, body) = h.send(request("d-2")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        body,
        json!({"status": "accepted", "delivery": "d-2", "possible_replay": true})
    );

    // Another body under a known id: the id is the delivery, so still a duplicate.
    let other = variant(fixture, 7);
    let (status, body) = h.send(signed(&other, "issues", "d-1")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, json!({"status": "duplicate"}));

    let counts = h.store.delivery_counts().await.unwrap();
    assert_eq!((counts.pending, counts.duplicate), (2, 2));
    // A duplicate is never handed to the worker; the possible replay is, marked as one.
    let pending = h.store.pending_deliveries(Utc::now(), 10).await.unwrap();
    assert_eq!(pending.len(), 2);
    assert_eq!(pending[0].delivery_id.as_deref(), Some("d-1"));
    assert_eq!(pending[1].delivery_id.as_deref(), Some("d-2"));
    assert_eq!(pending[1].replay_of, Some(pending[0].id));
}

#[tokio::test]
async fn the_same_event_from_two_webhooks_is_recorded_as_a_possible_replay() {
    // A repository hook and an organisation hook send the same body under two ids: nothing
    // tells that from a real repeat, so the second is kept (handling is level-triggered).
    let h = harness();
    let fixture = &FIXTURES[4];
    let first = json_delivery(
        fixture.body,
        "issue_comment",
        "issue_comment",
        "repo-hook",
        fixture.signature,
    );
    let second = json_delivery(
        fixture.body,
        "issue_comment",
        "issue_comment",
        "org-hook",
        fixture.signature,
    );
    assert_eq!(h.send(first).await.1["status"], "accepted");
    let answer = h.send(second).await.1;
    assert_eq!(
        (
            answer["status"].as_str(),
            answer["possible_replay"].as_bool()
        ),
        (Some("accepted"), Some(true))
    );
}

#[tokio::test]
async fn events_the_coordinator_does_not_act_on_are_recorded_as_ignored() {
    let h = harness();
    let push = br#"{"ref":"refs/heads/main","before":"0000","after":"1111","commits":[]}"#;
    let (status, body) = h.send(signed(push, "push", "p-1")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, json!({"status": "ignored"}));

    // A pull-request event announced as `issues` coarse type is ignored too, even unparsed.
    let request = Request::post("/webhook/gitea")
        .header("content-type", "application/json")
        .header("x-gitea-event", "pull_request")
        .header("x-gitea-event-type", "pull_request_assign")
        .header("x-gitea-delivery", "pr-1")
        .header("x-gitea-signature", sign(SECRET, b"{\"x\":1}"))
        .body(Body::from(&b"{\"x\":1}"[..]))
        .unwrap();
    let (status, body) = h.send(request).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["status"], "ignored");

    let rows = h.deliveries().await;
    assert_eq!(rows.len(), 2);
    assert!(rows.iter().all(|row| row.status == DeliveryStatus::Ignored));
    assert!(
        h.store
            .pending_deliveries(Utc::now(), 10)
            .await
            .unwrap()
            .is_empty()
    );
}

// ----- refusals -----

/// Sends `request` and checks the status, that the answer is `{"error": …}` containing
/// `fragment`, and that nothing reached the store.
async fn check(
    h: &Harness,
    row: &str,
    request: Request<Body>,
    expected: StatusCode,
    fragment: &str,
) {
    let before = h.store.record_calls();
    let (status, body) = h.send(request).await;
    assert_ne!(status, StatusCode::INTERNAL_SERVER_ERROR, "{row}: {body}");
    assert_eq!(status, expected, "{row}: {body}");
    let error = body["error"]
        .as_str()
        .unwrap_or_else(|| panic!("{row}: no error string in {body}"));
    assert!(
        error.contains(fragment),
        "{row}: `{error}` does not contain `{fragment}`"
    );
    assert_eq!(body.as_object().unwrap().len(), 1, "{row}: {body}");
    assert_eq!(h.store.record_calls(), before, "{row}: reached the store");
}

/// A request with the given body, signature header (if any) and content type.
fn raw(
    body: Vec<u8>,
    signature: Option<(&str, String)>,
    content_type: Option<&str>,
) -> Request<Body> {
    let mut builder = Request::post("/webhook/gitea")
        .header("x-gitea-event", "issues")
        .header("x-gitea-event-type", "issues")
        .header("x-gitea-delivery", "bad-1");
    if let Some((name, value)) = signature {
        builder = builder.header(name, value);
    }
    if let Some(content_type) = content_type {
        builder = builder.header("content-type", content_type);
    }
    builder.body(Body::from(body)).unwrap()
}

fn self_signed(body: &[u8]) -> Option<(&'static str, String)> {
    Some(("x-gitea-signature", sign(SECRET, body)))
}

const JSON: Option<&str> = Some("application/json");

#[tokio::test]
async fn bad_requests_are_refused_with_a_clear_json_error() {
    let limit = 16 * 1024;
    let h = harness_with(Options {
        max_body_bytes: limit,
        ..Options::default()
    });
    let good = FIXTURES[0].body.to_vec();
    let good_sig = FIXTURES[0].signature;
    use StatusCode as S;

    // 401: the signature.
    check(
        &h,
        "no signature",
        raw(good.clone(), None, JSON),
        S::UNAUTHORIZED,
        "missing signature",
    )
    .await;
    check(
        &h,
        "empty signature",
        raw(
            good.clone(),
            Some(("x-gitea-signature", String::new())),
            JSON,
        ),
        S::UNAUTHORIZED,
        "missing signature",
    )
    .await;
    check(
        &h,
        "blank hub signature",
        raw(
            good.clone(),
            Some(("x-hub-signature-256", "sha256=".into())),
            JSON,
        ),
        S::UNAUTHORIZED,
        "malformed signature",
    )
    .await;
    check(
        &h,
        "invalid signature",
        raw(
            good.clone(),
            Some(("x-gitea-signature", "ab".repeat(32))),
            JSON,
        ),
        S::UNAUTHORIZED,
        "does not match",
    )
    .await;
    check(
        &h,
        "signature of another body",
        raw(
            good.clone(),
            Some(("x-gitea-signature", FIXTURES[1].signature.into())),
            JSON,
        ),
        S::UNAUTHORIZED,
        "does not match",
    )
    .await;
    check(
        &h,
        "truncated signature",
        raw(
            good.clone(),
            Some(("x-gitea-signature", good_sig[..40].into())),
            JSON,
        ),
        S::UNAUTHORIZED,
        "malformed signature",
    )
    .await;
    check(
        &h,
        "non-hex signature",
        raw(
            good.clone(),
            Some(("x-gitea-signature", "zz".repeat(32))),
            JSON,
        ),
        S::UNAUTHORIZED,
        "malformed signature",
    )
    .await;
    check(
        &h,
        "hub signature without prefix",
        raw(
            good.clone(),
            Some(("x-hub-signature-256", good_sig.into())),
            JSON,
        ),
        S::UNAUTHORIZED,
        "malformed signature",
    )
    .await;
    check(
        &h,
        "wrong secret",
        raw(
            good.clone(),
            Some(("x-gitea-signature", sign("another secret", &good))),
            JSON,
        ),
        S::UNAUTHORIZED,
        "does not match",
    )
    .await;
    let mut tampered = good.clone();
    tampered[20] ^= 1;
    check(
        &h,
        "tampered body",
        raw(tampered, Some(("x-gitea-signature", good_sig.into())), JSON),
        S::UNAUTHORIZED,
        "does not match",
    )
    .await;
    check(
        &h,
        "form without payload",
        raw(
            b"other=1".to_vec(),
            self_signed(b"other=1"),
            Some("application/x-www-form-urlencoded"),
        ),
        S::UNAUTHORIZED,
        "payload",
    )
    .await;

    // 400: no event header (on a correctly signed body).
    let request = Request::post("/webhook/gitea")
        .header("content-type", "application/json")
        .header("x-gitea-delivery", "bad-2")
        .header("x-gitea-signature", good_sig)
        .body(Body::from(good.clone()))
        .unwrap();
    check(
        &h,
        "missing event header",
        request,
        S::BAD_REQUEST,
        "missing event header",
    )
    .await;

    // 413: one byte over the limit, declared and undeclared.
    let over = vec![b' '; limit + 1];
    check(
        &h,
        "over the limit (content-length)",
        raw(over.clone(), self_signed(&over), JSON),
        S::PAYLOAD_TOO_LARGE,
        "larger than the limit",
    )
    .await;
    let undeclared = Request::post("/webhook/gitea")
        .header("content-type", "application/json")
        .header("x-gitea-event", "issues")
        .header("x-gitea-signature", sign(SECRET, &over))
        .body(Body::from_stream(futures::stream::iter([Ok::<
            _,
            std::io::Error,
        >(
            bytes::Bytes::from(over.clone()),
        )])))
        .unwrap();
    check(
        &h,
        "over the limit (streamed)",
        undeclared,
        S::PAYLOAD_TOO_LARGE,
        "larger than the limit",
    )
    .await;
    // Exactly at the limit is read (and then refused for what it is, not for its size).
    let at = vec![b' '; limit];
    check(
        &h,
        "at the limit",
        raw(at.clone(), self_signed(&at), JSON),
        S::UNPROCESSABLE_ENTITY,
        "invalid issues payload",
    )
    .await;

    // 415: anything but JSON or a form.
    for content_type in [
        None,
        Some("text/plain"),
        Some("application/xml"),
        Some("multipart/form-data; boundary=x"),
        Some("application/jsonx"),
    ] {
        check(
            &h,
            &format!("content type {content_type:?}"),
            raw(
                good.clone(),
                Some(("x-gitea-signature", good_sig.into())),
                content_type,
            ),
            S::UNSUPPORTED_MEDIA_TYPE,
            "content type",
        )
        .await;
    }

    // 422: verified, but not a payload for its event.
    let nested = format!(
        "{{\"action\":\"opened\",\"x\":{}{}}}",
        "[".repeat(100_000),
        "]".repeat(100_000)
    );
    let missing_issue = br#"{"action":"opened","repository":{"full_name":"a/b"}}"#.to_vec();
    let bad_repo = String::from_utf8(good.clone()).unwrap().replace(
        "\"full_name\": \"example/example\"",
        "\"full_name\": \"no-slash\"",
    );
    let cases: [(&str, Vec<u8>); 8] = [
        ("empty body", Vec::new()),
        (
            "invalid UTF-8",
            vec![b'{', b'"', 0xff, 0xfe, b'"', b':', b'1', b'}'],
        ),
        ("deeply nested JSON", nested.into_bytes()),
        ("a JSON array", b"[1,2,3]".to_vec()),
        (
            "broken JSON",
            b"{\"action\": \"opened\", \"issue\": {".to_vec(),
        ),
        ("JSON null", b"null".to_vec()),
        ("no issue", missing_issue),
        ("a bad repository name", bad_repo.into_bytes()),
    ];
    let h = harness();
    for (row, body) in cases {
        let signature = self_signed(&body);
        check(
            &h,
            row,
            raw(body, signature, JSON),
            S::UNPROCESSABLE_ENTITY,
            "invalid issues payload",
        )
        .await;
    }
    let comment_body = FIXTURES[0].body;
    let request = Request::post("/webhook/gitea")
        .header("content-type", "application/json")
        .header("x-gitea-event", "issue_comment")
        .header("x-gitea-signature", good_sig)
        .body(Body::from(comment_body))
        .unwrap();
    check(
        &h,
        "an issue body announced as a comment",
        request,
        S::UNPROCESSABLE_ENTITY,
        "invalid issue_comment payload",
    )
    .await;

    assert!(h.deliveries().await.is_empty());
}

/// A body that never ends unless the server stops reading: counts what was pulled from it.
fn endless_body(pulled: Arc<AtomicUsize>, total: usize, chunk: usize) -> Body {
    let stream = futures::stream::unfold(0_usize, move |sent| {
        let pulled = Arc::clone(&pulled);
        async move {
            if sent >= total {
                return None;
            }
            pulled.fetch_add(chunk, Ordering::SeqCst);
            Some((
                Ok::<_, std::io::Error>(bytes::Bytes::from(vec![b'a'; chunk])),
                sent + chunk,
            ))
        }
    });
    Body::from_stream(stream)
}

#[tokio::test]
async fn a_10_mb_chunked_body_is_refused_without_reading_it_all() {
    let h = harness(); // default limit: 1 MiB
    let pulled = Arc::new(AtomicUsize::new(0));
    let total = 10 * 1024 * 1024;
    let chunk = 64 * 1024;
    let request = Request::post("/webhook/gitea")
        .header("content-type", "application/json")
        .header("x-gitea-event", "issues")
        .header("x-gitea-signature", "00".repeat(32))
        .header("transfer-encoding", "chunked")
        .body(endless_body(Arc::clone(&pulled), total, chunk))
        .unwrap();
    check(
        &h,
        "10 MB chunked",
        request,
        StatusCode::PAYLOAD_TOO_LARGE,
        "larger than the limit",
    )
    .await;
    let read = pulled.load(Ordering::SeqCst);
    assert!(
        read <= 1024 * 1024 + chunk,
        "read {read} bytes of a body refused at 1 MiB"
    );
}

#[tokio::test]
async fn a_declared_length_over_the_limit_is_refused_before_reading() {
    let h = harness_with(Options {
        max_body_bytes: 1024,
        ..Options::default()
    });
    let pulled = Arc::new(AtomicUsize::new(0));
    let request = Request::post("/webhook/gitea")
        .header("content-type", "application/json")
        .header("x-gitea-event", "issues")
        .header("x-gitea-signature", "00".repeat(32))
        .header("content-length", 10 * 1024 * 1024)
        .body(endless_body(Arc::clone(&pulled), 10 * 1024 * 1024, 4096))
        .unwrap();
    check(
        &h,
        "declared 10 MB",
        request,
        StatusCode::PAYLOAD_TOO_LARGE,
        "larger than the limit",
    )
    .await;
    assert_eq!(pulled.load(Ordering::SeqCst), 0);
}

// ----- secret rotation -----

#[tokio::test]
async fn during_a_rotation_either_secret_verifies() {
    let h = harness_with(Options {
        secrets: vec!["old-secret", "new-secret"],
        ..Options::default()
    });
    let fixture = &FIXTURES[0];
    let first = variant(fixture, 1);
    let second = variant(fixture, 2);
    let third = variant(fixture, 3);
    let with = |body: &[u8], secret: &str, id: &str| {
        json_delivery(body, "issues", "issues", id, &sign(secret, body))
    };
    let (status, body) = h.send(with(&first, "old-secret", "r-1")).await;
    assert_eq!(
        (status, body["status"].as_str()),
        (StatusCode::OK, Some("accepted"))
    );
    let (status, body) = h.send(with(&second, "new-secret", "r-2")).await;
    assert_eq!(
        (status, body["status"].as_str()),
        (StatusCode::OK, Some("accepted"))
    );
    check(
        &h,
        "retired secret",
        with(&third, SECRET, "r-3"),
        StatusCode::UNAUTHORIZED,
        "does not match",
    )
    .await;
    assert_eq!(h.deliveries().await.len(), 2);
}

// ----- property: nothing unverified reaches the store, nothing panics -----

mod property {
    use super::*;
    use proptest::prelude::*;

    const HEADER_NAMES: [&str; 9] = [
        "x-gitea-signature",
        "x-hub-signature-256",
        "x-gogs-signature",
        "x-gitea-event",
        "x-gitea-event-type",
        "x-gitea-delivery",
        "x-github-delivery",
        "content-type",
        "content-length",
    ];

    fn header_value() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..80),
            Just(b"application/json".to_vec()),
            Just(b"application/x-www-form-urlencoded".to_vec()),
            Just(b"issues".to_vec()),
            Just(b"issue_comment".to_vec()),
            Just(b"push".to_vec()),
            "[0-9a-fA-F]{64}".prop_map(String::into_bytes),
            "sha256=[0-9a-f]{0,70}".prop_map(String::into_bytes),
        ]
    }

    fn body() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..2048),
            Just(FIXTURES[0].body.to_vec()),
            Just(b"payload=%7B%7D".to_vec()),
            "\\{\"action\":\"[a-z]{0,8}\",\"issue\":\\{\"number\":[0-9]{1,3}\\}\\}"
                .prop_map(String::into_bytes),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

        #[test]
        fn arbitrary_requests_never_panic_and_never_reach_the_store_unverified(
            body in body(),
            headers in proptest::collection::vec((0..HEADER_NAMES.len(), header_value()), 0..8),
            sign_it in any::<bool>(),
        ) {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            let h = harness_with(Options { max_body_bytes: 1024, ..Options::default() });
            let mut builder = Request::post("/webhook/gitea");
            for (index, value) in &headers {
                if let Ok(value) = http::HeaderValue::from_bytes(value) {
                    builder = builder.header(HEADER_NAMES[*index], value);
                }
            }
            if sign_it {
                // Sometimes a correct signature, so the accepting paths are exercised too.
                builder = builder.header("x-gitea-signature", sign(SECRET, &body));
            }
            let Ok(request) = builder.body(Body::from(body.clone())) else {
                return Ok(());
            };
            let header_map = request.headers().clone();
            let response = runtime.block_on(h.app.clone().oneshot(request)).unwrap();
            let status = response.status();
            let bytes = runtime.block_on(response.into_body().collect()).unwrap().to_bytes();
            prop_assert_ne!(status, StatusCode::INTERNAL_SERVER_ERROR);
            let answer: Value = serde_json::from_slice(&bytes).unwrap();
            prop_assert!(answer.get("error").is_some() || answer.get("status").is_some());

            let verifier = WebhookVerifier::new(vec![Secret::new(SECRET)]).unwrap();
            let verified = verifier.verify(&header_map, &body);
            let calls = h.store.record_calls();
            if verified.is_err() {
                prop_assert_eq!(calls, 0, "an unverified request reached the store ({})", status);
                prop_assert!(status != StatusCode::OK);
            }
            // Whatever was recorded is exactly the verified bytes.
            for recorded in h.store.recorded.lock().unwrap().iter() {
                prop_assert_eq!(&recorded.body[..], &verified.as_ref().unwrap().json[..]);
            }
            if status == StatusCode::OK {
                prop_assert_eq!(calls, 1);
            }
        }
    }
}

// ----- the API -----

fn get(path: &str, token: Option<&str>, peer: Option<[u8; 4]>) -> Request<Body> {
    let mut builder = Request::get(path);
    if let Some(token) = token {
        builder = builder.header("authorization", format!("Bearer {token}"));
    }
    let mut request = builder.body(Body::empty()).unwrap();
    if let Some(ip) = peer {
        request
            .extensions_mut()
            .insert(ConnectInfo(SocketAddr::from((ip, 40_000))));
    }
    request
}

async fn with_one_delivery_and_snapshot(h: &Harness) {
    let fixture = &FIXTURES[0];
    let request = json_delivery(fixture.body, "issues", "issues", "api-1", fixture.signature);
    assert_eq!(h.send(request).await.1["status"], "accepted");
    let issue = IssueRef::new(RepoName::new("example", "example").unwrap(), 1);
    h.store
        .inner
        .upsert_issue_snapshot(IssueSnapshot {
            issue,
            title: "Bug: it breaks".to_owned(),
            body: "steps".to_owned(),
            labels: vec!["bug".to_owned()],
            assignees: Vec::new(),
            state: TrackerState::Open,
            updated_at: Utc::now(),
            html_url: None,
            comments: None,
        })
        .await
        .unwrap();
}

#[tokio::test]
async fn the_api_needs_the_bearer_token_when_one_is_set() {
    let h = harness_with(Options {
        api_token: Some("s3cret-token"),
        ..Options::default()
    });
    with_one_delivery_and_snapshot(&h).await;
    let loopback = Some([127, 0, 0, 1]);
    for path in ["/api/v1/deliveries", "/api/v1/issues/example/example/1"] {
        let (status, body) = h.send(get(path, None, loopback)).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{path}: {body}");
        assert!(body["error"].as_str().unwrap().contains("Bearer"));
        let (status, body) = h.send(get(path, Some("wrong"), loopback)).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{path}: {body}");
        assert_eq!(body["error"], "invalid API token");
        let (status, body) = h.send(get(path, Some("s3cret-token-and-more"), None)).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{path}: {body}");
        // With the token, any client is served (not only loopback).
        let (status, body) = h
            .send(get(path, Some("s3cret-token"), Some([10, 0, 0, 1])))
            .await;
        assert_eq!(status, StatusCode::OK, "{path}: {body}");
    }

    let (_, body) = h
        .send(get(
            "/api/v1/deliveries?limit=10",
            Some("s3cret-token"),
            None,
        ))
        .await;
    let rows = body["deliveries"].as_array().unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0]["delivery_id"], "api-1");
    assert_eq!(rows[0]["status"], "pending");
    assert!(rows[0].get("body").is_none(), "bodies are not listed");
    assert_eq!(body["counts"]["pending"], 1);

    let (_, body) = h
        .send(get(
            "/api/v1/issues/example/example/1",
            Some("s3cret-token"),
            None,
        ))
        .await;
    assert_eq!(body["issue"], "example/example#1");
    assert_eq!(body["snapshot"]["title"], "Bug: it breaks");
    assert_eq!(body["snapshot"]["labels"], json!(["bug"]));
}

#[tokio::test]
async fn without_a_token_the_api_answers_only_loopback() {
    let h = harness();
    with_one_delivery_and_snapshot(&h).await;
    for path in ["/api/v1/deliveries", "/api/v1/issues/example/example/1"] {
        let (status, body) = h.send(get(path, None, Some([127, 0, 0, 1]))).await;
        assert_eq!(status, StatusCode::OK, "{path}: {body}");
        let (status, body) = h.send(get(path, None, Some([10, 0, 0, 1]))).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{path}: {body}");
        assert!(body["error"].as_str().unwrap().contains("loopback"));
        // No peer known at all: refused, never assumed local.
        let (status, _) = h.send(get(path, None, None)).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{path}");
    }
    let mut v6 = Request::get("/api/v1/deliveries")
        .body(Body::empty())
        .unwrap();
    v6.extensions_mut().insert(ConnectInfo(SocketAddr::from((
        std::net::Ipv6Addr::LOCALHOST,
        1,
    ))));
    assert_eq!(h.send(v6).await.0, StatusCode::OK);
}

#[tokio::test]
async fn the_issue_endpoint_checks_its_path() {
    let h = harness();
    with_one_delivery_and_snapshot(&h).await;
    let local = Some([127, 0, 0, 1]);
    let cases = [
        (
            "/api/v1/issues/example/example/2",
            StatusCode::NOT_FOUND,
            "not known",
        ),
        (
            "/api/v1/issues/example/example/abc",
            StatusCode::BAD_REQUEST,
            "not an issue number",
        ),
        (
            "/api/v1/issues/example/example/0",
            StatusCode::BAD_REQUEST,
            "not an issue number",
        ),
        (
            "/api/v1/issues/example/example/-3",
            StatusCode::BAD_REQUEST,
            "not an issue number",
        ),
        // 2^63: no issue can have it (the store keeps signed 64-bit numbers).
        (
            "/api/v1/issues/example/example/9223372036854775808",
            StatusCode::BAD_REQUEST,
            "not an issue number",
        ),
    ];
    for (path, expected, fragment) in cases {
        let (status, body) = h.send(get(path, None, local)).await;
        assert_eq!(status, expected, "{path}: {body}");
        assert!(
            body["error"].as_str().unwrap().contains(fragment),
            "{path}: {body}"
        );
    }
    // Malformed query strings and path segments get the same JSON error as everything else.
    for (path, fragment) in [
        ("/api/v1/deliveries?limit=x", "limit"),
        ("/api/v1/deliveries?limit=-1", "limit"),
        ("/api/v1/issues/example/%FF%FE/1", "UTF-8"),
    ] {
        let (status, body) = h.send(get(path, None, local)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{path}: {body}");
        assert!(
            body["error"].as_str().unwrap().contains(fragment),
            "{path}: {body}"
        );
    }
    // An out-of-range limit is clamped, not refused.
    let (status, body) = h
        .send(get("/api/v1/deliveries?limit=100000", None, local))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["deliveries"].as_array().unwrap().len(), 1);
}

// ----- /health -----

#[tokio::test]
async fn health_reports_the_store_and_is_503_when_it_cannot_write() {
    let h = harness();
    let (status, body) = h.send(get("/health", None, None)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["status"], "healthy");
    assert_eq!(body["components"]["store"]["status"], "up");

    h.store.unwritable.store(true, Ordering::SeqCst);
    let (status, body) = h.send(get("/health", None, None)).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["status"], "unhealthy");
    assert_eq!(body["components"]["store"]["status"], "down");
    assert!(
        body["components"]["store"]["detail"]
            .as_str()
            .unwrap()
            .contains("disk I/O error")
    );

    h.store.unwritable.store(false, Ordering::SeqCst);
    assert_eq!(h.send(get("/health", None, None)).await.0, StatusCode::OK);
}

#[tokio::test]
async fn the_bearer_scheme_is_case_insensitive_and_401_names_it() {
    let h = harness_with(Options {
        api_token: Some("s3cret-token"),
        ..Options::default()
    });
    for scheme in ["Bearer", "bearer", "BEARER", "bEaReR"] {
        let request = Request::get("/api/v1/deliveries")
            .header("authorization", format!("{scheme} s3cret-token"))
            .body(Body::empty())
            .unwrap();
        assert_eq!(h.send(request).await.0, StatusCode::OK, "{scheme}");
    }
    for authorization in [None, Some("Bearer wrong"), Some("Basic s3cret-token")] {
        let mut builder = Request::get("/api/v1/deliveries");
        if let Some(value) = authorization {
            builder = builder.header("authorization", value);
        }
        let response = h
            .app
            .clone()
            .oneshot(builder.body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(
            response.status(),
            StatusCode::UNAUTHORIZED,
            "{authorization:?}"
        );
        let challenge = response.headers()[http::header::WWW_AUTHENTICATE]
            .to_str()
            .unwrap();
        assert!(challenge.starts_with("Bearer "), "{challenge}");
    }
}

#[tokio::test]
async fn an_ipv4_client_on_an_ipv6_socket_counts_as_loopback() {
    let h = harness();
    let mapped = |ip: &str| {
        let mut request = Request::get("/api/v1/deliveries")
            .body(Body::empty())
            .unwrap();
        let ip: std::net::Ipv6Addr = ip.parse().unwrap();
        request
            .extensions_mut()
            .insert(ConnectInfo(SocketAddr::from((ip, 40_000))));
        request
    };
    assert_eq!(h.send(mapped("::ffff:127.0.0.1")).await.0, StatusCode::OK);
    assert_eq!(
        h.send(mapped("::ffff:192.168.1.5")).await.0,
        StatusCode::FORBIDDEN
    );
}

#[tokio::test]
async fn a_delivery_with_two_gitea_signatures_is_refused() {
    let h = harness();
    let fixture = &FIXTURES[0];
    let wrong = sign("a guess", fixture.body);
    let request = Request::post("/webhook/gitea")
        .header("content-type", "application/json")
        .header("x-gitea-event", fixture.event)
        .header("x-gitea-delivery", "twice-signed")
        .header("x-gitea-signature", wrong)
        .header("x-gitea-signature", fixture.signature)
        .body(Body::from(fixture.body.to_vec()))
        .unwrap();
    let (status, body) = h.send(request).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("more than once"),
        "{body}"
    );
    assert_eq!(h.store.record_calls(), 0);
}

#[tokio::test]
async fn an_issue_number_beyond_63_bits_is_422_and_never_reaches_the_store() {
    let h = harness();
    let fixture = &FIXTURES[0];
    for (index, number) in [9_223_372_036_854_775_808_u64, u64::MAX]
        .into_iter()
        .enumerate()
    {
        let mut payload: Value = serde_json::from_slice(fixture.body).unwrap();
        payload["issue"]["number"] = json!(number);
        payload["number"] = json!(number);
        let body = serde_json::to_vec(&payload).unwrap();
        let signature = sign(SECRET, &body);
        let request = json_delivery(
            &body,
            fixture.event,
            fixture.event_type,
            &format!("huge-{index}"),
            &signature,
        );
        let (status, answer) = h.send(request).await;
        assert_eq!(
            status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{number}: {answer}"
        );
        assert!(
            answer["error"].as_str().unwrap().contains("issue number"),
            "{answer}"
        );
    }
    assert_eq!(h.store.record_calls(), 0);
}

#[tokio::test]
async fn deliveries_page_with_a_cursor_and_say_when_a_limit_was_clamped() {
    let h = harness();
    let local = Some([127, 0, 0, 1]);
    for n in 0..5 {
        let body = variant(&FIXTURES[1], n);
        let (status, answer) = h.send(signed(&body, "issues", &format!("page-{n}"))).await;
        assert_eq!(status, StatusCode::OK, "{answer}");
    }
    // Newest first, two per page, following next_before to the end.
    let mut seen = Vec::new();
    let mut path = "/api/v1/deliveries?limit=2".to_owned();
    loop {
        let (status, body) = h.send(get(&path, None, local)).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert!(body.get("limit_clamped").is_none(), "{body}");
        for row in body["deliveries"].as_array().unwrap() {
            seen.push(row["delivery_id"].as_str().unwrap().to_owned());
        }
        match body.get("next_before") {
            Some(cursor) => path = format!("/api/v1/deliveries?limit=2&before={cursor}"),
            None => break,
        }
    }
    assert_eq!(seen, ["page-4", "page-3", "page-2", "page-1", "page-0"]);
    // A limit beyond the bound is clamped, and the answer says so.
    let (status, body) = h
        .send(get("/api/v1/deliveries?limit=100000", None, local))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["limit"], 1000);
    assert!(
        body["limit_clamped"]
            .as_str()
            .unwrap()
            .contains("limit 100000 is outside 1..=1000"),
        "{body}"
    );
}

/// Without an engine (a coordinator that does not lead), a coordinated issue is answered from
/// the shared store, and says which parts only the leader knows.
#[tokio::test]
async fn without_an_engine_a_coordinated_issue_is_answered_from_the_store() {
    let h = harness();
    let issue: IssueRef = "example/example#7".parse().unwrap();
    let record = IssueRecord::new(issue, IssueState::Ready, Utc::now());
    h.store
        .commit_transitions(vec![TransitionBatch::update(record)])
        .await
        .unwrap();
    let loopback = Some([127, 0, 0, 1]);
    let (status, body) = h
        .send(get("/api/v1/issues/example/example/7", None, loopback))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["coordinated"], true, "{body}");
    assert_eq!(body["detail"]["state"], "ready", "{body}");
    assert!(
        body["partial"]
            .as_str()
            .is_some_and(|why| why.contains("known to the leader")),
        "{body}"
    );
    // Rotations are stored: answered without an engine too.
    let (status, body) = h.send(get("/api/v1/rotations", None, loopback)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["rotations"], json!([]), "{body}");
}
