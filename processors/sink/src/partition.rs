//! One partition's writing as a pure unit: records in, decisions out (no I/O, no clock).
//!
//! ```text
//!   write(record, size, now_ms) ─► Appended | Rejected (a row, or a dead letter in the range)
//!                                  + sealed files: the open range's, when this record ends it
//!                                    (before it: one hour too many; after it: records, bytes,
//!                                    or a cut replayed from the commit)
//!   seal_aged(now_ms), cut(Memory | Shutdown) ─► sealed files (a time cut, recorded for the commit)
//!   SealedFile { object name, bucket, first..=last, rows } ─► may_upload? ─► (shell uploads) ─► stored(file)
//!   committable() ─► Commit { offset, metadata } ─► (shell commits) ─► committed(commit)
//!   resume(metadata of the last commit) ─► the chain of ranges continues where it was cut
//! ```
//!
//! A [`PartitionWriter`] decides everything the sink decides per partition: which offset range
//! a record belongs to, where a range ends ([`crate::rotation`]), the object of each event hour
//! in a range and its name ([`crate::layout`]), which objects may be uploaded and which offset
//! may be committed with which metadata ([`crate::ledger`]). Its caller, [`crate::sink`],
//! executes those decisions: it uploads through [`crate::store`], sends rejected records to the
//! dead-letter topic, encodes the batches and commits through the consumer. Time comes in as
//! Unix milliseconds; the writer never reads a clock.
//!
//! Ranges, not hours, are the unit: a partition has one open range, whose records of every
//! event hour are kept together and split into one object per hour when it is sealed. Records
//! with scattered timestamps therefore cost one object per hour *per range*, not one per
//! record, and nothing is listed: a member resuming from a commit makes the same ranges, so it
//! recreates the same objects (a create-only upload that finds one counts it as stored).

use crate::layout::{HourBucket, Layout};
use crate::ledger::{Commit, Ledger, MAX_CUTS, Resume};
use crate::rotation::{Limits, RangeStats, Reason, Rotation};
use crate::rows::{Kind, Record, Rows};
use arrow_array::{RecordBatch, UInt32Array};
use arrow_schema::ArrowError;
use sensorflow_core::input::Reject;
use sensorflow_core::wire::Framing;
use std::collections::BTreeMap;

/// Building the Arrow batch of a file that is being sealed failed.
#[derive(Debug, thiserror::Error)]
#[error("building the {rows} rows of {object} failed: {source}")]
pub struct SealError {
    /// Object name (no store URL).
    pub object: String,
    /// Rows in the file.
    pub rows: usize,
    /// Cause.
    pub source: ArrowError,
}

/// What [`PartitionWriter::write`] did with a record.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Appended as a row of the open range.
    Appended,
    /// Not decodable: inside the open range but not a row; the caller sends it to the
    /// dead-letter topic before the range's objects are created.
    Rejected(Reject),
}

/// A record's outcome and the files it sealed.
#[derive(Debug)]
pub struct Written {
    /// What happened to the record.
    pub outcome: Outcome,
    /// Input bytes (key + value) the record added to the open range: its size.
    pub buffered: u64,
    /// Files sealed by this record, one per event hour of the range it ended: the previous
    /// range's when this record would bring one hour too many ([`Reason::Hours`]), or the
    /// record's own range when it is full ([`Reason::Records`], [`Reason::Bytes`]) or a
    /// committed cut ends it here ([`Reason::Cut`]).
    pub sealed: Vec<SealedFile>,
}

/// One object of a closed range: what to upload, and the range it helps release for the
/// commit once stored.
#[derive(Debug)]
pub struct SealedFile {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// Hour bucket of every row.
    pub bucket: HourBucket,
    /// First offset of the range (inclusive).
    pub first: i64,
    /// Last offset of the range (inclusive).
    pub last: i64,
    /// Object name ([`Layout::object`] of topic, partition, bucket, first, last).
    pub name: String,
    /// The rows of `bucket` in the range; `None` when every record of that hour was rejected
    /// (nothing to upload, the file still counts as stored once its turn comes).
    pub batch: Option<RecordBatch>,
    /// Input bytes (key + value) of the range's records of this hour.
    pub bytes_in: u64,
    /// Why the range was closed.
    pub reason: Reason,
    /// When the range was opened, Unix ms (as passed to [`PartitionWriter::write`]).
    pub opened_at_ms: i64,
}

/// The open range as seen from outside.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenSpan {
    /// First offset (inclusive).
    pub first: i64,
    /// Last offset so far (inclusive).
    pub last: i64,
    /// Record, byte and hour counters, opening time.
    pub stats: RangeStats,
}

/// The limits and names shared by every partition's writer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriterConfig {
    /// Object names.
    pub layout: Layout,
    /// Rotation limits: the deterministic ones for the ranges this member starts, and the age.
    pub rotation: Rotation,
    /// Value framing.
    pub framing: Framing,
}

struct OpenRange {
    first: i64,
    last: i64,
    stats: RangeStats,
    rows: Rows,
    /// The hour of each row, in row order.
    row_hours: Vec<HourBucket>,
    /// Input bytes per hour (rows and rejected records).
    bytes: BTreeMap<HourBucket, u64>,
}

/// The pure writer of one partition (see the module docs).
pub struct PartitionWriter {
    topic: String,
    partition: i32,
    kind: Kind,
    cfg: WriterConfig,
    ledger: Ledger,
    open: Option<OpenRange>,
    /// The partition's high watermark read after this member got it: a time cut must end at
    /// or above `high - 1` (see [`PartitionWriter::resume`]); `None` until it is known.
    high: Option<i64>,
    /// Last commit made, to skip redundant commits.
    committed: Option<Commit>,
}

impl PartitionWriter {
    /// A writer of `topic`/`partition`, decoding values as `kind`, starting a chain of ranges
    /// with the configured limits (see [`PartitionWriter::resume`] to continue one).
    pub fn new(topic: &str, partition: i32, kind: Kind, cfg: WriterConfig) -> Self {
        Self {
            topic: topic.to_owned(),
            partition,
            kind,
            ledger: Ledger::new(cfg.rotation.limits),
            cfg,
            open: None,
            high: Some(i64::MIN),
            committed: None,
        }
    }

    /// How values are decoded.
    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// Starts the partition as this member got it (before the first record): `resume` is the
    /// last commit's metadata (`None`: no commit, or one without sink metadata), `high` the
    /// partition's high watermark read after the assignment (`None`: not known yet, no time
    /// cut until [`PartitionWriter::set_high`]).
    ///
    /// With `resume`, the chain continues with its limits and its cuts, so the ranges from the
    /// committed offset on are the ones every earlier owner made. An earlier owner that lost
    /// the partition may still upload what it read, all below `high`, cut by the same rules;
    /// so this member makes no time cut below `high - 1` (it would end a range where that
    /// owner's continues), and keeps the chain's limits until its first time cut, where it
    /// switches to its own (the cut is committed before anything after it is uploaded).
    pub fn resume(&mut self, resume: Option<&Resume>, high: Option<i64>) {
        if let Some(r) = resume {
            self.ledger.resume(r);
        }
        self.high = high;
    }

    /// Whether the high watermark is still to be read ([`PartitionWriter::set_high`]).
    pub fn needs_high(&self) -> bool {
        self.high.is_none()
    }

    /// The high watermark, read after the assignment (a retry of what
    /// [`PartitionWriter::resume`] could not get).
    pub fn set_high(&mut self, high: i64) {
        self.high = Some(high);
    }

    /// Writes record `r` (of this partition, read in offset order) whose key and value hold
    /// `size` bytes, at wall-clock time `now_ms` (Unix ms: the opening time of a range it opens).
    ///
    /// # Errors
    /// [`SealError`] when a range this record seals cannot be turned into Arrow batches.
    pub fn write(&mut self, r: &Record<'_>, size: u64, now_ms: i64) -> Result<Written, SealError> {
        let bucket = HourBucket::of(r.timestamp_ms);
        let mut sealed = Vec::new();
        let limits = self.ledger.limits();
        if let Some(o) = &self.open
            && let Some(reason) = limits.before_append(&o.stats, !o.bytes.contains_key(&bucket))
        {
            sealed.extend(self.seal(reason)?);
        }
        let limits = self.ledger.limits();
        let o = match &mut self.open {
            Some(o) => o,
            None => {
                self.ledger.open(r.offset);
                self.open.insert(OpenRange {
                    first: r.offset,
                    last: r.offset,
                    stats: RangeStats {
                        records: 0,
                        bytes: 0,
                        hours: 0,
                        opened_at_ms: now_ms,
                    },
                    rows: Rows::new(self.kind, self.cfg.framing),
                    row_hours: Vec::new(),
                    bytes: BTreeMap::new(),
                })
            }
        };
        let outcome = match o.rows.append(r) {
            Ok(()) => {
                o.row_hours.push(bucket);
                Outcome::Appended
            }
            Err(reject) => Outcome::Rejected(reject),
        };
        *o.bytes.entry(bucket).or_default() += size;
        o.last = r.offset;
        o.stats.records += 1;
        o.stats.bytes += size;
        o.stats.hours = o.bytes.len();
        let full = limits.after_append(&o.stats);
        self.ledger.consumed(r.offset);
        let reason = full.or_else(|| self.ledger.cut_at(r.offset).then_some(Reason::Cut));
        if let Some(reason) = reason {
            sealed.extend(self.seal(reason)?);
        }
        Ok(Written {
            outcome,
            buffered: size,
            sealed,
        })
    }

    /// Closes the open range by its records (or a replayed cut): one file per event hour.
    fn seal(&mut self, reason: Reason) -> Result<Vec<SealedFile>, SealError> {
        let Some(mut o) = self.open.take() else {
            return Ok(Vec::new());
        };
        let (first, last) = (o.first, o.last);
        let name = |b: HourBucket| {
            self.cfg
                .layout
                .object(&self.topic, self.partition, b, first, last)
        };
        let rows = o.rows.len();
        let mut batches: BTreeMap<HourBucket, RecordBatch> = BTreeMap::new();
        if rows > 0 {
            let err = |source| SealError {
                object: name(o.row_hours[0]),
                rows,
                source,
            };
            let batch = o.rows.finish().map_err(err)?;
            let mut idx: BTreeMap<HourBucket, Vec<u32>> = BTreeMap::new();
            for (i, b) in o.row_hours.iter().enumerate() {
                idx.entry(*b).or_default().push(i as u32);
            }
            if idx.len() == 1 {
                batches.insert(o.row_hours[0], batch);
            } else {
                for (b, rows_of) in idx {
                    let part =
                        arrow_select::take::take_record_batch(&batch, &UInt32Array::from(rows_of))
                            .map_err(|source| SealError {
                                object: name(b),
                                rows,
                                source,
                            })?;
                    batches.insert(b, part);
                }
            }
        }
        let files: Vec<SealedFile> = o
            .bytes
            .iter()
            .map(|(b, bytes)| SealedFile {
                topic: self.topic.clone(),
                partition: self.partition,
                bucket: *b,
                first,
                last,
                name: name(*b),
                batch: batches.remove(b),
                bytes_in: *bytes,
                reason,
                opened_at_ms: o.stats.opened_at_ms,
            })
            .collect();
        self.ledger.seal(first, last, files.len());
        Ok(files)
    }

    /// Cuts the open range now, for a reason of timing (age, memory budget, shutdown): its
    /// files are returned, and they and every later range's wait for a commit carrying the cut
    /// ([`PartitionWriter::may_upload`]); the ranges after it follow this member's limits.
    /// Nothing is cut when no range is open, when it ends below the high watermark seen at
    /// assignment minus one (an earlier owner may have read on from there: see
    /// [`PartitionWriter::resume`]), or when [`MAX_CUTS`] cuts wait for their commit; the range
    /// then grows to its limits.
    ///
    /// # Errors
    /// [`SealError`] when the range's rows cannot be turned into Arrow batches.
    pub fn cut(&mut self, reason: Reason) -> Result<Vec<SealedFile>, SealError> {
        let Some(o) = &self.open else {
            return Ok(Vec::new());
        };
        let below = self.high.is_none_or(|h| o.last.saturating_add(1) < h);
        if self.ledger.pending_cuts() >= MAX_CUTS || below {
            return Ok(Vec::new());
        }
        self.ledger.cut(o.last, self.cfg.rotation.limits);
        self.seal(reason)
    }

    /// Cuts the open range when it has been open the rotation's `max_age_ms` at `now_ms`
    /// ([`Reason::Age`], see [`PartitionWriter::cut`]).
    ///
    /// # Errors
    /// [`SealError`] as for [`PartitionWriter::cut`].
    pub fn seal_aged(&mut self, now_ms: i64) -> Result<Vec<SealedFile>, SealError> {
        match &self.open {
            Some(o) if self.cfg.rotation.on_tick(&o.stats, now_ms).is_some() => {
                self.cut(Reason::Age)
            }
            _ => Ok(Vec::new()),
        }
    }

    /// The open range, if any.
    pub fn open_span(&self) -> Option<OpenSpan> {
        self.open.as_ref().map(|o| OpenSpan {
            first: o.first,
            last: o.last,
            stats: o.stats,
        })
    }

    /// Files being filled: the event hours of the open range.
    pub fn open_count(&self) -> usize {
        self.open.as_ref().map_or(0, |o| o.stats.hours)
    }

    /// Whether `file` may be uploaded now: no time cut at or before its range waits for its
    /// commit.
    pub fn may_upload(&self, file: &SealedFile) -> bool {
        self.ledger.may_upload(file.last)
    }

    /// The sealed file `file` is stored: uploaded, found already there, or empty (every
    /// record of its hour rejected and acknowledged on the dead-letter topic).
    pub fn stored(&mut self, file: &SealedFile) {
        self.ledger.stored(file.first, file.last);
    }

    /// The commit to make now, when it differs from the last one: every record below its
    /// offset is in a stored object, and its metadata carries the chain from there (with any
    /// cut that waits for it). `None` when there is nothing new to commit.
    pub fn committable(&self) -> Option<Commit> {
        self.ledger
            .commit()
            .filter(|c| self.committed.as_ref() != Some(c))
    }

    /// `c` (from [`PartitionWriter::committable`]) was committed.
    pub fn committed(&mut self, c: &Commit) {
        self.ledger.committed(c);
        self.committed = Some(c.clone());
    }

    /// The limits of the range being filled, or of the next one.
    pub fn limits(&self) -> Limits {
        self.ledger.limits()
    }
}

#[cfg(test)]
mod tests;
