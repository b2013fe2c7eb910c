//! The processor applications: flags, wiring, and the [`crate::pipeline::Processor`]
//! implementations. Binaries call [`window::main`] and [`join::main`].

pub mod join;
pub mod window;

use crate::kafka::KafkaArgs;
use crate::metrics::Metrics;
use crate::pipeline::{self, LoopConfig, LoopConsumer, LoopContext, Processor};
use crate::telemetry::LogFormat;
use anyhow::Context;
use clap::Args;
use rdkafka::ClientConfig;
use rdkafka::producer::{FutureProducer, Producer};
use std::net::SocketAddr;
use std::time::Duration;

/// Flags every processor shares.
#[derive(Debug, Clone, Args)]
pub struct CommonArgs {
    /// Address for /metrics, /health and /ready.
    #[arg(long, env = "SF_METRICS_ADDR", default_value = "0.0.0.0:9100")]
    pub metrics_addr: SocketAddr,
    /// Log format.
    #[arg(long, env = "SF_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Flush outputs and commit offsets at least this often, ms.
    #[arg(long, env = "SF_COMMIT_INTERVAL_MS", default_value_t = 200)]
    pub commit_interval_ms: u64,
    /// How long rebuilding state on partition assignment may take per phase, ms.
    #[arg(long, env = "SF_REBUILD_TIMEOUT_MS", default_value_t = 30_000)]
    pub rebuild_timeout_ms: u64,
    /// Exactly-once: commit outputs and consumed offsets atomically in Kafka transactions
    /// (needs a broker with transactions, e.g. Apache Kafka >= 2.5; tansu 0.6 has none).
    /// Default: at-least-once with exact repeats.
    #[arg(long, env = "SF_EXACTLY_ONCE", default_value_t = false)]
    pub exactly_once: bool,
    /// transactional.id for --exactly-once: stable per instance across restarts and unique
    /// across instances (default: `<processor>-$HOSTNAME`, the pod name on Kubernetes).
    #[arg(long, env = "SF_TRANSACTIONAL_ID")]
    pub transactional_id: Option<String>,
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
    let shutdown = crate::shutdown::on_signal();
    let server = tokio::spawn(metrics.clone().serve(common.metrics_addr, shutdown.clone()));
    let consumer: LoopConsumer = consumer_cfg
        .create_with_context(LoopContext::new(metrics.clone()))
        .context("creating the consumer")?;
    let mut producer_cfg = kafka.producer_config(client_id);
    if common.exactly_once {
        let id = common.transactional_id.clone().unwrap_or_else(|| {
            let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "local".into());
            format!("{client_id}-{host}")
        });
        producer_cfg.set("transactional.id", id);
    }
    let producer: FutureProducer = producer_cfg.create().context("creating the producer")?;
    let cfg = LoopConfig {
        commit_interval: Duration::from_millis(common.commit_interval_ms),
        exactly_once: common.exactly_once,
        ..LoopConfig::default()
    };
    let result = pipeline::run(
        &consumer,
        producer.clone(),
        &mut processor,
        metrics,
        cfg,
        shutdown.clone(),
    )
    .await;
    shutdown.cancel();
    let _ = tokio::task::block_in_place(|| producer.flush(Duration::from_secs(30)));
    match server.await {
        Ok(Err(e)) => tracing::warn!(error = %e, "metrics server failed"),
        Err(e) => tracing::warn!(error = %e, "metrics server task failed"),
        Ok(Ok(())) => {}
    }
    result.context("processing loop")
}
