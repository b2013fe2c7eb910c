//! The processors' consume → process → produce → commit hooks on the shared consume-loop
//! driver ([`crate::driver`], which also drives the GCS sink).
//!
//! ```text
//!   Driver (select! { shutdown | commit tick | recv }, rebalance events, floors, liveness)
//!      on_revoked  ─► flush + commit their progress ─► Processor::on_revoked
//!      on_assigned ─► committed offsets ─► Processor::on_assigned (rebuild) ─► seek ─► floors
//!      on_message  ─► Processor::process(ConsumedRecord, outputs: held for the turn)
//!                  ─► OffsetTracker.mark(record)
//!      after_turn  ─► Emitter (the turn's outputs enqueued together, not awaited)
//!      on_tick / on_shutdown ─► flush
//!   flush: enqueue held outputs ─► await every delivery (retry failures with exponential backoff + jitter, bounded)
//!          ─► commit the marked offsets (sync, or in the transaction with --exactly-once)
//!          ─► only then are they considered done
//! ```
//!
//! A crash between produce and commit re-processes records since the last commit; outputs
//! are deterministic functions of the input and of state rebuilt from the topic, so repeats
//! are exact. Revoked partitions' records still in flight are dropped (not committed) and
//! re-processed by the new owner.

use crate::driver::{Assignment, Driver, Hooks, SubscribeError};
use crate::metrics::{Metrics, TopicLabel};
use crate::record::ConsumedRecord;
use backon::{BackoffBuilder, ExponentialBuilder};
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, ConsumerGroupMetadata, Rebalance,
    StreamConsumer,
};
use rdkafka::error::KafkaError;
use rdkafka::error::KafkaResult;
use rdkafka::message::OwnedHeaders;
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::statistics::Statistics;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{ClientConfig, ClientContext, Message as _, Offset, TopicPartitionList};
use rustc_hash::{FxHashMap, FxHashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// A record to produce.
#[derive(Debug, Clone)]
pub struct Output {
    /// Destination topic (shared: the processors keep one `Arc` per output topic, so an
    /// output costs no allocation for its topic name).
    pub topic: Arc<str>,
    /// Key (the client id for every SensorFlow topic; shared by the three features of one
    /// reading).
    pub key: Option<Arc<[u8]>>,
    /// Framed value.
    pub value: Vec<u8>,
    /// Kafka timestamp, ms (SensorFlow sets it to the event time).
    pub timestamp_ms: Option<i64>,
    /// Headers (dead letters).
    pub headers: Option<OwnedHeaders>,
}

/// A failure the loop cannot recover from by itself; the process exits non-zero without
/// committing, and a restart resumes from the last commit.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    /// Producing failed after every retry.
    #[error("producing to {topic} failed after {attempts} attempts: {source}")]
    Produce {
        /// Destination topic.
        topic: String,
        /// Attempts made.
        attempts: usize,
        /// Last error.
        source: KafkaError,
    },
    /// Committing offsets failed for a reason other than a rebalance.
    #[error("committing offsets failed: {0}")]
    Commit(KafkaError),
    /// Moving the fetch position of newly assigned partitions to their rebuilt offsets failed
    /// after every retry.
    #[error("seeking assigned partitions to their committed offsets failed: {0}")]
    Seek(KafkaError),
    /// Subscribing failed.
    #[error("subscribing to {topics:?} failed: {source}")]
    Subscribe {
        /// Topics.
        topics: Vec<String>,
        /// Cause.
        source: KafkaError,
    },
    /// A Kafka transaction failed (exactly-once mode); it was aborted.
    #[error("transaction failed and was aborted: {0}")]
    Transaction(KafkaError),
    /// Rebuilding state failed.
    #[error(transparent)]
    Rebuild(#[from] crate::rebuild::RebuildError),
    /// A processor-specific fatal error.
    #[error("{0}")]
    Processor(String),
}

impl From<SubscribeError> for PipelineError {
    fn from(e: SubscribeError) -> Self {
        PipelineError::Subscribe {
            topics: e.topics,
            source: e.source,
        }
    }
}

/// How produce failures are retried.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// First delay.
    pub min_delay: Duration,
    /// Largest delay.
    pub max_delay: Duration,
    /// Attempts after the first.
    pub max_retries: usize,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            min_delay: Duration::from_millis(200),
            max_delay: Duration::from_secs(10),
            max_retries: 6,
        }
    }
}

impl RetryPolicy {
    fn builder(&self) -> ExponentialBuilder {
        ExponentialBuilder::default()
            .with_min_delay(self.min_delay)
            .with_max_delay(self.max_delay)
            .with_max_times(self.max_retries)
            .with_jitter()
    }
}

/// What a produce error means for the record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProduceErrorClass {
    /// A broker outage, leader change, timeout…: retry with backoff.
    Transient,
    /// The record is larger than the producer's `message.max.bytes` or the topic's
    /// `max.message.bytes`: retrying cannot help; the record is sent again with its value cut
    /// to [`TRUNCATED_VALUE_BYTES`] and its original size in a header.
    TooLarge,
    /// Anything else the broker refuses for good (authorization, an invalid record): retrying
    /// cannot help; the loop stops with a clear error rather than retry for ever.
    Permanent,
}

/// Classifies a produce error (librdkafka's codes; `KafkaError::MessageProduction` both for
/// refusals at enqueue time and in delivery reports).
pub fn classify_produce_error(e: &KafkaError) -> ProduceErrorClass {
    use RDKafkaErrorCode as C;
    match e.rdkafka_error_code() {
        Some(C::MessageSizeTooLarge | C::InvalidMessageSize | C::MessageBatchTooLarge) => {
            ProduceErrorClass::TooLarge
        }
        Some(
            C::TopicAuthorizationFailed
            | C::ClusterAuthorizationFailed
            | C::TransactionalIdAuthorizationFailed
            | C::SaslAuthenticationFailed
            | C::InvalidRecord
            | C::InvalidTopic
            | C::UnknownTopic
            | C::InvalidRequiredAcks
            | C::UnsupportedForMessageFormat
            | C::PolicyViolation,
        ) => ProduceErrorClass::Permanent,
        _ => ProduceErrorClass::Transient,
    }
}

/// Bytes of a too-large record's value that are kept (64 KiB): enough to diagnose it,
/// far below every broker's default `message.max.bytes` (1 MB).
pub const TRUNCATED_VALUE_BYTES: usize = 64 * 1024;
/// Header with the original value size in bytes of a truncated record.
pub const ORIGINAL_SIZE_HEADER: &str = "sensorflow.original.size";

/// `out` with its value cut to [`TRUNCATED_VALUE_BYTES`] and `sensorflow.original.size`
/// (bytes) and `sensorflow.truncated: true` headers added.
pub fn truncated(out: &Output) -> Output {
    let size = out.value.len().to_string();
    let mut h = out.headers.clone().unwrap_or_default();
    for (k, v) in [
        (ORIGINAL_SIZE_HEADER, size.as_str()),
        ("sensorflow.truncated", "true"),
    ] {
        h = h.insert(rdkafka::message::Header {
            key: k,
            value: Some(v.as_bytes()),
        });
    }
    Output {
        topic: out.topic.clone(),
        key: out.key.clone(),
        value: out.value[..out.value.len().min(TRUNCATED_VALUE_BYTES)].to_vec(),
        timestamp_ms: out.timestamp_ms,
        headers: Some(h),
    }
}

/// The producer of every consume loop: librdkafka's producer with its own polling thread,
/// whose delivery reports are counted by [`Deliveries`] (no future or allocation per record).
pub type LoopProducer = ThreadedProducer<Deliveries>;

/// Creates a [`LoopProducer`] from `cfg` (e.g. [`crate::kafka::KafkaArgs::producer_config`]).
///
/// # Errors
/// librdkafka refuses the configuration.
pub fn loop_producer(cfg: &ClientConfig) -> KafkaResult<LoopProducer> {
    cfg.create_with_context(Deliveries::default())
}

/// Delivery opaque of records enqueued by [`Emitter::send`]: their reports are counted in
/// bulk. Any other value names a retried record whose own report [`Emitter`] awaits.
const BULK: usize = 0;

/// The producer context of [`LoopProducer`]: counts delivery reports per topic and keeps the
/// failed records for [`Emitter::await_deliveries`] to retry.
///
/// Delivery reports arrive on the producer's polling thread; the loop reads the counts when it
/// flushes. Per record this costs one atomic decrement and one uncontended lock, where a
/// `FutureProducer` allocated a boxed oneshot channel per record and the loop awaited each
/// (the window-processor's profile: allocator ~25 %, delivery futures ~13 % of samples).
#[derive(Default)]
pub struct Deliveries {
    /// Records enqueued in bulk and not yet reported.
    in_flight: AtomicUsize,
    reports: Mutex<Reports>,
    /// Woken when `in_flight` reaches 0 and when a retried record's report arrives.
    done: Notify,
}

#[derive(Default)]
struct Reports {
    /// Acknowledged records per topic since the last flush.
    delivered: FxHashMap<String, u64>,
    /// Bulk records librdkafka gave up on (after its own retries), rebuilt from the report.
    failed: Vec<(Output, KafkaError)>,
    /// Reports of retried records, by their opaque.
    retried: FxHashMap<usize, Result<(), KafkaError>>,
}

impl Deliveries {
    fn lock(&self) -> std::sync::MutexGuard<'_, Reports> {
        self.reports
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Waits until `ready` holds, re-checking it after every wake-up.
    async fn wait_until(&self, mut ready: impl FnMut(&Self) -> bool) {
        loop {
            let woken = self.done.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            if ready(self) {
                return;
            }
            woken.await;
        }
    }
}

impl ClientContext for Deliveries {}

impl ProducerContext for Deliveries {
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, opaque: usize) {
        if opaque != BULK {
            self.lock().retried.insert(
                opaque,
                result.as_ref().map(|_| ()).map_err(|(e, _)| e.clone()),
            );
            self.done.notify_waiters();
            return;
        }
        {
            let mut r = self.lock();
            match result {
                Ok(m) => match r.delivered.get_mut(m.topic()) {
                    Some(n) => *n += 1,
                    None => {
                        r.delivered.insert(m.topic().to_owned(), 1);
                    }
                },
                Err((e, m)) => {
                    let out = Output {
                        topic: m.topic().into(),
                        key: m.key().map(Arc::from),
                        value: m.payload().map(<[u8]>::to_vec).unwrap_or_default(),
                        timestamp_ms: m.timestamp().to_millis(),
                        headers: m.headers().map(rdkafka::message::BorrowedHeaders::detach),
                    };
                    r.failed.push((out, e.clone()));
                }
            }
        }
        if self.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.done.notify_waiters();
        }
    }
}

/// Enqueues outputs on the producer and awaits their acknowledgements on flush.
pub struct Emitter {
    producer: LoopProducer,
    metrics: Metrics,
    retry: RetryPolicy,
    transactional: bool,
    /// Opaque of the next retried record (never [`BULK`]).
    next_retry: usize,
}

fn record(o: &Output, opaque: usize) -> BaseRecord<'_, [u8], [u8], usize> {
    let mut r = BaseRecord::with_opaque_to(&o.topic, opaque).payload(&o.value[..]);
    if let Some(k) = &o.key {
        r = r.key(&k[..]);
    }
    if let Some(ts) = o.timestamp_ms {
        r = r.timestamp(ts);
    }
    if let Some(h) = &o.headers {
        r = r.headers(h.clone());
    }
    r
}

impl Emitter {
    /// An emitter over `producer`.
    pub fn new(producer: LoopProducer, metrics: Metrics, retry: RetryPolicy) -> Self {
        Self {
            producer,
            metrics,
            retry,
            transactional: false,
            next_retry: BULK + 1,
        }
    }

    /// In a transaction a failed delivery aborts the transaction instead of being retried
    /// on its own.
    pub fn set_transactional(&mut self, on: bool) {
        self.transactional = on;
    }

    /// Deliveries not yet reported.
    pub fn pending(&self) -> usize {
        self.producer.context().in_flight.load(Ordering::Acquire)
    }

    /// Enqueues `out` for bulk reporting; on failure hands the error back.
    fn enqueue(&self, out: &Output) -> Result<(), KafkaError> {
        let d = self.producer.context();
        // Counted before the send: the report can arrive before `send` returns.
        d.in_flight.fetch_add(1, Ordering::AcqRel);
        match self.producer.send(record(out, BULK)) {
            Ok(()) => Ok(()),
            Err((e, _)) => {
                d.in_flight.fetch_sub(1, Ordering::AcqRel);
                Err(e)
            }
        }
    }

    /// Enqueues one record. When librdkafka's queue is full, waits for deliveries first.
    ///
    /// # Errors
    /// [`PipelineError::Produce`] when enqueueing fails for another reason (e.g. an unknown
    /// topic) after retries.
    pub async fn send(&mut self, out: Output) -> Result<(), PipelineError> {
        loop {
            match self.enqueue(&out) {
                Ok(()) => return Ok(()),
                Err(KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull)) => {
                    self.await_deliveries().await?;
                }
                Err(e) => {
                    tracing::warn!(topic = %out.topic, error = %e, "enqueue failed; retrying with backoff");
                    return self.send_with_retry(out, e).await;
                }
            }
        }
    }

    /// Sends one retried record and waits for its own delivery report.
    async fn send_one(&mut self, out: &Output) -> Result<(), KafkaError> {
        let id = self.next_retry;
        self.next_retry = self.next_retry.checked_add(1).unwrap_or(BULK + 1);
        self.producer.send(record(out, id)).map_err(|(e, _)| e)?;
        let d = self.producer.context();
        d.wait_until(|d| d.lock().retried.contains_key(&id)).await;
        d.lock()
            .retried
            .remove(&id)
            .unwrap_or(Err(KafkaError::Canceled))
    }

    async fn send_with_retry(
        &mut self,
        out: Output,
        first: KafkaError,
    ) -> Result<(), PipelineError> {
        let out = match classify_produce_error(&first) {
            ProduceErrorClass::TooLarge if out.value.len() > TRUNCATED_VALUE_BYTES => {
                tracing::warn!(
                    topic = %out.topic, bytes = out.value.len(), error = %first,
                    "record too large for the broker; sending it with its value truncated"
                );
                self.metrics.records_truncated.inc();
                truncated(&out)
            }
            ProduceErrorClass::Transient => out,
            _ => {
                tracing::error!(topic = %out.topic, error = %first, "the broker refuses this record for good");
                return Err(PipelineError::Produce {
                    topic: out.topic.to_string(),
                    attempts: 1,
                    source: first,
                });
            }
        };
        if self.transactional {
            // Inside a transaction a failed delivery poisons it; a truncated record can still
            // be enqueued in the same transaction when librdkafka refused it at enqueue time.
            return match self.enqueue(&out) {
                Ok(()) => Ok(()),
                Err(_) => Err(PipelineError::Transaction(first)),
            };
        }
        // The first re-send goes at once (a truncated record, or a delivery librdkafka's
        // own retries gave up on); then transient failures back off, up to the policy's count.
        let mut backoff = self.retry.builder().build();
        let mut attempts = 1;
        let last = loop {
            attempts += 1;
            self.metrics.produce_retries.inc();
            // A bounded retry is the loop at work, not a hang (see `Liveness`).
            self.metrics.beat();
            let e = match self.send_one(&out).await {
                Ok(()) => {
                    self.metrics.record_out(&out.topic, 1);
                    return Ok(());
                }
                Err(e) => e,
            };
            if classify_produce_error(&e) != ProduceErrorClass::Transient {
                break e;
            }
            let Some(wait) = backoff.next() else { break e };
            tracing::warn!(topic = %out.topic, error = %e, retry_in = ?wait, "delivery failed; retrying");
            tokio::time::sleep(wait).await;
        };
        tracing::error!(topic = %out.topic, first_error = %first, error = %last, attempts, "giving up");
        Err(PipelineError::Produce {
            topic: out.topic.to_string(),
            attempts,
            source: last,
        })
    }

    /// Awaits every pending delivery, retrying failures with backoff.
    ///
    /// # Errors
    /// [`PipelineError::Produce`] when a record could not be delivered after retries.
    pub async fn await_deliveries(&mut self) -> Result<(), PipelineError> {
        let d = self.producer.context();
        d.wait_until(|d| d.in_flight.load(Ordering::Acquire) == 0)
            .await;
        let (delivered, failed) = {
            let mut r = d.lock();
            (
                std::mem::take(&mut r.delivered),
                std::mem::take(&mut r.failed),
            )
        };
        for (topic, n) in delivered {
            self.metrics.record_out(&topic, n);
        }
        for (out, e) in failed {
            self.send_with_retry(out, e).await?;
        }
        Ok(())
    }
}

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
    metrics: Metrics,
}

impl LoopContext {
    /// A context reporting to `metrics`.
    pub fn new(metrics: Metrics) -> Self {
        Self {
            events: Mutex::new(Vec::new()),
            ends: Mutex::new(FxHashMap::default()),
            assignment_metadata: Mutex::new(None),
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

    /// Rebalance events since the last call, oldest first.
    pub fn take_events(&self) -> Vec<RebalanceEvent> {
        self.events
            .lock()
            .map(|mut e| std::mem::take(&mut *e))
            .unwrap_or_default()
    }
}

/// (partition, offset) pairs of a list, for logs.
fn tpl_offsets(tpl: &TopicPartitionList) -> Vec<(i32, i64)> {
    tpl.elements()
        .iter()
        .map(|e| (e.partition(), e.offset().to_raw().unwrap_or(-1)))
        .collect()
}

fn tpl_pairs(tpl: &TopicPartitionList) -> Vec<TopicPartition> {
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

/// What the loop needs from a processor.
pub trait Processor {
    /// Topics to subscribe to.
    fn topics(&self) -> Vec<String>;
    /// Partitions were assigned; `committed` holds each one's committed offset (`None` when
    /// the group has no commit). Rebuild state before their records are processed.
    ///
    /// # Errors
    /// When state cannot be rebuilt.
    fn on_assigned(
        &mut self,
        committed: &[(TopicPartition, Option<i64>)],
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

const TXN_TIMEOUT: Duration = Duration::from_secs(30);

/// Per-topic maps keyed by `&str` lookups, so the hot path does not allocate. `next` is the
/// offset after the last processed record; `committed` what was last committed, so a partition
/// whose commit limit moves (the join released records) is committed again without new input.
#[derive(Default)]
struct OffsetTracker {
    next: FxHashMap<String, FxHashMap<i32, i64>>,
    committed: FxHashMap<(String, i32), i64>,
}

impl OffsetTracker {
    fn mark(&mut self, topic: &str, partition: i32, offset: i64) {
        let parts = match self.next.get_mut(topic) {
            Some(p) => p,
            None => self.next.entry(topic.to_owned()).or_default(),
        };
        let n = parts.entry(partition).or_insert(offset + 1);
        *n = (*n).max(offset + 1);
    }

    /// Offsets to commit: per assigned partition, the next offset clamped by `limit`, when it
    /// moved since the last commit.
    ///
    /// `positions` are the consumer's positions. A `read_committed` consumer moves its
    /// position past transaction markers, which are never delivered: after the last record of
    /// a transaction, "last processed offset + 1" points at the marker, and a group that
    /// committed it would show a lag of 1 per partition for ever (seen with inputs written by
    /// an exactly-once producer). A record is processed before the next is received, so a
    /// position past the tracked offset is as safe to commit, except for the record in hand
    /// while rebalance events are handled ([`Assignment::in_hand`]): the position is capped
    /// at its offset.
    fn take(
        &mut self,
        assigned: &Assignment,
        positions: &[(String, i32, i64)],
        limit: impl Fn(&str, i32) -> Option<i64>,
    ) -> TopicPartitionList {
        for (t, p, pos) in positions {
            let pos = match assigned.in_hand() {
                Some((ht, hp, ho)) if ht == t && hp == *p => ho.min(*pos),
                _ => *pos,
            };
            // Only past what was processed here: a position alone (no record since the last
            // commit) moves the commit when it passed a marker after that commit.
            let known = self
                .next
                .get(t.as_str())
                .and_then(|m| m.get(p))
                .copied()
                .or_else(|| self.committed.get(&(t.clone(), *p)).copied());
            if let Some(k) = known
                && pos > k
            {
                self.next.entry(t.clone()).or_default().insert(*p, pos);
            }
        }
        let mut tpl = TopicPartitionList::new();
        for (t, parts) in &self.next {
            for (&p, &o) in parts {
                if !assigned.contains(t, p) {
                    continue;
                }
                let o = limit(t, p).map_or(o, |l| l.min(o));
                let key = (t.clone(), p);
                if self.committed.get(&key).is_some_and(|&c| c >= o) {
                    continue;
                }
                let _ = tpl.add_partition_offset(t, p, Offset::Offset(o));
                self.committed.insert(key, o);
            }
        }
        tpl
    }

    /// Forgets a partition (revoked, or assigned afresh).
    fn forget(&mut self, (t, p): &TopicPartition) {
        if let Some(parts) = self.next.get_mut(t.as_str()) {
            parts.remove(p);
        }
        self.committed.remove(&(t.clone(), *p));
    }
}

/// The most outputs a turn holds before enqueueing them (see `LoopState::send_outputs`):
/// a bound on the memory a burst of released predictions can hold back.
const TURN_OUTPUTS: usize = 4096;

/// The processors' hooks on the shared consume-loop driver ([`crate::driver`]).
struct LoopState<'a, P: Processor> {
    consumer: &'a LoopConsumer,
    processor: &'a mut P,
    emitter: Emitter,
    offsets: OffsetTracker,
    metrics: Metrics,
    /// Outputs of the turn's records (or the tick), enqueued on the emitter at the end of the
    /// turn, before any flush, or once [`TURN_OUTPUTS`] are held (see `send_outputs`).
    outputs: Vec<Output>,
    max_in_flight: usize,
    exactly_once: bool,
    /// Group metadata of the generation whose assignment the loop is processing: adopted when
    /// the loop handles an `Assigned` event, kept across a revocation.
    ///
    /// Exactly-once commits pass it to `send_offsets_to_transaction` instead of the consumer's
    /// current metadata. Both rebalance callbacks run inside `recv`, and after an eager
    /// revocation librdkafka rejoins as soon as the callback returns: the revoke and the next
    /// assign can both have happened before the loop handles the revocation. Committing the
    /// revoked partitions' transaction under the consumer's current (next) generation was
    /// accepted by the coordinator after the new owner had read the older committed offsets,
    /// and both produced those records (18 and 39 duplicated features in the exactly-once
    /// test). Under the old generation the commit either lands before the group moves on (the
    /// new owner's `require_stable` offset fetch then waits for the transaction) or is refused
    /// with `ILLEGAL_GENERATION` (KIP-447 fencing) and the transaction is aborted.
    txn_metadata: Option<Arc<ConsumerGroupMetadata>>,
}

impl<P: Processor> LoopState<'_, P> {
    /// Exactly-once commit: the consumed offsets join the open transaction, which commits
    /// atomically with every output produced in it; then the next transaction begins. On
    /// failure the transaction is aborted and the loop stops (a restart rebuilds state from
    /// the last committed offsets).
    fn commit_transaction(&mut self, tpl: &TopicPartitionList) -> Result<(), PipelineError> {
        let producer = self.emitter.producer.clone();
        let txn_metadata = self.txn_metadata.clone();
        let res = tokio::task::block_in_place(|| -> Result<(), KafkaError> {
            let cgm = txn_metadata.ok_or(KafkaError::ConsumerCommit(
                RDKafkaErrorCode::UnknownMemberId,
            ))?;
            producer.send_offsets_to_transaction(tpl, &cgm, TXN_TIMEOUT)?;
            producer.commit_transaction(TXN_TIMEOUT)?;
            producer.begin_transaction()
        });
        match res {
            Ok(()) => {
                tracing::debug!(offsets = ?tpl_offsets(tpl), "transaction committed");
                self.metrics.commits.inc();
                self.metrics.beat();
                Ok(())
            }
            Err(e) => {
                tracing::debug!(offsets = ?tpl_offsets(tpl), error = %e, "transaction failed; aborting");
                let _ = tokio::task::block_in_place(|| producer.abort_transaction(TXN_TIMEOUT));
                Err(PipelineError::Transaction(e))
            }
        }
    }

    /// After an aborted transaction: a new one, so the loop can carry on.
    fn restart_transaction(&mut self) -> Result<(), PipelineError> {
        self.emitter
            .producer
            .begin_transaction()
            .map_err(PipelineError::Transaction)
    }

    /// Enqueues the held outputs on the emitter, in the order they were made.
    ///
    /// Outputs are held for the rest of the turn (at most [`crate::driver::TURN_RECORDS`]
    /// records) rather than enqueued one by one as each record is processed: librdkafka wakes
    /// its broker thread when a partition's queue goes from empty to one message, and each
    /// wake-up serves every partition the producer knows. Outputs trickled out as a
    /// processor's watermark releases them woke it for a few records at a time (join-predict:
    /// `rd_kafka_toppar_producer_serve` 21 % of its CPU against 5 % for the pass-through);
    /// enqueued together, one wake-up serves the turn's outputs of every partition. Every
    /// flush enqueues them first, so no offset is committed ahead of its outputs.
    async fn send_outputs(&mut self) -> Result<(), PipelineError> {
        for o in self.outputs.drain(..) {
            self.emitter.send(o).await?;
        }
        Ok(())
    }

    async fn flush(&mut self, assigned: &Assignment) -> Result<(), PipelineError> {
        self.flush_inner(assigned, false).await
    }

    /// The offsets to commit, clamped by the processor's commit limits.
    fn take_offsets(&mut self, assigned: &Assignment) -> TopicPartitionList {
        let positions: Vec<(String, i32, i64)> = match self.consumer.position() {
            Ok(tpl) => tpl
                .elements()
                .iter()
                .filter_map(|e| match e.offset() {
                    Offset::Offset(o) => Some((e.topic().to_owned(), e.partition(), o)),
                    _ => None,
                })
                .collect(),
            Err(e) => {
                tracing::debug!(error = %e, "no consumer positions; committing processed offsets");
                Vec::new()
            }
        };
        let processor = &*self.processor;
        self.offsets
            .take(assigned, &positions, |t, p| processor.commit_limit(t, p))
    }

    /// Awaits deliveries and commits; `revoking` is true when the partitions' revocation is
    /// being handled.
    ///
    /// In exactly-once mode a revocation can leave the transaction unable to commit: with the
    /// eager protocol the group may already be in its next generation, and the coordinator
    /// refuses the offsets (`ILLEGAL_GENERATION`, KIP-447 fencing by group metadata). Then the
    /// transaction is aborted and the loop goes on: none of its outputs become visible to
    /// `read_committed` readers and its offsets were not committed, so the partitions' next
    /// owner (this member again, or another) re-processes those records from the last commit.
    /// Exiting instead would restart every replica at every scale step.
    async fn flush_inner(
        &mut self,
        assigned: &Assignment,
        revoking: bool,
    ) -> Result<(), PipelineError> {
        self.send_outputs().await?;
        if let Err(e) = self.emitter.await_deliveries().await {
            if !(self.exactly_once && revoking) {
                return Err(e);
            }
            tracing::warn!(error = %e, "delivery failed while partitions were revoked; aborting the transaction");
            let producer = self.emitter.producer.clone();
            let _ = tokio::task::block_in_place(|| producer.abort_transaction(TXN_TIMEOUT));
            self.take_offsets(assigned);
            self.metrics.transactions_aborted.inc();
            return self.restart_transaction();
        }
        let tpl = self.take_offsets(assigned);
        if tpl.count() == 0 {
            return Ok(());
        }
        if self.exactly_once {
            return match self.commit_transaction(&tpl) {
                Err(PipelineError::Transaction(e))
                    if revoking && !is_fatal_transaction_error(&e) =>
                {
                    tracing::warn!(
                        error = %e,
                        "transaction aborted while partitions were revoked; their records since the \
                         last commit are re-processed by the next owner (no output of it is visible)"
                    );
                    self.metrics.transactions_aborted.inc();
                    self.restart_transaction()
                }
                other => other,
            };
        }
        let consumer = self.consumer;
        match tokio::task::block_in_place(|| consumer.commit(&tpl, CommitMode::Sync)) {
            Ok(()) => {
                self.metrics.commits.inc();
                Ok(())
            }
            Err(e) if is_rebalance_commit_error(&e) => {
                // The partitions moved: the new owner re-processes from the last commit.
                tracing::warn!(
                    error = %e,
                    "commit refused during a rebalance; records will be re-processed by the new owner"
                );
                Ok(())
            }
            Err(e) => Err(PipelineError::Commit(e)),
        }
    }

    /// Moves each assigned partition's fetch position to the committed offset its state was
    /// rebuilt from.
    ///
    /// librdkafka starts an assigned partition at the committed offset it read in the assign
    /// callback. When the loop handles a revocation after that callback (both run inside
    /// `recv`), its flush can commit past that offset. The partition's floor (see
    /// `Assignment::admit`) already keeps the records between the two offsets from being
    /// applied twice; the seek spares fetching them again.
    async fn seek_to_rebuilt(
        &mut self,
        committed: &[(TopicPartition, Option<i64>)],
    ) -> Result<(), PipelineError> {
        let wanted: Vec<(&TopicPartition, i64)> = committed
            .iter()
            .filter_map(|(tp, off)| off.map(|o| (tp, o)))
            .collect();
        if wanted.is_empty() {
            return Ok(());
        }
        let consumer = self.consumer;
        // Only partitions still assigned: the loop may handle an `Assigned` event whose
        // partitions a later rebalance already took away (seen: 'Erroneous state' on every
        // retry, then the process exited); their `Revoked` event follows in the same batch.
        let res = retry_blocking("seek to the rebuilt offsets", || {
            let now: FxHashSet<TopicPartition> =
                tpl_pairs(&consumer.assignment()?).into_iter().collect();
            let mut tpl = TopicPartitionList::new();
            for (tp, o) in &wanted {
                if now.contains(*tp) {
                    let _ = tpl.add_partition_offset(&tp.0, tp.1, Offset::Offset(*o));
                }
            }
            if tpl.count() == 0 {
                return Ok(Vec::new());
            }
            let res = consumer.seek_partitions(tpl, Duration::from_secs(10))?;
            match res.elements().iter().find_map(|e| e.error().err()) {
                Some(e) => Err(e),
                None => Ok(tpl_pairs(&res)),
            }
        })
        .await;
        match res {
            // A record of these partitions received before the seek is fetched again; the
            // floor admits it once either way.
            Ok(_) => {}
            // Not fatal: without the seek the partitions' floors (see `Assignment`) skip what
            // librdkafka delivers below the rebuilt offsets; nothing is dropped as stale.
            Err(e) => tracing::warn!(
                error = %e,
                "seeking assigned partitions to their rebuilt offsets failed; records below \
                 those offsets are skipped instead"
            ),
        }
        Ok(())
    }
}

impl<P: Processor> Hooks for LoopState<'_, P> {
    type Error = PipelineError;

    fn topics(&self) -> Vec<String> {
        self.processor.topics()
    }

    /// Commits the revoked partitions' progress (they are still in the assignment), then
    /// drops their state.
    async fn on_revoked(
        &mut self,
        d: &mut Driver<'_>,
        parts: &[TopicPartition],
    ) -> Result<(), PipelineError> {
        self.flush_inner(d.assignment(), true).await?;
        for tp in parts {
            self.offsets.forget(tp);
        }
        self.processor.on_revoked(parts);
        Ok(())
    }

    /// Reads the committed offsets (retrying a partition's own error, e.g.
    /// UNSTABLE_OFFSET_COMMIT while a transaction that commits its offsets is still completing,
    /// KIP-447), rebuilds state up to them, seeks there, and returns them as the floors. The
    /// group metadata of this assignment is adopted for exactly-once commits only now.
    async fn on_assigned(
        &mut self,
        _d: &mut Driver<'_>,
        parts: &[TopicPartition],
    ) -> Result<Vec<Option<i64>>, PipelineError> {
        let consumer = self.consumer;
        let mut tpl = TopicPartitionList::new();
        for (t, p) in parts {
            tpl.add_partition(t, *p);
        }
        let committed = retry_blocking("read committed offsets", || {
            let res = consumer.committed_offsets(tpl.clone(), Duration::from_secs(10))?;
            match res.elements().iter().find_map(|e| e.error().err()) {
                Some(e) => Err(e),
                None => Ok(res),
            }
        })
        .await
        .map_err(PipelineError::Commit)?;
        let committed: Vec<_> = committed
            .elements()
            .iter()
            .map(|e| {
                let off = match e.offset() {
                    Offset::Offset(o) => Some(o),
                    _ => None,
                };
                ((e.topic().to_owned(), e.partition()), off)
            })
            .collect();
        tracing::info!(
            ?committed,
            "rebuilding assigned partitions from their committed offsets"
        );
        self.metrics.set_ready(false);
        self.metrics.beat();
        let processor = &mut *self.processor;
        self.metrics.rebuild_in_progress.set(1);
        let rebuilt = tokio::task::block_in_place(|| processor.on_assigned(&committed));
        self.metrics.rebuild_in_progress.set(0);
        if let Err(PipelineError::Rebuild(e)) = &rebuilt {
            self.metrics.rebuild_failed(e);
        }
        rebuilt?;
        self.metrics.beat();
        self.seek_to_rebuilt(&committed).await?;
        let from: FxHashMap<TopicPartition, i64> = committed
            .into_iter()
            .filter_map(|(tp, c)| c.map(|c| (tp, c)))
            .collect();
        for tp in parts {
            self.offsets.forget(tp);
        }
        self.txn_metadata = consumer.context().assignment_metadata();
        self.metrics.set_ready(true);
        Ok(parts.iter().map(|tp| from.get(tp).copied()).collect())
    }

    async fn on_message(
        &mut self,
        d: &mut Driver<'_>,
        rec: &ConsumedRecord<'_>,
    ) -> Result<(), PipelineError> {
        self.processor.process(rec, &mut self.outputs)?;
        self.offsets.mark(rec.topic, rec.partition, rec.offset);
        if self.outputs.len() >= TURN_OUTPUTS {
            self.send_outputs().await?;
        }
        if self.emitter.pending() + self.outputs.len() >= self.max_in_flight {
            self.flush(d.assignment()).await?;
        }
        Ok(())
    }

    fn reads_headers(&self) -> bool {
        self.processor.reads_headers()
    }

    async fn after_turn(&mut self, _d: &mut Driver<'_>) -> Result<(), PipelineError> {
        self.send_outputs().await
    }

    async fn on_tick(&mut self, d: &mut Driver<'_>) -> Result<(), PipelineError> {
        // Positions against the ends in librdkafka's latest statistics (no request; a stale
        // end is lower, never higher, than the true one). Under read_committed the position
        // moves past transaction markers, so a partition read to the end shows nothing unread.
        if let Ok(tpl) = self.consumer.position() {
            let ctx = self.consumer.context();
            for e in tpl.elements() {
                if let Offset::Offset(pos) = e.offset()
                    && let Some(end) = ctx.end_offset(e.topic(), e.partition())
                {
                    self.processor
                        .set_unread(e.topic(), e.partition(), end > pos);
                }
            }
        }
        self.processor.on_tick(&mut self.outputs)?;
        self.flush(d.assignment()).await?;
        self.processor.report(&self.metrics);
        Ok(())
    }

    async fn on_shutdown(&mut self, d: &mut Driver<'_>) -> Result<(), PipelineError> {
        self.flush(d.assignment()).await?;
        self.processor.report(&self.metrics);
        tracing::info!("flushed and committed; stopping");
        Ok(())
    }
}

/// True for transaction errors after which this producer cannot go on (fenced by a newer
/// instance with the same `transactional.id`, or librdkafka's fatal error state): the process
/// must exit. Other errors abort the transaction and a new one can begin.
pub fn is_fatal_transaction_error(e: &KafkaError) -> bool {
    match e {
        KafkaError::Transaction(r) => r.is_fatal(),
        _ => matches!(
            e.rdkafka_error_code(),
            Some(
                RDKafkaErrorCode::ProducerFenced
                    | RDKafkaErrorCode::InvalidProducerEpoch
                    | RDKafkaErrorCode::Fatal
            )
        ),
    }
}

/// True when an offset commit was refused because the group is rebalancing or this member's
/// generation is gone: the partitions moved, and their new owner resumes from the last
/// successful commit (so the caller carries on instead of failing).
pub fn is_rebalance_commit_error(e: &KafkaError) -> bool {
    matches!(
        e,
        KafkaError::ConsumerCommit(
            RDKafkaErrorCode::RebalanceInProgress
                | RDKafkaErrorCode::IllegalGeneration
                | RDKafkaErrorCode::UnknownMemberId
        )
    )
}

/// Retries a blocking Kafka call with exponential backoff (bounded).
///
/// # Errors
/// The last error when every attempt failed.
pub async fn retry_blocking<T>(
    what: &str,
    mut f: impl FnMut() -> Result<T, KafkaError>,
) -> Result<T, KafkaError> {
    let mut delays = RetryPolicy::default().builder().build();
    loop {
        match tokio::task::block_in_place(&mut f) {
            Ok(v) => return Ok(v),
            Err(e) => match delays.next() {
                Some(d) => {
                    tracing::warn!(%what, error = %e, retry_in = ?d, "broker call failed; retrying");
                    tokio::time::sleep(d).await;
                }
                None => return Err(e),
            },
        }
    }
}

/// Runs the loop until `shutdown` is cancelled, then flushes, commits and returns.
///
/// # Errors
/// [`PipelineError`] for failures that survive retries; offsets of unfinished work are not
/// committed, so a restart re-processes it.
pub async fn run<P: Processor>(
    consumer: &LoopConsumer,
    producer: LoopProducer,
    processor: &mut P,
    metrics: Metrics,
    cfg: LoopConfig,
    shutdown: CancellationToken,
) -> Result<(), PipelineError> {
    let mut emitter = Emitter::new(producer.clone(), metrics.clone(), RetryPolicy::default());
    if cfg.exactly_once {
        emitter.set_transactional(true);
        retry_blocking("init transactions", || {
            producer.init_transactions(TXN_TIMEOUT)
        })
        .await
        .map_err(PipelineError::Transaction)?;
        producer
            .begin_transaction()
            .map_err(PipelineError::Transaction)?;
        tracing::info!("exactly-once: outputs and offsets commit in Kafka transactions");
    }
    let mut st = LoopState {
        consumer,
        processor,
        emitter,
        offsets: OffsetTracker::default(),
        metrics: metrics.clone(),
        outputs: Vec::with_capacity(1024),
        max_in_flight: cfg.max_in_flight,
        exactly_once: cfg.exactly_once,
        txn_metadata: None,
    };
    Driver::new(consumer, metrics)
        .run(&mut st, cfg.commit_interval, shutdown)
        .await
}

#[cfg(test)]
mod tests {
    use super::OffsetTracker;
    use crate::driver::Assignment;

    fn offsets(tpl: &rdkafka::TopicPartitionList) -> Vec<(String, i32, i64)> {
        tpl.elements()
            .iter()
            .map(|e| {
                let o = e.offset().to_raw().unwrap_or(-1);
                (e.topic().to_owned(), e.partition(), o)
            })
            .collect()
    }

    #[test]
    fn a_position_past_a_marker_is_committed_but_never_past_the_record_in_hand() {
        let mut a = Assignment::default();
        a.add(("SZ".into(), 0), Some(30));
        let mut t = OffsetTracker::default();
        for o in 30..=40 {
            t.mark("SZ", 0, o);
        }
        // The position is past a transaction marker at 41: 42 is committed.
        let pos = [("SZ".to_owned(), 0, 42)];
        assert_eq!(
            offsets(&t.take(&a, &pos, |_, _| None)),
            [("SZ".into(), 0, 42)]
        );

        // Record 42 was returned by the poll that also served a revocation; the revocation's
        // flush runs before it is handled. The position (43) is one past it: the commit must
        // stop at 42, else the next owner starts after a record nobody processed.
        let mut t = OffsetTracker::default();
        for o in 30..=41 {
            t.mark("SZ", 0, o);
        }
        a.hold(Some(("SZ".into(), 0, 42)));
        let pos = [("SZ".to_owned(), 0, 43)];
        assert_eq!(
            offsets(&t.take(&a, &pos, |_, _| None)),
            [("SZ".into(), 0, 42)]
        );
        // Another partition's position is not capped by it.
        a.add(("SZ".into(), 1), None);
        t.mark("SZ", 1, 7);
        let pos = [("SZ".to_owned(), 0, 43), ("SZ".to_owned(), 1, 9)];
        assert_eq!(
            offsets(&t.take(&a, &pos, |_, _| None)),
            [("SZ".into(), 1, 9)]
        );
        a.hold(None);
        let pos = [("SZ".to_owned(), 0, 43)];
        assert_eq!(
            offsets(&t.take(&a, &pos, |_, _| None)),
            [("SZ".into(), 0, 43)]
        );
    }
}
