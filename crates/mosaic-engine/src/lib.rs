//! The coordinator: turns recorded deliveries into decisions, sessions and reports.
//!
//! It depends on the traits of the store, parser, Gitea client and agent runtime, never on a
//! concrete adapter; the binary wires the real ones.

pub mod backoff;
pub mod cluster;
mod declared;
pub mod effects;
pub mod engine;
pub mod inbox;
pub mod outbox;
pub mod reconcile;
pub mod report;
