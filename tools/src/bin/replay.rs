//! `replay` binary: see `sensorflow_tools::replay`.
use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    sensorflow_tools::replay::main(sensorflow_tools::replay::ReplayArgs::parse()).await
}
