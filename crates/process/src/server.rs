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
/// The server runs on a thread of its own with its own single-threaded runtime, not on the
/// caller's workers: a consume loop stuck in a blocking call (what `/health` exists to report)
/// must not be able to hold the very worker the probe's connection was scheduled on. On
/// tokio's multi-threaded runtime a task woken on a worker can wait in that worker's LIFO slot
/// until the worker is free again, and the liveness test saw `/health` answer only after a 4 s
/// hang had ended. The returned future completes when the server stops.
///
/// # Errors
/// When the listener cannot be moved to the server's thread, the thread or its runtime cannot
/// be started, or serving fails.
pub async fn serve_on<P: Probes>(
    listener: tokio::net::TcpListener,
    probes: Arc<P>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let listener = listener.into_std()?;
    let (done, finished) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("probes".into())
        .spawn(move || {
            let result = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .and_then(|rt| {
                    rt.block_on(async move {
                        let listener = tokio::net::TcpListener::from_std(listener)?;
                        serve_here(listener, probes, shutdown).await
                    })
                });
            let _ = done.send(result);
        })?;
    finished
        .await
        .unwrap_or_else(|_| Err(std::io::Error::other("the probe server's thread ended")))
}

/// Serves on the current runtime until `shutdown` is cancelled.
async fn serve_here<P: Probes>(
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

    /// The probes answer while the caller's only worker is blocked (the consume loop stuck in
    /// a blocking call): the server has a thread of its own.
    #[tokio::test(flavor = "current_thread")]
    async fn answers_while_the_callers_runtime_is_blocked() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let stop = CancellationToken::new();
        let server = tokio::spawn(serve_on(listener, Arc::new(Fake::default()), stop.clone()));
        // Let the server task move the listener to its thread, then block this runtime's only
        // thread while a plain std client asks.
        tokio::task::yield_now().await;
        let asked = std::thread::spawn(move || {
            use std::io::{Read, Write};
            let mut s = std::net::TcpStream::connect(addr).expect("connect");
            s.set_read_timeout(Some(std::time::Duration::from_secs(5)))
                .expect("timeout");
            s.write_all(b"GET /health HTTP/1.0\r\nHost: x\r\n\r\n")
                .expect("write");
            let mut out = String::new();
            s.read_to_string(&mut out).expect("read");
            (std::time::Instant::now(), out)
        });
        let blocked_at = std::time::Instant::now();
        std::thread::sleep(std::time::Duration::from_secs(2));
        let (answered_at, out) = asked.join().expect("client");
        assert!(
            out.starts_with("HTTP/1.0 200") || out.starts_with("HTTP/1.1 200"),
            "{out}"
        );
        assert!(
            answered_at.duration_since(blocked_at) < std::time::Duration::from_millis(1500),
            "answered only after the caller's runtime was free again"
        );
        stop.cancel();
        server.await.expect("join").expect("serve");
    }
}
