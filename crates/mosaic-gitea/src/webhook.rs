//! Webhook set-up for the `gitea check` and `gitea install-webhook` commands.

use std::collections::BTreeMap;
use std::fmt;

use mosaic_domain::RepoName;
use mosaic_security::Secret;
use url::Url;

use crate::client::GiteaClient;
use crate::error::GiteaError;
use crate::types::{CreateHookOption, EditHookOption, Hook};

/// The events the coordinator needs: issue changes, assignments, labels, milestones, comments.
pub const WEBHOOK_EVENTS: [&str; 5] = [
    "issues",
    "issue_assign",
    "issue_label",
    "issue_milestone",
    "issue_comment",
];

/// The result of `gitea check`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckReport {
    /// The API base checked, e.g. `https://git.example/api/v1`.
    pub api_url: String,
    pub token: TokenCheck,
    /// The webhook URL looked for, when one was given.
    pub hook_url: Option<String>,
    pub repositories: Vec<RepositoryCheck>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenCheck {
    NotConfigured,
    /// The token works; `matches_expected` is `None` when no username was configured.
    Works {
        login: String,
        matches_expected: Option<bool>,
    },
    Rejected(String),
    Unreachable(String),
    Failed(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepositoryCheck {
    pub repo: RepoName,
    pub access: RepoAccess,
    /// From the repository's tracker settings; `None` when Gitea did not say.
    pub dependencies_enabled: Option<bool>,
    pub hook: HookCheck,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RepoAccess {
    Reachable { can_write: bool, is_admin: bool },
    NotFound,
    Denied,
    Failed,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HookCheck {
    /// No webhook URL to look for, or the repository was not reachable.
    NotChecked,
    /// Listing hooks needs admin rights on the repository.
    NotPermitted,
    Missing,
    /// Gitea never returns a hook's secret, so only `install-webhook` can guarantee it.
    Found {
        hook_id: i64,
        active: bool,
        json: bool,
        missing_events: Vec<String>,
    },
    Failed(String),
}

impl HookCheck {
    pub fn is_ok(&self) -> bool {
        matches!(self, Self::Found { active: true, json: true, missing_events, .. } if missing_events.is_empty())
    }
}

impl CheckReport {
    /// Whether everything checked is as the coordinator needs it.
    pub fn is_ok(&self) -> bool {
        let token_ok = matches!(
            self.token,
            TokenCheck::Works {
                matches_expected: None | Some(true),
                ..
            }
        );
        token_ok
            && self.repositories.iter().all(|r| {
                matches!(
                    r.access,
                    RepoAccess::Reachable {
                        can_write: true,
                        ..
                    }
                ) && (self.hook_url.is_none() || r.hook.is_ok())
            })
    }
}

/// Checks the token, the bot's login, each repository's reachability and, when `hook_url` is
/// given, whether a webhook there points at it with JSON content and the needed events.
pub async fn check(
    client: &GiteaClient,
    expected_username: Option<&str>,
    repositories: &[RepoName],
    hook_url: Option<&Url>,
) -> CheckReport {
    let token = if client.has_token() {
        match client.current_user().await {
            Ok(user) => TokenCheck::Works {
                matches_expected: expected_username.map(|expected| user.is(expected)),
                login: user.login,
            },
            Err(error) if error.is_auth_failure() => TokenCheck::Rejected(error.to_string()),
            Err(error) if error.is_retryable() => TokenCheck::Unreachable(error.to_string()),
            Err(error) => TokenCheck::Failed(error.to_string()),
        }
    } else {
        TokenCheck::NotConfigured
    };
    let mut checks = Vec::with_capacity(repositories.len());
    for repo in repositories {
        checks.push(check_repository(client, repo, hook_url).await);
    }
    CheckReport {
        api_url: client.api_base().to_string(),
        token,
        hook_url: hook_url.map(Url::to_string),
        repositories: checks,
    }
}

async fn check_repository(
    client: &GiteaClient,
    repo: &RepoName,
    hook_url: Option<&Url>,
) -> RepositoryCheck {
    let (access, dependencies_enabled) = match client.get_repository(repo).await {
        Ok(found) => {
            let permissions = found.permissions.unwrap_or_default();
            (
                RepoAccess::Reachable {
                    can_write: permissions.push || permissions.admin,
                    is_admin: permissions.admin,
                },
                found.internal_tracker.map(|t| t.enable_issue_dependencies),
            )
        }
        Err(GiteaError::NotFound { .. }) => (RepoAccess::NotFound, None),
        Err(error) if error.is_auth_failure() => (RepoAccess::Denied, None),
        Err(_) => (RepoAccess::Failed, None),
    };
    let hook = match (hook_url, access) {
        (Some(url), RepoAccess::Reachable { .. }) => match client.list_hooks(repo).await {
            Ok(hooks) => match hooks.iter().find(|hook| points_at(hook, url)) {
                Some(hook) => HookCheck::Found {
                    hook_id: hook.id,
                    active: hook.active,
                    json: hook.content_type() == Some("json"),
                    missing_events: WEBHOOK_EVENTS
                        .iter()
                        .filter(|needed| !hook.events.iter().any(|e| e == *needed))
                        .map(|e| (*e).to_owned())
                        .collect(),
                },
                None => HookCheck::Missing,
            },
            Err(error) if error.is_auth_failure() => HookCheck::NotPermitted,
            Err(error) => HookCheck::Failed(error.to_string()),
        },
        _ => HookCheck::NotChecked,
    };
    RepositoryCheck {
        repo: repo.clone(),
        access,
        dependencies_enabled,
        hook,
    }
}

/// Whether a hook delivers to `url` (compared as parsed URLs, so `HTTP://Host` equals `http://host`).
fn points_at(hook: &Hook, url: &Url) -> bool {
    hook.target_url()
        .is_some_and(|target| Url::parse(target).is_ok_and(|target| &target == url))
}

/// What `install_webhook` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WebhookInstall {
    Created(Hook),
    /// A hook already delivering to the URL was brought up to date (secret, events, active).
    Updated(Hook),
}

impl WebhookInstall {
    pub fn hook(&self) -> &Hook {
        match self {
            Self::Created(hook) | Self::Updated(hook) => hook,
        }
    }
}

/// Creates the repository webhook delivering to `url` with `secret`, JSON content and
/// `WEBHOOK_EVENTS`, or updates the one already delivering there. Running it twice leaves one hook.
pub async fn install_webhook(
    client: &GiteaClient,
    repo: &RepoName,
    url: &Url,
    secret: &Secret,
) -> Result<WebhookInstall, GiteaError> {
    if secret.is_empty() {
        return Err(GiteaError::InvalidRequest(
            "the webhook secret is empty; set GITEA_WEBHOOK_SECRET or webhook.secrets".to_owned(),
        ));
    }
    let mut config = BTreeMap::new();
    config.insert("url".to_owned(), url.to_string());
    config.insert("content_type".to_owned(), "json".to_owned());
    config.insert("secret".to_owned(), secret.expose_secret().to_owned());
    let events: Vec<String> = WEBHOOK_EVENTS.iter().map(|e| (*e).to_owned()).collect();

    let hooks = client.list_hooks(repo).await?;
    if let Some(existing) = hooks.iter().find(|hook| points_at(hook, url)) {
        let edit = EditHookOption {
            config: Some(config),
            events: Some(events),
            active: Some(true),
        };
        let hook = client.edit_hook(repo, existing.id, &edit).await?;
        return Ok(WebhookInstall::Updated(hook));
    }
    let create = CreateHookOption {
        kind: "gitea".to_owned(),
        config,
        events,
        branch_filter: String::new(),
        active: true,
    };
    Ok(WebhookInstall::Created(
        client.create_hook(repo, &create).await?,
    ))
}

impl fmt::Display for CheckReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "Gitea API: {}", self.api_url)?;
        match &self.token {
            TokenCheck::NotConfigured => writeln!(
                f,
                "Token:     not configured (GITEA_BOT_TOKEN); the coordinator would write nothing to Gitea"
            )?,
            TokenCheck::Works {
                login,
                matches_expected,
            } => {
                write!(f, "Token:     works, bot user `{login}`")?;
                match matches_expected {
                    Some(true) => writeln!(f, " (matches GITEA_BOT_USERNAME)")?,
                    Some(false) => writeln!(f, " — does NOT match GITEA_BOT_USERNAME")?,
                    None => writeln!(f)?,
                }
            }
            TokenCheck::Rejected(why) => writeln!(f, "Token:     REJECTED — {why}")?,
            TokenCheck::Unreachable(why) => {
                writeln!(f, "Token:     not checked, Gitea unreachable — {why}")?
            }
            TokenCheck::Failed(why) => writeln!(f, "Token:     check failed — {why}")?,
        }
        if let Some(url) = &self.hook_url {
            writeln!(f, "Webhook:   {url}")?;
        }
        if self.repositories.is_empty() {
            writeln!(f, "Repositories: none configured (gitea.repositories)")?;
        } else {
            writeln!(f, "Repositories:")?;
        }
        for check in &self.repositories {
            write!(f, "  {}: ", check.repo)?;
            match check.access {
                RepoAccess::Reachable {
                    can_write,
                    is_admin,
                } => {
                    let level = match (is_admin, can_write) {
                        (true, _) => "admin",
                        (false, true) => "write",
                        (false, false) => "read only — the bot cannot comment or label",
                    };
                    write!(f, "reachable ({level})")?;
                }
                RepoAccess::NotFound => write!(f, "NOT FOUND (missing, or the bot has no access)")?,
                RepoAccess::Denied => write!(f, "ACCESS DENIED")?,
                RepoAccess::Failed => write!(f, "could not be checked")?,
            }
            match check.dependencies_enabled {
                Some(true) => write!(f, "; dependencies on")?,
                Some(false) => write!(f, "; dependencies OFF (metadata references are used)")?,
                None => {}
            }
            match &check.hook {
                HookCheck::NotChecked => writeln!(f)?,
                HookCheck::NotPermitted => {
                    writeln!(f, "; webhook not checked (needs admin rights)")?
                }
                HookCheck::Missing => {
                    writeln!(f, "; NO webhook to this URL (run `gitea install-webhook`)")?
                }
                HookCheck::Found {
                    hook_id,
                    active,
                    json,
                    missing_events,
                } => {
                    write!(f, "; webhook #{hook_id}")?;
                    if !active {
                        write!(f, " INACTIVE")?;
                    }
                    if !json {
                        write!(f, " NOT json")?;
                    }
                    if !missing_events.is_empty() {
                        write!(f, " missing events: {}", missing_events.join(", "))?;
                    }
                    if *active && *json && missing_events.is_empty() {
                        write!(f, " ok")?;
                    }
                    writeln!(
                        f,
                        " (secret not visible through Gitea's API; install-webhook sets it)"
                    )?;
                }
                HookCheck::Failed(why) => writeln!(f, "; webhook check failed — {why}")?,
            }
        }
        writeln!(f, "Checked:   {}", self.scope())?;
        write!(
            f,
            "Result:    {}",
            if self.is_ok() { "OK" } else { "PROBLEMS FOUND" }
        )
    }
}

impl CheckReport {
    /// What was checked, and what was not and how to include it: an "OK" must not hide that
    /// nothing but the token was looked at.
    pub fn scope(&self) -> String {
        let token = match self.token {
            TokenCheck::NotConfigured => "no token (none configured)",
            _ => "the token",
        };
        let repositories = match self.repositories.len() {
            0 => "no repository (pass --repo owner/name or set gitea.repositories)".to_owned(),
            1 => "1 repository".to_owned(),
            n => format!("{n} repositories"),
        };
        let hooks = match (&self.hook_url, self.repositories.is_empty()) {
            (None, _) => "no webhook (pass --url or set webhook.public_url)",
            (Some(_), true) => "no webhook (no repository to look in)",
            (Some(_), false) => "their webhooks",
        };
        format!("{token}, {repositories}, {hooks}")
    }
}
