//! One partition's writing as a pure unit: records in, decisions out (no I/O, no clock).
//!
//! ```text
//!   write(record, size, now_ms) ─► NeedsListing(prefix) ─► (shell lists) ─► add_listing ─► write again
//!                               ─► Skipped              (a listed object holds it)
//!                               ─► Appended | Rejected  (a row, or a dead letter in the range)
//!                                  + sealed files: the oldest when the partition had the most
//!                                    open (hour), this one when full (records, bytes)
//!   seal_aged(now_ms), seal(bucket, Memory), seal_all(Shutdown) ─► sealed files
//!   SealedFile { object name, bucket, first..=last, rows } ─► (shell uploads) ─► stored(file)
//!   committable() ─► the offset to commit ─► (shell commits) ─► committed(offset)
//! ```
//!
//! A [`PartitionWriter`] decides everything the sink decides per partition: which hour bucket
//! a record belongs to, whether its hour's directory must be listed first (recovery), whether
//! a listed object already holds it, which open file it goes to, when a file closes
//! ([`crate::rotation`]), the object name of a closed file ([`crate::layout`]) and which offset
//! may be committed once files are stored ([`crate::ledger`]). Its caller, [`crate::sink`],
//! executes those decisions: it lists and uploads through [`crate::store`], sends rejected
//! records to the dead-letter topic, encodes the batches and commits through the consumer.
//! Time comes in as Unix milliseconds; the writer never reads a clock.

use crate::layout::{HourBucket, Layout, parse_object};
use crate::ledger::Ledger;
use crate::rotation::{FileStats, Reason, Rotation};
use crate::rows::{Kind, Record, Rows};
use arrow_array::RecordBatch;
use arrow_schema::ArrowError;
use sensorflow_core::input::Reject;
use sensorflow_core::wire::Framing;

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

/// A directory to list before records of its hour can be written (see [`Outcome::NeedsListing`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listing {
    /// The hour bucket.
    pub bucket: HourBucket,
    /// Object name prefix to list: `PREFIX/topic=T/date=…/hour=HH/T-PPPPP-`.
    pub prefix: String,
}

/// What [`PartitionWriter::write`] did with a record.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Nothing yet: the record's hour directory must be listed first
    /// ([`PartitionWriter::add_listing`]), then the record written again.
    NeedsListing(Listing),
    /// An object found by a listing holds the record already (stored by a run that died
    /// before committing): consumed, not written.
    Skipped,
    /// Appended as a row of its bucket's open file.
    Appended,
    /// Not decodable: inside its bucket's open file's offset range but not a row; the caller
    /// sends it to the dead-letter topic before the file's object is created.
    Rejected(Reject),
}

/// A record's outcome and the files it sealed.
#[derive(Debug)]
pub struct Written {
    /// What happened to the record.
    pub outcome: Outcome,
    /// Input bytes (key + value) the record added to open files: its size when appended or
    /// rejected, 0 otherwise.
    pub buffered: u64,
    /// Files sealed by this record, in sealing order: first the oldest open file when the
    /// record's bucket needed a file and the partition had the most open ([`Reason::HourChange`]),
    /// then the record's own file when it is full ([`Reason::Records`], [`Reason::Bytes`]).
    pub sealed: Vec<SealedFile>,
}

/// A closed file: what to upload, and the range it releases for the commit once stored.
#[derive(Debug)]
pub struct SealedFile {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// Hour bucket of every row.
    pub bucket: HourBucket,
    /// First offset covered (inclusive).
    pub first: i64,
    /// Last offset covered (inclusive).
    pub last: i64,
    /// Object name ([`Layout::object`] of topic, partition, bucket, first, last).
    pub name: String,
    /// The rows; `None` when every record of the range was rejected (nothing to upload, the
    /// file still counts as stored once its turn comes).
    pub batch: Option<RecordBatch>,
    /// Input bytes (key + value) of the file's records.
    pub bytes_in: u64,
    /// Why it was closed.
    pub reason: Reason,
    /// When it was opened, Unix ms (as passed to [`PartitionWriter::write`]).
    pub opened_at_ms: i64,
}

/// An open file as seen from outside: its bucket, range and counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenSpan {
    /// First offset (inclusive).
    pub first: i64,
    /// Last offset so far (inclusive).
    pub last: i64,
    /// Bucket, record and byte counters, opening time.
    pub stats: FileStats,
}

/// The limits and names shared by every partition's writer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriterConfig {
    /// Object names.
    pub layout: Layout,
    /// Rotation limits.
    pub rotation: Rotation,
    /// Open files per partition (one per hour bucket, ≥ 1); opening one more seals the oldest.
    pub max_open: usize,
    /// Value framing.
    pub framing: Framing,
}

struct OpenFile {
    rows: Rows,
    stats: FileStats,
    first: i64,
    last: i64,
}

/// The pure writer of one partition (see the module docs).
pub struct PartitionWriter {
    topic: String,
    partition: i32,
    kind: Kind,
    cfg: WriterConfig,
    ledger: Ledger,
    open: Vec<OpenFile>,
    /// Offset last committed, to skip redundant commits.
    committed: Option<i64>,
}

impl PartitionWriter {
    /// A writer of `topic`/`partition`, decoding values as `kind`, starting with nothing open,
    /// nothing listed and nothing committed.
    pub fn new(topic: &str, partition: i32, kind: Kind, cfg: WriterConfig) -> Self {
        Self {
            topic: topic.to_owned(),
            partition,
            kind,
            cfg,
            ledger: Ledger::default(),
            open: Vec::new(),
            committed: None,
        }
    }

    /// How values are decoded.
    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// Records `bucket`'s listing: object names found under [`Listing::prefix`] (names of
    /// other partitions or topics and foreign names are ignored).
    pub fn add_listing(&mut self, bucket: HourBucket, names: &[String]) {
        let ranges = names
            .iter()
            .filter_map(|n| parse_object(n))
            .filter(|o| o.partition == self.partition && o.topic == self.topic)
            .map(|o| (o.first_offset, o.last_offset))
            .collect();
        self.ledger.add_listing(bucket, ranges);
    }

    /// Writes record `r` (of this partition) whose key and value hold `size` bytes, at
    /// wall-clock time `now_ms` (Unix ms: the opening time of a file it opens).
    ///
    /// # Errors
    /// [`SealError`] when a file this record seals cannot be turned into an Arrow batch.
    pub fn write(&mut self, r: &Record<'_>, size: u64, now_ms: i64) -> Result<Written, SealError> {
        let bucket = HourBucket::of(r.timestamp_ms);
        let mut written = Written {
            outcome: Outcome::Appended,
            buffered: 0,
            sealed: Vec::new(),
        };
        if self.ledger.needs_listing(bucket) {
            written.outcome = Outcome::NeedsListing(Listing {
                bucket,
                prefix: self
                    .cfg
                    .layout
                    .partition_in(&self.topic, self.partition, bucket),
            });
            return Ok(written);
        }
        if self.ledger.is_stored(bucket, r.offset) {
            self.ledger.consumed(r.offset);
            written.outcome = Outcome::Skipped;
            return Ok(written);
        }
        if self.ledger.open_first(bucket).is_none() {
            if self.open.len() >= self.cfg.max_open.max(1)
                && let Some(&oldest) = self.ledger.open_buckets().first()
            {
                written
                    .sealed
                    .extend(self.seal(oldest, Reason::HourChange)?);
            }
            self.ledger.open(bucket, r.offset);
            self.open.push(OpenFile {
                rows: Rows::new(self.kind, self.cfg.framing),
                stats: FileStats {
                    bucket,
                    records: 0,
                    bytes: 0,
                    opened_at_ms: now_ms,
                },
                first: r.offset,
                last: r.offset,
            });
        }
        self.ledger.consumed(r.offset);
        let rotation = self.cfg.rotation;
        let Some(f) = self.open.iter_mut().find(|f| f.stats.bucket == bucket) else {
            return Ok(written); // opened above
        };
        if let Err(reject) = f.rows.append(r) {
            written.outcome = Outcome::Rejected(reject);
        }
        f.last = r.offset;
        f.stats.records += 1;
        f.stats.bytes += size;
        written.buffered = size;
        if let Some(reason) = rotation.after_append(&f.stats) {
            written.sealed.extend(self.seal(bucket, reason)?);
        }
        Ok(written)
    }

    /// Closes the open file of `bucket`, if any: its range keeps holding the commit back until
    /// [`PartitionWriter::stored`].
    ///
    /// # Errors
    /// [`SealError`] when its rows cannot be turned into an Arrow batch.
    pub fn seal(
        &mut self,
        bucket: HourBucket,
        reason: Reason,
    ) -> Result<Option<SealedFile>, SealError> {
        let Some(i) = self.open.iter().position(|f| f.stats.bucket == bucket) else {
            return Ok(None);
        };
        let mut f = self.open.swap_remove(i);
        self.ledger.seal(bucket, f.first, f.last);
        let name = self
            .cfg
            .layout
            .object(&self.topic, self.partition, bucket, f.first, f.last);
        let rows = f.rows.len();
        let batch = if rows > 0 {
            Some(f.rows.finish().map_err(|source| SealError {
                object: name.clone(),
                rows,
                source,
            })?)
        } else {
            None
        };
        Ok(Some(SealedFile {
            topic: self.topic.clone(),
            partition: self.partition,
            bucket,
            first: f.first,
            last: f.last,
            name,
            batch,
            bytes_in: f.stats.bytes,
            reason,
            opened_at_ms: f.stats.opened_at_ms,
        }))
    }

    /// Seals every file open for the rotation's `max_age_ms` at `now_ms` ([`Reason::Age`]).
    ///
    /// # Errors
    /// [`SealError`] as for [`PartitionWriter::seal`].
    pub fn seal_aged(&mut self, now_ms: i64) -> Result<Vec<SealedFile>, SealError> {
        let rotation = self.cfg.rotation;
        let aged: Vec<HourBucket> = self
            .open
            .iter()
            .filter(|f| rotation.on_tick(&f.stats, now_ms).is_some())
            .map(|f| f.stats.bucket)
            .collect();
        self.seal_each(&aged, Reason::Age)
    }

    /// Seals every open file with `reason` (shutdown).
    ///
    /// # Errors
    /// [`SealError`] as for [`PartitionWriter::seal`].
    pub fn seal_all(&mut self, reason: Reason) -> Result<Vec<SealedFile>, SealError> {
        let all: Vec<HourBucket> = self.open.iter().map(|f| f.stats.bucket).collect();
        self.seal_each(&all, reason)
    }

    fn seal_each(
        &mut self,
        buckets: &[HourBucket],
        reason: Reason,
    ) -> Result<Vec<SealedFile>, SealError> {
        let mut out = Vec::with_capacity(buckets.len());
        for b in buckets {
            out.extend(self.seal(*b, reason)?);
        }
        Ok(out)
    }

    /// The open files, in the order they are sealed by [`PartitionWriter::seal_all`].
    pub fn open_spans(&self) -> impl Iterator<Item = OpenSpan> + '_ {
        self.open.iter().map(|f| OpenSpan {
            first: f.first,
            last: f.last,
            stats: f.stats,
        })
    }

    /// Number of open files.
    pub fn open_count(&self) -> usize {
        self.open.len()
    }

    /// The sealed file `file` is stored: uploaded, found already there, or empty (every
    /// record of it rejected and acknowledged on the dead-letter topic).
    pub fn stored(&mut self, file: &SealedFile) {
        self.ledger.stored(file.bucket, file.first, file.last);
    }

    /// The offset to commit now, when it moved past the last commit: every record below it
    /// is in a stored file (or was skipped as already stored). `None` when there is nothing
    /// new to commit.
    pub fn committable(&self) -> Option<i64> {
        self.ledger
            .commit_offset()
            .filter(|o| self.committed.is_none_or(|c| *o > c))
    }

    /// `offset` (from [`PartitionWriter::committable`]) was committed.
    pub fn committed(&mut self, offset: i64) {
        self.committed = Some(offset);
        self.ledger.committed(offset);
    }
}

#[cfg(test)]
mod tests;
