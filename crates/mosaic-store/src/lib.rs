//! The coordinator's durable state behind one backend-neutral [`Store`] trait.
//!
//! Everything the coordinator must not lose lives here: the webhook inbox (acknowledged means
//! durable), issue snapshots, coordinated issue records with their transition history and
//! dependency edges, the outbox of Gitea writes (committed together with the state change that
//! causes them), agent sessions, rotations, compactions, LLM usage and the parse cache.
//!
//! This crate holds the trait, its model types, errors and configuration, and depends on no
//! database driver: each backend is a crate of its own (`mosaic-store-sqlite`,
//! `mosaic-store-postgres`), and the binary picks one by the URL's scheme.

pub mod body;
mod config;
mod error;
mod model;
mod store;

pub use config::{StoreConfig, Synchronous, mask_password};
pub use error::{DriverError, StoreError};
pub use model::*;
pub use store::Store;
