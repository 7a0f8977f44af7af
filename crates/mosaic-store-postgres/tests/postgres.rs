#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]
//! The PostgreSQL backend: the shared conformance suite (the SQLite backend's checks, word for
//! word), plus what only a server backend has: concurrent writers, concurrent migrations,
//! durability across a new pool.
//!
//! The server: `MOSAIC_TEST_POSTGRES_URL`, default [`DEFAULT_URL`]. Each test works in a fresh
//! schema of its own, dropped at the end, so tests run in parallel. When the server cannot be
//! reached the tests fail with `CI=true`, and otherwise say how to start it and pass.

#[path = "../../mosaic-store/tests/conformance/mod.rs"]
mod conformance;

use std::sync::Arc;
use std::time::Duration;

use mosaic_domain::IssueState;
use mosaic_store::*;
use mosaic_store_postgres::{PostgresOptions, PostgresStore};

const DEFAULT_URL: &str = "postgres://mosaic:mosaic@127.0.0.1:5432/mosaic_test";

fn server_url() -> String {
    std::env::var("MOSAIC_TEST_POSTGRES_URL").unwrap_or_else(|_| DEFAULT_URL.to_owned())
}

/// A direct connection for test set-up, or `None` (after saying why) when there is no server
/// and this is not CI.
async fn admin() -> Option<tokio_postgres::Client> {
    let mut config: tokio_postgres::Config = server_url().parse().expect("a valid test URL");
    config.connect_timeout(Duration::from_secs(5));
    match config.connect(tokio_postgres::NoTls).await {
        Ok((client, connection)) => {
            tokio::spawn(connection);
            Some(client)
        }
        Err(error) => {
            let cause = std::error::Error::source(&error)
                .map(|cause| format!(": {cause}"))
                .unwrap_or_default();
            let message = format!(
                "PostgreSQL is not reachable at MOSAIC_TEST_POSTGRES_URL (default {DEFAULT_URL}): \
                 {error}{cause}. Start it with `pg_ctlcluster 15 main start` and create the role and \
                 database as in .ci/run"
            );
            if std::env::var("CI").is_ok_and(|ci| ci == "true") {
                panic!("{message}");
            }
            println!("skipped: {message}");
            None
        }
    }
}

/// A schema of the test's own, dropped (with everything in it) when the guard goes.
struct Schema {
    name: String,
}

impl Schema {
    async fn create() -> Option<Self> {
        let client = admin().await?;
        let name = format!("mosaic_test_{:016x}", rand::random::<u64>());
        client
            .batch_execute(&format!("CREATE SCHEMA {name}"))
            .await
            .unwrap();
        Some(Self { name })
    }

    fn options(&self) -> PostgresOptions {
        PostgresOptions {
            pool_size: 4,
            schema: Some(self.name.clone()),
            ..PostgresOptions::default()
        }
    }

    async fn open(&self) -> PostgresStore {
        PostgresStore::connect(&server_url(), self.options())
            .await
            .unwrap()
    }

    /// A connection to the schema, outside any store.
    async fn outside(&self) -> tokio_postgres::Client {
        let client = admin().await.unwrap();
        client
            .batch_execute(&format!("SET search_path = {}", self.name))
            .await
            .unwrap();
        client
    }
}

impl Drop for Schema {
    fn drop(&mut self) {
        // Drop runs inside the test's runtime, which cannot block on itself: a thread of its
        // own with a small runtime drops the schema.
        let name = self.name.clone();
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                if let Some(client) = admin().await {
                    client
                        .batch_execute(&format!("DROP SCHEMA IF EXISTS {name} CASCADE"))
                        .await
                        .unwrap();
                }
            });
        })
        .join();
        if dropped.is_err() && !std::thread::panicking() {
            panic!("could not drop the test schema");
        }
    }
}

async fn fresh() -> Option<(Schema, Arc<dyn Store>)> {
    let schema = Schema::create().await?;
    let store = schema.open().await;
    Some((schema, Arc::new(store)))
}

/// One test per conformance check, as `conformance_tests!` makes them, except that a missing
/// server outside CI skips instead of failing; and the list of names, to compare with SQLite's.
macro_rules! postgres_conformance_tests {
    ($($check:ident),* $(,)?) => {
        const CHECKS: &[&str] = &[$(stringify!($check)),*];
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $check() {
                let Some((_schema, store)) = fresh().await else {
                    return;
                };
                conformance::$check(store.as_ref()).await;
                // The store's connections close before the schema is dropped.
                drop(store);
            }
        )*
    };
}

postgres_conformance_tests!(
    inbox_records_in_increasing_order_and_lists_pending_oldest_first,
    inbox_dedupes_by_delivery_id,
    inbox_keeps_a_repeated_body_under_a_new_id_as_a_possible_replay,
    inbox_ignored_deliveries_are_kept_but_never_pending,
    retention_drops_only_the_bodies_of_old_handled_deliveries,
    inbox_failed_attempts_back_off_then_die,
    inbox_status_changes_are_checked,
    snapshots_are_idempotent_and_never_go_back_in_time,
    snapshot_summaries_match_the_stored_snapshots,
    completing_a_delivery_writes_effects_and_status_together,
    a_failed_completion_leaves_the_delivery_pending_and_writes_nothing,
    transitions_store_record_history_edges_and_outbox_atomically,
    several_batches_commit_all_or_nothing,
    updates_without_a_transition_keep_history_and_accumulate_nothing_implicitly,
    issues_are_counted_by_state,
    outbox_delivers_in_order_per_issue,
    outbox_idempotency_keys_enqueue_once,
    sessions_start_and_end_with_their_issue,
    a_sessions_process_is_recorded_once_when_it_was_unknown,
    rotations_and_compactions_round_trip,
    workspaces_keep_their_pull_request_while_the_branch_stays,
    gate_runs_are_kept_per_issue_in_order,
    parse_cache_stores_json_by_key,
    llm_usage_is_summed_per_provider_and_model,
    the_latest_outbox_id_is_the_newest_items,
    a_pending_delivery_is_known_per_issue,
    peers_are_alive_while_they_beat,
    session_requests_are_claimed_oldest_first_among_the_claimants_agents,
    a_claimant_holds_at_most_its_capacity_until_a_session_ends,
    retention_removes_only_the_session_requests_that_ended_before_the_cut,
    an_issues_next_session_waits_until_its_previous_one_ended_or_fell_silent,
    reports_answer_the_commands_after_the_last_seen_and_whether_to_stop,
    cancelling_every_request_spares_the_ended_and_the_cancelled,
    the_leader_sees_a_requests_claimant_state_and_silence,
    a_restarted_claimant_finds_the_sessions_its_previous_process_left,
    health_check_writes,
    write_outcomes_follow_the_writes,
    time_survives_with_microsecond_precision,
);

/// The list above must stay SQLite's list: a check added there and forgotten here fails this.
#[test]
fn runs_every_check_the_sqlite_backend_runs() {
    let sqlite = include_str!("../../mosaic-store-sqlite/tests/sqlite.rs");
    let call = "conformance_tests!(fresh();";
    let start = sqlite
        .find(call)
        .expect("sqlite.rs calls conformance_tests!")
        + call.len();
    let rest = &sqlite[start..];
    let list = &rest[..rest.find(");").unwrap()];
    let sqlite_checks: Vec<&str> = list
        .split(',')
        .map(str::trim)
        .filter(|name| !name.is_empty())
        .collect();
    assert_eq!(CHECKS, sqlite_checks.as_slice());
}

/// Acknowledged means durable: a delivery recorded and acknowledged is there for a new pool
/// (new connections, nothing cached) once the first store is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acknowledged_delivery_survives_reopening() {
    let Some(schema) = Schema::create().await else {
        return;
    };
    let body = include_bytes!("../../../tests/fixtures/gitea/issue-assign-event.json");
    let mut delivery = conformance::delivery(Some("durable"), "durable", conformance::at(0));
    delivery.body = body.to_vec();
    let store = schema.open().await;
    let RecordOutcome::Recorded { id } = store.record_delivery(delivery).await.unwrap() else {
        panic!("a new delivery");
    };
    let other = conformance::delivery(Some("done"), "done", conformance::at(1));
    let RecordOutcome::Recorded { id: done } = store.record_delivery(other).await.unwrap() else {
        panic!("a new delivery");
    };
    store.mark_processed(done).await.unwrap();
    drop(store);

    let reopened = schema.open().await;
    let pending = reopened
        .pending_deliveries(conformance::at(10), 10)
        .await
        .unwrap();
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0].id, id);
    assert_eq!(pending[0].body, body, "the body comes back byte for byte");
    let counts = reopened.delivery_counts().await.unwrap();
    assert_eq!((counts.pending, counts.processed), (1, 1));

    // Stored compressed, like SQLite stores it.
    let codec: String = schema
        .outside()
        .await
        .query_one("SELECT body_codec FROM inbox WHERE id = $1", &[&id])
        .await
        .unwrap()
        .get(0);
    assert_eq!(codec, "lz4");
}

/// A server (or role, or URL) set to acknowledge commits before they are on disk is refused:
/// acknowledged must mean durable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_without_durable_commits_is_refused() {
    let Some(schema) = Schema::create().await else {
        return;
    };
    let mut url = server_url();
    url.push(if url.contains('?') { '&' } else { '?' });
    url.push_str("options=-c%20synchronous_commit%3Doff");
    let refused = PostgresStore::connect(&url, schema.options()).await;
    assert!(
        matches!(&refused, Err(StoreError::InvalidConfig(m)) if m.contains("synchronous_commit")),
        "{refused:?}"
    );
}

/// Several coordinators starting at once against one schema: all of them come up, the
/// migrations are applied once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stores_migrating_one_schema_at_once_all_succeed() {
    let Some(schema) = Schema::create().await else {
        return;
    };
    let opens = (0..4).map(|_| {
        let options = schema.options();
        tokio::spawn(async move { PostgresStore::connect(&server_url(), options).await })
    });
    let stores: Vec<PostgresStore> = futures::future::join_all(opens)
        .await
        .into_iter()
        .map(|opened| opened.unwrap().unwrap())
        .collect();
    let applied: i64 = schema
        .outside()
        .await
        .query_one("SELECT COUNT(*) FROM schema_migrations", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(applied, mosaic_store_postgres::schema_version());
    for store in &stores {
        store.health_check().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schema_newer_than_this_build_is_refused() {
    let Some(schema) = Schema::create().await else {
        return;
    };
    drop(schema.open().await);
    schema
        .outside()
        .await
        .batch_execute("INSERT INTO schema_migrations VALUES (999, 'future', now())")
        .await
        .unwrap();
    let refused = PostgresStore::connect(&server_url(), schema.options()).await;
    assert!(
        matches!(refused, Err(StoreError::SchemaTooNew { found: 999, .. })),
        "{refused:?}"
    );
}

/// Many webhooks carrying the same delivery at once (Gitea retrying while the first attempt
/// is still being written): exactly one row is recorded, every other attempt is a duplicate
/// of it; the same body under new ids at once: one original, the rest possible replays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_recordings_of_one_delivery_record_it_once() {
    let Some((_schema, store)) = fresh().await else {
        return;
    };
    let same_id = (0..16).map(|n| {
        let store = Arc::clone(&store);
        tokio::spawn(async move {
            let delivery =
                conformance::delivery(Some("retried"), &format!("body {n}"), conformance::at(n));
            store.record_delivery(delivery).await.unwrap()
        })
    });
    let outcomes: Vec<RecordOutcome> = futures::future::join_all(same_id)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    let recorded: Vec<_> = outcomes
        .iter()
        .filter_map(|outcome| match outcome {
            RecordOutcome::Recorded { id } => Some(*id),
            _ => None,
        })
        .collect();
    assert_eq!(recorded.len(), 1, "{outcomes:?}");
    assert!(outcomes.iter().all(|outcome| match outcome {
        RecordOutcome::Recorded { .. } => true,
        RecordOutcome::Duplicate { existing_id } => *existing_id == recorded[0],
        RecordOutcome::PossibleReplay { .. } => false,
    }));

    let same_body = (0..16).map(|n| {
        let store = Arc::clone(&store);
        tokio::spawn(async move {
            let delivery =
                conformance::delivery(Some(&format!("id {n}")), "one body", conformance::at(n));
            store.record_delivery(delivery).await.unwrap()
        })
    });
    let outcomes: Vec<RecordOutcome> = futures::future::join_all(same_body)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    let originals: Vec<_> = outcomes
        .iter()
        .filter_map(|outcome| match outcome {
            RecordOutcome::Recorded { id } => Some(*id),
            _ => None,
        })
        .collect();
    assert_eq!(originals.len(), 1, "{outcomes:?}");
    assert!(outcomes.iter().all(|outcome| match outcome {
        RecordOutcome::Recorded { .. } => true,
        RecordOutcome::PossibleReplay { replay_of, .. } => *replay_of == originals[0],
        RecordOutcome::Duplicate { .. } => false,
    }));

    // One replayed body arriving several times at once under one new id: one possible
    // replay, the other attempts duplicates of it.
    let replayed_together = (0..16).map(|n| {
        let store = Arc::clone(&store);
        tokio::spawn(async move {
            let delivery = conformance::delivery(Some("replayed"), "one body", conformance::at(n));
            store.record_delivery(delivery).await.unwrap()
        })
    });
    let outcomes: Vec<RecordOutcome> = futures::future::join_all(replayed_together)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    let replays: Vec<_> = outcomes
        .iter()
        .filter_map(|outcome| match outcome {
            RecordOutcome::PossibleReplay { id, replay_of } => {
                assert_eq!(*replay_of, originals[0]);
                Some(*id)
            }
            _ => None,
        })
        .collect();
    assert_eq!(replays.len(), 1, "{outcomes:?}");
    assert!(outcomes.iter().all(|outcome| match outcome {
        RecordOutcome::PossibleReplay { .. } => true,
        RecordOutcome::Duplicate { existing_id } => *existing_id == replays[0],
        RecordOutcome::Recorded { .. } => false,
    }));

    let counts = store.delivery_counts().await.unwrap();
    assert_eq!((counts.pending, counts.duplicate), (1 + 16 + 1, 15 + 15));
}

/// Two workers moving one issue from the same state at once: one wins, the other is told the
/// state changed under it (no lost update), also for an issue not stored yet.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_transitions_of_one_issue_do_not_lose_updates() {
    let Some((_schema, store)) = fresh().await else {
        return;
    };
    let key = conformance::issue("o/r#1");
    for (from, to) in [
        (None, IssueState::Pending),
        (Some(IssueState::Pending), IssueState::Ready),
    ] {
        let attempts = (0..8).map(|n| {
            let store = Arc::clone(&store);
            let key = key.clone();
            tokio::spawn(async move {
                let record = IssueRecord::new(key, to, conformance::at(n));
                let batch = TransitionBatch {
                    transition: Some(StateTransition {
                        from,
                        to,
                        cause: format!("worker {n}"),
                        at: conformance::at(n),
                    }),
                    ..TransitionBatch::update(record)
                };
                store.commit_transitions(vec![batch]).await
            })
        });
        let results: Vec<_> = futures::future::join_all(attempts)
            .await
            .into_iter()
            .map(Result::unwrap)
            .collect();
        assert_eq!(
            results.iter().filter(|r| r.is_ok()).count(),
            1,
            "{results:?}"
        );
        assert!(
            results
                .iter()
                .all(|r| r.is_ok() || matches!(r, Err(StoreError::Conflict(_))))
        );
    }
    assert_eq!(store.issue_history(&key).await.unwrap().len(), 2);
}

/// A recovery settles every waiting issue in one transaction (25,500 in the recovery benchmark):
/// a batch of more issues than PostgreSQL's lock table holds (`max_locks_per_transaction` ×
/// connections, 6,400 by default, plus spare shared memory: 12,000 advisory locks fit on the
/// test server, 15,000 did not; one lock per issue ran out of it, "out of shared memory")
/// commits, and a small writer racing it for one of its issues still cannot interleave with it
/// (exactly one of the two wins).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_of_more_issues_than_the_lock_table_holds_commits() {
    let Some((_schema, store)) = fresh().await else {
        return;
    };
    let large: Vec<TransitionBatch> = (1..=20_000)
        .flat_map(|n| step(&format!("o/r#{n}"), None, IssueState::Pending, "large"))
        .collect();
    let racing = {
        let store = Arc::clone(&store);
        tokio::spawn(async move {
            store
                .commit_transitions(step("o/r#10000", None, IssueState::Pending, "small"))
                .await
        })
    };
    let large = store.commit_transitions(large).await;
    let small = racing.await.unwrap();
    assert!(
        large.is_ok() != small.is_ok(),
        "large: {large:?}, small: {small:?}"
    );
    let large_won = large.is_ok();
    let failed = if large_won { small } else { large };
    assert!(matches!(failed, Err(StoreError::Conflict(_))), "{failed:?}");
    let stored = store.list_issues(&[]).await.unwrap().len();
    assert_eq!(stored, if large_won { 20_000 } else { 1 });
}

/// An inbox that refuses inserts (as a damaged table would) while the rest still works: the
/// failure is a storage failure, shows in the write outcomes and fails the health check, which
/// passes again once writes do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_health_check_fails_while_deliveries_cannot_be_recorded() {
    let Some(schema) = Schema::create().await else {
        return;
    };
    let store = schema.open().await;
    store.health_check().await.unwrap();

    let outside = schema.outside().await;
    outside
        .batch_execute(
            "CREATE FUNCTION inbox_broken() RETURNS trigger LANGUAGE plpgsql AS
                 $$ BEGIN RAISE EXCEPTION 'simulated inbox failure'; END $$;
             CREATE TRIGGER inbox_broken BEFORE INSERT ON inbox
                 FOR EACH ROW EXECUTE FUNCTION inbox_broken();",
        )
        .await
        .unwrap();
    let delivery = conformance::delivery(Some("refused"), "refused", conformance::at(0));
    let refused = store.record_delivery(delivery.clone()).await.unwrap_err();
    assert!(refused.is_storage_failure(), "{refused}");
    let failure = store
        .write_outcomes()
        .last_failure
        .expect("the failure is noted");
    assert!(
        failure.error.contains("simulated inbox failure"),
        "{failure:?}"
    );
    let err = store.health_check().await.unwrap_err();
    assert!(err.to_string().contains("simulated inbox failure"), "{err}");

    outside
        .batch_execute("DROP TRIGGER inbox_broken ON inbox")
        .await
        .unwrap();
    store.health_check().await.unwrap();
    let outcomes = store.write_outcomes();
    assert!(outcomes.last_success.unwrap() > failure.at);
    store.record_delivery(delivery).await.unwrap();
}

/// Acknowledged means durable through a server crash: deliveries are recorded by concurrent
/// writers while the server is killed without a checkpoint (`-m immediate`: it recovers from
/// its WAL at start); every delivery acknowledged before the crash is there afterwards.
/// It stops the server, so it runs only when asked:
/// `MOSAIC_TEST_POSTGRES_CRASH="pg_ctlcluster 15 main stop -m immediate"
/// MOSAIC_TEST_POSTGRES_START="pg_ctlcluster 15 main start"
/// cargo test -p mosaic-store-postgres --test postgres -- --ignored`
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "stops the PostgreSQL server; see the comment for how to run it"]
async fn acknowledged_deliveries_survive_a_server_crash() {
    let (Ok(crash), Ok(start)) = (
        std::env::var("MOSAIC_TEST_POSTGRES_CRASH"),
        std::env::var("MOSAIC_TEST_POSTGRES_START"),
    ) else {
        println!("skipped: set MOSAIC_TEST_POSTGRES_CRASH and MOSAIC_TEST_POSTGRES_START");
        return;
    };
    let run = |command: &str| {
        let status = std::process::Command::new("sh")
            .args(["-c", command])
            .status()
            .unwrap();
        assert!(status.success(), "`{command}` failed: {status}");
    };
    let Some(schema) = Schema::create().await else {
        return;
    };
    let store = Arc::new(schema.open().await);
    let acknowledged = Arc::new(std::sync::Mutex::new(Vec::new()));
    let writers: Vec<_> = (0..16)
        .map(|writer| {
            let store = Arc::clone(&store);
            let acknowledged = Arc::clone(&acknowledged);
            tokio::spawn(async move {
                for n in 0.. {
                    let name = format!("w{writer}-{n}");
                    let delivery = conformance::delivery(Some(&name), &name, conformance::at(0));
                    match store.record_delivery(delivery).await {
                        Ok(RecordOutcome::Recorded { id }) => acknowledged.lock().unwrap().push(id),
                        Ok(other) => panic!("{other:?}"),
                        // The server is gone: what was acknowledged so far must survive.
                        Err(_) => break,
                    }
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    run(&crash);
    for writer in writers {
        writer.await.unwrap();
    }
    drop(store);
    run(&start);
    let acknowledged = acknowledged.lock().unwrap().clone();
    assert!(acknowledged.len() > 100, "{} writes", acknowledged.len());

    let mut reopened = None;
    for _ in 0..60 {
        match PostgresStore::connect(&server_url(), schema.options()).await {
            Ok(store) => {
                reopened = Some(store);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    }
    let reopened = reopened.expect("the server came back");
    let stored: std::collections::HashSet<DeliveryRowId> = reopened
        .pending_deliveries(conformance::at(10), u32::MAX)
        .await
        .unwrap()
        .into_iter()
        .map(|delivery| delivery.id)
        .collect();
    let lost: Vec<_> = acknowledged
        .iter()
        .filter(|id| !stored.contains(id))
        .collect();
    println!(
        "{} acknowledged before the crash, {} stored after it",
        acknowledged.len(),
        stored.len()
    );
    assert!(
        lost.is_empty(),
        "{} acknowledged deliveries lost",
        lost.len()
    );
}

/// Two coordinators claiming at once from one schema, each from several tasks: no request is
/// claimed twice, and neither holds more than its capacity; together they take them all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_claimants_never_share_a_request_nor_pass_their_capacity() {
    let Some(schema) = Schema::create().await else {
        return;
    };
    let leader = schema.open().await;
    for n in 0..20 {
        leader
            .request_session(&SessionRequest {
                session_id: format!("s{n:02}"),
                issue: conformance::issue(&format!("acme/widgets#{}", n + 1)),
                agent: "claude".to_owned(),
                task_json: "{}".to_owned(),
            })
            .await
            .unwrap();
    }
    let stores = [Arc::new(schema.open().await), Arc::new(schema.open().await)];
    let claimants = ["a", "b"].map(|id| Peer {
        id: id.to_owned(),
        name: format!("host-{id}:8000"),
        leading: false,
        capacity: 10,
    });
    let agents = vec!["claude".to_owned()];
    // Four tasks per claimant, each claiming until it gets nothing.
    let tasks = (0..8).map(|n| {
        let store = Arc::clone(&stores[n % 2]);
        let claimant = claimants[n % 2].clone();
        let agents = agents.clone();
        tokio::spawn(async move {
            let mut claimed = Vec::new();
            while let Some(request) = store
                .claim_session(&claimant, &agents, std::time::Duration::from_secs(5))
                .await
                .unwrap()
            {
                claimed.push((claimant.id.clone(), request.session_id));
            }
            claimed
        })
    });
    let claims: Vec<(String, String)> = futures::future::join_all(tasks)
        .await
        .into_iter()
        .flat_map(Result::unwrap)
        .collect();
    let mut ids: Vec<&str> = claims.iter().map(|(_, id)| id.as_str()).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(
        ids.len(),
        claims.len(),
        "a request claimed twice: {claims:?}"
    );
    for claimant in ["a", "b"] {
        let held = claims.iter().filter(|(by, _)| by == claimant).count();
        assert_eq!(held, 10, "{claimant} holds {held}: {claims:?}");
    }
    // The store agrees with what the claimants were told.
    let all: Vec<String> = (0..20).map(|n| format!("s{n:02}")).collect();
    for view in leader.session_requests(&all).await.unwrap() {
        let told = claims.iter().find(|(_, id)| *id == view.session_id);
        assert_eq!(view.claimant.as_deref(), told.map(|(by, _)| by.as_str()));
    }
}

/// Two requests of one issue (a leader that moved on, or two leaders' worth) claimed at once by
/// two coordinators, many times over: never both — an issue has one live session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_claimants_never_take_two_sessions_of_one_issue() {
    let Some(schema) = Schema::create().await else {
        return;
    };
    let leader = schema.open().await;
    let stores = [Arc::new(schema.open().await), Arc::new(schema.open().await)];
    let claimants = ["a", "b"].map(|id| Peer {
        id: id.to_owned(),
        name: format!("host-{id}:8000"),
        leading: false,
        capacity: 100,
    });
    let agents = vec!["claude".to_owned()];
    for round in 0..40 {
        for copy in 0..2 {
            leader
                .request_session(&SessionRequest {
                    session_id: format!("r{round}-{copy}"),
                    issue: conformance::issue(&format!("acme/widgets#{}", round + 1)),
                    agent: "claude".to_owned(),
                    task_json: "{}".to_owned(),
                })
                .await
                .unwrap();
        }
        let claims = (0..2).map(|n| {
            let (store, claimant, agents) =
                (Arc::clone(&stores[n]), claimants[n].clone(), agents.clone());
            tokio::spawn(async move {
                store
                    .claim_session(&claimant, &agents, std::time::Duration::from_secs(5))
                    .await
                    .unwrap()
            })
        });
        let claimed: Vec<SessionRequest> = futures::future::join_all(claims)
            .await
            .into_iter()
            .filter_map(Result::unwrap)
            .collect();
        assert_eq!(claimed.len(), 1, "round {round}: {claimed:?}");
    }
}

/// Two coordinators on one schema: only one leads; a standby asking again keeps its one
/// connection; once the leader's connection is gone, the standby leads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_one_store_on_a_schema_leads_at_a_time() {
    let Some(schema) = Schema::create().await else {
        return;
    };
    let first = schema.open().await;
    let second = schema.open().await;
    assert!(first.try_lead().await.unwrap());
    assert!(first.still_leading().await.unwrap());
    for _ in 0..3 {
        assert!(!second.try_lead().await.unwrap(), "held by the first");
    }
    assert!(!second.still_leading().await.unwrap());
    let leadership_connections: i64 = schema
        .outside()
        .await
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'mosaic leader ' || $1",
            &[&schema.name],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(leadership_connections, 2, "one each, however often asked");
    drop(first);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !second.try_lead().await.unwrap() {
        assert!(std::time::Instant::now() < deadline, "never took over");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(second.still_leading().await.unwrap());
}

/// A state change with its transition, as the engine writes one.
fn step(
    issue: &str,
    from: Option<IssueState>,
    to: IssueState,
    cause: &str,
) -> Vec<TransitionBatch> {
    let issue = conformance::issue(issue);
    let record = IssueRecord::new(issue, to, chrono::Utc::now());
    vec![TransitionBatch {
        transition: Some(StateTransition {
            from,
            to,
            cause: cause.to_owned(),
            at: chrono::Utc::now(),
        }),
        ..TransitionBatch::update(record)
    }]
}

/// The epoch each transition row was written in, by its cause.
async fn transition_epochs(schema: &Schema) -> Vec<(String, Option<i64>)> {
    schema
        .outside()
        .await
        .query(
            "SELECT cause, epoch FROM issue_transitions ORDER BY id",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect()
}

/// Fencing: once a leader's hold ends it writes nothing, before and after another leads; the
/// next leader begins a newer epoch, and the rows a leader writes carry its epoch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_whose_hold_ended_writes_nothing_and_the_next_leads_in_a_newer_epoch() {
    let Some(schema) = Schema::create().await else {
        return;
    };
    let first = schema.open().await;
    let second = schema.open().await;
    // A store that never led writes as before, without an epoch.
    second
        .commit_transitions(step("acme/widgets#1", None, IssueState::Pending, "standby"))
        .await
        .unwrap();
    assert!(first.try_lead().await.unwrap());
    let first_epoch = first.leader_epoch().unwrap();
    first
        .commit_transitions(step(
            "acme/widgets#1",
            Some(IssueState::Pending),
            IssueState::Ready,
            "leader one",
        ))
        .await
        .unwrap();

    // The leader's connection is cut (as when its lease ran out while it was paused).
    let terminated: i64 = schema
        .outside()
        .await
        .query_one(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = 'mosaic leader ' || $1",
            &[&schema.name],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(terminated, 1);
    // Terminating is a signal: the session (and its lock) ends a moment later. Until then the
    // leader still holds the lock and may write; nobody else can lead meanwhile.
    let outside = schema.outside().await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let sessions: i64 = outside
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'mosaic leader ' || $1",
                &[&schema.name],
            )
            .await
            .unwrap()
            .get(0);
        if sessions == 0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the session never ended"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Refused once its session ended, before anyone else leads: its lock is gone.
    let refused = first
        .commit_transitions(step(
            "acme/widgets#1",
            Some(IssueState::Ready),
            IssueState::InProgress,
            "stale",
        ))
        .await
        .unwrap_err();
    assert!(
        matches!(refused, StoreError::Fenced { held, .. } if held == first_epoch),
        "{refused}"
    );
    assert!(!refused.is_storage_failure());

    assert!(second.try_lead().await.unwrap());
    let second_epoch = second.leader_epoch().unwrap();
    assert_eq!(second_epoch, first_epoch + 1);
    let refused = first
        .commit_transitions(step(
            "acme/widgets#1",
            Some(IssueState::Ready),
            IssueState::InProgress,
            "stale again",
        ))
        .await
        .unwrap_err();
    assert!(
        matches!(refused, StoreError::Fenced { held, current: Some(current) } if held == first_epoch && current == second_epoch),
        "{refused}"
    );
    assert!(
        refused.to_string().contains("is the current one"),
        "{refused}"
    );
    // The deposed leader cannot ask for sessions either; the new one's request carries its
    // epoch.
    let request = |id: &str| SessionRequest {
        session_id: id.to_owned(),
        issue: conformance::issue("acme/widgets#1"),
        agent: "claude".to_owned(),
        task_json: "{}".to_owned(),
    };
    let refused = first.request_session(&request("stale")).await.unwrap_err();
    assert!(
        matches!(refused, StoreError::Fenced { held, .. } if held == first_epoch),
        "{refused}"
    );
    second.request_session(&request("current")).await.unwrap();
    let requests: Vec<(String, Option<i64>)> = schema
        .outside()
        .await
        .query("SELECT session_id, epoch FROM session_requests", &[])
        .await
        .unwrap()
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect();
    assert_eq!(requests, vec![("current".to_owned(), Some(second_epoch))]);
    second
        .commit_transitions(step(
            "acme/widgets#1",
            Some(IssueState::Ready),
            IssueState::InProgress,
            "leader two",
        ))
        .await
        .unwrap();

    assert_eq!(
        transition_epochs(&schema).await,
        vec![
            ("standby".to_owned(), None),
            ("leader one".to_owned(), Some(first_epoch)),
            ("leader two".to_owned(), Some(second_epoch)),
        ]
    );
}

/// The lease: a leader that keeps checking keeps the leadership; one that stops answering (a
/// paused process) loses it after the lease, another takes it, and the first writes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_that_stops_answering_loses_the_leadership_after_its_lease() {
    let Some(schema) = Schema::create().await else {
        return;
    };
    let options = PostgresOptions {
        leader_lease: Duration::from_secs(2),
        ..schema.options()
    };
    let first = PostgresStore::connect(&server_url(), options.clone())
        .await
        .unwrap();
    let second = PostgresStore::connect(&server_url(), options)
        .await
        .unwrap();
    assert!(first.try_lead().await.unwrap());
    // Checking every half second, past the lease: still the leader.
    for _ in 0..6 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(first.still_leading().await.unwrap());
        assert!(!second.try_lead().await.unwrap());
    }
    // Silent (as if SIGSTOPped): the server ends its hold after the lease.
    let silent = std::time::Instant::now();
    let deadline = silent + Duration::from_secs(10);
    while !second.try_lead().await.unwrap() {
        assert!(
            std::time::Instant::now() < deadline,
            "the lease never ran out"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let took = silent.elapsed();
    assert!(took >= Duration::from_millis(1_800), "taken after {took:?}");
    // Back from its pause: it leads no more and its writes are refused.
    assert!(!first.still_leading().await.unwrap());
    let refused = first
        .commit_transitions(step(
            "acme/widgets#2",
            None,
            IssueState::Ready,
            "paused leader",
        ))
        .await
        .unwrap_err();
    assert!(matches!(refused, StoreError::Fenced { .. }), "{refused}");
    second
        .commit_transitions(step(
            "acme/widgets#2",
            None,
            IssueState::Ready,
            "new leader",
        ))
        .await
        .unwrap();
}

#[tokio::test]
async fn a_lease_shorter_than_two_seconds_is_refused() {
    let Some(schema) = Schema::create().await else {
        return;
    };
    let options = PostgresOptions {
        leader_lease: Duration::from_millis(1_500),
        ..schema.options()
    };
    let err = PostgresStore::connect(&server_url(), options)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("at least 2 s"), "{err}");
}
