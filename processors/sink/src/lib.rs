//! # sensorflow-sink
//!
//! `gcs-sink`: copies pipeline topics into Parquet objects in Google Cloud Storage (or a local
//! directory) so Spark, BigQuery, DuckDB and pyarrow can analyse them.
//!
//! ```text
//!  SZ, FA, FI, FD, ──► recv ─► rows::Rows (typed columns) ─► rotation ─► encode (Parquet, ZSTD)
//!  predictions, …        └─► dead-letter topic (reason headers)           │
//!                                                                          ▼
//!        commit offset last+1 ◄── object complete ◄── store::ObjectStore::put (GCS | local dir)
//! ```
//!
//! The pure parts (object names, rotation decisions, row building, encoding) live in
//! [`layout`], [`rotation`], [`rows`] and [`encode`] and are tested without I/O; [`store`] and
//! [`sink`] are the edges.
//!
//! ## Exactly one copy of every record
//!
//! 1. A partition has at most a few open files (`--max-open-hours`, default 3), one per hour
//!    bucket (the hour of the Kafka timestamp = event time). The file of bucket `b` covering
//!    offsets `first..=last` holds every record of bucket `b` in that range.
//! 2. A file is finalised by: awaiting the dead letters of its range, encoding it, uploading it
//!    whole (GCS creates the object only when the upload completes; the local store renames a
//!    synced temporary file). Then the partition's commit offset is `min(first of its open
//!    files)`, or the next offset to read when none is open ([`ledger::Ledger`]): every record
//!    below it is in a finished object.
//! 3. The object name is a function of `(topic, partition, bucket, first, last)`.
//! 4. After a restart or rebalance, the first record of each hour bucket makes the sink list
//!    `…/topic=T/date=…/hour=HH/T-P-`: objects uploaded by a run that died before committing.
//!    A record whose offset a listed object's range covers is skipped (it is stored there).
//! 5. A revoked partition's open files are dropped, never uploaded: the next owner re-reads
//!    them from the last commit and, by 4, skips what the previous owner had uploaded.
//!
//! A crash before an upload completes leaves no object (the records are re-read and written,
//! possibly cut differently); a crash between upload and commit leaves an object that step 4
//! finds; a crash after the commit loses nothing. `ledger`'s property test drives the same
//! bookkeeping through random crash points and checks one copy of every record. Dead letters
//! are at-least-once: a crash between their acknowledgement and the upload repeats them.

pub mod app;
pub mod encode;
pub mod layout;
pub mod ledger;
pub mod metrics;
pub mod rotation;
pub mod rows;
pub mod sink;
pub mod store;
