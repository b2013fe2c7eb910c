//! Least privilege for the knobs (issue 26), against a REAL kube-apiserver and Apache Kafka
//! broker (run through `tests/operator/run.sh`; see `scenarios.rs` for the environment).
//!
//! Each escalation a pipeline's manifest could ask for is refused: a `kafka.properties` key
//! that redirects the connection by the CRD's CEL rules at apply; an image of another
//! repository, a named ServiceAccount and a `hostPath` volume by the operator under its
//! default policy (`Ready=False`, reason `PolicyViolation`, a Warning Event, nothing applied).
//! A compliant pipeline still reconciles, a pipeline that becomes refused keeps its
//! Deployments as they were, and a second operator started with a wider policy accepts what
//! the default refuses: the policy is the operator's setting, not the manifest's. (The chart's
//! `ValidatingAdmissionPolicy` is tried by run.sh with the chart installed.)

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

// This suite uses only some of the helpers' re-exports.
#[allow(unused_imports)]
mod common;

use common::*;

fn pod_spec(d: &Deployment) -> k8s_openapi::api::core::v1::PodSpec {
    d.spec.clone().unwrap().template.spec.unwrap()
}

/// The escalating specs, each with its pipeline name (`<prefix>-<what>`: topic names are
/// global on the broker) and the text its refusal must contain.
fn escalations(prefix: &str) -> Vec<(String, Value, &'static str)> {
    vec![
        (
            format!("{prefix}-image"),
            json!({"processors": {"image": "sensorflow/sensorflow-evil:0.1.0"}}),
            "processors.image: repository 'sensorflow/sensorflow-evil' (of 'sensorflow/sensorflow-evil:0.1.0') is not allowed by this operator (policy allowedImageRepositories: sensorflow/sensorflow)",
        ),
        (
            format!("{prefix}-sa"),
            json!({"processors": {"join": {"podTemplate": {"serviceAccountName": "default"}}}}),
            "processors.join.podTemplate.serviceAccountName: 'default' is refused",
        ),
        (
            format!("{prefix}-hostpath"),
            json!({"processors": {"window": {"podTemplate": {
                "volumes": [{"name": "root", "hostPath": {"path": "/"}}],
                "volumeMounts": [{"name": "root", "mountPath": "/host"}]}}}}),
            "processors.window.podTemplate.volumes: 'root' is a hostPath volume, which this operator does not allow (policy allowedVolumeTypes: configMap, csi, emptyDir, persistentVolumeClaim, projected, secret)",
        ),
    ]
}

fn small(extra: Value) -> Value {
    let mut s = spec(json!({"topics": {"partitions": 2},
        "processors": {"window": {"maxReplicas": 2}, "join": {"maxReplicas": 2}}}));
    merge(&mut s, extra);
    s
}

#[tokio::test]
#[ignore = "needs API server; run tests/operator/run.sh"]
async fn kafka_properties_that_redirect_the_connection_are_refused_at_apply() {
    let c = client().await;
    let ns = "sf-policy-cel";
    namespace(&c, ns).await;
    for (key, message) in [
        ("bootstrap.servers", "must not set bootstrap.servers"),
        ("metadata.broker.list", "must not set metadata.broker.list"),
        (
            "enable.ssl.certificate.verification",
            "must not set metadata.broker.list, plugin.library.paths, enable.ssl.*",
        ),
        ("plugin.library.paths", "or load code"),
    ] {
        let err = apply_sp(
            &c,
            ns,
            "redirect",
            small(json!({"kafka": {"properties": {key: "evil.example:9092"}}})),
        )
        .await
        .expect_err(key);
        let kube::Error::Api(status) = err else {
            panic!("{key}: {err}")
        };
        assert_eq!(status.code, 422, "{key}: {status:?}");
        assert!(
            status.message.contains(message),
            "{key}: {}",
            status.message
        );
    }
    assert!(get_sp(&c, ns, "redirect").await.is_none());
}

#[tokio::test]
#[ignore = "needs API server; run tests/operator/run.sh"]
async fn the_default_policy_refuses_each_escalation_and_reconciles_a_compliant_pipeline() {
    let c = client().await;
    let ns = "sf-policy";
    namespace(&c, ns).await;
    let _op = Operator::start("policy", 18210, ns);

    // Compliant: the default image and volumes of allowed types.
    apply_sp(
        &c,
        ns,
        "pol-ok",
        small(json!({"processors": {"window": {"podTemplate": {
            "volumes": [{"name": "scratch", "emptyDir": {}},
                        {"name": "conf", "configMap": {"name": "extra-conf"}}],
            "volumeMounts": [{"name": "scratch", "mountPath": "/var/scratch"}]}}}})),
    )
    .await
    .unwrap();

    for (name, extra, message) in escalations("pol") {
        let name = name.as_str();
        apply_sp(&c, ns, name, small(extra)).await.unwrap();
        let sp = wait_condition(&c, ns, name, "Ready", "False").await;
        let sp = if condition(&sp, "Ready").unwrap().1 == "PolicyViolation" {
            sp
        } else {
            wait_for(
                &format!("{name}: Ready reason PolicyViolation"),
                Duration::from_secs(30),
                || async {
                    let sp = get_sp(&c, ns, name).await?;
                    (condition(&sp, "Ready")?.1 == "PolicyViolation").then_some(sp)
                },
            )
            .await
        };
        let st = sp.status.clone().unwrap();
        assert_eq!(st.phase.as_deref(), Some("Refused"), "{name}");
        let ready = st.conditions.iter().find(|c| c.type_ == "Ready").unwrap();
        assert!(ready.message.contains(message), "{name}: {}", ready.message);
        assert_eq!(
            condition(&sp, "Degraded").unwrap(),
            ("True".into(), "PolicyViolation".into())
        );
        wait_event_matching(
            &c,
            ns,
            &format!("{name}: a PolicyViolation Warning"),
            "PolicyViolation",
            Duration::from_secs(30),
            |e| {
                e.type_.as_deref() == Some("Warning")
                    && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name)
                    && e.note.as_deref().is_some_and(|n| n.contains(message))
            },
        )
        .await;
        // Nothing applied: no Deployment, no topics.
        for stage in ["window", "join"] {
            assert!(
                deployment(&c, ns, &format!("{name}-{stage}"))
                    .await
                    .is_none(),
                "{name}-{stage} created"
            );
        }
        assert!(
            broker_partitions(&topics_of(ns, name)).is_empty(),
            "{name}: topics created"
        );
    }

    // The compliant one reconciled, with its volumes.
    wait_condition(&c, ns, "pol-ok", "TopicsReady", "True").await;
    let w = wait_for("pol-ok-window", Duration::from_secs(30), || async {
        deployment(&c, ns, "pol-ok-window").await
    })
    .await;
    let pod = pod_spec(&w);
    assert_eq!(
        pod.containers[0].image.as_deref(),
        Some("sensorflow/sensorflow:0.1.0")
    );
    let vols: Vec<String> = pod
        .volumes
        .unwrap()
        .iter()
        .map(|v| v.name.clone())
        .collect();
    assert!(
        vols.contains(&"scratch".to_owned()) && vols.contains(&"conf".to_owned()),
        "{vols:?}"
    );
    assert_eq!(
        pod.service_account_name.as_deref(),
        Some("pol-ok-processor")
    );

    // It becomes refused (a hostPath volume added): reported, and its Deployment keeps the
    // spec it was built from (no hostPath reaches the cluster), however long we look.
    let before = config_hash(&w);
    apply_sp(
        &c,
        ns,
        "pol-ok",
        small(json!({"processors": {"window": {"podTemplate": {
            "volumes": [{"name": "scratch", "emptyDir": {}},
                        {"name": "conf", "configMap": {"name": "extra-conf"}},
                        {"name": "root", "hostPath": {"path": "/"}}],
            "volumeMounts": [{"name": "scratch", "mountPath": "/var/scratch"}]}}}})),
    )
    .await
    .unwrap();
    wait_for(
        "pol-ok: PolicyViolation",
        Duration::from_secs(30),
        || async {
            let sp = get_sp(&c, ns, "pol-ok").await?;
            (condition(&sp, "Ready")? == ("False".into(), "PolicyViolation".into())).then_some(())
        },
    )
    .await;
    // Several resyncs' worth (the operator resyncs every 2 s).
    tokio::time::sleep(Duration::from_secs(6)).await;
    let w = deployment(&c, ns, "pol-ok-window").await.unwrap();
    assert_eq!(config_hash(&w), before);
    assert!(
        pod_spec(&w)
            .volumes
            .unwrap()
            .iter()
            .all(|v| v.host_path.is_none())
    );
    // One Warning for this generation, not one per resync: no hot loop.
    let warnings = events(&c, ns, "PolicyViolation").await;
    let for_ok: Vec<_> = warnings
        .iter()
        .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("pol-ok"))
        .collect();
    assert_eq!(for_ok.len(), 1, "{for_ok:#?}");
    assert!(for_ok[0].series.is_none(), "{:#?}", for_ok[0]);
}

#[tokio::test]
#[ignore = "needs API server; run tests/operator/run.sh"]
async fn a_wider_policy_comes_from_the_operators_flags() {
    let c = client().await;
    let ns = "sf-policy-wide";
    namespace(&c, ns).await;
    let _op = Operator::start_with(
        "policy-wide",
        18211,
        ns,
        ns,
        &[
            "--allowed-image-repositories",
            "sensorflow/sensorflow,sensorflow/sensorflow-evil",
            "--allow-service-account-name=true",
            "--allowed-volume-types",
            "emptyDir,hostPath",
        ],
    );
    // Every escalation the default policy refuses is applied by this operator.
    for (name, extra, _) in escalations("wide") {
        apply_sp(&c, ns, &name, small(extra)).await.unwrap();
    }
    for (name, _, _) in escalations("wide") {
        wait_condition(&c, ns, &name, "TopicsReady", "True").await;
        wait_for(
            &format!("{name}-window"),
            Duration::from_secs(30),
            || async { deployment(&c, ns, &format!("{name}-window")).await },
        )
        .await;
    }
    let image = pod_spec(&deployment(&c, ns, "wide-image-window").await.unwrap()).containers[0]
        .image
        .clone();
    assert_eq!(image.as_deref(), Some("sensorflow/sensorflow-evil:0.1.0"));
    let join = wait_for("wide-sa-join", Duration::from_secs(30), || async {
        deployment(&c, ns, "wide-sa-join").await
    })
    .await;
    assert_eq!(
        pod_spec(&join).service_account_name.as_deref(),
        Some("default")
    );
    let w = deployment(&c, ns, "wide-hostpath-window").await.unwrap();
    assert!(
        pod_spec(&w)
            .volumes
            .unwrap()
            .iter()
            .any(|v| v.host_path.is_some())
    );

    // What this policy still refuses: a configMap volume (not in its list).
    apply_sp(
        &c,
        ns,
        "wide-cm",
        small(json!({"processors": {"window": {"podTemplate": {
            "volumes": [{"name": "conf", "configMap": {"name": "x"}}]}}}})),
    )
    .await
    .unwrap();
    let sp = wait_for(
        "wide-cm: PolicyViolation",
        Duration::from_secs(30),
        || async {
            let sp = get_sp(&c, ns, "wide-cm").await?;
            (condition(&sp, "Ready")?.1 == "PolicyViolation").then_some(sp)
        },
    )
    .await;
    let msg = &sp.status.unwrap().conditions[0].message;
    assert!(
        msg.contains("'conf' is a configMap volume, which this operator does not allow (policy allowedVolumeTypes: emptyDir, hostPath)"),
        "{msg}"
    );
}
