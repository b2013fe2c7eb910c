//! `join-predict` binary: see `sensorflow_apps::join`.
use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    sensorflow_apps::join::main(sensorflow_apps::join::JoinArgs::parse()).await
}
