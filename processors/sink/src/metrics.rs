//! The sink's own metrics, registered next to the runtime's (`sensorflow_records_in_total`,
//! `sensorflow_dead_letter_total`, `sensorflow_consumer_lag`, `sensorflow_commits_total`, …).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use sensorflow_runtime::metrics::TopicLabel;

/// Label set `{topic, reason}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FileLabel {
    /// Topic.
    pub topic: String,
    /// Why the file was closed (`hour`, `records`, `bytes`, `age`, `memory`, `shutdown`, `cut`).
    pub reason: String,
}

/// Label set `{topic, object}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ObjectLabel {
    /// Topic.
    pub topic: String,
    /// Object URL.
    pub object: String,
}

/// Label set `{reason}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DropLabel {
    /// Why sealed or open files were dropped unuploaded (`revoked`, `lost`).
    pub reason: String,
}

/// Sink metrics (`sensorflow_sink_*`). Cheap to clone.
#[derive(Clone)]
pub struct SinkMetrics {
    /// `sensorflow_sink_rows_total{topic}`: rows in finalised objects.
    pub rows: Family<TopicLabel, Counter>,
    /// `sensorflow_sink_files_total{topic,reason}`: objects finalised.
    pub files: Family<FileLabel, Counter>,
    /// `sensorflow_sink_bytes_total{topic}`: compressed bytes of finalised objects.
    pub bytes: Family<TopicLabel, Counter>,
    /// `sensorflow_sink_upload_retries_total`: store operations retried after an error.
    pub upload_retries: Counter,
    /// `sensorflow_sink_open_files`: files being filled.
    pub open_files: Gauge,
    /// `sensorflow_sink_buffered_bytes`: input bytes buffered in open files.
    pub buffered_bytes: Gauge,
    /// `sensorflow_sink_last_committed_object{topic,object}`: 1 for the object whose offsets
    /// were committed last, per topic (info metric; the previous object's series is removed).
    pub last_object: Family<ObjectLabel, Gauge>,
    /// `sensorflow_sink_last_commit_timestamp_seconds{topic}`: Unix time of that commit.
    pub last_commit: Family<TopicLabel, Gauge>,
    /// `sensorflow_sink_upload_seconds`: encode + upload time per object, seconds.
    pub upload_seconds: Histogram,
    /// `sensorflow_sink_already_stored_total{topic}`: uploads refused by the create-only
    /// precondition because an object of that name exists (counted as stored).
    pub already_stored: Family<TopicLabel, Counter>,
    /// `sensorflow_sink_commit_retries_total`: offset commits refused and retried.
    pub commit_retries: Counter,
    /// `sensorflow_sink_queued_files`: sealed files waiting for their upload.
    pub queued_files: Gauge,
    /// `sensorflow_sink_dropped_files_total{reason}`: open or sealed files dropped without an
    /// upload because the partition was revoked or the assignment lost (the next owner
    /// re-reads them).
    pub dropped_files: Family<DropLabel, Counter>,
}

impl Default for SinkMetrics {
    fn default() -> Self {
        Self {
            rows: Family::default(),
            files: Family::default(),
            bytes: Family::default(),
            upload_retries: Counter::default(),
            open_files: Gauge::default(),
            buffered_bytes: Gauge::default(),
            last_object: Family::default(),
            last_commit: Family::default(),
            upload_seconds: Histogram::new([
                0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
            ]),
            already_stored: Family::default(),
            commit_retries: Counter::default(),
            queued_files: Gauge::default(),
            dropped_files: Family::default(),
        }
    }
}

impl SinkMetrics {
    /// Registers every metric under `sink_` in `r`.
    pub fn register(&self, r: &mut Registry) {
        let r = r.sub_registry_with_prefix("sink");
        r.register("rows", "Rows in finalised objects", self.rows.clone());
        r.register("files", "Objects finalised", self.files.clone());
        r.register(
            "bytes",
            "Compressed bytes of finalised objects",
            self.bytes.clone(),
        );
        r.register(
            "upload_retries",
            "Store operations retried after an error",
            self.upload_retries.clone(),
        );
        r.register("open_files", "Files being filled", self.open_files.clone());
        r.register(
            "buffered_bytes",
            "Input bytes buffered in open files",
            self.buffered_bytes.clone(),
        );
        r.register(
            "last_committed_object",
            "Object whose offsets were committed last, per topic",
            self.last_object.clone(),
        );
        r.register(
            "last_commit_timestamp_seconds",
            "Unix time of the last commit, per topic",
            self.last_commit.clone(),
        );
        r.register(
            "upload_seconds",
            "Encode and upload time per object, seconds",
            self.upload_seconds.clone(),
        );
        r.register(
            "already_stored",
            "Uploads refused because the object exists already (counted as stored)",
            self.already_stored.clone(),
        );
        r.register(
            "commit_retries",
            "Offset commits refused and retried",
            self.commit_retries.clone(),
        );
        r.register(
            "queued_files",
            "Sealed files waiting for their upload",
            self.queued_files.clone(),
        );
        r.register(
            "dropped_files",
            "Files dropped unuploaded: partition revoked or assignment lost",
            self.dropped_files.clone(),
        );
    }
}
