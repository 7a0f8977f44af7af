//! Metrics gathered from the store, the Gitea client and the engine, registered in the HTTP
//! layer's registry. Values that live in the store are refreshed by a background task, so a
//! scrape never waits on a query.

use std::sync::atomic::AtomicU64;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use mosaic_engine::engine::Engine;
use mosaic_engine::outbox::OutboxStats;
use mosaic_engine::reconcile::ReconcileStats;
use mosaic_gitea::{CallObserver, CallOutcome};
use mosaic_store::Store;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CallLabels {
    operation: &'static str,
    status: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StatusLabels {
    status: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabels {
    state: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AgentLabels {
    agent: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SessionLabels {
    session: String,
}

/// Gauges refreshed from the engine.
#[derive(Debug, Clone, Default)]
pub struct EngineGauges {
    queue_depth: Family<StateLabels, Gauge>,
    running: Family<AgentLabels, Gauge>,
    context_percent: Family<SessionLabels, Gauge<f64, AtomicU64>>,
    compactions: Gauge,
    rotations: Gauge,
}

impl EngineGauges {
    async fn refresh(&self, engine: &Engine) {
        let stats = engine.stats().await;
        for (state, depth) in stats.queue_depth {
            self.queue_depth
                .get_or_create(&StateLabels { state })
                .set(as_i64(depth));
        }
        // Agents and sessions come and go: start from empty so ended ones disappear.
        self.running.clear();
        for (agent, running) in stats.running_by_agent {
            self.running
                .get_or_create(&AgentLabels { agent })
                .set(as_i64(running));
        }
        self.context_percent.clear();
        for (session, percent) in stats.context_percent {
            self.context_percent
                .get_or_create(&SessionLabels { session })
                .set(percent);
        }
        self.compactions.set(as_i64(stats.compactions));
        self.rotations.set(as_i64(stats.rotations));
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ModelLabels {
    provider: String,
    model: String,
}

/// Counts every Gitea request by operation and status.
#[derive(Debug, Clone)]
pub struct GiteaCalls {
    calls: Family<CallLabels, Counter>,
    seconds: Histogram,
}

impl CallObserver for GiteaCalls {
    fn observe(&self, operation: &'static str, outcome: CallOutcome, elapsed: Duration) {
        let status = match outcome {
            CallOutcome::Status(code) => code.to_string(),
            CallOutcome::Timeout => "timeout".to_owned(),
            CallOutcome::TransportError => "transport_error".to_owned(),
        };
        self.calls
            .get_or_create(&CallLabels { operation, status })
            .inc();
        self.seconds.observe(elapsed.as_secs_f64());
    }
}

/// Gauges refreshed from the store.
#[derive(Debug, Clone, Default)]
pub struct StoreGauges {
    deliveries: Family<StatusLabels, Gauge>,
    outbox: Family<StatusLabels, Gauge>,
    llm_calls: Family<ModelLabels, Gauge>,
    llm_input_tokens: Family<ModelLabels, Gauge>,
    llm_output_tokens: Family<ModelLabels, Gauge<f64, AtomicU64>>,
    llm_cost: Family<ModelLabels, Gauge<f64, AtomicU64>>,
    store_commits: Gauge,
    store_writes: Gauge,
}

fn as_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

impl StoreGauges {
    async fn refresh(&self, store: &dyn Store) -> Result<(), mosaic_store::StoreError> {
        let counts = store.delivery_counts().await?;
        for (status, n) in [
            ("pending", counts.pending),
            ("processed", counts.processed),
            ("ignored", counts.ignored),
            ("duplicate", counts.duplicate),
            ("failed", counts.failed),
        ] {
            self.deliveries
                .get_or_create(&StatusLabels { status })
                .set(as_i64(n));
        }
        let backlog = store.outbox_backlog().await?;
        self.outbox
            .get_or_create(&StatusLabels { status: "pending" })
            .set(as_i64(backlog.pending));
        self.outbox
            .get_or_create(&StatusLabels { status: "failed" })
            .set(as_i64(backlog.failed));
        for total in store.llm_usage_totals().await? {
            let labels = ModelLabels {
                provider: total.provider,
                model: total.model,
            };
            self.llm_calls
                .get_or_create(&labels)
                .set(as_i64(total.calls));
            self.llm_input_tokens
                .get_or_create(&labels)
                .set(as_i64(total.input_tokens));
            self.llm_output_tokens
                .get_or_create(&labels)
                .set(total.output_tokens as f64);
            self.llm_cost.get_or_create(&labels).set(total.cost_usd);
        }
        let stats = store.stats();
        self.store_commits.set(as_i64(stats.commits));
        self.store_writes.set(as_i64(stats.writes));
        Ok(())
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    kind: &'static str,
}

/// Counters of the outbox worker and the reconciler, read from their own stats.
#[derive(Debug, Clone, Default)]
pub struct WorkerGauges {
    outbox_writes: Family<KindLabels, Gauge>,
    reconcile: Family<KindLabels, Gauge>,
    outbox_stats: Arc<OnceLock<Arc<OutboxStats>>>,
    reconcile_stats: Arc<OnceLock<Arc<ReconcileStats>>>,
}

impl WorkerGauges {
    fn refresh(&self) {
        if let Some(stats) = self.outbox_stats.get() {
            let counts = stats.counts();
            for (kind, n) in [
                ("delivered", counts.delivered),
                ("retried", counts.retried),
                ("given_up", counts.given_up),
            ] {
                self.outbox_writes
                    .get_or_create(&KindLabels { kind })
                    .set(as_i64(n));
            }
        }
        if let Some(stats) = self.reconcile_stats.get() {
            let counts = stats.counts();
            for (kind, n) in [
                ("runs", counts.runs),
                ("failed_runs", counts.failed_runs),
                ("missed_assignment", counts.missed_assignments),
                ("missed_close", counts.missed_closes),
                ("missed_unassignment", counts.missed_unassignments),
                ("deleted", counts.deleted),
                ("dependencies_changed", counts.dependencies_changed),
                ("blocker_closed", counts.blockers_closed),
                ("duplicate", counts.duplicates),
                ("error", counts.errors),
            ] {
                self.reconcile
                    .get_or_create(&KindLabels { kind })
                    .set(as_i64(n));
            }
        }
    }
}

/// Everything the binary adds to `/metrics`.
#[derive(Debug, Clone)]
pub struct CoordinatorMetrics {
    pub gitea_calls: GiteaCalls,
    pub store: StoreGauges,
    pub engine: EngineGauges,
    pub workers: WorkerGauges,
}

impl CoordinatorMetrics {
    pub fn new() -> Self {
        Self {
            gitea_calls: GiteaCalls {
                calls: Family::default(),
                seconds: Histogram::new([0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0]),
            },
            store: StoreGauges::default(),
            engine: EngineGauges::default(),
            workers: WorkerGauges::default(),
        }
    }

    pub fn watch_outbox(&self, stats: Arc<OutboxStats>) {
        let _ = self.workers.outbox_stats.set(stats);
    }

    pub fn watch_reconciler(&self, stats: Arc<ReconcileStats>) {
        let _ = self.workers.reconcile_stats.set(stats);
    }

    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "gitea_calls",
            "Gitea API requests by operation and status",
            self.gitea_calls.calls.clone(),
        );
        registry.register(
            "gitea_call_seconds",
            "Gitea API request latency",
            self.gitea_calls.seconds.clone(),
        );
        let s = &self.store;
        registry.register("deliveries", "Inbox rows by status", s.deliveries.clone());
        registry.register("outbox_backlog", "Outbox items by status", s.outbox.clone());
        registry.register(
            "llm_calls",
            "LLM calls by provider and model",
            s.llm_calls.clone(),
        );
        registry.register(
            "llm_input_tokens",
            "LLM input tokens",
            s.llm_input_tokens.clone(),
        );
        registry.register(
            "llm_output_tokens",
            "LLM output tokens",
            s.llm_output_tokens.clone(),
        );
        registry.register("llm_cost_usd", "LLM cost in US dollars", s.llm_cost.clone());
        registry.register(
            "store_commits",
            "Store transactions committed since start",
            s.store_commits.clone(),
        );
        registry.register(
            "store_writes",
            "Store write requests since start",
            s.store_writes.clone(),
        );
        let e = &self.engine;
        registry.register(
            "queue_depth",
            "Coordinated issues by state",
            e.queue_depth.clone(),
        );
        registry.register(
            "running_sessions",
            "Agent sessions running, by agent",
            e.running.clone(),
        );
        registry.register(
            "session_context_percent",
            "Context window used by each live session, in percent",
            e.context_percent.clone(),
        );
        registry.register(
            "compactions",
            "Session compactions since start",
            e.compactions.clone(),
        );
        registry.register(
            "rotations",
            "Session rotations since start",
            e.rotations.clone(),
        );
        registry.register(
            "outbox_writes",
            "Gitea writes by the outbox worker since start: delivered, retried, given_up",
            self.workers.outbox_writes.clone(),
        );
        registry.register(
            "reconcile",
            "Reconciliation runs and the repairs they made since start, by kind",
            self.workers.reconcile.clone(),
        );
    }

    /// Refreshes the store- and engine-backed gauges every `every` until cancelled.
    pub async fn refresh_loop(
        self,
        store: Arc<dyn Store>,
        engine: Arc<OnceLock<Engine>>,
        every: Duration,
        cancel: CancellationToken,
    ) {
        loop {
            if let Err(err) = self.store.refresh(store.as_ref()).await {
                tracing::warn!(error = %err, "metrics refresh failed");
            }
            if let Some(engine) = engine.get() {
                self.engine.refresh(engine).await;
            }
            self.workers.refresh();
            tokio::select! {
                () = cancel.cancelled() => return,
                () = tokio::time::sleep(every) => {}
            }
        }
    }
}
