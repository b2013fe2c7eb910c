//! The reconciler: one pass per SensorPipeline, wrapped in a finalizer.
//!
//! ```text
//!   SensorPipeline ─▶ finalizer ─Apply──▶ validate (pure) ──invalid──▶ status Invalid + Warning, wait for change
//!                        │                   │ ok
//!                        │                   ▼
//!                        │     dereference (Secrets, Deployments) ─▶ topics (AdminClient) ─▶ lag
//!                        │                   ▼
//!                        │     planner (pure) ─▶ build (pure) ─▶ server-side apply + delete orphans
//!                        │                   ▼
//!                        │     compute_conditions (pure) ─▶ status (server-side apply on /status)
//!                        └─Cleanup─▶ with deletionPolicy Delete: the topics in status.createdTopics
//!                                    (bounded attempts, then released with a Warning); owned
//!                                    objects go with the garbage collector (owner references)
//! ```
//!
//! Every write (server-side apply, status, topics, finalizer, Events) first asks
//! [`Context::act`], which refuses once leadership is lost or its renew deadline has passed, so
//! a paused-then-resumed former leader never acts next to its successor.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service, ServiceAccount};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::finalizer::{Event as Finalizer, finalizer};
use kube::runtime::reflector;
use kube::runtime::watcher;
use kube::runtime::{WatchStreamExt, predicates};
use kube::{Client, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tracing::{info, instrument, warn};

use crate::build::{self, MANAGED_BY, PIPELINE_LABEL, ReplicaPlan, SecretVersions, Stage};
use crate::conditions::{self, Observations, Replicas, TopicsOutcome};
use crate::crd::{
    DeletionPolicy, SensorPipeline, SensorPipelineSpec, SensorPipelineStatus, StageStatus,
    TopicStatus,
};
use crate::kafka::{self, Connection, KafkaError, TopicPlan};
use crate::leader::Leadership;
use crate::metrics::{ErrorLabels, Metrics, StageLabels};
use crate::planner::{self, Bounds, Change};
use crate::validate::{self, TopicNames};

/// The one field manager of every server-side apply.
pub const FIELD_MANAGER: &str = "sensorflow-operator";
/// Finalizer that guards topic deletion.
pub const FINALIZER: &str = "sensorflow.io/topics";

/// Errors of one reconcile, one variant per failing step.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The object has no namespace (the CRD is namespaced, so this is not expected).
    #[error("SensorPipeline {0} has no namespace")]
    NoNamespace(String),
    /// A Kubernetes API call failed.
    #[error("{action} {object}: {source}")]
    Kube {
        /// What was attempted.
        action: &'static str,
        /// `kind/namespace/name`.
        object: String,
        /// Cause.
        source: kube::Error,
    },
    /// A Secret named by the spec is missing or lacks the key.
    #[error("secret {namespace}/{name} key {key}: {reason}")]
    Secret {
        /// Namespace.
        namespace: String,
        /// Secret name.
        name: String,
        /// Key.
        key: String,
        /// What is wrong.
        reason: String,
    },
    /// The broker could not be reached or refused a request.
    #[error("kafka for pipeline {pipeline}: {source}")]
    Kafka {
        /// `namespace/name` of the pipeline.
        pipeline: String,
        /// Cause (boxed: rdkafka errors are large).
        source: Box<KafkaError>,
    },
    /// The finalizer helper failed (adding/removing the finalizer, or a wrapped step).
    #[error("finalizer: {0}")]
    Finalizer(#[source] Box<kube::runtime::finalizer::Error<Error>>),
    /// This replica no longer holds the leader Lease (or its renew deadline passed): it must not
    /// write anything.
    #[error("not the leader: refusing to {0}")]
    NotLeader(String),
}

impl Error {
    /// Short label for the failure metric.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::NoNamespace(_) => "no_namespace",
            Error::Kube { .. } => "kube",
            Error::Secret { .. } => "secret",
            Error::Kafka { .. } => "kafka",
            Error::NotLeader(_) => "not_leader",
            Error::Finalizer(inner) => match inner.as_ref() {
                kube::runtime::finalizer::Error::ApplyFailed(e)
                | kube::runtime::finalizer::Error::CleanupFailed(e) => e.metric_label(),
                _ => "finalizer",
            },
        }
    }
}

/// Operator-wide settings (from the command line).
#[derive(Debug, Clone)]
pub struct Settings {
    /// How often a healthy pipeline is re-read (lag polling interval).
    pub resync: Duration,
    /// First retry delay after a failure; doubles per consecutive failure.
    pub backoff_base: Duration,
    /// Longest retry delay.
    pub backoff_max: Duration,
    /// Overrides every pipeline's `processors.scaleDownCooldownSeconds` (tests).
    pub cooldown_override: Option<Duration>,
    /// Failed topic-deletion attempts after which a deleting pipeline's finalizer is released
    /// anyway (so a lost Secret or broker cannot block namespace deletion forever).
    pub cleanup_attempts: u32,
}

/// Shared state of the reconciler.
pub struct Context {
    /// API client.
    pub client: Client,
    /// Event publisher.
    pub recorder: Recorder,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Settings.
    pub settings: Settings,
    /// Leader election state; `None` when leader election is off (this process always acts).
    pub leadership: Option<Arc<Leadership>>,
    failures: Mutex<HashMap<String, u32>>,
}

impl Context {
    /// Creates the context; `reporter` names this operator instance in Events.
    pub fn new(
        client: Client,
        reporter: Reporter,
        metrics: Arc<Metrics>,
        settings: Settings,
        leadership: Option<Arc<Leadership>>,
    ) -> Self {
        Self {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            metrics,
            settings,
            leadership,
            failures: Mutex::new(HashMap::new()),
        }
    }

    /// `Ok` while this replica leads (or leader election is off).
    ///
    /// # Errors
    /// [`Error::NotLeader`] once leadership is lost or its renew deadline has passed.
    pub fn ensure_leading(&self, what: &str) -> Result<(), Error> {
        if self.leadership.as_ref().is_some_and(|l| !l.is_leading()) {
            warn!(what, "not the leader any more: refused");
            return Err(Error::NotLeader(what.to_owned()));
        }
        Ok(())
    }

    /// Gate in front of every write: `Ok` while this replica leads (or leader election is off).
    /// Logged at debug level as `act`, which the leader-election scenario reads back.
    ///
    /// # Errors
    /// [`Error::NotLeader`] once leadership is lost or its renew deadline has passed.
    pub fn act(&self, what: &str) -> Result<(), Error> {
        self.ensure_leading(what)?;
        self.metrics.writes.inc();
        tracing::debug!(what, "acting as leader");
        Ok(())
    }

    async fn event(
        &self,
        sp: &SensorPipeline,
        type_: EventType,
        reason: &str,
        action: &str,
        note: String,
    ) {
        let ev = Event {
            type_,
            reason: reason.to_owned(),
            note: Some(note),
            action: action.to_owned(),
            secondary: None,
        };
        if self.act(&format!("publish Event {reason}")).is_err() {
            return;
        }
        if let Err(e) = self.recorder.publish(&ev, &sp.object_ref(&())).await {
            warn!(error = %e, reason, "could not publish event");
        }
    }
}

fn key(sp: &SensorPipeline) -> String {
    format!("{}/{}", sp.namespace().unwrap_or_default(), sp.name_any())
}

/// Topic names of `spec` even when it is invalid (for cleanup).
fn topic_names(name: &str, spec: &SensorPipelineSpec) -> TopicNames {
    TopicNames::for_pipeline(name, &spec.topics)
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

/// Dereference step for Secrets: the operator's own Kafka connection (credentials and CA read
/// from Secrets) and the `resourceVersion` of every Secret the spec references (Kafka and, with
/// `with_sink`, the GCS key), so a rotated Secret rolls the pods that use it.
async fn dereference_secrets(
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
        conn.protocol = Some(sec.protocol.as_str().to_owned());
        conn.sasl_mechanism = sec.sasl_mechanism.map(|m| m.as_str().to_owned());
        if let Some(c) = &sec.credentials_secret {
            let user = secret_string(client, ns, &c.name, &c.username_key, &mut versions).await?;
            let pass = secret_string(client, ns, &c.name, &c.password_key, &mut versions).await?;
            conn.sasl_credentials = Some((user, pass));
        }
        if let Some(ca) = &sec.ca_secret {
            conn.ca_pem = Some(secret_string(client, ns, &ca.name, &ca.key, &mut versions).await?);
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

async fn ssa<K>(ctx: &Context, api: &Api<K>, obj: &K) -> Result<(), Error>
where
    K: Resource + Clone + Serialize + DeserializeOwned + std::fmt::Debug,
    K::DynamicType: Default,
{
    let name = obj.meta().name.clone().unwrap_or_default();
    ctx.act(&format!(
        "apply {}/{name}",
        K::kind(&K::DynamicType::default())
    ))?;
    api.patch(
        &name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(obj),
    )
    .await
    .map(|_| ())
    .map_err(|source| Error::Kube {
        action: "apply",
        object: format!("{}/{name}", K::kind(&K::DynamicType::default())),
        source,
    })
}

/// Deletes objects of the pipeline (by label) that are not in `keep`.
async fn delete_orphans<K>(
    ctx: &Context,
    api: &Api<K>,
    pipeline: &str,
    keep: &[String],
) -> Result<Vec<String>, Error>
where
    K: Resource + Clone + Serialize + DeserializeOwned + std::fmt::Debug,
    K::DynamicType: Default,
{
    let kind = K::kind(&K::DynamicType::default()).to_string();
    let lp = ListParams::default().labels(&format!(
        "{PIPELINE_LABEL}={pipeline},app.kubernetes.io/managed-by={MANAGED_BY}"
    ));
    let list = api.list(&lp).await.map_err(|source| Error::Kube {
        action: "list",
        object: kind.clone(),
        source,
    })?;
    let mut deleted = Vec::new();
    for o in list {
        let name = o.name_any();
        if !keep.contains(&name) {
            ctx.act(&format!("delete {kind}/{name}"))?;
            match api.delete(&name, &DeleteParams::background()).await {
                Ok(_) => deleted.push(format!("{kind}/{name}")),
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(source) => {
                    return Err(Error::Kube {
                        action: "delete",
                        object: format!("{kind}/{name}"),
                        source,
                    });
                }
            }
        }
    }
    Ok(deleted)
}

async fn write_status(
    ctx: &Context,
    api: &Api<SensorPipeline>,
    name: &str,
    status: &SensorPipelineStatus,
) -> Result<(), Error> {
    ctx.act(&format!("apply status SensorPipeline/{name}"))?;
    let patch = serde_json::json!({
        "apiVersion": "sensorflow.io/v1alpha1",
        "kind": "SensorPipeline",
        "status": status,
    });
    api.patch_status(
        name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await
    .map(|_| ())
    .map_err(|source| Error::Kube {
        action: "apply status",
        object: format!("SensorPipeline/{name}"),
        source,
    })
}

fn replicas_of(d: Option<&Deployment>) -> Option<Replicas> {
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

fn now_rfc3339(now: Timestamp) -> String {
    // Seconds precision, like metav1.Time.
    Timestamp::from_second(now.as_second())
        .unwrap_or(now)
        .to_string()
}

/// A cooldown start written to status: seconds precision like metav1.Time, rounded *up* so
/// that the cooldown read back from status is never shorter than configured (truncating let a
/// scale-down happen up to 1 s early).
fn cooldown_start_rfc3339(since: Timestamp) -> String {
    let up = i64::from(since.subsec_nanosecond() > 0);
    Timestamp::from_second(since.as_second() + up)
        .unwrap_or(since)
        .to_string()
}

/// Writes the status for a failed topic step (`TopicsReady=False`, `Degraded=True`) and raises a
/// Warning Event; the caller returns the error so the controller retries with backoff.
async fn report_topic_failure(
    ctx: &Context,
    sp: &SensorPipeline,
    api: &Api<SensorPipeline>,
    outcome: TopicsOutcome,
    current: Option<&BTreeMap<Stage, Deployment>>,
    now_s: &str,
) -> Result<(), Error> {
    let previous = sp.status.clone().unwrap_or_default();
    let get = |stage| current.and_then(|c| replicas_of(c.get(&stage)));
    let obs = Observations {
        generation: sp.metadata.generation,
        invalid: None,
        topics: outcome,
        window: get(Stage::Window),
        join: get(Stage::Join),
        sink: sp.spec.sink.as_ref().map(|_| get(Stage::Sink)),
        scaling: vec![],
    };
    let (conds, phase) = conditions::compute_conditions(&obs, &previous.conditions, now_s);
    let topics = conds.iter().find(|c| c.type_ == "TopicsReady").cloned();
    let status = SensorPipelineStatus {
        observed_generation: sp.metadata.generation,
        phase: Some(phase),
        conditions: conds,
        ..previous
    };
    if Some(&status) != sp.status.as_ref() {
        write_status(ctx, api, &sp.name_any(), &status).await?;
    }
    if let Some(c) = topics {
        ctx.event(sp, EventType::Warning, &c.reason, "EnsureTopics", c.message)
            .await;
    }
    Ok(())
}

/// The Apply branch.
#[instrument(skip_all, fields(pipeline = %key(&sp)))]
async fn apply(sp: Arc<SensorPipeline>, ctx: &Context) -> Result<Action, Error> {
    let name = sp.name_any();
    let ns = sp
        .namespace()
        .ok_or_else(|| Error::NoNamespace(name.clone()))?;
    let api: Api<SensorPipeline> = Api::namespaced(ctx.client.clone(), &ns);
    let previous = sp.status.clone().unwrap_or_default();
    let now = Timestamp::now();
    let now_s = now_rfc3339(now);
    let generation = sp.metadata.generation;

    // 1. validate (pure)
    let v = match validate::validate(&name, &sp.spec) {
        Ok(v) => v,
        Err(errs) => {
            let msg = errs.to_string();
            let obs = Observations {
                generation,
                invalid: Some(msg.clone()),
                topics: TopicsOutcome::Unknown,
                window: None,
                join: None,
                sink: sp.spec.sink.as_ref().map(|_| None),
                scaling: vec![],
            };
            let (conds, phase) = conditions::compute_conditions(&obs, &previous.conditions, &now_s);
            let status = SensorPipelineStatus {
                observed_generation: generation,
                phase: Some(phase),
                conditions: conds,
                ..previous.clone()
            };
            let already_reported = previous.observed_generation == generation
                && previous.phase.as_deref() == Some("Invalid");
            if Some(&status) != sp.status.as_ref() {
                write_status(ctx, &api, &name, &status).await?;
            }
            if !already_reported {
                warn!(%msg, "invalid spec");
                ctx.event(&sp, EventType::Warning, "InvalidSpec", "Validate", msg)
                    .await;
            }
            // No hot loop: wait for the user to change the spec.
            return Ok(Action::await_change());
        }
    };

    // 2. dereference: Kafka credentials and Secret versions, current Deployments
    let (conn, secret_versions) = match dereference_secrets(&ctx.client, &ns, &sp.spec, true).await
    {
        Ok(c) => c,
        Err(e) => {
            let outcome = TopicsOutcome::SecretUnavailable(e.to_string());
            report_topic_failure(ctx, &sp, &api, outcome, None, &now_s).await?;
            return Err(e);
        }
    };
    let deploy_api: Api<Deployment> = Api::namespaced(ctx.client.clone(), &ns);
    let mut current: BTreeMap<Stage, Deployment> = BTreeMap::new();
    for stage in [Stage::Window, Stage::Join, Stage::Sink] {
        let dn = build::deployment_name(&name, stage);
        if let Some(d) = deploy_api
            .get_opt(&dn)
            .await
            .map_err(|source| Error::Kube {
                action: "get",
                object: format!("Deployment/{ns}/{dn}"),
                source,
            })?
        {
            current.insert(stage, d);
        }
    }

    // 3. topics
    let t = &v.spec.topics;
    let plan = TopicPlan {
        topics: v.topics.all().map(str::to_owned).to_vec(),
        partitions: t.partitions,
        replication_factor: t.replication_factor,
        config: {
            let mut c = t.config.clone();
            if let Some(r) = t.retention_ms {
                c.insert("retention.ms".into(), r.to_string());
            }
            c
        },
        allow_increase: t.allow_partition_increase,
        co_partitioned: v.topics.join_inputs().map(str::to_owned).to_vec(),
    };
    ctx.act("ensure topics on the broker")?;
    let report = match kafka::ensure_topics(&conn, &plan).await {
        Ok(r) => r,
        Err(e) => {
            let outcome = TopicsOutcome::BrokerUnavailable(e.to_string());
            report_topic_failure(ctx, &sp, &api, outcome, Some(&current), &now_s).await?;
            return Err(Error::Kafka {
                pipeline: key(&sp),
                source: Box::new(e),
            });
        }
    };
    // Topics this pipeline created, recorded at once (before anything else can fail) so that
    // deletionPolicy Delete later removes exactly these.
    let mut created_topics = previous.created_topics.clone();
    created_topics.extend(report.created.iter().cloned());
    created_topics.sort();
    created_topics.dedup();
    if created_topics != previous.created_topics {
        let status = SensorPipelineStatus {
            created_topics: created_topics.clone(),
            ..previous.clone()
        };
        write_status(ctx, &api, &name, &status).await?;
    }
    if !report.created.is_empty() {
        let note = format!(
            "created {} topics with {} partitions: {}",
            report.created.len(),
            t.partitions,
            report.created.join(", ")
        );
        info!(%note);
        ctx.event(
            &sp,
            EventType::Normal,
            "TopicsCreated",
            "CreateTopics",
            note,
        )
        .await;
    }
    for (topic, from, to) in &report.increased {
        let note = format!(
            "raised {topic} from {from} to {to} partitions (key → partition mapping changed)"
        );
        ctx.event(
            &sp,
            EventType::Warning,
            "PartitionsIncreased",
            "CreatePartitions",
            note,
        )
        .await;
    }
    let prev_topics_reason = previous
        .conditions
        .iter()
        .find(|c| c.type_ == "TopicsReady")
        .map(|c| (c.reason.clone(), c.message.clone()));
    let (topic_reason, topic_msg) = match &report.outcome {
        TopicsOutcome::DecreaseRefused(m) => ("PartitionDecreaseRefused", m.clone()),
        TopicsOutcome::IncreasePending(m) => ("PartitionIncreasePending", m.clone()),
        TopicsOutcome::NotCoPartitioned(m) => ("NotCoPartitioned", m.clone()),
        TopicsOutcome::IncreaseFailed(m) => ("PartitionIncreaseFailed", m.clone()),
        TopicsOutcome::SecretUnavailable(m) => ("SecretUnavailable", m.clone()),
        TopicsOutcome::BrokerUnavailable(m) => ("BrokerUnavailable", m.clone()),
        _ => ("", String::new()),
    };
    if !topic_reason.is_empty()
        && prev_topics_reason != Some((topic_reason.to_owned(), topic_msg.clone()))
    {
        ctx.event(
            &sp,
            EventType::Warning,
            topic_reason,
            "EnsureTopics",
            topic_msg,
        )
        .await;
    }

    // 4. lag per stage (None when it cannot be read)
    let stage_inputs = [
        (
            Stage::Window,
            v.window_group(),
            v.topics.window_inputs().map(str::to_owned).to_vec(),
        ),
        (
            Stage::Join,
            v.join_group(),
            v.topics.join_inputs().map(str::to_owned).to_vec(),
        ),
    ];
    let mut lags: BTreeMap<Stage, Option<u64>> = BTreeMap::new();
    for (stage, group, inputs) in &stage_inputs {
        let lag = match kafka::stage_lag(&conn, group, inputs, &report.partitions).await {
            Ok(l) => Some(l),
            Err(e) => {
                warn!(error = %e, stage = stage.as_str(), "could not read lag");
                None
            }
        };
        lags.insert(*stage, lag);
    }

    // 5. plan replicas (pure)
    let cooldown = ctx.settings.cooldown_override.map_or_else(
        || SignedDuration::from_secs(v.spec.processors.scale_down_cooldown_seconds),
        |d| SignedDuration::try_from(d).unwrap_or(SignedDuration::ZERO),
    );
    let mut replica_plan = ReplicaPlan::default();
    let mut scaling = Vec::new();
    let mut stage_status: BTreeMap<Stage, StageStatus> = BTreeMap::new();
    for (stage, _, inputs) in &stage_inputs {
        let spec_stage = match stage {
            Stage::Window => &v.spec.processors.window,
            _ => &v.spec.processors.join,
        };
        let prev_stage = match stage {
            Stage::Window => previous.window.as_ref(),
            _ => previous.join.as_ref(),
        };
        let partitions = inputs
            .iter()
            .filter_map(|t| report.partitions.get(t).copied())
            .min()
            .unwrap_or(t.partitions);
        let input = planner::Input {
            current: current
                .get(stage)
                .and_then(|d| d.spec.as_ref().and_then(|s| s.replicas)),
            lag: lags.get(stage).copied().flatten(),
            bounds: Bounds {
                min: spec_stage.min_replicas,
                max: spec_stage.max_replicas,
                partitions,
                lag_target: spec_stage.lag_target_per_replica,
            },
            cooldown,
            now,
            pending_since: prev_stage
                .and_then(|s| s.scale_down_pending_since.as_deref())
                .and_then(|s| s.parse::<Timestamp>().ok()),
        };
        let p = planner::plan(&input);
        let lag = lags.get(stage).copied().flatten();
        let labels = StageLabels {
            namespace: ns.clone(),
            pipeline: name.clone(),
            stage: stage.as_str().to_owned(),
        };
        if let Some(l) = lag {
            ctx.metrics
                .lag
                .get_or_create(&labels)
                .set(i64::try_from(l).unwrap_or(i64::MAX));
        }
        let replicas = if v.planner_enabled() {
            ctx.metrics
                .replicas
                .get_or_create(&labels)
                .set(i64::from(p.replicas));
            match p.change {
                Change::Up(from, to) | Change::Down(from, to) => {
                    let verb = if to > from { "up" } else { "down" };
                    let note = format!(
                        "scaled {} {verb} from {from} to {to} (lag {}, target {}/replica)",
                        stage.binary(),
                        lag.map_or_else(|| "unknown".to_owned(), |l| l.to_string()),
                        spec_stage.lag_target_per_replica
                    );
                    info!(%note);
                    scaling.push(note.clone());
                    let reason = if to > from { "ScaledUp" } else { "ScaledDown" };
                    ctx.event(&sp, EventType::Normal, reason, "Scale", note)
                        .await;
                }
                Change::CoolingDown(want) => scaling.push(format!(
                    "{} wants {want} replicas; holding {} until the {}s cooldown ends",
                    stage.binary(),
                    p.replicas,
                    cooldown.as_secs()
                )),
                Change::Steady | Change::LagUnknown => {}
            }
            Some(p.replicas)
        } else {
            None
        };
        match stage {
            Stage::Window => replica_plan.window = replicas,
            _ => replica_plan.join = replicas,
        }
        stage_status.insert(
            *stage,
            StageStatus {
                replicas: replicas
                    .or_else(|| {
                        current
                            .get(stage)
                            .and_then(|d| d.spec.as_ref().and_then(|s| s.replicas))
                    })
                    .unwrap_or(1),
                ready_replicas: replicas_of(current.get(stage)).map_or(0, |r| r.ready),
                lag: lag.map(|l| i64::try_from(l).unwrap_or(i64::MAX)),
                scale_down_pending_since: if v.planner_enabled() {
                    p.pending_since.map(cooldown_start_rfc3339)
                } else {
                    None
                },
            },
        );
    }

    // 6. build (pure) and apply
    let owner = sp
        .controller_owner_ref(&())
        .ok_or_else(|| Error::NoNamespace(name.clone()))?;
    let desired = build::build(&v, &ns, &owner, replica_plan, &secret_versions);
    apply_desired(ctx, &ns, &name, &desired).await?;

    // 7. status (pure compute, then apply)
    let window = replicas_of(current.get(&Stage::Window)).map(|r| Replicas {
        desired: replica_plan.window.unwrap_or(r.desired),
        ..r
    });
    let join = replicas_of(current.get(&Stage::Join)).map(|r| Replicas {
        desired: replica_plan.join.unwrap_or(r.desired),
        ..r
    });
    let obs = Observations {
        generation,
        invalid: None,
        topics: report.outcome.clone(),
        window: window.or(Some(Replicas {
            desired: replica_plan.window.unwrap_or(1),
            ready: 0,
        })),
        join: join.or(Some(Replicas {
            desired: replica_plan.join.unwrap_or(1),
            ready: 0,
        })),
        sink: v.spec.sink.as_ref().map(|s| {
            Some(replicas_of(current.get(&Stage::Sink)).unwrap_or(Replicas {
                desired: s.replicas,
                ready: 0,
            }))
        }),
        scaling,
    };
    let (conds, phase) = conditions::compute_conditions(&obs, &previous.conditions, &now_s);
    let total_lag = match (
        lags.get(&Stage::Window).copied().flatten(),
        lags.get(&Stage::Join).copied().flatten(),
    ) {
        (Some(a), Some(b)) => Some(i64::try_from(a.saturating_add(b)).unwrap_or(i64::MAX)),
        _ => None,
    };
    let status = SensorPipelineStatus {
        observed_generation: generation,
        phase: Some(phase),
        conditions: conds,
        window: stage_status.remove(&Stage::Window),
        join: stage_status.remove(&Stage::Join),
        total_lag,
        topics: report
            .partitions
            .iter()
            .map(|(name, partitions)| TopicStatus {
                name: name.clone(),
                partitions: *partitions,
            })
            .collect(),
        created_topics,
        cleanup_attempts: None,
    };
    if Some(&status) != sp.status.as_ref() {
        write_status(ctx, &api, &name, &status).await?;
    }
    Ok(Action::requeue(ctx.settings.resync))
}

async fn apply_desired(
    ctx: &Context,
    ns: &str,
    name: &str,
    desired: &build::Desired,
) -> Result<(), Error> {
    let c = &ctx.client;
    ssa(
        ctx,
        &Api::<ServiceAccount>::namespaced(c.clone(), ns),
        &desired.service_account,
    )
    .await?;
    let cm_api = Api::<ConfigMap>::namespaced(c.clone(), ns);
    for cm in &desired.config_maps {
        ssa(ctx, &cm_api, cm).await?;
    }
    ssa(
        ctx,
        &Api::<Service>::namespaced(c.clone(), ns),
        &desired.service,
    )
    .await?;
    let d_api = Api::<Deployment>::namespaced(c.clone(), ns);
    for d in &desired.deployments {
        ssa(ctx, &d_api, d).await?;
    }
    let names = |metas: Vec<Option<String>>| metas.into_iter().flatten().collect::<Vec<_>>();
    let keep_d = names(
        desired
            .deployments
            .iter()
            .map(|d| d.metadata.name.clone())
            .collect(),
    );
    let keep_cm = names(
        desired
            .config_maps
            .iter()
            .map(|d| d.metadata.name.clone())
            .collect(),
    );
    let mut gone = delete_orphans(ctx, &d_api, name, &keep_d).await?;
    gone.extend(delete_orphans(ctx, &cm_api, name, &keep_cm).await?);
    if !gone.is_empty() {
        info!(deleted = ?gone, "deleted objects no longer in the spec");
    }
    Ok(())
}

/// Pure: which of the topics this pipeline created may be deleted, and which stay because
/// another pipeline (on the same bootstrap servers) names them now.
fn deletable_topics(created: &[String], in_use_elsewhere: &[String]) -> (Vec<String>, Vec<String>) {
    created
        .iter()
        .cloned()
        .partition(|t| !in_use_elsewhere.contains(t))
}

/// Topics named by the other pipelines of `ns` that use the same bootstrap servers.
async fn topics_of_other_pipelines(
    client: &Client,
    ns: &str,
    me: &SensorPipeline,
) -> Result<Vec<String>, Error> {
    let api: Api<SensorPipeline> = Api::namespaced(client.clone(), ns);
    let list = api
        .list(&ListParams::default())
        .await
        .map_err(|source| Error::Kube {
            action: "list",
            object: format!("SensorPipeline/{ns}"),
            source,
        })?;
    Ok(list
        .items
        .iter()
        .filter(|o| o.uid() != me.uid())
        .filter(|o| o.spec.kafka.bootstrap_servers == me.spec.kafka.bootstrap_servers)
        .flat_map(|o| topic_names(&o.name_any(), &o.spec).all().map(str::to_owned))
        .collect())
}

/// The Cleanup branch. `Retain`: nothing to do. `Delete`: deletes the topics recorded in
/// `status.createdTopics` (never topics that existed before the pipeline, nor ones another
/// pipeline in the namespace names now). A failure is retried with backoff and counted in
/// `status.cleanupAttempts`; after `Settings::cleanup_attempts` the finalizer is released with
/// a `TopicDeletionAbandoned` Warning naming the topics left behind, so a deleted Secret or a
/// dead broker cannot block the deletion of the pipeline (or its namespace) forever.
#[instrument(skip_all, fields(pipeline = %key(&sp)))]
async fn cleanup(sp: Arc<SensorPipeline>, ctx: &Context) -> Result<Action, Error> {
    let name = sp.name_any();
    let ns = sp
        .namespace()
        .ok_or_else(|| Error::NoNamespace(name.clone()))?;
    if sp.spec.topics.deletion_policy != DeletionPolicy::Delete {
        ctx.event(
            &sp,
            EventType::Normal,
            "TopicsRetained",
            "DeleteTopics",
            "topics kept (deletionPolicy Retain)".into(),
        )
        .await;
        return Ok(Action::await_change());
    }
    let status = sp.status.clone().unwrap_or_default();
    if status.created_topics.is_empty() {
        ctx.event(
            &sp,
            EventType::Normal,
            "TopicsRetained",
            "DeleteTopics",
            "deletionPolicy Delete, but this pipeline created no topics (they existed before it)"
                .into(),
        )
        .await;
        return Ok(Action::await_change());
    }
    let attempt = async {
        let others = topics_of_other_pipelines(&ctx.client, &ns, &sp).await?;
        let (delete, shared) = deletable_topics(&status.created_topics, &others);
        let (conn, _) = dereference_secrets(&ctx.client, &ns, &sp.spec, false).await?;
        ctx.act("delete topics on the broker")?;
        let deleted = kafka::delete_topics(&conn, &delete)
            .await
            .map_err(|source| Error::Kafka {
                pipeline: key(&sp),
                source: Box::new(source),
            })?;
        Ok::<_, Error>((deleted, shared))
    }
    .await;
    match attempt {
        Ok((deleted, shared)) => {
            let mut note = format!(
                "deleted {} topics this pipeline created (deletionPolicy Delete): {}",
                deleted.len(),
                deleted.join(", ")
            );
            if !shared.is_empty() {
                note.push_str(&format!(
                    "; kept {} still named by another pipeline: {}",
                    shared.len(),
                    shared.join(", ")
                ));
            }
            info!(%note);
            ctx.event(
                &sp,
                EventType::Normal,
                "TopicsDeleted",
                "DeleteTopics",
                note,
            )
            .await;
            Ok(Action::await_change())
        }
        Err(Error::NotLeader(what)) => Err(Error::NotLeader(what)),
        Err(e) => {
            let attempts = status.cleanup_attempts.unwrap_or(0).saturating_add(1);
            let limit = i32::try_from(ctx.settings.cleanup_attempts).unwrap_or(i32::MAX);
            if attempts >= limit {
                let note = format!(
                    "gave up deleting topics after {attempts} failed attempts ({e}); releasing the finalizer. Topics left on the broker: {}",
                    status.created_topics.join(", ")
                );
                warn!(%note);
                ctx.event(
                    &sp,
                    EventType::Warning,
                    "TopicDeletionAbandoned",
                    "DeleteTopics",
                    note,
                )
                .await;
                return Ok(Action::await_change());
            }
            let api: Api<SensorPipeline> = Api::namespaced(ctx.client.clone(), &ns);
            let next = SensorPipelineStatus {
                cleanup_attempts: Some(attempts),
                ..status.clone()
            };
            if let Err(w) = write_status(ctx, &api, &name, &next).await {
                warn!(error = %w, "could not record the cleanup attempt");
            }
            ctx.event(
                &sp,
                EventType::Warning,
                "TopicDeletionFailed",
                "DeleteTopics",
                format!("attempt {attempts} of {limit}: {e}"),
            )
            .await;
            Err(e)
        }
    }
}

/// Reconciles one SensorPipeline.
///
/// # Errors
/// [`Error`] from the failing step; the controller retries with backoff ([`error_policy`]).
pub async fn reconcile(sp: Arc<SensorPipeline>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = Instant::now();
    // A replica that is not (or no longer) the leader does nothing at all, not even the
    // finalizer patch.
    ctx.ensure_leading("reconcile")?;
    ctx.metrics.reconciles.inc();
    let ns = sp
        .namespace()
        .ok_or_else(|| Error::NoNamespace(sp.name_any()))?;
    let api: Api<SensorPipeline> = Api::namespaced(ctx.client.clone(), &ns);
    let k = key(&sp);
    let result = finalizer(&api, FINALIZER, sp, |event| async {
        match event {
            Finalizer::Apply(sp) => apply(sp, &ctx).await,
            Finalizer::Cleanup(sp) => cleanup(sp, &ctx).await,
        }
    })
    .await
    .map_err(|e| Error::Finalizer(Box::new(e)));
    ctx.metrics.observe(started.elapsed());
    if result.is_ok()
        && let Ok(mut f) = ctx.failures.lock()
    {
        f.remove(&k);
    }
    result
}

/// Counts the failure and retries after an exponential backoff per object
/// (`backoff_base · 2^(failures−1)`, at most `backoff_max`).
pub fn error_policy(sp: Arc<SensorPipeline>, err: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics
        .failures
        .get_or_create(&ErrorLabels {
            error: err.metric_label().to_owned(),
        })
        .inc();
    let n = ctx
        .failures
        .lock()
        .map(|mut f| {
            let n = f.entry(key(&sp)).or_insert(0);
            *n = n.saturating_add(1);
            *n
        })
        .unwrap_or(1);
    let delay = ctx
        .settings
        .backoff_base
        .saturating_mul(2u32.saturating_pow(n.saturating_sub(1).min(16)))
        .min(ctx.settings.backoff_max);
    warn!(pipeline = %key(&sp), error = %err, failures = n, retry_in = ?delay, "reconcile failed");
    Action::requeue(delay)
}

/// Hash of what should trigger a reconcile: the spec generation, deletion and finalizers (not
/// status writes, which would otherwise re-trigger the reconcile that wrote them).
fn trigger_hash(sp: &SensorPipeline) -> Option<u64> {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    predicates::generation(sp).hash(&mut h);
    sp.metadata.deletion_timestamp.is_some().hash(&mut h);
    sp.finalizers().hash(&mut h);
    Some(h.finish())
}

/// Which namespaces the operator watches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// Every namespace (needs the chart's cluster-wide RBAC, an explicit opt-in).
    AllNamespaces,
    /// Only these namespaces (namespaced Roles in each; no cluster-wide access to Secrets).
    Namespaces(Vec<String>),
}

impl Scope {
    /// `AllNamespaces` for an empty list, else the distinct non-empty names.
    pub fn from_list(list: &[String]) -> Self {
        let mut ns: Vec<String> = list
            .iter()
            .map(|n| n.trim().to_owned())
            .filter(|n| !n.is_empty())
            .collect();
        ns.sort();
        ns.dedup();
        if ns.is_empty() {
            Scope::AllNamespaces
        } else {
            Scope::Namespaces(ns)
        }
    }
}

/// One controller over the pipelines (and owned Deployments) of `namespace`, or of every
/// namespace for `None`.
async fn run_one(
    ctx: Arc<Context>,
    namespace: Option<String>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let client = ctx.client.clone();
    let (pipelines, deployments): (Api<SensorPipeline>, Api<Deployment>) = match &namespace {
        Some(ns) => (
            Api::namespaced(client.clone(), ns),
            Api::namespaced(client, ns),
        ),
        None => (Api::all(client.clone()), Api::all(client)),
    };
    let (reader, writer) = reflector::store();
    let stream = watcher(pipelines, watcher::Config::default())
        .default_backoff()
        .reflect(writer)
        .applied_objects()
        .predicate_filter(trigger_hash, Default::default());
    let owned =
        watcher::Config::default().labels(&format!("app.kubernetes.io/managed-by={MANAGED_BY}"));
    Controller::for_stream(stream, reader)
        .owns(deployments, owned)
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|res| async move {
            match res {
                Ok((obj, _)) => tracing::debug!(object = %obj.name, "reconciled"),
                Err(e) => tracing::debug!(error = %e, "reconcile error"),
            }
        })
        .await;
}

/// Runs the controller over `scope` until `shutdown` completes. With a namespace list, one
/// controller (watch, cache, queue) runs per namespace: a namespaced Role allows a namespaced
/// watch only, and each reflector must see a single watch's initial list.
pub async fn run(
    ctx: Arc<Context>,
    scope: Scope,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    use futures::FutureExt;
    let shutdown = shutdown.shared();
    match scope {
        Scope::AllNamespaces => run_one(ctx, None, shutdown).await,
        Scope::Namespaces(list) => {
            info!(namespaces = ?list, "watching only these namespaces");
            futures::future::join_all(
                list.into_iter()
                    .map(|ns| run_one(ctx.clone(), Some(ns), shutdown.clone())),
            )
            .await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cooldown_start_rounds_up_to_whole_seconds() {
        let t = |s: i64, ns: i32| Timestamp::new(s, ns).unwrap();
        assert_eq!(cooldown_start_rfc3339(t(100, 0)), t(100, 0).to_string());
        assert_eq!(cooldown_start_rfc3339(t(100, 1)), t(101, 0).to_string());
        assert_eq!(
            cooldown_start_rfc3339(t(100, 999_999_999)),
            t(101, 0).to_string()
        );
        // Read back, the cooldown never starts before the moment it was decided.
        let back: Timestamp = cooldown_start_rfc3339(t(100, 500)).parse().unwrap();
        assert!(back >= t(100, 500));
    }

    #[test]
    fn only_topics_not_named_by_another_pipeline_are_deleted() {
        let created = vec!["p.fa".to_owned(), "p.sx".to_owned(), "shared".to_owned()];
        let (delete, keep) = deletable_topics(&created, &["shared".to_owned(), "q.sx".to_owned()]);
        assert_eq!(delete, ["p.fa", "p.sx"]);
        assert_eq!(keep, ["shared"]);
        assert_eq!(deletable_topics(&[], &[]), (vec![], vec![]));
    }

    #[test]
    fn scope_from_a_namespace_list() {
        assert_eq!(Scope::from_list(&[]), Scope::AllNamespaces);
        assert_eq!(Scope::from_list(&[" ".into()]), Scope::AllNamespaces);
        assert_eq!(
            Scope::from_list(&["b".into(), "a".into(), "b".into()]),
            Scope::Namespaces(vec!["a".into(), "b".into()])
        );
    }
}
