//! The dereference step: every read of the cluster and the broker a reconcile makes.
//!
//! ```text
//!   Secrets (Kafka credentials, CA, GCS key) ─▶ Connection + SecretVersions ─┐
//!   Deployments <p>-window, <p>-join, <p>-sink ──────────────────────────────┼─▶ Observed
//!   Pods of the pipeline (by component label) ───────────────────────────────┤
//!   (topics step: TopicReport) ──────────────────────────────────────────────┤
//!   committed offsets vs high watermarks per stage ─▶ lag, position, end ────┤
//!   end offsets of the dead-letter and late topics ──────────────────────────┘
//! ```
//!
//! Everything here only reads; the decisions are made by the pure [`super::plan`] and
//! [`super::status`] steps from the [`Observed`] this step returns.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::api::{Api, ListParams};
use kube::{Client, ResourceExt};
use tracing::warn;

use super::Error;
use crate::controller::build::{self, COMPONENT_LABEL, SecretVersions, Stage};
use crate::controller::plan::flow::{Flow, Reads};
use crate::controller::status::conditions::Replicas;
use crate::controller::validate::Validated;
use crate::crd::{SensorPipelineSpec, UsernameFrom};
use sensorflow_kafka::{self as kafka, Connection, TopicReport};

/// What the reconcile saw, the input of the pure steps.
#[derive(Debug, Clone, PartialEq)]
pub struct Observed {
    /// The pipeline's Deployments that exist, by stage.
    pub deployments: BTreeMap<Stage, Deployment>,
    /// `resourceVersion` of every Secret the spec references.
    pub secret_versions: SecretVersions,
    /// What the topic step found and did on the broker.
    pub topics: TopicReport,
    /// Consumer lag per planner-scaled stage (messages); `None` when it could not be read.
    pub lags: BTreeMap<Stage, Option<u64>>,
    /// The pipeline's pods by stage (empty when the list failed; logged).
    pub pods: BTreeMap<Stage, Vec<Pod>>,
    /// Time lag and rates estimated from this and earlier reconciles' offset reads
    /// ([`crate::controller::plan::flow::observe`]).
    pub flow: Flow,
}

impl Observed {
    /// `spec.replicas` of a stage's Deployment, if it exists and has one.
    pub fn current_replicas(&self, stage: Stage) -> Option<i32> {
        self.deployments
            .get(&stage)
            .and_then(|d| d.spec.as_ref().and_then(|s| s.replicas))
    }

    /// Desired and ready replicas of a stage's Deployment, if it exists.
    pub fn replicas(&self, stage: Stage) -> Option<Replicas> {
        replicas_of(self.deployments.get(&stage))
    }

    /// A stage's lag, if it was read.
    pub fn lag(&self, stage: Stage) -> Option<u64> {
        self.lags.get(&stage).copied().flatten()
    }
}

/// Desired (default 1) and ready (default 0) replicas of `d`.
pub fn replicas_of(d: Option<&Deployment>) -> Option<Replicas> {
    let d = d?;
    Some(Replicas {
        desired: d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1),
        ready: d
            .status
            .as_ref()
            .and_then(|s| s.ready_replicas)
            .unwrap_or(0),
    })
}

/// Reads `key` of Secret `name`: its bytes and the Secret's `resourceVersion`.
async fn secret_key(
    client: &Client,
    ns: &str,
    name: &str,
    key: &str,
) -> Result<(Vec<u8>, String), Error> {
    let api: Api<Secret> = Api::namespaced(client.clone(), ns);
    let err = |reason: String| Error::Secret {
        namespace: ns.to_owned(),
        name: name.to_owned(),
        key: key.to_owned(),
        reason,
    };
    let secret = api
        .get_opt(name)
        .await
        .map_err(|e| err(e.to_string()))?
        .ok_or_else(|| err("not found".into()))?;
    let bytes = secret
        .data
        .as_ref()
        .and_then(|d| d.get(key))
        .ok_or_else(|| err("key missing".into()))?;
    Ok((
        bytes.0.clone(),
        secret.resource_version().unwrap_or_default(),
    ))
}

async fn secret_string(
    client: &Client,
    ns: &str,
    name: &str,
    key: &str,
    versions: &mut SecretVersions,
) -> Result<String, Error> {
    let (bytes, rv) = secret_key(client, ns, name, key).await?;
    versions.insert(name.to_owned(), rv);
    String::from_utf8(bytes).map_err(|_| Error::Secret {
        namespace: ns.to_owned(),
        name: name.to_owned(),
        key: key.to_owned(),
        reason: "not UTF-8".into(),
    })
}

/// The operator's own Kafka connection (credentials, CA and client certificate read from
/// Secrets; with `usernameFrom: SecretName` the username is the Secret's name) and the
/// `resourceVersion` of every Secret the spec references (Kafka and, with `with_sink`, the GCS
/// key), so a rotated Secret rolls the pods that use it.
///
/// # Errors
/// [`Error::Secret`] when a referenced Secret or key is missing or not UTF-8.
pub async fn secrets(
    client: &Client,
    ns: &str,
    spec: &SensorPipelineSpec,
    with_sink: bool,
) -> Result<(Connection, SecretVersions), Error> {
    let mut versions = SecretVersions::new();
    let mut conn = Connection {
        bootstrap: spec.kafka.bootstrap_servers.clone(),
        ..Default::default()
    };
    if let Some(sec) = &spec.kafka.security {
        conn.protocol = Some(sec.protocol);
        conn.sasl_mechanism = sec.sasl_mechanism;
        if let Some(c) = &sec.credentials_secret {
            let user = match c.username_from {
                UsernameFrom::Key => {
                    secret_string(client, ns, &c.name, &c.username_key, &mut versions).await?
                }
                UsernameFrom::SecretName => c.name.clone(),
            };
            let pass = secret_string(client, ns, &c.name, &c.password_key, &mut versions).await?;
            conn.sasl_credentials = Some((user, pass));
        }
        if let Some(ca) = &sec.ca_secret {
            conn.ca_pem = Some(secret_string(client, ns, &ca.name, &ca.key, &mut versions).await?);
        }
        if let Some(cc) = &sec.client_certificate_secret {
            let cert =
                secret_string(client, ns, &cc.name, &cc.certificate_key, &mut versions).await?;
            let key = secret_string(client, ns, &cc.name, &cc.key_key, &mut versions).await?;
            conn.client_certificate = Some((cert, key));
        }
    }
    if with_sink
        && let Some(c) = spec
            .sink
            .as_ref()
            .and_then(|s| s.credentials_secret.as_ref())
    {
        let (_, rv) = secret_key(client, ns, &c.name, &c.key).await?;
        versions.insert(c.name.clone(), rv);
    }
    Ok((conn, versions))
}

/// The pipeline's Deployments that exist, by stage.
///
/// # Errors
/// [`Error::Kube`] when the API server refuses a read.
pub async fn deployments(
    client: &Client,
    ns: &str,
    pipeline: &str,
) -> Result<BTreeMap<Stage, Deployment>, Error> {
    let api: Api<Deployment> = Api::namespaced(client.clone(), ns);
    let mut current = BTreeMap::new();
    for stage in [Stage::Window, Stage::Join, Stage::Sink] {
        let dn = build::deployment_name(pipeline, stage);
        if let Some(d) = api.get_opt(&dn).await.map_err(|source| Error::Kube {
            action: "get",
            object: format!("Deployment/{ns}/{dn}"),
            source,
        })? {
            current.insert(stage, d);
        }
    }
    Ok(current)
}

/// Offsets of the planner-scaled stages (window-processor on SZ, join-predict on its five
/// inputs: lag, position and end), each `None` when it cannot be read (logged; the planner then
/// holds the replica count) or an input is not on the broker (not asked); and the end offsets
/// of the dead-letter and late topics (for their rates).
///
/// A stage whose input topics were all created by this reconcile (`report.created`) has no
/// offsets yet (all 0) without asking the broker: nothing consumed them yet, and they hold at
/// most what was written in the moments since (read at the next resync). Asking would wait
/// for nothing: the offset queries on topics created a moment ago fail on the broker's
/// not-yet-propagated metadata, and their retries cost 1.3 s per stage (measured on a
/// 100-partition pipeline, the bulk of the time from `kubectl apply` to Deployments). The same
/// holds for the dead-letter and late topics. The reads run concurrently.
pub async fn reads(conn: &Connection, v: &Validated, report: &TopicReport) -> Reads {
    let stages =
        super::plan::topics::stage_inputs(v)
            .into_iter()
            .map(|(stage, group, inputs)| async move {
                if inputs.iter().all(|t| report.created.contains(t)) {
                    return (stage, Some(kafka::StageOffsets::default()));
                }
                // An input the broker did not show (not created: refused, not authorized)
                // has no offsets to read; asking would only wait for the metadata timeout
                // (twice 25 s seen with a principal lacking the ACLs) before the status says
                // why.
                if !inputs.iter().all(|t| report.partitions.contains_key(t)) {
                    return (stage, None);
                }
                let read =
                    match kafka::stage_progress(conn, &group, &inputs, &report.partitions).await {
                        Ok(l) => Some(l),
                        Err(e) => {
                            warn!(error = %e, stage = stage.as_str(), "could not read lag");
                            None
                        }
                    };
                (stage, read)
            });
    let end = |role: sensorflow_api::topics::TopicRole| {
        let topic = v.topics.get(role).to_owned();
        async move {
            if report.created.contains(&topic) {
                return Some(0);
            }
            if !report.partitions.contains_key(&topic) {
                return None;
            }
            match kafka::end_offsets(conn, std::slice::from_ref(&topic), &report.partitions).await {
                Ok(e) => Some(e),
                Err(e) => {
                    warn!(error = %e, %topic, "could not read end offsets");
                    None
                }
            }
        }
    };
    use sensorflow_api::topics::TopicRole;
    let (stages, dead_letter_end, late_end) = futures::join!(
        futures::future::join_all(stages),
        end(TopicRole::DeadLetter),
        end(TopicRole::Late)
    );
    Reads {
        stages: stages.into_iter().collect(),
        dead_letter_end,
        late_end,
    }
}

/// The pipeline's pods by stage (label `app.kubernetes.io/instance=<pipeline>`, stage from
/// `app.kubernetes.io/component`): one list call. A refused list is logged and reads as no
/// pods (the status then lists no reasons; nothing else depends on it).
pub async fn pods(client: &Client, ns: &str, pipeline: &str) -> BTreeMap<Stage, Vec<Pod>> {
    let api: Api<Pod> = Api::namespaced(client.clone(), ns);
    let lp = ListParams::default().labels(&format!(
        "app.kubernetes.io/instance={pipeline},app.kubernetes.io/managed-by={}",
        build::MANAGED_BY
    ));
    let mut out: BTreeMap<Stage, Vec<Pod>> = BTreeMap::new();
    match api.list(&lp).await {
        Ok(list) => {
            for pod in list.items {
                let component = pod
                    .metadata
                    .labels
                    .as_ref()
                    .and_then(|l| l.get(COMPONENT_LABEL))
                    .cloned();
                let stage = [Stage::Window, Stage::Join, Stage::Sink]
                    .into_iter()
                    .find(|s| component.as_deref() == Some(s.as_str()));
                if let Some(stage) = stage {
                    out.entry(stage).or_default().push(pod);
                }
            }
        }
        Err(e) => warn!(error = %e, "could not list the pipeline's pods"),
    }
    out
}

/// Topics named by the other pipelines in `known` (every pipeline this operator watches, in
/// any namespace) on the same Kafka cluster as `me` (a shared bootstrap `host:port`), whether
/// they manage or only read them: a deletion leaves these alone.
pub fn topics_of_other_pipelines(
    known: &[std::sync::Arc<crate::crd::SensorPipeline>],
    me: &crate::crd::SensorPipeline,
) -> Vec<String> {
    use crate::controller::plan::claims::cluster;
    let mine = cluster(&me.spec);
    known
        .iter()
        .filter(|o| o.uid() != me.uid())
        .filter(|o| !cluster(&o.spec).is_disjoint(&mine))
        .filter_map(|o| {
            let ns = o.namespace()?;
            let naming = crate::controller::validate::Naming::resolve(
                &o.spec,
                &crate::controller::validate::Naming::fixed_defaults(
                    &ns,
                    &o.name_any(),
                    o.status.as_ref(),
                ),
            );
            Some(
                crate::controller::validate::TopicNames::with_prefix(
                    &naming.topic_prefix,
                    &o.spec.topics,
                )
                .all()
                .map(str::to_owned),
            )
        })
        .flatten()
        .collect()
}
