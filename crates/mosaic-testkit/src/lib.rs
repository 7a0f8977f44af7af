//! Test support for Mosaic Coordinator; a dev-dependency only, never shipped.
//!
//! [`GitHttpServer`] serves bare repositories over git's smart HTTP protocol through the real
//! `git http-backend` (CGI), and refuses every request that lacks the bot's token, as Gitea
//! does. [`repo`] builds and reads bare repositories with the git CLI.

mod git_http;
pub mod repo;

pub use git_http::{GitHttpServer, ServedRequest};
