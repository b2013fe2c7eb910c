//! Leader election on a `coordination.k8s.io/v1` Lease, as client-go does it.
//!
//! ```text
//!   candidate: every retryPeriod  GET Lease ─▶ Observer (record changed? note MY monotonic time)
//!                                   ─▶ decide: mine → renew │ empty or unchanged for leaseDuration
//!                                      (by my clock) → take │ else wait
//!                                   ─▶ replace(resourceVersion)   (a racing candidate gets 409)
//!   leader:    renew every retryPeriod; Leadership::is_leading() is false once renewDeadline has
//!              passed since the last renewal *was sent* (monotonic clock, so time spent stopped
//!              or suspended counts) or another holder was seen → every write is refused and the
//!              process exits
//!   release:   holder := none, so a successor starts at once
//! ```
//!
//! Why the three durations: a leader stops acting `renewDeadline` after its last successful
//! renewal was sent; another candidate takes over only after it has seen the *same* record
//! unchanged for `leaseDuration` on its own clock, which starts no earlier than that renewal was
//! written. With `renewDeadline < leaseDuration` the two acting intervals cannot overlap, even
//! when the clocks of the machines disagree (no wall-clock `renewTime` is compared) and even
//! when the leader is paused (SIGSTOP, a long GC-like stall, a frozen VM) and later resumes.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::Client;
use kube::api::{Api, PostParams};
use tokio::time::Instant;
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
    /// How long other candidates wait, on their own clock, after the last change of the Lease
    /// they saw before taking it (client-go `LeaseDuration`, default 15 s).
    pub lease_duration: Duration,
    /// How long the leader keeps acting after its last successful renewal was sent (client-go
    /// `RenewDeadline`, default 10 s); must be shorter than `lease_duration`.
    pub renew_deadline: Duration,
    /// Pause between attempts to take or renew (client-go `RetryPeriod`, default 2 s); must be
    /// shorter than `renew_deadline`.
    pub retry_period: Duration,
}

impl LeaseConfig {
    /// Defaults derived from a lease duration as client-go's are (15 s → 10 s, 2 s).
    pub fn from_lease_duration(
        namespace: String,
        name: String,
        identity: String,
        lease: Duration,
    ) -> Self {
        Self {
            namespace,
            name,
            identity,
            lease_duration: lease,
            renew_deadline: lease.mul_f64(2.0 / 3.0),
            retry_period: lease.mul_f64(2.0 / 15.0),
        }
    }

    /// Checks `retry_period < renew_deadline < lease_duration`.
    ///
    /// # Errors
    /// A message naming the violated inequality.
    pub fn check(&self) -> Result<(), String> {
        if self.renew_deadline >= self.lease_duration {
            return Err(format!(
                "renew deadline ({:?}) must be shorter than the lease duration ({:?}): otherwise a paused leader can still act after another replica took over",
                self.renew_deadline, self.lease_duration
            ));
        }
        if self.retry_period.is_zero() || self.retry_period >= self.renew_deadline {
            return Err(format!(
                "retry period ({:?}) must be positive and shorter than the renew deadline ({:?})",
                self.retry_period, self.renew_deadline
            ));
        }
        Ok(())
    }
}

/// The parts of a Lease that say who holds it; any change counts as a sign of life.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Record {
    /// `holderIdentity` (empty or absent: free).
    pub holder: Option<String>,
    /// `renewTime` as written by the holder (compared for change only, never with our clock).
    pub renew_time: Option<String>,
    /// `acquireTime`.
    pub acquire_time: Option<String>,
    /// `leaseDurationSeconds`.
    pub duration_seconds: Option<i32>,
    /// `leaseTransitions`.
    pub transitions: Option<i32>,
}

impl Record {
    fn from_spec(spec: &LeaseSpec) -> Self {
        Self {
            holder: spec.holder_identity.clone().filter(|h| !h.is_empty()),
            renew_time: spec.renew_time.as_ref().map(|t| t.0.to_string()),
            acquire_time: spec.acquire_time.as_ref().map(|t| t.0.to_string()),
            duration_seconds: spec.lease_duration_seconds,
            transitions: spec.lease_transitions,
        }
    }
}

/// What to do with the Lease, decided from what this candidate has seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// This candidate holds it: renew.
    Renew,
    /// Free, or unchanged for a whole lease duration on our clock: take it.
    Take,
    /// Someone else holds it; it cannot expire before `remaining` has passed.
    Wait {
        /// Time left until the holder's lease expires by our observation.
        remaining: Duration,
    },
}

/// Pure: the decision for `identity` given the record and the local (monotonic) instant at
/// which this candidate first saw that exact record. `fallback` is used when the record
/// carries no duration.
pub fn decide(
    identity: &str,
    record: &Record,
    observed_at: Instant,
    now: Instant,
    fallback: Duration,
) -> Decision {
    match record.holder.as_deref() {
        None => Decision::Take,
        Some(h) if h == identity => Decision::Renew,
        Some(_) => {
            let duration = record
                .duration_seconds
                .and_then(|d| u64::try_from(d).ok())
                .map_or(fallback, Duration::from_secs);
            let seen_for = now.saturating_duration_since(observed_at);
            match duration.checked_sub(seen_for) {
                Some(remaining) if !remaining.is_zero() => Decision::Wait { remaining },
                _ => Decision::Take,
            }
        }
    }
}

/// Remembers the last record seen and when (this process's monotonic clock).
#[derive(Debug, Default)]
pub struct Observer {
    seen: Option<(Record, Instant)>,
}

impl Observer {
    /// Notes `record` as seen at `now`; the observation time only moves when the record changed.
    /// Returns the instant from which the record has been seen unchanged.
    pub fn observe(&mut self, record: &Record, now: Instant) -> Instant {
        match &self.seen {
            Some((r, at)) if r == record => *at,
            _ => {
                self.seen = Some((record.clone(), now));
                now
            }
        }
    }
}

/// Whether this process may act as the leader right now. Shared between the renewal loop and
/// every writer in the controller.
#[derive(Debug)]
pub struct Leadership {
    base: Instant,
    renew_deadline: Duration,
    /// Milliseconds after `base` at which the last successful renewal was *sent*; `u64::MAX`
    /// when never.
    renewed_ms: AtomicU64,
    lost: AtomicBool,
}

impl Leadership {
    /// A leadership that is not held yet.
    pub fn new(renew_deadline: Duration) -> Arc<Self> {
        Arc::new(Self {
            base: Instant::now(),
            renew_deadline,
            renewed_ms: AtomicU64::new(u64::MAX),
            lost: AtomicBool::new(false),
        })
    }

    /// Records a successful take or renewal whose request was sent at `sent`.
    pub fn renewed(&self, sent: Instant) {
        let ms = u64::try_from(sent.saturating_duration_since(self.base).as_millis())
            .unwrap_or(u64::MAX - 1);
        self.renewed_ms.store(ms, Ordering::SeqCst);
    }

    /// Marks leadership as lost for good (this process never acts again).
    pub fn lose(&self) {
        self.lost.store(true, Ordering::SeqCst);
    }

    /// True while the last renewal was sent less than the renew deadline ago and leadership was
    /// never lost. Reads the monotonic clock, so a process that was stopped sees the time it
    /// missed.
    pub fn is_leading(&self) -> bool {
        self.is_leading_at(Instant::now())
    }

    fn is_leading_at(&self, now: Instant) -> bool {
        if self.lost.load(Ordering::SeqCst) {
            return false;
        }
        let ms = self.renewed_ms.load(Ordering::SeqCst);
        if ms == u64::MAX {
            return false;
        }
        let deadline = self.base + Duration::from_millis(ms) + self.renew_deadline;
        now < deadline
    }
}

fn is_conflict(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 409)
}

/// One attempt to take or renew the Lease. `Ok(Some(sent))` when this candidate holds it now,
/// where `sent` is the instant the successful request started (renewals count from then).
///
/// # Errors
/// API errors other than conflicts (which mean another candidate won: `Ok(None)`).
pub async fn try_acquire_or_renew(
    client: &Client,
    cfg: &LeaseConfig,
    observer: &mut Observer,
) -> Result<Option<Instant>, kube::Error> {
    let api: Api<Lease> = Api::namespaced(client.clone(), &cfg.namespace);
    let duration_secs = i32::try_from(cfg.lease_duration.as_secs().max(1)).unwrap_or(i32::MAX);
    let Some(lease) = api.get_opt(&cfg.name).await? else {
        let sent = Instant::now();
        let now = MicroTime(Timestamp::now());
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(cfg.name.clone()),
                namespace: Some(cfg.namespace.clone()),
                ..Default::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(cfg.identity.clone()),
                lease_duration_seconds: Some(duration_secs),
                acquire_time: Some(now.clone()),
                renew_time: Some(now),
                lease_transitions: Some(0),
                ..Default::default()
            }),
        };
        return match api.create(&PostParams::default(), &lease).await {
            Ok(_) => Ok(Some(sent)),
            Err(e) if is_conflict(&e) => Ok(None),
            Err(e) => Err(e),
        };
    };
    let spec = lease.spec.clone().unwrap_or_default();
    let record = Record::from_spec(&spec);
    let seen = Instant::now();
    let since = observer.observe(&record, seen);
    let decision = decide(&cfg.identity, &record, since, seen, cfg.lease_duration);
    let mine = decision == Decision::Renew;
    if let Decision::Wait { .. } = decision {
        return Ok(None);
    }
    let sent = Instant::now();
    let now = MicroTime(Timestamp::now());
    let mut next = lease.clone();
    next.spec = Some(LeaseSpec {
        holder_identity: Some(cfg.identity.clone()),
        lease_duration_seconds: Some(duration_secs),
        acquire_time: if mine {
            spec.acquire_time
        } else {
            Some(now.clone())
        },
        renew_time: Some(now),
        lease_transitions: Some(spec.lease_transitions.unwrap_or(0) + i32::from(!mine)),
        ..Default::default()
    });
    match api.replace(&cfg.name, &PostParams::default(), &next).await {
        Ok(_) => Ok(Some(sent)),
        Err(e) if is_conflict(&e) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Waits until this candidate holds the Lease and returns the [`Leadership`] to share with the
/// writers. Never fails: API errors are logged and retried every retry period.
pub async fn acquire(
    client: &Client,
    cfg: &LeaseConfig,
    observer: &mut Observer,
) -> Arc<Leadership> {
    let mut waiting_logged = false;
    let leadership = Leadership::new(cfg.renew_deadline);
    loop {
        let attempt = tokio::time::timeout(
            cfg.retry_period.max(Duration::from_secs(1)) * 2,
            try_acquire_or_renew(client, cfg, observer),
        )
        .await;
        match attempt {
            Ok(Ok(Some(sent))) => {
                leadership.renewed(sent);
                info!(lease = %cfg.name, identity = %cfg.identity, "acquired leadership");
                return leadership;
            }
            Ok(Ok(None)) if !waiting_logged => {
                info!(lease = %cfg.name, "another replica leads; waiting");
                waiting_logged = true;
            }
            Ok(Ok(None)) => {}
            Ok(Err(e)) => warn!(error = %e, "leader election attempt failed"),
            Err(_) => warn!("leader election attempt timed out"),
        }
        tokio::time::sleep(cfg.retry_period).await;
    }
}

/// Renews the held Lease every retry period until leadership is lost, then marks `leadership`
/// lost (so no writer acts any more) and returns. Lost means: another holder was seen, or no
/// renewal succeeded within the renew deadline (each attempt is cut off at the deadline).
pub async fn keep(
    client: &Client,
    cfg: &LeaseConfig,
    observer: &mut Observer,
    leadership: &Leadership,
) {
    loop {
        tokio::time::sleep(cfg.retry_period).await;
        // After a stall (SIGSTOP, suspended VM) the deadline may already be gone.
        if !leadership.is_leading() {
            warn!(lease = %cfg.name, "renew deadline passed without a renewal");
            break;
        }
        match tokio::time::timeout(
            cfg.renew_deadline,
            try_acquire_or_renew(client, cfg, observer),
        )
        .await
        {
            Ok(Ok(Some(sent))) => leadership.renewed(sent),
            Ok(Ok(None)) => {
                warn!(lease = %cfg.name, "leadership taken by another replica");
                break;
            }
            Ok(Err(e)) => warn!(error = %e, "lease renewal failed"),
            Err(_) => warn!("lease renewal timed out"),
        }
        if !leadership.is_leading() {
            warn!(lease = %cfg.name, "could not renew within the renew deadline");
            break;
        }
    }
    leadership.lose();
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

#[cfg(test)]
mod tests {
    use super::*;

    fn held_by(h: &str, renew: &str) -> Record {
        Record {
            holder: Some(h.into()),
            renew_time: Some(renew.into()),
            duration_seconds: Some(15),
            ..Default::default()
        }
    }

    #[test]
    fn defaults_follow_client_go_and_are_ordered() {
        let cfg = LeaseConfig::from_lease_duration(
            "ns".into(),
            "l".into(),
            "me".into(),
            Duration::from_secs(15),
        );
        assert_eq!(cfg.renew_deadline, Duration::from_secs(10));
        assert_eq!(cfg.retry_period, Duration::from_secs(2));
        assert!(cfg.check().is_ok());
        let bad = LeaseConfig {
            renew_deadline: Duration::from_secs(15),
            ..cfg.clone()
        };
        assert!(
            bad.check()
                .unwrap_err()
                .contains("shorter than the lease duration")
        );
        let bad = LeaseConfig {
            retry_period: Duration::from_secs(10),
            ..cfg
        };
        assert!(bad.check().is_err());
    }

    #[test]
    fn free_lease_is_taken_and_own_lease_renewed() {
        let t = Instant::now();
        let d = Duration::from_secs(15);
        assert_eq!(decide("me", &Record::default(), t, t, d), Decision::Take);
        assert_eq!(decide("me", &held_by("me", "x"), t, t, d), Decision::Renew);
    }

    /// Expiry is judged by the candidate's own clock from the moment it saw the record, never
    /// from the holder's `renewTime`: a renewTime far in the past (holder clock behind) does not
    /// let a candidate take over early, and one far in the future does not delay it.
    #[test]
    fn expiry_is_judged_on_the_candidates_own_observation_time() {
        let d = Duration::from_secs(15);
        let mut obs = Observer::default();
        let t0 = Instant::now();
        let old = held_by("other", "1970-01-01T00:00:00Z");
        let since = obs.observe(&old, t0);
        assert_eq!(since, t0);
        assert!(matches!(
            decide("me", &old, since, t0, d),
            Decision::Wait { remaining } if remaining == d
        ));
        let t14 = t0 + Duration::from_secs(14);
        assert_eq!(
            obs.observe(&old, t14),
            t0,
            "unchanged record keeps its time"
        );
        assert!(matches!(
            decide("me", &old, t0, t14, d),
            Decision::Wait { .. }
        ));
        let t15 = t0 + Duration::from_secs(15);
        assert_eq!(decide("me", &old, t0, t15, d), Decision::Take);

        // A renewal (any change) restarts the observation, whatever its timestamp says.
        let renewed = held_by("other", "2999-01-01T00:00:00Z");
        let since = obs.observe(&renewed, t14);
        assert_eq!(since, t14);
        assert!(matches!(
            decide("me", &renewed, since, t15, d),
            Decision::Wait { .. }
        ));
        assert_eq!(
            decide("me", &renewed, since, t14 + Duration::from_secs(15), d),
            Decision::Take
        );
    }

    #[test]
    fn leadership_ends_at_the_renew_deadline_or_when_lost() {
        let l = Leadership::new(Duration::from_secs(10));
        let t = l.base + Duration::from_secs(100);
        assert!(!l.is_leading_at(t), "never renewed");
        l.renewed(t);
        assert!(l.is_leading_at(t + Duration::from_millis(9_999)));
        assert!(!l.is_leading_at(t + Duration::from_secs(10)));
        l.renewed(t + Duration::from_secs(5));
        assert!(l.is_leading_at(t + Duration::from_secs(14)));
        l.lose();
        assert!(
            !l.is_leading_at(t + Duration::from_secs(6)),
            "lost is final"
        );
    }

    /// The safety argument as a property: whatever the pause, the old leader's last acting
    /// instant is before the earliest instant a candidate can take over.
    #[test]
    fn acting_intervals_never_overlap() {
        let cfg = LeaseConfig::from_lease_duration(
            "ns".into(),
            "l".into(),
            "a".into(),
            Duration::from_secs(4),
        );
        for sent_ms in [0u64, 1, 333, 1000] {
            for seen_delay_ms in [0u64, 5, 400, 2500] {
                let l = Leadership::new(cfg.renew_deadline);
                let sent = l.base + Duration::from_millis(sent_ms);
                l.renewed(sent);
                // The candidate sees the renewed record no earlier than it was sent.
                let seen = sent + Duration::from_millis(seen_delay_ms);
                let rec = held_by("a", "t");
                let mut take_at = seen;
                while decide("b", &rec, seen, take_at, cfg.lease_duration) != Decision::Take {
                    take_at += Duration::from_millis(1);
                }
                let mut last_act = sent;
                while l.is_leading_at(last_act + Duration::from_millis(1)) {
                    last_act += Duration::from_millis(1);
                }
                assert!(last_act < take_at, "{sent_ms} {seen_delay_ms}");
            }
        }
    }
}
