//! Prometheus metrics and the `/metrics`, `/health`, `/ready` HTTP endpoints.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Labels of per-stage series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StageLabels {
    /// Namespace of the pipeline.
    pub namespace: String,
    /// Pipeline name.
    pub pipeline: String,
    /// `window` or `join`.
    pub stage: String,
}

/// Labels of failure counters.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    /// Error kind (see `controller::Error::metric_label`).
    pub error: String,
}

/// The operator's metrics.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// Reconciliations started.
    pub reconciles: Counter,
    /// Reconciliations that failed, by error kind.
    pub failures: Family<ErrorLabels, Counter>,
    /// Reconcile duration in seconds.
    pub duration: Histogram,
    /// Consumer lag per stage (messages).
    pub lag: Family<StageLabels, Gauge>,
    /// Replicas the planner set per stage.
    pub replicas: Family<StageLabels, Gauge>,
    /// 1 while this replica holds the leader Lease.
    pub leader: Gauge,
    /// Writes (apply, status, topics, finalizer, Events) this replica was allowed to make.
    pub writes: Counter,
    ready: AtomicBool,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("sensorflow_operator");
        let reconciles = Counter::default();
        let failures = Family::<ErrorLabels, Counter>::default();
        let duration = Histogram::new(exponential_buckets(0.01, 2.0, 12));
        let lag = Family::<StageLabels, Gauge>::default();
        let replicas = Family::<StageLabels, Gauge>::default();
        let leader = Gauge::default();
        let writes = Counter::default();
        registry.register("reconciles", "Reconciliations started", reconciles.clone());
        registry.register(
            "reconcile_failures",
            "Failed reconciliations by error kind",
            failures.clone(),
        );
        registry.register(
            "reconcile_duration_seconds",
            "Reconcile duration",
            duration.clone(),
        );
        registry.register(
            "stage_lag_messages",
            "Consumer lag summed over a stage's input topics",
            lag.clone(),
        );
        registry.register(
            "stage_replicas",
            "Replicas set for a stage",
            replicas.clone(),
        );
        registry.register(
            "leader",
            "1 while this replica holds the leader Lease",
            leader.clone(),
        );
        registry.register(
            "writes",
            "Writes to the API server or the broker this replica made as the leader",
            writes.clone(),
        );
        Self {
            registry,
            reconciles,
            failures,
            duration,
            lag,
            replicas,
            leader,
            writes,
            ready: AtomicBool::new(false),
        }
    }
}

impl Metrics {
    /// Records a finished reconcile of `elapsed`.
    pub fn observe(&self, elapsed: Duration) {
        self.duration.observe(elapsed.as_secs_f64());
    }

    /// Marks the operator ready (`/ready` answers 200 from then on).
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed);
    }

    /// Text exposition of every metric.
    ///
    /// # Errors
    /// Formatting errors from the encoder (not expected with a `String` sink).
    pub fn render(&self) -> Result<String, std::fmt::Error> {
        let mut out = String::new();
        encode(&mut out, &self.registry)?;
        Ok(out)
    }
}

/// The operator's probes: `/health` answers while the process runs; `/ready` once it holds
/// the caches it needs ([`Metrics::set_ready`]).
impl sensorflow_process::server::Probes for Metrics {
    fn metrics(&self) -> String {
        // Encoding into a String cannot fail; an empty body would be the worst case.
        self.render().unwrap_or_default()
    }

    fn health(&self) -> Result<(), String> {
        Ok(())
    }

    fn ready(&self) -> Result<(), &'static str> {
        if self.ready.load(Ordering::Relaxed) {
            Ok(())
        } else {
            Err("starting")
        }
    }
}
