//! The shared `main` of a processor: the flags every long-running binary has ([`ServeArgs`],
//! [`CommonArgs`]) and [`run`], which wires the consumer, the producer, the metrics server
//! and the consume loop around a [`crate::processor::Processor`]. The apps
//! (`sensorflow-apps`: window-processor, join-predict) and the sink call it.

use crate::consumer::{LoopConsumer, LoopContext};
use crate::emitter::OutputGuard;
use crate::metrics::Metrics;
use crate::pipeline;
use crate::processor::{LoopConfig, Processor};
use anyhow::Context;
use clap::Args;
use rdkafka::ClientConfig;
use rdkafka::producer::Producer;
use sensorflow_api::env;
use sensorflow_core::input::ReadingBounds;
use sensorflow_kafka::config::KafkaArgs;
use sensorflow_kafka::limits::OutputLimits;
use sensorflow_process::telemetry::LogFormat;
use std::net::SocketAddr;
use std::time::Duration;

/// Flags of every long-running binary (window-processor, join-predict, gcs-sink): where to
/// serve `/metrics`, `/health` and `/ready`, and how to log.
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Address for /metrics, /health and /ready.
    #[arg(long, env = env::METRICS_ADDR, default_value = "0.0.0.0:9100")]
    pub metrics_addr: SocketAddr,
    /// Log format.
    #[arg(long, env = env::LOG_FORMAT, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

/// Flags window-processor and join-predict share.
#[derive(Debug, Clone, Args)]
pub struct CommonArgs {
    #[command(flatten)]
    #[allow(missing_docs)]
    pub serve: ServeArgs,
    /// Flush outputs and commit offsets at least this often, ms.
    #[arg(long, env = env::COMMIT_INTERVAL_MS, default_value_t = 200)]
    pub commit_interval_ms: u64,
    /// How long rebuilding state on partition assignment may go without progress (no record
    /// read, no partition finished) before it fails, ms. Not a total deadline: a rebuild that
    /// keeps reading runs as long as it needs.
    #[arg(long, env = env::REBUILD_TIMEOUT_MS, default_value_t = 30_000)]
    pub rebuild_timeout_ms: u64,
    /// Largest number of records one state rebuild may re-read; past it the rebuild fails
    /// loudly (log, `sensorflow_rebuild_failures_total{reason="limit"}`) rather than build a
    /// partial state. 0: unlimited (memory stays bounded either way: records are streamed).
    #[arg(long, env = env::REBUILD_MAX_RECORDS, default_value_t = 0)]
    pub rebuild_max_records: u64,
    /// `/health` fails (the liveness probe restarts the pod) when the consume loop has not
    /// advanced for this long, ms: no record processed, no flush tick, no rebuild progress, no
    /// transaction committed. 0: `/health` never fails.
    #[arg(long, env = env::LIVENESS_TIMEOUT_MS, default_value_t = 120_000)]
    pub liveness_timeout_ms: u64,
    /// Exactly-once: commit outputs and consumed offsets atomically in Kafka transactions
    /// (KIP-98/KIP-447: needs a broker with transactions, Apache Kafka >= 2.5).
    /// Default: at-least-once with exact repeats.
    #[arg(long, env = env::EXACTLY_ONCE, default_value_t = false)]
    pub exactly_once: bool,
    /// transactional.id for --exactly-once: unique across live instances (default:
    /// `<processor>-$HOSTNAME`, the pod name on Kubernetes). It need not survive a pod: zombie
    /// instances are fenced through the consumer group's generation (KIP-447); a restarted
    /// container with the same id aborts its predecessor's open transaction at once.
    #[arg(long, env = env::TRANSACTIONAL_ID)]
    pub transactional_id: Option<String>,
    /// Prefix of the default transactional.id for --exactly-once: `<prefix>-$HOSTNAME`
    /// (default: the processor's name). The operator sets `<groupPrefix>-<stage>`, so every id
    /// of a pipeline falls under one prefixed TransactionalId ACL.
    #[arg(long, env = env::TRANSACTIONAL_ID_PREFIX)]
    pub transactional_id_prefix: Option<String>,
    /// Readings (and features) with an event time more than this far ahead of the wall clock
    /// go to the dead-letter topic with reason `future`, ms (default 5 min). Never looser than
    /// the output topics' `message.timestamp.after.max.ms` (read at start-up) less a tenth of
    /// it (at most 1 min): outputs carry their reading's event time.
    #[arg(long, env = env::MAX_FUTURE_SKEW_MS, default_value_t = ReadingBounds::default().max_future_skew_ms)]
    pub max_future_skew_ms: i64,
    /// Readings with an event time before this go to the dead-letter topic with reason
    /// `too-old`, ms since the Unix epoch (default 0, 1970-01-01).
    #[arg(long, env = env::MIN_EVENT_TIME_MS, default_value_t = ReadingBounds::default().min_event_time_ms)]
    pub min_event_time_ms: i64,
    /// Readings whose |value| exceeds this go to the dead-letter topic with reason
    /// `out-of-range`.
    #[arg(long, env = env::MAX_ABS_VALUE, default_value_t = ReadingBounds::default().max_abs_value)]
    pub max_abs_value: f64,
}

impl CommonArgs {
    /// The reading bounds these flags set.
    pub fn reading_bounds(&self) -> ReadingBounds {
        ReadingBounds {
            max_future_skew_ms: self.max_future_skew_ms,
            min_event_time_ms: self.min_event_time_ms,
            max_abs_value: self.max_abs_value,
        }
    }
}

/// Reads what the processor's output topics accept (DescribeConfigs) for its
/// [`OutputGuard`]. Without an answer (no `DescribeConfigs` permission, a broker that does not
/// answer within 10 s) the guard has no limits: outputs are not checked before sending, and
/// the broker's own refusals still reach the dead-letter topic (at-least-once) — logged as a
/// warning.
pub async fn output_guard(
    kafka: &KafkaArgs,
    outputs: &[&str],
    dead_letter_topic: &str,
    processor: &'static str,
) -> OutputGuard {
    let limits = match sensorflow_kafka::admin::topic_limits(&kafka.client_config(), outputs).await
    {
        Ok(l) => {
            for (t, l) in &l.topics {
                tracing::info!(topic = %t, after_max_ms = ?l.after_max_ms, before_max_ms = ?l.before_max_ms,
                    max_message_bytes = ?l.max_message_bytes, "output topic limits");
            }
            l
        }
        Err(e) => {
            tracing::warn!(error = %e, ?outputs,
                "could not read the output topics' limits; outputs are sent unchecked");
            OutputLimits::default()
        }
    };
    OutputGuard {
        topics: outputs.iter().map(|t| (*t).to_owned()).collect(),
        limits,
        dead_letter_topic: dead_letter_topic.into(),
        processor,
    }
}

/// `bounds` no looser than the output topics `outputs` accept
/// ([`ReadingBounds::within_topic_bound`]), logged when the topics tighten them.
pub fn bounds_within(
    bounds: ReadingBounds,
    guard: &OutputGuard,
    outputs: &[&str],
) -> ReadingBounds {
    let within = bounds.within_topic_bound(guard.limits.min_after_max_ms(outputs.iter().copied()));
    if within != bounds {
        tracing::info!(
            configured_ms = bounds.max_future_skew_ms,
            max_future_skew_ms = within.max_future_skew_ms,
            "future skew bound tightened to what the output topics accept (message.timestamp.after.max.ms)"
        );
    }
    within
}

/// Configuration of the group-less consumer that reads state back on assignment.
pub fn rebuild_config(kafka: &KafkaArgs, group: &str) -> ClientConfig {
    let mut c = kafka.client_config();
    c.set("group.id", format!("{group}.rebuild"))
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("isolation.level", "read_committed");
    c
}

/// Serves metrics, runs the consume loop until SIGTERM, then flushes the producer.
///
/// When the broker refuses an output for good that the topic limits read at start-up did not
/// predict ([`crate::error::PipelineError::Refused`]: the topic's configuration changed, or
/// the broker's clock differs from ours), nothing after the last commit was committed: the
/// loop resumes in process instead of exiting (no container restart, no crash loop). The
/// limits are read anew, the processor drops its state ([`Processor::resume_with`]), and a new
/// consumer (rejoining the group, state rebuilt from the committed offsets) and producer
/// start; the refused record is now dead-lettered with its reason. Consecutive resumes back
/// off from 1 s to 30 s.
///
/// # Errors
/// When clients cannot be created or the loop fails after its retries.
pub async fn run<P: Processor>(
    kafka: &KafkaArgs,
    consumer_cfg: ClientConfig,
    common: &CommonArgs,
    metrics: Metrics,
    mut processor: P,
    client_id: &str,
) -> anyhow::Result<()> {
    let shutdown = sensorflow_process::shutdown::on_signal();
    let server = tokio::spawn(sensorflow_process::server::serve(
        common.serve.metrics_addr,
        std::sync::Arc::new(metrics.clone()),
        shutdown.clone(),
    ));
    let producer_cfg = producer_config(kafka, common, client_id);
    let cfg = LoopConfig {
        commit_interval: Duration::from_millis(common.commit_interval_ms),
        exactly_once: common.exactly_once,
        ..LoopConfig::default()
    };
    let mut resumes: u32 = 0;
    let result = loop {
        let consumer: LoopConsumer = consumer_cfg
            .create_with_context(LoopContext::new(metrics.clone()))
            .context("creating the consumer")?;
        let producer =
            crate::emitter::loop_producer(&producer_cfg).context("creating the producer")?;
        let result = pipeline::run(
            &consumer,
            producer.clone(),
            &mut processor,
            metrics.clone(),
            cfg,
            shutdown.clone(),
        )
        .await;
        let Err(crate::error::PipelineError::Refused { topic, source }) = &result else {
            let _ = tokio::task::block_in_place(|| producer.flush(Duration::from_secs(30)));
            break result;
        };
        if shutdown.is_cancelled() {
            break result;
        }
        resumes += 1;
        metrics.loop_resumes.inc();
        let wait =
            Duration::from_secs(1 << resumes.min(5).saturating_sub(1)).min(Duration::from_secs(30));
        tracing::warn!(%topic, error = %source, resumes, retry_in = ?wait,
            "the broker refused an output the topic limits did not predict: reading the limits \
             anew and resuming from the last commit");
        drop(consumer);
        drop(producer);
        tokio::time::sleep(wait).await;
        let guard = match processor.output_guard() {
            Some(g) => {
                let topics: Vec<&str> = g.topics.iter().map(String::as_str).collect();
                Some(output_guard(kafka, &topics, &g.dead_letter_topic, g.processor).await)
            }
            None => None,
        };
        processor.resume_with(guard);
    };
    shutdown.cancel();
    match server.await {
        Ok(Err(e)) => tracing::warn!(error = %e, "metrics server failed"),
        Err(e) => tracing::warn!(error = %e, "metrics server task failed"),
        Ok(Ok(())) => {}
    }
    result.context("processing loop")
}

/// The loop producer's configuration: `transactional.id` and transaction timeouts for
/// exactly-once, or in-order unbounded delivery retries for at-least-once.
fn producer_config(kafka: &KafkaArgs, common: &CommonArgs, client_id: &str) -> ClientConfig {
    let mut producer_cfg = kafka.producer_config(client_id);
    if common.exactly_once {
        let id = common.transactional_id.clone().unwrap_or_else(|| {
            let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "local".into());
            let prefix = common
                .transactional_id_prefix
                .as_deref()
                .unwrap_or(client_id);
            format!("{prefix}-{host}")
        });
        producer_cfg.set("transactional.id", id);
        // A pod that dies with a transaction open blocks `read_committed` readers of its
        // output partitions until the broker aborts it: after `transaction.timeout.ms`, or at
        // once when an instance with the same id (the restarted container) starts. 10 s, as
        // Kafka Streams sets for exactly-once; `-X transaction.timeout.ms=…` overrides it.
        // librdkafka requires delivery.timeout.ms <= transaction.timeout.ms.
        if !kafka
            .properties
            .iter()
            .any(|(k, _)| k == "transaction.timeout.ms")
        {
            producer_cfg.set("transaction.timeout.ms", "10000");
            producer_cfg.set("delivery.timeout.ms", "10000");
        }
    } else if !kafka
        .properties
        .iter()
        .any(|(k, _)| k == "delivery.timeout.ms" || k == "message.timeout.ms")
    {
        // AtLeastOnce: librdkafka retries a delivery in order for as long as it takes (0 is
        // infinite). A delivery it gave up on could only be sent again behind records acked
        // after it, out of order (see `emitter`); a broker outage is waited out instead, the
        // wait logged every 10 s and beating the liveness clock.
        producer_cfg.set("delivery.timeout.ms", "0");
    }
    producer_cfg
}
