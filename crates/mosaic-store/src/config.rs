//! Store configuration: the one `[store]` section every backend reads.
//!
//! The URL picks the backend; each backend reads, checks and ignores the other's knobs. The
//! section stays one serde type (not a struct per backend flattened together) because serde
//! cannot refuse unknown keys across flattened structs, and a misspelt key must stay an error
//! that names it. So SQLite's `synchronous` setting is declared here as plain data; what it
//! means, like every SQLite check, lives in `mosaic-store-sqlite`.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// SQLite's `synchronous` setting (`store.synchronous`): how hard a commit syncs to disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Synchronous {
    /// Every commit is synced: an acknowledged delivery survives power loss.
    #[default]
    Full,
    /// WAL commits are synced at checkpoints: survives a process crash, not power loss.
    Normal,
}

/// Where the store lives and how it commits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreConfig {
    /// `sqlite://PATH` or a plain path (parent directories are created), or
    /// `postgres://user:password@host/db` for the PostgreSQL backend. Shown and serialised with
    /// its password replaced.
    #[serde(serialize_with = "url_without_password")]
    pub url: String,
    pub synchronous: Synchronous,
    /// How long a connection waits for a lock held by another process, in milliseconds.
    pub busy_timeout_ms: u64,
    /// Most write requests committed in one transaction (SQLite).
    pub max_batch: usize,
    /// Connections to PostgreSQL kept at most (PostgreSQL only).
    pub pool_size: usize,
    /// How long, in milliseconds, a leader that stops answering (paused, hung, cut off) keeps
    /// the leadership before another coordinator may take it; its writes are refused from then
    /// on (PostgreSQL only; at least 2,000).
    pub leader_lease_ms: u64,
    /// The PostgreSQL schema the tables live in, created when missing; unset: the server's
    /// default (`public`). Lets several coordinator installations share one database.
    pub schema: Option<String>,
    /// Read connections kept open (reads run concurrently with the writer under WAL).
    pub read_connections: usize,
    /// How long, in microseconds, the writer keeps collecting requests before it starts a
    /// group, when the previous group had more than one request (so more are likely). It stops
    /// early once it holds as many as the previous group. 0: start at once.
    pub group_window_us: u64,
    /// Period, in milliseconds, of the background WAL checkpoint (PASSIVE: it never blocks the
    /// writer) while writes happen. 0: SQLite checkpoints automatically inside the commit that
    /// crosses 1,000 WAL pages, on the writer, while every queued request waits.
    pub checkpoint_interval_ms: u64,
    /// WAL pages (4 KiB each) after which the writer pauses once, between two groups, to let
    /// the log start again from its beginning. The background checkpoint restarts it by itself
    /// whenever writes pause for a moment; this is for a load that never pauses, where the WAL
    /// would otherwise grow without end. Ignored with `checkpoint_interval_ms = 0`.
    pub wal_restart_pages: u32,
    /// Bytes of WAL file kept when the log restarts after a checkpoint (`journal_size_limit`);
    /// a larger file left by a burst is truncated to this, or emptied when the store is idle.
    pub wal_size_limit_bytes: u64,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            url: "sqlite://data/mosaic.db".to_owned(),
            synchronous: Synchronous::Full,
            busy_timeout_ms: 5_000,
            max_batch: 256,
            pool_size: 16,
            leader_lease_ms: 5_000,
            schema: None,
            read_connections: 4,
            group_window_us: 500,
            checkpoint_interval_ms: 100,
            wal_restart_pages: 16_384,
            wal_size_limit_bytes: 128 * 1024 * 1024,
        }
    }
}

/// `url` with the password of its user part (`user:password@`) replaced, for anything shown.
pub fn mask_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    let Some((user_info, host)) = authority.rsplit_once('@') else {
        return url.to_owned();
    };
    let Some((user, _password)) = user_info.split_once(':') else {
        return url.to_owned();
    };
    format!(
        "{scheme}://{user}:[redacted]@{host}{}",
        &rest[authority_end..]
    )
}

fn url_without_password<S: serde::Serializer>(url: &str, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&mask_password(url))
}

impl StoreConfig {
    /// The URL as it may be shown (password replaced).
    pub fn shown_url(&self) -> String {
        mask_password(&self.url)
    }

    /// A configuration for a SQLite file at `path`, everything else default.
    pub fn sqlite(path: impl Into<PathBuf>) -> Self {
        Self {
            url: format!("sqlite://{}", path.into().display()),
            ..Self::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_in_urls_are_never_shown() {
        let config = StoreConfig {
            url: "postgres://mosaic:s3cret-pw@db.internal:5432/mosaic?sslmode=disable".to_owned(),
            ..StoreConfig::default()
        };
        assert_eq!(
            config.shown_url(),
            "postgres://mosaic:[redacted]@db.internal:5432/mosaic?sslmode=disable"
        );
        let shown = serde_json::to_string(&config).unwrap();
        assert!(!shown.contains("s3cret-pw"), "{shown}");
        for plain in [
            "sqlite://data/mosaic.db",
            "postgres://mosaic@db/mosaic",
            "postgres://db/mosaic",
            "/tmp/m.db",
        ] {
            assert_eq!(mask_password(plain), plain);
        }
    }

    #[test]
    fn defaults_are_durable() {
        let config = StoreConfig::default();
        assert_eq!(config.synchronous, Synchronous::Full);
        assert_eq!(config.url, "sqlite://data/mosaic.db");
    }
}
