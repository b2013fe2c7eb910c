//! # sensorflow-sink
//!
//! `gcs-sink`: copies pipeline topics into Parquet objects in Google Cloud Storage (or a local
//! directory) so Spark, BigQuery, DuckDB and pyarrow can analyse them.
//!
//! ```text
//!  SX … FD, predictions, ──► recv ─► rows::Rows (typed columns) ─► rotation ─► seal (queue)
//!  dead-letter, late           └─► dead-letter topic (reason headers)               │
//!                                                          still assigned? encode (Parquet)
//!                                                                                    ▼
//!        commit ledger offset ◄── object created (or found) ◄── create-only put (GCS | local dir)
//! ```
//!
//! The pure parts are tested without I/O: [`partition`], one partition's writer (records in;
//! listings to make, skips, dead letters, sealed files with their object names and the
//! offset to commit out), built on [`layout`] (object names), [`rotation`] (when a file
//! closes), [`ledger`] (offset bookkeeping) and [`rows`] (typed columns); [`encode`] makes
//! the Parquet bytes. [`store`] and [`sink`] are the edges: the sink executes the writers'
//! decisions against the store and the consumer.
//!
//! ## Exactly one copy of every record
//!
//! 1. A partition has at most a few open files (`--max-open-hours`, default 3), one per hour
//!    bucket (the hour of the Kafka timestamp = event time). The file of bucket `b` covering
//!    offsets `first..=last` holds every record of bucket `b` in that range.
//! 2. A file is sealed (its upload queued), then, while its partition is still assigned:
//!    the dead letters of its range are awaited, it is encoded and uploaded whole and
//!    create-only (GCS creates the object only when the upload completes and only if the name
//!    is free; the local store hard-links a synced temporary file). An upload refused because
//!    the name exists counts as stored: same name, same records. The partition's commit offset
//!    is `min(first of its open and sealed files)`, or the next offset to read when none is
//!    left ([`ledger::Ledger`], through [`partition::PartitionWriter::committable`]): every
//!    record below it is in a finished object.
//! 3. The object name is a function of `(topic, partition, bucket, first, last)`.
//! 4. After a restart or rebalance, the first record of each hour bucket makes the sink list
//!    `…/topic=T/date=…/hour=HH/T-P-`: objects uploaded by a run that died before committing.
//!    A record whose offset a listed object's range covers is skipped (it is stored there).
//! 5. A revoked partition's open and sealed files are dropped, never uploaded: the next owner
//!    re-reads them from the last commit and, by 4, skips what the previous owner had uploaded.
//!    Uploads are paced so the member polls well within `max.poll.interval.ms` and is never
//!    evicted mid-upload ([`sink`] explains the bounds); a lost assignment drops everything.
//!
//! A crash before an upload completes leaves no object (the records are re-read and written,
//! possibly cut differently); a crash between upload and commit leaves an object that step 4
//! finds; a crash after the commit loses nothing. `ledger`'s property test drives the same
//! bookkeeping through random crash points and checks one copy of every record; `partition`'s
//! drive the writer itself (real rows, object names, listings) the same way, and against a
//! naive reference of the rotation rules. Dead letters
//! are at-least-once: a crash between their acknowledgement and the upload repeats them.

pub mod app;
pub mod encode;
pub mod layout;
pub mod ledger;
pub mod metrics;
pub mod partition;
pub mod rotation;
pub mod rows;
pub mod sink;
pub mod store;
