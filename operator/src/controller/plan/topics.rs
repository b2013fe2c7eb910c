//! The topic plan, pure: the pipeline's topics with their partitions, configs and
//! co-partitioned inputs ([`topics`]), each planner-scaled stage's consumer group and inputs
//! ([`stage_inputs`]), and which topics a deletion may remove ([`deletable_topics`]).

use std::collections::{BTreeMap, BTreeSet};

use crate::controller::build::Stage;
use crate::controller::validate::Validated;
use crate::crd::TopicManagement;
use sensorflow_kafka::{TopicConfigs, TopicPlan};

/// The configuration of each topic ([`sensorflow_kafka::topic_configs`]): `topics.config`
/// with `topics.retentionMs` as `retention.ms` on every topic, then the topic's own
/// `topics.overrides` entry on top (its `config`, then its `retentionMs`). The dead-letter and
/// late topics, which carry whole input records, get `max.message.bytes` = the inputs' limit +
/// 64 KiB for the dead-letter headers where their override does not set it: in `set` when
/// `topics.config` sets the inputs' limit, else Kafka's default + 64 KiB in `on_create` (only
/// on the topics the operator creates). With `window.time: ProcessingTime` the SZ topic gets
/// `message.timestamp.type=LogAppendTime` (the broker's clock stamps each reading) unless its
/// override sets the type. Keyed by topic name; a topic with nothing configured maps to an
/// empty map in `set`.
pub fn topic_configs(v: &Validated) -> TopicConfigs {
    let t = &v.spec.topics;
    let mut common = t.config.clone();
    if let Some(r) = t.retention_ms {
        common.insert("retention.ms".into(), r.to_string());
    }
    let processing_time = v.spec.window.time == sensorflow_api::WindowTime::ProcessingTime;
    sensorflow_kafka::topic_configs(&v.topics, &common, |role| {
        let mut c = BTreeMap::new();
        if processing_time && role == sensorflow_api::TopicRole::Sz {
            c.insert("message.timestamp.type".into(), "LogAppendTime".into());
        }
        if let Some(o) = t.overrides.get(role) {
            c.extend(o.config.clone());
            if let Some(r) = o.retention_ms {
                c.insert("retention.ms".into(), r.to_string());
            }
        }
        c
    })
}

/// The topics the spec asks for: the nine names, partitions, replication, each topic's
/// configuration ([`topic_configs`]), whether a raise is confirmed, the co-partitioned join
/// inputs, and who owns what ([`crate::crd::TopicManagement`] per role): `VerifyOnly` topics
/// are neither creatable nor owned; `Create` topics are creatable and owned once this
/// pipeline created them (`created`, from `status.createdTopics`); `Own` topics are both.
pub fn topics(v: &Validated, created: &[String]) -> TopicPlan {
    let t = &v.spec.topics;
    let configs = topic_configs(v);
    let mut creatable = BTreeSet::new();
    let mut owned = BTreeSet::new();
    for (role, name) in v.topics.iter() {
        match t.management(role) {
            TopicManagement::VerifyOnly => {}
            TopicManagement::Create => {
                creatable.insert(name.to_owned());
                if created.iter().any(|c| c == name) {
                    owned.insert(name.to_owned());
                }
            }
            TopicManagement::Own => {
                creatable.insert(name.to_owned());
                owned.insert(name.to_owned());
            }
        }
    }
    TopicPlan {
        topics: v.topics.all().map(str::to_owned).to_vec(),
        partitions: t.partitions,
        replication_factor: t.replication_factor,
        configs: configs.set,
        on_create: configs.on_create,
        allow_increase: t.allow_partition_increase,
        co_partitioned: v.topics.join_inputs().map(str::to_owned).to_vec(),
        creatable,
        owned,
    }
}

/// The topics a deletion with `deletionPolicy: Delete` may remove: the ones this pipeline
/// created (`status.createdTopics`) that it still does not only read, and the ones it owns
/// (`Own`) under their current names. Never a `VerifyOnly` topic.
pub fn owned_for_deletion(v: &Validated, created: &[String]) -> Vec<String> {
    let t = &v.spec.topics;
    let mut out: BTreeSet<String> = created.iter().cloned().collect();
    for (role, name) in v.topics.iter() {
        match t.management(role) {
            TopicManagement::VerifyOnly => {
                out.remove(name);
            }
            TopicManagement::Own => {
                out.insert(name.to_owned());
            }
            TopicManagement::Create => {}
        }
    }
    out.into_iter().collect()
}

/// The planner-scaled stages with their consumer group and input topics (lag is summed over
/// these).
pub fn stage_inputs(v: &Validated) -> [(Stage, String, Vec<String>); 2] {
    [
        (
            Stage::Window,
            v.window_group(),
            v.topics.window_inputs().map(str::to_owned).to_vec(),
        ),
        (
            Stage::Join,
            v.join_group(),
            v.topics.join_inputs().map(str::to_owned).to_vec(),
        ),
    ]
}

/// Which of the topics this pipeline created may be deleted, and which stay because another
/// pipeline (on the same bootstrap servers) names them now.
pub fn deletable_topics(
    created: &[String],
    in_use_elsewhere: &[String],
) -> (Vec<String>, Vec<String>) {
    created
        .iter()
        .cloned()
        .partition(|t| !in_use_elsewhere.contains(t))
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::controller::validate::{Naming, tests::spec, validate};

    #[test]
    fn topic_plan_carries_retention_and_the_join_inputs() {
        let mut s = spec();
        s.topics.retention_ms = Some(-1);
        s.topics
            .config
            .insert("cleanup.policy".into(), "delete".into());
        s.topics.overrides.dead_letter = Some(crate::crd::TopicOverride {
            retention_ms: Some(86_400_000),
            config: BTreeMap::from([("cleanup.policy".to_owned(), "compact".to_owned())]),
        });
        s.topics.overrides.late = Some(crate::crd::TopicOverride {
            retention_ms: None,
            config: BTreeMap::from([("max.message.bytes".to_owned(), "2000000".to_owned())]),
        });
        let v = validate("p", &Naming::legacy("p"), &s).expect("valid");
        let plan = topics(&v, &[]);
        assert_eq!(plan.topics.len(), 9);
        assert_eq!(plan.configs.len(), 9);
        assert_eq!(plan.configs["p.sz"]["retention.ms"], "-1");
        assert_eq!(plan.configs["p.sz"]["cleanup.policy"], "delete");
        let dlq = &plan.configs["p.dead-letter"];
        assert_eq!(dlq["retention.ms"], "86400000");
        assert_eq!(dlq["cleanup.policy"], "compact");
        let late = &plan.configs["p.late"];
        assert_eq!(late["retention.ms"], "-1");
        assert_eq!(late["max.message.bytes"], "2000000");
        assert_eq!(plan.configs["p.predictions"].len(), 2);
        // The dead-letter topic's carrier limit only on creation (the late one has its own).
        assert_eq!(
            plan.on_create,
            BTreeMap::from([(
                "p.dead-letter".to_owned(),
                BTreeMap::from([("max.message.bytes".to_owned(), "1114124".to_owned())])
            )])
        );
        assert!(!dlq.contains_key("max.message.bytes"));
        assert_eq!(
            plan.co_partitioned,
            ["p.sx", "p.sy", "p.fa", "p.fi", "p.fd"]
        );
        assert_eq!(plan.partitions, 100);
    }

    #[test]
    fn only_topics_not_named_by_another_pipeline_are_deleted() {
        let created = vec!["p.fa".to_owned(), "p.sx".to_owned(), "shared".to_owned()];
        let (delete, keep) = deletable_topics(&created, &["shared".to_owned(), "q.sx".to_owned()]);
        assert_eq!(delete, ["p.fa", "p.sx"]);
        assert_eq!(keep, ["shared"]);
        assert_eq!(deletable_topics(&[], &[]), (vec![], vec![]));
    }
}
