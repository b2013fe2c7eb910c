//! `window-processor` binary: see `sensorflow_runtime::apps::window`.
use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    sensorflow_runtime::apps::window::main(sensorflow_runtime::apps::window::WindowArgs::parse())
        .await
}
