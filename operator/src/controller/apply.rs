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
use super::status::schema;
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

/// How long a status schema found outdated is used before the full status is tried again
/// (the CRD may have been upgraded meanwhile).
const OUTDATED_CRD_RECHECK: std::time::Duration = std::time::Duration::from_secs(300);

/// The installed CRD's status schema, found older than this operator's by a refused status
/// write, and the pipelines (`namespace/name`) already warned about it.
#[derive(Debug)]
pub(crate) struct OutdatedCrd {
    schema: serde_json::Value,
    since: std::time::Instant,
    warned: std::collections::HashSet<String>,
}

/// Writes `status` with server-side apply on the status subresource, when it differs from
/// the stored one (so an unchanged round writes nothing).
///
/// Under a CRD older than this operator (Helm never upgrades `crds/`), the API server refuses
/// the whole apply for a field its schema lacks (HTTP 500, "field not declared in schema").
/// Then the status is pruned to the installed schema ([`schema::prune`]; schema read from the
/// API server's OpenAPI v3 document, which every authenticated client may read) and applied
/// again. Each pipeline gets a warning and a Warning Event `CustomResourceDefinitionOutdated`
/// naming the fields left out and the fix, once while the schema is kept: 5 minutes, in which a
/// pruned status equal to the stored one writes nothing; then the full status is tried again.
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
    let kube_err = |source| Error::Kube {
        action: "apply status",
        object: format!("SensorPipeline/{name}"),
        source,
    };
    let full = serde_json::to_value(status).unwrap_or_default();
    // Under a CRD found outdated, the status pruned to it (nothing to write when that equals
    // the stored one); otherwise the full status.
    let first = match cached_outdated_schema(ctx) {
        Some(installed) => {
            let mut st = full.clone();
            schema::prune(&mut st, &installed, ".status");
            if Some(&st) == serde_json::to_value(&sp.status).ok().as_ref() {
                return Ok(());
            }
            st
        }
        None => full.clone(),
    };
    ctx.act(&format!("apply status SensorPipeline/{name}"))?;
    match apply_status(&api, &name, &first).await {
        Err(kube::Error::Api(e)) if schema::is_undeclared_field(e.code, &e.message) => {}
        other => return other.map_err(kube_err),
    }
    // Refused for a field the installed CRD lacks: read its schema (again), prune, apply.
    let installed = installed_status_schema(&ctx.client)
        .await
        .map_err(kube_err)?;
    let mut st = full;
    let dropped = schema::prune(&mut st, &installed, ".status");
    apply_status(&api, &name, &st).await.map_err(kube_err)?;
    let first_warning = {
        let mut cache = ctx.outdated_crd.lock().unwrap_or_else(|p| p.into_inner());
        let entry = cache.get_or_insert_with(|| OutdatedCrd {
            schema: serde_json::Value::Null,
            since: std::time::Instant::now(),
            warned: Default::default(),
        });
        entry.schema = installed;
        entry.since = std::time::Instant::now();
        entry
            .warned
            .insert(format!("{}/{name}", sp.namespace().unwrap_or_default()))
    };
    if first_warning {
        let note = format!(
            "the installed SensorPipeline CRD is older than this operator: status written \
             without {}; apply this chart version's CRD (kubectl apply --server-side \
             --force-conflicts -f charts/sensorflow-operator/crds/, see \
             operator/README.md#upgrading)",
            dropped.join(", ")
        );
        warn!(%note, "status pruned to the installed CRD");
        let ev = PlannedEvent::warning("CustomResourceDefinitionOutdated", "WriteStatus", note);
        events(ctx, sp, &[ev]).await;
    }
    Ok(())
}

/// The cached outdated status schema while it is younger than [`OUTDATED_CRD_RECHECK`]; an
/// older one is dropped, so the next write tries the full status (a CRD upgraded meanwhile
/// takes it).
fn cached_outdated_schema(ctx: &Context) -> Option<serde_json::Value> {
    let mut cache = ctx.outdated_crd.lock().unwrap_or_else(|p| p.into_inner());
    if cache
        .as_ref()
        .is_some_and(|c| c.since.elapsed() > OUTDATED_CRD_RECHECK)
    {
        *cache = None;
    }
    cache.as_ref().map(|c| c.schema.clone())
}

async fn apply_status(
    api: &Api<SensorPipeline>,
    name: &str,
    status: &serde_json::Value,
) -> Result<(), kube::Error> {
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
}

/// The installed CRD's `status` schema, from the API server's OpenAPI v3 document of the
/// group-version (`GET /openapi/v3/apis/sensorflow.io/v1alpha1`, readable by every
/// authenticated client through the `system:discovery` role: no RBAC on CRDs needed). An
/// unreadable document yields an empty schema, which prunes nothing.
async fn installed_status_schema(client: &kube::Client) -> Result<serde_json::Value, kube::Error> {
    let req = http::Request::get("/openapi/v3/apis/sensorflow.io/v1alpha1")
        .body(Vec::new())
        .map_err(kube::Error::HttpError)?;
    let doc: serde_json::Value = client.request(req).await?;
    let schemas = doc["components"]["schemas"].as_object();
    let ours = schemas.into_iter().flatten().find(|(_, s)| {
        s["x-kubernetes-group-version-kind"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|gvk| gvk["group"] == "sensorflow.io" && gvk["kind"] == "SensorPipeline")
    });
    Ok(ours
        .map(|(_, s)| s["properties"]["status"].clone())
        .unwrap_or_default())
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
