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

/// Who owns a topic: whether the operator may create it, change its configuration and
/// partitions, and delete it: `VerifyOnly`, `Create` or `Own`. Defaults: `topics.outputs`
/// `Create`; `topics.inputs` unset, which makes an input named explicitly `VerifyOnly` (an
/// upstream team's topic) and an input with its default name `Create`.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum TopicManagement {
    /// Never created, altered or deleted: the topic must exist (condition `TopicsReady=False`,
    /// reason `TopicMissing`, until it does) and is only read (metadata, records).
    VerifyOnly,
    /// Created when missing, and then this pipeline's (recorded in `status.createdTopics`):
    /// configuration applied, partitions raised, deleted with `deletionPolicy: Delete`. A topic
    /// that already existed is treated as `VerifyOnly`.
    Create,
    /// Created when missing, and an existing topic is adopted: its configuration is applied,
    /// its partitions raised and, with `deletionPolicy: Delete`, it is deleted with the
    /// pipeline. For topics nobody else uses.
    Own,
}

/// Topic names and settings. Unset names default to `<prefix><suffix>` with the suffixes
/// `sx sy sz fa fi fd predictions dead-letter late` ([`TopicRole`]) and the prefix
/// `<namespace>.<pipeline>.` (see `prefix`).
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct TopicsSpec {
    /// Prefix of the default topic names (`<prefix>sx`, …). Default: `<namespace>.<pipeline>.`,
    /// fixed when the operator first sees the pipeline (`status.defaultNames`; pipelines an
    /// operator before 0.2 created keep `<pipeline>.`), so two pipelines of the same name in
    /// two namespaces never share a topic. Kafka ACLs for a pipeline are prefixed ACLs on it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 200), regex(pattern = r"^[a-zA-Z0-9._-]*$"))]
    pub prefix: Option<String>,
    /// Who owns the input topics `sx`, `sy`, `sz` ([`TopicManagement`]). Unset: an input
    /// named explicitly is `VerifyOnly` (an upstream team's topic: never created, altered or
    /// deleted), an input with its default name is the pipeline's own (`Create`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inputs: Option<TopicManagement>,
    /// Who owns the topics the pipeline writes (`fa`, `fi`, `fd`, `predictions`,
    /// `deadLetter`, `late`): `Create` (default), `Own` or `VerifyOnly`.
    #[serde(default = "default_outputs", skip_serializing_if = "is_create")]
    pub outputs: TopicManagement,
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
            prefix: None,
            inputs: None,
            outputs: TopicManagement::Create,
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
    /// Who owns `role`'s topic: [`TopicsSpec::inputs`] for the inputs (unset: `VerifyOnly` when
    /// the name is explicit, else `Create`), [`TopicsSpec::outputs`] for the rest.
    pub fn management(&self, role: TopicRole) -> TopicManagement {
        if TopicRole::INPUTS.contains(&role) {
            self.inputs.unwrap_or(if self.explicit(role).is_some() {
                TopicManagement::VerifyOnly
            } else {
                TopicManagement::Create
            })
        } else {
            self.outputs
        }
    }

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

fn default_outputs() -> TopicManagement {
    TopicManagement::Create
}

fn is_create(m: &TopicManagement) -> bool {
    *m == TopicManagement::Create
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
    /// The names of a pipeline whose default names start with `prefix` (for example
    /// `team-a.demo.`): the explicit name of `spec.topics.<role>` where set, else
    /// `<prefix><role>` (for example `team-a.demo.dead-letter`).
    pub fn with_prefix(prefix: &str, spec: &TopicsSpec) -> Self {
        Self::from_fn(|r| {
            spec.explicit(r)
                .map_or_else(|| format!("{prefix}{r}"), str::to_owned)
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
        let t = TopicNames::with_prefix("demo.", &spec);
        assert_eq!(t.dead_letter, "demo.dead-letter");
        assert_eq!(t.fa, "features-a");
        assert_eq!(
            t.join_inputs(),
            ["demo.sx", "demo.sy", "features-a", "demo.fi", "demo.fd"]
        );
        assert_eq!(t.role_of("demo.late"), Some(TopicRole::Late));
        assert_eq!(spec.management(TopicRole::Sx), TopicManagement::Create);
        assert_eq!(spec.management(TopicRole::Fa), TopicManagement::Create);
        let upstream = TopicsSpec {
            sx: Some("SX".into()),
            ..Default::default()
        };
        assert_eq!(
            upstream.management(TopicRole::Sx),
            TopicManagement::VerifyOnly
        );
        assert_eq!(upstream.management(TopicRole::Sy), TopicManagement::Create);
        let owned = TopicsSpec {
            inputs: Some(TopicManagement::Own),
            ..upstream
        };
        assert_eq!(owned.management(TopicRole::Sx), TopicManagement::Own);
        let d = TopicNames::default();
        assert_eq!(d.all()[0], "SX");
        assert_eq!(d.dead_letter, "dead-letter");
    }
}
