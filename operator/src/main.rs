//! `sensorflow-operator`: runs the SensorPipeline controller with leader election and metrics.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use kube::runtime::events::Reporter;
use sensorflow_operator::controller::policy::Policy;
use sensorflow_operator::controller::{self, Context, Scope, Settings};
use sensorflow_operator::leader::{self, LeaseConfig, Observer};
use sensorflow_operator::metrics::Metrics;
use sensorflow_process::{shutdown, telemetry};
use tracing::{error, info};

/// Command line; every flag can also be set through the environment variable shown.
#[derive(Parser, Debug)]
#[command(
    version,
    about = "Reconciles SensorPipeline resources into Kafka topics and processors"
)]
struct Args {
    /// Address of /metrics, /health and /ready.
    #[arg(long, env = "SF_OPERATOR_METRICS_ADDR", default_value = "0.0.0.0:8080")]
    metrics_addr: SocketAddr,
    /// Log filter (RUST_LOG syntax).
    #[arg(long, env = "RUST_LOG", default_value = "info")]
    log: String,
    /// Log as JSON lines.
    #[arg(long, env = "SF_LOG_JSON")]
    log_json: bool,
    /// Seconds between reconciles of a healthy pipeline (lag polling).
    #[arg(long, env = "SF_OPERATOR_RESYNC_SECONDS", default_value_t = 30)]
    resync_seconds: u64,
    /// First retry delay after a failure, in seconds (doubles per failure).
    #[arg(long, env = "SF_OPERATOR_BACKOFF_SECONDS", default_value_t = 5)]
    backoff_seconds: u64,
    /// Longest retry delay, in seconds.
    #[arg(long, env = "SF_OPERATOR_BACKOFF_MAX_SECONDS", default_value_t = 300)]
    backoff_max_seconds: u64,
    /// Overrides every pipeline's scale-down cooldown, in seconds (tests, demos).
    #[arg(long, env = "SF_OPERATOR_COOLDOWN_OVERRIDE_SECONDS")]
    cooldown_override_seconds: Option<u64>,
    /// Take part in leader election (needed with more than one replica).
    #[arg(long, env = "SF_OPERATOR_LEADER_ELECTION", default_value_t = true, action = clap::ArgAction::Set)]
    leader_election: bool,
    /// Namespace of the leader Lease.
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    lease_namespace: String,
    /// Name of the leader Lease.
    #[arg(
        long,
        env = "SF_OPERATOR_LEASE_NAME",
        default_value = "sensorflow-operator"
    )]
    lease_name: String,
    /// Seconds other replicas wait, after they last saw the Lease change, before taking it.
    #[arg(long, env = "SF_OPERATOR_LEASE_SECONDS", default_value_t = 15)]
    lease_seconds: u64,
    /// Seconds the leader keeps acting after its last successful renewal; must be shorter than
    /// the lease (default: two thirds of it, 10 s for 15 s).
    #[arg(long, env = "SF_OPERATOR_RENEW_DEADLINE_SECONDS")]
    renew_deadline_seconds: Option<f64>,
    /// Seconds between attempts to take or renew the Lease (default: 2/15 of the lease, 2 s
    /// for 15 s).
    #[arg(long, env = "SF_OPERATOR_RETRY_PERIOD_SECONDS")]
    retry_period_seconds: Option<f64>,
    /// Namespaces to watch, comma-separated; empty watches every namespace (cluster-wide RBAC).
    #[arg(
        long,
        env = "SF_OPERATOR_WATCH_NAMESPACES",
        value_delimiter = ',',
        default_value = ""
    )]
    watch_namespaces: Vec<String>,
    /// Failed topic-deletion attempts after which a deleting pipeline's finalizer is released
    /// anyway (Warning Event `TopicDeletionAbandoned`).
    #[arg(long, env = "SF_OPERATOR_CLEANUP_ATTEMPTS", default_value_t = 5)]
    cleanup_attempts: u32,
    /// Image repositories a pipeline's `processors.image` may come from, comma-separated:
    /// the reference without `:tag` / `@digest`, compared exactly (`sensorflow/sensorflow`
    /// allows `sensorflow/sensorflow:0.1.0`, not `sensorflow/sensorflow-evil`), or `*` for
    /// any. Default: the SensorFlow image's repository. A pipeline asking for another
    /// is refused (`Ready=False`, reason `PolicyViolation`, Warning Event).
    #[arg(
        long,
        env = "SF_OPERATOR_ALLOWED_IMAGE_REPOSITORIES",
        value_delimiter = ',',
        default_value = "sensorflow/sensorflow"
    )]
    allowed_image_repositories: Vec<String>,
    /// Whether a pipeline's pod template may set `serviceAccountName` (run its pods as any
    /// ServiceAccount of its namespace). Default false: refused (`PolicyViolation`), the pods
    /// run as the operator's per-pipeline ServiceAccount; `serviceAccountAnnotations` stay
    /// allowed.
    #[arg(long, env = "SF_OPERATOR_ALLOW_SERVICE_ACCOUNT_NAME", default_value_t = false, action = clap::ArgAction::Set)]
    allow_service_account_name: bool,
    /// Volume types a pipeline's pod template may add, comma-separated `Volume` field names
    /// (`secret`, `configMap`, `hostPath`, ...); empty allows none. A volume of another type
    /// is refused (`PolicyViolation`).
    #[arg(
        long,
        env = "SF_OPERATOR_ALLOWED_VOLUME_TYPES",
        value_delimiter = ',',
        default_value = "secret,configMap,emptyDir,persistentVolumeClaim,csi,projected"
    )]
    allowed_volume_types: Vec<String>,
    /// The processors' image for every pipeline that does not pin `processors.image`: the
    /// operator's own image (the chart sets it from `image.repository` and `image.tag`), so
    /// upgrading the operator rolls those pipelines' processors to the new version. Resolved at
    /// each reconcile, never written into the stored pipeline. Default:
    /// `sensorflow/sensorflow:<this binary's version>`.
    #[arg(long, env = "SF_OPERATOR_PROCESSOR_IMAGE", default_value = sensorflow_operator::crd::DEFAULT_IMAGE)]
    processor_image: String,
    /// This instance's identity (pod name); defaults to hostname-pid.
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let format = if args.log_json {
        telemetry::LogFormat::Json
    } else {
        telemetry::LogFormat::Text
    };
    telemetry::init_with_filter(&args.log, format);
    // A policy the operator cannot hold (a tag in a repository, a misspelt volume type) stops
    // it before it connects.
    let policy = Policy::new(
        &args.allowed_image_repositories,
        args.allow_service_account_name,
        &args.allowed_volume_types,
    )?;
    info!(policy = %policy.summary(), processor_image = %args.processor_image, "pipeline policy");
    anyhow::ensure!(
        !args.processor_image.trim().is_empty(),
        "--processor-image is empty: name the image pipelines without processors.image run"
    );
    // SIGTERM / Ctrl-C: the first stops the controller gracefully, a second exits at once.
    let shutdown = shutdown::on_signal();
    let identity = args.identity.clone().unwrap_or_else(|| {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_owned())
            .unwrap_or_else(|_| "sensorflow-operator".into());
        format!("{host}-{}", std::process::id())
    });

    let metrics = Arc::new(Metrics::default());
    // Serves until the end of `main` (aborted there), so the probes answer during the graceful
    // stop too.
    let server = tokio::spawn(sensorflow_process::server::serve(
        args.metrics_addr,
        metrics.clone(),
        tokio_util::sync::CancellationToken::new(),
    ));

    let client = kube::Client::try_default()
        .await
        .context("no Kubernetes configuration (in-cluster or KUBECONFIG)")?;
    let version = client
        .apiserver_version()
        .await
        .context("API server unreachable")?;
    info!(server = %version.git_version, %identity, "connected");
    metrics.set_ready(true);

    let mut lease = LeaseConfig::from_lease_duration(
        args.lease_namespace.clone(),
        args.lease_name.clone(),
        identity.clone(),
        Duration::from_secs(args.lease_seconds.max(1)),
    );
    if let Some(s) = args.renew_deadline_seconds {
        lease.renew_deadline =
            Duration::try_from_secs_f64(s).context("--renew-deadline-seconds")?;
    }
    if let Some(s) = args.retry_period_seconds {
        lease.retry_period = Duration::try_from_secs_f64(s).context("--retry-period-seconds")?;
    }
    if args.leader_election {
        lease.check().map_err(anyhow::Error::msg)?;
    }
    let scope = Scope::from_list(&args.watch_namespaces);

    let mut observer = Observer::default();
    let leadership = if args.leader_election {
        let held = tokio::select! {
            l = leader::acquire(&client, &lease, &mut observer) => l,
            () = shutdown.cancelled() => { info!("stopped before leading"); return Ok(()); }
        };
        metrics.leader.set(1);
        Some(held)
    } else {
        None
    };

    let ctx = Arc::new(Context::new(
        client.clone(),
        Reporter {
            controller: "sensorflow-operator".into(),
            instance: Some(identity),
        },
        metrics.clone(),
        Settings {
            resync: Duration::from_secs(args.resync_seconds.max(1)),
            backoff_base: Duration::from_secs(args.backoff_seconds.max(1)),
            backoff_max: Duration::from_secs(args.backoff_max_seconds.max(1)),
            cooldown_override: args.cooldown_override_seconds.map(Duration::from_secs),
            cleanup_attempts: args.cleanup_attempts.max(1),
            policy,
            processor_image: args.processor_image.trim().to_owned(),
        },
        leadership.clone(),
    ));

    let keeper = leadership.clone().map(|held| {
        let (c, l, m) = (client.clone(), lease.clone(), metrics.clone());
        tokio::spawn(async move {
            leader::keep(&c, &l, &mut observer, &held).await;
            // `keep` has already closed the write gate; nothing in flight can write any more.
            // Exit at once rather than wait for reconciles to wind down: a replacement process
            // starts as a plain candidate.
            m.leader.set(0);
            error!("lost leadership; exiting");
            std::process::exit(1);
        })
    });
    let (done_tx, done_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown.cancelled().await;
        info!("shutting down");
        let _ = done_tx.send(true);
    });
    let mut done = done_rx.clone();
    controller::run(ctx, scope, async move {
        let _ = done.wait_for(|d| *d).await;
    })
    .await;

    server.abort();
    if let Some(held) = leadership {
        // Stop renewing first: `keep` would take the `lose` below for a lost lease and exit
        // the process before the release is written (seen in CI: the standby then waited
        // for the lease to expire). Awaited, so it is gone before `lose`.
        if let Some(k) = keeper {
            k.abort();
            let _ = k.await;
        }
        held.lose();
        metrics.leader.set(0);
        if let Err(e) = leader::release(&client, &lease).await {
            error!(error = %e, "could not release the lease");
        }
    }
    Ok(())
}
