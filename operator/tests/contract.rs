//! The operator ↔ processor contract: every Deployment's environment, built by the operator's
//! own code (`build::build`), parsed by the real argument parser of the binary the Deployment
//! runs (`WindowArgs`, `JoinArgs`, `SinkArgs`).
//!
//! ```text
//!   SensorPipelineSpec ─validate─▶ build ─▶ ConfigMaps (envFrom) + Secret env refs
//!                                              │ every variable must name an argument
//!                                              ▼
//!               clap parser of window-processor / join-predict / gcs-sink ─▶ values == spec
//! ```
//!
//! The processes' environment is not touched (edition 2024 makes `set_var` unsafe, and the
//! tests run in parallel): each variable is matched to the argument that declares it as its
//! `env` and passed as that argument's long flag, which clap parses with the same value parser
//! it applies to the variable. A variable no argument declares fails the test, as does a value
//! the parser refuses or a parsed value that differs from the spec.

use std::collections::BTreeMap;

use clap::{ArgAction, CommandFactory, FromArgMatches};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use sensorflow_api::crd::{
    BinRange, ClientCertificateSecretRef, CredentialsSecretRef, DeliveryGuarantee, KafkaSecurity,
    KafkaSpec, LogFormat, ModelKind, RotationSpec, SaslMechanism, SecretKeyRef, SecurityProtocol,
    SensorPipelineSpec, SinkSpec, WatermarkScope, WireFormat,
};
use sensorflow_api::{TopicRole, env};
use sensorflow_apps::join::JoinArgs;
use sensorflow_apps::window::WindowArgs;
use sensorflow_operator::controller::build::{self, Desired, ReplicaPlan, SecretVersions, Stage};
use sensorflow_operator::controller::validate::{Naming, validate};
use sensorflow_sink::app::SinkArgs;

/// The environment a Deployment's container starts with: its ConfigMaps' data (`envFrom`, in
/// order, later wins as in Kubernetes) and its own `env` (Secret references get a placeholder).
fn container_env(d: &Desired, stage: Stage) -> BTreeMap<String, String> {
    let name = build::deployment_name("p", stage);
    let dep: &Deployment = d
        .deployments
        .iter()
        .find(|x| x.metadata.name.as_deref() == Some(name.as_str()))
        .expect("deployment");
    let pod = dep
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .expect("pod spec");
    let c = &pod.containers[0];
    assert_eq!(
        c.command.as_deref(),
        Some(&[format!("/usr/local/bin/{}", stage.binary())][..])
    );
    let mut out = BTreeMap::new();
    for from in c.env_from.iter().flatten() {
        let cm_name = from
            .config_map_ref
            .as_ref()
            .map(|r| r.name.clone())
            .expect("configMapRef");
        let cm = d
            .config_maps
            .iter()
            .find(|m| m.metadata.name.as_deref() == Some(cm_name.as_str()))
            .expect("referenced ConfigMap is built");
        out.extend(cm.data.clone().unwrap_or_default());
    }
    for e in c.env.iter().flatten() {
        // A pod template overlay's own variables are the user's, not the processors' contract
        // (validation refuses contract names there; `the_pod_template_adds_env_but_never_a_contract_name`).
        if !env::is_contract(&e.name) {
            continue;
        }
        let value = match (&e.value, &e.value_from) {
            (Some(v), _) => v.clone(),
            (None, Some(_)) => format!("from-secret-{}", e.name.to_lowercase()),
            (None, None) => String::new(),
        };
        out.insert(e.name.clone(), value);
    }
    out
}

/// Variables every processor reads outside its argument parser: `RUST_LOG` is read by
/// `sensorflow_process::telemetry::init`.
const READ_OUTSIDE_THE_PARSER: [&str; 1] = [env::RUST_LOG];

/// Parses `env` with `P`'s parser (see the module docs).
fn parse<P: CommandFactory + FromArgMatches>(bin: &str, env: &BTreeMap<String, String>) -> P {
    let cmd = P::command();
    let mut argv = vec![bin.to_owned()];
    for (name, value) in env {
        if READ_OUTSIDE_THE_PARSER.contains(&name.as_str()) {
            continue;
        }
        let arg = cmd
            .get_arguments()
            .find(|a| a.get_env().is_some_and(|e| e == name.as_str()))
            .unwrap_or_else(|| panic!("{bin} declares no argument for {name}"));
        let long = arg
            .get_long()
            .unwrap_or_else(|| panic!("{bin}: {name} has no long flag"));
        match arg.get_action() {
            ArgAction::SetTrue => {
                let on: bool = value
                    .parse()
                    .unwrap_or_else(|_| panic!("{bin}: {name}={value:?} is not true/false"));
                if on {
                    argv.push(format!("--{long}"));
                }
            }
            _ => argv.push(format!("--{long}={value}")),
        }
    }
    let matches = cmd
        .try_get_matches_from(&argv)
        .unwrap_or_else(|e| panic!("{bin} refuses the operator's environment {argv:?}: {e}"));
    P::from_arg_matches(&matches).unwrap_or_else(|e| panic!("{bin}: {e}"))
}

fn owner() -> OwnerReference {
    OwnerReference {
        api_version: "sensorflow.io/v1alpha1".into(),
        kind: "SensorPipeline".into(),
        name: "p".into(),
        uid: "uid".into(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

/// A spec that sets every field the processors receive, away from their defaults.
fn full_spec() -> SensorPipelineSpec {
    let mut s: SensorPipelineSpec = serde_json::from_value(serde_json::json!({
        "kafka": {"bootstrapServers": "k1:9093,k2:9093"}
    }))
    .expect("spec");
    s.kafka = KafkaSpec {
        bootstrap_servers: "k1:9093,k2:9093".into(),
        security: Some(KafkaSecurity {
            protocol: SecurityProtocol::SaslSsl,
            sasl_mechanism: Some(SaslMechanism::ScramSha512),
            credentials_secret: Some(CredentialsSecretRef {
                name: "kafka".into(),
                username_key: "user".into(),
                password_key: "pass".into(),
                username_from: Default::default(),
            }),
            ca_secret: Some(SecretKeyRef {
                name: "ca".into(),
                key: "ca.pem".into(),
            }),
            allow_plaintext_credentials: false,
            client_certificate_secret: Some(ClientCertificateSecretRef {
                name: "kafka-user".into(),
                certificate_key: "user.crt".into(),
                key_key: "user.key".into(),
            }),
        }),
        properties: [
            ("fetch.max.bytes", "1048576"),
            ("socket.keepalive.enable", "true"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect(),
        group_prefix: None,
    };
    s.processors.commit_interval_ms = 750;
    s.processors.wire_format = WireFormat::Confluent;
    s.processors.schema_id = 42;
    s.processors.rebuild.timeout_ms = 45_000;
    s.processors.rebuild.max_records = 2_000_000;
    s.join.grace_ms = 1_500;
    s.join.idle_timeout_ms = 20_000;
    s.join.input_idle_timeout_ms = 120_000;
    s.join.max_held_records = 40_000;
    s.processors.max_future_skew_ms = 90_000;
    s.join.max_staleness_ms = 900_000;
    s.join.rebuild_lookback_ms = 1_200_000;
    s.processors.window.pod_template.env = vec![k8s_openapi::api::core::v1::EnvVar {
        name: "TZ".into(),
        value: Some("UTC".into()),
        ..Default::default()
    }];
    s.topics.fa = Some("features-a".into());
    s.topics.dead_letter = Some("dlq".into());
    s.window.size_ms = 120_000;
    s.window.grace_ms = 5_000;
    s.window.watermark_scope = WatermarkScope::Client;
    s.window.fa_range = BinRange { lo: 0.5, hi: 7.25 };
    s.window.fd_range = BinRange {
        lo: -0.125,
        hi: 0.1,
    };
    s.model.kind = ModelKind::Logistic;
    s.model.weights = Some(vec![0.1, -0.2, 1.5, 0.3, 1e-3]);
    s.model.bias = Some(-2.75);
    s.model.threshold = 0.3;
    s.model.seed = Some(7);
    s.processors.log_format = LogFormat::Json;
    s.processors.log_level = "debug,rdkafka=warn".into();
    s.processors.delivery_guarantee = DeliveryGuarantee::ExactlyOnce;
    s.sink = Some(SinkSpec {
        bucket: "archive".into(),
        prefix: Some("tenant/p/".into()),
        topics: vec![TopicRole::Predictions, TopicRole::DeadLetter, TopicRole::Sz],
        rotation: RotationSpec {
            max_records: 5_000,
            max_bytes: 1 << 20,
            max_age_seconds: 90,
        },
        credentials_secret: Some(SecretKeyRef {
            name: "gcs".into(),
            key: "key.json".into(),
        }),
        endpoint: Some("https://storage.example:4443".into()),
        replicas: 1,
        resources: None,
        pod_template: Default::default(),
    });
    s
}

fn desired(s: &SensorPipelineSpec) -> Desired {
    let v =
        validate("p", &Naming::resolve(s, &Naming::legacy_defaults("p")), s).expect("valid spec");
    build::build(
        &v,
        "ns",
        &owner(),
        ReplicaPlan::default(),
        &SecretVersions::new(),
    )
}

#[test]
fn window_processor_parses_what_the_operator_sets() {
    let s = full_spec();
    let v = validate("p", &Naming::resolve(&s, &Naming::legacy_defaults("p")), &s).expect("valid");
    let a: WindowArgs = parse(
        "window-processor",
        &container_env(&desired(&s), Stage::Window),
    );
    assert_eq!(a.client.kafka.bootstrap_servers, "k1:9093,k2:9093");
    assert_eq!(
        a.client.kafka.security_protocol,
        Some(SecurityProtocol::SaslSsl)
    );
    assert_eq!(
        a.client.kafka.sasl_mechanism,
        Some(SaslMechanism::ScramSha512)
    );
    assert_eq!(
        a.client.kafka.ssl_ca_location.as_deref(),
        Some("/etc/sensorflow/kafka-ca/ca.pem")
    );
    assert_eq!(
        a.client.kafka.ssl_certificate_location.as_deref(),
        Some("/etc/sensorflow/kafka-client-cert/user.crt")
    );
    assert_eq!(
        a.client.kafka.ssl_key_location.as_deref(),
        Some("/etc/sensorflow/kafka-client-cert/user.key")
    );
    assert_eq!(
        a.client.kafka.sasl_username.as_deref(),
        Some("from-secret-kafka_sasl_username")
    );
    assert!(a.client.kafka.sasl_password.is_some());
    assert_eq!(a.client.topics.topics(), v.topics);
    assert_eq!(a.client.topics.topics().fa, "features-a");
    assert_eq!(a.group_id, "p-window");
    assert_eq!((a.window_size_ms, a.grace_ms), (120_000, 5_000));
    assert_eq!(a.watermark_scope, WatermarkScope::Client);
    assert_eq!((a.fa_range.lo(), a.fa_range.hi()), (0.5, 7.25));
    assert_eq!((a.fi_range.lo(), a.fi_range.hi()), (0.0, 3000.0));
    assert_eq!((a.fd_range.lo(), a.fd_range.hi()), (-0.125, 0.1));
    assert!(a.common.exactly_once);
    assert_eq!(
        a.common.serve.metrics_addr.port(),
        build::METRICS_PORT as u16
    );
    assert_eq!(a.common.serve.log_format, LogFormat::Json);
    assert_eq!(a.common.commit_interval_ms, 750);
    assert_eq!(a.common.rebuild_timeout_ms, 45_000);
    assert_eq!(a.common.rebuild_max_records, 2_000_000);
    assert_eq!(a.common.max_future_skew_ms, 90_000);
    assert_eq!(
        a.client.framing.framing(),
        sensorflow_core::wire::Framing::Confluent { schema_id: 42 }
    );
    assert_eq!(
        a.client.kafka.properties,
        [
            ("fetch.max.bytes".to_owned(), "1048576".to_owned()),
            ("socket.keepalive.enable".to_owned(), "true".to_owned())
        ]
    );
    // The properties reach every client configuration the processor builds.
    for cfg in [
        a.client.kafka.client_config(),
        a.client.kafka.consumer_config("g", "c"),
        a.client.kafka.producer_config("c"),
    ] {
        assert_eq!(cfg.get("fetch.max.bytes"), Some("1048576"));
        assert_eq!(cfg.get("socket.keepalive.enable"), Some("true"));
    }
}

#[test]
fn the_pod_template_adds_env_but_never_a_contract_name() {
    let mut s = full_spec();
    let d = desired(&s);
    let env_of = |d: &Desired, stage: Stage| {
        let name = build::deployment_name("p", stage);
        d.deployments
            .iter()
            .find(|x| x.metadata.name.as_deref() == Some(name.as_str()))
            .and_then(|x| x.spec.as_ref())
            .and_then(|x| x.template.spec.as_ref())
            .map(|p| p.containers[0].env.clone().unwrap_or_default())
            .expect("pod")
    };
    let w = env_of(&d, Stage::Window);
    assert!(
        w.iter()
            .any(|e| e.name == "TZ" && e.value.as_deref() == Some("UTC"))
    );
    assert!(!env_of(&d, Stage::Join).iter().any(|e| e.name == "TZ"));
    // Validation refuses a contract name in the overlay.
    s.processors.join.pod_template.env = vec![k8s_openapi::api::core::v1::EnvVar {
        name: env::GRACE_MS.into(),
        value: Some("1".into()),
        ..Default::default()
    }];
    let e = validate("p", &Naming::resolve(&s, &Naming::legacy_defaults("p")), &s)
        .expect_err("a contract name in the overlay");
    assert!(e.to_string().contains("SF_GRACE_MS"), "{e}");
}

#[test]
fn join_predict_parses_what_the_operator_sets() {
    let s = full_spec();
    let v = validate("p", &Naming::resolve(&s, &Naming::legacy_defaults("p")), &s).expect("valid");
    let a: JoinArgs = parse("join-predict", &container_env(&desired(&s), Stage::Join));
    assert_eq!(a.client.topics.topics(), v.topics);
    assert_eq!(a.group_id, "p-join");
    assert_eq!(a.model, ModelKind::Logistic);
    assert_eq!(a.model_weights, [0.1, -0.2, 1.5, 0.3, 1e-3]);
    assert_eq!(a.model_bias, -2.75);
    assert_eq!(a.threshold, 0.3);
    assert_eq!(a.model_seed, 7);
    assert!(a.common.exactly_once);
    assert_eq!(
        a.client.kafka.sasl_mechanism,
        Some(SaslMechanism::ScramSha512)
    );

    assert_eq!(a.common.commit_interval_ms, 750);
    assert_eq!(
        (a.common.rebuild_timeout_ms, a.common.rebuild_max_records),
        (45_000, 2_000_000)
    );
    assert_eq!(a.common.max_future_skew_ms, 90_000);
    assert_eq!(a.max_held_records, 40_000);
    assert_eq!(
        (
            a.join_grace_ms,
            a.join_idle_timeout_ms,
            a.join_input_idle_timeout_ms,
            a.max_staleness_ms,
            a.rebuild_lookback_ms
        ),
        (1_500, 20_000, 120_000, 900_000, 1_200_000)
    );
    let cfg = a.join_config();
    assert_eq!(
        (cfg.grace_ms, cfg.max_staleness_ms, cfg.idle_timeout_ms),
        (1_500, 900_000, Some(20_000))
    );
    assert_eq!(
        a.client.framing.framing(),
        sensorflow_core::wire::Framing::Confluent { schema_id: 42 }
    );
    assert_eq!(a.client.kafka.properties.len(), 2);
}

#[test]
fn gcs_sink_parses_what_the_operator_sets() {
    let s = full_spec();
    let env_vars = container_env(&desired(&s), Stage::Sink);
    assert_eq!(
        env_vars[env::SINK_CREDENTIALS],
        "/etc/sensorflow/gcs/key.json"
    );
    let a: SinkArgs = parse("gcs-sink", &env_vars);
    assert_eq!(a.group_id, "p-sink");
    assert_eq!(a.bucket.as_deref(), Some("archive"));
    assert_eq!(a.prefix, "tenant/p/");
    assert_eq!(a.sink_topics, ["p.predictions", "dlq", "p.sz"]);
    let kinds: Vec<String> = a.topic_kinds().into_iter().map(|(t, _)| t).collect();
    assert_eq!(kinds, ["p.predictions", "dlq", "p.sz"]);
    assert_eq!((a.max_records, a.max_bytes), (5_000, 1 << 20));
    assert_eq!(a.max_age_seconds, 90.0);
    assert_eq!(a.endpoint.as_deref(), Some("https://storage.example:4443"));
    assert_eq!(
        a.credentials.as_deref(),
        Some(std::path::Path::new("/etc/sensorflow/gcs/key.json"))
    );
    assert_eq!(a.client.topics.topic_dlq, "dlq");
    assert_eq!(a.serve.log_format, LogFormat::Json);
    assert_eq!(a.serve.metrics_addr.port(), build::METRICS_PORT as u16);
    assert_eq!(
        a.client.framing.framing(),
        sensorflow_core::wire::Framing::Confluent { schema_id: 42 }
    );
    assert_eq!(a.client.kafka.properties.len(), 2);
}

#[test]
fn the_sink_archives_all_nine_topics_by_default() {
    let mut s = full_spec();
    if let Some(sink) = s.sink.as_mut() {
        sink.topics.clear();
    }
    let a: SinkArgs = parse("gcs-sink", &container_env(&desired(&s), Stage::Sink));
    let v = validate("p", &Naming::resolve(&s, &Naming::legacy_defaults("p")), &s).expect("valid");
    assert_eq!(a.sink_topics, v.topics.all().map(str::to_owned).to_vec());
    assert_eq!(a.sink_topics.len(), 9);
}

#[test]
fn the_default_pipeline_parses_too() {
    let s: SensorPipelineSpec =
        serde_json::from_value(serde_json::json!({"kafka": {"bootstrapServers": "k:9092"}}))
            .expect("spec");
    let d = desired(&s);
    let w: WindowArgs = parse("window-processor", &container_env(&d, Stage::Window));
    assert!(!w.common.exactly_once);
    assert_eq!(w.window_size_ms, 600_000);
    assert_eq!(w.client.topics.topics().dead_letter, "p.dead-letter");
    assert_eq!(w.client.kafka.security_protocol, None);
    let j: JoinArgs = parse("join-predict", &container_env(&d, Stage::Join));
    assert_eq!(j.threshold, 0.5);
    assert_eq!(j.model, ModelKind::Logistic);
    assert_eq!(j.model_seed, 42, "no spec seed: the processor's default");
    assert!(
        d.deployments.len() == 2,
        "no sink Deployment without spec.sink"
    );
}

#[test]
fn a_variable_no_processor_declares_fails_the_contract() {
    let mut env_vars = container_env(&desired(&full_spec()), Stage::Window);
    env_vars.insert("SF_WINDOW_SIZE".into(), "60000".into());
    let r = std::panic::catch_unwind(|| parse::<WindowArgs>("window-processor", &env_vars));
    assert!(r.is_err(), "an unknown variable must be refused");
    let mut env_vars = container_env(&desired(&full_spec()), Stage::Window);
    env_vars.insert(env::WATERMARK_SCOPE.into(), "consumer".into());
    let r = std::panic::catch_unwind(|| parse::<WindowArgs>("window-processor", &env_vars));
    assert!(
        r.is_err(),
        "a value the processor cannot parse must be refused"
    );
}

#[test]
fn the_three_parsers_pass_clap_s_own_consistency_checks() {
    // clap runs these only in debug builds; the suites run release.
    WindowArgs::command().debug_assert();
    JoinArgs::command().debug_assert();
    SinkArgs::command().debug_assert();
}
