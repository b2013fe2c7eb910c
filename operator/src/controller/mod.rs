//! The reconciler: one pass per SensorPipeline, wrapped in a finalizer, as a pipeline of small
//! steps (the shape of the Stackable operators).
//!
//! ```text
//!   SensorPipeline ─▶ finalizer ─Apply──▶ validate, policy (pure) ──refused──▶ status::invalid ─▶ write +
//!                        │                   │ ok                     Warning, wait for a change
//!                        │                   ▼
//!                        │     dereference: Secrets, Deployments ──┐  (the only reads)
//!                        │     apply::topics (create / raise) ─────┤  ◀─ plan::topics (pure)
//!                        │     dereference: lag per stage ─────────┴─▶ Observed
//!                        │                   ▼
//!                        │     plan::replicas (pure) ─▶ build::build (pure) ─▶ apply::objects
//!                        │                   ▼                                 (SSA + orphans)
//!                        │     status::running (pure) ─▶ apply::status, apply::events
//!                        └─Cleanup─▶ with deletionPolicy Delete: the topics in status.createdTopics
//!                                    (bounded attempts, then released with a Warning); owned
//!                                    objects go with the garbage collector (owner references)
//! ```
//!
//! [`dereference`] is the only step that reads the cluster or the broker; [`plan`] and
//! [`status`] are pure functions of what it observed (unit-tested without a cluster);
//! [`apply`] does every write. The topic step is the one place where a broker read and its
//! write sit together ([`sensorflow_kafka::ensure_pipeline_topics`] reads the partition counts, decides
//! with the pure [`sensorflow_kafka::plan_topics`] and verifies after writing), so it runs in
//! [`apply`].
//!
//! Every write (server-side apply, status, topics, finalizer, Events) first asks
//! [`Context::act`], which refuses once leadership is lost or its renew deadline has passed, so
//! a paused-then-resumed former leader never acts next to its successor.

pub mod apply;
pub mod build;
pub mod dereference;
pub mod plan;
pub mod policy;
pub mod status;
pub mod validate;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::Api;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::finalizer::{Event as Finalizer, finalizer};
use kube::runtime::reflector;
use kube::runtime::watcher;
use kube::runtime::{WatchStreamExt, predicates};
use kube::{Client, Resource, ResourceExt};
use tracing::{info, instrument, warn};

use crate::controller::status::conditions::{Refusal, TopicsOutcome};
use crate::crd::{DeletionPolicy, SensorPipeline, SensorPipelineStatus};
use crate::leader::Leadership;
use crate::metrics::{ErrorLabels, Metrics, StageLabels};
use build::{MANAGED_BY, Stage};
use dereference::Observed;
use plan::PlannedEvent;
use sensorflow_kafka::{self as kafka, AdminError};

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
        source: Box<AdminError>,
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
    /// What a pipeline may obtain from this operator (image repositories, ServiceAccount,
    /// volume types); see [`policy`].
    pub policy: policy::Policy,
    /// The processors' image of every pipeline that does not pin `processors.image`: the
    /// operator's own image (`--processor-image`, which the chart sets from its `image.*`
    /// values), so an operator upgrade rolls them.
    pub processor_image: String,
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
    /// The watch caches of every controller of this operator (one per watched namespace, or
    /// one for all): the SensorPipelines it sees, for the name claims of [`plan::claims`].
    pipelines: Mutex<Vec<reflector::Store<SensorPipeline>>>,
    /// End-offset reads of earlier reconciles per pipeline (`namespace/name`), for the time
    /// lag and rates of [`plan::flow`]; in memory only (a new leader starts afresh).
    flows: Mutex<HashMap<String, plan::flow::Histories>>,
    /// The installed CRD's status schema once a status write found it older than this
    /// operator's ([`apply::status`]); `None` while the full status is accepted.
    pub(crate) outdated_crd: Mutex<Option<apply::OutdatedCrd>>,
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
            pipelines: Mutex::new(Vec::new()),
            flows: Mutex::new(HashMap::new()),
            outdated_crd: Mutex::new(None),
        }
    }

    /// Every SensorPipeline in this operator's watch caches (all watched namespaces).
    pub fn known_pipelines(&self) -> Vec<Arc<SensorPipeline>> {
        self.pipelines
            .lock()
            .map(|stores| stores.iter().flat_map(reflector::Store::state).collect())
            .unwrap_or_default()
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
}

/// The name prefixes of `sp` as fixed in its status ([`validate::Naming`]).
fn naming_of(ns: &str, name: &str, sp: &SensorPipeline) -> validate::Naming {
    validate::Naming::resolve(
        &sp.spec,
        &validate::Naming::fixed_defaults(ns, name, sp.status.as_ref()),
    )
}

fn key(sp: &SensorPipeline) -> String {
    format!("{}/{}", sp.namespace().unwrap_or_default(), sp.name_any())
}

/// The Apply branch: validate, dereference, topics, lag, plan, apply, status.
#[instrument(skip_all, fields(pipeline = %key(&sp)))]
async fn reconcile_apply(sp: Arc<SensorPipeline>, ctx: &Context) -> Result<Action, Error> {
    let name = sp.name_any();
    let ns = sp
        .namespace()
        .ok_or_else(|| Error::NoNamespace(name.clone()))?;
    let previous = sp.status.clone().unwrap_or_default();
    let now = Timestamp::now();
    let now_s = status::now_rfc3339(now);
    let generation = sp.metadata.generation;

    // 0. names: the default prefixes are fixed at the first reconcile (recorded in status)
    let defaults = validate::Naming::fixed_defaults(&ns, &name, sp.status.as_ref());
    let naming = validate::Naming::resolve(&sp.spec, &defaults);
    let previous = if previous.default_names.as_ref() == Some(&defaults) {
        previous
    } else {
        let st = SensorPipelineStatus {
            default_names: Some(defaults),
            ..previous
        };
        apply::status(ctx, &sp, &st).await?;
        st
    };

    // 1. validate (pure), then the operator's policy (pure)
    let checked = validate::validate(&name, &naming, &sp.spec)
        .map(|v| v.with_operator_image(&ctx.settings.processor_image))
        .map_err(|errs| (Refusal::invalid_spec(errs.to_string()), "Validate"))
        .and_then(|v| {
            policy::check(
                &ctx.settings.policy,
                &sp.spec,
                &ctx.settings.processor_image,
            )
            .map(|()| v)
            .map_err(|p| (Refusal::policy_violation(p.to_string()), "CheckPolicy"))
        });
    let v = match checked {
        Ok(v) => v,
        Err((refusal, action)) => {
            let (reason, msg) = (refusal.reason, refusal.message.clone());
            let (st, already_reported) =
                status::invalid(generation, &sp.spec, &previous, refusal, &now_s);
            apply::status(ctx, &sp, &st).await?;
            if !already_reported {
                warn!(%msg, reason, "spec not acted on");
                let ev = PlannedEvent::warning(reason, action, msg);
                apply::events(ctx, &sp, &[ev]).await;
            }
            // No hot loop: wait for the user to change the spec. Nothing is applied, so the
            // Deployments keep the spec they were last built from.
            return Ok(Action::await_change());
        }
    };

    // 1b. claims (pure, over the pipelines in the watch caches): the later of two pipelines
    // that would manage the same topics or groups is refused and touches nothing
    let others: Vec<plan::claims::Claims> = ctx
        .known_pipelines()
        .iter()
        .filter(|o| o.uid() != sp.uid())
        .filter_map(|o| plan::claims::claims_of(o))
        .collect();
    let mine = plan::claims::Claims::new(
        &ns,
        &name,
        sp.metadata.creation_timestamp.as_ref().map(|t| t.0),
        &sp.spec,
        &naming,
    );
    if let Some(why) = plan::claims::conflict(&mine, &others) {
        let already = previous.observed_generation == generation
            && status::conditions::ConditionType::Ready
                .find(&previous.conditions)
                .is_some_and(|c| c.reason == "Conflict" && c.message == why);
        let deployments = dereference::deployments(&ctx.client, &ns, &name).await?;
        let (st, event) = status::topic_failure(
            generation,
            &sp.spec,
            &previous,
            TopicsOutcome::Conflict(why.clone()),
            Some(&deployments),
            &now_s,
        );
        apply::status(ctx, &sp, &st).await?;
        if !already {
            warn!(%why, "refused: names claimed by another pipeline");
            apply::events(ctx, &sp, event.as_slice()).await;
        }
        // Not an error (no backoff): looked at again every resync, so it runs once the other
        // pipeline is gone or renamed.
        return Ok(Action::requeue(ctx.settings.resync));
    }

    // 2. dereference: Kafka credentials and Secret versions, current Deployments
    let (conn, secret_versions) = match dereference::secrets(&ctx.client, &ns, &sp.spec, true).await
    {
        Ok(c) => c,
        Err(e) => {
            let outcome = TopicsOutcome::SecretUnavailable(e.to_string());
            report_topic_failure(ctx, &sp, &previous, outcome, None, &now_s).await?;
            return Err(e);
        }
    };
    let deployments = dereference::deployments(&ctx.client, &ns, &name).await?;

    // 3. topics (plan pure, then create / raise on the broker)
    let report = match apply::topics(ctx, &conn, &plan::topics(&v, &previous.created_topics))
        .await?
    {
        Ok(r) => r,
        Err(e) => {
            let outcome = if e.is_authentication() {
                TopicsOutcome::AuthenticationFailed(authentication_hint(&e, &ns, &sp.spec))
            } else {
                TopicsOutcome::BrokerUnavailable(e.to_string())
            };
            report_topic_failure(ctx, &sp, &previous, outcome, Some(&deployments), &now_s).await?;
            return Err(Error::Kafka {
                pipeline: key(&sp),
                source: Box::new(e),
            });
        }
    };
    // Topics this pipeline created, recorded at once (before anything else can fail) so that
    // deletionPolicy Delete later removes exactly these.
    let created_topics = status::created_topics(&previous, &report);
    if created_topics != previous.created_topics {
        let st = SensorPipelineStatus {
            created_topics: created_topics.clone(),
            ..previous.clone()
        };
        apply::status(ctx, &sp, &st).await?;
    }
    let events = status::topic_events(&report, v.spec.topics.partitions, &previous);
    apply::events(ctx, &sp, &events).await;

    // 4. dereference: offsets per stage (None when they cannot be read), the dead-letter and
    // late topics' end offsets, the pods; then the flow estimates (pure, over the reads kept
    // from earlier reconciles)
    let (reads, pods) = futures::join!(
        dereference::reads(&conn, &v, &report),
        dereference::pods(&ctx.client, &ns, &name)
    );
    let lags = reads
        .stages
        .iter()
        .map(|(stage, r)| (*stage, r.map(|r| r.lag)))
        .collect();
    let flow = ctx
        .flows
        .lock()
        .map(|mut f| plan::flow::observe(f.entry(key(&sp)).or_default(), now, &reads))
        .unwrap_or_default();
    let observed = Observed {
        deployments,
        secret_versions,
        topics: report,
        lags,
        pods,
        flow,
    };

    // 5. plan replicas (pure)
    let cooldown = ctx.settings.cooldown_override.map_or_else(
        || SignedDuration::from_secs(v.spec.processors.scale_down_cooldown_seconds),
        |d| SignedDuration::try_from(d).unwrap_or(SignedDuration::ZERO),
    );
    let decision = plan::replicas(&v, &observed, &previous, cooldown, now);
    for (stage, _, _) in plan::topics::stage_inputs(&v) {
        let labels = StageLabels {
            namespace: ns.clone(),
            pipeline: name.clone(),
            stage: stage.as_str().to_owned(),
        };
        if let Some(l) = observed.lag(stage) {
            ctx.metrics
                .lag
                .get_or_create(&labels)
                .set(plan::saturating_i64(l));
        }
        let planned = match stage {
            Stage::Window => decision.plan.window,
            _ => decision.plan.join,
        };
        if let Some(r) = planned {
            ctx.metrics
                .replicas
                .get_or_create(&labels)
                .set(i64::from(r));
        }
    }
    apply::events(ctx, &sp, &decision.events).await;

    // 6. build (pure) and apply
    let owner = sp
        .controller_owner_ref(&())
        .ok_or_else(|| Error::NoNamespace(name.clone()))?;
    let desired = build::build(&v, &ns, &owner, decision.plan, &observed.secret_versions);
    apply::objects(ctx, &ns, &name, &desired).await?;

    // 7. status (pure compute, then apply)
    let st = status::running(
        generation,
        &v.spec,
        &observed,
        &decision,
        created_topics,
        &previous,
        &now_s,
    );
    apply::status(ctx, &sp, &st).await?;
    Ok(Action::requeue(ctx.settings.resync))
}

/// The `AuthenticationFailed` message: the broker's refusal and what to check (the Secret and
/// keys the credentials come from, the mechanism). Never the credentials themselves.
fn authentication_hint(e: &AdminError, ns: &str, spec: &crate::crd::SensorPipelineSpec) -> String {
    let sec = spec.kafka.security.as_ref();
    let mechanism = sec
        .and_then(|s| s.sasl_mechanism)
        .map_or("(none)", |m| m.as_str());
    match sec.and_then(|s| s.credentials_secret.as_ref()) {
        Some(c) => format!(
            "{e}; check the username and password in Secret {ns}/{} (keys {}, {}) and saslMechanism {mechanism}",
            c.name, c.username_key, c.password_key
        ),
        None => format!("{e}; no credentialsSecret is set (saslMechanism {mechanism})"),
    }
}

/// Writes the status for a failed topic step (`TopicsReady=False`, `Degraded=True`) and raises a
/// Warning Event; the caller returns the error so the controller retries with backoff.
async fn report_topic_failure(
    ctx: &Context,
    sp: &SensorPipeline,
    previous: &SensorPipelineStatus,
    outcome: TopicsOutcome,
    deployments: Option<&BTreeMap<Stage, Deployment>>,
    now_s: &str,
) -> Result<(), Error> {
    let (st, event) = status::topic_failure(
        sp.metadata.generation,
        &sp.spec,
        previous,
        outcome,
        deployments,
        now_s,
    );
    apply::status(ctx, sp, &st).await?;
    apply::events(ctx, sp, event.as_slice()).await;
    Ok(())
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
    if let Ok(mut f) = ctx.flows.lock() {
        f.remove(&key(&sp));
    }
    if sp.spec.topics.deletion_policy != DeletionPolicy::Delete {
        apply::events(
            ctx,
            &sp,
            &[PlannedEvent::normal(
                "TopicsRetained",
                "DeleteTopics",
                "topics kept (deletionPolicy Retain)".into(),
            )],
        )
        .await;
        return Ok(Action::await_change());
    }
    let status = sp.status.clone().unwrap_or_default();
    let owns_any = sp.spec.topics.inputs == Some(crate::crd::TopicManagement::Own)
        || sp.spec.topics.outputs == crate::crd::TopicManagement::Own;
    if status.created_topics.is_empty() && !owns_any {
        apply::events(
            ctx,
            &sp,
            &[PlannedEvent::normal("TopicsRetained", "DeleteTopics", "deletionPolicy Delete, but this pipeline created no topics (they existed before it)"
                .into())],
        )
        .await;
        return Ok(Action::await_change());
    }
    let attempt = async {
        let others = dereference::topics_of_other_pipelines(&ctx.known_pipelines(), &sp);
        let candidates = match validate::validate(&name, &naming_of(&ns, &name, &sp), &sp.spec) {
            Ok(v) => plan::topics::owned_for_deletion(&v, &status.created_topics),
            // An invalid spec says nothing reliable about ownership: only what it created.
            Err(_) => status.created_topics.clone(),
        };
        let (delete, shared) = plan::deletable_topics(&candidates, &others);
        let (conn, _) = dereference::secrets(&ctx.client, &ns, &sp.spec, false).await?;
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
            apply::events(
                ctx,
                &sp,
                &[PlannedEvent::normal("TopicsDeleted", "DeleteTopics", note)],
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
                apply::events(
                    ctx,
                    &sp,
                    &[PlannedEvent::warning(
                        "TopicDeletionAbandoned",
                        "DeleteTopics",
                        note,
                    )],
                )
                .await;
                return Ok(Action::await_change());
            }
            let next = SensorPipelineStatus {
                cleanup_attempts: Some(attempts),
                ..status.clone()
            };
            if let Err(w) = apply::status(ctx, &sp, &next).await {
                warn!(error = %w, "could not record the cleanup attempt");
            }
            apply::events(
                ctx,
                &sp,
                &[PlannedEvent::warning(
                    "TopicDeletionFailed",
                    "DeleteTopics",
                    format!("attempt {attempts} of {limit}: {e}"),
                )],
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
            Finalizer::Apply(sp) => reconcile_apply(sp, &ctx).await,
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
    if let Ok(mut stores) = ctx.pipelines.lock() {
        stores.push(reader.clone());
    }
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
    fn scope_from_a_namespace_list() {
        assert_eq!(Scope::from_list(&[]), Scope::AllNamespaces);
        assert_eq!(Scope::from_list(&[" ".into()]), Scope::AllNamespaces);
        assert_eq!(
            Scope::from_list(&["b".into(), "a".into(), "b".into()]),
            Scope::Namespaces(vec!["a".into(), "b".into()])
        );
    }
}
