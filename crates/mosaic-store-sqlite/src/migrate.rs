//! Embedded, versioned schema migrations.

use rusqlite::{Connection, TransactionBehavior, params};

use mosaic_store::StoreError;

use crate::failure::Failure;

struct Migration {
    version: i64,
    name: &'static str,
    sql: &'static str,
}

/// In version order; a released migration is never edited, only followed by a new one.
const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "initial",
        sql: include_str!("../migrations/0001_initial.sql"),
    },
    Migration {
        version: 2,
        name: "body_codec",
        sql: include_str!("../migrations/0002_body_codec.sql"),
    },
    Migration {
        version: 3,
        name: "possible_replays",
        sql: include_str!("../migrations/0003_possible_replays.sql"),
    },
    Migration {
        version: 4,
        name: "session_cache_tokens",
        sql: include_str!("../migrations/0004_session_cache_tokens.sql"),
    },
    Migration {
        version: 5,
        name: "outbox_by_issue",
        sql: include_str!("../migrations/0005_outbox_by_issue.sql"),
    },
    Migration {
        version: 6,
        name: "workspaces",
        sql: include_str!("../migrations/0006_workspaces.sql"),
    },
    Migration {
        version: 7,
        name: "gate_runs",
        sql: include_str!("../migrations/0007_gate_runs.sql"),
    },
    Migration {
        version: 8,
        name: "peers",
        sql: include_str!("../migrations/0008_peers.sql"),
    },
    Migration {
        version: 9,
        name: "snapshot_comments",
        sql: include_str!("../migrations/0009_snapshot_comments.sql"),
    },
    Migration {
        version: 10,
        name: "session_requests",
        sql: include_str!("../migrations/0010_session_requests.sql"),
    },
];

/// The newest schema version this build knows (also the version a fresh database gets).
pub fn supported_version() -> i64 {
    MIGRATIONS.last().map_or(0, |migration| migration.version)
}

/// Brings the database up to [`supported_version`]; refuses a newer database.
pub(crate) fn migrate(conn: &mut Connection) -> Result<(), Failure> {
    // IMMEDIATE: two processes starting together must not both apply a migration.
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    tx.execute_batch(
        "CREATE TABLE IF NOT EXISTS schema_migrations (
            version    INTEGER PRIMARY KEY,
            name       TEXT    NOT NULL,
            applied_at INTEGER NOT NULL
        )",
    )?;
    let current: i64 = tx.query_row(
        "SELECT COALESCE(MAX(version), 0) FROM schema_migrations",
        [],
        |row| row.get(0),
    )?;
    let supported = supported_version();
    if current > supported {
        return Err(Failure::Store(StoreError::SchemaTooNew {
            found: current,
            supported,
        }));
    }
    let now = chrono::Utc::now().timestamp_micros();
    for migration in MIGRATIONS.iter().filter(|m| m.version > current) {
        tx.execute_batch(migration.sql)
            .map_err(|source| StoreError::Migration {
                version: migration.version,
                name: migration.name,
                source: Box::new(source),
            })?;
        tx.execute(
            "INSERT INTO schema_migrations (version, name, applied_at) VALUES (?1, ?2, ?3)",
            params![migration.version, migration.name, now],
        )?;
        tracing::info!(
            version = migration.version,
            name = migration.name,
            "applied store migration"
        );
    }
    tx.commit()?;
    Ok(())
}
