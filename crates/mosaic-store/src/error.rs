//! Typed store errors, the same for every backend: a backend turns its driver's errors into
//! [`StoreError::Database`] or [`StoreError::Driver`], keeping the driver's error as the source.

/// A database driver's own error, kept as the source of a [`StoreError`].
pub type DriverError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The configured URL names a backend this build does not have, or is malformed.
    #[error("unsupported store URL `{0}`: expected sqlite://PATH or a file path")]
    UnsupportedUrl(String),
    #[error("invalid store configuration: {0}")]
    InvalidConfig(String),
    #[error("cannot create the store directory {path}: {source}")]
    CreateDir {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// The database was written by a newer coordinator; refusing to touch it.
    #[error(
        "database schema version {found} is newer than this build supports ({supported}); upgrade the coordinator"
    )]
    SchemaTooNew { found: i64, supported: i64 },
    #[error("migration {version} ({name}) failed: {source}")]
    Migration {
        version: i64,
        name: &'static str,
        #[source]
        source: DriverError,
    },
    /// A referenced row does not exist.
    #[error("{what} not found")]
    NotFound { what: String },
    /// The row exists but is not in a state that allows the operation.
    #[error("conflict: {0}")]
    Conflict(String),
    /// A value the caller passed cannot be stored as given.
    #[error("invalid input: {0}")]
    InvalidInput(String),
    /// A stored value could not be read back (corruption or a foreign writer).
    #[error("corrupt stored value in {column}: {reason}")]
    Corrupt {
        column: &'static str,
        reason: String,
    },
    /// The database failed the operation (I/O, corruption, a full disk, a lock, a constraint).
    #[error("database error: {0}")]
    Database(#[source] DriverError),
    /// The database client refused a statement or a value before the database failed anything
    /// (the code and the schema disagree); not a storage failure.
    #[error("database client error: {0}")]
    Driver(#[source] DriverError),
    /// The group transaction could not be committed; none of its writes took effect.
    #[error("commit failed: {0}")]
    CommitFailed(String),
    /// The writer thread is gone (the store was closed or the thread failed).
    #[error("the store's writer has stopped")]
    WriterStopped,
    #[error("a store reader task failed: {0}")]
    ReaderFailed(String),
    /// The database cannot be reached (a connection of its own, such as the leadership's).
    #[error("database unavailable: {0}")]
    Unavailable(String),
    /// A write of a coordinator that led, refused because it leads no more: another holds a
    /// newer epoch, or its own hold on the leadership ended (a lease that ran out while it was
    /// paused). Nothing of the write took effect; the coordinator must stop deciding.
    #[error(
        "fenced: this coordinator led epoch {held}, but {}; the write was refused",
        match current {
            Some(current) if current != held => format!("epoch {current} is the current one"),
            _ => "its hold on the leadership has ended".to_owned(),
        }
    )]
    Fenced { held: i64, current: Option<i64> },
}

impl StoreError {
    /// [`StoreError::NotFound`], for backends.
    pub fn not_found(what: impl Into<String>) -> Self {
        Self::NotFound { what: what.into() }
    }

    /// Whether the database failed (I/O, corruption, a full disk, a refused commit), as opposed
    /// to the caller asking for something it cannot have (not found, conflict, bad input).
    pub fn is_storage_failure(&self) -> bool {
        matches!(
            self,
            Self::Database(_)
                | Self::Corrupt { .. }
                | Self::CommitFailed(_)
                | Self::WriterStopped
                | Self::Unavailable(_)
        )
    }

    /// [`StoreError::Corrupt`], for backends.
    pub fn corrupt(column: &'static str, reason: impl Into<String>) -> Self {
        Self::Corrupt {
            column,
            reason: reason.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_failures_of_the_database_are_storage_failures() {
        let failing = [
            StoreError::Database("disk I/O error".into()),
            StoreError::corrupt("inbox.body", "truncated"),
            StoreError::CommitFailed("disk full".to_owned()),
            StoreError::WriterStopped,
            StoreError::Unavailable("connection refused".to_owned()),
        ];
        for error in failing {
            assert!(error.is_storage_failure(), "{error:?}");
        }
        let refused = [
            StoreError::Driver("invalid column type".into()),
            StoreError::not_found("delivery 7"),
            StoreError::Conflict("taken".to_owned()),
            StoreError::InvalidInput("too large".to_owned()),
            StoreError::ReaderFailed("task panicked".to_owned()),
        ];
        for error in refused {
            assert!(!error.is_storage_failure(), "{error:?}");
        }
    }

    #[test]
    fn the_drivers_error_is_shown_and_kept_as_the_source() {
        let error = StoreError::Database("database is locked".into());
        assert_eq!(error.to_string(), "database error: database is locked");
        let source = std::error::Error::source(&error).map(ToString::to_string);
        assert_eq!(source.as_deref(), Some("database is locked"));
    }
}
