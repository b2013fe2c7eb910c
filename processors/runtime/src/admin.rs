//! Topic administration and consumer-group lag for every binary: the processors' tools (topic
//! creation for the demo, the bench and the tests; message counts; lag) and the operator
//! (a pipeline's topics with partition checks, topic deletion, per-stage lag).
//!
//! ```text
//!   ensure_pipeline_topics: Metadata ──▶ plan_topics (pure): create / raise / refuse
//!                           ──▶ CreateTopics, CreatePartitions ──▶ Metadata again (verify)
//!                           ──▶ check_co_partitioning (pure)
//!                           ──▶ DescribeConfigs ──▶ plan_config_changes (pure) ──▶ AlterConfigs
//!                           ──▶ TopicReport
//!   ensure_topics:          CreateTopics (existing kept) ──▶ wait for metadata ──▶ same count?
//!   lag (one definition):   OffsetFetch(group) + ListOffsets(latest, earliest)
//!                           ──▶ Σ max(0, high − max(committed, low)), low when never committed
//! ```
//!
//! rdkafka's metadata and offset calls block: the async functions run them on
//! `spawn_blocking`; the `*_blocking`-style functions ([`partition_counts`], [`group_lag`],
//! [`message_count`]) are for callers that already are on a blocking thread.

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::admin::{
    AdminClient, AdminOptions, AlterConfig, ConfigSource, NewPartitions, NewTopic,
    OwnedResourceSpecifier, ResourceSpecifier, TopicReplication,
};
use rdkafka::client::{ClientContext, DefaultClientContext};
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::metadata::Metadata;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

/// Timeout of one broker request.
const TIMEOUT: Duration = Duration::from_secs(10);

/// Admin failures.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// The broker call failed.
    #[error("{what}: {source}")]
    Kafka {
        /// What was being done (with the bootstrap servers, group or topic concerned).
        what: String,
        /// Cause.
        source: KafkaError,
    },
    /// The broker refused the client's SASL authentication (wrong username or password, or a
    /// mechanism the listener does not enable). `detail` is librdkafka's report of the
    /// refusal, which the failed request itself does not carry.
    #[error("{what}: SASL authentication failed: {detail}")]
    Authentication {
        /// What was being done (with the bootstrap servers).
        what: String,
        /// The broker's refusal as librdkafka logged it.
        detail: String,
    },
    /// A topic exists with another partition count.
    #[error("topic {topic} has {actual} partitions, expected {expected}")]
    PartitionMismatch {
        /// Topic.
        topic: String,
        /// Partitions found.
        actual: i32,
        /// Partitions wanted.
        expected: i32,
    },
    /// A topic does not exist (or has a partition without a leader yet).
    #[error("topic {0} does not exist or has a partition without a leader")]
    Missing(String),
    /// The broker refused an operation on one topic.
    #[error("{op} {topic}: {code}")]
    Topic {
        /// CreateTopics or DeleteTopics.
        op: &'static str,
        /// Topic.
        topic: String,
        /// Broker error code.
        code: RDKafkaErrorCode,
    },
    /// The blocking task panicked or was cancelled.
    #[error("blocking kafka task: {0}")]
    Join(#[from] tokio::task::JoinError),
}

impl AdminError {
    /// Whether the broker refused the client's SASL authentication.
    pub fn is_authentication(&self) -> bool {
        matches!(self, AdminError::Authentication { .. })
    }
}

fn kafka(what: impl Into<String>) -> impl FnOnce(KafkaError) -> AdminError {
    let what = what.into();
    move |source| AdminError::Kafka { what, source }
}

/// Creates `topics` with `partitions` partitions each (replication factor `replication`);
/// existing topics are kept and checked to have that many partitions.
///
/// # Errors
/// [`AdminError`] when the broker refuses, or an existing topic has another partition count.
pub async fn ensure_topics(
    config: &ClientConfig,
    topics: &[&str],
    partitions: i32,
    replication: i32,
) -> Result<(), AdminError> {
    let admin: AdminClient<DefaultClientContext> = config
        .create()
        .map_err(kafka("creating the admin client"))?;
    let new: Vec<NewTopic<'_>> = topics
        .iter()
        .map(|t| NewTopic::new(t, partitions, TopicReplication::Fixed(replication)))
        .collect();
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let results = admin
        .create_topics(&new, &opts)
        .await
        .map_err(kafka("create_topics"))?;
    for r in results {
        match r {
            Ok(t) => tracing::info!(topic = %t, partitions, "topic created"),
            Err((t, RDKafkaErrorCode::TopicAlreadyExists)) => {
                tracing::debug!(topic = %t, "topic exists")
            }
            Err((topic, code)) => {
                return Err(AdminError::Topic {
                    op: "CreateTopics",
                    topic,
                    code,
                });
            }
        }
    }
    // CreateTopics returns once the controller created the topics; the broker's metadata
    // catches up a moment later (Apache Kafka propagates it asynchronously).
    let started = std::time::Instant::now();
    let counts = loop {
        match partition_counts(config, topics) {
            Err(AdminError::Missing(t)) if started.elapsed() < METADATA_WAIT => {
                tracing::debug!(topic = %t, "waiting for the new topic's metadata");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            other => break other?,
        }
    };
    for (t, n) in topics.iter().zip(counts) {
        if n != partitions {
            return Err(AdminError::PartitionMismatch {
                topic: (*t).to_owned(),
                actual: n,
                expected: partitions,
            });
        }
    }
    Ok(())
}

/// How long [`ensure_topics`] waits for new topics to appear in the metadata.
const METADATA_WAIT: Duration = Duration::from_secs(30);

/// Partition counts of `topics`, in order (blocking metadata call).
///
/// # Errors
/// [`AdminError::Missing`] for a topic the broker does not know, or one with a partition that has
/// no leader yet.
pub fn partition_counts(config: &ClientConfig, topics: &[&str]) -> Result<Vec<i32>, AdminError> {
    let c: BaseConsumer = config
        .create()
        .map_err(kafka("creating a metadata client"))?;
    topics
        .iter()
        .map(|t| {
            let md = c
                .fetch_metadata(Some(t), Duration::from_secs(10))
                .map_err(kafka(format!("metadata of {t}")))?;
            match md.topics().first() {
                // A partition without a leader yet (just created) is not ready either.
                Some(mt)
                    if mt.error().is_none()
                        && !mt.partitions().is_empty()
                        && mt
                            .partitions()
                            .iter()
                            .all(|p| p.leader() >= 0 && p.error().is_none()) =>
                {
                    Ok(mt.partitions().len() as i32)
                }
                _ => Err(AdminError::Missing((*t).to_owned())),
            }
        })
        .collect()
}

/// Messages in `topics` (sum over partitions of high − low watermark).
///
/// # Errors
/// [`AdminError`] when metadata or watermarks cannot be read.
pub fn message_count(config: &ClientConfig, topic: &str) -> Result<i64, AdminError> {
    let c: BaseConsumer = config
        .create()
        .map_err(kafka("creating a metadata client"))?;
    let n = partition_counts(config, &[topic])?[0];
    let mut total = 0;
    for p in 0..n {
        let (lo, hi) = c
            .fetch_watermarks(topic, p, Duration::from_secs(10))
            .map_err(kafka(format!("watermarks of {topic}/{p}")))?;
        total += hi - lo;
    }
    Ok(total)
}

/// Lag of consumer group `group` over every partition of `topics`: Σ (high watermark −
/// committed offset), a partition the group never committed (or committed below the low
/// watermark, its records deleted since) counted from the low watermark, never negative.
/// Blocking.
///
/// # Errors
/// [`AdminError`] when metadata, watermarks or committed offsets cannot be read.
pub fn group_lag(config: &ClientConfig, group: &str, topics: &[&str]) -> Result<i64, AdminError> {
    let counts = partition_counts(config, topics)?;
    let partitions: BTreeMap<String, i32> = topics
        .iter()
        .zip(counts)
        .map(|(t, n)| ((*t).to_owned(), n))
        .collect();
    let lag = lag_blocking(config, group, topics, &partitions)?;
    Ok(i64::try_from(lag).unwrap_or(i64::MAX))
}

/// The one lag computation ([`group_lag`], [`stage_lag`]): `partitions` gives the partition
/// count of each topic. A fresh client's offset queries get retriable errors from a broker
/// for a moment (NotLeaderForPartition seen on Apache Kafka under load), so each query is
/// retried four times, 250 ms apart.
fn lag_blocking(
    config: &ClientConfig,
    group: &str,
    topics: &[&str],
    partitions: &BTreeMap<String, i32>,
) -> Result<u64, AdminError> {
    let mut tpl = TopicPartitionList::new();
    for t in topics {
        for p in 0..partitions.get(*t).copied().unwrap_or(0) {
            tpl.add_partition(t, p);
        }
    }
    let mut cfg = config.clone();
    cfg.set("group.id", group)
        .set("enable.auto.commit", "false");
    let consumer: BaseConsumer = cfg
        .create()
        .map_err(kafka(format!("creating a lag client for group {group}")))?;
    let err = || kafka(format!("offsets of group {group}"));
    let retry = |f: &dyn Fn() -> Result<TopicPartitionList, AdminError>| {
        let mut last = f();
        for _ in 0..4 {
            if last.is_ok() {
                break;
            }
            std::thread::sleep(Duration::from_millis(250));
            last = f();
        }
        last
    };
    let committed = retry(&|| {
        consumer
            .committed_offsets(tpl.clone(), TIMEOUT)
            .map_err(err())
    })?;
    let query = |spec: Offset| -> Result<TopicPartitionList, AdminError> {
        let mut q = tpl.clone();
        q.set_all_offsets(spec).map_err(err())?;
        consumer.offsets_for_times(q, TIMEOUT).map_err(err())
    };
    let high = retry(&|| query(Offset::End))?;
    let low = retry(&|| query(Offset::Beginning))?;
    let offset_of = |list: &TopicPartitionList, t: &str, p: i32| -> Option<i64> {
        list.find_partition(t, p)
            .and_then(|e| e.offset().to_raw())
            .filter(|o| *o >= 0)
    };
    let mut lag: u64 = 0;
    for e in tpl.elements() {
        let (t, p) = (e.topic(), e.partition());
        let Some(hi) = offset_of(&high, t, p) else {
            continue;
        };
        let lo = offset_of(&low, t, p).unwrap_or(0);
        let from = offset_of(&committed, t, p).map_or(lo, |c| c.max(lo));
        lag = lag.saturating_add(u64::try_from(hi - from).unwrap_or(0));
    }
    Ok(lag)
}

/// Per-partition progress of another consumer group on one topic, read again and again with
/// one client (the join's view of its upstream window-processor; see
/// `sensorflow_core::join::PartitionJoin::set_upstream_backlog`). Joins no group: it only
/// fetches the group's committed offsets (OffsetFetch) and the topic's end offsets
/// (ListOffsets), two requests per [`GroupProgress::backlog`] call.
pub struct GroupProgress {
    consumer: BaseConsumer,
    group: String,
    tpl: TopicPartitionList,
}

impl GroupProgress {
    /// A probe of `group` over partitions `0..partitions` of `topic`.
    ///
    /// # Errors
    /// [`AdminError`] when the client cannot be created.
    pub fn new(
        config: &ClientConfig,
        group: &str,
        topic: &str,
        partitions: i32,
    ) -> Result<Self, AdminError> {
        let mut cfg = config.clone();
        cfg.set("group.id", group)
            .set("enable.auto.commit", "false");
        let consumer: BaseConsumer = cfg.create().map_err(kafka(format!(
            "creating a progress client for group {group}"
        )))?;
        let mut tpl = TopicPartitionList::new();
        for p in 0..partitions {
            tpl.add_partition(topic, p);
        }
        Ok(Self {
            consumer,
            group: group.to_owned(),
            tpl,
        })
    }

    /// The partitions on which the group has records left to process, sorted: its committed
    /// offset is below the partition's end offset, or it has members (it runs) but has not
    /// committed on a non-empty partition yet (a stage still starting, e.g. its producer
    /// waiting for a transaction coordinator). A group with neither commits nor members has
    /// no backlog: nothing says that stage exists. Blocking (three round trips, each bounded by
    /// the admin timeout).
    ///
    /// # Errors
    /// [`AdminError`] when the offsets or the group cannot be read.
    pub fn backlog(&self) -> Result<Vec<i32>, AdminError> {
        let err = || kafka(format!("offsets of group {}", self.group));
        let committed = self
            .consumer
            .committed_offsets(self.tpl.clone(), TIMEOUT)
            .map_err(err())?;
        let running = self
            .consumer
            .fetch_group_list(Some(&self.group), TIMEOUT)
            .map_err(kafka(format!("describing group {}", self.group)))?
            .groups()
            .iter()
            .any(|g| !g.members().is_empty());
        let mut q = self.tpl.clone();
        q.set_all_offsets(Offset::End).map_err(err())?;
        let end = self.consumer.offsets_for_times(q, TIMEOUT).map_err(err())?;
        let mut out = Vec::new();
        for e in committed.elements() {
            let c = match e.offset().to_raw().filter(|o| *o >= 0) {
                Some(c) => c,
                None if running => 0,
                None => continue,
            };
            let hi = end
                .find_partition(e.topic(), e.partition())
                .and_then(|x| x.offset().to_raw())
                .filter(|o| *o >= 0);
            if hi.is_some_and(|hi| c < hi) {
                out.push(e.partition());
            }
        }
        out.sort_unstable();
        Ok(out)
    }
}

/// Connection settings of the operator's clients (credentials already read from Secrets).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Connection {
    /// `bootstrap.servers`.
    pub bootstrap: String,
    /// `security.protocol`, when set.
    pub protocol: Option<String>,
    /// `sasl.mechanism`, when set.
    pub sasl_mechanism: Option<String>,
    /// SASL username and password.
    pub sasl_credentials: Option<(String, String)>,
    /// PEM CA bundle (`ssl.ca.pem`).
    pub ca_pem: Option<String>,
}

impl Connection {
    /// The client configuration (`client.id` `sensorflow-operator`, 10 s socket timeout).
    pub fn config(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.bootstrap)
            .set("socket.timeout.ms", "10000")
            .set("client.id", "sensorflow-operator");
        if let Some(p) = &self.protocol {
            c.set("security.protocol", p);
        }
        if let Some(m) = &self.sasl_mechanism {
            c.set("sasl.mechanism", m);
        }
        if let Some((u, p)) = &self.sasl_credentials {
            c.set("sasl.username", u).set("sasl.password", p);
        }
        if let Some(ca) = &self.ca_pem {
            c.set("ssl.ca.pem", ca);
        }
        c
    }

    fn admin(&self) -> Result<AdminClient<DefaultClientContext>, AdminError> {
        self.config()
            .create()
            .map_err(kafka(format!("kafka client config for {}", self.bootstrap)))
    }
}

/// Client context of the metadata client [`Connection`] reads topics with: remembers the last
/// connection failure librdkafka reported (the broker refusing SASL authentication, a failed
/// TLS handshake, a refused connection). A metadata request to a broker the client cannot use
/// only fails with "broker transport failure"; this says why. librdkafka queues these reports
/// (`log.queue`) until the client is polled, which [`metadata`] does after each failed slice.
/// Log lines go on to `tracing` (target `librdkafka`).
#[derive(Debug, Default)]
pub struct ConnectionContext {
    last_failure: std::sync::Mutex<Option<String>>,
}

impl ConnectionContext {
    /// The last connection failure logged, without librdkafka's varying
    /// "(after N ms in state X…)" suffix, so a repeated failure reads the same each time.
    pub fn last_failure(&self) -> Option<String> {
        self.last_failure.lock().ok().and_then(|f| f.clone())
    }

    /// Whether the last connection failure is the broker refusing SASL authentication.
    pub fn authentication_failed(&self) -> bool {
        self.last_failure()
            .is_some_and(|f| is_authentication_failure(&f))
    }

    fn record(&self, message: &str) {
        // "[thrd:sasl_ssl://b:1/bootstrap]: sasl_ssl://b:1/bootstrap: … (after 5ms in state X)"
        let message = match message.strip_prefix("[thrd:") {
            Some(rest) => rest.split_once("]: ").map_or(message, |(_, m)| m),
            None => message,
        };
        let stable = message
            .split_once(" (after ")
            .map_or(message, |(m, _)| m)
            .trim();
        if let Ok(mut f) = self.last_failure.lock() {
            *f = Some(stable.to_owned());
        }
    }

    /// The error for a failed request: [`AdminError::Authentication`] when the broker refused
    /// the credentials, otherwise the request's error with the last connection failure (if
    /// any) added to `what`.
    fn failed(&self, what: String, source: KafkaError) -> AdminError {
        match self.last_failure() {
            Some(detail) if is_authentication_failure(&detail) => {
                AdminError::Authentication { what, detail }
            }
            Some(detail) => AdminError::Kafka {
                what: format!("{what} (last connection failure: {detail})"),
                source,
            },
            None => AdminError::Kafka { what, source },
        }
    }
}

/// Whether a librdkafka connection failure is a SASL authentication refusal (librdkafka:
/// "SASL authentication error: …"; the broker: "Authentication failed …").
fn is_authentication_failure(message: &str) -> bool {
    message.contains("SASL authentication error") || message.contains("Authentication failed")
}

impl rdkafka::producer::ProducerContext for ConnectionContext {
    type DeliveryOpaque = ();
    /// The metadata client produces nothing.
    fn delivery(&self, _: &rdkafka::message::DeliveryResult<'_>, _: ()) {}
}

impl ClientContext for ConnectionContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        match level {
            RDKafkaLogLevel::Emerg
            | RDKafkaLogLevel::Alert
            | RDKafkaLogLevel::Critical
            | RDKafkaLogLevel::Error => {
                tracing::warn!(target: "librdkafka", facility = fac, "{message}");
                self.record(message);
            }
            RDKafkaLogLevel::Warning => {
                tracing::warn!(target: "librdkafka", facility = fac, "{message}");
                if fac == "FAIL" {
                    self.record(message);
                }
            }
            RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
                tracing::debug!(target: "librdkafka", facility = fac, "{message}");
            }
            RDKafkaLogLevel::Debug => {
                tracing::trace!(target: "librdkafka", facility = fac, "{message}");
            }
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        tracing::warn!(target: "librdkafka", %error, "{reason}");
        self.record(reason);
    }
}

/// Cluster metadata from `conn`'s brokers within [`TIMEOUT`], through a client whose
/// [`ConnectionContext`] is polled between one-second slices: a broker refusing the
/// credentials fails the call within a second or two with [`AdminError::Authentication`],
/// instead of "broker transport failure" after the whole timeout.
fn metadata(conn: &Connection, what: &str) -> Result<Metadata, AdminError> {
    use rdkafka::producer::{BaseProducer, Producer};
    let client: BaseProducer<ConnectionContext> = conn
        .config()
        .create_with_context(ConnectionContext::default())
        .map_err(kafka(format!("kafka client config for {}", conn.bootstrap)))?;
    let deadline = std::time::Instant::now() + TIMEOUT;
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match client
            .client()
            .fetch_metadata(None, left.min(Duration::from_secs(1)))
        {
            Ok(md) => return Ok(md),
            Err(e) => {
                // Hands the queued log lines and errors to the context.
                client.poll(Duration::ZERO);
                let ctx = client.context();
                if ctx.authentication_failed() || std::time::Instant::now() >= deadline {
                    return Err(ctx.failed(what.to_owned(), e));
                }
                // Some failures return at once: no tight loop.
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

/// Desired topic settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicPlan {
    /// Every topic of the pipeline.
    pub topics: Vec<String>,
    /// Partitions per topic.
    pub partitions: i32,
    /// Replication factor of created topics.
    pub replication_factor: i32,
    /// Topic configuration by topic name: set on creation, and applied to existing topics
    /// whose values differ ([`plan_config_changes`]). A topic absent here is left alone.
    pub configs: BTreeMap<String, BTreeMap<String, String>>,
    /// Whether raising the partition count of existing topics is confirmed.
    pub allow_increase: bool,
    /// Topics that must share one partition count (join inputs).
    pub co_partitioned: Vec<String>,
}

/// What [`ensure_topics`] found and did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicReport {
    /// Partition count per topic on the broker after the step.
    pub partitions: BTreeMap<String, i32>,
    /// Topics created in this step.
    pub created: Vec<String>,
    /// Topics whose partition count was raised: (topic, from, to).
    pub increased: Vec<(String, i32, i32)>,
    /// Overall outcome (the operator's `TopicsReady` condition).
    pub outcome: TopicCheck,
    /// What the configuration step found and did (the operator's `TopicConfigApplied`
    /// condition).
    pub config: ConfigCheck,
}

/// Outcome of applying [`TopicPlan::configs`] to existing topics.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum ConfigCheck {
    /// Nothing to apply: no topic configuration in the plan (nothing was read).
    #[default]
    NotManaged,
    /// Every configured key has its desired value on the broker; `altered` lists what this
    /// step changed, as (topic, keys) (empty when everything already matched).
    InSync {
        /// Topics altered now, with the keys that changed.
        altered: Vec<(String, Vec<String>)>,
    },
    /// DescribeConfigs or AlterConfigs failed or was refused (for example an unknown key or
    /// a value out of range); the message names the topics and the broker's error.
    Failed(String),
}

/// One topic whose configuration differs from the plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigChange {
    /// Topic.
    pub topic: String,
    /// Keys whose value on the broker differs from the plan.
    pub changed: Vec<String>,
    /// The whole set of topic-level (dynamic) configuration to write: the topic's current
    /// overrides with the plan's keys set on top. AlterConfigs replaces a topic's dynamic
    /// configuration, so keys set by others are carried over here.
    pub set: BTreeMap<String, String>,
}

/// Current configuration of one topic as DescribeConfigs reports it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TopicConfig {
    /// Effective value of every key (defaults included).
    pub effective: BTreeMap<String, String>,
    /// The topic-level overrides (source `DYNAMIC_TOPIC_CONFIG`).
    pub overrides: BTreeMap<String, String>,
}

/// Pure: the topics whose effective configuration differs from `desired`, with the full set
/// of overrides to write for each (see [`ConfigChange::set`]). Topics missing from `current`
/// (not created yet, or not described) are skipped.
pub fn plan_config_changes(
    desired: &BTreeMap<String, BTreeMap<String, String>>,
    current: &BTreeMap<String, TopicConfig>,
) -> Vec<ConfigChange> {
    let mut out = Vec::new();
    for (topic, want) in desired {
        let Some(cur) = current.get(topic) else {
            continue;
        };
        let changed: Vec<String> = want
            .iter()
            .filter(|(k, v)| cur.effective.get(*k) != Some(*v))
            .map(|(k, _)| k.clone())
            .collect();
        if changed.is_empty() {
            continue;
        }
        let mut set = cur.overrides.clone();
        set.extend(want.iter().map(|(k, v)| (k.clone(), v.clone())));
        out.push(ConfigChange {
            topic: topic.clone(),
            changed,
            set,
        });
    }
    out
}

/// Applies `desired` (topic → configuration) to the existing topics of `desired` whose values
/// differ. rdkafka 0.39 offers only the legacy AlterConfigs, which *replaces* a topic's whole
/// dynamic configuration (unlisted keys revert to their defaults), not KIP-339's
/// IncrementalAlterConfigs (librdkafka has it, the safe Rust binding does not). So this reads
/// the current overrides with DescribeConfigs, merges the desired keys on top
/// ([`plan_config_changes`]) and writes the merged set. The read-merge-write is not atomic: an
/// override someone else sets between the describe and the alter is lost (the next
/// reconcile does not restore it; it is not ours). rdkafka 0.39 also drops AlterConfigs'
/// per-topic error codes, so the outcome is read back with a second DescribeConfigs: a key
/// still differing is a refusal. Never fails the reconcile: a refusal is reported as
/// [`ConfigCheck::Failed`].
async fn apply_topic_configs(
    admin: &AdminClient<DefaultClientContext>,
    bootstrap: &str,
    desired: &BTreeMap<String, BTreeMap<String, String>>,
    existing: &BTreeMap<String, i32>,
) -> ConfigCheck {
    let desired: BTreeMap<String, BTreeMap<String, String>> = desired
        .iter()
        .filter(|(t, c)| existing.contains_key(*t) && !c.is_empty())
        .map(|(t, c)| (t.clone(), c.clone()))
        .collect();
    if desired.is_empty() {
        return ConfigCheck::NotManaged;
    }
    let opts = AdminOptions::new().operation_timeout(Some(TIMEOUT));
    let current = match describe_topic_configs(admin, bootstrap, desired.keys(), &opts).await {
        Ok(c) => c,
        Err(m) => return ConfigCheck::Failed(m),
    };
    let changes = plan_config_changes(&desired, &current);
    if changes.is_empty() {
        return ConfigCheck::InSync { altered: vec![] };
    }
    let alters: Vec<AlterConfig<'_>> = changes
        .iter()
        .map(|c| {
            c.set.iter().fold(
                AlterConfig::new(ResourceSpecifier::Topic(&c.topic)),
                |a, (k, v)| a.set(k, v),
            )
        })
        .collect();
    if let Err(e) = admin.alter_configs(alters.iter(), &opts).await {
        return ConfigCheck::Failed(format!("AlterConfigs on {bootstrap}: {e}"));
    }
    // rdkafka 0.39 reports every resource of an AlterConfigs response as a success (it drops
    // the per-resource error code), so the result is verified by reading the topics back.
    let changed_topics: Vec<String> = changes.iter().map(|c| c.topic.clone()).collect();
    let after = match describe_topic_configs(admin, bootstrap, changed_topics.iter(), &opts).await {
        Ok(c) => c,
        Err(m) => return ConfigCheck::Failed(m),
    };
    let still = plan_config_changes(&desired, &after);
    if still.is_empty() {
        return ConfigCheck::InSync {
            altered: changes.into_iter().map(|c| (c.topic, c.changed)).collect(),
        };
    }
    let failed: Vec<String> = still
        .iter()
        .map(|c| {
            let keys: Vec<String> = c
                .changed
                .iter()
                .map(|k| {
                    let want = desired.get(&c.topic).and_then(|d| d.get(k));
                    let got = after.get(&c.topic).and_then(|a| a.effective.get(k));
                    format!(
                        "{k}={} (broker has {})",
                        want.map_or("?", String::as_str),
                        got.map_or("no value", String::as_str)
                    )
                })
                .collect();
            format!("{}: {}", c.topic, keys.join(", "))
        })
        .collect();
    ConfigCheck::Failed(format!(
        "AlterConfigs did not take effect (the broker refused the value or the key): {}",
        failed.join("; ")
    ))
}

/// DescribeConfigs of `topics`: each topic's effective values and its topic-level overrides.
async fn describe_topic_configs<'a>(
    admin: &AdminClient<DefaultClientContext>,
    bootstrap: &str,
    topics: impl Iterator<Item = &'a String>,
    opts: &AdminOptions,
) -> Result<BTreeMap<String, TopicConfig>, String> {
    let specs: Vec<ResourceSpecifier<'_>> = topics.map(|t| ResourceSpecifier::Topic(t)).collect();
    let described = admin
        .describe_configs(specs.iter(), opts)
        .await
        .map_err(|e| format!("DescribeConfigs on {bootstrap}: {e}"))?;
    let mut current = BTreeMap::new();
    for r in described {
        let res = r.map_err(|code| format!("DescribeConfigs on {bootstrap}: {code}"))?;
        let OwnedResourceSpecifier::Topic(topic) = res.specifier else {
            continue;
        };
        let mut tc = TopicConfig::default();
        for e in res.entries {
            let Some(v) = e.value else { continue };
            if e.source == ConfigSource::DynamicTopic {
                tc.overrides.insert(e.name.clone(), v.clone());
            }
            tc.effective.insert(e.name, v);
        }
        current.insert(topic, tc);
    }
    Ok(current)
}

/// What [`ensure_pipeline_topics`] concluded about a pipeline's topics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TopicCheck {
    /// Every topic exists with the desired partition count and the join inputs are
    /// co-partitioned.
    Ready,
    /// The broker refused a CreateTopics, or a topic is not visible after creation.
    BrokerRefused(String),
    /// The plan lowers partitions of an existing topic: refused (Kafka cannot remove partitions).
    DecreaseRefused(String),
    /// The plan raises partitions of existing topics without `allow_increase`.
    IncreasePending(String),
    /// The co-partitioned topics have different partition counts.
    NotCoPartitioned(String),
    /// The confirmed partition increase was refused by the broker.
    IncreaseFailed(String),
}

/// Partition counts of `topics` (absent when the topic does not exist).
async fn existing_partition_counts(
    conn: &Connection,
    topics: &[String],
) -> Result<BTreeMap<String, i32>, AdminError> {
    let conn = conn.clone();
    let topics = topics.to_vec();
    tokio::task::spawn_blocking(move || {
        let md = metadata(&conn, &format!("metadata from {}", conn.bootstrap))?;
        let mut out = BTreeMap::new();
        for t in md.topics() {
            if topics.iter().any(|x| x == t.name()) && t.error().is_none() {
                out.insert(
                    t.name().to_owned(),
                    i32::try_from(t.partitions().len()).unwrap_or(i32::MAX),
                );
            }
        }
        Ok(out)
    })
    .await?
}

/// Pure: decides, from existing partition counts, what to create, what to raise and which
/// outcome to report. Returns (to create, to raise as (topic, from, to), outcome).
pub fn plan_topics(
    plan: &TopicPlan,
    existing: &BTreeMap<String, i32>,
) -> (Vec<String>, Vec<(String, i32, i32)>, TopicCheck) {
    let mut create = Vec::new();
    let mut raise = Vec::new();
    let mut decreases = Vec::new();
    let mut pending = Vec::new();
    for t in &plan.topics {
        match existing.get(t) {
            None => create.push(t.clone()),
            Some(&n) if n > plan.partitions => decreases.push(format!(
                "{t} has {n} partitions, spec asks {} (Kafka cannot remove partitions)",
                plan.partitions
            )),
            Some(&n) if n < plan.partitions => {
                if plan.allow_increase {
                    raise.push((t.clone(), n, plan.partitions));
                } else {
                    pending.push(format!("{t}: {n} → {}", plan.partitions));
                }
            }
            Some(_) => {}
        }
    }
    let outcome = if !decreases.is_empty() {
        TopicCheck::DecreaseRefused(decreases.join("; "))
    } else if !pending.is_empty() {
        TopicCheck::IncreasePending(format!(
            "raising partitions breaks the key → partition mapping of windowed state; set topics.allowPartitionIncrease=true to confirm ({})",
            pending.join(", ")
        ))
    } else {
        TopicCheck::Ready
    };
    (create, raise, outcome)
}

/// Pure: the co-partitioning check over the join inputs.
pub fn check_co_partitioning(plan: &TopicPlan, counts: &BTreeMap<String, i32>) -> Option<String> {
    let seen: Vec<(&String, i32)> = plan
        .co_partitioned
        .iter()
        .filter_map(|t| counts.get(t).map(|n| (t, *n)))
        .collect();
    let first = seen.first()?.1;
    if seen.iter().all(|(_, n)| *n == first) {
        None
    } else {
        let list: Vec<String> = seen.iter().map(|(t, n)| format!("{t}={n}")).collect();
        Some(format!(
            "join inputs must have the same partition count: {}",
            list.join(", ")
        ))
    }
}

/// A pipeline's topics: creates missing topics, raises partition counts when confirmed, and
/// verifies the result on the broker.
///
/// # Errors
/// [`AdminError`] when the broker cannot be reached or refuses a CreateTopics; a partition
/// decrease, an unconfirmed or refused increase, or a co-partitioning mismatch is reported in
/// the outcome instead.
pub async fn ensure_pipeline_topics(
    conn: &Connection,
    plan: &TopicPlan,
) -> Result<TopicReport, AdminError> {
    let existing = existing_partition_counts(conn, &plan.topics).await?;
    let (create, raise, mut outcome) = plan_topics(plan, &existing);
    let admin = conn.admin()?;
    let opts = AdminOptions::new().operation_timeout(Some(TIMEOUT));
    let mut created = Vec::new();
    if !create.is_empty() {
        let new: Vec<NewTopic<'_>> = create
            .iter()
            .map(|t| {
                let mut nt = NewTopic::new(
                    t,
                    plan.partitions,
                    TopicReplication::Fixed(plan.replication_factor),
                );
                for (k, v) in plan.configs.get(t).into_iter().flatten() {
                    nt = nt.set(k, v);
                }
                nt
            })
            .collect();
        let results = admin
            .create_topics(new.iter(), &opts)
            .await
            .map_err(kafka(format!("CreateTopics on {}", conn.bootstrap)))?;
        let mut refused = Vec::new();
        for r in results {
            match r {
                Ok(t) => created.push(t),
                // Someone else (another pipeline, a person, a restart mid-reconcile whose
                // earlier create went through) got there first: not ours to delete later.
                Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((topic, code)) => refused.push(format!("{topic}: {code}")),
            }
        }
        // The topics that were created are reported even when others were refused, so the
        // caller records them as this pipeline's.
        if !refused.is_empty() {
            outcome =
                TopicCheck::BrokerRefused(format!("CreateTopics refused: {}", refused.join(", ")));
        }
    }
    let mut increased = Vec::new();
    if !raise.is_empty() {
        let parts: Vec<NewPartitions<'_>> = raise
            .iter()
            .map(|(t, _, to)| NewPartitions::new(t, usize::try_from(*to).unwrap_or(0)))
            .collect();
        // A refusal here (for example a broker without CreatePartitions) is reported as a
        // condition and retried at the next resync, not treated as an outage.
        let failure = match admin.create_partitions(parts.iter(), &opts).await {
            Err(e) => Some(format!(
                "CreatePartitions refused by {}: {e}",
                conn.bootstrap
            )),
            Ok(results) => {
                let refused: Vec<String> = results
                    .into_iter()
                    .filter_map(|r| r.err().map(|(t, code)| format!("{t}: {code}")))
                    .collect();
                (!refused.is_empty())
                    .then(|| format!("CreatePartitions refused: {}", refused.join(", ")))
            }
        };
        match failure {
            Some(m) => outcome = TopicCheck::IncreaseFailed(m),
            None => increased = raise,
        }
    }
    // Verify on the broker rather than trusting the responses.
    let counts = if create.is_empty() && increased.is_empty() {
        existing
    } else {
        existing_partition_counts(conn, &plan.topics).await?
    };
    if outcome == TopicCheck::Ready {
        let missing: Vec<&String> = plan
            .topics
            .iter()
            .filter(|t| !counts.contains_key(*t))
            .collect();
        if !missing.is_empty() {
            outcome = TopicCheck::BrokerRefused(format!(
                "topics not visible after creation: {missing:?}"
            ));
        } else if let Some(m) = check_co_partitioning(plan, &counts) {
            outcome = TopicCheck::NotCoPartitioned(m);
        }
    }
    let config = apply_topic_configs(&admin, &conn.bootstrap, &plan.configs, &counts).await;
    Ok(TopicReport {
        partitions: counts,
        created,
        increased,
        outcome,
        config,
    })
}

/// Deletes `topics`; topics that do not exist are ignored.
///
/// # Errors
/// [`AdminError`] when the broker cannot be reached or refuses a deletion.
pub async fn delete_topics(
    conn: &Connection,
    topics: &[String],
) -> Result<Vec<String>, AdminError> {
    let existing = existing_partition_counts(conn, topics).await?;
    let names: Vec<&str> = topics
        .iter()
        .filter(|t| existing.contains_key(*t))
        .map(String::as_str)
        .collect();
    if names.is_empty() {
        return Ok(Vec::new());
    }
    let admin = conn.admin()?;
    let opts = AdminOptions::new().operation_timeout(Some(TIMEOUT));
    let results = admin
        .delete_topics(&names, &opts)
        .await
        .map_err(kafka(format!("DeleteTopics on {}", conn.bootstrap)))?;
    let mut deleted = Vec::new();
    for r in results {
        match r {
            Ok(t) => deleted.push(t),
            Err((_, RDKafkaErrorCode::UnknownTopicOrPartition)) => {}
            Err((topic, code)) => {
                return Err(AdminError::Topic {
                    op: "DeleteTopics",
                    topic,
                    code,
                });
            }
        }
    }
    Ok(deleted)
}

/// Consumer lag of `group` summed over every partition of `topics` (messages), with the
/// partition counts already known ([`TopicReport::partitions`]); see [`group_lag`] for the
/// definition.
///
/// # Errors
/// [`AdminError`] when the broker cannot be reached or the offsets cannot be read.
pub async fn stage_lag(
    conn: &Connection,
    group: &str,
    topics: &[String],
    partitions: &BTreeMap<String, i32>,
) -> Result<u64, AdminError> {
    let (config, group, topics, partitions) = (
        conn.config(),
        group.to_owned(),
        topics.to_vec(),
        partitions.clone(),
    );
    tokio::task::spawn_blocking(move || {
        let refs: Vec<&str> = topics.iter().map(String::as_str).collect();
        lag_blocking(&config, &group, &refs, &partitions)
    })
    .await?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refused_authentication_is_recognised_and_reads_the_same_each_time() {
        let ctx = ConnectionContext::default();
        assert!(ctx.last_failure().is_none());
        let e = ctx.failed("metadata from b:1".into(), KafkaError::Canceled);
        assert!(matches!(e, AdminError::Kafka { ref what, .. } if what == "metadata from b:1"));

        ctx.log(
            RDKafkaLogLevel::Error,
            "FAIL",
            "sasl_ssl://b:1/bootstrap: SSL handshake failed: certificate verify failed (after 12ms in state SSL_HANDSHAKE)",
        );
        assert!(!ctx.authentication_failed());
        let e = ctx.failed("metadata from b:1".into(), KafkaError::Canceled);
        assert!(!e.is_authentication());
        assert!(
            e.to_string().contains("(last connection failure: sasl_ssl://b:1/bootstrap: SSL handshake failed: certificate verify failed)"),
            "{e}"
        );

        for after in [
            "3ms in state AUTH_REQ",
            "7ms in state AUTH_REQ, 2 identical error(s) suppressed",
        ] {
            ctx.log(
                RDKafkaLogLevel::Error,
                "FAIL",
                &format!("[thrd:sasl_ssl://b:1/bootstrap]: sasl_ssl://b:1/bootstrap: SASL authentication error: Authentication failed during authentication due to invalid credentials with SASL mechanism SCRAM-SHA-512 (after {after})"),
            );
            assert!(ctx.authentication_failed());
            let e = ctx.failed("metadata from b:1".into(), KafkaError::Canceled);
            assert!(e.is_authentication());
            assert_eq!(
                e.to_string(),
                "metadata from b:1: SASL authentication failed: sasl_ssl://b:1/bootstrap: SASL authentication error: Authentication failed during authentication due to invalid credentials with SASL mechanism SCRAM-SHA-512"
            );
        }
        // Informational lines are not failures.
        let quiet = ConnectionContext::default();
        quiet.log(RDKafkaLogLevel::Info, "CONNECT", "connecting");
        quiet.log(
            RDKafkaLogLevel::Warning,
            "CONFWARN",
            "a configuration warning",
        );
        assert!(quiet.last_failure().is_none());
    }

    fn plan(allow_increase: bool) -> TopicPlan {
        TopicPlan {
            topics: vec!["a".into(), "b".into(), "c".into()],
            partitions: 100,
            replication_factor: 1,
            configs: BTreeMap::new(),
            allow_increase,
            co_partitioned: vec!["a".into(), "b".into()],
        }
    }

    #[test]
    fn creates_missing_topics() {
        let existing = BTreeMap::from([("a".to_owned(), 100)]);
        let (create, raise, outcome) = plan_topics(&plan(false), &existing);
        assert_eq!(create, vec!["b".to_owned(), "c".to_owned()]);
        assert!(raise.is_empty());
        assert_eq!(outcome, TopicCheck::Ready);
    }

    #[test]
    fn refuses_decreases_and_holds_increases() {
        let existing = BTreeMap::from([
            ("a".to_owned(), 200),
            ("b".to_owned(), 50),
            ("c".to_owned(), 100),
        ]);
        let (_, _, outcome) = plan_topics(&plan(false), &existing);
        assert!(matches!(outcome, TopicCheck::DecreaseRefused(m) if m.contains("a has 200")));
        let existing = BTreeMap::from([
            ("a".to_owned(), 100),
            ("b".to_owned(), 50),
            ("c".to_owned(), 100),
        ]);
        let (_, raise, outcome) = plan_topics(&plan(false), &existing);
        assert!(raise.is_empty());
        assert!(matches!(outcome, TopicCheck::IncreasePending(_)));
        let (_, raise, outcome) = plan_topics(&plan(true), &existing);
        assert_eq!(raise, vec![("b".to_owned(), 50, 100)]);
        assert_eq!(outcome, TopicCheck::Ready);
    }

    fn cfg(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn config_changes_keep_other_overrides_and_skip_matching_topics() {
        let desired = BTreeMap::from([
            ("a".to_owned(), cfg(&[("retention.ms", "1000")])),
            ("b".to_owned(), cfg(&[("retention.ms", "-1")])),
            ("c".to_owned(), cfg(&[("cleanup.policy", "compact")])),
        ]);
        let current = BTreeMap::from([
            (
                "a".to_owned(),
                TopicConfig {
                    effective: cfg(&[
                        ("retention.ms", "604800000"),
                        ("max.message.bytes", "2000000"),
                    ]),
                    overrides: cfg(&[("max.message.bytes", "2000000")]),
                },
            ),
            (
                "b".to_owned(),
                TopicConfig {
                    effective: cfg(&[("retention.ms", "-1")]),
                    overrides: cfg(&[("retention.ms", "-1")]),
                },
            ),
        ]);
        let changes = plan_config_changes(&desired, &current);
        assert_eq!(
            changes,
            vec![ConfigChange {
                topic: "a".into(),
                changed: vec!["retention.ms".into()],
                set: cfg(&[("max.message.bytes", "2000000"), ("retention.ms", "1000")]),
            }],
            "b already matches; c is not described (does not exist yet)"
        );
    }

    proptest::proptest! {
        /// After writing each change's `set`, every desired key has its value and every other
        /// override is kept; a topic that already matches is never altered.
        #[test]
        fn merged_set_reaches_the_plan_and_keeps_foreign_overrides(
            want in proptest::collection::btree_map("[a-d]", "[0-2]", 0..4),
            overrides in proptest::collection::btree_map("[a-f]", "[0-2]", 0..6),
            defaults in proptest::collection::btree_map("[a-f]", "[0-2]", 0..6),
        ) {
            let mut effective = defaults.clone();
            effective.extend(overrides.clone());
            let current = BTreeMap::from([("t".to_owned(), TopicConfig { effective: effective.clone(), overrides: overrides.clone() })]);
            let desired = BTreeMap::from([("t".to_owned(), want.clone())]);
            let changes = plan_config_changes(&desired, &current);
            let matches = want.iter().all(|(k, v)| effective.get(k) == Some(v));
            proptest::prop_assert_eq!(changes.is_empty(), matches);
            if let Some(c) = changes.first() {
                for (k, v) in &want {
                    proptest::prop_assert_eq!(c.set.get(k), Some(v));
                }
                for (k, v) in &overrides {
                    if !want.contains_key(k) {
                        proptest::prop_assert_eq!(c.set.get(k), Some(v));
                    }
                }
            }
        }
    }

    #[test]
    fn co_partitioning() {
        let ok = BTreeMap::from([
            ("a".to_owned(), 100),
            ("b".to_owned(), 100),
            ("c".to_owned(), 7),
        ]);
        assert_eq!(check_co_partitioning(&plan(false), &ok), None);
        let bad = BTreeMap::from([("a".to_owned(), 100), ("b".to_owned(), 10)]);
        assert!(
            check_co_partitioning(&plan(false), &bad).is_some_and(|m| m.contains("a=100, b=10"))
        );
    }
}
