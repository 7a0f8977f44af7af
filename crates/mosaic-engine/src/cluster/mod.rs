//! Sessions shared among coordinators on one store (PostgreSQL): agent capacity beyond one
//! machine.
//!
//! The leader's engine runs its sessions through [`RemoteRuntime`]: starting one writes a
//! session request to the store, and the session it hands the context monitor follows what the
//! claimant reports (usage, compactions, turns, the outcome) and carries the monitor's commands
//! (send, compact, close) back through the store. A [`SessionWorker`] on every coordinator, the
//! leader's included, claims requests while it has capacity (the store counts its claims), runs
//! each with its own runtime in its own workspace — prepared from the branch as last
//! pushed, so an issue moved to another machine continues where it was — and pushes the
//! branch at every turn's end and before it reports the session ended. A claimant that stops
//! reporting for `lost_after` has its session ended as interrupted (the issue runs again,
//! elsewhere) and its request cancelled, so it stops too if it comes back.

mod remote;
mod wire;
mod worker;

pub use remote::{RemoteConfig, RemoteRuntime};
pub use wire::reported_process;
pub use worker::{SessionWorker, WorkerConfig, WorkerParts};
