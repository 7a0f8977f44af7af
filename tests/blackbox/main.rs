//! Black-box tests: the built `mosaic-coordinator` binary, real HTTP on loopback, real files.
//!
//! Run through `cargo test --workspace`, which builds the binary first.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod agent_processes;
mod architecture;
mod claude_code;
mod cli;
mod codex;
mod connections;
mod coordinator;
mod gates;
mod git_scenario;
mod gitea;
mod helpers;
mod intake;
mod lifecycle;
mod postgres;
mod publish;
mod replays;
mod retention;
mod standalone;
