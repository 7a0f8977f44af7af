//! Typed store errors.

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
        source: rusqlite::Error,
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
    #[error("database error: {0}")]
    Database(#[from] rusqlite::Error),
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
}

impl StoreError {
    pub(crate) fn not_found(what: impl Into<String>) -> Self {
        Self::NotFound { what: what.into() }
    }

    /// Whether the database failed (I/O, corruption, a full disk, a refused commit), as opposed
    /// to the caller asking for something it cannot have (not found, conflict, bad input).
    pub fn is_storage_failure(&self) -> bool {
        matches!(
            self,
            Self::Database(rusqlite::Error::SqliteFailure(..))
                | Self::Corrupt { .. }
                | Self::CommitFailed(_)
                | Self::WriterStopped
                | Self::Unavailable(_)
        )
    }

    pub(crate) fn corrupt(column: &'static str, reason: impl Into<String>) -> Self {
        Self::Corrupt {
            column,
            reason: reason.into(),
        }
    }
}
