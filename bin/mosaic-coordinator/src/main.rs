//! `mosaic-coordinator`: the self-hosted coordinator binary.

mod config;
mod demo;
mod gitea;
mod glue;
mod healthcheck;
mod logging;
mod metrics;
mod peers;
mod probes;
mod repeats;
mod retention;
mod serve;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Exit status for configuration errors (EX_CONFIG from sysexits.h).
const EXIT_CONFIG: u8 = 78;

/// Coordinates AI coding agents working through a Gitea issue tracker.
#[derive(Debug, Parser)]
#[command(name = "mosaic-coordinator", version, about)]
struct Cli {
    /// TOML configuration file (default: ./mosaic.toml when it exists).
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the coordinator: webhook intake, health, metrics and API.
    Serve,
    /// Print the effective configuration (secrets redacted) and where each value came from.
    CheckConfig,
    /// Probe the local /health endpoint; exit 0 when it answers 200 (for container health checks).
    Healthcheck,
    /// Run a whole scenario with nothing else installed: a temporary store, a built-in mock
    /// Gitea and the built-in sample agent; prints progress and a summary table.
    Demo,
    /// Set the coordinator up on Gitea.
    Gitea {
        #[command(subcommand)]
        command: GiteaCommand,
    },
}

#[derive(Debug, Subcommand)]
enum GiteaCommand {
    /// Check the token, the bot's identity, the repositories it reaches and their webhooks.
    Check {
        /// The delivery address the webhooks should point at (default: `webhook.public_url`).
        #[arg(long)]
        url: Option<url::Url>,
        /// A repository (owner/name) to check instead of `gitea.repositories`; repeatable.
        #[arg(long = "repo")]
        repos: Vec<String>,
    },
    /// Create (or update) the repository webhook that delivers issue events here.
    InstallWebhook {
        /// Repository as owner/name.
        #[arg(long)]
        repo: String,
        /// The delivery address, e.g. https://mosaic.example.com/webhook/gitea
        /// (default: `webhook.public_url`).
        #[arg(long)]
        url: Option<url::Url>,
    },
}

/// Why the program stops early, mapped onto an exit status.
#[derive(Debug, thiserror::Error)]
enum Failure {
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    #[error(transparent)]
    Other(#[from] anyhow::Error),
}

/// The hidden subcommand that runs the built-in sample agent (what `demo` starts as its agent
/// processes), so a demo needs no second executable.
const SAMPLE_AGENT_COMMAND: &str = "sample-agent";

fn main() -> ExitCode {
    let mut args = std::env::args_os();
    if std::env::args_os()
        .nth(1)
        .is_some_and(|arg| arg == SAMPLE_AGENT_COMMAND)
    {
        let rest = args.by_ref().skip(2);
        let code = mosaic_sample_agent::run_cli(
            std::iter::once(std::ffi::OsString::from("mosaic-sample-agent")).chain(rest),
        );
        return ExitCode::from(u8::try_from(code).unwrap_or(1));
    }
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(Failure::Config(err)) => {
            eprintln!("mosaic-coordinator: {err}");
            ExitCode::from(EXIT_CONFIG)
        }
        Err(Failure::Other(err)) => {
            eprintln!("mosaic-coordinator: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<ExitCode, Failure> {
    if matches!(cli.command, Command::Demo) {
        // The demo brings its own configuration; the operator's is not read.
        logging::init(&logging::LogConfig {
            level: "warn".parse().unwrap_or_default(),
            format: logging::LogFormat::Pretty,
        });
        demo::run()?;
        return Ok(ExitCode::SUCCESS);
    }
    let sources = config::Sources::from_process(cli.config);
    let (config, figment) = config::load(&sources)?;
    match cli.command {
        Command::Serve => {
            config::validate_for_serve(&config)?;
            logging::init(&config.log);
            serve::run(config)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::CheckConfig => {
            #[allow(clippy::print_stdout)] // the command's output
            {
                print!("{}", config::render(&config, &figment));
            }
            // What `serve` would refuse, check-config refuses too (after showing what it read).
            config::validate(&config)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Healthcheck => Ok(healthcheck::run(&config.server)),
        Command::Demo => Ok(ExitCode::SUCCESS),
        Command::Gitea { command } => {
            logging::init(&config.log);
            match command {
                GiteaCommand::Check { url, repos } => gitea::check(&config, url, &repos),
                GiteaCommand::InstallWebhook { repo, url } => {
                    gitea::install_webhook(&config, &repo, url)
                }
            }
        }
    }
}
