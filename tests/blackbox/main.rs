//! Black-box tests: the built `mosaic-coordinator` binary, real HTTP on loopback, real files.
//!
//! Run through `cargo test --workspace`, which builds the binary first.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod cli;
mod coordinator;
mod gitea;
mod helpers;
mod intake;
mod lifecycle;
mod standalone;
