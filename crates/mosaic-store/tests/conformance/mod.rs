//! The behaviour every `Store` backend must show. Each check takes a fresh, empty store;
//! `conformance_tests!` turns them into one test per check for a backend's factory.

#![allow(dead_code)]

use chrono::{DateTime, Duration, TimeZone, Utc};
use mosaic_domain::events::TrackerState;
use mosaic_domain::{Difficulty, IssueMetadata, IssueRef, IssueState, MetadataSource};
use mosaic_store::*;

/// Generates `#[tokio::test]`s running every check against stores from `$make`, an async
/// expression yielding `(guard, Arc<dyn Store>)`; the guard lives as long as the test.
#[macro_export]
macro_rules! conformance_tests {
    ($make:expr; $($check:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $check() {
                let (_guard, store) = $make.await;
                $crate::conformance::$check(store.as_ref()).await;
            }
        )*
    };
}

pub fn at(seconds: i64) -> DateTime<Utc> {
    Utc.timestamp_opt(1_700_000_000 + seconds, 0).unwrap()
}

pub fn issue(text: &str) -> IssueRef {
    text.parse().unwrap()
}

fn sha(seed: &str) -> [u8; 32] {
    // Distinct, deterministic 32-byte keys; the store treats the hash as opaque bytes.
    let mut out = [0_u8; 32];
    for (i, b) in seed.bytes().enumerate() {
        out[i % 32] ^= b.wrapping_add(i as u8);
    }
    out[31] ^= seed.len() as u8;
    out
}

pub fn delivery(id: Option<&str>, body: &str, received: DateTime<Utc>) -> NewDelivery {
    NewDelivery {
        delivery_id: id.map(str::to_owned),
        event: "issues".to_owned(),
        event_type: Some("issue_assign".to_owned()),
        action: Some("assigned".to_owned()),
        repository: Some("mosaic/coordinator".to_owned()),
        issue_number: Some(7),
        body_sha256: sha(body),
        body: body.as_bytes().to_vec(),
        status: IntakeStatus::Pending,
        received_at: received,
    }
}

async fn record(store: &dyn Store, delivery: NewDelivery) -> DeliveryRowId {
    match store.record_delivery(delivery).await.unwrap() {
        RecordOutcome::Recorded { id } => id,
        other => panic!("expected a new row, got {other:?}"),
    }
}

fn snapshot(issue_ref: &str, title: &str, updated: i64) -> IssueSnapshot {
    IssueSnapshot {
        issue: issue(issue_ref),
        title: title.to_owned(),
        body: "body text".to_owned(),
        labels: vec!["bug".to_owned(), "priority:high".to_owned()],
        assignees: vec!["mosaic-bot".to_owned()],
        state: TrackerState::Open,
        updated_at: at(updated),
        html_url: Some(format!("https://gitea.example/{title}")),
        comments: Some(2),
    }
}

fn metadata() -> IssueMetadata {
    IssueMetadata {
        estimated_context: 46_800,
        difficulty: Difficulty::Medium,
        recommended_agent: Some("glm".to_owned()),
        blocks: vec![issue("mosaic/coordinator#9")],
        blocked_by: vec![issue("mosaic/coordinator#2")],
        source: MetadataSource::Template,
        confidence: 0.9,
    }
}

fn transition(
    issue_ref: &str,
    from: Option<IssueState>,
    to: IssueState,
    seconds: i64,
) -> TransitionBatch {
    let mut record = IssueRecord::new(issue(issue_ref), to, at(seconds));
    record.estimate = Some(46_800);
    TransitionBatch {
        transition: Some(StateTransition {
            from,
            to,
            cause: format!("test:{seconds}"),
            at: at(seconds),
        }),
        ..TransitionBatch::update(record)
    }
}

fn outbox_item(issue_ref: &str, key: &str) -> NewOutboxItem {
    NewOutboxItem {
        issue: issue(issue_ref),
        idempotency_key: key.to_owned(),
        kind: "comment".to_owned(),
        payload: serde_json::json!({ "body": format!("comment {key}") }),
        created_at: at(0),
    }
}

// ----- inbox -----

pub async fn inbox_records_in_increasing_order_and_lists_pending_oldest_first(store: &dyn Store) {
    let mut ids = Vec::new();
    for n in 0..5 {
        ids.push(
            record(
                store,
                delivery(Some(&format!("d{n}")), &format!("body {n}"), at(n)),
            )
            .await,
        );
    }
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
    let pending = store.pending_deliveries(at(100), 10).await.unwrap();
    assert_eq!(pending.iter().map(|d| d.id).collect::<Vec<_>>(), ids);
    let first = &pending[0];
    assert_eq!(first.delivery_id.as_deref(), Some("d0"));
    assert_eq!(first.body, b"body 0");
    assert_eq!(first.body_sha256, sha("body 0"));
    assert_eq!(first.issue_number, Some(7));
    assert_eq!(first.status, DeliveryStatus::Pending);
    assert_eq!(first.attempts, 0);
    assert_eq!(first.received_at, at(0));
    assert_eq!(store.pending_deliveries(at(100), 2).await.unwrap().len(), 2);
    // A row is due from the moment it was received.
    assert_eq!(store.pending_deliveries(at(2), 10).await.unwrap().len(), 3);
}

pub async fn inbox_dedupes_by_delivery_id(store: &dyn Store) {
    let first = record(store, delivery(Some("same-id"), "one body", at(0))).await;
    let again = store
        .record_delivery(delivery(Some("same-id"), "another body", at(1)))
        .await
        .unwrap();
    assert_eq!(again, RecordOutcome::Duplicate { existing_id: first });
    let pending = store.pending_deliveries(at(10), 10).await.unwrap();
    assert_eq!(pending.len(), 1);
    let counts = store.delivery_counts().await.unwrap();
    assert_eq!((counts.pending, counts.duplicate), (1, 1));
}

pub async fn inbox_keeps_a_repeated_body_under_a_new_id_as_a_possible_replay(store: &dyn Store) {
    // Gitea's updated_at has one-second resolution: assign, unassign, assign within a second
    // sends the first body again, byte for byte, under a new delivery id. It must be handled.
    let first = record(store, delivery(Some("original"), "the body", at(0))).await;
    let RecordOutcome::PossibleReplay {
        id: replay,
        replay_of,
    } = store
        .record_delivery(delivery(Some("replayed"), "the body", at(1)))
        .await
        .unwrap()
    else {
        panic!("a repeated body under a new id is a possible replay");
    };
    assert_eq!(replay_of, first);
    // Its own delivery id again: a duplicate, of the replay row.
    assert_eq!(
        store
            .record_delivery(delivery(Some("replayed"), "the body", at(2)))
            .await
            .unwrap(),
        RecordOutcome::Duplicate {
            existing_id: replay
        }
    );
    // A third id: again a possible replay of the original.
    assert!(matches!(
        store
            .record_delivery(delivery(Some("third"), "the body", at(3)))
            .await
            .unwrap(),
        RecordOutcome::PossibleReplay { replay_of, .. } if replay_of == first
    ));
    // Without a delivery id nothing tells a repeat from a resend: a duplicate.
    assert_eq!(
        store
            .record_delivery(delivery(None, "the body", at(4)))
            .await
            .unwrap(),
        RecordOutcome::Duplicate { existing_id: first }
    );
    // Without a delivery id a new body is still new.
    record(store, delivery(None, "a different body", at(5))).await;

    let pending = store.pending_deliveries(at(10), 10).await.unwrap();
    assert_eq!(pending.len(), 4);
    assert_eq!(pending[0].replay_of, None);
    assert_eq!(pending[1].id, replay);
    assert_eq!(pending[1].replay_of, Some(first));
    assert_eq!(pending[1].body, b"the body");
    assert_eq!(pending[1].delivery_id.as_deref(), Some("replayed"));
    let counts = store.delivery_counts().await.unwrap();
    assert_eq!((counts.pending, counts.duplicate), (4, 2));
}

pub async fn retention_drops_only_the_bodies_of_old_handled_deliveries(store: &dyn Store) {
    let body = "x".repeat(2_000);
    let old_handled = record(
        store,
        delivery(Some("old-handled"), &format!("a{body}"), at(0)),
    )
    .await;
    let old_pending = record(
        store,
        delivery(Some("old-pending"), &format!("b{body}"), at(1)),
    )
    .await;
    let new_handled = record(
        store,
        delivery(Some("new-handled"), &format!("c{body}"), at(500)),
    )
    .await;
    store.mark_processed(old_handled).await.unwrap();
    store.mark_processed(new_handled).await.unwrap();
    let before = store.retained_delivery_bodies().await.unwrap();
    assert_eq!(before.count, 3);
    assert!(before.bytes > 0);

    let pruned = store.prune_delivery_bodies(at(100)).await.unwrap();
    assert_eq!(pruned.count, 1, "only the old handled body");
    assert!(pruned.bytes > 0);
    let after = store.retained_delivery_bodies().await.unwrap();
    assert_eq!(after.count, 2);
    assert_eq!(after.bytes, before.bytes - pruned.bytes);
    // The pending row keeps its body and is still handed out whole.
    let pending = store.pending_deliveries(at(1_000), 10).await.unwrap();
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0].id, old_pending);
    assert_eq!(pending[0].body, format!("b{body}").into_bytes());
    // The pruned row still dedupes its delivery id, and pruning again removes nothing.
    assert!(matches!(
        store
            .record_delivery(delivery(Some("old-handled"), "again", at(600)))
            .await
            .unwrap(),
        RecordOutcome::Duplicate { .. }
    ));
    assert_eq!(
        store.prune_delivery_bodies(at(100)).await.unwrap(),
        Volume::default()
    );
    assert_eq!(store.recent_deliveries(None, 10).await.unwrap().len(), 4);
}

pub async fn inbox_ignored_deliveries_are_kept_but_never_pending(store: &dyn Store) {
    let mut push = delivery(Some("push-1"), "push body", at(0));
    push.event = "push".to_owned();
    push.status = IntakeStatus::Ignored;
    let id = record(store, push.clone()).await;
    assert!(
        store
            .pending_deliveries(at(10), 10)
            .await
            .unwrap()
            .is_empty()
    );
    push.delivery_id = Some("push-2".to_owned());
    assert_eq!(
        store.record_delivery(push).await.unwrap(),
        RecordOutcome::Duplicate { existing_id: id }
    );
    let counts = store.delivery_counts().await.unwrap();
    assert_eq!(
        counts,
        DeliveryCounts {
            ignored: 1,
            duplicate: 1,
            ..DeliveryCounts::default()
        }
    );
    assert!(matches!(
        store.mark_processed(id).await,
        Err(StoreError::Conflict(_))
    ));
}

pub async fn inbox_failed_attempts_back_off_then_die(store: &dyn Store) {
    let a = record(store, delivery(Some("a"), "a", at(0))).await;
    let b = record(store, delivery(Some("b"), "b", at(1))).await;
    store
        .mark_failed_attempt(a, "handler failed: boom", at(60))
        .await
        .unwrap();
    let due_now: Vec<_> = store
        .pending_deliveries(at(30), 10)
        .await
        .unwrap()
        .into_iter()
        .map(|d| d.id)
        .collect();
    assert_eq!(due_now, vec![b]);
    let later = store.pending_deliveries(at(60), 10).await.unwrap();
    assert_eq!(later.iter().map(|d| d.id).collect::<Vec<_>>(), vec![a, b]);
    assert_eq!(later[0].attempts, 1);
    assert_eq!(later[0].last_error.as_deref(), Some("handler failed: boom"));
    assert_eq!(later[0].next_attempt_at, at(60));

    store
        .mark_dead(a, "gave up after 2 attempts")
        .await
        .unwrap();
    store.mark_dead(a, "again").await.unwrap();
    assert_eq!(
        store
            .pending_deliveries(at(1_000), 10)
            .await
            .unwrap()
            .iter()
            .map(|d| d.id)
            .collect::<Vec<_>>(),
        vec![b]
    );
    let summary = store.recent_deliveries(None, 10).await.unwrap();
    let dead = summary.iter().find(|d| d.id == a).unwrap();
    assert_eq!(dead.status, DeliveryStatus::Failed);
    assert_eq!(dead.attempts, 2);
    assert_eq!(dead.last_error.as_deref(), Some("gave up after 2 attempts"));
    assert!(dead.processed_at.is_some());
    assert_eq!(store.delivery_counts().await.unwrap().failed, 1);
}

pub async fn inbox_status_changes_are_checked(store: &dyn Store) {
    let id = record(store, delivery(Some("x"), "x", at(0))).await;
    assert!(matches!(
        store.mark_processed(id + 1000).await,
        Err(StoreError::NotFound { .. })
    ));
    store.mark_processed(id).await.unwrap();
    // Idempotent: a worker that crashed after committing may mark the row again.
    store.mark_processed(id).await.unwrap();
    assert!(matches!(
        store.mark_failed_attempt(id, "late", at(5)).await,
        Err(StoreError::Conflict(_))
    ));
    assert!(matches!(
        store.mark_dead(id, "late").await,
        Err(StoreError::Conflict(_))
    ));
    let summary = &store.recent_deliveries(None, 1).await.unwrap()[0];
    assert_eq!(summary.status, DeliveryStatus::Processed);
    assert_eq!(summary.body_sha256.len(), 64);
    assert!(
        store
            .pending_deliveries(at(100), 10)
            .await
            .unwrap()
            .is_empty()
    );
}

// ----- snapshots -----

/// Stores `snapshot` the way the coordinator does: with the delivery it came in, each time a
/// new delivery.
async fn store_snapshot(store: &dyn Store, snapshot: IssueSnapshot) {
    static DELIVERIES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = DELIVERIES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let name = format!("snapshot {n}");
    let id = record(store, delivery(Some(&name), &name, at(0))).await;
    let effects = DeliveryEffects {
        snapshot: Some(snapshot),
        transitions: Vec::new(),
    };
    let outcome = store.complete_delivery(id, effects).await.unwrap();
    assert_eq!(outcome, CompletionOutcome::Completed);
}

pub async fn snapshots_are_idempotent_and_never_go_back_in_time(store: &dyn Store) {
    let key = &issue("mosaic/coordinator#7");
    assert_eq!(store.get_issue_snapshot(key).await.unwrap(), None);
    let check = |title: &'static str, updated: i64, expect: (&'static str, i64)| async move {
        store_snapshot(store, snapshot("mosaic/coordinator#7", title, updated)).await;
        let stored = store.get_issue_snapshot(key).await.unwrap();
        let (title, updated) = expect;
        assert_eq!(
            stored,
            Some(snapshot("mosaic/coordinator#7", title, updated)),
            "{title}@{updated}"
        );
    };
    check("v1", 10, ("v1", 10)).await;
    check("v1", 10, ("v1", 10)).await; // same again: same result
    // Same time, other content: the later write wins (an edit within Gitea's second).
    check("v1 edited", 10, ("v1 edited", 10)).await;
    check("v2", 20, ("v2", 20)).await;
    check("stale", 15, ("v2", 20)).await;
    // Another repository's issue with the same number is another row.
    assert_eq!(
        store
            .get_issue_snapshot(&issue("other/repo#7"))
            .await
            .unwrap(),
        None
    );
}

pub async fn snapshot_summaries_match_the_stored_snapshots(store: &dyn Store) {
    let mut closed = snapshot("mosaic/coordinator#2", "closed", 10);
    closed.state = TrackerState::Closed;
    closed.labels = Vec::new();
    let mut newer = snapshot("mosaic/coordinator#1", "new", 20);
    newer.labels = vec!["priority:low".to_owned()];
    for stored in [
        snapshot("mosaic/coordinator#1", "old", 10),
        newer,
        closed,
        snapshot("other/repo#1", "elsewhere", 10),
        snapshot("other/repo#3", "not asked for", 10),
    ] {
        store_snapshot(store, stored).await;
    }
    let summary = |issue_ref: &str| {
        let stored = snapshot(issue_ref, "", 0);
        SnapshotSummary {
            state: stored.state,
            labels: stored.labels,
        }
    };
    let closed_summary = SnapshotSummary {
        state: TrackerState::Closed,
        labels: Vec::new(),
    };
    // The newest snapshot's labels.
    let newer_summary = SnapshotSummary {
        state: TrackerState::Open,
        labels: vec!["priority:low".to_owned()],
    };

    // A few issues (asked one by one), one of them twice and one without a snapshot.
    let few = vec![
        issue("mosaic/coordinator#1"),
        issue("mosaic/coordinator#2"),
        issue("mosaic/coordinator#9"),
        issue("mosaic/coordinator#1"),
        issue("other/repo#1"),
    ];
    let got = store.issue_snapshot_summaries(few).await.unwrap();
    assert_eq!(
        got,
        [
            Some(newer_summary.clone()),
            Some(closed_summary.clone()),
            None,
            Some(newer_summary.clone()),
            Some(summary("other/repo#1")),
        ]
    );

    // Many issues (as recovery asks): the same answers in the same order, and nothing for an
    // issue that was not asked for.
    let mut many: Vec<IssueRef> = (1..=600)
        .map(|n| issue(&format!("mosaic/coordinator#{n}")))
        .collect();
    many.push(issue("other/repo#1"));
    many.push(issue("third/repo#1"));
    many.push(issue("mosaic/coordinator#2"));
    let got = store.issue_snapshot_summaries(many).await.unwrap();
    assert_eq!(got.len(), 603);
    assert_eq!(got[0], Some(newer_summary));
    assert_eq!(got[1], Some(closed_summary.clone()));
    assert_eq!(got[600], Some(summary("other/repo#1")));
    assert_eq!(got[601], None);
    assert_eq!(got[602], Some(closed_summary));
    assert_eq!(got.iter().filter(|found| found.is_some()).count(), 4);

    assert!(
        store
            .issue_snapshot_summaries(Vec::new())
            .await
            .unwrap()
            .is_empty()
    );
}

pub async fn completing_a_delivery_writes_effects_and_status_together(store: &dyn Store) {
    let id = record(store, delivery(Some("c"), "c", at(0))).await;
    let outcome = store
        .process_delivery_with_snapshot(id, snapshot("mosaic/coordinator#7", "first", 10))
        .await
        .unwrap();
    assert_eq!(outcome, CompletionOutcome::Completed);
    assert!(
        store
            .pending_deliveries(at(100), 10)
            .await
            .unwrap()
            .is_empty()
    );

    // Handed over again after a crash: nothing is written twice.
    let again = store
        .process_delivery_with_snapshot(id, snapshot("mosaic/coordinator#7", "second", 20))
        .await
        .unwrap();
    assert_eq!(again, CompletionOutcome::AlreadyProcessed);
    let stored = store
        .get_issue_snapshot(&issue("mosaic/coordinator#7"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.title, "first");
}

pub async fn a_failed_completion_leaves_the_delivery_pending_and_writes_nothing(store: &dyn Store) {
    let id = record(store, delivery(Some("f"), "f", at(0))).await;
    // The transition expects a stored state the issue does not have: a conflict.
    let effects = DeliveryEffects {
        snapshot: Some(snapshot("mosaic/coordinator#8", "never", 10)),
        transitions: vec![transition(
            "mosaic/coordinator#8",
            Some(IssueState::Ready),
            IssueState::InProgress,
            1,
        )],
    };
    assert!(matches!(
        store.complete_delivery(id, effects).await,
        Err(StoreError::Conflict(_))
    ));
    assert_eq!(
        store.pending_deliveries(at(100), 10).await.unwrap().len(),
        1
    );
    assert_eq!(
        store
            .get_issue_snapshot(&issue("mosaic/coordinator#8"))
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        store
            .get_issue(&issue("mosaic/coordinator#8"))
            .await
            .unwrap(),
        None
    );
}

// ----- coordinated issues -----

pub async fn transitions_store_record_history_edges_and_outbox_atomically(store: &dyn Store) {
    let key = issue("mosaic/coordinator#7");
    let mut queued = transition("mosaic/coordinator#7", None, IssueState::Blocked, 1);
    queued.issue.metadata = Some(metadata());
    queued.issue.assigned_agent = Some("glm".to_owned());
    queued.issue.priority = 2;
    queued.issue.queued_at = Some(at(1));
    queued.blocked_by = Some(vec![
        issue("mosaic/coordinator#2"),
        issue("mosaic/infra#3"),
        issue("mosaic/coordinator#2"),
    ]);
    queued.outbox = vec![outbox_item("mosaic/coordinator#7", "7:queued")];
    store
        .commit_transitions(vec![queued.clone()])
        .await
        .unwrap();

    let stored = store.get_issue(&key).await.unwrap().unwrap();
    assert_eq!(stored, queued.issue);
    assert_eq!(
        store.dependency_edges().await.unwrap(),
        vec![
            DependencyEdge {
                issue: key.clone(),
                blocker: issue("mosaic/coordinator#2")
            },
            DependencyEdge {
                issue: key.clone(),
                blocker: issue("mosaic/infra#3")
            },
        ]
    );

    // Blocker closed: edges replaced, state moves on, history grows.
    let mut ready = transition(
        "mosaic/coordinator#7",
        Some(IssueState::Blocked),
        IssueState::Ready,
        2,
    );
    ready.issue.metadata = Some(metadata());
    ready.blocked_by = Some(vec![]);
    store.commit_transitions(vec![ready]).await.unwrap();
    assert!(store.dependency_edges().await.unwrap().is_empty());
    let history = store.issue_history(&key).await.unwrap();
    let steps: Vec<_> = history.iter().map(|t| (t.from, t.to)).collect();
    assert_eq!(
        steps,
        vec![
            (None, IssueState::Blocked),
            (Some(IssueState::Blocked), IssueState::Ready)
        ]
    );
    assert_eq!(history[1].cause, "test:2");
    assert_eq!(history[1].at, at(2));

    // A stale transition (from blocked again) is refused, and none of its effects land.
    let mut stale = transition(
        "mosaic/coordinator#7",
        Some(IssueState::Blocked),
        IssueState::Ready,
        3,
    );
    stale.outbox = vec![outbox_item("mosaic/coordinator#7", "7:stale")];
    stale.blocked_by = Some(vec![issue("mosaic/coordinator#99")]);
    assert!(matches!(
        store.commit_transitions(vec![stale]).await,
        Err(StoreError::Conflict(_))
    ));
    assert_eq!(store.issue_history(&key).await.unwrap().len(), 2);
    assert!(store.dependency_edges().await.unwrap().is_empty());
    let keys: Vec<_> = store
        .outbox_for_issue(&key)
        .await
        .unwrap()
        .into_iter()
        .map(|i| i.idempotency_key)
        .collect();
    assert_eq!(keys, vec!["7:queued"]);
}

pub async fn several_batches_commit_all_or_nothing(store: &dyn Store) {
    let ok = transition("o/r#1", None, IssueState::Pending, 1);
    let conflicting = transition("o/r#2", Some(IssueState::Ready), IssueState::InProgress, 1);
    assert!(
        store
            .commit_transitions(vec![ok.clone(), conflicting])
            .await
            .is_err()
    );
    assert_eq!(store.get_issue(&issue("o/r#1")).await.unwrap(), None);

    let mut mismatched = transition("o/r#3", None, IssueState::Ready, 1);
    mismatched.issue.state = IssueState::Blocked;
    assert!(matches!(
        store.commit_transitions(vec![mismatched]).await,
        Err(StoreError::InvalidInput(_))
    ));

    let second = transition("o/r#2", None, IssueState::Ready, 1);
    store.commit_transitions(vec![ok, second]).await.unwrap();
    let all = store.list_issues(&[]).await.unwrap();
    assert_eq!(
        all.iter().map(|r| r.issue.to_string()).collect::<Vec<_>>(),
        vec!["o/r#1", "o/r#2"]
    );
    let ready = store.list_issues(&[IssueState::Ready]).await.unwrap();
    assert_eq!(ready.len(), 1);
    assert_eq!(ready[0].issue, issue("o/r#2"));
    let some = store
        .list_issues(&[IssueState::Ready, IssueState::Pending, IssueState::Failed])
        .await
        .unwrap();
    assert_eq!(some.len(), 2);

    // `IssueRef` order, not text order (`-` sorts before `/`), and numbers as numbers.
    store
        .commit_transitions(vec![
            transition("a-b/x#1", None, IssueState::Ready, 1),
            transition("a/x#10", None, IssueState::Ready, 1),
            transition("a/x#2", None, IssueState::Ready, 1),
        ])
        .await
        .unwrap();
    let names = |records: Vec<IssueRecord>| -> Vec<String> {
        records.iter().map(|r| r.issue.to_string()).collect()
    };
    assert_eq!(
        names(store.list_issues(&[]).await.unwrap()),
        vec!["a/x#2", "a/x#10", "a-b/x#1", "o/r#1", "o/r#2"]
    );
    assert_eq!(
        names(store.list_issues(&[IssueState::Ready]).await.unwrap()),
        vec!["a/x#2", "a/x#10", "a-b/x#1", "o/r#2"]
    );
}

pub async fn updates_without_a_transition_keep_history_and_accumulate_nothing_implicitly(
    store: &dyn Store,
) {
    store
        .commit_transitions(vec![transition("o/r#1", None, IssueState::InProgress, 1)])
        .await
        .unwrap();
    let mut record = store.get_issue(&issue("o/r#1")).await.unwrap().unwrap();
    record.input_tokens = 1_200;
    record.output_tokens = 300;
    record.cost_usd = 0.25;
    record.attempts = 1;
    store
        .commit_transitions(vec![TransitionBatch::update(record.clone())])
        .await
        .unwrap();
    assert_eq!(
        store.get_issue(&issue("o/r#1")).await.unwrap(),
        Some(record.clone())
    );
    assert_eq!(store.issue_history(&issue("o/r#1")).await.unwrap().len(), 1);

    record.cost_usd = f64::NAN;
    assert!(matches!(
        store
            .commit_transitions(vec![TransitionBatch::update(record)])
            .await,
        Err(StoreError::InvalidInput(_))
    ));
}

// ----- outbox -----

pub async fn issues_are_counted_by_state(store: &dyn Store) {
    assert!(store.issue_state_counts().await.unwrap().is_empty());
    store
        .commit_transitions(vec![
            transition("o/r#1", None, IssueState::Pending, 1),
            transition("o/r#2", None, IssueState::Pending, 1),
            transition("o/r#3", None, IssueState::Completed, 1),
        ])
        .await
        .unwrap();
    let mut counts = store.issue_state_counts().await.unwrap();
    counts.sort_by_key(|(state, _)| state.as_str());
    assert_eq!(
        counts,
        vec![(IssueState::Completed, 1), (IssueState::Pending, 2)]
    );
}

pub async fn outbox_delivers_in_order_per_issue(store: &dyn Store) {
    let mut first = transition("o/r#1", None, IssueState::Pending, 1);
    first.outbox = vec![outbox_item("o/r#1", "1:a"), outbox_item("o/r#1", "1:b")];
    let mut second = transition("o/r#2", None, IssueState::Pending, 1);
    second.outbox = vec![outbox_item("o/r#2", "2:a")];
    store.commit_transitions(vec![first, second]).await.unwrap();

    let heads = |items: Vec<OutboxItem>| -> Vec<String> {
        items.into_iter().map(|i| i.idempotency_key).collect()
    };
    // Only each issue's oldest pending write.
    let next = store.next_outbox_items(at(10), 10).await.unwrap();
    assert_eq!(heads(next.clone()), vec!["1:a", "2:a"]);
    assert_eq!(next[0].kind, "comment");
    assert_eq!(
        next[0].payload,
        serde_json::json!({ "body": "comment 1:a" })
    );
    assert_eq!(next[0].status, OutboxStatus::Pending);

    // The head backs off: the issue's later write waits behind it.
    store
        .mark_outbox_failed(next[0].id, "502 from gitea", Some(at(60)))
        .await
        .unwrap();
    assert_eq!(
        heads(store.next_outbox_items(at(10), 10).await.unwrap()),
        vec!["2:a"]
    );
    let retried = store.next_outbox_items(at(60), 10).await.unwrap();
    assert_eq!(heads(retried.clone()), vec!["1:a", "2:a"]);
    assert_eq!(retried[0].attempts, 1);
    assert_eq!(retried[0].last_error.as_deref(), Some("502 from gitea"));

    store.mark_outbox_done(retried[0].id).await.unwrap();
    store.mark_outbox_done(retried[0].id).await.unwrap();
    assert_eq!(
        heads(store.next_outbox_items(at(60), 10).await.unwrap()),
        vec!["1:b", "2:a"]
    );
    assert_eq!(
        heads(store.next_outbox_items(at(60), 1).await.unwrap()),
        vec!["1:b"]
    );

    // Given up: no longer blocks, counted as failed.
    store
        .mark_outbox_failed(retried[1].id, "404", None)
        .await
        .unwrap();
    assert!(matches!(
        store.mark_outbox_done(retried[1].id).await,
        Err(StoreError::Conflict(_))
    ));
    let backlog = store.outbox_backlog().await.unwrap();
    assert_eq!((backlog.pending, backlog.failed), (1, 1));
    assert_eq!(backlog.oldest_pending_at, Some(at(0)));
    assert!(matches!(
        store.mark_outbox_done(9_999).await,
        Err(StoreError::NotFound { .. })
    ));
}

pub async fn outbox_idempotency_keys_enqueue_once(store: &dyn Store) {
    let mut first = transition("o/r#1", None, IssueState::Pending, 1);
    first.outbox = vec![outbox_item("o/r#1", "k")];
    store.commit_transitions(vec![first]).await.unwrap();
    // The same state change handled again after a crash re-enqueues the same key.
    let mut again =
        TransitionBatch::update(store.get_issue(&issue("o/r#1")).await.unwrap().unwrap());
    again.outbox = vec![outbox_item("o/r#1", "k")];
    store.commit_transitions(vec![again]).await.unwrap();
    assert_eq!(
        store.outbox_for_issue(&issue("o/r#1")).await.unwrap().len(),
        1
    );

    let mut empty_key =
        TransitionBatch::update(IssueRecord::new(issue("o/r#2"), IssueState::Pending, at(1)));
    empty_key.outbox = vec![outbox_item("o/r#2", "")];
    assert!(matches!(
        store.commit_transitions(vec![empty_key]).await,
        Err(StoreError::InvalidInput(_))
    ));
    assert_eq!(store.outbox_backlog().await.unwrap().pending, 1);
}

// ----- sessions -----

pub async fn sessions_start_and_end_with_their_issue(store: &dyn Store) {
    let key = issue("o/r#1");
    let mut start = transition("o/r#1", None, IssueState::InProgress, 1);
    start.session_started = Some(NewSession {
        id: "s1".to_owned(),
        agent: "glm".to_owned(),
        issue: key.clone(),
        pid: Some(4242),
        started_at: at(1),
    });
    store.commit_transitions(vec![start]).await.unwrap();
    let open = store.open_sessions().await.unwrap();
    assert_eq!(open.len(), 1);
    assert_eq!(open[0].pid, Some(4242));
    assert_eq!(open[0].outcome, None);
    // What it spent so far is kept while it runs (the latest figures replace the earlier).
    for output in [1_000, 2_000] {
        let spend = SessionSpend {
            input_tokens: 10_000,
            output_tokens: output,
            cache_read_tokens: 30_000,
            cache_creation_tokens: 4_000,
            cost_usd: 0.05,
        };
        store.record_session_spend("s1", spend).await.unwrap();
    }
    let open = store.open_sessions().await.unwrap();
    assert_eq!(
        (
            open[0].input_tokens,
            open[0].output_tokens,
            open[0].cache_read_tokens,
            open[0].cache_creation_tokens,
            open[0].cost_usd,
        ),
        (10_000, 2_000, 30_000, 4_000, 0.05)
    );

    let end = SessionEnd {
        session_id: "s1".to_owned(),
        ended_at: at(100),
        outcome: SessionOutcome::Succeeded,
        detail: Some("implemented the thing".to_owned()),
        input_tokens: 50_000,
        output_tokens: 4_000,
        cache_read_tokens: 160_000,
        cache_creation_tokens: 8_000,
        cost_usd: 0.1234,
    };
    let mut done = transition(
        "o/r#1",
        Some(IssueState::InProgress),
        IssueState::Completed,
        100,
    );
    done.session_ended = Some(end.clone());
    store.commit_transitions(vec![done.clone()]).await.unwrap();
    assert!(store.open_sessions().await.unwrap().is_empty());
    // An ended session's figures are its end's: a late live update changes nothing.
    store
        .record_session_spend("s1", SessionSpend::default())
        .await
        .unwrap();
    let sessions = store.sessions_for_issue(&key).await.unwrap();
    assert_eq!(sessions.len(), 1);
    assert_eq!(sessions[0].outcome, Some(SessionOutcome::Succeeded));
    assert_eq!(sessions[0].ended_at, Some(at(100)));
    // The four token kinds and the cost, kept apart.
    assert_eq!(
        (
            sessions[0].input_tokens,
            sessions[0].output_tokens,
            sessions[0].cache_read_tokens,
            sessions[0].cache_creation_tokens,
            sessions[0].cost_usd,
        ),
        (50_000, 4_000, 160_000, 8_000, 0.1234)
    );
    assert_eq!(sessions[0].detail.as_deref(), Some("implemented the thing"));
    // Summed per agent for /metrics.
    assert_eq!(
        store.agent_spend_totals().await.unwrap(),
        vec![AgentSpendTotal {
            agent: "glm".to_owned(),
            sessions: 1,
            input_tokens: 50_000,
            output_tokens: 4_000,
            cache_read_tokens: 160_000,
            cache_creation_tokens: 8_000,
            cost_usd: 0.1234,
        }]
    );

    // Ending twice, or an unknown session, is refused with the whole batch.
    let mut twice = TransitionBatch::update(done.issue.clone());
    twice.session_ended = Some(end.clone());
    assert!(matches!(
        store.commit_transitions(vec![twice]).await,
        Err(StoreError::Conflict(_))
    ));
    let mut unknown = TransitionBatch::update(done.issue.clone());
    unknown.session_ended = Some(SessionEnd {
        session_id: "nope".to_owned(),
        ..end
    });
    assert!(matches!(
        store.commit_transitions(vec![unknown]).await,
        Err(StoreError::NotFound { .. })
    ));
    let mut restart = TransitionBatch::update(done.issue);
    restart.session_started = Some(NewSession {
        id: "s1".to_owned(),
        agent: "glm".to_owned(),
        issue: key,
        pid: None,
        started_at: at(200),
    });
    assert!(matches!(
        store.commit_transitions(vec![restart]).await,
        Err(StoreError::Conflict(_))
    ));
}

pub async fn a_sessions_process_is_recorded_once_when_it_was_unknown(store: &dyn Store) {
    let mut start = transition("o/r#7", None, IssueState::InProgress, 1);
    start.session_started = Some(NewSession {
        id: "remote".to_owned(),
        agent: "glm".to_owned(),
        issue: issue("o/r#7"),
        pid: None,
        started_at: at(1),
    });
    store.commit_transitions(vec![start]).await.unwrap();
    assert!(!store.record_session_process("unknown", 7).await.unwrap());
    assert!(store.record_session_process("remote", 4243).await.unwrap());
    // Known once: a later word does not replace it.
    assert!(!store.record_session_process("remote", 99).await.unwrap());
    let open = store.open_sessions().await.unwrap();
    let remote = open.iter().find(|session| session.id == "remote").unwrap();
    assert_eq!(remote.pid, Some(4243));
}

pub async fn rotations_and_compactions_round_trip(store: &dyn Store) {
    let rotation = RotationRecord {
        old_session_id: "s1".to_owned(),
        new_session_id: Some("s2".to_owned()),
        agent_type: "sonnet".to_owned(),
        issue: issue("o/r#1"),
        next_issue: Some(issue("o/other#4")),
        context_before_tokens: 190_000,
        context_before_percent: 95.0,
        success: true,
        error_message: None,
        at: at(5),
    };
    let failed = RotationRecord {
        new_session_id: None,
        next_issue: None,
        success: false,
        error_message: Some("spawn failed: no such file".to_owned()),
        at: at(6),
        ..rotation.clone()
    };
    // Recorded in the same microsecond as `failed`: a time cursor would skip one of them.
    let same_time = RotationRecord {
        old_session_id: "s7".to_owned(),
        issue: issue("o/r#7"),
        ..failed.clone()
    };
    store.record_rotation(rotation.clone()).await.unwrap();
    store.record_rotation(failed.clone()).await.unwrap();
    store.record_rotation(same_time.clone()).await.unwrap();
    let all = store.recent_rotations(None, 10).await.unwrap();
    let read: Vec<RotationRecord> = all.iter().map(|r| r.rotation.clone()).collect();
    assert_eq!(read, vec![same_time, failed, rotation.clone()]);
    assert!(
        all.windows(2).all(|pair| pair[0].id > pair[1].id),
        "newest first, ids decreasing: {all:?}"
    );
    // One at a time, each page after the last row seen: every rotation exactly once.
    let mut paged = Vec::new();
    let mut before = None;
    loop {
        let page = store.recent_rotations(before, 1).await.unwrap();
        assert!(page.len() <= 1, "{page:?}");
        let Some(last) = page.last() else { break };
        before = Some(last.id);
        paged.extend(page);
        assert!(paged.len() <= all.len(), "paging never ends: {paged:?}");
    }
    assert_eq!(paged, all);

    let compaction = CompactionRecord {
        session_id: "s1".to_owned(),
        issue: issue("o/r#1"),
        before_tokens: 165_000,
        after_tokens: 40_000,
        freed_tokens: 125_000,
        freed_percent: 75.75,
        success: true,
        at: at(4),
    };
    store.record_compaction(compaction.clone()).await.unwrap();
    assert_eq!(
        store.compactions_for_session("s1").await.unwrap(),
        vec![compaction]
    );
    assert!(
        store
            .compactions_for_session("s2")
            .await
            .unwrap()
            .is_empty()
    );
}

// ----- workspaces -----

pub async fn workspaces_keep_their_pull_request_while_the_branch_stays(store: &dyn Store) {
    let target = issue("o/r#3");
    assert_eq!(store.get_workspace(&target).await.unwrap(), None);
    let prepared = WorkspaceRecord {
        issue: target.clone(),
        path: "/work/o/r/issue-3".to_owned(),
        branch: "mosaic/3-fix".to_owned(),
        base_branch: "main".to_owned(),
        head_commit: None,
        prepared_at: at(1),
        removed_at: None,
    };
    store.put_workspace(prepared.clone()).await.unwrap();
    let link = PullRequestLink {
        number: 12,
        url: "http://gitea/o/r/pulls/12".to_owned(),
    };
    // Another branch's pull request (an older attempt's) does not attach to this one.
    store
        .record_pull_request(&target, "mosaic/3-old", link.clone())
        .await
        .unwrap();
    assert_eq!(
        store
            .get_workspace(&target)
            .await
            .unwrap()
            .unwrap()
            .pull_request,
        None
    );
    store
        .record_pull_request(&target, "mosaic/3-fix", link.clone())
        .await
        .unwrap();
    // A push and a removal on the same branch keep the pull request.
    let pushed = WorkspaceRecord {
        head_commit: Some("abc123".to_owned()),
        removed_at: Some(at(9)),
        ..prepared.clone()
    };
    store.put_workspace(pushed.clone()).await.unwrap();
    assert_eq!(
        store.get_workspace(&target).await.unwrap(),
        Some(IssueWorkspace {
            workspace: pushed,
            pull_request: Some(link.clone()),
        })
    );
    // A workspace on a new branch starts without one.
    let renamed = WorkspaceRecord {
        branch: "mosaic/3-fix-again".to_owned(),
        prepared_at: at(20),
        ..prepared
    };
    store.put_workspace(renamed.clone()).await.unwrap();
    assert_eq!(
        store.get_workspace(&target).await.unwrap(),
        Some(IssueWorkspace {
            workspace: renamed,
            pull_request: None,
        })
    );
    assert_eq!(store.get_workspace(&issue("o/r#4")).await.unwrap(), None);
}

pub async fn gate_runs_are_kept_per_issue_in_order(store: &dyn Store) {
    let target = issue("o/r#3");
    assert!(store.gate_runs_for_issue(&target).await.unwrap().is_empty());
    let failed = GateRunRecord {
        issue: target.clone(),
        attempt: 1,
        session_id: Some("s1".to_owned()),
        gate: "test".to_owned(),
        command: vec!["sh".to_owned(), "-c".to_owned(), "cargo test".to_owned()],
        required: true,
        status: "failed".to_owned(),
        detail: "exit code 101".to_owned(),
        duration_ms: 12_345,
        output_tail: "test widget ... FAILED\n".to_owned(),
        coverage_percent: None,
        at: at(5),
    };
    let coverage = GateRunRecord {
        gate: "coverage".to_owned(),
        required: false,
        status: "below_coverage".to_owned(),
        coverage_percent: Some(71.25),
        ..failed.clone()
    };
    let passed = GateRunRecord {
        session_id: Some("s2".to_owned()),
        status: "passed".to_owned(),
        detail: String::new(),
        at: at(9),
        ..failed.clone()
    };
    store
        .record_gate_runs(vec![failed.clone(), coverage.clone()])
        .await
        .unwrap();
    store.record_gate_runs(vec![passed.clone()]).await.unwrap();
    store
        .record_gate_runs(vec![GateRunRecord {
            issue: issue("o/r#4"),
            ..passed.clone()
        }])
        .await
        .unwrap();
    assert_eq!(
        store.gate_runs_for_issue(&target).await.unwrap(),
        vec![failed, coverage, passed]
    );
}

// ----- cache and usage -----

pub async fn parse_cache_stores_json_by_key(store: &dyn Store) {
    assert_eq!(store.cache_get("k").await.unwrap(), None);
    store.cache_put("k", r#"{"estimate":1}"#).await.unwrap();
    store.cache_put("k", r#"{"estimate":2}"#).await.unwrap();
    assert_eq!(
        store.cache_get("k").await.unwrap().as_deref(),
        Some(r#"{"estimate":2}"#)
    );
    assert!(matches!(
        store.cache_put("k", "{not json").await,
        Err(StoreError::InvalidInput(_))
    ));
    assert!(matches!(
        store.cache_put("", "1").await,
        Err(StoreError::InvalidInput(_))
    ));
    assert_eq!(
        store.cache_get("k").await.unwrap().as_deref(),
        Some(r#"{"estimate":2}"#)
    );
}

pub async fn llm_usage_is_summed_per_provider_and_model(store: &dyn Store) {
    let usage = |provider: &str, model: &str, input: u64, cost: f64| LlmUsageRecord {
        provider: provider.to_owned(),
        model: model.to_owned(),
        input_tokens: input,
        output_tokens: 10,
        cost_usd: cost,
        issue: Some(issue("o/r#1")),
        at: at(0),
    };
    store
        .record_llm_usage(usage("openai", "m", 100, 0.5))
        .await
        .unwrap();
    store
        .record_llm_usage(usage("anthropic", "sonnet", 1_000, 0.25))
        .await
        .unwrap();
    store
        .record_llm_usage(usage("anthropic", "sonnet", 500, 0.5))
        .await
        .unwrap();
    let totals = store.llm_usage_totals().await.unwrap();
    assert_eq!(
        totals,
        vec![
            LlmUsageTotal {
                provider: "anthropic".to_owned(),
                model: "sonnet".to_owned(),
                calls: 2,
                input_tokens: 1_500,
                output_tokens: 20,
                cost_usd: 0.75,
            },
            LlmUsageTotal {
                provider: "openai".to_owned(),
                model: "m".to_owned(),
                calls: 1,
                input_tokens: 100,
                output_tokens: 10,
                cost_usd: 0.5,
            },
        ]
    );
}

pub async fn the_latest_outbox_id_is_the_newest_items(store: &dyn Store) {
    assert_eq!(store.latest_outbox_id().await.unwrap(), None);
    let mut batch = transition("acme/widgets#1", None, IssueState::Ready, 1);
    batch.outbox = vec![
        outbox_item("acme/widgets#1", "first"),
        outbox_item("acme/widgets#1", "second"),
    ];
    store.commit_transitions(vec![batch]).await.unwrap();
    let items = store
        .outbox_for_issue(&issue("acme/widgets#1"))
        .await
        .unwrap();
    assert_eq!(
        store.latest_outbox_id().await.unwrap(),
        items.iter().map(|item| item.id).max()
    );
}

pub async fn a_pending_delivery_is_known_per_issue(store: &dyn Store) {
    let seven = issue("mosaic/coordinator#7");
    let eight = issue("mosaic/coordinator#8");
    assert!(!store.has_pending_delivery(&seven).await.unwrap());
    let id = record(store, delivery(Some("p-1"), "pending one", at(0))).await;
    assert!(store.has_pending_delivery(&seven).await.unwrap());
    assert!(!store.has_pending_delivery(&eight).await.unwrap());
    store.mark_processed(id).await.unwrap();
    assert!(!store.has_pending_delivery(&seven).await.unwrap());
}

pub async fn peers_are_alive_while_they_beat(store: &dyn Store) {
    let peer = |id: &str, name: &str, leading: bool| Peer {
        id: id.to_owned(),
        name: name.to_owned(),
        leading,
        // Distinct per peer and per beat, so a capacity that is not stored shows.
        capacity: u32::from(leading) * 10 + if id == "p1" { 3 } else { 4 },
    };
    let named = |beats: Vec<PeerBeat>| -> Vec<Peer> { beats.into_iter().map(|b| b.peer).collect() };
    let minute = std::time::Duration::from_secs(60);
    assert!(store.peers_alive(minute).await.unwrap().is_empty());
    store
        .beat_peer(&peer("p1", "b-host:8000", true))
        .await
        .unwrap();
    store
        .beat_peer(&peer("p2", "a-host:8000", false))
        .await
        .unwrap();
    // A newer beat replaces the older one of the same peer.
    store
        .beat_peer(&peer("p1", "b-host:8000", false))
        .await
        .unwrap();
    let alive = store.peers_alive(minute).await.unwrap();
    assert_eq!(
        named(alive.clone()),
        vec![
            peer("p2", "a-host:8000", false),
            peer("p1", "b-host:8000", false)
        ]
    );
    // Stamped by the store's clock, now.
    assert!(
        alive
            .iter()
            .all(|beat| (Utc::now() - beat.at).num_seconds().abs() < 60)
    );
    // Only those heard from within the window.
    tokio::time::sleep(std::time::Duration::from_millis(1_100)).await;
    store
        .beat_peer(&peer("p2", "a-host:8000", true))
        .await
        .unwrap();
    assert_eq!(
        named(
            store
                .peers_alive(std::time::Duration::from_secs(1))
                .await
                .unwrap()
        ),
        vec![peer("p2", "a-host:8000", true)]
    );
}

/// How long a claimed session counts as live without a report, in these tests.
const BUSY_WITHIN: std::time::Duration = std::time::Duration::from_secs(5);

fn session_request(id: &str, agent: &str) -> SessionRequest {
    SessionRequest {
        session_id: id.to_owned(),
        // One issue per request: `s<n>` is issue n + 1.
        issue: issue(&format!(
            "mosaic/coordinator#{}",
            id.trim_start_matches('s').parse::<u64>().unwrap_or(99) + 1
        )),
        agent: agent.to_owned(),
        task_json: format!(r#"{{"task":"{id}"}}"#),
    }
}

fn claimant(id: &str, name: &str, capacity: u32) -> Peer {
    Peer {
        id: id.to_owned(),
        name: name.to_owned(),
        leading: false,
        capacity,
    }
}

fn names(list: &[&str]) -> Vec<String> {
    list.iter().map(|name| (*name).to_owned()).collect()
}

fn report(session_id: &str, claimant: &str, state: &str, ended: bool) -> SessionReport {
    SessionReport {
        session_id: session_id.to_owned(),
        claimant: claimant.to_owned(),
        state_json: format!(r#"{{"state":"{state}"}}"#),
        ended,
    }
}

async fn claimed_id(store: &dyn Store, by: &Peer, agents: &[&str]) -> Option<String> {
    store
        .claim_session(by, &names(agents), BUSY_WITHIN)
        .await
        .unwrap()
        .map(|request| request.session_id)
}

async fn view(store: &dyn Store, session_id: &str) -> SessionRequestView {
    let mut views = store.session_requests(&names(&[session_id])).await.unwrap();
    assert_eq!(views.len(), 1, "{session_id} is requested");
    views.remove(0)
}

pub async fn session_requests_are_claimed_oldest_first_among_the_claimants_agents(
    store: &dyn Store,
) {
    for (id, agent) in [
        ("s1", "claude"),
        ("s2", "glm"),
        ("s3", "claude"),
        ("s4", "claude"),
    ] {
        store
            .request_session(&session_request(id, agent))
            .await
            .unwrap();
    }
    // A repeated id is refused and changes nothing.
    let repeated = store.request_session(&session_request("s1", "glm")).await;
    assert!(
        matches!(repeated, Err(StoreError::Conflict(_))),
        "{repeated:?}"
    );
    store
        .cancel_session_requests(Some(&names(&["s3"])))
        .await
        .unwrap();

    let a = claimant("a", "host-a:8000", 10);
    let b = claimant("b", "host-b:8000", 10);
    // None of its agents asked for: nothing; no agents at all: nothing.
    assert_eq!(claimed_id(store, &a, &["codex"]).await, None);
    assert_eq!(claimed_id(store, &a, &[]).await, None);
    // The whole request comes back, as it was asked for.
    let first = store
        .claim_session(&a, &names(&["claude"]), BUSY_WITHIN)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(first, session_request("s1", "claude"));
    // Claimed (s1) and cancelled (s3) requests are passed over.
    assert_eq!(
        claimed_id(store, &b, &["claude"]).await.as_deref(),
        Some("s4")
    );
    assert_eq!(claimed_id(store, &b, &["claude"]).await, None);
    assert_eq!(
        claimed_id(store, &b, &["codex", "glm", "claude"])
            .await
            .as_deref(),
        Some("s2")
    );
    assert_eq!(claimed_id(store, &a, &["claude", "glm"]).await, None);
    assert_eq!(view(store, "s1").await.claimant.as_deref(), Some("a"));
    assert_eq!(view(store, "s2").await.claimant.as_deref(), Some("b"));
    assert_eq!(view(store, "s3").await.claimant, None);
}

pub async fn an_issues_next_session_waits_until_its_previous_one_ended_or_fell_silent(
    store: &dyn Store,
) {
    let same_issue = |id: &str| SessionRequest {
        issue: issue("mosaic/coordinator#7"),
        ..session_request(id, "claude")
    };
    for id in ["s1", "s2", "s3"] {
        store.request_session(&same_issue(id)).await.unwrap();
    }
    let a = claimant("a", "host-a:8000", 10);
    let b = claimant("b", "host-b:8000", 10);
    assert_eq!(
        claimed_id(store, &a, &["claude"]).await.as_deref(),
        Some("s1")
    );
    // Cancelled (the leader moved on) but still winding down: the issue's next one waits.
    store
        .cancel_session_requests(Some(&names(&["s1"])))
        .await
        .unwrap();
    assert_eq!(claimed_id(store, &b, &["claude"]).await, None);
    // Ended: the next one is claimed.
    store
        .report_session(&report("s1", "a", "done", true), 0)
        .await
        .unwrap();
    assert_eq!(
        claimed_id(store, &b, &["claude"]).await.as_deref(),
        Some("s2")
    );
    // Silent past the window: its claimant is lost, the next one is claimed.
    let short = std::time::Duration::from_millis(300);
    let waiting = store
        .claim_session(&a, &names(&["claude"]), short)
        .await
        .unwrap();
    assert_eq!(waiting, None, "s2 was just claimed");
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let next = store
        .claim_session(&a, &names(&["claude"]), short)
        .await
        .unwrap()
        .map(|request| request.session_id);
    assert_eq!(next.as_deref(), Some("s3"));
}

pub async fn retention_removes_only_the_session_requests_that_ended_before_the_cut(
    store: &dyn Store,
) {
    for id in ["s1", "s2", "s3"] {
        store
            .request_session(&session_request(id, "claude"))
            .await
            .unwrap();
    }
    // s3 is cancelled before anyone claims it: it never ends, and goes all the same.
    store
        .cancel_session_requests(Some(&names(&["s3"])))
        .await
        .unwrap();
    let a = claimant("a", "host-a:8000", 10);
    assert_eq!(
        claimed_id(store, &a, &["claude"]).await.as_deref(),
        Some("s1")
    );
    assert_eq!(
        claimed_id(store, &a, &["claude"]).await.as_deref(),
        Some("s2")
    );
    store
        .command_session("s1", r#"{"kind":"finish"}"#)
        .await
        .unwrap();
    store
        .report_session(&report("s1", "a", "done", true), 0)
        .await
        .unwrap();
    let an_hour = chrono::Duration::hours(1);
    assert_eq!(
        store
            .prune_session_requests(Utc::now() - an_hour)
            .await
            .unwrap(),
        0,
        "ended after the cut"
    );
    assert_eq!(
        store
            .prune_session_requests(Utc::now() + an_hour)
            .await
            .unwrap(),
        2,
        "the running one stays"
    );
    let left = store
        .session_requests(&names(&["s1", "s2", "s3"]))
        .await
        .unwrap();
    assert_eq!(
        left.iter()
            .map(|v| v.session_id.as_str())
            .collect::<Vec<_>>(),
        ["s2"]
    );
}

pub async fn a_claimant_holds_at_most_its_capacity_until_a_session_ends(store: &dyn Store) {
    for n in 0..5 {
        store
            .request_session(&session_request(&format!("s{n}"), "claude"))
            .await
            .unwrap();
    }
    let agents = ["claude"];
    assert_eq!(
        claimed_id(store, &claimant("none", "host-n:8000", 0), &agents).await,
        None,
        "a capacity of 0 runs nothing"
    );
    let a = claimant("a", "host-a:8000", 2);
    assert_eq!(claimed_id(store, &a, &agents).await.as_deref(), Some("s0"));
    assert_eq!(claimed_id(store, &a, &agents).await.as_deref(), Some("s1"));
    assert_eq!(claimed_id(store, &a, &agents).await, None, "a is full");
    // Counted per claimant: b has room of its own.
    let b = claimant("b", "host-b:8000", 1);
    assert_eq!(claimed_id(store, &b, &agents).await.as_deref(), Some("s2"));
    assert_eq!(claimed_id(store, &b, &agents).await, None);
    // A report that is not the end frees nothing; a cancelled session not ended still counts.
    store
        .report_session(&report("s0", "a", "running", false), 0)
        .await
        .unwrap();
    store
        .cancel_session_requests(Some(&names(&["s1"])))
        .await
        .unwrap();
    assert_eq!(claimed_id(store, &a, &agents).await, None);
    // The end frees a place.
    store
        .report_session(&report("s1", "a", "cancelled", true), 0)
        .await
        .unwrap();
    assert_eq!(claimed_id(store, &a, &agents).await.as_deref(), Some("s3"));
    assert_eq!(claimed_id(store, &a, &agents).await, None);
    // A larger capacity (the same id, reconfigured) has room again.
    let a = claimant("a", "host-a:8000", 3);
    assert_eq!(claimed_id(store, &a, &agents).await.as_deref(), Some("s4"));
}

pub async fn reports_answer_the_commands_after_the_last_seen_and_whether_to_stop(
    store: &dyn Store,
) {
    store
        .request_session(&session_request("s1", "claude"))
        .await
        .unwrap();
    // A command may be left before the session is claimed.
    let first = store
        .command_session("s1", r#"{"prompt":"one"}"#)
        .await
        .unwrap();
    let a = claimant("a", "host-a:8000", 1);
    assert_eq!(
        claimed_id(store, &a, &["claude"]).await.as_deref(),
        Some("s1")
    );
    let second = store
        .command_session("s1", r#"{"prompt":"two"}"#)
        .await
        .unwrap();
    assert!(second > first);
    // The same text again (a retry after a lost answer) is the same command, stored once.
    assert_eq!(
        store
            .command_session("s1", r#"{"prompt":"two"}"#)
            .await
            .unwrap(),
        second
    );
    let missing = store.command_session("nobody", "{}").await;
    assert!(
        matches!(missing, Err(StoreError::NotFound { .. })),
        "{missing:?}"
    );

    let orders = store
        .report_session(&report("s1", "a", "started", false), 0)
        .await
        .unwrap();
    assert!(!orders.cancelled);
    assert_eq!(
        orders.commands,
        vec![
            SessionCommand {
                seq: first,
                command_json: r#"{"prompt":"one"}"#.to_owned()
            },
            SessionCommand {
                seq: second,
                command_json: r#"{"prompt":"two"}"#.to_owned()
            },
        ]
    );
    let orders = store
        .report_session(&report("s1", "a", "working", false), first)
        .await
        .unwrap();
    assert_eq!(
        orders.commands.iter().map(|c| c.seq).collect::<Vec<_>>(),
        [second]
    );
    let orders = store
        .report_session(&report("s1", "a", "working", false), second)
        .await
        .unwrap();
    assert_eq!(orders, SessionOrders::default());
    assert_eq!(
        view(store, "s1").await.state_json.as_deref(),
        Some(r#"{"state":"working"}"#)
    );

    // Another claimant's report is ignored, and it is told to stop; so is one of an unknown
    // session.
    let foreign = store
        .report_session(&report("s1", "b", "hijacked", false), 0)
        .await
        .unwrap();
    assert!(foreign.cancelled);
    assert!(foreign.commands.is_empty(), "not its commands");
    assert_eq!(
        view(store, "s1").await.state_json.as_deref(),
        Some(r#"{"state":"working"}"#)
    );
    let unknown = store
        .report_session(&report("nobody", "a", "?", false), 0)
        .await
        .unwrap();
    assert!(unknown.cancelled);

    // Cancelled: the claimant is told, and its reports still count (its last word).
    assert_eq!(
        store
            .cancel_session_requests(Some(&names(&["s1", "nobody"])))
            .await
            .unwrap(),
        1
    );
    let third = store
        .command_session("s1", r#"{"close":true}"#)
        .await
        .unwrap();
    let orders = store
        .report_session(&report("s1", "a", "stopping", false), second)
        .await
        .unwrap();
    assert!(orders.cancelled);
    assert_eq!(
        orders.commands.iter().map(|c| c.seq).collect::<Vec<_>>(),
        [third]
    );
    store
        .report_session(&report("s1", "a", "done", true), third)
        .await
        .unwrap();
    // Ended is final: a later report changes nothing.
    store
        .report_session(&report("s1", "a", "revived", false), third)
        .await
        .unwrap();
    let ended = view(store, "s1").await;
    assert!(ended.ended && ended.cancelled);
    assert_eq!(ended.state_json.as_deref(), Some(r#"{"state":"done"}"#));
}

pub async fn cancelling_every_request_spares_the_ended_and_the_cancelled(store: &dyn Store) {
    for id in ["s1", "s2", "s3", "s4"] {
        store
            .request_session(&session_request(id, "claude"))
            .await
            .unwrap();
    }
    let a = claimant("a", "host-a:8000", 2);
    assert_eq!(
        claimed_id(store, &a, &["claude"]).await.as_deref(),
        Some("s1")
    );
    assert_eq!(
        claimed_id(store, &a, &["claude"]).await.as_deref(),
        Some("s2")
    );
    store
        .report_session(&report("s1", "a", "done", true), 0)
        .await
        .unwrap();
    assert_eq!(
        store
            .cancel_session_requests(Some(&names(&["s3"])))
            .await
            .unwrap(),
        1
    );
    // s2 (claimed) and s4 (unclaimed); not s1 (ended) nor s3 (cancelled already).
    assert_eq!(store.cancel_session_requests(None).await.unwrap(), 2);
    assert_eq!(store.cancel_session_requests(None).await.unwrap(), 0);
    let views = store
        .session_requests(&names(&["s1", "s2", "s3", "s4"]))
        .await
        .unwrap();
    assert_eq!(
        views
            .iter()
            .map(|v| (v.session_id.as_str(), v.ended, v.cancelled))
            .collect::<Vec<_>>(),
        [
            ("s1", true, false),
            ("s2", false, true),
            ("s3", false, true),
            ("s4", false, true)
        ]
    );
    // Nothing cancelled is claimed.
    let b = claimant("b", "host-b:8000", 5);
    assert_eq!(claimed_id(store, &b, &["claude"]).await, None);
}

pub async fn the_leader_sees_a_requests_claimant_state_and_silence(store: &dyn Store) {
    for id in ["s1", "s2"] {
        store
            .request_session(&session_request(id, "claude"))
            .await
            .unwrap();
    }
    // In the order asked for; unknown ids left out.
    let views = store
        .session_requests(&names(&["s2", "unknown", "s1"]))
        .await
        .unwrap();
    assert_eq!(
        views,
        vec![
            SessionRequestView {
                session_id: "s2".to_owned(),
                claimant: None,
                state_json: None,
                ended: false,
                cancelled: false,
                silent_ms: None,
            },
            SessionRequestView {
                session_id: "s1".to_owned(),
                claimant: None,
                state_json: None,
                ended: false,
                cancelled: false,
                silent_ms: None,
            },
        ]
    );
    assert!(store.session_requests(&[]).await.unwrap().is_empty());

    let a = claimant("a", "host-a:8000", 1);
    assert_eq!(
        claimed_id(store, &a, &["claude"]).await.as_deref(),
        Some("s1")
    );
    let claimed = view(store, "s1").await;
    assert_eq!(claimed.claimant.as_deref(), Some("a"));
    assert_eq!(claimed.state_json, None);
    let at_claim = claimed.silent_ms.expect("silence counts from the claim");
    assert!(at_claim < 60_000, "{at_claim} ms");
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let silent = view(store, "s1").await.silent_ms.unwrap();
    assert!(silent >= at_claim + 250, "{silent} ms after {at_claim} ms");
    // A report resets the silence.
    store
        .report_session(&report("s1", "a", "working", false), 0)
        .await
        .unwrap();
    let reported = view(store, "s1").await;
    assert!(reported.silent_ms.unwrap() < silent, "{reported:?}");
    assert_eq!(
        reported.state_json.as_deref(),
        Some(r#"{"state":"working"}"#)
    );
}

pub async fn a_restarted_claimant_finds_the_sessions_its_previous_process_left(store: &dyn Store) {
    for id in ["s1", "s2", "s3", "s4", "s5"] {
        store
            .request_session(&session_request(id, "claude"))
            .await
            .unwrap();
    }
    let old = claimant("old", "host-a:8000", 3);
    let other = claimant("other", "host-b:8000", 1);
    assert_eq!(
        claimed_id(store, &old, &["claude"]).await.as_deref(),
        Some("s1")
    );
    assert_eq!(
        claimed_id(store, &other, &["claude"]).await.as_deref(),
        Some("s2")
    );
    assert_eq!(
        claimed_id(store, &old, &["claude"]).await.as_deref(),
        Some("s3")
    );
    assert_eq!(
        claimed_id(store, &old, &["claude"]).await.as_deref(),
        Some("s4")
    );
    store
        .report_session(&report("s3", "old", "done", true), 0)
        .await
        .unwrap();
    // The new process, under the same name, claims one of its own.
    let new = claimant("new", "host-a:8000", 3);
    assert_eq!(
        claimed_id(store, &new, &["claude"]).await.as_deref(),
        Some("s5")
    );

    let left = store.sessions_left_by("host-a:8000", "new").await.unwrap();
    assert_eq!(
        left,
        vec![
            session_request("s1", "claude"),
            session_request("s4", "claude")
        ]
    );
    assert!(
        store
            .sessions_left_by("host-c:8000", "new")
            .await
            .unwrap()
            .is_empty()
    );
}

pub async fn health_check_writes(store: &dyn Store) {
    let before = store.stats();
    store.health_check().await.unwrap();
    store.health_check().await.unwrap();
    let after = store.stats();
    assert_eq!(after.writes, before.writes + 2);
    assert!(after.commits > before.commits);
}

pub async fn write_outcomes_follow_the_writes(store: &dyn Store) {
    assert_eq!(store.write_outcomes().last_failure, None);
    store.health_check().await.unwrap();
    let first = store
        .write_outcomes()
        .last_success
        .expect("a write succeeded");
    // The health check's probe delivery is rolled back: it leaves no row.
    assert!(store.recent_deliveries(None, 10).await.unwrap().is_empty());

    // A caller's mistake is not a failure of the store.
    assert!(matches!(
        store.mark_processed(999_999).await,
        Err(StoreError::NotFound { .. })
    ));
    record(store, delivery(Some("w"), "w", at(0))).await;
    let outcomes = store.write_outcomes();
    assert_eq!(outcomes.last_failure, None);
    assert!(outcomes.last_success.unwrap() >= first);
}

pub async fn time_survives_with_microsecond_precision(store: &dyn Store) {
    let precise = at(0) + Duration::microseconds(123_456);
    record(store, delivery(Some("t"), "t", precise)).await;
    let got = store.pending_deliveries(precise, 1).await.unwrap();
    assert_eq!(got[0].received_at, precise);
}
