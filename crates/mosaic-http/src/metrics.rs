//! `/metrics` in Prometheus text format.
//!
//! The HTTP layer owns the intake metrics; other components register their own collectors in
//! the same registry when the application is built.

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    event: &'static str,
    outcome: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

/// The registry and the metrics the HTTP layer updates itself.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    intake_requests: Family<OutcomeLabels, Counter>,
    signature_failures: Family<ReasonLabels, Counter>,
    intake_seconds: Histogram,
}

impl Metrics {
    /// Builds the registry; `register_more` lets other components add their collectors.
    pub fn new(register_more: impl FnOnce(&mut Registry)) -> Arc<Self> {
        let mut registry = Registry::with_prefix("mosaic");
        let intake_requests = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "webhook_requests",
            "Webhook requests by event and outcome (accepted, duplicate, ignored, rejected_*)",
            intake_requests.clone(),
        );
        let signature_failures = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "webhook_signature_failures",
            "Webhook requests refused because their signature did not hold",
            signature_failures.clone(),
        );
        // 0.5 ms .. ~4 s: group commit keeps the normal case in the low milliseconds.
        let intake_seconds = Histogram::new([
            0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
        ]);
        registry.register(
            "webhook_intake_seconds",
            "Time from request to answer on the webhook endpoint",
            intake_seconds.clone(),
        );
        register_more(&mut registry);
        Arc::new(Self {
            registry,
            intake_requests,
            signature_failures,
            intake_seconds,
        })
    }

    pub(crate) fn observe_intake(
        &self,
        event: &'static str,
        outcome: &'static str,
        elapsed: Duration,
    ) {
        self.intake_requests
            .get_or_create(&OutcomeLabels { event, outcome })
            .inc();
        self.intake_seconds.observe(elapsed.as_secs_f64());
    }

    pub(crate) fn signature_failure(&self, reason: &'static str) {
        self.signature_failures
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }

    /// The exposition text.
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)?;
        Ok(out)
    }
}
