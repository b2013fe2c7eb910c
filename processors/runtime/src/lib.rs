//! # sensorflow-runtime
//!
//! The consume loop of SensorFlow's data plane, and nothing else: the window-processor and
//! join-predict (`sensorflow-apps`) and the GCS sink (`sensorflow-sink`) run on it. A
//! processor never sees the transport: it implements [`processor::Processor`] over
//! [`record::ConsumedRecord`]s and emits [`output::Output`]s.
//!
//! ```text
//!   driver      select! { shutdown | commit tick | recv }, rebalance events, floors, liveness
//!     └─ consumer   LoopConsumer + LoopContext (rebalance events, group metadata, lag gauges)
//!   pipeline    the processors' hooks on the driver: process ─► emitter ─► commit
//!     ├─ processor  the transport-free Processor trait, LoopConfig
//!     ├─ emitter    enqueue outputs, await acknowledgements, bounded retries
//!     ├─ task       offsets processed and committable per partition
//!     └─ error      PipelineError
//!   rebuild     state restore on assignment (read back the outputs' topics)
//!     └─ keepalive  polls the group, its partitions paused, while a rebuild blocks
//!   dlq         dead-letter and late records with their reason headers
//!   metrics     Prometheus registry, liveness; served by sensorflow-process
//!   runner      the shared main: flags, wiring, run
//! ```
//!
//! Delivery is at-least-once: a record's offset is committed only after every record derived
//! from it (features, predictions, dead letters) is acknowledged by the broker. After a crash,
//! records since the last commit are processed again and their outputs are repeated exactly
//! (same key, same value, same source partition/offset), because the window state is rebuilt
//! from the topic on partition assignment (see [`rebuild`]). With `--exactly-once` the outputs
//! and the offsets are committed in one Kafka transaction per flush.

pub mod args;
pub mod consumer;
pub mod dlq;
pub mod driver;
pub mod emitter;
pub mod error;
pub mod keepalive;
pub mod metrics;
pub mod output;
pub mod pipeline;
pub mod processor;
pub mod rebuild;
pub mod record;
pub mod runner;
pub mod task;

/// Wall-clock now in Unix ms. The one place the data plane reads the clock for data.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
