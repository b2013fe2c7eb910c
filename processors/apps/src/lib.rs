//! # sensorflow-apps
//!
//! SensorFlow's two stream processors, as [`sensorflow_runtime::processor::Processor`]s over
//! the pure engines of `sensorflow-core`, with their flags and binaries:
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
//! Binaries in `src/bin/` call [`window::main`] and [`join::main`]. The integration tests in
//! `tests/` run those binaries against a real broker.

pub mod join;
pub mod window;
