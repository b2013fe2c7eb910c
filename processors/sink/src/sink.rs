//! The sink loop: consume → rows → Parquet objects → commit, and where a new owner resumes.
//!
//! Every per-partition decision is made by the pure [`PartitionWriter`] (see `partition`);
//! this module executes them: uploads through the store, dead letters through the emitter,
//! commits (with the chain metadata) through the driver's consumer, with the bounds below.
//!
//! ```text
//!   select! { shutdown | tick (cut aged ranges) | recv | uploads queued }
//!     recv ─► rebalance events ─► revoked: commit what is stored, drop open and queued files
//!                                 assigned: fetch the committed offset and its metadata ─►
//!                                   a writer resuming that chain of ranges, reading from there
//!          ─► writer: one hour too many for the open range? seal it, open one at this record
//!          ─► writer: decode ─► row (or rejected: dead-letter topic with the reason)
//!          ─► writer: range full (records/bytes) or a committed cut here? ─► sealed
//!          ─► memory over budget? cut the largest open range (a time cut)
//!          ─► queue the sealed files' uploads
//!   then, bounded per turn: for each queued file, while the turn's budget lasts:
//!     records fetched meanwhile move on if the last poll is older than the keep-alive
//!     a time cut at or before it not committed yet? commit first (else wait)
//!     await dead letters ─► encode
//!     ─► poll (handling what it returns) until the last poll is younger than the keep-alive
//!     ─► still assigned (no revoke, assignment not lost)? else drop it
//!     ─► create-only upload (retried; "exists" = stored) ─► writer: stored
//!   then commit each writer's committable offset and metadata (a refused commit is retried
//!   with backoff)
//! ```
//!
//! **Same ranges, same objects.** Where a range ends is a function of the records from its
//! first offset (records, bytes, hours) or a time cut recorded in the commit metadata before
//! anything at or after it is uploaded. A member that loses a partition mid-upload (session
//! expired, evicted) and a member that resumes from the last commit therefore make the same
//! ranges: a late upload of the old one and the new one's upload have the same name and the
//! same rows, and the create-only precondition keeps one. The old member cannot commit a new
//! cut once the group moved on (commits are fenced by the generation), so it never uploads a
//! range the new one would cut differently.
//!
//! **Why the bounds.** A consumer that does not poll for `max.poll.interval.ms` leaves its
//! group and a new owner re-reads its partitions from the last commit, so no store operation
//! starts more than `max.poll.interval.ms / 10` after a poll (an upload polls first if the last
//! poll is older), one operation with its retries is cut off at 7/10 of the interval, and a
//! file is uploaded only while its partition is still assigned
//! ([`rdkafka::consumer::Consumer::assignment_lost`] and the revokes seen by the last poll).
//! These keep a slow store from costing the partitions (and re-reading them); the ranges being
//! the same makes a late upload harmless when it happens anyway.

use crate::encode::{EncodeConfig, EncodeError, encode};
use crate::layout::Layout;
use crate::ledger::{Commit, Resume};
use crate::metrics::{DropLabel, FileLabel, ObjectLabel, SinkMetrics};
use crate::partition::{Outcome, PartitionWriter, SealError, SealedFile, WriterConfig};
use crate::rotation::{Reason, Rotation, over_budget};
use crate::rows::{Kind, RawHeaders, Record};
use crate::store::{ObjectStore, StoreError};
use backon::{ExponentialBuilder, Retryable};
use bytes::Bytes;
use rdkafka::consumer::{CommitMode, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::{Offset, TopicPartitionList};
use rustc_hash::FxHashMap;
use sensorflow_core::wire::Framing;
use sensorflow_runtime::consumer::LoopConsumer;
use sensorflow_runtime::dlq;
use sensorflow_runtime::driver::{Driver, Hooks, Polled, SubscribeError};
use sensorflow_runtime::emitter::Emitter;
use sensorflow_runtime::error::PipelineError;
use sensorflow_runtime::metrics::{Metrics, TopicLabel};
use sensorflow_runtime::record::ConsumedRecord;
use serde::Serialize;
use std::collections::VecDeque;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// A failure the sink cannot recover from by itself: the process exits non-zero without
/// committing what is not stored, and a restart resumes from the last commit.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// Subscribing failed.
    #[error("subscribing to {topics:?} failed: {source}")]
    Subscribe {
        /// Topics.
        topics: Vec<String>,
        /// Cause.
        source: KafkaError,
    },
    /// Committing offsets failed after every retry.
    #[error("committing offsets {offsets} failed {attempts} times: {source}")]
    Commit {
        /// `topic/partition@offset` list.
        offsets: String,
        /// Attempts made.
        attempts: u32,
        /// Last cause.
        source: KafkaError,
    },
    /// A store operation failed after every retry.
    #[error("{object}: giving up after {attempts} attempts: {source}")]
    Store {
        /// Object URL.
        object: String,
        /// Attempts made.
        attempts: usize,
        /// Last error (boxed: it is large, and errors travel through every call of the loop).
        source: Box<StoreError>,
    },
    /// A store operation and its retries exceeded the deadline.
    #[error("{object}: no success within {deadline:?} (retries included)")]
    Deadline {
        /// Object URL.
        object: String,
        /// The deadline.
        deadline: Duration,
    },
    /// Encoding a file failed.
    #[error("encoding {object} failed: {source}")]
    Encode {
        /// Object URL.
        object: String,
        /// Cause.
        source: EncodeError,
    },
    /// Dead-lettering failed after retries.
    #[error(transparent)]
    DeadLetter(#[from] PipelineError),
    /// The committed offsets of newly assigned partitions could not be read.
    #[error("reading the committed offsets of {partitions} failed {attempts} times: {source}")]
    Resume {
        /// `topic/partition` list.
        partitions: String,
        /// Attempts made.
        attempts: u32,
        /// Last cause.
        source: KafkaError,
    },
}

impl From<SubscribeError> for SinkError {
    fn from(e: SubscribeError) -> Self {
        SinkError::Subscribe {
            topics: e.topics,
            source: e.source,
        }
    }
}

/// How store errors are retried: exponential backoff with jitter, bounded in delay and count.
#[derive(Debug, Clone, Copy)]
pub struct RetryConfig {
    /// First delay.
    pub min_delay: Duration,
    /// Largest delay.
    pub max_delay: Duration,
    /// Retries after the first attempt.
    pub max_retries: usize,
    /// Time limit of one operation with all its retries. The sink also caps it at 7/10 of
    /// the consumer's `max.poll.interval.ms`: the loop does not poll while it waits, and a
    /// member that stops polling longer loses its partitions.
    pub deadline: Duration,
}

impl Default for RetryConfig {
    /// 0.2 s doubling to 20 s, 12 retries (about two minutes of outage), at most 240 s.
    fn default() -> Self {
        Self {
            min_delay: Duration::from_millis(200),
            max_delay: Duration::from_secs(20),
            max_retries: 12,
            deadline: Duration::from_secs(240),
        }
    }
}

/// Sink settings.
#[derive(Debug, Clone)]
pub struct SinkConfig {
    /// Topics to archive with their decoding.
    pub topics: Vec<(String, Kind)>,
    /// Value framing.
    pub framing: Framing,
    /// Object names.
    pub layout: Layout,
    /// Rotation: the deterministic limits of the ranges and their wall-clock age.
    pub rotation: Rotation,
    /// Parquet settings.
    pub encode: EncodeConfig,
    /// Input bytes buffered across all open ranges and queued files before the largest open
    /// range is cut early.
    pub max_buffer_bytes: u64,
    /// Dead-letter topic for undecodable records.
    pub dead_letter_topic: String,
    /// Store retries.
    pub retry: RetryConfig,
    /// The consumer's `max.poll.interval.ms`: uploads are paced so the loop polls well within
    /// it (see the module docs).
    pub max_poll_interval: Duration,
    /// Consecutive refused offset commits (other than by a rebalance) retried before the sink
    /// gives up and exits non-zero.
    pub commit_retries: u32,
}

impl SinkConfig {
    /// Store work started after a poll, at most, before the loop polls again.
    pub fn keepalive(&self) -> Duration {
        self.max_poll_interval / 10
    }

    /// Time limit of one store operation with its retries.
    pub fn op_deadline(&self) -> Duration {
        self.retry.deadline.min(self.max_poll_interval * 7 / 10)
    }
}

/// A fault injected into offset commits (tests): called with the offsets about to be
/// committed; `Some(error)` makes that commit fail with it instead of reaching the broker.
pub type CommitFault = Box<dyn FnMut(&TopicPartitionList) -> Option<KafkaError> + Send + Sync>;

/// What a run did (also written as JSON with `--summary-json`).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Summary {
    /// Records consumed (including dead-lettered ones).
    pub records_in: u64,
    /// Rows in finalised objects.
    pub rows_written: u64,
    /// Objects finalised.
    pub files_written: u64,
    /// Compressed bytes of those objects.
    pub bytes_written: u64,
    /// Records sent to the dead-letter topic.
    pub dead_lettered: u64,
    /// Store operations retried.
    pub retries: u64,
    /// Uploads refused because the object existed already (counted as stored): the same range
    /// stored by an earlier run or another member.
    pub already_stored: u64,
    /// Time cuts made (age, memory, shutdown), each committed before its upload.
    pub time_cuts: u64,
    /// Offset commits refused and retried.
    pub commit_retries: u64,
    /// Open or sealed files dropped without an upload (partition revoked, assignment lost).
    pub dropped_files: u64,
    /// The last committed object per topic.
    pub last_objects: std::collections::BTreeMap<String, String>,
    /// Where the objects are (`gs://bucket/prefix` or `file:///dir/prefix`).
    pub location: String,
}

/// The sink: owns the partitions' writers, the upload queue, the store and the dead-letter
/// emitter.
pub struct Sink<S: ObjectStore> {
    cfg: SinkConfig,
    store: S,
    metrics: Metrics,
    sm: SinkMetrics,
    emitter: Emitter,
    kinds: FxHashMap<String, Kind>,
    /// What every partition's writer shares.
    writer: WriterConfig,
    /// The pure writer of each assigned partition (see `partition`).
    parts: FxHashMap<String, FxHashMap<i32, PartitionWriter>>,
    /// Objects finalised since the last commit: (topic, partition, url), logged once committed.
    uncommitted: Vec<(String, i32, String)>,
    /// Something changed that may advance a commit.
    dirty: bool,
    /// Input bytes in open ranges.
    buffered: u64,
    /// Sealed files, uploaded in this order.
    queue: VecDeque<SealedFile>,
    /// Input bytes in `queue`.
    queued: u64,
    /// Consecutive refused commits, and when the next attempt is due.
    commit_failures: u32,
    commit_retry_at: Option<Instant>,
    commit_fault: Option<CommitFault>,
    summary: Summary,
}

/// Adds `c` (offset and chain metadata) for `t`/`p` to `tpl`.
fn add_commit(tpl: &mut TopicPartitionList, t: &str, p: i32, c: &Commit) {
    if let Ok(mut e) = tpl
        .add_partition_offset(t, p, Offset::Offset(c.offset))
        .map(|()| tpl.find_partition(t, p))
        && let Some(e) = e.as_mut()
    {
        e.set_metadata(c.metadata());
    }
}

/// The high watermark of `t`/`p` (a request to its leader, blocking up to `timeout`); `None`
/// when it cannot be read now (a new topic without a leader yet, a broker away).
fn high_watermark(consumer: &LoopConsumer, t: &str, p: i32, timeout: Duration) -> Option<i64> {
    match tokio::task::block_in_place(|| consumer.fetch_watermarks(t, p, timeout)) {
        Ok((_, high)) => Some(high),
        Err(e) => {
            tracing::debug!(topic = %t, partition = p, error = %e,
                "high watermark not read yet: no time cut in this partition until it is");
            None
        }
    }
}

fn now_ms() -> i64 {
    sensorflow_runtime::now_ms()
}

fn raw_headers(msg: &ConsumedRecord<'_>) -> RawHeaders {
    let mut h = RawHeaders::default();
    for hd in &msg.headers {
        let Some(v) = hd.value.and_then(|v| std::str::from_utf8(v).ok()) else {
            continue;
        };
        match hd.key {
            dlq::REASON => h.reason = Some(v.to_owned()),
            dlq::ERROR => h.error = Some(v.to_owned()),
            dlq::SOURCE_TOPIC => h.source_topic = Some(v.to_owned()),
            dlq::SOURCE_PARTITION => h.source_partition = v.parse().ok(),
            dlq::SOURCE_OFFSET => h.source_offset = v.parse().ok(),
            dlq::SOURCE_TIMESTAMP => h.source_timestamp_ms = v.parse().ok(),
            dlq::PROCESSOR => h.processor = Some(v.to_owned()),
            _ => {}
        }
    }
    h
}

impl<S: ObjectStore> Sink<S> {
    /// A sink writing to `store`, dead-lettering through `emitter`.
    pub fn new(
        cfg: SinkConfig,
        store: S,
        metrics: Metrics,
        sm: SinkMetrics,
        emitter: Emitter,
    ) -> Self {
        let kinds = cfg.topics.iter().cloned().collect();
        let writer = WriterConfig {
            layout: cfg.layout.clone(),
            rotation: cfg.rotation,
            framing: cfg.framing,
        };
        let summary = Summary {
            location: store.url(cfg.layout.prefix()),
            ..Summary::default()
        };
        Self {
            cfg,
            store,
            metrics,
            sm,
            emitter,
            kinds,
            writer,
            parts: FxHashMap::default(),
            uncommitted: Vec::new(),
            dirty: false,
            buffered: 0,
            queue: VecDeque::new(),
            queued: 0,
            commit_failures: 0,
            commit_retry_at: None,
            commit_fault: None,
            summary,
        }
    }

    /// Injects `fault` into every offset commit (tests of the commit retry).
    pub fn with_commit_fault(mut self, fault: CommitFault) -> Self {
        self.commit_fault = Some(fault);
        self
    }

    /// The store.
    pub fn store(&self) -> &S {
        &self.store
    }

    /// Counters so far.
    pub fn summary(&self) -> &Summary {
        &self.summary
    }

    fn backoff(&self) -> ExponentialBuilder {
        ExponentialBuilder::default()
            .with_min_delay(self.cfg.retry.min_delay)
            .with_max_delay(self.cfg.retry.max_delay)
            .with_max_times(self.cfg.retry.max_retries)
            .with_jitter()
    }

    /// Uploads `name` create-only with retries: `Ok(true)` when created, `Ok(false)` when an
    /// object of that name existed already (a retry whose first attempt landed, or another
    /// writer of the same file: the same records).
    async fn put_with_retry(&self, name: &str, data: Bytes) -> Result<(usize, bool), SinkError> {
        let attempts = std::sync::atomic::AtomicUsize::new(0);
        let op = (|| {
            attempts.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            self.store.put(name, data.clone())
        })
        .retry(self.backoff())
        .when(StoreError::is_transient)
        .notify(|e, d| {
            self.sm.upload_retries.inc();
            tracing::warn!(error = %e, retry_in = ?d, "upload failed; retrying");
        });
        let deadline = self.cfg.op_deadline();
        let res = tokio::time::timeout(deadline, op)
            .await
            .map_err(|_| SinkError::Deadline {
                object: self.store.url(name),
                deadline,
            })?;
        let attempts = attempts.into_inner();
        match res {
            Ok(()) => Ok((attempts, true)),
            Err(StoreError::AlreadyExists { .. }) => Ok((attempts, false)),
            Err(source) => Err(SinkError::Store {
                object: self.store.url(name),
                attempts,
                source: Box::new(source),
            }),
        }
    }

    /// A revoked partition commits what is stored (the generation still owns it), then loses
    /// its open and queued files (the next owner re-reads them from that commit and makes the
    /// same ranges).
    fn revoke(&mut self, d: &mut Driver<'_>, parts: &[(String, i32)]) {
        let mut tpl = TopicPartitionList::new();
        for (t, p) in parts {
            if let Some(c) = self.part(t, *p).and_then(|w| w.committable()) {
                add_commit(&mut tpl, t, *p, &c);
            }
        }
        if tpl.count() > 0 {
            let res = tokio::task::block_in_place(|| d.consumer().commit(&tpl, CommitMode::Sync));
            if let Err(e) = res {
                tracing::warn!(error = %e, "committing revoked partitions failed (the next owner re-reads from the previous commit)");
            }
        }
        for (t, p) in parts {
            self.drop_partition(t, *p, "revoked");
        }
        self.update_gauges();
    }

    /// Newly assigned partitions resume the chain of ranges their last commit describes
    /// (offset and metadata, read from the group coordinator after the rebalance, so every
    /// commit an earlier owner made is in it); returns the committed offsets, the floors below
    /// which nothing is handed to the writer.
    async fn assign(
        &mut self,
        d: &mut Driver<'_>,
        parts: &[(String, i32)],
    ) -> Result<Vec<Option<i64>>, SinkError> {
        let consumer = d.consumer();
        let mut tpl = TopicPartitionList::new();
        for (t, p) in parts {
            tpl.add_partition(t, *p);
        }
        let mut attempts = 0u32;
        let committed = loop {
            attempts += 1;
            let timeout = self.cfg.keepalive().max(Duration::from_secs(1));
            match tokio::task::block_in_place(|| consumer.committed_offsets(tpl.clone(), timeout)) {
                Ok(c) => break c,
                Err(source) if attempts >= 3 => {
                    return Err(SinkError::Resume {
                        partitions: parts
                            .iter()
                            .map(|(t, p)| format!("{t}/{p}"))
                            .collect::<Vec<_>>()
                            .join(","),
                        attempts,
                        source,
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, attempts, "reading committed offsets failed; retrying");
                    tokio::time::sleep(Duration::from_millis(200) * attempts).await;
                }
            }
        };
        let mut floors = Vec::with_capacity(parts.len());
        for (t, p) in parts {
            let kind = self.kinds.get(t).copied().unwrap_or(Kind::Raw);
            let mut w = PartitionWriter::new(t, *p, kind, self.writer.clone());
            let elem = committed.find_partition(t, *p);
            let offset = match elem.as_ref().map(|e| e.offset()) {
                Some(Offset::Offset(o)) => Some(o),
                _ => None,
            };
            let resume = elem.as_ref().and_then(|e| Resume::parse(e.metadata()));
            let high = high_watermark(consumer, t, *p, Duration::from_secs(2));
            w.resume(resume.as_ref(), high);
            if resume.is_none() && offset.is_some() {
                tracing::info!(topic = %t, partition = p, ?offset,
                    "no sink metadata in the commit: the chain of ranges starts at the committed offset");
            }
            tracing::debug!(topic = %t, partition = p, ?offset, ?resume, "assigned");
            self.parts.entry(t.clone()).or_default().insert(*p, w);
            floors.push(offset);
        }
        self.update_gauges();
        Ok(floors)
    }

    /// Forgets `topic`/`partition`: its open and sealed files are dropped unuploaded (the next
    /// owner re-reads them from the last commit).
    fn drop_partition(&mut self, t: &str, p: i32, reason: &str) {
        let mut dropped = 0u64;
        if let Some(w) = self.parts.get_mut(t).and_then(|m| m.remove(&p))
            && let Some(f) = w.open_span()
        {
            self.buffered -= f.stats.bytes;
            dropped += f.stats.hours as u64;
            tracing::info!(topic = %t, partition = p, first = f.first, last = f.last, reason,
                "partition gone: dropping the open range (the next owner re-reads it)");
        }
        let before = self.queue.len();
        let mut queued = self.queued;
        self.queue.retain(|f| {
            let keep = !(f.topic == t && f.partition == p);
            if !keep {
                queued -= f.bytes_in;
                tracing::info!(topic = %t, partition = p, first = f.first, last = f.last, reason,
                    "partition gone: dropping a sealed file before its upload (the next owner re-reads it)");
            }
            keep
        });
        self.queued = queued;
        dropped += (before - self.queue.len()) as u64;
        self.uncommitted
            .retain(|(ut, up, _)| !(ut == t && *up == p));
        if dropped > 0 {
            self.summary.dropped_files += dropped;
            self.sm
                .dropped_files
                .get_or_create(&DropLabel {
                    reason: reason.to_owned(),
                })
                .inc_by(dropped);
        }
    }

    /// Whether this member may still upload files of `topic`/`partition`: rebalance events
    /// seen by the last poll are applied first, and a lost assignment (evicted after
    /// `max.poll.interval.ms`, or the session expired) drops every partition at once.
    async fn owns(
        &mut self,
        d: &mut Driver<'_>,
        topic: &str,
        partition: i32,
    ) -> Result<bool, SinkError> {
        d.rebalance(self).await?;
        if d.consumer().assignment_lost() && !self.parts.values().all(|m| m.is_empty()) {
            tracing::warn!(
                "the group took this member's assignment away (no poll within \
                max.poll.interval.ms, or the session expired): dropping every open and sealed file"
            );
            let all: Vec<(String, i32)> = self
                .parts
                .iter()
                .flat_map(|(t, m)| m.keys().map(move |p| (t.clone(), *p)))
                .collect();
            for (t, p) in all {
                self.drop_partition(&t, p, "lost");
            }
            self.update_gauges();
        }
        Ok(self
            .parts
            .get(topic)
            .is_some_and(|m| m.contains_key(&partition)))
    }

    fn part(&mut self, topic: &str, partition: i32) -> Option<&mut PartitionWriter> {
        self.parts
            .get_mut(topic)
            .and_then(|m| m.get_mut(&partition))
    }

    fn update_gauges(&self) {
        let open: usize = self
            .parts
            .values()
            .flat_map(|m| m.values())
            .map(PartitionWriter::open_count)
            .sum();
        self.sm.open_files.set(open as i64);
        self.sm
            .buffered_bytes
            .set((self.buffered + self.queued) as i64);
        self.sm.queued_files.set(self.queue.len() as i64);
    }

    /// Handles one record (called right after the poll that returned it): the partition's
    /// writer decides, this executes — dead-letter a rejected record, queue the files it
    /// sealed, then apply the memory budget across partitions.
    async fn process(&mut self, msg: &ConsumedRecord<'_>) -> Result<(), SinkError> {
        let topic = msg.topic();
        let partition = msg.partition();
        let offset = msg.offset();
        // `sensorflow_records_in_total` is counted by the driver.
        self.summary.records_in += 1;
        let Some(w) = self.part(topic, partition) else {
            return Ok(()); // revoked since it was fetched: its new owner stores it
        };
        let headers = (w.kind() == Kind::Raw).then(|| raw_headers(msg));
        let record = Record {
            key: msg.key(),
            value: msg.payload(),
            partition,
            offset,
            timestamp_ms: msg.timestamp_ms,
            headers: headers.as_ref(),
        };
        let size = (msg.key().map_or(0, <[u8]>::len) + msg.payload().map_or(0, <[u8]>::len)) as u64;
        let before = w.open_count();
        let written = w
            .write(&record, size, now_ms())
            .map_err(|e| self.seal_error(e))?;
        let gauges = self
            .part(topic, partition)
            .is_some_and(|w| w.open_count() != before)
            || !written.sealed.is_empty();
        self.buffered += written.buffered;
        if let Outcome::Rejected(reject) = written.outcome {
            self.summary.dead_lettered += 1;
            self.metrics.record_dead_letter(reject.code());
            tracing::debug!(%topic, partition, offset, reason = %reject, "dead-lettered");
            let out = dlq::dead_letter(
                msg,
                &reject,
                &self.cfg.dead_letter_topic,
                sensorflow_api::processors::GCS_SINK,
            );
            self.emitter.send(out).await?;
        }
        for f in written.sealed {
            self.enqueue(f);
        }
        if gauges {
            self.update_gauges();
        }
        if self.buffered + self.queued > self.cfg.max_buffer_bytes {
            // Cutting moves bytes from open ranges to the upload queue; what the queue holds
            // already leaves that much less room for open ranges.
            let room = self.cfg.max_buffer_bytes.saturating_sub(self.queued);
            let sizes: Vec<((String, i32), u64)> = self
                .parts
                .iter()
                .flat_map(|(t, m)| {
                    m.iter().filter_map(move |(p, w)| {
                        w.open_span().map(|f| ((t.clone(), *p), f.stats.bytes))
                    })
                })
                .collect();
            for (t, p) in over_budget(&sizes, room) {
                self.cut(&t, p, Reason::Memory)?;
            }
        }
        Ok(())
    }

    fn seal_error(&self, e: SealError) -> SinkError {
        SinkError::Encode {
            object: self.store.url(&e.object),
            source: EncodeError::Parquet {
                rows: e.rows,
                source: e.source.into(),
            },
        }
    }

    /// Cuts the open range of `topic`/`partition` now (a time cut) and queues its files.
    /// Nothing is stored or committed here: the range holds the commit back until it is
    /// uploaded, and its upload waits for a commit carrying the cut.
    fn cut(&mut self, topic: &str, partition: i32, reason: Reason) -> Result<(), SinkError> {
        let Some(w) = self.part(topic, partition) else {
            return Ok(());
        };
        let files = w.cut(reason).map_err(|e| self.seal_error(e))?;
        if !files.is_empty() {
            self.note_cut(files);
            self.update_gauges();
        }
        Ok(())
    }

    /// Queues the files of a time cut (they wait for a commit carrying the cut).
    fn note_cut(&mut self, files: Vec<SealedFile>) {
        self.summary.time_cuts += 1;
        self.dirty = true;
        for f in files {
            self.enqueue(f);
        }
    }

    /// Queues the upload of a sealed file: its input bytes move from open to queued.
    fn enqueue(&mut self, f: SealedFile) {
        self.buffered -= f.bytes_in;
        self.queued += f.bytes_in;
        self.queue.push_back(f);
    }

    /// Uploads the oldest sealed file, if its partition is still assigned (else drops it):
    /// a time cut at or before its range committed first (else nothing happens: `Ok(false)`),
    /// dead letters acknowledged, object encoded, then — right before the upload starts —
    /// a poll if the last one is older than the keep-alive interval, the assignment checked,
    /// and the object created. Nothing else is committed here.
    ///
    /// The poll comes after the encoding and right before the store operation, so that no
    /// upload starts more than the keep-alive interval after a poll, whatever came before it
    /// (a long encode): two slow operations back to back without a poll could exceed
    /// `max.poll.interval.ms` and cost this member its partitions.
    /// `stopping`: records polled now are left for the next run instead of being handled.
    async fn upload_next(&mut self, d: &mut Driver<'_>, stopping: bool) -> Result<bool, SinkError> {
        if self.queue.is_empty() {
            return Ok(false);
        }
        let gated = |s: &mut Self| {
            s.queue.front().is_some_and(|f| {
                s.parts
                    .get(&f.topic)
                    .and_then(|m| m.get(&f.partition))
                    .is_some_and(|w| !w.may_upload(f))
            })
        };
        if gated(self) {
            // A time cut this member made is not in a commit yet: commit it first (fenced by
            // the group generation: a member that lost the partition cannot).
            self.dirty = true;
            self.commit(d).await?;
            if gated(self) {
                return Ok(false);
            }
        }
        let Some(front) = self.queue.front() else {
            return Ok(false);
        };
        let key = (
            front.topic.clone(),
            front.partition,
            front.first,
            front.last,
        );
        let (topic, partition) = (key.0.clone(), key.1);
        let name = front.name.clone();
        let url = self.store.url(&name);
        // Dead letters of this range must be durable before the commit passes it (and the
        // range's objects are what lets it).
        self.emitter.await_deliveries().await?;
        let encoded = match self.queue.front().and_then(|f| f.batch.as_ref()) {
            Some(batch) => {
                let meta = [
                    ("sensorflow.topic", key.0.clone()),
                    ("sensorflow.partition", key.1.to_string()),
                    ("sensorflow.first_offset", key.2.to_string()),
                    ("sensorflow.last_offset", key.3.to_string()),
                ];
                let bytes =
                    encode(batch, &self.cfg.encode, &meta).map_err(|source| SinkError::Encode {
                        object: url.clone(),
                        source,
                    })?;
                Some((batch.num_rows() as u64, bytes))
            }
            None => None,
        };
        self.poll_if_stale(d, stopping).await?;
        let owned = self.owns(d, &topic, partition).await?;
        let still_first = self.queue.front().is_some_and(|f| f.name == name);
        if !still_first {
            // Its partition was revoked or lost during the poll: `drop_partition` dropped it.
            return Ok(true);
        }
        if !owned {
            self.drop_partition(&topic, partition, "revoked");
            self.update_gauges();
            return Ok(true);
        }
        let Some(f) = self.queue.pop_front() else {
            return Ok(true);
        };
        self.queued -= f.bytes_in;
        if let Some((rows, bytes)) = encoded {
            let started = Instant::now();
            let size = bytes.len() as u64;
            let (attempts, created) = self.put_with_retry(&name, Bytes::from(bytes)).await?;
            let label = TopicLabel {
                topic: f.topic.clone(),
            };
            if created {
                self.sm
                    .upload_seconds
                    .observe(started.elapsed().as_secs_f64());
                self.sm.rows.get_or_create(&label).inc_by(rows);
                self.sm.bytes.get_or_create(&label).inc_by(size);
                self.sm
                    .files
                    .get_or_create(&FileLabel {
                        topic: f.topic.clone(),
                        reason: f.reason.as_str().to_owned(),
                    })
                    .inc();
                self.summary.rows_written += rows;
                self.summary.files_written += 1;
                self.summary.bytes_written += size;
                let open_for =
                    Duration::from_millis(now_ms().saturating_sub(f.opened_at_ms).max(0) as u64);
                tracing::info!(object = %url, rows, bytes = size, first = f.first, last = f.last,
                    reason = f.reason.as_str(), attempts, ?open_for, "object finalised");
            } else {
                // Same name, same records: stored by an earlier attempt or another writer.
                self.sm.already_stored.get_or_create(&label).inc();
                self.summary.already_stored += 1;
                tracing::warn!(object = %url, rows, first = f.first, last = f.last, attempts,
                    "object exists already (create-only upload refused): counted as stored");
            }
            self.uncommitted.push((f.topic.clone(), f.partition, url));
        }
        if let Some(w) = self.part(&f.topic, f.partition) {
            w.stored(&f);
        }
        self.dirty = true;
        self.update_gauges();
        Ok(true)
    }

    /// Polls until the last poll is younger than the keep-alive interval (usually once):
    /// a record a poll returns is handled at once (when `stopping`, left for the next run).
    /// Records are handled even above the memory budget: one per poll, and only when the last
    /// poll is old.
    async fn poll_if_stale(&mut self, d: &mut Driver<'_>, stopping: bool) -> Result<(), SinkError> {
        while d.since_poll() >= self.cfg.keepalive() {
            d.poll_now(self, !stopping).await?;
        }
        Ok(())
    }

    /// Handles records the consumer has fetched already (no waiting), up to a batch, while
    /// the memory budget allows: with uploads queued, a turn then still moves the input on
    /// by more than one record.
    async fn take_fetched(&mut self, d: &mut Driver<'_>) -> Result<(), SinkError> {
        const BATCH: usize = 1000;
        let slice = Instant::now();
        for _ in 0..BATCH {
            if self.buffered + self.queued > self.cfg.max_buffer_bytes
                || slice.elapsed() >= self.cfg.keepalive() / 2
            {
                break;
            }
            if d.poll_now(self, true).await? != Polled::Record {
                break;
            }
        }
        Ok(())
    }

    /// Uploads queued files until the queue is empty or this turn's budget (the keep-alive
    /// interval) is spent; before each upload, records fetched meanwhile move on if the last
    /// poll is older than that (and `upload_next` polls again right before the store
    /// operation if handling them took that long).
    async fn upload_some(&mut self, d: &mut Driver<'_>) -> Result<(), SinkError> {
        let turn = Instant::now();
        let every = self.cfg.keepalive();
        while !self.queue.is_empty() && turn.elapsed() < every {
            if d.since_poll() >= every {
                self.take_fetched(d).await?;
            }
            if !self.upload_next(d, false).await? {
                break; // waiting for a commit carrying a time cut (retried later)
            }
        }
        Ok(())
    }

    /// Commits every partition whose offset or chain metadata changed (synchronously). A refused commit
    /// keeps the offsets to commit and is tried again after a backoff (200 ms doubling to
    /// 10 s); after `commit_retries` consecutive refusals other than by a rebalance the sink
    /// fails. A commit refused by a rebalance is retried for the partitions still assigned
    /// after it (a revoked partition's next owner makes the same objects and finds them).
    async fn commit(&mut self, d: &mut Driver<'_>) -> Result<(), SinkError> {
        let consumer = d.consumer();
        if !self.dirty {
            return Ok(());
        }
        if self.commit_retry_at.is_some_and(|at| Instant::now() < at) {
            return Ok(());
        }
        self.dirty = false;
        let mut tpl = TopicPartitionList::new();
        let mut advanced = Vec::new();
        for (t, m) in &self.parts {
            for (p, w) in m {
                if let Some(c) = w.committable() {
                    add_commit(&mut tpl, t, *p, &c);
                    advanced.push((t.clone(), *p, c));
                }
            }
        }
        if advanced.is_empty() {
            self.commit_failures = 0;
            self.commit_retry_at = None;
            return Ok(());
        }
        let injected = self.commit_fault.as_mut().and_then(|f| f(&tpl));
        let res = match injected {
            Some(e) => Err(e),
            None => tokio::task::block_in_place(|| consumer.commit(&tpl, CommitMode::Sync)),
        };
        match res {
            Ok(()) => {
                if self.commit_failures > 0 {
                    tracing::info!(
                        attempts = self.commit_failures + 1,
                        "offset commit succeeded after retries"
                    );
                }
                self.commit_failures = 0;
                self.commit_retry_at = None;
                self.metrics.commits.inc();
                for (t, p, c) in &advanced {
                    if let Some(w) = self.part(t, *p) {
                        w.committed(c);
                    }
                }
                let now = now_ms() / 1000;
                for (t, p, object) in std::mem::take(&mut self.uncommitted) {
                    tracing::info!(topic = %t, partition = p, %object, "committed");
                    let prev = self.summary.last_objects.insert(t.clone(), object.clone());
                    if let Some(prev) = prev {
                        self.sm.last_object.remove(&ObjectLabel {
                            topic: t.clone(),
                            object: prev,
                        });
                    }
                    self.sm
                        .last_object
                        .get_or_create(&ObjectLabel {
                            topic: t.clone(),
                            object,
                        })
                        .set(1);
                    self.sm
                        .last_commit
                        .get_or_create(&TopicLabel { topic: t })
                        .set(now);
                }
                Ok(())
            }
            Err(source) => {
                let offsets = advanced
                    .iter()
                    .map(|(t, p, c)| format!("{t}/{p}@{}", c.offset))
                    .collect::<Vec<_>>()
                    .join(",");
                let rebalance = sensorflow_runtime::pipeline::is_rebalance_commit_error(&source);
                self.commit_failures += 1;
                self.dirty = true;
                self.sm.commit_retries.inc();
                self.summary.commit_retries += 1;
                if !rebalance && self.commit_failures > self.cfg.commit_retries {
                    return Err(SinkError::Commit {
                        offsets,
                        attempts: self.commit_failures,
                        source,
                    });
                }
                let delay = Duration::from_millis(200)
                    .saturating_mul(1 << (self.commit_failures - 1).min(6))
                    .min(Duration::from_secs(10));
                self.commit_retry_at = Some(Instant::now() + delay);
                tracing::warn!(error = %source, %offsets, attempt = self.commit_failures,
                    retry_in = ?delay, rebalance, "offset commit refused; retrying");
                Ok(())
            }
        }
    }

    /// Cuts ranges open for `max_age`, unless uploads are queued: behind a slow store, ranges
    /// then grow (up to their record, byte and memory limits) instead of queueing many small
    /// ones. Partitions whose high watermark could not be read at assignment try again first
    /// (no time cut before it is known).
    fn seal_aged(&mut self, d: &mut Driver<'_>) -> Result<(), SinkError> {
        self.learn_high(d);
        if !self.queue.is_empty() {
            return Ok(());
        }
        let now = now_ms();
        self.seal_every(|w| w.seal_aged(now))
    }

    /// Reads the high watermark of partitions that could not get it at assignment.
    fn learn_high(&mut self, d: &mut Driver<'_>) {
        let consumer = d.consumer();
        for (t, m) in &mut self.parts {
            for (p, w) in m.iter_mut().filter(|(_, w)| w.needs_high()) {
                if let Some(h) = high_watermark(consumer, t, *p, Duration::from_millis(500)) {
                    w.set_high(h);
                }
            }
        }
    }

    /// Cuts what `f` cuts in every partition (time cuts) and queues it.
    fn seal_every(
        &mut self,
        mut f: impl FnMut(&mut PartitionWriter) -> Result<Vec<SealedFile>, SealError>,
    ) -> Result<(), SinkError> {
        let mut cuts = Vec::new();
        let mut failed = None;
        for w in self.parts.values_mut().flat_map(|m| m.values_mut()) {
            match f(w) {
                Ok(files) if !files.is_empty() => cuts.push(files),
                Ok(_) => {}
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            }
        }
        let any = !cuts.is_empty();
        for files in cuts {
            self.note_cut(files);
        }
        if any {
            self.update_gauges();
        }
        match failed {
            Some(e) => Err(self.seal_error(e)),
            None => Ok(()),
        }
    }

    /// Stops: cuts every open range, commits the cuts, uploads the queue (polling between
    /// uploads so the member stays in its group; records polled now are left for the next
    /// run), and commits, retrying a refused commit within its bounds.
    async fn flush(&mut self, d: &mut Driver<'_>) -> Result<(), SinkError> {
        d.rebalance(self).await?;
        self.learn_high(d);
        self.seal_every(|w| w.cut(Reason::Shutdown))?;
        let mut attempts = 0u32;
        while !self.queue.is_empty() {
            if self.upload_next(d, true).await? {
                continue;
            }
            // The front waits for a commit carrying its cut, and the commit was refused.
            attempts += 1;
            if attempts > self.cfg.commit_retries.max(1) * 2 {
                tracing::warn!(
                    files = self.queue.len(),
                    "stopping with ranges not uploaded (their cut was never committed; the next run re-reads them)"
                );
                break;
            }
            let wait = self.commit_retry_at.map_or(Duration::ZERO, |at| {
                at.saturating_duration_since(Instant::now())
            });
            tokio::time::sleep(wait.min(self.cfg.keepalive())).await;
            d.poll_now(self, false).await?;
        }
        let mut attempts = 0u32;
        loop {
            self.commit(d).await?;
            if !self.dirty {
                return Ok(());
            }
            attempts += 1;
            if attempts > self.cfg.commit_retries.max(1) * 2 {
                tracing::warn!(
                    "stopping with offsets uncommitted (the next run makes the same objects again and finds them stored)"
                );
                return Ok(());
            }
            let wait = self.commit_retry_at.map_or(Duration::ZERO, |at| {
                at.saturating_duration_since(Instant::now())
            });
            tokio::time::sleep(wait.min(self.cfg.keepalive())).await;
            d.poll_now(self, false).await?;
        }
    }

    /// Subscribes and runs the shared consume-loop driver until `shutdown` is cancelled; then
    /// cuts every open range, commits the cuts, uploads and commits before returning.
    ///
    /// # Errors
    /// [`SinkError`] for failures that survive retries; offsets of records not in a finalised
    /// object are not committed, so a restart stores them.
    pub async fn run(
        &mut self,
        consumer: &LoopConsumer,
        shutdown: CancellationToken,
    ) -> Result<(), SinkError> {
        tracing::info!(location = %self.summary.location, keepalive = ?self.cfg.keepalive(),
            op_deadline = ?self.cfg.op_deadline(), "starting");
        // Age rotation is checked a few times per max age (at least every second).
        let every =
            Duration::from_millis((self.cfg.rotation.max_age_ms / 4).clamp(20, 1000) as u64);
        Driver::new(consumer, self.metrics.clone())
            .run(self, every, shutdown)
            .await
    }
}

/// The sink on the shared consume-loop driver (see the module docs for the order of work).
impl<S: ObjectStore> Hooks for Sink<S> {
    type Error = SinkError;

    fn topics(&self) -> Vec<String> {
        self.cfg.topics.iter().map(|(t, _)| t.clone()).collect()
    }

    async fn on_assigned(
        &mut self,
        d: &mut Driver<'_>,
        parts: &[(String, i32)],
    ) -> Result<Vec<Option<i64>>, SinkError> {
        // Each partition's writer starts at its committed offset, nothing below it.
        self.assign(d, parts).await
    }

    async fn on_revoked(
        &mut self,
        d: &mut Driver<'_>,
        parts: &[(String, i32)],
    ) -> Result<(), SinkError> {
        self.revoke(d, parts);
        Ok(())
    }

    async fn on_message(
        &mut self,
        _d: &mut Driver<'_>,
        rec: &ConsumedRecord<'_>,
    ) -> Result<(), SinkError> {
        self.process(rec).await
    }

    async fn on_tick(&mut self, d: &mut Driver<'_>) -> Result<(), SinkError> {
        self.seal_aged(d)
    }

    /// Whatever woke the turn, records already fetched move on too (a tick would otherwise win
    /// every turn behind a slow store and starve the input); then uploads within the turn's
    /// budget, then the commit.
    async fn after_turn(&mut self, d: &mut Driver<'_>) -> Result<(), SinkError> {
        self.take_fetched(d).await?;
        self.upload_some(d).await?;
        self.commit(d).await
    }

    fn busy(&self) -> bool {
        !self.queue.is_empty()
    }

    fn take_more(&self) -> bool {
        self.buffered + self.queued <= self.cfg.max_buffer_bytes
    }

    async fn on_shutdown(&mut self, d: &mut Driver<'_>) -> Result<(), SinkError> {
        self.flush(d).await?;
        self.summary.retries = self.sm.upload_retries.get();
        tracing::info!(summary = ?self.summary, "flushed, uploaded and committed; stopping");
        Ok(())
    }
}
