//! Prometheus metrics and the `/metrics`, `/health` and `/ready` endpoints.
//!
//! `/health` is the liveness probe: 200 while the consume loop advances, 503 once it has not
//! advanced for the liveness timeout (`SF_LIVENESS_TIMEOUT_MS`; see [`Liveness`]). `/ready`
//! answers 200 once the consumer loop is running (assigned, state rebuilt) and 503 before that
//! or while shutting down.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Whether the consume loop still advances: the loop (and the state rebuild, and transaction
/// commits) call [`Liveness::beat`]; `/health` fails once no beat came for the timeout.
///
/// What counts as advancing: every loop iteration (a record processed, or a flush tick, which
/// runs at least every commit interval even without input and includes the flush and commit),
/// every step of a state rebuild that read records or got a broker answer, a committed
/// transaction, a produce retry. What does not: a loop blocked inside one call (a delivery or
/// commit that never returns, a stuck rebuild, a deadlock): that is what the probe is for.
/// A broker outage alone keeps the loop ticking (retries are bounded and end the process), so
/// it does not restart healthy pods that could not do better.
#[derive(Debug)]
pub struct Liveness {
    base: Instant,
    /// ms since `base` of the last beat.
    last_ms: AtomicU64,
    /// 0: never unhealthy.
    timeout_ms: AtomicU64,
}

impl Default for Liveness {
    fn default() -> Self {
        Self {
            base: Instant::now(),
            last_ms: AtomicU64::new(0),
            timeout_ms: AtomicU64::new(0),
        }
    }
}

impl Liveness {
    /// The loop advanced now.
    pub fn beat(&self) {
        let now = self.base.elapsed().as_millis() as u64;
        self.last_ms.fetch_max(now, Ordering::Relaxed);
    }

    /// Sets the timeout (`Duration::ZERO`: never unhealthy).
    pub fn set_timeout(&self, timeout: Duration) {
        self.timeout_ms
            .store(timeout.as_millis() as u64, Ordering::Relaxed);
    }

    /// `Err(time since the last beat)` when it exceeds the timeout.
    ///
    /// # Errors
    /// The time without a beat, when the loop is judged stuck.
    pub fn check(&self) -> Result<(), Duration> {
        let now = self.base.elapsed().as_millis() as u64;
        judge(
            self.last_ms.load(Ordering::Relaxed),
            now,
            self.timeout_ms.load(Ordering::Relaxed),
        )
    }

    /// The configured timeout.
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms.load(Ordering::Relaxed))
    }
}

/// Pure liveness judgement: the last beat at `last_ms`, now `now_ms`, timeout `timeout_ms`
/// (0: off), all ms on one monotonic clock.
fn judge(last_ms: u64, now_ms: u64, timeout_ms: u64) -> Result<(), Duration> {
    let idle = now_ms.saturating_sub(last_ms);
    if timeout_ms > 0 && idle > timeout_ms {
        Err(Duration::from_millis(idle))
    } else {
        Ok(())
    }
}

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
    /// The liveness heartbeat behind `/health`.
    pub liveness: Arc<Liveness>,
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
    /// `sensorflow_paused_partitions`: assigned partitions the loop paused for the processor
    /// (the join's watermark alignment).
    pub paused_partitions: Gauge,
    /// `sensorflow_loop_resumes_total`: in-process resumes from the last commit after the
    /// broker refused an output the topic limits did not predict (see `runner::run`).
    pub loop_resumes: Counter,
    /// `sensorflow_records_truncated_total`: outputs too large for the broker, sent with their
    /// value cut to 64 KiB and the original size in a header.
    pub records_truncated: Counter,
    /// `sensorflow_rebuilt_records_total`: records re-read to rebuild state on assignment
    /// (counted as they are read, so a long rebuild shows its progress).
    pub rebuilt_records: Counter,
    /// `sensorflow_records_skipped_total`: records received but not processed: revoked since
    /// they were fetched, or below the offset the state was rebuilt to (already applied).
    pub skipped_below_floor: Counter,
    /// `sensorflow_rebuilt_partitions_total`: partitions whose state was rebuilt.
    pub rebuilt_partitions: Counter,
    /// `sensorflow_rebuild_in_progress`: 1 while a state rebuild runs.
    pub rebuild_in_progress: Gauge,
    /// `sensorflow_rebuild_repeats_total`: rebuilds that started from the same committed
    /// offset as this process's previous rebuild of a partition while records waited beyond
    /// it (the previous assignment made no progress: e.g. evicted from the group mid-rebuild).
    pub rebuild_repeats: Counter,
    /// `sensorflow_rebuild_failures_total{reason}`: rebuilds that failed: `stalled` (nothing
    /// moved for the stall timeout), `limit` (`SF_REBUILD_MAX_RECORDS` hit: no partial state
    /// is ever built), `consumer`.
    pub rebuild_failures: Family<ReasonLabel, Counter>,
    /// `sensorflow_rebuild_retries_total`: failed rebuild attempts retried in process (see
    /// [`crate::rebuild::with_retries`]).
    pub rebuild_retries: Counter,
    /// `sensorflow_liveness_seconds_since_progress`: seconds since the consume loop last
    /// advanced (set when `/health` or `/metrics` is read).
    pub since_progress: Gauge<f64, std::sync::atomic::AtomicU64>,
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
            liveness: Arc::new(Liveness::default()),
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
            loop_resumes: Counter::default(),
            paused_partitions: Gauge::default(),
            rebuilt_records: Counter::default(),
            skipped_below_floor: Counter::default(),
            rebuilt_partitions: Counter::default(),
            rebuild_in_progress: Gauge::default(),
            rebuild_repeats: Counter::default(),
            rebuild_failures: Family::default(),
            rebuild_retries: Counter::default(),
            since_progress: Gauge::default(),
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
            "paused_partitions",
            "Assigned partitions paused by the processor (the join's watermark alignment)",
            m.paused_partitions.clone(),
        );
        r.register(
            "loop_resumes",
            "In-process resumes from the last commit after the broker refused an unpredicted output",
            m.loop_resumes.clone(),
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
            "records_skipped",
            "Records received but not processed (revoked, or already in the rebuilt state)",
            m.skipped_below_floor.clone(),
        );
        r.register(
            "rebuilt_partitions",
            "Partitions whose state was rebuilt",
            m.rebuilt_partitions.clone(),
        );
        r.register(
            "rebuild_in_progress",
            "1 while a state rebuild runs",
            m.rebuild_in_progress.clone(),
        );
        r.register(
            "rebuild_repeats",
            "State rebuilds started again from the same committed offsets while records waited",
            m.rebuild_repeats.clone(),
        );
        r.register(
            "rebuild_failures",
            "State rebuilds that failed, by reason (stalled, limit, consumer)",
            m.rebuild_failures.clone(),
        );
        r.register(
            "rebuild_retries",
            "Failed state-rebuild attempts retried in process",
            m.rebuild_retries.clone(),
        );
        r.register(
            "liveness_seconds_since_progress",
            "Seconds since the consume loop last advanced",
            m.since_progress.clone(),
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

    /// The consume loop advanced (see [`Liveness`]).
    pub fn beat(&self) {
        self.liveness.beat();
    }

    /// A progress hook for [`crate::rebuild::replay`]: counts the records read and beats.
    pub fn rebuild_hook(&self) -> impl Fn(u64) + '_ {
        move |n| {
            self.rebuilt_records.inc_by(n);
            self.liveness.beat();
        }
    }

    /// The `/health` answer: `Err(message)` when the loop is judged stuck.
    ///
    /// # Errors
    /// A message saying for how long the loop has not advanced.
    pub fn health(&self) -> Result<(), String> {
        let r = self.liveness.check();
        match r {
            Ok(()) => Ok(()),
            Err(idle) => Err(format!(
                "unhealthy: the consume loop has not advanced for {:.1} s (liveness timeout {:.1} s)",
                idle.as_secs_f64(),
                self.liveness.timeout().as_secs_f64()
            )),
        }
    }

    /// Counts one record in.
    pub fn record_in(&self, topic: &str) {
        self.records_in
            .get_or_create(&TopicLabel {
                topic: topic.to_owned(),
            })
            .inc();
    }

    /// Counts one record dead-lettered with `reason` in `sensorflow_dead_letter_total`.
    pub fn record_dead_letter(&self, reason: &str) {
        self.dead_letter
            .get_or_create(&ReasonLabel {
                reason: reason.to_owned(),
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
        self.update_since_progress();
        let mut s = String::new();
        if prometheus_client::encoding::text::encode(&mut s, &self.registry).is_err() {
            s.clear();
        }
        s
    }

    fn update_since_progress(&self) {
        let idle = match self.liveness.check() {
            Ok(()) => {
                let now = self.liveness.base.elapsed().as_millis() as u64;
                now.saturating_sub(self.liveness.last_ms.load(Ordering::Relaxed))
            }
            Err(d) => d.as_millis() as u64,
        };
        self.since_progress.set(idle as f64 / 1000.0);
    }
}

impl sensorflow_process::server::Probes for Metrics {
    fn metrics(&self) -> String {
        self.encode()
    }

    fn health(&self) -> Result<(), String> {
        self.update_since_progress();
        Metrics::health(self)
    }

    fn ready(&self) -> Result<(), &'static str> {
        if self.ready.load(Ordering::Relaxed) {
            Ok(())
        } else {
            Err("not ready")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;

    #[test]
    fn liveness_judgement() {
        // Off: never unhealthy.
        assert_eq!(judge(0, 1_000_000, 0), Ok(()));
        assert_eq!(judge(1_000, 6_000, 5_000), Ok(()));
        assert_eq!(
            judge(1_000, 6_001, 5_000),
            Err(Duration::from_millis(5_001))
        );
        // A beat after "now" (another thread) is not negative idleness.
        assert_eq!(judge(7_000, 6_000, 5_000), Ok(()));
    }

    /// A plain HTTP/1.0 GET over a std socket (blocking, off the runtime's workers).
    async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
        use std::io::{Read, Write};
        let path = path.to_owned();
        tokio::task::spawn_blocking(move || {
            let mut s = std::net::TcpStream::connect(addr).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            s.write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes())
                .unwrap();
            let mut buf = String::new();
            s.read_to_string(&mut buf).unwrap();
            let code = buf[9..12].parse().unwrap();
            let body = buf.split("\r\n\r\n").nth(1).unwrap_or("").to_owned();
            (code, body)
        })
        .await
        .unwrap()
    }

    /// `/health` over HTTP: 200 while beats come, 503 with the reason once none came for the
    /// timeout, 200 again after a beat.
    #[tokio::test(flavor = "multi_thread")]
    async fn health_fails_when_the_loop_stops_beating() {
        let m = Metrics::new();
        m.liveness.set_timeout(Duration::from_millis(300));
        m.beat();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = tokio_util::sync::CancellationToken::new();
        let server = tokio::spawn(sensorflow_process::server::serve_on(
            listener,
            Arc::new(m.clone()),
            stop.clone(),
        ));
        assert_eq!(get(addr, "/health").await, (200, "ok".to_owned()));
        tokio::time::sleep(Duration::from_millis(450)).await;
        let (code, body) = get(addr, "/health").await;
        assert_eq!(code, 503, "{body}");
        assert!(body.contains("has not advanced"), "{body}");
        let text = get(addr, "/metrics").await.1;
        // At least the 450 ms slept (more on a loaded machine: no upper bound but the test's).
        let since: f64 = text
            .lines()
            .find_map(|l| l.strip_prefix("sensorflow_liveness_seconds_since_progress "))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no liveness gauge in {text}"));
        assert!(since >= 0.45, "{since} s since progress, slept 0.45 s");
        m.beat();
        assert_eq!(get(addr, "/health").await.0, 200);
        stop.cancel();
        server.await.unwrap().unwrap();
    }

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
