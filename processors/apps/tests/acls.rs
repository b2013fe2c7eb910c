//! The processors on a broker with an authorizer, as principals that have exactly the ACLs of
//! `sensorflow_kafka::acls::pipeline_acls` and nothing else (`scripts/broker.sh`: the SCRAM
//! user `sensorflow-acl` on SASL_SSL, the client certificate `CN=sensorflow-acl-tls` on the
//! mutual-TLS listener). The principal does the operator's part too: it creates the topics,
//! reads the groups' lag and deletes the topics at the end. Without one needed ACL the
//! processor logs the authorizer's refusal and outputs nothing.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use common::*;
use sensorflow_api::{SaslMechanism, SecurityProtocol};
use sensorflow_kafka::Connection;
use sensorflow_kafka::acls::{
    AclBinding, Operation, PipelineAclInput, ResourceType, pipeline_acls,
};
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// `KEY=VALUE` lines of `file` (`sasl.env`, `tls.env`) in the broker's directory, found beside
/// the `sasl.env` that `SENSORFLOW_TEST_SASL_ENV` names.
fn broker_env(file: &str) -> HashMap<String, String> {
    let sasl = std::env::var("SENSORFLOW_TEST_SASL_ENV")
        .expect("SENSORFLOW_TEST_SASL_ENV is not set: run these tests with ./run.sh test");
    let path = std::path::Path::new(&sasl).with_file_name(file);
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

/// An ACL-only principal: its name for ACLs, the processors' `KAFKA_*` environment, and the
/// operator's [`Connection`] (PEMs read from the files, as the operator reads Secrets).
struct Principal {
    name: String,
    env: Vec<(String, String)>,
    conn: Connection,
}

fn scram_principal() -> Principal {
    let e = broker_env("sasl.env");
    let (user, pass) = (
        e["SENSORFLOW_BROKER_ACL_USERNAME"].clone(),
        e["SENSORFLOW_BROKER_ACL_PASSWORD"].clone(),
    );
    let bootstrap = e["KAFKA_BOOTSTRAP_SERVERS"].clone();
    let ca = e["KAFKA_SSL_CA_LOCATION"].clone();
    Principal {
        name: format!("User:{user}"),
        env: vec![
            ("KAFKA_BOOTSTRAP_SERVERS".into(), bootstrap.clone()),
            ("KAFKA_SECURITY_PROTOCOL".into(), "SASL_SSL".into()),
            ("KAFKA_SASL_MECHANISM".into(), "SCRAM-SHA-512".into()),
            ("KAFKA_SASL_USERNAME".into(), user.clone()),
            ("KAFKA_SASL_PASSWORD".into(), pass.clone()),
            ("KAFKA_SSL_CA_LOCATION".into(), ca.clone()),
        ],
        conn: Connection {
            bootstrap,
            protocol: Some(SecurityProtocol::SaslSsl),
            sasl_mechanism: Some(SaslMechanism::ScramSha512),
            sasl_credentials: Some((user, pass)),
            ca_pem: Some(std::fs::read_to_string(ca).unwrap()),
            client_certificate: None,
        },
    }
}

fn tls_principal() -> Principal {
    let e = broker_env("tls.env");
    let read = |k: &str| std::fs::read_to_string(&e[k]).unwrap();
    let env: Vec<(String, String)> = e
        .iter()
        .filter(|(k, _)| k.starts_with("KAFKA_"))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    Principal {
        name: e["SENSORFLOW_BROKER_TLS_PRINCIPAL"].clone(),
        env,
        conn: Connection {
            bootstrap: e["KAFKA_BOOTSTRAP_SERVERS"].clone(),
            protocol: Some(SecurityProtocol::Ssl),
            sasl_mechanism: None,
            sasl_credentials: None,
            ca_pem: Some(read("KAFKA_SSL_CA_LOCATION")),
            client_certificate: Some((
                read("KAFKA_SSL_CERTIFICATE_LOCATION"),
                read("KAFKA_SSL_KEY_LOCATION"),
            )),
        },
    }
}

/// Adds `acls` for `principal` with Kafka's AclCommand over the PLAINTEXT listener (a super
/// user on the test broker).
fn grant(principal: &str, acls: &[AclBinding]) {
    let libs = broker_env("tls.env")["SENSORFLOW_BROKER_KAFKA_LIBS"].clone();
    for a in acls {
        let out = std::process::Command::new("timeout")
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

/// The pipeline's names in a test: topics `<pre><ROLE>`, groups and transactional ids
/// `<pre>g-…` (the operator's contract: `<groupPrefix>-window`, `<groupPrefix>-window-<pod>`).
struct Names {
    pre: String,
    groups: String,
}

impl Names {
    fn new(test: &str) -> Self {
        let pre = prefix(test);
        let groups = format!("{pre}g");
        Self { pre, groups }
    }
    fn acls(&self, exactly_once: bool) -> Vec<AclBinding> {
        pipeline_acls(&PipelineAclInput {
            topic_prefix: self.pre.clone(),
            group_prefix: self.groups.clone(),
            named_inputs: vec![],
            exactly_once,
        })
    }
    fn group(&self, stage: &str) -> String {
        format!("{}-{stage}", self.groups)
    }
}

/// Creates the topics as `principal` (the operator's part: CreateTopics with configuration,
/// DescribeConfigs), retention -1 for the historic event times of the replay.
async fn create_topics_as(p: &Principal, t: &sensorflow_kafka::config::TopicArgs, partitions: i32) {
    let names = t.topics();
    let common = std::collections::BTreeMap::from([("retention.ms".to_owned(), "-1".to_owned())]);
    let configs = sensorflow_kafka::topic_configs(&names, &common, |_| Default::default());
    sensorflow_kafka::admin::ensure_topics_with(
        &p.conn.config(),
        &names.all(),
        partitions,
        1,
        &configs,
    )
    .await
    .unwrap_or_else(|e| panic!("creating the topics as {}: {e}", p.name));
}

/// Waits until `group` has no lag on `topics`, read as the principal (the operator's lag
/// read: committed offsets of the group and the topics' end offsets).
fn wait_drained_as(p: &Principal, group: &str, topics: &[&str], timeout: Duration) {
    let started = Instant::now();
    let cfg = p.conn.config();
    loop {
        match sensorflow_kafka::admin::group_lag(&cfg, group, topics) {
            Ok(0) => return,
            Ok(lag) => assert!(
                started.elapsed() < timeout,
                "group {group} still has lag {lag} after {timeout:?}"
            ),
            Err(e) => assert!(
                started.elapsed() < timeout,
                "lag of {group} as {} unreadable for {timeout:?}: {e}",
                p.name
            ),
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}

fn env_refs<'a>(p: &'a Principal, extra: &'a [(String, String)]) -> Vec<(&'a str, &'a str)> {
    p.env
        .iter()
        .chain(extra)
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect()
}

/// Exactly-once as the operator configures it: `SF_TRANSACTIONAL_ID_PREFIX` `<group>` (the
/// stage's group, `<groupPrefix>-<stage>`) and the pod name in `HOSTNAME`, so the
/// transactional id is `<groupPrefix>-<stage>-pod-a`.
fn eos_env(group: &str) -> Vec<(String, String)> {
    vec![
        ("SF_EXACTLY_ONCE".into(), "true".into()),
        ("SF_TRANSACTIONAL_ID_PREFIX".into(), group.into()),
        ("HOSTNAME".into(), "pod-a".into()),
    ]
}

/// replay (as the sensors, over PLAINTEXT) → window-processor → join-predict as `p` with
/// exactly the listed ACLs: one FA, FI and FD per SZ reading, predictions, no dead letters;
/// then `p` deletes the pipeline's topics (deletionPolicy Delete).
async fn pipeline_with_exactly_the_acls(p: Principal, test: &str, exactly_once: bool) {
    let n = Names::new(test);
    grant(&p.name, &n.acls(exactly_once));
    let t = topics(&n.pre);
    create_topics_as(&p, &t, 2).await;
    replay(
        &t,
        &[
            "--clients",
            "2",
            "--rows-per-client",
            "100",
            "--base-date",
            "2021-03-03",
        ],
    );
    let (wg, jg) = (n.group("window"), n.group("join"));
    let (we, je) = if exactly_once {
        (eos_env(&wg), eos_env(&jg))
    } else {
        (vec![], vec![])
    };
    let _w = spawn("window-processor", &t, &wg, &env_refs(&p, &we), &[]);
    let _j = spawn("join-predict", &t, &jg, &env_refs(&p, &je), &[]);
    let drain = Duration::from_secs(120);
    wait_drained_as(&p, &wg, &[&t.topic_sz], drain);
    wait_drained_as(&p, &jg, &join_inputs(&t), drain);
    let sz = read_all(&t.topic_sz).len();
    assert_eq!(sz, 200);
    for topic in [&t.topic_fa, &t.topic_fi, &t.topic_fd] {
        assert_eq!(
            read_all(topic).len(),
            sz,
            "one feature per SZ reading on {topic}"
        );
    }
    assert!(!read_all(&t.topic_predictions).is_empty(), "no predictions");
    assert!(read_all(&t.topic_dlq).is_empty(), "dead letters");
    drop((_w, _j));

    let all: Vec<String> = t.topics().all().iter().map(|s| (*s).to_owned()).collect();
    let deleted = sensorflow_kafka::admin::delete_topics(&p.conn, &all)
        .await
        .unwrap_or_else(|e| panic!("deleting the topics as {}: {e}", p.name));
    assert_eq!(deleted.len(), 9, "{deleted:?}");
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs a broker: run ./run.sh test"]
async fn scram_principal_runs_the_pipeline_with_exactly_the_listed_acls() {
    pipeline_with_exactly_the_acls(scram_principal(), "aclscram", false).await;
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs a broker: run ./run.sh test"]
async fn mtls_principal_runs_the_pipeline_exactly_once_with_exactly_the_listed_acls() {
    pipeline_with_exactly_the_acls(tls_principal(), "acltlseos", true).await;
}

/// Waits until `log` contains one of `needles`; panics with the log after `within`.
fn wait_log(log: &std::path::Path, needles: &[&str], within: Duration) -> String {
    let deadline = Instant::now() + within;
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if needles.iter().any(|n| text.contains(n)) {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "none of {needles:?} in {} within {within:?}: {text}",
            log.display()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Each ACL of the list is needed: without the group ACL (at-least-once) or without the
/// transactional-id ACL (exactly-once) window-processor logs the authorizer's refusal and
/// writes no feature; without AlterConfigs on the topics (so without the DescribeConfigs it
/// implies) it says it cannot read its output topics' limits.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs a broker: run ./run.sh test"]
async fn without_a_listed_acl_the_processor_reports_the_refusal() {
    let p = tls_principal();
    let no_alter_configs = |a: AclBinding| AclBinding {
        operations: a
            .operations
            .iter()
            .copied()
            .filter(|o| *o != Operation::AlterConfigs)
            .collect(),
        ..a
    };
    type Cut = Box<dyn Fn(Vec<AclBinding>) -> Vec<AclBinding>>;
    let cases: [(&str, bool, Cut, &[&str], bool); 3] = [
        (
            "aclnogroup",
            false,
            Box::new(|acls| {
                acls.into_iter()
                    .filter(|a| a.resource != ResourceType::Group)
                    .collect()
            }),
            &["Group authorization failed", "GroupAuthorizationFailed"],
            true,
        ),
        (
            "aclnotxn",
            true,
            Box::new(|acls| {
                acls.into_iter()
                    .filter(|a| a.resource != ResourceType::TransactionalId)
                    .collect()
            }),
            &[
                "Transactional Id authorization failed",
                "TransactionalIdAuthorizationFailed",
            ],
            true,
        ),
        (
            "aclnodescribeconfigs",
            false,
            Box::new(move |acls| acls.into_iter().map(no_alter_configs).collect()),
            &["could not read the output topics' limits"],
            false,
        ),
    ];
    for (test, exactly_once, cut, needles, outputs_nothing) in cases {
        let n = Names::new(test);
        let acls = cut(n.acls(exactly_once));
        assert_ne!(acls, n.acls(exactly_once), "{test}: nothing left out");
        grant(&p.name, &acls);
        let t = topics(&n.pre);
        // Created by a super user: this case is about the processor.
        create_topics(&t, 1).await;
        replay(
            &t,
            &[
                "--clients",
                "1",
                "--rows-per-client",
                "20",
                "--base-date",
                "2021-03-03",
            ],
        );
        let wg = n.group("window");
        let extra = if exactly_once { eos_env(&wg) } else { vec![] };
        let mut w = spawn("window-processor", &t, &wg, &env_refs(&p, &extra), &[]);
        let log = std::env::temp_dir().join(format!("{wg}window-processor.log"));
        wait_log(&log, needles, Duration::from_secs(60));
        if outputs_nothing {
            std::thread::sleep(Duration::from_secs(3));
            assert!(
                read_all(&t.topic_fa).is_empty(),
                "{test}: features written without the ACL"
            );
        }
        let _ = w.child.kill();
        let _ = w.child.wait();
    }
}
