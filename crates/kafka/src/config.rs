//! Kafka client configuration from flags and environment variables.
//!
//! Only standard Kafka client settings are used, so the processors work unchanged against
//! Apache Kafka, Redpanda, tansu or any other Kafka-protocol broker.
//!
//! ## Defaults and the two profiles (`SF_KAFKA_PROFILE`, `--kafka-profile`)
//! Batching and fetch sizing trade latency for work per record, so they come in two profiles,
//! chosen by what `./run.sh bench` measured (`scripts/bench.sh`; figures in docs/benchmarks.md):
//!
//! | setting | `latency` (default) | `throughput` | why |
//! |---|---|---|---|
//! | `linger.ms` | 5 | 20 | a record waits this long for others to share its batch; a prediction crosses two producers (SZ → features → prediction) |
//! | `batch.num.messages` | 10 000 | 10 000 | never the limit at these rates |
//! | `compression.type` | none | lz4 | readings are ~30-byte protobufs: small batches barely compress; full ones do, cheaply |
//! | `fetch.min.bytes` | 1 | 65 536 | the broker answers a fetch as soon as one record is there, or waits for a useful amount |
//! | `fetch.wait.max.ms` | 100 | 100 | the longest a fetch waits for `fetch.min.bytes` (bounds the added latency of `throughput`) |
//!
//! `latency` is the default because the pipeline exists to raise alerts (the target:
//! SZ → prediction p99 < 50 ms at half load); `throughput` is for backfills and replays of
//! history, where whole batches matter and tens of ms do not. `linger.ms` 1 was tried for
//! `latency` and measured worse: librdkafka's broker thread then wakes every millisecond and
//! scans every partition's queue (`rd_kafka_toppar_producer_serve` went from 3 % to 12 % of
//! join-predict's samples in `perf`, 2026-11-29), CPU the 2-core machine did not have, for at
//! most 8 ms over two hops that no run could show under load. Every property is applied before
//! `SF_KAFKA_PROPERTIES` / `-X key=value`, so any of them can still be overridden one by one.

use clap::Args;
use rdkafka::ClientConfig;
use sensorflow_api::{SaslMechanism, SecurityProtocol, TopicNames, TopicRole, env};

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
    /// Path to the client certificate (PEM) for mutual TLS (`ssl.certificate.location`); needs
    /// `--ssl-key-location`.
    #[arg(long, env = env::KAFKA_SSL_CERTIFICATE_LOCATION, requires = "ssl_key_location")]
    pub ssl_certificate_location: Option<String>,
    /// Path to the client certificate's unencrypted private key (PEM) for mutual TLS
    /// (`ssl.key.location`); needs `--ssl-certificate-location`.
    #[arg(long, env = env::KAFKA_SSL_KEY_LOCATION, requires = "ssl_certificate_location")]
    pub ssl_key_location: Option<String>,
    /// Client settings profile: `latency` (default) or `throughput` (see the module docs).
    #[arg(long = "kafka-profile", env = KAFKA_PROFILE_ENV, default_value = "latency")]
    pub profile: KafkaProfile,
    /// Extra librdkafka properties as key=value (repeatable; env: comma-separated), applied
    /// after every default, so they override them.
    #[arg(short = 'X', long = "kafka-property", env = env::KAFKA_PROPERTIES, value_delimiter = ',', value_parser = parse_kv)]
    pub properties: Vec<(String, String)>,
}

/// Environment variable of [`KafkaArgs::profile`].
pub const KAFKA_PROFILE_ENV: &str = sensorflow_api::env::KAFKA_PROFILE;

/// What the batching and fetch settings favour (see the module docs for the values and why).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum KafkaProfile {
    /// Records move on almost at once: `linger.ms=5`, `fetch.min.bytes=1`, no compression.
    #[default]
    Latency,
    /// Fuller batches: `linger.ms=20`, lz4, `fetch.min.bytes=65536`, `fetch.wait.max.ms=100`.
    Throughput,
}

impl KafkaProfile {
    /// Producer properties of the profile.
    pub fn producer(self) -> &'static [(&'static str, &'static str)] {
        match self {
            Self::Latency => &[
                ("linger.ms", "5"),
                ("batch.num.messages", "10000"),
                ("compression.type", "none"),
            ],
            Self::Throughput => &[
                ("linger.ms", "20"),
                ("batch.num.messages", "10000"),
                ("compression.type", "lz4"),
            ],
        }
    }

    /// Consumer properties of the profile.
    pub fn consumer(self) -> &'static [(&'static str, &'static str)] {
        match self {
            Self::Latency => &[("fetch.min.bytes", "1"), ("fetch.wait.max.ms", "100")],
            Self::Throughput => &[("fetch.min.bytes", "65536"), ("fetch.wait.max.ms", "100")],
        }
    }
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
            ssl_certificate_location: None,
            ssl_key_location: None,
            profile: KafkaProfile::default(),
            properties: Vec::new(),
        }
    }

    /// Base client configuration shared by consumers, producers and admin clients.
    pub fn client_config(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.bootstrap_servers);
        set_security(
            &mut c,
            self.security_protocol,
            self.sasl_mechanism,
            self.sasl_username.as_deref(),
            self.sasl_password.as_deref(),
        );
        let files = [
            ("ssl.ca.location", &self.ssl_ca_location),
            ("ssl.certificate.location", &self.ssl_certificate_location),
            ("ssl.key.location", &self.ssl_key_location),
        ];
        for (k, v) in files {
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
        for (k, v) in self.profile.consumer() {
            c.set(*k, *v);
        }
        // Reapply user overrides last.
        for (k, v) in &self.properties {
            c.set(k, v);
        }
        c
    }

    /// Producer configuration: idempotent, acks=all, the profile's batching, a 30 s delivery
    /// timeout (the processors' loop replaces it: unbounded in AtLeastOnce, 10 s, within the
    /// transaction timeout, in ExactlyOnce); `SF_KAFKA_PROPERTIES` last.
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
            .set("queue.buffering.max.messages", "200000")
            .set("delivery.timeout.ms", "30000")
            .set("retry.backoff.ms", "100")
            .set("retry.backoff.max.ms", "2000");
        for (k, v) in self.profile.producer() {
            c.set(*k, *v);
        }
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

/// Sets the security keys every SensorFlow client shares, each only when given:
/// `security.protocol`, `sasl.mechanism` (the spellings of [`SecurityProtocol`] and
/// [`SaslMechanism`]), `sasl.username` and `sasl.password`. Used by the processors' flags
/// ([`KafkaArgs::client_config`]) and the operator's [`crate::Connection`], so both spell a
/// connection the same way.
pub fn set_security(
    c: &mut ClientConfig,
    protocol: Option<SecurityProtocol>,
    mechanism: Option<SaslMechanism>,
    username: Option<&str>,
    password: Option<&str>,
) {
    let keys = [
        ("security.protocol", protocol.map(SecurityProtocol::as_str)),
        ("sasl.mechanism", mechanism.map(SaslMechanism::as_str)),
        ("sasl.username", username),
        ("sasl.password", password),
    ];
    for (k, v) in keys {
        if let Some(v) = v {
            c.set(k, v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{KafkaArgs, KafkaProfile};
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        kafka: KafkaArgs,
    }

    #[test]
    fn each_profile_sets_its_batching_and_fetch_sizing() {
        let mut a = KafkaArgs::plain("b:9092");
        assert_eq!(a.profile, KafkaProfile::Latency);
        let (p, c) = (a.producer_config("x"), a.consumer_config("g", "x"));
        assert_eq!(p.get("linger.ms"), Some("5"));
        assert_eq!(p.get("compression.type"), Some("none"));
        assert_eq!(c.get("fetch.min.bytes"), Some("1"));
        a.profile = KafkaProfile::Throughput;
        let (p, c) = (a.producer_config("x"), a.consumer_config("g", "x"));
        assert_eq!(p.get("linger.ms"), Some("20"));
        assert_eq!(p.get("compression.type"), Some("lz4"));
        assert_eq!(c.get("fetch.min.bytes"), Some("65536"));
        assert_eq!(c.get("fetch.wait.max.ms"), Some("100"));
        // Settings outside the profiles stay.
        assert_eq!(p.get("enable.idempotence"), Some("true"));
        assert_eq!(c.get("enable.auto.commit"), Some("false"));
    }

    #[test]
    fn a_client_certificate_is_set_from_its_files_and_needs_both_halves() {
        let cli = Cli::parse_from([
            "t",
            "--security-protocol",
            "SSL",
            "--ssl-ca-location",
            "/ca.crt",
            "--ssl-certificate-location",
            "/c/user.crt",
            "--ssl-key-location",
            "/c/user.key",
        ]);
        let c = cli.kafka.client_config();
        assert_eq!(c.get("security.protocol"), Some("SSL"));
        assert_eq!(c.get("ssl.ca.location"), Some("/ca.crt"));
        assert_eq!(c.get("ssl.certificate.location"), Some("/c/user.crt"));
        assert_eq!(c.get("ssl.key.location"), Some("/c/user.key"));
        assert_eq!(c.get("sasl.username"), None);
        assert!(Cli::try_parse_from(["t", "--ssl-certificate-location", "/c/user.crt"]).is_err());
        assert!(Cli::try_parse_from(["t", "--ssl-key-location", "/c/user.key"]).is_err());
        let plain = KafkaArgs::plain("b:9092").client_config();
        assert_eq!(plain.get("ssl.certificate.location"), None);
    }

    #[test]
    fn user_properties_override_every_default_in_both_profiles() {
        let cli = Cli::parse_from([
            "t",
            "--kafka-profile",
            "throughput",
            "-X",
            "linger.ms=42",
            "-X",
            "fetch.min.bytes=7",
            "-X",
            "acks=1",
            "-X",
            "session.timeout.ms=30000",
        ]);
        let mut a = cli.kafka;
        assert_eq!(a.profile, KafkaProfile::Throughput);
        for profile in [KafkaProfile::Latency, KafkaProfile::Throughput] {
            a.profile = profile;
            let (p, c) = (a.producer_config("x"), a.consumer_config("g", "x"));
            assert_eq!(p.get("linger.ms"), Some("42"));
            assert_eq!(p.get("acks"), Some("1"));
            assert_eq!(c.get("fetch.min.bytes"), Some("7"));
            assert_eq!(c.get("session.timeout.ms"), Some("30000"));
        }
    }
}
