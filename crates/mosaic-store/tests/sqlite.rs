#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]
//! The SQLite backend: the shared conformance suite, plus what only this backend has
//! (files, migrations, group commit, crash durability).

mod conformance;

use std::sync::Arc;

use mosaic_store::sqlite::SqliteStore;
use mosaic_store::{Store, StoreConfig};
use tempfile::TempDir;

async fn fresh() -> (TempDir, Arc<dyn Store>) {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&StoreConfig::sqlite(dir.path().join("mosaic.db"))).unwrap();
    (dir, Arc::new(store))
}

conformance_tests!(fresh();
    inbox_records_in_increasing_order_and_lists_pending_oldest_first,
    inbox_dedupes_by_delivery_id,
    inbox_dedupes_by_body_hash_under_a_new_id,
    inbox_ignored_deliveries_are_kept_but_never_pending,
    inbox_failed_attempts_back_off_then_die,
    inbox_status_changes_are_checked,
    snapshots_are_idempotent_and_never_go_back_in_time,
    snapshot_summaries_match_the_stored_snapshots,
    completing_a_delivery_writes_effects_and_status_together,
    a_failed_completion_leaves_the_delivery_pending_and_writes_nothing,
    transitions_store_record_history_edges_and_outbox_atomically,
    several_batches_commit_all_or_nothing,
    updates_without_a_transition_keep_history_and_accumulate_nothing_implicitly,
    outbox_delivers_in_order_per_issue,
    outbox_idempotency_keys_enqueue_once,
    sessions_start_and_end_with_their_issue,
    rotations_and_compactions_round_trip,
    parse_cache_stores_json_by_key,
    llm_usage_is_summed_per_provider_and_model,
    health_check_writes,
    time_survives_with_microsecond_precision,
);
