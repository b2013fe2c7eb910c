//! The producer side of the loop: [`Emitter`] enqueues a turn's outputs on librdkafka's
//! threaded producer, counts delivery reports in bulk ([`Deliveries`]), and on flush awaits
//! every acknowledgement.
//!
//! A record is never sent again after later records were acknowledged: that reorders a
//! partition (a feature behind the ones after it arrives at the join as late data). librdkafka
//! retries a delivery in order inside `delivery.timeout.ms` (unbounded by default in
//! AtLeastOnce, see `runner`); a delivery it gives up on fails the flush, and the loop stops
//! without committing, so the restart re-processes from the last commit, in order. Only these
//! are sent again: a refusal when enqueueing (nothing after it was sent; retried with
//! exponential backoff and jitter, bounded by [`RetryPolicy`]), and a record the broker
//! refuses for good: sent to the dead-letter topic instead ([`OutputGuard`]; a dead letter
//! itself is stamped anew or cut to [`TRUNCATED_VALUE_BYTES`]). Dead letters' order does not
//! matter, and the refused record is not sent to its own topic again.
//!
//! Before that, every output is checked against what its topic accepts (read at start-up,
//! [`OutputGuard`]): one its topic would refuse goes to the dead-letter topic at once, so a
//! transaction (exactly-once) is not aborted by a refusal the limits predict.

use crate::dlq;
use crate::error::PipelineError;
use crate::metrics::Metrics;
use crate::output::{Output, TRUNCATED_VALUE_BYTES, truncated};
use backon::{BackoffBuilder, ExponentialBuilder};
use rdkafka::error::KafkaError;
use rdkafka::error::KafkaResult;
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{ClientConfig, ClientContext, Message as _};
use rustc_hash::FxHashMap;
use sensorflow_kafka::limits::{OutputLimits, Refusal, TopicLimits, batch_bytes};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;

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
    pub(crate) fn builder(&self) -> ExponentialBuilder {
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
    /// `max.message.bytes`: retrying cannot help. A dead letter is sent again with its value
    /// cut to [`TRUNCATED_VALUE_BYTES`] and its original size in a header; any other record
    /// goes to the dead-letter topic (see [`OutputGuard`]).
    TooLarge,
    /// The broker refuses this record for good (its timestamp is outside the topic's
    /// `message.timestamp.*.max.ms`, it is invalid, or a policy refuses it): retrying cannot
    /// help, other records are unaffected; it goes to the dead-letter topic with the broker's
    /// error (see [`OutputGuard`]).
    Refused,
    /// Anything else the broker refuses for good (authorization, an unknown topic): retrying
    /// cannot help and every record would fail alike; the loop stops with a clear error
    /// rather than retry for ever.
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
            C::InvalidTimestamp
            | C::InvalidRecord
            | C::InvalidMessage
            | C::UnsupportedForMessageFormat
            | C::PolicyViolation,
        ) => ProduceErrorClass::Refused,
        Some(
            C::TopicAuthorizationFailed
            | C::ClusterAuthorizationFailed
            | C::TransactionalIdAuthorizationFailed
            | C::SaslAuthenticationFailed
            | C::InvalidTopic
            | C::UnknownTopic
            | C::InvalidRequiredAcks,
        ) => ProduceErrorClass::Permanent,
        _ => ProduceErrorClass::Transient,
    }
}

/// What the emitter checks every output against before sending it, and where a record its
/// topic would refuse goes instead.
///
/// An output its topic's [`TopicLimits`] refuse (a timestamp outside
/// `message.timestamp.*.max.ms`, a batch above `max.message.bytes`) is not sent there: it goes
/// to the dead-letter topic with reason `refused-timestamp` or `refused-size`
/// ([`dlq::refused`]), and so does one the broker refuses in its delivery report
/// (reason `refused`, with the broker's error) in at-least-once mode. A dead letter is itself
/// made acceptable: stamped with the clock when the dead-letter topic would refuse its
/// timestamp (the original stays in `sensorflow.source.timestamp`), its value cut when too
/// large. So a refused record never stops the loop, and a restart never meets it again.
#[derive(Debug, Clone)]
pub struct OutputGuard {
    /// The output topics.
    pub topics: Vec<String>,
    /// What each output topic accepts (read at start-up with DescribeConfigs).
    pub limits: OutputLimits,
    /// The dead-letter topic.
    pub dead_letter_topic: Arc<str>,
    /// The processor's name (`sensorflow.processor` header of the dead letters).
    pub processor: &'static str,
}

/// The error of a record the broker refuses for good and nothing can cure.
fn refused_for_good(out: &Output, e: KafkaError) -> PipelineError {
    tracing::error!(topic = %out.topic, error = %e, "the broker refuses this record for good");
    PipelineError::Produce {
        topic: out.topic.to_string(),
        attempts: 1,
        source: e,
    }
}

/// The producer of every consume loop: librdkafka's producer with its own polling thread,
/// whose delivery reports are counted by [`Deliveries`] (no future or allocation per record).
pub type LoopProducer = ThreadedProducer<Deliveries>;

/// Creates a [`LoopProducer`] from `cfg` (e.g. [`sensorflow_kafka::config::KafkaArgs::producer_config`]).
///
/// # Errors
/// librdkafka refuses the configuration.
pub fn loop_producer(cfg: &ClientConfig) -> KafkaResult<LoopProducer> {
    cfg.create_with_context(Deliveries::default())
}

/// Delivery opaque of a retried record, whose own report [`Emitter`] awaits: odd. A record
/// enqueued by [`Emitter::send`] is counted in bulk, under its epoch: opaque `epoch << 1`.
const RETRIED: usize = 1;

/// Epochs whose deliveries are counted apart at once (a ring of counters): a commit snapshot
/// waits for its epoch and every earlier one (see [`Emitter::close_epoch`]).
pub const EPOCHS: usize = 64;

/// The producer context of [`LoopProducer`]: counts delivery reports per topic and keeps the
/// failed records for [`Emitter::await_deliveries`] to retry.
///
/// Delivery reports arrive on the producer's polling thread; the loop reads the counts when it
/// flushes. Per record this costs one atomic decrement and one uncontended lock, where a
/// `FutureProducer` allocated a boxed oneshot channel per record and the loop awaited each
/// (the window-processor's profile: allocator ~25 %, delivery futures ~13 % of samples).
pub struct Deliveries {
    /// Records enqueued in bulk and not yet reported.
    in_flight: AtomicUsize,
    /// The same, per epoch (`epoch % EPOCHS`).
    by_epoch: [AtomicUsize; EPOCHS],
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

impl Default for Deliveries {
    fn default() -> Self {
        Self {
            in_flight: AtomicUsize::new(0),
            by_epoch: std::array::from_fn(|_| AtomicUsize::new(0)),
            reports: Mutex::default(),
            done: Notify::new(),
        }
    }
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
        if opaque & RETRIED != 0 {
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
        self.by_epoch[(opaque >> 1) % EPOCHS].fetch_sub(1, Ordering::AcqRel);
        if self.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.done.notify_waiters();
        }
    }
}

/// Enqueues outputs on the producer and awaits their acknowledgements on flush.
pub struct Emitter {
    pub(crate) producer: LoopProducer,
    metrics: Metrics,
    retry: RetryPolicy,
    transactional: bool,
    /// Opaque of the next retried record (odd: [`RETRIED`] set).
    next_retry: usize,
    /// The epoch of the records enqueued now, and the oldest whose deliveries may still be
    /// outstanding (see [`Emitter::close_epoch`]).
    epoch: u64,
    oldest_open: u64,
    /// Output checks and the dead-letter topic (none: outputs are sent unchecked).
    guard: Option<OutputGuard>,
    /// The guard's limits by topic, for a lookup per output without allocating.
    limits: FxHashMap<Arc<str>, TopicLimits>,
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
            next_retry: RETRIED,
            epoch: 0,
            oldest_open: 0,
            guard: None,
            limits: FxHashMap::default(),
        }
    }

    /// Checks every output against `guard` from now on (see [`OutputGuard`]).
    pub fn set_guard(&mut self, guard: OutputGuard) {
        self.limits = guard
            .limits
            .topics
            .iter()
            .map(|(t, l)| (Arc::from(t.as_str()), *l))
            .collect();
        self.guard = Some(guard);
    }

    /// Why `out`'s topic would refuse it now, if it would.
    fn refusal(&self, out: &Output, now_ms: i64) -> Option<Refusal> {
        let limits = self.limits.get(&out.topic)?;
        let headers = out.headers.iter().flat_map(|h| {
            use rdkafka::message::Headers as _;
            h.iter()
                .map(|x| (x.key.len(), x.value.map_or(0, <[u8]>::len)))
        });
        let bytes = batch_bytes(
            out.key.as_ref().map_or(0, |k| k.len()),
            out.value.len(),
            headers,
        );
        limits
            .check(&out.topic, out.timestamp_ms, bytes, now_ms)
            .err()
    }

    /// `out`, or what goes instead when its topic would refuse it: a dead letter (see
    /// [`OutputGuard`]); a dead letter the dead-letter topic would refuse is stamped with the
    /// clock or cut.
    fn admit(&self, out: Output) -> Output {
        let Some(g) = &self.guard else { return out };
        let now = crate::now_ms();
        let Some(refusal) = self.refusal(&out, now) else {
            return out;
        };
        let dead = if out.topic == g.dead_letter_topic {
            out
        } else {
            tracing::warn!(topic = %out.topic, reason = refusal.code(), error = %refusal,
                "output refused by its topic's limits; dead-lettered");
            self.metrics.record_dead_letter(refusal.code());
            dlq::refused(
                &out,
                refusal.code(),
                &refusal.to_string(),
                &g.dead_letter_topic,
                g.processor,
            )
        };
        self.acceptable_dead_letter(dead, now)
    }

    /// A dead letter the dead-letter topic accepts: stamped with the clock when its timestamp
    /// is refused, its value cut when too large.
    fn acceptable_dead_letter(&self, mut dead: Output, now_ms: i64) -> Output {
        if let Some(r) = self.refusal(&dead, now_ms)
            && r.is_timestamp()
        {
            dead.timestamp_ms = Some(now_ms);
        }
        if let Some(r) = self.refusal(&dead, now_ms)
            && !r.is_timestamp()
            && dead.value.len() > TRUNCATED_VALUE_BYTES
        {
            self.metrics.records_truncated.inc();
            dead = truncated(&dead);
        }
        dead
    }

    /// The dead letter of `out`, which the broker refused for good with `e` (at enqueue or in
    /// its delivery report); `None` without a guard, or when `out` is itself a dead letter
    /// whose refusal a new stamp or cut cannot cure.
    fn dead_letter_for(&self, out: &Output, e: &KafkaError) -> Option<Output> {
        let g = self.guard.as_ref()?;
        let now = crate::now_ms();
        if out.topic == g.dead_letter_topic {
            let class = classify_produce_error(e);
            let timestamp = e.rdkafka_error_code() == Some(RDKafkaErrorCode::InvalidTimestamp);
            return match class {
                ProduceErrorClass::Refused if timestamp => {
                    let mut d = out.clone();
                    d.timestamp_ms = Some(now);
                    Some(d)
                }
                ProduceErrorClass::TooLarge if out.value.len() > TRUNCATED_VALUE_BYTES => {
                    self.metrics.records_truncated.inc();
                    Some(truncated(out))
                }
                _ => None,
            };
        }
        self.metrics.record_dead_letter("refused");
        let d = dlq::refused(
            out,
            "refused",
            &format!("{} refused it: {e}", out.topic),
            &g.dead_letter_topic,
            g.processor,
        );
        Some(self.acceptable_dead_letter(d, now))
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

    /// Enqueues `out` for bulk reporting under the current epoch; on failure hands the error
    /// back.
    fn enqueue(&self, out: &Output) -> Result<(), KafkaError> {
        let d = self.producer.context();
        let slot = &d.by_epoch[self.epoch as usize % EPOCHS];
        // Counted before the send: the report can arrive before `send` returns.
        d.in_flight.fetch_add(1, Ordering::AcqRel);
        slot.fetch_add(1, Ordering::AcqRel);
        match self.producer.send(record(out, (self.epoch as usize) << 1)) {
            Ok(()) => Ok(()),
            Err((e, _)) => {
                slot.fetch_sub(1, Ordering::AcqRel);
                d.in_flight.fetch_sub(1, Ordering::AcqRel);
                Err(e)
            }
        }
    }

    /// Closes the current epoch and returns it: every output enqueued so far belongs to it or
    /// to an earlier one, later outputs to the next. The loop tags a commit snapshot with it
    /// and commits the snapshot once [`Emitter::delivered_through`] that epoch, without
    /// waiting for the outputs enqueued since (an at-least-once commit that does not stop the
    /// loop). `None` when [`EPOCHS`] epochs are open already: the caller awaits every delivery
    /// instead ([`Emitter::await_deliveries`], which closes them all).
    pub fn close_epoch(&mut self) -> Option<u64> {
        self.delivered_through(self.epoch);
        if self.epoch + 1 - self.oldest_open >= EPOCHS as u64 {
            return None;
        }
        let e = self.epoch;
        self.epoch += 1;
        Some(e)
    }

    /// True when every output of epoch `e` and of the epochs before it has its delivery
    /// report (a failed one included: see [`Emitter::take_reports`]).
    pub fn delivered_through(&mut self, e: u64) -> bool {
        let d = self.producer.context();
        while self.oldest_open <= e
            && self.oldest_open < self.epoch
            && d.by_epoch[self.oldest_open as usize % EPOCHS].load(Ordering::Acquire) == 0
        {
            self.oldest_open += 1;
        }
        self.oldest_open > e
    }

    /// Counts the deliveries reported since the last call into the metrics, without waiting;
    /// false when a delivery failed (the caller then flushes with
    /// [`Emitter::await_deliveries`], which handles it).
    pub fn take_reports(&self) -> bool {
        let delivered = {
            let mut r = self.producer.context().lock();
            if !r.failed.is_empty() {
                return false;
            }
            std::mem::take(&mut r.delivered)
        };
        for (topic, n) in delivered {
            self.metrics.record_out(&topic, n);
        }
        true
    }

    /// Enqueues one record. When librdkafka's queue is full, waits for deliveries first.
    ///
    /// # Errors
    /// [`PipelineError::Produce`] when enqueueing fails for another reason (e.g. an unknown
    /// topic) after retries.
    pub async fn send(&mut self, out: Output) -> Result<(), PipelineError> {
        let out = self.admit(out);
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
        self.next_retry = self.next_retry.checked_add(2).unwrap_or(RETRIED);
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
        let class = classify_produce_error(&first);
        let out = match class {
            ProduceErrorClass::TooLarge | ProduceErrorClass::Refused => {
                match self.dead_letter_for(&out, &first) {
                    Some(d) => {
                        tracing::warn!(topic = %out.topic, error = %first, dead_letter_topic = %d.topic,
                            "the broker refuses this record for good; dead-lettered");
                        d
                    }
                    None if class == ProduceErrorClass::TooLarge
                        && out.value.len() > TRUNCATED_VALUE_BYTES =>
                    {
                        tracing::warn!(
                            topic = %out.topic, bytes = out.value.len(), error = %first,
                            "record too large for the broker; sending it with its value truncated"
                        );
                        self.metrics.records_truncated.inc();
                        truncated(&out)
                    }
                    None => return Err(refused_for_good(&out, first)),
                }
            }
            ProduceErrorClass::Transient => out,
            ProduceErrorClass::Permanent => return Err(refused_for_good(&out, first)),
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

    /// Waits until every enqueued record has its delivery report. librdkafka retries inside
    /// `delivery.timeout.ms`, which may be unbounded: while it does (a broker outage), the
    /// wait beats the liveness clock (waiting on the broker is not a stuck loop; a restart
    /// would not deliver sooner) and logs the count every 10 s.
    async fn wait_for_reports(&self) {
        let d = self.producer.context();
        let started = std::time::Instant::now();
        let mut logged = started;
        loop {
            let done = d.wait_until(|d| d.in_flight.load(Ordering::Acquire) == 0);
            if tokio::time::timeout(Duration::from_secs(1), done)
                .await
                .is_ok()
            {
                return;
            }
            self.metrics.beat();
            if logged.elapsed() >= Duration::from_secs(10) {
                logged = std::time::Instant::now();
                tracing::warn!(
                    in_flight = d.in_flight.load(Ordering::Acquire),
                    waited = ?started.elapsed(),
                    "deliveries not acknowledged yet; librdkafka keeps retrying them in order"
                );
            }
        }
    }

    /// After an aborted transaction: waits for the reports of the records the abort purged
    /// and forgets them, so none is sent again in the next transaction.
    pub async fn discard_aborted(&mut self) {
        self.wait_for_reports().await;
        let mut r = self.producer.context().lock();
        r.failed.clear();
        r.delivered.clear();
    }

    /// Awaits every pending delivery.
    ///
    /// # Errors
    /// [`PipelineError::Produce`] when librdkafka gave up on a delivery (its own in-order
    /// retries ran out of `delivery.timeout.ms`, or the broker refused it for good): the
    /// record is not sent again (later ones may be acknowledged already; see the module docs),
    /// so the caller stops without committing. In a transaction, any failed delivery is
    /// [`PipelineError::Transaction`]: the caller aborts it. Outside one, a record too large
    /// for the broker is sent again truncated.
    pub async fn await_deliveries(&mut self) -> Result<(), PipelineError> {
        let d = self.producer.context();
        self.wait_for_reports().await;
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
            // Not sent again out of order. A record refused for good for a reason the limits
            // did not predict stops the loop without committing ([`PipelineError::Refused`]:
            // the runner resumes from the last commit with the limits read anew); a dead
            // letter is stamped anew or cut and sent again (their order does not matter);
            // anything else (librdkafka gave up retrying, an authorization error) stops the
            // loop. In a transaction any failed delivery leaves it abortable only.
            let class = classify_produce_error(&e);
            let curable = matches!(
                class,
                ProduceErrorClass::TooLarge | ProduceErrorClass::Refused
            );
            let dead_letter = self
                .guard
                .as_ref()
                .is_some_and(|g| out.topic == g.dead_letter_topic);
            if curable && !dead_letter {
                tracing::warn!(topic = %out.topic, error = %e, transactional = self.transactional,
                    "the broker refused an output for good; resuming from the last commit");
                return Err(PipelineError::Refused {
                    topic: out.topic.to_string(),
                    source: e,
                });
            }
            if !curable || self.transactional {
                tracing::error!(topic = %out.topic, error = %e, transactional = self.transactional,
                    "delivery failed; not sending it again out of order: stopping without committing");
                return Err(if self.transactional {
                    PipelineError::Transaction(e)
                } else {
                    PipelineError::Produce {
                        topic: out.topic.to_string(),
                        attempts: 1,
                        source: e,
                    }
                });
            }
            self.send_with_retry(out, e).await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn output(i: u8) -> Output {
        Output {
            topic: "t".into(),
            key: None,
            value: vec![i],
            timestamp_ms: None,
            headers: None,
        }
    }

    /// Real librdkafka delivery reports without a broker: nothing listens on the bootstrap
    /// address, so every record fails once its message timeout passes, and each failure is
    /// reported under the epoch it was enqueued in.
    #[test]
    fn an_epoch_is_delivered_only_once_every_record_of_it_and_before_it_is_reported() {
        let mut cfg = ClientConfig::new();
        cfg.set("bootstrap.servers", "127.0.0.1:9")
            .set("message.timeout.ms", "1500")
            .set("linger.ms", "0");
        let mut e = Emitter::new(
            loop_producer(&cfg).unwrap(),
            Metrics::new(),
            RetryPolicy::default(),
        );
        e.enqueue(&output(0)).unwrap();
        assert_eq!(e.close_epoch(), Some(0));
        // Nothing reported yet: epoch 0 is open, and so is every later one.
        assert!(!e.delivered_through(0));
        let started = std::time::Instant::now();
        // Epoch 1 is enqueued more than librdkafka's timeout scan period (1 s) later: its
        // records time out in a later scan than epoch 0's.
        std::thread::sleep(Duration::from_millis(1200));
        e.enqueue(&output(1)).unwrap();
        e.enqueue(&output(2)).unwrap();
        assert_eq!(e.close_epoch(), Some(1));
        while !e.delivered_through(0) {
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "no report for epoch 0"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        // Epoch 0's record is reported, epoch 1's two are not yet.
        assert!(e.pending() > 0 && !e.delivered_through(1));
        while !e.delivered_through(1) {
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "no report for epoch 1"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(e.pending(), 0);
        // The reports were failures: the loop falls back to its blocking flush.
        assert!(!e.take_reports());
        // Closing an empty epoch: delivered at once.
        assert_eq!(e.close_epoch(), Some(2));
        assert!(e.delivered_through(2));
    }

    #[test]
    fn no_more_than_the_ring_of_epochs_is_open_at_once() {
        let mut cfg = ClientConfig::new();
        cfg.set("bootstrap.servers", "127.0.0.1:9")
            .set("message.timeout.ms", "60000");
        let mut e = Emitter::new(
            loop_producer(&cfg).unwrap(),
            Metrics::new(),
            RetryPolicy::default(),
        );
        // Each epoch holds an undelivered record: the ring fills up.
        let mut closed = 0;
        loop {
            e.enqueue(&output(0)).unwrap();
            match e.close_epoch() {
                Some(n) => {
                    assert_eq!(n, closed);
                    closed += 1;
                }
                None => break,
            }
            assert!(
                closed <= EPOCHS as u64,
                "more epochs open than the ring holds"
            );
        }
        assert_eq!(closed, EPOCHS as u64 - 1);
        assert!(!e.delivered_through(0));
    }
}
