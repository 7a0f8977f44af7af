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
use mosaic_security::{Redactor, WebhookVerifier};
use mosaic_store::Store;
use mosaic_store_sqlite::SqliteStore;
use tokio::net::TcpListener;
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

use crate::Failure;
use crate::config::{Config, ConfigError};
use crate::glue::StoreParseCache;
use crate::metrics::CoordinatorMetrics;
use crate::probes::{
    CoordinationProbe, GiteaProbe, GiteaStatus, LastGiteaCall, Leadership, LeadershipProbe,
    LeaseClock, ObservedGiteaCalls, OutboxProbe, ParserProbe, StoreProbe, WorkspacesProbe,
};

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

/// The Gitea side as start-up sets it up: the identity is resolved in the background, so the
/// coordinator serves (and records deliveries) while Gitea is slow, hanging or down.
struct GiteaSetup {
    api: Option<Arc<dyn GiteaApi>>,
    status: Arc<RwLock<GiteaStatus>>,
    /// The latest call's outcome, for /health.
    last_call: Arc<LastGiteaCall>,
    /// The bot's identity once known (Gitea may be unreachable at start).
    identity: watch::Receiver<Option<BotIdentity>>,
    /// Set when Gitea's first answer refuses the coordinator (rejected token, wrong bot name):
    /// a configuration error that stops the start (exit 78).
    refused: watch::Receiver<Option<String>>,
}

fn set_status(status: &RwLock<GiteaStatus>, new: GiteaStatus) {
    match status.write() {
        Ok(mut guard) => *guard = new,
        Err(poisoned) => *poisoned.into_inner() = new,
    }
}

/// Sets up the Gitea client and starts resolving the bot's identity in the background. Never
/// waits on Gitea: a rejected token or a wrong bot name is reported through `refused` (the
/// start then ends with exit 78); an unreachable or hanging Gitea is retried with backoff.
fn connect_gitea(
    config: &Config,
    cancel: &CancellationToken,
    metrics: &CoordinatorMetrics,
) -> Result<GiteaSetup, Failure> {
    let (identity_tx, identity) = watch::channel(None);
    let (refused_tx, refused) = watch::channel(None);
    let last_call = Arc::new(LastGiteaCall::default());
    let disabled = |why: &str| GiteaSetup {
        api: None,
        status: Arc::new(RwLock::new(GiteaStatus::Disabled(why.to_owned()))),
        last_call: Arc::clone(&last_call),
        identity: identity.clone(),
        refused: refused.clone(),
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
        .with_observer(Arc::new(ObservedGiteaCalls {
            metrics: metrics.gitea_calls.clone(),
            last: Arc::clone(&last_call),
        }));
    let api: Arc<dyn GiteaApi> = Arc::new(client);
    let status = Arc::new(RwLock::new(GiteaStatus::Unreachable(
        "connecting".to_owned(),
    )));
    let expected = gitea.bot_username.clone();
    let assignee = gitea.assignee.clone();
    let task_api = Arc::clone(&api);
    let task_status = Arc::clone(&status);
    let cancel = cancel.clone();
    tokio::spawn(async move {
        let mut delay = Duration::from_secs(2);
        let mut first_answer = true;
        loop {
            match BotIdentity::resolve(task_api.as_ref(), expected.as_deref()).await {
                Ok(identity) => {
                    let identity = identity.with_assignee(assignee.as_deref());
                    tracing::info!(
                        bot = identity.login(),
                        acts_for = identity.acts_for(),
                        "connected to Gitea"
                    );
                    set_status(
                        &task_status,
                        GiteaStatus::Connected(identity.login().to_owned()),
                    );
                    let _ = identity_tx.send(Some(identity));
                    return;
                }
                Err(err) if err.is_fatal() && first_answer => {
                    let _ = refused_tx.send(Some(format!(
                        "Gitea refused the coordinator's identity: {err}"
                    )));
                    return;
                }
                Err(err) => {
                    // A fatal answer after an outage (token revoked meanwhile) cannot stop a
                    // running coordinator; it is reported and retried like the rest.
                    first_answer = false;
                    tracing::warn!(error = %err, "Gitea unavailable; accepting webhooks and retrying");
                    set_status(&task_status, GiteaStatus::Unreachable(err.to_string()));
                }
            }
            tokio::select! {
                () = cancel.cancelled() => return,
                () = tokio::time::sleep(delay) => {}
            }
            delay = (delay * 2).min(Duration::from_secs(60));
        }
    });
    Ok(GiteaSetup {
        api: Some(api),
        status,
        last_call,
        identity,
        refused,
    })
}

/// The environment quality gates start from: the coordinator's `PATH` (to find toolchains) and a
/// home of their own. Nothing else: gates run the agent's code, so no credential goes along.
fn gate_environment(
    home: &std::path::Path,
) -> Result<Vec<(std::ffi::OsString, std::ffi::OsString)>, ConfigError> {
    std::fs::create_dir_all(home).map_err(|err| {
        ConfigError(format!(
            "cannot create the quality gates' home `{}`: {err}",
            home.display()
        ))
    })?;
    let mut env = vec![("HOME".into(), home.as_os_str().to_owned())];
    if let Some(path) = std::env::var_os("PATH") {
        env.push(("PATH".into(), path));
    }
    Ok(env)
}

/// The store `store.url` names (`MOSAIC_DATABASE_URL`): PostgreSQL for `postgres://…`, the
/// embedded SQLite otherwise; each backend reads its own settings of `[store]`. The only place
/// that picks a backend. Migrations are applied here.
async fn open_store(config: &mosaic_store::StoreConfig) -> Result<Arc<dyn Store>, Failure> {
    let shown = config.shown_url();
    if mosaic_store_postgres::is_postgres_url(&config.url) {
        let options = mosaic_store_postgres::PostgresOptions {
            pool_size: config.pool_size,
            schema: config.schema.clone(),
            leader_lease: Duration::from_millis(config.leader_lease_ms),
            ..mosaic_store_postgres::PostgresOptions::default()
        };
        let store = mosaic_store_postgres::PostgresStore::connect(&config.url, options)
            .await
            .with_context(|| format!("cannot open the PostgreSQL store at {shown}"))?;
        return Ok(Arc::new(store));
    }
    let store =
        SqliteStore::open(config).with_context(|| format!("cannot open the store at {shown}"))?;
    Ok(Arc::new(store))
}

/// Runs the whole coordinator on `listener` until `shutdown` completes.
pub async fn run_on(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Failure> {
    let store = open_store(&config.store).await?;
    let verifier = WebhookVerifier::new(config.webhook.secrets.clone())
        .map_err(|err| ConfigError(format!("invalid configuration: `webhook.secrets`: {err}")))?;
    let in_force = crate::config::ProfilesInForce::from_config(&config)?;
    for name in &in_force.without_command {
        tracing::warn!(
            agent = %name,
            "agent profile `{name}` has no command ([runner.agents.{name}]): it is not assigned"
        );
    }
    for (name, limit) in &in_force.capped {
        tracing::info!(
            agent = %name,
            rotate_threshold = limit,
            "agent profile `{name}` runs Claude Code, which stops calling the model past 88.5% of its window: it rotates at {:.0}% at most",
            limit * 100.0
        );
    }
    let profiles = in_force.assignable();
    let parser = mosaic_parser::build_parser(
        &config.parser,
        profiles.as_ref().unwrap_or(&in_force.all).names(),
        Arc::new(StoreParseCache {
            store: Arc::clone(&store),
        }),
    )
    .map_err(|err| ConfigError(format!("invalid configuration: {err}")))?;
    let runner = config
        .runner
        .clone()
        .unwrap_or_else(|| mosaic_runner::RunnerConfig::new("data/work"));
    // Every configured secret: agent text is cleaned of them before it leaves (invariant 9).
    let redactor = crate::config::redactor(&config);
    let mut process_runtime = mosaic_runner::ProcessRuntime::new(runner.clone())
        .map_err(|err| ConfigError(format!("invalid configuration: {err}")))?
        .with_redactor(redactor.clone());
    // On PostgreSQL several coordinators may share the store, and every one of them runs
    // agents: the leader requests sessions and whichever coordinator has room claims them.
    let shared_sessions = mosaic_store_postgres::is_postgres_url(&config.store.url);
    // One git worktree per issue needs the bot token (clone and push) and Gitea to say where a
    // repository lives; without them sessions run in empty directories and nothing is pushed.
    let workspaces = match config.gitea.as_ref().and_then(|gitea| gitea.token.clone()) {
        Some(token) => {
            let git = mosaic_git::GitWorkspaces::new(config.workspace.clone(), token)
                .map_err(|err| ConfigError(format!("invalid configuration: {err}")))?;
            process_runtime = process_runtime
                .with_workspace_root(git.root())
                .map_err(|err| ConfigError(format!("invalid configuration: {err}")))?;
            let gate_env = gate_environment(&git.root().join("gate-home"))?;
            Some(mosaic_engine::engine::WorkspaceParts {
                workspaces: Arc::new(git),
                min_free_bytes: config.workspace.min_free_bytes,
                gates: config.gates.clone(),
                gate_env,
                follow_remote: shared_sessions,
            })
        }
        None => None,
    };
    // The sessions this coordinator claims work in worktrees of their own (`<root>/claimed`),
    // apart from the leader's, which verify and publish: each side removes its own.
    let claimed_workspaces: Option<Arc<dyn mosaic_workspace::Workspaces>> = match (
        &workspaces,
        config.gitea.as_ref().and_then(|gitea| gitea.token.clone()),
    ) {
        (Some(_), Some(token)) if shared_sessions => {
            let claimed = mosaic_workspace::WorkspaceConfig {
                root: config.workspace.root.join("claimed"),
                ..config.workspace.clone()
            };
            let git = mosaic_git::GitWorkspaces::new(claimed, token)
                .map_err(|err| ConfigError(format!("invalid configuration: {err}")))?;
            Some(Arc::new(git))
        }
        _ => None,
    };
    let session_log_dir = process_runtime.log_dir().to_path_buf();
    let runner_work_root = process_runtime.work_root().to_path_buf();
    let local_runtime: Arc<dyn AgentRuntime> = Arc::new(process_runtime);
    let runtime: Arc<dyn AgentRuntime> = if shared_sessions {
        Arc::new(mosaic_engine::cluster::RemoteRuntime::new(
            Arc::clone(&store),
            Arc::clone(&local_runtime),
            mosaic_engine::cluster::RemoteConfig {
                lost_after: Duration::from_millis(config.store.leader_lease_ms),
                ..mosaic_engine::cluster::RemoteConfig::default()
            },
        ))
    } else {
        Arc::clone(&local_runtime)
    };
    crate::logging::spawn_repeat_reporter();
    let notify = Arc::new(Notify::new());
    let cancel = CancellationToken::new();
    let metrics = CoordinatorMetrics::new();
    let gitea = connect_gitea(&config, &cancel, &metrics)?;
    let registry = mosaic_http::Metrics::new(|registry| metrics.register(registry));

    let bound = listener
        .local_addr()
        .context("cannot read the bound address")?;
    let state = mosaic_http::AppState::new(env!("CARGO_PKG_VERSION"))
        .with_request_timeout(Duration::from_secs(config.server.request_timeout_secs))
        .with_probe(Arc::new(StoreProbe {
            store: Arc::clone(&store),
        }))
        .with_probe(Arc::new(OutboxProbe {
            store: Arc::clone(&store),
            stuck_after: chrono::TimeDelta::minutes(15),
        }))
        .with_probe(Arc::new(GiteaProbe {
            status: Arc::clone(&gitea.status),
            last_call: Arc::clone(&gitea.last_call),
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
    let retention_status = mosaic_http::SharedRetention::default();
    let state = state.with_retention(Arc::clone(&retention_status));
    let engine_slot = state.engine_slot();
    let lease = Arc::new(LeaseClock::new(Duration::from_millis(
        config.store.leader_lease_ms,
    )));
    tokio::spawn(
        crate::retention::Retention {
            store: Arc::clone(&store),
            log_dir: session_log_dir,
            work_root: runner_work_root,
            engine: Arc::clone(&engine_slot),
            lease: Arc::clone(&lease),
            config: config.retention.clone(),
            metrics: metrics.retention.clone(),
            status: retention_status,
        }
        .run(cancel.clone()),
    );
    let idle_because = Arc::new(std::sync::OnceLock::new());
    let leadership = Arc::new(Leadership::default());
    let (lost_tx, mut lost_rx) = watch::channel(false);
    let lost_watch = lost_rx.clone();
    let state = state
        .with_probe(Arc::new(CoordinationProbe {
            engine: Arc::clone(&engine_slot),
            idle_because: Arc::clone(&idle_because),
            leadership: Arc::clone(&leadership),
        }))
        .with_probe(Arc::new(WorkspacesProbe {
            engine: Arc::clone(&engine_slot),
        }))
        .with_probe(Arc::new(LeadershipProbe {
            leadership: Arc::clone(&leadership),
        }))
        .with_probe(Arc::new(crate::peers::PeersProbe {
            store: Arc::clone(&store),
        }));
    let app = mosaic_http::router(state);
    // What this coordinator offers the others: nothing when it cannot run an agent.
    let capacity = if shared_sessions && profiles.is_some() {
        config.engine.max_concurrent_agents
    } else {
        0
    };
    let this_peer = crate::peers::ThisPeer::new(bound.port(), capacity);
    tokio::spawn(crate::peers::beat(
        Arc::clone(&store),
        this_peer.clone(),
        Arc::clone(&leadership),
        cancel.clone(),
    ));
    // Every coordinator sharing the store runs agents, leading or not.
    let session_worker = match (&profiles, shared_sessions) {
        (Some(profiles), true) => {
            let worker =
                mosaic_engine::cluster::SessionWorker::new(mosaic_engine::cluster::WorkerParts {
                    store: Arc::clone(&store),
                    runtime: Arc::clone(&local_runtime),
                    profiles: profiles.clone(),
                    gitea: gitea.api.clone(),
                    workspaces: claimed_workspaces,
                    peer: this_peer.peer(false),
                    config: mosaic_engine::cluster::WorkerConfig {
                        lost_after: Duration::from_millis(config.store.leader_lease_ms),
                        ..mosaic_engine::cluster::WorkerConfig::default()
                    },
                });
            tokio::spawn(crate::peers::follow_capacity(
                Arc::clone(&store),
                Arc::clone(&engine_slot),
                cancel.clone(),
            ));
            let cancel = cancel.clone();
            let (store, runner, this) = (Arc::clone(&store), runner.clone(), this_peer.clone());
            Some(tokio::spawn(async move {
                reap_left_by_previous_run(store.as_ref(), &runner, &this, &cancel).await;
                worker.run(cancel).await
            }))
        }
        _ => None,
    };

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
        lease: Arc::clone(&lease),
        notify,
        configured_login: config
            .gitea
            .as_ref()
            .and_then(|g| g.assignee.clone().or_else(|| g.bot_username.clone())),
        configured_bot: config.gitea.as_ref().and_then(|g| g.bot_username.clone()),
        redactor,
        workspaces,
        shared_sessions,
        peer_id: this_peer.id.clone(),
    };
    // Rows left pending by a crash are handled first, in order, as soon as the engine runs.
    let workers = tokio::spawn(run_workers(
        inputs,
        gitea.identity.clone(),
        gitea.api.is_some(),
        engine_slot,
        idle_because,
        Leading {
            leadership,
            lease: Arc::clone(&lease),
            lost: lost_tx,
        },
        cancel.clone(),
    ));

    tracing::info!(
        address = %bound,
        version = env!("CARGO_PKG_VERSION"),
        store = %config.store.shown_url(),
        parser = %parser.health().provider,
        api_auth = if config.api.token.is_some() { "bearer token" } else { "loopback only" },
        "listening"
    );
    if config.api.token.is_none() && !mosaic_http::is_loopback(bound.ip()) {
        // Behind a reverse proxy on this host every client looks like loopback.
        tracing::warn!(
            address = %bound,
            "listening beyond loopback without MOSAIC_API_TOKEN: the API answers every \
             loopback client, so behind a reverse proxy on this host anyone reaching the proxy \
             can use it; set MOSAIC_API_TOKEN"
        );
    }
    // Gitea refusing the coordinator's identity ends the start like any bad setting.
    let mut refused = gitea.refused.clone();
    let refusal = async move {
        // Without Gitea (or once connected) nobody sends: that is no reason to stop.
        if refused.wait_for(Option::is_some).await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    let lost = async move {
        if lost_rx.wait_for(|lost| *lost).await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    let stop = async move {
        tokio::select! {
            () = shutdown => {}
            () = refusal => {}
            () = lost => {}
        }
    };
    let lost_leadership = lost_watch;
    mosaic_http::serve(listener, app, stop, &config.server)
        .await
        .context("server failed")?;

    cancel.cancel();
    // Sessions are closed and their issues requeued; their processes get the kill grace.
    // The sessions this coordinator ran for the leader end too: pushed and reported.
    let stopped = async move {
        let _ = workers.await;
        if let Some(session_worker) = session_worker {
            let _ = session_worker.await;
        }
    };
    if tokio::time::timeout(Duration::from_secs(30), stopped)
        .await
        .is_err()
    {
        tracing::warn!("workers did not stop in time; unfinished work resumes at next start");
    }
    if let Some(refusal) = gitea.refused.borrow().clone() {
        return Err(ConfigError(refusal).into());
    }
    if *lost_leadership.borrow() {
        return Err(anyhow::anyhow!(
            "stopped: this coordinator lost its leadership (its hold on the database ended); another one may lead now"
        )
        .into());
    }
    tracing::info!("stopped");
    Ok(())
}

/// How a coordinator takes and keeps the leadership of those sharing its store.
struct Leading {
    leadership: Arc<Leadership>,
    /// Renewed at every check that this coordinator still leads.
    lease: Arc<LeaseClock>,
    /// Set when the leadership is lost: the process stops.
    lost: watch::Sender<bool>,
}

/// How often a standby asks for the leadership, and the leader checks it still holds it.
const LEADERSHIP_CHECK: Duration = Duration::from_secs(1);

impl Leading {
    /// Waits until this coordinator leads (`false`: cancelled first), then watches the hold in
    /// the background: once lost, nothing more is decided here and the process stops.
    async fn take(&self, store: &Arc<dyn Store>, cancel: &CancellationToken) -> bool {
        let mut said = false;
        loop {
            match store.try_lead().await {
                Ok(true) => break,
                Ok(false) => {
                    self.leadership.asked(None);
                    if !said {
                        tracing::info!(
                            "another coordinator leads: standing by (deliveries are recorded here and handled by the leader)"
                        );
                        said = true;
                    }
                }
                Err(err) => {
                    tracing::warn!(error = %err, "cannot ask for the leadership; trying again");
                    self.leadership.asked(Some(err.to_string()));
                }
            }
            tokio::select! {
                () = cancel.cancelled() => return false,
                () = tokio::time::sleep(LEADERSHIP_CHECK) => {}
            }
        }
        self.leadership.lead();
        self.lease.confirm();
        tracing::info!("leading: this coordinator decides and runs agents");
        let store = Arc::clone(store);
        let leadership = Arc::clone(&self.leadership);
        let lease = Arc::clone(&self.lease);
        let lost = self.lost.clone();
        let cancel = cancel.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    () = cancel.cancelled() => return,
                    () = tokio::time::sleep(LEADERSHIP_CHECK) => {}
                }
                if matches!(store.still_leading().await, Ok(true)) {
                    lease.confirm();
                } else {
                    tracing::error!(
                        "the leadership is lost (the database ended this coordinator's hold): stopping"
                    );
                    leadership.lose();
                    cancel.cancel();
                    let _ = lost.send(true);
                    return;
                }
            }
        });
        true
    }
}

/// What the engine and its workers are built from.
struct EngineInputs {
    store: Arc<dyn Store>,
    parser: Arc<dyn mosaic_parser::IssueParser>,
    gitea: Option<Arc<dyn GiteaApi>>,
    /// The assignable profiles; `None`: no profile has a command, nothing is coordinated.
    profiles: Option<mosaic_domain::AgentProfiles>,
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
    /// Whether this coordinator may still act as the leader (Gitea writes).
    lease: Arc<LeaseClock>,
    notify: Arc<Notify>,
    /// The login to act for when Gitea cannot tell (no token): `gitea.assignee` or
    /// `gitea.bot_username`.
    configured_login: Option<String>,
    /// The bot's own login when Gitea cannot tell: `gitea.bot_username`.
    configured_bot: Option<String>,
    redactor: Redactor,
    workspaces: Option<mosaic_engine::engine::WorkspaceParts>,
    /// Sessions are requested through the store and run by any coordinator sharing it.
    shared_sessions: bool,
    /// This coordinator among its peers.
    peer_id: String,
}

/// Starts the engine (dispatch, monitoring) and the inbox worker once the bot's login is known,
/// and runs them until `cancel`. Until then deliveries stay durable in the inbox; without any
/// login (no Gitea token, no configured name) deliveries are only recorded.
async fn run_workers(
    inputs: EngineInputs,
    mut identity: watch::Receiver<Option<BotIdentity>>,
    gitea_connected: bool,
    engine_slot: Arc<std::sync::OnceLock<Engine>>,
    idle_because: Arc<std::sync::OnceLock<String>>,
    leading: Leading,
    cancel: CancellationToken,
) {
    // Only the leader decides; a standby's HTTP intake still records every delivery.
    if !leading.take(&inputs.store, &cancel).await {
        return;
    }
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
    let profiles = match (&login, inputs.profiles.clone()) {
        (Some(_), Some(profiles)) => Some(profiles),
        (Some(_), None) => {
            let why = "no agent profile has a command ([runner.agents.<name>]): deliveries are recorded, nothing is coordinated";
            tracing::warn!("{why}");
            let _ = idle_because.set(why.to_owned());
            None
        }
        (None, _) => None,
    };
    let (Some(login), Some(profiles)) = (login, profiles) else {
        let why = "no bot login known (no GITEA_BOT_TOKEN and no gitea.bot_username): deliveries are recorded, nothing is coordinated";
        if idle_because.set(why.to_owned()).is_ok() {
            tracing::warn!("{why}");
        }
        let worker = InboxWorker::new(
            Arc::clone(&inputs.store),
            Arc::new(SnapshotHandler::new(Arc::clone(&inputs.store))),
            Arc::clone(&inputs.notify),
            inputs.inbox.clone(),
        );
        worker.run(cancel).await;
        return;
    };
    // The bot's own events are only recorded; it may differ from the assignee it works for.
    let bot_login = identity
        .as_ref()
        .map(|id| id.login().to_owned())
        .or_else(|| inputs.configured_bot.clone())
        .unwrap_or_else(|| login.clone());
    if inputs.shared_sessions {
        // Recovery records every session left open as interrupted: their claimants are told to
        // stop (and push what their agents did) before the issues are requested again. Not
        // before that is stored: a claimant left running would work beside the next session.
        for attempt in 1u32.. {
            match inputs.store.cancel_session_requests(None).await {
                Ok(0) => break,
                Ok(cancelled) => {
                    tracing::info!(
                        cancelled,
                        "cancelled the sessions the previous leader had requested"
                    );
                    break;
                }
                // Deposed meanwhile: the leadership check stops this process.
                Err(err @ mosaic_store::StoreError::Fenced { .. }) => {
                    tracing::error!(error = %err, "lost the leadership before recovery");
                    return;
                }
                Err(err) => {
                    tracing::error!(error = %err, attempt, "cannot cancel the previous leader's session requests; trying again");
                    tokio::select! {
                        () = cancel.cancelled() => return,
                        () = tokio::time::sleep(mosaic_engine::backoff::jittered(500, 10_000, attempt)) => {}
                    }
                }
            }
        }
    }
    reap_orphans(
        inputs.store.as_ref(),
        &inputs.runner,
        inputs.shared_sessions,
        &inputs.peer_id,
    )
    .await;
    let parts = EngineParts {
        store: Arc::clone(&inputs.store),
        parser: inputs.parser,
        gitea: inputs.gitea.clone(),
        acts_for: login.clone(),
        bot_login,
        redactor: inputs.redactor,
        profiles,
        policy: inputs.policy,
        priorities: inputs.priorities,
        runtime: inputs.runtime,
        config: inputs.config,
        workspaces: inputs.workspaces,
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
        .with_bot_login(identity.login())
        .with_write_gate({
            let lease = Arc::clone(&inputs.lease);
            Arc::new(move || lease.holds())
        });
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
/// two agents at once (invariant 6). With sessions shared among coordinators, their processes are
/// found by the pid their claimant reported — on this host only — except those this coordinator
/// runs itself (`this_peer`): told to stop by the cancelled request, it pushes their work first.
/// (A live claimant on the same host has its agent ended too — which claimant is alive cannot
/// be told for certain in the second after a leader died — and its worker still commits and
/// pushes what the agent left.)
async fn reap_orphans(
    store: &dyn Store,
    runner: &mosaic_runner::RunnerConfig,
    shared: bool,
    this_peer: &str,
) {
    let sessions = match store.open_sessions().await {
        Ok(sessions) => sessions,
        Err(err) => {
            tracing::error!(error = %err, "cannot list the sessions left open; none reaped");
            return;
        }
    };
    let mut reported = std::collections::HashMap::new();
    let mut own_claims = std::collections::HashSet::new();
    if shared && !sessions.is_empty() {
        let ids: Vec<String> = sessions.iter().map(|session| session.id.clone()).collect();
        match store.session_requests(&ids).await {
            Ok(views) => {
                for view in views {
                    if view.claimant.as_deref() == Some(this_peer) {
                        own_claims.insert(view.session_id.clone());
                    }
                    if let Some(process) = view
                        .state_json
                        .as_deref()
                        .and_then(mosaic_engine::cluster::reported_process)
                    {
                        reported.insert(view.session_id, process);
                    }
                }
            }
            Err(err) => {
                tracing::warn!(error = %err, "cannot read the requested sessions' processes")
            }
        }
    }
    let recorded: Vec<mosaic_runner::orphans::RecordedSession> = sessions
        .into_iter()
        .filter(|session| !own_claims.contains(&session.id))
        .filter_map(|session| {
            let (pid, started_at) = match (session.pid, reported.get(&session.id)) {
                (_, Some(process)) => *process,
                (Some(pid), None) => (pid, session.started_at),
                (None, None) => return None,
            };
            Some(mosaic_runner::orphans::RecordedSession {
                pid,
                session_id: session.id,
                agent: session.agent,
                started_at,
            })
        })
        .collect();
    reap(runner, recorded).await;
}

async fn reap(
    runner: &mosaic_runner::RunnerConfig,
    recorded: Vec<mosaic_runner::orphans::RecordedSession>,
) {
    if !recorded.is_empty() {
        let outcomes = mosaic_runner::orphans::reap(runner, &recorded).await;
        tracing::info!(
            sessions = outcomes.len(),
            ?outcomes,
            "checked sessions left open by the previous run"
        );
    }
}

/// The sessions an earlier process of this coordinator (the same name) claimed and did not
/// end: its agents survived it (SIGKILL, a panic). They are ended before this one claims
/// anything, so a session's worktree never has two agents; their leader finds them silent.
async fn reap_left_by_previous_run(
    store: &dyn Store,
    runner: &mosaic_runner::RunnerConfig,
    this: &crate::peers::ThisPeer,
    cancel: &CancellationToken,
) {
    // Tried until the store answers (at a start the database may not be up yet): claiming
    // before would risk a second agent in a worktree the first still works in.
    let mut attempt = 0u32;
    let (left, views) = loop {
        attempt = attempt.saturating_add(1);
        let read = async {
            let left = store.sessions_left_by(&this.name, &this.id).await?;
            let ids: Vec<String> = left
                .iter()
                .map(|request| request.session_id.clone())
                .collect();
            let views = if ids.is_empty() {
                Vec::new()
            } else {
                store.session_requests(&ids).await?
            };
            Ok::<_, mosaic_store::StoreError>((left, views))
        };
        match read.await {
            Ok(read) => break read,
            Err(err) => {
                if attempt == 1 || attempt.is_multiple_of(20) {
                    tracing::warn!(error = %err, attempt, "cannot read the sessions an earlier run of this coordinator left; trying again before claiming any");
                }
                tokio::select! {
                    () = cancel.cancelled() => return,
                    () = tokio::time::sleep(mosaic_engine::backoff::jittered(500, 10_000, attempt)) => {}
                }
            }
        }
    };
    let recorded = left
        .into_iter()
        .filter_map(|request| {
            let view = views
                .iter()
                .find(|view| view.session_id == request.session_id)?;
            let (pid, started_at) = view
                .state_json
                .as_deref()
                .and_then(mosaic_engine::cluster::reported_process)?;
            Some(mosaic_runner::orphans::RecordedSession {
                pid,
                session_id: request.session_id,
                agent: request.agent,
                started_at,
            })
        })
        .collect();
    reap(runner, recorded).await;
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
