//! Status scenarios against a REAL kube-apiserver and a real Apache Kafka broker (run through
//! `tests/operator/run.sh`, like `scenarios.rs`): the status says why a stage is not ready
//! (`ImagePullBackOff`, `CrashLoopBackOff`, `OOMKilled` in `status.<stage>.notReadyPods` and as
//! the `Degraded` reason), and a stage scaled on time lag does not scale up below its
//! activation threshold, then does.
//!
//! The suite's control plane (tests/cluster/control-plane.sh) runs kube-apiserver and
//! kube-controller-manager but no scheduler and no kubelet: the ReplicaSet controller creates
//! the processors' pods, which then stay `Pending` and never run. So these scenarios write a
//! pod's status themselves through the pods' `status` subresource, exactly the fields a
//! kubelet writes (`containerStatuses[].state.waiting.reason`, `lastState.terminated`,
//! `restartCount`). That tests the operator's reading of real pod objects from a real API
//! server; what a kubelet reports for a real crash is covered by the kind e2e suite only in so
//! far as it runs these images. No consumer ever commits here, so the time lag grows with the
//! wall clock while records are written to the input topic.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

#[allow(unused_imports)]
mod common;

use common::*;
use k8s_openapi::api::core::v1::Pod;

/// The pods of `stage` of pipeline `name` (created by the ReplicaSet controller).
async fn stage_pods(c: &Client, ns: &str, name: &str, stage: &str) -> Vec<Pod> {
    Api::<Pod>::namespaced(c.clone(), ns)
        .list(&ListParams::default().labels(&format!(
            "app.kubernetes.io/instance={name},app.kubernetes.io/component={stage}"
        )))
        .await
        .unwrap()
        .items
}

/// Writes what a kubelet would: container `container` of `pod` waiting with `reason`, after
/// `restarts` restarts, the last one ending with `last` (reason, exit code).
async fn set_container_state(
    c: &Client,
    ns: &str,
    pod: &Pod,
    container: &str,
    reason: &str,
    restarts: i32,
    last: Option<(&str, i32)>,
) {
    let image = pod
        .spec
        .as_ref()
        .and_then(|s| s.containers.first())
        .and_then(|c| c.image.clone())
        .unwrap_or_default();
    let mut status = json!({
        "name": container,
        "image": image,
        "imageID": "",
        "ready": false,
        "started": false,
        "restartCount": restarts,
        "state": {"waiting": {"reason": reason, "message": format!("{reason} (written by the test)")}},
    });
    if let Some((r, code)) = last {
        status["lastState"] = json!({"terminated": {
            "reason": r, "exitCode": code,
            "startedAt": "2026-01-01T00:00:00Z", "finishedAt": "2026-01-01T00:00:01Z"}});
    }
    let patch = json!({"status": {
        "phase": "Pending",
        "conditions": [{"type": "Ready", "status": "False", "reason": "ContainersNotReady"}],
        "containerStatuses": [status],
    }});
    Api::<Pod>::namespaced(c.clone(), ns)
        .patch_status(
            &pod.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await
        .unwrap();
}

/// Waits until the pipeline's `Degraded` condition is `True` with `reason`, and returns it.
async fn wait_degraded(c: &Client, ns: &str, name: &str, reason: &str) -> SensorPipeline {
    wait_for(
        &format!("{ns}/{name} Degraded={reason}"),
        Duration::from_secs(60),
        || async {
            let sp = get_sp(c, ns, name).await?;
            (condition(&sp, "Degraded")? == ("True".to_owned(), reason.to_owned())).then_some(sp)
        },
    )
    .await
}

#[tokio::test]
#[ignore = "needs API server; run tests/operator/run.sh"]
async fn status_names_the_reason_a_pod_is_not_ready_and_degraded_says_it() {
    let c = client().await;
    let ns = "sf-status";
    namespace(&c, ns).await;
    let _op = Operator::start("status-pods", 18220, ns);
    apply_sp(
        &c,
        ns,
        "why",
        spec(json!({
            "topics": {"partitions": 2},
            "processors": {"window": {"maxReplicas": 2}, "join": {"maxReplicas": 2}},
        })),
    )
    .await
    .unwrap();
    wait_condition(&c, ns, "why", "TopicsReady", "True").await;
    let (window, join) = wait_for("pods of both stages", Duration::from_secs(60), || async {
        let w = stage_pods(&c, ns, "why", "window").await;
        let j = stage_pods(&c, ns, "why", "join").await;
        (!w.is_empty() && !j.is_empty()).then(|| (w[0].clone(), j[0].clone()))
    })
    .await;
    // Pods that were never scheduled (no scheduler here): listed as Pending, not degrading.
    let sp = wait_for("pending pods listed", Duration::from_secs(60), || async {
        let sp = get_sp(&c, ns, "why").await?;
        let w = sp.status.as_ref()?.window.as_ref()?;
        (!w.not_ready_pods.is_empty()).then_some(sp)
    })
    .await;
    let st = sp.status.as_ref().unwrap();
    let w = st.window.as_ref().unwrap();
    assert_eq!(w.not_ready_pods[0].pod, window.name_any());
    assert_eq!(w.not_ready_pods[0].reason, "Pending");
    assert_eq!((w.replicas, w.ready_replicas), (1, 0));
    assert_eq!(
        condition(&sp, "Degraded"),
        Some(("False".into(), "AsExpected".into()))
    );

    // ImagePullBackOff on the window-processor.
    set_container_state(
        &c,
        ns,
        &window,
        "window-processor",
        "ImagePullBackOff",
        0,
        None,
    )
    .await;
    let sp = wait_degraded(&c, ns, "why", "ImagePullBackOff").await;
    let st = sp.status.as_ref().unwrap();
    assert_eq!(st.phase.as_deref(), Some("Degraded"));
    let p = &st.window.as_ref().unwrap().not_ready_pods[0];
    assert_eq!(
        (p.reason.as_str(), p.container.as_deref()),
        ("ImagePullBackOff", Some("window-processor"))
    );
    let degraded = st
        .conditions
        .iter()
        .find(|c| c.type_ == "Degraded")
        .unwrap();
    assert!(
        degraded.message.contains(&format!(
            "window-processor pod {} container window-processor: ImagePullBackOff",
            window.name_any()
        )),
        "{}",
        degraded.message
    );

    // The window pulls its image now; join-predict crash-loops after exiting with an error.
    set_container_state(
        &c,
        ns,
        &window,
        "window-processor",
        "ContainerCreating",
        0,
        None,
    )
    .await;
    set_container_state(
        &c,
        ns,
        &join,
        "join-predict",
        "CrashLoopBackOff",
        3,
        Some(("Error", 1)),
    )
    .await;
    let sp = wait_degraded(&c, ns, "why", "CrashLoopBackOff").await;
    let st = sp.status.as_ref().unwrap();
    let p = &st.join.as_ref().unwrap().not_ready_pods[0];
    assert_eq!(
        (
            p.reason.as_str(),
            p.last_termination_reason.as_deref(),
            p.last_exit_code,
            p.restarts
        ),
        ("CrashLoopBackOff", Some("Error"), Some(1), 3)
    );
    assert_eq!(
        st.window.as_ref().unwrap().not_ready_pods[0].reason,
        "ContainerCreating",
        "listed, but not what degrades the pipeline"
    );

    // The same crash loop after an OOM kill says OOMKilled.
    set_container_state(
        &c,
        ns,
        &join,
        "join-predict",
        "CrashLoopBackOff",
        4,
        Some(("OOMKilled", 137)),
    )
    .await;
    wait_degraded(&c, ns, "why", "OOMKilled").await;
    // What a user sees (captured for docs/operations.md).
    let out = kubectl(&["-n", ns, "get", "sensorpipelines"], None);
    println!("kubectl get sensorpipelines:\n{out}");
    assert!(
        out.contains("OOMKilled") && out.contains("Degraded"),
        "{out}"
    );
}

/// Writes `n` records to `topic`, spread over its partitions, and waits for them.
fn produce(producer: &ThreadedProducer<DefaultProducerContext>, topic: &str, n: usize) {
    for i in 0..n {
        let key = format!("c{i}");
        producer
            .send(BaseRecord::to(topic).key(&key).payload("v"))
            .map_err(|(e, _)| e)
            .unwrap();
    }
    producer.flush(Duration::from_secs(10)).unwrap();
}

#[tokio::test]
#[ignore = "needs API server; run tests/operator/run.sh"]
async fn time_lag_scaling_holds_below_the_activation_threshold_then_scales_up() {
    let c = client().await;
    let ns = "sf-timelag";
    namespace(&c, ns).await;
    let _op = Operator::start("status-timelag", 18221, ns);
    let activation = 12;
    apply_sp(
        &c,
        ns,
        "tl",
        spec(json!({
            "topics": {"partitions": 4},
            "processors": {"window": {
                "minReplicas": 1, "maxReplicas": 4,
                // Record lag would scale up at the first record; time lag is what counts.
                "lagTargetPerReplica": 1,
                "timeLagTargetSeconds": 1,
                "activationTimeLagSeconds": activation,
            }, "join": {"maxReplicas": 4}},
        })),
    )
    .await
    .unwrap();
    wait_condition(&c, ns, "tl", "TopicsReady", "True").await;
    let sz = format!("{ns}.tl.sz");
    let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .create()
        .unwrap();
    // Input at a steady pace; nothing consumes it (the pods never run), so the time lag grows
    // with the clock. Every status seen is recorded.
    let start = Instant::now();
    let mut seen: Vec<(f64, Option<i64>, i32, Option<i64>)> = Vec::new();
    let mut scaled = None;
    while start.elapsed() < Duration::from_secs(60) {
        produce(&producer, &sz, 20);
        tokio::time::sleep(Duration::from_millis(500)).await;
        let Some(sp) = get_sp(&c, ns, "tl").await else {
            continue;
        };
        let Some(w) = sp.status.as_ref().and_then(|s| s.window.clone()) else {
            continue;
        };
        let d = deployment(&c, ns, "tl-window").await.map(|d| replicas(&d));
        seen.push((
            start.elapsed().as_secs_f64(),
            w.time_lag_seconds,
            d.unwrap_or(-1),
            w.lag,
        ));
        if d.is_some_and(|r| r > 1) {
            scaled = Some(w);
            break;
        }
    }
    eprintln!("(elapsed s, timeLagSeconds, window replicas, record lag): {seen:?}");
    let scaled = scaled.expect("window-processor scaled up on time lag within 60 s");
    // Held while above the target (1 s) and below the threshold, with a record lag far above
    // lagTargetPerReplica.
    let held: Vec<_> = seen
        .iter()
        .filter(|(_, t, r, lag)| {
            t.is_some_and(|t| (2..activation - 3).contains(&t))
                && *r == 1
                && lag.is_some_and(|l| l > 100)
        })
        .collect();
    assert!(
        held.len() >= 3,
        "no scale-up while the time lag was under {activation}s: {seen:?}"
    );
    assert!(
        seen.iter()
            // The status read may be one reconcile (2 s) older than the Deployment read.
            .all(|(_, t, r, _)| *r <= 1 || t.is_some_and(|t| t >= activation - 3)),
        "scaled up below the activation threshold: {seen:?}"
    );
    assert!(
        scaled.records_in_per_second.is_some_and(|r| r > 0.0),
        "{scaled:?}"
    );
    let note = |e: &Event| e.note.clone().unwrap_or_default();
    let events = wait_event_matching(
        &c,
        ns,
        "a ScaledUp Event naming the time lag",
        "ScaledUp",
        Duration::from_secs(30),
        |e| note(e).contains("time lag"),
    )
    .await;
    assert!(
        events.iter().any(|e| note(e).contains("target 1s")),
        "{:?}",
        events.iter().map(note).collect::<Vec<_>>()
    );
}
