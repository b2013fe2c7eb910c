//! Tenancy scenarios against a REAL kube-apiserver and a real Apache Kafka broker (run through
//! `tests/operator/run.sh`, like `scenarios.rs`): pipelines of the same name in two namespaces
//! never share a topic or a consumer group, and deleting one leaves the other's data; the later
//! of two pipelines that would manage the same topics is refused with a condition naming the
//! other; a topic the pipeline only reads (an explicitly named input) is never created,
//! re-configured or deleted.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

#[allow(unused_imports)]
mod common;

use common::*;

/// The high watermark of partition `p` of `topic` (records ever written there).
fn high_watermark(topic: &str, p: i32) -> i64 {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .create()
        .unwrap();
    consumer
        .fetch_watermarks(topic, p, Duration::from_secs(10))
        .unwrap()
        .1
}

/// Writes one record to partition 0 of `topic` and waits for its acknowledgement.
fn produce_one(topic: &str) {
    let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .create()
        .unwrap();
    producer
        .send(BaseRecord::to(topic).partition(0).key("c1").payload("v"))
        .map_err(|(e, _)| e)
        .unwrap();
    producer.flush(Duration::from_secs(10)).unwrap();
}

async fn delete_sp(c: &Client, ns: &str, name: &str) {
    sp_api(c, ns)
        .delete(name, &DeleteParams::default())
        .await
        .unwrap();
    wait_for(
        &format!("{ns}/{name} gone"),
        Duration::from_secs(60),
        || async { get_sp(c, ns, name).await.is_none().then_some(()) },
    )
    .await;
}

#[tokio::test]
#[ignore = "needs API server; run tests/operator/run.sh"]
async fn same_named_pipelines_in_two_namespaces_are_independent_and_deleting_one_keeps_the_other() {
    let c = client().await;
    let (a, b) = ("sf-ten-a", "sf-ten-b");
    namespace(&c, a).await;
    namespace(&c, b).await;
    let _op = Operator::start_with("tenancy-two", 18210, &format!("{a},{b}"), a, &[]);
    let demo = json!({"topics": {"partitions": 2, "deletionPolicy": "Delete"},
        "processors": {"window": {"maxReplicas": 2}, "join": {"maxReplicas": 2}}});
    apply_sp(&c, a, "demo", spec(demo.clone())).await.unwrap();
    apply_sp(&c, b, "demo", spec(demo)).await.unwrap();
    for ns in [a, b] {
        let sp = wait_condition(&c, ns, "demo", "TopicsReady", "True").await;
        let names = sp
            .status
            .unwrap()
            .default_names
            .expect("defaultNames recorded");
        assert_eq!(names.topic_prefix, format!("{ns}.demo."));
        assert_eq!(
            broker_partitions(&topics_of(ns, "demo")).len(),
            9,
            "{ns}'s own nine topics"
        );
        // Its own consumer groups and transactional ids.
        let cm: ConfigMap = Api::namespaced(c.clone(), ns)
            .get("demo-window")
            .await
            .unwrap();
        let data = cm.data.unwrap();
        assert_eq!(data["SF_GROUP_ID"], format!("{ns}.demo-window"));
        assert_eq!(
            data["SF_TRANSACTIONAL_ID_PREFIX"],
            format!("{ns}.demo-window")
        );
    }
    // b's data, then a is deleted (deletionPolicy Delete): a's topics go, b's stay with it.
    let b_sz = format!("{b}.demo.sz");
    produce_one(&b_sz);
    assert_eq!(high_watermark(&b_sz, 0), 1);
    delete_sp(&c, a, "demo").await;
    wait_for("a's topics deleted", Duration::from_secs(60), || async {
        broker_partitions(&topics_of(a, "demo"))
            .is_empty()
            .then_some(())
    })
    .await;
    assert_eq!(broker_partitions(&topics_of(b, "demo")).len(), 9);
    assert_eq!(high_watermark(&b_sz, 0), 1, "b's record survives");
    let b_sp = get_sp(&c, b, "demo").await.unwrap();
    assert_eq!(condition(&b_sp, "TopicsReady").unwrap().0, "True");
    delete_sp(&c, b, "demo").await;
}

#[tokio::test]
#[ignore = "needs API server; run tests/operator/run.sh"]
async fn a_pipeline_claiming_another_pipelines_topics_is_refused_with_a_condition_naming_it() {
    let c = client().await;
    let (a, b) = ("sf-ten-owner", "sf-ten-thief");
    namespace(&c, a).await;
    namespace(&c, b).await;
    let _op = Operator::start_with("tenancy-conflict", 18211, &format!("{a},{b}"), a, &[]);
    let small = json!({"window": {"maxReplicas": 2}, "join": {"maxReplicas": 2}});
    apply_sp(
        &c,
        a,
        "keep",
        spec(json!({"topics": {"partitions": 2}, "processors": small})),
    )
    .await
    .unwrap();
    wait_condition(&c, a, "keep", "TopicsReady", "True").await;
    // Created later, with a's topic names (its prefix) and its consumer groups.
    apply_sp(
        &c,
        b,
        "thief",
        spec(
            json!({"topics": {"partitions": 2, "prefix": format!("{a}.keep.")},
                    "kafka": {"groupPrefix": format!("{a}.keep")}, "processors": small}),
        ),
    )
    .await
    .unwrap();
    let sp = wait_for("thief refused", Duration::from_secs(60), || async {
        let sp = get_sp(&c, b, "thief").await?;
        (condition(&sp, "Ready")?.1 == "Conflict").then_some(sp)
    })
    .await;
    let ready = sp
        .status
        .as_ref()
        .unwrap()
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready")
        .unwrap()
        .clone();
    assert!(ready.message.contains(&format!("{a}/keep")), "{ready:?}");
    assert!(ready.message.contains(&format!("{a}.keep.sx")), "{ready:?}");
    assert!(
        ready.message.contains(&format!("{a}.keep-window")),
        "{ready:?}"
    );
    let ev = wait_events(&c, b, "Conflict", Duration::from_secs(30)).await;
    assert!(ev.iter().all(|e| e.type_.as_deref() == Some("Warning")));
    assert!(
        deployment(&c, b, "thief-window").await.is_none(),
        "a refused pipeline gets no Deployments"
    );
    // The earlier pipeline is untouched.
    let keep = get_sp(&c, a, "keep").await.unwrap();
    assert_eq!(condition(&keep, "TopicsReady").unwrap().0, "True");
    // Once the owner is gone, the names are free and the later pipeline proceeds.
    delete_sp(&c, a, "keep").await;
    wait_condition(&c, b, "thief", "TopicsReady", "True").await;
    assert!(deployment(&c, b, "thief-window").await.is_some());
    delete_sp(&c, b, "thief").await;
}

#[tokio::test]
#[ignore = "needs API server; run tests/operator/run.sh"]
async fn an_upstream_input_topic_is_only_read_never_created_altered_or_deleted() {
    let c = client().await;
    let ns = "sf-ten-upstream";
    namespace(&c, ns).await;
    let _op = Operator::start("tenancy-upstream", 18212, ns);
    let small = json!({"window": {"maxReplicas": 2}, "join": {"maxReplicas": 2}});
    // The upstream team's SX: 2 partitions, its own retention.
    let upstream = format!("{ns}-team-sx");
    create_topic_outside(&upstream, 2).await;
    {
        use rdkafka::admin::{AdminClient, AdminOptions, AlterConfig, ResourceSpecifier};
        let admin: AdminClient<rdkafka::client::DefaultClientContext> = ClientConfig::new()
            .set("bootstrap.servers", bootstrap())
            .create()
            .unwrap();
        let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
        let alter =
            AlterConfig::new(ResourceSpecifier::Topic(&upstream)).set("retention.ms", "3600000");
        let r = tokio::time::timeout(
            Duration::from_secs(30),
            admin.alter_configs(&[alter], &opts),
        )
        .await
        .expect("AlterConfigs timed out")
        .unwrap();
        assert!(r.iter().all(Result::is_ok), "{r:?}");
    }
    apply_sp(
        &c,
        ns,
        "reader",
        spec(
            json!({"topics": {"partitions": 2, "sx": upstream, "retentionMs": 86400000,
                               "deletionPolicy": "Delete"}, "processors": small}),
        ),
    )
    .await
    .unwrap();
    let sp = wait_condition(&c, ns, "reader", "TopicConfigApplied", "True").await;
    assert_eq!(condition(&sp, "TopicsReady").unwrap().0, "True");
    assert!(!created_topics(&sp).contains(&upstream));
    // The pipeline's own topics have its retention; the upstream topic keeps its owner's.
    let (own, _) = broker_topic_config(&format!("{ns}.reader.sy")).await;
    assert_eq!(own["retention.ms"], "86400000");
    let (up, _) = broker_topic_config(&upstream).await;
    assert_eq!(
        up["retention.ms"], "3600000",
        "upstream topic re-configured"
    );

    // A verify-only input that does not exist is waited for, not created.
    let absent = format!("{ns}-not-there");
    apply_sp(
        &c,
        ns,
        "waiting",
        spec(json!({"topics": {"partitions": 2, "sz": absent}, "processors": small})),
    )
    .await
    .unwrap();
    let sp = wait_for("TopicMissing", Duration::from_secs(60), || async {
        let sp = get_sp(&c, ns, "waiting").await?;
        (condition(&sp, "TopicsReady")? == ("False".into(), "TopicMissing".into())).then_some(sp)
    })
    .await;
    assert!(
        sp.status
            .unwrap()
            .conditions
            .iter()
            .any(|c| c.message.contains(&absent)),
        "the missing topic is named"
    );
    assert!(broker_partitions(std::slice::from_ref(&absent)).is_empty());

    // Deleting the pipeline (deletionPolicy Delete) deletes its own topics, never the upstream.
    delete_sp(&c, ns, "reader").await;
    wait_for(
        "reader's topics deleted",
        Duration::from_secs(60),
        || async {
            broker_partitions(&[format!("{ns}.reader.sy")])
                .is_empty()
                .then_some(())
        },
    )
    .await;
    assert_eq!(
        broker_partitions(std::slice::from_ref(&upstream)).get(&upstream),
        Some(&2),
        "upstream topic deleted"
    );
    delete_sp(&c, ns, "waiting").await;
}
