//! Embedded, versioned schema migrations, applied at connect.

use deadpool_postgres::Object;
use mosaic_store::StoreError;

use crate::failure::describe;

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
        name: "session_cache_tokens",
        sql: include_str!("../migrations/0002_session_cache_tokens.sql"),
    },
    Migration {
        version: 3,
        name: "outbox_by_issue",
        sql: include_str!("../migrations/0003_outbox_by_issue.sql"),
    },
    Migration {
        version: 4,
        name: "workspaces",
        sql: include_str!("../migrations/0004_workspaces.sql"),
    },
    Migration {
        version: 5,
        name: "gate_runs",
        sql: include_str!("../migrations/0005_gate_runs.sql"),
    },
    Migration {
        version: 6,
        name: "leader_epoch",
        sql: include_str!("../migrations/0006_leader_epoch.sql"),
    },
    Migration {
        version: 7,
        name: "peers",
        sql: include_str!("../migrations/0007_peers.sql"),
    },
    Migration {
        version: 8,
        name: "snapshot_comments",
        sql: include_str!("../migrations/0008_snapshot_comments.sql"),
    },
    Migration {
        version: 9,
        name: "session_requests",
        sql: include_str!("../migrations/0009_session_requests.sql"),
    },
];

/// The newest schema version this build knows (also the version a fresh database gets).
pub fn supported_version() -> i64 {
    MIGRATIONS.last().map_or(0, |migration| migration.version)
}

fn failed(what: &str, error: &tokio_postgres::Error) -> StoreError {
    StoreError::CommitFailed(format!("{what}: {}", describe(error)))
}

/// Brings the schema up to [`supported_version`] in one transaction; refuses a newer schema.
///
/// Several coordinators may start at once against one database: a transaction-scoped advisory
/// lock, keyed by the schema, makes them apply migrations one after the other (the second
/// finds them applied). `schema`, when given, is created first and must already be a valid
/// identifier.
pub(crate) async fn migrate(conn: &mut Object, schema: Option<&str>) -> Result<(), StoreError> {
    let tx = conn
        .transaction()
        .await
        .map_err(|e| failed("cannot begin the migration", &e))?;
    let lock_key = format!("mosaic-store migrations {}", schema.unwrap_or(""));
    tx.execute(
        "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))",
        &[&lock_key],
    )
    .await
    .map_err(|e| failed("cannot take the migration lock", &e))?;
    if let Some(schema) = schema {
        tx.batch_execute(&format!("CREATE SCHEMA IF NOT EXISTS \"{schema}\""))
            .await
            .map_err(|e| failed(&format!("cannot create schema {schema}"), &e))?;
    }
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations (
            version    BIGINT      PRIMARY KEY,
            name       TEXT        NOT NULL,
            applied_at TIMESTAMPTZ NOT NULL
        )",
    )
    .await
    .map_err(|e| failed("cannot create schema_migrations", &e))?;
    let current: i64 = tx
        .query_one(
            "SELECT COALESCE(MAX(version), 0) FROM schema_migrations",
            &[],
        )
        .await
        .and_then(|row| row.try_get(0))
        .map_err(|e| failed("cannot read schema_migrations", &e))?;
    let supported = supported_version();
    if current > supported {
        return Err(StoreError::SchemaTooNew {
            found: current,
            supported,
        });
    }
    for migration in MIGRATIONS.iter().filter(|m| m.version > current) {
        let what = || format!("migration {} ({})", migration.version, migration.name);
        tx.batch_execute(migration.sql)
            .await
            .map_err(|e| StoreError::Migration {
                version: migration.version,
                name: migration.name,
                source: describe(&e).into(),
            })?;
        tx.execute(
            "INSERT INTO schema_migrations (version, name, applied_at) VALUES ($1, $2, now())",
            &[&migration.version, &migration.name],
        )
        .await
        .map_err(|e| failed(&format!("cannot record {}", what()), &e))?;
        tracing::info!(
            version = migration.version,
            name = migration.name,
            "applied store migration"
        );
    }
    tx.commit()
        .await
        .map_err(|e| failed("cannot commit the migrations", &e))
}
