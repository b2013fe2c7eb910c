//! SensorFlow operator: reconciles `SensorPipeline` resources into Kafka topics and processor
//! Deployments, and scales the processors from consumer lag.
//!
//! ```text
//!   controller/  (one reconcile, a script of named steps; only dereference and apply do I/O)
//!     dereference ─▶ validate ─▶ plan (topics, replicas) ─▶ build ─▶ apply ─▶ status
//!     reads: Secrets,  pure      pure                        pure     SSA, topics  pure
//!     Deployments, lag                                                (sensorflow-kafka)
//!   leader (Lease), metrics (/metrics /health /ready via sensorflow-process), bin/crdgen
//! ```

/// The CRD types live in the `sensorflow-api` crate, shared with the processors.
pub use sensorflow_api::crd;

pub mod controller;
pub mod leader;
pub mod metrics;

pub use crd::{SensorPipeline, SensorPipelineSpec, SensorPipelineStatus};
