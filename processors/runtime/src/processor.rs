//! The transport-free [`Processor`] trait the consume loop drives, and the loop's tuning
//! ([`LoopConfig`]).

use crate::consumer::TopicPartition;
use crate::error::PipelineError;
use crate::metrics::Metrics;
use crate::output::Output;
use crate::record::ConsumedRecord;
use std::time::Duration;

/// What the loop needs from a processor.
pub trait Processor {
    /// Topics to subscribe to.
    fn topics(&self) -> Vec<String>;
    /// Partitions were assigned; `committed` holds each one's committed offset (`None` when
    /// the group has no commit). Rebuild state before their records are processed.
    ///
    /// `keep_alive` keeps the member in its consumer group while this blocks: call it often
    /// (every turn of the rebuild's read loop; it polls the group at most every
    /// [`crate::keepalive::POLL_EVERY`], with the partitions paused). A rebuild that never
    /// calls it is evicted after `max.poll.interval.ms` and starts again on the next
    /// assignment.
    ///
    /// # Errors
    /// When state cannot be rebuilt.
    fn on_assigned(
        &mut self,
        committed: &[(TopicPartition, Option<i64>)],
        keep_alive: &dyn Fn(),
    ) -> Result<(), PipelineError>;
    /// Partitions were revoked: drop their state.
    fn on_revoked(&mut self, partitions: &[TopicPartition]);
    /// Processes one record, enqueueing outputs on `emit`. The record is transport-free, so a
    /// processor can be driven without a broker (see the apps' unit tests).
    fn process(
        &mut self,
        msg: &ConsumedRecord<'_>,
        emit: &mut Vec<Output>,
    ) -> Result<(), PipelineError>;
    /// Refreshes state gauges.
    fn report(&self, metrics: &Metrics);
    /// The highest offset of `topic`/`partition` that may be committed (the first record whose
    /// outputs are not produced yet), or `None` for "everything processed". Processors that
    /// hold records back (the join waits for its watermark) pin their offsets here.
    fn commit_limit(&self, _topic: &str, _partition: i32) -> Option<i64> {
        None
    }
    /// Called on every flush tick, before [`Processor::on_tick`]: for each assigned partition,
    /// whether the consumer has records of it left to read (its position is below the end in
    /// librdkafka's latest statistics). The join does not count such an input as idle.
    fn set_unread(&mut self, _topic: &str, _partition: i32, _unread: bool) {}
    /// What the emitter checks this processor's outputs against, and its dead-letter topic
    /// (see [`crate::emitter::OutputGuard`]); `None` (default): outputs are sent unchecked.
    fn output_guard(&self) -> Option<crate::emitter::OutputGuard> {
        None
    }
    /// The loop resumes from the last commit in process (see [`crate::runner::run`]): drop
    /// every partition's state (the next assignment rebuilds it) and check outputs against
    /// `guard`, read anew, from now on.
    fn resume_with(&mut self, _guard: Option<crate::emitter::OutputGuard>) {}
    /// The assigned partitions the loop must not fetch from for now, when that changed since
    /// the last call (the join's watermark alignment pauses inputs that run ahead while it
    /// holds more than its budget); `None`: unchanged. Asked after every turn and flush tick:
    /// the loop pauses what is listed and resumes what no longer is. Default: never any.
    fn pause_changes(&mut self) -> Option<Vec<TopicPartition>> {
        None
    }
    /// Whether [`Processor::process`] reads the records' headers. False by default: the
    /// window-processor and join-predict read key, value and timestamp only, and the loop
    /// then leaves headers unparsed (see [`ConsumedRecord::from_kafka_without_headers`]).
    fn reads_headers(&self) -> bool {
        false
    }
    /// Called on every flush tick (at least every commit interval), before the flush: outputs
    /// released by the passage of wall-clock time (the join's idle timeout).
    ///
    /// # Errors
    /// A processor-specific fatal error.
    fn on_tick(&mut self, _emit: &mut Vec<Output>) -> Result<(), PipelineError> {
        Ok(())
    }
}

/// Loop tuning.
#[derive(Debug, Clone, Copy)]
pub struct LoopConfig {
    /// Flush deliveries and commit at least this often.
    pub commit_interval: Duration,
    /// Flush and commit once this many outputs are pending.
    pub max_in_flight: usize,
    /// Exactly-once: outputs and consumed offsets are committed atomically in one Kafka
    /// transaction per flush (the producer must have a `transactional.id`).
    pub exactly_once: bool,
}

impl Default for LoopConfig {
    fn default() -> Self {
        Self {
            commit_interval: Duration::from_millis(200),
            max_in_flight: 20_000,
            exactly_once: false,
        }
    }
}
