//! Rebuilding processor state from the input topics on partition assignment, streaming.
//!
//! Windows are bounded in event time, so no state store is needed: for every assigned
//! partition with a committed offset `C`, the records that can still matter are those whose
//! timestamp is within a lookback of the last processed record (`C − 1`). This module reads
//! them back with a separate, group-less consumer and hands them to the processor one by one:
//!
//! ```text
//!   1. read the tail before C                 → timestamp T of the last record before C that
//!                                                the processor decodes (dead letters skipped)
//!   2. offsets_for_times(start(T))            → start offset S  (KIP-79 ListOffsets by time)
//!   3. read the late topic from start(T)      → source offsets it names: skipped in 4
//!   4. read [S, C) of every partition          → decode ─► per-stream queue ─► merge ─► apply
//!      streams of one partition number are merged by event time (each stream stays in
//!      offset order); a stream whose queue is full is paused until the merge catches up
//! ```
//!
//! - **Bounded memory.** Nothing is collected: a record is decoded as it arrives (undecodable
//!   records were dead-lettered when first seen and are skipped), queued compactly, and applied
//!   as soon as the merge allows. A stream's queue holds at most
//!   [`RebuildConfig::queue_records`] records; above that the stream is paused (the consumer's
//!   `pause`) and resumed at half. What the state needs is never dropped.
//! - **Time budget that grows with progress.** There is no total deadline: the rebuild fails
//!   only when no record arrived and no partition finished for [`RebuildConfig::stall_timeout`]
//!   (a broker that does not answer), so a rebuild of any length succeeds while it moves, and a
//!   restart never loops on a rebuild that was making progress.
//! - **The group membership is kept.** The rebuild runs inside the loop's handling of the
//!   assignment; the caller's `keep_alive` is called at every turn of the read loops and
//!   around every broker call, and polls the loop's consumer with the partitions paused
//!   ([`crate::keepalive`]), so a rebuild of any length does not exceed
//!   `max.poll.interval.ms`. Without it the member was evicted after 300 s, rejoined, got the
//!   same partitions and began the same rebuild again, for ever, with `/health` green.
//!   Rebalances those polls serve are handled by the driver after the rebuild, in order
//!   (a partition revoked meanwhile drops its rebuilt state before any record); a rebuild
//!   repeated from the same committed offsets is counted (`sensorflow_rebuild_repeats_total`).
//! - **Progress** is logged every 5 s and metered (`sensorflow_rebuilt_records_total`,
//!   `sensorflow_rebuilt_partitions_total`, `sensorflow_rebuild_in_progress`), and every step
//!   calls the caller's progress hook (the liveness heartbeat).
//! - **Retries in process.** A stalled or failed attempt (not the size limit: more attempts
//!   would hit it again) is retried by [`with_retries`] up to [`ATTEMPTS`] times in all, with
//!   exponential backoff (1 s, 2 s, 4 s, 8 s), each attempt from an empty state and counted in
//!   `sensorflow_rebuild_retries_total`; the liveness heartbeat beats at every attempt. Only
//!   then does the processor give up and exit, so a broker blip during an assignment costs
//!   seconds, not a pod restart, and a broker that stays away ends in an error, not an
//!   endless loop.
//! - **Size limit.** With [`RebuildConfig::max_records`] set, a rebuild that would re-read more
//!   records fails loudly ([`RebuildError::LimitExceeded`], `sensorflow_rebuild_failures_total
//!   {reason="limit"}`, an error log) instead of building a partial — wrong — state.
//!
//! - **Late records stay out.** A record the processor routed to the late topic when it first
//!   saw it (its input had been declared idle, or it was behind the watermark) never entered
//!   the previous owner's state. The rebuild reads the late topic's partitions first and skips
//!   the records they name (see [`replay`]), so the rebuilt state, and every output after it, is
//!   the one an uninterrupted run would have had.
//!
//! Record timestamps are the readings' event times (SensorFlow's producers set them so), so the
//! lookback (window + grace for the window-processor) restores the state the previous owner
//! had, provided the partition's timestamps are ordered within the grace period. The start of
//! each partition's range is the caller's (`start_ms`): the window-processor's is its own last
//! record minus the lookback; join-predict's is the *latest* of its five inputs' last records
//! minus its lookback (the watermark had passed it; see `join::rebuild_start_ms` in
//! sensorflow-apps), so an input silent for days does not make it re-read days of the others.
//! The main consumer then resumes at `C`.
//!
//! End of a stream: its record `C − 1` was delivered, or the consumer's position reached `C`
//! (a `read_committed` reader never receives transaction markers or aborted records, so `C − 1`
//! may never arrive; the position moves past them).

use crate::dlq;
use crate::metrics::{Metrics, ReasonLabel};
use crate::record::ConsumedRecord;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Headers};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use rustc_hash::{FxHashMap, FxHashSet};
use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

/// One partition to read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// The group's committed offset (the next record to process).
    pub committed: i64,
}

/// How a rebuild may proceed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RebuildConfig {
    /// The rebuild fails when nothing moved (no record read, no partition finished) for this
    /// long. Not a total deadline: a rebuild that keeps moving never times out.
    pub stall_timeout: Duration,
    /// Fail (loudly) rather than re-read more records than this in one rebuild; `None`:
    /// unlimited (memory stays bounded by the queues and the processor's own state).
    pub max_records: Option<u64>,
    /// Records queued per stream before it is paused (resumed at half).
    pub queue_records: usize,
}

impl Default for RebuildConfig {
    fn default() -> Self {
        Self {
            stall_timeout: Duration::from_secs(30),
            max_records: None,
            queue_records: 4096,
        }
    }
}

/// Reading back failed.
#[derive(Debug, thiserror::Error)]
pub enum RebuildError {
    /// The rebuild consumer could not be created, assigned or asked for offsets.
    #[error("rebuild consumer: {0}")]
    Consumer(#[from] KafkaError),
    /// Nothing moved for the stall timeout.
    #[error(
        "rebuild stalled: no record read and no partition finished for {stalled_for:?} \
         ({topic}/{partition} at offset {at}, wanted up to {until}; {records} records re-read \
         before the stall in {elapsed:?})"
    )]
    Stalled {
        /// A topic not finished.
        topic: String,
        /// Its partition.
        partition: i32,
        /// Time without progress.
        stalled_for: Duration,
        /// Last offset read there (−1: none).
        at: i64,
        /// Last offset wanted there.
        until: i64,
        /// Records re-read before the stall.
        records: u64,
        /// Time since the rebuild began.
        elapsed: Duration,
    },
    /// More records than the configured limit would be needed: the state would be wrong.
    #[error(
        "rebuild needs more than the limit of {limit} records (SF_REBUILD_MAX_RECORDS); \
         refusing to build a partial state (the lookback spans at least {records} records)"
    )]
    LimitExceeded {
        /// The limit.
        limit: u64,
        /// Records read when it was hit.
        records: u64,
    },
}

impl RebuildError {
    /// The `reason` label of `sensorflow_rebuild_failures_total`.
    pub fn reason(&self) -> &'static str {
        match self {
            RebuildError::Consumer(_) => "consumer",
            RebuildError::Stalled { .. } => "stalled",
            RebuildError::LimitExceeded { .. } => "limit",
        }
    }

    /// Counts this failed attempt, to be retried after `wait`, in `metrics`, logs it and beats
    /// the liveness (the processor is acting on a known schedule, not stuck).
    pub fn count_retry(&self, metrics: &Metrics, attempt: u32, wait: Duration) {
        metrics.rebuild_retries.inc();
        metrics.beat();
        tracing::warn!(error = %self, reason = self.reason(), attempt, of = ATTEMPTS, retry_in = ?wait, "state rebuild attempt failed; retrying from scratch");
    }

    /// Counts this failed rebuild by its reason in `metrics` and logs it loudly.
    pub fn count_failure(&self, metrics: &Metrics) {
        metrics
            .rebuild_failures
            .get_or_create(&ReasonLabel {
                reason: self.reason().to_owned(),
            })
            .inc();
        tracing::error!(error = %self, reason = self.reason(), "state rebuild failed");
    }
}

/// Attempts of one rebuild by [`with_retries`] (the first one and four retries).
pub const ATTEMPTS: u32 = 5;

/// Runs `attempt` until it succeeds, fails with [`RebuildError::LimitExceeded`] (never
/// retried: the same input hits the same limit), or has been tried `attempts` times, sleeping
/// `base`, 2·`base`, 4·`base`, … between tries. `attempt` must start from an empty state (it
/// is the caller's job to drop what a failed try built). `on_retry(error, attempt number,
/// wait)` is called before each sleep. Blocking. Returns the last error when every try failed.
///
/// # Errors
/// The error of the last attempt.
pub fn with_retries<T>(
    attempts: u32,
    base: Duration,
    on_retry: impl Fn(&RebuildError, u32, Duration),
    mut attempt: impl FnMut() -> Result<T, RebuildError>,
) -> Result<T, RebuildError> {
    let mut n = 1;
    loop {
        match attempt() {
            Ok(v) => return Ok(v),
            Err(e @ RebuildError::LimitExceeded { .. }) => return Err(e),
            Err(e) if n >= attempts.max(1) => return Err(e),
            Err(e) => {
                let wait = base.saturating_mul(1 << (n - 1).min(16));
                on_retry(&e, n, wait);
                std::thread::sleep(wait);
                n += 1;
            }
        }
    }
}

/// A (topic, partition) pair.
pub type Key = (String, i32);

/// Timestamps (ms) of the last processed record before the committed offset, per
/// (topic, partition).
pub type LastTimestamps = FxHashMap<Key, i64>;

/// What one rebuild did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Summary {
    /// Partitions re-read.
    pub partitions: usize,
    /// Records read back (including undecodable ones, skipped).
    pub records: u64,
    /// Records handed to the processor.
    pub applied: u64,
}

/// Progress bookkeeping of a rebuild: stall detection by time since the last progress, and
/// the size limit. Pure (time passed in).
#[derive(Debug, Clone)]
pub struct Progress {
    started: Instant,
    last: Instant,
    records: u64,
    cfg: RebuildConfig,
}

impl Progress {
    /// A rebuild that begins at `now`.
    pub fn new(cfg: RebuildConfig, now: Instant) -> Self {
        Self {
            started: now,
            last: now,
            records: 0,
            cfg,
        }
    }

    /// `n` more records read at `now`.
    ///
    /// # Errors
    /// [`RebuildError::LimitExceeded`] when the total passes the limit.
    pub fn records(&mut self, n: u64, now: Instant) -> Result<(), RebuildError> {
        if n == 0 {
            return Ok(());
        }
        self.records += n;
        self.last = now;
        match self.cfg.max_records {
            Some(limit) if self.records > limit => Err(RebuildError::LimitExceeded {
                limit,
                records: self.records,
            }),
            _ => Ok(()),
        }
    }

    /// Something else moved at `now` (a partition finished).
    pub fn moved(&mut self, now: Instant) {
        self.last = now;
    }

    /// Records read so far.
    pub fn total(&self) -> u64 {
        self.records
    }

    /// Time since the rebuild began.
    pub fn elapsed(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.started)
    }

    /// `Some(time without progress)` when it exceeds the stall timeout.
    pub fn stalled(&self, now: Instant) -> Option<Duration> {
        let idle = now.saturating_duration_since(self.last);
        (idle > self.cfg.stall_timeout).then_some(idle)
    }
}

/// One record waiting in a stream's queue.
#[derive(Debug, Clone, PartialEq)]
struct Queued<T> {
    ts: i64,
    offset: i64,
    item: T,
}

#[derive(Debug)]
struct Stream<T> {
    group: usize,
    queue: VecDeque<Queued<T>>,
    done: bool,
    paused: bool,
}

/// The merge of several streams (each in offset order) into groups: within a group, the next
/// record applied is the queued head with the smallest `(timestamp, stream index)`, and only
/// once every unfinished stream of the group has a head, so a stream that is merely slower to
/// fetch never falls behind. Each stream's own order is kept (a join input's repeat filter and
/// the window's arrival order depend on it). Pure.
#[derive(Debug)]
pub struct Merge<T> {
    streams: Vec<Stream<T>>,
    groups: Vec<Vec<usize>>,
    queue_limit: usize,
}

/// A pause or resume the consumer must apply to a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    /// Stop fetching the stream: its queue is full.
    Pause(usize),
    /// Fetch it again: its queue drained to half.
    Resume(usize),
}

impl<T> Merge<T> {
    /// Streams `0..groups.len()`, stream `i` in group `groups[i]`; `queue_limit` records per
    /// stream before it asks to be paused.
    pub fn new(groups_of_streams: &[usize], queue_limit: usize) -> Self {
        let n_groups = groups_of_streams.iter().map(|g| g + 1).max().unwrap_or(0);
        let mut groups = vec![Vec::new(); n_groups];
        let streams = groups_of_streams
            .iter()
            .enumerate()
            .map(|(i, &g)| {
                groups[g].push(i);
                Stream {
                    group: g,
                    queue: VecDeque::new(),
                    done: false,
                    paused: false,
                }
            })
            .collect();
        Self {
            streams,
            groups,
            queue_limit: queue_limit.max(2),
        }
    }

    /// Queues a record of `stream`, then hands every record the merge allows to `apply`.
    /// Returns a [`Flow::Pause`] when the stream's queue is full afterwards, or a
    /// [`Flow::Resume`] for streams that drained.
    pub fn push(
        &mut self,
        stream: usize,
        ts: i64,
        offset: i64,
        item: T,
        apply: &mut impl FnMut(usize, i64, T),
        flows: &mut Vec<Flow>,
    ) {
        self.streams[stream]
            .queue
            .push_back(Queued { ts, offset, item });
        let g = self.streams[stream].group;
        self.drain(g, apply, flows);
        let s = &mut self.streams[stream];
        if !s.paused && s.queue.len() >= self.queue_limit {
            s.paused = true;
            flows.push(Flow::Pause(stream));
        }
    }

    /// `stream` has no more records: what it queued is applied as the merge allows.
    pub fn finish(
        &mut self,
        stream: usize,
        apply: &mut impl FnMut(usize, i64, T),
        flows: &mut Vec<Flow>,
    ) {
        if self.streams[stream].done {
            return;
        }
        self.streams[stream].done = true;
        let g = self.streams[stream].group;
        self.drain(g, apply, flows);
    }

    /// True when `stream` was finished.
    pub fn is_done(&self, stream: usize) -> bool {
        self.streams[stream].done
    }

    /// Records queued over all streams.
    pub fn queued(&self) -> usize {
        self.streams.iter().map(|s| s.queue.len()).sum()
    }

    fn drain(&mut self, g: usize, apply: &mut impl FnMut(usize, i64, T), flows: &mut Vec<Flow>) {
        loop {
            let mut best: Option<(i64, usize)> = None;
            for &i in &self.groups[g] {
                let s = &self.streams[i];
                match s.queue.front() {
                    None if !s.done => return,
                    Some(q) if best.is_none_or(|(ts, _)| q.ts < ts) => best = Some((q.ts, i)),
                    _ => {}
                }
            }
            let Some((_, i)) = best else { return };
            let s = &mut self.streams[i];
            #[allow(clippy::expect_used)]
            let q = s.queue.pop_front().expect("a head");
            if s.paused && s.queue.len() <= self.queue_limit / 2 {
                s.paused = false;
                flows.push(Flow::Resume(i));
            }
            apply(i, q.offset, q.item);
        }
    }
}

/// The start offset of a partition from the `offsets_for_times` answer: the first offset
/// with a timestamp at or after the start time, but never past `last` (the last processed
/// offset: with no record at or after that time before it, only the tail is re-read).
pub fn start_offset(answer: Offset, last: i64) -> i64 {
    match answer {
        Offset::Offset(o) if (0..=last).contains(&o) => o,
        _ => last,
    }
}

fn assign(c: &BaseConsumer, at: &[(Key, i64)]) -> Result<(), KafkaError> {
    let mut tpl = TopicPartitionList::new();
    for ((t, p), o) in at {
        tpl.add_partition_offset(t, *p, Offset::Offset(*o))?;
    }
    c.assign(&tpl)
}

fn tpl_of(k: &Key) -> TopicPartitionList {
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition(&k.0, k.1);
    tpl
}

/// Positions of the assigned partitions.
fn positions(c: &BaseConsumer) -> FxHashMap<Key, i64> {
    c.position()
        .map(|tpl| crate::consumer::tpl_entries(&tpl).into_iter().collect())
        .unwrap_or_default()
}

/// What [`read_streams`] reports.
enum Event<'a, 'm> {
    /// A record of stream `i` below its end, first delivery.
    Record(usize, &'a BorrowedMessage<'m>),
    /// Stream `i` reached its end.
    Finished(usize),
}

/// Reads `[from, end)` of the streams `keys` (each with its own from/end) until every stream
/// reached its end, reporting records and ends to `on`, which returns through `flows` the
/// pauses and resumes to apply. Stall detection and the size limit through `progress`; `hook`
/// is called with the records read whenever something moved, `keep_alive` at every turn.
#[allow(clippy::too_many_arguments)]
fn read_streams(
    c: &BaseConsumer,
    keys: &[Key],
    from: &[i64],
    end: &[i64],
    progress: &mut Progress,
    hook: &dyn Fn(u64),
    keep_alive: &dyn Fn(),
    mut on: impl FnMut(Event<'_, '_>, &mut Vec<Flow>),
) -> Result<(), RebuildError> {
    let index: FxHashMap<&Key, usize> = keys.iter().enumerate().map(|(i, k)| (k, i)).collect();
    let mut last: Vec<i64> = from.iter().map(|f| f - 1).collect();
    let mut done: Vec<bool> = (0..keys.len()).map(|i| from[i] >= end[i]).collect();
    let mut open = done.iter().filter(|d| !**d).count();
    let mut flows = Vec::new();
    for (i, d) in done.iter().enumerate() {
        if *d {
            on(Event::Finished(i), &mut flows);
        }
    }
    let at: Vec<(Key, i64)> = keys
        .iter()
        .zip(from)
        .zip(&done)
        .filter(|(_, d)| !**d)
        .map(|((k, f), _)| (k.clone(), *f))
        .collect();
    if at.is_empty() {
        return Ok(());
    }
    assign(c, &at)?;
    // Phases before this one ended with broker answers: the clock starts here.
    progress.moved(Instant::now());
    let mut since_check = 0u32;
    let mut last_log = Instant::now();
    while open > 0 {
        keep_alive();
        let mut read = 0u64;
        let mut moved = false;
        let polled = c.poll(Duration::from_millis(100));
        let mut check_positions = polled.is_none();
        match polled {
            None => {}
            Some(Err(e)) => tracing::debug!(error = %e, "rebuild poll"),
            Some(Ok(m)) => {
                let key = (m.topic().to_owned(), m.partition());
                if let Some(&i) = index.get(&key)
                    && !done[i]
                {
                    let off = m.offset();
                    // Not yet seen (a resumed stream may deliver again), below the end.
                    if off > last[i] && off < end[i] {
                        last[i] = off;
                        read += 1;
                        on(Event::Record(i, &m), &mut flows);
                    }
                    if off >= end[i] - 1 {
                        done[i] = true;
                        open -= 1;
                        moved = true;
                        on(Event::Finished(i), &mut flows);
                    }
                }
                since_check += 1;
                check_positions |= since_check >= 4096;
            }
        }
        if check_positions {
            since_check = 0;
            // A read_committed reader skips markers and aborted records: the position says
            // when a stream is past its end although its last offsets never arrive.
            for (k, pos) in positions(c) {
                if let Some(&i) = index.get(&k)
                    && !done[i]
                    && pos >= end[i]
                {
                    done[i] = true;
                    open -= 1;
                    moved = true;
                    on(Event::Finished(i), &mut flows);
                }
            }
        }
        for f in flows.drain(..) {
            let r = match f {
                Flow::Pause(i) => c.pause(&tpl_of(&keys[i])),
                Flow::Resume(i) => c.resume(&tpl_of(&keys[i])),
            };
            if let Err(e) = r {
                tracing::warn!(error = %e, ?f, "rebuild pause/resume");
            }
        }
        let now = Instant::now();
        if read > 0 || moved {
            progress.moved(now);
            progress.records(read, now)?;
            hook(read);
        }
        if now.duration_since(last_log) >= Duration::from_secs(5) {
            last_log = now;
            tracing::info!(
                records = progress.total(),
                streams_left = open,
                streams = keys.len(),
                elapsed = ?progress.elapsed(now),
                "rebuilding state"
            );
        }
        if let Some(stalled_for) = progress.stalled(now) {
            let i = (0..keys.len()).find(|i| !done[*i]).unwrap_or(0);
            return Err(RebuildError::Stalled {
                topic: keys[i].0.clone(),
                partition: keys[i].1,
                stalled_for,
                at: last[i],
                until: end[i] - 1,
                records: progress.total(),
                elapsed: progress.elapsed(now),
            });
        }
    }
    Ok(())
}

/// The least time one broker request of the rebuild may take.
const BROKER_CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// How far back the tail read for a partition's last timestamp goes first (offsets); it
/// widens ×8 when only transaction markers or aborted records lie there.
const TAIL: i64 = 32;

/// Timestamps (`ts_of`, ms) of the last record before the committed offset of every partition
/// in `want` (key → committed offset, low watermark) that has one: `ts_of` says `None` for a
/// record that is not part of the state (dead-lettered when first seen), and the tail read
/// widens past those as past transaction markers.
fn last_timestamps(
    c: &BaseConsumer,
    want: &[(Key, i64, i64)],
    progress: &mut Progress,
    hook: &dyn Fn(u64),
    keep_alive: &dyn Fn(),
    mut ts_of: impl FnMut(&BorrowedMessage<'_>) -> Option<i64>,
) -> Result<LastTimestamps, RebuildError> {
    let mut out = LastTimestamps::default();
    let mut todo: Vec<(Key, i64, i64)> = want.to_vec();
    let mut span = TAIL;
    while !todo.is_empty() {
        let keys: Vec<Key> = todo.iter().map(|(k, _, _)| k.clone()).collect();
        let from: Vec<i64> = todo
            .iter()
            .map(|(_, c, low)| (c - span).max(*low))
            .collect();
        let end: Vec<i64> = todo.iter().map(|(_, c, _)| *c).collect();
        let mut found: Vec<Option<i64>> = vec![None; keys.len()];
        read_streams(
            c,
            &keys,
            &from,
            &end,
            progress,
            hook,
            keep_alive,
            |ev, _| {
                if let Event::Record(i, m) = ev
                    && let Some(t) = ts_of(m)
                {
                    found[i] = Some(t);
                }
            },
        )?;
        let mut next = Vec::new();
        for (((k, committed, low), f), from) in todo.into_iter().zip(found).zip(from) {
            match f {
                Some(t) => {
                    out.insert(k, t);
                }
                // Only markers, aborted or dead-lettered records in the tail: look further back.
                None if from > low => next.push((k, committed, low)),
                None => {}
            }
        }
        todo = next;
        span = span.saturating_mul(8);
    }
    Ok(out)
}

/// Per stream of `keys`, the offsets that records of `late_topic` name as their source (the
/// [`dlq::SOURCE_TOPIC`], [`dlq::SOURCE_PARTITION`] and [`dlq::SOURCE_OFFSET`] headers). Reads
/// the late partition of each partition number of `keys` from the first record whose timestamp
/// is ≥ the earliest `since_ms` (ms) of that number's streams to the end (the last stable
/// offset: the consumer reads committed records only). An unknown late topic or partition
/// holds nothing.
///
/// # Errors
/// [`RebuildError::Consumer`] when offsets cannot be listed; stalls and the size limit as in
/// [`replay`].
#[allow(clippy::too_many_arguments)]
fn late_offsets(
    c: &BaseConsumer,
    late_topic: &str,
    keys: &[Key],
    since_ms: impl Fn(&Key) -> i64,
    call_timeout: Duration,
    progress: &mut Progress,
    hook: &dyn Fn(u64),
    keep_alive: &dyn Fn(),
) -> Result<Vec<FxHashSet<i64>>, RebuildError> {
    let mut out = vec![FxHashSet::default(); keys.len()];
    let mut since: BTreeMap<i32, i64> = BTreeMap::new();
    for k in keys {
        let s = since.entry(k.1).or_insert(i64::MAX);
        *s = (*s).min(since_ms(k));
    }
    let mut q = TopicPartitionList::new();
    for (n, s) in &since {
        q.add_partition_offset(late_topic, *n, Offset::Offset(*s))?;
    }
    keep_alive();
    let answers = match c.offsets_for_times(q, call_timeout) {
        Ok(a) => a,
        Err(KafkaError::OffsetFetch(RDKafkaErrorCode::UnknownTopicOrPartition)) => return Ok(out),
        Err(e) => return Err(e.into()),
    };
    // The broker answered: the rebuild moves (a heartbeat, no records).
    hook(0);
    // The ends of the same partitions in one request (ListOffsets "latest": the last stable
    // offset, as this consumer reads committed records only).
    let mut q = answers.clone();
    q.set_all_offsets(Offset::End)?;
    keep_alive();
    let ends = c.offsets_for_times(q, call_timeout)?;
    hook(0);
    keep_alive();
    let (mut streams, mut from, mut end) = (Vec::new(), Vec::new(), Vec::new());
    for (e, last) in answers.elements().iter().zip(ends.elements()) {
        if let Err(err) = e.error().and(last.error()) {
            if err.rdkafka_error_code() == Some(RDKafkaErrorCode::UnknownTopicOrPartition) {
                continue;
            }
            return Err(err.into());
        }
        let Offset::Offset(high) = last.offset() else {
            continue;
        };
        let first = match e.offset() {
            Offset::Offset(o) => o.min(high),
            // No record at or after the start time.
            _ => high,
        };
        streams.push((late_topic.to_owned(), e.partition()));
        from.push(first);
        end.push(high);
    }
    let index: FxHashMap<(&str, i32), usize> = keys
        .iter()
        .enumerate()
        .map(|(i, (t, p))| ((t.as_str(), *p), i))
        .collect();
    read_streams(
        c,
        &streams,
        &from,
        &end,
        progress,
        hook,
        keep_alive,
        |ev, _| {
            if let Event::Record(_, m) = ev
                && let Some((topic, partition, offset)) = late_source(m)
                && let Some(&i) = index.get(&(topic, partition))
            {
                out[i].insert(offset);
            }
        },
    )?;
    Ok(out)
}

/// The (topic, partition, offset) a late record's dead-letter headers name, if it has them.
fn late_source<'m>(m: &'m BorrowedMessage<'_>) -> Option<(&'m str, i32, i64)> {
    let headers = m.headers()?;
    let (mut topic, mut partition, mut offset) = (None, None, None);
    for h in headers.iter() {
        let v = || std::str::from_utf8(h.value?).ok();
        match h.key {
            dlq::SOURCE_TOPIC => topic = v(),
            dlq::SOURCE_PARTITION => partition = v().and_then(|s| s.parse().ok()),
            dlq::SOURCE_OFFSET => offset = v().and_then(|s| s.parse().ok()),
            _ => {}
        }
    }
    Some((topic?, partition?, offset?))
}

/// Reads back, for every request, the records in `[S, committed)` where `S` is the first
/// offset whose timestamp is ≥ `start_ms(last timestamps, partition)`, and applies them in
/// merge order (see [`Merge`]: streams of one partition number merged by the timestamp
/// `decode` gives, each in offset order; `topic_order` breaks ties between topics).
///
/// `late_topic`: where the processor routes late records (dead-letter headers naming each
/// source topic, partition and offset; see [`crate::dlq`]). Records of the requests that a
/// late record names were *late* when first processed, so the live state never held them; the
/// rebuild skips them too, since its own event-time merge would otherwise take them and the
/// rebuilt state (and every later output) would differ from an uninterrupted run's. The late
/// partitions with the requests' partition numbers are read from the first record at or
/// after the partition's start time (a late record older than that cannot matter: the state
/// drops values older than the lookback) to their end; a late topic that does not exist
/// holds no late records. `None`: nothing is skipped.
///
/// `decode` turns a record into its merge timestamp and what `apply` needs, or `None` for a
/// record that is not part of the state (dead-lettered when first seen). `apply` gets the
/// stream's (topic, partition), the record's offset and the decoded item. `hook` is called
/// with the number of records read whenever the rebuild moved (the liveness heartbeat and
/// metrics); `keep_alive` at every turn of the read loops and around every broker call (the
/// caller's group poll: see [`crate::keepalive`]). Requests with nothing before their
/// committed offset (or whose tail was deleted by retention) read nothing.
///
/// `start_ms` gets the *decoded* timestamp of each partition's last record before its
/// committed offset that `decode` accepts (records it refuses were dead-lettered when first
/// seen and say nothing about the state); a partition without one is absent.
///
/// Blocking: call it from a blocking context.
///
/// # Errors
/// [`RebuildError::Stalled`] when nothing moved for the stall timeout,
/// [`RebuildError::LimitExceeded`] past `max_records`, [`RebuildError::Consumer`] when the
/// rebuild consumer cannot be set up or offsets cannot be listed.
#[allow(clippy::too_many_arguments)]
pub fn replay<T>(
    config: &ClientConfig,
    requests: &[Request],
    topic_order: &[String],
    late_topic: Option<&str>,
    cfg: &RebuildConfig,
    start_ms: impl Fn(&LastTimestamps, &Key) -> i64,
    hook: &dyn Fn(u64),
    keep_alive: &dyn Fn(),
    mut decode: impl FnMut(&ConsumedRecord<'_>) -> Option<(i64, T)>,
    mut apply: impl FnMut(&Key, i64, T),
) -> Result<Summary, RebuildError> {
    let started = Instant::now();
    let mut progress = Progress::new(*cfg, started);
    // One broker request (metadata, watermarks, offsets by time) may take longer than a short
    // stall timeout on a fresh connection; it is bounded on its own.
    let call_timeout = cfg.stall_timeout.max(BROKER_CALL_TIMEOUT);
    keep_alive();
    let c: BaseConsumer = config.create()?;
    // Only partitions with something before the committed offset, still retained.
    let mut tails: Vec<(Key, i64, i64)> = Vec::new();
    for r in requests {
        if r.committed <= 0 {
            continue;
        }
        keep_alive();
        let (low, _high) = c.fetch_watermarks(&r.topic, r.partition, call_timeout)?;
        // The broker answered: the rebuild moves (a heartbeat, no records).
        hook(0);
        if r.committed > low {
            tails.push(((r.topic.clone(), r.partition), r.committed, low));
        }
    }
    if tails.is_empty() {
        return Ok(Summary::default());
    }
    // 1. the timestamp of the last processed record per partition
    let ts = last_timestamps(&c, &tails, &mut progress, hook, keep_alive, |m| {
        decode(&ConsumedRecord::from_kafka(m)).map(|(t, _)| t)
    })?;
    // 2. offsets for the start times
    let mut q = TopicPartitionList::new();
    let mut keys: Vec<Key> = ts.keys().cloned().collect();
    let rank = |t: &str| {
        topic_order
            .iter()
            .position(|x| x == t)
            .unwrap_or(usize::MAX)
    };
    keys.sort_by(|a, b| (a.1, rank(&a.0), &a.0).cmp(&(b.1, rank(&b.0), &b.0)));
    for k in &keys {
        q.add_partition_offset(&k.0, k.1, Offset::Offset(start_ms(&ts, k).max(0)))?;
    }
    keep_alive();
    let starts = c.offsets_for_times(q, call_timeout)?;
    keep_alive();
    let committed: FxHashMap<&Key, i64> = tails.iter().map(|(k, c, _)| (k, *c)).collect();
    let mut start: FxHashMap<Key, i64> = FxHashMap::default();
    for e in starts.elements() {
        let key = (e.topic().to_owned(), e.partition());
        if let Some(&c) = committed.get(&key) {
            start.insert(key, start_offset(e.offset(), c - 1));
        }
    }
    let from: Vec<i64> = keys
        .iter()
        .map(|k| start.get(k).copied().unwrap_or(committed[k] - 1))
        .collect();
    let end: Vec<i64> = keys.iter().map(|k| committed[k]).collect();
    // 3. the records the live run routed to the late topic: never part of its state
    let late = match late_topic {
        Some(topic) => late_offsets(
            &c,
            topic,
            &keys,
            |k| start_ms(&ts, k).max(0),
            call_timeout,
            &mut progress,
            hook,
            keep_alive,
        )?,
        None => vec![FxHashSet::default(); keys.len()],
    };
    let mut skipped_late = 0u64;
    // 4. read [S, C), merged per partition number
    let mut numbers: Vec<i32> = keys.iter().map(|k| k.1).collect();
    numbers.dedup();
    let groups: Vec<usize> = keys
        .iter()
        .map(|k| numbers.iter().position(|n| *n == k.1).unwrap_or(0))
        .collect();
    let mut merge: Merge<T> = Merge::new(&groups, cfg.queue_records);
    let mut applied = 0u64;
    let mut sink = |i: usize, off: i64, item: T| {
        applied += 1;
        apply(&keys[i], off, item);
    };
    read_streams(
        &c,
        &keys,
        &from,
        &end,
        &mut progress,
        hook,
        keep_alive,
        |ev, flows| match ev {
            Event::Record(i, m) => {
                if late[i].contains(&m.offset()) {
                    skipped_late += 1;
                    return;
                }
                if let Some((t, item)) = decode(&ConsumedRecord::from_kafka(m)) {
                    merge.push(i, t, m.offset(), item, &mut sink, flows);
                }
            }
            Event::Finished(i) => merge.finish(i, &mut sink, flows),
        },
    )?;
    let summary = Summary {
        partitions: keys.len(),
        records: progress.total(),
        applied,
    };
    tracing::info!(
        partitions = summary.partitions,
        records = summary.records,
        applied = summary.applied,
        skipped_late,
        elapsed = ?started.elapsed(),
        "state rebuilt from the topics"
    );
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn run_merge(
        groups: &[usize],
        limit: usize,
        arrivals: &[(usize, i64)],
    ) -> (Vec<(usize, i64, i64)>, Vec<Flow>) {
        let mut m: Merge<i64> = Merge::new(groups, limit);
        let mut out = Vec::new();
        let mut flows = Vec::new();
        let mut next_off = vec![0i64; groups.len()];
        let mut apply = |s: usize, off: i64, ts: i64| out.push((s, off, ts));
        for &(s, ts) in arrivals {
            let off = next_off[s];
            next_off[s] += 1;
            m.push(s, ts, off, ts, &mut apply, &mut flows);
        }
        for s in 0..groups.len() {
            m.finish(s, &mut apply, &mut flows);
        }
        assert_eq!(m.queued(), 0);
        (out, flows)
    }

    #[test]
    fn merge_waits_for_every_open_stream_of_the_group() {
        // Two streams in one group, one alone in another.
        let mut m: Merge<&str> = Merge::new(&[0, 0, 1], 100);
        let mut out = Vec::new();
        let mut flows = Vec::new();
        let mut apply = |s: usize, _off: i64, x: &'static str| out.push((s, x));
        m.push(0, 10, 0, "a10", &mut apply, &mut flows);
        m.push(2, 5, 0, "c5", &mut apply, &mut flows);
        m.push(0, 20, 1, "a20", &mut apply, &mut flows);
        m.push(1, 15, 0, "b15", &mut apply, &mut flows);
        m.finish(1, &mut apply, &mut flows);
        m.finish(0, &mut apply, &mut flows);
        // c5 at once (its group has one stream); a10 only once b had a head.
        assert_eq!(out, vec![(2, "c5"), (0, "a10"), (1, "b15"), (0, "a20")]);
    }

    #[test]
    fn a_full_stream_is_paused_and_resumed_at_half() {
        // Stream 1 never delivers until the end: stream 0 fills up and is paused.
        let arrivals: Vec<(usize, i64)> = (0..6).map(|t| (0, t)).chain([(1, 100)]).collect();
        let (out, flows) = run_merge(&[0, 0], 4, &arrivals);
        assert_eq!(flows, vec![Flow::Pause(0), Flow::Resume(0)]);
        assert_eq!(out.len(), 7);
    }

    #[test]
    fn start_offsets() {
        assert_eq!(start_offset(Offset::Offset(5), 9), 5);
        assert_eq!(start_offset(Offset::Offset(12), 9), 9);
        assert_eq!(start_offset(Offset::End, 9), 9);
        assert_eq!(start_offset(Offset::Offset(-1), 9), 9);
    }

    #[test]
    fn retries_back_off_and_end() {
        let stalled = || RebuildError::Stalled {
            topic: "t".into(),
            partition: 0,
            stalled_for: Duration::from_secs(30),
            at: -1,
            until: 9,
            records: 0,
            elapsed: Duration::from_secs(30),
        };
        let waits = std::cell::RefCell::new(Vec::new());
        let record = |_: &RebuildError, n: u32, w: Duration| waits.borrow_mut().push((n, w));
        let ms = Duration::from_millis(1);
        // Two stalls, then success: three attempts, waits 1 and 2 ms.
        let mut calls = 0;
        let r = with_retries(5, ms, record, || {
            calls += 1;
            if calls < 3 { Err(stalled()) } else { Ok(calls) }
        });
        assert_eq!(r.unwrap(), 3);
        assert_eq!(*waits.borrow(), vec![(1, ms), (2, 2 * ms)]);
        // Never succeeding: exactly `attempts` tries, then the last error.
        waits.borrow_mut().clear();
        let mut calls = 0;
        let r: Result<(), _> = with_retries(5, ms, record, || {
            calls += 1;
            Err(stalled())
        });
        assert!(matches!(r, Err(RebuildError::Stalled { .. })));
        assert_eq!(calls, 5);
        assert_eq!(waits.borrow().len(), 4);
        assert_eq!(waits.borrow()[3].1, 8 * ms);
        // The size limit is never retried.
        let mut calls = 0;
        let r: Result<(), _> = with_retries(5, ms, record, || {
            calls += 1;
            Err(RebuildError::LimitExceeded {
                limit: 1,
                records: 2,
            })
        });
        assert!(matches!(r, Err(RebuildError::LimitExceeded { .. })));
        assert_eq!(calls, 1);
    }

    #[test]
    fn stall_is_time_without_progress_not_total_time() {
        let t0 = Instant::now();
        let cfg = RebuildConfig {
            stall_timeout: Duration::from_secs(30),
            ..RebuildConfig::default()
        };
        let mut p = Progress::new(cfg, t0);
        // Ten minutes of steady progress, a record every 10 s: never stalled.
        for i in 1..=60u64 {
            let now = t0 + Duration::from_secs(10 * i);
            assert_eq!(p.stalled(now), None);
            p.records(1, now).unwrap();
        }
        let last = t0 + Duration::from_secs(600);
        assert_eq!(p.stalled(last + Duration::from_secs(30)), None);
        assert_eq!(
            p.stalled(last + Duration::from_secs(31)),
            Some(Duration::from_secs(31))
        );
        p.moved(last + Duration::from_secs(31));
        assert_eq!(p.stalled(last + Duration::from_secs(40)), None);
    }

    #[test]
    fn the_size_limit_fails_loudly() {
        let t0 = Instant::now();
        let mut p = Progress::new(
            RebuildConfig {
                max_records: Some(10),
                ..RebuildConfig::default()
            },
            t0,
        );
        p.records(10, t0).unwrap();
        let e = p.records(1, t0).unwrap_err();
        assert_eq!(e.reason(), "limit");
        assert!(e.to_string().contains("refusing to build a partial state"));
    }

    proptest! {
        /// Every record is applied once; each stream keeps its order; with every stream
        /// sorted by time, each group comes out sorted by time; memory stays bounded when the
        /// consumer honours the pauses.
        #[test]
        fn merge_keeps_stream_order_and_sorts_groups(
            groups in prop::collection::vec(0usize..3, 1..6),
            picks in prop::collection::vec((0usize..6, 0i64..50), 0..200),
            sorted in any::<bool>(),
        ) {
            let n = groups.len();
            // Arrival order of the records; each stream's timestamps sorted when `sorted`.
            let mut per: Vec<Vec<i64>> = vec![Vec::new(); n];
            let mut order = Vec::new();
            for (s, t) in picks {
                let s = s % n;
                per[s].push(t);
                order.push(s);
            }
            if sorted {
                for v in &mut per {
                    v.sort_unstable();
                }
            }
            let mut idx = vec![0usize; n];
            let arrivals: Vec<(usize, i64)> = order
                .iter()
                .map(|&s| {
                    let t = per[s][idx[s]];
                    idx[s] += 1;
                    (s, t)
                })
                .collect();
            let (out, _) = run_merge(&groups, 8, &arrivals);
            prop_assert_eq!(out.len(), arrivals.len());
            for (s, stream) in per.iter().enumerate() {
                let offs: Vec<i64> = out.iter().filter(|o| o.0 == s).map(|o| o.1).collect();
                let want: Vec<i64> = (0..stream.len() as i64).collect();
                prop_assert_eq!(offs, want);
            }
            if sorted {
                let max_group = groups.iter().copied().max().unwrap_or(0);
                for g in 0..=max_group {
                    let ts: Vec<i64> = out.iter().filter(|o| groups[o.0] == g).map(|o| o.2).collect();
                    prop_assert!(ts.windows(2).all(|w| w[0] <= w[1]), "group {} not sorted: {:?}", g, ts);
                }
            }
        }
    }
}
