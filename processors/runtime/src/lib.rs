//! # sensorflow-runtime
//!
//! The I/O edges of SensorFlow: Kafka consumer and producer loops around the pure
//! `sensorflow-core`, Prometheus metrics and health endpoints, the replay producer and the demo
//! summary. Binaries in `src/bin/` are thin wrappers over [`apps`].
//!
//! ```text
//!            ┌──────────── window-processor ────────────┐
//!  SZ ──────►│ recv ─► decode ─► WindowEngine ─► bin ─►  │──► FA, FI, FD
//!            │   └─► DLQ / late (reason headers)         │
//!            └────── commit after every output is acked ─┘
//!            ┌────────────── join-predict ───────────────┐
//!  SX, SY,──►│ recv ─► decode ─► JoinState ─► Predictor  │──► predictions
//!  FA,FI,FD  └───────────────────────────────────────────┘
//! ```
//!
//! Delivery is at-least-once: a record's offset is committed only after every record derived
//! from it (features, predictions, dead letters) is acknowledged by the broker. After a crash,
//! records since the last commit are processed again and their outputs are repeated exactly
//! (same key, same value, same source partition/offset), because the window state is rebuilt
//! from the topic on partition assignment (see [`rebuild`]).

pub mod admin;
pub mod apps;
pub mod dlq;
pub mod driver;
pub mod kafka;
pub mod metrics;
pub mod pipeline;
pub mod rebuild;
pub mod record;
pub mod replay;
pub mod shutdown;
pub mod summary;
pub mod telemetry;

/// Wall-clock now in Unix ms. The one place the runtime reads the clock for data.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
