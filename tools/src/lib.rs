//! # sensorflow-tools
//!
//! The tools around the pipeline, none of which the pipeline needs to run: [`replay`] (real
//! sensor data into SX, SY, SZ with their event times), [`summary`] (the end-of-run summary of
//! a demo), and the binaries `sensorflow` (the CLI: topics, replay, summary), `replay`,
//! `sensorflow-bench` and `sink-bench` (what `./run.sh bench` runs).

pub mod replay;
pub mod summary;
