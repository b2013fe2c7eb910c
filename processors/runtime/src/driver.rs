//! The one consume-loop driver of the processors and the GCS sink.
//!
//! ```text
//!   Driver::run:  subscribe ─► ready ─► loop select! { biased;
//!       shutdown ──────────────────────────────► break
//!       tick ───► rebalance events ─► Hooks::on_tick
//!       recv (consume errors: backoff 0.2 s … 12.8 s)
//!            ───► rebalance events ─► floor? ─► Hooks::on_message(ConsumedRecord)
//!       Hooks::busy() (work queued: turn without waiting) }
//!     ─► Hooks::after_turn ─► liveness beat
//!   shutdown: not ready ─► Hooks::on_shutdown (flush, commit)
//!
//!   rebalance events (from the consumer context, oldest first, until none is left):
//!       Revoked  ─► Hooks::on_revoked (partitions still in the assignment: their progress can
//!                   be committed) ─► removed from the assignment
//!       Assigned ─► Hooks::on_assigned ─► floors ─► added to the assignment
//! ```
//!
//! The driver owns what both loops must get right the same way: polling (and how long since
//! the last poll, which `max.poll.interval.ms` bounds), handling rebalance events before any
//! record or tick that follows them, the per-partition floor (a record of a partition that is
//! not assigned, or below the offset its state was rebuilt from, or already processed in this
//! assignment, is skipped: [`Assignment`]), the records-in and skipped counters, the liveness
//! beat and the readiness gauge. What to do with a record, when to commit and how are the
//! hooks': the processors' transactional or at-least-once flush (`pipeline`), the sink's
//! upload-then-commit (`sensorflow-sink`). A hook that must poll in the middle of its own work
//! (the sink polls right before every upload) calls [`Driver::poll_now`], which handles what
//! the poll returns through the same hooks.

use crate::consumer::{LoopConsumer, RebalanceEvent, TopicPartition};
use crate::metrics::{Metrics, TopicLabel};
use crate::record::ConsumedRecord;
use futures::FutureExt as _;
use prometheus_client::metrics::counter::Counter;
use rdkafka::Message as _;
use rdkafka::consumer::Consumer;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::BorrowedMessage;
use rustc_hash::FxHashMap;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// Subscribing to the hooks' topics failed.
#[derive(Debug, thiserror::Error)]
#[error("subscribing to {topics:?} failed: {source}")]
pub struct SubscribeError {
    /// Topics.
    pub topics: Vec<String>,
    /// Cause.
    pub source: KafkaError,
}

/// What a consume loop does with the events the [`Driver`] delivers.
///
/// Each hook gets the driver back, to read the assignment, commit through its consumer, or
/// poll again ([`Driver::poll_now`]). Hooks run on the driver's task, one at a time.
// The futures are awaited where the loop runs (`tokio::spawn` of a concrete loop still sees
// whether they are `Send`); no caller needs to name their bounds.
#[allow(async_fn_in_trait)]
pub trait Hooks {
    /// The loop's error (it must be able to say that subscribing failed).
    type Error: From<SubscribeError>;
    /// Topics to subscribe to.
    fn topics(&self) -> Vec<String>;
    /// Partitions were assigned: prepare them (rebuild state) and return, per partition in
    /// `parts` order, its floor: the first offset to process (`None`: from wherever the
    /// consumer starts).
    ///
    /// # Errors
    /// When the partitions cannot be prepared (the loop stops).
    async fn on_assigned(
        &mut self,
        d: &mut Driver<'_>,
        parts: &[TopicPartition],
    ) -> Result<Vec<Option<i64>>, Self::Error>;
    /// Partitions were revoked; they are still in [`Driver::assignment`] during the call (so
    /// their progress can be committed) and removed after it.
    ///
    /// # Errors
    /// When the loop cannot go on.
    async fn on_revoked(
        &mut self,
        d: &mut Driver<'_>,
        parts: &[TopicPartition],
    ) -> Result<(), Self::Error>;
    /// One admitted record (assigned, at or above its partition's floor).
    ///
    /// # Errors
    /// When the loop cannot go on.
    async fn on_message(
        &mut self,
        d: &mut Driver<'_>,
        rec: &ConsumedRecord<'_>,
    ) -> Result<(), Self::Error>;
    /// The periodic tick (flush, commit, age-based rotation…).
    ///
    /// # Errors
    /// When the loop cannot go on.
    async fn on_tick(&mut self, d: &mut Driver<'_>) -> Result<(), Self::Error>;
    /// After every turn of the loop, whatever woke it (a record, a tick, [`Hooks::busy`]).
    ///
    /// # Errors
    /// When the loop cannot go on.
    async fn after_turn(&mut self, _d: &mut Driver<'_>) -> Result<(), Self::Error> {
        Ok(())
    }
    /// Whether [`Hooks::on_message`] reads [`ConsumedRecord::headers`]; when false they are
    /// left unparsed and the record's headers are empty.
    fn reads_headers(&self) -> bool {
        true
    }
    /// Whether the turn may hand over another record that is already fetched (checked before
    /// each after the first; see [`TURN_RECORDS`]). A hook with a memory budget says no once
    /// it is spent.
    fn take_more(&self) -> bool {
        true
    }
    /// True when work is queued that the next turn should do without waiting for a record
    /// or a tick.
    fn busy(&self) -> bool {
        false
    }
    /// Shutdown was requested (after the loop's last turn): flush and commit.
    ///
    /// # Errors
    /// When flushing or committing fails.
    async fn on_shutdown(&mut self, d: &mut Driver<'_>) -> Result<(), Self::Error>;
}

/// The most records one turn of [`Driver::run`] hands to [`Hooks::on_message`]: the first
/// received, then those already fetched (see `Driver::deliver_fetched`). librdkafka hands
/// over a fetch response's records one by one; 500 is the default `max.poll.records` of the
/// Java consumer, and bounds how long a turn keeps a tick (flush and commit) waiting.
pub const TURN_RECORDS: usize = 500;

/// What [`Driver::poll_now`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Polled {
    /// A record, handed to [`Hooks::on_message`] (or skipped below its floor, or dropped
    /// unhandled when asked to).
    Record,
    /// Nothing fetched yet.
    Nothing,
    /// A consume error (logged).
    Error,
}

/// The assigned partitions, each with the next offset it may process.
///
/// The floor is what keeps a record from being applied twice to state. After an eager
/// rebalance whose revoke and assign both land between two loop iterations (one commit tick),
/// librdkafka has already fetched the committed offset `C0` and started fetching from it before
/// the loop commits the revoked progress `C1 > C0` and rebuilds state from the topic up to `C1`;
/// records in `[C0, C1)` (and records prefetched before the revoke) would then be replayed into
/// the rebuilt state *and* processed again. The processors seek to `C1`; the floor makes the
/// guarantee independent of what librdkafka still delivers: each partition starts at the
/// committed offset the rebuild used, and a record below its floor (or a repeat of one already
/// processed in this assignment) is skipped: its effect is in the state and its outputs were
/// produced before the commit.
#[derive(Debug, Default)]
pub struct Assignment {
    parts: FxHashMap<String, FxHashMap<i32, i64>>,
    /// The record the consumer has returned but the loop has not handled yet, while the
    /// rebalance events of the same poll are handled first: see [`Assignment::in_hand`].
    in_hand: Option<(String, i32, i64)>,
}

impl Assignment {
    /// True when `topic`/`partition` is assigned.
    pub fn contains(&self, topic: &str, partition: i32) -> bool {
        self.parts
            .get(topic)
            .is_some_and(|s| s.contains_key(&partition))
    }

    /// True when no partition is assigned.
    pub fn is_empty(&self) -> bool {
        self.parts.values().all(FxHashMap::is_empty)
    }

    /// Assigns a partition whose processing starts at `from` (the committed offset the state
    /// was rebuilt to; `None`: no commit, anything goes).
    pub fn add(&mut self, (t, p): TopicPartition, from: Option<i64>) {
        self.parts
            .entry(t)
            .or_default()
            .insert(p, from.unwrap_or(i64::MIN));
    }

    /// Forgets a partition.
    pub fn remove(&mut self, (t, p): &TopicPartition) {
        if let Some(s) = self.parts.get_mut(t.as_str()) {
            s.remove(p);
        }
    }

    /// The record (topic, partition, offset) the consumer has returned but the loop has not
    /// handled, while rebalance events are handed to the hooks.
    ///
    /// librdkafka moves a partition's position past a record when it returns it, so during
    /// those hooks the position is one past a record that is not processed. A commit taken
    /// from positions (past transaction markers, see `pipeline`) must stop at this offset:
    /// committing the position lost the record when the partition came back to this member
    /// (seen after a session timeout: the revocation's commit went through, the record was then
    /// skipped as not assigned, and the new assignment started after it).
    pub fn in_hand(&self) -> Option<(&str, i32, i64)> {
        self.in_hand.as_ref().map(|(t, p, o)| (t.as_str(), *p, *o))
    }

    /// Sets (or clears) the record in hand.
    pub(crate) fn hold(&mut self, record: Option<(String, i32, i64)>) {
        self.in_hand = record;
    }

    /// True when the record at `offset` is to be processed now (assigned, not below the
    /// floor); the floor then moves past it.
    pub fn admit(&mut self, topic: &str, partition: i32, offset: i64) -> bool {
        match self
            .parts
            .get_mut(topic)
            .and_then(|s| s.get_mut(&partition))
        {
            Some(floor) if offset >= *floor => {
                *floor = offset + 1;
                true
            }
            _ => false,
        }
    }
}

/// The consume-loop driver: the consumer, the assignment with its floors, and the counters
/// every loop keeps.
pub struct Driver<'c> {
    consumer: &'c LoopConsumer,
    metrics: Metrics,
    assigned: Assignment,
    records_in: FxHashMap<String, Counter>,
    recv_errors: u32,
    last_poll: Instant,
}

impl<'c> Driver<'c> {
    /// A driver over `consumer`, counting into `metrics`.
    pub fn new(consumer: &'c LoopConsumer, metrics: Metrics) -> Self {
        Self {
            consumer,
            metrics,
            assigned: Assignment::default(),
            records_in: FxHashMap::default(),
            recv_errors: 0,
            last_poll: Instant::now(),
        }
    }

    /// The consumer (commits, positions, seeks).
    pub fn consumer(&self) -> &'c LoopConsumer {
        self.consumer
    }

    /// The metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The partitions the loop processes, with their floors.
    pub fn assignment(&self) -> &Assignment {
        &self.assigned
    }

    /// Time since the consumer was last polled.
    pub fn since_poll(&self) -> Duration {
        self.last_poll.elapsed()
    }

    /// Hands the rebalance events the consumer recorded since the last call to `h`, oldest
    /// first, keeping the assignment in step (see the module docs).
    ///
    /// # Errors
    /// The hooks' errors.
    pub async fn rebalance<H: Hooks>(&mut self, h: &mut H) -> Result<(), H::Error> {
        self.rebalance_holding(h, None).await
    }

    /// [`Driver::rebalance`] while `held`, returned by the same poll, waits to be handled (or
    /// is left unprocessed): the hooks see it as [`Assignment::in_hand`].
    ///
    /// Until none is left: a hook that polls while it blocks (the rebuild's keep-alive) serves
    /// rebalances, recorded meanwhile; they are handled here, in order, before `held` or any
    /// other record (a partition revoked during its rebuild is revoked before it processes).
    async fn rebalance_holding<H: Hooks>(
        &mut self,
        h: &mut H,
        held: Option<&BorrowedMessage<'_>>,
    ) -> Result<(), H::Error> {
        loop {
            let events = self.consumer.context().take_events();
            if events.is_empty() {
                return Ok(());
            }
            self.assigned
                .hold(held.map(|m| (m.topic().to_owned(), m.partition(), m.offset())));
            let handled = self.handle_events(h, events).await;
            self.assigned.hold(None);
            handled?;
        }
    }

    async fn handle_events<H: Hooks>(
        &mut self,
        h: &mut H,
        events: Vec<RebalanceEvent>,
    ) -> Result<(), H::Error> {
        for ev in events {
            match ev {
                RebalanceEvent::Revoked(parts) => {
                    h.on_revoked(self, &parts).await?;
                    for tp in &parts {
                        self.assigned.remove(tp);
                    }
                }
                RebalanceEvent::Assigned(parts) => {
                    let floors = h.on_assigned(self, &parts).await?;
                    for (i, tp) in parts.into_iter().enumerate() {
                        self.assigned.add(tp, floors.get(i).copied().flatten());
                    }
                }
            }
        }
        Ok(())
    }

    /// Rebalance events first, then `msg` to [`Hooks::on_message`] when the floor admits it.
    async fn deliver<H: Hooks>(
        &mut self,
        h: &mut H,
        msg: &BorrowedMessage<'_>,
    ) -> Result<(), H::Error> {
        self.rebalance_holding(h, Some(msg)).await?;
        let rec = if h.reads_headers() {
            ConsumedRecord::from_kafka(msg)
        } else {
            ConsumedRecord::from_kafka_without_headers(msg)
        };
        if !self.assigned.admit(rec.topic, rec.partition, rec.offset) {
            // Revoked since it was fetched (its new owner processes it), or below the offset
            // the state was rebuilt to (already applied; see `Assignment`).
            self.metrics.skipped_below_floor.inc();
            return Ok(());
        }
        match self.records_in.get(rec.topic) {
            Some(c) => {
                c.inc();
            }
            None => {
                let c = self
                    .metrics
                    .records_in
                    .get_or_create(&TopicLabel {
                        topic: rec.topic.to_owned(),
                    })
                    .clone();
                c.inc();
                self.records_in.insert(rec.topic.to_owned(), c);
            }
        }
        h.on_message(self, &rec).await
    }

    /// Polls the consumer once without waiting (keeps the membership alive), handles the
    /// rebalance events it served and, when `handle`, the record it returned. With `handle`
    /// false (stopping) a record is left unprocessed: it is read again after a restart or by
    /// the next owner, since nothing commits it.
    ///
    /// # Errors
    /// The hooks' errors.
    pub async fn poll_now<H: Hooks>(
        &mut self,
        h: &mut H,
        handle: bool,
    ) -> Result<Polled, H::Error> {
        let consumer = self.consumer;
        let polled = tokio::time::timeout(Duration::ZERO, consumer.recv()).await;
        self.last_poll = Instant::now();
        match polled {
            Ok(Ok(msg)) if handle => {
                self.deliver(h, &msg).await?;
                Ok(Polled::Record)
            }
            Ok(Ok(msg)) => {
                self.rebalance_holding(h, Some(&msg)).await?;
                Ok(Polled::Record)
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "consume error");
                self.rebalance(h).await?;
                Ok(Polled::Error)
            }
            Err(_) => {
                self.rebalance(h).await?;
                Ok(Polled::Nothing)
            }
        }
    }

    /// The next record, waiting out consume errors (a broker outage, a fetch error) with
    /// exponential backoff from 200 ms up to 12.8 s. Cancel-safe (a `select!` branch).
    async fn next(consumer: &'c LoopConsumer, errors: &mut u32) -> BorrowedMessage<'c> {
        loop {
            match consumer.recv().await {
                Ok(m) => {
                    *errors = 0;
                    return m;
                }
                Err(e) => {
                    *errors += 1;
                    let d = Duration::from_millis(100 * 2u64.pow((*errors).min(7)));
                    if e.rdkafka_error_code() == Some(RDKafkaErrorCode::PollExceeded) {
                        tracing::error!(error = %e, "left the consumer group: the loop did not poll within max.poll.interval.ms; it rejoins, and its partitions are rebuilt again");
                    }
                    tracing::warn!(error = %e, retry_in = ?d, "consume error");
                    tokio::time::sleep(d).await;
                }
            }
        }
    }

    /// Hands up to [`TURN_RECORDS`] − 1 more records that librdkafka has fetched already to
    /// the hooks, without waiting, in the same turn as the record just received.
    ///
    /// One record per turn would pay the turn's fixed cost (the `select!` over shutdown, tick
    /// and receive, a tokio timer check, the liveness beat) per record, and spread the
    /// outputs of a fetched batch over more time, so the producer's broker thread wakes more
    /// often for fewer records (librdkafka wakes it when a partition's queue goes from empty
    /// to one message). A consume error ends the batch; the next turn's receive backs off.
    async fn deliver_fetched<H: Hooks>(
        &mut self,
        h: &mut H,
        shutdown: &CancellationToken,
    ) -> Result<(), H::Error> {
        let consumer = self.consumer;
        for _ in 1..TURN_RECORDS {
            if shutdown.is_cancelled() || !h.take_more() {
                break;
            }
            match consumer.recv().now_or_never() {
                Some(Ok(msg)) => self.deliver(h, &msg).await?,
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "consume error");
                    break;
                }
                None => break,
            }
        }
        Ok(())
    }

    /// Subscribes to the hooks' topics and runs the loop until `shutdown` is cancelled, then
    /// calls [`Hooks::on_shutdown`]. `tick` is the period of [`Hooks::on_tick`] (a late tick
    /// is delayed, never bunched).
    ///
    /// # Errors
    /// [`SubscribeError`] (through `H::Error`) and the hooks' errors; the loop stops at the
    /// first.
    pub async fn run<H: Hooks>(
        mut self,
        h: &mut H,
        tick: Duration,
        shutdown: CancellationToken,
    ) -> Result<(), H::Error> {
        let topics = h.topics();
        let refs: Vec<&str> = topics.iter().map(String::as_str).collect();
        self.consumer
            .subscribe(&refs)
            .map_err(|source| SubscribeError {
                topics: topics.clone(),
                source,
            })?;
        tracing::info!(?topics, "subscribed");
        self.metrics.set_ready(true);
        self.metrics.beat();
        let mut ticker = tokio::time::interval(tick);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let consumer = self.consumer;
        let mut recv_errors = self.recv_errors;
        loop {
            let busy = h.busy();
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                _ = ticker.tick() => {
                    self.rebalance(h).await?;
                    h.on_tick(&mut self).await?;
                }
                msg = Self::next(consumer, &mut recv_errors) => {
                    self.deliver(h, &msg).await?;
                    self.deliver_fetched(h, &shutdown).await?;
                    self.last_poll = Instant::now();
                }
                // Polled after recv (biased): with work queued the turn goes on without
                // waiting for a record.
                () = std::future::ready(()), if busy => {}
            }
            h.after_turn(&mut self).await?;
            self.metrics.beat();
        }
        self.recv_errors = recv_errors;
        self.metrics.set_ready(false);
        h.on_shutdown(&mut self).await
    }
}

#[cfg(test)]
mod tests {
    use super::Assignment;

    #[test]
    fn a_partition_never_processes_below_its_floor() {
        let mut a = Assignment::default();
        assert!(a.is_empty());
        a.add(("SZ".into(), 0), Some(100));
        a.add(("SZ".into(), 1), None);
        assert!(!a.is_empty() && a.contains("SZ", 1) && !a.contains("SZ", 2));
        // librdkafka started at the older commit 90: 90..99 are in the rebuilt state.
        assert!((90..100).all(|o| !a.admit("SZ", 0, o)));
        assert!(a.admit("SZ", 0, 100));
        // A record fetched again (prefetched before a revoke) is not applied twice.
        assert!(!a.admit("SZ", 0, 100));
        assert!(a.admit("SZ", 0, 101));
        assert!(a.admit("SZ", 1, 0) && a.admit("SZ", 1, 5));
        assert!(!a.admit("SZ", 2, 0) && !a.admit("FA", 0, 200));
        a.remove(&("SZ".into(), 0));
        assert!(!a.admit("SZ", 0, 500));
        // Assigned again later: the new floor.
        a.add(("SZ".into(), 0), Some(400));
        assert!(!a.admit("SZ", 0, 399) && a.admit("SZ", 0, 400));
    }
}
