//! The SQLite backend's reading of the shared `[store]` section: the file, and the knobs only
//! SQLite has, checked once at open.

use std::path::PathBuf;
use std::time::Duration;

use mosaic_store::{StoreConfig, StoreError, Synchronous};

/// Longest grouping window accepted: a longer one would only add latency.
const MAX_GROUP_WINDOW: Duration = Duration::from_millis(100);

/// What [`crate::SqliteStore`] opens with: a [`StoreConfig`] read and checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SqliteOptions {
    pub(crate) path: PathBuf,
    pub(crate) synchronous: Synchronous,
    pub(crate) busy_timeout: Duration,
    pub(crate) max_batch: usize,
    pub(crate) read_connections: usize,
    pub(crate) group_window: Duration,
    /// Zero: SQLite checkpoints by itself, inside commits.
    pub(crate) checkpoint_interval: Duration,
    pub(crate) wal_restart_pages: u32,
    /// At most `i64::MAX`: SQLite takes `journal_size_limit` as a signed number.
    pub(crate) wal_size_limit_bytes: u64,
}

impl SqliteOptions {
    /// Reads the SQLite file and settings from `config`; a bad value names its key.
    pub(crate) fn from_config(config: &StoreConfig) -> Result<Self, StoreError> {
        let path = sqlite_path(config)?;
        if config.max_batch == 0 {
            return Err(StoreError::InvalidConfig(
                "store.max_batch must be at least 1".to_owned(),
            ));
        }
        if config.read_connections == 0 {
            return Err(StoreError::InvalidConfig(
                "store.read_connections must be at least 1".to_owned(),
            ));
        }
        let group_window = Duration::from_micros(config.group_window_us);
        if group_window > MAX_GROUP_WINDOW {
            return Err(StoreError::InvalidConfig(format!(
                "store.group_window_us must be at most {} (it delays writes)",
                MAX_GROUP_WINDOW.as_micros()
            )));
        }
        if config.wal_restart_pages == 0 {
            return Err(StoreError::InvalidConfig(
                "store.wal_restart_pages must be at least 1".to_owned(),
            ));
        }
        if i64::try_from(config.wal_size_limit_bytes).is_err() {
            return Err(StoreError::InvalidConfig(
                "store.wal_size_limit_bytes is too large".to_owned(),
            ));
        }
        Ok(Self {
            path,
            synchronous: config.synchronous,
            busy_timeout: Duration::from_millis(config.busy_timeout_ms),
            max_batch: config.max_batch,
            read_connections: config.read_connections,
            group_window,
            checkpoint_interval: Duration::from_millis(config.checkpoint_interval_ms),
            wal_restart_pages: config.wal_restart_pages,
            wal_size_limit_bytes: config.wal_size_limit_bytes,
        })
    }
}

/// The SQLite file `config.url` names: `sqlite://PATH`, `sqlite:PATH` or a plain path.
pub(crate) fn sqlite_path(config: &StoreConfig) -> Result<PathBuf, StoreError> {
    let url = config.url.trim();
    let path = match url.split_once("://") {
        Some(("sqlite", path)) => path,
        Some(_) => return Err(StoreError::UnsupportedUrl(config.shown_url())),
        None => url.strip_prefix("sqlite:").unwrap_or(url),
    };
    if path.is_empty() {
        return Err(StoreError::UnsupportedUrl(config.shown_url()));
    }
    Ok(PathBuf::from(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_urls_and_paths() {
        let check = |url: &str, expect: Option<&str>| {
            let config = StoreConfig {
                url: url.to_owned(),
                ..StoreConfig::default()
            };
            let got = sqlite_path(&config).ok();
            assert_eq!(got.as_deref(), expect.map(std::path::Path::new), "{url}");
        };
        check("sqlite://data/mosaic.db", Some("data/mosaic.db"));
        check("sqlite:///var/lib/mosaic.db", Some("/var/lib/mosaic.db"));
        check("sqlite:x.db", Some("x.db"));
        check("/tmp/m.db", Some("/tmp/m.db"));
        check("postgres://localhost/mosaic", None);
        check("sqlite://", None);
        check("", None);
    }

    #[test]
    fn a_refused_url_hides_its_password() {
        let config = StoreConfig {
            url: "postgres://mosaic:s3cret-pw@db.internal:5432/mosaic".to_owned(),
            ..StoreConfig::default()
        };
        let err = sqlite_path(&config).unwrap_err().to_string();
        assert!(!err.contains("s3cret-pw"), "{err}");
    }

    #[test]
    fn the_defaults_are_accepted_and_durable() {
        let options = SqliteOptions::from_config(&StoreConfig::default()).unwrap();
        assert_eq!(options.synchronous, Synchronous::Full);
        assert_eq!(options.path, PathBuf::from("data/mosaic.db"));
    }

    #[test]
    fn out_of_range_settings_are_refused_by_key() {
        let refused = |config: StoreConfig, key: &str| {
            let err = SqliteOptions::from_config(&config).unwrap_err();
            assert!(
                matches!(&err, StoreError::InvalidConfig(m) if m.contains(key)),
                "{key}: {err}"
            );
        };
        let base = StoreConfig::default;
        refused(
            StoreConfig {
                max_batch: 0,
                ..base()
            },
            "max_batch",
        );
        refused(
            StoreConfig {
                read_connections: 0,
                ..base()
            },
            "read_connections",
        );
        refused(
            StoreConfig {
                group_window_us: 100_001,
                ..base()
            },
            "group_window_us",
        );
        refused(
            StoreConfig {
                wal_restart_pages: 0,
                ..base()
            },
            "wal_restart_pages",
        );
        refused(
            StoreConfig {
                wal_size_limit_bytes: u64::MAX,
                ..base()
            },
            "wal_size_limit_bytes",
        );
        // The largest window is still accepted.
        assert!(
            SqliteOptions::from_config(&StoreConfig {
                group_window_us: 100_000,
                ..base()
            })
            .is_ok()
        );
    }
}
