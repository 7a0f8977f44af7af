//! The coordinator's durable state behind one backend-neutral [`Store`] trait.
//!
//! Everything the coordinator must not lose lives here: the webhook inbox (acknowledged means
//! durable), issue snapshots, coordinated issue records with their transition history and
//! dependency edges, the outbox of Gitea writes (committed together with the state change that
//! causes them), agent sessions, rotations, compactions, LLM usage and the parse cache.
//!
//! [`sqlite::SqliteStore`] is the embedded backend. Its writes go through one writer thread
//! that commits concurrent requests in groups: one transaction and one sync for many callers.

pub mod body;
mod config;
mod error;
mod model;
pub mod sqlite;
mod store;

pub use config::{StoreConfig, Synchronous, mask_password};
pub use error::StoreError;
pub use model::*;
pub use store::Store;
