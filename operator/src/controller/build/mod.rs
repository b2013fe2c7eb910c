//! Pure construction of every Kubernetes object a pipeline owns.
//!
//! ```text
//!   Validated + owner ref + replicas ──build──▶ Desired {
//!       ServiceAccount  <p>-processor
//!       ConfigMap       <p>-common, <p>-window, <p>-join, [<p>-sink]   (env, loaded with envFrom)
//!       Deployment      <p>-window, <p>-join, [<p>-sink]              (config-hash annotation)
//!       Service         <p>-metrics                                   (headless, port 9100)
//!   }
//! ```
//!
//! A Deployment's pod template carries `sensorflow.io/config-hash`, a SHA-256 over the
//! ConfigMaps it loads, its Secret references and the `resourceVersion` of each Secret it
//! references, so a configuration change or a rotated Secret rolls its pods (a Secret read
//! through `secretKeyRef` env is only read at container start).

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec};
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMap, ConfigMapEnvSource, Container, ContainerPort, EnvFromSource, EnvVar,
    EnvVarSource, HTTPGetAction, KeyToPath, PodSecurityContext, PodSpec, PodTemplateSpec, Probe,
    ResourceRequirements, SeccompProfile, SecretKeySelector, SecretVolumeSource, SecurityContext,
    Service, ServiceAccount, ServicePort, ServiceSpec, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use sha2::{Digest, Sha256};

use sensorflow_api::env;
use sensorflow_api::settings::{
    CommonSettings, Env, JoinSettings, KafkaSettings, LoopSettings, SinkSettings, WindowSettings,
};

use crate::controller::validate::Validated;
use crate::crd::{DeliveryGuarantee, PodTemplateOverlay, UsernameFrom};

pub mod owned;
pub use owned::*;

/// `resourceVersion` of every Secret the spec references, by Secret name (read in the
/// dereference step; a changed version rolls the Deployments that use the Secret).
pub type SecretVersions = BTreeMap<String, String>;

/// Replica counts to write; `None` leaves `spec.replicas` to someone else (an HPA).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ReplicaPlan {
    /// window-processor.
    pub window: Option<i32>,
    /// join-predict.
    pub join: Option<i32>,
}

/// Every object a pipeline owns.
#[derive(Debug, Clone, PartialEq)]
pub struct Desired {
    /// The processors' ServiceAccount `<p>-processor`, then one `<p>-<stage>` per stage with
    /// `podTemplate.serviceAccountAnnotations`.
    pub service_accounts: Vec<ServiceAccount>,
    /// Configuration, one ConfigMap per stage plus the common one.
    pub config_maps: Vec<ConfigMap>,
    /// One Deployment per stage.
    pub deployments: Vec<Deployment>,
    /// Headless Service selecting every processor pod on the metrics port.
    pub service: Service,
}

fn labels(pipeline: &str, component: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".to_owned(), "sensorflow".to_owned()),
        ("app.kubernetes.io/instance".to_owned(), pipeline.to_owned()),
        (
            "app.kubernetes.io/managed-by".to_owned(),
            MANAGED_BY.to_owned(),
        ),
        (COMPONENT_LABEL.to_owned(), component.to_owned()),
        (PIPELINE_LABEL.to_owned(), pipeline.to_owned()),
    ])
}

fn meta(
    name: String,
    ns: &str,
    pipeline: &str,
    component: &str,
    owner: &OwnerReference,
) -> ObjectMeta {
    ObjectMeta {
        name: Some(name),
        namespace: Some(ns.to_owned()),
        labels: Some(labels(pipeline, component)),
        owner_references: Some(vec![owner.clone()]),
        ..Default::default()
    }
}

/// Settings every processor shares, from the validated pipeline.
pub fn common_settings(v: &Validated) -> CommonSettings {
    let s = &v.spec;
    let security = s.kafka.security.as_ref();
    CommonSettings {
        kafka: KafkaSettings {
            bootstrap_servers: s.kafka.bootstrap_servers.clone(),
            security_protocol: security.map(|sec| sec.protocol),
            sasl_mechanism: security.and_then(|sec| sec.sasl_mechanism),
            ssl_ca_location: security
                .and_then(|sec| sec.ca_secret.as_ref())
                .map(|ca| format!("{KAFKA_CA_DIR}/{}", ca.key)),
            ssl_certificate_location: security
                .and_then(|sec| sec.client_certificate_secret.as_ref())
                .map(|cc| format!("{KAFKA_CLIENT_CERT_DIR}/{}", cc.certificate_key)),
            ssl_key_location: security
                .and_then(|sec| sec.client_certificate_secret.as_ref())
                .map(|cc| format!("{KAFKA_CLIENT_CERT_DIR}/{}", cc.key_key)),
            properties: s.kafka.properties.clone(),
        },
        topics: v.topics.clone(),
        metrics_addr: format!("0.0.0.0:{METRICS_PORT}"),
        log_format: s.processors.log_format,
        log_filter: s.processors.log_level.clone(),
        wire_format: s.processors.wire_format,
        schema_id: u32::try_from(s.processors.schema_id).unwrap_or(u32::MAX),
    }
}

/// The loop settings of `stage` (`window` or `join`): its transactional ids are
/// `<groupPrefix>-<stage>-<pod>`.
fn loop_settings(v: &Validated, stage: &str) -> LoopSettings {
    let p = &v.spec.processors;
    LoopSettings {
        exactly_once: p.delivery_guarantee == DeliveryGuarantee::ExactlyOnce,
        commit_interval_ms: p.commit_interval_ms,
        rebuild_timeout_ms: p.rebuild.timeout_ms,
        rebuild_max_records: p.rebuild.max_records,
        max_future_skew_ms: p.max_future_skew_ms,
        transactional_id_prefix: format!("{}-{stage}", v.naming.group_prefix),
    }
}

/// Container resources of a stage whose spec sets none (neither its own `resources` nor
/// `processors.resources`): requests a scheduler can place on a small node, and a memory limit
/// above what each stage holds by its own defaults, so a leak is an OOM kill, not a node's
/// memory. No CPU limit (throttling a stream processor only builds lag). window-processor:
/// 10-minute windows of ~10⁴ clients (tens of MB); join-predict: its held-records budget
/// (`join.maxHeldRecords`, 500,000 ≈ 75 MB) plus as-of state; both plus librdkafka's fetch
/// queues (≤ 64 MiB). gcs-sink: its buffer budget (`--max-buffer-bytes`, 1 GiB) plus Parquet
/// encoding.
pub fn default_resources(stage: Stage) -> ResourceRequirements {
    let q = |s: &str| Quantity(s.to_owned());
    let (request_memory, limit_memory) = match stage {
        Stage::Window | Stage::Join => ("256Mi", "1Gi"),
        Stage::Sink => ("512Mi", "2Gi"),
    };
    ResourceRequirements {
        requests: Some(
            [
                ("cpu".to_owned(), q("250m")),
                ("memory".to_owned(), q(request_memory)),
            ]
            .into(),
        ),
        limits: Some([("memory".to_owned(), q(limit_memory))].into()),
        ..Default::default()
    }
}

/// window-processor settings of the validated pipeline.
pub fn window_settings(v: &Validated) -> WindowSettings {
    let w = &v.spec.window;
    WindowSettings {
        group_id: v.window_group(),
        run: loop_settings(v, "window"),
        kind: w.kind,
        size_ms: w.size_ms,
        advance_ms: w.advance_ms,
        emit: w.emit,
        time: w.time,
        aggregates: w.aggregates,
        grace_ms: w.grace_ms,
        watermark_scope: w.watermark_scope,
        fa_range: w.fa_range,
        fi_range: w.fi_range,
        fd_range: w.fd_range,
    }
}

/// join-predict settings of the validated pipeline.
pub fn join_settings(v: &Validated) -> JoinSettings {
    let m = &v.spec.model;
    let j = &v.spec.join;
    JoinSettings {
        group_id: v.join_group(),
        run: loop_settings(v, "join"),
        model: m.kind,
        weights: m.weights.clone(),
        bias: m.bias,
        threshold: m.threshold,
        seed: m.seed,
        upstream_group_id: v.window_group(),
        grace_ms: j.grace_ms,
        idle_timeout_ms: j.idle_timeout_ms,
        input_idle_timeout_ms: j.input_idle_timeout_ms,
        max_held_records: j.max_held_records,
        max_staleness_ms: j.max_staleness_ms,
        rebuild_lookback_ms: j.rebuild_lookback_ms,
    }
}

/// gcs-sink settings of the validated pipeline; `None` without `spec.sink`.
pub fn sink_settings(v: &Validated) -> Option<SinkSettings> {
    let sink = v.spec.sink.as_ref()?;
    Some(SinkSettings {
        group_id: v.sink_group(),
        bucket: sink.bucket.clone(),
        prefix: v.naming.object_prefix.clone(),
        topics: sink
            .roles()
            .into_iter()
            .map(|r| v.topics.get(r).to_owned())
            .collect(),
        max_records: sink.rotation.max_records,
        max_bytes: sink.rotation.max_bytes,
        max_age_seconds: sink.rotation.max_age_seconds,
        endpoint: sink.endpoint.clone(),
        credentials: sink
            .credentials_secret
            .as_ref()
            .map(|c| format!("{GCS_CREDENTIALS_DIR}/{}", c.key)),
    })
}

/// The pod template overlay of `stage` (empty for the sink without `spec.sink`).
pub fn pod_overlay(v: &Validated, stage: Stage) -> PodTemplateOverlay {
    let p = &v.spec.processors;
    match stage {
        Stage::Window => p.window.pod_template.clone(),
        Stage::Join => p.join.pod_template.clone(),
        Stage::Sink => v
            .spec
            .sink
            .as_ref()
            .map(|k| k.pod_template.clone())
            .unwrap_or_default(),
    }
}

/// Name of the operator's shared processor ServiceAccount: `<pipeline>-processor`.
pub fn processor_service_account(pipeline: &str) -> String {
    format!("{pipeline}-processor")
}

/// The ServiceAccount the pods of `stage` run as: the overlay's `serviceAccountName`, else
/// `<pipeline>-<stage>` (created by the operator) when the overlay annotates one, else the
/// shared `<pipeline>-processor`.
pub fn service_account_of(v: &Validated, stage: Stage) -> String {
    let o = pod_overlay(v, stage);
    match o.service_account_name {
        Some(name) => name,
        None if !o.service_account_annotations.is_empty() => deployment_name(&v.name, stage),
        None => processor_service_account(&v.name),
    }
}

/// Environment shared by every processor ([`CommonSettings::env`]).
pub fn common_env(v: &Validated) -> Env {
    common_settings(v).env()
}

/// Environment of one stage, on top of [`common_env`] ([`WindowSettings::env`],
/// [`JoinSettings::env`], [`SinkSettings::env`]; empty for the sink without `spec.sink`).
pub fn stage_env(v: &Validated, stage: Stage) -> Env {
    match stage {
        Stage::Window => window_settings(v).env(),
        Stage::Join => join_settings(v).env(),
        Stage::Sink => sink_settings(v).map(|s| s.env()).unwrap_or_default(),
    }
}

/// Hex SHA-256 (first 16 bytes) over the given maps and extra strings, in order.
pub fn config_hash(maps: &[&BTreeMap<String, String>], extra: &[String]) -> String {
    let mut h = Sha256::new();
    for m in maps {
        for (k, v) in *m {
            h.update(k.as_bytes());
            h.update([0]);
            h.update(v.as_bytes());
            h.update([0]);
        }
        h.update([1]);
    }
    for e in extra {
        h.update(e.as_bytes());
        h.update([0]);
    }
    h.finalize()
        .iter()
        .take(16)
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn secret_env(name: &str, secret: &str, key: &str) -> EnvVar {
    EnvVar {
        name: name.to_owned(),
        value_from: Some(EnvVarSource {
            secret_key_ref: Some(SecretKeySelector {
                name: secret.to_owned(),
                key: key.to_owned(),
                optional: Some(false),
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn probe(path: &str, period: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.to_owned()),
            port: IntOrString::String("metrics".to_owned()),
            ..Default::default()
        }),
        period_seconds: Some(period),
        failure_threshold: Some(3),
        ..Default::default()
    }
}

fn deployment(
    v: &Validated,
    ns: &str,
    owner: &OwnerReference,
    stage: Stage,
    replicas: Option<i32>,
    config_maps: [&ConfigMap; 2],
    secrets: &SecretVersions,
) -> Deployment {
    let s = &v.spec;
    let p = &s.processors;
    let name = deployment_name(&v.name, stage);
    let resources: Option<ResourceRequirements> = match stage {
        Stage::Window => p.window.resources.clone(),
        Stage::Join => p.join.resources.clone(),
        Stage::Sink => s.sink.as_ref().and_then(|k| k.resources.clone()),
    }
    .or_else(|| p.resources.clone())
    .or_else(|| Some(default_resources(stage)));

    let mut secret_env_vars = Vec::new();
    let mut volumes = vec![Volume {
        name: "tmp".into(),
        empty_dir: Some(Default::default()),
        ..Default::default()
    }];
    let mut mounts = vec![VolumeMount {
        name: "tmp".into(),
        mount_path: "/tmp".into(),
        ..Default::default()
    }];
    let mut extra = Vec::new();
    let version = |name: &str| secrets.get(name).map_or("", String::as_str).to_owned();
    if let Some(sec) = &s.kafka.security {
        if let Some(c) = &sec.credentials_secret {
            // With usernameFrom: SecretName the username is the Secret's name: not secret
            // material, so a plain value; the password is always a Secret reference.
            secret_env_vars.push(match c.username_from {
                UsernameFrom::Key => secret_env(env::KAFKA_SASL_USERNAME, &c.name, &c.username_key),
                UsernameFrom::SecretName => EnvVar {
                    name: env::KAFKA_SASL_USERNAME.to_owned(),
                    value: Some(c.name.clone()),
                    ..Default::default()
                },
            });
            secret_env_vars.push(secret_env(
                env::KAFKA_SASL_PASSWORD,
                &c.name,
                &c.password_key,
            ));
            extra.push(format!(
                "sasl:{}:{}:{}:{:?}@{}",
                c.name,
                c.username_key,
                c.password_key,
                c.username_from,
                version(&c.name)
            ));
        }
        if let Some(ca) = &sec.ca_secret {
            volumes.push(secret_volume("kafka-ca", &ca.name));
            mounts.push(read_only_mount("kafka-ca", KAFKA_CA_DIR));
            extra.push(format!("ca:{}:{}@{}", ca.name, ca.key, version(&ca.name)));
        }
        if let Some(cc) = &sec.client_certificate_secret {
            // Only the two keys: a Strimzi user Secret also holds user.p12 and its password.
            let mut vol = secret_volume("kafka-client-cert", &cc.name);
            if let Some(src) = vol.secret.as_mut() {
                src.items = Some(
                    [&cc.certificate_key, &cc.key_key]
                        .into_iter()
                        .map(|k| KeyToPath {
                            key: k.clone(),
                            path: k.clone(),
                            mode: None,
                        })
                        .collect(),
                );
            }
            volumes.push(vol);
            mounts.push(read_only_mount("kafka-client-cert", KAFKA_CLIENT_CERT_DIR));
            extra.push(format!(
                "client-cert:{}:{}:{}@{}",
                cc.name,
                cc.certificate_key,
                cc.key_key,
                version(&cc.name)
            ));
        }
    }
    if stage == Stage::Sink
        && let Some(c) = s.sink.as_ref().and_then(|k| k.credentials_secret.as_ref())
    {
        volumes.push(secret_volume("gcs-credentials", &c.name));
        mounts.push(read_only_mount("gcs-credentials", GCS_CREDENTIALS_DIR));
        extra.push(format!("gcs:{}:{}@{}", c.name, c.key, version(&c.name)));
    }

    let data: Vec<&BTreeMap<String, String>> = config_maps
        .iter()
        .filter_map(|cm| cm.data.as_ref())
        .collect();

    // The pod template overlay, without anything the operator owns (validation refuses such
    // a spec; this keeps the built object right even for one that skipped it).
    let overlay = pod_overlay(v, stage);
    let operator_env: Vec<String> = data
        .iter()
        .flat_map(|m| m.keys().cloned())
        .chain(secret_env_vars.iter().map(|e| e.name.clone()))
        .collect();
    let mut env_vars = secret_env_vars;
    for e in &overlay.env {
        if !env::is_contract(&e.name)
            && !operator_env.contains(&e.name)
            && !env_vars.iter().any(|x| x.name == e.name)
        {
            env_vars.push(e.clone());
        }
    }
    for vol in &overlay.volumes {
        if !OWNED_VOLUMES.contains(&vol.name.as_str())
            && !volumes.iter().any(|x| x.name == vol.name)
        {
            volumes.push(vol.clone());
        }
    }
    for m in &overlay.volume_mounts {
        if !OWNED_VOLUMES.contains(&m.name.as_str()) && !owned_mount_path(&m.mount_path) {
            mounts.push(m.clone());
        }
    }
    let mut pod_labels: BTreeMap<String, String> = overlay
        .labels
        .iter()
        .filter(|(k, _)| !owned_key(k))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    pod_labels.extend(labels(&v.name, stage.as_str()));
    let mut pod_annotations: BTreeMap<String, String> = overlay
        .annotations
        .iter()
        .filter(|(k, _)| !owned_key(k))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let hash = config_hash(&data, &extra);
    let component = stage.as_str();
    let selector = BTreeMap::from([
        ("app.kubernetes.io/instance".to_owned(), v.name.clone()),
        (COMPONENT_LABEL.to_owned(), component.to_owned()),
    ]);
    let pull = p.image_pull_policy.as_str();

    let container = Container {
        name: stage.binary().to_owned(),
        image: Some(v.image.clone()),
        image_pull_policy: Some(pull.to_owned()),
        command: Some(vec![format!("/usr/local/bin/{}", stage.binary())]),
        env_from: Some(
            config_maps
                .iter()
                .map(|cm| EnvFromSource {
                    config_map_ref: Some(ConfigMapEnvSource {
                        name: cm.metadata.name.clone().unwrap_or_default(),
                        optional: Some(false),
                    }),
                    ..Default::default()
                })
                .collect(),
        ),
        env: (!env_vars.is_empty()).then_some(env_vars),
        ports: Some(vec![ContainerPort {
            name: Some("metrics".into()),
            container_port: METRICS_PORT,
            protocol: Some("TCP".into()),
            ..Default::default()
        }]),
        liveness_probe: Some(probe("/health", 10)),
        readiness_probe: Some(probe("/ready", 5)),
        resources,
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            run_as_non_root: Some(true),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".into()]),
                ..Default::default()
            }),
            ..Default::default()
        }),
        volume_mounts: Some(mounts),
        ..Default::default()
    };

    Deployment {
        metadata: meta(name, ns, &v.name, component, owner),
        spec: Some(DeploymentSpec {
            replicas,
            selector: LabelSelector {
                match_labels: Some(selector),
                ..Default::default()
            },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(pod_labels),
                    annotations: Some({
                        pod_annotations.extend([
                            (CONFIG_HASH_ANNOTATION.to_owned(), hash),
                            ("prometheus.io/scrape".to_owned(), "true".to_owned()),
                            ("prometheus.io/port".to_owned(), METRICS_PORT.to_string()),
                        ]);
                        pod_annotations
                    }),
                    ..Default::default()
                }),
                spec: Some(PodSpec {
                    service_account_name: Some(service_account_of(v, stage)),
                    node_selector: (!overlay.node_selector.is_empty())
                        .then(|| overlay.node_selector.clone()),
                    tolerations: (!overlay.tolerations.is_empty())
                        .then(|| overlay.tolerations.clone()),
                    affinity: overlay.affinity.clone(),
                    topology_spread_constraints: (!overlay.topology_spread_constraints.is_empty())
                        .then(|| overlay.topology_spread_constraints.clone()),
                    priority_class_name: overlay.priority_class_name.clone(),
                    image_pull_secrets: (!overlay.image_pull_secrets.is_empty())
                        .then(|| overlay.image_pull_secrets.clone()),
                    automount_service_account_token: Some(false),
                    // Processors commit offsets on SIGTERM after flushing; give them time.
                    termination_grace_period_seconds: Some(60),
                    security_context: Some(PodSecurityContext {
                        run_as_non_root: Some(true),
                        run_as_user: Some(65532),
                        run_as_group: Some(65532),
                        fs_group: Some(65532),
                        seccomp_profile: Some(SeccompProfile {
                            type_: "RuntimeDefault".into(),
                            ..Default::default()
                        }),
                        ..Default::default()
                    }),
                    containers: vec![container],
                    volumes: Some(volumes),
                    ..Default::default()
                }),
            },
            ..Default::default()
        }),
        status: None,
    }
}

fn secret_volume(name: &str, secret: &str) -> Volume {
    Volume {
        name: name.to_owned(),
        secret: Some(SecretVolumeSource {
            secret_name: Some(secret.to_owned()),
            default_mode: Some(0o440),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn read_only_mount(name: &str, path: &str) -> VolumeMount {
    VolumeMount {
        name: name.to_owned(),
        mount_path: path.to_owned(),
        read_only: Some(true),
        ..Default::default()
    }
}

/// Builds every object of the pipeline `v` in namespace `ns`, owned by `owner`, with the given
/// replica counts and the versions of the Secrets it references. Pure: the same input always
/// gives the same output.
pub fn build(
    v: &Validated,
    ns: &str,
    owner: &OwnerReference,
    replicas: ReplicaPlan,
    secrets: &SecretVersions,
) -> Desired {
    let cm = |component: &str, data: BTreeMap<String, String>| ConfigMap {
        metadata: meta(
            format!("{}-{component}", v.name),
            ns,
            &v.name,
            component,
            owner,
        ),
        data: Some(data),
        ..Default::default()
    };
    let common = cm("common", common_env(v));
    let window_cm = cm("window", stage_env(v, Stage::Window));
    let join_cm = cm("join", stage_env(v, Stage::Join));
    let mut deployments = vec![
        deployment(
            v,
            ns,
            owner,
            Stage::Window,
            replicas.window,
            [&common, &window_cm],
            secrets,
        ),
        deployment(
            v,
            ns,
            owner,
            Stage::Join,
            replicas.join,
            [&common, &join_cm],
            secrets,
        ),
    ];
    let mut config_maps = vec![common.clone(), window_cm, join_cm];
    if let Some(sink) = &v.spec.sink {
        let sink_cm = cm("sink", stage_env(v, Stage::Sink));
        deployments.push(deployment(
            v,
            ns,
            owner,
            Stage::Sink,
            Some(if v.spec.suspend { 0 } else { sink.replicas }),
            [&common, &sink_cm],
            secrets,
        ));
        config_maps.push(sink_cm);
    }

    let mut service_accounts = vec![ServiceAccount {
        metadata: meta(
            processor_service_account(&v.name),
            ns,
            &v.name,
            "processor",
            owner,
        ),
        automount_service_account_token: Some(false),
        ..Default::default()
    }];
    for d in &deployments {
        let stage = match d
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(COMPONENT_LABEL))
        {
            Some(c) if c == "window" => Stage::Window,
            Some(c) if c == "join" => Stage::Join,
            _ => Stage::Sink,
        };
        let o = pod_overlay(v, stage);
        if o.service_account_name.is_none() && !o.service_account_annotations.is_empty() {
            let mut m = meta(
                deployment_name(&v.name, stage),
                ns,
                &v.name,
                stage.as_str(),
                owner,
            );
            m.annotations = Some(o.service_account_annotations.clone());
            service_accounts.push(ServiceAccount {
                metadata: m,
                automount_service_account_token: Some(false),
                ..Default::default()
            });
        }
    }
    let service = Service {
        metadata: meta(format!("{}-metrics", v.name), ns, &v.name, "metrics", owner),
        spec: Some(ServiceSpec {
            cluster_ip: Some("None".into()),
            selector: Some(BTreeMap::from([
                ("app.kubernetes.io/instance".to_owned(), v.name.clone()),
                (PIPELINE_LABEL.to_owned(), v.name.clone()),
            ])),
            ports: Some(vec![ServicePort {
                name: Some("metrics".into()),
                port: METRICS_PORT,
                target_port: Some(IntOrString::String("metrics".into())),
                protocol: Some("TCP".into()),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        status: None,
    };
    Desired {
        service_accounts,
        config_maps,
        deployments,
        service,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::validate::{Naming, validate};
    use crate::crd::{KafkaSecurity, SecurityProtocol, SensorPipelineSpec, SinkSpec, SinkTopic};

    use crate::controller::validate::tests::spec;

    fn owner() -> OwnerReference {
        OwnerReference {
            api_version: "sensorflow.io/v1alpha1".into(),
            kind: "SensorPipeline".into(),
            name: "p".into(),
            uid: "uid-1".into(),
            controller: Some(true),
            block_owner_deletion: Some(true),
        }
    }

    fn built(s: &SensorPipelineSpec) -> Desired {
        let v = validate("p", &Naming::legacy("p"), s).expect("valid");
        build(
            &v,
            "ns",
            &owner(),
            ReplicaPlan {
                window: Some(2),
                join: Some(4),
            },
            &SecretVersions::new(),
        )
    }

    fn env_of(d: &Desired, cm: &str) -> BTreeMap<String, String> {
        d.config_maps
            .iter()
            .find(|c| c.metadata.name.as_deref() == Some(cm))
            .and_then(|c| c.data.clone())
            .expect("config map")
    }

    fn hash(d: &Deployment) -> String {
        d.spec
            .as_ref()
            .and_then(|s| s.template.metadata.as_ref())
            .and_then(|m| m.annotations.as_ref())
            .and_then(|a| a.get(CONFIG_HASH_ANNOTATION).cloned())
            .expect("hash")
    }

    #[test]
    fn builds_the_processor_contract() {
        let d = built(&spec());
        assert_eq!(d.deployments.len(), 2);
        assert_eq!(d.config_maps.len(), 3);
        let common = env_of(&d, "p-common");
        assert_eq!(common["KAFKA_BOOTSTRAP_SERVERS"], "kafka:9092");
        assert_eq!(common["SF_TOPIC_SZ"], "p.sz");
        assert_eq!(common["SF_TOPIC_DLQ"], "p.dead-letter");
        assert_eq!(common["SF_METRICS_ADDR"], "0.0.0.0:9100");
        let w = env_of(&d, "p-window");
        assert_eq!(w["SF_GROUP_ID"], "p-window");
        assert_eq!(w["SF_WINDOW_SIZE_MS"], "600000");
        assert_eq!(w["SF_FD_RANGE"], "-0.01,0.01");
        assert_eq!(w["SF_FA_RANGE"], "0,5");
        let j = env_of(&d, "p-join");
        assert_eq!(j["SF_GROUP_ID"], "p-join");
        assert_eq!(j["SF_UPSTREAM_GROUP_ID"], "p-window");
        assert_eq!(j["SF_THRESHOLD"], "0.5");
        assert_eq!(j["SF_MODEL"], "logistic");
        assert_eq!(w["SF_EXACTLY_ONCE"], "false");
        assert_eq!(j["SF_EXACTLY_ONCE"], "false");
    }

    #[test]
    fn a_stage_without_resources_gets_the_defaults_and_a_set_one_keeps_its_own() {
        let containers = |d: &Desired| -> Vec<ResourceRequirements> {
            d.deployments
                .iter()
                .map(|dep| {
                    let pod = dep.spec.as_ref().and_then(|s| s.template.spec.as_ref());
                    pod.expect("pod").containers[0]
                        .resources
                        .clone()
                        .expect("resources")
                })
                .collect()
        };
        let d = built(&spec());
        let r = containers(&d);
        assert_eq!(
            r,
            [
                default_resources(Stage::Window),
                default_resources(Stage::Join)
            ]
        );
        let limit = r[1].limits.as_ref().expect("limits");
        assert_eq!(limit["memory"], Quantity("1Gi".into()));
        assert!(!limit.contains_key("cpu"), "no CPU limit");
        let mut s = spec();
        let own = ResourceRequirements {
            requests: Some([("memory".to_owned(), Quantity("64Mi".into()))].into()),
            ..Default::default()
        };
        s.processors.resources = Some(own.clone());
        assert_eq!(containers(&built(&s)), [own.clone(), own]);
    }

    #[test]
    fn exactly_once_reaches_both_processors_and_rolls_them() {
        let a = built(&spec());
        let mut s = spec();
        s.processors.delivery_guarantee = DeliveryGuarantee::ExactlyOnce;
        let b = built(&s);
        assert_eq!(env_of(&b, "p-window")["SF_EXACTLY_ONCE"], "true");
        assert_eq!(env_of(&b, "p-join")["SF_EXACTLY_ONCE"], "true");
        assert!(!env_of(&b, "p-common").contains_key("SF_EXACTLY_ONCE"));
        assert_ne!(hash(&a.deployments[0]), hash(&b.deployments[0]));
        assert_ne!(hash(&a.deployments[1]), hash(&b.deployments[1]));
    }

    #[test]
    fn rotated_secret_rolls_exactly_the_deployments_that_use_it() {
        let mut s = spec();
        s.kafka.security = Some(KafkaSecurity {
            protocol: SecurityProtocol::SaslSsl,
            sasl_mechanism: Some(crate::crd::SaslMechanism::Plain),
            credentials_secret: Some(crate::crd::CredentialsSecretRef {
                name: "kafka-creds".into(),
                username_key: "username".into(),
                password_key: "password".into(),
                username_from: Default::default(),
            }),
            ca_secret: None,
            allow_plaintext_credentials: false,
            client_certificate_secret: None,
        });
        s.sink = Some(SinkSpec {
            bucket: "archive".into(),
            prefix: None,
            topics: vec![SinkTopic::Predictions],
            rotation: Default::default(),
            credentials_secret: Some(crate::crd::SecretKeyRef {
                name: "gcs".into(),
                key: "key.json".into(),
            }),
            endpoint: None,
            replicas: 1,
            resources: None,
            pod_template: Default::default(),
        });
        let v = validate("p", &Naming::legacy("p"), &s).expect("valid");
        let with = |kafka_rv: &str, gcs_rv: &str| {
            let versions = SecretVersions::from([
                ("kafka-creds".to_owned(), kafka_rv.to_owned()),
                ("gcs".to_owned(), gcs_rv.to_owned()),
            ]);
            let d = build(&v, "ns", &owner(), ReplicaPlan::default(), &versions);
            d.deployments.iter().map(hash).collect::<Vec<_>>()
        };
        let base = with("1", "1");
        assert_eq!(with("1", "1"), base, "same versions, same hashes");
        let kafka = with("2", "1");
        assert!(
            base.iter().zip(&kafka).all(|(a, b)| a != b),
            "every stage uses Kafka"
        );
        let gcs = with("1", "2");
        assert_eq!(
            &gcs[..2],
            &base[..2],
            "window and join do not mount the GCS key"
        );
        assert_ne!(gcs[2], base[2], "the sink does");
    }

    #[test]
    fn every_object_is_owned_and_labelled() {
        let d = built(&spec());
        let metas = d
            .config_maps
            .iter()
            .map(|c| &c.metadata)
            .chain(d.deployments.iter().map(|x| &x.metadata))
            .chain(d.service_accounts.iter().map(|x| &x.metadata))
            .chain([&d.service.metadata]);
        for m in metas {
            assert_eq!(m.owner_references.as_deref(), Some(&[owner()][..]));
            assert_eq!(m.labels.as_ref().expect("labels")[PIPELINE_LABEL], "p");
            assert_eq!(m.namespace.as_deref(), Some("ns"));
        }
    }

    #[test]
    fn deployments_are_hardened_and_sized() {
        let d = built(&spec());
        let w = &d.deployments[0];
        let spec = w.spec.as_ref().expect("spec");
        assert_eq!(spec.replicas, Some(2));
        let pod = spec.template.spec.as_ref().expect("pod");
        let c = &pod.containers[0];
        assert_eq!(
            c.command.as_deref(),
            Some(&["/usr/local/bin/window-processor".to_owned()][..])
        );
        let sc = c.security_context.as_ref().expect("sc");
        assert_eq!(sc.read_only_root_filesystem, Some(true));
        assert_eq!(sc.run_as_non_root, Some(true));
        assert_eq!(c.image.as_deref(), Some(crate::crd::DEFAULT_IMAGE));
        assert_eq!(c.image_pull_policy.as_deref(), Some("IfNotPresent"));
        assert_eq!(
            d.deployments[1].spec.as_ref().and_then(|s| s.replicas),
            Some(4)
        );
    }

    #[test]
    fn config_change_changes_only_the_affected_hash() {
        let a = built(&spec());
        let mut s = spec();
        s.model.threshold = 0.7;
        let b = built(&s);
        assert_eq!(hash(&a.deployments[0]), hash(&b.deployments[0]));
        assert_ne!(hash(&a.deployments[1]), hash(&b.deployments[1]));
        // Same input, same output.
        assert_eq!(built(&spec()), a);
    }

    proptest::proptest! {
        /// A stage's config hash changes exactly when its own configuration changes, and every
        /// built object is owned by the pipeline.
        #[test]
        fn hashes_track_each_stage_config(size in 1000i64..86_400_000, threshold in 0.0f64..=1.0) {
            let base = built(&spec());
            let mut s = spec();
            s.window.size_ms = size;
            s.model.threshold = threshold;
            let d = built(&s);
            proptest::prop_assert_eq!(
                hash(&d.deployments[0]) == hash(&base.deployments[0]),
                size == s.window.size_ms && size == 600_000
            );
            proptest::prop_assert_eq!(
                hash(&d.deployments[1]) == hash(&base.deployments[1]),
                (threshold - 0.5).abs() < f64::EPSILON
            );
            for dep in &d.deployments {
                proptest::prop_assert_eq!(dep.metadata.owner_references.as_deref(), Some(&[owner()][..]));
            }
        }
    }

    #[test]
    fn secrets_come_from_secret_refs_never_inline() {
        let mut s = spec();
        s.kafka.security = Some(KafkaSecurity {
            protocol: SecurityProtocol::SaslSsl,
            sasl_mechanism: Some(crate::crd::SaslMechanism::ScramSha512),
            credentials_secret: Some(crate::crd::CredentialsSecretRef {
                name: "kafka-creds".into(),
                username_key: "user".into(),
                password_key: "pass".into(),
                username_from: Default::default(),
            }),
            ca_secret: Some(crate::crd::SecretKeyRef {
                name: "ca".into(),
                key: "ca.pem".into(),
            }),
            allow_plaintext_credentials: false,
            client_certificate_secret: None,
        });
        let d = built(&s);
        let common = env_of(&d, "p-common");
        assert_eq!(common["KAFKA_SECURITY_PROTOCOL"], "SASL_SSL");
        assert_eq!(
            common["KAFKA_SSL_CA_LOCATION"],
            "/etc/sensorflow/kafka-ca/ca.pem"
        );
        assert!(!common.contains_key("KAFKA_SASL_PASSWORD"));
        let c = &d.deployments[0]
            .spec
            .as_ref()
            .and_then(|s| s.template.spec.as_ref())
            .expect("pod")
            .containers[0];
        let env = c.env.as_ref().expect("env");
        let pw = env
            .iter()
            .find(|e| e.name == "KAFKA_SASL_PASSWORD")
            .expect("password env");
        let r = pw
            .value_from
            .as_ref()
            .and_then(|v| v.secret_key_ref.as_ref())
            .expect("secret ref");
        assert_eq!((r.name.as_str(), r.key.as_str()), ("kafka-creds", "pass"));
    }

    #[test]
    fn strimzi_user_secrets_mount_the_certificate_and_name_the_user_and_roll_on_rotation() {
        let mut s = spec();
        s.kafka.security = Some(KafkaSecurity {
            protocol: SecurityProtocol::SaslSsl,
            sasl_mechanism: Some(crate::crd::SaslMechanism::ScramSha512),
            credentials_secret: Some(crate::crd::CredentialsSecretRef {
                name: "my-user".into(),
                username_key: "username".into(),
                password_key: "password".into(),
                username_from: UsernameFrom::SecretName,
            }),
            ca_secret: Some(crate::crd::SecretKeyRef {
                name: "my-cluster-cluster-ca-cert".into(),
                key: "ca.crt".into(),
            }),
            allow_plaintext_credentials: false,
            client_certificate_secret: Some(crate::crd::ClientCertificateSecretRef {
                name: "my-tls-user".into(),
                certificate_key: "user.crt".into(),
                key_key: "user.key".into(),
            }),
        });
        let v = validate("p", &Naming::legacy("p"), &s).expect("valid");
        let with = |rv: &str| {
            let versions = SecretVersions::from([("my-tls-user".to_owned(), rv.to_owned())]);
            build(&v, "ns", &owner(), ReplicaPlan::default(), &versions)
        };
        let d = with("1");
        let common = env_of(&d, "p-common");
        assert_eq!(
            common["KAFKA_SSL_CERTIFICATE_LOCATION"],
            "/etc/sensorflow/kafka-client-cert/user.crt"
        );
        assert_eq!(
            common["KAFKA_SSL_KEY_LOCATION"],
            "/etc/sensorflow/kafka-client-cert/user.key"
        );
        for dep in &d.deployments {
            let pod = dep
                .spec
                .as_ref()
                .and_then(|s| s.template.spec.as_ref())
                .expect("pod");
            let vol = pod
                .volumes
                .as_ref()
                .and_then(|vs| vs.iter().find(|v| v.name == "kafka-client-cert"))
                .and_then(|v| v.secret.as_ref())
                .expect("client certificate volume");
            assert_eq!(vol.secret_name.as_deref(), Some("my-tls-user"));
            let keys: Vec<&str> = vol.items.iter().flatten().map(|i| i.key.as_str()).collect();
            assert_eq!(keys, ["user.crt", "user.key"], "not user.p12/user.password");
            let c = &pod.containers[0];
            assert!(
                c.volume_mounts
                    .iter()
                    .flatten()
                    .any(|m| m.name == "kafka-client-cert"
                        && m.mount_path == KAFKA_CLIENT_CERT_DIR
                        && m.read_only == Some(true))
            );
            let env = c.env.as_ref().expect("env");
            let user = env
                .iter()
                .find(|e| e.name == "KAFKA_SASL_USERNAME")
                .expect("username env");
            assert_eq!(user.value.as_deref(), Some("my-user"));
            assert!(user.value_from.is_none());
            let pw = env
                .iter()
                .find(|e| e.name == "KAFKA_SASL_PASSWORD")
                .and_then(|e| e.value_from.as_ref())
                .and_then(|v| v.secret_key_ref.as_ref())
                .expect("password from the Secret");
            assert_eq!((pw.name.as_str(), pw.key.as_str()), ("my-user", "password"));
        }
        let rotated = with("2");
        for (a, b) in d.deployments.iter().zip(&rotated.deployments) {
            assert_ne!(
                hash(a),
                hash(b),
                "a rotated client certificate rolls the pods"
            );
        }
    }

    #[test]
    fn the_pod_template_overlay_is_merged_and_cannot_override_the_operator() {
        use k8s_openapi::api::core::v1::{EnvVar, Toleration};
        let mut s = spec();
        let o = &mut s.processors.join.pod_template;
        o.labels = BTreeMap::from([
            ("team".to_owned(), "sensors".to_owned()),
            (COMPONENT_LABEL.to_owned(), "hijack".to_owned()),
        ]);
        o.annotations = BTreeMap::from([
            ("note".to_owned(), "x".to_owned()),
            (CONFIG_HASH_ANNOTATION.to_owned(), "forged".to_owned()),
        ]);
        o.node_selector = BTreeMap::from([("pool".to_owned(), "stream".to_owned())]);
        o.tolerations = vec![Toleration {
            key: Some("dedicated".into()),
            operator: Some("Exists".into()),
            ..Default::default()
        }];
        o.priority_class_name = Some("high".into());
        o.service_account_annotations = BTreeMap::from([(
            "iam.gke.io/gcp-service-account".to_owned(),
            "j@p.iam.gserviceaccount.com".to_owned(),
        )]);
        o.env = vec![
            EnvVar {
                name: "TZ".into(),
                value: Some("UTC".into()),
                ..Default::default()
            },
            EnvVar {
                name: env::THRESHOLD.into(),
                value: Some("0.01".into()),
                ..Default::default()
            },
        ];
        // validate refuses the owned keys and the contract name ...
        let e = validate("p", &Naming::legacy("p"), &s).expect_err("owned keys");
        assert_eq!(e.0.len(), 3, "{e}");
        // ... and build drops them for a spec that skipped validation.
        let v = Validated {
            name: "p".into(),
            naming: Naming::legacy("p"),
            topics: crate::controller::validate::TopicNames::with_prefix("p.", &s.topics),
            spec: s.clone(),
            image: crate::crd::DEFAULT_IMAGE.into(),
        };
        let d = build(
            &v,
            "ns",
            &owner(),
            ReplicaPlan::default(),
            &SecretVersions::new(),
        );
        let join = &d.deployments[1];
        let tpl = &join.spec.as_ref().expect("spec").template;
        let meta = tpl.metadata.as_ref().expect("meta");
        let labels = meta.labels.as_ref().expect("labels");
        assert_eq!(labels["team"], "sensors");
        assert_eq!(labels[COMPONENT_LABEL], "join");
        let ann = meta.annotations.as_ref().expect("annotations");
        assert_eq!(ann["note"], "x");
        assert_ne!(ann[CONFIG_HASH_ANNOTATION], "forged");
        let pod = tpl.spec.as_ref().expect("pod");
        assert_eq!(pod.node_selector.as_ref().expect("ns")["pool"], "stream");
        assert_eq!(pod.tolerations.as_ref().map(Vec::len), Some(1));
        assert_eq!(pod.priority_class_name.as_deref(), Some("high"));
        assert_eq!(pod.service_account_name.as_deref(), Some("p-join"));
        let c = &pod.containers[0];
        let env = c.env.as_ref().expect("env");
        assert!(env.iter().any(|e| e.name == "TZ"));
        assert!(!env.iter().any(|e| e.name == env::THRESHOLD));
        assert_eq!(
            c.command.as_deref(),
            Some(&["/usr/local/bin/join-predict".to_owned()][..])
        );
        // The window stage is untouched; the annotated ServiceAccount is created.
        let wpod = d.deployments[0]
            .spec
            .as_ref()
            .and_then(|s| s.template.spec.as_ref());
        assert_eq!(
            wpod.and_then(|p| p.service_account_name.as_deref()),
            Some("p-processor")
        );
        assert_eq!(wpod.and_then(|p| p.node_selector.as_ref()), None);
        let names: Vec<_> = d
            .service_accounts
            .iter()
            .filter_map(|a| a.metadata.name.as_deref())
            .collect();
        assert_eq!(names, ["p-processor", "p-join"]);
        assert_eq!(
            d.service_accounts[1]
                .metadata
                .annotations
                .as_ref()
                .expect("a")["iam.gke.io/gcp-service-account"],
            "j@p.iam.gserviceaccount.com"
        );
    }

    #[test]
    fn sink_adds_a_deployment_and_external_scaling_leaves_replicas_unset() {
        let mut s = spec();
        s.sink = Some(SinkSpec {
            bucket: "archive".into(),
            prefix: None,
            topics: vec![SinkTopic::Predictions, SinkTopic::Late],
            rotation: Default::default(),
            credentials_secret: None,
            endpoint: Some("http://127.0.0.1:4443".into()),
            replicas: 1,
            resources: None,
            pod_template: Default::default(),
        });
        let v = validate("p", &Naming::legacy("p"), &s).expect("valid");
        let d = build(
            &v,
            "ns",
            &owner(),
            ReplicaPlan::default(),
            &SecretVersions::new(),
        );
        assert_eq!(d.deployments.len(), 3);
        assert_eq!(
            d.deployments[0].spec.as_ref().and_then(|s| s.replicas),
            None
        );
        let sink = env_of(&d, "p-sink");
        assert_eq!(sink["SF_SINK_TOPICS"], "p.predictions,p.late");
        assert_eq!(sink["SF_SINK_PREFIX"], "p/");
        assert_eq!(sink["SF_SINK_ENDPOINT"], "http://127.0.0.1:4443");
    }
}
