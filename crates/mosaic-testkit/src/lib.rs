//! Test support for Mosaic Coordinator; a dev-dependency only, never shipped.
//!
//! [`GitHttpServer`] (the mock Gitea's, re-exported) serves bare repositories over git's smart
//! HTTP protocol through the real `git http-backend` (CGI), and refuses every request that lacks
//! the bot's token, as Gitea does. [`repo`] builds and reads bare repositories with the git CLI.

pub mod repo;

pub use mosaic_gitea::mock::{GitHttpServer, ServedRequest};
