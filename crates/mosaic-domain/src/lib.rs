//! The coordinator's decisions as plain values and pure functions.
//!
//! Nothing in this crate performs I/O or depends on an async runtime, so every decision
//! (fit, assignment, readiness, ordering) can be tested and embedded with plain values.

pub mod agent;
pub mod assignment;
mod cow;
pub mod estimate;
pub mod events;
pub mod graph;
pub mod issue;
pub mod metadata;
pub mod queue;
pub mod state;
mod volume;

pub use agent::{AgentProfile, AgentProfiles, ProfileError, ThresholdError, Thresholds};
pub use assignment::{
    Assignment, AssignmentPolicy, AssignmentReason, Rejection, assign, fits_fifty_percent_rule,
};
pub use estimate::{DocLevel, EstimateComponents, Level};
pub use events::{EventKind, PayloadError, WebhookPayload, parse_payload};
pub use graph::{DependencyGraph, GraphChange, GraphError, GraphSnapshot, Readiness};
pub use issue::{IssueRef, IssueRefError, RepoName};
pub use metadata::{Difficulty, IssueMetadata, MetadataSource};
pub use queue::{IssueQueue, PriorityOrder, QueueEntry, QueueError, QueueSnapshot, Transition};
pub use state::{InvalidTransition, IssueState};
pub use volume::Volume;
