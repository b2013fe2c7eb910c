//! `window-processor`: SZ readings → FA, FI, FD features (see `sensorflow_core::window` for
//! the sliding window and `sensorflow_core::window::aligned` for tumbling, hopping and global
//! windows).

use clap::Parser;
use prost::Message as _;
use rdkafka::ClientConfig;
use sensorflow_api::{Aggregate, WatermarkScope, WindowEmit, WindowKind, WindowTime};
use sensorflow_api::{TopicNames as Topics, env};
use sensorflow_core::binning::BinRange;
use sensorflow_core::config::FeatureRanges;
use sensorflow_core::input::{self, ReadingBounds, Reject};
use sensorflow_core::proto::{Feature, FeatureKind, Sensor};
use sensorflow_core::window::aligned::{self, AlignedConfig, AlignedEngine, AlignedKind, Emission};
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

/// window-processor: per client, event-time windows over SZ readings.
///
/// By default, for every SZ reading it emits its sliding window's mean (FA), trapezoidal
/// integral (FI, value·s) and derivative (FD, value/s), each binned into 10 buckets over a
/// configured range, to the FA, FI and FD topics, keyed by client. Tumbling, hopping and
/// global (running total) windows, emission per record or once final, processing time and
/// other aggregates (count, sum, min, max) are options. Readings older than the watermark go
/// to the late topic; malformed records go to the dead-letter topic. Offsets are committed
/// only after every output is acknowledged (at-least-once; repeats after a crash are exact).
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
    /// Window kind: `Sliding` (each reading's `(t − size, t]`), `Tumbling`, `Hopping`
    /// (epoch-aligned) or `Global` (a running total per client).
    #[arg(long, env = env::WINDOW_KIND, default_value = "Sliding")]
    pub window_kind: WindowKind,
    /// Window length, ms (unused by `Global`).
    #[arg(long, env = env::WINDOW_SIZE_MS, default_value_t = 600_000, value_parser = clap::value_parser!(i64).range(1..))]
    pub window_size_ms: i64,
    /// Distance between hopping window starts, ms (`Hopping` only; at most the size).
    #[arg(long, env = env::WINDOW_ADVANCE_MS, value_parser = clap::value_parser!(i64).range(1..))]
    pub window_advance_ms: Option<i64>,
    /// `PerRecord`: each reading emits its windows' updated features; `Final`: each window
    /// emits once when the watermark passes its end (`Tumbling`, `Hopping` only).
    #[arg(long, env = env::WINDOW_EMIT, default_value = "PerRecord")]
    pub window_emit: WindowEmit,
    /// `EventTime`: readings are placed by their event time; `ProcessingTime`: by the SZ
    /// record's Kafka timestamp (the broker's append time on a `LogAppendTime` topic).
    #[arg(long, env = env::WINDOW_TIME, default_value = "EventTime")]
    pub window_time: WindowTime,
    /// The FA topic's aggregate: `Count`, `Sum`, `Mean`, `Min`, `Max`, `Integral` or
    /// `Derivative`.
    #[arg(long, env = env::FA_AGGREGATE, default_value = "Mean")]
    pub fa_aggregate: Aggregate,
    /// The FI topic's aggregate.
    #[arg(long, env = env::FI_AGGREGATE, default_value = "Integral")]
    pub fi_aggregate: Aggregate,
    /// The FD topic's aggregate.
    #[arg(long, env = env::FD_AGGREGATE, default_value = "Derivative")]
    pub fd_aggregate: Aggregate,
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

/// The windows the arguments ask for.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum EngineConfig {
    /// Each reading's sliding window ([`sensorflow_core::window`]).
    Sliding(WindowConfig),
    /// Tumbling, hopping or global windows ([`sensorflow_core::window::aligned`]).
    Aligned(AlignedConfig),
}

impl EngineConfig {
    /// The configuration of `args`.
    ///
    /// # Errors
    /// A message when the combination is not valid: an advance for a kind other than
    /// `Hopping` or none for `Hopping`, final emission of a sliding or global window, or the
    /// bounds of [`WindowConfig::validate`] / [`AlignedConfig::validate`].
    pub fn of(args: &WindowArgs) -> Result<Self, String> {
        let scope = scope(args.watermark_scope);
        let (size_ms, grace_ms) = (args.window_size_ms, args.grace_ms);
        let emit = match args.window_emit {
            WindowEmit::PerRecord => aligned::Emit::PerRecord,
            WindowEmit::Final => aligned::Emit::Final,
        };
        let kind = match (args.window_kind, args.window_advance_ms) {
            (WindowKind::Hopping, Some(advance_ms)) => AlignedKind::Hopping {
                size_ms,
                advance_ms,
            },
            (WindowKind::Hopping, None) => {
                return Err("a Hopping window needs --window-advance-ms".into());
            }
            (_, Some(_)) => return Err("--window-advance-ms is for Hopping windows only".into()),
            (WindowKind::Sliding, None) => {
                if emit == aligned::Emit::Final {
                    return Err(
                        "a Sliding window emits per record (each reading has its own window)"
                            .into(),
                    );
                }
                let c = WindowConfig {
                    size_ms,
                    grace_ms,
                    scope,
                };
                c.validate()?;
                return Ok(Self::Sliding(c));
            }
            (WindowKind::Tumbling, None) => AlignedKind::Tumbling { size_ms },
            (WindowKind::Global, None) => AlignedKind::Global,
        };
        let c = AlignedConfig {
            kind,
            emit,
            grace_ms,
            scope,
        };
        c.validate()?;
        Ok(Self::Aligned(c))
    }

    /// How far before a partition's last event time a rebuild starts reading, ms: what the
    /// windows open at the committed offset can hold (size + 2 × grace; the global window:
    /// everything retained).
    pub fn lookback_ms(&self) -> i64 {
        let (size, grace) = match self {
            Self::Sliding(c) => (c.size_ms, c.grace_ms),
            Self::Aligned(c) => match c.kind {
                AlignedKind::Tumbling { size_ms } | AlignedKind::Hopping { size_ms, .. } => {
                    (size_ms, c.grace_ms)
                }
                AlignedKind::Global => return i64::MAX,
            },
        };
        size.saturating_add(grace.saturating_mul(2))
    }
}

/// The window engine in use.
enum Engine {
    Sliding(WindowEngine),
    Aligned(AlignedEngine),
}

impl Engine {
    fn new(cfg: EngineConfig, extremes: bool) -> Self {
        match cfg {
            EngineConfig::Sliding(c) => Self::Sliding(WindowEngine::new(c).with_extremes(extremes)),
            EngineConfig::Aligned(c) => Self::Aligned(AlignedEngine::new(c)),
        }
    }

    fn revoke(&mut self, partition: i32) {
        match self {
            Self::Sliding(e) => e.revoke(partition),
            Self::Aligned(e) => e.revoke(partition),
        }
    }

    /// Processes one reading: `Err(watermark)` when late, else the windows it emits (into
    /// `out`, cleared first).
    fn process(
        &mut self,
        partition: i32,
        client: &str,
        r: Reading,
        out: &mut Vec<Emission>,
    ) -> Result<(), i64> {
        out.clear();
        match self {
            Self::Sliding(e) => match e.process(partition, client, r) {
                Outcome::Late { watermark } => Err(watermark),
                Outcome::Emit(aggregates) => {
                    let size = e.config().size_ms;
                    // (t − size, t] in whole ms is [t − size + 1, t + 1).
                    out.push(Emission {
                        client: client.into(),
                        start: r.t.saturating_sub(size).saturating_add(1),
                        end: r.t.saturating_add(1),
                        time: r.t,
                        aggregates,
                    });
                    Ok(())
                }
            },
            Self::Aligned(e) => e
                .process(partition, client, r, out)
                .map_err(|l| l.watermark),
        }
    }
}

/// The window-processor's [`Processor`].
pub struct WindowProcessor {
    engine: Engine,
    engine_cfg: EngineConfig,
    /// The aggregate of each feature topic (FA, FI, FD).
    aggregates: [window::Aggregate; 3],
    /// Whether readings are placed by the record's Kafka timestamp.
    processing_time: bool,
    /// Emissions of the reading being processed (reused).
    emissions: Vec<Emission>,
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
    ///
    /// # Errors
    /// The message of [`EngineConfig::of`] when the window arguments are not valid.
    pub fn new(args: &WindowArgs, metrics: Metrics) -> Result<Self, String> {
        metrics
            .liveness
            .set_timeout(Duration::from_millis(args.common.liveness_timeout_ms));
        let topics = args.client.topics.topics();
        let engine_cfg = EngineConfig::of(args)?;
        let aggregates = [args.fa_aggregate, args.fi_aggregate, args.fd_aggregate].map(aggregate);
        let extremes = aggregates.iter().any(|a| a.needs_extremes());
        Ok(Self {
            engine: Engine::new(engine_cfg, extremes),
            engine_cfg,
            aggregates,
            processing_time: args.window_time == WindowTime::ProcessingTime,
            emissions: Vec::new(),
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
        })
    }

    /// The time that places a reading in its windows: its event time, or under processing
    /// time the record's Kafka timestamp (the event time when the record has none).
    fn window_time(&self, event_time_ms: i64, msg: &ConsumedRecord<'_>) -> i64 {
        if self.processing_time {
            msg.timestamp_ms.unwrap_or(event_time_ms)
        } else {
            event_time_ms
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

    /// The three feature records of emission `em` (the `index`-th of those `msg` caused), or
    /// a dead letter for `msg` when a feature topic would refuse their timestamp.
    fn emit(
        &mut self,
        msg: &ConsumedRecord<'_>,
        reading: &sensorflow_core::proto::SensorReading,
        index: usize,
        em: &Emission,
        now: i64,
        out: &mut Vec<Output>,
    ) -> Result<(), PipelineError> {
        // Outputs carry the window's time; one a feature topic would refuse (its
        // `message.timestamp.before.max.ms`, say) makes a dead letter rather than a partial
        // triple.
        if let Some(r) = self.refused_features(em.time, now) {
            self.reject(msg, &r, out);
            return Ok(());
        }
        let ranges = [self.ranges.fa, self.ranges.fi, self.ranges.fd];
        let kinds = [FeatureKind::Fa, FeatureKind::Fi, FeatureKind::Fd];
        // One key for the three records.
        let key: Arc<[u8]> = em.client.as_bytes().into();
        for i in 0..3 {
            let value = self.aggregates[i].of(&em.aggregates);
            let f = &mut self.feature;
            f.client_id.clear();
            f.client_id.push_str(&em.client);
            f.kind = kinds[i] as i32;
            f.event_time_ms = em.time;
            f.source_partition = msg.partition();
            f.source_offset = msg.offset();
            f.source_index = u32::try_from(index).unwrap_or(u32::MAX);
            f.window_start_ms = em.start;
            f.window_end_ms = em.end;
            f.bin = ranges[i].bin(value);
            f.value = value;
            f.window_count = em.aggregates.count;
            f.ingest_time_ms = reading.ingest_time_ms;
            self.pb.clear();
            f.encode(&mut self.pb)
                .map_err(|e| PipelineError::Processor(e.to_string()))?;
            let mut value = Vec::with_capacity(self.pb.len() + 6);
            self.framing.encode_into(&self.pb, &mut value);
            out.push(Output {
                topic: self.feature_topics[i].clone(),
                key: Some(key.clone()),
                value,
                timestamp_ms: Some(em.time),
                headers: None,
            });
        }
        Ok(())
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
        let lookback = self.engine_cfg.lookback_ms();
        let processing_time = self.processing_time;
        let emissions = &mut self.emissions;
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
                        // The same time the live run placed the reading by.
                        let t = if processing_time {
                            m.timestamp_ms.unwrap_or(r.event_time_ms)
                        } else {
                            r.event_time_ms
                        };
                        Some((t, (client.to_owned(), Reading { t, v: r.value })))
                    },
                    |(_, p), _, (client, reading)| {
                        // Replayed into state only: these outputs were emitted before the commit.
                        let _ = engine.process(*p, &client, reading, emissions);
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
        let extremes = self.aggregates.iter().any(|a| a.needs_extremes());
        self.engine = Engine::new(self.engine_cfg, extremes);
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
        let t = self.window_time(reading.event_time_ms, msg);
        let mut emissions = std::mem::take(&mut self.emissions);
        let result = self.engine.process(
            msg.partition(),
            client,
            Reading {
                t,
                v: reading.value,
            },
            &mut emissions,
        );
        let done = match result {
            Err(watermark) => {
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
                Ok(())
            }
            Ok(()) => emissions
                .iter()
                .enumerate()
                .try_for_each(|(i, em)| self.emit(msg, &reading, i, em, now, out)),
        };
        self.emissions = emissions;
        done
    }

    fn report(&self, metrics: &Metrics) {
        let (clients, readings, bytes) = match &self.engine {
            Engine::Sliding(e) => {
                let s = e.stats();
                (s.clients, s.readings, s.reading_heap_bytes)
            }
            // 16 bytes a retained reading (the open windows' sums are not counted).
            Engine::Aligned(e) => {
                let (clients, _windows, readings) = e.stats();
                (clients, readings, readings * 16)
            }
        };
        metrics.window_readings.set(readings as i64);
        metrics.window_clients.set(clients as i64);
        metrics.window_bytes.set(bytes as i64);
    }
}

/// The core's aggregate for the one parsed from `SF_FA_AGGREGATE` and its siblings.
pub fn aggregate(a: Aggregate) -> window::Aggregate {
    match a {
        Aggregate::Count => window::Aggregate::Count,
        Aggregate::Sum => window::Aggregate::Sum,
        Aggregate::Mean => window::Aggregate::Mean,
        Aggregate::Min => window::Aggregate::Min,
        Aggregate::Max => window::Aggregate::Max,
        Aggregate::Integral => window::Aggregate::Integral,
        Aggregate::Derivative => window::Aggregate::Derivative,
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
    let metrics = Metrics::new();
    let processor = WindowProcessor::new(&args, metrics.clone()).map_err(anyhow::Error::msg)?;
    tracing::info!(
        group = %args.group_id,
        kind = %args.window_kind,
        window_ms = args.window_size_ms,
        advance_ms = ?args.window_advance_ms,
        emit = %args.window_emit,
        time = %args.window_time,
        aggregates = %format_args!("FA {} FI {} FD {}", args.fa_aggregate, args.fi_aggregate, args.fd_aggregate),
        grace_ms = args.grace_ms,
        scope = ?args.watermark_scope,
        fa = %args.fa_range, fi = %args.fi_range, fd = %args.fd_range,
        "window-processor starting"
    );
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
        WindowProcessor::new(&WindowArgs::try_parse_from(argv).unwrap(), Metrics::new()).unwrap()
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
    fn hopping_final_windows_are_emitted_once_when_the_watermark_passes_their_end() {
        // 2-minute windows every minute, grace 0, max of the values in FA and the count in FI.
        let mut p = processor(&[
            "--window-kind",
            "Hopping",
            "--window-size-ms",
            "120000",
            "--window-advance-ms",
            "60000",
            "--window-emit",
            "Final",
            "--grace-ms",
            "0",
            "--fa-aggregate",
            "Max",
            "--fi-aggregate",
            "Count",
        ]);
        let t0 = 1_700_000_040_000; // a whole minute
        let mut out = Vec::new();
        for (off, (t, v)) in [(t0 + 1_000, 2.0), (t0 + 30_000, 5.0)]
            .into_iter()
            .enumerate()
        {
            let r = sz(t, v);
            p.process(
                &ConsumedRecord::new("SZ", 0, off as i64)
                    .with_key(b"c1")
                    .with_value(&r),
                &mut out,
            )
            .unwrap();
        }
        assert!(
            out.is_empty(),
            "nothing closes before the watermark passes an end"
        );
        // At t0 + 125 s the watermark passes t0 + 60 000 and t0 + 120 000: two windows close.
        let r = sz(t0 + 125_000, 1.0);
        p.process(
            &ConsumedRecord::new("SZ", 0, 2)
                .with_key(b"c2")
                .with_value(&r),
            &mut out,
        )
        .unwrap();
        let features: Vec<Feature> = out.iter().map(feature).collect();
        assert_eq!(features.len(), 6, "two windows × FA, FI, FD");
        let windows: Vec<(i64, i64, u32, i64)> = features
            .iter()
            .map(|f| {
                (
                    f.window_start_ms - t0,
                    f.window_end_ms - t0,
                    f.source_index,
                    f.event_time_ms - t0,
                )
            })
            .collect();
        assert_eq!(
            windows,
            [
                (-60_000, 60_000, 0, 59_999),
                (-60_000, 60_000, 0, 59_999),
                (-60_000, 60_000, 0, 59_999),
                (0, 120_000, 1, 119_999),
                (0, 120_000, 1, 119_999),
                (0, 120_000, 1, 119_999),
            ]
        );
        assert!(
            features
                .iter()
                .all(|f| f.client_id == "c1" && f.source_offset == 2 && f.window_count == 2)
        );
        assert_eq!(
            (features[0].value, features[1].value),
            (5.0, 2.0),
            "max, count"
        );
        assert_eq!(out[0].timestamp_ms, Some(t0 + 59_999));
    }

    #[test]
    fn window_arguments_that_do_not_fit_together_are_refused() {
        for extra in [
            &["--window-kind", "Hopping"][..],
            &["--window-advance-ms", "1000"],
            &["--window-emit", "Final"],
            &["--window-kind", "Global", "--window-emit", "Final"],
            &[
                "--window-kind",
                "Hopping",
                "--window-size-ms",
                "1000",
                "--window-advance-ms",
                "2000",
            ],
        ] {
            let mut argv = vec!["window-processor", "--bootstrap-servers", "127.0.0.1:1"];
            argv.extend_from_slice(extra);
            let args = WindowArgs::try_parse_from(argv).unwrap();
            assert!(
                WindowProcessor::new(&args, Metrics::new()).is_err(),
                "{extra:?}"
            );
        }
    }

    #[test]
    fn processing_time_places_readings_by_the_record_timestamp() {
        let mut p = processor(&[
            "--window-kind",
            "Tumbling",
            "--window-size-ms",
            "60000",
            "--window-time",
            "ProcessingTime",
        ]);
        let mut out = Vec::new();
        // Event time far in the past; the broker stamped it at T0 + 5 s.
        let r = sz(T0 - 3_600_000, 4.0);
        p.process(
            &ConsumedRecord::new("SZ", 0, 0)
                .with_key(b"c1")
                .with_value(&r)
                .with_timestamp(T0 + 5_000),
            &mut out,
        )
        .unwrap();
        let f = feature(&out[0]);
        assert_eq!(f.event_time_ms, T0 + 5_000);
        assert!(f.window_start_ms <= T0 + 5_000 && T0 + 5_000 < f.window_end_ms);
        assert_eq!(f.window_end_ms - f.window_start_ms, 60_000);
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
