//! Mosaic Coordinator's Gitea adapter.
//!
//! - [`GiteaClient`]: the REST client (token auth, timeouts, typed [`GiteaError`]s, pagination
//!   through `Link`/`X-Total-Count`, optional pacing and call observation).
//! - [`GiteaApi`]: the calls the engine makes, as an object-safe trait (mockable with the
//!   `mockall` feature).
//! - [`BotIdentity`]: who the token belongs to, checked at start.
//! - [`webhook`]: `check` and `install_webhook` for the set-up commands.
//! - `mock` (feature `mock`): an in-memory Gitea for tests and the demo.
//!
//! Nothing here decides anything: the engine decides, this crate performs the I/O.

mod api;
mod client;
mod config;
mod error;
mod identity;
mod marker;
mod types;
pub mod webhook;

#[cfg(feature = "mock")]
pub mod mock;

#[cfg(any(test, feature = "mockall"))]
pub use api::MockGiteaApi;
pub use api::{CommentDelivery, GiteaApi, post_comment_once};
pub use client::{
    CallObserver, CallOutcome, DEFAULT_MAX_PAGES, GiteaClient, LabelRemoval, PAGE_LIMIT,
    RequestPacer, user_agent,
};
pub use config::{ConfigError, GiteaConfig, normalise_colour};
pub use error::GiteaError;
pub use identity::{BotIdentity, IdentityError};
pub use marker::{IdempotencyKey, MarkerError, markers_in};
pub use types::{
    Comment, CommentOption, CommitStatus, CommitStatusState, CreateHookOption, CreateLabelOption,
    CreatePullRequestOption, CreateStatusOption, Dependencies, EditHookOption, EditIssueOption,
    EditPullRequestOption, Hook, InternalTracker, Issue, IssueFilter, IssueLabelsOption,
    IssueState, Label, Permission, PullRequest, PullRequestBranch, PullRequestMeta, Repository,
    RepositoryMeta, StateFilter, User,
};
pub use webhook::{CheckReport, WEBHOOK_EVENTS, WebhookInstall, check, install_webhook};
