//! `join-predict`: SX, SY, FA, FI, FD → predictions (see `sensorflow_core::join` for the
//! as-of semantics and `sensorflow_core::model`).
//!
//! ```text
//!   record ─► decode ─► PartitionJoin::apply ─► Late ─► late topic (reason `late`)
//!                                           └─► events released by the watermark:
//!       Prediction ─► model ─► predictions     Skipped ─► dead-letter (`missing-sx`, `stale-sy`, …)
//!       IncompleteTriple ─► dead-letter (`incomplete-triple`)
//!   flush tick ─► PartitionJoin::advance(now) (idle inputs) ─► the same events
//!   commit ─► per input partition, up to the first record whose event is still pending
//! ```

use anyhow::Context;
use clap::Parser;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prost::Message as _;
use rdkafka::ClientConfig;
use rdkafka::message::{Header, OwnedHeaders};
use rustc_hash::FxHashMap;
use sensorflow_api::{ModelKind, TopicNames as Topics, env};
use sensorflow_core::input::{self, ReadingBounds, Reject};
use sensorflow_core::join::{
    Applied, InputKind, JoinConfig, JoinEvent, JoinInput, Outbox, PartitionJoin, RecordRef,
    SzSource, Trigger,
};
use sensorflow_core::model::{
    self, FeatureBounds, FeatureVector, ModelConfig, Predictor, splitmix64,
};
use sensorflow_core::proto::{FeatureKind, Prediction, Sensor, TriggerKind};
use sensorflow_core::wire::Framing;
use sensorflow_runtime::args::ClientArgs;
use sensorflow_runtime::consumer::TopicPartition;
use sensorflow_runtime::dlq::{self, dead_letter};
use sensorflow_runtime::emitter::OutputGuard;
use sensorflow_runtime::error::PipelineError;
use sensorflow_runtime::metrics::{Metrics, ReasonLabel};
use sensorflow_runtime::output::Output;
use sensorflow_runtime::processor::Processor;
use sensorflow_runtime::rebuild::{self, RebuildConfig, Request};
use sensorflow_runtime::record::ConsumedRecord;
use sensorflow_runtime::runner::{CommonArgs, rebuild_config};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// join-predict: joins SX, SY and the FA/FI/FD triple by client, predicts, and alerts.
///
/// All five inputs must be co-partitioned (same partition count, keyed by client id); this
/// is checked at start-up. Every SX or SY reading and every completed feature triple is a
/// trigger at its event time t; once the join's watermark passes t it yields one prediction
/// `[SX, SY, FA, FI, FD] → probability → alert` from each other input's latest value with
/// event time ≤ t, or a dead-letter record saying which input was missing or stale. Records
/// below the watermark go to the late topic; malformed records, invalid vectors and
/// incomplete triples go to the dead-letter topic.
#[derive(Debug, Clone, Parser)]
#[command(name = "join-predict", version, about, long_about)]
pub struct JoinArgs {
    /// The broker connection, topic names and record framing.
    #[command(flatten)]
    pub client: ClientArgs,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub common: CommonArgs,
    /// Consumer group id.
    #[arg(long, env = env::GROUP_ID, default_value = "sensorflow-join")]
    pub group_id: String,
    /// Model: `logistic` (weights and bias below) or `random` (uniform, seeded).
    #[arg(long, env = env::MODEL, default_value_t = ModelKind::Logistic)]
    pub model: ModelKind,
    /// Logistic weights for [SX, SY, FA, FI, FD], comma-separated.
    #[arg(
        long,
        env = env::MODEL_WEIGHTS,
        value_delimiter = ',',
        default_value = "0.01,0.01,1.0,0.3,0.2",
        allow_hyphen_values = true
    )]
    pub model_weights: Vec<f64>,
    /// Logistic bias.
    #[arg(long, env = env::MODEL_BIAS, default_value_t = model::DEFAULT_BIAS, allow_hyphen_values = true)]
    pub model_bias: f64,
    /// Seed of the random model.
    #[arg(long, env = env::MODEL_SEED, default_value_t = 42)]
    pub model_seed: u64,
    /// Alert when probability ≥ threshold (0..1).
    #[arg(long, env = env::THRESHOLD, default_value_t = 0.5)]
    pub threshold: f64,
    /// Largest SX/SY value accepted in a feature vector.
    #[arg(long, env = env::CATEGORICAL_MAX, default_value_t = 100_000)]
    pub categorical_max: i64,
    /// How far back (record timestamps, ms) to re-read inputs to rebuild join state on
    /// partition assignment, at least (2 × max staleness + join grace is always read),
    /// counted from the latest of the five inputs' last processed records.
    #[arg(long, env = env::REBUILD_LOOKBACK_MS, default_value_t = 600_000)]
    pub rebuild_lookback_ms: i64,
    /// Allowed out-of-orderness of each input partition, ms: a record whose event time is below
    /// the largest earlier event time of its partition minus this is late (late topic). The
    /// join watermark is the minimum over the five inputs of (max event time seen − grace): a
    /// prediction for t waits until every input has passed t + grace.
    #[arg(long, env = env::JOIN_GRACE_MS, default_value_t = sensorflow_core::join::DEFAULT_GRACE_MS, value_parser = clap::value_parser!(i64).range(0..))]
    pub join_grace_ms: i64,
    /// Wall-clock ms without records on all five inputs of a partition after which everything
    /// seen is released (the tail of a stream). With the next flag, the only wall-clock
    /// dependence of the join's output.
    #[arg(long, env = env::JOIN_IDLE_TIMEOUT_MS, default_value_t = 10_000, value_parser = clap::value_parser!(i64).range(1..))]
    pub join_idle_timeout_ms: i64,
    /// Wall-clock ms without records after which one input partition stops holding the join
    /// watermark back while the others flow. Keep it above start-up skew and upstream
    /// restarts: records of an input declared idle can become late.
    #[arg(long, env = env::JOIN_INPUT_IDLE_TIMEOUT_MS, default_value_t = 300_000, value_parser = clap::value_parser!(i64).range(1..))]
    pub join_input_idle_timeout_ms: i64,
    /// Triggers, partial triples and outcomes the join may hold (waiting for the watermark,
    /// or for earlier records' outcomes) before it pauses fetching the input partitions that
    /// run ahead of their watermark (watermark alignment, as Flink's FLIP-182 or Kafka
    /// Streams' `buffered.records.per.partition`); it resumes them below half of this. Above
    /// twice this the oldest triggers are released at once, dead-lettered `join-overflow`.
    /// ≈ 150 bytes each.
    #[arg(long, env = env::JOIN_MAX_HELD_RECORDS, default_value_t = 500_000, value_parser = clap::value_parser!(i64).range(1..))]
    pub max_held_records: i64,
    /// A value older than t − this is not used for a trigger at t (the trigger is counted as
    /// stale or missing and dead-lettered with that reason).
    #[arg(long, env = env::MAX_STALENESS_MS, default_value_t = 600_000, value_parser = clap::value_parser!(i64).range(1..))]
    pub max_staleness_ms: i64,
    /// Consumer group of the window-processor that writes FA/FI/FD. Every second the join
    /// reads that group's committed offsets on SZ; while a co-partitioned SZ partition has
    /// records left, silent feature inputs mean "upstream lags", not "stream ended", so the
    /// all-quiet release of that partition waits (up to the input idle timeout). Empty: not
    /// watched (the wall-clock rule alone).
    #[arg(long, env = env::UPSTREAM_GROUP_ID, default_value = "sensorflow-window")]
    pub upstream_group_id: String,
}

impl JoinArgs {
    /// The join configuration these flags set.
    pub fn join_config(&self) -> JoinConfig {
        JoinConfig {
            grace_ms: self.join_grace_ms,
            max_staleness_ms: self.max_staleness_ms,
            idle_timeout_ms: Some(self.join_idle_timeout_ms),
            input_idle_timeout_ms: Some(self.join_input_idle_timeout_ms),
        }
    }
}

/// Label set `{trigger}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TriggerLabel {
    /// `sx`, `sy` or `features`.
    pub trigger: String,
}

/// The join's own metrics (registered beside the common ones).
#[derive(Clone, Default)]
pub struct JoinMetrics {
    /// `sensorflow_predictions_total{trigger}`.
    pub predictions: Family<TriggerLabel, Counter>,
    /// `sensorflow_join_unpredicted_total{reason}`: triggers without a prediction
    /// (`missing-sx`, `stale-sy`, …), incomplete triples and late records.
    pub unpredicted: Family<ReasonLabel, Counter>,
    /// `sensorflow_join_duplicates_total`: repeated features ignored.
    pub duplicates: Counter,
    /// `sensorflow_join_pending_triggers`: triggers waiting for the watermark.
    pub pending: Gauge,
    /// `sensorflow_join_state_values`: as-of values held.
    pub values: Gauge,
    /// `sensorflow_join_state_bytes`: approximate heap bytes of the join state.
    pub bytes: Gauge,
    /// `sensorflow_join_upstream_backlog_partitions`: SZ partitions on which the upstream
    /// window-processor has records left (holding the all-quiet release back).
    pub upstream_backlog: Gauge,
    /// `sensorflow_join_held_outcomes`: outcomes made but held until every record below theirs
    /// has its own (see [`Outbox`]).
    pub held: Gauge,
}

impl JoinMetrics {
    /// Registers them in `r` (prefixed `sensorflow_` by the caller's registry).
    pub fn register(&self, r: &mut prometheus_client::registry::Registry) {
        r.register(
            "predictions",
            "Predictions made, by trigger",
            self.predictions.clone(),
        );
        r.register(
            "join_unpredicted",
            "Join triggers or records without a prediction, by reason",
            self.unpredicted.clone(),
        );
        r.register(
            "join_duplicates",
            "Repeated features ignored by the join",
            self.duplicates.clone(),
        );
        r.register(
            "join_pending_triggers",
            "Join triggers waiting for the watermark",
            self.pending.clone(),
        );
        r.register(
            "join_state_values",
            "As-of values held by the join",
            self.values.clone(),
        );
        r.register(
            "join_state_bytes",
            "Approximate heap bytes of the join state",
            self.bytes.clone(),
        );
        r.register(
            "join_upstream_backlog_partitions",
            "SZ partitions on which the upstream window-processor has records left",
            self.upstream_backlog.clone(),
        );
        r.register(
            "join_held_outcomes",
            "Join outcomes held until every record below theirs in the same input has its own",
            self.held.clone(),
        );
    }
}

/// Records processed between two checks of the held-records budget ([`JoinProcessor::align`]).
const ALIGN_EVERY: u32 = 256;

/// The join-predict's [`Processor`].
pub struct JoinProcessor {
    states: FxHashMap<i32, PartitionJoin>,
    /// Held triggers, partial triples and outcomes before the inputs that run ahead are
    /// paused (`--max-held-records`).
    max_held: usize,
    /// Input partitions paused for the watermark alignment (see
    /// [`Processor::pause_changes`]), sorted, and whether that changed since the loop asked.
    paused: Vec<TopicPartition>,
    paused_changed: bool,
    /// Records processed since the last [`JoinProcessor::align`].
    since_align: u32,
    /// Per partition, the outcomes made but held until they are below the commit points.
    outboxes: FxHashMap<i32, Outbox<Output>>,
    /// Outputs of one join event, before they go through its partition's outbox (reused).
    made: Vec<Output>,
    cfg: JoinConfig,
    inputs: FxHashMap<String, InputKind>,
    jm: JoinMetrics,
    events: Vec<JoinEvent>,
    model: Box<dyn Predictor>,
    threshold: f64,
    bounds: FeatureBounds,
    topics: Topics,
    /// `topics.predictions` and `topics.dead_letter`, shared by every output.
    predictions_topic: Arc<str>,
    dead_letter_topic: Arc<str>,
    framing: Framing,
    rebuild: ClientConfig,
    rebuild_cfg: RebuildConfig,
    lookback_ms: i64,
    metrics: Metrics,
    reading_bounds: ReadingBounds,
    /// The bounds as configured (`reading_bounds` is them within the output topics' limits).
    configured_bounds: ReadingBounds,
    /// What the outputs are checked against before sending (see [`OutputGuard`]).
    guard: Option<OutputGuard>,
    /// SZ partitions on which the upstream window-processor has a backlog, sorted; written by
    /// the [`watch_upstream`] thread.
    upstream: Option<Arc<Mutex<Vec<i32>>>>,
    /// `sensorflow_predictions_total` for `sx`, `sy` and `features`, looked up once.
    predicted: [Counter; 3],
    /// The prediction being made, reused: its strings and feature list keep their buffers
    /// from one prediction to the next (model name, version and threshold are set once).
    scratch: Prediction,
    /// Protobuf bytes of `scratch`, reused.
    encoded: Vec<u8>,
}

impl JoinProcessor {
    /// A processor with empty state.
    ///
    /// # Errors
    /// Invalid model weights or threshold.
    pub fn new(args: &JoinArgs, metrics: Metrics, jm: JoinMetrics) -> anyhow::Result<Self> {
        let cfg = args.join_config();
        cfg.validate().map_err(anyhow::Error::msg)?;
        metrics
            .liveness
            .set_timeout(Duration::from_millis(args.common.liveness_timeout_ms));
        let model_cfg = match args.model {
            ModelKind::Random => ModelConfig::Random {
                seed: args.model_seed,
            },
            ModelKind::Logistic => ModelConfig::Logistic {
                weights: args.model_weights.clone(),
                bias: args.model_bias,
            },
        };
        let topics = args.client.topics.topics();
        let inputs = [
            (topics.sx.clone(), InputKind::Sx),
            (topics.sy.clone(), InputKind::Sy),
            (topics.fa.clone(), InputKind::Fa),
            (topics.fi.clone(), InputKind::Fi),
            (topics.fd.clone(), InputKind::Fd),
        ]
        .into_iter()
        .collect();
        let model = model_cfg.build()?;
        let threshold = model::check_threshold(args.threshold)?;
        let predicted = ["sx", "sy", "features"].map(|t| {
            jm.predictions
                .get_or_create(&TriggerLabel {
                    trigger: t.to_owned(),
                })
                .clone()
        });
        let scratch = Prediction {
            model_name: model.name().to_owned(),
            model_version: model.version().to_owned(),
            threshold,
            ..Prediction::default()
        };
        Ok(Self {
            predicted,
            scratch,
            encoded: Vec::with_capacity(128),
            states: FxHashMap::default(),
            outboxes: FxHashMap::default(),
            max_held: usize::try_from(args.max_held_records).unwrap_or(usize::MAX),
            paused: Vec::new(),
            paused_changed: false,
            since_align: 0,
            made: Vec::new(),
            cfg,
            inputs,
            jm,
            events: Vec::new(),
            model,
            threshold,
            bounds: FeatureBounds {
                categorical_min: 0,
                categorical_max: args.categorical_max,
            },
            predictions_topic: topics.predictions.as_str().into(),
            dead_letter_topic: topics.dead_letter.as_str().into(),
            topics,
            framing: args.client.framing.framing(),
            rebuild: rebuild_config(&args.client.kafka, &args.group_id),
            rebuild_cfg: crate::window::rebuild_config_of(&args.common),
            lookback_ms: args.rebuild_lookback_ms.max(
                cfg.max_staleness_ms
                    .saturating_mul(2)
                    .saturating_add(cfg.grace_ms),
            ),
            metrics,
            reading_bounds: args.common.reading_bounds(),
            configured_bounds: args.common.reading_bounds(),
            guard: None,
            upstream: None,
        })
    }

    /// Checks outputs against `guard`, and accepts no event time further ahead than the
    /// predictions and late topics take ([`sensorflow_runtime::runner::bounds_within`]).
    pub fn with_guard(mut self, guard: OutputGuard) -> Self {
        self.set_guard(guard);
        self
    }

    fn set_guard(&mut self, guard: OutputGuard) {
        let outputs = [self.topics.predictions.as_str(), self.topics.late.as_str()];
        self.reading_bounds =
            sensorflow_runtime::runner::bounds_within(self.configured_bounds, &guard, &outputs);
        self.guard = Some(guard);
    }

    /// Uses `backlog` (sorted SZ partition numbers whose upstream has records left, kept up
    /// to date by [`watch_upstream`]) on every flush tick.
    pub fn with_upstream(mut self, backlog: Arc<Mutex<Vec<i32>>>) -> Self {
        self.upstream = Some(backlog);
        self
    }

    /// Decodes a record into a join input and the ingest time it carries, checked against the
    /// reading bounds at wall-clock time `now_ms`: SX/SY readings by event time and value,
    /// features by event time (a feature dated far ahead would otherwise pin its input's
    /// offsets for ever as a triple that never completes). Dead-letter reasons `future`,
    /// `too-old`, `out-of-range`.
    fn decode(&self, msg: &ConsumedRecord<'_>, now_ms: i64) -> Result<(JoinInput, i64), Reject> {
        let which = *self
            .inputs
            .get(msg.topic())
            .ok_or_else(|| Reject::Decode(format!("unexpected topic {}", msg.topic())))?;
        match which {
            InputKind::Sx | InputKind::Sy => {
                let sensor = if which == InputKind::Sx {
                    Sensor::Sx
                } else {
                    Sensor::Sy
                };
                let r = input::decode_reading(&self.framing, msg.payload(), sensor)?;
                self.reading_bounds.check(&r, now_ms)?;
                let value = input::categorical(r.value)?;
                let event_time_ms = r.event_time_ms;
                let ji = if which == InputKind::Sx {
                    JoinInput::Sx {
                        value,
                        event_time_ms,
                    }
                } else {
                    JoinInput::Sy {
                        value,
                        event_time_ms,
                    }
                };
                Ok((ji, r.ingest_time_ms))
            }
            kind => {
                let fk = match kind {
                    InputKind::Fa => FeatureKind::Fa,
                    InputKind::Fi => FeatureKind::Fi,
                    _ => FeatureKind::Fd,
                };
                let f = input::decode_feature(&self.framing, msg.payload(), fk)?;
                self.reading_bounds.check_time(f.event_time_ms, now_ms)?;
                Ok((
                    JoinInput::Feature {
                        kind,
                        bin: f.bin,
                        event_time_ms: f.event_time_ms,
                        source: SzSource {
                            partition: f.source_partition,
                            offset: f.source_offset,
                            index: f.source_index,
                        },
                    },
                    f.ingest_time_ms,
                ))
            }
        }
    }

    fn topic_of(&self, input: InputKind) -> &str {
        input_topic(&self.topics, input)
    }

    /// A dead-letter record for a join outcome (no single input record to copy): key = client,
    /// empty value, the reason and the record it is about in the usual headers.
    #[allow(clippy::too_many_arguments)]
    fn outcome_record(
        &self,
        client: &str,
        reason: &str,
        error: &str,
        input: InputKind,
        partition: i32,
        offset: i64,
        event_time_ms: i64,
    ) -> Output {
        let mut h = OwnedHeaders::new();
        let partition = partition.to_string();
        let offset = offset.to_string();
        let ts = event_time_ms.to_string();
        for (k, v) in [
            (dlq::REASON, reason),
            (dlq::ERROR, error),
            (dlq::SOURCE_TOPIC, self.topic_of(input)),
            (dlq::SOURCE_PARTITION, partition.as_str()),
            (dlq::SOURCE_OFFSET, offset.as_str()),
            (dlq::SOURCE_TIMESTAMP, ts.as_str()),
            (dlq::PROCESSOR, sensorflow_api::processors::JOIN_PREDICT),
        ] {
            h = h.insert(Header {
                key: k,
                value: Some(v.as_bytes()),
            });
        }
        self.jm
            .unpredicted
            .get_or_create(&ReasonLabel {
                reason: reason.to_owned(),
            })
            .inc();
        Output {
            topic: self.dead_letter_topic.clone(),
            key: Some(client.as_bytes().into()),
            value: Vec::new(),
            timestamp_ms: Some(event_time_ms),
            headers: Some(h),
        }
    }

    /// Triggers, partial triples and outcomes held, over every partition.
    fn held(&self) -> usize {
        self.states.values().map(PartitionJoin::held).sum::<usize>()
            + self.outboxes.values().map(Outbox::len).sum::<usize>()
    }

    /// Watermark alignment with a memory budget: above `max_held` held records, the input
    /// partitions that run ahead of their partition's watermark are paused (they add triggers
    /// while a slower input holds the watermark; pausing them never holds it back), until
    /// fewer than half are held. Above twice the budget (the paused inputs' records already
    /// fetched, or triggers of the slow input itself), each partition releases its oldest
    /// triggers at once, dead-lettered `join-overflow`, in proportion to what it holds.
    fn align(&mut self, now: i64, out: &mut Vec<Output>) {
        self.since_align = 0;
        let held = self.held();
        let pausing = if held > self.max_held {
            true
        } else if held <= self.max_held / 2 {
            false
        } else {
            !self.paused.is_empty()
        };
        let topics: [String; 5] = InputKind::ALL.map(|k| self.topic_of(k).to_owned());
        let mut paused = Vec::new();
        for (p, s) in &mut self.states {
            let ahead = if pausing { s.ahead() } else { [false; 5] };
            for ((k, a), topic) in InputKind::ALL.into_iter().zip(ahead).zip(&topics) {
                s.set_paused(k, a, now);
                if a {
                    paused.push((topic.clone(), *p));
                }
            }
        }
        paused.sort_unstable();
        if paused != self.paused {
            tracing::info!(
                held,
                budget = self.max_held,
                paused = paused.len(),
                "join watermark alignment: pausing the input partitions that run ahead"
            );
            self.paused = paused;
            self.paused_changed = true;
        }
        if held > self.max_held.saturating_mul(2) {
            let excess = held - self.max_held;
            let mut parts: Vec<(i32, usize)> =
                self.states.iter().map(|(p, s)| (*p, s.held())).collect();
            parts.sort_unstable();
            tracing::warn!(
                held,
                budget = self.max_held,
                excess,
                "join holds more than twice its budget: releasing the oldest triggers as join-overflow"
            );
            for (p, n) in parts {
                let release = (n * excess).div_ceil(held);
                let mut events = std::mem::take(&mut self.events);
                if let Some(s) = self.states.get_mut(&p) {
                    s.force_release(release, now, &mut events);
                }
                self.events = events;
                self.emit_events(p, now, out);
            }
        }
    }

    /// Turns released join events of `partition` into outputs, each through the partition's
    /// outbox (out at once when its records are below their commit limits, else held); `now`
    /// (wall clock, ms) is their `predicted_at_ms`.
    fn emit_events(&mut self, partition: i32, now: i64, out: &mut Vec<Output>) {
        let events = std::mem::take(&mut self.events);
        let mut made = std::mem::take(&mut self.made);
        for ev in &events {
            made.clear();
            self.outputs_of(ev, partition, now, &mut made);
            let records = ev.records().into_iter().flatten();
            for o in made.drain(..) {
                self.release(partition, records.clone(), o, out);
            }
        }
        self.made = made;
        self.events = events;
        self.events.clear();
        self.drain(partition, out);
    }

    /// Sends `o`, the outcome of `records` of `partition`, through the partition's outbox.
    fn release(
        &mut self,
        partition: i32,
        records: impl IntoIterator<Item = RecordRef, IntoIter: Clone>,
        o: Output,
        out: &mut Vec<Output>,
    ) {
        let state = self.states.get(&partition);
        let limit = |k: InputKind| state.and_then(|s| s.commit_limit(k));
        self.outboxes
            .entry(partition)
            .or_default()
            .offer(records, o, limit, out);
    }

    /// Outputs every held outcome of `partition` that is below the commit limits now.
    fn drain(&mut self, partition: i32, out: &mut Vec<Output>) {
        if let (Some(ob), state) = (
            self.outboxes.get_mut(&partition),
            self.states.get(&partition),
        ) && !ob.is_empty()
        {
            ob.drain(|k| state.and_then(|s| s.commit_limit(k)), out);
        }
    }

    /// The outputs of one join event.
    fn outputs_of(&mut self, ev: &JoinEvent, partition: i32, now: i64, out: &mut Vec<Output>) {
        match ev {
            JoinEvent::Prediction(j) => self.predict(partition, j, now, out),
            JoinEvent::Skipped {
                client,
                trigger,
                event_time_ms,
                record,
                reason,
                ..
            } => {
                let err = format!(
                    "{trigger:?} trigger at {event_time_ms} ms: {} (max staleness {} ms)",
                    reason.code(),
                    self.cfg.max_staleness_ms
                );
                out.push(self.outcome_record(
                    client,
                    reason.code(),
                    &err,
                    record.input,
                    partition,
                    record.offset,
                    *event_time_ms,
                ));
            }
            JoinEvent::IncompleteTriple {
                client,
                event_time_ms,
                source,
                present,
            } => {
                let Some(first) = present.first() else {
                    return;
                };
                let have: Vec<String> = present
                    .iter()
                    .map(|r| format!("{}@{}", self.topic_of(r.input), r.offset))
                    .collect();
                let err = format!(
                    "features of SZ {}/{} at {event_time_ms} ms incomplete when the watermark passed: only {}",
                    source.partition,
                    source.offset,
                    have.join(", ")
                );
                out.push(self.outcome_record(
                    client,
                    "incomplete-triple",
                    &err,
                    first.input,
                    partition,
                    first.offset,
                    *event_time_ms,
                ));
            }
        }
    }

    fn predict(
        &mut self,
        partition: i32,
        j: &sensorflow_core::join::JoinOutput,
        now: i64,
        out: &mut Vec<Output>,
    ) {
        let topic = input_topic(&self.topics, j.record.input);
        let vector = match FeatureVector::new(&j.vector, &self.bounds) {
            Ok(v) => v,
            Err(e) => {
                let err = Reject::Model(e).to_string();
                out.push(self.outcome_record(
                    &j.client,
                    "invalid-vector",
                    &err,
                    j.record.input,
                    partition,
                    j.record.offset,
                    j.event_time_ms,
                ));
                return;
            }
        };
        let p = self
            .model
            .predict(&vector, identity(topic, partition, j.record.offset));
        let alert = p >= self.threshold;
        if alert {
            self.metrics.alerts.inc();
        }
        if j.ingest_time_ms > 0 {
            self.metrics
                .latency
                .observe((now - j.ingest_time_ms).max(0) as f64 / 1000.0);
        }
        let (slot, kind) = match j.trigger {
            Trigger::Sx => (0, TriggerKind::TriggerSx),
            Trigger::Sy => (1, TriggerKind::TriggerSy),
            Trigger::Features => (2, TriggerKind::TriggerFeatures),
        };
        self.predicted[slot].inc();
        let pred = &mut self.scratch;
        pred.client_id.clear();
        pred.client_id.push_str(&j.client);
        pred.event_time_ms = j.event_time_ms;
        pred.features.clear();
        pred.features.extend_from_slice(&vector.0);
        pred.probability = p;
        pred.alert = alert;
        pred.trigger = kind as i32;
        pred.source_topic.clear();
        pred.source_topic.push_str(topic);
        pred.source_partition = partition;
        pred.source_offset = j.record.offset;
        pred.features_source_partition = j.triple_source.partition;
        pred.features_source_offset = j.triple_source.offset;
        pred.features_source_index = j.triple_source.index;
        pred.ingest_time_ms = j.ingest_time_ms;
        pred.predicted_at_ms = now;
        self.encoded.clear();
        #[allow(clippy::expect_used)]
        pred.encode(&mut self.encoded)
            .expect("a Vec grows to any encoded length");
        let mut value = Vec::with_capacity(self.encoded.len() + 6);
        self.framing.encode_into(&self.encoded, &mut value);
        out.push(Output {
            topic: self.predictions_topic.clone(),
            key: Some(Arc::<[u8]>::from(j.client.clone())),
            value,
            timestamp_ms: Some(j.event_time_ms),
            headers: None,
        });
    }

    /// Dead-letters `msg` with reason `r`, through its partition's outbox when it is a record
    /// of one of the five inputs.
    fn reject(&mut self, msg: &ConsumedRecord<'_>, r: &Reject, out: &mut Vec<Output>) {
        self.metrics.record_dead_letter(r.code());
        let o = dead_letter(
            msg,
            r,
            &self.topics.dead_letter,
            sensorflow_api::processors::JOIN_PREDICT,
        );
        self.route_for(msg, o, out);
    }

    /// Sends `o`, the outcome of input record `msg`, through its partition's outbox.
    fn route_for(&mut self, msg: &ConsumedRecord<'_>, o: Output, out: &mut Vec<Output>) {
        match self.inputs.get(msg.topic()) {
            Some(&input) => {
                let r = RecordRef {
                    input,
                    offset: msg.offset(),
                };
                self.release(msg.partition(), [r], o, out);
            }
            None => out.push(o),
        }
    }
}

/// The topic of join input `input`.
fn input_topic(topics: &Topics, input: InputKind) -> &str {
    match input {
        InputKind::Sx => &topics.sx,
        InputKind::Sy => &topics.sy,
        InputKind::Fa => &topics.fa,
        InputKind::Fi => &topics.fi,
        InputKind::Fd => &topics.fd,
    }
}

/// A stable 64-bit identity of a record (FxHash of the topic, mixed with partition and
/// offset), so the random model gives a redelivered record the same probability.
/// Where the rebuild of one partition number's five inputs starts, ms of event time: the
/// latest of the inputs' last processed timestamps `last` (one per input with a record below
/// its commit point, decoded: dead-lettered records left out) minus `lookback_ms`, which is at
/// least 2 × staleness + grace; `0` (everything) with no input at all.
///
/// Why the latest, and why a silent input's old timestamp does not extend the range. Let `W`
/// be the join watermark when the commit points were taken, and `L` this latest timestamp.
/// 1. `W > L`: every record below a commit point has its outcome produced. An accepted record
///    at `t` was released only once `W > t`; a late one lay below its own input's bound (a
///    record before it, below the commit too, released, so `W` passed that one) or below
///    `W`. Idle inputs only raise `W`. So a silent input's old timestamp says nothing
///    about `W`, and the others' newer ones do.
/// 2. Every record the uninterrupted run accepts after the commit has `t ≥ W − grace`: one
///    processed later meets `t ≥ W` (the watermark never goes back); one above a commit point
///    that was processed before it comes after that input's first pinned record (pending, so
///    at or above `W`) and is within the grace of it, or it would be late.
/// 3. Its as-of lookups use values with event time in `[t − 2S, t]` (older ones are missing
///    either way), so nothing older than `W − grace − 2S > L − grace − 2S` is needed.
/// 4. Each input's tail is read regardless (`rebuild::start_offset`): its lateness bound, and
///    the repeat filter's largest SZ offset, come back as before.
///
/// Records older than the start are thus late in the uninterrupted run, or never looked up.
/// What stays as before: the rebuilt watermark is recomputed from fresh idle clocks, so a
/// silent input holds it back again for `input_idle_timeout_ms` after a restart.
pub fn rebuild_start_ms(last: impl IntoIterator<Item = i64>, lookback_ms: i64) -> i64 {
    last.into_iter()
        .max()
        .map_or(0, |l| l.saturating_sub(lookback_ms).max(0))
}

fn identity(topic: &str, partition: i32, offset: i64) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = rustc_hash::FxHasher::default();
    topic.hash(&mut h);
    splitmix64(h.finish() ^ splitmix64((partition as u64) << 40 ^ offset as u64))
}

impl Processor for JoinProcessor {
    fn output_guard(&self) -> Option<OutputGuard> {
        self.guard.clone()
    }

    fn resume_with(&mut self, guard: Option<OutputGuard>) {
        // Held outcomes were never produced and the commit points stayed below their records:
        // the rebuilt partitions make them again.
        self.states.clear();
        self.outboxes.clear();
        if let Some(g) = guard {
            self.set_guard(g);
        }
    }

    fn topics(&self) -> Vec<String> {
        self.topics
            .join_inputs()
            .iter()
            .map(|s| (*s).to_owned())
            .collect()
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
        let now = sensorflow_runtime::now_ms();
        // Every record below the committed offsets had its outcome produced (commits never
        // pass a pending record). Replaying them in event-time order rebuilds the as-of
        // values, the watermark clocks and the repeat filter, from the latest of the five
        // last processed timestamps minus the lookback (`rebuild_start_ms`: the watermark had
        // passed that timestamp, so one input silent for days does not extend the range).
        let inputs: Vec<String> = self
            .topics
            .join_inputs()
            .iter()
            .map(|s| (*s).to_owned())
            .collect();
        let lookback = self.lookback_ms;
        // Each partition's five inputs are merged by event time as they stream in (each input
        // in offset order: the repeat filter relies on it); records are applied at once, so
        // memory holds the join state and a bounded queue per input, never the whole lookback.
        let mut states = std::mem::take(&mut self.states);
        let mut sink = Vec::new();
        let this = &*self;
        let result = {
            let hook = this.metrics.rebuild_hook();
            let retry = |e: &rebuild::RebuildError, n, wait| e.count_retry(&this.metrics, n, wait);
            rebuild::with_retries(rebuild::ATTEMPTS, Duration::from_secs(1), retry, || {
                // Every attempt starts from an empty state for these partitions.
                for ((_, p), _) in committed {
                    states.insert(*p, PartitionJoin::new(this.cfg, now));
                }
                rebuild::replay(
                    &this.rebuild,
                    &requests,
                    &inputs,
                    Some(&this.topics.late),
                    &this.rebuild_cfg,
                    |last, (_, p)| {
                        rebuild_start_ms(
                            inputs
                                .iter()
                                .filter_map(|t| last.get(&(t.clone(), *p)).copied()),
                            lookback,
                        )
                    },
                    &hook,
                    keep_alive,
                    |m| {
                        let client = input::client_id(m.key()).ok()?;
                        let (ji, ingest) = this.decode(m, now).ok()?;
                        Some((ji.event_time_ms(), (client.to_owned(), ji, ingest)))
                    },
                    |(_, p), offset, (client, ji, ingest)| {
                        let state = states
                            .entry(*p)
                            .or_insert_with(|| PartitionJoin::new(this.cfg, now));
                        // State only: the outcomes of these records were produced before the commit.
                        state.apply(&client, ji, offset, ingest, true, now, &mut sink);
                        sink.clear();
                    },
                )
            })
        };
        self.states = states;
        for ((_, p), _) in committed {
            self.outboxes.remove(p);
        }
        let summary = result?;
        // Live consumption starts now: idle timeouts count from here, not from the rebuild's
        // start (a rebuild longer than the all-quiet timeout would release the lagging inputs).
        let resumed = sensorflow_runtime::now_ms();
        for ((_, p), _) in committed {
            if let Some(s) = self.states.get_mut(p) {
                s.restart_idle_clocks(resumed);
            }
        }
        self.metrics
            .rebuilt_partitions
            .inc_by(summary.partitions as u64);
        Ok(())
    }

    fn on_revoked(&mut self, partitions: &[TopicPartition]) {
        for (_, p) in partitions {
            self.states.remove(p);
            // Held outcomes were never produced, and the commit points stayed below their
            // records: the partition's next owner makes them again.
            self.outboxes.remove(p);
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
        let (ji, ingest) = match self.decode(msg, now) {
            Ok(x) => x,
            Err(r) => {
                self.reject(msg, &r, out);
                return Ok(());
            }
        };
        let cfg = self.cfg;
        let state = self
            .states
            .entry(msg.partition())
            .or_insert_with(|| PartitionJoin::new(cfg, now));
        let mut events = std::mem::take(&mut self.events);
        let applied = state.apply(client, ji, msg.offset(), ingest, false, now, &mut events);
        self.events = events;
        match applied {
            Applied::Accepted => {}
            Applied::Duplicate => {
                self.jm.duplicates.inc();
            }
            Applied::Late { watermark } => {
                self.metrics.late.inc();
                self.jm
                    .unpredicted
                    .get_or_create(&ReasonLabel {
                        reason: "late".to_owned(),
                    })
                    .inc();
                let r = Reject::Late {
                    event_time_ms: ji.event_time_ms(),
                    watermark_ms: watermark,
                };
                let o = dead_letter(
                    msg,
                    &r,
                    &self.topics.late,
                    sensorflow_api::processors::JOIN_PREDICT,
                );
                self.route_for(msg, o, out);
            }
        }
        self.emit_events(msg.partition(), now, out);
        // The budget is checked every few hundred records, not only on the flush tick: a
        // tick's worth of records (200 ms at full speed) is many times any sane budget.
        self.since_align += 1;
        if self.since_align >= ALIGN_EVERY {
            self.align(now, out);
        }
        Ok(())
    }

    fn report(&self, metrics: &Metrics) {
        let mut total = sensorflow_core::join::JoinStats::default();
        for s in self.states.values() {
            let st = s.stats();
            total.clients += st.clients;
            total.values += st.values;
            total.pending += st.pending;
            total.partials += st.partials;
            total.bytes += st.bytes;
        }
        metrics.join_clients.set(total.clients as i64);
        metrics.join_partials.set(total.partials as i64);
        self.jm.pending.set(total.pending as i64);
        self.jm.values.set(total.values as i64);
        self.jm.bytes.set(total.bytes as i64);
        self.jm
            .held
            .set(self.outboxes.values().map(Outbox::len).sum::<usize>() as i64);
    }

    fn commit_limit(&self, topic: &str, partition: i32) -> Option<i64> {
        let input = *self.inputs.get(topic)?;
        self.states.get(&partition)?.commit_limit(input)
    }

    fn set_unread(&mut self, topic: &str, partition: i32, unread: bool) {
        if let (Some(&input), Some(s)) = (self.inputs.get(topic), self.states.get_mut(&partition)) {
            s.set_unread(input, unread);
        }
    }

    fn pause_changes(&mut self) -> Option<Vec<TopicPartition>> {
        if !self.paused_changed {
            return None;
        }
        self.paused_changed = false;
        Some(self.paused.clone())
    }

    fn on_tick(&mut self, out: &mut Vec<Output>) -> Result<(), PipelineError> {
        let now = sensorflow_runtime::now_ms();
        self.align(now, out);
        let mut parts: Vec<i32> = self.states.keys().copied().collect();
        parts.sort_unstable();
        let backlog = self
            .upstream
            .as_ref()
            .map(|u| {
                u.lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .clone()
            })
            .unwrap_or_default();
        for p in parts {
            let mut events = std::mem::take(&mut self.events);
            if let Some(s) = self.states.get_mut(&p) {
                s.set_upstream_backlog(backlog.binary_search(&p).is_ok());
                s.advance(now, &mut events);
            }
            self.events = events;
            self.emit_events(p, now, out);
        }
        Ok(())
    }
}

/// Entry point of the `join-predict` binary.
///
/// # Errors
/// Start-up errors (inputs not co-partitioned, invalid model) or unrecoverable processing
/// errors.
pub async fn main(args: JoinArgs) -> anyhow::Result<()> {
    sensorflow_process::telemetry::init(args.common.serve.log_format);
    let jm = JoinMetrics::default();
    let metrics = Metrics::new_with(|r| jm.register(r));
    let processor = JoinProcessor::new(&args, metrics.clone(), jm)?;
    let topics = args.client.topics.topics();
    let guard = sensorflow_runtime::runner::output_guard(
        &args.client.kafka,
        &[&topics.predictions, &topics.late, &topics.dead_letter],
        &topics.dead_letter,
        sensorflow_api::processors::JOIN_PREDICT,
    )
    .await;
    let processor = processor.with_guard(guard);
    tracing::info!(group = %args.group_id, model = processor.model.name(), version = processor.model.version(), threshold = args.threshold, "join-predict starting");
    let inputs = topics.join_inputs();
    let counts =
        sensorflow_kafka::admin::partition_counts(&args.client.kafka.client_config(), &inputs)
            .context("reading the partition counts of the join inputs")?;
    if counts.windows(2).any(|w| w[0] != w[1]) {
        let detail: Vec<String> = inputs
            .iter()
            .zip(&counts)
            .map(|(t, n)| format!("{t}={n}"))
            .collect();
        anyhow::bail!(
            "join inputs are not co-partitioned ({}): every input must have the same partition count so a client's records meet in one consumer",
            detail.join(", ")
        );
    }
    let processor = if args.upstream_group_id.is_empty() {
        processor
    } else {
        let backlog = Arc::new(Mutex::new(Vec::new()));
        watch_upstream(
            args.client.kafka.client_config(),
            args.upstream_group_id.clone(),
            topics.sz.clone(),
            counts[0],
            Arc::clone(&backlog),
            processor.jm.upstream_backlog.clone(),
        );
        processor.with_upstream(backlog)
    };
    let mut consumer_cfg = args
        .client
        .kafka
        .consumer_config(&args.group_id, sensorflow_api::processors::JOIN_PREDICT);
    // The range assignor gives one member the same partition numbers of every input topic,
    // which is what makes the co-partitioned join local.
    consumer_cfg.set("partition.assignment.strategy", "range");
    sensorflow_runtime::runner::run(
        &args.client.kafka,
        consumer_cfg,
        &args.common,
        metrics,
        processor,
        sensorflow_api::processors::JOIN_PREDICT,
    )
    .await
}

/// How often [`watch_upstream`] reads the upstream group's progress.
const UPSTREAM_CHECK: Duration = Duration::from_secs(1);

/// Starts a thread that, every second, writes into `backlog` the SZ partitions (of
/// `0..partitions`) on which consumer group `group` has records left (see
/// [`sensorflow_kafka::admin::GroupProgress::backlog`]), and their number into `gauge`. On a read error
/// (a fresh broker answers `NotLeaderForPartition` for a while) every partition counts as
/// backlogged: the join waits rather than release by wall clock what the upstream may still
/// change, for at most the input idle timeout; the error is logged once per outage.
pub fn watch_upstream(
    config: ClientConfig,
    group: String,
    sz: String,
    partitions: i32,
    backlog: Arc<Mutex<Vec<i32>>>,
    gauge: Gauge,
) {
    let spawned = std::thread::Builder::new()
        .name("upstream-progress".into())
        .spawn(move || {
            let probe = match sensorflow_kafka::admin::GroupProgress::new(&config, &group, &sz, partitions) {
                Ok(p) => p,
                Err(e) => {
                    tracing::warn!(error = %e, %group, "not watching the upstream group's lag");
                    return;
                }
            };
            tracing::info!(%group, topic = %sz, "watching the upstream group's lag");
            let mut failing = false;
            loop {
                let now = match probe.backlog() {
                    Ok(b) => {
                        if failing {
                            tracing::info!(%group, "upstream lag readable again");
                        }
                        failing = false;
                        b
                    }
                    Err(e) => {
                        if !failing {
                            tracing::warn!(error = %e, %group, "cannot read the upstream group's lag; holding the all-quiet release (at most the input idle timeout) until it can");
                        }
                        failing = true;
                        (0..partitions).collect()
                    }
                };
                gauge.set(now.len() as i64);
                *backlog.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = now;
                std::thread::sleep(UPSTREAM_CHECK);
            }
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "not watching the upstream group's lag");
    }
}

#[cfg(test)]
mod record_tests {
    //! join-predict driven with transport-free records: no broker, no consumer loop.
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::{JoinArgs, JoinMetrics, JoinProcessor};
    use clap::Parser;
    use prost::Message as _;
    use rdkafka::message::Headers;
    use sensorflow_core::proto::{
        Feature, FeatureKind, Prediction, Sensor, SensorReading, TriggerKind,
    };
    use sensorflow_runtime::metrics::Metrics;
    use sensorflow_runtime::output::Output;
    use sensorflow_runtime::processor::Processor;
    use sensorflow_runtime::record::ConsumedRecord;

    const T0: i64 = 1_700_000_000_000;

    use sensorflow_core::join::DEFAULT_GRACE_MS;

    fn processor() -> JoinProcessor {
        let argv = ["join-predict", "--bootstrap-servers", "127.0.0.1:1"];
        let args = JoinArgs::try_parse_from(argv).unwrap();
        JoinProcessor::new(&args, Metrics::new(), JoinMetrics::default()).unwrap()
    }

    fn reading(sensor: Sensor, t: i64, v: f64) -> Vec<u8> {
        SensorReading {
            event_time_ms: t,
            value: v,
            sensor: sensor as i32,
            ingest_time_ms: 0,
        }
        .encode_to_vec()
    }

    fn feature(kind: FeatureKind, t: i64, sz_offset: i64) -> Vec<u8> {
        Feature {
            client_id: "c1".into(),
            kind: kind as i32,
            event_time_ms: t,
            source_partition: 0,
            source_offset: sz_offset,
            bin: 3,
            value: 0.5,
            window_count: 1,
            ingest_time_ms: 0,
            ..Feature::default()
        }
        .encode_to_vec()
    }

    /// The five inputs of client `c1` at event time `t`, in partition 0 at `offset`.
    fn five(p: &mut JoinProcessor, t: i64, offset: i64, out: &mut Vec<Output>) {
        five_of(p, "c1", t, offset, out);
    }

    /// The five inputs of `client` at event time `t`, in partition 0 at `offset`.
    fn five_of(p: &mut JoinProcessor, client: &str, t: i64, offset: i64, out: &mut Vec<Output>) {
        let values = [
            ("SX", reading(Sensor::Sx, t, 2.0)),
            ("SY", reading(Sensor::Sy, t, 3.0)),
            ("FA", feature(FeatureKind::Fa, t, offset)),
            ("FI", feature(FeatureKind::Fi, t, offset)),
            ("FD", feature(FeatureKind::Fd, t, offset)),
        ];
        for (topic, v) in &values {
            let rec = ConsumedRecord::new(topic, 0, offset)
                .with_key(client.as_bytes())
                .with_value(v)
                .with_timestamp(t);
            p.process(&rec, out).unwrap();
        }
    }

    #[test]
    fn triggers_are_predicted_once_the_watermark_passes_them() {
        let mut p = processor();
        let mut out = Vec::new();
        five(&mut p, T0, 0, &mut out);
        assert!(
            out.is_empty(),
            "held until the watermark passes T0: {out:?}"
        );
        assert_eq!(
            p.commit_limit("SX", 0),
            Some(0),
            "pending triggers pin offsets"
        );
        // The watermark is the slowest input's max event time minus the default grace.
        five(&mut p, T0 + DEFAULT_GRACE_MS + 1, 1, &mut out);
        let preds: Vec<Prediction> = out
            .iter()
            .filter(|o| &*o.topic == "predictions")
            .map(|o| Prediction::decode(&o.value[..]).unwrap())
            .collect();
        assert_eq!(
            preds.len(),
            3,
            "SX, SY and the FA/FI/FD triple at T0: {out:?}"
        );
        let mut sources: Vec<&str> = preds.iter().map(|p| p.source_topic.as_str()).collect();
        sources.sort_unstable();
        assert_eq!(sources, ["FA", "SX", "SY"]);
        for pr in &preds {
            assert_eq!((pr.client_id.as_str(), pr.event_time_ms), ("c1", T0));
            assert_eq!(pr.features[..2], [2, 3], "the as-of SX and SY values");
            assert_eq!(pr.source_offset, 0);
        }
        assert!(
            out.iter()
                .all(|o| o.key.as_deref() == Some(b"c1".as_slice()))
        );
    }

    /// The processor reuses one `Prediction` for every prediction it makes: nothing of one
    /// (a longer client id, its trigger) may show through in the next.
    #[test]
    fn each_prediction_carries_only_its_own_fields() {
        let mut p = processor();
        let mut out = Vec::new();
        five_of(&mut p, "a-much-longer-client-id", T0, 0, &mut out);
        five_of(&mut p, "c2", T0 + 500, 1, &mut out);
        five_of(&mut p, "c3", T0 + DEFAULT_GRACE_MS + 501, 2, &mut out);
        let preds: Vec<(Option<&[u8]>, Prediction)> = out
            .iter()
            .filter(|o| &*o.topic == "predictions")
            .map(|o| (o.key.as_deref(), Prediction::decode(&o.value[..]).unwrap()))
            .collect();
        assert_eq!(
            preds.len(),
            6,
            "three triggers each of the first two: {out:?}"
        );
        for (key, pr) in &preds {
            assert_eq!(Some(pr.client_id.as_bytes()), *key);
            let (t, offset) = if pr.client_id == "c2" {
                (T0 + 500, 1)
            } else {
                (T0, 0)
            };
            assert_eq!((pr.event_time_ms, pr.source_offset), (t, offset));
            assert_eq!(pr.features.len(), 5);
            assert_eq!(pr.features[..2], [2, 3]);
            let expected = match pr.source_topic.as_str() {
                "SX" => TriggerKind::TriggerSx,
                "SY" => TriggerKind::TriggerSy,
                "FA" => TriggerKind::TriggerFeatures,
                other => panic!("source topic {other}"),
            };
            assert_eq!(pr.trigger, expected as i32);
            assert_eq!(pr.alert, pr.probability >= pr.threshold);
            assert!(!pr.model_name.is_empty() && !pr.model_version.is_empty());
        }
    }

    #[test]
    fn records_without_a_key_or_from_another_topic_are_dead_lettered() {
        let mut p = processor();
        let mut out = Vec::new();
        let v = reading(Sensor::Sx, T0, 1.0);
        p.process(&ConsumedRecord::new("SX", 1, 5).with_value(&v), &mut out)
            .unwrap();
        p.process(
            &ConsumedRecord::new("elsewhere", 1, 6)
                .with_key(b"c1")
                .with_value(&v),
            &mut out,
        )
        .unwrap();
        assert_eq!(out.len(), 2);
        let reason = |o: &Output| {
            let h = o.headers.as_ref().unwrap();
            let r = h
                .iter()
                .find(|h| h.key == sensorflow_runtime::dlq::REASON)
                .unwrap();
            String::from_utf8(r.value.unwrap().to_vec()).unwrap()
        };
        assert!(out.iter().all(|o| &*o.topic == "dead-letter"));
        assert_eq!(reason(&out[0]), "missing-key");
        assert_eq!(reason(&out[1]), "decode");
    }
}

#[cfg(test)]
mod rebuild_range_tests {
    #![allow(clippy::unwrap_used)]

    use super::rebuild_start_ms;
    use proptest::prelude::*;

    const DAY: i64 = 86_400_000;

    #[test]
    fn a_silent_input_does_not_extend_the_range() {
        let lookback = 2 * 600_000 + 2_000;
        let now = 100 * DAY;
        // SX silent for three days; the others at `now`.
        let last = [now - 3 * DAY, now, now - 1_000, now - 500, now - 200];
        assert_eq!(rebuild_start_ms(last, lookback), now - lookback);
        assert_eq!(rebuild_start_ms([], lookback), 0);
        assert_eq!(rebuild_start_ms([lookback / 2], lookback), 0);
    }

    /// The naive reading of the rule: every input's own start (its last timestamp minus the
    /// lookback) is a valid start, and the range is the shortest of them.
    fn naive(last: &[i64], lookback: i64) -> i64 {
        let mut best = None;
        for &l in last {
            let s = (l - lookback).max(0);
            if best.is_none_or(|b| s > b) {
                best = Some(s);
            }
        }
        best.unwrap_or(0)
    }

    proptest! {
        #[test]
        fn the_start_follows_the_latest_input_only(
            last in prop::collection::vec(0i64..1_000 * DAY, 0..6),
            lookback in 1_202_000i64..10 * DAY,
            silent in 0i64..1_000 * DAY,
        ) {
            let start = rebuild_start_ms(last.iter().copied(), lookback);
            prop_assert_eq!(start, naive(&last, lookback));
            if let Some(&max) = last.iter().max() {
                // What the as-of lookups and the grace need is inside the range.
                prop_assert!(start <= max - 1_202_000 || start == 0);
                // Another input, silent since any time up to the latest, changes nothing.
                let with = last.iter().copied().chain([silent.min(max)]);
                prop_assert_eq!(rebuild_start_ms(with, lookback), start);
            }
        }
    }
}
