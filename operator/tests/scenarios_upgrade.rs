//! The processors' image follows the operator (issue 30), against a REAL kube-apiserver and
//! Apache Kafka broker (run through `tests/operator/run.sh`; see `scenarios.rs` for the
//! environment).
//!
//! A pipeline without `processors.image` is stored without one (the CRD has no default) and its
//! Deployments run the operator's `--processor-image`; an operator started with another image
//! (an upgrade) moves them; a pinned image stays whatever the operator's; an operator whose own
//! image its policy does not allow refuses the unpinned pipeline and says so. The rolling of
//! real pods under load is the e2e suite's (`tests/e2e/test_e2e.py`, scenario 2b).

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

// This suite uses only some of the helpers' re-exports.
#[allow(unused_imports)]
mod common;

use common::*;

const STAGES: [&str; 3] = ["window", "join", "sink"];

fn small() -> Value {
    spec(json!({"topics": {"partitions": 2},
        "processors": {"window": {"maxReplicas": 2}, "join": {"maxReplicas": 2}},
        "sink": {"bucket": "archive"}}))
}

fn image_of(d: &Deployment) -> String {
    d.spec.clone().unwrap().template.spec.unwrap().containers[0]
        .image
        .clone()
        .unwrap()
}

/// Waits until the three Deployments of `ns/name` run `image`.
async fn wait_images(c: &Client, ns: &str, name: &str, image: &str) {
    for stage in STAGES {
        wait_for(
            &format!("{name}-{stage} on {image}"),
            Duration::from_secs(60),
            || async {
                let d = deployment(c, ns, &format!("{name}-{stage}")).await?;
                (image_of(&d) == image).then_some(())
            },
        )
        .await;
    }
}

/// `spec.processors` of the stored object, as the API server returns it.
async fn stored_processors(c: &Client, ns: &str, name: &str) -> Value {
    let o = sp_api(c, ns).get(name).await.unwrap();
    o.data["spec"]["processors"].clone()
}

#[tokio::test]
#[ignore = "needs API server; run tests/operator/run.sh"]
async fn unpinned_processors_follow_the_operators_image_pinned_ones_stay() {
    let c = client().await;
    let ns = "sf-upgrade";
    namespace(&c, ns).await;
    let (old, new, pinned) = (
        "sensorflow/sensorflow:1.0.0-old",
        "sensorflow/sensorflow:1.0.1-new",
        "sensorflow/sensorflow:0.9.0",
    );
    let mut op = Operator::start_with("upgrade-old", 18220, ns, ns, &["--processor-image", old]);
    apply_sp(&c, ns, "up", small()).await.unwrap();
    apply_sp(
        &c,
        ns,
        "up-pinned",
        merge_into(small(), json!({"processors": {"image": pinned}})),
    )
    .await
    .unwrap();
    wait_images(&c, ns, "up", old).await;
    wait_images(&c, ns, "up-pinned", pinned).await;
    // Nothing defaulted into the store: the image is resolved at each reconcile.
    let p = stored_processors(&c, ns, "up").await;
    assert!(p.get("image").is_none(), "stored processors: {p}");
    assert_eq!(
        stored_processors(&c, ns, "up-pinned").await["image"],
        pinned
    );

    // The upgrade: the old operator stops (it releases the Lease), a new one with another
    // image takes over and moves the unpinned pipeline's Deployments, not the pinned one's.
    op.terminate();
    let mut op = Operator::start_with("upgrade-new", 18221, ns, ns, &["--processor-image", new]);
    wait_images(&c, ns, "up", new).await;
    let p = stored_processors(&c, ns, "up").await;
    assert!(p.get("image").is_none(), "the operator wrote an image: {p}");
    // Given a few reconciles (resync 2 s), the pinned pipeline is still where it was.
    tokio::time::sleep(Duration::from_secs(5)).await;
    for stage in STAGES {
        let d = deployment(&c, ns, &format!("up-pinned-{stage}"))
            .await
            .unwrap();
        assert_eq!(image_of(&d), pinned, "up-pinned-{stage}");
    }
    wait_condition(&c, ns, "up", "TopicsReady", "True").await;

    // An operator whose own image its policy does not allow refuses the unpinned pipeline.
    op.terminate();
    let _op = Operator::start_with(
        "upgrade-outside",
        18222,
        ns,
        ns,
        &["--processor-image", "registry.example:5000/sf/sensorflow:2"],
    );
    // (Ready is False already: no kubelet runs the pods here; the reason changes.)
    let ready = wait_for(
        "sf-upgrade/up Ready=False PolicyViolation",
        Duration::from_secs(60),
        || async {
            get_sp(&c, ns, "up")
                .await?
                .status?
                .conditions
                .into_iter()
                .find(|c| c.type_ == "Ready" && c.reason == "PolicyViolation")
        },
    )
    .await;
    assert_eq!(ready.status, "False");
    assert!(
        ready.message.contains(
            "processors.image (unset: the operator's own image): repository 'registry.example:5000/sf/sensorflow' (of 'registry.example:5000/sf/sensorflow:2') is not allowed"
        ),
        "{}",
        ready.message
    );
    // Refused: nothing applied, the Deployments keep the image they were built with.
    wait_images(&c, ns, "up", new).await;
}

fn merge_into(mut a: Value, b: Value) -> Value {
    merge(&mut a, b);
    a
}
