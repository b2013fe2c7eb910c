//! `gcs-sink` flags (environment variables as set by the operator) and wiring.

use crate::encode::{Codec, EncodeConfig};
use crate::layout::Layout;
use crate::metrics::SinkMetrics;
use crate::rotation::{Limits, Rotation};
use crate::rows::Kind;
use crate::sink::{CommitFault, RetryConfig, Sink, SinkConfig, Summary};
use crate::store::{GcsConfig, GcsStore, LocalStore, ObjectStore};
use anyhow::Context;
use clap::Parser;
use rdkafka::producer::Producer;
use sensorflow_api::env;
use sensorflow_runtime::args::ClientArgs;
use sensorflow_runtime::consumer::{LoopConsumer, LoopContext};
use sensorflow_runtime::emitter::{Emitter, RetryPolicy, loop_producer};
use sensorflow_runtime::metrics::Metrics;
use sensorflow_runtime::runner::ServeArgs;
use std::path::PathBuf;
use std::time::Duration;

/// gcs-sink: copies pipeline topics into Parquet objects in Google Cloud Storage (or a local
/// directory), laid out as `PREFIX/topic=T/date=YYYY-MM-DD/hour=HH/T-PARTITION-FIRST-LAST.parquet`.
///
/// Every record is stored exactly once: a partition's records are cut into consecutive offset
/// ranges (one object per event hour in each), an object is uploaded whole and create-only
/// before the offsets it holds are committed, and where a range ends depends only on its
/// records or on a time cut committed before the upload — so whoever resumes from a commit
/// (after a crash, a rebalance or an expired session) writes the same objects again, never
/// others. Undecodable records go to the dead-letter topic with the reason.
#[derive(Debug, Clone, Parser)]
#[command(name = "gcs-sink", version, about, long_about)]
pub struct SinkArgs {
    /// The broker connection, topic names and record framing.
    #[command(flatten)]
    pub client: ClientArgs,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub serve: ServeArgs,
    /// Consumer group id.
    #[arg(long, env = env::GROUP_ID, default_value = "sensorflow-sink")]
    pub group_id: String,
    /// GCS bucket (required unless --local-dir is given).
    #[arg(long, env = env::SINK_BUCKET, required_unless_present = "local_dir")]
    pub bucket: Option<String>,
    /// Write to this local directory instead of GCS (the embedded default).
    #[arg(long, env = env::SINK_LOCAL_DIR, conflicts_with = "bucket")]
    pub local_dir: Option<PathBuf>,
    /// Object name prefix inside the bucket or directory (`/` appended when missing).
    #[arg(long, env = env::SINK_PREFIX, default_value = "")]
    pub prefix: String,
    /// Topics to archive, comma-separated (default: every pipeline topic — SX, SY, SZ, FA, FI,
    /// FD, predictions, dead-letter and late).
    #[arg(long = "sink-topics", env = env::SINK_TOPICS, value_delimiter = ',')]
    pub sink_topics: Vec<String>,
    /// Records per offset range (counting dead-lettered ones): a partition's records are cut
    /// into consecutive ranges of at most this many, one object per event hour in each. The
    /// limits in force travel with the committed offset; a change takes effect at the first
    /// time cut above what earlier runs may have stored.
    #[arg(long, env = env::SINK_MAX_RECORDS, default_value_t = 1_000_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_records: u64,
    /// Input bytes (Kafka key + value) per offset range, before compression: the range ends
    /// at the record that reaches it.
    #[arg(long, env = env::SINK_MAX_BYTES, default_value_t = 134_217_728, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_bytes: u64,
    /// Seconds a range stays open before it is cut and uploaded (quiet topics still get
    /// files). Where such a cut falls is committed (offset metadata) before its objects are
    /// uploaded, so whoever resumes from the commit cuts there too.
    #[arg(long, env = env::SINK_MAX_AGE_SECONDS, default_value_t = 300.0)]
    pub max_age_seconds: f64,
    /// Input bytes buffered across all open ranges and queued uploads before the largest open
    /// range is cut early (a time cut, committed before its upload like an age cut).
    #[arg(long, env = env::SINK_MAX_BUFFER_BYTES, default_value_t = 1 << 30)]
    pub max_buffer_bytes: u64,
    /// Event hours per offset range: a record of one hour more ends the range before it.
    /// Bounds the objects one range makes when event times are scattered (records of every
    /// hour in a range are kept together, one object per hour, however they interleave).
    #[arg(long, env = env::SINK_MAX_OPEN_HOURS, default_value_t = 168, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub max_open_hours: u64,
    /// Rows per Parquet row group.
    #[arg(long, env = env::SINK_ROW_GROUP_ROWS, default_value_t = 262_144, value_parser = clap::value_parser!(u64).range(1..))]
    pub row_group_rows: u64,
    /// Compression: `zstd`, `zstd:LEVEL` (1..=22) or `uncompressed`.
    #[arg(long, env = env::SINK_COMPRESSION, default_value = "zstd")]
    pub compression: Codec,
    /// GCS endpoint override (e.g. fake-gcs-server `http://127.0.0.1:4443`); anonymous access
    /// unless credentials are given.
    #[arg(long, env = env::SINK_ENDPOINT)]
    pub endpoint: Option<String>,
    /// Service-account JSON key file. Unset: GOOGLE_APPLICATION_CREDENTIALS, else workload
    /// identity / the metadata server (or anonymous with --endpoint).
    #[arg(long, env = env::SINK_CREDENTIALS)]
    pub credentials: Option<PathBuf>,
    /// Standard Google credentials variable (used when --credentials is unset).
    #[arg(long, env = env::GOOGLE_APPLICATION_CREDENTIALS, hide = true)]
    pub google_application_credentials: Option<PathBuf>,
    /// Time limit of one GCS request, seconds.
    #[arg(long, env = env::SINK_REQUEST_TIMEOUT_SECONDS, default_value_t = 120)]
    pub request_timeout_seconds: u64,
    /// Retries of a failed store operation (exponential backoff with jitter, 0.2 s doubling
    /// up to 20 s) before the sink exits non-zero.
    #[arg(long, env = env::SINK_RETRIES, default_value_t = 12)]
    pub retries: usize,
    /// Consecutive refused offset commits retried (backoff 0.2 s doubling to 10 s, about a
    /// minute in all) before the sink exits non-zero. Commits refused by a rebalance are
    /// retried without this limit.
    #[arg(long, env = env::SINK_COMMIT_RETRIES, default_value_t = 10)]
    pub commit_retries: u32,
    /// Write the run summary as JSON to this file on exit.
    #[arg(long, env = env::SINK_SUMMARY_JSON)]
    pub summary_json: Option<PathBuf>,
}

impl SinkArgs {
    /// Topic names with their decoding: SX/SY/SZ readings, FA/FI/FD features, predictions;
    /// anything else (dead-letter, late, foreign topics) is stored raw (key and value bytes
    /// with the dead-letter headers as columns). Without `--sink-topics`, every pipeline topic.
    pub fn topic_kinds(&self) -> Vec<(String, Kind)> {
        let t = self.client.topics.topics();
        let names: Vec<String> = if self.sink_topics.iter().all(|s| s.trim().is_empty()) {
            [
                &t.sx,
                &t.sy,
                &t.sz,
                &t.fa,
                &t.fi,
                &t.fd,
                &t.predictions,
                &t.dead_letter,
                &t.late,
            ]
            .into_iter()
            .cloned()
            .collect()
        } else {
            self.sink_topics
                .iter()
                .map(|s| s.trim().to_owned())
                .filter(|s| !s.is_empty())
                .collect()
        };
        names
            .into_iter()
            .map(|n| {
                let kind = if n == t.sx || n == t.sy || n == t.sz {
                    Kind::Reading
                } else if n == t.fa || n == t.fi || n == t.fd {
                    Kind::Feature
                } else if n == t.predictions {
                    Kind::Prediction
                } else {
                    Kind::Raw
                };
                (n, kind)
            })
            .collect()
    }

    /// The sink settings these flags describe.
    pub fn config(&self) -> SinkConfig {
        SinkConfig {
            topics: self.topic_kinds(),
            framing: self.client.framing.framing(),
            layout: Layout::new(&self.prefix),
            rotation: Rotation {
                limits: Limits {
                    max_records: self.max_records,
                    max_bytes: self.max_bytes,
                    max_hours: self.max_open_hours as usize,
                },
                max_age_ms: ((self.max_age_seconds * 1000.0) as i64).max(1),
            },
            encode: EncodeConfig {
                codec: self.compression,
                row_group_rows: self.row_group_rows as usize,
            },
            max_buffer_bytes: self.max_buffer_bytes,
            dead_letter_topic: self.client.topics.topic_dlq.clone(),
            retry: RetryConfig {
                max_retries: self.retries,
                ..RetryConfig::default()
            },
            max_poll_interval: self.max_poll_interval(),
            commit_retries: self.commit_retries,
        }
    }

    /// The consumer's `max.poll.interval.ms` (`-X max.poll.interval.ms=…`, default 300 s).
    pub fn max_poll_interval(&self) -> Duration {
        let ms = self
            .client
            .kafka
            .properties
            .iter()
            .rev()
            .find(|(k, _)| k == "max.poll.interval.ms")
            .and_then(|(_, v)| v.parse::<u64>().ok())
            .unwrap_or(300_000);
        Duration::from_millis(ms.max(1))
    }
}

/// Creates the consumer and the dead-letter producer, runs `sink` until SIGTERM (or an
/// unrecoverable error), and returns its summary.
///
/// # Errors
/// When the clients cannot be created or the sink fails after its retries.
pub async fn run_with<S: ObjectStore>(
    args: &SinkArgs,
    store: S,
    metrics: Metrics,
    sm: SinkMetrics,
    shutdown: tokio_util::sync::CancellationToken,
) -> anyhow::Result<Summary> {
    run_with_commit_fault(args, store, metrics, sm, shutdown, None).await
}

/// [`run_with`], with `fault` injected into every offset commit (tests of the commit retry).
///
/// # Errors
/// As [`run_with`].
pub async fn run_with_commit_fault<S: ObjectStore>(
    args: &SinkArgs,
    store: S,
    metrics: Metrics,
    sm: SinkMetrics,
    shutdown: tokio_util::sync::CancellationToken,
    fault: Option<CommitFault>,
) -> anyhow::Result<Summary> {
    let consumer: LoopConsumer = args
        .client
        .kafka
        .consumer_config(&args.group_id, sensorflow_api::processors::GCS_SINK)
        .create_with_context(LoopContext::new(metrics.clone()))
        .context("creating the consumer")?;
    let producer = loop_producer(
        &args
            .client
            .kafka
            .producer_config(sensorflow_api::processors::GCS_SINK),
    )
    .context("creating the dead-letter producer")?;
    let emitter = Emitter::new(producer.clone(), metrics.clone(), RetryPolicy::default());
    let mut sink = Sink::new(args.config(), store, metrics, sm, emitter);
    if let Some(f) = fault {
        sink = sink.with_commit_fault(f);
    }
    let result = sink.run(&consumer, shutdown).await;
    let _ = tokio::task::block_in_place(|| producer.flush(Duration::from_secs(30)));
    result.context("sink loop")?;
    Ok(sink.summary().clone())
}

/// Entry point of the `gcs-sink` binary.
///
/// # Errors
/// Start-up failures (bad credentials, clients) and unrecoverable sink errors: the process
/// exits non-zero and a restart resumes from the last commit.
pub async fn main(args: SinkArgs) -> anyhow::Result<()> {
    sensorflow_process::telemetry::init(args.serve.log_format);
    let sm = SinkMetrics::default();
    let metrics = Metrics::new_with(|r| sm.register(r));
    let shutdown = sensorflow_process::shutdown::on_signal();
    let server = tokio::spawn(sensorflow_process::server::serve(
        args.serve.metrics_addr,
        std::sync::Arc::new(metrics.clone()),
        shutdown.clone(),
    ));
    let cfg = args.config();
    tracing::info!(group = %args.group_id, topics = ?cfg.topics, rotation = ?cfg.rotation,
        encode = ?cfg.encode, "gcs-sink starting");
    let result = match (&args.local_dir, &args.bucket) {
        (Some(dir), _) => {
            let store = LocalStore::new(dir);
            run_with(&args, store, metrics, sm, shutdown.clone()).await
        }
        (None, Some(bucket)) => {
            let store = GcsStore::connect(&GcsConfig {
                bucket: bucket.clone(),
                endpoint: args.endpoint.clone(),
                credentials: args
                    .credentials
                    .clone()
                    .or_else(|| args.google_application_credentials.clone()),
                timeout: Duration::from_secs(args.request_timeout_seconds),
            })
            .await
            .context("connecting to GCS")?;
            run_with(&args, store, metrics, sm, shutdown.clone()).await
        }
        (None, None) => {
            anyhow::bail!("set --bucket (SF_SINK_BUCKET) or --local-dir (SF_SINK_LOCAL_DIR)")
        }
    };
    shutdown.cancel();
    let _ = server.await;
    let summary = result?;
    if let Some(path) = &args.summary_json {
        std::fs::write(path, serde_json::to_vec_pretty(&summary)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    println!(
        "gcs-sink: {} rows in {} files ({} bytes) written to {}; {} dead-lettered, {} found already stored",
        summary.rows_written,
        summary.files_written,
        summary.bytes_written,
        summary.location,
        summary.dead_lettered,
        summary.already_stored
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn archives_every_pipeline_topic_by_default_with_its_schema() {
        let a = SinkArgs::parse_from(["gcs-sink", "--local-dir=/tmp/x"]);
        let got = a.topic_kinds();
        let want = [
            ("SX", Kind::Reading),
            ("SY", Kind::Reading),
            ("SZ", Kind::Reading),
            ("FA", Kind::Feature),
            ("FI", Kind::Feature),
            ("FD", Kind::Feature),
            ("predictions", Kind::Prediction),
            ("dead-letter", Kind::Raw),
            ("late", Kind::Raw),
        ];
        let names: Vec<(&str, Kind)> = got.iter().map(|(n, k)| (n.as_str(), *k)).collect();
        assert_eq!(names, want);
        assert_eq!(a.max_poll_interval(), Duration::from_secs(300));
        let b = SinkArgs::parse_from([
            "gcs-sink",
            "--local-dir=/tmp/x",
            "--sink-topics=p.SZ,other",
            "--topic-sz=p.SZ",
            "-X",
            "max.poll.interval.ms=6000",
        ]);
        assert_eq!(
            b.topic_kinds(),
            vec![
                ("p.SZ".to_owned(), Kind::Reading),
                ("other".to_owned(), Kind::Raw)
            ]
        );
        let cfg = b.config();
        assert_eq!(cfg.keepalive(), Duration::from_millis(600));
        assert_eq!(cfg.op_deadline(), Duration::from_millis(4200));
    }
}
