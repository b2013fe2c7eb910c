//! Environment variable names of the processors: the operator writes them (ConfigMaps loaded
//! with `envFrom`, Secret key references), the processors read them (clap `env = …`). Each name
//! is defined here once; `operator/tests/contract.rs` builds every Deployment's environment
//! with the operator's code and parses it with each processor's real argument parser.

// Kafka connection (every processor; `crates/kafka/src/config.rs` `KafkaArgs`)
/// `KAFKA_BOOTSTRAP_SERVERS`: `bootstrap.servers`: comma-separated `host:port`.
pub const KAFKA_BOOTSTRAP_SERVERS: &str = "KAFKA_BOOTSTRAP_SERVERS";
/// `KAFKA_SECURITY_PROTOCOL`: `security.protocol`: `PLAINTEXT`, `SSL`, `SASL_PLAINTEXT` or `SASL_SSL`.
pub const KAFKA_SECURITY_PROTOCOL: &str = "KAFKA_SECURITY_PROTOCOL";
/// `KAFKA_SASL_MECHANISM`: `sasl.mechanism`: `PLAIN`, `SCRAM-SHA-256` or `SCRAM-SHA-512`.
pub const KAFKA_SASL_MECHANISM: &str = "KAFKA_SASL_MECHANISM";
/// `KAFKA_SASL_USERNAME`: `sasl.username` (the operator sets it from a Secret key reference, never inline).
pub const KAFKA_SASL_USERNAME: &str = "KAFKA_SASL_USERNAME";
/// `KAFKA_SASL_PASSWORD`: `sasl.password` (the operator sets it from a Secret key reference, never inline).
pub const KAFKA_SASL_PASSWORD: &str = "KAFKA_SASL_PASSWORD";
/// `KAFKA_SSL_CA_LOCATION`: `ssl.ca.location`: path of a PEM CA bundle.
pub const KAFKA_SSL_CA_LOCATION: &str = "KAFKA_SSL_CA_LOCATION";
/// `KAFKA_SSL_CERTIFICATE_LOCATION`: `ssl.certificate.location`: path of the PEM client certificate (mutual TLS).
pub const KAFKA_SSL_CERTIFICATE_LOCATION: &str = "KAFKA_SSL_CERTIFICATE_LOCATION";
/// `KAFKA_SSL_KEY_LOCATION`: `ssl.key.location`: path of the client certificate's unencrypted PEM key (mutual TLS).
pub const KAFKA_SSL_KEY_LOCATION: &str = "KAFKA_SSL_KEY_LOCATION";
/// `SF_KAFKA_PROPERTIES`: Extra librdkafka properties, comma-separated `key=value`.
pub const KAFKA_PROPERTIES: &str = "SF_KAFKA_PROPERTIES";
/// `SF_KAFKA_PROFILE`: Client defaults, `latency` or `throughput` (see `crates/kafka/src/config.rs`).
pub const KAFKA_PROFILE: &str = "SF_KAFKA_PROFILE";

// Topic names (every processor; one per [`crate::TopicRole`], see [`crate::TopicRole::env`])
/// `SF_TOPIC_SX`: Topic of role `sx`.
pub const TOPIC_SX: &str = "SF_TOPIC_SX";
/// `SF_TOPIC_SY`: Topic of role `sy`.
pub const TOPIC_SY: &str = "SF_TOPIC_SY";
/// `SF_TOPIC_SZ`: Topic of role `sz`.
pub const TOPIC_SZ: &str = "SF_TOPIC_SZ";
/// `SF_TOPIC_FA`: Topic of role `fa`.
pub const TOPIC_FA: &str = "SF_TOPIC_FA";
/// `SF_TOPIC_FI`: Topic of role `fi`.
pub const TOPIC_FI: &str = "SF_TOPIC_FI";
/// `SF_TOPIC_FD`: Topic of role `fd`.
pub const TOPIC_FD: &str = "SF_TOPIC_FD";
/// `SF_TOPIC_PREDICTIONS`: Topic of role `predictions`.
pub const TOPIC_PREDICTIONS: &str = "SF_TOPIC_PREDICTIONS";
/// `SF_TOPIC_DLQ`: Topic of role `dead-letter`.
pub const TOPIC_DLQ: &str = "SF_TOPIC_DLQ";
/// `SF_TOPIC_LATE`: Topic of role `late`.
pub const TOPIC_LATE: &str = "SF_TOPIC_LATE";

// Record framing (every processor)
/// `SF_WIRE_FORMAT`: Value framing: `plain` protobuf or `confluent` (Schema Registry wire format).
pub const WIRE_FORMAT: &str = "SF_WIRE_FORMAT";
/// `SF_SCHEMA_ID`: Schema id written with `confluent` framing.
pub const SCHEMA_ID: &str = "SF_SCHEMA_ID";

// Shared by every processor
/// `SF_METRICS_ADDR`: `host:port` of `/metrics`, `/health` and `/ready`.
pub const METRICS_ADDR: &str = "SF_METRICS_ADDR";
/// `SF_LOG_FORMAT`: Log format: `text` or `json` ([`crate::LogFormat`]).
pub const LOG_FORMAT: &str = "SF_LOG_FORMAT";
/// `RUST_LOG`: `tracing` EnvFilter directives (for example `info`).
pub const RUST_LOG: &str = "RUST_LOG";
/// `SF_GROUP_ID`: Consumer group id.
pub const GROUP_ID: &str = "SF_GROUP_ID";

// window-processor and join-predict (`processors/runtime/src/runner.rs` `CommonArgs`)
/// `SF_COMMIT_INTERVAL_MS`: Flush outputs and commit offsets at least this often, ms.
pub const COMMIT_INTERVAL_MS: &str = "SF_COMMIT_INTERVAL_MS";
/// `SF_REBUILD_TIMEOUT_MS`: how long a state rebuild on partition assignment may go without
/// progress before it fails, ms (not a total deadline).
pub const REBUILD_TIMEOUT_MS: &str = "SF_REBUILD_TIMEOUT_MS";
/// `SF_REBUILD_MAX_RECORDS`: most records one state rebuild may re-read (0: unlimited); past it
/// the rebuild fails loudly instead of building a partial state.
pub const REBUILD_MAX_RECORDS: &str = "SF_REBUILD_MAX_RECORDS";
/// `SF_LIVENESS_TIMEOUT_MS`: `/health` fails when the consume loop has not advanced this long,
/// ms (0: never).
pub const LIVENESS_TIMEOUT_MS: &str = "SF_LIVENESS_TIMEOUT_MS";
/// `SF_EXACTLY_ONCE`: `true`: Kafka transactions (KIP-447) instead of at-least-once.
pub const EXACTLY_ONCE: &str = "SF_EXACTLY_ONCE";
/// `SF_TRANSACTIONAL_ID`: `transactional.id` with exactly-once (default `<processor>-$HOSTNAME`).
pub const TRANSACTIONAL_ID: &str = "SF_TRANSACTIONAL_ID";
/// `SF_TRANSACTIONAL_ID_PREFIX`: with exactly-once and no `SF_TRANSACTIONAL_ID`, the
/// `transactional.id` is `<prefix>-$HOSTNAME` (the operator sets `<groupPrefix>-<stage>`, so a
/// pipeline's transactional ids share its prefixed ACL).
pub const TRANSACTIONAL_ID_PREFIX: &str = "SF_TRANSACTIONAL_ID_PREFIX";
/// `SF_MAX_FUTURE_SKEW_MS`: Readings further ahead of the wall clock are dead-lettered (`future`), ms.
pub const MAX_FUTURE_SKEW_MS: &str = "SF_MAX_FUTURE_SKEW_MS";
/// `SF_MIN_EVENT_TIME_MS`: Readings before this are dead-lettered (`too-old`), ms since the Unix epoch.
pub const MIN_EVENT_TIME_MS: &str = "SF_MIN_EVENT_TIME_MS";
/// `SF_MAX_ABS_VALUE`: Readings with a larger |value| are dead-lettered (`out-of-range`).
pub const MAX_ABS_VALUE: &str = "SF_MAX_ABS_VALUE";

// window-processor (`processors/apps/src/window.rs` `WindowArgs`)
/// `SF_WINDOW_KIND`: `Sliding`, `Tumbling`, `Hopping` or `Global` ([`crate::WindowKind`]).
pub const WINDOW_KIND: &str = "SF_WINDOW_KIND";
/// `SF_WINDOW_SIZE_MS`: Length of the window, ms.
pub const WINDOW_SIZE_MS: &str = "SF_WINDOW_SIZE_MS";
/// `SF_WINDOW_ADVANCE_MS`: Distance between hopping window starts, ms (Hopping only).
pub const WINDOW_ADVANCE_MS: &str = "SF_WINDOW_ADVANCE_MS";
/// `SF_WINDOW_EMIT`: `PerRecord` or `Final` ([`crate::WindowEmit`]).
pub const WINDOW_EMIT: &str = "SF_WINDOW_EMIT";
/// `SF_WINDOW_TIME`: `EventTime` or `ProcessingTime` ([`crate::WindowTime`]).
pub const WINDOW_TIME: &str = "SF_WINDOW_TIME";
/// `SF_FA_AGGREGATE`: The FA topic's aggregate ([`crate::Aggregate`], default `Mean`).
pub const FA_AGGREGATE: &str = "SF_FA_AGGREGATE";
/// `SF_FI_AGGREGATE`: The FI topic's aggregate (default `Integral`).
pub const FI_AGGREGATE: &str = "SF_FI_AGGREGATE";
/// `SF_FD_AGGREGATE`: The FD topic's aggregate (default `Derivative`).
pub const FD_AGGREGATE: &str = "SF_FD_AGGREGATE";
/// `SF_GRACE_MS`: Grace for out-of-order readings, ms (watermark = max event time − grace).
pub const GRACE_MS: &str = "SF_GRACE_MS";
/// `SF_WATERMARK_SCOPE`: `partition` or `client` ([`crate::WatermarkScope`]).
pub const WATERMARK_SCOPE: &str = "SF_WATERMARK_SCOPE";
/// `SF_FA_RANGE`: FA bin range `lo,hi` (value units).
pub const FA_RANGE: &str = "SF_FA_RANGE";
/// `SF_FI_RANGE`: FI bin range `lo,hi` (value·seconds).
pub const FI_RANGE: &str = "SF_FI_RANGE";
/// `SF_FD_RANGE`: FD bin range `lo,hi` (value per second).
pub const FD_RANGE: &str = "SF_FD_RANGE";

// join-predict (`processors/apps/src/join.rs` `JoinArgs`)
/// `SF_MODEL`: `logistic` or `random` ([`crate::ModelKind`]).
pub const MODEL: &str = "SF_MODEL";
/// `SF_MODEL_WEIGHTS`: Five comma-separated logistic weights.
pub const MODEL_WEIGHTS: &str = "SF_MODEL_WEIGHTS";
/// `SF_MODEL_BIAS`: Logistic bias.
pub const MODEL_BIAS: &str = "SF_MODEL_BIAS";
/// `SF_MODEL_SEED`: Seed of the `random` model.
pub const MODEL_SEED: &str = "SF_MODEL_SEED";
/// `SF_THRESHOLD`: Decision threshold in [0, 1].
pub const THRESHOLD: &str = "SF_THRESHOLD";
/// `SF_CATEGORICAL_MAX`: Largest accepted SX/SY category.
pub const CATEGORICAL_MAX: &str = "SF_CATEGORICAL_MAX";
/// `SF_REBUILD_LOOKBACK_MS`: How far back join state is rebuilt on assignment, ms.
pub const REBUILD_LOOKBACK_MS: &str = "SF_REBUILD_LOOKBACK_MS";
/// `SF_JOIN_GRACE_MS`: Join grace, ms.
pub const JOIN_GRACE_MS: &str = "SF_JOIN_GRACE_MS";
/// `SF_JOIN_IDLE_TIMEOUT_MS`: Join idle timeout, ms.
pub const JOIN_IDLE_TIMEOUT_MS: &str = "SF_JOIN_IDLE_TIMEOUT_MS";
/// `SF_JOIN_INPUT_IDLE_TIMEOUT_MS`: Idle timeout of one join input, ms.
pub const JOIN_INPUT_IDLE_TIMEOUT_MS: &str = "SF_JOIN_INPUT_IDLE_TIMEOUT_MS";
/// `SF_JOIN_MAX_HELD_RECORDS`: Triggers the join may hold before pausing inputs that run ahead.
pub const JOIN_MAX_HELD_RECORDS: &str = "SF_JOIN_MAX_HELD_RECORDS";
/// `SF_MAX_STALENESS_MS`: Oldest feature or reading a prediction may use, ms.
pub const MAX_STALENESS_MS: &str = "SF_MAX_STALENESS_MS";
/// `SF_UPSTREAM_GROUP_ID`: Consumer group of the window-processor that writes the join's
/// features (its SZ lag holds the join's all-quiet release back); empty = not watched.
pub const UPSTREAM_GROUP_ID: &str = "SF_UPSTREAM_GROUP_ID";

// gcs-sink (`processors/sink/src/app.rs` `SinkArgs`)
/// `SF_SINK_BUCKET`: GCS bucket.
pub const SINK_BUCKET: &str = "SF_SINK_BUCKET";
/// `SF_SINK_LOCAL_DIR`: Local directory instead of GCS.
pub const SINK_LOCAL_DIR: &str = "SF_SINK_LOCAL_DIR";
/// `SF_SINK_PREFIX`: Object name prefix.
pub const SINK_PREFIX: &str = "SF_SINK_PREFIX";
/// `SF_SINK_TOPICS`: Topics to archive, comma-separated names.
pub const SINK_TOPICS: &str = "SF_SINK_TOPICS";
/// `SF_SINK_MAX_RECORDS`: Records per offset range (one object per event hour in it).
pub const SINK_MAX_RECORDS: &str = "SF_SINK_MAX_RECORDS";
/// `SF_SINK_MAX_BYTES`: Input bytes per offset range before compression.
pub const SINK_MAX_BYTES: &str = "SF_SINK_MAX_BYTES";
/// `SF_SINK_MAX_AGE_SECONDS`: Seconds an offset range stays open.
pub const SINK_MAX_AGE_SECONDS: &str = "SF_SINK_MAX_AGE_SECONDS";
/// `SF_SINK_MAX_BUFFER_BYTES`: Input bytes buffered across open ranges and queued uploads.
pub const SINK_MAX_BUFFER_BYTES: &str = "SF_SINK_MAX_BUFFER_BYTES";
/// `SF_SINK_MAX_OPEN_HOURS`: Event hours (objects) per offset range.
pub const SINK_MAX_OPEN_HOURS: &str = "SF_SINK_MAX_OPEN_HOURS";
/// `SF_SINK_ROW_GROUP_ROWS`: Rows per Parquet row group.
pub const SINK_ROW_GROUP_ROWS: &str = "SF_SINK_ROW_GROUP_ROWS";
/// `SF_SINK_COMPRESSION`: `zstd`, `zstd:LEVEL` or `uncompressed`.
pub const SINK_COMPRESSION: &str = "SF_SINK_COMPRESSION";
/// `SF_SINK_ENDPOINT`: GCS endpoint override (for example a fake-gcs-server URL).
pub const SINK_ENDPOINT: &str = "SF_SINK_ENDPOINT";
/// `SF_SINK_CREDENTIALS`: Service-account JSON key file.
pub const SINK_CREDENTIALS: &str = "SF_SINK_CREDENTIALS";
/// `GOOGLE_APPLICATION_CREDENTIALS`: The standard Google credentials variable (the sink's fallback for its key file).
pub const GOOGLE_APPLICATION_CREDENTIALS: &str = "GOOGLE_APPLICATION_CREDENTIALS";
/// `SF_SINK_REQUEST_TIMEOUT_SECONDS`: Time limit of one GCS request, s.
pub const SINK_REQUEST_TIMEOUT_SECONDS: &str = "SF_SINK_REQUEST_TIMEOUT_SECONDS";
/// `SF_SINK_RETRIES`: Retries of a failed store operation.
pub const SINK_RETRIES: &str = "SF_SINK_RETRIES";
/// `SF_SINK_COMMIT_RETRIES`: Consecutive refused offset commits retried.
pub const SINK_COMMIT_RETRIES: &str = "SF_SINK_COMMIT_RETRIES";
/// `SF_SINK_SUMMARY_JSON`: File the run summary is written to on exit.
pub const SINK_SUMMARY_JSON: &str = "SF_SINK_SUMMARY_JSON";

/// Every name above: the environment the processors' contract owns. A pod template overlay
/// may not set any of them (the operator's validation refuses it).
pub const ALL: [&str; 78] = [
    KAFKA_BOOTSTRAP_SERVERS,
    KAFKA_SECURITY_PROTOCOL,
    KAFKA_SASL_MECHANISM,
    KAFKA_SASL_USERNAME,
    KAFKA_SASL_PASSWORD,
    KAFKA_SSL_CA_LOCATION,
    KAFKA_SSL_CERTIFICATE_LOCATION,
    KAFKA_SSL_KEY_LOCATION,
    KAFKA_PROPERTIES,
    TOPIC_SX,
    TOPIC_SY,
    TOPIC_SZ,
    TOPIC_FA,
    TOPIC_FI,
    TOPIC_FD,
    TOPIC_PREDICTIONS,
    TOPIC_DLQ,
    TOPIC_LATE,
    WIRE_FORMAT,
    SCHEMA_ID,
    METRICS_ADDR,
    LOG_FORMAT,
    RUST_LOG,
    GROUP_ID,
    COMMIT_INTERVAL_MS,
    REBUILD_TIMEOUT_MS,
    REBUILD_MAX_RECORDS,
    LIVENESS_TIMEOUT_MS,
    EXACTLY_ONCE,
    TRANSACTIONAL_ID,
    TRANSACTIONAL_ID_PREFIX,
    MAX_FUTURE_SKEW_MS,
    MIN_EVENT_TIME_MS,
    MAX_ABS_VALUE,
    WINDOW_KIND,
    WINDOW_SIZE_MS,
    WINDOW_ADVANCE_MS,
    WINDOW_EMIT,
    WINDOW_TIME,
    FA_AGGREGATE,
    FI_AGGREGATE,
    FD_AGGREGATE,
    GRACE_MS,
    WATERMARK_SCOPE,
    FA_RANGE,
    FI_RANGE,
    FD_RANGE,
    MODEL,
    MODEL_WEIGHTS,
    MODEL_BIAS,
    MODEL_SEED,
    THRESHOLD,
    CATEGORICAL_MAX,
    REBUILD_LOOKBACK_MS,
    JOIN_GRACE_MS,
    JOIN_IDLE_TIMEOUT_MS,
    JOIN_INPUT_IDLE_TIMEOUT_MS,
    JOIN_MAX_HELD_RECORDS,
    MAX_STALENESS_MS,
    UPSTREAM_GROUP_ID,
    SINK_BUCKET,
    SINK_LOCAL_DIR,
    SINK_PREFIX,
    SINK_TOPICS,
    SINK_MAX_RECORDS,
    SINK_MAX_BYTES,
    SINK_MAX_AGE_SECONDS,
    SINK_MAX_BUFFER_BYTES,
    SINK_MAX_OPEN_HOURS,
    SINK_ROW_GROUP_ROWS,
    SINK_COMPRESSION,
    SINK_ENDPOINT,
    SINK_CREDENTIALS,
    GOOGLE_APPLICATION_CREDENTIALS,
    SINK_REQUEST_TIMEOUT_SECONDS,
    SINK_RETRIES,
    SINK_COMMIT_RETRIES,
    SINK_SUMMARY_JSON,
];

/// Whether `name` is a variable of the processors' contract ([`ALL`]).
pub fn is_contract(name: &str) -> bool {
    ALL.contains(&name)
}
