//! The sink loop: consume → rows → Parquet object → commit, and recovery after a crash.
//!
//! ```text
//!   select! { shutdown | tick (age rotation, commit) | recv }
//!     recv ─► rebalance events ─► revoked: drop open files (never uploaded, never committed)
//!                                 assigned: fresh ledger (see `ledger`)
//!          ─► hour bucket seen first? list PREFIX/topic=T/date/hour/T-P- into the ledger
//!          ─► in a listed object?  ─► skip (stored by a run that died before committing)
//!          ─► no open file for the bucket? (close the oldest if max open) open one
//!          ─► decode ─► rows (or dead-letter topic with the reason)
//!          ─► full (records/bytes/memory)? ─► finalise
//!   finalise: await dead letters ─► encode ─► upload (retried) ─► commit ledger offset
//! ```

use crate::encode::{EncodeConfig, EncodeError, encode};
use crate::layout::{HourBucket, Layout, parse_object};
use crate::ledger::Ledger;
use crate::metrics::{FileLabel, ObjectLabel, SinkMetrics};
use crate::rotation::{FileStats, Reason, Rotation, over_budget};
use crate::rows::{Kind, RawHeaders, Record, Rows};
use crate::store::{ObjectStore, StoreError};
use backon::{ExponentialBuilder, Retryable};
use bytes::Bytes;
use rdkafka::consumer::{CommitMode, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Headers};
use rdkafka::{Message, Offset, TopicPartitionList};
use rustc_hash::FxHashMap;
use sensorflow_core::wire::Framing;
use sensorflow_runtime::dlq;
use sensorflow_runtime::metrics::{Metrics, ReasonLabel, TopicLabel};
use sensorflow_runtime::pipeline::{Emitter, LoopConsumer, PipelineError, RebalanceEvent};
use serde::Serialize;
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
    /// Committing offsets failed for a reason other than a rebalance.
    #[error("committing offsets {offsets} failed: {source}")]
    Commit {
        /// `topic/partition@offset` list.
        offsets: String,
        /// Cause.
        source: KafkaError,
    },
    /// A store operation failed after every retry.
    #[error("{object}: giving up after {attempts} attempts: {source}")]
    Store {
        /// Object (or listed prefix) URL.
        object: String,
        /// Attempts made.
        attempts: usize,
        /// Last error.
        source: StoreError,
    },
    /// A store operation and its retries exceeded the deadline.
    #[error("{object}: no success within {deadline:?} (retries included)")]
    Deadline {
        /// Object (or listed prefix) URL.
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
    /// Time limit of one operation with all its retries. Keep it below the consumer's
    /// `max.poll.interval.ms` (300 s): the loop does not poll while it waits, and a member
    /// that stops polling longer loses its partitions while it may still upload.
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
    /// Rotation limits.
    pub rotation: Rotation,
    /// Parquet settings.
    pub encode: EncodeConfig,
    /// Input bytes buffered across all open files before the largest is finalised early.
    pub max_buffer_bytes: u64,
    /// Dead-letter topic for undecodable records.
    pub dead_letter_topic: String,
    /// Store retries.
    pub retry: RetryConfig,
    /// Open files per partition (one per hour bucket); opening one more closes the oldest.
    pub max_open_per_partition: usize,
}

/// What a run did (also written as JSON with `--summary-json`).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Summary {
    /// Records consumed (including skipped and dead-lettered ones).
    pub records_in: u64,
    /// Rows in finalised objects.
    pub rows_written: u64,
    /// Objects finalised.
    pub files_written: u64,
    /// Compressed bytes of those objects.
    pub bytes_written: u64,
    /// Records sent to the dead-letter topic.
    pub dead_lettered: u64,
    /// Records skipped because an object from a previous run holds them.
    pub skipped: u64,
    /// Store operations retried.
    pub retries: u64,
    /// The last committed object per topic.
    pub last_objects: std::collections::BTreeMap<String, String>,
    /// Where the objects are (`gs://bucket/prefix` or `file:///dir/prefix`).
    pub location: String,
}

/// An open file: its rows and counters.
struct OpenFile {
    rows: Rows,
    stats: FileStats,
    first: i64,
    last: i64,
    opened: Instant,
}

struct PartState {
    kind: Kind,
    ledger: Ledger,
    open: Vec<OpenFile>,
    /// Offset last committed (or found committed), to skip redundant commits.
    committed: Option<i64>,
}

/// The sink: owns the open files, the store and the dead-letter emitter.
pub struct Sink<S: ObjectStore> {
    cfg: SinkConfig,
    store: S,
    metrics: Metrics,
    sm: SinkMetrics,
    emitter: Emitter,
    kinds: FxHashMap<String, Kind>,
    parts: FxHashMap<String, FxHashMap<i32, PartState>>,
    /// Objects finalised since the last commit: (topic, partition, url), logged once committed.
    uncommitted: Vec<(String, i32, String)>,
    /// Something changed that may advance a commit.
    dirty: bool,
    buffered: u64,
    summary: Summary,
    records_in: FxHashMap<String, prometheus_client::metrics::counter::Counter>,
}

fn now_ms() -> i64 {
    sensorflow_runtime::now_ms()
}

fn raw_headers(msg: &BorrowedMessage<'_>) -> RawHeaders {
    let mut h = RawHeaders::default();
    if let Some(hs) = msg.headers() {
        for hd in hs.iter() {
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
            parts: FxHashMap::default(),
            uncommitted: Vec::new(),
            dirty: false,
            buffered: 0,
            summary,
            records_in: FxHashMap::default(),
        }
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

    async fn list_with_retry(&self, prefix: &str) -> Result<Vec<String>, SinkError> {
        let attempts = std::sync::atomic::AtomicUsize::new(0);
        let op = (|| {
            attempts.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            self.store.list(prefix)
        })
        .retry(self.backoff())
        .when(StoreError::is_transient)
        .notify(|e, d| {
            self.sm.upload_retries.inc();
            tracing::warn!(error = %e, retry_in = ?d, "listing failed; retrying");
        });
        let deadline = self.cfg.retry.deadline;
        let res = tokio::time::timeout(deadline, op)
            .await
            .map_err(|_| SinkError::Deadline {
                object: self.store.url(prefix),
                deadline,
            })?;
        res.map_err(|source| SinkError::Store {
            object: self.store.url(prefix),
            attempts: attempts.into_inner(),
            source,
        })
    }

    async fn put_with_retry(&self, name: &str, data: Bytes) -> Result<usize, SinkError> {
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
        let deadline = self.cfg.retry.deadline;
        let res = tokio::time::timeout(deadline, op)
            .await
            .map_err(|_| SinkError::Deadline {
                object: self.store.url(name),
                deadline,
            })?;
        let attempts = attempts.into_inner();
        res.map(|()| attempts).map_err(|source| SinkError::Store {
            object: self.store.url(name),
            attempts,
            source,
        })
    }

    /// Applies rebalance events: revoked partitions lose their open files (the next owner
    /// re-reads them from the last commit); assigned ones start with a fresh ledger.
    fn handle_rebalance(&mut self, consumer: &LoopConsumer) {
        for ev in consumer.context().take_events() {
            match ev {
                RebalanceEvent::Revoked(parts) => {
                    for (t, p) in parts {
                        if let Some(st) = self.parts.get_mut(&t).and_then(|m| m.remove(&p)) {
                            for f in st.open {
                                self.buffered -= f.stats.bytes;
                                tracing::info!(topic = %t, partition = p, first = f.first, last = f.last,
                                    "partition revoked: dropping an open file (the new owner re-reads it)");
                            }
                        }
                        self.uncommitted
                            .retain(|(ut, up, _)| !(ut == &t && *up == p));
                    }
                }
                RebalanceEvent::Assigned(parts) => {
                    for (t, p) in parts {
                        let kind = self.kinds.get(&t).copied().unwrap_or(Kind::Raw);
                        self.parts
                            .entry(t)
                            .or_default()
                            .entry(p)
                            .or_insert_with(|| PartState {
                                kind,
                                ledger: Ledger::default(),
                                open: Vec::new(),
                                committed: None,
                            });
                    }
                }
            }
        }
        self.update_gauges();
    }

    fn part(&mut self, topic: &str, partition: i32) -> Option<&mut PartState> {
        self.parts
            .get_mut(topic)
            .and_then(|m| m.get_mut(&partition))
    }

    fn update_gauges(&self) {
        let open: usize = self
            .parts
            .values()
            .flat_map(|m| m.values())
            .map(|s| s.open.len())
            .sum();
        self.sm.open_files.set(open as i64);
        self.sm.buffered_bytes.set(self.buffered as i64);
    }

    fn count_in(&mut self, topic: &str) {
        self.summary.records_in += 1;
        match self.records_in.get(topic) {
            Some(c) => {
                c.inc();
            }
            None => {
                let c = self
                    .metrics
                    .records_in
                    .get_or_create(&TopicLabel {
                        topic: topic.to_owned(),
                    })
                    .clone();
                c.inc();
                self.records_in.insert(topic.to_owned(), c);
            }
        }
    }

    /// Handles one record.
    async fn process(
        &mut self,
        consumer: &LoopConsumer,
        msg: &BorrowedMessage<'_>,
    ) -> Result<(), SinkError> {
        let topic = msg.topic();
        let partition = msg.partition();
        let offset = msg.offset();
        self.count_in(topic);
        let (max_open, framing) = (self.cfg.max_open_per_partition.max(1), self.cfg.framing);
        let ts = msg.timestamp().to_millis();
        let bucket = HourBucket::of(ts);
        let Some(st) = self.part(topic, partition) else {
            return Ok(()); // revoked since it was fetched: its new owner stores it
        };
        if st.ledger.needs_listing(bucket) {
            // Objects of this partition and hour from runs that died before committing.
            let prefix = self.cfg.layout.partition_in(topic, partition, bucket);
            let found = self.list_with_retry(&prefix).await?;
            let ranges: Vec<(i64, i64)> = found
                .iter()
                .filter_map(|n| parse_object(n))
                .filter(|o| o.partition == partition && o.topic == topic)
                .map(|o| (o.first_offset, o.last_offset))
                .collect();
            let Some(st) = self.part(topic, partition) else {
                return Ok(());
            };
            st.ledger.add_listing(bucket, ranges);
        }
        let Some(st) = self.part(topic, partition) else {
            return Ok(());
        };
        if st.ledger.is_stored(bucket, offset) {
            st.ledger.consumed(offset);
            self.dirty = true;
            self.summary.skipped += 1;
            self.sm
                .skipped
                .get_or_create(&TopicLabel {
                    topic: topic.to_owned(),
                })
                .inc();
            if self.summary.skipped.is_power_of_two() {
                tracing::info!(%topic, partition, offset, skipped = self.summary.skipped,
                    "skipping records already stored by a run that died before committing");
            }
            return Ok(());
        }
        if st.ledger.open_first(bucket).is_none() {
            if st.open.len() >= max_open {
                let oldest = st.ledger.open_buckets()[0];
                self.finalise(topic, partition, oldest, Reason::HourChange)
                    .await?;
            }
            let Some(st) = self.part(topic, partition) else {
                return Ok(());
            };
            st.ledger.open(bucket, offset);
            st.open.push(OpenFile {
                rows: Rows::new(st.kind, framing),
                stats: FileStats {
                    bucket,
                    records: 0,
                    bytes: 0,
                    opened_at_ms: now_ms(),
                },
                first: offset,
                last: offset,
                opened: Instant::now(),
            });
            self.update_gauges();
        }
        let rotation = self.cfg.rotation;
        let size = (msg.key().map_or(0, <[u8]>::len) + msg.payload().map_or(0, <[u8]>::len)) as u64;
        let Some(st) = self.part(topic, partition) else {
            return Ok(());
        };
        let raw = st.kind == Kind::Raw;
        st.ledger.consumed(offset);
        let Some(f) = st.open.iter_mut().find(|f| f.stats.bucket == bucket) else {
            return Ok(()); // opened above
        };
        let headers = raw.then(|| raw_headers(msg));
        let appended = f.rows.append(&Record {
            key: msg.key(),
            value: msg.payload(),
            partition,
            offset,
            timestamp_ms: ts,
            headers: headers.as_ref(),
        });
        f.last = offset;
        f.stats.records += 1;
        f.stats.bytes += size;
        let full = rotation.after_append(&f.stats);
        self.buffered += size;
        if let Err(reject) = appended {
            self.summary.dead_lettered += 1;
            self.metrics
                .dead_letter
                .get_or_create(&ReasonLabel {
                    reason: reject.code().to_owned(),
                })
                .inc();
            tracing::debug!(%topic, partition, offset, reason = %reject, "dead-lettered");
            let out = dlq::dead_letter(msg, &reject, &self.cfg.dead_letter_topic, "gcs-sink");
            self.emitter.send(out).await?;
        }
        if let Some(reason) = full {
            self.finalise(topic, partition, bucket, reason).await?;
        }
        if self.buffered > self.cfg.max_buffer_bytes {
            let sizes: Vec<((String, i32, HourBucket), u64)> = self
                .parts
                .iter()
                .flat_map(|(t, m)| {
                    m.iter().flat_map(move |(p, s)| {
                        s.open
                            .iter()
                            .map(move |f| ((t.clone(), *p, f.stats.bucket), f.stats.bytes))
                    })
                })
                .collect();
            for (t, p, b) in over_budget(&sizes, self.cfg.max_buffer_bytes) {
                self.finalise(&t, p, b, Reason::Memory).await?;
            }
        }
        if !self.uncommitted.is_empty() {
            self.commit(consumer).await?;
        }
        Ok(())
    }

    /// Closes the open file of `bucket` in `topic`/`partition`: dead letters acknowledged,
    /// object encoded and uploaded, ledger updated. Nothing is committed here.
    async fn finalise(
        &mut self,
        topic: &str,
        partition: i32,
        bucket: HourBucket,
        reason: Reason,
    ) -> Result<(), SinkError> {
        let Some(st) = self.part(topic, partition) else {
            return Ok(());
        };
        let Some(i) = st.open.iter().position(|f| f.stats.bucket == bucket) else {
            return Ok(());
        };
        let mut f = st.open.swap_remove(i);
        self.buffered -= f.stats.bytes;
        let rows = f.rows.len() as u64;
        let name = self
            .cfg
            .layout
            .object(topic, partition, bucket, f.first, f.last);
        let url = self.store.url(&name);
        let batch = if rows > 0 {
            Some(f.rows.finish().map_err(|e| SinkError::Encode {
                object: url.clone(),
                source: EncodeError::Parquet {
                    rows: rows as usize,
                    source: e.into(),
                },
            })?)
        } else {
            None
        };
        // Dead letters of this range must be durable before the object exists: recovery skips
        // every offset an object's range covers.
        self.emitter.await_deliveries().await?;
        if let Some(batch) = batch {
            let started = Instant::now();
            let meta = [
                ("sensorflow.topic", topic.to_owned()),
                ("sensorflow.partition", partition.to_string()),
                ("sensorflow.first_offset", f.first.to_string()),
                ("sensorflow.last_offset", f.last.to_string()),
            ];
            let bytes =
                encode(&batch, &self.cfg.encode, &meta).map_err(|source| SinkError::Encode {
                    object: url.clone(),
                    source,
                })?;
            let size = bytes.len() as u64;
            let attempts = self.put_with_retry(&name, Bytes::from(bytes)).await?;
            self.sm
                .upload_seconds
                .observe(started.elapsed().as_secs_f64());
            let label = TopicLabel {
                topic: topic.to_owned(),
            };
            self.sm.rows.get_or_create(&label).inc_by(rows);
            self.sm.bytes.get_or_create(&label).inc_by(size);
            self.sm
                .files
                .get_or_create(&FileLabel {
                    topic: topic.to_owned(),
                    reason: reason.as_str().to_owned(),
                })
                .inc();
            self.summary.rows_written += rows;
            self.summary.files_written += 1;
            self.summary.bytes_written += size;
            tracing::info!(object = %url, rows, bytes = size, first = f.first, last = f.last,
                reason = reason.as_str(), attempts, open_for = ?f.opened.elapsed(), "object finalised");
            self.uncommitted.push((topic.to_owned(), partition, url));
        }
        if let Some(st) = self.part(topic, partition) {
            st.ledger.closed(bucket, f.first, f.last);
        }
        self.dirty = true;
        self.update_gauges();
        Ok(())
    }

    /// Commits every partition whose ledger offset advanced (synchronously). A commit refused
    /// because of a rebalance is not an error: the next owner lists the objects and skips
    /// their records.
    async fn commit(&mut self, consumer: &LoopConsumer) -> Result<(), SinkError> {
        if !self.dirty {
            return Ok(());
        }
        self.dirty = false;
        let mut tpl = TopicPartitionList::new();
        let mut advanced = Vec::new();
        for (t, m) in &self.parts {
            for (p, st) in m {
                if let Some(o) = st.ledger.commit_offset()
                    && st.committed.is_none_or(|c| o > c)
                {
                    let _ = tpl.add_partition_offset(t, *p, Offset::Offset(o));
                    advanced.push((t.clone(), *p, o));
                }
            }
        }
        if advanced.is_empty() {
            return Ok(());
        }
        let res = tokio::task::block_in_place(|| consumer.commit(&tpl, CommitMode::Sync));
        match res {
            Ok(()) => {
                self.metrics.commits.inc();
                for (t, p, o) in &advanced {
                    if let Some(st) = self.part(t, *p) {
                        st.committed = Some(*o);
                        st.ledger.committed(*o);
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
            Err(e) if sensorflow_runtime::pipeline::is_rebalance_commit_error(&e) => {
                tracing::warn!(
                    error = %e,
                    "commit refused during a rebalance; the new owner skips the stored records"
                );
                Ok(())
            }
            Err(source) => Err(SinkError::Commit {
                offsets: advanced
                    .iter()
                    .map(|(t, p, o)| format!("{t}/{p}@{o}"))
                    .collect::<Vec<_>>()
                    .join(","),
                source,
            }),
        }
    }

    fn open_files(&self) -> Vec<(String, i32, HourBucket, i64)> {
        self.parts
            .iter()
            .flat_map(|(t, m)| {
                m.iter().flat_map(move |(p, s)| {
                    s.open
                        .iter()
                        .map(move |f| (t.clone(), *p, f.stats.bucket, f.stats.opened_at_ms))
                })
            })
            .collect()
    }

    async fn rotate_aged(&mut self) -> Result<(), SinkError> {
        let now = now_ms();
        let rotation = self.cfg.rotation;
        for (t, p, b, opened_at_ms) in self.open_files() {
            let stats = FileStats {
                bucket: b,
                records: 0,
                bytes: 0,
                opened_at_ms,
            };
            if rotation.on_tick(&stats, now).is_some() {
                self.finalise(&t, p, b, Reason::Age).await?;
            }
        }
        Ok(())
    }

    async fn finalise_all(&mut self, reason: Reason) -> Result<(), SinkError> {
        for (t, p, b, _) in self.open_files() {
            self.finalise(&t, p, b, reason).await?;
        }
        Ok(())
    }

    /// Subscribes and runs until `shutdown` is cancelled; then finalises every open file,
    /// uploads it and commits its offsets before returning.
    ///
    /// # Errors
    /// [`SinkError`] for failures that survive retries; offsets of records not in a finalised
    /// object are not committed, so a restart stores them.
    pub async fn run(
        &mut self,
        consumer: &LoopConsumer,
        shutdown: CancellationToken,
    ) -> Result<(), SinkError> {
        let topics: Vec<String> = self.cfg.topics.iter().map(|(t, _)| t.clone()).collect();
        let refs: Vec<&str> = topics.iter().map(String::as_str).collect();
        consumer
            .subscribe(&refs)
            .map_err(|source| SinkError::Subscribe {
                topics: topics.clone(),
                source,
            })?;
        tracing::info!(?topics, location = %self.summary.location, "subscribed");
        self.metrics.set_ready(true);
        // Age rotation is checked a few times per max age (at least every second).
        let every =
            Duration::from_millis((self.cfg.rotation.max_age_ms / 4).clamp(20, 1000) as u64);
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut recv_errors = 0u32;
        loop {
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                _ = tick.tick() => {
                    self.handle_rebalance(consumer);
                    self.rotate_aged().await?;
                    self.commit(consumer).await?;
                }
                msg = sensorflow_runtime::pipeline::next_message(consumer, &mut recv_errors) => {
                    self.handle_rebalance(consumer);
                    self.process(consumer, &msg).await?;
                }
            }
        }
        self.metrics.set_ready(false);
        self.handle_rebalance(consumer);
        self.finalise_all(Reason::Shutdown).await?;
        self.commit(consumer).await?;
        self.summary.retries = self.sm.upload_retries.get();
        tracing::info!(summary = ?self.summary, "flushed, uploaded and committed; stopping");
        Ok(())
    }
}
