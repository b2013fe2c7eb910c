//! The processors' consume → process → produce → commit hooks on the shared consume-loop
//! driver ([`crate::driver`], which also drives the GCS sink).
//!
//! ```text
//!   Driver (select! { shutdown | commit tick | recv }, rebalance events, floors, liveness)
//!      on_revoked  ─► flush + commit their progress ─► Processor::on_revoked
//!      on_assigned ─► committed offsets ─► pause ─► Processor::on_assigned (rebuild, polling
//!                     the group: KeepAlive) ─► resume ─► seek ─► floors
//!      on_message  ─► Processor::process(ConsumedRecord, outputs: held for the turn)
//!                  ─► OffsetTracker.mark(record)
//!      after_turn  ─► Emitter (the turn's outputs enqueued together, not awaited)
//!      on_tick     ─► at-least-once: enqueue held outputs ─► snapshot the marked offsets,
//!                     tagged with the emitter's epoch ─► commit (async) the snapshots whose
//!                     epoch is delivered; the loop never waits (a failed delivery: flush)
//!                  ─► exactly-once: flush
//!      on_revoked / on_shutdown / too many in flight ─► flush
//!   flush: enqueue held outputs ─► await every delivery (retry failures with exponential backoff + jitter, bounded)
//!          ─► commit the marked offsets and the snapshots (sync, or in the transaction with
//!             --exactly-once) ─► only then are they considered done
//! ```
//!
//! A crash between produce and commit re-processes records since the last commit; outputs
//! are deterministic functions of the input and of state rebuilt from the topic, so repeats
//! are exact. Revoked partitions' records still in flight are dropped (not committed) and
//! re-processed by the new owner.

use crate::consumer::{LoopConsumer, TopicPartition, tpl_entries, tpl_offsets, tpl_pairs};
use crate::driver::{Assignment, Driver, Hooks};
use crate::emitter::{Emitter, LoopProducer, RetryPolicy};
use crate::error::PipelineError;
use crate::keepalive::KeepAlive;
use crate::metrics::Metrics;
use crate::output::Output;
use crate::processor::{LoopConfig, Processor};
use crate::record::ConsumedRecord;
use crate::task::OffsetTracker;
use backon::BackoffBuilder;
use rdkafka::consumer::{CommitMode, Consumer, ConsumerGroupMetadata};
use rdkafka::error::KafkaError;
use rdkafka::producer::Producer;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};
use rustc_hash::{FxHashMap, FxHashSet};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

const TXN_TIMEOUT: Duration = Duration::from_secs(30);

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
    /// Partitions this loop paused for the processor ([`Processor::pause_changes`]), and
    /// those the processor last asked to have paused.
    paused: FxHashSet<TopicPartition>,
    want_paused: FxHashSet<TopicPartition>,
    /// Per partition, the lowest offset a rebuild's keep-alive poll returned and dropped,
    /// until that partition's assignment is handled (see [`KeepAlive`]).
    rewinds: FxHashMap<TopicPartition, i64>,
    /// The committed offset each partition was last rebuilt from (repeats are counted).
    last_rebuilt: FxHashMap<TopicPartition, i64>,
    /// At-least-once commit snapshots taken on flush ticks, oldest first, each with the
    /// emitter epoch its records' outputs were enqueued in: committed once that epoch is
    /// delivered ([`LoopState::commit_delivered`]).
    snapshots: std::collections::VecDeque<(u64, Vec<(TopicPartition, i64)>)>,
    /// The largest offset each partition's commit asked for: committed again after a failed
    /// commit (never an older one: the coordinator applies commits in order).
    asked: FxHashMap<TopicPartition, i64>,
}

impl<P: Processor> LoopState<'_, P> {
    /// Exactly-once commit: the consumed offsets join the open transaction, which commits
    /// atomically with every output produced in it; then the next transaction begins. On
    /// failure the transaction is aborted (its purged records forgotten) and the error
    /// returned.
    async fn commit_transaction(&mut self, tpl: &TopicPartitionList) -> Result<(), PipelineError> {
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
                self.abort_transaction().await;
                Err(PipelineError::Transaction(e))
            }
        }
    }

    /// Aborts the open transaction: none of its outputs becomes visible and its offsets are
    /// not committed. The records the abort purged from the producer's queues come back as
    /// failed deliveries; they are forgotten, never sent in the next transaction.
    async fn abort_transaction(&mut self) {
        let producer = self.emitter.producer.clone();
        if let Err(e) = tokio::task::block_in_place(|| producer.abort_transaction(TXN_TIMEOUT)) {
            tracing::warn!(error = %e, "aborting the transaction failed");
        }
        self.emitter.discard_aborted().await;
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

    /// The flush tick's at-least-once commit, which does not stop the loop: the offsets
    /// processed so far are a snapshot tagged with the emitter's epoch (every output of those
    /// records is enqueued in it or before it), and every earlier snapshot whose epoch is now
    /// delivered is committed asynchronously. An offset is still committed only once every
    /// output derived from it is acknowledged, but the loop goes on consuming meanwhile, where
    /// awaiting every delivery and a synchronous commit held each input record that arrived
    /// during them for tens to hundreds of ms every tick (the window-processor's hop:
    /// p90 99 ms, p99 500 ms at 4,000 SZ/s, issue 31). A failed delivery, or too many epochs
    /// open, falls back to [`LoopState::flush`].
    async fn flush_tick(&mut self, assigned: &Assignment) -> Result<(), PipelineError> {
        if self.exactly_once {
            return self.flush(assigned).await;
        }
        self.send_outputs().await?;
        if !self.emitter.take_reports() {
            return self.flush(assigned).await;
        }
        let Some(epoch) = self.emitter.close_epoch() else {
            return self.flush(assigned).await;
        };
        let tpl = self.take_offsets(assigned);
        if tpl.count() > 0 {
            self.snapshots.push_back((epoch, tpl_entries(&tpl)));
        }
        self.commit_delivered(assigned)
    }

    /// Commits (asynchronously) every snapshot whose epoch is delivered, merged: per
    /// partition the largest offset, assigned partitions only.
    fn commit_delivered(&mut self, assigned: &Assignment) -> Result<(), PipelineError> {
        let mut merged: FxHashMap<TopicPartition, i64> = FxHashMap::default();
        while let Some((e, _)) = self.snapshots.front() {
            if !self.emitter.delivered_through(*e) {
                break;
            }
            if let Some((_, entries)) = self.snapshots.pop_front() {
                merge_offsets(&mut merged, entries);
            }
        }
        for tp in self.consumer.context().take_failed_commits() {
            if let Some(&o) = self.asked.get(&tp) {
                merge_offsets(&mut merged, [(tp, o)]);
            }
        }
        let tpl = offsets_tpl(&merged, assigned);
        if tpl.count() == 0 {
            return Ok(());
        }
        merge_offsets(&mut self.asked, tpl_entries(&tpl));
        let result = self.consumer.commit(&tpl, CommitMode::Async);
        self.committed(result)
    }

    /// The outcome of an offset commit (at-least-once): counted, or a refusal during a
    /// rebalance logged and let go (the partitions moved: the new owner re-processes from the
    /// last commit), or the error.
    fn committed(&self, result: rdkafka::error::KafkaResult<()>) -> Result<(), PipelineError> {
        match result {
            Ok(()) => {
                self.metrics.commits.inc();
                Ok(())
            }
            Err(e) if is_rebalance_commit_error(&e) => {
                tracing::warn!(
                    error = %e,
                    "commit refused during a rebalance; records will be re-processed by the new owner"
                );
                Ok(())
            }
            Err(e) => Err(PipelineError::Commit(e)),
        }
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
            if !self.exactly_once {
                // Not sent again out of order: the restart re-processes from the last commit.
                return Err(e);
            }
            self.abort_transaction().await;
            self.metrics.transactions_aborted.inc();
            if !revoking {
                return Err(e);
            }
            tracing::warn!(error = %e, "delivery failed while partitions were revoked; transaction aborted");
            self.take_offsets(assigned);
            return self.restart_transaction();
        }
        let tpl = self.take_offsets(assigned);
        // Every delivery is in: the tick's snapshots not committed yet go with this commit.
        let tpl = if self.snapshots.is_empty() {
            tpl
        } else {
            let mut merged = FxHashMap::default();
            for (_, entries) in self.snapshots.drain(..) {
                merge_offsets(&mut merged, entries);
            }
            merge_offsets(&mut merged, tpl_entries(&tpl));
            offsets_tpl(&merged, assigned)
        };
        if tpl.count() == 0 {
            return Ok(());
        }
        if self.exactly_once {
            return match self.commit_transaction(&tpl).await {
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
        merge_offsets(&mut self.asked, tpl_entries(&tpl));
        let consumer = self.consumer;
        let result = tokio::task::block_in_place(|| consumer.commit(&tpl, CommitMode::Sync));
        self.committed(result)
    }

    /// Counts and logs a rebuild that starts from the same committed offset as this process's
    /// previous rebuild of a partition while records wait beyond it: the previous assignment
    /// made no progress there. A member evicted during its rebuilds (`max.poll.interval.ms`)
    /// loops like this with `/health` green; `sensorflow_rebuild_repeats_total` shows it.
    fn count_repeated_rebuilds(&mut self, committed: &[(TopicPartition, Option<i64>)]) {
        let ctx = self.consumer.context();
        let repeated: Vec<&TopicPartition> = committed
            .iter()
            .filter(|(tp, c)| {
                c.is_some_and(|c| {
                    self.last_rebuilt.get(tp) == Some(&c)
                        && ctx.end_offset(&tp.0, tp.1).is_some_and(|end| end > c)
                })
            })
            .map(|(tp, _)| tp)
            .collect();
        if !repeated.is_empty() {
            self.metrics.rebuild_repeats.inc();
            tracing::warn!(
                partitions = ?repeated,
                "rebuilding again from the same committed offsets while records wait: the \
                 previous assignment made no progress (evicted from the group during the \
                 rebuild? see max.poll.interval.ms)"
            );
        }
        for (tp, c) in committed {
            match c {
                Some(c) => self.last_rebuilt.insert(tp.clone(), *c),
                None => self.last_rebuilt.remove(tp),
            };
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
    ///
    /// `must`: a record of these partitions was returned during the rebuild and not processed
    /// ([`KeepAlive`]); the position is past it, and the loop commits positions, so a failed
    /// seek is an error (the loop stops uncommitted) instead of a warning.
    async fn seek_to_rebuilt(
        &mut self,
        committed: &[(TopicPartition, Option<i64>)],
        must: bool,
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
            Err(e) if must => return Err(PipelineError::Commit(e)),
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

/// Merges commit entries into `into`, keeping each partition's largest offset.
fn merge_offsets(
    into: &mut FxHashMap<TopicPartition, i64>,
    entries: impl IntoIterator<Item = (TopicPartition, i64)>,
) {
    for (tp, o) in entries {
        let e = into.entry(tp).or_insert(o);
        *e = (*e).max(o);
    }
}

/// A commit list of the entries whose partition is assigned.
fn offsets_tpl(
    offsets: &FxHashMap<TopicPartition, i64>,
    assigned: &Assignment,
) -> TopicPartitionList {
    let mut tpl = TopicPartitionList::new();
    for ((t, p), o) in offsets {
        if assigned.contains(t, *p) {
            let _ = tpl.add_partition_offset(t, *p, Offset::Offset(*o));
        }
    }
    tpl
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
            self.asked.remove(tp);
            // A partition assigned again starts unpaused (librdkafka's new assignment).
            self.paused.remove(tp);
            self.want_paused.remove(tp);
        }
        self.processor.on_revoked(parts);
        Ok(())
    }

    /// Reads the committed offsets (retrying a partition's own error, e.g.
    /// UNSTABLE_OFFSET_COMMIT while a transaction that commits its offsets is still completing,
    /// KIP-447), rebuilds state up to them while polling the group with the partitions paused
    /// ([`KeepAlive`]), seeks there, and returns them as the floors. The group metadata of this
    /// assignment is adopted for exactly-once commits when its handling begins: a rebalance the
    /// rebuild's polls serve records the next generation's.
    async fn on_assigned(
        &mut self,
        _d: &mut Driver<'_>,
        parts: &[TopicPartition],
    ) -> Result<Vec<Option<i64>>, PipelineError> {
        let consumer = self.consumer;
        self.txn_metadata = consumer.context().assignment_metadata();
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
        self.count_repeated_rebuilds(&committed);
        self.metrics.set_ready(false);
        self.metrics.beat();
        let processor = &mut *self.processor;
        self.metrics.rebuild_in_progress.set(1);
        let keep_alive = KeepAlive::pause(consumer, parts);
        let rebuilt = tokio::task::block_in_place(|| {
            processor.on_assigned(&committed, &|| keep_alive.poll())
        });
        let polls = keep_alive.polls();
        let kept = keep_alive.resume();
        self.metrics.rebuild_in_progress.set(0);
        for (tp, o) in kept.rewinds() {
            self.rewinds
                .entry(tp.clone())
                .and_modify(|r| *r = (*r).min(*o))
                .or_insert(*o);
        }
        if let Err(PipelineError::Rebuild(e)) = &rebuilt {
            e.count_failure(&self.metrics);
        }
        rebuilt?;
        tracing::debug!(polls, paused = ?kept.partitions(), "group polled while rebuilding");
        self.metrics.beat();
        // Where each partition resumes: its committed offset (the floor), or, without one, the
        // first record a keep-alive poll returned and dropped.
        let rewinds: Vec<(TopicPartition, Option<i64>)> = committed
            .iter()
            .map(|(tp, c)| (tp.clone(), c.or_else(|| self.rewinds.get(tp).copied())))
            .collect();
        let must = parts.iter().any(|tp| self.rewinds.contains_key(tp));
        for tp in parts {
            self.rewinds.remove(tp);
        }
        self.seek_to_rebuilt(&rewinds, must).await?;
        let from: FxHashMap<TopicPartition, i64> = committed
            .into_iter()
            .filter_map(|(tp, c)| c.map(|c| (tp, c)))
            .collect();
        for tp in parts {
            self.offsets.forget(tp);
        }
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

    async fn after_turn(&mut self, d: &mut Driver<'_>) -> Result<(), PipelineError> {
        self.follow_pauses(d.assignment());
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
        self.follow_pauses(d.assignment());
        self.flush_tick(d.assignment()).await?;
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

impl<P: Processor> LoopState<'_, P> {
    /// Pauses the assigned partitions the processor lists ([`Processor::pause_changes`]) and
    /// resumes those it no longer lists. librdkafka drops what it fetched of a paused partition and
    /// fetches again from the position (the last record handed to the loop + 1) on resume, so
    /// nothing is skipped. A failed call is logged and tried again after the next turn.
    fn follow_pauses(&mut self, assigned: &Assignment) {
        if let Some(listed) = self.processor.pause_changes() {
            self.want_paused = listed.into_iter().collect();
        }
        let want: FxHashSet<TopicPartition> = self
            .want_paused
            .iter()
            .filter(|(t, p)| assigned.contains(t, *p))
            .cloned()
            .collect();
        if want == self.paused {
            return;
        }
        let list = |tps: &mut dyn Iterator<Item = &TopicPartition>| {
            let mut tpl = TopicPartitionList::new();
            for (t, p) in tps {
                tpl.add_partition(t, *p);
            }
            tpl
        };
        let pause = list(&mut want.difference(&self.paused));
        let resume = list(&mut self.paused.difference(&want));
        if pause.count() > 0 {
            match self.consumer.pause(&pause) {
                Ok(()) => {
                    tracing::info!(partitions = ?tpl_pairs(&pause), "paused (watermark alignment)")
                }
                Err(e) => {
                    tracing::warn!(error = %e, "pausing partitions failed; trying again after the next turn");
                    return;
                }
            }
        }
        if resume.count() > 0 {
            match self.consumer.resume(&resume) {
                Ok(()) => tracing::info!(partitions = ?tpl_pairs(&resume), "resumed"),
                Err(e) => {
                    tracing::warn!(error = %e, "resuming partitions failed; trying again after the next turn");
                    self.paused.extend(tpl_pairs(&pause));
                    return;
                }
            }
        }
        self.metrics.paused_partitions.set(want.len() as i64);
        self.paused = want;
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
    if let Some(guard) = processor.output_guard() {
        emitter.set_guard(guard);
    }
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
        paused: FxHashSet::default(),
        want_paused: FxHashSet::default(),
        rewinds: FxHashMap::default(),
        last_rebuilt: FxHashMap::default(),
        snapshots: std::collections::VecDeque::new(),
        asked: FxHashMap::default(),
    };
    Driver::new(consumer, metrics)
        .run(&mut st, cfg.commit_interval, shutdown)
        .await
}
