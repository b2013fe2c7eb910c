//! Rebuilding processor state from the input topics on partition assignment.
//!
//! Windows are bounded in event time, so no state store is needed: for every assigned
//! partition with a committed offset `C`, the records that can still matter are those whose
//! timestamp is within `lookback` of the last processed record (`C − 1`). This module reads
//! them back with a separate, group-less consumer:
//!
//! ```text
//!   1. read record C−1                       → its timestamp T
//!   2. offsets_for_times(T − lookback)        → start offset S  (KIP-79 ListOffsets by time)
//!   3. read [S, C)                            → handed to the processor, which replays them
//!                                               into its state without emitting anything
//! ```
//!
//! Record timestamps are the readings' event times (SensorFlow's producers set them so), so
//! `lookback = window + grace` restores exactly the state the previous owner had, provided the
//! partition's timestamps are ordered within the grace period. The main consumer then resumes
//! at `C`.

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::OwnedMessage;
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use rustc_hash::FxHashMap;
use std::time::{Duration, Instant};

/// One partition to read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// The group's committed offset (the next record to process).
    pub committed: i64,
}

/// Reading back failed.
#[derive(Debug, thiserror::Error)]
pub enum RebuildError {
    /// The rebuild consumer could not be created or assigned.
    #[error("rebuild consumer: {0}")]
    Consumer(#[from] KafkaError),
    /// Records could not be read in time.
    #[error(
        "rebuild of {topic}/{partition} timed out after {waited:?} at offset {at} (wanted up to {until})"
    )]
    Timeout {
        /// Topic.
        topic: String,
        /// Partition.
        partition: i32,
        /// Time waited.
        waited: Duration,
        /// Last offset read.
        at: i64,
        /// Offset wanted.
        until: i64,
    },
}

type Key = (String, i32);

fn assign(c: &BaseConsumer, at: &FxHashMap<Key, i64>) -> Result<(), KafkaError> {
    let mut tpl = TopicPartitionList::new();
    for ((t, p), o) in at {
        tpl.add_partition_offset(t, *p, Offset::Offset(*o))?;
    }
    c.assign(&tpl)
}

/// Polls until every partition in `want` (key → last offset wanted, inclusive) has been read
/// up to its offset; `keep` decides what to collect.
fn read_until(
    c: &BaseConsumer,
    want: &FxHashMap<Key, i64>,
    timeout: Duration,
    mut keep: impl FnMut(&Key, OwnedMessage),
) -> Result<(), RebuildError> {
    let started = Instant::now();
    let mut at: FxHashMap<Key, i64> = FxHashMap::default();
    let mut open = want.len();
    while open > 0 {
        if started.elapsed() > timeout {
            let (k, until) = want
                .iter()
                .find(|(k, u)| at.get(*k).is_none_or(|a| a < *u))
                .map(|(k, u)| (k.clone(), *u))
                .unwrap_or_else(|| (("?".into(), -1), -1));
            return Err(RebuildError::Timeout {
                topic: k.0.clone(),
                partition: k.1,
                waited: started.elapsed(),
                at: at.get(&k).copied().unwrap_or(-1),
                until,
            });
        }
        match c.poll(Duration::from_millis(200)) {
            None => {}
            Some(Err(e)) => tracing::debug!(error = %e, "rebuild poll"),
            Some(Ok(m)) => {
                let key = (m.topic().to_owned(), m.partition());
                let Some(&until) = want.get(&key) else {
                    continue;
                };
                let off = m.offset();
                let prev = at.insert(key.clone(), off);
                if off <= until {
                    keep(&key, m.detach());
                }
                if off >= until && prev.is_none_or(|p| p < until) {
                    open -= 1;
                }
            }
        }
    }
    Ok(())
}

/// Reads back, for every request, the records in `[S, committed)` where `S` is the first
/// offset whose timestamp is ≥ (timestamp of `committed − 1`) − `lookback_ms`.
/// Returns the records per (topic, partition), in offset order. Requests with nothing before
/// their committed offset (or whose tail was deleted by retention) yield nothing.
///
/// Blocking: call it from a blocking context.
///
/// # Errors
/// [`RebuildError`] when the broker does not answer within `timeout` per phase.
pub fn read_back(
    config: &ClientConfig,
    requests: &[Request],
    lookback_ms: i64,
    timeout: Duration,
) -> Result<FxHashMap<(String, i32), Vec<OwnedMessage>>, RebuildError> {
    read_back_from(config, requests, timeout, |last, key| {
        last.get(key).map_or(0, |t| t - lookback_ms)
    })
}

/// Timestamps (ms) of the last processed record (`committed − 1`) per (topic, partition).
pub type LastTimestamps = FxHashMap<(String, i32), i64>;

/// Like [`read_back`], but the start time of each partition is chosen by `start_ms` from the
/// timestamps of every request's last processed record, e.g. the oldest of several topics
/// whose records must be matched with each other.
///
/// # Errors
/// [`RebuildError`] when the broker does not answer within `timeout` per phase.
pub fn read_back_from(
    config: &ClientConfig,
    requests: &[Request],
    timeout: Duration,
    start_ms: impl Fn(&LastTimestamps, &(String, i32)) -> i64,
) -> Result<FxHashMap<(String, i32), Vec<OwnedMessage>>, RebuildError> {
    let mut out: FxHashMap<Key, Vec<OwnedMessage>> = FxHashMap::default();
    let c: BaseConsumer = config.create()?;
    // Only partitions with something before the committed offset, still retained.
    let mut last: FxHashMap<Key, i64> = FxHashMap::default();
    for r in requests {
        if r.committed <= 0 {
            continue;
        }
        let (low, _high) = c.fetch_watermarks(&r.topic, r.partition, timeout)?;
        if r.committed > low {
            last.insert((r.topic.clone(), r.partition), r.committed - 1);
        }
    }
    if last.is_empty() {
        return Ok(out);
    }
    // 1. the timestamp of the last processed record per partition
    assign(&c, &last)?;
    let mut ts: FxHashMap<Key, i64> = FxHashMap::default();
    read_until(&c, &last, timeout, |k, m| {
        if let Some(t) = m.timestamp().to_millis() {
            ts.insert(k.clone(), t);
        }
    })?;
    // 2. offsets for the start times
    let mut q = TopicPartitionList::new();
    for (t, p) in ts.keys() {
        let from = start_ms(&ts, &(t.clone(), *p)).max(0);
        q.add_partition_offset(t, *p, Offset::Offset(from))?;
    }
    let starts = c.offsets_for_times(q, timeout)?;
    let mut start: FxHashMap<Key, i64> = FxHashMap::default();
    for e in starts.elements() {
        let key = (e.topic().to_owned(), e.partition());
        let Some(&l) = last.get(&key) else { continue };
        let s = match e.offset() {
            Offset::Offset(o) if o <= l => o,
            // No record at or after that time before C: only C − 1 itself.
            _ => l,
        };
        start.insert(key, s);
    }
    // 3. read [S, C)
    let want: FxHashMap<Key, i64> = start.keys().map(|k| (k.clone(), last[k])).collect();
    assign(&c, &start)?;
    read_until(&c, &want, timeout, |k, m| {
        out.entry(k.clone()).or_default().push(m)
    })?;
    let n: usize = out.values().map(Vec::len).sum();
    tracing::info!(
        partitions = want.len(),
        records = n,
        "state rebuilt from the topics"
    );
    Ok(out)
}
