//! `window-processor`: SZ readings → FA, FI, FD features (see `sensorflow_core::window`).

use clap::Parser;
use prost::Message as _;
use rdkafka::ClientConfig;
use sensorflow_api::WatermarkScope;
use sensorflow_api::{TopicNames as Topics, env};
use sensorflow_core::binning::BinRange;
use sensorflow_core::config::FeatureRanges;
use sensorflow_core::input::{self, ReadingBounds, Reject};
use sensorflow_core::proto::{Feature, FeatureKind, Sensor};
use sensorflow_core::window::{self, Outcome, Reading, WindowConfig, WindowEngine};
use sensorflow_core::wire::Framing;
use sensorflow_kafka::limits::TopicLimits;
use sensorflow_runtime::args::ClientArgs;
use sensorflow_runtime::consumer::TopicPartition;
use sensorflow_runtime::dlq::dead_letter;
use sensorflow_runtime::emitter::OutputGuard;
use sensorflow_runtime::error::PipelineError;
use sensorflow_runtime::metrics::Metrics;
use sensorflow_runtime::output::Output;
use sensorflow_runtime::processor::Processor;
use sensorflow_runtime::rebuild::{self, RebuildConfig, Request};
use sensorflow_runtime::record::ConsumedRecord;
use sensorflow_runtime::runner::{CommonArgs, rebuild_config};
use std::sync::Arc;
use std::time::Duration;

/// window-processor: per client, a sliding event-time window over SZ readings.
///
/// For every SZ reading it emits the window's mean (FA), trapezoidal integral (FI, value·s)
/// and derivative (FD, value/s), each binned into 10 buckets over a configured range, to the
/// FA, FI and FD topics, keyed by client. Readings older than the watermark go to the late
/// topic; malformed records go to the dead-letter topic. Offsets are committed only after
/// every output is acknowledged (at-least-once; repeats after a crash are exact).
#[derive(Debug, Clone, Parser)]
#[command(name = "window-processor", version, about, long_about)]
pub struct WindowArgs {
    /// The broker connection, topic names and record framing.
    #[command(flatten)]
    pub client: ClientArgs,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub common: CommonArgs,
    /// Consumer group id.
    #[arg(long, env = env::GROUP_ID, default_value = "sensorflow-window")]
    pub group_id: String,
    /// Window length, ms.
    #[arg(long, env = env::WINDOW_SIZE_MS, default_value_t = 600_000, value_parser = clap::value_parser!(i64).range(1..))]
    pub window_size_ms: i64,
    /// Grace period for out-of-order readings, ms (watermark = max event time − grace).
    #[arg(long, env = env::GRACE_MS, default_value_t = 30_000, value_parser = clap::value_parser!(i64).range(0..))]
    pub grace_ms: i64,
    /// Watermark scope: `partition` (max event time of the partition) or `client`.
    #[arg(long, env = env::WATERMARK_SCOPE, default_value = "partition")]
    pub watermark_scope: WatermarkScope,
    /// FA bin range `lo,hi` (value units).
    #[arg(
        long,
        env = env::FA_RANGE,
        default_value = "0,5",
        allow_hyphen_values = true
    )]
    pub fa_range: BinRange,
    /// FI bin range `lo,hi` (value·seconds).
    #[arg(
        long,
        env = env::FI_RANGE,
        default_value = "0,3000",
        allow_hyphen_values = true
    )]
    pub fi_range: BinRange,
    /// FD bin range `lo,hi` (value per second).
    #[arg(
        long,
        env = env::FD_RANGE,
        default_value = "-0.01,0.01",
        allow_hyphen_values = true
    )]
    pub fd_range: BinRange,
}

/// The window-processor's [`Processor`].
pub struct WindowProcessor {
    engine: WindowEngine,
    ranges: FeatureRanges,
    topics: Topics,
    /// `topics.fa`, `.fi`, `.fd`, shared by every output (no allocation per feature).
    feature_topics: [Arc<str>; 3],
    framing: Framing,
    rebuild: ClientConfig,
    rebuild_cfg: RebuildConfig,
    metrics: Metrics,
    pb: Vec<u8>,
    /// The feature being encoded, reused so its client id is not allocated per record.
    feature: Feature,
    bounds: ReadingBounds,
    /// The bounds as configured (`bounds` is them within the output topics' limits).
    configured_bounds: ReadingBounds,
    /// What the outputs are checked against before sending (see [`OutputGuard`]).
    guard: Option<OutputGuard>,
    /// The feature topics' limits (from `guard`), checked per reading.
    feature_limits: Vec<(String, TopicLimits)>,
}

impl WindowProcessor {
    /// A processor with empty state.
    pub fn new(args: &WindowArgs, metrics: Metrics) -> Self {
        metrics
            .liveness
            .set_timeout(Duration::from_millis(args.common.liveness_timeout_ms));
        let topics = args.client.topics.topics();
        Self {
            engine: WindowEngine::new(WindowConfig {
                size_ms: args.window_size_ms,
                grace_ms: args.grace_ms,
                scope: scope(args.watermark_scope),
            }),
            ranges: FeatureRanges {
                fa: args.fa_range,
                fi: args.fi_range,
                fd: args.fd_range,
            },
            feature_topics: [
                topics.fa.as_str().into(),
                topics.fi.as_str().into(),
                topics.fd.as_str().into(),
            ],
            topics,
            framing: args.client.framing.framing(),
            rebuild: rebuild_config(&args.client.kafka, &args.group_id),
            rebuild_cfg: rebuild_config_of(&args.common),
            metrics,
            pb: Vec::with_capacity(64),
            feature: Feature::default(),
            bounds: args.common.reading_bounds(),
            configured_bounds: args.common.reading_bounds(),
            guard: None,
            feature_limits: Vec::new(),
        }
    }

    /// The topics whose records carry a reading's event time as their timestamp: the
    /// features and the late topic.
    pub fn event_time_outputs(&self) -> [&str; 4] {
        [
            &self.topics.fa,
            &self.topics.fi,
            &self.topics.fd,
            &self.topics.late,
        ]
    }

    /// Checks outputs against `guard`, and accepts no reading further ahead than the
    /// feature and late topics take ([`sensorflow_runtime::runner::bounds_within`]).
    pub fn with_guard(mut self, guard: OutputGuard) -> Self {
        self.set_guard(guard);
        self
    }

    fn set_guard(&mut self, guard: OutputGuard) {
        self.bounds = sensorflow_runtime::runner::bounds_within(
            self.configured_bounds,
            &guard,
            &self.event_time_outputs(),
        );
        self.feature_limits = self
            .feature_topics
            .iter()
            .map(|t| (t.to_string(), guard.limits.of(t)))
            .collect();
        self.guard = Some(guard);
    }

    /// Why a feature topic would refuse features stamped `t` now (a feature is far below any
    /// size limit: only the timestamp is checked), if one would.
    fn refused_features(&self, t: i64, now: i64) -> Option<Reject> {
        self.feature_limits.iter().find_map(|(topic, limits)| {
            limits
                .check(topic, Some(t), 0, now)
                .err()
                .map(|e| Reject::Refused {
                    code: e.code(),
                    detail: e.to_string(),
                })
        })
    }

    fn reject(&self, msg: &ConsumedRecord<'_>, r: &Reject, out: &mut Vec<Output>) {
        self.metrics.record_dead_letter(r.code());
        tracing::debug!(topic = msg.topic(), partition = msg.partition(), offset = msg.offset(), reason = %r, "dead-lettered");
        out.push(dead_letter(
            msg,
            r,
            &self.topics.dead_letter,
            sensorflow_api::processors::WINDOW_PROCESSOR,
        ));
    }
}

impl Processor for WindowProcessor {
    fn output_guard(&self) -> Option<OutputGuard> {
        self.guard.clone()
    }

    fn topics(&self) -> Vec<String> {
        vec![self.topics.sz.clone()]
    }

    fn on_assigned(
        &mut self,
        committed: &[(TopicPartition, Option<i64>)],
        keep_alive: &dyn Fn(),
    ) -> Result<(), PipelineError> {
        let cfg = self.engine.config();
        let requests: Vec<Request> = committed
            .iter()
            .filter_map(|((t, p), c)| {
                c.map(|committed| Request {
                    topic: t.clone(),
                    partition: *p,
                    committed,
                })
            })
            .collect();
        let lookback = cfg.size_ms.saturating_add(cfg.grace_ms.saturating_mul(2));
        let (framing, bounds, now) = (&self.framing, self.bounds, sensorflow_runtime::now_ms());
        let engine = &mut self.engine;
        let metrics = &self.metrics;
        let hook = metrics.rebuild_hook();
        let retry = |e: &rebuild::RebuildError, n, wait| e.count_retry(metrics, n, wait);
        let summary =
            rebuild::with_retries(rebuild::ATTEMPTS, Duration::from_secs(1), retry, || {
                // Every attempt starts from an empty state for these partitions.
                for ((_, p), _) in committed {
                    engine.revoke(*p);
                }
                rebuild::replay(
                    &self.rebuild,
                    &requests,
                    &[],
                    Some(&self.topics.late),
                    &self.rebuild_cfg,
                    |last, k| last.get(k).map_or(0, |t| t.saturating_sub(lookback)),
                    &hook,
                    keep_alive,
                    |m| {
                        let client = input::client_id(m.key()).ok()?;
                        let r = input::decode_reading(framing, m.payload(), Sensor::Sz).ok()?;
                        // Dead-lettered when first seen; never part of the state.
                        bounds.check(&r, now).ok()?;
                        Some((
                            r.event_time_ms,
                            (
                                client.to_owned(),
                                Reading {
                                    t: r.event_time_ms,
                                    v: r.value,
                                },
                            ),
                        ))
                    },
                    |(_, p), _, (client, reading)| {
                        // Replayed into state only: these outputs were emitted before the commit.
                        let _ = engine.process(*p, &client, reading);
                    },
                )
            })?;
        self.metrics
            .rebuilt_partitions
            .inc_by(summary.partitions as u64);
        Ok(())
    }

    fn on_revoked(&mut self, partitions: &[TopicPartition]) {
        for (_, p) in partitions {
            self.engine.revoke(*p);
        }
    }

    fn resume_with(&mut self, guard: Option<OutputGuard>) {
        self.engine = WindowEngine::new(self.engine.config());
        if let Some(g) = guard {
            self.set_guard(g);
        }
    }

    fn process(
        &mut self,
        msg: &ConsumedRecord<'_>,
        out: &mut Vec<Output>,
    ) -> Result<(), PipelineError> {
        let client = match input::client_id(msg.key()) {
            Ok(c) => c,
            Err(r) => {
                self.reject(msg, &r, out);
                return Ok(());
            }
        };
        let now = sensorflow_runtime::now_ms();
        let reading = match input::decode_reading(&self.framing, msg.payload(), Sensor::Sz)
            .and_then(|r| self.bounds.check(&r, now).map(|()| r))
        {
            Ok(r) => r,
            Err(r) => {
                self.reject(msg, &r, out);
                return Ok(());
            }
        };
        let t = reading.event_time_ms;
        match self.engine.process(
            msg.partition(),
            client,
            Reading {
                t,
                v: reading.value,
            },
        ) {
            Outcome::Late { watermark } => {
                self.metrics.late.inc();
                let r = Reject::Late {
                    event_time_ms: t,
                    watermark_ms: watermark,
                };
                out.push(dead_letter(
                    msg,
                    &r,
                    &self.topics.late,
                    sensorflow_api::processors::WINDOW_PROCESSOR,
                ));
            }
            Outcome::Emit(agg) => {
                let features = [
                    (FeatureKind::Fa, agg.mean, self.ranges.fa),
                    (FeatureKind::Fi, agg.integral, self.ranges.fi),
                    (FeatureKind::Fd, agg.derivative, self.ranges.fd),
                ];
                // Outputs carry the reading's event time; one a feature topic would refuse
                // (its `message.timestamp.before.max.ms`, say) makes the reading a dead letter
                // rather than a partial triple.
                if let Some(r) = self.refused_features(t, now) {
                    self.reject(msg, &r, out);
                    return Ok(());
                }
                // One key for the three records.
                let key: Arc<[u8]> = client.as_bytes().into();
                for ((kind, value, range), topic) in features.into_iter().zip(&self.feature_topics)
                {
                    let f = &mut self.feature;
                    f.client_id.clear();
                    f.client_id.push_str(client);
                    f.kind = kind as i32;
                    f.event_time_ms = t;
                    f.source_partition = msg.partition();
                    f.source_offset = msg.offset();
                    f.bin = range.bin(value);
                    f.value = value;
                    f.window_count = agg.count;
                    f.ingest_time_ms = reading.ingest_time_ms;
                    self.pb.clear();
                    f.encode(&mut self.pb)
                        .map_err(|e| PipelineError::Processor(e.to_string()))?;
                    let mut value = Vec::with_capacity(self.pb.len() + 6);
                    self.framing.encode_into(&self.pb, &mut value);
                    out.push(Output {
                        topic: topic.clone(),
                        key: Some(key.clone()),
                        value,
                        timestamp_ms: Some(t),
                        headers: None,
                    });
                }
            }
        }
        Ok(())
    }

    fn report(&self, metrics: &Metrics) {
        let s = self.engine.stats();
        metrics.window_readings.set(s.readings as i64);
        metrics.window_clients.set(s.clients as i64);
        metrics.window_bytes.set(s.reading_heap_bytes as i64);
    }
}

/// The engine's watermark scope for the one parsed from `SF_WATERMARK_SCOPE` (spelled once, in
/// `sensorflow-api`).
pub fn scope(s: WatermarkScope) -> window::WatermarkScope {
    match s {
        WatermarkScope::Partition => window::WatermarkScope::Partition,
        WatermarkScope::Client => window::WatermarkScope::Client,
    }
}

/// The rebuild settings of the common flags.
pub fn rebuild_config_of(common: &CommonArgs) -> RebuildConfig {
    RebuildConfig {
        stall_timeout: Duration::from_millis(common.rebuild_timeout_ms),
        max_records: (common.rebuild_max_records > 0).then_some(common.rebuild_max_records),
        ..RebuildConfig::default()
    }
}

/// Entry point of the `window-processor` binary.
///
/// # Errors
/// Start-up or unrecoverable processing errors (the process exits non-zero; a restart
/// resumes from the last committed offset).
pub async fn main(args: WindowArgs) -> anyhow::Result<()> {
    sensorflow_process::telemetry::init(args.common.serve.log_format);
    WindowConfig {
        size_ms: args.window_size_ms,
        grace_ms: args.grace_ms,
        scope: scope(args.watermark_scope),
    }
    .validate()
    .map_err(anyhow::Error::msg)?;
    tracing::info!(
        group = %args.group_id,
        window_ms = args.window_size_ms,
        grace_ms = args.grace_ms,
        scope = ?args.watermark_scope,
        fa = %args.fa_range, fi = %args.fi_range, fd = %args.fd_range,
        "window-processor starting"
    );
    let metrics = Metrics::new();
    let processor = WindowProcessor::new(&args, metrics.clone());
    let topics = args.client.topics.topics();
    let guard = sensorflow_runtime::runner::output_guard(
        &args.client.kafka,
        &[
            &topics.fa,
            &topics.fi,
            &topics.fd,
            &topics.late,
            &topics.dead_letter,
        ],
        &topics.dead_letter,
        sensorflow_api::processors::WINDOW_PROCESSOR,
    )
    .await;
    let processor = processor.with_guard(guard);
    let consumer_cfg = args
        .client
        .kafka
        .consumer_config(&args.group_id, sensorflow_api::processors::WINDOW_PROCESSOR);
    sensorflow_runtime::runner::run(
        &args.client.kafka,
        consumer_cfg,
        &args.common,
        metrics,
        processor,
        sensorflow_api::processors::WINDOW_PROCESSOR,
    )
    .await
}

#[cfg(test)]
mod tests {
    //! The window processor driven with transport-free records: no broker, no consumer loop.
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::{WindowArgs, WindowProcessor};
    use clap::Parser;
    use prost::Message as _;
    use rdkafka::message::Headers;
    use sensorflow_core::proto::{Feature, FeatureKind, Sensor, SensorReading};
    use sensorflow_runtime::dlq;
    use sensorflow_runtime::metrics::Metrics;
    use sensorflow_runtime::output::Output;
    use sensorflow_runtime::processor::Processor;
    use sensorflow_runtime::record::ConsumedRecord;

    const T0: i64 = 1_700_000_000_000;

    fn processor(extra: &[&str]) -> WindowProcessor {
        let mut argv = vec!["window-processor", "--bootstrap-servers", "127.0.0.1:1"];
        argv.extend_from_slice(extra);
        WindowProcessor::new(&WindowArgs::try_parse_from(argv).unwrap(), Metrics::new())
    }

    fn sz(t: i64, v: f64) -> Vec<u8> {
        SensorReading {
            event_time_ms: t,
            value: v,
            sensor: Sensor::Sz as i32,
            ingest_time_ms: t + 5,
        }
        .encode_to_vec()
    }

    fn feature(o: &Output) -> Feature {
        Feature::decode(&o.value[..]).unwrap()
    }

    fn header<'a>(o: &'a Output, key: &str) -> Option<&'a str> {
        o.headers
            .as_ref()?
            .iter()
            .find(|h| h.key == key)
            .and_then(|h| std::str::from_utf8(h.value?).ok())
    }

    #[test]
    fn each_reading_emits_its_windows_three_features_keyed_by_client() {
        let mut p = processor(&["--window-size-ms", "60000"]);
        let mut out = Vec::new();
        let (a, b) = (sz(T0, 1.0), sz(T0 + 10_000, 3.0));
        p.process(
            &ConsumedRecord::new("SZ", 2, 40)
                .with_key(b"c1")
                .with_value(&a)
                .with_timestamp(T0),
            &mut out,
        )
        .unwrap();
        assert_eq!(out.len(), 3);
        out.clear();
        p.process(
            &ConsumedRecord::new("SZ", 2, 41)
                .with_key(b"c1")
                .with_value(&b),
            &mut out,
        )
        .unwrap();
        let topics: Vec<&str> = out.iter().map(|o| &*o.topic).collect();
        assert_eq!(topics, ["FA", "FI", "FD"]);
        for o in &out {
            assert_eq!(o.key.as_deref(), Some(b"c1".as_slice()));
            assert_eq!(o.timestamp_ms, Some(T0 + 10_000));
            let f = feature(o);
            assert_eq!((f.client_id.as_str(), f.event_time_ms), ("c1", T0 + 10_000));
            assert_eq!((f.source_partition, f.source_offset), (2, 41));
            assert_eq!((f.window_count, f.ingest_time_ms), (2, T0 + 10_005));
        }
        let (fa, fi, fd) = (feature(&out[0]), feature(&out[1]), feature(&out[2]));
        assert_eq!(fa.kind, FeatureKind::Fa as i32);
        assert!(
            (fa.value - 2.0).abs() < 1e-12,
            "mean of 1 and 3: {}",
            fa.value
        );
        // Trapezoid over 10 s: (1 + 3) / 2 · 10 = 20 value·s.
        assert!((fi.value - 20.0).abs() < 1e-9, "integral: {}", fi.value);
        // (3 − 1) / 10 s.
        assert!((fd.value - 0.2).abs() < 1e-12, "derivative: {}", fd.value);
        // Another client has its own window.
        out.clear();
        let c = sz(T0 + 10_000, 7.0);
        p.process(
            &ConsumedRecord::new("SZ", 2, 42)
                .with_key(b"c2")
                .with_value(&c),
            &mut out,
        )
        .unwrap();
        assert_eq!(
            (feature(&out[0]).value, feature(&out[0]).window_count),
            (7.0, 1)
        );
    }

    #[test]
    fn malformed_and_late_records_are_routed_with_their_reason_and_source() {
        let mut p = processor(&["--grace-ms", "1000"]);
        let mut out = Vec::new();
        // No key.
        let v = sz(T0, 1.0);
        p.process(
            &ConsumedRecord::new("SZ", 0, 7)
                .with_value(&v)
                .with_timestamp(T0),
            &mut out,
        )
        .unwrap();
        // Not a reading.
        p.process(
            &ConsumedRecord::new("SZ", 0, 8)
                .with_key(b"c1")
                .with_value(b"\xff\xff\xff"),
            &mut out,
        )
        .unwrap();
        assert_eq!(out.len(), 2);
        assert!(out.iter().all(|o| &*o.topic == "dead-letter"), "{out:?}");
        assert_eq!(header(&out[0], dlq::REASON), Some("missing-key"));
        assert_eq!(header(&out[0], dlq::SOURCE_OFFSET), Some("7"));
        assert_eq!(
            header(&out[0], dlq::SOURCE_TIMESTAMP),
            Some(T0.to_string().as_str())
        );
        assert_eq!(header(&out[0], dlq::PROCESSOR), Some("window-processor"));
        assert_eq!(out[0].value, v, "the dead letter keeps the original value");
        assert_eq!(header(&out[1], dlq::REASON), Some("decode"));
        assert_eq!(header(&out[1], dlq::SOURCE_OFFSET), Some("8"));
        out.clear();
        // The watermark of partition 0 moves to T0 + 10 s − 1 s; a reading at T0 is late.
        let (now, old) = (sz(T0 + 10_000, 1.0), sz(T0, 2.0));
        for (off, v) in [(9, &now), (10, &old)] {
            p.process(
                &ConsumedRecord::new("SZ", 0, off)
                    .with_key(b"c1")
                    .with_value(v),
                &mut out,
            )
            .unwrap();
        }
        assert_eq!(out.len(), 4, "three features, then one late record");
        assert_eq!(&*out[3].topic, "late");
        assert_eq!(header(&out[3], dlq::REASON), Some("late"));
        assert_eq!(header(&out[3], dlq::SOURCE_OFFSET), Some("10"));
        // Another partition has its own watermark (partition scope).
        out.clear();
        p.process(
            &ConsumedRecord::new("SZ", 1, 0)
                .with_key(b"c9")
                .with_value(&old),
            &mut out,
        )
        .unwrap();
        assert_eq!(out.len(), 3);
    }

    #[test]
    fn revoking_a_partition_drops_its_window_state() {
        let mut p = processor(&[]);
        let mut out = Vec::new();
        let v = sz(T0, 4.0);
        let w = sz(T0 + 1_000, 6.0);
        p.process(
            &ConsumedRecord::new("SZ", 3, 0)
                .with_key(b"c1")
                .with_value(&v),
            &mut out,
        )
        .unwrap();
        p.on_revoked(&[("SZ".to_owned(), 3)]);
        out.clear();
        p.process(
            &ConsumedRecord::new("SZ", 3, 1)
                .with_key(b"c1")
                .with_value(&w),
            &mut out,
        )
        .unwrap();
        assert_eq!(
            (feature(&out[0]).window_count, feature(&out[0]).value),
            (1, 6.0)
        );
    }
}
