//! `sensorflow-operator`: runs the SensorPipeline controller with leader election and metrics.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use kube::runtime::events::Reporter;
use sensorflow_operator::controller::{self, Context, Settings};
use sensorflow_operator::leader::{self, LeaseConfig};
use sensorflow_operator::metrics::{self, Metrics};
use sensorflow_operator::telemetry;
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
    /// Seconds a Lease stays valid without renewal.
    #[arg(long, env = "SF_OPERATOR_LEASE_SECONDS", default_value_t = 15)]
    lease_seconds: u64,
    /// This instance's identity (pod name); defaults to hostname-pid.
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
}

async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        () = term => {},
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    telemetry::init(&args.log, args.log_json);
    let identity = args.identity.clone().unwrap_or_else(|| {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_owned())
            .unwrap_or_else(|_| "sensorflow-operator".into());
        format!("{host}-{}", std::process::id())
    });

    let metrics = Arc::new(Metrics::default());
    let server = tokio::spawn(metrics::serve(args.metrics_addr, metrics.clone()));

    let client = kube::Client::try_default()
        .await
        .context("no Kubernetes configuration (in-cluster or KUBECONFIG)")?;
    let version = client
        .apiserver_version()
        .await
        .context("API server unreachable")?;
    info!(server = %version.git_version, %identity, "connected");
    metrics.set_ready(true);

    let lease = LeaseConfig {
        namespace: args.lease_namespace.clone(),
        name: args.lease_name.clone(),
        identity: identity.clone(),
        lease_duration: Duration::from_secs(args.lease_seconds.max(2)),
        renew_every: Duration::from_secs((args.lease_seconds / 3).max(1)),
    };
    if args.leader_election {
        tokio::select! {
            () = leader::acquire(&client, &lease) => {},
            () = shutdown_signal() => { info!("stopped before leading"); return Ok(()); }
        }
        metrics.leader.set(1);
    }

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
        },
    ));

    let (lost_tx, lost_rx) = tokio::sync::oneshot::channel::<()>();
    if args.leader_election {
        let (c, l) = (client.clone(), lease.clone());
        tokio::spawn(async move {
            leader::keep(&c, &l).await;
            let _ = lost_tx.send(());
        });
    } else {
        // Keep the sender alive so the receiver never fires.
        std::mem::forget(lost_tx);
    }
    let (done_tx, done_rx) = tokio::sync::watch::channel(false);
    let lost = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let lost_flag = lost.clone();
    tokio::spawn(async move {
        tokio::select! {
            () = shutdown_signal() => info!("shutting down"),
            r = lost_rx => if r.is_ok() {
                lost_flag.store(true, std::sync::atomic::Ordering::SeqCst);
                error!("lost leadership; stopping");
            },
        }
        let _ = done_tx.send(true);
    });
    let mut done = done_rx.clone();
    controller::run(ctx, async move {
        let _ = done.wait_for(|d| *d).await;
    })
    .await;

    server.abort();
    if lost.load(std::sync::atomic::Ordering::SeqCst) {
        anyhow::bail!("leadership lost");
    }
    if args.leader_election
        && let Err(e) = leader::release(&client, &lease).await
    {
        error!(error = %e, "could not release the lease");
    }
    Ok(())
}
