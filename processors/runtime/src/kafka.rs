//! Kafka client configuration from flags and environment variables.
//!
//! Only standard Kafka client settings are used, so the processors work unchanged against
//! Apache Kafka, Redpanda, tansu or any other Kafka-protocol broker.

use clap::Args;
use rdkafka::ClientConfig;
use sensorflow_api::{SaslMechanism, SecurityProtocol, TopicNames, TopicRole, env};
use sensorflow_core::wire::Framing;

/// Broker connection flags (`KAFKA_*` environment variables).
#[derive(Debug, Clone, Args)]
pub struct KafkaArgs {
    /// Kafka bootstrap servers, comma-separated host:port.
    #[arg(
        long,
        env = env::KAFKA_BOOTSTRAP_SERVERS,
        default_value = "localhost:9092"
    )]
    pub bootstrap_servers: String,
    /// security.protocol: PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL (the spellings of
    /// [`SecurityProtocol`], shared with the operator).
    #[arg(long, env = env::KAFKA_SECURITY_PROTOCOL)]
    pub security_protocol: Option<SecurityProtocol>,
    /// sasl.mechanism: PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512 ([`SaslMechanism`]).
    #[arg(long, env = env::KAFKA_SASL_MECHANISM)]
    pub sasl_mechanism: Option<SaslMechanism>,
    /// SASL user name.
    #[arg(long, env = env::KAFKA_SASL_USERNAME)]
    pub sasl_username: Option<String>,
    /// SASL password (prefer the environment variable over the flag).
    #[arg(long, env = env::KAFKA_SASL_PASSWORD, hide_env_values = true)]
    pub sasl_password: Option<String>,
    /// Path to the CA certificate (PEM) for TLS.
    #[arg(long, env = env::KAFKA_SSL_CA_LOCATION)]
    pub ssl_ca_location: Option<String>,
    /// Extra librdkafka properties as key=value (repeatable; env: comma-separated).
    #[arg(short = 'X', long = "kafka-property", env = env::KAFKA_PROPERTIES, value_delimiter = ',', value_parser = parse_kv)]
    pub properties: Vec<(String, String)>,
}

fn parse_kv(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .ok_or_else(|| format!("expected key=value, got {s:?}"))
}

impl KafkaArgs {
    /// Arguments for a broker at `bootstrap` with no security (tests, tools).
    pub fn plain(bootstrap: &str) -> Self {
        Self {
            bootstrap_servers: bootstrap.to_owned(),
            security_protocol: None,
            sasl_mechanism: None,
            sasl_username: None,
            sasl_password: None,
            ssl_ca_location: None,
            properties: Vec::new(),
        }
    }

    /// Base client configuration shared by consumers, producers and admin clients.
    pub fn client_config(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.bootstrap_servers);
        let opt = [
            (
                "security.protocol",
                self.security_protocol.map(SecurityProtocol::as_str),
            ),
            (
                "sasl.mechanism",
                self.sasl_mechanism.map(SaslMechanism::as_str),
            ),
        ];
        for (k, v) in opt {
            if let Some(v) = v {
                c.set(k, v);
            }
        }
        let opt = [
            ("sasl.username", &self.sasl_username),
            ("sasl.password", &self.sasl_password),
            ("ssl.ca.location", &self.ssl_ca_location),
        ];
        for (k, v) in opt {
            if let Some(v) = v {
                c.set(k, v);
            }
        }
        for (k, v) in &self.properties {
            c.set(k, v);
        }
        c
    }

    /// Consumer configuration for an at-least-once loop: auto-commit off (offsets are
    /// committed explicitly after outputs are acknowledged), earliest reset, rdkafka
    /// statistics every 5 s for lag metrics.
    pub fn consumer_config(&self, group_id: &str, client_id: &str) -> ClientConfig {
        let mut c = self.client_config();
        c.set("group.id", group_id)
            .set("client.id", client_id)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("session.timeout.ms", "10000")
            .set("heartbeat.interval.ms", "1000")
            .set("statistics.interval.ms", "5000")
            .set("isolation.level", "read_committed");
        // Reapply user overrides last.
        for (k, v) in &self.properties {
            c.set(k, v);
        }
        c
    }

    /// Producer configuration: idempotent, acks=all, small linger for batching, a bounded
    /// delivery timeout so broker outages surface (and are retried by us) instead of hanging.
    ///
    /// `partitioner=murmur2_random` is the Java client's (and Kafka Streams') key → partition
    /// mapping. librdkafka's default (CRC32) differs, so without it a client's SX from a Java or
    /// kafka-python producer and its features from us would land in different partitions and
    /// never meet in the co-partitioned join.
    pub fn producer_config(&self, client_id: &str) -> ClientConfig {
        let mut c = self.client_config();
        c.set("client.id", client_id)
            .set("partitioner", "murmur2_random")
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", "5")
            .set("batch.num.messages", "10000")
            .set("queue.buffering.max.messages", "200000")
            .set("delivery.timeout.ms", "30000")
            .set("retry.backoff.ms", "100")
            .set("retry.backoff.max.ms", "2000");
        for (k, v) in &self.properties {
            c.set(k, v);
        }
        c
    }
}

/// Topic name flags (`SF_TOPIC_*`, one per [`TopicRole`]; defaults
/// [`TopicRole::default_name`]).
#[derive(Debug, Clone, Args)]
pub struct TopicArgs {
    /// SX readings topic.
    #[arg(long, env = env::TOPIC_SX, default_value = TopicRole::Sx.default_name())]
    pub topic_sx: String,
    /// SY readings topic.
    #[arg(long, env = env::TOPIC_SY, default_value = TopicRole::Sy.default_name())]
    pub topic_sy: String,
    /// SZ readings topic.
    #[arg(long, env = env::TOPIC_SZ, default_value = TopicRole::Sz.default_name())]
    pub topic_sz: String,
    /// FA features topic.
    #[arg(long, env = env::TOPIC_FA, default_value = TopicRole::Fa.default_name())]
    pub topic_fa: String,
    /// FI features topic.
    #[arg(long, env = env::TOPIC_FI, default_value = TopicRole::Fi.default_name())]
    pub topic_fi: String,
    /// FD features topic.
    #[arg(long, env = env::TOPIC_FD, default_value = TopicRole::Fd.default_name())]
    pub topic_fd: String,
    /// Predictions topic.
    #[arg(long, env = env::TOPIC_PREDICTIONS, default_value = TopicRole::Predictions.default_name())]
    pub topic_predictions: String,
    /// Dead-letter topic for malformed records.
    #[arg(long, env = env::TOPIC_DLQ, default_value = TopicRole::DeadLetter.default_name())]
    pub topic_dlq: String,
    /// Topic for readings older than the watermark.
    #[arg(long, env = env::TOPIC_LATE, default_value = TopicRole::Late.default_name())]
    pub topic_late: String,
}

impl TopicArgs {
    /// The topic names.
    pub fn topics(&self) -> TopicNames {
        TopicNames {
            sx: self.topic_sx.clone(),
            sy: self.topic_sy.clone(),
            sz: self.topic_sz.clone(),
            fa: self.topic_fa.clone(),
            fi: self.topic_fi.clone(),
            fd: self.topic_fd.clone(),
            predictions: self.topic_predictions.clone(),
            dead_letter: self.topic_dlq.clone(),
            late: self.topic_late.clone(),
        }
    }

    /// Topic args with every name prefixed (`<prefix>SX`, …): isolates test runs.
    pub fn prefixed(prefix: &str) -> Self {
        let t = TopicNames::default();
        let p = |s: &str| format!("{prefix}{s}");
        Self {
            topic_sx: p(&t.sx),
            topic_sy: p(&t.sy),
            topic_sz: p(&t.sz),
            topic_fa: p(&t.fa),
            topic_fi: p(&t.fi),
            topic_fd: p(&t.fd),
            topic_predictions: p(&t.predictions),
            topic_dlq: p(&t.dead_letter),
            topic_late: p(&t.late),
        }
    }
}

/// Record framing flags.
#[derive(Debug, Clone, Args)]
pub struct FramingArgs {
    /// Value framing: `plain` protobuf, or `confluent` (Schema Registry wire format).
    // TODO(helper/knobs): `sensorflow_api::WireFormat` once that branch (which defines it in
    // api/src/crd.rs) is on main.
    #[arg(long, env = env::WIRE_FORMAT, default_value = "plain", value_parser = ["plain", "confluent"])]
    pub wire_format: String,
    /// Schema id written into produced records when --wire-format=confluent.
    #[arg(long, env = env::SCHEMA_ID, default_value_t = 1)]
    pub schema_id: u32,
}

impl FramingArgs {
    /// The framing.
    pub fn framing(&self) -> Framing {
        match self.wire_format.as_str() {
            "confluent" => Framing::Confluent {
                schema_id: self.schema_id,
            },
            _ => Framing::Plain,
        }
    }
}
