//! How rusqlite's errors become [`StoreError`]s.
//!
//! The operations return [`Failure`] so that `?` works on rusqlite's results and on the store's
//! own errors alike (`StoreError` cannot have a `From<rusqlite::Error>`: neither type is this
//! crate's). A failure of the database itself (`SqliteFailure`: I/O, a full disk, corruption,
//! a busy lock, a constraint) becomes [`StoreError::Database`], any other rusqlite error (a
//! column of an unexpected type, a missing row where one was required) [`StoreError::Driver`];
//! both keep rusqlite's error as their source.

use mosaic_store::StoreError;

#[derive(Debug)]
pub(crate) enum Failure {
    /// Refused by the store's own rules (conflict, not found, bad input, corrupt value).
    Store(StoreError),
    Sqlite(rusqlite::Error),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Store(error) => error.fmt(f),
            Self::Sqlite(error) => error.fmt(f),
        }
    }
}

impl From<StoreError> for Failure {
    fn from(error: StoreError) -> Self {
        Self::Store(error)
    }
}

impl From<rusqlite::Error> for Failure {
    fn from(error: rusqlite::Error) -> Self {
        Self::Sqlite(error)
    }
}

impl From<Failure> for StoreError {
    fn from(failure: Failure) -> Self {
        match failure {
            Failure::Store(error) => error,
            Failure::Sqlite(error) => sqlite_error(error),
        }
    }
}

/// rusqlite's error as a [`StoreError`] (see the module's documentation).
pub(crate) fn sqlite_error(error: rusqlite::Error) -> StoreError {
    match error {
        rusqlite::Error::SqliteFailure(..) => StoreError::Database(Box::new(error)),
        other => StoreError::Driver(Box::new(other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_failing_database_is_a_storage_failure() {
        let conn = rusqlite::Connection::open_in_memory().unwrap();
        let refused = conn.execute_batch("SELECT * FROM missing").unwrap_err();
        let database = StoreError::from(Failure::from(refused));
        assert!(matches!(database, StoreError::Database(_)), "{database:?}");
        assert!(database.is_storage_failure());
        assert!(database.to_string().contains("no such table"), "{database}");

        let no_row = StoreError::from(Failure::from(rusqlite::Error::QueryReturnedNoRows));
        assert!(matches!(no_row, StoreError::Driver(_)), "{no_row:?}");
        assert!(!no_row.is_storage_failure());

        let own = StoreError::from(Failure::from(StoreError::Conflict("taken".to_owned())));
        assert!(matches!(own, StoreError::Conflict(_)));
    }
}
