//! The one `/metrics`, `/health`, `/ready` server of every SensorFlow process.
//!
//! ```text
//!   GET /metrics ─► Probes::metrics()  ─► 200, OpenMetrics text
//!   GET /health  ─► Probes::health()   ─► 200 "ok" | 503 <why> (liveness probe)
//!   GET /ready   ─► Probes::ready()    ─► 200 "ready" | 503 <why> (readiness probe)
//! ```
//!
//! The process decides what healthy and ready mean (the consume loop's liveness and
//! assignment, the operator's Lease and caches); the server only answers.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use tokio_util::sync::CancellationToken;

/// Content type of `/metrics`: the OpenMetrics text that `prometheus-client` encodes.
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// What the server asks of the process, on every request, from the server's task.
pub trait Probes: Send + Sync + 'static {
    /// The metrics in OpenMetrics text exposition.
    fn metrics(&self) -> String;
    /// `Ok` while the process is alive; `Err(why)` makes `/health` answer 503 with `why`, and
    /// the kubelet restarts the container.
    fn health(&self) -> Result<(), String>;
    /// `Ok` once the process should get work; `Err(why)` makes `/ready` answer 503 with `why`.
    fn ready(&self) -> Result<(), &'static str>;
}

/// Serves `/metrics`, `/health` and `/ready` on `addr` until `shutdown` is cancelled.
///
/// # Errors
/// When the address cannot be bound, or serving fails.
pub async fn serve<P: Probes>(
    addr: SocketAddr,
    probes: Arc<P>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    serve_on(listener, probes, shutdown).await
}

/// Like [`serve`], on a bound listener (tests bind port 0 and read the port back).
///
/// # Errors
/// When serving fails.
pub async fn serve_on<P: Probes>(
    listener: tokio::net::TcpListener,
    probes: Arc<P>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let app = Router::new()
        .route("/metrics", get(metrics::<P>))
        .route("/health", get(health::<P>))
        .route("/ready", get(ready::<P>))
        .with_state(probes);
    let addr = listener.local_addr()?;
    tracing::info!(%addr, "serving /metrics, /health, /ready");
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
}

async fn metrics<P: Probes>(State(p): State<Arc<P>>) -> impl IntoResponse {
    (
        [(axum::http::header::CONTENT_TYPE, OPENMETRICS_CONTENT_TYPE)],
        p.metrics(),
    )
}

async fn health<P: Probes>(State(p): State<Arc<P>>) -> impl IntoResponse {
    match p.health() {
        Ok(()) => (StatusCode::OK, "ok".to_owned()),
        Err(msg) => {
            tracing::warn!("{msg}");
            (StatusCode::SERVICE_UNAVAILABLE, msg)
        }
    }
}

async fn ready<P: Probes>(State(p): State<Arc<P>>) -> impl IntoResponse {
    match p.ready() {
        Ok(()) => (StatusCode::OK, "ready"),
        Err(why) => (StatusCode::SERVICE_UNAVAILABLE, why),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[derive(Default)]
    struct Fake {
        ready: AtomicBool,
        sick: AtomicBool,
    }

    impl Probes for Fake {
        fn metrics(&self) -> String {
            "up 1\n# EOF\n".to_owned()
        }
        fn health(&self) -> Result<(), String> {
            if self.sick.load(Ordering::Relaxed) {
                Err("stuck".to_owned())
            } else {
                Ok(())
            }
        }
        fn ready(&self) -> Result<(), &'static str> {
            if self.ready.load(Ordering::Relaxed) {
                Ok(())
            } else {
                Err("not ready")
            }
        }
    }

    async fn get(addr: SocketAddr, path: &str) -> String {
        let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await.expect("write");
        let mut out = String::new();
        s.read_to_string(&mut out).await.expect("read");
        out
    }

    #[tokio::test]
    async fn answers_each_probe_from_the_process_state() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let fake = Arc::new(Fake::default());
        let stop = CancellationToken::new();
        let server = tokio::spawn(serve_on(listener, fake.clone(), stop.clone()));

        let m = get(addr, "/metrics").await;
        assert!(m.starts_with("HTTP/1.1 200"), "{m}");
        assert!(
            m.contains(OPENMETRICS_CONTENT_TYPE) && m.ends_with("up 1\n# EOF\n"),
            "{m}"
        );
        assert!(get(addr, "/health").await.starts_with("HTTP/1.1 200"));
        let r = get(addr, "/ready").await;
        assert!(
            r.starts_with("HTTP/1.1 503") && r.ends_with("not ready"),
            "{r}"
        );

        fake.ready.store(true, Ordering::Relaxed);
        fake.sick.store(true, Ordering::Relaxed);
        assert!(get(addr, "/ready").await.starts_with("HTTP/1.1 200"));
        let h = get(addr, "/health").await;
        assert!(h.starts_with("HTTP/1.1 503") && h.ends_with("stuck"), "{h}");

        stop.cancel();
        server.await.expect("join").expect("serve");
    }
}
