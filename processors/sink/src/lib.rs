//! # sensorflow-sink
//!
//! `gcs-sink`: copies pipeline topics into Parquet objects in Google Cloud Storage (or a local
//! directory) so Spark, BigQuery, DuckDB and pyarrow can analyse them.
//!
//! ```text
//!  SX … FD, predictions, ──► recv ─► rows::Rows (typed columns) ─► offset ranges ─► seal (queue)
//!  dead-letter, late           └─► dead-letter topic (reason headers)                   │
//!                                       time cut? commit it first ─► still assigned? encode
//!                                                                                         ▼
//!   commit offset + chain metadata ◄── object created (or found) ◄── create-only put (GCS | local dir)
//! ```
//!
//! The pure parts are tested without I/O: [`partition`], one partition's writer (records in;
//! dead letters, sealed files with their object names, and the commit — offset and metadata —
//! out), built on [`layout`] (object names), [`rotation`] (where a range ends), [`ledger`]
//! (offset bookkeeping, time cuts, commit metadata) and [`rows`] (typed columns); [`encode`]
//! makes the Parquet bytes. [`store`] and [`sink`] are the edges: the sink executes the
//! writers' decisions against the store and the consumer.
//!
//! ## Exactly one copy of every record
//!
//! 1. A partition's records are cut into consecutive offset ranges. A range ends after
//!    `--max-records` records, at the record that reaches `--max-bytes`, before a record of
//!    one event hour more than `--max-open-hours`, or at a time cut (age, memory budget,
//!    shutdown). It becomes one object per event hour (the hour of the Kafka timestamp =
//!    event time) it holds, named by `(topic, partition, hour, first, last)`: the object of
//!    hour `h` holds every record of hour `h` in `first..=last`.
//! 2. Where a range ends is a function of its records from its first offset and of the
//!    chain's limits, except for time cuts. A time cut is committed first: the partition's
//!    offset commit carries, as metadata, the limits and every cut at or above the committed
//!    offset, and no object of a range at or after a cut is uploaded before a commit carrying
//!    it succeeded ([`ledger`]). Commits are fenced by the group generation: a member that
//!    lost the partition (session expired, evicted) can no longer commit a cut.
//! 3. A sealed range's objects are uploaded whole and create-only (GCS creates the object only
//!    when the upload completes and only if the name is free; the local store hard-links a
//!    synced temporary file) while the partition is still assigned, after its dead letters
//!    are acknowledged. An upload refused because the name exists counts as stored. The
//!    commit offset is the first offset of the oldest range not stored, or the next offset to
//!    read when none is left ([`ledger::Ledger`], through
//!    [`partition::PartitionWriter::committable`]): every record below it is in an object.
//! 4. A member that gets a partition reads the committed offset and its metadata and resumes
//!    the chain there: by 2 it makes exactly the ranges any earlier owner made from that
//!    offset, so an object an earlier owner uploaded without committing — or is still
//!    uploading, late — has the name and the rows of one this member makes: one of the two
//!    create-only puts wins, the other finds it. Nothing is listed.
//! 5. A revoked partition commits what is stored, then its open and sealed ranges are dropped,
//!    never uploaded: the next owner re-reads them and, by 4, makes the same objects.
//!
//! A crash before an upload completes leaves no object; a crash between upload and commit
//! leaves objects that the restart makes again and finds; a crash after the commit loses
//! nothing. `partition`'s property tests drive the writer (real rows, object names, commit
//! metadata) through random restarts from random commits, with time cuts and late uploads of
//! dropped ranges, and count every record's copies; and against a naive reference of the
//! range rules. Dead letters are at-least-once: a crash between their acknowledgement and the
//! commit repeats them.

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
