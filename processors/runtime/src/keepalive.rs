//! Keeping the group membership while a hook blocks: the state rebuild on assignment.
//!
//! librdkafka makes a member leave its group when the application has not polled the
//! consumer for `max.poll.interval.ms` (300 s by default); the heartbeats of its own thread
//! do not count. A state rebuild runs inside the loop's handling of an assignment and reads
//! with a separate, group-less consumer, so a rebuild longer than that got the member evicted,
//! its partitions reassigned to it, and the same rebuild started again, for ever. While a
//! rebuild runs, [`KeepAlive`] polls the loop's consumer with its partitions paused:
//!
//! ```text
//!   KeepAlive::pause(consumer, partitions)   pause them (librdkafka drops what it prefetched)
//!     poll()  from the rebuild, at most every POLL_EVERY:
//!               a poll without waiting ─► the group sees the application alive
//!               rebalance served ─► recorded by LoopContext; the driver handles it after
//!               a record returned ─► not processed: its partition is paused too, and the
//!                                    lowest offset dropped is remembered (rewinds)
//!   KeepAlive::resume()  resumes exactly the partitions it paused ─► rewinds
//! ```
//!
//! The loop commits the consumer's *position* (see `task`), and librdkafka moves the position
//! past every record it returns, so a dropped record must be fetched again: the caller seeks
//! its partition back to the committed offset (the floor) or, without one, to the rewind.
//! The pause set is this type's own: partitions someone else paused stay as they are unless
//! listed here, and only what was paused here is resumed.

use crate::consumer::{LoopConsumer, TopicPartition};
use futures::FutureExt as _;
use rdkafka::Message as _;
use rdkafka::TopicPartitionList;
use rdkafka::consumer::Consumer;
use rustc_hash::FxHashMap;
use std::cell::RefCell;
use std::time::{Duration, Instant};

/// How often a blocking hook polls the group, at most: a tenth of the smallest
/// `max.poll.interval.ms` a broker lets a member have (its session timeout, at least
/// `group.min.session.timeout.ms`, 6 s by default, may not exceed it), and a poll that finds
/// nothing costs microseconds.
pub const POLL_EVERY: Duration = Duration::from_millis(500);

/// The partitions this keep-alive paused, and the lowest offset of each record it dropped.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Paused {
    paused: Vec<TopicPartition>,
    rewinds: FxHashMap<TopicPartition, i64>,
}

impl Paused {
    /// Records `tp` as paused here; false when it already was.
    pub fn add(&mut self, tp: &TopicPartition) -> bool {
        if self.paused.contains(tp) {
            return false;
        }
        self.paused.push(tp.clone());
        true
    }

    /// A record of `tp` at `offset` was returned and not processed.
    pub fn dropped(&mut self, tp: &TopicPartition, offset: i64) {
        let r = self.rewinds.entry(tp.clone()).or_insert(offset);
        *r = (*r).min(offset);
    }

    /// The partitions paused here, in the order they were paused.
    pub fn partitions(&self) -> &[TopicPartition] {
        &self.paused
    }

    /// Per partition, the lowest offset dropped.
    pub fn rewinds(&self) -> &FxHashMap<TopicPartition, i64> {
        &self.rewinds
    }
}

/// Polls `consumer` while a blocking hook runs, with the hook's partitions paused (see the
/// module docs). Interior mutability: [`KeepAlive::poll`] takes `&self`, so it can be called
/// from the rebuild's `Fn` callbacks.
pub struct KeepAlive<'c> {
    consumer: &'c LoopConsumer,
    state: RefCell<(Paused, Instant, u64)>,
}

fn tpl_of(parts: &[TopicPartition]) -> TopicPartitionList {
    let mut tpl = TopicPartitionList::new();
    for (t, p) in parts {
        tpl.add_partition(t, *p);
    }
    tpl
}

impl<'c> KeepAlive<'c> {
    /// Pauses `parts` on `consumer` (those librdkafka refuses, being no longer assigned, are
    /// logged and left out) and starts the poll clock.
    pub fn pause(consumer: &'c LoopConsumer, parts: &[TopicPartition]) -> Self {
        let mut paused = Paused::default();
        for tp in parts {
            match consumer.pause(&tpl_of(std::slice::from_ref(tp))) {
                Ok(()) => {
                    paused.add(tp);
                }
                Err(e) => tracing::debug!(error = %e, ?tp, "not paused for the rebuild"),
            }
        }
        Self {
            consumer,
            state: RefCell::new((paused, Instant::now(), 0)),
        }
    }

    /// Polls the consumer once without waiting when [`POLL_EVERY`] has passed since the last
    /// poll: the group sees the application alive. A rebalance it serves is recorded by the
    /// consumer context for the driver; a record it returns is not processed (see the module
    /// docs). Cheap when not due: call it as often as convenient.
    pub fn poll(&self) {
        let Ok(mut st) = self.state.try_borrow_mut() else {
            return;
        };
        let (paused, last, polls) = &mut *st;
        if last.elapsed() < POLL_EVERY {
            return;
        }
        *last = Instant::now();
        *polls += 1;
        match self.consumer.recv().now_or_never() {
            Some(Ok(m)) => {
                let tp = (m.topic().to_owned(), m.partition());
                paused.dropped(&tp, m.offset());
                tracing::debug!(
                    ?tp,
                    offset = m.offset(),
                    "record returned while rebuilding: fetched again after it"
                );
                drop(m);
                if paused.add(&tp)
                    && let Err(e) = self.consumer.pause(&tpl_of(std::slice::from_ref(&tp)))
                {
                    tracing::debug!(error = %e, ?tp, "not paused for the rebuild");
                }
            }
            Some(Err(e)) => tracing::warn!(error = %e, "consume error while rebuilding"),
            None => {}
        }
    }

    /// Polls made so far.
    pub fn polls(&self) -> u64 {
        self.state.borrow().2
    }

    /// Resumes exactly the partitions paused here (one no longer assigned is skipped) and
    /// returns what was paused and dropped.
    pub fn resume(self) -> Paused {
        let (paused, _, _) = self.state.into_inner();
        let assigned = self.consumer.assignment().unwrap_or_default();
        let still: Vec<TopicPartition> = paused
            .partitions()
            .iter()
            .filter(|(t, p)| {
                assigned
                    .elements()
                    .iter()
                    .any(|e| e.topic() == t && e.partition() == *p)
            })
            .cloned()
            .collect();
        if !still.is_empty()
            && let Err(e) = self.consumer.resume(&tpl_of(&still))
        {
            tracing::warn!(error = %e, partitions = ?still, "resuming after the rebuild failed");
        }
        paused
    }
}

#[cfg(test)]
mod tests {
    use super::Paused;

    #[test]
    fn paused_keeps_each_partition_once_and_the_lowest_dropped_offset() {
        let a = ("SZ".to_owned(), 0);
        let b = ("SZ".to_owned(), 1);
        let mut p = Paused::default();
        assert!(p.add(&a));
        assert!(!p.add(&a));
        p.dropped(&b, 12);
        assert!(p.add(&b));
        p.dropped(&b, 10);
        p.dropped(&b, 11);
        assert_eq!(p.partitions(), &[a.clone(), b.clone()]);
        assert_eq!(p.rewinds().get(&b), Some(&10));
        assert_eq!(p.rewinds().get(&a), None);
    }
}
