//! `window-processor` binary: see `sensorflow_apps::window`.
use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    sensorflow_apps::window::main(sensorflow_apps::window::WindowArgs::parse()).await
}
