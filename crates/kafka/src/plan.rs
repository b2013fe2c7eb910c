//! Pure topic planning: what to create, raise, refuse or re-configure, from what the broker
//! reported and what the pipeline wants. No I/O; [`crate::admin::ensure_pipeline_topics`] runs it.

use std::collections::BTreeMap;

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

#[cfg(test)]
mod tests {
    use super::*;

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
