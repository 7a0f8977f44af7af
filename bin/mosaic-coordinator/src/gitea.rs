//! `gitea check` and `gitea install-webhook`: setting the coordinator up on a Gitea server.

use std::process::ExitCode;

use anyhow::Context;
use mosaic_domain::RepoName;
use mosaic_gitea::{GiteaClient, WebhookInstall};
use url::Url;

use crate::Failure;
use crate::config::{Config, ConfigError};

fn client(config: &Config) -> Result<(GiteaClient, &mosaic_gitea::GiteaConfig), Failure> {
    let gitea = config.gitea.as_ref().ok_or_else(|| {
        ConfigError("no Gitea configured: set GITEA_URL (and GITEA_BOT_TOKEN)".to_owned())
    })?;
    let client = GiteaClient::new(gitea).context("cannot build the Gitea client")?;
    Ok((client, gitea))
}

fn hook_url(config: &Config, given: Option<Url>) -> Result<Option<Url>, Failure> {
    if given.is_some() {
        return Ok(given);
    }
    config
        .webhook
        .public_url
        .as_deref()
        .map(|text| {
            Url::parse(text).map_err(|err| {
                Failure::Config(ConfigError(format!(
                    "invalid configuration: `webhook.public_url` = {text:?}: {err}"
                )))
            })
        })
        .transpose()
}

fn runtime() -> Result<tokio::runtime::Runtime, Failure> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?)
}

fn parse_repo(repo: &str) -> Result<RepoName, Failure> {
    repo.parse()
        .map_err(|err| Failure::Config(ConfigError(format!("--repo {repo:?}: {err}"))))
}

/// `gitea check`: token, bot identity, reachable repositories, webhooks. Exits 1 when anything
/// checked is not as the coordinator needs it (a repository it cannot read included).
pub fn check(config: &Config, url: Option<Url>, repos: &[String]) -> Result<ExitCode, Failure> {
    let (client, gitea) = client(config)?;
    let url = hook_url(config, url)?;
    let repositories = if repos.is_empty() {
        gitea.repositories.clone()
    } else {
        repos
            .iter()
            .map(|repo| parse_repo(repo))
            .collect::<Result<Vec<_>, _>>()?
    };
    let report = runtime()?.block_on(mosaic_gitea::check(
        &client,
        gitea.bot_username.as_deref(),
        &repositories,
        url.as_ref(),
    ));
    #[allow(clippy::print_stdout)] // the command's output
    {
        print!("{report}");
    }
    Ok(if report.is_ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// `gitea install-webhook --repo owner/name [--url URL]`.
pub fn install_webhook(config: &Config, repo: &str, url: Option<Url>) -> Result<ExitCode, Failure> {
    let repo = parse_repo(repo)?;
    let (client, gitea) = client(config)?;
    if gitea.token.is_none() {
        return Err(ConfigError(
            "installing a webhook needs GITEA_BOT_TOKEN (a token that may administer the repository)"
                .to_owned(),
        )
        .into());
    }
    let url = hook_url(config, url)?.ok_or_else(|| {
        ConfigError("give the delivery address with --url or `webhook.public_url`".to_owned())
    })?;
    // The newest secret: during a rotation it is the one added last (GITEA_WEBHOOK_SECRET).
    let secret = config.webhook.secrets.last().ok_or_else(|| {
        ConfigError("no webhook secret configured: set GITEA_WEBHOOK_SECRET".to_owned())
    })?;
    let outcome = runtime()?
        .block_on(mosaic_gitea::install_webhook(&client, &repo, &url, secret))
        .with_context(|| format!("cannot install the webhook on {repo}"))?;
    #[allow(clippy::print_stdout)] // the command's output
    {
        match outcome {
            WebhookInstall::Created(_) => {
                println!("created a webhook on {repo} delivering to {url}")
            }
            WebhookInstall::Updated(_) => {
                println!("updated the webhook on {repo} delivering to {url}")
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
