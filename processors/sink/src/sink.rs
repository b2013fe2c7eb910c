//! The sink loop: consume → rows → Parquet object → commit, and recovery after a crash.
//!
//! ```text
//!   select! { shutdown | tick (age rotation) | recv }
//!     recv ─► rebalance events ─► revoked: drop open files (never uploaded, never committed)
//!                                 assigned: mark the partition "recovering"
//!          ─► offset ≤ skip_through?  ─► skip (already in an object from before a crash)
//!          ─► hour changed?           ─► finalise the open file
//!          ─► no open file: recovering? list PREFIX/…/hour=HH/T-P-<offset>- ; found ..=L?
//!                  yes ─► skip_through = L, commit L+1        no ─► recovering = false
//!          ─► decode ─► rows (or dead-letter topic with the reason)
//!          ─► full (records/bytes/memory)? ─► finalise
//!   finalise: await dead letters ─► encode ─► upload (retried) ─► commit last+1
//! ```

use crate::encode::{EncodeConfig, EncodeError, encode};
use crate::layout::{HourBucket, Layout, parse_object};
use crate::metrics::{FileLabel, ObjectLabel, SinkMetrics};
use crate::rotation::{FileStats, Reason, Rotation, over_budget};
use crate::rows::{Kind, RawHeaders, Record, Rows};
use crate::store::{ObjectStore, StoreError};
use backon::{ExponentialBuilder, Retryable};
use bytes::Bytes;
use rdkafka::consumer::{CommitMode, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Headers};
use rdkafka::types::RDKafkaErrorCode;
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
}

impl Default for RetryConfig {
    /// 0.2 s doubling to 20 s, 12 retries: about two minutes of outage is ridden out.
    fn default() -> Self {
        Self {
            min_delay: Duration::from_millis(200),
            max_delay: Duration::from_secs(20),
            max_retries: 12,
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

/// The open file of a partition.
struct OpenFile {
    stats: FileStats,
    first: i64,
    last: i64,
    opened: Instant,
}

struct PartState {
    kind: Kind,
    rows: Rows,
    open: Option<OpenFile>,
    /// Look for an object from a previous run before opening the next file.
    recovering: bool,
    /// Records up to this offset are already in an object.
    skip_through: i64,
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
    /// Offsets to commit (next offset to read), by topic and partition.
    to_commit: Vec<(String, i32, i64, Option<String>)>,
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
            to_commit: Vec::new(),
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

    async fn list_with_retry(&mut self, prefix: &str) -> Result<Vec<String>, SinkError> {
        let mut attempts = 0usize;
        let res = (|| {
            attempts += 1;
            self.store.list(prefix)
        })
        .retry(self.backoff())
        .when(StoreError::is_transient)
        .notify(|e, d| {
            self.sm.upload_retries.inc();
            tracing::warn!(error = %e, retry_in = ?d, "listing failed; retrying");
        })
        .await;
        res.map_err(|source| SinkError::Store {
            object: self.store.url(prefix),
            attempts,
            source,
        })
    }

    async fn put_with_retry(&self, name: &str, data: Bytes) -> Result<usize, SinkError> {
        let attempts = std::sync::atomic::AtomicUsize::new(0);
        let res = (|| {
            attempts.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            self.store.put(name, data.clone())
        })
        .retry(self.backoff())
        .when(StoreError::is_transient)
        .notify(|e, d| {
            self.sm.upload_retries.inc();
            tracing::warn!(error = %e, retry_in = ?d, "upload failed; retrying");
        })
        .await;
        let attempts = attempts.into_inner();
        res.map(|()| attempts).map_err(|source| SinkError::Store {
            object: self.store.url(name),
            attempts,
            source,
        })
    }

    /// Applies rebalance events: revoked partitions lose their open files (the next owner
    /// re-reads them from the last commit); assigned ones start in recovery.
    fn handle_rebalance(&mut self, consumer: &LoopConsumer) {
        for ev in consumer.context().take_events() {
            match ev {
                RebalanceEvent::Revoked(parts) => {
                    for (t, p) in parts {
                        if let Some(st) = self.parts.get_mut(&t).and_then(|m| m.remove(&p))
                            && let Some(f) = st.open
                        {
                            self.buffered -= f.stats.bytes;
                            tracing::info!(topic = %t, partition = p, first = f.first, last = f.last,
                                "partition revoked: dropping its open file (the new owner re-reads it)");
                        }
                        self.to_commit
                            .retain(|(ct, cp, _, _)| !(ct == &t && *cp == p));
                    }
                }
                RebalanceEvent::Assigned(parts) => {
                    for (t, p) in parts {
                        let kind = self.kinds.get(&t).copied().unwrap_or(Kind::Raw);
                        let framing = self.cfg.framing;
                        self.parts
                            .entry(t)
                            .or_default()
                            .entry(p)
                            .or_insert_with(|| PartState {
                                kind,
                                rows: Rows::new(kind, framing),
                                open: None,
                                recovering: true,
                                skip_through: -1,
                            });
                    }
                }
            }
        }
        self.update_gauges();
    }

    /// The state of an assigned partition. Only called between the assignment check at the
    /// top of `process` and the next rebalance handling, so the entry exists.
    fn part(&mut self, topic: &str, partition: i32) -> &mut PartState {
        self.parts
            .get_mut(topic)
            .and_then(|m| m.get_mut(&partition))
            .expect("partition state exists while its record is processed")
    }

    fn update_gauges(&self) {
        let open = self
            .parts
            .values()
            .flat_map(|m| m.values())
            .filter(|s| s.open.is_some())
            .count();
        self.sm.open_files.set(open as i64);
        self.sm.buffered_bytes.set(self.buffered as i64);
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
        let Some(st) = self
            .parts
            .get_mut(topic)
            .and_then(|m| m.get_mut(&partition))
        else {
            return Ok(()); // revoked since it was fetched: its new owner stores it
        };
        if offset <= st.skip_through {
            self.summary.skipped += 1;
            self.sm
                .skipped
                .get_or_create(&TopicLabel {
                    topic: topic.to_owned(),
                })
                .inc();
            return Ok(());
        }
        let ts = msg.timestamp().to_millis();
        let bucket = HourBucket::of(ts);
        if let Some(f) = &st.open
            && let Some(reason) = self.cfg.rotation.before_append(&f.stats, bucket)
        {
            self.finalise(topic, partition, reason).await?;
        }
        let (needs_file, recovering) = {
            let st = self.part(topic, partition);
            (st.open.is_none(), st.recovering)
        };
        if needs_file {
            if recovering {
                let prefix = self
                    .cfg
                    .layout
                    .starting_at(topic, partition, bucket, offset);
                let found = self.list_with_retry(&prefix).await?;
                let hit = found
                    .iter()
                    .filter_map(|n| parse_object(n).map(|o| (o, n)))
                    .filter(|(o, _)| o.partition == partition && o.first_offset == offset)
                    .max_by_key(|(o, _)| o.last_offset)
                    .map(|(o, n)| (o.last_offset, self.store.url(n)));
                let st = self.part(topic, partition);
                if let Some((last, object)) = hit {
                    // A previous run uploaded offset..=last but crashed before committing.
                    st.skip_through = last;
                    tracing::info!(%topic, partition, first = offset, last, %object,
                        "found an object from before a restart: skipping the offsets it holds");
                    self.summary.skipped += 1;
                    self.sm
                        .skipped
                        .get_or_create(&TopicLabel {
                            topic: topic.to_owned(),
                        })
                        .inc();
                    self.to_commit
                        .push((topic.to_owned(), partition, last + 1, Some(object)));
                    return self.commit(consumer).await;
                }
                st.recovering = false;
            }
            self.part(topic, partition).open = Some(OpenFile {
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
        }
        let rotation = self.cfg.rotation;
        let st = self
            .parts
            .get_mut(topic)
            .and_then(|m| m.get_mut(&partition))
            .expect("partition state exists while its record is processed");
        let size = (msg.key().map_or(0, <[u8]>::len) + msg.payload().map_or(0, <[u8]>::len)) as u64;
        let headers = (st.kind == Kind::Raw).then(|| raw_headers(msg));
        let rec = Record {
            key: msg.key(),
            value: msg.payload(),
            partition,
            offset,
            timestamp_ms: ts,
            headers: headers.as_ref(),
        };
        let appended = st.rows.append(&rec);
        let f = st.open.as_mut().expect("opened above");
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
            self.finalise(topic, partition, reason).await?;
        }
        if self.buffered > self.cfg.max_buffer_bytes {
            let sizes: Vec<((String, i32), u64)> = self
                .parts
                .iter()
                .flat_map(|(t, m)| {
                    m.iter().filter_map(|(p, s)| {
                        s.open.as_ref().map(|f| ((t.clone(), *p), f.stats.bytes))
                    })
                })
                .collect();
            for (t, p) in over_budget(&sizes, self.cfg.max_buffer_bytes) {
                self.finalise(&t, p, Reason::Memory).await?;
            }
        }
        if !self.to_commit.is_empty() {
            self.commit(consumer).await?;
        }
        Ok(())
    }

    /// Closes the open file of `topic`/`partition`: dead letters acknowledged, object encoded
    /// and uploaded, offset queued for commit. Nothing is committed here.
    async fn finalise(
        &mut self,
        topic: &str,
        partition: i32,
        reason: Reason,
    ) -> Result<(), SinkError> {
        let Some(st) = self
            .parts
            .get_mut(topic)
            .and_then(|m| m.get_mut(&partition))
        else {
            return Ok(());
        };
        let Some(f) = st.open.take() else {
            return Ok(());
        };
        self.buffered -= f.stats.bytes;
        let rows = st.rows.len() as u64;
        let batch = if rows > 0 {
            Some(st.rows.finish().map_err(|e| SinkError::Encode {
                object: format!("{topic}/{partition}"),
                source: EncodeError::Parquet {
                    rows: rows as usize,
                    source: e.into(),
                },
            })?)
        } else {
            None
        };
        // Dead letters of this range must be durable before the object exists: recovery skips
        // every offset of an object's range.
        self.emitter.await_deliveries().await?;
        let mut object = None;
        if let Some(batch) = batch {
            let started = Instant::now();
            let name = self
                .cfg
                .layout
                .object(topic, partition, f.stats.bucket, f.first, f.last);
            let url = self.store.url(&name);
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
            object = Some(url);
        }
        self.to_commit
            .push((topic.to_owned(), partition, f.last + 1, object));
        self.update_gauges();
        Ok(())
    }

    /// Commits every queued offset (synchronously). A commit refused because of a rebalance is
    /// not an error: the next owner finds the objects and skips their offsets.
    async fn commit(&mut self, consumer: &LoopConsumer) -> Result<(), SinkError> {
        if self.to_commit.is_empty() {
            return Ok(());
        }
        let pending = std::mem::take(&mut self.to_commit);
        let mut tpl = TopicPartitionList::new();
        for (t, p, o, _) in &pending {
            // Later entries of the same partition carry larger offsets: the last one wins.
            let _ = tpl.add_partition_offset(t, *p, Offset::Offset(*o));
        }
        let res = tokio::task::block_in_place(|| consumer.commit(&tpl, CommitMode::Sync));
        match res {
            Ok(()) => {
                self.metrics.commits.inc();
                let now = now_ms() / 1000;
                for (t, p, o, object) in pending {
                    let Some(object) = object else { continue };
                    tracing::info!(topic = %t, partition = p, offset = o, %object, "committed");
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
            Err(KafkaError::ConsumerCommit(
                code @ (RDKafkaErrorCode::RebalanceInProgress
                | RDKafkaErrorCode::IllegalGeneration
                | RDKafkaErrorCode::UnknownMemberId),
            )) => {
                tracing::warn!(
                    ?code,
                    "commit refused during a rebalance; the new owner skips the stored offsets"
                );
                Ok(())
            }
            Err(source) => Err(SinkError::Commit {
                offsets: pending
                    .iter()
                    .map(|(t, p, o, _)| format!("{t}/{p}@{o}"))
                    .collect::<Vec<_>>()
                    .join(","),
                source,
            }),
        }
    }

    async fn rotate_aged(&mut self) -> Result<(), SinkError> {
        let now = now_ms();
        let aged: Vec<(String, i32)> = self
            .parts
            .iter()
            .flat_map(|(t, m)| {
                m.iter().filter_map(|(p, s)| {
                    s.open
                        .as_ref()
                        .and_then(|f| self.cfg.rotation.on_tick(&f.stats, now))
                        .map(|_| (t.clone(), *p))
                })
            })
            .collect();
        for (t, p) in aged {
            self.finalise(&t, p, Reason::Age).await?;
        }
        Ok(())
    }

    async fn finalise_all(&mut self, reason: Reason) -> Result<(), SinkError> {
        let open: Vec<(String, i32)> = self
            .parts
            .iter()
            .flat_map(|(t, m)| {
                m.iter()
                    .filter(|(_, s)| s.open.is_some())
                    .map(|(p, _)| (t.clone(), *p))
            })
            .collect();
        for (t, p) in open {
            self.finalise(&t, p, reason).await?;
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
                msg = consumer.recv() => {
                    let msg = match msg {
                        Ok(m) => { recv_errors = 0; m }
                        Err(e) => {
                            recv_errors += 1;
                            let d = Duration::from_millis(100 * 2u64.pow(recv_errors.min(7)));
                            tracing::warn!(error = %e, retry_in = ?d, "consume error");
                            tokio::time::sleep(d).await;
                            continue;
                        }
                    };
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
