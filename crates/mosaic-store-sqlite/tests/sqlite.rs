#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]
//! The SQLite backend: the shared conformance suite, plus what only this backend has
//! (files, migrations, group commit, crash durability).

#[path = "../../mosaic-store/tests/conformance/mod.rs"]
mod conformance;

use std::sync::Arc;

use mosaic_store::{Store, StoreConfig};
use mosaic_store_sqlite::SqliteStore;
use tempfile::TempDir;

async fn fresh() -> (TempDir, Arc<dyn Store>) {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&StoreConfig::sqlite(dir.path().join("mosaic.db"))).unwrap();
    (dir, Arc::new(store))
}

conformance_tests!(fresh();
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

/// A store whose inbox refuses inserts (as a damaged table would) while the rest still works:
/// the health check must fail exactly like a webhook's write, and pass again once writes do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_health_check_fails_while_deliveries_cannot_be_recorded() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mosaic.db");
    let store = SqliteStore::open(&StoreConfig::sqlite(&path)).unwrap();
    store.health_check().await.unwrap();

    let outside = rusqlite::Connection::open(&path).unwrap();
    outside
        .execute_batch(
            "CREATE TRIGGER inbox_broken BEFORE INSERT ON inbox \
             BEGIN SELECT RAISE(ABORT, 'simulated inbox failure'); END;",
        )
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

    outside.execute_batch("DROP TRIGGER inbox_broken").unwrap();
    store.health_check().await.unwrap();
    let outcomes = store.write_outcomes();
    assert!(outcomes.last_success.unwrap() > failure.at);
    store.record_delivery(delivery).await.unwrap();
}
