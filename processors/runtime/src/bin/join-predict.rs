//! `join-predict` binary: see `sensorflow_runtime::apps::join`.
use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    sensorflow_runtime::apps::join::main(sensorflow_runtime::apps::join::JoinArgs::parse()).await
}
