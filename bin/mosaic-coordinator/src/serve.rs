//! `serve`: builds every component from the configuration and runs until SIGTERM/SIGINT.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::Context;
use mosaic_context::AgentRuntime;
use mosaic_engine::engine::{Engine, EngineParts};
use mosaic_engine::inbox::{InboxWorker, SnapshotHandler};
use mosaic_engine::outbox::OutboxWorker;
use mosaic_engine::reconcile::{ReconcileConfig, Reconciler};
use mosaic_gitea::{BotIdentity, GiteaApi, GiteaClient};
use mosaic_security::WebhookVerifier;
use mosaic_store::Store;
use mosaic_store::sqlite::SqliteStore;
use tokio::net::TcpListener;
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

use crate::Failure;
use crate::config::{Config, ConfigError};
use crate::glue::StoreParseCache;
use crate::metrics::CoordinatorMetrics;
use crate::probes::{GiteaProbe, GiteaStatus, ParserProbe, StoreProbe};

pub fn run(config: Config) -> Result<(), Failure> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        let address = SocketAddr::new(config.server.host, config.server.port.get());
        let listener = TcpListener::bind(address)
            .await
            .with_context(|| format!("cannot listen on {address}"))?;
        run_on(config, listener, shutdown_signal()).await
    })
}

/// The Gitea side as far as start-up could establish it.
struct GiteaSetup {
    api: Option<Arc<dyn GiteaApi>>,
    status: Arc<RwLock<GiteaStatus>>,
    /// The bot's identity once known (Gitea may be unreachable at start).
    identity: watch::Receiver<Option<BotIdentity>>,
}

fn set_status(status: &RwLock<GiteaStatus>, new: GiteaStatus) {
    match status.write() {
        Ok(mut guard) => *guard = new,
        Err(poisoned) => *poisoned.into_inner() = new,
    }
}

/// Connects to Gitea: a rejected token or a wrong bot name stops the start (exit 78); an
/// unreachable Gitea does not — the coordinator accepts webhooks and keeps trying.
async fn connect_gitea(
    config: &Config,
    cancel: &CancellationToken,
    metrics: &CoordinatorMetrics,
) -> Result<GiteaSetup, Failure> {
    let (identity_tx, identity) = watch::channel(None);
    let disabled = |why: &str| GiteaSetup {
        api: None,
        status: Arc::new(RwLock::new(GiteaStatus::Disabled(why.to_owned()))),
        identity: identity.clone(),
    };
    let Some(gitea) = &config.gitea else {
        tracing::warn!(
            "no Gitea configured (GITEA_URL): deliveries are recorded, nothing is read from or written to Gitea"
        );
        return Ok(disabled("not configured (GITEA_URL)"));
    };
    if gitea.token.is_none() {
        tracing::warn!("no GITEA_BOT_TOKEN: deliveries are recorded, nothing is written to Gitea");
        return Ok(disabled("no GITEA_BOT_TOKEN: nothing is written to Gitea"));
    }
    let client = GiteaClient::new(gitea)
        .context("cannot build the Gitea client")?
        .with_observer(Arc::new(metrics.gitea_calls.clone()));
    let api: Arc<dyn GiteaApi> = Arc::new(client);
    let status = Arc::new(RwLock::new(GiteaStatus::Unreachable(
        "connecting".to_owned(),
    )));
    let expected = gitea.bot_username.clone();
    let assignee = gitea.assignee.clone();

    match BotIdentity::resolve(api.as_ref(), expected.as_deref()).await {
        Ok(identity) => {
            let identity = identity.with_assignee(assignee.as_deref());
            tracing::info!(
                bot = identity.login(),
                acts_for = identity.acts_for(),
                "connected to Gitea"
            );
            set_status(&status, GiteaStatus::Connected(identity.login().to_owned()));
            let _ = identity_tx.send(Some(identity));
        }
        Err(err) if err.is_fatal() => {
            return Err(
                ConfigError(format!("Gitea refused the coordinator's identity: {err}")).into(),
            );
        }
        Err(err) => {
            tracing::warn!(error = %err, "Gitea unreachable at start; accepting webhooks and retrying");
            set_status(&status, GiteaStatus::Unreachable(err.to_string()));
            let api = Arc::clone(&api);
            let status = Arc::clone(&status);
            let cancel = cancel.clone();
            tokio::spawn(async move {
                let mut delay = Duration::from_secs(2);
                loop {
                    tokio::select! {
                        () = cancel.cancelled() => return,
                        () = tokio::time::sleep(delay) => {}
                    }
                    match BotIdentity::resolve(api.as_ref(), expected.as_deref()).await {
                        Ok(identity) => {
                            let identity = identity.with_assignee(assignee.as_deref());
                            tracing::info!(bot = identity.login(), "connected to Gitea");
                            set_status(
                                &status,
                                GiteaStatus::Connected(identity.login().to_owned()),
                            );
                            let _ = identity_tx.send(Some(identity));
                            return;
                        }
                        Err(err) => {
                            // A fatal answer after start (token revoked meanwhile) cannot stop a
                            // running coordinator; it is reported and retried like the rest.
                            tracing::warn!(error = %err, "Gitea still unavailable");
                            set_status(&status, GiteaStatus::Unreachable(err.to_string()));
                            delay = (delay * 2).min(Duration::from_secs(60));
                        }
                    }
                }
            });
        }
    }
    Ok(GiteaSetup {
        api: Some(api),
        status,
        identity,
    })
}

/// Runs the whole coordinator on `listener` until `shutdown` completes.
pub async fn run_on(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Failure> {
    let store: Arc<dyn Store> = Arc::new(
        SqliteStore::open(&config.store)
            .with_context(|| format!("cannot open the store at {}", config.store.url))?,
    );
    let verifier = WebhookVerifier::new(config.webhook.secrets.clone())
        .map_err(|err| ConfigError(format!("invalid configuration: `webhook.secrets`: {err}")))?;
    let profiles = crate::config::agent_profiles(&config)?;
    let parser = mosaic_parser::build_parser(
        &config.parser,
        profiles.names(),
        Arc::new(StoreParseCache {
            store: Arc::clone(&store),
        }),
    )
    .map_err(|err| ConfigError(format!("invalid configuration: {err}")))?;
    let runner = config
        .runner
        .clone()
        .unwrap_or_else(|| mosaic_runner::RunnerConfig::new("data/work"));
    let runtime: Arc<dyn AgentRuntime> = Arc::new(
        mosaic_runner::ProcessRuntime::new(runner.clone())
            .map_err(|err| ConfigError(format!("invalid configuration: {err}")))?,
    );
    let notify = Arc::new(Notify::new());
    let cancel = CancellationToken::new();
    let metrics = CoordinatorMetrics::new();
    let gitea = connect_gitea(&config, &cancel, &metrics).await?;
    let registry = mosaic_http::Metrics::new(|registry| metrics.register(registry));

    let bound = listener
        .local_addr()
        .context("cannot read the bound address")?;
    let state = mosaic_http::AppState::new(env!("CARGO_PKG_VERSION"))
        .with_request_timeout(Duration::from_secs(config.server.request_timeout_secs))
        .with_probe(Arc::new(StoreProbe {
            store: Arc::clone(&store),
        }))
        .with_probe(Arc::new(GiteaProbe {
            status: Arc::clone(&gitea.status),
        }))
        .with_probe(Arc::new(ParserProbe {
            parser: Arc::clone(&parser),
        }))
        .with_api_token(config.api.token.clone())
        .with_metrics(registry)
        .with_intake(mosaic_http::Intake {
            verifier,
            store: Arc::clone(&store),
            max_body_bytes: config.webhook.max_body_bytes,
            notify: Arc::clone(&notify),
        });
    let engine_slot = state.engine_slot();
    let app = mosaic_http::router(state);

    tokio::spawn(metrics.clone().refresh_loop(
        Arc::clone(&store),
        Arc::clone(&engine_slot),
        Duration::from_secs(5),
        cancel.clone(),
    ));
    let inputs = EngineInputs {
        store: Arc::clone(&store),
        parser: Arc::clone(&parser),
        gitea: gitea.api.clone(),
        profiles,
        policy: config.assignment,
        priorities: config.priorities.clone(),
        runtime,
        runner,
        config: config.engine.clone(),
        inbox: config.inbox.clone(),
        outbox: config.outbox.clone(),
        reconcile: config.gitea.as_ref().map(ReconcileConfig::from_gitea),
        metrics: metrics.clone(),
        notify,
        configured_login: config
            .gitea
            .as_ref()
            .and_then(|g| g.assignee.clone().or_else(|| g.bot_username.clone())),
    };
    // Rows left pending by a crash are handled first, in order, as soon as the engine runs.
    let workers = tokio::spawn(run_workers(
        inputs,
        gitea.identity.clone(),
        gitea.api.is_some(),
        engine_slot,
        cancel.clone(),
    ));

    tracing::info!(
        address = %bound,
        version = env!("CARGO_PKG_VERSION"),
        store = %config.store.url,
        parser = %parser.health().provider,
        api_auth = if config.api.token.is_some() { "bearer token" } else { "loopback only" },
        "listening"
    );
    mosaic_http::serve(
        listener,
        app,
        shutdown,
        Duration::from_secs(config.server.shutdown_grace_secs),
    )
    .await
    .context("server failed")?;

    cancel.cancel();
    // Sessions are closed and their issues requeued; their processes get the kill grace.
    if tokio::time::timeout(Duration::from_secs(30), workers)
        .await
        .is_err()
    {
        tracing::warn!("workers did not stop in time; unfinished work resumes at next start");
    }
    tracing::info!("stopped");
    Ok(())
}

/// What the engine and its workers are built from.
struct EngineInputs {
    store: Arc<dyn Store>,
    parser: Arc<dyn mosaic_parser::IssueParser>,
    gitea: Option<Arc<dyn GiteaApi>>,
    profiles: mosaic_domain::AgentProfiles,
    policy: mosaic_domain::assignment::AssignmentPolicy,
    priorities: mosaic_domain::PriorityOrder,
    runtime: Arc<dyn AgentRuntime>,
    /// To find the agent processes a killed coordinator left running.
    runner: mosaic_runner::RunnerConfig,
    config: mosaic_engine::engine::EngineConfig,
    inbox: mosaic_engine::inbox::InboxConfig,
    outbox: mosaic_engine::outbox::OutboxConfig,
    reconcile: Option<ReconcileConfig>,
    metrics: CoordinatorMetrics,
    notify: Arc<Notify>,
    /// The login to act for when Gitea cannot tell (no token): `gitea.assignee` or
    /// `gitea.bot_username`.
    configured_login: Option<String>,
}

/// Starts the engine (dispatch, monitoring) and the inbox worker once the bot's login is known,
/// and runs them until `cancel`. Until then deliveries stay durable in the inbox; without any
/// login (no Gitea token, no configured name) deliveries are only recorded.
async fn run_workers(
    inputs: EngineInputs,
    mut identity: watch::Receiver<Option<BotIdentity>>,
    gitea_connected: bool,
    engine_slot: Arc<std::sync::OnceLock<Engine>>,
    cancel: CancellationToken,
) {
    let identity = if gitea_connected {
        tokio::select! {
            () = cancel.cancelled() => return,
            known = identity.wait_for(Option::is_some) => known.ok().and_then(|id| id.clone()),
        }
    } else {
        None
    };
    let login = identity
        .as_ref()
        .map(|id| id.acts_for().to_owned())
        .or_else(|| inputs.configured_login.clone());
    let Some(login) = login else {
        tracing::warn!(
            "no bot login known (no GITEA_BOT_TOKEN and no gitea.bot_username): deliveries are recorded, nothing is coordinated"
        );
        let worker = InboxWorker::new(
            Arc::clone(&inputs.store),
            Arc::new(SnapshotHandler::new(Arc::clone(&inputs.store))),
            Arc::clone(&inputs.notify),
            inputs.inbox.clone(),
        );
        worker.run(cancel).await;
        return;
    };
    reap_orphans(inputs.store.as_ref(), &inputs.runner).await;
    let parts = EngineParts {
        store: Arc::clone(&inputs.store),
        parser: inputs.parser,
        gitea: inputs.gitea.clone(),
        acts_for: login.clone(),
        profiles: inputs.profiles,
        policy: inputs.policy,
        priorities: inputs.priorities,
        runtime: inputs.runtime,
        config: inputs.config,
    };
    let (engine, report) = loop {
        match Engine::start(parts.clone()).await {
            Ok(started) => break started,
            Err(err) => {
                tracing::error!(error = %err, "the engine could not start; retrying");
                tokio::select! {
                    () = cancel.cancelled() => return,
                    () = tokio::time::sleep(Duration::from_secs(5)) => {}
                }
            }
        }
    };
    tracing::info!(acts_for = %login, ?report, "engine started");
    let _ = engine_slot.set(engine.clone());
    let inbox = InboxWorker::new(
        Arc::clone(&inputs.store),
        Arc::new(engine.clone()),
        Arc::clone(&inputs.notify),
        inputs.inbox,
    );
    let mut tasks = vec![tokio::spawn(inbox.run(cancel.clone()))];
    // Writes to Gitea and repairs of missed events need a connected Gitea; without one the
    // outbox keeps the writes (durable) until a token is configured.
    if let (Some(api), Some(identity)) = (inputs.gitea, identity) {
        let outbox = OutboxWorker::new(
            Arc::clone(&inputs.store),
            Arc::clone(&api),
            Arc::new(Notify::new()),
            inputs.outbox,
        )
        .with_bot_login(identity.login());
        inputs.metrics.watch_outbox(outbox.stats());
        tasks.push(tokio::spawn(outbox.run(cancel.clone())));
        if let Some(config) = inputs.reconcile {
            let reconciler = Reconciler::new(
                Arc::clone(&inputs.store),
                api,
                identity,
                config,
                Arc::clone(&inputs.notify),
            );
            inputs.metrics.watch_reconciler(reconciler.stats());
            tasks.push(tokio::spawn(reconciler.run(cancel.clone())));
        }
    }
    engine.run(cancel).await;
    for task in tasks {
        let _ = task.await;
    }
}

/// Sessions the store still lists as running belonged to a coordinator that died; their process
/// groups survive it. End them before recovery dispatches the issues again, so no issue ever has
/// two agents at once (invariant 6).
async fn reap_orphans(store: &dyn Store, runner: &mosaic_runner::RunnerConfig) {
    let sessions = match store.open_sessions().await {
        Ok(sessions) => sessions,
        Err(err) => {
            tracing::error!(error = %err, "cannot list the sessions left open; none reaped");
            return;
        }
    };
    let recorded: Vec<mosaic_runner::orphans::RecordedSession> = sessions
        .into_iter()
        .filter_map(|session| {
            Some(mosaic_runner::orphans::RecordedSession {
                pid: session.pid?,
                session_id: session.id,
                agent: session.agent,
                started_at: session.started_at,
            })
        })
        .collect();
    if !recorded.is_empty() {
        let outcomes = mosaic_runner::orphans::reap(runner, &recorded).await;
        tracing::info!(
            sessions = outcomes.len(),
            ?outcomes,
            "checked sessions left open by the previous run"
        );
    }
}

/// Completes on SIGTERM or SIGINT (Ctrl-C).
pub async fn shutdown_signal() {
    let interrupt = async {
        if let Err(err) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %err, "cannot listen for SIGINT");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(err) => {
                tracing::error!(error = %err, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = interrupt => tracing::info!("SIGINT received"),
        () = terminate => tracing::info!("SIGTERM received"),
    }
}
