//! The Kafka ACLs a pipeline's principal needs, on a broker with an authorizer
//! (`StandardAuthorizer` on KRaft, Strimzi's `authorization: simple`, MSK, Confluent).
//!
//! One pure function, [`pipeline_acls`], is the only place the list is spelled out: the
//! `sensorflow acls` command prints it, docs/security.md shows it, and the ACL-only tests grant
//! exactly it to a principal that has no other rights. The operator and the processors of a
//! pipeline use one principal (the pipeline's `kafka.security`), so the list covers both:
//!
//! ```text
//!   Topic            PREFIXED <topicPrefix>   Create, Read, Write, Alter, AlterConfigs, Delete
//!   Group            PREFIXED <groupPrefix>-  Read
//!   TransactionalId  PREFIXED <groupPrefix>-  Write                     (ExactlyOnce only)
//!   Topic            LITERAL  <named input>   Read                      (each one)
//! ```
//!
//! Kafka's implied operations (`AclAuthorizer`/`StandardAuthorizer`: Read, Write, Delete and
//! Alter imply Describe; AlterConfigs implies DescribeConfigs) are not listed again: Describe
//! (metadata, ListOffsets, OffsetFetch of the group for lag) and DescribeConfigs (the operator's
//! topic-config check, the processors' start-up check of their output topics) come with them.
//! No Cluster ACL: topics are created under a Topic `Create` ACL, and an idempotent producer
//! needs only `Write` on a topic since Kafka 3.0 (KIP-679).

use std::fmt;

/// A Kafka resource type an ACL binds to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum ResourceType {
    /// A topic.
    Topic,
    /// A consumer group.
    Group,
    /// A producer's `transactional.id`.
    TransactionalId,
}

impl ResourceType {
    /// Kafka's spelling (`kafka-acls` output, `AclCommand`'s resource flags without `--`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Topic => "topic",
            Self::Group => "group",
            Self::TransactionalId => "transactional-id",
        }
    }
}

/// How an ACL's resource name matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum PatternType {
    /// Exactly the name.
    Literal,
    /// Every name starting with it (KIP-290).
    Prefixed,
}

impl PatternType {
    /// Kafka's spelling (`--resource-pattern-type`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Literal => "literal",
            Self::Prefixed => "prefixed",
        }
    }
}

/// A Kafka ACL operation (the ones a pipeline needs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Operation {
    /// Consume, commit offsets (topic and group), fetch offsets.
    Read,
    /// Produce; on a transactional id: use it.
    Write,
    /// CreateTopics.
    Create,
    /// CreatePartitions.
    Alter,
    /// AlterConfigs / IncrementalAlterConfigs of a topic.
    AlterConfigs,
    /// DeleteTopics.
    Delete,
}

impl Operation {
    /// Kafka's spelling (`--operation`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Read => "Read",
            Self::Write => "Write",
            Self::Create => "Create",
            Self::Alter => "Alter",
            Self::AlterConfigs => "AlterConfigs",
            Self::Delete => "Delete",
        }
    }
}

/// An allow ACL for one resource pattern, from any host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AclBinding {
    /// What kind of resource.
    pub resource: ResourceType,
    /// Literal or prefixed match.
    pub pattern: PatternType,
    /// The resource name or prefix.
    pub name: String,
    /// The operations allowed (each also implies what Kafka implies, see the module docs).
    pub operations: Vec<Operation>,
    /// Who needs it and what for (one line, for people).
    pub why: &'static str,
}

impl AclBinding {
    /// The arguments of Kafka's `AclCommand` (`kafka-acls.sh`) after `--bootstrap-server B`
    /// that add this binding for `principal` (e.g. `User:CN=my-user`, `User:my-user`).
    pub fn acl_command_args(&self, principal: &str) -> Vec<String> {
        let mut a = vec![
            "--add".to_owned(),
            "--allow-principal".to_owned(),
            principal.to_owned(),
        ];
        for op in &self.operations {
            a.push("--operation".to_owned());
            a.push(op.as_str().to_owned());
        }
        a.push(format!("--{}", self.resource.as_str()));
        a.push(self.name.clone());
        a.push("--resource-pattern-type".to_owned());
        a.push(self.pattern.as_str().to_owned());
        a
    }
}

impl fmt::Display for AclBinding {
    /// `topic prefixed 'ns.p.' Create,Read,…`: one line per binding.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ops: Vec<&str> = self.operations.iter().map(|o| o.as_str()).collect();
        write!(
            f,
            "{} {} '{}' {}",
            self.resource.as_str(),
            self.pattern.as_str(),
            self.name,
            ops.join(",")
        )
    }
}

/// What the ACLs of a pipeline depend on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PipelineAclInput {
    /// Prefix of every topic the pipeline owns (its default topic names are
    /// `<topicPrefix><role>`).
    pub topic_prefix: String,
    /// Prefix of the consumer groups (`<groupPrefix>-window`, `-join`, `-sink`) and the
    /// transactional ids (`<groupPrefix>-window-<pod>`, `<groupPrefix>-join-<pod>`); the ACLs
    /// are on `<groupPrefix>-`.
    pub group_prefix: String,
    /// Input topics named explicitly outside the prefix (another team's topics): only read.
    pub named_inputs: Vec<String>,
    /// `deliveryGuarantee: ExactlyOnce`: the processors use transactions.
    pub exactly_once: bool,
}

/// The ACLs a pipeline's principal needs, in a fixed order: owned topics, groups,
/// transactional ids (exactly-once only), then one literal binding per named input topic
/// outside the prefix (duplicates and names under the prefix left out).
pub fn pipeline_acls(input: &PipelineAclInput) -> Vec<AclBinding> {
    use Operation::*;
    let group = format!("{}-", input.group_prefix);
    let mut out = vec![
        AclBinding {
            resource: ResourceType::Topic,
            pattern: PatternType::Prefixed,
            name: input.topic_prefix.clone(),
            operations: vec![Create, Read, Write, Alter, AlterConfigs, Delete],
            why: "operator: CreateTopics (Create), CreatePartitions when allowed (Alter), topic \
                  configuration (AlterConfigs, DescribeConfigs), deletionPolicy Delete (Delete), \
                  metadata and lag (Describe); processors: consume and rebuild (Read), produce \
                  (Write), output-topic limits at start (DescribeConfigs)",
        },
        AclBinding {
            resource: ResourceType::Group,
            pattern: PatternType::Prefixed,
            name: group.clone(),
            operations: vec![Read],
            why: "processors: join the group and commit offsets (Read); operator: committed \
                  offsets for lag (Describe)",
        },
    ];
    if input.exactly_once {
        out.push(AclBinding {
            resource: ResourceType::TransactionalId,
            pattern: PatternType::Prefixed,
            name: group,
            operations: vec![Write],
            why: "processors with ExactlyOnce: InitProducerId, transactions and offsets in them \
                  (Write, Describe)",
        });
    }
    let mut seen: Vec<&str> = Vec::new();
    for t in &input.named_inputs {
        if t.starts_with(&input.topic_prefix) || seen.contains(&t.as_str()) {
            continue;
        }
        seen.push(t);
        out.push(AclBinding {
            resource: ResourceType::Topic,
            pattern: PatternType::Literal,
            name: t.clone(),
            operations: vec![Read],
            why: "a named input: processors consume it (Read); operator: its metadata (Describe)",
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(exactly_once: bool, named: &[&str]) -> PipelineAclInput {
        PipelineAclInput {
            topic_prefix: "ns.p.".into(),
            group_prefix: "ns.p".into(),
            named_inputs: named.iter().map(|s| (*s).to_owned()).collect(),
            exactly_once,
        }
    }

    #[test]
    fn at_least_once_needs_the_owned_topics_and_groups_only() {
        let acls = pipeline_acls(&input(false, &[]));
        let lines: Vec<String> = acls.iter().map(ToString::to_string).collect();
        assert_eq!(
            lines,
            [
                "topic prefixed 'ns.p.' Create,Read,Write,Alter,AlterConfigs,Delete",
                "group prefixed 'ns.p-' Read",
            ]
        );
    }

    #[test]
    fn exactly_once_adds_the_transactional_ids_and_named_inputs_are_read_only() {
        let acls = pipeline_acls(&input(true, &["SX", "ns.p.SY", "SX", "other.SZ"]));
        let lines: Vec<String> = acls.iter().map(ToString::to_string).collect();
        assert_eq!(
            lines,
            [
                "topic prefixed 'ns.p.' Create,Read,Write,Alter,AlterConfigs,Delete",
                "group prefixed 'ns.p-' Read",
                "transactional-id prefixed 'ns.p-' Write",
                "topic literal 'SX' Read",
                "topic literal 'other.SZ' Read",
            ]
        );
    }

    #[test]
    fn acl_command_arguments_name_principal_operations_resource_and_pattern() {
        let acls = pipeline_acls(&input(true, &[]));
        assert_eq!(
            acls[2].acl_command_args("User:CN=u"),
            [
                "--add",
                "--allow-principal",
                "User:CN=u",
                "--operation",
                "Write",
                "--transactional-id",
                "ns.p-",
                "--resource-pattern-type",
                "prefixed"
            ]
        );
    }
}
