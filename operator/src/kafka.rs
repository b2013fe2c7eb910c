//! Kafka side of the reconcile: topics (AdminClient) and consumer lag (committed offsets vs high
//! watermarks).
//!
//! ```text
//!   ensure_topics: Metadata ──▶ missing? CreateTopics ──▶ fewer partitions than spec? warn/raise
//!                                                     └─▶ more than spec? refuse (condition)
//!                 ──▶ Metadata again (verify) ──▶ join inputs co-partitioned?
//!   stage_lag:     OffsetFetch(group) + ListOffsets(latest, earliest) ──▶ Σ max(0, high − committed)
//! ```
//!
//! rdkafka's metadata and offset calls block, so they run on `spawn_blocking`.

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewPartitions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};

use crate::conditions::TopicsOutcome;

/// Timeout of one broker request.
const TIMEOUT: Duration = Duration::from_secs(10);

/// Errors talking to the broker.
#[derive(Debug, thiserror::Error)]
pub enum KafkaError {
    /// A client could not be created from the configuration.
    #[error("kafka client config for {bootstrap}: {source}")]
    Config {
        /// Bootstrap servers.
        bootstrap: String,
        /// Cause.
        source: rdkafka::error::KafkaError,
    },
    /// Fetching metadata failed (broker unreachable?).
    #[error("metadata from {bootstrap}: {source}")]
    Metadata {
        /// Bootstrap servers.
        bootstrap: String,
        /// Cause.
        source: rdkafka::error::KafkaError,
    },
    /// An admin request failed as a whole.
    #[error("{op} on {bootstrap}: {source}")]
    Admin {
        /// CreateTopics, CreatePartitions or DeleteTopics.
        op: &'static str,
        /// Bootstrap servers.
        bootstrap: String,
        /// Cause.
        source: rdkafka::error::KafkaError,
    },
    /// The broker refused an operation on one topic.
    #[error("{op} {topic}: {code}")]
    Topic {
        /// CreateTopics, CreatePartitions or DeleteTopics.
        op: &'static str,
        /// Topic.
        topic: String,
        /// Broker error code.
        code: RDKafkaErrorCode,
    },
    /// Reading committed offsets or watermarks failed.
    #[error("offsets of group {group}: {source}")]
    Offsets {
        /// Consumer group.
        group: String,
        /// Cause.
        source: rdkafka::error::KafkaError,
    },
    /// The blocking task panicked or was cancelled.
    #[error("blocking kafka task: {0}")]
    Join(#[from] tokio::task::JoinError),
}

/// Connection settings for the operator's own clients (credentials already read from Secrets).
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
    fn config(&self) -> ClientConfig {
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

    fn admin(&self) -> Result<AdminClient<DefaultClientContext>, KafkaError> {
        self.config().create().map_err(|source| KafkaError::Config {
            bootstrap: self.bootstrap.clone(),
            source,
        })
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
    /// Topic configs of created topics.
    pub config: BTreeMap<String, String>,
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
    /// Overall outcome for the `TopicsReady` condition.
    pub outcome: TopicsOutcome,
}

/// Partition counts of `topics` (absent when the topic does not exist).
async fn partition_counts(
    conn: &Connection,
    topics: &[String],
) -> Result<BTreeMap<String, i32>, KafkaError> {
    let conn = conn.clone();
    let topics = topics.to_vec();
    tokio::task::spawn_blocking(move || {
        let admin = conn.admin()?;
        let md = admin
            .inner()
            .fetch_metadata(None, TIMEOUT)
            .map_err(|source| KafkaError::Metadata {
                bootstrap: conn.bootstrap.clone(),
                source,
            })?;
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
) -> (Vec<String>, Vec<(String, i32, i32)>, TopicsOutcome) {
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
        TopicsOutcome::DecreaseRefused(decreases.join("; "))
    } else if !pending.is_empty() {
        TopicsOutcome::IncreasePending(format!(
            "raising partitions breaks the key → partition mapping of windowed state; set topics.allowPartitionIncrease=true to confirm ({})",
            pending.join(", ")
        ))
    } else {
        TopicsOutcome::Ready
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

/// Creates missing topics, raises partition counts when confirmed, and verifies the result on
/// the broker.
///
/// # Errors
/// [`KafkaError`] when the broker cannot be reached or refuses a CreateTopics; a partition
/// decrease, an unconfirmed or refused increase, or a co-partitioning mismatch is reported in
/// the outcome instead.
pub async fn ensure_topics(conn: &Connection, plan: &TopicPlan) -> Result<TopicReport, KafkaError> {
    let existing = partition_counts(conn, &plan.topics).await?;
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
                for (k, v) in &plan.config {
                    nt = nt.set(k, v);
                }
                nt
            })
            .collect();
        let results = admin
            .create_topics(new.iter(), &opts)
            .await
            .map_err(|source| KafkaError::Admin {
                op: "CreateTopics",
                bootstrap: conn.bootstrap.clone(),
                source,
            })?;
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
            outcome = TopicsOutcome::BrokerUnavailable(format!(
                "CreateTopics refused: {}",
                refused.join(", ")
            ));
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
            Some(m) => outcome = TopicsOutcome::IncreaseFailed(m),
            None => increased = raise,
        }
    }
    // Verify on the broker rather than trusting the responses.
    let counts = if create.is_empty() && increased.is_empty() {
        existing
    } else {
        partition_counts(conn, &plan.topics).await?
    };
    if outcome == TopicsOutcome::Ready {
        let missing: Vec<&String> = plan
            .topics
            .iter()
            .filter(|t| !counts.contains_key(*t))
            .collect();
        if !missing.is_empty() {
            outcome = TopicsOutcome::BrokerUnavailable(format!(
                "topics not visible after creation: {missing:?}"
            ));
        } else if let Some(m) = check_co_partitioning(plan, &counts) {
            outcome = TopicsOutcome::NotCoPartitioned(m);
        }
    }
    Ok(TopicReport {
        partitions: counts,
        created,
        increased,
        outcome,
    })
}

/// Deletes `topics`; topics that do not exist are ignored.
///
/// # Errors
/// [`KafkaError`] when the broker cannot be reached or refuses a deletion.
pub async fn delete_topics(
    conn: &Connection,
    topics: &[String],
) -> Result<Vec<String>, KafkaError> {
    let existing = partition_counts(conn, topics).await?;
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
        .map_err(|source| KafkaError::Admin {
            op: "DeleteTopics",
            bootstrap: conn.bootstrap.clone(),
            source,
        })?;
    let mut deleted = Vec::new();
    for r in results {
        match r {
            Ok(t) => deleted.push(t),
            Err((_, RDKafkaErrorCode::UnknownTopicOrPartition)) => {}
            Err((topic, code)) => {
                return Err(KafkaError::Topic {
                    op: "DeleteTopics",
                    topic,
                    code,
                });
            }
        }
    }
    Ok(deleted)
}

/// Consumer lag of `group` summed over every partition of `topics` (messages).
///
/// Per partition: `high − committed`, or `high − low` when the group has no committed offset
/// (the processors start from the earliest offset), never negative.
///
/// # Errors
/// [`KafkaError`] when the broker cannot be reached or the offsets cannot be read.
pub async fn stage_lag(
    conn: &Connection,
    group: &str,
    topics: &[String],
    partitions: &BTreeMap<String, i32>,
) -> Result<u64, KafkaError> {
    let conn = conn.clone();
    let group = group.to_owned();
    let mut tpl = TopicPartitionList::new();
    for t in topics {
        for p in 0..partitions.get(t).copied().unwrap_or(0) {
            tpl.add_partition(t, p);
        }
    }
    tokio::task::spawn_blocking(move || {
        let err = |source| KafkaError::Offsets {
            group: group.clone(),
            source,
        };
        let consumer: BaseConsumer = conn
            .config()
            .set("group.id", &group)
            .set("enable.auto.commit", "false")
            .create()
            .map_err(|source| KafkaError::Config {
                bootstrap: conn.bootstrap.clone(),
                source,
            })?;
        // A broker answers a fresh client's offset queries with retriable errors for a moment
        // (NotLeaderForPartition seen on Apache Kafka under load): a few quick retries before
        // the reconcile gives up on this round's lag.
        let retry = |f: &dyn Fn() -> Result<TopicPartitionList, KafkaError>| {
            let mut last = f();
            for _ in 0..4 {
                if last.is_ok() {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(250));
                last = f();
            }
            last
        };
        let committed = retry(&|| {
            consumer
                .committed_offsets(tpl.clone(), TIMEOUT)
                .map_err(err)
        })?;
        let query = |spec: Offset| -> Result<TopicPartitionList, KafkaError> {
            let mut q = tpl.clone();
            q.set_all_offsets(spec).map_err(err)?;
            consumer.offsets_for_times(q, TIMEOUT).map_err(err)
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
            let from = offset_of(&committed, t, p)
                .or_else(|| offset_of(&low, t, p))
                .unwrap_or(0);
            lag = lag.saturating_add(u64::try_from(hi - from).unwrap_or(0));
        }
        Ok(lag)
    })
    .await?
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(allow_increase: bool) -> TopicPlan {
        TopicPlan {
            topics: vec!["a".into(), "b".into(), "c".into()],
            partitions: 100,
            replication_factor: 1,
            config: BTreeMap::new(),
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
        assert_eq!(outcome, TopicsOutcome::Ready);
    }

    #[test]
    fn refuses_decreases_and_holds_increases() {
        let existing = BTreeMap::from([
            ("a".to_owned(), 200),
            ("b".to_owned(), 50),
            ("c".to_owned(), 100),
        ]);
        let (_, _, outcome) = plan_topics(&plan(false), &existing);
        assert!(matches!(outcome, TopicsOutcome::DecreaseRefused(m) if m.contains("a has 200")));
        let existing = BTreeMap::from([
            ("a".to_owned(), 100),
            ("b".to_owned(), 50),
            ("c".to_owned(), 100),
        ]);
        let (_, raise, outcome) = plan_topics(&plan(false), &existing);
        assert!(raise.is_empty());
        assert!(matches!(outcome, TopicsOutcome::IncreasePending(_)));
        let (_, raise, outcome) = plan_topics(&plan(true), &existing);
        assert_eq!(raise, vec![("b".to_owned(), 50, 100)]);
        assert_eq!(outcome, TopicsOutcome::Ready);
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
