#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]
//! What only the SQLite backend has: files, migrations, configuration, group commit.

#[path = "../../mosaic-store/tests/conformance/mod.rs"]
mod conformance;

use std::sync::Arc;

use conformance::{at, delivery};
use mosaic_store::{RecordOutcome, Store, StoreConfig, StoreError, Synchronous};
use mosaic_store_sqlite::{SqliteStore, schema_version};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writes_are_committed_in_groups() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SqliteStore::open(&StoreConfig::sqlite(dir.path().join("g.db"))).unwrap());
    let requests = 400;
    let results = futures::future::join_all((0..requests).map(|n| {
        let store = Arc::clone(&store);
        tokio::spawn(async move {
            store
                .record_delivery(delivery(
                    Some(&format!("id-{n}")),
                    &format!("body-{n}"),
                    at(n),
                ))
                .await
        })
    }))
    .await;
    let mut ids: Vec<i64> = results
        .into_iter()
        .map(|r| match r.unwrap().unwrap() {
            RecordOutcome::Recorded { id } => id,
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), requests as usize);

    let stats = store.stats();
    println!(
        "group commit: {} writes in {} commits",
        stats.writes, stats.commits
    );
    assert_eq!(stats.writes, requests as u64);
    // One fsync per group: far fewer commits than writes when callers arrive together.
    assert!(
        stats.commits * 2 < stats.writes,
        "expected batching, got {stats:?}"
    );
    assert_eq!(
        store.delivery_counts().await.unwrap().pending,
        requests as u64
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_batch_bounds_a_group() {
    let dir = tempfile::tempdir().unwrap();
    let config = StoreConfig {
        max_batch: 1,
        ..StoreConfig::sqlite(dir.path().join("b.db"))
    };
    let store = Arc::new(SqliteStore::open(&config).unwrap());
    futures::future::join_all((0..50).map(|n| {
        let store = Arc::clone(&store);
        tokio::spawn(async move { store.cache_put(&format!("k{n}"), "1").await.unwrap() })
    }))
    .await;
    assert_eq!(store.stats().commits, 50);
}

#[tokio::test]
async fn data_survives_reopening_and_parent_directories_are_created() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nested/deeper/mosaic.db");
    let config = StoreConfig {
        synchronous: Synchronous::Normal,
        ..StoreConfig::sqlite(&path)
    };
    {
        let store = SqliteStore::open(&config).unwrap();
        assert_eq!(store.path(), path);
        store
            .record_delivery(delivery(Some("kept"), "kept", at(0)))
            .await
            .unwrap();
    }
    let store = SqliteStore::open(&config).unwrap();
    let pending = store.pending_deliveries(at(10), 10).await.unwrap();
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0].delivery_id.as_deref(), Some("kept"));
    // The same delivery after a restart is still a duplicate.
    assert!(matches!(
        store
            .record_delivery(delivery(Some("kept"), "kept", at(1)))
            .await
            .unwrap(),
        RecordOutcome::Duplicate { .. }
    ));
}

#[test]
fn the_database_is_in_wal_mode_with_the_configured_durability() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("wal.db");
    drop(SqliteStore::open(&StoreConfig::sqlite(&path)).unwrap());
    let conn = rusqlite::Connection::open(&path).unwrap();
    let mode: String = conn
        .query_row("PRAGMA journal_mode", [], |row| row.get(0))
        .unwrap();
    assert_eq!(mode, "wal");
    let version: i64 = conn
        .query_row("SELECT MAX(version) FROM schema_migrations", [], |row| {
            row.get(0)
        })
        .unwrap();
    assert_eq!(version, schema_version());
}

/// The outbox worker reads an issue's rows for every status and label write: by index, not by
/// scanning every row ever queued.
#[test]
fn an_issues_outbox_rows_are_found_by_index() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("plan.db");
    drop(SqliteStore::open(&StoreConfig::sqlite(&path)).unwrap());
    let conn = rusqlite::Connection::open(&path).unwrap();
    let plan: Vec<String> = conn
        .prepare(
            "EXPLAIN QUERY PLAN SELECT id FROM outbox WHERE repository = ?1 AND number = ?2 \
             ORDER BY id",
        )
        .unwrap()
        .query_map(["o/r", "1"], |row| row.get::<_, String>(3))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert!(
        plan.iter().any(|step| step.contains("outbox_by_issue")),
        "{plan:?}"
    );
}

const FIXTURE: &str = include_str!("../../../tests/fixtures/gitea/issue-assign-event.json");

/// Bodies are stored compressed (less to write, sync and keep) and read back byte for byte;
/// rows written before compression (schema 1) read back as they are.
#[tokio::test]
async fn bodies_are_stored_compressed_and_rows_from_schema_1_still_read() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("codec.db");
    // A schema-1 database holding one body as received.
    {
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute_batch(include_str!("../migrations/0001_initial.sql"))
            .unwrap();
        conn.execute_batch(
            "CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL,
                 applied_at INTEGER NOT NULL);
             INSERT INTO schema_migrations VALUES (1, 'initial', 0);",
        )
        .unwrap();
        conn.execute(
            "INSERT INTO inbox (delivery_id, event, body_sha256, body, status, received_at,
                 next_attempt_at) VALUES ('old', 'issues', zeroblob(32), ?1, 'pending', 0, 0)",
            [FIXTURE.as_bytes()],
        )
        .unwrap();
    }

    let store = SqliteStore::open(&StoreConfig::sqlite(&path)).unwrap();
    let fresh = delivery(Some("new"), FIXTURE, at(1));
    assert!(matches!(
        store.record_delivery(fresh).await.unwrap(),
        RecordOutcome::Recorded { .. }
    ));
    let pending = store.pending_deliveries(at(10), 10).await.unwrap();
    let bodies: Vec<(Option<&str>, &[u8])> = pending
        .iter()
        .map(|d| (d.delivery_id.as_deref(), d.body.as_slice()))
        .collect();
    assert_eq!(
        bodies,
        [
            (Some("old"), FIXTURE.as_bytes()),
            (Some("new"), FIXTURE.as_bytes())
        ]
    );
    drop(store);

    let conn = rusqlite::Connection::open(&path).unwrap();
    let stored: Vec<(String, String, usize)> = conn
        .prepare("SELECT delivery_id, body_codec, length(body) FROM inbox ORDER BY id")
        .unwrap()
        .query_map([], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(
        stored[0],
        ("old".to_owned(), "identity".to_owned(), FIXTURE.len())
    );
    assert_eq!((stored[1].0.as_str(), stored[1].1.as_str()), ("new", "lz4"));
    assert!(
        stored[1].2 * 2 < FIXTURE.len(),
        "{} bytes stored for {}",
        stored[1].2,
        FIXTURE.len()
    );
}

#[test]
fn a_newer_schema_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("new.db");
    drop(SqliteStore::open(&StoreConfig::sqlite(&path)).unwrap());
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.execute(
        "INSERT INTO schema_migrations (version, name, applied_at) VALUES (?1, 'future', 0)",
        [schema_version() + 1],
    )
    .unwrap();
    drop(conn);
    let error = SqliteStore::open(&StoreConfig::sqlite(&path)).unwrap_err();
    assert!(
        matches!(error, StoreError::SchemaTooNew { found, supported }
            if found == schema_version() + 1 && supported == schema_version()),
        "{error}"
    );
    assert!(error.to_string().contains("newer than this build supports"));
}

#[test]
fn bad_configuration_is_a_clear_error() {
    let check = |config: StoreConfig, expect: &str| {
        let error = SqliteStore::open(&config).unwrap_err();
        assert!(error.to_string().contains(expect), "{error}");
    };
    check(
        StoreConfig {
            url: "postgres://localhost/mosaic".to_owned(),
            ..StoreConfig::default()
        },
        "unsupported store URL",
    );
    check(
        StoreConfig {
            max_batch: 0,
            ..StoreConfig::default()
        },
        "max_batch",
    );
    check(
        StoreConfig {
            read_connections: 0,
            ..StoreConfig::default()
        },
        "read_connections",
    );
    let file = tempfile::NamedTempFile::new().unwrap();
    // A regular file where a directory should be.
    check(
        StoreConfig::sqlite(file.path().join("sub/mosaic.db")),
        "cannot create the store directory",
    );
}

#[test]
fn configuration_loads_from_a_store_section() {
    #[derive(serde::Deserialize)]
    struct File {
        store: StoreConfig,
    }
    let file: File = toml::from_str(
        r#"
        [store]
        url = "sqlite:///var/lib/mosaic/mosaic.db"
        synchronous = "normal"
        max_batch = 64
        "#,
    )
    .unwrap();
    assert_eq!(
        file.store,
        StoreConfig {
            url: "sqlite:///var/lib/mosaic/mosaic.db".to_owned(),
            synchronous: Synchronous::Normal,
            max_batch: 64,
            ..StoreConfig::default()
        }
    );
    assert!(toml::from_str::<File>("[store]\nsynchronous = \"off\"").is_err());
    assert!(toml::from_str::<File>("[store]\nmax_batches = 3").is_err());
}

/// Two coordinators on one SQLite file: only one leads, until it is gone.
#[tokio::test]
async fn only_one_store_on_a_file_leads_at_a_time() {
    let dir = tempfile::tempdir().unwrap();
    let config = StoreConfig::sqlite(dir.path().join("mosaic.db"));
    let first = SqliteStore::open(&config).unwrap();
    let second = SqliteStore::open(&config).unwrap();
    assert!(!second.still_leading().await.unwrap());
    assert!(first.try_lead().await.unwrap());
    assert!(first.try_lead().await.unwrap(), "asking again keeps it");
    assert!(first.still_leading().await.unwrap());
    assert!(!second.try_lead().await.unwrap(), "held by the first");
    drop(first);
    assert!(
        second.try_lead().await.unwrap(),
        "free once the first is gone"
    );
}
