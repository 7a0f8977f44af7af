//! Who the coordinator is on Gitea: the token's user, checked once at start.

use crate::api::GiteaApi;
use crate::error::GiteaError;
use crate::types::User;

/// The bot account the token belongs to, and whose assignments the coordinator acts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BotIdentity {
    pub user: User,
    /// The assignee the coordinator acts for: the bot itself unless configured otherwise.
    acts_for: String,
}

/// Why the bot's identity could not be established.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// Fatal: the token is wrong, expired, revoked, or lacks the `read:user` scope.
    #[error(
        "Gitea rejected GITEA_BOT_TOKEN ({status}: {message}); create a new token for the bot user with scopes read:user, write:issue and read:repository"
    )]
    TokenRejected { status: u16, message: String },

    /// Fatal: the token works but belongs to someone else.
    #[error(
        "GITEA_BOT_TOKEN belongs to `{actual}` but GITEA_BOT_USERNAME is `{expected}`; use the bot's own token or fix the username"
    )]
    UsernameMismatch { expected: String, actual: String },

    /// Not fatal: Gitea could not be reached or failed; start anyway and retry.
    #[error("Gitea is unreachable, will retry: {0}")]
    Unreachable(#[source] GiteaError),

    /// Fatal: Gitea answered, but not like Gitea's `/api/v1/user` (wrong URL, a proxy page).
    #[error("GITEA_URL does not look like a Gitea API (GET /api/v1/user failed: {0})")]
    NotGitea(#[source] GiteaError),
}

impl IdentityError {
    /// Whether the coordinator should refuse to start (configuration must be fixed first).
    pub fn is_fatal(&self) -> bool {
        !self.is_retryable()
    }

    /// Whether asking again later may succeed (Gitea down, timing out, rate limiting).
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Unreachable(_))
    }
}

impl BotIdentity {
    /// `GET /user` with the token; `expected_username` (GITEA_BOT_USERNAME), when set, must
    /// name the same account (Gitea logins ignore case).
    pub async fn resolve(
        api: &dyn GiteaApi,
        expected_username: Option<&str>,
    ) -> Result<Self, IdentityError> {
        let user = match api.current_user().await {
            Ok(user) => user,
            Err(error) if error.is_retryable() => return Err(IdentityError::Unreachable(error)),
            Err(GiteaError::Unauthorized { message, .. }) => {
                return Err(IdentityError::TokenRejected {
                    status: 401,
                    message,
                });
            }
            Err(GiteaError::Forbidden { message, .. }) => {
                return Err(IdentityError::TokenRejected {
                    status: 403,
                    message,
                });
            }
            Err(other) => return Err(IdentityError::NotGitea(other)),
        };
        if let Some(expected) = expected_username
            && !user.is(expected)
        {
            return Err(IdentityError::UsernameMismatch {
                expected: expected.to_owned(),
                actual: user.login,
            });
        }
        let acts_for = user.login.clone();
        Ok(Self { user, acts_for })
    }

    /// Acts on issues assigned to `assignee` instead of the bot itself (`gitea.assignee`).
    pub fn with_assignee(mut self, assignee: Option<&str>) -> Self {
        if let Some(assignee) = assignee {
            assignee.clone_into(&mut self.acts_for);
        }
        self
    }

    pub fn login(&self) -> &str {
        &self.user.login
    }

    /// The assignee whose issues the coordinator coordinates.
    pub fn acts_for(&self) -> &str {
        &self.acts_for
    }

    /// Whether a webhook's sender is the bot itself: such events are recorded, never acted on.
    pub fn is_self(&self, login: &str) -> bool {
        self.user.is(login)
    }

    /// Whether `login` is the assignee the coordinator acts for.
    pub fn is_coordinated_assignee(&self, login: &str) -> bool {
        self.acts_for.eq_ignore_ascii_case(login)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::MockGiteaApi;

    fn bot() -> User {
        User {
            id: 7,
            login: "Mosaic-Bot".into(),
            full_name: String::new(),
            email: String::new(),
            is_admin: false,
        }
    }

    fn api_answering(answer: fn() -> Result<User, GiteaError>) -> MockGiteaApi {
        let mut api = MockGiteaApi::new();
        api.expect_current_user().times(1).returning(answer);
        api
    }

    #[tokio::test]
    async fn resolves_and_accepts_a_case_insensitive_match() {
        let api = api_answering(|| Ok(bot()));
        let identity = BotIdentity::resolve(&api, Some("mosaic-bot"))
            .await
            .unwrap();
        assert_eq!(identity.login(), "Mosaic-Bot");
        assert_eq!(identity.acts_for(), "Mosaic-Bot");
        assert!(identity.is_self("MOSAIC-BOT"));
        assert!(!identity.is_self("alice"));
        let identity = identity.with_assignee(Some("team-bot"));
        assert!(identity.is_coordinated_assignee("Team-Bot"));
        assert!(identity.is_self("mosaic-bot"));
    }

    #[tokio::test]
    async fn classifies_failures() {
        let check = |error: IdentityError, expect_fatal: bool, expect_in_message: &str| {
            assert_eq!(error.is_fatal(), expect_fatal, "{error}");
            assert!(
                error.to_string().contains(expect_in_message),
                "{error} lacks {expect_in_message:?}"
            );
        };
        let resolve = |answer: fn() -> Result<User, GiteaError>| async move {
            BotIdentity::resolve(&api_answering(answer), Some("mosaic-bot"))
                .await
                .unwrap_err()
        };
        check(
            resolve(|| {
                Err(GiteaError::from_status(
                    "user.current",
                    401,
                    "token is required".into(),
                    None,
                ))
            })
            .await,
            true,
            "rejected GITEA_BOT_TOKEN (401: token is required)",
        );
        check(
            resolve(|| {
                Err(GiteaError::from_status(
                    "user.current",
                    403,
                    "scope".into(),
                    None,
                ))
            })
            .await,
            true,
            "403",
        );
        check(
            resolve(|| {
                Ok(User {
                    login: "alice".into(),
                    ..bot()
                })
            })
            .await,
            true,
            "belongs to `alice` but GITEA_BOT_USERNAME is `mosaic-bot`",
        );
        check(
            resolve(|| {
                Err(GiteaError::from_status(
                    "user.current",
                    502,
                    "bad gateway".into(),
                    None,
                ))
            })
            .await,
            false,
            "unreachable",
        );
        check(
            resolve(|| {
                Err(GiteaError::Timeout {
                    operation: "user.current",
                })
            })
            .await,
            false,
            "unreachable",
        );
        check(
            resolve(|| {
                Err(GiteaError::from_status(
                    "user.current",
                    404,
                    "not found".into(),
                    None,
                ))
            })
            .await,
            true,
            "does not look like a Gitea API",
        );
    }
}
