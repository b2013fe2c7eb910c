//! The consumer side of the loop: the [`LoopConsumer`] type, and its context
//! ([`LoopContext`]) that records rebalance events for the driver, keeps the group metadata
//! of the current generation, and turns librdkafka statistics into lag gauges.

use crate::metrics::{Metrics, TopicLabel};
use rdkafka::consumer::{
    BaseConsumer, Consumer, ConsumerContext, ConsumerGroupMetadata, Rebalance, StreamConsumer,
};
use rdkafka::statistics::Statistics;
use rdkafka::{ClientContext, TopicPartitionList};
use rustc_hash::FxHashMap;
use std::sync::{Arc, Mutex};

/// A (topic, partition) pair.
pub type TopicPartition = (String, i32);

/// Partition assignment changes seen by the rebalance callback.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RebalanceEvent {
    /// Partitions assigned to this member.
    Assigned(Vec<TopicPartition>),
    /// Partitions taken away.
    Revoked(Vec<TopicPartition>),
}

/// Consumer context: records rebalance events for the loop, keeps the group metadata of the
/// current assignment's generation, and turns librdkafka statistics into lag gauges.
pub struct LoopContext {
    events: Mutex<Vec<RebalanceEvent>>,
    /// Per (topic, partition): the end a reader can reach (the last stable offset, which is
    /// the high watermark unless a transaction is open), from librdkafka's latest statistics.
    ends: Mutex<FxHashMap<String, FxHashMap<i32, i64>>>,
    /// Group metadata (member id, generation) taken when the current assignment arrived.
    assignment_metadata: Mutex<Option<Arc<ConsumerGroupMetadata>>>,
    /// Partitions of offset commits the coordinator refused or that failed, since the loop
    /// last asked ([`LoopContext::take_failed_commits`]).
    failed_commits: Mutex<Vec<TopicPartition>>,
    metrics: Metrics,
}

impl LoopContext {
    /// A context reporting to `metrics`.
    pub fn new(metrics: Metrics) -> Self {
        Self {
            events: Mutex::new(Vec::new()),
            ends: Mutex::new(FxHashMap::default()),
            assignment_metadata: Mutex::new(None),
            failed_commits: Mutex::new(Vec::new()),
            metrics,
        }
    }

    /// The group metadata (member id, generation) taken in the latest assign callback.
    ///
    /// The loop adopts it for its exactly-once commits only when it handles that assignment
    /// (see `LoopState::txn_metadata`), never from the consumer's current metadata.
    pub fn assignment_metadata(&self) -> Option<Arc<ConsumerGroupMetadata>> {
        self.assignment_metadata.lock().ok().and_then(|m| m.clone())
    }

    /// The end offset of `topic`/`partition` in the latest statistics (at most
    /// `statistics.interval.ms` old, so never past the true end).
    pub fn end_offset(&self, topic: &str, partition: i32) -> Option<i64> {
        self.ends.lock().ok()?.get(topic)?.get(&partition).copied()
    }

    /// Partitions whose offset commit failed since the last call (the loop commits them
    /// again: an asynchronous commit's failure reaches it only here).
    pub fn take_failed_commits(&self) -> Vec<TopicPartition> {
        self.failed_commits
            .lock()
            .map(|mut f| std::mem::take(&mut *f))
            .unwrap_or_default()
    }

    /// Rebalance events since the last call, oldest first.
    pub fn take_events(&self) -> Vec<RebalanceEvent> {
        self.events
            .lock()
            .map(|mut e| std::mem::take(&mut *e))
            .unwrap_or_default()
    }
}

/// (partition, offset) pairs of a list, for logs.
pub(crate) fn tpl_offsets(tpl: &TopicPartitionList) -> Vec<(i32, i64)> {
    tpl.elements()
        .iter()
        .map(|e| (e.partition(), e.offset().to_raw().unwrap_or(-1)))
        .collect()
}

/// The (topic, partition) → offset entries of a list, skipping entries without an absolute
/// offset (`Invalid`, `End`, …).
pub(crate) fn tpl_entries(tpl: &TopicPartitionList) -> Vec<(TopicPartition, i64)> {
    tpl.elements()
        .iter()
        .filter_map(|e| match e.offset() {
            rdkafka::Offset::Offset(o) => Some(((e.topic().to_owned(), e.partition()), o)),
            _ => None,
        })
        .collect()
}

pub(crate) fn tpl_pairs(tpl: &TopicPartitionList) -> Vec<TopicPartition> {
    tpl.elements()
        .iter()
        .map(|e| (e.topic().to_owned(), e.partition()))
        .collect()
}

impl ClientContext for LoopContext {
    fn stats(&self, statistics: Statistics) {
        // One walk: each assigned partition's end (for the unread-input check) and its lag.
        let mut ends = self
            .ends
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for (topic, t) in &statistics.topics {
            let of_topic = ends.entry(topic.clone()).or_default();
            let mut lag = 0;
            for p in t.partitions.values().filter(|p| p.partition >= 0) {
                let end = if p.ls_offset >= 0 {
                    p.ls_offset
                } else {
                    p.hi_offset
                };
                if end >= 0 {
                    of_topic.insert(p.partition, end);
                }
                if p.consumer_lag >= 0 {
                    lag += p.consumer_lag;
                }
            }
            self.metrics
                .lag
                .get_or_create(&TopicLabel {
                    topic: topic.clone(),
                })
                .set(lag);
        }
    }
}

impl ConsumerContext for LoopContext {
    fn commit_callback(
        &self,
        result: rdkafka::error::KafkaResult<()>,
        offsets: &TopicPartitionList,
    ) {
        if let Err(e) = result {
            tracing::debug!(error = %e, "offset commit failed; committed again on the next flush tick");
            if let Ok(mut f) = self.failed_commits.lock() {
                f.extend(tpl_pairs(offsets));
            }
        }
    }

    fn post_rebalance(&self, c: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let ev = match rebalance {
            Rebalance::Assign(tpl) => {
                if let Ok(mut m) = self.assignment_metadata.lock() {
                    *m = c.group_metadata().map(Arc::new);
                }
                RebalanceEvent::Assigned(tpl_pairs(tpl))
            }
            Rebalance::Revoke(tpl) => RebalanceEvent::Revoked(tpl_pairs(tpl)),
            Rebalance::Error(e) => {
                tracing::warn!(error = %e, "rebalance error");
                return;
            }
        };
        match &ev {
            RebalanceEvent::Assigned(p) if p.is_empty() => tracing::warn!(
                "rebalance assigned no partitions to this member (more members than partitions, \
                 or a broker that did not rebalance after a member left)"
            ),
            _ => tracing::info!(?ev, "rebalance"),
        }
        if let Ok(mut events) = self.events.lock() {
            events.push(ev);
        }
    }
}

/// The consumer type of the loop.
pub type LoopConsumer = StreamConsumer<LoopContext>;
