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
//!   ensure_topics(_with):   CreateTopics with configs (existing kept) ──▶ wait for metadata
//!                           ──▶ same count? ──▶ existing topics: the same configuration step
//!   lag (one definition):   OffsetFetch(group) + ListOffsets(latest, earliest)
//!                           ──▶ Σ max(0, high − max(committed, low)), low when never committed
//! ```
//!
//! rdkafka's metadata and offset calls block: the async functions run them on
//! `spawn_blocking`; the `*_blocking`-style functions ([`partition_counts`], [`group_lag`],
//! [`message_count`]) are for callers that already are on a blocking thread.

use crate::connection::*;
use crate::error::*;
use crate::limits::{OutputLimits, TopicLimits};
use crate::plan::*;
use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::admin::{
    AdminClient, AdminOptions, AlterConfig, ConfigSource, NewPartitions, NewTopic,
    OwnedResourceSpecifier, ResourceSpecifier, TopicReplication,
};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::metadata::Metadata;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

/// Timeout of one broker request.
const TIMEOUT: Duration = Duration::from_secs(10);

/// Creates `topics` with `partitions` partitions each (replication factor `replication`) and
/// the broker's default topic configuration; existing topics are kept and checked to have that
/// many partitions. [`ensure_topics_with`] sets configuration too.
///
/// # Errors
/// [`AdminError`] when the broker refuses, or an existing topic has another partition count.
pub async fn ensure_topics(
    config: &ClientConfig,
    topics: &[&str],
    partitions: i32,
    replication: i32,
) -> Result<(), AdminError> {
    ensure_topics_with(
        config,
        topics,
        partitions,
        replication,
        &TopicConfigs::default(),
    )
    .await
}

/// [`ensure_topics`] with topic configuration: a created topic gets its
/// [`TopicConfigs::on_create`] entry with its [`TopicConfigs::set`] entry on top; an existing
/// topic whose values differ from its `set` entry is altered (as the operator does,
/// `apply_topic_configs`), its `on_create` entry is not applied.
///
/// # Errors
/// [`AdminError`] when the broker refuses a topic or its configuration, or an existing topic
/// has another partition count.
pub async fn ensure_topics_with(
    config: &ClientConfig,
    topics: &[&str],
    partitions: i32,
    replication: i32,
    configs: &TopicConfigs,
) -> Result<(), AdminError> {
    let admin: AdminClient<DefaultClientContext> = config
        .create()
        .map_err(kafka("creating the admin client"))?;
    let merged: Vec<BTreeMap<String, String>> = topics
        .iter()
        .map(|t| creation_config(&configs.on_create, &configs.set, t))
        .collect();
    let new: Vec<NewTopic<'_>> = topics
        .iter()
        .zip(&merged)
        .map(|(t, c)| {
            c.iter().fold(
                NewTopic::new(t, partitions, TopicReplication::Fixed(replication)),
                |nt, (k, v)| nt.set(k, v),
            )
        })
        .collect();
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let results = admin
        .create_topics(&new, &opts)
        .await
        .map_err(kafka("create_topics"))?;
    let mut existing = BTreeMap::new();
    for r in results {
        match r {
            Ok(t) => tracing::info!(topic = %t, partitions, "topic created"),
            Err((t, RDKafkaErrorCode::TopicAlreadyExists)) => {
                tracing::debug!(topic = %t, "topic exists");
                existing.insert(t, partitions);
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
    let bootstrap = config.get("bootstrap.servers").unwrap_or("?").to_owned();
    match apply_topic_configs(&admin, &bootstrap, &configs.set, &existing).await {
        ConfigCheck::Failed(m) => Err(AdminError::Config(m)),
        ConfigCheck::InSync { altered } => {
            for (topic, keys) in altered {
                tracing::info!(%topic, ?keys, "existing topic's configuration altered");
            }
            Ok(())
        }
        ConfigCheck::NotManaged => Ok(()),
    }
}

/// The configuration a new topic `topic` is created with: its `on_create` entry with its `set`
/// entry on top.
fn creation_config(on_create: &Configs, set: &Configs, topic: &str) -> BTreeMap<String, String> {
    let mut c = on_create.get(topic).cloned().unwrap_or_default();
    c.extend(set.get(topic).cloned().unwrap_or_default());
    c
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

/// The one lag computation ([`group_lag`], [`stage_lag`]): the lag of [`progress_blocking`].
fn lag_blocking(
    config: &ClientConfig,
    group: &str,
    topics: &[&str],
    partitions: &BTreeMap<String, i32>,
) -> Result<u64, AdminError> {
    progress_blocking(config, Some(group), topics, partitions).map(|p| p.lag)
}

/// Where a consumer group stands on a set of topics, summed over their partitions (messages).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StageOffsets {
    /// Sum of the end offsets (high watermarks): every record ever appended, including
    /// transaction markers.
    pub end: u64,
    /// Sum of the group's positions: its committed offset, or the log start offset where it
    /// has none or its commit fell behind retention.
    pub position: u64,
    /// `end - position`, partition by partition (never negative per partition).
    pub lag: u64,
}

/// The group's [`StageOffsets`] on `topics` (`partitions` gives each topic's partition count);
/// with `group` `None` only the end offsets are read (`position` and `lag` are 0). A fresh
/// client's offset queries get retriable errors from a broker for a moment
/// (NotLeaderForPartition seen on Apache Kafka under load), so each query is retried four
/// times, 250 ms apart.
fn progress_blocking(
    config: &ClientConfig,
    group: Option<&str>,
    topics: &[&str],
    partitions: &BTreeMap<String, i32>,
) -> Result<StageOffsets, AdminError> {
    let mut tpl = TopicPartitionList::new();
    for t in topics {
        for p in 0..partitions.get(*t).copied().unwrap_or(0) {
            tpl.add_partition(t, p);
        }
    }
    let label = group.unwrap_or("(none)");
    let mut cfg = config.clone();
    cfg.set("group.id", group.unwrap_or("sensorflow-operator-offsets"))
        .set("enable.auto.commit", "false");
    let consumer: BaseConsumer = cfg
        .create()
        .map_err(kafka(format!("creating a lag client for group {label}")))?;
    let err = || kafka(format!("offsets of group {label}"));
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
    let query = |spec: Offset| -> Result<TopicPartitionList, AdminError> {
        let mut q = tpl.clone();
        q.set_all_offsets(spec).map_err(err())?;
        consumer.offsets_for_times(q, TIMEOUT).map_err(err())
    };
    let high = retry(&|| query(Offset::End))?;
    let offset_of = |list: &TopicPartitionList, t: &str, p: i32| -> Option<i64> {
        list.find_partition(t, p)
            .and_then(|e| e.offset().to_raw())
            .filter(|o| *o >= 0)
    };
    let Some(_) = group else {
        let end = tpl
            .elements()
            .iter()
            .filter_map(|e| offset_of(&high, e.topic(), e.partition()))
            .fold(0u64, |a, o| a.saturating_add(u64::try_from(o).unwrap_or(0)));
        return Ok(StageOffsets {
            end,
            ..Default::default()
        });
    };
    let committed = retry(&|| {
        consumer
            .committed_offsets(tpl.clone(), TIMEOUT)
            .map_err(err())
    })?;
    let low = retry(&|| query(Offset::Beginning))?;
    let mut out = StageOffsets::default();
    for e in tpl.elements() {
        let (t, p) = (e.topic(), e.partition());
        let Some(hi) = offset_of(&high, t, p) else {
            continue;
        };
        let lo = offset_of(&low, t, p).unwrap_or(0);
        let from = offset_of(&committed, t, p)
            .map_or(lo, |c| c.max(lo))
            .min(hi);
        out.end = out.end.saturating_add(u64::try_from(hi).unwrap_or(0));
        out.position = out
            .position
            .saturating_add(u64::try_from(from).unwrap_or(0));
        out.lag = out
            .lag
            .saturating_add(u64::try_from(hi - from).unwrap_or(0));
    }
    Ok(out)
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
        let merged: Vec<BTreeMap<String, String>> = create
            .iter()
            .map(|t| creation_config(&plan.on_create, &plan.configs, t))
            .collect();
        let new: Vec<NewTopic<'_>> = create
            .iter()
            .zip(&merged)
            .map(|(t, c)| {
                c.iter().fold(
                    NewTopic::new(
                        t,
                        plan.partitions,
                        TopicReplication::Fixed(plan.replication_factor),
                    ),
                    |nt, (k, v)| nt.set(k, v),
                )
            })
            .collect();
        let results = admin
            .create_topics(new.iter(), &opts)
            .await
            .map_err(kafka(format!("CreateTopics on {}", conn.bootstrap)))?;
        let (mut refused, mut unauthorized) = (Vec::new(), Vec::new());
        for r in results {
            match r {
                Ok(t) => created.push(t),
                // Someone else (another pipeline, a person, a restart mid-reconcile whose
                // earlier create went through) got there first: not ours to delete later.
                Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((topic, code)) if is_authorization_failure(code) => {
                    unauthorized.push((topic, code));
                }
                Err((topic, code)) => refused.push(format!("{topic}: {code}")),
            }
        }
        // The topics that were created are reported even when others were refused, so the
        // caller records them as this pipeline's.
        if !unauthorized.is_empty() {
            outcome = TopicCheck::NotAuthorized(not_authorized_message(
                "CreateTopics",
                "Create",
                &unauthorized,
            ));
        } else if !refused.is_empty() {
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
                let errs: Vec<(String, RDKafkaErrorCode)> =
                    results.into_iter().filter_map(Result::err).collect();
                if errs.iter().any(|(_, c)| is_authorization_failure(*c)) {
                    outcome = TopicCheck::NotAuthorized(not_authorized_message(
                        "CreatePartitions",
                        "Alter",
                        &errs,
                    ));
                    None
                } else {
                    let refused: Vec<String> = errs
                        .iter()
                        .map(|(t, code)| format!("{t}: {code}"))
                        .collect();
                    (!refused.is_empty())
                        .then(|| format!("CreatePartitions refused: {}", refused.join(", ")))
                }
            }
        };
        match failure {
            Some(m) => outcome = TopicCheck::IncreaseFailed(m),
            None if matches!(outcome, TopicCheck::NotAuthorized(_)) => {}
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
    // Configuration goes only on the topics the pipeline owns (and those it just created):
    // a topic it only reads keeps whatever its owner set.
    let owned_configs: Configs = plan
        .configs
        .iter()
        .filter(|(t, _)| plan.owned.contains(*t) || created.contains(*t))
        .map(|(t, c)| (t.clone(), c.clone()))
        .collect();
    let config = apply_topic_configs(&admin, &conn.bootstrap, &owned_configs, &counts).await;
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

/// [`StageOffsets`] of consumer group `group` on `topics` (`partitions`: each topic's
/// partition count), for lag, position and the end offsets in one read (OffsetFetch and
/// ListOffsets; joins no group).
///
/// # Errors
/// [`AdminError`] when the broker cannot be reached or refuses the offset requests.
pub async fn stage_progress(
    conn: &Connection,
    group: &str,
    topics: &[String],
    partitions: &BTreeMap<String, i32>,
) -> Result<StageOffsets, AdminError> {
    let (config, group, topics, partitions) = (
        conn.config(),
        group.to_owned(),
        topics.to_vec(),
        partitions.clone(),
    );
    tokio::task::spawn_blocking(move || {
        let refs: Vec<&str> = topics.iter().map(String::as_str).collect();
        progress_blocking(&config, Some(&group), &refs, &partitions)
    })
    .await?
}

/// Sum of the end offsets (high watermarks) of `topics` (`partitions`: each topic's partition
/// count): one ListOffsets, no group.
///
/// # Errors
/// [`AdminError`] when the broker cannot be reached or refuses the request.
pub async fn end_offsets(
    conn: &Connection,
    topics: &[String],
    partitions: &BTreeMap<String, i32>,
) -> Result<u64, AdminError> {
    let (config, topics, partitions) = (conn.config(), topics.to_vec(), partitions.clone());
    tokio::task::spawn_blocking(move || {
        let refs: Vec<&str> = topics.iter().map(String::as_str).collect();
        progress_blocking(&config, None, &refs, &partitions).map(|p| p.end)
    })
    .await?
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
    // On KRaft the controller answers AlterConfigs once it committed the change; the broker
    // that serves DescribeConfigs applies it from the metadata log a moment later, so a
    // read-back at once can still show the old value (seen on a loaded 2-core host: an
    // "AlterConfigs did not take effect" for a change that had). Read back for up to 3 s.
    let changed_topics: Vec<String> = changes.iter().map(|c| c.topic.clone()).collect();
    let settle = std::time::Instant::now() + Duration::from_secs(3);
    let (after, still) = loop {
        let after =
            match describe_topic_configs(admin, bootstrap, changed_topics.iter(), &opts).await {
                Ok(c) => c,
                Err(m) => return ConfigCheck::Failed(m),
            };
        let still = plan_config_changes(&desired, &after);
        if still.is_empty() || std::time::Instant::now() >= settle {
            break (after, still);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
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

/// What each of `topics` accepts ([`TopicLimits`]: timestamp bounds, largest batch), from
/// their effective configuration (DescribeConfigs, within 10 s). A processor reads this at
/// start-up for its output topics.
///
/// # Errors
/// [`AdminError::Config`] when DescribeConfigs fails or is refused (for example without
/// `DescribeConfigs` permission on a topic).
pub async fn topic_limits(
    config: &ClientConfig,
    topics: &[&str],
) -> Result<OutputLimits, AdminError> {
    let admin: AdminClient<DefaultClientContext> = config
        .create()
        .map_err(kafka("creating the admin client"))?;
    let bootstrap = config.get("bootstrap.servers").unwrap_or("?").to_owned();
    let names: Vec<String> = topics.iter().map(|t| (*t).to_owned()).collect();
    let opts = AdminOptions::new().request_timeout(Some(TIMEOUT));
    let described = describe_topic_configs(&admin, &bootstrap, names.iter(), &opts)
        .await
        .map_err(AdminError::Config)?;
    Ok(OutputLimits {
        topics: described
            .into_iter()
            .map(|(t, c)| (t, TopicLimits::from_config(&c.effective)))
            .collect(),
    })
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
        // A topic always has configuration entries (every key has a default); none at all is
        // the broker refusing DescribeConfigs (seen on Kafka 4.4 without the ACL: no error
        // code reaches rdkafka 0.39, only an empty list), which must not pass for "no limits".
        if res.entries.is_empty() {
            return Err(format!(
                "DescribeConfigs on {bootstrap}: no configuration returned for topic '{topic}' (not authorized? the principal needs DescribeConfigs on it, implied by AlterConfigs)"
            ));
        }
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
