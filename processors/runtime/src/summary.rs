//! The end-of-run summary of a pipeline: counts per topic, alerts and end-to-end latency.

use crate::admin;
use crate::replay::ReplaySummary;
use anyhow::Context;
use hdrhistogram::Histogram;
use prost::Message as _;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use sensorflow_core::config::Topics;
use sensorflow_core::proto::Prediction;
use sensorflow_core::wire::Framing;
use serde::Serialize;
use std::time::{Duration, Instant};

/// Pipeline totals read back from the topics.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PipelineSummary {
    /// Records in FA + FI + FD.
    pub features: i64,
    /// Records in predictions.
    pub predictions: i64,
    /// Predictions with the alert flag.
    pub alerts: i64,
    /// Records in the dead-letter topic.
    pub dead_letter: i64,
    /// Records in the late topic.
    pub late: i64,
    /// End-to-end latency (ingest → prediction) percentiles, ms: p50, p90, p99, max.
    pub latency_ms: [u64; 4],
    /// Predictions with a known ingest time.
    pub latency_samples: u64,
}

/// Reads every prediction (all partitions, from the beginning) and counts alerts and latency.
///
/// # Errors
/// Broker errors or a timeout.
pub fn read_predictions(
    config: &ClientConfig,
    topic: &str,
    framing: Framing,
    timeout: Duration,
) -> anyhow::Result<(i64, i64, Histogram<u64>)> {
    let mut cfg = config.clone();
    // Partitions are assigned, not subscribed; librdkafka still wants a group id. Nothing is
    // committed.
    cfg.set("group.id", "sensorflow-summary")
        .set("enable.auto.commit", "false");
    let c: BaseConsumer = cfg.create()?;
    let n = admin::partition_counts(config, &[topic])?[0];
    let mut tpl = TopicPartitionList::new();
    let mut remaining = 0i64;
    let mut ends = std::collections::HashMap::new();
    for p in 0..n {
        let (lo, hi) = c.fetch_watermarks(topic, p, Duration::from_secs(10))?;
        if hi > lo {
            tpl.add_partition_offset(topic, p, Offset::Offset(lo))?;
            ends.insert(p, hi);
            remaining += hi - lo;
        }
    }
    let total = remaining;
    let mut hist = Histogram::<u64>::new_with_bounds(1, 3_600_000, 3)?;
    let mut alerts = 0;
    if remaining == 0 {
        return Ok((0, 0, hist));
    }
    c.assign(&tpl)?;
    let started = Instant::now();
    while remaining > 0 {
        anyhow::ensure!(
            started.elapsed() < timeout,
            "reading {topic} timed out with {remaining} records left"
        );
        let Some(m) = c.poll(Duration::from_millis(500)) else {
            continue;
        };
        let m = m?;
        if m.offset() >= ends[&m.partition()] {
            continue;
        }
        remaining -= 1;
        let Some(v) = m.payload() else { continue };
        let Ok((pb, _)) = framing.decode(v) else {
            continue;
        };
        let Ok(p) = Prediction::decode(pb) else {
            continue;
        };
        alerts += i64::from(p.alert);
        if p.ingest_time_ms > 0 && p.predicted_at_ms >= p.ingest_time_ms {
            hist.saturating_record(((p.predicted_at_ms - p.ingest_time_ms) as u64).max(1));
        }
    }
    Ok((total, alerts, hist))
}

/// Totals of a pipeline's topics.
///
/// # Errors
/// Broker errors.
pub fn summarize(
    config: &ClientConfig,
    topics: &Topics,
    framing: Framing,
) -> anyhow::Result<PipelineSummary> {
    let count = |t: &str| admin::message_count(config, t).with_context(|| format!("counting {t}"));
    let (predictions, alerts, hist) = read_predictions(
        config,
        &topics.predictions,
        framing,
        Duration::from_secs(600),
    )?;
    Ok(PipelineSummary {
        features: count(&topics.fa)? + count(&topics.fi)? + count(&topics.fd)?,
        predictions,
        alerts,
        dead_letter: count(&topics.dead_letter)?,
        late: count(&topics.late)?,
        latency_ms: [
            hist.value_at_quantile(0.5),
            hist.value_at_quantile(0.9),
            hist.value_at_quantile(0.99),
            hist.max(),
        ],
        latency_samples: hist.len(),
    })
}

/// Renders the demo summary: what the replay sent and what the pipeline produced.
pub fn render(replay: &ReplaySummary, p: &PipelineSummary, drained_s: f64) -> String {
    let readings = replay.readings_sx + replay.readings_sy + replay.readings_sz;
    format!(
        "\n==================== SensorFlow pipeline summary ====================\n\
         input                     {}\n\
         clients (days)            {}\n\
         rows read                 {}\n\
         rows rejected (`?`)       {}   (rows malformed: {})\n\
         readings in (SX/SY/SZ)    {} ({} / {} / {})\n\
         features out (FA+FI+FD)   {}\n\
         predictions               {}\n\
         alerts                    {} ({:.2}%)\n\
         late readings             {}\n\
         dead-lettered records     {}\n\
         replay rate               {:.0} readings/s ({:.1} s)\n\
         pipeline throughput       {:.0} readings/s (replay start → all predictions, {:.1} s)\n\
         end-to-end latency        p50 {} ms, p90 {} ms, p99 {} ms, max {} ms ({} predictions)\n\
         =====================================================================\n",
        replay.input,
        replay.clients,
        replay.rows_read,
        replay.rows_rejected_missing,
        replay.rows_rejected_malformed,
        readings,
        replay.readings_sx,
        replay.readings_sy,
        replay.readings_sz,
        p.features,
        p.predictions,
        p.alerts,
        100.0 * p.alerts as f64 / (p.predictions.max(1) as f64),
        p.late,
        p.dead_letter,
        replay.rate_per_s,
        replay.elapsed_s,
        readings as f64 / drained_s.max(1e-9),
        drained_s,
        p.latency_ms[0],
        p.latency_ms[1],
        p.latency_ms[2],
        p.latency_ms[3],
        p.latency_samples,
    )
}
