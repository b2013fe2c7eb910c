//! The operator under the CRD of the previous chart version, against a REAL kube-apiserver and
//! a real Apache Kafka broker. Run by `tests/operator/run.sh` (step "status under the previous
//! chart's CRD"), which installs that CRD before this test and this version's CRD after it:
//! not part of `scenarios*`, whose tests need the current CRD.
//!
//! Helm installs `crds/` once and never upgrades them, so this is where a `helm upgrade` (or a
//! new `image.tag`) without operator/README.md#upgrading's CRD step leaves a pipeline. The API
//! server refuses a status apply with a field the installed schema lacks; the operator must still
//! write the status it can (so `kubectl get sp` and `Ready` work) and say what it left out.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

#[allow(unused_imports)]
mod common;

use common::*;

#[tokio::test]
#[ignore = "needs API server with the previous chart's CRD; run tests/operator/run.sh"]
async fn status_under_the_previous_charts_crd_is_written_without_what_it_lacks() {
    let c = client().await;
    let ns = "sf-older-crd";
    namespace(&c, ns).await;
    let _op = Operator::start("older-crd", 18230, ns);
    apply_sp(
        &c,
        ns,
        "old",
        spec(json!({
            "topics": {"partitions": 2},
            "processors": {"window": {"maxReplicas": 2}, "join": {"maxReplicas": 2}},
        })),
    )
    .await
    .unwrap();
    // Written through the fallback: the status the operator computes has fields the previous
    // CRD lacks (`notReadyPods` of the processors' Pending pods, as no scheduler runs here).
    wait_condition(&c, ns, "old", "TopicsReady", "True").await;
    let events = wait_events(
        &c,
        ns,
        "CustomResourceDefinitionOutdated",
        Duration::from_secs(60),
    )
    .await;
    assert_eq!(events.len(), 1, "one Event, not one per write: {events:?}");
    assert_eq!(events[0].type_.as_deref(), Some("Warning"));
    let note = events[0].note.clone().unwrap_or_default();
    assert!(note.contains("status written without .status."), "{note}");
    assert!(note.contains("kubectl apply --server-side"), "{note}");
    wait_for(
        "window replicas in status",
        Duration::from_secs(60),
        || async {
            let sp = sp_api(&c, ns).get("old").await.ok()?;
            (sp.data["status"]["window"]["replicas"] == 1).then_some(())
        },
    )
    .await;

    // Settled: the pruned status equals the stored one, so no write (no reconcile loop on its
    // own status writes).
    let rv = |sp: &DynamicObject| sp.metadata.resource_version.clone();
    let before = rv(&sp_api(&c, ns).get("old").await.unwrap());
    tokio::time::sleep(Duration::from_secs(12)).await;
    let sp = sp_api(&c, ns).get("old").await.unwrap();
    assert_eq!(
        rv(&sp),
        before,
        "the status was written again with nothing new"
    );
    let st = &sp.data["status"];
    assert!(st["phase"].is_string(), "{st}");
    assert_eq!(st["window"]["replicas"], 1, "{st}");
    assert!(st["window"].get("notReadyPods").is_none(), "{st}");
    let conditions: Vec<&str> = st["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["type"].as_str().unwrap())
        .collect();
    for t in ["Ready", "TopicsReady", "ProcessorsReady", "Degraded"] {
        assert!(conditions.contains(&t), "{t} missing: {conditions:?}");
    }
}
