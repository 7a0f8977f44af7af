//! Test support for Mosaic Coordinator; a dev-dependency only, never shipped.
//!
//! It gathers what the tests of several crates share. Today that is the mock Gitea's git
//! support, re-exported: [`GitHttpServer`] serves bare repositories over git's smart HTTP
//! protocol through the real `git http-backend` (CGI) and refuses every request that lacks the
//! bot's token, as Gitea does; [`repo`] builds and reads bare repositories with the git CLI.
//! Both live beside the mock Gitea because the `demo` command uses them too.

pub use mosaic_gitea::mock::repo;
pub use mosaic_gitea::mock::{GitHttpServer, ServedRequest};
