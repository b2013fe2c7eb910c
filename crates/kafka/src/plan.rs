//! Pure topic planning: what to create, raise, refuse or re-configure, from what the broker
//! reported and what the pipeline wants. No I/O; [`crate::admin::ensure_pipeline_topics`] runs it.

use std::collections::{BTreeMap, BTreeSet};

use sensorflow_api::{TopicNames, TopicRole};

/// Topic configuration by topic name (key → value per topic).
pub type Configs = BTreeMap<String, BTreeMap<String, String>>;

/// The `max.message.bytes` key (a topic's largest record batch, bytes).
pub const MAX_MESSAGE_BYTES: &str = "max.message.bytes";

/// Kafka's default `max.message.bytes` of a topic (the broker's `message.max.bytes`): 1 MiB +
/// 12 bytes of log overhead, 1,048,588 bytes. Apache Kafka's, MSK's and Strimzi's default; the
/// largest input record a stock cluster accepts.
pub const KAFKA_DEFAULT_MAX_MESSAGE_BYTES: i64 = 1_048_588;

/// Room for the headers a dead letter adds to the record it carries (64 KiB): reason, error
/// message, source topic (≤ 249 bytes), partition, offset, timestamp, processor, and the
/// truncation headers. They take a few hundred bytes; the margin is generous because it is a
/// limit, not an allocation.
pub const DEAD_LETTER_HEADER_ROOM: i64 = 65_536;

/// The roles whose topics carry whole input records with headers added (`processors/runtime`
/// `dlq.rs`): the dead-letter and the late topic.
pub const CARRIER_ROLES: [TopicRole; 2] = [TopicRole::DeadLetter, TopicRole::Late];

/// What to configure on a pipeline's topics ([`topic_configs`]).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TopicConfigs {
    /// Set on creation and applied to existing topics whose values differ (the user's
    /// settings, and what follows from them).
    pub set: Configs,
    /// Set only when a topic is created, under [`TopicConfigs::set`] (the project's own
    /// defaults: an existing topic, pre-created by an admin or someone else, keeps its value).
    pub on_create: Configs,
}

/// Pure: the configuration of each of `names`' topics. `common` goes on every topic, `own(role)`
/// on top of it for that role's topic (a key there wins). The topics that carry whole input
/// records ([`CARRIER_ROLES`]) must take a record of the largest size the inputs accept plus
/// its dead-letter headers, so where `own` does not set `max.message.bytes` they get
/// `max.message.bytes` = the inputs' limit + [`DEAD_LETTER_HEADER_ROOM`]:
/// - `common` sets it (the inputs' limit, as a number): that + the room, in
///   [`TopicConfigs::set`];
/// - otherwise [`KAFKA_DEFAULT_MAX_MESSAGE_BYTES`] + the room = 1,114,124 bytes, in
///   [`TopicConfigs::on_create`].
pub fn topic_configs(
    names: &TopicNames,
    common: &BTreeMap<String, String>,
    own: impl Fn(TopicRole) -> BTreeMap<String, String>,
) -> TopicConfigs {
    let mut out = TopicConfigs::default();
    let inputs_limit = common
        .get(MAX_MESSAGE_BYTES)
        .map(|v| v.trim().parse::<i64>());
    for (role, name) in names.iter() {
        let own = own(role);
        let mut c = common.clone();
        if CARRIER_ROLES.contains(&role) && !own.contains_key(MAX_MESSAGE_BYTES) {
            match inputs_limit {
                Some(Ok(n)) => {
                    c.insert(
                        MAX_MESSAGE_BYTES.into(),
                        n.saturating_add(DEAD_LETTER_HEADER_ROOM).to_string(),
                    );
                }
                // Not a number: the user's value stays, for the broker to refuse with its
                // own message.
                Some(Err(_)) => {}
                None => {
                    out.on_create.insert(
                        name.to_owned(),
                        BTreeMap::from([(
                            MAX_MESSAGE_BYTES.to_owned(),
                            (KAFKA_DEFAULT_MAX_MESSAGE_BYTES + DEAD_LETTER_HEADER_ROOM).to_string(),
                        )]),
                    );
                }
            }
        }
        c.extend(own);
        out.set.insert(name.to_owned(), c);
    }
    out
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
    pub configs: Configs,
    /// Topic configuration set only on creation, under `configs` ([`TopicConfigs::on_create`]).
    pub on_create: Configs,
    /// Whether raising the partition count of existing topics is confirmed.
    pub allow_increase: bool,
    /// Topics that must share one partition count (join inputs).
    pub co_partitioned: Vec<String>,
    /// Topics that may be created when missing; any other topic must already exist
    /// ([`TopicCheck::Missing`]).
    pub creatable: BTreeSet<String>,
    /// Existing topics the pipeline owns: their configuration is applied and their partitions
    /// raised. Every other existing topic is only read: its partition count is checked
    /// ([`TopicCheck::NotOwned`] when it differs), nothing on it is changed.
    pub owned: BTreeSet<String>,
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
    /// Topics that must exist (not [`TopicPlan::creatable`]) do not.
    Missing(String),
    /// Topics the pipeline does not own have another partition count than the spec asks;
    /// they are left as they are.
    NotOwned(String),
    /// The broker's authorizer refused a request on the pipeline's topics (the principal lacks
    /// an ACL, see [`crate::acls`]); the message names the operation and the resources.
    NotAuthorized(String),
}

/// Whether a per-resource error code is the authorizer's refusal.
pub fn is_authorization_failure(code: rdkafka::types::RDKafkaErrorCode) -> bool {
    use rdkafka::types::RDKafkaErrorCode as C;
    matches!(
        code,
        C::TopicAuthorizationFailed
            | C::ClusterAuthorizationFailed
            | C::GroupAuthorizationFailed
            | C::TransactionalIdAuthorizationFailed
    )
}

/// The `NotAuthorized` message for `request` refused on `refused` (topic, error code): what
/// was refused and what to grant, each distinct code once and the topics by name only (an
/// Event's note holds at most 1,024 characters).
pub fn not_authorized_message(
    request: &str,
    operation: &str,
    refused: &[(String, rdkafka::types::RDKafkaErrorCode)],
) -> String {
    let mut codes: Vec<String> = refused.iter().map(|(_, c)| format!("{c:?}")).collect();
    codes.dedup();
    let topics: Vec<String> = refused.iter().map(|(t, _)| format!("'{t}'")).collect();
    format!(
        "{request} refused by the authorizer ({}): the principal may not {operation} on Topic {}; grant the pipeline's ACLs (docs/security.md, `sensorflow acls`)",
        codes.join(", "),
        topics.join(", ")
    )
}

/// Pure: decides, from existing partition counts, what to create, what to raise and which
/// outcome to report. Returns (to create, to raise as (topic, from, to), outcome).
pub fn plan_topics(
    plan: &TopicPlan,
    existing: &BTreeMap<String, i32>,
) -> (Vec<String>, Vec<(String, i32, i32)>, TopicCheck) {
    let mut create = Vec::new();
    let mut raise = Vec::new();
    let mut missing = Vec::new();
    let mut not_owned = Vec::new();
    let mut decreases = Vec::new();
    let mut pending = Vec::new();
    for t in &plan.topics {
        match existing.get(t) {
            None if plan.creatable.contains(t) => create.push(t.clone()),
            None => missing.push(t.as_str()),
            Some(&n) if n != plan.partitions && !plan.owned.contains(t) => not_owned.push(format!(
                "{t} has {n} partitions, the spec asks {}",
                plan.partitions
            )),
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
    let outcome = if !missing.is_empty() {
        TopicCheck::Missing(format!(
            "topics that are not this pipeline's to create do not exist: {} (verify-only: create them, or set topics.inputs / topics.outputs to Create)",
            missing.join(", ")
        ))
    } else if !not_owned.is_empty() {
        TopicCheck::NotOwned(format!(
            "{}; the operator changes only topics this pipeline created or owns (topics.inputs / topics.outputs: Own): set topics.partitions to match",
            not_owned.join("; ")
        ))
    } else if !decreases.is_empty() {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(allow_increase: bool) -> TopicPlan {
        TopicPlan {
            topics: vec!["a".into(), "b".into(), "c".into()],
            partitions: 100,
            replication_factor: 1,
            configs: BTreeMap::new(),
            on_create: BTreeMap::new(),
            allow_increase,
            co_partitioned: vec!["a".into(), "b".into()],
            creatable: ["a", "b", "c"].map(String::from).into(),
            owned: ["a", "b", "c"].map(String::from).into(),
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

    #[test]
    fn topics_not_owned_are_never_created_or_changed() {
        // "a" verify-only (an upstream topic), "b" created by another hand, "c" ours.
        let p = TopicPlan {
            creatable: ["b", "c"].map(String::from).into(),
            owned: ["c"].map(String::from).into(),
            ..plan(true)
        };
        let (create, raise, outcome) = plan_topics(&p, &BTreeMap::new());
        assert_eq!(create, ["b", "c"]);
        assert!(raise.is_empty());
        assert!(matches!(outcome, TopicCheck::Missing(m) if m.contains(": a (")));
        // Fewer partitions than asked: only the owned topic is raised; the others are reported.
        let existing = BTreeMap::from([
            ("a".to_owned(), 100),
            ("b".to_owned(), 50),
            ("c".to_owned(), 50),
        ]);
        let (create, raise, outcome) = plan_topics(&p, &existing);
        assert!(create.is_empty());
        assert_eq!(raise, [("c".to_owned(), 50, 100)]);
        assert!(matches!(outcome, TopicCheck::NotOwned(m) if m.starts_with("b has 50")));
        // Matching counts: ready, nothing to do.
        let existing = BTreeMap::from([
            ("a".to_owned(), 100),
            ("b".to_owned(), 100),
            ("c".to_owned(), 100),
        ]);
        assert_eq!(
            plan_topics(&p, &existing),
            (vec![], vec![], TopicCheck::Ready)
        );
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
    fn carriers_take_the_inputs_limit_plus_header_room_and_the_users_keys_win() {
        let names = TopicNames::default();
        let none = |_| BTreeMap::new();
        // Nothing configured: only the carriers get a limit, and only on creation.
        let c = topic_configs(&names, &BTreeMap::new(), none);
        assert_eq!(c.set.len(), 9);
        assert!(c.set.values().all(BTreeMap::is_empty));
        assert_eq!(
            c.on_create,
            BTreeMap::from([
                (
                    "dead-letter".to_owned(),
                    cfg(&[("max.message.bytes", "1114124")])
                ),
                ("late".to_owned(), cfg(&[("max.message.bytes", "1114124")])),
            ])
        );
        // A limit for every topic is the inputs' limit: the carriers get it + the room.
        let common = cfg(&[("retention.ms", "-1"), ("max.message.bytes", "2097152")]);
        let c = topic_configs(&names, &common, none);
        assert!(c.on_create.is_empty());
        assert_eq!(c.set["SX"], common);
        assert_eq!(c.set["late"]["max.message.bytes"], "2162688");
        assert_eq!(c.set["dead-letter"]["retention.ms"], "-1");
        // A topic's own key wins, and its carrier default is not set.
        let own = |r| {
            if r == TopicRole::DeadLetter {
                cfg(&[
                    ("max.message.bytes", "5000000"),
                    ("retention.ms", "3600000"),
                ])
            } else {
                BTreeMap::new()
            }
        };
        let c = topic_configs(&names, &BTreeMap::new(), own);
        assert_eq!(c.set["dead-letter"]["max.message.bytes"], "5000000");
        assert_eq!(c.set["dead-letter"]["retention.ms"], "3600000");
        assert!(!c.on_create.contains_key("dead-letter"));
        assert!(c.on_create.contains_key("late"));
        // Not a number: left for the broker to refuse.
        let c = topic_configs(&names, &cfg(&[("max.message.bytes", "lots")]), none);
        assert_eq!(c.set["dead-letter"]["max.message.bytes"], "lots");
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
