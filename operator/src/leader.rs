//! Leader election on a `coordination.k8s.io/v1` Lease, as client-go does it.
//!
//! ```text
//!   acquire: loop { get Lease ─▶ absent: create │ mine or expired: replace(resourceVersion) } until held
//!   keep:    every renew period replace(renewTime = now); lost when another holder appears or
//!            renewals failed for a whole lease duration
//!   release: holder := none, so a successor starts at once
//! ```
//! Writes use the Lease's `resourceVersion`, so two candidates racing get one 409 Conflict and
//! only one of them leads.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::Client;
use kube::api::{Api, PostParams};
use tracing::{info, warn};

/// Lease settings.
#[derive(Debug, Clone)]
pub struct LeaseConfig {
    /// Namespace of the Lease.
    pub namespace: String,
    /// Lease name.
    pub name: String,
    /// This candidate's identity (pod name).
    pub identity: String,
    /// How long a lease is valid without renewal.
    pub lease_duration: Duration,
    /// How often the holder renews (and candidates retry).
    pub renew_every: Duration,
}

fn is_conflict(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 409)
}

/// One attempt to take or renew the Lease. `Ok(true)` when this candidate holds it now.
///
/// # Errors
/// API errors other than conflicts (which mean another candidate won: `Ok(false)`).
pub async fn try_acquire_or_renew(client: &Client, cfg: &LeaseConfig) -> Result<bool, kube::Error> {
    let api: Api<Lease> = Api::namespaced(client.clone(), &cfg.namespace);
    let now = Timestamp::now();
    let duration_secs = i32::try_from(cfg.lease_duration.as_secs()).unwrap_or(i32::MAX);
    let Some(lease) = api.get_opt(&cfg.name).await? else {
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(cfg.name.clone()),
                namespace: Some(cfg.namespace.clone()),
                ..Default::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(cfg.identity.clone()),
                lease_duration_seconds: Some(duration_secs),
                acquire_time: Some(MicroTime(now)),
                renew_time: Some(MicroTime(now)),
                lease_transitions: Some(0),
                ..Default::default()
            }),
        };
        return match api.create(&PostParams::default(), &lease).await {
            Ok(_) => Ok(true),
            Err(e) if is_conflict(&e) => Ok(false),
            Err(e) => Err(e),
        };
    };
    let spec = lease.spec.clone().unwrap_or_default();
    let mine = spec.holder_identity.as_deref() == Some(cfg.identity.as_str());
    let held_by_other = spec
        .holder_identity
        .as_deref()
        .is_some_and(|h| !h.is_empty())
        && !mine;
    let expired = match (spec.renew_time.as_ref(), spec.lease_duration_seconds) {
        (Some(r), Some(d)) => r.0 + SignedDuration::from_secs(i64::from(d)) < now,
        _ => true,
    };
    if held_by_other && !expired {
        return Ok(false);
    }
    let mut next = lease.clone();
    next.spec = Some(LeaseSpec {
        holder_identity: Some(cfg.identity.clone()),
        lease_duration_seconds: Some(duration_secs),
        acquire_time: if mine {
            spec.acquire_time
        } else {
            Some(MicroTime(now))
        },
        renew_time: Some(MicroTime(now)),
        lease_transitions: Some(spec.lease_transitions.unwrap_or(0) + i32::from(!mine)),
        ..Default::default()
    });
    match api.replace(&cfg.name, &PostParams::default(), &next).await {
        Ok(_) => Ok(true),
        Err(e) if is_conflict(&e) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Waits until this candidate holds the Lease. Never fails: API errors are logged and retried.
pub async fn acquire(client: &Client, cfg: &LeaseConfig) {
    let mut waiting_logged = false;
    loop {
        match try_acquire_or_renew(client, cfg).await {
            Ok(true) => {
                info!(lease = %cfg.name, identity = %cfg.identity, "acquired leadership");
                return;
            }
            Ok(false) if !waiting_logged => {
                info!(lease = %cfg.name, "another replica leads; waiting");
                waiting_logged = true;
            }
            Ok(false) => {}
            Err(e) => warn!(error = %e, "leader election attempt failed"),
        }
        tokio::time::sleep(cfg.renew_every).await;
    }
}

/// Renews the held Lease until leadership is lost; returns then.
pub async fn keep(client: &Client, cfg: &LeaseConfig) {
    let mut last_ok = tokio::time::Instant::now();
    loop {
        tokio::time::sleep(cfg.renew_every).await;
        match try_acquire_or_renew(client, cfg).await {
            Ok(true) => last_ok = tokio::time::Instant::now(),
            Ok(false) => {
                warn!(lease = %cfg.name, "leadership taken by another replica");
                return;
            }
            Err(e) => {
                warn!(error = %e, "lease renewal failed");
                if last_ok.elapsed() >= cfg.lease_duration {
                    warn!(lease = %cfg.name, "could not renew for a whole lease duration");
                    return;
                }
            }
        }
    }
}

/// Gives the Lease up so a successor need not wait for it to expire.
///
/// # Errors
/// API errors (a conflict means someone else holds it already; nothing to do).
pub async fn release(client: &Client, cfg: &LeaseConfig) -> Result<(), kube::Error> {
    let api: Api<Lease> = Api::namespaced(client.clone(), &cfg.namespace);
    let Some(mut lease) = api.get_opt(&cfg.name).await? else {
        return Ok(());
    };
    let Some(spec) = lease.spec.as_mut() else {
        return Ok(());
    };
    if spec.holder_identity.as_deref() != Some(cfg.identity.as_str()) {
        return Ok(());
    }
    spec.holder_identity = None;
    spec.renew_time = None;
    match api.replace(&cfg.name, &PostParams::default(), &lease).await {
        Ok(_) => Ok(()),
        Err(e) if is_conflict(&e) => Ok(()),
        Err(e) => Err(e),
    }
}
