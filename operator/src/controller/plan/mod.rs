//! The plan step, pure: a validated spec and what was [`Observed`] in, the topic plan, the
//! replica plan, the per-stage status and the Events to publish out. No I/O and no clock: the
//! time is passed in.
//!
//! ```text
//!   Validated ─▶ topics() ─▶ TopicPlan                      (topic step: create / raise)
//!   Validated + Observed + previous status + now
//!       ─▶ replicas() ─▶ ReplicaDecision { plan, stages, scaling notes, Events, gauges }
//!   Validated + ReplicaPlan ─▶ build::build ─▶ Desired      (every owned object)
//! ```

use std::collections::BTreeMap;

use k8s_openapi::jiff::{SignedDuration, Timestamp};

pub mod claims;
pub mod flow;
pub mod replicas;
pub mod topics;

use super::dereference::Observed;
use crate::controller::build::{ReplicaPlan, Stage};
use crate::controller::validate::Validated;
use crate::crd::{SensorPipelineStatus, StageStatus};
use replicas::{Bounds, Change};
pub use topics::{deletable_topics, stage_inputs, topic_configs, topics};

/// Severity of a [`PlannedEvent`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    /// `Normal`.
    Normal,
    /// `Warning`.
    Warning,
}

/// An Event to publish on the SensorPipeline (the apply step publishes it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedEvent {
    /// `Normal` or `Warning`.
    pub severity: Severity,
    /// CamelCase reason, for example `ScaledUp`.
    pub reason: String,
    /// CamelCase action, for example `Scale`.
    pub action: &'static str,
    /// Human-readable note.
    pub note: String,
}

impl PlannedEvent {
    /// A `Normal` Event.
    pub fn normal(reason: &str, action: &'static str, note: String) -> Self {
        Self {
            severity: Severity::Normal,
            reason: reason.to_owned(),
            action,
            note,
        }
    }
    /// A `Warning` Event.
    pub fn warning(reason: &str, action: &'static str, note: String) -> Self {
        Self {
            severity: Severity::Warning,
            ..Self::normal(reason, action, note)
        }
    }
}

/// What [`replicas`] decided for the planner-scaled stages.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ReplicaDecision {
    /// Replica counts to write (`None` with `scalingMode: External`).
    pub plan: ReplicaPlan,
    /// `status.window` and `status.join`.
    pub stages: BTreeMap<Stage, StageStatus>,
    /// Scaling activity this round, for the `Scaling` condition (empty when steady).
    pub scaling: Vec<String>,
    /// `ScaledUp` / `ScaledDown` Events.
    pub events: Vec<PlannedEvent>,
}

/// Plans the replicas of window-processor and join-predict from their lag (see
/// [`crate::controller::plan::replicas`]), with the cooldown start carried in `previous` status.
pub fn replicas(
    v: &Validated,
    observed: &Observed,
    previous: &SensorPipelineStatus,
    cooldown: SignedDuration,
    now: Timestamp,
) -> ReplicaDecision {
    let mut out = ReplicaDecision::default();
    for (stage, _, inputs) in stage_inputs(v) {
        let (spec_stage, prev_stage) = match stage {
            Stage::Window => (&v.spec.processors.window, previous.window.as_ref()),
            _ => (&v.spec.processors.join, previous.join.as_ref()),
        };
        let partitions = inputs
            .iter()
            .filter_map(|t| observed.topics.partitions.get(t).copied())
            .min()
            .unwrap_or(v.spec.topics.partitions);
        let lag = observed.lag(stage);
        let time_lag = observed.flow.time_lag(stage);
        let time_lag_target = spec_stage.time_lag_target_seconds.map(|t| t as f64);
        let p = replicas::plan(&replicas::Input {
            current: observed.current_replicas(stage),
            lag,
            bounds: Bounds {
                min: spec_stage.min_replicas,
                max: spec_stage.max_replicas,
                partitions,
                lag_target: spec_stage.lag_target_per_replica,
            },
            cooldown,
            now,
            pending_since: prev_stage
                .and_then(|s| s.scale_down_pending_since.as_deref())
                .and_then(|s| s.parse::<Timestamp>().ok()),
            max_step: v.spec.processors.max_scale_up_step,
            time_lag,
            time_lag_target,
            activation: spec_stage.activation_time_lag_seconds as f64,
        });
        let replicas = if v.spec.suspend {
            // Suspended: every stage at 0 whoever scales it (an HPA does not scale a
            // Deployment at 0 replicas); the cooldown starts afresh on resume.
            if observed.current_replicas(stage).is_some_and(|c| c > 0) {
                out.scaling
                    .push(format!("{} suspended: scaled to 0", stage.binary()));
            }
            Some(0)
        } else if v.planner_enabled() {
            match p.change {
                Change::Up(from, to) | Change::Down(from, to) => {
                    let verb = if to > from { "up" } else { "down" };
                    let seconds = |t: Option<f64>| {
                        t.map_or_else(|| "unknown".to_owned(), |t| format!("{t:.0}s"))
                    };
                    let why = match time_lag_target {
                        Some(target) => {
                            format!("time lag {}, target {target:.0}s", seconds(time_lag))
                        }
                        None => format!(
                            "lag {}, target {}/replica",
                            lag.map_or_else(|| "unknown".to_owned(), |l| l.to_string()),
                            spec_stage.lag_target_per_replica
                        ),
                    };
                    let note = format!(
                        "scaled {} {verb} from {from} to {to} ({why})",
                        stage.binary()
                    );
                    out.scaling.push(note.clone());
                    let reason = if to > from { "ScaledUp" } else { "ScaledDown" };
                    out.events.push(PlannedEvent::normal(reason, "Scale", note));
                }
                Change::CoolingDown(want) => out.scaling.push(format!(
                    "{} wants {want} replicas; holding {} until the {}s cooldown ends",
                    stage.binary(),
                    p.replicas,
                    cooldown.as_secs()
                )),
                Change::Steady | Change::LagUnknown => {}
            }
            Some(p.replicas)
        } else {
            None
        };
        match stage {
            Stage::Window => out.plan.window = replicas,
            _ => out.plan.join = replicas,
        }
        out.stages.insert(
            stage,
            StageStatus {
                replicas: replicas
                    .or_else(|| observed.current_replicas(stage))
                    .unwrap_or(1),
                ready_replicas: observed.replicas(stage).map_or(0, |r| r.ready),
                lag: lag.map(saturating_i64),
                scale_down_pending_since: if v.planner_enabled() && !v.spec.suspend {
                    p.pending_since.map(cooldown_start_rfc3339)
                } else {
                    None
                },
                ..Default::default()
            },
        );
    }
    out
}

/// `u64` messages as the `i64` of the status, saturating.
pub fn saturating_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// A cooldown start written to status: seconds precision like metav1.Time, rounded *up* so
/// that the cooldown read back from status is never shorter than configured (truncating let a
/// scale-down happen up to 1 s early).
pub fn cooldown_start_rfc3339(since: Timestamp) -> String {
    let up = i64::from(since.subsec_nanosecond() > 0);
    Timestamp::from_second(since.as_second() + up)
        .unwrap_or(since)
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::validate::{Naming, tests::spec, validate};
    use crate::crd::ScalingMode;
    use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec, DeploymentStatus};
    use sensorflow_kafka::{TopicCheck, TopicReport};

    fn deployment(replicas: i32, ready: i32) -> Deployment {
        Deployment {
            spec: Some(DeploymentSpec {
                replicas: Some(replicas),
                ..Default::default()
            }),
            status: Some(DeploymentStatus {
                ready_replicas: Some(ready),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn observed(v: &Validated, window_lag: Option<u64>, join_lag: Option<u64>) -> Observed {
        Observed {
            deployments: BTreeMap::from([
                (Stage::Window, deployment(1, 1)),
                (Stage::Join, deployment(2, 2)),
            ]),
            secret_versions: Default::default(),
            topics: TopicReport {
                partitions: v
                    .topics
                    .all()
                    .iter()
                    .map(|t| ((*t).to_owned(), 100))
                    .collect(),
                created: vec![],
                increased: vec![],
                outcome: TopicCheck::Ready,
                config: Default::default(),
            },
            lags: BTreeMap::from([(Stage::Window, window_lag), (Stage::Join, join_lag)]),
            pods: BTreeMap::new(),
            flow: Default::default(),
        }
    }

    fn t(s: i64) -> Timestamp {
        Timestamp::from_second(s).expect("time")
    }

    #[test]
    fn lag_above_target_scales_up_with_an_event_and_a_scaling_note() {
        let v = validate("p", &Naming::legacy("p"), &spec()).expect("valid");
        // 35 000 messages at 10 000 per replica: 4 window replicas; join steady at 2.
        let obs = observed(&v, Some(35_000), Some(15_000));
        let d = replicas(
            &v,
            &obs,
            &Default::default(),
            SignedDuration::from_secs(300),
            t(1000),
        );
        assert_eq!(d.plan.window, Some(4));
        assert_eq!(d.stages[&Stage::Window].replicas, 4);
        assert_eq!(d.stages[&Stage::Window].ready_replicas, 1);
        assert_eq!(d.stages[&Stage::Window].lag, Some(35_000));
        assert_eq!(d.events.len(), 1);
        assert_eq!(d.events[0].reason, "ScaledUp");
        assert!(d.events[0].note.contains("window-processor up from 1 to 4"));
        assert_eq!(d.scaling.len(), 1);
        assert_eq!(d.plan.join, Some(2));
        assert_eq!(d.stages[&Stage::Join].scale_down_pending_since, None);
    }

    #[test]
    fn time_lag_mode_scales_on_seconds_and_says_so_and_activation_holds() {
        let mut s = spec();
        s.processors.window.time_lag_target_seconds = Some(10);
        s.processors.window.activation_time_lag_seconds = 30;
        let v = validate("p", &Naming::legacy("p"), &s).expect("valid");
        let mut obs = observed(&v, Some(1_000_000), Some(0));
        let at = |tl: f64| super::flow::Flow {
            time_lag: BTreeMap::from([(Stage::Window, Some(tl))]),
            ..Default::default()
        };
        obs.flow = at(25.0);
        let d = replicas(&v, &obs, &Default::default(), SignedDuration::ZERO, t(0));
        assert_eq!(d.plan.window, Some(1), "25 s is under the 30 s activation");
        obs.flow = at(40.0);
        let d = replicas(&v, &obs, &Default::default(), SignedDuration::ZERO, t(0));
        assert_eq!(d.plan.window, Some(4), "1 × 40 / 10");
        assert!(
            d.events[0]
                .note
                .contains("up from 1 to 4 (time lag 40s, target 10s)"),
            "{}",
            d.events[0].note
        );
    }

    #[test]
    fn a_scale_down_waits_for_the_cooldown_and_records_its_start() {
        let v = validate("p", &Naming::legacy("p"), &spec()).expect("valid");
        let obs = observed(&v, Some(0), Some(0));
        let d = replicas(
            &v,
            &obs,
            &Default::default(),
            SignedDuration::from_secs(300),
            t(1000),
        );
        // join has 2 replicas and no lag: wants 1, holds 2 during the cooldown.
        assert_eq!(d.plan.join, Some(2));
        assert!(d.events.is_empty());
        let since = d.stages[&Stage::Join].scale_down_pending_since.clone();
        assert_eq!(since.as_deref(), Some(t(1000).to_string().as_str()));
        assert!(d.scaling[0].contains("holding 2 until the 300s cooldown ends"));
        // Cooldown over: scales down.
        let previous = SensorPipelineStatus {
            join: d.stages.get(&Stage::Join).cloned(),
            ..Default::default()
        };
        let later = replicas(&v, &obs, &previous, SignedDuration::from_secs(300), t(1300));
        assert_eq!(later.plan.join, Some(1));
        assert_eq!(later.events[0].reason, "ScaledDown");
    }

    #[test]
    fn suspend_sets_every_planned_stage_to_zero_in_both_scaling_modes() {
        for mode in [ScalingMode::Planner, ScalingMode::External] {
            let mut s = spec();
            s.suspend = true;
            s.processors.scaling_mode = mode;
            let v = validate("p", &Naming::legacy("p"), &s).expect("valid");
            let obs = observed(&v, Some(99_000), Some(99_000));
            let d = replicas(&v, &obs, &Default::default(), SignedDuration::ZERO, t(0));
            assert_eq!(
                d.plan,
                ReplicaPlan {
                    window: Some(0),
                    join: Some(0)
                }
            );
            assert!(d.events.is_empty());
            assert_eq!(d.stages[&Stage::Join].replicas, 0);
            assert_eq!(d.stages[&Stage::Join].scale_down_pending_since, None);
        }
    }

    #[test]
    fn external_scaling_leaves_replicas_unset_and_reports_the_deployments() {
        let mut s = spec();
        s.processors.scaling_mode = ScalingMode::External;
        let v = validate("p", &Naming::legacy("p"), &s).expect("valid");
        let obs = observed(&v, Some(99_000), None);
        let d = replicas(&v, &obs, &Default::default(), SignedDuration::ZERO, t(0));
        assert_eq!(d.plan, ReplicaPlan::default());
        assert!(d.events.is_empty() && d.scaling.is_empty());
        assert_eq!(d.stages[&Stage::Join].replicas, 2, "from the Deployment");
        assert_eq!(d.stages[&Stage::Join].lag, None);
        assert_eq!(d.stages[&Stage::Join].scale_down_pending_since, None);
    }

    #[test]
    fn cooldown_start_rounds_up_to_whole_seconds() {
        let t = |s: i64, ns: i32| Timestamp::new(s, ns).expect("time");
        assert_eq!(cooldown_start_rfc3339(t(100, 0)), t(100, 0).to_string());
        assert_eq!(cooldown_start_rfc3339(t(100, 1)), t(101, 0).to_string());
        assert_eq!(
            cooldown_start_rfc3339(t(100, 999_999_999)),
            t(101, 0).to_string()
        );
        // Read back, the cooldown never starts before the moment it was decided.
        let back: Timestamp = cooldown_start_rfc3339(t(100, 500)).parse().expect("time");
        assert!(back >= t(100, 500));
    }
}
