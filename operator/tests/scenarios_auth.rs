//! Kafka authentication the way clusters run it, against a real API server and the test
//! broker's authorizer (`scripts/broker.sh`: StandardAuthorizer, principals without rights but
//! the ACLs a test grants): mutual TLS from a Strimzi KafkaUser TLS Secret, SCRAM from a Strimzi
//! KafkaUser SCRAM Secret (no username key), each with exactly the ACLs of
//! `sensorflow_kafka::acls::pipeline_acls`; and a principal without them, reported as
//! `TopicsReady=False` reason `NotAuthorized` with one Warning Event.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

// The shared helpers re-export what every suite uses; this one needs only some of it.
#[allow(unused_imports)]
mod common;
use common::*;

use sensorflow_kafka::acls::{AclBinding, PipelineAclInput, pipeline_acls};

/// The broker's mutual-TLS listener and client certificate (`DIR/tls.env` of
/// `scripts/broker.sh`, beside the `sasl.env` that `SF_TEST_SASL_ENV` names).
fn tls_env() -> BTreeMap<String, String> {
    let sasl =
        std::env::var("SF_TEST_SASL_ENV").expect("SF_TEST_SASL_ENV (run tests/operator/run.sh)");
    let path = std::path::Path::new(&sasl).with_file_name("tls.env");
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

/// The ACLs of pipeline `name` in `ns` with the default names (topics `<ns>.<name>.<role>`,
/// groups and transactional ids `<ns>.<name>-…`).
fn acls_of(ns: &str, name: &str) -> Vec<AclBinding> {
    pipeline_acls(&PipelineAclInput {
        topic_prefix: format!("{ns}.{name}."),
        group_prefix: format!("{ns}.{name}"),
        named_inputs: vec![],
        exactly_once: false,
    })
}

/// Adds `acls` for `principal` with Kafka's AclCommand over the PLAINTEXT listener (a super
/// user on the test broker).
fn grant(principal: &str, acls: &[AclBinding]) {
    let libs = tls_env()["SENSORFLOW_BROKER_KAFKA_LIBS"].clone();
    for a in acls {
        let out = Command::new("timeout")
            .args(["60", "java", "-Xmx256m", "-XX:TieredStopAtLevel=1", "-cp"])
            .arg(format!("{libs}/*"))
            .arg("org.apache.kafka.tools.AclCommand")
            .args(["--bootstrap-server", &bootstrap()])
            .args(a.acl_command_args(principal))
            .output()
            .expect("java");
        assert!(
            out.status.success(),
            "AclCommand {a} for {principal}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// `<base>-<n>`, unique per run of this binary (topics and ACLs outlive a namespace).
fn run_name(base: &str) -> String {
    format!("{base}-{}", std::process::id())
}

fn pod(d: &Deployment) -> &k8s_openapi::api::core::v1::PodSpec {
    d.spec.as_ref().unwrap().template.spec.as_ref().unwrap()
}

async fn common_env(c: &Client, ns: &str, name: &str) -> BTreeMap<String, String> {
    let api = Api::<ConfigMap>::namespaced(c.clone(), ns);
    let cm = format!("{name}-common");
    wait_for(
        &format!("ConfigMap {ns}/{cm}"),
        Duration::from_secs(30),
        || async { api.get_opt(&cm).await.unwrap() },
    )
    .await
    .data
    .unwrap_or_default()
}

#[tokio::test]
#[ignore = "needs API server; run tests/operator/run.sh"]
async fn strimzi_user_secrets_connect_with_exactly_the_listed_acls() {
    let c = client().await;
    let ns = &format!("sf-auth-strimzi-{}", std::process::id());
    namespace(&c, ns).await;
    let sasl = sasl_env();
    let tls = tls_env();
    let dir = &tls["SENSORFLOW_BROKER_STRIMZI_USER_DIR"];
    let read = |f: &str| std::fs::read_to_string(format!("{dir}/{f}")).unwrap();
    // Strimzi's cluster CA Secret and a KafkaUser TLS Secret (named after the KafkaUser; the
    // p12 keystore and its password beside the PEMs, which the operator must not need).
    apply_secret(
        &c,
        ns,
        "my-cluster-cluster-ca-cert",
        &[("ca.crt", &read("ca.crt"))],
    )
    .await;
    apply_secret(
        &c,
        ns,
        "sensorflow-acl-tls",
        &[
            ("ca.crt", &read("ca.crt")),
            ("user.crt", &read("user.crt")),
            ("user.key", &read("user.key")),
            ("user.p12", "not-read"),
            ("user.password", "not-read"),
        ],
    )
    .await;
    // A KafkaUser SCRAM-SHA-512 Secret: the username is the Secret's name, no username key.
    let (user, pass) = (
        sasl["SENSORFLOW_BROKER_ACL_USERNAME"].as_str(),
        sasl["SENSORFLOW_BROKER_ACL_PASSWORD"].as_str(),
    );
    let jaas = format!(
        "org.apache.kafka.common.security.scram.ScramLoginModule required username=\"{user}\" password=\"{pass}\";"
    );
    apply_secret(
        &c,
        ns,
        user,
        &[("password", pass), ("sasl.jaas.config", &jaas)],
    )
    .await;
    // Names of this run: a rerun on the same broker starts without topics or ACLs.
    let (mtls_name, scram_name) = (run_name("mtls"), run_name("scram"));
    let (mtls_name, scram_name) = (mtls_name.as_str(), scram_name.as_str());
    grant(
        &tls["SENSORFLOW_BROKER_TLS_PRINCIPAL"],
        &acls_of(ns, mtls_name),
    );
    grant(&format!("User:{user}"), &acls_of(ns, scram_name));

    let _op = Operator::start("auth-strimzi", 18210, ns);
    let base = json!({"topics": {"partitions": 2},
        "processors": {"window": {"maxReplicas": 2}, "join": {"maxReplicas": 2}}});
    let mut mtls = base.clone();
    merge(
        &mut mtls,
        json!({"kafka": {"bootstrapServers": tls["KAFKA_BOOTSTRAP_SERVERS"],
            "security": {"protocol": "SSL",
                "caSecret": {"name": "my-cluster-cluster-ca-cert", "key": "ca.crt"},
                "clientCertificateSecret": {"name": "sensorflow-acl-tls"}}}}),
    );
    let mut scram = base;
    merge(
        &mut scram,
        json!({"kafka": {"bootstrapServers": sasl["KAFKA_BOOTSTRAP_SERVERS"],
            "security": {"protocol": "SASL_SSL", "saslMechanism": "SCRAM-SHA-512",
                "caSecret": {"name": "my-cluster-cluster-ca-cert", "key": "ca.crt"},
                "credentialsSecret": {"name": user, "usernameFrom": "SecretName"}}}}),
    );
    apply_sp(&c, ns, mtls_name, mtls).await.unwrap();
    apply_sp(&c, ns, scram_name, scram).await.unwrap();

    for name in [mtls_name, scram_name] {
        let sp = wait_condition(&c, ns, name, "TopicsReady", "True").await;
        assert_eq!(
            condition(&sp, "TopicsReady").unwrap().1,
            "TopicsReady",
            "{name}"
        );
        // Created by the ACL-only principal, seen on the broker.
        let parts = broker_partitions(&topics_of(ns, name));
        assert_eq!(parts.len(), 9, "{name}: {parts:?}");
        assert!(parts.values().all(|&p| p == 2), "{name}: {parts:?}");
    }

    // mTLS: the certificate and key are mounted from the Strimzi Secret (only those two keys)
    // and named in the processors' environment; nothing of them is inlined.
    let env = common_env(&c, ns, mtls_name).await;
    assert_eq!(env["KAFKA_SECURITY_PROTOCOL"], "SSL");
    assert_eq!(
        env["KAFKA_SSL_CERTIFICATE_LOCATION"],
        "/etc/sensorflow/kafka-client-cert/user.crt"
    );
    assert_eq!(
        env["KAFKA_SSL_KEY_LOCATION"],
        "/etc/sensorflow/kafka-client-cert/user.key"
    );
    assert_eq!(
        env["KAFKA_SSL_CA_LOCATION"],
        "/etc/sensorflow/kafka-ca/ca.crt"
    );
    for stage in ["window", "join"] {
        let dn = format!("{mtls_name}-{stage}");
        let d = wait_for(
            &format!("Deployment {ns}/{dn}"),
            Duration::from_secs(30),
            || deployment(&c, ns, &dn),
        )
        .await;
        let p = pod(&d);
        let vol = p
            .volumes
            .iter()
            .flatten()
            .find(|v| v.name == "kafka-client-cert")
            .and_then(|v| v.secret.as_ref())
            .expect("client certificate volume");
        assert_eq!(vol.secret_name.as_deref(), Some("sensorflow-acl-tls"));
        let keys: Vec<&str> = vol.items.iter().flatten().map(|i| i.key.as_str()).collect();
        assert_eq!(keys, ["user.crt", "user.key"]);
        assert!(
            p.containers[0]
                .volume_mounts
                .iter()
                .flatten()
                .any(|m| m.name == "kafka-client-cert"
                    && m.mount_path == "/etc/sensorflow/kafka-client-cert")
        );
        let rendered = serde_json::to_string(&d).unwrap();
        assert!(!rendered.contains("PRIVATE KEY"), "the key is inlined");
    }

    // SCRAM from the KafkaUser Secret: the username is the Secret's name, the password a
    // reference to its `password` key.
    for stage in ["window", "join"] {
        let dn = format!("{scram_name}-{stage}");
        let d = wait_for(
            &format!("Deployment {ns}/{dn}"),
            Duration::from_secs(30),
            || deployment(&c, ns, &dn),
        )
        .await;
        let env = pod(&d).containers[0].env.clone().unwrap_or_default();
        let u = env
            .iter()
            .find(|e| e.name == "KAFKA_SASL_USERNAME")
            .unwrap();
        assert_eq!(u.value.as_deref(), Some(user));
        let p = env
            .iter()
            .find(|e| e.name == "KAFKA_SASL_PASSWORD")
            .and_then(|e| e.value_from.as_ref())
            .and_then(|v| v.secret_key_ref.as_ref())
            .expect("password from the Secret");
        assert_eq!((p.name.as_str(), p.key.as_str()), (user, "password"));
        assert!(!serde_json::to_string(&d).unwrap().contains(pass));
    }

    // A rotated client certificate Secret rolls the pods (the config hash changes).
    let window = format!("{mtls_name}-window");
    let before = config_hash(&deployment(&c, ns, &window).await.unwrap());
    apply_secret(
        &c,
        ns,
        "sensorflow-acl-tls",
        &[
            ("ca.crt", &read("ca.crt")),
            ("user.crt", &read("user.crt")),
            ("user.key", &read("user.key")),
            ("user.p12", "rotated"),
            ("user.password", "rotated"),
        ],
    )
    .await;
    wait_for(
        "the mTLS window Deployment rolled after the Secret changed",
        Duration::from_secs(30),
        || async {
            let h = config_hash(&deployment(&c, ns, &window).await?);
            (h != before).then_some(())
        },
    )
    .await;
    let _ = Api::<Namespace>::all(c.clone())
        .delete(ns, &DeleteParams::default())
        .await;
}

#[tokio::test]
#[ignore = "needs API server; run tests/operator/run.sh"]
async fn a_principal_without_the_acls_is_reported_not_authorized_then_recovers() {
    let c = client().await;
    let ns = &format!("sf-auth-noacl-{}", std::process::id());
    namespace(&c, ns).await;
    let tls = tls_env();
    let dir = &tls["SENSORFLOW_BROKER_STRIMZI_USER_DIR"];
    let read = |f: &str| std::fs::read_to_string(format!("{dir}/{f}")).unwrap();
    apply_secret(&c, ns, "cluster-ca", &[("ca.crt", &read("ca.crt"))]).await;
    apply_secret(
        &c,
        ns,
        "tls-user",
        &[
            ("user.crt", &read("user.crt")),
            ("user.key", &read("user.key")),
        ],
    )
    .await;
    let op = Operator::start("auth-noacl", 18211, ns);
    let name = run_name("noacl");
    let name = name.as_str();
    apply_sp(
        &c,
        ns,
        name,
        json!({"kafka": {"bootstrapServers": tls["KAFKA_BOOTSTRAP_SERVERS"],
            "security": {"protocol": "SSL", "caSecret": {"name": "cluster-ca", "key": "ca.crt"},
                "clientCertificateSecret": {"name": "tls-user"}}},
            "topics": {"partitions": 2},
            "processors": {"window": {"maxReplicas": 2}, "join": {"maxReplicas": 2}}}),
    )
    .await
    .unwrap();
    let sp = wait_condition(&c, ns, name, "TopicsReady", "False").await;
    let cond = sp
        .status
        .as_ref()
        .unwrap()
        .conditions
        .iter()
        .find(|x| x.type_ == "TopicsReady")
        .unwrap()
        .clone();
    assert_eq!(cond.reason, "NotAuthorized", "{cond:?}");
    assert!(
        cond.message
            .contains("CreateTopics refused by the authorizer")
            && cond
                .message
                .contains(&format!("may not Create on Topic '{ns}.{name}."))
            && cond.message.contains("(TopicAuthorizationFailed)")
            && cond.message.len() <= 1024,
        "{}",
        cond.message
    );
    let topics = topics_of(ns, name);
    assert!(broker_partitions(&topics).is_empty());
    // A Warning Event, not one per resync (the resync is 2 s here), and the operator lives.
    // (A reconcile that starts before the watch shows the first status write may publish the
    // Event once more: at most 2, then no more.)
    wait_events(&c, ns, "NotAuthorized", Duration::from_secs(30)).await;
    let count = || async {
        events(&c, ns, "NotAuthorized")
            .await
            .iter()
            .map(|e| e.series.as_ref().map_or(1, |s| s.count))
            .sum::<i32>()
    };
    tokio::time::sleep(Duration::from_secs(4)).await;
    let settled = count().await;
    tokio::time::sleep(Duration::from_secs(10)).await;
    let later = count().await;
    assert!(
        settled <= 2 && later == settled,
        "NotAuthorized Events: {settled} after 4 s, {later} 10 s later"
    );
    assert!(op.child_alive());

    // Granting exactly the listed ACLs is enough.
    grant(&tls["SENSORFLOW_BROKER_TLS_PRINCIPAL"], &acls_of(ns, name));
    let sp = wait_condition(&c, ns, name, "TopicsReady", "True").await;
    assert_eq!(condition(&sp, "TopicsReady").unwrap().1, "TopicsReady");
    assert_eq!(broker_partitions(&topics).len(), 9);
    let _ = Api::<Namespace>::all(c.clone())
        .delete(ns, &DeleteParams::default())
        .await;
}
