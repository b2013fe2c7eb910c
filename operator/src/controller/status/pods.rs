//! Pure reading of pod status: why a stage's pods are not ready, and which reason makes the
//! pipeline `Degraded`.
//!
//! ```text
//!   Pod.status (conditions, containerStatuses, initContainerStatuses)
//!       ─▶ problem()  ─▶ PodProblem { reason, message, last termination, restarts }
//!   PodProblems of every stage ─▶ degraded() ─▶ (reason, message) for the Degraded condition
//! ```
//!
//! Where the words come from: the kubelet sets a container's `state.waiting.reason`
//! (`ContainerCreating`, `CrashLoopBackOff`, `ErrImagePull`, `ImagePullBackOff`,
//! `CreateContainerConfigError`, ...) and `lastState.terminated.reason` (`OOMKilled`, `Error`,
//! `Completed`); the scheduler sets the `PodScheduled` condition to `False` with reason
//! `Unschedulable`.

use k8s_openapi::api::core::v1::{ContainerStatus, Pod};

use crate::crd::PodProblem;

/// Most pods listed per stage in status.
pub const MAX_LISTED: usize = 5;

/// Waiting reasons of a container on its normal way to running: not a problem by themselves.
const ON_ITS_WAY: [&str; 2] = ["ContainerCreating", "PodInitializing"];

fn is_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// The container status that explains the pod best: a waiting one with a reason that is not
/// [`ON_ITS_WAY`] first (init containers before the others), then one that is not ready.
fn worst(containers: &[&ContainerStatus]) -> Option<ContainerStatus> {
    let waiting = |c: &&&ContainerStatus| {
        c.state
            .as_ref()
            .and_then(|s| s.waiting.as_ref())
            .and_then(|w| w.reason.as_deref())
            .is_some_and(|r| !ON_ITS_WAY.contains(&r))
    };
    containers
        .iter()
        .find(waiting)
        .or_else(|| containers.iter().find(|c| !c.ready))
        .map(|c| (*c).clone())
}

/// Why `pod` is not ready; `None` when it is ready (or being deleted).
pub fn problem(pod: &Pod) -> Option<PodProblem> {
    if is_ready(pod) || pod.metadata.deletion_timestamp.is_some() {
        return None;
    }
    let name = pod.metadata.name.clone().unwrap_or_default();
    let status = pod.status.clone().unwrap_or_default();
    let containers: Vec<&ContainerStatus> = status
        .init_container_statuses
        .iter()
        .flatten()
        .chain(status.container_statuses.iter().flatten())
        .collect();
    if let Some(c) = worst(&containers) {
        let state = c.state.clone().unwrap_or_default();
        let last = c.last_state.as_ref().and_then(|s| s.terminated.as_ref());
        let (reason, message) = if let Some(w) = &state.waiting {
            (w.reason.clone(), w.message.clone())
        } else if let Some(t) = &state.terminated {
            (t.reason.clone(), t.message.clone())
        } else {
            (None, None)
        };
        return Some(PodProblem {
            pod: name,
            container: Some(c.name.clone()),
            reason: reason.unwrap_or_else(|| "NotReady".to_owned()),
            message: message.unwrap_or_default(),
            last_termination_reason: last.and_then(|t| t.reason.clone()),
            last_exit_code: last.map(|t| t.exit_code),
            restarts: c.restart_count,
        });
    }
    // No container status yet: the pod's own condition (unschedulable) or its phase.
    let unscheduled = status
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == "PodScheduled" && c.status == "False");
    let (reason, message) = match unscheduled {
        Some(c) => (
            c.reason
                .clone()
                .unwrap_or_else(|| "Unschedulable".to_owned()),
            c.message.clone().unwrap_or_default(),
        ),
        None => (
            status
                .phase
                .clone()
                .unwrap_or_else(|| "NotReady".to_owned()),
            status.message.clone().unwrap_or_default(),
        ),
    };
    Some(PodProblem {
        pod: name,
        container: None,
        reason,
        message,
        last_termination_reason: None,
        last_exit_code: None,
        restarts: 0,
    })
}

/// The not-ready pods of a stage, by name, at most [`MAX_LISTED`].
pub fn problems(pods: &[Pod]) -> Vec<PodProblem> {
    let mut out: Vec<PodProblem> = pods.iter().filter_map(problem).collect();
    out.sort_by(|a, b| a.pod.cmp(&b.pod));
    out.truncate(MAX_LISTED);
    out
}

/// The reason a problem makes the pipeline `Degraded`, `None` for a pod merely on its way
/// (scheduled and starting, no restart yet). A last termination `OOMKilled` wins over the
/// waiting reason (`CrashLoopBackOff` after an OOM kill says `OOMKilled`); a crash loop
/// after any other termination says `CrashLoopBackOff`.
pub fn degraded_reason(p: &PodProblem) -> Option<String> {
    if p.last_termination_reason.as_deref() == Some("OOMKilled") {
        return Some("OOMKilled".to_owned());
    }
    let benign = ON_ITS_WAY.contains(&p.reason.as_str())
        || ["Pending", "NotReady", "Running"].contains(&p.reason.as_str());
    if !benign {
        return Some(p.reason.clone());
    }
    if p.restarts > 0 {
        return Some(
            p.last_termination_reason
                .clone()
                .unwrap_or_else(|| "Restarting".to_owned()),
        );
    }
    None
}

/// One line on a problem, for condition messages: `<stage> pod <pod> [container <c>]:
/// <reason> (<message>) [, last terminated <reason> (exit <code>)] [, <n> restarts]`.
pub fn describe(stage: &str, p: &PodProblem) -> String {
    let mut s = format!("{stage} pod {}", p.pod);
    if let Some(c) = &p.container {
        s.push_str(&format!(" container {c}"));
    }
    s.push_str(&format!(": {}", p.reason));
    if !p.message.is_empty() {
        let short: String = p.message.chars().take(200).collect();
        s.push_str(&format!(" ({short})"));
    }
    if let Some(r) = &p.last_termination_reason {
        s.push_str(&format!(", last terminated {r}"));
        if let Some(code) = p.last_exit_code {
            s.push_str(&format!(" (exit {code})"));
        }
    }
    if p.restarts > 0 {
        s.push_str(&format!(", {} restarts", p.restarts));
    }
    s
}

/// The `Degraded` reason and message from the stages' problems (`(stage name, problems)`):
/// the first problem with a [`degraded_reason`], in stage order, its message naming every
/// degrading pod (at most three); `None` when no pod degrades the pipeline.
pub fn degraded(stages: &[(&str, &[PodProblem])]) -> Option<(String, String)> {
    let bad: Vec<(String, String)> = stages
        .iter()
        .flat_map(|(stage, ps)| {
            ps.iter()
                .filter_map(move |p| degraded_reason(p).map(|r| (r, describe(stage, p))))
        })
        .collect();
    let (reason, _) = bad.first()?.clone();
    let mut lines: Vec<String> = bad.iter().take(3).map(|(_, l)| l.clone()).collect();
    if bad.len() > 3 {
        lines.push(format!("and {} more", bad.len() - 3));
    }
    Some((reason, lines.join("; ")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{
        ContainerState, ContainerStateTerminated, ContainerStateWaiting, PodCondition, PodStatus,
    };
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn pod(name: &str, status: PodStatus) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some(name.into()),
                ..Default::default()
            },
            spec: None,
            status: Some(status),
        }
    }

    fn waiting(reason: &str, restarts: i32, last: Option<(&str, i32)>) -> ContainerStatus {
        ContainerStatus {
            name: "window-processor".into(),
            ready: false,
            restart_count: restarts,
            state: Some(ContainerState {
                waiting: Some(ContainerStateWaiting {
                    reason: Some(reason.into()),
                    message: Some(format!("{reason} message")),
                }),
                ..Default::default()
            }),
            last_state: last.map(|(r, code)| ContainerState {
                terminated: Some(ContainerStateTerminated {
                    reason: Some(r.into()),
                    exit_code: code,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn with(c: ContainerStatus) -> PodStatus {
        PodStatus {
            phase: Some("Running".into()),
            container_statuses: Some(vec![c]),
            ..Default::default()
        }
    }

    #[test]
    fn reads_the_kubelets_reasons() {
        let p = problem(&pod("a", with(waiting("ImagePullBackOff", 0, None)))).expect("p");
        assert_eq!(p.reason, "ImagePullBackOff");
        assert_eq!(p.container.as_deref(), Some("window-processor"));
        assert_eq!(degraded_reason(&p).as_deref(), Some("ImagePullBackOff"));
        let p = problem(&pod(
            "b",
            with(waiting("CrashLoopBackOff", 4, Some(("Error", 1)))),
        ))
        .expect("p");
        assert_eq!(
            (p.reason.as_str(), p.restarts, p.last_exit_code),
            ("CrashLoopBackOff", 4, Some(1))
        );
        assert_eq!(degraded_reason(&p).as_deref(), Some("CrashLoopBackOff"));
        assert_eq!(
            describe("window", &p),
            "window pod b container window-processor: CrashLoopBackOff (CrashLoopBackOff message), last terminated Error (exit 1), 4 restarts"
        );
        let p = problem(&pod(
            "c",
            with(waiting("CrashLoopBackOff", 2, Some(("OOMKilled", 137)))),
        ))
        .expect("p");
        assert_eq!(degraded_reason(&p).as_deref(), Some("OOMKilled"));
    }

    #[test]
    fn a_pod_on_its_way_is_listed_but_does_not_degrade() {
        let p = problem(&pod("a", with(waiting("ContainerCreating", 0, None)))).expect("p");
        assert_eq!(degraded_reason(&p), None);
        let pending = problem(&pod(
            "b",
            PodStatus {
                phase: Some("Pending".into()),
                ..Default::default()
            },
        ))
        .expect("p");
        assert_eq!(
            (pending.reason.as_str(), pending.container.as_deref()),
            ("Pending", None)
        );
        assert_eq!(degraded_reason(&pending), None);
        let unschedulable = problem(&pod(
            "c",
            PodStatus {
                phase: Some("Pending".into()),
                conditions: Some(vec![PodCondition {
                    type_: "PodScheduled".into(),
                    status: "False".into(),
                    reason: Some("Unschedulable".into()),
                    message: Some("0/3 nodes are available".into()),
                    ..Default::default()
                }]),
                ..Default::default()
            },
        ))
        .expect("p");
        assert_eq!(
            degraded_reason(&unschedulable).as_deref(),
            Some("Unschedulable")
        );
    }

    #[test]
    fn ready_pods_are_not_listed_and_the_list_is_bounded_and_sorted() {
        let mut ready = with(waiting("CrashLoopBackOff", 1, None));
        ready.conditions = Some(vec![PodCondition {
            type_: "Ready".into(),
            status: "True".into(),
            ..Default::default()
        }]);
        assert_eq!(problem(&pod("r", ready)), None);
        let pods: Vec<Pod> = (0..8)
            .rev()
            .map(|i| pod(&format!("p{i}"), with(waiting("ErrImagePull", 0, None))))
            .collect();
        let ps = problems(&pods);
        assert_eq!(ps.len(), MAX_LISTED);
        assert_eq!(ps[0].pod, "p0");
        let (reason, message) = degraded(&[("window", &ps), ("join", &[])]).expect("degraded");
        assert_eq!(reason, "ErrImagePull");
        assert!(message.ends_with("and 2 more"), "{message}");
        assert_eq!(degraded(&[("window", &[])]), None);
    }
}
