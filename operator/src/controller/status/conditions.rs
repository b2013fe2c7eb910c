//! Pure status computation: observations in, conditions and phase out.
//!
//! `lastTransitionTime` is kept from the previous condition of the same type whenever its
//! `status` did not change, so a status write with nothing new is a no-op on the server.

use crate::crd::Condition;

/// Outcome of the topic step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TopicsOutcome {
    /// Not attempted (for example, the spec is invalid).
    Unknown,
    /// Every topic exists with the desired partition count and join inputs are co-partitioned.
    Ready,
    /// The broker could not be reached or refused a request.
    BrokerUnavailable(String),
    /// The spec lowers partitions of an existing topic: refused.
    DecreaseRefused(String),
    /// The spec raises partitions; waiting for `topics.allowPartitionIncrease`.
    IncreasePending(String),
    /// Join inputs have different partition counts.
    NotCoPartitioned(String),
    /// The confirmed partition increase was refused by the broker.
    IncreaseFailed(String),
    /// A Secret the spec names (Kafka credentials, CA) is missing or lacks the key.
    SecretUnavailable(String),
    /// The broker refused the SASL credentials from the spec's `credentialsSecret`.
    AuthenticationFailed(String),
    /// Topics that are not this pipeline's to create (`VerifyOnly`) do not exist.
    Missing(String),
    /// Topics the pipeline does not own differ from the spec (partition count).
    NotOwned(String),
    /// An earlier pipeline on the same Kafka cluster manages some of its topics or groups.
    Conflict(String),
    /// The broker's authorizer refused a request: the principal lacks an ACL the pipeline
    /// needs (the message names the request, operation and resources).
    NotAuthorized(String),
}

impl TopicsOutcome {
    /// The `TopicsReady` reason of this outcome (CamelCase) and its message.
    pub fn reason(&self) -> (&'static str, String) {
        match self {
            TopicsOutcome::Unknown => ("NotChecked", "topics not checked yet".to_owned()),
            TopicsOutcome::Ready => (
                "TopicsReady",
                "all topics exist with the desired partitions".to_owned(),
            ),
            TopicsOutcome::BrokerUnavailable(m) => ("BrokerUnavailable", m.clone()),
            TopicsOutcome::DecreaseRefused(m) => ("PartitionDecreaseRefused", m.clone()),
            TopicsOutcome::IncreasePending(m) => ("PartitionIncreasePending", m.clone()),
            TopicsOutcome::NotCoPartitioned(m) => ("NotCoPartitioned", m.clone()),
            TopicsOutcome::IncreaseFailed(m) => ("PartitionIncreaseFailed", m.clone()),
            TopicsOutcome::SecretUnavailable(m) => ("SecretUnavailable", m.clone()),
            TopicsOutcome::AuthenticationFailed(m) => ("AuthenticationFailed", m.clone()),
            TopicsOutcome::Missing(m) => ("TopicMissing", m.clone()),
            TopicsOutcome::NotOwned(m) => ("TopicNotOwned", m.clone()),
            TopicsOutcome::Conflict(m) => ("Conflict", m.clone()),
            TopicsOutcome::NotAuthorized(m) => ("NotAuthorized", m.clone()),
        }
    }

    /// Whether the outcome is a problem (everything but `Ready` and `Unknown`): it makes
    /// `Degraded=True` and raises a Warning Event.
    pub fn is_problem(&self) -> bool {
        !matches!(self, TopicsOutcome::Ready | TopicsOutcome::Unknown)
    }
}

impl From<sensorflow_kafka::TopicCheck> for TopicsOutcome {
    fn from(c: sensorflow_kafka::TopicCheck) -> Self {
        use sensorflow_kafka::TopicCheck;
        match c {
            TopicCheck::Ready => TopicsOutcome::Ready,
            TopicCheck::BrokerRefused(m) => TopicsOutcome::BrokerUnavailable(m),
            TopicCheck::DecreaseRefused(m) => TopicsOutcome::DecreaseRefused(m),
            TopicCheck::IncreasePending(m) => TopicsOutcome::IncreasePending(m),
            TopicCheck::NotCoPartitioned(m) => TopicsOutcome::NotCoPartitioned(m),
            TopicCheck::IncreaseFailed(m) => TopicsOutcome::IncreaseFailed(m),
            TopicCheck::Missing(m) => TopicsOutcome::Missing(m),
            TopicCheck::NotOwned(m) => TopicsOutcome::NotOwned(m),
            TopicCheck::NotAuthorized(m) => TopicsOutcome::NotAuthorized(m),
        }
    }
}

/// Outcome of the topic configuration step (condition `TopicConfigApplied`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum TopicConfigOutcome {
    /// Not attempted (invalid spec, or the topic step failed before it).
    #[default]
    Unknown,
    /// The spec sets no topic configuration: the broker's defaults apply.
    NotManaged,
    /// Every configured key has its value on every topic.
    InSync,
    /// DescribeConfigs or AlterConfigs failed or was refused.
    Failed(String),
}

impl TopicConfigOutcome {
    /// Status, reason and message of the `TopicConfigApplied` condition.
    pub fn condition(&self) -> (bool, &'static str, String) {
        match self {
            TopicConfigOutcome::Unknown => (
                false,
                "NotChecked",
                "topic configuration not checked yet".to_owned(),
            ),
            TopicConfigOutcome::NotManaged => (
                true,
                "NoTopicConfig",
                "the spec sets no topic configuration (broker defaults)".to_owned(),
            ),
            TopicConfigOutcome::InSync => (
                true,
                "Applied",
                "every topic has the configuration of the spec".to_owned(),
            ),
            TopicConfigOutcome::Failed(m) => (false, "AlterConfigsFailed", m.clone()),
        }
    }
}

impl From<&sensorflow_kafka::ConfigCheck> for TopicConfigOutcome {
    fn from(c: &sensorflow_kafka::ConfigCheck) -> Self {
        use sensorflow_kafka::ConfigCheck;
        match c {
            ConfigCheck::NotManaged => TopicConfigOutcome::NotManaged,
            ConfigCheck::InSync { .. } => TopicConfigOutcome::InSync,
            ConfigCheck::Failed(m) => TopicConfigOutcome::Failed(m.clone()),
        }
    }
}

/// Why a spec is not acted on at all: it failed validation, or it exceeds the operator's
/// policy. Sets `Ready=False`, `TopicsReady=False` and `Degraded=True` with its reason, and the
/// phase.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// `InvalidSpec` or `PolicyViolation`.
    pub reason: &'static str,
    /// `Invalid` or `Refused`.
    pub phase: &'static str,
    /// Every violated rule, joined.
    pub message: String,
}

impl Refusal {
    /// A spec that failed `validate` (phase `Invalid`, reason `InvalidSpec`).
    pub fn invalid_spec(message: impl Into<String>) -> Self {
        Self {
            reason: "InvalidSpec",
            phase: "Invalid",
            message: message.into(),
        }
    }

    /// A valid spec that asks for more than the operator's policy allows (phase `Refused`,
    /// reason `PolicyViolation`).
    pub fn policy_violation(message: impl Into<String>) -> Self {
        Self {
            reason: "PolicyViolation",
            phase: "Refused",
            message: message.into(),
        }
    }
}

/// Replicas of one Deployment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Replicas {
    /// Desired (spec) replicas.
    pub desired: i32,
    /// Ready replicas.
    pub ready: i32,
}

/// Everything [`compute_conditions`] looks at.
#[derive(Debug, Clone, PartialEq)]
pub struct Observations {
    /// `metadata.generation` of the object.
    pub generation: Option<i64>,
    /// Validation failure or policy violation, if any: nothing else is looked at.
    pub invalid: Option<Refusal>,
    /// Topic step outcome.
    pub topics: TopicsOutcome,
    /// window-processor and join-predict Deployments (`None`: not created yet).
    pub window: Option<Replicas>,
    /// See `window`.
    pub join: Option<Replicas>,
    /// `None` when no sink is configured; `Some(None)` when configured but not created yet.
    pub sink: Option<Option<Replicas>>,
    /// Human-readable scaling activity this round, empty when steady.
    pub scaling: Vec<String>,
    /// Topic configuration step outcome.
    pub topic_config: TopicConfigOutcome,
    /// `spec.suspend`: every stage is scaled to 0.
    pub suspended: bool,
    /// The `Degraded` reason and message from the pods not ready
    /// ([`super::pods::degraded`]), if any pod degrades the pipeline.
    pub pods: Option<(String, String)>,
    /// Records per second appended to the dead-letter topic, if known.
    pub dead_letter_rate: Option<f64>,
}

/// The condition types of `status.conditions`, in the order they are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ConditionType {
    /// Topics, processors and (when configured) the sink are ready.
    Ready,
    /// Every topic exists with the desired partition count, join inputs co-partitioned.
    TopicsReady,
    /// window-processor and join-predict have all replicas ready.
    ProcessorsReady,
    /// gcs-sink has all replicas ready (or no sink is configured).
    SinkReady,
    /// The planner changed or is holding back a replica count this round.
    Scaling,
    /// Something needs attention (invalid spec, a topic problem, a refused topic config, a
    /// pod failing such as `CrashLoopBackOff`, `ImagePullBackOff`, `OOMKilled`, records going
    /// to the dead-letter topic).
    Degraded,
    /// The topic configuration of the spec is applied to every topic.
    TopicConfigApplied,
    /// `spec.suspend` is true: every stage is scaled to 0, topics and offsets kept.
    Suspended,
}

impl ConditionType {
    /// Every type, in the order they are written.
    pub const ALL: [ConditionType; 8] = [
        ConditionType::Ready,
        ConditionType::TopicsReady,
        ConditionType::ProcessorsReady,
        ConditionType::SinkReady,
        ConditionType::Scaling,
        ConditionType::Degraded,
        ConditionType::TopicConfigApplied,
        ConditionType::Suspended,
    ];

    /// The `type` string in `status.conditions`.
    pub fn as_str(self) -> &'static str {
        match self {
            ConditionType::Ready => "Ready",
            ConditionType::TopicsReady => "TopicsReady",
            ConditionType::ProcessorsReady => "ProcessorsReady",
            ConditionType::SinkReady => "SinkReady",
            ConditionType::Scaling => "Scaling",
            ConditionType::Degraded => "Degraded",
            ConditionType::TopicConfigApplied => "TopicConfigApplied",
            ConditionType::Suspended => "Suspended",
        }
    }

    /// The condition of this type in `conditions`, if present.
    pub fn find(self, conditions: &[Condition]) -> Option<&Condition> {
        conditions.iter().find(|c| c.type_ == self.as_str())
    }
}

impl std::fmt::Display for ConditionType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

fn cond(
    type_: ConditionType,
    ok: bool,
    reason: &str,
    message: String,
) -> (ConditionType, bool, String, String) {
    (type_, ok, reason.to_owned(), message)
}

fn replicas_ready(name: &str, r: Option<Replicas>) -> (bool, String) {
    match r {
        None => (false, format!("{name}: not created yet")),
        Some(r) if r.ready >= r.desired => {
            (true, format!("{name}: {}/{} ready", r.ready, r.desired))
        }
        Some(r) => (false, format!("{name}: {}/{} ready", r.ready, r.desired)),
    }
}

/// Computes the conditions and the phase (`Invalid`, `Degraded`, `Running` or `Pending`) from
/// `obs`, keeping `lastTransitionTime` of `previous` conditions whose status is unchanged.
/// `now` is an RFC 3339 timestamp.
pub fn compute_conditions(
    obs: &Observations,
    previous: &[Condition],
    now: &str,
) -> (Vec<Condition>, String) {
    let mut raw = Vec::new();

    let topics_ok = obs.topics == TopicsOutcome::Ready;
    let (topics_reason, topics_msg) = obs.topics.reason();

    let (w_ok, w_msg) = replicas_ready("window-processor", obs.window);
    let (j_ok, j_msg) = replicas_ready("join-predict", obs.join);
    let procs_ok = w_ok && j_ok;
    let procs_reason = if obs.window.is_none() || obs.join.is_none() {
        "NotCreated"
    } else if procs_ok {
        "ReplicasReady"
    } else {
        "ReplicasNotReady"
    };
    let (sink_ok, sink_reason, sink_msg) = match obs.sink {
        None => (true, "NotConfigured", "no sink configured".to_owned()),
        Some(r) => {
            let (ok, msg) = replicas_ready("gcs-sink", r);
            (
                ok,
                if ok {
                    "ReplicasReady"
                } else {
                    "ReplicasNotReady"
                },
                msg,
            )
        }
    };

    let (config_ok, config_reason, config_msg) = obs.topic_config.condition();
    let config_failed = matches!(obs.topic_config, TopicConfigOutcome::Failed(_));
    let degraded_reason = if let Some(r) = &obs.invalid {
        Some((r.reason, r.message.clone()))
    } else if obs.topics.is_problem() {
        Some((topics_reason, topics_msg.clone()))
    } else if config_failed {
        Some((config_reason, config_msg.clone()))
    } else if let Some((reason, msg)) = &obs.pods {
        Some((reason.as_str(), msg.clone()))
    } else {
        obs.dead_letter_rate.filter(|r| *r > 0.0).map(|r| {
            (
                "DeadLetters",
                format!("{r} records/s written to the dead-letter topic (reason in each record's sensorflow.reason header)"),
            )
        })
    };

    let (ready, ready_reason, ready_msg) = if let Some(r) = &obs.invalid {
        (false, r.reason, r.message.clone())
    } else if !topics_ok {
        (false, topics_reason, topics_msg.clone())
    } else if obs.suspended {
        (
            false,
            "Suspended",
            "spec.suspend: every stage scaled to 0".to_owned(),
        )
    } else if !procs_ok {
        (false, procs_reason, format!("{w_msg}; {j_msg}"))
    } else if !sink_ok {
        (false, sink_reason, sink_msg.clone())
    } else {
        (
            true,
            "PipelineReady",
            "topics, processors and sink are ready".to_owned(),
        )
    };

    raw.push(cond(ConditionType::Ready, ready, ready_reason, ready_msg));
    if let Some(r) = &obs.invalid {
        let note = if r.reason == "PolicyViolation" {
            "spec exceeds the operator's policy"
        } else {
            "spec is invalid"
        };
        raw.push(cond(
            ConditionType::TopicsReady,
            false,
            r.reason,
            note.into(),
        ));
    } else {
        raw.push(cond(
            ConditionType::TopicsReady,
            topics_ok,
            topics_reason,
            topics_msg,
        ));
    }
    raw.push(cond(
        ConditionType::ProcessorsReady,
        procs_ok,
        procs_reason,
        format!("{w_msg}; {j_msg}"),
    ));
    raw.push(cond(
        ConditionType::SinkReady,
        sink_ok,
        sink_reason,
        sink_msg,
    ));
    raw.push(if obs.scaling.is_empty() {
        cond(
            ConditionType::Scaling,
            false,
            "Steady",
            "replica counts match the plan".into(),
        )
    } else {
        cond(
            ConditionType::Scaling,
            true,
            "Rescaling",
            obs.scaling.join("; "),
        )
    });
    let is_degraded = degraded_reason.is_some();
    raw.push(match degraded_reason {
        Some((reason, msg)) => cond(ConditionType::Degraded, true, reason, msg),
        None => cond(
            ConditionType::Degraded,
            false,
            "AsExpected",
            "no problem detected".into(),
        ),
    });

    raw.push(cond(
        ConditionType::TopicConfigApplied,
        config_ok,
        config_reason,
        config_msg,
    ));
    raw.push(if obs.suspended {
        cond(
            ConditionType::Suspended,
            true,
            "Suspended",
            "spec.suspend: window-processor, join-predict and gcs-sink scaled to 0; topics and committed offsets kept".into(),
        )
    } else {
        cond(
            ConditionType::Suspended,
            false,
            "Running",
            "spec.suspend is false".into(),
        )
    });
    let conditions = raw
        .into_iter()
        .map(|(type_, ok, reason, message)| {
            let status = if ok { "True" } else { "False" }.to_owned();
            let last_transition_time = type_
                .find(previous)
                .filter(|c| c.status == status)
                .map_or_else(|| now.to_owned(), |c| c.last_transition_time.clone());
            Condition {
                type_: type_.to_string(),
                status,
                reason,
                message,
                last_transition_time,
                observed_generation: obs.generation,
            }
        })
        .collect();

    let phase = if let Some(r) = &obs.invalid {
        r.phase
    } else if is_degraded {
        "Degraded"
    } else if obs.suspended {
        "Suspended"
    } else if ready {
        "Running"
    } else {
        "Pending"
    };
    (conditions, phase.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ready_obs() -> Observations {
        Observations {
            generation: Some(3),
            invalid: None,
            topics: TopicsOutcome::Ready,
            window: Some(Replicas {
                desired: 2,
                ready: 2,
            }),
            join: Some(Replicas {
                desired: 1,
                ready: 1,
            }),
            sink: None,
            scaling: vec![],
            topic_config: TopicConfigOutcome::NotManaged,
            suspended: false,
            pods: None,
            dead_letter_rate: None,
        }
    }

    fn get<'a>(c: &'a [Condition], t: &str) -> &'a Condition {
        c.iter().find(|c| c.type_ == t).expect("condition present")
    }

    #[test]
    fn conditions_are_written_in_the_enum_order() {
        let (c, _) = compute_conditions(&ready_obs(), &[], "T1");
        let types: Vec<&str> = c.iter().map(|c| c.type_.as_str()).collect();
        assert_eq!(types, ConditionType::ALL.map(ConditionType::as_str));
    }

    #[test]
    fn all_ready() {
        let (c, phase) = compute_conditions(&ready_obs(), &[], "T1");
        assert_eq!(phase, "Running");
        assert_eq!(c.len(), 8);
        assert_eq!(get(&c, "TopicConfigApplied").status, "True");
        assert_eq!(get(&c, "Suspended").status, "False");
        assert_eq!(get(&c, "Ready").status, "True");
        assert_eq!(get(&c, "Degraded").status, "False");
        assert_eq!(get(&c, "SinkReady").reason, "NotConfigured");
        assert!(c.iter().all(|c| c.observed_generation == Some(3)));
    }

    #[test]
    fn invalid_spec() {
        let obs = Observations {
            invalid: Some(Refusal::invalid_spec(
                "model.threshold: 2 is outside [0, 1]",
            )),
            topics: TopicsOutcome::Unknown,
            ..ready_obs()
        };
        let (c, phase) = compute_conditions(&obs, &[], "T1");
        assert_eq!(phase, "Invalid");
        assert_eq!(get(&c, "Ready").reason, "InvalidSpec");
        assert!(get(&c, "Ready").message.contains("threshold"));
        assert_eq!(get(&c, "Degraded").status, "True");
    }

    #[test]
    fn policy_violation_is_its_own_reason_and_phase() {
        let obs = Observations {
            invalid: Some(Refusal::policy_violation(
                "processors.image: repository 'e/x'",
            )),
            topics: TopicsOutcome::Unknown,
            ..ready_obs()
        };
        let (c, phase) = compute_conditions(&obs, &[], "T1");
        assert_eq!(phase, "Refused");
        for t in ["Ready", "TopicsReady", "Degraded"] {
            assert_eq!(get(&c, t).reason, "PolicyViolation", "{t}");
        }
        assert!(get(&c, "Ready").message.contains("processors.image"));
        assert_eq!(get(&c, "Ready").status, "False");
        assert_eq!(get(&c, "Degraded").status, "True");
    }

    #[test]
    fn keeps_transition_time_while_status_unchanged() {
        let (first, _) = compute_conditions(&ready_obs(), &[], "T1");
        let mut obs = ready_obs();
        obs.window = Some(Replicas {
            desired: 4,
            ready: 4,
        });
        let (second, _) = compute_conditions(&obs, &first, "T2");
        assert!(second.iter().all(|c| c.last_transition_time == "T1"));
        obs.window = Some(Replicas {
            desired: 4,
            ready: 3,
        });
        let (third, phase) = compute_conditions(&obs, &second, "T3");
        assert_eq!(phase, "Pending");
        assert_eq!(get(&third, "Ready").last_transition_time, "T3");
        assert_eq!(get(&third, "TopicsReady").last_transition_time, "T1");
    }

    #[test]
    fn partition_decrease_is_degraded() {
        let obs = Observations {
            topics: TopicsOutcome::DecreaseRefused("p.sx has 100 partitions, spec asks 50".into()),
            ..ready_obs()
        };
        let (c, phase) = compute_conditions(&obs, &[], "T1");
        assert_eq!(phase, "Degraded");
        assert_eq!(get(&c, "TopicsReady").reason, "PartitionDecreaseRefused");
        assert_eq!(get(&c, "Degraded").reason, "PartitionDecreaseRefused");
    }

    #[test]
    fn a_failing_pod_and_dead_letters_degrade_with_their_reason_topics_first() {
        let mut obs = ready_obs();
        obs.dead_letter_rate = Some(0.0);
        let (c, phase) = compute_conditions(&obs, &[], "T1");
        assert_eq!(
            (get(&c, "Degraded").status.as_str(), phase.as_str()),
            ("False", "Running")
        );
        obs.dead_letter_rate = Some(1.5);
        let (c, phase) = compute_conditions(&obs, &[], "T1");
        let d = get(&c, "Degraded");
        assert_eq!(
            (d.status.as_str(), d.reason.as_str()),
            ("True", "DeadLetters")
        );
        assert!(d.message.starts_with("1.5 records/s"));
        assert_eq!(phase, "Degraded");
        obs.pods = Some((
            "CrashLoopBackOff".into(),
            "join-predict pod p-join-x: …".into(),
        ));
        let (c, _) = compute_conditions(&obs, &[], "T1");
        assert_eq!(get(&c, "Degraded").reason, "CrashLoopBackOff");
        // A topic problem is reported before a pod's.
        obs.topics = TopicsOutcome::BrokerUnavailable("down".into());
        let (c, _) = compute_conditions(&obs, &[], "T1");
        assert_eq!(get(&c, "Degraded").reason, "BrokerUnavailable");
    }

    #[test]
    fn a_refused_topic_config_is_degraded_but_not_unready() {
        let obs = Observations {
            topic_config: TopicConfigOutcome::Failed("p.late (retention.ms): InvalidConfig".into()),
            ..ready_obs()
        };
        let (c, phase) = compute_conditions(&obs, &[], "T1");
        assert_eq!(phase, "Degraded");
        assert_eq!(get(&c, "TopicConfigApplied").status, "False");
        assert_eq!(get(&c, "TopicConfigApplied").reason, "AlterConfigsFailed");
        assert_eq!(get(&c, "Degraded").reason, "AlterConfigsFailed");
        assert_eq!(get(&c, "Ready").status, "True");
    }

    #[test]
    fn suspended_is_its_own_phase_and_not_ready() {
        let obs = Observations {
            suspended: true,
            pods: None,
            dead_letter_rate: None,
            window: Some(Replicas {
                desired: 0,
                ready: 0,
            }),
            join: Some(Replicas {
                desired: 0,
                ready: 0,
            }),
            ..ready_obs()
        };
        let (c, phase) = compute_conditions(&obs, &[], "T1");
        assert_eq!(phase, "Suspended");
        assert_eq!(get(&c, "Suspended").status, "True");
        assert_eq!(get(&c, "Ready").reason, "Suspended");
        assert_eq!(get(&c, "Degraded").status, "False");
    }

    #[test]
    fn sink_not_created() {
        let obs = Observations {
            sink: Some(None),
            ..ready_obs()
        };
        let (c, _) = compute_conditions(&obs, &[], "T1");
        assert_eq!(get(&c, "SinkReady").status, "False");
        assert_eq!(get(&c, "Ready").status, "False");
    }

    proptest! {
        /// Ready is True exactly when everything else is healthy, and recomputing with the
        /// output as `previous` never changes a transition time.
        #[test]
        fn ready_iff_components_ready(wd in 0i32..5, wr in 0i32..5, jd in 0i32..5, jr in 0i32..5, topics_ok: bool) {
            let obs = Observations {
                topics: if topics_ok { TopicsOutcome::Ready } else { TopicsOutcome::BrokerUnavailable("x".into()) },
                window: Some(Replicas { desired: wd, ready: wr }),
                join: Some(Replicas { desired: jd, ready: jr }),
                ..ready_obs()
            };
            let (c, _) = compute_conditions(&obs, &[], "T1");
            let expect = topics_ok && wr >= wd && jr >= jd;
            prop_assert_eq!(get(&c, "Ready").status == "True", expect);
            let (again, _) = compute_conditions(&obs, &c, "T2");
            prop_assert_eq!(again, c);
        }
    }
}
