//! The end-of-run summary of a pipeline: counts per topic, predictions by trigger, records
//! without a prediction by reason (read from the dead-letter headers, so they survive
//! restarts), alerts and end-to-end latency.

use crate::replay::ReplaySummary;
use anyhow::Context;
use hdrhistogram::Histogram;
use prost::Message as _;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Headers;
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use sensorflow_api::TopicNames as Topics;
use sensorflow_core::proto::{Prediction, TriggerKind};
use sensorflow_core::wire::Framing;
use sensorflow_kafka::admin;
use serde::Serialize;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// Pipeline totals read back from the topics.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PipelineSummary {
    /// Records in FA + FI + FD.
    pub features: i64,
    /// Records in predictions.
    pub predictions: i64,
    /// Predictions by trigger: SX, SY, feature triple.
    pub predictions_by_trigger: [i64; 3],
    /// Dead-letter records by `sensorflow.reason` (join: `missing-sx`, `stale-sy`, …,
    /// `incomplete-triple`; inputs: `decode`, `out-of-range`, …).
    pub dead_letter_by_reason: BTreeMap<String, i64>,
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
    let t = read_prediction_totals(config, topic, framing, timeout)?;
    Ok((t.total, t.alerts, t.latency))
}

/// What [`read_prediction_totals`] counts.
#[derive(Debug, Clone)]
pub struct PredictionTotals {
    /// Records.
    pub total: i64,
    /// With the alert flag.
    pub alerts: i64,
    /// By trigger: SX, SY, feature triple.
    pub by_trigger: [i64; 3],
    /// Ingest → prediction latency, ms.
    pub latency: Histogram<u64>,
}

/// Reads every prediction (all partitions, from the beginning): totals, alerts, triggers and
/// latency.
///
/// # Errors
/// Broker errors or a timeout.
pub fn read_prediction_totals(
    config: &ClientConfig,
    topic: &str,
    framing: Framing,
    timeout: Duration,
) -> anyhow::Result<PredictionTotals> {
    let mut hist = Histogram::<u64>::new_with_bounds(1, 3_600_000, 3)?;
    let mut alerts = 0;
    let mut by_trigger = [0i64; 3];
    let total = read_topic(config, topic, timeout, |m| {
        let Some(v) = m.payload() else { return };
        let Ok((pb, _)) = framing.decode(v) else {
            return;
        };
        let Ok(p) = Prediction::decode(pb) else {
            return;
        };
        alerts += i64::from(p.alert);
        match p.trigger() {
            TriggerKind::TriggerSx => by_trigger[0] += 1,
            TriggerKind::TriggerSy => by_trigger[1] += 1,
            TriggerKind::TriggerFeatures => by_trigger[2] += 1,
            TriggerKind::Unspecified => {}
        }
        if p.ingest_time_ms > 0 && p.predicted_at_ms >= p.ingest_time_ms {
            hist.saturating_record(((p.predicted_at_ms - p.ingest_time_ms) as u64).max(1));
        }
    })?;
    Ok(PredictionTotals {
        total,
        alerts,
        by_trigger,
        latency: hist,
    })
}

/// Counts the dead-letter records of `topic` by their `sensorflow.reason` header.
///
/// # Errors
/// Broker errors or a timeout.
pub fn read_reasons(
    config: &ClientConfig,
    topic: &str,
    timeout: Duration,
) -> anyhow::Result<BTreeMap<String, i64>> {
    let mut by = BTreeMap::new();
    read_topic(config, topic, timeout, |m| {
        let reason = m
            .headers()
            .and_then(|h| {
                h.iter()
                    .find(|h| h.key == sensorflow_runtime::dlq::REASON)
                    .and_then(|h| h.value)
                    .map(|v| String::from_utf8_lossy(v).into_owned())
            })
            .unwrap_or_else(|| "unknown".into());
        *by.entry(reason).or_insert(0) += 1;
    })?;
    Ok(by)
}

/// Reads every record of `topic` (all partitions, from the beginning up to the current end)
/// and hands each to `each`; returns how many there were.
fn read_topic(
    config: &ClientConfig,
    topic: &str,
    timeout: Duration,
    mut each: impl FnMut(&rdkafka::message::BorrowedMessage<'_>),
) -> anyhow::Result<i64> {
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
    if remaining == 0 {
        return Ok(0);
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
        each(&m);
    }
    Ok(total)
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
    let PredictionTotals {
        total: predictions,
        alerts,
        by_trigger: predictions_by_trigger,
        latency: hist,
    } = read_prediction_totals(
        config,
        &topics.predictions,
        framing,
        Duration::from_secs(600),
    )?;
    let dead_letter_by_reason =
        read_reasons(config, &topics.dead_letter, Duration::from_secs(600))?;
    Ok(PipelineSummary {
        features: count(&topics.fa)? + count(&topics.fi)? + count(&topics.fd)?,
        predictions,
        predictions_by_trigger,
        dead_letter_by_reason,
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
    let reason = |r: &str| p.dead_letter_by_reason.get(r).copied().unwrap_or(0);
    let join_reasons: Vec<String> = sensorflow_core::join::SkipReason::ALL
        .iter()
        .map(|r| format!("{} {}", r.code(), reason(r.code())))
        .collect();
    let other: Vec<String> = p
        .dead_letter_by_reason
        .iter()
        .filter(|(k, _)| {
            k.as_str() != "incomplete-triple"
                && !sensorflow_core::join::SkipReason::ALL
                    .iter()
                    .any(|r| r.code() == k.as_str())
        })
        .map(|(k, v)| format!("{k} {v}"))
        .collect();
    let [by_sx, by_sy, by_features] = p.predictions_by_trigger;
    format!(
        "\n==================== SensorFlow pipeline summary ====================\n\
         input                     {}\n\
         clients (days)            {}\n\
         rows read                 {}\n\
         rows rejected (`?`)       {}   (rows malformed: {})\n\
         readings in (SX/SY/SZ)    {} ({} / {} / {})\n\
         features out (FA+FI+FD)   {}\n\
         predictions               {} (by trigger: SX {} / SY {} / features {})\n\
         without prediction (join) {}, incomplete-triple {}\n\
         alerts                    {} ({:.2}%)\n\
         late readings             {}\n\
         dead-lettered records     {} (other reasons: {})\n\
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
        by_sx,
        by_sy,
        by_features,
        join_reasons.join(", "),
        reason("incomplete-triple"),
        p.alerts,
        100.0 * p.alerts as f64 / (p.predictions.max(1) as f64),
        p.late,
        p.dead_letter,
        if other.is_empty() {
            "none".to_owned()
        } else {
            other.join(", ")
        },
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
