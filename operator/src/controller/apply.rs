//! The apply step: every write of a reconcile, each behind [`Context::act`] (refused once
//! leadership is lost).
//!
//! ```text
//!   TopicPlan ─▶ topics()  ─▶ CreateTopics / CreatePartitions, verified ─▶ TopicReport
//!   Desired   ─▶ objects() ─▶ server-side apply (one field manager, forced)
//!                             ─▶ delete Deployments / ConfigMaps of the pipeline not in Desired
//!   status    ─▶ status()  ─▶ server-side apply on /status
//!   [PlannedEvent] ─▶ events() ─▶ Recorder (folded into series by the runtime)
//! ```

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Service, ServiceAccount};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use kube::runtime::events::{Event, EventType};
use kube::{Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tracing::{info, warn};

use super::plan::{PlannedEvent, Severity};
use super::{Context, Error, FIELD_MANAGER};
use crate::controller::build::{self, MANAGED_BY, PIPELINE_LABEL};
use crate::crd::{SensorPipeline, SensorPipelineStatus};
use sensorflow_kafka::{self as kafka, AdminError, Connection, TopicPlan, TopicReport};

/// Creates missing topics and raises confirmed partition increases on the broker, then reads
/// the result back ([`kafka::ensure_pipeline_topics`]).
///
/// # Errors
/// [`Error::NotLeader`], or the broker's [`AdminError`] (the caller reports it in status).
pub async fn topics(
    ctx: &Context,
    conn: &Connection,
    plan: &TopicPlan,
) -> Result<Result<TopicReport, AdminError>, Error> {
    ctx.act("ensure topics on the broker")?;
    Ok(kafka::ensure_pipeline_topics(conn, plan).await)
}

async fn ssa<K>(ctx: &Context, api: &Api<K>, obj: &K) -> Result<(), Error>
where
    K: Resource + Clone + Serialize + DeserializeOwned + std::fmt::Debug,
    K::DynamicType: Default,
{
    let name = obj.meta().name.clone().unwrap_or_default();
    let kind = K::kind(&K::DynamicType::default()).to_string();
    ctx.act(&format!("apply {kind}/{name}"))?;
    api.patch(
        &name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(obj),
    )
    .await
    .map(|_| ())
    .map_err(|source| Error::Kube {
        action: "apply",
        object: format!("{kind}/{name}"),
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

/// Server-side applies every object of `desired` (ServiceAccounts, ConfigMaps, Service,
/// Deployments), then deletes the pipeline's Deployments, ConfigMaps and ServiceAccounts that
/// are no longer desired (a removed sink, removed `serviceAccountAnnotations`).
///
/// # Errors
/// [`Error::Kube`] or [`Error::NotLeader`] from the first failing write.
pub async fn objects(
    ctx: &Context,
    ns: &str,
    pipeline: &str,
    desired: &build::Desired,
) -> Result<(), Error> {
    let c = &ctx.client;
    let sa_api = Api::<ServiceAccount>::namespaced(c.clone(), ns);
    for sa in &desired.service_accounts {
        ssa(ctx, &sa_api, sa).await?;
    }
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
    let keep_d: Vec<String> = desired
        .deployments
        .iter()
        .filter_map(|d| d.metadata.name.clone())
        .collect();
    let keep_cm: Vec<String> = desired
        .config_maps
        .iter()
        .filter_map(|d| d.metadata.name.clone())
        .collect();
    let keep_sa: Vec<String> = desired
        .service_accounts
        .iter()
        .filter_map(|d| d.metadata.name.clone())
        .collect();
    let mut gone = delete_orphans(ctx, &d_api, pipeline, &keep_d).await?;
    gone.extend(delete_orphans(ctx, &cm_api, pipeline, &keep_cm).await?);
    gone.extend(delete_orphans(ctx, &sa_api, pipeline, &keep_sa).await?);
    if !gone.is_empty() {
        info!(deleted = ?gone, "deleted objects no longer in the spec");
    }
    Ok(())
}

/// Writes `status` with server-side apply on the status subresource, when it differs from
/// `current` (so an unchanged round writes nothing).
///
/// # Errors
/// [`Error::Kube`] or [`Error::NotLeader`].
pub async fn status(
    ctx: &Context,
    sp: &SensorPipeline,
    status: &SensorPipelineStatus,
) -> Result<(), Error> {
    if Some(status) == sp.status.as_ref() {
        return Ok(());
    }
    let name = sp.name_any();
    let api: Api<SensorPipeline> =
        Api::namespaced(ctx.client.clone(), &sp.namespace().unwrap_or_default());
    ctx.act(&format!("apply status SensorPipeline/{name}"))?;
    let patch = serde_json::json!({
        "apiVersion": "sensorflow.io/v1alpha1",
        "kind": "SensorPipeline",
        "status": status,
    });
    api.patch_status(
        &name,
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

/// Publishes `events` on `sp`. A refused or failed publish is logged, never an error: Events
/// are best effort.
pub async fn events(ctx: &Context, sp: &SensorPipeline, events: &[PlannedEvent]) {
    for e in events {
        if e.severity == Severity::Normal {
            info!(reason = %e.reason, note = %e.note, "event");
        }
        if ctx.act(&format!("publish Event {}", e.reason)).is_err() {
            return;
        }
        let ev = Event {
            type_: match e.severity {
                Severity::Normal => EventType::Normal,
                Severity::Warning => EventType::Warning,
            },
            reason: e.reason.clone(),
            note: Some(e.note.clone()),
            action: e.action.to_owned(),
            secondary: None,
        };
        if let Err(err) = ctx.recorder.publish(&ev, &sp.object_ref(&())).await {
            warn!(error = %err, reason = %e.reason, "could not publish event");
        }
    }
}
