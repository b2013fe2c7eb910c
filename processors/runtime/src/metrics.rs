//! Prometheus metrics and the `/metrics`, `/health` and `/ready` endpoints.
//!
//! `/health` answers 200 while the process is alive; `/ready` answers 200 once the consumer
//! loop is running (assigned, state rebuilt) and 503 before that or while shutting down.

use axum::{Router, extract::State, http::StatusCode, response::IntoResponse, routing::get};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// Label set `{topic}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TopicLabel {
    /// Topic name.
    pub topic: String,
}

/// Label set `{reason}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    /// Dead-letter reason code (see `sensorflow_core::input::Reject::code`).
    pub reason: String,
}

/// All metrics of a processor. Cheap to clone (shared handles).
#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    ready: Arc<AtomicBool>,
    /// `sensorflow_records_in_total{topic}`: records consumed.
    pub records_in: Family<TopicLabel, Counter>,
    /// `sensorflow_records_out_total{topic}`: records produced and acknowledged.
    pub records_out: Family<TopicLabel, Counter>,
    /// `sensorflow_dead_letter_total{reason}`: records sent to the dead-letter topic.
    pub dead_letter: Family<ReasonLabel, Counter>,
    /// `sensorflow_late_total`: readings older than the watermark, sent to the late topic.
    pub late: Counter,
    /// `sensorflow_consumer_lag{topic}`: messages behind the high watermark, summed over
    /// assigned partitions (from librdkafka statistics, every 5 s).
    pub lag: Family<TopicLabel, Gauge>,
    /// `sensorflow_window_state_readings`: readings buffered in window state.
    pub window_readings: Gauge,
    /// `sensorflow_window_state_clients`: clients with window state.
    pub window_clients: Gauge,
    /// `sensorflow_window_state_bytes`: heap bytes of buffered readings.
    pub window_bytes: Gauge,
    /// `sensorflow_join_state_clients`: clients with join state.
    pub join_clients: Gauge,
    /// `sensorflow_join_partial_triples`: FA/FI/FD triples waiting for their other features.
    pub join_partials: Gauge,
    /// `sensorflow_join_partials_dropped`: incomplete triples dropped at the per-client bound
    /// (each is a prediction that will not be made).
    pub join_partials_dropped: Gauge,
    /// `sensorflow_predictions_total` and alerts.
    pub alerts: Counter,
    /// `sensorflow_commits_total`: offset commits.
    pub commits: Counter,
    /// `sensorflow_produce_retries_total`: deliveries retried after a broker error.
    pub produce_retries: Counter,
    /// `sensorflow_transactions_aborted_total`: exactly-once transactions aborted during a
    /// partition revocation (their records are re-processed by the next owner).
    pub transactions_aborted: Counter,
    /// `sensorflow_records_truncated_total`: outputs too large for the broker, sent with their
    /// value cut to 64 KiB and the original size in a header.
    pub records_truncated: Counter,
    /// `sensorflow_rebuilt_records_total`: records re-read to rebuild state on assignment.
    pub rebuilt_records: Counter,
    /// `sensorflow_end_to_end_latency_seconds`: reading ingest → prediction.
    pub latency: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Creates and registers every metric under the `sensorflow` prefix.
    pub fn new() -> Self {
        Self::new_with(|_| {})
    }

    /// Like [`Metrics::new`], then lets `extra` register a binary's own metrics in the same
    /// registry (under the `sensorflow` prefix), so one `/metrics` endpoint serves them all.
    pub fn new_with(extra: impl FnOnce(&mut Registry)) -> Self {
        let mut r = Registry::with_prefix("sensorflow");
        let m = Self {
            registry: Arc::new(Registry::default()),
            ready: Arc::new(AtomicBool::new(false)),
            records_in: Family::default(),
            records_out: Family::default(),
            dead_letter: Family::default(),
            late: Counter::default(),
            lag: Family::default(),
            window_readings: Gauge::default(),
            window_clients: Gauge::default(),
            window_bytes: Gauge::default(),
            join_clients: Gauge::default(),
            join_partials: Gauge::default(),
            join_partials_dropped: Gauge::default(),
            alerts: Counter::default(),
            commits: Counter::default(),
            produce_retries: Counter::default(),
            transactions_aborted: Counter::default(),
            records_truncated: Counter::default(),
            rebuilt_records: Counter::default(),
            latency: Histogram::new([
                0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
            ]),
        };
        r.register("records_in", "Records consumed", m.records_in.clone());
        r.register(
            "records_out",
            "Records produced and acknowledged",
            m.records_out.clone(),
        );
        r.register(
            "dead_letter",
            "Records sent to the dead-letter topic",
            m.dead_letter.clone(),
        );
        r.register("late", "Readings older than the watermark", m.late.clone());
        r.register(
            "consumer_lag",
            "Messages behind the high watermark",
            m.lag.clone(),
        );
        r.register(
            "window_state_readings",
            "Readings buffered in window state",
            m.window_readings.clone(),
        );
        r.register(
            "window_state_clients",
            "Clients with window state",
            m.window_clients.clone(),
        );
        r.register(
            "window_state_bytes",
            "Heap bytes of buffered readings",
            m.window_bytes.clone(),
        );
        r.register(
            "join_state_clients",
            "Clients with join state",
            m.join_clients.clone(),
        );
        r.register(
            "join_partial_triples",
            "Feature triples waiting for their other features",
            m.join_partials.clone(),
        );
        r.register(
            "join_partials_dropped",
            "Incomplete triples dropped at the per-client bound",
            m.join_partials_dropped.clone(),
        );
        r.register(
            "alerts",
            "Predictions at or above the alert threshold",
            m.alerts.clone(),
        );
        r.register("commits", "Offset commits", m.commits.clone());
        r.register(
            "transactions_aborted",
            "Exactly-once transactions aborted during a partition revocation",
            m.transactions_aborted.clone(),
        );
        r.register(
            "records_truncated",
            "Outputs too large for the broker, sent with their value truncated to 64 KiB",
            m.records_truncated.clone(),
        );
        r.register(
            "produce_retries",
            "Deliveries retried after a broker error",
            m.produce_retries.clone(),
        );
        r.register(
            "rebuilt_records",
            "Records re-read to rebuild state",
            m.rebuilt_records.clone(),
        );
        r.register(
            "end_to_end_latency_seconds",
            "Sensor reading ingest to prediction, seconds",
            m.latency.clone(),
        );
        extra(&mut r);
        Self {
            registry: Arc::new(r),
            ..m
        }
    }

    /// Marks the processor ready (or not) for `/ready`.
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed);
    }

    /// Counts one record in.
    pub fn record_in(&self, topic: &str) {
        self.records_in
            .get_or_create(&TopicLabel {
                topic: topic.to_owned(),
            })
            .inc();
    }

    /// Counts `n` records out.
    pub fn record_out(&self, topic: &str, n: u64) {
        self.records_out
            .get_or_create(&TopicLabel {
                topic: topic.to_owned(),
            })
            .inc_by(n);
    }

    /// The exposition text.
    pub fn encode(&self) -> String {
        let mut s = String::new();
        if prometheus_client::encoding::text::encode(&mut s, &self.registry).is_err() {
            s.clear();
        }
        s
    }

    /// Serves `/metrics`, `/health` and `/ready` on `addr` until `shutdown` is cancelled.
    ///
    /// # Errors
    /// When the address cannot be bound.
    pub async fn serve(
        self,
        addr: SocketAddr,
        shutdown: tokio_util::sync::CancellationToken,
    ) -> std::io::Result<()> {
        let app = Router::new()
            .route("/metrics", get(metrics_handler))
            .route("/health", get(|| async { "ok" }))
            .route("/ready", get(ready_handler))
            .with_state(self);
        let listener = tokio::net::TcpListener::bind(addr).await?;
        tracing::info!(%addr, "serving /metrics, /health, /ready");
        axum::serve(listener, app)
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await
    }
}

async fn metrics_handler(State(m): State<Metrics>) -> impl IntoResponse {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        m.encode(),
    )
}

async fn ready_handler(State(m): State<Metrics>) -> impl IntoResponse {
    if m.ready.load(Ordering::Relaxed) {
        (StatusCode::OK, "ready")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_names_the_metrics() {
        let m = Metrics::new();
        m.record_in("SZ");
        m.record_out("FA", 3);
        m.late.inc();
        let text = m.encode();
        assert!(
            text.contains("sensorflow_records_in_total{topic=\"SZ\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("sensorflow_records_out_total{topic=\"FA\"} 3"),
            "{text}"
        );
        assert!(text.contains("sensorflow_late_total 1"), "{text}");
    }
}
