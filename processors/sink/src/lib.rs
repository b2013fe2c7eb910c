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
//! 1. A partition has at most one open file, covering a contiguous offset range `first..=last`
//!    whose records all share one hour bucket (the hour of their Kafka timestamp = event time).
//! 2. A file is finalised by: awaiting the dead letters of its range, encoding it, uploading it
//!    whole (GCS creates the object only when the upload completes; the local store renames a
//!    synced temporary file), and only then committing offset `last + 1`.
//! 3. The object name is a function of `(topic, partition, first, last)` and the bucket of
//!    `first`, so a file is found again from the offset it starts at.
//! 4. On (re)assignment a partition is *recovering*: before opening a file at the first record
//!    it receives (offset `o`, hour `h`), the sink lists `…/hour=h/T-P-o-`. A hit
//!    `T-P-o-L.parquet` was uploaded by a previous run that crashed before committing: the
//!    sink skips every offset `≤ L`, commits `L + 1`, and checks again at the next record.
//!    The first miss ends recovery (files of a partition are written in offset order, so
//!    nothing later exists).
//! 5. A revoked partition's open file is dropped, never uploaded: the next owner re-reads it
//!    from the last commit (and, by 4, skips what the previous owner uploaded).
//!
//! A crash before an upload completes leaves no object (the records are re-read and written,
//! possibly cut differently); a crash between upload and commit leaves an object that step 4
//! finds; a crash after the commit loses nothing. Dead letters are at-least-once: a crash
//! between their acknowledgement and the upload repeats them.

pub mod app;
pub mod encode;
pub mod layout;
pub mod metrics;
pub mod rotation;
pub mod rows;
pub mod sink;
pub mod store;
