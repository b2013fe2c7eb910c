//! Helpers shared by the operator scenario suites (`scenarios*.rs`): the operator binary under
//! test, API and broker access with timeouts, waits with deadlines, kubectl with a kill timer.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, missing_docs)]

pub use std::collections::BTreeMap;
pub use std::future::Future;
pub use std::process::{Child, Command, Stdio};
pub use std::time::{Duration, Instant};

pub use k8s_openapi::api::apps::v1::Deployment;
pub use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Service, ServiceAccount};
pub use k8s_openapi::api::events::v1::Event;
pub use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams,
};
pub use kube::{Client, ResourceExt};
pub use rdkafka::consumer::{BaseConsumer, Consumer};
pub use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
pub use rdkafka::{ClientConfig, Offset, TopicPartitionList};
pub use sensorflow_operator::SensorPipeline;
pub use serde_json::{Value, json};

pub fn bootstrap() -> String {
    std::env::var("SF_TEST_BOOTSTRAP").expect("SF_TEST_BOOTSTRAP (run tests/operator/run.sh)")
}

pub async fn client() -> Client {
    let mut cfg = kube::Config::infer()
        .await
        .expect("KUBECONFIG (run tests/operator/run.sh)");
    // No API call may hang a test.
    cfg.connect_timeout = Some(Duration::from_secs(10));
    cfg.read_timeout = Some(Duration::from_secs(30));
    cfg.write_timeout = Some(Duration::from_secs(30));
    Client::try_from(cfg).expect("client")
}

/// The operator binary under test, killed on drop.
pub struct Operator {
    pub child: Child,
    pub metrics_port: u16,
}

impl Operator {
    /// Starts an operator that watches only `ns` (and keeps its Lease there).
    pub fn start(name: &str, metrics_port: u16, ns: &str) -> Self {
        Self::start_with(name, metrics_port, ns, ns, &[])
    }

    pub fn log_path(name: &str) -> String {
        format!(
            "{}/operator-{name}.log",
            std::env::var("SF_TEST_LOG_DIR").unwrap_or_else(|_| "/tmp".into())
        )
    }

    /// Like [`Operator::start`], with the Lease in `lease_ns` and extra flags.
    pub fn start_with(
        name: &str,
        metrics_port: u16,
        ns: &str,
        lease_ns: &str,
        extra: &[&str],
    ) -> Self {
        // Another run of this suite on the same machine can move its ports with this offset.
        let metrics_port = metrics_port
            + std::env::var("SF_TEST_PORT_OFFSET")
                .ok()
                .and_then(|o| o.parse::<u16>().ok())
                .unwrap_or(0);
        let log = std::fs::File::create(Self::log_path(name)).expect("log file");
        let child = Command::new(env!("CARGO_BIN_EXE_sensorflow-operator"))
            .args([
                "--metrics-addr",
                &format!("127.0.0.1:{metrics_port}"),
                "--resync-seconds",
                "2",
                "--backoff-seconds",
                "1",
                "--backoff-max-seconds",
                "5",
                "--cooldown-override-seconds",
                "8",
                "--lease-seconds",
                "4",
                "--lease-namespace",
                lease_ns,
                "--identity",
                name,
                "--watch-namespaces",
                ns,
            ])
            .args(extra)
            .env("RUST_LOG", "info,sensorflow_operator=debug")
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .spawn()
            .expect("operator binary");
        Self {
            child,
            metrics_port,
        }
    }

    pub fn child_alive(&self) -> bool {
        // Signal 0 only checks that the process exists (and is not a reaped zombie).
        Command::new("kill")
            .args(["-0", &self.child.id().to_string()])
            .status()
            .is_ok_and(|s| s.success())
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn terminate(&mut self) {
        let _ = Command::new("kill")
            .arg(self.child.id().to_string())
            .status();
        let _ = self.child.wait();
    }

    pub async fn metric(&self, name: &str) -> Option<f64> {
        let out = Command::new("curl")
            .args([
                "-fsS",
                "--max-time",
                "2",
                &format!("http://127.0.0.1:{}/metrics", self.metrics_port),
            ])
            .output()
            .ok()?;
        let text = String::from_utf8(out.stdout).ok()?;
        text.lines()
            .find(|l| l.starts_with(name) && !l.starts_with('#'))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        self.kill();
    }
}

pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

pub async fn namespace(c: &Client, ns: &str) {
    let api: Api<Namespace> = Api::all(c.clone());
    let obj: Namespace = serde_json::from_value(json!({"metadata": {"name": ns}})).unwrap();
    match api.create(&PostParams::default(), &obj).await {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 409 => {}
        Err(e) => panic!("namespace {ns}: {e}"),
    }
}

pub fn sp_api(c: &Client, ns: &str) -> Api<DynamicObject> {
    let ar = ApiResource::erase::<SensorPipeline>(&());
    Api::namespaced_with(c.clone(), ns, &ar)
}

pub fn manifest(name: &str, spec: Value) -> Value {
    json!({"apiVersion": "sensorflow.io/v1alpha1", "kind": "SensorPipeline",
           "metadata": {"name": name}, "spec": spec})
}

/// Server-side applies a SensorPipeline as a user would (field manager `test`).
pub async fn apply_sp(c: &Client, ns: &str, name: &str, spec: Value) -> Result<(), kube::Error> {
    let obj: DynamicObject = serde_json::from_value(manifest(name, spec)).unwrap();
    sp_api(c, ns)
        .patch(
            name,
            &PatchParams::apply("test").force(),
            &Patch::Apply(&obj),
        )
        .await
        .map(|_| ())
}

pub async fn get_sp(c: &Client, ns: &str, name: &str) -> Option<SensorPipeline> {
    Api::<SensorPipeline>::namespaced(c.clone(), ns)
        .get_opt(name)
        .await
        .unwrap()
}

pub fn condition(sp: &SensorPipeline, type_: &str) -> Option<(String, String)> {
    sp.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| (c.status.clone(), c.reason.clone()))
}

pub async fn wait_condition(
    c: &Client,
    ns: &str,
    name: &str,
    type_: &str,
    status: &str,
) -> SensorPipeline {
    wait_for(
        &format!("{ns}/{name} {type_}={status}"),
        Duration::from_secs(60),
        || async {
            let sp = get_sp(c, ns, name).await?;
            (condition(&sp, type_)?.0 == status).then_some(sp)
        },
    )
    .await
}

/// Partition counts of `topics`, read from the broker directly.
pub fn broker_partitions(topics: &[String]) -> BTreeMap<String, usize> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .create()
        .unwrap();
    let md = consumer
        .fetch_metadata(None, Duration::from_secs(10))
        .unwrap();
    md.topics()
        .iter()
        .filter(|t| topics.iter().any(|x| x == t.name()) && t.error().is_none())
        .map(|t| (t.name().to_owned(), t.partitions().len()))
        .collect()
}

/// The nine default topic names of pipeline `ns/name` (`<ns>.<name>.<role>`).
pub fn topics_of(ns: &str, name: &str) -> Vec<String> {
    [
        "sx",
        "sy",
        "sz",
        "fa",
        "fi",
        "fd",
        "predictions",
        "dead-letter",
        "late",
    ]
    .iter()
    .map(|s| format!("{ns}.{name}.{s}"))
    .collect()
}

pub fn spec(extra: Value) -> Value {
    let mut s = json!({"kafka": {"bootstrapServers": bootstrap()}});
    merge(&mut s, extra);
    s
}

pub fn merge(a: &mut Value, b: Value) {
    match (a, b) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in b {
                merge(a.entry(k).or_insert(Value::Null), v);
            }
        }
        (a, b) => *a = b,
    }
}

pub async fn deployment(c: &Client, ns: &str, name: &str) -> Option<Deployment> {
    Api::<Deployment>::namespaced(c.clone(), ns)
        .get_opt(name)
        .await
        .unwrap()
}

pub fn replicas(d: &Deployment) -> i32 {
    d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(-1)
}

pub fn config_hash(d: &Deployment) -> String {
    d.spec
        .as_ref()
        .unwrap()
        .template
        .metadata
        .as_ref()
        .unwrap()
        .annotations
        .as_ref()
        .unwrap()["sensorflow.io/config-hash"]
        .clone()
}

pub async fn events(c: &Client, ns: &str, reason: &str) -> Vec<Event> {
    Api::<Event>::namespaced(c.clone(), ns)
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| e.reason.as_deref() == Some(reason))
        .collect()
}

/// The Events of `reason` once one of them `matches`, waiting up to `within` (`what` names the
/// Event awaited in the timeout's message). The operator
/// publishes an Event after the status write a test waits for, so reading the Events once
/// right after the status races it (an Event was missing so in CI runs on a slow host).
pub async fn wait_event_matching(
    c: &Client,
    ns: &str,
    what: &str,
    reason: &str,
    within: Duration,
    matches: impl Fn(&Event) -> bool,
) -> Vec<Event> {
    wait_for(what, within, || async {
        let e = events(c, ns, reason).await;
        e.iter().any(&matches).then_some(e)
    })
    .await
}

/// The Events of `reason` once there is at least one, waiting up to `within`
/// ([`wait_event_matching`]).
pub async fn wait_events(c: &Client, ns: &str, reason: &str, within: Duration) -> Vec<Event> {
    wait_event_matching(c, ns, &format!("a {reason} Event"), reason, within, |_| {
        true
    })
    .await
}

pub fn kubectl(args: &[&str], stdin: Option<&str>) -> String {
    let bin = std::env::var("SF_TEST_KUBECTL").unwrap_or_else(|_| "kubectl".into());
    let mut child = Command::new(bin)
        .arg("--request-timeout=30s")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("kubectl");
    // The kill timer: kubectl's own --request-timeout covers each request, this the whole call.
    let pid = child.id();
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    std::thread::spawn(move || {
        if done_rx.recv_timeout(Duration::from_secs(60)).is_err() {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
        }
    });
    if let Some(input) = stdin {
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
    }
    let out = child.wait_with_output().unwrap();
    let _ = done_tx.send(());
    assert!(
        out.status.success(),
        "kubectl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Creates `topic` on the broker directly (as a person or another tool would), `partitions`
/// partitions; an existing topic is fine.
pub async fn create_topic_outside(topic: &str, partitions: i32) {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    let admin: AdminClient<rdkafka::client::DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .create()
        .unwrap();
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    let res = tokio::time::timeout(
        Duration::from_secs(30),
        admin.create_topics(
            &[NewTopic::new(topic, partitions, TopicReplication::Fixed(1))],
            &opts,
        ),
    )
    .await
    .expect("CreateTopics timed out")
    .unwrap();
    for r in res {
        match r {
            Ok(_) | Err((_, rdkafka::error::RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err(e) => panic!("create {topic}: {e:?}"),
        }
    }
}

pub fn created_topics(sp: &SensorPipeline) -> Vec<String> {
    sp.status
        .as_ref()
        .map(|s| s.created_topics.clone())
        .unwrap_or_default()
}

/// Sets `value` at the dotted `path` of `v`, creating objects on the way.
pub fn set_path(v: &mut Value, path: &str, value: Value) {
    let mut cur = v;
    let parts: Vec<&str> = path.split('.').collect();
    for p in &parts[..parts.len() - 1] {
        if !cur.get(*p).is_some_and(Value::is_object) {
            cur[*p] = json!({});
        }
        cur = &mut cur[*p];
    }
    cur[parts[parts.len() - 1]] = value;
}

/// The test broker's SASL_SSL listener (`DIR/sasl.env` of `scripts/broker.sh`: bootstrap
/// address, SCRAM-SHA-512 and PLAIN users, the test CA's path), read from the file
/// `SF_TEST_SASL_ENV` names.
pub fn sasl_env() -> BTreeMap<String, String> {
    let path =
        std::env::var("SF_TEST_SASL_ENV").expect("SF_TEST_SASL_ENV (run tests/operator/run.sh)");
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{path}: {e}"))
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

/// Server-side applies an Opaque Secret with `data` as `stringData` (field manager `test`).
pub async fn apply_secret(c: &Client, ns: &str, name: &str, data: &[(&str, &str)]) {
    use k8s_openapi::api::core::v1::Secret;
    let data: BTreeMap<&str, &str> = data.iter().copied().collect();
    let secret: Secret = serde_json::from_value(json!({"apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": name}, "stringData": data}))
    .unwrap();
    Api::<Secret>::namespaced(c.clone(), ns)
        .patch(
            name,
            &PatchParams::apply("test").force(),
            &Patch::Apply(&secret),
        )
        .await
        .unwrap();
}

/// A pipeline on the SASL_SSL listener: `mechanism`, credentials from Secret `creds` (keys
/// `user_key` / `pass_key`), the CA from Secret `kafka-ca` key `ca.crt`; 3 partitions.
pub fn sasl_spec(mechanism: &str, creds: &str, user_key: &str, pass_key: &str) -> Value {
    json!({
        "kafka": {"bootstrapServers": sasl_env()["KAFKA_BOOTSTRAP_SERVERS"],
            "security": {"protocol": "SASL_SSL", "saslMechanism": mechanism,
                "credentialsSecret": {"name": creds, "usernameKey": user_key, "passwordKey": pass_key},
                "caSecret": {"name": "kafka-ca", "key": "ca.crt"}}},
        "topics": {"partitions": 3},
        "processors": {"window": {"maxReplicas": 3}, "join": {"maxReplicas": 3}},
        "sink": {"bucket": "archive"}
    })
}

/// Asserts that the container of `d` takes the SASL username and password from Secret `creds`
/// (`secretKeyRef`, no inline value) and mounts the CA from Secret `kafka-ca`.
pub fn assert_credentials_from_secrets(
    d: &Deployment,
    creds: &str,
    user_key: &str,
    pass_key: &str,
) {
    let name = d.metadata.name.clone().unwrap();
    let pod = d.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
    let container = &pod.containers[0];
    let env = container.env.as_ref().expect("secret env");
    for (var, key) in [
        ("KAFKA_SASL_USERNAME", user_key),
        ("KAFKA_SASL_PASSWORD", pass_key),
    ] {
        let e = env
            .iter()
            .find(|e| e.name == var)
            .unwrap_or_else(|| panic!("{name}: no {var}"));
        assert!(e.value.is_none(), "{name}: {var} inlined");
        let r = e
            .value_from
            .as_ref()
            .and_then(|v| v.secret_key_ref.as_ref())
            .unwrap_or_else(|| panic!("{name}: {var} not from a Secret"));
        assert_eq!((r.name.as_str(), r.key.as_str()), (creds, key), "{name}");
    }
    let ca = pod
        .volumes
        .as_ref()
        .unwrap()
        .iter()
        .find(|v| v.name == "kafka-ca")
        .unwrap_or_else(|| panic!("{name}: no CA volume"));
    assert_eq!(
        ca.secret.as_ref().unwrap().secret_name.as_deref(),
        Some("kafka-ca")
    );
    assert!(
        container
            .volume_mounts
            .as_ref()
            .unwrap()
            .iter()
            .any(|m| m.name == "kafka-ca" && m.mount_path == "/etc/sensorflow/kafka-ca"),
        "{name}: CA not mounted"
    );
}

/// The topic configuration of `topic` on the broker: (effective values, topic-level overrides).
pub async fn broker_topic_config(
    topic: &str,
) -> (BTreeMap<String, String>, BTreeMap<String, String>) {
    use rdkafka::admin::{AdminClient, AdminOptions, ConfigSource, ResourceSpecifier};
    let admin: AdminClient<rdkafka::client::DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .create()
        .unwrap();
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    let res = tokio::time::timeout(
        Duration::from_secs(30),
        admin.describe_configs(&[ResourceSpecifier::Topic(topic)], &opts),
    )
    .await
    .expect("DescribeConfigs timed out")
    .unwrap();
    let r = res.into_iter().next().unwrap().unwrap();
    let mut effective = BTreeMap::new();
    let mut overrides = BTreeMap::new();
    for e in r.entries {
        if let Some(v) = e.value {
            if e.source == ConfigSource::DynamicTopic {
                overrides.insert(e.name.clone(), v.clone());
            }
            effective.insert(e.name, v);
        }
    }
    (effective, overrides)
}
