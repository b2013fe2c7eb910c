//! The `SensorPipeline` custom resource (`sensorflow.io/v1alpha1`, short name `sp`).
//!
//! Simple checks (types, enums, minimum/maximum, patterns) live in the OpenAPI schema generated
//! from these types, so the API server refuses bad values with 422. Cross-field checks are CEL
//! rules (`x-kubernetes-validations`, Kubernetes ≥ 1.25; see [`cel`]), so the API server refuses
//! them too, with the rule's message; the same checks (and the ones CEL cannot do, such as
//! `host:port` parsing) also run in [`crate::validate`], which reports in status, for objects
//! that reached the cluster another way (an older CRD, a server without CEL).
//!
//! ```text
//!   kubectl apply ─▶ schema (types, ranges, patterns) ─▶ CEL (cross-field, oldSelf) ─▶ stored
//!                        └─ 422 ◀──────────────────────────┘                           │
//!                                                   operator validate ─▶ Invalid + Warning
//! ```

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Affinity, EnvVar, LocalObjectReference, ResourceRequirements, Toleration,
    TopologySpreadConstraint, Volume, VolumeMount,
};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::topics::TopicRole;

pub mod cel;
pub mod topics;

pub use topics::{DeletionPolicy, TopicManagement, TopicOverride, TopicOverrides, TopicsSpec};

/// Desired state of one sensor pipeline: its Kafka topics, the window and join processors, the
/// model, scaling bounds and an optional GCS sink.
#[derive(CustomResource, KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[kube(
    group = "sensorflow.io",
    version = "v1alpha1",
    kind = "SensorPipeline",
    plural = "sensorpipelines",
    shortname = "sp",
    category = "sensorflow",
    namespaced,
    status = "SensorPipelineStatus",
    doc = "A streaming sensor pipeline on Kafka: topics, window-processor, join-predict and an optional GCS sink.",
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Reason","type":"string","jsonPath":".status.conditions[?(@.type==\"Degraded\")].reason","description":"reason of the Degraded condition (AsExpected when nothing is wrong)"}"#,
    printcolumn = r#"{"name":"Lag","type":"integer","jsonPath":".status.totalLag","description":"consumer lag summed over both stages (messages)"}"#,
    printcolumn = r#"{"name":"Time-Lag","type":"integer","jsonPath":".status.timeLagSeconds","description":"the larger stage time lag, seconds (estimated from end-offset samples)"}"#,
    printcolumn = r#"{"name":"Window","type":"integer","jsonPath":".status.window.replicas","description":"window-processor replicas"}"#,
    printcolumn = r#"{"name":"Window-Ready","type":"integer","jsonPath":".status.window.readyReplicas","description":"window-processor ready replicas","priority":1}"#,
    printcolumn = r#"{"name":"Join","type":"integer","jsonPath":".status.join.replicas","description":"join-predict replicas"}"#,
    printcolumn = r#"{"name":"Join-Ready","type":"integer","jsonPath":".status.join.readyReplicas","description":"join-predict ready replicas","priority":1}"#,
    printcolumn = r#"{"name":"In/s","type":"number","jsonPath":".status.window.recordsInPerSecond","description":"records per second appended to the window-processor's input","priority":1}"#,
    printcolumn = r#"{"name":"Dead/s","type":"number","jsonPath":".status.deadLetterPerSecond","description":"records per second appended to the dead-letter topic","priority":1}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#,
    validation = cel::distinct_topic_names()
)]
#[x_kube(
    validation = Rule::new(cel::MAX_REPLICAS_WINDOW).message(cel::MAX_REPLICAS_WINDOW_MSG),
    validation = Rule::new(cel::MAX_REPLICAS_JOIN).message(cel::MAX_REPLICAS_JOIN_MSG)
)]
#[serde(rename_all = "camelCase")]
pub struct SensorPipelineSpec {
    /// How to reach the Kafka cluster.
    pub kafka: KafkaSpec,
    /// Topic names and settings. Every name defaults to `<namespace>.<pipeline>.<suffix>`
    /// (`topics.prefix`).
    #[serde(default)]
    pub topics: TopicsSpec,
    /// Sliding event-time window of window-processor: every SZ reading gets the features of its
    /// client's readings over the preceding `sizeMs`.
    #[serde(default)]
    pub window: WindowSpec,
    /// The model join-predict applies to each joined window.
    #[serde(default)]
    pub model: ModelSpec,
    /// Event-time join settings of join-predict (grace, idle timeouts, staleness, rebuild
    /// look-back; all in milliseconds).
    #[serde(default)]
    pub join: JoinSpec,
    /// Image, resources and scaling bounds of the processors.
    #[serde(default)]
    pub processors: ProcessorsSpec,
    /// Optional GCS sink; a `gcs-sink` Deployment is created only when this is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sink: Option<SinkSpec>,
    /// `true` scales every stage (window-processor, join-predict, gcs-sink) to 0 replicas and
    /// keeps the topics and the consumer groups' committed offsets; `false` again resumes from
    /// those offsets (default false). Committed offsets last as long as the broker's
    /// `offsets.retention.minutes` (Kafka default 7 days) after the last member left: a longer
    /// suspension restarts the stages from the earliest retained records.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub suspend: bool,
}

/// Kafka connection settings shared by the operator and every processor.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct KafkaSpec {
    /// Comma-separated `host:port` list of the Kafka brokers. Required.
    #[schemars(length(min = 1), regex(pattern = r"^[^,\s]+(,[^,\s]+)*$"))]
    pub bootstrap_servers: String,
    /// Optional TLS / SASL settings. Credentials always come from Secrets, never inline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub security: Option<KafkaSecurity>,
    /// Extra librdkafka client properties of every processor (window-processor, join-predict,
    /// gcs-sink; not the operator's own admin client), for example `fetch.max.bytes` or
    /// `socket.keepalive.enable`; applied after the processors' own settings, passed as
    /// `SF_KAFKA_PROPERTIES`. At most 64 entries. Refused: keys starting with `sasl.` or
    /// `ssl.` and `security.protocol` (credentials and TLS come only from `security` and
    /// Secrets), the keys the processors own (`bootstrap.servers`, `group.id`,
    /// `transactional.id`, `enable.auto.commit`, `enable.auto.offset.store`), the keys that
    /// would redirect or weaken the connection or load code (`metadata.broker.list`, an alias
    /// of `bootstrap.servers`; `plugin.library.paths`; keys starting with `enable.ssl.`,
    /// `enable.sasl.`, `https.` or `ssl_`), and keys or values containing `,` (the list
    /// separator) or keys containing `=`. Default: none.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(schema_with = "kafka_properties_schema")]
    pub properties: BTreeMap<String, String>,
    /// Prefix of the processors' consumer groups (`<groupPrefix>-window`, `-join`, `-sink`)
    /// and transactional ids (`<groupPrefix>-window-<pod>`, `<groupPrefix>-join-<pod>`).
    /// Default: `<namespace>.<pipeline>`, fixed when the operator first sees the pipeline
    /// (`status.defaultNames`; pipelines an operator before 0.2 created keep `<pipeline>`).
    /// Kafka ACLs for a pipeline are prefixed group and transactional-id ACLs on
    /// `<groupPrefix>-`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 200), regex(pattern = r"^[a-zA-Z0-9._-]+$"))]
    pub group_prefix: Option<String>,
}

/// Keys of `kafka.properties` the processors own (refused, like the `sasl.` / `ssl.` ones).
pub const OPERATOR_OWNED_KAFKA_PROPERTIES: [&str; 5] = [
    "bootstrap.servers",
    "group.id",
    "transactional.id",
    "enable.auto.commit",
    "enable.auto.offset.store",
];

/// Keys of `kafka.properties` refused because they would redirect or weaken the connection or
/// load code, beside the `sasl.` / `ssl.` ones (CEL rule [`cel::KAFKA_PROPERTIES_CONNECTION`]).
pub const CONNECTION_KAFKA_PROPERTIES: [&str; 2] = ["metadata.broker.list", "plugin.library.paths"];

/// Key prefixes of `kafka.properties` refused for the same reason (librdkafka 2.12:
/// `enable.ssl.certificate.verification`, `enable.sasl.oauthbearer.unsecure.jwt`,
/// `https.ca.location` / `https.ca.pem`, `ssl_key` / `ssl_ca` / `ssl_certificate`).
pub const CONNECTION_KAFKA_PROPERTY_PREFIXES: [&str; 4] =
    ["enable.ssl.", "enable.sasl.", "https.", "ssl_"];

/// Whether `kafka.properties` refuses `key` (see [`KafkaSpec::properties`]); the same keys as
/// the CEL rules `KAFKA_PROPERTIES_NO_CREDENTIALS`, `KAFKA_PROPERTIES_OWNED` and
/// `KAFKA_PROPERTIES_CONNECTION` of [`cel`].
pub fn kafka_property_refused(key: &str) -> bool {
    key.starts_with("sasl.")
        || key.starts_with("ssl.")
        || key == "security.protocol"
        || OPERATOR_OWNED_KAFKA_PROPERTIES.contains(&key)
        || CONNECTION_KAFKA_PROPERTIES.contains(&key)
        || CONNECTION_KAFKA_PROPERTY_PREFIXES
            .iter()
            .any(|p| key.starts_with(p))
}

/// Schema of `kafka.properties`: a bounded string map (the bounds keep the CEL cost estimate
/// of its rules within the API server's budget) with the refusals as CEL rules.
fn kafka_properties_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "object",
        "maxProperties": 64,
        "additionalProperties": {"type": "string", "maxLength": 1024},
        "x-kubernetes-validations": [
            {"rule": cel::KAFKA_PROPERTIES_NO_CREDENTIALS, "message": cel::KAFKA_PROPERTIES_NO_CREDENTIALS_MSG},
            {"rule": cel::KAFKA_PROPERTIES_OWNED, "message": cel::KAFKA_PROPERTIES_OWNED_MSG},
            {"rule": cel::KAFKA_PROPERTIES_SEPARATORS, "message": cel::KAFKA_PROPERTIES_SEPARATORS_MSG},
            {"rule": cel::KAFKA_PROPERTIES_CONNECTION, "message": cel::KAFKA_PROPERTIES_CONNECTION_MSG},
        ],
    })
}

/// Kafka `security.protocol`.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema, Default)]
pub enum SecurityProtocol {
    /// Plain TCP.
    #[default]
    #[serde(rename = "PLAINTEXT")]
    Plaintext,
    /// TLS without SASL.
    #[serde(rename = "SSL")]
    Ssl,
    /// SASL over plain TCP.
    #[serde(rename = "SASL_PLAINTEXT")]
    SaslPlaintext,
    /// SASL over TLS.
    #[serde(rename = "SASL_SSL")]
    SaslSsl,
}

/// SASL mechanism (`sasl.mechanism`): `PLAIN`, `SCRAM-SHA-256` or `SCRAM-SHA-512`; required with
/// a `SASL_*` protocol, no default.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum SaslMechanism {
    /// `PLAIN`.
    #[serde(rename = "PLAIN")]
    Plain,
    /// `SCRAM-SHA-256`.
    #[serde(rename = "SCRAM-SHA-256")]
    ScramSha256,
    /// `SCRAM-SHA-512`.
    #[serde(rename = "SCRAM-SHA-512")]
    ScramSha512,
}

/// TLS and SASL settings.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, KubeSchema)]
#[x_kube(
    validation = Rule::new(cel::SASL_PLAINTEXT_OPT_IN).message(cel::SASL_PLAINTEXT_OPT_IN_MSG),
    validation = Rule::new(cel::CLIENT_CERTIFICATE_NEEDS_TLS).message(cel::CLIENT_CERTIFICATE_NEEDS_TLS_MSG)
)]
#[serde(rename_all = "camelCase")]
pub struct KafkaSecurity {
    /// `PLAINTEXT` (default), `SSL`, `SASL_PLAINTEXT` or `SASL_SSL`.
    #[serde(default)]
    pub protocol: SecurityProtocol,
    /// `PLAIN`, `SCRAM-SHA-256` or `SCRAM-SHA-512`. Required when `protocol` is `SASL_*`;
    /// no default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sasl_mechanism: Option<SaslMechanism>,
    /// Secret holding the SASL username and password. Required when `protocol` is `SASL_*`.
    /// A Strimzi KafkaUser's SCRAM-SHA-512 Secret (keys `password`, `sasl.jaas.config`, no
    /// username key) works with `usernameFrom: SecretName`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_secret: Option<CredentialsSecretRef>,
    /// Secret holding a PEM CA bundle, mounted into the processors at
    /// `/etc/sensorflow/kafka-ca/<key>`; the CA the broker's certificate is checked against
    /// (Strimzi: Secret `<cluster>-cluster-ca-cert`, key `ca.crt`). Default: none (the
    /// system's CA certificates).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_secret: Option<SecretKeyRef>,
    /// Secret holding a PEM client certificate and its unencrypted PEM private key, for
    /// mutual TLS (`protocol` `SSL` or `SASL_SSL`; refused with the others). The broker
    /// authenticates the client by this certificate (principal `User:CN=...` by default). A
    /// Strimzi KafkaUser's TLS Secret (keys `user.crt`, `user.key`) works with the default
    /// keys. Mounted into the processors at `/etc/sensorflow/kafka-client-cert/`; the operator
    /// reads both keys for its own admin client. Default: none (no client certificate).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_certificate_secret: Option<ClientCertificateSecretRef>,
    /// Explicit opt-in to send SASL credentials over an unencrypted `SASL_PLAINTEXT` listener
    /// (anyone on the path can read a PLAIN password). Without it `SASL_PLAINTEXT` is refused.
    /// Default false.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_plaintext_credentials: bool,
}

/// A Secret in the pipeline's namespace holding a username and a password.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CredentialsSecretRef {
    /// Secret name (in the pipeline's namespace); required.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Key of the username (default `username`); not read with `usernameFrom: SecretName`.
    #[serde(default = "default_username_key")]
    pub username_key: String,
    /// Key of the password (default `password`).
    #[serde(default = "default_password_key")]
    pub password_key: String,
    /// Where the username comes from: `Key` (default: the Secret's `usernameKey`) or
    /// `SecretName` (the Secret's name is the username, as in a Strimzi KafkaUser's Secret,
    /// which is named after the KafkaUser and has no username key).
    #[serde(default, skip_serializing_if = "UsernameFrom::is_key")]
    pub username_from: UsernameFrom,
}

/// Where the SASL username of a [`CredentialsSecretRef`] comes from.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema, Default)]
pub enum UsernameFrom {
    /// The value of the Secret's `usernameKey`.
    #[default]
    Key,
    /// The Secret's name (Strimzi KafkaUser Secrets: the KafkaUser's name is the username).
    SecretName,
}

impl UsernameFrom {
    /// Whether this is the default, [`UsernameFrom::Key`].
    pub fn is_key(&self) -> bool {
        *self == UsernameFrom::Key
    }
}

/// A Secret in the pipeline's namespace holding a PEM client certificate and its key (mutual
/// TLS); the defaults are the keys of a Strimzi KafkaUser's TLS Secret.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClientCertificateSecretRef {
    /// Secret name (in the pipeline's namespace); required.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Key of the PEM client certificate (default `user.crt`).
    #[serde(default = "default_certificate_key")]
    #[schemars(length(min = 1))]
    pub certificate_key: String,
    /// Key of the client's PEM private key, unencrypted (PKCS#8 or PKCS#1; default `user.key`).
    #[serde(default = "default_key_key")]
    #[schemars(length(min = 1))]
    pub key_key: String,
}

/// One key of a Secret in the pipeline's namespace.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// Secret name (in the pipeline's namespace); required.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Key inside the Secret; required.
    #[schemars(length(min = 1))]
    pub key: String,
}

/// A half-open bin range `[lo, hi)`.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, KubeSchema)]
#[x_kube(validation = Rule::new(cel::LO_BELOW_HI).message(cel::LO_BELOW_HI_MSG))]
pub struct BinRange {
    /// Inclusive lower bound (value units of the feature); required.
    pub lo: f64,
    /// Exclusive upper bound (value units of the feature); must be greater than `lo`; required.
    pub hi: f64,
}

/// What a watermark of window-processor covers (watermark = max event time seen − grace).
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema, Default)]
#[serde(rename_all = "lowercase")]
pub enum WatermarkScope {
    /// One watermark per input partition: the partition's max event time − grace (default).
    #[default]
    Partition,
    /// One watermark per client key: that client's max event time − grace.
    Client,
}

/// Which windows window-processor computes (see docs/semantics.md for the table of the same
/// kinds in Kafka Streams, Flink and Spark).
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema, Default)]
pub enum WindowKind {
    /// One window per reading over `(t − sizeMs, t]` of its client (default; Kafka Streams'
    /// `SlidingWindows`, Flink's OVER window, `RANGE` preceding).
    #[default]
    Sliding,
    /// Epoch-aligned `[k·sizeMs, (k+1)·sizeMs)` (Kafka Streams' `TimeWindows` without advance,
    /// Flink's `TUMBLE`, Spark's `window(t, size)`).
    Tumbling,
    /// Epoch-aligned `[k·advanceMs, k·advanceMs + sizeMs)`, overlapping (Kafka Streams'
    /// `TimeWindows.advanceBy`, Flink's `HOP`, Spark's "sliding" `window(t, size, slide)`).
    Hopping,
    /// One window per client from its first reading on, never closed: a running total
    /// (Flink's unbounded OVER window, Spark's `groupBy` in update mode); `sizeMs` is unused.
    Global,
}

/// When window-processor emits a window's features.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema, Default)]
pub enum WindowEmit {
    /// On every reading: the updated features of each window holding it (default; Spark's
    /// update mode, Kafka Streams without `suppress`).
    #[default]
    PerRecord,
    /// Once per window, when the watermark passes its end (Spark's append mode, Kafka
    /// Streams' `suppress(untilWindowCloses)`); Tumbling and Hopping only.
    Final,
}

/// Which clock places a reading in its windows.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema, Default)]
pub enum WindowTime {
    /// The reading's own event time (default).
    #[default]
    EventTime,
    /// The SZ record's Kafka timestamp: the broker's append time when the SZ topic has
    /// `message.timestamp.type=LogAppendTime` (the operator sets it on an SZ topic it owns or
    /// creates), else the producer's create time. Read from the record, not from a clock in
    /// the processor, so a restart or rebuild places every reading in the same windows.
    ProcessingTime,
}

/// One windowed aggregate (exact: sums rounded once).
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum Aggregate {
    /// Number of readings in the window.
    Count,
    /// Sum of the values (value units).
    Sum,
    /// Mean of the values (value units).
    Mean,
    /// Smallest value.
    Min,
    /// Largest value.
    Max,
    /// Trapezoidal integral across consecutive readings (value·seconds).
    Integral,
    /// `(v_last − v_first) / (t_last − t_first)` (value per second; 0 for one timestamp).
    Derivative,
}

/// The aggregate each feature topic carries.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FeatureAggregates {
    /// Aggregate of the FA topic (default `Mean`).
    #[serde(default = "default_fa_aggregate")]
    pub fa: Aggregate,
    /// Aggregate of the FI topic (default `Integral`).
    #[serde(default = "default_fi_aggregate")]
    pub fi: Aggregate,
    /// Aggregate of the FD topic (default `Derivative`).
    #[serde(default = "default_fd_aggregate")]
    pub fd: Aggregate,
}

impl Default for FeatureAggregates {
    fn default() -> Self {
        Self {
            fa: default_fa_aggregate(),
            fi: default_fi_aggregate(),
            fd: default_fd_aggregate(),
        }
    }
}

fn default_fa_aggregate() -> Aggregate {
    Aggregate::Mean
}
fn default_fi_aggregate() -> Aggregate {
    Aggregate::Integral
}
fn default_fd_aggregate() -> Aggregate {
    Aggregate::Derivative
}

/// Window settings (all durations in milliseconds).
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new(cel::HOPPING_NEEDS_ADVANCE).message(cel::HOPPING_NEEDS_ADVANCE_MSG),
    validation = Rule::new(cel::ADVANCE_ONLY_HOPPING).message(cel::ADVANCE_ONLY_HOPPING_MSG),
    validation = Rule::new(cel::ADVANCE_WITHIN_SIZE).message(cel::ADVANCE_WITHIN_SIZE_MSG),
    validation = Rule::new(cel::FINAL_NEEDS_CLOSING).message(cel::FINAL_NEEDS_CLOSING_MSG)
)]
pub struct WindowSpec {
    /// `Sliding` (default), `Tumbling`, `Hopping` or `Global`.
    #[serde(default)]
    pub kind: WindowKind,
    /// Length of the window in ms (default 600000 = 10 min): a sliding window covers
    /// `(t − sizeMs, t]`, a tumbling or hopping one `sizeMs` from its start; unused by `Global`.
    #[serde(default = "default_window_ms")]
    #[schemars(range(min = 1000, max = 86400000))]
    pub size_ms: i64,
    /// Distance between the starts of hopping windows in ms, at most `sizeMs` and at least
    /// `sizeMs / 1000`; required for `Hopping`, refused for the other kinds (unset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 86400000))]
    pub advance_ms: Option<i64>,
    /// `PerRecord` (default) or `Final` (Tumbling and Hopping only).
    #[serde(default)]
    pub emit: WindowEmit,
    /// `EventTime` (default) or `ProcessingTime`.
    #[serde(default)]
    pub time: WindowTime,
    /// How far a reading may trail the newest event time and still count, in ms (default
    /// 30000): the watermark is the max event time seen − grace, and a reading older than the
    /// watermark goes to the late topic.
    #[serde(default = "default_grace_ms")]
    #[schemars(range(min = 0, max = 86400000))]
    pub grace_ms: i64,
    /// `partition` (default): one watermark per input partition; `client`: one per client key.
    #[serde(default)]
    pub watermark_scope: WatermarkScope,
    /// The aggregate of each feature topic (default FA `Mean`, FI `Integral`, FD
    /// `Derivative`).
    #[serde(default)]
    pub aggregates: FeatureAggregates,
    /// FA bin range (default [0, 5)).
    #[serde(default = "default_fa")]
    pub fa_range: BinRange,
    /// FI bin range (default [0, 3000)).
    #[serde(default = "default_fi")]
    pub fi_range: BinRange,
    /// FD bin range (default [-0.01, 0.01)).
    #[serde(default = "default_fd")]
    pub fd_range: BinRange,
}

impl Default for WindowSpec {
    fn default() -> Self {
        Self {
            kind: WindowKind::default(),
            size_ms: default_window_ms(),
            advance_ms: None,
            emit: WindowEmit::default(),
            time: WindowTime::default(),
            grace_ms: default_grace_ms(),
            watermark_scope: WatermarkScope::Partition,
            aggregates: FeatureAggregates::default(),
            fa_range: default_fa(),
            fi_range: default_fi(),
            fd_range: default_fd(),
        }
    }
}

/// Model kind used by join-predict.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema, Default)]
#[serde(rename_all = "lowercase")]
pub enum ModelKind {
    /// Logistic regression over five features (default).
    #[default]
    Logistic,
    /// Random predictions (seeded), for load tests.
    Random,
}

/// Model settings of join-predict.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct ModelSpec {
    /// `logistic` (default) or `random`.
    #[serde(default)]
    pub kind: ModelKind,
    /// Five logistic weights for `[SX, SY, FA, FI, FD]`; unset keeps the processor's built-in
    /// weights (0.01, 0.01, 1.0, 0.3, 0.2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 5, max = 5))]
    #[x_kube(validation = Rule::new(cel::FIVE_WEIGHTS).message(cel::FIVE_WEIGHTS_MSG))]
    pub weights: Option<Vec<f64>>,
    /// Logistic bias; unset keeps the processor's default (-6).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bias: Option<f64>,
    /// Decision threshold in [0, 1] (default 0.5).
    #[serde(default = "default_threshold")]
    #[schemars(range(min = 0.0, max = 1.0))]
    #[x_kube(validation = Rule::new(cel::THRESHOLD_IN_UNIT).message(cel::THRESHOLD_IN_UNIT_MSG))]
    pub threshold: f64,
    /// Seed of the `random` model; unset keeps the processor's default (42).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub seed: Option<i64>,
}

impl Default for ModelSpec {
    fn default() -> Self {
        Self {
            kind: ModelKind::Logistic,
            weights: None,
            bias: None,
            threshold: default_threshold(),
            seed: None,
        }
    }
}

/// Event-time join settings of join-predict (all in milliseconds; passed as `SF_JOIN_*`,
/// `SF_MAX_STALENESS_MS`, `SF_REBUILD_LOOKBACK_MS`).
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct JoinSpec {
    /// Allowed out-of-orderness of each input partition, ms (default 2000): a record whose
    /// event time is below the largest earlier event time of its partition minus this goes to
    /// the late topic; the join watermark is the minimum over the five inputs of (max event
    /// time seen − grace), so a prediction for event time t waits until every input has passed
    /// t + grace.
    #[serde(default = "default_join_grace_ms")]
    #[schemars(range(min = 0, max = 86400000))]
    pub grace_ms: i64,
    /// Wall-clock ms without records on all five inputs of a partition after which everything
    /// seen is released (the tail of a stream), default 10000. Raise it where an upstream
    /// stage can lag by more than this.
    #[serde(default = "default_join_idle_ms")]
    #[schemars(range(min = 1, max = 86400000))]
    pub idle_timeout_ms: i64,
    /// Wall-clock ms without records after which one input partition stops holding the join
    /// watermark back while the others flow, default 300000 (5 min).
    #[serde(default = "default_join_input_idle_ms")]
    #[schemars(range(min = 1, max = 86400000))]
    pub input_idle_timeout_ms: i64,
    /// Triggers, partial triples and outcomes join-predict holds (waiting for the watermark,
    /// or for earlier records' outcomes) before it pauses fetching the inputs that run ahead
    /// of the watermark (watermark alignment), default 500000 (≈ 75 MB at ≈ 150 bytes each);
    /// above twice this it releases the oldest triggers at once, dead-lettered
    /// `join-overflow`. Resumes below half of it.
    #[serde(default = "default_join_max_held")]
    #[schemars(range(min = 1000, max = 100000000))]
    pub max_held_records: i64,
    /// Oldest value a prediction for event time t may use: a reading or feature older than
    /// t − this is stale and the trigger is dead-lettered, ms (default 600000 = 10 min).
    #[serde(default = "default_max_staleness_ms")]
    #[schemars(range(min = 1, max = 604800000))]
    pub max_staleness_ms: i64,
    /// How far back (record timestamps) join state is re-read on partition assignment, ms
    /// (default 600000); at least 2 × `maxStalenessMs` + `graceMs` is always read.
    #[serde(default = "default_max_staleness_ms")]
    #[schemars(range(min = 0, max = 604800000))]
    pub rebuild_lookback_ms: i64,
}

impl Default for JoinSpec {
    fn default() -> Self {
        Self {
            grace_ms: default_join_grace_ms(),
            idle_timeout_ms: default_join_idle_ms(),
            input_idle_timeout_ms: default_join_input_idle_ms(),
            max_held_records: default_join_max_held(),
            max_staleness_ms: default_max_staleness_ms(),
            rebuild_lookback_ms: default_max_staleness_ms(),
        }
    }
}

/// Value framing of every record the processors read and write (`SF_WIRE_FORMAT`).
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema, Default)]
#[serde(rename_all = "lowercase")]
pub enum WireFormat {
    /// Plain protobuf (default).
    #[default]
    Plain,
    /// The Confluent Schema Registry wire format: magic byte 0, the 4-byte schema id, then
    /// the protobuf message index and the message.
    Confluent,
}

/// State rebuild limits of window-processor and join-predict (on partition assignment the
/// processors re-read their inputs to rebuild windowed / join state).
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RebuildSpec {
    /// How long a rebuild may go without progress (no record read, no partition finished)
    /// before it fails, ms (default 30000; `SF_REBUILD_TIMEOUT_MS`). Not a total deadline.
    #[serde(default = "default_rebuild_timeout_ms")]
    #[schemars(range(min = 1000, max = 3600000))]
    pub timeout_ms: i64,
    /// Most records one rebuild may re-read; past it the rebuild fails loudly instead of
    /// building a partial state. 0 (default): unlimited (`SF_REBUILD_MAX_RECORDS`).
    #[serde(default)]
    #[schemars(range(min = 0))]
    pub max_records: i64,
}

impl Default for RebuildSpec {
    fn default() -> Self {
        Self {
            timeout_ms: default_rebuild_timeout_ms(),
            max_records: 0,
        }
    }
}

/// Pod template overlay of one stage, merged into the Deployment's pod template the operator
/// builds. The operator owns, and this cannot override: the image, command, probes, ports,
/// security contexts, resources (see `resources`), the environment variables it sets (every
/// `SF_*` / `KAFKA_*` name of the processors, `RUST_LOG`, `GOOGLE_APPLICATION_CREDENTIALS`),
/// its volumes (`tmp`, `kafka-ca`, `gcs-credentials`) and mount paths (`/tmp`,
/// `/etc/sensorflow/...`), the labels `app.kubernetes.io/*` and `sensorflow.io/*`, and the
/// annotations `sensorflow.io/*` and `prometheus.io/*`. A spec naming any of these is refused
/// (`Ready=False`, reason `InvalidSpec`, and a Warning Event). The operator's policy further
/// bounds `serviceAccountName` and the volume types (reason `PolicyViolation`).
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Default, KubeSchema)]
#[x_kube(validation = Rule::new(cel::SA_NAME_OR_ANNOTATIONS).message(cel::SA_NAME_OR_ANNOTATIONS_MSG))]
#[serde(rename_all = "camelCase")]
pub struct PodTemplateOverlay {
    /// Extra pod labels. Default: none.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Extra pod annotations. Default: none.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// Pod `nodeSelector`. Default: none.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    /// Pod tolerations. Default: none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,
    /// Pod affinity / anti-affinity. Default: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Affinity>,
    /// Pod topology spread constraints. Default: none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub topology_spread_constraints: Vec<TopologySpreadConstraint>,
    /// Pod `priorityClassName`. Default: none (the cluster's default priority).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority_class_name: Option<String>,
    /// Secrets for pulling the image (`imagePullSecrets`). Default: none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub image_pull_secrets: Vec<LocalObjectReference>,
    /// An existing ServiceAccount (yours, not created by the operator) the pods run as. Refused
    /// (`Ready=False`, reason `PolicyViolation`) unless the operator's policy allows it (Helm
    /// value `policy.allowServiceAccountName`, default false). Default: the operator's
    /// `<pipeline>-processor` (no API access, no token mounted), or `<pipeline>-<stage>` when
    /// `serviceAccountAnnotations` is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account_name: Option<String>,
    /// Annotations of a ServiceAccount `<pipeline>-<stage>` the operator creates for this
    /// stage, for example `iam.gke.io/gcp-service-account: NAME@PROJECT.iam.gserviceaccount.com`
    /// (GKE Workload Identity for the sink). Not allowed together with `serviceAccountName`;
    /// allowed by every operator policy. Default: none (the shared `<pipeline>-processor`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub service_account_annotations: BTreeMap<String, String>,
    /// Extra container environment variables, after the operator's. Default: none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<EnvVar>,
    /// Extra pod volumes, of the types the operator's policy allows (Helm value
    /// `policy.allowedVolumeTypes`, default `secret`, `configMap`, `emptyDir`,
    /// `persistentVolumeClaim`, `csi`, `projected`); another type, such as `hostPath`, is
    /// refused (`Ready=False`, reason `PolicyViolation`). Default: none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<Volume>,
    /// Extra container volume mounts (of `volumes`). Default: none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volume_mounts: Vec<VolumeMount>,
}

impl PodTemplateOverlay {
    /// Whether nothing is set.
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

/// Image pull policy of the processor containers.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema, Default)]
pub enum PullPolicy {
    /// Always pull.
    Always,
    /// Pull when the image is not on the node (default).
    #[default]
    IfNotPresent,
    /// Never pull.
    Never,
}

/// Log format of the processors.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable (default).
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// Who sets the processors' replica counts.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema, Default)]
pub enum ScalingMode {
    /// The operator's lag-based planner (default).
    #[default]
    Planner,
    /// Something else (for example an HPA): the operator never sets `replicas`.
    External,
}

/// Delivery guarantee of window-processor and join-predict (passed as `SF_EXACTLY_ONCE`).
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema, Default)]
pub enum DeliveryGuarantee {
    /// Offsets are committed after the outputs are acknowledged; after a crash the records
    /// since the last commit are processed again and their outputs repeated exactly (default).
    #[default]
    AtLeastOnce,
    /// Outputs and consumed offsets commit atomically in Kafka transactions (KIP-447: the
    /// producer is fenced through the consumer group's metadata). Needs a broker with
    /// transactions; readers must use `isolation.level=read_committed`.
    ExactlyOnce,
}

/// Image, resources and scaling of the processors.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProcessorsSpec {
    /// Container image holding every processor binary. Unset (default): the operator's own
    /// image, resolved at every reconcile and never written into the stored pipeline, so
    /// upgrading the operator rolls the processors of every pipeline that does not pin one
    /// (the chart passes its `image.repository:image.tag` as `SF_OPERATOR_PROCESSOR_IMAGE`;
    /// a binary run without it uses `sensorflow/sensorflow:<its version>`). Set: this image,
    /// whatever the operator's version. Its repository (the reference without `:tag` and
    /// `@digest`) must be one the operator's policy allows (Helm value
    /// `policy.allowedImageRepositories`, default the operator's own image repository), else
    /// the pipeline is refused (`Ready=False`, reason `PolicyViolation`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1))]
    pub image: Option<String>,
    /// `Always`, `IfNotPresent` (default) or `Never`.
    #[serde(default)]
    pub image_pull_policy: PullPolicy,
    /// `text` (default) or `json`.
    #[serde(default)]
    pub log_format: LogFormat,
    /// `RUST_LOG` filter of the processors (default `info`).
    #[serde(default = "default_log_level")]
    pub log_level: String,
    /// Default container resources; a stage's own `resources` wins.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// `Planner` (default): the operator scales from consumer lag. `External`: the operator
    /// leaves `replicas` alone (use an HPA).
    #[serde(default)]
    pub scaling_mode: ScalingMode,
    /// `AtLeastOnce` (default) or `ExactlyOnce` for window-processor and join-predict
    /// (`SF_EXACTLY_ONCE`).
    #[serde(default)]
    pub delivery_guarantee: DeliveryGuarantee,
    /// window-processor and join-predict flush their outputs and commit offsets at least this
    /// often, ms (default 200; `SF_COMMIT_INTERVAL_MS`).
    #[serde(default = "default_commit_interval_ms")]
    #[schemars(range(min = 10, max = 600000))]
    pub commit_interval_ms: i64,
    /// Readings (and features) with an event time more than this far ahead of the processor's
    /// clock go to the dead-letter topic with reason `future`, ms (default 300000 = 5 min;
    /// `SF_MAX_FUTURE_SKEW_MS`). It is also the most one client with a skewed clock can move
    /// its partition's watermark ahead of the others. The processors never allow more than
    /// their output topics' `message.timestamp.after.max.ms` less a tenth of it (at most
    /// 1 min): Kafka 4 refuses records more than 1 h ahead by default.
    #[serde(default = "default_max_future_skew_ms")]
    #[schemars(range(min = 0, max = 604800000))]
    pub max_future_skew_ms: i64,
    /// Value framing of every processor: `plain` protobuf (default) or `confluent` (Schema
    /// Registry wire format; `SF_WIRE_FORMAT`).
    #[serde(default)]
    pub wire_format: WireFormat,
    /// Schema id written into produced records with `wireFormat: confluent` (default 1;
    /// `SF_SCHEMA_ID`).
    #[serde(default = "default_schema_id")]
    #[schemars(range(min = 0, max = 2147483647))]
    pub schema_id: i64,
    /// State rebuild limits of window-processor and join-predict.
    #[serde(default)]
    pub rebuild: RebuildSpec,
    /// Seconds the planner must keep wanting fewer replicas before it scales a stage down
    /// (default 300).
    #[serde(default = "default_cooldown")]
    #[schemars(range(min = 0, max = 86400))]
    pub scale_down_cooldown_seconds: i64,
    /// Most replicas the planner adds to a stage in one reconcile (a lag-driven scale-up),
    /// 0 (default): no limit, the stage goes to the recommended count at once. A limited step
    /// caps how far one lag spike moves a stage; each step is one more consumer-group
    /// rebalance. Raising `minReplicas` and resuming from `suspend` are not limited.
    #[serde(default)]
    #[schemars(range(min = 0, max = 10000))]
    pub max_scale_up_step: i32,
    /// window-processor scaling and pod template.
    #[serde(default)]
    pub window: StageSpec,
    /// join-predict scaling and pod template.
    #[serde(default)]
    pub join: StageSpec,
}

impl ProcessorsSpec {
    /// The image the processors run: `processors.image` when the pipeline pins one, else
    /// `operator_default` (the operator's own image, see [`ProcessorsSpec::image`]).
    pub fn image_or<'a>(&'a self, operator_default: &'a str) -> &'a str {
        self.image.as_deref().unwrap_or(operator_default)
    }
}

impl Default for ProcessorsSpec {
    fn default() -> Self {
        Self {
            image: None,
            image_pull_policy: PullPolicy::IfNotPresent,
            log_format: LogFormat::Text,
            log_level: default_log_level(),
            resources: None,
            scaling_mode: ScalingMode::Planner,
            delivery_guarantee: DeliveryGuarantee::AtLeastOnce,
            commit_interval_ms: default_commit_interval_ms(),
            max_future_skew_ms: default_max_future_skew_ms(),
            wire_format: WireFormat::Plain,
            schema_id: default_schema_id(),
            rebuild: RebuildSpec::default(),
            scale_down_cooldown_seconds: default_cooldown(),
            max_scale_up_step: 0,
            window: StageSpec::default(),
            join: StageSpec::default(),
        }
    }
}

/// Scaling bounds of one processor stage.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, KubeSchema)]
#[x_kube(validation = Rule::new(cel::MIN_LE_MAX).message(cel::MIN_LE_MAX_MSG))]
#[serde(rename_all = "camelCase")]
pub struct StageSpec {
    /// Lower bound (default 1).
    #[serde(default = "default_min_replicas")]
    #[schemars(range(min = 0, max = 10000))]
    pub min_replicas: i32,
    /// Upper bound (default 10); never more than the partition count.
    #[serde(default = "default_max_replicas")]
    #[schemars(range(min = 1, max = 10000))]
    pub max_replicas: i32,
    /// Consumer lag (messages, summed over the stage's input topics) one replica should carry
    /// (default 10000).
    #[serde(default = "default_lag_target")]
    #[schemars(range(min = 1))]
    pub lag_target_per_replica: i64,
    /// Scale on time lag instead of record lag: the seconds the stage may be behind the head
    /// of its input topics (`status.<stage>.timeLagSeconds`, an append-time estimate) at the
    /// current replica count. The planner then wants `ceil(current × timeLag / target)`
    /// replicas (the HorizontalPodAutoscaler's rule for a value target), within the bounds and
    /// rounded up to a divisor of the partition count; `lagTargetPerReplica` is not used.
    /// Unset (default): scale on record lag (`lagTargetPerReplica`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 86400))]
    pub time_lag_target_seconds: Option<i64>,
    /// Activation threshold, seconds of time lag (`status.<stage>.timeLagSeconds`): no
    /// lag-driven scale-up while the stage's time lag is below it or unknown, whichever
    /// lag the stage scales on (like KEDA's activation thresholds). Scale-downs, raised
    /// `minReplicas` and resume from `suspend` are not held. 0 (default): no threshold.
    #[serde(default)]
    #[schemars(range(min = 0, max = 86400))]
    pub activation_time_lag_seconds: i64,
    /// Container resources of this stage; unset: `processors.resources`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// Pod template overlay of this stage (labels, scheduling, ServiceAccount, extra env and
    /// volumes). Default: none.
    #[serde(default, skip_serializing_if = "PodTemplateOverlay::is_empty")]
    pub pod_template: PodTemplateOverlay,
}

impl Default for StageSpec {
    fn default() -> Self {
        Self {
            min_replicas: default_min_replicas(),
            max_replicas: default_max_replicas(),
            lag_target_per_replica: default_lag_target(),
            time_lag_target_seconds: None,
            activation_time_lag_seconds: 0,
            resources: None,
            pod_template: PodTemplateOverlay::default(),
        }
    }
}

/// GCS sink settings (implemented by the `gcs-sink` binary).
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, KubeSchema)]
#[x_kube(validation = Rule::new(cel::NO_CREDENTIALS_OVER_HTTP).message(cel::NO_CREDENTIALS_OVER_HTTP_MSG))]
#[serde(rename_all = "camelCase")]
pub struct SinkSpec {
    /// GCS bucket name. Required.
    #[schemars(regex(pattern = r"^[a-z0-9][a-z0-9._-]{1,220}[a-z0-9]$"))]
    pub bucket: String,
    /// Object name prefix (default `<namespace>/<pipeline>/`, fixed when the operator first
    /// sees the pipeline; pipelines an operator before 0.2 created keep `<pipeline>/`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub prefix: Option<String>,
    /// Topic keys to archive, from `sx sy sz fa fi fd predictions dead-letter late`.
    /// Empty or unset (default): all nine, so the archive holds the inputs, the features and
    /// the outputs for analysis.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub topics: Vec<SinkTopic>,
    /// When to close a file and start the next.
    #[serde(default)]
    pub rotation: RotationSpec,
    /// Secret with a service-account JSON key. Unset: application default credentials
    /// (workload identity, the metadata server), or anonymous access when `endpoint` is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_secret: Option<SecretKeyRef>,
    /// GCS endpoint override (for example a fake-gcs-server URL); without `credentialsSecret`
    /// the sink accesses it anonymously. Default: Google Cloud Storage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 2048), regex(pattern = r"^[hH][tT][tT][pP][sS]?://"))]
    pub endpoint: Option<String>,
    /// Sink replicas (default 1).
    #[serde(default = "default_one")]
    #[schemars(range(min = 0, max = 1000))]
    pub replicas: i32,
    /// Container resources of the sink; unset: `processors.resources`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// Pod template overlay of the sink (labels, scheduling, ServiceAccount and its
    /// annotations for GKE Workload Identity, extra env and volumes). Default: none.
    #[serde(default, skip_serializing_if = "PodTemplateOverlay::is_empty")]
    pub pod_template: PodTemplateOverlay,
}

impl SinkSpec {
    /// The roles to archive: `topics`, or all nine when it is empty.
    pub fn roles(&self) -> Vec<SinkTopic> {
        if self.topics.is_empty() {
            TopicRole::ALL.to_vec()
        } else {
            self.topics.clone()
        }
    }
}

/// A pipeline topic, by role (the CRD's name for [`TopicRole`]).
pub type SinkTopic = TopicRole;

/// File rotation of the GCS sink: a partition's records are cut into consecutive offset
/// ranges, one object per event hour in each; a range closes at whichever limit comes first.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RotationSpec {
    /// Records per offset range (default 1000000).
    #[serde(default = "default_rotation_records")]
    #[schemars(range(min = 1))]
    pub max_records: i64,
    /// Input bytes per offset range before compression (default 134217728 = 128 MiB).
    #[serde(default = "default_rotation_bytes")]
    #[schemars(range(min = 1024))]
    pub max_bytes: i64,
    /// Seconds a range stays open (default 300). Where such a cut falls is committed with the
    /// offsets before the range is uploaded, so a restarted sink cuts there too.
    #[serde(default = "default_rotation_seconds")]
    #[schemars(range(min = 1))]
    pub max_age_seconds: i64,
}

impl Default for RotationSpec {
    fn default() -> Self {
        Self {
            max_records: default_rotation_records(),
            max_bytes: default_rotation_bytes(),
            max_age_seconds: default_rotation_seconds(),
        }
    }
}

/// Observed state, written by the operator through the status subresource.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SensorPipelineStatus {
    /// `metadata.generation` of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Pending`, `Running`, `Suspended`, `Degraded`, `Invalid` (the spec failed validation) or
    /// `Refused` (the spec asks for more than the operator's policy allows).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    /// `Ready`, `TopicsReady`, `ProcessorsReady`, `SinkReady`, `Scaling`, `Degraded`.
    #[serde(default)]
    pub conditions: Vec<Condition>,
    /// window-processor stage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<StageStatus>,
    /// join-predict stage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub join: Option<StageStatus>,
    /// gcs-sink stage (replicas and pods; no lag or rates). Absent without a sink.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sink: Option<StageStatus>,
    /// Sum of both stages' consumer lag (messages).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total_lag: Option<i64>,
    /// The larger of window-processor's and join-predict's `timeLagSeconds`; absent while
    /// either is unknown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_lag_seconds: Option<i64>,
    /// Records per second appended to the dead-letter topic (by both processors): its end
    /// offsets' growth over the last 10 s or more, read by the operator between reconciles
    /// (transaction markers included). Absent until two reads 10 s apart exist.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dead_letter_per_second: Option<f64>,
    /// Records per second appended to the late topic, measured as `deadLetterPerSecond`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub late_per_second: Option<f64>,
    /// Partition count of every topic as seen on the broker.
    #[serde(default)]
    pub topics: Vec<TopicStatus>,
    /// Topics this operator created for this pipeline (CreateTopics succeeded), sorted. With
    /// `deletionPolicy: Delete` exactly these are deleted; topics that existed before are never
    /// touched.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub created_topics: Vec<String>,
    /// The default name prefixes, fixed when the operator first saw the pipeline so that an
    /// operator upgrade never renames a running pipeline's topics or groups.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_names: Option<DefaultNames>,
    /// Failed topic-deletion attempts while the pipeline is being deleted. After the operator's
    /// limit the finalizer is released anyway (Warning Event `TopicDeletionAbandoned`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cleanup_attempts: Option<i32>,
}

/// Default name prefixes of a pipeline (used where `topics.prefix` / `kafka.groupPrefix` are
/// unset).
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DefaultNames {
    /// Default topic name prefix, for example `team-a.demo.`.
    pub topic_prefix: String,
    /// Default consumer group / transactional id prefix, for example `team-a.demo`.
    pub group_prefix: String,
    /// Default object name prefix of the GCS sink, for example `team-a/demo/`.
    pub object_prefix: String,
}

/// A status condition (the `metav1.Condition` shape).
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    /// Condition type, for example `Ready`.
    #[serde(rename = "type")]
    pub type_: String,
    /// `True`, `False` or `Unknown`.
    pub status: String,
    /// CamelCase reason.
    pub reason: String,
    /// Human-readable detail.
    pub message: String,
    /// RFC 3339 time of the last status change (kept while the status stays the same).
    pub last_transition_time: String,
    /// Generation the condition was computed for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// Observed state of one processor stage.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StageStatus {
    /// Replicas the operator asked for (desired).
    pub replicas: i32,
    /// Ready replicas of the Deployment.
    pub ready_replicas: i32,
    /// Consumer lag summed over the stage's input topics (messages); absent when unknown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lag: Option<i64>,
    /// Time lag, seconds: how long ago the head of the stage's input topics (the sum of their
    /// end offsets) stood where the consumer group's committed position stands now, i.e. the
    /// append time of the next record to process versus now. Interpolated between the
    /// operator's own reads of the end offsets (one per reconcile, kept for an hour), so an
    /// estimate at the resync interval's resolution; past the oldest read it is extrapolated
    /// at the mean rate. 0 when there is no lag; absent when unknown (the lag could not be
    /// read, or a backlog exists at the operator's first read).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_lag_seconds: Option<i64>,
    /// Records per second appended to the stage's input topics (transaction markers
    /// included): their end offsets' growth over the last 10 s or more between reconciles.
    /// Absent until two reads 10 s apart exist.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub records_in_per_second: Option<f64>,
    /// The stage's pods that are not ready, and why (at most 5, by name); empty when every
    /// pod is ready.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_ready_pods: Vec<PodProblem>,
    /// RFC 3339 time since which the planner has wanted fewer replicas (cooldown start).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scale_down_pending_since: Option<String>,
}

/// Why one pod of a stage is not ready, from its status (`containerStatuses`, conditions).
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PodProblem {
    /// Pod name.
    pub pod: String,
    /// The container the reason is about; absent when the reason is the pod's own (for
    /// example `Unschedulable`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
    /// The container's waiting reason (for example `CrashLoopBackOff`, `ImagePullBackOff`,
    /// `ErrImagePull`, `CreateContainerConfigError`), else its termination reason, else the
    /// pod's (`Unschedulable`, or its phase such as `Pending`), else `NotReady`.
    pub reason: String,
    /// Message of that reason, as the kubelet or the scheduler wrote it (may be empty).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
    /// Reason of the container's last termination (for example `OOMKilled`, `Error`);
    /// absent when it never terminated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_termination_reason: Option<String>,
    /// Exit code of that last termination; absent when it never terminated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_exit_code: Option<i32>,
    /// The container's restart count (0 when it never restarted).
    #[serde(default)]
    pub restarts: i32,
}

/// Partition count of one topic.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TopicStatus {
    /// Topic name.
    pub name: String,
    /// Partitions on the broker.
    pub partitions: i32,
}

/// `lo,hi`, the form window-processor parses (`SF_FA_RANGE` and its siblings).
impl std::fmt::Display for BinRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{},{}", self.lo, self.hi)
    }
}

fn default_window_ms() -> i64 {
    600_000
}
fn default_grace_ms() -> i64 {
    30_000
}
/// The join grace default, as join-predict's (`sensorflow_core::join::DEFAULT_GRACE_MS`).
fn default_join_grace_ms() -> i64 {
    2_000
}
fn default_fa() -> BinRange {
    BinRange { lo: 0.0, hi: 5.0 }
}
fn default_fi() -> BinRange {
    BinRange {
        lo: 0.0,
        hi: 3000.0,
    }
}
fn default_fd() -> BinRange {
    BinRange {
        lo: -0.01,
        hi: 0.01,
    }
}
fn default_threshold() -> f64 {
    0.5
}
/// Repository of the SensorFlow image (every binary, the operator's included).
pub const IMAGE_REPOSITORY: &str = "sensorflow/sensorflow";
/// The processors' image when neither the pipeline (`processors.image`) nor the operator's
/// `SF_OPERATOR_PROCESSOR_IMAGE` names one: `sensorflow/sensorflow:<this crate's version>`
/// (the workspace version, which is also the image tag `scripts/build-images.sh` and the
/// chart's `appVersion` use).
pub const DEFAULT_IMAGE: &str = concat!("sensorflow/sensorflow:", env!("CARGO_PKG_VERSION"));
fn default_log_level() -> String {
    "info".to_owned()
}
fn default_cooldown() -> i64 {
    300
}
fn default_min_replicas() -> i32 {
    1
}
fn default_max_replicas() -> i32 {
    10
}
fn default_lag_target() -> i64 {
    10_000
}
fn default_one() -> i32 {
    1
}
/// As join-predict's `--max-held-records` default.
fn default_join_max_held() -> i64 {
    500_000
}
fn default_join_idle_ms() -> i64 {
    10_000
}
fn default_join_input_idle_ms() -> i64 {
    300_000
}
fn default_max_staleness_ms() -> i64 {
    600_000
}
fn default_rebuild_timeout_ms() -> i64 {
    30_000
}
/// As the processors' own default (`sensorflow_core::input::DEFAULT_MAX_FUTURE_SKEW_MS`).
fn default_max_future_skew_ms() -> i64 {
    300_000
}
fn default_commit_interval_ms() -> i64 {
    200
}
fn default_schema_id() -> i64 {
    1
}
fn default_rotation_records() -> i64 {
    1_000_000
}
fn default_rotation_bytes() -> i64 {
    128 * 1024 * 1024
}
fn default_rotation_seconds() -> i64 {
    300
}
fn default_username_key() -> String {
    "username".to_owned()
}
fn default_password_key() -> String {
    "password".to_owned()
}
fn default_certificate_key() -> String {
    "user.crt".to_owned()
}
fn default_key_key() -> String {
    "user.key".to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::CustomResourceExt;

    #[test]
    fn crd_has_schema_columns_and_cel_rules() {
        let crd = SensorPipeline::crd();
        assert_eq!(crd.spec.group, "sensorflow.io");
        assert_eq!(
            crd.spec.names.short_names.as_deref(),
            Some(&["sp".to_owned()][..])
        );
        let v = &crd.spec.versions[0];
        assert_eq!(v.name, "v1alpha1");
        assert!(
            v.subresources
                .as_ref()
                .and_then(|s| s.status.as_ref())
                .is_some()
        );
        let cols: Vec<&str> = v
            .additional_printer_columns
            .iter()
            .flatten()
            .map(|c| c.name.as_str())
            .collect();
        assert_eq!(
            cols,
            [
                "Ready",
                "Phase",
                "Reason",
                "Lag",
                "Time-Lag",
                "Window",
                "Window-Ready",
                "Join",
                "Join-Ready",
                "In/s",
                "Dead/s",
                "Age"
            ]
        );
        let schema = serde_json::to_value(v.schema.as_ref().expect("schema")).expect("json");
        fn all_rules(v: &serde_json::Value, out: &mut Vec<String>) {
            match v {
                serde_json::Value::Object(m) => {
                    for (k, x) in m {
                        if k == "x-kubernetes-validations" {
                            for r in x.as_array().into_iter().flatten() {
                                out.push(r["rule"].as_str().unwrap_or_default().to_owned());
                            }
                        } else {
                            all_rules(x, out);
                        }
                    }
                }
                serde_json::Value::Array(a) => a.iter().for_each(|x| all_rules(x, out)),
                _ => {}
            }
        }
        let mut found = Vec::new();
        all_rules(&schema, &mut found);
        assert_eq!(found.len(), 25, "{found:#?}");
        for rule in [
            cel::MIN_LE_MAX,
            cel::MAX_REPLICAS_WINDOW,
            cel::MAX_REPLICAS_JOIN,
            cel::LO_BELOW_HI,
            cel::THRESHOLD_IN_UNIT,
            cel::FIVE_WEIGHTS,
            cel::PARTITIONS_NEVER_DECREASE,
            cel::SASL_PLAINTEXT_OPT_IN,
            cel::CLIENT_CERTIFICATE_NEEDS_TLS,
            cel::NO_CREDENTIALS_OVER_HTTP,
            cel::KAFKA_PROPERTIES_NO_CREDENTIALS,
            cel::KAFKA_PROPERTIES_OWNED,
            cel::KAFKA_PROPERTIES_SEPARATORS,
            cel::KAFKA_PROPERTIES_CONNECTION,
            cel::SA_NAME_OR_ANNOTATIONS,
            cel::HOPPING_NEEDS_ADVANCE,
            cel::ADVANCE_ONLY_HOPPING,
            cel::ADVANCE_WITHIN_SIZE,
            cel::FINAL_NEEDS_CLOSING,
        ] {
            assert!(
                found.iter().any(|r| r == rule),
                "CEL rule missing from the CRD: {rule}"
            );
        }
        let rules = |v: &serde_json::Value| {
            v["x-kubernetes-validations"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        };
        let root = rules(&schema["openAPIV3Schema"]);
        assert_eq!(root.len(), 1, "{root:?}");
        assert_eq!(root[0]["message"], cel::DISTINCT_TOPICS_MSG);
        assert!(
            root[0]["rule"]
                .as_str()
                .unwrap()
                .contains("self.metadata.name + '.dead-letter'")
        );
        let topics = &schema["openAPIV3Schema"]["properties"]["spec"]["properties"]["topics"];
        assert_eq!(
            rules(&topics["properties"]["partitions"])[0]["rule"],
            "self >= oldSelf"
        );
        // Each bin range carries its own rule.
        let window = &schema["openAPIV3Schema"]["properties"]["spec"]["properties"]["window"];
        for r in ["faRange", "fiRange", "fdRange"] {
            assert_eq!(
                rules(&window["properties"][r])[0]["rule"],
                cel::LO_BELOW_HI,
                "{r}"
            );
        }
        let spec = &schema["openAPIV3Schema"]["properties"]["spec"];
        assert_eq!(spec["required"], serde_json::json!(["kafka"]));
        let threshold = &spec["properties"]["model"]["properties"]["threshold"];
        assert_eq!(
            (threshold["minimum"].as_f64(), threshold["maximum"].as_f64()),
            (Some(0.0), Some(1.0))
        );
        assert_eq!(
            spec["properties"]["topics"]["properties"]["partitions"]["default"],
            100
        );
    }

    /// What `kubectl explain sensorpipeline.spec --recursive` shows: every field of our own
    /// types has a description, and every leaf says its default (or that it is required / has
    /// none). The Kubernetes types inside `podTemplate` and `resources` carry upstream's
    /// descriptions and are not walked.
    #[test]
    fn every_spec_field_is_described_with_its_default() {
        let crd = SensorPipeline::crd();
        let schema = serde_json::to_value(crd.spec.versions[0].schema.as_ref().expect("schema"))
            .expect("json");
        fn walk(v: &serde_json::Value, path: &str, missing: &mut Vec<String>) {
            let Some(props) = v["properties"].as_object() else {
                return;
            };
            for (k, p) in props {
                let path = format!("{path}.{k}");
                let desc = p["description"].as_str().unwrap_or_default().to_lowercase();
                if desc.is_empty() {
                    missing.push(format!("{path}: no description"));
                }
                let leaf = p["properties"].as_object().is_none();
                let says_default = ["default", "required", "unset"]
                    .iter()
                    .any(|w| desc.contains(w));
                if leaf && !says_default && !path.contains(".podTemplate.") {
                    missing.push(format!("{path}: no default stated"));
                }
                if path.ends_with(".podTemplate") || path.ends_with("resources") {
                    continue;
                }
                walk(p, &path, missing);
            }
        }
        let mut missing = Vec::new();
        walk(
            &schema["openAPIV3Schema"]["properties"]["spec"],
            "spec",
            &mut missing,
        );
        assert!(missing.is_empty(), "{missing:#?}");
    }

    /// The keys refused by `kafka_property_refused`, one from each rule, and look-alikes
    /// that stay allowed.
    #[test]
    fn kafka_properties_refused_keys() {
        for k in [
            "sasl.password",
            "ssl.endpoint.identification.algorithm",
            "security.protocol",
            "bootstrap.servers",
            "metadata.broker.list",
            "plugin.library.paths",
            "enable.ssl.certificate.verification",
            "enable.sasl.oauthbearer.unsecure.jwt",
            "https.ca.location",
            "ssl_ca",
        ] {
            assert!(kafka_property_refused(k), "{k}");
            assert!(
                cel::KAFKA_PROPERTIES_NO_CREDENTIALS.contains(k.split('.').next().unwrap_or(k))
                    || cel::KAFKA_PROPERTIES_OWNED.contains(k)
                    || cel::KAFKA_PROPERTIES_CONNECTION.contains(k)
                    || CONNECTION_KAFKA_PROPERTY_PREFIXES
                        .iter()
                        .any(|p| k.starts_with(p)
                            && cel::KAFKA_PROPERTIES_CONNECTION.contains(&format!("'{p}'"))),
                "{k} is in no CEL rule"
            );
        }
        for k in [
            "fetch.max.bytes",
            "socket.keepalive.enable",
            "client.id",
            "enable.idempotence",
            "metadata.max.age.ms",
        ] {
            assert!(!kafka_property_refused(k), "{k}");
        }
    }

    #[test]
    fn enum_spellings_are_their_serde_names() {
        fn check<
            T: Serialize + std::fmt::Display + std::str::FromStr + PartialEq + std::fmt::Debug + Copy,
        >(
            all: &[T],
        ) where
            T::Err: std::fmt::Debug,
        {
            for v in all {
                assert_eq!(serde_json::to_value(v).expect("json"), v.to_string());
                assert_eq!(v.to_string().parse::<T>().expect("parse"), *v);
            }
        }
        check(SecurityProtocol::ALL);
        check(SaslMechanism::ALL);
        check(WatermarkScope::ALL);
        check(ModelKind::ALL);
        check(WindowKind::ALL);
        check(WindowEmit::ALL);
        check(WindowTime::ALL);
        check(Aggregate::ALL);
        check(LogFormat::ALL);
        check(PullPolicy::ALL);
        check(ScalingMode::ALL);
        check(DeliveryGuarantee::ALL);
        check(DeletionPolicy::ALL);
        check(WireFormat::ALL);
        check(&TopicRole::ALL);
        assert!("sasl_ssl".parse::<SecurityProtocol>().is_err());
    }

    #[test]
    fn empty_spec_gets_documented_defaults() {
        let spec: SensorPipelineSpec =
            serde_json::from_value(serde_json::json!({"kafka": {"bootstrapServers": "k:9092"}}))
                .expect("spec");
        assert_eq!(spec.topics.partitions, 100);
        assert_eq!(spec.topics.deletion_policy, DeletionPolicy::Retain);
        assert_eq!(spec.window.size_ms, 600_000);
        assert_eq!(
            spec.window.fd_range,
            BinRange {
                lo: -0.01,
                hi: 0.01
            }
        );
        assert_eq!(spec.model.threshold, 0.5);
        // Not defaulted: the operator resolves it (ProcessorsSpec::image_or).
        assert_eq!(spec.processors.image, None);
        assert!(
            !serde_json::to_value(&spec.processors)
                .expect("json")
                .as_object()
                .expect("object")
                .contains_key("image")
        );
        assert_eq!(spec.processors.image_pull_policy, PullPolicy::IfNotPresent);
        assert_eq!(spec.processors.scale_down_cooldown_seconds, 300);
    }
}
