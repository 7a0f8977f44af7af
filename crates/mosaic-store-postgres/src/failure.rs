//! How the database's errors become [`StoreError`]s.
//!
//! A failed write is reported as [`StoreError::CommitFailed`] (more precise than the neutral
//! [`StoreError::Database`]: the transaction was rolled back, none of it took effect), a read
//! the server failed as [`StoreError::Database`], and a read that got no connection from the
//! pool as [`StoreError::ReaderFailed`]; each carries the server's message and SQLSTATE (the
//! bare `Display` of tokio-postgres's error says only "db error"). A unique violation is a
//! [`StoreError::Conflict`]: a concurrent writer took the key first.

use mosaic_store::StoreError;
use tokio_postgres::error::SqlState;

/// Why an operation failed, before it is known whether it was a read or a write.
#[derive(Debug)]
pub(crate) enum Failure {
    /// Refused by the store's own rules (conflict, not found, bad input, corrupt value).
    Store(StoreError),
    /// The database or the connection failed.
    Db(tokio_postgres::Error),
    /// No connection could be had from the pool.
    Pool(deadpool_postgres::PoolError),
}

impl From<StoreError> for Failure {
    fn from(error: StoreError) -> Self {
        Self::Store(error)
    }
}

impl From<tokio_postgres::Error> for Failure {
    fn from(error: tokio_postgres::Error) -> Self {
        Self::Db(error)
    }
}

impl From<deadpool_postgres::PoolError> for Failure {
    fn from(error: deadpool_postgres::PoolError) -> Self {
        Self::Pool(error)
    }
}

/// The server's message with its SQLSTATE, or the client's error with its cause (the bare
/// `Display` of a server error says only "db error").
pub(crate) fn describe(error: &tokio_postgres::Error) -> String {
    if let Some(db) = error.as_db_error() {
        return format!(
            "PostgreSQL {}: {} (SQLSTATE {})",
            db.severity(),
            db.message(),
            db.code().code()
        );
    }
    match std::error::Error::source(error) {
        Some(cause) => format!("{error}: {cause}"),
        None => error.to_string(),
    }
}

fn describe_pool(error: &deadpool_postgres::PoolError) -> String {
    match error {
        deadpool_postgres::PoolError::Backend(db) => {
            format!("no connection to PostgreSQL: {}", describe(db))
        }
        other => format!("no connection to PostgreSQL: {other}"),
    }
}

impl Failure {
    /// As the result of a write (everything in its transaction was rolled back).
    pub(crate) fn in_write(self) -> StoreError {
        match self {
            Self::Store(error) => error,
            Self::Db(error) if error.code() == Some(&SqlState::UNIQUE_VIOLATION) => {
                StoreError::Conflict(describe(&error))
            }
            Self::Db(error) => StoreError::CommitFailed(describe(&error)),
            Self::Pool(error) => StoreError::CommitFailed(describe_pool(&error)),
        }
    }

    /// As the result of a read.
    pub(crate) fn in_read(self) -> StoreError {
        match self {
            Self::Store(error) => error,
            Self::Db(error) => StoreError::Database(describe(&error).into()),
            Self::Pool(error) => StoreError::ReaderFailed(describe_pool(&error)),
        }
    }
}
