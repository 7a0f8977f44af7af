//! Metrics gathered from the store, the Gitea client and the engine, registered in the HTTP
//! layer's registry. Values that live in the store are refreshed by a background task, so a
//! scrape never waits on a query.

use std::collections::BTreeMap;
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

/// A quality gate's configured name (operator or repository file: a bounded set).
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GateLabels {
    gate: String,
}

/// Buckets of the context-use histogram (fraction of the window): the compaction and rotation
/// thresholds (0.80, 0.95) are bucket bounds.
const CONTEXT_BUCKETS: [f64; 10] = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95];

/// Raises a counter to `total`, a cumulative figure read from elsewhere (the store, a worker's
/// stats). Totals only grow; a smaller one (a restart of its source) leaves the counter as is.
fn advance(counter: &Counter, total: u64) {
    let current = counter.get();
    if total > current {
        counter.inc_by(total - current);
    }
}

fn advance_f64(counter: &Counter<f64, AtomicU64>, total: f64) {
    let current = counter.get();
    if total > current {
        counter.inc_by(total - current);
    }
}

/// Refreshed from the engine. No family is labelled by session or issue: those come and go
/// without bound; context use is a histogram instead.
#[derive(Debug, Clone)]
pub struct EngineGauges {
    queue_depth: Family<StateLabels, Gauge>,
    running: Family<AgentLabels, Gauge>,
    /// Each live session's context use, sampled at every refresh.
    context_use: Histogram,
    compactions: Counter,
    rotations: Counter,
    gate_runs: Family<GateLabels, Counter>,
    gate_failures: Family<GateLabels, Counter>,
    gate_continuations: Counter,
    /// Worktrees held, what they hold and the free space under the workspace root.
    workspaces: Gauge,
    workspace_bytes: Gauge,
    workspace_free_bytes: Gauge,
}

impl Default for EngineGauges {
    fn default() -> Self {
        Self {
            queue_depth: Family::default(),
            running: Family::default(),
            context_use: Histogram::new(CONTEXT_BUCKETS),
            compactions: Counter::default(),
            rotations: Counter::default(),
            gate_runs: Family::default(),
            gate_failures: Family::default(),
            gate_continuations: Counter::default(),
            workspaces: Gauge::default(),
            workspace_bytes: Gauge::default(),
            workspace_free_bytes: Gauge::default(),
        }
    }
}

impl EngineGauges {
    async fn refresh(&self, engine: &Engine) {
        let stats = engine.stats().await;
        for (state, depth) in stats.queue_depth {
            self.queue_depth
                .get_or_create(&StateLabels { state })
                .set(as_i64(depth));
        }
        // Agents come and go: start from empty so ended ones disappear.
        self.running.clear();
        for (agent, running) in stats.running_by_agent {
            self.running
                .get_or_create(&AgentLabels { agent })
                .set(as_i64(running));
        }
        for percent in stats.context_percent.values() {
            self.context_use.observe(percent / 100.0);
        }
        advance(&self.compactions, stats.compactions);
        advance(&self.rotations, stats.rotations);
        for (gate, runs) in stats.gate_runs {
            advance(&self.gate_runs.get_or_create(&GateLabels { gate }), runs);
        }
        for (gate, failures) in stats.gate_failures {
            advance(
                &self.gate_failures.get_or_create(&GateLabels { gate }),
                failures,
            );
        }
        advance(&self.gate_continuations, stats.gate_continuations);
        self.workspace_usage(engine).await;
    }

    /// On a coordinator that does not lead, the whole system's queue and running sessions
    /// as the shared store has them (the leader's live figures — context use, gate runs,
    /// its worktrees — are the leader's /metrics).
    async fn refresh_from_store(&self, store: &dyn Store) -> Result<(), mosaic_store::StoreError> {
        let counts = store.issue_state_counts().await?;
        for state in mosaic_domain::IssueState::ALL {
            let depth = counts
                .iter()
                .find(|(counted, _)| *counted == state)
                .map_or(0, |(_, n)| *n);
            self.queue_depth
                .get_or_create(&StateLabels {
                    state: state.as_str().to_owned(),
                })
                .set(as_i64(depth));
        }
        let mut running: BTreeMap<String, u64> = BTreeMap::new();
        for session in store.open_sessions().await? {
            *running.entry(session.agent).or_default() += 1;
        }
        self.running.clear();
        for (agent, n) in running {
            self.running
                .get_or_create(&AgentLabels { agent })
                .set(as_i64(n));
        }
        Ok(())
    }

    async fn workspace_usage(&self, engine: &Engine) {
        if let Some(usage) = engine.workspace_usage().await {
            self.workspaces.set(as_i64(usage.workspaces));
            self.workspace_bytes.set(as_i64(usage.bytes));
            self.workspace_free_bytes
                .set(usage.free_bytes.map_or(-1, as_i64));
        }
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

/// One kind of token an agent reported.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AgentTokenLabels {
    agent: String,
    kind: &'static str,
}

/// Refreshed from the store.
#[derive(Debug, Clone, Default)]
pub struct StoreGauges {
    agent_sessions: Family<AgentLabels, Counter>,
    agent_tokens: Family<AgentTokenLabels, Counter>,
    agent_cost: Family<AgentLabels, Counter<f64, AtomicU64>>,
    deliveries: Family<StatusLabels, Gauge>,
    outbox: Family<StatusLabels, Gauge>,
    llm_calls: Family<ModelLabels, Counter>,
    llm_input_tokens: Family<ModelLabels, Counter>,
    llm_output_tokens: Family<ModelLabels, Counter>,
    llm_cost: Family<ModelLabels, Counter<f64, AtomicU64>>,
    store_commits: Counter,
    store_writes: Counter,
    coordinators_alive: Gauge,
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
            advance(&self.llm_calls.get_or_create(&labels), total.calls);
            advance(
                &self.llm_input_tokens.get_or_create(&labels),
                total.input_tokens,
            );
            advance(
                &self.llm_output_tokens.get_or_create(&labels),
                total.output_tokens,
            );
            advance_f64(&self.llm_cost.get_or_create(&labels), total.cost_usd);
        }
        for total in store.agent_spend_totals().await? {
            let agent = AgentLabels {
                agent: total.agent.clone(),
            };
            advance(&self.agent_sessions.get_or_create(&agent), total.sessions);
            advance_f64(&self.agent_cost.get_or_create(&agent), total.cost_usd);
            for (kind, n) in [
                ("input", total.input_tokens),
                ("output", total.output_tokens),
                ("cache_read", total.cache_read_tokens),
                ("cache_creation", total.cache_creation_tokens),
            ] {
                let labels = AgentTokenLabels {
                    agent: total.agent.clone(),
                    kind,
                };
                advance(&self.agent_tokens.get_or_create(&labels), n);
            }
        }
        let stats = store.stats();
        advance(&self.store_commits, stats.commits);
        advance(&self.store_writes, stats.writes);
        let alive = store.peers_alive(crate::peers::ALIVE_WITHIN).await?;
        self.coordinators_alive
            .set(i64::try_from(alive.len()).unwrap_or(i64::MAX));
        Ok(())
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    kind: &'static str,
}

/// Counters of the outbox worker and the reconciler, advanced to their own stats.
#[derive(Debug, Clone, Default)]
pub struct WorkerGauges {
    outbox_writes: Family<KindLabels, Counter>,
    reconcile: Family<KindLabels, Counter>,
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
                advance(&self.outbox_writes.get_or_create(&KindLabels { kind }), n);
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
                advance(&self.reconcile.get_or_create(&KindLabels { kind }), n);
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
    pub retention: crate::retention::RetentionMetrics,
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
            retention: crate::retention::RetentionMetrics::default(),
        }
    }

    pub fn watch_outbox(&self, stats: Arc<OutboxStats>) {
        let _ = self.workers.outbox_stats.set(stats);
    }

    pub fn watch_reconciler(&self, stats: Arc<ReconcileStats>) {
        let _ = self.workers.reconcile_stats.set(stats);
    }

    pub fn register(&self, registry: &mut Registry) {
        self.retention.register(registry);
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
            "coordinators_alive",
            "Coordinators sharing the store that said they were alive in the last 5 s",
            s.coordinators_alive.clone(),
        );
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
            "agent_sessions",
            "Agent sessions started, by agent profile",
            s.agent_sessions.clone(),
        );
        registry.register(
            "agent_tokens",
            "Tokens agents reported, by agent profile and kind (input, output, cache_read, cache_creation)",
            s.agent_tokens.clone(),
        );
        registry.register(
            "agent_cost_usd",
            "Cost agents reported in US dollars, by agent profile ($0 for self-hosted profiles)",
            s.agent_cost.clone(),
        );
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
            "session_context_use_ratio",
            "Context window used by live sessions (fraction), sampled every refresh",
            e.context_use.clone(),
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
            "gate_runs",
            "Quality gate runs since start, by gate",
            e.gate_runs.clone(),
        );
        registry.register(
            "gate_failures",
            "Quality gate runs that did not pass since start, by gate",
            e.gate_failures.clone(),
        );
        registry.register(
            "gate_continuations",
            "Agents sent back after failing required quality gates since start",
            e.gate_continuations.clone(),
        );
        registry.register(
            "workspaces",
            "Issue worktrees this coordinator holds",
            e.workspaces.clone(),
        );
        registry.register(
            "workspace_bytes",
            "Bytes the issue worktrees hold (measured at most once a minute)",
            e.workspace_bytes.clone(),
        );
        registry.register(
            "workspace_free_bytes",
            "Free bytes under the workspace root (-1: unreadable); below workspace.min_free_bytes no issue is dispatched",
            e.workspace_free_bytes.clone(),
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
            } else if let Err(err) = self.engine.refresh_from_store(store.as_ref()).await {
                tracing::warn!(error = %err, "metrics refresh from the store failed");
            }
            self.workers.refresh();
            tokio::select! {
                () = cancel.cancelled() => return,
                () = tokio::time::sleep(every) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The text exposition, parsed the way Prometheus reads it: (family, type) and samples.
    fn exposition(metrics: &CoordinatorMetrics) -> String {
        let mut registry = Registry::with_prefix("mosaic");
        metrics.register(&mut registry);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        text
    }

    fn families(text: &str) -> Vec<(String, String)> {
        text.lines()
            .filter_map(|line| line.strip_prefix("# TYPE "))
            .map(|rest| {
                let mut parts = rest.split_whitespace();
                (
                    parts.next().unwrap().to_owned(),
                    parts.next().unwrap().to_owned(),
                )
            })
            .collect()
    }

    #[test]
    fn cumulative_figures_are_counters_and_no_family_is_labelled_per_session() {
        let metrics = CoordinatorMetrics::new();
        // Values as a refresh would leave them.
        advance(&metrics.engine.compactions, 3);
        advance(&metrics.engine.rotations, 2);
        let test_gate = GateLabels {
            gate: "test".into(),
        };
        advance(&metrics.engine.gate_runs.get_or_create(&test_gate), 2);
        advance(&metrics.engine.gate_failures.get_or_create(&test_gate), 1);
        advance(&metrics.engine.gate_continuations, 1);
        metrics.engine.context_use.observe(0.85);
        advance(
            &metrics
                .workers
                .outbox_writes
                .get_or_create(&KindLabels { kind: "delivered" }),
            7,
        );
        let labels = ModelLabels {
            provider: "anthropic".into(),
            model: "m".into(),
        };
        advance_f64(&metrics.store.llm_cost.get_or_create(&labels), 0.25);
        let agent = AgentLabels {
            agent: "sonnet".into(),
        };
        advance(&metrics.store.agent_sessions.get_or_create(&agent), 3);
        advance_f64(&metrics.store.agent_cost.get_or_create(&agent), 3.11);
        advance(
            &metrics.store.agent_tokens.get_or_create(&AgentTokenLabels {
                agent: "sonnet".into(),
                kind: "cache_read",
            }),
            160_000,
        );
        advance(&metrics.store.llm_calls.get_or_create(&labels), 2);
        advance(&metrics.store.llm_input_tokens.get_or_create(&labels), 900);
        advance(&metrics.store.llm_output_tokens.get_or_create(&labels), 90);
        advance(
            &metrics
                .workers
                .reconcile
                .get_or_create(&KindLabels { kind: "runs" }),
            1,
        );
        metrics.gitea_calls.observe(
            "issue.get",
            CallOutcome::Status(200),
            Duration::from_millis(3),
        );
        let text = exposition(&metrics);
        let types = families(&text);
        let type_of = |name: &str| {
            types
                .iter()
                .find(|(family, _)| family == name)
                .map(|(_, kind)| kind.as_str())
        };
        for counter in [
            "mosaic_compactions",
            "mosaic_rotations",
            "mosaic_gate_runs",
            "mosaic_gate_failures",
            "mosaic_gate_continuations",
            "mosaic_outbox_writes",
            "mosaic_reconcile",
            "mosaic_store_commits",
            "mosaic_store_writes",
            "mosaic_llm_calls",
            "mosaic_llm_input_tokens",
            "mosaic_llm_output_tokens",
            "mosaic_llm_cost_usd",
            "mosaic_agent_sessions",
            "mosaic_agent_tokens",
            "mosaic_agent_cost_usd",
            "mosaic_gitea_calls",
        ] {
            assert_eq!(type_of(counter), Some("counter"), "{counter}:\n{text}");
        }
        assert_eq!(
            type_of("mosaic_session_context_use_ratio"),
            Some("histogram"),
            "{text}"
        );
        assert_eq!(type_of("mosaic_gitea_call_seconds"), Some("histogram"));
        // Every sample of a counter ends in _total; nothing is labelled by session or issue.
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let name = line.split(['{', ' ']).next().unwrap();
            if let Some((family, _)) = types
                .iter()
                .find(|(family, kind)| kind == "counter" && name.starts_with(family.as_str()))
            {
                assert_eq!(name, format!("{family}_total"), "{line}");
            }
            assert!(
                !line.contains("session=") && !line.contains("issue="),
                "{line}"
            );
        }
        assert!(text.contains("mosaic_compactions_total 3"), "{text}");
        assert!(text.contains("mosaic_gate_failures_total{gate=\"test\"} 1"));
        assert!(text.contains("mosaic_gate_continuations_total 1"));
        assert!(text.contains("mosaic_outbox_writes_total{kind=\"delivered\"} 7"));
        assert!(text.contains("mosaic_session_context_use_ratio_bucket{le=\"0.9\"} 1"));
    }

    #[test]
    fn a_counter_follows_a_growing_total_and_never_goes_back() {
        let counter = Counter::default();
        advance(&counter, 5);
        advance(&counter, 9);
        assert_eq!(counter.get(), 9);
        advance(&counter, 2);
        assert_eq!(
            counter.get(),
            9,
            "a smaller total (its source restarted) is ignored"
        );
    }
}
