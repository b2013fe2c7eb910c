//! Which pipeline may manage which Kafka names, pure: two pipelines on one Kafka cluster that
//! would manage the same topic or use the same consumer group cannot both run (their records
//! would mix, their commits would fight, deleting one would delete the other's data). The
//! earlier one keeps the names; the later one is refused with a condition naming the earlier
//! (as Strimzi's topic operator refuses a second KafkaTopic for one topic).
//!
//! ```text
//!   every SensorPipeline the operator sees ─▶ claims_of() ─▶ Claims { cluster, topics, groups }
//!   this pipeline's Claims + the others' ───▶ conflict()  ─▶ None | Some("… claimed by ns/name")
//! ```
//!
//! A topic is claimed by the pipelines that may create, alter or delete it (`Create`/`Own`);
//! a `VerifyOnly` topic is only read, and any number of pipelines may read one topic.
//! Consumer groups are always claimed. "The same cluster" means the bootstrap lists share a
//! `host:port` (the same cluster reached under two names is not recognised). Only the
//! pipelines this operator watches are seen.

use std::collections::BTreeSet;

use k8s_openapi::jiff::Timestamp;

use crate::controller::validate::{Naming, TopicNames};
use crate::crd::{SensorPipeline, SensorPipelineSpec, TopicManagement};

/// The Kafka names one pipeline manages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claims {
    /// `namespace/name` of the pipeline.
    pub pipeline: String,
    /// Creation time (the earlier pipeline keeps contested names); `None` sorts last.
    pub created: Option<Timestamp>,
    /// The `host:port` entries of `kafka.bootstrapServers`, lower-cased.
    pub cluster: BTreeSet<String>,
    /// Topics it may create, alter or delete (`Create` / `Own`).
    pub topics: BTreeSet<String>,
    /// Consumer groups of its stages (window, join, and sink when it has one).
    pub groups: BTreeSet<String>,
}

impl Claims {
    /// The claims of pipeline `namespace/name` with `spec` and name prefixes `naming`.
    pub fn new(
        namespace: &str,
        name: &str,
        created: Option<Timestamp>,
        spec: &SensorPipelineSpec,
        naming: &Naming,
    ) -> Self {
        let names = TopicNames::with_prefix(&naming.topic_prefix, &spec.topics);
        let topics = names
            .iter()
            .filter(|(role, _)| spec.topics.management(*role) != TopicManagement::VerifyOnly)
            .map(|(_, t)| t.to_owned())
            .collect();
        let g = &naming.group_prefix;
        let mut groups: BTreeSet<String> = [format!("{g}-window"), format!("{g}-join")].into();
        if spec.sink.is_some() {
            groups.insert(format!("{g}-sink"));
        }
        Self {
            pipeline: format!("{namespace}/{name}"),
            created,
            cluster: cluster(spec),
            topics,
            groups,
        }
    }

    /// Whether `self` keeps contested names against `other`: the earlier creation time, then
    /// the smaller `namespace/name` (a total order, so exactly one of two pipelines wins).
    fn precedes(&self, other: &Claims) -> bool {
        match (self.created, other.created) {
            (Some(a), Some(b)) if a != b => a < b,
            (Some(_), None) => true,
            (None, Some(_)) => false,
            _ => self.pipeline < other.pipeline,
        }
    }
}

/// The `host:port` entries of `kafka.bootstrapServers`, lower-cased: two pipelines whose sets
/// meet are on the same Kafka cluster.
pub fn cluster(spec: &SensorPipelineSpec) -> BTreeSet<String> {
    spec.kafka
        .bootstrap_servers
        .split(',')
        .map(|s| s.trim().to_ascii_lowercase())
        .filter(|s| !s.is_empty())
        .collect()
}

/// The claims of a SensorPipeline object as the operator sees it (its fixed default names
/// from its status, [`Naming::fixed_defaults`]); `None` without a namespace.
pub fn claims_of(sp: &SensorPipeline) -> Option<Claims> {
    let ns = sp.metadata.namespace.as_deref()?;
    let name = sp.metadata.name.as_deref()?;
    let defaults = Naming::fixed_defaults(ns, name, sp.status.as_ref());
    let naming = Naming::resolve(&sp.spec, &defaults);
    let created = sp.metadata.creation_timestamp.as_ref().map(|t| t.0);
    Some(Claims::new(ns, name, created, &sp.spec, &naming))
}

/// Pure: why `me` must not run next to `others` (on the same cluster, an earlier pipeline
/// claims one of its topics or groups), naming the earliest such pipeline and the shared
/// names; `None` when nothing it claims is taken. `others` may include `me` (skipped by name).
pub fn conflict(me: &Claims, others: &[Claims]) -> Option<String> {
    let mut rivals: Vec<&Claims> = others
        .iter()
        .filter(|o| o.pipeline != me.pipeline)
        .filter(|o| !o.cluster.is_disjoint(&me.cluster))
        .filter(|o| o.precedes(me))
        .filter(|o| !o.topics.is_disjoint(&me.topics) || !o.groups.is_disjoint(&me.groups))
        .collect();
    rivals.sort_by(|a, b| {
        if a.precedes(b) {
            std::cmp::Ordering::Less
        } else {
            std::cmp::Ordering::Greater
        }
    });
    let first = rivals.first()?;
    let topics: Vec<&str> = first
        .topics
        .intersection(&me.topics)
        .map(String::as_str)
        .collect();
    let groups: Vec<&str> = first
        .groups
        .intersection(&me.groups)
        .map(String::as_str)
        .collect();
    let mut shared = Vec::new();
    if !topics.is_empty() {
        shared.push(format!("topics {}", topics.join(", ")));
    }
    if !groups.is_empty() {
        shared.push(format!("consumer groups {}", groups.join(", ")));
    }
    Some(format!(
        "SensorPipeline {} (created earlier) already manages {} on this Kafka cluster; change topics.prefix / the topic names / kafka.groupPrefix, or delete one of the two",
        first.pipeline,
        shared.join(" and ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::validate::tests::spec;
    use proptest::prelude::*;

    fn claims(ns: &str, name: &str, at: i64, spec: &SensorPipelineSpec) -> Claims {
        let naming = Naming::resolve(spec, &Naming::namespaced_defaults(ns, name));
        Claims::new(
            ns,
            name,
            Some(Timestamp::from_second(at).expect("time")),
            spec,
            &naming,
        )
    }

    #[test]
    fn same_name_in_two_namespaces_does_not_conflict() {
        let a = claims("team-a", "demo", 1, &spec());
        let b = claims("team-b", "demo", 2, &spec());
        assert!(a.topics.contains("team-a.demo.sx"));
        assert!(b.groups.contains("team-b.demo-window"));
        assert_eq!(conflict(&b, std::slice::from_ref(&a)), None);
        assert_eq!(conflict(&a, &[b]), None);
    }

    #[test]
    fn the_later_pipeline_is_refused_and_names_the_earlier() {
        let a = claims("team-a", "demo", 1, &spec());
        let mut s = spec();
        s.topics.prefix = Some("team-a.demo.".into());
        let b = claims("team-b", "copy", 2, &s);
        let why = conflict(&b, std::slice::from_ref(&a)).expect("conflict");
        assert!(why.contains("team-a/demo"), "{why}");
        assert!(why.contains("team-a.demo.predictions"), "{why}");
        assert!(!why.contains("consumer groups"), "{why}");
        // The earlier one runs on.
        assert_eq!(conflict(&a, &[b]), None);
        // A shared group alone is a conflict too.
        let mut s = spec();
        s.kafka.group_prefix = Some("team-a.demo".into());
        let c = claims("team-c", "other", 3, &s);
        let why = conflict(&c, &[a]).expect("group conflict");
        assert!(why.contains("consumer groups team-a.demo-join, team-a.demo-window"));
    }

    #[test]
    fn reading_another_pipelines_topic_or_another_cluster_is_no_conflict() {
        let a = claims("team-a", "demo", 1, &spec());
        // Reads team-a's predictions as its (verify-only, named) SX input.
        let mut s = spec();
        s.topics.sx = Some("team-a.demo.predictions".into());
        let b = claims("team-b", "downstream", 2, &s);
        assert!(!b.topics.contains("team-a.demo.predictions"));
        assert_eq!(conflict(&b, std::slice::from_ref(&a)), None);
        // Same names on another cluster.
        let mut s = spec();
        s.topics.prefix = Some("team-a.demo.".into());
        s.kafka.bootstrap_servers = "other-kafka:9092".into();
        let c = claims("team-c", "x", 3, &s);
        assert_eq!(conflict(&c, &[a]), None);
    }

    proptest! {
        /// Of two pipelines claiming the same names exactly one is refused, whatever their
        /// creation times and names.
        #[test]
        fn exactly_one_of_two_rivals_is_refused(
            ta in 0i64..5, tb in 0i64..5, na in "[a-c]{1,2}", nb in "[a-c]{1,2}",
        ) {
            let mut s = spec();
            s.topics.prefix = Some("shared.".into());
            let a = claims("ns-a", &na, ta, &s);
            let b = claims("ns-b", &nb, tb, &s);
            let refused = [conflict(&a, std::slice::from_ref(&b)), conflict(&b, std::slice::from_ref(&a))];
            prop_assert_eq!(refused.iter().filter(|r| r.is_some()).count(), 1);
        }
    }
}
