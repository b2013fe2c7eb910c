//! The `spec.topics` part of the CRD: topic names, partitions, retention and per-topic
//! overrides.

use std::collections::BTreeMap;

use kube::KubeSchema;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::cel;
use crate::topics::{TopicNames, TopicRole};

/// What happens to the topics when the SensorPipeline is deleted.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema, Default)]
pub enum DeletionPolicy {
    /// Keep the topics and their data (default).
    #[default]
    Retain,
    /// Delete the topics the operator created for this pipeline (`status.createdTopics`);
    /// topics that existed before the pipeline are kept.
    Delete,
}

/// Topic names and settings. Unset names default to `<pipeline>.<suffix>` with the suffixes
/// `sx sy sz fa fi fd predictions dead-letter late` ([`TopicRole`]).
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct TopicsSpec {
    /// Raw SX readings (join input); default `<pipeline>.sx`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 249),
        regex(pattern = r"^[a-zA-Z0-9._-]{1,249}$")
    )]
    pub sx: Option<String>,
    /// Raw SY readings (join input); default `<pipeline>.sy`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 249),
        regex(pattern = r"^[a-zA-Z0-9._-]{1,249}$")
    )]
    pub sy: Option<String>,
    /// Raw SZ readings (window input); default `<pipeline>.sz`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 249),
        regex(pattern = r"^[a-zA-Z0-9._-]{1,249}$")
    )]
    pub sz: Option<String>,
    /// FA window features (window output, join input); default `<pipeline>.fa`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 249),
        regex(pattern = r"^[a-zA-Z0-9._-]{1,249}$")
    )]
    pub fa: Option<String>,
    /// FI window features (window output, join input); default `<pipeline>.fi`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 249),
        regex(pattern = r"^[a-zA-Z0-9._-]{1,249}$")
    )]
    pub fi: Option<String>,
    /// FD window features (window output, join input); default `<pipeline>.fd`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 249),
        regex(pattern = r"^[a-zA-Z0-9._-]{1,249}$")
    )]
    pub fd: Option<String>,
    /// Predictions (join output); default `<pipeline>.predictions`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 249),
        regex(pattern = r"^[a-zA-Z0-9._-]{1,249}$")
    )]
    pub predictions: Option<String>,
    /// Dead-letter topic for records that cannot be parsed; default `<pipeline>.dead-letter`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 249),
        regex(pattern = r"^[a-zA-Z0-9._-]{1,249}$")
    )]
    pub dead_letter: Option<String>,
    /// Records that arrived after their window closed; default `<pipeline>.late`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 249),
        regex(pattern = r"^[a-zA-Z0-9._-]{1,249}$")
    )]
    pub late: Option<String>,
    /// Partitions of every topic (default 100). Lowering it on existing topics is refused.
    #[serde(default = "default_partitions")]
    #[schemars(range(min = 1, max = 10000))]
    #[x_kube(validation = Rule::new(cel::PARTITIONS_NEVER_DECREASE).message(cel::PARTITIONS_NEVER_DECREASE_MSG))]
    pub partitions: i32,
    /// Set to true to confirm an increase of `partitions` on existing topics. Increasing breaks
    /// the key → partition mapping of windowed state, so it is held back (condition
    /// `TopicsReady=False`, reason `PartitionIncreasePending`) until confirmed. Default false.
    #[serde(default)]
    pub allow_partition_increase: bool,
    /// Replication factor of created topics (default 1).
    #[serde(default = "default_replication")]
    #[schemars(range(min = 1, max = 32))]
    pub replication_factor: i32,
    /// `retention.ms` of every topic, ms; -1 keeps records forever. Unset: the broker's
    /// default (`log.retention.*`, Kafka's own default 7 days). Set on creation and applied
    /// to existing topics (condition `TopicConfigApplied`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = -1))]
    pub retention_ms: Option<i64>,
    /// Extra topic configuration of every topic (for example `cleanup.policy`,
    /// `min.insync.replicas`), set on creation and applied to existing topics (condition
    /// `TopicConfigApplied`). Keys removed from the spec are left as they are on the broker.
    /// Default: none (broker defaults).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub config: BTreeMap<String, String>,
    /// Per-topic settings of the output topics `predictions`, `deadLetter` and `late`, on top
    /// of `retentionMs` and `config` (a key set here wins for that topic). Default: none.
    #[serde(default, skip_serializing_if = "TopicOverrides::is_empty")]
    pub overrides: TopicOverrides,
    /// `Retain` (default) keeps topics when the pipeline is deleted; `Delete` removes the ones
    /// the operator created (`status.createdTopics`).
    #[serde(default)]
    pub deletion_policy: DeletionPolicy,
}

impl Default for TopicsSpec {
    fn default() -> Self {
        Self {
            sx: None,
            sy: None,
            sz: None,
            fa: None,
            fi: None,
            fd: None,
            predictions: None,
            dead_letter: None,
            late: None,
            partitions: default_partitions(),
            allow_partition_increase: false,
            replication_factor: default_replication(),
            retention_ms: None,
            config: BTreeMap::new(),
            overrides: TopicOverrides::default(),
            deletion_policy: DeletionPolicy::Retain,
        }
    }
}

impl TopicsSpec {
    /// The explicitly configured topic name of `role`, if any.
    pub fn explicit(&self, role: TopicRole) -> Option<&str> {
        match role {
            TopicRole::Sx => &self.sx,
            TopicRole::Sy => &self.sy,
            TopicRole::Sz => &self.sz,
            TopicRole::Fa => &self.fa,
            TopicRole::Fi => &self.fi,
            TopicRole::Fd => &self.fd,
            TopicRole::Predictions => &self.predictions,
            TopicRole::DeadLetter => &self.dead_letter,
            TopicRole::Late => &self.late,
        }
        .as_deref()
    }
}

/// Per-topic settings of the output topics.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TopicOverrides {
    /// The predictions topic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub predictions: Option<TopicOverride>,
    /// The dead-letter topic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dead_letter: Option<TopicOverride>,
    /// The late topic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub late: Option<TopicOverride>,
}

impl TopicOverrides {
    /// Whether no topic has an override.
    pub fn is_empty(&self) -> bool {
        self.predictions.is_none() && self.dead_letter.is_none() && self.late.is_none()
    }

    /// The override of `role`, if any (only the output roles have one).
    pub fn get(&self, role: TopicRole) -> Option<&TopicOverride> {
        match role {
            TopicRole::Predictions => self.predictions.as_ref(),
            TopicRole::DeadLetter => self.dead_letter.as_ref(),
            TopicRole::Late => self.late.as_ref(),
            _ => None,
        }
    }
}

/// Settings of one topic, on top of `topics.retentionMs` and `topics.config`.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TopicOverride {
    /// `retention.ms` of this topic, ms; -1 keeps records forever. Unset: `topics.retentionMs`
    /// (or the broker default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = -1))]
    pub retention_ms: Option<i64>,
    /// Topic configuration of this topic; a key here wins over `topics.config`. Default: none.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub config: BTreeMap<String, String>,
}

fn default_partitions() -> i32 {
    100
}

fn default_replication() -> i32 {
    1
}

/// The names a pipeline's topics get from its spec (here, beside [`TopicsSpec`], so the topic
/// roles do not depend on the CRD types).
impl TopicNames {
    /// The names of pipeline `pipeline`: the explicit name of `spec.topics.<role>` where set,
    /// else `<pipeline>.<role>` (for example `demo.dead-letter`).
    pub fn for_pipeline(pipeline: &str, spec: &TopicsSpec) -> Self {
        Self::from_fn(|r| {
            spec.explicit(r)
                .map_or_else(|| format!("{pipeline}.{r}"), str::to_owned)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pipeline_names_default_to_name_dot_role_and_explicit_names_win() {
        let spec = TopicsSpec {
            fa: Some("features-a".into()),
            ..Default::default()
        };
        let t = TopicNames::for_pipeline("demo", &spec);
        assert_eq!(t.dead_letter, "demo.dead-letter");
        assert_eq!(t.fa, "features-a");
        assert_eq!(
            t.join_inputs(),
            ["demo.sx", "demo.sy", "features-a", "demo.fi", "demo.fd"]
        );
        assert_eq!(t.role_of("demo.late"), Some(TopicRole::Late));
        let d = TopicNames::default();
        assert_eq!(d.all()[0], "SX");
        assert_eq!(d.dead_letter, "dead-letter");
    }
}
