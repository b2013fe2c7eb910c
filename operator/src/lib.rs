//! SensorFlow operator: reconciles `SensorPipeline` resources into Kafka topics and processor
//! Deployments, and scales the processors from consumer lag.
//!
//! ```text
//!   crd ─▶ validate ─▶ build ─┐          pure: validate, build, planner, conditions
//!            │                ├─▶ controller (kube-runtime) ─▶ API server (server-side apply)
//!   kafka (topics, lag) ─▶ planner ─┘            │
//!                                    metrics (/metrics /health /ready), leader (Lease)
//! ```

/// The CRD types live in the `sensorflow-api` crate, shared with the processors.
pub use sensorflow_api::crd;

pub mod build;
pub mod conditions;
pub mod controller;
pub mod leader;
pub mod metrics;
pub mod planner;
pub mod validate;

pub use crd::{SensorPipeline, SensorPipelineSpec, SensorPipelineStatus};
