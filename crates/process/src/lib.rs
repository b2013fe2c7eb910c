//! # sensorflow-process
//!
//! What every SensorFlow process shares, the operator and the data plane alike: logging set-up
//! ([`telemetry`]), graceful shutdown on SIGTERM/SIGINT ([`shutdown`]) and the one HTTP server
//! for `/metrics`, `/health` and `/ready` ([`server`]). No Kafka, no Kubernetes.

pub mod server;
pub mod shutdown;
pub mod telemetry;
