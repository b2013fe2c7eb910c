//! Topic administration and consumer-group lag, with the Kafka AdminClient and metadata APIs.

use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};
use std::time::Duration;

/// Admin failures.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// The broker call failed.
    #[error("{what}: {source}")]
    Kafka {
        /// What was being done.
        what: String,
        /// Cause.
        source: KafkaError,
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
    /// Creating a topic failed.
    #[error("creating topic {topic} failed: {code:?}")]
    Create {
        /// Topic.
        topic: String,
        /// Broker error code.
        code: RDKafkaErrorCode,
    },
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
            Err((topic, code)) => return Err(AdminError::Create { topic, code }),
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

/// Lag of consumer group `group` over `topics`: Σ (high watermark − committed offset), with
/// partitions the group never committed counted from the low watermark.
///
/// # Errors
/// [`AdminError`] when metadata, watermarks or committed offsets cannot be read.
pub fn group_lag(config: &ClientConfig, group: &str, topics: &[&str]) -> Result<i64, AdminError> {
    let mut cfg = config.clone();
    cfg.set("group.id", group)
        .set("enable.auto.commit", "false");
    let c: BaseConsumer = cfg.create().map_err(kafka("creating a lag client"))?;
    let counts = partition_counts(config, topics)?;
    let mut tpl = TopicPartitionList::new();
    for (t, n) in topics.iter().zip(&counts) {
        for p in 0..*n {
            tpl.add_partition(t, p);
        }
    }
    let committed = c
        .committed_offsets(tpl, Duration::from_secs(10))
        .map_err(kafka(format!("committed offsets of {group}")))?;
    let mut lag = 0;
    for e in committed.elements() {
        let (lo, hi) = c
            .fetch_watermarks(e.topic(), e.partition(), Duration::from_secs(10))
            .map_err(kafka("watermarks"))?;
        let at = match e.offset() {
            Offset::Offset(o) => o.max(lo),
            _ => lo,
        };
        lag += (hi - at).max(0);
    }
    Ok(lag)
}
