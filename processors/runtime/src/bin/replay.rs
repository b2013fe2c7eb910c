//! `replay` binary: see `sensorflow_runtime::replay`.
use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    sensorflow_runtime::replay::main(sensorflow_runtime::replay::ReplayArgs::parse()).await
}
