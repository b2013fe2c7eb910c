//! `join-predict`: SX, SY, FA, FI, FD → predictions (see `sensorflow_core::join` and
//! `sensorflow_core::model`).

use super::{CommonArgs, rebuild_config};
use crate::dlq::dead_letter;
use crate::kafka::{FramingArgs, KafkaArgs, TopicArgs};
use crate::metrics::{Metrics, ReasonLabel};
use crate::pipeline::{Output, PipelineError, Processor, TopicPartition};
use crate::rebuild::{self, Request};
use anyhow::Context;
use clap::Parser;
use prost::Message as _;
use rdkafka::message::BorrowedMessage;
use rdkafka::{ClientConfig, Message};
use rustc_hash::FxHashMap;
use sensorflow_core::config::Topics;
use sensorflow_core::input::{self, Reject};
use sensorflow_core::join::{JoinInput, JoinState, Latest, SzSource, Trigger};
use sensorflow_core::model::{
    self, FeatureBounds, FeatureVector, ModelConfig, Predictor, splitmix64,
};
use sensorflow_core::proto::{FeatureKind, Prediction, Sensor, TriggerKind};
use sensorflow_core::wire::Framing;
use std::time::Duration;

/// join-predict: joins SX, SY and the FA/FI/FD triple by client, predicts, and alerts.
///
/// All five inputs must be co-partitioned (same partition count, keyed by client id); this
/// is checked at start-up. Every SX or SY reading and every completed feature triple yields
/// one prediction `[SX, SY, FA, FI, FD] → probability → alert` once all five values of the
/// client are known. Malformed records and invalid vectors go to the dead-letter topic.
#[derive(Debug, Clone, Parser)]
#[command(name = "join-predict", version, about, long_about)]
pub struct JoinArgs {
    #[command(flatten)]
    #[allow(missing_docs)]
    pub kafka: KafkaArgs,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub topics: TopicArgs,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub framing: FramingArgs,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub common: CommonArgs,
    /// Consumer group id.
    #[arg(long, env = "SF_GROUP_ID", default_value = "sensorflow-join")]
    pub group_id: String,
    /// Model: `logistic` (weights and bias below) or `random` (uniform, seeded).
    #[arg(long, env = "SF_MODEL", default_value = "logistic", value_parser = ["logistic", "random"])]
    pub model: String,
    /// Logistic weights for [SX, SY, FA, FI, FD], comma-separated.
    #[arg(
        long,
        env = "SF_MODEL_WEIGHTS",
        value_delimiter = ',',
        default_value = "0.01,0.01,1.0,0.3,0.2",
        allow_hyphen_values = true
    )]
    pub model_weights: Vec<f64>,
    /// Logistic bias.
    #[arg(long, env = "SF_MODEL_BIAS", default_value_t = model::DEFAULT_BIAS, allow_hyphen_values = true)]
    pub model_bias: f64,
    /// Seed of the random model.
    #[arg(long, env = "SF_MODEL_SEED", default_value_t = 42)]
    pub model_seed: u64,
    /// Alert when probability ≥ threshold (0..1).
    #[arg(long, env = "SF_THRESHOLD", default_value_t = 0.5)]
    pub threshold: f64,
    /// Largest SX/SY value accepted in a feature vector.
    #[arg(long, env = "SF_CATEGORICAL_MAX", default_value_t = 100_000)]
    pub categorical_max: i64,
    /// How far back (record timestamps, ms) to re-read inputs to rebuild join state on
    /// partition assignment.
    #[arg(long, env = "SF_REBUILD_LOOKBACK_MS", default_value_t = 600_000)]
    pub rebuild_lookback_ms: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Input {
    Sx,
    Sy,
    Feature(FeatureKind),
}

/// The join-predict's [`Processor`].
pub struct JoinProcessor {
    states: FxHashMap<i32, JoinState>,
    inputs: FxHashMap<String, Input>,
    model: Box<dyn Predictor>,
    threshold: f64,
    bounds: FeatureBounds,
    topics: Topics,
    framing: Framing,
    rebuild: ClientConfig,
    rebuild_timeout: Duration,
    lookback_ms: i64,
    metrics: Metrics,
}

impl JoinProcessor {
    /// A processor with empty state.
    ///
    /// # Errors
    /// Invalid model weights or threshold.
    pub fn new(args: &JoinArgs, metrics: Metrics) -> anyhow::Result<Self> {
        let model_cfg = match args.model.as_str() {
            "random" => ModelConfig::Random {
                seed: args.model_seed,
            },
            _ => ModelConfig::Logistic {
                weights: args.model_weights.clone(),
                bias: args.model_bias,
            },
        };
        let topics = args.topics.topics();
        let inputs = [
            (topics.sx.clone(), Input::Sx),
            (topics.sy.clone(), Input::Sy),
            (topics.fa.clone(), Input::Feature(FeatureKind::Fa)),
            (topics.fi.clone(), Input::Feature(FeatureKind::Fi)),
            (topics.fd.clone(), Input::Feature(FeatureKind::Fd)),
        ]
        .into_iter()
        .collect();
        Ok(Self {
            states: FxHashMap::default(),
            inputs,
            model: model_cfg.build()?,
            threshold: model::check_threshold(args.threshold)?,
            bounds: FeatureBounds {
                categorical_min: 0,
                categorical_max: args.categorical_max,
            },
            topics,
            framing: args.framing.framing(),
            rebuild: rebuild_config(&args.kafka, &args.group_id),
            rebuild_timeout: Duration::from_millis(args.common.rebuild_timeout_ms),
            lookback_ms: args.rebuild_lookback_ms,
            metrics,
        })
    }

    /// Decodes a record into a join input and the ingest time it carries.
    fn decode<M: Message>(&self, msg: &M) -> Result<(Input, JoinInput, i64), Reject> {
        let which = *self
            .inputs
            .get(msg.topic())
            .ok_or_else(|| Reject::Decode(format!("unexpected topic {}", msg.topic())))?;
        match which {
            Input::Sx | Input::Sy => {
                let sensor = if which == Input::Sx {
                    Sensor::Sx
                } else {
                    Sensor::Sy
                };
                let r = input::decode_reading(&self.framing, msg.payload(), sensor)?;
                let l = Latest {
                    value: input::categorical(r.value)?,
                    event_time_ms: r.event_time_ms,
                };
                let ji = if which == Input::Sx {
                    JoinInput::Sx(l)
                } else {
                    JoinInput::Sy(l)
                };
                Ok((which, ji, r.ingest_time_ms))
            }
            Input::Feature(kind) => {
                let f = input::decode_feature(&self.framing, msg.payload(), kind)?;
                Ok((
                    which,
                    JoinInput::Feature {
                        kind,
                        bin: f.bin,
                        event_time_ms: f.event_time_ms,
                        source: SzSource {
                            partition: f.source_partition,
                            offset: f.source_offset,
                        },
                    },
                    f.ingest_time_ms,
                ))
            }
        }
    }

    fn reject(&self, msg: &BorrowedMessage<'_>, r: &Reject, out: &mut Vec<Output>) {
        self.metrics
            .dead_letter
            .get_or_create(&ReasonLabel {
                reason: r.code().to_owned(),
            })
            .inc();
        out.push(dead_letter(
            msg,
            r,
            &self.topics.dead_letter,
            "join-predict",
        ));
    }
}

/// A stable 64-bit identity of a record (FxHash of the topic, mixed with partition and
/// offset), so the random model gives a redelivered record the same probability.
fn identity(topic: &str, partition: i32, offset: i64) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = rustc_hash::FxHasher::default();
    topic.hash(&mut h);
    splitmix64(h.finish() ^ splitmix64((partition as u64) << 40 ^ offset as u64))
}

impl Processor for JoinProcessor {
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
        for ((_, p), _) in committed {
            self.states.insert(*p, JoinState::default());
        }
        // FA, FI and FD are read at different paces, so a triple may be split across their
        // commit points by far more than the lookback: the feature topics of a partition are
        // read back from the oldest of their last processed records (from the beginning when
        // one of them has none), SX and SY from their own.
        let features = [
            self.topics.fa.clone(),
            self.topics.fi.clone(),
            self.topics.fd.clone(),
        ];
        let committed_somewhere = |t: &str, p: i32| {
            committed
                .iter()
                .any(|((ct, cp), c)| ct == t && *cp == p && c.is_some_and(|c| c > 0))
        };
        let lookback = self.lookback_ms;
        let records = rebuild::read_back_from(
            &self.rebuild,
            &requests,
            self.rebuild_timeout,
            |last, (t, p)| {
                if !features.contains(t) {
                    return last.get(&(t.clone(), *p)).map_or(0, |ts| ts - lookback);
                }
                let mut oldest = i64::MAX;
                for f in &features {
                    match last.get(&(f.clone(), *p)) {
                        Some(ts) => oldest = oldest.min(*ts),
                        None if !committed_somewhere(f, *p) => return 0,
                        None => {}
                    }
                }
                if oldest == i64::MAX {
                    0
                } else {
                    oldest - lookback
                }
            },
        )?;
        // Per partition, merge the five topics by timestamp (then topic order, offset).
        let order = |t: &str| {
            self.topics
                .join_inputs()
                .iter()
                .position(|x| *x == t)
                .unwrap_or(9)
        };
        let mut by_partition: FxHashMap<i32, Vec<_>> = FxHashMap::default();
        for ((t, p), msgs) in records {
            let o = order(&t);
            for m in msgs {
                by_partition.entry(p).or_default().push((
                    m.timestamp().to_millis().unwrap_or(0),
                    o,
                    m,
                ));
            }
        }
        let mut n = 0u64;
        for (p, mut msgs) in by_partition {
            msgs.sort_by_key(|(ts, o, m)| (*ts, *o, m.offset()));
            let mut state = JoinState::default();
            for (_, _, m) in &msgs {
                let Ok(client) = input::client_id(m.key()) else {
                    continue;
                };
                if let Ok((_, ji, _)) = self.decode(m) {
                    // State only: outputs of these records were emitted before the commit.
                    let _ = state.apply(client, ji);
                    n += 1;
                }
            }
            self.states.insert(p, state);
        }
        self.metrics.rebuilt_records.inc_by(n);
        Ok(())
    }

    fn on_revoked(&mut self, partitions: &[TopicPartition]) {
        for (_, p) in partitions {
            self.states.remove(p);
        }
    }

    fn process(
        &mut self,
        msg: &BorrowedMessage<'_>,
        out: &mut Vec<Output>,
    ) -> Result<(), PipelineError> {
        let client = match input::client_id(msg.key()) {
            Ok(c) => c,
            Err(r) => {
                self.reject(msg, &r, out);
                return Ok(());
            }
        };
        let (_, ji, ingest) = match self.decode(msg) {
            Ok(x) => x,
            Err(r) => {
                self.reject(msg, &r, out);
                return Ok(());
            }
        };
        let state = self.states.entry(msg.partition()).or_default();
        let Some(j) = state.apply(client, ji) else {
            return Ok(());
        };
        let vector = match FeatureVector::new(&j.vector, &self.bounds) {
            Ok(v) => v,
            Err(e) => {
                self.reject(msg, &Reject::Model(e), out);
                return Ok(());
            }
        };
        let p = self.model.predict(
            &vector,
            identity(msg.topic(), msg.partition(), msg.offset()),
        );
        let alert = p >= self.threshold;
        if alert {
            self.metrics.alerts.inc();
        }
        let now = crate::now_ms();
        if ingest > 0 {
            self.metrics
                .latency
                .observe((now - ingest).max(0) as f64 / 1000.0);
        }
        let pred = Prediction {
            client_id: client.to_owned(),
            event_time_ms: j.event_time_ms,
            features: vector.0.to_vec(),
            probability: p,
            alert,
            model_name: self.model.name().to_owned(),
            model_version: self.model.version().to_owned(),
            trigger: match j.trigger {
                Trigger::Sx => TriggerKind::TriggerSx,
                Trigger::Sy => TriggerKind::TriggerSy,
                Trigger::Features => TriggerKind::TriggerFeatures,
            } as i32,
            source_topic: msg.topic().to_owned(),
            source_partition: msg.partition(),
            source_offset: msg.offset(),
            features_source_partition: j.triple_source.partition,
            features_source_offset: j.triple_source.offset,
            ingest_time_ms: ingest,
            threshold: self.threshold,
            predicted_at_ms: now,
        };
        let mut value = Vec::with_capacity(128);
        self.framing.encode_into(&pred.encode_to_vec(), &mut value);
        out.push(Output {
            topic: self.topics.predictions.clone(),
            key: Some(client.as_bytes().to_vec()),
            value,
            timestamp_ms: Some(j.event_time_ms),
            headers: None,
        });
        Ok(())
    }

    fn report(&self, metrics: &Metrics) {
        let sum = |f: &dyn Fn(&JoinState) -> i64| self.states.values().map(f).sum::<i64>();
        metrics.join_clients.set(sum(&|s| s.clients() as i64));
        metrics.join_partials.set(sum(&|s| s.partials() as i64));
        let dropped = sum(&|s| s.dropped_partials() as i64);
        if dropped > metrics.join_partials_dropped.get() {
            tracing::warn!(
                dropped,
                "incomplete feature triples dropped at the per-client bound"
            );
        }
        metrics.join_partials_dropped.set(dropped);
    }
}

/// Entry point of the `join-predict` binary.
///
/// # Errors
/// Start-up errors (inputs not co-partitioned, invalid model) or unrecoverable processing
/// errors.
pub async fn main(args: JoinArgs) -> anyhow::Result<()> {
    crate::telemetry::init(args.common.log_format);
    let metrics = Metrics::new();
    let processor = JoinProcessor::new(&args, metrics.clone())?;
    tracing::info!(group = %args.group_id, model = processor.model.name(), version = processor.model.version(), threshold = args.threshold, "join-predict starting");
    let topics = args.topics.topics();
    let inputs = topics.join_inputs();
    let counts = crate::admin::partition_counts(&args.kafka.client_config(), &inputs)
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
    let mut consumer_cfg = args.kafka.consumer_config(&args.group_id, "join-predict");
    // The range assignor gives one member the same partition numbers of every input topic,
    // which is what makes the co-partitioned join local.
    consumer_cfg.set("partition.assignment.strategy", "range");
    super::run(
        &args.kafka,
        consumer_cfg,
        &args.common,
        metrics,
        processor,
        "join-predict",
    )
    .await
}
