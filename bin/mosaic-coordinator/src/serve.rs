//! `serve`: builds every component from the configuration and runs until SIGTERM/SIGINT.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use mosaic_engine::inbox::{InboxWorker, SnapshotHandler};
use mosaic_security::WebhookVerifier;
use mosaic_store::Store;
use mosaic_store::sqlite::SqliteStore;
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::probes::StoreProbe;

pub fn run(config: Config) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(serve(config))
}

async fn serve(config: Config) -> anyhow::Result<()> {
    let store: Arc<dyn Store> = Arc::new(
        SqliteStore::open(&config.store)
            .with_context(|| format!("cannot open the store at {}", config.store.url))?,
    );
    let verifier =
        WebhookVerifier::new(config.webhook.secrets.clone()).context("invalid webhook secrets")?;
    let notify = Arc::new(Notify::new());
    let cancel = CancellationToken::new();

    // The inbox worker starts before the listener: rows left pending by a crash are handled
    // first, in order.
    let worker = InboxWorker::new(
        Arc::clone(&store),
        Arc::new(SnapshotHandler::new(Arc::clone(&store))),
        Arc::clone(&notify),
        config.inbox.clone(),
    );
    let worker_task = tokio::spawn(worker.run(cancel.clone()));

    let address = SocketAddr::new(config.server.host, config.server.port.get());
    let listener = TcpListener::bind(address)
        .await
        .with_context(|| format!("cannot listen on {address}"))?;
    let bound = listener
        .local_addr()
        .context("cannot read the bound address")?;

    let state = mosaic_http::AppState::new(env!("CARGO_PKG_VERSION"))
        .with_request_timeout(Duration::from_secs(config.server.request_timeout_secs))
        .with_probe(Arc::new(StoreProbe {
            store: Arc::clone(&store),
        }))
        .with_api_token(config.api.token.clone())
        .with_intake(mosaic_http::Intake {
            verifier,
            store: Arc::clone(&store),
            max_body_bytes: config.webhook.max_body_bytes,
            notify,
        });
    let app = mosaic_http::router(state);

    tracing::info!(
        address = %bound,
        version = env!("CARGO_PKG_VERSION"),
        store = %config.store.url,
        api_auth = if config.api.token.is_some() { "bearer token" } else { "loopback only" },
        "listening"
    );
    mosaic_http::serve(
        listener,
        app,
        shutdown_signal(),
        Duration::from_secs(config.server.shutdown_grace_secs),
    )
    .await
    .context("server failed")?;

    cancel.cancel();
    if tokio::time::timeout(Duration::from_secs(5), worker_task)
        .await
        .is_err()
    {
        tracing::warn!("inbox worker did not stop in time; pending rows resume at next start");
    }
    tracing::info!("stopped");
    Ok(())
}

/// Completes on SIGTERM or SIGINT (Ctrl-C).
async fn shutdown_signal() {
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
