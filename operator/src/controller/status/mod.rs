//! The status step, pure: what was observed and decided in, `status` (conditions, phase, stage
//! replicas and lag, topics) and the topic Events out. `lastTransitionTime` is kept while a
//! condition's status does not change ([`crate::controller::status::conditions::compute_conditions`]), so a round
//! with nothing new writes nothing.
//!
//! ```text
//!   invalid spec / policy violation ────▶ invalid()        ─▶ Invalid / Refused (+ InvalidSpec /
//!                                                            PolicyViolation Event)
//!   Secret / broker failure ────────────▶ topic_failure()  ─▶ TopicsReady=False, Degraded (+ Warning)
//!   TopicReport + previous status ──────▶ created_topics(), topic_events()
//!   Observed + ReplicaDecision + previous ─▶ running()     ─▶ the full status
//! ```

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::jiff::Timestamp;

pub mod conditions;
pub mod pods;
pub mod schema;

use super::dereference::{Observed, replicas_of};
use super::plan::flow::{two_decimals, whole_seconds};
use super::plan::{PlannedEvent, ReplicaDecision, saturating_i64};
use crate::controller::build::Stage;
use crate::crd::{PodProblem, SensorPipelineSpec, SensorPipelineStatus, StageStatus, TopicStatus};
use conditions::{ConditionType, Observations, Refusal, Replicas, TopicsOutcome};
use sensorflow_kafka::{ConfigCheck, TopicReport};

/// `now` at seconds precision, like metav1.Time.
pub fn now_rfc3339(now: Timestamp) -> String {
    Timestamp::from_second(now.as_second())
        .unwrap_or(now)
        .to_string()
}

/// The status of a spec that is not acted on (phase `Invalid` with reason `InvalidSpec`, or
/// `Refused` with `PolicyViolation`; `Ready=False`, `Degraded=True`), and whether this very
/// refusal was already reported for this generation (same reason and message in `Ready`), so
/// its Warning is raised once, and again when the operator's policy changes what it says.
pub fn invalid(
    generation: Option<i64>,
    spec: &SensorPipelineSpec,
    previous: &SensorPipelineStatus,
    refusal: Refusal,
    now: &str,
) -> (SensorPipelineStatus, bool) {
    let already_reported = previous.observed_generation == generation
        && ConditionType::Ready
            .find(&previous.conditions)
            .is_some_and(|c| c.reason == refusal.reason && c.message == refusal.message);
    let obs = Observations {
        generation,
        invalid: Some(refusal),
        topics: TopicsOutcome::Unknown,
        window: None,
        join: None,
        sink: spec.sink.as_ref().map(|_| None),
        scaling: vec![],
        topic_config: Default::default(),
        suspended: spec.suspend,
        pods: None,
        dead_letter_rate: None,
    };
    let (conditions, phase) = conditions::compute_conditions(&obs, &previous.conditions, now);
    (
        SensorPipelineStatus {
            observed_generation: generation,
            phase: Some(phase),
            conditions,
            ..previous.clone()
        },
        already_reported,
    )
}

/// The status after a failed topic step (a Secret or the broker unavailable):
/// `TopicsReady=False`, `Degraded=True`, the rest of `previous` kept; and the Warning Event
/// with the `TopicsReady` reason.
pub fn topic_failure(
    generation: Option<i64>,
    spec: &SensorPipelineSpec,
    previous: &SensorPipelineStatus,
    outcome: TopicsOutcome,
    deployments: Option<&BTreeMap<Stage, Deployment>>,
    now: &str,
) -> (SensorPipelineStatus, Option<PlannedEvent>) {
    let get = |stage| deployments.and_then(|d| replicas_of(d.get(&stage)));
    let obs = Observations {
        generation,
        invalid: None,
        topics: outcome,
        window: get(Stage::Window),
        join: get(Stage::Join),
        sink: spec.sink.as_ref().map(|_| get(Stage::Sink)),
        scaling: vec![],
        topic_config: Default::default(),
        suspended: spec.suspend,
        pods: None,
        dead_letter_rate: None,
    };
    let (conditions, phase) = conditions::compute_conditions(&obs, &previous.conditions, now);
    let event = ConditionType::TopicsReady
        .find(&conditions)
        .map(|c| PlannedEvent::warning(&c.reason, "EnsureTopics", c.message.clone()));
    (
        SensorPipelineStatus {
            observed_generation: generation,
            phase: Some(phase),
            conditions,
            ..previous.clone()
        },
        event,
    )
}

/// `status.createdTopics` after the topic step: the previous list plus the topics created now,
/// sorted and without duplicates.
pub fn created_topics(previous: &SensorPipelineStatus, report: &TopicReport) -> Vec<String> {
    let mut created = previous.created_topics.clone();
    created.extend(report.created.iter().cloned());
    created.sort();
    created.dedup();
    created
}

/// Events of the topic step: `TopicsCreated`, one `PartitionsIncreased` Warning per raised
/// topic, `TopicConfigApplied` naming the topics and keys altered, an `AlterConfigsFailed`
/// Warning when the refusal is new, and a Warning with the `TopicsReady` reason when the outcome is a problem that
/// differs (reason or message) from the previous `TopicsReady` condition.
pub fn topic_events(
    report: &TopicReport,
    partitions: i32,
    previous: &SensorPipelineStatus,
) -> Vec<PlannedEvent> {
    let mut events = Vec::new();
    if !report.created.is_empty() {
        events.push(PlannedEvent::normal(
            "TopicsCreated",
            "CreateTopics",
            format!(
                "created {} topics with {partitions} partitions: {}",
                report.created.len(),
                report.created.join(", ")
            ),
        ));
    }
    for (topic, from, to) in &report.increased {
        events.push(PlannedEvent::warning(
            "PartitionsIncreased",
            "CreatePartitions",
            format!(
                "raised {topic} from {from} to {to} partitions (key → partition mapping changed)"
            ),
        ));
    }
    match &report.config {
        ConfigCheck::InSync { altered } if !altered.is_empty() => {
            let list: Vec<String> = altered
                .iter()
                .map(|(t, keys)| format!("{t} ({})", keys.join(", ")))
                .collect();
            events.push(PlannedEvent::normal(
                "TopicConfigApplied",
                "AlterConfigs",
                format!("applied the spec's configuration to {}", list.join("; ")),
            ));
        }
        ConfigCheck::Failed(m) => {
            let unchanged = ConditionType::TopicConfigApplied
                .find(&previous.conditions)
                .is_some_and(|c| c.reason == "AlterConfigsFailed" && &c.message == m);
            if !unchanged {
                events.push(PlannedEvent::warning(
                    "AlterConfigsFailed",
                    "AlterConfigs",
                    m.clone(),
                ));
            }
        }
        _ => {}
    }
    let outcome = TopicsOutcome::from(report.outcome.clone());
    if outcome.is_problem() {
        let (reason, message) = outcome.reason();
        let unchanged = ConditionType::TopicsReady
            .find(&previous.conditions)
            .is_some_and(|c| c.reason == reason && c.message == message);
        if !unchanged {
            events.push(PlannedEvent::warning(reason, "EnsureTopics", message));
        }
    }
    events
}

/// The status of a reconcile that got through the topic step: conditions and phase from the
/// observed Deployments (with the planned replica counts), the topic outcome, the pods not
/// ready, the dead-letter rate and the scaling notes; per stage replicas, lag, time lag,
/// input rate and the pods not ready (the sink's replicas and pods); the sum of both stages'
/// lag and the larger time lag when both are known; the dead-letter and late rates; the
/// partition count of every topic; `createdTopics`.
pub fn running(
    generation: Option<i64>,
    spec: &SensorPipelineSpec,
    observed: &Observed,
    decision: &ReplicaDecision,
    created_topics: Vec<String>,
    previous: &SensorPipelineStatus,
    now: &str,
) -> SensorPipelineStatus {
    let planned = |stage, plan: Option<i32>| {
        Some(match observed.replicas(stage) {
            Some(r) => Replicas {
                desired: plan.unwrap_or(r.desired),
                ..r
            },
            None => Replicas {
                desired: plan.unwrap_or(1),
                ready: 0,
            },
        })
    };
    let problems = |stage: Stage| -> Vec<PodProblem> {
        observed
            .pods
            .get(&stage)
            .map(|p| pods::problems(p))
            .unwrap_or_default()
    };
    let (window_pods, join_pods) = (problems(Stage::Window), problems(Stage::Join));
    let sink_pods = spec
        .sink
        .as_ref()
        .map(|_| problems(Stage::Sink))
        .unwrap_or_default();
    let flow = &observed.flow;
    let dead_letter_rate = flow.dead_letter.map(two_decimals);
    let sink_replicas = spec.sink.as_ref().map(|s| {
        observed.replicas(Stage::Sink).unwrap_or(Replicas {
            desired: s.replicas,
            ready: 0,
        })
    });
    let obs = Observations {
        generation,
        invalid: None,
        topics: observed.topics.outcome.clone().into(),
        window: planned(Stage::Window, decision.plan.window),
        join: planned(Stage::Join, decision.plan.join),
        sink: sink_replicas.map(Some),
        scaling: decision.scaling.clone(),
        topic_config: (&observed.topics.config).into(),
        suspended: spec.suspend,
        pods: pods::degraded(&[
            (Stage::Window.binary(), &window_pods),
            (Stage::Join.binary(), &join_pods),
            (Stage::Sink.binary(), &sink_pods),
        ]),
        dead_letter_rate,
    };
    let (conditions, phase) = conditions::compute_conditions(&obs, &previous.conditions, now);
    let total_lag = match (observed.lag(Stage::Window), observed.lag(Stage::Join)) {
        (Some(a), Some(b)) => Some(saturating_i64(a.saturating_add(b))),
        _ => None,
    };
    let stage = |stage: Stage, not_ready_pods: Vec<PodProblem>| {
        decision.stages.get(&stage).cloned().map(|s| StageStatus {
            time_lag_seconds: flow.time_lag(stage).map(whole_seconds),
            records_in_per_second: flow.records_in(stage).map(two_decimals),
            not_ready_pods,
            ..s
        })
    };
    let time_lag_seconds = match (flow.time_lag(Stage::Window), flow.time_lag(Stage::Join)) {
        (Some(a), Some(b)) => Some(whole_seconds(a.max(b))),
        _ => None,
    };
    SensorPipelineStatus {
        observed_generation: generation,
        phase: Some(phase),
        conditions,
        window: stage(Stage::Window, window_pods),
        join: stage(Stage::Join, join_pods),
        sink: sink_replicas.map(|r| StageStatus {
            replicas: r.desired,
            ready_replicas: r.ready,
            not_ready_pods: sink_pods,
            ..Default::default()
        }),
        total_lag,
        time_lag_seconds,
        dead_letter_per_second: dead_letter_rate,
        late_per_second: flow.late.map(two_decimals),
        topics: observed
            .topics
            .partitions
            .iter()
            .map(|(name, partitions)| TopicStatus {
                name: name.clone(),
                partitions: *partitions,
            })
            .collect(),
        created_topics,
        default_names: previous.default_names.clone(),
        cleanup_attempts: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::build::ReplicaPlan;
    use crate::controller::plan::Severity;
    use crate::controller::validate::tests::spec;
    use crate::crd::StageStatus;
    use sensorflow_kafka::TopicCheck;

    fn report(outcome: TopicCheck) -> TopicReport {
        TopicReport {
            partitions: BTreeMap::from([("p.sx".to_owned(), 100), ("p.sz".to_owned(), 100)]),
            created: vec!["p.sz".into()],
            increased: vec![("p.sx".into(), 50, 100)],
            outcome,
            config: Default::default(),
        }
    }

    fn cond(s: &SensorPipelineStatus, t: ConditionType) -> &crate::crd::Condition {
        t.find(&s.conditions).expect("condition")
    }

    #[test]
    fn an_invalid_spec_is_reported_once_per_generation() {
        let bad = || Refusal::invalid_spec("bad");
        let (s, reported) = invalid(Some(2), &spec(), &Default::default(), bad(), "T1");
        assert!(!reported);
        assert_eq!(s.phase.as_deref(), Some("Invalid"));
        assert_eq!(cond(&s, ConditionType::Ready).reason, "InvalidSpec");
        let (again, reported) = invalid(Some(2), &spec(), &s, bad(), "T2");
        assert!(reported);
        assert_eq!(again, s, "nothing new: the same status, no write");
        let (_, reported) = invalid(Some(3), &spec(), &s, bad(), "T3");
        assert!(!reported, "a new generation is reported again");
    }

    #[test]
    fn a_policy_violation_is_reported_once_per_generation_and_message() {
        let refused = |m: &str| Refusal::policy_violation(m);
        let (s, reported) = invalid(Some(2), &spec(), &Default::default(), refused("a"), "T1");
        assert!(!reported);
        assert_eq!(s.phase.as_deref(), Some("Refused"));
        assert_eq!(cond(&s, ConditionType::Ready).reason, "PolicyViolation");
        let (again, reported) = invalid(Some(2), &spec(), &s, refused("a"), "T2");
        assert!(reported);
        assert_eq!(again, s);
        // The same generation under a changed policy (an operator restarted with other
        // flags) says something else: reported again.
        let (_, reported) = invalid(Some(2), &spec(), &s, refused("b"), "T3");
        assert!(!reported);
        // A running pipeline that the policy now refuses (same generation): reported.
        let (_, reported) = invalid(
            Some(2),
            &spec(),
            &SensorPipelineStatus {
                observed_generation: Some(2),
                phase: Some("Running".into()),
                ..Default::default()
            },
            refused("a"),
            "T4",
        );
        assert!(!reported);
    }

    #[test]
    fn a_topic_failure_keeps_the_rest_of_the_status_and_warns() {
        let previous = SensorPipelineStatus {
            created_topics: vec!["p.sx".into()],
            total_lag: Some(5),
            ..Default::default()
        };
        let (s, ev) = topic_failure(
            Some(1),
            &spec(),
            &previous,
            TopicsOutcome::SecretUnavailable("secret ns/k key u: not found".into()),
            None,
            "T1",
        );
        assert_eq!(s.created_topics, ["p.sx"]);
        assert_eq!(s.total_lag, Some(5));
        assert_eq!(s.phase.as_deref(), Some("Degraded"));
        assert_eq!(
            cond(&s, ConditionType::TopicsReady).reason,
            "SecretUnavailable"
        );
        let ev = ev.expect("event");
        assert_eq!(
            (ev.severity, ev.reason.as_str()),
            (Severity::Warning, "SecretUnavailable")
        );
    }

    #[test]
    fn refused_credentials_make_ready_false_with_their_own_reason_and_a_warning() {
        let (s, ev) = topic_failure(
            Some(1),
            &spec(),
            &Default::default(),
            TopicsOutcome::AuthenticationFailed("SASL authentication failed: x".into()),
            None,
            "T1",
        );
        assert_eq!(s.phase.as_deref(), Some("Degraded"));
        for t in [ConditionType::Ready, ConditionType::TopicsReady] {
            let c = cond(&s, t);
            assert_eq!(
                (c.status.as_str(), c.reason.as_str()),
                ("False", "AuthenticationFailed")
            );
            assert!(c.message.contains("SASL authentication failed"));
        }
        assert_eq!(cond(&s, ConditionType::Degraded).status, "True");
        let ev = ev.expect("event");
        assert_eq!(
            (ev.severity, ev.reason.as_str()),
            (Severity::Warning, "AuthenticationFailed")
        );
    }

    #[test]
    fn topic_events_name_created_and_raised_topics_and_new_problems_once() {
        let r = report(TopicCheck::NotCoPartitioned("p.sx=100, p.sy=10".into()));
        let events = topic_events(&r, 100, &Default::default());
        let reasons: Vec<&str> = events.iter().map(|e| e.reason.as_str()).collect();
        assert_eq!(
            reasons,
            ["TopicsCreated", "PartitionsIncreased", "NotCoPartitioned"]
        );
        assert!(
            events[0]
                .note
                .contains("created 1 topics with 100 partitions: p.sz")
        );
        // The same problem already in the previous condition: no repeated Warning.
        let previous = SensorPipelineStatus {
            conditions: conditions::compute_conditions(
                &Observations {
                    generation: None,
                    invalid: None,
                    topics: r.outcome.clone().into(),
                    window: None,
                    join: None,
                    sink: None,
                    scaling: vec![],
                    topic_config: Default::default(),
                    suspended: false,
                    pods: None,
                    dead_letter_rate: None,
                },
                &[],
                "T0",
            )
            .0,
            ..Default::default()
        };
        let again = topic_events(&r, 100, &previous);
        assert!(again.iter().all(|e| e.reason != "NotCoPartitioned"));
        assert!(topic_events(&report(TopicCheck::Ready), 100, &previous).len() == 2);
    }

    #[test]
    fn created_topics_accumulate_sorted_and_unique() {
        let previous = SensorPipelineStatus {
            created_topics: vec!["p.sz".into(), "p.fa".into()],
            ..Default::default()
        };
        assert_eq!(
            created_topics(&previous, &report(TopicCheck::Ready)),
            ["p.fa", "p.sz"]
        );
    }

    #[test]
    fn running_status_sums_lag_and_reports_the_plan() {
        let observed = Observed {
            deployments: BTreeMap::new(),
            secret_versions: Default::default(),
            topics: report(TopicCheck::Ready),
            lags: BTreeMap::from([(Stage::Window, Some(7)), (Stage::Join, Some(5))]),
            pods: BTreeMap::new(),
            flow: Default::default(),
        };
        let decision = ReplicaDecision {
            plan: ReplicaPlan {
                window: Some(2),
                join: Some(1),
            },
            stages: BTreeMap::from([(
                Stage::Window,
                StageStatus {
                    replicas: 2,
                    ..Default::default()
                },
            )]),
            scaling: vec![],
            events: vec![],
        };
        let s = running(
            Some(4),
            &spec(),
            &observed,
            &decision,
            vec![],
            &Default::default(),
            "T1",
        );
        assert_eq!(s.total_lag, Some(12));
        assert_eq!(s.observed_generation, Some(4));
        assert_eq!(s.window.as_ref().map(|w| w.replicas), Some(2));
        assert_eq!(s.topics.len(), 2);
        // No Deployment yet: processors are not ready, the pipeline is Pending.
        assert_eq!(s.phase.as_deref(), Some("Pending"));
        assert!(
            cond(&s, ConditionType::ProcessorsReady)
                .message
                .contains("0/2 ready")
        );
        let unknown = Observed {
            lags: BTreeMap::from([(Stage::Window, Some(7)), (Stage::Join, None)]),
            ..observed
        };
        let s = running(
            Some(4),
            &spec(),
            &unknown,
            &decision,
            vec![],
            &Default::default(),
            "T1",
        );
        assert_eq!(s.total_lag, None);
    }
}
