//! The processor settings the operator derives from a pipeline, as typed structs that render
//! the environment the processors parse.
//!
//! ```text
//!   CommonSettings ─▶ <pipeline>-common ConfigMap ─┐ envFrom
//!   WindowSettings ─▶ <pipeline>-window ConfigMap ─┼─▶ window-processor (WindowArgs)
//!   JoinSettings   ─▶ <pipeline>-join   ConfigMap ─┼─▶ join-predict     (JoinArgs)
//!   SinkSettings   ─▶ <pipeline>-sink   ConfigMap ─┘─▶ gcs-sink         (SinkArgs)
//! ```
//!
//! Every variable name comes from [`crate::env`]. Values use the processors' spellings: enums
//! as their `as_str`, bin ranges as `lo,hi`, lists comma-separated, numbers in Rust's shortest
//! round-trip form (so `0.1` stays `0.1`). Credentials never appear here: the operator adds
//! them to the container as Secret key references ([`crate::env::KAFKA_SASL_USERNAME`],
//! [`crate::env::KAFKA_SASL_PASSWORD`]).

use std::collections::BTreeMap;

use crate::crd::{BinRange, FeatureAggregates};
use crate::env;
use crate::{
    LogFormat, ModelKind, SaslMechanism, SecurityProtocol, TopicNames, WatermarkScope, WindowEmit,
    WindowKind, WindowTime, WireFormat,
};

/// Environment of one container: variable name → value (sorted, as in a ConfigMap).
pub type Env = BTreeMap<String, String>;

fn put(env: &mut Env, name: &str, value: impl ToString) {
    env.insert(name.to_owned(), value.to_string());
}

fn put_opt(env: &mut Env, name: &str, value: Option<impl ToString>) {
    if let Some(v) = value {
        put(env, name, v);
    }
}

/// How every processor reaches the broker (no credentials: see the module docs).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct KafkaSettings {
    /// `bootstrap.servers`, comma-separated `host:port`.
    pub bootstrap_servers: String,
    /// `security.protocol`; unset leaves the client default (`PLAINTEXT`).
    pub security_protocol: Option<SecurityProtocol>,
    /// `sasl.mechanism` with a `SASL_*` protocol.
    pub sasl_mechanism: Option<SaslMechanism>,
    /// Path of the PEM CA bundle inside the container.
    pub ssl_ca_location: Option<String>,
    /// Path of the PEM client certificate inside the container (mutual TLS).
    pub ssl_certificate_location: Option<String>,
    /// Path of the client certificate's unencrypted PEM key inside the container.
    pub ssl_key_location: Option<String>,
    /// Extra librdkafka properties (`SF_KAFKA_PROPERTIES`, comma-separated `key=value`;
    /// keys and values free of `,`, keys free of `=`, checked by the operator's validation).
    pub properties: BTreeMap<String, String>,
}

/// Settings every processor shares (the `<pipeline>-common` ConfigMap).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommonSettings {
    /// Broker connection.
    pub kafka: KafkaSettings,
    /// The nine topic names.
    pub topics: TopicNames,
    /// `host:port` of `/metrics`, `/health` and `/ready`.
    pub metrics_addr: String,
    /// Log format.
    pub log_format: LogFormat,
    /// `RUST_LOG` filter.
    pub log_filter: String,
    /// Value framing of every record read and written.
    pub wire_format: WireFormat,
    /// Schema id written with [`WireFormat::Confluent`].
    pub schema_id: u32,
}

impl CommonSettings {
    /// The environment: `KAFKA_*`, `SF_KAFKA_PROPERTIES` (when set), `SF_TOPIC_*`,
    /// `SF_METRICS_ADDR`, `SF_LOG_FORMAT`, `RUST_LOG`, `SF_WIRE_FORMAT`, `SF_SCHEMA_ID`.
    pub fn env(&self) -> Env {
        let mut e = Env::new();
        let k = &self.kafka;
        put(&mut e, env::KAFKA_BOOTSTRAP_SERVERS, &k.bootstrap_servers);
        put_opt(&mut e, env::KAFKA_SECURITY_PROTOCOL, k.security_protocol);
        put_opt(&mut e, env::KAFKA_SASL_MECHANISM, k.sasl_mechanism);
        put_opt(
            &mut e,
            env::KAFKA_SSL_CA_LOCATION,
            k.ssl_ca_location.as_ref(),
        );
        put_opt(
            &mut e,
            env::KAFKA_SSL_CERTIFICATE_LOCATION,
            k.ssl_certificate_location.as_ref(),
        );
        put_opt(
            &mut e,
            env::KAFKA_SSL_KEY_LOCATION,
            k.ssl_key_location.as_ref(),
        );
        if !k.properties.is_empty() {
            let kv: Vec<String> = k
                .properties
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            put(&mut e, env::KAFKA_PROPERTIES, kv.join(","));
        }
        for (role, topic) in self.topics.iter() {
            put(&mut e, role.env(), topic);
        }
        put(&mut e, env::METRICS_ADDR, &self.metrics_addr);
        put(&mut e, env::LOG_FORMAT, self.log_format);
        put(&mut e, env::RUST_LOG, &self.log_filter);
        put(&mut e, env::WIRE_FORMAT, self.wire_format);
        put(&mut e, env::SCHEMA_ID, self.schema_id);
        e
    }
}

/// Loop settings window-processor and join-predict share (their `CommonArgs`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoopSettings {
    /// Kafka transactions (KIP-447) instead of at-least-once.
    pub exactly_once: bool,
    /// Flush outputs and commit offsets at least this often, ms.
    pub commit_interval_ms: i64,
    /// A state rebuild fails after this long without progress, ms.
    pub rebuild_timeout_ms: i64,
    /// Most records one state rebuild may re-read (0: unlimited).
    pub rebuild_max_records: i64,
    /// Readings further ahead of the clock are dead-lettered `future`, ms.
    pub max_future_skew_ms: i64,
    /// Prefix of the exactly-once `transactional.id` (`<prefix>-<pod name>`), for example
    /// `team-a.demo-window`.
    pub transactional_id_prefix: String,
}

impl LoopSettings {
    fn put(&self, e: &mut Env) {
        put(e, env::EXACTLY_ONCE, self.exactly_once);
        put(e, env::COMMIT_INTERVAL_MS, self.commit_interval_ms);
        put(e, env::REBUILD_TIMEOUT_MS, self.rebuild_timeout_ms);
        put(e, env::REBUILD_MAX_RECORDS, self.rebuild_max_records);
        put(e, env::MAX_FUTURE_SKEW_MS, self.max_future_skew_ms);
        put(
            e,
            env::TRANSACTIONAL_ID_PREFIX,
            &self.transactional_id_prefix,
        );
    }
}

/// window-processor settings (the `<pipeline>-window` ConfigMap).
#[derive(Debug, Clone, PartialEq)]
pub struct WindowSettings {
    /// Consumer group id.
    pub group_id: String,
    /// Delivery, commit interval and rebuild limits.
    pub run: LoopSettings,
    /// Window kind.
    pub kind: WindowKind,
    /// Length of the window, ms.
    pub size_ms: i64,
    /// Distance between hopping window starts, ms (Hopping only).
    pub advance_ms: Option<i64>,
    /// Per record or final.
    pub emit: WindowEmit,
    /// Event time or the records' Kafka timestamps.
    pub time: WindowTime,
    /// The aggregate of each feature topic.
    pub aggregates: FeatureAggregates,
    /// Grace for out-of-order readings, ms (watermark = max event time − grace).
    pub grace_ms: i64,
    /// Per partition or per client key.
    pub watermark_scope: WatermarkScope,
    /// FA bin range (value units).
    pub fa_range: BinRange,
    /// FI bin range (value·seconds).
    pub fi_range: BinRange,
    /// FD bin range (value per second).
    pub fd_range: BinRange,
}

impl WindowSettings {
    /// The environment: `SF_GROUP_ID`, the [`LoopSettings`] (`SF_EXACTLY_ONCE`,
    /// `SF_COMMIT_INTERVAL_MS`, `SF_REBUILD_TIMEOUT_MS`, `SF_REBUILD_MAX_RECORDS`,
    /// `SF_MAX_FUTURE_SKEW_MS`, `SF_TRANSACTIONAL_ID_PREFIX`),
    /// `SF_WINDOW_KIND`, `SF_WINDOW_SIZE_MS`, `SF_WINDOW_ADVANCE_MS` (when set),
    /// `SF_WINDOW_EMIT`, `SF_WINDOW_TIME`, `SF_FA_AGGREGATE`, `SF_FI_AGGREGATE`,
    /// `SF_FD_AGGREGATE`, `SF_GRACE_MS`, `SF_WATERMARK_SCOPE`, `SF_FA_RANGE`, `SF_FI_RANGE`,
    /// `SF_FD_RANGE`.
    pub fn env(&self) -> Env {
        let mut e = Env::new();
        put(&mut e, env::GROUP_ID, &self.group_id);
        self.run.put(&mut e);
        put(&mut e, env::WINDOW_KIND, self.kind);
        put(&mut e, env::WINDOW_SIZE_MS, self.size_ms);
        if let Some(a) = self.advance_ms {
            put(&mut e, env::WINDOW_ADVANCE_MS, a);
        }
        put(&mut e, env::WINDOW_EMIT, self.emit);
        put(&mut e, env::WINDOW_TIME, self.time);
        put(&mut e, env::FA_AGGREGATE, self.aggregates.fa);
        put(&mut e, env::FI_AGGREGATE, self.aggregates.fi);
        put(&mut e, env::FD_AGGREGATE, self.aggregates.fd);
        put(&mut e, env::GRACE_MS, self.grace_ms);
        put(&mut e, env::WATERMARK_SCOPE, self.watermark_scope);
        put(&mut e, env::FA_RANGE, self.fa_range);
        put(&mut e, env::FI_RANGE, self.fi_range);
        put(&mut e, env::FD_RANGE, self.fd_range);
        e
    }
}

/// join-predict settings (the `<pipeline>-join` ConfigMap).
#[derive(Debug, Clone, PartialEq)]
pub struct JoinSettings {
    /// Consumer group id.
    pub group_id: String,
    /// Delivery, commit interval and rebuild limits.
    pub run: LoopSettings,
    /// Model kind.
    pub model: ModelKind,
    /// Five logistic weights; unset keeps the processor's built-in weights.
    pub weights: Option<Vec<f64>>,
    /// Logistic bias; unset keeps the processor's default.
    pub bias: Option<f64>,
    /// Decision threshold in [0, 1].
    pub threshold: f64,
    /// Seed of the `random` model; unset keeps the processor's default.
    pub seed: Option<i64>,
    /// Join grace, ms.
    pub grace_ms: i64,
    /// Release everything after this long without records on all five inputs, ms.
    pub idle_timeout_ms: i64,
    /// One input stops holding the watermark back after this long without records, ms.
    pub input_idle_timeout_ms: i64,
    /// Triggers and outcomes the join holds before pausing inputs that run ahead.
    pub max_held_records: i64,
    /// Oldest value a prediction may use, ms.
    pub max_staleness_ms: i64,
    /// How far back join state is re-read on assignment, ms.
    pub rebuild_lookback_ms: i64,
    /// Consumer group of the pipeline's window-processor, whose lag on SZ the join watches.
    pub upstream_group_id: String,
}

impl JoinSettings {
    /// The environment: `SF_GROUP_ID`, `SF_UPSTREAM_GROUP_ID`, the [`LoopSettings`], `SF_MODEL`, `SF_THRESHOLD`, the
    /// join timings (`SF_JOIN_GRACE_MS`, `SF_JOIN_IDLE_TIMEOUT_MS`,
    /// `SF_JOIN_INPUT_IDLE_TIMEOUT_MS`, `SF_JOIN_MAX_HELD_RECORDS`, `SF_MAX_STALENESS_MS`,
    /// `SF_REBUILD_LOOKBACK_MS`) and,
    /// when set, `SF_MODEL_WEIGHTS` (comma-separated), `SF_MODEL_BIAS`, `SF_MODEL_SEED`.
    pub fn env(&self) -> Env {
        let mut e = Env::new();
        put(&mut e, env::GROUP_ID, &self.group_id);
        put(&mut e, env::UPSTREAM_GROUP_ID, &self.upstream_group_id);
        self.run.put(&mut e);
        put(&mut e, env::JOIN_GRACE_MS, self.grace_ms);
        put(&mut e, env::JOIN_IDLE_TIMEOUT_MS, self.idle_timeout_ms);
        put(
            &mut e,
            env::JOIN_INPUT_IDLE_TIMEOUT_MS,
            self.input_idle_timeout_ms,
        );
        put(&mut e, env::JOIN_MAX_HELD_RECORDS, self.max_held_records);
        put(&mut e, env::MAX_STALENESS_MS, self.max_staleness_ms);
        put(&mut e, env::REBUILD_LOOKBACK_MS, self.rebuild_lookback_ms);
        put(&mut e, env::MODEL, self.model);
        if let Some(w) = &self.weights {
            let w: Vec<String> = w.iter().map(f64::to_string).collect();
            put(&mut e, env::MODEL_WEIGHTS, w.join(","));
        }
        put_opt(&mut e, env::MODEL_BIAS, self.bias);
        put(&mut e, env::THRESHOLD, self.threshold);
        put_opt(&mut e, env::MODEL_SEED, self.seed);
        e
    }
}

/// gcs-sink settings (the `<pipeline>-sink` ConfigMap).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SinkSettings {
    /// Consumer group id.
    pub group_id: String,
    /// GCS bucket.
    pub bucket: String,
    /// Object name prefix.
    pub prefix: String,
    /// Topic names to archive.
    pub topics: Vec<String>,
    /// Records per offset range (one object per event hour in it).
    pub max_records: i64,
    /// Input bytes per offset range, before compression.
    pub max_bytes: i64,
    /// Seconds an offset range stays open.
    pub max_age_seconds: i64,
    /// GCS endpoint override; with it and no credentials the sink is anonymous.
    pub endpoint: Option<String>,
    /// Path of the service-account JSON key inside the container. Unset (and no endpoint):
    /// application default credentials (workload identity / the metadata server).
    pub credentials: Option<String>,
}

impl SinkSettings {
    /// The environment: `SF_GROUP_ID`, `SF_SINK_BUCKET`, `SF_SINK_PREFIX`, `SF_SINK_TOPICS`
    /// (comma-separated), the three rotation limits and, when set, `SF_SINK_ENDPOINT` and the
    /// key file as both `SF_SINK_CREDENTIALS` and `GOOGLE_APPLICATION_CREDENTIALS`.
    pub fn env(&self) -> Env {
        let mut e = Env::new();
        put(&mut e, env::GROUP_ID, &self.group_id);
        put(&mut e, env::SINK_BUCKET, &self.bucket);
        put(&mut e, env::SINK_PREFIX, &self.prefix);
        put(&mut e, env::SINK_TOPICS, self.topics.join(","));
        put(&mut e, env::SINK_MAX_RECORDS, self.max_records);
        put(&mut e, env::SINK_MAX_BYTES, self.max_bytes);
        put(&mut e, env::SINK_MAX_AGE_SECONDS, self.max_age_seconds);
        put_opt(&mut e, env::SINK_ENDPOINT, self.endpoint.as_ref());
        if let Some(path) = &self.credentials {
            put(&mut e, env::SINK_CREDENTIALS, path);
            put(&mut e, env::GOOGLE_APPLICATION_CREDENTIALS, path);
        }
        e
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Aggregate;

    #[test]
    fn window_env_spells_values_as_the_processors_parse_them() {
        let w = WindowSettings {
            group_id: "p-window".into(),
            run: LoopSettings {
                exactly_once: false,
                commit_interval_ms: 200,
                rebuild_timeout_ms: 30_000,
                rebuild_max_records: 0,
                max_future_skew_ms: 300_000,
                transactional_id_prefix: "ns.p-window".into(),
            },
            kind: WindowKind::Hopping,
            size_ms: 600_000,
            advance_ms: Some(60_000),
            emit: WindowEmit::Final,
            time: WindowTime::EventTime,
            aggregates: FeatureAggregates {
                fa: Aggregate::Max,
                ..FeatureAggregates::default()
            },
            grace_ms: 30_000,
            watermark_scope: WatermarkScope::Client,
            fa_range: BinRange { lo: 0.0, hi: 5.0 },
            fi_range: BinRange {
                lo: 0.0,
                hi: 3000.0,
            },
            fd_range: BinRange {
                lo: -0.01,
                hi: 0.01,
            },
        };
        let e = w.env();
        assert_eq!(e[env::WATERMARK_SCOPE], "client");
        assert_eq!(e[env::WINDOW_KIND], "Hopping");
        assert_eq!(e[env::WINDOW_ADVANCE_MS], "60000");
        assert_eq!(e[env::WINDOW_EMIT], "Final");
        assert_eq!(e[env::FA_AGGREGATE], "Max");
        assert_eq!(e[env::FI_AGGREGATE], "Integral");
        assert_eq!(e[env::FA_RANGE], "0,5");
        assert_eq!(e[env::FD_RANGE], "-0.01,0.01");
        assert_eq!(e[env::EXACTLY_ONCE], "false");
        assert_eq!(e[env::COMMIT_INTERVAL_MS], "200");
        assert_eq!(e[env::MAX_FUTURE_SKEW_MS], "300000");
        assert_eq!(e[env::TRANSACTIONAL_ID_PREFIX], "ns.p-window");
        assert_eq!(e.len(), 20);
    }
}
